/* cpu_elementwise.c - norms, RoPE, activations, softmax, argmax, embedding.
 *
 * These are O(rows * width) and cheap next to the matmuls; they split rows
 * over the pool only when a call is big enough to pay for the wake-up.
 */
#include "common/base/err.h"
#include "kernels/cpu/cpu_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ROWS_INLINE_WORK 32768u /* elements below which an op runs on the caller */

typedef struct ew_args {
    const cpu_ctx_t *c;
    float *y;
    float *res;
    const float *x;
    const float *x2;
    const float *w;
    const void *table;
    const uint32_t *idx;
    uint32_t *out_idx;
    sl_dtype_t dt;
    uint32_t D, n, stride, n_heads, head_dim, rot_dim;
    float eps;
} ew_args_t;

static void ew_rows_for(const cpu_ctx_t *c, size_t rows, size_t width, sl_cpu_pool_fn fn,
                        ew_args_t *a) {
    if (rows * width < ROWS_INLINE_WORK || c->n_threads == 1) {
        fn(a, 0, rows, 0);
        return;
    }
    size_t nt = (size_t)c->n_threads;
    sl_cpu_pool_for(c->pool, rows, (rows + nt * 2 - 1) / (nt * 2), fn, a);
}

/* ---- RMSNorm ------------------------------------------------------------------ */

/* One row. The caller runs the rows of a decode step inline while the
 * other threads wait (too little work to dispatch), so the row is
 * vectorized where the CPU allows: one running double sum was a chain of
 * dependent adds, ~2% of a batch-32 step. The fallback keeps eight
 * independent sums (same accuracy, no chain). */
static void ew_rmsnorm_row(const sl_cpu_simd_t *sd, float *y, const float *x, const float *w,
                           uint32_t D, float eps) {
    double ss;
    if (sd->sumsq) {
        ss = sd->sumsq(x, D);
    } else {
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
        uint32_t i = 0;
        for (; i + 8 <= D; i += 8) {
            s0 += (double)x[i] * x[i];
            s1 += (double)x[i + 1] * x[i + 1];
            s2 += (double)x[i + 2] * x[i + 2];
            s3 += (double)x[i + 3] * x[i + 3];
            s4 += (double)x[i + 4] * x[i + 4];
            s5 += (double)x[i + 5] * x[i + 5];
            s6 += (double)x[i + 6] * x[i + 6];
            s7 += (double)x[i + 7] * x[i + 7];
        }
        ss = ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7));
        for (; i < D; i++) ss += (double)x[i] * x[i];
    }
    float inv = (float)(1.0 / sqrt(ss / D + (double)eps));
    if (sd->scale_mul) {
        sd->scale_mul(y, x, inv, w, D);
        return;
    }
    for (uint32_t i = 0; i < D; i++) y[i] = x[i] * inv * w[i];
}

static void ew_rmsnorm_task(void *arg, size_t b, size_t e, int tid) {
    (void)tid;
    const ew_args_t *a = arg;
    for (size_t m = b; m < e; m++)
        ew_rmsnorm_row(a->c->simd, a->y + m * a->D, a->x + m * a->D, a->w, a->D, a->eps);
}

int cpu_rmsnorm(void *ctx, float *y, const float *x, const float *w, uint32_t M, uint32_t D,
                float eps) {
    ew_args_t a = {.c = ctx, .y = y, .x = x, .w = w, .D = D, .eps = eps};
    ew_rows_for(ctx, M, D, ew_rmsnorm_task, &a);
    return 0;
}

static void ew_add_rmsnorm_task(void *arg, size_t b, size_t e, int tid) {
    (void)tid;
    const ew_args_t *a = arg;
    for (size_t m = b; m < e; m++) {
        float *r = a->res + m * a->D;
        if (a->x)
            for (uint32_t i = 0; i < a->D; i++) r[i] += a->x[m * a->D + i];
        ew_rmsnorm_row(a->c->simd, a->y + m * a->D, r, a->w, a->D, a->eps);
    }
}

int cpu_add_rmsnorm(void *ctx, float *y, float *residual, const float *x, const float *w,
                    uint32_t M, uint32_t D, float eps) {
    ew_args_t a = {.c = ctx, .y = y, .res = residual, .x = x, .w = w, .D = D, .eps = eps};
    ew_rows_for(ctx, M, D, ew_add_rmsnorm_task, &a);
    return 0;
}

/* ---- RoPE --------------------------------------------------------------------- */

/* Rows [b, e): with the table a->w (cos | sin per row) when there is one,
 * else computing each row's angles here. */
