/* test_metrics.c - exact exposition text, escaping, histograms, concurrency. */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/metrics.h"

#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *render(metrics_registry_t *r) {
    char *out = NULL;
    size_t len = 0;
    ck_assert_int_eq(metrics_registry_render(r, &out, &len), 0);
    ck_assert_ptr_nonnull(out);
    ck_assert_uint_eq(len, strlen(out));
    return out;
}

START_TEST(test_exposition_exact) {
    metrics_registry_t *r = metrics_registry_new();
    ck_assert_ptr_nonnull(r);
    metrics_counter_t *req = metrics_counter_new(r, "sluice_requests_total", "Requests served");
    metrics_family_t *tok = metrics_family_new(r, METRICS_COUNTER, "sluice_tokens_total",
                                               "Tokens\\generated\nper model",
                                               (const char *[]){"model", "kind"}, 2, NULL, 0);
    metrics_counter_t *t1 = metrics_counter_get(tok, (const char *[]){"llama", "prompt"});
    metrics_counter_t *t2 =
        metrics_counter_get(tok, (const char *[]){"we\"ird\\mo\ndel", "completion"});
    metrics_gauge_t *g = metrics_gauge_new(r, "sluice_kv_usage", "KV usage");
    double bounds[] = {0.1, 0.5, 2.5};
    metrics_family_t *lat =
        metrics_family_new(r, METRICS_HISTOGRAM, "sluice_ttft_seconds", "Time to first token",
                           (const char *[]){"model"}, 1, bounds, 3);
    metrics_histogram_t *h = metrics_histogram_get(lat, (const char *[]){"llama"});
    metrics_histogram_t *hu =
        metrics_histogram_new(r, "sluice_plain_seconds", NULL, (double[]){1, INFINITY}, 2);
    ck_assert_ptr_nonnull(req);
    ck_assert_ptr_nonnull(t1);
    ck_assert_ptr_nonnull(t2);
    ck_assert_ptr_nonnull(g);
    ck_assert_ptr_nonnull(h);
    ck_assert_ptr_nonnull(hu);

    metrics_counter_inc(req);
    metrics_counter_add(req, 41);
    metrics_counter_add(t1, 7);
    metrics_counter_inc(t2);
    metrics_gauge_set(g, 0.25);
    metrics_gauge_add(g, 0.5);
    metrics_histogram_observe(h, 0.05);
    metrics_histogram_observe(h, 0.1); /* le is inclusive */
    metrics_histogram_observe(h, 1);
    metrics_histogram_observe(h, 100);
    metrics_histogram_observe(h, NAN); /* ignored */
    metrics_histogram_observe(hu, 3);

    const char *want =
        "# HELP sluice_requests_total Requests served\n"
        "# TYPE sluice_requests_total counter\n"
        "sluice_requests_total 42\n"
        "# HELP sluice_tokens_total Tokens\\\\generated\\nper model\n"
        "# TYPE sluice_tokens_total counter\n"
        "sluice_tokens_total{model=\"llama\",kind=\"prompt\"} 7\n"
        "sluice_tokens_total{model=\"we\\\"ird\\\\mo\\ndel\",kind=\"completion\"} 1\n"
        "# HELP sluice_kv_usage KV usage\n"
        "# TYPE sluice_kv_usage gauge\n"
        "sluice_kv_usage 0.75\n"
        "# HELP sluice_ttft_seconds Time to first token\n"
        "# TYPE sluice_ttft_seconds histogram\n"
        "sluice_ttft_seconds_bucket{model=\"llama\",le=\"0.1\"} 2\n"
        "sluice_ttft_seconds_bucket{model=\"llama\",le=\"0.5\"} 2\n"
        "sluice_ttft_seconds_bucket{model=\"llama\",le=\"2.5\"} 3\n"
        "sluice_ttft_seconds_bucket{model=\"llama\",le=\"+Inf\"} 4\n"
        "sluice_ttft_seconds_sum{model=\"llama\"} 101.15\n"
        "sluice_ttft_seconds_count{model=\"llama\"} 4\n"
        "# HELP sluice_plain_seconds \n"
        "# TYPE sluice_plain_seconds histogram\n"
        "sluice_plain_seconds_bucket{le=\"1\"} 0\n"
        "sluice_plain_seconds_bucket{le=\"+Inf\"} 1\n"
        "sluice_plain_seconds_sum 3\n"
        "sluice_plain_seconds_count 1\n";
    char *out = render(r);
    ck_assert_str_eq(out, want);
    free(out);

    ck_assert_uint_eq(metrics_counter_value(req), 42);
    ck_assert_double_eq(metrics_gauge_value(g), 0.75);
    ck_assert_uint_eq(metrics_histogram_count(h), 4);
    ck_assert_double_eq_tol(metrics_histogram_sum(h), 101.15, 1e-9);
    metrics_registry_free(r);
}
END_TEST

