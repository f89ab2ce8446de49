/* worker_bus.h - the NATS side every model-serving worker opens the same way:
 * the connection, the KV event publisher (sluice.<ns>.kv_events) and the
 * load reporter (sluice.<ns>.load). Shared by sluice-decode-worker and
 * sluice-prefill-worker.
 *
 * Ownership: on success the three handles are the caller's (bus_free,
 * kvpub_free, loadrep_free, in the caller's teardown order); on failure
 * whatever was opened is returned too (NULL otherwise), for the caller's
 * usual cleanup. Thread-safety: call from the starting thread.
 */
#ifndef SL_DECODE_WORKER_WORKER_BUS_H
#define SL_DECODE_WORKER_WORKER_BUS_H

#include "common/runtime/bus.h"
#include "services/decode-worker/kv_publisher.h"
#include "services/decode-worker/load_reporter.h"
#include "services/decode-worker/worker.h"

#include <stddef.h>
#include <stdint.h>

/* client: the NATS connection name ("sluice-decode-worker"); component: the
 * LoadMetrics component ("backend", "prefill"). Returns 0, or a negative
 * SL_E* code with a reason in why (why_len bytes). */
int worker_bus_open(const worker_cfg_t *cfg, const char *client, const char *ns,
                    const char *model_name, uint32_t block_size, const char *component, bus_t **bus,
                    kvpub_t **kvpub, loadrep_t **loadrep, char *why, size_t why_len);

#endif
