/* scheduler.h - continuous batching over a paged KV pool.
 *
 * The scheduler owns the sequences (token history, block table, progress)
 * and decides, step by step, which tokens of which sequences are computed.
 * Per step:
 *   1. running sequences that decode (one token to compute) are scheduled
 *      first, oldest first; then running sequences still in prefill get a
 *      chunk of what is left of the per-step token budget (chunked prefill);
 *   2. when a running sequence needs a block and the pool has none, the
 *      youngest running sequence is preempted by recompute: its blocks are
 *      released (they stay in the prefix cache until evicted), it goes back
 *      to the front of the waiting queue, and its prompt + generated tokens
 *      become the prompt it is recomputed from;
 *   3. if nothing was preempted, waiting sequences are admitted in FIFO order
 *      while the budget, max_seqs and free blocks allow; admission reuses the
 *      longest cached prefix (never the whole prompt: the last token is always
 *      computed, so hits stop at block floor((n - 1) / block_size)) and keeps
 *      watermark_blocks blocks available when other sequences run.
 * After the forward pass, sched_step_done() advances each sequence and
 * registers its newly full blocks in the pool under their sequence hashes.
 *
 * A sequence's tokens = prompt + generated; KV of tokens[0, n_computed) is in
 * its blocks. The caller (engine) samples from the logits of sequences with
 * want_logits, appends the token with sched_seq_append(), and ends sequences
 * with sched_seq_finish().
 *
 * Thread-safety: none; one owner thread. Between sched_step_plan() and
 * sched_step_done() the only allowed calls are the sched_seq_* accessors.
 */
#ifndef SL_ENGINE_SCHEDULER_H
#define SL_ENGINE_SCHEDULER_H

#include "common/engine/forward.h"
#include "common/engine/kvpool.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct sched sched_t;
typedef struct sched_seq sched_seq_t;

typedef struct sched_opts {
    uint32_t max_batch_tokens; /* token budget per step (0 = 512) */
    uint32_t max_seqs;         /* running sequences at most (0 = 256) */
    uint32_t watermark_blocks; /* blocks kept available at admission */
    uint32_t max_context;      /* prompt + output tokens at most; 0 or more than
                                  the pool holds = n_blocks * block_size */
    uint64_t salt;             /* block_hash_salt() of the model / LoRA */
} sched_opts_t;

typedef struct sched_plan {
    sl_fwd_seq_t *fwd;  /* (n) what to compute, in batch order */
    sched_seq_t **seqs; /* (n) the sequence of each entry */
    uint32_t n;
    uint32_t n_logits; /* entries with want_logits */
    uint32_t n_tokens; /* tokens computed in this step */
    uint32_t n_preempted;
} sched_plan_t;

typedef struct sched_stats {
    uint32_t running, waiting;
    uint32_t parked;                 /* holding blocks outside the batch (see Parking) */
    uint64_t pending_prefill_tokens; /* tokens still to compute before each sequence's next
                                        sample (waiting ones counted in full) */
    uint64_t preemptions;
    uint64_t steps;
} sched_stats_t;

/* Creates a scheduler over pool (borrowed; must outlive the scheduler).
 * opts may be NULL for defaults. NULL on failure. */
sched_t *sched_new(kvpool_t *pool, const sched_opts_t *opts);

/* Releases every sequence's blocks and frees everything. NULL is a no-op. */
void sched_free(sched_t *s);

/* Effective max_context (tokens). */
uint32_t sched_max_context(const sched_t *s);

/* Queues a new sequence with prompt[0, n) (copied); ud is returned by
 * sched_seq_ud(). Returns 0 and *out, SL_EINVAL for an empty prompt,
 * SL_ERANGE when n >= max_context (no room for one output token), SL_ENOMEM. */
int sched_seq_add(sched_t *s, const uint32_t *prompt, uint32_t n, void *ud, sched_seq_t **out);

/* Appends a generated token. Returns 0, or SL_ERANGE when the sequence is at
 * max_context tokens already. */
