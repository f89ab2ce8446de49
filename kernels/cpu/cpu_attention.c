/* cpu_attention.c - paged KV write and paged causal attention on the CPU.
 *
 * KV layout (common/engine/forward.h): block b at base + b * block_bytes,
 * inside [layer][k|v][kv_head][token (block_size)][head_dim]. Attention runs
 * one (query row, head) pair per work item, walking the sequence's block
 * table in runs of at most ATT_CHUNK keys: scores for the run, then one
 * online-softmax rescale per run (running max m and sum l), so no
 * full-length score row is ever materialized.
 */
#include "common/base/err.h"
#include "kernels/cpu/cpu_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ATT_CHUNK 64u

/* Start of (layer, k|v, kv_head) inside block b: (block_size, head_dim)
 * elements of kv->dtype. */
static inline char *att_plane(const sl_kv_layout_t *kv, uint32_t b, uint32_t layer, int which,
                              uint32_t head) {
    size_t plane = (size_t)kv->block_size * kv->head_dim;
    size_t idx = (((size_t)layer * 2 + (size_t)which) * kv->n_kv_heads + head) * plane;
    return (char *)kv->base + (size_t)b * kv->block_bytes + idx * sl_dtype_size(kv->dtype);
}

/* Stores hd f32 values at dst in dtype dt (rounded to nearest even). */
static void att_store(char *dst, sl_dtype_t dt, const float *src, size_t hd) {
    if (dt == SL_DTYPE_F32)
        memcpy(dst, src, hd * sizeof(float));
    else
        (void)sl_dtype_from_f32(dst, dt, src, hd);
}

int cpu_kv_write(void *ctx, const sl_kv_layout_t *kv, uint32_t layer, const sl_attn_seq_t *seqs,
                 uint32_t n_seqs, const float *k, const float *v) {
    (void)ctx;
    size_t hd = kv->head_dim, row_elems = (size_t)kv->n_kv_heads * hd;
    size_t es = sl_dtype_size(kv->dtype);
    size_t row = 0;
    for (uint32_t s = 0; s < n_seqs; s++) {
        const sl_attn_seq_t *q = &seqs[s];
        for (uint32_t i = 0; i < q->n_tokens; i++, row++) {
            uint32_t p = q->pos + i;
            uint32_t b = q->blocks[p / kv->block_size], slot = p % kv->block_size;
            for (uint32_t h = 0; h < kv->n_kv_heads; h++) {
                att_store(att_plane(kv, b, layer, 0, h) + (size_t)slot * hd * es, kv->dtype,
                          k + row * row_elems + h * hd, hd);
                att_store(att_plane(kv, b, layer, 1, h) + (size_t)slot * hd * es, kv->dtype,
                          v + row * row_elems + h * hd, hd);
            }
        }
    }
    return 0;
}

typedef struct att_args {
    const cpu_ctx_t *c;
    float *out;     /* (T, n_heads, head_dim) */
    const float *q; /* (T, n_heads, head_dim) */
    const sl_kv_layout_t *kv;
    const sl_attn_seq_t *seqs;
    uint32_t layer, n_heads, group, window;
    float scale;
} att_args_t;

