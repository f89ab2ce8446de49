/* model_config.c - parse and validate HF config.json and generation_config.json.
 *
 * Defaults follow transformers' LlamaConfig / MistralConfig / Qwen2Config, so a
 * config.json that leaves a field out means what it means to transformers.
 */
#include "common/engine/model_config.h"

#include "common/base/err.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CFG_FILE_MAX (16u * 1024u * 1024u)

static void cfg_errf(char **err_text, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cfg_errf(char **err_text, const char *fmt, ...) {
    if (!err_text || *err_text) return;
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    *err_text = s;
}

const char *model_arch_name(model_arch_t arch) {
    switch (arch) {
    case MODEL_ARCH_LLAMA:
        return "llama";
    case MODEL_ARCH_MISTRAL:
        return "mistral";
    case MODEL_ARCH_QWEN2:
        return "qwen2";
    }
    return "?";
}

const char *model_dtype_name(model_dtype_t dtype) {
    switch (dtype) {
    case MODEL_DTYPE_F32:
        return "float32";
    case MODEL_DTYPE_F16:
        return "float16";
    case MODEL_DTYPE_BF16:
        return "bfloat16";
    }
    return "?";
}

/* Reads an integer field in [lo, hi]. Absent or null: *out = def and 0 when
 * !required. Returns 0 or SL_EFORMAT. */
static int cfg_uint(const cJSON *root, const char *key, bool required, uint64_t def, uint64_t lo,
                    uint64_t hi, uint64_t *out, char **err_text) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) {
        if (required) {
            cfg_errf(err_text, "config.json: required field '%s' is missing", key);
            return SL_EFORMAT;
        }
        *out = def;
        return 0;
    }
    double d = cJSON_IsNumber(j) ? j->valuedouble : NAN;
    if (!(d >= (double)lo && d <= (double)hi) || floor(d) != d) {
        cfg_errf(err_text, "config.json: '%s' must be an integer in [%llu, %llu]", key,
                 (unsigned long long)lo, (unsigned long long)hi);
        return SL_EFORMAT;
    }
    *out = (uint64_t)d;
    return 0;
}

/* Reads a positive finite number; absent or null gives def. */
static int cfg_num(const cJSON *root, const char *file, const char *key, bool required, double def,
                   double *out, char **err_text) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) {
        if (required) {
            cfg_errf(err_text, "%s: required field '%s' is missing", file, key);
            return SL_EFORMAT;
        }
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble) || !(j->valuedouble > 0)) {
        cfg_errf(err_text, "%s: '%s' must be a positive number", file, key);
        return SL_EFORMAT;
    }
    *out = j->valuedouble;
    return 0;
}

static int cfg_bool(const cJSON *root, const char *key, bool def, bool *out, char **err_text) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(j)) {
        cfg_errf(err_text, "config.json: '%s' must be true or false", key);
        return SL_EFORMAT;
    }
    *out = cJSON_IsTrue(j);
    return 0;
}

static int cfg_rope_scaling(const cJSON *root, model_config_t *cfg, char **err_text) {
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    cfg->rope_scaling = MODEL_ROPE_NONE;
    if (!rs || cJSON_IsNull(rs)) return 0;
    if (!cJSON_IsObject(rs)) {
        cfg_errf(err_text, "config.json: 'rope_scaling' must be an object or null");
        return SL_EFORMAT;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(rs, "type");
    if (!cJSON_IsString(t)) {
        cfg_errf(err_text, "config.json: rope_scaling needs a string 'rope_type' (or 'type')");
        return SL_EFORMAT;
    }
    const char *ty = t->valuestring;
    const char *f = "config.json rope_scaling";
    int rc;
    if (strcmp(ty, "default") == 0) return 0;
    if (strcmp(ty, "linear") == 0) {
        cfg->rope_scaling = MODEL_ROPE_LINEAR;
        return cfg_num(rs, f, "factor", true, 1.0, &cfg->rope_factor, err_text);
    }
    if (strcmp(ty, "llama3") == 0) {
        cfg->rope_scaling = MODEL_ROPE_LLAMA3;
        uint64_t omp = 0;
        if ((rc = cfg_num(rs, f, "factor", true, 0, &cfg->rope_factor, err_text)) ||
            (rc = cfg_num(rs, f, "low_freq_factor", true, 0, &cfg->rope_low_freq_factor,
                          err_text)) ||
            (rc = cfg_num(rs, f, "high_freq_factor", true, 0, &cfg->rope_high_freq_factor,
                          err_text)) ||
            (rc = cfg_uint(rs, "original_max_position_embeddings", true, 0, 1, 1u << 24, &omp,
                           err_text)))
            return rc;
        if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor)) {
            cfg_errf(err_text,
                     "config.json: rope_scaling high_freq_factor must exceed low_freq_factor");
            return SL_EFORMAT;
        }
        cfg->rope_original_max_pos = (uint32_t)omp;
        return 0;
    }
    cfg_errf(err_text,
             "config.json: rope_scaling type '%.40s' is not supported (supported: default, "
             "linear, llama3)",
             ty);
    return SL_EUNSUPPORTED;
}

