/* router.h - the sluice-router service: wiring of the prefix index, the
 * predicted load and the cost to NATS and discovery.
 *
 * A router_t
 *   - watches discovery for `backend` workers (routing targets) and `kvm`
 *     kv-managers (shared holders); a worker whose block_size or model
 *     differs from the router's is refused with a log line saying why; a
 *     worker whose lease goes is purged from the index and the load;
 *   - consumes KvEventBatch on sluice.<ns>.kv_events, tracking event_id per
 *     (worker, tier): a gap, or a first batch that does not start at 0 (a
 *     router started late), or a newly discovered worker, triggers a
 *     KvResyncRequest to sluice.<ns>.<component>.kv_resync.<instance_hex>
 *     whose reply, streamed in KvEventBatch parts (bus_stream_*), is staged
 *     until its end-of-stream and then applied in one go: a dump (resync =
 *     true) replaces that tier's state, a replay adds the missing events; a
 *     reply cut short changes nothing and is retried;
 *   - consumes LoadMetrics (sluice.<ns>.load) and ActiveSeqEvent
 *     (sluice.<ns>.router.active: ADD from other replicas, PREFILL_DONE and
 *     FREE from whoever sees the request progress);
 *   - answers RouteRequest on sluice.<ns>.router.route in queue group
 *     `router`, and publishes each decision as an ActiveSeqEvent ADD so that
 *     replicas agree on predicted load;
 *   - in approx mode indexes its own (and its replicas') decisions with a TTL
 *     instead of KV events.
 * Tie-breaks and sampling are seeded by the request id, so replicas with the
 * same state pick the same worker.
 *
 * Thread-safety: router_new/router_free from one thread; the query functions
 * may be called from any thread (they take the router's lock). Internally NATS
 * callbacks, the discovery watch and one maintenance thread share one mutex.
 */
#ifndef SL_ROUTER_H
#define SL_ROUTER_H

#include "common/runtime/metrics.h"
#include "services/router/router_cost.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct router router_t;

typedef struct router_opts {
    const char *nats_url; /* NULL: $SLUICE_NATS or default */
    const char *etcd_url; /* NULL: $SLUICE_ETCD or default */
    const char *ns;       /* NULL: "default" */
    const char *model;    /* served model; NULL or "": accept any */
    uint32_t block_size;  /* tokens per block; 0: 16 */
    router_mode_t mode;
    double prefill_scale; /* 0: 1.0 */
    /* Load per worker. queue_weight 0: DESIGN.md's load, the predicted active
     * blocks. queue_weight > 0: queue_weight * queued prefill blocks (the
     * worker's LoadMetrics pending_prefill_tokens plus what was routed since,
     * active_seqs_queued) + active_weight * active blocks: queued prefill is
     * what a new request waits behind, decoding context costs it little. */
    double queue_weight;         /* >= 0 */
    double active_weight;        /* >= 0; used only with queue_weight > 0 */
    double temperature;          /* 0: argmin */
    int64_t approx_ttl_ms;       /* approx mode: how long a decision is remembered; 0: 120000 */
    int64_t active_ttl_ms;       /* an unfinished sequence is dropped after; 0: 600000 */
    int64_t hot_half_life_ms;    /* hot-prefix memory; 0: 10000; < 0: credit off */
    int resync_timeout_ms;       /* 0: 2000 */
    int lease_ttl_s;             /* discovery lease; 0: 10 */
    bool register_self;          /* register as component `router` */
    metrics_registry_t *metrics; /* borrowed; NULL: no metrics */
} router_opts_t;

/* Connects to NATS, opens discovery, subscribes, starts watching and the
 * maintenance thread. NATS must be reachable (SL_EUNAVAIL otherwise); etcd
 * may be down (discovery retries in the background). Returns 0 and *out, or
 * SL_EINVAL / SL_EUNAVAIL / SL_ENOMEM / another SL_E* code. */
int router_new(const router_opts_t *opts, router_t **out);

/* Revokes the registration, unsubscribes, stops the threads, frees. NULL is
 * a no-op. */
void router_free(router_t *r);

/* This router's id (its discovery instance id, or a random id when etcd was
 * unreachable at start). */
uint64_t router_id(const router_t *r);

/* True while connected to NATS. */
bool router_healthy(router_t *r);

typedef struct router_stats {
    uint64_t routed;          /* decisions made here */
    uint64_t route_errors;    /* requests answered with an error */
    uint64_t batches_applied; /* KvEventBatch applied (live or resync) */
    uint64_t batches_dropped; /* malformed, refused or unknown worker, stale */
    uint64_t block_events;    /* stored + removed blocks applied */
    uint64_t gaps;            /* event_id gaps seen */
    uint64_t resyncs_ok;      /* resync replies applied */
    uint64_t resyncs_failed;  /* resync requests without a usable reply */
    uint64_t resync_parts;    /* messages of the applied (streamed) resync replies */
    uint64_t workers_refused; /* discovery records refused */
    uint64_t workers_purged;  /* workers whose lease went */
    uint64_t workers;         /* accepted routing targets now */
    uint64_t indexed_blocks;  /* distinct hashes in the event index */
    uint64_t active_seqs;     /* sequences in the predicted load */
} router_stats_t;

void router_stats_get(router_t *r, router_stats_t *out);

/* Whether worker is an accepted routing target. */
bool router_worker_accepted(router_t *r, uint64_t worker_id);

/* Predicted load (active blocks) of worker now. */
double router_worker_load(router_t *r, uint64_t worker_id);

/* Blocks the event index holds for worker in tier (0 device, 1 host, 2 disk). */
uint64_t router_worker_blocks(router_t *r, uint64_t worker_id, int tier);

/* Decision for token_ids without committing it (no load added, nothing
 * published): *worker and *overlap. mode NULL or "" = the router's. For
 * tests and tools. Returns 0, SL_EUNAVAIL (no worker), SL_EINVAL. */
int router_decide(router_t *r, const char *request_id, const uint32_t *token_ids, size_t n_tokens,
                  const char *mode, uint64_t *worker, uint32_t *overlap);

/* Same for the prefill workers (component "prefill", never a decode target):
 * the one RouteResponse.prefill_worker_id would name. SL_EUNAVAIL: none. */
int router_decide_prefill(router_t *r, const char *request_id, const uint32_t *token_ids,
                          size_t n_tokens, const char *mode, uint64_t *worker, uint32_t *overlap);

#endif
