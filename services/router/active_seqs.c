/* active_seqs.c - predicted load per worker (active_seqs.h).
 *
 * Sequences live in a pool (array + free list); a linear-probing map from the
 * request id's hash finds them; each worker keeps its sequences in a doubly
 * linked list in insertion order (newest at the tail), which is what the
 * settle window and the TTL walk need. Workers are a small array.
 */
#include "services/router/active_seqs.h"
#include "common/base/err.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define NIL UINT32_MAX

typedef struct seq {
    char id[ACTIVE_SEQS_ID_MAX + 1];
    uint64_t hash;
    uint64_t worker_id;
    uint32_t n_blocks, overlap;
    bool prefilling;
    int64_t added_ms;
    uint32_t prev, next; /* worker list; free list uses next */
    uint32_t wslot;
} seq_t;

typedef struct wload {
    uint64_t id;
    bool used;
    uint64_t blocks;  /* sum of n_blocks of tracked sequences */
    uint64_t pending; /* blocks still to prefill */
    size_t n;
    uint32_t head, tail;
    double correction; /* blocks, from the last report */
    int64_t report_ms;
    bool reported;
    uint64_t q_blocks; /* queued prefill blocks, from the last queue report */
    int64_t q_ms;
    bool q_reported;
} wload_t;

#define TOMBS    1024
#define TOMB_TTL 60000

struct active_seqs {
    active_seqs_opts_t o;
    uint64_t tomb_hash[TOMBS]; /* ids finished before they were added */
    int64_t tomb_ms[TOMBS];
    bool tomb_used[TOMBS];
    seq_t *pool;
    uint32_t pool_cap, free_head, live;
    uint32_t *map; /* (map_cap) pool index or NIL */
    size_t map_cap;
    wload_t *w;
    size_t nw, w_cap;
};

static uint64_t id_hash(const char *s, size_t n) {
    return XXH3_64bits(s, n);
}

int active_seqs_new(active_seqs_t **out, const active_seqs_opts_t *opts) {
    int rc = SL_EINVAL;
    active_seqs_t *a = NULL;
    if (!out) goto out;
    *out = NULL;
    if (opts && (opts->ttl_ms < 0 || opts->settle_ms < 0 || opts->stale_ms < 0)) goto out;
    rc = SL_ENOMEM;
    if (!(a = calloc(1, sizeof *a))) goto out;
    if (opts) a->o = *opts;
    if (!a->o.ttl_ms) a->o.ttl_ms = 600000;
    if (!a->o.settle_ms) a->o.settle_ms = 300;
    if (!a->o.stale_ms) a->o.stale_ms = 2000;
    a->free_head = NIL;
    a->map_cap = 1024;
    if (!(a->map = malloc(a->map_cap * sizeof *a->map))) goto out;
    memset(a->map, 0xff, a->map_cap * sizeof *a->map);
    *out = a;
    a = NULL;
    rc = 0;
out:
    active_seqs_free(a);
    return rc;
}

void active_seqs_free(active_seqs_t *a) {
    if (!a) return;
    free(a->pool);
    free(a->map);
    free(a->w);
    free(a);
}

static wload_t *worker_get(const active_seqs_t *a, uint64_t id, size_t *slot) {
    for (size_t i = 0; i < a->nw; i++)
        if (a->w[i].used && a->w[i].id == id) {
            if (slot) *slot = i;
            return &a->w[i];
        }
    return NULL;
}

static wload_t *worker_get_or_add(active_seqs_t *a, uint64_t id, size_t *slot) {
    wload_t *w = worker_get(a, id, slot);
    if (w) return w;
    size_t i = 0;
    while (i < a->nw && a->w[i].used) i++;
    if (i == a->nw) {
        if (a->nw == a->w_cap) {
            size_t nc = a->w_cap ? a->w_cap * 2 : 16;
            wload_t *nwp = realloc(a->w, nc * sizeof *nwp);
            if (!nwp) return NULL;
            a->w = nwp;
            a->w_cap = nc;
        }
        a->nw++;
    }
    w = &a->w[i];
    memset(w, 0, sizeof *w);
    w->id = id;
    w->used = true;
    w->head = w->tail = NIL;
    *slot = i;
    return w;
}

/* Map slot of request id, or of the empty slot where it would go. */
static size_t map_probe(const active_seqs_t *a, const char *id, uint64_t h, bool *found) {
    size_t m = a->map_cap - 1;
    for (size_t i = (size_t)h & m;; i = (i + 1) & m) {
        uint32_t p = a->map[i];
        if (p == NIL) {
            *found = false;
            return i;
        }
        if (a->pool[p].hash == h && !strcmp(a->pool[p].id, id)) {
            *found = true;
            return i;
        }
    }
}

static int map_grow(active_seqs_t *a) {
    size_t nc = a->map_cap * 2;
    uint32_t *nm = malloc(nc * sizeof *nm);
    if (!nm) return SL_ENOMEM;
    memset(nm, 0xff, nc * sizeof *nm);
    for (size_t i = 0; i < a->map_cap; i++) {
        uint32_t p = a->map[i];
        if (p == NIL) continue;
        size_t j = (size_t)a->pool[p].hash & (nc - 1);
        while (nm[j] != NIL) j = (j + 1) & (nc - 1);
        nm[j] = p;
    }
    free(a->map);
    a->map = nm;
    a->map_cap = nc;
    return 0;
}

