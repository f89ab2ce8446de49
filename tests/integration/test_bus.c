/* test_bus.c - the NATS bus against a real nats-server (tests/harness):
 * pub/sub, queue groups, request/reply, streamed replies (order, end, idle
 * timeout, reordering, gaps, duplicates, cancellation, responder errors,
 * server restart mid-stream), max_payload checks, protobuf subscriptions
 * with malformed input, subject builders and bad arguments. */
#include "common/runtime/bus.h"

#include "common/base/err.h"
#include "common/base/log.h"
#include "proto/sluice.pb-c.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---------------------------------------------------------------- */

static harness_nats_t srv;

static void start_server(long max_payload) {
    ck_assert_int_eq(harness_nats_start(&srv, max_payload), 0);
}

static bus_t *connect_named(const char *name) {
    bus_opts_t o = {.url = srv.url, .name = name, .reconnect_wait_ms = 50, .reconnect_max_ms = 500};
    bus_t *b = NULL;
    int rc = bus_connect(&b, &o);
    ck_assert_msg(rc == 0, "bus_connect: %s", bus_last_error());
    return b;
}

typedef struct counter {
    pthread_mutex_t mu;
    int n;
    size_t bytes;
    char last[256];
} counter_t;

#define COUNTER_INIT                                                                               \
    {                                                                                              \
        PTHREAD_MUTEX_INITIALIZER, 0, 0, {                                                         \
            0                                                                                      \
        }                                                                                          \
    }

static void count_cb(bus_t *bus, const bus_msg_t *msg, void *ud) {
    (void)bus;
    counter_t *c = ud;
    pthread_mutex_lock(&c->mu);
    c->n++;
    c->bytes += bus_msg_len(msg);
    size_t n = bus_msg_len(msg) < sizeof c->last - 1 ? bus_msg_len(msg) : sizeof c->last - 1;
    if (n) memcpy(c->last, bus_msg_data(msg), n);
    c->last[n] = 0;
    pthread_mutex_unlock(&c->mu);
}

static int counter_get(counter_t *c) {
    pthread_mutex_lock(&c->mu);
    int n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}

/* Waits until the counter reaches want (or 5 s pass); returns the count. */
static int counter_wait(counter_t *c, int want) {
    long long until = harness_now_ms() + 5000;
    while (counter_get(c) < want && harness_now_ms() < until) harness_sleep_ms(2);
    return counter_get(c);
}

static void echo_cb(bus_t *bus, const bus_msg_t *msg, void *ud) {
    (void)ud;
    bus_respond(bus, msg, bus_msg_data(msg), bus_msg_len(msg));
}

static void silent_cb(bus_t *bus, const bus_msg_t *msg, void *ud) {
    (void)bus;
    (void)msg;
    (void)ud;
}

/* Streamed responder: the request payload says what to do.
 *   "count N"  N chunks "chunk i", then an end message "done"
 *   "hang N"   N chunks, no end
 *   "fail"     one chunk, then bus_stream_writer_fail(SL_EUNAVAIL, ...) */
static void stream_responder(bus_t *bus, const bus_msg_t *msg, void *ud) {
    (void)ud;
    char req[64] = {0};
    size_t n = bus_msg_len(msg) < sizeof req - 1 ? bus_msg_len(msg) : sizeof req - 1;
    memcpy(req, bus_msg_data(msg), n);
    bus_stream_writer_t *w = NULL;
    if (bus_stream_writer_create(bus, msg, &w) != 0) return;
    char buf[64];
    long count = 0;
    if (strncmp(req, "count ", 6) == 0 || strncmp(req, "hang ", 5) == 0)
        count = strtol(strchr(req, ' ') + 1, NULL, 10);
    if (strcmp(req, "fail") == 0) count = 1;
    for (long i = 0; i < count; i++) {
        int len = snprintf(buf, sizeof buf, "chunk %ld", i);
        if (bus_stream_writer_send(w, buf, (size_t)len) != 0) goto out;
    }
    if (strncmp(req, "count ", 6) == 0) bus_stream_writer_end(w, "done", 4);
    if (strcmp(req, "fail") == 0) bus_stream_writer_fail(w, SL_EUNAVAIL, "model not loaded");
out:
    bus_stream_writer_free(w);
}

/* Raw framed publish straight through nats.c, to forge what a bus writer
 * never sends (gaps, duplicates, missing headers). seq < 0: no Sl-Seq. */
static void raw_send(natsConnection *nc, const char *subj, long long seq, bool end) {
    natsMsg *m = NULL;
    char sb[32];
    snprintf(sb, sizeof sb, "%lld", seq);
    ck_assert_int_eq(natsMsg_Create(&m, subj, NULL, sb, (int)strlen(sb)), NATS_OK);
    if (seq >= 0) ck_assert_int_eq(natsMsgHeader_Set(m, BUS_HDR_SEQ, sb), NATS_OK);
    if (end) ck_assert_int_eq(natsMsgHeader_Set(m, BUS_HDR_END, "1"), NATS_OK);
    ck_assert_int_eq(natsConnection_PublishMsg(nc, m), NATS_OK);
    natsMsg_Destroy(m);
}

static natsConnection *raw_connect(void) {
    natsConnection *nc = NULL;
    ck_assert_int_eq(natsConnection_ConnectTo(&nc, srv.url), NATS_OK);
    return nc;
}

/* ---- tests without a server ------------------------------------------------------ */

