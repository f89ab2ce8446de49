/* client.c - the replay's HTTP side: a schedule-driven libcurl multi loop
 * (see client.h). Each in-flight request owns a slot (easy handle, SSE
 * parser, body, gaps); slots are freed when the request ends, so memory
 * follows the number in flight. */
#include "bench/replay/client.h"

#include "bench/loadgen/httpc.h"

#include "common/base/clock.h"
#include "common/base/err.h"
#include "common/base/sse.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define CL_MAX_SSE_EVENT (1u << 20)
#define CL_MAX_ERR_BODY  512u
#define CL_TICK_MS       50

static volatile sig_atomic_t cl_stop_flag;

void client_stop(void) {
    cl_stop_flag = 1;
}

typedef struct cl_slot {
    size_t idx; /* trace index */
    CURL *easy;
    sse_parser_t *sse;
    char *body; /* request JSON */
    int64_t t_start, t_first, t_last;
    uint64_t text_events;
    bool done, status_read;
    long status;
    const char *err_kind;
    char err_msg[128];
    char err_body[CL_MAX_ERR_BODY + 1];
    size_t err_len;
    double *gaps; /* (n_gaps, cap_gaps) ms */
    size_t n_gaps, cap_gaps;
    client_rec_t *rec;
    char curl_err[CURL_ERROR_SIZE];
} cl_slot_t;

int client_results_init(client_results_t *r, size_t n) {
    memset(r, 0, sizeof *r);
    r->n = n;
    r->recs = calloc(n ? n : 1, sizeof *r->recs);
    r->itl_ms = stats_samples_new();
    return r->recs && r->itl_ms ? 0 : SL_ENOMEM;
}

void client_results_release(client_results_t *r) {
    if (!r) return;
    free(r->recs);
    stats_samples_free(r->itl_ms);
    memset(r, 0, sizeof *r);
}

static void cl_fail(cl_slot_t *s, const char *kind, const char *msg, size_t len) {
    if (s->err_kind) return; /* the first one explains */
    s->err_kind = kind;
    size_t j = 0;
    for (size_t i = 0; i < len && j + 1 < sizeof s->err_msg; i++) {
        unsigned char c = (unsigned char)msg[i];
        s->err_msg[j++] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
    }
    s->err_msg[j] = 0;
}

static void cl_usage(cl_slot_t *s, const cJSON *j) {
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
    if (!cJSON_IsObject(u)) return;
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens_details");
    const cJSON *cc =
        cJSON_IsObject(d) ? cJSON_GetObjectItemCaseSensitive(d, "cached_tokens") : NULL;
    if (cJSON_IsNumber(pt) && pt->valuedouble >= 0 && pt->valuedouble < 1e12)
        s->rec->prompt_tokens = (int64_t)pt->valuedouble;
    if (cJSON_IsNumber(ct) && ct->valuedouble >= 0 && ct->valuedouble < 1e12)
        s->rec->completion_tokens = (int64_t)ct->valuedouble;
    if (cJSON_IsNumber(cc) && cc->valuedouble >= 0 && cc->valuedouble < 1e12)
        s->rec->cached_tokens = (int64_t)cc->valuedouble;
}

static bool cl_has_text(const cJSON *j) {
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(j, "choices");
    const cJSON *c0 = cJSON_IsArray(ch) ? cJSON_GetArrayItem(ch, 0) : NULL;
    const cJSON *t = cJSON_IsObject(c0) ? cJSON_GetObjectItemCaseSensitive(c0, "text") : NULL;
    return cJSON_IsString(t) && t->valuestring[0];
}

