/* test_frontend_router.c - sluice-frontend with sluice-router and mocker
 * workers, over real sockets (nats-server, etcd, HTTP):
 *   - stream completion reaches the router (PREFILL_DONE, FREE with the id
 *     the router saw): its active-sequence count drops to 0 at once, long
 *     before --active-ttl;
 *   - a router killed with -9: requests fall back to round-robin, and a new
 *     router takes over again;
 *   - cached prompt tokens on /metrics (hit rate without a router);
 *   - prompt + max_tokens over the context: vLLM's 400;
 *   - n = 3 choices in flight at once, interleaved in one SSE stream;
 *   - a worker whose lease goes mid-stream: migration at once, not after
 *     --stream-timeout;
 *   - a stop string spanning the migration point still stops the stream.
 * Two namespaces: "fr" (fast mockers, router, frontend in kv mode) and
 * "slow" (slow mockers with 3 s leases, frontend without router, 30 s
 * stream timeout).
 */
#include "common/base/log.h"
#include "common/runtime/bus.h"
#include "proto/sluice.pb-c.h"
#include "tests/harness/fleet.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define SLOW_DECODE_S 0.2 /* seconds per token of the "slow" workers */

static harness_etcd_t g_etcd;
static harness_nats_t g_nats;
static char g_dir[256], g_model[512], g_fast[512], g_slowp[512];
static fleet_env_t g_env, g_senv;
static pid_t g_w[2], g_router, g_fe, g_sw[2], g_sfe;
static int g_wport[2], g_rport, g_swport[2];
static char g_base[64], g_rbase[64], g_sbase[64], g_wbase[2][64], g_swbase[2][64];
static bool g_ok;

/* ---- helpers --------------------------------------------------------------------- */

static pid_t spawn_worker(const fleet_env_t *env, int port, bool slow, int i) {
    char log[512];
    snprintf(log, sizeof log, "%s/%sworker%d.log", g_dir, slow ? "slow-" : "", i);
    fleet_worker_opts_t o = {.model = g_model,
                             .mocker = true,
                             .mocker_params = slow ? g_slowp : g_fast,
                             .system_port = port,
                             .lease_ttl_s = slow ? 3 : 0,
                             .log = log};
    return fleet_worker_spawn(env, &o);
}

static pid_t spawn_router(void) {
    char log[512];
    snprintf(log, sizeof log, "%s/router-%lld.log", g_dir, harness_now_ms());
    fleet_router_opts_t o = {.system_port = g_rport, .active_ttl = "10m", .log = log};
    return fleet_router_spawn(&g_env, &o);
}

/* Whole-body request to the main frontend; returns the status, *out the body. */
static long post(const char *base, const char *path, const char *body, char **out) {
    return fleet_http(base, path, body, 60000, out);
}

/* One SSE response's events, in order. */
typedef struct sse_ev {
    int index;      /* choice index, -1: none (usage chunk) */
    bool content;   /* carried text */
    bool finish;    /* carried a finish_reason */
    int n_logprobs; /* tokens in its completions logprobs */
} sse_ev_t;

typedef struct sse_all {
    sse_ev_t ev[1024];
    int n;
    char text[4][8192]; /* per index */
    char finish[4][16];
    int usage_completion;
    bool done, error;
} sse_all_t;

static void sse_parse(const char *body, sse_all_t *o) {
    memset(o, 0, sizeof *o);
    o->usage_completion = -1;
    for (const char *p = body; (p = strstr(p, "data: "));) {
        p += 6;
        const char *e = strstr(p, "\n\n");
        if (!e) break;
        if (strncmp(p, "[DONE]", 6) == 0) {
            o->done = true;
            break;
        }
        cJSON *j = cJSON_ParseWithLength(p, (size_t)(e - p));
        p = e + 2;
        if (!j) continue;
        if (cJSON_GetObjectItem(j, "error")) o->error = true;
        cJSON *u = cJSON_GetObjectItem(j, "usage");
        if (cJSON_IsObject(u))
            o->usage_completion = cJSON_GetObjectItem(u, "completion_tokens")->valueint;
        cJSON *ch;
        cJSON_ArrayForEach(ch, cJSON_GetObjectItem(j, "choices")) {
            int idx = cJSON_GetObjectItem(ch, "index")->valueint;
            if (idx < 0 || idx > 3 || o->n >= 1024) continue;
            sse_ev_t *ev = &o->ev[o->n++];
            ev->index = idx;
            cJSON *d = cJSON_GetObjectItem(ch, "delta");
            cJSON *t = d ? cJSON_GetObjectItem(d, "content") : cJSON_GetObjectItem(ch, "text");
            if (cJSON_IsString(t) && t->valuestring[0]) {
                ev->content = true;
                strncat(o->text[idx], t->valuestring,
                        sizeof o->text[idx] - strlen(o->text[idx]) - 1);
            }
            cJSON *f = cJSON_GetObjectItem(ch, "finish_reason");
            if (cJSON_IsString(f)) {
                ev->finish = true;
                snprintf(o->finish[idx], sizeof o->finish[idx], "%s", f->valuestring);
            }
            cJSON *lp = cJSON_GetObjectItem(ch, "logprobs");
            if (cJSON_IsObject(lp))
                ev->n_logprobs = cJSON_GetArraySize(cJSON_GetObjectItem(lp, "tokens"));
        }
        cJSON_Delete(j);
    }
}