/* eos_token_id: an int or a list of ints; bos_token_id: an int. Absent keeps
 * what cfg already has (config.json's values, overridden by generation_config). */
static int cfg_special_ids(const cJSON *root, const char *file, model_config_t *cfg,
                           char **err_text) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (e && !cJSON_IsNull(e)) {
        uint32_t n = 0;
        const cJSON *it;
        if (!cJSON_IsNumber(e) && !cJSON_IsArray(e)) goto bad;
        if (cJSON_IsArray(e) && cJSON_GetArraySize(e) > MODEL_CONFIG_MAX_EOS) {
            cfg_errf(err_text, "%s: more than %d eos_token_id values", file, MODEL_CONFIG_MAX_EOS);
            return SL_EFORMAT;
        }
        it = cJSON_IsArray(e) ? e->child : e;
        for (; it; it = cJSON_IsArray(e) ? it->next : NULL) {
            if (!cJSON_IsNumber(it) || !(it->valuedouble >= 0) ||
                !(it->valuedouble < (double)cfg->vocab_size) ||
                floor(it->valuedouble) != it->valuedouble)
                goto bad;
            cfg->eos_token_ids[n++] = (uint32_t)it->valuedouble;
        }
        cfg->n_eos = n;
    }
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(root, "bos_token_id");
    if (b && !cJSON_IsNull(b)) {
        if (!cJSON_IsNumber(b) || !(b->valuedouble >= 0) ||
            !(b->valuedouble < (double)cfg->vocab_size) ||
            floor(b->valuedouble) != b->valuedouble) {
            cfg_errf(err_text, "%s: bos_token_id must be a token id below vocab_size %u", file,
                     cfg->vocab_size);
            return SL_EFORMAT;
        }
        cfg->bos_token_id = (int64_t)b->valuedouble;
    }
    return 0;
bad:
    cfg_errf(err_text, "%s: eos_token_id must be a token id below vocab_size %u, or a list of them",
             file, cfg->vocab_size);
    return SL_EFORMAT;
}

