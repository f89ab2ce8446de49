/* backend.c - backend selection, dtype helpers and the validating wrappers.
 *
 * Every op goes through a wrapper here that checks pointers, shapes, size
 * overflow and host index arrays once, so each backend (CPU today, CUDA from
 * a plugin later) can assume well-formed arguments.
 */
#include "kernels/backend.h"

#include "common/base/err.h"
#include "common/base/log.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/simd.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

struct sl_backend {
    const sl_backend_ops_t *ops;
    void *ctx;
    void *dl; /* plugin handle, or NULL */
};

/* Upper bounds that keep every index product far from overflow. */
#define BE_MAX_DIM        (1u << 24) /* any single dimension */
#define BE_MAX_HEAD_DIM   1024u      /* head_dim */
#define BE_MAX_BLOCK_SIZE 4096u      /* tokens per KV block */

/* ---- dtypes ----------------------------------------------------------------- */

size_t sl_dtype_size(sl_dtype_t dt) {
    switch (dt) {
    case SL_DTYPE_F32:
        return 4;
    case SL_DTYPE_F16:
        return 2;
    case SL_DTYPE_BF16:
        return 2;
    default:
        return 0;
    }
}

const char *sl_dtype_name(sl_dtype_t dt) {
    switch (dt) {
    case SL_DTYPE_F32:
        return "f32";
    case SL_DTYPE_F16:
        return "f16";
    case SL_DTYPE_BF16:
        return "bf16";
    default:
        return "?";
    }
}

