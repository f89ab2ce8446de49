/* router.c - sluice-router service wiring (see router.h).
 *
 * One mutex (r->lock) guards the indexes, the predicted load, the worker
 * table and the heat tracker; every callback takes it for its bookkeeping and
 * drops it around NATS requests (resync) so routing never waits on a peer.
 */
#include "services/router/router.h"
#include "common/base/clock.h"
#include "common/base/block_hash.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/bus.h"
#include "common/runtime/discovery.h"
#include "common/runtime/kv_events.h"
#include "proto/sluice.pb-c.h"
#include "services/router/active_seqs.h"
#include "services/router/kv_index.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define MAX_ROUTE_BLOCKS (1u << 20) /* longest prompt routed: 1M blocks */
#define MAX_OVERLAPS     KV_INDEX_MAX_WORKERS

typedef struct tier_track {
    bool synced;      /* next_id is meaningful */
    uint64_t next_id; /* next live event_id expected */
    int64_t retry_ms; /* no resync attempt before this */
} tier_track_t;

typedef struct rworker {
    uint64_t id;
    bool used;
    bool accepted; /* false: refused (kept to drop its batches quietly) */
    bool shared;   /* kv-manager */
    bool prefill;  /* prefill worker: a candidate of the prefill choice only */
    bool want_resync;
    char component[16];
    tier_track_t t[KV_INDEX_TIERS];
} rworker_t;

/* A remembered approx-mode decision. */
typedef struct approx_rec {
    int64_t expire_ms;
    uint64_t worker_id;
    size_t n;
    uint64_t *hashes; /* (n) */
    struct approx_rec *next;
} approx_rec_t;

/* (worker, hash) -> live decisions that stored it. */
typedef struct approx_ref {
    uint64_t worker_id, hash;
    uint32_t count; /* 0 = empty */
} approx_ref_t;

struct router {
    router_opts_t o;
    char *ns, *model;
    uint64_t id;
    bus_t *bus;
    discovery_t *disc;
    discovery_watch_t *w_backend, *w_kvm, *w_prefill;
    bus_sub_t *s_route, *s_events, *s_load, *s_active;
    char subj_active[BUS_SUBJECT_MAX];

    pthread_mutex_t lock;
    kv_index_t *idx;  /* from KV events */
    kv_index_t *aidx; /* approx: own and replicas' decisions */
    approx_rec_t *a_head, *a_tail;
    approx_ref_t *a_refs;
    size_t a_refs_cap, a_refs_n;
    active_seqs_t *act;
    prefix_heat_t *heat;
    rworker_t *workers;
    size_t n_workers, cap_workers;
    uint64_t rr, rr_prefill; /* round-robin cursors: decode, prefill */
    uint64_t anon_seq;
    router_stats_t st;

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t stop_lock;
    pthread_cond_t stop_cv;
    bool stopping;

    metrics_counter_t *m_routed, *m_errors, *m_resyncs, *m_gaps, *m_events;
    metrics_gauge_t *m_workers, *m_blocks, *m_active;
    metrics_histogram_t *m_latency, *m_overlap;
};

static int64_t now_ms(void) {
    return sl_mono_ns() / 1000000;
}

static double now_s(void) {
    return (double)sl_mono_ns() * 1e-9;
}

/* ---- worker table ----------------------------------------------------------- */

static rworker_t *worker_find(router_t *r, uint64_t id) {
    for (size_t i = 0; i < r->n_workers; i++)
        if (r->workers[i].used && r->workers[i].id == id) return &r->workers[i];
    return NULL;
}

static rworker_t *worker_new(router_t *r, uint64_t id) {
    rworker_t *w = worker_find(r, id);
    if (w) return w;
    size_t i = 0;
    while (i < r->n_workers && r->workers[i].used) i++;
    if (i == r->n_workers) {
        if (r->n_workers == r->cap_workers) {
            size_t nc = r->cap_workers ? r->cap_workers * 2 : 16;
            rworker_t *nw = realloc(r->workers, nc * sizeof *nw);
            if (!nw) return NULL;
            r->workers = nw;
            r->cap_workers = nc;
        }
        r->n_workers++;
    }
    w = &r->workers[i];
    memset(w, 0, sizeof *w);
    w->id = id;
    w->used = true;
    return w;
}

/* ---- approx index ------------------------------------------------------------- */

static approx_ref_t *aref_slot(router_t *r, uint64_t worker, uint64_t hash) {
    size_t m = r->a_refs_cap - 1;
    size_t i =
        (size_t)((hash ^ (worker * 0x9E3779B97F4A7C15ull)) * 0xBF58476D1CE4E5B9ull >> 20) & m;
    for (;; i = (i + 1) & m) {
        approx_ref_t *e = &r->a_refs[i];
        if (!e->count || (e->worker_id == worker && e->hash == hash)) return e;
    }
}

static int aref_grow(router_t *r) {
    size_t oc = r->a_refs_cap, nc = oc ? oc * 2 : 4096;
    approx_ref_t *old = r->a_refs, *nr = calloc(nc, sizeof *nr);
    if (!nr) return SL_ENOMEM;
    r->a_refs = nr;
    r->a_refs_cap = nc;
    for (size_t i = 0; i < oc; i++)
        if (old[i].count) *aref_slot(r, old[i].worker_id, old[i].hash) = old[i];
    free(old);
    return 0;
}

static void aref_delete(router_t *r, approx_ref_t *e) {
    /* Backward shift for linear probing over the mixed home slot. */
    size_t m = r->a_refs_cap - 1, i = (size_t)(e - r->a_refs), j = i;
    while (1) {
        j = (j + 1) & m;
        approx_ref_t *f = &r->a_refs[j];
        if (!f->count) break;
        size_t k =
            (size_t)((f->hash ^ (f->worker_id * 0x9E3779B97F4A7C15ull)) * 0xBF58476D1CE4E5B9ull >>
                     20) &
            m;
        bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (stays) continue;
        r->a_refs[i] = *f;
        i = j;
    }
    r->a_refs[i].count = 0;
    r->a_refs_n--;
}

