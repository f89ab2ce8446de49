/* kv_transfer.c - UCX ucp implementation of kv_transfer.h.
 *
 * One mutex guards the ucp workers (UCS_THREAD_MODE_SERIALIZED) and all agent
 * state. Callers post puts and flushes under it; only the progress thread
 * calls ucp_worker_progress, arms the workers and sleeps in epoll. Requests
 * complete through callbacks that run inside progress (under the lock); a
 * finished transfer is queued and its user callback runs in the progress
 * thread with the lock dropped.
 *
 * Two workers per agent. The target worker's address is the one exported; it
 * lives as long as the agent and serves peers that write into our regions.
 * The initiator worker owns every endpoint to a peer and is disposable: UCX
 * 1.13 emulates puts into caller-registered memory over shared memory with
 * active messages, and the target acknowledges each put into the initiator's
 * shared-memory receive FIFO. A FIFO slot is claimed before it is written, so
 * a peer killed between the two leaves a hole that the receiver never gets
 * past: every later message to that worker, from any peer, is stuck behind
 * it (the "live peer times out after a shm peer died" defect). Endpoints to
 * shared-memory peers have no failure handling in UCX 1.13 either. So when a
 * same-host peer dies (or an endpoint is dropped) while requests to it are in
 * flight, the agent fails the initiator worker's transfers, destroys that
 * worker and makes a fresh one on the next write; peers reconnect lazily.
 * Regions allocated by UCX (kvx_region_alloc) avoid the FIFO altogether: a
 * same-host peer maps the segment and puts with memcpy, no message at all.
 *
 * Active-message writes (peer->use_am, decided in peer_connect from
 * ucp_ep_print_info): UCX 1.13's emulated puts make the target acknowledge
 * each put, and that send, to a writer killed meanwhile, is a ucs_fatal in
 * the target. Our protocol is one-way: eager AMs (<= KVX_AM_CHUNK_BYTES,
 * header in kv_transfer.h, kept in the op until UCX completes them), an
 * endpoint flush, and on the target am_recv_cb validates, copies and counts
 * per tag under the agent lock, dropping anything it cannot place.
 *
 * Wire formats (little-endian; every frame ends with XXH3-64 of the bytes
 * before it, so a corrupt or truncated blob is rejected before UCX parses it):
 *   address frame: "SLXA" u16 version u16 0 u64 incarnation u64 host u32 pid
 *                  u32 registry_fd u32 len [len] u64 xxh3
 *                  (host = XXH3 of the boot id; registry_fd ~0 = none)
 *   rkey frame:    "SLXR" u16 version u16 mem_type u64 incarnation u64 base
 *                  u64 block_bytes u64 n_blocks u32 slot u64 serial u32 len
 *                  [len] u64 xxh3
 *   descriptor:    "SLXD" u16 version u16 0 u32 addr_len u32 rkey_len
 *                  [address frame] [rkey frame]
 *
 * Region registry: UCX does not check rkeys on TCP or on its emulated
 * shared-memory puts (a write through the rkey of a freed region lands in
 * whatever the memory is now), and UCX 1.13 crashes unpacking the rkey of a
 * freed shared-memory segment. So each agent keeps a page of live region
 * serials in a memfd (registry: u64 magic, u64 incarnation, u64 slots[]); a
 * same-host peer maps it read-only through /proc/<pid>/fd/<registry_fd> and
 * refuses a descriptor, or a write, whose (slot, serial) is no longer live.
 */
#include "common/transfer/kv_transfer.h"

#include "common/base/clock.h"
#include "common/base/err.h"
#include "common/base/log.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <ucp/api/ucp.h>
#include <ucs/debug/log_def.h>
#include <unistd.h>
#include <xxhash.h>

#define KVX_VERSION 2u
#define ADDR_HDR                                                                                   \
    36u /* magic 4, version 2, reserved 2, incarnation 8, host 8, pid 4, fd 4, len 4               \
         */
#define RKEY_HDR                                                                                   \
    56u /* magic 4, version 2, mem 2, incarnation 8, base 8, bb 8, nb 8, slot 4,                   \
           serial 8, len 4 */
#define REG_BYTES 4096u
#define REG_MAGIC 0x5347455258564b53ull /* "SKVXREGS" */
#define REG_SLOTS ((REG_BYTES - 16u) / 8u)
#define REG_NONE  UINT32_MAX
#define DESC_HDR  16u     /* magic 4, version 2, reserved 2, addr_len 4, rkey_len 4 */
#define KVX_AM_ID 0x5357u /* active-message id of the write protocol */
#define SUM_BYTES 8u

typedef struct kvx_peer {
    struct kvx_peer *next;
    uint64_t id;
    uint64_t incarnation;
    uint8_t *addr; /* (addr_len) raw ucp worker address */
    size_t addr_len;
    uint8_t *rkey_buf; /* (rkey_len) packed rkey */
    size_t rkey_len;
    uint64_t base, block_bytes, n_blocks;
    const uint64_t *reg; /* (REG_BYTES / 8) the peer's registry, read-only; NULL = unchecked */
    uint32_t reg_slot;
    uint64_t reg_serial;
    uint32_t pid;          /* peer process, meaningful when same_host */
    bool same_host;        /* liveness checked through /proc when UCX cannot */
    bool no_errh;          /* endpoint without peer failure handling (shared memory) */
    bool errh_unsupported; /* UCX refused failure handling to this peer once */
    bool use_am;           /* writes by active messages (decided at connect) */
    ucp_ep_h ep;           /* NULL until the first write; dropped on error */
    ucp_rkey_h rkey;
    uint64_t ep_gen;
    bool ep_failed;
    ucs_status_t ep_err;
} kvx_peer_t;

/* What ucp request callbacks point at. Normally it lives and dies with its
 * transfer; when an endpoint without failure handling is force-closed, UCX
 * may keep its requests forever, so the transfer is detached (completed with
 * its error) and the op alone waits for them. */
typedef struct kvx_op {
    struct kvx_xfer *x; /* NULL once detached */
    size_t outstanding; /* ucp requests in flight (puts + flush) */
    struct kvx_agent *a;
    uint64_t iw_gen;            /* initiator worker the requests belong to */
    struct kvx_op *prev, *next; /* agent's orphan list once detached */
    uint8_t *hdrs; /* (n_msgs, KVX_AM_HDR_BYTES) AM headers: UCX 1.13 reads them until completion */
} kvx_op_t;

struct kvx_xfer {
    kvx_agent_t *a;
    struct kvx_xfer *prev, *next; /* agent's active list */
    struct kvx_xfer *next_done;   /* agent's completion queue */
    uint64_t peer_id;
    uint64_t ep_gen;
    long long deadline_ms;
    kvx_op_t *op; /* requests in flight; NULL when none */
    size_t n_puts;
    uint64_t am_bytes; /* sent by active messages */
    int status;        /* first error wins */
    bool issued_all, queued, done, killed, cancel_req, uses_staging, agent_owned;
    kvx_done_fn cb;
    void *ud;
    char err[192];
};

struct kvx_agent {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ucp_context_h ctx;
    ucp_worker_h tworker; /* target: its address is exported; lives with the agent */
    ucp_worker_h
        iworker;     /* initiator: all endpoints; NULL until needed, replaced after a peer death */
    uint64_t iw_gen; /* generation of iworker */
    uint64_t n_iw_resets; /* initiator workers dropped */
    int tworker_fd, iworker_fd, wake_fd, epoll_fd;
    int reg_fd;          /* memfd of the region registry, -1 if none */
    uint64_t *reg;       /* (REG_BYTES / 8) header + live serial per slot */
    uint64_t reg_serial; /* last serial given to a region */
    pthread_t thr;
    bool thr_started, stop, cuda_ok;
    uint64_t incarnation;
    uint64_t host;
    uint8_t *addr_blob; /* framed address */
    size_t addr_blob_len;
    char name[64];
    kvx_peer_t *peers;
    kvx_xfer_t *active;
    kvx_xfer_t *done_head, *done_tail;
    kvx_op_t *orphans; /* detached ops; freed when done or after the worker */
    uint64_t ep_gen_next;
    int n_regions;
    void *stage_buf; /* (staging_bytes) host bounce buffer */
    size_t stage_bytes;
    ucp_mem_h stage_memh;
    bool stage_busy;
    kvx_proto_t proto;          /* as a writer */
    struct kvx_region *regions; /* live regions, for the AM handler */
    struct kvx_recv *recv;      /* (KVX_RECV_MAX) expected AM transfers */
    uint32_t n_recv;
    uint32_t *recv_idx;  /* (RECV_IDX_SLOTS) open addressing on the tag: slot + 1, 0 = empty */
    uint32_t *recv_free; /* (KVX_RECV_MAX) free slots, a stack of KVX_RECV_MAX - n_recv */
    uint64_t *recv_full; /* (KVX_RECV_MAX) tags that reached their bytes, for recv_cb */
    uint32_t n_recv_full;
    kvx_recv_cb_t recv_cb; /* kvx_agent_recv_notify */
    void *recv_cb_ud;
    bool recv_cb_busy; /* recv_cb runs (lock dropped) */
    kvx_agent_stats_t stats;
    long long drop_log_ms; /* last "dropped" log line */
    uint64_t drops_unlogged;
};

/* The tag index: linear probing at most half full, so a lookup on every
 * active message (and every expect / forget) costs O(1), not a scan. */
#define RECV_IDX_SLOTS (2u * KVX_RECV_MAX) /* a power of two */
#define RECV_IDX_MASK  (RECV_IDX_SLOTS - 1u)

/* One expected active-message transfer (target side). tag 0 = free slot. */
typedef struct kvx_recv {
    uint64_t tag;
    struct kvx_region *r;
    uint64_t expected, received;
    uint32_t *blocks; /* (n_blocks) sorted destination blocks; NULL = any block of r */
    size_t n_blocks;
} kvx_recv_t;

struct kvx_region {
    kvx_agent_t *a;
    uint8_t *base; /* (n_blocks, block_bytes) */
    size_t block_bytes;
    uint64_t n_blocks;
    kvx_mem_type_t mem_type;
    ucp_mem_h memh;    /* NULL for a staged source */
    bool owned;        /* memory allocated by UCX (kvx_region_alloc) */
    uint32_t reg_slot; /* registry slot, REG_NONE if not listed */
    uint64_t reg_serial;
    kvx_stage_fn stage_fn;
    void *stage_ud;
    struct kvx_region *next; /* agent's region list */
};

/* ---- helpers ------------------------------------------------------------------------------ */

static long long now_ms(void) {
    return sl_mono_ns() / 1000000;
}

static void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static int status_to_err(ucs_status_t st) {
    switch (st) {
    case UCS_OK:
        return 0;
    case UCS_ERR_CANCELED:
        return SL_ECANCELLED;
    case UCS_ERR_TIMED_OUT:
        return SL_ETIMEDOUT;
    case UCS_ERR_NO_MEMORY:
        return SL_ENOMEM;
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_NO_RESOURCE:
        return SL_EUNAVAIL;
    default:
        return SL_EIO;
    }
}

