/* kv_index.h - the router's global prefix index over every worker's KV blocks.
 *
 * Keyed by chained sequence hash (common/base/block_hash.h): because a
 * sequence hash already encodes its whole prefix, the index is one flat
 * open-addressing table seq_hash -> {device, host, disk} worker bitsets, plus
 * one small reverse set per worker (seq_hash -> tier mask) so that a worker's
 * blocks can be cleared or purged without scanning the table. No per-block
 * allocation: tables grow by doubling, deletions shift back (no tombstones).
 * The bitsets are W = ceil(slots / 64) words wide; a fleet that outgrows them
 * widens every entry once (rehash).
 *
 * Workers are added explicitly (the router adds them when discovery reports
 * them). A worker marked shared (the kv-manager) is never a routing target;
 * its host and disk blocks count for every worker at the host/disk weight.
 *
 * Overlap of a request (kv_index_lookup): walk the request's sequence hashes
 * in order; for each worker, block i counts in the best tier it is present in
 * for that worker (device > host > disk, a shared holder supplying host/disk);
 * a worker's walk stops at the first block it has in no tier, and the whole
 * walk stops when no worker is left. So device + host + disk is the length of
 * the worker's usable prefix and each block counts once.
 *
 * Ownership: kv_index_new() allocates; kv_index_free() frees everything.
 * Thread-safety: none. The caller serializes every call on one index
 * (the router holds one lock around it); lookups use scratch space inside the
 * index.
 * Errors: 0 or negative SL_E* codes (common/base/err.h).
 */
#ifndef SL_KV_INDEX_H
#define SL_KV_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_INDEX_TIERS       3
#define KV_INDEX_TIER_DEVICE 0
#define KV_INDEX_TIER_HOST   1
#define KV_INDEX_TIER_DISK   2
/* Most workers one index tracks at once (slots are reused after a purge). */
#define KV_INDEX_MAX_WORKERS 4096

typedef struct kv_index kv_index_t;

/* Per-worker overlap of one request, in blocks (see the file comment). */
typedef struct kv_overlap {
    uint64_t worker_id;
    uint32_t device;
    uint32_t host;
    uint32_t disk;
} kv_overlap_t;

/* Creates an empty index sized for about expected_blocks distinct hashes (0:
 * a small default; it grows anyway). Returns 0 and *out, or SL_EINVAL (out
 * NULL) / SL_ENOMEM. */
int kv_index_new(kv_index_t **out, size_t expected_blocks);

/* Frees the index. NULL is a no-op. */
void kv_index_free(kv_index_t *idx);

/* Adds a worker. shared: a holder whose host/disk blocks count for everyone
 * (kv-manager), never returned by lookups. Returns 0, SL_EEXIST (already
 * known: its flag is left as it was), SL_ETOOBIG (KV_INDEX_MAX_WORKERS
 * reached) or SL_ENOMEM. */
int kv_index_worker_add(kv_index_t *idx, uint64_t worker_id, bool shared);

/* Purges a worker: every block it held in every tier, and its slot. Returns
 * 0 or SL_ENOTFOUND. */
int kv_index_worker_remove(kv_index_t *idx, uint64_t worker_id);

bool kv_index_worker_known(const kv_index_t *idx, uint64_t worker_id);

/* Blocks the worker holds in tier (0 if unknown). */
size_t kv_index_worker_blocks(const kv_index_t *idx, uint64_t worker_id, int tier);

/* Records that worker holds the n blocks seq_hashes[0..n) in tier. Storing a
 * block again is harmless. Returns 0; SL_ENOTFOUND (unknown worker: nothing
 * stored); SL_EINVAL (bad tier, or seq_hashes NULL with n > 0); SL_ENOMEM
 * (the blocks before the failing one are stored). */
int kv_index_store(kv_index_t *idx, uint64_t worker_id, int tier, const uint64_t *seq_hashes,
                   size_t n);

/* Records that worker no longer holds these blocks in tier. Unknown hashes
 * are ignored. Returns 0, SL_ENOTFOUND (unknown worker) or SL_EINVAL. */
int kv_index_remove(kv_index_t *idx, uint64_t worker_id, int tier, const uint64_t *seq_hashes,
                    size_t n);

/* Forgets every block the worker holds in tier (no allocation). Returns 0,
 * SL_ENOTFOUND or SL_EINVAL. */
int kv_index_clear(kv_index_t *idx, uint64_t worker_id, int tier);

/* Distinct sequence hashes held by anyone. */
size_t kv_index_size(const kv_index_t *idx);

/* Overlap of a request whose full blocks have the sequence hashes
 * seq_hashes[0..n): writes one kv_overlap_t per non-shared worker with a
 * non-empty prefix into out (at most max of them, in slot order) and their
 * number into *n_out. Workers with no overlap are not listed. Returns 0,
 * SL_EINVAL (NULL arguments with n or max > 0) or SL_ETOOBIG (more workers
 * overlap than max: out holds the first max). */
int kv_index_lookup(kv_index_t *idx, const uint64_t *seq_hashes, size_t n, kv_overlap_t *out,
                    size_t max, size_t *n_out);

#endif
