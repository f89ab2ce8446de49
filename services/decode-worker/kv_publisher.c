/* kv_publisher.c - batching, ids, the replay ring and full-state dumps of a
 * worker's KV events (see kv_publisher.h). */
#include "services/decode-worker/kv_publisher.h"
#include "common/base/clock.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/kv_events.h"
#include "proto/sluice.pb-c.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Room left in every message for NATS headers (a reply part's framing: the
 * NATS/1.0 line, Sl-Seq with up to 20 digits, Sl-End) and slack: payloads are
 * kept to max_payload minus this. */
#define KVPUB_PART_HEADROOM 512

/* One pending event, copied out of the pool's callback. */
typedef struct kvpub_ev {
    kvpool_event_kind_t kind;
    bool has_parent;
    uint64_t parent;
    uint64_t *hashes; /* STORED: (n, 2) block hash, seq hash; REMOVED: (n) seq hashes */
    size_t n;
} kvpub_ev_t;

/* One published batch kept for replay. */
typedef struct kvpub_ring_ent {
    uint64_t first_id;
    uint32_t n_events;
    uint8_t *packed; /* (len) packed KvEventBatch */
    size_t len;
} kvpub_ring_ent_t;

/* A KvResyncRequest queued by kvpub_resync_enqueue(). */
struct kvpub_resync {
    struct kvpub_resync *next;
    uint64_t from;
    char reply[]; /* NUL-terminated */
};

struct kvpub {
    bus_t *bus;
    char *subject, *model;
    uint32_t block_size, max_events, flush_ms, ring_cap;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    bool stop, started;
    uint64_t worker_id;

    kvpub_ev_t *pend; /* (n_pend, cap_pend) */
    size_t n_pend, cap_pend;
    uint64_t pend_first_id;
    size_t pend_bytes;  /* upper bound of the pending events' packed size */
    size_t live_budget; /* kvpub_live_budget(), read when a batch starts */
    struct timespec pend_since;
    uint64_t last_id; /* id of the last event received */

    kvpub_ring_ent_t *ring; /* (ring_cap) circular, ring_n used from ring_head */
    uint32_t ring_head, ring_n;

    kvpub_stats_t st;

    pthread_mutex_t rs_mu; /* rs_head: KvResyncRequests waiting for the pool thread */
    kvpub_resync_t *rs_head, **rs_tail;
};

static void kvpub_ev_clear(kvpub_ev_t *e) {
    free(e->hashes);
    memset(e, 0, sizeof *e);
}

/* Builds the proto events of evs[0, n) into caller-provided storage:
 * pe (n) events, ps (n) stored, pr (n) removed, and the blocks of stored
 * events in blocks (total stored blocks) with pointers bptr. */
typedef struct kvpub_build {
    Sluice__V1__KvEvent *ev;
    Sluice__V1__KvEvent **evp;
    Sluice__V1__KvStored *stored;
    Sluice__V1__KvRemoved *removed;
    Sluice__V1__KvCleared *cleared;
    uint64_t *bh, *sh; /* (total stored blocks) block / sequence hashes, packed form */
} kvpub_build_t;

static void kvpub_build_free(kvpub_build_t *b) {
    free(b->ev);
    free(b->evp);
    free(b->stored);
    free(b->removed);
    free(b->cleared);
    free(b->bh);
    free(b->sh);
    memset(b, 0, sizeof *b);
}