static int cl_on_event(const sse_event_t *ev, void *ud) {
    cl_slot_t *s = ud;
    int64_t now = sl_mono_ns();
    if (sse_data_is_done(ev->data, ev->data_len)) {
        s->done = true;
        return 0;
    }
    if (s->done) return 0;
    cJSON *j = cJSON_ParseWithLength(ev->data, ev->data_len);
    if (!cJSON_IsObject(j)) {
        cl_fail(s, "bad_json", ev->data, ev->data_len);
        goto out;
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (e && !cJSON_IsNull(e)) {
        const cJSON *m = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "message") : e;
        const char *msg = cJSON_IsString(m) ? m->valuestring : "error";
        cl_fail(s, "stream_error", msg, strlen(msg));
        goto out;
    }
    cl_usage(s, j);
    if (cl_has_text(j)) {
        if (!s->t_first) {
            s->t_first = now;
        } else {
            if (s->n_gaps == s->cap_gaps) {
                size_t nc = s->cap_gaps ? s->cap_gaps * 2 : 64;
                double *ng = realloc(s->gaps, nc * sizeof *ng);
                if (!ng) {
                    cl_fail(s, "client_nomem", "", 0);
                    goto out;
                }
                s->gaps = ng;
                s->cap_gaps = nc;
            }
            s->gaps[s->n_gaps++] = (double)(now - s->t_last) / 1e6;
        }
        s->t_last = now;
        s->text_events++;
    }
out:
    cJSON_Delete(j);
    return 0;
}

static size_t cl_on_write(char *ptr, size_t size, size_t nmemb, void *ud) {
    cl_slot_t *s = ud;
    size_t n = size * nmemb;
    if (!s->status_read) {
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->status);
        s->status_read = true;
    }
    if (s->status != 200) { /* keep the start of the error body */
        size_t room = CL_MAX_ERR_BODY - s->err_len, k = n < room ? n : room;
        memcpy(s->err_body + s->err_len, ptr, k);
        s->err_len += k;
        s->err_body[s->err_len] = 0;
        return n;
    }
    int rc = sse_parser_feed(s->sse, ptr, n);
    if (rc) {
        cl_fail(s, "bad_sse", sl_strerror(rc), strlen(sl_strerror(rc)));
        return 0; /* aborts the transfer */
    }
    return n;
}

static void cl_slot_free(cl_slot_t *s) {
    if (!s) return;
    curl_easy_cleanup(s->easy);
    sse_parser_free(s->sse);
    free(s->body);
    free(s->gaps);
    free(s);
}

/* Grows *buf to hold len + need + 1 bytes. */
static int cl_reserve(char **buf, size_t *cap, size_t len, size_t need) {
    if (need > SIZE_MAX / 2 - len) return SL_ETOOBIG;
    if (len + need + 1 <= *cap) return 0;
    size_t nc = *cap ? *cap : 4096;
    while (nc < len + need + 1) nc *= 2;
    char *nb = realloc(*buf, nc);
    if (!nb) return SL_ENOMEM;
    *buf = nb;
    *cap = nc;
    return 0;
}

/* The request body of trace request q. model_json is the quoted model name. */
static int cl_body(const client_cfg_t *cfg, const char *model_json, const trace_req_t *q,
                   char **out) {
    int rc = 0;
    char *b = NULL;
    size_t cap = 0, len = 0;
    uint32_t n = trace_prompt_len(q, cfg->tokens_per_hash);
    /* (n) ids of at most 10 digits and a comma, plus the fixed fields */
    if ((rc = cl_reserve(&b, &cap, 0, strlen(model_json) + (size_t)n * 11 + 256))) goto out;
    len = (size_t)snprintf(b, cap, "{\"model\":%s,\"prompt\":[", model_json);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t tok = trace_prompt_token(q, cfg->tokens_per_hash, cfg->vocab, i);
        len += (size_t)snprintf(b + len, cap - len, i ? ",%" PRIu32 : "%" PRIu32, tok);
    }
    len += (size_t)snprintf(b + len, cap - len,
                            "],\"max_tokens\":%" PRIu32 ",\"min_tokens\":%" PRIu32
                            ",\"ignore_eos\":true,\"temperature\":0,\"stream\":true,"
                            "\"stream_options\":{\"include_usage\":true}}",
                            q->output_len, q->output_len);
    if (len + 1 >= cap) rc = SL_ETOOBIG; /* cannot happen: reserved above */
out:
    if (rc) {
        free(b);
        b = NULL;
    }
    *out = b;
    return rc;
}

