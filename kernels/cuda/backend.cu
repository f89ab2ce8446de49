/* backend.cu - the CUDA backend: kernels/backend.h's vtable over device
 * memory, exported as sl_backend_plugin_open() from libsluice_cuda.so.
 *
 * One context = one device, one non-blocking stream, one cuBLAS handle.
 * Ops queue on the stream and return; copy_out, argmax and sync wait. Host
 * index arrays are staged through pinned memory (common.cuh). Every CUDA or
 * cuBLAS failure becomes SL_EDEVICE with a log line; nothing aborts. A sticky
 * error (an illegal address) leaves the context unusable: every later call
 * fails with SL_EDEVICE, and the owner should free and recreate the backend.
 */
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ext.h"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/embed.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/graph.cuh"
#include "kernels/cuda/kv.cuh"
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/sample.cuh"
#include "kernels/cuda/tp.cuh"

#include <stdlib.h>
#include <string.h>

#define STAGE_INIT_BYTES (1u << 20)
#define LT_WORKSPACE     (32u << 20)

void slc_log_error(const char *what, const char *detail, const char *file, int line) {
    fprintf(stderr, "sluice-cuda: ERROR %s failed: %s (%s:%d)\n", what, detail, file, line);
}

int slc_blas_rc(cublasStatus_t s, const char *what, const char *file, int line) {
    if (s == CUBLAS_STATUS_SUCCESS) return 0;
    slc_log_error(what, cublasGetStatusString(s), file, line);
    return SL_EDEVICE;
}

/* ---- staging and scratch ------------------------------------------------- */

int slc_stage_reset(slc_ctx_t *c) {
    int rc = SLC_CUDA(cudaStreamSynchronize(c->stream));
    c->stage_off = 0;
    return rc;
}

int slc_stage_reserve(slc_ctx_t *c, size_t need) {
    int rc = 0;
    if (c->stage_off + need <= c->stage_cap) return 0;
    /* Pinned bytes may still be in flight: wait before reusing them. A
     * capture cannot wait, and its graph would keep the old pointers. */
    if (slc_graph_capturing(c)) return SL_EUNSUPPORTED;
    if ((rc = slc_stage_reset(c))) return rc;
    if (need <= c->stage_cap) return 0;
    size_t cap = c->stage_cap ? c->stage_cap : STAGE_INIT_BYTES;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) return SL_ENOMEM;
        cap *= 2;
    }
    slc_graph_cache_clear(c);
    cudaFreeHost(c->stage_host);
    cudaFree(c->stage_dev);
    c->stage_host = NULL;
    c->stage_dev = NULL;
    c->stage_cap = 0;
    if ((rc = SLC_CUDA(cudaMallocHost((void **)&c->stage_host, cap)))) return rc;
    if ((rc = SLC_CUDA(cudaMalloc((void **)&c->stage_dev, cap)))) return rc;
    c->stage_cap = cap;
    return 0;
}

int slc_stage(slc_ctx_t *c, const void *host, size_t bytes, void **dev) {
    int rc = 0;
    size_t need = (bytes + 15) & ~(size_t)15;
    if (need < bytes) return SL_EINVAL;
    if ((rc = slc_stage_reserve(c, need))) return rc;
    memcpy(c->stage_host + c->stage_off, host, bytes);
    *dev = c->stage_dev + c->stage_off;
    rc = SLC_CUDA(cudaMemcpyAsync(*dev, c->stage_host + c->stage_off, bytes, cudaMemcpyHostToDevice,
                                  c->stream));
    c->stage_off += need;
    return rc;
}

void *slc_scratch(slc_ctx_t *c, size_t bytes) {
    if (bytes <= c->scratch_bytes) return c->scratch;
    if (slc_graph_capturing(c)) return NULL;
    if (SLC_CUDA(cudaStreamSynchronize(c->stream))) return NULL;
    slc_graph_cache_clear(c);
    cudaFree(c->scratch);
    c->scratch = NULL;
    c->scratch_bytes = 0;
    size_t cap = bytes < (1u << 20) ? (1u << 20) : bytes + bytes / 4;
    if (SLC_CUDA(cudaMalloc(&c->scratch, cap))) return NULL;
    c->scratch_bytes = cap;
    return c->scratch;
}

/* ---- lifetime and memory --------------------------------------------------- */

