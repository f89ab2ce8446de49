/* kv_transfer.h - KV block transfer between processes over UCX ucp.
 *
 * Sluice's own "NIXL": a prefill worker writes KV blocks straight into a
 * decode worker's KV pool with one-sided puts. The pieces:
 *   agent   - a ucp context, a target worker (its address is exported), an
 *             initiator worker (endpoints to peers; replaced after a peer
 *             death, see kv_transfer.c) and a progress thread; one per
 *             process.
 *   region  - a registered (kvx_region_register) or UCX-allocated
 *             (kvx_region_alloc) KV pool: block b at base + b * block_bytes,
 *             one block = one contiguous range.
 *   peer    - a remote region imported from its descriptor, keyed by the
 *             peer's instance id; the endpoint is created lazily on the
 *             first write and dropped on any endpoint error.
 *   xfer    - one write of (local block -> remote block) pairs: runs of
 *             consecutive ids on both sides become one ucp_put_nbx, then an
 *             endpoint flush; it completes (callback or kvx_xfer_wait) only
 *             once the data is in the remote memory. Where UCX would only
 *             emulate puts (TCP; shm into registered memory) the runs go as
 *             eager active messages of our own protocol instead (see
 *             kvx_proto_t and the target-side functions below): the target
 *             never sends anything back, so a writer killed mid-transfer
 *             cannot hurt it, and completion means "sent": the target counts
 *             arrivals per transfer tag (kvx_recv_done).
 *
 * Descriptors are opaque bytes (framed, versioned, checksummed; see
 * kv_transfer.c): an address blob (the ucp worker address) and an rkey blob
 * (packed rkey + base + block_bytes + n_blocks), both tagged with the agent's
 * random incarnation id, or both together as one descriptor. They are what
 * goes, base64'd by the caller, into the etcd registration, and into
 * PrefillJob.ucx_address / .rkey (with .remote_base and .block_bytes).
 * Imports validate everything before UCX sees a byte: a corrupt, truncated or
 * mismatched descriptor gives SL_EPROTO / SL_EINVAL, never a crash.
 *
 * Errors from peers: a dead peer (UCS_ERR_CONNECTION_RESET,
 * UCS_ERR_ENDPOINT_TIMEOUT, unreachable) fails its transfers with
 * SL_EUNAVAIL; a transfer past its deadline fails with SL_ETIMEDOUT, a
 * cancelled one with SL_ECANCELLED. Both force-close the endpoint to that
 * peer, so other transfers in flight to the same peer fail with SL_EUNAVAIL;
 * the next write reconnects. When the endpoint had no failure handling
 * (shared memory in UCX 1.13) and requests were in flight on it, the agent
 * instead resets its whole initiator side: transfers in flight to *other*
 * peers fail with SL_EUNAVAIL too ("transport reset") and may be retried at
 * once. Detail is logged and kept in the xfer (kvx_xfer_error_text).
 *
 * Thread model: the ucp workers run in UCS_THREAD_MODE_SERIALIZED under one
 * agent mutex. A progress thread sleeps in epoll on the workers' event fds
 * (ucp_worker_arm) plus an eventfd for wakeups, so an idle agent costs no
 * CPU; it also enforces deadlines and runs completion callbacks (outside the
 * lock). A transfer without a callback may complete inside kvx_write. All
 * public functions are thread-safe unless stated otherwise.
 *
 * Memory type: regions are host memory here (Debian's UCX has no CUDA
 * transports). KVX_MEM_DEVICE is registered natively where UCX was built with
 * CUDA; otherwise a device region can only be a source, and needs a staging
 * hook: its blocks are copied (stage_fn, e.g. cudaMemcpy D2H) into the
 * agent's registered host staging buffer and put from there.
 */
#ifndef SL_KV_TRANSFER_H
#define SL_KV_TRANSFER_H

#include <stddef.h>
#include <stdint.h>

typedef struct kvx_agent kvx_agent_t;
typedef struct kvx_region kvx_region_t;
typedef struct kvx_xfer kvx_xfer_t;

