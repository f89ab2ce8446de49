/* prefill.h - sluice-prefill-worker: computes prompts' KV for decode workers.
 *
 * A prefill worker loads the same model as the decode workers (model_host.h
 * of the decode worker's library: the same flags, the same block layout),
 * runs an engine on its own thread, and serves PrefillJobs:
 *   - sluice.<ns>.prefill.jobs, queue group "prefill": each job goes to one
 *     prefill worker. The job names the decode worker (instance id), its UCX
 *     worker address and packed rkey (kv_transfer.h blobs), the remote base
 *     and block size of its KV pool, and one destination block per prompt
 *     block, of which the first skip_blocks the decode worker already has.
 *   - the prompt runs as an ENGINE_MODE_PREFILL request: batched with other
 *     jobs, chunked under --max-batch-tokens, reusing this worker's prefix
 *     cache; its first token is sampled with the job's sampling parameters.
 *   - the blocks [skip_blocks, n) (the last one partial when the prompt is
 *     not a multiple of the block size) are written with kvx_write into the
 *     decode worker's blocks, then PrefillDone (first token + logprob, bytes,
 *     transfer time, cached tokens) goes to the job's reply subject, and the
 *     blocks are unpinned (they stay in the prefix cache).
 *   - a job that cannot be served (malformed, other model or geometry,
 *     corrupt or stale descriptors, deadline passed, the write failed because
 *     the decode worker is gone) is answered with PrefillDone{error} when it
 *     has a reply subject, and its blocks are freed; the worker stays up.
 *   - discovery: component "prefill", endpoint "jobs", with model, geometry
 *     and ucx_address (base64 of this worker's kvx address blob);
 *     KV events on sluice.<ns>.kv_events (so routers count its cache) and
 *     LoadMetrics (component "prefill", prefill_queue_depth = jobs in flight)
 *     on sluice.<ns>.load; /metrics and /health on --system-port.
 *
 * Lifecycle, ownership and threads as worker.h: prefill_start() -> serving;
 * prefill_drain() deregisters and refuses new jobs; prefill_idle() is true
 * when no job is in flight; prefill_free() stops everything. The engine
 * thread owns the engine; jobs reach it through engine_submit(); transfer
 * completions run on the kvx progress thread and hand the unpin back with
 * engine_submit_release().
 */
#ifndef SL_PREFILL_WORKER_PREFILL_H
#define SL_PREFILL_WORKER_PREFILL_H

#include "common/base/config.h"
#include "services/decode-worker/worker.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct prefill_worker prefill_worker_t;

/* The configuration table over worker_cfg_t (model flags as the decode
 * worker's, plus --transfer-timeout). */
extern const sl_config_entry_t prefill_config_table[];
extern const size_t prefill_config_table_n;

/* Loads the model, creates the UCX agent and registers the KV pool, and
 * starts serving. Returns 0 and *out, or a negative SL_E* code with a reason
 * in why: SL_EINVAL (bad config, the mocker: it has no KV memory to send),
 * model errors as model_host_open, SL_EIO (UCX or the system port),
 * SL_EUNAVAIL (NATS unreachable), SL_ENOMEM. */
int prefill_start(const worker_cfg_t *cfg, prefill_worker_t **out, char *why, size_t why_len);

void prefill_drain(prefill_worker_t *p);
bool prefill_idle(prefill_worker_t *p);

/* Stops and frees. NULL is a no-op. */
void prefill_free(prefill_worker_t *p);

#endif
