/* test_sysserver.c - /metrics, /health, /live, 404/405 over real HTTP on loopback. */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/metrics.h"
#include "common/runtime/sysserver.h"
#include "tests/harness/harness.h"

#include <arpa/inet.h>
#include <check.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct http_resp {
    long status;
    char body[65536];
    size_t len;
    char ctype[128];
} http_resp_t;

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
    http_resp_t *r = ud;
    size_t k = size * n;
    size_t room = sizeof r->body - 1 - r->len;
    size_t c = k < room ? k : room;
    memcpy(r->body + r->len, p, c);
    r->len += c;
    r->body[r->len] = 0;
    return k;
}

/* Performs method on http://127.0.0.1:port/path. Returns the curl code. */
static int http(const char *method, int port, const char *path, http_resp_t *r) {
    memset(r, 0, sizeof *r);
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    CURL *c = curl_easy_init();
    ck_assert_ptr_nonnull(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "GET") != 0)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    char *ct = NULL;
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
    if (ct) snprintf(r->ctype, sizeof r->ctype, "%s", ct);
    curl_easy_cleanup(c);
    return (int)rc;
}

/* Health state flipped by the test. */
static volatile int healthy_flag = 1;
static volatile int health_calls;

static bool health_cb(void *ud, char **json) {
    (void)ud;
    __atomic_fetch_add(&health_calls, 1, __ATOMIC_RELAXED);
    int h = __atomic_load_n(&healthy_flag, __ATOMIC_RELAXED);
    if (asprintf(json, "{\"status\":\"%s\",\"workers\":%d}", h ? "ready" : "draining", 3) < 0)
        *json = NULL;
    return h != 0;
}

