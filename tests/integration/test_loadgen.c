/* test_loadgen.c - runs build/bench/loadgen against a small OpenAI-style
 * server started inside the test (civetweb) that streams a known number of
 * tokens with known delays, and checks what loadgen reports: request and
 * token counts, TTFT / ITL / E2E consistent with the delays, errors by kind
 * (HTTP 500, refused connection, error events, cut streams), closed-loop and
 * Poisson modes, non-streamed completions, shared prefixes and bad flags.
 * The "nats" case runs the direct-to-worker mode (--target nats) against a
 * real mocker decode worker found through real etcd and NATS, and checks
 * that it agrees with the HTTP path through a real sluice-frontend. */
#include "common/base/sse.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <fcntl.h>
#include <spawn.h>
#include <civetweb.h>
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the fake server ---------------------------------------------------------------------- */

typedef struct fake_cfg {
    int first_ms;         /* delay before the first content event */
    int itl_ms;           /* per token */
    int tokens_per_event; /* tokens carried by one content event */
} fake_cfg_t;

static fake_cfg_t fake = {40, 10, 1};
static atomic_int fake_requests;
static atomic_int fake_flaky;
static atomic_int fake_inflight, fake_max_inflight; /* requests being answered */
#define MAX_PROMPTS 256
static pthread_mutex_t fake_mu = PTHREAD_MUTEX_INITIALIZER;
static char *fake_prompts[MAX_PROMPTS];
static int fake_nprompts;

static void fake_sleep_ms(int ms) {
    if (ms > 0) usleep((useconds_t)ms * 1000);
}

static void fake_send_event(struct mg_connection *conn, const char *data) {
    char buf[4096];
    size_t len = 0;
    if (sse_event_encode(NULL, data, strlen(data), buf, sizeof buf, &len) == 0)
        mg_send_chunk(conn, buf, (unsigned)len);
}

static void fake_send_json(struct mg_connection *conn, int status, const char *body) {
    char cl[32];
    snprintf(cl, sizeof cl, "%zu", strlen(body));
    mg_response_header_start(conn, status);
    mg_response_header_add(conn, "Content-Type", "application/json", -1);
    mg_response_header_add(conn, "Content-Length", cl, -1);
    mg_response_header_send(conn);
    mg_write(conn, body, strlen(body));
}

static int fake_count_words(const char *s) {
    int n = 0;
    for (const char *p = s; *p; p++)
        if (*p != ' ' && (p == s || p[-1] == ' ')) n++;
    return n;
}

static int fake_handler(struct mg_connection *conn, void *cbdata) {
    (void)cbdata;
    const struct mg_request_info *ri = mg_get_request_info(conn);
    bool chat = strstr(ri->local_uri, "/chat/") != NULL;
    long long cl = ri->content_length;
    if (cl < 0 || cl >= 65536) {
        fake_send_json(conn, 413, "{\"error\":{\"message\":\"too big\"}}");
        return 413;
    }
    char *body = malloc((size_t)cl + 1); /* civetweb's worker stacks are small */
    if (!body) return 500;
    int got = 0;
    while (got < cl) {
        int r = mg_read(conn, body + got, (size_t)(cl - got));
        if (r <= 0) break;
        got += r;
    }
    body[got] = 0;
    atomic_fetch_add(&fake_requests, 1);
    int cur = atomic_fetch_add(&fake_inflight, 1) + 1;
    int mx = atomic_load(&fake_max_inflight);
    while (cur > mx && !atomic_compare_exchange_weak(&fake_max_inflight, &mx, cur)) {
    }
    cJSON *req = cJSON_Parse(body);
    free(body);
    const cJSON *model = cJSON_GetObjectItem(req, "model");
    const char *m = cJSON_IsString(model) ? model->valuestring : "";
    const cJSON *mt = cJSON_GetObjectItem(req, "max_tokens");
    int ntok = cJSON_IsNumber(mt) ? mt->valueint : 16;
    bool stream = cJSON_IsTrue(cJSON_GetObjectItem(req, "stream"));
    const cJSON *so = cJSON_GetObjectItem(req, "stream_options");
    bool cont = cJSON_IsTrue(cJSON_GetObjectItem(so, "continuous_usage_stats"));
    const char *prompt = "";
    if (chat) {
        const cJSON *msg = cJSON_GetArrayItem(cJSON_GetObjectItem(req, "messages"), 0);
        const cJSON *c = cJSON_GetObjectItem(msg, "content");
        if (cJSON_IsString(c)) prompt = c->valuestring;
    } else {
        const cJSON *p = cJSON_GetObjectItem(req, "prompt");
        if (cJSON_IsString(p)) prompt = p->valuestring;
    }
    int ptoks = fake_count_words(prompt);
    pthread_mutex_lock(&fake_mu);
    if (fake_nprompts < MAX_PROMPTS) fake_prompts[fake_nprompts++] = strdup(prompt);
    pthread_mutex_unlock(&fake_mu);

    int status = 200;
    if (!strcmp(m, "error500") ||
        (!strcmp(m, "flaky4") && atomic_fetch_add(&fake_flaky, 1) % 4 == 3)) {
        fake_send_json(conn, 500, "{\"error\":{\"message\":\"injected failure\",\"code\":500}}");
        status = 500;
        goto out;
    }
    char ev[1024];
    if (!stream) {
        fake_sleep_ms(fake.first_ms + (ntok - 1) * fake.itl_ms);
        snprintf(ev, sizeof ev,
                 chat
                     ? "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":"
                       "\"x\"},\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":%d,"
                       "\"completion_tokens\":%d}}"
                     : "{\"choices\":[{\"index\":0,\"text\":\"x\",\"finish_reason\":\"length\"}],"
                       "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d}}",
                 ptoks, ntok);
        fake_send_json(conn, 200, ev);
        goto out;
    }
    mg_response_header_start(conn, 200);
    mg_response_header_add(conn, "Content-Type", "text/event-stream", -1);
    mg_response_header_add(conn, "Transfer-Encoding", "chunked", -1);
    mg_response_header_send(conn);
    if (chat) /* a role-only first chunk: empty content is not a token */
        fake_send_event(conn, "{\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                              "\"content\":\"\"}}]}");
    mg_send_chunk(conn, ": keep-alive\r\n\r\n", 16);
    int sent = 0, events = 0;
    while (sent < ntok) {
        int k = ntok - sent < fake.tokens_per_event ? ntok - sent : fake.tokens_per_event;
        fake_sleep_ms(sent == 0 ? fake.first_ms : k * fake.itl_ms);
        sent += k;
        events++;
        char usage[128] = "";
        if (cont)
            snprintf(usage, sizeof usage,
                     ",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d}", ptoks, sent);
        snprintf(ev, sizeof ev,
                 chat ? "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok\"}}]%s}"
                      : "{\"choices\":[{\"index\":0,\"text\":\"tok\"}]%s}",
                 usage);
        fake_send_event(conn, ev);
        if (!strcmp(m, "streamerr") && events == 2) {
            fake_send_event(conn, "{\"error\":{\"message\":\"worker died\",\"code\":503}}");
            break;
        }
        if (!strcmp(m, "nodone") && events == 2) break;
    }
    if (!strcmp(m, "nodone")) goto end;
    snprintf(ev, sizeof ev,
             "{\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
             "\"total_tokens\":%d}}",
             ptoks, sent, ptoks + sent);
    fake_send_event(conn, ev);
    fake_send_event(conn, "[DONE]");
end:
    mg_send_chunk(conn, "", 0);
out:
    atomic_fetch_sub(&fake_inflight, 1);
    cJSON_Delete(req);
    return status;
}

