/* kv_index.c - flat open-addressing prefix index (see kv_index.h).
 *
 * Main table: cap slots of stride 1 + 3W uint64 words:
 *   [key][device bits W][host bits W][disk bits W]     (bit s = worker slot s)
 * A slot is empty when all its bits are zero, so the key needs no sentinel and
 * hash 0 is an ordinary key. Linear probing, max load 0.7, backward-shift
 * deletion. Reverse sets: per worker, slots {key, tier mask}, empty when the
 * mask is zero, same probing and deletion.
 */
#include "services/router/kv_index.h"
#include "common/base/err.h"

#include <stdlib.h>
#include <string.h>

#define MIN_CAP   1024u
#define LOAD_NUM  7u /* grow above 7/10 full */
#define LOAD_DEN  10u
#define HASH_MULT 0x9E3779B97F4A7C15ull

typedef struct rev_slot {
    uint64_t key;
    uint8_t mask; /* tiers held; 0 = empty */
} rev_slot_t;

typedef struct rev_set {
    rev_slot_t *slots; /* (cap) */
    size_t cap;        /* power of two, or 0 */
    unsigned shift;    /* 64 - log2(cap) */
    size_t count;
    size_t per_tier[KV_INDEX_TIERS];
} rev_set_t;

typedef struct worker {
    uint64_t id;
    bool used;
    bool shared;
    rev_set_t rev;
} worker_t;

struct kv_index {
    uint64_t *tab;  /* (cap, stride) */
    size_t cap;     /* power of two */
    unsigned shift; /* 64 - log2(cap) */
    size_t count;
    size_t words;  /* W: bitset words per tier */
    size_t stride; /* 1 + 3W */
    worker_t *workers;
    size_t n_slots; /* slots in use or free, < words * 64 */
    /* lookup scratch, sized words * 64 */
    uint32_t *cnt; /* (slots, 3) */
    uint64_t *alive, *routable, *shared;
};

static inline size_t home(uint64_t key, unsigned shift) {
    return (size_t)((key * HASH_MULT) >> shift);
}

static unsigned shift_for(size_t cap) {
    unsigned lg = 0;
    while (((size_t)1 << lg) < cap) lg++;
    return 64 - lg;
}

static inline uint64_t *slot_at(const kv_index_t *idx, size_t i) {
    return idx->tab + i * idx->stride;
}

static inline bool slot_empty(const kv_index_t *idx, const uint64_t *s) {
    for (size_t w = 1; w < idx->stride; w++)
        if (s[w]) return false;
    return true;
}

/* ---- main table ------------------------------------------------------------- */

static int tab_alloc(size_t cap, size_t stride, uint64_t **out) {
    if (cap > SIZE_MAX / stride / sizeof(uint64_t)) return SL_ENOMEM;
    *out = calloc(cap * stride, sizeof(uint64_t));
    return *out ? 0 : SL_ENOMEM;
}

/* Rebuilds the table with new_cap slots and new_words bitset words. */
static int tab_rebuild(kv_index_t *idx, size_t new_cap, size_t new_words) {
    size_t new_stride = 1 + KV_INDEX_TIERS * new_words;
    uint64_t *nt = NULL;
    int rc = tab_alloc(new_cap, new_stride, &nt);
    if (rc < 0) goto out;
    unsigned nshift = shift_for(new_cap);
    for (size_t i = 0; i < idx->cap; i++) {
        const uint64_t *s = slot_at(idx, i);
        if (slot_empty(idx, s)) continue;
        size_t j = home(s[0], nshift);
        while (1) {
            uint64_t *d = nt + j * new_stride;
            bool empty = true;
            for (size_t w = 1; w < new_stride; w++)
                if (d[w]) {
                    empty = false;
                    break;
                }
            if (empty) {
                d[0] = s[0];
                for (int t = 0; t < KV_INDEX_TIERS; t++)
                    memcpy(d + 1 + t * new_words, s + 1 + t * idx->words,
                           idx->words * sizeof(uint64_t));
                break;
            }
            j = (j + 1) & (new_cap - 1);
        }
    }
    free(idx->tab);
    idx->tab = nt;
    idx->cap = new_cap;
    idx->shift = nshift;
    idx->words = new_words;
    idx->stride = new_stride;
out:
    return rc;
}

