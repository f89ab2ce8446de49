/* load_reporter.h - LoadMetrics of one worker on sluice.<ns>.load.
 *
 * The engine thread hands a snapshot of its state over after every step
 * (loadrep_update); a reporter thread publishes a LoadMetrics every
 * interval_ms, and at once (at most one extra message per millisecond) when
 * the number of active or waiting sequences or of used KV blocks changed, so
 * routers see admissions and frees without waiting for the next tick.
 * tokens_per_s is computed from generated_tokens over the last interval.
 *
 * Ownership: loadrep_new() returns a reporter freed with loadrep_free(); the
 * bus is borrowed and must outlive it.
 * Thread-safety: every function is thread-safe (free from one thread).
 */
#ifndef SL_DECODE_WORKER_LOAD_REPORTER_H
#define SL_DECODE_WORKER_LOAD_REPORTER_H

#include "common/runtime/bus.h"

#include <stdint.h>

typedef struct loadrep loadrep_t;

typedef struct loadrep_snapshot {
    uint32_t active_seqs, waiting_seqs;
    uint64_t kv_blocks_total, kv_blocks_used, kv_blocks_cached;
    uint64_t pending_prefill_tokens;
    uint64_t requests_total;
    uint64_t generated_tokens;
    uint32_t prefill_queue_depth; /* remote prefill jobs in flight (decode: sent, prefill:
                                     accepted) */
} loadrep_snapshot_t;

/* Starts a reporter publishing on subject (copied) every interval_ms
 * (0 = 100) for component (copied, e.g. "backend"). Returns 0 and *out, or
 * SL_EINVAL / SL_ENOMEM / -errno. Nothing is published before the first
 * loadrep_update() and while the worker id is 0. */
int loadrep_new(bus_t *bus, const char *subject, const char *component, uint32_t interval_ms,
                loadrep_t **out);

/* Stops the thread and frees. NULL is a no-op. */
void loadrep_free(loadrep_t *lr);

void loadrep_set_worker_id(loadrep_t *lr, uint64_t worker_id);

/* Records the latest state; wakes the thread when it changed. */
void loadrep_update(loadrep_t *lr, const loadrep_snapshot_t *s);

/* Messages published so far. */
uint64_t loadrep_published(loadrep_t *lr);

#endif
