/* test_router.c - sluice-router against a real nats-server and etcd.
 *
 * The test plays the workers: each fake worker is an etcd lease with a
 * discovery record (backend/generate), publishes KvEventBatch on
 * sluice.<ns>.kv_events and answers KvResyncRequest on its kv_resync subject
 * with its whole state, over real NATS. Routers run in-process (router.h) so
 * that their state can be compared; one test runs the sluice-router binary.
 * Each test uses its own namespace.
 */
#include "common/base/block_hash.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/bus.h"
#include "common/runtime/kv_events.h"
#include "common/runtime/discovery.h"
#include "common/runtime/etcd.h"
#include "proto/sluice.pb-c.h"
#include "services/router/router.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static harness_nats_t g_nats;
static harness_etcd_t g_etcd;

/* ---- fake worker ----------------------------------------------------------------- */

#define FW_MAX 4096
typedef struct fake_worker {
    char ns[64];
    int64_t lease;
    uint64_t id;
    bus_t *bus;
    bus_sub_t *resync_sub;
    pthread_mutex_t lock;
    uint64_t hashes[FW_MAX]; /* device tier state */
    size_t n;
    uint64_t next_event_id;
    int resyncs;
    bool replay;             /* answer a resync from an event id with a replay */
    size_t ev_start[FW_MAX]; /* event id k stored hashes[ev_start[k - 1]..] */
    size_t ev_n[FW_MAX];
    uint64_t last_from; /* from_event_id of the last resync request */
} fake_worker_t;

/* Answers a resync in one part: a stream (as workers reply) whose only
 * message carries the end-of-stream. */
static void fw_reply_one(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *m) {
    bus_stream_writer_t *sw = NULL;
    if (bus_stream_writer_create(bus, msg, &sw) == 0) bus_stream_writer_end_proto(sw, m);
    bus_stream_writer_free(sw);
}

/* A replay as the decode worker sends it: resync false, event_id = from,
 * every event since then (lock held). */
static void fw_replay(fake_worker_t *w, bus_t *bus, const bus_msg_t *msg, uint64_t from, int tier) {
    size_t n_ev = (size_t)(w->next_event_id - from);
    Sluice__V1__KvEvent *ev = calloc(n_ev, sizeof *ev);
    Sluice__V1__KvEvent **evp = calloc(n_ev, sizeof *evp);
    Sluice__V1__KvStored *st = calloc(n_ev, sizeof *st);
    Sluice__V1__KvStoredBlock *blk = calloc(w->n + 1, sizeof *blk);
    Sluice__V1__KvStoredBlock **blkp = calloc(w->n + 1, sizeof *blkp);
    for (size_t i = 0; i < w->n; i++) {
        Sluice__V1__KvStoredBlock init = SLUICE__V1__KV_STORED_BLOCK__INIT;
        blk[i] = init;
        blk[i].sequence_hash = w->hashes[i];
        blkp[i] = &blk[i];
    }
    for (size_t k = 0; k < n_ev; k++) {
        Sluice__V1__KvEvent ei = SLUICE__V1__KV_EVENT__INIT;
        Sluice__V1__KvStored si = SLUICE__V1__KV_STORED__INIT;
        size_t id = (size_t)from + k;
        st[k] = si;
        st[k].n_blocks = w->ev_n[id - 1];
        st[k].blocks = blkp + w->ev_start[id - 1];
        ev[k] = ei;
        ev[k].data_case = SLUICE__V1__KV_EVENT__DATA_STORED;
        ev[k].stored = &st[k];
        evp[k] = &ev[k];
    }
    Sluice__V1__KvEventBatch b = SLUICE__V1__KV_EVENT_BATCH__INIT;
    b.version = 1;
    b.worker_id = w->id;
    b.tier = tier;
    b.event_id = from;
    b.n_events = n_ev;
    b.events = evp;
    b.block_size = 16;
    fw_reply_one(bus, msg, &b.base);
    free(ev);
    free(evp);
    free(st);
    free(blk);
    free(blkp);
}

static void fw_on_resync(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *m, void *ud) {
    fake_worker_t *w = ud;
    const Sluice__V1__KvResyncRequest *q = (const Sluice__V1__KvResyncRequest *)m;
    pthread_mutex_lock(&w->lock);
    w->resyncs++;
    w->last_from = q->from_event_id;
    if (w->replay && q->from_event_id > 0 && q->from_event_id < w->next_event_id) {
        fw_replay(w, bus, msg, q->from_event_id, q->tier);
        pthread_mutex_unlock(&w->lock);
        return;
    }
    Sluice__V1__KvEventBatch b = SLUICE__V1__KV_EVENT_BATCH__INIT;
    Sluice__V1__KvEvent ev[2] = {SLUICE__V1__KV_EVENT__INIT, SLUICE__V1__KV_EVENT__INIT};
    Sluice__V1__KvEvent *evp[2] = {&ev[0], &ev[1]};
    Sluice__V1__KvCleared cl = SLUICE__V1__KV_CLEARED__INIT;
    Sluice__V1__KvStored st = SLUICE__V1__KV_STORED__INIT;
    Sluice__V1__KvStoredBlock *blk = calloc(w->n + 1, sizeof *blk);
    Sluice__V1__KvStoredBlock **blkp = calloc(w->n + 1, sizeof *blkp);
    for (size_t i = 0; i < w->n; i++) {
        Sluice__V1__KvStoredBlock init = SLUICE__V1__KV_STORED_BLOCK__INIT;
        blk[i] = init;
        blk[i].sequence_hash = w->hashes[i];
        blkp[i] = &blk[i];
    }
    ev[0].data_case = SLUICE__V1__KV_EVENT__DATA_CLEARED;
    ev[0].cleared = &cl;
    ev[1].data_case = SLUICE__V1__KV_EVENT__DATA_STORED;
    ev[1].stored = &st;
    st.n_blocks = w->n;
    st.blocks = blkp;
    b.version = 1;
    b.worker_id = w->id;
    b.tier = q->tier;
    b.event_id = w->next_event_id - 1; /* the last event the dump covers, as workers send */
    b.n_events = 2;
    b.events = evp;
    b.block_size = 16;
    b.resync = true;
    fw_reply_one(bus, msg, &b.base);
    pthread_mutex_unlock(&w->lock);
    free(blk);
    free(blkp);
}

