/* test_frontend.c - sluice-frontend end to end: real nats-server, etcd, two
 * sluice-decode-workers on a genmodel Llama, the frontend, and HTTP over real
 * sockets (libcurl). Covers chat and completions (streamed and whole), the
 * same greedy tokens as sluice-run, stop strings, every error status, 64
 * concurrent streams, client disconnect, both workers used, kill -9 before
 * and during a stream (retry, migration), and the official openai client.
 */
#include "common/base/log.h"
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
#include <unistd.h>

#define NS "fe"

static harness_etcd_t g_etcd;
static harness_nats_t g_nats;
static char g_dir[256], g_model[512], g_base[64];
static pid_t g_fe, g_w[2];
static int g_wport[2];
static bool g_ok;

/* ---- processes --------------------------------------------------------------- */

static pid_t worker_spawn_at(const char *ns, const char *nats, int sys_port, const char *log) {
    char port[16];
    snprintf(port, sizeof port, "%d", sys_port);
    char *argv[16];
    int n = 0;
    argv[n++] = "sluice-decode-worker";
    argv[n++] = "--model";
    argv[n++] = g_model;
    argv[n++] = "--namespace";
    argv[n++] = (char *)ns;
    argv[n++] = "--etcd";
    argv[n++] = g_etcd.url;
    argv[n++] = "--nats";
    argv[n++] = (char *)nats;
    argv[n++] = "--kv-blocks";
    argv[n++] = "256";
    argv[n++] = "--threads";
    argv[n++] = "1";
    argv[n++] = "--system-port";
    argv[n++] = port;
    argv[n] = NULL;
    return harness_spawn(argv, NULL, log);
}

static pid_t worker_spawn(int i) {
    char log[512];
    snprintf(log, sizeof log, "%s/worker%d.log", g_dir, i);
    return worker_spawn_at(NS, g_nats.url, g_wport[i], log);
}

static const char *g_fe_nats; /* NATS of the next frontend_spawn; NULL: g_nats */
static const char *g_fe_router_mode;

static pid_t frontend_spawn(const char *ns, int port, const char *api_key, const char *log) {
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    char *argv[24];
    int n = 0;
    argv[n++] = "sluice-frontend";
    argv[n++] = "--model-path";
    argv[n++] = g_model;
    argv[n++] = "--namespace";
    argv[n++] = (char *)ns;
    argv[n++] = "--etcd";
    argv[n++] = g_etcd.url;
    argv[n++] = "--nats";
    argv[n++] = (char *)(g_fe_nats ? g_fe_nats : g_nats.url);
    argv[n++] = "--port";
    argv[n++] = p;
    argv[n++] = "--host";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--stream-timeout";
    argv[n++] = "2s";
    argv[n++] = "--max-body-bytes";
    argv[n++] = "1000000";
    argv[n++] = "--http-threads";
    argv[n++] = "200";
    if (g_fe_router_mode) {
        argv[n++] = "--router-mode";
        argv[n++] = (char *)g_fe_router_mode;
    }
    if (api_key) {
        argv[n++] = "--api-key";
        argv[n++] = (char *)api_key;
    }
    argv[n] = NULL;
    return harness_spawn(argv, NULL, log);
}

/* ---- HTTP ---------------------------------------------------------------------- */

typedef struct resp {
    long status;
    char *body;
    size_t len;
    size_t abort_after; /* >0: drop the connection after this many bytes */
} resp_t;

static size_t on_write(char *p, size_t sz, size_t nm, void *ud) {
    resp_t *r = ud;
    size_t n = sz * nm;
    char *nb = realloc(r->body, r->len + n + 1);
    if (!nb) return 0;
    r->body = nb;
    memcpy(r->body + r->len, p, n);
    r->len += n;
    r->body[r->len] = 0;
    if (r->abort_after && r->len >= r->abort_after) return 0;
    return n;
}

/* POST (body != NULL) or GET base+path; returns the status (0 on transport
 * failure). r->body is malloc'd. */
static long http_base(const char *base, const char *path, const char *body, const char *key,
                      resp_t *r) {
    char url[256], auth[300];
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
        h = curl_slist_append(h, auth);
    }
    snprintf(url, sizeof url, "%s%s", base, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body) curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    r->status = 0;
    if (curl_easy_perform(c) == CURLE_OK || r->abort_after)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (!r->body) r->body = calloc(1, 1);
    return r->status;
}

static long http(const char *path, const char *body, resp_t *r) {
    return http_base(g_base, path, body, NULL, r);
}

/* Concatenates the streamed content of choice index (chat delta.content or
 * text); counts events; returns the finish_reason of that choice (static) and
 * whether [DONE] came. usage_completion gets the usage chunk's count or -1. */
typedef struct sse_out {
    char text[65536];
    int events;
    char finish[16];
    bool done;
    int usage_completion, usage_prompt;
    bool error;
} sse_out_t;

