/* http_server.c - the OpenAI-compatible HTTP API (see http_server.h). */
#include "services/frontend/http_server.h"

#include "common/base/err.h"
#include "common/base/log.h"
#include "common/engine/chat_template.h"
#include "common/engine/tokenizer.h"
#include "common/runtime/bus.h"
#include "common/runtime/discovery.h"
#include "common/runtime/metrics.h"
#include "services/frontend/generate_client.h"
#include "services/frontend/openai_format.h"
#include "services/frontend/openai_parse.h"
#include "services/frontend/worker_pool.h"

#include <cjson/cJSON.h>
#include <civetweb.h>
#include <libgen.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HCFG http_server_cfg_t
const sl_config_entry_t http_server_config_table[] = {
    SL_CONFIG_COMMON_CLIENT(HCFG, common),
    SL_CONFIG_STRING_ENTRY("host", "SLUICE_HTTP_HOST", HCFG, host, "0.0.0.0", "Address to bind"),
    SL_CONFIG_INT64_ENTRY("port", "SLUICE_HTTP_PORT", HCFG, port, "8000", 0, 65535,
                          "HTTP port (0 = any free port)"),
    SL_CONFIG_STRING_ENTRY("model-path", "SLUICE_MODEL", HCFG, model_path, NULL,
                           "Model directory with tokenizer.json, tokenizer_config.json (required)"),
    SL_CONFIG_STRING_ENTRY("served-model-name", "SLUICE_SERVED_MODEL_NAME", HCFG, served_model_name,
                           NULL, "Model name (default: the directory's name; must match workers)"),
    SL_CONFIG_STRING_ENTRY("chat-template", NULL, HCFG, chat_template, NULL,
                           "Jinja chat template file overriding the model's"),
    SL_CONFIG_STRING_ENTRY("api-key", "SLUICE_API_KEY", HCFG, api_key, NULL,
                           "Require Authorization: Bearer <key>"),
    SL_CONFIG_UINT64_ENTRY("max-body-bytes", NULL, HCFG, max_body_bytes, "8388608", 1024,
                           UINT64_C(1) << 30, "Largest request body (413 beyond)"),
    SL_CONFIG_UINT64_ENTRY("http-threads", NULL, HCFG, http_threads, "1100", 4, 20000,
                           "Concurrent HTTP connections (one thread each)"),
    SL_CONFIG_UINT64_ENTRY("http-reserve-threads", NULL, HCFG, http_reserve_threads, "16", 0, 20000,
                           "Threads generation may not take, so /health, /metrics and short "
                           "requests are answered when every other thread streams (503 beyond)"),
    SL_CONFIG_UINT64_ENTRY("thread-stack-kb", NULL, HCFG, thread_stack_kb, "512", 128, 65536,
                           "Stack of each thread in KiB"),
    SL_CONFIG_DURATION_ENTRY("stream-timeout", NULL, HCFG, stream_timeout_ms, "30s", 100,
                             INT64_C(3600000), "Silence after which a worker counts as failed"),
    SL_CONFIG_UINT64_ENTRY("max-attempts", NULL, HCFG, max_attempts, "3", 1, 32,
                           "Workers tried per request (retries and migrations)"),
    SL_CONFIG_STRING_ENTRY("router-mode", "SLUICE_ROUTER_MODE", HCFG, router_mode, "",
                           "Ask sluice-router (kv, round-robin, random, least-loaded, default); "
                           "empty: the frontend's own round-robin"),
    SL_CONFIG_DURATION_ENTRY("router-timeout", NULL, HCFG, router_timeout_ms, "100ms", 1, 60000,
                             "Wait this long for a router, then round-robin"),
};
const size_t http_server_config_table_n =
    sizeof http_server_config_table / sizeof http_server_config_table[0];

enum { EP_CHAT, EP_COMPL, EP_TOKENIZE, EP_DETOKENIZE, EP_TEMPLATE, EP_MODELS, EP_OTHER, EP_N };
static const char *const ep_names[EP_N] = {
    "chat_completions", "completions", "tokenize", "detokenize",
    "apply_template",   "models",      "other"};

struct http_server {
    char model[256];
    char api_key[256];
    bool auth;
    size_t max_body;
    sl_tokenizer_t *tok;
    chat_template_t *tmpl;
    char tmpl_err[512];
    bus_t *bus;
    discovery_t *disc;
    worker_pool_t *pool;
    gen_client_t *gen;
    struct mg_context *ctx;
    int port;
    metrics_registry_t *reg;
    metrics_family_t *f_requests, *f_workers;
    metrics_gauge_t *m_inflight;
    metrics_histogram_t *m_ttft, *m_itl, *m_in_tokens, *m_out_tokens;
    metrics_counter_t *m_retries, *m_migrations;
    metrics_counter_t *m_routed, *m_route_fallbacks, *m_overlap, *m_prompt_blocks;
    metrics_counter_t *m_prompt_tokens, *m_cached_tokens;
    metrics_counter_t *m_busy;
    atomic_uint_fast64_t gen_busy; /* handler threads in generation */
    uint64_t gen_slots;            /* http_threads - http_reserve_threads */
};

/* ---- small HTTP helpers ------------------------------------------------------- */

static const char *status_text(int st) {
    switch (st) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 503:
        return "Service Unavailable";
    default:
        return "Internal Server Error";
    }
}

static void count_request(http_server_t *s, int ep, int status) {
    char st[8];
    snprintf(st, sizeof st, "%d", status);
    const char *lv[2] = {ep_names[ep], st};
    metrics_counter_t *c = metrics_counter_get(s->f_requests, lv);
    if (c) metrics_counter_inc(c);
}