static void ew_rope_task(void *arg, size_t b, size_t e, int tid) {
    (void)tid;
    const ew_args_t *a = arg;
    uint32_t half = a->rot_dim / 2;
    float own[CPU_MAX_HEAD_DIM];
    for (size_t t = b; t < e; t++) {
        const float *cs = own, *sn = own + half;
        if (a->w) {
            cs = a->w + t * 2 * half;
            sn = cs + half;
        } else {
            float p = (float)a->idx[t];
            for (uint32_t i = 0; i < half; i++) {
                float ang = p * a->x2[i]; /* f32 product, as Hugging Face rounds it */
                own[i] = (float)cos((double)ang);
                own[half + i] = (float)sin((double)ang);
            }
        }
        for (uint32_t h = 0; h < a->n_heads; h++) {
            float *v = a->y + (t * a->n_heads + h) * a->head_dim;
            for (uint32_t i = 0; i < half; i++) {
                float x0 = v[i], x1 = v[i + half];
                v[i] = x0 * cs[i] - x1 * sn[i];
                v[i + half] = x1 * cs[i] + x0 * sn[i];
            }
        }
    }
}

/* Returns c->rope_cs holding cos | sin of pos[t] * inv_freq[i] (t < T,
 * i < half; the same f32 values ew_rope_task computes), kept from the last
 * call when the positions and frequencies are the same (compared by value,
 * so another model or step never sees a stale table). NULL for steps over
 * ROPE_TABLE_MAX_T rows (prefill: the angles are a small part there) or
 * when memory is short: the rows then compute their own. */
#define ROPE_TABLE_MAX_T 4096u
static const float *ew_rope_table(cpu_ctx_t *c, const uint32_t *pos, const float *inv_freq,
                                  uint32_t T, uint32_t half) {
    if (T == 0 || T > ROPE_TABLE_MAX_T) return NULL;
    if (c->rope_T == T && c->rope_half == half &&
        memcmp(c->rope_pos, pos, (size_t)T * sizeof *pos) == 0 &&
        memcmp(c->rope_freq, inv_freq, (size_t)half * sizeof *inv_freq) == 0)
        return c->rope_cs;
    c->rope_T = 0; /* invalid until filled */
    /* (T, 2, CPU_MAX_HEAD_DIM / 2) floats: at most 16 MiB */
    if (cpu_buf_reserve((void **)&c->rope_cs, &c->rope_cs_cap, (size_t)T * CPU_MAX_HEAD_DIM,
                        sizeof *c->rope_cs) != 0 ||
        cpu_buf_reserve((void **)&c->rope_pos, &c->rope_pos_cap, T, sizeof *c->rope_pos) != 0)
        return NULL;
    for (uint32_t t = 0; t < T; t++) {
        float p = (float)pos[t], *cs = c->rope_cs + (size_t)t * 2 * half, *sn = cs + half;
        for (uint32_t i = 0; i < half; i++) {
            float ang = p * inv_freq[i];
            cs[i] = (float)cos((double)ang);
            sn[i] = (float)sin((double)ang);
        }
    }
    memcpy(c->rope_pos, pos, (size_t)T * sizeof *pos);
    memcpy(c->rope_freq, inv_freq, (size_t)half * sizeof *inv_freq);
    c->rope_T = T;
    c->rope_half = half;
    return c->rope_cs;
}

int cpu_rope(void *ctx, float *x, const uint32_t *pos, const float *inv_freq, uint32_t T,
             uint32_t n_heads, uint32_t head_dim, uint32_t rot_dim) {
    cpu_ctx_t *c = ctx;
    if (rot_dim / 2 > (CPU_MAX_HEAD_DIM / 2)) return SL_EINVAL;
    ew_args_t a = {.c = c,
                   .y = x,
                   .w = ew_rope_table(c, pos, inv_freq, T, rot_dim / 2),
                   .idx = pos,
                   .x2 = inv_freq,
                   .n_heads = n_heads,
                   .head_dim = head_dim,
                   .rot_dim = rot_dim};
    ew_rows_for(c, T, (size_t)n_heads * head_dim, ew_rope_task, &a);
    return 0;
}

/* ---- SiLU * up, add --------------------------------------------------------------- */

