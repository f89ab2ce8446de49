/* disagg.c - remote prefill on the decode worker (see disagg.h). */
#include "services/decode-worker/disagg.h"
#include "common/base/base64.h"
#include "common/base/clock.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/transfer/kv_transfer.h"
#include "proto/sluice.pb-c.h"
#include "services/decode-worker/worker.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define DISAGG_GRACE_MS       500 /* after the job's deadline, before failing over */
#define DISAGG_MAX_PREFILLERS 1024

/* PENDING: job sent, no answer. AWAIT: PrefillDone came, but some of the
 * bytes it sent by active messages have not arrived yet (the kvx agent's
 * completion callback wakes the engine thread, which adopts in
 * disagg_expire; both count as pending). DONE: adopted. FAILED: prefilled
 * locally. */
typedef enum djob_state { DJOB_PENDING = 0, DJOB_AWAIT, DJOB_DONE, DJOB_FAILED } djob_state_t;

/* A request that sent a PrefillJob, until the request ends. */
typedef struct djob {
    struct djob *next;
    char *id;
    djob_state_t state;
    bool ended; /* the request ended while PENDING: its blocks are orphaned in the engine */
    int64_t sent_ns, deadline_ns; /* monotonic */
    uint64_t tag;                 /* PrefillJob.transfer_tag; live in the agent while pending */
    uint64_t expect_bytes;        /* what the job may write (kvx_recv_expect) */
    uint64_t am_bytes;            /* AWAIT: bytes PrefillDone says went by active messages */
    uint8_t *packed;              /* (packed_len) hinted job kept until its receipt or "no
                                     responders" (then re-sent to the queue group); else NULL */
    size_t packed_len;
    sampling_result_t first; /* AWAIT: the answer, for the adopt */
    engine_transfer_t xfer;
} djob_t;

struct disagg {
    disagg_opts_t o;
    bool capable;
    char jobs_subject[BUS_SUBJECT_MAX];
    char ns[BUS_SUBJECT_MAX]; /* o->ns, copied */
    char reply_subject[BUS_SUBJECT_MAX];
    char ack_prefix[BUS_SUBJECT_MAX]; /* hinted jobs' receipts: <ack_prefix>.<tag hex> */
    char model[256];
    kvx_agent_t *kvx;
    kvx_region_t *region;
    uint64_t tag_base, tag_seq; /* transfer tags: random base + sequence, never 0 */
    uint8_t *addr, *rkey;       /* (addr_len), (rkey_len) blobs for jobs */
    size_t addr_len, rkey_len;
    char *desc_b64;
    bus_sub_t *sub_done, *sub_ack;
    discovery_watch_t *watch;

    pthread_mutex_t mu; /* jobs, prefillers */
    djob_t *jobs;
    uint32_t n_pending;
    int64_t prefillers[DISAGG_MAX_PREFILLERS]; /* compatible prefill instances */
    uint32_t depth[DISAGG_MAX_PREFILLERS];     /* their last prefill_queue_depth */
    uint32_t n_prefillers;
    bus_sub_t *sub_load;

    metrics_counter_t *m_hinted, *m_hint_fallback;
    metrics_counter_t *m_local, *m_remote, *m_fail_error, *m_fail_timeout, *m_bytes, *m_stale,
        *m_am_bytes, *m_am_waits;
    metrics_histogram_t *m_xfer, *m_remote_s;
    metrics_gauge_t *m_prefillers, *m_inflight;
};

static void djob_free(djob_t *j) {
    if (!j) return;
    free(j->packed);
    free(j->id);
    free(j);
}

/* d->mu held. A hinted job's wait for its receipt ends (receipt,
 * PrefillDone, or the job leaves without either: a loss the deadline
 * covered, sent as far as we know): it counts as hinted. */
static void disagg_job_unkeep(disagg_t *d, djob_t *j) {
    if (!j->packed) return;
    free(j->packed);
    j->packed = NULL;
    metrics_counter_inc(d->m_hinted);
}

/* d->mu held. Unlinks and returns the job of id, or NULL. */
static djob_t *disagg_job_take(disagg_t *d, const char *id) {
    for (djob_t **pp = &d->jobs; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->id, id) == 0) {
            djob_t *j = *pp;
            *pp = j->next;
            j->next = NULL;
            if (j->state == DJOB_PENDING || j->state == DJOB_AWAIT) d->n_pending--;
            disagg_job_unkeep(d, j);
            return j;
        }
    return NULL;
}

/* Ends a job's tag: from now on the agent drops writes under it. Any
 * thread; call once the job leaves PENDING / AWAIT. */