/* ActiveSeqEvents seen on sluice.fr.router.active. */
typedef struct active_log {
    pthread_mutex_t mu;
    struct {
        int kind;
        char id[160];
        uint64_t router_id;
    } e[4096];
    int n;
} active_log_t;

static active_log_t g_alog = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_active(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *m, void *ud) {
    (void)bus;
    (void)msg;
    active_log_t *l = ud;
    const Sluice__V1__ActiveSeqEvent *e = (const Sluice__V1__ActiveSeqEvent *)m;
    pthread_mutex_lock(&l->mu);
    if (l->n < 4096) {
        l->e[l->n].kind = e->kind;
        snprintf(l->e[l->n].id, sizeof l->e[l->n].id, "%s", e->request_id ? e->request_id : "");
        l->e[l->n].router_id = e->router_id;
        l->n++;
    }
    pthread_mutex_unlock(&l->mu);
}

static int active_count(const char *id, int kind) {
    int n = 0;
    pthread_mutex_lock(&g_alog.mu);
    for (int i = 0; i < g_alog.n; i++)
        if (g_alog.e[i].kind == kind && strcmp(g_alog.e[i].id, id) == 0) n++;
    pthread_mutex_unlock(&g_alog.mu);
    return n;
}

/* ---- 1: completion reaches the router -------------------------------------------- */

typedef struct req_arg {
    const char *base;
    char body[1024];
    long status;
    char *resp;
    size_t abort_after;
} req_arg_t;

static void *req_thread(void *p) {
    req_arg_t *a = p;
    a->status = post(a->base, "/v1/completions", a->body, &a->resp);
    return NULL;
}

static size_t abort_write(char *p, size_t sz, size_t nm, void *ud) {
    (void)p;
    size_t *left = ud;
    size_t n = sz * nm;
    if (n >= *left) return 0; /* drop the connection */
    *left -= n;
    return n;
}

/* A streamed request whose client hangs up after `after` bytes. */
static void stream_and_hang_up(const char *base, const char *body, size_t after) {
    char url[128];
    snprintf(url, sizeof url, "%s/v1/completions", base);
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, abort_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &after);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_perform(c);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
}

START_TEST(test_active_seqs_freed_at_stream_end) {
    ck_assert_msg(g_ok, "fixture failed");
    bus_t *bus = NULL;
    bus_sub_t *sub = NULL;
    bus_opts_t bo = {.url = g_nats.url, .name = "test"};
    ck_assert_int_eq(bus_connect(&bus, &bo), 0);
    ck_assert_int_eq(bus_subscribe_proto(bus, "sluice.fr.router.active", NULL,
                                         &sluice__v1__active_seq_event__descriptor, on_active,
                                         &g_alog, &sub),
                     0);
    bus_flush(bus, 2000);
    ck_assert_double_eq(fleet_wait_metric(g_rbase, "sluice_router_active_seqs", '=', 0, 3000), 0);

    /* four at once, streamed and whole; one long stream watched while it runs */
    enum { N = 4 };
    static req_arg_t a[N + 1];
    pthread_t th[N + 1];
    for (int i = 0; i <= N; i++) {
        a[i] = (req_arg_t){.base = g_base};
        snprintf(a[i].body, sizeof a[i].body,
                 "{\"model\":\"tiny\",\"prompt\":[%d,%d,%d,%d,%d],\"max_tokens\":%d,"
                 "\"ignore_eos\":true,\"stream\":%s}",
                 40 + i, 41 + i, 42 + i, 43 + i, 44 + i, i == N ? 120 : 10,
                 i % 2 ? "true" : "false");
        pthread_create(&th[i], NULL, req_thread, &a[i]);
    }
    /* while they run the router counts them */
    double during = fleet_wait_metric(g_rbase, "sluice_router_active_seqs", 'g', 1, 3000);
    ck_assert_double_ge(during, 1);
    for (int i = 0; i <= N; i++) pthread_join(th[i], NULL);
    long long t_end = harness_now_ms();
    /* FREE arrives with the end of the stream: 0 within a second, where the
     * TTL is 10 minutes and LoadMetrics never change the count */
    double after = fleet_wait_metric(g_rbase, "sluice_router_active_seqs", '=', 0, 1500);
    ck_assert_msg(after == 0, "router still counts %g sequences %lld ms after the streams ended",
                  after, harness_now_ms() - t_end);

    /* each request: ADD from the router, PREFILL_DONE and FREE from the
     * frontend, all under the id the router saw (<response id>-0) */
    for (int i = 0; i <= N; i++) {
        ck_assert_int_eq(a[i].status, 200);
        char id[160];
        const char *p = strstr(a[i].resp, "\"id\":\"");
        ck_assert_ptr_nonnull(p);
        p += 6;
        const char *q = strchr(p, '"');
        snprintf(id, sizeof id, "%.*s-0", (int)(q - p), p);
        ck_assert_int_eq(active_count(id, SLUICE__V1__ACTIVE_SEQ_EVENT__KIND__KIND_ADD), 1);
        ck_assert_int_eq(active_count(id, SLUICE__V1__ACTIVE_SEQ_EVENT__KIND__KIND_PREFILL_DONE),
                         1);
        ck_assert_int_eq(active_count(id, SLUICE__V1__ACTIVE_SEQ_EVENT__KIND__KIND_FREE), 1);
        free(a[i].resp);
    }

    /* a client that hangs up mid-stream frees it too */
    stream_and_hang_up(g_base,
                       "{\"model\":\"tiny\",\"prompt\":[9,8,7],\"max_tokens\":3000,"
                       "\"ignore_eos\":true,\"stream\":true}",
                       400);
    after = fleet_wait_metric(g_rbase, "sluice_router_active_seqs", '=', 0, 2000);
    ck_assert_msg(after == 0, "a hung-up stream still counts at the router (%g)", after);
    bus_sub_free(sub);
    bus_free(bus);
}
END_TEST