int sched_seq_append(sched_t *s, sched_seq_t *q, uint32_t token);

/* Ends a sequence at any time outside plan..done: releases its blocks (tail
 * first) and frees it. NULL is a no-op. */
void sched_seq_finish(sched_t *s, sched_seq_t *q);

const uint32_t *sched_seq_tokens(const sched_seq_t *q, uint32_t *n);
uint32_t sched_seq_n_prompt(const sched_seq_t *q);
uint32_t sched_seq_n_computed(const sched_seq_t *q);
/* Prompt tokens served from the prefix cache at the first admission. */
uint32_t sched_seq_cached_tokens(const sched_seq_t *q);
uint32_t sched_seq_preemptions(const sched_seq_t *q);
bool sched_seq_running(const sched_seq_t *q);
bool sched_seq_parked(const sched_seq_t *q);
void *sched_seq_ud(const sched_seq_t *q);
/* Block table: (n) physical block ids. */
const uint32_t *sched_seq_blocks(const sched_seq_t *q, uint32_t *n);

/* Plans one step into *plan (arrays owned by the scheduler, valid until the
 * next call). plan->n == 0 means nothing can run now. Returns 0 or
 * SL_ENOMEM. */
int sched_step_plan(sched_t *s, sched_plan_t *plan);

/* Completes the planned step. ok: the forward pass succeeded, so progress is
 * recorded and newly full blocks are registered in the prefix cache; !ok:
 * nothing advances (the caller finishes the sequences it fails). Returns 0 or
 * a negative SL_E* code from the pool. */
int sched_step_done(sched_t *s, const sched_plan_t *plan, bool ok);

/* ---- Parking (disaggregated prefill) ----
 * A parked sequence holds its blocks but is neither running nor waiting: it
 * is never scheduled and never preempted. Two uses:
 *   - prefill-only (prefill worker): a running sequence whose prompt is
 *     computed is parked (sched_seq_park) so its blocks stay pinned while
 *     they are sent elsewhere; it ends with sched_seq_finish().
 *   - adoption (decode worker): a waiting sequence reserves blocks for its
 *     whole prompt after its own prefix-cache hit (sched_seq_reserve); a
 *     remote writer fills them; then sched_seq_resume() makes it run with
 *     that KV present, or sched_seq_unpark() releases the blocks and puts it
 *     back at the front of the waiting queue to prefill locally.
 * sched_seq_finish() of a parked sequence releases its blocks. All of these
 * are called outside plan..done. */

/* Prompt tokens of a waiting sequence that its prefix-cache hit would serve
 * now (no side effects; 0 for a running or parked one). */
uint32_t sched_seq_cached_prefix(sched_t *s, sched_seq_t *q);

/* Waiting -> parked, with the cached prefix acquired and blocks allocated for
 * the rest of its tokens (n_computed = the hit; cached_tokens set as at an
 * admission). Returns 0, SL_EAGAIN when the pool cannot give the blocks
 * (keeping watermark_blocks when others run; nothing changes), SL_EINVAL
 * (not waiting). */
int sched_seq_reserve(sched_t *s, sched_seq_t *q);

/* Running (not scheduled in a pending plan) -> parked. 0 or SL_EINVAL. */
int sched_seq_park(sched_t *s, sched_seq_t *q);

/* Parked -> running (the youngest) with the KV of tokens[0, n_computed)
 * present in its blocks; newly full blocks are registered in the prefix cache
 * (STORED events) as after a computed step. Returns 0, SL_EINVAL (not
 * parked, n_computed beyond its tokens or blocks, or below what it had), or a
 * pool error from registering (the sequence runs anyway). */
int sched_seq_resume(sched_t *s, sched_seq_t *q, uint32_t n_computed);

/* Parked -> front of the waiting queue with its blocks released (it will be
 * admitted again and computed locally). 0 or SL_EINVAL. */
int sched_seq_unpark(sched_t *s, sched_seq_t *q);

void sched_stats_get(const sched_t *s, sched_stats_t *out);

#endif