/* Finds key; returns its slot index or SIZE_MAX. */
static inline size_t tab_find(const kv_index_t *idx, uint64_t key) {
    size_t m = idx->cap - 1;
    for (size_t i = home(key, idx->shift);; i = (i + 1) & m) {
        const uint64_t *s = slot_at(idx, i);
        if (slot_empty(idx, s)) return SIZE_MAX;
        if (s[0] == key) return i;
    }
}

/* Finds key or the empty slot where it goes. */
static inline uint64_t *tab_find_or_insert(kv_index_t *idx, uint64_t key) {
    size_t m = idx->cap - 1;
    for (size_t i = home(key, idx->shift);; i = (i + 1) & m) {
        uint64_t *s = slot_at(idx, i);
        if (slot_empty(idx, s)) {
            s[0] = key;
            idx->count++; /* the caller sets a bit right away */
            return s;
        }
        if (s[0] == key) return s;
    }
}

static void tab_delete_at(kv_index_t *idx, size_t i) {
    size_t m = idx->cap - 1, j = i;
    while (1) {
        j = (j + 1) & m;
        uint64_t *sj = slot_at(idx, j);
        if (slot_empty(idx, sj)) break;
        size_t k = home(sj[0], idx->shift);
        bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (stays) continue;
        memcpy(slot_at(idx, i), sj, idx->stride * sizeof(uint64_t));
        i = j;
    }
    memset(slot_at(idx, i), 0, idx->stride * sizeof(uint64_t));
    idx->count--;
}

static int tab_reserve(kv_index_t *idx, size_t more) {
    if ((idx->count + more) * LOAD_DEN <= idx->cap * LOAD_NUM) return 0;
    size_t cap = idx->cap;
    while ((idx->count + more) * LOAD_DEN > cap * LOAD_NUM) {
        if (cap > SIZE_MAX / 4) return SL_ENOMEM;
        cap *= 2;
    }
    return tab_rebuild(idx, cap, idx->words);
}

/* Clears bit (slot, tier) of key; deletes the entry when it empties. */
static void tab_clear_bit(kv_index_t *idx, uint64_t key, size_t slot, int tier) {
    size_t i = tab_find(idx, key);
    if (i == SIZE_MAX) return;
    uint64_t *s = slot_at(idx, i);
    s[1 + (size_t)tier * idx->words + slot / 64] &= ~(1ull << (slot % 64));
    if (slot_empty(idx, s)) tab_delete_at(idx, i);
}

/* ---- reverse sets ------------------------------------------------------------ */

static int rev_grow(rev_set_t *r) {
    size_t ncap = r->cap ? r->cap * 2 : 64;
    rev_slot_t *ns = calloc(ncap, sizeof *ns);
    if (!ns) return SL_ENOMEM;
    unsigned sh = shift_for(ncap);
    for (size_t i = 0; i < r->cap; i++) {
        if (!r->slots[i].mask) continue;
        size_t j = home(r->slots[i].key, sh);
        while (ns[j].mask) j = (j + 1) & (ncap - 1);
        ns[j] = r->slots[i];
    }
    free(r->slots);
    r->slots = ns;
    r->cap = ncap;
    r->shift = sh;
    return 0;
}

/* Adds tier to key's mask. Returns 1 if the bit was new, 0 if present. */
static int rev_add(rev_set_t *r, uint64_t key, int tier) {
    if ((r->count + 1) * LOAD_DEN > r->cap * LOAD_NUM) {
        int rc = rev_grow(r);
        if (rc < 0) return rc;
    }
    size_t m = r->cap - 1;
    unsigned sh = r->shift;
    uint8_t bit = (uint8_t)(1u << tier);
    for (size_t i = home(key, sh);; i = (i + 1) & m) {
        rev_slot_t *s = &r->slots[i];
        if (!s->mask) {
            s->key = key;
            s->mask = bit;
            r->count++;
            r->per_tier[tier]++;
            return 1;
        }
        if (s->key == key) {
            if (s->mask & bit) return 0;
            s->mask |= bit;
            r->per_tier[tier]++;
            return 1;
        }
    }
}