static int send_body(struct mg_connection *c, int status, const char *type, const char *body,
                     size_t len) {
    /* formatted here and written with mg_write: mg_printf's vsnprintf of a
     * va_list crashed under ASan in civetweb 1.15 */
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-cache\r\n\r\n",
                     status, status_text(status), type, len);
    if (n > 0 && (size_t)n < sizeof head) mg_write(c, head, (size_t)n);
    if (len) mg_write(c, body, len);
    return status;
}

static int send_json(struct mg_connection *c, int status, char *json) {
    if (!json) return send_body(c, 500, "application/json", "{}", 2);
    send_body(c, status, "application/json", json, strlen(json));
    free(json);
    return status;
}

static int send_error(struct mg_connection *c, int status, const char *param, const char *msg) {
    return send_json(c, status, oai_error_json(status, msg, param));
}

static int send_cjson(struct mg_connection *c, int status, cJSON *o) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return send_json(c, status, s);
}

/* Reads the body (at most max bytes). Returns 0 and *out (NUL-terminated,
 * malloc'd), SL_ETOOBIG over the limit, SL_EIO on a read error. */
static int read_body(struct mg_connection *c, size_t max, char **out, size_t *len) {
    const struct mg_request_info *ri = mg_get_request_info(c);
    *out = NULL;
    *len = 0;
    if (ri->content_length > 0 && (uint64_t)ri->content_length > max) return SL_ETOOBIG;
    size_t cap = ri->content_length > 0 ? (size_t)ri->content_length + 1 : 4096;
    char *b = malloc(cap);
    size_t n = 0;
    if (!b) return SL_ENOMEM;
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > max + 1) break;
            size_t nc = cap * 2 > max + 2 ? max + 2 : cap * 2;
            char *nb = realloc(b, nc);
            if (!nb) {
                free(b);
                return SL_ENOMEM;
            }
            b = nb;
            cap = nc;
        }
        int r = mg_read(c, b + n, cap - 1 - n);
        if (r < 0) {
            free(b);
            return SL_EIO;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n > max) {
            free(b);
            return SL_ETOOBIG;
        }
    }
    b[n] = 0;
    *out = b;
    *len = n;
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- prompt preparation ------------------------------------------------------- */

/* Renders the chat template. Returns 0 and *text, or fills err (400). */
static int render_chat(http_server_t *s, const cJSON *chat, char **text, oai_error_t *err) {
    char *et = NULL;
    *text = NULL;
    if (!s->tmpl) {
        oai_error_set(err, 400, "messages", "model '%s' has no chat template%s%s", s->model,
                      s->tmpl_err[0] ? ": " : "", s->tmpl_err);
        return SL_EINVAL;
    }
    int rc = chat_template_render(s->tmpl, chat, NULL, NULL, text, NULL, &et);
    if (rc) {
        oai_error_set(err, rc == SL_ENOMEM ? 500 : 400, "messages", "chat template error: %s",
                      et ? et : sl_strerror(rc));
        free(et);
        return rc;
    }
    return 0;
}

/* Builds the prompt token ids of r. */
static int prompt_ids(http_server_t *s, const oai_request_t *r, uint32_t **ids, size_t *n,
                      oai_error_t *err) {
    int rc = 0;
    char *text = NULL;
    *ids = NULL;
    *n = 0;
    if (r->kind == OAI_KIND_CHAT) {
        if ((rc = render_chat(s, r->chat, &text, err))) return rc;
        rc = sl_tokenizer_encode(s->tok, text, strlen(text), false, ids, n);
    } else if (r->prompt_text) {
        rc = sl_tokenizer_encode(s->tok, r->prompt_text, strlen(r->prompt_text), true, ids, n);
    } else {
        uint32_t vocab = sl_tokenizer_vocab_size(s->tok);
        for (size_t i = 0; i < r->n_prompt_ids; i++) {
            if (r->prompt_ids[i] >= vocab) {
                oai_error_set(err, 400, "prompt", "token id %u is outside the vocabulary (%u)",
                              r->prompt_ids[i], vocab);
                return SL_EINVAL;
            }
        }
        *ids = malloc(r->n_prompt_ids * sizeof **ids);
        if (!*ids)
            rc = SL_ENOMEM;
        else {
            memcpy(*ids, r->prompt_ids, r->n_prompt_ids * sizeof **ids);
            *n = r->n_prompt_ids;
        }
    }
    free(text);
    if (rc)
        oai_error_set(err, rc == SL_ENOMEM ? 500 : 400, "prompt", "tokenization failed: %s",
                      sl_strerror(rc));
    return rc;
}

/* ---- generation --------------------------------------------------------------- */

/* n > 1: every choice is its own worker request, all in flight at once, each
 * on its own thread; their SSE chunks interleave on the one connection (writes
 * under gen_req.mu), tagged with their index. */

typedef struct choice_state {
    char *text; /* (len, cap) accumulated text, non-streamed */
    size_t len, cap;
    cJSON *logprobs;
    size_t text_offset; /* completions logprobs: bytes so far */
    const char *finish;
} choice_state_t;

/* What the choices of one request share. */
typedef struct gen_req {
    http_server_t *s;
    struct mg_connection *conn;
    const oai_request_t *r;
    const Sluice__V1__GenerateRequest *base; /* prompt, stop; each choice copies it */
    oai_resp_ctx_t rc;
    double t_start;
    pthread_mutex_t mu; /* the connection's writes, headers_sent, got_first */
    bool headers_sent, got_first;
    atomic_bool client_gone; /* a write failed */
    atomic_bool abort;       /* a choice failed: the others stop */
} gen_req_t;

/* One choice. */
typedef struct gen_ctx {
    gen_req_t *q;
    uint32_t index;
    bool role_sent;
    choice_state_t *choice;
    double t_last;
    gen_result_t res;
    int rc;
    pthread_t th;
    bool threaded;
} gen_ctx_t;

