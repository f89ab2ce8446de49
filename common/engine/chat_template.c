/* chat_template.c - public API of chat templates (see chat_template.h):
 * loading templates from text or tokenizer_config.json, turning the cJSON
 * request into template values, picking the named template as transformers
 * does, and running the evaluator with a per-render arena. */
#include "common/engine/chat_template.h"
#include "common/engine/chat_template_internal.h"
#include "common/base/err.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CT_MAX_CONFIG_FILE (64u << 20)
#define CT_MAX_TEMPLATES   32

typedef struct ct_named {
    const char *name;
    ct_body_t body;
} ct_named_t;

struct chat_template {
    ct_arena_t arena; /* tokens, AST, names; immutable after load */
    ct_named_t tmpl[CT_MAX_TEMPLATES];
    size_t n;
    const char *bos, *eos;
};

static void set_err(char **err_text, const char *msg) {
    if (!err_text) return;
    *err_text = strdup(msg ? msg : "error");
}

static int compile_into(chat_template_t *t, const char *name, const char *text, size_t len,
                        char *err, size_t errlen) {
    if (t->n >= CT_MAX_TEMPLATES) {
        snprintf(err, errlen, "too many named chat templates (max %d)", CT_MAX_TEMPLATES);
        return SL_ERANGE;
    }
    ct_toks_t toks;
    int rc = ct_lex(&t->arena, text, len, &toks, err, errlen);
    if (rc == SL_ENOMEM) snprintf(err, errlen, "out of memory compiling the chat template");
    if (rc) return rc;
    ct_named_t *nt = &t->tmpl[t->n];
    rc = ct_parse(&t->arena, &toks, &nt->body, err, errlen);
    if (rc) return rc;
    nt->name = ct_arena_strndup(&t->arena, name, strlen(name));
    if (!nt->name) return SL_ENOMEM;
    t->n++;
    return 0;
}

static chat_template_t *tmpl_new(void) {
    chat_template_t *t = calloc(1, sizeof *t);
    if (t) ct_arena_init(&t->arena, CT_MAX_LOAD_ARENA);
    return t;
}

int chat_template_load(const char *text, size_t len, chat_template_t **out, char **err_text) {
    char err[CT_ERR_LEN] = "";
    int rc = 0;
    chat_template_t *t = NULL;
    if (err_text) *err_text = NULL;
    if (!out || (!text && len)) {
        rc = SL_EINVAL;
        snprintf(err, sizeof err, "invalid argument");
        goto out;
    }
    *out = NULL;
    t = tmpl_new();
    if (!t) {
        rc = SL_ENOMEM;
        snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    rc = compile_into(t, "default", text ? text : "", len, err, sizeof err);
    if (rc) goto out;
    *out = t;
    t = NULL;
out:
    if (rc) set_err(err_text, err);
    chat_template_free(t);
    return rc;
}

static const char *token_text(chat_template_t *t, const cJSON *v) {
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!cJSON_IsString(v)) return NULL;
    return ct_arena_strndup(&t->arena, v->valuestring, strlen(v->valuestring));
}

int chat_template_load_config(const char *json, size_t len, chat_template_t **out,
                              char **err_text) {
    char err[CT_ERR_LEN] = "";
    int rc = 0;
    chat_template_t *t = NULL;
    cJSON *root = NULL;
    if (err_text) *err_text = NULL;
    if (!out || !json) {
        rc = SL_EINVAL;
        snprintf(err, sizeof err, "invalid argument");
        goto out;
    }
    *out = NULL;
    root = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(root)) {
        rc = SL_EFORMAT;
        snprintf(err, sizeof err, "tokenizer_config.json is not a JSON object");
        goto out;
    }
    t = tmpl_new();
    if (!t) {
        rc = SL_ENOMEM;
        snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    if (cJSON_IsString(ct)) {
        rc = compile_into(t, "default", ct->valuestring, strlen(ct->valuestring), err, sizeof err);
        if (rc) goto out;
    } else if (cJSON_IsArray(ct)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, ct) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
            const cJSON *tx = cJSON_GetObjectItemCaseSensitive(it, "template");
            if (!cJSON_IsString(nm) || !cJSON_IsString(tx)) {
                rc = SL_EFORMAT;
                snprintf(err, sizeof err,
                         "chat_template list entries need string name and template");
                goto out;
            }
            char sub[CT_ERR_LEN] = "";
            rc = compile_into(t, nm->valuestring, tx->valuestring, strlen(tx->valuestring), sub,
                              sizeof sub);
            if (rc) {
                snprintf(err, sizeof err, "chat template '%.60s': %.400s", nm->valuestring, sub);
                goto out;
            }
        }
        if (t->n == 0) {
            rc = SL_ENOTFOUND;
            snprintf(err, sizeof err, "chat_template list is empty");
            goto out;
        }
    } else {
        rc = SL_ENOTFOUND;
        snprintf(err, sizeof err, "tokenizer_config.json has no chat_template");
        goto out;
    }
    t->bos = token_text(t, cJSON_GetObjectItemCaseSensitive(root, "bos_token"));
    t->eos = token_text(t, cJSON_GetObjectItemCaseSensitive(root, "eos_token"));
    *out = t;
    t = NULL;