static void sse_collect(const char *body, int index, sse_out_t *o) {
    memset(o, 0, sizeof *o);
    o->usage_completion = -1;
    const char *p = body;
    while ((p = strstr(p, "data: "))) {
        p += 6;
        const char *e = strstr(p, "\n\n");
        if (!e) break;
        if (strncmp(p, "[DONE]", 6) == 0) {
            o->done = true;
            break;
        }
        cJSON *j = cJSON_ParseWithLength(p, (size_t)(e - p));
        o->events++;
        if (cJSON_GetObjectItem(j, "error")) o->error = true;
        cJSON *u = cJSON_GetObjectItem(j, "usage");
        if (cJSON_IsObject(u)) {
            o->usage_completion = cJSON_GetObjectItem(u, "completion_tokens")->valueint;
            o->usage_prompt = cJSON_GetObjectItem(u, "prompt_tokens")->valueint;
        }
        cJSON *ch;
        cJSON_ArrayForEach(ch, cJSON_GetObjectItem(j, "choices")) {
            if (cJSON_GetObjectItem(ch, "index")->valueint != index) continue;
            cJSON *d = cJSON_GetObjectItem(ch, "delta");
            cJSON *t = d ? cJSON_GetObjectItem(d, "content") : cJSON_GetObjectItem(ch, "text");
            if (cJSON_IsString(t))
                strncat(o->text, t->valuestring, sizeof o->text - strlen(o->text) - 1);
            cJSON *f = cJSON_GetObjectItem(ch, "finish_reason");
            if (cJSON_IsString(f)) snprintf(o->finish, sizeof o->finish, "%s", f->valuestring);
        }
        cJSON_Delete(j);
        p = e + 2;
    }
}

static double worker_metric(int i, const char *name) {
    char base[64];
    resp_t r = {0};
    snprintf(base, sizeof base, "http://127.0.0.1:%d", g_wport[i]);
    double v = -1;
    if (http_base(base, "/metrics", NULL, NULL, &r) == 200) {
        const char *p = r.body;
        size_t nl = strlen(name);
        while ((p = strstr(p, name))) {
            if ((p == r.body || p[-1] == '\n') && (p[nl] == ' ' || p[nl] == '{')) {
                const char *sp = strchr(p, ' ');
                if (sp) v = strtod(sp + 1, NULL);
                break;
            }
            p += nl;
        }
    }
    free(r.body);
    return v;
}

static double fe_metric(const char *name) {
    resp_t r = {0};
    double v = -1;
    if (http("/metrics", NULL, &r) == 200) {
        const char *p = strstr(r.body, name);
        while (p && p != r.body && p[-1] != '\n') p = strstr(p + 1, name);
        if (p) {
            const char *sp = strchr(p, ' ');
            if (sp) v = strtod(sp + 1, NULL);
        }
    }
    free(r.body);
    return v;
}

static char *json_str_at(const char *body, const char *a, int idx, const char *b, const char *c) {
    cJSON *j = cJSON_Parse(body);
    cJSON *x = cJSON_GetArrayItem(cJSON_GetObjectItem(j, a), idx);
    if (b) x = cJSON_GetObjectItem(x, b);
    if (c) x = cJSON_GetObjectItem(x, c);
    char *s = cJSON_IsString(x) ? strdup(x->valuestring) : NULL;
    cJSON_Delete(j);
    return s;
}

/* Copy of s with only its ASCII bytes: the worker replaces invalid UTF-8
 * (split across chunks) with U+FFFD, sluice-run prints the raw bytes. The
 * token identity is checked through the logprobs. */
static char *strip_fffd(const char *s) {
    char *o = strdup(s), *w = o;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x80) *w++ = *p;
    *w = 0;
    return o;
}

/* ---- tests --------------------------------------------------------------------- */

START_TEST(test_health_models_live) {
    ck_assert_msg(g_ok, "fixture failed");
    resp_t r = {0};
    ck_assert_int_eq(http("/health", NULL, &r), 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"workers\":2"));
    free(r.body);
    r = (resp_t){0};
    ck_assert_int_eq(http("/v1/models", NULL, &r), 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"id\":\"tiny\""));
    free(r.body);
    r = (resp_t){0};
    ck_assert_int_eq(http("/live", NULL, &r), 200);
    free(r.body);
    r = (resp_t){0};
    ck_assert_int_eq(http("/nope", NULL, &r), 404);
    free(r.body);
}
END_TEST

