/* simd_avx512.c - AVX-512 primitives (avx512f/bw/vl + f16c).
 *
 * Compiled for AVX-512 by the pragma below; reached only through
 * sl_cpu_simd_get() after __builtin_cpu_supports said yes. K tails use masked
 * loads, so no kernel reads past the end of a row.
 */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")
#include "kernels/cpu/simd.h"

#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

/* Software prefetch distance of the 16-bit M = 1 streams, in bytes. A
 * prefetch past the end of the weights is harmless (it never faults). */
#define Z_PF_AHEAD 2048

/* 16 elements of w (dtype dt) starting at element i, as f32; lanes outside
 * mask read as 0. */
AI __m512 z_load_w(sl_dtype_t dt, const void *w, size_t i, __mmask16 mask) {
    if (dt == SL_DTYPE_F32) return _mm512_maskz_loadu_ps(mask, (const float *)w + i);
    __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)w + i);
    if (dt == SL_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AI __m512 z_load_w_full(sl_dtype_t dt, const void *w, size_t i) {
    if (dt == SL_DTYPE_F32) return _mm512_loadu_ps((const float *)w + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i));
    if (dt == SL_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* out[i] = the sum of v[i]'s 16 lanes, i < 16: a transposing tree of 45
 * shuffles and adds instead of 16 separate reductions (~130). */
AI void z_hsum16(const __m512 v[16], float *out) {
    __m512 t[8], u[4];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) /* per 128-bit block: [a0+a2, b0+b2, a1+a3, b1+b3] */
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) { /* per block: partial sums of v[4i .. 4i+3] */
        __m512d a = _mm512_castps_pd(t[2 * i]), b = _mm512_castps_pd(t[2 * i + 1]);
        u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    /* fold the four 128-bit blocks: block j of the result holds v[4j .. 4j+3] */
    __m512 x01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88),
                               _mm512_shuffle_f32x4(u[0], u[1], 0xdd));
    __m512 x23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88),
                               _mm512_shuffle_f32x4(u[2], u[3], 0xdd));
    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_f32x4(x01, x23, 0x88),
                                        _mm512_shuffle_f32x4(x01, x23, 0xdd)));
}

/* out[m*4+r] = the lane sum of acc[m][r], m < MB, r < RB: a tile's
 * epilogue (the full 4x4 tile through the z_hsum16 tree). */
AI void z_tile_store(const int MB, const int RB, __m512 acc[4][4], float *out) {
    if (MB == 4 && RB == 4) {
        __m512 v[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) v[i] = acc[i / 4][i % 4];
        z_hsum16(v, out);
        return;
    }
#pragma GCC unroll 4
    for (int m = 0; m < MB; m++)
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++) out[m * 4 + r] = _mm512_reduce_add_ps(acc[m][r]);
}

/* out[m*4+r] = x[m] . w[r] for m < MB, r < RB: each W vector is loaded and
 * converted once and used for all MB rows of x. */
AI void z_tile(sl_dtype_t dt, const int MB, const int RB, const float *x, size_t ldx, const void *w,
               size_t ldw, size_t K, float *out, const char *pf, size_t pf_lines) {
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int m = 0; m < MB; m++)
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++) acc[m][r] = _mm512_setzero_ps();
    /* spread the prefetch of pf_lines cache lines over the K loop */
    size_t iters = K / 16, lpi = iters ? (pf_lines + iters - 1) / iters : 0, pf_done = 0;
    size_t k = 0;
    for (; k + 16 <= K; k += 16) {
        for (size_t l = 0; l < lpi && pf_done < pf_lines; l++, pf_done++)
            _mm_prefetch(pf + pf_done * 64, _MM_HINT_T0);
        if (MB == 1 && dt != SL_DTYPE_F32 && k % 32 == 0) /* as in z_tile_bf16p */
#pragma GCC unroll 4
            for (int r = 0; r < RB; r++)
                _mm_prefetch((const char *)w + ((size_t)r * ldw + k) * 2 + Z_PF_AHEAD, _MM_HINT_T0);
        __m512 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++) wv[r] = z_load_w_full(dt, w, (size_t)r * ldw + k);
#pragma GCC unroll 4
        for (int m = 0; m < MB; m++) {
            __m512 xv = _mm512_loadu_ps(x + (size_t)m * ldx + k);
#pragma GCC unroll 4
            for (int r = 0; r < RB; r++) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
        }
    }
    if (k < K) {
        __mmask16 mask = (__mmask16)((1u << (K - k)) - 1u);
        __m512 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++) wv[r] = z_load_w(dt, w, (size_t)r * ldw + k, mask);
