/* test_sampling.c - exact masks (top-k, top-p, min-p), penalties, seeded
 * reproducibility, empirical distributions, logprobs, bad parameters. */
#include "common/base/err.h"
#include "common/engine/sampling.h"

#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define V 64

static void random_logits(float *l, unsigned seed) {
    sampling_rng_t r;
    sampling_rng_seed(&r, seed);
    for (int i = 0; i < V; i++) l[i] = (float)(sampling_rng_uniform(&r) * 8.0 - 4.0);
}

static sampling_params_t params(float t) {
    sampling_params_t p = {0};
    p.temperature = t;
    return p;
}

START_TEST(test_greedy_and_ties) {
    sampler_t *s = sampler_new(V);
    float l[V] = {0};
    l[10] = 3;
    l[20] = 3; /* tie: the lower id wins */
    l[5] = -1;
    sampling_params_t p = params(0);
    sampling_result_t r;
    ck_assert_int_eq(sampler_sample(s, &p, l, NULL, 0, 0, NULL, &r), 0);
    ck_assert_uint_eq(r.token, 10);
    sampler_free(s);
}
END_TEST

START_TEST(test_top_k_mask_exact) {
    sampler_t *s = sampler_new(V);
    bool keep[V];
    for (unsigned seed = 1; seed < 50; seed++) {
        float l[V], c[V];
        random_logits(l, seed);
        memcpy(c, l, sizeof l);
        sampling_params_t p = params(0.7f);
        p.top_k = (int32_t)(seed % 10) + 1;
        int n = sampler_mask(s, &p, l, NULL, 0, 0, keep, NULL);
        ck_assert_int_eq(n, p.top_k);
        for (int i = 0; i < V; i++) {
            int above = 0;
            for (int j = 0; j < V; j++) above += c[j] > c[i];
            ck_assert_int_eq(keep[i], above < p.top_k);
        }
    }
    /* Ties at the boundary are all kept. */
    float l[V];
    for (int i = 0; i < V; i++) l[i] = (float)(i % 4);
    sampling_params_t p = params(1);
    p.top_k = 3;
    ck_assert_int_eq(sampler_mask(s, &p, l, NULL, 0, 0, keep, NULL), V / 4);
    sampler_free(s);
}
END_TEST

START_TEST(test_top_p_and_min_p_masks_exact) {
    sampler_t *s = sampler_new(V);
    bool keep[V];
    double probs[V];
    for (unsigned seed = 1; seed < 60; seed++) {
        float l[V], c[V];
        random_logits(l, seed);
        memcpy(c, l, sizeof l);
        sampling_params_t p = params(0.5f + (float)(seed % 5) * 0.3f);
        p.top_p = 0.1f + (float)(seed % 9) * 0.1f;
        p.min_p = seed % 3 ? 0.0f : 0.05f;
        p.top_k = seed % 4 == 0 ? 7 : 0;
        sampler_mask(s, &p, l, NULL, 0, 0, keep, probs);
        /* Brute force: probabilities after temperature, min-p, top-k, top-p. */
        double e[V], mx = -1e30, tot = 0;
        for (int i = 0; i < V; i++) mx = fmax(mx, (double)(c[i] / p.temperature));
        for (int i = 0; i < V; i++) {
            e[i] = exp((double)(c[i] / p.temperature) - mx);
            if (e[i] < p.min_p) e[i] = 0; /* min-p relative to the max (1) */
        }
        for (int i = 0; i < V && p.top_k; i++) {
            int above = 0; /* survivors strictly more likely */
            for (int j = 0; j < V; j++) above += e[j] > 0 && c[j] > c[i];
            if (above >= p.top_k) e[i] = 0;
        }
        for (int i = 0; i < V; i++) tot += e[i];
        double kept_tot = 0;
        for (int i = 0; i < V; i++) {
            double above = 0;
            for (int j = 0; j < V; j++)
                if (e[j] > e[i]) above += e[j];
            bool want = e[i] > 0 && above < p.top_p * tot;
            ck_assert_msg(keep[i] == want, "seed %u token %d", seed, i);
            if (want) kept_tot += e[i];
        }
        for (int i = 0; i < V; i++)
            if (keep[i]) ck_assert_double_eq_tol(probs[i], e[i] / kept_tot, 1e-5);
    }
    sampler_free(s);
}
END_TEST