START_TEST(test_completion_matches_sluice_run) {
    ck_assert_msg(g_ok, "fixture failed");
    char cmd[2048], bin[512];
    harness_bin("sluice-run", bin, sizeof bin);
    snprintf(cmd, sizeof cmd,
             "%s --model %s --prompt 'Once upon a time' --max-tokens 24 --temperature 0 --json "
             "--quiet 2>/dev/null",
             bin, g_model);
    FILE *f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    static char out[65536];
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = 0;
    pclose(f);
    cJSON *ref = cJSON_Parse(out);
    ck_assert_ptr_nonnull(ref);
    const char *ref_text = cJSON_GetObjectItem(ref, "text")->valuestring;
    int ref_n = cJSON_GetArraySize(cJSON_GetObjectItem(ref, "generated_ids"));

    resp_t r = {0};
    ck_assert_int_eq(http("/v1/completions",
                          "{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":24,"
                          "\"temperature\":0,\"logprobs\":0}",
                          &r),
                     200);
    char *text = json_str_at(r.body, "choices", 0, "text", NULL);
    ck_assert_ptr_nonnull(text);
    char *a = strip_fffd(text), *b = strip_fffd(ref_text);
    ck_assert_str_eq(a, b);
    free(a);
    free(b);
    cJSON *j = cJSON_Parse(r.body);
    /* the same greedy tokens: the chosen logprobs agree one by one */
    cJSON *lps = cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "logprobs"),
        "token_logprobs");
    cJSON *ref_lps = cJSON_GetObjectItem(ref, "logprobs");
    ck_assert_int_eq(cJSON_GetArraySize(lps), ref_n);
    for (int i = 0; i < ref_n; i++)
        ck_assert_double_eq_tol(cJSON_GetArrayItem(lps, i)->valuedouble,
                                cJSON_GetArrayItem(ref_lps, i)->valuedouble, 1e-4);
    cJSON *u = cJSON_GetObjectItem(j, "usage");
    ck_assert_int_eq(cJSON_GetObjectItem(u, "completion_tokens")->valueint, ref_n);
    ck_assert_int_eq(cJSON_GetObjectItem(u, "total_tokens")->valueint,
                     ref_n + cJSON_GetObjectItem(u, "prompt_tokens")->valueint);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion");
    ck_assert_int_eq(strncmp(cJSON_GetObjectItem(j, "id")->valuestring, "cmpl-", 5), 0);
    cJSON_Delete(j);
    free(text);
    free(r.body);

    /* streamed, the same text */
    r = (resp_t){0};
    ck_assert_int_eq(http("/v1/completions",
                          "{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":24,"
                          "\"temperature\":0,\"stream\":true,\"stream_options\":{\"include_usage\":"
                          "true}}",
                          &r),
                     200);
    static sse_out_t o;
    sse_collect(r.body, 0, &o);
    a = strip_fffd(o.text);
    b = strip_fffd(ref_text);
    ck_assert_str_eq(a, b);
    free(a);
    free(b);
    ck_assert(o.done);
    ck_assert_int_eq(o.usage_completion, ref_n);
    free(r.body);
    cJSON_Delete(ref);
}
END_TEST

START_TEST(test_chat_stream_and_whole) {
    ck_assert_msg(g_ok, "fixture failed");
    const char *body = "{\"model\":\"tiny\",\"messages\":[{\"role\":\"system\",\"content\":\"be "
                       "brief\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
                       "\"hello\"},{\"type\":\"text\",\"text\":\" there\"}]}],\"max_tokens\":16,"
                       "\"temperature\":0,\"ignore_eos\":true%s}";
    char b[1024];
    resp_t r = {0};
    snprintf(b, sizeof b, body, "");
    ck_assert_int_eq(http("/v1/chat/completions", b, &r), 200);
    char *whole = json_str_at(r.body, "choices", 0, "message", "content");
    ck_assert_ptr_nonnull(whole);
    char *fin = json_str_at(r.body, "choices", 0, "finish_reason", NULL);
    ck_assert_str_eq(fin, "length");
    ck_assert_ptr_nonnull(strstr(r.body, "\"object\":\"chat.completion\""));
    ck_assert_ptr_nonnull(strstr(r.body, "\"completion_tokens\":16"));
    free(fin);
    free(r.body);
    r = (resp_t){0};
    snprintf(b, sizeof b, body, ",\"stream\":true");
    ck_assert_int_eq(http("/v1/chat/completions", b, &r), 200);
    static sse_out_t o;
    sse_collect(r.body, 0, &o);
    ck_assert_str_eq(o.text, whole);
    ck_assert_str_eq(o.finish, "length");
    ck_assert(o.done);
    ck_assert_int_eq(o.usage_completion, -1); /* not asked for */
    ck_assert_ptr_nonnull(strstr(r.body, "\"role\":\"assistant\""));
    free(whole);
    free(r.body);

    /* apply-template renders the same request's prompt */
    r = (resp_t){0};
    ck_assert_int_eq(
        http("/apply-template", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &r),
        200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"prompt\":"));
    ck_assert_ptr_nonnull(strstr(r.body, "hi"));
    free(r.body);
}
END_TEST