/* Writes one SSE event (q->mu held). */
static int sse_send(gen_req_t *q, const char *json) {
    if (!json) return -1;
    if (atomic_load(&q->client_gone)) return -1;
    size_t l = strlen(json);
    char *buf = malloc(l + 9);
    if (!buf) return -1;
    memcpy(buf, "data: ", 6);
    memcpy(buf + 6, json, l);
    memcpy(buf + 6 + l, "\n\n", 3);
    int w = mg_send_chunk(q->conn, buf, (unsigned)(l + 8));
    free(buf);
    if (w <= 0) atomic_store(&q->client_gone, true);
    return w <= 0 ? -1 : 0;
}

/* Sends the SSE response head once (q->mu held). */
static void sse_headers(gen_req_t *q) {
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                               "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    if (q->headers_sent) return;
    q->headers_sent = true;
    /* written raw: civetweb's header helpers format through mg_printf, whose
     * va_list handling crashes under ASan (see send_body) */
    if (mg_write(q->conn, head, sizeof head - 1) <= 0) atomic_store(&q->client_gone, true);
}

/* Sends json (freed here) as an event of the stream. Returns 0 or -1. */
static int sse_event(gen_req_t *q, char *json) {
    pthread_mutex_lock(&q->mu);
    sse_headers(q);
    int rc = sse_send(q, json);
    pthread_mutex_unlock(&q->mu);
    free(json);
    return rc;
}

static int on_chunk(void *ud, const Sluice__V1__GenerateChunk *c) {
    gen_ctx_t *g = ud;
    gen_req_t *q = g->q;
    if (atomic_load(&q->abort) || atomic_load(&q->client_gone)) return 1;
    double t = now_s();
    pthread_mutex_lock(&q->mu);
    bool first = !q->got_first;
    q->got_first = true;
    pthread_mutex_unlock(&q->mu);
    if (first)
        metrics_histogram_observe(q->s->m_ttft, t - q->t_start);
    else if (c->n_token_ids && g->t_last > 0)
        metrics_histogram_observe(q->s->m_itl, (t - g->t_last) / (double)c->n_token_ids);
    g->t_last = t;
    cJSON *lp = NULL;
    const char *text = c->text ? c->text : "";
    if (q->r->stream) {
        if (q->r->logprobs && oai_logprobs_append(q->rc.kind, &lp, c, &g->choice->text_offset))
            return 1;
        if (!text[0] && !lp && g->role_sent) return 0;
        char *j = oai_chunk_json(&q->rc, g->index, !g->role_sent, text, NULL, lp, NULL);
        g->role_sent = true;
        cJSON_Delete(lp);
        return sse_event(q, j) ? 1 : 0;
    }
    choice_state_t *ch = g->choice;
    if (q->r->logprobs && oai_logprobs_append(q->rc.kind, &ch->logprobs, c, &ch->text_offset))
        return 1;
    size_t l = strlen(text);
    if (ch->len + l + 1 > ch->cap) {
        size_t nc = (ch->len + l + 1) * 2;
        char *nt = realloc(ch->text, nc);
        if (!nt) return 1;
        ch->text = nt;
        ch->cap = nc;
    }
    memcpy(ch->text + ch->len, text, l);
    ch->len += l;
    ch->text[ch->len] = 0;
    return 0;
}

/* Runs one choice to its end: its own request id and seed, then (streamed)
 * its finish chunk. A failure makes the other choices stop. */
static void choice_run(gen_ctx_t *g) {
    gen_req_t *q = g->q;
    http_server_t *s = q->s;
    char rid[96];
    snprintf(rid, sizeof rid, "%s-%u", q->rc.id, g->index);
    Sluice__V1__GenerateRequest m = *q->base;
    Sluice__V1__SamplingParams sp = *q->base->sampling;
    sp.seed = q->r->seed + g->index; /* n independent, reproducible generations */
    m.sampling = &sp;
    m.request_id = rid;
    g->rc = gen_client_run(s->gen, &m, on_chunk, g, &g->res);
    if (g->rc) {
        atomic_store(&q->abort, true);
        return;
    }
    uint32_t np = (uint32_t)m.n_token_ids;
    metrics_histogram_observe(s->m_out_tokens, g->res.completion_tokens);
    metrics_counter_add(s->m_prompt_tokens, np);
    metrics_counter_add(s->m_cached_tokens, g->res.cached_tokens < np ? g->res.cached_tokens : np);
    const char *fin = oai_finish_name(g->res.finish);
    g->choice->finish = fin ? fin : "stop";
    if (q->r->stream && !atomic_load(&q->client_gone) && !atomic_load(&q->abort)) {
        sse_event(q, oai_chunk_json(&q->rc, g->index, !g->role_sent, NULL, g->choice->finish, NULL,
                                    NULL));
        g->role_sent = true;
    }
}

static void *choice_thread(void *arg) {
    choice_run(arg);
    return NULL;
}

