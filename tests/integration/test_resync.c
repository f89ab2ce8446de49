/* test_resync.c - KV resync replies larger than one NATS message.
 *
 * A real nats-server with max_payload 64 KiB and etcd; a router in-process
 * (router.h); the worker side is the decode worker's own publisher
 * (services/decode-worker/kv_publisher.h) over a real block pool
 * (common/engine/kvpool.h), registered in discovery like a backend. The test
 * thread and the resync callback play the engine thread (one mutex around the
 * pool). The publisher's live batches go to a private subject and the test
 * relays them to sluice.<ns>.kv_events, so it can drop some (a gap); resync
 * replies can be relayed too, cut after a number of parts (ended with an
 * error, or left silent as when the worker dies mid-way). Each test uses its
 * own namespace.
 */
#include "common/base/block_hash.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/engine/kvpool.h"
#include "common/runtime/bus.h"
#include "common/runtime/etcd.h"
#include "proto/sluice.pb-c.h"
#include "services/decode-worker/kv_publisher.h"
#include "services/router/router.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PAYLOAD (64 * 1024)
#define POOL_BLOCKS 16384u
#define MAX_CHAIN   8192 /* blocks in one stored chain */
#define ROUTE_CHAIN 64   /* longest chain route_overlap() asks about */

static harness_nats_t g_nats;
static harness_etcd_t g_etcd;

/* ---- test worker ----------------------------------------------------------------- */

typedef struct tw {
    char ns[64];
    int64_t lease;
    uint64_t id;
    bus_t *bus;
    kvpool_t *pool;
    kvpub_t *pub;
    pthread_mutex_t mu; /* the "engine thread": every pool and resync call */
    bus_sub_t *s_resync, *s_live, *s_relay;
    char subj_events[BUS_SUBJECT_MAX], subj_private[BUS_SUBJECT_MAX], subj_relay[BUS_SUBJECT_MAX];
    atomic_bool drop_live;
    atomic_uint_fast64_t live_seen; /* batches seen on the private subject */
    uint32_t seed;                  /* next chain's token seed */
    size_t blocks;                  /* blocks stored so far */
    uint64_t pub_errors;            /* batches the publisher is expected to have refused */

    pthread_mutex_t rmu; /* relay state below */
    int cut_after;       /* 0: answer directly; k > 0: relay only the first k parts */
    bool cut_fail;       /* after the cut: end the stream with an error (else silence) */
    bus_stream_writer_t *rw;
    int relayed;
} tw_t;

static void tw_on_live(bus_t *bus, const bus_msg_t *msg, void *ud) {
    tw_t *w = ud;
    if (!atomic_load(&w->drop_live))
        bus_publish(bus, w->subj_events, bus_msg_data(msg), bus_msg_len(msg));
    atomic_fetch_add(&w->live_seen, 1);
}

/* Parts of a reply sent to the relay subject: forwards the first cut_after. */
static void tw_on_relay(bus_t *bus, const bus_msg_t *msg, void *ud) {
    (void)bus;
    tw_t *w = ud;
    pthread_mutex_lock(&w->rmu);
    if (w->rw && w->relayed < w->cut_after) {
        bus_stream_writer_send(w->rw, bus_msg_data(msg), bus_msg_len(msg));
        if (++w->relayed == w->cut_after && w->cut_fail)
            bus_stream_writer_fail(w->rw, SL_EIO, "test: worker failed mid-way");
    }
    pthread_mutex_unlock(&w->rmu);
}

static void tw_on_resync(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *m, void *ud) {
    tw_t *w = ud;
    const Sluice__V1__KvResyncRequest *q = (const Sluice__V1__KvResyncRequest *)m;
    const char *reply = bus_msg_reply(msg);
    if (!reply) return;
    pthread_mutex_lock(&w->rmu);
    bool cut = w->cut_after > 0;
    if (cut) {
        bus_stream_writer_free(w->rw);
        w->rw = NULL;
        w->relayed = 0;
        ck_assert_int_eq(bus_stream_writer_create(bus, msg, &w->rw), 0);
    }
    pthread_mutex_unlock(&w->rmu);
    pthread_mutex_lock(&w->mu);
    kvpub_resync_reply(w->pub, w->pool, cut ? w->subj_relay : reply, q->from_event_id);
    pthread_mutex_unlock(&w->mu);
}

/* A worker with a pool and a publisher; registered in discovery only by
 * tw_register(), so that a router resyncs it then. */