START_TEST(test_tokenize_detokenize) {
    ck_assert_msg(g_ok, "fixture failed");
    resp_t r = {0};
    ck_assert_int_eq(http("/tokenize", "{\"model\":\"tiny\",\"prompt\":\"hello world\"}", &r), 200);
    cJSON *j = cJSON_Parse(r.body);
    cJSON *toks = cJSON_GetObjectItem(j, "tokens");
    ck_assert_int_gt(cJSON_GetArraySize(toks), 0);
    ck_assert_int_eq(cJSON_GetObjectItem(j, "count")->valueint, cJSON_GetArraySize(toks));
    char *ts = cJSON_PrintUnformatted(toks);
    char b[2048];
    snprintf(b, sizeof b, "{\"model\":\"tiny\",\"tokens\":%s}", ts);
    free(ts);
    cJSON_Delete(j);
    free(r.body);
    r = (resp_t){0};
    ck_assert_int_eq(http("/detokenize", b, &r), 200);
    ck_assert_ptr_nonnull(strstr(r.body, "hello world"));
    free(r.body);
    r = (resp_t){0};
    ck_assert_int_eq(http("/detokenize", "{\"tokens\":[99999999]}", &r), 400);
    free(r.body);
}
END_TEST

START_TEST(test_stop_string_across_tokens) {
    ck_assert_msg(g_ok, "fixture failed");
    /* generate greedily, then stop on a string that straddles two tokens */
    resp_t r = {0};
    ck_assert_int_eq(http("/v1/completions",
                          "{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":24,"
                          "\"temperature\":0,\"ignore_eos\":true,\"logprobs\":0}",
                          &r),
                     200);
    cJSON *j = cJSON_Parse(r.body);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cJSON *toks = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "logprobs"), "tokens");
    ck_assert_int_ge(cJSON_GetArraySize(toks), 6);
    /* find two adjacent plain tokens; the stop string is the last byte of
     * one and the first of the next */
    char stop[8] = "";
    size_t prefix_len = 0;
    for (int i = 2; i + 1 < cJSON_GetArraySize(toks) && !stop[0]; i++) {
        const char *a = cJSON_GetArrayItem(toks, i)->valuestring;
        const char *bb = cJSON_GetArrayItem(toks, i + 1)->valuestring;
        size_t la = strlen(a);
        if (la == 0 || !bb[0] || strncmp(a, "bytes:", 6) == 0 || strncmp(bb, "bytes:", 6) == 0 ||
            (unsigned char)a[la - 1] >= 0x80 || (unsigned char)bb[0] >= 0x80)
            continue;
        stop[0] = a[la - 1];
        stop[1] = bb[0];
        stop[2] = 0;
        const char *text = cJSON_GetObjectItem(ch, "text")->valuestring;
        const char *at = strstr(text, stop);
        prefix_len = (size_t)(at - text);
    }
    ck_assert_msg(stop[0], "no two adjacent ASCII tokens in %s", r.body);
    const char *text = cJSON_GetObjectItem(ch, "text")->valuestring;
    char want[4096];
    snprintf(want, sizeof want, "%.*s", (int)prefix_len, text);
    cJSON_Delete(j);
    free(r.body);
    cJSON *req = cJSON_Parse("{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":"
                             "24,\"temperature\":0,\"ignore_eos\":true}");
    cJSON_AddItemToObject(req, "stop", cJSON_CreateStringArray((const char *[]){stop}, 1));
    char *b = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    r = (resp_t){0};
    ck_assert_int_eq(http("/v1/completions", b, &r), 200);
    char *got = json_str_at(r.body, "choices", 0, "text", NULL);
    char *fin = json_str_at(r.body, "choices", 0, "finish_reason", NULL);
    ck_assert_str_eq(got, want);
    ck_assert_str_eq(fin, "stop");
    free(got);
    free(fin);
    free(b);
    free(r.body);
}
END_TEST

