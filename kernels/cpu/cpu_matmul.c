/* cpu_matmul.c - y(M,N) = x(M,K) · W(N,K)^T [+ bias] [+ y] on the CPU.
 *
 * Four paths, all split over N on the backend's pool:
 *  - bf16 weights, bf16x_min_m <= M <= bf16x_max_m, where the ISA has bf16
 *    dot products (AMX, AVX512_BF16): x is split into bf16 hi + lo and packed
 *    once per call, then panels of 32 weight rows are read straight from the
 *    weights by gemm_bf16x for every row of x (simd_amx.c).
 *  - small M (decode): tiles of 4 weight rows are read once from memory and
 *    used for every row of x while they sit in L1, so a step streams the
 *    weights once whatever the batch; bf16/f16 are widened in registers.
 *  - panel_min_m <= M < gemm_min_m (batched decode; by default f32 weights
 *    from M = 24, where it measured faster than the tile), where the ISA has a
 *    panel kernel: panels of 12 weight rows are widened to f32 once into a
 *    per-thread buffer and each weight is broadcast against x transposed
 *    (K, round_up(M, 16)), 32 rows of x at a time: no horizontal sums and
 *    no re-widening per group of rows, so the FMAs run near peak.
 *  - M >= gemm_min_m (prefill): single-threaded SGEMM per block of N, with
 *    bf16/f16 blocks converted to f32 in a per-thread scratch first.
 */
#include "common/base/err.h"
#include "kernels/cpu/cpu_internal.h"

#include <cblas.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

typedef struct mm_args {
    const cpu_ctx_t *c;
    float *y;       /* (M, N) */
    const float *x; /* (M, K) */
    const char *w;  /* (N, K) of wdt */
    sl_dtype_t wdt;
    size_t es;         /* bytes per weight element */
    const float *bias; /* (N) or NULL */
    uint32_t M, N, K;
    bool acc;
    uint32_t nb;               /* rows of W per SGEMM block */
    sl_simd_gemv_tile_fn tile; /* GEMV path: the tile kernel, */
    const float *xg;           /* the x it reads (M, ldx), */
    size_t ldx;                /* and its row stride */
    const uint16_t *xb;        /* bf16x path: the packed x */
    /* One-job matmuls (mm_job_task): prep(begin, end) over [0, n_prep)
     * units of x preparation, prep_g per item, then work(begin, end) over
     * [0, n_work) weight panels, work_g per item. */
    sl_cpu_pool_fn prep, work;
    size_t n_prep, prep_g, n_work, work_g;
    size_t prep_items;       /* ceil(n_prep / prep_g) */
    atomic_size_t prep_done; /* prep items finished */
} mm_args_t;

static void mm_bf16x_pack_task(void *arg, size_t begin, size_t end, int tid) {
    (void)tid;
    const mm_args_t *a = arg;
    a->c->simd->bf16x_pack(a->c->xb, a->x, a->K, a->M, a->K, begin, end);
}

static void mm_bf16x_task(void *arg, size_t begin, size_t end, int tid) {
    (void)tid;
    const mm_args_t *a = arg;
    size_t K = a->K, N = a->N, P = SL_SIMD_BF16X_ROWS;
    for (size_t p = begin; p < end; p++) {
        size_t n0 = p * P, nb = N - n0 < P ? N - n0 : P;
        a->c->simd->gemm_bf16x(a->xb, a->M, (const uint16_t *)a->w + n0 * K, K, (int)nb, K,
                               a->y + n0, N, a->bias ? a->bias + n0 : NULL, a->acc);
    }
}

/* A decode batch's matmul as one pool job: the first items prepare x (the
 * bf16x packing, or the panel path's transpose), the rest compute weight
 * panels. The cursor hands the prep items out first, so a thread that
 * reaches a panel waits only for prep items another thread is running at
 * that moment. As two jobs (or a prep on the caller alone, f32) a batch-32
 * decode step paid a second dispatch and join, with its idle tail, on each
 * of its ~50 matmuls (bf16: ~4% of the step's wall time). Single-panel
 * items measured slower: adjacent panels on one thread stream better. */
