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
#include "services/decode-worker/worker.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t signals_seen;

static void on_signal(int sig) {
    (void)sig;
    if (signals_seen++ > 0) _exit(1); /* second signal: at once */
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
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
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    rc = worker_start(&cfg, &w, why, sizeof why);
    if (rc) {
        fprintf(stderr, "sluice-decode-worker: %s\n", why[0] ? why : sl_strerror(rc));
        status = 1;
        goto out;
    }
    while (!signals_seen) sleep_ms(20);
    worker_drain(w);
    int64_t deadline = now_ms() + cfg.drain_timeout_ms;
    while (!worker_idle(w) && now_ms() < deadline) sleep_ms(10);
    if (!worker_idle(w)) LOG_WARN("drain timeout: stopping with requests in flight");
    LOG_INFO("stopped");
out:
    worker_free(w);
    sl_config_release(worker_config_table, worker_config_table_n, &cfg);
    return status;
}
