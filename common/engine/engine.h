/* engine.h - the generation loop: scheduler + forward pass + sampling.
 *
 * An engine owns a KV block pool (kvpool.h) and a scheduler (scheduler.h)
 * over the blocks of one sl_forward_t (forward.h), and turns requests into
 * streams of outputs. Each engine_step() plans one batch, runs the forward
 * pass, samples one token for every sequence whose prompt is complete,
 * checks stop conditions, and calls each affected request's callback once.
 *
 * Stop conditions, checked after each sampled token in this order (vLLM
 * semantics): EOS (unless ignore_eos) or a stop token id -> STOP; a stop
 * string in the generated text -> STOP; max_tokens or the context length ->
 * LENGTH. While fewer than min_tokens are generated, EOS and stop token ids
 * are masked out of sampling and stop strings are not checked.
 *
 * Text: when the engine has a token_bytes callback, each output carries the
 * new text bytes (the bytes of the new tokens). Bytes that could begin a stop
 * string, or an incomplete UTF-8 sequence, are held back until resolved; a
 * matched stop string and what follows it are never returned, and the token
 * that stopped generation by id (EOS / stop token) adds no text. Stop strings
 * need the callback (engine_add fails with SL_EINVAL otherwise).
 *
 * Threads: an engine and everything it returns are owned by one thread (the
 * engine thread); only engine_submit(), engine_submit_cancel() and
 * engine_wake() are thread-safe. A server's other threads hand requests over
 * with engine_submit*(); the engine thread loops
 *     while (running) { engine_wait(e, 100); engine_step(e); }
 * and each step first applies what was submitted, in order. Callbacks run on
 * the engine thread inside engine_step() / engine_cancel(); they may call
 * engine_add() and engine_cancel() (a cancel issued inside a callback takes
 * effect before engine_step() returns) but not engine_step() or
 * engine_free().
 */
#ifndef SL_ENGINE_ENGINE_H
#define SL_ENGINE_ENGINE_H

#include "common/engine/forward.h"
#include "common/engine/kvpool.h"
#include "common/engine/sampling.h"
#include "common/engine/scheduler.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct engine engine_t;

/* Same values as sluice.v1.FinishReason. */
typedef enum engine_finish {
    ENGINE_FINISH_NONE = 0,
    ENGINE_FINISH_STOP = 1,
    ENGINE_FINISH_LENGTH = 2,
    ENGINE_FINISH_CANCELLED = 3,
    ENGINE_FINISH_ERROR = 4
} engine_finish_t;

/* Bytes of one token as it appears in decoded text (may be partial UTF-8, may
 * be empty for special tokens). *bytes must stay valid until the next call.
 * Returns 0 or a negative SL_E* code (the token then adds no text). */
typedef int (*engine_token_bytes_fn)(void *ud, uint32_t token, const char **bytes, size_t *len);

typedef struct engine_opts {
    uint32_t max_batch_tokens; /* per step; 0 = 512 */
    uint32_t max_seqs;         /* running at once; 0 = 256 */
    uint32_t watermark_blocks; /* kept free at admission; 0 = 1% of blocks */
    uint32_t max_context;      /* tokens per sequence (set the model's context length,
                                  which sl_forward_t does not carry); 0 = what the pool
                                  holds */
    const char *salt_name;     /* model / LoRA name mixed into block hashes; NULL = base */
    const uint32_t *eos_ids;   /* (n_eos) copied */
    uint32_t n_eos;
    engine_token_bytes_fn token_bytes;
    void *token_bytes_ud;
    kvpool_event_fn kv_event; /* KV events of the pool (kvpool.h) */
    void *kv_event_ud;
    uint64_t seed; /* seeds requests that have no seed of their own */
} engine_opts_t;

typedef struct engine_stop {
    uint32_t max_tokens; /* 0 = up to the context length */
    uint32_t min_tokens;
    bool ignore_eos;
    const uint32_t *stop_token_ids; /* (n_stop_token_ids) */
    uint32_t n_stop_token_ids;
    const char *const *stop; /* (n_stop) stop strings, non-empty */
    uint32_t n_stop;
} engine_stop_t;