START_TEST(test_errors) {
    ck_assert_msg(g_ok, "fixture failed");
    struct {
        const char *path, *body, *param;
        long status;
    } cases[] = {
        {"/v1/completions", "{not json", NULL, 400},
        {"/v1/completions", "[]", NULL, 400},
        {"/v1/completions", "{\"prompt\":\"x\"}", "model", 400},
        {"/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"x\",\"temperature\":9}",
         "temperature", 400},
        {"/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"x\",\"n\":0}", "n", 400},
        {"/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"x\",\"max_tokens\":-1}", "max_tokens",
         400},
        {"/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"x\",\"stop\":5}", "stop", 400},
        {"/v1/completions", "{\"model\":\"tiny\",\"prompt\":[1,-2]}", "prompt", 400},
        {"/v1/completions", "{\"model\":\"tiny\",\"prompt\":[100000]}", "prompt", 400},
        {"/v1/chat/completions", "{\"model\":\"tiny\",\"messages\":[]}", "messages", 400},
        {"/v1/chat/completions", "{\"model\":\"tiny\",\"messages\":[{\"content\":\"x\"}]}",
         "messages[0]", 400},
        {"/v1/chat/completions",
         "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\""
         "}]}]}",
         "messages[0].content", 400},
        {"/v1/chat/completions",
         "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_"
         "logprobs\":"
         "3}",
         "top_logprobs", 400},
        {"/v1/completions", "{\"model\":\"gpt-4\",\"prompt\":\"x\"}", "model", 404},
        {"/v1/chat/completions",
         "{\"model\":\"gpt-4\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "model",
         404},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        resp_t r = {0};
        long st = http(cases[i].path, cases[i].body, &r);
        ck_assert_msg(st == cases[i].status, "case %zu: %ld %s", i, st, r.body);
        cJSON *j = cJSON_Parse(r.body);
        cJSON *e = cJSON_GetObjectItem(j, "error");
        ck_assert_msg(cJSON_IsString(cJSON_GetObjectItem(e, "message")), "case %zu: %s", i, r.body);
        ck_assert(cJSON_IsString(cJSON_GetObjectItem(e, "type")));
        cJSON *p = cJSON_GetObjectItem(e, "param");
        if (cases[i].param)
            ck_assert_msg(cJSON_IsString(p) && strcmp(p->valuestring, cases[i].param) == 0,
                          "case %zu: param in %s", i, r.body);
        cJSON_Delete(j);
        free(r.body);
    }
    /* a body over --max-body-bytes: 413 */
    size_t big = 1200000;
    char *b = malloc(big + 64);
    int off = snprintf(b, 64, "{\"model\":\"tiny\",\"prompt\":\"");
    memset(b + off, 'a', big);
    snprintf(b + off + big, 8, "\"}");
    resp_t r = {0};
    ck_assert_int_eq(http("/v1/completions", b, &r), 413);
    ck_assert_ptr_nonnull(strstr(r.body, "max-body-bytes"));
    free(r.body);
    free(b);
    /* a prompt longer than the context (4096 tokens): 400 */
    b = malloc(64 + 5000 * 4);
    off = snprintf(b, 64, "{\"model\":\"tiny\",\"prompt\":[");
    for (int i = 0; i < 5000; i++) off += snprintf(b + off, 8, "%s7", i ? "," : "");
    snprintf(b + off, 8, "]}");
    r = (resp_t){0};
    ck_assert_int_eq(http("/v1/completions", b, &r), 400);
    ck_assert_ptr_nonnull(strstr(r.body, "context"));
    free(r.body);
    free(b);
    /* wrong method */
    r = (resp_t){0};
    ck_assert_int_eq(http("/v1/completions", NULL, &r), 405);
    free(r.body);
}
END_TEST

START_TEST(test_no_worker_503_and_api_key_401) {
    ck_assert_msg(g_ok, "fixture failed");
    char log[512], base[64];
    int port = harness_free_port();
    snprintf(log, sizeof log, "%s/fe-empty.log", g_dir);
    pid_t fe = frontend_spawn("empty", port, "sekret", log);
    ck_assert_int_gt(fe, 0);
    snprintf(base, sizeof base, "http://127.0.0.1:%d", port);
    resp_t r = {0};
    long long end = harness_now_ms() + 5000;
    while (http_base(base, "/live", NULL, NULL, &r) != 200 && harness_now_ms() < end) {
        free(r.body);
        r = (resp_t){0};
        harness_sleep_ms(50);
    }
    free(r.body);
    r = (resp_t){0};
    ck_assert_int_eq(http_base(base, "/health", NULL, NULL, &r), 503);
    ck_assert_ptr_nonnull(strstr(r.body, "reason"));
    free(r.body);
    const char *body = "{\"model\":\"tiny\",\"prompt\":\"x\"}";
    r = (resp_t){0};
    ck_assert_int_eq(http_base(base, "/v1/completions", body, NULL, &r), 401);
    ck_assert_ptr_nonnull(strstr(r.body, "authentication_error"));
    free(r.body);
    r = (resp_t){0};
    ck_assert_int_eq(http_base(base, "/v1/completions", body, "wrong", &r), 401);
    free(r.body);
    r = (resp_t){0};
    ck_assert_int_eq(http_base(base, "/v1/completions", body, "sekret", &r), 503);
    ck_assert_ptr_nonnull(strstr(r.body, "no worker"));
    free(r.body);
    harness_kill(fe, SIGTERM, 5000);
}
END_TEST

typedef struct conc_arg {
    int i;
    long status;
    sse_out_t out;
    char want[64];
} conc_arg_t;

static void *conc_thread(void *p) {
    conc_arg_t *a = p;
    char b[512];
    /* each stream's prompt is its own token id run: outputs must not mix */
    snprintf(b, sizeof b,
             "{\"model\":\"tiny\",\"prompt\":[%d,%d,%d,%d],\"max_tokens\":12,\"temperature\":0,"
             "\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
             10 + a->i, 20 + a->i, 30 + a->i, 40 + a->i);
    resp_t r = {0};
    a->status = http("/v1/completions", b, &r);
    sse_collect(r.body, 0, &a->out);
    free(r.body);
    return NULL;
}

