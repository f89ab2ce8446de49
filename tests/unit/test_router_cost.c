/* test_router_cost.c - routing cost, modes, tie-breaks, temperature, the
 * predicted-load bookkeeping, and two whole-router simulations (index + load +
 * cost): a long shared system prompt must spread over every worker, and a
 * warm worker must win the traffic that extends its prefix. */
#include "services/router/active_seqs.h"
#include "services/router/kv_index.h"
#include "services/router/router_cost.h"
#include "common/base/block_hash.h"
#include "common/base/err.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const router_cost_params_t P1 = {.prefill_scale = 1.0, .temperature = 0};

START_TEST(test_cost_formula) {
    router_candidate_t c = {.worker_id = 1, .device = 4, .host = 4, .disk = 4, .load = 10};
    /* prefill = 20 - (4 + 3 + 1) = 12; cost = 2*12 + 10 + 20 */
    router_cost_params_t p = {.prefill_scale = 2.0};
    ck_assert(fabs(router_cost_of(&p, 20, &c, 1.0) - 54.0) < 1e-9);
    /* credit halves what the cache saves: prefill = 20 - 4 = 16 */
    ck_assert(fabs(router_cost_of(&p, 20, &c, 0.5) - 62.0) < 1e-9);
    /* prefill never below 0 */
    c.device = 30;
    ck_assert(fabs(router_cost_of(&p, 20, &c, 1.0) - 30.0) < 1e-9);
}
END_TEST

START_TEST(test_select_argmin_and_ties) {
    router_candidate_t c[3] = {
        {.worker_id = 10, .device = 8, .load = 5},
        {.worker_id = 11, .device = 0, .load = 0},
        {.worker_id = 12, .device = 8, .load = 5},
    };
    size_t pick = 99;
    /* n = 10: costs 2+5+10=17, 10+0+10=20, 17 -> tie of 10 and 12 (same load):
     * seeded choice, stable per seed, both seen over seeds. */
    bool seen[3] = {0};
    for (uint64_t seed = 0; seed < 64; seed++) {
        ck_assert_int_eq(router_cost_select(&P1, ROUTER_MODE_KV, 10, 1.0, c, 3, seed, NULL, &pick),
                         0);
        ck_assert(pick == 0 || pick == 2);
        size_t again;
        router_cost_select(&P1, ROUTER_MODE_KV, 10, 1.0, c, 3, seed, NULL, &again);
        ck_assert_uint_eq(pick, again);
        seen[pick] = true;
    }
    ck_assert(seen[0] && seen[2]);
    ck_assert(fabs(c[1].cost - 20.0) < 1e-9);
    /* Equal cost, different load: the less loaded wins. 0: 2+5+10 = 17;
     * 2: device 3 -> 7 + 0 + 10 = 17. */
    c[2].device = 3;
    c[2].load = 0;
    for (uint64_t seed = 0; seed < 16; seed++) {
        ck_assert_int_eq(router_cost_select(&P1, ROUTER_MODE_KV, 10, 1.0, c, 3, seed, NULL, &pick),
                         0);
        ck_assert_uint_eq(pick, 2);
    }
}
END_TEST

