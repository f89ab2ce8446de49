/* yardstick.c - machine yardsticks for benchmarks (see yardstick.h). */
#include "kernels/cpu/yardstick.h"

#include <cblas.h>
#include <immintrin.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

__attribute__((target("avx512f"))) static float sum_avx512(const float *p, size_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

__attribute__((target("avx2"))) static float sum_avx2(const float *p, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

static float sum_scalar(const float *p, size_t n) {
    float s = 0;
    for (size_t i = 0; i < n; i++) s += p[i];
    return s;
}

typedef struct bw_args {
    float *buf;    /* (n) */
    size_t n;      /* floats, a multiple of 64 * chunks */
    size_t chunks; /* one per thread */
    float (*sum)(const float *, size_t);
    float out[1024];
    int init;
} bw_args_t;

static void bw_task(void *arg, size_t b, size_t e, int tid) {
    bw_args_t *a = arg;
    size_t per = a->n / a->chunks;
    for (size_t c = b; c < e; c++) {
        float *p = a->buf + c * per;
        if (a->init) {
            for (size_t i = 0; i < per; i++) p[i] = (float)(i & 7);
        } else {
            a->out[tid] += a->sum(p, per);
        }
    }
}

double cpu_yardstick_read_bw(sl_cpu_pool_t *pool, size_t bytes) {
    bw_args_t a = {0};
    a.chunks = (size_t)sl_cpu_pool_size(pool);
    a.n = bytes / 4 / (64 * a.chunks) * (64 * a.chunks);
    if (a.n == 0 || posix_memalign((void **)&a.buf, 64, a.n * 4) != 0) return 0;
    __builtin_cpu_init();
    a.sum = __builtin_cpu_supports("avx512f") ? sum_avx512
            : __builtin_cpu_supports("avx2")  ? sum_avx2
                                              : sum_scalar;
    a.init = 1; /* first touch from the threads that will read */
    sl_cpu_pool_for(pool, a.chunks, 1, bw_task, &a);
    a.init = 0;
    double best = 0;
    for (int rep = 0; rep < 7; rep++) {
        double t0 = now_s();
        sl_cpu_pool_for(pool, a.chunks, 1, bw_task, &a);
        double gbs = (double)a.n * 4.0 / (now_s() - t0) / 1e9;
        if (rep > 0 && gbs > best) best = gbs;
    }
    volatile float sink = a.out[0];
    (void)sink;
    free(a.buf);
    return best;
}

double cpu_yardstick_sgemm(int nt, int M, int N, int K) {
    float *a = malloc((size_t)M * K * 4), *b = malloc((size_t)N * K * 4),
          *c = malloc((size_t)M * N * 4);
    double best = 0;
    if (!a || !b || !c) goto out;
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)(i % 13) * 0.1f;
    for (size_t i = 0; i < (size_t)N * K; i++) b[i] = (float)(i % 7) * 0.1f;
    openblas_set_num_threads(nt);
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
        double gf = 2.0 * M * N * K / (now_s() - t0) / 1e9;
        if (rep > 0 && gf > best) best = gf;
    }
    openblas_set_num_threads(1); /* the CPU backend's setting */
out:
    free(a);
    free(b);
    free(c);
    return best;
}
