/* openai_format.c - OpenAI JSON bodies (see openai_format.h). */
#include "services/frontend/openai_format.h"

#include "common/base/err.h"
#include "common/engine/utf8.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void oai_id_make(char *buf, size_t len, const char *prefix) {
    static _Atomic uint64_t ctr;
    static _Atomic uint64_t salt; /* set once by the first caller */
    uint64_t sl = atomic_load_explicit(&salt, memory_order_relaxed);
    if (!sl) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t mine =
            ((uint64_t)ts.tv_sec * 1000000007ULL) ^ (uint64_t)ts.tv_nsec ^ 0x9e3779b97f4a7c15ULL;
        uint64_t zero = 0;
        sl = atomic_compare_exchange_strong(&salt, &zero, mine) ? mine : zero;
    }
    uint64_t x = sl + atomic_fetch_add(&ctr, 1) * 0x9e3779b97f4a7c15ULL;
    uint64_t y = x ^ (x >> 31);
    y *= 0xbf58476d1ce4e5b9ULL;
    y ^= y >> 27;
    snprintf(buf, len, "%s%016llx%08llx", prefix, (unsigned long long)y,
             (unsigned long long)(x & 0xffffffffULL));
}

const char *oai_finish_name(int finish) {
    switch (finish) {
    case SLUICE__V1__FINISH_REASON__FINISH_REASON_STOP:
        return "stop";
    case SLUICE__V1__FINISH_REASON__FINISH_REASON_LENGTH:
        return "length";
    case SLUICE__V1__FINISH_REASON__FINISH_REASON_CANCELLED:
        return "stop";
    default:
        return NULL;
    }
}

char *oai_error_json(int status, const char *message, const char *param) {
    const char *type = status == 400 || status == 413 ? "invalid_request_error"
                       : status == 401                ? "authentication_error"
                       : status == 404                ? "not_found_error"
                       : status == 503                ? "service_unavailable_error"
                                                      : "internal_error";
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    char *s = NULL;
    if (!e) goto out;
    cJSON_AddStringToObject(e, "message", message ? message : "");
    cJSON_AddStringToObject(e, "type", type);
    if (param && param[0])
        cJSON_AddStringToObject(e, "param", param);
    else
        cJSON_AddNullToObject(e, "param");
    if (status == 404)
        cJSON_AddStringToObject(e, "code", "model_not_found");
    else
        cJSON_AddNumberToObject(e, "code", status);
    s = cJSON_PrintUnformatted(root);
out:
    cJSON_Delete(root);
    return s;
}

cJSON *oai_usage_json(const oai_usage_t *u) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "prompt_tokens", u->prompt);
    cJSON_AddNumberToObject(o, "completion_tokens", u->completion);
    cJSON_AddNumberToObject(o, "total_tokens", (double)u->prompt + u->completion);
    cJSON *d = cJSON_AddObjectToObject(o, "prompt_tokens_details");
    if (d) cJSON_AddNumberToObject(d, "cached_tokens", u->cached);
    return o;
}

static cJSON *ctx_object(const oai_resp_ctx_t *ctx, bool chunk) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "id", ctx->id);
    cJSON_AddStringToObject(o, "object",
                            ctx->kind == OAI_KIND_CHAT
                                ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)ctx->created);
    cJSON_AddStringToObject(o, "model", ctx->model);
    cJSON_AddStringToObject(o, "system_fingerprint", "sluice");
    return o;
}

static void add_logprobs(cJSON *choice, const cJSON *lp) {
    cJSON *c = lp ? cJSON_Duplicate(lp, 1) : NULL;
    if (c)
        cJSON_AddItemToObject(choice, "logprobs", c);
    else
        cJSON_AddNullToObject(choice, "logprobs");
}

char *oai_chunk_json(const oai_resp_ctx_t *ctx, uint32_t index, bool first, const char *text,
                     const char *finish, const cJSON *logprobs, const oai_usage_t *usage) {
    char *s = NULL;
    cJSON *o = ctx_object(ctx, true);
    cJSON *choices = o ? cJSON_AddArrayToObject(o, "choices") : NULL;
    if (!choices) goto out;
    if (usage) {
        cJSON *u = oai_usage_json(usage);
        if (!u) goto out;
        cJSON_AddItemToObject(o, "usage", u);
    } else {
        cJSON *ch = cJSON_CreateObject();
        if (!ch) goto out;
        cJSON_AddItemToArray(choices, ch);
        cJSON_AddNumberToObject(ch, "index", index);
        if (ctx->kind == OAI_KIND_CHAT) {
            cJSON *d = cJSON_AddObjectToObject(ch, "delta");
            if (first) cJSON_AddStringToObject(d, "role", "assistant");
            if (text) cJSON_AddStringToObject(d, "content", text);
        } else {
            cJSON_AddStringToObject(ch, "text", text ? text : "");
        }
        add_logprobs(ch, logprobs);
        if (finish)
            cJSON_AddStringToObject(ch, "finish_reason", finish);
        else
            cJSON_AddNullToObject(ch, "finish_reason");
    }
    s = cJSON_PrintUnformatted(o);
out:
    cJSON_Delete(o);
    return s;
}