START_TEST(test_modes) {
    router_candidate_t c[3] = {
        {.worker_id = 30, .device = 9, .load = 50},
        {.worker_id = 10, .load = 7},
        {.worker_id = 20, .load = 3},
    };
    size_t pick;
    uint64_t rr = 0;
    /* round-robin goes by worker id: 10, 20, 30, 10 */
    size_t want[4] = {1, 2, 0, 1};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(
            router_cost_select(&P1, ROUTER_MODE_ROUND_ROBIN, 10, 1, c, 3, 0, &rr, &pick), 0);
        ck_assert_uint_eq(pick, want[i]);
    }
    ck_assert_int_eq(router_cost_select(&P1, ROUTER_MODE_ROUND_ROBIN, 10, 1, c, 3, 0, NULL, &pick),
                     SL_EINVAL);
    ck_assert_int_eq(router_cost_select(&P1, ROUTER_MODE_LEAST_LOADED, 10, 1, c, 3, 0, NULL, &pick),
                     0);
    ck_assert_uint_eq(pick, 2);
    int hist[3] = {0};
    for (uint64_t s = 0; s < 300; s++) {
        ck_assert_int_eq(router_cost_select(&P1, ROUTER_MODE_RANDOM, 10, 1, c, 3, s, NULL, &pick),
                         0);
        hist[pick]++;
    }
    for (int i = 0; i < 3; i++) ck_assert_int_gt(hist[i], 60);
    /* kv: worker 30 saves 9 of 10 blocks but carries 50: 1+50 vs 10+3. */
    ck_assert_int_eq(router_cost_select(&P1, ROUTER_MODE_KV, 10, 1, c, 3, 0, NULL, &pick), 0);
    ck_assert_uint_eq(pick, 2);
    router_mode_t m;
    ck_assert_int_eq(router_mode_parse("least-loaded", &m), 0);
    ck_assert_int_eq(m, ROUTER_MODE_LEAST_LOADED);
    ck_assert_int_eq(router_mode_parse("APPROX", &m), 0);
    ck_assert_int_eq(m, ROUTER_MODE_APPROX);
    ck_assert_int_eq(router_mode_parse("fastest", &m), SL_EINVAL);
    ck_assert_int_eq(router_mode_parse(NULL, &m), SL_EINVAL);
}
END_TEST

START_TEST(test_bad_params) {
    router_candidate_t c = {.worker_id = 1};
    size_t pick;
    router_cost_params_t p = P1;
    ck_assert_int_eq(router_cost_select(&p, ROUTER_MODE_KV, 1, 1, &c, 0, 0, NULL, &pick),
                     SL_EINVAL);
    ck_assert_int_eq(router_cost_select(&p, ROUTER_MODE_KV, 1, 1, NULL, 1, 0, NULL, &pick),
                     SL_EINVAL);
    ck_assert_int_eq(router_cost_select(&p, ROUTER_MODE_KV, 1, 1.5, &c, 1, 0, NULL, &pick),
                     SL_EINVAL);
    ck_assert_int_eq(router_cost_select(&p, ROUTER_MODE_KV, 1, NAN, &c, 1, 0, NULL, &pick),
                     SL_EINVAL);
    ck_assert_int_eq(router_cost_select(&p, (router_mode_t)42, 1, 1, &c, 1, 0, NULL, &pick),
                     SL_EINVAL);
    p.prefill_scale = 0;
    ck_assert_int_eq(router_cost_select(&p, ROUTER_MODE_KV, 1, 1, &c, 1, 0, NULL, &pick),
                     SL_EINVAL);
    p.prefill_scale = 1;
    p.temperature = -1;
    ck_assert_int_eq(router_cost_select(&p, ROUTER_MODE_KV, 1, 1, &c, 1, 0, NULL, &pick),
                     SL_EINVAL);
    p.temperature = INFINITY;
    ck_assert_int_eq(router_cost_select(&p, ROUTER_MODE_KV, 1, 1, &c, 1, 0, NULL, &pick),
                     SL_EINVAL);
    prefix_heat_t *h;
    ck_assert_int_eq(prefix_heat_new(&h, 16, 0), SL_EINVAL);
    ck_assert_int_eq(prefix_heat_new(NULL, 16, 10), SL_EINVAL);
    active_seqs_t *a;
    active_seqs_opts_t o = {.ttl_ms = -1};
    ck_assert_int_eq(active_seqs_new(&a, &o), SL_EINVAL);
}
END_TEST

START_TEST(test_temperature) {
    router_candidate_t c[2] = {{.worker_id = 1, .load = 0}, {.worker_id = 2, .load = 10}};
    router_cost_params_t p = {.prefill_scale = 1, .temperature = 1.0};
    int hist[2] = {0};
    size_t pick;
    for (uint64_t s = 0; s < 2000; s++) {
        ck_assert_int_eq(router_cost_select(&p, ROUTER_MODE_KV, 4, 1, c, 2, s, NULL, &pick), 0);
        hist[pick]++;
    }
    /* softmax(-cost/((max-min) T)) with T = 1: p(1) = 1/(1+e^-1) = 0.731 */
    ck_assert_int_gt(hist[0], 1350);
    ck_assert_int_lt(hist[0], 1580);
    p.temperature = 0.01; /* nearly argmin */
    hist[0] = hist[1] = 0;
    for (uint64_t s = 0; s < 500; s++) {
        router_cost_select(&p, ROUTER_MODE_KV, 4, 1, c, 2, s, NULL, &pick);
        hist[pick]++;
    }
    ck_assert_int_eq(hist[0], 500);
}
END_TEST

