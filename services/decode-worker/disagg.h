/* disagg.h - conditional disaggregation on the decode worker: which requests
 * prefill remotely, the PrefillJob they become, and what happens when the
 * answer comes (or does not).
 *
 * Per request (bus thread, disagg_want): remote only with --disagg auto or
 * always, a registered prefill worker (a discovery watch on component
 * "prefill", same model, block size and block bytes in the registration);
 * auto also needs a prompt longer than --max-local-prefill and a queue that
 * is not saturated: the larger of the prefill workers' summed
 * prefill_queue_depth (their LoadMetrics, covering every decode worker's
 * jobs) and this worker's jobs in flight stays below prefill workers x
 * --prefill-queue-max. Such a request
 * goes to the engine as ENGINE_MODE_ADOPT (adopt_min_tokens =
 * --max-local-prefill for auto, 0 for always), so the engine makes the final
 * call on the uncached length after its own prefix-cache hit.
 *
 * When the engine has reserved the blocks (engine thread, disagg_job_send),
 * a PrefillJob goes to sluice.<ns>.prefill.jobs (queue group "prefill") with
 * this worker's UCX address and rkey blobs (kv_transfer.h; exported once at
 * start from the registered KV pool), remote_base, block_bytes, the reserved
 * block ids, skip_blocks = the local prefix-cache hit, the sampling
 * parameters, deadline = now + --prefill-timeout, and a reply subject of
 * this worker (sluice.<ns>.backend.prefill_done.<random>). Descriptors
 * travel in the job, so a prefill worker needs no etcd lookup and always
 * sees the decode worker's current incarnation; the registration carries
 * the same descriptor (ucx_address, base64) for tools.
 *
 * With a prefill hint the job goes to that worker's own subject instead,
 * with a reply subject of this worker (...backend.prefill_ack.<random>.<tag>):
 * disagg_job_send never waits on the bus; the receipt or "no responders"
 * (then the queue group) is handled on the bus thread.
 *
 * A PrefillDone whose active-message bytes have not all landed leaves the
 * job waiting; the kvx agent's receive callback (kvx_agent_recv_notify, set
 * on the agent by disagg_new - so also on a caller's agent - and cleared by
 * disagg_free) wakes the engine, whose disagg_expire adopts it.
 *
 * PrefillDone (bus thread) -> engine_submit_adopt_done() with the first
 * token and logprob, or engine_submit_adopt_fail() on an error. No answer
 * by the deadline plus a grace period (disagg_expire, engine thread) ->
 * engine_adopt_fail(): the request prefills locally. The grace covers a
 * prefill worker's write still landing: it starts no write after the
 * deadline and bounds each write by it. A late PrefillDone is ignored.
 *
 * Metrics on the worker's registry: sluice_worker_prefills_total{where},
 * sluice_worker_remote_prefill_failures_total{reason},
 * sluice_worker_kv_transfer_bytes_total, sluice_worker_kv_transfer_seconds,
 * sluice_worker_remote_prefill_seconds, sluice_worker_prefill_workers,
 * sluice_worker_remote_prefills_inflight.
 *
 * Ownership: disagg_new() returns a handle freed with disagg_free(); the bus,
 * engine, forward pass and registry are borrowed and must outlive it.
 * Thread-safety: all functions are thread-safe; disagg_job_send(),
 * disagg_expire() and disagg_request_end() belong to the engine thread.
 */
#ifndef SL_DECODE_WORKER_DISAGG_H
#define SL_DECODE_WORKER_DISAGG_H

#include "common/engine/engine.h"
#include "common/runtime/bus.h"
#include "common/runtime/discovery.h"
#include "common/runtime/metrics.h"
#include "common/transfer/kv_transfer.h"
#include "services/decode-worker/request.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct disagg disagg_t;

typedef struct disagg_opts {
    int mode;                   /* WORKER_DISAGG_* */
    uint32_t max_local_prefill; /* tokens */
    uint32_t timeout_ms;        /* --prefill-timeout */
    uint32_t queue_max;         /* jobs in flight per prefill worker (auto) */
    const char *ns;
    const char *model;       /* served model name, put in jobs */
    const sl_forward_t *fwd; /* KV memory to register (kv_base, block_bytes) */
    engine_t *engine;        /* adopt done / fail go here */
    bus_t *bus;
    metrics_registry_t *reg;
    /* Optional, borrowed: an agent and the region holding fwd's KV memory
     * (kvx_region_alloc), made before the model; else disagg_new creates an
     * agent and registers kv_base itself. */
    kvx_agent_t *kvx;
    kvx_region_t *region;
} disagg_opts_t;

/* Creates the UCX agent, registers the KV pool and subscribes the reply
 * subject. With mode off, or a forward pass without host KV memory (the
 * mocker), returns 0 and a handle that never goes remote. Returns SL_EINVAL,
 * SL_ENOMEM, SL_EIO (UCX) or a bus error. */
int disagg_new(const disagg_opts_t *o, disagg_t **out);

/* Unsubscribes, drops the watch, unregisters the pool and frees. Call after
 * the engine thread has stopped. NULL is a no-op. */
void disagg_free(disagg_t *d);

/* Starts / stops counting prefill workers through disc (the watch must be
 * stopped before disc is closed). */
int disagg_watch(disagg_t *d, discovery_t *disc);
void disagg_unwatch(disagg_t *d);

/* Base64 of the pool's combined descriptor for the registration, or NULL
 * when not remote-capable. Valid until disagg_free. */
const char *disagg_desc_b64(const disagg_t *d);

/* Bus thread: whether r should try remote prefill; sets *adopt_min. */
bool disagg_want(disagg_t *d, const wreq_t *r, uint32_t *adopt_min);

/* Engine thread, from the output callback of r's reserved output: sends
 * the PrefillJob (worker_id = this worker's instance id). On failure the
 * reservation is given back (engine_submit_adopt_fail) and the request
 * prefills locally. */
void disagg_job_send(disagg_t *d, const wreq_t *r, const engine_output_t *o, uint64_t worker_id);

/* Engine thread: adopts jobs whose active-message data has all landed
 * since their PrefillDone, and fails over those past their deadline. */
void disagg_expire(disagg_t *d);

/* Engine thread, on r's final output: forgets its job and counts its
 * prefill as local or remote. A request that ends while its job is pending
 * (cancel, deadline) keeps the job until PrefillDone or the timeout, which
 * then frees the engine's orphaned blocks (engine_adopt_fail), so a late
 * write never lands in blocks given to another request. */
void disagg_request_end(disagg_t *d, const char *request_id);

/* Remote jobs in flight (for LoadMetrics prefill_queue_depth). */
uint32_t disagg_inflight(disagg_t *d);

#endif
