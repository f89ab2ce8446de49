/* cpu_internal.h - what the CPU backend's source files share (not public).
 *
 * The context every CPU op receives, and the ops themselves, defined in
 * cpu_matmul.c, cpu_attention.c and cpu_elementwise.c and collected into the
 * vtable by cpu_backend.c. Arguments arrive validated by kernels/backend.c.
 */
#ifndef SL_KERNELS_CPU_INTERNAL_H
#define SL_KERNELS_CPU_INTERNAL_H

#include "kernels/backend.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/threadpool.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest head_dim the wrappers accept (kernels/backend.c). */
#define CPU_MAX_HEAD_DIM 1024u

typedef struct cpu_ctx {
    sl_cpu_pool_t *pool;
    bool own_pool; /* false: borrowed through sl_cpu_options_t.pool */
    int n_threads;
    const sl_cpu_simd_t *simd;
    uint32_t gemm_min_m;
    uint32_t panel_min_m[SL_DTYPE_COUNT]; /* M from which small-M matmuls use gemm_panel */
    float **scratch;                      /* (n_threads) per-thread f32 buffers for weight blocks */
    size_t *scratch_cap;                  /* (n_threads) floats in each */
    /* Grow-only buffers (cpu_buf_reserve), each with its capacity in elements. */
    float *xp; /* (xp_cap) matmul: x rearranged for gemv_tile_bf16p or gemm_panel */
    size_t xp_cap;
    uint16_t *xb; /* (xb_cap) matmul: x split and packed for gemm_bf16x */
    size_t xb_cap;
    uint32_t bf16x_min_m, bf16x_max_m; /* M range that uses gemm_bf16x (bf16 weights) */
    uint32_t *row_seq;                 /* (row_seq_cap) attention: sequence of each row */
    size_t row_seq_cap;
    uint32_t *row_first; /* (row_first_cap) attention: first row of that sequence */
    size_t row_first_cap;
    /* rope: cos | sin of the last call's angles, (rope_T, 2, rope_half), with
     * the positions (rope_T) and frequencies (rope_half) they came from. A
     * step calls rope for q and k of every layer with the same positions, so
     * the table is computed once a step instead of 2 * n_layers times. */
    float *rope_cs; /* (rope_cs_cap) */
    size_t rope_cs_cap;
    uint32_t *rope_pos; /* (rope_pos_cap) */
    size_t rope_pos_cap;
    float rope_freq[CPU_MAX_HEAD_DIM / 2];
    uint32_t rope_T, rope_half; /* rope_T 0: no table */
} cpu_ctx_t;

/* Makes *buf (a cpu_ctx_t grow-only buffer of *cap elements of elem bytes)
 * hold at least n elements: a larger 64-byte aligned buffer replaces it, its
 * contents not kept. 0, or SL_ENOMEM (also when the size overflows) with
 * *buf and *cap unchanged. */
int cpu_buf_reserve(void **buf, size_t *cap, size_t n, size_t elem);

/* dst(n) = src(n) of dtype dt (F16 or BF16) widened to f32 with simd's
 * conversion. */
static inline void cpu_widen(const sl_cpu_simd_t *simd, float *dst, const void *src, sl_dtype_t dt,
                             size_t n) {
    if (dt == SL_DTYPE_BF16)
        simd->bf16_to_f32(dst, src, n);
    else
        simd->f16_to_f32(dst, src, n);
}

/* Makes every thread's scratch hold at least floats floats. 0 or SL_ENOMEM. */
int cpu_scratch_reserve(cpu_ctx_t *c, size_t floats);

int cpu_matmul(void *ctx, float *y, const float *x, const void *w, sl_dtype_t wdt,
               const float *bias, uint32_t M, uint32_t N, uint32_t K, bool accumulate);
int cpu_rmsnorm(void *ctx, float *y, const float *x, const float *w, uint32_t M, uint32_t D,
                float eps);
int cpu_add_rmsnorm(void *ctx, float *y, float *residual, const float *x, const float *w,
                    uint32_t M, uint32_t D, float eps);
int cpu_rope(void *ctx, float *x, const uint32_t *pos, const float *inv_freq, uint32_t T,
             uint32_t n_heads, uint32_t head_dim, uint32_t rot_dim);
int cpu_silu_mul(void *ctx, float *y, const float *gate, const float *up, uint32_t M, uint32_t n,
                 uint32_t in_stride);
int cpu_add(void *ctx, float *y, const float *a, const float *b, size_t n);
int cpu_softmax(void *ctx, float *x, uint32_t M, uint32_t n);
int cpu_log_softmax(void *ctx, float *x, uint32_t M, uint32_t n);
int cpu_argmax(void *ctx, uint32_t *out, const float *x, uint32_t M, uint32_t n);
int cpu_embed(void *ctx, float *y, const void *table, sl_dtype_t dt, const uint32_t *ids,
              uint32_t T, uint32_t D, uint32_t vocab);
int cpu_kv_write(void *ctx, const sl_kv_layout_t *kv, uint32_t layer, const sl_attn_seq_t *seqs,
                 uint32_t n_seqs, const float *k, const float *v);
int cpu_attention(void *ctx, float *out, const float *q, const sl_kv_layout_t *kv, uint32_t layer,
                  const sl_attn_seq_t *seqs, uint32_t n_seqs, uint32_t n_heads, uint32_t window,
                  float scale);

#endif
