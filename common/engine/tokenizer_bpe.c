/* tokenizer_bpe.c - the BPE model: initial symbols (with byte fallback and
 * unk fusing), then merges lowest rank first through a binary heap over a
 * doubly linked symbol list, exactly as HF's Word::merge_all (ties on rank go
 * to the leftmost pair; stale heap entries are skipped). O(n log n) per word,
 * so SentencePiece-style tokenizers (one word per segment) stay fast on long
 * text. A small lock-protected direct-mapped cache keeps the ids of short
 * words. */
#include "common/base/err.h"
#include "common/engine/tokenizer_internal.h"
#include "common/engine/utf8.h"

#include <stdlib.h>
#include <string.h>

typedef struct bpe_sym {
    uint32_t id;
    int32_t prev, next;
    uint32_t len; /* 0 = merged away */
} bpe_sym_t;

typedef struct bpe_merge {
    uint32_t rank, pos, id;
} bpe_merge_t;

static const tk_merge_slot_t *merge_get(const sl_tokenizer_t *t, uint32_t a, uint32_t b) {
    uint64_t key = ((uint64_t)a << 32) | b;
    size_t mask = t->merges_cap - 1, i = (size_t)tk_mix64(key) & mask;
    for (;;) {
        const tk_merge_slot_t *s = &t->merges[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
        i = (i + 1) & mask;
    }
}

static bool merge_less(const bpe_merge_t *a, const bpe_merge_t *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(bpe_merge_t *h, size_t *n, bpe_merge_t m) {
    size_t i = (*n)++;
    h[i] = m;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!merge_less(&h[i], &h[p])) break;
        bpe_merge_t tmp = h[i];
        h[i] = h[p];
        h[p] = tmp;
        i = p;
    }
}

static bpe_merge_t heap_pop(bpe_merge_t *h, size_t *n) {
    bpe_merge_t top = h[0];
    h[0] = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && merge_less(&h[l], &h[m])) m = l;
        if (r < *n && merge_less(&h[r], &h[m])) m = r;
        if (m == i) break;
        bpe_merge_t tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
    return top;
}

/* ---- cache ------------------------------------------------------------------ */
static bool cache_get(const sl_tokenizer_t *t, uint64_t h, const char *w, size_t n, tk_ids_t *ids,
                      int *rc) {
    sl_tokenizer_t *mt = (sl_tokenizer_t *)t; /* the cache is the one mutable part */
    bool hit = false;
    *rc = 0;
    if (pthread_mutex_trylock(&mt->cache_lock) != 0) return false;
    tk_cache_ent_t *e = &mt->cache[h & (TK_CACHE_SLOTS - 1)];
    if (e->mem && e->hash == h && e->klen == n && !memcmp(e->mem, w, n)) {
        const uint32_t *v = (const uint32_t *)(e->mem + ((n + 3) & ~(size_t)3));
        for (uint32_t i = 0; i < e->n && !*rc; i++) *rc = tk_ids_push(ids, v[i]);
        hit = true;
    }
    pthread_mutex_unlock(&mt->cache_lock);
    return hit;
}

static void cache_put(const sl_tokenizer_t *t, uint64_t h, const char *w, size_t n,
                      const uint32_t *v, size_t nv) {
    sl_tokenizer_t *mt = (sl_tokenizer_t *)t;
    size_t ko = (n + 3) & ~(size_t)3;
    char *mem = malloc(ko + nv * sizeof *v);
    if (!mem) return;
    memcpy(mem, w, n);
    memcpy(mem + ko, v, nv * sizeof *v);
    if (pthread_mutex_trylock(&mt->cache_lock) != 0) {
        free(mem);
        return;
    }
    tk_cache_ent_t *e = &mt->cache[h & (TK_CACHE_SLOTS - 1)];
    free(e->mem);
    e->mem = mem;
    e->hash = h;
    e->klen = (uint32_t)n;
    e->n = (uint32_t)nv;
    pthread_mutex_unlock(&mt->cache_lock);
}

void tk_cache_free(sl_tokenizer_t *t) {
    if (!t->cache) return;
    for (size_t i = 0; i < TK_CACHE_SLOTS; i++) free(t->cache[i].mem);
    free(t->cache);
    t->cache = NULL;
}

/* ---- word ------------------------------------------------------------------- */
static int sym_add(bpe_sym_t *s, size_t *n, uint32_t id, uint32_t len) {
    s[*n] = (bpe_sym_t){id, (int32_t)*n - 1, (int32_t)*n + 1, len};
    (*n)++;
    return 0;
}

