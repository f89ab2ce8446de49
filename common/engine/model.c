/* model.c - Llama-family weights, KV memory and the forward step.
 *
 * Loading validates the checkpoint against config.json tensor by tensor, so a
 * wrong file fails at load with a message, never inside a kernel. The step
 * keeps activations in scratch buffers sized to the largest step seen:
 *   x    (T, H)        residual stream
 *   xn   (T, H)        normed input of attention / MLP
 *   q    (T, nh*hd + 2*nkv*hd)  queries, then RoPE'd in place; with a single
 *                      row and fused q|k|v weights the row is [q | k | v]
 *   k, v (T, nkv*hd)   new keys / values before they go into their blocks
 *   att  (T, nh*hd)    attention output
 *   gate (T, 2*I)      MLP: gate|up from one fused matmul (or gate alone)
 *   up   (T, I)        MLP: up, then silu(gate)*up
 *   xl   (n_logits, H) final-normed rows that want logits
 *
 * Fused projections. At load, q/k/v weights (and gate/up) of the same dtype
 * are copied into one concatenated (rows, H) matrix, so a decode step streams
 * them in one matmul (one thread-pool dispatch, one long run of rows instead
 * of three short ones); wq/wk/wv stay usable as row slices of it, which
 * prefill steps use to keep q, k and v contiguous for rope and attention.
 * Decode batches (up to MODEL_SPLIT_QKV_MAX_T rows, host backends) use the
 * fused matrix too and split the rows after it.
 * This costs one copy of those weights at load (the mapped originals are no
 * longer read, so the page cache may drop them).
 */
#include "common/engine/model.h"

#include "common/base/err.h"
#include "common/base/log.h"
#include "common/engine/safetensors.h"
#include "kernels/cpu/cpu_backend.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MODEL_MAX_STEP_TOKENS  (1u << 20)
#define MODEL_DEFAULT_KV_BYTES ((size_t)256 << 20)
/* Steps of up to this many rows compute q, k and v in one fused matmul and
 * split the rows on the host; longer (prefill) steps, where the split would
 * copy megabytes per layer for little gain, keep three matmuls. */
#define MODEL_SPLIT_QKV_MAX_T 256u

typedef struct model_weight {
    const void *data; /* backend memory */
    sl_dtype_t dtype;
} model_weight_t;

typedef struct model_layer {
    const float *attn_norm, *mlp_norm; /* (H) f32 */
    model_weight_t wq, wk, wv, wo;     /* (nh*hd, H), (nkv*hd, H) x2, (H, nh*hd) */
    const float *bq, *bk, *bv, *bo;    /* f32 or NULL */
    model_weight_t wg, wu, wd;         /* (I, H), (I, H), (H, I) */
    const float *bg, *bu, *bd;         /* f32 or NULL (Llama mlp_bias) */
    model_weight_t wqkv, wgu;          /* (nh*hd + 2*nkv*hd, H), (2I, H); data NULL: not fused */
    const float *bqkv, *bgu;           /* f32 (nh*hd + 2*nkv*hd), (2I), or NULL */
} model_layer_t;

struct model {
    model_info_t info;
    model_config_t cfg;
    sl_backend_t *be;
    bool own_be;
    /* The CPU backend's thread pool when the model made that backend: the
     * engine samples a step's rows on it (fwd.parallel_for). NULL otherwise. */
    sl_cpu_pool_t *pool;
    bool kv_borrowed; /* KV memory from model_opts_t.kv_alloc */
    safetensors_t *st;
    model_weight_t embed, lm_head;
    const float *final_norm; /* (H) */
    model_layer_t *layers;   /* (n_layers) */
    float *inv_freq;         /* (head_dim / 2) host */
    /* Backend allocations the model owns (converted vectors, uploads). */
    void **owned;
    size_t n_owned, cap_owned;
    sl_kv_layout_t kv;
    sl_forward_t fwd;
    /* Scratch, sized for cap_T rows (backend memory unless noted). */
    uint32_t cap_T, cap_L;
    float *x, *xn, *q, *k, *v, *att, *gate, *up, *xl, *logits_dev;
    uint32_t *tok_host, *pos_host; /* (cap_T) host */
    sl_attn_seq_t *aseq;           /* (cap_seqs) host */
    uint32_t cap_seqs;
};

