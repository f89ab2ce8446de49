/* simd_avx2.c - AVX2 + FMA + F16C primitives.
 *
 * Compiled for AVX2 by the pragma below; reached only through
 * sl_cpu_simd_get() after __builtin_cpu_supports said yes. AVX2 has no
 * masked 16-bit loads, so K tails go through small zero-padded buffers and no
 * kernel reads past the end of a row.
 */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#include "kernels/cpu/simd.h"

#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

AI __m256 y_load_w(sl_dtype_t dt, const void *w, size_t i) {
    if (dt == SL_DTYPE_F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (dt == SL_DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AI float y_load_one(sl_dtype_t dt, const void *w, size_t i) {
    if (dt == SL_DTYPE_F32) return ((const float *)w)[i];
    if (dt == SL_DTYPE_F16) return _cvtsh_ss(((const uint16_t *)w)[i]);
    return sl_bf16_to_f32(((const uint16_t *)w)[i]);
}

AI float y_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* out[m*4+r] = x[m] . w[r] for m < MB (<= 2), r < RB (<= 4). */
AI void y_tile(sl_dtype_t dt, const int MB, const int RB, const float *x, size_t ldx, const void *w,
               size_t ldw, size_t K, float *out, const char *pf, size_t pf_lines) {
    __m256 acc[2][4];
#pragma GCC unroll 2
    for (int m = 0; m < MB; m++)
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++) acc[m][r] = _mm256_setzero_ps();
    /* spread the prefetch of pf_lines cache lines over the K loop */
    size_t iters = K / 8, lpi = iters ? (pf_lines + iters - 1) / iters : 0, pf_done = 0;
    size_t k = 0;
    for (; k + 8 <= K; k += 8) {
        for (size_t l = 0; l < lpi && pf_done < pf_lines; l++, pf_done++)
            _mm_prefetch(pf + pf_done * 64, _MM_HINT_T0);
        __m256 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++) wv[r] = y_load_w(dt, w, (size_t)r * ldw + k);
#pragma GCC unroll 2
        for (int m = 0; m < MB; m++) {
            __m256 xv = _mm256_loadu_ps(x + (size_t)m * ldx + k);
#pragma GCC unroll 4
            for (int r = 0; r < RB; r++) acc[m][r] = _mm256_fmadd_ps(xv, wv[r], acc[m][r]);
        }
    }
    if (k < K) {
        size_t left = K - k;
        float wt[4][8] = {{0}}, xt[2][8] = {{0}};
        for (int r = 0; r < RB; r++)
            for (size_t i = 0; i < left; i++) wt[r][i] = y_load_one(dt, w, (size_t)r * ldw + k + i);
        for (int m = 0; m < MB; m++)
            for (size_t i = 0; i < left; i++) xt[m][i] = x[(size_t)m * ldx + k + i];
#pragma GCC unroll 2
        for (int m = 0; m < MB; m++) {
            __m256 xv = _mm256_loadu_ps(xt[m]);
#pragma GCC unroll 4
            for (int r = 0; r < RB; r++)
                acc[m][r] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wt[r]), acc[m][r]);
        }
    }
#pragma GCC unroll 2
    for (int m = 0; m < MB; m++)
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++) out[m * 4 + r] = y_hsum(acc[m][r]);
}

AI void y_gemv(sl_dtype_t dt, const float *x, size_t ldx, int mb, const void *w, size_t ldw, int rb,
               size_t K, float *out, const void *pf, size_t pf_bytes) {
    size_t es = dt == SL_DTYPE_F32 ? 4 : 2;
    const char *pfc = pf;
    size_t pfl = pf ? (pf_bytes + 63) / 64 : 0;
    for (int m0 = 0; m0 < mb; m0 += 2) {
        const float *xm = x + (size_t)m0 * ldx;
        float *om = out + m0 * 4;
        int two = mb - m0 >= 2;
        if (rb == 4) {
            const char *pp = m0 == 0 ? pfc : NULL; /* prefetch once per call */
            size_t pl = m0 == 0 ? pfl : 0;
            if (two)
                y_tile(dt, 2, 4, xm, ldx, w, ldw, K, om, pp, pl);
            else
                y_tile(dt, 1, 4, xm, ldx, w, ldw, K, om, pp, pl);
            continue;
        }
        for (int r = 0; r < rb; r++) {
            const void *wr = (const char *)w + (size_t)r * ldw * es;
            float o[8];
            if (two) {
                y_tile(dt, 2, 1, xm, ldx, wr, ldw, K, o, NULL, 0);
                om[r] = o[0];
                om[4 + r] = o[4];
            } else {
                y_tile(dt, 1, 1, xm, ldx, wr, ldw, K, o, NULL, 0);
                om[r] = o[0];
            }
        }
    }
}

static void y_gemv_f32(const float *x, size_t ldx, int mb, const void *w, size_t ldw, int rb,
                       size_t K, float *out, const void *pf, size_t pf_bytes) {
    y_gemv(SL_DTYPE_F32, x, ldx, mb, w, ldw, rb, K, out, pf, pf_bytes);
}
static void y_gemv_f16(const float *x, size_t ldx, int mb, const void *w, size_t ldw, int rb,
                       size_t K, float *out, const void *pf, size_t pf_bytes) {
    y_gemv(SL_DTYPE_F16, x, ldx, mb, w, ldw, rb, K, out, pf, pf_bytes);
}
static void y_gemv_bf16(const float *x, size_t ldx, int mb, const void *w, size_t ldw, int rb,
                        size_t K, float *out, const void *pf, size_t pf_bytes) {
    y_gemv(SL_DTYPE_BF16, x, ldx, mb, w, ldw, rb, K, out, pf, pf_bytes);
}

static void y_f16_to_f32(float *dst, const uint16_t *src, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, y_load_w(SL_DTYPE_F16, src, i));
    for (; i < n; i++) dst[i] = _cvtsh_ss(src[i]);
}

static void y_bf16_to_f32(float *dst, const uint16_t *src, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, y_load_w(SL_DTYPE_BF16, src, i));
    for (; i < n; i++) dst[i] = sl_bf16_to_f32(src[i]);
}

static float y_dot(const float *a, const float *b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = y_hsum(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void y_axpby(float *y, float alpha, const float *x, float beta, size_t n) {
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 yv = _mm256_loadu_ps(y + i);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(vb, _mm256_loadu_ps(x + i), _mm256_mul_ps(va, yv)));
    }
    for (; i < n; i++) y[i] = alpha * y[i] + beta * x[i];
}

const sl_cpu_simd_t sl_cpu_simd_avx2 = {
    .isa = SL_CPU_ISA_AVX2,
    .name = "avx2",
    .f16_to_f32 = y_f16_to_f32,
    .bf16_to_f32 = y_bf16_to_f32,
    .gemv_tile =
        {[SL_DTYPE_F32] = y_gemv_f32, [SL_DTYPE_F16] = y_gemv_f16, [SL_DTYPE_BF16] = y_gemv_bf16},
    .dot = y_dot,
    .axpby = y_axpby,
};
#endif
