/* attention.cu - paged attention kernels; see attention.cuh. */
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/kv.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DPL     (SLC_MAX_HEAD_DIM / 32) /* head_dim elements per lane */
#define N_WARPS 4

/* Everything a kernel needs to find keys; passed by value. */
typedef struct att_geom {
    const unsigned char *base;
    size_t block_bytes;
    sl_dtype_t dt;
    uint32_t layer, nkv, bs, hd, n_heads, group, window;
    float scale;
    const uint32_t *tabs; /* concatenated block tables */
} att_geom_t;

/* One row of work: where its query sits, its sequence's table, its keys. */
typedef struct att_row {
    uint32_t row;     /* query row in q/out */
    uint32_t tab_off; /* offset of the sequence's block table in tabs */
    uint32_t lo, hi;  /* keys [lo, hi] inclusive */
} att_row_t;

__device__ __forceinline__ const void *att_kv(const att_geom_t &g, uint32_t j, uint32_t tab_off,
                                              uint32_t which, uint32_t kvh) {
    uint32_t b = g.tabs[tab_off + j / g.bs];
    size_t e = slc_kv_plane(g.layer, which, kvh, g.nkv, g.bs, g.hd) + (size_t)(j % g.bs) * g.hd;
    return g.base + (size_t)b * g.block_bytes + e * (g.dt == SL_DTYPE_F32 ? 4 : 2);
}

/* Online-softmax state of one warp: lane owns dims lane + 32 * i. */
struct att_state {
    float m, l, acc[DPL];
};

__device__ __forceinline__ void att_init(att_state &s) {
    s.m = -INFINITY;
    s.l = 0.0f;
#pragma unroll
    for (int i = 0; i < DPL; i++) s.acc[i] = 0.0f;
}

/* Folds key j (K row kp, V row vp) into s for the query in qr (scaled). */
__device__ __forceinline__ void att_step(att_state &s, const float *qr, const void *kp,
                                         const void *vp, sl_dtype_t dt, uint32_t hd, int lane) {
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        uint32_t d = lane + 32 * i;
        if (d < hd) dot += qr[i] * slc_load(kp, dt, d);
    }
    dot = slc_warp_sum(dot);
    float m2 = fmaxf(s.m, dot), a = __expf(s.m - m2), p = __expf(dot - m2);
    s.l = s.l * a + p;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        uint32_t d = lane + 32 * i;
        s.acc[i] = s.acc[i] * a + (d < hd ? p * slc_load(vp, dt, d) : 0.0f);
    }
    s.m = m2;
}

/* Merges the N_WARPS warp states of a CTA; thread 0..hd-1 hold the result in
 * (*m, *l, acc_out[d]) afterwards. sh_acc: (N_WARPS, SLC_MAX_HEAD_DIM). */
__device__ void att_merge_warps(const att_state &s, int warp, int lane, uint32_t hd, float *sh_m,
                                float *sh_l, float *sh_acc, float *m_out, float *l_out,
                                float *acc_out) {
    if (lane == 0) sh_m[warp] = s.m, sh_l[warp] = s.l;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        uint32_t d = lane + 32 * i;
        if (d < hd) sh_acc[warp * SLC_MAX_HEAD_DIM + d] = s.acc[i];
    }
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < N_WARPS; w++) M = fmaxf(M, sh_m[w]);
    float L = 0.0f;
    for (int w = 0; w < N_WARPS; w++)
        if (sh_m[w] != -INFINITY) L += sh_l[w] * __expf(sh_m[w] - M);
    *m_out = M;
    *l_out = L;
    for (uint32_t d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (int w = 0; w < N_WARPS; w++)
            if (sh_m[w] != -INFINITY) a += sh_acc[w * SLC_MAX_HEAD_DIM + d] * __expf(sh_m[w] - M);
        acc_out[d] = a;
    }
}

/* grid (n_rows, n_heads, n_split). partial: (n_rows, n_heads, n_split) x
 * (2 + hd) floats [m, l, acc...] when n_split > 1. */