static struct mg_context *fake_ctx;
static int fake_port;

static void fake_start(int threads) {
    char ports[64], nthreads[16];
    fake_port = harness_free_port();
    ck_assert_int_gt(fake_port, 0);
    snprintf(ports, sizeof ports, "127.0.0.1:%d", fake_port);
    snprintf(nthreads, sizeof nthreads, "%d", threads);
    const char *opts[] = {"listening_ports", ports, "num_threads", nthreads, "enable_keep_alive",
                          "yes", "request_timeout_ms", "30000",
                          /* without it, Nagle + the client's delayed ACK hold small
                           * events back ~40 ms and merge them */
                          "tcp_nodelay", "1", NULL};
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof cb);
    fake_ctx = mg_start(&cb, NULL, opts);
    ck_assert_ptr_nonnull(fake_ctx);
    mg_set_request_handler(fake_ctx, "/v1/chat/completions", fake_handler, NULL);
    mg_set_request_handler(fake_ctx, "/v1/completions", fake_handler, NULL);
}

static void fake_stop(void) {
    mg_stop(fake_ctx);
    fake_ctx = NULL;
    for (int i = 0; i < fake_nprompts; i++) free(fake_prompts[i]);
    fake_nprompts = 0;
}

/* ---- running loadgen ------------------------------------------------------------------------ */

static char json_path[512];
static char log_path[512];
static char tmpdir[256];

static void setup(void) {
    ck_assert_int_eq(harness_mkdtemp("loadgen", tmpdir, sizeof tmpdir), 0);
    snprintf(json_path, sizeof json_path, "%s/out.json", tmpdir);
    snprintf(log_path, sizeof log_path, "%s/loadgen.log", tmpdir);
}

static void teardown(void) {
    harness_rmtree(tmpdir);
}

static void dump_log(void);
static rlim_t spawn_nofile; /* soft RLIMIT_NOFILE for the next loadgen, 0 = inherit */

static const char *loadgen_path(char *buf, size_t len) {
    const char *dir = getenv("SLUICE_BENCH_DIR");
    snprintf(buf, len, "%s/loadgen", dir && *dir ? dir : "build/bench");
    return buf;
}

/* Runs loadgen with the server URL, --json and args (NULL-terminated);
 * returns its exit code (or -1), and the parsed JSON in *out when asked. */
/* Starts loadgen with argv (argv[0] is replaced by the binary's path),
 * output appended to log_path. */
static pid_t spawn_loadgen(char *argv[]) {
    char bin[512];
    argv[0] = (char *)loadgen_path(bin, sizeof bin);
    /* posix_spawn, not fork: this process runs civetweb's threads, and a fork
     * from a threaded process crashes under ASan (glibc's reclaim_stacks). */
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid = -1;
    struct rlimit saved;
    getrlimit(RLIMIT_NOFILE, &saved);
    if (spawn_nofile) { /* the child inherits a low soft limit */
        struct rlimit low = {spawn_nofile, saved.rlim_max};
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
    }
    int sp = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    setrlimit(RLIMIT_NOFILE, &saved);
    posix_spawn_file_actions_destroy(&fa);
    ck_assert_int_eq(sp, 0);
    return pid;
}