START_TEST(test_min_p_alone) {
    sampler_t *s = sampler_new(V);
    float l[V];
    bool keep[V];
    for (int i = 0; i < V; i++) l[i] = -10;
    l[1] = 0;           /* p relative 1 */
    l[2] = logf(0.5f);  /* 0.5 */
    l[3] = logf(0.09f); /* below 0.1 */
    sampling_params_t p = params(1);
    p.min_p = 0.1f;
    ck_assert_int_eq(sampler_mask(s, &p, l, NULL, 0, 0, keep, NULL), 2);
    ck_assert(keep[1] && keep[2] && !keep[3]);
    sampler_free(s);
}
END_TEST

START_TEST(test_penalties) {
    sampler_t *s = sampler_new(V);
    float l[V];
    bool keep[V];
    for (int i = 0; i < V; i++) l[i] = 1.0f;
    l[3] = 2.0f;
    l[4] = -2.0f;
    /* prompt {3, 4}, output {5, 5, 6} */
    uint32_t hist[] = {3, 4, 5, 5, 6, 200 /* out of vocab: ignored */};
    sampling_params_t p = params(0);
    p.repetition_penalty = 2.0f;
    p.frequency_penalty = 0.25f;
    p.presence_penalty = 0.5f;
    sampler_mask(s, &p, l, hist, 6, 2, keep, NULL);
    ck_assert_float_eq_tol(l[3], 1.0f, 1e-6);               /* 2 / 2 (prompt: repetition only) */
    ck_assert_float_eq_tol(l[4], -4.0f, 1e-6);              /* -2 * 2 */
    ck_assert_float_eq_tol(l[5], 0.5f - 0.5f - 0.5f, 1e-6); /* 1/2 - 2*0.25 - 0.5 */
    ck_assert_float_eq_tol(l[6], 0.5f - 0.25f - 0.5f, 1e-6);
    ck_assert_float_eq_tol(l[7], 1.0f, 1e-6); /* untouched */
    ck_assert(keep[0]);                       /* greedy: the lowest id among the 1.0s */
    /* Scratch state does not leak into the next call. */
    for (int i = 0; i < V; i++) l[i] = 1.0f;
    sampling_params_t q = params(0);
    q.frequency_penalty = 1.0f;
    uint32_t h2[] = {9};
    sampler_mask(s, &q, l, h2, 1, 0, keep, NULL);
    ck_assert_float_eq_tol(l[5], 1.0f, 1e-6);
    ck_assert_float_eq_tol(l[9], 0.0f, 1e-6);
    sampler_free(s);
}
END_TEST

START_TEST(test_seed_reproducible_and_distribution) {
    sampler_t *s = sampler_new(V);
    float base[V], l[V];
    random_logits(base, 7);
    sampling_params_t p = params(1.3f);
    p.top_k = 20;
    uint32_t a[200], b[200], c[200];
    sampling_rng_t r1, r2, r3;
    sampling_rng_seed(&r1, 42);
    sampling_rng_seed(&r2, 42);
    sampling_rng_seed(&r3, 43);
    sampling_result_t res;
    for (int i = 0; i < 200; i++) {
        memcpy(l, base, sizeof l);
        sampler_sample(s, &p, l, NULL, 0, 0, &r1, &res);
        a[i] = res.token;
        memcpy(l, base, sizeof l);
        sampler_sample(s, &p, l, NULL, 0, 0, &r2, &res);
        b[i] = res.token;
        memcpy(l, base, sizeof l);
        sampler_sample(s, &p, l, NULL, 0, 0, &r3, &res);
        c[i] = res.token;
    }
    ck_assert_mem_eq(a, b, sizeof a);
    ck_assert(memcmp(a, c, sizeof a) != 0);

    /* Empirical frequencies follow the masked distribution. */
    bool keep[V];
    double probs[V];
    memcpy(l, base, sizeof l);
    sampler_mask(s, &p, l, NULL, 0, 0, keep, probs);
    int counts[V] = {0};
    const int N = 100000;
    for (int i = 0; i < N; i++) {
        memcpy(l, base, sizeof l);
        sampler_sample(s, &p, l, NULL, 0, 0, &r1, &res);
        counts[res.token]++;
    }
    for (int i = 0; i < V; i++) {
        if (!keep[i]) {
            ck_assert_int_eq(counts[i], 0);
            continue;
        }
        double want = probs[i] * N, sd = sqrt(N * probs[i] * (1 - probs[i])) + 1;
        ck_assert_msg(fabs(counts[i] - want) < 6 * sd, "token %d: %d vs %.1f", i, counts[i], want);
    }
    sampler_free(s);
}
END_TEST