/* Removes tier from key's mask. Returns true if it was there. */
static bool rev_del(rev_set_t *r, uint64_t key, int tier) {
    if (!r->cap) return false;
    size_t m = r->cap - 1;
    unsigned sh = r->shift;
    uint8_t bit = (uint8_t)(1u << tier);
    size_t i = home(key, sh);
    for (;; i = (i + 1) & m) {
        if (!r->slots[i].mask) return false;
        if (r->slots[i].key == key) break;
    }
    if (!(r->slots[i].mask & bit)) return false;
    r->slots[i].mask &= (uint8_t)~bit;
    r->per_tier[tier]--;
    if (r->slots[i].mask) return true;
    r->count--;
    size_t j = i;
    while (1) {
        j = (j + 1) & m;
        if (!r->slots[j].mask) break;
        size_t k = home(r->slots[j].key, sh);
        bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (stays) continue;
        r->slots[i] = r->slots[j];
        i = j;
    }
    r->slots[i].mask = 0;
    return true;
}

static void rev_free(rev_set_t *r) {
    free(r->slots);
    memset(r, 0, sizeof *r);
}

/* ---- workers ----------------------------------------------------------------- */

static worker_t *worker_find(const kv_index_t *idx, uint64_t id, size_t *slot) {
    for (size_t s = 0; s < idx->n_slots; s++) {
        if (idx->workers[s].used && idx->workers[s].id == id) {
            if (slot) *slot = s;
            return &idx->workers[s];
        }
    }
    return NULL;
}

static int scratch_resize(kv_index_t *idx, size_t words) {
    size_t nbits = words * 64;
    uint32_t *cnt = realloc(idx->cnt, nbits * KV_INDEX_TIERS * sizeof *cnt);
    if (!cnt) return SL_ENOMEM;
    idx->cnt = cnt;
    uint64_t *a = realloc(idx->alive, 3 * words * sizeof *a);
    if (!a) return SL_ENOMEM;
    idx->alive = a;
    idx->routable = a + words;
    idx->shared = a + 2 * words;
    worker_t *w = realloc(idx->workers, nbits * sizeof *w);
    if (!w) return SL_ENOMEM;
    idx->workers = w;
    return 0;
}

int kv_index_new(kv_index_t **out, size_t expected_blocks) {
    int rc = SL_EINVAL;
    kv_index_t *idx = NULL;
    if (!out) goto out;
    *out = NULL;
    rc = SL_ENOMEM;
    idx = calloc(1, sizeof *idx);
    if (!idx) goto out;
    size_t cap = MIN_CAP;
    while (cap < SIZE_MAX / 4 && expected_blocks * LOAD_DEN > cap * LOAD_NUM) cap *= 2;
    idx->cap = cap;
    idx->shift = shift_for(cap);
    idx->words = 1;
    idx->stride = 1 + KV_INDEX_TIERS;
    if ((rc = tab_alloc(cap, idx->stride, &idx->tab)) < 0) goto out;
    if ((rc = scratch_resize(idx, 1)) < 0) goto out;
    *out = idx;
    idx = NULL;
out:
    kv_index_free(idx);
    return rc;
}

void kv_index_free(kv_index_t *idx) {
    if (!idx) return;
    for (size_t s = 0; s < idx->n_slots; s++)
        if (idx->workers[s].used) rev_free(&idx->workers[s].rev);
    free(idx->tab);
    free(idx->workers);
    free(idx->cnt);
    free(idx->alive);
    free(idx);
}

int kv_index_worker_add(kv_index_t *idx, uint64_t worker_id, bool shared) {
    if (!idx) return SL_EINVAL;
    if (worker_find(idx, worker_id, NULL)) return SL_EEXIST;
    size_t s = 0;
    while (s < idx->n_slots && idx->workers[s].used) s++;
    if (s == idx->n_slots) {
        if (s >= KV_INDEX_MAX_WORKERS) return SL_ETOOBIG;
        if (s == idx->words * 64) {
            /* Widen every entry by one word per tier, then the scratch. */
            int rc = scratch_resize(idx, idx->words + 1);
            if (rc < 0) return rc;
            rc = tab_rebuild(idx, idx->cap, idx->words + 1);
            if (rc < 0) return rc;
        }
        idx->n_slots++;
    }
    worker_t *w = &idx->workers[s];
    memset(w, 0, sizeof *w);
    w->id = worker_id;
    w->used = true;
    w->shared = shared;
    return 0;
}