START_TEST(test_lookup_returns_same_handle) {
    metrics_registry_t *r = metrics_registry_new();
    metrics_family_t *f =
        metrics_family_new(r, METRICS_GAUGE, "g", "h", (const char *[]){"w"}, 1, NULL, 0);
    metrics_gauge_t *a = metrics_gauge_get(f, (const char *[]){"1"});
    metrics_gauge_t *b = metrics_gauge_get(f, (const char *[]){"1"});
    metrics_gauge_t *c = metrics_gauge_get(f, (const char *[]){"2"});
    ck_assert_ptr_eq(a, b);
    ck_assert_ptr_ne(a, c);
    /* same definition again: same family */
    ck_assert_ptr_eq(
        metrics_family_new(r, METRICS_GAUGE, "g", "other help", (const char *[]){"w"}, 1, NULL, 0),
        f);
    /* wrong type for the family's handles */
    ck_assert_ptr_null(metrics_counter_get(f, (const char *[]){"1"}));
    ck_assert_ptr_null(metrics_histogram_get(f, (const char *[]){"1"}));
    /* NULL label value */
    ck_assert_ptr_null(metrics_gauge_get(f, (const char *[]){NULL}));
    ck_assert_ptr_null(metrics_gauge_get(f, NULL));
    metrics_gauge_set(a, -2);
    metrics_gauge_add(a, -0.5);
    ck_assert_double_eq(metrics_gauge_value(b), -2.5);
    metrics_gauge_set(c, INFINITY);
    char *out = render(r);
    ck_assert_str_eq(out, "# HELP g h\n# TYPE g gauge\ng{w=\"1\"} -2.5\ng{w=\"2\"} +Inf\n");
    free(out);
    metrics_registry_free(r);
}
END_TEST

