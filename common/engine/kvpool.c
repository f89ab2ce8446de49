/* kvpool.c - block pool, hash index and LRU of cached blocks (see kvpool.h).
 *
 * Per block: refcount, hash fields, and links in one of two intrusive
 * doubly-linked lists (free, or cached-LRU); used blocks are in no list. The
 * index is a chained hash table keyed by sequence hash whose chains run
 * through the blocks themselves (each block holds at most one hash).
 */
#include "common/engine/kvpool.h"

#include "common/base/err.h"

#include <stdlib.h>
#include <string.h>

#define NIL UINT32_MAX

typedef struct kvblock {
    uint32_t ref;
    uint32_t prev, next; /* list links (free or lru) */
    uint32_t hnext;      /* hash chain */
    uint32_t depth;
    bool hashed;
    bool has_parent;
    uint8_t list; /* 0 none, 1 free, 2 lru */
    uint64_t seq_hash, block_hash, parent_hash;
} kvblock_t;

typedef struct kvlist {
    uint32_t head, tail, n;
} kvlist_t;

struct kvpool {
    uint32_t n_blocks, block_size;
    kvblock_t *b;      /* (n_blocks) */
    uint32_t *buckets; /* (n_buckets) head block of each hash chain */
    uint32_t n_buckets;
    kvlist_t free_list, lru;
    uint32_t used;
    uint64_t event_id, hits, evictions;
    kvpool_event_fn cb;
    void *cb_ud;
};

enum { LIST_NONE = 0, LIST_FREE = 1, LIST_LRU = 2 };

static kvlist_t *list_of(kvpool_t *p, uint8_t which) {
    return which == LIST_FREE ? &p->free_list : &p->lru;
}

static void list_push_tail(kvpool_t *p, uint8_t which, uint32_t i) {
    kvlist_t *l = list_of(p, which);
    kvblock_t *b = &p->b[i];
    b->prev = l->tail;
    b->next = NIL;
    if (l->tail != NIL)
        p->b[l->tail].next = i;
    else
        l->head = i;
    l->tail = i;
    l->n++;
    b->list = which;
}

static void list_remove(kvpool_t *p, uint32_t i) {
    kvblock_t *b = &p->b[i];
    if (b->list == LIST_NONE) return;
    kvlist_t *l = list_of(p, b->list);
    if (b->prev != NIL)
        p->b[b->prev].next = b->next;
    else
        l->head = b->next;
    if (b->next != NIL)
        p->b[b->next].prev = b->prev;
    else
        l->tail = b->prev;
    l->n--;
    b->prev = b->next = NIL;
    b->list = LIST_NONE;
}