out:
    if (rc) set_err(err_text, err);
    cJSON_Delete(root);
    chat_template_free(t);
    return rc;
}

int chat_template_load_config_file(const char *path, chat_template_t **out, char **err_text) {
    char err[CT_ERR_LEN] = "";
    int rc = 0;
    char *buf = NULL;
    FILE *fp = NULL;
    if (err_text) *err_text = NULL;
    if (!path || !out) {
        rc = SL_EINVAL;
        snprintf(err, sizeof err, "invalid argument");
        goto out;
    }
    fp = fopen(path, "rb");
    if (!fp) {
        rc = SL_EIO;
        snprintf(err, sizeof err, "cannot open %.300s", path);
        goto out;
    }
    size_t cap = 1 << 16, n = 0;
    buf = malloc(cap);
    if (!buf) {
        rc = SL_ENOMEM;
        snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    for (;;) {
        if (n == cap) {
            if (cap >= CT_MAX_CONFIG_FILE) {
                rc = SL_ETOOBIG;
                snprintf(err, sizeof err, "%.300s is larger than %u MiB", path,
                         CT_MAX_CONFIG_FILE >> 20);
                goto out;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                rc = SL_ENOMEM;
                snprintf(err, sizeof err, "out of memory");
                goto out;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, fp);
        n += r;
        if (r == 0) break;
    }
    if (ferror(fp)) {
        rc = SL_EIO;
        snprintf(err, sizeof err, "error reading %.300s", path);
        goto out;
    }
    rc = chat_template_load_config(buf, n, out, err_text);
    free(buf);
    fclose(fp);
    return rc;
out:
    if (rc) set_err(err_text, err);
    free(buf);
    if (fp) fclose(fp);
    return rc;
}

/* ---- request -> values ------------------------------------------------------------- */
static ct_val_t *from_json(ct_arena_t *a, const cJSON *j, int depth) {
    if (depth > CT_MAX_DEPTH) return NULL;
    if (cJSON_IsNull(j)) return &ct_none;
    if (cJSON_IsBool(j)) return ct_val_bool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        /* cJSON keeps no int/float distinction: integral values in range are
         * ints, as Python's json gives for literals without '.' or 'e' */
        double d = j->valuedouble;
        if (isfinite(d) && d == floor(d) && fabs(d) < 9007199254740992.0)
            return ct_val_int(a, (int64_t)d);
        return ct_val_float(a, d);
    }
    if (cJSON_IsString(j)) return ct_val_str_ref(a, j->valuestring, strlen(j->valuestring));
    if (cJSON_IsArray(j)) {
        ct_val_t *l = ct_val_list(a, 0);
        if (!l) return NULL;
        const cJSON *it;
        cJSON_ArrayForEach(it, j) {
            ct_val_t *v = from_json(a, it, depth + 1);
            if (!v || ct_list_push(a, l, v)) return NULL;
        }
        return l;
    }
    if (cJSON_IsObject(j)) {
        ct_val_t *d = ct_val_dict(a, 0);
        if (!d) return NULL;
        const cJSON *it;
        cJSON_ArrayForEach(it, j) {
            if (!it->string) return NULL;
            ct_val_t *k = ct_val_str_ref(a, it->string, strlen(it->string));
            ct_val_t *v = from_json(a, it, depth + 1);
            if (!k || !v || ct_dict_set(a, d, k, v)) return NULL;
        }
        return d;
    }
    return NULL;
}

/* Python's str.isspace() for one code point. */
static int py_space_cp(uint32_t c) {
    return (c >= 9 && c <= 13) || (c >= 28 && c <= 32) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Length of s[0..n) after Python's rstrip() of whitespace. */
static size_t py_rstrip_len(const char *s, size_t n) {
    while (n > 0) {
        size_t k = n - 1;
        while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80 && n - k < 4) k--;
        const unsigned char *u = (const unsigned char *)s + k;
        size_t l = n - k;
        uint32_t cp = u[0];
        if (l == 2 && (u[0] & 0xE0) == 0xC0)
            cp = ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
        else if (l == 3 && (u[0] & 0xF0) == 0xE0)
            cp = ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
        else if (l != 1)
            break;
        if (!py_space_cp(cp)) break;
        n = k;
    }
    return n;
}

/* transformers' continue_final_message: cut the prompt right after the last
 * occurrence of the final message's content, then rstrip(). */
static int continue_final(const cJSON *msgs, char *text, size_t *len, char *err, size_t errlen) {
    const cJSON *last = cJSON_GetArrayItem(msgs, cJSON_GetArraySize(msgs) - 1);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(last, "content");
    if (!cJSON_IsString(c)) {
        snprintf(err, errlen,
                 "continue_final_message needs the final message's content as a string");
        return SL_EINVAL;
    }
    size_t fl = strlen(c->valuestring), n = *len;
    const char *hit = NULL;
    for (size_t i = n >= fl ? n - fl + 1 : 0; i-- > 0;) {
        if (memcmp(text + i, c->valuestring, fl) == 0) {
            hit = text + i;
            break;
        }
    }
    if (!hit) {
        snprintf(err, errlen,
                 "continue_final_message: the final message does not appear in the "
                 "rendered prompt");
        return SL_EINVAL;
    }
    n = py_rstrip_len(text, (size_t)(hit - text) + fl);
    text[n] = 0;
    *len = n;
    return 0;
}

static const ct_body_t *pick(const chat_template_t *t, int has_tools, char *err, size_t errlen) {
    if (t->n == 1 && strcmp(t->tmpl[0].name, "default") == 0) return &t->tmpl[0].body;
    if (has_tools)
        for (size_t i = 0; i < t->n; i++)
            if (strcmp(t->tmpl[i].name, "tool_use") == 0) return &t->tmpl[i].body;
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->tmpl[i].name, "default") == 0) return &t->tmpl[i].body;
    snprintf(err, errlen, "this model has multiple chat templates with no default specified");
    return NULL;
}

