/* worker_main.c - the shared main() of the model-serving programs (see
 * worker_main.h). */
#include "services/decode-worker/worker_main.h"
#include "common/base/clock.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/signals.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ms(void) {
    return sl_mono_ns() / 1000000;
}

int worker_main_run(const worker_main_desc_t *d, int argc, char **argv) {
    worker_cfg_t cfg = {0};
    sl_config_parse_out_t po;
    void *h = NULL;
    char why[1024];
    int status = 0;
    sl_log_init(d->log_name);
    int rc = sl_config_parse(d->table, d->table_n, &cfg, argc, argv, &po);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", d->program, po.error);
        status = 2;
        goto out;
    }
    if (po.help) {
        char *text = sl_config_help(d->table, d->table_n, d->program, NULL, d->summary);
        if (text) fputs(text, stdout);
        free(text);
        goto out;
    }
    if (po.nargs > 0) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", d->program, po.args[0]);
        status = 2;
        goto out;
    }
    if (!cfg.model) {
        fprintf(stderr, "%s: --model DIR is required (see --help)\n", d->program);
        status = 2;
        goto out;
    }
    sl_log_set_level((sl_log_level_t)cfg.common.log_level);
    rc = signals_install(); /* before any thread starts */
    if (rc) {
        fprintf(stderr, "%s: cannot install signal handlers: %s\n", d->program, sl_strerror(rc));
        status = 1;
        goto out;
    }
    rc = d->start(&cfg, &h, why, sizeof why);
    if (rc) {
        fprintf(stderr, "%s: %s\n", d->program, why[0] ? why : sl_strerror(rc));
        status = 1;
        goto out;
    }
    int sig = signals_wait(-1);
    LOG_INFO("signal %d: draining (a second signal exits at once)", sig);
    d->drain(h);
    int64_t deadline = now_ms() + cfg.drain_timeout_ms;
    while (!d->idle(h) && now_ms() < deadline)
        if (signals_wait(10) > 0) {
            LOG_WARN("second signal: exiting now");
            _exit(1);
        }
    if (!d->idle(h)) LOG_WARN("drain timeout: stopping with %s in flight", d->work);
    LOG_INFO("stopped");
out:
    if (h) d->free(h);
    sl_config_release(d->table, d->table_n, &cfg);
    return status;
}