static uint32_t bucket_of(const kvpool_t *p, uint64_t h) {
    /* Hashes are XXH3 outputs already; mix anyway so tests with small
     * synthetic hashes spread too. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return (uint32_t)(h & (p->n_buckets - 1));
}

static uint32_t index_find(const kvpool_t *p, uint64_t h) {
    for (uint32_t i = p->buckets[bucket_of(p, h)]; i != NIL; i = p->b[i].hnext)
        if (p->b[i].seq_hash == h) return i;
    return NIL;
}

static void index_insert(kvpool_t *p, uint32_t i) {
    uint32_t k = bucket_of(p, p->b[i].seq_hash);
    p->b[i].hnext = p->buckets[k];
    p->buckets[k] = i;
}

static void index_remove(kvpool_t *p, uint32_t i) {
    uint32_t *pp = &p->buckets[bucket_of(p, p->b[i].seq_hash)];
    while (*pp != NIL) {
        if (*pp == i) {
            *pp = p->b[i].hnext;
            break;
        }
        pp = &p->b[*pp].hnext;
    }
    p->b[i].hnext = NIL;
}

static void unhash(kvpool_t *p, uint32_t i) {
    index_remove(p, i);
    p->b[i].hashed = false;
}

static void emit(kvpool_t *p, kvpool_event_t *ev) {
    ev->id = ++p->event_id;
    if (p->cb) p->cb(ev, p->cb_ud);
}

kvpool_t *kvpool_new(uint32_t n_blocks, uint32_t block_size) {
    kvpool_t *p = NULL;
    if (n_blocks == 0 || block_size == 0 || n_blocks >= (1u << 31)) goto fail;
    p = calloc(1, sizeof *p);
    if (!p) goto fail;
    p->n_blocks = n_blocks;
    p->block_size = block_size;
    p->n_buckets = 16;
    while (p->n_buckets < 2 * n_blocks) p->n_buckets <<= 1;
    p->b = calloc(n_blocks, sizeof *p->b);
    p->buckets = malloc((size_t)p->n_buckets * sizeof *p->buckets);
    if (!p->b || !p->buckets) goto fail;
    for (uint32_t k = 0; k < p->n_buckets; k++) p->buckets[k] = NIL;
    p->free_list = (kvlist_t){NIL, NIL, 0};
    p->lru = (kvlist_t){NIL, NIL, 0};
    for (uint32_t i = 0; i < n_blocks; i++) {
        p->b[i].hnext = NIL;
        list_push_tail(p, LIST_FREE, i);
    }
    return p;
fail:
    kvpool_free(p);
    return NULL;
}

void kvpool_free(kvpool_t *p) {
    if (!p) return;
    free(p->b);
    free(p->buckets);
    free(p);
}

void kvpool_set_event_cb(kvpool_t *p, kvpool_event_fn fn, void *ud) {
    p->cb = fn;
    p->cb_ud = ud;
}

uint32_t kvpool_block_size(const kvpool_t *p) {
    return p->block_size;
}

uint32_t kvpool_n_blocks(const kvpool_t *p) {
    return p->n_blocks;
}

uint32_t kvpool_available(const kvpool_t *p) {
    return p->free_list.n + p->lru.n;
}

size_t kvpool_prefix_lookup(const kvpool_t *p, const uint64_t *seq_hashes, size_t n,
                            size_t *n_unreferenced) {
    size_t k = 0, unref = 0;
    for (; k < n; k++) {
        uint32_t i = index_find(p, seq_hashes[k]);
        if (i == NIL) break;
        unref += p->b[i].ref == 0;
    }
    if (n_unreferenced) *n_unreferenced = unref;
    return k;
}

size_t kvpool_prefix_acquire(kvpool_t *p, const uint64_t *seq_hashes, size_t n,
                             uint32_t *out_blocks) {
    size_t k = 0;
    for (; k < n; k++) {
        uint32_t i = index_find(p, seq_hashes[k]);
        if (i == NIL) break;
        if (p->b[i].ref == 0) {
            list_remove(p, i);
            p->used++;
        }
        p->b[i].ref++;
        out_blocks[k] = i;
    }
    p->hits += k;
    return k;
}

int kvpool_blocks_alloc(kvpool_t *p, size_t n, uint32_t *out) {
    int rc = 0;
    uint64_t *removed = NULL;
    size_t n_removed = 0;
    if (n > kvpool_available(p)) {
        rc = SL_EAGAIN;
        goto out;
    }
    if (n > p->free_list.n) {
        removed = malloc((n - p->free_list.n) * sizeof *removed);
        if (!removed) {
            rc = SL_ENOMEM;
            goto out;
        }
    }
    for (size_t k = 0; k < n; k++) {
        uint32_t i = p->free_list.head;
        if (i == NIL) {
            i = p->lru.head; /* least recently used cached block */
            removed[n_removed++] = p->b[i].seq_hash;
            unhash(p, i);
            p->evictions++;
        }
        list_remove(p, i);
        p->b[i].ref = 1;
        p->used++;
        out[k] = i;
    }
    if (n_removed) {
        kvpool_event_t ev = {
            .kind = KVPOOL_EVENT_REMOVED, .removed = removed, .n_removed = n_removed};
        emit(p, &ev);
    }
out:
    free(removed);
    return rc;
}

int kvpool_blocks_release(kvpool_t *p, const uint32_t *blocks, size_t n) {
    int rc = 0;
    for (size_t k = 0; k < n; k++) {
        uint32_t i = blocks[k];
        if (i >= p->n_blocks || p->b[i].ref == 0) {
            rc = SL_EINVAL;
            continue;
        }
        if (--p->b[i].ref == 0) {
            p->used--;
            list_push_tail(p, p->b[i].hashed ? LIST_LRU : LIST_FREE, i);
        }
    }
    return rc;
}