/* ---- 2: router killed, fallback, router back ---------------------------------------- */

static void send_n(int n, const char *tag) {
    for (int i = 0; i < n; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"model\":\"tiny\",\"prompt\":\"%s %d\",\"max_tokens\":3,\"ignore_eos\":true}",
                 tag, i);
        char *r = NULL;
        long st = post(g_base, "/v1/completions", body, &r);
        ck_assert_msg(st == 200, "%s %d: %ld %s", tag, i, st, r);
        free(r);
    }
}

START_TEST(test_router_killed_then_back) {
    ck_assert_msg(g_ok, "fixture failed");
    double routed0 = fleet_metric(g_base, "sluice_frontend_routed_total");
    double fb0 = fleet_metric(g_base, "sluice_frontend_route_fallbacks_total");
    send_n(3, "before");
    ck_assert_double_ge(fleet_metric(g_base, "sluice_frontend_routed_total"), routed0 + 3);
    ck_assert_double_eq(fleet_metric(g_base, "sluice_frontend_route_fallbacks_total"), fb0);

    harness_kill(g_router, SIGKILL, 2000);
    g_router = 0;
    double routed1 = fleet_metric(g_base, "sluice_frontend_routed_total");
    long long t0 = harness_now_ms();
    send_n(4, "without");
    ck_assert_int_lt(harness_now_ms() - t0, 8000);
    ck_assert_double_ge(fleet_metric(g_base, "sluice_frontend_route_fallbacks_total"), fb0 + 4);
    ck_assert_double_eq(fleet_metric(g_base, "sluice_frontend_routed_total"), routed1);

    g_router = spawn_router();
    ck_assert_int_gt(g_router, 0);
    ck_assert(fleet_wait_healthy(g_rbase, "\"workers\":2", 15000));
    double fb2 = fleet_metric(g_base, "sluice_frontend_route_fallbacks_total");
    send_n(3, "after");
    ck_assert_double_ge(fleet_metric(g_base, "sluice_frontend_routed_total"), routed1 + 3);
    ck_assert_double_eq(fleet_metric(g_base, "sluice_frontend_route_fallbacks_total"), fb2);
    ck_assert_double_ge(fleet_metric(g_rbase, "sluice_router_requests_total"), 3);
    ck_assert_double_eq(fleet_wait_metric(g_rbase, "sluice_router_active_seqs", '=', 0, 1500), 0);
}
END_TEST

/* ---- 3: cached prompt tokens ------------------------------------------------------------ */