static void att_task(void *arg, size_t begin, size_t end, int tid) {
    const att_args_t *a = arg;
    const sl_kv_layout_t *kv = a->kv;
    const sl_cpu_simd_t *simd = a->c->simd;
    size_t hd = kv->head_dim, es = sl_dtype_size(kv->dtype);
    uint32_t bs = kv->block_size;
    float acc[CPU_MAX_HEAD_DIM]; /* (head_dim) running sum of p * v */
    float sc[ATT_CHUNK];         /* scores of one run of keys */
    for (size_t u = begin; u < end; u++) {
        size_t row = u / a->n_heads;
        uint32_t h = (uint32_t)(u % a->n_heads), g = h / a->group;
        const sl_attn_seq_t *sq = &a->seqs[a->c->row_seq[row]];
        uint32_t p = sq->pos + (uint32_t)(row - a->c->row_first[row]);
        uint32_t lo = a->window && p + 1 > a->window ? p + 1 - a->window : 0;
        const float *qv = a->q + (row * a->n_heads + h) * hd;
        float m = -INFINITY, l = 0.0f;
        memset(acc, 0, hd * sizeof(float));
        for (uint32_t j = lo; j <= p;) {
            uint32_t b = sq->blocks[j / bs], t0 = j % bs;
            uint32_t cnt = bs - t0;
            if (cnt > p + 1 - j) cnt = p + 1 - j;
            if (cnt > ATT_CHUNK) cnt = ATT_CHUNK;
            const char *kr = att_plane(kv, b, a->layer, 0, g) + (size_t)t0 * hd * es;
            const char *vr = att_plane(kv, b, a->layer, 1, g) + (size_t)t0 * hd * es;
            const float *kp = (const float *)kr, *vp = (const float *)vr;
            if (kv->dtype != SL_DTYPE_F32) { /* widen this run of keys and values */
                float *kf = a->c->scratch[tid], *vf = kf + (size_t)ATT_CHUNK * hd;
                cpu_widen(simd, kf, kr, kv->dtype, (size_t)cnt * hd);
                cpu_widen(simd, vf, vr, kv->dtype, (size_t)cnt * hd);
                kp = kf;
                vp = vf;
            }
            float mx = m;
            if (simd->attn_scores)
                simd->attn_scores(qv, kp, hd, cnt, a->scale, sc);
            else
                for (uint32_t c = 0; c < cnt; c++)
                    sc[c] = simd->dot(qv, kp + c * hd, hd) * a->scale;
            for (uint32_t c = 0; c < cnt; c++)
                if (sc[c] > mx) mx = sc[c];
            if (mx > m) { /* new running max: rescale what we have */
                float alpha = m == -INFINITY ? 0.0f : expf(m - mx);
                l *= alpha;
                for (size_t i = 0; i < hd; i++) acc[i] *= alpha;
                m = mx;
            }
            for (uint32_t c = 0; c < cnt; c++) {
                sc[c] = expf(sc[c] - m); /* scores become weights */
                l += sc[c];
            }
            if (simd->attn_accum)
                simd->attn_accum(acc, vp, sc, cnt, hd);
            else
                for (uint32_t c = 0; c < cnt; c++) simd->axpby(acc, 1.0f, vp + c * hd, sc[c], hd);
            j += cnt;
        }
        float *o = a->out + (row * a->n_heads + h) * hd;
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (size_t i = 0; i < hd; i++) o[i] = acc[i] * inv;
    }
}

int cpu_attention(void *ctx, float *out, const float *q, const sl_kv_layout_t *kv, uint32_t layer,
                  const sl_attn_seq_t *seqs, uint32_t n_seqs, uint32_t n_heads, uint32_t window,
                  float scale) {
    cpu_ctx_t *c = ctx;
    if (kv->dtype != SL_DTYPE_F32) { /* per-thread room for one widened run of K and V */
        int rc = cpu_scratch_reserve(c, 2 * (size_t)ATT_CHUNK * kv->head_dim);
        if (rc != 0) return rc;
    }
    size_t T = 0;
    for (uint32_t s = 0; s < n_seqs; s++) T += seqs[s].n_tokens;
    int rc = cpu_buf_reserve((void **)&c->row_seq, &c->row_seq_cap, T, sizeof *c->row_seq);
    if (rc == 0)
        rc = cpu_buf_reserve((void **)&c->row_first, &c->row_first_cap, T, sizeof *c->row_first);
    if (rc != 0) return rc;
    size_t row = 0;
    for (uint32_t s = 0; s < n_seqs; s++)
        for (uint32_t i = 0; i < seqs[s].n_tokens; i++, row++) {
            c->row_seq[row] = s;
            c->row_first[row] = (uint32_t)(row - i);
        }
    att_args_t a = {.c = c,
                    .out = out,
                    .q = q,
                    .kv = kv,
                    .seqs = seqs,
                    .layer = layer,
                    .n_heads = n_heads,
                    .group = n_heads / kv->n_kv_heads,
                    .window = window,
                    .scale = scale > 0.0f ? scale : 1.0f / sqrtf((float)kv->head_dim)};
    size_t units = T * n_heads, nt = (size_t)c->n_threads;
    sl_cpu_pool_for(c->pool, units, (units + nt * 4 - 1) / (nt * 4), att_task, &a);
    return 0;
}