/* Remembers a decision (lock held). */
static void approx_record(router_t *r, uint64_t worker, const uint64_t *hs, size_t n, int64_t now) {
    if (!n) return;
    approx_rec_t *rec = calloc(1, sizeof *rec);
    if (!rec || !(rec->hashes = malloc(n * sizeof *hs))) {
        free(rec);
        return;
    }
    memcpy(rec->hashes, hs, n * sizeof *hs);
    rec->n = n;
    rec->worker_id = worker;
    rec->expire_ms = now + r->o.approx_ttl_ms;
    if (!kv_index_worker_known(r->aidx, worker)) kv_index_worker_add(r->aidx, worker, false);
    for (size_t i = 0; i < n; i++) {
        if ((r->a_refs_n + 1) * 2 > r->a_refs_cap && aref_grow(r) < 0) break;
        approx_ref_t *e = aref_slot(r, worker, hs[i]);
        if (!e->count) {
            e->worker_id = worker;
            e->hash = hs[i];
            r->a_refs_n++;
        }
        e->count++;
    }
    kv_index_store(r->aidx, worker, KV_INDEX_TIER_DEVICE, hs, n);
    if (r->a_tail)
        r->a_tail->next = rec;
    else
        r->a_head = rec;
    r->a_tail = rec;
}

static void approx_expire(router_t *r, int64_t now, bool all) {
    while (r->a_head && (all || r->a_head->expire_ms <= now)) {
        approx_rec_t *rec = r->a_head;
        r->a_head = rec->next;
        if (!r->a_head) r->a_tail = NULL;
        for (size_t i = 0; i < rec->n && r->a_refs_cap; i++) {
            approx_ref_t *e = aref_slot(r, rec->worker_id, rec->hashes[i]);
            if (!e->count) continue;
            if (--e->count == 0) {
                aref_delete(r, e);
                kv_index_remove(r->aidx, rec->worker_id, KV_INDEX_TIER_DEVICE, &rec->hashes[i], 1);
            }
        }
        free(rec->hashes);
        free(rec);
    }
}

/* ---- KV events ----------------------------------------------------------------- */

/* Applies events[from..] of a batch to the index (lock held). */
static void apply_events(router_t *r, uint64_t worker, int tier, Sluice__V1__KvEvent **ev, size_t n,
                         size_t from) {
    uint64_t hs[256];
    for (size_t i = from; i < n; i++) {
        const Sluice__V1__KvEvent *e = ev[i];
        if (!e) continue;
        switch (e->data_case) {
        case SLUICE__V1__KV_EVENT__DATA_STORED: {
            const Sluice__V1__KvStored *s = e->stored;
            size_t nb = kv_stored_count(s);
            const uint64_t *packed = kv_stored_seq_hashes(s);
            if (packed) {
                kv_index_store(r->idx, worker, tier, packed, nb);
                r->st.block_events += nb;
                break;
            }
            for (size_t b = 0; b < nb;) {
                size_t k = 0;
                for (; k < 256 && b < nb; b++) hs[k++] = kv_stored_seq_hash(s, b);
                kv_index_store(r->idx, worker, tier, hs, k);
                r->st.block_events += k;
            }
            break;
        }
        case SLUICE__V1__KV_EVENT__DATA_REMOVED:
            if (e->removed) {
                kv_index_remove(r->idx, worker, tier, e->removed->sequence_hashes,
                                e->removed->n_sequence_hashes);
                r->st.block_events += e->removed->n_sequence_hashes;
            }
            break;
        case SLUICE__V1__KV_EVENT__DATA_CLEARED:
            kv_index_clear(r->idx, worker, tier);
            break;
        default:
            break;
        }
    }
    metrics_gauge_set(r->m_blocks, (double)kv_index_size(r->idx));
}

/* Common checks of a batch (live or resync). Returns NULL if fine, else why. */
static const char *batch_refusal(router_t *r, const Sluice__V1__KvEventBatch *b) {
    if (b->tier > SLUICE__V1__KV_TIER__KV_TIER_DISK) return "unknown tier";
    if (b->block_size && b->block_size != r->o.block_size) return "block size differs";
    if (r->model && b->model && b->model[0] && strcmp(b->model, r->model)) return "model differs";
    for (size_t i = 0; i < b->n_events; i++) {
        const Sluice__V1__KvEvent *e = b->events[i];
        if (e && e->data_case == SLUICE__V1__KV_EVENT__DATA_STORED) {
            const char *why = kv_stored_invalid(e->stored);
            if (why) return why;
        }
    }
    return NULL;
}

/* Most parts and events one staged resync reply may hold (a worker that
 * streams without end is cut off here; the resync counts as failed). */
#define RESYNC_MAX_PARTS  (1u << 20)
#define RESYNC_MAX_EVENTS ((size_t)1 << 26)

/* Checks one part of a resync reply against the request and the first part.
 * Returns NULL if fine, else why not. */
static const char *resync_part_refusal(router_t *r, const Sluice__V1__KvEventBatch *b,
                                       const Sluice__V1__KvEventBatch *first, uint64_t worker,
                                       int tier, uint64_t from) {
    const char *why = batch_refusal(r, b);
    if (!why && (b->worker_id != worker || (int)b->tier != tier))
        why = "not an answer of that worker and tier";
    if (!why && first && (b->resync != first->resync || b->event_id != first->event_id))
        why = "parts disagree on resync or event_id";
    if (!why && !b->resync && (from == 0 || b->event_id != from))
        why = "a replay that does not start where asked";
    if (!why && b->resync && b->event_id == UINT64_MAX) why = "event id out of range";
    return why;
}

/* Asks worker w for the events of tier from event id `from` on (0: its whole
 * state) and applies the answer, a streamed reply (bus_stream_*) of one or
 * more KvEventBatch parts with the same event_id and resync flag: a replay
 * (resync false, event_id == from, the events since then across the parts)
 * or a dump (resync true, cleared + stored, event_id = the last event it
 * covers, so the next live batch is event_id + 1; the worker dumps when the
 * replay ring no longer reaches back to from). The parts are staged and
 * applied together under the lock only once the end-of-stream has arrived,
 * so a stream cut short (idle timeout = resync_timeout_ms, gap, worker gone,
 * error) leaves the tier as it was and counts a failed resync, retried like
 * any. Called without the lock. Returns 0 or an SL_E* code. */