START_TEST(test_cached_prompt_tokens_metric) {
    ck_assert_msg(g_ok, "fixture failed");
    char body[2048];
    int off = snprintf(body, sizeof body, "{\"model\":\"tiny\",\"max_tokens\":2,\"prompt\":[");
    for (int i = 0; i < 96; i++) off += snprintf(body + off, 16, "%s%d", i ? "," : "", 100 + i);
    snprintf(body + off, 8, "]}");
    double p0 = fleet_metric(g_base, "sluice_frontend_prompt_tokens_total");
    double c0 = fleet_metric(g_base, "sluice_frontend_cached_prompt_tokens_total");
    ck_assert_double_ge(p0, 0);
    ck_assert_double_ge(c0, 0);
    double b0 = fleet_metric(g_rbase, "sluice_router_indexed_blocks");
    int cached[2];
    for (int k = 0; k < 2; k++) {
        char *r = NULL;
        ck_assert_int_eq(post(g_base, "/v1/completions", body, &r), 200);
        cJSON *j = cJSON_Parse(r);
        cJSON *d = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "prompt_tokens_details");
        cached[k] = cJSON_GetObjectItem(d, "cached_tokens")->valueint;
        cJSON_Delete(j);
        free(r);
        /* the router learns the blocks from the worker's KV events */
        if (k == 0) fleet_wait_metric(g_rbase, "sluice_router_indexed_blocks", 'g', b0 + 6, 3000);
    }
    ck_assert_int_eq(cached[0], 0);
    ck_assert_int_ge(cached[1], 64); /* the kv router sent it back to the warm worker */
    ck_assert_double_eq(fleet_metric(g_base, "sluice_frontend_prompt_tokens_total") - p0, 192);
    ck_assert_double_eq(fleet_metric(g_base, "sluice_frontend_cached_prompt_tokens_total") - c0,
                        cached[1]);
}
END_TEST

/* ---- 4: the context limit ----------------------------------------------------------------- */

/* {"model":"tiny","prompt":[n ids]<extra>} (malloc'd). */
static char *ids_body(int n, const char *extra) {
    size_t cap = (size_t)n * 6 + 256;
    char *b = malloc(cap);
    int off = snprintf(b, cap, "{\"model\":\"tiny\",\"prompt\":[");
    for (int i = 0; i < n; i++)
        off += snprintf(b + off, cap - (size_t)off, "%s%d", i ? "," : "", 50 + i % 400);
    snprintf(b + off, cap - (size_t)off, "]%s}", extra);
    return b;
}

START_TEST(test_context_limit_400) {
    ck_assert_msg(g_ok, "fixture failed");
    char *b = ids_body(10, ",\"max_tokens\":4090");
    char *r = NULL;
    ck_assert_int_eq(post(g_base, "/v1/completions", b, &r), 400);
    ck_assert_msg(strstr(r, "This model's maximum context length is 4096 tokens. However, you "
                            "requested 4100 tokens (10 in the messages, 4090 in the completion)."),
                  "%s", r);
    ck_assert_ptr_nonnull(strstr(r, "\"param\":\"max_tokens\""));
    ck_assert_ptr_nonnull(strstr(r, "invalid_request_error"));
    free(r);
    free(b);
    /* a chat request over the limit too */
    r = NULL;
    ck_assert_int_eq(post(g_base, "/v1/chat/completions",
                          "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":"
                          "\"hi\"}],\"max_tokens\":4096}",
                          &r),
                     400);
    ck_assert_ptr_nonnull(strstr(r, "in the completion"));
    free(r);
    /* exactly the context: fine, all of it generated */
    b = ids_body(4000, ",\"max_tokens\":96,\"ignore_eos\":true");
    r = NULL;
    ck_assert_int_eq(post(g_base, "/v1/completions", b, &r), 200);
    ck_assert_ptr_nonnull(strstr(r, "\"completion_tokens\":96"));
    free(r);
    free(b);
    /* no max_tokens: up to the context */
    b = ids_body(4000, ",\"ignore_eos\":true");
    r = NULL;
    ck_assert_int_eq(post(g_base, "/v1/completions", b, &r), 200);
    ck_assert_ptr_nonnull(strstr(r, "\"completion_tokens\":96"));
    ck_assert_ptr_nonnull(strstr(r, "\"finish_reason\":\"length\""));
    free(r);
    free(b);
    /* the prompt alone fills the context */
    b = ids_body(4096, "");
    r = NULL;
    ck_assert_int_eq(post(g_base, "/v1/completions", b, &r), 400);
    ck_assert_ptr_nonnull(strstr(r, "your request has 4096 input tokens"));
    free(r);
    free(b);
}
END_TEST

/* ---- 5: n choices at once ---------------------------------------------------------------- */

