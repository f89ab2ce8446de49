/* cpu_backend.c - the CPU backend's context, memory hooks and vtable. */
#include "kernels/cpu/cpu_backend.h"

#include "common/base/err.h"
#include "common/base/log.h"
#include "kernels/cpu/cpu_internal.h"

#include <cblas.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define CPU_GEMM_MIN_M_DEFAULT 64u
#define CPU_PANEL_MIN_M_F32    24u

/* Allocations from this size on (fused weights, KV memory, big scratch) are
 * 2 MiB aligned and asked to be backed by transparent huge pages (the
 * kernel's THP mode is usually "madvise"): weights and KV are streamed, and
 * 4 KiB pages cost a TLB walk every 64 cache lines. */
#define CPU_HUGE_MIN   ((size_t)4 << 20)
#define CPU_HUGE_ALIGN ((size_t)2 << 20)

static void *cpu_alloc(void *ctx, size_t bytes) {
    (void)ctx;
    void *p = NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes) return NULL;
    if (rounded >= CPU_HUGE_MIN) {
        size_t huge = (rounded + CPU_HUGE_ALIGN - 1) & ~(CPU_HUGE_ALIGN - 1);
        if (huge >= rounded && posix_memalign(&p, CPU_HUGE_ALIGN, huge) == 0) {
            (void)madvise(p, huge, MADV_HUGEPAGE); /* advice only: 4 KiB pages still work */
            return p;
        }
    }
    return posix_memalign(&p, 64, rounded) == 0 ? p : NULL;
}

static void cpu_free(void *ctx, void *p) {
    (void)ctx;
    free(p);
}

static int cpu_copy(void *ctx, void *dst, const void *src, size_t bytes) {
    (void)ctx;
    memmove(dst, src, bytes);
    return 0;
}

static int cpu_sync(void *ctx) {
    (void)ctx;
    return 0;
}

int cpu_scratch_reserve(cpu_ctx_t *c, size_t floats) {
    if (floats > SIZE_MAX / sizeof(float)) return SL_ENOMEM;
    for (int t = 0; t < c->n_threads; t++) {
        if (c->scratch_cap[t] >= floats) continue;
        float *p = cpu_alloc(c, floats * sizeof(float));
        if (!p) return SL_ENOMEM;
        free(c->scratch[t]);
        c->scratch[t] = p;
        c->scratch_cap[t] = floats;
    }
    return 0;
}

int cpu_buf_reserve(void **buf, size_t *cap, size_t n, size_t elem) {
    size_t bytes;
    if (n <= *cap) return 0;
    if (__builtin_mul_overflow(n, elem, &bytes)) return SL_ENOMEM;
    void *p = cpu_alloc(NULL, bytes);
    if (!p) return SL_ENOMEM;
    free(*buf);
    *buf = p;
    *cap = n;
    return 0;
}

static void cpu_destroy(void *ctx) {
    cpu_ctx_t *c = ctx;
    if (!c) return;
    if (c->own_pool) sl_cpu_pool_free(c->pool);
    if (c->scratch)
        for (int t = 0; t < c->n_threads; t++) free(c->scratch[t]);
    free(c->scratch);
    free(c->scratch_cap);
    free(c->row_seq);
    free(c->row_first);
    free(c->rope_cs);
    free(c->rope_pos);
    free(c->xp);
    free(c->xb);
    free(c);
}

static const sl_backend_ops_t cpu_ops = {
    .abi_version = SL_BACKEND_ABI_VERSION,
    .name = "cpu",
    .host_memory = true,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy_in = cpu_copy,
    .copy_out = cpu_copy,
    .sync = cpu_sync,
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .add_rmsnorm = cpu_add_rmsnorm,
    .rope = cpu_rope,
    .silu_mul = cpu_silu_mul,
    .add = cpu_add,
    .softmax = cpu_softmax,
    .log_softmax = cpu_log_softmax,
    .argmax = cpu_argmax,
    .embed = cpu_embed,
    .kv_write = cpu_kv_write,
    .attention = cpu_attention,
};