#pragma GCC unroll 4
        for (int m = 0; m < MB; m++) {
            __m512 xv = _mm512_maskz_loadu_ps(mask, x + (size_t)m * ldx + k);
#pragma GCC unroll 4
            for (int r = 0; r < RB; r++) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
        }
    }
    z_tile_store(MB, RB, acc, out);
}

/* bf16 "pairs" tile: one 64-byte load holds 32 bf16 weights; the even ones
 * become f32 by a shift, the odd ones by a mask, so a cache line costs one
 * load and two cheap ALU ops instead of two widening shuffles. x must be
 * prepared by z_bf16p_prep_x (each 32-chunk as [16 even][16 odd], zero
 * padded to ldx = round_up(K, 32)). Same products, different summation
 * order. */
AI void z_tile_bf16p(const int MB, const int RB, const float *xp, size_t ldx, const uint16_t *w,
                     size_t ldw, size_t K, float *out, const char *pf, size_t pf_lines) {
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int m = 0; m < MB; m++)
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++) acc[m][r] = _mm512_setzero_ps();
    size_t iters = K / 32, lpi = iters ? (pf_lines + iters - 1) / iters : 0, pf_done = 0;
    for (size_t k = 0; k < K; k += 32) {
        for (size_t l = 0; l < lpi && pf_done < pf_lines; l++, pf_done++)
            _mm_prefetch(pf + pf_done * 64, _MM_HINT_T0);
        /* At MB = 1 the tile is a pure stream; the four short row streams of
         * a bf16 tile (K * 2 bytes each) leave the hardware prefetcher
         * behind, so run ahead of each by Z_PF_AHEAD bytes (measured: f32
         * rows, twice as long, do not need it). */
        if (MB == 1)
#pragma GCC unroll 4
            for (int r = 0; r < RB; r++)
                _mm_prefetch((const char *)(w + (size_t)r * ldw + k) + Z_PF_AHEAD, _MM_HINT_T0);
        __m512 we[4], wo[4];
        size_t left = K - k;
        __mmask32 mask = left >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << left) - 1u);
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++) {
            __m512i v = left >= 32 ? _mm512_loadu_si512(w + (size_t)r * ldw + k)
                                   : _mm512_maskz_loadu_epi16(mask, w + (size_t)r * ldw + k);
            we[r] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            wo[r] = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
        }
#pragma GCC unroll 4
        for (int m = 0; m < MB; m++) {
            __m512 xe = _mm512_loadu_ps(xp + (size_t)m * ldx + k);
            __m512 xo = _mm512_loadu_ps(xp + (size_t)m * ldx + k + 16);
#pragma GCC unroll 4
            for (int r = 0; r < RB; r++) {
                acc[m][r] = _mm512_fmadd_ps(xe, we[r], acc[m][r]);
                acc[m][r] = _mm512_fmadd_ps(xo, wo[r], acc[m][r]);
            }
        }
    }
    z_tile_store(MB, RB, acc, out);
}

static void z_gemv_bf16p(const float *xp, size_t ldx, int mb, const void *w, size_t ldw, int rb,
                         size_t K, float *out, const void *pf, size_t pf_bytes) {
    const uint16_t *w16 = w;
    size_t pfl = pf ? (pf_bytes + 63) / 64 : 0;
    if (rb == 4) {
        switch (mb) {
        case 4:
            z_tile_bf16p(4, 4, xp, ldx, w16, ldw, K, out, pf, pfl);
            return;
        case 3:
            z_tile_bf16p(3, 4, xp, ldx, w16, ldw, K, out, pf, pfl);
            return;
        case 2:
            z_tile_bf16p(2, 4, xp, ldx, w16, ldw, K, out, pf, pfl);
            return;
        case 1:
            z_tile_bf16p(1, 4, xp, ldx, w16, ldw, K, out, pf, pfl);
            return;
        default:
            return;
        }
    }
    for (int r = 0; r < rb; r++)
        for (int m = 0; m < mb; m++) {
            float o[16];
            z_tile_bf16p(1, 1, xp + (size_t)m * ldx, ldx, w16 + (size_t)r * ldw, ldw, K, o, NULL,
                         0);
            out[m * 4 + r] = o[0];
        }
}

/* Panel kernel: NB weight rows (broadcast one f32 at a time) times MV vectors
 * of 16 transposed x rows, NB * MV accumulators (<= 24 of the 32 registers).
 * Loads per k: MV of xt and NB broadcasts, for NB * MV FMAs. */
