/* sluice-prefill-worker - computes prompts' KV for decode workers (disaggregated prefill).
 *
 *   sluice-prefill-worker --model DIR [--max-batch-tokens N] [--transfer-timeout 10s]
 *                        [--system-port P] ...    (--help lists every option)
 *
 * Flags, signals and the drain sequence live here; everything else is in
 * prefill.c. SIGTERM/SIGINT: deregister, refuse new jobs, finish the
 * jobs in flight (up to --drain-timeout), exit 0. A second signal exits at
 * once (status 1). Exit status: 0 ok, 1 runtime failure, 2 bad usage.
 */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/signals.h"
#include "services/prefill-worker/prefill.h"

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
    prefill_worker_t *w = NULL;
    char why[1024];
    int status = 0;
    sl_log_init("prefill-worker");
    int rc = sl_config_parse(prefill_config_table, prefill_config_table_n, &cfg, argc, argv, &po);
    if (rc < 0) {
        fprintf(stderr, "sluice-prefill-worker: %s\n", po.error);
        status = 2;
        goto out;
    }
    if (po.help) {
        char *h = sl_config_help(prefill_config_table, prefill_config_table_n,
                                 "sluice-prefill-worker", NULL,
                                 "Computes prompts' KV for Sluice decode workers and writes it "
                                 "into their KV pools over UCX.");
        if (h) fputs(h, stdout);
        free(h);
        goto out;
    }
    if (po.nargs > 0) {
        fprintf(stderr, "sluice-prefill-worker: unexpected argument '%s'\n", po.args[0]);
        status = 2;
        goto out;
    }
    if (!cfg.model) {
        fprintf(stderr, "sluice-prefill-worker: --model DIR is required (see --help)\n");
        status = 2;
        goto out;
    }
    sl_log_set_level((sl_log_level_t)cfg.common.log_level);
    rc = signals_install(); /* before any thread starts */
    if (rc) {
        fprintf(stderr, "sluice-prefill-worker: cannot install signal handlers: %s\n",
                sl_strerror(rc));
        status = 1;
        goto out;
    }

    rc = prefill_start(&cfg, &w, why, sizeof why);
    if (rc) {
        fprintf(stderr, "sluice-prefill-worker: %s\n", why[0] ? why : sl_strerror(rc));
        status = 1;
        goto out;
    }
    int sig = signals_wait(-1);
    LOG_INFO("signal %d: draining (a second signal exits at once)", sig);
    prefill_drain(w);
    int64_t deadline = now_ms() + cfg.drain_timeout_ms;
    while (!prefill_idle(w) && now_ms() < deadline)
        if (signals_wait(10) > 0) {
            LOG_WARN("second signal: exiting now");
            _exit(1);
        }
    if (!prefill_idle(w)) LOG_WARN("drain timeout: stopping with jobs in flight");
    LOG_INFO("stopped");
out:
    prefill_free(w);
    sl_config_release(prefill_config_table, prefill_config_table_n, &cfg);
    return status;
}
