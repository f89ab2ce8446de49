/* test_kernels_cuda.c - the CUDA backend against the CPU backend.
 *
 * Loader tests run everywhere: "auto" without a GPU picks the CPU and never
 * maps libcudart; "cuda" without one is SL_EUNAVAIL; a missing or foreign
 * plugin is refused; the plugin's entry points validate their arguments.
 * Op tests need a GPU: each one opens libsluice_cuda.so itself (for the
 * extension table) and, when no device is present, prints
 * "<test>: skipped: no GPU" and passes. With a GPU every op runs over many
 * shapes on both backends and the results must agree within an NMSE bound
 * per dtype (f32 1e-9, f16 1e-5, bf16 1e-4 where a low-precision operand is
 * involved); argmax and sampling must pick the same ids.
 */
#include "common/base/err.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_ext.h"

#include <check.h>
#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- plugin discovery ---------------------------------------------------------- */

/* build/tests/unit/test_kernels_cuda -> build/lib/libsluice_cuda.so */
static bool plugin_path(char *out, size_t len) {
    const char *env = getenv("SLUICE_CUDA_LIB");
    if (env && *env) return snprintf(out, len, "%s", env) < (int)len && access(out, R_OK) == 0;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return false;
    exe[n] = '\0';
    char *s = strrchr(exe, '/');
    if (!s) return false;
    *s = '\0';
    return snprintf(out, len, "%s/../../lib/libsluice_cuda.so", exe) < (int)len &&
           access(out, R_OK) == 0;
}

static bool maps_contain(const char *needle) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[1024];
    bool found = false;
    if (!f) return false;
    while (!found && fgets(line, sizeof line, f)) found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

/* ---- GPU session: both backends, the extension table ---------------------------- */

static sl_backend_t *cpu, *gpu;
static void *gctx, *dl;
static const sl_cuda_ext_t *ext;

static void session_close(void) {
    sl_backend_free(gpu);
    sl_backend_free(cpu);
    gpu = cpu = NULL;
    gctx = NULL;
    ext = NULL;
    if (dl) dlclose(dl);
    dl = NULL;
}

/* True with cpu, gpu, gctx and ext set; false (and nothing open) without a GPU. */
static bool session_open(void) {
    char path[PATH_MAX];
    const sl_backend_ops_t *ops = NULL;
    if (!plugin_path(path, sizeof path)) return false;
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) return false;
    sl_backend_plugin_open_fn open_fn;
    sl_cuda_ext_fn ext_fn;
    void *s1 = dlsym(dl, SL_BACKEND_PLUGIN_SYMBOL), *s2 = dlsym(dl, SL_CUDA_EXT_SYMBOL);
    memcpy(&open_fn, &s1, sizeof open_fn);
    memcpy(&ext_fn, &s2, sizeof ext_fn);
    ck_assert_ptr_nonnull(s1);
    ck_assert_ptr_nonnull(s2);
    int rc = open_fn(SL_BACKEND_ABI_VERSION, NULL, &ops, &gctx);
    if (rc == SL_EUNAVAIL) {
        session_close();
        return false;
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(sl_backend_wrap(ops, gctx, &gpu), 0);
    ext = ext_fn();
    ck_assert_uint_eq(ext->version, SL_CUDA_EXT_VERSION);
    ck_assert_int_eq(sl_backend_create("cpu", &(sl_backend_config_t){.n_threads = 2}, &cpu), 0);
    return true;
}

#define NEED_GPU()                                                                                 \
    do {                                                                                           \
        if (!session_open()) {                                                                     \
            printf("%s: skipped: no GPU\n", __func__);                                             \
            fflush(stdout);                                                                        \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* ---- data helpers --------------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / (1ull << 24))) * 2.0f - 1.0f;
}

static float *rand_f32(size_t n, float scale) {
    float *p = malloc(n * sizeof *p);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = frand() * scale;
    return p;
}

/* Device copy of host bytes. */
static void *up(const void *h, size_t bytes) {
    void *d = sl_backend_alloc(gpu, bytes);
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(sl_backend_copy_in(gpu, d, h, bytes), 0);
    return d;
}

static float *down(const void *d, size_t n) {
    float *h = malloc(n * sizeof *h);
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(sl_backend_copy_out(gpu, h, d, n * sizeof *h), 0);
    return h;
}

/* sum (a - ref)^2 / sum ref^2 (or the plain squared error for a zero ref). */
static double nmse(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) != isnan(ref[i])) return INFINITY;
        if (isnan(ref[i]) || (isinf(ref[i]) && a[i] == ref[i])) continue;
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

static double bound(sl_dtype_t dt) {
    return dt == SL_DTYPE_F32 ? 1e-9 : dt == SL_DTYPE_F16 ? 1e-5 : 1e-4;
}