AI void z_panel(const int NB, const int MV, const float *xt, size_t ldxt, const float *wf, size_t K,
                float *out, const char *pf, size_t pf_lines) {
    __m512 acc[SL_SIMD_PANEL_ROWS][2];
#pragma GCC unroll 12
    for (int n = 0; n < NB; n++)
#pragma GCC unroll 2
        for (int v = 0; v < MV; v++) acc[n][v] = _mm512_setzero_ps();
    size_t pf_done = 0;
    for (size_t k = 0; k < K; k++) {
        if (pf_done < pf_lines) _mm_prefetch(pf + 64 * pf_done++, _MM_HINT_T1);
        __m512 xv[2];
#pragma GCC unroll 2
        for (int v = 0; v < MV; v++) xv[v] = _mm512_loadu_ps(xt + k * ldxt + 16 * (size_t)v);
#pragma GCC unroll 12
        for (int n = 0; n < NB; n++) {
            __m512 b = _mm512_set1_ps(wf[(size_t)n * K + k]);
#pragma GCC unroll 2
            for (int v = 0; v < MV; v++) acc[n][v] = _mm512_fmadd_ps(b, xv[v], acc[n][v]);
        }
    }
#pragma GCC unroll 12
    for (int n = 0; n < NB; n++)
#pragma GCC unroll 2
        for (int v = 0; v < MV; v++) _mm512_storeu_ps(out + n * 32 + 16 * v, acc[n][v]);
}

static void z_gemm_panel(const float *xt, size_t ldxt, int mv, const float *wf, int nb, size_t K,
                         float *out, const void *pf, size_t pf_bytes) {
    size_t pfl = pf ? (pf_bytes + 63) / 64 : 0;
    if (nb == SL_SIMD_PANEL_ROWS) {
        if (mv == 2)
            z_panel(SL_SIMD_PANEL_ROWS, 2, xt, ldxt, wf, K, out, pf, pfl);
        else
            z_panel(SL_SIMD_PANEL_ROWS, 1, xt, ldxt, wf, K, out, pf, pfl);
        return;
    }
    for (int n = 0; n < nb; n++) {
        if (mv == 2)
            z_panel(1, 2, xt, ldxt, wf + (size_t)n * K, K, out + n * 32, NULL, 0);
        else
            z_panel(1, 1, xt, ldxt, wf + (size_t)n * K, K, out + n * 32, NULL, 0);
    }
}

/* xp(round_up(K, 32)) = x(K) with each 32-chunk split [even | odd], zero padded. */
static void z_bf16p_prep_x(float *xp, const float *x, size_t K) {
    size_t kp = (K + 31) & ~(size_t)31;
    for (size_t c = 0; c < kp; c += 32)
        for (size_t i = 0; i < 16; i++) {
            size_t e = c + 2 * i, o = e + 1;
            xp[c + i] = e < K ? x[e] : 0.0f;
            xp[c + 16 + i] = o < K ? x[o] : 0.0f;
        }
}

AI void z_gemv(sl_dtype_t dt, const float *x, size_t ldx, int mb, const void *w, size_t ldw, int rb,
               size_t K, float *out, const void *pf, size_t pf_bytes) {
    size_t es = dt == SL_DTYPE_F32 ? 4 : 2;
    const char *pfc = pf;
    size_t pfl = pf ? (pf_bytes + 63) / 64 : 0;
    if (rb == 4) {
        switch (mb) {
        case 4:
            z_tile(dt, 4, 4, x, ldx, w, ldw, K, out, pfc, pfl);
            return;
        case 3:
            z_tile(dt, 3, 4, x, ldx, w, ldw, K, out, pfc, pfl);
            return;
        case 2:
            z_tile(dt, 2, 4, x, ldx, w, ldw, K, out, pfc, pfl);
            return;
        case 1:
            z_tile(dt, 1, 4, x, ldx, w, ldw, K, out, pfc, pfl);
            return;
        default:
            return;
        }
    }
    for (int r = 0; r < rb; r++) {
        const void *wr = (const char *)w + (size_t)r * ldw * es;
        float o[16];
        if (mb == 4) {
            z_tile(dt, 4, 1, x, ldx, wr, ldw, K, o, NULL, 0);
            for (int m = 0; m < 4; m++) out[m * 4 + r] = o[m * 4];
        } else {
            for (int m = 0; m < mb; m++) {
                z_tile(dt, 1, 1, x + (size_t)m * ldx, ldx, wr, ldw, K, o, NULL, 0);
                out[m * 4 + r] = o[0];
            }
        }
    }
}

