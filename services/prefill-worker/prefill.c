/* prefill.c - sluice-prefill-worker (see prefill.h): PrefillJobs in, KV
 * blocks out over UCX, PrefillDone back. */
#include "services/prefill-worker/prefill.h"
#include "common/base/base64.h"
#include "common/base/clock.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/engine/engine.h"
#include "common/runtime/bus.h"
#include "common/runtime/discovery.h"
#include "common/runtime/metrics.h"
#include "common/runtime/sysserver.h"
#include "common/transfer/kv_transfer.h"
#include "proto/sluice.pb-c.h"
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

#define PCFG worker_cfg_t
const sl_config_entry_t prefill_config_table[] = {
    SL_CONFIG_COMMON(PCFG, common),
    SL_CONFIG_STRING_ENTRY("model", "SLUICE_MODEL", PCFG, model, NULL,
                           "Hugging Face model directory (required; the decode workers' model)"),
    WORKER_CONFIG_MODEL_ENTRIES(PCFG),
    SL_CONFIG_UINT64_ENTRY("block-size", NULL, PCFG, block_size, "16", 1, 1024,
                           "Tokens per KV block (must equal the decode workers')"),
    SL_CONFIG_UINT64_ENTRY("max-batch-tokens", NULL, PCFG, max_batch_tokens, "512", 1,
                           UINT64_C(1) << 20, "Token budget per engine step (chunked prefill)"),
    SL_CONFIG_UINT64_ENTRY("max-seqs", NULL, PCFG, max_seqs, "64", 1, 65536,
                           "Jobs computed at once"),
    WORKER_CONFIG_BUS_ENTRIES(PCFG),
    SL_CONFIG_DURATION_ENTRY("drain-timeout", NULL, PCFG, drain_timeout_ms, "30s", 0,
                             INT64_C(3600000), "On SIGTERM, wait this long for jobs in flight"),
    SL_CONFIG_DURATION_ENTRY("transfer-timeout", NULL, PCFG, transfer_timeout_ms, "10s", 1,
                             INT64_C(600000),
                             "Longest KV write to a decode worker (the job's deadline, if "
                             "sooner, wins)"),
};
const size_t prefill_config_table_n = sizeof prefill_config_table / sizeof prefill_config_table[0];

#define PREFILL_MAX_ID    255
#define PREFILL_MAX_REPLY 255

/* One job, from the bus thread (created) to the engine thread (its output)
 * to the kvx progress thread (its transfer's end). */
typedef struct pjob {
    struct pjob *prev, *next;
    prefill_worker_t *pw;
    char eid[32]; /* engine request id: job ids from the wire may repeat */
    char *request_id;
    char *reply;
    uint64_t peer;     /* the decode worker's instance id */
    uint64_t tag;      /* PrefillJob.transfer_tag: the writes' tag, echoed in PrefillDone */
    uint64_t am_bytes; /* of the write, sent by active messages */
    uint32_t *dst;     /* (n_dst) decode worker's block per prompt block */
    uint32_t n_dst, skip;
    uint32_t n_tokens;
    uint64_t deadline_ms; /* wall clock; 0 = none */
    bool logprobs;
    sampling_result_t first;
    uint32_t cached_tokens;
    uint32_t n_written;
    int64_t t_arrival_ns, t_xfer_ns;
} pjob_t;

struct prefill_worker {
    char model_name[256];
    char ns[128];
    char jobs_subject[BUS_SUBJECT_MAX];
    model_host_t mh;
    engine_t *engine;
    size_t block_bytes;
    int64_t transfer_timeout_ms;

    kvx_agent_t *kvx;
    kvx_region_t *region;
    char *addr_b64; /* for the registration */

    bus_t *bus;
    bus_sub_t *sub_jobs;
    /* The instance subjects of the current id: its own jobs subject (a
     * router's KV-aware choice, same handler as the queue group) and
     * kv_resync. sub_mu guards them (discovery thread vs free). */
    pthread_mutex_t sub_mu;
    bus_sub_t *sub_own_jobs, *sub_resync;
    discovery_t *disc;
    kvpub_t *kvpub;
    loadrep_t *loadrep;
    metrics_registry_t *reg;
    sysserver_t *sys;
    _Atomic uint64_t instance_id;

    pthread_t th;
    bool th_started;
    atomic_bool stop, draining;
    atomic_uint_fast64_t inflight, xfers, jobs_total, job_seq;

    pthread_mutex_t mu; /* jobs */
    pjob_t *jobs;

    metrics_counter_t *m_jobs, *m_done, *m_failed, *m_malformed, *m_bytes, *m_prompt, *m_cached,
        *m_kv_events;
    metrics_gauge_t *m_inflight, *m_kv_total, *m_kv_used, *m_kv_cached, *m_held;
    metrics_histogram_t *m_xfer, *m_job;
};