START_TEST(test_heat) {
    prefix_heat_t *h;
    ck_assert_int_eq(prefix_heat_new(&h, 64, 1000), 0);
    ck_assert(prefix_heat_touch(h, 42, 0) == 0);
    ck_assert(fabs(prefix_heat_touch(h, 42, 0) - 1) < 1e-9);
    ck_assert(fabs(prefix_heat_touch(h, 42, 1000) - 1.0) < 1e-9); /* 2 halved */
    ck_assert(prefix_heat_touch(h, 43, 1000) == 0);
    ck_assert(fabs(prefix_heat_peek(h, 42, 2000) - 1.0) < 1e-9); /* 2 at 1000, halved */
    ck_assert(fabs(prefix_heat_peek(h, 42, 2000) - 1.0) < 1e-9); /* peeking counts nothing */
    ck_assert(prefix_heat_peek(h, 44, 2000) == 0);
    ck_assert(fabs(prefix_heat_credit(0, 8) - 1) < 1e-12);
    ck_assert(fabs(prefix_heat_credit(8, 8) - 0.5) < 1e-12);
    ck_assert(fabs(prefix_heat_credit(5, 0) - 1) < 1e-12);
    prefix_heat_free(h);
    prefix_heat_free(NULL);
}
END_TEST

START_TEST(test_active_seqs) {
    active_seqs_t *a;
    active_seqs_opts_t o = {.ttl_ms = 10000, .settle_ms = 100, .stale_ms = 1000};
    ck_assert_int_eq(active_seqs_new(&a, &o), 0);
    ck_assert_int_eq(active_seqs_add(a, "r1", 7, 10, 4, 0), 0);
    ck_assert_int_eq(active_seqs_add(a, "r1", 7, 10, 4, 0), SL_EEXIST);
    ck_assert_int_eq(active_seqs_add(a, "r2", 7, 20, 0, 0), 0);
    ck_assert_int_eq(active_seqs_add(a, "r3", 8, 5, 0, 0), 0);
    ck_assert_int_eq(active_seqs_add(a, "", 8, 5, 0, 0), SL_EINVAL);
    char longid[ACTIVE_SEQS_ID_MAX + 2];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = 0;
    ck_assert_int_eq(active_seqs_add(a, longid, 8, 5, 0, 0), SL_EINVAL);
    ck_assert(active_seqs_load(a, 7, 0) == 30);
    ck_assert_uint_eq(active_seqs_pending_prefill(a, 7), 26);
    ck_assert_int_eq(active_seqs_prefill_done(a, "r1"), 0);
    ck_assert_uint_eq(active_seqs_pending_prefill(a, 7), 20);
    ck_assert_int_eq(active_seqs_finish(a, "r2", 0), 0);
    ck_assert_int_eq(active_seqs_finish(a, "r2", 0), SL_ENOTFOUND);
    ck_assert_int_eq(active_seqs_prefill_done(a, "nope"), SL_ENOTFOUND);
    ck_assert(active_seqs_load(a, 7, 0) == 10);
    ck_assert_uint_eq(active_seqs_pending_prefill(a, 7), 0);
    /* A FREE that overtakes its ADD: the late ADD is ignored (within a
     * minute), and only once. */
    ck_assert_int_eq(active_seqs_finish(a, "early", 100), SL_ENOTFOUND);
    ck_assert_int_eq(active_seqs_add(a, "early", 7, 50, 0, 200), SL_ECANCELLED);
    ck_assert(active_seqs_load(a, 7, 200) == 10);
    ck_assert_int_eq(active_seqs_add(a, "early", 7, 50, 0, 300), 0);
    ck_assert_int_eq(active_seqs_finish(a, "early", 300), 0);
    ck_assert_int_eq(active_seqs_finish(a, "late", 0), SL_ENOTFOUND);
    ck_assert_int_eq(active_seqs_add(a, "late", 7, 50, 0, 70000), 0);
    ck_assert_int_eq(active_seqs_finish(a, "late", 70000), 0);
    /* A report of 3 sequences where we track 1 settled: +2 x mean (10). */
    active_seqs_report(a, 7, 3, 500);
    ck_assert(fabs(active_seqs_load(a, 7, 500) - 30) < 1e-9);
    /* A young addition is on top of the report. */
    ck_assert_int_eq(active_seqs_add(a, "r4", 7, 10, 0, 450), 0);
    active_seqs_report(a, 7, 3, 500); /* settled r1 only: +2 x mean 10 */
    ck_assert(fabs(active_seqs_load(a, 7, 500) - 40) < 1e-9);
    /* A lost FREE: the worker runs nothing; both settle. */
    active_seqs_report(a, 7, 0, 700);
    ck_assert(fabs(active_seqs_load(a, 7, 700) - 0) < 1e-9);
    /* The report goes stale: back to the tracked sum. */
    ck_assert(fabs(active_seqs_load(a, 7, 1800) - 20) < 1e-9);
    /* Foreign load on a worker we never routed to, while the only other
     * sequence we track is empty: still at least a block per sequence. */
    ck_assert_int_eq(active_seqs_add(a, "empty", 11, 0, 0, 600), 0);
    active_seqs_report(a, 12, 4, 700);
    ck_assert(active_seqs_load(a, 12, 700) >= 4);
    ck_assert_int_eq(active_seqs_finish(a, "empty", 700), 0);
    /* Many sequences: the map and pool grow; ids stay distinct. */
    char id[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof id, "bulk-%d", i);
        ck_assert_int_eq(active_seqs_add(a, id, 9, 1, 0, 2000), 0);
    }
    for (int i = 0; i < 5000; i += 2) {
        snprintf(id, sizeof id, "bulk-%d", i);
        ck_assert_int_eq(active_seqs_finish(a, id, 0), 0);
    }
    ck_assert_uint_eq(active_seqs_count(a, 9), 2500);
    for (int i = 1; i < 5000; i += 2) {
        snprintf(id, sizeof id, "bulk-%d", i);
        ck_assert_int_eq(active_seqs_add(a, id, 9, 1, 0, 2000), SL_EEXIST);
    }
    /* TTL: r1, r3, r4 were added at 0..450; the bulk at 2000. */
    ck_assert_uint_eq(active_seqs_expire(a, 10600), 3);
    ck_assert_uint_eq(active_seqs_total(a), 2500);
    active_seqs_worker_remove(a, 9);
    ck_assert_uint_eq(active_seqs_total(a), 0);
    ck_assert(active_seqs_load(a, 9, 3000) == 0);
    active_seqs_free(a);
    active_seqs_free(NULL);
}
END_TEST