static void tw_start(tw_t *w, const char *ns, uint32_t max_events, uint32_t ring_batches,
                     uint32_t flush_ms) {
    memset(w, 0, sizeof *w);
    snprintf(w->ns, sizeof w->ns, "%s", ns);
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->rmu, NULL);
    w->seed = 1;
    etcd_t *e;
    ck_assert_int_eq(etcd_open(g_etcd.url, 2000, &e), 0);
    ck_assert_int_eq(etcd_lease_grant(e, 60, &w->lease, NULL), 0);
    etcd_free(e);
    w->id = (uint64_t)w->lease;
    bus_opts_t bo = {.url = g_nats.url, .name = "test-worker"};
    ck_assert_int_eq(bus_connect(&w->bus, &bo), 0);
    ck_assert_int_eq(bus_max_payload(w->bus), MAX_PAYLOAD);
    ck_assert_int_eq(bus_subject_topic(w->subj_events, sizeof w->subj_events, ns, "kv_events"), 0);
    ck_assert_int_eq(bus_subject_topic(w->subj_private, sizeof w->subj_private, ns, "kv_private"),
                     0);
    ck_assert_int_eq(bus_subject_topic(w->subj_relay, sizeof w->subj_relay, ns, "kv_relay"), 0);
    w->pool = kvpool_new(POOL_BLOCKS, 16);
    ck_assert_ptr_nonnull(w->pool);
    kvpub_opts_t po = {.subject = w->subj_private,
                       .model = "m",
                       .block_size = 16,
                       .max_events = max_events,
                       .flush_ms = flush_ms,
                       .ring_batches = ring_batches};
    ck_assert_int_eq(kvpub_new(w->bus, &po, &w->pub), 0);
    kvpub_set_worker_id(w->pub, w->id);
    kvpool_set_event_cb(w->pool, kvpub_event, w->pub);
    char subj[BUS_SUBJECT_MAX];
    ck_assert_int_eq(bus_subject_instance(subj, sizeof subj, ns, "backend", "kv_resync", w->id), 0);
    ck_assert_int_eq(bus_subscribe_proto(w->bus, subj, NULL,
                                         &sluice__v1__kv_resync_request__descriptor, tw_on_resync,
                                         w, &w->s_resync),
                     0);
    ck_assert_int_eq(bus_subscribe(w->bus, w->subj_private, NULL, tw_on_live, w, &w->s_live), 0);
    ck_assert_int_eq(bus_subscribe(w->bus, w->subj_relay, NULL, tw_on_relay, w, &w->s_relay), 0);
    ck_assert_int_eq(bus_flush(w->bus, 2000), 0);
}

static void tw_register(tw_t *w) {
    char key[256], val[1024], subj[BUS_SUBJECT_MAX];
    snprintf(key, sizeof key, "sluice/v1/%s/backend/generate/%016" PRIx64, w->ns, w->id);
    ck_assert_int_eq(bus_subject_instance(subj, sizeof subj, w->ns, "backend", "generate", w->id),
                     0);
    snprintf(val, sizeof val,
             "{\"instance_id\":\"%016" PRIx64 "\",\"namespace\":\"%s\",\"component\":\"backend\","
             "\"endpoint\":\"generate\",\"subject\":\"%s\",\"host\":\"test\",\"pid\":1,"
             "\"model\":\"m\",\"block_size\":16,\"kv_blocks\":%u}",
             w->id, w->ns, subj, POOL_BLOCKS);
    etcd_t *e;
    ck_assert_int_eq(etcd_open(g_etcd.url, 2000, &e), 0);
    ck_assert_int_eq(etcd_put(e, key, val, strlen(val), w->lease, NULL), 0);
    etcd_free(e);
}

static void tw_stop(tw_t *w) {
    bus_sub_free(w->s_resync);
    bus_sub_free(w->s_live);
    bus_sub_free(w->s_relay);
    kvpool_set_event_cb(w->pool, NULL, NULL);
    kvpub_free(w->pub);
    kvpool_free(w->pool);
    bus_stream_writer_free(w->rw);
    bus_free(w->bus);
    etcd_t *e;
    if (etcd_open(g_etcd.url, 2000, &e) == 0) {
        etcd_lease_revoke(e, w->lease);
        etcd_free(e);
    }
    pthread_mutex_destroy(&w->mu);
    pthread_mutex_destroy(&w->rmu);
}