static int handle_generate(http_server_t *s, struct mg_connection *conn, oai_kind_t kind) {
    char *body = NULL;
    size_t blen = 0;
    oai_request_t *r = NULL;
    oai_error_t err = {0};
    uint32_t *ids = NULL;
    size_t n_ids = 0;
    choice_state_t *choices = NULL;
    gen_ctx_t *ctxs = NULL;
    int status = 200;
    char id[64];
    oai_usage_t usage = {0};
    double t0 = now_s();
    gen_req_t q = {.s = s, .conn = conn, .t_start = t0};
    pthread_mutex_init(&q.mu, NULL);

    int rc = read_body(conn, s->max_body, &body, &blen);
    if (rc == SL_ETOOBIG) {
        oai_error_set(&err, 413, NULL, "request body is larger than --max-body-bytes (%zu)",
                      s->max_body);
        goto fail;
    }
    if (rc) {
        oai_error_set(&err, 400, NULL, "could not read the request body");
        goto fail;
    }
    if (oai_request_parse(body, blen, kind, &r, &err)) goto fail;
    uint32_t ctx_len = 0;
    size_t nw = worker_pool_model_info(s->pool, r->model, &ctx_len);
    if (strcmp(r->model, s->model) != 0) {
        oai_error_set(&err, 404, "model", "The model '%s' does not exist (served: '%s')", r->model,
                      s->model);
        goto fail;
    }
    if (nw == 0) {
        oai_error_set(&err, 503, NULL, "no worker is serving model '%s' right now", r->model);
        goto fail;
    }
    if (prompt_ids(s, r, &ids, &n_ids, &err)) goto fail;
    if (n_ids == 0) {
        oai_error_set(&err, 400, kind == OAI_KIND_CHAT ? "messages" : "prompt",
                      "the prompt is empty");
        goto fail;
    }
    /* vLLM's wording and checks: a prompt that fills the context, or a
     * max_tokens that does not fit after it, is refused (never shortened);
     * no max_tokens means "up to the context". */
    if (ctx_len && n_ids >= ctx_len) {
        oai_error_set(&err, 400, kind == OAI_KIND_CHAT ? "messages" : "prompt",
                      "This model's maximum context length is %u tokens. However, your request "
                      "has %zu input tokens. Please reduce the length of the input messages.",
                      ctx_len, n_ids);
        goto fail;
    }
    uint32_t max_tokens = r->max_tokens;
    if (ctx_len && max_tokens && (uint64_t)n_ids + max_tokens > ctx_len) {
        oai_error_set(&err, 400, "max_tokens",
                      "This model's maximum context length is %u tokens. However, you requested "
                      "%llu tokens (%zu in the messages, %u in the completion). Please reduce the "
                      "length of the messages or completion.",
                      ctx_len, (unsigned long long)n_ids + max_tokens, n_ids, max_tokens);
        goto fail;
    }
    if (ctx_len && !max_tokens) max_tokens = ctx_len - (uint32_t)n_ids;
    metrics_histogram_observe(s->m_in_tokens, (double)n_ids);

    choices = calloc(r->n, sizeof *choices);
    ctxs = calloc(r->n, sizeof *ctxs);
    if (!choices || !ctxs) {
        oai_error_set(&err, 500, NULL, "out of memory");
        goto fail;
    }
    oai_id_make(id, sizeof id, kind == OAI_KIND_CHAT ? "chatcmpl-" : "cmpl-");
    q.r = r;
    q.rc =
        (oai_resp_ctx_t){.kind = kind, .id = id, .created = (int64_t)time(NULL), .model = r->model};

    Sluice__V1__SamplingParams sp = SLUICE__V1__SAMPLING_PARAMS__INIT;
    sp.temperature = r->temperature;
    sp.top_p = r->top_p;
    sp.top_k = r->top_k;
    sp.min_p = r->min_p;
    sp.presence_penalty = r->presence_penalty;
    sp.frequency_penalty = r->frequency_penalty;
    sp.repetition_penalty = r->repetition_penalty;
    sp.logprobs = r->logprobs ? 1 : 0;
    sp.top_logprobs = r->top_logprobs;
    sp.has_seed = r->has_seed;
    sp.seed = r->seed;
    Sluice__V1__StopConditions sc = SLUICE__V1__STOP_CONDITIONS__INIT;
    sc.max_tokens = max_tokens;
    sc.n_stop = r->n_stop;
    sc.stop = r->stop;
    sc.ignore_eos = r->ignore_eos;
    sc.min_tokens = r->min_tokens;
    Sluice__V1__GenerateRequest m = SLUICE__V1__GENERATE_REQUEST__INIT;
    m.version = 1;
    m.model = r->model;
    m.token_ids = ids;
    m.n_token_ids = n_ids;
    m.sampling = &sp;
    m.stop = &sc;
    q.base = &m;

    metrics_gauge_add(s->m_inflight, 1);
    for (uint32_t i = 0; i < r->n; i++)
        ctxs[i] = (gen_ctx_t){.q = &q, .index = i, .choice = &choices[i]};
    /* Own threads even for one choice: civetweb runs handlers on 100 KiB
     * stacks of its own choosing, too tight for this path under ASan; ours
     * get the default (--thread-stack-kb). */
    for (uint32_t i = 0; i < r->n; i++)
        ctxs[i].threaded = pthread_create(&ctxs[i].th, NULL, choice_thread, &ctxs[i]) == 0;
    for (uint32_t i = 0; i < r->n; i++) {
        if (ctxs[i].threaded)
            pthread_join(ctxs[i].th, NULL);
        else
            choice_run(&ctxs[i]); /* no thread to be had: in turn */
    }
    metrics_gauge_add(s->m_inflight, -1);

    const gen_result_t *bad = NULL;
    for (uint32_t i = 0; i < r->n && !bad; i++)
        if (ctxs[i].rc) bad = &ctxs[i].res;
    usage.prompt = (uint32_t)n_ids;
    usage.cached = ctxs[0].res.cached_tokens < n_ids ? ctxs[0].res.cached_tokens : (uint32_t)n_ids;
    for (uint32_t i = 0; i < r->n; i++) usage.completion += ctxs[i].res.completion_tokens;
    if (bad && !q.headers_sent) {
        oai_error_set(&err, bad->http_status ? bad->http_status : 500, NULL, "%s", bad->message);
        goto fail;
    }
    if (r->stream) {
        /* a mid-stream failure with nowhere to migrate: an error event */
        if (bad)
            sse_event(
                &q, oai_error_json(bad->http_status ? bad->http_status : 500, bad->message, NULL));
        if (r->include_usage)
            sse_event(&q, oai_chunk_json(&q.rc, 0, false, NULL, NULL, NULL, &usage));
        if (!atomic_load(&q.client_gone)) {
            static const char done[] = "data: [DONE]\n\n";
            pthread_mutex_lock(&q.mu);
            sse_headers(&q);
            if (mg_send_chunk(conn, done, sizeof done - 1) > 0) mg_send_chunk(conn, "", 0);
            pthread_mutex_unlock(&q.mu);
        }
        status = atomic_load(&q.client_gone) ? 499 : 200;
    } else {
        oai_choice_t *oc = calloc(r->n, sizeof *oc);
        if (!oc) {
            oai_error_set(&err, 500, NULL, "out of memory");
            goto fail;
        }
        for (uint32_t i = 0; i < r->n; i++) {
            oc[i].text = choices[i].text ? choices[i].text : "";
            oc[i].finish = choices[i].finish;
            oc[i].logprobs = choices[i].logprobs;
        }
        status = send_json(conn, 200, oai_response_json(&q.rc, oc, r->n, &usage));
        free(oc);
    }
    goto out;
fail:
    status = send_error(conn, err.status ? err.status : 500, err.param, err.message);
out:
    count_request(s, kind == OAI_KIND_CHAT ? EP_CHAT : EP_COMPL, status);
    for (uint32_t i = 0; choices && r && i < r->n; i++) {
        free(choices[i].text);
        cJSON_Delete(choices[i].logprobs);
    }
    free(choices);
    free(ctxs);
    free(ids);
    oai_request_free(r);
    free(body);
    pthread_mutex_destroy(&q.mu);
    return 1;
}