__global__ void __launch_bounds__(N_WARPS * 32)
    att_rows_kernel(float *out, const float *q, att_geom_t g, const att_row_t *rows,
                    float *partial) {
    __shared__ float sh_m[N_WARPS], sh_l[N_WARPS];
    __shared__ float sh_acc[N_WARPS * SLC_MAX_HEAD_DIM];
    __shared__ float sh_res[SLC_MAX_HEAD_DIM];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    att_row_t r = rows[blockIdx.x];
    uint32_t h = blockIdx.y, kvh = h / g.group, split = blockIdx.z, n_split = gridDim.z;
    const float *qrow = q + ((size_t)r.row * g.n_heads + h) * g.hd;
    float qr[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        uint32_t d = lane + 32 * i;
        qr[i] = d < g.hd ? qrow[d] * g.scale : 0.0f;
    }
    uint32_t len = r.hi - r.lo + 1, chunk = (len + n_split - 1) / n_split;
    uint32_t b = r.lo + split * chunk, e = b + chunk; /* [b, e) ∩ [lo, hi] */
    if (e > r.hi + 1) e = r.hi + 1;
    att_state s;
    att_init(s);
    for (uint32_t j = b + warp; j < e; j += N_WARPS)
        att_step(s, qr, att_kv(g, j, r.tab_off, 0, kvh), att_kv(g, j, r.tab_off, 1, kvh), g.dt,
                 g.hd, lane);
    float M, L;
    att_merge_warps(s, warp, lane, g.hd, sh_m, sh_l, sh_acc, &M, &L, sh_res);
    if (n_split == 1) {
        float *o = out + ((size_t)r.row * g.n_heads + h) * g.hd;
        for (uint32_t d = threadIdx.x; d < g.hd; d += blockDim.x) o[d] = sh_res[d] / L;
    } else {
        float *pp = partial + (((size_t)blockIdx.x * g.n_heads + h) * n_split + split) * (2 + g.hd);
        if (threadIdx.x == 0) pp[0] = M, pp[1] = L;
        for (uint32_t d = threadIdx.x; d < g.hd; d += blockDim.x) pp[2 + d] = sh_res[d];
    }
}

/* grid (n_rows, n_heads): merges n_split partials into out. */
__global__ void att_combine_kernel(float *out, const att_row_t *rows, const float *partial,
                                   uint32_t n_heads, uint32_t hd, uint32_t n_split) {
    att_row_t r = rows[blockIdx.x];
    uint32_t h = blockIdx.y;
    const float *pp = partial + ((size_t)blockIdx.x * n_heads + h) * n_split * (2 + hd);
    float M = -INFINITY, L = 0.0f;
    for (uint32_t s = 0; s < n_split; s++) M = fmaxf(M, pp[s * (2 + hd)]);
    for (uint32_t s = 0; s < n_split; s++) {
        float m = pp[s * (2 + hd)];
        if (m != -INFINITY) L += pp[s * (2 + hd) + 1] * __expf(m - M);
    }
    float *o = out + ((size_t)r.row * n_heads + h) * hd;
    for (uint32_t d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (uint32_t s = 0; s < n_split; s++) {
            float m = pp[s * (2 + hd)];
            if (m != -INFINITY) a += pp[s * (2 + hd) + 2 + d] * __expf(m - M);
        }
        o[d] = a / L;
    }
}

/* A prefill tile: n consecutive rows of one sequence (rows[first..first+n)). */
typedef struct att_tile {
    uint32_t first, n;
} att_tile_t;

/* grid (n_tiles, n_heads); N_WARPS warps, each owning QTILE / N_WARPS rows.
 * K/V tiles of KTILE keys are widened to f32 in shared memory. */
