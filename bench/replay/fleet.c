/* fleet.c - start-up and shut-down of a replay's servers (see fleet.h). The
 * processes come from tests/harness (compiled in by harness_link.c), so the
 * replay starts servers exactly as the integration tests do. */
#include "bench/replay/fleet.h"

#include "common/base/err.h"
#include "tests/harness/fleet.h"
#include "tests/harness/harness.h"

#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FL_MAX_ARGS 64

struct rfleet {
    harness_nats_t nats;
    harness_etcd_t etcd;
    bool nats_up, etcd_up;
    pid_t router, frontend;
    pid_t *workers; /* (n_workers) */
    uint32_t n_workers;
    int router_port, http_port;
    char url[64];
    char ns[64];
};

__attribute__((format(printf, 3, 4))) static int fl_fail(char *err, size_t errlen, const char *fmt,
                                                         ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return SL_EIO;
}

/* A Prometheus sample of base's /metrics (tests/harness/fleet.h). */
static int fl_metric(const char *base, const char *name, double *v) {
    double d = fleet_metric(base, name);
    if (d < 0) return SL_ENOTFOUND; /* absent or unreachable; samples here are >= 0 */
    *v = d;
    return 0;
}

int rfleet_frontend_metric(const rfleet_t *f, const char *name, double *v) {
    if (!f || !name || !v) return SL_EINVAL;
    return fl_metric(f->url, name, v);
}

const char *rfleet_frontend_url(const rfleet_t *f) {
    return f ? f->url : NULL;
}

/* Splits extra (space-separated, no quoting) into argv after *n entries. */
static int fl_split(char *extra, char **argv, size_t *n) {
    for (char *save = NULL, *tok = extra ? strtok_r(extra, " ", &save) : NULL; tok;
         tok = strtok_r(NULL, " ", &save)) {
        if (*n + 1 >= FL_MAX_ARGS) return SL_ETOOBIG;
        argv[(*n)++] = tok;
    }
    argv[*n] = NULL;
    return 0;
}

static pid_t fl_spawn(char **argv, const char *log_dir, const char *name, char *log, size_t len) {
    snprintf(log, len, "%s/%s.log", log_dir, name);
    return harness_spawn(argv, NULL, log);
}

void rfleet_stop(rfleet_t *f) {
    if (!f) return;
    if (f->frontend > 0) harness_kill(f->frontend, SIGTERM, 5000);
    for (uint32_t i = 0; i < f->n_workers; i++) /* all signalled first: they drain in parallel */
        if (f->workers[i] > 0) kill(f->workers[i], SIGTERM);
    for (uint32_t i = 0; i < f->n_workers; i++)
        if (f->workers[i] > 0) harness_kill(f->workers[i], SIGTERM, 5000);
    if (f->router > 0) harness_kill(f->router, SIGTERM, 5000);
    if (f->etcd_up) harness_etcd_destroy(&f->etcd);
    if (f->nats_up) harness_nats_destroy(&f->nats);
    free(f->workers);
    free(f);
}