int tk_bpe_word(const sl_tokenizer_t *t, const char *w, size_t n, tk_ids_t *ids) {
    int rc = 0;
    bpe_sym_t *sym = NULL;
    bpe_merge_t *heap = NULL;
    char *tmp = NULL;
    if (n == 0) return 0;
    if (n > INT32_MAX / 8) return SL_ETOOBIG;
    if (t->ignore_merges) {
        int32_t id = tk_strmap_get(&t->vmap, t->tok, w, n);
        if (id >= 0) return tk_ids_push(ids, (uint32_t)id);
    }
    uint64_t h = 0;
    bool cacheable = n <= TK_CACHE_MAXKEY;
    if (cacheable) {
        h = tk_hash(w, n);
        if (cache_get(t, h, w, n, ids, &rc)) return rc;
    }
    /* A char of cl bytes gives at most cl + extra symbols (byte fallback of
     * the affixed key); each merge pushes at most two heap entries. */
    size_t extra = (size_t)t->subword_prefix.len + t->word_suffix.len;
    if (extra > 2 * SL_TOKENIZER_MAX_TOKLEN || n > (INT32_MAX / 16) / (1 + extra)) {
        rc = SL_ETOOBIG;
        goto out;
    }
    size_t cap = n * (1 + extra);
    sym = malloc(cap * sizeof *sym);
    heap = malloc(3 * cap * sizeof *heap);
    tmp = malloc(4 + extra + 1);
    if (!sym || !heap || !tmp) {
        rc = SL_ENOMEM;
        goto out;
    }
    size_t ns = 0;
    int32_t unk_pending = -1;
    uint32_t unk_len = 0;
    const uint8_t *u = (const uint8_t *)w;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t cl = sl_utf8_decode(u + i, n - i, &cp);
        bool first = i == 0, last = i + cl >= n;
        const char *key = w + i;
        size_t kl = cl;
        if ((!first && t->subword_prefix.len) || (last && t->word_suffix.len)) {
            kl = 0;
            if (!first) {
                memcpy(tmp, t->subword_prefix.p, t->subword_prefix.len);
                kl = t->subword_prefix.len;
            }
            memcpy(tmp + kl, w + i, cl);
            kl += cl;
            if (last) {
                memcpy(tmp + kl, t->word_suffix.p, t->word_suffix.len);
                kl += t->word_suffix.len;
            }
            key = tmp;
        }
        int32_t id = tk_strmap_get(&t->vmap, t->tok, key, kl);
        if (id >= 0) {
            if (unk_pending >= 0) sym_add(sym, &ns, (uint32_t)unk_pending, unk_len);
            unk_pending = -1;
            sym_add(sym, &ns, (uint32_t)id, (uint32_t)cl);
        } else {
            bool done = false;
            if (t->byte_fallback) {
                bool all = true;
                for (size_t k = 0; k < kl; k++)
                    if (t->byte_tok[(uint8_t)key[k]] < 0) all = false;
                if (all) {
                    /* HF does not flush a pending unk here; neither do we. */
                    for (size_t k = 0; k < kl; k++)
                        sym_add(sym, &ns, (uint32_t)t->byte_tok[(uint8_t)key[k]], 1);
                    done = true;
                }
            }
            if (!done && t->unk_id >= 0) {
                if (unk_pending >= 0 && t->fuse_unk) {
                    unk_len += (uint32_t)cl;
                } else {
                    if (unk_pending >= 0) sym_add(sym, &ns, (uint32_t)unk_pending, unk_len);
                    unk_pending = t->unk_id;
                    unk_len = (uint32_t)cl;
                }
            }
        }
        i += cl;
    }
    if (unk_pending >= 0) sym_add(sym, &ns, (uint32_t)unk_pending, unk_len);
    if (ns) sym[ns - 1].next = -1;
    /* merge_all */
    size_t nh = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        const tk_merge_slot_t *m = merge_get(t, sym[i].id, sym[i + 1].id);
        if (m) heap_push(heap, &nh, (bpe_merge_t){m->rank, (uint32_t)i, m->id});
    }
    while (nh) {
        bpe_merge_t top = heap_pop(heap, &nh);
        bpe_sym_t *cur = &sym[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        bpe_sym_t *right = &sym[cur->next];
        const tk_merge_slot_t *m = merge_get(t, cur->id, right->id);
        if (!m || m->id != top.id) continue;
        cur->id = top.id;
        cur->len += right->len;
        cur->next = right->next;
        right->len = 0;
        if (cur->next >= 0) sym[cur->next].prev = (int32_t)top.pos;
        if (cur->prev >= 0) {
            const tk_merge_slot_t *pm = merge_get(t, sym[cur->prev].id, cur->id);
            if (pm) heap_push(heap, &nh, (bpe_merge_t){pm->rank, (uint32_t)cur->prev, pm->id});
        }
        if (cur->next >= 0) {
            const tk_merge_slot_t *nm = merge_get(t, cur->id, sym[cur->next].id);
            if (nm) heap_push(heap, &nh, (bpe_merge_t){nm->rank, top.pos, nm->id});
        }
    }
    size_t first_out = ids->n;
    for (size_t i = 0; i < ns; i++)
        if (sym[i].len && (rc = tk_ids_push(ids, sym[i].id))) goto out;
    if (cacheable) cache_put(t, h, w, n, ids->v + first_out, ids->n - first_out);
out:
    free(sym);
    free(heap);
    free(tmp);
    return rc;
}
