/* test_kernels_cpu.c - every CPU op against a plain double-precision reference.
 *
 * Each op runs on every ISA level this CPU has (scalar, AVX2, AVX-512,
 * AVX512_BF16, AMX; the missing ones are named on stderr as skipped), with
 * both matmul paths (GEMV and SGEMM), over many shapes: odd sizes, K not a
 * multiple of the vector width, M = 1..64, GQA ratios, block boundaries,
 * sliding windows. Also: f16/bf16 conversions bit-exact (against F16C where
 * present), the thread pool, and argument validation of every wrapper.
 */
#include "common/base/err.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/threadpool.h"

#include <check.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>

/* Hardware F16C conversions, the reference for the software ones. */
__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h) {
    return _cvtsh_ss(h);
}
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f) {
    return (uint16_t)_cvtss_sh(f, 0); /* round to nearest even */
}
#endif

/* ---- helpers ------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rng_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

/* uniform in [-1, 1) */
static float rng_f(void) {
    return (float)((rng_u32() & 0xffffff) / 8388608.0 - 1.0);
}

static void fill(float *p, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) p[i] = rng_f() * scale;
}

/* Random weights of dtype dt in w, and their exact f32 values in wf. */
static void fill_w(void *w, float *wf, sl_dtype_t dt, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = rng_f();
        if (dt == SL_DTYPE_F32) {
            ((float *)w)[i] = v;
            wf[i] = v;
        } else if (dt == SL_DTYPE_F16) {
            uint16_t h = sl_f32_to_f16(v);
            ((uint16_t *)w)[i] = h;
            wf[i] = sl_f16_to_f32(h);
        } else {
            uint16_t h = sl_f32_to_bf16(v);
            ((uint16_t *)w)[i] = h;
            wf[i] = sl_bf16_to_f32(h);
        }
    }
}

static bool close_enough(double got, double want, double tol) {
    return fabs(got - want) <= tol;
}

/* Backends for every ISA here; gemv = GEMV only, blas = SGEMM from M = 2. */
#define MAX_BE 5
static sl_backend_t *be_gemv[MAX_BE], *be_blas[MAX_BE];
static int n_be;

static void backends_open(void) {
    n_be = 0;
    for (int isa = SL_CPU_ISA_SCALAR; isa <= SL_CPU_ISA_AMX; isa++) {
        if (!sl_cpu_simd_get((sl_cpu_isa_t)isa)) continue;
        sl_cpu_options_t o1 = {.n_threads = 3, .isa = (sl_cpu_isa_t)isa, .gemm_min_m = UINT32_MAX};
        sl_cpu_options_t o2 = {.n_threads = 3, .isa = (sl_cpu_isa_t)isa, .gemm_min_m = 2};
        ck_assert_int_eq(sl_cpu_backend_create(&o1, &be_gemv[n_be]), 0);
        ck_assert_int_eq(sl_cpu_backend_create(&o2, &be_blas[n_be]), 0);
        n_be++;
    }
    ck_assert_int_ge(n_be, 1);
}

static void backends_close(void) {
    for (int i = 0; i < n_be; i++) {
        sl_backend_free(be_gemv[i]);
        sl_backend_free(be_blas[i]);
        be_gemv[i] = be_blas[i] = NULL;
    }
    n_be = 0;
}

/* ---- conversions ---------------------------------------------------------------- */

START_TEST(test_f16_exhaustive) {
    /* f16 -> f32 -> f16 is the identity for every non-NaN pattern; NaN stays NaN. */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = sl_f16_to_f32((uint16_t)h);
        bool nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu);
        if (nan) {
            ck_assert(f != f);
            uint16_t back = sl_f32_to_f16(f);
            ck_assert((back & 0x7c00u) == 0x7c00u && (back & 0x3ffu));
        } else {
            ck_assert_uint_eq(sl_f32_to_f16(f), h);
        }
#if defined(__x86_64__)
        if (__builtin_cpu_supports("avx2")) {
            float hw = hw_f16_to_f32((uint16_t)h);
            if (!nan) ck_assert(memcmp(&hw, &f, 4) == 0);
        }
#endif
    }
    /* specials and rounding */
    ck_assert_uint_eq(sl_f32_to_f16(65504.0f), 0x7bffu);
    ck_assert_uint_eq(sl_f32_to_f16(65519.0f), 0x7bffu);
    ck_assert_uint_eq(sl_f32_to_f16(65520.0f), 0x7c00u);
    ck_assert_uint_eq(sl_f32_to_f16(INFINITY), 0x7c00u);
    ck_assert_uint_eq(sl_f32_to_f16(-INFINITY), 0xfc00u);
    ck_assert_uint_eq(sl_f32_to_f16(ldexpf(1.0f, -24)), 0x0001u); /* smallest subnormal */
    ck_assert_uint_eq(sl_f32_to_f16(ldexpf(1.0f, -25)), 0x0000u); /* tie to even: 0 */
    ck_assert_uint_eq(sl_f32_to_f16(ldexpf(1.5f, -25)), 0x0001u);
    ck_assert_uint_eq(sl_f32_to_f16(-0.0f), 0x8000u);
    ck_assert_uint_eq(sl_f32_to_f16(1e-30f), 0x0000u);
    ck_assert_float_eq(sl_f16_to_f32(0x0001u), ldexpf(1.0f, -24));
}
END_TEST

START_TEST(test_f16_rounding_vs_hw) {
#if defined(__x86_64__)
    if (!__builtin_cpu_supports("avx2")) return;
    for (int i = 0; i < 400000; i++) {
        uint32_t u = rng_u32() ^ (rng_u32() << 21);
        if (i < 200000) u = (u & 0x807fffffu) | ((uint32_t)(100 + rng_u32() % 60) << 23);
        float f;
        memcpy(&f, &u, 4);
        if (f != f) continue;
        uint16_t want = hw_f32_to_f16(f);
        ck_assert_msg(sl_f32_to_f16(f) == want, "u=%08x got %04x want %04x", u, sl_f32_to_f16(f),
                      want);
    }
#endif
}
END_TEST

/* bf16 reference: nearest of the two bf16 neighbours, ties to even. */
static uint16_t bf16_ref(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (f != f) return 0x7fc0;
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    if ((u & 0xffffu) == 0) return lo;
    double dl = fabs((double)sl_bf16_to_f32(lo) - f);
    double dh = (hi & 0x7f80u) == 0x7f80u && (lo & 0x7f80u) != 0x7f80u
                    ? fabs(ldexp(1.0, 128) * (f < 0 ? -1 : 1) - f)
                    : fabs((double)sl_bf16_to_f32(hi) - f);
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo & 1u) ? hi : lo;
}

START_TEST(test_bf16_conversions) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = sl_bf16_to_f32((uint16_t)h);
        bool nan = (h & 0x7f80u) == 0x7f80u && (h & 0x7fu);
        if (nan) {
            ck_assert(f != f);
            ck_assert(sl_f32_to_bf16(f) & 0x7fu);
        } else {
            ck_assert_uint_eq(sl_f32_to_bf16(f), h);
        }
    }
    for (int i = 0; i < 300000; i++) {
        uint32_t u = rng_u32() ^ (rng_u32() << 21);
        float f;
        memcpy(&f, &u, 4);
        if (f != f) {
            uint16_t b = sl_f32_to_bf16(f);
            ck_assert((b & 0x7f80u) == 0x7f80u && (b & 0x7fu)); /* still a NaN */
            continue;
        }
        uint16_t got = sl_f32_to_bf16(f), want = bf16_ref(f);
        ck_assert_msg(got == want, "u=%08x got %04x want %04x", u, got, want);
    }
    ck_assert_uint_eq(sl_f32_to_bf16(INFINITY), 0x7f80u);
    ck_assert_uint_eq(sl_f32_to_bf16(-INFINITY), 0xff80u);
    ck_assert_uint_eq(sl_f32_to_bf16(3.4e38f), 0x7f80u); /* rounds up past the max */
    float den;
    uint32_t du = 0x00012345u; /* f32 subnormal */
    memcpy(&den, &du, 4);
    ck_assert_uint_eq(sl_f32_to_bf16(den), 0x0001u);
}
END_TEST

START_TEST(test_vector_conversions_match_scalar) {
    enum { N = 65536 + 13 };
    uint16_t *src = malloc(N * 2);
    float *a = malloc(N * 4), *b = malloc(N * 4);
    ck_assert(src && a && b);
    for (uint32_t i = 0; i < N; i++) src[i] = (uint16_t)(i * 40503u);
    for (int isa = SL_CPU_ISA_SCALAR; isa <= SL_CPU_ISA_AMX; isa++) {
        const sl_cpu_simd_t *s = sl_cpu_simd_get((sl_cpu_isa_t)isa);
        if (!s) continue;
        for (size_t n = 0; n < 40; n++) { /* every tail length */
            s->f16_to_f32(a, src + 1, n);
            s->bf16_to_f32(b, src + 1, n);
            for (size_t i = 0; i < n; i++) {
                float wa = sl_f16_to_f32(src[1 + i]), wb = sl_bf16_to_f32(src[1 + i]);
                ck_assert(memcmp(&a[i], &wa, 4) == 0 || (a[i] != a[i] && wa != wa));
                ck_assert(memcmp(&b[i], &wb, 4) == 0 || (b[i] != b[i] && wb != wb));
            }
        }
        s->f16_to_f32(a, src, N);
        s->bf16_to_f32(b, src, N);
        for (size_t i = 0; i < N; i++) {
            float wa = sl_f16_to_f32(src[i]), wb = sl_bf16_to_f32(src[i]);
            ck_assert(memcmp(&a[i], &wa, 4) == 0 || (a[i] != a[i] && wa != wa));
            ck_assert(memcmp(&b[i], &wb, 4) == 0 || (b[i] != b[i] && wb != wb));
        }
    }
    /* public bulk helpers */
    float f[5] = {1.0f, -2.5f, 65504.0f, 1e-8f, 0.0f}, back[5];
    uint16_t h[5];
    for (int dt = 0; dt < SL_DTYPE_COUNT; dt++) {
        ck_assert_int_eq(sl_dtype_from_f32(dt == 0 ? (void *)back : (void *)h, dt, f, 5), 0);
        if (dt != 0) ck_assert_int_eq(sl_dtype_to_f32(back, h, dt, 5), 0);
        for (int i = 0; i < 5; i++) ck_assert(fabsf(back[i] - f[i]) <= fabsf(f[i]) * 4e-3f + 6e-8f);
    }
    ck_assert_int_eq(sl_dtype_to_f32(a, src, (sl_dtype_t)7, 4), SL_EINVAL);
    ck_assert_int_eq(sl_dtype_to_f32(NULL, src, SL_DTYPE_F16, 4), SL_EINVAL);
    ck_assert_uint_eq(sl_dtype_size(SL_DTYPE_BF16), 2);
    ck_assert_uint_eq(sl_dtype_size((sl_dtype_t)9), 0);
    ck_assert_str_eq(sl_dtype_name(SL_DTYPE_F16), "f16");
    free(src);
    free(a);
    free(b);
}
END_TEST