static void map_delete_at(active_seqs_t *a, size_t i) {
    size_t m = a->map_cap - 1, j = i;
    while (1) {
        j = (j + 1) & m;
        if (a->map[j] == NIL) break;
        size_t k = (size_t)a->pool[a->map[j]].hash & m;
        bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (stays) continue;
        a->map[i] = a->map[j];
        i = j;
    }
    a->map[i] = NIL;
}

int active_seqs_add(active_seqs_t *a, const char *request_id, uint64_t worker_id, uint32_t n_blocks,
                    uint32_t overlap, int64_t now_ms) {
    if (!a || !request_id) return SL_EINVAL;
    size_t len = strnlen(request_id, ACTIVE_SEQS_ID_MAX + 1);
    if (len == 0 || len > ACTIVE_SEQS_ID_MAX) return SL_EINVAL;
    if ((size_t)(a->live + 1) * 2 > a->map_cap && map_grow(a) < 0) return SL_ENOMEM;
    uint64_t h = id_hash(request_id, len);
    bool found;
    size_t mi = map_probe(a, request_id, h, &found);
    if (found) return SL_EEXIST;
    size_t ti = (size_t)(h >> 32) % TOMBS;
    if (a->tomb_used[ti] && a->tomb_hash[ti] == h) {
        a->tomb_used[ti] = false;
        if (now_ms - a->tomb_ms[ti] <= TOMB_TTL) return SL_ECANCELLED;
    }
    size_t ws;
    wload_t *w = worker_get_or_add(a, worker_id, &ws);
    if (!w) return SL_ENOMEM;
    uint32_t p = a->free_head;
    if (p != NIL) {
        a->free_head = a->pool[p].next;
    } else {
        if (a->pool_cap == NIL - 1) return SL_ENOMEM;
        uint32_t nc = a->pool_cap ? a->pool_cap * 2 : 64;
        seq_t *np = realloc(a->pool, (size_t)nc * sizeof *np);
        if (!np) return SL_ENOMEM;
        a->pool = np;
        for (uint32_t i = nc; i-- > a->pool_cap + 1;) {
            a->pool[i].next = a->free_head;
            a->free_head = i;
        }
        p = a->pool_cap;
        a->pool_cap = nc;
    }
    seq_t *s = &a->pool[p];
    memcpy(s->id, request_id, len);
    s->id[len] = 0;
    s->hash = h;
    s->worker_id = worker_id;
    s->n_blocks = n_blocks;
    s->overlap = overlap > n_blocks ? n_blocks : overlap;
    s->prefilling = true;
    s->added_ms = now_ms;
    s->wslot = (uint32_t)ws;
    s->next = NIL;
    s->prev = w->tail;
    if (w->tail != NIL)
        a->pool[w->tail].next = p;
    else
        w->head = p;
    w->tail = p;
    w->n++;
    w->blocks += n_blocks;
    w->pending += s->n_blocks - s->overlap;
    a->map[mi] = p;
    a->live++;
    return 0;
}

static seq_t *seq_find(const active_seqs_t *a, const char *request_id, size_t *mi) {
    if (!a || !request_id) return NULL;
    size_t len = strnlen(request_id, ACTIVE_SEQS_ID_MAX + 1);
    if (len == 0 || len > ACTIVE_SEQS_ID_MAX) return NULL;
    bool found;
    size_t i = map_probe(a, request_id, id_hash(request_id, len), &found);
    if (!found) return NULL;
    if (mi) *mi = i;
    return &a->pool[a->map[i]];
}

int active_seqs_prefill_done(active_seqs_t *a, const char *request_id) {
    seq_t *s = seq_find(a, request_id, NULL);
    if (!s) return SL_ENOTFOUND;
    if (s->prefilling) {
        a->w[s->wslot].pending -= s->n_blocks - s->overlap;
        s->prefilling = false;
    }
    return 0;
}

/* Unlinks pool entry p (whose map slot is mi) and frees it. */
static void seq_drop(active_seqs_t *a, uint32_t p, size_t mi) {
    seq_t *s = &a->pool[p];
    wload_t *w = &a->w[s->wslot];
    if (s->prev != NIL)
        a->pool[s->prev].next = s->next;
    else
        w->head = s->next;
    if (s->next != NIL)
        a->pool[s->next].prev = s->prev;
    else
        w->tail = s->prev;
    w->n--;
    w->blocks -= s->n_blocks;
    if (s->prefilling) w->pending -= s->n_blocks - s->overlap;
    map_delete_at(a, mi);
    s->id[0] = 0;
    s->next = a->free_head;
    a->free_head = p;
    a->live--;
}