/* ---- jobs ------------------------------------------------------------------------ */

static void pjob_free(pjob_t *j) {
    if (!j) return;
    free(j->request_id);
    free(j->reply);
    free(j->dst);
    free(j);
}

static void pw_job_unlink(prefill_worker_t *pw, pjob_t *j) {
    pthread_mutex_lock(&pw->mu);
    if (j->prev)
        j->prev->next = j->next;
    else if (pw->jobs == j)
        pw->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    j->prev = j->next = NULL;
    pthread_mutex_unlock(&pw->mu);
}

/* Sends PrefillDone to reply (the error one when code != 0). */
static void pw_reply(prefill_worker_t *pw, const char *reply, const char *request_id, uint64_t tag,
                     const pjob_t *j, int code, const char *why) {
    if (!reply || !reply[0]) return;
    Sluice__V1__PrefillDone d = SLUICE__V1__PREFILL_DONE__INIT;
    Sluice__V1__Error err = SLUICE__V1__ERROR__INIT;
    Sluice__V1__PositionLogprobs pl = SLUICE__V1__POSITION_LOGPROBS__INIT;
    Sluice__V1__TokenLogprob chosen = SLUICE__V1__TOKEN_LOGPROB__INIT;
    Sluice__V1__TokenLogprob top[SAMPLING_MAX_TOP_LOGPROBS];
    Sluice__V1__TokenLogprob *topp[SAMPLING_MAX_TOP_LOGPROBS];
    d.version = 1;
    d.request_id = (char *)(request_id ? request_id : "");
    d.prefill_worker_id = atomic_load(&pw->instance_id);
    d.transfer_tag = tag;
    if (code) {
        err.code = code;
        err.message = (char *)(why && why[0] ? why : sl_strerror(code));
        err.http_status = 503;
        d.error = &err;
    } else if (j) {
        d.first_token = j->first.token;
        chosen.token_id = j->first.token;
        chosen.logprob = j->first.logprob;
        pl.chosen = &chosen;
        for (uint32_t i = 0; i < j->first.n_top && i < SAMPLING_MAX_TOP_LOGPROBS; i++) {
            sluice__v1__token_logprob__init(&top[i]);
            top[i].token_id = j->first.top[i].token;
            top[i].logprob = j->first.top[i].logprob;
            topp[i] = &top[i];
        }
        pl.n_top = j->first.n_top;
        pl.top = topp;
        d.first_logprobs = &pl;
        d.bytes_transferred = (uint64_t)j->n_written * pw->block_bytes;
        d.transfer_us = (uint64_t)((sl_mono_ns() - j->t_xfer_ns) / 1000);
        d.cached_tokens = j->cached_tokens;
        d.am_bytes = j->am_bytes;
    }
    int rc = bus_publish_proto(pw->bus, reply, &d.base);
    if (rc) RLOG_WARN(d.request_id, "PrefillDone not sent: %s", sl_strerror(rc));
}

/* A job that ends with an error: answer, count, unpin (if it had blocks). */
static void pw_job_fail(prefill_worker_t *pw, pjob_t *j, int code, const char *why, bool held) {
    RLOG_INFO(j->request_id, "prefill job dropped: %s", why);
    pw_reply(pw, j->reply, j->request_id, j->tag, NULL, code, why);
    metrics_counter_inc(pw->m_failed);
    if (held) engine_submit_release(pw->engine, j->eid);
    pw_job_unlink(pw, j);
    pjob_free(j);
    atomic_fetch_sub(&pw->inflight, 1);
}

/* kvx progress thread: the blocks are in the decode worker's memory (or
 * not). */
static void pw_on_written(void *ud, kvx_xfer_t *x, int status) {
    pjob_t *j = ud;
    prefill_worker_t *pw = j->pw;
    atomic_fetch_sub(&pw->xfers, 1);
    if (status) {
        char why[512];
        snprintf(why, sizeof why, "KV write to decode worker %016" PRIx64 " failed: %s%s%s",
                 j->peer, sl_strerror(status), x && kvx_xfer_error_text(x)[0] ? ": " : "",
                 x ? kvx_xfer_error_text(x) : "");
        pw_job_fail(pw, j, status, why, true);
        return;
    }
    j->am_bytes = kvx_xfer_am_bytes(x);
    double secs = (double)(sl_mono_ns() - j->t_xfer_ns) * 1e-9;
    metrics_histogram_observe(pw->m_xfer, secs);
    metrics_histogram_observe(pw->m_job, (double)(sl_mono_ns() - j->t_arrival_ns) * 1e-9);
    metrics_counter_add(pw->m_bytes, (uint64_t)j->n_written * pw->block_bytes);
    metrics_counter_inc(pw->m_done);
    RLOG_DEBUG(j->request_id, "prefilled %u tokens, wrote %u blocks in %.3f ms", j->n_tokens,
               j->n_written, secs * 1e3);
    pw_reply(pw, j->reply, j->request_id, j->tag, j, 0, NULL);
    engine_submit_release(pw->engine, j->eid);
    pw_job_unlink(pw, j);
    pjob_free(j);
    atomic_fetch_sub(&pw->inflight, 1);
}