START_TEST(test_endpoints) {
    metrics_registry_t *reg = metrics_registry_new();
    metrics_counter_t *c = metrics_counter_new(reg, "sluice_test_requests_total", "Requests");
    metrics_counter_add(c, 5);
    metrics_family_t *f = metrics_family_new(reg, METRICS_GAUGE, "sluice_test_load", "Load",
                                             (const char *[]){"worker"}, 1, NULL, 0);
    metrics_gauge_set(metrics_gauge_get(f, (const char *[]){"a\"b"}), 0.5);

    sysserver_opts_t o = {.host = "127.0.0.1", .port = 0, .metrics = reg, .health = health_cb};
    sysserver_t *s = NULL;
    ck_assert_int_eq(sysserver_start(&o, &s), 0);
    ck_assert_ptr_nonnull(s);
    int port = sysserver_port(s);
    ck_assert_int_gt(port, 0);

    http_resp_t r;
    ck_assert_int_eq(http("GET", port, "/metrics", &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.ctype, "text/plain; version=0.0.4; charset=utf-8");
    ck_assert_str_eq(r.body, "# HELP sluice_test_requests_total Requests\n"
                             "# TYPE sluice_test_requests_total counter\n"
                             "sluice_test_requests_total 5\n"
                             "# HELP sluice_test_load Load\n"
                             "# TYPE sluice_test_load gauge\n"
                             "sluice_test_load{worker=\"a\\\"b\"} 0.5\n");
    /* values change between scrapes */
    metrics_counter_inc(c);
    ck_assert_int_eq(http("GET", port, "/metrics", &r), 0);
    ck_assert_ptr_nonnull(strstr(r.body, "sluice_test_requests_total 6\n"));

    ck_assert_int_eq(http("GET", port, "/health", &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.ctype, "application/json");
    ck_assert_str_eq(r.body, "{\"status\":\"ready\",\"workers\":3}");
    __atomic_store_n(&healthy_flag, 0, __ATOMIC_RELAXED);
    ck_assert_int_eq(http("GET", port, "/health", &r), 0);
    ck_assert_int_eq(r.status, 503);
    ck_assert_str_eq(r.body, "{\"status\":\"draining\",\"workers\":3}");
    /* /live does not depend on health */
    ck_assert_int_eq(http("GET", port, "/live", &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "{\"status\":\"live\"}");
    __atomic_store_n(&healthy_flag, 1, __ATOMIC_RELAXED);
    ck_assert_int_eq(http("GET", port, "/health?verbose=1", &r), 0);
    ck_assert_int_eq(r.status, 200);

    /* unknown paths and methods */
    const char *missing[] = {"/",        "/metricsx",      "/metrics/x",
                             "/healthz", "/../etc/passwd", "/live/"};
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
        ck_assert_int_eq(http("GET", port, missing[i], &r), 0);
        ck_assert_msg(r.status == 404, "%s gave %ld", missing[i], r.status);
    }
    ck_assert_int_eq(http("POST", port, "/metrics", &r), 0);
    ck_assert_int_eq(r.status, 405);
    ck_assert_int_eq(http("DELETE", port, "/live", &r), 0);
    ck_assert_int_eq(r.status, 405);
    ck_assert_int_eq(http("HEAD", port, "/metrics", &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.len, 0);
    ck_assert_int_gt(health_calls, 0);

    /* a clean stop, and a prompt one (civetweb alone takes 2 s after a request) */
    long long t0 = harness_now_ms();
    sysserver_stop(s);
    ck_assert_int_lt(harness_now_ms() - t0, 1000);
    /* stopped: connection refused */
    ck_assert_int_ne(http("GET", port, "/live", &r), 0);
    metrics_registry_free(reg);
}
END_TEST

START_TEST(test_defaults_without_callbacks) {
    sysserver_opts_t o = {.host = "127.0.0.1"};
    sysserver_t *s = NULL;
    ck_assert_int_eq(sysserver_start(&o, &s), 0);
    int port = sysserver_port(s);
    http_resp_t r;
    ck_assert_int_eq(http("GET", port, "/health", &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "{\"status\":\"healthy\"}");
    ck_assert_int_eq(http("GET", port, "/metrics", &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.len, 0);
    sysserver_stop(s);
}
END_TEST

static char logged[1024];

static void capture(sl_log_level_t level, const char *line, void *ud) {
    (void)level;
    (void)ud;
    snprintf(logged, sizeof logged, "%s", line);
}

START_TEST(test_bad_options_and_busy_port) {
    sysserver_t *s = (sysserver_t *)0x1;
    ck_assert_int_eq(sysserver_start(NULL, &s), SL_EINVAL);
    ck_assert_ptr_null(s);
    sysserver_opts_t o = {.host = "127.0.0.1", .port = 70000};
    ck_assert_int_eq(sysserver_start(&o, &s), SL_EINVAL);
    o.port = -1;
    ck_assert_int_eq(sysserver_start(&o, &s), SL_EINVAL);
    o.port = 0;
    o.host = "127.0.0.1,0.0.0.0"; /* would let a caller open two listeners */
    ck_assert_int_eq(sysserver_start(&o, &s), SL_EINVAL);

    /* a port somebody else holds */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(fd, 1), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    o.host = "127.0.0.1";
    o.port = ntohs(a.sin_port);
    sl_log_set_sink(capture, NULL);
    ck_assert_int_eq(sysserver_start(&o, &s), SL_EIO);
    sl_log_set_sink(NULL, NULL);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(logged, "cannot listen on 127.0.0.1:"), "log: %s", logged);
    close(fd);
    sysserver_stop(NULL);
    ck_assert_int_eq(sysserver_port(NULL), -1);
}
END_TEST

typedef struct scraper_arg {
    int port;
    int ok;
} scraper_arg_t;

static void *scraper(void *p) {
    scraper_arg_t *a = p;
    http_resp_t *r = malloc(sizeof *r);
    for (int i = 0; i < 20; i++) {
        if (http("GET", a->port, i % 2 ? "/metrics" : "/health", r) == 0 && r->status == 200)
            a->ok++;
    }
    free(r);
    return NULL;
}

/* Several clients at once while the hot path keeps updating. */
START_TEST(test_concurrent_scrapes) {
    metrics_registry_t *reg = metrics_registry_new();
    metrics_counter_t *c = metrics_counter_new(reg, "x_total", "x");
    sysserver_opts_t o = {.host = "127.0.0.1", .metrics = reg, .num_threads = 2};
    sysserver_t *s = NULL;
    ck_assert_int_eq(sysserver_start(&o, &s), 0);
    scraper_arg_t args[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (scraper_arg_t){sysserver_port(s), 0};
        pthread_create(&th[i], NULL, scraper, &args[i]);
    }
    for (int i = 0; i < 100000; i++) metrics_counter_inc(c);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(args[i].ok, 20);
    }
    sysserver_stop(s);
    metrics_registry_free(reg);
}
END_TEST

int main(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    Suite *su = suite_create("sysserver");
    TCase *tc = tcase_create("http");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_endpoints);
    tcase_add_test(tc, test_defaults_without_callbacks);
    tcase_add_test(tc, test_bad_options_and_busy_port);
    tcase_add_test(tc, test_concurrent_scrapes);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    curl_global_cleanup();
    return nf == 0 ? 0 : 1;
}
