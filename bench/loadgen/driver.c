/* driver.c - loadgen's single-threaded libcurl multi loop (see driver.h).
 *
 * Each in-flight request lives in a slot (easy handle, SSE parser, timings);
 * slots are recycled through a free list so a long run allocates only what
 * its peak concurrency needs. Timestamps come from CLOCK_MONOTONIC when the
 * bytes reach the write callback, which is as close to the socket as a
 * libcurl client gets.
 */
#include "bench/loadgen/driver.h"

#include "bench/loadgen/httpc.h"

#include "common/base/clock.h"
#include "common/base/err.h"
#include "common/base/sse.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define DRV_MAX_BODY             (64u << 20) /* non-streamed response */
#define DRV_MAX_ERR_BODY         4096u       /* kept of an error response */
#define DRV_MAX_SSE_EVENT        (16u << 20)
#define DRV_WARMUP_STREAM        (1ull << 61) /* workload indices of warmup requests */
#define DRV_TICK_MS              100
#define DRV_MAX_TOKENS_PER_EVENT 4096
#define DRV_PROGRESS_EVERY       250000000LL /* ns */

static volatile sig_atomic_t drv_stop_flag;

void driver_stop(void) {
    drv_stop_flag = 1;
}

typedef struct drv drv_t;

typedef struct drv_slot {
    drv_t *d;
    CURL *easy;
    sse_parser_t *sse;
    workload_req_t req;
    uint64_t index; /* workload index of a measured request */
    bool measured;
    int64_t t_start, t_first, t_last; /* ns, monotonic; t_first 0 = no content yet */
    uint64_t content_events;
    uint64_t tokens_seen;     /* per-event token counts summed */
    int64_t usage_completion; /* -1 = not reported */
    int64_t usage_prompt;     /* -1 = not reported */
    int64_t prev_usage;       /* completion_tokens at the previous chunk */
    long status;              /* HTTP status, read at the first body bytes */
    bool status_read;
    bool done;            /* [DONE] seen */
    const char *err_kind; /* first protocol error (static string), NULL = none */
    char err_msg[200];
    char *body; /* (body_cap) response bytes: whole non-streamed body or error text */
    size_t body_len, body_cap;
    driver_gaps_t itl; /* inter-token gaps, committed on success */
    char curl_err[CURL_ERROR_SIZE];
    struct drv_slot *next_free;
} drv_slot_t;

struct drv {
    const driver_cfg_t *cfg;
    const workload_t *w;
    driver_results_t *res;
    CURLM *multi;
    struct curl_slist *headers;
    drv_slot_t **all; /* (nall) every slot, for cleanup */
    size_t nall, cap_all;
    drv_slot_t *free_list;
    long inflight;
    uint64_t next_index; /* measured requests */
    uint64_t warm_index;
    int64_t t0, t_last_done; /* measured phase */
    int64_t next_progress;
    workload_rng_t arrivals;
};

/* ---- results ------------------------------------------------------------------------------- */

int driver_results_init(driver_results_t *r) {
    memset(r, 0, sizeof *r);
    r->ttft_ms = stats_samples_new();
    r->itl_ms = stats_samples_new();
    r->tpot_ms = stats_samples_new();
    r->e2e_ms = stats_samples_new();
    r->output_tokens = stats_samples_new();
    r->input_tokens = stats_samples_new();
    if (!r->ttft_ms || !r->itl_ms || !r->tpot_ms || !r->e2e_ms || !r->output_tokens ||
        !r->input_tokens)
        return SL_ENOMEM;
    return 0;
}

void driver_results_release(driver_results_t *r) {
    if (!r) return;
    stats_samples_free(r->ttft_ms);
    stats_samples_free(r->itl_ms);
    stats_samples_free(r->tpot_ms);
    stats_samples_free(r->e2e_ms);
    stats_samples_free(r->output_tokens);
    stats_samples_free(r->input_tokens);
    free(r->req_ttft_ms);
    memset(r, 0, sizeof *r);
}

