/* simd_amx.c - bf16-weight GEMM for batches (M >= 2) on AMX and AVX512_BF16.
 *
 * The "bf16x" kernels of simd.h: x is split into bf16 hi + lo parts once per
 * call and packed as AMX B tiles (VNNI: [k-pair][m][2]); the weights are used
 * as they are stored (Hugging Face (N, K) row-major bf16), with no repacking:
 *  - AMX: a 16-row x 32-k slice of W is an A tile read straight from the
 *    weights (stride K * 2 bytes); C^T tiles are 16 (n) x 16 (m) f32. Two A
 *    tiles, two B tiles, four C tiles: 32 weight rows x 32 rows of x per pass.
 *  - AVX512_BF16: each 32-bit (k, k+1) weight pair is broadcast and
 *    vdpbf16ps'd against the same packed B rows, 12 weight rows x 32 rows of x
 *    in 24 accumulators, like the f32 panel kernel but with no widening.
 * Both run hi and lo through the same accumulators, so the result is the f32
 * dot product to ~2^-17 relative per term (both flush bf16 denormals).
 *
 * Compiled for these ISAs by the pragma below; reached only through the
 * tables in simd_avx512.c, which sl_cpu_simd_get() hands out after cpuid (and,
 * for AMX, the kernel's tile-data permission) said yes. No kernel reads a
 * weight outside the nb rows of K it was given: slices that would (a K tail,
 * fewer than 16 rows) are staged through a zero-padded buffer on the stack.
 */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16,avx2,fma,f16c")
#include "kernels/cpu/simd.h"

#include <immintrin.h>
#include <stdbool.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

/* Software prefetch distance along each weight row, in 32-k chunks (64 B). */
#define BX_PF_CHUNKS 8

/* (x(16 lanes), y(16 lanes)) f32 -> the bf16 of each, RNE, NaN kept quiet, as
 * 32 16-bit lanes in the order x0..x15 y0..y15 (plain AVX-512F/BW, so the
 * pack needs no AVX512_BF16). */
AI __m512i bx_round2(__m512 x, __m512 y) {
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
    __m512i ux = _mm512_castps_si512(x), uy = _mm512_castps_si512(y);
    __m512i rx = _mm512_add_epi32(
        ux, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(ux, 16), one)));
    __m512i ry = _mm512_add_epi32(
        uy, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(uy, 16), one)));
    /* NaN: truncate and set the quiet bit instead of rounding (which could carry into Inf) */
    __mmask16 nx = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q),
              ny = _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q);
    const __m512i q = _mm512_set1_epi32(0x00400000);
    rx = _mm512_mask_or_epi32(rx, nx, ux, q);
    ry = _mm512_mask_or_epi32(ry, ny, uy, q);
    rx = _mm512_srli_epi32(rx, 16);
    ry = _mm512_srli_epi32(ry, 16);
    __m256i hx = _mm512_cvtepi32_epi16(rx), hy = _mm512_cvtepi32_epi16(ry);
    return _mm512_inserti64x4(_mm512_castsi256_si512(hx), hy, 1);
}

/* bf16 lanes (32) -> f32 of lanes 0..15 and 16..31 */
AI __m512 bx_widen_lo(__m512i h) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
}
AI __m512 bx_widen_hi(__m512i h) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
}

/* r[16] (rows) -> r[16] (columns): a 16 x 16 transpose of 32-bit lanes in 64
 * shuffles (unpack within 128-bit lanes, then lane shuffles). */
AI void bx_transpose16(__m512 r[16]) {
    __m512 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) { /* r[4i + e]: lane L holds rows 4i..4i+3 of column 4L + e */
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
        __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    __m512 o[16];
#pragma GCC unroll 4
    for (int e = 0; e < 4; e++) {
        __m512 a = _mm512_shuffle_f32x4(r[e], r[4 + e], 0x88);
        __m512 b = _mm512_shuffle_f32x4(r[e], r[4 + e], 0xdd);
        __m512 c = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0x88);
        __m512 d = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0xdd);
        o[e] = _mm512_shuffle_f32x4(a, c, 0x88);
        o[8 + e] = _mm512_shuffle_f32x4(a, c, 0xdd);
        o[4 + e] = _mm512_shuffle_f32x4(b, d, 0x88);
        o[12 + e] = _mm512_shuffle_f32x4(b, d, 0xdd);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) r[i] = o[i];
}

