/* genmodel.c - writes a random Llama / Mistral / Qwen2 model directory in
 * Hugging Face format, for tests and benchmarks.
 *
 *   genmodel --arch llama|mistral|qwen2 --dtype f32|bf16|f16 --layers L
 *            --hidden H --heads A --kv-heads K --intermediate I --vocab V
 *            --seed S [--shards N] [--tie] [--rope-scaling llama3]
 *            [--sliding-window W] [--std X] --out DIR
 *   genmodel --preset tiny|100m [overrides...] --out DIR
 *
 * Writes config.json, generation_config.json, model.safetensors (or N shards
 * plus model.safetensors.index.json), tokenizer.json and
 * tokenizer_config.json. Every tensor's values come from its own generator
 * seeded by (seed, tensor name), so the weights do not depend on dtype or
 * sharding: the same seed in f32 and bf16 gives the same model up to
 * rounding. Linear weights ~ N(0, std), norm weights ~ 1 + N(0, 0.05) so that
 * a wrong norm shows, biases ~ N(0, std).
 */
#include "bench/genmodel/genmodel.h"

#include "common/base/err.h"
#include "kernels/backend.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct gm_opts {
    const char *arch;  /* llama, mistral, qwen2 */
    const char *dtype; /* f32, bf16, f16 */
    uint32_t layers, hidden, heads, kv_heads, intermediate, vocab, shards, sliding_window;
    uint32_t max_pos;
    uint64_t seed;
    bool tie, llama3;
    double std, rope_theta;
    const char *out;
} gm_opts_t;

typedef struct gm_tensor {
    char name[128];
    uint32_t n_dims;
    uint64_t shape[2];
    int kind; /* 0 = weight N(0,std), 1 = norm 1 + N(0,0.05), 2 = bias N(0,std) */
    uint32_t shard;
    uint64_t offset, n_bytes; /* within its shard's data region */
} gm_tensor_t;

int genmodel_file_write(const char *path, const void *data, size_t len) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -errno;
    size_t n = fwrite(data, 1, len, fp);
    int rc = (n == len && fflush(fp) == 0) ? 0 : SL_EIO;
    if (fclose(fp) != 0 && rc == 0) rc = SL_EIO;
    return rc;
}

static uint64_t gm_splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double gm_uniform(uint64_t *s) {
    return ((double)(gm_splitmix(s) >> 11) + 0.5) / 9007199254740992.0; /* (0,1) */
}

static double gm_normal(uint64_t *s) {
    double u = gm_uniform(s), v = gm_uniform(s);
    return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v);
}

static uint16_t gm_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    int32_t e = (int32_t)((x >> 23) & 0xFF) - 127 + 15;
    uint32_t m = x & 0x7FFFFFu;
    if (((x >> 23) & 0xFF) == 0xFF) return (uint16_t)(sign | 0x7C00u | (m ? 0x200u : 0));
    if (e >= 31) return (uint16_t)(sign | 0x7C00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        m |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (m >> 13), rem = m & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++; /* may carry into Inf: correct */
    return (uint16_t)(sign | h);
}

static int gm_parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || !end || *end || end == s || v < lo || v > hi) return SL_EINVAL;
    *out = (uint32_t)v;
    return 0;
}

static void gm_usage(FILE *fp) {
    fprintf(fp,
            "usage: genmodel [--preset tiny|100m] --arch llama|mistral|qwen2 --dtype f32|bf16|f16\n"
            "                --layers L --hidden H --heads A --kv-heads K --intermediate I\n"
            "                --vocab V --seed S [--shards N] [--tie] [--rope-scaling llama3]\n"
            "                [--sliding-window W] [--std X] [--max-pos P] --out DIR\n");
}

static size_t gm_esz(const char *dtype) {
    return strcmp(dtype, "f32") == 0 ? 4 : 2;
}

static const char *gm_st_dtype(const char *dtype) {
    return strcmp(dtype, "f32") == 0 ? "F32" : strcmp(dtype, "bf16") == 0 ? "BF16" : "F16";
}