static int kvpub_build(const kvpub_ev_t *evs, size_t n, kvpub_build_t *b) {
    size_t nb = 0;
    memset(b, 0, sizeof *b);
    for (size_t i = 0; i < n; i++)
        if (evs[i].kind == KVPOOL_EVENT_STORED) nb += evs[i].n;
    b->ev = calloc(n ? n : 1, sizeof *b->ev);
    b->evp = calloc(n ? n : 1, sizeof *b->evp);
    b->stored = calloc(n ? n : 1, sizeof *b->stored);
    b->removed = calloc(n ? n : 1, sizeof *b->removed);
    b->cleared = calloc(n ? n : 1, sizeof *b->cleared);
    b->bh = calloc(nb ? nb : 1, sizeof *b->bh);
    b->sh = calloc(nb ? nb : 1, sizeof *b->sh);
    if (!b->ev || !b->evp || !b->stored || !b->removed || !b->cleared || !b->bh || !b->sh) {
        kvpub_build_free(b);
        return SL_ENOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const kvpub_ev_t *e = &evs[i];
        Sluice__V1__KvEvent *pe = &b->ev[i];
        sluice__v1__kv_event__init(pe);
        b->evp[i] = pe;
        if (e->kind == KVPOOL_EVENT_STORED) {
            Sluice__V1__KvStored *s = &b->stored[i];
            sluice__v1__kv_stored__init(s);
            s->has_parent = e->has_parent;
            s->parent_hash = e->parent;
            kv_stored_set(s, &b->bh[k], &b->sh[k], e->n);
            for (size_t j = 0; j < e->n; j++, k++) {
                b->bh[k] = e->hashes[2 * j];
                b->sh[k] = e->hashes[2 * j + 1];
            }
            pe->data_case = SLUICE__V1__KV_EVENT__DATA_STORED;
            pe->stored = s;
        } else if (e->kind == KVPOOL_EVENT_REMOVED) {
            Sluice__V1__KvRemoved *r = &b->removed[i];
            sluice__v1__kv_removed__init(r);
            r->n_sequence_hashes = e->n;
            r->sequence_hashes = e->hashes;
            pe->data_case = SLUICE__V1__KV_EVENT__DATA_REMOVED;
            pe->removed = r;
        } else {
            sluice__v1__kv_cleared__init(&b->cleared[i]);
            pe->data_case = SLUICE__V1__KV_EVENT__DATA_CLEARED;
            pe->cleared = &b->cleared[i];
        }
    }
    return 0;
}

static void kvpub_batch_init(kvpub_t *p, Sluice__V1__KvEventBatch *m) {
    sluice__v1__kv_event_batch__init(m);
    m->version = 1;
    m->worker_id = p->worker_id;
    m->tier = SLUICE__V1__KV_TIER__KV_TIER_DEVICE;
    m->block_size = p->block_size;
    m->model = p->model;
    m->timestamp_ms = sl_wall_ms();
}

static void kvpub_ring_push(kvpub_t *p, uint64_t first_id, uint32_t n, uint8_t *packed,
                            size_t len) {
    uint32_t slot;
    if (p->ring_n == p->ring_cap) {
        slot = p->ring_head;
        free(p->ring[slot].packed);
        p->ring_head = (p->ring_head + 1) % p->ring_cap;
    } else {
        slot = (p->ring_head + p->ring_n++) % p->ring_cap;
    }
    p->ring[slot] = (kvpub_ring_ent_t){first_id, n, packed, len};
}

/* Publishes the pending events (p->mu held). */
static int kvpub_flush_locked(kvpub_t *p) {
    int rc = 0;
    kvpub_build_t b;
    uint8_t *buf = NULL;
    size_t n = p->n_pend;
    if (n == 0) return 0;
    rc = kvpub_build(p->pend, n, &b);
    if (rc) goto out;
    Sluice__V1__KvEventBatch m;
    kvpub_batch_init(p, &m);
    m.event_id = p->pend_first_id;
    m.n_events = n;
    m.events = b.evp;
    size_t len = sluice__v1__kv_event_batch__get_packed_size(&m);
    buf = malloc(len ? len : 1);
    if (!buf) {
        rc = SL_ENOMEM;
        kvpub_build_free(&b);
        goto out;
    }
    sluice__v1__kv_event_batch__pack(&m, buf);
    kvpub_build_free(&b);
    rc = bus_publish(p->bus, p->subject, buf, len);
    if (rc == 0) {
        p->st.events += n;
        p->st.batches++;
    }
    /* Kept for replay even when the publish failed: a router that saw the
     * gap can still get the events back. */
    kvpub_ring_push(p, p->pend_first_id, (uint32_t)n, buf, len);
    buf = NULL;
out:
    if (rc) {
        p->st.publish_errors++;
        LOG_WARN("kv events %llu..%llu not published: %s", (unsigned long long)p->pend_first_id,
                 (unsigned long long)(p->pend_first_id + n - 1), sl_strerror(rc));
    }
    for (size_t i = 0; i < n; i++) kvpub_ev_clear(&p->pend[i]);
    p->n_pend = 0;
    p->pend_bytes = 0;
    free(buf);
    return rc;
}