START_TEST(test_subjects) {
    char b[BUS_SUBJECT_MAX];
    ck_assert_int_eq(bus_subject_instance(b, sizeof b, "default", "backend", "generate", 0x1fULL),
                     0);
    ck_assert_str_eq(b, "sluice.default.backend.generate.000000000000001f");
    ck_assert_int_eq(bus_subject_endpoint(b, sizeof b, "ns1", "router", "route"), 0);
    ck_assert_str_eq(b, "sluice.ns1.router.route");
    ck_assert_int_eq(bus_subject_topic(b, sizeof b, "ns1", "kv_events"), 0);
    ck_assert_str_eq(b, "sluice.ns1.kv_events");
    /* bad tokens */
    ck_assert_int_eq(bus_subject_topic(b, sizeof b, "a.b", "load"), SL_EINVAL);
    ck_assert_int_eq(bus_subject_topic(b, sizeof b, "ns", "lo ad"), SL_EINVAL);
    ck_assert_int_eq(bus_subject_topic(b, sizeof b, "ns", "*"), SL_EINVAL);
    ck_assert_int_eq(bus_subject_topic(b, sizeof b, "ns", ">"), SL_EINVAL);
    ck_assert_int_eq(bus_subject_topic(b, sizeof b, "", "load"), SL_EINVAL);
    ck_assert_int_eq(bus_subject_topic(b, sizeof b, NULL, "load"), SL_EINVAL);
    ck_assert_int_eq(bus_subject_endpoint(b, sizeof b, "ns", "router", "ro\x01ute"), SL_EINVAL);
    ck_assert_int_eq(bus_subject_instance(NULL, 10, "a", "b", "c", 1), SL_EINVAL);
    /* too small */
    char small[16];
    ck_assert_int_eq(bus_subject_instance(small, sizeof small, "default", "backend", "gen", 1),
                     SL_ETOOBIG);
    ck_assert_str_eq(small, "");
    ck_assert_ptr_nonnull(strstr(bus_last_error(), "do not fit"));
}
END_TEST

START_TEST(test_bad_arguments) {
    bus_t *b = NULL;
    bus_opts_t o = {.url = "nats://127.0.0.1:1", .connect_timeout_ms = -1};
    ck_assert_int_eq(bus_connect(NULL, NULL), SL_EINVAL);
    ck_assert_int_eq(bus_connect(&b, &o), SL_EINVAL);
    ck_assert_ptr_null(b);
    bus_free(NULL);
    bus_sub_free(NULL);
    bus_stream_free(NULL);
    bus_stream_writer_free(NULL);
    bus_msg_free(NULL);
    bus_stream_cancel(NULL);
    ck_assert_int_eq(bus_publish(NULL, "x", "a", 1), SL_EINVAL);
    bus_msg_t *m = NULL;
    ck_assert_int_eq(bus_request(NULL, "x", "a", 1, 10, &m), SL_EINVAL);
    ck_assert_int_eq(bus_stream_recv(NULL, &m), SL_EINVAL);
    ck_assert_int_eq(bus_stream_writer_send(NULL, "a", 1), SL_EINVAL);
    ck_assert_int_eq(bus_stream_writer_create_reply(NULL, "x", NULL), SL_EINVAL);
    ck_assert_int_eq(bus_wait_connected(NULL, 1), SL_EINVAL);
    bus_stats_t st;
    bus_stats_get(NULL, &st);
    ck_assert_uint_eq(st.published, 0);
    ck_assert_ptr_null(bus_msg_subject(NULL));
    ck_assert_uint_eq(bus_msg_len(NULL), 0);
}
END_TEST

/* ---- connection --------------------------------------------------------------------- */

START_TEST(test_connect_unavailable_then_retry) {
    start_server(0);
    harness_nats_stop(&srv); /* keep its port, nothing listens there now */
    bus_t *b = NULL;
    bus_opts_t o = {.url = srv.url, .name = "t", .connect_timeout_ms = 500};
    long long t0 = harness_now_ms();
    ck_assert_int_eq(bus_connect(&b, &o), SL_EUNAVAIL);
    ck_assert_ptr_null(b);
    ck_assert_ptr_nonnull(strstr(bus_last_error(), srv.url));
    ck_assert_int_lt(harness_now_ms() - t0, 3000);

    /* retry_initial: connect succeeds now, the link comes up with the server */
    o.retry_initial = true;
    o.reconnect_wait_ms = 50;
    ck_assert_int_eq(bus_connect(&b, &o), 0);
    t0 = harness_now_ms();
    bus_free(b); /* never connected: still closes promptly */
    ck_assert_int_lt(harness_now_ms() - t0, 3000);
    ck_assert_int_eq(bus_connect(&b, &o), 0);
    ck_assert(!bus_is_connected(b));
    ck_assert_int_eq(bus_wait_connected(b, 100), SL_ETIMEDOUT);
    ck_assert_int_eq(harness_nats_restart(&srv), 0);
    ck_assert_int_eq(bus_wait_connected(b, 5000), 0);
    ck_assert(bus_is_connected(b));
    ck_assert_int_eq(bus_max_payload(b), 8L << 20);
    bus_free(b);
    harness_nats_destroy(&srv);
}
END_TEST

/* ---- pub/sub ------------------------------------------------------------------------ */

START_TEST(test_pubsub) {
    start_server(0);
    bus_t *a = connect_named("pub"), *b = connect_named("sub");
    counter_t c = COUNTER_INIT, w = COUNTER_INIT;
    bus_sub_t *s1 = NULL, *s2 = NULL;
    ck_assert_int_eq(bus_subscribe(b, "t.pub", NULL, count_cb, &c, &s1), 0);
    ck_assert_int_eq(bus_subscribe(b, "t.*", NULL, count_cb, &w, &s2), 0);
    ck_assert_int_eq(bus_flush(b, 2000), 0);
    for (int i = 0; i < 1000; i++) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "m%d", i);
        ck_assert_int_eq(bus_publish(a, "t.pub", buf, (size_t)n), 0);
    }
    ck_assert_int_eq(bus_publish(a, "t.other", NULL, 0), 0); /* empty payload */
    ck_assert_int_eq(bus_flush(a, 2000), 0);
    ck_assert_int_eq(counter_wait(&c, 1000), 1000);
    ck_assert_int_eq(counter_wait(&w, 1001), 1001);
    ck_assert_str_eq(c.last, "m999");
    bus_stats_t st;
    bus_stats_get(a, &st);
    ck_assert_uint_eq(st.published, 1001);
    bus_stats_get(b, &st);
    ck_assert_uint_eq(st.received, 2001);
    /* after bus_sub_free no callback runs any more */
    bus_sub_free(s1);
    ck_assert_int_eq(bus_publish(a, "t.pub", "x", 1), 0);
    ck_assert_int_eq(bus_flush(a, 2000), 0);
    ck_assert_int_eq(counter_wait(&w, 1002), 1002);
    ck_assert_int_eq(counter_get(&c), 1000);
    /* bad subjects */
    ck_assert_int_eq(bus_publish(a, "", "x", 1), SL_EINVAL);
    ck_assert_int_eq(bus_publish(a, "a b", "x", 1), SL_EINVAL);
    ck_assert_int_eq(bus_publish(a, "a..b", "x", 1), SL_EINVAL);
    ck_assert_int_eq(bus_publish(a, "a.*", "x", 1), SL_EINVAL);
    ck_assert_int_eq(bus_publish(a, ".a", "x", 1), SL_EINVAL);
    ck_assert_int_eq(bus_publish_reply(a, "a", "r\n", "x", 1), SL_EINVAL);
    bus_sub_t *bad = NULL;
    ck_assert_int_eq(bus_subscribe(b, "x", "", count_cb, &c, &bad), SL_EINVAL);
    ck_assert_int_eq(bus_subscribe(b, "x", NULL, NULL, &c, &bad), SL_EINVAL);
    ck_assert_int_eq(bus_subscribe(b, "a.>.b", NULL, count_cb, &c, &bad), SL_EINVAL);
    ck_assert_int_eq(bus_subscribe(b, "a.b*", NULL, count_cb, &c, &bad), SL_EINVAL);
    ck_assert_int_eq(bus_subscribe(b, "", NULL, count_cb, &c, &bad), SL_EINVAL);
    ck_assert_ptr_null(bad);
    bus_sub_free(s2);
    bus_free(a);
    bus_free(b);
    harness_nats_destroy(&srv);
}
END_TEST