static void cu_destroy(void *ctx) {
    slc_ctx_t *c = (slc_ctx_t *)ctx;
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    slc_tp_close(c);
    slc_graph_cache_free(c);
    if (c->lt) cublasLtDestroy(c->lt);
    if (c->blas) cublasDestroy(c->blas);
    cudaFree(c->lt_workspace);
    cudaFree(c->scratch);
    cudaFree(c->stage_dev);
    cudaFreeHost(c->stage_host);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

static void *cu_alloc(void *ctx, size_t bytes) {
    void *p = NULL;
    (void)ctx;
    return SLC_CUDA(cudaMalloc(&p, bytes)) ? NULL : p; /* 256-byte aligned */
}

static void cu_free(void *ctx, void *p) {
    slc_ctx_t *c = (slc_ctx_t *)ctx;
    cudaStreamSynchronize(c->stream); /* queued ops may still read p */
    cudaFree(p);
}

/* src_host is pageable and may be freed on return: copy synchronously. */
static int cu_copy_in(void *ctx, void *dst, const void *src_host, size_t bytes) {
    slc_ctx_t *c = (slc_ctx_t *)ctx;
    int rc = SLC_CUDA(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, c->stream));
    return rc ? rc : slc_stage_reset(c);
}

static int cu_copy_out(void *ctx, void *dst_host, const void *src, size_t bytes) {
    slc_ctx_t *c = (slc_ctx_t *)ctx;
    int rc = SLC_CUDA(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    return rc ? rc : slc_stage_reset(c);
}

static int cu_sync(void *ctx) {
    return slc_stage_reset((slc_ctx_t *)ctx);
}

/* ---- ops: thin adapters onto each op's entry point ------------------------------ */

static int cu_matmul(void *ctx, float *y, const float *x, const void *w, sl_dtype_t wdt,
                     const float *bias, uint32_t M, uint32_t N, uint32_t K, bool accumulate) {
    return slc_gemm((slc_ctx_t *)ctx, y, x, w, wdt, bias, M, N, K, accumulate);
}

static int cu_rmsnorm(void *ctx, float *y, const float *x, const float *w, uint32_t M, uint32_t D,
                      float eps) {
    return slc_rmsnorm((slc_ctx_t *)ctx, y, x, w, M, D, eps);
}

static int cu_add_rmsnorm(void *ctx, float *y, float *residual, const float *x, const float *w,
                          uint32_t M, uint32_t D, float eps) {
    return slc_add_rmsnorm((slc_ctx_t *)ctx, y, residual, x, w, M, D, eps);
}

static int cu_rope(void *ctx, float *x, const uint32_t *pos, const float *inv_freq, uint32_t T,
                   uint32_t n_heads, uint32_t head_dim, uint32_t rot_dim) {
    return slc_rope((slc_ctx_t *)ctx, x, pos, inv_freq, T, n_heads, head_dim, rot_dim);
}

static int cu_silu_mul(void *ctx, float *y, const float *gate, const float *up, uint32_t M,
                       uint32_t n, uint32_t in_stride) {
    return slc_silu_mul((slc_ctx_t *)ctx, y, gate, up, M, n, in_stride);
}

static int cu_add(void *ctx, float *y, const float *a, const float *b, size_t n) {
    return slc_add((slc_ctx_t *)ctx, y, a, b, n);
}

static int cu_softmax(void *ctx, float *x, uint32_t M, uint32_t n) {
    return slc_softmax((slc_ctx_t *)ctx, x, M, n);
}

static int cu_log_softmax(void *ctx, float *x, uint32_t M, uint32_t n) {
    return slc_log_softmax((slc_ctx_t *)ctx, x, M, n);
}

static int cu_argmax(void *ctx, uint32_t *out, const float *x, uint32_t M, uint32_t n) {
    return slc_argmax((slc_ctx_t *)ctx, out, x, M, n);
}

static int cu_embed(void *ctx, float *y, const void *table, sl_dtype_t dt, const uint32_t *ids,
                    uint32_t T, uint32_t D, uint32_t vocab) {
    (void)vocab; /* ids checked by the wrapper */
    return slc_embed((slc_ctx_t *)ctx, y, table, dt, ids, T, D);
}

static int cu_kv_write(void *ctx, const sl_kv_layout_t *kv, uint32_t layer,
                       const sl_attn_seq_t *seqs, uint32_t n_seqs, const float *k, const float *v) {
    return slc_kv_write((slc_ctx_t *)ctx, kv, layer, seqs, n_seqs, k, v);
}

static int cu_attention(void *ctx, float *out, const float *q, const sl_kv_layout_t *kv,
                        uint32_t layer, const sl_attn_seq_t *seqs, uint32_t n_seqs,
                        uint32_t n_heads, uint32_t window, float scale) {
    return slc_attention((slc_ctx_t *)ctx, out, q, kv, layer, seqs, n_seqs, n_heads, window, scale);
}

static const sl_backend_ops_t cu_ops = {
    SL_BACKEND_ABI_VERSION,
    "cuda",
    false, /* device memory */
    cu_destroy,
    cu_alloc,
    cu_free,
    cu_copy_in,
    cu_copy_out,
    cu_sync,
    cu_matmul,
    cu_rmsnorm,
    cu_add_rmsnorm,
    cu_rope,
    cu_silu_mul,
    cu_add,
    cu_softmax,
    cu_log_softmax,
    cu_argmax,
    cu_embed,
    cu_kv_write,
    cu_attention,
};

/* ---- extension table --------------------------------------------------------- */

static int ext_kv_block_copy(void *ctx, const sl_kv_layout_t *kv, const uint32_t *src,
                             const uint32_t *dst, uint32_t n) {
    if (!ctx) return SL_EINVAL;
    return slc_kv_block_copy((slc_ctx_t *)ctx, kv, src, dst, n);
}

static int ext_sample(void *ctx, uint32_t *out, float *x, uint32_t M, uint32_t n,
                      const sl_cuda_sample_params_t *params) {
    static_assert(sizeof(sl_cuda_sample_params_t) == sizeof(slc_sample_params_t), "params");
    if (!ctx || !out || !x || !params || M == 0 || n == 0 || M > (1u << 20) || n > (1u << 24))
        return SL_EINVAL;
    for (uint32_t m = 0; m < M; m++) {
        const sl_cuda_sample_params_t *p = &params[m];
        if (p->temperature != p->temperature || !(p->u >= 0.0f && p->u < 1.0f) ||
            !(p->min_p >= 0.0f && p->min_p <= 1.0f) || p->top_p != p->top_p)
            return SL_EINVAL;
    }
    return slc_sample((slc_ctx_t *)ctx, out, x, M, n, (const slc_sample_params_t *)params);
}

static int ext_graph_begin(void *ctx, uint32_t key) {
    return ctx ? slc_graph_begin((slc_ctx_t *)ctx, key) : SL_EINVAL;
}

static int ext_graph_end(void *ctx, uint32_t key) {
    return ctx ? slc_graph_end((slc_ctx_t *)ctx, key) : SL_EINVAL;
}

static int ext_graph_launch(void *ctx, uint32_t key) {
    return ctx ? slc_graph_launch((slc_ctx_t *)ctx, key) : SL_EINVAL;
}

static int ext_tp_open(void *ctx, int n, const int *devices) {
    return ctx ? slc_tp_open((slc_ctx_t *)ctx, n, devices) : SL_EINVAL;
}

static int ext_tp_allreduce(void *ctx, float *const *bufs, size_t count) {
    return ctx ? slc_tp_allreduce((slc_ctx_t *)ctx, bufs, count) : SL_EINVAL;
}

static int ext_tp_size(void *ctx) {
    return ctx ? slc_tp_size((const slc_ctx_t *)ctx) : SL_EINVAL;
}

static const sl_cuda_ext_t cu_ext = {
    SL_CUDA_EXT_VERSION, ext_kv_block_copy, ext_sample,       ext_graph_begin, ext_graph_end,
    ext_graph_launch,    ext_tp_open,       ext_tp_allreduce, ext_tp_size,
};

/* ---- plugin entry points -------------------------------------------------------- */

extern "C" __attribute__((visibility("default"))) const sl_cuda_ext_t *sl_cuda_plugin_ext(void) {
    return &cu_ext;
}

extern "C" __attribute__((visibility("default"))) int
sl_backend_plugin_open(uint32_t abi_version, const sl_backend_config_t *cfg,
                       const sl_backend_ops_t **ops, void **ctx) {
    int rc = 0, count = 0, dev = cfg ? cfg->device : 0;
    slc_ctx_t *c = NULL;
    if (!ops || !ctx) return SL_EINVAL;
    if (abi_version != SL_BACKEND_ABI_VERSION) return SL_EUNSUPPORTED;
    /* No driver or no device: the plain "not here" answer, no log noise. */
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        cudaGetLastError();
        return SL_EUNAVAIL;
    }
    if (dev < 0 || dev >= count) return SL_EINVAL;
    c = (slc_ctx_t *)calloc(1, sizeof *c);
    if (!c) return SL_ENOMEM;
    c->device = dev;
    if ((rc = SLC_CUDA(cudaSetDevice(dev)))) goto out;
    if ((rc = SLC_CUDA(cudaDeviceGetAttribute(&c->sm_count, cudaDevAttrMultiProcessorCount, dev))))
        goto out;
    if ((rc = SLC_CUDA(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)))) goto out;
    if ((rc = SLC_BLAS(cublasCreate(&c->blas)))) goto out;
    if ((rc = SLC_BLAS(cublasSetStream(c->blas, c->stream)))) goto out;
    if ((rc = SLC_BLAS(cublasLtCreate(&c->lt)))) goto out;
    c->lt_workspace_bytes = LT_WORKSPACE;
    if ((rc = SLC_CUDA(cudaMalloc(&c->lt_workspace, c->lt_workspace_bytes)))) goto out;
    /* cuBLAS gets its workspace up front so a graph capture never allocates. */
    if ((rc = SLC_BLAS(cublasSetWorkspace(c->blas, c->lt_workspace, c->lt_workspace_bytes))))
        goto out;
    if ((rc = slc_graph_cache_create(c))) goto out;
    *ops = &cu_ops;
    *ctx = c;
    c = NULL;
out:
    cu_destroy(c);
    return rc;
}
