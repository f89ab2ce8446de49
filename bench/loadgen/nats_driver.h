/* nats_driver.h - loadgen's direct-to-worker mode: the same workload sent to
 * decode workers over NATS, bypassing the frontend.
 *
 * The frontend's own overhead is its TTFT minus the TTFT a client gets from
 * the same worker asked directly. This driver is that direct client: it finds
 * workers of component "backend" in etcd (discovery.h), renders each
 * workload request with the model's chat template (chat) or takes the prompt
 * as is (completions), tokenizes it with the model's tokenizer exactly as
 * sluice-frontend does (chat: add_special false; completions: true), and sends
 * a GenerateRequest with those token ids, the body's sampling and stop fields
 * and the frontend's defaults (temperature 1, top_p 1), round-robin over the
 * workers serving cfg->model. Rendering and tokenizing happen before the
 * clock starts: they are part of what the frontend costs.
 *
 * Timing mirrors the HTTP driver so the two are comparable: TTFT = send to
 * the first GenerateChunk with non-empty text (the frontend emits an SSE
 * content event exactly for those), ITL = gaps between such chunks (one token
 * each: the worker sends one token per chunk), E2E = send to the last chunk,
 * output tokens = the last chunk's completion_tokens, input tokens = its
 * prompt_tokens. Errors by kind: "worker_<status>" (an error chunk),
 * "no_responders", "stream_timeout", "stream_closed", "stream_proto",
 * "stream_error", "timeout", "no_content", "too_big".
 *
 * Closed loop only: cfg->concurrency threads, each with one request in flight
 * (a bus stream blocks its reader; up to NATS_DRIVER_MAX_THREADS).
 *
 * Thread-safety: nats_driver_run() runs on the calling thread (and starts its
 * own); nats_driver_stop() is async-signal-safe.
 */
#ifndef SL_LOADGEN_NATS_DRIVER_H
#define SL_LOADGEN_NATS_DRIVER_H

#include "bench/loadgen/driver.h"
#include "bench/loadgen/workload.h"

#include <stdbool.h>
#include <stddef.h>

#define NATS_DRIVER_MAX_THREADS 4096

typedef struct nats_driver_cfg {
    const char *nats_url;   /* NULL: $SLUICE_NATS or the default */
    const char *etcd_url;   /* NULL: $SLUICE_ETCD or the default */
    const char *ns;         /* namespace; NULL: $SLUICE_NAMESPACE or "default" */
    const char *model_path; /* directory with tokenizer.json and tokenizer_config.json */
    const char *model;      /* served model name: workers announcing another are skipped */
    bool chat;              /* render the chat template (else completions) */
    bool stream;            /* record TTFT / ITL (as the HTTP driver does when streaming) */
    long concurrency;       /* threads, 1..NATS_DRIVER_MAX_THREADS */
    long num_requests;      /* measured; 0 = until duration_s */
    double duration_s;      /* 0 = until num_requests */
    long warmup;            /* unmeasured requests first */
    double timeout_s;       /* per request */
    double discover_s;      /* wait this long for a first worker; 0 = min(10, timeout_s) */
    bool progress;
} nats_driver_cfg_t;

/* Runs the benchmark into res (initialised by the caller). Returns 0 when the
 * run completed (failed requests are results), SL_EINVAL for a bad cfg
 * (message in err), SL_EUNAVAIL when no worker of the model showed up in time
 * or NATS could not be reached, SL_EIO / SL_EFORMAT when the tokenizer or
 * chat template could not be loaded (message in err), SL_ENOMEM. */
int nats_driver_run(const nats_driver_cfg_t *cfg, const workload_t *w, driver_results_t *res,
                    char *err, size_t errlen);

/* No new requests; in-flight ones are cancelled (CancelRequest to their
 * worker) and counted as cancelled. Async-signal-safe. */
void nats_driver_stop(void);

#endif
