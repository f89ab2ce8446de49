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
 * Text: with a tokenizer in the options, each output carries the new text
 * of the request, produced by an incremental detokenizer (detok.h) that is
 * primed with the whole prompt. "Text" is then defined exactly as
 *     text(output) = decode(prompt + generated) minus the part of it that
 *                    was already final after the prompt,
 * with decode = sl_tokenizer_decode (HF's decode; special tokens skipped
 * unless the request sets keep_special). This is what vLLM streams,
 * decode(prompt + generated)[len(decode(prompt)):], whenever decode(prompt)
 * is a prefix of decode(prompt + generated), i.e. always except when the
 * prompt ends inside a UTF-8 character or a byte-fallback run, where we give
 * the whole character instead of vLLM's U+FFFD split. Concretely: a Llama-2
 * first generated "\u2581Hello" gives " Hello" (not "Hello" as decode of
 * the output alone would), and an invalid byte-fallback run gives HF's
 * number of U+FFFD. The whole prompt is primed (not a tail) because the
 * decoder state can depend on tokens far back (a long byte run, whether
 * any text came yet); priming costs about as much as decoding the prompt
 * once, far below its prefill.
 * Without a tokenizer, a token_bytes callback gives the fallback: the text is
 * the joined raw bytes of each token (what the mocker uses). With neither,
 * outputs carry no text.
 * Either way, bytes that could begin a stop string, or an incomplete UTF-8
 * sequence, are held back until resolved; stop strings are matched on the
 * text, across token boundaries; a matched stop string and what follows it
 * are never returned; the token that stopped generation by id (EOS / stop
 * token) adds no text; the final output flushes what the detokenizer held
 * back (an unfinished character becomes U+FFFD, as in full decode). Stop
 * strings need text (engine_add fails with SL_EINVAL otherwise).
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
#include "common/engine/tokenizer.h"
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
    /* Text through the incremental detokenizer (see Text above); takes
     * precedence over token_bytes. Borrowed: must outlive the engine (a
     * tokenizer is thread-safe, so several engines may share one). */
    const sl_tokenizer_t *tokenizer;
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
    /* ENGINE_MODE_PREFILL, final output: the prompt's blocks (ceil(n_prompt /
     * block_size)), KV [0, n_prompt) computed, pinned until engine_release().
     * ENGINE_MODE_ADOPT, the one output with reserved set: the blocks reserved
     * for the prompt; the first cached_tokens / block_size of them hold the
     * prefix-cache hit, the rest are to be filled (engine_adopt_done). */
    const uint32_t *blocks; /* (n_blocks) */
    uint32_t n_blocks;
    bool reserved;
    const uint32_t *tokens; /* (n_tokens) new tokens in this output */
    uint32_t n_tokens;
    const sampling_result_t *logprobs; /* (n_tokens) when logprobs were asked, else NULL */
    const char *text; /* (text_len) new text bytes; NULL without tokenizer / token_bytes */
    size_t text_len;
    engine_finish_t finish; /* NONE while the stream continues */
    int error;              /* SL_E* code when finish is ERROR */
    const char *stop_str;   /* matched stop string, or NULL */
    uint32_t prompt_tokens, cached_tokens, completion_tokens;
} engine_output_t;

/* Everything in *out is valid only during the call. */
typedef void (*engine_output_fn)(const engine_output_t *out, void *ud);