/* Registers a worker record of component (backend, prefill) under a fresh
 * lease of ttl_s seconds (no keep-alive: the lease expires unless ttl is
 * long). */
static void fw_start_as(fake_worker_t *w, const char *component, const char *ns, int block_size,
                        const char *model, int ttl_s) {
    memset(w, 0, sizeof *w);
    w->next_event_id = 1; /* a worker's pool numbers its events from 1 */
    pthread_mutex_init(&w->lock, NULL);
    snprintf(w->ns, sizeof w->ns, "%s", ns);
    etcd_t *e;
    ck_assert_int_eq(etcd_open(g_etcd.url, 2000, &e), 0);
    ck_assert_int_eq(etcd_lease_grant(e, ttl_s, &w->lease, NULL), 0);
    w->id = (uint64_t)w->lease;
    char key[256], val[1024], subj[BUS_SUBJECT_MAX];
    const char *ep = strcmp(component, "prefill") ? "generate" : "jobs";
    snprintf(key, sizeof key, "sluice/v1/%s/%s/%s/%016" PRIx64, ns, component, ep, w->id);
    ck_assert_int_eq(bus_subject_instance(subj, sizeof subj, ns, component, ep, w->id), 0);
    snprintf(val, sizeof val,
             "{\"instance_id\":\"%016" PRIx64 "\",\"namespace\":\"%s\",\"component\":\"%s\","
             "\"endpoint\":\"%s\",\"subject\":\"%s\",\"host\":\"test\",\"pid\":1,"
             "\"model\":\"%s\",\"block_size\":%d,\"kv_blocks\":1000}",
             w->id, ns, component, ep, subj, model, block_size);
    ck_assert_int_eq(etcd_put(e, key, val, strlen(val), w->lease, NULL), 0);
    etcd_free(e);
    bus_opts_t bo = {.url = g_nats.url, .name = "fake-worker"};
    ck_assert_int_eq(bus_connect(&w->bus, &bo), 0);
    ck_assert_int_eq(bus_subject_instance(subj, sizeof subj, ns, component, "kv_resync", w->id), 0);
    ck_assert_int_eq(bus_subscribe_proto(w->bus, subj, NULL,
                                         &sluice__v1__kv_resync_request__descriptor, fw_on_resync,
                                         w, &w->resync_sub),
                     0);
    bus_flush(w->bus, 2000);
}

static void fw_start(fake_worker_t *w, const char *ns, int block_size, const char *model,
                     int ttl_s) {
    fw_start_as(w, "backend", ns, block_size, model, ttl_s);
}

static void fw_stop(fake_worker_t *w) {
    bus_sub_free(w->resync_sub);
    bus_free(w->bus);
    etcd_t *e;
    if (etcd_open(g_etcd.url, 2000, &e) == 0) {
        etcd_lease_revoke(e, w->lease);
        etcd_free(e);
    }
    pthread_mutex_destroy(&w->lock);
}

/* Stores hashes as one event; publishes it unless drop (a lost batch). */
static void fw_store(fake_worker_t *w, const uint64_t *hs, size_t n, bool drop) {
    pthread_mutex_lock(&w->lock);
    Sluice__V1__KvEventBatch b = SLUICE__V1__KV_EVENT_BATCH__INIT;
    Sluice__V1__KvEvent ev = SLUICE__V1__KV_EVENT__INIT, *evp = &ev;
    Sluice__V1__KvStored st = SLUICE__V1__KV_STORED__INIT;
    /* Live events in the packed form workers send (resync dumps above use
     * the sub-message form, so the router is tested on both). */
    uint64_t *bh = calloc(n + 1, sizeof *bh), *sh = calloc(n + 1, sizeof *sh);
    ck_assert_uint_lt(w->next_event_id, FW_MAX);
    w->ev_start[w->next_event_id - 1] = w->n;
    w->ev_n[w->next_event_id - 1] = n;
    for (size_t i = 0; i < n; i++) {
        bh[i] = ~hs[i];
        sh[i] = hs[i];
        ck_assert_uint_lt(w->n, FW_MAX);
        w->hashes[w->n++] = hs[i];
    }
    ev.data_case = SLUICE__V1__KV_EVENT__DATA_STORED;
    ev.stored = &st;
    kv_stored_set(&st, bh, sh, n);
    b.version = 1;
    b.worker_id = w->id;
    b.event_id = w->next_event_id++;
    b.n_events = 1;
    b.events = &evp;
    b.block_size = 16;
    char subj[BUS_SUBJECT_MAX];
    bus_subject_topic(subj, sizeof subj, w->ns, "kv_events");
    if (!drop) ck_assert_int_eq(bus_publish_proto(w->bus, subj, &b.base), 0);
    bus_flush(w->bus, 2000);
    pthread_mutex_unlock(&w->lock);
    free(bh);
    free(sh);
}

/* ---- helpers ---------------------------------------------------------------------- */

static router_t *router_start(const char *ns, router_mode_t mode) {
    router_opts_t o = {.nats_url = g_nats.url,
                       .etcd_url = g_etcd.url,
                       .ns = ns,
                       .model = "m",
                       .block_size = 16,
                       .mode = mode,
                       .approx_ttl_ms = 1500,
                       .lease_ttl_s = 3,
                       .register_self = true};
    router_t *r = NULL;
    ck_assert_int_eq(router_new(&o, &r), 0);
    return r;
}