static void *kvpub_main(void *arg) {
    kvpub_t *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->stop) {
        if (p->n_pend == 0) {
            pthread_cond_wait(&p->cv, &p->mu);
            continue;
        }
        struct timespec dl = p->pend_since;
        dl.tv_nsec += (long)p->flush_ms * 1000000L;
        while (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        int w = 0;
        while (!p->stop && p->n_pend > 0 && w != ETIMEDOUT)
            w = pthread_cond_timedwait(&p->cv, &p->mu, &dl);
        if (p->n_pend > 0 && w == ETIMEDOUT) kvpub_flush_locked(p);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int kvpub_new(bus_t *bus, const kvpub_opts_t *o, kvpub_t **out) {
    int rc = 0;
    kvpub_t *p = NULL;
    if (!bus || !o || !o->subject || !o->model || !out || !o->block_size) return SL_EINVAL;
    *out = NULL;
    p = calloc(1, sizeof *p);
    if (!p) return SL_ENOMEM;
    p->bus = bus;
    p->block_size = o->block_size;
    p->max_events = o->max_events ? o->max_events : 256;
    p->flush_ms = o->flush_ms ? o->flush_ms : 5;
    p->ring_cap = o->ring_batches ? o->ring_batches : 128;
    p->subject = strdup(o->subject);
    p->model = strdup(o->model);
    p->ring = calloc(p->ring_cap, sizeof *p->ring);
    if (!p->subject || !p->model || !p->ring) {
        rc = SL_ENOMEM;
        goto out;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->rs_mu, NULL);
    p->rs_tail = &p->rs_head;
    pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    int e = pthread_create(&p->th, NULL, kvpub_main, p);
    if (e) {
        rc = -e;
        pthread_mutex_destroy(&p->mu);
        pthread_mutex_destroy(&p->rs_mu);
        pthread_cond_destroy(&p->cv);
        goto out;
    }
    p->started = true;
    *out = p;
    p = NULL;
out:
    if (p) {
        free(p->subject);
        free(p->model);
        free(p->ring);
        free(p);
    }
    return rc;
}

void kvpub_free(kvpub_t *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->th, NULL);
    kvpub_flush_locked(p);
    free(p->pend);
    for (uint32_t i = 0; i < p->ring_n; i++) free(p->ring[(p->ring_head + i) % p->ring_cap].packed);
    free(p->ring);
    for (kvpub_resync_t *rs = p->rs_head, *next; rs; rs = next) {
        next = rs->next;
        free(rs);
    }
    pthread_mutex_destroy(&p->rs_mu);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->subject);
    free(p->model);
    free(p);
}

void kvpub_set_worker_id(kvpub_t *p, uint64_t worker_id) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    kvpub_flush_locked(p); /* events so far belong to the old id */
    p->worker_id = worker_id;
    pthread_mutex_unlock(&p->mu);
}

/* Upper bound of ev's packed size inside a batch: per stored block two
 * fixed64 (16 bytes), per removed hash one varint (10), plus tags, lengths
 * and the parent (48). Saturates instead of overflowing. */
static size_t kvpub_ev_bytes(const kvpool_event_t *ev) {
    size_t n = ev->kind == KVPOOL_EVENT_STORED    ? ev->n_blocks
               : ev->kind == KVPOOL_EVENT_REMOVED ? ev->n_removed
                                                  : 0;
    if (n > (SIZE_MAX / 4) / 16) return SIZE_MAX / 4;
    return 48 + n * 16;
}

/* Bytes of events a live batch may hold: max_payload less the headroom and
 * the batch's own fields (the model name included). */
static size_t kvpub_live_budget(kvpub_t *p) {
    int64_t max = bus_max_payload(p->bus);
    size_t fixed = KVPUB_PART_HEADROOM + 128 + strlen(p->model);
    if (max <= 0) return SIZE_MAX / 2;
    if ((uint64_t)max <= fixed) return 0;
    return (size_t)max - fixed;
}

