/* stub.c - predictable OpenAI-style SSE server on civetweb (see stub.h). */
#include "bench/loadgen/stub.h"

#include "common/base/err.h"
#include "common/base/sse.h"

#include <civetweb.h>
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STUB_MAX_BODY (8u << 20)

struct stub_server {
    struct mg_context *ctx;
    stub_cfg_t cfg;
};

static void stub_sleep_ms(int ms) {
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts)) {
    }
}

static void stub_send_json(struct mg_connection *conn, int status, const char *body) {
    char cl[32];
    snprintf(cl, sizeof cl, "%zu", strlen(body));
    mg_response_header_start(conn, status);
    mg_response_header_add(conn, "Content-Type", "application/json", -1);
    mg_response_header_add(conn, "Content-Length", cl, -1);
    mg_response_header_send(conn);
    mg_write(conn, body, strlen(body));
}

/* Sends one SSE event; false once the client has gone. */
static bool stub_send_event(struct mg_connection *conn, const char *data) {
    char buf[1024];
    size_t len = 0;
    if (sse_event_encode(NULL, data, strlen(data), buf, sizeof buf, &len)) return false;
    return mg_send_chunk(conn, buf, (unsigned)len) > 0;
}

static long stub_count_words(const char *s) {
    long n = 0;
    for (const char *p = s; *p; p++)
        if (*p != ' ' && (p == s || p[-1] == ' ')) n++;
    return n;
}

/* Reads and parses the request body. Returns NULL after answering an error. */
static cJSON *stub_read_request(struct mg_connection *conn) {
    const struct mg_request_info *ri = mg_get_request_info(conn);
    long long cl = ri->content_length;
    if (cl < 0 || (unsigned long long)cl > STUB_MAX_BODY) {
        stub_send_json(conn, 413, "{\"error\":{\"message\":\"body missing or over 8 MiB\"}}");
        return NULL;
    }
    char *body = malloc((size_t)cl + 1);
    if (!body) {
        stub_send_json(conn, 500, "{\"error\":{\"message\":\"out of memory\"}}");
        return NULL;
    }
    long long got = 0;
    while (got < cl) {
        int r = mg_read(conn, body + got, (size_t)(cl - got));
        if (r <= 0) break;
        got += r;
    }
    body[got] = 0;
    cJSON *req = cJSON_ParseWithLength(body, (size_t)got);
    free(body);
    if (!cJSON_IsObject(req)) {
        cJSON_Delete(req);
        stub_send_json(conn, 400, "{\"error\":{\"message\":\"malformed JSON\"}}");
        return NULL;
    }
    return req;
}

static int stub_handler(struct mg_connection *conn, void *cbdata) {
    const stub_server_t *s = cbdata;
    const struct mg_request_info *ri = mg_get_request_info(conn);
    if (strcmp(ri->request_method, "POST") != 0) {
        stub_send_json(conn, 405, "{\"error\":{\"message\":\"POST only\"}}");
        return 405;
    }
    bool chat = strstr(ri->local_uri, "/chat/") != NULL;
    cJSON *req = stub_read_request(conn);
    if (!req) return 400;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(req, "max_tokens");
    long ntok = cJSON_IsNumber(mt) && mt->valuedouble >= 1 && mt->valuedouble <= 1e6
                    ? (long)mt->valuedouble
                    : 16;
    bool stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "stream"));
    const cJSON *prompt = NULL;
    if (chat) {
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
        const cJSON *last = cJSON_IsArray(msgs) ? cJSON_GetArrayItem(msgs, 0) : NULL;
        prompt = cJSON_GetObjectItemCaseSensitive(last, "content");
    } else {
        prompt = cJSON_GetObjectItemCaseSensitive(req, "prompt");
    }
    long ptoks = cJSON_IsString(prompt) ? stub_count_words(prompt->valuestring) : 0;
    cJSON_Delete(req);
    char ev[512];
    if (!stream) {
        stub_sleep_ms(s->cfg.ttft_ms + (int)(ntok - 1) * s->cfg.itl_ms);
        snprintf(
            ev, sizeof ev,
            chat ? "{\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{"
                   "\"role\":\"assistant\",\"content\":\"stub\"},\"finish_reason\":\"length\"}"
                   "],\"usage\":{\"prompt_tokens\":%ld,\"completion_tokens\":%ld}}"
                 : "{\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"stub\","
                   "\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":%ld,"
                   "\"completion_tokens\":%ld}}",
            ptoks, ntok);
        stub_send_json(conn, 200, ev);
        return 200;
    }
    mg_response_header_start(conn, 200);
    mg_response_header_add(conn, "Content-Type", "text/event-stream", -1);
    mg_response_header_add(conn, "Cache-Control", "no-cache", -1);
    mg_response_header_add(conn, "Transfer-Encoding", "chunked", -1);
    mg_response_header_send(conn);
    const char *fmt = chat ? "{\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
                             "\"delta\":{\"content\":\" tok\"},\"finish_reason\":%s}]}"
                           : "{\"object\":\"text_completion\",\"choices\":[{\"index\":0,"
                             "\"text\":\" tok\",\"finish_reason\":%s}]}";
    for (long i = 0; i < ntok; i++) {
        stub_sleep_ms(i == 0 ? s->cfg.ttft_ms : s->cfg.itl_ms);
        snprintf(ev, sizeof ev, fmt, i + 1 == ntok ? "\"length\"" : "null");
        if (!stub_send_event(conn, ev)) return 200; /* client gone */
    }
    snprintf(ev, sizeof ev,
             "{\"choices\":[],\"usage\":{\"prompt_tokens\":%ld,\"completion_tokens\":%ld,"
             "\"total_tokens\":%ld}}",
             ptoks, ntok, ptoks + ntok);
    if (stub_send_event(conn, ev) && stub_send_event(conn, "[DONE]")) mg_send_chunk(conn, "", 0);
    return 200;
}

int stub_server_start(const stub_cfg_t *cfg, stub_server_t **out) {
    if (!cfg || !out || !cfg->listen || cfg->threads < 1 || cfg->threads > 100000 ||
        cfg->ttft_ms < 0 || cfg->itl_ms < 0)
        return SL_EINVAL;
    *out = NULL;
    stub_server_t *s = calloc(1, sizeof *s);
    if (!s) return SL_ENOMEM;
    s->cfg = *cfg;
    char threads[16];
    snprintf(threads, sizeof threads, "%d", cfg->threads);
    const char *opts[] = {"listening_ports",
                          cfg->listen,
                          "num_threads",
                          threads,
                          "enable_keep_alive",
                          "yes",
                          "tcp_nodelay",
                          "1",
                          "request_timeout_ms",
                          "600000",
                          "listen_backlog",
                          "4096",
                          NULL};
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof cb);
    s->ctx = mg_start(&cb, s, opts);
    if (!s->ctx) {
        free(s);
        return SL_EIO;
    }
    mg_set_request_handler(s->ctx, "/v1/chat/completions", stub_handler, s);
    mg_set_request_handler(s->ctx, "/v1/completions", stub_handler, s);
    *out = s;
    return 0;
}

void stub_server_stop(stub_server_t *s) {
    if (!s) return;
    mg_stop(s->ctx);
    free(s);
}
