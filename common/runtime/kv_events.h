/* kv_events.h - reading and writing the stored-blocks part of KV events.
 *
 * proto/sluice.proto's KvStored carries its (block_hash, sequence_hash)
 * pairs in one of two forms: `blocks`, one sub-message per block (the first
 * form, still accepted), or the parallel packed arrays `block_hashes` and
 * `sequence_hashes`, which publishers send: protobuf-c unpacks them as one
 * copy each instead of an allocation and two varints per block, which is
 * what lets a router ingest tens of millions of block events per second.
 * Readers go through these accessors and never care which form arrived.
 *
 * All functions are pure and thread-safe on distinct or read-only messages.
 */
#ifndef SL_RUNTIME_KV_EVENTS_H
#define SL_RUNTIME_KV_EVENTS_H

#include "proto/sluice.pb-c.h"

#include <stddef.h>
#include <stdint.h>

/* NULL if s is well formed, else why not: both forms at once, packed arrays
 * of different lengths, or a NULL sub-message. */
const char *kv_stored_invalid(const Sluice__V1__KvStored *s);

/* Blocks in a well-formed s (0 for NULL). */
static inline size_t kv_stored_count(const Sluice__V1__KvStored *s) {
    if (!s) return 0;
    return s->n_blocks ? s->n_blocks : s->n_sequence_hashes;
}

/* The i-th block's sequence / block hash, i < kv_stored_count(s), s well formed. */
static inline uint64_t kv_stored_seq_hash(const Sluice__V1__KvStored *s, size_t i) {
    return s->n_blocks ? s->blocks[i]->sequence_hash : s->sequence_hashes[i];
}
static inline uint64_t kv_stored_block_hash(const Sluice__V1__KvStored *s, size_t i) {
    return s->n_blocks ? s->blocks[i]->block_hash : s->block_hashes[i];
}

/* The sequence hashes as one array when s is in packed form (no copy), else
 * NULL (read them one by one with kv_stored_seq_hash). */
static inline const uint64_t *kv_stored_seq_hashes(const Sluice__V1__KvStored *s) {
    return s && !s->n_blocks ? s->sequence_hashes : NULL;
}

/* Fills s (already initialised) in packed form with n pairs; the arrays are
 * borrowed, not copied, and must outlive packing. */
void kv_stored_set(Sluice__V1__KvStored *s, uint64_t *block_hashes, uint64_t *seq_hashes, size_t n);

#endif