/* Limits on untrusted descriptor fields. */
#define KVX_MAX_ADDR_BYTES     65536u
#define KVX_MAX_RKEY_BYTES     65536u
#define KVX_DEFAULT_TIMEOUT_MS 10000u

/* How a writer moves bytes to a peer (see "Write protocols" in README.md).
 * AUTO: one-sided ucp_put_nbx where the transport does RMA natively for the
 * peer's region (shared memory into an allocated pool, CMA, RDMA), else the
 * agent's own active-message protocol (TCP, emulated shm puts), in which the
 * target never sends anything back. */
typedef enum kvx_proto {
    KVX_PROTO_AUTO = 0,
    KVX_PROTO_PUT = 1, /* always ucp_put_nbx (UCX emulates it where it must) */
    KVX_PROTO_AM = 2   /* always the active-message protocol */
} kvx_proto_t;

/* Active-message protocol limits: a message carries at most
 * KVX_AM_CHUNK_BYTES of data (eager, never rendezvous); a target tracks at
 * most KVX_RECV_MAX expected transfers at once. */
#define KVX_AM_CHUNK_BYTES (256u * 1024u)
#define KVX_RECV_MAX       4096u

typedef struct kvx_agent_opts {
    const char *name;     /* for logs; may be NULL */
    size_t staging_bytes; /* host staging buffer for staged (device) sources; 0 = none */
    /* Write protocol of this agent as a writer. KVX_PROTO_AUTO defers to the
     * environment, SLUICE_KVX_PROTO=auto|put|am (unset or unknown: auto). */
    kvx_proto_t proto;
} kvx_agent_opts_t;

/* Creates an agent: ucp context (RMA + wakeup), worker, progress thread, and
 * the staging buffer if asked. Transports come from UCX's environment
 * (UCX_TLS, UCX_NET_DEVICES). opts may be NULL. Returns 0 and sets *out, or
 * SL_EINVAL, SL_ENOMEM, SL_EIO (UCX failed; logged with UCX's text). */
int kvx_agent_new(const kvx_agent_opts_t *opts, kvx_agent_t **out);

/* Stops the progress thread, force-closes every endpoint (transfers in
 * flight fail with SL_ECANCELLED and their callbacks run), forgets peers,
 * and frees everything. Regions must have been freed before (else they are
 * leaked and a warning is logged). Not to be called from a callback.
 * kvx_agent_free(NULL) is a no-op. */
void kvx_agent_free(kvx_agent_t *a);

typedef enum kvx_mem_type {
    KVX_MEM_HOST = 0,
    KVX_MEM_DEVICE = 1 /* CUDA device memory */
} kvx_mem_type_t;

/* Copies bytes from device memory src to host memory dst. Returns 0 or a
 * negative SL_E* code. Called from the thread that calls kvx_write. */
typedef int (*kvx_stage_fn)(void *ud, void *dst_host, const void *src, size_t bytes);

typedef struct kvx_region_opts {
    kvx_mem_type_t mem_type;
    /* When set, the region is a staged source: never mapped, only written
     * from, through the agent's staging buffer. Required for device memory
     * when UCX has no CUDA support. */
    kvx_stage_fn stage_fn;
    void *stage_ud;
} kvx_region_opts_t;

/* Registers the KV pool [base, base + n_blocks * block_bytes) with the agent
 * (ucp_mem_map unless staged). The memory stays owned by the caller and must
 * outlive the region. opts may be NULL (host memory). Returns 0 and sets
 * *out, or SL_EINVAL (NULL base, zero sizes, size overflow), SL_EUNSUPPORTED
 * (device memory, UCX without CUDA and no stage_fn), SL_EIO, SL_ENOMEM. */
int kvx_region_register(kvx_agent_t *a, void *base, size_t block_bytes, uint64_t n_blocks,
                        const kvx_region_opts_t *opts, kvx_region_t **out);

