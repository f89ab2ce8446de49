/* worker.c - service wiring of sluice-decode-worker (see worker.h): model and
 * engine thread, bus subscriptions, discovery, metrics and health. */
#include "services/decode-worker/worker.h"
#include "common/base/clock.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/engine/engine.h"
#include "common/engine/mocker.h"
#include "common/engine/model.h"
#include "common/engine/tokenizer.h"
#include "common/runtime/bus.h"
#include "common/runtime/discovery.h"
#include "common/runtime/metrics.h"
#include "common/runtime/sysserver.h"
#include "proto/sluice.pb-c.h"
#include "services/decode-worker/disagg.h"
#include "services/decode-worker/kv_publisher.h"
#include "services/decode-worker/load_reporter.h"
#include "services/decode-worker/model_host.h"
#include "services/decode-worker/request.h"
#include "services/decode-worker/worker_bus.h"
#include "services/decode-worker/worker_host.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *const worker_disagg_names[] = {"off", "auto", "always", NULL};

#define WCFG worker_cfg_t
const sl_config_entry_t worker_config_table[] = {
    SL_CONFIG_COMMON(WCFG, common),
    SL_CONFIG_STRING_ENTRY("model", "SLUICE_MODEL", WCFG, model, NULL,
                           "Hugging Face model directory (required)"),
    WORKER_CONFIG_MODEL_ENTRIES(WCFG),
    SL_CONFIG_ENUM_ENTRY("engine", "SLUICE_ENGINE", WCFG, engine, "model", worker_engine_names,
                         "Engine: model (real forward pass) or mocker (no weights, simulated "
                         "step time; needs only config.json and the tokenizer in --model)"),
    SL_CONFIG_STRING_ENTRY("mocker-params", "SLUICE_MOCKER_PARAMS", WCFG, mocker_params, NULL,
                           "Mocker performance model (JSON, deploy/mocker/); default built in"),
    SL_CONFIG_UINT64_ENTRY("block-size", NULL, WCFG, block_size, "16", 1, 1024,
                           "Tokens per KV block"),
    SL_CONFIG_UINT64_ENTRY("max-batch-tokens", NULL, WCFG, max_batch_tokens, "512", 1,
                           UINT64_C(1) << 20, "Token budget per engine step"),
    SL_CONFIG_UINT64_ENTRY("max-seqs", NULL, WCFG, max_seqs, "256", 1, 65536,
                           "Sequences running at once"),
    WORKER_CONFIG_BUS_ENTRIES(WCFG),
    SL_CONFIG_DURATION_ENTRY("drain-timeout", NULL, WCFG, drain_timeout_ms, "60s", 0,
                             INT64_C(3600000), "On SIGTERM, wait this long for in-flight requests"),
    SL_CONFIG_ENUM_ENTRY("disagg", "SLUICE_DISAGG", WCFG, disagg, "off", worker_disagg_names,
                         "Remote prefill on prefill workers: off, auto (long uncached prompts "
                         "while the prefill queue has room) or always"),
    SL_CONFIG_UINT64_ENTRY("max-local-prefill", NULL, WCFG, max_local_prefill, "256", 0,
                           UINT64_C(1) << 24,
                           "--disagg auto: prefill remotely above this many uncached tokens"),
    SL_CONFIG_DURATION_ENTRY("prefill-timeout", NULL, WCFG, prefill_timeout_ms, "10s", 10,
                             INT64_C(600000),
                             "Wait this long for a remote prefill, then prefill locally"),
    SL_CONFIG_UINT64_ENTRY("prefill-queue-max", NULL, WCFG, prefill_queue_max, "4", 1, 65536,
                           "--disagg auto: remote jobs in flight per prefill worker at most"),
};
const size_t worker_config_table_n = sizeof worker_config_table / sizeof worker_config_table[0];

#define WORKER_EARLY_CANCELS 64

struct worker {
    char model_name[256];
    char ns[128];
    model_host_t mh;         /* model or mocker, tokenizer, geometry */
    kvx_agent_t *kvx;        /* --disagg: UCX agent made before the model */
    kvx_region_t *kv_region; /* and the pool it allocated for the KV cache */
    engine_t *engine;