START_TEST(test_logprobs_raw) {
    sampler_t *s = sampler_new(V);
    float l[V], c[V];
    random_logits(l, 3);
    memcpy(c, l, sizeof l);
    sampling_params_t p = params(0);
    p.logprobs = true;
    p.top_logprobs = 5;
    p.repetition_penalty = 3.0f; /* logprobs ignore processing */
    uint32_t hist[] = {1, 2, 3};
    sampling_result_t r;
    ck_assert_int_eq(sampler_sample(s, &p, l, hist, 3, 3, NULL, &r), 0);
    double mx = -1e30, z = 0;
    for (int i = 0; i < V; i++) mx = fmax(mx, c[i]);
    for (int i = 0; i < V; i++) z += exp(c[i] - mx);
    double lse = mx + log(z);
    ck_assert_double_eq_tol(r.logprob, c[r.token] - lse, 1e-5);
    ck_assert_uint_eq(r.n_top, 5);
    for (uint32_t k = 0; k < 5; k++) {
        ck_assert_double_eq_tol(r.top[k].logprob, c[r.top[k].token] - lse, 1e-5);
        if (k) ck_assert(r.top[k - 1].logprob >= r.top[k].logprob);
        int above = 0;
        for (int j = 0; j < V; j++) above += c[j] > c[r.top[k].token];
        ck_assert_int_eq(above, (int)k);
    }
    sampler_free(s);
}
END_TEST

START_TEST(test_bad_params) {
    ck_assert_ptr_null(sampler_new(0));
    sampler_free(NULL);
    sampler_t *s = sampler_new(V);
    float l[V] = {0};
    sampling_result_t r;
    sampling_params_t p = params(-1);
    ck_assert_int_eq(sampler_sample(s, &p, l, NULL, 0, 0, NULL, &r), SL_EINVAL);
    p = params(NAN);
    ck_assert_int_eq(sampling_params_validate(&p), SL_EINVAL);
    p = params(1);
    p.min_p = 1.5f;
    ck_assert_int_eq(sampling_params_validate(&p), SL_EINVAL);
    p = params(1);
    p.top_logprobs = SAMPLING_MAX_TOP_LOGPROBS + 1;
    ck_assert_int_eq(sampling_params_validate(&p), SL_EINVAL);
    p = params(1);
    p.frequency_penalty = INFINITY;
    ck_assert_int_eq(sampling_params_validate(&p), SL_EINVAL);
    p = params(1); /* sampling needs an RNG */
    ck_assert_int_eq(sampler_sample(s, &p, l, NULL, 0, 0, NULL, &r), SL_EINVAL);
    /* A row of NaN / -inf still yields a token. */
    for (int i = 0; i < V; i++) l[i] = -INFINITY;
    l[9] = NAN;
    sampling_rng_t rng;
    sampling_rng_seed(&rng, 1);
    ck_assert_int_eq(sampler_sample(s, &p, l, NULL, 0, 0, &rng, &r), 0);
    ck_assert_uint_lt(r.token, V);
    sampler_free(s);
}
END_TEST

/* ---- greedy fast path ------------------------------------------------------------ */

/* The documented rule, written plainly: the first index of the largest
 * non-NaN value, 0 when there is none. */
