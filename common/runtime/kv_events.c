/* kv_events.c - the two forms of KvStored (see kv_events.h). */
#include "common/runtime/kv_events.h"

const char *kv_stored_invalid(const Sluice__V1__KvStored *s) {
    if (!s) return "stored event without a body";
    if (s->n_blocks && (s->n_block_hashes || s->n_sequence_hashes))
        return "stored event with blocks in both forms";
    if (s->n_block_hashes != s->n_sequence_hashes)
        return "stored event with block_hashes and sequence_hashes of different lengths";
    for (size_t i = 0; i < s->n_blocks; i++)
        if (!s->blocks[i]) return "stored event with an empty block";
    return NULL;
}

void kv_stored_set(Sluice__V1__KvStored *s, uint64_t *block_hashes, uint64_t *seq_hashes,
                   size_t n) {
    s->n_blocks = 0;
    s->blocks = NULL;
    s->n_block_hashes = n;
    s->block_hashes = block_hashes;
    s->n_sequence_hashes = n;
    s->sequence_hashes = seq_hashes;
}