int driver_results_request(driver_results_t *r, uint64_t index, double ttft_ms) {
    if (!r->per_request) return 0;
    if (index >= (uint64_t)1 << 32) return SL_ERANGE;
    if (index >= r->cap_req) {
        size_t cap = r->cap_req ? r->cap_req : 1024;
        while (cap <= index) cap *= 2;
        double *n = realloc(r->req_ttft_ms, cap * sizeof *n);
        if (!n) return SL_ENOMEM;
        for (size_t i = r->cap_req; i < cap; i++) n[i] = NAN;
        r->req_ttft_ms = n;
        r->cap_req = cap;
    }
    r->req_ttft_ms[index] = ttft_ms;
    if (index >= r->n_req) r->n_req = (size_t)index + 1;
    return 0;
}

/* Copies at most len bytes of s into dst as one printable line. */
static void drv_oneline(char *dst, size_t cap, const char *s, size_t len) {
    size_t j = 0;
    for (size_t i = 0; i < len && j + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[j++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    dst[j] = 0;
}

static void drv_error_count(driver_results_t *r, const char *kind, const char *msg) {
    size_t i;
    for (i = 0; i < r->nkinds; i++)
        if (strcmp(r->kinds[i].kind, kind) == 0) break;
    if (i == r->nkinds) {
        if (r->nkinds == DRIVER_MAX_KINDS) {
            i = DRIVER_MAX_KINDS - 1;
            snprintf(r->kinds[i].kind, sizeof r->kinds[i].kind, "other");
        } else {
            r->nkinds++;
            snprintf(r->kinds[i].kind, sizeof r->kinds[i].kind, "%s", kind);
            drv_oneline(r->kinds[i].example, sizeof r->kinds[i].example, msg ? msg : "",
                        msg ? strlen(msg) : 0);
        }
    }
    r->kinds[i].count++;
    r->failed++;
}

/* ---- per-request parsing ------------------------------------------------------------------- */

static void drv_slot_fail(drv_slot_t *s, const char *kind, const char *msg, size_t len) {
    if (s->err_kind) return; /* keep the first */
    s->err_kind = kind;
    drv_oneline(s->err_msg, sizeof s->err_msg, msg, len);
}

int driver_gaps_push(driver_gaps_t *g, double ms, uint64_t k) {
    for (uint64_t i = 0; i < k; i++) {
        if (g->n == g->cap) {
            size_t cap = g->cap ? g->cap * 2 : 256;
            double *n = realloc(g->v, cap * sizeof *n);
            if (!n) return SL_ENOMEM;
            g->v = n;
            g->cap = cap;
        }
        g->v[g->n++] = ms;
    }
    return 0;
}

void driver_gaps_commit(driver_gaps_t *g, stats_samples_t *set) {
    for (size_t i = 0; i < g->n; i++) stats_samples_add(set, g->v[i]);
    g->n = 0;
}

/* Reads usage.{completion,prompt}_tokens if present. */
static bool drv_usage(drv_slot_t *s, const cJSON *j, int64_t *completion) {
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
    if (!cJSON_IsObject(u)) return false;
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
    if (cJSON_IsNumber(pt) && pt->valuedouble >= 0 && pt->valuedouble < 1e12)
        s->usage_prompt = (int64_t)pt->valuedouble;
    if (cJSON_IsNumber(ct) && ct->valuedouble >= 0 && ct->valuedouble < 1e12) {
        s->usage_completion = (int64_t)ct->valuedouble;
        *completion = s->usage_completion;
        return true;
    }
    return false;
}

static bool drv_nonempty(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) && v->valuestring[0];
}

/* True if the first choice of a chunk carries generated text. */
static bool drv_chunk_has_content(const cJSON *j, bool chat) {
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(j, "choices");
    const cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    if (!cJSON_IsObject(c0)) return false;
    if (!chat) return drv_nonempty(c0, "text");
    const cJSON *delta = cJSON_GetObjectItemCaseSensitive(c0, "delta");
    if (!cJSON_IsObject(delta)) return false;
    return drv_nonempty(delta, "content") || drv_nonempty(delta, "reasoning_content") ||
           drv_nonempty(delta, "reasoning");
}

static const char *drv_error_message(const cJSON *j) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (!e || cJSON_IsNull(e)) return NULL;
    const cJSON *m = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "message") : e;
    return cJSON_IsString(m) ? m->valuestring : "error";
}