static int run_loadgen(const char *url, const char *const args[], cJSON **out) {
    char urlbuf[128];
    char *argv[64];
    int n = 0;
    if (!url) {
        snprintf(urlbuf, sizeof urlbuf, "http://127.0.0.1:%d", fake_port);
        url = urlbuf;
    }
    unlink(json_path);
    argv[n++] = NULL; /* the binary */
    argv[n++] = "--url";
    argv[n++] = (char *)url;
    argv[n++] = "--json";
    argv[n++] = json_path;
    argv[n++] = "--timeout";
    argv[n++] = "20";
    for (int i = 0; args[i] && n < 62; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    pid_t pid = spawn_loadgen(argv);
    int status = 0;
    long long t0 = harness_now_ms();
    while (!harness_exited(pid, &status)) {
        if (harness_now_ms() - t0 > 50000) {
            harness_kill(pid, SIGKILL, 1000);
            ck_abort_msg("loadgen did not finish in 50 s");
        }
        harness_sleep_ms(10);
    }
    if (out) {
        *out = NULL;
        FILE *f = fopen(json_path, "r");
        if (f) {
            static char text[1 << 16];
            size_t len = fread(text, 1, sizeof text - 1, f);
            text[len] = 0;
            fclose(f);
            *out = cJSON_Parse(text);
        }
    }
    int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (rc != 0 && rc != 2) dump_log();
    return rc;
}

static double jnum(const cJSON *root, const char *a, const char *b) {
    const cJSON *x = cJSON_GetObjectItem(root, a);
    if (b) x = cJSON_GetObjectItem(x, b);
    ck_assert_msg(cJSON_IsNumber(x), "missing %s.%s", a, b ? b : "");
    return x->valuedouble;
}

static void dump_log(void) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cat %s >&2", log_path);
    if (system(cmd)) {
    }
}

/* ---- tests ----------------------------------------------------------------------------------- */

START_TEST(test_stream_closed_loop_timings) {
    fake = (fake_cfg_t){40, 10, 1};
    fake_start(32);
    cJSON *j = NULL;
    const char *args[] = {"--model",  "m", "--concurrency", "4", "--num-requests", "12",
                          "--warmup", "2", "--osl",         "8", "--isl",          "30",
                          NULL};
    int rc = run_loadgen(NULL, args, &j);
    ck_assert_int_eq(rc, 0);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(atomic_load(&fake_requests), 14); /* warmup included */
    ck_assert_int_eq(atomic_load(&fake_max_inflight), 4);
    ck_assert_double_eq(jnum(j, "requests", "sent"), 12);
    ck_assert_double_eq(jnum(j, "requests", "ok"), 12);
    ck_assert_double_eq(jnum(j, "requests", "failed"), 0);
    ck_assert_double_eq(jnum(j, "output_tokens", "min"), 8); /* from usage */
    ck_assert_double_eq(jnum(j, "output_tokens", "max"), 8);
    ck_assert_double_eq(jnum(j, "input_tokens", "p50"), 30);
    /* TTFT >= the server's 40 ms; ITL per token ~10 ms; E2E >= 40 + 7 * 10. */
    double ttft50 = jnum(j, "ttft_ms", "p50"), itl50 = jnum(j, "itl_ms", "p50");
    ck_assert_double_ge(jnum(j, "ttft_ms", "min"), 39);
    ck_assert_double_lt(ttft50, 250);
    ck_assert_double_eq(jnum(j, "ttft_ms", "count"), 12);
    ck_assert_double_eq(jnum(j, "itl_ms", "count"), 12 * 7);
    ck_assert_double_ge(itl50, 8);
    ck_assert_double_lt(itl50, 60);
    ck_assert_double_ge(jnum(j, "e2e_ms", "min"), 109);
    ck_assert_double_lt(jnum(j, "e2e_ms", "p50"), 800);
    /* E2E ~ TTFT + 7 ITL, each measured independently. */
    double e2e_mean = jnum(j, "e2e_ms", "mean");
    double model = jnum(j, "ttft_ms", "mean") + 7 * jnum(j, "itl_ms", "mean");
    ck_assert_double_lt(e2e_mean - model, 10);
    ck_assert_double_gt(e2e_mean - model, -10);
    /* TPOT per request = (E2E - TTFT) / 7: the mean ITL by construction. */
    ck_assert_double_eq(jnum(j, "tpot_ms", "count"), 12);
    ck_assert_double_eq_tol(jnum(j, "tpot_ms", "mean"), jnum(j, "itl_ms", "mean"), 1.0);
    /* 12 requests, 4 at a time, ~110 ms each: three rounds. */
    double dur = jnum(j, "duration_s", NULL);
    ck_assert_double_ge(dur, 0.32);
    ck_assert_double_lt(dur, 5);
    ck_assert_double_eq_tol(jnum(j, "request_throughput", NULL), 12 / dur, 1e-6);
    ck_assert_double_eq_tol(jnum(j, "output_token_throughput", NULL), 96 / dur, 1e-6);
    ck_assert_double_eq_tol(jnum(j, "total_token_throughput", NULL), (96 + 360) / dur, 1e-6);
    cJSON_Delete(j);
    fake_stop();
}
END_TEST

