/* simd.h - the vector primitives under the CPU kernels, one table per ISA.
 *
 * The project is built for baseline x86-64; the AVX2 and AVX-512 tables are
 * compiled with per-file target pragmas and picked at run time with
 * __builtin_cpu_supports (cpuid for AVX512_BF16 and AMX, plus the Linux
 * tile-data permission for AMX, asked for once), with a portable scalar table
 * as the fallback (and as the reference the tests compare the others with).
 * $SLUICE_CPU_ISA (scalar|avx2|avx512|avx512bf16|amx) caps the level for
 * testing and benchmarking.
 *
 * Thread-safety: the tables are immutable; every function is reentrant.
 */
#ifndef SL_KERNELS_CPU_SIMD_H
#define SL_KERNELS_CPU_SIMD_H

#include "kernels/backend.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum sl_cpu_isa {
    SL_CPU_ISA_SCALAR = 0,
    SL_CPU_ISA_AVX2 = 1,        /* avx2 + fma + f16c */
    SL_CPU_ISA_AVX512 = 2,      /* avx512f + bw + vl (+ f16c) */
    SL_CPU_ISA_AVX512_BF16 = 3, /* the above + avx512_bf16 (vdpbf16ps) */
    SL_CPU_ISA_AMX = 4,         /* the above + amx-tile + amx-bf16, tile data permitted */
    SL_CPU_ISA_AUTO = 5         /* the best this CPU supports, capped by $SLUICE_CPU_ISA */
} sl_cpu_isa_t;

/* GEMV tile: for m < mb (1..4) and r < rb (1..4),
 *   out[m * 4 + r] = sum_k x[m * ldx + k] * w[r * ldw + k],  k < K
 * with w of the table's dtype (element strides). While it runs it also
 * prefetches pf_bytes from pf (spread over the K loop; pf may be NULL), so
 * the caller can pull in the next tile of W while this one computes. */
typedef void (*sl_simd_gemv_tile_fn)(const float *x, size_t ldx, int mb, const void *w, size_t ldw,
                                     int rb, size_t K, float *out, const void *pf, size_t pf_bytes);

/* Weight rows per gemm_panel call at most. */
#define SL_SIMD_PANEL_ROWS 12

/* bf16x: bf16 weights times f32 activations split as x = hi + lo, both bf16
 * (hi = bf16(x), lo = bf16(x - hi)), so x is carried to ~16 significant bits
 * and the products are summed in f32: close to the f32 result (relative error
 * ~2^-17 per term) at bf16-dot-product speed. The packed x, for
 * Mp = round_up(M, 16) and Kp = round_up(K, 32), is
 *   xb[Kp / 32][Mp / 16][hi|lo (2)][16 k-pairs][16 m][2]   (bf16)
 * i.e. per 32-k chunk and 16-row block of x, two 1 KiB AMX "VNNI" B tiles:
 * word (p, m) holds x[m][2p] in its low half and x[m][2p + 1] in its high
 * half. Rows m >= M and columns k >= K are zero; lo is 0 where hi is +-Inf
 * or NaN (so an Inf in x stays Inf, not Inf - Inf). */
#define SL_SIMD_BF16X_ROWS 32 /* weight rows per gemm_bf16x call at most */

/* Elements (uint16_t) of the packed x for M rows and K columns, or 0 on
 * overflow. */
static inline size_t sl_simd_bf16x_packed_elems(size_t M, size_t K) {
    size_t mp = (M + 15) / 16, kp = (K + 31) / 32, n;
    if (M == 0 || K == 0 || __builtin_mul_overflow(mp, kp, &n) ||
        __builtin_mul_overflow(n, (size_t)1024, &n))
        return 0;
    return n;
}