static int gm_add(gm_tensor_t *t, size_t *n, const char *name, uint64_t d0, uint64_t d1, int kind) {
    gm_tensor_t *x = &t[(*n)++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    x->n_dims = d1 ? 2 : 1;
    x->shape[0] = d0;
    x->shape[1] = d1;
    x->kind = kind;
    return 0;
}

/* Fills buf (n elements, dtype) with the tensor's values. */
static void gm_fill(const gm_opts_t *o, const gm_tensor_t *t, void *buf, uint64_t n) {
    uint64_t s = o->seed * 0x100000001B3ull;
    for (const char *p = t->name; *p; p++) s = (s ^ (unsigned char)*p) * 0x100000001B3ull;
    for (uint64_t i = 0; i < n; i++) {
        double v = gm_normal(&s);
        float f = (float)(t->kind == 1 ? 1.0 + 0.05 * v : o->std * v);
        if (strcmp(o->dtype, "f32") == 0)
            ((float *)buf)[i] = f;
        else if (strcmp(o->dtype, "bf16") == 0)
            ((uint16_t *)buf)[i] = sl_f32_to_bf16(f);
        else
            ((uint16_t *)buf)[i] = gm_f32_to_f16(f);
    }
}

static int gm_write_shard(const gm_opts_t *o, gm_tensor_t *t, size_t n, uint32_t shard,
                          const char *path) {
    int rc = SL_ENOMEM;
    cJSON *h = cJSON_CreateObject();
    char *text = NULL, *hdr = NULL;
    void *buf = NULL;
    FILE *fp = NULL;
    if (!h) goto out;
    cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    for (size_t i = 0; i < n; i++) {
        if (t[i].shard != shard) continue;
        cJSON *e = cJSON_AddObjectToObject(h, t[i].name);
        cJSON_AddStringToObject(e, "dtype", gm_st_dtype(o->dtype));
        cJSON *sh = cJSON_AddArrayToObject(e, "shape");
        for (uint32_t d = 0; d < t[i].n_dims; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t[i].shape[d]));
        cJSON *off = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)t[i].offset));
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)(t[i].offset + t[i].n_bytes)));
    }
    text = cJSON_PrintUnformatted(h);
    if (!text) goto out;
    size_t len = strlen(text), plen = (len + 7) / 8 * 8;
    hdr = malloc(plen + 8);
    if (!hdr) goto out;
    for (int b = 0; b < 8; b++) hdr[b] = (char)(((uint64_t)plen >> (8 * b)) & 0xFF);
    memcpy(hdr + 8, text, len);
    memset(hdr + 8 + len, ' ', plen - len);
    fp = fopen(path, "wb");
    if (!fp) {
        rc = -errno;
        goto out;
    }
    rc = SL_EIO;
    if (fwrite(hdr, 1, plen + 8, fp) != plen + 8) goto out;
    for (size_t i = 0; i < n; i++) {
        if (t[i].shard != shard) continue;
        free(buf);
        buf = malloc(t[i].n_bytes ? t[i].n_bytes : 1);
        if (!buf) {
            rc = SL_ENOMEM;
            goto out;
        }
        gm_fill(o, &t[i], buf, t[i].n_bytes / gm_esz(o->dtype));
        if (fwrite(buf, 1, t[i].n_bytes, fp) != t[i].n_bytes) goto out;
    }
    if (fflush(fp) != 0) goto out;
    rc = 0;
out:
    if (fp && fclose(fp) != 0 && rc == 0) rc = SL_EIO;
    free(buf);
    free(hdr);
    free(text);
    cJSON_Delete(h);
    return rc;
}

static int gm_write_json(const char *dir, const char *name, cJSON *j) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = cJSON_Print(j);
    if (!text) return SL_ENOMEM;
    int rc = genmodel_file_write(path, text, strlen(text));
    free(text);
    return rc;
}