static void ew_silu_mul_task(void *arg, size_t b, size_t e, int tid) {
    (void)tid;
    const ew_args_t *a = arg;
    for (size_t m = b; m < e; m++) {
        const float *g = a->x + m * a->stride, *u = a->x2 + m * a->stride;
        float *y = a->y + m * a->n;
        if (a->c->simd->silu_mul)
            a->c->simd->silu_mul(y, g, u, a->n);
        else
            for (uint32_t i = 0; i < a->n; i++) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

int cpu_silu_mul(void *ctx, float *y, const float *gate, const float *up, uint32_t M, uint32_t n,
                 uint32_t in_stride) {
    ew_args_t a = {.c = ctx, .y = y, .x = gate, .x2 = up, .n = n, .stride = in_stride};
    ew_rows_for(ctx, M, n, ew_silu_mul_task, &a);
    return 0;
}

static void ew_add_task(void *arg, size_t b, size_t e, int tid) {
    (void)tid;
    const ew_args_t *a = arg;
    for (size_t i = b; i < e; i++) a->y[i] = a->x[i] + a->x2[i];
}

int cpu_add(void *ctx, float *y, const float *a_, const float *b, size_t n) {
    ew_args_t a = {.c = ctx, .y = y, .x = a_, .x2 = b};
    ew_rows_for(ctx, n, 1, ew_add_task, &a);
    return 0;
}

/* ---- softmax, log-softmax, argmax ------------------------------------------------ */

static void ew_softmax_task(void *arg, size_t b, size_t e, int tid) {
    (void)tid;
    const ew_args_t *a = arg;
    for (size_t m = b; m < e; m++) {
        float *x = a->y + m * a->n;
        float mx = -INFINITY;
        for (uint32_t i = 0; i < a->n; i++) mx = x[i] > mx ? x[i] : mx;
        if (mx == -INFINITY) { /* all -Inf: no mass anywhere */
            bool log = a->eps != 0.0f;
            for (uint32_t i = 0; i < a->n; i++) x[i] = log ? -INFINITY : 0.0f;
            continue;
        }
        double sum = 0.0;
        for (uint32_t i = 0; i < a->n; i++) sum += exp((double)(x[i] - mx));
        if (a->eps != 0.0f) {           /* log-softmax */
            float ls = (float)log(sum); /* (x - max) - log(sum): exact for huge logits */
            for (uint32_t i = 0; i < a->n; i++) x[i] = (x[i] - mx) - ls;
        } else {
            double inv = 1.0 / sum;
            for (uint32_t i = 0; i < a->n; i++) x[i] = (float)(exp((double)(x[i] - mx)) * inv);
        }
    }
}

int cpu_softmax(void *ctx, float *x, uint32_t M, uint32_t n) {
    ew_args_t a = {.c = ctx, .y = x, .n = n, .eps = 0.0f};
    ew_rows_for(ctx, M, n, ew_softmax_task, &a);
    return 0;
}

int cpu_log_softmax(void *ctx, float *x, uint32_t M, uint32_t n) {
    ew_args_t a = {.c = ctx, .y = x, .n = n, .eps = 1.0f};
    ew_rows_for(ctx, M, n, ew_softmax_task, &a);
    return 0;
}

static void ew_argmax_task(void *arg, size_t b, size_t e, int tid) {
    (void)tid;
    const ew_args_t *a = arg;
    for (size_t m = b; m < e; m++) {
        const float *x = a->x + m * a->n;
        uint32_t best = 0;
        bool found = false;
        for (uint32_t i = 0; i < a->n; i++) {
            if (x[i] != x[i]) continue; /* NaN */
            if (!found || x[i] > x[best]) {
                best = i;
                found = true;
            }
        }
        a->out_idx[m] = best;
    }
}

int cpu_argmax(void *ctx, uint32_t *out, const float *x, uint32_t M, uint32_t n) {
    ew_args_t a = {.c = ctx, .x = x, .out_idx = out, .n = n};
    ew_rows_for(ctx, M, n, ew_argmax_task, &a);
    return 0;
}

/* ---- embedding ------------------------------------------------------------------- */

static void ew_embed_task(void *arg, size_t b, size_t e, int tid) {
    (void)tid;
    const ew_args_t *a = arg;
    size_t D = a->D;
    for (size_t t = b; t < e; t++) {
        size_t row = a->idx[t];
        float *y = a->y + t * D;
        if (a->dt == SL_DTYPE_F32)
            memcpy(y, (const float *)a->table + row * D, D * sizeof(float));
        else
            cpu_widen(a->c->simd, y, (const uint16_t *)a->table + row * D, a->dt, D);
    }
}

int cpu_embed(void *ctx, float *y, const void *table, sl_dtype_t dt, const uint32_t *ids,
              uint32_t T, uint32_t D, uint32_t vocab) {
    (void)vocab; /* ids were checked against it by the wrapper */
    ew_args_t a = {.c = ctx, .y = y, .table = table, .dt = dt, .idx = ids, .D = D};
    ew_rows_for(ctx, T, D, ew_embed_task, &a);
    return 0;
}