/* Allocates a host KV pool of n_blocks * block_bytes through UCX
 * (ucp_mem_map with UCP_MEM_MAP_ALLOCATE) and registers it. Where UCX can,
 * the memory is a shared-memory segment that same-host peers map and write
 * with plain memcpy puts: no message reaches this process, so a peer that
 * dies mid-write cannot disturb its progress, and the region takes writes
 * even while this process is stopped. Prefer it over kvx_region_register for
 * a pool that same-host peers write into. Contents are unspecified; the
 * memory (kvx_region_ptr) belongs to the region and is freed with it.
 * Returns 0 and sets *out, or SL_EINVAL (zero or overflowing sizes),
 * SL_ENOMEM, SL_EIO. */
int kvx_region_alloc(kvx_agent_t *a, size_t block_bytes, uint64_t n_blocks, kvx_region_t **out);

/* Start of the region's memory (block b at ptr + b * block_bytes). */
void *kvx_region_ptr(const kvx_region_t *r);

/* Unmaps and frees the region (and its memory if kvx_region_alloc made it).
 * Transfers from it must have completed. kvx_region_free(NULL) is a no-op. */
void kvx_region_free(kvx_region_t *r);

/* The agent's address blob (framed ucp worker address). Returns 0 and a
 * malloc'd buffer in *out (*out_len bytes; caller frees), or SL_ENOMEM. */
int kvx_agent_address_export(kvx_agent_t *a, uint8_t **out, size_t *out_len);

/* The region's rkey blob (framed packed rkey, base, block_bytes, n_blocks).
 * Returns 0 and a malloc'd buffer (caller frees), SL_EUNSUPPORTED for a
 * staged region, SL_ENOMEM, SL_EIO. */
int kvx_region_rkey_export(kvx_region_t *r, uint8_t **out, size_t *out_len);

/* Both blobs in one descriptor (the etcd registration's ucx_address).
 * Returns 0 and a malloc'd buffer (caller frees), or as above. */
int kvx_region_desc_export(kvx_region_t *r, uint8_t **out, size_t *out_len);

/* Remote base address / block bytes of the region, for PrefillJob fields. */
uint64_t kvx_region_base(const kvx_region_t *r);
size_t kvx_region_block_bytes(const kvx_region_t *r);

/* Imports a peer from its address and rkey blobs (e.g. PrefillJob fields).
 * remote_base and block_bytes, when not 0, must equal the values inside the
 * rkey blob. Replaces an earlier import under the same peer_id (its endpoint
 * is force-closed if the incarnation changed). No network traffic happens
 * here. A same-host peer's region registry is checked (see kv_transfer.c):
 * the descriptor of a process that has exited gives SL_EUNAVAIL, the rkey of
 * a region its owner has freed SL_EPROTO. Returns 0, SL_EPROTO (bad magic,
 * version, checksum, truncated or trailing bytes, address and rkey of
 * different incarnations, freed region), SL_EINVAL (NULL arguments, sizes
 * over limits, zero or overflowing geometry, field mismatch), SL_EUNAVAIL,
 * SL_ENOMEM. */
int kvx_peer_import(kvx_agent_t *a, uint64_t peer_id, const uint8_t *addr, size_t addr_len,
                    const uint8_t *rkey, size_t rkey_len, uint64_t remote_base,
                    uint64_t block_bytes);

/* Imports a peer from a combined descriptor (kvx_region_desc_export).
 * Errors as kvx_peer_import. */
int kvx_peer_import_desc(kvx_agent_t *a, uint64_t peer_id, const uint8_t *desc, size_t len);

/* Forgets a peer: force-closes its endpoint (its transfers fail with
 * SL_EUNAVAIL). Returns 0 or SL_ENOTFOUND. */
int kvx_peer_remove(kvx_agent_t *a, uint64_t peer_id);

/* 1 if the agent currently holds an open endpoint to peer_id, else 0. */
int kvx_peer_connected(kvx_agent_t *a, uint64_t peer_id);

/* Called once per transfer, from the progress thread, with 0 or a negative
 * SL_E* code. It may call kvx_write/kvx_xfer_* on other transfers but must
 * not free the agent. */
