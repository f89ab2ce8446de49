/* simd.h - the vector primitives under the CPU kernels, one table per ISA.
 *
 * The project is built for baseline x86-64; the AVX2 and AVX-512 tables are
 * compiled with per-file target pragmas and picked at run time with
 * __builtin_cpu_supports, with a portable scalar table as the fallback (and as
 * the reference the tests compare the others with). $SLUICE_CPU_ISA
 * (scalar|avx2|avx512) caps the level for testing and benchmarking.
 *
 * Thread-safety: the tables are immutable; every function is reentrant.
 */
#ifndef SL_KERNELS_CPU_SIMD_H
#define SL_KERNELS_CPU_SIMD_H

#include "kernels/backend.h"

#include <stddef.h>
#include <stdint.h>

typedef enum sl_cpu_isa {
    SL_CPU_ISA_SCALAR = 0,
    SL_CPU_ISA_AVX2 = 1,   /* avx2 + fma + f16c */
    SL_CPU_ISA_AVX512 = 2, /* avx512f + bw + vl (+ f16c) */
    SL_CPU_ISA_AUTO = 3    /* the best this CPU supports, capped by $SLUICE_CPU_ISA */
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
    /* sum a(n) * b(n) */
    float (*dot)(const float *a, const float *b, size_t n);
    /* y(n) = alpha * y + beta * x */
    void (*axpby)(float *y, float alpha, const float *x, float beta, size_t n);
} sl_cpu_simd_t;

extern const sl_cpu_simd_t sl_cpu_simd_scalar;
extern const sl_cpu_simd_t sl_cpu_simd_avx2;
extern const sl_cpu_simd_t sl_cpu_simd_avx512;

/* The best ISA this CPU supports (ignores $SLUICE_CPU_ISA). */
sl_cpu_isa_t sl_cpu_isa_detect(void);

/* The table for isa, or NULL when the CPU lacks it. SL_CPU_ISA_AUTO gives the
 * best supported level, capped by $SLUICE_CPU_ISA when that is set. */
const sl_cpu_simd_t *sl_cpu_simd_get(sl_cpu_isa_t isa);

#endif