bool kv_index_worker_known(const kv_index_t *idx, uint64_t worker_id) {
    return idx && worker_find(idx, worker_id, NULL) != NULL;
}

size_t kv_index_worker_blocks(const kv_index_t *idx, uint64_t worker_id, int tier) {
    if (!idx || tier < 0 || tier >= KV_INDEX_TIERS) return 0;
    worker_t *w = worker_find(idx, worker_id, NULL);
    return w ? w->rev.per_tier[tier] : 0;
}

size_t kv_index_size(const kv_index_t *idx) {
    return idx ? idx->count : 0;
}

int kv_index_store(kv_index_t *idx, uint64_t worker_id, int tier, const uint64_t *seq_hashes,
                   size_t n) {
    int rc = SL_EINVAL;
    size_t slot;
    if (!idx || tier < 0 || tier >= KV_INDEX_TIERS || (!seq_hashes && n)) goto out;
    worker_t *w = worker_find(idx, worker_id, &slot);
    rc = SL_ENOTFOUND;
    if (!w) goto out;
    if ((rc = tab_reserve(idx, n)) < 0) goto out;
    size_t off = 1 + (size_t)tier * idx->words + slot / 64;
    uint64_t bit = 1ull << (slot % 64);
    enum { AHEAD = 8 };
    for (size_t i = 0; i < n && i < AHEAD; i++)
        __builtin_prefetch(slot_at(idx, home(seq_hashes[i], idx->shift)), 1);
    for (size_t i = 0; i < n; i++) {
        if (i + AHEAD < n) {
            __builtin_prefetch(slot_at(idx, home(seq_hashes[i + AHEAD], idx->shift)), 1);
            if (w->rev.cap)
                __builtin_prefetch(&w->rev.slots[home(seq_hashes[i + AHEAD], w->rev.shift)], 1);
        }
        int added = rev_add(&w->rev, seq_hashes[i], tier);
        if (added < 0) {
            rc = added;
            goto out;
        }
        if (!added) continue; /* already held: the main bit is set too */
        uint64_t *s = tab_find_or_insert(idx, seq_hashes[i]);
        s[off] |= bit;
    }
    rc = 0;
out:
    return rc;
}

int kv_index_remove(kv_index_t *idx, uint64_t worker_id, int tier, const uint64_t *seq_hashes,
                    size_t n) {
    size_t slot;
    if (!idx || tier < 0 || tier >= KV_INDEX_TIERS || (!seq_hashes && n)) return SL_EINVAL;
    worker_t *w = worker_find(idx, worker_id, &slot);
    if (!w) return SL_ENOTFOUND;
    enum { AHEAD = 8 };
    for (size_t i = 0; i < n; i++) {
        if (i + AHEAD < n && w->rev.cap) {
            __builtin_prefetch(slot_at(idx, home(seq_hashes[i + AHEAD], idx->shift)), 1);
            __builtin_prefetch(&w->rev.slots[home(seq_hashes[i + AHEAD], w->rev.shift)], 1);
        }
        if (rev_del(&w->rev, seq_hashes[i], tier)) tab_clear_bit(idx, seq_hashes[i], slot, tier);
    }
    return 0;
}

/* Clears the tiers in tmask for worker slot, in place and without allocating:
 * a backward-shift deletion only moves entries into the slot being deleted
 * (re-examined here) or between slots already visited, so one pass that
 * re-checks slot i after each deletion sees every entry. */
static void worker_clear_mask(kv_index_t *idx, size_t slot, uint8_t tmask) {
    rev_set_t *r = &idx->workers[slot].rev;
    for (size_t i = 0; i < r->cap;) {
        uint8_t m = r->slots[i].mask & tmask;
        if (!m) {
            i++;
            continue;
        }
        uint64_t key = r->slots[i].key;
        for (int t = 0; t < KV_INDEX_TIERS; t++) {
            if (!(m & (1u << t))) continue;
            tab_clear_bit(idx, key, slot, t);
            rev_del(r, key, t);
        }
    }
}

int kv_index_clear(kv_index_t *idx, uint64_t worker_id, int tier) {
    size_t slot;
    if (!idx || tier < 0 || tier >= KV_INDEX_TIERS) return SL_EINVAL;
    if (!worker_find(idx, worker_id, &slot)) return SL_ENOTFOUND;
    worker_clear_mask(idx, slot, (uint8_t)(1u << tier));
    return 0;
}

