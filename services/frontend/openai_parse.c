/* openai_parse.c - OpenAI request validation (see openai_parse.h). */
#include "services/frontend/openai_parse.h"

#include "common/base/err.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void oai_error_set(oai_error_t *err, int status, const char *param, const char *fmt, ...) {
    if (!err) return;
    va_list ap;
    va_start(ap, fmt);
    err->status = status;
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
}

void oai_request_free(oai_request_t *r) {
    if (!r) return;
    free(r->model);
    cJSON_Delete(r->chat);
    free(r->prompt_text);
    free(r->prompt_ids);
    for (size_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->user);
    free(r);
}

int oai_content_flatten(const cJSON *content, char **out) {
    *out = NULL;
    if (!content || cJSON_IsNull(content)) {
        *out = strdup("");
        return *out ? 0 : SL_ENOMEM;
    }
    if (cJSON_IsString(content)) {
        *out = strdup(content->valuestring);
        return *out ? 0 : SL_ENOMEM;
    }
    if (!cJSON_IsArray(content)) return SL_EINVAL;
    size_t total = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, content) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (!cJSON_IsObject(p) || !cJSON_IsString(type)) return SL_EINVAL;
        if (strcmp(type->valuestring, "text") != 0) return SL_EUNSUPPORTED;
        if (!cJSON_IsString(text)) return SL_EINVAL;
        size_t l = strlen(text->valuestring);
        if (total + l < total) return SL_ETOOBIG;
        total += l;
    }
    char *s = malloc(total + 1);
    if (!s) return SL_ENOMEM;
    size_t off = 0;
    cJSON_ArrayForEach(p, content) {
        const char *t = cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring;
        size_t l = strlen(t);
        memcpy(s + off, t, l);
        off += l;
    }
    s[off] = 0;
    *out = s;
    return 0;
}

/* Number field: absent/null keeps *dst; else must be a finite number in
 * [lo, hi]. */
static int get_float(const cJSON *root, const char *name, double lo, double hi, float *dst,
                     oai_error_t *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi) {
        oai_error_set(err, 400, name, "'%s' must be a number in [%g, %g]", name, lo, hi);
        return SL_EINVAL;
    }
    *dst = (float)v->valuedouble;
    return 0;
}

/* Integer field in [lo, hi]; *present tells whether it was given. */
static int get_int(const cJSON *root, const char *name, double lo, double hi, int64_t *dst,
                   bool *present, oai_error_t *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (present) *present = false;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi) {
        oai_error_set(err, 400, name, "'%s' must be an integer in [%.0f, %.0f]", name, lo, hi);
        return SL_EINVAL;
    }
    *dst = (int64_t)v->valuedouble;
    if (present) *present = true;
    return 0;
}

static int get_bool(const cJSON *root, const char *name, bool *dst, oai_error_t *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) {
        oai_error_set(err, 400, name, "'%s' must be a boolean", name);
        return SL_EINVAL;
    }
    *dst = cJSON_IsTrue(v);
    return 0;
}

static int parse_stop(const cJSON *root, oai_request_t *r, oai_error_t *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (!v || cJSON_IsNull(v)) return 0;
    size_t n = cJSON_IsString(v) ? 1 : cJSON_IsArray(v) ? (size_t)cJSON_GetArraySize(v) : 0;
    if (!cJSON_IsString(v) && !cJSON_IsArray(v)) goto bad;
    if (n > OAI_MAX_STOP) {
        oai_error_set(err, 400, "stop", "'stop' has more than %d entries", OAI_MAX_STOP);
        return SL_EINVAL;
    }
    r->stop = calloc(n ? n : 1, sizeof *r->stop);
    if (!r->stop) goto nomem;
    for (size_t i = 0; i < n; i++) {
        const cJSON *s = cJSON_IsString(v) ? v : cJSON_GetArrayItem(v, (int)i);
        if (!cJSON_IsString(s)) goto bad;
        size_t l = strlen(s->valuestring);
        if (l == 0) continue; /* an empty stop string never matches: ignore */
        if (l > OAI_MAX_STOP_BYTES) {
            oai_error_set(err, 400, "stop", "a stop string is longer than %d bytes",
                          OAI_MAX_STOP_BYTES);
            return SL_EINVAL;
        }
        if (!(r->stop[r->n_stop] = strdup(s->valuestring))) goto nomem;
        r->n_stop++;
    }
    return 0;
bad:
    oai_error_set(err, 400, "stop", "'stop' must be a string or an array of strings");
    return SL_EINVAL;
nomem:
    oai_error_set(err, 500, NULL, "out of memory");
    return SL_ENOMEM;
}