static void disagg_job_untag(disagg_t *d, djob_t *j) {
    if (j && j->tag && d->kvx) kvx_recv_forget(d->kvx, j->tag);
}

static djob_t *disagg_job_find(disagg_t *d, const char *id) {
    for (djob_t *j = d->jobs; j; j = j->next)
        if (strcmp(j->id, id) == 0) return j;
    return NULL;
}

/* ---- PrefillDone ----------------------------------------------------------------- */

static void disagg_on_done(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *pm, void *ud) {
    (void)bus;
    (void)msg;
    disagg_t *d = ud;
    const Sluice__V1__PrefillDone *m = (const Sluice__V1__PrefillDone *)pm;
    if (!m->request_id || !m->request_id[0]) {
        metrics_counter_inc(d->m_stale);
        return;
    }
    pthread_mutex_lock(&d->mu);
    djob_t *j = disagg_job_find(d, m->request_id);
    /* transfer_tag 0: a prefill worker that predates tags (puts only) */
    if (!j || j->state != DJOB_PENDING || (m->transfer_tag && m->transfer_tag != j->tag) ||
        (!m->transfer_tag && m->am_bytes)) {
        pthread_mutex_unlock(&d->mu);
        metrics_counter_inc(d->m_stale);
        RLOG_DEBUG(m->request_id, "late, stale or unknown PrefillDone ignored");
        return;
    }
    double secs = (double)(sl_mono_ns() - j->sent_ns) * 1e-9;
    disagg_job_unkeep(d, j); /* it got there, receipt or not */
    if (j->ended) {          /* the writer is done: free the orphaned blocks */
        d->n_pending--;
        j->state = DJOB_FAILED;
        djob_t *gone = disagg_job_take(d, m->request_id);
        pthread_mutex_unlock(&d->mu);
        disagg_job_untag(d, gone);
        djob_free(gone);
        engine_submit_adopt_fail(d->o.engine, m->request_id);
        return;
    }
    if (m->error || m->am_bytes > j->expect_bytes) {
        d->n_pending--;
        j->state = DJOB_FAILED;
        pthread_mutex_unlock(&d->mu);
        disagg_job_untag(d, j); /* a late write cannot land in the local prefill's KV */
        metrics_counter_inc(d->m_fail_error);
        RLOG_INFO(m->request_id, "remote prefill failed (%s): prefilling locally",
                  !m->error           ? "more AM bytes than the job's blocks"
                  : m->error->message ? m->error->message
                                      : sl_strerror(m->error->code));
        engine_submit_adopt_fail(d->o.engine, m->request_id);
        return;
    }
    sampling_result_t first = {.token = m->first_token};
    if (m->first_logprobs && m->first_logprobs->chosen)
        first.logprob = m->first_logprobs->chosen->logprob;
    if (m->first_logprobs) {
        for (size_t i = 0; i < m->first_logprobs->n_top && i < SAMPLING_MAX_TOP_LOGPROBS; i++) {
            if (!m->first_logprobs->top[i]) break;
            first.top[i].token = m->first_logprobs->top[i]->token_id;
            first.top[i].logprob = m->first_logprobs->top[i]->logprob;
            first.n_top = (uint32_t)i + 1;
        }
    }
    engine_transfer_t xfer = {.bytes = m->bytes_transferred, .us = m->transfer_us};
    /* Active-message bytes complete at the writer before they land here:
     * adopt only once this agent has counted them all (usually already).
     * Checked under d->mu after AWAIT is set, so a completion after the
     * check finds the job AWAIT in disagg_on_recv_full and wakes the engine. */
    j->state = DJOB_AWAIT;
    j->am_bytes = m->am_bytes;
    j->first = first;
    j->xfer = xfer;
    uint64_t tag = j->tag; /* j is not ours once the lock is dropped */
    int arrived = m->am_bytes ? kvx_recv_done(d->kvx, tag, m->am_bytes) : 1;
    if (arrived != 0) {
        d->n_pending--;
        j->state = arrived == 1 ? DJOB_DONE : DJOB_FAILED;
    }
    pthread_mutex_unlock(&d->mu);
    metrics_counter_add(d->m_bytes, m->bytes_transferred);
    metrics_counter_add(d->m_am_bytes, m->am_bytes);
    metrics_histogram_observe(d->m_xfer, (double)m->transfer_us * 1e-6);
    metrics_histogram_observe(d->m_remote_s, secs);
    if (arrived == 0) { /* disagg_on_recv_full wakes the engine thread (disagg_expire) */
        metrics_counter_inc(d->m_am_waits);
        RLOG_DEBUG(m->request_id, "PrefillDone before its %" PRIu64 " AM bytes: waiting",
                   m->am_bytes);
        return;
    }
    kvx_recv_forget(d->kvx, tag);
    if (arrived != 1) {
        metrics_counter_inc(d->m_fail_error);
        RLOG_WARN(m->request_id, "transfer tag lost (%s): prefilling locally",
                  sl_strerror(arrived));
        engine_submit_adopt_fail(d->o.engine, m->request_id);
        return;
    }
    RLOG_DEBUG(m->request_id,
               "remote prefill done in %.3f ms (%" PRIu64 " bytes, %" PRIu64 " by AM, in %" PRIu64
               " us)",
               secs * 1e3, m->bytes_transferred, m->am_bytes, m->transfer_us);
    engine_submit_adopt_done(d->o.engine, m->request_id, &first, &xfer);
}