static void model_errf(char **err_text, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void model_errf(char **err_text, const char *fmt, ...) {
    if (!err_text || *err_text) return;
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    *err_text = s;
}

static int model_own(model_t *m, void *p) {
    if (m->n_owned == m->cap_owned) {
        size_t cap = m->cap_owned ? m->cap_owned * 2 : 64;
        void **o = realloc(m->owned, cap * sizeof *o);
        if (!o) return SL_ENOMEM;
        m->owned = o;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return 0;
}

/* Backend memory holding bytes copied from host src; owned by the model. */
static const void *model_upload(model_t *m, const void *src, size_t bytes) {
    void *p = sl_backend_alloc(m->be, bytes ? bytes : 1);
    if (!p) return NULL;
    if (model_own(m, p) != 0) {
        sl_backend_mem_free(m->be, p);
        return NULL;
    }
    if (bytes && sl_backend_copy_in(m->be, p, src, bytes) != 0) return NULL;
    return p;
}

static bool model_st_dtype(st_dtype_t in, sl_dtype_t *out) {
    switch (in) {
    case ST_DTYPE_F32:
        *out = SL_DTYPE_F32;
        return true;
    case ST_DTYPE_F16:
        *out = SL_DTYPE_F16;
        return true;
    case ST_DTYPE_BF16:
        *out = SL_DTYPE_BF16;
        return true;
    default:
        return false;
    }
}

/* Finds name and checks its shape is (d0) when d1 == 0, else (d0, d1). */
static int model_tensor(model_t *m, const char *name, uint64_t d0, uint64_t d1,
                        const st_tensor_t **out, sl_dtype_t *dt, char **err_text) {
    const st_tensor_t *t = safetensors_find(m->st, name);
    if (!t) {
        model_errf(err_text, "weights: tensor '%s' is missing (required by config.json)", name);
        return SL_EFORMAT;
    }
    uint32_t nd = d1 ? 2 : 1;
    if (t->n_dims != nd || t->shape[0] != d0 || (nd == 2 && t->shape[1] != d1)) {
        char got[128] = "";
        size_t o = 0;
        for (uint32_t i = 0; i < t->n_dims && o < sizeof got - 24; i++)
            o += (size_t)snprintf(got + o, sizeof got - o, "%s%llu", i ? ", " : "",
                                  (unsigned long long)t->shape[i]);
        if (nd == 2)
            model_errf(err_text, "%s: tensor '%s' has shape [%s], config.json implies [%llu, %llu]",
                       t->file, name, got, (unsigned long long)d0, (unsigned long long)d1);
        else
            model_errf(err_text, "%s: tensor '%s' has shape [%s], config.json implies [%llu]",
                       t->file, name, got, (unsigned long long)d0);
        return SL_EFORMAT;
    }
    if (!model_st_dtype(t->dtype, dt)) {
        model_errf(err_text, "%s: tensor '%s' has dtype %s; weights must be F32, F16 or BF16",
                   t->file, name, safetensors_dtype_name(t->dtype));
        return SL_EUNSUPPORTED;
    }
    *out = t;
    return 0;
}

static int model_matrix(model_t *m, const char *name, uint64_t d0, uint64_t d1, model_weight_t *w,
                        char **err_text) {
    const st_tensor_t *t;
    int rc = model_tensor(m, name, d0, d1, &t, &w->dtype, err_text);
    if (rc) return rc;
    m->info.weight_bytes += t->n_bytes;
    if (sl_backend_host_memory(m->be)) {
        w->data = t->data;
        return 0;
    }
    w->data = model_upload(m, t->data, t->n_bytes);
    if (!w->data) {
        model_errf(err_text, "tensor '%s': cannot upload %zu bytes to the %s backend", name,
                   t->n_bytes, sl_backend_name(m->be));
        return SL_ENOMEM;
    }
    return 0;
}

/* A (d0) vector as f32 backend memory (norm weights, biases). */
static int model_vector(model_t *m, const char *name, uint64_t d0, const float **out,
                        char **err_text) {
    const st_tensor_t *t;
    sl_dtype_t dt;
    float *tmp = NULL;
    int rc = model_tensor(m, name, d0, 0, &t, &dt, err_text);
    if (rc) return rc;
    m->info.weight_bytes += t->n_bytes;
    if (dt == SL_DTYPE_F32 && sl_backend_host_memory(m->be)) {
        *out = t->data;
        return 0;
    }
    const float *src = t->data;
    if (dt != SL_DTYPE_F32) {
        tmp = malloc((size_t)d0 * sizeof(float));
        if (!tmp) return SL_ENOMEM;
        if ((rc = sl_dtype_to_f32(tmp, t->data, dt, (size_t)d0))) goto out;
        src = tmp;
    }
    *out = model_upload(m, src, (size_t)d0 * sizeof(float));
    if (!*out) rc = SL_ENOMEM;
out:
    free(tmp);
    return rc;
}

/* Loads the n matrices model.layers.<l>.<names[i]> of shapes (rows[i], cols)
 * and, when they share a dtype, concatenates them row-wise into one
 * model-owned matrix *fused with parts[i] pointing at its row slices;
 * otherwise *fused is left empty and each part is loaded on its own. */
static int model_matrix_group(model_t *m, uint32_t l, const char *const *names,
                              const uint64_t *rows, int n, uint64_t cols, model_weight_t *fused,
                              model_weight_t *const *parts, char **err_text) {
    const st_tensor_t *t[4];
    sl_dtype_t dt[4];
    char nm[160];
    size_t total = 0;
    int rc;
    char *host = NULL;
    fused->data = NULL;
    for (int i = 0; i < n; i++) {
        snprintf(nm, sizeof nm, "model.layers.%u.%s", l, names[i]);
        if ((rc = model_tensor(m, nm, rows[i], cols, &t[i], &dt[i], err_text))) return rc;
        if (dt[i] != dt[0]) {
            for (int j = 0; j < n; j++) {
                snprintf(nm, sizeof nm, "model.layers.%u.%s", l, names[j]);
                if ((rc = model_matrix(m, nm, rows[j], cols, parts[j], err_text))) return rc;
            }
            return 0;
        }
        if (__builtin_add_overflow(total, t[i]->n_bytes, &total)) return SL_ENOMEM;
    }
    bool host_mem = sl_backend_host_memory(m->be);
    /* (sum rows, cols) of dt[0]: backend memory on a host backend, else staging */
    host = host_mem ? sl_backend_alloc(m->be, total) : malloc(total);
    if (!host) goto nomem;
    if (host_mem && model_own(m, host) != 0) {
        sl_backend_mem_free(m->be, host);
        host = NULL;
        goto nomem;
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        memcpy(host + off, t[i]->data, t[i]->n_bytes);
        off += t[i]->n_bytes;
        m->info.weight_bytes += t[i]->n_bytes;
    }
    const char *base = host_mem ? host : model_upload(m, host, total);
    if (!host_mem) {
        free(host);
        host = NULL;
    }
    if (!base) goto nomem;
    *fused = (model_weight_t){.data = base, .dtype = dt[0]};
    off = 0;
    for (int i = 0; i < n; i++) {
        *parts[i] = (model_weight_t){.data = base + off, .dtype = dt[0]};
        off += t[i]->n_bytes;
    }
    return 0;
nomem:
    if (!host_mem) free(host);
    model_errf(err_text, "layer %u: cannot allocate %zu bytes for the fused %s matrix", l, total,
               names[0]);
    return SL_ENOMEM;
}

/* Loads n bias vectors model.layers.<l>.<names[i]> of lengths len[i] into
 * one f32 model-owned vector *fused, parts[i] pointing into it. */
static int model_vector_group(model_t *m, uint32_t l, const char *const *names, const uint64_t *len,
                              int n, const float **fused, const float **const *parts,
                              char **err_text) {
    char nm[160];
    uint64_t total = 0;
    float *host = NULL;
    int rc = 0;
    for (int i = 0; i < n; i++) total += len[i]; /* each < 2^32 (config sizes): no overflow */
    if (total == 0 || total > SIZE_MAX / sizeof(float)) return SL_EINVAL;
    host = calloc((size_t)total, sizeof(float)); /* (total) f32 */
    if (!host) return SL_ENOMEM;
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        const st_tensor_t *t;
        sl_dtype_t dt;
        snprintf(nm, sizeof nm, "model.layers.%u.%s", l, names[i]);
        if ((rc = model_tensor(m, nm, len[i], 0, &t, &dt, err_text))) goto out;
        if ((rc = sl_dtype_to_f32(host + off, t->data, dt, (size_t)len[i]))) goto out;
        m->info.weight_bytes += t->n_bytes;
        off += (size_t)len[i];
    }
    const float *base = model_upload(m, host, (size_t)total * sizeof(float));
    if (!base) {
        rc = SL_ENOMEM;
        goto out;
    }
    *fused = base;
    off = 0;
    for (int i = 0; i < n; i++) {
        *parts[i] = base + off;
        off += (size_t)len[i];
    }
out:
    free(host);
    return rc;
}

static int model_weights_load(model_t *m, char **err_text) {
    const model_config_t *c = &m->cfg;
    uint64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    uint64_t Q = (uint64_t)c->n_heads * c->head_dim, KV = (uint64_t)c->n_kv_heads * c->head_dim;
    char nm[160];
    int rc;
    if ((rc = model_matrix(m, "model.embed_tokens.weight", V, H, &m->embed, err_text))) return rc;
    if ((rc = model_vector(m, "model.norm.weight", H, &m->final_norm, err_text))) return rc;
    if (c->tie_word_embeddings)
        m->lm_head = m->embed;
    else if ((rc = model_matrix(m, "lm_head.weight", V, H, &m->lm_head, err_text)))
        return rc;
    static const char *const qkv_w[] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                        "self_attn.v_proj.weight"};
    static const char *const qkv_b[] = {"self_attn.q_proj.bias", "self_attn.k_proj.bias",
                                        "self_attn.v_proj.bias"};
    static const char *const gu_w[] = {"mlp.gate_proj.weight", "mlp.up_proj.weight"};
    static const char *const gu_b[] = {"mlp.gate_proj.bias", "mlp.up_proj.bias"};
    const uint64_t qkv_rows[] = {Q, KV, KV}, gu_rows[] = {I, I};
    m->layers = calloc(c->n_layers, sizeof *m->layers);
    if (!m->layers) return SL_ENOMEM;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        model_layer_t *L = &m->layers[l];
#define LNAME(suffix) (snprintf(nm, sizeof nm, "model.layers.%u.%s", l, suffix), nm)
        if ((rc = model_vector(m, LNAME("input_layernorm.weight"), H, &L->attn_norm, err_text)) ||
            (rc = model_vector(m, LNAME("post_attention_layernorm.weight"), H, &L->mlp_norm,
                               err_text)) ||
            (rc =
                 model_matrix_group(m, l, qkv_w, qkv_rows, 3, H, &L->wqkv,
                                    (model_weight_t *const[]){&L->wq, &L->wk, &L->wv}, err_text)) ||
            (rc = model_matrix(m, LNAME("self_attn.o_proj.weight"), H, Q, &L->wo, err_text)) ||
            (rc = model_matrix_group(m, l, gu_w, gu_rows, 2, H, &L->wgu,
                                     (model_weight_t *const[]){&L->wg, &L->wu}, err_text)) ||
            (rc = model_matrix(m, LNAME("mlp.down_proj.weight"), H, I, &L->wd, err_text)))
            return rc;
        if (c->attention_bias &&
            (rc = model_vector_group(m, l, qkv_b, qkv_rows, 3, &L->bqkv,
                                     (const float **const[]){&L->bq, &L->bk, &L->bv}, err_text)))
            return rc;
        if (c->o_bias &&
            (rc = model_vector(m, LNAME("self_attn.o_proj.bias"), H, &L->bo, err_text)))
            return rc;
        if (c->mlp_bias &&
            ((rc = model_vector_group(m, l, gu_b, gu_rows, 2, &L->bgu,
                                      (const float **const[]){&L->bg, &L->bu}, err_text)) ||
             (rc = model_vector(m, LNAME("mlp.down_proj.bias"), H, &L->bd, err_text))))
            return rc;
#undef LNAME
    }
    return 0;
}