static int parse_messages(const cJSON *root, oai_request_t *r, oai_error_t *err) {
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    int rc = 0;
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        oai_error_set(err, 400, "messages", "'messages' must be a non-empty array");
        return SL_EINVAL;
    }
    if (cJSON_GetArraySize(msgs) > OAI_MAX_MESSAGES) {
        oai_error_set(err, 400, "messages", "'messages' has more than %d entries",
                      OAI_MAX_MESSAGES);
        return SL_EINVAL;
    }
    r->chat = cJSON_CreateObject();
    cJSON *out = r->chat ? cJSON_AddArrayToObject(r->chat, "messages") : NULL;
    if (!out) goto nomem;
    const cJSON *m;
    int i = 0;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        char param[64];
        snprintf(param, sizeof param, "messages[%d]", i);
        if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !role->valuestring[0]) {
            oai_error_set(err, 400, param, "'%s' must be an object with a string 'role'", param);
            return SL_EINVAL;
        }
        cJSON *copy = cJSON_Duplicate(m, 1);
        if (!copy) goto nomem;
        cJSON_AddItemToArray(out, copy);
        char *flat = NULL;
        rc = oai_content_flatten(cJSON_GetObjectItemCaseSensitive(m, "content"), &flat);
        if (rc == SL_ENOMEM) goto nomem;
        if (rc) {
            snprintf(param, sizeof param, "messages[%d].content", i);
            oai_error_set(err, 400, param,
                          rc == SL_EUNSUPPORTED
                              ? "'%s': only content parts of type 'text' are supported"
                              : "'%s' must be a string or an array of text parts",
                          param);
            return SL_EINVAL;
        }
        cJSON *s = cJSON_CreateString(flat);
        free(flat);
        if (!s) goto nomem;
        if (cJSON_GetObjectItemCaseSensitive(copy, "content"))
            cJSON_ReplaceItemInObjectCaseSensitive(copy, "content", s);
        else
            cJSON_AddItemToObject(copy, "content", s);
        i++;
    }
    const char *pass[] = {"tools", "chat_template_kwargs", "documents"};
    for (size_t k = 0; k < sizeof pass / sizeof pass[0]; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, pass[k]);
        if (!v || cJSON_IsNull(v)) continue;
        if (k == 1 && !cJSON_IsObject(v)) {
            oai_error_set(err, 400, pass[k], "'%s' must be an object", pass[k]);
            return SL_EINVAL;
        }
        cJSON *c = cJSON_Duplicate(v, 1);
        if (!c) goto nomem;
        cJSON_AddItemToObject(r->chat, pass[k], c);
    }
    bool agp = true;
    if (get_bool(root, "add_generation_prompt", &agp, err)) return SL_EINVAL;
    cJSON_AddBoolToObject(r->chat, "add_generation_prompt", agp);
    return 0;
nomem:
    oai_error_set(err, 500, NULL, "out of memory");
    return SL_ENOMEM;
}

static int parse_prompt(const cJSON *root, oai_request_t *r, oai_error_t *err) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(cJSON_GetArrayItem(p, 0)))
        p = cJSON_GetArrayItem(p, 0); /* ["text"]: one prompt */
    if (cJSON_IsString(p)) {
        r->prompt_text = strdup(p->valuestring);
        if (!r->prompt_text) goto nomem;
        return 0;
    }
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) > 0) {
        size_t n = (size_t)cJSON_GetArraySize(p);
        r->prompt_ids = malloc(n * sizeof *r->prompt_ids);
        if (!r->prompt_ids) goto nomem;
        const cJSON *t;
        cJSON_ArrayForEach(t, p) {
            if (!cJSON_IsNumber(t) || t->valuedouble < 0 || t->valuedouble > 4294967295.0 ||
                t->valuedouble != floor(t->valuedouble)) {
                oai_error_set(err, 400, "prompt",
                              "'prompt' must be a string, one-string array or an array of token "
                              "ids (non-negative integers)");
                return SL_EINVAL;
            }
            r->prompt_ids[r->n_prompt_ids++] = (uint32_t)t->valuedouble;
        }
        return 0;
    }
    oai_error_set(err, 400, "prompt",
                  "'prompt' must be a string or a non-empty array of token ids");
    return SL_EINVAL;
nomem:
    oai_error_set(err, 500, NULL, "out of memory");
    return SL_ENOMEM;
}

