/* fleet.h - Sluice services for integration tests: decode workers (model or
 * mocker), sluice-router and sluice-frontend as child processes, a tiny
 * model to serve, and plain HTTP to their endpoints (/health, /metrics).
 *
 * Builds on harness.h (nats-server, etcd, spawn and kill): every process is
 * started with harness_spawn, so it dies with the test process, and is
 * stopped with harness_kill. Flags not given here keep the programs'
 * defaults.
 *
 * Ownership: options are read during the call only; strings returned
 * through out-parameters are malloc'd (caller frees).
 * Thread-safety: fleet_http* and fleet_metric* may run on any thread (each
 * call uses its own curl handle; curl_global_init must have run); the
 * spawn functions from the test's main thread, as harness.h says.
 */
#ifndef SL_FLEET_H
#define SL_FLEET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tests/harness/harness.h"

/* Where the services meet: namespace, etcd and NATS URLs. */
typedef struct fleet_env {
    const char *ns;
    const char *etcd; /* http://127.0.0.1:PORT */
    const char *nats; /* nats://127.0.0.1:PORT */
} fleet_env_t;

typedef struct fleet_worker_opts {
    const char *bin;           /* NULL: sluice-decode-worker (or sluice-prefill-worker) */
    const char *model;         /* model directory (required) */
    bool mocker;               /* --engine mocker */
    const char *mocker_params; /* --mocker-params FILE, or NULL */
    int system_port;           /* --system-port (0: any free port) */
    int lease_ttl_s;           /* --lease-ttl (0: default) */
    int kv_blocks;             /* --kv-blocks (0: 256 for a model, the default for a mocker) */
    const char *log;           /* stdout/stderr file, or NULL: inherited */
    const char *extra;         /* more flags, space-separated (no quoting), or NULL */
    char *const *env;          /* extra environment (harness_spawn), or NULL */
} fleet_worker_opts_t;

typedef struct fleet_router_opts {
    int system_port;        /* --system-port (0: any free port) */
    const char *mode;       /* --mode, NULL: default (kv) */
    const char *active_ttl; /* --active-ttl, e.g. "10m"; NULL: default */
    const char *log;
} fleet_router_opts_t;

typedef struct fleet_frontend_opts {
    const char *model;          /* --model-path (required) */
    int port;                   /* --port (required, > 0) */
    const char *router_mode;    /* --router-mode, or NULL */
    const char *router_timeout; /* --router-timeout, or NULL */
    const char *stream_timeout; /* --stream-timeout, or NULL: 2s */
    const char *api_key;        /* --api-key, or NULL */
    int max_attempts;           /* --max-attempts (0: default) */
    int http_threads;           /* --http-threads (0: 200) */
    int http_reserve_threads;   /* --http-reserve-threads (0: default) */
    const char *log;
} fleet_frontend_opts_t;

/* Spawn sluice-decode-worker (or o->bin) / sluice-router / sluice-frontend.
 * Return the pid or -1. */
pid_t fleet_worker_spawn(const fleet_env_t *env, const fleet_worker_opts_t *o);
pid_t fleet_router_spawn(const fleet_env_t *env, const fleet_router_opts_t *o);
pid_t fleet_frontend_spawn(const fleet_env_t *env, const fleet_frontend_opts_t *o);

/* A worker process started by fleet_proc_start. */
typedef struct fleet_proc {
    pid_t pid;         /* 0: not running */
    int port;          /* its --system-port */
    char base[40];     /* http://127.0.0.1:port, its system server */
    int64_t id;        /* instance id it registered under */
    char subject[256]; /* its NATS subject (BUS_SUBJECT_MAX) */
} fleet_proc_t;

/* Spawns a worker with opts o on a free system port (o.system_port is
 * ignored) and waits up to timeout_ms until it registers as component.
 * Fills *p. Returns 0, or -1 (spawn failed, or no registration in time:
 * p->pid is then still set when it spawned, for the caller to kill). */
int fleet_proc_start(fleet_proc_t *p, const fleet_env_t *env, fleet_worker_opts_t o,
                     const char *component, int timeout_ms);

/* Polls env's etcd until an instance of component (e.g. "backend",
 * "prefill") registered by process pid (0: any) appears; copies its NATS
 * subject into subject (subject_len bytes; may be NULL). Returns its
 * instance id, or 0 after timeout_ms. */
int64_t fleet_wait_registered(const fleet_env_t *env, const char *component, pid_t pid,
                              char *subject, size_t subject_len, int timeout_ms);

/* fleet_wait_registered that also copies the registration's JSON value (as
 * stored in etcd) into json (json_len bytes; may be NULL). */
int64_t fleet_wait_registered_json(const fleet_env_t *env, const char *component, pid_t pid,
                                   char *subject, size_t subject_len, char *json, size_t json_len,
                                   int timeout_ms);

/* Writes a tiny random Llama (genmodel: 2 layers, hidden 64, vocab 512,
 * seed 5, 4096-token context) into dir/name and its path into out. Returns
 * 0 or -1. */
int fleet_genmodel(const char *dir, const char *name, char *out, size_t len);

/* The usual model-serving fixture: a temporary directory (harness_mkdtemp
 * with prefix) holding fleet_genmodel's "tiny" model, plus etcd and a
 * nats-server (default max payload). dir (dir_len bytes) and model
 * (model_len bytes) get their paths. Returns 0, or -1 with a line on stderr
 * (whatever started stays in etcd/nats/dir for fleet_fixture_stop). */
int fleet_fixture_start(const char *prefix, char *dir, size_t dir_len, char *model,
                        size_t model_len, harness_etcd_t *etcd, harness_nats_t *nats);

/* Stops what fleet_fixture_start started: nats-server, etcd, and removes dir
 * (unless SLUICE_KEEP_TMP is set, or dir is empty). */
void fleet_fixture_stop(const char *dir, harness_etcd_t *etcd, harness_nats_t *nats);

/* Writes a mocker parameter file (JSON) with the given decode step time and
 * prefill time per token, everything else zero, into path. Returns 0 or -1. */
int fleet_mocker_params_write(const char *path, double decode_s, double prefill_per_token_s);

/* GET (body NULL) or POST (JSON body) of base+path (base:
 * "http://127.0.0.1:PORT"). Returns the HTTP status, or 0 on a transport
 * failure; *out (may be NULL) gets the body (malloc'd, never NULL when out
 * is given). timeout_ms 0: 30 s. */
long fleet_http(const char *base, const char *path, const char *body, int timeout_ms, char **out);

/* The value of the first sample of metric name (the exact name, with or
 * without labels) on base's /metrics, or -1 if absent or unreachable. */
double fleet_metric(const char *base, const char *name);

/* Polls base's /health until it answers 200 and its body contains needle
 * (NULL: anything). Returns true in time (timeout_ms), false otherwise. */
bool fleet_wait_healthy(const char *base, const char *needle, int timeout_ms);

/* Polls until fleet_metric(base, name) compares as wanted with value:
 * op '=' equal, '>' greater, '<' less, 'g' greater or equal. Returns the
 * last value read (check it against the same condition). */
double fleet_wait_metric(const char *base, const char *name, char op, double value, int timeout_ms);

#endif