START_TEST(test_n3_concurrent_choices) {
    ck_assert_msg(g_ok, "fixture failed");
    const char *fmt = "{\"model\":\"tiny\",\"prompt\":\"many roads\",\"max_tokens\":20,"
                      "\"ignore_eos\":true,\"n\":3,\"stream\":%s%s}";
    char body[512];
    snprintf(body, sizeof body, fmt, "true", ",\"stream_options\":{\"include_usage\":true}");
    char *r = NULL;
    ck_assert_int_eq(post(g_base, "/v1/completions", body, &r), 200);
    static sse_all_t o;
    sse_parse(r, &o);
    free(r);
    ck_assert(o.done && !o.error);
    ck_assert_int_eq(o.usage_completion, 60);
    /* all three were in flight at once: each started before any finished,
     * and their chunks interleave */
    int first_finish = o.n, last_start = -1, switches = 0;
    bool started[3] = {0};
    for (int i = 0; i < o.n; i++) {
        int x = o.ev[i].index;
        ck_assert_int_lt(x, 3);
        if (o.ev[i].finish && first_finish == o.n) first_finish = i;
        if (o.ev[i].content && !started[x]) {
            started[x] = true;
            last_start = i;
        }
        if (i && o.ev[i].index != o.ev[i - 1].index) switches++;
    }
    ck_assert(started[0] && started[1] && started[2]);
    ck_assert_msg(last_start < first_finish, "choices ran one after another");
    ck_assert_int_gt(switches, 3);
    for (int x = 0; x < 3; x++) ck_assert_str_eq(o.finish[x], "length");
    /* greedy on the mocker: the three choices agree, streamed or not */
    snprintf(body, sizeof body, fmt, "false", "");
    r = NULL;
    ck_assert_int_eq(post(g_base, "/v1/completions", body, &r), 200);
    cJSON *j = cJSON_Parse(r);
    cJSON *chs = cJSON_GetObjectItem(j, "choices");
    ck_assert_int_eq(cJSON_GetArraySize(chs), 3);
    for (int x = 0; x < 3; x++) {
        cJSON *ch = cJSON_GetArrayItem(chs, x);
        ck_assert_int_eq(cJSON_GetObjectItem(ch, "index")->valueint, x);
        ck_assert_str_eq(cJSON_GetObjectItem(ch, "text")->valuestring, o.text[x]);
    }
    ck_assert_int_eq(
        cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "completion_tokens")->valueint, 60);
    cJSON_Delete(j);
    free(r);
}
END_TEST

/* ---- generation slots: a full server answers 503 and still serves /health ----------------- */

START_TEST(test_busy_503_health_still_answers) {
    ck_assert_msg(g_ok, "fixture failed");
    char log[512], base[64];
    int port = harness_free_port();
    snprintf(base, sizeof base, "http://127.0.0.1:%d", port);
    snprintf(log, sizeof log, "%s/fe-busy.log", g_dir);
    fleet_frontend_opts_t fo = {.model = g_model,
                                .port = port,
                                .stream_timeout = "30s",
                                .http_threads = 6,
                                .http_reserve_threads = 2, /* 4 generation slots */
                                .log = log};
    pid_t fe = fleet_frontend_spawn(&g_senv, &fo);
    ck_assert_int_gt(fe, 0);
    ck_assert(fleet_wait_healthy(base, "\"workers\":2", 20000));
    req_arg_t a[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        memset(&a[i], 0, sizeof a[i]);
        a[i].base = base;
        snprintf(a[i].body, sizeof a[i].body,
                 "{\"model\":\"tiny\",\"prompt\":\"busy %d\",\"max_tokens\":12,"
                 "\"ignore_eos\":true,\"stream\":true}",
                 i);
        ck_assert_int_eq(pthread_create(&th[i], NULL, req_thread, &a[i]), 0);
    }
    ck_assert_double_eq(fleet_wait_metric(base, "sluice_frontend_inflight_requests", '=', 4, 10000),
                        4);
    char *r = NULL;
    long st = post(base, "/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"one more\"}", &r);
    ck_assert_int_eq(st, 503);
    ck_assert_msg(strstr(r, "all 4 generation slots are in use") != NULL, "%s", r);
    free(r);
    r = NULL;
    ck_assert_int_eq(fleet_http(base, "/health", NULL, 3000, &r), 200);
    free(r);
    ck_assert_double_eq(fleet_metric(base, "sluice_frontend_rejected_busy_total"), 1);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(a[i].status, 200);
        ck_assert_msg(strstr(a[i].resp, "[DONE]") != NULL, "%s", a[i].resp);
        free(a[i].resp);
    }
    r = NULL;
    ck_assert_int_eq(post(base, "/v1/completions",
                          "{\"model\":\"tiny\",\"prompt\":\"after\",\"max_tokens\":2}", &r),
                     200);
    free(r);
    harness_kill(fe, SIGTERM, 5000);
}
END_TEST

/* ---- 6 and 7: worker gone mid-stream ------------------------------------------------------ */