typedef struct cl_run {
    const client_cfg_t *cfg;
    const trace_t *t;
    client_results_t *res;
    CURLM *multi;
    struct curl_slist *headers;
    char *model_json;
    cl_slot_t **live; /* (n_live) in flight, for cancellation */
    size_t n_live;
    int64_t t_first_send, t_last_done;
} cl_run_t;

static int cl_launch(cl_run_t *c, size_t idx, int64_t scheduled) {
    int rc = SL_ENOMEM;
    const trace_req_t *q = &c->t->reqs[idx];
    cl_slot_t *s = calloc(1, sizeof *s);
    if (!s) return SL_ENOMEM;
    s->idx = idx;
    s->rec = &c->res->recs[idx];
    s->rec->prompt_tokens = s->rec->completion_tokens = s->rec->cached_tokens = -1;
    s->rec->ttft_ms = s->rec->e2e_ms = -1;
    s->rec->want_prompt = trace_prompt_len(q, c->cfg->tokens_per_hash);
    s->rec->want_output = q->output_len;
    s->easy = curl_easy_init();
    s->sse = sse_parser_new(CL_MAX_SSE_EVENT, cl_on_event, s);
    if (!s->easy || !s->sse) goto fail;
    if ((rc = cl_body(c->cfg, c->model_json, q, &s->body))) goto fail;
    long timeout_ms = (long)(c->cfg->timeout_s * 1000.0);
    CURL *e = s->easy;
    curl_easy_setopt(e, CURLOPT_URL, c->cfg->url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, s->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(s->body));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, cl_on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
    httpc_easy_setup(e, s, s->curl_err, timeout_ms, 10000L);
    s->t_start = sl_mono_ns();
    s->rec->lateness_ms = (double)(s->t_start - scheduled) / 1e6;
    if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
        rc = SL_EIO;
        goto fail;
    }
    c->live[c->n_live++] = s;
    if (!c->t_first_send) c->t_first_send = s->t_start;
    return 0;
fail:
    cl_slot_free(s);
    return rc;
}

static void cl_finish(cl_run_t *c, cl_slot_t *s, CURLcode cc) {
    int64_t t_end = sl_mono_ns();
    client_rec_t *r = s->rec;
    curl_multi_remove_handle(c->multi, s->easy);
    for (size_t i = 0; i < c->n_live; i++)
        if (c->live[i] == s) {
            c->live[i] = c->live[--c->n_live];
            break;
        }
    c->t_last_done = t_end;
    if (cc != CURLE_OK && !s->err_kind) {
        const char *m = s->curl_err[0] ? s->curl_err : curl_easy_strerror(cc);
        cl_fail(s, httpc_curl_kind(cc), m, strlen(m));
    } else if (cc == CURLE_OK) {
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->status);
        if (s->status != 200) {
            char kind[16];
            snprintf(kind, sizeof kind, "http_%ld", s->status);
            snprintf(r->error, sizeof r->error, "%s: %.140s", kind, s->err_body);
        } else {
            if (sse_parser_finish(s->sse) && !s->done)
                cl_fail(s, "incomplete_stream", "stream ended inside an event", 28);
            if (!s->done) cl_fail(s, "incomplete_stream", "no [DONE]", 9);
            if (!s->text_events) cl_fail(s, "no_content", "no text in the stream", 21);
        }
    }
    if (s->err_kind) snprintf(r->error, sizeof r->error, "%.20s: %.127s", s->err_kind, s->err_msg);
    if (r->error[0]) {
        c->res->failed++;
        goto out;
    }
    r->ok = true;
    c->res->ok++;
    r->ttft_ms = (double)(s->t_first - s->t_start) / 1e6;
    r->e2e_ms = (double)(t_end - s->t_start) / 1e6;
    for (size_t i = 0; i < s->n_gaps; i++) stats_samples_add(c->res->itl_ms, s->gaps[i]);
out:
    cl_slot_free(s);
}

