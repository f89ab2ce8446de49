/* generate_client.h - one generation's stream from decode workers over NATS.
 *
 * gen_client_run() sends a GenerateRequest to a worker picked from the pool
 * and hands each GenerateChunk with tokens to a callback. Failure handling:
 *   - before the first token (no responders, a 503/5xx error chunk, a broken
 *     or silent stream): the request goes to another worker (retry);
 *   - after tokens went out (the worker died or went silent mid-stream):
 *     migration: prompt + the tokens delivered so far (prior_output_ids) with
 *     the remaining budget go to another worker; the callback sees one
 *     continuous run of tokens.
 * A callback that returns nonzero (the client went away) ends the run: a
 * CancelRequest goes to the worker (sluice.<ns>.backend.cancel.<hex>).
 * A request over NATS max_payload fails at once with SL_ETOOBIG (HTTP 413).
 * A worker that leaves discovery (lease revoked or expired) mid-stream is
 * noticed at once (worker_pool_on_gone): its streams migrate right away
 * instead of waiting for the stream timeout.
 * Stop strings across a migration: the text the dead worker had generated but
 * held back (a possible stop-string start) is recovered with the tokenizer,
 * and from then on the frontend matches the stop strings itself over that
 * text plus the new worker's, so a stop string spanning the migration point
 * ends the stream as it would have on one worker.
 * Routing: with a router mode set, each attempt first asks a router
 * (RouteRequest on sluice.<ns>.router.route, excluding workers that already
 * failed) and uses its pick; when no router answers within the router
 * timeout, or it picks a worker the pool does not know, the attempt falls
 * back to the pool's round-robin. An attempt a router placed is reported
 * back on sluice.<ns>.router.active with the id the router saw (the request
 * id; "<id>.<attempt>" for later attempts): PREFILL_DONE at its first token,
 * FREE when it ends in any way (finished, failed, cancelled, migrated away),
 * so the router's predicted load drops as soon as the stream does.
 *
 * Ownership: gen_client_new() copies ns; the bus, pool, tokenizer and
 * counters are borrowed and must outlive the client (gen_client_new sets the
 * pool's departure listener; gen_client_free clears it). Thread-safety: gen_client_run() may
 * run on many threads at once.
 */
#ifndef SL_FRONTEND_GENERATE_CLIENT_H
#define SL_FRONTEND_GENERATE_CLIENT_H

#include "common/engine/tokenizer.h"
#include "common/runtime/bus.h"
#include "common/runtime/metrics.h"
#include "proto/sluice.pb-c.h"
#include "services/frontend/worker_pool.h"

#include <stdint.h>

typedef struct gen_client gen_client_t;

typedef struct gen_client_opts {
    const char *ns;
    int stream_timeout_ms;   /* max silence from a worker before it counts as failed */
    int max_attempts;        /* workers tried per request (retries + migrations + 1) */
    const char *router_mode; /* NULL or "": no router; else kv, round-robin, ... */
    int router_timeout_ms;   /* 0: 100 */
    metrics_counter_t *retries, *migrations;           /* may be NULL */
    metrics_counter_t *routed, *route_fallbacks;       /* may be NULL */
    metrics_counter_t *overlap_blocks, *prompt_blocks; /* router's promise; may be NULL */
    const sl_tokenizer_t *tok; /* recovers held-back text at a migration; may be NULL */
} gen_client_opts_t;

/* What a run ended with. */
typedef struct gen_result {
    int finish; /* SLUICE__V1__FINISH_REASON__FINISH_REASON_* */
    uint32_t prompt_tokens, completion_tokens, cached_tokens;
    int code;            /* 0, or the SL_E* code of a failed run */
    int http_status;     /* suggested status of a failed run */
    char message[512];   /* why it failed */
    int attempts;        /* workers tried */
    int64_t last_worker; /* instance id that served the end of the run */
} gen_result_t;

/* Called per chunk carrying tokens or text (never with the final error);
 * return nonzero to cancel. */
typedef int (*gen_chunk_fn)(void *ud, const Sluice__V1__GenerateChunk *c);

int gen_client_new(bus_t *bus, worker_pool_t *pool, const gen_client_opts_t *opts,
                   gen_client_t **out);
void gen_client_free(gen_client_t *g);

/* Runs req (its token_ids are the prompt; prior_output_ids must be empty;
 * stop->max_tokens the whole budget, 0 = none) to the end. Returns 0 when
 * the run finished (res->finish stop/length/cancelled), or a negative code
 * with res->http_status and res->message set: SL_ENOTFOUND (no worker serves
 * the model, 404), SL_EUNAVAIL (no worker left, 503), SL_ETOOBIG (413), or a
 * worker's error (its status, e.g. 400). */
int gen_client_run(gen_client_t *g, const Sluice__V1__GenerateRequest *req, gen_chunk_fn fn,
                   void *ud, gen_result_t *res);

#endif