static int drv_on_event(const sse_event_t *ev, void *ud) {
    drv_slot_t *s = ud;
    int64_t now = sl_mono_ns();
    if (sse_data_is_done(ev->data, ev->data_len)) {
        s->done = true;
        return 0;
    }
    if (s->done) return 0; /* nothing is expected after [DONE] */
    cJSON *j = cJSON_ParseWithLength(ev->data, ev->data_len);
    if (!j || !cJSON_IsObject(j)) {
        drv_slot_fail(s, "bad_json", ev->data, ev->data_len);
        cJSON_Delete(j);
        return 0;
    }
    const char *em = drv_error_message(j);
    if (em) {
        drv_slot_fail(s, "stream_error", em, strlen(em));
        cJSON_Delete(j);
        return 0;
    }
    int64_t ct = -1;
    bool has_usage = drv_usage(s, j, &ct);
    if (drv_chunk_has_content(j, s->d->cfg->chat)) {
        uint64_t k = 1;
        if (has_usage && ct > s->prev_usage) k = (uint64_t)(ct - s->prev_usage);
        if (k > DRV_MAX_TOKENS_PER_EVENT) k = DRV_MAX_TOKENS_PER_EVENT; /* untrusted count */
        if (!s->t_first) {
            s->t_first = now;
        } else if (driver_gaps_push(&s->itl, (double)(now - s->t_last) / 1e6 / (double)k, k)) {
            drv_slot_fail(s, "client_nomem", "", 0);
        }
        s->t_last = now;
        s->content_events++;
        s->tokens_seen += k;
    }
    if (has_usage) s->prev_usage = ct;
    cJSON_Delete(j);
    return 0;
}

static int drv_body_append(drv_slot_t *s, const char *p, size_t n, size_t limit) {
    if (n > limit - s->body_len) return SL_ETOOBIG;
    if (s->body_len + n + 1 > s->body_cap) {
        size_t cap = s->body_cap ? s->body_cap : 4096;
        while (cap < s->body_len + n + 1) cap *= 2;
        char *nb = realloc(s->body, cap);
        if (!nb) return SL_ENOMEM;
        s->body = nb;
        s->body_cap = cap;
    }
    memcpy(s->body + s->body_len, p, n);
    s->body_len += n;
    s->body[s->body_len] = 0;
    return 0;
}

/* Linux leaves quick-ACK mode on its own, so it is asked for again after
 * each read. */
static void drv_quickack(drv_slot_t *s) {
    curl_socket_t fd = CURL_SOCKET_BAD;
    if (curl_easy_getinfo(s->easy, CURLINFO_ACTIVESOCKET, &fd) == CURLE_OK &&
        fd != CURL_SOCKET_BAD) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
}

static size_t drv_on_header(char *ptr, size_t size, size_t nmemb, void *ud) {
    (void)ptr;
    drv_slot_t *s = ud;
    if (s->d->cfg->quickack) drv_quickack(s);
    return size * nmemb;
}

static size_t drv_on_write(char *ptr, size_t size, size_t nmemb, void *ud) {
    drv_slot_t *s = ud;
    size_t n = size * nmemb;
    if (s->d->cfg->quickack) drv_quickack(s);
    if (!s->status_read) {
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->status);
        s->status_read = true;
    }
    if (s->status != 200) { /* keep the start of the error body for the report */
        size_t room = DRV_MAX_ERR_BODY - s->body_len;
        if (room) drv_body_append(s, ptr, n < room ? n : room, DRV_MAX_ERR_BODY);
        return n;
    }
    if (s->d->cfg->stream) {
        int rc = sse_parser_feed(s->sse, ptr, n);
        if (rc) {
            drv_slot_fail(s, "bad_sse", sl_strerror(rc), strlen(sl_strerror(rc)));
            return 0; /* aborts the transfer */
        }
        return n;
    }
    int rc = drv_body_append(s, ptr, n, DRV_MAX_BODY);
    if (rc) {
        drv_slot_fail(s, rc == SL_ETOOBIG ? "too_big" : "client_nomem", "", 0);
        return 0;
    }
    return n;
}