/* The kvx agent's completion callback (its progress thread, outside the
 * agent lock): all the bytes declared under tag have landed. A job waiting
 * for them (AWAIT) is adopted by the engine thread, woken here. */
static void disagg_on_recv_full(void *ud, uint64_t tag) {
    disagg_t *d = ud;
    bool wake = false;
    pthread_mutex_lock(&d->mu);
    for (djob_t *j = d->jobs; j && !wake; j = j->next)
        wake = j->tag == tag && j->state == DJOB_AWAIT;
    pthread_mutex_unlock(&d->mu);
    if (wake) engine_wake(d->o.engine);
}

/* ---- prefill workers ------------------------------------------------------------------ */

/* Whether a prefill worker's registration can serve this worker's jobs (same
 * model, block size and block bytes; fields it lacks are not checked). */
static bool disagg_compatible(const disagg_t *d, const discovery_instance_t *inst) {
    cJSON *j = inst->json ? cJSON_Parse(inst->json) : NULL;
    bool ok = true;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "model");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(j, "block_size");
    const cJSON *bb = cJSON_GetObjectItemCaseSensitive(j, "block_bytes");
    if (cJSON_IsString(m) && d->model[0] && strcmp(m->valuestring, d->model) != 0) ok = false;
    if (cJSON_IsNumber(bs) && bs->valuedouble != (double)d->o.fwd->block_size) ok = false;
    if (cJSON_IsNumber(bb) && bb->valuedouble != (double)d->o.fwd->block_bytes) ok = false;
    cJSON_Delete(j);
    return ok;
}

static void disagg_on_prefill_add(const discovery_instance_t *inst, void *ud) {
    disagg_t *d = ud;
    if (!disagg_compatible(d, inst)) {
        LOG_WARN("prefill worker %016" PRIx64 " ignored: other model, block size or KV layout",
                 (uint64_t)inst->instance_id);
        return;
    }
    pthread_mutex_lock(&d->mu);
    bool have = false;
    for (uint32_t i = 0; i < d->n_prefillers; i++) have |= d->prefillers[i] == inst->instance_id;
    if (!have && d->n_prefillers < DISAGG_MAX_PREFILLERS) {
        d->depth[d->n_prefillers] = 0;
        d->prefillers[d->n_prefillers++] = inst->instance_id;
    }
    metrics_gauge_set(d->m_prefillers, d->n_prefillers);
    pthread_mutex_unlock(&d->mu);
    if (!have) LOG_INFO("prefill worker %016" PRIx64 " joined", (uint64_t)inst->instance_id);
}

static void disagg_on_prefill_remove(const discovery_instance_t *inst, void *ud) {
    disagg_t *d = ud;
    pthread_mutex_lock(&d->mu);
    for (uint32_t i = 0; i < d->n_prefillers; i++)
        if (d->prefillers[i] == inst->instance_id) {
            d->n_prefillers--;
            d->prefillers[i] = d->prefillers[d->n_prefillers];
            d->depth[i] = d->depth[d->n_prefillers];
            break;
        }
    metrics_gauge_set(d->m_prefillers, d->n_prefillers);
    pthread_mutex_unlock(&d->mu);
    LOG_INFO("prefill worker %016" PRIx64 " left", (uint64_t)inst->instance_id);
}

int disagg_watch(disagg_t *d, discovery_t *disc) {
    if (!d || !disc) return SL_EINVAL;
    if (!d->capable || d->watch) return 0;
    return discovery_watch(disc, "prefill", disagg_on_prefill_add, disagg_on_prefill_remove, d,
                           &d->watch);
}