START_TEST(test_multi_token_events) {
    fake = (fake_cfg_t){20, 10, 2}; /* events of 2 tokens, 20 ms apart */
    fake_start(16);
    cJSON *j = NULL;
    const char *args[] = {"--concurrency", "2", "--num-requests",     "4",
                          "--osl",         "8", "--continuous-usage", NULL};
    ck_assert_int_eq(run_loadgen(NULL, args, &j), 0);
    ck_assert_double_eq(jnum(j, "requests", "ok"), 4);
    /* Per-chunk usage says 2 tokens per event: 3 gaps x 2 tokens, ~10 ms each. */
    ck_assert_double_eq(jnum(j, "itl_ms", "count"), 4 * 6);
    ck_assert_double_ge(jnum(j, "itl_ms", "p50"), 8);
    ck_assert_double_lt(jnum(j, "itl_ms", "p50"), 16);
    ck_assert_double_eq(jnum(j, "output_tokens", "p50"), 8);
    cJSON_Delete(j);
    /* Without per-chunk usage each event counts as one token: ~20 ms gaps. */
    const char *args2[] = {"--concurrency", "2", "--num-requests", "4", "--osl", "8", NULL};
    ck_assert_int_eq(run_loadgen(NULL, args2, &j), 0);
    ck_assert_double_eq(jnum(j, "itl_ms", "count"), 4 * 3);
    ck_assert_double_ge(jnum(j, "itl_ms", "p50"), 16); /* a late event shortens the next gap */
    ck_assert_double_eq(jnum(j, "output_tokens", "p50"), 8); /* final usage still wins */
    cJSON_Delete(j);
    fake_stop();
}
END_TEST

START_TEST(test_request_rate_poisson) {
    fake = (fake_cfg_t){5, 2, 1};
    fake_start(32);
    cJSON *j = NULL;
    const char *args[] = {
        "--request-rate", "40", "--num-requests", "30", "--osl", "4", "--seed", "7", NULL};
    long long t0 = harness_now_ms();
    ck_assert_int_eq(run_loadgen(NULL, args, &j), 0);
    long long wall = harness_now_ms() - t0;
    ck_assert_double_eq(jnum(j, "requests", "ok"), 30);
    ck_assert_int_eq(atomic_load(&fake_requests), 30);
    /* 30 arrivals at 40/s take ~0.75 s (not the ~0.1 s a closed loop would). */
    double dur = jnum(j, "duration_s", NULL);
    ck_assert_double_gt(dur, 0.35);
    ck_assert_double_lt(dur, 3);
    ck_assert_int_lt(wall, 10000);
    const cJSON *cfg = cJSON_GetObjectItem(j, "config");
    ck_assert_double_eq(cJSON_GetObjectItem(cfg, "request-rate")->valuedouble, 40);
    cJSON_Delete(j);
    fake_stop();
}
END_TEST

/* Poisson arrivals faster than the cap allows: never more than the cap in
 * flight, and the run takes as long as the cap dictates. */
START_TEST(test_request_rate_capped) {
    fake = (fake_cfg_t){50, 5, 1};
    fake_start(16);
    cJSON *j = NULL;
    const char *args[] = {"--request-rate",
                          "200",
                          "--concurrency",
                          "2",
                          "--num-requests",
                          "10",
                          "--osl",
                          "3",
                          "--url",
                          NULL,
                          NULL};
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/", fake_port); /* a /v1 base works too */
    args[9] = url;
    ck_assert_int_eq(run_loadgen(NULL, args, &j), 0);
    ck_assert_double_eq(jnum(j, "requests", "ok"), 10);
    ck_assert_int_eq(atomic_load(&fake_max_inflight), 2);
    ck_assert_double_ge(jnum(j, "duration_s", NULL), 5 * 0.06 - 0.01); /* 5 rounds of ~60 ms */
    /* Waiting for a free slot is not latency: TTFT stays near the server's 50 ms. */
    ck_assert_double_lt(jnum(j, "ttft_ms", "p50"), 150);
    cJSON_Delete(j);
    fake_stop();
}
END_TEST

START_TEST(test_errors_counted) {
    fake = (fake_cfg_t){5, 2, 1};
    fake_start(16);
    cJSON *j = NULL;
    /* Every 4th request gets a 500. */
    const char *a1[] = {"--model", "flaky4", "--concurrency", "2", "--num-requests", "20", "--osl",
                        "4",       NULL};
    ck_assert_int_eq(run_loadgen(NULL, a1, &j), 0);
    ck_assert_double_eq(jnum(j, "requests", "ok"), 15);
    ck_assert_double_eq(jnum(j, "requests", "failed"), 5);
    const cJSON *e500 = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "errors"), "http_500");
    ck_assert_ptr_nonnull(e500);
    ck_assert_double_eq(jnum(e500, "count", NULL), 5);
    ck_assert_ptr_nonnull(strstr(cJSON_GetObjectItem(e500, "example")->valuestring, "injected"));
    ck_assert_double_eq(jnum(j, "e2e_ms", "count"), 15); /* failures are not timed */
    cJSON_Delete(j);
    /* An error event inside the stream, and a stream cut before [DONE]. */
    const char *a2[] = {
        "--model", "streamerr", "--concurrency", "2", "--num-requests", "3", "--osl", "6", NULL};
    ck_assert_int_eq(run_loadgen(NULL, a2, &j), 0);
    ck_assert_double_eq(jnum(j, "requests", "failed"), 3);
    ck_assert_double_eq(jnum(cJSON_GetObjectItem(j, "errors"), "stream_error", "count"), 3);
    cJSON_Delete(j);
    const char *a3[] = {"--model", "nodone", "--concurrency", "1", "--num-requests", "2", "--osl",
                        "6",       NULL};
    ck_assert_int_eq(run_loadgen(NULL, a3, &j), 0);
    ck_assert_double_eq(jnum(cJSON_GetObjectItem(j, "errors"), "incomplete_stream", "count"), 2);
    ck_assert_double_eq(jnum(j, "ttft_ms", "count"), 0);
    cJSON_Delete(j);
    fake_stop();
}
END_TEST