START_TEST(test_64_concurrent_streams) {
    ck_assert_msg(g_ok, "fixture failed");
    enum { N = 64 };
    static conc_arg_t args[N];
    pthread_t th[N];
    double w0 = worker_metric(0, "sluice_worker_requests_total");
    double w1 = worker_metric(1, "sluice_worker_requests_total");
    for (int i = 0; i < N; i++) {
        args[i] = (conc_arg_t){.i = i};
        pthread_create(&th[i], NULL, conc_thread, &args[i]);
    }
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    /* reference: the same prompts one at a time */
    for (int i = 0; i < N; i += 9) {
        static conc_arg_t ref;
        ref = (conc_arg_t){.i = i};
        conc_thread(&ref);
        ck_assert_int_eq(args[i].status, 200);
        ck_assert_msg(strcmp(args[i].out.text, ref.out.text) == 0, "stream %d tangled", i);
    }
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(args[i].status, 200);
        ck_assert(args[i].out.done);
        ck_assert_int_eq(args[i].out.usage_completion, 12);
    }
    /* --router-mode kv without a router: round-robin fallback */
    ck_assert_double_ge(fe_metric("sluice_frontend_route_fallbacks_total"), N);
    /* both workers got traffic */
    ck_assert_double_gt(worker_metric(0, "sluice_worker_requests_total"), w0 + 10);
    ck_assert_double_gt(worker_metric(1, "sluice_worker_requests_total"), w1 + 10);
}
END_TEST

START_TEST(test_client_disconnect_frees_blocks) {
    ck_assert_msg(g_ok, "fixture failed");
    resp_t r = {.abort_after = 600};
    http("/v1/completions",
         "{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":4000,\"temperature\":"
         "0,\"ignore_eos\":true,\"stream\":true}",
         &r);
    free(r.body);
    long long end = harness_now_ms() + 5000;
    double used = 1;
    while (harness_now_ms() < end) {
        used = worker_metric(0, "sluice_worker_kv_blocks_used") +
               worker_metric(1, "sluice_worker_kv_blocks_used");
        if (used == 0) break;
        harness_sleep_ms(20);
    }
    ck_assert_msg(used == 0, "blocks still held after the client left");
    ck_assert_double_ge(worker_metric(0, "sluice_worker_cancel_requests_total") +
                            worker_metric(1, "sluice_worker_cancel_requests_total"),
                        1);
}
END_TEST

START_TEST(test_n_choices_and_logprobs) {
    ck_assert_msg(g_ok, "fixture failed");
    resp_t r = {0};
    ck_assert_int_eq(
        http("/v1/chat/completions",
             "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}"
             "],\"max_tokens\":5,\"n\":3,\"seed\":7,\"temperature\":1,\"logprobs\":true,"
             "\"top_logprobs\":2,\"ignore_eos\":true}",
             &r),
        200);
    cJSON *j = cJSON_Parse(r.body);
    cJSON *chs = cJSON_GetObjectItem(j, "choices");
    ck_assert_int_eq(cJSON_GetArraySize(chs), 3);
    for (int i = 0; i < 3; i++) {
        cJSON *ch = cJSON_GetArrayItem(chs, i);
        ck_assert_int_eq(cJSON_GetObjectItem(ch, "index")->valueint, i);
        cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "logprobs"), "content");
        ck_assert_int_eq(cJSON_GetArraySize(content), 5);
        cJSON *e = cJSON_GetArrayItem(content, 0);
        ck_assert(cJSON_IsNumber(cJSON_GetObjectItem(e, "logprob")));
        ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(e, "top_logprobs")), 2);
    }
    ck_assert_ptr_nonnull(strstr(r.body, "\"completion_tokens\":15"));
    cJSON_Delete(j);
    free(r.body);
}
END_TEST

/* n = 3 with a seed and temperature > 0 on the real model: the choices run at
 * once and differ from each other, yet each is reproducible, streamed
 * (interleaved, tagged with its index) or whole. */
START_TEST(test_n3_seeded_stream_and_whole) {
    ck_assert_msg(g_ok, "fixture failed");
    const char *fmt = "{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":24,"
                      "\"n\":3,\"seed\":11,\"temperature\":1.5,\"ignore_eos\":true%s}";
    char b[512];
    char *whole[2][3];
    for (int k = 0; k < 2; k++) {
        resp_t r = {0};
        snprintf(b, sizeof b, fmt, "");
        ck_assert_int_eq(http("/v1/completions", b, &r), 200);
        for (int i = 0; i < 3; i++) {
            whole[k][i] = json_str_at(r.body, "choices", i, "text", NULL);
            ck_assert_ptr_nonnull(whole[k][i]);
        }
        ck_assert_ptr_nonnull(strstr(r.body, "\"completion_tokens\":72"));
        free(r.body);
    }
    for (int i = 0; i < 3; i++) ck_assert_str_eq(whole[0][i], whole[1][i]);
    ck_assert_msg(strcmp(whole[0][0], whole[0][1]) || strcmp(whole[0][1], whole[0][2]),
                  "all choices alike: %s", whole[0][0]);
    resp_t r = {0};
    snprintf(b, sizeof b, fmt, ",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
    ck_assert_int_eq(http("/v1/completions", b, &r), 200);
    static sse_out_t o;
    for (int i = 0; i < 3; i++) {
        sse_collect(r.body, i, &o);
        ck_assert_str_eq(o.text, whole[0][i]);
        ck_assert_str_eq(o.finish, "length");
        ck_assert(o.done);
        ck_assert_int_eq(o.usage_completion, 72);
    }
    free(r.body);
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 3; i++) free(whole[k][i]);
}
END_TEST