static void model_scratch_free(model_t *m) {
    float **bufs[] = {&m->x, &m->xn, &m->q, &m->k, &m->v, &m->att, &m->gate, &m->up};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) {
        sl_backend_mem_free(m->be, *bufs[i]);
        *bufs[i] = NULL;
    }
    free(m->tok_host);
    free(m->pos_host);
    m->tok_host = m->pos_host = NULL;
    m->cap_T = 0;
}

/* Grows the per-row scratch to hold T rows and the logits scratch L rows. */
static int model_scratch_reserve(model_t *m, uint32_t T, uint32_t L, uint32_t n_seqs) {
    const model_config_t *c = &m->cfg;
    size_t H = c->hidden_size, I = c->intermediate_size;
    size_t Q = (size_t)c->n_heads * c->head_dim, KV = (size_t)c->n_kv_heads * c->head_dim;
    if (T > m->cap_T) {
        uint32_t cap = m->cap_T ? m->cap_T : 16;
        while (cap < T) cap = cap > MODEL_MAX_STEP_TOKENS / 2 ? MODEL_MAX_STEP_TOKENS : cap * 2;
        model_scratch_free(m);
        struct {
            float **p;
            size_t cols;
        } b[] = {{&m->x, H},  {&m->xn, H},  {&m->q, Q + 2 * KV}, {&m->k, KV},
                 {&m->v, KV}, {&m->att, Q}, {&m->gate, 2 * I},   {&m->up, I}};
        for (size_t i = 0; i < sizeof b / sizeof *b; i++) {
            *b[i].p = sl_backend_alloc(m->be, (size_t)cap * b[i].cols * sizeof(float));
            if (!*b[i].p) goto nomem;
        }
        m->tok_host = malloc((size_t)cap * sizeof(uint32_t));
        m->pos_host = malloc((size_t)cap * sizeof(uint32_t));
        if (!m->tok_host || !m->pos_host) goto nomem;
        m->cap_T = cap;
    }
    if (L > m->cap_L) {
        sl_backend_mem_free(m->be, m->xl);
        sl_backend_mem_free(m->be, m->logits_dev);
        m->logits_dev = NULL;
        m->cap_L = 0;
        m->xl = sl_backend_alloc(m->be, (size_t)L * H * sizeof(float));
        if (!m->xl) return SL_ENOMEM;
        if (!sl_backend_host_memory(m->be)) {
            m->logits_dev = sl_backend_alloc(m->be, (size_t)L * c->vocab_size * sizeof(float));
            if (!m->logits_dev) return SL_ENOMEM;
        }
        m->cap_L = L;
    }
    if (n_seqs > m->cap_seqs) {
        sl_attn_seq_t *a = realloc(m->aseq, (size_t)n_seqs * sizeof *a);
        if (!a) return SL_ENOMEM;
        m->aseq = a;
        m->cap_seqs = n_seqs;
    }
    return 0;
nomem:
    model_scratch_free(m);
    return SL_ENOMEM;
}

