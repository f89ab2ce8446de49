/* kernels_bench.c - CPU kernel yardsticks and how close the kernels get.
 *
 * Measures, in one run on the same threads:
 *  1. memory read bandwidth: a STREAM-style vectorized sum over a buffer far
 *     larger than the last-level cache, all threads;
 *  2. OpenBLAS SGEMM GFLOP/s with its own threads (square and prefill shapes);
 *  3. the backend's matmul at the ~100M model's shapes (hidden 768,
 *     intermediate 2048/3072, vocab 32000) for f32/f16/bf16 weights:
 *     decode (M = 1, 8, 32) as effective weight GB/s and fraction of the read
 *     bandwidth, and prefill (M = 512) as GFLOP/s and fraction of SGEMM.
 * Weights rotate over copies that together are as big as the bandwidth
 * buffer, so each call streams them from memory as a real decode step does.
 *
 * Usage: kernels_bench [--threads N] [--mib MiB] [--quick]
 */
#include "common/base/err.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/threadpool.h"
#include "kernels/cpu/yardstick.h"

#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- backend matmul ---------------------------------------------------------------- */

typedef struct shape {
    const char *name;
    uint32_t N, K;
} shape_t;

static const shape_t shapes[] = {
    {"qkv/o 768x768", 768, 768}, {"up 2048x768", 2048, 768},   {"down 768x2048", 768, 2048},
    {"up 3072x768", 3072, 768},  {"down 768x3072", 768, 3072}, {"lm_head 32000x768", 32000, 768},
};

/* Seconds per call, median of reps, weights rotating over copies. */
static double time_matmul(sl_backend_t *be, sl_dtype_t dt, uint32_t M, const shape_t *s,
                          void **copies, int n_copies, float *x, float *y, int reps) {
    double *t = malloc(sizeof(double) * (size_t)reps);
    if (!t) return 0;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        int rc = sl_backend_matmul(be, y, x, copies[r % n_copies], dt, NULL, M, s->N, s->K, false);
        t[r] = now_s() - t0;
        if (rc != 0) {
            fprintf(stderr, "matmul: %s\n", sl_strerror(rc));
            free(t);
            return 0;
        }
    }
    for (int i = 1; i < reps; i++) /* insertion sort: reps is small */
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double tmp = t[j];
            t[j] = t[j - 1];
            t[j - 1] = tmp;
        }
    /* the median: the best call could be one whose weights are still in the
     * last-level cache, the worst one measures the neighbours */
    double med = t[reps / 2];
    free(t);
    return med;
}