START_TEST(test_connection_refused) {
    int port = harness_free_port(); /* nothing listens there */
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    cJSON *j = NULL;
    const char *args[] = {"--concurrency", "3", "--num-requests", "9", NULL};
    ck_assert_int_eq(run_loadgen(url, args, &j), 0);
    ck_assert_double_eq(jnum(j, "requests", "sent"), 9);
    ck_assert_double_eq(jnum(j, "requests", "ok"), 0);
    ck_assert_double_eq(jnum(j, "requests", "failed"), 9);
    ck_assert_double_eq(jnum(cJSON_GetObjectItem(j, "errors"), "connect", "count"), 9);
    ck_assert_double_eq(jnum(j, "request_throughput", NULL), 0);
    cJSON_Delete(j);
}
END_TEST

START_TEST(test_completions_non_stream_and_duration) {
    fake = (fake_cfg_t){30, 5, 1};
    fake_start(16);
    cJSON *j = NULL;
    const char *args[] = {"--endpoint-type",
                          "completions",
                          "--no-stream",
                          "--concurrency",
                          "3",
                          "--num-requests",
                          "6",
                          "--osl",
                          "5",
                          NULL};
    ck_assert_int_eq(run_loadgen(NULL, args, &j), 0);
    ck_assert_double_eq(jnum(j, "requests", "ok"), 6);
    ck_assert_double_eq(jnum(j, "ttft_ms", "count"), 0); /* not measurable without a stream */
    ck_assert_double_eq(jnum(j, "output_tokens", "p50"), 5);
    ck_assert_double_ge(jnum(j, "e2e_ms", "min"), 49); /* 30 + 4 x 5 */
    ck_assert_str_eq(
        cJSON_GetObjectItem(cJSON_GetObjectItem(j, "config"), "endpoint")->valuestring +
            strlen("http://127.0.0.1:") + (fake_port >= 10000 ? 5 : 4),
        "/v1/completions");
    cJSON_Delete(j);
    /* Duration mode: requests start for 1 s, then the run drains. */
    fake = (fake_cfg_t){5, 1, 1};
    const char *a2[] = {"--endpoint-type", "completions", "--duration", "1", "--concurrency", "2",
                        "--osl",           "3",           NULL};
    ck_assert_int_eq(run_loadgen(NULL, a2, &j), 0);
    double ok = jnum(j, "requests", "ok");
    ck_assert_double_ge(ok, 10);
    ck_assert_double_eq(jnum(j, "requests", "sent"), ok);
    ck_assert_double_ge(jnum(j, "duration_s", NULL), 0.95);
    ck_assert_double_lt(jnum(j, "duration_s", NULL), 3);
    cJSON_Delete(j);
    fake_stop();
}
END_TEST

START_TEST(test_shared_prefix_and_seed) {
    fake = (fake_cfg_t){1, 1, 1};
    fake_start(8);
    const char *args[] = {
        "--concurrency",         "1",   "--num-requests", "12", "--osl",  "2", "--isl", "20",
        "--shared-prefix-ratio", "0.5", "--num-prefixes", "2",  "--seed", "3", NULL};
    ck_assert_int_eq(run_loadgen(NULL, args, NULL), 0);
    ck_assert_int_eq(fake_nprompts, 12);
    /* Every prompt has 20 words; the first 10 are one of at most 2 prefixes. */
    char *firsts[12];
    int distinct_prefix = 0, distinct_full = 0;
    for (int i = 0; i < 12; i++) {
        ck_assert_int_eq(fake_count_words(fake_prompts[i]), 20);
        char *p = fake_prompts[i];
        int words = 0;
        size_t k = 0;
        for (; p[k] && words < 10; k++)
            if (p[k] == ' ') words++;
        firsts[i] = strndup(p, k);
        bool seen = false, seen_full = false;
        for (int m = 0; m < i; m++) {
            seen |= !strcmp(firsts[m], firsts[i]);
            seen_full |= !strcmp(fake_prompts[m], fake_prompts[i]);
        }
        distinct_prefix += !seen;
        distinct_full += !seen_full;
    }
    ck_assert_int_ge(distinct_prefix, 1);
    ck_assert_int_le(distinct_prefix, 2);
    ck_assert_int_eq(distinct_full, 12); /* the rest of each prompt differs */
    /* Same seed: the same prompts in the same order. */
    char *again[12];
    for (int i = 0; i < 12; i++) again[i] = strdup(fake_prompts[i]);
    for (int i = 0; i < fake_nprompts; i++) free(fake_prompts[i]);
    fake_nprompts = 0;
    ck_assert_int_eq(run_loadgen(NULL, args, NULL), 0);
    ck_assert_int_eq(fake_nprompts, 12);
    for (int i = 0; i < 12; i++) {
        ck_assert_str_eq(again[i], fake_prompts[i]);
        free(again[i]);
        free(firsts[i]);
    }
    fake_stop();
}
END_TEST