/* Non-streamed 200 response: usage and the presence of output. */
static void drv_parse_body(drv_slot_t *s) {
    cJSON *j = cJSON_ParseWithLength(s->body ? s->body : "", s->body_len);
    if (!j || !cJSON_IsObject(j)) {
        drv_slot_fail(s, "bad_json", s->body ? s->body : "", s->body_len);
        goto out;
    }
    const char *em = drv_error_message(j);
    if (em) {
        drv_slot_fail(s, "response_error", em, strlen(em));
        goto out;
    }
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(j, "choices");
    if (!cJSON_IsArray(choices) || cJSON_GetArraySize(choices) < 1) {
        drv_slot_fail(s, "bad_response", "no choices", 10);
        goto out;
    }
    int64_t ct = -1;
    drv_usage(s, j, &ct);
out:
    cJSON_Delete(j);
}

/* ---- slots --------------------------------------------------------------------------------- */

static void drv_slot_free(drv_slot_t *s) {
    if (!s) return;
    curl_easy_cleanup(s->easy);
    sse_parser_free(s->sse);
    workload_req_release(&s->req);
    free(s->body);
    free(s->itl.v);
    free(s);
}

static drv_slot_t *drv_slot_get(drv_t *d) {
    drv_slot_t *s = d->free_list;
    if (s) {
        d->free_list = s->next_free;
        return s;
    }
    if (d->nall == d->cap_all) {
        size_t cap = d->cap_all ? d->cap_all * 2 : 64;
        drv_slot_t **n = realloc(d->all, cap * sizeof *n);
        if (!n) return NULL;
        d->all = n;
        d->cap_all = cap;
    }
    s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->d = d;
    s->easy = curl_easy_init();
    s->sse = sse_parser_new(DRV_MAX_SSE_EVENT, drv_on_event, s);
    if (!s->easy || !s->sse) {
        drv_slot_free(s);
        return NULL;
    }
    const driver_cfg_t *c = d->cfg;
    long timeout_ms = (long)(c->timeout_s * 1000.0);
    CURL *e = s->easy;
    curl_easy_setopt(e, CURLOPT_URL, c->url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, d->headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, drv_on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
    if (c->fresh_connect) curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    if (c->quickack) {
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, drv_on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, s);
    }
    httpc_easy_setup(e, s, s->curl_err, timeout_ms, timeout_ms < 10000 ? timeout_ms : 10000L);
    d->all[d->nall++] = s;
    return s;
}

static void drv_slot_put(drv_t *d, drv_slot_t *s) {
    workload_req_release(&s->req);
    sse_parser_reset(s->sse);
    s->body_len = 0;
    s->itl.n = 0;
    s->next_free = d->free_list;
    d->free_list = s;
}

static int drv_launch(drv_t *d, bool measured) {
    drv_slot_t *s = drv_slot_get(d);
    if (!s) return SL_ENOMEM;
    uint64_t index = measured ? d->next_index++ : DRV_WARMUP_STREAM + d->warm_index++;
    s->index = index;
    int rc = workload_request_build(d->w, index, &s->req);
    if (rc) {
        drv_slot_put(d, s);
        return rc;
    }
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, s->req.body);
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)s->req.body_len);
    s->measured = measured;
    s->t_first = s->t_last = 0;
    s->content_events = s->tokens_seen = 0;
    s->usage_completion = s->usage_prompt = -1;
    s->prev_usage = 0;
    s->status = 0;
    s->status_read = false;
    s->done = false;
    s->err_kind = NULL;
    s->err_msg[0] = 0;
    s->curl_err[0] = 0;
    s->t_start = sl_mono_ns();
    if (curl_multi_add_handle(d->multi, s->easy) != CURLM_OK) {
        drv_slot_put(d, s);
        return SL_EIO;
    }
    d->inflight++;
    if (measured) d->res->sent++;
    return 0;
}