#define CHECK_NMSE(a, ref, n, dt, fmt, ...)                                                        \
    do {                                                                                           \
        double e_ = nmse((a), (ref), (n)), b_ = bound(dt);                                         \
        ck_assert_msg(e_ <= b_, fmt " (nmse %.3g > %.1g)", __VA_ARGS__, e_, b_);                   \
    } while (0)

/* ---- loader (no GPU needed) ------------------------------------------------------------ */

START_TEST(test_auto_without_gpu_stays_light) {
    sl_backend_t *be = NULL;
    unsetenv("SLUICE_BACKEND");
    ck_assert_int_eq(sl_backend_create("auto", NULL, &be), 0);
    ck_assert_ptr_nonnull(be);
    if (strcmp(sl_backend_name(be), "cpu") == 0) {
        /* The probe never pulls the CUDA runtime or cuBLAS into a CPU process. */
        ck_assert(!maps_contain("libcudart"));
        ck_assert(!maps_contain("libcublas"));
        ck_assert(sl_backend_host_memory(be));
    } else {
        ck_assert_str_eq(sl_backend_name(be), "cuda");
        ck_assert(!sl_backend_host_memory(be));
    }
    sl_backend_free(be);
}
END_TEST

START_TEST(test_cuda_by_name) {
    char path[PATH_MAX];
    sl_backend_t *be = NULL;
    bool have = plugin_path(path, sizeof path);
    if (have) setenv("SLUICE_CUDA_LIB", path, 1);
    int rc = sl_backend_create("cuda", NULL, &be);
    if (rc == 0) {
        ck_assert_str_eq(sl_backend_name(be), "cuda");
        sl_backend_free(be);
    } else {
        ck_assert_int_eq(rc, SL_EUNAVAIL); /* no plugin, or a plugin and no device */
        ck_assert_ptr_null(be);
        printf("test_cuda_by_name: cuda refused (%s): skipped: no GPU\n", sl_strerror(rc));
    }
    /* Device ordinals: cuda:N; junk after "cuda" is an error. */
    ck_assert_int_eq(sl_backend_create("cuda:x", NULL, &be), SL_EINVAL);
    ck_assert_int_eq(sl_backend_create("cuda:", NULL, &be), SL_EINVAL);
    ck_assert_int_eq(sl_backend_create("cuda:-1", NULL, &be), SL_EINVAL);
    ck_assert_int_eq(sl_backend_create("cudax", NULL, &be), SL_EINVAL);
    rc = sl_backend_create("cuda:1023", NULL, &be);
    ck_assert(rc == SL_EUNAVAIL || rc == SL_EINVAL); /* no GPU, or no such ordinal */
    ck_assert_ptr_null(be);
    if (rc == SL_EUNAVAIL) /* refused by the driver probe: CUDA never loaded */
        ck_assert(!maps_contain("libcudart"));
    /* A path with no plugin, and a library that is not one, are refused. */
    setenv("SLUICE_CUDA_LIB", "/nonexistent/libsluice_cuda.so", 1);
    ck_assert_int_eq(sl_backend_create("cuda", NULL, &be), SL_EUNAVAIL);
    setenv("SLUICE_CUDA_LIB", "libm.so.6", 1);
    ck_assert_int_eq(sl_backend_create("cuda", NULL, &be), SL_EUNAVAIL);
    ck_assert_ptr_null(be);
    /* $SLUICE_BACKEND picks for "auto"; a bad name there is an error. */
    setenv("SLUICE_BACKEND", "cpu", 1);
    ck_assert_int_eq(sl_backend_create(NULL, NULL, &be), 0);
    ck_assert_str_eq(sl_backend_name(be), "cpu");
    sl_backend_free(be);
    setenv("SLUICE_BACKEND", "gpu9", 1);
    ck_assert_int_eq(sl_backend_create("auto", NULL, &be), SL_EINVAL);
    unsetenv("SLUICE_BACKEND");
    unsetenv("SLUICE_CUDA_LIB");
}
END_TEST