    bus_t *bus;
    discovery_t *disc;
    kvpub_t *kvpub;
    loadrep_t *loadrep;
    disagg_t *disagg; /* remote prefill (never remote with --disagg off) */
    metrics_registry_t *reg;
    sysserver_t *sys;

    pthread_mutex_t sub_mu; /* subscriptions follow the instance id */
    bus_sub_t *sub_gen, *sub_cancel, *sub_resync;
    _Atomic uint64_t instance_id;

    pthread_t th;
    bool th_started;
    atomic_bool stop, draining;
    atomic_uint_fast64_t inflight, requests_total;

    pthread_mutex_t req_mu; /* the live requests and early cancels */
    wreq_t *reqs;
    /* Cancels that arrived before their request (the two come on different
     * subscriptions, so a cancel can overtake): ring of ids. */
    char early_cancel[WORKER_EARLY_CANCELS][WREQ_MAX_ID_LEN + 1];
    uint32_t early_next;

    /* metrics */
    metrics_counter_t *m_requests, *m_malformed, *m_rejected, *m_cancels, *m_gen_tokens,
        *m_prompt_tokens, *m_cached_tokens, *m_kv_events, *m_resyncs;
    metrics_counter_t *m_finish[5];
    metrics_gauge_t *m_active, *m_waiting, *m_kv_total, *m_kv_used, *m_kv_cached, *m_kv_usage,
        *m_inflight;
    metrics_histogram_t *m_ttft, *m_prefill_step, *m_decode_step;
};

/* ---- requests ------------------------------------------------------------------ */

static void worker_req_unlink(worker_t *w, wreq_t *r) {
    pthread_mutex_lock(&w->req_mu);
    if (r->prev)
        r->prev->next = r->next;
    else
        w->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    pthread_mutex_unlock(&w->req_mu);
}

/* Engine thread: one output of one request. */
static void worker_on_output(const engine_output_t *o, void *ud) {
    wreq_t *r = ud;
    worker_t *w = r->owner;
    bool final = o->finish != ENGINE_FINISH_NONE;
    if (o->reserved) { /* blocks reserved for a remote prefill */
        disagg_job_send(w->disagg, r, o, atomic_load(&w->instance_id));
        return;
    }
    int64_t now = sl_mono_ns();
    if (o->n_tokens && !r->t_first_ns) {
        r->t_first_ns = now;
        metrics_histogram_observe(w->m_ttft, (double)(now - r->t_arrival_ns) * 1e-9);
    }
    metrics_counter_add(w->m_gen_tokens, o->n_tokens);
    /* Counted before the final chunk goes out, so a client that saw the end
     * also sees it in /metrics. */
    if (final) disagg_request_end(w->disagg, r->id);
    int rc = wreq_send(r, o, w->mh.tok, atomic_load(&w->instance_id));
    if (!final) {
        bool late = r->deadline_unix_ms && sl_wall_ms() > r->deadline_unix_ms;
        if (rc || late) {
            RLOG_INFO(r->id, "cancelling: %s",
                      rc ? "the requester's stream is gone" : "deadline passed");
            engine_cancel(w->engine, r->id); /* delivers the final output now */
        }
        return;
    }
    if (rc && rc != SL_ECLOSED) RLOG_WARN(r->id, "final chunk not sent: %s", sl_strerror(rc));
    if ((unsigned)o->finish < 5) metrics_counter_inc(w->m_finish[o->finish]);
    if (o->finish == ENGINE_FINISH_ERROR) RLOG_INFO(r->id, "failed: %s", sl_strerror(o->error));
    metrics_counter_add(w->m_prompt_tokens, o->prompt_tokens);
    metrics_counter_add(w->m_cached_tokens, o->cached_tokens);
    worker_req_unlink(w, r);
    wreq_free(r);
    atomic_fetch_sub(&w->inflight, 1);
}

