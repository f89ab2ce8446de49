/* test_mocker.c - the real engine over the mocker: deterministic tokens, step
 * time following the model, KV events from the real pool, parameter errors,
 * and 16 concurrent engines that sleep rather than spin. */
#include "common/engine/mocker.h"

#include "common/base/err.h"
#include "common/engine/engine.h"

#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define VOCAB  32000
#define MAXOUT 64

typedef struct collect {
    uint32_t toks[MAXOUT];
    uint32_t n;
    int done;
} collect_t;

static void on_out(const engine_output_t *o, void *ud) {
    collect_t *c = ud;
    for (uint32_t i = 0; i < o->n_tokens && c->n < MAXOUT; i++) c->toks[c->n++] = o->tokens[i];
    if (o->finish != ENGINE_FINISH_NONE) c->done = 1;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static void fast_params(mocker_params_t *p, double speedup) {
    mocker_params_default(p);
    p->speedup = speedup;
}

static void req_make(engine_request_t *r, const char *id, const uint32_t *prompt, uint32_t n,
                     uint32_t max_tokens, collect_t *c) {
    memset(r, 0, sizeof(*r));
    r->id = id;
    r->prompt = prompt;
    r->n_prompt = n;
    r->stop.max_tokens = max_tokens;
    r->stop.ignore_eos = true;
    r->on_output = on_out;
    r->ud = c;
}

static void prompt_make(uint32_t *p, uint32_t n, uint32_t seed) {
    for (uint32_t i = 0; i < n; i++) p[i] = (seed * 7919u + i * 104729u) % VOCAB;
}

/* Runs prompts (each n tokens) together in one engine; fills outs. */
static void run_batch(uint32_t n_req, const uint32_t *seeds, uint32_t n, collect_t *outs,
                      uint32_t max_batch_tokens) {
    mocker_params_t p;
    mocker_t *m = NULL;
    fast_params(&p, 1000);
    ck_assert_int_eq(mocker_new_params(&p, 16, 256, VOCAB, &m), 0);
    engine_opts_t o = {.max_batch_tokens = max_batch_tokens};
    engine_t *e = engine_new(mocker_forward(m), &o);
    ck_assert_ptr_nonnull(e);
    uint32_t prompt[128];
    char id[32];
    for (uint32_t i = 0; i < n_req; i++) {
        engine_request_t r;
        prompt_make(prompt, n, seeds[i]);
        snprintf(id, sizeof(id), "r%u", i);
        memset(&outs[i], 0, sizeof(outs[i]));
        req_make(&r, id, prompt, n, 20, &outs[i]);
        ck_assert_int_eq(engine_add(e, &r), 0);
    }
    int guard = 0;
    while (engine_step(e) > 0) ck_assert_int_lt(guard++, 10000);
    for (uint32_t i = 0; i < n_req; i++) {
        ck_assert(outs[i].done);
        ck_assert_uint_eq(outs[i].n, 20);
    }
    engine_free(e);
    mocker_free(m);
}

START_TEST(test_tokens_deterministic_across_batches) {
    uint32_t seeds[4] = {1, 2, 3, 4};
    collect_t alone[4], together[4], chunked[4];
    for (uint32_t i = 0; i < 4; i++) run_batch(1, &seeds[i], 40, &alone[i], 0);
    run_batch(4, seeds, 40, together, 0);
    run_batch(4, seeds, 40, chunked, 24); /* chunked prefill mixed with decode */
    for (uint32_t i = 0; i < 4; i++) {
        ck_assert_mem_eq(alone[i].toks, together[i].toks, 20 * sizeof(uint32_t));
        ck_assert_mem_eq(alone[i].toks, chunked[i].toks, 20 * sizeof(uint32_t));
    }
    /* Different prompts give different streams. */
    ck_assert(memcmp(alone[0].toks, alone[1].toks, 20 * sizeof(uint32_t)) != 0);
}
END_TEST

START_TEST(test_step_time_follows_model) {
    mocker_params_t p;
    mocker_t *m = NULL;
    fast_params(&p, 10);
    ck_assert_int_eq(mocker_new_params(&p, 16, 64, 100, &m), 0);
    const sl_forward_t *f = mocker_forward(m);
    uint32_t toks[256], blocks[16];
    for (uint32_t i = 0; i < 256; i++) toks[i] = i % 100;
    for (uint32_t i = 0; i < 16; i++) blocks[i] = i;
    float logits[100];
    sl_fwd_seq_t s = {.tokens = toks,
                      .n_tokens = 256,
                      .pos = 0,
                      .blocks = blocks,
                      .n_blocks = 16,
                      .want_logits = true};
    sl_fwd_batch_t b = {.seqs = &s, .n_seqs = 1, .logits = logits};
    double want = mocker_params_prefill_s(&p, 256, 256) / 10;
    double t0 = now_s();
    for (int i = 0; i < 5; i++) ck_assert_int_eq(f->step(f->impl, &b), 0);
    double got = (now_s() - t0) / 5;
    ck_assert_msg(got >= want * 0.95 && got < want * 3 + 0.005, "prefill %g vs %g", got, want);
    /* One peaked row. */
    uint32_t peak = 0;
    for (uint32_t i = 1; i < 100; i++)
        if (logits[i] > logits[peak]) peak = i;
    ck_assert_uint_eq(peak, mocker_token_next(m, toks[255], 255));
    /* Decode of 8 rows at context 201. */
    sl_fwd_seq_t d[8];
    for (int i = 0; i < 8; i++)
        d[i] = (sl_fwd_seq_t){.tokens = toks,
                              .n_tokens = 1,
                              .pos = 200,
                              .blocks = blocks,
                              .n_blocks = 16,
                              .want_logits = false};
    b = (sl_fwd_batch_t){.seqs = d, .n_seqs = 8, .logits = NULL};
    want = mocker_params_decode_s(&p, 8, 8 * 201) / 10;
    t0 = now_s();
    for (int i = 0; i < 5; i++) ck_assert_int_eq(f->step(f->impl, &b), 0);
    got = (now_s() - t0) / 5;
    ck_assert_msg(got >= want * 0.95 && got < want * 3 + 0.005, "decode %g vs %g", got, want);
    ck_assert_uint_eq(mocker_steps(m), 10);
    /* Bad batches. */
    ck_assert_int_eq(f->step(f->impl, NULL), SL_EINVAL);
    sl_fwd_seq_t bad = {.tokens = toks, .n_tokens = 17, .pos = 0, .blocks = blocks, .n_blocks = 1};
    b = (sl_fwd_batch_t){.seqs = &bad, .n_seqs = 1, .logits = NULL};
    ck_assert_int_eq(f->step(f->impl, &b), SL_EINVAL); /* one block for 17 tokens */
    uint32_t far = 64;
    bad = (sl_fwd_seq_t){.tokens = toks, .n_tokens = 1, .pos = 0, .blocks = &far, .n_blocks = 1};
    ck_assert_int_eq(f->step(f->impl, &b), SL_EINVAL); /* block id out of the pool */
    s.want_logits = true;
    b = (sl_fwd_batch_t){.seqs = &s, .n_seqs = 1, .logits = NULL};
    ck_assert_int_eq(f->step(f->impl, &b), SL_EINVAL);
    mocker_free(m);
}
END_TEST

typedef struct evlog {
    uint64_t stored, removed, last_id;
    int gap;
} evlog_t;

static void on_ev(const kvpool_event_t *ev, void *ud) {
    evlog_t *l = ud;
    if (ev->id != l->last_id + 1) l->gap = 1;
    l->last_id = ev->id;
    if (ev->kind == KVPOOL_EVENT_STORED) l->stored += ev->n_blocks;
    if (ev->kind == KVPOOL_EVENT_REMOVED) l->removed += ev->n_removed;
}

START_TEST(test_kv_events_and_prefix_cache) {
    mocker_params_t p;
    mocker_t *m = NULL;
    evlog_t l = {0};
    fast_params(&p, 1000);
    ck_assert_int_eq(mocker_new_params(&p, 16, 16, VOCAB, &m), 0);
    engine_opts_t o = {.kv_event = on_ev, .kv_event_ud = &l};
    engine_t *e = engine_new(mocker_forward(m), &o);
    ck_assert_ptr_nonnull(e);
    uint32_t prompt[64];
    prompt_make(prompt, 64, 9);
    collect_t c1 = {0}, c2 = {0};
    engine_request_t r;
    req_make(&r, "a", prompt, 64, 4, &c1);
    ck_assert_int_eq(engine_add(e, &r), 0);
    while (engine_step(e) > 0) {
    }
    ck_assert_uint_ge(l.stored, 4); /* the 4 full prompt blocks */
    req_make(&r, "b", prompt, 64, 4, &c2);
    ck_assert_int_eq(engine_add(e, &r), 0);
    while (engine_step(e) > 0) {
    }
    ck_assert_mem_eq(c1.toks, c2.toks, 4 * sizeof(uint32_t));
    engine_stats_t st;
    engine_stats_get(e, &st);
    ck_assert_uint_lt(st.prompt_tokens_computed, 128); /* second prompt hit the cache */
    /* Fill the small pool with other prompts: eviction emits REMOVED. */
    for (uint32_t k = 0; k < 6; k++) {
        char id[16];
        collect_t c = {0};
        snprintf(id, sizeof(id), "x%u", k);
        prompt_make(prompt, 64, 100 + k);
        req_make(&r, id, prompt, 64, 2, &c);
        ck_assert_int_eq(engine_add(e, &r), 0);
        while (engine_step(e) > 0) {
        }
    }
    ck_assert_uint_gt(l.removed, 0);
    ck_assert(!l.gap);
    engine_free(e);
    mocker_free(m);
}
END_TEST

START_TEST(test_params_errors) {
    mocker_params_t p, d;
    mocker_params_default(&d);
    const char *ok = "{\"decode_d\":0.01,\"speedup\":4}";
    ck_assert_int_eq(mocker_params_parse(ok, strlen(ok), &p), 0);
    ck_assert(p.decode_d == 0.01 && p.speedup == 4 && p.prefill_a == d.prefill_a);
    const char *bad[] = {"",
                         "[]",
                         "{\"nope\":1}",
                         "{\"speedup\":0}",
                         "{\"prefill_a\":-1}",
                         "{\"prefill_b\":\"1\"}",
                         "{\"decode_e\":1e999}",
                         "{\"decode_g\":1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(mocker_params_parse(bad[i], strlen(bad[i]), &p) == SL_EINVAL, "%s", bad[i]);
    ck_assert_int_eq(mocker_params_load("deploy/mocker/default.json", &p), 0);
    ck_assert(memcmp(&p, &d, sizeof(p)) == 0);
    ck_assert_int_lt(mocker_params_load("/nonexistent/x.json", &p), 0);
    mocker_t *m = NULL;
    ck_assert_int_lt(mocker_new("/nonexistent/x.json", 16, 8, 10, &m), 0);
    ck_assert_ptr_null(m);
    ck_assert_int_eq(mocker_new(NULL, 0, 8, 10, &m), SL_EINVAL);
    ck_assert_int_eq(mocker_new(NULL, 16, 8, 0, &m), SL_EINVAL);
    ck_assert_int_eq(mocker_new("deploy/mocker/fast.json", 16, 8, 10, &m), 0);
    ck_assert_ptr_nonnull(mocker_forward(m));
    mocker_free(m);
    mocker_free(NULL);
}
END_TEST

START_TEST(test_fit_recovers_coefficients) {
    double x[20], z[20], y[20], k[3];
    for (int i = 0; i < 20; i++) {
        x[i] = 16 + 31 * i;
        z[i] = x[i] * (100 + 17 * (i % 7));
        y[i] = 0.002 + 5e-5 * x[i] + 1e-8 * z[i];
    }
    ck_assert_int_eq(mocker_params_fit(x, z, y, 20, k), 0);
    ck_assert(fabs(k[0] - 0.002) < 1e-6 && fabs(k[1] - 5e-5) < 1e-9 && fabs(k[2] - 1e-8) < 1e-12);
    ck_assert_int_eq(mocker_params_fit(x, z, y, 2, k), SL_EINVAL);
    double same[3] = {1, 1, 1};
    ck_assert_int_eq(mocker_params_fit(same, same, same, 3, k), SL_ERANGE);
}
END_TEST

typedef struct worker {
    pthread_t th;
    int idx;
    int failed;
    uint64_t tokens;
    double stop_at;
} worker_t;

static void on_count(const engine_output_t *o, void *ud) {
    *(uint64_t *)ud += o->n_tokens;
}

static void *worker_main(void *arg) {
    worker_t *w = arg;
    mocker_t *m = NULL;
    engine_t *e = NULL;
    /* Small vocab: the engine samples over the whole row each token. */
    if (mocker_new("deploy/mocker/default.json", 16, 512, 2048, &m) != 0) goto fail;
    e = engine_new(mocker_forward(m), NULL);
    if (!e) goto fail;
    uint32_t prompt[96];
    for (uint32_t k = 0; now_s() < w->stop_at; k++) {
        while (engine_active(e) < 8) {
            char id[32];
            engine_request_t r;
            snprintf(id, sizeof(id), "w%d-%u", w->idx, k++);
            prompt_make(prompt, 96, (uint32_t)w->idx * 1000 + k);
            for (int j = 0; j < 96; j++) prompt[j] %= 2048;
            memset(&r, 0, sizeof(r));
            r.id = id;
            r.prompt = prompt;
            r.n_prompt = 96;
            r.stop.max_tokens = 32;
            r.stop.ignore_eos = true;
            r.on_output = on_count;
            r.ud = &w->tokens;
            if (engine_add(e, &r) != 0) goto fail;
        }
        if (engine_step(e) < 0) goto fail;
    }
    engine_free(e);
    mocker_free(m);
    return NULL;
fail:
    w->failed = 1;
    engine_free(e);
    mocker_free(m);
    return NULL;
}

START_TEST(test_16_engines_sleep_not_spin) {
    enum { N = 16 };
    worker_t w[N];
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    double t0 = now_s();
    for (int i = 0; i < N; i++) {
        w[i] = (worker_t){.idx = i, .stop_at = t0 + 3.0};
        ck_assert_int_eq(pthread_create(&w[i].th, NULL, worker_main, &w[i]), 0);
    }
    uint64_t total = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(w[i].th, NULL);
        ck_assert(!w[i].failed);
        ck_assert_uint_gt(w[i].tokens, 0);
        total += w[i].tokens;
    }
    double wall = now_s() - t0;
    getrusage(RUSAGE_SELF, &r1);
    double cpu = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) +
                 (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) / 1e6 +
                 (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) +
                 (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) / 1e6;
    fprintf(stderr, "test_mocker: 16 engines, %.2f s wall, %.3f s cpu (%.1f%%), %llu tokens\n",
            wall, cpu, 100 * cpu / wall, (unsigned long long)total);
    /* Real time, speedup 1: CPU is a small fraction of 16 engines' wall. */
    ck_assert_msg(cpu < 0.5 * wall, "cpu %.3f s over %.2f s wall", cpu, wall);
}
END_TEST

int main(void) {
    Suite *s = suite_create("mocker");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_tokens_deterministic_across_batches);
    tcase_add_test(tc, test_step_time_follows_model);
    tcase_add_test(tc, test_kv_events_and_prefix_cache);
    tcase_add_test(tc, test_params_errors);
    tcase_add_test(tc, test_fit_recovers_coefficients);
    tcase_add_test(tc, test_16_engines_sleep_not_spin);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