START_TEST(test_plugin_entry_points) {
    char path[PATH_MAX];
    if (!plugin_path(path, sizeof path)) {
        printf("test_plugin_entry_points: skipped: plugin not built (CUDA=0)\n");
        return;
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    ck_assert_msg(h != NULL, "dlopen %s: %s", path, dlerror());
    sl_backend_plugin_open_fn open_fn;
    sl_cuda_ext_fn ext_fn;
    void *s1 = dlsym(h, SL_BACKEND_PLUGIN_SYMBOL), *s2 = dlsym(h, SL_CUDA_EXT_SYMBOL);
    ck_assert_ptr_nonnull(s1);
    ck_assert_ptr_nonnull(s2);
    memcpy(&open_fn, &s1, sizeof open_fn);
    memcpy(&ext_fn, &s2, sizeof ext_fn);
    const sl_backend_ops_t *ops = NULL;
    void *ctx = NULL;
    ck_assert_int_eq(open_fn(SL_BACKEND_ABI_VERSION + 1, NULL, &ops, &ctx), SL_EUNSUPPORTED);
    ck_assert_int_eq(open_fn(SL_BACKEND_ABI_VERSION, NULL, NULL, &ctx), SL_EINVAL);
    int rc = open_fn(SL_BACKEND_ABI_VERSION, &(sl_backend_config_t){.device = 4096}, &ops, &ctx);
    ck_assert(rc == SL_EINVAL || rc == SL_EUNAVAIL);
    ck_assert_ptr_null(ctx);
    const sl_cuda_ext_t *e = ext_fn();
    ck_assert_uint_eq(e->version, SL_CUDA_EXT_VERSION);
    uint32_t id = 0, out = 0;
    float x = 0;
    ck_assert_int_eq(e->kv_block_copy(NULL, NULL, &id, &id, 1), SL_EINVAL);
    ck_assert_int_eq(e->sample(NULL, &out, &x, 1, 1, NULL), SL_EINVAL);
    ck_assert_int_eq(e->graph_begin(NULL, 1), SL_EINVAL);
    ck_assert_int_eq(e->graph_end(NULL, 1), SL_EINVAL);
    ck_assert_int_eq(e->graph_launch(NULL, 1), SL_EINVAL);
    ck_assert_int_eq(e->tp_open(NULL, 2, NULL), SL_EINVAL);
    ck_assert_int_eq(e->tp_allreduce(NULL, NULL, 1), SL_EINVAL);
    rc = open_fn(SL_BACKEND_ABI_VERSION, NULL, &ops, &ctx);
    if (rc == 0) {
        ck_assert_str_eq(ops->name, "cuda");
        ck_assert(!ops->host_memory);
        ops->destroy(ctx);
    } else {
        ck_assert_int_eq(rc, SL_EUNAVAIL);
        printf("test_plugin_entry_points: device part skipped: no GPU\n");
    }
    dlclose(h);
}
END_TEST

/* ---- ops (GPU) ---------------------------------------------------------------------------- */

static const sl_dtype_t dtypes[] = {SL_DTYPE_F32, SL_DTYPE_F16, SL_DTYPE_BF16};

START_TEST(test_matmul) {
    NEED_GPU();
    static const uint32_t Ms[] = {1, 2, 5, 8, 9, 33, 130};
    static const uint32_t NK[][2] = {{1, 1}, {7, 13}, {64, 64}, {257, 96}, {96, 1000}, {512, 256}};
    for (size_t di = 0; di < 3; di++)
        for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
            for (size_t s = 0; s < sizeof NK / sizeof *NK; s++)
                for (int variant = 0; variant < 3; variant++) { /* plain, bias, accumulate */
                    sl_dtype_t dt = dtypes[di];
                    uint32_t M = Ms[mi], N = NK[s][0], K = NK[s][1];
                    size_t es = sl_dtype_size(dt);
                    float *x = rand_f32((size_t)M * K, 1), *wf = rand_f32((size_t)N * K, 0.2f);
                    float *b = rand_f32(N, 1), *y0 = rand_f32((size_t)M * N, 1);
                    void *w = malloc((size_t)N * K * es);
                    ck_assert_int_eq(sl_dtype_from_f32(w, dt, wf, (size_t)N * K), 0);
                    float *yc = malloc((size_t)M * N * sizeof *yc);
                    memcpy(yc, y0, (size_t)M * N * sizeof *yc);
                    const float *bias = variant == 1 ? b : NULL;
                    ck_assert_int_eq(
                        sl_backend_matmul(cpu, yc, x, w, dt, bias, M, N, K, variant == 2), 0);
                    float *dx = up(x, (size_t)M * K * 4), *dy = up(y0, (size_t)M * N * 4);
                    void *dw = up(w, (size_t)N * K * es);
                    float *db = bias ? up(b, (size_t)N * 4) : NULL;
                    ck_assert_int_eq(
                        sl_backend_matmul(gpu, dy, dx, dw, dt, db, M, N, K, variant == 2), 0);
                    float *yg = down(dy, (size_t)M * N);
                    /* the small-M path keeps x in f32: f32-tight for every dtype */
                    CHECK_NMSE(yg, yc, (size_t)M * N, M <= 8 ? SL_DTYPE_F32 : dt,
                               "matmul %s M=%u N=%u K=%u variant %d", sl_dtype_name(dt), M, N, K,
                               variant);
                    sl_backend_mem_free(gpu, dx);
                    sl_backend_mem_free(gpu, dy);
                    sl_backend_mem_free(gpu, dw);
                    sl_backend_mem_free(gpu, db);
                    free(x), free(wf), free(b), free(y0), free(w), free(yc), free(yg);
                }
    session_close();
}
END_TEST

START_TEST(test_norms) {
    NEED_GPU();
    static const uint32_t shapes[][2] = {{1, 1}, {1, 64}, {3, 100}, {17, 2048}, {5, 4097}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        uint32_t M = shapes[s][0], D = shapes[s][1];
        size_t n = (size_t)M * D;
        float *x = rand_f32(n, 3), *w = rand_f32(D, 1), *r = rand_f32(n, 2);
        float *yc = malloc(n * 4), *rc = malloc(n * 4);
        float *dx = up(x, n * 4), *dw = up(w, D * 4), *dr = up(r, n * 4), *dy = up(x, n * 4);
        ck_assert_int_eq(sl_backend_rmsnorm(cpu, yc, x, w, M, D, 1e-5f), 0);
        ck_assert_int_eq(sl_backend_rmsnorm(gpu, dy, dx, dw, M, D, 1e-5f), 0);
        float *yg = down(dy, n);
        CHECK_NMSE(yg, yc, n, SL_DTYPE_F32, "rmsnorm M=%u D=%u", M, D);
        free(yg);
        ck_assert_int_eq(sl_backend_rmsnorm(gpu, dx, dx, dw, M, D, 1e-5f), 0); /* in place */
        yg = down(dx, n);
        CHECK_NMSE(yg, yc, n, SL_DTYPE_F32, "rmsnorm in place M=%u D=%u", M, D);
        free(yg);
        ck_assert_int_eq(sl_backend_copy_in(gpu, dx, x, n * 4), 0);
        for (int with_x = 0; with_x < 2; with_x++) {
            memcpy(rc, r, n * 4);
            ck_assert_int_eq(sl_backend_copy_in(gpu, dr, r, n * 4), 0);
            ck_assert_int_eq(sl_backend_add_rmsnorm(cpu, yc, rc, with_x ? x : NULL, w, M, D, 1e-6f),
                             0);
            ck_assert_int_eq(
                sl_backend_add_rmsnorm(gpu, dy, dr, with_x ? dx : NULL, dw, M, D, 1e-6f), 0);
            float *yg2 = down(dy, n), *rg = down(dr, n);
            CHECK_NMSE(yg2, yc, n, SL_DTYPE_F32, "add_rmsnorm y M=%u D=%u x=%d", M, D, with_x);
            CHECK_NMSE(rg, rc, n, SL_DTYPE_F32, "add_rmsnorm residual M=%u D=%u", M, D);
            free(yg2), free(rg);
        }
        sl_backend_mem_free(gpu, dx), sl_backend_mem_free(gpu, dw);
        sl_backend_mem_free(gpu, dr), sl_backend_mem_free(gpu, dy);
        free(x), free(w), free(r), free(yc), free(rc);
    }
    session_close();
}
END_TEST

START_TEST(test_rope_silu_add_embed) {
    NEED_GPU();
    static const uint32_t rope_shapes[][4] = {/* T, heads, head_dim, rot_dim */
                                              {1, 1, 2, 2},
                                              {7, 4, 64, 64},
                                              {33, 8, 128, 64},
                                              {5, 3, 80, 80}};
    for (size_t s = 0; s < 4; s++) {
        uint32_t T = rope_shapes[s][0], H = rope_shapes[s][1], hd = rope_shapes[s][2],
                 rd = rope_shapes[s][3];
        size_t n = (size_t)T * H * hd;
        float *x = rand_f32(n, 1), *f = malloc(rd / 2 * 4);
        uint32_t *pos = malloc(T * 4);
        for (uint32_t i = 0; i < rd / 2; i++) f[i] = powf(10000.0f, -2.0f * i / rd);
        for (uint32_t t = 0; t < T; t++) pos[t] = t * 977u % 100000u; /* long positions too */
        float *dx = up(x, n * 4);
        ck_assert_int_eq(sl_backend_rope(cpu, x, pos, f, T, H, hd, rd), 0);
        ck_assert_int_eq(sl_backend_rope(gpu, dx, pos, f, T, H, hd, rd), 0);
        float *xg = down(dx, n);
        CHECK_NMSE(xg, x, n, SL_DTYPE_F32, "rope T=%u H=%u hd=%u rd=%u", T, H, hd, rd);
        free(xg), free(x), free(f), free(pos);
        sl_backend_mem_free(gpu, dx);
    }
    /* silu_mul on split and fused gate|up buffers, then add */
    for (uint32_t M = 1; M <= 9; M += 4) {
        uint32_t nn = 300, stride = 2 * nn;
        size_t in = (size_t)M * stride;
        float *g = rand_f32(in, 4), *yc = malloc((size_t)M * nn * 4);
        float *dg = up(g, in * 4), *dy = sl_backend_alloc(gpu, (size_t)M * nn * 4);
        ck_assert_int_eq(sl_backend_silu_mul(cpu, yc, g, g + nn, M, nn, stride), 0);
        ck_assert_int_eq(sl_backend_silu_mul(gpu, dy, dg, dg + nn, M, nn, stride), 0);
        float *yg = down(dy, (size_t)M * nn);
        CHECK_NMSE(yg, yc, (size_t)M * nn, SL_DTYPE_F32, "silu_mul M=%u", M);
        ck_assert_int_eq(sl_backend_add(cpu, yc, yc, g, (size_t)M * nn), 0);
        ck_assert_int_eq(sl_backend_add(gpu, dy, dy, dg, (size_t)M * nn), 0);
        free(yg);
        yg = down(dy, (size_t)M * nn);
        CHECK_NMSE(yg, yc, (size_t)M * nn, SL_DTYPE_F32, "add M=%u", M);
        free(yg), free(g), free(yc);
        sl_backend_mem_free(gpu, dg), sl_backend_mem_free(gpu, dy);
    }
    for (size_t di = 0; di < 3; di++) {
        sl_dtype_t dt = dtypes[di];
        uint32_t V = 1000, D = 96, T = 11, ids[11];
        float *tf = rand_f32((size_t)V * D, 1);
        void *tab = malloc((size_t)V * D * sl_dtype_size(dt));
        ck_assert_int_eq(sl_dtype_from_f32(tab, dt, tf, (size_t)V * D), 0);
        for (uint32_t t = 0; t < T; t++) ids[t] = (t * 389u + 5u) % V;
        ids[T - 1] = V - 1;
        float *yc = malloc((size_t)T * D * 4);
        void *dtab = up(tab, (size_t)V * D * sl_dtype_size(dt));
        float *dy = sl_backend_alloc(gpu, (size_t)T * D * 4);
        ck_assert_int_eq(sl_backend_embed(cpu, yc, tab, dt, ids, T, D, V), 0);
        ck_assert_int_eq(sl_backend_embed(gpu, dy, dtab, dt, ids, T, D, V), 0);
        float *yg = down(dy, (size_t)T * D);
        ck_assert_mem_eq(yg, yc, (size_t)T * D * 4); /* a widening copy: exact */
        ids[0] = V;
        ck_assert_int_eq(sl_backend_embed(gpu, dy, dtab, dt, ids, T, D, V), SL_ERANGE);
        free(yg), free(yc), free(tf), free(tab);
        sl_backend_mem_free(gpu, dtab), sl_backend_mem_free(gpu, dy);
    }
    session_close();
}
END_TEST

START_TEST(test_softmax_argmax_sample) {
    NEED_GPU();
    static const uint32_t shapes[][2] = {{1, 1}, {2, 31}, {4, 1000}, {3, 151936}};
    for (size_t s = 0; s < 4; s++) {
        uint32_t M = shapes[s][0], n = shapes[s][1];
        size_t tot = (size_t)M * n;
        float *x = rand_f32(tot, 8), *c1 = malloc(tot * 4), *c2 = malloc(tot * 4);
        if (n > 4) x[n + 3] = -INFINITY;                   /* stays -Inf in log-softmax */
        if (M > 1 && n > 10) x[n + 7] = x[n + 9] = 100.0f; /* tie: lowest index wins */
        memcpy(c1, x, tot * 4), memcpy(c2, x, tot * 4);
        float *d1 = up(x, tot * 4), *d2 = up(x, tot * 4);
        ck_assert_int_eq(sl_backend_softmax(cpu, c1, M, n), 0);
        ck_assert_int_eq(sl_backend_softmax(gpu, d1, M, n), 0);
        float *g = down(d1, tot);
        CHECK_NMSE(g, c1, tot, SL_DTYPE_F32, "softmax M=%u n=%u", M, n);
        free(g);
        ck_assert_int_eq(sl_backend_log_softmax(cpu, c2, M, n), 0);
        ck_assert_int_eq(sl_backend_log_softmax(gpu, d2, M, n), 0);
        g = down(d2, tot);
        CHECK_NMSE(g, c2, tot, SL_DTYPE_F32, "log_softmax M=%u n=%u", M, n);
        free(g);
        /* argmax, with a NaN in a row: never chosen */
        uint32_t ac[4], ag[4], ax[4];
        ck_assert_int_eq(sl_backend_argmax(cpu, ax, x, M, n), 0);
        memcpy(c1, x, tot * 4);
        if (M > 2 && n > 2) c1[2 * (size_t)n + 1] = NAN;
        ck_assert_int_eq(sl_backend_copy_in(gpu, d1, c1, tot * 4), 0);
        ck_assert_int_eq(sl_backend_argmax(cpu, ac, c1, M, n), 0);
        ck_assert_int_eq(sl_backend_argmax(gpu, ag, d1, M, n), 0);
        ck_assert_mem_eq(ag, ac, M * sizeof *ac);
        /* sampling that must equal argmax: greedy; top_k 1; min_p 1; greedy
         * rows mixed with top_k 1 rows. u = 0.25 picks the lowest of tied ids. */
        sl_cuda_sample_params_t p[4];
        uint32_t got[4];
        for (int mode = 0; mode < 4; mode++) {
            for (uint32_t m = 0; m < M; m++) {
                bool greedy = mode == 0 || (mode == 3 && m % 2 == 0);
                p[m] = (sl_cuda_sample_params_t){.temperature = greedy ? 0.0f : 0.7f,
                                                 .top_k = mode == 1 || mode == 3 ? 1 : 0,
                                                 .top_p = 1.0f,
                                                 .min_p = mode == 2 ? 1.0f : 0.0f,
                                                 .u = 0.25f};
            }
            ck_assert_int_eq(sl_backend_copy_in(gpu, d1, x, tot * 4), 0);
            ck_assert_int_eq(ext->sample(gctx, got, d1, M, n, p), 0);
            for (uint32_t m = 0; m < M; m++)
                ck_assert_msg(got[m] == ax[m], "sample mode %d M=%u n=%u row %u: %u != %u", mode, M,
                              n, m, got[m], ax[m]);
        }
        p[0].u = 1.5f;
        ck_assert_int_eq(ext->sample(gctx, got, d1, M, n, p), SL_EINVAL);
        free(x), free(c1), free(c2);
        sl_backend_mem_free(gpu, d1), sl_backend_mem_free(gpu, d2);
    }
    /* A top-p draw lands inside the nucleus: probabilities 0.5, 0.3, 0.15 ... */
    float lg[8] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f), -30, -30, -30, -30};
    float *dl8 = up(lg, sizeof lg);
    for (float u = 0.0625f; u < 1.0f; u += 0.125f) { /* never on the 0.625 boundary */
        sl_cuda_sample_params_t p = {.temperature = 1.0f, .top_p = 0.75f, .u = u};
        uint32_t got = 99;
        ck_assert_int_eq(sl_backend_copy_in(gpu, dl8, lg, sizeof lg), 0);
        ck_assert_int_eq(ext->sample(gctx, &got, dl8, 1, 8, &p), 0);
        ck_assert_uint_le(got, 1); /* 0.5 + 0.3 >= 0.75: only ids 0 and 1 */
        ck_assert_uint_eq(got, u < 0.5f / 0.8f ? 0 : 1);
        /* without top-p every id with mass can come up: u near 1 reaches id 3 */
        p.top_p = 1.0f;
        p.u = 0.99f;
        ck_assert_int_eq(sl_backend_copy_in(gpu, dl8, lg, sizeof lg), 0);
        ck_assert_int_eq(ext->sample(gctx, &got, dl8, 1, 8, &p), 0);
        ck_assert_uint_eq(got, 3);
    }
    sl_backend_mem_free(gpu, dl8);
    session_close();
}
END_TEST