/* kill -9 of one worker: requests keep succeeding (retry before the first
 * token), and a stream cut mid-way migrates and completes. Runs last: it
 * restarts the killed worker at the end. */
typedef struct mig_arg {
    long status;
    sse_out_t out;
} mig_arg_t;

static void *mig_thread(void *p) {
    mig_arg_t *a = p;
    resp_t r = {0};
    a->status = http("/v1/completions",
                     "{\"model\":\"tiny\",\"prompt\":\"Once upon a time\",\"max_tokens\":2000,"
                     "\"temperature\":0,\"ignore_eos\":true,\"stream\":true,\"stream_options\":{"
                     "\"include_usage\":true}}",
                     &r);
    sse_collect(r.body, 0, &a->out);
    free(r.body);
    return NULL;
}

START_TEST(test_kill9_retry_and_migration) {
    ck_assert_msg(g_ok, "fixture failed");
    static mig_arg_t a;
    pthread_t th;
    pthread_create(&th, NULL, mig_thread, &a);
    int victim = -1;
    long long end = harness_now_ms() + 5000;
    while (victim < 0 && harness_now_ms() < end) {
        for (int i = 0; i < 2 && victim < 0; i++)
            if (worker_metric(i, "sluice_worker_kv_blocks_used") > 0) victim = i;
    }
    ck_assert_int_ge(victim, 0);
    harness_kill(g_w[victim], SIGKILL, 1000);
    g_w[victim] = 0;
    pthread_join(th, NULL);
    ck_assert_int_eq(a.status, 200);
    ck_assert(a.out.done);
    ck_assert(!a.out.error);
    ck_assert_int_eq(a.out.usage_completion, 2000);
    ck_assert_str_eq(a.out.finish, "length");
    ck_assert_double_ge(fe_metric("sluice_frontend_migrations_total"), 1);

    /* while the dead worker is still registered (its lease lasts up to 10 s)
     * requests still succeed: those sent to it are retried elsewhere */
    resp_t h = {0};
    http("/health", NULL, &h);
    bool dead_listed = strstr(h.body, "\"workers\":2") != NULL;
    free(h.body);
    for (int i = 0; i < 6; i++) {
        resp_t r = {0};
        ck_assert_int_eq(
            http("/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"hi\",\"max_tokens\":3}", &r),
            200);
        free(r.body);
    }
    if (dead_listed) ck_assert_double_ge(fe_metric("sluice_frontend_retries_total"), 1);
    g_w[victim] = worker_spawn(victim);
}
END_TEST

/* A generate request over NATS max_payload: 413 at once, never a timeout. */
START_TEST(test_nats_payload_413) {
    ck_assert_msg(g_ok, "fixture failed");
    harness_nats_t small;
    char log[512], base[64];
    ck_assert_int_eq(harness_nats_start(&small, 4096), 0);
    int wport = harness_free_port(), port = harness_free_port();
    snprintf(log, sizeof log, "%s/worker-small.log", g_dir);
    pid_t w = worker_spawn_at("small", small.url, wport, log);
    snprintf(log, sizeof log, "%s/fe-small.log", g_dir);
    g_fe_nats = small.url;
    pid_t fe = frontend_spawn("small", port, NULL, log);
    g_fe_nats = NULL;
    snprintf(base, sizeof base, "http://127.0.0.1:%d", port);
    long long end = harness_now_ms() + 20000;
    bool up = false;
    while (!up && harness_now_ms() < end) {
        resp_t r = {0};
        up = http_base(base, "/health", NULL, NULL, &r) == 200;
        free(r.body);
        if (!up) harness_sleep_ms(100);
    }
    ck_assert_msg(up, "small frontend never healthy");
    /* 3000 token ids of 2 bytes each: ~6 KB of protobuf over a 4 KB limit */
    char *b = malloc(64 + 3000 * 5);
    int off = snprintf(b, 64, "{\"model\":\"tiny\",\"max_tokens\":2,\"prompt\":[");
    for (int i = 0; i < 3000; i++) off += snprintf(b + off, 8, "%s300", i ? "," : "");
    snprintf(b + off, 8, "]}");
    resp_t r = {0};
    long long t0 = harness_now_ms();
    ck_assert_int_eq(http_base(base, "/v1/completions", b, NULL, &r), 413);
    ck_assert_int_lt(harness_now_ms() - t0, 1500);
    ck_assert_ptr_nonnull(strstr(r.body, "too large"));
    free(r.body);
    free(b);
    /* a small request still works there */
    r = (resp_t){0};
    ck_assert_int_eq(http_base(base, "/v1/completions",
                               "{\"model\":\"tiny\",\"prompt\":\"hi\",\"max_tokens\":2}", NULL, &r),
                     200);
    free(r.body);
    harness_kill(fe, SIGTERM, 5000);
    harness_kill(w, SIGTERM, 5000);
    harness_nats_destroy(&small);
}
END_TEST