int kvpool_blocks_commit(kvpool_t *p, uint32_t first_index, uint64_t parent_hash,
                         const uint32_t *blocks, const uint64_t *block_hashes,
                         const uint64_t *seq_hashes, size_t n) {
    int rc = 0;
    kvpool_stored_block_t *run = NULL;
    size_t n_run = 0;
    for (size_t k = 0; k < n; k++)
        if (blocks[k] >= p->n_blocks || p->b[blocks[k]].ref == 0) {
            rc = SL_EINVAL;
            goto out;
        }
    if (n == 0) goto out;
    run = malloc(n * sizeof *run);
    if (!run) {
        rc = SL_ENOMEM;
        goto out;
    }
    /* The parent of the current run: the hash before its first block. */
    bool run_has_parent = first_index > 0;
    uint64_t run_parent = parent_hash;
    for (size_t k = 0; k < n; k++) {
        uint32_t i = blocks[k];
        kvblock_t *b = &p->b[i];
        bool fresh = !b->hashed && index_find(p, seq_hashes[k]) == NIL;
        if (fresh) {
            b->hashed = true;
            b->seq_hash = seq_hashes[k];
            b->block_hash = block_hashes[k];
            b->has_parent = first_index + k > 0;
            b->parent_hash = k > 0 ? seq_hashes[k - 1] : parent_hash;
            b->depth = first_index + (uint32_t)k;
            index_insert(p, i);
            run[n_run++] = (kvpool_stored_block_t){block_hashes[k], seq_hashes[k]};
            rc++;
        }
        if (!fresh || k + 1 == n) {
            if (n_run) {
                kvpool_event_t ev = {.kind = KVPOOL_EVENT_STORED,
                                     .has_parent = run_has_parent,
                                     .parent_hash = run_has_parent ? run_parent : 0,
                                     .blocks = run,
                                     .n_blocks = n_run};
                emit(p, &ev);
                n_run = 0;
            }
            run_has_parent = true;
            run_parent = seq_hashes[k];
        }
    }
out:
    free(run);
    return rc;
}

void kvpool_clear(kvpool_t *p) {
    for (uint32_t i = 0; i < p->n_blocks; i++) {
        if (!p->b[i].hashed) continue;
        unhash(p, i);
        if (p->b[i].list == LIST_LRU) {
            list_remove(p, i);
            list_push_tail(p, LIST_FREE, i);
        }
    }
    kvpool_event_t ev = {.kind = KVPOOL_EVENT_CLEARED};
    emit(p, &ev);
}

static int cached_cmp(const void *a, const void *b) {
    const kvpool_cached_t *x = a, *y = b;
    if (x->depth != y->depth) return x->depth < y->depth ? -1 : 1;
    return x->block < y->block ? -1 : x->block > y->block;
}

int kvpool_dump(const kvpool_t *p, kvpool_cached_t **out, size_t *n, uint64_t *last_event_id) {
    int rc = 0;
    size_t cnt = 0;
    kvpool_cached_t *v = NULL;
    for (uint32_t i = 0; i < p->n_blocks; i++) cnt += p->b[i].hashed;
    if (cnt) {
        v = malloc(cnt * sizeof *v);
        if (!v) {
            rc = SL_ENOMEM;
            cnt = 0;
            goto out;
        }
    }
    size_t k = 0;
    for (uint32_t i = 0; i < p->n_blocks && k < cnt; i++) {
        const kvblock_t *b = &p->b[i];
        if (!b->hashed) continue;
        v[k++] = (kvpool_cached_t){.has_parent = b->has_parent,
                                   .parent_hash = b->has_parent ? b->parent_hash : 0,
                                   .block_hash = b->block_hash,
                                   .seq_hash = b->seq_hash,
                                   .block = i,
                                   .depth = b->depth,
                                   .refcount = b->ref};
    }
    if (cnt) qsort(v, cnt, sizeof *v, cached_cmp);
out:
    *out = v;
    *n = cnt;
    if (last_event_id) *last_event_id = p->event_id;
    return rc;
}

void kvpool_stats_get(const kvpool_t *p, kvpool_stats_t *out) {
    *out = (kvpool_stats_t){.total = p->n_blocks,
                            .used = p->used,
                            .cached = p->lru.n,
                            .free = p->free_list.n,
                            .hits = p->hits,
                            .evictions = p->evictions,
                            .last_event_id = p->event_id};
}

uint32_t kvpool_block_refcount(const kvpool_t *p, uint32_t block) {
    return block < p->n_blocks ? p->b[block].ref : 0;
}