/* ---- paged KV and attention ------------------------------------------------------------ */

typedef struct att_case {
    uint32_t n_heads, n_kv, hd, bs, window;
    uint32_t n_seqs;
    uint32_t pos[4], ntok[4];
} att_case_t;

static const att_case_t att_cases[] = {
    {8, 2, 64, 16, 0, 3, {0, 5, 40}, {1, 1, 1}},                /* decode batch */
    {8, 2, 64, 16, 0, 2, {0, 30}, {37, 20}},                    /* prefill, chunked prefill */
    {4, 4, 128, 16, 7, 3, {0, 50, 3}, {19, 1, 18}},             /* mixed, sliding window */
    {4, 1, 80, 8, 0, 2, {1500, 0}, {1, 3}},                     /* long decode: split-K */
    {32, 8, 128, 16, 0, 4, {2047, 100, 999, 0}, {1, 1, 1, 64}}, /* Llama-8B-like heads */
    {2, 1, 256, 32, 100, 2, {300, 10}, {1, 45}},                /* head_dim 256, window */
};

static void att_run(const att_case_t *ac, sl_dtype_t kdt, const char *force) {
    uint32_t T = 0, n_blocks = 0, layers = 2, layer = 1;
    sl_attn_seq_t cs[4], gs[4];
    uint32_t *tabs[4];
    for (uint32_t s = 0; s < ac->n_seqs; s++) {
        T += ac->ntok[s];
        n_blocks += (ac->pos[s] + ac->ntok[s] + ac->bs - 1) / ac->bs;
    }
    sl_kv_layout_t ckv = {.n_blocks = n_blocks + 3,
                          .block_size = ac->bs,
                          .n_layers = layers,
                          .n_kv_heads = ac->n_kv,
                          .head_dim = ac->hd,
                          .dtype = SL_DTYPE_F32};
    sl_kv_layout_t gkv = ckv;
    gkv.dtype = kdt;
    ckv.block_bytes = sl_kv_block_bytes_min(&ckv);
    gkv.block_bytes = sl_kv_block_bytes_min(&gkv) + 64; /* padding is allowed */
    ckv.base = calloc(ckv.n_blocks, ckv.block_bytes);
    gkv.base = sl_backend_alloc(gpu, gkv.n_blocks * gkv.block_bytes);
    ck_assert_ptr_nonnull(ckv.base);
    ck_assert_ptr_nonnull(gkv.base);
    /* blocks handed out in a scrambled order, as a pool would */
    uint32_t next = 0;
    for (uint32_t s = 0; s < ac->n_seqs; s++) {
        uint32_t nb = (ac->pos[s] + ac->ntok[s] + ac->bs - 1) / ac->bs;
        tabs[s] = malloc((nb ? nb : 1) * 4);
        for (uint32_t b = 0; b < nb; b++, next++) tabs[s][b] = (next * 7u + 3u) % ckv.n_blocks;
        cs[s] =
            (sl_attn_seq_t){.n_tokens = ac->pos[s], .pos = 0, .blocks = tabs[s], .n_blocks = nb};
    }
    /* 1: fill the history [0, pos) of every sequence (K/V rounded to kdt) */
    for (int phase = 0; phase < 2; phase++) {
        uint32_t rows = 0;
        for (uint32_t s = 0; s < ac->n_seqs; s++) {
            if (phase == 1)
                cs[s] = (sl_attn_seq_t){ac->ntok[s], ac->pos[s], tabs[s], cs[s].n_blocks};
            gs[s] = cs[s];
            rows += cs[s].n_tokens;
        }
        if (rows == 0) continue;
        size_t kvn = (size_t)rows * ac->n_kv * ac->hd;
        float *k = rand_f32(kvn, 1), *v = rand_f32(kvn, 1);
        void *tmp = malloc(kvn * 4);
        sl_dtype_from_f32(tmp, kdt, k, kvn), sl_dtype_to_f32(k, tmp, kdt, kvn);
        sl_dtype_from_f32(tmp, kdt, v, kvn), sl_dtype_to_f32(v, tmp, kdt, kvn);
        free(tmp);
        float *dk = up(k, kvn * 4), *dv = up(v, kvn * 4);
        ck_assert_int_eq(sl_backend_kv_write(cpu, &ckv, layer, cs, ac->n_seqs, k, v), 0);
        ck_assert_int_eq(sl_backend_kv_write(gpu, &gkv, layer, gs, ac->n_seqs, dk, dv), 0);
        sl_backend_mem_free(gpu, dk), sl_backend_mem_free(gpu, dv);
        free(k), free(v);
    }
    size_t qn = (size_t)T * ac->n_heads * ac->hd;
    float *q = rand_f32(qn, 1), *oc = malloc(qn * 4);
    float *dq = up(q, qn * 4), *dout = sl_backend_alloc(gpu, qn * 4);
    ck_assert_int_eq(
        sl_backend_attention(cpu, oc, q, &ckv, layer, cs, ac->n_seqs, ac->n_heads, ac->window, 0),
        0);
    if (force) setenv("SLUICE_CUDA_ATTN", force, 1);
    ck_assert_int_eq(sl_backend_attention(gpu, dout, dq, &gkv, layer, gs, ac->n_seqs, ac->n_heads,
                                          ac->window, 0),
                     0);
    unsetenv("SLUICE_CUDA_ATTN");
    float *og = down(dout, qn);
    CHECK_NMSE(og, oc, qn, SL_DTYPE_F32, "attention kv=%s heads=%u/%u hd=%u window=%u path=%s",
               sl_dtype_name(kdt), ac->n_heads, ac->n_kv, ac->hd, ac->window,
               force ? force : "auto");
    /* a block id past the pool is refused before any kernel */
    uint32_t saved = tabs[0][0];
    tabs[0][0] = gkv.n_blocks;
    ck_assert_int_eq(sl_backend_attention(gpu, dout, dq, &gkv, layer, gs, ac->n_seqs, ac->n_heads,
                                          ac->window, 0),
                     SL_ERANGE);
    tabs[0][0] = saved;
    free(og), free(q), free(oc), free(ckv.base);
    sl_backend_mem_free(gpu, dq), sl_backend_mem_free(gpu, dout),
        sl_backend_mem_free(gpu, gkv.base);
    for (uint32_t s = 0; s < ac->n_seqs; s++) free(tabs[s]);
}