typedef struct engine_output {
    const char *id;
    const uint32_t *tokens; /* (n_tokens) new tokens in this output */
    uint32_t n_tokens;
    const sampling_result_t *logprobs; /* (n_tokens) when logprobs were asked, else NULL */
    const char *text;                  /* (text_len) new text bytes; NULL without token_bytes */
    size_t text_len;
    engine_finish_t finish; /* NONE while the stream continues */
    int error;              /* SL_E* code when finish is ERROR */
    const char *stop_str;   /* matched stop string, or NULL */
    uint32_t prompt_tokens, cached_tokens, completion_tokens;
} engine_output_t;

/* Everything in *out is valid only during the call. */
typedef void (*engine_output_fn)(const engine_output_t *out, void *ud);

typedef struct engine_request {
    const char *id;         /* unique among active requests, <= 255 bytes */
    const uint32_t *prompt; /* (n_prompt) ids < vocab_size */
    uint32_t n_prompt;
    /* Migration: the last n_prior_output prompt ids were generated by an
     * earlier worker. Penalties count them as output, so the continuation
     * equals an unbroken run (stop.max_tokens / min_tokens must already be
     * reduced by the caller). Must be < n_prompt. */
    uint32_t n_prior_output;
    sampling_params_t sampling;
    engine_stop_t stop;
    engine_output_fn on_output;
    void *ud;
} engine_request_t;

typedef struct engine_stats {
    uint32_t active, running, waiting;
    uint64_t pending_prefill_tokens; /* for LoadMetrics */
    uint64_t steps, preemptions;
    uint64_t prompt_tokens_computed, generated_tokens;
    kvpool_stats_t kv;
} engine_stats_t;

/* Creates an engine over fwd (borrowed, must outlive the engine; its
 * block_size, n_blocks and vocab_size must be > 0). opts may be NULL. NULL on
 * failure. */
engine_t *engine_new(const sl_forward_t *fwd, const engine_opts_t *opts);

/* Frees the engine and any requests still active, without calling their
 * callbacks. NULL is a no-op. */
void engine_free(engine_t *e);

/* Queues a request; everything in *req is copied. Returns 0, or SL_EINVAL
 * (bad id, empty prompt, token id out of range, bad sampling params, stop
 * strings without token_bytes), SL_EEXIST (id active), SL_ERANGE (prompt too
 * long for the context), SL_ENOMEM. On failure the callback never fires. */
int engine_add(engine_t *e, const engine_request_t *req);

/* Cancels an active request: frees its blocks now and delivers its final
 * output (finish CANCELLED) before returning (or, inside a callback, before
 * the current engine_step() returns). Returns 0 or SL_ENOTFOUND. */
int engine_cancel(engine_t *e, const char *id);

/* Thread-safe. Queues a request (deep-copied) for the engine thread, which
 * applies it at the start of its next engine_step(). Checks that need engine
 * state (duplicate id, context length, token ids) happen there: a refused
 * request gets one final output with finish ERROR and the SL_E* code in
 * error. Returns 0, or SL_EINVAL (missing id / prompt / callback-visible
 * fields) or SL_ENOMEM, and then the callback never fires. */
int engine_submit(engine_t *e, const engine_request_t *req);

/* Thread-safe. Queues a cancel of id, applied in order with submissions (an
 * id not active by then is ignored). Returns 0, SL_EINVAL or SL_ENOMEM. */
int engine_submit_cancel(engine_t *e, const char *id);

/* Engine thread only. Returns at once (1) when requests are active or
 * submissions are queued; else sleeps until engine_submit*() or engine_wake()
 * (1) or timeout_ms passes (0). */
int engine_wait(engine_t *e, int timeout_ms);

/* Thread-safe. Wakes engine_wait() (e.g. to shut the loop down). */
void engine_wake(engine_t *e);

/* Runs one step. Returns the number of requests still active (>= 0), or a
 * negative SL_E* code: SL_ENOMEM, or SL_EAGAIN when requests wait but none
 * can be scheduled (cannot happen with a consistent pool). A failing forward
 * pass is not an engine error: the step's requests finish with ERROR. */
int engine_step(engine_t *e);

/* Active requests (waiting or running). */
uint32_t engine_active(const engine_t *e);

/* The pool, for stats and dumps (owned by the engine). */
kvpool_t *engine_pool(engine_t *e);

void engine_stats_get(const engine_t *e, engine_stats_t *out);

#endif