float sl_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else { /* subnormal: normalize */
            uint32_t e = 127 - 15 + 1;
            while (!(mant & 0x400u)) {
                mant <<= 1;
                e--;
            }
            u = sign | (e << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t sl_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    u &= 0x7fffffffu;
    if (u > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((u >> 13) & 0x3ffu)); /* NaN */
    if (u >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to Inf */
    if (u < 0x38800000u) {                                   /* below the smallest normal */
        if (u <= 0x33000000u) return sign;                   /* <= 2^-25 rounds to 0 */
        uint32_t e = u >> 23, mant = (u & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    u -= 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t r = u >> 13, rem = u & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
    return (uint16_t)(sign | r);
}

static const sl_cpu_simd_t *be_simd_table;
static pthread_once_t be_simd_once = PTHREAD_ONCE_INIT;

static void be_simd_init(void) {
    be_simd_table = sl_cpu_simd_get(SL_CPU_ISA_AUTO);
}

/* The vector table conversions use (the best level; never NULL). */
static const sl_cpu_simd_t *be_simd(void) {
    pthread_once(&be_simd_once, be_simd_init);
    return be_simd_table;
}

int sl_dtype_to_f32(float *dst, const void *src, sl_dtype_t dt, size_t n) {
    if ((!dst || !src) && n) return SL_EINVAL;
    const sl_cpu_simd_t *simd = be_simd();
    switch (dt) {
    case SL_DTYPE_F32:
        memmove(dst, src, n * sizeof(float));
        return 0;
    case SL_DTYPE_F16:
        simd->f16_to_f32(dst, src, n);
        return 0;
    case SL_DTYPE_BF16:
        simd->bf16_to_f32(dst, src, n);
        return 0;
    default:
        return SL_EINVAL;
    }
}

int sl_dtype_from_f32(void *dst, sl_dtype_t dt, const float *src, size_t n) {
    if ((!dst || !src) && n) return SL_EINVAL;
    uint16_t *h = dst;
    switch (dt) {
    case SL_DTYPE_F32:
        memmove(dst, src, n * sizeof(float));
        return 0;
    case SL_DTYPE_F16:
        for (size_t i = 0; i < n; i++) h[i] = sl_f32_to_f16(src[i]);
        return 0;
    case SL_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) h[i] = sl_f32_to_bf16(src[i]);
        return 0;
    default:
        return SL_EINVAL;
    }
}

/* ---- KV layout --------------------------------------------------------------- */

size_t sl_kv_block_bytes_min(const sl_kv_layout_t *kv) {
    if (!kv) return 0;
    size_t es = sl_dtype_size(kv->dtype), n = 2 * es;
    if (!es) return 0;
    if (__builtin_mul_overflow(n, (size_t)kv->n_layers, &n) ||
        __builtin_mul_overflow(n, (size_t)kv->n_kv_heads, &n) ||
        __builtin_mul_overflow(n, (size_t)kv->block_size, &n) ||
        __builtin_mul_overflow(n, (size_t)kv->head_dim, &n))
        return 0;
    return n;
}

static int be_check_kv(const sl_kv_layout_t *kv, uint32_t layer) {
    if (!kv || !kv->base || kv->n_blocks == 0 || kv->block_size == 0 ||
        kv->block_size > BE_MAX_BLOCK_SIZE || kv->n_layers == 0 || kv->n_kv_heads == 0 ||
        kv->n_kv_heads > BE_MAX_DIM || kv->head_dim == 0 || kv->head_dim > BE_MAX_HEAD_DIM)
        return SL_EINVAL;
    if (layer >= kv->n_layers) return SL_ERANGE;
    size_t need = sl_kv_block_bytes_min(kv), total;
    if (need == 0 || kv->block_bytes < need) return SL_EINVAL;
    if (__builtin_mul_overflow(kv->block_bytes, (size_t)kv->n_blocks, &total)) return SL_EINVAL;
    return 0;
}

/* Checks the sequences against the layout; stores the total row count. */
static int be_check_seqs(const sl_kv_layout_t *kv, const sl_attn_seq_t *seqs, uint32_t n_seqs,
                         uint32_t *rows) {
    uint64_t t = 0;
    if (n_seqs == 0 || !seqs) return SL_EINVAL;
    for (uint32_t s = 0; s < n_seqs; s++) {
        const sl_attn_seq_t *q = &seqs[s];
        uint64_t end = (uint64_t)q->pos + q->n_tokens;
        if (end > UINT32_MAX) return SL_ERANGE;
        if (q->n_tokens == 0) continue;
        if (!q->blocks) return SL_EINVAL;
        uint64_t need = (end + kv->block_size - 1) / kv->block_size;
        if (need > q->n_blocks) return SL_ERANGE;
        for (uint64_t b = 0; b < need; b++)
            if (q->blocks[b] >= kv->n_blocks) return SL_ERANGE;
        t += q->n_tokens;
    }
    if (t == 0 || t > BE_MAX_DIM) return SL_EINVAL;
    *rows = (uint32_t)t;
    return 0;
}

static bool be_dim_ok(uint32_t d) {
    return d > 0 && d <= BE_MAX_DIM;
}

/* a * b elements fit size_t and stay under 2^40 (a sanity bound for one op). */
static bool be_elems_ok(uint64_t a, uint64_t b) {
    uint64_t n;
    return !__builtin_mul_overflow(a, b, &n) && n <= (1ull << 40);
}

/* ---- lifetime ---------------------------------------------------------------- */

int sl_backend_wrap(const sl_backend_ops_t *ops, void *ctx, sl_backend_t **out) {
    int rc = 0;
    sl_backend_t *be = NULL;
    if (!ops || !out || ops->abi_version != SL_BACKEND_ABI_VERSION) {
        rc = SL_EINVAL;
        goto out;
    }
    be = calloc(1, sizeof *be);
    if (!be) {
        rc = SL_ENOMEM;
        goto out;
    }
    be->ops = ops;
    be->ctx = ctx;
    ctx = NULL;
    *out = be;
out:
    if (ctx && ops && ops->destroy) ops->destroy(ctx);
    return rc;
}

/* True when the CUDA driver loads and reports at least one device. Probing
 * the driver directly keeps a GPU-less start at a few milliseconds. */
static bool be_cuda_device_present(void) {
    bool present = false;
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) return false;
    int (*cu_init)(unsigned) = (int (*)(unsigned))dlsym(h, "cuInit");
    int (*cu_count)(int *) = (int (*)(int *))dlsym(h, "cuDeviceGetCount");
    int n = 0;
    if (cu_init && cu_count && cu_init(0) == 0 && cu_count(&n) == 0 && n > 0) present = true;
    dlclose(h);
    return present;
}

static int be_plugin_open(const char *path, const sl_backend_config_t *cfg, sl_backend_t **out) {
    int rc = SL_EUNAVAIL;
    const sl_backend_ops_t *ops = NULL;
    void *ctx = NULL;
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        LOG_DEBUG("backend: cannot load %s: %s", path, dlerror());
        goto out;
    }
    sl_backend_plugin_open_fn open_fn;
    void *sym = dlsym(dl, SL_BACKEND_PLUGIN_SYMBOL);
    memcpy(&open_fn, &sym, sizeof open_fn);
    if (!open_fn) {
        LOG_WARN("backend: %s has no %s", path, SL_BACKEND_PLUGIN_SYMBOL);
        goto out;
    }
    rc = open_fn(SL_BACKEND_ABI_VERSION, cfg, &ops, &ctx);
    if (rc != 0) {
        LOG_WARN("backend: %s refused to open: %s", path, sl_strerror(rc));
        goto out;
    }
    rc = sl_backend_wrap(ops, ctx, out);
    if (rc != 0) goto out;
    (*out)->dl = dl;
    dl = NULL;
out:
    if (dl) dlclose(dl);
    return rc;
}

static int be_cuda_open(const sl_backend_config_t *cfg, sl_backend_t **out) {
    char path[PATH_MAX];
    const char *env = getenv("SLUICE_CUDA_LIB");
    if (env && *env) return be_plugin_open(env, cfg, out);
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n > 0) {
        path[n] = '\0';
        char *slash = strrchr(path, '/');
        if (slash) {
            *slash = '\0';
            size_t len = strlen(path);
            if (snprintf(path + len, sizeof path - len, "/../lib/libsluice_cuda.so") <
                    (int)(sizeof path - len) &&
                access(path, R_OK) == 0)
                return be_plugin_open(path, cfg, out);
        }
    }
    return be_plugin_open("libsluice_cuda.so", cfg, out);
}