START_TEST(test_openai_python_client) {
    ck_assert_msg(g_ok, "fixture failed");
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "SLUICE_FRONTEND_URL=%s/v1 python3 tests/python/test_openai_client.py 2>&1", g_base);
    FILE *f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    static char out[16384];
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = 0;
    int st = pclose(f);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "openai client test failed:\n%s", out);
}
END_TEST

/* ---- fixture ------------------------------------------------------------------- */

static void fixture_start(void) {
    char cmd[2048], log[512];
    const char *bd = getenv("SLUICE_BENCH_DIR");
    if (harness_mkdtemp("sl-fe", g_dir, sizeof g_dir) != 0) return;
    snprintf(g_model, sizeof g_model, "%s/tiny", g_dir);
    snprintf(cmd, sizeof cmd,
             "%s/genmodel --arch llama --dtype f32 --layers 2 --hidden 64 --heads 4 --kv-heads 2 "
             "--intermediate 128 --vocab 512 --std 0.1 --seed 5 --out %s >/dev/null",
             bd && *bd ? bd : "build/bench", g_model);
    if (system(cmd) != 0) {
        fprintf(stderr, "fixture: %s failed\n", cmd);
        return;
    }
    if (harness_etcd_start(&g_etcd) != 0 || harness_nats_start(&g_nats, 0) != 0) {
        fprintf(stderr, "fixture: servers did not start\n");
        return;
    }
    for (int i = 0; i < 2; i++) {
        g_wport[i] = harness_free_port();
        g_w[i] = worker_spawn(i);
    }
    int port = harness_free_port();
    snprintf(g_base, sizeof g_base, "http://127.0.0.1:%d", port);
    snprintf(log, sizeof log, "%s/frontend.log", g_dir);
    g_fe_router_mode = "kv"; /* no router runs: every request falls back */
    g_fe = frontend_spawn(NS, port, NULL, log);
    g_fe_router_mode = NULL;
    long long end = harness_now_ms() + 20000;
    while (harness_now_ms() < end) {
        resp_t r = {0};
        long st = http("/health", NULL, &r);
        bool two = st == 200 && strstr(r.body, "\"workers\":2");
        free(r.body);
        if (two) {
            g_ok = true;
            return;
        }
        harness_sleep_ms(100);
    }
    fprintf(stderr, "fixture: frontend not healthy with 2 workers (see %s)\n", g_dir);
}

int main(void) {
    sl_log_init("test");
    sl_log_set_level(SL_LOG_ERROR);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    fixture_start();
    Suite *s = suite_create("frontend");
    TCase *tc = tcase_create("frontend");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_health_models_live);
    tcase_add_test(tc, test_completion_matches_sluice_run);
    tcase_add_test(tc, test_chat_stream_and_whole);
    tcase_add_test(tc, test_tokenize_detokenize);
    tcase_add_test(tc, test_stop_string_across_tokens);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_no_worker_503_and_api_key_401);
    tcase_add_test(tc, test_n_choices_and_logprobs);
    tcase_add_test(tc, test_n3_seeded_stream_and_whole);
    tcase_add_test(tc, test_64_concurrent_streams);
    tcase_add_test(tc, test_client_disconnect_frees_blocks);
    tcase_add_test(tc, test_openai_python_client);
    tcase_add_test(tc, test_nats_payload_413);
    tcase_add_test(tc, test_kill9_retry_and_migration);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (g_fe > 0) harness_kill(g_fe, SIGTERM, 5000);
    /* the frontends must stop clean: no sanitizer report in their logs */
    char cmd[600];
    snprintf(cmd, sizeof cmd,
             "cat %s/fe*.log %s/frontend.log 2>/dev/null | grep -E "
             "'Sanitizer|runtime error'",
             g_dir, g_dir);
    if (g_dir[0] && system(cmd) == 0) {
        fprintf(stderr, "ERROR: sanitizer report in a frontend log under %s\n", g_dir);
        nf++;
    }
    for (int i = 0; i < 2; i++)
        if (g_w[i] > 0) harness_kill(g_w[i], SIGTERM, 5000);
    harness_nats_destroy(&g_nats);
    harness_etcd_destroy(&g_etcd);
    if (g_dir[0] && !getenv("SLUICE_KEEP_TMP")) harness_rmtree(g_dir);
    curl_global_cleanup();
    return nf == 0 ? 0 : 1;
}