START_TEST(test_queue_group_spreads_load) {
    start_server(0);
    bus_t *pub = connect_named("pub");
    bus_t *m[3];
    counter_t c[3] = {COUNTER_INIT, COUNTER_INIT, COUNTER_INIT}, all = COUNTER_INIT;
    bus_sub_t *s[3], *sall = NULL;
    for (int i = 0; i < 3; i++) {
        m[i] = connect_named("member");
        ck_assert_int_eq(bus_subscribe(m[i], "jobs", "workers", count_cb, &c[i], &s[i]), 0);
        ck_assert_int_eq(bus_flush(m[i], 2000), 0);
    }
    ck_assert_int_eq(bus_subscribe(pub, "jobs", NULL, count_cb, &all, &sall), 0);
    ck_assert_int_eq(bus_flush(pub, 2000), 0);
    for (int i = 0; i < 600; i++) ck_assert_int_eq(bus_publish(pub, "jobs", "j", 1), 0);
    ck_assert_int_eq(bus_flush(pub, 2000), 0);
    ck_assert_int_eq(counter_wait(&all, 600), 600);
    long long until = harness_now_ms() + 5000;
    while (counter_get(&c[0]) + counter_get(&c[1]) + counter_get(&c[2]) < 600 &&
           harness_now_ms() < until)
        harness_sleep_ms(2);
    harness_sleep_ms(50); /* no extra deliveries: each message went to one member */
    int sum = 0;
    for (int i = 0; i < 3; i++) {
        int n = counter_get(&c[i]);
        ck_assert_msg(n >= 100, "member %d got only %d of 600", i, n);
        sum += n;
    }
    ck_assert_int_eq(sum, 600);
    for (int i = 0; i < 3; i++) {
        bus_sub_free(s[i]);
        bus_free(m[i]);
    }
    bus_sub_free(sall);
    bus_free(pub);
    harness_nats_destroy(&srv);
}
END_TEST

typedef struct slow_sub {
    counter_t c;
    int first_sleep_ms;
} slow_sub_t;

static void slow_cb(bus_t *bus, const bus_msg_t *msg, void *ud) {
    slow_sub_t *ss = ud;
    if (counter_get(&ss->c) == 0) harness_sleep_ms(ss->first_sleep_ms);
    count_cb(bus, msg, &ss->c);
}

START_TEST(test_burst_not_dropped) {
    start_server(0);
    bus_t *a = connect_named("pub"), *b = connect_named("slow");
    slow_sub_t ss = {COUNTER_INIT, 300};
    bus_sub_t *sub = NULL;
    ck_assert_int_eq(bus_subscribe(b, "burst", NULL, slow_cb, &ss, &sub), 0);
    ck_assert_int_eq(bus_flush(b, 2000), 0);
    /* more than nats.c's default pending limit (65536 messages) while the
     * subscriber is stuck in its first callback */
    const int n = 100000;
    for (int i = 0; i < n; i++) ck_assert_int_eq(bus_publish(a, "burst", "0123456789", 10), 0);
    ck_assert_int_eq(bus_flush(a, 5000), 0);
    long long until = harness_now_ms() + 10000;
    while (counter_get(&ss.c) < n && harness_now_ms() < until) harness_sleep_ms(5);
    ck_assert_int_eq(counter_get(&ss.c), n);
    bus_stats_t st;
    bus_stats_get(b, &st);
    ck_assert_uint_eq(st.dropped, 0);
    ck_assert_uint_eq(st.bytes_in, (uint64_t)n * 10);
    bus_sub_free(sub);
    bus_free(a);
    bus_free(b);
    harness_nats_destroy(&srv);
}
END_TEST

/* ---- request / reply ------------------------------------------------------------------ */

START_TEST(test_request_reply) {
    start_server(0);
    bus_t *r = connect_named("responder"), *q = connect_named("requester");
    bus_sub_t *echo = NULL, *silent = NULL;
    ck_assert_int_eq(bus_subscribe(r, "svc.echo", "echo", echo_cb, NULL, &echo), 0);
    ck_assert_int_eq(bus_subscribe(r, "svc.silent", NULL, silent_cb, NULL, &silent), 0);
    ck_assert_int_eq(bus_flush(r, 2000), 0);
    for (int i = 0; i < 50; i++) {
        bus_msg_t *rep = NULL;
        char buf[32];
        int n = snprintf(buf, sizeof buf, "ping %d", i);
        ck_assert_int_eq(bus_request(q, "svc.echo", buf, (size_t)n, 2000, &rep), 0);
        ck_assert_uint_eq(bus_msg_len(rep), (size_t)n);
        ck_assert_int_eq(memcmp(bus_msg_data(rep), buf, (size_t)n), 0);
        bus_msg_free(rep);
    }
    bus_msg_t *rep = NULL;
    ck_assert_int_eq(bus_request(q, "svc.nobody", "x", 1, 2000, &rep), SL_EUNAVAIL);
    ck_assert_ptr_nonnull(strstr(bus_last_error(), "no responders"));
    long long t0 = harness_now_ms();
    ck_assert_int_eq(bus_request(q, "svc.silent", "x", 1, 200, &rep), SL_ETIMEDOUT);
    ck_assert_int_ge(harness_now_ms() - t0, 190);
    ck_assert_ptr_null(rep);
    ck_assert_int_eq(bus_request(q, "svc.echo", "x", 1, 0, &rep), SL_EINVAL);
    /* respond to a message without a reply subject */
    ck_assert_int_eq(bus_respond(q, NULL, "x", 1), SL_EINVAL);
    bus_sub_free(echo);
    bus_sub_free(silent);
    bus_free(r);
    bus_free(q);
    harness_nats_destroy(&srv);
}
END_TEST