static void z_gemv_f32(const float *x, size_t ldx, int mb, const void *w, size_t ldw, int rb,
                       size_t K, float *out, const void *pf, size_t pf_bytes) {
    z_gemv(SL_DTYPE_F32, x, ldx, mb, w, ldw, rb, K, out, pf, pf_bytes);
}
static void z_gemv_f16(const float *x, size_t ldx, int mb, const void *w, size_t ldw, int rb,
                       size_t K, float *out, const void *pf, size_t pf_bytes) {
    z_gemv(SL_DTYPE_F16, x, ldx, mb, w, ldw, rb, K, out, pf, pf_bytes);
}
static void z_gemv_bf16(const float *x, size_t ldx, int mb, const void *w, size_t ldw, int rb,
                        size_t K, float *out, const void *pf, size_t pf_bytes) {
    z_gemv(SL_DTYPE_BF16, x, ldx, mb, w, ldw, rb, K, out, pf, pf_bytes);
}

static void z_f16_to_f32(float *dst, const uint16_t *src, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, z_load_w_full(SL_DTYPE_F16, src, i));
    if (i < n) {
        __mmask16 mask = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(dst + i, mask, z_load_w(SL_DTYPE_F16, src, i, mask));
    }
}

static void z_bf16_to_f32(float *dst, const uint16_t *src, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, z_load_w_full(SL_DTYPE_BF16, src, i));
    if (i < n) {
        __mmask16 mask = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(dst + i, mask, z_load_w(SL_DTYPE_BF16, src, i, mask));
    }
}

static float z_dot(const float *a, const float *b, size_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        size_t left = n - i;
        __mmask16 mask = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i),
                             s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static void z_axpby(float *y, float alpha, const float *x, float beta, size_t n) {
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (size_t i = 0; i < n; i += 16) {
        size_t left = n - i;
        __mmask16 mask = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
        __m512 yv = _mm512_maskz_loadu_ps(mask, y + i);
        __m512 xv = _mm512_maskz_loadu_ps(mask, x + i);
        _mm512_mask_storeu_ps(y + i, mask, _mm512_fmadd_ps(vb, xv, _mm512_mul_ps(va, yv)));
    }
}

static void z_attn_scores(const float *q, const float *k, size_t hd, size_t n, float scale,
                          float *s) {
    size_t c = 0;
    __m512 sv = _mm512_set1_ps(scale);
    for (; c + 16 <= n; c += 16) { /* 16 keys: 16 partial vectors, one transposing tree */
        __m512 acc[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
        for (size_t d = 0; d < hd; d += 16) {
            size_t left = hd - d;
            __mmask16 mask = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
            __m512 qv = _mm512_maskz_loadu_ps(mask, q + d);
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                acc[i] =
                    _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(mask, k + (c + i) * hd + d), acc[i]);
        }
        float o[16];
        z_hsum16(acc, o);
        _mm512_storeu_ps(s + c, _mm512_mul_ps(_mm512_loadu_ps(o), sv));
    }
    for (; c < n; c++) {
        __m512 acc = _mm512_setzero_ps();
        for (size_t d = 0; d < hd; d += 16) {
            size_t left = hd - d;
            __mmask16 mask = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, q + d),
                                  _mm512_maskz_loadu_ps(mask, k + c * hd + d), acc);
        }
        s[c] = _mm512_reduce_add_ps(acc) * scale;
    }
}

static void z_attn_accum(float *acc, const float *v, const float *p, size_t n, size_t hd) {
    for (size_t d = 0; d < hd; d += 64) { /* up to 4 vectors of acc held over the run */
        __m512 a[4];
        __mmask16 mk[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            size_t o = d + 16 * (size_t)i, left = o < hd ? hd - o : 0;
            mk[i] = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
            a[i] = _mm512_maskz_loadu_ps(mk[i], acc + o);
        }
        for (size_t c = 0; c < n; c++) {
            __m512 pv = _mm512_set1_ps(p[c]);
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                a[i] = _mm512_fmadd_ps(
                    pv, _mm512_maskz_loadu_ps(mk[i], v + c * hd + d + 16 * (size_t)i), a[i]);
        }
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) _mm512_mask_storeu_ps(acc + d + 16 * (size_t)i, mk[i], a[i]);
    }
}