static int resync(router_t *r, uint64_t worker, int tier, uint64_t from) {
    char subj[BUS_SUBJECT_MAX], component[16];
    bus_stream_t *s = NULL;
    Sluice__V1__KvEventBatch **parts = NULL; /* (n_parts) staged, in order */
    size_t n_parts = 0, cap_parts = 0, n_events = 0, n_blocks = 0;
    const char *why = NULL;
    bool locked = false;
    pthread_mutex_lock(&r->lock);
    rworker_t *w = worker_find(r, worker);
    bool ok = w && w->accepted;
    if (ok) {
        snprintf(component, sizeof component, "%s", w->component);
        w->t[tier].retry_ms = now_ms() + 1000;
    }
    pthread_mutex_unlock(&r->lock);
    if (!ok) return SL_ENOTFOUND;
    int rc = bus_subject_instance(subj, sizeof subj, r->ns, component, "kv_resync", worker);
    if (rc < 0) return rc;
    Sluice__V1__KvResyncRequest req = SLUICE__V1__KV_RESYNC_REQUEST__INIT;
    req.version = 1;
    req.requester_id = r->id;
    req.from_event_id = from;
    req.tier = (Sluice__V1__KvTier)tier;
    bus_stream_opts_t so = {.idle_timeout_ms = r->o.resync_timeout_ms};
    rc = bus_stream_open_proto(r->bus, subj, &req.base, &so, &s);
    for (bool last = false; rc == 0 && !last;) {
        ProtobufCMessage *m = NULL;
        rc = bus_stream_recv_proto(s, &sluice__v1__kv_event_batch__descriptor, &m, &last);
        if (rc < 0) break;
        Sluice__V1__KvEventBatch *b = (Sluice__V1__KvEventBatch *)m;
        why = resync_part_refusal(r, b, n_parts ? parts[0] : NULL, worker, tier, from);
        if (!why && (n_parts >= RESYNC_MAX_PARTS || b->n_events > RESYNC_MAX_EVENTS - n_events))
            why = "too many parts or events";
        if (!why && n_parts == cap_parts) {
            size_t nc = cap_parts ? 2 * cap_parts : 8;
            Sluice__V1__KvEventBatch **np = realloc(parts, nc * sizeof *np);
            if (!np) {
                why = "out of memory staging the reply";
            } else {
                parts = np;
                cap_parts = nc;
            }
        }
        if (why) {
            protobuf_c_message_free_unpacked(m, NULL);
            rc = SL_EPROTO;
            break;
        }
        parts[n_parts++] = b;
        n_events += b->n_events;
    }
    pthread_mutex_lock(&r->lock);
    locked = true;
    if (rc < 0) {
        r->st.resyncs_failed++;
        if (why)
            LOG_WARN("resync reply from worker %016" PRIx64 " refused (part %zu): %s", worker,
                     n_parts, why);
        else
            LOG_WARN("resync of worker %016" PRIx64 " tier %d failed after %zu parts: %s (%s)",
                     worker, tier, n_parts, sl_strerror(rc), s ? bus_stream_error(s) : "");
        goto out;
    }
    if (n_parts == 0) { /* cannot happen: a stream ends with its last part */
        r->st.resyncs_failed++;
        rc = SL_EPROTO;
        goto out;
    }
    w = worker_find(r, worker);
    if (!(w && w->accepted)) {
        r->st.resyncs_failed++;
        LOG_WARN("resync reply from worker %016" PRIx64 " refused: worker left", worker);
        rc = SL_EPROTO;
        goto out;
    }
    const Sluice__V1__KvEventBatch *b0 = parts[0];
    if (b0->resync) kv_index_clear(r->idx, worker, tier);
    for (size_t i = 0; i < n_parts; i++)
        apply_events(r, worker, tier, parts[i]->events, parts[i]->n_events, 0);
    n_blocks = kv_index_worker_blocks(r->idx, worker, tier);
    w->t[tier].synced = true;
    w->t[tier].next_id = b0->resync ? b0->event_id + 1 : from + n_events;
    w->t[tier].retry_ms = 0;
    r->st.resyncs_ok++;
    r->st.resync_parts += n_parts;
    r->st.batches_applied++;
    metrics_counter_inc(r->m_resyncs);
    LOG_INFO("resynced worker %016" PRIx64
             " tier %d (%s, %zu parts): %zu blocks, next event %" PRIu64,
             worker, tier, b0->resync ? "dump" : "replay", n_parts, n_blocks, w->t[tier].next_id);
out:
    if (locked) pthread_mutex_unlock(&r->lock);
    bus_stream_free(s);
    for (size_t i = 0; i < n_parts; i++) protobuf_c_message_free_unpacked(&parts[i]->base, NULL);
    free(parts);
    return rc;
}

static void on_kv_events(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *m, void *ud) {
    (void)bus;
    (void)msg;
    router_t *r = ud;
    const Sluice__V1__KvEventBatch *b = (const Sluice__V1__KvEventBatch *)m;
    bool need_resync = false;
    uint64_t resync_from = 0;
    int tier = (int)b->tier;
    pthread_mutex_lock(&r->lock);
    const char *why = batch_refusal(r, b);
    rworker_t *w = why ? NULL : worker_find(r, b->worker_id);
    if (!why && !(w && w->accepted)) why = "unknown or refused worker";
    if (!why && b->resync) why = "unsolicited resync";
    if (why) {
        r->st.batches_dropped++;
        LOG_DEBUG("dropped KvEventBatch from %016" PRIx64 ": %s", b->worker_id, why);
        goto out;
    }
    tier_track_t *t = &w->t[tier];
    uint64_t first = b->event_id, end = first + b->n_events;
    if (end < first) {
        r->st.batches_dropped++;
        goto out;
    }
    if (t->synced && end <= t->next_id) { /* already in a dump */
        r->st.batches_dropped++;
        goto out;
    }
    if (t->synced && first <= t->next_id) {
        apply_events(r, b->worker_id, tier, b->events, b->n_events, (size_t)(t->next_id - first));
        t->next_id = end;
        r->st.batches_applied++;
        goto out;
    }
    if (!t->synced && first <= 1) { /* the worker's very first events (pool ids start at 1) */
        apply_events(r, b->worker_id, tier, b->events, b->n_events, 0);
        t->synced = true;
        t->next_id = end;
        r->st.batches_applied++;
        goto out;
    }
    /* A gap (or a router that started late): apply what we have, then ask
     * for the full state, at most once a second per worker and tier. */
    if (t->synced) {
        resync_from = t->next_id; /* the worker's ring may still hold the missing events */
        r->st.gaps++;
        metrics_counter_inc(r->m_gaps);
        LOG_INFO("event gap from worker %016" PRIx64 " tier %d: expected %" PRIu64 ", got %" PRIu64,
                 b->worker_id, tier, t->next_id, first);
    }
    apply_events(r, b->worker_id, tier, b->events, b->n_events, 0);
    r->st.batches_applied++;
    t->synced = false;
    t->next_id = end;
    need_resync = now_ms() >= t->retry_ms;
out:
    pthread_mutex_unlock(&r->lock);
    if (need_resync) resync(r, b->worker_id, tier, resync_from);
}