/* Which slow worker holds a running sequence (-1: none yet). */
static int slow_serving(void) {
    for (int i = 0; i < 2; i++)
        if (g_sw[i] > 0 && fleet_metric(g_swbase[i], "sluice_worker_kv_blocks_used") > 0) return i;
    return -1;
}

static void slow_restart(int i) {
    g_sw[i] = spawn_worker(&g_senv, g_swport[i], true, i);
    ck_assert(fleet_wait_healthy(g_sbase, "\"workers\":2", 15000));
}

typedef struct kill_stream {
    char *body; /* (len) received so far */
    size_t len, parsed;
    int tokens;  /* completions logprobs tokens seen */
    int kill_at; /* kill the serving worker once this many tokens came; 0: never */
    int killed;  /* index of the killed worker, -1: none */
    int sig;     /* the signal (0: SIGKILL); SIGTERM: the worker drains */
    long long t_kill;
} kill_stream_t;

static size_t kill_write(char *p, size_t sz, size_t nm, void *ud) {
    kill_stream_t *k = ud;
    size_t n = sz * nm;
    char *nb = realloc(k->body, k->len + n + 1);
    if (!nb) return 0;
    k->body = nb;
    memcpy(k->body + k->len, p, n);
    k->len += n;
    k->body[k->len] = 0;
    for (;;) {
        char *ev = strstr(k->body + k->parsed, "data: ");
        char *end = ev ? strstr(ev, "\n\n") : NULL;
        if (!end) break;
        k->parsed = (size_t)(end + 2 - k->body);
        cJSON *j = cJSON_ParseWithLength(ev + 6, (size_t)(end - ev - 6));
        cJSON *lp = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0),
                                        "logprobs");
        if (cJSON_IsObject(lp)) k->tokens += cJSON_GetArraySize(cJSON_GetObjectItem(lp, "tokens"));
        cJSON_Delete(j);
        if (k->kill_at && k->killed < 0 && k->tokens >= k->kill_at) {
            int v = slow_serving();
            if (v >= 0 && k->sig == SIGTERM) {
                kill(g_sw[v], SIGTERM); /* it revokes its lease, then drains */
                k->killed = v;
                k->t_kill = harness_now_ms();
            } else if (v >= 0) {
                harness_kill(g_sw[v], SIGKILL, 2000);
                g_sw[v] = 0;
                k->killed = v;
                k->t_kill = harness_now_ms();
            }
        }
    }
    return n;
}

/* Streams body from the slow frontend, killing its worker after kill_at
 * tokens (0: never). */
static long kill_stream_run(const char *body, kill_stream_t *k) {
    char url[128];
    long status = 0;
    snprintf(url, sizeof url, "%s/v1/completions", g_sbase);
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, kill_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, k);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 50L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (!k->body) k->body = calloc(1, 1);
    return status;
}

START_TEST(test_worker_gone_migrates_at_once) {
    ck_assert_msg(g_ok, "fixture failed");
    const char *body = "{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":16,"
                       "\"ignore_eos\":true,\"stream\":true,\"logprobs\":0}";
    kill_stream_t ref = {.killed = -1};
    ck_assert_int_eq(kill_stream_run(body, &ref), 200);
    static sse_all_t want, got;
    sse_parse(ref.body, &want);
    ck_assert_int_eq(ref.tokens, 16);
    double mig0 = fleet_metric(g_sbase, "sluice_frontend_migrations_total");

    kill_stream_t k = {.killed = -1, .kill_at = 4};
    long long t0 = harness_now_ms();
    ck_assert_int_eq(kill_stream_run(body, &k), 200);
    long long t_end = harness_now_ms();
    ck_assert_int_ge(k.killed, 0);
    sse_parse(k.body, &got);
    ck_assert(got.done && !got.error);
    ck_assert_str_eq(got.finish[0], "length");
    /* one continuous stream with the same greedy text */
    ck_assert_str_eq(got.text[0], want.text[0]);
    ck_assert_double_eq(fleet_metric(g_sbase, "sluice_frontend_migrations_total"), mig0 + 1);
    /* the lease (3 s) went, not the 30 s stream timeout */
    ck_assert_msg(t_end - k.t_kill < 10000, "stream took %lld ms after the kill", t_end - k.t_kill);
    ck_assert_msg(t_end - t0 < 15000, "stream took %lld ms", t_end - t0);
    free(ref.body);
    free(k.body);
    slow_restart(k.killed);
}
END_TEST

/* SIGTERM: the worker revokes its lease and would drain; the frontend sees
 * the lease go and migrates at once. */