/* ---- thread pool ------------------------------------------------------------------- */

typedef struct pool_probe {
    atomic_int *hits;
    atomic_int bad_tid;
    int n_threads;
} pool_probe_t;

static void pool_probe_fn(void *arg, size_t b, size_t e, int tid) {
    pool_probe_t *p = arg;
    if (tid < 0 || tid >= p->n_threads) atomic_fetch_add(&p->bad_tid, 1);
    for (size_t i = b; i < e; i++) atomic_fetch_add(&p->hits[i], 1);
}

START_TEST(test_pool_covers_every_index_once) {
    enum { N = 1200 };
    atomic_int *hits = calloc(N, sizeof *hits);
    ck_assert_ptr_nonnull(hits);
    for (int nt = 1; nt <= 4; nt++) {
        sl_cpu_pool_t *pool = sl_cpu_pool_create(nt);
        ck_assert_ptr_nonnull(pool);
        ck_assert_int_eq(sl_cpu_pool_size(pool), nt);
        size_t ns[] = {0, 1, 2, 3, 7, 64, N};
        size_t grains[] = {0, 1, 3, 100, 10000};
        for (int rep = 0; rep < 3; rep++)
            for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
                for (size_t g = 0; g < sizeof grains / sizeof grains[0]; g++) {
                    for (size_t k = 0; k < N; k++) atomic_store(&hits[k], 0);
                    pool_probe_t p = {.hits = hits, .n_threads = nt};
                    atomic_init(&p.bad_tid, 0);
                    sl_cpu_pool_for(pool, ns[i], grains[g], pool_probe_fn, &p);
                    ck_assert_int_eq(atomic_load(&p.bad_tid), 0);
                    for (size_t k = 0; k < N; k++)
                        ck_assert_int_eq(atomic_load(&hits[k]), k < ns[i] ? 1 : 0);
                }
        sl_cpu_pool_free(pool);
    }
    sl_cpu_pool_free(NULL);
    /* a NULL pool runs inline */
    for (size_t k = 0; k < 10; k++) atomic_store(&hits[k], 0);
    pool_probe_t p = {.hits = hits, .n_threads = 1};
    atomic_init(&p.bad_tid, 0);
    sl_cpu_pool_for(NULL, 10, 3, pool_probe_fn, &p);
    for (size_t k = 0; k < 10; k++) ck_assert_int_eq(atomic_load(&hits[k]), 1);
    free(hits);
}
END_TEST

/* Many tiny jobs back to back with more threads than CPUs: helpers arrive
 * late (asleep, descheduled) and must skip jobs already closed without
 * touching the next job's fields, and the caller must not return while a
 * helper that joined is still writing. Each job bumps its own counters, and
 * a slow item makes helpers hold chunks while the caller finishes. */
typedef struct pool_seq {
    atomic_int *hits; /* (n) */
    int job;
    atomic_int wrong_job;
    _Atomic int *last_job; /* (n): the job that last touched an item */
} pool_seq_t;

static void pool_seq_fn(void *arg, size_t b, size_t e, int tid) {
    (void)tid;
    pool_seq_t *p = arg;
    for (size_t i = b; i < e; i++) {
        if (atomic_load(&p->last_job[i]) != p->job - 1) atomic_fetch_add(&p->wrong_job, 1);
        if (i % 7 == 3)
            for (volatile int spin = 0; spin < 2000; spin++) {
            }
        atomic_fetch_add(&p->hits[i], 1);
        atomic_store(&p->last_job[i], p->job);
    }
}

START_TEST(test_pool_back_to_back_jobs) {
    enum { N = 64, JOBS = 3000 };
    atomic_int hits[N];
    _Atomic int last[N];
    for (int nt = 2; nt <= 6; nt += 4) {
        sl_cpu_pool_t *pool = sl_cpu_pool_create(nt);
        ck_assert_ptr_nonnull(pool);
        for (int k = 0; k < N; k++) {
            atomic_init(&hits[k], 0);
            atomic_init(&last[k], 0);
        }
        pool_seq_t p = {.hits = hits, .last_job = last};
        atomic_init(&p.wrong_job, 0);
        for (int j = 1; j <= JOBS; j++) {
            p.job = j;
            /* every item of every job, so each job must see the last one done */
            sl_cpu_pool_for(pool, N, (size_t)(j % 5), pool_seq_fn, &p);
            if (j % 500 == 0) usleep(3000); /* let helpers fall asleep */
        }
        ck_assert_int_eq(atomic_load(&p.wrong_job), 0);
        for (int k = 0; k < N; k++) ck_assert_int_eq(atomic_load(&hits[k]), JOBS);
        sl_cpu_pool_free(pool);
    }
}
END_TEST

START_TEST(test_pool_default_threads_env) {
    setenv("SLUICE_THREADS", "3", 1);
    ck_assert_int_eq(sl_cpu_pool_default_threads(), 3);
    setenv("SLUICE_THREADS", "junk", 1);
    ck_assert_int_ge(sl_cpu_pool_default_threads(), 1);
    setenv("SLUICE_THREADS", "-4", 1);
    ck_assert_int_ge(sl_cpu_pool_default_threads(), 1);
    setenv("SLUICE_THREADS", "99999999", 1);
    ck_assert_int_eq(sl_cpu_pool_default_threads(), 1024);
    unsetenv("SLUICE_THREADS");
}
END_TEST

/* ---- matmul -------------------------------------------------------------------------- */

static void check_matmul(sl_backend_t *be, sl_dtype_t dt, uint32_t M, uint32_t N, uint32_t K,
                         bool use_bias, bool acc) {
    size_t es = sl_dtype_size(dt);
    float *x = malloc((size_t)M * K * 4), *wf = malloc((size_t)N * K * 4);
    void *w = malloc((size_t)N * K * es);
    float *bias = malloc((size_t)N * 4), *y = malloc((size_t)M * N * 4);
    float *y0 = malloc((size_t)M * N * 4);
    ck_assert(x && wf && w && bias && y && y0);
    fill(x, (size_t)M * K, 1.0f);
    fill_w(w, wf, dt, (size_t)N * K);
    fill(bias, N, 1.0f);
    fill(y0, (size_t)M * N, 1.0f);
    memcpy(y, y0, (size_t)M * N * 4);
    ck_assert_int_eq(sl_backend_matmul(be, y, x, w, dt, use_bias ? bias : NULL, M, N, K, acc), 0);
    for (uint32_t m = 0; m < M; m++)
        for (uint32_t n = 0; n < N; n++) {
            double ref = 0.0, mag = 0.0;
            for (uint32_t k = 0; k < K; k++) {
                ref += (double)x[(size_t)m * K + k] * wf[(size_t)n * K + k];
                mag += fabs((double)x[(size_t)m * K + k] * wf[(size_t)n * K + k]);
            }
            if (use_bias) ref += bias[n];
            if (acc) ref += y0[(size_t)m * N + n];
            double got = y[(size_t)m * N + n];
            ck_assert_msg(close_enough(got, ref, 2e-6 * (mag + 4.0)),
                          "%s %s M=%u N=%u K=%u bias=%d acc=%d (%u,%u): got %.7g want %.7g",
                          sl_backend_name(be), sl_dtype_name(dt), M, N, K, use_bias, acc, m, n, got,
                          ref);
        }
    free(x);
    free(wf);
    free(w);
    free(bias);
    free(y);
    free(y0);
}

START_TEST(test_matmul_shapes) {
    static const uint32_t Ms[] = {1, 2, 3, 4, 5, 9, 17, 64};
    static const uint32_t Ns[] = {1, 3, 4, 5, 17, 130};
    static const uint32_t Ks[] = {1, 7, 16, 17, 33, 257};
    backends_open();
    for (int b = 0; b < n_be; b++)
        for (int dt = 0; dt < SL_DTYPE_COUNT; dt++)
            for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
                for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++)
                    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++) {
                        uint32_t M = Ms[mi], N = Ns[ni], K = Ks[ki];
                        int variant = (int)((mi + ni + ki) % 4);
                        check_matmul(be_gemv[b], (sl_dtype_t)dt, M, N, K, variant & 1, variant & 2);
                        if (M >= 2)
                            check_matmul(be_blas[b], (sl_dtype_t)dt, M, N, K, !(variant & 1),
                                         variant & 2);
                    }
    backends_close();
}
END_TEST