typedef void (*kvx_done_fn)(void *ud, kvx_xfer_t *x, int status);

typedef struct kvx_write_opts {
    uint32_t timeout_ms; /* 0 = KVX_DEFAULT_TIMEOUT_MS */
    kvx_done_fn cb;      /* may be NULL */
    void *ud;
    /* Transfer tag the target declared with kvx_recv_expect. Required (not
     * 0) when the write goes by active messages: the target drops data for
     * tags it does not expect. Ignored by one-sided puts. */
    uint64_t tag;
} kvx_write_opts_t;

/* Writes n blocks (protocol: see kvx_proto_t): local block src_blocks[i] of region src lands in
 * remote block dst_blocks[i] of peer peer_id (a whole block each; a partial last block is still
 * moved as a whole slot). Pairs are sorted by destination and runs consecutive on both sides are
 * coalesced into one put. Connects to the peer if needed. src's memory must stay unchanged until
 * completion.
 *
 * On success returns 0 and the transfer is in flight: if out is non-NULL,
 * *out is a handle the caller waits on / frees; if out is NULL the agent
 * frees the transfer after the callback. If it returns an error, no callback
 * runs and nothing is in flight. Errors: SL_EINVAL (NULL, duplicate
 * destination, block_bytes differing between src and peer), SL_ERANGE (block
 * id out of range on either side), SL_ENOTFOUND (unknown peer), SL_EUNAVAIL
 * (endpoint creation failed, same-host peer process gone), SL_EPROTO (the
 * peer has freed that region since the import, or UCX refused the rkey),
 * SL_EAGAIN (staging buffer busy), SL_ETOOBIG (staged transfer larger than
 * the staging buffer), SL_EIO (no UCX worker), SL_ENOMEM. */
int kvx_write(kvx_agent_t *a, uint64_t peer_id, kvx_region_t *src, const uint32_t *src_blocks,
              const uint32_t *dst_blocks, size_t n, const kvx_write_opts_t *opts, kvx_xfer_t **out);

/* Waits up to timeout_ms (< 0: forever) for completion. Returns the
 * transfer's status (0 or SL_E*), or SL_EAGAIN if still in flight. */
int kvx_xfer_wait(kvx_xfer_t *x, int timeout_ms);

/* Cancels a transfer in flight (it completes with SL_ECANCELLED, shortly,
 * through the progress thread). No-op once complete. */
void kvx_xfer_cancel(kvx_xfer_t *x);

/* Text of the transfer's error ("" while in flight or on success); valid
 * until kvx_xfer_free. */
const char *kvx_xfer_error_text(const kvx_xfer_t *x);

/* Number of puts (or active messages) the transfer was coalesced into. */
size_t kvx_xfer_n_puts(const kvx_xfer_t *x);

/* Bytes the transfer sent by active messages (0: one-sided puts). Such a
 * transfer completes once the data has left this process (UCX flush is local
 * for active messages): only the target knows when it has arrived
 * (kvx_recv_done), so a writer reports this figure to the target's owner. */
uint64_t kvx_xfer_am_bytes(const kvx_xfer_t *x);

/* ---- target side of the active-message protocol ----------------------------
 *
 * The target's handler (progress thread, agent lock) validates every message
 * before touching memory: header size, magic, version, this agent's
 * incarnation, a live region by serial, offset + length inside the region
 * (overflow-checked), 0 < length <= KVX_AM_CHUNK_BYTES and equal to the data,
 * eager data (a rendezvous message is dropped unread), a tag declared with
 * kvx_recv_expect for that region, the tag's running count staying
 * within its expected bytes, and (kvx_recv_expect_blocks) every block the
 * message touches being one of the tag's. It then copies the data into the region and adds
 * to the tag's count. A bad message is dropped, counted (kvx_agent_stats) and
 * logged (at most one line per second); nothing is ever sent back. */

/* Declares that up to `bytes` may arrive into region r under `tag` (not 0).
 * Re-declaring a live tag resets its count. Returns 0, SL_EINVAL (NULL, tag
 * 0, r of another agent), SL_EAGAIN (KVX_RECV_MAX tags live: forget some). */