/* Bus thread: a GenerateRequest. */
static void worker_on_generate(bus_t *bus, const bus_msg_t *msg, void *ud) {
    worker_t *w = ud;
    Sluice__V1__GenerateRequest *m = NULL;
    bus_stream_writer_t *bw = NULL;
    wreq_t *r = NULL;
    char why[512];
    int rc;
    uint64_t id = atomic_load(&w->instance_id);
    metrics_counter_inc(w->m_requests);
    atomic_fetch_add(&w->requests_total, 1);
    if (!bus_msg_reply(msg)) {
        metrics_counter_inc(w->m_malformed);
        LOG_WARN("generate request without a reply subject dropped");
        goto out;
    }
    rc = bus_stream_writer_create(bus, msg, &bw);
    if (rc) {
        metrics_counter_inc(w->m_malformed);
        goto out;
    }
    if (bus_msg_unpack(msg, &sluice__v1__generate_request__descriptor, (ProtobufCMessage **)&m)) {
        metrics_counter_inc(w->m_malformed);
        LOG_WARN("malformed GenerateRequest (%zu bytes) dropped", bus_msg_len(msg));
        /* Answer anyway, so the requester fails fast instead of timing out. */
        wreq_send_error(bw, NULL, id, SL_EPROTO, 400, "malformed GenerateRequest");
        goto out;
    }
    if (atomic_load(&w->draining)) {
        metrics_counter_inc(w->m_rejected);
        wreq_send_error(bw, NULL, id, SL_EUNAVAIL, 503, "worker is draining; retry elsewhere");
        goto out;
    }
    wreq_limits_t lim = {
        .model = w->model_name, .vocab_size = w->mh.vocab_size, .max_context = w->mh.max_context};
    rc = wreq_new(m, &lim, bw, &r, why, sizeof why);
    if (rc) {
        metrics_counter_inc(w->m_rejected);
        LOG_INFO("request refused: %s", why);
        wreq_send_error(bw, NULL, id, rc, wreq_http_status(rc), why);
        goto out;
    }
    bw = NULL; /* owned by r */
    r->owner = w;
    r->t_arrival_ns = sl_mono_ns();
    if (r->deadline_unix_ms && sl_wall_ms() > r->deadline_unix_ms) {
        metrics_counter_inc(w->m_rejected);
        wreq_send_error(r->w, r->id, id, SL_ETIMEDOUT, 504, "deadline passed before admission");
        goto out;
    }
    engine_request_t er;
    wreq_engine_request(r, &er);
    er.on_output = worker_on_output;
    er.ud = r;
    uint32_t adopt_min = 0;
    if (disagg_want(w->disagg, r, &adopt_min)) {
        er.mode = ENGINE_MODE_ADOPT;
        er.adopt_min_tokens = adopt_min;
    }
    /* Linking and submitting under req_mu orders this against cancels. */
    pthread_mutex_lock(&w->req_mu);
    bool cancelled = false;
    for (uint32_t i = 0; i < WORKER_EARLY_CANCELS && !cancelled; i++)
        if (strcmp(w->early_cancel[i], r->id) == 0) {
            w->early_cancel[i][0] = 0;
            cancelled = true;
        }
    rc = 0;
    if (!cancelled) {
        atomic_fetch_add(&w->inflight, 1);
        r->prev = NULL;
        r->next = w->reqs;
        if (w->reqs) w->reqs->prev = r;
        w->reqs = r;
        rc = engine_submit(w->engine, &er);
        if (rc) {
            w->reqs = r->next;
            if (w->reqs) w->reqs->prev = NULL;
            r->next = NULL;
            atomic_fetch_sub(&w->inflight, 1);
        }
    }
    pthread_mutex_unlock(&w->req_mu);
    if (cancelled) {
        engine_output_t co = {.finish = ENGINE_FINISH_CANCELLED};
        wreq_send(r, &co, NULL, id);
        metrics_counter_inc(w->m_finish[ENGINE_FINISH_CANCELLED]);
        goto out;
    }
    if (rc) {
        wreq_send_error(r->w, r->id, id, rc, 503, "could not queue the request");
        goto out;
    }
    RLOG_DEBUG(r->id, "queued: %u prompt tokens (%u migrated)", r->n_tokens, r->n_prior);
    r = NULL; /* the engine thread owns it now */
out:
    wreq_free(r);
    bus_stream_writer_free(bw);
    if (m) sluice__v1__generate_request__free_unpacked(m, NULL);
}

