/* worker.h - sluice-decode-worker: a model behind the bus.
 *
 * A worker loads a Hugging Face model directory, runs the engine on its own
 * thread (the engine thread owns the engine, the model and the block pool),
 * and wires it to the rest of Sluice:
 *   - discovery: component "backend", endpoint "generate", with metadata
 *     (model, block_size, kv_blocks, context_length, vocab_size, eos ids, ...);
 *   - sluice.<ns>.backend.generate.<id>: GenerateRequest in, a stream of
 *     GenerateChunk out (request.h); requests reach the engine thread
 *     through engine_submit() (a thread-safe queue) and are batched
 *     continuously with everything else in flight;
 *   - sluice.<ns>.backend.cancel.<id>: CancelRequest; a stream writer that
 *     fails (the connection dropped) or a passed deadline cancels too;
 *   - sluice.<ns>.kv_events and sluice.<ns>.backend.kv_resync.<id>
 *     (kv_publisher.h), sluice.<ns>.load (load_reporter.h);
 *   - /metrics and /health on --system-port.
 * The subjects follow the instance id, which changes if etcd loses the lease
 * (the worker then re-registers and resubscribes under the new one).
 *
 * Lifecycle: worker_start() -> serving; worker_drain() deregisters (revokes
 * the lease) and answers new requests with an error chunk (503, so the
 * frontend retries elsewhere) while in-flight ones finish; worker_idle()
 * tells when they have; worker_free() stops everything (requests still in
 * flight then get a final 503 error chunk).
 *
 * Ownership: worker_start() returns a worker freed with worker_free(); cfg
 * is copied where needed.
 * Thread-safety: worker_drain(), worker_idle() and worker_free() are called
 * from one controlling thread (main); worker_drain() is safe to call twice.
 */
#ifndef SL_DECODE_WORKER_WORKER_H
#define SL_DECODE_WORKER_WORKER_H

#include "common/base/config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct worker worker_t;

typedef struct worker_cfg {
    sl_config_common_t common;
    char *model;             /* --model DIR (required) */
    char *served_model_name; /* default: basename of DIR */
    int engine;              /* index into worker_engine_names */
    char *mocker_params;     /* --engine mocker: parameter file, NULL = defaults */
    char *backend;           /* cpu | cuda | auto */
    uint64_t kv_blocks;      /* 0: from kv_memory_mb */
    uint64_t kv_memory_mb;   /* 0: the model's default (256 MiB) */
    uint64_t block_size;
    uint64_t max_batch_tokens;
    uint64_t max_seqs;
    uint64_t threads; /* 0: backend default */
    int64_t lease_ttl_s;
    int64_t kv_flush_ms;
    uint64_t kv_batch_events;
    int64_t load_interval_ms;
    int64_t drain_timeout_ms;
    /* disaggregated prefill (decode side) */
    int disagg;                 /* index into worker_disagg_names */
    uint64_t max_local_prefill; /* auto: remote when more uncached prompt tokens */
    int64_t prefill_timeout_ms; /* then prefill locally */
    uint64_t prefill_queue_max; /* auto: remote jobs in flight per prefill worker */
    /* prefill worker */
    int64_t transfer_timeout_ms;
} worker_cfg_t;

/* --disagg: "off" (always local), "auto" (remote when the uncached prompt is
 * longer than --max-local-prefill and the prefill queue is not saturated),
 * "always" (remote whenever a prefill worker is registered). */
extern const char *const worker_disagg_names[];
#define WORKER_DISAGG_OFF    0
#define WORKER_DISAGG_AUTO   1
#define WORKER_DISAGG_ALWAYS 2

/* "model" (the real forward pass), "mocker" (common/engine/mocker.h: the real
 * scheduler, pool and KV events, simulated step time, no weights).
 * NULL-terminated. */
extern const char *const worker_engine_names[];

/* Entries of worker_cfg_t that sluice-decode-worker and sluice-prefill-worker
 * share word for word (T: the struct type, worker_cfg_t). */
#define WORKER_CONFIG_MODEL_ENTRIES(T)                                                             \
    SL_CONFIG_STRING_ENTRY("served-model-name", "SLUICE_SERVED_MODEL_NAME", T, served_model_name,  \
                           NULL,                                                                   \
                           "Model name announced and accepted (default: the directory's name)"),   \
        SL_CONFIG_STRING_ENTRY("backend", "SLUICE_BACKEND", T, backend, "cpu",                     \
                               "Kernel backend: cpu, cuda or auto"),                               \
        SL_CONFIG_UINT64_ENTRY("kv-blocks", NULL, T, kv_blocks, "0", 0, UINT64_C(1) << 30,         \
                               "KV blocks (0 = as many as --kv-memory-mb holds)"),                 \
        SL_CONFIG_UINT64_ENTRY("kv-memory-mb", NULL, T, kv_memory_mb, "0", 0, UINT64_C(1) << 24,   \
                               "KV cache memory in MiB (0 = 256)"),                                \
        SL_CONFIG_UINT64_ENTRY("threads", "SLUICE_THREADS", T, threads, "0", 0, 1024,              \
                               "CPU threads of the backend (0 = default)")
#define WORKER_CONFIG_BUS_ENTRIES(T)                                                               \
    SL_CONFIG_INT64_ENTRY("lease-ttl", NULL, T, lease_ttl_s, "10", 1, 3600,                        \
                          "etcd lease TTL in seconds"),                                            \
        SL_CONFIG_DURATION_ENTRY("kv-flush", NULL, T, kv_flush_ms, "5ms", 1, 10000,                \
                                 "Publish pending KV events this long after the first"),           \
        SL_CONFIG_UINT64_ENTRY("kv-batch-events", NULL, T, kv_batch_events, "256", 1, 65536,       \
                               "Publish KV events when this many are pending"),                    \
        SL_CONFIG_DURATION_ENTRY("load-interval", NULL, T, load_interval_ms, "100ms", 10, 60000,   \
                                 "LoadMetrics period")

/* The configuration table (flags, environment, defaults, bounds). */
extern const sl_config_entry_t worker_config_table[];
extern const size_t worker_config_table_n;

/* Loads the model and starts serving. Returns 0 and *out, or a negative
 * SL_E* code with a reason in why (len bytes): SL_EINVAL (bad config),
 * SL_ENOTFOUND / SL_EFORMAT / SL_EUNSUPPORTED (model or tokenizer), SL_EIO
 * (system port), SL_EUNAVAIL (NATS unreachable), SL_ENOMEM. etcd being down
 * is not an error: registration happens when it answers. */
int worker_start(const worker_cfg_t *cfg, worker_t **out, char *why, size_t why_len);

/* Starts draining: deregisters and refuses new requests with 503. */
void worker_drain(worker_t *w);

/* True when no request is in flight. */
bool worker_idle(worker_t *w);

/* Stops and frees. NULL is a no-op. */
void worker_free(worker_t *w);

#endif
