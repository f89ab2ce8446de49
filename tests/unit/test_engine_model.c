/* test_engine_model.c - the engine on a real (tiny, generated) model with
 * its rows sampled on the model's thread pool: a batch of requests of every
 * kind of draw gives the same tokens and logprobs, bit for bit, with the
 * model on one thread and on two (the forward and each draw depend only on
 * their inputs, never on which thread ran them). Also the wiring: a model
 * on the CPU backend lends its pool (parallel_for, n_workers), one on a
 * borrowed backend does not. Needs build/bench/genmodel (SLUICE_BENCH_DIR). */
#include "common/base/err.h"
#include "common/engine/engine.h"
#include "common/engine/model.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NREQ   10
#define NGEN   12
#define MAXOUT 64

static char root_dir[512];
static bool fixture_ok;

static const char *bench_dir(void) {
    const char *d = getenv("SLUICE_BENCH_DIR");
    return d ? d : "build/bench";
}

static void fixture_setup(void) {
    char cmd[2048];
    fixture_ok = false;
    if (harness_mkdtemp("sl-engine-model", root_dir, sizeof root_dir) != 0) return;
    static const char *const dts[2] = {"f32", "bf16"};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd,
                 "%s/genmodel --arch llama --dtype %s --layers 2 --hidden 64 --heads 4 "
                 "--kv-heads 2 --intermediate 128 --vocab 512 --std 0.1 --seed 5 --out %s/%s "
                 ">/dev/null",
                 bench_dir(), dts[i], root_dir, dts[i]);
        if (system(cmd) != 0) {
            fprintf(stderr, "fixture: %s failed\n", cmd);
            return;
        }
    }
    fixture_ok = true;
}

static void fixture_teardown(void) {
    if (root_dir[0] && !getenv("SLUICE_KEEP_TMP")) harness_rmtree(root_dir);
}

typedef struct collect {
    uint32_t tokens[MAXOUT];
    float logprobs[MAXOUT];
    sampling_logprob_t top[MAXOUT][3];
    uint32_t n;
    engine_finish_t finish;
} collect_t;

static void on_output(const engine_output_t *o, void *ud) {
    collect_t *c = ud;
    for (uint32_t i = 0; i < o->n_tokens && c->n < MAXOUT; i++) {
        if (o->logprobs) {
            c->logprobs[c->n] = o->logprobs[i].logprob;
            for (uint32_t j = 0; j < o->logprobs[i].n_top && j < 3; j++)
                c->top[c->n][j] = o->logprobs[i].top[j];
        }
        c->tokens[c->n++] = o->tokens[i];
    }
    c->finish = o->finish;
}

/* Request k: its own prompt and one of six kinds of draw. */
static void make_request(int k, uint32_t *prompt, uint32_t np, collect_t *c, char *id,
                         size_t id_len, engine_request_t *r) {
    for (uint32_t i = 0; i < np; i++) prompt[i] = (uint32_t)(k * 131 + i * 17 + 3) % 500;
    snprintf(id, id_len, "q%d", k);
    *r = (engine_request_t){
        .id = id, .prompt = prompt, .n_prompt = np, .on_output = on_output, .ud = c};
    r->stop.max_tokens = NGEN;
    r->stop.ignore_eos = true;
    sampling_params_t *p = &r->sampling;
    p->has_seed = true;
    p->seed = 77 + (uint64_t)k;
    switch (k % 6) {
    case 0: /* greedy fast path */
        break;
    case 1: /* greedy with top logprobs: the general path */
        p->logprobs = true;
        p->top_logprobs = 3;
        break;
    case 2:
        p->temperature = 0.9f;
        p->top_k = 20;
        p->logprobs = true;
        break;
    case 3:
        p->temperature = 1.1f;
        p->top_p = 0.8f;
        p->min_p = 0.02f;
        break;
    case 4:
        p->temperature = 0.7f;
        p->repetition_penalty = 1.2f;
        p->frequency_penalty = 0.3f;
        p->presence_penalty = 0.1f;
        break;
    default:
        p->temperature = 1.0f;
        break;
    }
}