int rfleet_start(const rfleet_cfg_t *cfg, rfleet_t **out, char *err, size_t errlen) {
    int rc = 0;
    rfleet_t *f = NULL;
    char *extra = NULL;
    char log[512], bsz[32], port[32], mbt[32], mseq[32], wextra[256];
    if (!cfg || !out || !cfg->bin_dir || !cfg->model_dir || !cfg->model_name || !cfg->mode ||
        !cfg->log_dir || cfg->workers == 0)
        return SL_EINVAL;
    *out = NULL;
    if (!(f = calloc(1, sizeof *f)) || !(f->workers = calloc(cfg->workers, sizeof(pid_t)))) {
        rc = SL_ENOMEM;
        goto out;
    }
    setenv("SLUICE_BIN_DIR", cfg->bin_dir, 1); /* harness_spawn looks there */
    snprintf(f->ns, sizeof f->ns, "replay%d", (int)getpid());
    if (harness_nats_start(&f->nats, 0) != 0) {
        rc = fl_fail(err, errlen, "nats-server did not start");
        goto out;
    }
    f->nats_up = true;
    if (harness_etcd_start(&f->etcd) != 0) {
        rc = fl_fail(err, errlen, "etcd did not start");
        goto out;
    }
    f->etcd_up = true;
    snprintf(bsz, sizeof bsz, "%u", cfg->block_size);
    snprintf(mbt, sizeof mbt, "%u", cfg->max_batch_tokens);
    snprintf(mseq, sizeof mseq, "%u", cfg->max_seqs);

    /* router */
    f->router_port = harness_free_port();
    snprintf(port, sizeof port, "%d", f->router_port);
    char *rargv[FL_MAX_ARGS] = {
        "sluice-router", "--mode", (char *)cfg->mode, "--model",       (char *)cfg->model_name,
        "--block-size",  bsz,      "--namespace",     f->ns,           "--nats",
        f->nats.url,     "--etcd", f->etcd.url,       "--system-port", port,
        "--log-level",   "warn"};
    size_t rn = 17;
    if (cfg->router_args && !(extra = strdup(cfg->router_args))) {
        rc = SL_ENOMEM;
        goto out;
    }
    if (fl_split(extra, rargv, &rn)) {
        rc = fl_fail(err, errlen, "too many router arguments");
        goto out;
    }
    if ((f->router = fl_spawn(rargv, cfg->log_dir, "router", log, sizeof log)) <= 0) {
        rc = fl_fail(err, errlen, "sluice-router did not start (see %s)", log);
        goto out;
    }

    /* workers: the integration tests' mocker worker (tests/harness/fleet.h) */
    if (strchr(cfg->model_name, ' ') ||
        (size_t)snprintf(wextra, sizeof wextra,
                         "--served-model-name %s --block-size %s --log-level warn%s%s%s%s",
                         cfg->model_name, bsz, cfg->max_batch_tokens ? " --max-batch-tokens " : "",
                         cfg->max_batch_tokens ? mbt : "", cfg->max_seqs ? " --max-seqs " : "",
                         cfg->max_seqs ? mseq : "") >= sizeof wextra) {
        rc = fl_fail(err, errlen, "model name has a space or is too long");
        goto out;
    }
    fleet_env_t wenv = {.ns = f->ns, .etcd = f->etcd.url, .nats = f->nats.url};
    for (uint32_t i = 0; i < cfg->workers; i++) {
        snprintf(log, sizeof log, "%s/worker%u.log", cfg->log_dir, i);
        fleet_worker_opts_t wo = {.model = cfg->model_dir,
                                  .mocker = true,
                                  .mocker_params = cfg->mocker_params,
                                  .system_port = -1,
                                  .kv_blocks = (int)cfg->kv_blocks,
                                  .log = log,
                                  .extra = wextra};
        if ((f->workers[i] = fleet_worker_spawn(&wenv, &wo)) <= 0) {
            rc = fl_fail(err, errlen, "sluice-decode-worker %u did not start (see %s)", i, log);
            goto out;
        }
        f->n_workers = i + 1;
    }

    /* frontend */
    f->http_port = harness_free_port();
    snprintf(port, sizeof port, "%d", f->http_port);
    snprintf(f->url, sizeof f->url, "http://127.0.0.1:%d", f->http_port);
    char *fargv[] = {"sluice-frontend",
                     "--model-path",
                     (char *)cfg->model_dir,
                     "--served-model-name",
                     (char *)cfg->model_name,
                     "--host",
                     "127.0.0.1",
                     "--port",
                     port,
                     "--router-mode",
                     (char *)cfg->mode,
                     "--router-timeout",
                     "2s",
                     "--stream-timeout",
                     "30m",
                     "--namespace",
                     f->ns,
                     "--nats",
                     f->nats.url,
                     "--etcd",
                     f->etcd.url,
                     "--log-level",
                     "warn",
                     NULL};
    if ((f->frontend = fl_spawn(fargv, cfg->log_dir, "frontend", log, sizeof log)) <= 0) {
        rc = fl_fail(err, errlen, "sluice-frontend did not start (see %s)", log);
        goto out;
    }

    /* ready: the router accepts every worker and the frontend is healthy */
    char rurl[64];
    snprintf(rurl, sizeof rurl, "http://127.0.0.1:%d", f->router_port);
    long long end = harness_now_ms() + (cfg->start_timeout_ms > 0 ? cfg->start_timeout_ms : 30000);
    bool ready = false;
    double nw = 0;
    while (harness_now_ms() < end) {
        if (harness_exited(f->router, NULL) || harness_exited(f->frontend, NULL)) break;
        bool dead = false;
        for (uint32_t i = 0; i < f->n_workers && !dead; i++)
            dead = harness_exited(f->workers[i], NULL);
        if (dead) break;
        if (fl_metric(rurl, "sluice_router_workers", &nw) == 0 && nw >= cfg->workers) {
            if (fleet_http(f->url, "/health", NULL, 3000, NULL) == 200) {
                ready = true;
                break;
            }
        }
        harness_sleep_ms(100);
    }
    if (!ready) {
        rc = fl_fail(err, errlen,
                     "fleet not ready (router sees %.0f of %u workers, or a process exited); "
                     "logs in %s",
                     nw, cfg->workers, cfg->log_dir);
        goto out;
    }
    harness_sleep_ms(500); /* the frontend's pool learns the last workers from the same watch */
    *out = f;
    f = NULL;
out:
    free(extra);
    rfleet_stop(f);
    return rc;
}