/* ---- load and replica events ------------------------------------------------- */

static void on_load(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *m, void *ud) {
    (void)bus;
    (void)msg;
    router_t *r = ud;
    const Sluice__V1__LoadMetrics *l = (const Sluice__V1__LoadMetrics *)m;
    pthread_mutex_lock(&r->lock);
    rworker_t *w = worker_find(r, l->worker_id);
    if (w && w->accepted && !w->shared) {
        uint64_t n = (uint64_t)l->active_seqs + l->waiting_seqs;
        int64_t now = now_ms();
        active_seqs_report(r->act, l->worker_id, n > UINT32_MAX ? UINT32_MAX : (uint32_t)n, now);
        active_seqs_report_queue(
            r->act, l->worker_id,
            (l->pending_prefill_tokens + r->o.block_size - 1) / r->o.block_size, now);
    }
    pthread_mutex_unlock(&r->lock);
}

static void on_active(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *m, void *ud) {
    (void)bus;
    (void)msg;
    router_t *r = ud;
    const Sluice__V1__ActiveSeqEvent *e = (const Sluice__V1__ActiveSeqEvent *)m;
    if (!e->request_id || !e->request_id[0]) return;
    pthread_mutex_lock(&r->lock);
    switch (e->kind) {
    case SLUICE__V1__ACTIVE_SEQ_EVENT__KIND__KIND_ADD: {
        if (e->router_id == r->id) break; /* our own, already counted */
        rworker_t *w = worker_find(r, e->worker_id);
        if (!(w && w->accepted)) break;
        int64_t now = now_ms();
        if (e->hot_prefix && r->heat) prefix_heat_touch(r->heat, e->hot_prefix, now);
        int rc = active_seqs_add(r->act, e->request_id, e->worker_id, e->n_blocks,
                                 e->overlap_blocks, now);
        /* Even when its FREE overtook it, the prefix went to that worker. */
        if ((rc == 0 || rc == SL_ECANCELLED) && e->n_seq_hashes &&
            e->n_seq_hashes <= MAX_ROUTE_BLOCKS)
            approx_record(r, e->worker_id, e->seq_hashes, e->n_seq_hashes, now);
        break;
    }
    case SLUICE__V1__ACTIVE_SEQ_EVENT__KIND__KIND_PREFILL_DONE:
        active_seqs_prefill_done(r->act, e->request_id);
        break;
    case SLUICE__V1__ACTIVE_SEQ_EVENT__KIND__KIND_FREE:
        active_seqs_finish(r->act, e->request_id, now_ms());
        break;
    default:
        break;
    }
    metrics_gauge_set(r->m_active, (double)active_seqs_total(r->act));
    pthread_mutex_unlock(&r->lock);
}

/* ---- routing ------------------------------------------------------------------- */

/* The load term of the cost (router.h, queue_weight). Lock held. */
static double worker_load(const router_t *r, uint64_t id, int64_t now) {
    double active = active_seqs_load(r->act, id, now);
    if (!(r->o.queue_weight > 0)) return active;
    return r->o.queue_weight * active_seqs_queued(r->act, id, now) + r->o.active_weight * active;
}

/* What one request's decisions share: the prompt's hashes and its cached
 * prefix per worker, computed once (decide_prepare) for the decode and the
 * prefill choice. */
typedef struct decision {
    router_mode_t mode;
    uint32_t n_blocks;
    uint64_t *hashes; /* (n_full) sequence hashes, owned */
    size_t n_full;
    kv_overlap_t *ov; /* (n_ov) cached prefix per worker (kv / approx modes), owned */
    size_t n_ov;
} decision_t;

/* One choice among a candidate set (decide_pick). */
typedef struct pick {
    uint64_t worker; /* 0: none */
    uint32_t overlap;
    double cost;
    uint64_t hot_key; /* hash of the deepest cached block, 0: none */
} pick_t;

static void decision_free(decision_t *d) {
    free(d->hashes);
    free(d->ov);
    d->hashes = NULL;
    d->ov = NULL;
}

/* Hashes the prompt and looks its prefix up (lock held). Returns 0,
 * SL_EINVAL (bad mode), SL_ETOOBIG or SL_ENOMEM; decision_free after. */
static int decide_prepare(router_t *r, const uint32_t *tok, size_t n_tok, const char *mode_s,
                          const char *lora, decision_t *d) {
    memset(d, 0, sizeof *d);
    d->mode = r->o.mode;
    if (mode_s && mode_s[0] && router_mode_parse(mode_s, &d->mode) < 0) return SL_EINVAL;
    uint64_t bs = r->o.block_size;
    uint64_t n_blocks = (n_tok + bs - 1) / bs;
    if (n_blocks > MAX_ROUTE_BLOCKS) return SL_ETOOBIG;
    d->n_blocks = (uint32_t)n_blocks;
    d->n_full = n_tok / bs;
    if (d->n_full && !(d->hashes = malloc(d->n_full * sizeof *d->hashes))) return SL_ENOMEM;
    block_hash_seq(tok, n_tok, r->o.block_size, block_hash_salt(lora), NULL, d->hashes, d->n_full);
    if (d->mode == ROUTER_MODE_KV || d->mode == ROUTER_MODE_APPROX) {
        if (!(d->ov = malloc(MAX_OVERLAPS * sizeof *d->ov))) {
            decision_free(d);
            return SL_ENOMEM;
        }
        kv_index_t *ix = d->mode == ROUTER_MODE_APPROX ? r->aidx : r->idx;
        kv_index_lookup(ix, d->hashes, d->n_full, d->ov, MAX_OVERLAPS, &d->n_ov);
    }
    return 0;
}

/* Picks among the decode workers (prefill false) or the prefill workers
 * (lock held). touch_heat: a real routing (moves the prefix heat and the
 * round-robin cursor), not a dry run. Returns 0, SL_EUNAVAIL (no
 * candidate) or SL_ENOMEM. */
