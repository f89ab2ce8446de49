/* kvpool.h - paged KV block pool with prefix caching by sequence hash.
 *
 * The pool hands out physical block ids [0, n_blocks) of a KV memory it does
 * not own (the sl_forward_t implementation owns the bytes). Each block has a
 * reference count. A full block whose KV has been computed is registered
 * ("committed") under its chained sequence hash (block_hash.h); a later
 * request whose prompt starts with the same blocks acquires them instead of
 * recomputing. A block whose count drops to zero keeps its hash and data and
 * sits in an LRU list of cached blocks; it is evicted (hash dropped) only
 * when an allocation finds no never-used or unhashed free block.
 *
 * States of a block: used (ref > 0), cached (ref == 0, hashed), free
 * (ref == 0, unhashed). used + cached + free == n_blocks.
 *
 * Events: every registration, eviction and clear is reported through an
 * optional callback, with ids that increase by one per event (the first is 1):
 *   STORED  {has_parent, parent_hash, [(block_hash, seq_hash)]} - blocks in chain order
 *   REMOVED {[seq_hash]}
 *   CLEARED {}
 * The callback runs synchronously inside the pool call that caused it; it
 * must not call back into the pool. Arrays it sees are valid only during it.
 *
 * Thread-safety: none; a pool is owned by one thread (the engine's).
 */
#ifndef SL_ENGINE_KVPOOL_H
#define SL_ENGINE_KVPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvpool kvpool_t;

typedef enum kvpool_event_kind {
    KVPOOL_EVENT_STORED = 1,
    KVPOOL_EVENT_REMOVED = 2,
    KVPOOL_EVENT_CLEARED = 3
} kvpool_event_kind_t;

typedef struct kvpool_stored_block {
    uint64_t block_hash;
    uint64_t seq_hash;
} kvpool_stored_block_t;

typedef struct kvpool_event {
    uint64_t id; /* 1, 2, 3, ... per pool */
    kvpool_event_kind_t kind;
    /* STORED */
    bool has_parent; /* false for a chain starting at the first block */
    uint64_t parent_hash;
    const kvpool_stored_block_t *blocks; /* (n_blocks) */
    size_t n_blocks;
    /* REMOVED */
    const uint64_t *removed; /* (n_removed) sequence hashes */
    size_t n_removed;
} kvpool_event_t;

typedef void (*kvpool_event_fn)(const kvpool_event_t *ev, void *ud);

/* One cached block in a dump. */
typedef struct kvpool_cached {
    bool has_parent;
    uint64_t parent_hash;
    uint64_t block_hash;
    uint64_t seq_hash;
    uint32_t block;    /* physical block id */
    uint32_t depth;    /* 0 for a first block */
    uint32_t refcount; /* 0 when only cached */
} kvpool_cached_t;

typedef struct kvpool_stats {
    uint32_t total;
    uint32_t used;   /* ref > 0 */
    uint32_t cached; /* ref == 0, holds a reusable prefix */
    uint32_t free;   /* ref == 0, no hash */
    uint64_t hits;   /* blocks served from the cache by kvpool_prefix_acquire */
    uint64_t evictions;
    uint64_t last_event_id;
} kvpool_stats_t;

/* Creates a pool of n_blocks blocks of block_size tokens (both > 0,
 * n_blocks < 2^31). Returns NULL on bad arguments or out of memory. Free with
 * kvpool_free(). */
kvpool_t *kvpool_new(uint32_t n_blocks, uint32_t block_size);

/* Frees the pool (no events). NULL is a no-op. */
void kvpool_free(kvpool_t *p);

/* Installs (or with fn NULL removes) the event callback. */
void kvpool_set_event_cb(kvpool_t *p, kvpool_event_fn fn, void *ud);

uint32_t kvpool_block_size(const kvpool_t *p);
uint32_t kvpool_n_blocks(const kvpool_t *p);

/* Blocks an allocation could take now: free + cached. */
uint32_t kvpool_available(const kvpool_t *p);

/* Number of leading seq_hashes[0, n) that are registered (used or cached),
 * without side effects. If n_unreferenced is not NULL it receives how many of
 * those are cached with no reference (acquiring them lowers
 * kvpool_available()). */
size_t kvpool_prefix_lookup(const kvpool_t *p, const uint64_t *seq_hashes, size_t n,
                            size_t *n_unreferenced);

/* Acquires the longest cached prefix of seq_hashes[0, n): for each leading
 * hash that is registered, takes a reference on its block and writes the id
 * to out_blocks. Returns the number of blocks acquired (0..n). The caller
 * owns one reference on each and releases it with kvpool_blocks_release(). */
size_t kvpool_prefix_acquire(kvpool_t *p, const uint64_t *seq_hashes, size_t n,
                             uint32_t *out_blocks);

/* Allocates n blocks (ref 1, unhashed) into out[0, n), all or nothing:
 * never-used or unhashed free blocks first, then cached blocks in LRU order
 * (the evicted hashes go out in one REMOVED event). Returns 0, or
 * SL_EAGAIN when fewer than n blocks are available, or SL_ENOMEM (nothing
 * changes either way). */
int kvpool_blocks_alloc(kvpool_t *p, size_t n, uint32_t *out);

/* Drops one reference on each of blocks[0, n), in that order. A block whose
 * count reaches zero becomes cached (most recently used at the end of the
 * LRU) if hashed, else free. Release a sequence's blocks last-first so its
 * tail is evicted before its head. Returns 0, or SL_EINVAL if a block id is
 * out of range or not referenced (the remaining blocks are still released). */
int kvpool_blocks_release(kvpool_t *p, const uint32_t *blocks, size_t n);

/* Registers full, computed blocks[i] (held by the caller) under seq_hashes[i]
 * with block_hashes[i]. first_index is the position of blocks[0] in its
 * sequence: 0 means blocks[0] is the first block (no parent; parent_hash is
 * ignored), else parent_hash is the sequence hash of block first_index - 1.
 * A block already registered, or whose hash another block already holds, is
 * skipped (it stays as it is). Emits STORED events for the newly registered
 * runs. Returns the number registered, or SL_EINVAL on a bad block id or an
 * unreferenced block (nothing registered). */
int kvpool_blocks_commit(kvpool_t *p, uint32_t first_index, uint64_t parent_hash,
                         const uint32_t *blocks, const uint64_t *block_hashes,
                         const uint64_t *seq_hashes, size_t n);

/* Drops every hash (used blocks keep their data and references but are no
 * longer shared), making cached blocks free. Emits one CLEARED event. */
void kvpool_clear(kvpool_t *p);

/* Snapshot of every registered block, parents before children (sorted by
 * depth), for a router resync. *out is malloc'd (caller frees with free(); NULL
 * when *n is 0); *last_event_id is the id of the last event the snapshot
 * includes. Returns 0 or SL_ENOMEM. */
int kvpool_dump(const kvpool_t *p, kvpool_cached_t **out, size_t *n, uint64_t *last_event_id);

void kvpool_stats_get(const kvpool_t *p, kvpool_stats_t *out);

/* Reference count of one block (0 for a bad id); for tests and debugging. */
uint32_t kvpool_block_refcount(const kvpool_t *p, uint32_t block);

#endif
