/* sluice-prefill-worker - computes prompts' KV for decode workers (disaggregated prefill).
 *
 *   sluice-prefill-worker --model DIR [--max-batch-tokens N] [--transfer-timeout 10s]
 *                        [--system-port P] ...    (--help lists every option)
 *
 * Everything but the program's description is in prefill.c and, shared with
 * sluice-decode-worker, services/decode-worker/worker_main.c. SIGTERM/SIGINT:
 * deregister, refuse new jobs, finish the jobs in flight (up to
 * --drain-timeout), exit 0. A second signal exits at once (status 1). Exit
 * status: 0 ok, 1 runtime failure, 2 bad usage.
 */
#include "services/decode-worker/worker_main.h"
#include "services/prefill-worker/prefill.h"

static int start(const worker_cfg_t *cfg, void **out, char *why, size_t why_len) {
    prefill_worker_t *w = NULL;
    int rc = prefill_start(cfg, &w, why, why_len);
    *out = w;
    return rc;
}
static void drain(void *h) {
    prefill_drain(h);
}
static bool idle(void *h) {
    return prefill_idle(h);
}
static void release(void *h) {
    prefill_free(h);
}

int main(int argc, char **argv) {
    const worker_main_desc_t d = {
        .program = "sluice-prefill-worker",
        .log_name = "prefill-worker",
        .summary = "Computes prompts' KV for Sluice decode workers and writes it into their KV "
                   "pools over UCX.",
        .work = "jobs",
        .table = prefill_config_table,
        .table_n = prefill_config_table_n,
        .start = start,
        .drain = drain,
        .idle = idle,
        .free = release,
    };
    return worker_main_run(&d, argc, argv);
}