static int decide_pick(router_t *r, const char *rid, const decision_t *d, const uint64_t *exclude,
                       size_t n_ex, bool touch_heat, bool prefill, pick_t *out) {
    memset(out, 0, sizeof *out);
    router_candidate_t *c = calloc(r->n_workers ? r->n_workers : 1, sizeof *c);
    if (!c) return SL_ENOMEM;
    int64_t now = now_ms();
    size_t nc = 0;
    for (size_t i = 0; i < r->n_workers; i++) {
        rworker_t *w = &r->workers[i];
        if (!w->used || !w->accepted || w->shared || w->prefill != prefill) continue;
        bool ex = false;
        for (size_t j = 0; j < n_ex && !ex; j++) ex = exclude[j] == w->id;
        if (ex) continue;
        c[nc].worker_id = w->id;
        c[nc].load = worker_load(r, w->id, now);
        nc++;
    }
    int rc = SL_EUNAVAIL;
    if (!nc) goto out;
    double credit = 1.0;
    uint32_t deepest = 0;
    for (size_t j = 0; j < d->n_ov; j++)
        for (size_t i = 0; i < nc; i++)
            if (c[i].worker_id == d->ov[j].worker_id) {
                c[i].device = d->ov[j].device;
                c[i].host = d->ov[j].host;
                c[i].disk = d->ov[j].disk;
                uint32_t len = d->ov[j].device + d->ov[j].host + d->ov[j].disk;
                if (len > deepest) deepest = len;
            }
    if (deepest && r->heat) {
        out->hot_key = d->hashes[deepest - 1];
        double h = touch_heat && !prefill ? prefix_heat_touch(r->heat, out->hot_key, now)
                                          : prefix_heat_peek(r->heat, out->hot_key, now);
        credit = prefix_heat_credit(h, nc);
    }
    router_cost_params_t p = {.prefill_scale = r->o.prefill_scale, .temperature = r->o.temperature};
    uint64_t seed = rid && rid[0] ? XXH3_64bits(rid, strlen(rid)) : r->anon_seq * 0x9E37ull;
    uint64_t *rrp = prefill ? &r->rr_prefill : &r->rr;
    uint64_t rr = *rrp;
    size_t pick;
    rc = router_cost_select(&p, d->mode, d->n_blocks, credit, c, nc, seed, &rr, &pick);
    if (rc < 0) goto out;
    if (touch_heat) *rrp = rr;
    out->worker = c[pick].worker_id;
    out->overlap = c[pick].device;
    out->cost = c[pick].cost;
out:
    free(c);
    return rc;
}

static void respond_error(router_t *r, const bus_msg_t *msg, const char *rid, int code,
                          unsigned http, const char *text) {
    Sluice__V1__RouteResponse resp = SLUICE__V1__ROUTE_RESPONSE__INIT;
    Sluice__V1__Error err = SLUICE__V1__ERROR__INIT;
    resp.version = 1;
    resp.request_id = (char *)(rid ? rid : "");
    resp.router_id = r->id;
    err.code = code;
    err.message = (char *)text;
    err.http_status = http;
    resp.error = &err;
    pthread_mutex_lock(&r->lock);
    r->st.route_errors++;
    pthread_mutex_unlock(&r->lock);
    metrics_counter_inc(r->m_errors);
    bus_respond_proto(r->bus, msg, &resp.base);
    RLOG_DEBUG(rid, "route refused: %s", text);
}

static void on_route(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *m, void *ud) {
    (void)bus;
    router_t *r = ud;
    const Sluice__V1__RouteRequest *q = (const Sluice__V1__RouteRequest *)m;
    double t0 = now_s();
    char anon[64];
    const char *rid = q->request_id;
    if (!bus_msg_reply(msg)) return;
    if (rid && strlen(rid) > ACTIVE_SEQS_ID_MAX) {
        respond_error(r, msg, NULL, SL_EINVAL, 400, "request_id longer than 128 bytes");
        return;
    }
    if (r->model && q->model && q->model[0] && strcmp(q->model, r->model)) {
        respond_error(r, msg, rid, SL_EINVAL, 404, "model not served by this router");
        return;
    }
    decision_t d;
    pick_t dp = {0}, pp = {0}; /* the decode worker; the prefill worker (none is no error) */
    pthread_mutex_lock(&r->lock);
    if (!rid || !rid[0]) {
        snprintf(anon, sizeof anon, "router-%016" PRIx64 "-%" PRIu64, r->id, ++r->anon_seq);
        rid = anon;
    }
    int rc = decide_prepare(r, q->token_ids, q->n_token_ids, q->mode, q->lora_name, &d);
    if (rc == 0)
        rc = decide_pick(r, rid, &d, q->exclude_workers, q->n_exclude_workers, true, false, &dp);
    if (rc == 0 &&
        decide_pick(r, rid, &d, q->exclude_workers, q->n_exclude_workers, true, true, &pp) != 0)
        memset(&pp, 0, sizeof pp);
    if (rc == 0) {
        int64_t now = now_ms();
        active_seqs_add(r->act, rid, dp.worker, d.n_blocks, dp.overlap, now);
        if (d.mode == ROUTER_MODE_APPROX) approx_record(r, dp.worker, d.hashes, d.n_full, now);
        r->st.routed++;
    }
    pthread_mutex_unlock(&r->lock);
    if (rc < 0) {
        decision_free(&d);
        respond_error(r, msg, rid, rc,
                      rc == SL_EUNAVAIL  ? 503
                      : rc == SL_ETOOBIG ? 413
                                         : 400,
                      rc == SL_EUNAVAIL  ? "no worker available"
                      : rc == SL_EINVAL  ? "unknown routing mode"
                      : rc == SL_ETOOBIG ? "prompt too long to route"
                                         : sl_strerror(rc));
        return;
    }
    Sluice__V1__RouteResponse resp = SLUICE__V1__ROUTE_RESPONSE__INIT;
    resp.version = 1;
    resp.request_id = (char *)rid;
    resp.worker_id = dp.worker;
    resp.overlap_blocks = dp.overlap;
    resp.total_blocks = d.n_blocks;
    resp.cost = dp.cost;
    resp.router_id = r->id;
    resp.prefill_worker_id = pp.worker;
    resp.prefill_overlap_blocks = pp.overlap;
    /* Count before answering, so a requester that looks at /metrics next sees it. */
    metrics_counter_inc(r->m_routed);
    metrics_histogram_observe(r->m_latency, now_s() - t0);
    if (d.n_blocks) metrics_histogram_observe(r->m_overlap, (double)dp.overlap / d.n_blocks);
    bus_respond_proto(r->bus, msg, &resp.base);
    /* Tell the replicas (after answering: the requester waits on us). */
    Sluice__V1__ActiveSeqEvent ev = SLUICE__V1__ACTIVE_SEQ_EVENT__INIT;
    ev.version = 1;
    ev.router_id = r->id;
    ev.request_id = (char *)rid;
    ev.worker_id = dp.worker;
    ev.kind = SLUICE__V1__ACTIVE_SEQ_EVENT__KIND__KIND_ADD;
    ev.n_blocks = d.n_blocks;
    ev.overlap_blocks = dp.overlap;
    ev.n_tokens = (uint32_t)(q->n_token_ids > UINT32_MAX ? UINT32_MAX : q->n_token_ids);
    ev.hot_prefix = dp.hot_key;
    if (d.mode == ROUTER_MODE_APPROX) {
        ev.n_seq_hashes = d.n_full;
        ev.seq_hashes = d.hashes;
    }
    bus_publish_proto(r->bus, r->subj_active, &ev.base);
    decision_free(&d);
    RLOG_DEBUG(rid, "routed to %016" PRIx64 " overlap %u/%u cost %.1f", dp.worker, dp.overlap,
               d.n_blocks, dp.cost);
}

