/* test_prefill_route.c - KV-aware choice of the prefill worker (issue #6,
 * item 4), end to end: two sluice-prefill-workers, one sluice-decode-worker
 * --disagg always, sluice-router and sluice-frontend on real nats-server and
 * etcd, a tiny genmodel Llama.
 *
 * Checked: the router names a prefill worker (RouteResponse.prefill_worker_id)
 * and never one as the decode worker, in every mode; after a prompt is
 * prefilled on one prefill worker, prompts sharing its prefix go to the same
 * one (its jobs count, the other's stays 0) and hit its cache (cached tokens),
 * with greedy tokens identical to a --disagg off worker; the hint goes
 * through the frontend; a restarted router converges on the prefill worker's
 * blocks by kv_resync; a hint naming an unknown or kill -9'd prefill worker
 * falls back to the queue group and the request completes with the same
 * tokens; no router: the frontend's requests still prefill remotely (queue
 * group, no hint); a malformed kv_resync request is counted and ignored.
 */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/bus.h"
#include "common/runtime/discovery.h"
#include "proto/sluice.pb-c.h"
#include "tests/harness/fleet.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXTOK 8
#define NS     "proute"
#define NS_OFF "proute-off"

static harness_etcd_t g_etcd;
static harness_nats_t g_nats;
static char g_dir[256], g_model[512];
static bool g_ok;
static char *const ENV_SHM[] = {"UCX_TLS=sm,self", NULL};

typedef fleet_proc_t proc_t;

static void start(proc_t *p, const char *bin, const char *component, const char *ns,
                  const char *extra, const char *logname) {
    char log[512];
    snprintf(log, sizeof log, "%s/%s.log", g_dir, logname);
    fleet_env_t env = {.ns = ns, .etcd = g_etcd.url, .nats = g_nats.url};
    fleet_worker_opts_t o = {.bin = bin,
                             .model = g_model,
                             .lease_ttl_s = 2,
                             .kv_blocks = 128,
                             .log = log,
                             .extra = extra,
                             .env = ENV_SHM};
    int rc = fleet_proc_start(p, &env, o, component, 20000);
    ck_assert_msg(rc == 0, "%s %s did not start or register", component, logname);
}

static pid_t router_spawn(int port) {
    char log[512];
    snprintf(log, sizeof log, "%s/router-%lld.log", g_dir, harness_now_ms());
    fleet_env_t env = {.ns = NS, .etcd = g_etcd.url, .nats = g_nats.url};
    fleet_router_opts_t o = {.system_port = port, .log = log};
    return fleet_router_spawn(&env, &o);
}

static double metric(const proc_t *p, const char *name) {
    return fleet_metric(p->base, name);
}

/* ---- routing and generation over the bus -------------------------------------------------- */

typedef struct route {
    int rc, err;
    uint64_t worker, prefill;
    uint32_t prefill_overlap;
} route_t;

static route_t route(bus_t *b, const char *id, const uint32_t *tok, size_t n, const char *mode) {
    route_t r = {0};
    char subj[BUS_SUBJECT_MAX];
    ck_assert_int_eq(bus_subject_endpoint(subj, sizeof subj, NS, "router", "route"), 0);
    Sluice__V1__RouteRequest q = SLUICE__V1__ROUTE_REQUEST__INIT;
    q.version = 1;
    q.request_id = (char *)id;
    q.token_ids = (uint32_t *)tok;
    q.n_token_ids = n;
    q.mode = (char *)(mode ? mode : "");
    ProtobufCMessage *pm = NULL;
    r.rc = bus_request_proto(b, subj, &q.base, &sluice__v1__route_response__descriptor, 2000, &pm);
    if (r.rc) return r;
    Sluice__V1__RouteResponse *resp = (Sluice__V1__RouteResponse *)pm;
    r.err = resp->error ? resp->error->code : 0;
    r.worker = resp->worker_id;
    r.prefill = resp->prefill_worker_id;
    r.prefill_overlap = resp->prefill_overlap_blocks;
    protobuf_c_message_free_unpacked(pm, NULL);
    return r;
}

typedef struct result {
    uint32_t ids[MAXTOK];
    uint32_t n;
    int rc, err;
    bool remote;
} result_t;