START_TEST(test_matmul_model_shapes) {
    /* the ~100M model's projections, decode and prefill sized */
    backends_open();
    int b = n_be - 1; /* best ISA */
    for (int dt = 0; dt < SL_DTYPE_COUNT; dt++) {
        check_matmul(be_gemv[b], (sl_dtype_t)dt, 1, 2048, 768, false, false);
        check_matmul(be_gemv[b], (sl_dtype_t)dt, 3, 768, 2048, false, true);
        check_matmul(be_blas[b], (sl_dtype_t)dt, 40, 1000, 768, true, false);
        /* a batch-32 decode step's fused q|k|v and down projections (bf16:
         * pack and panels in one pool job) */
        check_matmul(be_gemv[b], (sl_dtype_t)dt, 32, 1280, 768, true, false);
        check_matmul(be_gemv[b], (sl_dtype_t)dt, 32, 768, 2048, false, true);
    }
    backends_close();
}
END_TEST

START_TEST(test_gemm_panel_vs_scalar) {
    /* the panel kernel itself, wherever an ISA has one: every row count
     * 1..SL_SIMD_PANEL_ROWS, one and two vectors of x, odd K, with and
     * without the prefetch of a next panel */
    static const size_t Ks[] = {1, 7, 16, 33, 257};
    enum { KMAX = 257 };
    float *xt = malloc((size_t)KMAX * 32 * 4), *wf = malloc((size_t)SL_SIMD_PANEL_ROWS * KMAX * 4);
    float out[SL_SIMD_PANEL_ROWS * 32];
    ck_assert(xt && wf);
    int tested = 0;
    for (int isa = SL_CPU_ISA_SCALAR; isa <= SL_CPU_ISA_AMX; isa++) {
        const sl_cpu_simd_t *s = sl_cpu_simd_get((sl_cpu_isa_t)isa);
        if (!s || !s->gemm_panel) continue;
        tested++;
        for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++)
            for (int mv = 1; mv <= 2; mv++)
                for (int nb = 1; nb <= SL_SIMD_PANEL_ROWS; nb++) {
                    size_t K = Ks[ki];
                    fill(xt, K * 32, 1.0f);
                    fill(wf, (size_t)nb * K, 1.0f);
                    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) out[i] = NAN;
                    s->gemm_panel(xt, 32, mv, wf, nb, K, out, nb & 1 ? wf : NULL, K * 4);
                    for (int n = 0; n < nb; n++)
                        for (int m = 0; m < 16 * mv; m++) {
                            double ref = 0.0, mag = 0.0;
                            for (size_t k = 0; k < K; k++) {
                                double p = (double)xt[k * 32 + (size_t)m] * wf[(size_t)n * K + k];
                                ref += p;
                                mag += fabs(p);
                            }
                            ck_assert_msg(close_enough(out[n * 32 + m], ref, 2e-6 * (mag + 4.0)),
                                          "%s K=%zu mv=%d nb=%d (%d,%d): got %g want %g", s->name,
                                          K, mv, nb, n, m, out[n * 32 + m], ref);
                        }
                }
    }
    if (sl_cpu_isa_detect() == SL_CPU_ISA_AVX512) ck_assert_int_ge(tested, 1);
    free(xt);
    free(wf);
}
END_TEST

START_TEST(test_matmul_panel_path) {
    /* the panel path through the backend for every dtype (panel_min_m = 2
     * forces it below the SGEMM threshold): x tails of 1..31 rows past a
     * multiple of 16 and 32, weight-row tails past a multiple of 12, odd K,
     * bias and accumulate; plus the default thresholds (f32 panels from M = 24) */
    static const uint32_t Ms[] = {2, 16, 17, 24, 31, 32, 33, 50};
    static const uint32_t Ns[] = {1, 11, 12, 13, 25, 100};
    static const uint32_t Ks[] = {1, 17, 64, 129};
    for (int isa = SL_CPU_ISA_SCALAR; isa <= SL_CPU_ISA_AMX; isa++) {
        if (!sl_cpu_simd_get((sl_cpu_isa_t)isa)) continue;
        sl_cpu_options_t o = {
            .n_threads = 3, .isa = (sl_cpu_isa_t)isa, .gemm_min_m = UINT32_MAX, .panel_min_m = 2};
        sl_backend_t *be = NULL, *be_def = NULL;
        ck_assert_int_eq(sl_cpu_backend_create(&o, &be), 0);
        o.panel_min_m = 0;
        ck_assert_int_eq(sl_cpu_backend_create(&o, &be_def), 0);
        for (int dt = 0; dt < SL_DTYPE_COUNT; dt++)
            for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
                for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++) {
                    uint32_t M = Ms[mi], N = Ns[ni], K = Ks[(mi + ni) % 4];
                    int variant = (int)((mi + 2 * ni) % 4);
                    check_matmul(be, (sl_dtype_t)dt, M, N, K, variant & 1, variant & 2);
                    if (ni == 3)
                        check_matmul(be_def, (sl_dtype_t)dt, M, N, K, variant & 2, variant & 1);
                }
        sl_backend_free(be);
        sl_backend_free(be_def);
    }
}
END_TEST

/* The bf16x levels this CPU has, printed once per test so a CI log shows
 * which paths ran and which were skipped for lack of the ISA. */
static int bf16x_levels(const sl_cpu_simd_t *out[2], const char *test) {
    int n = 0;
    for (int isa = SL_CPU_ISA_AVX512_BF16; isa <= SL_CPU_ISA_AMX; isa++) {
        const sl_cpu_simd_t *s = sl_cpu_simd_get((sl_cpu_isa_t)isa);
        if (s && s->gemm_bf16x)
            out[n++] = s;
        else
            fprintf(stderr, "%s: skipped: %s (this CPU lacks it)\n", test,
                    isa == SL_CPU_ISA_AMX ? "amx" : "avx512bf16");
    }
    return n;
}

START_TEST(test_gemm_bf16x_vs_scalar) {
    /* the bf16x kernels themselves (AMX tiles, AVX512_BF16 dot products)
     * against a double reference with the unrounded x: every weight-row
     * count that matters (1..32: partial AMX tiles, the 12/4/1 groups), x
     * rows around multiples of 16 and 32, K tails (odd, < 32, > 32), a row
     * stride ldw > K whose padding is NaN (a read outside K would show),
     * weights ending exactly at the end of their allocation (ASan), bias,
     * accumulate, and y columns >= nb left alone. The error bound is the
     * hi + lo split's (~2^-17 per term); with only hi (2^-9) it fails. */
    static const size_t Ms[] = {1, 2, 15, 16, 17, 31, 32, 33, 48};
    static const int NBs[] = {1, 3, 4, 12, 13, 16, 17, 25, 31, 32};
    static const size_t Ks[] = {1, 2, 31, 32, 33, 64, 95, 257};
    const sl_cpu_simd_t *lv[2];
    int n_lv = bf16x_levels(lv, "test_gemm_bf16x_vs_scalar");
    if (sl_cpu_isa_detect() >= SL_CPU_ISA_AVX512_BF16) ck_assert_int_ge(n_lv, 1);
    enum { MMAX = 48, KMAX = 257, NMAX = 32, LDY = NMAX + 3 };
    float *x = malloc((size_t)MMAX * KMAX * 4), *wf = malloc((size_t)NMAX * (KMAX + 5) * 4);
    float *bias = malloc(NMAX * 4), *y = malloc((size_t)MMAX * LDY * 4),
          *y0 = malloc((size_t)MMAX * LDY * 4);
    uint16_t *xb = malloc(sl_simd_bf16x_packed_elems(MMAX, KMAX) * 2);
    ck_assert(x && wf && bias && y && y0 && xb);
    for (int l = 0; l < n_lv; l++) {
        const sl_cpu_simd_t *s = lv[l];
        int cases = 0;
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
            for (size_t ni = 0; ni < sizeof NBs / sizeof NBs[0]; ni++)
                for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++) {
                    size_t M = Ms[mi], K = Ks[ki];
                    int nb = NBs[ni], variant = (int)((mi + ni + ki) % 4);
                    size_t ldw = variant & 1 ? K + 5 : K, ldx = K;
                    bool use_bias = variant & 2, acc = (mi + ki) % 2;
                    /* exactly nb rows: the last row ends at the allocation's end */
                    uint16_t *w = malloc(((size_t)(nb - 1) * ldw + K) * 2);
                    ck_assert(w);
                    for (int n = 0; n < nb; n++)
                        for (size_t k = 0;
                             k < ldw && (size_t)n * ldw + k < (size_t)(nb - 1) * ldw + K; k++) {
                            uint16_t h = k < K ? sl_f32_to_bf16(rng_f()) : 0x7fc0; /* NaN pad */
                            w[(size_t)n * ldw + k] = h;
                            wf[(size_t)n * ldw + k] = sl_bf16_to_f32(h);
                        }
                    fill(x, M * K, 2.0f);
                    fill(bias, (size_t)nb, 1.0f);
                    fill(y0, M * LDY, 1.0f);
                    memcpy(y, y0, M * LDY * 4);
                    size_t nc = (K + 31) / 32;
                    s->bf16x_pack(xb, x, ldx, M, K, 0, nc / 2); /* two calls, as two threads */
                    s->bf16x_pack(xb, x, ldx, M, K, nc / 2, nc);
                    s->gemm_bf16x(xb, M, w, ldw, nb, K, y, LDY, use_bias ? bias : NULL, acc);
                    for (size_t m = 0; m < M; m++)
                        for (int n = 0; n < LDY; n++) {
                            float got = y[m * LDY + (size_t)n];
                            if (n >= nb) {
                                ck_assert_msg(memcmp(&got, &y0[m * LDY + (size_t)n], 4) == 0,
                                              "%s wrote column %d >= nb %d", s->name, n, nb);
                                continue;
                            }
                            double ref = 0.0, mag = 0.0;
                            for (size_t k = 0; k < K; k++) {
                                double p = (double)x[m * ldx + k] * wf[(size_t)n * ldw + k];
                                ref += p;
                                mag += fabs(p);
                            }
                            if (use_bias) ref += bias[n];
                            if (acc) ref += y0[m * LDY + (size_t)n];
                            ck_assert_msg(
                                close_enough(got, ref, 1e-5 * mag + 1e-6 * (fabs(ref) + 1)),
                                "%s M=%zu nb=%d K=%zu ldw=%zu bias=%d acc=%d (%zu,%d): "
                                "got %.7g want %.7g",
                                s->name, M, nb, K, ldw, use_bias, acc, m, n, got, ref);
                        }
                    free(w);
                    cases++;
                }
        fprintf(stderr, "test_gemm_bf16x_vs_scalar: %s: %d cases\n", s->name, cases);
    }
    free(x);
    free(wf);
    free(bias);
    free(y);
    free(y0);
    free(xb);
}
END_TEST

