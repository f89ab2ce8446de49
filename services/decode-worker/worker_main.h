/* worker_main.h - the main() of the model-serving programs.
 *
 * sluice-decode-worker and sluice-prefill-worker parse the same kind of
 * configuration (worker_cfg_t), install the same signals and drain the same
 * way; each main.c describes its program and calls worker_main_run():
 *   flags (--help, bad usage: exit 2) -> start -> wait for SIGTERM/SIGINT ->
 *   drain (deregister, finish what is in flight, up to --drain-timeout) ->
 *   free -> exit 0; a second signal exits at once (status 1); a start-up
 *   failure exits 1 with the reason.
 */
#ifndef SL_DECODE_WORKER_WORKER_MAIN_H
#define SL_DECODE_WORKER_WORKER_MAIN_H

#include "common/base/config.h"
#include "services/decode-worker/worker.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct worker_main_desc {
    const char *program;  /* "sluice-decode-worker" */
    const char *log_name; /* "decode-worker" */
    const char *summary;  /* --help's one-line description */
    const char *work;     /* what drains: "requests", "jobs" */
    const sl_config_entry_t *table;
    size_t table_n;
    /* The program's service, behind an opaque handle. */
    int (*start)(const worker_cfg_t *cfg, void **out, char *why, size_t why_len);
    void (*drain)(void *h);
    bool (*idle)(void *h);
    void (*free)(void *h);
} worker_main_desc_t;

/* Runs the program. Returns the exit status. */
int worker_main_run(const worker_main_desc_t *d, int argc, char **argv);

#endif
