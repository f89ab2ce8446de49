/* sluice-decode-worker - serves a model to the frontend over NATS.
 *
 *   sluice-decode-worker --model DIR [--served-model-name NAME] [--kv-blocks N]
 *                        [--system-port P] ...   (--help lists every option)
 *
 * Everything but the program's description is in worker.c and, shared with
 * sluice-prefill-worker, worker_main.c. SIGTERM/SIGINT: deregister, refuse
 * new requests (503), finish the ones in flight (up to --drain-timeout),
 * exit 0. A second signal exits at once (status 1). Exit status: 0 ok, 1
 * runtime failure, 2 bad usage.
 */
#include "services/decode-worker/worker.h"
#include "services/decode-worker/worker_main.h"

static int start(const worker_cfg_t *cfg, void **out, char *why, size_t why_len) {
    worker_t *w = NULL;
    int rc = worker_start(cfg, &w, why, why_len);
    *out = w;
    return rc;
}
static void drain(void *h) {
    worker_drain(h);
}
static bool idle(void *h) {
    return worker_idle(h);
}
static void release(void *h) {
    worker_free(h);
}

int main(int argc, char **argv) {
    const worker_main_desc_t d = {
        .program = "sluice-decode-worker",
        .log_name = "decode-worker",
        .summary = "Serves a Hugging Face model to Sluice frontends over NATS.",
        .work = "requests",
        .table = worker_config_table,
        .table_n = worker_config_table_n,
        .start = start,
        .drain = drain,
        .idle = idle,
        .free = release,
    };
    return worker_main_run(&d, argc, argv);
}