START_TEST(test_gemm_bf16x_specials) {
    /* Inf and NaN in x come out as Inf and NaN (the lo part of an Inf is 0,
     * not Inf - Inf), and do not leak into other rows; huge finite x whose
     * bf16 rounds to Inf stays finite-signed */
    const sl_cpu_simd_t *lv[2];
    int n_lv = bf16x_levels(lv, "test_gemm_bf16x_specials");
    enum { M = 3, K = 40, NB = 2 };
    float x[M * K], y[M * NB];
    uint16_t w[NB * K], xb[2048];
    ck_assert_uint_le(sl_simd_bf16x_packed_elems(M, K), 2048);
    for (int i = 0; i < NB * K; i++) w[i] = sl_f32_to_bf16(0.5f);
    for (int l = 0; l < n_lv; l++) {
        for (int i = 0; i < M * K; i++) x[i] = 1.0f;
        x[0 * K + 33] = INFINITY;
        x[1 * K + 5] = NAN;
        lv[l]->bf16x_pack(xb, x, K, M, K, 0, (K + 31) / 32);
        lv[l]->gemm_bf16x(xb, M, w, K, NB, K, y, NB, NULL, false);
        for (int n = 0; n < NB; n++) {
            ck_assert_msg(isinf(y[0 * NB + n]) && y[0 * NB + n] > 0, "%s: %g", lv[l]->name, y[n]);
            ck_assert(isnan(y[1 * NB + n]));
            ck_assert_float_eq_tol(y[2 * NB + n], 0.5f * K, 1e-4f);
        }
    }
}
END_TEST

START_TEST(test_matmul_bf16x_path) {
    /* the bf16x path through the backend on every level that has it: M from
     * 2 (decode batches) to several passes over x (K = 2048 packs 64 rows
     * per pass, K = 4099 32 rows), N tails past 32-row panels, bias and
     * accumulate; then SLUICE_CPU_ISA as the A/B switch: it caps the level
     * and never raises it */
    static const uint32_t Ms[] = {2, 8, 32, 33, 130};
    static const uint32_t Ns[] = {1, 33, 70};
    for (int isa = SL_CPU_ISA_AVX512_BF16; isa <= SL_CPU_ISA_AMX; isa++) {
        if (!sl_cpu_simd_get((sl_cpu_isa_t)isa)) continue;
        sl_cpu_options_t o = {.n_threads = 3, .isa = (sl_cpu_isa_t)isa};
        sl_backend_t *be = NULL;
        ck_assert_int_eq(sl_cpu_backend_create(&o, &be), 0);
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
            for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++) {
                uint32_t K = (mi + ni) % 3 == 0 ? 2048 : (mi + ni) % 3 == 1 ? 77 : 4099;
                if (Ms[mi] == 130 && K == 4099) K = 300;
                check_matmul(be, SL_DTYPE_BF16, Ms[mi], Ns[ni], K, (mi + ni) & 1, ni & 1);
            }
        check_matmul(be, SL_DTYPE_BF16, 70, 9, 4099, true, true); /* 3 passes, 32 rows each */
        sl_backend_free(be);
    }
    sl_cpu_isa_t best = sl_cpu_isa_detect();
    static const char *const names[] = {"scalar", "avx2", "avx512", "avx512bf16", "amx"};
    for (int isa = SL_CPU_ISA_SCALAR; isa <= SL_CPU_ISA_AMX; isa++) {
        setenv("SLUICE_CPU_ISA", names[isa], 1);
        const sl_cpu_simd_t *s = sl_cpu_simd_get(SL_CPU_ISA_AUTO);
        ck_assert_ptr_nonnull(s);
        ck_assert_int_eq(s->isa, isa < (int)best ? isa : (int)best);
    }
    setenv("SLUICE_CPU_ISA", "bogus", 1);
    ck_assert_int_eq(sl_cpu_simd_get(SL_CPU_ISA_AUTO)->isa, best);
    unsetenv("SLUICE_CPU_ISA");
    ck_assert_ptr_null(sl_cpu_simd_get((sl_cpu_isa_t)(SL_CPU_ISA_AUTO + 1)));
}
END_TEST

START_TEST(test_matmul_gemv_prefetch_tail) {
    /* M = 1 16-bit GEMV prefetches Z_PF_AHEAD bytes ahead of each weight
     * row, past the last row at the end: results stay exact (and the ASan
     * build shows that only prefetches, never loads, go past the end) */
    backends_open();
    for (int b = 0; b < n_be; b++)
        for (int dt = 0; dt < SL_DTYPE_COUNT; dt++) {
            check_matmul(be_gemv[b], (sl_dtype_t)dt, 1, 37, 2048, true, false);
            check_matmul(be_gemv[b], (sl_dtype_t)dt, 1, 5, 4099, false, true);
        }
    backends_close();
}
END_TEST

/* ---- norms, rope, activations -------------------------------------------------------- */

START_TEST(test_rmsnorm_and_fused_add) {
    backends_open();
    static const uint32_t Ds[] = {1, 7, 64, 1001};
    for (int b = 0; b < n_be; b++) /* every ISA: AVX-512 has its own row kernels */
        for (size_t di = 0; di < 4; di++)
            for (uint32_t M = 1; M <= 50; M += 12) {
                uint32_t D = Ds[di];
                size_t n = (size_t)M * D;
                float *x = malloc(n * 4), *w = malloc(D * 4), *y = malloc(n * 4);
                float *res = malloc(n * 4), *res0 = malloc(n * 4);
                ck_assert(x && w && y && res && res0);
                fill(x, n, 3.0f);
                fill(w, D, 2.0f);
                fill(res0, n, 1.0f);
                float eps = 1e-5f;
                ck_assert_int_eq(sl_backend_rmsnorm(be_gemv[b], y, x, w, M, D, eps), 0);
                for (uint32_t m = 0; m < M; m++) {
                    double ss = 0;
                    for (uint32_t i = 0; i < D; i++) ss += (double)x[m * D + i] * x[m * D + i];
                    double inv = 1.0 / sqrt(ss / D + eps);
                    for (uint32_t i = 0; i < D; i++) {
                        double ref = x[m * D + i] * inv * w[i];
                        ck_assert(close_enough(y[m * D + i], ref, 1e-5 * (fabs(ref) + 1)));
                    }
                }
                /* in place */
                memcpy(res, x, n * 4);
                ck_assert_int_eq(sl_backend_rmsnorm(be_gemv[b], res, res, w, M, D, eps), 0);
                ck_assert(memcmp(res, y, n * 4) == 0);
                /* fused add */
                memcpy(res, res0, n * 4);
                ck_assert_int_eq(sl_backend_add_rmsnorm(be_gemv[b], y, res, x, w, M, D, eps), 0);
                for (uint32_t m = 0; m < M; m++) {
                    double ss = 0;
                    for (uint32_t i = 0; i < D; i++) {
                        float r = res0[m * D + i] + x[m * D + i];
                        ck_assert(res[m * D + i] == r);
                        ss += (double)r * r;
                    }
                    double inv = 1.0 / sqrt(ss / D + eps);
                    for (uint32_t i = 0; i < D; i++) {
                        double ref = res[m * D + i] * inv * w[i];
                        ck_assert(close_enough(y[m * D + i], ref, 1e-5 * (fabs(ref) + 1)));
                    }
                }
                /* x == NULL: plain norm of the residual */
                float *y2 = malloc(n * 4);
                ck_assert_ptr_nonnull(y2);
                ck_assert_int_eq(sl_backend_add_rmsnorm(be_gemv[b], y2, res, NULL, w, M, D, eps),
                                 0);
                ck_assert(memcmp(y2, y, n * 4) == 0);
                free(y2);
                free(x);
                free(w);
                free(y);
                free(res);
                free(res0);
            }
    backends_close();
}
END_TEST