void disagg_unwatch(disagg_t *d) {
    if (!d) return;
    discovery_watch_free(d->watch);
    d->watch = NULL;
    pthread_mutex_lock(&d->mu);
    d->n_prefillers = 0;
    pthread_mutex_unlock(&d->mu);
}

/* LoadMetrics of prefill workers: their queue depth. */
static void disagg_on_load(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *pm, void *ud) {
    (void)bus;
    (void)msg;
    disagg_t *d = ud;
    const Sluice__V1__LoadMetrics *m = (const Sluice__V1__LoadMetrics *)pm;
    if (!m->component || strcmp(m->component, "prefill") != 0) return;
    pthread_mutex_lock(&d->mu);
    for (uint32_t i = 0; i < d->n_prefillers; i++)
        if ((uint64_t)d->prefillers[i] == m->worker_id) d->depth[i] = m->prefill_queue_depth;
    pthread_mutex_unlock(&d->mu);
}

/* ---- decisions and jobs ----------------------------------------------------------------- */

bool disagg_want(disagg_t *d, const wreq_t *r, uint32_t *adopt_min) {
    if (!d || !d->capable || !r) return false;
    bool ok;
    pthread_mutex_lock(&d->mu);
    if (d->o.mode == WORKER_DISAGG_ALWAYS)
        ok = d->n_prefillers > 0;
    else {
        /* Saturated: the prefill workers' own queue depths (all decode
         * workers' jobs, from their LoadMetrics) or this worker's jobs in
         * flight, whichever is larger, reach queue_max per prefill worker. */
        uint64_t queued = 0;
        for (uint32_t i = 0; i < d->n_prefillers; i++) queued += d->depth[i];
        if (queued < d->n_pending) queued = d->n_pending;
        ok = d->n_prefillers > 0 && r->n_tokens > d->o.max_local_prefill &&
             queued < (uint64_t)d->n_prefillers * d->o.queue_max;
    }
    pthread_mutex_unlock(&d->mu);
    *adopt_min = d->o.mode == WORKER_DISAGG_ALWAYS ? 0 : d->o.max_local_prefill;
    return ok;
}

/* Sends the job without blocking the engine thread: to the hinted prefill
 * worker's own subject when discovery knows it, with a reply subject of ours
 * (<ack_prefix>.<tag>; the packed job is kept on j until disagg_on_ack sees
 * the receipt, or "no responders" - it died - and re-sends it to the queue
 * group); else to the queue group. No answer: the job deadline covers it. */
static int disagg_job_publish(disagg_t *d, const wreq_t *r, djob_t *j, const ProtobufCMessage *m) {
    uint64_t hint = r->prefill_hint;
    bool live = false;
    if (hint) {
        pthread_mutex_lock(&d->mu);
        for (uint32_t i = 0; i < d->n_prefillers && !live; i++)
            live = (uint64_t)d->prefillers[i] == hint;
        pthread_mutex_unlock(&d->mu);
    }
    if (live) {
        char subj[BUS_SUBJECT_MAX], reply[BUS_SUBJECT_MAX];
        size_t len = protobuf_c_message_get_packed_size(m);
        uint8_t *buf = malloc(len ? len : 1); /* (len) packed PrefillJob */
        int rc = buf ? bus_subject_instance(subj, sizeof subj, d->ns, "prefill", "jobs", hint)
                     : SL_ENOMEM;
        if (rc == 0 && snprintf(reply, sizeof reply, "%s.%016" PRIx64, d->ack_prefix, j->tag) >=
                           (int)sizeof reply)
            rc = SL_EINVAL;
        if (rc == 0) {
            protobuf_c_message_pack(m, buf);
            pthread_mutex_lock(&d->mu); /* before the answer can come */
            j->packed = buf;
            j->packed_len = len;
            pthread_mutex_unlock(&d->mu);
            const uint8_t *data = buf; /* copied out before an answer can free it */
            buf = NULL;
            rc = bus_publish_reply(d->o.bus, subj, reply, data, len);
            if (rc) {
                pthread_mutex_lock(&d->mu);
                buf = j->packed;
                j->packed = NULL;
                pthread_mutex_unlock(&d->mu);
            }
        }
        free(buf);
        if (rc == 0) {
            RLOG_DEBUG(r->id, "PrefillJob sent to prefill worker %016" PRIx64, hint);
            return 0;
        }
        RLOG_INFO(r->id, "prefill worker %016" PRIx64 " did not take the job (%s): queue group",
                  hint, sl_strerror(rc));
    }
    if (hint) metrics_counter_inc(d->m_hint_fallback);
    return bus_publish_proto(d->o.bus, d->jobs_subject, m);
}