/* A dry-run choice among the decode (prefill false) or prefill workers. */
static int decide_dry(router_t *r, const char *request_id, const uint32_t *token_ids,
                      size_t n_tokens, const char *mode, bool prefill, uint64_t *worker,
                      uint32_t *overlap) {
    if (!r || (!token_ids && n_tokens) || !worker) return SL_EINVAL;
    decision_t d;
    pick_t p;
    pthread_mutex_lock(&r->lock);
    int rc = decide_prepare(r, token_ids, n_tokens, mode, NULL, &d);
    if (rc == 0) rc = decide_pick(r, request_id, &d, NULL, 0, false, prefill, &p);
    pthread_mutex_unlock(&r->lock);
    decision_free(&d);
    if (rc < 0) return rc;
    *worker = p.worker;
    if (overlap) *overlap = p.overlap;
    return 0;
}

int router_decide(router_t *r, const char *request_id, const uint32_t *token_ids, size_t n_tokens,
                  const char *mode, uint64_t *worker, uint32_t *overlap) {
    return decide_dry(r, request_id, token_ids, n_tokens, mode, false, worker, overlap);
}

int router_decide_prefill(router_t *r, const char *request_id, const uint32_t *token_ids,
                          size_t n_tokens, const char *mode, uint64_t *worker, uint32_t *overlap) {
    return decide_dry(r, request_id, token_ids, n_tokens, mode, true, worker, overlap);
}

/* ---- discovery ------------------------------------------------------------------ */

static int64_t json_int(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 1e9)
        return (int64_t)v->valuedouble;
    if (cJSON_IsString(v) && v->valuestring) {
        char *end;
        long long x = strtoll(v->valuestring, &end, 10);
        if (end != v->valuestring && !*end && x >= 0 && x <= 1000000000) return x;
    }
    return -1;
}

static void on_worker_add(const discovery_instance_t *inst, void *ud, bool shared, bool prefill) {
    router_t *r = ud;
    uint64_t id = (uint64_t)inst->instance_id;
    cJSON *j = cJSON_Parse(inst->json ? inst->json : "");
    int64_t bs = json_int(j, "block_size");
    const cJSON *jm = cJSON_GetObjectItemCaseSensitive(j, "model");
    const char *model = cJSON_IsString(jm) && jm->valuestring ? jm->valuestring : "";
    char why[256] = "";
    if (bs < 0) {
        snprintf(why, sizeof why, "its record has no valid block_size");
    } else if ((uint64_t)bs != r->o.block_size) {
        snprintf(why, sizeof why, "block_size %" PRId64 " differs from the router's %u", bs,
                 r->o.block_size);
    } else if (r->model && !shared && strcmp(model, r->model)) {
        snprintf(why, sizeof why, "model \"%.64s\" differs from the router's \"%.64s\"", model,
                 r->model);
    }
    pthread_mutex_lock(&r->lock);
    rworker_t *w = worker_find(r, id);
    bool was_accepted = w && w->accepted;
    if (!w) w = worker_new(r, id);
    if (!w) goto out;
    if (why[0]) {
        if (was_accepted) {
            kv_index_worker_remove(r->idx, id);
            kv_index_worker_remove(r->aidx, id);
            active_seqs_worker_remove(r->act, id);
        }
        if (was_accepted || !w->component[0]) {
            r->st.workers_refused++;
            LOG_WARN("refusing %s %016" PRIx64 ": %s", inst->component, id, why);
        }
        w->accepted = false;
        snprintf(w->component, sizeof w->component, "%s", inst->component);
        goto out;
    }
    if (!was_accepted) {
        w->accepted = true;
        w->shared = shared;
        w->prefill = prefill;
        w->want_resync = true;
        snprintf(w->component, sizeof w->component, "%s", inst->component);
        int rc = kv_index_worker_add(r->idx, id, shared);
        if (rc < 0 && rc != SL_EEXIST) {
            LOG_ERROR("cannot index worker %016" PRIx64 ": %s", id, sl_strerror(rc));
            w->accepted = false;
            goto out;
        }
        LOG_INFO("%s %016" PRIx64 " joined (model \"%.64s\", block_size %" PRId64 ")",
                 inst->component, id, model, bs);
    }
out:
    pthread_mutex_unlock(&r->lock);
    cJSON_Delete(j);
}

static void on_backend_add(const discovery_instance_t *inst, void *ud) {
    on_worker_add(inst, ud, false, false);
}
static void on_kvm_add(const discovery_instance_t *inst, void *ud) {
    on_worker_add(inst, ud, true, false);
}
static void on_prefill_add(const discovery_instance_t *inst, void *ud) {
    on_worker_add(inst, ud, false, true);
}