/* ---- streamed replies ------------------------------------------------------------------- */

START_TEST(test_stream_10k_in_order) {
    start_server(0);
    bus_t *r = connect_named("responder"), *q = connect_named("requester");
    bus_sub_t *sub = NULL;
    ck_assert_int_eq(bus_subscribe(r, "gen", NULL, stream_responder, NULL, &sub), 0);
    ck_assert_int_eq(bus_flush(r, 2000), 0);
    bus_stream_t *s = NULL;
    bus_stream_opts_t so = {.idle_timeout_ms = 5000};
    ck_assert_int_eq(bus_stream_open(q, "gen", "count 10000", 11, &so, &s), 0);
    ck_assert_ptr_nonnull(strstr(bus_stream_inbox(s), "_INBOX."));
    for (int i = 0; i <= 10000; i++) {
        bus_msg_t *m = NULL;
        int rc = bus_stream_recv(s, &m);
        ck_assert_msg(rc == 0, "recv %d: %s", i, bus_stream_error(s));
        ck_assert_uint_eq(bus_msg_seq(m), (uint64_t)i);
        char want[32];
        int n = i < 10000 ? snprintf(want, sizeof want, "chunk %d", i)
                          : snprintf(want, sizeof want, "done");
        ck_assert_uint_eq(bus_msg_len(m), (size_t)n);
        ck_assert_int_eq(memcmp(bus_msg_data(m), want, (size_t)n), 0);
        ck_assert(bus_msg_is_last(m) == (i == 10000));
        bus_msg_free(m);
    }
    bus_msg_t *m = NULL;
    ck_assert_int_eq(bus_stream_recv(s, &m), SL_EEND);
    ck_assert_int_eq(bus_stream_recv(s, &m), SL_EEND);
    ck_assert_str_eq(bus_stream_error(s), "");
    bus_stream_free(s);

    /* two concurrent streams do not mix */
    bus_stream_t *s1 = NULL, *s2 = NULL;
    ck_assert_int_eq(bus_stream_open(q, "gen", "count 100", 9, &so, &s1), 0);
    ck_assert_int_eq(bus_stream_open(q, "gen", "count 3", 7, &so, &s2), 0);
    int n1 = 0, n2 = 0;
    while (bus_stream_recv(s2, &m) == 0) {
        n2++;
        bus_msg_free(m);
    }
    while (bus_stream_recv(s1, &m) == 0) {
        n1++;
        bus_msg_free(m);
    }
    ck_assert_int_eq(n1, 101);
    ck_assert_int_eq(n2, 4);
    bus_stream_free(s1);
    bus_stream_free(s2);

    /* the writer refuses to send after the end */
    bus_stream_writer_t *w = NULL;
    ck_assert_int_eq(bus_stream_writer_create_reply(r, "some.inbox", &w), 0);
    ck_assert_int_eq(bus_stream_writer_end(w, NULL, 0), 0);
    ck_assert_uint_eq(bus_stream_writer_seq(w), 1);
    ck_assert_int_eq(bus_stream_writer_send(w, "x", 1), SL_ECLOSED);
    bus_stream_writer_free(w);
    bus_sub_free(sub);
    bus_free(r);
    bus_free(q);
    harness_nats_destroy(&srv);
}
END_TEST

START_TEST(test_stream_idle_timeout_and_errors) {
    start_server(0);
    bus_t *r = connect_named("responder"), *q = connect_named("requester");
    bus_sub_t *sub = NULL;
    ck_assert_int_eq(bus_subscribe(r, "gen", NULL, stream_responder, NULL, &sub), 0);
    ck_assert_int_eq(bus_flush(r, 2000), 0);
    bus_stream_opts_t so = {.idle_timeout_ms = 300};
    bus_stream_t *s = NULL;
    bus_msg_t *m = NULL;

    /* idle timeout after 3 chunks */
    ck_assert_int_eq(bus_stream_open(q, "gen", "hang 3", 6, &so, &s), 0);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(bus_stream_recv(s, &m), 0);
        bus_msg_free(m);
    }
    long long t0 = harness_now_ms();
    ck_assert_int_eq(bus_stream_recv(s, &m), SL_ETIMEDOUT);
    long long dt = harness_now_ms() - t0;
    ck_assert_int_ge(dt, 150);
    ck_assert_int_lt(dt, 2000);
    ck_assert_ptr_nonnull(strstr(bus_stream_error(s), "idle timeout"));
    ck_assert_int_eq(bus_stream_recv(s, &m), SL_ETIMEDOUT); /* sticky */
    bus_stream_free(s);

    /* responder failure carries its code and text */
    ck_assert_int_eq(bus_stream_open(q, "gen", "fail", 4, &so, &s), 0);
    ck_assert_int_eq(bus_stream_recv(s, &m), 0);
    bus_msg_free(m);
    ck_assert_int_eq(bus_stream_recv(s, &m), SL_EUNAVAIL);
    ck_assert_ptr_nonnull(strstr(bus_stream_error(s), "model not loaded"));
    bus_stream_free(s);

    /* nobody listening: no responders, not a timeout */
    ck_assert_int_eq(bus_stream_open(q, "gen.nobody", "x", 1, &so, &s), 0);
    ck_assert_int_eq(bus_stream_recv(s, &m), SL_EUNAVAIL);
    ck_assert_ptr_nonnull(strstr(bus_stream_error(s), "no responders"));
    bus_stream_free(s);

    /* bad options */
    bus_stream_opts_t bad = {.reorder_window = 1 << 20};
    ck_assert_int_eq(bus_stream_open(q, "gen", "x", 1, &bad, &s), SL_EINVAL);
    ck_assert_ptr_null(s);
    bus_sub_free(sub);
    bus_free(r);
    bus_free(q);
    harness_nats_destroy(&srv);
}
END_TEST