void sl_simd_bf16x_pack_avx512(uint16_t *xb, const float *x, size_t ldx, size_t M, size_t K,
                               size_t c0, size_t c1) {
    size_t mb = (M + 15) / 16;
    const __m512 inf = _mm512_set1_ps(__builtin_inff());
    for (size_t c = c0; c < c1; c++) {
        size_t k = c * 32, left = K - k;
        __mmask16 m0 = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1u);
        __mmask16 m1 = left >= 32 ? 0xffff : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1u);
        for (size_t j = 0; j < mb; j++) {
            __m512 hv[16], lv[16]; /* row mi: its 16 (k, k+1) words of hi, of lo */
            for (size_t mi = 0; mi < 16; mi++) {
                size_t m = j * 16 + mi;
                if (m >= M) {
                    hv[mi] = lv[mi] = _mm512_setzero_ps();
                    continue;
                }
                const float *xr = x + m * ldx + k;
                __m512 a = _mm512_maskz_loadu_ps(m0, xr), b = _mm512_maskz_loadu_ps(m1, xr + 16);
                __m512i hi = bx_round2(a, b);
                __m512 ha = bx_widen_lo(hi), hb = bx_widen_hi(hi);
                /* hi = +-Inf or NaN: lo = 0, so Inf - Inf does not turn into NaN */
                __mmask16 fa = _mm512_cmp_ps_mask(_mm512_abs_ps(ha), inf, _CMP_LT_OQ);
                __mmask16 fb = _mm512_cmp_ps_mask(_mm512_abs_ps(hb), inf, _CMP_LT_OQ);
                __m512i lo =
                    bx_round2(_mm512_maskz_sub_ps(fa, a, ha), _mm512_maskz_sub_ps(fb, b, hb));
                hv[mi] = _mm512_castsi512_ps(hi);
                lv[mi] = _mm512_castsi512_ps(lo);
            }
            bx_transpose16(hv);
            bx_transpose16(lv);
            float *dst = (float *)(xb + (c * mb + j) * 1024); /* (hi|lo, 16 k-pairs, 16 m) words */
#pragma GCC unroll 16
            for (int p = 0; p < 16; p++) {
                _mm512_storeu_ps(dst + p * 16, hv[p]);
                _mm512_storeu_ps(dst + 256 + p * 16, lv[p]);
            }
        }
    }
}

/* Adds the 16 x 16 block ct (n-major: ct[n * 16 + m]) into y (m-major) for
 * n < nn, m < mm: y[m * ldy + n] = ct + bias[n], or y + that with acc. */
AI void bx_store_t(const float *ct, int nn, int mm, float *y, size_t ldy, const float *bias,
                   bool acc) {
    __m512 r[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(ct + i * 16);
    bx_transpose16(r);
    __mmask16 mask = nn >= 16 ? 0xffff : (__mmask16)((1u << nn) - 1u);
    __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias) : _mm512_setzero_ps();
    for (int m = 0; m < mm; m++) {
        float *yr = y + (size_t)m * ldy;
        __m512 v = _mm512_add_ps(r[m], b);
        if (acc) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, yr), v);
        _mm512_mask_storeu_ps(yr, mask, v);
    }
}

/* ---- AMX ------------------------------------------------------------------------ */

typedef struct bx_tilecfg {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} bx_tilecfg_t;

/* Tiles 0-3: C (16 x 16 f32); 4, 5: A (16 weight rows x 32 k); 6, 7: B.
 * The configuration is per thread and survives context switches (XSAVE), and
 * nothing else here changes it, so each thread loads it once. */
static __thread bool bx_amx_configured;

static void bx_amx_config(void) {
    if (bx_amx_configured) return;
    bx_amx_configured = true;
    bx_tilecfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
}

/* The A operand of rows [r0, r0 + 16) of w, chunk c: straight from the
 * weights when the slice is whole, else staged zero-padded into st (16 x 32). */
AI const uint16_t *bx_a_slice(const uint16_t *w, size_t ldw, int nb, int r0, size_t K, size_t c,
                              uint16_t *st, size_t *stride) {
    size_t k = c * 32;
    if (r0 + 16 <= nb && k + 32 <= K) {
        *stride = ldw * 2;
        return w + (size_t)r0 * ldw + k;
    }
    memset(st, 0, 16 * 32 * sizeof *st);
    size_t kn = K - k < 32 ? K - k : 32;
    for (int r = 0; r < 16 && r0 + r < nb; r++)
        memcpy(st + r * 32, w + (size_t)(r0 + r) * ldw + k, kn * sizeof *st);
    *stride = 64;
    return st;
}