/* Queued prefill: the worker's report plus what was routed since (uncached
 * blocks only), or the settle window without a fresh report. */
START_TEST(test_active_seqs_queued) {
    active_seqs_t *a = NULL;
    ck_assert_int_eq(active_seqs_new(&a, NULL), 0);                  /* settle 300, stale 2000 */
    ck_assert(active_seqs_queued(a, 3, 0) == 0);                     /* unknown worker */
    ck_assert_int_eq(active_seqs_add(a, "q1", 3, 100, 40, 1000), 0); /* 60 to prefill */
    ck_assert(fabs(active_seqs_queued(a, 3, 1100) - 60) < 1e-9);     /* no report: settle */
    ck_assert(active_seqs_queued(a, 3, 1400) == 0);                  /* settled, no report */
    active_seqs_report_queue(a, 3, 500, 1200);                       /* the worker's queue */
    ck_assert(fabs(active_seqs_queued(a, 3, 1250) - 500) < 1e-9);    /* q1 is in the report */
    ck_assert_int_eq(active_seqs_add(a, "q2", 3, 30, 30, 1220), 0);  /* all cached: nothing */
    ck_assert_int_eq(active_seqs_add(a, "q3", 3, 50, 10, 1230), 0);
    ck_assert(fabs(active_seqs_queued(a, 3, 1250) - 540) < 1e-9);
    /* just before the report (within the margin): may not have reached it */
    ck_assert_int_eq(active_seqs_add(a, "q4", 4, 20, 0, 1180), 0);
    active_seqs_report_queue(a, 4, 0, 1200);
    ck_assert(fabs(active_seqs_queued(a, 4, 1200) - 20) < 1e-9);
    ck_assert_int_eq(active_seqs_prefill_done(a, "q4"), 0);
    ck_assert(active_seqs_queued(a, 4, 1200) == 0);
    /* a stale report is ignored */
    ck_assert(active_seqs_queued(a, 3, 5000) == 0);
    active_seqs_report_queue(NULL, 3, 1, 0); /* no-op */
    ck_assert(active_seqs_queued(NULL, 3, 0) == 0);
    active_seqs_free(a);
}
END_TEST

