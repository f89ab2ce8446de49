/* test_loadgen_stats.c - exact percentiles and summaries (common/base/stats)
 * on data whose answers are known, and the histogram's error bound. */
#include "common/base/err.h"
#include "common/base/stats.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>

#define EPS 1e-9

START_TEST(test_percentiles_exact) {
    stats_samples_t *s = stats_samples_new();
    ck_assert_ptr_nonnull(s);
    /* 1..4 added out of order: numpy.percentile gives these. */
    const double v[] = {3, 1, 4, 2};
    for (int i = 0; i < 4; i++) ck_assert_int_eq(stats_samples_add(s, v[i]), 0);
    double p = 0;
    ck_assert_int_eq(stats_samples_percentile(s, 50, &p), 0);
    ck_assert_double_eq_tol(p, 2.5, EPS);
    ck_assert_int_eq(stats_samples_percentile(s, 0, &p), 0);
    ck_assert_double_eq_tol(p, 1, EPS);
    ck_assert_int_eq(stats_samples_percentile(s, 100, &p), 0);
    ck_assert_double_eq_tol(p, 4, EPS);
    ck_assert_int_eq(stats_samples_percentile(s, 90, &p), 0);
    ck_assert_double_eq_tol(p, 3.7, EPS);
    ck_assert_int_eq(stats_samples_percentile(s, 25, &p), 0);
    ck_assert_double_eq_tol(p, 1.75, EPS);
    /* Adding after a sort re-sorts. */
    ck_assert_int_eq(stats_samples_add(s, 0), 0);
    ck_assert_int_eq(stats_samples_percentile(s, 50, &p), 0);
    ck_assert_double_eq_tol(p, 2, EPS);
    stats_samples_free(s);
}
END_TEST

START_TEST(test_summary_1_to_100) {
    stats_samples_t *s = stats_samples_new();
    for (int i = 100; i >= 1; i--) ck_assert_int_eq(stats_samples_add(s, i), 0);
    stats_summary_t sum;
    ck_assert_int_eq(stats_samples_summary(s, &sum), 0);
    ck_assert_uint_eq(sum.count, 100);
    ck_assert_double_eq_tol(sum.mean, 50.5, EPS);
    ck_assert_double_eq_tol(sum.min, 1, EPS);
    ck_assert_double_eq_tol(sum.max, 100, EPS);
    ck_assert_double_eq_tol(sum.p50, 50.5, EPS);
    ck_assert_double_eq_tol(sum.p90, 90.1, EPS);
    ck_assert_double_eq_tol(sum.p99, 99.01, EPS);
    ck_assert_double_eq_tol(sum.stddev, sqrt((100.0 * 100.0 - 1) / 12.0), 1e-9);
    stats_samples_clear(s);
    ck_assert_int_eq(stats_samples_summary(s, &sum), 0);
    ck_assert_uint_eq(sum.count, 0);
    ck_assert_double_eq(sum.p99, 0);
    stats_samples_free(s);
}
END_TEST

START_TEST(test_single_and_empty) {
    stats_samples_t *s = stats_samples_new();
    double p = -1;
    ck_assert_int_eq(stats_samples_percentile(s, 50, &p), SL_ENOTFOUND);
    ck_assert_int_eq(stats_samples_add(s, 7.25), 0);
    for (int q = 0; q <= 100; q += 10) {
        ck_assert_int_eq(stats_samples_percentile(s, q, &p), 0);
        ck_assert_double_eq(p, 7.25);
    }
    stats_summary_t sum;
    ck_assert_int_eq(stats_samples_summary(s, &sum), 0);
    ck_assert_double_eq(sum.stddev, 0);
    stats_samples_free(s);
}
END_TEST

START_TEST(test_bad_input) {
    stats_samples_t *s = stats_samples_new();
    double p;
    ck_assert_int_eq(stats_samples_add(s, NAN), SL_EINVAL);
    ck_assert_int_eq(stats_samples_add(s, INFINITY), SL_EINVAL);
    ck_assert_int_eq(stats_samples_add(NULL, 1), SL_EINVAL);
    ck_assert_uint_eq(stats_samples_count(s), 0);
    ck_assert_int_eq(stats_samples_add(s, 1), 0);
    ck_assert_int_eq(stats_samples_percentile(s, -1, &p), SL_ERANGE);
    ck_assert_int_eq(stats_samples_percentile(s, 100.5, &p), SL_ERANGE);
    ck_assert_int_eq(stats_samples_percentile(s, NAN, &p), SL_ERANGE);
    ck_assert_int_eq(stats_samples_percentile(s, 50, NULL), SL_EINVAL);
    ck_assert_int_eq(stats_samples_summary(NULL, NULL), SL_EINVAL);
    stats_samples_free(s);
    stats_samples_free(NULL);
    ck_assert_ptr_null(stats_hist_new(0, 10, 8));
    ck_assert_ptr_null(stats_hist_new(10, 10, 8));
    ck_assert_ptr_null(stats_hist_new(1, 10, 0));
    ck_assert_ptr_null(stats_hist_new(1, 10, 4096));
    ck_assert_ptr_null(stats_hist_new(1e-30, 1e30, 8)); /* over 2^60 */
    stats_hist_t *h = stats_hist_new(1, 1000, 8);
    ck_assert_int_eq(stats_hist_add(h, -1), SL_EINVAL);
    ck_assert_int_eq(stats_hist_add(h, NAN), SL_EINVAL);
    ck_assert_int_eq(stats_hist_percentile(h, 50, &p), SL_ENOTFOUND);
    stats_hist_t *other = stats_hist_new(1, 1000, 16);
    ck_assert_int_eq(stats_hist_merge(h, other), SL_EINVAL);
    stats_hist_free(other);
    stats_hist_free(h);
    stats_hist_free(NULL);
}
END_TEST