static void wake(kvx_agent_t *a) {
    uint64_t one = 1;
    ssize_t r = write(a->wake_fd, &one, sizeof one);
    (void)r;
}

/* Records the first error of x with its text. Lock held. */
static void xfer_fail(kvx_xfer_t *x, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void xfer_fail(kvx_xfer_t *x, int err, const char *fmt, ...) {
    if (x->status != 0) return;
    x->status = err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err, sizeof x->err, fmt, ap);
    va_end(ap);
}

static bool peer_dead(const kvx_peer_t *p);

static void op_free(kvx_op_t *op) {
    if (!op) return;
    free(op->hdrs);
    free(op);
}

static void xfer_destroy(kvx_xfer_t *x) {
    if (!x) return;
    op_free(x->op); /* attached: nothing in flight */
    free(x);
}

static kvx_peer_t *peer_find(kvx_agent_t *a, uint64_t id) {
    for (kvx_peer_t *p = a->peers; p; p = p->next)
        if (p->id == id) return p;
    return NULL;
}

/* Moves a transfer with nothing in flight to the completion queue. Lock held. */
static void xfer_maybe_finish(kvx_xfer_t *x) {
    kvx_agent_t *a = x->a;
    if (x->queued || !x->issued_all || (x->op && x->op->outstanding > 0)) return;
    if (x->status == 0) {
        /* without a failure handler, a put into a dead peer's shared memory
         * "succeeds": make sure the peer was alive at the end */
        kvx_peer_t *p = peer_find(a, x->peer_id);
        if (p && p->ep_gen == x->ep_gen && peer_dead(p))
            xfer_fail(x, SL_EUNAVAIL, "peer %016llx: process %u is gone", (unsigned long long)p->id,
                      p->pid);
    }
    if (x->prev)
        x->prev->next = x->next;
    else
        a->active = x->next;
    if (x->next) x->next->prev = x->prev;
    x->prev = x->next = NULL;
    if (x->uses_staging) a->stage_busy = false;
    x->queued = true;
    if (!x->cb) {
        /* nothing to run: complete here, without a trip through the progress
         * thread (a shared-memory put into an allocated pool completes inside
         * kvx_write) */
        if (x->status)
            LOG_DEBUG("kvx %s: transfer failed: %s (%s)", a->name, sl_strerror(x->status), x->err);
        x->done = true;
        pthread_cond_broadcast(&a->cv);
        if (x->agent_owned) xfer_destroy(x);
        return;
    }
    x->next_done = NULL;
    if (a->done_tail)
        a->done_tail->next_done = x;
    else
        a->done_head = x;
    a->done_tail = x;
    wake(a);
}

static void req_cb(void *req, ucs_status_t st, void *ud) {
    kvx_op_t *op = ud;
    kvx_xfer_t *x = op->x;
    ucp_request_free(req);
    op->outstanding--;
    if (!x) {
        if (op->outstanding == 0) {
            if (op->prev)
                op->prev->next = op->next;
            else
                op->a->orphans = op->next;
            if (op->next) op->next->prev = op->prev;
            op_free(op);
        }
        return;
    }
    if (st != UCS_OK)
        xfer_fail(x, status_to_err(st), "peer %016llx: %s", (unsigned long long)x->peer_id,
                  ucs_status_string(st));
    xfer_maybe_finish(x);
}

static void agent_iw_drop(kvx_agent_t *a, int err, const char *why);

/* True if requests on p's current endpoint are still in flight. Lock held. */
static bool peer_busy(kvx_agent_t *a, const kvx_peer_t *p) {
    for (kvx_xfer_t *x = a->active; x; x = x->next)
        if (x->peer_id == p->id && x->ep_gen == p->ep_gen && x->op && x->op->outstanding > 0)
            return true;
    return false;
}

/* Moves x's requests, which UCX may keep forever, to the orphan list and
 * finishes x with its error. Lock held. */
static void xfer_detach(kvx_agent_t *a, kvx_xfer_t *x) {
    if (!x->op || x->op->outstanding == 0) return;
    kvx_op_t *op = x->op;
    op->x = NULL;
    op->a = a;
    op->prev = NULL;
    op->next = a->orphans;
    if (a->orphans) a->orphans->prev = op;
    a->orphans = op;
    x->op = NULL;
    xfer_maybe_finish(x);
}

/* Force-closes p's endpoint: every request on it completes (cancelled).
 * Transfers on it that have no error yet get `err` with `why`. An endpoint
 * without failure handling that still has requests in flight takes the whole
 * initiator worker with it (see the file comment). Lock held. */
static void peer_ep_close(kvx_agent_t *a, kvx_peer_t *p, int err, const char *why) {
    if (!p->ep) return;
    for (kvx_xfer_t *x = a->active; x; x = x->next)
        if (x->peer_id == p->id && x->ep_gen == p->ep_gen)
            xfer_fail(x, err, "peer %016llx: %s", (unsigned long long)p->id, why);
    if (p->no_errh && peer_busy(a, p)) {
        agent_iw_drop(a, SL_EUNAVAIL, why);
        return;
    }
    ucp_ep_h ep = p->ep;
    p->ep = NULL;
    p->ep_failed = false;
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                               .flags = UCP_EP_CLOSE_FLAG_FORCE};
    void *r = ucp_ep_close_nbx(ep, &prm);
    if (UCS_PTR_IS_PTR(r)) {
        while (ucp_request_check_status(r) == UCS_INPROGRESS) ucp_worker_progress(a->iworker);
        ucp_request_free(r);
    }
    if (p->rkey) ucp_rkey_destroy(p->rkey);
    p->rkey = NULL;
    /* detach transfers whose requests UCX kept */
    for (kvx_xfer_t *x = a->active, *nx; x; x = nx) {
        nx = x->next;
        if (x->peer_id != p->id || !x->op || x->op->outstanding == 0) continue;
        LOG_WARN("kvx %s: peer %016llx: abandoning %zu requests of a dead endpoint", a->name,
                 (unsigned long long)p->id, x->op->outstanding);
        xfer_detach(a, x);
    }
    LOG_DEBUG("kvx %s: closed endpoint to %016llx (%s)", a->name, (unsigned long long)p->id, why);
}

/* Fails every transfer of the initiator worker with err (first error wins),
 * destroys the worker with all its endpoints and rkeys, and frees the
 * requests it leaves behind. The next write creates a new worker. Lock held;
 * the progress thread may be in epoll_wait (the fd leaves the set first). */
static void agent_iw_drop(kvx_agent_t *a, int err, const char *why) {
    if (!a->iworker) return;
    if (err != SL_ECANCELLED)
        LOG_WARN("kvx %s: resetting the initiator worker (%s); %s", a->name, why,
                 a->active ? "transfers in flight fail" : "no transfer in flight");
    for (kvx_xfer_t *x = a->active; x; x = x->next)
        xfer_fail(x, err, "peer %016llx: transport reset: %s", (unsigned long long)x->peer_id, why);
    for (kvx_xfer_t *x = a->active, *nx; x; x = nx) {
        nx = x->next;
        xfer_detach(a, x);
    }
    for (kvx_peer_t *p = a->peers; p; p = p->next) {
        if (p->rkey) ucp_rkey_destroy(p->rkey);
        p->rkey = NULL;
        p->ep = NULL; /* destroyed with the worker */
        p->ep_failed = false;
    }
    if (a->iworker_fd >= 0) epoll_ctl(a->epoll_fd, EPOLL_CTL_DEL, a->iworker_fd, NULL);
    uint64_t gen = a->iw_gen;
    ucp_worker_destroy(a->iworker); /* may complete some requests: req_cb sees detached ops */
    a->iworker = NULL;
    a->iworker_fd = -1;
    a->n_iw_resets++;
    for (kvx_op_t *op = a->orphans, *nop; op; op = nop) { /* UCX will not call back any more */
        nop = op->next;
        if (op->iw_gen != gen) continue;
        if (op->prev)
            op->prev->next = op->next;
        else
            a->orphans = op->next;
        if (op->next) op->next->prev = op->prev;
        op_free(op);
    }
}

/* Creates the initiator worker if there is none. Lock held. */
static int agent_iw_ensure(kvx_agent_t *a) {
    if (a->iworker) return 0;
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SERIALIZED};
    ucs_status_t st = ucp_worker_create(a->ctx, &wp, &a->iworker);
    if (st != UCS_OK) {
        a->iworker = NULL;
        LOG_ERROR("kvx %s: ucp_worker_create(initiator): %s", a->name, ucs_status_string(st));
        return SL_EIO;
    }
    int fd = -1;
    st = ucp_worker_get_efd(a->iworker, &fd);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (st != UCS_OK || epoll_ctl(a->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        LOG_ERROR("kvx %s: initiator worker event fd: %s", a->name, ucs_status_string(st));
        ucp_worker_destroy(a->iworker);
        a->iworker = NULL;
        return SL_EIO;
    }
    a->iworker_fd = fd;
    a->iw_gen++;
    return 0;
}

static void peer_free(kvx_peer_t *p) {
    if (!p) return;
    if (p->reg) munmap((void *)p->reg, REG_BYTES);
    free(p->addr);
    free(p->rkey_buf);
    free(p);
}

static void ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t st) {
    kvx_agent_t *a = arg;
    for (kvx_peer_t *p = a->peers; p; p = p->next) {
        if (p->ep != ep) continue;
        LOG_WARN("kvx %s: endpoint to %016llx failed: %s", a->name, (unsigned long long)p->id,
                 ucs_status_string(st));
        p->ep_failed = true;
        p->ep_err = st;
        for (kvx_xfer_t *x = a->active; x; x = x->next)
            if (x->peer_id == p->id && x->ep_gen == p->ep_gen)
                xfer_fail(x, status_to_err(st) == SL_EIO ? SL_EUNAVAIL : status_to_err(st),
                          "peer %016llx: endpoint error: %s", (unsigned long long)p->id,
                          ucs_status_string(st));
    }
}

/* ---- progress thread ---------------------------------------------------------------------- */

/* Deadlines, cancels and failed endpoints. Lock held. Returns the ms until
 * the nearest deadline (capped). */