static void on_worker_remove(const discovery_instance_t *inst, void *ud) {
    router_t *r = ud;
    uint64_t id = (uint64_t)inst->instance_id;
    pthread_mutex_lock(&r->lock);
    rworker_t *w = worker_find(r, id);
    if (w) {
        if (w->accepted) {
            r->st.workers_purged++;
            LOG_INFO("%s %016" PRIx64 " left: purged %zu blocks", inst->component, id,
                     kv_index_worker_blocks(r->idx, id, 0) + kv_index_worker_blocks(r->idx, id, 1) +
                         kv_index_worker_blocks(r->idx, id, 2));
        }
        kv_index_worker_remove(r->idx, id);
        kv_index_worker_remove(r->aidx, id);
        active_seqs_worker_remove(r->act, id);
        w->used = false;
    }
    pthread_mutex_unlock(&r->lock);
}

/* ---- maintenance thread ------------------------------------------------------- */

static void *maint_main(void *arg) {
    router_t *r = arg;
    for (;;) {
        pthread_mutex_lock(&r->stop_lock);
        if (!r->stopping) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&r->stop_cv, &r->stop_lock, &ts);
        }
        bool stop = r->stopping;
        pthread_mutex_unlock(&r->stop_lock);
        if (stop) break;
        int64_t now = now_ms();
        uint64_t todo[64];
        size_t n_todo = 0;
        pthread_mutex_lock(&r->lock);
        approx_expire(r, now, false);
        active_seqs_expire(r->act, now);
        size_t nw = 0;
        for (size_t i = 0; i < r->n_workers; i++) {
            rworker_t *w = &r->workers[i];
            if (!w->used || !w->accepted) continue;
            nw += !w->shared && !w->prefill;
            if (w->want_resync && n_todo < 64) {
                w->want_resync = false;
                todo[n_todo++] = w->id;
            }
        }
        metrics_gauge_set(r->m_workers, (double)nw);
        metrics_gauge_set(r->m_active, (double)active_seqs_total(r->act));
        pthread_mutex_unlock(&r->lock);
        /* A newly seen worker: fetch its device tier (the router may have
         * started after the worker's first events). */
        for (size_t i = 0; i < n_todo; i++) {
            pthread_mutex_lock(&r->stop_lock);
            stop = r->stopping;
            pthread_mutex_unlock(&r->stop_lock);
            if (stop) break;
            resync(r, todo[i], KV_INDEX_TIER_DEVICE, 0);
        }
    }
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------ */

static void metrics_setup(router_t *r) {
    metrics_registry_t *m = r->o.metrics;
    if (!m) return;
    r->m_routed = metrics_counter_new(m, "sluice_router_requests_total", "Route requests answered");
    r->m_errors = metrics_counter_new(m, "sluice_router_errors_total",
                                      "Route requests answered with an error");
    r->m_resyncs = metrics_counter_new(m, "sluice_router_resyncs_total", "KV resyncs applied");
    r->m_gaps = metrics_counter_new(m, "sluice_router_event_gaps_total", "KV event_id gaps seen");
    r->m_workers = metrics_gauge_new(m, "sluice_router_workers", "Accepted routing targets");
    r->m_blocks = metrics_gauge_new(m, "sluice_router_indexed_blocks", "Distinct indexed hashes");
    r->m_active = metrics_gauge_new(m, "sluice_router_active_seqs", "Sequences in predicted load");
    static const double lat[] = {1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2e-2};
    r->m_latency = metrics_histogram_new(m, "sluice_router_decision_seconds",
                                         "Time to decide and answer", lat, 9);
    static const double ratio[] = {0.1, 0.25, 0.5, 0.75, 0.9, 1.0};
    r->m_overlap = metrics_histogram_new(m, "sluice_router_overlap_ratio",
                                         "Device prefix hit ratio promised per request", ratio, 6);
}

