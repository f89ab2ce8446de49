/* forward.h - the contract between the scheduler and what computes a step.
 *
 * The scheduler (scheduler.h) decides which sequences run in a step and which
 * physical KV blocks they own; an implementation of sl_forward_t computes the
 * step: it appends the KV of the new tokens into those blocks and returns the
 * logits the scheduler asked for. The real model (model.h) and the mocker
 * (simulated timing, no weights) both implement it, so the scheduler, block
 * pool and KV events are the same code in both.
 *
 * KV memory is owned by the implementation. Its layout is fixed so that
 * blocks can be moved as one contiguous range (UCX transfer, offload):
 *   block b at  base + b * block_bytes
 *   inside a block: [layer][k|v][kv_head][token (block_size)][head_dim]
 */
#ifndef SL_ENGINE_FORWARD_H
#define SL_ENGINE_FORWARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sl_fwd_seq {
    const uint32_t *tokens; /* (n_tokens) tokens whose KV is computed this step */
    uint32_t n_tokens;
    uint32_t pos;           /* position of tokens[0]; KV of [0, pos) is already in blocks */
    const uint32_t *blocks; /* (ceil((pos + n_tokens) / block_size)) physical block ids */
    uint32_t n_blocks;
    bool want_logits; /* logits for the last token of this chunk */
} sl_fwd_seq_t;

typedef struct sl_fwd_batch {
    const sl_fwd_seq_t *seqs; /* (n_seqs) */
    uint32_t n_seqs;
    /* (n_logits, vocab_size): row i belongs to the i-th sequence with
     * want_logits set, in batch order. Allocated by the caller. */
    float *logits;
} sl_fwd_batch_t;

typedef struct sl_forward {
    void *impl;
    uint32_t vocab_size;
    uint32_t block_size; /* tokens per KV block */
    uint32_t n_blocks;   /* physical KV blocks available */
    size_t block_bytes;  /* bytes of one block in KV memory */
    void *kv_base;       /* start of KV memory (host memory), or NULL if none (mocker) */
    /* Runs one step. Returns 0 or a negative SL_E* code; on failure the KV of
     * the step's tokens is unspecified and the caller fails those sequences. */
    int (*step)(void *impl, const sl_fwd_batch_t *batch);
    /* Optional (NULL: the caller loops itself). Runs fn over [0, n) in
     * ranges spread over the implementation's compute threads (worker <
     * n_workers; the calling thread is worker 0) and returns when all are
     * done. The engine samples a step's logits rows through it, between
     * steps and from the thread that calls step(); fn must not call back
     * into the implementation. */
    void (*parallel_for)(void *impl, uint32_t n,
                         void (*fn)(void *arg, uint32_t begin, uint32_t end, uint32_t worker),
                         void *arg);
    uint32_t n_workers; /* workers parallel_for uses (>= 1 when it is set) */
} sl_forward_t;

#endif