/* Engine thread: the job's prompt is computed (or failed). The blocks are
 * held by the engine from the moment this returns until released. */
static void pw_on_output(const engine_output_t *o, void *ud) {
    pjob_t *j = ud;
    prefill_worker_t *pw = j->pw;
    if (o->finish == ENGINE_FINISH_NONE) return; /* cannot happen for PREFILL */
    if (!o->blocks || o->n_tokens != 1) {
        char why[128];
        snprintf(why, sizeof why, "prefill failed: %s",
                 o->finish == ENGINE_FINISH_ERROR ? sl_strerror(o->error) : "cancelled");
        pw_job_fail(pw, j, o->error ? o->error : SL_ECANCELLED, why, false);
        return;
    }
    j->first = o->logprobs ? o->logprobs[0] : (sampling_result_t){.token = o->tokens[0]};
    j->first.token = o->tokens[0];
    j->cached_tokens = o->cached_tokens;
    metrics_counter_add(pw->m_prompt, o->prompt_tokens);
    metrics_counter_add(pw->m_cached, o->cached_tokens);
    if (o->n_blocks != j->n_dst) {
        pw_job_fail(pw, j, SL_EINVAL, "block count differs from the job's", true);
        return;
    }
    int64_t timeout = pw->transfer_timeout_ms;
    if (j->deadline_ms) {
        uint64_t now = sl_wall_ms();
        if (now >= j->deadline_ms) {
            pw_job_fail(pw, j, SL_ETIMEDOUT, "deadline passed before the KV write", true);
            return;
        }
        if ((int64_t)(j->deadline_ms - now) < timeout) timeout = (int64_t)(j->deadline_ms - now);
    }
    j->n_written = j->n_dst - j->skip;
    j->t_xfer_ns = sl_mono_ns();
    kvx_write_opts_t wo = {
        .timeout_ms = (uint32_t)timeout, .cb = pw_on_written, .ud = j, .tag = j->tag};
    atomic_fetch_add(&pw->xfers, 1);
    int rc = kvx_write(pw->kvx, j->peer, pw->region, o->blocks + j->skip, j->dst + j->skip,
                       j->n_written, &wo, NULL);
    if (rc) {
        atomic_fetch_sub(&pw->xfers, 1);
        char why[256];
        snprintf(why, sizeof why, "KV write to decode worker %016" PRIx64 " refused: %s", j->peer,
                 sl_strerror(rc));
        pw_job_fail(pw, j, rc, why, true);
    }
}

static bool pw_id_ok(const char *id, size_t max) {
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > max) return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] <= 0x20 || (unsigned char)id[i] >= 0x7f) return false;
    return true;
}

/* Checks a job against this worker; on failure writes why and returns the
 * code. */
static int pw_job_check(prefill_worker_t *pw, const Sluice__V1__PrefillJob *m, char *why,
                        size_t len) {
    uint32_t bs = pw->mh.block_size;
    if (!pw_id_ok(m->request_id, PREFILL_MAX_ID)) {
        snprintf(why, len, "bad request_id");
        return SL_EINVAL;
    }
    if (m->model && m->model[0] && strcmp(m->model, pw->model_name) != 0) {
        snprintf(why, len, "model '%.64s' is not served here (this is '%s')", m->model,
                 pw->model_name);
        return SL_ENOTFOUND;
    }
    if (m->n_token_ids == 0 || m->n_token_ids >= pw->mh.max_context) {
        snprintf(why, len, "prompt of %zu tokens is empty or not below the context (%u)",
                 m->n_token_ids, pw->mh.max_context);
        return SL_ERANGE;
    }
    for (size_t i = 0; i < m->n_token_ids; i++)
        if (m->token_ids[i] >= pw->mh.vocab_size) {
            snprintf(why, len, "token_ids[%zu] = %u is not below the vocabulary size %u", i,
                     m->token_ids[i], pw->mh.vocab_size);
            return SL_EINVAL;
        }
    size_t nb = m->n_token_ids / bs + (m->n_token_ids % bs != 0);
    if (m->n_dst_block_ids != nb || m->skip_blocks >= nb ||
        (size_t)m->skip_blocks * bs >= m->n_token_ids) {
        snprintf(why, len, "%zu destination blocks and skip %u for %zu tokens (want %zu blocks)",
                 m->n_dst_block_ids, m->skip_blocks, m->n_token_ids, nb);
        return SL_EINVAL;
    }
    if (m->n_prior_output >= m->n_token_ids ||
        (m->stop && m->stop->n_stop_token_ids > WREQ_MAX_STOP_IDS)) {
        snprintf(why, len, "n_prior_output %u or %zu stop token ids out of range",
                 m->n_prior_output, m->stop ? m->stop->n_stop_token_ids : 0);
        return SL_EINVAL;
    }
    if (m->block_bytes != pw->block_bytes) {
        snprintf(why, len,
                 "block_bytes %" PRIu64 " differs from this worker's %zu (other model "
                 "or block size)",
                 m->block_bytes, pw->block_bytes);
        return SL_EINVAL;
    }
    if (m->deadline_unix_ms && sl_wall_ms() >= m->deadline_unix_ms) {
        snprintf(why, len, "deadline passed before the job started");
        return SL_ETIMEDOUT;
    }
    return 0;
}