static result_t gen(bus_t *b, const char *subject, const char *id, const uint32_t *prompt, size_t n,
                    uint64_t hint) {
    result_t r = {0};
    Sluice__V1__GenerateRequest m = SLUICE__V1__GENERATE_REQUEST__INIT;
    Sluice__V1__StopConditions sc = SLUICE__V1__STOP_CONDITIONS__INIT;
    m.version = 1;
    m.request_id = (char *)id;
    m.token_ids = (uint32_t *)prompt;
    m.n_token_ids = n;
    sc.max_tokens = MAXTOK;
    sc.ignore_eos = true;
    m.stop = &sc;
    m.prefill_worker_id = hint;
    bus_stream_opts_t so = {.idle_timeout_ms = 30000};
    bus_stream_t *s = NULL;
    r.rc = bus_stream_open_proto(b, subject, &m.base, &so, &s);
    while (r.rc == 0) {
        Sluice__V1__GenerateChunk *c = NULL;
        bool last = false;
        r.rc = bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor,
                                     (ProtobufCMessage **)&c, &last);
        if (r.rc) break;
        for (size_t i = 0; i < c->n_token_ids && r.n < MAXTOK; i++) r.ids[r.n++] = c->token_ids[i];
        if (last) {
            r.remote = c->remote_prefill;
            if (c->error) r.err = c->error->code;
        }
        sluice__v1__generate_chunk__free_unpacked(c, NULL);
        if (last) break;
    }
    bus_stream_free(s);
    return r;
}

static void assert_same(const result_t *a, const result_t *b, const char *what) {
    ck_assert_msg(a->rc == 0 && a->err == 0 && b->rc == 0 && b->err == 0, "%s: rc %d/%d err %d/%d",
                  what, a->rc, b->rc, a->err, b->err);
    ck_assert_msg(a->n == MAXTOK && b->n == MAXTOK, "%s: %u / %u tokens", what, a->n, b->n);
    ck_assert_msg(memcmp(a->ids, b->ids, sizeof a->ids) == 0, "%s: tokens differ", what);
}

/* n tokens: the first shared from the common stream, the rest by seed. */
static void make_prompt(uint32_t *p, size_t n, uint32_t seed, size_t shared) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1, y = 0x1234567ull;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        y ^= y << 13;
        y ^= y >> 7;
        y ^= y << 17;
        p[i] = (uint32_t)((i < shared ? y : x) % 480);
    }
}