START_TEST(test_attention) {
    NEED_GPU();
    static const char *paths[] = {NULL, "rows", "split", "tiles"};
    for (size_t c = 0; c < sizeof att_cases / sizeof *att_cases; c++)
        for (size_t di = 0; di < 3; di++)
            for (size_t p = 0; p < 4; p++) att_run(&att_cases[c], dtypes[di], paths[p]);
    session_close();
}
END_TEST

START_TEST(test_kv_block_copy_and_graph) {
    NEED_GPU();
    sl_kv_layout_t kv = {.n_blocks = 6,
                         .block_size = 16,
                         .n_layers = 2,
                         .n_kv_heads = 2,
                         .head_dim = 64,
                         .dtype = SL_DTYPE_BF16};
    kv.block_bytes = sl_kv_block_bytes_min(&kv);
    size_t total = kv.n_blocks * kv.block_bytes;
    unsigned char *h = malloc(total), *h2 = malloc(total);
    for (size_t i = 0; i < total; i++) h[i] = (unsigned char)(i * 31u + 7u);
    kv.base = up(h, total);
    uint32_t src[2] = {1, 4}, dst[2] = {5, 0};
    ck_assert_int_eq(ext->kv_block_copy(gctx, &kv, src, dst, 2), 0);
    ck_assert_int_eq(sl_backend_copy_out(gpu, h2, kv.base, total), 0);
    memcpy(h + 5 * kv.block_bytes, h + 1 * kv.block_bytes, kv.block_bytes);
    memcpy(h + 0 * kv.block_bytes, h + 4 * kv.block_bytes, kv.block_bytes);
    ck_assert_mem_eq(h2, h, total);
    dst[1] = kv.n_blocks;
    ck_assert_int_eq(ext->kv_block_copy(gctx, &kv, src, dst, 2), SL_EINVAL);
    /* graph: capture rmsnorm + silu_mul once, replay equals the direct run */
    uint32_t M = 4, D = 512;
    float *x = rand_f32((size_t)M * D, 2), *w = rand_f32(D, 1);
    float *dx = up(x, (size_t)M * D * 4), *dw = up(w, D * 4);
    float *dy = sl_backend_alloc(gpu, (size_t)M * D * 4),
          *dz = sl_backend_alloc(gpu, (size_t)M * D * 4);
    ck_assert_int_eq(sl_backend_rmsnorm(gpu, dy, dx, dw, M, D, 1e-5f), 0);
    ck_assert_int_eq(sl_backend_silu_mul(gpu, dz, dy, dx, M, D, D), 0);
    float *direct = down(dz, (size_t)M * D);
    ck_assert_int_eq(sl_backend_sync(gpu), 0);
    ck_assert_int_eq(ext->graph_begin(gctx, M), 0);
    ck_assert_int_eq(ext->graph_begin(gctx, M), SL_EINVAL); /* nested */
    ck_assert_int_eq(sl_backend_rmsnorm(gpu, dy, dx, dw, M, D, 1e-5f), 0);
    ck_assert_int_eq(sl_backend_silu_mul(gpu, dz, dy, dx, M, D, D), 0);
    ck_assert_int_eq(ext->graph_end(gctx, M), 0);
    ck_assert_int_eq(ext->graph_begin(gctx, M), 1);
    ck_assert_int_eq(sl_backend_copy_in(gpu, dz, x, (size_t)M * D * 4), 0); /* clobber */
    ck_assert_int_eq(ext->graph_launch(gctx, M), 0);
    float *replay = down(dz, (size_t)M * D);
    ck_assert_mem_eq(replay, direct, (size_t)M * D * 4);
    ck_assert_int_eq(ext->graph_launch(gctx, M + 1), SL_ENOTFOUND);
    ck_assert_int_eq(ext->tp_size(gctx), 1);
    free(replay), free(direct), free(x), free(w), free(h), free(h2);
    sl_backend_mem_free(gpu, dx), sl_backend_mem_free(gpu, dw);
    sl_backend_mem_free(gpu, dy), sl_backend_mem_free(gpu, dz), sl_backend_mem_free(gpu, kv.base);
    session_close();
}
END_TEST

