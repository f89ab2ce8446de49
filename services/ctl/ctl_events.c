/* ctl_events.c - `sluice-ctl events`: KV events and load reports, decoded.
 *
 * Subscribes to sluice.<ns>.kv_events (KvEventBatch), sluice.<ns>.load
 * (LoadMetrics), sluice.<ns>.router.active (ActiveSeqEvent) and
 * sluice.<ns>.prefill.jobs (PrefillJob, observed outside the workers' queue
 * group) and prints each message on one line (or one JSON object per line;
 * the last two through ctl_proto.h's generic form). Messages that do not unpack are printed as
 * MALFORMED and counted, never fatal: this is the tool one reaches for when a worker publishes
 * garbage. 64-bit ids and hashes are printed as 16 hex digits (in JSON as
 * strings, since they do not fit a double).
 */
#include "services/ctl/ctl.h"
#include "common/base/err.h"
#include "common/runtime/bus.h"
#include "common/runtime/kv_events.h"
#include "services/ctl/ctl_proto.h"
#include "proto/sluice.pb-c.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest list of hashes printed in full on a text line. */
#define HASHES_SHOWN 4

typedef struct events_state {
    const ctl_cfg_t *cfg;
    pthread_mutex_t mu;
    uint64_t decoded, malformed;
    volatile int done;
} events_state_t;

static const char *tier_name(int tier) {
    switch (tier) {
    case SLUICE__V1__KV_TIER__KV_TIER_DEVICE:
        return "device";
    case SLUICE__V1__KV_TIER__KV_TIER_HOST:
        return "host";
    case SLUICE__V1__KV_TIER__KV_TIER_DISK:
        return "disk";
    default:
        return "unknown";
    }
}

static void hex16(char *buf, size_t len, uint64_t v) {
    snprintf(buf, len, "%016" PRIx64, v);
}

static void json_hex(cJSON *o, const char *name, uint64_t v) {
    char h[24];
    hex16(h, sizeof h, v);
    cJSON_AddStringToObject(o, name, h);
}

static void json_hex_item(cJSON *arr, uint64_t v) {
    char h[24];
    hex16(h, sizeof h, v);
    cJSON_AddItemToArray(arr, cJSON_CreateString(h));
}

/* ---- KvEventBatch ------------------------------------------------------------ */

static cJSON *kv_batch_json(const Sluice__V1__KvEventBatch *b) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "KvEventBatch");
    cJSON_AddNumberToObject(o, "version", b->version);
    json_hex(o, "worker_id", b->worker_id);
    cJSON_AddStringToObject(o, "tier", tier_name(b->tier));
    cJSON_AddNumberToObject(o, "event_id", (double)b->event_id);
    cJSON_AddNumberToObject(o, "block_size", b->block_size);
    cJSON_AddStringToObject(o, "model", b->model ? b->model : "");
    cJSON_AddNumberToObject(o, "timestamp_ms", (double)b->timestamp_ms);
    cJSON_AddBoolToObject(o, "resync", b->resync);
    cJSON *evs = cJSON_AddArrayToObject(o, "events");
    for (size_t i = 0; i < b->n_events; i++) {
        const Sluice__V1__KvEvent *e = b->events[i];
        cJSON *je = cJSON_CreateObject();
        if (e && e->data_case == SLUICE__V1__KV_EVENT__DATA_STORED &&
            !kv_stored_invalid(e->stored)) {
            cJSON *s = cJSON_AddObjectToObject(je, "stored");
            if (e->stored->has_parent) json_hex(s, "parent_hash", e->stored->parent_hash);
            cJSON *blocks = cJSON_AddArrayToObject(s, "blocks");
            for (size_t k = 0; k < kv_stored_count(e->stored); k++) {
                cJSON *jb = cJSON_CreateObject();
                json_hex(jb, "block_hash", kv_stored_block_hash(e->stored, k));
                json_hex(jb, "sequence_hash", kv_stored_seq_hash(e->stored, k));
                cJSON_AddItemToArray(blocks, jb);
            }
        } else if (e && e->data_case == SLUICE__V1__KV_EVENT__DATA_REMOVED && e->removed) {
            cJSON *r = cJSON_AddObjectToObject(je, "removed");
            cJSON *hs = cJSON_AddArrayToObject(r, "sequence_hashes");
            for (size_t k = 0; k < e->removed->n_sequence_hashes; k++)
                json_hex_item(hs, e->removed->sequence_hashes[k]);
        } else if (e && e->data_case == SLUICE__V1__KV_EVENT__DATA_CLEARED) {
            cJSON_AddObjectToObject(je, "cleared");
        } else {
            cJSON_AddObjectToObject(je, "unknown");
        }
        cJSON_AddItemToArray(evs, je);
    }
    return o;
}