static int gm_write_config(const gm_opts_t *o, uint32_t eos, uint32_t im_end) {
    int rc = SL_ENOMEM;
    cJSON *c = cJSON_CreateObject(), *g = cJSON_CreateObject();
    if (!c || !g) goto out;
    bool llama = strcmp(o->arch, "llama") == 0, mistral = strcmp(o->arch, "mistral") == 0;
    const char *archname = llama     ? "LlamaForCausalLM"
                           : mistral ? "MistralForCausalLM"
                                     : "Qwen2ForCausalLM";
    cJSON *a = cJSON_AddArrayToObject(c, "architectures");
    cJSON_AddItemToArray(a, cJSON_CreateString(archname));
    cJSON_AddStringToObject(c, "model_type", o->arch);
    cJSON_AddNumberToObject(c, "hidden_size", o->hidden);
    cJSON_AddNumberToObject(c, "intermediate_size", o->intermediate);
    cJSON_AddNumberToObject(c, "num_hidden_layers", o->layers);
    cJSON_AddNumberToObject(c, "num_attention_heads", o->heads);
    cJSON_AddNumberToObject(c, "num_key_value_heads", o->kv_heads);
    cJSON_AddNumberToObject(c, "vocab_size", o->vocab);
    cJSON_AddNumberToObject(c, "max_position_embeddings", o->max_pos);
    cJSON_AddStringToObject(c, "hidden_act", "silu");
    cJSON_AddNumberToObject(c, "initializer_range", o->std);
    cJSON_AddNumberToObject(c, "rms_norm_eps", 1e-5);
    cJSON_AddNumberToObject(c, "rope_theta", o->rope_theta);
    cJSON_AddBoolToObject(c, "tie_word_embeddings", o->tie);
    const char *tdt = strcmp(o->dtype, "f32") == 0    ? "float32"
                      : strcmp(o->dtype, "bf16") == 0 ? "bfloat16"
                                                      : "float16";
    cJSON_AddStringToObject(c, "torch_dtype", tdt);
    cJSON_AddBoolToObject(c, "use_cache", true);
    cJSON_AddNumberToObject(c, "bos_token_id", eos);
    cJSON_AddNumberToObject(c, "eos_token_id", eos);
    cJSON_AddNumberToObject(c, "attention_dropout", 0.0);
    if (llama) {
        cJSON_AddBoolToObject(c, "attention_bias", false);
        cJSON_AddBoolToObject(c, "mlp_bias", false);
        cJSON_AddNumberToObject(c, "pretraining_tp", 1);
        if (o->llama3) {
            cJSON *rs = cJSON_AddObjectToObject(c, "rope_scaling");
            cJSON_AddStringToObject(rs, "rope_type", "llama3");
            cJSON_AddNumberToObject(rs, "factor", 8.0);
            cJSON_AddNumberToObject(rs, "low_freq_factor", 1.0);
            cJSON_AddNumberToObject(rs, "high_freq_factor", 4.0);
            /* Small enough that the smooth band falls inside a tiny model's head_dim. */
            cJSON_AddNumberToObject(rs, "original_max_position_embeddings", 256);
        } else {
            cJSON_AddNullToObject(c, "rope_scaling");
        }
    } else if (mistral) {
        if (o->sliding_window)
            cJSON_AddNumberToObject(c, "sliding_window", o->sliding_window);
        else
            cJSON_AddNullToObject(c, "sliding_window");
    } else {
        cJSON_AddBoolToObject(c, "use_sliding_window", o->sliding_window != 0);
        cJSON_AddNumberToObject(c, "sliding_window",
                                o->sliding_window ? o->sliding_window : o->max_pos);
        cJSON_AddNumberToObject(c, "max_window_layers", o->sliding_window ? 0 : o->layers);
    }
    cJSON_AddNumberToObject(g, "bos_token_id", eos);
    cJSON *el = cJSON_AddArrayToObject(g, "eos_token_id");
    cJSON_AddItemToArray(el, cJSON_CreateNumber(eos));
    cJSON_AddItemToArray(el, cJSON_CreateNumber(im_end));
    cJSON_AddBoolToObject(g, "do_sample", false);
    if ((rc = gm_write_json(o->out, "config.json", c))) goto out;
    rc = gm_write_json(o->out, "generation_config.json", g);
out:
    cJSON_Delete(c);
    cJSON_Delete(g);
    return rc;
}