static void cl_drain(cl_run_t *c) {
    CURLMsg *m;
    int left = 0;
    while ((m = curl_multi_info_read(c->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        cl_slot_t *s = NULL;
        CURLcode cc = m->data.result; /* m is invalid after the handle is removed */
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&s);
        if (s) cl_finish(c, s, cc);
    }
}

static void cl_progress(const cl_run_t *c, size_t sent, int64_t now, int64_t *next, bool last) {
    if (!c->cfg->progress || (!last && now < *next)) return;
    *next = now + 1000000000LL;
    fprintf(stderr, "\rreplay: sent %zu/%zu  in-flight %zu  ok %" PRIu64 "  failed %" PRIu64 " ",
            sent, c->res->n, c->n_live, c->res->ok, c->res->failed);
    if (last) fputc('\n', stderr);
}

int client_run(const client_cfg_t *cfg, const trace_t *t, client_results_t *res) {
    int rc = 0;
    bool global = false;
    cl_run_t c = {.cfg = cfg, .t = t, .res = res};
    cJSON *mj = NULL;
    if (!cfg || !t || !res || !cfg->url || !cfg->model || !(cfg->speed > 0) || !cfg->vocab ||
        !cfg->tokens_per_hash || !(cfg->timeout_s > 0) || res->n > t->n)
        return SL_EINVAL;
    cl_stop_flag = 0;
    struct rlimit rl; /* open loop: one socket per request in flight */
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    rc = SL_ENOMEM;
    if (!(mj = cJSON_CreateString(cfg->model)) || !(c.model_json = cJSON_PrintUnformatted(mj)))
        goto out;
    if (!(c.live = calloc(res->n ? res->n : 1, sizeof *c.live))) goto out;
    rc = SL_EIO;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) goto out;
    global = true;
    if (!(c.multi = curl_multi_init())) goto out;
    const char *hdrs[] = {"Content-Type: application/json", "Accept: text/event-stream",
                          "Expect:"}; /* no 100-continue round trip on large bodies */
    rc = SL_ENOMEM;
    for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
        struct curl_slist *n = curl_slist_append(c.headers, hdrs[i]);
        if (!n) goto out;
        c.headers = n;
    }
    rc = 0;
    int64_t t0 = sl_mono_ns(), next_progress = t0;
    double base_ms = res->n ? t->reqs[0].t_ms : 0;
    size_t sent = 0;
    for (;;) {
        int64_t now = sl_mono_ns();
        if (cl_stop_flag) break;
        while (sent < res->n) {
            int64_t due = t0 + (int64_t)((t->reqs[sent].t_ms - base_ms) / cfg->speed * 1e6);
            if (due > now) break;
            if ((rc = cl_launch(&c, sent, due))) goto out;
            sent++;
        }
        if (sent == res->n && c.n_live == 0) break;
        int running = 0;
        curl_multi_perform(c.multi, &running);
        cl_drain(&c);
        cl_progress(&c, sent, sl_mono_ns(), &next_progress, false);
        int64_t wait_ns = (int64_t)CL_TICK_MS * 1000000;
        if (sent < res->n) {
            int64_t due = t0 + (int64_t)((t->reqs[sent].t_ms - base_ms) / cfg->speed * 1e6);
            if (due - sl_mono_ns() < wait_ns) wait_ns = due - sl_mono_ns();
        }
        if (wait_ns < 0) wait_ns = 0;
        curl_multi_poll(c.multi, NULL, 0, (int)((wait_ns + 999999) / 1000000), NULL);
    }
    cl_progress(&c, sent, sl_mono_ns(), &next_progress, true);
    res->sent = sent;
out:
    for (size_t i = 0; i < c.n_live; i++) { /* stopped or failed: abandon what is in flight */
        curl_multi_remove_handle(c.multi, c.live[i]->easy);
        snprintf(c.live[i]->rec->error, sizeof c.live[i]->rec->error, "cancelled");
        res->cancelled++;
        cl_slot_free(c.live[i]);
    }
    if (c.t_first_send) res->duration_s = (double)(c.t_last_done - c.t_first_send) / 1e9;
    free(c.live);
    if (c.multi) curl_multi_cleanup(c.multi);
    curl_slist_free_all(c.headers);
    if (global) curl_global_cleanup();
    cJSON_free(c.model_json);
    cJSON_Delete(mj);
    return rc;
}