/* Text form: one line, hashes beyond HASHES_SHOWN summarised. */
static void kv_batch_text(FILE *f, const Sluice__V1__KvEventBatch *b) {
    char h[24], m[80];
    hex16(h, sizeof h, b->worker_id);
    fprintf(f,
            "KvEventBatch worker=%s tier=%s event_id=%" PRIu64 " events=%zu model=%s "
            "block_size=%u%s",
            h, tier_name(b->tier), b->event_id, b->n_events,
            ctl_safe(b->model && *b->model ? b->model : NULL, m, sizeof m, 64), b->block_size,
            b->resync ? " resync" : "");
    for (size_t i = 0; i < b->n_events; i++) {
        const Sluice__V1__KvEvent *e = b->events[i];
        if (e && e->data_case == SLUICE__V1__KV_EVENT__DATA_STORED &&
            !kv_stored_invalid(e->stored)) {
            size_t nb = kv_stored_count(e->stored);
            fprintf(f, " | stored");
            if (e->stored->has_parent) {
                hex16(h, sizeof h, e->stored->parent_hash);
                fprintf(f, " parent=%s", h);
            }
            fprintf(f, " blocks=%zu", nb);
            for (size_t k = 0; k < nb && k < HASHES_SHOWN; k++) {
                hex16(h, sizeof h, kv_stored_seq_hash(e->stored, k));
                fprintf(f, " %s", h);
            }
            if (nb > HASHES_SHOWN) fprintf(f, " ...");
        } else if (e && e->data_case == SLUICE__V1__KV_EVENT__DATA_REMOVED && e->removed) {
            fprintf(f, " | removed %zu", e->removed->n_sequence_hashes);
            for (size_t k = 0; k < e->removed->n_sequence_hashes && k < HASHES_SHOWN; k++) {
                hex16(h, sizeof h, e->removed->sequence_hashes[k]);
                fprintf(f, " %s", h);
            }
            if (e->removed->n_sequence_hashes > HASHES_SHOWN) fprintf(f, " ...");
        } else if (e && e->data_case == SLUICE__V1__KV_EVENT__DATA_CLEARED) {
            fprintf(f, " | cleared");
        } else {
            fprintf(f, " | unknown");
        }
    }
}

/* ---- LoadMetrics ------------------------------------------------------------- */

static cJSON *load_json(const Sluice__V1__LoadMetrics *l) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "LoadMetrics");
    cJSON_AddNumberToObject(o, "version", l->version);
    json_hex(o, "worker_id", l->worker_id);
    cJSON_AddStringToObject(o, "component", l->component ? l->component : "");
    cJSON_AddNumberToObject(o, "active_seqs", l->active_seqs);
    cJSON_AddNumberToObject(o, "waiting_seqs", l->waiting_seqs);
    cJSON_AddNumberToObject(o, "kv_blocks_total", (double)l->kv_blocks_total);
    cJSON_AddNumberToObject(o, "kv_blocks_used", (double)l->kv_blocks_used);
    cJSON_AddNumberToObject(o, "kv_blocks_cached", (double)l->kv_blocks_cached);
    cJSON_AddNumberToObject(o, "pending_prefill_tokens", (double)l->pending_prefill_tokens);
    cJSON_AddNumberToObject(o, "kv_usage", l->kv_usage);
    cJSON_AddNumberToObject(o, "timestamp_ms", (double)l->timestamp_ms);
    cJSON_AddNumberToObject(o, "requests_total", (double)l->requests_total);
    cJSON_AddNumberToObject(o, "tokens_per_s", l->tokens_per_s);
    cJSON_AddNumberToObject(o, "prefill_queue_depth", l->prefill_queue_depth);
    return o;
}

