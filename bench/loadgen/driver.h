/* driver.h - loadgen's event loop: sends the workload over HTTP and times it.
 *
 * One thread drives every request through one libcurl multi handle, so
 * thousands of concurrent streams cost one socket each and no threads.
 * Closed loop (`concurrency` > 0, `request_rate` 0): keeps that many requests
 * in flight. Open loop (`request_rate` > 0): Poisson arrivals at that mean
 * rate, from the seeded generator; with `concurrency` > 0 too, arrivals wait
 * while that many are in flight (the wait is not part of their latency). The
 * run ends after `num_requests` measured requests, or when `duration_s` has
 * passed (no new request starts after it; those in flight finish), or on
 * driver_stop(). `warmup` requests run first, to completion, unmeasured.
 *
 * Per successful request: TTFT = send to the first event carrying non-empty
 * content (delta.content / delta.reasoning_content for chat, text for
 * completions); inter-token latency = gap between content events, split evenly
 * over the tokens of an event when the server reports them (per-chunk `usage`,
 * vLLM's continuous_usage_stats; otherwise one token per event); E2E = send to
 * the end of the response; output tokens = usage.completion_tokens when given,
 * else content events; TPOT (time per output token, vLLM's per-request figure)
 * = (E2E - TTFT) / (output tokens - 1) for streams of 2 or more tokens. A request fails on a
 * transport error, a non-200 status, an error object or malformed JSON in the stream, a stream
 * without
 * `[DONE]`, or a stream without content; failed requests count only in the
 * error table (by kind: "http_500", "connect", "timeout", ...).
 *
 * Thread-safety: driver_run() runs on the calling thread; driver_stop() may be
 * called from a signal handler or another thread.
 */
#ifndef SL_LOADGEN_DRIVER_H
#define SL_LOADGEN_DRIVER_H

#include "bench/loadgen/workload.h"
#include "common/base/stats.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct driver_cfg {
    const char *url;     /* full endpoint URL, e.g. http://127.0.0.1:8000/v1/chat/completions */
    const char *api_key; /* Authorization: Bearer KEY; NULL = none */
    bool chat;           /* chat chunks (delta.content) rather than completions (text) */
    bool stream;         /* parse SSE (must match the workload's "stream") */
    long concurrency;    /* closed loop, or the cap in open loop (0 = no cap) */
    double request_rate; /* requests/s, Poisson; 0 = closed loop */
    long num_requests;   /* measured requests; 0 = until duration_s */
    double duration_s;   /* 0 = until num_requests */
    long warmup;         /* unmeasured requests first */
    double timeout_s;    /* per request, whole response */
    uint64_t seed;       /* arrivals */
    bool progress;       /* progress bar on stderr */
    bool fresh_connect;  /* a new connection per request (no keep-alive reuse) */
    bool quickack;       /* TCP_QUICKACK after every read: ACK at once, so a server that
                            leaves Nagle on is not stalled ~40 ms by our delayed ACK */
} driver_cfg_t;

#define DRIVER_MAX_KINDS 32

typedef struct driver_error_kind {
    char kind[32]; /* "http_500", "connect", "timeout", "stream_error", ... */
    uint64_t count;
    char example[200]; /* first message seen (status body, curl error), one line */
} driver_error_kind_t;

/* Everything measured. Owned by the caller: driver_results_init / _release. */
typedef struct driver_results {
    stats_samples_t *ttft_ms;       /* per request (streaming only) */
    stats_samples_t *itl_ms;        /* per token gap (streaming only) */
    stats_samples_t *tpot_ms;       /* per request: (E2E - TTFT) / (output tokens - 1) */
    stats_samples_t *e2e_ms;        /* per request */
    stats_samples_t *output_tokens; /* per request */
    stats_samples_t *input_tokens;  /* per request: usage.prompt_tokens, else prompt words */
    uint64_t sent;                  /* measured requests started */
    uint64_t ok;
    uint64_t failed;
    uint64_t cancelled; /* in flight when stopped by driver_stop() */
    uint64_t sum_output_tokens;
    uint64_t sum_input_tokens;
    double duration_s; /* first measured send to last measured completion */
    size_t nkinds;
    driver_error_kind_t kinds[DRIVER_MAX_KINDS]; /* the last one collects overflow as "other" */
    bool per_request;    /* set before a run: keep each measured request's TTFT by index */
    double *req_ttft_ms; /* (n_req) TTFT of measured request i; NaN: failed, not streamed */
    size_t n_req, cap_req;
} driver_results_t;

/* One request's inter-token gaps (ms), kept until the request ends so only
 * successful requests count; shared by the HTTP and NATS drivers. A zeroed
 * struct is empty; free v when done. */
typedef struct driver_gaps {
    double *v; /* (n) gaps in ms */
    size_t n, cap;
} driver_gaps_t;

/* Appends ms k times (a chunk of k tokens counts as k equal gaps). Returns 0
 * or SL_ENOMEM. */
int driver_gaps_push(driver_gaps_t *g, double ms, uint64_t k);
/* Adds every gap to set (e.g. driver_results_t.itl_ms) and empties g (memory
 * kept). */
void driver_gaps_commit(driver_gaps_t *g, stats_samples_t *set);

/* Allocates the sample sets. Returns 0 or SL_ENOMEM (then release anyway). */
int driver_results_init(driver_results_t *r);
void driver_results_release(driver_results_t *r);

/* Records measured request index's TTFT (NaN for a failure) when
 * r->per_request is set; a no-op otherwise. Not thread-safe (callers with
 * threads hold their own lock). Returns 0 or SL_ENOMEM / SL_ERANGE. */
int driver_results_request(driver_results_t *r, uint64_t index, double ttft_ms);

/* Runs the benchmark. Returns 0 when the run completed (failed requests are
 * results, not errors), or SL_EINVAL (bad cfg; message in err), SL_ENOMEM,
 * SL_EIO (libcurl could not be set up). */
int driver_run(const driver_cfg_t *cfg, const workload_t *w, driver_results_t *res, char *err,
               size_t errlen);

/* Asks a running driver_run() to stop: no new requests; in-flight ones are
 * abandoned and counted as cancelled. Async-signal-safe. */
void driver_stop(void);

#endif