int sl_backend_create(const char *name, const sl_backend_config_t *cfg, sl_backend_t **out) {
    sl_backend_config_t def = {0};
    if (!out) return SL_EINVAL;
    *out = NULL;
    if (!cfg) cfg = &def;
    if (!name || !*name || !strcasecmp(name, "auto")) {
        const char *env = getenv("SLUICE_BACKEND");
        name = env && *env ? env : "auto";
    }
    if (!strcasecmp(name, "cpu")) {
        sl_cpu_options_t opt = {.n_threads = cfg->n_threads, .isa = SL_CPU_ISA_AUTO};
        return sl_cpu_backend_create(&opt, out);
    }
    if (!strncasecmp(name, "cuda", 4) && (name[4] == '\0' || name[4] == ':')) {
        /* "cuda" or "cuda:N" (device ordinal N, overriding cfg->device). */
        sl_backend_config_t dev = *cfg;
        if (name[4] == ':') {
            char *end = NULL;
            unsigned long n = strtoul(name + 5, &end, 10);
            if (name[5] < '0' || name[5] > '9' || *end || n > 1024) {
                LOG_ERROR("backend: bad device '%s' (cuda:N with N a device ordinal)", name);
                return SL_EINVAL;
            }
            dev.device = (int)n;
        }
        /* Probe the driver before loading the plugin: without a device the
         * answer costs milliseconds, not the CUDA runtime's start-up. */
        if (!be_cuda_device_present()) {
            LOG_WARN("backend: '%s' asked for, but no CUDA device (libcuda.so.1 missing, or "
                     "it reports none)",
                     name);
            return SL_EUNAVAIL;
        }
        return be_cuda_open(&dev, out);
    }
    if (!strcasecmp(name, "auto")) {
        if (be_cuda_device_present() && be_cuda_open(cfg, out) == 0) return 0;
        sl_cpu_options_t opt = {.n_threads = cfg->n_threads, .isa = SL_CPU_ISA_AUTO};
        return sl_cpu_backend_create(&opt, out);
    }
    LOG_ERROR("backend: unknown backend '%s' (cpu, cuda, cuda:N, auto)", name);
    return SL_EINVAL;
}