char *oai_response_json(const oai_resp_ctx_t *ctx, const oai_choice_t *choices, size_t n,
                        const oai_usage_t *usage) {
    char *s = NULL;
    cJSON *o = ctx_object(ctx, false);
    cJSON *arr = o ? cJSON_AddArrayToObject(o, "choices") : NULL;
    if (!arr) goto out;
    for (size_t i = 0; i < n; i++) {
        cJSON *ch = cJSON_CreateObject();
        if (!ch) goto out;
        cJSON_AddItemToArray(arr, ch);
        cJSON_AddNumberToObject(ch, "index", (double)i);
        if (ctx->kind == OAI_KIND_CHAT) {
            cJSON *m = cJSON_AddObjectToObject(ch, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            cJSON_AddStringToObject(m, "content", choices[i].text ? choices[i].text : "");
        } else {
            cJSON_AddStringToObject(ch, "text", choices[i].text ? choices[i].text : "");
        }
        add_logprobs(ch, choices[i].logprobs);
        if (choices[i].finish)
            cJSON_AddStringToObject(ch, "finish_reason", choices[i].finish);
        else
            cJSON_AddNullToObject(ch, "finish_reason");
    }
    cJSON *u = oai_usage_json(usage);
    if (!u) goto out;
    cJSON_AddItemToObject(o, "usage", u);
    s = cJSON_PrintUnformatted(o);
out:
    cJSON_Delete(o);
    return s;
}

/* A token's text for JSON: valid UTF-8 as is, else "bytes:\xNN...". */
static cJSON *token_string(const ProtobufCBinaryData *b) {
    if (sl_utf8_valid(b->data, b->len)) {
        char *t = malloc(b->len + 1);
        if (!t) return NULL;
        if (b->len) memcpy(t, b->data, b->len);
        t[b->len] = 0;
        cJSON *s = cJSON_CreateString(t);
        free(t);
        return s;
    }
    if (b->len > (SIZE_MAX - 7) / 4) return NULL;
    char *t = malloc(6 + b->len * 4 + 1);
    if (!t) return NULL;
    size_t off = (size_t)snprintf(t, 7, "bytes:");
    for (size_t i = 0; i < b->len; i++) off += (size_t)snprintf(t + off, 5, "\\x%02x", b->data[i]);
    cJSON *s = cJSON_CreateString(t);
    free(t);
    return s;
}

static cJSON *bytes_array(const ProtobufCBinaryData *b) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < b->len; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(b->data[i]));
    return a;
}

static cJSON *chat_entry(const Sluice__V1__TokenLogprob *t) {
    cJSON *e = cJSON_CreateObject();
    if (!e) return NULL;
    cJSON *s = token_string(&t->text);
    if (s) cJSON_AddItemToObject(e, "token", s);
    cJSON_AddNumberToObject(e, "logprob", t->logprob);
    cJSON *b = bytes_array(&t->text);
    if (b) cJSON_AddItemToObject(e, "bytes", b);
    return e;
}

int oai_logprobs_append(oai_kind_t kind, cJSON **acc, const Sluice__V1__GenerateChunk *c,
                        size_t *offset) {
    if (!*acc) {
        *acc = cJSON_CreateObject();
        if (!*acc) return SL_ENOMEM;
        if (kind == OAI_KIND_CHAT) {
            cJSON_AddArrayToObject(*acc, "content");
        } else {
            cJSON_AddArrayToObject(*acc, "tokens");
            cJSON_AddArrayToObject(*acc, "token_logprobs");
            cJSON_AddArrayToObject(*acc, "top_logprobs");
            cJSON_AddArrayToObject(*acc, "text_offset");
        }
    }
    for (size_t i = 0; i < c->n_logprobs; i++) {
        const Sluice__V1__PositionLogprobs *p = c->logprobs[i];
        if (!p || !p->chosen) continue;
        if (kind == OAI_KIND_CHAT) {
            cJSON *e = chat_entry(p->chosen);
            if (!e) return SL_ENOMEM;
            cJSON *top = cJSON_AddArrayToObject(e, "top_logprobs");
            for (size_t k = 0; top && k < p->n_top; k++) {
                cJSON *te = chat_entry(p->top[k]);
                if (te) cJSON_AddItemToArray(top, te);
            }
            cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(*acc, "content"), e);
        } else {
            cJSON *s = token_string(&p->chosen->text);
            if (!s) return SL_ENOMEM;
            cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(*acc, "tokens"), s);
            cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(*acc, "token_logprobs"),
                                 cJSON_CreateNumber(p->chosen->logprob));
            cJSON *top = cJSON_CreateObject();
            for (size_t k = 0; top && k < p->n_top; k++) {
                cJSON *ts = token_string(&p->top[k]->text);
                if (ts && cJSON_IsString(ts))
                    cJSON_AddNumberToObject(top, ts->valuestring, p->top[k]->logprob);
                cJSON_Delete(ts);
            }
            if (top)
                cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(*acc, "top_logprobs"), top);
            cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(*acc, "text_offset"),
                                 cJSON_CreateNumber((double)*offset));
            *offset += p->chosen->text.len;
        }
    }
    return 0;
}