/* Output of gemm_bf16x: y (M, ldy) from column 0, bias (nb) or NULL, acc. */
typedef struct bx_out {
    float *y;
    size_t ldy, M;
    int nb;
    const float *bias;
    bool acc;
} bx_out_t;

/* C^T tile ct (16 n x 16 m) of rows n0.., m-block j into o->y. */
AI void bx_out_tile(const bx_out_t *o, const float *ct, int n0, size_t j) {
    int nn = o->nb - n0 < 16 ? o->nb - n0 : 16;
    size_t m0 = j * 16;
    int mm = o->M - m0 < 16 ? (int)(o->M - m0) : 16;
    bx_store_t(ct, nn, mm, o->y + m0 * o->ldy + (size_t)n0, o->ldy, o->bias ? o->bias + n0 : NULL,
               o->acc);
}

/* NT (1, 2) n-tiles x MT (1, 2) m-tiles from m-block j. */
AI void bx_amx_pass(const int NT, const int MT, const uint16_t *xb, size_t mb, size_t j,
                    const uint16_t *w, size_t ldw, int nb, size_t K, const bx_out_t *o) {
    size_t nc = (K + 31) / 32;
    uint16_t st[2][16 * 32] __attribute__((aligned(64)));
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (size_t c = 0; c < nc; c++) {
        size_t s0, s1 = 0;
        if (c + BX_PF_CHUNKS < nc)
            for (int r = 0; r < nb; r++)
                _mm_prefetch((const char *)(w + (size_t)r * ldw + (c + BX_PF_CHUNKS) * 32),
                             _MM_HINT_T0);
        const uint16_t *a0 = bx_a_slice(w, ldw, nb, 0, K, c, st[0], &s0);
        _tile_loadd(4, a0, s0);
        if (NT == 2) {
            const uint16_t *a1 = bx_a_slice(w, ldw, nb, 16, K, c, st[1], &s1);
            _tile_loadd(5, a1, s1);
        }
        const uint16_t *bh = xb + (c * mb + j) * 1024; /* hi of block j; lo at + 512 */
        _tile_loadd(6, bh, 64);
        if (MT == 2) _tile_loadd(7, bh + 1024, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (MT == 2) _tile_dpbf16ps(1, 4, 7);
        if (NT == 2) _tile_dpbf16ps(2, 5, 6);
        if (NT == 2 && MT == 2) _tile_dpbf16ps(3, 5, 7);
        _tile_loadd(6, bh + 512, 64);
        if (MT == 2) _tile_loadd(7, bh + 1024 + 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (MT == 2) _tile_dpbf16ps(1, 4, 7);
        if (NT == 2) _tile_dpbf16ps(2, 5, 6);
        if (NT == 2 && MT == 2) _tile_dpbf16ps(3, 5, 7);
    }
    float ct[4][256] __attribute__((aligned(64))); /* C^T tiles (16 n, 16 m) */
    _tile_stored(0, ct[0], 64);
    if (MT == 2) _tile_stored(1, ct[1], 64);
    if (NT == 2) _tile_stored(2, ct[2], 64);
    if (NT == 2 && MT == 2) _tile_stored(3, ct[3], 64);
    bx_out_tile(o, ct[0], 0, j);
    if (MT == 2) bx_out_tile(o, ct[1], 0, j + 1);
    if (NT == 2) bx_out_tile(o, ct[2], 16, j);
    if (NT == 2 && MT == 2) bx_out_tile(o, ct[3], 16, j + 1);
}

void sl_simd_gemm_bf16x_amx(const uint16_t *xb, size_t M, const uint16_t *w, size_t ldw, int nb,
                            size_t K, float *y, size_t ldy, const float *bias, bool acc) {
    size_t mb = (M + 15) / 16;
    bx_out_t o = {.y = y, .ldy = ldy, .M = M, .nb = nb, .bias = bias, .acc = acc}, *out = &o;
    bx_amx_config();
    for (size_t j = 0; j < mb; j += 2) {
        if (nb > 16) {
            if (j + 1 < mb)
                bx_amx_pass(2, 2, xb, mb, j, w, ldw, nb, K, out);
            else
                bx_amx_pass(2, 1, xb, mb, j, w, ldw, nb, K, out);
        } else {
            if (j + 1 < mb)
                bx_amx_pass(1, 2, xb, mb, j, w, ldw, nb, K, out);
            else
                bx_amx_pass(1, 1, xb, mb, j, w, ldw, nb, K, out);
        }
    }
}

/* ---- AVX512_BF16 ------------------------------------------------------------------ */

/* The (k, k+1) weight pair of row n as one 32-bit word; a lone last k pairs
 * with zero (never read past the row). */
AI uint32_t bx_pair(const uint16_t *wr, size_t k, size_t K) {
    uint32_t v;
    if (k + 1 < K) {
        memcpy(&v, wr + k, sizeof v);
        return v;
    }
    return wr[k];
}

/* NB weight rows (from row n0 of the call) x MV (1, 2) m-blocks from j. */
AI void bx_dp_panel(const int NB, const int MV, const uint16_t *xb, size_t mb, size_t j,
                    const uint16_t *w, size_t ldw, size_t K, const bx_out_t *o, int n0) {
    __m512 acc[12][2];
#pragma GCC unroll 12
    for (int n = 0; n < NB; n++)
#pragma GCC unroll 2
        for (int v = 0; v < MV; v++) acc[n][v] = _mm512_setzero_ps();
    size_t nc = (K + 31) / 32;
    for (size_t c = 0; c < nc; c++) {
        const uint16_t *bh = xb + (c * mb + j) * 1024;
        size_t np = (K - c * 32 + 1) / 2;
        if (np > 16) np = 16;
        if (c + BX_PF_CHUNKS < nc)
#pragma GCC unroll 12
            for (int n = 0; n < NB; n++)
                _mm_prefetch((const char *)(w + (size_t)n * ldw + (c + BX_PF_CHUNKS) * 32),
                             _MM_HINT_T0);
        for (size_t p = 0; p < np; p++) {
            __m512bh xh[2], xl[2];
#pragma GCC unroll 2
            for (int v = 0; v < MV; v++) {
                xh[v] = (__m512bh)_mm512_loadu_si512(bh + v * 1024 + p * 32);
                xl[v] = (__m512bh)_mm512_loadu_si512(bh + v * 1024 + 512 + p * 32);
            }
            size_t k = c * 32 + 2 * p;
#pragma GCC unroll 12
            for (int n = 0; n < NB; n++) {
                __m512bh b = (__m512bh)_mm512_set1_epi32((int)bx_pair(w + (size_t)n * ldw, k, K));
#pragma GCC unroll 2
                for (int v = 0; v < MV; v++) {
                    acc[n][v] = _mm512_dpbf16_ps(acc[n][v], xh[v], b);
                    acc[n][v] = _mm512_dpbf16_ps(acc[n][v], xl[v], b);
                }
            }
        }
    }
    float ct[2][256] __attribute__((aligned(64))); /* C^T (16 n, 16 m) per m-block */
#pragma GCC unroll 12
    for (int n = 0; n < NB; n++)
#pragma GCC unroll 2
        for (int v = 0; v < MV; v++) _mm512_store_ps(ct[v] + n * 16, acc[n][v]);
#pragma GCC unroll 16
    for (int n = NB; n < 16; n++) /* not stored to y, but transposed */
#pragma GCC unroll 2
        for (int v = 0; v < MV; v++) _mm512_store_ps(ct[v] + n * 16, _mm512_setzero_ps());
    bx_out_t on = *o;
    on.nb = n0 + NB; /* rows >= NB of ct are stale */
    for (int v = 0; v < MV; v++) bx_out_tile(&on, ct[v], n0, j + (size_t)v);
}

AI void bx_dp_rows(const int NB, const uint16_t *xb, size_t mb, const uint16_t *w, size_t ldw,
                   size_t K, const bx_out_t *o, int n0) {
    for (size_t j = 0; j < mb; j += 2) {
        if (j + 1 < mb)
            bx_dp_panel(NB, 2, xb, mb, j, w, ldw, K, o, n0);
        else
            bx_dp_panel(NB, 1, xb, mb, j, w, ldw, K, o, n0);
    }
}

void sl_simd_gemm_bf16x_avx512bf16(const uint16_t *xb, size_t M, const uint16_t *w, size_t ldw,
                                   int nb, size_t K, float *y, size_t ldy, const float *bias,
                                   bool acc) {
    size_t mb = (M + 15) / 16;
    bx_out_t o = {.y = y, .ldy = ldy, .M = M, .nb = nb, .bias = bias, .acc = acc};
    int n = 0;
    for (; n + 12 <= nb; n += 12) bx_dp_rows(12, xb, mb, w + (size_t)n * ldw, ldw, K, &o, n);
    for (; n + 4 <= nb; n += 4) bx_dp_rows(4, xb, mb, w + (size_t)n * ldw, ldw, K, &o, n);
    for (; n < nb; n++) bx_dp_rows(1, xb, mb, w + (size_t)n * ldw, ldw, K, &o, n);
}
#endif