static int agent_sweep(kvx_agent_t *a) {
    long long now = now_ms();
    long long next = now + 1000;
    for (kvx_peer_t *p = a->peers; p; p = p->next)
        if (p->ep && p->ep_failed) peer_ep_close(a, p, SL_EUNAVAIL, ucs_status_string(p->ep_err));
    /* peers UCX cannot watch: poll their pid while transfers are in flight */
    for (kvx_xfer_t *x = a->active; x; x = x->next) {
        kvx_peer_t *p = peer_find(a, x->peer_id);
        if (!p || !p->ep || !p->no_errh || p->ep_gen != x->ep_gen) continue;
        if (next > now + 50) next = now + 50;
        if (peer_dead(p)) {
            peer_ep_close(a, p, SL_EUNAVAIL, "peer process gone");
            break; /* the list changed; the next sweep sees the rest */
        }
    }
    bool again = true;
    while (again) {
        again = false;
        for (kvx_xfer_t *x = a->active; x; x = x->next) {
            if (x->killed) continue;
            int err = 0;
            if (x->cancel_req)
                err = SL_ECANCELLED;
            else if (now >= x->deadline_ms)
                err = SL_ETIMEDOUT;
            if (!err) {
                if (x->deadline_ms < next) next = x->deadline_ms;
                continue;
            }
            x->killed = true;
            LOG_DEBUG("kvx %s: killing transfer to %016llx, %zu requests in flight", a->name,
                      (unsigned long long)x->peer_id, x->op ? x->op->outstanding : 0);
            xfer_fail(x, err, "peer %016llx: %s", (unsigned long long)x->peer_id,
                      err == SL_ECANCELLED ? "transfer cancelled" : "transfer timed out");
            kvx_peer_t *p = peer_find(a, x->peer_id);
            if (p && p->ep && p->ep_gen == x->ep_gen)
                peer_ep_close(a, p, SL_EUNAVAIL,
                              "endpoint reset: another transfer timed out or was cancelled");
            again = true; /* the list may have changed under us */
            break;
        }
    }
    long long d = next - now;
    return d < 0 ? 0 : (int)d;
}

/* Tells the owner about tags whose bytes all arrived, with the lock
 * dropped. Lock held on entry/exit; only the progress thread adds tags, so
 * the queue cannot grow while the lock is dropped. */
static void agent_recv_notify_run(kvx_agent_t *a) {
    while (a->n_recv_full) {
        uint64_t tag = a->recv_full[--a->n_recv_full];
        kvx_recv_cb_t cb = a->recv_cb;
        void *ud = a->recv_cb_ud;
        if (!cb) continue;
        a->recv_cb_busy = true;
        pthread_mutex_unlock(&a->mu);
        cb(ud, tag);
        pthread_mutex_lock(&a->mu);
        a->recv_cb_busy = false;
        pthread_cond_broadcast(&a->cv);
    }
}

/* Runs queued completions with the lock dropped. Lock held on entry/exit. */
static bool agent_deliver(kvx_agent_t *a) {
    bool any = false;
    while (a->done_head) {
        kvx_xfer_t *x = a->done_head;
        a->done_head = x->next_done;
        if (!a->done_head) a->done_tail = NULL;
        any = true;
        if (x->status)
            LOG_DEBUG("kvx %s: transfer failed: %s (%s)", a->name, sl_strerror(x->status), x->err);
        pthread_mutex_unlock(&a->mu);
        if (x->cb) x->cb(x->ud, x, x->status);
        pthread_mutex_lock(&a->mu);
        x->done = true;
        if (x->agent_owned) xfer_destroy(x);
        pthread_cond_broadcast(&a->cv);
    }
    return any;
}

static void *agent_progress_main(void *arg) {
    kvx_agent_t *a = arg;
    pthread_mutex_lock(&a->mu);
    while (!a->stop) {
        unsigned n_ev;
        do {
            n_ev = ucp_worker_progress(a->tworker);
            if (a->iworker) n_ev += ucp_worker_progress(a->iworker);
        } while (n_ev);
        agent_recv_notify_run(a);
        int wait_ms = agent_sweep(a);
        if (agent_deliver(a)) continue;
        ucs_status_t st = ucp_worker_arm(a->tworker);
        if (st == UCS_OK && a->iworker) st = ucp_worker_arm(a->iworker);
        if (st == UCS_ERR_BUSY) {
            /* more events pending: let callers in between progress rounds */
            pthread_mutex_unlock(&a->mu);
            sched_yield();
            pthread_mutex_lock(&a->mu);
            continue;
        }
        pthread_mutex_unlock(&a->mu);
        struct epoll_event ev[4];
        int n = epoll_wait(a->epoll_fd, ev, 4, wait_ms);
        for (int i = 0; i < n; i++) {
            if (ev[i].data.fd == a->wake_fd) {
                uint64_t v;
                ssize_t r = read(a->wake_fd, &v, sizeof v);
                (void)r;
            }
        }
        pthread_mutex_lock(&a->mu);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* ---- active-message write protocol, target side ------------------------------------------- */

/* The tag's home position in recv_idx (Fibonacci hashing). */
static uint32_t recv_idx_home(uint64_t tag) {
    return (uint32_t)((tag * 0x9E3779B97F4A7C15ull) >> 32) & RECV_IDX_MASK;
}

/* recv_idx position of tag, or the empty position where it would go. Lock held. */
static uint32_t recv_idx_pos(const kvx_agent_t *a, uint64_t tag) {
    uint32_t i = recv_idx_home(tag);
    while (a->recv_idx[i] && a->recv[a->recv_idx[i] - 1].tag != tag) i = (i + 1) & RECV_IDX_MASK;
    return i;
}

/* Removes the index entry at i, shifting later entries of the probe run
 * back so that no lookup stops early at the hole. Lock held. */
static void recv_idx_remove(kvx_agent_t *a, uint32_t i) {
    a->recv_idx[i] = 0;
    for (uint32_t j = (i + 1) & RECV_IDX_MASK; a->recv_idx[j]; j = (j + 1) & RECV_IDX_MASK) {
        uint32_t k = recv_idx_home(a->recv[a->recv_idx[j] - 1].tag);
        /* j's entry may move to the hole i unless its home lies in (i, j] */
        bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays) continue;
        a->recv_idx[i] = a->recv_idx[j];
        a->recv_idx[j] = 0;
        i = j;
    }
}

/* Empties a slot. Lock held. */
static void recv_clear(kvx_agent_t *a, kvx_recv_t *e) {
    recv_idx_remove(a, recv_idx_pos(a, e->tag));
    free(e->blocks);
    memset(e, 0, sizeof *e);
    a->recv_free[KVX_RECV_MAX - a->n_recv] = (uint32_t)(e - a->recv);
    a->n_recv--;
}

static int recv_cmp_u32(const void *x, const void *y) {
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return (a > b) - (a < b);
}

/* Whether every block that [off, off + len) touches is one of e's blocks
 * (len > 0, the range inside the region: checked before). Lock held. */
static bool recv_blocks_allow(const kvx_recv_t *e, uint64_t block_bytes, uint64_t off,
                              uint64_t len) {
    if (!e->blocks) return true;
    for (uint64_t b = off / block_bytes; b <= (off + len - 1) / block_bytes; b++) {
        uint32_t key = (uint32_t)b;
        if (b > UINT32_MAX || !bsearch(&key, e->blocks, e->n_blocks, sizeof key, recv_cmp_u32))
            return false;
    }
    return true;
}

/* Lock held (the progress thread). */
static kvx_recv_t *recv_find(kvx_agent_t *a, uint64_t tag) {
    if (!tag) return NULL;
    uint32_t slot = a->recv_idx[recv_idx_pos(a, tag)];
    return slot ? &a->recv[slot - 1] : NULL;
}

static kvx_region_t *region_by_serial(kvx_agent_t *a, uint64_t serial) {
    for (kvx_region_t *r = a->regions; r; r = r->next)
        if (r->reg_serial == serial) return r;
    return NULL;
}

/* Drops a bad message: counted, logged at most once a second. Lock held. */
static void am_drop(kvx_agent_t *a, const char *why, uint64_t tag) {
    a->stats.am_dropped++;
    long long now = now_ms();
    if (a->drop_log_ms && now - a->drop_log_ms < 1000) {
        a->drops_unlogged++;
        return;
    }
    LOG_WARN("kvx %s: dropped an active message (tag %016llx): %s (%llu more dropped since the "
             "last line)",
             a->name, (unsigned long long)tag, why, (unsigned long long)a->drops_unlogged);
    a->drop_log_ms = now;
    a->drops_unlogged = 0;
}

/* The write protocol's handler (progress thread, lock held): validate, copy,
 * count. Never replies. */
static ucs_status_t am_recv_cb(void *arg, const void *header, size_t header_length, void *data,
                               size_t length, const ucp_am_recv_param_t *param) {
    kvx_agent_t *a = arg;
    const uint8_t *h = header; /* (KVX_AM_HDR_BYTES) see kv_transfer.h */
    uint64_t tag = 0;
    if (param && (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
        am_drop(a, "rendezvous message (writers send eager only)", 0);
        return UCS_OK;
    }
    if (!h || header_length != KVX_AM_HDR_BYTES) {
        am_drop(a, "bad header size", 0);
        return UCS_OK;
    }
    tag = get_u64(h + 24);
    if (memcmp(h, "SLXW", 4) != 0 || get_u16(h + 4) != KVX_VERSION || get_u16(h + 6) != 0) {
        am_drop(a, "bad magic, version or flags", tag);
        return UCS_OK;
    }
    uint64_t inc = get_u64(h + 8), serial = get_u64(h + 16), off = get_u64(h + 32),
             len = get_u64(h + 40);
    if (inc != a->incarnation) {
        am_drop(a, "addressed to another incarnation", tag);
        return UCS_OK;
    }
    if (len == 0 || len > KVX_AM_CHUNK_BYTES || len != length || !data) {
        am_drop(a, "bad length", tag);
        return UCS_OK;
    }
    kvx_region_t *r = region_by_serial(a, serial);
    if (!r || !r->base || r->stage_fn || r->mem_type != KVX_MEM_HOST) {
        am_drop(a, "unknown region", tag);
        return UCS_OK;
    }
    uint64_t rbytes = (uint64_t)r->n_blocks * r->block_bytes; /* checked at registration */
    if (off > rbytes || len > rbytes - off) {
        am_drop(a, "outside the region", tag);
        return UCS_OK;
    }
    kvx_recv_t *e = recv_find(a, tag);
    if (!e) {
        am_drop(a, "unknown tag", tag);
        return UCS_OK;
    }
    if (e->r != r) {
        am_drop(a, "tag of another region", tag);
        return UCS_OK;
    }
    if (len > e->expected - e->received) {
        am_drop(a, "more bytes than expected for the tag", tag);
        return UCS_OK;
    }
    if (!recv_blocks_allow(e, r->block_bytes, off, len)) {
        am_drop(a, "outside the tag's blocks", tag);
        return UCS_OK;
    }
    memcpy(r->base + off, data, len);
    e->received += len;
    /* at most once per declaration, and a tag is live at most once, so
     * the queue (drained after each progress round) holds KVX_RECV_MAX */
    if (e->received == e->expected && a->n_recv_full < KVX_RECV_MAX)
        a->recv_full[a->n_recv_full++] = tag;
    a->stats.am_msgs++;
    a->stats.am_bytes += len;
    return UCS_OK;
}

/* Declares tag; takes ownership of blocks (malloc'd, sorted, or NULL). */
static int recv_declare(kvx_agent_t *a, kvx_region_t *r, uint64_t tag, uint64_t bytes,
                        uint32_t *blocks, size_t n_blocks) {
    int rc = 0;
    pthread_mutex_lock(&a->mu);
    kvx_recv_t *e = recv_find(a, tag);
    if (e) {
        recv_clear(a, e);
    } else if (a->n_recv >= KVX_RECV_MAX) {
        rc = SL_EAGAIN;
        goto out;
    }
    uint32_t slot = a->recv_free[KVX_RECV_MAX - 1 - a->n_recv];
    e = &a->recv[slot];
    *e =
        (kvx_recv_t){.tag = tag, .r = r, .expected = bytes, .blocks = blocks, .n_blocks = n_blocks};
    blocks = NULL;
    a->n_recv++;
    a->recv_idx[recv_idx_pos(a, tag)] = slot + 1;
out:
    pthread_mutex_unlock(&a->mu);
    free(blocks);
    return rc;
}

int kvx_recv_expect(kvx_agent_t *a, kvx_region_t *r, uint64_t tag, uint64_t bytes) {
    if (!a || !r || r->a != a || !tag) return SL_EINVAL;
    return recv_declare(a, r, tag, bytes, NULL, 0);
}

int kvx_recv_expect_blocks(kvx_agent_t *a, kvx_region_t *r, uint64_t tag, const uint32_t *blocks,
                           size_t n) {
    if (!a || !r || r->a != a || !tag || (n && !blocks) || n > r->n_blocks) return SL_EINVAL;
    uint32_t *sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (!sorted) return SL_ENOMEM;
    if (n) memcpy(sorted, blocks, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, recv_cmp_u32);
    for (size_t i = 0; i < n; i++)
        if (sorted[i] >= r->n_blocks || (i && sorted[i] == sorted[i - 1])) {
            free(sorted);
            return SL_EINVAL;
        }
    return recv_declare(a, r, tag, (uint64_t)n * r->block_bytes, sorted, n);
}

int kvx_recv_bytes(kvx_agent_t *a, uint64_t tag, uint64_t *out) {
    if (!a || !out) return SL_EINVAL;
    pthread_mutex_lock(&a->mu);
    kvx_recv_t *e = recv_find(a, tag);
    if (e) *out = e->received;
    pthread_mutex_unlock(&a->mu);
    return e ? 0 : SL_ENOTFOUND;
}

int kvx_recv_done(kvx_agent_t *a, uint64_t tag, uint64_t expected) {
    uint64_t got = 0;
    int rc = kvx_recv_bytes(a, tag, &got);
    return rc ? rc : got >= expected;
}

int kvx_agent_recv_notify(kvx_agent_t *a, kvx_recv_cb_t cb, void *ud) {
    if (!a) return SL_EINVAL;
    pthread_mutex_lock(&a->mu);
    a->recv_cb = cb;
    a->recv_cb_ud = ud;
    while (a->recv_cb_busy) pthread_cond_wait(&a->cv, &a->mu);
    pthread_mutex_unlock(&a->mu);
    return 0;
}

int kvx_recv_forget(kvx_agent_t *a, uint64_t tag) {
    if (!a) return SL_EINVAL;
    pthread_mutex_lock(&a->mu);
    kvx_recv_t *e = recv_find(a, tag);
    if (e) recv_clear(a, e);
    pthread_mutex_unlock(&a->mu);
    return e ? 0 : SL_ENOTFOUND;
}

void kvx_agent_stats(kvx_agent_t *a, kvx_agent_stats_t *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (!a) return;
    pthread_mutex_lock(&a->mu);
    *out = a->stats;
    out->iw_resets = a->n_iw_resets;
    pthread_mutex_unlock(&a->mu);
}

/* ---- agent -------------------------------------------------------------------------------- */

static int frame_address(kvx_agent_t *a, const void *addr, size_t len) {
    size_t total = ADDR_HDR + len + SUM_BYTES;
    uint8_t *b = malloc(total);
    if (!b) return SL_ENOMEM;
    memcpy(b, "SLXA", 4);
    put_u16(b + 4, KVX_VERSION);
    put_u16(b + 6, 0);
    put_u64(b + 8, a->incarnation);
    put_u64(b + 16, a->host);
    put_u32(b + 24, (uint32_t)getpid());
    put_u32(b + 28, a->reg ? (uint32_t)a->reg_fd : REG_NONE);
    put_u32(b + 32, (uint32_t)len);
    memcpy(b + ADDR_HDR, addr, len);
    put_u64(b + ADDR_HDR + len, XXH3_64bits(b, ADDR_HDR + len));
    a->addr_blob = b;
    a->addr_blob_len = total;
    return 0;
}

/* Identifies this boot of this machine, so that a peer on the same host can
 * be checked for liveness by pid. */
static uint64_t host_id(void) {
    char buf[128] = {0};
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
        fclose(f);
    }
    if (!buf[0]) gethostname(buf, sizeof buf - 1);
    return XXH3_64bits(buf, strlen(buf));
}

/* False if the same-host process pid is gone (or a zombie). */
static bool pid_alive(uint32_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *rp = strrchr(buf, ')');
    if (!rp || rp[1] != ' ') return true;
    return rp[2] != 'Z' && rp[2] != 'X';
}

/* A same-host peer whose process is gone, checked where UCX cannot tell:
 * endpoints without failure handling, and before the first connect. */
static bool peer_dead(const kvx_peer_t *p) {
    return (p->no_errh || !p->ep) && p->same_host && !pid_alive(p->pid);
}

/* ---- region registry ---------------------------------------------------------------------- */

/* Creates the agent's registry page; without one, peers just cannot check
 * for freed regions. */
static void registry_create(kvx_agent_t *a) {
    int fd = memfd_create("sluice-kvx-regions", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, REG_BYTES) != 0) goto fail;
    void *m = mmap(NULL, REG_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) goto fail;
    a->reg = m;
    a->reg_fd = fd;
    a->reg[1] = a->incarnation;
    __atomic_store_n(&a->reg[0], REG_MAGIC, __ATOMIC_RELEASE);
    return;
fail:
    LOG_DEBUG("kvx %s: no region registry: %s", a->name, strerror(errno));
    if (fd >= 0) close(fd);
}