static void mm_job_task(void *arg, size_t begin, size_t end, int tid) {
    mm_args_t *a = arg;
    for (size_t i = begin; i < end; i++) {
        if (i < a->prep_items) {
            size_t b = i * a->prep_g, e = b + a->prep_g < a->n_prep ? b + a->prep_g : a->n_prep;
            a->prep(a, b, e, tid);
            atomic_fetch_add_explicit(&a->prep_done, 1, memory_order_release);
            continue;
        }
        for (unsigned spin = 0;
             atomic_load_explicit(&a->prep_done, memory_order_acquire) < a->prep_items; spin++) {
            if (spin >= 4096) /* the other thread was descheduled: let it run */
                sched_yield();
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
        size_t b = (i - a->prep_items) * a->work_g;
        a->work(a, b, b + a->work_g < a->n_work ? b + a->work_g : a->n_work, tid);
    }
}

/* Runs prep over n_prep units and then work over n_work panels as one job
 * on the pool (grains as the two separate jobs had). */
static void mm_job_run(cpu_ctx_t *c, mm_args_t *a, sl_cpu_pool_fn prep, size_t n_prep,
                       sl_cpu_pool_fn work, size_t n_work) {
    size_t nt = (size_t)c->n_threads;
    a->prep = prep;
    a->work = work;
    a->n_prep = n_prep;
    a->prep_g = (n_prep + nt * 2 - 1) / (nt * 2);
    a->prep_items = (n_prep + a->prep_g - 1) / a->prep_g;
    a->n_work = n_work;
    a->work_g = (n_work + nt * 4 - 1) / (nt * 4);
    atomic_store_explicit(&a->prep_done, 0, memory_order_relaxed);
    sl_cpu_pool_for(c->pool, a->prep_items + (n_work + a->work_g - 1) / a->work_g, 1, mm_job_task,
                    a);
}

/* Panel path prep: rows [k0, k1) of xt (K, ldx) = x transposed, zero padded. */
static void mm_transpose_task(void *arg, size_t k0, size_t k1, int tid) {
    (void)tid;
    const mm_args_t *a = arg;
    float *xt = (float *)a->xg;
    for (size_t k = k0; k < k1; k++) {
        float *xr = xt + k * a->ldx;
        for (size_t m = 0; m < a->M; m++) xr[m] = a->x[m * a->K + k];
        for (size_t m = a->M; m < a->ldx; m++) xr[m] = 0.0f;
    }
}

/* y[m][n0 + r] = v[r * vs] (+ bias[n0 + r]) (+ y[m][n0 + r] with acc), r < nb:
 * the GEMV and panel paths' store of one row of a tile's results. */
static inline void mm_store_row(const mm_args_t *a, size_t m, size_t n0, size_t nb, const float *v,
                                size_t vs) {
    float *yr = a->y + m * a->N + n0;
    for (size_t r = 0; r < nb; r++) {
        float t = v[r * vs];
        if (a->bias) t += a->bias[n0 + r];
        yr[r] = a->acc ? yr[r] + t : t;
    }
}

static void mm_gemv_task(void *arg, size_t begin, size_t end, int tid) {
    (void)tid;
    const mm_args_t *a = arg;
    sl_simd_gemv_tile_fn tile = a->tile;
    const float *x = a->xg;
    size_t K = a->K, N = a->N, ldx = a->ldx;
    float out[16];
    for (size_t t = begin; t < end; t++) {
        size_t n0 = t * 4;
        int rb = N - n0 < 4 ? (int)(N - n0) : 4;
        const char *wt = a->w + n0 * K * a->es;
        /* With M > 1 each tile is computed from L1 for a while: prefetch the
         * next tile a slice per m-block so the weight stream overlaps the
         * FMAs. At M = 1 the loop is a pure stream that the hardware
         * prefetcher serves better alone (measured). */
        size_t next_rows = a->M > 1 && N - n0 > 4 ? (N - n0 - 4 < 4 ? N - n0 - 4 : 4) : 0;
        size_t pf_total = next_rows * K * a->es, n_mb = ((size_t)a->M + 3) / 4, j = 0;
        for (uint32_t m0 = 0; m0 < a->M; m0 += 4, j++) {
            int mb = a->M - m0 < 4 ? (int)(a->M - m0) : 4;
            size_t s0 = pf_total * j / n_mb, s1 = pf_total * (j + 1) / n_mb;
            tile(x + (size_t)m0 * ldx, ldx, mb, wt, K, rb, K, out,
                 pf_total ? wt + 4 * K * a->es + s0 : NULL, s1 - s0);
            for (int m = 0; m < mb; m++)
                mm_store_row(a, (size_t)m0 + m, n0, (size_t)rb, out + m * 4, 1);
        }
    }
}

static void mm_panel_task(void *arg, size_t begin, size_t end, int tid) {
    const mm_args_t *a = arg;
    const sl_cpu_simd_t *simd = a->c->simd;
    size_t K = a->K, N = a->N, P = SL_SIMD_PANEL_ROWS, es = a->es;
    float out[SL_SIMD_PANEL_ROWS * 32]; /* (P, 32) one panel's y for 32 rows of x, transposed */
    for (size_t p = begin; p < end; p++) {
        size_t n0 = p * P, nb = N - n0 < P ? N - n0 : P;
        const char *src = a->w + n0 * K * es;
        const float *wf = (const float *)src;
        if (a->wdt != SL_DTYPE_F32) {
            float *buf = a->c->scratch[tid]; /* (nb, K) f32 */
            cpu_widen(simd, buf, src, a->wdt, nb * K);
            wf = buf;
        }
        /* pull the next panel in while this one computes */
        size_t next = p + 1 < end ? (N - n0 - nb < P ? N - n0 - nb : P) : 0;
        for (uint32_t m0 = 0; m0 < a->M; m0 += 32) {
            uint32_t mr = a->M - m0 < 32 ? a->M - m0 : 32;
            simd->gemm_panel(a->xg + m0, a->ldx, mr > 16 ? 2 : 1, wf, (int)nb, K, out,
                             m0 == 0 && next ? src + nb * K * es : NULL, next * K * es);
            for (uint32_t m = 0; m < mr; m++) mm_store_row(a, (size_t)m0 + m, n0, nb, out + m, 32);
        }
    }
}

/* Makes c->xp hold at least rows * cols floats. 0 or SL_ENOMEM (also when
 * the size overflows). */
static int mm_xp_reserve(cpu_ctx_t *c, size_t rows, size_t cols) {
    size_t floats;
    if (__builtin_mul_overflow(rows, cols, &floats)) return SL_ENOMEM;
    return cpu_buf_reserve((void **)&c->xp, &c->xp_cap, floats, sizeof *c->xp);
}

static void mm_blas_task(void *arg, size_t begin, size_t end, int tid) {
    const mm_args_t *a = arg;
    size_t K = a->K, N = a->N;
    for (size_t blk = begin; blk < end; blk++) {
        size_t n0 = blk * a->nb;
        size_t nb = N - n0 < a->nb ? N - n0 : a->nb;
        const float *wb;
        if (a->wdt == SL_DTYPE_F32) {
            wb = (const float *)a->w + n0 * K;
        } else {
            float *s = a->c->scratch[tid]; /* (nb, K) */
            cpu_widen(a->c->simd, s, (const uint16_t *)a->w + n0 * K, a->wdt, nb * K);
            wb = s;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)a->M, (int)nb, (int)K, 1.0f, a->x,
                    (int)K, wb, (int)K, a->acc ? 1.0f : 0.0f, a->y + n0, (int)N);
        if (a->bias)
            for (size_t m = 0; m < a->M; m++) {
                float *yr = a->y + m * N + n0;
                for (size_t r = 0; r < nb; r++) yr[r] += a->bias[n0 + r];
            }
    }
}