static void chain_tokens(uint32_t *tok, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) tok[i] = seed * 100003u + (uint32_t)i * 7u;
}

/* Stores n_chains fresh sequences of len blocks in the pool (each one STORED
 * event), leaves them cached, and waits until their batches went by the
 * relay. The publisher must have refused exactly w->pub_errors batches so far. */
static void tw_store(tw_t *w, size_t n_chains, size_t len) {
    ck_assert_uint_le(len, MAX_CHAIN);
    uint32_t *tok = calloc(len * 16, sizeof *tok), *ids = calloc(len, sizeof *ids);
    uint64_t *bh = calloc(len, sizeof *bh), *sh = calloc(len, sizeof *sh);
    ck_assert(tok && ids && bh && sh);
    pthread_mutex_lock(&w->mu);
    for (size_t c = 0; c < n_chains; c++) {
        chain_tokens(tok, len * 16, w->seed++);
        ck_assert_uint_eq(block_hash_seq(tok, len * 16, 16, 0, bh, sh, len), len);
        ck_assert_int_eq(kvpool_blocks_alloc(w->pool, len, ids), 0);
        ck_assert_int_eq(kvpool_blocks_commit(w->pool, 0, 0, ids, bh, sh, len), (int)len);
        for (size_t i = 0; i < len; i++)
            ck_assert_int_eq(kvpool_blocks_release(w->pool, &ids[len - 1 - i], 1), 0);
    }
    w->blocks += n_chains * len;
    pthread_mutex_unlock(&w->mu);
    free(tok);
    free(ids);
    free(bh);
    free(sh);
    kvpub_flush(w->pub); /* a refusal shows in publish_errors */
    kvpub_stats_t st;
    kvpub_stats_get(w->pub, &st);
    ck_assert_uint_eq(st.publish_errors, w->pub_errors);
    long long end = harness_now_ms() + 5000;
    while (atomic_load(&w->live_seen) < st.batches && harness_now_ms() < end) harness_sleep_ms(5);
    ck_assert_uint_ge(atomic_load(&w->live_seen), st.batches);
}

/* tw_store with the live batches dropped on the way: the router does not see
 * these chains, so the next batch it gets shows a gap. */
static void tw_store_unseen(tw_t *w, size_t n_chains, size_t len) {
    atomic_store(&w->drop_live, true);
    tw_store(w, n_chains, len);
    atomic_store(&w->drop_live, false);
}

/* How the next resync replies are relayed (see tw_t.cut_after, cut_fail). */
static void tw_cut_set(tw_t *w, int cut_after, bool cut_fail) {
    pthread_mutex_lock(&w->rmu);
    w->cut_after = cut_after;
    w->cut_fail = cut_fail;
    pthread_mutex_unlock(&w->rmu);
}

/* ---- helpers ---------------------------------------------------------------------- */

static router_t *router_start(const char *ns, int resync_timeout_ms) {
    router_opts_t o = {.nats_url = g_nats.url,
                       .etcd_url = g_etcd.url,
                       .ns = ns,
                       .model = "m",
                       .block_size = 16,
                       .mode = ROUTER_MODE_KV,
                       .resync_timeout_ms = resync_timeout_ms,
                       .lease_ttl_s = 5,
                       .register_self = false};
    router_t *r = NULL;
    ck_assert_int_eq(router_new(&o, &r), 0);
    return r;
}

static router_stats_t stats(router_t *r) {
    router_stats_t st;
    router_stats_get(r, &st);
    return st;
}

static void wait_blocks(router_t *r, uint64_t w, size_t n) {
    long long end = harness_now_ms() + 10000;
    while (router_worker_blocks(r, w, 0) != n && harness_now_ms() < end) harness_sleep_ms(10);
    ck_assert_msg(router_worker_blocks(r, w, 0) == n, "router has %" PRIu64 " blocks, want %zu",
                  router_worker_blocks(r, w, 0), n);
}

static void wait_failed(router_t *r, uint64_t n) {
    long long end = harness_now_ms() + 10000;
    while (stats(r).resyncs_failed < n && harness_now_ms() < end) harness_sleep_ms(10);
    ck_assert_uint_ge(stats(r).resyncs_failed, n);
}

/* The common start: a worker (8 events a batch, a 64-batch ring, 2 ms
 * flush) with n_chains chains of len blocks stored before it registers, and
 * a router (2 s resync timeout) that has learned them all by its first
 * resync. Free with router_free(r) and tw_stop(w). */