void kvpub_event(const kvpool_event_t *ev, void *ud) {
    kvpub_t *p = ud;
    if (!p || !ev) return;
    pthread_mutex_lock(&p->mu);
    if (p->n_pend > 0 && ev->id != p->last_id + 1)
        kvpub_flush_locked(p); /* keep batches contiguous */
    size_t eb = kvpub_ev_bytes(ev), budget = p->live_budget;
    if (p->n_pend > 0 && (p->pend_bytes >= budget || eb > budget - p->pend_bytes))
        kvpub_flush_locked(p); /* keep a live batch under max_payload */
    if (p->n_pend == 0) p->live_budget = kvpub_live_budget(p); /* once per batch, not per event */
    if (p->n_pend == p->cap_pend) {
        size_t nc = p->cap_pend ? p->cap_pend * 2 : 64;
        kvpub_ev_t *np = realloc(p->pend, nc * sizeof *np);
        if (!np) goto fail;
        p->pend = np;
        p->cap_pend = nc;
    }
    kvpub_ev_t *e = &p->pend[p->n_pend];
    memset(e, 0, sizeof *e);
    e->kind = ev->kind;
    if (ev->kind == KVPOOL_EVENT_STORED) {
        e->has_parent = ev->has_parent;
        e->parent = ev->parent_hash;
        e->n = ev->n_blocks;
        if (e->n > SIZE_MAX / (2 * sizeof(uint64_t))) goto fail;
        e->hashes = malloc(e->n ? 2 * e->n * sizeof(uint64_t) : 1);
        if (!e->hashes) goto fail;
        for (size_t j = 0; j < e->n; j++) {
            e->hashes[2 * j] = ev->blocks[j].block_hash;
            e->hashes[2 * j + 1] = ev->blocks[j].seq_hash;
        }
    } else if (ev->kind == KVPOOL_EVENT_REMOVED) {
        e->n = ev->n_removed;
        if (e->n > SIZE_MAX / sizeof(uint64_t)) goto fail;
        e->hashes = malloc(e->n ? e->n * sizeof(uint64_t) : 1);
        if (!e->hashes) goto fail;
        if (e->n) memcpy(e->hashes, ev->removed, e->n * sizeof(uint64_t));
    }
    if (p->n_pend == 0) {
        p->pend_first_id = ev->id;
        clock_gettime(CLOCK_MONOTONIC, &p->pend_since);
        pthread_cond_broadcast(&p->cv);
    }
    p->n_pend++;
    p->pend_bytes += eb;
    p->last_id = ev->id;
    if (p->n_pend >= p->max_events) kvpub_flush_locked(p);
    pthread_mutex_unlock(&p->mu);
    return;
fail:
    /* Lost event: the id gap makes routers resync. */
    p->st.publish_errors++;
    p->last_id = ev->id;
    kvpub_flush_locked(p);
    pthread_mutex_unlock(&p->mu);
    LOG_WARN("kv event %llu dropped: out of memory", (unsigned long long)ev->id);
}

int kvpub_flush(kvpub_t *p) {
    if (!p) return SL_EINVAL;
    pthread_mutex_lock(&p->mu);
    int rc = kvpub_flush_locked(p);
    pthread_mutex_unlock(&p->mu);
    return rc;
}