int active_seqs_finish(active_seqs_t *a, const char *request_id, int64_t now_ms) {
    size_t mi;
    seq_t *s = seq_find(a, request_id, &mi);
    if (!s) {
        size_t len = request_id ? strnlen(request_id, ACTIVE_SEQS_ID_MAX + 1) : 0;
        if (a && len && len <= ACTIVE_SEQS_ID_MAX) {
            uint64_t h = id_hash(request_id, len);
            size_t ti = (size_t)(h >> 32) % TOMBS;
            a->tomb_hash[ti] = h;
            a->tomb_ms[ti] = now_ms;
            a->tomb_used[ti] = true;
        }
        return SL_ENOTFOUND;
    }
    seq_drop(a, (uint32_t)(s - a->pool), mi);
    return 0;
}

static void drop_by_index(active_seqs_t *a, uint32_t p) {
    size_t mi;
    seq_t *s = seq_find(a, a->pool[p].id, &mi);
    if (s) seq_drop(a, p, mi);
}

void active_seqs_worker_remove(active_seqs_t *a, uint64_t worker_id) {
    size_t ws;
    if (!a) return;
    wload_t *w = worker_get(a, worker_id, &ws);
    if (!w) return;
    while (w->head != NIL) drop_by_index(a, w->head);
    w->used = false;
}

void active_seqs_report(active_seqs_t *a, uint64_t worker_id, uint32_t running_and_waiting,
                        int64_t now_ms) {
    size_t ws;
    if (!a) return;
    wload_t *w = worker_get_or_add(a, worker_id, &ws);
    if (!w) return;
    /* Settled: tracked sequences older than the settle window. */
    size_t young = 0;
    uint64_t young_blocks = 0;
    for (uint32_t p = w->tail; p != NIL; p = a->pool[p].prev) {
        if (now_ms - a->pool[p].added_ms >= a->o.settle_ms) break;
        young++;
        young_blocks += a->pool[p].n_blocks;
    }
    size_t settled = w->n - young;
    double mean = w->n ? (double)w->blocks / (double)w->n : 0;
    if (!w->n) {
        /* No sequence of ours there: size foreign ones like the fleet's. */
        uint64_t b = 0;
        size_t n = 0;
        for (size_t i = 0; i < a->nw; i++)
            if (a->w[i].used) b += a->w[i].blocks, n += a->w[i].n;
        mean = n ? (double)b / (double)n : 1;
    }
    (void)young_blocks;
    if (mean < 1) mean = 1; /* a running sequence holds at least one block */
    w->correction = ((double)running_and_waiting - (double)settled) * mean;
    w->report_ms = now_ms;
    w->reported = true;
}

double active_seqs_load(const active_seqs_t *a, uint64_t worker_id, int64_t now_ms) {
    if (!a) return 0;
    const wload_t *w = worker_get(a, worker_id, NULL);
    if (!w) return 0;
    double load = (double)w->blocks;
    if (w->reported && now_ms - w->report_ms <= a->o.stale_ms) load += w->correction;
    return load > 0 ? load : 0;
}

void active_seqs_report_queue(active_seqs_t *a, uint64_t worker_id, uint64_t pending_blocks,
                              int64_t now_ms) {
    wload_t *w = a ? worker_get_or_add(a, worker_id, NULL) : NULL;
    if (!w) return;
    w->q_blocks = pending_blocks;
    w->q_ms = now_ms;
    w->q_reported = true;
}

double active_seqs_queued(const active_seqs_t *a, uint64_t worker_id, int64_t now_ms) {
    const wload_t *w = a ? worker_get(a, worker_id, NULL) : NULL;
    if (!w) return 0;
    bool fresh = w->q_reported && now_ms - w->q_ms <= a->o.stale_ms;
    double q = fresh ? (double)w->q_blocks : 0;
    int64_t since = fresh ? w->q_ms - ACTIVE_SEQS_QUEUE_MARGIN_MS : now_ms - a->o.settle_ms;
    for (uint32_t i = w->tail; i != NIL && a->pool[i].added_ms > since; i = a->pool[i].prev)
        if (a->pool[i].prefilling && a->pool[i].n_blocks > a->pool[i].overlap)
            q += (double)(a->pool[i].n_blocks - a->pool[i].overlap);
    return q;
}

size_t active_seqs_count(const active_seqs_t *a, uint64_t worker_id) {
    const wload_t *w = a ? worker_get(a, worker_id, NULL) : NULL;
    return w ? w->n : 0;
}

uint64_t active_seqs_pending_prefill(const active_seqs_t *a, uint64_t worker_id) {
    const wload_t *w = a ? worker_get(a, worker_id, NULL) : NULL;
    return w ? w->pending : 0;
}

size_t active_seqs_total(const active_seqs_t *a) {
    return a ? a->live : 0;
}

size_t active_seqs_expire(active_seqs_t *a, int64_t now_ms) {
    size_t n = 0;
    if (!a) return 0;
    for (size_t i = 0; i < a->nw; i++) {
        wload_t *w = &a->w[i];
        if (!w->used) continue;
        while (w->head != NIL && now_ms - a->pool[w->head].added_ms >= a->o.ttl_ms) {
            drop_by_index(a, w->head);
            n++;
        }
    }
    return n;
}