static router_t *setup_learned(tw_t *w, const char *ns, size_t n_chains, size_t len) {
    tw_start(w, ns, 8, 64, 2);
    router_t *r = router_start(ns, 2000);
    tw_store(w, n_chains, len);
    tw_register(w);
    wait_blocks(r, w->id, n_chains * len);
    return r;
}

/* Routes chain `seed` (len blocks + a partial one) and returns the overlap
 * the router saw on worker w. */
static uint32_t route_overlap(const char *ns, uint64_t w, uint32_t seed, size_t len) {
    uint32_t tok[ROUTE_CHAIN * 16 + 5];
    ck_assert_uint_le(len, ROUTE_CHAIN);
    chain_tokens(tok, len * 16 + 5, seed);
    bus_t *c;
    bus_opts_t bo = {.url = g_nats.url, .name = "test-client"};
    ck_assert_int_eq(bus_connect(&c, &bo), 0);
    char subj[BUS_SUBJECT_MAX];
    ck_assert_int_eq(bus_subject_endpoint(subj, sizeof subj, ns, "router", "route"), 0);
    Sluice__V1__RouteRequest q = SLUICE__V1__ROUTE_REQUEST__INIT;
    q.version = 1;
    q.request_id = "rs";
    q.model = "m";
    q.token_ids = tok;
    q.n_token_ids = len * 16 + 5;
    ProtobufCMessage *resp = NULL;
    ck_assert_int_eq(
        bus_request_proto(c, subj, &q.base, &sluice__v1__route_response__descriptor, 3000, &resp),
        0);
    Sluice__V1__RouteResponse *rr = (Sluice__V1__RouteResponse *)resp;
    ck_assert_ptr_null(rr->error);
    ck_assert_uint_eq(rr->worker_id, w);
    uint32_t ov = rr->overlap_blocks;
    protobuf_c_message_free_unpacked(resp, NULL);
    bus_free(c);
    return ov;
}

/* ---- tests ------------------------------------------------------------------------ */

/* 6000 blocks (~220 KB of dump) through 64 KiB messages: several parts, and
 * the router's index equals the pool. */
START_TEST(test_dump_in_parts) {
    tw_t w;
    router_t *r = setup_learned(&w, "rs-dump", 150, 40);
    router_stats_t st = stats(r);
    ck_assert_uint_eq(st.resyncs_ok, 1);
    ck_assert_uint_ge(st.resync_parts, 3);
    ck_assert_uint_eq(st.resyncs_failed, 0);
    kvpub_stats_t ps;
    kvpub_stats_get(w.pub, &ps);
    ck_assert_uint_eq(ps.resyncs, 1);
    ck_assert_uint_eq(ps.reply_parts, st.resync_parts);
    /* First, a middle and the last chain are all there, whole. */
    ck_assert_uint_eq(route_overlap("rs-dump", w.id, 1, 40), 40);
    ck_assert_uint_eq(route_overlap("rs-dump", w.id, 77, 40), 40);
    ck_assert_uint_eq(route_overlap("rs-dump", w.id, 150, 40), 40);
    ck_assert_uint_eq(route_overlap("rs-dump", w.id, 151, 40), 0); /* never stored */
    /* Live events continue from the dump's event id. */
    tw_store(&w, 2, 40);
    wait_blocks(r, w.id, 6080);
    ck_assert_uint_eq(stats(r).gaps, 0);
    router_free(r);
    tw_stop(&w);
}
END_TEST

/* A small state answers in one part, as before. */
START_TEST(test_dump_single_part) {
    tw_t w;
    router_t *r = setup_learned(&w, "rs-one", 10, 5);
    router_stats_t st = stats(r);
    ck_assert_uint_eq(st.resyncs_ok, 1);
    ck_assert_uint_eq(st.resync_parts, 1);
    ck_assert_uint_eq(route_overlap("rs-one", w.id, 4, 5), 5);
    router_free(r);
    tw_stop(&w);
}
END_TEST

/* The router misses ~150 events (~100 KB): the ring still holds them, so
 * the answer is a replay, streamed in parts, applied as one. */