START_TEST(test_worker_sigterm_migrates_at_once) {
    ck_assert_msg(g_ok, "fixture failed");
    const char *body = "{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":16,"
                       "\"ignore_eos\":true,\"stream\":true,\"logprobs\":0}";
    kill_stream_t ref = {.killed = -1};
    ck_assert_int_eq(kill_stream_run(body, &ref), 200);
    static sse_all_t want, got;
    sse_parse(ref.body, &want);
    double mig0 = fleet_metric(g_sbase, "sluice_frontend_migrations_total");
    kill_stream_t k = {.killed = -1, .kill_at = 4, .sig = SIGTERM};
    ck_assert_int_eq(kill_stream_run(body, &k), 200);
    long long t_end = harness_now_ms();
    ck_assert_int_ge(k.killed, 0);
    sse_parse(k.body, &got);
    ck_assert(got.done && !got.error);
    ck_assert_str_eq(got.text[0], want.text[0]);
    ck_assert_double_eq(fleet_metric(g_sbase, "sluice_frontend_migrations_total"), mig0 + 1);
    ck_assert_msg(t_end - k.t_kill < 10000, "stream took %lld ms after SIGTERM", t_end - k.t_kill);
    /* the draining worker, its stream moved away, exits */
    int st = harness_kill(g_sw[k.killed], SIGTERM, 10000);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker exit status %d", st);
    g_sw[k.killed] = 0;
    free(ref.body);
    free(k.body);
    slow_restart(k.killed);
}
END_TEST

START_TEST(test_stop_string_across_migration) {
    ck_assert_msg(g_ok, "fixture failed");
    /* reference: the tokens' texts and the whole text (greedy, deterministic) */
    char *r = NULL;
    ck_assert_int_eq(post(g_sbase, "/v1/completions",
                          "{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":14,"
                          "\"ignore_eos\":true,\"logprobs\":0}",
                          &r),
                     200);
    cJSON *j = cJSON_Parse(r);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    const char *text = cJSON_GetObjectItem(ch, "text")->valuestring;
    cJSON *toks = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "logprobs"), "tokens");
    /* tokens p and p+1 plain ASCII; stop = their texts joined, found once
     * in the text (so where token p starts: the mocker is deterministic) */
    int nt = cJSON_GetArraySize(toks);
    int p = -1;
    char stop[128] = "";
    size_t at = 0;
    for (int i = 3; i + 1 < nt && p < 0; i++) {
        const char *a = cJSON_GetArrayItem(toks, i)->valuestring;
        const char *b = cJSON_GetArrayItem(toks, i + 1)->valuestring;
        size_t la = strlen(a), lb = strlen(b);
        bool plain = la && lb && la < 60 && lb < 60 && strncmp(a, "bytes:", 6) != 0 &&
                     strncmp(b, "bytes:", 6) != 0;
        for (const char *c = a; plain && *c; c++)
            plain = (unsigned char)*c >= 0x20 && (unsigned char)*c < 0x80;
        for (const char *c = b; plain && *c; c++)
            plain = (unsigned char)*c >= 0x20 && (unsigned char)*c < 0x80;
        if (!plain) continue;
        snprintf(stop, sizeof stop, "%.60s%.60s", a, b);
        const char *m = strstr(text, stop);
        if (m && !strstr(m + 1, stop)) {
            p = i;
            at = (size_t)(m - text);
        }
    }
    ck_assert_msg(p >= 0, "no usable token pair in %s", r);
    char want[4096];
    snprintf(want, sizeof want, "%.*s", (int)at, text);
    cJSON_Delete(j);
    free(r);

    /* the same request with the stop string; the worker dies right after
     * token p (its text held back as a possible stop start): the new worker
     * makes token p+1, and only the frontend sees both halves */
    cJSON *req =
        cJSON_Parse("{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":14,"
                    "\"ignore_eos\":true,\"stream\":true,\"logprobs\":0}");
    cJSON_AddItemToObject(req, "stop", cJSON_CreateStringArray((const char *[]){stop}, 1));
    char *body = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    double mig0 = fleet_metric(g_sbase, "sluice_frontend_migrations_total");
    kill_stream_t k = {.killed = -1, .kill_at = p + 1};
    ck_assert_int_eq(kill_stream_run(body, &k), 200);
    static sse_all_t got;
    sse_parse(k.body, &got);
    ck_assert_int_ge(k.killed, 0);
    ck_assert_double_eq(fleet_metric(g_sbase, "sluice_frontend_migrations_total"), mig0 + 1);
    ck_assert(got.done && !got.error);
    ck_assert_msg(strcmp(got.text[0], want) == 0, "stop '%s': got '%s', want '%s'", stop,
                  got.text[0], want);
    ck_assert_str_eq(got.finish[0], "stop");
    free(body);
    free(k.body);
    slow_restart(k.killed);
}
END_TEST

/* ---- fixture ------------------------------------------------------------------------------ */