static void drv_finish(drv_t *d, drv_slot_t *s, CURLcode cc) {
    int64_t t_end = sl_mono_ns();
    curl_multi_remove_handle(d->multi, s->easy);
    d->inflight--;
    driver_results_t *r = d->res;
    char kind[32] = "";
    const char *msg = "";
    if (cc != CURLE_OK && s->err_kind) { /* we aborted it */
        snprintf(kind, sizeof kind, "%s", s->err_kind);
        msg = s->err_msg;
    } else if (cc != CURLE_OK) {
        snprintf(kind, sizeof kind, "%s", httpc_curl_kind(cc));
        msg = s->curl_err[0] ? s->curl_err : curl_easy_strerror(cc);
    } else {
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->status);
        if (s->status != 200) {
            snprintf(kind, sizeof kind, "http_%ld", s->status);
            msg = s->body ? s->body : "";
        } else if (d->cfg->stream) {
            if (sse_parser_finish(s->sse) && !s->done)
                drv_slot_fail(s, "incomplete_stream", "stream ended inside an event", 28);
            if (!s->err_kind && !s->done) drv_slot_fail(s, "incomplete_stream", "no [DONE]", 9);
            if (!s->err_kind && !s->content_events)
                drv_slot_fail(s, "no_content", "stream had no content", 21);
        } else {
            drv_parse_body(s);
        }
        if (!kind[0] && s->err_kind) {
            snprintf(kind, sizeof kind, "%s", s->err_kind);
            msg = s->err_msg;
        }
    }
    if (s->measured) {
        d->t_last_done = t_end;
        if (kind[0]) {
            drv_error_count(r, kind, msg);
            driver_results_request(r, s->index, NAN);
        } else {
            r->ok++;
            stats_samples_add(r->e2e_ms, (double)(t_end - s->t_start) / 1e6);
            uint64_t out = s->usage_completion >= 0 ? (uint64_t)s->usage_completion
                           : d->cfg->stream         ? s->tokens_seen
                                                    : 0;
            uint64_t in = s->usage_prompt >= 0 ? (uint64_t)s->usage_prompt : s->req.input_words;
            stats_samples_add(r->output_tokens, (double)out);
            stats_samples_add(r->input_tokens, (double)in);
            r->sum_output_tokens += out;
            r->sum_input_tokens += in;
            driver_results_request(r, s->index,
                                   d->cfg->stream ? (double)(s->t_first - s->t_start) / 1e6 : NAN);
            if (d->cfg->stream) {
                stats_samples_add(r->ttft_ms, (double)(s->t_first - s->t_start) / 1e6);
                if (out > 1)
                    stats_samples_add(r->tpot_ms,
                                      (double)(t_end - s->t_first) / 1e6 / (double)(out - 1));
                driver_gaps_commit(&s->itl, r->itl_ms);
            }
        }
    }
    drv_slot_put(d, s);
}