START_TEST(test_replay_in_parts) {
    tw_t w;
    router_t *r = setup_learned(&w, "rs-replay", 2, 40);
    router_stats_t st0 = stats(r);
    tw_store_unseen(&w, 150, 40);
    tw_store(&w, 1, 40); /* the gap shows */
    wait_blocks(r, w.id, 80 + 6000 + 40);
    router_stats_t st = stats(r);
    ck_assert_uint_eq(st.gaps, st0.gaps + 1);
    ck_assert_uint_eq(st.resyncs_ok, st0.resyncs_ok + 1);
    ck_assert_uint_ge(st.resync_parts, st0.resync_parts + 2);
    ck_assert_uint_eq(st.resyncs_failed, 0);
    kvpub_stats_t ps;
    kvpub_stats_get(w.pub, &ps);
    ck_assert_uint_eq(ps.replays, 1);
    ck_assert_uint_eq(route_overlap("rs-replay", w.id, 60, 40), 40);
    /* Live events go on from where the replay ended: no further gap. */
    tw_store(&w, 1, 40);
    wait_blocks(r, w.id, 80 + 6000 + 80);
    ck_assert_uint_eq(stats(r).gaps, st.gaps);
    router_free(r);
    tw_stop(&w);
}
END_TEST

/* A dump cut short - ended with an error after one part, then silent after
 * one part (the worker died) - leaves the router's previous state, counts a
 * failed resync, and the next attempt succeeds. */
START_TEST(test_cut_short_keeps_state) {
    tw_t w;
    tw_start(&w, "rs-cut", 8, 2, 2); /* a 2-batch ring: a gap needs a dump */
    router_t *r = router_start("rs-cut", 700);
    tw_store(&w, 75, 40);
    tw_register(&w);
    wait_blocks(r, w.id, 3000);
    ck_assert_uint_ge(stats(r).resync_parts, 2);

    tw_store_unseen(&w, 50, 40); /* 2000 blocks the router does not see */
    tw_cut_set(&w, 1, true);
    tw_store(&w, 1, 40); /* gap: applied, then a dump cut with an error */
    wait_failed(r, 1);
    /* Not cleared, not half a dump: the old state plus the live batch. */
    ck_assert_uint_eq(router_worker_blocks(r, w.id, 0), 3040);
    ck_assert_uint_eq(stats(r).resyncs_ok, 1);
    ck_assert_uint_eq(route_overlap("rs-cut", w.id, 100, 40), 0);

    tw_cut_set(&w, 1, false); /* now silence after the first part */
    harness_sleep_ms(1100);   /* at most one attempt a second */
    tw_store(&w, 1, 40);
    wait_failed(r, 2);
    ck_assert_uint_eq(router_worker_blocks(r, w.id, 0), 3080);
    ck_assert_uint_eq(stats(r).resyncs_ok, 1);

    tw_cut_set(&w, 0, false);
    harness_sleep_ms(1100);
    tw_store(&w, 1, 40); /* the retry gets the whole dump */
    wait_blocks(r, w.id, 3000 + 2000 + 120);
    router_stats_t st = stats(r);
    ck_assert_uint_eq(st.resyncs_ok, 2);
    ck_assert_uint_eq(st.resyncs_failed, 2);
    ck_assert_uint_eq(route_overlap("rs-cut", w.id, 100, 40), 40);
    router_free(r);
    tw_stop(&w);
}
END_TEST

/* Live batches stay under max_payload too: up to 256 pending events of 40
 * blocks (200 events, ~135 KB) go out as several batches, none refused, no gap. */
START_TEST(test_live_batches_split) {
    tw_t w;
    tw_start(&w, "rs-live", 256, 64, 10000);
    router_t *r = router_start("rs-live", 2000);
    tw_register(&w);
    long long end = harness_now_ms() + 5000;
    while (stats(r).resyncs_ok < 1 && harness_now_ms() < end) harness_sleep_ms(10);
    ck_assert_uint_eq(stats(r).resyncs_ok, 1); /* the empty first dump */
    tw_store(&w, 200, 40);                     /* flushed by size, then by tw_store */
    wait_blocks(r, w.id, 8000);
    kvpub_stats_t ps;
    kvpub_stats_get(w.pub, &ps);
    ck_assert_uint_ge(ps.batches, 3);
    ck_assert_uint_eq(ps.publish_errors, 0);
    ck_assert_uint_eq(stats(r).gaps, 0);
    router_free(r);
    tw_stop(&w);
}
END_TEST

/* A replay whose one event is larger than a part (a 4500-block chain, ~72
 * KB, refused live too) is answered with a dump instead, in parts. */