START_TEST(test_rope) {
    backends_open();
    static const uint32_t hds[] = {2, 8, 64, 80, 128};
    for (size_t hi = 0; hi < 5; hi++)
        for (uint32_t heads = 1; heads <= 5; heads += 2)
            for (int partial = 0; partial < 2; partial++) {
                uint32_t hd = hds[hi], rot = partial && hd >= 4 ? hd / 2 : hd, T = 9;
                if (rot & 1u) rot--;
                size_t n = (size_t)T * heads * hd;
                float *x = malloc(n * 4), *x0 = malloc(n * 4), *inv = malloc(rot / 2 * 4);
                uint32_t pos[9] = {0, 1, 2, 15, 16, 17, 1000, 4095, 131071};
                ck_assert(x && x0 && inv);
                for (uint32_t i = 0; i < rot / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / rot);
                fill(x0, n, 2.0f);
                memcpy(x, x0, n * 4);
                ck_assert_int_eq(sl_backend_rope(be_gemv[0], x, pos, inv, T, heads, hd, rot), 0);
                for (uint32_t t = 0; t < T; t++)
                    for (uint32_t h = 0; h < heads; h++) {
                        const float *a = x0 + ((size_t)t * heads + h) * hd;
                        const float *g = x + ((size_t)t * heads + h) * hd;
                        for (uint32_t i = 0; i < rot / 2; i++) {
                            double ang = (double)((float)pos[t] * inv[i]);
                            double r0 = a[i] * cos(ang) - a[i + rot / 2] * sin(ang);
                            double r1 = a[i + rot / 2] * cos(ang) + a[i] * sin(ang);
                            ck_assert(close_enough(g[i], r0, 1e-5));
                            ck_assert(close_enough(g[i + rot / 2], r1, 1e-5));
                        }
                        for (uint32_t i = rot; i < hd; i++) ck_assert(g[i] == a[i]);
                    }
                free(x);
                free(x0);
                free(inv);
            }
    backends_close();
}
END_TEST

/* The backend keeps the last call's cos|sin table while positions and
 * frequencies are equal by value. Every answer must be bit-identical to a
 * fresh backend's: after a repeat (reused table), after the frequencies
 * change in the same buffer, after the positions change, and for a step
 * too long for a table (rows compute their own angles). */
static void rope_fresh(float *x, const uint32_t *pos, const float *inv, uint32_t T, uint32_t heads,
                       uint32_t hd) {
    sl_backend_t *be = NULL;
    sl_cpu_options_t o = {.n_threads = 2, .isa = SL_CPU_ISA_AUTO};
    ck_assert_int_eq(sl_cpu_backend_create(&o, &be), 0);
    ck_assert_int_eq(sl_backend_rope(be, x, pos, inv, T, heads, hd, hd), 0);
    sl_backend_free(be);
}

START_TEST(test_rope_table_reuse_exact) {
    enum { HD = 64, HEADS = 3, TMAX = 4100 };
    sl_backend_t *be = NULL;
    sl_cpu_options_t o = {.n_threads = 2, .isa = SL_CPU_ISA_AUTO};
    ck_assert_int_eq(sl_cpu_backend_create(&o, &be), 0);
    size_t n = (size_t)TMAX * HEADS * HD;
    float *x0 = malloc(n * 4), *x = malloc(n * 4), *y = malloc(n * 4), inv[HD / 2];
    uint32_t *pos = malloc(TMAX * sizeof *pos);
    ck_assert(x0 && x && y && pos);
    fill(x0, n, 2.0f);
    for (uint32_t i = 0; i < HD / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / HD);
    for (uint32_t t = 0; t < TMAX; t++) pos[t] = (t * 7 + 3) % 9000;
    const uint32_t T = 32;
    size_t nt = (size_t)T * HEADS * HD;
    for (int round = 0; round < 4; round++) {
        if (round == 2) /* same buffer, new values */
            for (uint32_t i = 0; i < HD / 2; i++) inv[i] *= 0.5f;
        if (round == 3) /* same T, new positions */
            for (uint32_t t = 0; t < T; t++) pos[t] += 1;
        memcpy(x, x0, nt * 4);
        memcpy(y, x0, nt * 4);
        ck_assert_int_eq(sl_backend_rope(be, x, pos, inv, T, HEADS, HD, HD), 0);
        rope_fresh(y, pos, inv, T, HEADS, HD);
        ck_assert_msg(memcmp(x, y, nt * 4) == 0, "round %d differs from a fresh backend", round);
    }
    /* TMAX rows: no table; the rows must match those of table-sized steps */
    memcpy(x, x0, n * 4);
    ck_assert_int_eq(sl_backend_rope(be, x, pos, inv, TMAX, HEADS, HD, HD), 0);
    memcpy(y, x0, n * 4);
    for (uint32_t t0 = 0; t0 < TMAX; t0 += 1000) {
        uint32_t c = TMAX - t0 < 1000 ? TMAX - t0 : 1000;
        ck_assert_int_eq(
            sl_backend_rope(be, y + (size_t)t0 * HEADS * HD, pos + t0, inv, c, HEADS, HD, HD), 0);
    }
    ck_assert(memcmp(x, y, n * 4) == 0);
    free(pos);
    free(x0);
    free(x);
    free(y);
    sl_backend_free(be);
}
END_TEST

/* A backend on a borrowed pool computes what one on its own pool does,
 * and leaves the pool running (and to its owner to free) when freed. */
static void pool_count(void *arg, size_t b, size_t e, int tid) {
    (void)tid;
    for (size_t i = b; i < e; i++) ((uint8_t *)arg)[i] = 1;
}

START_TEST(test_borrowed_pool) {
    enum { M = 8, N = 96, K = 64 };
    sl_cpu_pool_t *pool = sl_cpu_pool_create(3);
    ck_assert_ptr_nonnull(pool);
    sl_backend_t *own = NULL, *lent = NULL;
    sl_cpu_options_t oo = {.n_threads = 3, .isa = SL_CPU_ISA_AUTO};
    sl_cpu_options_t ol = {.n_threads = 7, .isa = SL_CPU_ISA_AUTO, .pool = pool};
    ck_assert_int_eq(sl_cpu_backend_create(&oo, &own), 0);
    ck_assert_int_eq(sl_cpu_backend_create(&ol, &lent), 0);
    float *x = malloc(M * K * 4), *w = malloc(N * K * 4), *y0 = malloc(M * N * 4),
          *y1 = malloc(M * N * 4);
    ck_assert(x && w && y0 && y1);
    fill(x, M * K, 1.0f);
    fill(w, N * K, 0.5f);
    for (int dt = 0; dt < 2; dt++) {
        uint32_t Ms = dt ? 1 : M;
        ck_assert_int_eq(sl_backend_matmul(own, y0, x, w, SL_DTYPE_F32, NULL, Ms, N, K, false), 0);
        ck_assert_int_eq(sl_backend_matmul(lent, y1, x, w, SL_DTYPE_F32, NULL, Ms, N, K, false), 0);
        ck_assert(memcmp(y0, y1, (size_t)Ms * N * 4) == 0);
    }
    sl_backend_free(lent);
    uint8_t seen[100] = {0};
    sl_cpu_pool_for(pool, 100, 1, pool_count, seen);
    for (int i = 0; i < 100; i++) ck_assert_uint_eq(seen[i], 1);
    sl_cpu_pool_free(pool);
    sl_backend_free(own);
    free(x);
    free(w);
    free(y0);
    free(y1);
}
END_TEST

START_TEST(test_silu_mul_extremes) {
    /* the vector SiLU's exp over its whole range, every ISA: large |g|
     * (exp overflow / underflow), tiny g, Inf and NaN */
    static const float gs[] = {0.0f,   -0.0f,   1e-30f, -1e-30f, 0.5f,     -0.5f,     3.0f,
                               -3.0f,  20.0f,   -20.0f, 87.0f,   -87.0f,   88.8f,     -88.8f,
                               103.0f, -103.0f, 200.0f, -200.0f, INFINITY, -INFINITY, NAN};
    enum { NG = sizeof gs / sizeof gs[0] };
    float g[NG + 40], u[NG + 40], y[NG + 40];
    for (int i = 0; i < NG + 40; i++) {
        g[i] = i < NG ? gs[i] : (float)(i - NG - 20) * 4.4f; /* -88 .. 84 in steps */
        u[i] = i % 3 ? 1.0f : -2.5f;
    }
    backends_open();
    for (int b = 0; b < n_be; b++) {
        ck_assert_int_eq(sl_backend_silu_mul(be_gemv[b], y, g, u, 1, NG + 40, NG + 40), 0);
        for (int i = 0; i < NG + 40; i++) {
            double ref = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
            if (isinf(g[i]) && g[i] > 0) {
                ck_assert(y[i] == (float)ref); /* +-Inf */
                continue;
            }
            if (isnan(g[i]) || g[i] == -INFINITY) {
                ck_assert_msg(isnan(y[i]) || y[i] == 0.0f, "%s g=%g: %g",
                              sl_backend_name(be_gemv[b]), g[i], y[i]);
                continue;
            }
            ck_assert_msg(close_enough(y[i], ref, 4e-7 * fabs(ref) + 1e-30),
                          "b=%d g=%g: %.9g vs %.9g", b, g[i], y[i], ref);
        }
    }
    backends_close();
}
END_TEST

START_TEST(test_silu_mul_add) {
    backends_open();
    for (int b = 0; b < n_be; b++) /* the vector SiLU too */
        for (uint32_t M = 1; M <= 40; M += 13)
            for (uint32_t n = 1; n <= 3000; n = n * 5 + 1) {
                size_t sz = (size_t)M * n * 2;
                float *buf = malloc(sz * 4), *y = malloc((size_t)M * n * 4);
                ck_assert(buf && y);
                fill(buf, sz, 8.0f);
                /* fused gate|up layout: (M, 2n) */
                ck_assert_int_eq(sl_backend_silu_mul(be_gemv[b], y, buf, buf + n, M, n, 2 * n), 0);
                for (uint32_t m = 0; m < M; m++)
                    for (uint32_t i = 0; i < n; i++) {
                        double g = buf[(size_t)m * 2 * n + i], u = buf[(size_t)m * 2 * n + n + i];
                        double ref = g / (1.0 + exp(-g)) * u;
                        ck_assert(close_enough(y[(size_t)m * n + i], ref, 1e-5 * (fabs(ref) + 1)));
                    }
                /* add, in place */
                float *a = malloc((size_t)M * n * 4);
                ck_assert_ptr_nonnull(a);
                fill(a, (size_t)M * n, 1.0f);
                float *y0 = malloc((size_t)M * n * 4);
                ck_assert_ptr_nonnull(y0);
                memcpy(y0, y, (size_t)M * n * 4);
                ck_assert_int_eq(sl_backend_add(be_gemv[0], y, y, a, (size_t)M * n), 0);
                for (size_t i = 0; i < (size_t)M * n; i++) ck_assert(y[i] == y0[i] + a[i]);
                free(a);
                free(y0);
                free(buf);
                free(y);
            }
    backends_close();
}
END_TEST