static int drv_drain(drv_t *d) {
    int n = 0, left = 0;
    CURLMsg *m;
    while ((m = curl_multi_info_read(d->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        drv_slot_t *s = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&s);
        CURLcode cc = m->data.result; /* read before finish: m is invalid after remove */
        if (s) drv_finish(d, s, cc);
        n++;
    }
    return n;
}

static void drv_cancel_all(drv_t *d) {
    for (size_t i = 0; i < d->nall; i++) {
        drv_slot_t *s = d->all[i];
        if (!s->req.body) continue; /* idle */
        curl_multi_remove_handle(d->multi, s->easy);
        d->inflight--;
        if (s->measured) d->res->cancelled++;
        drv_slot_put(d, s);
    }
}

/* ---- progress ------------------------------------------------------------------------------ */

static void drv_progress(drv_t *d, bool measured, uint64_t launched, int64_t now, bool final) {
    const driver_cfg_t *c = d->cfg;
    if (!c->progress || (!final && now < d->next_progress)) return;
    d->next_progress = now + DRV_PROGRESS_EVERY;
    const driver_results_t *r = d->res;
    double frac;
    char what[64];
    if (!measured) {
        frac = c->warmup ? (double)d->warm_index / (double)c->warmup : 1;
        snprintf(what, sizeof what, "warmup %" PRIu64 "/%ld", launched, c->warmup);
    } else if (c->num_requests > 0) {
        frac = (double)(r->ok + r->failed) / (double)c->num_requests;
        snprintf(what, sizeof what, "%" PRIu64 "/%ld", r->ok + r->failed, c->num_requests);
    } else {
        frac = (double)(now - d->t0) / 1e9 / c->duration_s;
        snprintf(what, sizeof what, "%" PRIu64 " done", r->ok + r->failed);
    }
    if (frac > 1) frac = 1;
    if (frac < 0) frac = 0;
    char bar[31];
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    double el = measured ? (double)(now - d->t0) / 1e9 : 0;
    fprintf(stderr,
            "\r[%s] %3.0f%% %s  in-flight %ld  ok %" PRIu64 "  err %" PRIu64 "  %.1f req/s ", bar,
            frac * 100, what, d->inflight, r->ok, r->failed,
            el > 0 ? (double)(r->ok + r->failed) / el : 0.0);
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

/* ---- phases -------------------------------------------------------------------------------- */

/* Runs the warmup (measured false) or the measured phase to its end. */
static int drv_phase(drv_t *d, bool measured) {
    const driver_cfg_t *c = d->cfg;
    uint64_t total = measured ? (uint64_t)c->num_requests : (uint64_t)c->warmup;
    if (!measured && !total) return 0;
    long conc = c->concurrency;
    double rate = measured ? c->request_rate : 0;
    if (!measured && conc == 0) conc = 1;
    int64_t start = sl_mono_ns();
    int64_t deadline =
        measured && c->duration_s > 0 ? start + (int64_t)(c->duration_s * 1e9) : INT64_MAX;
    if (measured) d->t0 = d->t_last_done = start;
    int64_t next_arrival = start;
    if (rate > 0) next_arrival += (int64_t)(workload_rng_exp(&d->arrivals, rate) * 1e9);
    uint64_t launched = 0;
    int rc = 0;
    for (;;) {
        int64_t now = sl_mono_ns();
        if (drv_stop_flag) {
            drv_cancel_all(d);
            break;
        }
        bool more = (total == 0 || launched < total) && now < deadline;
        while (more && (conc == 0 || d->inflight < conc) && (rate == 0 || now >= next_arrival)) {
            rc = drv_launch(d, measured);
            if (rc) goto out;
            launched++;
            if (rate > 0) next_arrival += (int64_t)(workload_rng_exp(&d->arrivals, rate) * 1e9);
            more = (total == 0 || launched < total) && now < deadline;
        }
        if (!more && d->inflight == 0) break;
        int running = 0;
        curl_multi_perform(d->multi, &running);
        int done = drv_drain(d);
        drv_progress(d, measured, launched, sl_mono_ns(), false);
        if (done && more && rate == 0) continue; /* refill the freed slots now */
        int64_t wait_ns = (int64_t)DRV_TICK_MS * 1000000;
        if (more && rate > 0 && (conc == 0 || d->inflight < conc)) {
            int64_t until = next_arrival - sl_mono_ns();
            if (until < wait_ns) wait_ns = until;
        }
        if (more && deadline != INT64_MAX && deadline - now < wait_ns) wait_ns = deadline - now;
        if (wait_ns < 0) wait_ns = 0;
        curl_multi_poll(d->multi, NULL, 0, (int)((wait_ns + 999999) / 1000000), NULL);
    }
out:
    drv_progress(d, measured, launched, sl_mono_ns(), measured);
    return rc;
}

/* Lets one process hold `need` sockets (1,000+ streams need more than the
 * usual 1,024 descriptors). Best effort: up to the hard limit. */
static void drv_raise_nofile(long need) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) return;
    rlim_t want = need > 0 ? (rlim_t)need : rl.rlim_max;
    if (want > rl.rlim_max) want = rl.rlim_max;
    if (want <= rl.rlim_cur) return;
    rl.rlim_cur = want;
    setrlimit(RLIMIT_NOFILE, &rl);
}