START_TEST(test_replay_oversized_event_dumps) {
    tw_t w;
    router_t *r = setup_learned(&w, "rs-big", 2, 40);
    w.pub_errors = 1;
    tw_store(&w, 1, 4500); /* over max_payload: the live batch is refused */
    tw_store(&w, 1, 40);   /* the gap shows; the ring holds the big event */
    wait_blocks(r, w.id, 80 + 4500 + 40);
    router_stats_t st = stats(r);
    ck_assert_uint_eq(st.resyncs_ok, 2);
    ck_assert_uint_eq(st.resyncs_failed, 0);
    ck_assert_uint_ge(st.resync_parts, 1 + 3);
    kvpub_stats_t ps;
    kvpub_stats_get(w.pub, &ps);
    ck_assert_uint_eq(ps.replays, 0);
    ck_assert_uint_eq(ps.resyncs, 2);
    ck_assert_uint_eq(route_overlap("rs-big", w.id, 2, 40), 40);
    ck_assert_uint_eq(route_overlap("rs-big", w.id, 3, 40), 40); /* the big chain's head */
    router_free(r);
    tw_stop(&w);
}
END_TEST

/* Bad input: a reply whose second part claims another worker is refused
 * whole; the state stays. */
static void bogus_on_resync(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *m, void *ud) {
    (void)m;
    uint64_t id = *(uint64_t *)ud;
    bus_stream_writer_t *sw = NULL;
    if (bus_stream_writer_create(bus, msg, &sw)) return;
    Sluice__V1__KvEventBatch b = SLUICE__V1__KV_EVENT_BATCH__INIT;
    Sluice__V1__KvEvent ev = SLUICE__V1__KV_EVENT__INIT, *evp = &ev;
    Sluice__V1__KvCleared cl = SLUICE__V1__KV_CLEARED__INIT;
    ev.data_case = SLUICE__V1__KV_EVENT__DATA_CLEARED;
    ev.cleared = &cl;
    b.version = 1;
    b.worker_id = id;
    b.block_size = 16;
    b.resync = true;
    b.event_id = 5;
    b.n_events = 1;
    b.events = &evp;
    bus_stream_writer_send_proto(sw, &b.base);
    b.n_events = 0;
    b.worker_id = id + 1;
    bus_stream_writer_end_proto(sw, &b.base);
    bus_stream_writer_free(sw);
}

START_TEST(test_bogus_part_refused) {
    tw_t w;
    router_t *r = setup_learned(&w, "rs-bogus", 3, 10);
    /* Swap the worker's responder for a broken one, then make a gap. */
    bus_sub_free(w.s_resync);
    w.s_resync = NULL;
    char subj[BUS_SUBJECT_MAX];
    ck_assert_int_eq(
        bus_subject_instance(subj, sizeof subj, "rs-bogus", "backend", "kv_resync", w.id), 0);
    bus_sub_t *bogus = NULL;
    ck_assert_int_eq(bus_subscribe_proto(w.bus, subj, NULL,
                                         &sluice__v1__kv_resync_request__descriptor,
                                         bogus_on_resync, &w.id, &bogus),
                     0);
    bus_flush(w.bus, 2000);
    tw_store_unseen(&w, 1, 10);
    tw_store(&w, 1, 10);
    wait_failed(r, 1);
    ck_assert_uint_eq(router_worker_blocks(r, w.id, 0), 40);
    ck_assert_uint_eq(stats(r).resyncs_ok, 1);
    bus_sub_free(bogus);
    router_free(r);
    tw_stop(&w);
}
END_TEST

int main(void) {
    sl_log_init("test_resync");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (harness_etcd_start(&g_etcd) != 0 || harness_nats_start(&g_nats, MAX_PAYLOAD) != 0) {
        fprintf(stderr, "cannot start etcd / nats-server\n");
        return 1;
    }
    Suite *s = suite_create("resync");
    TCase *tc = tcase_create("resync");
    tcase_set_timeout(tc, 40);
    tcase_add_test(tc, test_dump_single_part);
    tcase_add_test(tc, test_dump_in_parts);
    tcase_add_test(tc, test_replay_in_parts);
    tcase_add_test(tc, test_cut_short_keeps_state);
    tcase_add_test(tc, test_bogus_part_refused);
    tcase_add_test(tc, test_live_batches_split);
    tcase_add_test(tc, test_replay_oversized_event_dumps);
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