START_TEST(test_softmax_argmax) {
    backends_open();
    for (uint32_t M = 1; M <= 9; M += 4)
        for (uint32_t n = 1; n <= 40000; n = n * 7 + 3) {
            size_t sz = (size_t)M * n;
            float *x = malloc(sz * 4), *s = malloc(sz * 4), *l = malloc(sz * 4);
            uint32_t am[9];
            ck_assert(x && s && l);
            fill(x, sz, 30.0f);
            if (n > 3) x[2] = -INFINITY;
            memcpy(s, x, sz * 4);
            memcpy(l, x, sz * 4);
            ck_assert_int_eq(sl_backend_softmax(be_gemv[0], s, M, n), 0);
            ck_assert_int_eq(sl_backend_log_softmax(be_gemv[0], l, M, n), 0);
            ck_assert_int_eq(sl_backend_argmax(be_gemv[0], am, x, M, n), 0);
            for (uint32_t m = 0; m < M; m++) {
                const float *r = x + (size_t)m * n;
                double mx = -INFINITY, sum = 0;
                uint32_t best = 0;
                for (uint32_t i = 0; i < n; i++)
                    if (r[i] > mx) {
                        mx = r[i];
                        best = i;
                    }
                for (uint32_t i = 0; i < n; i++) sum += exp(r[i] - mx);
                ck_assert_uint_eq(am[m], best);
                for (uint32_t i = 0; i < n; i++) {
                    double p = exp(r[i] - mx) / sum, lp = r[i] - mx - log(sum);
                    ck_assert(close_enough(s[(size_t)m * n + i], p, 1e-6 * (p + 1e-3)));
                    if (r[i] == -INFINITY)
                        ck_assert(l[(size_t)m * n + i] == -INFINITY);
                    else
                        ck_assert(close_enough(l[(size_t)m * n + i], lp, 2e-5 * (fabs(lp) + 1)));
                }
            }
            free(x);
            free(s);
            free(l);
        }
    /* argmax: ties to the lowest index, NaN skipped, all-NaN row gives 0 */
    float r[3][4] = {{1, 5, 5, 0}, {NAN, -1, NAN, -2}, {NAN, NAN, NAN, NAN}};
    uint32_t am[3];
    ck_assert_int_eq(sl_backend_argmax(be_gemv[0], am, &r[0][0], 3, 4), 0);
    ck_assert_uint_eq(am[0], 1);
    ck_assert_uint_eq(am[1], 1);
    ck_assert_uint_eq(am[2], 0);
    /* all -Inf row: softmax 0, log-softmax -Inf; huge logits stay finite */
    float z[2][3] = {{-INFINITY, -INFINITY, -INFINITY}, {1e30f, 1e30f, -1e30f}};
    float z2[2][3];
    memcpy(z2, z, sizeof z);
    ck_assert_int_eq(sl_backend_softmax(be_gemv[0], &z[0][0], 2, 3), 0);
    ck_assert_int_eq(sl_backend_log_softmax(be_gemv[0], &z2[0][0], 2, 3), 0);
    for (int i = 0; i < 3; i++) {
        ck_assert(z[0][i] == 0.0f);
        ck_assert(z2[0][i] == -INFINITY);
    }
    ck_assert(close_enough(z[1][0], 0.5, 1e-7) && close_enough(z[1][1], 0.5, 1e-7));
    ck_assert(z[1][2] == 0.0f);
    ck_assert(close_enough(z2[1][0], -log(2.0), 1e-6));
    backends_close();
}
END_TEST

START_TEST(test_embed) {
    backends_open();
    for (int b = 0; b < n_be; b++)
        for (int dt = 0; dt < SL_DTYPE_COUNT; dt++)
            for (uint32_t D = 1; D <= 800; D = D * 3 + 5) {
                uint32_t vocab = 37, T = 11;
                size_t es = sl_dtype_size((sl_dtype_t)dt);
                void *tab = malloc((size_t)vocab * D * es);
                float *tf = malloc((size_t)vocab * D * 4), *y = malloc((size_t)T * D * 4);
                uint32_t ids[11] = {0, 36, 5, 5, 17, 1, 2, 3, 35, 0, 20};
                ck_assert(tab && tf && y);
                fill_w(tab, tf, (sl_dtype_t)dt, (size_t)vocab * D);
                ck_assert_int_eq(
                    sl_backend_embed(be_gemv[b], y, tab, (sl_dtype_t)dt, ids, T, D, vocab), 0);
                for (uint32_t t = 0; t < T; t++)
                    ck_assert(memcmp(y + (size_t)t * D, tf + (size_t)ids[t] * D, D * 4) == 0);
                ids[4] = vocab;
                ck_assert_int_eq(
                    sl_backend_embed(be_gemv[b], y, tab, (sl_dtype_t)dt, ids, T, D, vocab),
                    SL_ERANGE);
                free(tab);
                free(tf);
                free(y);
            }
    backends_close();
}
END_TEST

/* ---- paged KV and attention --------------------------------------------------------- */

typedef struct att_case {
    uint32_t block_size, n_kv, group, hd, window, n_layers;
} att_case_t;

/* Reference state: the K/V of every position of every sequence, contiguous. */
typedef struct ref_seq {
    uint32_t len;     /* positions stored */
    uint32_t *blocks; /* block table */
    uint32_t n_blocks;
    float *k, *v; /* (cap, n_kv, hd) for the tested layer */
} ref_seq_t;