#define ROWS_PER_WARP (SLC_ATT_QTILE / N_WARPS)
__global__ void __launch_bounds__(N_WARPS * 32)
    att_tiles_kernel(float *out, const float *q, att_geom_t g, const att_row_t *rows,
                     const att_tile_t *tiles) {
    __shared__ float sk[SLC_ATT_KTILE][SLC_MAX_HEAD_DIM];
    __shared__ float sv[SLC_ATT_KTILE][SLC_MAX_HEAD_DIM];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    att_tile_t t = tiles[blockIdx.x];
    uint32_t h = blockIdx.y, kvh = h / g.group;
    /* Key range of the whole tile: rows are consecutive positions. */
    uint32_t k_lo = rows[t.first].lo, k_hi = rows[t.first + t.n - 1].hi,
             tab_off = rows[t.first].tab_off;
    float qr[ROWS_PER_WARP][DPL];
    att_state s[ROWS_PER_WARP];
    att_row_t mine[ROWS_PER_WARP];
#pragma unroll
    for (int rr = 0; rr < ROWS_PER_WARP; rr++) {
        uint32_t idx = warp * ROWS_PER_WARP + rr;
        att_init(s[rr]);
        mine[rr] = idx < t.n ? rows[t.first + idx] : att_row_t{0, 0, 1, 0}; /* lo > hi: empty */
        const float *qrow = q + ((size_t)mine[rr].row * g.n_heads + h) * g.hd;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            uint32_t d = lane + 32 * i;
            qr[rr][i] = idx < t.n && d < g.hd ? qrow[d] * g.scale : 0.0f;
        }
    }
    for (uint32_t j0 = k_lo; j0 <= k_hi; j0 += SLC_ATT_KTILE) {
        uint32_t nk = k_hi + 1 - j0 < SLC_ATT_KTILE ? k_hi + 1 - j0 : SLC_ATT_KTILE;
        __syncthreads();
        for (uint32_t i = threadIdx.x; i < nk * g.hd; i += blockDim.x) {
            uint32_t kk = i / g.hd, d = i % g.hd;
            sk[kk][d] = slc_load(att_kv(g, j0 + kk, tab_off, 0, kvh), g.dt, d);
            sv[kk][d] = slc_load(att_kv(g, j0 + kk, tab_off, 1, kvh), g.dt, d);
        }
        __syncthreads();
        for (uint32_t kk = 0; kk < nk; kk++) {
            uint32_t j = j0 + kk;
#pragma unroll
            for (int rr = 0; rr < ROWS_PER_WARP; rr++)
                if (j >= mine[rr].lo && j <= mine[rr].hi)
                    att_step(s[rr], qr[rr], sk[kk], sv[kk], SL_DTYPE_F32, g.hd, lane);
        }
    }
#pragma unroll
    for (int rr = 0; rr < ROWS_PER_WARP; rr++) {
        uint32_t idx = warp * ROWS_PER_WARP + rr;
        if (idx >= t.n) continue;
        float *o = out + ((size_t)mine[rr].row * g.n_heads + h) * g.hd;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            uint32_t d = lane + 32 * i;
            if (d < g.hd) o[d] = s[rr].acc[i] / s[rr].l;
        }
    }
}