int kv_index_worker_remove(kv_index_t *idx, uint64_t worker_id) {
    size_t slot;
    if (!idx) return SL_EINVAL;
    worker_t *w = worker_find(idx, worker_id, &slot);
    if (!w) return SL_ENOTFOUND;
    worker_clear_mask(idx, slot, 0x7);
    rev_free(&w->rev);
    w->used = false;
    while (idx->n_slots && !idx->workers[idx->n_slots - 1].used) idx->n_slots--;
    return 0;
}

/* ---- lookup ------------------------------------------------------------------ */

int kv_index_lookup(kv_index_t *idx, const uint64_t *seq_hashes, size_t n, kv_overlap_t *out,
                    size_t max, size_t *n_out) {
    if (!idx || !n_out || (!seq_hashes && n) || (!out && max)) return SL_EINVAL;
    *n_out = 0;
    const size_t W = idx->words;
    uint64_t *alive = idx->alive, *routable = idx->routable, *shared = idx->shared;
    memset(alive, 0, 3 * W * sizeof *alive);
    uint64_t any_routable = 0;
    for (size_t s = 0; s < idx->n_slots; s++) {
        if (!idx->workers[s].used) continue;
        uint64_t *m = idx->workers[s].shared ? shared : routable;
        m[s / 64] |= 1ull << (s % 64);
        any_routable |= !idx->workers[s].shared;
    }
    if (!any_routable) return 0;
    memcpy(alive, routable, W * sizeof *alive);
    memset(idx->cnt, 0, idx->n_slots * KV_INDEX_TIERS * sizeof *idx->cnt);
    enum { AHEAD = 4 };
    for (size_t i = 0; i < n && i < AHEAD; i++)
        __builtin_prefetch(slot_at(idx, home(seq_hashes[i], idx->shift)), 0);
    for (size_t i = 0; i < n; i++) {
        if (i + AHEAD < n)
            __builtin_prefetch(slot_at(idx, home(seq_hashes[i + AHEAD], idx->shift)), 0);
        size_t at = tab_find(idx, seq_hashes[i]);
        if (at == SIZE_MAX) break;
        const uint64_t *e = slot_at(idx, at);
        const uint64_t *dv = e + 1, *hs = e + 1 + W, *dk = e + 1 + 2 * W;
        bool sh = false, sk = false;
        for (size_t w = 0; w < W; w++) {
            sh |= (hs[w] & shared[w]) != 0;
            sk |= (dk[w] & shared[w]) != 0;
        }
        uint64_t any = 0;
        for (size_t w = 0; w < W; w++) {
            uint64_t a = alive[w];
            if (!a) continue;
            uint64_t d = dv[w] & a;
            uint64_t h = (sh ? ~0ull : hs[w]) & a & ~d;
            uint64_t k = (sk ? ~0ull : dk[w]) & a & ~d & ~h;
            for (uint64_t b = d; b; b &= b - 1)
                idx->cnt[(w * 64 + (size_t)__builtin_ctzll(b)) * KV_INDEX_TIERS + 0]++;
            for (uint64_t b = h; b; b &= b - 1)
                idx->cnt[(w * 64 + (size_t)__builtin_ctzll(b)) * KV_INDEX_TIERS + 1]++;
            for (uint64_t b = k; b; b &= b - 1)
                idx->cnt[(w * 64 + (size_t)__builtin_ctzll(b)) * KV_INDEX_TIERS + 2]++;
            alive[w] = d | h | k;
            any |= alive[w];
        }
        if (!any) break;
    }
    size_t m = 0;
    int rc = 0;
    for (size_t s = 0; s < idx->n_slots; s++) {
        if (!(routable[s / 64] & (1ull << (s % 64)))) continue;
        const uint32_t *c = idx->cnt + s * KV_INDEX_TIERS;
        if (!(c[0] | c[1] | c[2])) continue;
        if (m == max) {
            rc = SL_ETOOBIG;
            break;
        }
        out[m].worker_id = idx->workers[s].id;
        out[m].device = c[0];
        out[m].host = c[1];
        out[m].disk = c[2];
        m++;
    }
    *n_out = m;
    return rc;
}