void sl_backend_free(sl_backend_t *be) {
    if (!be) return;
    if (be->ops->destroy) be->ops->destroy(be->ctx);
    if (be->dl) dlclose(be->dl);
    free(be);
}

const char *sl_backend_name(const sl_backend_t *be) {
    return be ? be->ops->name : "none";
}

bool sl_backend_host_memory(const sl_backend_t *be) {
    return be && be->ops->host_memory;
}

/* ---- memory ------------------------------------------------------------------- */

void *sl_backend_alloc(sl_backend_t *be, size_t bytes) {
    if (!be || bytes == 0) return NULL;
    return be->ops->alloc(be->ctx, bytes);
}

void sl_backend_mem_free(sl_backend_t *be, void *p) {
    if (!be || !p) return;
    be->ops->free(be->ctx, p);
}

int sl_backend_copy_in(sl_backend_t *be, void *dst, const void *src_host, size_t bytes) {
    if (!be || ((!dst || !src_host) && bytes)) return SL_EINVAL;
    if (bytes == 0) return 0;
    return be->ops->copy_in(be->ctx, dst, src_host, bytes);
}

int sl_backend_copy_out(sl_backend_t *be, void *dst_host, const void *src, size_t bytes) {
    if (!be || ((!dst_host || !src) && bytes)) return SL_EINVAL;
    if (bytes == 0) return 0;
    return be->ops->copy_out(be->ctx, dst_host, src, bytes);
}

int sl_backend_sync(sl_backend_t *be) {
    if (!be) return SL_EINVAL;
    return be->ops->sync(be->ctx);
}

/* ---- ops ------------------------------------------------------------------------ */

int sl_backend_matmul(sl_backend_t *be, float *y, const float *x, const void *w, sl_dtype_t wdt,
                      const float *bias, uint32_t M, uint32_t N, uint32_t K, bool accumulate) {
    if (!be || !y || !x || !w || sl_dtype_size(wdt) == 0) return SL_EINVAL;
    if (!be_dim_ok(M) || !be_dim_ok(N) || !be_dim_ok(K)) return SL_EINVAL;
    if (!be_elems_ok(N, K) || !be_elems_ok(M, N) || !be_elems_ok(M, K)) return SL_EINVAL;
    if ((const void *)y == (const void *)x || (const void *)y == w) return SL_EINVAL;
    return be->ops->matmul(be->ctx, y, x, w, wdt, bias, M, N, K, accumulate);
}

int sl_backend_rmsnorm(sl_backend_t *be, float *y, const float *x, const float *w, uint32_t M,
                       uint32_t D, float eps) {
    if (!be || !y || !x || !w || !be_dim_ok(M) || !be_dim_ok(D) || !be_elems_ok(M, D))
        return SL_EINVAL;
    if (!(eps >= 0.0f)) return SL_EINVAL;
    return be->ops->rmsnorm(be->ctx, y, x, w, M, D, eps);
}

int sl_backend_add_rmsnorm(sl_backend_t *be, float *y, float *residual, const float *x,
                           const float *w, uint32_t M, uint32_t D, float eps) {
    if (!be || !y || !residual || !w || !be_dim_ok(M) || !be_dim_ok(D) || !be_elems_ok(M, D))
        return SL_EINVAL;
    if (y == residual || (const float *)y == x || !(eps >= 0.0f)) return SL_EINVAL;
    return be->ops->add_rmsnorm(be->ctx, y, residual, x, w, M, D, eps);
}

int sl_backend_rope(sl_backend_t *be, float *x, const uint32_t *pos, const float *inv_freq,
                    uint32_t T, uint32_t n_heads, uint32_t head_dim, uint32_t rot_dim) {
    if (!be || !x || !pos || !inv_freq || !be_dim_ok(T) || !be_dim_ok(n_heads)) return SL_EINVAL;
    if (head_dim == 0 || head_dim > BE_MAX_HEAD_DIM || rot_dim < 2 || rot_dim > head_dim ||
        (rot_dim & 1u))
        return SL_EINVAL;
    if (!be_elems_ok((uint64_t)T * n_heads, head_dim)) return SL_EINVAL;
    return be->ops->rope(be->ctx, x, pos, inv_freq, T, n_heads, head_dim, rot_dim);
}