/* Opens a stream on "raw" (a no-op subscriber keeps no-responders away). */
static bus_stream_t *open_raw(bus_t *q, int window) {
    bus_stream_opts_t so = {
        .idle_timeout_ms = 3000, .gap_timeout_ms = 200, .reorder_window = window};
    bus_stream_t *s = NULL;
    ck_assert_int_eq(bus_stream_open(q, "raw", "x", 1, &so, &s), 0);
    return s;
}

START_TEST(test_stream_reorder_gap_duplicate) {
    start_server(0);
    bus_t *q = connect_named("requester");
    natsConnection *nc = raw_connect();
    bus_sub_t *sink = NULL;
    ck_assert_int_eq(bus_subscribe(q, "raw", NULL, silent_cb, NULL, &sink), 0);
    ck_assert_int_eq(bus_flush(q, 2000), 0);
    bus_msg_t *m = NULL;

    /* reordered within the window: delivered in order */
    bus_stream_t *s = open_raw(q, 8);
    raw_send(nc, bus_stream_inbox(s), 0, false);
    raw_send(nc, bus_stream_inbox(s), 2, false);
    raw_send(nc, bus_stream_inbox(s), 3, true);
    raw_send(nc, bus_stream_inbox(s), 1, false);
    for (int i = 0; i < 4; i++) {
        ck_assert_msg(bus_stream_recv(s, &m) == 0, "%s", bus_stream_error(s));
        ck_assert_uint_eq(bus_msg_seq(m), (uint64_t)i);
        bus_msg_free(m);
    }
    ck_assert_int_eq(bus_stream_recv(s, &m), SL_EEND);
    bus_stream_free(s);

    /* a seq that never comes: gap reported after gap_timeout, not a hang */
    s = open_raw(q, 8);
    raw_send(nc, bus_stream_inbox(s), 0, false);
    raw_send(nc, bus_stream_inbox(s), 1, false);
    raw_send(nc, bus_stream_inbox(s), 3, false);
    raw_send(nc, bus_stream_inbox(s), 4, true);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(bus_stream_recv(s, &m), 0);
        bus_msg_free(m);
    }
    long long t0 = harness_now_ms();
    ck_assert_int_eq(bus_stream_recv(s, &m), SL_EPROTO);
    ck_assert_int_lt(harness_now_ms() - t0, 2000);
    ck_assert_ptr_nonnull(strstr(bus_stream_error(s), "gap: seq 2 missing"));
    bus_stream_free(s);

    /* a jump beyond the window: immediate gap */
    s = open_raw(q, 4);
    raw_send(nc, bus_stream_inbox(s), 0, false);
    raw_send(nc, bus_stream_inbox(s), 10, false);
    ck_assert_int_eq(bus_stream_recv(s, &m), 0);
    bus_msg_free(m);
    ck_assert_int_eq(bus_stream_recv(s, &m), SL_EPROTO);
    ck_assert_ptr_nonnull(strstr(bus_stream_error(s), "beyond the reorder window"));
    bus_stream_free(s);

    /* duplicate of a delivered seq */
    s = open_raw(q, 4);
    raw_send(nc, bus_stream_inbox(s), 0, false);
    raw_send(nc, bus_stream_inbox(s), 0, false);
    ck_assert_int_eq(bus_stream_recv(s, &m), 0);
    bus_msg_free(m);
    ck_assert_int_eq(bus_stream_recv(s, &m), SL_EPROTO);
    ck_assert_ptr_nonnull(strstr(bus_stream_error(s), "duplicate seq 0"));
    bus_stream_free(s);

    /* duplicate of a held seq */
    s = open_raw(q, 4);
    raw_send(nc, bus_stream_inbox(s), 2, false);
    raw_send(nc, bus_stream_inbox(s), 2, false);
    ck_assert_int_eq(bus_stream_recv(s, &m), SL_EPROTO);
    ck_assert_ptr_nonnull(strstr(bus_stream_error(s), "duplicate seq 2"));
    bus_stream_free(s);

    /* no framing at all */
    s = open_raw(q, 4);
    raw_send(nc, bus_stream_inbox(s), -1, false);
    ck_assert_int_eq(bus_stream_recv(s, &m), SL_EPROTO);
    ck_assert_ptr_nonnull(strstr(bus_stream_error(s), "Sl-Seq"));
    bus_stream_free(s);

    /* chunks for a freed stream are dropped and counted, nothing crashes */
    s = open_raw(q, 4);
    char inbox[128];
    snprintf(inbox, sizeof inbox, "%s", bus_stream_inbox(s));
    bus_stream_free(s);
    bus_stats_t st0, st1;
    bus_stats_get(q, &st0);
    raw_send(nc, inbox, 0, false);
    natsConnection_Flush(nc);
    ck_assert_int_eq(bus_flush(q, 2000), 0);
    long long until = harness_now_ms() + 2000;
    do {
        bus_stats_get(q, &st1);
    } while (st1.dropped == st0.dropped && harness_now_ms() < until);
    ck_assert_uint_eq(st1.dropped, st0.dropped + 1);

    natsConnection_Destroy(nc);
    bus_sub_free(sink);
    bus_free(q);
    harness_nats_destroy(&srv);
}
END_TEST

typedef struct cancel_arg {
    bus_stream_t *s;
    int delay_ms;
} cancel_arg_t;

static void *cancel_later(void *p) {
    cancel_arg_t *a = p;
    harness_sleep_ms(a->delay_ms);
    bus_stream_cancel(a->s);
    return NULL;
}

START_TEST(test_stream_cancel) {
    start_server(0);
    bus_t *r = connect_named("responder"), *q = connect_named("requester");
    bus_sub_t *sub = NULL;
    ck_assert_int_eq(bus_subscribe(r, "gen", NULL, stream_responder, NULL, &sub), 0);
    ck_assert_int_eq(bus_flush(r, 2000), 0);
    bus_stream_opts_t so = {.idle_timeout_ms = 20000};
    bus_stream_t *s = NULL;
    bus_msg_t *m = NULL;
    ck_assert_int_eq(bus_stream_open(q, "gen", "hang 1", 6, &so, &s), 0);
    ck_assert_int_eq(bus_stream_recv(s, &m), 0);
    bus_msg_free(m);
    cancel_arg_t a = {s, 100};
    pthread_t th;
    pthread_create(&th, NULL, cancel_later, &a);
    long long t0 = harness_now_ms();
    ck_assert_int_eq(bus_stream_recv(s, &m), SL_ECANCELLED);
    ck_assert_int_lt(harness_now_ms() - t0, 2000);
    pthread_join(th, NULL);
    bus_stream_free(s);
    bus_sub_free(sub);
    bus_free(r);
    bus_free(q);
    harness_nats_destroy(&srv);
}
END_TEST