static int gm_run(const gm_opts_t *o) {
    int rc = 0;
    size_t cap = 16 + (size_t)o->layers * 16, n = 0;
    gm_tensor_t *t = calloc(cap, sizeof *t);
    cJSON *idx = NULL;
    if (!t) return SL_ENOMEM;
    uint32_t hd = o->hidden / o->heads;
    uint64_t H = o->hidden, I = o->intermediate, V = o->vocab;
    uint64_t Q = (uint64_t)o->heads * hd, KV = (uint64_t)o->kv_heads * hd;
    bool qwen2 = strcmp(o->arch, "qwen2") == 0;
    char nm[128];
    gm_add(t, &n, "model.embed_tokens.weight", V, H, 0);
    for (uint32_t l = 0; l < o->layers; l++) {
#define GM_T(suffix, d0, d1, kind)                                                                 \
    do {                                                                                           \
        snprintf(nm, sizeof nm, "model.layers.%u.%s", l, suffix);                                  \
        gm_add(t, &n, nm, d0, d1, kind);                                                           \
    } while (0)
        GM_T("input_layernorm.weight", H, 0, 1);
        GM_T("self_attn.q_proj.weight", Q, H, 0);
        GM_T("self_attn.k_proj.weight", KV, H, 0);
        GM_T("self_attn.v_proj.weight", KV, H, 0);
        if (qwen2) {
            GM_T("self_attn.q_proj.bias", Q, 0, 2);
            GM_T("self_attn.k_proj.bias", KV, 0, 2);
            GM_T("self_attn.v_proj.bias", KV, 0, 2);
        }
        GM_T("self_attn.o_proj.weight", H, Q, 0);
        GM_T("post_attention_layernorm.weight", H, 0, 1);
        GM_T("mlp.gate_proj.weight", I, H, 0);
        GM_T("mlp.up_proj.weight", I, H, 0);
        GM_T("mlp.down_proj.weight", H, I, 0);
#undef GM_T
    }
    gm_add(t, &n, "model.norm.weight", H, 0, 1);
    if (!o->tie) gm_add(t, &n, "lm_head.weight", V, H, 0);

    /* Shard assignment and offsets (each shard's data region starts at 0). */
    size_t esz = gm_esz(o->dtype);
    uint64_t off[64] = {0}, total = 0;
    for (size_t i = 0; i < n; i++) {
        t[i].shard = (uint32_t)(i * o->shards / n);
        t[i].n_bytes = t[i].shape[0] * (t[i].n_dims == 2 ? t[i].shape[1] : 1) * esz;
        t[i].offset = off[t[i].shard];
        off[t[i].shard] += t[i].n_bytes;
        total += t[i].n_bytes;
    }
    if (mkdir(o->out, 0755) != 0 && errno != EEXIST) {
        rc = -errno;
        fprintf(stderr, "genmodel: mkdir %s: %s\n", o->out, strerror(errno));
        goto out;
    }
    char path[4096], fname[64];
    if (o->shards == 1) {
        snprintf(path, sizeof path, "%s/model.safetensors", o->out);
        if ((rc = gm_write_shard(o, t, n, 0, path))) goto out;
    } else {
        idx = cJSON_CreateObject();
        if (!idx) {
            rc = SL_ENOMEM;
            goto out;
        }
        cJSON *meta = cJSON_AddObjectToObject(idx, "metadata");
        cJSON_AddNumberToObject(meta, "total_size", (double)total);
        cJSON *wm = cJSON_AddObjectToObject(idx, "weight_map");
        for (uint32_t s = 0; s < o->shards; s++) {
            snprintf(fname, sizeof fname, "model-%05u-of-%05u.safetensors", s + 1, o->shards);
            snprintf(path, sizeof path, "%s/%s", o->out, fname);
            if ((rc = gm_write_shard(o, t, n, s, path))) goto out;
            for (size_t i = 0; i < n; i++)
                if (t[i].shard == s) cJSON_AddStringToObject(wm, t[i].name, fname);
        }
        if ((rc = gm_write_json(o->out, "model.safetensors.index.json", idx))) goto out;
    }
    uint32_t eos = 0, n_tok = 0;
    if ((rc = genmodel_tokenizer_write(o->out, o->vocab, &eos, &n_tok))) goto out;
    if ((rc = gm_write_config(o, eos, eos + 2))) goto out;
    uint64_t params = total / esz;
    printf("genmodel: %s %s, %llu params (%.1f MB), tokenizer %u tokens, eos %u -> %s\n", o->arch,
           o->dtype, (unsigned long long)params, (double)total / 1e6, n_tok, eos, o->out);
out:
    if (rc) fprintf(stderr, "genmodel: failed: %s\n", sl_strerror(rc));
    cJSON_Delete(idx);
    free(t);
    return rc;
}