/* Bus thread: a CancelRequest (unpacked by the typed subscription). */
static void worker_on_cancel(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *pm,
                             void *ud) {
    (void)bus;
    (void)msg;
    worker_t *w = ud;
    const Sluice__V1__CancelRequest *c = (const Sluice__V1__CancelRequest *)pm;
    if (!c->request_id || !c->request_id[0] || strlen(c->request_id) > WREQ_MAX_ID_LEN) {
        metrics_counter_inc(w->m_malformed);
        return;
    }
    metrics_counter_inc(w->m_cancels);
    RLOG_DEBUG(c->request_id, "cancel requested");
    pthread_mutex_lock(&w->req_mu);
    wreq_t *r = w->reqs;
    while (r && strcmp(r->id, c->request_id) != 0) r = r->next;
    if (r) {
        engine_submit_cancel(w->engine, c->request_id);
    } else { /* not here (yet): remember it for a request still on its way */
        snprintf(w->early_cancel[w->early_next], sizeof w->early_cancel[0], "%s", c->request_id);
        w->early_next = (w->early_next + 1) % WORKER_EARLY_CANCELS;
    }
    pthread_mutex_unlock(&w->req_mu);
}

/* Bus thread: a KvResyncRequest, queued for the engine thread (the pool is
 * its; kv_publisher.h). */
static void worker_on_resync(bus_t *bus, const bus_msg_t *msg, void *ud) {
    (void)bus;
    worker_t *w = ud;
    worker_host_resync_enqueue(w->kvpub, w->engine, w->m_malformed, msg);
}

/* ---- engine thread ---------------------------------------------------------------- */

static void worker_resyncs_run(worker_t *w) {
    size_t n = kvpub_resync_run(w->kvpub, engine_pool(w->engine));
    if (n) metrics_counter_add(w->m_resyncs, n);
}

static void worker_publish_state(worker_t *w, const engine_stats_t *st) {
    metrics_gauge_set(w->m_active, st->running);
    metrics_gauge_set(w->m_waiting, st->waiting);
    metrics_gauge_set(w->m_kv_total, st->kv.total);
    metrics_gauge_set(w->m_kv_used, st->kv.used);
    metrics_gauge_set(w->m_kv_cached, st->kv.cached);
    metrics_gauge_set(w->m_kv_usage, st->kv.total ? (double)st->kv.used / st->kv.total : 0.0);
    metrics_gauge_set(w->m_inflight, (double)atomic_load(&w->inflight));
    loadrep_snapshot_t s = {.active_seqs = st->running,
                            .waiting_seqs = st->waiting,
                            .kv_blocks_total = st->kv.total,
                            .kv_blocks_used = st->kv.used,
                            .kv_blocks_cached = st->kv.cached,
                            .pending_prefill_tokens = st->pending_prefill_tokens,
                            .requests_total = atomic_load(&w->requests_total),
                            .generated_tokens = st->generated_tokens,
                            .prefill_queue_depth = disagg_inflight(w->disagg)};
    loadrep_update(w->loadrep, &s);
}

static void *worker_engine_main(void *arg) {
    worker_t *w = arg;
    engine_stats_t before, after;
    int64_t last_warn = 0;
    engine_stats_get(w->engine, &before);
    worker_publish_state(w, &before);
    while (!atomic_load(&w->stop)) {
        engine_wait(w->engine, 50);
        worker_resyncs_run(w);
        disagg_expire(w->disagg);
        int64_t t0 = sl_mono_ns();
        int rc = engine_step(w->engine);
        int64_t t1 = sl_mono_ns();
        engine_stats_get(w->engine, &after);
        if (after.steps != before.steps) {
            bool prefill = after.prompt_tokens_computed != before.prompt_tokens_computed;
            metrics_histogram_observe(prefill ? w->m_prefill_step : w->m_decode_step,
                                      (double)(t1 - t0) * 1e-9);
        }
        if (rc < 0) worker_host_step_failed(rc, &last_warn);
        worker_publish_state(w, &after);
        before = after;
    }
    return NULL;
}

/* ---- discovery and subscriptions ------------------------------------------------- */

static void worker_subs_free(worker_t *w) {
    bus_sub_free(w->sub_gen);
    bus_sub_free(w->sub_cancel);
    bus_sub_free(w->sub_resync);
    w->sub_gen = w->sub_cancel = w->sub_resync = NULL;
}