/* exp(x): Cephes' expf (x = n ln2 + r, degree-6 polynomial in r, then
 * scaled by 2^n with vscalefps, which overflows to Inf and underflows to 0
 * cleanly); x is clamped to [-104, 89] first, where expf is 0 / Inf anyway. */
AI __m512 z_exp(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(89.0f)), _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 e = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(e, n);
}

static void z_silu_mul(float *y, const float *g, const float *u, size_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 16) {
        size_t left = n - i;
        __mmask16 mask = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
        __m512 gv = _mm512_maskz_loadu_ps(mask, g + i), uv = _mm512_maskz_loadu_ps(mask, u + i);
        __m512 d = _mm512_add_ps(one, z_exp(_mm512_sub_ps(_mm512_setzero_ps(), gv)));
        _mm512_mask_storeu_ps(y + i, mask, _mm512_mul_ps(_mm512_div_ps(gv, d), uv));
    }
}

/* RMSNorm rows: four 8-lane double sums of squares (each f32 widened, so
 * the products are exact and only the sums round), then (x * s) * w. */
static double z_sumsq(const float *x, size_t n) {
    __m512d s0 = _mm512_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512d a = _mm512_cvtps_pd(_mm256_loadu_ps(x + i));
        __m512d b = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8));
        __m512d c = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 16));
        __m512d d = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 24));
        s0 = _mm512_fmadd_pd(a, a, s0);
        s1 = _mm512_fmadd_pd(b, b, s1);
        s2 = _mm512_fmadd_pd(c, c, s2);
        s3 = _mm512_fmadd_pd(d, d, s3);
    }
    for (; i < n; i += 8) {
        size_t left = n - i;
        __mmask8 mask = left >= 8 ? (__mmask8)0xff : (__mmask8)((1u << left) - 1u);
        __m512d a = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask, x + i));
        s0 = _mm512_fmadd_pd(a, a, s0);
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(s0, s1), _mm512_add_pd(s2, s3)));
}

static void z_scale_mul(float *y, const float *x, float s, const float *w, size_t n) {
    const __m512 sv = _mm512_set1_ps(s);
    for (size_t i = 0; i < n; i += 16) {
        size_t left = n - i;
        __mmask16 mask = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
        __m512 xv = _mm512_maskz_loadu_ps(mask, x + i), wv = _mm512_maskz_loadu_ps(mask, w + i);
        _mm512_mask_storeu_ps(y + i, mask, _mm512_mul_ps(_mm512_mul_ps(xv, sv), wv));
    }
}

/* The AVX-512 members, shared by the three tables built on them. */
#define Z_TABLE_COMMON                                                                             \
    .f16_to_f32 = z_f16_to_f32, .bf16_to_f32 = z_bf16_to_f32,                                      \
    .gemv_tile =                                                                                   \
        {[SL_DTYPE_F32] = z_gemv_f32, [SL_DTYPE_F16] = z_gemv_f16, [SL_DTYPE_BF16] = z_gemv_bf16}, \
    .gemv_tile_bf16p = z_gemv_bf16p, .bf16p_prep_x = z_bf16p_prep_x, .gemm_panel = z_gemm_panel,   \
    .dot = z_dot, .axpby = z_axpby, .attn_scores = z_attn_scores, .attn_accum = z_attn_accum,      \
    .silu_mul = z_silu_mul, .sumsq = z_sumsq, .scale_mul = z_scale_mul

const sl_cpu_simd_t sl_cpu_simd_avx512 = {
    .isa = SL_CPU_ISA_AVX512,
    .name = "avx512",
    Z_TABLE_COMMON,
};

/* + bf16 dot products (simd_amx.c) for bf16 weights at M >= 2 */
const sl_cpu_simd_t sl_cpu_simd_avx512bf16 = {
    .isa = SL_CPU_ISA_AVX512_BF16,
    .name = "avx512bf16",
    Z_TABLE_COMMON,
    .bf16x_pack = sl_simd_bf16x_pack_avx512,
    .gemm_bf16x = sl_simd_gemm_bf16x_avx512bf16,
};

/* + AMX tiles (simd_amx.c) for bf16 weights at M >= 2 */
const sl_cpu_simd_t sl_cpu_simd_amx = {
    .isa = SL_CPU_ISA_AMX,
    .name = "amx",
    Z_TABLE_COMMON,
    .bf16x_pack = sl_simd_bf16x_pack_avx512,
    .gemm_bf16x = sl_simd_gemm_bf16x_amx,
};
#endif