/* Lists r as live. Lock held. */
/* Lists r as live: in the agent's region list (the serial names it in AM
 * headers) and, when a slot is free, in the registry. Lock held. */
static void registry_add(kvx_agent_t *a, kvx_region_t *r) {
    r->reg_slot = REG_NONE;
    r->reg_serial = ++a->reg_serial;
    r->next = a->regions;
    a->regions = r;
    if (!a->reg) return;
    for (uint32_t i = 0; i < REG_SLOTS; i++) {
        if (a->reg[2 + i] != 0) continue;
        r->reg_slot = i;
        __atomic_store_n(&a->reg[2 + i], r->reg_serial, __ATOMIC_RELEASE);
        return;
    }
}

/* Maps a same-host peer's registry read-only. Returns the mapping, or NULL
 * with *err = 0 (cannot check: no registry, no permission) or SL_EUNAVAIL
 * (the process, or its registry, is gone: a stale address). */
static const uint64_t *registry_map(uint32_t pid, uint32_t fd, uint64_t incarnation, int *err) {
    *err = 0;
    if (fd == REG_NONE) return NULL;
    char path[64];
    snprintf(path, sizeof path, "/proc/%u/fd/%u", pid, fd);
    int f = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY); /* never block on a FIFO */
    if (f < 0) {
        if (errno == ENOENT) *err = SL_EUNAVAIL;
        return NULL;
    }
    struct stat st;
    void *m = MAP_FAILED;
    if (fstat(f, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == REG_BYTES)
        m = mmap(NULL, REG_BYTES, PROT_READ, MAP_SHARED, f, 0);
    close(f);
    if (m == MAP_FAILED) {
        *err = SL_EUNAVAIL; /* the pid now holds something else at that fd */
        return NULL;
    }
    const uint64_t *reg = m;
    if (__atomic_load_n(&reg[0], __ATOMIC_ACQUIRE) != REG_MAGIC || reg[1] != incarnation) {
        munmap(m, REG_BYTES);
        *err = SL_EUNAVAIL; /* pid reused by another process */
        return NULL;
    }
    return reg;
}

static bool peer_region_freed(const kvx_peer_t *p) {
    return p->reg && p->reg_slot != REG_NONE &&
           __atomic_load_n(&p->reg[2 + p->reg_slot], __ATOMIC_ACQUIRE) != p->reg_serial;
}

/* UCX 1.13 logs an ERROR each time an endpoint with peer failure handling
 * cannot be made over shared memory ("no active messages transport to ...:
 * ... no peer failure handler"); the agent then connects without it, so the
 * line is noise. This process-wide filter drops that one message. */
static ucs_log_func_rc_t ucx_log_filter(const char *file, unsigned line, const char *function,
                                        ucs_log_level_t level,
                                        const ucs_log_component_config_t *comp, const char *fmt,
                                        va_list ap) {
    (void)file, (void)line, (void)function, (void)comp;
    if (level != UCS_LOG_LEVEL_ERROR) return UCS_LOG_FUNC_RC_CONTINUE;
    char msg[512];
    va_list aq;
    va_copy(aq, ap);
    vsnprintf(msg, sizeof msg, fmt, aq);
    va_end(aq);
    if (strstr(msg, "no active messages transport") && strstr(msg, "no peer failure handler"))
        return UCS_LOG_FUNC_RC_STOP;
    return UCS_LOG_FUNC_RC_CONTINUE;
}

static void ucx_log_filter_install(void) {
    ucs_log_push_handler(ucx_log_filter);
}

static uint64_t random_u64(void) {
    uint64_t v = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(&v, sizeof v, 1, f) != 1) v = 0;
        fclose(f);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    v ^= ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);
    return v ? v : 1;
}