START_TEST(test_invalid_definitions) {
    sl_log_set_level(SL_LOG_ERROR); /* the rejections below log warnings */
    metrics_registry_t *r = metrics_registry_new();
    ck_assert_ptr_null(metrics_counter_new(r, "", "x"));
    ck_assert_ptr_null(metrics_counter_new(r, "9lives", "x"));
    ck_assert_ptr_null(metrics_counter_new(r, "has space", "x"));
    ck_assert_ptr_null(metrics_counter_new(r, "dash-name", "x"));
    ck_assert_ptr_null(metrics_counter_new(r, NULL, "x"));
    ck_assert_ptr_null(metrics_counter_new(NULL, "ok", "x"));
    ck_assert_ptr_nonnull(metrics_counter_new(r, "ns:sub_total", "colons are fine in names"));
    ck_assert_ptr_null(
        metrics_family_new(r, METRICS_COUNTER, "a", "", (const char *[]){"a:b"}, 1, NULL, 0));
    ck_assert_ptr_null(
        metrics_family_new(r, METRICS_COUNTER, "a", "", (const char *[]){"__x"}, 1, NULL, 0));
    ck_assert_ptr_null(
        metrics_family_new(r, METRICS_COUNTER, "a", "", (const char *[]){"x", "x"}, 2, NULL, 0));
    ck_assert_ptr_null(
        metrics_family_new(r, METRICS_HISTOGRAM, "a", "", (const char *[]){"le"}, 1, NULL, 0));
    ck_assert_ptr_null(metrics_family_new(r, METRICS_COUNTER, "a", "", NULL, 2, NULL, 0));
    ck_assert_ptr_null(metrics_family_new(r, METRICS_COUNTER, "a", "", NULL, 0, (double[]){1}, 1));
    ck_assert_ptr_null(metrics_family_new(r, (metrics_type_t)7, "a", "", NULL, 0, NULL, 0));
    const char *nine[9] = {"a", "b", "c", "d", "e", "f", "g", "h", "i"};
    ck_assert_ptr_null(metrics_family_new(r, METRICS_COUNTER, "a", "", nine, 9, NULL, 0));
    /* buckets: not increasing, duplicate, NaN, too many */
    ck_assert_ptr_null(metrics_histogram_new(r, "h1", "", (double[]){1, 0.5}, 2));
    ck_assert_ptr_null(metrics_histogram_new(r, "h1", "", (double[]){1, 1}, 2));
    ck_assert_ptr_null(metrics_histogram_new(r, "h1", "", (double[]){NAN}, 1));
    ck_assert_ptr_null(metrics_histogram_new(r, "h1", "", (double[]){-INFINITY, 1}, 2));
    double many[METRICS_MAX_BUCKETS + 1];
    for (int i = 0; i <= METRICS_MAX_BUCKETS; i++) many[i] = i;
    ck_assert_ptr_null(metrics_histogram_new(r, "h1", "", many, METRICS_MAX_BUCKETS + 1));
    ck_assert_ptr_nonnull(metrics_histogram_new(r, "h1", "", many, METRICS_MAX_BUCKETS));
    /* same name, different type or labels */
    ck_assert_ptr_nonnull(metrics_counter_new(r, "dup", ""));
    ck_assert_ptr_null(metrics_gauge_new(r, "dup", ""));
    ck_assert_ptr_null(
        metrics_family_new(r, METRICS_COUNTER, "dup", "", (const char *[]){"x"}, 1, NULL, 0));
    /* NULL handles are no-ops */
    metrics_counter_inc(NULL);
    metrics_counter_add(NULL, 3);
    metrics_gauge_set(NULL, 1);
    metrics_gauge_add(NULL, 1);
    metrics_histogram_observe(NULL, 1);
    ck_assert_uint_eq(metrics_counter_value(NULL), 0);
    ck_assert_int_eq(metrics_registry_render(NULL, NULL, NULL), SL_EINVAL);
    metrics_registry_free(r);
    metrics_registry_free(NULL);
    sl_log_set_level(SL_LOG_INFO);
}
END_TEST