static void load_text(FILE *f, const Sluice__V1__LoadMetrics *l) {
    char h[24], c[80];
    hex16(h, sizeof h, l->worker_id);
    fprintf(f,
            "LoadMetrics worker=%s component=%s active=%u waiting=%u kv_used=%" PRIu64 "/%" PRIu64
            " kv_cached=%" PRIu64 " kv_usage=%.3f pending_prefill=%" PRIu64
            " prefill_queue=%u requests=%" PRIu64 " tokens_per_s=%.1f",
            h, ctl_safe(l->component && *l->component ? l->component : NULL, c, sizeof c, 64),
            l->active_seqs, l->waiting_seqs, l->kv_blocks_used, l->kv_blocks_total,
            l->kv_blocks_cached, (double)l->kv_usage, l->pending_prefill_tokens,
            l->prefill_queue_depth, l->requests_total, l->tokens_per_s);
}

/* ---- subscription ------------------------------------------------------------ */

typedef struct sub_ctx {
    events_state_t *st;
    const ProtobufCMessageDescriptor *desc; /* what the subject carries */
} sub_ctx_t;

static void on_msg(bus_t *bus, const bus_msg_t *msg, void *ud) {
    (void)bus;
    sub_ctx_t *sc = ud;
    events_state_t *st = sc->st;
    const uint8_t *data = bus_msg_data(msg);
    size_t len = bus_msg_len(msg);
    ProtobufCMessage *m = protobuf_c_message_unpack(sc->desc, NULL, len, data);
    bool is_load = sc->desc == &sluice__v1__load_metrics__descriptor;
    bool is_kv = sc->desc == &sluice__v1__kv_event_batch__descriptor;
    char now[40], subj[BUS_SUBJECT_MAX];
    ctl_time_now(now, sizeof now);
    ctl_safe(bus_msg_subject(msg), subj, sizeof subj, BUS_SUBJECT_MAX - 4);

    pthread_mutex_lock(&st->mu);
    if (st->done) goto out;
    if (!m) {
        st->malformed++;
        if (st->cfg->json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "time", now);
            cJSON_AddStringToObject(o, "subject", subj);
            cJSON_AddStringToObject(o, "type", "malformed");
            cJSON_AddNumberToObject(o, "bytes", (double)len);
            cJSON_AddNumberToObject(o, "malformed_total", (double)st->malformed);
            char *text = cJSON_PrintUnformatted(o);
            if (text) printf("%s\n", text);
            cJSON_free(text);
            cJSON_Delete(o);
        } else {
            printf("%s %s MALFORMED %zu bytes (expected %s; %" PRIu64 " malformed so far)\n", now,
                   subj, len, sc->desc->short_name, st->malformed);
        }
        goto out;
    }
    if (st->cfg->json) {
        cJSON *o = is_load ? load_json((const Sluice__V1__LoadMetrics *)m)
                   : is_kv ? kv_batch_json((const Sluice__V1__KvEventBatch *)m)
                           : ctl_proto_json(m);
        if (!is_load && !is_kv) cJSON_AddStringToObject(o, "type", sc->desc->short_name);
        cJSON_AddStringToObject(o, "time", now);
        cJSON_AddStringToObject(o, "subject", subj);
        char *text = cJSON_PrintUnformatted(o);
        if (text) printf("%s\n", text);
        cJSON_free(text);
        cJSON_Delete(o);
    } else {
        printf("%s %s ", now, subj);
        if (is_load) {
            load_text(stdout, (const Sluice__V1__LoadMetrics *)m);
        } else if (is_kv) {
            kv_batch_text(stdout, (const Sluice__V1__KvEventBatch *)m);
        } else { /* no hand-written line: the message as compact JSON */
            cJSON *o = ctl_proto_json(m);
            char *text = o ? cJSON_PrintUnformatted(o) : NULL;
            printf("%s %s", sc->desc->short_name, text ? text : "{}");
            cJSON_free(text);
            cJSON_Delete(o);
        }
        printf("\n");
    }
    st->decoded++;
    if (st->cfg->count && st->decoded >= st->cfg->count)
        __atomic_store_n(&st->done, 1, __ATOMIC_RELEASE);