static bool wait_for(bool (*cond)(void *), void *arg, int timeout_ms) {
    long long end = harness_now_ms() + timeout_ms;
    while (harness_now_ms() < end) {
        if (cond(arg)) return true;
        harness_sleep_ms(20);
    }
    return cond(arg);
}

typedef struct wait_arg {
    router_t *r;
    uint64_t worker;
    uint64_t n;
    int tier;
} wait_arg_t;

static bool cond_accepted(void *p) {
    wait_arg_t *a = p;
    return router_worker_accepted(a->r, a->worker);
}
static bool cond_gone(void *p) {
    wait_arg_t *a = p;
    return !router_worker_accepted(a->r, a->worker);
}
static bool cond_blocks(void *p) {
    wait_arg_t *a = p;
    return router_worker_blocks(a->r, a->worker, a->tier) == a->n;
}
static bool cond_active(void *p) {
    wait_arg_t *a = p;
    router_stats_t st;
    router_stats_get(a->r, &st);
    return st.active_seqs == a->n;
}

static void wait_accepted(router_t *r, uint64_t w) {
    wait_arg_t a = {.r = r, .worker = w};
    ck_assert_msg(wait_for(cond_accepted, &a, 5000), "worker %016" PRIx64 " not accepted", w);
}

static void wait_blocks(router_t *r, uint64_t w, uint64_t n) {
    wait_arg_t a = {.r = r, .worker = w, .n = n};
    ck_assert_msg(wait_for(cond_blocks, &a, 5000), "worker blocks %" PRIu64 " want %" PRIu64,
                  router_worker_blocks(r, w, 0), n);
}

static void prompt(uint32_t *tok, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) tok[i] = seed * 100003u + (uint32_t)i * 7u;
}

/* Sends a RouteRequest over NATS; returns the unpacked response. */
static Sluice__V1__RouteResponse *route(bus_t *bus, const char *ns, const char *rid,
                                        const uint32_t *tok, size_t n, const char *mode,
                                        const char *model) {
    char subj[BUS_SUBJECT_MAX];
    ck_assert_int_eq(bus_subject_endpoint(subj, sizeof subj, ns, "router", "route"), 0);
    Sluice__V1__RouteRequest q = SLUICE__V1__ROUTE_REQUEST__INIT;
    q.version = 1;
    q.request_id = (char *)rid;
    q.model = (char *)(model ? model : "m");
    q.token_ids = (uint32_t *)tok;
    q.n_token_ids = n;
    q.mode = (char *)(mode ? mode : "");
    ProtobufCMessage *resp = NULL;
    int rc =
        bus_request_proto(bus, subj, &q.base, &sluice__v1__route_response__descriptor, 3000, &resp);
    ck_assert_msg(rc == 0, "route: %s", sl_strerror(rc));
    return (Sluice__V1__RouteResponse *)resp;
}