/* qkv (T, Qd + 2 * KVd) rows of [q | k | v] -> k (T, KVd), v (T, KVd), and
 * q (T, Qd) compacted in place at the start of qkv. Row t's q moves down
 * to t * Qd, which never reaches a row not yet split (nor its own k, v). */
static void model_qkv_split(float *qkv, float *k, float *v, uint32_t T, uint32_t Qd, uint32_t KVd) {
    size_t W = (size_t)Qd + 2 * (size_t)KVd;
    for (size_t t = 0; t < T; t++) {
        const float *row = qkv + t * W;
        memcpy(k + t * KVd, row + Qd, (size_t)KVd * sizeof *k);
        memcpy(v + t * KVd, row + Qd + KVd, (size_t)KVd * sizeof *v);
        if (t) memmove(qkv + t * Qd, row, (size_t)Qd * sizeof *qkv);
    }
}

static int model_step(void *impl, const sl_fwd_batch_t *batch) {
    model_t *m = impl;
    int rc = 0;
    if (!m || !batch || (batch->n_seqs && !batch->seqs)) return SL_EINVAL;
    const model_config_t *c = &m->cfg;
    /* Validate and size the step before touching anything. */
    uint64_t T64 = 0;
    uint32_t n_logits = 0;
    for (uint32_t s = 0; s < batch->n_seqs; s++) {
        const sl_fwd_seq_t *q = &batch->seqs[s];
        if (q->n_tokens && (!q->tokens || !q->blocks)) return SL_EINVAL;
        if (q->want_logits && q->n_tokens == 0) return SL_EINVAL;
        uint64_t end = (uint64_t)q->pos + q->n_tokens;
        if (end > c->max_position_embeddings) return SL_ERANGE;
        uint64_t need = (end + m->kv.block_size - 1) / m->kv.block_size;
        if (q->n_tokens && q->n_blocks < need) return SL_ERANGE;
        for (uint64_t b = 0; q->n_tokens && b < need; b++)
            if (q->blocks[b] >= m->kv.n_blocks) return SL_ERANGE;
        for (uint32_t i = 0; i < q->n_tokens; i++)
            if (q->tokens[i] >= c->vocab_size) return SL_ERANGE;
        T64 += q->n_tokens;
        n_logits += q->want_logits;
    }
    if (T64 > MODEL_MAX_STEP_TOKENS) return SL_ETOOBIG;
    if (n_logits && !batch->logits) return SL_EINVAL;
    uint32_t T = (uint32_t)T64;
    if (T == 0) return 0;
    if ((rc = model_scratch_reserve(m, T, n_logits, batch->n_seqs))) return rc;

    uint32_t row = 0;
    for (uint32_t s = 0; s < batch->n_seqs; s++) {
        const sl_fwd_seq_t *q = &batch->seqs[s];
        m->aseq[s] = (sl_attn_seq_t){
            .n_tokens = q->n_tokens, .pos = q->pos, .blocks = q->blocks, .n_blocks = q->n_blocks};
        for (uint32_t i = 0; i < q->n_tokens; i++, row++) {
            m->tok_host[row] = q->tokens[i];
            m->pos_host[row] = q->pos + i;
        }
    }
    sl_backend_t *be = m->be;
    uint32_t H = c->hidden_size, I = c->intermediate_size, nh = c->n_heads, nkv = c->n_kv_heads;
    uint32_t hd = c->head_dim, Qd = nh * hd, KVd = nkv * hd;
    float eps = c->rms_norm_eps;

    /* x (T, H) = embed_tokens[tokens] */
    if ((rc = sl_backend_embed(be, m->x, m->embed.data, m->embed.dtype, m->tok_host, T, H,
                               c->vocab_size)))
        goto out;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const model_layer_t *L = &m->layers[l];
        uint32_t window = l >= c->swa_first_layer ? c->sliding_window : 0;
        float *q = m->q, *k = m->k, *v = m->v, *act = m->gate;
        if ((rc = sl_backend_rmsnorm(be, m->xn, m->x, L->attn_norm, T, H, eps))) goto out;
        if (T == 1 && L->wqkv.data) {
            /* one row: [q | k | v] from one matmul, then q and k RoPE'd as
             * one row of nh + nkv heads */
            k = q + Qd;
            v = k + KVd;
            if ((rc = sl_backend_matmul(be, q, m->xn, L->wqkv.data, L->wqkv.dtype, L->bqkv, 1,
                                        Qd + 2 * KVd, H, false)) ||
                (rc = sl_backend_rope(be, q, m->pos_host, m->inv_freq, 1, nh + nkv, hd, hd)))
                goto out;
        } else if (T <= MODEL_SPLIT_QKV_MAX_T && L->wqkv.data && sl_backend_host_memory(be)) {
            /* a decode batch: rows of [q | k | v] from one matmul (x packed
             * once, one dispatch instead of three), then split on the host
             * so q, k and v are contiguous for rope and attention */
            if ((rc = sl_backend_matmul(be, q, m->xn, L->wqkv.data, L->wqkv.dtype, L->bqkv, T,
                                        Qd + 2 * KVd, H, false)))
                goto out;
            model_qkv_split(q, k, v, T, Qd, KVd);
            if ((rc = sl_backend_rope(be, q, m->pos_host, m->inv_freq, T, nh, hd, hd)) ||
                (rc = sl_backend_rope(be, k, m->pos_host, m->inv_freq, T, nkv, hd, hd)))
                goto out;
        } else if ((rc = sl_backend_matmul(be, q, m->xn, L->wq.data, L->wq.dtype, L->bq, T, Qd, H,
                                           false)) ||
                   (rc = sl_backend_matmul(be, k, m->xn, L->wk.data, L->wk.dtype, L->bk, T, KVd, H,
                                           false)) ||
                   (rc = sl_backend_matmul(be, v, m->xn, L->wv.data, L->wv.dtype, L->bv, T, KVd, H,
                                           false)) ||
                   (rc = sl_backend_rope(be, q, m->pos_host, m->inv_freq, T, nh, hd, hd)) ||
                   (rc = sl_backend_rope(be, k, m->pos_host, m->inv_freq, T, nkv, hd, hd))) {
            goto out;
        }
        if ((rc = sl_backend_kv_write(be, &m->kv, l, m->aseq, batch->n_seqs, k, v)) ||
            (rc = sl_backend_attention(be, m->att, q, &m->kv, l, m->aseq, batch->n_seqs, nh, window,
                                       0.0f)) ||
            /* x += att · Wo^T (+ bo): the residual add fused into the GEMM */
            (rc = sl_backend_matmul(be, m->x, m->att, L->wo.data, L->wo.dtype, L->bo, T, H, Qd,
                                    true)) ||
            (rc = sl_backend_rmsnorm(be, m->xn, m->x, L->mlp_norm, T, H, eps)))
            goto out;
        if (L->wgu.data) {
            /* gate|up (T, 2I) in one matmul; act = silu(gate) * up into up */
            act = m->up;
            if ((rc = sl_backend_matmul(be, m->gate, m->xn, L->wgu.data, L->wgu.dtype, L->bgu, T,
                                        2 * I, H, false)) ||
                (rc = sl_backend_silu_mul(be, act, m->gate, m->gate + I, T, I, 2 * I)))
                goto out;
        } else if ((rc = sl_backend_matmul(be, m->gate, m->xn, L->wg.data, L->wg.dtype, L->bg, T, I,
                                           H, false)) ||
                   (rc = sl_backend_matmul(be, m->up, m->xn, L->wu.data, L->wu.dtype, L->bu, T, I,
                                           H, false)) ||
                   (rc = sl_backend_silu_mul(be, act, m->gate, m->up, T, I, I))) {
            goto out;
        }
        if ((rc = sl_backend_matmul(be, m->x, act, L->wd.data, L->wd.dtype, L->bd, T, H, I, true)))
            goto out;
    }
    if (n_logits == 0) goto out;
    /* Final norm only for the last row of each chunk that wants logits. */
    row = 0;
    uint32_t li = 0;
    for (uint32_t s = 0; s < batch->n_seqs; s++) {
        const sl_fwd_seq_t *q = &batch->seqs[s];
        row += q->n_tokens;
        if (!q->want_logits) continue;
        if ((rc = sl_backend_rmsnorm(be, m->xl + (size_t)li * H, m->x + (size_t)(row - 1) * H,
                                     m->final_norm, 1, H, eps)))
            goto out;
        li++;
    }
    float *lo = m->logits_dev ? m->logits_dev : batch->logits;
    if ((rc = sl_backend_matmul(be, lo, m->xl, m->lm_head.data, m->lm_head.dtype, NULL, n_logits,
                                c->vocab_size, H, false)))
        goto out;
    if (m->logits_dev)
        rc = sl_backend_copy_out(be, batch->logits, m->logits_dev,
                                 (size_t)n_logits * c->vocab_size * sizeof(float));