static size_t kvpub_varint_size(size_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Sends evs[0, n) as a streamed reply (bus_stream_writer) on reply: one
 * KvEventBatch part after the other, in order, each with the same event_id
 * and resync flag, cut at event boundaries so that every part's payload is at
 * most bus_max_payload() - KVPUB_PART_HEADROOM; the last part carries the
 * end-of-stream flag (n == 0 sends one empty last part). Sizes are checked
 * before anything is sent: SL_ETOOBIG when one event alone does not fit a
 * part (nothing sent then). *parts is set to the parts sent. p->mu held. */
static int kvpub_stream_events(kvpub_t *p, const char *reply, Sluice__V1__KvEvent **evs, size_t n,
                               uint64_t event_id, bool resync, size_t *parts) {
    int rc = 0;
    bus_stream_writer_t *w = NULL;
    size_t *esz = NULL; /* (n) packed size of each event inside a batch (tag + length + body) */
    Sluice__V1__KvEventBatch m;
    *parts = 0;
    kvpub_batch_init(p, &m);
    m.event_id = event_id;
    m.resync = resync;
    size_t base = sluice__v1__kv_event_batch__get_packed_size(&m);
    int64_t max = bus_max_payload(p->bus);
    size_t budget = max > 0 ? (size_t)max : (size_t)INT32_MAX;
    if (budget < base + KVPUB_PART_HEADROOM) {
        rc = SL_ETOOBIG;
        goto out;
    }
    budget -= base + KVPUB_PART_HEADROOM; /* bytes of events per part */
    esz = malloc((n ? n : 1) * sizeof *esz);
    if (!esz) {
        rc = SL_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        size_t b = sluice__v1__kv_event__get_packed_size(evs[i]);
        esz[i] = 1 + kvpub_varint_size(b) + b; /* field 5, length-delimited */
        if (esz[i] > budget) {
            rc = SL_ETOOBIG;
            goto out;
        }
    }
    rc = bus_stream_writer_create_reply(p->bus, reply, &w);
    if (rc) goto out;
    size_t i = 0;
    do {
        size_t j = i, used = 0;
        while (j < n && used + esz[j] <= budget) used += esz[j++];
        m.n_events = j - i;
        m.events = n ? &evs[i] : NULL;
        if (j == n)
            rc = bus_stream_writer_end_proto(w, &m.base);
        else
            rc = bus_stream_writer_send_proto(w, &m.base);
        if (rc) {
            /* Tell the requester now rather than let it time out (this fails
             * too when the connection is gone; it stays cut short then). */
            bus_stream_writer_fail(w, rc, "kv resync reply cut short");
            goto out;
        }
        (*parts)++;
        i = j;
    } while (i < n);
out:
    bus_stream_writer_free(w);
    free(esz);
    return rc;
}

/* Replays [from, last] from the ring (p->mu held). Returns SL_ENOTFOUND when
 * the ring no longer holds from. */
static int kvpub_replay_locked(kvpub_t *p, const char *reply, uint64_t from) {
    int rc = 0;
    Sluice__V1__KvEventBatch **un = NULL;
    Sluice__V1__KvEvent **evs = NULL;
    size_t n_ev = 0;
    if (from > p->last_id + 1) return SL_ENOTFOUND;
    if (from <= p->last_id && (p->ring_n == 0 || from < p->ring[p->ring_head].first_id))
        return SL_ENOTFOUND;
    un = calloc(p->ring_n ? p->ring_n : 1, sizeof *un);
    size_t cap = 0;
    for (uint32_t i = 0; i < p->ring_n; i++)
        cap += p->ring[(p->ring_head + i) % p->ring_cap].n_events;
    evs = calloc(cap ? cap : 1, sizeof *evs);
    if (!un || !evs) {
        rc = SL_ENOMEM;
        goto out;
    }
    uint64_t expect = from;
    for (uint32_t i = 0; i < p->ring_n; i++) {
        const kvpub_ring_ent_t *r = &p->ring[(p->ring_head + i) % p->ring_cap];
        if (r->first_id + r->n_events <= from) continue;
        if (r->first_id > expect) { /* a hole (dropped event): replay cannot cover it */
            rc = SL_ENOTFOUND;
            goto out;
        }
        un[i] = sluice__v1__kv_event_batch__unpack(NULL, r->len, r->packed);
        if (!un[i]) {
            rc = SL_ENOMEM;
            goto out;
        }
        for (size_t j = 0; j < un[i]->n_events; j++)
            if (r->first_id + j >= from && n_ev < cap) evs[n_ev++] = un[i]->events[j];
        expect = r->first_id + r->n_events;
    }
    if (expect != p->last_id + 1) {
        rc = SL_ENOTFOUND;
        goto out;
    }
    size_t parts = 0;
    rc = kvpub_stream_events(p, reply, evs, n_ev, from, false, &parts);
    if (rc == SL_ETOOBIG) { /* one event alone over a part: nothing sent, dump instead */
        LOG_INFO("kv replay from %llu has an event over max_payload: dumping instead",
                 (unsigned long long)from);
        rc = SL_ENOTFOUND;
        goto out;
    }
    if (rc == 0) {
        p->st.replays++;
        p->st.reply_parts += parts;
    }
out:
    if (un)
        for (uint32_t i = 0; i < p->ring_n; i++)
            if (un[i]) sluice__v1__kv_event_batch__free_unpacked(un[i], NULL);
    free(un);
    free(evs);
    return rc;
}

int kvpub_resync_reply(kvpub_t *p, kvpool_t *pool, const char *reply, uint64_t from_event_id) {
    int rc = 0;
    kvpool_cached_t *dump = NULL;
    kvpub_ev_t *evs = NULL;
    uint64_t *hashes = NULL;
    kvpub_build_t b = {0};
    size_t n = 0;
    uint64_t last = 0;
    if (!p || !pool || !reply) return SL_EINVAL;
    pthread_mutex_lock(&p->mu);
    kvpub_flush_locked(p);
    if (from_event_id > 0) {
        rc = kvpub_replay_locked(p, reply, from_event_id);
        if (rc != SL_ENOTFOUND) goto out;
    }
    rc = kvpool_dump(pool, &dump, &n, &last);
    if (rc) goto out;
    if (n > SIZE_MAX / (2 * sizeof *hashes) - 1) {
        rc = SL_ETOOBIG;
        goto out;
    }
    evs = calloc(n + 1, sizeof *evs);
    hashes = malloc((2 * n + 1) * sizeof *hashes);
    if (!evs || !hashes) {
        rc = SL_ENOMEM;
        goto out;
    }
    evs[0].kind = KVPOOL_EVENT_CLEARED;
    for (size_t i = 0; i < n; i++) {
        kvpub_ev_t *e = &evs[i + 1];
        e->kind = KVPOOL_EVENT_STORED;
        e->has_parent = dump[i].has_parent;
        e->parent = dump[i].parent_hash;
        e->n = 1;
        e->hashes = &hashes[2 * i];
        hashes[2 * i] = dump[i].block_hash;
        hashes[2 * i + 1] = dump[i].seq_hash;
    }
    rc = kvpub_build(evs, n + 1, &b);
    if (rc) goto out;
    /* One block per stored event, each with its own parent, so parts can be
     * cut anywhere and still apply in order. */
    size_t parts = 0;
    rc = kvpub_stream_events(p, reply, b.evp, n + 1, last, true, &parts);
    if (rc == 0) {
        p->st.resyncs++;
        p->st.reply_parts += parts;
        if (parts > 1) LOG_DEBUG("kv resync dump of %zu blocks sent in %zu parts", n, parts);
    }
out:
    pthread_mutex_unlock(&p->mu);
    if (rc) LOG_WARN("kv resync reply (%zu blocks) failed: %s", n, sl_strerror(rc));
    kvpub_build_free(&b);
    free(evs);
    free(hashes);
    free(dump);
    return rc;
}

void kvpub_stats_get(kvpub_t *p, kvpub_stats_t *out) {
    if (!p || !out) return;
    pthread_mutex_lock(&p->mu);
    *out = p->st;
    out->last_event_id = p->last_id;
    pthread_mutex_unlock(&p->mu);
}

int kvpub_resync_enqueue(kvpub_t *p, const bus_msg_t *msg) {
    Sluice__V1__KvResyncRequest *m = NULL;
    kvpub_resync_t *rs = NULL;
    int rc = SL_EINVAL;
    const char *reply = msg ? bus_msg_reply(msg) : NULL;
    if (!p || !reply) goto out;
    rc = bus_msg_unpack(msg, &sluice__v1__kv_resync_request__descriptor, (ProtobufCMessage **)&m);
    if (rc) goto out;
    size_t n = strlen(reply);
    rc = SL_ENOMEM;
    if (!(rs = malloc(sizeof *rs + n + 1))) goto out;
    rs->next = NULL;
    rs->from = m->from_event_id;
    memcpy(rs->reply, reply, n + 1);
    pthread_mutex_lock(&p->rs_mu);
    *p->rs_tail = rs;
    p->rs_tail = &rs->next;
    pthread_mutex_unlock(&p->rs_mu);
    rc = 0;
out:
    if (m) sluice__v1__kv_resync_request__free_unpacked(m, NULL);
    return rc;
}

size_t kvpub_resync_run(kvpub_t *p, kvpool_t *pool) {
    size_t answered = 0;
    if (!p) return 0;
    pthread_mutex_lock(&p->rs_mu);
    kvpub_resync_t *rs = p->rs_head;
    p->rs_head = NULL;
    p->rs_tail = &p->rs_head;
    pthread_mutex_unlock(&p->rs_mu);
    while (rs) {
        kvpub_resync_t *next = rs->next;
        if (kvpub_resync_reply(p, pool, rs->reply, rs->from) == 0) answered++;
        free(rs);
        rs = next;
    }
    return answered;
}