int kvx_agent_new(const kvx_agent_opts_t *opts, kvx_agent_t **out) {
    int rc = 0;
    kvx_agent_t *a = NULL;
    ucp_address_t *addr = NULL;
    size_t addr_len = 0;
    if (!out) return SL_EINVAL;
    *out = NULL;
    a = calloc(1, sizeof *a);
    if (!a) return SL_ENOMEM;
    a->tworker_fd = a->iworker_fd = a->wake_fd = a->epoll_fd = a->reg_fd = -1;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    snprintf(a->name, sizeof a->name, "%s", opts && opts->name ? opts->name : "agent");
    a->proto = opts ? opts->proto : KVX_PROTO_AUTO;
    if (a->proto != KVX_PROTO_PUT && a->proto != KVX_PROTO_AM) {
        const char *e = getenv("SLUICE_KVX_PROTO");
        a->proto = !e                  ? KVX_PROTO_AUTO
                   : !strcmp(e, "put") ? KVX_PROTO_PUT
                   : !strcmp(e, "am")  ? KVX_PROTO_AM
                                       : KVX_PROTO_AUTO;
    }
    a->recv = calloc(KVX_RECV_MAX, sizeof *a->recv);
    a->recv_idx = calloc(RECV_IDX_SLOTS, sizeof *a->recv_idx);
    a->recv_free = malloc(KVX_RECV_MAX * sizeof *a->recv_free);
    a->recv_full = malloc(KVX_RECV_MAX * sizeof *a->recv_full);
    if (!a->recv || !a->recv_idx || !a->recv_free || !a->recv_full) {
        rc = SL_ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < KVX_RECV_MAX; i++) /* popped from the top: slot 0 first */
        a->recv_free[i] = KVX_RECV_MAX - 1 - i;
    a->incarnation = random_u64();
    a->host = host_id();

    static pthread_once_t filter_once = PTHREAD_ONCE_INIT;
    pthread_once(&filter_once, ucx_log_filter_install);
    ucp_config_t *cfg = NULL;
    ucs_status_t st = ucp_config_read(NULL, NULL, &cfg);
    if (st != UCS_OK) {
        LOG_ERROR("kvx %s: ucp_config_read: %s", a->name, ucs_status_string(st));
        rc = SL_EIO;
        goto out;
    }
    ucp_params_t pp = {.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED,
                       .features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP,
                       .mt_workers_shared = 0};
    st = ucp_init(&pp, cfg, &a->ctx);
    ucp_config_release(cfg);
    if (st != UCS_OK) {
        LOG_ERROR("kvx %s: ucp_init: %s", a->name, ucs_status_string(st));
        rc = SL_EIO;
        goto out;
    }
    ucp_context_attr_t ca = {.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES};
    if (ucp_context_query(a->ctx, &ca) == UCS_OK)
        a->cuda_ok = (ca.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SERIALIZED};
    st = ucp_worker_create(a->ctx, &wp, &a->tworker);
    if (st != UCS_OK) {
        LOG_ERROR("kvx %s: ucp_worker_create: %s", a->name, ucs_status_string(st));
        rc = SL_EIO;
        goto out;
    }
    ucp_am_handler_param_t hp = {
        .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                      UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG,
        .id = KVX_AM_ID,
        .flags = UCP_AM_FLAG_WHOLE_MSG,
        .cb = am_recv_cb,
        .arg = a};
    st = ucp_worker_set_am_recv_handler(a->tworker, &hp);
    if (st != UCS_OK) {
        LOG_ERROR("kvx %s: ucp_worker_set_am_recv_handler: %s", a->name, ucs_status_string(st));
        rc = SL_EIO;
        goto out;
    }
    st = ucp_worker_get_efd(a->tworker, &a->tworker_fd);
    if (st != UCS_OK) {
        LOG_ERROR("kvx %s: ucp_worker_get_efd: %s", a->name, ucs_status_string(st));
        rc = SL_EIO;
        goto out;
    }
    st = ucp_worker_get_address(a->tworker, &addr, &addr_len);
    if (st != UCS_OK || addr_len == 0 || addr_len > KVX_MAX_ADDR_BYTES) {
        LOG_ERROR("kvx %s: ucp_worker_get_address: %s", a->name, ucs_status_string(st));
        rc = SL_EIO;
        goto out;
    }
    registry_create(a);
    rc = frame_address(a, addr, addr_len);
    if (rc) goto out;
    if (opts && opts->staging_bytes) {
        a->stage_buf = aligned_alloc(4096, (opts->staging_bytes + 4095) & ~(size_t)4095);
        if (!a->stage_buf) {
            rc = SL_ENOMEM;
            goto out;
        }
        a->stage_bytes = opts->staging_bytes;
        ucp_mem_map_params_t mp = {.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                                                 UCP_MEM_MAP_PARAM_FIELD_LENGTH,
                                   .address = a->stage_buf,
                                   .length = a->stage_bytes};
        st = ucp_mem_map(a->ctx, &mp, &a->stage_memh);
        if (st != UCS_OK) {
            LOG_ERROR("kvx %s: ucp_mem_map(staging): %s", a->name, ucs_status_string(st));
            rc = SL_EIO;
            goto out;
        }
    }
    a->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    a->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (a->wake_fd < 0 || a->epoll_fd < 0) {
        rc = -errno;
        goto out;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = a->wake_fd};
    struct epoll_event ev2 = {.events = EPOLLIN, .data.fd = a->tworker_fd};
    if (epoll_ctl(a->epoll_fd, EPOLL_CTL_ADD, a->wake_fd, &ev) < 0 ||
        epoll_ctl(a->epoll_fd, EPOLL_CTL_ADD, a->tworker_fd, &ev2) < 0) {
        rc = -errno;
        goto out;
    }
    if (pthread_create(&a->thr, NULL, agent_progress_main, a) != 0) {
        rc = SL_ENOMEM;
        goto out;
    }
    a->thr_started = true;
    LOG_DEBUG("kvx %s: agent up, address %zu bytes, cuda %d", a->name, addr_len, a->cuda_ok);
out:
    if (addr) ucp_worker_release_address(a->tworker, addr);
    if (rc) {
        kvx_agent_free(a);
        a = NULL;
    }
    *out = a;
    return rc;
}

void kvx_agent_free(kvx_agent_t *a) {
    if (!a) return;
    pthread_mutex_lock(&a->mu);
    for (kvx_xfer_t *x = a->active; x; x = x->next) x->cancel_req = true;
    /* every transfer fails now; its callback runs in the progress thread */
    agent_iw_drop(a, SL_ECANCELLED, "agent shutting down");
    if (a->thr_started) {
        while (a->active || a->done_head) {
            wake(a);
            pthread_cond_wait(&a->cv, &a->mu);
        }
        a->stop = true;
    }
    pthread_mutex_unlock(&a->mu);
    if (a->thr_started) {
        wake(a);
        pthread_join(a->thr, NULL);
    }
    while (a->peers) {
        kvx_peer_t *p = a->peers;
        a->peers = p->next;
        peer_free(p);
    }
    if (a->n_regions)
        LOG_WARN("kvx %s: freed with %d regions still registered", a->name, a->n_regions);
    if (a->stage_memh) ucp_mem_unmap(a->ctx, a->stage_memh);
    free(a->stage_buf);
    if (a->tworker) ucp_worker_destroy(a->tworker);
    while (a->orphans) { /* UCX will not call back any more */
        kvx_op_t *op = a->orphans;
        a->orphans = op->next;
        op_free(op);
    }
    if (a->ctx) ucp_cleanup(a->ctx);
    if (a->wake_fd >= 0) close(a->wake_fd);
    if (a->epoll_fd >= 0) close(a->epoll_fd);
    free(a->addr_blob);
    for (uint32_t i = 0; a->recv && i < KVX_RECV_MAX; i++) free(a->recv[i].blocks);
    free(a->recv);
    free(a->recv_idx);
    free(a->recv_free);
    free(a->recv_full);
    if (a->reg) munmap(a->reg, REG_BYTES);
    if (a->reg_fd >= 0) close(a->reg_fd);
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

/* ---- regions ------------------------------------------------------------------------------ */

int kvx_region_register(kvx_agent_t *a, void *base, size_t block_bytes, uint64_t n_blocks,
                        const kvx_region_opts_t *opts, kvx_region_t **out) {
    int rc = 0;
    kvx_region_t *r = NULL;
    if (!a || !base || !out || block_bytes == 0 || n_blocks == 0) return SL_EINVAL;
    *out = NULL;
    if (n_blocks > SIZE_MAX / block_bytes || (uintptr_t)base > UINTPTR_MAX - n_blocks * block_bytes)
        return SL_EINVAL;
    kvx_mem_type_t mt = opts ? opts->mem_type : KVX_MEM_HOST;
    if (mt != KVX_MEM_HOST && mt != KVX_MEM_DEVICE) return SL_EINVAL;
    bool staged = opts && opts->stage_fn;
    if (mt == KVX_MEM_DEVICE && !staged && !a->cuda_ok) {
        LOG_ERROR("kvx %s: device memory needs UCX with CUDA or a staging hook", a->name);
        return SL_EUNSUPPORTED;
    }
    r = calloc(1, sizeof *r);
    if (!r) return SL_ENOMEM;
    r->a = a;
    r->base = base;
    r->block_bytes = block_bytes;
    r->n_blocks = n_blocks;
    r->mem_type = mt;
    if (staged) {
        r->stage_fn = opts->stage_fn;
        r->stage_ud = opts->stage_ud;
    } else {
        ucp_mem_map_params_t mp = {
            .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                          UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE,
            .address = base,
            .length = n_blocks * block_bytes,
            .memory_type = mt == KVX_MEM_DEVICE ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST};
        pthread_mutex_lock(&a->mu);
        ucs_status_t st = ucp_mem_map(a->ctx, &mp, &r->memh);
        pthread_mutex_unlock(&a->mu);
        if (st != UCS_OK) {
            LOG_ERROR("kvx %s: ucp_mem_map(%zu bytes): %s", a->name, (size_t)mp.length,
                      ucs_status_string(st));
            rc = SL_EIO;
            goto out;
        }
    }
    pthread_mutex_lock(&a->mu);
    a->n_regions++;
    registry_add(a, r);
    pthread_mutex_unlock(&a->mu);
out:
    if (rc) {
        free(r);
        r = NULL;
    }
    *out = r;
    return rc;
}

int kvx_region_alloc(kvx_agent_t *a, size_t block_bytes, uint64_t n_blocks, kvx_region_t **out) {
    int rc = 0;
    kvx_region_t *r = NULL;
    if (!a || !out || block_bytes == 0 || n_blocks == 0) return SL_EINVAL;
    *out = NULL;
    if (n_blocks > SIZE_MAX / block_bytes) return SL_EINVAL;
    r = calloc(1, sizeof *r);
    if (!r) return SL_ENOMEM;
    r->a = a;
    r->block_bytes = block_bytes;
    r->n_blocks = n_blocks;
    r->mem_type = KVX_MEM_HOST;
    r->owned = true;
    /* UCX picks the allocator: a shared-memory segment where a transport can
     * map it into peers (sysv, posix), plain mmap otherwise */
    ucp_mem_map_params_t mp = {.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                                             UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                                             UCP_MEM_MAP_PARAM_FIELD_FLAGS,
                               .address = NULL,
                               .length = n_blocks * block_bytes,
                               .flags = UCP_MEM_MAP_ALLOCATE};
    ucp_mem_attr_t ma = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH};
    pthread_mutex_lock(&a->mu);
    ucs_status_t st = ucp_mem_map(a->ctx, &mp, &r->memh);
    if (st == UCS_OK) {
        st = ucp_mem_query(r->memh, &ma);
        if (st == UCS_OK && (!ma.address || ma.length < mp.length)) st = UCS_ERR_NO_MEMORY;
        if (st != UCS_OK) ucp_mem_unmap(a->ctx, r->memh);
    }
    if (st == UCS_OK) {
        r->base = ma.address;
        a->n_regions++;
        registry_add(a, r);
    }
    pthread_mutex_unlock(&a->mu);
    if (st != UCS_OK) {
        LOG_ERROR("kvx %s: ucp_mem_map(allocate %zu bytes): %s", a->name, (size_t)mp.length,
                  ucs_status_string(st));
        rc = st == UCS_ERR_NO_MEMORY ? SL_ENOMEM : SL_EIO;
        goto out;
    }
out:
    if (rc) {
        free(r);
        r = NULL;
    }
    *out = r;
    return rc;
}