out:
    return rc;
}

typedef struct model_pfor {
    void (*fn)(void *arg, uint32_t begin, uint32_t end, uint32_t worker);
    void *arg;
} model_pfor_t;

static void model_pfor_task(void *arg, size_t b, size_t e, int tid) {
    const model_pfor_t *p = arg;
    p->fn(p->arg, (uint32_t)b, (uint32_t)e, (uint32_t)tid);
}

/* sl_forward_t.parallel_for: one item per chunk, so rows of uneven cost
 * (a top-p draw next to a greedy one) balance over the threads. */
static void model_parallel_for(void *impl, uint32_t n,
                               void (*fn)(void *arg, uint32_t begin, uint32_t end, uint32_t worker),
                               void *arg) {
    model_t *m = impl;
    model_pfor_t p = {.fn = fn, .arg = arg};
    sl_cpu_pool_for(m->pool, n, 1, model_pfor_task, &p);
}

int model_load(const char *dir, const model_opts_t *opts, model_t **out, char **err_text) {
    int rc = 0;
    model_opts_t o = {0};
    model_t *m = NULL;
    if (err_text) *err_text = NULL;
    if (!dir || !out) return SL_EINVAL;
    *out = NULL;
    if (opts) o = *opts;
    if (!o.block_size) o.block_size = 16;
    if (!o.kv_bytes) o.kv_bytes = MODEL_DEFAULT_KV_BYTES;
    if (o.block_size > 4096) {
        model_errf(err_text, "block_size %u out of range (1..4096)", o.block_size);
        return SL_EINVAL;
    }
    m = calloc(1, sizeof *m);
    if (!m) return SL_ENOMEM;
    if ((rc = model_config_load(dir, &m->cfg, err_text))) goto out;
    if (o.backend) {
        m->be = o.backend;
    } else if (!o.backend_name || !strcasecmp(o.backend_name, "cpu")) {
        /* The CPU backend on a pool of our own, lent to the engine between
         * steps (model_parallel_for). */
        m->pool = sl_cpu_pool_create(o.n_threads);
        sl_cpu_options_t co = {.isa = SL_CPU_ISA_AUTO, .pool = m->pool};
        rc = m->pool ? sl_cpu_backend_create(&co, &m->be) : SL_ENOMEM;
        if (rc) {
            model_errf(err_text, "backend 'cpu': %s", sl_strerror(rc));
            goto out;
        }
        m->own_be = true;
    } else {
        sl_backend_config_t bc = {.n_threads = o.n_threads};
        rc = sl_backend_create(o.backend_name, &bc, &m->be);
        if (rc) {
            model_errf(err_text, "backend '%s': %s", o.backend_name ? o.backend_name : "cpu",
                       sl_strerror(rc));
            goto out;
        }
        m->own_be = true;
    }
    if ((rc = safetensors_open(dir, &m->st, err_text))) goto out;
    if ((rc = model_weights_load(m, err_text))) goto out;

    const model_config_t *c = &m->cfg;
    m->inv_freq = malloc((c->head_dim / 2) * sizeof(float));
    if (!m->inv_freq) {
        rc = SL_ENOMEM;
        goto out;
    }
    model_config_rope_inv_freq(c, m->inv_freq);

    m->kv = (sl_kv_layout_t){.block_size = o.block_size,
                             .n_layers = c->n_layers,
                             .n_kv_heads = c->n_kv_heads,
                             .head_dim = c->head_dim,
                             .dtype = SL_DTYPE_F32};
    m->kv.block_bytes = sl_kv_block_bytes_min(&m->kv);
    if (m->kv.block_bytes == 0) {
        rc = SL_EINVAL;
        model_errf(err_text, "KV block size overflows");
        goto out;
    }
    uint64_t nb = o.n_blocks ? o.n_blocks : o.kv_bytes / m->kv.block_bytes;
    if (nb == 0 || nb > UINT32_MAX) {
        rc = SL_EINVAL;
        model_errf(err_text, "KV memory of %zu bytes holds %llu blocks of %zu bytes", o.kv_bytes,
                   (unsigned long long)nb, m->kv.block_bytes);
        goto out;
    }
    size_t kv_total;
    if (__builtin_mul_overflow((size_t)nb, m->kv.block_bytes, &kv_total)) {
        rc = SL_EINVAL;
        model_errf(err_text, "KV memory size overflows");
        goto out;
    }
    m->kv.n_blocks = (uint32_t)nb;
    if (o.kv_alloc && sl_backend_host_memory(m->be)) {
        m->kv.base = o.kv_alloc(o.kv_alloc_ud, m->kv.block_bytes, m->kv.n_blocks);
        m->kv_borrowed = m->kv.base != NULL;
    } else {
        m->kv.base = sl_backend_alloc(m->be, kv_total);
    }
    if (!m->kv.base) {
        rc = SL_ENOMEM;
        model_errf(err_text, "cannot allocate %zu bytes of KV memory (%u blocks)", kv_total,
                   m->kv.n_blocks);
        goto out;
    }

    m->info.config = *c;
    m->info.vocab_size = c->vocab_size;
    m->info.n_layers = c->n_layers;
    m->info.context_length = c->max_position_embeddings;
    m->info.block_size = m->kv.block_size;
    m->info.n_blocks = m->kv.n_blocks;
    m->info.block_bytes = m->kv.block_bytes;
    m->info.weight_dtype = m->embed.dtype;
    m->fwd = (sl_forward_t){.impl = m,
                            .vocab_size = c->vocab_size,
                            .block_size = m->kv.block_size,
                            .n_blocks = m->kv.n_blocks,
                            .block_bytes = m->kv.block_bytes,
                            .kv_base = sl_backend_host_memory(m->be) ? m->kv.base : NULL,
                            .step = model_step};
    if (m->pool) {
        m->fwd.parallel_for = model_parallel_for;
        m->fwd.n_workers = (uint32_t)sl_cpu_pool_size(m->pool);
    }
    LOG_INFO("model %s: %s, %u layers, hidden %u, heads %u/%u, vocab %u, %s weights %.1f MB, "
             "KV %u blocks x %zu B",
             dir, model_arch_name(c->arch), c->n_layers, c->hidden_size, c->n_heads, c->n_kv_heads,
             c->vocab_size, sl_dtype_name(m->embed.dtype), (double)m->info.weight_bytes / 1e6,
             m->kv.n_blocks, m->kv.block_bytes);
    *out = m;
    m = NULL;
out:
    if (rc && err_text && !*err_text) model_errf(err_text, "%s: %s", dir, sl_strerror(rc));
    model_free(m);
    return rc;
}

void model_free(model_t *m) {
    if (!m) return;
    if (m->be) {
        model_scratch_free(m);
        sl_backend_mem_free(m->be, m->xl);
        sl_backend_mem_free(m->be, m->logits_dev);
        if (!m->kv_borrowed) sl_backend_mem_free(m->be, m->kv.base);
        for (size_t i = 0; i < m->n_owned; i++) sl_backend_mem_free(m->be, m->owned[i]);
    }
    free(m->owned);
    free(m->aseq);
    free(m->inv_freq);
    free(m->layers);
    safetensors_free(m->st);
    if (m->own_be) sl_backend_free(m->be);
    sl_cpu_pool_free(m->pool); /* after the backend that borrowed it */
    free(m);
}

sl_forward_t *model_forward(model_t *m) {
    return m ? &m->fwd : NULL;
}

const model_info_t *model_info(const model_t *m) {
    return m ? &m->info : NULL;
}

sl_backend_t *model_backend(model_t *m) {
    return m ? m->be : NULL;
}
