/* worker_bus.c - connection, KV event publisher and load reporter of a
 * model-serving worker (see worker_bus.h). */
#include "services/decode-worker/worker_bus.h"
#include "common/base/err.h"

#include <stdio.h>

int worker_bus_open(const worker_cfg_t *cfg, const char *client, const char *ns,
                    const char *model_name, uint32_t block_size, const char *component, bus_t **bus,
                    kvpub_t **kvpub, loadrep_t **loadrep, char *why, size_t why_len) {
    char subj[BUS_SUBJECT_MAX];
    bus_opts_t bo = {.url = cfg->common.nats, .name = client};
    int rc = bus_connect(bus, &bo);
    if (rc) {
        snprintf(why, why_len, "cannot connect to NATS at %s: %s", cfg->common.nats,
                 bus_last_error());
        return rc;
    }
    rc = bus_subject_topic(subj, sizeof subj, ns, "kv_events");
    if (rc) return rc;
    kvpub_opts_t ko = {.subject = subj,
                       .model = model_name,
                       .block_size = block_size,
                       .max_events = (uint32_t)cfg->kv_batch_events,
                       .flush_ms = (uint32_t)cfg->kv_flush_ms};
    rc = kvpub_new(*bus, &ko, kvpub);
    if (rc) return rc;
    rc = bus_subject_topic(subj, sizeof subj, ns, "load");
    if (rc == 0) rc = loadrep_new(*bus, subj, component, (uint32_t)cfg->load_interval_ms, loadrep);
    return rc;
}
