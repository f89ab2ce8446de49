/* oracle.c - ideal-routing and unbounded hit rates by simulation (see
 * oracle.h). Each worker is an LRU list of block keys over a fixed node pool
 * plus an open-addressing map key -> node; a request's blocks are touched
 * last-first, as the engine releases them, so a prefix outlives its tail. */
#include "bench/replay/oracle.h"

#include "common/base/err.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define ORC_NIL UINT32_MAX

/* ---- map: uint64 key (never 0) -> uint32, linear probing ---------------------------------- */

typedef struct orc_map {
    uint64_t *keys; /* (mask + 1), 0 = empty */
    uint32_t *vals; /* (mask + 1) */
    size_t mask, n;
} orc_map_t;

static size_t orc_slot(uint64_t k, size_t mask) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (size_t)k & mask;
}

static int orc_map_init(orc_map_t *m, size_t min_slots) {
    size_t cap = 64;
    while (cap < min_slots) cap *= 2;
    m->keys = calloc(cap, sizeof *m->keys);
    m->vals = calloc(cap, sizeof *m->vals);
    m->mask = cap - 1;
    m->n = 0;
    return m->keys && m->vals ? 0 : SL_ENOMEM;
}

static void orc_map_release(orc_map_t *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static bool orc_map_get(const orc_map_t *m, uint64_t k, uint32_t *v) {
    for (size_t i = orc_slot(k, m->mask);; i = (i + 1) & m->mask) {
        if (m->keys[i] == k) {
            if (v) *v = m->vals[i];
            return true;
        }
        if (!m->keys[i]) return false;
    }
}

static int orc_map_put(orc_map_t *m, uint64_t k, uint32_t v);

static int orc_map_grow(orc_map_t *m) {
    orc_map_t nm;
    if (orc_map_init(&nm, (m->mask + 1) * 2)) {
        orc_map_release(&nm);
        return SL_ENOMEM;
    }
    for (size_t i = 0; i <= m->mask; i++)
        if (m->keys[i]) orc_map_put(&nm, m->keys[i], m->vals[i]);
    orc_map_release(m);
    *m = nm;
    return 0;
}

static int orc_map_put(orc_map_t *m, uint64_t k, uint32_t v) {
    if ((m->n + 1) * 2 > m->mask + 1 && orc_map_grow(m)) return SL_ENOMEM;
    size_t i = orc_slot(k, m->mask);
    while (m->keys[i] && m->keys[i] != k) i = (i + 1) & m->mask;
    if (!m->keys[i]) m->n++;
    m->keys[i] = k;
    m->vals[i] = v;
    return 0;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void orc_map_del(orc_map_t *m, uint64_t k) {
    size_t i = orc_slot(k, m->mask);
    while (m->keys[i] != k) {
        if (!m->keys[i]) return;
        i = (i + 1) & m->mask;
    }
    m->n--;
    for (size_t j = i;;) {
        m->keys[i] = 0;
        for (;;) {
            j = (j + 1) & m->mask;
            if (!m->keys[j]) return;
            size_t home = orc_slot(m->keys[j], m->mask);
            /* move j back to i unless its home lies cyclically in (i, j] */
            bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
            if (!stays) break;
        }
        m->keys[i] = m->keys[j];
        m->vals[i] = m->vals[j];
        i = j;
    }
}

/* ---- one worker's LRU cache --------------------------------------------------------------- */

typedef struct orc_cache {
    orc_map_t map;
    uint64_t *key;  /* (cap) per node */
    uint32_t *prev; /* (cap) towards the MRU end */
    uint32_t *next; /* (cap) towards the LRU end */
    uint32_t cap, used;
    uint32_t head, tail; /* MRU, LRU */
    uint64_t last_pick;  /* request index + 1 when last chosen */
} orc_cache_t;

static int orc_cache_init(orc_cache_t *c, uint32_t cap) {
    memset(c, 0, sizeof *c);
    c->cap = cap;
    c->head = c->tail = ORC_NIL;
    c->key = malloc((size_t)cap * sizeof *c->key);
    c->prev = malloc((size_t)cap * sizeof *c->prev);
    c->next = malloc((size_t)cap * sizeof *c->next);
    if (!c->key || !c->prev || !c->next) return SL_ENOMEM;
    return orc_map_init(&c->map, (size_t)cap * 2 + 64);
}

static void orc_cache_release(orc_cache_t *c) {
    orc_map_release(&c->map);
    free(c->key);
    free(c->prev);
    free(c->next);
}

static void orc_unlink(orc_cache_t *c, uint32_t i) {
    if (c->prev[i] != ORC_NIL)
        c->next[c->prev[i]] = c->next[i];
    else
        c->head = c->next[i];
    if (c->next[i] != ORC_NIL)
        c->prev[c->next[i]] = c->prev[i];
    else
        c->tail = c->prev[i];
}

static void orc_push_front(orc_cache_t *c, uint32_t i) {
    c->prev[i] = ORC_NIL;
    c->next[i] = c->head;
    if (c->head != ORC_NIL) c->prev[c->head] = i;
    c->head = i;
    if (c->tail == ORC_NIL) c->tail = i;
}

static int orc_touch(orc_cache_t *c, uint64_t k) {
    uint32_t i;
    if (orc_map_get(&c->map, k, &i)) {
        orc_unlink(c, i);
        orc_push_front(c, i);
        return 0;
    }
    if (c->used < c->cap) {
        i = c->used++;
    } else { /* evict the least recently used */
        i = c->tail;
        orc_unlink(c, i);
        orc_map_del(&c->map, c->key[i]);
    }
    c->key[i] = k;
    orc_push_front(c, i);
    return orc_map_put(&c->map, k, i);
}

/* ---- simulation --------------------------------------------------------------------------- */

int oracle_run(const trace_t *t, size_t n, const oracle_cfg_t *cfg, oracle_result_t *out) {
    int rc = 0;
    orc_cache_t *w = NULL;
    orc_map_t seen = {0};
    uint64_t *keys = NULL; /* (cap_keys) block keys of one request */
    size_t cap_keys = 0;
    uint32_t nw = 0;
    if (!t || !cfg || !out || n > t->n || cfg->workers == 0 || cfg->capacity == 0 ||
        cfg->block_size == 0 || cfg->tokens_per_hash == 0 ||
        cfg->tokens_per_hash > TRACE_BLOCK_TOKENS || cfg->tokens_per_hash % cfg->block_size)
        return SL_EINVAL;
    memset(out, 0, sizeof *out);
    rc = SL_ENOMEM;
    if (!(w = calloc(cfg->workers, sizeof *w))) goto out;
    for (; nw < cfg->workers; nw++)
        if (orc_cache_init(&w[nw], cfg->capacity)) {
            nw++;
            goto out;
        }
    if (orc_map_init(&seen, 1 << 16)) goto out;
    rc = 0;
    const uint32_t bs = cfg->block_size;
    for (size_t r = 0; r < n; r++) {
        const trace_req_t *q = &t->reqs[r];
        uint32_t n_tok = trace_prompt_len(q, cfg->tokens_per_hash);
        uint32_t n_full = n_tok / bs, max_hit = (n_tok - 1) / bs;
        if (n_full > cap_keys) {
            uint64_t *nk = realloc(keys, (size_t)n_full * sizeof *nk);
            if (!nk) {
                rc = SL_ENOMEM;
                goto out;
            }
            keys = nk;
            cap_keys = n_full;
        }
        for (uint32_t b = 0; b < n_full; b++)
            keys[b] = trace_block_key(q, cfg->tokens_per_hash, bs, b) + 1;
        /* ideal routing: the longest cached prefix, ties to the least recently chosen */
        uint32_t best = 0, best_len = 0;
        for (uint32_t i = 0; i < cfg->workers; i++) {
            uint32_t len = 0;
            while (len < n_full && orc_map_get(&w[i].map, keys[len], NULL)) len++;
            if (len > best_len || (len == best_len && w[i].last_pick < w[best].last_pick)) {
                best = i;
                best_len = len;
            }
        }
        uint32_t u = 0;
        while (u < n_full && orc_map_get(&seen, keys[u], NULL)) u++;
        out->prompt_tokens += n_tok;
        out->cached_tokens += (uint64_t)(best_len < max_hit ? best_len : max_hit) * bs;
        out->unbounded_tokens += (uint64_t)(u < max_hit ? u : max_hit) * bs;
        w[best].last_pick = r + 1;
        for (uint32_t b = n_full; b-- > 0;) {
            if ((rc = orc_touch(&w[best], keys[b]))) goto out;
            if ((rc = orc_map_put(&seen, keys[b], 1))) goto out;
        }
    }
    if (out->prompt_tokens) {
        out->hit_rate = (double)out->cached_tokens / (double)out->prompt_tokens;
        out->unbounded_hit_rate = (double)out->unbounded_tokens / (double)out->prompt_tokens;
    }
out:
    for (uint32_t i = 0; i < nw; i++) orc_cache_release(&w[i]);
    free(w);
    orc_map_release(&seen);
    free(keys);
    return rc;
}