int model_config_parse(const char *config_json, size_t config_len, const char *gen_json,
                       size_t gen_len, model_config_t *cfg, char **err_text) {
    int rc = 0;
    cJSON *root = NULL, *gen = NULL;
    if (err_text) *err_text = NULL;
    if (!config_json || !cfg) return SL_EINVAL;
    memset(cfg, 0, sizeof *cfg);
    cfg->bos_token_id = -1;
    root = cJSON_ParseWithLength(config_json, config_len);
    if (!cJSON_IsObject(root)) {
        rc = SL_EFORMAT;
        cfg_errf(err_text, "config.json: not a JSON object");
        goto out;
    }
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    if (!cJSON_IsString(a0)) {
        rc = SL_EFORMAT;
        cfg_errf(err_text, "config.json: 'architectures' must be a list naming the architecture");
        goto out;
    }
    if (strcmp(a0->valuestring, "LlamaForCausalLM") == 0)
        cfg->arch = MODEL_ARCH_LLAMA;
    else if (strcmp(a0->valuestring, "MistralForCausalLM") == 0)
        cfg->arch = MODEL_ARCH_MISTRAL;
    else if (strcmp(a0->valuestring, "Qwen2ForCausalLM") == 0)
        cfg->arch = MODEL_ARCH_QWEN2;
    else {
        rc = SL_EUNSUPPORTED;
        cfg_errf(err_text,
                 "config.json: architecture '%.80s' is not supported (supported: "
                 "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)",
                 a0->valuestring);
        goto out;
    }

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(root, "torch_dtype");
    if (!dt || cJSON_IsNull(dt)) dt = cJSON_GetObjectItemCaseSensitive(root, "dtype");
    cfg->dtype = MODEL_DTYPE_F32;
    if (dt && !cJSON_IsNull(dt)) {
        const char *s = cJSON_IsString(dt) ? dt->valuestring : "";
        if (strcmp(s, "float32") == 0)
            cfg->dtype = MODEL_DTYPE_F32;
        else if (strcmp(s, "float16") == 0)
            cfg->dtype = MODEL_DTYPE_F16;
        else if (strcmp(s, "bfloat16") == 0)
            cfg->dtype = MODEL_DTYPE_BF16;
        else {
            rc = SL_EUNSUPPORTED;
            cfg_errf(err_text,
                     "config.json: torch_dtype '%.40s' is not supported (float32, float16, "
                     "bfloat16)",
                     s);
            goto out;
        }
    }

    uint64_t hidden, inter, layers, heads, kv_heads, head_dim, vocab, max_pos;
    uint64_t def_max_pos = cfg->arch == MODEL_ARCH_LLAMA     ? 2048
                           : cfg->arch == MODEL_ARCH_MISTRAL ? 131072
                                                             : 32768;
    if ((rc = cfg_uint(root, "hidden_size", true, 0, 1, 65536, &hidden, err_text)) ||
        (rc = cfg_uint(root, "intermediate_size", true, 0, 1, 1u << 20, &inter, err_text)) ||
        (rc = cfg_uint(root, "num_hidden_layers", true, 0, 1, 1024, &layers, err_text)) ||
        (rc = cfg_uint(root, "num_attention_heads", true, 0, 1, 1024, &heads, err_text)) ||
        (rc = cfg_uint(root, "num_key_value_heads", false, heads, 1, 1024, &kv_heads, err_text)) ||
        (rc = cfg_uint(root, "vocab_size", true, 0, 1, 1u << 22, &vocab, err_text)) ||
        (rc = cfg_uint(root, "max_position_embeddings", false, def_max_pos, 1, 1u << 24, &max_pos,
                       err_text)))
        goto out;
    const cJSON *jhd = cJSON_GetObjectItemCaseSensitive(root, "head_dim");
    if (hidden % heads != 0 && (!jhd || cJSON_IsNull(jhd))) {
        rc = SL_EFORMAT;
        cfg_errf(err_text,
                 "config.json: hidden_size %llu is not a multiple of num_attention_heads %llu",
                 (unsigned long long)hidden, (unsigned long long)heads);
        goto out;
    }
    if ((rc = cfg_uint(root, "head_dim", false, hidden / heads, 2, 1024, &head_dim, err_text)))
        goto out;
    if (head_dim % 2 != 0 || heads % kv_heads != 0) {
        rc = SL_EFORMAT;
        cfg_errf(err_text,
                 "config.json: head_dim %llu must be even and num_attention_heads %llu a "
                 "multiple of num_key_value_heads %llu",
                 (unsigned long long)head_dim, (unsigned long long)heads,
                 (unsigned long long)kv_heads);
        goto out;
    }
    cfg->hidden_size = (uint32_t)hidden;
    cfg->intermediate_size = (uint32_t)inter;
    cfg->n_layers = (uint32_t)layers;
    cfg->n_heads = (uint32_t)heads;
    cfg->n_kv_heads = (uint32_t)kv_heads;
    cfg->head_dim = (uint32_t)head_dim;
    cfg->vocab_size = (uint32_t)vocab;
    cfg->max_position_embeddings = (uint32_t)max_pos;

    double eps, theta;
    if ((rc = cfg_num(root, "config.json", "rms_norm_eps", false, 1e-6, &eps, err_text)) ||
        (rc = cfg_num(root, "config.json", "rope_theta", false, 10000.0, &theta, err_text)))
        goto out;
    cfg->rms_norm_eps = (float)eps;
    cfg->rope_theta = theta;
    if ((rc = cfg_rope_scaling(root, cfg, err_text))) goto out;
    if ((rc = cfg_bool(root, "tie_word_embeddings", false, &cfg->tie_word_embeddings, err_text)))
        goto out;

    switch (cfg->arch) {
    case MODEL_ARCH_LLAMA: {
        bool ab, mb;
        if ((rc = cfg_bool(root, "attention_bias", false, &ab, err_text)) ||
            (rc = cfg_bool(root, "mlp_bias", false, &mb, err_text)))
            goto out;
        cfg->attention_bias = ab;
        cfg->o_bias = ab;
        cfg->mlp_bias = mb;
        break;
    }
    case MODEL_ARCH_MISTRAL: {
        uint64_t sw;
        /* MistralConfig defaults sliding_window to 4096; null turns it off. */
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
        if (j && cJSON_IsNull(j))
            sw = 0;
        else if ((rc = cfg_uint(root, "sliding_window", false, 4096, 1, 1u << 24, &sw, err_text)))
            goto out;
        cfg->sliding_window = (uint32_t)sw;
        break;
    }
    case MODEL_ARCH_QWEN2: {
        bool use_sw;
        uint64_t sw = 0, mwl = 0;
        cfg->attention_bias = true; /* Qwen2 q/k/v always carry bias, o_proj none */
        if ((rc = cfg_bool(root, "use_sliding_window", false, &use_sw, err_text))) goto out;
        if (use_sw) {
            if ((rc = cfg_uint(root, "sliding_window", false, 4096, 1, 1u << 24, &sw, err_text)) ||
                (rc = cfg_uint(root, "max_window_layers", false, 28, 0, 1024, &mwl, err_text)))
                goto out;
        }
        cfg->sliding_window = (uint32_t)sw;
        cfg->swa_first_layer = (uint32_t)mwl;
        break;
    }
    }

    if ((rc = cfg_special_ids(root, "config.json", cfg, err_text))) goto out;
    if (gen_json) {
        gen = cJSON_ParseWithLength(gen_json, gen_len);
        if (!cJSON_IsObject(gen)) {
            rc = SL_EFORMAT;
            cfg_errf(err_text, "generation_config.json: not a JSON object");
            goto out;
        }
        if ((rc = cfg_special_ids(gen, "generation_config.json", cfg, err_text))) goto out;
    }
out:
    cJSON_Delete(root);
    cJSON_Delete(gen);
    return rc;
}

