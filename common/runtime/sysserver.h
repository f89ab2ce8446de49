/* sysserver.h - the per-process system HTTP server: /metrics, /health, /live.
 *
 * Every Sluice process runs one on its --system-port (civetweb, one thread per
 * connection):
 *   GET /metrics  the metrics registry in the Prometheus text format
 *                 (text/plain; version=0.0.4), 200
 *   GET /health   JSON from the health callback; 200 when it says healthy,
 *                 503 when not. Without a callback: {"status":"healthy"}, 200.
 *   GET /live     {"status":"live"}, 200 while the process runs (liveness:
 *                 the process answers; readiness is /health)
 * HEAD is served like GET without the body; other methods get 405; any other
 * path gets 404. Responses carry Content-Length and Connection: close.
 *
 * Thread-safety: start and stop from one thread. The health callback and the
 * registry's collect hook run on civetweb's threads, possibly several at
 * once, so they must be thread-safe.
 */
#ifndef SL_SYSSERVER_H
#define SL_SYSSERVER_H

#include "common/runtime/metrics.h"

#include <stdbool.h>

typedef struct sysserver sysserver_t;

/* Health probe. Returns true when healthy. May set *json to a heap-allocated
 * JSON object describing the state (the server frees it); if it leaves *json
 * NULL the body is {"status":"healthy"} or {"status":"unhealthy"}. */
typedef bool (*sysserver_health_fn)(void *ud, char **json);

typedef struct sysserver_opts {
    const char *host;            /* address to bind; NULL = "0.0.0.0" */
    int port;                    /* 0 = any free port (see sysserver_port) */
    metrics_registry_t *metrics; /* borrowed, must outlive the server; NULL = empty /metrics */
    sysserver_health_fn health;  /* NULL = always healthy */
    void *health_ud;
    int num_threads; /* concurrent connections; 0 = 4 */
} sysserver_opts_t;

/* Starts the server and returns it in *out. Returns 0, SL_EINVAL (bad
 * options: port outside [0, 65535], host too long), SL_EIO (could not bind,
 * e.g. port in use: logged with civetweb's reason) or SL_ENOMEM. On failure
 * *out is NULL. */
int sysserver_start(const sysserver_opts_t *opts, sysserver_t **out);

/* The TCP port actually bound (the chosen one when opts.port was 0). */
int sysserver_port(const sysserver_t *s);

/* Stops serving (waits for requests in progress) and frees the server. NULL
 * is a no-op. */
void sysserver_stop(sysserver_t *s);

#endif
