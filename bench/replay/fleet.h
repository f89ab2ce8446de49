/* fleet.h - the servers a replay runs against, started and stopped by it.
 *
 * nats-server and etcd (tests/harness: free loopback ports, temp dirs), one
 * sluice-router in the chosen mode, N sluice-decode-workers with the mocker
 * engine, and one sluice-frontend asking the router in the same mode. Each
 * process logs to a file under log_dir. rfleet_start() returns once the
 * router accepts all N workers and the frontend is healthy, so every
 * replay starts from a fleet with cold caches.
 *
 * Names are rfleet_* (replay fleet), apart from tests/harness/fleet.h,
 * which arrived on main meanwhile with per-process spawn helpers for the
 * integration tests; this start-everything-and-wait could be rebuilt on it.
 *
 * Thread-safety: one thread; a fleet belongs to its caller.
 */
#ifndef SL_REPLAY_FLEET_H
#define SL_REPLAY_FLEET_H

#include <stddef.h>
#include <stdint.h>

typedef struct rfleet_cfg {
    const char *bin_dir;       /* holds sluice-router, -decode-worker, -frontend */
    const char *model_dir;     /* config.json + tokenizer */
    const char *model_name;    /* served model name */
    const char *mode;          /* kv | round-robin | random | least-loaded */
    const char *mocker_params; /* file, NULL = the mocker's defaults */
    const char *log_dir;       /* existing directory for the processes' logs */
    const char *router_args;   /* extra router flags, space-separated; NULL = none */
    uint32_t workers;          /* >= 1 */
    uint32_t kv_blocks;        /* per worker */
    uint32_t block_size;
    uint32_t max_batch_tokens; /* 0 = the worker's default */
    uint32_t max_seqs;         /* 0 = the worker's default */
    int start_timeout_ms;
} rfleet_cfg_t;

typedef struct rfleet rfleet_t;

/* Starts everything. Returns 0 and *out, or a negative error with a message
 * in err (which process, where its log is); what was started is stopped. */
int rfleet_start(const rfleet_cfg_t *cfg, rfleet_t **out, char *err, size_t errlen);

/* http://127.0.0.1:PORT of the frontend (valid until rfleet_stop). */
const char *rfleet_frontend_url(const rfleet_t *f);

/* Reads one unlabelled counter or gauge from the frontend's /metrics.
 * Returns 0 and *v, SL_ENOTFOUND, or SL_EIO. */
int rfleet_frontend_metric(const rfleet_t *f, const char *name, double *v);

/* Stops the frontend, workers, router, etcd and nats (SIGTERM, then SIGKILL
 * after a grace period), removes the servers' temp dirs. NULL is a no-op. */
void rfleet_stop(rfleet_t *f);

#endif