static uint32_t ref_argmax(const float *x, uint32_t n) {
    int best = -1;
    for (uint32_t i = 0; i < n; i++)
        if (!isnan(x[i]) && (best < 0 || x[i] > x[best])) best = (int)i;
    return best < 0 ? 0 : (uint32_t)best;
}

/* Row pattern k of length n from rng: random values with NaNs, infinities,
 * ties, signed zeros and the maximum placed at the ends and in the tails. */
static void pattern_row(float *x, uint32_t n, int k, sampling_rng_t *rng) {
    for (uint32_t i = 0; i < n; i++) x[i] = (float)(sampling_rng_uniform(rng) * 20.0 - 10.0);
    if (n == 0) return;
    uint32_t a = (uint32_t)(sampling_rng_next(rng) % n), b = (uint32_t)(sampling_rng_next(rng) % n);
    switch (k) {
    case 0: /* plain */
        break;
    case 1: /* NaNs sprinkled, one at the max position of the plain row */
        for (uint32_t i = 0; i < n; i += 3) x[i] = NAN;
        x[ref_argmax(x, n)] = NAN;
        break;
    case 2: /* all NaN */
        for (uint32_t i = 0; i < n; i++) x[i] = NAN;
        break;
    case 3: /* all -inf, some NaN: the first non-NaN wins */
        for (uint32_t i = 0; i < n; i++) x[i] = i % 5 == 0 ? NAN : -INFINITY;
        break;
    case 4: /* a tie of two maxima: the lower index wins */
        x[a] = x[b] = 50.0f;
        break;
    case 5: /* max in the last element (scalar tail of the vector loop) */
        x[n - 1] = 99.0f;
        break;
    case 6: /* signed zeros at the top: they tie */
        for (uint32_t i = 0; i < n; i++) x[i] = -1.0f - (float)i;
        x[a] = -0.0f;
        x[b] = 0.0f;
        break;
    case 7: /* +inf next to NaN */
        x[a] = INFINITY;
        x[b] = NAN;
        break;
    default: /* all equal */
        for (uint32_t i = 0; i < n; i++) x[i] = 1.5f;
        break;
    }
}

START_TEST(test_argmax_matches_plain_loop) {
    static const uint32_t ns[] = {1,  2,  15, 16, 17, 31, 32,   33,
                                  63, 64, 65, 95, 96, 97, 1000, 32000};
    float *x = malloc(32000 * sizeof *x);
    ck_assert_ptr_nonnull(x);
    sampling_rng_t rng;
    sampling_rng_seed(&rng, 7);
    for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
        for (int k = 0; k < 9; k++)
            for (int rep = 0; rep < 4; rep++) {
                uint32_t n = ns[ni];
                pattern_row(x, n, k, &rng);
                uint32_t want = ref_argmax(x, n), got = sampling_argmax(x, n);
                ck_assert_msg(got == want, "n=%u pattern %d: got %u, want %u", n, k, got, want);
            }
    ck_assert_uint_eq(sampling_argmax(x, 0), 0);
    ck_assert_uint_eq(sampling_argmax(NULL, 5), 0);
    free(x);
}
END_TEST

/* Greedy without logprobs or penalties takes the fast path; asking for
 * logprobs, or a penalty that changes nothing, takes the general one: the
 * token must be the same, and sampler_mask keeps exactly it. */