/* Receipts of hinted jobs (bus thread): an acknowledgement ends the wait;
 * "no responders" sends the kept job to the queue group, if still pending. */
static void disagg_on_ack(bus_t *bus, const bus_msg_t *msg, void *ud) {
    disagg_t *d = ud;
    const char *subj = bus_msg_subject(msg), *dot = subj ? strrchr(subj, '.') : NULL;
    char *end = NULL;
    uint64_t tag = dot ? strtoull(dot + 1, &end, 16) : 0;
    if (!tag || !end || *end) return;
    bool nr = bus_msg_is_no_responders(msg);
    uint8_t *buf = NULL;
    size_t len = 0;
    char *id = NULL;
    pthread_mutex_lock(&d->mu);
    djob_t *j = d->jobs;
    while (j && j->tag != tag) j = j->next;
    if (j && !nr) {
        disagg_job_unkeep(d, j);
    } else if (j && j->packed) {
        buf = j->packed;
        len = j->packed_len;
        j->packed = NULL;
        if (j->state != DJOB_PENDING) {
            free(buf);
            buf = NULL;
        } else {
            id = strdup(j->id); /* for the log line */
        }
    }
    pthread_mutex_unlock(&d->mu);
    if (!buf) goto out;
    metrics_counter_inc(d->m_hint_fallback);
    int rc = bus_publish(bus, d->jobs_subject, buf, len);
    if (rc)
        RLOG_WARN(id ? id : "", "PrefillJob not re-sent to the queue group (%s): deadline",
                  sl_strerror(rc));
    else
        RLOG_INFO(id ? id : "", "hinted prefill worker has no responders: queue group");
out:
    free(buf);
    free(id);
}

void disagg_job_send(disagg_t *d, const wreq_t *r, const engine_output_t *o, uint64_t worker_id) {
    int rc = 0;
    djob_t *j = NULL;
    uint32_t bs = d->o.fwd->block_size;
    Sluice__V1__PrefillJob m = SLUICE__V1__PREFILL_JOB__INIT;
    Sluice__V1__SamplingParams sp;
    j = calloc(1, sizeof *j);
    if (!j || !(j->id = strdup(r->id))) {
        rc = SL_ENOMEM;
        goto out;
    }
    uint64_t timeout = d->o.timeout_ms;
    j->sent_ns = sl_mono_ns();
    j->deadline_ns = j->sent_ns + (int64_t)(timeout + DISAGG_GRACE_MS) * 1000000;
    m.version = 1;
    m.request_id = r->id;
    m.decode_worker_id = worker_id;
    m.token_ids = r->tokens;
    m.n_token_ids = r->n_tokens;
    m.dst_block_ids = (uint32_t *)o->blocks;
    m.n_dst_block_ids = o->n_blocks;
    m.skip_blocks = o->cached_tokens / bs;
    /* the tag under which the prefill worker's active-message writes may
     * land: only the job's uncached blocks, and their bytes, no more */
    pthread_mutex_lock(&d->mu);
    if (++d->tag_seq + d->tag_base == 0) d->tag_seq++;
    j->tag = d->tag_base + d->tag_seq;
    pthread_mutex_unlock(&d->mu);
    uint32_t n_write = o->n_blocks > m.skip_blocks ? o->n_blocks - m.skip_blocks : 0;
    j->expect_bytes = (uint64_t)n_write * d->o.fwd->block_bytes;
    rc = kvx_recv_expect_blocks(d->kvx, d->region, j->tag, o->blocks + (o->n_blocks - n_write),
                                n_write);
    if (rc) {
        j->tag = 0;
        goto out;
    }
    m.transfer_tag = j->tag;
    wreq_sampling_to_proto(&r->sampling, &sp);
    m.sampling = &sp;
    m.reply_subject = d->reply_subject;
    m.ucx_address = (ProtobufCBinaryData){.data = d->addr, .len = d->addr_len};
    m.rkey = (ProtobufCBinaryData){.data = d->rkey, .len = d->rkey_len};
    m.remote_base = kvx_region_base(d->region);
    m.block_bytes = kvx_region_block_bytes(d->region);
    m.deadline_unix_ms = sl_wall_ms() + timeout;
    m.model = d->model;
    Sluice__V1__StopConditions sc = SLUICE__V1__STOP_CONDITIONS__INIT;
    sc.min_tokens = r->min_tokens;
    sc.ignore_eos = r->ignore_eos;
    sc.n_stop_token_ids = r->n_stop_ids;
    sc.stop_token_ids = r->stop_ids;
    m.stop = &sc;
    m.n_prior_output = r->n_prior;
    pthread_mutex_lock(&d->mu);
    djob_t *old = disagg_job_find(d, r->id); /* a previous attempt of the same id */
    old = old ? disagg_job_take(d, r->id) : NULL;
    j->next = d->jobs;
    d->jobs = j;
    d->n_pending++;
    pthread_mutex_unlock(&d->mu);
    disagg_job_untag(d, old);
    djob_free(old);
    rc = disagg_job_publish(d, r, j, &m.base);
    if (rc) {
        pthread_mutex_lock(&d->mu);
        j = disagg_job_take(d, r->id);
        pthread_mutex_unlock(&d->mu);
        goto out;
    }
    RLOG_DEBUG(r->id, "remote prefill: %u tokens, %u blocks (%u cached)", r->n_tokens, o->n_blocks,
               m.skip_blocks);
    j = NULL;
out:
    if (rc) {
        RLOG_WARN(r->id, "PrefillJob not sent (%s): prefilling locally", sl_strerror(rc));
        metrics_counter_inc(d->m_fail_error);
        engine_submit_adopt_fail(d->o.engine, r->id);
    }
    disagg_job_untag(d, j);
    djob_free(j);
}