void *kvx_region_ptr(const kvx_region_t *r) {
    return r ? r->base : NULL;
}

void kvx_region_free(kvx_region_t *r) {
    if (!r) return;
    kvx_agent_t *a = r->a;
    pthread_mutex_lock(&a->mu);
    if (a->reg && r->reg_slot != REG_NONE)
        __atomic_store_n(&a->reg[2 + r->reg_slot], 0, __ATOMIC_RELEASE); /* before the unmap */
    for (kvx_region_t **pp = &a->regions; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    for (uint32_t i = 0; a->recv && i < KVX_RECV_MAX; i++) /* its tags: no more writes */
        if (a->recv[i].tag && a->recv[i].r == r) recv_clear(a, &a->recv[i]);
    if (r->memh) ucp_mem_unmap(a->ctx, r->memh);
    a->n_regions--;
    pthread_mutex_unlock(&a->mu);
    free(r);
}

uint64_t kvx_region_base(const kvx_region_t *r) {
    return r ? (uint64_t)(uintptr_t)r->base : 0;
}
size_t kvx_region_block_bytes(const kvx_region_t *r) {
    return r ? r->block_bytes : 0;
}

/* ---- descriptors -------------------------------------------------------------------------- */

int kvx_agent_address_export(kvx_agent_t *a, uint8_t **out, size_t *out_len) {
    if (!a || !out || !out_len) return SL_EINVAL;
    *out = malloc(a->addr_blob_len);
    if (!*out) return SL_ENOMEM;
    memcpy(*out, a->addr_blob, a->addr_blob_len);
    *out_len = a->addr_blob_len;
    return 0;
}

int kvx_region_rkey_export(kvx_region_t *r, uint8_t **out, size_t *out_len) {
    int rc = 0;
    void *packed = NULL;
    size_t plen = 0;
    if (!r || !out || !out_len) return SL_EINVAL;
    *out = NULL;
    if (!r->memh) return SL_EUNSUPPORTED;
    kvx_agent_t *a = r->a;
    pthread_mutex_lock(&a->mu);
    ucs_status_t st = ucp_rkey_pack(a->ctx, r->memh, &packed, &plen);
    pthread_mutex_unlock(&a->mu);
    if (st != UCS_OK || plen == 0 || plen > KVX_MAX_RKEY_BYTES) {
        LOG_ERROR("kvx %s: ucp_rkey_pack: %s (%zu bytes)", a->name, ucs_status_string(st), plen);
        rc = SL_EIO;
        goto out;
    }
    size_t total = RKEY_HDR + plen + SUM_BYTES;
    uint8_t *b = malloc(total);
    if (!b) {
        rc = SL_ENOMEM;
        goto out;
    }
    memcpy(b, "SLXR", 4);
    put_u16(b + 4, KVX_VERSION);
    put_u16(b + 6, (uint16_t)r->mem_type);
    put_u64(b + 8, a->incarnation);
    put_u64(b + 16, (uint64_t)(uintptr_t)r->base);
    put_u64(b + 24, r->block_bytes);
    put_u64(b + 32, r->n_blocks);
    put_u32(b + 40, r->reg_slot);
    put_u64(b + 44, r->reg_serial);
    put_u32(b + 52, (uint32_t)plen);
    memcpy(b + RKEY_HDR, packed, plen);
    put_u64(b + RKEY_HDR + plen, XXH3_64bits(b, RKEY_HDR + plen));
    *out = b;
    *out_len = total;
out:
    if (packed) ucp_rkey_buffer_release(packed);
    return rc;
}

int kvx_region_desc_export(kvx_region_t *r, uint8_t **out, size_t *out_len) {
    uint8_t *rk = NULL;
    size_t rk_len = 0;
    if (!r || !out || !out_len) return SL_EINVAL;
    *out = NULL;
    int rc = kvx_region_rkey_export(r, &rk, &rk_len);
    if (rc) return rc;
    kvx_agent_t *a = r->a;
    size_t total = DESC_HDR + a->addr_blob_len + rk_len;
    uint8_t *b = malloc(total);
    if (!b) {
        rc = SL_ENOMEM;
        goto out;
    }
    memcpy(b, "SLXD", 4);
    put_u16(b + 4, KVX_VERSION);
    put_u16(b + 6, 0);
    put_u32(b + 8, (uint32_t)a->addr_blob_len);
    put_u32(b + 12, (uint32_t)rk_len);
    memcpy(b + DESC_HDR, a->addr_blob, a->addr_blob_len);
    memcpy(b + DESC_HDR + a->addr_blob_len, rk, rk_len);
    *out = b;
    *out_len = total;
out:
    free(rk);
    return rc;
}

/* Parsed, validated view into caller bytes. */
typedef struct parsed_addr {
    uint64_t incarnation, host;
    uint32_t pid, reg_fd;
    const uint8_t *addr;
    size_t len;
} parsed_addr_t;

typedef struct parsed_rkey {
    uint64_t incarnation, base, block_bytes, n_blocks, reg_serial;
    uint32_t reg_slot;
    uint16_t mem_type;
    const uint8_t *rkey;
    size_t len;
} parsed_rkey_t;

static int parse_addr(const uint8_t *b, size_t n, parsed_addr_t *o) {
    if (n < ADDR_HDR + SUM_BYTES) return SL_EPROTO;
    if (memcmp(b, "SLXA", 4) != 0 || get_u16(b + 4) != KVX_VERSION) return SL_EPROTO;
    uint32_t len = get_u32(b + 32);
    if (get_u16(b + 6) != 0 || len == 0 || len > KVX_MAX_ADDR_BYTES) return SL_EPROTO;
    if ((size_t)ADDR_HDR + len + SUM_BYTES != n) return SL_EPROTO;
    if (XXH3_64bits(b, ADDR_HDR + len) != get_u64(b + ADDR_HDR + len)) return SL_EPROTO;
    o->incarnation = get_u64(b + 8);
    o->host = get_u64(b + 16);
    o->pid = get_u32(b + 24);
    o->reg_fd = get_u32(b + 28);
    o->addr = b + ADDR_HDR;
    o->len = len;
    return 0;
}

static int parse_rkey(const uint8_t *b, size_t n, parsed_rkey_t *o) {
    if (n < RKEY_HDR + SUM_BYTES) return SL_EPROTO;
    if (memcmp(b, "SLXR", 4) != 0 || get_u16(b + 4) != KVX_VERSION) return SL_EPROTO;
    uint32_t len = get_u32(b + 52);
    if (len == 0 || len > KVX_MAX_RKEY_BYTES) return SL_EPROTO;
    if ((size_t)RKEY_HDR + len + SUM_BYTES != n) return SL_EPROTO;
    if (XXH3_64bits(b, RKEY_HDR + len) != get_u64(b + RKEY_HDR + len)) return SL_EPROTO;
    o->mem_type = get_u16(b + 6);
    o->incarnation = get_u64(b + 8);
    o->base = get_u64(b + 16);
    o->block_bytes = get_u64(b + 24);
    o->reg_slot = get_u32(b + 40);
    o->reg_serial = get_u64(b + 44);
    o->n_blocks = get_u64(b + 32);
    o->rkey = b + RKEY_HDR;
    o->len = len;
    if (o->mem_type > KVX_MEM_DEVICE || o->block_bytes == 0 || o->n_blocks == 0 ||
        (o->reg_slot != REG_NONE && (o->reg_slot >= REG_SLOTS || o->reg_serial == 0)) ||
        o->n_blocks > UINT32_MAX || o->block_bytes > UINT64_MAX / o->n_blocks ||
        o->base > UINT64_MAX - o->block_bytes * o->n_blocks)
        return SL_EINVAL;
    return 0;
}

int kvx_peer_import(kvx_agent_t *a, uint64_t peer_id, const uint8_t *addr, size_t addr_len,
                    const uint8_t *rkey, size_t rkey_len, uint64_t remote_base,
                    uint64_t block_bytes) {
    int rc = 0;
    parsed_addr_t pa;
    parsed_rkey_t pr;
    kvx_peer_t *p = NULL;
    if (!a || !addr || !rkey) return SL_EINVAL;
    if (addr_len > ADDR_HDR + KVX_MAX_ADDR_BYTES + SUM_BYTES ||
        rkey_len > RKEY_HDR + KVX_MAX_RKEY_BYTES + SUM_BYTES)
        return SL_EINVAL;
    rc = parse_addr(addr, addr_len, &pa);
    if (rc) {
        LOG_WARN("kvx %s: peer %016llx: rejected address blob (%zu bytes): malformed", a->name,
                 (unsigned long long)peer_id, addr_len);
        return rc;
    }
    rc = parse_rkey(rkey, rkey_len, &pr);
    if (rc) {
        LOG_WARN("kvx %s: peer %016llx: rejected rkey blob (%zu bytes): %s", a->name,
                 (unsigned long long)peer_id, rkey_len, sl_strerror(rc));
        return rc;
    }
    if (pa.incarnation != pr.incarnation) {
        LOG_WARN("kvx %s: peer %016llx: stale rkey (incarnation %016llx, address %016llx)", a->name,
                 (unsigned long long)peer_id, (unsigned long long)pr.incarnation,
                 (unsigned long long)pa.incarnation);
        return SL_EPROTO;
    }
    if ((remote_base && remote_base != pr.base) || (block_bytes && block_bytes != pr.block_bytes)) {
        LOG_WARN("kvx %s: peer %016llx: remote_base/block_bytes disagree with the rkey blob",
                 a->name, (unsigned long long)peer_id);
        return SL_EINVAL;
    }
    p = calloc(1, sizeof *p);
    if (!p) return SL_ENOMEM;
    p->reg_slot = pr.reg_slot;
    p->reg_serial = pr.reg_serial; /* names the region in AM headers */
    if (pa.host == a->host) {
        p->reg = registry_map(pa.pid, pa.reg_fd, pa.incarnation, &rc);
        if (rc) {
            LOG_WARN("kvx %s: peer %016llx: stale address: process %u has exited", a->name,
                     (unsigned long long)peer_id, pa.pid);
            goto out;
        }
        if (peer_region_freed(p)) {
            LOG_WARN("kvx %s: peer %016llx: stale rkey: the region was freed", a->name,
                     (unsigned long long)peer_id);
            rc = SL_EPROTO;
            goto out;
        }
    }
    p->id = peer_id;
    p->incarnation = pa.incarnation;
    p->pid = pa.pid;
    p->same_host = pa.host == a->host;
    p->addr = malloc(pa.len);
    p->rkey_buf = malloc(pr.len);
    if (!p->addr || !p->rkey_buf) {
        rc = SL_ENOMEM;
        goto out;
    }
    memcpy(p->addr, pa.addr, pa.len);
    p->addr_len = pa.len;
    memcpy(p->rkey_buf, pr.rkey, pr.len);
    p->rkey_len = pr.len;
    p->base = pr.base;
    p->block_bytes = pr.block_bytes;
    p->n_blocks = pr.n_blocks;

    pthread_mutex_lock(&a->mu);
    kvx_peer_t **pp = &a->peers;
    while (*pp && (*pp)->id != peer_id) pp = &(*pp)->next;
    if (*pp) {
        kvx_peer_t *old = *pp;
        bool same = old->incarnation == p->incarnation && old->base == p->base &&
                    old->block_bytes == p->block_bytes && old->n_blocks == p->n_blocks &&
                    old->rkey_len == p->rkey_len &&
                    !memcmp(old->rkey_buf, p->rkey_buf, p->rkey_len);
        if (same) {
            pthread_mutex_unlock(&a->mu);
            goto out; /* nothing changed: keep the cached endpoint */
        }
        peer_ep_close(a, old, SL_EUNAVAIL, "peer re-registered");
        p->next = old->next;
        *pp = p;
        peer_free(old);
    } else {
        p->next = a->peers;
        a->peers = p;
    }
    p = NULL;
    pthread_mutex_unlock(&a->mu);
out:
    peer_free(p);
    return rc;
}

int kvx_peer_import_desc(kvx_agent_t *a, uint64_t peer_id, const uint8_t *desc, size_t len) {
    if (!a || !desc) return SL_EINVAL;
    if (len < DESC_HDR || memcmp(desc, "SLXD", 4) != 0 || get_u16(desc + 4) != KVX_VERSION ||
        get_u16(desc + 6) != 0) {
        LOG_WARN("kvx %s: peer %016llx: rejected descriptor (%zu bytes): bad header", a->name,
                 (unsigned long long)peer_id, len);
        return SL_EPROTO;
    }
    uint64_t al = get_u32(desc + 8), rl = get_u32(desc + 12);
    if (DESC_HDR + al + rl != len) {
        LOG_WARN("kvx %s: peer %016llx: rejected descriptor: lengths %llu + %llu != %zu", a->name,
                 (unsigned long long)peer_id, (unsigned long long)al, (unsigned long long)rl,
                 len - DESC_HDR);
        return SL_EPROTO;
    }
    return kvx_peer_import(a, peer_id, desc + DESC_HDR, al, desc + DESC_HDR + al, rl, 0, 0);
}

int kvx_peer_remove(kvx_agent_t *a, uint64_t peer_id) {
    if (!a) return SL_EINVAL;
    pthread_mutex_lock(&a->mu);
    kvx_peer_t **pp = &a->peers;
    while (*pp && (*pp)->id != peer_id) pp = &(*pp)->next;
    kvx_peer_t *p = *pp;
    if (p) {
        peer_ep_close(a, p, SL_EUNAVAIL, "peer removed");
        *pp = p->next;
    }
    pthread_mutex_unlock(&a->mu);
    if (!p) return SL_ENOTFOUND;
    peer_free(p);
    return 0;
}

int kvx_peer_connected(kvx_agent_t *a, uint64_t peer_id) {
    if (!a) return 0;
    pthread_mutex_lock(&a->mu);
    kvx_peer_t *p = peer_find(a, peer_id);
    int c = p && p->ep && !p->ep_failed;
    pthread_mutex_unlock(&a->mu);
    return c;
}

/* Whether writes to p must go by active messages: UCX 1.13 has no transport
 * query on an endpoint, so this reads ucp_ep_print_info: the "lane[i]: ...
 * -> md[m]/..." lines give each lane's remote memory domain, the "put[i]:"
 * lines the lanes that do puts natively. A put is native when such a lane's
 * remote md is in the rkey's md map (the first 8 bytes of a packed rkey);
 * otherwise UCX would emulate it with active messages that the target
 * acknowledges (TCP; shm into registered memory), and we use our own
 * protocol. Anything unparsable means AM, the safe side. Lock held. */
static bool peer_wants_am(kvx_agent_t *a, const kvx_peer_t *p) {
    if (a->proto == KVX_PROTO_PUT) return false;
    if (a->proto == KVX_PROTO_AM || p->rkey_len < 8) return true;
    uint64_t md_map = get_u64(p->rkey_buf);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return true;
    ucp_ep_print_info(p->ep, f);
    fclose(f);
    int lane_md[64];
    bool lane_put[64] = {false};
    for (int i = 0; i < 64; i++) lane_md[i] = -1;
    for (char *line = buf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        unsigned ln = 0, md = 0;
        const char *l = strstr(line, "lane["), *m = strstr(line, "-> md["),
                   *pu = strstr(line, "put[");
        if (l && m && sscanf(l, "lane[%u]", &ln) == 1 && sscanf(m, "-> md[%u]", &md) == 1 &&
            ln < 64 && md < 64)
            lane_md[ln] = (int)md;
        else if (pu && pu[-1] != '_' && sscanf(pu, "put[%u]", &ln) == 1 && ln < 64)
            lane_put[ln] = true;
        line = nl ? nl + 1 : NULL;
    }
    free(buf);
    for (int i = 0; i < 64; i++)
        if (lane_put[i] && lane_md[i] >= 0 && ((md_map >> lane_md[i]) & 1)) return false;
    return true;
}

/* Creates the endpoint and unpacks the rkey. Lock held. */
static int peer_connect(kvx_agent_t *a, kvx_peer_t *p) {
    if (p->ep && !p->ep_failed) return 0;
    if (p->ep) peer_ep_close(a, p, SL_EUNAVAIL, ucs_status_string(p->ep_err));
    int rc = agent_iw_ensure(a);
    if (rc) return rc;
    ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLER,
                          .address = (const ucp_address_t *)p->addr,
                          .err_mode = UCP_ERR_HANDLING_MODE_PEER,
                          .err_handler = {.cb = ep_err_cb, .arg = a}};
    ucs_status_t st = UCS_ERR_UNSUPPORTED;
    if (!p->errh_unsupported) {
        st = ucp_ep_create(a->iworker, &ep, &p->ep);
        p->errh_unsupported = st != UCS_OK;
    }
    p->no_errh = false;
    if (st != UCS_OK) {
        /* Shared-memory transports in UCX 1.13 have no peer failure handler:
         * connect without one, and watch a same-host peer's pid instead. */
        ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;
        ep.field_mask &= ~(uint64_t)UCP_EP_PARAM_FIELD_ERR_HANDLER;
        st = ucp_ep_create(a->iworker, &ep, &p->ep);
        p->no_errh = st == UCS_OK;
        if (p->no_errh)
            LOG_DEBUG("kvx %s: endpoint to %016llx without peer failure handling%s", a->name,
                      (unsigned long long)p->id, p->same_host ? " (pid watched)" : "");
    }
    if (st != UCS_OK) {
        p->ep = NULL;
        LOG_WARN("kvx %s: connect to %016llx failed: %s", a->name, (unsigned long long)p->id,
                 ucs_status_string(st));
        return SL_EUNAVAIL;
    }
    p->ep_gen = ++a->ep_gen_next;
    p->ep_failed = false;
    st = ucp_ep_rkey_unpack(p->ep, p->rkey_buf, &p->rkey);
    if (st != UCS_OK) {
        p->rkey = NULL;
        LOG_WARN("kvx %s: peer %016llx: rkey rejected by UCX: %s", a->name,
                 (unsigned long long)p->id, ucs_status_string(st));
        peer_ep_close(a, p, SL_EUNAVAIL, "rkey rejected");
        return SL_EPROTO;
    }
    p->use_am = peer_wants_am(a, p);
    LOG_DEBUG("kvx %s: connected to %016llx, writes by %s", a->name, (unsigned long long)p->id,
              p->use_am ? "active messages" : "puts");
    return 0;
}