/* Bad input reaches the wrappers, never a kernel; a CUDA failure is a code. */
START_TEST(test_bad_input) {
    NEED_GPU();
    float *d = sl_backend_alloc(gpu, 1024);
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(sl_backend_matmul(gpu, d, d, d, SL_DTYPE_F32, NULL, 1, 1, 1, false),
                     SL_EINVAL);
    ck_assert_int_eq(sl_backend_rmsnorm(gpu, d, d, d, 0, 4, 1e-5f), SL_EINVAL);
    ck_assert_int_eq(sl_backend_rope(gpu, d, (uint32_t[]){0}, (float[]){1}, 1, 1, 4, 3), SL_EINVAL);
    ck_assert_ptr_null(sl_backend_alloc(gpu, (size_t)1 << 62)); /* cudaMalloc fails: NULL */
    uint32_t big = 0;
    ck_assert_int_eq(sl_backend_argmax(gpu, &big, d, 1, 256), 0);
    sl_backend_mem_free(gpu, d);
    session_close();
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("kernels_cuda");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_auto_without_gpu_stays_light);
    tcase_add_test(tc, test_cuda_by_name);
    tcase_add_test(tc, test_plugin_entry_points);
    tcase_add_test(tc, test_matmul);
    tcase_add_test(tc, test_norms);
    tcase_add_test(tc, test_rope_silu_add_embed);
    tcase_add_test(tc, test_softmax_argmax_sample);
    tcase_add_test(tc, test_attention);
    tcase_add_test(tc, test_kv_block_copy_and_graph);
    tcase_add_test(tc, test_bad_input);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