START_TEST(test_server_restart_mid_stream) {
    start_server(0);
    bus_t *r = connect_named("responder"), *q = connect_named("requester");
    bus_sub_t *sub = NULL, *echo = NULL;
    ck_assert_int_eq(bus_subscribe(r, "gen", NULL, stream_responder, NULL, &sub), 0);
    ck_assert_int_eq(bus_subscribe(r, "svc.echo", NULL, echo_cb, NULL, &echo), 0);
    ck_assert_int_eq(bus_flush(r, 2000), 0);
    bus_stream_opts_t so = {.idle_timeout_ms = 30000};
    bus_stream_t *s = NULL;
    bus_msg_t *m = NULL;
    ck_assert_int_eq(bus_stream_open(q, "gen", "hang 5", 6, &so, &s), 0);
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(bus_stream_recv(s, &m), 0);
        bus_msg_free(m);
    }
    bus_stream_writer_t *w = NULL;
    ck_assert_int_eq(bus_stream_writer_create_reply(r, "some.inbox", &w), 0);
    ck_assert_int_eq(bus_stream_writer_send(w, "a", 1), 0);
    /* server goes away while the requester waits for chunk 5 */
    long long t0 = harness_now_ms();
    ck_assert_int_eq(harness_nats_restart(&srv), 0);
    int rc = bus_stream_recv(s, &m);
    long long dt = harness_now_ms() - t0;
    ck_assert_msg(rc == SL_ECLOSED, "rc %d (%s)", rc, bus_stream_error(s));
    ck_assert_msg(dt < 5000, "stream failed only after %lld ms", dt);
    ck_assert_ptr_nonnull(strstr(bus_stream_error(s), "connection to NATS lost mid-stream"));
    ck_assert_ptr_nonnull(strstr(bus_stream_error(s), "after 5 messages"));
    bus_stream_free(s);

    /* both sides reconnect and resubscribe; new work succeeds */
    ck_assert_int_eq(bus_wait_connected(q, 5000), 0);
    ck_assert_int_eq(bus_wait_connected(r, 5000), 0);
    ck_assert_int_eq(bus_flush(r, 2000), 0);
    ck_assert_int_eq(bus_flush(q, 2000), 0);
    /* a writer from before the drop refuses to continue */
    ck_assert_int_eq(bus_stream_writer_send(w, "b", 1), SL_ECLOSED);
    ck_assert_ptr_nonnull(strstr(bus_last_error(), "connection to NATS lost after 1 messages"));
    bus_stream_writer_free(w);
    bus_msg_t *rep = NULL;
    rc = bus_request(q, "svc.echo", "again", 5, 3000, &rep);
    ck_assert_msg(rc == 0, "request after reconnect: %s", bus_last_error());
    ck_assert_uint_eq(bus_msg_len(rep), 5);
    bus_msg_free(rep);
    ck_assert_int_eq(bus_stream_open(q, "gen", "count 50", 8, &so, &s), 0);
    int n = 0;
    while ((rc = bus_stream_recv(s, &m)) == 0) {
        n++;
        bus_msg_free(m);
    }
    ck_assert_msg(rc == SL_EEND, "rc %d: %s", rc, bus_stream_error(s));
    ck_assert_int_eq(n, 51);
    bus_stream_free(s);
    bus_stats_t st;
    bus_stats_get(q, &st);
    ck_assert_uint_ge(st.disconnects, 1);
    ck_assert_uint_ge(st.reconnects, 1);
    bus_sub_free(sub);
    bus_sub_free(echo);
    bus_free(r);
    bus_free(q);
    harness_nats_destroy(&srv);
}
END_TEST

/* ---- max_payload ------------------------------------------------------------------------- */

START_TEST(test_too_big) {
    start_server(64 * 1024);
    bus_t *b = connect_named("big");
    ck_assert_int_eq(bus_max_payload(b), 65536);
    counter_t c = COUNTER_INIT;
    bus_sub_t *sub = NULL;
    ck_assert_int_eq(bus_subscribe(b, "big", NULL, count_cb, &c, &sub), 0);
    ck_assert_int_eq(bus_flush(b, 2000), 0);
    size_t big = 100 * 1024;
    char *buf = calloc(1, big);
    ck_assert_ptr_nonnull(buf);

    ck_assert_int_eq(bus_publish(b, "big", buf, big), SL_ETOOBIG);
    ck_assert_str_eq(bus_last_error(),
                     "message of 102400 bytes to big exceeds the server's max_payload of 65536 "
                     "bytes");
    bus_msg_t *m = NULL;
    long long t0 = harness_now_ms();
    ck_assert_int_eq(bus_request(b, "big", buf, big, 5000, &m), SL_ETOOBIG);
    ck_assert_int_lt(harness_now_ms() - t0, 100); /* refused, not timed out */
    ck_assert_ptr_nonnull(strstr(bus_last_error(), "max_payload of 65536"));
    bus_stream_t *s = NULL;
    ck_assert_int_eq(bus_stream_open(b, "big", buf, big, NULL, &s), SL_ETOOBIG);
    ck_assert_ptr_null(s);
    /* the writer counts its headers: exactly max_payload of data is too big */
    bus_stream_writer_t *w = NULL;
    ck_assert_int_eq(bus_stream_writer_create_reply(b, "big", &w), 0);
    ck_assert_int_eq(bus_stream_writer_send(w, buf, 65536), SL_ETOOBIG);
    ck_assert_ptr_nonnull(strstr(bus_last_error(), "exceeds the server's max_payload"));
    ck_assert_uint_eq(bus_stream_writer_seq(w), 0); /* nothing consumed */
    ck_assert_int_eq(bus_stream_writer_send(w, buf, 1000), 0);
    bus_stream_writer_free(w);
    /* protobuf: checked on the packed size */
    Sluice__V1__RouteRequest rr = SLUICE__V1__ROUTE_REQUEST__INIT;
    uint32_t *toks = calloc(40000, sizeof *toks);
    for (int i = 0; i < 40000; i++) toks[i] = 100000 + (uint32_t)i; /* 3-byte varints */
    rr.n_token_ids = 40000;
    rr.token_ids = toks;
    ck_assert_int_eq(bus_publish_proto(b, "big", &rr.base), SL_ETOOBIG);
    ck_assert_ptr_nonnull(strstr(bus_last_error(), "max_payload of 65536"));
    /* just under the limit goes through */
    ck_assert_int_eq(bus_publish(b, "big", buf, 60000), 0);
    ck_assert_int_eq(bus_flush(b, 2000), 0);
    ck_assert_int_eq(counter_wait(&c, 2), 2); /* the writer chunk and this one */
    free(toks);
    free(buf);
    bus_sub_free(sub);
    bus_free(b);
    harness_nats_destroy(&srv);
}
END_TEST