/* Fills an AM header for p's region. Lock held. */
static void am_header_fill(uint8_t *h, const kvx_peer_t *p, uint64_t tag, uint64_t off,
                           uint64_t len) {
    memcpy(h, "SLXW", 4);
    put_u16(h + 4, KVX_VERSION);
    put_u16(h + 6, 0);
    put_u64(h + 8, p->incarnation);
    put_u64(h + 16, p->reg_serial);
    put_u64(h + 24, tag);
    put_u64(h + 32, off);
    put_u64(h + 40, len);
}

/* ---- writes ------------------------------------------------------------------------------- */

typedef struct pair {
    uint32_t s, d;
} pair_t;

static int pair_cmp(const void *x, const void *y) {
    const pair_t *a = x, *b = y;
    return a->d < b->d ? -1 : a->d > b->d;
}

/* Posts one ucp request (put or flush) of x. Lock held. */
static void xfer_post_result(kvx_xfer_t *x, ucs_status_ptr_t r, const char *what) {
    if (r == NULL) return;
    if (UCS_PTR_IS_ERR(r)) {
        ucs_status_t st = UCS_PTR_STATUS(r);
        xfer_fail(x, status_to_err(st), "peer %016llx: %s: %s", (unsigned long long)x->peer_id,
                  what, ucs_status_string(st));
        return;
    }
    x->op->outstanding++;
}