/* What disagg_expire does to a job once the lock is dropped. */
typedef struct dact {
    char *id;
    bool adopt; /* else fail over */
    bool ended;
    sampling_result_t first;
    engine_transfer_t xfer;
} dact_t;

void disagg_expire(disagg_t *d) {
    if (!d || !d->capable) return;
    int64_t now = sl_mono_ns();
    dact_t act[16];
    size_t n = 0;
    pthread_mutex_lock(&d->mu);
    for (djob_t **pp = &d->jobs; *pp && n < 16;) {
        djob_t *j = *pp;
        int arrived = 0;
        if (j->state == DJOB_AWAIT) arrived = kvx_recv_done(d->kvx, j->tag, j->am_bytes);
        bool late = now > j->deadline_ns;
        if ((j->state != DJOB_PENDING && j->state != DJOB_AWAIT) ||
            (j->state == DJOB_PENDING && !late) || (j->state == DJOB_AWAIT && !arrived && !late)) {
            pp = &j->next;
            continue;
        }
        dact_t *a = &act[n];
        a->adopt = arrived == 1;
        a->first = j->first;
        a->xfer = j->xfer;
        a->ended = j->ended;
        a->id = strdup(j->id);
        if (!a->id) break; /* next round */
        n++;
        j->state = a->adopt ? DJOB_DONE : DJOB_FAILED;
        d->n_pending--;
        disagg_job_untag(d, j);
        disagg_job_unkeep(d, j);
        if (j->ended) { /* nobody waits for it any more */
            *pp = j->next;
            djob_free(j);
        } else {
            pp = &j->next;
        }
    }
    metrics_gauge_set(d->m_inflight, d->n_pending);
    pthread_mutex_unlock(&d->mu);
    for (size_t i = 0; i < n; i++) {
        if (act[i].adopt) { /* for an ended request this only frees its blocks */
            RLOG_DEBUG(act[i].id, "AM data complete after PrefillDone: adopting");
            if (engine_adopt_done(d->o.engine, act[i].id, &act[i].first, &act[i].xfer) == SL_EINVAL)
                metrics_counter_inc(d->m_fail_error);
        } else {
            metrics_counter_inc(d->m_fail_timeout);
            if (!act[i].ended) RLOG_WARN(act[i].id, "remote prefill timed out: prefilling locally");
            engine_adopt_fail(d->o.engine, act[i].id); /* or frees the orphaned blocks */
        }
        free(act[i].id);
    }
}

void disagg_request_end(disagg_t *d, const char *request_id) {
    if (!d) return;
    djob_t *j = NULL;
    if (d->capable) {
        pthread_mutex_lock(&d->mu);
        j = disagg_job_find(d, request_id);
        if (j && (j->state == DJOB_PENDING || j->state == DJOB_AWAIT)) {
            /* Ended (cancel, deadline) while the prefill worker may still
             * write: keep the job until its answer or timeout frees the
             * engine's orphaned blocks. */
            j->ended = true;
            pthread_mutex_unlock(&d->mu);
            return;
        }
        j = j ? disagg_job_take(d, request_id) : NULL;
        pthread_mutex_unlock(&d->mu);
    }
    metrics_counter_inc(j && j->state == DJOB_DONE ? d->m_remote : d->m_local);
    disagg_job_untag(d, j);
    djob_free(j);
}