typedef struct sl_cpu_simd {
    sl_cpu_isa_t isa;
    const char *name;
    /* dst(n) = src(n) converted to f32 */
    void (*f16_to_f32)(float *dst, const uint16_t *src, size_t n);
    void (*bf16_to_f32)(float *dst, const uint16_t *src, size_t n);
    /* indexed by sl_dtype_t */
    sl_simd_gemv_tile_fn gemv_tile[SL_DTYPE_COUNT];
    /* Optional (NULL when absent): a faster bf16 tile that takes x prepared
     * by bf16p_prep_x(xp, x, K) into round_up(K, 32) floats per row, with
     * ldx = round_up(K, 32). */
    sl_simd_gemv_tile_fn gemv_tile_bf16p;
    void (*bf16p_prep_x)(float *xp, const float *x, size_t K);
    /* Optional (NULL when absent): the small-batch panel kernel. For
     * n < nb (1..SL_SIMD_PANEL_ROWS) and m < 16 * mv (mv 1 or 2),
     *   out[n * 32 + m] = sum_k xt[k * ldxt + m] * wf[n * K + k],  k < K
     * with xt (K, ldxt) the step's x transposed (zero padded to 16 * mv
     * columns) and wf (nb, K) f32 weight rows. Each weight is broadcast once
     * for up to 32 rows of x, so there are no horizontal sums. While it runs
     * it prefetches pf_bytes from pf (the next panel's weights; pf may be
     * NULL). */
    void (*gemm_panel)(const float *xt, size_t ldxt, int mv, const float *wf, int nb, size_t K,
                       float *out, const void *pf, size_t pf_bytes);
    /* Optional (NULL when absent): the bf16x pair. bf16x_pack writes the
     * 32-k chunks [c0, c1) of the packed x above for x (M, ldx) f32, padding
     * included (chunks may be packed by different threads). gemm_bf16x
     * computes, for n < nb (1..SL_SIMD_BF16X_ROWS), m < M,
     *   v = sum_k (hi + lo)[m][k] * w[n * ldw + k] (+ bias[n]),  k < K
     *   y[m * ldy + n] = v, or y[m * ldy + n] + v with acc
     * with w bf16 rows (element stride ldw >= K), bias (nb) or NULL, reading
     * no weight outside the nb rows of K. On AMX it sets the calling thread's
     * tile configuration (and leaves it set). */
    void (*bf16x_pack)(uint16_t *xb, const float *x, size_t ldx, size_t M, size_t K, size_t c0,
                       size_t c1);
    void (*gemm_bf16x)(const uint16_t *xb, size_t M, const uint16_t *w, size_t ldw, int nb,
                       size_t K, float *y, size_t ldy, const float *bias, bool acc);
    /* Optional (NULL when absent): attention over a run of n keys (f32 rows
     * of hd, contiguous): s[c] = (q(hd) . k[c * hd ..]) * scale, c < n; and
     * acc(hd) += p[c] * v[c * hd ..] for c = 0 .. n-1 in order (the same
     * rounding as n axpby(acc, 1, v, p[c]) calls). They take the per-key
     * call and reduction out of the attention loop. */
    void (*attn_scores)(const float *q, const float *k, size_t hd, size_t n, float scale, float *s);
    void (*attn_accum)(float *acc, const float *v, const float *p, size_t n, size_t hd);
    /* Optional (NULL when absent): y(n) = g / (1 + exp(-g)) * u, with exp
     * to ~2 ulp (a polynomial; the scalar path calls expf). */
    void (*silu_mul)(float *y, const float *g, const float *u, size_t n);
    /* Optional (NULL when absent), for RMSNorm rows: the sum of x(n)
     * squared, accumulated in double; and y(n) = (x * s) * w rounded in f32
     * as the plain loop does (y may be x). */
    double (*sumsq)(const float *x, size_t n);
    void (*scale_mul)(float *y, const float *x, float s, const float *w, size_t n);
    /* sum a(n) * b(n) */
    float (*dot)(const float *a, const float *b, size_t n);
    /* y(n) = alpha * y + beta * x */
    void (*axpby)(float *y, float alpha, const float *x, float beta, size_t n);
} sl_cpu_simd_t;

extern const sl_cpu_simd_t sl_cpu_simd_scalar;
extern const sl_cpu_simd_t sl_cpu_simd_avx2;
extern const sl_cpu_simd_t sl_cpu_simd_avx512;
extern const sl_cpu_simd_t sl_cpu_simd_avx512bf16;
extern const sl_cpu_simd_t sl_cpu_simd_amx;

/* The bf16x kernels behind the last two tables (simd_amx.c), for the table
 * definitions in simd_avx512.c only. */
void sl_simd_bf16x_pack_avx512(uint16_t *xb, const float *x, size_t ldx, size_t M, size_t K,
                               size_t c0, size_t c1);
void sl_simd_gemm_bf16x_avx512bf16(const uint16_t *xb, size_t M, const uint16_t *w, size_t ldw,
                                   int nb, size_t K, float *y, size_t ldy, const float *bias,
                                   bool acc);
void sl_simd_gemm_bf16x_amx(const uint16_t *xb, size_t M, const uint16_t *w, size_t ldw, int nb,
                            size_t K, float *y, size_t ldy, const float *bias, bool acc);

/* The best ISA this CPU supports (ignores $SLUICE_CPU_ISA). */
sl_cpu_isa_t sl_cpu_isa_detect(void);

/* The table for isa, or NULL when the CPU lacks it. SL_CPU_ISA_AUTO gives the
 * best supported level, capped by $SLUICE_CPU_ISA when that is set. */
const sl_cpu_simd_t *sl_cpu_simd_get(sl_cpu_isa_t isa);

#endif