int main(int argc, char **argv) {
    gm_opts_t o = {.arch = "llama",
                   .dtype = "f32",
                   .layers = 2,
                   .hidden = 64,
                   .heads = 4,
                   .kv_heads = 2,
                   .intermediate = 128,
                   .vocab = 512,
                   .shards = 1,
                   .seed = 1,
                   .std = 0.02,
                   .rope_theta = 10000.0,
                   .max_pos = 4096};
    /* Presets first so explicit flags override them, wherever they appear. */
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--preset") != 0) continue;
        if (strcmp(argv[i + 1], "tiny") == 0) {
            o.layers = 4, o.hidden = 128, o.heads = 4, o.kv_heads = 2, o.intermediate = 256;
            o.vocab = 1024;
        } else if (strcmp(argv[i + 1], "100m") == 0) {
            o.layers = 12, o.hidden = 768, o.heads = 12, o.kv_heads = 4, o.intermediate = 2048;
            o.vocab = 32000, o.tie = true;
        } else {
            fprintf(stderr, "genmodel: unknown preset '%s' (tiny, 100m)\n", argv[i + 1]);
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            gm_usage(stdout);
            return 0;
        } else if (strcmp(a, "--tie") == 0) {
            o.tie = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "genmodel: %s needs a value\n", a);
            gm_usage(stderr);
            return 2;
        }
        i++;
        if (strcmp(a, "--preset") == 0)
            continue;
        else if (strcmp(a, "--arch") == 0)
            o.arch = v;
        else if (strcmp(a, "--dtype") == 0)
            o.dtype = v;
        else if (strcmp(a, "--out") == 0)
            o.out = v;
        else if (strcmp(a, "--layers") == 0)
            bad = gm_parse_u32(v, 1, 256, &o.layers);
        else if (strcmp(a, "--hidden") == 0)
            bad = gm_parse_u32(v, 2, 16384, &o.hidden);
        else if (strcmp(a, "--heads") == 0)
            bad = gm_parse_u32(v, 1, 256, &o.heads);
        else if (strcmp(a, "--kv-heads") == 0)
            bad = gm_parse_u32(v, 1, 256, &o.kv_heads);
        else if (strcmp(a, "--intermediate") == 0)
            bad = gm_parse_u32(v, 1, 1u << 17, &o.intermediate);
        else if (strcmp(a, "--vocab") == 0)
            bad = gm_parse_u32(v, 260, 1u << 18, &o.vocab);
        else if (strcmp(a, "--shards") == 0)
            bad = gm_parse_u32(v, 1, 64, &o.shards);
        else if (strcmp(a, "--max-pos") == 0)
            bad = gm_parse_u32(v, 16, 1u << 20, &o.max_pos);
        else if (strcmp(a, "--sliding-window") == 0)
            bad = gm_parse_u32(v, 1, 1u << 20, &o.sliding_window);
        else if (strcmp(a, "--seed") == 0) {
            char *end = NULL;
            errno = 0;
            o.seed = strtoull(v, &end, 10);
            bad = errno || !end || *end || end == v;
        } else if (strcmp(a, "--std") == 0) {
            char *end = NULL;
            o.std = strtod(v, &end);
            bad = !end || *end || !(o.std > 0 && o.std < 10);
        } else if (strcmp(a, "--rope-theta") == 0) {
            char *end = NULL;
            o.rope_theta = strtod(v, &end);
            bad = !end || *end || !(o.rope_theta > 1);
        } else if (strcmp(a, "--rope-scaling") == 0) {
            bad = strcmp(v, "llama3") != 0;
            o.llama3 = !bad;
        } else {
            fprintf(stderr, "genmodel: unknown flag %s\n", a);
            gm_usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "genmodel: bad value '%s' for %s\n", v, a);
            return 2;
        }
    }
    const char *why = NULL;
    if (!o.out)
        why = "--out is required";
    else if (strcmp(o.arch, "llama") && strcmp(o.arch, "mistral") && strcmp(o.arch, "qwen2"))
        why = "--arch must be llama, mistral or qwen2";
    else if (strcmp(o.dtype, "f32") && strcmp(o.dtype, "bf16") && strcmp(o.dtype, "f16"))
        why = "--dtype must be f32, bf16 or f16";
    else if (o.hidden % o.heads || (o.hidden / o.heads) % 2)
        why = "--hidden must be a multiple of --heads with an even head size";
    else if (o.heads % o.kv_heads)
        why = "--heads must be a multiple of --kv-heads";
    else if (o.llama3 && strcmp(o.arch, "llama"))
        why = "--rope-scaling llama3 needs --arch llama";
    else if (o.sliding_window && !strcmp(o.arch, "llama"))
        why = "--sliding-window needs --arch mistral or qwen2";
    if (why) {
        fprintf(stderr, "genmodel: %s\n", why);
        gm_usage(stderr);
        return 2;
    }
    return gm_run(&o) == 0 ? 0 : 1;
}