/* Host plan: rows by kind, tiles, concatenated tables, one staging upload. */
int slc_attention(slc_ctx_t *c, float *out, const float *q, const sl_kv_layout_t *kv,
                  uint32_t layer, const sl_attn_seq_t *seqs, uint32_t n_seqs, uint32_t n_heads,
                  uint32_t window, float scale) {
    int rc = 0;
    if (kv->head_dim > SLC_MAX_HEAD_DIM || n_heads > 65535) return SL_EUNSUPPORTED; /* grid.y */
    const char *force = getenv("SLUICE_CUDA_ATTN");
    bool force_rows = force && !strcmp(force, "rows"),
         force_split = force && !strcmp(force, "split");
    bool force_tiles = force && !strcmp(force, "tiles");
    size_t n_tab = 0, T = 0, n_tiles = 0;
    for (uint32_t s = 0; s < n_seqs; s++) {
        if (!seqs[s].n_tokens) continue;
        n_tab += (seqs[s].pos + seqs[s].n_tokens + kv->block_size - 1) / kv->block_size;
        T += seqs[s].n_tokens;
        n_tiles += (seqs[s].n_tokens + SLC_ATT_QTILE - 1) / SLC_ATT_QTILE;
    }
    /* host plan: (T) rows ordered decode-first, then prefill; tiles; tables */
    size_t bytes = T * sizeof(att_row_t) + n_tiles * sizeof(att_tile_t) + n_tab * sizeof(uint32_t);
    unsigned char *plan = (unsigned char *)malloc(bytes ? bytes : 1);
    if (!plan) return SL_ENOMEM;
    att_row_t *rows = (att_row_t *)plan;
    att_tile_t *tiles = (att_tile_t *)(plan + T * sizeof(att_row_t));
    uint32_t *tabs = (uint32_t *)(plan + T * sizeof(att_row_t) + n_tiles * sizeof(att_tile_t));
    uint32_t n_dec = 0, n_pre = 0, nt = 0, tab_off = 0, row = 0, max_len = 0;
    /* decode rows fill rows[0..n_dec), prefill rows rows[n_dec_total..) */
    uint32_t n_dec_total = 0;
    for (uint32_t s = 0; s < n_seqs; s++)
        if (seqs[s].n_tokens == 1 || (force_rows || force_split)) n_dec_total += seqs[s].n_tokens;
    if (force_tiles) n_dec_total = 0;
    for (uint32_t s = 0; s < n_seqs; s++) {
        const sl_attn_seq_t *sq = &seqs[s];
        if (!sq->n_tokens) continue;
        uint32_t nb = (sq->pos + sq->n_tokens + kv->block_size - 1) / kv->block_size;
        memcpy(tabs + tab_off, sq->blocks, (size_t)nb * sizeof(uint32_t));
        bool dec = !force_tiles && (sq->n_tokens == 1 || force_rows || force_split);
        for (uint32_t i = 0; i < sq->n_tokens; i++, row++) {
            uint32_t p = sq->pos + i, lo = window && p + 1 > window ? p + 1 - window : 0;
            att_row_t r = {row, tab_off, lo, p};
            if (p - lo + 1 > max_len && dec) max_len = p - lo + 1;
            if (dec) {
                rows[n_dec++] = r;
            } else {
                if (i % SLC_ATT_QTILE == 0)
                    tiles[nt++] = att_tile_t{n_dec_total + n_pre, sq->n_tokens - i < SLC_ATT_QTILE
                                                                      ? sq->n_tokens - i
                                                                      : SLC_ATT_QTILE};
                rows[n_dec_total + n_pre++] = r;
            }
        }
        tab_off += nb;
    }
    void *dplan = NULL;
    if ((rc = slc_stage(c, plan, bytes, &dplan))) goto out;
    {
        const unsigned char *dp = (const unsigned char *)dplan;
        att_geom_t g = {
            (const unsigned char *)kv->base,
            kv->block_bytes,
            kv->dtype,
            layer,
            kv->n_kv_heads,
            kv->block_size,
            kv->head_dim,
            n_heads,
            n_heads / kv->n_kv_heads,
            window,
            scale > 0.0f ? scale : 1.0f / sqrtf((float)kv->head_dim),
            (const uint32_t *)(dp + T * sizeof(att_row_t) + n_tiles * sizeof(att_tile_t))};
        const att_row_t *drows = (const att_row_t *)dp;
        const att_tile_t *dtiles = (const att_tile_t *)(dp + T * sizeof(att_row_t));
        if (n_dec) {
            /* split-K when the rows are long and too few CTAs fill the SMs */
            uint32_t n_split = 1, ctas = n_dec * n_heads;
            if (force_split)
                n_split = max_len < 4 ? 1 : 4;
            else if (max_len >= 1024 && ctas < 2u * (uint32_t)c->sm_count)
                n_split = (uint32_t)((2u * c->sm_count + ctas - 1) / ctas);
            if (n_split > max_len / 256 + 1 && !force_split) n_split = max_len / 256 + 1;
            if (n_split > 64) n_split = 64;
            float *partial = NULL;
            if (n_split > 1) {
                size_t pb = (size_t)n_dec * n_heads * n_split * (2 + kv->head_dim) * sizeof(float);
                partial = (float *)slc_scratch(c, pb);
                if (!partial) {
                    rc = SL_ENOMEM;
                    goto out;
                }
            }
            att_rows_kernel<<<dim3(n_dec, n_heads, n_split), N_WARPS * 32, 0, c->stream>>>(
                out, q, g, drows, partial);
            if ((rc = SLC_LAUNCHED())) goto out;
            if (n_split > 1) {
                att_combine_kernel<<<dim3(n_dec, n_heads), 128, 0, c->stream>>>(
                    out, drows, partial, n_heads, kv->head_dim, n_split);
                if ((rc = SLC_LAUNCHED())) goto out;
            }
        }
        if (nt) {
            att_tiles_kernel<<<dim3(nt, n_heads), N_WARPS * 32, 0, c->stream>>>(out, q, g, drows,
                                                                                dtiles);
            rc = SLC_LAUNCHED();
        }
    }
out:
    free(plan);
    return rc;
}
