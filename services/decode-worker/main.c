/* sluice-decode-worker - serves a model to the frontend over NATS.
 *
 *   sluice-decode-worker --model DIR [--served-model-name NAME] [--kv-blocks N]
 *                        [--system-port P] ...   (--help lists every option)
 *
 * Flags, signals and the drain sequence live here; everything else is in
 * worker.c. SIGTERM/SIGINT: deregister, refuse new requests (503), finish the
 * ones in flight (up to --drain-timeout), exit 0. A second signal exits at
 * once (status 1). Exit status: 0 ok, 1 runtime failure, 2 bad usage.
 */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/signals.h"
#include "services/decode-worker/worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
    worker_cfg_t cfg = {0};
    sl_config_parse_out_t po;
    worker_t *w = NULL;
    char why[1024];
    int status = 0;
    sl_log_init("decode-worker");
    int rc = sl_config_parse(worker_config_table, worker_config_table_n, &cfg, argc, argv, &po);
    if (rc < 0) {
        fprintf(stderr, "sluice-decode-worker: %s\n", po.error);
        status = 2;
        goto out;
    }
    if (po.help) {
        char *h =
            sl_config_help(worker_config_table, worker_config_table_n, "sluice-decode-worker", NULL,
                           "Serves a Hugging Face model to Sluice frontends over NATS.");
        if (h) fputs(h, stdout);
        free(h);
        goto out;
    }
    if (po.nargs > 0) {
        fprintf(stderr, "sluice-decode-worker: unexpected argument '%s'\n", po.args[0]);
        status = 2;
        goto out;
    }
    if (!cfg.model) {
        fprintf(stderr, "sluice-decode-worker: --model DIR is required (see --help)\n");
        status = 2;
        goto out;
    }
    sl_log_set_level((sl_log_level_t)cfg.common.log_level);
    rc = signals_install(); /* before any thread starts */
    if (rc) {
        fprintf(stderr, "sluice-decode-worker: cannot install signal handlers: %s\n",
                sl_strerror(rc));
        status = 1;
        goto out;
    }

    rc = worker_start(&cfg, &w, why, sizeof why);
    if (rc) {
        fprintf(stderr, "sluice-decode-worker: %s\n", why[0] ? why : sl_strerror(rc));
        status = 1;
        goto out;
    }
    int sig = signals_wait(-1);
    LOG_INFO("signal %d: draining (a second signal exits at once)", sig);
    worker_drain(w);
    int64_t deadline = now_ms() + cfg.drain_timeout_ms;
    while (!worker_idle(w) && now_ms() < deadline)
        if (signals_wait(10) > 0) {
            LOG_WARN("second signal: exiting now");
            _exit(1);
        }
    if (!worker_idle(w)) LOG_WARN("drain timeout: stopping with requests in flight");
    LOG_INFO("stopped");
out:
    worker_free(w);
    sl_config_release(worker_config_table, worker_config_table_n, &cfg);
    return status;
}
