/* request.h - one GenerateRequest on a decode worker: validation, the engine
 * request it becomes, and the GenerateChunk stream it answers with.
 *
 * wreq_new() checks an unpacked GenerateRequest against the worker's limits
 * (untrusted input: ids, lengths, counts, sampling ranges, model name) and
 * copies what the engine needs: prompt = token_ids ++ prior_output_ids
 * (migration: the earlier worker's output is part of the prompt, counted as
 * output by the penalties; max_tokens is taken as given because the frontend
 * already reduced it). wreq_send() turns each engine output into one
 * GenerateChunk (seq = the stream writer's sequence number, text = complete
 * UTF-8 with invalid bytes replaced by U+FFFD, logprobs with each token's raw
 * bytes) and ends the stream with the final one (finish_reason, usage
 * counts; prompt_tokens and cached_tokens count the request's own token_ids,
 * not the migrated prior output; errors as Error{code, message,
 * http_status}).
 *
 * Service-internal: worker.c reads the fields of wreq_t directly.
 * Ownership: a wreq_t owns its copies and its stream writer; wreq_free()
 * frees both (NULL is a no-op).
 * Thread-safety: a wreq_t is used by one thread at a time (created on a bus
 * thread, then handed to the engine thread).
 */
#ifndef SL_DECODE_WORKER_REQUEST_H
#define SL_DECODE_WORKER_REQUEST_H

#include "common/engine/engine.h"
#include "common/engine/tokenizer.h"
#include "common/runtime/bus.h"
#include "proto/sluice.pb-c.h"

#include <stdbool.h>
#include <stdint.h>

#define WREQ_MAX_ID_LEN    255
#define WREQ_MAX_STOP      32  /* stop strings per request */
#define WREQ_MAX_STOP_LEN  512 /* bytes of one stop string */
#define WREQ_MAX_STOP_IDS  256
#define WREQ_MAX_MODEL_LEN 256

typedef struct wreq_limits {
    const char *model;    /* served model name; a request naming another is 404 */
    uint32_t vocab_size;  /* token ids must be below */
    uint32_t max_context; /* prompt + prior output must be below */
} wreq_limits_t;

typedef struct wreq {
    char *id;
    uint32_t *tokens; /* (n_tokens) token_ids ++ prior_output_ids */
    uint32_t n_tokens, n_prior;
    char **stop; /* (n_stop) non-empty stop strings */
    uint32_t n_stop;
    uint32_t *stop_ids; /* (n_stop_ids) */
    uint32_t n_stop_ids;
    sampling_params_t sampling;
    uint32_t max_tokens, min_tokens;
    bool ignore_eos;
    uint64_t deadline_unix_ms; /* 0 = none */
    uint64_t prefill_hint;     /* the router's prefill worker, 0 = none (disagg.h) */
    bus_stream_writer_t *w;
    int64_t t_arrival_ns;     /* monotonic, set by the caller */
    int64_t t_first_ns;       /* first token, 0 until then */
    uint32_t completion;      /* tokens sent */
    bool ended;               /* the final chunk went out (or the stream is dead) */
    bool send_failed;         /* a send failed: the requester is gone */
    void *owner;              /* the worker, for the engine callback */
    struct wreq *prev, *next; /* the worker's list of live requests */
} wreq_t;

/* Suggested HTTP status for an SL_E* code (400 bad input, 404, 409, 503,
 * 504, else 500). */
uint32_t wreq_http_status(int code);

/* Validates m and builds a request owning w (on success only). On failure
 * returns a negative SL_E* code, writes a one-line reason into why (len
 * bytes) and *out stays NULL; the caller still owns w. */
int wreq_new(const Sluice__V1__GenerateRequest *m, const wreq_limits_t *lim, bus_stream_writer_t *w,
             wreq_t **out, char *why, size_t why_len);

void wreq_free(wreq_t *r);

/* SamplingParams (untrusted; NULL = defaults) -> engine parameters. Returns
 * 0, SL_ERANGE (top_logprobs over SAMPLING_MAX_TOP_LOGPROBS) or SL_EINVAL
 * (non-finite or out-of-range values). Shared with the prefill worker. */
int wreq_sampling_from_proto(const Sluice__V1__SamplingParams *s, sampling_params_t *out);

/* Engine parameters -> SamplingParams (for a PrefillJob); out is
 * initialised here and points at nothing. */
void wreq_sampling_to_proto(const sampling_params_t *sp, Sluice__V1__SamplingParams *out);

/* Fills *out to submit r (pointers into r; on_output / ud left to the
 * caller). */
void wreq_engine_request(const wreq_t *r, engine_request_t *out);

/* Sends o as the next chunk (the last one when o->finish != NONE). t may be
 * NULL (no logprob texts). Returns 0 or the bus error (SL_ECLOSED: the
 * connection dropped, cancel the request). */
int wreq_send(wreq_t *r, const engine_output_t *o, const sl_tokenizer_t *t, uint64_t worker_id);

/* Ends writer w with one final chunk: finish ERROR, Error{code, why,
 * http_status}. request_id may be NULL. Does not free w. */
int wreq_send_error(bus_stream_writer_t *w, const char *request_id, uint64_t worker_id, int code,
                    uint32_t http_status, const char *why);

#endif