/* ---- whole-router simulation ------------------------------------------------- */

#define SIM_W 8
typedef struct sim {
    kv_index_t *idx;
    active_seqs_t *act;
    prefix_heat_t *heat;
    router_cost_params_t p;
    bool use_heat;
    int64_t now;
    int picks[SIM_W];
} sim_t;

static void sim_init(sim_t *s, double scale, bool use_heat) {
    memset(s, 0, sizeof *s);
    ck_assert_int_eq(kv_index_new(&s->idx, 0), 0);
    ck_assert_int_eq(active_seqs_new(&s->act, NULL), 0);
    ck_assert_int_eq(prefix_heat_new(&s->heat, 0, 10000), 0);
    s->p.prefill_scale = scale;
    s->use_heat = use_heat;
    for (uint64_t w = 0; w < SIM_W; w++) ck_assert_int_eq(kv_index_worker_add(s->idx, w, 0), 0);
}

static void sim_free(sim_t *s) {
    kv_index_free(s->idx);
    active_seqs_free(s->act);
    prefix_heat_free(s->heat);
}

/* Routes one request (what router.c does), stores its blocks on the chosen
 * worker as the worker's KV events would, returns the worker. */
static int sim_route(sim_t *s, const uint32_t *tokens, size_t n_tok, const char *rid) {
    uint64_t hs[512];
    size_t n = block_hash_seq(tokens, n_tok, 16, 0, NULL, hs, 512);
    kv_overlap_t ov[SIM_W];
    size_t n_ov;
    ck_assert_int_eq(kv_index_lookup(s->idx, hs, n, ov, SIM_W, &n_ov), 0);
    router_candidate_t c[SIM_W];
    uint32_t deepest = 0;
    for (int w = 0; w < SIM_W; w++) {
        memset(&c[w], 0, sizeof c[w]);
        c[w].worker_id = (uint64_t)w;
        c[w].load = active_seqs_load(s->act, (uint64_t)w, s->now);
        for (size_t j = 0; j < n_ov; j++)
            if (ov[j].worker_id == (uint64_t)w) {
                c[w].device = ov[j].device;
                c[w].host = ov[j].host;
                c[w].disk = ov[j].disk;
            }
        uint32_t len = c[w].device + c[w].host + c[w].disk;
        if (len > deepest) deepest = len;
    }
    double credit = 1;
    if (s->use_heat && deepest)
        credit = prefix_heat_credit(prefix_heat_touch(s->heat, hs[deepest - 1], s->now), SIM_W);
    size_t pick;
    ck_assert_int_eq(router_cost_select(&s->p, ROUTER_MODE_KV, (uint32_t)n, credit, c, SIM_W,
                                        (uint64_t)s->now * 7919, NULL, &pick),
                     0);
    ck_assert_int_eq(
        active_seqs_add(s->act, rid, (uint64_t)pick, (uint32_t)n, c[pick].device, s->now), 0);
    ck_assert_int_eq(kv_index_store(s->idx, (uint64_t)pick, 0, hs, n), 0);
    s->picks[pick]++;
    return (int)pick;
}

/* 2048-token system prompt (128 blocks) cached on worker 0 only, then 400
 * requests of prompt + 128 unique tokens at 16 in flight. */
