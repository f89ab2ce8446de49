/* engine_fake.h - a deterministic sl_forward_t for engine and scheduler tests.
 *
 * KV memory holds, per token slot, the token id and its position + 1
 * (block layout [block][slot][2] as u32). A step writes the new tokens into
 * the slots their block table names, then computes the logits of a sequence
 * from its whole history *read back from its blocks*: a wrong block table, a
 * block shared wrongly, or lost KV changes the logits, and so the tokens.
 * fake_ref_logits() computes the same logits from a plain token array, which
 * is the reference generation every engine test compares against.
 */
#ifndef SL_TEST_ENGINE_FAKE_H
#define SL_TEST_ENGINE_FAKE_H

#include "common/base/err.h"
#include "common/engine/forward.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct fake_fwd {
    sl_forward_t f;
    uint32_t *kv;                 /* (n_blocks, block_size, 2) token, pos + 1 */
    uint32_t steps, fail_at_step; /* fail_at_step: 1-based; 0 = never */
    uint64_t tokens_computed;
    uint32_t max_seqs_seen;
    int bad; /* set when a batch broke the contract */
} fake_fwd_t;

static inline uint64_t fake_mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 29;
    return h;
}

/* Logits of the next token after history[0, n): a pseudo-random row with a
 * wide spread so that sampling tests see distinct probabilities. */
static inline void fake_logits_from_hash(uint64_t h, uint32_t vocab, float *out) {
    for (uint32_t v = 0; v < vocab; v++) {
        uint64_t x = fake_mix(h, v + 1);
        out[v] = (float)(x % 10007) / 1000.0f; /* 0 .. 10 */
    }
}

static inline void fake_ref_logits(const uint32_t *hist, uint32_t n, uint32_t vocab, float *out) {
    uint64_t h = 1469598103934665603ULL;
    for (uint32_t p = 0; p < n; p++) h = fake_mix(h, ((uint64_t)p << 32) | hist[p]);
    fake_logits_from_hash(h, vocab, out);
}

static inline int fake_step(void *impl, const sl_fwd_batch_t *b) {
    fake_fwd_t *ff = impl;
    uint32_t bs = ff->f.block_size, vocab = ff->f.vocab_size, row = 0;
    ff->steps++;
    if (ff->fail_at_step && ff->steps == ff->fail_at_step) return SL_EDEVICE;
    if (b->n_seqs > ff->max_seqs_seen) ff->max_seqs_seen = b->n_seqs;
    for (uint32_t i = 0; i < b->n_seqs; i++) {
        const sl_fwd_seq_t *s = &b->seqs[i];
        uint32_t end = s->pos + s->n_tokens;
        if (s->n_tokens == 0 || s->n_blocks != (end + bs - 1) / bs) {
            ff->bad = 1;
            return SL_EINVAL;
        }
        for (uint32_t j = 0; j < s->n_blocks; j++)
            if (s->blocks[j] >= ff->f.n_blocks) {
                ff->bad = 1;
                return SL_EINVAL;
            }
        for (uint32_t j = 0; j < s->n_tokens; j++) {
            uint32_t p = s->pos + j;
            uint32_t *slot = ff->kv + ((size_t)s->blocks[p / bs] * bs + p % bs) * 2;
            slot[0] = s->tokens[j];
            slot[1] = p + 1;
        }
        ff->tokens_computed += s->n_tokens;
        if (!s->want_logits) continue;
        uint64_t h = 1469598103934665603ULL;
        for (uint32_t p = 0; p < end; p++) {
            const uint32_t *slot = ff->kv + ((size_t)s->blocks[p / bs] * bs + p % bs) * 2;
            uint32_t tok = slot[1] == p + 1 ? slot[0] : 0xdeadu; /* stale KV poisons */
            h = fake_mix(h, ((uint64_t)p << 32) | tok);
        }
        fake_logits_from_hash(h, vocab, b->logits + (size_t)row++ * vocab);
    }
    return 0;
}

static inline int fake_init(fake_fwd_t *ff, uint32_t vocab, uint32_t block_size,
                            uint32_t n_blocks) {
    memset(ff, 0, sizeof *ff);
    ff->kv = calloc((size_t)n_blocks * block_size * 2, sizeof *ff->kv);
    if (!ff->kv) return SL_ENOMEM;
    ff->f = (sl_forward_t){.impl = ff,
                           .vocab_size = vocab,
                           .block_size = block_size,
                           .n_blocks = n_blocks,
                           .block_bytes = (size_t)block_size * 2 * sizeof(uint32_t),
                           .kv_base = ff->kv,
                           .step = fake_step};
    return 0;
}

static inline void fake_destroy(fake_fwd_t *ff) {
    free(ff->kv);
    ff->kv = NULL;
}

#endif