/* Runs NREQ requests together on the model in dtype dir with n_threads. */
static void run_batch(const char *dtype, int n_threads, collect_t *out) {
    char dir[600], *err = NULL;
    snprintf(dir, sizeof dir, "%s/%s", root_dir, dtype);
    model_opts_t mo = {.n_threads = n_threads, .n_blocks = 256};
    model_t *m = NULL;
    int rc = model_load(dir, &mo, &m, &err);
    ck_assert_msg(rc == 0, "model_load %s: %s", dir, err ? err : sl_strerror(rc));
    sl_forward_t *f = model_forward(m);
    ck_assert_ptr_nonnull(f->parallel_for);
    ck_assert_uint_eq(f->n_workers, (uint32_t)n_threads);
    engine_t *e = engine_new(f, NULL);
    ck_assert_ptr_nonnull(e);
    static uint32_t prompts[NREQ][40];
    char ids[NREQ][16];
    for (int k = 0; k < NREQ; k++) {
        engine_request_t r;
        memset(&out[k], 0, sizeof out[k]);
        make_request(k, prompts[k], 8 + (uint32_t)k * 3, &out[k], ids[k], sizeof ids[k], &r);
        ck_assert_int_eq(engine_add(e, &r), 0);
    }
    int guard = 0;
    while ((rc = engine_step(e)) > 0) ck_assert_int_lt(guard++, 10000);
    ck_assert_int_eq(rc, 0);
    for (int k = 0; k < NREQ; k++) {
        ck_assert_uint_eq(out[k].n, NGEN);
        ck_assert_int_eq(out[k].finish, ENGINE_FINISH_LENGTH);
    }
    engine_free(e);
    model_free(m);
}

START_TEST(test_same_tokens_on_one_and_two_threads) {
    ck_assert_msg(fixture_ok, "fixture failed: genmodel did not run");
    static const char *const dts[2] = {"f32", "bf16"};
    static collect_t one[NREQ], two[NREQ];
    for (int d = 0; d < 2; d++) {
        run_batch(dts[d], 1, one);
        run_batch(dts[d], 2, two);
        for (int k = 0; k < NREQ; k++) {
            ck_assert_mem_eq(one[k].tokens, two[k].tokens, NGEN * sizeof(uint32_t));
            ck_assert_mem_eq(one[k].logprobs, two[k].logprobs, NGEN * sizeof(float));
            ck_assert_mem_eq(one[k].top, two[k].top, sizeof one[k].top);
        }
        /* the draws are not all greedy: sampled requests differ from greedy ones */
        bool differ = false;
        for (int k = 2; k < NREQ; k++)
            if (memcmp(one[k].tokens, one[k % 2].tokens, NGEN * sizeof(uint32_t)) != 0)
                differ = true;
        ck_assert(differ);
    }
}
END_TEST

START_TEST(test_borrowed_backend_lends_no_pool) {
    ck_assert_msg(fixture_ok, "fixture failed: genmodel did not run");
    sl_backend_t *be = NULL;
    sl_backend_config_t bc = {.n_threads = 2};
    ck_assert_int_eq(sl_backend_create("cpu", &bc, &be), 0);
    char dir[600], *err = NULL;
    snprintf(dir, sizeof dir, "%s/f32", root_dir);
    model_opts_t mo = {.backend = be, .n_blocks = 64};
    model_t *m = NULL;
    ck_assert_int_eq(model_load(dir, &mo, &m, &err), 0);
    ck_assert_ptr_null(model_forward(m)->parallel_for);
    /* the engine still samples (on its own thread) */
    engine_t *e = engine_new(model_forward(m), NULL);
    ck_assert_ptr_nonnull(e);
    static uint32_t prompt[40];
    collect_t c[2];
    char ids[2][16];
    for (int k = 0; k < 2; k++) {
        engine_request_t r;
        memset(&c[k], 0, sizeof c[k]);
        make_request(k + 2, prompt, 12, &c[k], ids[k], sizeof ids[k], &r);
        ck_assert_int_eq(engine_add(e, &r), 0);
    }
    int rc, guard = 0;
    while ((rc = engine_step(e)) > 0) ck_assert_int_lt(guard++, 10000);
    ck_assert_int_eq(rc, 0);
    ck_assert_uint_eq(c[0].n, NGEN);
    ck_assert_uint_eq(c[1].n, NGEN);
    engine_free(e);
    model_free(m);
    sl_backend_free(be);
    /* an unknown backend name still fails with a message */
    mo = (model_opts_t){.backend_name = "nonesuch"};
    ck_assert_int_ne(model_load(dir, &mo, &m, &err), 0);
    ck_assert_ptr_nonnull(err);
    free(err);
}
END_TEST

int main(void) {
    Suite *s = suite_create("engine_model");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_unchecked_fixture(tc, fixture_setup, fixture_teardown);
    tcase_add_test(tc, test_same_tokens_on_one_and_two_threads);
    tcase_add_test(tc, test_borrowed_backend_lends_no_pool);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
