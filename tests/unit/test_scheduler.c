/* test_scheduler.c - scheduling policy (budget, decodes first, chunking,
 * prefix reuse, watermark, preemption) and a random stress whose greedy
 * outputs must equal the reference, with every block returned at the end. */
#include "common/base/err.h"
#include "common/engine/scheduler.h"
#include "tests/unit/engine_fake.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VOCAB 50

static uint32_t argmax_row(const float *r) {
    uint32_t b = 0;
    for (uint32_t i = 1; i < VOCAB; i++)
        if (r[i] > r[b]) b = i;
    return b;
}

/* Greedy reference continuation of prompt by n tokens. */
static void ref_generate(const uint32_t *prompt, uint32_t np, uint32_t n, uint32_t *out) {
    uint32_t *h = malloc((np + n) * sizeof *h);
    float row[VOCAB];
    memcpy(h, prompt, np * sizeof *h);
    for (uint32_t i = 0; i < n; i++) {
        fake_ref_logits(h, np + i, VOCAB, row);
        h[np + i] = out[i] = argmax_row(row);
    }
    free(h);
}

typedef struct job {
    uint32_t prompt[300], np, want; /* want: output tokens to generate */
    sched_seq_t *q;
    bool done;
    bool hold; /* keep the sequence (and its blocks) after it is done */
} job_t;

static void check_outputs(job_t *j);

/* Runs one step: plan, forward, sample greedily, finish jobs that have enough
 * tokens. Returns the plan's token count. */
static uint32_t run_step(sched_t *s, fake_fwd_t *ff, float *logits, sched_plan_t *plan) {
    ck_assert_int_eq(sched_step_plan(s, plan), 0);
    if (plan->n == 0) return 0;
    sl_fwd_batch_t b = {.seqs = plan->fwd, .n_seqs = plan->n, .logits = logits};
    ck_assert_int_eq(ff->f.step(ff, &b), 0);
    ck_assert_int_eq(sched_step_done(s, plan, true), 0);
    uint32_t row = 0;
    for (uint32_t k = 0; k < plan->n; k++) {
        if (!plan->fwd[k].want_logits) continue;
        job_t *j = sched_seq_ud(plan->seqs[k]);
        const float *r = logits + row++ * VOCAB;
        if (j->done) continue;
        ck_assert_int_eq(sched_seq_append(s, j->q, argmax_row(r)), 0);
        uint32_t n;
        sched_seq_tokens(j->q, &n);
        if (n - j->np >= j->want) {
            j->done = true;
            check_outputs(j);
            if (!j->hold) {
                sched_seq_finish(s, j->q);
                j->q = NULL;
            }
        }
    }
    return plan->n_tokens;
}

static void check_outputs(job_t *j) {
    uint32_t ref[300], n;
    const uint32_t *t = sched_seq_tokens(j->q, &n);
    ref_generate(j->prompt, j->np, j->want, ref);
    ck_assert_uint_eq(n, j->np + j->want);
    ck_assert_mem_eq(t, j->prompt, j->np * sizeof *t);
    ck_assert_mem_eq(t + j->np, ref, j->want * sizeof *t);
}

START_TEST(test_budget_chunking_and_decodes_first) {
    fake_fwd_t ff;
    fake_init(&ff, VOCAB, 4, 64);
    kvpool_t *p = kvpool_new(64, 4);
    sched_opts_t o = {.max_batch_tokens = 8};
    sched_t *s = sched_new(p, &o);
    float logits[16 * VOCAB];
    job_t a = {.np = 3, .want = 6}, b = {.np = 21, .want = 2};
    for (uint32_t i = 0; i < 21; i++) a.prompt[i] = b.prompt[i] = (i * 5 + 1) % VOCAB;
    ck_assert_int_eq(sched_seq_add(s, a.prompt, a.np, &a, &a.q), 0);
    sched_plan_t plan;
    run_step(s, &ff, logits, &plan); /* a's prefill, a gets its first token */
    ck_assert_uint_eq(plan.n_tokens, 3);
    ck_assert_int_eq(sched_seq_add(s, b.prompt, b.np, &b, &b.q), 0);
    /* b's 21-token prompt goes in chunks of what is left after a's decode. */
    uint32_t chunks = 0;
    while (!b.done && sched_seq_n_computed(b.q) < b.np) {
        run_step(s, &ff, logits, &plan);
        ck_assert_uint_le(plan.n_tokens, 8);
        if (!a.done) {
            ck_assert_ptr_eq(plan.seqs[0], a.q); /* the decode comes first */
            ck_assert_uint_eq(plan.fwd[0].n_tokens, 1);
        }
        chunks++;
    }
    ck_assert_uint_ge(chunks, 3);
    while (!a.done || !b.done) run_step(s, &ff, logits, &plan);
    kvpool_stats_t st;
    kvpool_stats_get(p, &st);
    ck_assert_uint_eq(st.used, 0);
    ck_assert_int_eq(ff.bad, 0);
    sched_free(s);
    kvpool_free(p);
    fake_destroy(&ff);
}
END_TEST