int kvx_recv_expect(kvx_agent_t *a, kvx_region_t *r, uint64_t tag, uint64_t bytes);

/* As kvx_recv_expect, and writes under tag may only touch blocks[0..n) of r
 * (any order, copied): a message overlapping any other block is dropped
 * whole. Up to n * block_bytes may arrive. Returns 0, SL_EINVAL (as above,
 * or a block id out of range or repeated, n over the region's blocks),
 * SL_ENOMEM, SL_EAGAIN. */
int kvx_recv_expect_blocks(kvx_agent_t *a, kvx_region_t *r, uint64_t tag, const uint32_t *blocks,
                           size_t n);

/* Bytes arrived so far under tag: 0 and *out, or SL_ENOTFOUND. */
int kvx_recv_bytes(kvx_agent_t *a, uint64_t tag, uint64_t *out);

/* Non-blocking: 1 when at least `expected` bytes have arrived under tag (the
 * data is in the region, visible to this thread), 0 if not yet,
 * SL_ENOTFOUND for an unknown tag. */
int kvx_recv_done(kvx_agent_t *a, uint64_t tag, uint64_t expected);

/* Forgets tag: later messages for it are dropped. Returns 0 or
 * SL_ENOTFOUND. Freeing a region forgets its tags. */
int kvx_recv_forget(kvx_agent_t *a, uint64_t tag);

/* Called once per declaration when a tag's received bytes reach what was
 * declared (kvx_recv_expect / _blocks; a tag declared with 0 bytes never
 * fires, nor does dropped data count). Runs on the agent's progress thread,
 * outside the agent lock, so it may call kvx_recv_* (and should be short:
 * wake someone). The tag may be forgotten or re-declared by the time it
 * runs: treat it as a hint to check kvx_recv_done. */
typedef void (*kvx_recv_cb_t)(void *ud, uint64_t tag);

/* Sets (or, with cb NULL, clears) the agent's receive-completion callback.
 * On return no call of the previous callback is still running, so its ud
 * may be freed; hence not to be called from the callback itself. Any
 * thread. Returns 0 or SL_EINVAL (a NULL). */
int kvx_agent_recv_notify(kvx_agent_t *a, kvx_recv_cb_t cb, void *ud);

typedef struct kvx_agent_stats {
    uint64_t am_msgs, am_bytes; /* accepted messages and their bytes */
    uint64_t am_dropped;        /* rejected messages */
    uint64_t iw_resets;         /* initiator workers dropped */
} kvx_agent_stats_t;

/* Counters of the agent as a target. */
void kvx_agent_stats(kvx_agent_t *a, kvx_agent_stats_t *out);

/* Testing hook: sends one raw active message of the transfer protocol
 * (hdr_len header bytes, len data bytes, eager) to peer_id and waits up to
 * timeout_ms for local completion. Lets tests feed a target malformed
 * headers. Returns 0 or SL_E*. */
int kvx_debug_am_send(kvx_agent_t *a, uint64_t peer_id, const void *hdr, size_t hdr_len,
                      const void *data, size_t len, int timeout_ms);

/* The AM header the protocol uses (KVX_AM_HDR_BYTES, little-endian):
 * "SLXW" u16 version u16 flags(0) u64 target incarnation u64 region serial
 * u64 tag u64 offset u64 length. kvx_debug_am_header builds one (for tests)
 * for peer_id's imported region. Returns 0, SL_ENOTFOUND. */
#define KVX_AM_HDR_BYTES 48u
int kvx_debug_am_header(kvx_agent_t *a, uint64_t peer_id, uint64_t tag, uint64_t offset,
                        uint64_t length, uint8_t out[KVX_AM_HDR_BYTES]);

/* Cancels if in flight, waits for completion, frees. Must not be called from
 * its own callback. kvx_xfer_free(NULL) is a no-op. */
void kvx_xfer_free(kvx_xfer_t *x);

#endif