START_TEST(test_default_buckets_and_format) {
    metrics_registry_t *r = metrics_registry_new();
    metrics_histogram_t *h = metrics_histogram_new(r, "d_seconds", "d", NULL, 0);
    metrics_histogram_observe(h, 0.003);
    char *out = render(r);
    ck_assert_ptr_nonnull(strstr(out, "d_seconds_bucket{le=\"0.005\"} 1\n"
                                      "d_seconds_bucket{le=\"0.01\"} 1\n"
                                      "d_seconds_bucket{le=\"0.025\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(out, "d_seconds_bucket{le=\"10\"} 1\n"
                                      "d_seconds_bucket{le=\"+Inf\"} 1\n"
                                      "d_seconds_sum 0.003\n"
                                      "d_seconds_count 1\n"));
    free(out);
    metrics_registry_free(r);
    char b[64];
    metrics_format_double(0.1, b, sizeof b);
    ck_assert_str_eq(b, "0.1");
    metrics_format_double(1e6, b, sizeof b);
    ck_assert_str_eq(b, "1e+06");
    metrics_format_double(123456789.0, b, sizeof b);
    ck_assert_str_eq(b, "1.23456789e+08");
    metrics_format_double(999999, b, sizeof b);
    ck_assert_str_eq(b, "999999");
    metrics_format_double(0.0001, b, sizeof b);
    ck_assert_str_eq(b, "0.0001");
    metrics_format_double(0.00001, b, sizeof b);
    ck_assert_str_eq(b, "1e-05");
    metrics_format_double(-2.5, b, sizeof b);
    ck_assert_str_eq(b, "-2.5");
    metrics_format_double(0, b, sizeof b);
    ck_assert_str_eq(b, "0");
    metrics_format_double(NAN, b, sizeof b);
    ck_assert_str_eq(b, "NaN");
    metrics_format_double(-INFINITY, b, sizeof b);
    ck_assert_str_eq(b, "-Inf");
    metrics_format_double(1.0 / 3, b, sizeof b);
    ck_assert_double_eq(strtod(b, NULL), 1.0 / 3);
}
END_TEST

static void collect_cb(metrics_registry_t *r, void *ud) {
    (void)r;
    metrics_gauge_set((metrics_gauge_t *)ud, 17);
}

START_TEST(test_collect_hook) {
    metrics_registry_t *r = metrics_registry_new();
    metrics_gauge_t *g = metrics_gauge_new(r, "computed", "set at scrape time");
    metrics_registry_on_collect(r, collect_cb, g);
    char *out = render(r);
    ck_assert_ptr_nonnull(strstr(out, "computed 17\n"));
    free(out);
    metrics_registry_free(r);
}
END_TEST

#define NTHREADS 8
#define NITERS   200000

typedef struct worker_arg {
    metrics_registry_t *r;
    metrics_family_t *fam;
    metrics_counter_t *shared;
    metrics_gauge_t *gauge;
    metrics_histogram_t *hist;
    int id;
} worker_arg_t;

static void *worker(void *p) {
    worker_arg_t *a = p;
    char id[16];
    snprintf(id, sizeof id, "%d", a->id % 2); /* two threads share each labelled series */
    metrics_counter_t *mine = metrics_counter_get(a->fam, (const char *[]){id});
    for (int i = 0; i < NITERS; i++) {
        metrics_counter_inc(a->shared);
        metrics_counter_add(mine, 2);
        metrics_gauge_add(a->gauge, 1);
        metrics_histogram_observe(a->hist, (double)(i % 4)); /* 0,1,2,3 */
        if (i % 50000 == 0) {                                /* renders race with updates */
            char *out = NULL;
            metrics_registry_render(a->r, &out, NULL);
            free(out);
        }
    }
    return NULL;
}

START_TEST(test_concurrent_updates) {
    metrics_registry_t *r = metrics_registry_new();
    worker_arg_t args[NTHREADS];
    pthread_t th[NTHREADS];
    metrics_family_t *fam = metrics_family_new(r, METRICS_COUNTER, "per_thread_total", "",
                                               (const char *[]){"t"}, 1, NULL, 0);
    metrics_counter_t *shared = metrics_counter_new(r, "shared_total", "");
    metrics_gauge_t *gauge = metrics_gauge_new(r, "inflight", "");
    metrics_histogram_t *hist = metrics_histogram_new(r, "obs", "", (double[]){0.5, 1.5, 2.5}, 3);
    for (int i = 0; i < NTHREADS; i++) {
        args[i] = (worker_arg_t){r, fam, shared, gauge, hist, i};
        ck_assert_int_eq(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
    const uint64_t total = (uint64_t)NTHREADS * NITERS;
    ck_assert_uint_eq(metrics_counter_value(shared), total);
    ck_assert_double_eq(metrics_gauge_value(gauge), (double)total);
    ck_assert_uint_eq(metrics_histogram_count(hist), total);
    ck_assert_double_eq(metrics_histogram_sum(hist), (double)total / 4 * 6);
    char *out = render(r);
    char want[256];
    /* 4 threads per series, each adding 2 per iteration */
    for (int t = 0; t < 2; t++) {
        snprintf(want, sizeof want, "per_thread_total{t=\"%d\"} %llu\n", t,
                 (unsigned long long)NTHREADS / 2 * NITERS * 2);
        ck_assert_msg(strstr(out, want), "per-thread series wrong:\n%s", out);
    }
    snprintf(want, sizeof want,
             "obs_bucket{le=\"0.5\"} %llu\nobs_bucket{le=\"1.5\"} %llu\n"
             "obs_bucket{le=\"2.5\"} %llu\nobs_bucket{le=\"+Inf\"} %llu\n",
             (unsigned long long)total / 4, (unsigned long long)total / 2,
             (unsigned long long)total / 4 * 3, (unsigned long long)total);
    ck_assert_msg(strstr(out, want), "buckets wrong:\n%s", out);
    free(out);
    metrics_registry_free(r);
}
END_TEST

int main(void) {
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_exposition_exact);
    tcase_add_test(tc, test_lookup_returns_same_handle);
    tcase_add_test(tc, test_invalid_definitions);
    tcase_add_test(tc, test_default_buckets_and_format);
    tcase_add_test(tc, test_collect_hook);
    tcase_add_test(tc, test_concurrent_updates);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