out:
    pthread_mutex_unlock(&st->mu);
    if (m) protobuf_c_message_free_unpacked(m, NULL);
}

int ctl_events(const ctl_cfg_t *cfg) {
    int status = 1;
    bus_t *bus = NULL;
    bus_sub_t *sub_kv = NULL, *sub_load = NULL, *sub_active = NULL, *sub_jobs = NULL;
    events_state_t st;
    memset(&st, 0, sizeof st);
    st.cfg = cfg;
    pthread_mutex_init(&st.mu, NULL);
    sub_ctx_t ctx_kv = {&st, &sluice__v1__kv_event_batch__descriptor},
              ctx_load = {&st, &sluice__v1__load_metrics__descriptor},
              ctx_active = {&st, &sluice__v1__active_seq_event__descriptor},
              ctx_jobs = {&st, &sluice__v1__prefill_job__descriptor};
    char subj_kv[BUS_SUBJECT_MAX], subj_load[BUS_SUBJECT_MAX], subj_active[BUS_SUBJECT_MAX],
        subj_jobs[BUS_SUBJECT_MAX];

    int rc = bus_subject_topic(subj_kv, sizeof subj_kv, cfg->common.ns, "kv_events");
    if (rc == 0) rc = bus_subject_topic(subj_load, sizeof subj_load, cfg->common.ns, "load");
    if (rc == 0)
        rc = bus_subject_endpoint(subj_active, sizeof subj_active, cfg->common.ns, "router",
                                  "active");
    if (rc == 0)
        rc = bus_subject_endpoint(subj_jobs, sizeof subj_jobs, cfg->common.ns, "prefill", "jobs");
    if (rc < 0) {
        fprintf(stderr, "sluice-ctl: --namespace %s: %s\n", cfg->common.ns, sl_strerror(rc));
        goto out;
    }
    bus_opts_t bo = {.url = cfg->common.nats, .name = "sluice-ctl"};
    rc = bus_connect(&bus, &bo);
    if (rc < 0) {
        fprintf(stderr, "sluice-ctl: cannot connect to NATS at %s: %s (%s)\n", cfg->common.nats,
                sl_strerror(rc), bus_last_error());
        goto out;
    }
    rc = bus_subscribe(bus, subj_kv, NULL, on_msg, &ctx_kv, &sub_kv);
    if (rc == 0) rc = bus_subscribe(bus, subj_load, NULL, on_msg, &ctx_load, &sub_load);
    /* Not in the workers' queue group: jobs are observed, never taken. */
    if (rc == 0) rc = bus_subscribe(bus, subj_active, NULL, on_msg, &ctx_active, &sub_active);
    if (rc == 0) rc = bus_subscribe(bus, subj_jobs, NULL, on_msg, &ctx_jobs, &sub_jobs);
    /* The server has the subscriptions once a flush round-trips. */
    if (rc == 0) rc = bus_flush(bus, 5000);
    if (rc < 0) {
        fprintf(stderr, "sluice-ctl: subscribe: %s (%s)\n", sl_strerror(rc), bus_last_error());
        goto out;
    }
    fprintf(stderr, "sluice-ctl: subscribed to %s and %s (and %s, %s)\n", subj_kv, subj_load,
            subj_active, subj_jobs);
    int64_t deadline = cfg->timeout_ms ? ctl_now_ms() + cfg->timeout_ms : 0;
    bool reached = ctl_wait(&st.done, deadline);
    status = reached || !cfg->count ? 0 : 1;
out:
    pthread_mutex_lock(&st.mu);
    st.done = 1;
    pthread_mutex_unlock(&st.mu);
    bus_sub_free(sub_kv);
    bus_sub_free(sub_load);
    bus_sub_free(sub_active);
    bus_sub_free(sub_jobs);
    bus_free(bus);
    if (bus)
        fprintf(stderr, "sluice-ctl: %" PRIu64 " decoded, %" PRIu64 " malformed\n", st.decoded,
                st.malformed);
    pthread_mutex_destroy(&st.mu);
    return status;
}