START_TEST(test_prefix_reuse_and_last_token) {
    fake_fwd_t ff;
    fake_init(&ff, VOCAB, 4, 64);
    kvpool_t *p = kvpool_new(64, 4);
    sched_t *s = sched_new(p, NULL);
    float logits[16 * VOCAB];
    sched_plan_t plan;
    job_t a = {.np = 16, .want = 3, .hold = true}, b = {.np = 16, .want = 3, .hold = true},
          c = {.np = 10, .want = 2, .hold = true};
    for (uint32_t i = 0; i < 16; i++) a.prompt[i] = b.prompt[i] = c.prompt[i] = (i * 3 + 2) % VOCAB;
    c.prompt[9] = 49;
    sched_seq_add(s, a.prompt, a.np, &a, &a.q);
    while (!a.done) run_step(s, &ff, logits, &plan);
    ck_assert_uint_eq(sched_seq_cached_tokens(a.q), 0);
    sched_seq_finish(s, a.q);
    /* Same 16-token prompt: 3 of 4 blocks reused; the last block is computed
     * so that there is a token to take logits from. */
    uint64_t before = ff.tokens_computed;
    sched_seq_add(s, b.prompt, b.np, &b, &b.q);
    run_step(s, &ff, logits, &plan);
    ck_assert_uint_eq(sched_seq_cached_tokens(b.q), 12);
    ck_assert_uint_eq(ff.tokens_computed - before, 4);
    while (!b.done) run_step(s, &ff, logits, &plan);
    /* A prompt differing in block 2 reuses blocks 0-1 only, while b still
     * holds them (shared, refcount 2). */
    sched_seq_add(s, c.prompt, c.np, &c, &c.q);
    run_step(s, &ff, logits, &plan);
    ck_assert_uint_eq(sched_seq_cached_tokens(c.q), 8);
    uint32_t nb;
    const uint32_t *bt = sched_seq_blocks(c.q, &nb);
    ck_assert_uint_eq(kvpool_block_refcount(p, bt[0]), 2);
    while (!c.done) run_step(s, &ff, logits, &plan);
    sched_seq_finish(s, b.q);
    sched_seq_finish(s, c.q);
    ck_assert_int_eq(ff.bad, 0);
    sched_free(s);
    kvpool_free(p);
    fake_destroy(&ff);
}
END_TEST

START_TEST(test_watermark_and_preemption) {
    fake_fwd_t ff;
    fake_init(&ff, VOCAB, 4, 8);
    kvpool_t *p = kvpool_new(8, 4);
    sched_opts_t o = {.watermark_blocks = 3};
    sched_t *s = sched_new(p, &o);
    ck_assert_uint_eq(sched_max_context(s), 32);
    float logits[16 * VOCAB];
    sched_plan_t plan;
    job_t j[3];
    for (int k = 0; k < 3; k++) {
        j[k] = (job_t){.np = 8, .want = 12};
        for (uint32_t i = 0; i < 8; i++) j[k].prompt[i] = (uint32_t)(k * 11 + i) % VOCAB;
        ck_assert_int_eq(sched_seq_add(s, j[k].prompt, 8, &j[k], &j[k].q), 0);
    }
    run_step(s, &ff, logits, &plan);
    /* 2 blocks each; the first is admitted regardless of the watermark, the
     * second leaves 8 - 4 = 4 >= 3, the third would leave 2 < 3 and waits. */
    sched_stats_t st;
    sched_stats_get(s, &st);
    ck_assert_uint_eq(st.running, 2);
    ck_assert_uint_eq(st.waiting, 1);
    ck_assert_uint_eq(st.pending_prefill_tokens, 8); /* the waiting prompt */
    int preempted = 0, guard = 0;
    while (!(j[0].done && j[1].done && j[2].done) && guard++ < 500) {
        run_step(s, &ff, logits, &plan);
        preempted += plan.n_preempted;
    }
    ck_assert_int_gt(preempted, 0); /* 3 x 5 blocks do not fit in 8 */
    sched_stats_get(s, &st);
    ck_assert_uint_eq(st.running + st.waiting, 0);
    kvpool_stats_t ks;
    kvpool_stats_get(p, &ks);
    ck_assert_uint_eq(ks.used, 0);
    ck_assert_int_eq(ff.bad, 0);
    sched_free(s);
    kvpool_free(p);
    fake_destroy(&ff);
}
END_TEST