int cpu_matmul(void *ctx, float *y, const float *x, const void *w, sl_dtype_t wdt,
               const float *bias, uint32_t M, uint32_t N, uint32_t K, bool accumulate) {
    cpu_ctx_t *c = ctx;
    mm_args_t a = {.c = c,
                   .y = y,
                   .x = x,
                   .w = w,
                   .wdt = wdt,
                   .es = sl_dtype_size(wdt),
                   .bias = bias,
                   .M = M,
                   .N = N,
                   .K = K,
                   .acc = accumulate};
    size_t nt = (size_t)c->n_threads;
    int rc = 0;
    if (wdt == SL_DTYPE_BF16 && c->simd->gemm_bf16x && M >= c->bf16x_min_m && M <= c->bf16x_max_m) {
        /* Rows of x per pass: every 32-row weight panel reads the whole
         * packed x of the pass, so keep that near 512 KiB (in L2) and stream
         * W once per pass; decode batches are a single pass. */
        size_t chunks = ((size_t)K + 31) / 32, mr = ((size_t)512 << 10) / (chunks * 128);
        mr = mr < 32 ? 32 : mr & ~(size_t)15;
        if (mr > M) mr = M;
        size_t elems = sl_simd_bf16x_packed_elems(mr, K);
        if (elems == 0) return SL_ENOMEM;
        if ((rc = cpu_buf_reserve((void **)&c->xb, &c->xb_cap, elems, sizeof *c->xb)) != 0)
            return rc;
        a.xb = c->xb;
        size_t panels = ((size_t)N + SL_SIMD_BF16X_ROWS - 1) / SL_SIMD_BF16X_ROWS;
        size_t pg = (panels + nt * 4 - 1) / (nt * 4);
        if (M <= mr && (size_t)M * K >= 8192) {
            /* a decode batch, one pass: pack and panels in one job */
            mm_job_run(c, &a, mm_bf16x_pack_task, chunks, mm_bf16x_task, panels);
            return 0;
        }
        for (size_t m0 = 0; m0 < M; m0 += mr) {
            a.M = (uint32_t)(M - m0 < mr ? M - m0 : mr);
            a.x = x + m0 * K;
            a.y = y + m0 * N;
            /* the packing is (M, K) work too: split it by chunks of k when large */
            sl_cpu_pool_for((size_t)a.M * K >= 8192 ? c->pool : NULL, chunks, 0, mm_bf16x_pack_task,
                            &a);
            sl_cpu_pool_for(c->pool, panels, pg, mm_bf16x_task, &a);
        }
        return 0;
    }
    if (M < c->gemm_min_m || M > INT32_MAX || N > INT32_MAX || K > INT32_MAX) {
        if (M >= c->panel_min_m[wdt] && c->simd->gemm_panel) {
            /* xt (K, mp) = x transposed, zero padded to mp = round_up(M, 16) columns */
            size_t mp = ((size_t)M + 15) & ~(size_t)15;
            if ((rc = mm_xp_reserve(c, K, mp)) != 0) return rc;
            if (wdt != SL_DTYPE_F32 &&
                (rc = cpu_scratch_reserve(c, (size_t)SL_SIMD_PANEL_ROWS * K)) != 0)
                return rc;
            a.xg = c->xp;
            a.ldx = mp;
            size_t panels = ((size_t)N + SL_SIMD_PANEL_ROWS - 1) / SL_SIMD_PANEL_ROWS;
            /* the transpose (it ran on the caller alone) and the panels in one job */
            mm_job_run(c, &a, mm_transpose_task, K, mm_panel_task, panels);
            return 0;
        }
        a.tile = c->simd->gemv_tile[wdt];
        a.xg = x;
        a.ldx = K;
        if (wdt == SL_DTYPE_BF16 && c->simd->gemv_tile_bf16p) {
            size_t kp = ((size_t)K + 31) & ~(size_t)31;
            if ((rc = mm_xp_reserve(c, M, kp)) != 0) return rc;
            for (uint32_t m = 0; m < M; m++)
                c->simd->bf16p_prep_x(c->xp + m * kp, x + (size_t)m * K, K);
            a.tile = c->simd->gemv_tile_bf16p;
            a.xg = c->xp;
            a.ldx = kp;
        }
        size_t tiles = ((size_t)N + 3) / 4;
        size_t grain = (tiles + nt * 4 - 1) / (nt * 4);
        sl_cpu_pool_for(c->pool, tiles, grain, mm_gemv_task, &a);
        return 0;
    }
    /* Blocks of W rows: enough blocks to balance the threads, each wide enough
     * for SGEMM to run near its peak, and a bf16/f16 block's f32 copy small
     * enough to stay in L2 where possible. */
    size_t nb = ((size_t)N + nt * 2 - 1) / (nt * 2);
    if (nb < 32) nb = 32;
    if (nb > 256) nb = 256;
    nb = (nb + 15) & ~(size_t)15;
    if (nb > N) nb = N;
    a.nb = (uint32_t)nb;
    if (wdt != SL_DTYPE_F32 && (rc = cpu_scratch_reserve(c, nb * K)) != 0) return rc;
    sl_cpu_pool_for(c->pool, ((size_t)N + nb - 1) / nb, 1, mm_blas_task, &a);
    return 0;
}