/* ---- tokenize / detokenize / apply-template ------------------------------------- */

static int handle_tokenize(http_server_t *s, struct mg_connection *conn, int ep) {
    char *body = NULL, *text = NULL, *dtext = NULL;
    size_t blen = 0;
    cJSON *root = NULL, *resp = NULL;
    oai_request_t *r = NULL;
    oai_error_t err = {0};
    uint32_t *ids = NULL;
    size_t n = 0;
    int status;
    int rc = read_body(conn, s->max_body, &body, &blen);
    if (rc) {
        oai_error_set(&err, rc == SL_ETOOBIG ? 413 : 400, NULL,
                      rc == SL_ETOOBIG ? "request body is larger than --max-body-bytes"
                                       : "could not read the request body");
        goto fail;
    }
    root = cJSON_ParseWithLength(body, blen);
    if (!cJSON_IsObject(root)) {
        oai_error_set(&err, 400, NULL, "request body is not a JSON object");
        goto fail;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (cJSON_IsString(model) && strcmp(model->valuestring, s->model) != 0) {
        oai_error_set(&err, 404, "model", "The model '%s' does not exist", model->valuestring);
        goto fail;
    }
    if (ep == EP_DETOKENIZE) {
        const cJSON *toks = cJSON_GetObjectItemCaseSensitive(root, "tokens");
        if (!cJSON_IsArray(toks)) {
            oai_error_set(&err, 400, "tokens", "'tokens' must be an array of token ids");
            goto fail;
        }
        size_t cnt = (size_t)cJSON_GetArraySize(toks);
        ids = malloc((cnt ? cnt : 1) * sizeof *ids);
        if (!ids) goto nomem;
        uint32_t vocab = sl_tokenizer_vocab_size(s->tok);
        const cJSON *t;
        cJSON_ArrayForEach(t, toks) {
            if (!cJSON_IsNumber(t) || t->valuedouble < 0 || t->valuedouble >= vocab ||
                t->valuedouble != floor(t->valuedouble)) {
                oai_error_set(&err, 400, "tokens", "'tokens' must hold ids in [0, %u)", vocab);
                goto fail;
            }
            ids[n++] = (uint32_t)t->valuedouble;
        }
        if ((rc = sl_tokenizer_decode(s->tok, ids, n, false, &dtext, NULL))) goto nomem;
        resp = cJSON_CreateObject();
        if (!resp) goto nomem;
        cJSON_AddStringToObject(resp, "prompt", dtext);
        status = send_cjson(conn, 200, resp);
        goto out;
    }
    /* tokenize and apply-template take a chat request or (tokenize) a prompt */
    bool chat = cJSON_GetObjectItemCaseSensitive(root, "messages") != NULL;
    if (ep == EP_TEMPLATE && !chat) {
        oai_error_set(&err, 400, "messages", "'messages' is required");
        goto fail;
    }
    if (!cJSON_IsString(model)) cJSON_AddStringToObject(root, "model", s->model);
    char *pb = cJSON_PrintUnformatted(root);
    if (!pb) goto nomem;
    rc = oai_request_parse(pb, strlen(pb), chat ? OAI_KIND_CHAT : OAI_KIND_COMPLETION, &r, &err);
    free(pb);
    if (rc) goto fail;
    if (ep == EP_TEMPLATE) {
        if (render_chat(s, r->chat, &text, &err)) goto fail;
        resp = cJSON_CreateObject();
        if (!resp) goto nomem;
        cJSON_AddStringToObject(resp, "prompt", text);
        status = send_cjson(conn, 200, resp);
        goto out;
    }
    bool add_special = !chat;
    const cJSON *as = cJSON_GetObjectItemCaseSensitive(root, "add_special_tokens");
    if (cJSON_IsBool(as)) add_special = cJSON_IsTrue(as);
    if (chat) {
        if (render_chat(s, r->chat, &text, &err)) goto fail;
        rc = sl_tokenizer_encode(s->tok, text, strlen(text), add_special, &ids, &n);
    } else if (r->prompt_text) {
        rc = sl_tokenizer_encode(s->tok, r->prompt_text, strlen(r->prompt_text), add_special, &ids,
                                 &n);
    } else {
        oai_error_set(&err, 400, "prompt", "'prompt' must be a string");
        goto fail;
    }
    if (rc) goto nomem;
    uint32_t ctx = 0;
    worker_pool_model_info(s->pool, s->model, &ctx);
    resp = cJSON_CreateObject();
    cJSON *arr = resp ? cJSON_AddArrayToObject(resp, "tokens") : NULL;
    if (!arr) goto nomem;
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
    cJSON_AddNumberToObject(resp, "count", (double)n);
    cJSON_AddNumberToObject(resp, "max_model_len", ctx);
    status = send_cjson(conn, 200, resp);
    goto out;
nomem:
    oai_error_set(&err, 500, NULL, "internal error: %s", sl_strerror(rc ? rc : SL_ENOMEM));
fail:
    status = send_error(conn, err.status ? err.status : 500, err.param, err.message);
out:
    count_request(s, ep, status);
    oai_request_free(r);
    cJSON_Delete(root);
    free(ids);
    free(text);
    free(dtext);
    free(body);
    return 1;
}

/* ---- models, health, metrics ----------------------------------------------------- */

static int handle_models(http_server_t *s, struct mg_connection *conn) {
    char **names = NULL;
    size_t *counts = NULL, n = 0;
    int status;
    if (worker_pool_models(s->pool, &names, &counts, &n)) {
        status = send_error(conn, 500, NULL, "out of memory");
        goto out;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = o ? cJSON_AddArrayToObject(o, "data") : NULL;
    if (o) cJSON_AddStringToObject(o, "object", "list");
    for (size_t i = 0; arr && i < n; i++) {
        cJSON *m = cJSON_CreateObject();
        if (!m) break;
        cJSON_AddStringToObject(m, "id", names[i]);
        cJSON_AddStringToObject(m, "object", "model");
        cJSON_AddNumberToObject(m, "created", (double)time(NULL));
        cJSON_AddStringToObject(m, "owned_by", "sluice");
        cJSON_AddNumberToObject(m, "workers", (double)counts[i]);
        cJSON_AddItemToArray(arr, m);
    }
    status = send_cjson(conn, 200, o);
out:
    count_request(s, EP_MODELS, status);
    worker_pool_models_free(names, counts, n);
    return 1;
}

static int handle_health(http_server_t *s, struct mg_connection *conn) {
    size_t n = worker_pool_count(s->pool);
    uint32_t ctx = 0;
    size_t nm = worker_pool_model_info(s->pool, s->model, &ctx);
    cJSON *o = cJSON_CreateObject();
    if (!o) return send_body(conn, 500, "application/json", "{}", 2), 1;
    cJSON_AddStringToObject(o, "status", nm > 0 ? "healthy" : "unhealthy");
    cJSON_AddStringToObject(o, "model", s->model);
    cJSON_AddNumberToObject(o, "workers", (double)nm);
    cJSON_AddNumberToObject(o, "workers_all_models", (double)n);
    if (nm == 0) cJSON_AddStringToObject(o, "reason", "no worker serving the model is known");
    send_cjson(conn, nm > 0 ? 200 : 503, o);
    return 1;
}

static void on_collect(metrics_registry_t *r, void *ud) {
    (void)r;
    http_server_t *s = ud;
    char **names = NULL;
    size_t *counts = NULL, n = 0;
    if (worker_pool_models(s->pool, &names, &counts, &n)) return;
    const char *lv[1] = {s->model};
    metrics_gauge_t *g = metrics_gauge_get(s->f_workers, lv);
    if (g) metrics_gauge_set(g, 0);
    for (size_t i = 0; i < n; i++) {
        lv[0] = names[i];
        g = metrics_gauge_get(s->f_workers, lv);
        if (g) metrics_gauge_set(g, (double)counts[i]);
    }
    worker_pool_models_free(names, counts, n);
}

static int handle_metrics(http_server_t *s, struct mg_connection *conn) {
    char *text = NULL;
    size_t len = 0;
    if (metrics_registry_render(s->reg, &text, &len))
        return send_body(conn, 500, "text/plain", "", 0), 1;
    send_body(conn, 200, "text/plain; version=0.0.4", text, len);
    free(text);
    return 1;
}

/* ---- dispatch ----------------------------------------------------------------------- */

static bool authorized(http_server_t *s, struct mg_connection *conn) {
    if (!s->auth) return true;
    const char *h = mg_get_header(conn, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    size_t a = strlen(h), b = strlen(s->api_key);
    unsigned diff = (unsigned)(a ^ b);
    for (size_t i = 0; i < a && i < b; i++) diff |= (unsigned)(h[i] ^ s->api_key[i]);
    return diff == 0;
}

static int on_request(struct mg_connection *conn, void *cbdata) {
    http_server_t *s = cbdata;
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *u = ri->local_uri ? ri->local_uri : "";
    bool get = strcmp(ri->request_method, "GET") == 0;
    bool post = strcmp(ri->request_method, "POST") == 0;
    if (strcmp(u, "/live") == 0)
        return send_body(conn, 200, "application/json", "{\"status\":\"live\"}", 17), 1;
    if (strcmp(u, "/health") == 0) return handle_health(s, conn);
    if (strcmp(u, "/metrics") == 0) return handle_metrics(s, conn);
    int ep = strcmp(u, "/v1/chat/completions") == 0 ? EP_CHAT
             : strcmp(u, "/v1/completions") == 0    ? EP_COMPL
             : strcmp(u, "/tokenize") == 0          ? EP_TOKENIZE
             : strcmp(u, "/detokenize") == 0        ? EP_DETOKENIZE
             : strcmp(u, "/apply-template") == 0    ? EP_TEMPLATE
             : strcmp(u, "/v1/models") == 0         ? EP_MODELS
                                                    : EP_OTHER;
    if (ep == EP_OTHER) {
        count_request(s, ep, 404);
        return send_error(conn, 404, NULL, "no such endpoint"), 1;
    }
    if (!authorized(s, conn)) {
        count_request(s, ep, 401);
        return send_error(conn, 401, NULL, "invalid or missing API key (Authorization: Bearer)"), 1;
    }
    if (ep == EP_MODELS ? !get : !post) {
        count_request(s, ep, 405);
        return send_error(conn, 405, NULL, "method not allowed"), 1;
    }
    switch (ep) {
    case EP_CHAT:
    case EP_COMPL: {
        /* civetweb has one thread per connection and queues connections
         * silently when all are taken: refuse generation while only the
         * reserve is left, so health checks and metrics still get a thread. */
        if (atomic_fetch_add(&s->gen_busy, 1) >= s->gen_slots) {
            atomic_fetch_sub(&s->gen_busy, 1);
            metrics_counter_inc(s->m_busy);
            char msg[160];
            snprintf(msg, sizeof msg,
                     "the server is at capacity: all %llu generation slots are in use; retry later",
                     (unsigned long long)s->gen_slots);
            return send_error(conn, 503, NULL, msg), 1;
        }
        int st = handle_generate(s, conn, ep == EP_CHAT ? OAI_KIND_CHAT : OAI_KIND_COMPLETION);
        atomic_fetch_sub(&s->gen_busy, 1);
        return st;
    }
    case EP_MODELS:
        return handle_models(s, conn);
    default:
        return handle_tokenize(s, conn, ep);
    }
}

static int on_log(const struct mg_connection *conn, const char *msg) {
    (void)conn;
    LOG_DEBUG("civetweb: %s", msg);
    return 1;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

static int load_model_files(http_server_t *s, const http_server_cfg_t *cfg, char *why,
                            size_t why_len) {
    int rc = sl_tokenizer_load(cfg->model_path, &s->tok);
    if (rc) {
        snprintf(why, why_len, "cannot load the tokenizer from %s: %s", cfg->model_path,
                 sl_strerror(rc));
        return rc;
    }
    char *et = NULL;
    if (cfg->chat_template) {
        FILE *f = fopen(cfg->chat_template, "rb");
        char *buf = NULL;
        size_t len = 0;
        if (f) {
            FILE *m = open_memstream(&buf, &len);
            char tmp[4096];
            size_t r;
            while (m && (r = fread(tmp, 1, sizeof tmp, f)) > 0) fwrite(tmp, 1, r, m);
            if (m) fclose(m);
            fclose(f);
        }
        if (!buf) {
            snprintf(why, why_len, "cannot read --chat-template %s", cfg->chat_template);
            return SL_EIO;
        }
        rc = chat_template_load(buf, len, &s->tmpl, &et);
        free(buf);
        if (rc) {
            snprintf(why, why_len, "--chat-template %s: %s", cfg->chat_template,
                     et ? et : sl_strerror(rc));
            free(et);
            return rc;
        }
        return 0;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", cfg->model_path);
    rc = chat_template_load_config_file(path, &s->tmpl, &et);
    if (rc) {
        /* completions still work; chat answers 400 with this reason */
        snprintf(s->tmpl_err, sizeof s->tmpl_err, "%s", et ? et : sl_strerror(rc));
        LOG_WARN("no chat template (%s): /v1/chat/completions will answer 400", s->tmpl_err);
        free(et);
    }
    return 0;
}

static int init_metrics(http_server_t *s) {
    static const double lat[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
    static const double toks[] = {1, 4, 16, 64, 256, 1024, 4096, 16384, 65536};
    metrics_registry_t *r = s->reg = metrics_registry_new();
    if (!r) return SL_ENOMEM;
    s->f_requests = metrics_family_new(r, METRICS_COUNTER, "sluice_frontend_requests_total",
                                       "HTTP requests by endpoint and status",
                                       (const char *[]){"endpoint", "status"}, 2, NULL, 0);
    s->f_workers =
        metrics_family_new(r, METRICS_GAUGE, "sluice_frontend_workers",
                           "Discovered workers per model", (const char *[]){"model"}, 1, NULL, 0);
    s->m_inflight =
        metrics_gauge_new(r, "sluice_frontend_inflight_requests", "Generation requests in flight");
    s->m_ttft = metrics_histogram_new(r, "sluice_frontend_ttft_seconds", "Time to first token", lat,
                                      sizeof lat / sizeof lat[0]);
    s->m_itl = metrics_histogram_new(r, "sluice_frontend_inter_token_latency_seconds",
                                     "Time between tokens", lat, sizeof lat / sizeof lat[0]);
    s->m_in_tokens = metrics_histogram_new(r, "sluice_frontend_input_tokens", "Prompt tokens", toks,
                                           sizeof toks / sizeof toks[0]);
    s->m_out_tokens =
        metrics_histogram_new(r, "sluice_frontend_output_tokens", "Completion tokens per choice",
                              toks, sizeof toks / sizeof toks[0]);
    s->m_retries = metrics_counter_new(r, "sluice_frontend_retries_total",
                                       "Requests sent to another worker before the first token");
    s->m_migrations = metrics_counter_new(r, "sluice_frontend_migrations_total",
                                          "Streams migrated to another worker mid-stream");
    s->m_routed =
        metrics_counter_new(r, "sluice_frontend_routed_total", "Attempts placed by a router");
    s->m_route_fallbacks = metrics_counter_new(
        r, "sluice_frontend_route_fallbacks_total",
        "Attempts placed by round-robin because no router answered (with --router-mode)");
    s->m_overlap = metrics_counter_new(r, "sluice_frontend_router_overlap_blocks_total",
                                       "Prompt blocks the router promised cached (KV hits)");
    s->m_prompt_blocks = metrics_counter_new(r, "sluice_frontend_router_prompt_blocks_total",
                                             "Prompt blocks of routed requests (hit rate: "
                                             "overlap / prompt)");
    s->m_prompt_tokens = metrics_counter_new(r, "sluice_frontend_prompt_tokens_total",
                                             "Prompt tokens sent to workers (one per choice)");
    s->m_cached_tokens = metrics_counter_new(
        r, "sluice_frontend_cached_prompt_tokens_total",
        "Prompt tokens workers served from their prefix cache (hit rate: cached / prompt)");
    s->m_busy = metrics_counter_new(r, "sluice_frontend_rejected_busy_total",
                                    "Generation requests refused with 503: no free slot");
    if (!s->m_routed || !s->m_route_fallbacks || !s->m_overlap || !s->m_prompt_blocks ||
        !s->m_prompt_tokens || !s->m_cached_tokens || !s->m_busy)
        return SL_ENOMEM;
    if (!s->f_requests || !s->f_workers || !s->m_inflight || !s->m_ttft || !s->m_itl ||
        !s->m_in_tokens || !s->m_out_tokens || !s->m_retries || !s->m_migrations)
        return SL_ENOMEM;
    metrics_registry_on_collect(r, on_collect, s);
    return 0;
}

int http_server_start(const http_server_cfg_t *cfg, http_server_t **out, char *why,
                      size_t why_len) {
    int rc = SL_EINVAL;
    http_server_t *s = NULL;
    why[0] = 0;
    *out = NULL;
    if (!cfg->model_path) {
        snprintf(why, why_len, "--model-path DIR is required");
        goto out;
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        rc = SL_ENOMEM;
        goto out;
    }
    if (cfg->served_model_name) {
        snprintf(s->model, sizeof s->model, "%s", cfg->served_model_name);
    } else {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s", cfg->model_path);
        size_t l = strlen(tmp);
        while (l > 1 && tmp[l - 1] == '/') tmp[--l] = 0;
        snprintf(s->model, sizeof s->model, "%s", basename(tmp));
    }
    if (cfg->api_key && cfg->api_key[0]) {
        s->auth = true;
        snprintf(s->api_key, sizeof s->api_key, "%s", cfg->api_key);
    }
    s->max_body = (size_t)cfg->max_body_bytes;
    if ((rc = load_model_files(s, cfg, why, why_len))) goto out;
    if ((rc = init_metrics(s))) goto out;
    bus_opts_t bo = {.url = cfg->common.nats, .name = "sluice-frontend", .retry_initial = true};
    if ((rc = bus_connect(&s->bus, &bo))) {
        snprintf(why, why_len, "NATS %s: %s", cfg->common.nats, bus_last_error());
        goto out;
    }
    discovery_opts_t dopts = {.etcd_url = cfg->common.etcd, .ns = cfg->common.ns};
    if ((rc = discovery_open(&dopts, &s->disc))) {
        snprintf(why, why_len, "discovery: %s", sl_strerror(rc));
        goto out;
    }
    if ((rc = worker_pool_open(s->disc, &s->pool))) {
        snprintf(why, why_len, "worker pool: %s", sl_strerror(rc));
        goto out;
    }
    gen_client_opts_t go = {.ns = discovery_namespace(s->disc),
                            .stream_timeout_ms = (int)cfg->stream_timeout_ms,
                            .max_attempts = (int)cfg->max_attempts,
                            .retries = s->m_retries,
                            .migrations = s->m_migrations,
                            .router_mode = cfg->router_mode,
                            .router_timeout_ms = (int)cfg->router_timeout_ms,
                            .routed = s->m_routed,
                            .route_fallbacks = s->m_route_fallbacks,
                            .overlap_blocks = s->m_overlap,
                            .prompt_blocks = s->m_prompt_blocks,
                            .tok = s->tok};
    if ((rc = gen_client_new(s->bus, s->pool, &go, &s->gen))) goto out;

    /* At least one generation slot whatever the reserve. */
    s->gen_slots = cfg->http_threads > cfg->http_reserve_threads
                       ? cfg->http_threads - cfg->http_reserve_threads
                       : 1;
    char ports[300], threads[24];
    snprintf(ports, sizeof ports, "%s:%lld", cfg->host ? cfg->host : "0.0.0.0",
             (long long)cfg->port);
    snprintf(threads, sizeof threads, "%llu", (unsigned long long)cfg->http_threads);
    const char *options[] = {"listening_ports", ports, "num_threads", threads, "request_timeout_ms",
                             "600000", "enable_keep_alive", "yes", "listen_backlog", "4096",
                             /* Nagle would hold each small SSE event and
                              * keep-alive response for the client's delayed
                              * ACK (~40 ms) */
                             "tcp_nodelay", "1", NULL};
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.log_message = on_log;
    mg_init_library(0);
    struct mg_init_data init = {.callbacks = &cb, .user_data = s, .configuration_options = options};
    char errtext[256] = "";
    unsigned errcode = 0;
    struct mg_error_data merr = {
        .code = &errcode, .text = errtext, .text_buffer_size = sizeof errtext};
    s->ctx = mg_start2(&init, &merr);
    if (!s->ctx) {
        snprintf(why, why_len, "cannot listen on %s: %s", ports, errtext);
        rc = SL_EIO;
        goto out;
    }
    mg_set_request_handler(s->ctx, "/", on_request, s);
    struct mg_server_port sp[4];
    if (mg_get_server_ports(s->ctx, 4, sp) < 1) {
        snprintf(why, why_len, "no listening port");
        rc = SL_EIO;
        goto out;
    }
    s->port = sp[0].port;
    LOG_INFO("serving model '%s' on %s (port %d, %s threads)", s->model, ports, s->port, threads);
    *out = s;
    s = NULL;
    rc = 0;
out:
    http_server_free(s);
    return rc;
}

int http_server_port(const http_server_t *s) {
    return s ? s->port : -1;
}

void http_server_free(http_server_t *s) {
    if (!s) return;
    if (s->ctx) mg_stop(s->ctx);
    gen_client_free(s->gen);
    worker_pool_free(s->pool);
    discovery_close(s->disc);
    bus_free(s->bus);
    metrics_registry_free(s->reg);
    chat_template_free(s->tmpl);
    sl_tokenizer_free(s->tok);
    free(s);
}