static void run_attention_case(sl_backend_t *be, const att_case_t *c, float qscale,
                               sl_dtype_t kvdt) {
    enum { NSEQ = 4, CAP = 70 };
    uint32_t layer = c->n_layers - 1;
    uint32_t n_heads = c->n_kv * c->group, hd = c->hd;
    uint32_t per_seq = (CAP + c->block_size - 1) / c->block_size;
    sl_kv_layout_t kv = {.block_bytes = 0,
                         .n_blocks = NSEQ * per_seq + 3,
                         .block_size = c->block_size,
                         .n_layers = c->n_layers,
                         .n_kv_heads = c->n_kv,
                         .head_dim = hd,
                         .dtype = kvdt};
    kv.block_bytes = sl_kv_block_bytes_min(&kv) + 64; /* padded blocks are allowed */
    size_t total = kv.block_bytes * kv.n_blocks;
    kv.base = malloc(total);
    ck_assert_ptr_nonnull(kv.base);
    memset(kv.base, 0x7f, total); /* canary: NaN-ish garbage where nothing was written */
    /* shuffled physical blocks, handed out to sequences */
    uint32_t *perm = malloc(kv.n_blocks * 4);
    ck_assert_ptr_nonnull(perm);
    for (uint32_t i = 0; i < kv.n_blocks; i++) perm[i] = i;
    for (uint32_t i = kv.n_blocks - 1; i > 0; i--) {
        uint32_t j = rng_u32() % (i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    ref_seq_t rs[NSEQ];
    size_t row_elems = (size_t)c->n_kv * hd;
    for (int s = 0; s < NSEQ; s++) {
        rs[s].len = 0;
        rs[s].n_blocks = per_seq;
        rs[s].blocks = perm + s * per_seq;
        rs[s].k = malloc(CAP * row_elems * 4);
        rs[s].v = malloc(CAP * row_elems * 4);
        ck_assert(rs[s].k && rs[s].v);
    }
    /* steps: a prefill of uneven chunks, then decode steps; some sequences idle */
    static const uint32_t chunks[][NSEQ] = {{5, 1, 0, 17}, {12, 1, 33, 0}, {1, 1, 1, 1},
                                            {1, 0, 1, 1},  {0, 1, 2, 1},   {30, 1, 1, 1}};
    for (size_t step = 0; step < sizeof chunks / sizeof chunks[0]; step++) {
        sl_attn_seq_t seqs[NSEQ];
        uint32_t T = 0;
        for (int s = 0; s < NSEQ; s++) {
            seqs[s] = (sl_attn_seq_t){.n_tokens = chunks[step][s],
                                      .pos = rs[s].len,
                                      .blocks = rs[s].blocks,
                                      .n_blocks = rs[s].n_blocks};
            T += chunks[step][s];
        }
        float *k = malloc((size_t)T * row_elems * 4), *v = malloc((size_t)T * row_elems * 4);
        float *q = malloc((size_t)T * n_heads * hd * 4), *o = malloc((size_t)T * n_heads * hd * 4);
        ck_assert(k && v && q && o);
        fill(k, (size_t)T * row_elems, 1.0f);
        fill(v, (size_t)T * row_elems, 1.0f);
        fill(q, (size_t)T * n_heads * hd, qscale);
        if (kvdt != SL_DTYPE_F32) /* the stored values are these, rounded */
            for (size_t i = 0; i < (size_t)T * row_elems; i++) {
                uint16_t hk = kvdt == SL_DTYPE_BF16 ? sl_f32_to_bf16(k[i]) : sl_f32_to_f16(k[i]);
                uint16_t hv = kvdt == SL_DTYPE_BF16 ? sl_f32_to_bf16(v[i]) : sl_f32_to_f16(v[i]);
                k[i] = kvdt == SL_DTYPE_BF16 ? sl_bf16_to_f32(hk) : sl_f16_to_f32(hk);
                v[i] = kvdt == SL_DTYPE_BF16 ? sl_bf16_to_f32(hv) : sl_f16_to_f32(hv);
            }
        ck_assert_int_eq(sl_backend_kv_write(be, &kv, layer, seqs, NSEQ, k, v), 0);
        ck_assert_int_eq(
            sl_backend_attention(be, o, q, &kv, layer, seqs, NSEQ, n_heads, c->window, 0.0f), 0);
        uint32_t row = 0;
        for (int s = 0; s < NSEQ; s++) {
            memcpy(rs[s].k + (size_t)rs[s].len * row_elems, k + (size_t)row * row_elems,
                   (size_t)seqs[s].n_tokens * row_elems * 4);
            memcpy(rs[s].v + (size_t)rs[s].len * row_elems, v + (size_t)row * row_elems,
                   (size_t)seqs[s].n_tokens * row_elems * 4);
            for (uint32_t i = 0; i < seqs[s].n_tokens; i++, row++) {
                uint32_t p = rs[s].len + i;
                uint32_t lo = c->window && p + 1 > c->window ? p + 1 - c->window : 0;
                for (uint32_t h = 0; h < n_heads; h++) {
                    uint32_t g = h / c->group;
                    const float *qv = q + ((size_t)row * n_heads + h) * hd;
                    double mx = -INFINITY, sc[CAP];
                    for (uint32_t j = lo; j <= p; j++) {
                        double d = 0;
                        for (uint32_t e = 0; e < hd; e++)
                            d += (double)qv[e] * rs[s].k[((size_t)j * c->n_kv + g) * hd + e];
                        sc[j] = d / sqrt((double)hd);
                        if (sc[j] > mx) mx = sc[j];
                    }
                    double sum = 0;
                    for (uint32_t j = lo; j <= p; j++) sum += exp(sc[j] - mx);
                    const float *ov = o + ((size_t)row * n_heads + h) * hd;
                    for (uint32_t e = 0; e < hd; e++) {
                        double ref = 0;
                        for (uint32_t j = lo; j <= p; j++)
                            ref +=
                                exp(sc[j] - mx) / sum * rs[s].v[((size_t)j * c->n_kv + g) * hd + e];
                        ck_assert_msg(close_enough(ov[e], ref, 2e-5),
                                      "bs=%u kv=%u grp=%u hd=%u win=%u step=%zu s=%d p=%u h=%u "
                                      "e=%u got %g want %g",
                                      c->block_size, c->n_kv, c->group, hd, c->window, step, s, p,
                                      h, e, ov[e], ref);
                    }
                }
            }
            rs[s].len += seqs[s].n_tokens;
        }
        free(k);
        free(v);
        free(q);
        free(o);
    }
    /* the stored KV sits exactly where the layout says; other layers untouched */
    size_t plane = (size_t)c->block_size * hd;
    for (int s = 0; s < NSEQ; s++)
        for (uint32_t p = 0; p < rs[s].len; p++)
            for (uint32_t g = 0; g < c->n_kv; g++) {
                uint32_t b = rs[s].blocks[p / c->block_size], t = p % c->block_size;
                const char *blk = (const char *)kv.base + (size_t)b * kv.block_bytes;
                size_t es = sl_dtype_size(kvdt);
                const char *kp =
                    blk + ((((size_t)layer * 2 + 0) * c->n_kv + g) * plane + t * hd) * es;
                const char *vp =
                    blk + ((((size_t)layer * 2 + 1) * c->n_kv + g) * plane + t * hd) * es;
                float kf[128], vf[128];
                ck_assert_int_eq(sl_dtype_to_f32(kf, kp, kvdt, hd), 0);
                ck_assert_int_eq(sl_dtype_to_f32(vf, vp, kvdt, hd), 0);
                ck_assert(memcmp(kf, rs[s].k + ((size_t)p * c->n_kv + g) * hd, hd * 4) == 0);
                ck_assert(memcmp(vf, rs[s].v + ((size_t)p * c->n_kv + g) * hd, hd * 4) == 0);
                if (layer > 0) ck_assert(*(const uint32_t *)blk == 0x7f7f7f7fu);
            }
    for (int s = 0; s < NSEQ; s++) {
        free(rs[s].k);
        free(rs[s].v);
    }
    free(perm);
    free(kv.base);
}

START_TEST(test_attn_run_kernels) {
    /* the per-run attention kernels, where an ISA has them: scores against a
     * double dot product, accumulation bit-exact against axpby per key (its
     * contract), over head_dim tails and runs of 1..64 keys */
    static const size_t hds[] = {1, 9, 16, 17, 64, 80, 130};
    static const size_t ns[] = {1, 15, 16, 17, 33, 64};
    enum { HMAX = 130, NMAX = 64 };
    float *k = malloc((size_t)NMAX * HMAX * 4), q[HMAX], s[NMAX], p[NMAX], a1[HMAX], a2[HMAX];
    ck_assert(k);
    int tested = 0;
    for (int isa = SL_CPU_ISA_SCALAR; isa <= SL_CPU_ISA_AMX; isa++) {
        const sl_cpu_simd_t *t = sl_cpu_simd_get((sl_cpu_isa_t)isa);
        if (!t || !t->attn_scores || !t->attn_accum) continue;
        tested++;
        for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++)
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                size_t hd = hds[hi], n = ns[ni];
                fill(k, n * hd, 1.0f);
                fill(q, hd, 1.0f);
                fill(p, n, 1.0f);
                t->attn_scores(q, k, hd, n, 0.125f, s);
                for (size_t c = 0; c < n; c++) {
                    double ref = 0, mag = 0;
                    for (size_t d = 0; d < hd; d++) {
                        ref += (double)q[d] * k[c * hd + d];
                        mag += fabs((double)q[d] * k[c * hd + d]);
                    }
                    ck_assert_msg(close_enough(s[c], 0.125 * ref, 2e-6 * (mag + 1)),
                                  "%s hd=%zu n=%zu c=%zu: %g vs %g", t->name, hd, n, c, s[c],
                                  0.125 * ref);
                }
                fill(a1, hd, 1.0f);
                memcpy(a2, a1, sizeof a1);
                t->attn_accum(a1, k, p, n, hd);
                for (size_t c = 0; c < n; c++) t->axpby(a2, 1.0f, k + c * hd, p[c], hd);
                ck_assert_msg(memcmp(a1, a2, hd * 4) == 0, "%s accum hd=%zu n=%zu", t->name, hd, n);
            }
    }
    if (sl_cpu_isa_detect() >= SL_CPU_ISA_AVX512) ck_assert_int_ge(tested, 1);
    free(k);
}
END_TEST

START_TEST(test_attention_paged) {
    static const att_case_t cases[] = {
        {16, 2, 3, 64, 0, 2}, {1, 1, 1, 4, 0, 1},    {3, 2, 4, 17, 0, 3}, {16, 1, 8, 32, 5, 1},
        {7, 4, 1, 16, 9, 2},  {16, 2, 2, 128, 0, 1}, {5, 1, 2, 9, 1, 1},  {64, 2, 1, 8, 0, 1},
    };
    backends_open();
    for (int b = 0; b < n_be; b++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            run_attention_case(be_gemv[b], &cases[i], 1.0f, SL_DTYPE_F32);
    /* bf16 / f16 KV memory: values round on write, the math stays f32 */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i += 2) {
        run_attention_case(be_gemv[n_be - 1], &cases[i], 1.0f, SL_DTYPE_BF16);
        run_attention_case(be_gemv[0], &cases[i + 1], 1.0f, SL_DTYPE_F16);
    }
    /* large logits: the online softmax must stay finite and exact */
    att_case_t big = {4, 1, 2, 16, 0, 1};
    run_attention_case(be_gemv[n_be - 1], &big, 40.0f, SL_DTYPE_F32);
    backends_close();
}
END_TEST

/* ---- bad input -------------------------------------------------------------------------- */