START_TEST(test_greedy_fast_path_equals_general_path) {
    const uint32_t NV = 32000;
    sampler_t *s = sampler_new(NV);
    float *x = malloc(NV * sizeof *x), *y = malloc(NV * sizeof *y);
    bool *keep = malloc(NV * sizeof *keep);
    ck_assert(s && x && y && keep);
    sampling_rng_t rng;
    sampling_rng_seed(&rng, 11);
    uint32_t hist[3] = {NV - 1, NV - 2, NV - 3}; /* never the max below */
    for (int k = 0; k < 9; k++)
        for (int rep = 0; rep < 3; rep++) {
            pattern_row(x, NV, k, &rng);
            for (uint32_t i = NV - 3; i < NV; i++)
                if (!isnan(x[i])) x[i] = -100.0f;
            sampling_params_t fast = params(0), lp = params(0), pen = params(0);
            lp.logprobs = true;
            lp.top_logprobs = 3;
            pen.presence_penalty = 0.5f; /* hits only the three history tokens */
            sampling_result_t a, b, c;
            memcpy(y, x, NV * sizeof *x);
            ck_assert_int_eq(sampler_sample(s, &fast, y, hist, 3, 0, NULL, &a), 0);
            memcpy(y, x, NV * sizeof *x);
            ck_assert_int_eq(sampler_sample(s, &lp, y, hist, 3, 0, NULL, &b), 0);
            memcpy(y, x, NV * sizeof *x);
            ck_assert_int_eq(sampler_sample(s, &pen, y, hist, 3, 0, NULL, &c), 0);
            ck_assert_uint_eq(a.token, ref_argmax(x, NV));
            ck_assert_uint_eq(a.token, b.token);
            ck_assert_uint_eq(a.token, c.token);
            ck_assert_uint_eq(a.n_top, 0);
            memcpy(y, x, NV * sizeof *x);
            ck_assert_int_eq(sampler_mask(s, &fast, y, hist, 3, 0, keep, NULL), 1);
            ck_assert(keep[a.token]);
        }
    free(keep);
    free(y);
    free(x);
    sampler_free(s);
}
END_TEST

/* Top-p draws over a flat 5000-token row (and one of six tied levels, where
 * the order among equal probabilities decides the token): the tokens the
 * qsort-based ordering drew, recorded before it was replaced by a radix
 * sort, so the draw order (probability descending, id ascending) and with
 * it every seeded generation stay the same. */
START_TEST(test_top_p_draws_unchanged) {
    static const uint32_t want[2][12] = {
        {3679, 290, 1356, 1935, 1686, 4725, 2571, 1916, 37, 1450, 3862, 1054},
        {3710, 1868, 3388, 4353, 4759, 538, 3663, 2379, 54, 2898, 3733, 123}};
    const uint32_t NV = 5000;
    sampler_t *s = sampler_new(NV);
    float *l = malloc(NV * sizeof *l), *y = malloc(NV * sizeof *y);
    ck_assert(s && l && y);
    for (int c = 0; c < 2; c++) {
        sampling_rng_t g;
        sampling_rng_seed(&g, 99 + (uint64_t)c);
        for (uint32_t i = 0; i < NV; i++) {
            double u = sampling_rng_uniform(&g);
            l[i] = c == 0 ? (float)(u * 2.0) : (float)((int)(u * 6.0)) * 0.25f;
        }
        for (int seed = 1; seed <= 12; seed++) {
            sampling_params_t p = {.temperature = 0.9f, .top_p = 0.9f};
            sampling_rng_t r;
            sampling_rng_seed(&r, (uint64_t)seed);
            memcpy(y, l, NV * sizeof *l);
            sampling_result_t out;
            ck_assert_int_eq(sampler_sample(s, &p, y, NULL, 0, 0, &r, &out), 0);
            ck_assert_msg(out.token == want[c][seed - 1], "case %d seed %d: %u, want %u", c, seed,
                          out.token, want[c][seed - 1]);
        }
    }
    free(l);
    free(y);
    sampler_free(s);
}
END_TEST

int main(void) {
    Suite *s = suite_create("sampling");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_greedy_and_ties);
    tcase_add_test(tc, test_top_k_mask_exact);
    tcase_add_test(tc, test_top_p_and_min_p_masks_exact);
    tcase_add_test(tc, test_min_p_alone);
    tcase_add_test(tc, test_penalties);
    tcase_add_test(tc, test_seed_reproducible_and_distribution);
    tcase_add_test(tc, test_logprobs_raw);
    tcase_add_test(tc, test_bad_params);
    tcase_add_test(tc, test_argmax_matches_plain_loop);
    tcase_add_test(tc, test_greedy_fast_path_equals_general_path);
    tcase_add_test(tc, test_top_p_draws_unchanged);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