int kvx_write(kvx_agent_t *a, uint64_t peer_id, kvx_region_t *src, const uint32_t *src_blocks,
              const uint32_t *dst_blocks, size_t n, const kvx_write_opts_t *opts,
              kvx_xfer_t **out) {
    int rc = 0;
    pair_t *pairs = NULL;
    kvx_xfer_t *x = NULL;
    bool locked = false, staged = false;
    if (out) *out = NULL;
    if (!a || !src || src->a != a || (n && (!src_blocks || !dst_blocks))) return SL_EINVAL;
    if (n > SIZE_MAX / sizeof(pair_t)) return SL_ETOOBIG;
    x = calloc(1, sizeof *x);
    if (x) x->op = calloc(1, sizeof *x->op);
    pairs = malloc((n ? n : 1) * sizeof *pairs);
    if (!x || !x->op || !pairs) {
        rc = SL_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (src_blocks[i] >= src->n_blocks) {
            rc = SL_ERANGE;
            goto out;
        }
        pairs[i].s = src_blocks[i];
        pairs[i].d = dst_blocks[i];
    }
    qsort(pairs, n, sizeof *pairs, pair_cmp);
    for (size_t i = 1; i < n; i++)
        if (pairs[i].d == pairs[i - 1].d) {
            rc = SL_EINVAL;
            goto out;
        }
    x->a = a;
    x->op->x = x;
    x->peer_id = peer_id;
    x->agent_owned = out == NULL;
    x->cb = opts ? opts->cb : NULL;
    x->ud = opts ? opts->ud : NULL;
    uint32_t tmo = opts && opts->timeout_ms ? opts->timeout_ms : KVX_DEFAULT_TIMEOUT_MS;
    x->deadline_ms = now_ms() + tmo;

    pthread_mutex_lock(&a->mu);
    locked = true;
    kvx_peer_t *p = peer_find(a, peer_id);
    if (!p) {
        rc = SL_ENOTFOUND;
        goto out;
    }
    if (p->block_bytes != src->block_bytes) {
        LOG_WARN("kvx %s: peer %016llx block_bytes %llu != local %zu", a->name,
                 (unsigned long long)peer_id, (unsigned long long)p->block_bytes, src->block_bytes);
        rc = SL_EINVAL;
        goto out;
    }
    if (n && pairs[n - 1].d >= p->n_blocks) {
        rc = SL_ERANGE;
        goto out;
    }
    size_t bb = src->block_bytes;
    if (src->stage_fn) {
        if (n > a->stage_bytes / bb) {
            rc = SL_ETOOBIG;
            goto out;
        }
        if (a->stage_busy) {
            rc = SL_EAGAIN;
            goto out;
        }
        a->stage_busy = true;
        staged = true;
        /* copy without the lock: stage_fn may be slow (device to host) */
        pthread_mutex_unlock(&a->mu);
        locked = false;
        for (size_t i = 0; i < n && !rc; i++)
            rc = src->stage_fn(src->stage_ud, (uint8_t *)a->stage_buf + i * bb,
                               src->base + (size_t)pairs[i].s * bb, bb);
        pthread_mutex_lock(&a->mu);
        locked = true;
        if (rc) goto out;
        p = peer_find(a, peer_id); /* may have gone while unlocked */
        if (!p) {
            rc = SL_ENOTFOUND;
            goto out;
        }
    }
    if (peer_dead(p)) {
        LOG_WARN("kvx %s: peer %016llx: process %u is gone", a->name, (unsigned long long)peer_id,
                 p->pid);
        if (p->ep) peer_ep_close(a, p, SL_EUNAVAIL, "peer process gone");
        rc = SL_EUNAVAIL;
        goto out;
    }
    if (peer_region_freed(p)) {
        LOG_WARN("kvx %s: peer %016llx: stale rkey: the region was freed", a->name,
                 (unsigned long long)peer_id);
        rc = SL_EPROTO;
        goto out;
    }
    rc = peer_connect(a, p);
    if (rc) goto out;
    uint64_t tag = opts ? opts->tag : 0;
    if (p->use_am && n) {
        if (!tag) {
            LOG_WARN("kvx %s: peer %016llx: an active-message write needs a transfer tag", a->name,
                     (unsigned long long)peer_id);
            rc = SL_EINVAL;
            goto out;
        }
        size_t n_msgs = 0; /* upper bound: every block its own run */
        size_t per_block = (bb + KVX_AM_CHUNK_BYTES - 1) / KVX_AM_CHUNK_BYTES;
        if (per_block > SIZE_MAX / KVX_AM_HDR_BYTES / n) {
            rc = SL_ETOOBIG;
            goto out;
        }
        n_msgs = n * per_block + n; /* runs split at chunk bounds add at most one each */
        if (n_msgs > SIZE_MAX / KVX_AM_HDR_BYTES) {
            rc = SL_ETOOBIG;
            goto out;
        }
        x->op->hdrs = malloc(n_msgs * KVX_AM_HDR_BYTES);
        if (!x->op->hdrs) {
            rc = SL_ENOMEM;
            goto out;
        }
    }
    x->ep_gen = p->ep_gen;
    x->op->iw_gen = a->iw_gen;
    x->uses_staging = staged;
    staged = false; /* released by xfer_maybe_finish from now on */
    x->next = a->active;
    if (a->active) a->active->prev = x;
    a->active = x;

    for (size_t i = 0; i < n && x->status == 0;) {
        size_t j = i + 1;
        if (!src->stage_fn)
            while (j < n && pairs[j].s == pairs[j - 1].s + 1 && pairs[j].d == pairs[j - 1].d + 1)
                j++;
        else
            while (j < n && pairs[j].d == pairs[j - 1].d + 1) j++; /* staging is contiguous */
        const uint8_t *lp = src->stage_fn ? (const uint8_t *)a->stage_buf + i * bb
                                          : src->base + (size_t)pairs[i].s * bb;
        if (p->use_am) {
            /* (j - i) blocks in eager messages of at most KVX_AM_CHUNK_BYTES */
            size_t run = (j - i) * bb;
            uint64_t roff = (uint64_t)pairs[i].d * bb;
            for (size_t o = 0; o < run && x->status == 0; o += KVX_AM_CHUNK_BYTES) {
                size_t cl = run - o < KVX_AM_CHUNK_BYTES ? run - o : KVX_AM_CHUNK_BYTES;
                uint8_t *h = x->op->hdrs + x->n_puts * KVX_AM_HDR_BYTES;
                am_header_fill(h, p, tag, roff + o, cl);
                ucp_request_param_t am = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
                                                          UCP_OP_ATTR_FIELD_USER_DATA |
                                                          UCP_OP_ATTR_FIELD_FLAGS,
                                          .cb.send = req_cb,
                                          .user_data = x->op,
                                          .flags = UCP_AM_SEND_FLAG_EAGER};
                xfer_post_result(
                    x, ucp_am_send_nbx(p->ep, KVX_AM_ID, h, KVX_AM_HDR_BYTES, lp + o, cl, &am),
                    "am send");
                x->n_puts++;
                x->am_bytes += cl;
            }
            i = j;
            continue;
        }
        ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
                                                   UCP_OP_ATTR_FIELD_USER_DATA |
                                                   UCP_OP_ATTR_FIELD_MEMH,
                                   .cb.send = req_cb,
                                   .user_data = x->op,
                                   .memh = src->stage_fn ? a->stage_memh : src->memh};
        ucs_status_ptr_t r = ucp_put_nbx(p->ep, lp, (j - i) * bb,
                                         p->base + (uint64_t)pairs[i].d * bb, p->rkey, &prm);
        xfer_post_result(x, r, "put");
        x->n_puts++;
        i = j;
    }
    if (x->status == 0 && n > 0) {
        ucp_request_param_t prm = {.op_attr_mask =
                                       UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                                   .cb.send = req_cb,
                                   .user_data = x->op};
        xfer_post_result(x, ucp_ep_flush_nbx(p->ep, &prm), "flush");
    }
    x->issued_all = true;
    xfer_maybe_finish(x);
    wake(a);
    if (out) *out = x;
    x = NULL;
out:
    if (staged) a->stage_busy = false;
    if (locked) pthread_mutex_unlock(&a->mu);
    xfer_destroy(x);
    free(pairs);
    return rc;
}

int kvx_xfer_wait(kvx_xfer_t *x, int timeout_ms) {
    if (!x) return SL_EINVAL;
    kvx_agent_t *a = x->a;
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    if (timeout_ms >= 0) {
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&a->mu);
    while (!x->done) {
        if (timeout_ms < 0)
            pthread_cond_wait(&a->cv, &a->mu);
        else if (pthread_cond_timedwait(&a->cv, &a->mu, &dl) == ETIMEDOUT)
            break;
    }
    int rc = x->done ? x->status : SL_EAGAIN;
    pthread_mutex_unlock(&a->mu);
    return rc;
}

void kvx_xfer_cancel(kvx_xfer_t *x) {
    if (!x) return;
    kvx_agent_t *a = x->a;
    pthread_mutex_lock(&a->mu);
    if (!x->queued) x->cancel_req = true;
    pthread_mutex_unlock(&a->mu);
    wake(a);
}

const char *kvx_xfer_error_text(const kvx_xfer_t *x) {
    return x ? x->err : "";
}
size_t kvx_xfer_n_puts(const kvx_xfer_t *x) {
    return x ? x->n_puts : 0;
}
uint64_t kvx_xfer_am_bytes(const kvx_xfer_t *x) {
    return x ? x->am_bytes : 0;
}

int kvx_debug_am_header(kvx_agent_t *a, uint64_t peer_id, uint64_t tag, uint64_t offset,
                        uint64_t length, uint8_t out[KVX_AM_HDR_BYTES]) {
    if (!a || !out) return SL_EINVAL;
    pthread_mutex_lock(&a->mu);
    kvx_peer_t *p = peer_find(a, peer_id);
    if (p) am_header_fill(out, p, tag, offset, length);
    pthread_mutex_unlock(&a->mu);
    return p ? 0 : SL_ENOTFOUND;
}

int kvx_debug_am_send(kvx_agent_t *a, uint64_t peer_id, const void *hdr, size_t hdr_len,
                      const void *data, size_t len, int timeout_ms) {
    int rc = 0;
    if (!a || (hdr_len && !hdr) || (len && !data)) return SL_EINVAL;
    kvx_xfer_t *x = calloc(1, sizeof *x);
    if (x) x->op = calloc(1, sizeof *x->op);
    void *hcopy = malloc(hdr_len ? hdr_len : 1);
    if (!x || !x->op || !hcopy) {
        free(hcopy);
        xfer_destroy(x);
        return SL_ENOMEM;
    }
    memcpy(hcopy, hdr, hdr_len);
    x->op->hdrs = hcopy;
    x->a = a;
    x->op->x = x;
    x->peer_id = peer_id;
    x->deadline_ms =
        now_ms() + (timeout_ms > 0 ? (long long)timeout_ms : (long long)KVX_DEFAULT_TIMEOUT_MS);
    pthread_mutex_lock(&a->mu);
    kvx_peer_t *p = peer_find(a, peer_id);
    rc = p ? peer_connect(a, p) : SL_ENOTFOUND;
    if (rc) {
        pthread_mutex_unlock(&a->mu);
        xfer_destroy(x);
        return rc;
    }
    x->ep_gen = p->ep_gen;
    x->op->iw_gen = a->iw_gen;
    x->next = a->active;
    if (a->active) a->active->prev = x;
    a->active = x;
    ucp_request_param_t am = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
                                              UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS,
                              .cb.send = req_cb,
                              .user_data = x->op,
                              .flags = UCP_AM_SEND_FLAG_EAGER};
    xfer_post_result(x, ucp_am_send_nbx(p->ep, KVX_AM_ID, hcopy, hdr_len, data, len, &am),
                     "am send");
    ucp_request_param_t fl = {.op_attr_mask =
                                  UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                              .cb.send = req_cb,
                              .user_data = x->op};
    if (x->status == 0) xfer_post_result(x, ucp_ep_flush_nbx(p->ep, &fl), "flush");
    x->issued_all = true;
    xfer_maybe_finish(x);
    wake(a);
    pthread_mutex_unlock(&a->mu);
    rc = kvx_xfer_wait(x, timeout_ms > 0 ? timeout_ms + 2000 : -1);
    kvx_xfer_free(x);
    return rc == SL_EAGAIN ? SL_ETIMEDOUT : rc;
}

void kvx_xfer_free(kvx_xfer_t *x) {
    if (!x) return;
    kvx_xfer_cancel(x);
    kvx_xfer_wait(x, -1);
    xfer_destroy(x);
}