static void free_resp(Sluice__V1__RouteResponse *r) {
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void publish_free(bus_t *bus, const char *ns, const char *rid) {
    char subj[BUS_SUBJECT_MAX];
    bus_subject_endpoint(subj, sizeof subj, ns, "router", "active");
    Sluice__V1__ActiveSeqEvent e = SLUICE__V1__ACTIVE_SEQ_EVENT__INIT;
    e.version = 1;
    e.request_id = (char *)rid;
    e.kind = SLUICE__V1__ACTIVE_SEQ_EVENT__KIND__KIND_FREE;
    ck_assert_int_eq(bus_publish_proto(bus, subj, &e.base), 0);
    bus_flush(bus, 2000);
}

static bus_t *client(void) {
    bus_t *b;
    bus_opts_t bo = {.url = g_nats.url, .name = "test-client"};
    ck_assert_int_eq(bus_connect(&b, &bo), 0);
    return b;
}

/* ---- tests ------------------------------------------------------------------------ */

START_TEST(test_route_over_nats) {
    const char *ns = "rt-basic";
    fake_worker_t a, b;
    fw_start(&a, ns, 16, "m", 30);
    fw_start(&b, ns, 16, "m", 30);
    router_t *r = router_start(ns, ROUTER_MODE_KV);
    wait_accepted(r, a.id);
    wait_accepted(r, b.id);
    uint32_t tok[16 * 20 + 5];
    prompt(tok, sizeof tok / 4, 1);
    uint64_t hs[20];
    ck_assert_uint_eq(block_hash_seq(tok, sizeof tok / 4, 16, 0, NULL, hs, 20), 20);
    fw_store(&b, hs, 12, false);
    wait_blocks(r, b.id, 12);
    bus_t *c = client();
    Sluice__V1__RouteResponse *resp = route(c, ns, "req-1", tok, sizeof tok / 4, NULL, NULL);
    ck_assert_ptr_null(resp->error);
    ck_assert_uint_eq(resp->worker_id, b.id);
    ck_assert_uint_eq(resp->overlap_blocks, 12);
    ck_assert_uint_eq(resp->total_blocks, 21);
    ck_assert_uint_eq(resp->router_id, router_id(r));
    free_resp(resp);
    ck_assert(router_worker_load(r, b.id) == 21);
    publish_free(c, ns, "req-1");
    wait_arg_t wa = {.r = r, .n = 0};
    ck_assert(wait_for(cond_active, &wa, 3000));
    /* Bad input: unknown mode, other model, garbage bytes. */
    resp = route(c, ns, "req-2", tok, 40, "telepathy", NULL);
    ck_assert_ptr_nonnull(resp->error);
    ck_assert_int_eq(resp->error->code, SL_EINVAL);
    free_resp(resp);
    resp = route(c, ns, "req-3", tok, 40, NULL, "other-model");
    ck_assert_ptr_nonnull(resp->error);
    ck_assert_uint_eq(resp->error->http_status, 404);
    free_resp(resp);
    char subj[BUS_SUBJECT_MAX];
    bus_subject_endpoint(subj, sizeof subj, ns, "router", "route");
    bus_msg_t *m = NULL;
    ck_assert_int_eq(bus_request(c, subj, "\xff\xff\xff", 3, 300, &m), SL_ETIMEDOUT);
    /* A round-robin override and an empty prompt still work. */
    resp = route(c, ns, "", tok, 0, "round-robin", NULL);
    ck_assert_ptr_null(resp->error);
    ck_assert(resp->worker_id == a.id || resp->worker_id == b.id);
    free_resp(resp);
    /* exclude_workers: the warm worker failed already, so the other one. */
    {
        Sluice__V1__RouteRequest q = SLUICE__V1__ROUTE_REQUEST__INIT;
        uint64_t ex[1] = {b.id};
        q.version = 1;
        q.request_id = "req-ex";
        q.token_ids = tok;
        q.n_token_ids = sizeof tok / 4;
        q.exclude_workers = ex;
        q.n_exclude_workers = 1;
        ProtobufCMessage *m = NULL;
        ck_assert_int_eq(
            bus_request_proto(c, subj, &q.base, &sluice__v1__route_response__descriptor, 3000, &m),
            0);
        resp = (Sluice__V1__RouteResponse *)m;
        ck_assert_ptr_null(resp->error);
        ck_assert_uint_eq(resp->worker_id, a.id);
        ck_assert_uint_eq(resp->overlap_blocks, 0);
        free_resp(resp);
        publish_free(c, ns, "req-ex");
    }
    /* LoadMetrics: worker a reports 4 sequences we never routed there. */
    {
        char lsubj[BUS_SUBJECT_MAX];
        bus_subject_topic(lsubj, sizeof lsubj, ns, "load");
        Sluice__V1__LoadMetrics lm = SLUICE__V1__LOAD_METRICS__INIT;
        lm.version = 1;
        lm.worker_id = a.id;
        lm.component = "backend";
        lm.active_seqs = 3;
        lm.waiting_seqs = 1;
        long long until = harness_now_ms() + 3000;
        while (router_worker_load(r, a.id) == 0 && harness_now_ms() < until) {
            ck_assert_int_eq(bus_publish_proto(c, lsubj, &lm.base), 0);
            bus_flush(c, 1000);
            harness_sleep_ms(50);
        }
        ck_assert(router_worker_load(r, a.id) > 0);
        ck_assert(router_worker_load(r, b.id) == 0);
    }
    router_stats_t st;
    router_stats_get(r, &st);
    ck_assert_uint_eq(st.routed, 3);
    ck_assert_uint_eq(st.route_errors, 2);
    bus_free(c);
    router_free(r);
    fw_stop(&a);
    fw_stop(&b);
}
END_TEST

/* A gap answered with a replay (the decode worker's answer while its ring
 * still holds the missing events): the router asks from the first missing
 * id, applies the replay and continues from its end without a dump. */
START_TEST(test_resync_by_replay) {
    const char *ns = "rt-replay";
    fake_worker_t a;
    fw_start(&a, ns, 16, "m", 30);
    a.replay = true;
    uint64_t h[30];
    for (int i = 0; i < 30; i++) h[i] = 0xdef000 + (uint64_t)i;
    router_t *r = router_start(ns, ROUTER_MODE_KV);
    wait_accepted(r, a.id);
    fw_store(&a, h, 5, false); /* event 1: the worker's very first, no resync */
    wait_blocks(r, a.id, 5);
    router_stats_t st;
    long long end = harness_now_ms() + 5000; /* a new worker is always dumped first */
    do {
        router_stats_get(r, &st);
        if (st.resyncs_ok >= 1) break;
        harness_sleep_ms(20);
    } while (harness_now_ms() < end);
    ck_assert_uint_eq(st.resyncs_ok, 1);
    uint64_t ok0 = st.resyncs_ok;
    fw_store(&a, h + 5, 5, true);   /* event 2: lost */
    fw_store(&a, h + 10, 5, false); /* event 3: gap -> replay from 2 */
    wait_blocks(r, a.id, 15);
    router_stats_get(r, &st);
    ck_assert_uint_eq(st.gaps, 1);
    ck_assert_uint_eq(st.resyncs_ok, ok0 + 1);
    ck_assert_uint_eq(a.last_from, 2);
    fw_store(&a, h + 15, 5, false); /* event 4 follows the replay's end */
    wait_blocks(r, a.id, 20);
    router_stats_get(r, &st);
    ck_assert_uint_eq(st.gaps, 1);
    router_free(r);
    fw_stop(&a);
}
END_TEST

START_TEST(test_resync_after_dropped_event) {
    const char *ns = "rt-resync";
    fake_worker_t a;
    fw_start(&a, ns, 16, "m", 30);
    uint64_t h[40];
    for (int i = 0; i < 40; i++) h[i] = 0xabc000 + (uint64_t)i;
    /* Events before the router exists: it must fetch them (started late). */
    fw_store(&a, h, 10, true);
    router_t *r = router_start(ns, ROUTER_MODE_KV);
    wait_accepted(r, a.id);
    wait_blocks(r, a.id, 10);
    fw_store(&a, h + 10, 5, false); /* event 1: applied */
    wait_blocks(r, a.id, 15);
    fw_store(&a, h + 15, 5, true);   /* event 2: lost */
    fw_store(&a, h + 20, 10, false); /* event 3: gap -> resync */
    wait_blocks(r, a.id, 30);
    router_stats_t st;
    router_stats_get(r, &st);
    ck_assert_uint_eq(st.gaps, 1);
    ck_assert_uint_eq(st.resyncs_ok, 2);
    ck_assert_int_eq(a.resyncs, 2);
    /* Later events continue from the dump's next id. */
    fw_store(&a, h + 30, 10, false);
    wait_blocks(r, a.id, 40);
    router_stats_get(r, &st);
    ck_assert_uint_eq(st.gaps, 1);
    /* A batch with the wrong block size is dropped. */
    Sluice__V1__KvEventBatch b = SLUICE__V1__KV_EVENT_BATCH__INIT;
    b.version = 1;
    b.worker_id = a.id;
    b.event_id = a.next_event_id;
    b.block_size = 32;
    char subj[BUS_SUBJECT_MAX];
    bus_subject_topic(subj, sizeof subj, ns, "kv_events");
    ck_assert_int_eq(bus_publish_proto(a.bus, subj, &b.base), 0);
    bus_flush(a.bus, 1000);
    harness_sleep_ms(200);
    router_stats_t st2;
    router_stats_get(r, &st2);
    ck_assert_uint_eq(st2.batches_dropped, st.batches_dropped + 1);
    /* So is a stored event whose packed arrays disagree in length. */
    Sluice__V1__KvEvent ev = SLUICE__V1__KV_EVENT__INIT, *evp = &ev;
    Sluice__V1__KvStored bad = SLUICE__V1__KV_STORED__INIT;
    uint64_t bh[3] = {1, 2, 3}, sh[3] = {0xdead01, 0xdead02, 0xdead03};
    kv_stored_set(&bad, bh, sh, 3);
    bad.n_block_hashes = 2;
    ev.data_case = SLUICE__V1__KV_EVENT__DATA_STORED;
    ev.stored = &bad;
    b.block_size = 16;
    b.n_events = 1;
    b.events = &evp;
    ck_assert_int_eq(bus_publish_proto(a.bus, subj, &b.base), 0);
    bus_flush(a.bus, 1000);
    harness_sleep_ms(200);
    router_stats_get(r, &st);
    ck_assert_uint_eq(st.batches_dropped, st2.batches_dropped + 1);
    ck_assert_uint_eq(router_worker_blocks(r, a.id, 0), 40);
    router_free(r);
    fw_stop(&a);
}
END_TEST

static char g_log[16][512];
static int g_log_n;
static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;
static void log_capture(sl_log_level_t lvl, const char *line, void *ud) {
    (void)lvl;
    (void)ud;
    pthread_mutex_lock(&g_log_lock);
    if (strstr(line, "refusing")) snprintf(g_log[g_log_n++ % 16], sizeof g_log[0], "%s", line);
    pthread_mutex_unlock(&g_log_lock);
}

START_TEST(test_mismatched_worker_refused) {
    const char *ns = "rt-refuse";
    sl_log_set_sink(log_capture, NULL);
    fake_worker_t a, b;
    fw_start(&a, ns, 32, "m", 30);
    fw_start(&b, ns, 16, "other", 30);
    router_t *r = router_start(ns, ROUTER_MODE_KV);
    router_stats_t st;
    long long end = harness_now_ms() + 5000;
    do {
        harness_sleep_ms(20);
        router_stats_get(r, &st);
    } while (st.workers_refused < 2 && harness_now_ms() < end);
    ck_assert_uint_eq(st.workers_refused, 2);
    ck_assert(!router_worker_accepted(r, a.id));
    pthread_mutex_lock(&g_log_lock);
    bool saw_bs = false, saw_model = false;
    for (int i = 0; i < g_log_n && i < 16; i++) {
        saw_bs |= strstr(g_log[i], "block_size 32 differs from the router's 16") != NULL;
        saw_model |= strstr(g_log[i], "model \"other\" differs") != NULL;
    }
    pthread_mutex_unlock(&g_log_lock);
    sl_log_set_sink(NULL, NULL);
    ck_assert(saw_bs && saw_model);
    /* Nobody to route to, and the refused worker's events are dropped. */
    bus_t *c = client();
    uint32_t tok[64];
    prompt(tok, 64, 3);
    Sluice__V1__RouteResponse *resp = route(c, ns, "x", tok, 64, NULL, NULL);
    ck_assert_ptr_nonnull(resp->error);
    ck_assert_int_eq(resp->error->code, SL_EUNAVAIL);
    ck_assert_uint_eq(resp->error->http_status, 503);
    free_resp(resp);
    uint64_t h[2] = {1, 2};
    fw_store(&a, h, 2, false);
    harness_sleep_ms(200);
    ck_assert_uint_eq(router_worker_blocks(r, a.id, 0), 0);
    bus_free(c);
    router_free(r);
    fw_stop(&a);
    fw_stop(&b);
}
END_TEST

/* Prefill workers: a separate candidate set. Never the decode pick; the
 * prefill pick follows their cached prefix (live events, and a resync on
 * kv_resync under component prefill); a mismatched one is refused; without
 * any, prefill_worker_id is 0. */
START_TEST(test_prefill_candidates) {
    const char *ns = "rt-prefill";
    fake_worker_t d, p1, p2, bad;
    fw_start(&d, ns, 16, "m", 30);
    fw_start_as(&p1, "prefill", ns, 16, "m", 30);
    fw_start_as(&bad, "prefill", ns, 32, "m", 30);
    uint32_t tok[16 * 10];
    prompt(tok, 160, 7);
    uint64_t hs[10];
    ck_assert_uint_eq(block_hash_seq(tok, 160, 16, 0, NULL, hs, 10), 10);
    bus_t *c = client();
    router_t *r = router_start(ns, ROUTER_MODE_KV);
    wait_accepted(r, d.id);
    wait_accepted(r, p1.id);
    /* One prefill worker, no cache: named, never as the decode worker. */
    Sluice__V1__RouteResponse *resp = route(c, ns, "a", tok, 160, NULL, NULL);
    ck_assert_ptr_null(resp->error);
    ck_assert_uint_eq(resp->worker_id, d.id);
    ck_assert_uint_eq(resp->prefill_worker_id, p1.id);
    ck_assert_uint_eq(resp->prefill_overlap_blocks, 0);
    free_resp(resp);
    /* A second one caches 9 blocks, the first 8 announced by no event: a
     * resync on its prefill kv_resync subject brings them. */
    fw_start_as(&p2, "prefill", ns, 16, "m", 30);
    fw_store(&p2, hs, 8, true); /* not published: only a resync tells */
    wait_accepted(r, p2.id);
    fw_store(&p2, hs + 8, 1, false); /* follows a gap, or a join-time dump */
    wait_blocks(r, p2.id, 9);
    ck_assert_int_ge(p2.resyncs, 1);
    for (int i = 0; i < 6; i++) {
        char rid[16];
        snprintf(rid, sizeof rid, "b%d", i);
        resp = route(c, ns, rid, tok, 160, i % 2 ? "round-robin" : NULL, NULL);
        ck_assert_ptr_null(resp->error);
        ck_assert_uint_eq(resp->worker_id, d.id); /* never a prefill worker */
        if (i % 2 == 0) {
            ck_assert_uint_eq(resp->prefill_worker_id, p2.id);
            ck_assert_uint_eq(resp->prefill_overlap_blocks, 9);
        } else {
            ck_assert(resp->prefill_worker_id == p1.id || resp->prefill_worker_id == p2.id);
        }
        free_resp(resp);
    }
    uint64_t w = 0;
    uint32_t ov = 0;
    ck_assert_int_eq(router_decide_prefill(r, "x", tok, 160, NULL, &w, &ov), 0);
    ck_assert_uint_eq(w, p2.id);
    ck_assert_uint_eq(ov, 9);
    ck_assert_int_eq(router_decide(r, "x", tok, 160, NULL, &w, &ov), 0);
    ck_assert_uint_eq(w, d.id);
    ck_assert_int_eq(router_decide_prefill(NULL, "x", tok, 160, NULL, &w, &ov), SL_EINVAL);
    ck_assert_int_eq(router_decide_prefill(r, "x", NULL, 4, NULL, &w, &ov), SL_EINVAL);
    ck_assert(!router_worker_accepted(r, bad.id)); /* block size 32 */
    /* Live events of p1 move the pick there once it caches more. */
    fw_store(&p1, hs, 10, false);
    wait_blocks(r, p1.id, 10);
    resp = route(c, ns, "c", tok, 160, NULL, NULL);
    ck_assert_uint_eq(resp->prefill_worker_id, p1.id);
    ck_assert_uint_eq(resp->prefill_overlap_blocks, 10);
    free_resp(resp);
    /* Stats count decode workers only. */
    router_stats_t st;
    router_stats_get(r, &st);
    ck_assert_uint_eq(st.workers, 1);
    /* No prefill worker left: 0. */
    fw_stop(&p1);
    fw_stop(&p2);
    fw_stop(&bad);
    wait_arg_t ga = {.r = r, .worker = p1.id};
    ck_assert(wait_for(cond_gone, &ga, 5000));
    ga.worker = p2.id;
    ck_assert(wait_for(cond_gone, &ga, 5000));
    resp = route(c, ns, "d", tok, 160, NULL, NULL);
    ck_assert_ptr_null(resp->error);
    ck_assert_uint_eq(resp->worker_id, d.id);
    ck_assert_uint_eq(resp->prefill_worker_id, 0);
    free_resp(resp);
    bus_free(c);
    router_free(r);
    fw_stop(&d);
}
END_TEST

START_TEST(test_lease_expiry_purges) {
    const char *ns = "rt-expiry";
    fake_worker_t a, b;
    fw_start(&a, ns, 16, "m", 2); /* no keep-alive: gone in ~2 s */
    fw_start(&b, ns, 16, "m", 30);
    router_t *r = router_start(ns, ROUTER_MODE_KV);
    wait_accepted(r, a.id);
    wait_accepted(r, b.id);
    uint32_t tok[16 * 8];
    prompt(tok, 128, 4);
    uint64_t hs[8];
    block_hash_seq(tok, 128, 16, 0, NULL, hs, 8);
    fw_store(&a, hs, 8, false);
    wait_blocks(r, a.id, 8);
    bus_t *c = client();
    Sluice__V1__RouteResponse *resp = route(c, ns, "e1", tok, 128, NULL, NULL);
    ck_assert_uint_eq(resp->worker_id, a.id);
    free_resp(resp);
    ck_assert(router_worker_load(r, a.id) > 0);
    wait_arg_t wa = {.r = r, .worker = a.id};
    ck_assert(wait_for(cond_gone, &wa, 8000));
    ck_assert_uint_eq(router_worker_blocks(r, a.id, 0), 0);
    ck_assert(router_worker_load(r, a.id) == 0);
    router_stats_t st;
    router_stats_get(r, &st);
    ck_assert_uint_eq(st.workers_purged, 1);
    ck_assert_uint_eq(st.indexed_blocks, 0);
    ck_assert_uint_eq(st.workers, 1);
    resp = route(c, ns, "e2", tok, 128, NULL, NULL);
    ck_assert_uint_eq(resp->worker_id, b.id);
    ck_assert_uint_eq(resp->overlap_blocks, 0);
    free_resp(resp);
    bus_free(c);
    router_free(r);
    fw_stop(&a);
    fw_stop(&b);
}
END_TEST

START_TEST(test_two_replicas_consistent) {
    const char *ns = "rt-replicas";
    enum { NW = 4, NREQ = 40 };
    fake_worker_t w[NW];
    for (int i = 0; i < NW; i++) fw_start(&w[i], ns, 16, "m", 30);
    router_t *r1 = router_start(ns, ROUTER_MODE_KV);
    router_t *r2 = router_start(ns, ROUTER_MODE_KV);
    for (int i = 0; i < NW; i++) {
        wait_accepted(r1, w[i].id);
        wait_accepted(r2, w[i].id);
    }
    /* Each worker holds one document prefix. */
    static uint32_t docs[NW][16 * 24];
    for (int i = 0; i < NW; i++) {
        prompt(docs[i], 16 * 24, 10 + (uint32_t)i);
        uint64_t hs[16];
        block_hash_seq(docs[i], 16 * 16, 16, 0, NULL, hs, 16);
        fw_store(&w[i], hs, 16, false);
        wait_blocks(r1, w[i].id, 16);
        wait_blocks(r2, w[i].id, 16);
    }
    bus_t *c = client();
    char rid[32];
    for (int k = 0; k < NREQ; k++) {
        snprintf(rid, sizeof rid, "rep-%d", k);
        Sluice__V1__RouteResponse *resp =
            route(c, ns, rid, docs[k % NW], 16 * (17 + (size_t)(k % 7)), NULL, NULL);
        ck_assert_ptr_null(resp->error);
        free_resp(resp);
    }
    wait_arg_t a1 = {.r = r1, .n = NREQ}, a2 = {.r = r2, .n = NREQ};
    ck_assert(wait_for(cond_active, &a1, 3000));
    ck_assert(wait_for(cond_active, &a2, 3000));
    router_stats_t s1, s2;
    router_stats_get(r1, &s1);
    router_stats_get(r2, &s2);
    ck_assert_uint_eq(s1.routed + s2.routed, NREQ);
    ck_assert_uint_gt(s1.routed, 0); /* the queue group used both */
    ck_assert_uint_gt(s2.routed, 0);
    for (int i = 0; i < NW; i++)
        ck_assert_msg(router_worker_load(r1, w[i].id) == router_worker_load(r2, w[i].id),
                      "worker %d: %.0f vs %.0f", i, router_worker_load(r1, w[i].id),
                      router_worker_load(r2, w[i].id));
    /* Same state, same request id: same pick, for warm and cold prompts. */
    for (int k = 0; k < 16; k++) {
        snprintf(rid, sizeof rid, "probe-%d", k);
        uint32_t cold[64];
        prompt(cold, 64, 1000 + (uint32_t)k);
        const uint32_t *t = (k % 2) ? cold : docs[k % NW];
        size_t n = (k % 2) ? 64 : 16 * 20;
        uint64_t p1, p2;
        ck_assert_int_eq(router_decide(r1, rid, t, n, NULL, &p1, NULL), 0);
        ck_assert_int_eq(router_decide(r2, rid, t, n, NULL, &p2, NULL), 0);
        ck_assert_uint_eq(p1, p2);
    }
    /* Frees reach both. */
    for (int k = 0; k < NREQ; k++) {
        snprintf(rid, sizeof rid, "rep-%d", k);
        publish_free(c, ns, rid);
    }
    a1.n = a2.n = 0;
    ck_assert(wait_for(cond_active, &a1, 3000));
    ck_assert(wait_for(cond_active, &a2, 3000));
    bus_free(c);
    router_free(r1);
    router_free(r2);
    for (int i = 0; i < NW; i++) fw_stop(&w[i]);
}
END_TEST

START_TEST(test_approx_mode) {
    const char *ns = "rt-approx";
    enum { NW = 3 };
    fake_worker_t w[NW];
    for (int i = 0; i < NW; i++) fw_start(&w[i], ns, 16, "m", 30);
    router_t *r1 = router_start(ns, ROUTER_MODE_APPROX);
    router_t *r2 = router_start(ns, ROUTER_MODE_APPROX);
    for (int i = 0; i < NW; i++) {
        wait_accepted(r1, w[i].id);
        wait_accepted(r2, w[i].id);
    }
    bus_t *c = client();
    uint32_t tok[16 * 12];
    prompt(tok, 16 * 12, 77);
    Sluice__V1__RouteResponse *resp = route(c, ns, "ap-1", tok, 16 * 8, NULL, NULL);
    ck_assert_ptr_null(resp->error);
    uint64_t first = resp->worker_id;
    ck_assert_uint_eq(resp->overlap_blocks, 0);
    free_resp(resp);
    publish_free(c, ns, "ap-1");
    wait_arg_t a1 = {.r = r1, .n = 0}, a2 = {.r = r2, .n = 0};
    ck_assert(wait_for(cond_active, &a1, 3000));
    ck_assert(wait_for(cond_active, &a2, 3000));
    /* The continuation goes where the prefix was sent, with its overlap,
     * whichever replica answers; both agree. */
    uint64_t p1, p2;
    uint32_t o1, o2;
    long long until = harness_now_ms() + 3000;
    do { /* the replica learns the decision from its ADD, which may lag */
        ck_assert_int_eq(router_decide(r1, "ap-2", tok, 16 * 12, NULL, &p1, &o1), 0);
        ck_assert_int_eq(router_decide(r2, "ap-2", tok, 16 * 12, NULL, &p2, &o2), 0);
        if (o1 == 8 && o2 == 8) break;
        harness_sleep_ms(20);
    } while (harness_now_ms() < until);
    ck_assert_uint_eq(p1, first);
    ck_assert_uint_eq(p2, first);
    ck_assert_uint_eq(o1, 8);
    ck_assert_uint_eq(o2, 8);
    resp = route(c, ns, "ap-2", tok, 16 * 12, NULL, NULL);
    ck_assert_uint_eq(resp->worker_id, first);
    ck_assert_uint_eq(resp->overlap_blocks, 8);
    free_resp(resp);
    /* The kv index stays empty in approx mode: it comes from events only. */
    router_stats_t st;
    router_stats_get(r1, &st);
    ck_assert_uint_eq(st.indexed_blocks, 0);
    /* After the TTL (1.5 s) the decisions are forgotten. */
    harness_sleep_ms(2000);
    ck_assert_int_eq(router_decide(r1, "ap-3", tok, 16 * 12, NULL, &p1, &o1), 0);
    ck_assert_uint_eq(o1, 0);
    bus_free(c);
    router_free(r1);
    router_free(r2);
    for (int i = 0; i < NW; i++) fw_stop(&w[i]);
}
END_TEST

static size_t curl_sink(char *p, size_t sz, size_t n, void *ud) {
    char *buf = ud;
    size_t have = strlen(buf), add = sz * n;
    if (have + add < 65536) {
        memcpy(buf + have, p, add);
        buf[have + add] = 0;
    }
    return add;
}

START_TEST(test_binary_serves_and_exits_on_sigterm) {
    const char *ns = "rt-binary";
    fake_worker_t a;
    fw_start(&a, ns, 16, "m", 30);
    char bin[512], log[512], port_s[16];
    int port = harness_free_port();
    snprintf(port_s, sizeof port_s, "%d", port);
    snprintf(log, sizeof log, "/tmp/test_router_bin_%d.log", (int)getpid());
    char *argv[] = {(char *)harness_bin("sluice-router", bin, sizeof bin),
                    "--nats",
                    g_nats.url,
                    "--etcd",
                    g_etcd.url,
                    "--namespace",
                    (char *)ns,
                    "--model",
                    "m",
                    "--system-port",
                    port_s,
                    NULL};
    pid_t pid = harness_spawn(argv, NULL, log);
    ck_assert_int_gt(pid, 0);
    bus_t *c = client();
    uint32_t tok[64];
    prompt(tok, 64, 5);
    /* Wait until it answers with a worker. */
    Sluice__V1__RouteResponse *resp = NULL;
    long long end = harness_now_ms() + 8000;
    char subj[BUS_SUBJECT_MAX];
    bus_subject_endpoint(subj, sizeof subj, ns, "router", "route");
    while (harness_now_ms() < end) {
        Sluice__V1__RouteRequest q = SLUICE__V1__ROUTE_REQUEST__INIT;
        q.version = 1;
        q.request_id = "bin-1";
        q.token_ids = tok;
        q.n_token_ids = 64;
        ProtobufCMessage *m = NULL;
        if (bus_request_proto(c, subj, &q.base, &sluice__v1__route_response__descriptor, 500, &m) ==
            0) {
            resp = (Sluice__V1__RouteResponse *)m;
            if (!resp->error) break;
            free_resp(resp);
            resp = NULL;
        }
        harness_sleep_ms(100);
    }
    ck_assert_ptr_nonnull(resp);
    ck_assert_uint_eq(resp->worker_id, a.id);
    free_resp(resp);
    /* /metrics and /health on the system port; registered as a router. */
    char url[128];
    static char body[65536];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", port);
    body[0] = 0;
    CURL *cu = curl_easy_init();
    curl_easy_setopt(cu, CURLOPT_URL, url);
    curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, curl_sink);
    curl_easy_setopt(cu, CURLOPT_WRITEDATA, body);
    ck_assert_int_eq(curl_easy_perform(cu), CURLE_OK);
    /* At least the answered request (an earlier attempt may have timed out
     * on our side while the router still answered it). */
    const char *mline = strstr(body, "\nsluice_router_requests_total ");
    ck_assert_ptr_nonnull(mline);
    ck_assert_int_ge(strtol(mline + strlen("\nsluice_router_requests_total "), NULL, 10), 1);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/health", port);
    body[0] = 0;
    curl_easy_setopt(cu, CURLOPT_URL, url);
    ck_assert_int_eq(curl_easy_perform(cu), CURLE_OK);
    long code = 0;
    curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &code);
    ck_assert_int_eq(code, 200);
    ck_assert_ptr_nonnull(strstr(body, "\"workers\":1"));
    curl_easy_cleanup(cu);
    discovery_opts_t dopt = {.etcd_url = g_etcd.url, .ns = ns};
    discovery_t *d;
    ck_assert_int_eq(discovery_open(&dopt, &d), 0);
    discovery_instance_t *insts = NULL;
    size_t n = 0;
    ck_assert_int_eq(discovery_list(d, "router", &insts, &n), 0);
    ck_assert_uint_eq(n, 1);
    discovery_instances_free(insts, n);
    int status = harness_kill(pid, SIGTERM, 5000);
    ck_assert(WIFEXITED(status));
    ck_assert_int_eq(WEXITSTATUS(status), 0);
    /* The lease was revoked on the way out. */
    ck_assert_int_eq(discovery_list(d, "router", &insts, &n), 0);
    ck_assert_uint_eq(n, 0);
    discovery_instances_free(insts, n);
    discovery_close(d);
    /* Clean exit: no sanitizer report (ASan build), and it said why it stopped. */
    FILE *f = fopen(log, "r");
    ck_assert_ptr_nonnull(f);
    size_t got = fread(body, 1, sizeof body - 1, f);
    body[got] = 0;
    fclose(f);
    ck_assert_ptr_null(strstr(body, "Sanitizer"));
    ck_assert_ptr_null(strstr(body, "runtime error"));
    ck_assert_ptr_nonnull(strstr(body, "stopping"));
    bus_free(c);
    fw_stop(&a);
    unlink(log);
}
END_TEST

int main(void) {
    sl_log_init("test_router");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (harness_etcd_start(&g_etcd) != 0 || harness_nats_start(&g_nats, 0) != 0) {
        fprintf(stderr, "cannot start etcd / nats-server\n");
        return 1;
    }
    Suite *s = suite_create("router");
    TCase *tc = tcase_create("router");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_route_over_nats);
    tcase_add_test(tc, test_resync_after_dropped_event);
    tcase_add_test(tc, test_resync_by_replay);
    tcase_add_test(tc, test_mismatched_worker_refused);
    tcase_add_test(tc, test_lease_expiry_purges);
    tcase_add_test(tc, test_prefill_candidates);
    tcase_add_test(tc, test_two_replicas_consistent);
    tcase_add_test(tc, test_approx_mode);
    tcase_add_test(tc, test_binary_serves_and_exits_on_sigterm);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    harness_nats_destroy(&g_nats);
    harness_etcd_destroy(&g_etcd);
    curl_global_cleanup();
    return nf == 0 ? 0 : 1;
}