/* Bus thread: a PrefillJob. */
static void pw_on_job(bus_t *bus, const bus_msg_t *msg, void *ud) {
    (void)bus;
    prefill_worker_t *pw = ud;
    Sluice__V1__PrefillJob *m = NULL;
    pjob_t *j = NULL;
    char why[512] = "";
    int rc;
    if (bus_msg_unpack(msg, &sluice__v1__prefill_job__descriptor, (ProtobufCMessage **)&m)) {
        metrics_counter_inc(pw->m_malformed);
        LOG_WARN("malformed PrefillJob (%zu bytes) dropped", bus_msg_len(msg));
        goto out;
    }
    /* A job sent as a request (to this worker's own subject) is acknowledged
     * at once: the decode worker only learns that someone took it. */
    if (bus_msg_reply(msg)) bus_respond(pw->bus, msg, "", 0);
    atomic_fetch_add(&pw->jobs_total, 1);
    metrics_counter_inc(pw->m_jobs);
    const char *reply = pw_id_ok(m->reply_subject, PREFILL_MAX_REPLY) ? m->reply_subject : NULL;
    const char *rid = pw_id_ok(m->request_id, PREFILL_MAX_ID) ? m->request_id : NULL;
    if (!reply) {
        metrics_counter_inc(pw->m_malformed);
        LOG_WARN("PrefillJob without a valid reply subject dropped");
        goto out;
    }
    if (atomic_load(&pw->draining)) {
        rc = SL_EUNAVAIL;
        snprintf(why, sizeof why, "prefill worker is draining");
        goto fail;
    }
    rc = pw_job_check(pw, m, why, sizeof why);
    if (rc) goto fail;
    sampling_params_t sp;
    rc = wreq_sampling_from_proto(m->sampling, &sp);
    if (rc) {
        snprintf(why, sizeof why, "bad sampling parameters");
        rc = SL_EINVAL;
        goto fail;
    }
    rc = kvx_peer_import(pw->kvx, m->decode_worker_id, m->ucx_address.data, m->ucx_address.len,
                         m->rkey.data, m->rkey.len, m->remote_base, m->block_bytes);
    if (rc) {
        snprintf(why, sizeof why, "decode worker %016" PRIx64 ": UCX address / rkey refused: %s",
                 m->decode_worker_id, sl_strerror(rc));
        goto fail;
    }
    j = calloc(1, sizeof *j);
    if (!j) goto nomem;
    j->pw = pw;
    snprintf(j->eid, sizeof j->eid, "pf-%" PRIuFAST64, atomic_fetch_add(&pw->job_seq, 1));
    j->request_id = strdup(m->request_id);
    j->reply = strdup(reply);
    j->dst = malloc(m->n_dst_block_ids * sizeof *j->dst);
    if (!j->request_id || !j->reply || !j->dst) goto nomem;
    memcpy(j->dst, m->dst_block_ids, m->n_dst_block_ids * sizeof *j->dst);
    j->n_dst = (uint32_t)m->n_dst_block_ids;
    j->skip = m->skip_blocks;
    j->n_tokens = (uint32_t)m->n_token_ids;
    j->peer = m->decode_worker_id;
    j->tag = m->transfer_tag;
    j->deadline_ms = m->deadline_unix_ms;
    j->logprobs = sp.logprobs;
    j->t_arrival_ns = sl_mono_ns();
    engine_request_t er = {.id = j->eid,
                           .mode = ENGINE_MODE_PREFILL,
                           .prompt = m->token_ids,
                           .n_prompt = (uint32_t)m->n_token_ids,
                           .sampling = sp,
                           .on_output = pw_on_output,
                           .ud = j};
    /* Only what the first token's sampling needs: min_tokens masks EOS and
     * stop ids. */
    if (m->stop) {
        er.stop.min_tokens = m->stop->min_tokens;
        er.stop.ignore_eos = m->stop->ignore_eos;
        er.stop.stop_token_ids = m->stop->stop_token_ids;
        er.stop.n_stop_token_ids = (uint32_t)m->stop->n_stop_token_ids;
    }
    er.n_prior_output = m->n_prior_output;
    pthread_mutex_lock(&pw->mu);
    j->next = pw->jobs;
    if (pw->jobs) pw->jobs->prev = j;
    pw->jobs = j;
    atomic_fetch_add(&pw->inflight, 1);
    rc = engine_submit(pw->engine, &er);
    if (rc) {
        pw->jobs = j->next;
        if (pw->jobs) pw->jobs->prev = NULL;
        j->next = NULL;
        atomic_fetch_sub(&pw->inflight, 1);
    }
    pthread_mutex_unlock(&pw->mu);
    if (rc) {
        snprintf(why, sizeof why, "could not queue the job");
        goto fail;
    }
    RLOG_DEBUG(m->request_id, "prefill job queued as %s: %zu tokens, skip %u blocks", j->eid,
               m->n_token_ids, m->skip_blocks);
    j = NULL;
    goto out;
nomem:
    rc = SL_ENOMEM;
    snprintf(why, sizeof why, "out of memory");
fail:
    metrics_counter_inc(pw->m_failed);
    RLOG_INFO(rid ? rid : "?", "prefill job refused: %s", why);
    pw_reply(pw, reply, rid, m ? m->transfer_tag : 0, NULL, rc, why);
out:
    pjob_free(j);
    if (m) sluice__v1__prefill_job__free_unpacked(m, NULL);
}