int main(int argc, char **argv) {
    int n_threads = 0, quick = 0;
    size_t mib = 1024;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            n_threads = (int)strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--mib") && i + 1 < argc)
            mib = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else {
            fprintf(stderr, "usage: %s [--threads N] [--mib MiB] [--quick]\n", argv[0]);
            return 2;
        }
    }
    if (quick && mib == 1024) mib = 256;
    if (n_threads <= 0) n_threads = sl_cpu_pool_default_threads();
    sl_cpu_pool_t *pool = sl_cpu_pool_create(n_threads);
    if (!pool) return 1;

    /* yardsticks: best of two rounds, the second after the kernels ran */
    double bw = cpu_yardstick_read_bw(pool, mib << 20);
    double sg_sq = cpu_yardstick_sgemm(n_threads, 1024, 1024, 1024);
    double sg_pf = cpu_yardstick_sgemm(n_threads, 512, 2048, 768);

    sl_backend_t *be = NULL;
    sl_cpu_options_t opt = {.n_threads = n_threads, .isa = SL_CPU_ISA_AUTO};
    int rc = sl_cpu_backend_create(&opt, &be);
    if (rc != 0) {
        fprintf(stderr, "backend: %s\n", sl_strerror(rc));
        return 1;
    }
    const sl_cpu_simd_t *simd = sl_cpu_simd_get(SL_CPU_ISA_AUTO);
    printf("threads %d, kernels %s, buffer %zu MiB\n", n_threads, simd->name, mib);
    printf("read bandwidth (sum, all threads):   %8.1f GB/s\n", bw);
    printf("OpenBLAS SGEMM 1024^3:               %8.1f GFLOP/s\n", sg_sq);
    printf("OpenBLAS SGEMM 512x2048x768 (prefill):%7.1f GFLOP/s\n\n", sg_pf);

    printf("%-20s %-5s %4s %10s %9s %8s %9s\n", "shape", "dtype", "M", "us/call", "GB/s", "of bw",
           "GFLOP/s");
    static const uint32_t Ms[] = {1, 8, 32, 512};
    size_t n_shapes = quick ? 3 : sizeof shapes / sizeof shapes[0];
    double frac_sum[SL_DTYPE_COUNT] = {0}, bytes_sum[SL_DTYPE_COUNT] = {0},
           t_sum[SL_DTYPE_COUNT] = {0}, pf_min = 1e9, t_m[SL_DTYPE_COUNT][4] = {{0}};
    for (size_t si = 0; si < n_shapes; si++) {
        const shape_t *s = &shapes[si];
        for (int dt = 0; dt < SL_DTYPE_COUNT; dt++) {
            size_t wbytes = (size_t)s->N * s->K * sl_dtype_size((sl_dtype_t)dt);
            int n_copies = (int)((mib << 20) / wbytes);
            if (n_copies < 2) n_copies = 2;
            if (n_copies > 4096) n_copies = 4096;
            void **copies = calloc((size_t)n_copies, sizeof *copies);
            float *x = malloc(512 * (size_t)s->K * 4), *y = malloc(512 * (size_t)s->N * 4);
            if (!copies || !x || !y) return 1;
            for (int c = 0; c < n_copies; c++) {
                copies[c] = malloc(wbytes);
                if (!copies[c]) return 1;
                memset(copies[c], 0x3c, wbytes); /* small finite values in every dtype */
            }
            for (size_t i = 0; i < 512 * (size_t)s->K; i++) x[i] = 0.01f * (float)(i % 17);
            for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
                uint32_t M = Ms[mi];
                int reps = M == 512 ? (quick ? 3 : 5) : (n_copies < 64 ? 64 : n_copies);
                if (quick && reps > 64) reps = 64;
                (void)time_matmul(be, (sl_dtype_t)dt, M, s, copies, n_copies, x, y, 2);
                double t = time_matmul(be, (sl_dtype_t)dt, M, s, copies, n_copies, x, y, reps);
                double gbs = wbytes / t / 1e9, gf = 2.0 * M * s->N * s->K / t / 1e9;
                printf("%-20s %-5s %4u %10.1f %9.1f %7.0f%% %9.1f", s->name,
                       sl_dtype_name((sl_dtype_t)dt), M, t * 1e6, gbs, 100.0 * gbs / bw, gf);
                if (M == 512) {
                    printf("  (%.0f%% of SGEMM)", 100.0 * gf / sg_pf);
                    if (gf / sg_pf < pf_min) pf_min = gf / sg_pf;
                }
                printf("\n");
                if (M == 1) {
                    frac_sum[dt] += gbs / bw;
                    bytes_sum[dt] += (double)wbytes;
                    t_sum[dt] += t;
                }
                t_m[dt][mi] += t;
            }
            for (int c = 0; c < n_copies; c++) free(copies[c]);
            free(copies);
            free(x);
            free(y);
        }
    }
    {
        double bw2 = cpu_yardstick_read_bw(pool, mib << 20);
        double sq2 = cpu_yardstick_sgemm(n_threads, 1024, 1024, 1024);
        double pf2 = cpu_yardstick_sgemm(n_threads, 512, 2048, 768);
        openblas_set_num_threads(1); /* back to the backend's setting */
        printf("\nyardsticks again after the kernels: read %.1f GB/s, SGEMM %.1f / %.1f GFLOP/s\n",
               bw2, sq2, pf2);
        if (bw2 > bw) {
            for (int dt = 0; dt < SL_DTYPE_COUNT; dt++) frac_sum[dt] *= bw / bw2;
            bw = bw2;
        }
        if (pf2 > sg_pf) {
            pf_min *= sg_pf / pf2;
            sg_pf = pf2;
        }
        if (sq2 > sg_sq) sg_sq = sq2;
        printf("(fractions below use the best yardsticks: read %.1f GB/s, prefill SGEMM %.1f "
               "GFLOP/s)\n",
               bw, sg_pf);
    }
    sl_cpu_pool_free(pool);
    printf("\nsummary over the shapes above (one layer's worth of each, summed):\n");
    for (int dt = 0; dt < SL_DTYPE_COUNT; dt++)
        printf("  %-4s M=1: %6.1f GB/s = %3.0f%% of read bandwidth; M=8 costs %.2fx, M=32 "
               "%.2fx the time of M=1\n",
               sl_dtype_name((sl_dtype_t)dt), bytes_sum[dt] / t_sum[dt] / 1e9,
               100.0 * bytes_sum[dt] / t_sum[dt] / 1e9 / bw, t_m[dt][1] / t_m[dt][0],
               t_m[dt][2] / t_m[dt][0]);
    printf("  bf16 vs f32 at M=1: %.2fx faster; f16 vs f32: %.2fx\n",
           t_sum[SL_DTYPE_F32] / t_sum[SL_DTYPE_BF16], t_sum[SL_DTYPE_F32] / t_sum[SL_DTYPE_F16]);
    printf("  prefill M=512: worst shape at %.0f%% of the SGEMM rate\n", 100.0 * pf_min);
    (void)frac_sum;
    sl_backend_free(be);
    return 0;
}