int oai_request_parse(const char *body, size_t len, oai_kind_t kind, oai_request_t **out,
                      oai_error_t *err) {
    int rc = SL_EINVAL;
    oai_request_t *r = NULL;
    cJSON *root = NULL;
    int64_t v = 0;
    bool present = false;
    *out = NULL;
    if (!body) {
        oai_error_set(err, 400, NULL, "empty request body");
        goto out;
    }
    root = cJSON_ParseWithLength(body, len);
    if (!root) {
        oai_error_set(err, 400, NULL, "request body is not valid JSON");
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        oai_error_set(err, 400, NULL, "request body must be a JSON object");
        goto out;
    }
    r = calloc(1, sizeof *r);
    if (!r) {
        rc = SL_ENOMEM;
        oai_error_set(err, 500, NULL, "out of memory");
        goto out;
    }
    r->kind = kind;
    r->temperature = 1.0f;
    r->top_p = 1.0f;
    r->n = 1;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsString(model) || !model->valuestring[0]) {
        oai_error_set(err, 400, "model", "'model' is required and must be a non-empty string");
        goto out;
    }
    if (!(r->model = strdup(model->valuestring))) goto nomem;
    rc = kind == OAI_KIND_CHAT ? parse_messages(root, r, err) : parse_prompt(root, r, err);
    if (rc) goto out;
    rc = SL_EINVAL;
    if (get_bool(root, "stream", &r->stream, err)) goto out;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) {
            oai_error_set(err, 400, "stream_options", "'stream_options' must be an object");
            goto out;
        }
        if (get_bool(so, "include_usage", &r->include_usage, err)) goto out;
    }
    /* max_completion_tokens (newer chat name) wins over max_tokens */
    if (get_int(root, "max_tokens", 1, 1 << 24, &v, &present, err)) goto out;
    if (present) r->max_tokens = (uint32_t)v;
    if (get_int(root, "max_completion_tokens", 1, 1 << 24, &v, &present, err)) goto out;
    if (present) r->max_tokens = (uint32_t)v;
    if (get_float(root, "temperature", 0, 2, &r->temperature, err) ||
        get_float(root, "top_p", 0, 1, &r->top_p, err) ||
        get_float(root, "min_p", 0, 1, &r->min_p, err) ||
        get_float(root, "presence_penalty", -2, 2, &r->presence_penalty, err) ||
        get_float(root, "frequency_penalty", -2, 2, &r->frequency_penalty, err) ||
        get_float(root, "repetition_penalty", 0, 10, &r->repetition_penalty, err))
        goto out;
    if (r->top_p <= 0) {
        oai_error_set(err, 400, "top_p", "'top_p' must be in (0, 1]");
        goto out;
    }
    if (get_int(root, "top_k", -1, 1 << 20, &v, &present, err)) goto out;
    if (present) r->top_k = (int32_t)v;
    if (get_int(root, "seed", -9.2e18, 9.2e18, &v, &r->has_seed, err)) goto out;
    if (r->has_seed) r->seed = (uint64_t)v;
    if (get_int(root, "n", 1, OAI_MAX_N, &v, &present, err)) goto out;
    if (present) r->n = (uint32_t)v;
    if (parse_stop(root, r, err)) goto out;
    if (kind == OAI_KIND_CHAT) {
        if (get_bool(root, "logprobs", &r->logprobs, err)) goto out;
        if (get_int(root, "top_logprobs", 0, OAI_MAX_TOPLOGPROBS, &v, &present, err)) goto out;
        if (present) {
            if (!r->logprobs && v > 0) {
                oai_error_set(err, 400, "top_logprobs",
                              "'top_logprobs' requires 'logprobs' to be true");
                goto out;
            }
            r->top_logprobs = (uint32_t)v;
        }
    } else {
        /* completions: logprobs is the number of alternatives */
        if (get_int(root, "logprobs", 0, OAI_MAX_TOPLOGPROBS, &v, &present, err)) goto out;
        if (present) {
            r->logprobs = true;
            r->top_logprobs = (uint32_t)v;
        }
    }
    if (get_bool(root, "ignore_eos", &r->ignore_eos, err)) goto out;
    if (get_int(root, "min_tokens", 0, 1 << 24, &v, &present, err)) goto out;
    if (present) r->min_tokens = (uint32_t)v;
    const cJSON *user = cJSON_GetObjectItemCaseSensitive(root, "user");
    if (user && !cJSON_IsNull(user)) {
        if (!cJSON_IsString(user)) {
            oai_error_set(err, 400, "user", "'user' must be a string");
            goto out;
        }
        if (!(r->user = strdup(user->valuestring))) goto nomem;
    }
    *out = r;
    r = NULL;
    rc = 0;
    goto out;
nomem:
    rc = SL_ENOMEM;
    oai_error_set(err, 500, NULL, "out of memory");
out:
    oai_request_free(r);
    cJSON_Delete(root);
    return rc;
}