int chat_template_render(const chat_template_t *t, const cJSON *request, const char *bos,
                         const char *eos, char **out_text, size_t *out_len, char **err_text) {
    char err[CT_ERR_LEN] = "";
    int rc = 0;
    ct_arena_t ar;
    ct_buf_t out;
    ct_arena_init(&ar, CT_MAX_RENDER_ARENA);
    ct_buf_init(&out, CT_MAX_OUTPUT);
    if (out_text) *out_text = NULL;
    if (err_text) *err_text = NULL;
    if (out_len) *out_len = 0;
    if (!t || !out_text) {
        rc = SL_EINVAL;
        snprintf(err, sizeof err, "invalid argument");
        goto out;
    }
    if (!cJSON_IsObject(request)) {
        rc = SL_EINVAL;
        snprintf(err, sizeof err, "chat request must be a JSON object");
        goto out;
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(request, "messages");
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(request, "tools");
    const cJSON *agp = cJSON_GetObjectItemCaseSensitive(request, "add_generation_prompt");
    const cJSON *kw = cJSON_GetObjectItemCaseSensitive(request, "chat_template_kwargs");
    const cJSON *docs = cJSON_GetObjectItemCaseSensitive(request, "documents");
    int cont = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(request, "continue_final_message"));
    if (!cJSON_IsArray(msgs)) {
        rc = SL_EINVAL;
        snprintf(err, sizeof err, "chat request needs a \"messages\" array");
        goto out;
    }
    if (cJSON_GetArraySize(msgs) == 0) { /* apply_chat_template fails on it (IndexError) */
        rc = SL_EINVAL;
        snprintf(err, sizeof err, "chat request needs at least one message");
        goto out;
    }
    if (kw && !cJSON_IsObject(kw) && !cJSON_IsNull(kw)) {
        rc = SL_EINVAL;
        snprintf(err, sizeof err, "\"chat_template_kwargs\" must be an object");
        goto out;
    }
    int has_tools = tools && !cJSON_IsNull(tools);
    const ct_body_t *body = pick(t, has_tools, err, sizeof err);
    if (!body) {
        rc = SL_EINVAL;
        goto out;
    }
    ct_frame_t *g = ct_arena_alloc(&ar, sizeof *g);
    ct_val_t *vm = from_json(&ar, msgs, 0);
    ct_val_t *vt = has_tools ? from_json(&ar, tools, 0) : &ct_none;
    ct_val_t *va = agp ? from_json(&ar, agp, 0) : &ct_false;
    ct_val_t *vd = docs && !cJSON_IsNull(docs) ? from_json(&ar, docs, 0) : &ct_none;
    if (!g || !vm || !vt || !va || !vd) {
        rc = SL_ENOMEM;
        snprintf(err, sizeof err, "request too large or nested too deeply");
        goto out;
    }
    if (cont && ct_val_truthy(va)) {
        rc = SL_EINVAL;
        snprintf(err, sizeof err,
                 "continue_final_message and add_generation_prompt are not compatible");
        goto out;
    }
    if (!bos) bos = t->bos;
    if (!eos) eos = t->eos;
    rc = ct_frame_set(&ar, g, "messages", vm);
    if (!rc) rc = ct_frame_set(&ar, g, "tools", vt);
    if (!rc) rc = ct_frame_set(&ar, g, "documents", vd);
    if (!rc) rc = ct_frame_set(&ar, g, "add_generation_prompt", va);
    if (!rc && bos) {
        ct_val_t *v = ct_val_str_ref(&ar, bos, strlen(bos));
        rc = v ? ct_frame_set(&ar, g, "bos_token", v) : SL_ENOMEM;
    }
    if (!rc && eos) {
        ct_val_t *v = ct_val_str_ref(&ar, eos, strlen(eos));
        rc = v ? ct_frame_set(&ar, g, "eos_token", v) : SL_ENOMEM;
    }
    if (rc) {
        snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    if (cJSON_IsObject(kw)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, kw) {
            if (!strcmp(it->string, "messages") || !strcmp(it->string, "tools") ||
                !strcmp(it->string, "documents") || !strcmp(it->string, "add_generation_prompt")) {
                rc = SL_EINVAL;
                snprintf(err, sizeof err, "chat_template_kwargs may not set '%.64s'", it->string);
                goto out;
            }
            ct_val_t *v = from_json(&ar, it, 0);
            const char *nm = ct_arena_strndup(&ar, it->string, strlen(it->string));
            if (!v || !nm || ct_frame_set(&ar, g, nm, v)) {
                rc = SL_ENOMEM;
                snprintf(err, sizeof err, "request too large or nested too deeply");
                goto out;
            }
        }
    }
    rc = ct_eval_render(body, &ar, g, &out, err, sizeof err);
    if (rc) goto out;
    if (cont && out.p && (rc = continue_final(msgs, out.p, &out.len, err, sizeof err))) goto out;
    if (cont && !out.p) {
        rc = SL_EINVAL;
        snprintf(err, sizeof err, "continue_final_message: the prompt is empty");
        goto out;
    }
    if (!out.p) {
        out.p = calloc(1, 1);
        if (!out.p) {
            rc = SL_ENOMEM;
            snprintf(err, sizeof err, "out of memory");
            goto out;
        }
    }
    *out_text = out.p;
    if (out_len) *out_len = out.len;
    out.p = NULL;
out:
    if (rc) set_err(err_text, err);
    ct_buf_free(&out);
    ct_arena_release(&ar);
    return rc;
}

const char *chat_template_bos_token(const chat_template_t *t) {
    return t ? t->bos : NULL;
}

const char *chat_template_eos_token(const chat_template_t *t) {
    return t ? t->eos : NULL;
}

size_t chat_template_count(const chat_template_t *t) {
    return t ? t->n : 0;
}

const char *chat_template_name(const chat_template_t *t, size_t i) {
    return t && i < t->n ? t->tmpl[i].name : NULL;
}

void chat_template_free(chat_template_t *t) {
    if (!t) return;
    ct_arena_release(&t->arena);
    free(t);
}