uint32_t disagg_inflight(disagg_t *d) {
    if (!d) return 0;
    pthread_mutex_lock(&d->mu);
    uint32_t n = d->n_pending;
    pthread_mutex_unlock(&d->mu);
    return n;
}

const char *disagg_desc_b64(const disagg_t *d) {
    return d && d->capable ? d->desc_b64 : NULL;
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

static int disagg_metrics_init(disagg_t *d, metrics_registry_t *r) {
    static const double xfer_b[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                    0.01,   0.025,   0.05,   0.1,   0.25,   1};
    static const double job_b[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    metrics_family_t *f =
        metrics_family_new(r, METRICS_COUNTER, "sluice_worker_prefills_total",
                           "Prompts prefilled, by where", (const char *[]){"where"}, 1, NULL, 0);
    metrics_family_t *g =
        metrics_family_new(r, METRICS_COUNTER, "sluice_worker_remote_prefill_failures_total",
                           "Remote prefills given up (then done locally), by reason",
                           (const char *[]){"reason"}, 1, NULL, 0);
    if (!f || !g) return SL_ENOMEM;
    d->m_local = metrics_counter_get(f, (const char *[]){"local"});
    d->m_remote = metrics_counter_get(f, (const char *[]){"remote"});
    d->m_fail_error = metrics_counter_get(g, (const char *[]){"error"});
    d->m_fail_timeout = metrics_counter_get(g, (const char *[]){"timeout"});
    d->m_bytes = metrics_counter_new(r, "sluice_worker_kv_transfer_bytes_total",
                                     "KV bytes written into this worker by prefill workers");
    d->m_am_bytes = metrics_counter_new(
        r, "sluice_worker_kv_transfer_am_bytes_total",
        "Of the KV bytes written into this worker, those sent by active messages (TCP)");
    d->m_am_waits = metrics_counter_new(
        r, "sluice_worker_kv_transfer_am_waits_total",
        "PrefillDone that arrived before its active-message data (adopted later)");
    d->m_hinted = metrics_counter_new(r, "sluice_worker_prefill_jobs_hinted_total",
                                      "PrefillJobs sent to the router's prefill worker");
    d->m_hint_fallback =
        metrics_counter_new(r, "sluice_worker_prefill_hint_fallbacks_total",
                            "PrefillJobs with a hint sent to the queue group instead (dead, "
                            "unknown or not answering prefill worker)");
    d->m_stale = metrics_counter_new(r, "sluice_worker_prefill_done_ignored_total",
                                     "PrefillDone messages for no pending job (late, unknown)");
    d->m_xfer = metrics_histogram_new(r, "sluice_worker_kv_transfer_seconds",
                                      "KV write time reported by the prefill worker", xfer_b,
                                      sizeof xfer_b / sizeof *xfer_b);
    d->m_remote_s = metrics_histogram_new(r, "sluice_worker_remote_prefill_seconds",
                                          "PrefillJob sent to PrefillDone received", job_b,
                                          sizeof job_b / sizeof *job_b);
    d->m_prefillers =
        metrics_gauge_new(r, "sluice_worker_prefill_workers", "Prefill workers discovered");
    d->m_inflight = metrics_gauge_new(r, "sluice_worker_remote_prefills_inflight",
                                      "PrefillJobs sent and not answered");
    if (!d->m_local || !d->m_remote || !d->m_fail_error || !d->m_fail_timeout || !d->m_bytes ||
        !d->m_stale || !d->m_am_bytes || !d->m_am_waits || !d->m_xfer || !d->m_remote_s ||
        !d->m_prefillers || !d->m_inflight || !d->m_hinted || !d->m_hint_fallback)
        return SL_ENOMEM;
    return 0;
}

int disagg_new(const disagg_opts_t *o, disagg_t **out) {
    int rc = 0;
    disagg_t *d = NULL;
    uint8_t *desc = NULL;
    size_t desc_len = 0;
    if (!o || !out || !o->engine || !o->bus || !o->fwd || !o->reg || !o->ns) return SL_EINVAL;
    *out = NULL;
    d = calloc(1, sizeof *d);
    if (!d) return SL_ENOMEM;
    pthread_mutex_init(&d->mu, NULL);
    d->o = *o;
    d->o.ns = NULL;
    snprintf(d->ns, sizeof d->ns, "%s", o->ns);
    d->o.model = NULL;
    snprintf(d->model, sizeof d->model, "%s", o->model ? o->model : "");
    rc = disagg_metrics_init(d, o->reg);
    if (rc) goto out;
    if (o->mode == WORKER_DISAGG_OFF) goto done;
    if (!o->fwd->kv_base || !o->fwd->block_bytes) {
        LOG_WARN("--disagg %s ignored: no host KV memory to receive into (mocker, or KV in device "
                 "memory)",
                 worker_disagg_names[o->mode]);
        goto done;
    }
    uint64_t rnd = 0;
    if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) rnd = (uint64_t)sl_mono_ns();
    if (getrandom(&d->tag_base, sizeof d->tag_base, 0) != (ssize_t)sizeof d->tag_base)
        d->tag_base = rnd * 0x9E3779B97F4A7C15ull;
    rc = bus_subject_endpoint(d->jobs_subject, sizeof d->jobs_subject, o->ns, "prefill", "jobs");
    if (rc == 0)
        rc = bus_subject_instance(d->reply_subject, sizeof d->reply_subject, o->ns, "backend",
                                  "prefill_done", rnd);
    if (rc == 0)
        rc = bus_subject_instance(d->ack_prefix, sizeof d->ack_prefix, o->ns, "backend",
                                  "prefill_ack", rnd);
    if (rc) goto out;
    if (o->kvx && o->region) { /* the caller's, holding the KV memory already */
        d->kvx = o->kvx;
        d->region = o->region;
    } else {
        kvx_agent_opts_t ao = {.name = "decode"};
        rc = kvx_agent_new(&ao, &d->kvx);
        if (rc == 0)
            rc = kvx_region_register(d->kvx, o->fwd->kv_base, o->fwd->block_bytes, o->fwd->n_blocks,
                                     NULL, &d->region);
    }
    if (rc == 0) rc = kvx_agent_address_export(d->kvx, &d->addr, &d->addr_len);
    if (rc == 0) rc = kvx_region_rkey_export(d->region, &d->rkey, &d->rkey_len);
    if (rc == 0) rc = kvx_region_desc_export(d->region, &desc, &desc_len);
    if (rc) {
        LOG_ERROR("UCX: cannot register the KV pool: %s", sl_strerror(rc));
        goto out;
    }
    d->desc_b64 = base64_encode_alloc(desc, desc_len);
    if (!d->desc_b64) {
        rc = SL_ENOMEM;
        goto out;
    }
    rc = bus_subscribe_proto(o->bus, d->reply_subject, NULL, &sluice__v1__prefill_done__descriptor,
                             disagg_on_done, d, &d->sub_done);
    char load[BUS_SUBJECT_MAX], acks[BUS_SUBJECT_MAX];
    if (rc == 0 && snprintf(acks, sizeof acks, "%s.*", d->ack_prefix) >= (int)sizeof acks)
        rc = SL_EINVAL;
    if (rc == 0) rc = bus_subscribe(o->bus, acks, NULL, disagg_on_ack, d, &d->sub_ack);
    if (rc == 0) rc = bus_subject_topic(load, sizeof load, o->ns, "load");
    if (rc == 0 && o->mode == WORKER_DISAGG_AUTO)
        rc = bus_subscribe_proto(o->bus, load, NULL, &sluice__v1__load_metrics__descriptor,
                                 disagg_on_load, d, &d->sub_load);
    if (rc == 0) rc = bus_flush(o->bus, 2000);
    if (rc == 0) rc = kvx_agent_recv_notify(d->kvx, disagg_on_recv_full, d);
    if (rc) goto out;
    d->capable = true;
    LOG_INFO("disaggregation %s: remote prefill above %u uncached tokens, timeout %u ms",
             worker_disagg_names[o->mode],
             o->mode == WORKER_DISAGG_ALWAYS ? 0 : o->max_local_prefill, o->timeout_ms);
done:
    *out = d;
    d = NULL;
out:
    free(desc);
    disagg_free(d);
    return rc;
}

void disagg_free(disagg_t *d) {
    if (!d) return;
    bus_sub_free(d->sub_done);
    bus_sub_free(d->sub_ack);
    bus_sub_free(d->sub_load);
    disagg_unwatch(d);
    if (d->kvx) kvx_agent_recv_notify(d->kvx, NULL, NULL); /* no call runs on d after this */
    for (djob_t *j = d->jobs, *next; j; j = next) {
        next = j->next;
        disagg_job_untag(d, j);
        djob_free(j);
    }
    d->jobs = NULL;
    if (d->kvx != d->o.kvx) {       /* ours, not the caller's */
        kvx_region_free(d->region); /* nothing is sent from it: writes come in */
        kvx_agent_free(d->kvx);
    }
    free(d->addr);
    free(d->rkey);
    free(d->desc_b64);
    pthread_mutex_destroy(&d->mu);
    free(d);
}