/* A positive integer from $name, else def. */
static uint32_t cpu_env_u32(const char *name, uint32_t def) {
    const char *env = getenv(name);
    if (env && *env) {
        char *end = NULL;
        errno = 0;
        unsigned long v = strtoul(env, &end, 10);
        if (errno == 0 && end && *end == '\0' && v > 0 && v <= UINT32_MAX) return (uint32_t)v;
        LOG_WARN("cpu backend: ignoring %s='%s'", name, env);
    }
    return def;
}

int sl_cpu_backend_create(const sl_cpu_options_t *opt, sl_backend_t **out) {
    int rc = 0;
    sl_cpu_options_t def = {.isa = SL_CPU_ISA_AUTO};
    cpu_ctx_t *c = NULL;
    if (!out) return SL_EINVAL;
    *out = NULL;
    if (!opt) opt = &def;
    if (opt->n_threads < 0 || opt->isa > SL_CPU_ISA_AUTO) return SL_EINVAL;
    c = calloc(1, sizeof *c);
    if (!c) {
        rc = SL_ENOMEM;
        goto out;
    }
    c->simd = sl_cpu_simd_get(opt->isa);
    if (!c->simd) {
        rc = SL_EUNSUPPORTED;
        goto out;
    }
    c->gemm_min_m = opt->gemm_min_m ? opt->gemm_min_m
                                    : cpu_env_u32("SLUICE_GEMM_MIN_M", CPU_GEMM_MIN_M_DEFAULT);
    /* Measured (bench/RESULTS.md): the panel kernel beats the tile from M = 24
     * with f32 weights; with bf16/f16 the tile, which widens in registers,
     * is as fast, so they keep it unless asked. */
    uint32_t pm = opt->panel_min_m ? opt->panel_min_m : cpu_env_u32("SLUICE_PANEL_MIN_M", 0);
    for (int d = 0; d < SL_DTYPE_COUNT; d++)
        c->panel_min_m[d] = pm ? pm : d == SL_DTYPE_F32 ? CPU_PANEL_MIN_M_F32 : UINT32_MAX;
    /* bf16 weights with bf16 dot products (AMX / AVX512_BF16) from M = 2:
     * one pass over the weights for all rows like the tile, without the
     * widening; the ceiling defaults to every M (it beats widened SGEMM at
     * prefill too, bench/RESULTS.md). */
    c->bf16x_min_m = cpu_env_u32("SLUICE_BF16X_MIN_M", 2);
    c->bf16x_max_m = cpu_env_u32("SLUICE_BF16X_MAX_M", UINT32_MAX);
    c->own_pool = !opt->pool;
    c->pool = opt->pool ? opt->pool : sl_cpu_pool_create(opt->n_threads);
    if (!c->pool) {
        rc = SL_ENOMEM;
        goto out;
    }
    c->n_threads = sl_cpu_pool_size(c->pool);
    c->scratch = calloc((size_t)c->n_threads, sizeof *c->scratch);
    c->scratch_cap = calloc((size_t)c->n_threads, sizeof *c->scratch_cap);
    if (!c->scratch || !c->scratch_cap) {
        rc = SL_ENOMEM;
        goto out;
    }
    /* Our pool parallelizes over N; each SGEMM call runs on its caller's thread. */
    openblas_set_num_threads(1);
    LOG_DEBUG("cpu backend: %d threads, %s kernels, f32 panels from M=%u, sgemm from M=%u%s",
              c->n_threads, c->simd->name, c->panel_min_m[SL_DTYPE_F32], c->gemm_min_m,
              c->simd->gemm_bf16x ? ", bf16x for bf16 weights" : "");
    rc = sl_backend_wrap(&cpu_ops, c, out);
    c = NULL; /* owned by the backend now, or destroyed by the wrap */
out:
    cpu_destroy(c);
    return rc;
}