/* {"model":"tiny","prompt":[ids],...} into buf. */
static void ids_body(char *buf, size_t cap, const uint32_t *p, size_t n) {
    size_t off = (size_t)snprintf(buf, cap, "{\"model\":\"tiny\",\"prompt\":[");
    for (size_t i = 0; i < n && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%u", i ? "," : "", p[i]);
    if (off < cap)
        snprintf(buf + off, cap - off, "],\"max_tokens\":%d,\"ignore_eos\":true}", MAXTOK);
}

/* ---- the test ----------------------------------------------------------------------------- */

START_TEST(test_prefill_route) {
    ck_assert_msg(g_ok, "fixture failed");
    proc_t pf[2] = {0}, dec = {0}, off = {0};
    start(&pf[0], "sluice-prefill-worker", "prefill", NS, "--max-batch-tokens 64", "pf0");
    start(&pf[1], "sluice-prefill-worker", "prefill", NS, "--max-batch-tokens 64", "pf1");
    start(&dec, "sluice-decode-worker", "backend", NS, "--disagg always", "dec");
    start(&off, "sluice-decode-worker", "backend", NS_OFF, "--disagg off", "off");
    int rport = harness_free_port();
    pid_t router = router_spawn(rport);
    ck_assert_int_gt(router, 0);
    ck_assert_double_eq(fleet_wait_metric(dec.base, "sluice_worker_prefill_workers", '=', 2, 10000),
                        2);
    bus_t *b = NULL;
    bus_opts_t bo = {.url = g_nats.url, .name = "test-prefill-route"};
    ck_assert_int_eq(bus_connect(&b, &bo), 0);

    uint32_t p1[96], p2[96], p3[96], p4[96];
    make_prompt(p1, 96, 1, 96);
    make_prompt(p2, 96, 2, 80); /* 5 blocks shared with p1 */
    make_prompt(p3, 96, 3, 80);
    make_prompt(p4, 96, 4, 80);

    /* The router knows both prefill workers and never names one as the
     * decode worker, whatever the mode. */
    route_t r = {0};
    long long end = harness_now_ms() + 10000;
    while (harness_now_ms() < end) {
        r = route(b, "warm", p1, 96, NULL);
        if (r.rc == 0 && r.err == 0 && r.prefill) break;
        harness_sleep_ms(50);
    }
    ck_assert_msg(r.rc == 0 && r.err == 0 && r.prefill, "no prefill worker named: rc %d err %d",
                  r.rc, r.err);
    static const char *modes[] = {"kv", "round-robin", "random", "least-loaded"};
    bool seen[2] = {false, false};
    for (int i = 0; i < 16; i++) {
        char id[32];
        snprintf(id, sizeof id, "mode-%d", i);
        route_t q = route(b, id, p1, 96, modes[i % 4]);
        ck_assert_int_eq(q.rc, 0);
        ck_assert_int_eq(q.err, 0);
        ck_assert_uint_eq(q.worker, (uint64_t)dec.id);
        ck_assert_msg(q.prefill == (uint64_t)pf[0].id || q.prefill == (uint64_t)pf[1].id,
                      "mode %s: prefill worker %016" PRIx64 " unknown", modes[i % 4], q.prefill);
        seen[q.prefill == (uint64_t)pf[1].id] = true;
    }
    ck_assert_msg(seen[0] && seen[1], "round-robin never named both prefill workers");

    /* First prompt: prefilled remotely on the named worker X. */
    r = route(b, "p1", p1, 96, NULL);
    ck_assert_uint_eq(r.worker, (uint64_t)dec.id);
    ck_assert_uint_eq(r.prefill_overlap, 0);
    int x = r.prefill == (uint64_t)pf[1].id, y = !x;
    result_t a = gen(b, dec.subject, "p1", p1, 96, r.prefill);
    result_t o = gen(b, off.subject, "p1", p1, 96, 0);
    assert_same(&a, &o, "p1");
    ck_assert(a.remote);
    ck_assert_double_eq(metric(&pf[x], "sluice_prefill_jobs_total"), 1);
    ck_assert_double_eq(metric(&pf[y], "sluice_prefill_jobs_total"), 0);
    ck_assert_double_eq(metric(&dec, "sluice_worker_prefill_jobs_hinted_total"), 1);

    /* Prompts sharing its prefix: the router sees X's blocks and names X,
     * whose cache they hit. */
    end = harness_now_ms() + 5000;
    while (harness_now_ms() < end) {
        r = route(b, "p2-probe", p2, 96, NULL);
        if (r.prefill_overlap >= 5) break;
        harness_sleep_ms(30);
    }
    ck_assert_uint_ge(r.prefill_overlap, 5);
    ck_assert_uint_eq(r.prefill, (uint64_t)pf[x].id);
    double cached0 = metric(&pf[x], "sluice_prefill_cached_tokens_total");
    a = gen(b, dec.subject, "p2", p2, 96, r.prefill);
    o = gen(b, off.subject, "p2", p2, 96, 0);
    assert_same(&a, &o, "p2");
    ck_assert_double_eq(metric(&pf[x], "sluice_prefill_jobs_total"), 2);
    ck_assert_double_eq(metric(&pf[y], "sluice_prefill_jobs_total"), 0);
    ck_assert_double_ge(metric(&pf[x], "sluice_prefill_cached_tokens_total") - cached0, 80);

    /* Through the frontend: it passes the router's hint on. */
    int fport = harness_free_port();
    char fbase[64], flog[512], body[4096];
    snprintf(fbase, sizeof fbase, "http://127.0.0.1:%d", fport);
    snprintf(flog, sizeof flog, "%s/frontend.log", g_dir);
    fleet_env_t env = {.ns = NS, .etcd = g_etcd.url, .nats = g_nats.url};
    fleet_frontend_opts_t fo = {.model = g_model, .port = fport, .router_mode = "kv", .log = flog};
    pid_t fe = fleet_frontend_spawn(&env, &fo);
    ck_assert_int_gt(fe, 0);
    ck_assert(fleet_wait_healthy(fbase, NULL, 20000));
    ids_body(body, sizeof body, p3, 96);
    char *resp = NULL;
    end = harness_now_ms() + 10000;
    long st = 0;
    while (harness_now_ms() < end) { /* until the frontend has discovered the worker */
        free(resp);
        resp = NULL;
        st = fleet_http(fbase, "/v1/completions", body, 30000, &resp);
        if (st == 200) break;
        harness_sleep_ms(100);
    }
    ck_assert_msg(st == 200, "frontend: %ld %s", st, resp);
    free(resp);
    ck_assert_double_eq(metric(&pf[x], "sluice_prefill_jobs_total"), 3);
    ck_assert_double_eq(metric(&pf[y], "sluice_prefill_jobs_total"), 0);
    ck_assert_double_eq(metric(&dec, "sluice_worker_prefill_jobs_hinted_total"), 3);

    /* A restarted router learns X's blocks by kv_resync (no new events). */
    harness_kill(router, SIGKILL, 5000);
    router = router_spawn(rport);
    ck_assert_int_gt(router, 0);
    r = (route_t){0};
    end = harness_now_ms() + 10000;
    while (harness_now_ms() < end) {
        r = route(b, "resync-probe", p1, 96, NULL);
        if (r.rc == 0 && r.err == 0 && r.prefill_overlap >= 6) break;
        harness_sleep_ms(50);
    }
    ck_assert_msg(r.prefill_overlap >= 6, "router did not resync the prefill worker: overlap %u",
                  r.prefill_overlap);
    ck_assert_uint_eq(r.prefill, (uint64_t)pf[x].id);

    /* Bad input: a malformed kv_resync request is counted, not answered. */
    char subj[BUS_SUBJECT_MAX];
    ck_assert_int_eq(
        bus_subject_instance(subj, sizeof subj, NS, "prefill", "kv_resync", (uint64_t)pf[y].id), 0);
    double mal0 = metric(&pf[y], "sluice_prefill_malformed_total");
    bus_msg_t *reply = NULL;
    ck_assert_int_eq(bus_request(b, subj, "\xff\xff\xff", 3, 300, &reply), SL_ETIMEDOUT);
    ck_assert_double_eq(
        fleet_wait_metric(pf[y].base, "sluice_prefill_malformed_total", '=', mal0 + 1, 3000),
        mal0 + 1);

    /* A hint naming no prefill worker: the queue group takes the job. */
    double fb0 = metric(&dec, "sluice_worker_prefill_hint_fallbacks_total");
    double hinted0 = metric(&dec, "sluice_worker_prefill_jobs_hinted_total");
    a = gen(b, dec.subject, "p4-unknown", p4, 96, 0x1234);
    o = gen(b, off.subject, "p4", p4, 96, 0);
    assert_same(&a, &o, "unknown hint");
    ck_assert(a.remote);
    ck_assert_double_eq(metric(&dec, "sluice_worker_prefill_hint_fallbacks_total"), fb0 + 1);

    /* X killed -9: a hint naming it falls back to the queue group (Y). */
    double yjobs = metric(&pf[y], "sluice_prefill_jobs_total");
    harness_kill(pf[x].pid, SIGKILL, 5000);
    pf[x].pid = 0;
    a = gen(b, dec.subject, "p2-dead", p2, 96, (uint64_t)pf[x].id);
    o = gen(b, off.subject, "p2-dead", p2, 96, 0);
    assert_same(&a, &o, "dead hint");
    ck_assert(a.remote);
    ck_assert_double_eq(metric(&dec, "sluice_worker_prefill_hint_fallbacks_total"), fb0 + 2);
    ck_assert_double_eq(metric(&pf[y], "sluice_prefill_jobs_total"), yjobs + 1);
    /* neither fallback counts as hinted: the receipt decides, not the send */
    ck_assert_double_eq(metric(&dec, "sluice_worker_prefill_jobs_hinted_total"), hinted0);

    /* No router: the frontend falls back to its pool, no hint, queue group. */
    harness_kill(router, SIGKILL, 5000);
    double hinted = metric(&dec, "sluice_worker_prefill_jobs_hinted_total");
    ids_body(body, sizeof body, p3, 90);
    resp = NULL;
    st = fleet_http(fbase, "/v1/completions", body, 30000, &resp);
    ck_assert_msg(st == 200, "frontend without router: %ld %s", st, resp);
    free(resp);
    ck_assert_double_eq(metric(&dec, "sluice_worker_prefill_jobs_hinted_total"), hinted);
    ck_assert_double_eq(metric(&pf[y], "sluice_prefill_jobs_total"), yjobs + 2);

    bus_free(b);
    harness_kill(fe, SIGTERM, 5000);
    harness_kill(dec.pid, SIGTERM, 5000);
    harness_kill(off.pid, SIGTERM, 5000);
    harness_kill(pf[y].pid, SIGTERM, 5000);
}
END_TEST

int main(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    sl_log_init("test");
    sl_log_set_level(SL_LOG_ERROR);
    g_ok = fleet_fixture_start("sl-pr", g_dir, sizeof g_dir, g_model, sizeof g_model, &g_etcd,
                               &g_nats) == 0;
    Suite *s = suite_create("prefill_route");
    TCase *tc = tcase_create("prefill_route");
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_prefill_route);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    fleet_fixture_stop(g_dir, &g_etcd, &g_nats);
    return nf == 0 ? 0 : 1;
}