static int drv_fail(char *err, size_t errlen, const char *msg) {
    if (err && errlen) snprintf(err, errlen, "%s", msg);
    return SL_EINVAL;
}

int driver_run(const driver_cfg_t *cfg, const workload_t *w, driver_results_t *res, char *err,
               size_t errlen) {
    int rc = 0;
    drv_t d = {0};
    bool global = false;
    if (!cfg || !w || !res || !cfg->url) return drv_fail(err, errlen, "missing arguments");
    if (cfg->concurrency < 0 || cfg->request_rate < 0 || !isfinite(cfg->request_rate))
        return drv_fail(err, errlen, "--concurrency and --request-rate must be >= 0");
    if (cfg->concurrency == 0 && cfg->request_rate == 0)
        return drv_fail(err, errlen, "give --concurrency N or --request-rate R");
    if (cfg->num_requests < 0 || cfg->warmup < 0 || !(cfg->duration_s >= 0))
        return drv_fail(err, errlen, "--num-requests, --warmup and --duration must be >= 0");
    if (cfg->num_requests == 0 && cfg->duration_s == 0)
        return drv_fail(err, errlen, "give --num-requests N or --duration S");
    if (!(cfg->timeout_s > 0 && cfg->timeout_s < 1e6))
        return drv_fail(err, errlen, "--timeout must be in (0, 1e6) s");
    drv_stop_flag = 0;
    d.cfg = cfg;
    d.w = w;
    d.res = res;
    workload_rng_seed(&d.arrivals, cfg->seed, 1ull << 60);
    drv_raise_nofile(cfg->request_rate > 0 && cfg->concurrency == 0 ? 0
                                                                    : cfg->concurrency * 2 + 256);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        rc = SL_EIO;
        goto out;
    }
    global = true;
    d.multi = curl_multi_init();
    if (!d.multi) {
        rc = SL_EIO;
        goto out;
    }
    struct curl_slist *h = NULL;
    const char *hdrs[] = {"Content-Type: application/json",
                          cfg->stream ? "Accept: text/event-stream" : "Accept: application/json",
                          "Expect:"}; /* no 100-continue round trip on large bodies */
    for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
        struct curl_slist *n = curl_slist_append(h, hdrs[i]);
        if (!n) {
            rc = SL_ENOMEM;
            goto out_headers;
        }
        h = n;
    }
    if (cfg->api_key && *cfg->api_key) {
        char auth[1024];
        int len = snprintf(auth, sizeof auth, "Authorization: Bearer %s", cfg->api_key);
        if (len < 0 || (size_t)len >= sizeof auth) {
            rc = drv_fail(err, errlen, "--api-key too long");
            goto out_headers;
        }
        struct curl_slist *n = curl_slist_append(h, auth);
        if (!n) {
            rc = SL_ENOMEM;
            goto out_headers;
        }
        h = n;
    }
out_headers:
    d.headers = h;
    if (rc) goto out;
    rc = drv_phase(&d, false);
    if (rc) goto out;
    rc = drv_phase(&d, true);
    res->duration_s = (double)(d.t_last_done - d.t0) / 1e9;
out:
    if (d.multi) {
        for (size_t i = 0; i < d.nall; i++) curl_multi_remove_handle(d.multi, d.all[i]->easy);
    }
    for (size_t i = 0; i < d.nall; i++) drv_slot_free(d.all[i]);
    free(d.all);
    if (d.multi) curl_multi_cleanup(d.multi);
    curl_slist_free_all(d.headers);
    if (global) curl_global_cleanup();
    return rc;
}