START_TEST(test_bad_input) {
    sl_backend_t *be = NULL;
    ck_assert_int_eq(sl_backend_create("tpu", NULL, &be), SL_EINVAL);
    ck_assert_ptr_null(be);
    ck_assert_int_eq(sl_backend_create("cpu", NULL, NULL), SL_EINVAL);
    int rc = sl_backend_create("cuda", NULL, &be); /* no plugin or no GPU here: refused */
    ck_assert(rc == 0 || rc == SL_EUNAVAIL);
    sl_backend_free(be);
    be = NULL;
    sl_cpu_options_t bad = {.n_threads = -1};
    ck_assert_int_eq(sl_cpu_backend_create(&bad, &be), SL_EINVAL);
    sl_backend_free(NULL);
    ck_assert_int_eq(sl_backend_create(NULL, NULL, &be), 0);
    ck_assert_ptr_nonnull(be);
    ck_assert(sl_backend_host_memory(be));
    sl_backend_free(be);
    ck_assert_int_eq(sl_backend_create("cpu", &(sl_backend_config_t){.n_threads = 2}, &be), 0);
    ck_assert_str_eq(sl_backend_name(be), "cpu");

    float x[64] = {0}, y[64] = {0}, w[64] = {0};
    uint32_t ids[4] = {0}, pos[4] = {0};
    /* memory hooks */
    ck_assert_ptr_null(sl_backend_alloc(be, 0));
    void *p = sl_backend_alloc(be, 100);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq((uintptr_t)p % 64, 0);
    ck_assert_int_eq(sl_backend_copy_in(be, p, x, 64), 0);
    ck_assert_int_eq(sl_backend_copy_out(be, y, p, 64), 0);
    ck_assert_int_eq(sl_backend_copy_in(be, NULL, x, 4), SL_EINVAL);
    ck_assert_int_eq(sl_backend_sync(be), 0);
    sl_backend_mem_free(be, p);
    sl_backend_mem_free(be, NULL);

    /* matmul */
    ck_assert_int_eq(sl_backend_matmul(NULL, y, x, w, SL_DTYPE_F32, NULL, 1, 1, 1, false),
                     SL_EINVAL);
    ck_assert_int_eq(sl_backend_matmul(be, y, x, w, SL_DTYPE_F32, NULL, 0, 1, 1, false), SL_EINVAL);
    ck_assert_int_eq(sl_backend_matmul(be, y, x, w, (sl_dtype_t)5, NULL, 1, 1, 1, false),
                     SL_EINVAL);
    ck_assert_int_eq(sl_backend_matmul(be, x, x, w, SL_DTYPE_F32, NULL, 1, 1, 1, false), SL_EINVAL);
    ck_assert_int_eq(sl_backend_matmul(be, y, NULL, w, SL_DTYPE_F32, NULL, 1, 1, 1, false),
                     SL_EINVAL);
    ck_assert_int_eq(
        sl_backend_matmul(be, y, x, w, SL_DTYPE_F32, NULL, 1u << 30, 1u << 30, 1, false),
        SL_EINVAL);
    /* norms, rope, activations */
    ck_assert_int_eq(sl_backend_rmsnorm(be, y, x, NULL, 1, 4, 1e-5f), SL_EINVAL);
    ck_assert_int_eq(sl_backend_rmsnorm(be, y, x, w, 1, 4, NAN), SL_EINVAL);
    ck_assert_int_eq(sl_backend_rmsnorm(be, y, x, w, 1, 0, 1e-5f), SL_EINVAL);
    ck_assert_int_eq(sl_backend_add_rmsnorm(be, y, y, x, w, 1, 4, 1e-5f), SL_EINVAL);
    ck_assert_int_eq(sl_backend_rope(be, x, pos, w, 1, 1, 8, 3), SL_EINVAL);
    ck_assert_int_eq(sl_backend_rope(be, x, pos, w, 1, 1, 8, 10), SL_EINVAL);
    ck_assert_int_eq(sl_backend_rope(be, x, pos, w, 1, 1, 8, 0), SL_EINVAL);
    ck_assert_int_eq(sl_backend_rope(be, x, NULL, w, 1, 1, 8, 8), SL_EINVAL);
    ck_assert_int_eq(sl_backend_rope(be, x, pos, w, 1, 1, 2048, 8), SL_EINVAL);
    ck_assert_int_eq(sl_backend_silu_mul(be, y, x, w, 2, 8, 4), SL_EINVAL);
    ck_assert_int_eq(sl_backend_silu_mul(be, x, x, x + 4, 2, 4, 8), SL_EINVAL);
    ck_assert_int_eq(sl_backend_add(be, y, x, NULL, 4), SL_EINVAL);
    ck_assert_int_eq(sl_backend_add(be, y, x, w, 0), SL_EINVAL);
    ck_assert_int_eq(sl_backend_softmax(be, NULL, 1, 4), SL_EINVAL);
    ck_assert_int_eq(sl_backend_log_softmax(be, x, 0, 4), SL_EINVAL);
    ck_assert_int_eq(sl_backend_argmax(be, NULL, x, 1, 4), SL_EINVAL);
    ck_assert_int_eq(sl_backend_embed(be, y, w, SL_DTYPE_F32, ids, 1, 4, 0), SL_EINVAL);
    ck_assert_int_eq(sl_backend_embed(be, y, w, (sl_dtype_t)3, ids, 1, 4, 4), SL_EINVAL);
    ids[0] = 4;
    ck_assert_int_eq(sl_backend_embed(be, y, w, SL_DTYPE_F32, ids, 1, 4, 4), SL_ERANGE);

    /* paged KV */
    float kvmem[2 * 2 * 4 * 4 * 4]; /* 4 blocks of [1 layer][k|v][2 heads][4 tokens][4] */
    uint32_t blocks[3] = {0, 1, 3};
    sl_kv_layout_t kv = {.base = kvmem,
                         .n_blocks = 4,
                         .block_size = 4,
                         .n_layers = 1,
                         .n_kv_heads = 2,
                         .head_dim = 4,
                         .dtype = SL_DTYPE_F32};
    ck_assert_uint_eq(sl_kv_block_bytes_min(&kv), 2 * 4 * 1 * 2 * 4 * 4);
    kv.block_bytes = sl_kv_block_bytes_min(&kv);
    float k[2 * 8] = {0}, q[4 * 8] = {0}, o[4 * 8];
    sl_attn_seq_t seq = {.n_tokens = 2, .pos = 6, .blocks = blocks, .n_blocks = 2};
    ck_assert_int_eq(sl_backend_kv_write(be, &kv, 0, &seq, 1, k, k), 0);
    ck_assert_int_eq(sl_backend_attention(be, o, q, &kv, 0, &seq, 1, 4, 0, 0.0f), 0);
    seq.pos = 7; /* needs a third block */
    ck_assert_int_eq(sl_backend_kv_write(be, &kv, 0, &seq, 1, k, k), SL_ERANGE);
    ck_assert_int_eq(sl_backend_attention(be, o, q, &kv, 0, &seq, 1, 4, 0, 0.0f), SL_ERANGE);
    seq.n_blocks = 3; /* now long enough, but names block 3 of a 3-block pool */
    kv.n_blocks = 3;
    ck_assert_int_eq(sl_backend_kv_write(be, &kv, 0, &seq, 1, k, k), SL_ERANGE);
    ck_assert_int_eq(sl_backend_attention(be, o, q, &kv, 0, &seq, 1, 4, 0, 0.0f), SL_ERANGE);
    kv.n_blocks = 4;
    ck_assert_int_eq(sl_backend_kv_write(be, &kv, 0, &seq, 1, k, k), 0);
    seq.pos = 6;
    seq.n_blocks = 2;
    ck_assert_int_eq(sl_backend_kv_write(be, &kv, 1, &seq, 1, k, k), SL_ERANGE); /* layer */
    ck_assert_int_eq(sl_backend_attention(be, o, q, &kv, 0, &seq, 1, 3, 0, 0.0f), SL_EINVAL);
    ck_assert_int_eq(sl_backend_attention(be, q, q, &kv, 0, &seq, 1, 4, 0, 0.0f), SL_EINVAL);
    ck_assert_int_eq(sl_backend_attention(be, o, q, &kv, 0, NULL, 1, 4, 0, 0.0f), SL_EINVAL);
    ck_assert_int_eq(sl_backend_attention(be, o, q, &kv, 0, &seq, 0, 4, 0, 0.0f), SL_EINVAL);
    seq.pos = UINT32_MAX;
    ck_assert_int_eq(sl_backend_kv_write(be, &kv, 0, &seq, 1, k, k), SL_ERANGE);
    seq.pos = 0;
    seq.blocks = NULL;
    ck_assert_int_eq(sl_backend_kv_write(be, &kv, 0, &seq, 1, k, k), SL_EINVAL);
    seq.blocks = blocks;
    kv.block_bytes = 8; /* smaller than one block needs */
    ck_assert_int_eq(sl_backend_kv_write(be, &kv, 0, &seq, 1, k, k), SL_EINVAL);
    kv.block_bytes = sl_kv_block_bytes_min(&kv);
    kv.head_dim = 0;
    ck_assert_int_eq(sl_backend_kv_write(be, &kv, 0, &seq, 1, k, k), SL_EINVAL);
    kv.head_dim = 4;
    kv.dtype = SL_DTYPE_BF16;
    kv.block_bytes = sl_kv_block_bytes_min(&kv);
    ck_assert_int_eq(sl_backend_kv_write(be, &kv, 0, &seq, 1, k, k), 0); /* bf16 KV */
    ck_assert_int_eq(sl_backend_attention(be, o, q, &kv, 0, &seq, 1, 4, 0, 0.0f), 0);
    kv.dtype = (sl_dtype_t)9;
    ck_assert_int_eq(sl_backend_kv_write(be, &kv, 0, &seq, 1, k, k), SL_EINVAL);
    ck_assert_uint_eq(sl_kv_block_bytes_min(&kv), 0);
    ck_assert_uint_eq(sl_kv_block_bytes_min(NULL), 0);
    sl_backend_free(be);
}
END_TEST

int main(void) {
    Suite *s = suite_create("kernels_cpu");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_f16_exhaustive);
    tcase_add_test(tc, test_f16_rounding_vs_hw);
    tcase_add_test(tc, test_bf16_conversions);
    tcase_add_test(tc, test_vector_conversions_match_scalar);
    tcase_add_test(tc, test_pool_covers_every_index_once);
    tcase_add_test(tc, test_pool_back_to_back_jobs);
    tcase_add_test(tc, test_pool_default_threads_env);
    tcase_add_test(tc, test_matmul_shapes);
    tcase_add_test(tc, test_matmul_model_shapes);
    tcase_add_test(tc, test_gemm_panel_vs_scalar);
    tcase_add_test(tc, test_matmul_panel_path);
    tcase_add_test(tc, test_matmul_gemv_prefetch_tail);
    tcase_add_test(tc, test_gemm_bf16x_vs_scalar);
    tcase_add_test(tc, test_gemm_bf16x_specials);
    tcase_add_test(tc, test_matmul_bf16x_path);
    tcase_add_test(tc, test_rmsnorm_and_fused_add);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_rope_table_reuse_exact);
    tcase_add_test(tc, test_borrowed_pool);
    tcase_add_test(tc, test_silu_mul_extremes);
    tcase_add_test(tc, test_silu_mul_add);
    tcase_add_test(tc, test_softmax_argmax);
    tcase_add_test(tc, test_embed);
    tcase_add_test(tc, test_attn_run_kernels);
    tcase_add_test(tc, test_attention_paged);
    tcase_add_test(tc, test_bad_input);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