/* ---- engine thread --------------------------------------------------------------- */

static void pw_publish_state(prefill_worker_t *pw, const engine_stats_t *st) {
    metrics_gauge_set(pw->m_kv_total, st->kv.total);
    metrics_gauge_set(pw->m_kv_used, st->kv.used);
    metrics_gauge_set(pw->m_kv_cached, st->kv.cached);
    metrics_gauge_set(pw->m_held, st->held);
    metrics_gauge_set(pw->m_inflight, (double)atomic_load(&pw->inflight));
    loadrep_snapshot_t s = {.active_seqs = st->running,
                            .waiting_seqs = st->waiting,
                            .kv_blocks_total = st->kv.total,
                            .kv_blocks_used = st->kv.used,
                            .kv_blocks_cached = st->kv.cached,
                            .pending_prefill_tokens = st->pending_prefill_tokens,
                            .requests_total = atomic_load(&pw->jobs_total),
                            .generated_tokens = st->prompt_tokens_computed,
                            .prefill_queue_depth = (uint32_t)atomic_load(&pw->inflight)};
    loadrep_update(pw->loadrep, &s);
}

static void *pw_engine_main(void *arg) {
    prefill_worker_t *pw = arg;
    engine_stats_t st;
    int64_t last_warn = 0;
    while (!atomic_load(&pw->stop)) {
        engine_wait(pw->engine, 50);
        kvpub_resync_run(pw->kvpub, engine_pool(pw->engine));
        int rc = engine_step(pw->engine);
        if (rc < 0) worker_host_step_failed(rc, &last_warn);
        engine_stats_get(pw->engine, &st);
        pw_publish_state(pw, &st);
    }
    return NULL;
}

/* ---- discovery, metrics, health ---------------------------------------------------- */

/* Bus thread: a router's KvResyncRequest, answered by the engine thread. */
static void pw_on_resync(bus_t *bus, const bus_msg_t *msg, void *ud) {
    (void)bus;
    prefill_worker_t *pw = ud;
    worker_host_resync_enqueue(pw->kvpub, pw->engine, pw->m_malformed, msg);
}

/* (Re)subscribes the instance subjects of id: sluice.<ns>.prefill.jobs.<id>
 * and sluice.<ns>.prefill.kv_resync.<id>. */
static int pw_subs_open(prefill_worker_t *pw, uint64_t id) {
    char s[BUS_SUBJECT_MAX];
    pthread_mutex_lock(&pw->sub_mu);
    bus_sub_free(pw->sub_own_jobs);
    bus_sub_free(pw->sub_resync);
    pw->sub_own_jobs = pw->sub_resync = NULL;
    int rc = bus_subject_instance(s, sizeof s, pw->ns, "prefill", "jobs", id);
    if (rc == 0) rc = bus_subscribe(pw->bus, s, NULL, pw_on_job, pw, &pw->sub_own_jobs);
    if (rc == 0) rc = bus_subject_instance(s, sizeof s, pw->ns, "prefill", "kv_resync", id);
    if (rc == 0) rc = bus_subscribe(pw->bus, s, NULL, pw_on_resync, pw, &pw->sub_resync);
    if (rc == 0) rc = bus_flush(pw->bus, 2000);
    pthread_mutex_unlock(&pw->sub_mu);
    return rc;
}