/* Subscribes the instance subjects of id (w->sub_mu held). */
static int worker_subs_open(worker_t *w, uint64_t id) {
    char s[BUS_SUBJECT_MAX];
    int rc = bus_subject_instance(s, sizeof s, w->ns, "backend", "generate", id);
    if (rc == 0) rc = bus_subscribe(w->bus, s, NULL, worker_on_generate, w, &w->sub_gen);
    if (rc == 0) rc = bus_subject_instance(s, sizeof s, w->ns, "backend", "cancel", id);
    if (rc == 0)
        rc = bus_subscribe_proto(w->bus, s, NULL, &sluice__v1__cancel_request__descriptor,
                                 worker_on_cancel, w, &w->sub_cancel);
    if (rc == 0) rc = bus_subject_instance(s, sizeof s, w->ns, "backend", "kv_resync", id);
    if (rc == 0) rc = bus_subscribe(w->bus, s, NULL, worker_on_resync, w, &w->sub_resync);
    if (rc == 0) rc = bus_flush(w->bus, 2000);
    return rc;
}

/* New lease (first registration or a re-grant after etcd lost the old one):
 * move the subscriptions and the ids in published messages. */
static void worker_on_instance(int64_t old_id, int64_t new_id, void *ud) {
    worker_t *w = ud;
    pthread_mutex_lock(&w->sub_mu);
    worker_subs_free(w);
    int rc = worker_subs_open(w, (uint64_t)new_id);
    if (rc) LOG_ERROR("subscribing as %016" PRIx64 ": %s", (uint64_t)new_id, sl_strerror(rc));
    atomic_store(&w->instance_id, (uint64_t)new_id);
    kvpub_set_worker_id(w->kvpub, (uint64_t)new_id);
    loadrep_set_worker_id(w->loadrep, (uint64_t)new_id);
    pthread_mutex_unlock(&w->sub_mu);
    if (old_id)
        LOG_WARN("instance id changed %016" PRIx64 " -> %016" PRIx64, (uint64_t)old_id,
                 (uint64_t)new_id);
    else
        LOG_INFO("serving %s as backend instance %016" PRIx64, w->model_name, (uint64_t)new_id);
}