int sl_backend_silu_mul(sl_backend_t *be, float *y, const float *gate, const float *up, uint32_t M,
                        uint32_t n, uint32_t in_stride) {
    if (!be || !y || !gate || !up || !be_dim_ok(M) || !be_dim_ok(n) || in_stride < n ||
        !be_elems_ok(M, in_stride))
        return SL_EINVAL;
    if (in_stride != n && ((const float *)y == gate || (const float *)y == up)) return SL_EINVAL;
    return be->ops->silu_mul(be->ctx, y, gate, up, M, n, in_stride);
}

int sl_backend_add(sl_backend_t *be, float *y, const float *a, const float *b, size_t n) {
    if (!be || !y || !a || !b || n == 0 || !be_elems_ok(n, 1)) return SL_EINVAL;
    return be->ops->add(be->ctx, y, a, b, n);
}

int sl_backend_softmax(sl_backend_t *be, float *x, uint32_t M, uint32_t n) {
    if (!be || !x || !be_dim_ok(M) || !be_dim_ok(n) || !be_elems_ok(M, n)) return SL_EINVAL;
    return be->ops->softmax(be->ctx, x, M, n);
}

int sl_backend_log_softmax(sl_backend_t *be, float *x, uint32_t M, uint32_t n) {
    if (!be || !x || !be_dim_ok(M) || !be_dim_ok(n) || !be_elems_ok(M, n)) return SL_EINVAL;
    return be->ops->log_softmax(be->ctx, x, M, n);
}

int sl_backend_argmax(sl_backend_t *be, uint32_t *out, const float *x, uint32_t M, uint32_t n) {
    if (!be || !out || !x || !be_dim_ok(M) || !be_dim_ok(n) || !be_elems_ok(M, n)) return SL_EINVAL;
    return be->ops->argmax(be->ctx, out, x, M, n);
}

int sl_backend_embed(sl_backend_t *be, float *y, const void *table, sl_dtype_t dt,
                     const uint32_t *ids, uint32_t T, uint32_t D, uint32_t vocab) {
    if (!be || !y || !table || !ids || sl_dtype_size(dt) == 0) return SL_EINVAL;
    if (!be_dim_ok(T) || !be_dim_ok(D) || vocab == 0 || !be_elems_ok(vocab, D) ||
        !be_elems_ok(T, D))
        return SL_EINVAL;
    for (uint32_t t = 0; t < T; t++)
        if (ids[t] >= vocab) return SL_ERANGE;
    return be->ops->embed(be->ctx, y, table, dt, ids, T, D, vocab);
}

int sl_backend_kv_write(sl_backend_t *be, const sl_kv_layout_t *kv, uint32_t layer,
                        const sl_attn_seq_t *seqs, uint32_t n_seqs, const float *k,
                        const float *v) {
    uint32_t rows = 0;
    if (!be || !k || !v) return SL_EINVAL;
    int rc = be_check_kv(kv, layer);
    if (rc == 0) rc = be_check_seqs(kv, seqs, n_seqs, &rows);
    if (rc != 0) return rc;
    return be->ops->kv_write(be->ctx, kv, layer, seqs, n_seqs, k, v);
}

int sl_backend_attention(sl_backend_t *be, float *out, const float *q, const sl_kv_layout_t *kv,
                         uint32_t layer, const sl_attn_seq_t *seqs, uint32_t n_seqs,
                         uint32_t n_heads, uint32_t window, float scale) {
    uint32_t rows = 0;
    if (!be || !out || !q || (const float *)out == q) return SL_EINVAL;
    int rc = be_check_kv(kv, layer);
    if (rc == 0) rc = be_check_seqs(kv, seqs, n_seqs, &rows);
    if (rc != 0) return rc;
    if (n_heads == 0 || n_heads % kv->n_kv_heads != 0 || n_heads > BE_MAX_DIM ||
        !be_elems_ok((uint64_t)rows * n_heads, kv->head_dim))
        return SL_EINVAL;
    if (scale != scale) return SL_EINVAL;
    return be->ops->attention(be->ctx, out, q, kv, layer, seqs, n_seqs, n_heads, window, scale);
}
