/* worker_host.h - the start-up and engine-thread pieces that
 * sluice-decode-worker (worker.c) and sluice-prefill-worker (prefill.c) do the
 * same way: the served model name, the system server (/metrics, /health),
 * discovery with its registration, the kv_events metric, the kv_resync
 * handler body and the engine step's failure path. worker_bus.h holds the
 * NATS side they share.
 *
 * Ownership: handles returned in *out are the caller's (sysserver_stop,
 * discovery_close); every other pointer is borrowed for the call.
 * Thread-safety: the start-up helpers run on the starting thread;
 * worker_host_resync_enqueue() on any bus thread, worker_host_kv_events_collect()
 * on the metrics collector, worker_host_step_failed() on the engine thread.
 */
#ifndef SL_DECODE_WORKER_WORKER_HOST_H
#define SL_DECODE_WORKER_WORKER_HOST_H

#include "common/engine/engine.h"
#include "common/runtime/bus.h"
#include "common/runtime/discovery.h"
#include "common/runtime/metrics.h"
#include "common/runtime/sysserver.h"
#include "services/decode-worker/kv_publisher.h"
#include "services/decode-worker/worker.h"

#include <stddef.h>
#include <stdint.h>

/* Writes the name the worker serves under into out (out_len bytes, cut to
 * fit): --served-model-name when set, else the last component of --model
 * (trailing slashes ignored). cfg->model must be set. */
void worker_host_model_name(const worker_cfg_t *cfg, char *out, size_t out_len);

/* Starts /metrics (reg) and /health (health, ud) on --system-port, bound to
 * $SLUICE_SYSTEM_HOST when set (else every address). A negative port means
 * no server: returns 0 with *out NULL. Returns 0, or the sysserver_start()
 * code with a reason in why. */
int worker_host_sysserver_start(const worker_cfg_t *cfg, metrics_registry_t *reg,
                                sysserver_health_fn health, void *ud, sysserver_t **out, char *why,
                                size_t why_len);

/* discovery_open() for namespace ns with --etcd and --lease-ttl; on_instance
 * (ud) is told of each new instance id. Returns 0, or the discovery_open()
 * code with a reason in why. */
int worker_host_discovery_open(const worker_cfg_t *cfg, const char *ns,
                               discovery_instance_fn on_instance, void *ud, discovery_t **out,
                               char *why, size_t why_len);

/* discovery_register() of component/endpoint with meta_json. etcd not
 * answering (SL_EUNAVAIL, SL_ETIMEDOUT) is not an error: discovery registers
 * in the background once it answers, so that is logged and 0 returned.
 * Other codes are returned with a reason in why. */
int worker_host_register(discovery_t *d, const worker_cfg_t *cfg, const char *component,
                         const char *endpoint, const char *meta_json, char *why, size_t why_len);

/* Metrics collect step: raises counter to the KV events kvpub has published
 * (it only grows). */
void worker_host_kv_events_collect(kvpub_t *kvpub, metrics_counter_t *counter);

/* Body of a kv_resync subscription callback: queues the KvResyncRequest in
 * msg for the engine thread (kvpub_resync_enqueue) and wakes engine; a
 * malformed request is counted in malformed and dropped. */
void worker_host_resync_enqueue(kvpub_t *kvpub, engine_t *engine, metrics_counter_t *malformed,
                                const bus_msg_t *msg);

/* Engine thread, after engine_step() returned rc < 0: logs it at most once a
 * second (*last_warn_ns, monotonic, starts at 0) and sleeps 1 ms so a stuck
 * queue does not spin. */
void worker_host_step_failed(int rc, int64_t *last_warn_ns);

#endif
