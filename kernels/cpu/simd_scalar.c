/* simd_scalar.c - the portable primitives, and the run-time ISA choice.
 *
 * Plain C, no intrinsics: the fallback on CPUs without AVX2 and the baseline
 * the vector tables are tested against.
 */
#include "kernels/cpu/simd.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

static void scalar_f16_to_f32(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = sl_f16_to_f32(src[i]);
}

static void scalar_bf16_to_f32(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = sl_bf16_to_f32(src[i]);
}

static inline float scalar_load(const void *w, sl_dtype_t dt, size_t i) {
    switch (dt) {
    case SL_DTYPE_F16:
        return sl_f16_to_f32(((const uint16_t *)w)[i]);
    case SL_DTYPE_BF16:
        return sl_bf16_to_f32(((const uint16_t *)w)[i]);
    default:
        return ((const float *)w)[i];
    }
}

static inline void scalar_gemv_tile(sl_dtype_t dt, const float *x, size_t ldx, int mb,
                                    const void *w, size_t ldw, int rb, size_t K, float *out) {
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < rb; r++) {
            const float *xm = x + (size_t)m * ldx;
            float acc = 0.0f;
            for (size_t k = 0; k < K; k++) acc += xm[k] * scalar_load(w, dt, (size_t)r * ldw + k);
            out[m * 4 + r] = acc;
        }
}

static void scalar_gemv_f32(const float *x, size_t ldx, int mb, const void *w, size_t ldw, int rb,
                            size_t K, float *out, const void *pf, size_t pf_bytes) {
    (void)pf;
    (void)pf_bytes;
    scalar_gemv_tile(SL_DTYPE_F32, x, ldx, mb, w, ldw, rb, K, out);
}

static void scalar_gemv_f16(const float *x, size_t ldx, int mb, const void *w, size_t ldw, int rb,
                            size_t K, float *out, const void *pf, size_t pf_bytes) {
    (void)pf;
    (void)pf_bytes;
    scalar_gemv_tile(SL_DTYPE_F16, x, ldx, mb, w, ldw, rb, K, out);
}

static void scalar_gemv_bf16(const float *x, size_t ldx, int mb, const void *w, size_t ldw, int rb,
                             size_t K, float *out, const void *pf, size_t pf_bytes) {
    (void)pf;
    (void)pf_bytes;
    scalar_gemv_tile(SL_DTYPE_BF16, x, ldx, mb, w, ldw, rb, K, out);
}

static float scalar_dot(const float *a, const float *b, size_t n) {
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

static void scalar_axpby(float *y, float alpha, const float *x, float beta, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = alpha * y[i] + beta * x[i];
}

const sl_cpu_simd_t sl_cpu_simd_scalar = {
    .isa = SL_CPU_ISA_SCALAR,
    .name = "scalar",
    .f16_to_f32 = scalar_f16_to_f32,
    .bf16_to_f32 = scalar_bf16_to_f32,
    .gemv_tile = {[SL_DTYPE_F32] = scalar_gemv_f32,
                  [SL_DTYPE_F16] = scalar_gemv_f16,
                  [SL_DTYPE_BF16] = scalar_gemv_bf16},
    .dot = scalar_dot,
    .axpby = scalar_axpby,
};

#if defined(__x86_64__) || defined(__i386__)
/* AVX512_BF16 (cpuid 7.1 EAX bit 5) and AMX-TILE + AMX-BF16 (7.0 EDX bits
 * 24, 22) with the OS saving tile state (XCR0 bits 17, 18) and granting this
 * process the tile data (arch_prctl ARCH_REQ_XCOMP_PERM, Linux >= 5.16; the
 * permission is process-wide, so every pool thread may then use the tiles). */
#define SIMD_ARCH_REQ_XCOMP_PERM 0x1023
#define SIMD_XFEATURE_XTILEDATA  18

static sl_cpu_isa_t simd_detected;

static void simd_detect_once(void) {
    sl_cpu_isa_t isa = SL_CPU_ISA_SCALAR;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = SL_CPU_ISA_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && isa == SL_CPU_ISA_AVX2)
        isa = SL_CPU_ISA_AVX512;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (isa == SL_CPU_ISA_AVX512 && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5)))
        isa = SL_CPU_ISA_AVX512_BF16;
    if (isa == SL_CPU_ISA_AVX512_BF16 && __get_cpuid_count(7, 0, &a, &b, &c, &d) &&
        (d & (1u << 24)) && (d & (1u << 22))) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0)); /* OSXSAVE: AVX-512 implies it */
        (void)hi;
        if ((lo & (3u << 17)) == (3u << 17) &&
            syscall(SYS_arch_prctl, SIMD_ARCH_REQ_XCOMP_PERM, SIMD_XFEATURE_XTILEDATA) == 0)
            isa = SL_CPU_ISA_AMX;
    }
    simd_detected = isa;
}
#endif

sl_cpu_isa_t sl_cpu_isa_detect(void) {
#if defined(__x86_64__) || defined(__i386__)
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, simd_detect_once);
    return simd_detected;
#else
    return SL_CPU_ISA_SCALAR;
#endif
}

static const sl_cpu_simd_t *simd_table(sl_cpu_isa_t isa) {
    switch (isa) {
#if defined(__x86_64__) || defined(__i386__)
    case SL_CPU_ISA_AMX:
        return &sl_cpu_simd_amx;
    case SL_CPU_ISA_AVX512_BF16:
        return &sl_cpu_simd_avx512bf16;
    case SL_CPU_ISA_AVX512:
        return &sl_cpu_simd_avx512;
    case SL_CPU_ISA_AVX2:
        return &sl_cpu_simd_avx2;
#endif
    default:
        return &sl_cpu_simd_scalar;
    }
}

const sl_cpu_simd_t *sl_cpu_simd_get(sl_cpu_isa_t isa) {
    static const char *const names[] = {"scalar", "avx2", "avx512", "avx512bf16", "amx"};
    sl_cpu_isa_t best = sl_cpu_isa_detect();
    if (isa == SL_CPU_ISA_AUTO) {
        isa = best;
        const char *cap = getenv("SLUICE_CPU_ISA");
        for (int i = 0; cap && i < (int)(sizeof names / sizeof names[0]); i++)
            if (!strcasecmp(cap, names[i]) && (sl_cpu_isa_t)i < isa) isa = (sl_cpu_isa_t)i;
    }
    if (isa > best || isa < SL_CPU_ISA_SCALAR) return NULL;
    return simd_table(isa);
}