START_TEST(test_random_stress_matches_reference) {
    for (unsigned seed = 1; seed <= 25; seed++) {
        srand(seed);
        uint32_t bs = 1 + (uint32_t)rand() % 6, nblocks = 12 + (uint32_t)rand() % 40;
        fake_fwd_t ff;
        fake_init(&ff, VOCAB, bs, nblocks);
        kvpool_t *p = kvpool_new(nblocks, bs);
        sched_opts_t o = {.max_batch_tokens = 1 + (uint32_t)rand() % 40,
                          .max_seqs = 1 + (uint32_t)rand() % 8,
                          .watermark_blocks = (uint32_t)rand() % 3};
        sched_t *s = sched_new(p, &o);
        uint32_t ctx = sched_max_context(s);
        float *logits = malloc(64 * VOCAB * sizeof *logits);
        job_t *jobs = calloc(20, sizeof *jobs);
        uint32_t shared[64];
        for (int i = 0; i < 64; i++) shared[i] = (uint32_t)rand() % VOCAB;
        int added = 0, finished = 0, guard = 0;
        sched_plan_t plan;
        while (finished < 20 && guard++ < 20000) {
            if (added < 20 && rand() % 3 == 0) {
                job_t *j = &jobs[added];
                /* Prompts share prefixes so the cache is exercised. */
                j->np = 1 + (uint32_t)rand() % (ctx / 2 < 40 ? ctx / 2 : 40);
                uint32_t common = (uint32_t)rand() % (j->np + 1);
                for (uint32_t i = 0; i < j->np; i++)
                    j->prompt[i] = i < common ? shared[i] : (uint32_t)rand() % VOCAB;
                j->want = 1 + (uint32_t)rand() % (ctx - j->np < 20 ? ctx - j->np : 20);
                ck_assert_int_eq(sched_seq_add(s, j->prompt, j->np, j, &j->q), 0);
                added++;
            }
            run_step(s, &ff, logits, &plan);
            finished = 0;
            for (int k = 0; k < added; k++) finished += jobs[k].q == NULL;
            for (int k = 0; k < added; k++) {
                job_t *j = &jobs[k];
                if (!j->q) continue;
                if (rand() % 200 == 0) { /* cancel */
                    sched_seq_finish(s, j->q);
                    j->q = NULL;
                }
            }
            if (added == 20 && plan.n == 0) ck_assert_int_eq(finished, 20);
        }
        ck_assert_int_eq(finished, 20);
        kvpool_stats_t ks;
        kvpool_stats_get(p, &ks);
        ck_assert_uint_eq(ks.used, 0);
        ck_assert_int_eq(ff.bad, 0);
        free(jobs);
        free(logits);
        sched_free(s);
        kvpool_free(p);
        fake_destroy(&ff);
    }
}
END_TEST

START_TEST(test_bad_input_and_limits) {
    kvpool_t *p = kvpool_new(4, 4);
    ck_assert_ptr_null(sched_new(NULL, NULL));
    sched_free(NULL);
    sched_t *s = sched_new(p, NULL);
    sched_seq_t *q;
    uint32_t t[20] = {0};
    ck_assert_int_eq(sched_seq_add(s, t, 0, NULL, &q), SL_EINVAL);
    ck_assert_int_eq(sched_seq_add(s, NULL, 3, NULL, &q), SL_EINVAL);
    ck_assert_int_eq(sched_seq_add(s, t, 16, NULL, &q), SL_ERANGE); /* pool holds 16 */
    ck_assert_int_eq(sched_seq_add(s, t, 15, NULL, &q), 0);
    ck_assert_int_eq(sched_seq_append(s, q, 1), 0);
    ck_assert_int_eq(sched_seq_append(s, q, 1), SL_ERANGE); /* at max_context */
    sched_seq_finish(s, q);                                 /* while waiting */
    sched_seq_finish(s, NULL);
    sched_free(s);
    kvpool_free(p);
}
END_TEST

int main(void) {
    Suite *s = suite_create("scheduler");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_budget_chunking_and_decodes_first);
    tcase_add_test(tc, test_prefix_reuse_and_last_token);
    tcase_add_test(tc, test_watermark_and_preemption);
    tcase_add_test(tc, test_random_stress_matches_reference);
    tcase_add_test(tc, test_bad_input_and_limits);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