/* 1,024 concurrent streams, started with a soft RLIMIT_NOFILE of 256: loadgen
 * must raise its own limit to hold them. */
START_TEST(test_many_streams) {
    fake = (fake_cfg_t){100, 20, 1};
    fake_start(1100);
    cJSON *j = NULL;
    const char *args[] = {
        "--concurrency", "1024", "--num-requests", "2048", "--osl", "4", "--isl", "16", NULL};
    spawn_nofile = 256;
    int rc = run_loadgen(NULL, args, &j);
    spawn_nofile = 0;
    ck_assert_int_eq(rc, 0);
    ck_assert_double_eq(jnum(j, "requests", "ok"), 2048);
    ck_assert_double_eq(jnum(j, "itl_ms", "count"), 2048 * 3);
    ck_assert_double_ge(jnum(j, "ttft_ms", "min"), 99);
    cJSON_Delete(j);
    fake_stop();
}
END_TEST

/* loadgen --serve-stub: the calibration server answers as documented, and
 * loadgen measures its delays. */
START_TEST(test_serve_stub) {
    int port = harness_free_port();
    char listen[64], url[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    char *argv[] = {NULL,   "--serve-stub",
                    listen, "--stub-threads",
                    "16",   "--stub-ttft-ms",
                    "30",   "--stub-itl-ms",
                    "5",    NULL};
    pid_t stub = spawn_loadgen(argv);
    long long t0 = harness_now_ms();
    cJSON *j = NULL;
    const char *args[] = {"--concurrency", "4", "--num-requests", "8", "--osl", "6", NULL};
    int rc;
    while ((rc = run_loadgen(url, args, &j)) == 0 && jnum(j, "requests", "ok") == 0 &&
           harness_now_ms() - t0 < 10000) { /* until the stub listens */
        cJSON_Delete(j);
        j = NULL;
        harness_sleep_ms(50);
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_double_eq(jnum(j, "requests", "ok"), 8);
    ck_assert_double_eq(jnum(j, "output_tokens", "p50"), 6);
    ck_assert_double_ge(jnum(j, "ttft_ms", "min"), 29);
    ck_assert_double_ge(jnum(j, "tpot_ms", "p50"), 4);
    ck_assert_double_lt(jnum(j, "tpot_ms", "p50"), 30);
    cJSON_Delete(j);
    const char *a2[] = {"--endpoint-type",
                        "completions",
                        "--no-stream",
                        "--concurrency",
                        "2",
                        "--num-requests",
                        "4",
                        "--osl",
                        "3",
                        NULL};
    ck_assert_int_eq(run_loadgen(url, a2, &j), 0);
    ck_assert_double_eq(jnum(j, "requests", "ok"), 4);
    ck_assert_double_ge(jnum(j, "e2e_ms", "min"), 39); /* 30 + 2 x 5 */
    cJSON_Delete(j);
    int st = harness_kill(stub, SIGINT, 8000); /* Ctrl-C stops it cleanly */
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 0);
}
END_TEST

START_TEST(test_bad_flags) {
    const char *bad[][4] = {
        {"--bogus", NULL},
        {"--concurrency", "-1", NULL},
        {"--concurrency", "abc", NULL},
        {"--shared-prefix-ratio", "1.5", NULL},
        {"--extra-body", "[1,2]", NULL},
        {"--endpoint-type", "embeddings", NULL},
        {"--isl", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_int_eq(run_loadgen("http://127.0.0.1:1", bad[i], NULL), 2);
    const char *help[] = {"--help", NULL};
    ck_assert_int_eq(run_loadgen("http://127.0.0.1:1", help, NULL), 0);
}
END_TEST

/* ---- --target nats: a real worker behind real etcd, NATS and frontend ------------------------ */

#define NATS_NS      "lgtest"
#define NATS_STEP_MS 5
static harness_nats_t g_nats;
static harness_etcd_t g_etcd;
static pid_t g_worker = -1, g_fe = -1;
static char g_dir[256], g_model[320], g_fe_url[64];
static bool g_stack_ok;

static void stack_start(void) {
    char cmd[1024], params[400], wlog[400], flog[400], bin[512], port[16];
    const char *bd = getenv("SLUICE_BENCH_DIR");
    if (harness_mkdtemp("lg-nats", g_dir, sizeof g_dir)) return;
    snprintf(g_model, sizeof g_model, "%s/model", g_dir);
    snprintf(cmd, sizeof cmd,
             "%s/genmodel --preset tiny --arch llama --dtype f32 --seed 1 --out %s >/dev/null",
             bd && *bd ? bd : "build/bench", g_model);
    if (system(cmd) != 0) {
        fprintf(stderr, "stack: %s failed\n", cmd);
        return;
    }
    snprintf(params, sizeof params, "%s/mocker.json", g_dir);
    FILE *f = fopen(params, "w");
    if (!f) return;
    /* a fixed step, so TTFT and inter-token gaps have known floors */
    fprintf(f,
            "{\"prefill_a\":%g,\"prefill_b\":0,\"prefill_c\":0,\"decode_d\":%g,"
            "\"decode_e\":0,\"decode_g\":0,\"speedup\":1}\n",
            NATS_STEP_MS / 1000.0, NATS_STEP_MS / 1000.0);
    fclose(f);
    if (harness_etcd_start(&g_etcd) || harness_nats_start(&g_nats, 0)) {
        fprintf(stderr, "stack: servers did not start\n");
        return;
    }
    snprintf(wlog, sizeof wlog, "%s/worker.log", g_dir);
    char *wa[] = {(char *)harness_bin("sluice-decode-worker", bin, sizeof bin),
                  "--model",
                  g_model,
                  "--engine",
                  "mocker",
                  "--mocker-params",
                  params,
                  "--served-model-name",
                  "m",
                  "--namespace",
                  NATS_NS,
                  "--nats",
                  g_nats.url,
                  "--etcd",
                  g_etcd.url,
                  "--system-port",
                  "0",
                  NULL};
    g_worker = harness_spawn(wa, NULL, wlog);
    int p = harness_free_port();
    snprintf(port, sizeof port, "%d", p);
    snprintf(g_fe_url, sizeof g_fe_url, "http://127.0.0.1:%d", p);
    snprintf(flog, sizeof flog, "%s/frontend.log", g_dir);
    char fbin[512];
    char *fa[] = {(char *)harness_bin("sluice-frontend", fbin, sizeof fbin),
                  "--model-path",
                  g_model,
                  "--served-model-name",
                  "m",
                  "--port",
                  port,
                  "--host",
                  "127.0.0.1",
                  "--namespace",
                  NATS_NS,
                  "--nats",
                  g_nats.url,
                  "--etcd",
                  g_etcd.url,
                  NULL};
    g_fe = harness_spawn(fa, NULL, flog);
    /* healthy = the frontend sees the worker, so etcd has its registration */
    snprintf(cmd, sizeof cmd, "curl -sf -m 1 %s/health 2>/dev/null | grep -q '\"workers\":1'",
             g_fe_url);
    for (long long end = harness_now_ms() + 30000; harness_now_ms() < end;) {
        if (system(cmd) == 0) {
            g_stack_ok = true;
            return;
        }
        harness_sleep_ms(100);
    }
    fprintf(stderr, "stack: frontend not healthy with its worker (see %s)\n", g_dir);
}

static void stack_stop(void) {
    if (g_fe > 0) harness_kill(g_fe, SIGTERM, 5000);
    if (g_worker > 0) harness_kill(g_worker, SIGTERM, 5000);
    harness_nats_destroy(&g_nats);
    harness_etcd_destroy(&g_etcd);
    if (g_dir[0]) harness_rmtree(g_dir);
}

/* Runs loadgen --target nats with args; returns the exit code and JSON. */
static int run_nats(const char *const args[], cJSON **out) {
    const char *a[64] = {"--target",    "nats",  "--nats",       g_nats.url, "--etcd",  g_etcd.url,
                         "--namespace", NATS_NS, "--model-path", g_model,    "--model", "m"};
    int n = 12;
    for (int i = 0; args[i] && n < 62; i++) a[n++] = args[i];
    a[n] = NULL;
    return run_loadgen("http://unused.invalid", a, out);
}

static bool log_contains(const char *needle) {
    static char text[1 << 16];
    FILE *f = fopen(log_path, "r");
    if (!f) return false;
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = 0;
    fclose(f);
    return strstr(text, needle) != NULL;
}

START_TEST(test_nats_matches_http) {
    ck_assert_msg(g_stack_ok, "servers, worker or frontend did not start");
    const char *common[] = {
        "--concurrency", "4", "--num-requests", "24", "--warmup",      "4",       "--isl", "32",
        "--osl",         "8", "--seed",         "7",  "--per-request", "--model", "m",     NULL};
    cJSON *jn = NULL, *jh = NULL;
    ck_assert_int_eq(run_nats(common, &jn), 0);
    ck_assert_int_eq(run_loadgen(g_fe_url, common, &jh), 0);
    ck_assert_ptr_nonnull(jn);
    ck_assert_ptr_nonnull(jh);
    ck_assert_str_eq(
        cJSON_GetObjectItem(cJSON_GetObjectItem(jn, "config"), "endpoint")->valuestring, "nats");
    for (int k = 0; k < 2; k++) {
        cJSON *j = k ? jh : jn;
        if (jnum(j, "requests", "ok") != 24) {
            char *t = cJSON_Print(cJSON_GetObjectItem(j, "errors"));
            fprintf(stderr, "%s run: %s\n", k ? "http" : "nats", t ? t : "");
            free(t);
        }
        ck_assert_double_eq(jnum(j, "requests", "ok"), 24);
        ck_assert_double_eq(jnum(j, "requests", "failed"), 0);
        ck_assert_double_eq(jnum(j, "output_tokens", "mean"), 8);
        ck_assert_double_eq(jnum(j, "ttft_ms", "count"), 24);
        cJSON *arr = cJSON_GetObjectItem(j, "ttft_by_request_ms");
        ck_assert_int_eq(cJSON_GetArraySize(arr), 24);
        for (int i = 0; i < 24; i++) ck_assert(cJSON_IsNumber(cJSON_GetArrayItem(arr, i)));
    }
    /* the same token ids both ways: the chat template and tokenizer agree */
    /* (means accumulate in completion order: equal up to rounding) */
    ck_assert_double_eq_tol(jnum(jn, "input_tokens", "mean"), jnum(jh, "input_tokens", "mean"),
                            1e-9);
    ck_assert_double_eq(jnum(jn, "input_tokens", "min"), jnum(jh, "input_tokens", "min"));
    ck_assert_double_eq(jnum(jn, "input_tokens", "max"), jnum(jh, "input_tokens", "max"));
    ck_assert_double_gt(jnum(jn, "input_tokens", "min"), 32); /* prompt + template */
    /* the worker's fixed step bounds the direct figures from below */
    ck_assert_double_ge(jnum(jn, "ttft_ms", "min"), NATS_STEP_MS * 0.9);
    ck_assert_double_le(jnum(jn, "ttft_ms", "p50"), jnum(jn, "e2e_ms", "p50"));
    ck_assert_double_ge(jnum(jn, "e2e_ms", "min"), 8 * NATS_STEP_MS * 0.9);
    ck_assert_double_ge(jnum(jn, "itl_ms", "p50"), NATS_STEP_MS * 0.5);
    ck_assert_double_le(jnum(jn, "itl_ms", "p50"), NATS_STEP_MS * 6);
    /* the frontend cannot be faster than the worker it asks */
    ck_assert_double_ge(jnum(jh, "ttft_ms", "p50"), jnum(jn, "ttft_ms", "min"));
    cJSON_Delete(jn);
    cJSON_Delete(jh);
}
END_TEST

START_TEST(test_nats_completions_whole) {
    ck_assert_msg(g_stack_ok, "servers, worker or frontend did not start");
    const char *a[] = {"--endpoint-type",
                       "completions",
                       "--no-stream",
                       "--concurrency",
                       "2",
                       "--num-requests",
                       "6",
                       "--osl",
                       "5",
                       NULL};
    cJSON *j = NULL;
    ck_assert_int_eq(run_nats(a, &j), 0);
    ck_assert_double_eq(jnum(j, "requests", "ok"), 6);
    ck_assert_double_eq(jnum(j, "output_tokens", "mean"), 5);
    ck_assert_double_eq(jnum(j, "ttft_ms", "count"), 0); /* as the HTTP driver: no TTFT */
    ck_assert_double_gt(jnum(j, "e2e_ms", "min"), 4 * NATS_STEP_MS * 0.9);
    cJSON_Delete(j);
}
END_TEST

START_TEST(test_nats_no_worker) {
    ck_assert_msg(g_stack_ok, "servers, worker or frontend did not start");
    /* nobody serves "other": the run fails fast with a reason, not a hang */
    const char *a[] = {"--model", "other", "--timeout", "1", "--num-requests", "2", NULL};
    long long t0 = harness_now_ms();
    ck_assert_int_eq(run_nats(a, NULL), 1);
    ck_assert_int_lt(harness_now_ms() - t0, 10000);
    ck_assert(log_contains("no worker found in etcd serving model other"));
    /* NATS unreachable: a reason and status 1, at once */
    unlink(log_path);
    const char *b[] = {"--target", "nats", "--nats", "nats://127.0.0.1:1", "--model-path", g_model,
                       "--model",  "m",    NULL};
    ck_assert_int_eq(run_loadgen("http://unused.invalid", b, NULL), 1);
    ck_assert(log_contains("cannot connect to NATS"));
}
END_TEST

START_TEST(test_nats_bad_flags) {
    const char *bad[][8] = {
        {"--target", "nats", NULL}, /* no --model-path */
        {"--target", "nats", "--model-path", "/nonexistent", "--request-rate", "5", NULL},
        {"--target", "bogus", NULL},
        {"--target", "nats", "--model-path", "/nonexistent/dir", NULL}, /* no tokenizer there */
        {"--target", "nats", "--model-path", "/tmp", "--concurrency", "5000", NULL},
    };
    const char *why[] = {"--model-path", "closed loop", "target", "tokenizer", "concurrency"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        unlink(log_path);
        ck_assert_int_eq(run_loadgen("http://127.0.0.1:1", bad[i], NULL), 2);
        ck_assert_msg(log_contains("loadgen: ") && log_contains(why[i]), "case %zu: no message", i);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("loadgen");
    TCase *tc = tcase_create("fake_openai");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_stream_closed_loop_timings);
    tcase_add_test(tc, test_multi_token_events);
    tcase_add_test(tc, test_request_rate_poisson);
    tcase_add_test(tc, test_request_rate_capped);
    tcase_add_test(tc, test_errors_counted);
    tcase_add_test(tc, test_connection_refused);
    tcase_add_test(tc, test_completions_non_stream_and_duration);
    tcase_add_test(tc, test_shared_prefix_and_seed);
    tcase_add_test(tc, test_many_streams);
    tcase_add_test(tc, test_serve_stub);
    tcase_add_test(tc, test_bad_flags);
    suite_add_tcase(s, tc);
    TCase *tn = tcase_create("nats");
    tcase_set_timeout(tn, 60);
    tcase_add_unchecked_fixture(tn, stack_start, stack_stop);
    tcase_add_checked_fixture(tn, setup, teardown);
    tcase_add_test(tn, test_nats_matches_http);
    tcase_add_test(tn, test_nats_completions_whole);
    tcase_add_test(tn, test_nats_no_worker);
    tcase_add_test(tn, test_nats_bad_flags);
    suite_add_tcase(s, tn);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