/* Histogram percentiles stay within the stated relative error of the exact
 * ones, on a skewed distribution spanning several decades. */
START_TEST(test_hist_error_bound) {
    const unsigned sub = 64;
    stats_hist_t *h = stats_hist_new(1e-3, 1e6, sub);
    stats_samples_t *s = stats_samples_new();
    unsigned seed = 12345;
    for (int i = 0; i < 20000; i++) {
        seed = seed * 1103515245u + 12345u;
        double u = ((seed >> 8) & 0xFFFFFF) / (double)0x1000000;
        double v = 0.05 * exp(u * 12); /* 0.05 .. 8,000 */
        ck_assert_int_eq(stats_hist_add(h, v), 0);
        ck_assert_int_eq(stats_samples_add(s, v), 0);
    }
    const double qs[] = {1, 10, 50, 90, 99, 99.9};
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        double a, b;
        ck_assert_int_eq(stats_hist_percentile(h, qs[i], &a), 0);
        ck_assert_int_eq(stats_samples_percentile(s, qs[i], &b), 0);
        /* bucket error plus the gap between neighbouring ranks */
        ck_assert_msg(fabs(a - b) / b < 1.0 / sub + 0.01, "q=%g hist=%g exact=%g", qs[i], a, b);
    }
    stats_summary_t hs, ss;
    ck_assert_int_eq(stats_hist_summary(h, &hs), 0);
    ck_assert_int_eq(stats_samples_summary(s, &ss), 0);
    ck_assert_uint_eq(hs.count, ss.count);
    ck_assert_double_eq_tol(hs.mean, ss.mean, 1e-6 * ss.mean);
    ck_assert_double_eq(hs.min, ss.min);
    ck_assert_double_eq(hs.max, ss.max);
    ck_assert_double_eq_tol(hs.stddev, ss.stddev, 1e-6 * ss.stddev);
    stats_samples_free(s);
    stats_hist_free(h);
}
END_TEST

START_TEST(test_hist_merge_clamp_and_add_n) {
    stats_hist_t *a = stats_hist_new(1, 1024, 16);
    stats_hist_t *b = stats_hist_new(1, 1024, 16);
    ck_assert_int_eq(stats_hist_add_n(a, 10, 3), 0);
    ck_assert_int_eq(stats_hist_add(b, 0.01), 0); /* below lowest: first bucket */
    ck_assert_int_eq(stats_hist_add(b, 5000), 0); /* above highest: last bucket */
    ck_assert_int_eq(stats_hist_merge(a, b), 0);
    ck_assert_uint_eq(stats_hist_count(a), 5);
    stats_summary_t sum;
    ck_assert_int_eq(stats_hist_summary(a, &sum), 0);
    ck_assert_double_eq(sum.min, 0.01);
    ck_assert_double_eq(sum.max, 5000);
    ck_assert_double_eq_tol(sum.mean, (30 + 0.01 + 5000) / 5, 1e-9);
    double p;
    ck_assert_int_eq(stats_hist_percentile(a, 0, &p), 0);
    ck_assert_double_eq(p, 0.01); /* clamped to the exact min */
    ck_assert_int_eq(stats_hist_percentile(a, 100, &p), 0);
    ck_assert_double_eq(p, 5000); /* clamped to the exact max */
    ck_assert_int_eq(stats_hist_percentile(a, 50, &p), 0);
    ck_assert_double_eq_tol(p, 10, 10.0 / 16);
    stats_hist_reset(a);
    ck_assert_uint_eq(stats_hist_count(a), 0);
    stats_hist_free(a);
    stats_hist_free(b);
}
END_TEST

int main(void) {
    Suite *s = suite_create("loadgen_stats");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_percentiles_exact);
    tcase_add_test(tc, test_summary_1_to_100);
    tcase_add_test(tc, test_single_and_empty);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_hist_error_bound);
    tcase_add_test(tc, test_hist_merge_clamp_and_add_n);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
