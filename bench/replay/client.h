/* client.h - sends a trace's requests on its schedule and times each one.
 *
 * One thread, one libcurl multi handle (the model of bench/loadgen's driver;
 * SSE parsing and statistics come from common/base/sse.h and stats.h, as
 * loadgen's do). Request i is sent at start + (t_ms[i] - t_ms[0]) / speed,
 * open loop: however many are still in flight. Each is a streamed
 * POST /v1/completions whose prompt is the trace's token array
 * (trace_prompt_token), max_tokens = min_tokens = output_length, ignore_eos,
 * temperature 0, stream_options.include_usage. Per request it records TTFT
 * (send -> first event with non-empty text), the gaps between text events
 * (ITL), end-to-end time, and usage (prompt, completion, cached tokens from
 * prompt_tokens_details). A request fails on a transport error, a non-200
 * status, an error object or bad JSON in the stream, no [DONE], or no text.
 *
 * Thread-safety: client_run() runs on the calling thread; client_stop() is
 * async-signal-safe.
 */
#ifndef SL_REPLAY_CLIENT_H
#define SL_REPLAY_CLIENT_H

#include "bench/replay/trace.h"
#include "common/base/stats.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct client_cfg {
    const char *url;          /* http://HOST:PORT/v1/completions */
    const char *model;        /* "model" sent */
    double speed;             /* > 0: trace time / speed = wall time */
    uint32_t tokens_per_hash; /* see trace.h */
    uint32_t vocab;           /* prompt token ids < vocab */
    double timeout_s;         /* per request */
    bool progress;            /* a status line on stderr every second */
} client_cfg_t;

/* One request's outcome. Times in ms; -1 when not measured. */
typedef struct client_rec {
    bool ok;
    double lateness_ms; /* actual send - scheduled send */
    double ttft_ms, e2e_ms;
    int64_t prompt_tokens, completion_tokens, cached_tokens; /* usage; -1 absent */
    uint32_t want_prompt, want_output;                       /* what was sent */
    char error[160];                                         /* kind: message, when !ok */
} client_rec_t;

typedef struct client_results {
    client_rec_t *recs;      /* (n) in trace order */
    size_t n;                /* requests to send */
    size_t sent;             /* requests sent */
    stats_samples_t *itl_ms; /* every inter-token gap of successful requests */
    uint64_t ok, failed, cancelled;
    double duration_s; /* first send to last completion */
} client_results_t;

/* Allocates records for n requests. Returns 0 or SL_ENOMEM (release anyway). */
int client_results_init(client_results_t *r, size_t n);
void client_results_release(client_results_t *r);

/* Replays the first res->n requests of t. Returns 0 when the replay ran
 * (failed requests are results), SL_EINVAL (bad cfg), SL_ENOMEM or SL_EIO
 * (libcurl). */
int client_run(const client_cfg_t *cfg, const trace_t *t, client_results_t *res);

/* Stops a running client_run(): in-flight requests are abandoned and counted
 * as cancelled, the rest are not sent. Async-signal-safe. */
void client_stop(void);

#endif