static int cfg_read(const char *dir, const char *name, char **out, size_t *len, char **err_text) {
    int rc = 0;
    char *path = NULL, *buf = NULL;
    FILE *fp = NULL;
    *out = NULL;
    if (asprintf(&path, "%s/%s", dir, name) < 0) return SL_ENOMEM;
    fp = fopen(path, "rb");
    if (!fp) {
        rc = errno == ENOENT ? SL_ENOTFOUND : -errno;
        cfg_errf(err_text, "%s: cannot open: %s", path, strerror(errno));
        goto out;
    }
    buf = malloc(CFG_FILE_MAX + 1);
    if (!buf) {
        rc = SL_ENOMEM;
        goto out;
    }
    size_t n = fread(buf, 1, CFG_FILE_MAX + 1, fp);
    if (ferror(fp) || n > CFG_FILE_MAX) {
        rc = n > CFG_FILE_MAX ? SL_ETOOBIG : SL_EIO;
        cfg_errf(err_text, "%s: unreadable or larger than %u bytes", path, CFG_FILE_MAX);
        goto out;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    buf = NULL;
out:
    if (fp) fclose(fp);
    free(buf);
    free(path);
    return rc;
}

int model_config_load(const char *dir, model_config_t *cfg, char **err_text) {
    int rc;
    char *cj = NULL, *gj = NULL;
    size_t cl = 0, gl = 0;
    if (err_text) *err_text = NULL;
    if (!dir || !cfg) return SL_EINVAL;
    if ((rc = cfg_read(dir, "config.json", &cj, &cl, err_text))) goto out;
    rc = cfg_read(dir, "generation_config.json", &gj, &gl, err_text);
    if (rc == SL_ENOTFOUND) {
        if (err_text) {
            free(*err_text);
            *err_text = NULL;
        }
        rc = 0;
    }
    if (rc) goto out;
    rc = model_config_parse(cj, cl, gj, gl, cfg, err_text);
out:
    free(cj);
    free(gj);
    return rc;
}

void model_config_rope_inv_freq(const model_config_t *cfg, float *out) {
    /* transformers computes these in float32 tensors:
     *   inv_freq = 1 / base ** (arange(0, dim, 2).float() / dim)
     * and the llama3 adjustment elementwise in float32 too. */
    uint32_t dim = cfg->head_dim;
    float base = (float)cfg->rope_theta;
    for (uint32_t i = 0; i < dim / 2; i++) {
        float e = (float)(2 * i) / (float)dim;
        float inv = 1.0f / powf(base, e);
        if (cfg->rope_scaling == MODEL_ROPE_LINEAR) {
            inv = inv / (float)cfg->rope_factor;
        } else if (cfg->rope_scaling == MODEL_ROPE_LLAMA3) {
            float factor = (float)cfg->rope_factor;
            float lff = (float)cfg->rope_low_freq_factor, hff = (float)cfg->rope_high_freq_factor;
            float old_ctx = (float)cfg->rope_original_max_pos;
            float low_wl = old_ctx / lff, high_wl = old_ctx / hff;
            float wavelen = (float)(2 * M_PI) / inv;
            float scaled = wavelen > low_wl ? inv / factor : inv;
            if (!(wavelen < high_wl) && !(wavelen > low_wl)) {
                float smooth = (old_ctx / wavelen - lff) / (hff - lff);
                scaled = (1 - smooth) * scaled / factor + smooth * scaled;
            }
            inv = scaled;
        }
        out[i] = inv;
    }
}