static void shared_prompt_run(sim_t *s) {
    enum { SYS = 2048, USER = 128, REQS = 400, INFLIGHT = 16 };
    static uint32_t tok[SYS + USER];
    for (int i = 0; i < SYS; i++) tok[i] = (uint32_t)(i * 31 + 7);
    uint64_t hs[128];
    block_hash_seq(tok, SYS, 16, 0, NULL, hs, 128);
    ck_assert_int_eq(kv_index_store(s->idx, 0, 0, hs, 128), 0);
    char rid[32];
    for (int r = 0; r < REQS; r++) {
        for (int i = 0; i < USER; i++) tok[SYS + i] = (uint32_t)(100000 + r * USER + i);
        snprintf(rid, sizeof rid, "req-%d", r);
        s->now += 10;
        sim_route(s, tok, SYS + USER, rid);
        if (r >= INFLIGHT) {
            snprintf(rid, sizeof rid, "req-%d", r - INFLIGHT);
            ck_assert_int_eq(active_seqs_finish(s->act, rid, s->now), 0);
        }
    }
}

START_TEST(test_shared_system_prompt_spreads) {
    /* A router that weighs prefill 20x a block of load (users raise it to
     * chase hits): with the hot-prefix credit, every worker gets a fair part. */
    sim_t s;
    sim_init(&s, 20.0, true);
    shared_prompt_run(&s);
    for (int w = 0; w < SIM_W; w++) {
        ck_assert_msg(s.picks[w] >= 400 / SIM_W / 2 && s.picks[w] <= 400 / SIM_W * 2,
                      "worker %d got %d of 400", w, s.picks[w]);
    }
    sim_free(&s);
}
END_TEST

START_TEST(test_shared_system_prompt_hot_spot_without_credit) {
    /* The failure the credit prevents, reproduced: the plain cost at the same
     * scale sends (nearly) everything to the one warm worker. */
    sim_t s;
    sim_init(&s, 20.0, false);
    shared_prompt_run(&s);
    ck_assert_int_ge(s.picks[0], 360);
    sim_free(&s);
}
END_TEST

START_TEST(test_warm_worker_wins) {
    /* Eight conversations, each cached on its own worker; each next turn
     * (previous turn + 64 new tokens) goes back to its worker, even with
     * some load there, with the default scale and the credit on. */
    sim_t s;
    sim_init(&s, 1.0, true);
    static uint32_t conv[SIM_W][1024 + 64 * 8];
    uint64_t hs[128];
    char rid[32];
    for (int c = 0; c < SIM_W; c++) {
        for (int i = 0; i < (int)(sizeof conv[c] / sizeof conv[c][0]); i++)
            conv[c][i] = (uint32_t)(c * 1000003 + i * 13);
        size_t n = block_hash_seq(conv[c], 1024, 16, 0, NULL, hs, 128);
        ck_assert_int_eq(kv_index_store(s.idx, (uint64_t)((c + 3) % SIM_W), 0, hs, n), 0);
    }
    /* Some load on every worker, a bit more on worker 3. */
    for (int w = 0; w < SIM_W; w++) {
        snprintf(rid, sizeof rid, "bg-%d", w);
        ck_assert_int_eq(active_seqs_add(s.act, rid, (uint64_t)w, w == 3 ? 40 : 10, 0, 0), 0);
    }
    for (int turn = 1; turn <= 6; turn++) {
        for (int c = 0; c < SIM_W; c++) {
            snprintf(rid, sizeof rid, "c%d-t%d", c, turn);
            s.now += 5;
            int w = sim_route(&s, conv[c], 1024 + 64 * (size_t)turn, rid);
            ck_assert_int_eq(w, (c + 3) % SIM_W);
            ck_assert_int_eq(active_seqs_finish(s.act, rid, s.now), 0);
        }
    }
    sim_free(&s);
}
END_TEST

int main(void) {
    Suite *s = suite_create("router_cost");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_cost_formula);
    tcase_add_test(tc, test_select_argmin_and_ties);
    tcase_add_test(tc, test_modes);
    tcase_add_test(tc, test_bad_params);
    tcase_add_test(tc, test_temperature);
    tcase_add_test(tc, test_heat);
    tcase_add_test(tc, test_active_seqs);
    tcase_add_test(tc, test_active_seqs_queued);
    tcase_add_test(tc, test_shared_system_prompt_spreads);
    tcase_add_test(tc, test_shared_system_prompt_hot_spot_without_credit);
    tcase_add_test(tc, test_warm_worker_wins);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