/* ---- protobuf ------------------------------------------------------------------------------ */

typedef struct route_seen {
    pthread_mutex_t mu;
    int n;
    char last_id[64];
    size_t last_tokens;
} route_seen_t;

static void route_cb(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *pm, void *ud) {
    route_seen_t *rs = ud;
    const Sluice__V1__RouteRequest *req = (const Sluice__V1__RouteRequest *)pm;
    pthread_mutex_lock(&rs->mu);
    rs->n++;
    snprintf(rs->last_id, sizeof rs->last_id, "%s", req->request_id);
    rs->last_tokens = req->n_token_ids;
    pthread_mutex_unlock(&rs->mu);
    if (bus_msg_reply(msg)) {
        Sluice__V1__RouteResponse resp = SLUICE__V1__ROUTE_RESPONSE__INIT;
        resp.version = 1;
        resp.request_id = req->request_id;
        resp.worker_id = 0xabcdef;
        resp.overlap_blocks = (uint32_t)req->n_token_ids / 16;
        bus_respond_proto(bus, msg, &resp.base);
    }
}

static int route_seen_get(route_seen_t *rs) {
    pthread_mutex_lock(&rs->mu);
    int n = rs->n;
    pthread_mutex_unlock(&rs->mu);
    return n;
}

static int malformed_lines;

static void malformed_sink(sl_log_level_t level, const char *line, void *ud) {
    (void)level;
    (void)ud;
    if (strstr(line, "malformed")) __atomic_fetch_add(&malformed_lines, 1, __ATOMIC_RELAXED);
}

START_TEST(test_proto_malformed_dropped) {
    sl_log_set_level(SL_LOG_WARN);
    sl_log_set_sink(malformed_sink, NULL);
    start_server(0);
    bus_t *a = connect_named("pub"), *b = connect_named("router");
    route_seen_t rs = {PTHREAD_MUTEX_INITIALIZER, 0, {0}, 0};
    bus_sub_t *sub = NULL;
    ck_assert_int_eq(bus_subscribe_proto(b, "sluice.t.router.route", "router",
                                         &sluice__v1__route_request__descriptor, route_cb, &rs,
                                         &sub),
                     0);
    ck_assert_int_eq(bus_flush(b, 2000), 0);
    static const char *garbage[] = {
        "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", /* endless varint */
        "\x12\x50"
        "abc",              /* string longer than the message */
        "\x0f",             /* wire type 7 does not exist */
        "\x22\x05\x01\x02", /* truncated packed field */
    };
    Sluice__V1__RouteRequest rr = SLUICE__V1__ROUTE_REQUEST__INIT;
    uint32_t toks[256];
    for (int i = 0; i < 256; i++) toks[i] = (uint32_t)i * 7;
    rr.version = 1;
    rr.request_id = "req-1";
    rr.n_token_ids = 256;
    rr.token_ids = toks;
    for (int round = 0; round < 10; round++) {
        for (size_t g = 0; g < sizeof garbage / sizeof *garbage; g++)
            ck_assert_int_eq(
                bus_publish(a, "sluice.t.router.route", garbage[g], strlen(garbage[g])), 0);
        ck_assert_int_eq(bus_publish_proto(a, "sluice.t.router.route", &rr.base), 0);
    }
    /* unknown fields are ignored: field 99 varint appended to a valid message */
    uint8_t ext[2048];
    size_t n = protobuf_c_message_pack(&rr.base, ext);
    ext[n++] = 0x98; /* (99 << 3) | 0 = 792 = 0x98 0x06 */
    ext[n++] = 0x06;
    ext[n++] = 0x2a;
    ck_assert_int_eq(bus_publish(a, "sluice.t.router.route", ext, n), 0);
    ck_assert_int_eq(bus_flush(a, 2000), 0);
    long long until = harness_now_ms() + 5000;
    while (route_seen_get(&rs) < 11 && harness_now_ms() < until) harness_sleep_ms(2);
    ck_assert_int_eq(route_seen_get(&rs), 11);
    ck_assert_str_eq(rs.last_id, "req-1");
    ck_assert_uint_eq(rs.last_tokens, 256);
    bus_stats_t st;
    until = harness_now_ms() + 2000;
    do bus_stats_get(b, &st);
    while (st.malformed < 40 && harness_now_ms() < until);
    ck_assert_uint_eq(st.malformed, 40);
    /* 40 malformed messages within a second: one warning, not forty */
    int lines = __atomic_load_n(&malformed_lines, __ATOMIC_RELAXED);
    ck_assert_int_ge(lines, 1);
    ck_assert_int_le(lines, 2);
    ck_assert_uint_ge(st.received, 51);

    /* typed request/reply */
    ProtobufCMessage *out = NULL;
    int rc = bus_request_proto(a, "sluice.t.router.route", &rr.base,
                               &sluice__v1__route_response__descriptor, 2000, &out);
    ck_assert_msg(rc == 0, "%s", bus_last_error());
    Sluice__V1__RouteResponse *resp = (Sluice__V1__RouteResponse *)out;
    ck_assert_uint_eq(resp->worker_id, 0xabcdef);
    ck_assert_uint_eq(resp->overlap_blocks, 16);
    ck_assert_str_eq(resp->request_id, "req-1");
    protobuf_c_message_free_unpacked(out, NULL);

    /* a reply that does not unpack is SL_EPROTO */
    bus_sub_t *junk = NULL;
    ck_assert_int_eq(bus_subscribe(b, "svc.junk", NULL, echo_cb, NULL, &junk), 0);
    ck_assert_int_eq(bus_flush(b, 2000), 0);
    out = NULL;
    ck_assert_int_eq(bus_request_proto(a, "svc.junk", &rr.base,
                                       &sluice__v1__generate_chunk__descriptor, 2000, &out),
                     0); /* any bytes of a valid message may unpack as another type */
    protobuf_c_message_free_unpacked(out, NULL);
    out = NULL;
    bus_msg_t *rep = NULL;
    ck_assert_int_eq(bus_request(a, "svc.junk", garbage[0], strlen(garbage[0]), 2000, &rep), 0);
    ck_assert_int_eq(bus_msg_unpack(rep, &sluice__v1__route_response__descriptor, &out), SL_EPROTO);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(bus_last_error(), "does not unpack as"));
    bus_msg_free(rep);
    bus_sub_free(junk);

    ck_assert_int_eq(bus_subscribe_proto(b, "x", NULL, NULL, route_cb, &rs, &junk), SL_EINVAL);
    ck_assert_int_eq(bus_publish_proto(a, "x", NULL), SL_EINVAL);
    bus_sub_free(sub);
    bus_free(a);
    bus_free(b);
    harness_nats_destroy(&srv);
}
END_TEST