/* What a request asks of the engine (disaggregated serving). */
typedef enum engine_mode {
    /* Prefill, then decode until a stop condition. */
    ENGINE_MODE_GENERATE = 0,
    /* Prefill-only (prefill worker): compute the prompt's KV (reusing the
     * prefix cache), sample the first token, and deliver one final output
     * (finish LENGTH) with that token, its logprobs if asked, and the
     * prompt's block ids in blocks / n_blocks. The blocks stay pinned (never
     * evicted, never reused) until engine_release(id); the id is then no
     * longer active (a new request may reuse it). No text, no stop strings. */
    ENGINE_MODE_PREFILL = 1,
    /* Adoption (decode worker): at the start of the next step the engine
     * reserves blocks for the whole prompt after its own prefix-cache hit,
     * if the uncached part is longer than adopt_min_tokens and the pool
     * has room; else the request simply runs as GENERATE (no reservation
     * output). When reserved, one output with reserved = true, no tokens,
     * blocks / n_blocks and cached_tokens tells the caller which blocks a
     * remote writer must fill. Then engine_adopt_done() starts decoding from a
     * given first token with KV [0, n_prompt) present (full blocks are
     * registered and published as STORED, like computed ones), or
     * engine_adopt_fail() releases the reservation and prefills locally.
     * A request that ends while reserved (cancel, deadline) gets its final
     * output at once, but its blocks stay parked ("orphaned": a remote
     * writer may still be filling them) until engine_adopt_done() or
     * engine_adopt_fail() names its id, which then only frees them. */
    ENGINE_MODE_ADOPT = 2
} engine_mode_t;

typedef struct engine_request {
    const char *id; /* unique among active requests, <= 255 bytes */
    engine_mode_t mode;
    uint32_t adopt_min_tokens; /* ADOPT: reserve only if more prompt tokens than this are
                                  uncached */
    const uint32_t *prompt;    /* (n_prompt) ids < vocab_size */
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
    /* With opts.tokenizer: keep special tokens' text (HF / vLLM
     * skip_special_tokens = false). Default false: skipped. */
    bool keep_special;
} engine_request_t;

typedef struct engine_stats {
    uint32_t active, running, waiting;
    uint32_t adopting; /* ADOPT requests holding a reservation */
    uint32_t held;     /* PREFILL results pinned until engine_release() */
    uint32_t orphans;  /* ended ADOPT requests whose blocks wait for adopt done / fail */
    uint64_t pending_prefill_tokens; /* for LoadMetrics */
    uint64_t steps, preemptions;
    uint64_t prompt_tokens_computed, generated_tokens;
    uint64_t prompt_tokens_adopted; /* KV written by a prefill worker (ADOPT) */
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
 * strings without tokenizer / token_bytes), SL_EEXIST (id active), SL_ERANGE (prompt too
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

/* Engine thread only (not from a callback). ADOPT request id, reserved and
 * not yet resumed: its remote KV of [0, n_prompt) is in place; first is the
 * first output token (logprob and top alternatives as the sampler of the
 * other side gave them; n_top may be 0). The token goes through the usual
 * stop checks and text, and the output callback runs before this returns.
 * For an orphaned reservation (the request ended meanwhile) this only frees
 * its blocks. Returns 0, SL_ENOTFOUND (no such reservation: e.g. already
 * failed over),
 * SL_EINVAL (token out of vocabulary: the reservation is released and the
 * request prefills locally instead). */
int engine_adopt_done(engine_t *e, const char *id, const sampling_result_t *first);

/* Engine thread only (not from a callback). Releases the reservation of
 * ADOPT request id and queues it to prefill locally (front of the queue);
 * for an orphaned reservation, only frees its blocks. Returns 0 or
 * SL_ENOTFOUND. */
int engine_adopt_fail(engine_t *e, const char *id);

/* Engine thread only. Unpins the blocks of the held PREFILL result id (they
 * stay in the prefix cache). Returns 0 or SL_ENOTFOUND. */
int engine_release(engine_t *e, const char *id);

/* Thread-safe forms of the three above, applied in order with submissions
 * at the start of the next engine_step() (an id that no longer matches is
 * ignored). Return 0, SL_EINVAL or SL_ENOMEM. */
int engine_submit_adopt_done(engine_t *e, const char *id, const sampling_result_t *first);
int engine_submit_adopt_fail(engine_t *e, const char *id);
int engine_submit_release(engine_t *e, const char *id);

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

/* Active requests (waiting, running, or ADOPT with a reservation; not held
 * PREFILL results). engine_wait() sleeps while all of them wait for a remote
 * prefill. */
uint32_t engine_active(const engine_t *e);

/* The pool, for stats and dumps (owned by the engine). */
kvpool_t *engine_pool(engine_t *e);

void engine_stats_get(const engine_t *e, engine_stats_t *out);

#endif