static char *worker_meta_json(const worker_t *w, const worker_cfg_t *cfg) {
    cJSON *j = cJSON_CreateObject();
    char *s = NULL;
    if (!j) return NULL;
    cJSON_AddStringToObject(j, "model", w->model_name);
    cJSON_AddStringToObject(j, "engine", worker_engine_names[cfg->engine]);
    cJSON_AddNumberToObject(j, "block_size", w->mh.block_size);
    cJSON_AddNumberToObject(j, "kv_blocks", w->mh.n_blocks);
    cJSON_AddNumberToObject(j, "context_length", w->mh.max_context);
    cJSON_AddNumberToObject(j, "model_context_length", w->mh.model_context);
    cJSON_AddNumberToObject(j, "vocab_size", w->mh.vocab_size);
    cJSON *eos = cJSON_AddArrayToObject(j, "eos_token_ids");
    for (uint32_t i = 0; eos && i < w->mh.n_eos; i++)
        cJSON_AddItemToArray(eos, cJSON_CreateNumber(w->mh.eos[i]));
    int32_t bos = sl_tokenizer_bos_id(w->mh.tok);
    if (bos >= 0) cJSON_AddNumberToObject(j, "bos_token_id", bos);
    cJSON_AddNumberToObject(j, "max_batch_tokens", (double)cfg->max_batch_tokens);
    cJSON_AddNumberToObject(j, "max_seqs", (double)cfg->max_seqs);
    cJSON_AddStringToObject(j, "tier", "device");
    cJSON_AddStringToObject(j, "disagg", worker_disagg_names[cfg->disagg]);
    const char *desc = disagg_desc_b64(w->disagg);
    if (desc) cJSON_AddStringToObject(j, "ucx_address", desc);
    s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

/* ---- metrics and health -------------------------------------------------------- */

static int worker_metrics_init(worker_t *w) {
    metrics_registry_t *r = w->reg;
    static const double ttft_b[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    static const double step_b[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                    0.05,   0.1,   0.25,   0.5,   1,    2.5};
    w->m_requests =
        metrics_counter_new(r, "sluice_worker_requests_total", "GenerateRequests received");
    w->m_malformed = metrics_counter_new(r, "sluice_worker_malformed_total",
                                         "Malformed messages counted and dropped");
    w->m_rejected = metrics_counter_new(r, "sluice_worker_rejected_total",
                                        "Requests refused before the engine (invalid, draining)");
    w->m_cancels =
        metrics_counter_new(r, "sluice_worker_cancel_requests_total", "CancelRequests received");
    w->m_gen_tokens =
        metrics_counter_new(r, "sluice_worker_generated_tokens_total", "Tokens generated");
    w->m_prompt_tokens = metrics_counter_new(r, "sluice_worker_prompt_tokens_total",
                                             "Prompt tokens of finished requests");
    w->m_cached_tokens = metrics_counter_new(r, "sluice_worker_cached_tokens_total",
                                             "Prompt tokens served from the prefix cache");
    w->m_kv_events = metrics_counter_new(r, "sluice_worker_kv_events_total", "KV events published");
    w->m_resyncs =
        metrics_counter_new(r, "sluice_worker_kv_resyncs_total", "KV resync requests answered");
    metrics_family_t *f =
        metrics_family_new(r, METRICS_COUNTER, "sluice_worker_finished_total",
                           "Requests finished, by reason", (const char *[]){"reason"}, 1, NULL, 0);
    static const char *const reasons[5] = {"none", "stop", "length", "cancelled", "error"};
    for (int i = 0; i < 5; i++) w->m_finish[i] = metrics_counter_get(f, &reasons[i]);
    w->m_active = metrics_gauge_new(r, "sluice_worker_active_seqs", "Sequences running");
    w->m_waiting = metrics_gauge_new(r, "sluice_worker_waiting_seqs", "Sequences waiting");
    w->m_inflight = metrics_gauge_new(r, "sluice_worker_inflight_requests",
                                      "Requests accepted and not finished");
    w->m_kv_total = metrics_gauge_new(r, "sluice_worker_kv_blocks_total", "KV blocks");
    w->m_kv_used =
        metrics_gauge_new(r, "sluice_worker_kv_blocks_used", "KV blocks referenced by sequences");
    w->m_kv_cached = metrics_gauge_new(r, "sluice_worker_kv_blocks_cached",
                                       "Free KV blocks holding reusable prefixes");
    w->m_kv_usage = metrics_gauge_new(r, "sluice_worker_kv_usage", "Used / total KV blocks");
    w->m_ttft = metrics_histogram_new(r, "sluice_worker_ttft_seconds", "Arrival to first token",
                                      ttft_b, sizeof ttft_b / sizeof *ttft_b);
    w->m_prefill_step = metrics_histogram_new(r, "sluice_worker_prefill_step_seconds",
                                              "Engine steps that computed prompt tokens", step_b,
                                              sizeof step_b / sizeof *step_b);
    w->m_decode_step = metrics_histogram_new(r, "sluice_worker_decode_step_seconds",
                                             "Engine steps that only decoded", step_b,
                                             sizeof step_b / sizeof *step_b);
    if (!w->m_requests || !w->m_malformed || !w->m_rejected || !w->m_cancels || !w->m_gen_tokens ||
        !w->m_prompt_tokens || !w->m_cached_tokens || !w->m_kv_events || !w->m_resyncs || !f ||
        !w->m_finish[4] || !w->m_active || !w->m_waiting || !w->m_inflight || !w->m_kv_total ||
        !w->m_kv_used || !w->m_kv_cached || !w->m_kv_usage || !w->m_ttft || !w->m_prefill_step ||
        !w->m_decode_step)
        return SL_ENOMEM;
    return 0;
}

/* Refreshes counters kept elsewhere (the KV publisher's). */
static void worker_metrics_collect(metrics_registry_t *r, void *ud) {
    (void)r;
    worker_t *w = ud;
    worker_host_kv_events_collect(w->kvpub, w->m_kv_events);
}

static bool worker_health(void *ud, char **json) {
    worker_t *w = ud;
    bool draining = atomic_load(&w->draining);
    uint64_t id = atomic_load(&w->instance_id);
    char buf[512];
    char hex[17];
    snprintf(hex, sizeof hex, "%016" PRIx64, id);
    snprintf(buf, sizeof buf,
             "{\"status\":\"%s\",\"instance_id\":\"%s\",\"registered\":%s,\"draining\":%s,"
             "\"inflight\":%" PRIuFAST64 "}",
             draining ? "draining" : "healthy", hex, id ? "true" : "false",
             draining ? "true" : "false", atomic_load(&w->inflight));
    *json = strdup(buf);
    return !draining;
}

/* model_opts_t.kv_alloc: the KV cache in a UCX-allocated pool. */
static void *worker_kv_alloc(void *ud, size_t block_bytes, uint32_t n_blocks) {
    worker_t *w = ud;
    int rc = kvx_region_alloc(w->kvx, block_bytes, n_blocks, &w->kv_region);
    if (rc) {
        LOG_ERROR("UCX: cannot allocate a KV pool of %u blocks of %zu bytes: %s", n_blocks,
                  block_bytes, sl_strerror(rc));
        return NULL;
    }
    return kvx_region_ptr(w->kv_region);
}

/* ---- lifecycle ---------------------------------------------------------------------- */

int worker_start(const worker_cfg_t *cfg, worker_t **out, char *why, size_t why_len) {
    int rc = 0;
    worker_t *w = NULL;
    char subj[BUS_SUBJECT_MAX];
    char *meta = NULL;
    if (why && why_len) why[0] = 0;
    if (!cfg || !out || !why) return SL_EINVAL;
    *out = NULL;
    if (!cfg->model || !cfg->model[0]) {
        snprintf(why, why_len, "--model DIR is required");
        return SL_EINVAL;
    }
    w = calloc(1, sizeof *w);
    if (!w) return SL_ENOMEM;
    pthread_mutex_init(&w->sub_mu, NULL);
    pthread_mutex_init(&w->req_mu, NULL);
    snprintf(w->ns, sizeof w->ns, "%s", cfg->common.ns ? cfg->common.ns : "default");
    worker_host_model_name(cfg, w->model_name, sizeof w->model_name);
    if (bus_subject_topic(subj, sizeof subj, w->ns, "load") != 0) {
        snprintf(why, why_len, "bad namespace '%s'", w->ns);
        rc = SL_EINVAL;
        goto out;
    }

    /* With disaggregation the KV cache lives in a pool UCX allocates, which
     * same-host prefill workers write with plain copies: a writer killed
     * mid-put cannot wedge it, as it can a registered malloc'd pool. */
    if (cfg->disagg != WORKER_DISAGG_OFF && cfg->engine != WORKER_ENGINE_MOCKER) {
        kvx_agent_opts_t ao = {.name = "decode"};
        rc = kvx_agent_new(&ao, &w->kvx);
        if (rc) {
            snprintf(why, why_len, "disaggregation: cannot start UCX: %s", sl_strerror(rc));
            goto out;
        }
    }
    rc = model_host_open_kv(&w->mh, cfg, w->kvx ? worker_kv_alloc : NULL, w, why, why_len);
    if (rc) goto out;
    if (w->kvx && !w->kv_region) { /* device KV memory: nothing to receive into */
        kvx_agent_free(w->kvx);
        w->kvx = NULL;
    }

    rc = worker_bus_open(cfg, "sluice-decode-worker", w->ns, w->model_name, w->mh.block_size,
                         "backend", &w->bus, &w->kvpub, &w->loadrep, why, why_len);
    if (rc) goto out;

    engine_opts_t eo = {.max_batch_tokens = (uint32_t)cfg->max_batch_tokens,
                        .max_seqs = (uint32_t)cfg->max_seqs,
                        .max_context = w->mh.max_context,
                        .eos_ids = w->mh.eos,
                        .n_eos = w->mh.n_eos,
                        .tokenizer = w->mh.tok,
                        .kv_event = kvpub_event,
                        .kv_event_ud = w->kvpub,
                        .seed = (uint64_t)time(NULL)};
    w->engine = engine_new(model_host_forward(&w->mh), &eo);
    if (!w->engine) {
        snprintf(why, why_len, "cannot create the engine");
        rc = SL_ENOMEM;
        goto out;
    }

    w->reg = metrics_registry_new();
    if (!w->reg || worker_metrics_init(w) != 0) {
        rc = SL_ENOMEM;
        goto out;
    }
    metrics_registry_on_collect(w->reg, worker_metrics_collect, w);
    disagg_opts_t dgo = {.mode = cfg->disagg,
                         .max_local_prefill = (uint32_t)cfg->max_local_prefill,
                         .timeout_ms = (uint32_t)cfg->prefill_timeout_ms,
                         .queue_max = (uint32_t)cfg->prefill_queue_max,
                         .ns = w->ns,
                         .model = w->model_name,
                         .fwd = model_host_forward(&w->mh),
                         .engine = w->engine,
                         .bus = w->bus,
                         .reg = w->reg,
                         .kvx = w->kvx,
                         .region = w->kv_region};
    rc = disagg_new(&dgo, &w->disagg);
    if (rc) {
        snprintf(why, why_len, "disaggregation: %s", sl_strerror(rc));
        goto out;
    }
    rc = worker_host_sysserver_start(cfg, w->reg, worker_health, w, &w->sys, why, why_len);
    if (rc) goto out;

    int e = pthread_create(&w->th, NULL, worker_engine_main, w);
    if (e) {
        rc = -e;
        goto out;
    }
    w->th_started = true;

    rc = worker_host_discovery_open(cfg, w->ns, worker_on_instance, w, &w->disc, why, why_len);
    if (rc) goto out;
    rc = disagg_watch(w->disagg, w->disc);
    if (rc) {
        snprintf(why, why_len, "watching prefill workers: %s", sl_strerror(rc));
        goto out;
    }
    meta = worker_meta_json(w, cfg);
    if (!meta) {
        rc = SL_ENOMEM;
        goto out;
    }
    rc = worker_host_register(w->disc, cfg, "backend", "generate", meta, why, why_len);
    if (rc) goto out;
    *out = w;
    w = NULL;
out:
    free(meta);
    worker_free(w);
    return rc;
}

void worker_drain(worker_t *w) {
    if (!w || atomic_exchange(&w->draining, true)) return;
    LOG_INFO("draining: deregistering, %" PRIuFAST64 " requests in flight",
             atomic_load(&w->inflight));
    disagg_unwatch(w->disagg); /* a watch must not outlive its discovery */
    discovery_close(w->disc);  /* revokes the lease: frontends stop sending */
    w->disc = NULL;
}

bool worker_idle(worker_t *w) {
    return !w || atomic_load(&w->inflight) == 0;
}

void worker_free(worker_t *w) {
    if (!w) return;
    atomic_store(&w->draining, true);
    disagg_unwatch(w->disagg);
    discovery_close(w->disc); /* no more instance callbacks */
    w->disc = NULL;
    pthread_mutex_lock(&w->sub_mu);
    worker_subs_free(w); /* waits for running callbacks: nothing new arrives */
    pthread_mutex_unlock(&w->sub_mu);
    if (w->th_started) {
        atomic_store(&w->stop, true);
        engine_wake(w->engine);
        pthread_join(w->th, NULL);
    }
    sysserver_stop(w->sys);
    disagg_free(w->disagg); /* no PrefillDone reaches the engine any more */
    /* Requests the engine still holds: tell their requesters, then free. */
    uint64_t id = atomic_load(&w->instance_id);
    for (wreq_t *r = w->reqs, *next; r; r = next) {
        next = r->next;
        if (!r->ended) wreq_send_error(r->w, r->id, id, SL_EUNAVAIL, 503, "worker shut down");
        wreq_free(r);
    }
    w->reqs = NULL;
    engine_free(w->engine); /* frees requests without callbacks */
    loadrep_free(w->loadrep);
    kvpub_free(w->kvpub); /* flushes the last events */
    if (w->bus) bus_flush(w->bus, 1000);
    bus_free(w->bus);
    metrics_registry_free(w->reg);
    model_host_close(&w->mh);
    kvx_region_free(w->kv_region); /* the model's KV memory: after the model */
    kvx_agent_free(w->kvx);
    pthread_mutex_destroy(&w->sub_mu);
    pthread_mutex_destroy(&w->req_mu);
    free(w);
}