static void pw_on_instance(int64_t old_id, int64_t new_id, void *ud) {
    prefill_worker_t *pw = ud;
    atomic_store(&pw->instance_id, (uint64_t)new_id);
    kvpub_set_worker_id(pw->kvpub, (uint64_t)new_id);
    loadrep_set_worker_id(pw->loadrep, (uint64_t)new_id);
    int rc = pw_subs_open(pw, (uint64_t)new_id);
    if (rc)
        LOG_ERROR("cannot subscribe the instance subjects of %016" PRIx64 ": %s", (uint64_t)new_id,
                  sl_strerror(rc));
    if (old_id)
        LOG_WARN("instance id changed %016" PRIx64 " -> %016" PRIx64, (uint64_t)old_id,
                 (uint64_t)new_id);
    else
        LOG_INFO("prefilling %s as prefill instance %016" PRIx64, pw->model_name, (uint64_t)new_id);
}

static char *pw_meta_json(const prefill_worker_t *pw, const worker_cfg_t *cfg) {
    cJSON *j = cJSON_CreateObject();
    char *s = NULL;
    if (!j) return NULL;
    cJSON_AddStringToObject(j, "model", pw->model_name);
    cJSON_AddNumberToObject(j, "block_size", pw->mh.block_size);
    cJSON_AddNumberToObject(j, "kv_blocks", pw->mh.n_blocks);
    cJSON_AddNumberToObject(j, "block_bytes", (double)pw->block_bytes);
    cJSON_AddNumberToObject(j, "context_length", pw->mh.max_context);
    cJSON_AddNumberToObject(j, "vocab_size", pw->mh.vocab_size);
    cJSON_AddNumberToObject(j, "max_batch_tokens", (double)cfg->max_batch_tokens);
    cJSON_AddNumberToObject(j, "max_seqs", (double)cfg->max_seqs);
    cJSON_AddStringToObject(j, "subject", pw->jobs_subject);
    cJSON_AddStringToObject(j, "ucx_address", pw->addr_b64);
    cJSON_AddStringToObject(j, "tier", "device");
    s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

static int pw_metrics_init(prefill_worker_t *pw) {
    metrics_registry_t *r = pw->reg;
    static const double xfer_b[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                    0.01,   0.025,   0.05,   0.1,   0.25,   1};
    static const double job_b[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    pw->m_jobs = metrics_counter_new(r, "sluice_prefill_jobs_total", "PrefillJobs received");
    pw->m_done = metrics_counter_new(r, "sluice_prefill_jobs_done_total",
                                     "Jobs whose KV was written and answered");
    pw->m_failed = metrics_counter_new(r, "sluice_prefill_jobs_failed_total",
                                       "Jobs refused or dropped (answered with an error)");
    pw->m_malformed = metrics_counter_new(r, "sluice_prefill_malformed_total",
                                          "Malformed messages counted and dropped");
    pw->m_bytes = metrics_counter_new(r, "sluice_prefill_transfer_bytes_total",
                                      "KV bytes written to decode workers");
    pw->m_prompt = metrics_counter_new(r, "sluice_prefill_prompt_tokens_total",
                                       "Prompt tokens of prefilled jobs");
    pw->m_cached = metrics_counter_new(r, "sluice_prefill_cached_tokens_total",
                                       "Prompt tokens served from this worker's prefix cache");
    pw->m_kv_events =
        metrics_counter_new(r, "sluice_prefill_kv_events_total", "KV events published");
    pw->m_inflight =
        metrics_gauge_new(r, "sluice_prefill_inflight_jobs", "Jobs accepted and not finished");
    pw->m_kv_total = metrics_gauge_new(r, "sluice_prefill_kv_blocks_total", "KV blocks");
    pw->m_kv_used = metrics_gauge_new(r, "sluice_prefill_kv_blocks_used",
                                      "KV blocks referenced (computing or being sent)");
    pw->m_kv_cached = metrics_gauge_new(r, "sluice_prefill_kv_blocks_cached",
                                        "Free KV blocks holding reusable prefixes");
    pw->m_held = metrics_gauge_new(r, "sluice_prefill_held_jobs",
                                   "Computed jobs whose blocks are pinned for a transfer");
    pw->m_xfer = metrics_histogram_new(r, "sluice_prefill_transfer_seconds",
                                       "KV write of one job (put + flush)", xfer_b,
                                       sizeof xfer_b / sizeof *xfer_b);
    pw->m_job = metrics_histogram_new(r, "sluice_prefill_job_seconds", "Job arrival to PrefillDone",
                                      job_b, sizeof job_b / sizeof *job_b);
    if (!pw->m_jobs || !pw->m_done || !pw->m_failed || !pw->m_malformed || !pw->m_bytes ||
        !pw->m_prompt || !pw->m_cached || !pw->m_kv_events || !pw->m_inflight || !pw->m_kv_total ||
        !pw->m_kv_used || !pw->m_kv_cached || !pw->m_held || !pw->m_xfer || !pw->m_job)
        return SL_ENOMEM;
    return 0;
}

static void pw_metrics_collect(metrics_registry_t *r, void *ud) {
    (void)r;
    prefill_worker_t *pw = ud;
    worker_host_kv_events_collect(pw->kvpub, pw->m_kv_events);
}

static bool pw_health(void *ud, char **json) {
    prefill_worker_t *pw = ud;
    bool draining = atomic_load(&pw->draining);
    char buf[512];
    snprintf(buf, sizeof buf,
             "{\"status\":\"%s\",\"instance_id\":\"%016" PRIx64 "\",\"draining\":%s,"
             "\"inflight\":%" PRIuFAST64 "}",
             draining ? "draining" : "healthy", atomic_load(&pw->instance_id),
             draining ? "true" : "false", atomic_load(&pw->inflight));
    *json = strdup(buf);
    return !draining;
}

/* ---- lifecycle ---------------------------------------------------------------------- */

int prefill_start(const worker_cfg_t *cfg, prefill_worker_t **out, char *why, size_t why_len) {
    int rc = 0;
    prefill_worker_t *pw = NULL;
    char *meta = NULL;
    uint8_t *addr = NULL;
    size_t addr_len = 0;
    if (why && why_len) why[0] = 0;
    if (!cfg || !out || !why) return SL_EINVAL;
    *out = NULL;
    if (!cfg->model || !cfg->model[0]) {
        snprintf(why, why_len, "--model DIR is required");
        return SL_EINVAL;
    }
    pw = calloc(1, sizeof *pw);
    if (!pw) return SL_ENOMEM;
    pthread_mutex_init(&pw->mu, NULL);
    pthread_mutex_init(&pw->sub_mu, NULL);
    pw->transfer_timeout_ms = cfg->transfer_timeout_ms ? cfg->transfer_timeout_ms : 10000;
    snprintf(pw->ns, sizeof pw->ns, "%s", cfg->common.ns ? cfg->common.ns : "default");
    worker_host_model_name(cfg, pw->model_name, sizeof pw->model_name);
    if (bus_subject_endpoint(pw->jobs_subject, sizeof pw->jobs_subject, pw->ns, "prefill",
                             "jobs") != 0) {
        snprintf(why, why_len, "bad namespace '%s'", pw->ns);
        rc = SL_EINVAL;
        goto out;
    }
    if (cfg->engine == WORKER_ENGINE_MOCKER) {
        snprintf(why, why_len, "the mocker has no KV memory to send; use --engine model");
        rc = SL_EINVAL;
        goto out;
    }
    rc = model_host_open(&pw->mh, cfg, why, why_len);
    if (rc) goto out;
    const sl_forward_t *fwd = model_host_forward(&pw->mh);
    if (!fwd->kv_base || !fwd->block_bytes) {
        snprintf(why, why_len, "the model has no host KV memory to send");
        rc = SL_EUNSUPPORTED;
        goto out;
    }
    pw->block_bytes = fwd->block_bytes;

    kvx_agent_opts_t ao = {.name = "prefill"};
    rc = kvx_agent_new(&ao, &pw->kvx);
    if (rc == 0)
        rc = kvx_region_register(pw->kvx, fwd->kv_base, fwd->block_bytes, fwd->n_blocks, NULL,
                                 &pw->region);
    if (rc == 0) rc = kvx_agent_address_export(pw->kvx, &addr, &addr_len);
    if (rc) {
        snprintf(why, why_len, "UCX: %s", sl_strerror(rc));
        goto out;
    }
    pw->addr_b64 = base64_encode_alloc(addr, addr_len);
    if (!pw->addr_b64) {
        rc = SL_ENOMEM;
        goto out;
    }

    rc = worker_bus_open(cfg, "sluice-prefill-worker", pw->ns, pw->model_name, pw->mh.block_size,
                         "prefill", &pw->bus, &pw->kvpub, &pw->loadrep, why, why_len);
    if (rc) goto out;

    engine_opts_t eo = {.max_batch_tokens = (uint32_t)cfg->max_batch_tokens,
                        .max_seqs = (uint32_t)cfg->max_seqs,
                        .max_context = pw->mh.max_context,
                        .eos_ids = pw->mh.eos,
                        .n_eos = pw->mh.n_eos,
                        .kv_event = kvpub_event,
                        .kv_event_ud = pw->kvpub,
                        .seed = (uint64_t)time(NULL)};
    pw->engine = engine_new(fwd, &eo);
    if (!pw->engine) {
        snprintf(why, why_len, "cannot create the engine");
        rc = SL_ENOMEM;
        goto out;
    }
    pw->reg = metrics_registry_new();
    if (!pw->reg || pw_metrics_init(pw) != 0) {
        rc = SL_ENOMEM;
        goto out;
    }
    metrics_registry_on_collect(pw->reg, pw_metrics_collect, pw);
    rc = worker_host_sysserver_start(cfg, pw->reg, pw_health, pw, &pw->sys, why, why_len);
    if (rc) goto out;
    int e = pthread_create(&pw->th, NULL, pw_engine_main, pw);
    if (e) {
        rc = -e;
        goto out;
    }
    pw->th_started = true;
    rc = bus_subscribe(pw->bus, pw->jobs_subject, "prefill", pw_on_job, pw, &pw->sub_jobs);
    if (rc == 0) rc = bus_flush(pw->bus, 2000);
    if (rc) {
        snprintf(why, why_len, "cannot subscribe to %s: %s", pw->jobs_subject, sl_strerror(rc));
        goto out;
    }

    rc = worker_host_discovery_open(cfg, pw->ns, pw_on_instance, pw, &pw->disc, why, why_len);
    if (rc) goto out;
    meta = pw_meta_json(pw, cfg);
    if (!meta) {
        rc = SL_ENOMEM;
        goto out;
    }
    rc = worker_host_register(pw->disc, cfg, "prefill", "jobs", meta, why, why_len);
    if (rc) goto out;
    *out = pw;
    pw = NULL;
out:
    free(addr);
    free(meta);
    prefill_free(pw);
    return rc;
}

void prefill_drain(prefill_worker_t *pw) {
    if (!pw || atomic_exchange(&pw->draining, true)) return;
    LOG_INFO("draining: deregistering, %" PRIuFAST64 " jobs in flight", atomic_load(&pw->inflight));
    discovery_close(pw->disc);
    pw->disc = NULL;
}

bool prefill_idle(prefill_worker_t *pw) {
    return !pw || atomic_load(&pw->inflight) == 0;
}

void prefill_free(prefill_worker_t *pw) {
    if (!pw) return;
    atomic_store(&pw->draining, true);
    discovery_close(pw->disc);
    pw->disc = NULL;
    bus_sub_free(pw->sub_jobs); /* no new jobs */
    pw->sub_jobs = NULL;
    pthread_mutex_lock(&pw->sub_mu);
    bus_sub_free(pw->sub_own_jobs);
    bus_sub_free(pw->sub_resync);
    pw->sub_own_jobs = pw->sub_resync = NULL;
    pthread_mutex_unlock(&pw->sub_mu);
    if (pw->th_started) {
        atomic_store(&pw->stop, true);
        engine_wake(pw->engine);
        pthread_join(pw->th, NULL); /* no new transfers */
    }
    /* Transfers in flight end by their own timeout at the latest. */
    int64_t end = sl_mono_ns() + (pw->transfer_timeout_ms + 1000) * 1000000LL;
    while (atomic_load(&pw->xfers) > 0 && sl_mono_ns() < end) {
        struct timespec ts = {0, 5000000L};
        nanosleep(&ts, NULL);
    }
    if (atomic_load(&pw->xfers) == 0) kvx_region_free(pw->region);
    kvx_agent_free(pw->kvx);
    sysserver_stop(pw->sys);
    /* Jobs the engine never finished: tell their decode workers. */
    for (pjob_t *j = pw->jobs, *next; j; j = next) {
        next = j->next;
        if (pw->bus)
            pw_reply(pw, j->reply, j->request_id, j->tag, NULL, SL_EUNAVAIL,
                     "prefill worker shut down");
        pjob_free(j);
    }
    pw->jobs = NULL;
    engine_free(pw->engine);
    loadrep_free(pw->loadrep);
    kvpub_free(pw->kvpub);
    if (pw->bus) bus_flush(pw->bus, 1000);
    bus_free(pw->bus);
    metrics_registry_free(pw->reg);
    model_host_close(&pw->mh);
    free(pw->addr_b64);
    pthread_mutex_destroy(&pw->mu);
    pthread_mutex_destroy(&pw->sub_mu);
    free(pw);
}