static void chunk_responder(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *pm,
                            void *ud) {
    (void)ud;
    const Sluice__V1__GenerateRequest *req = (const Sluice__V1__GenerateRequest *)pm;
    bus_stream_writer_t *w = NULL;
    if (bus_stream_writer_create(bus, msg, &w) != 0) return;
    uint32_t tok;
    for (uint32_t i = 0; i < req->stop->max_tokens; i++) {
        Sluice__V1__GenerateChunk c = SLUICE__V1__GENERATE_CHUNK__INIT;
        c.version = 1;
        c.request_id = req->request_id;
        c.seq = i;
        tok = 1000 + i;
        c.n_token_ids = 1;
        c.token_ids = &tok;
        c.text = "tok";
        bool last = i + 1 == req->stop->max_tokens;
        if (last) c.finish_reason = SLUICE__V1__FINISH_REASON__FINISH_REASON_LENGTH;
        if ((last ? bus_stream_writer_end_proto(w, &c.base)
                  : bus_stream_writer_send_proto(w, &c.base)) != 0)
            break;
    }
    bus_stream_writer_free(w);
}

START_TEST(test_stream_proto) {
    start_server(0);
    bus_t *r = connect_named("worker"), *q = connect_named("frontend");
    char subj[BUS_SUBJECT_MAX];
    ck_assert_int_eq(bus_subject_instance(subj, sizeof subj, "t", "backend", "generate", 7), 0);
    bus_sub_t *sub = NULL;
    ck_assert_int_eq(bus_subscribe_proto(r, subj, NULL, &sluice__v1__generate_request__descriptor,
                                         chunk_responder, NULL, &sub),
                     0);
    ck_assert_int_eq(bus_flush(r, 2000), 0);
    Sluice__V1__GenerateRequest gr = SLUICE__V1__GENERATE_REQUEST__INIT;
    Sluice__V1__StopConditions sc = SLUICE__V1__STOP_CONDITIONS__INIT;
    sc.max_tokens = 200;
    gr.version = 1;
    gr.request_id = "g1";
    gr.stop = &sc;
    bus_stream_t *s = NULL;
    ck_assert_int_eq(bus_stream_open_proto(q, subj, &gr.base, NULL, &s), 0);
    for (uint32_t i = 0; i < 200; i++) {
        ProtobufCMessage *pm = NULL;
        bool last = false;
        int rc = bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor, &pm, &last);
        ck_assert_msg(rc == 0, "%s", bus_stream_error(s));
        Sluice__V1__GenerateChunk *c = (Sluice__V1__GenerateChunk *)pm;
        ck_assert_uint_eq(c->seq, i);
        ck_assert_uint_eq(c->token_ids[0], 1000 + i);
        ck_assert(last == (i == 199));
        ck_assert(last == (c->finish_reason != SLUICE__V1__FINISH_REASON__FINISH_REASON_NONE));
        protobuf_c_message_free_unpacked(pm, NULL);
    }
    ProtobufCMessage *pm = NULL;
    ck_assert_int_eq(bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor, &pm, NULL),
                     SL_EEND);
    bus_stream_free(s);

    /* a chunk that does not unpack ends the stream with SL_EPROTO */
    natsConnection *nc = raw_connect();
    bus_sub_t *sink = NULL;
    ck_assert_int_eq(bus_subscribe(q, "raw", NULL, silent_cb, NULL, &sink), 0);
    ck_assert_int_eq(bus_flush(q, 2000), 0);
    ck_assert_int_eq(bus_stream_open(q, "raw", "x", 1, NULL, &s), 0);
    natsMsg *m = NULL;
    ck_assert_int_eq(natsMsg_Create(&m, bus_stream_inbox(s), NULL, "\xff\xff", 2), NATS_OK);
    natsMsgHeader_Set(m, BUS_HDR_SEQ, "0");
    ck_assert_int_eq(natsConnection_PublishMsg(nc, m), NATS_OK);
    natsMsg_Destroy(m);
    ck_assert_int_eq(bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor, &pm, NULL),
                     SL_EPROTO);
    ck_assert_ptr_nonnull(strstr(bus_stream_error(s), "does not unpack as"));
    bus_stream_free(s);
    natsConnection_Destroy(nc);
    bus_sub_free(sink);
    bus_sub_free(sub);
    bus_free(r);
    bus_free(q);
    harness_nats_destroy(&srv);
}
END_TEST

int main(void) {
    sl_log_init("test_bus");
    sl_log_set_level(SL_LOG_ERROR);
    Suite *su = suite_create("bus");
    TCase *tc = tcase_create("bus");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_subjects);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_connect_unavailable_then_retry);
    tcase_add_test(tc, test_pubsub);
    tcase_add_test(tc, test_queue_group_spreads_load);
    tcase_add_test(tc, test_burst_not_dropped);
    tcase_add_test(tc, test_request_reply);
    tcase_add_test(tc, test_stream_10k_in_order);
    tcase_add_test(tc, test_stream_idle_timeout_and_errors);
    tcase_add_test(tc, test_stream_reorder_gap_duplicate);
    tcase_add_test(tc, test_stream_cancel);
    tcase_add_test(tc, test_server_restart_mid_stream);
    tcase_add_test(tc, test_too_big);
    tcase_add_test(tc, test_proto_malformed_dropped);
    tcase_add_test(tc, test_stream_proto);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