static void fixture_start(void) {
    char log[512];
    if (harness_mkdtemp("sl-fr", g_dir, sizeof g_dir) != 0) return;
    if (fleet_genmodel(g_dir, "tiny", g_model, sizeof g_model) != 0) {
        fprintf(stderr, "fixture: genmodel failed\n");
        return;
    }
    snprintf(g_fast, sizeof g_fast, "%s/fast.json", g_dir);
    snprintf(g_slowp, sizeof g_slowp, "%s/slow.json", g_dir);
    if (fleet_mocker_params_write(g_fast, 0.01, 0.00001) ||
        fleet_mocker_params_write(g_slowp, SLOW_DECODE_S, 0.00001))
        return;
    if (harness_etcd_start(&g_etcd) != 0 || harness_nats_start(&g_nats, 0) != 0) {
        fprintf(stderr, "fixture: servers did not start\n");
        return;
    }
    g_env = (fleet_env_t){.ns = "fr", .etcd = g_etcd.url, .nats = g_nats.url};
    g_senv = (fleet_env_t){.ns = "slow", .etcd = g_etcd.url, .nats = g_nats.url};
    for (int i = 0; i < 2; i++) {
        g_wport[i] = harness_free_port();
        g_swport[i] = harness_free_port();
        snprintf(g_wbase[i], sizeof g_wbase[i], "http://127.0.0.1:%d", g_wport[i]);
        snprintf(g_swbase[i], sizeof g_swbase[i], "http://127.0.0.1:%d", g_swport[i]);
        g_w[i] = spawn_worker(&g_env, g_wport[i], false, i);
        g_sw[i] = spawn_worker(&g_senv, g_swport[i], true, i);
    }
    g_rport = harness_free_port();
    snprintf(g_rbase, sizeof g_rbase, "http://127.0.0.1:%d", g_rport);
    g_router = spawn_router();
    int port = harness_free_port(), sport = harness_free_port();
    snprintf(g_base, sizeof g_base, "http://127.0.0.1:%d", port);
    snprintf(g_sbase, sizeof g_sbase, "http://127.0.0.1:%d", sport);
    snprintf(log, sizeof log, "%s/frontend.log", g_dir);
    fleet_frontend_opts_t fo = {.model = g_model,
                                .port = port,
                                .router_mode = "kv",
                                .router_timeout = "300ms",
                                .stream_timeout = "30s",
                                .log = log};
    g_fe = fleet_frontend_spawn(&g_env, &fo);
    snprintf(log, sizeof log, "%s/fe-slow.log", g_dir);
    fleet_frontend_opts_t so = {
        .model = g_model, .port = sport, .stream_timeout = "30s", .log = log};
    g_sfe = fleet_frontend_spawn(&g_senv, &so);
    if (!fleet_wait_healthy(g_base, "\"workers\":2", 20000) ||
        !fleet_wait_healthy(g_sbase, "\"workers\":2", 20000) ||
        !fleet_wait_healthy(g_rbase, "\"workers\":2", 20000)) {
        fprintf(stderr, "fixture: services not healthy (see %s)\n", g_dir);
        return;
    }
    g_ok = true;
}

int main(void) {
    sl_log_init("test");
    sl_log_set_level(SL_LOG_ERROR);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    fixture_start();
    Suite *s = suite_create("frontend_router");
    TCase *tc = tcase_create("frontend_router");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_active_seqs_freed_at_stream_end);
    tcase_add_test(tc, test_cached_prompt_tokens_metric);
    tcase_add_test(tc, test_context_limit_400);
    tcase_add_test(tc, test_n3_concurrent_choices);
    tcase_add_test(tc, test_busy_503_health_still_answers);
    tcase_add_test(tc, test_router_killed_then_back);
    tcase_add_test(tc, test_worker_gone_migrates_at_once);
    tcase_add_test(tc, test_worker_sigterm_migrates_at_once);
    tcase_add_test(tc, test_stop_string_across_migration);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    pid_t *all[] = {&g_fe, &g_sfe, &g_router, &g_w[0], &g_w[1], &g_sw[0], &g_sw[1]};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (*all[i] > 0) harness_kill(*all[i], SIGTERM, 5000);
    char cmd[600];
    snprintf(cmd, sizeof cmd,
             "cat %s/fe*.log %s/frontend.log 2>/dev/null | grep -E 'Sanitizer|runtime error'",
             g_dir, g_dir);
    if (g_dir[0] && system(cmd) == 0) {
        fprintf(stderr, "ERROR: sanitizer report in a frontend log under %s\n", g_dir);
        nf++;
    }
    harness_nats_destroy(&g_nats);
    harness_etcd_destroy(&g_etcd);
    if (g_dir[0] && !getenv("SLUICE_KEEP_TMP")) harness_rmtree(g_dir);
    curl_global_cleanup();
    return nf == 0 ? 0 : 1;
}