int router_new(const router_opts_t *opts, router_t **out) {
    int rc = SL_EINVAL;
    router_t *r = NULL;
    if (!opts || !out) goto out;
    *out = NULL;
    if (opts->mode >= ROUTER_MODE_COUNT || opts->prefill_scale < 0 || opts->temperature < 0 ||
        opts->block_size > 65536 || !(opts->queue_weight >= 0) || !(opts->active_weight >= 0))
        goto out;
    rc = SL_ENOMEM;
    if (!(r = calloc(1, sizeof *r))) goto out;
    pthread_mutex_init(&r->lock, NULL);
    pthread_mutex_init(&r->stop_lock, NULL);
    pthread_cond_init(&r->stop_cv, NULL);
    r->o = *opts;
    r->o.metrics = opts->metrics;
    if (!r->o.block_size) r->o.block_size = 16;
    if (!(r->o.prefill_scale > 0)) r->o.prefill_scale = 1.0;
    if (!r->o.approx_ttl_ms) r->o.approx_ttl_ms = 120000;
    if (!r->o.active_ttl_ms) r->o.active_ttl_ms = 600000;
    if (!r->o.hot_half_life_ms) r->o.hot_half_life_ms = 10000;
    if (!r->o.resync_timeout_ms) r->o.resync_timeout_ms = 2000;
    const char *ns = opts->ns ? opts->ns : getenv("SLUICE_NAMESPACE");
    if (!(r->ns = strdup(ns && ns[0] ? ns : "default"))) goto out;
    if (opts->model && opts->model[0] && !(r->model = strdup(opts->model))) goto out;
    r->o.ns = r->ns;
    r->o.model = r->model;
    if ((rc = kv_index_new(&r->idx, 1 << 16)) < 0) goto out;
    if ((rc = kv_index_new(&r->aidx, 0)) < 0) goto out;
    active_seqs_opts_t ao = {.ttl_ms = r->o.active_ttl_ms};
    if ((rc = active_seqs_new(&r->act, &ao)) < 0) goto out;
    if (r->o.hot_half_life_ms > 0 && (rc = prefix_heat_new(&r->heat, 0, r->o.hot_half_life_ms)) < 0)
        goto out;
    metrics_setup(r);

    bus_opts_t bo = {.url = opts->nats_url, .name = "sluice-router"};
    if ((rc = bus_connect(&r->bus, &bo)) < 0) {
        LOG_ERROR("cannot connect to NATS: %s", bus_last_error());
        goto out;
    }
    discovery_opts_t dopt = {.etcd_url = opts->etcd_url, .ns = r->ns, .ttl_s = opts->lease_ttl_s};
    if ((rc = discovery_open(&dopt, &r->disc)) < 0) goto out;
    if (opts->register_self) {
        char meta[512];
        snprintf(meta, sizeof meta, "{\"model\":\"%s\",\"block_size\":%u,\"mode\":\"%s\"}", "",
                 r->o.block_size, router_mode_names[r->o.mode]);
        if (r->model) {
            /* The model name goes through cJSON for escaping. */
            cJSON *j = cJSON_Parse(meta);
            if (j) {
                cJSON_ReplaceItemInObject(j, "model", cJSON_CreateString(r->model));
                char *s = cJSON_PrintUnformatted(j);
                if (s) snprintf(meta, sizeof meta, "%s", s);
                free(s);
                cJSON_Delete(j);
            }
        }
        rc = discovery_register(r->disc, "router", "route", meta);
        if (rc < 0 && rc != SL_EUNAVAIL && rc != SL_ETIMEDOUT) goto out;
        if (rc < 0) LOG_WARN("etcd unreachable; registration continues in the background");
        r->id = (uint64_t)discovery_instance_id(r->disc);
    }
    if (!r->id) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t seed[2] = {(uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20), (uint64_t)getpid()};
        r->id = XXH3_64bits(seed, sizeof seed) | 1;
    }
    char subj[BUS_SUBJECT_MAX];
    if ((rc = bus_subject_endpoint(r->subj_active, sizeof r->subj_active, r->ns, "router",
                                   "active")) < 0)
        goto out;
    if ((rc = bus_subscribe_proto(r->bus, r->subj_active, NULL,
                                  &sluice__v1__active_seq_event__descriptor, on_active, r,
                                  &r->s_active)) < 0)
        goto out;
    if ((rc = bus_subject_topic(subj, sizeof subj, r->ns, "load")) < 0 ||
        (rc = bus_subscribe_proto(r->bus, subj, NULL, &sluice__v1__load_metrics__descriptor,
                                  on_load, r, &r->s_load)) < 0)
        goto out;
    if ((rc = bus_subject_topic(subj, sizeof subj, r->ns, "kv_events")) < 0 ||
        (rc = bus_subscribe_proto(r->bus, subj, NULL, &sluice__v1__kv_event_batch__descriptor,
                                  on_kv_events, r, &r->s_events)) < 0)
        goto out;
    if ((rc = discovery_watch(r->disc, "backend", on_backend_add, on_worker_remove, r,
                              &r->w_backend)) < 0 ||
        (rc = discovery_watch(r->disc, "kvm", on_kvm_add, on_worker_remove, r, &r->w_kvm)) < 0 ||
        (rc = discovery_watch(r->disc, "prefill", on_prefill_add, on_worker_remove, r,
                              &r->w_prefill)) < 0)
        goto out;
    if ((rc = bus_subject_endpoint(subj, sizeof subj, r->ns, "router", "route")) < 0 ||
        (rc = bus_subscribe_proto(r->bus, subj, "router", &sluice__v1__route_request__descriptor,
                                  on_route, r, &r->s_route)) < 0)
        goto out;
    if (pthread_create(&r->thread, NULL, maint_main, r) != 0) {
        rc = SL_ENOMEM;
        goto out;
    }
    r->thread_started = true;
    bus_flush(r->bus, 2000);
    LOG_INFO("router %016" PRIx64 " serving %s in namespace %s (mode %s, block_size %u)", r->id,
             subj, r->ns, router_mode_names[r->o.mode], r->o.block_size);
    *out = r;
    r = NULL;
    rc = 0;
out:
    router_free(r);
    return rc;
}

void router_free(router_t *r) {
    if (!r) return;
    /* Stop inputs first, then the thread, then the state they touch. */
    bus_sub_free(r->s_route);
    discovery_watch_free(r->w_backend);
    discovery_watch_free(r->w_kvm);
    discovery_watch_free(r->w_prefill);
    bus_sub_free(r->s_events);
    bus_sub_free(r->s_load);
    bus_sub_free(r->s_active);
    if (r->thread_started) {
        pthread_mutex_lock(&r->stop_lock);
        r->stopping = true;
        pthread_cond_signal(&r->stop_cv);
        pthread_mutex_unlock(&r->stop_lock);
        pthread_join(r->thread, NULL);
    }
    discovery_close(r->disc);
    bus_free(r->bus);
    approx_expire(r, 0, true);
    free(r->a_refs);
    kv_index_free(r->idx);
    kv_index_free(r->aidx);
    active_seqs_free(r->act);
    prefix_heat_free(r->heat);
    free(r->workers);
    free(r->ns);
    free(r->model);
    pthread_mutex_destroy(&r->lock);
    pthread_mutex_destroy(&r->stop_lock);
    pthread_cond_destroy(&r->stop_cv);
    free(r);
}

uint64_t router_id(const router_t *r) {
    return r ? r->id : 0;
}

bool router_healthy(router_t *r) {
    return r && bus_is_connected(r->bus);
}

void router_stats_get(router_t *r, router_stats_t *out) {
    if (!r || !out) return;
    pthread_mutex_lock(&r->lock);
    *out = r->st;
    out->workers = 0;
    for (size_t i = 0; i < r->n_workers; i++)
        out->workers += r->workers[i].used && r->workers[i].accepted && !r->workers[i].shared &&
                        !r->workers[i].prefill;
    out->indexed_blocks = kv_index_size(r->idx);
    out->active_seqs = active_seqs_total(r->act);
    pthread_mutex_unlock(&r->lock);
}

bool router_worker_accepted(router_t *r, uint64_t worker_id) {
    if (!r) return false;
    pthread_mutex_lock(&r->lock);
    rworker_t *w = worker_find(r, worker_id);
    bool ok = w && w->accepted;
    pthread_mutex_unlock(&r->lock);
    return ok;
}

double router_worker_load(router_t *r, uint64_t worker_id) {
    if (!r) return 0;
    pthread_mutex_lock(&r->lock);
    double l = active_seqs_load(r->act, worker_id, now_ms());
    pthread_mutex_unlock(&r->lock);
    return l;
}

uint64_t router_worker_blocks(router_t *r, uint64_t worker_id, int tier) {
    if (!r) return 0;
    pthread_mutex_lock(&r->lock);
    uint64_t n = kv_index_worker_blocks(r->idx, worker_id, tier);
    pthread_mutex_unlock(&r->lock);
    return n;
}
