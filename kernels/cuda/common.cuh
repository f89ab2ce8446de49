/* common.cuh - what every kernels/cuda op shares: the backend context, the
 * CUDA-error -> SL_EDEVICE mapping, host->device staging of index arrays, and
 * dtype load/store helpers.
 *
 * Every op has one entry point of the same shape, `int slc_<op>(slc_ctx_t *c,
 * ...)`, declared in its own <op>.cuh: it launches on c->stream and returns 0
 * or a negative SL_E* code. Arguments arrive validated by kernels/backend.c.
 * No op ever aborts: a failed launch or API call is logged once and returned
 * as SL_EDEVICE, so a CUDA error fails the request, not the worker.
 *
 * The plugin is self-contained: it links no Sluice library (it is dlopen()ed
 * RTLD_LOCAL), so it logs to stderr itself and includes only err.h's codes.
 */
#ifndef SL_KERNELS_CUDA_COMMON_CUH
#define SL_KERNELS_CUDA_COMMON_CUH

#include "common/base/err.h"
#include "kernels/backend.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

#define SLC_MAX_HEAD_DIM 256u /* attention keeps one q row per CTA in registers */
#define SLC_N_GRAPHS     16   /* decode graphs cached, keyed by batch size */

struct slc_graph_cache; /* graph.cuh */
struct slc_tp;          /* tp.cuh */

/* One backend instance: one device, one stream, one cuBLAS handle. */
typedef struct slc_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    void *lt_workspace; /* (lt_workspace_bytes) device */
    size_t lt_workspace_bytes;
    /* Staging for host index arrays: a bump region in pinned host memory
     * mirrored by one in device memory, reset whenever the stream is idle. */
    unsigned char *stage_host; /* (stage_cap) pinned */
    unsigned char *stage_dev;  /* (stage_cap) device */
    size_t stage_cap, stage_off;
    void *scratch; /* (scratch_bytes) device: GEMM input casts, split-K partials */
    size_t scratch_bytes;
    struct slc_graph_cache *graphs;
    struct slc_tp *tp;
    int sm_count;
} slc_ctx_t;

/* Logs a CUDA failure with its location (stderr; the plugin has no logger). */
void slc_log_error(const char *what, const char *detail, const char *file, int line);

/* Maps a cudaError_t to 0 / SL_EDEVICE, logging the failure. */
static inline int slc_cuda_rc(cudaError_t e, const char *what, const char *file, int line) {
    if (e == cudaSuccess) return 0;
    slc_log_error(what, cudaGetErrorString(e), file, line);
    return SL_EDEVICE;
}
#define SLC_CUDA(call) slc_cuda_rc((call), #call, __FILE__, __LINE__)
/* After a kernel launch: picks up launch-configuration errors. */
#define SLC_LAUNCHED() slc_cuda_rc(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
int slc_blas_rc(cublasStatus_t s, const char *what, const char *file, int line);
#define SLC_BLAS(call) slc_blas_rc((call), #call, __FILE__, __LINE__)

/* Copies bytes of host memory to device memory usable by the next kernels on
 * c->stream; *dev points into the staging region, valid until the next
 * slc_stage_reset (which waits for the stream). 16-byte aligned. Returns 0,
 * SL_ENOMEM or SL_EDEVICE. */
int slc_stage(slc_ctx_t *c, const void *host, size_t bytes, void **dev);
/* Makes room for bytes (the sum of an op's arrays, each rounded up to 16)
 * so that the op's next slc_stage calls never recycle the region between
 * them (a recycle would overwrite or free what the first call staged). Call
 * it once before staging more than one array. */
int slc_stage_reserve(slc_ctx_t *c, size_t bytes);
/* Waits for the stream and recycles the staging region. */
int slc_stage_reset(slc_ctx_t *c);
/* Device scratch of at least bytes (grows; waits for the stream first when it
 * must reallocate). Returns NULL on failure. */
void *slc_scratch(slc_ctx_t *c, size_t bytes);

/* ---- dtype helpers (device) ------------------------------------------------ */

__device__ __forceinline__ float slc_load(const void *p, sl_dtype_t dt, size_t i) {
    switch (dt) {
    case SL_DTYPE_F16:
        return __half2float(((const __half *)p)[i]);
    case SL_DTYPE_BF16:
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    default:
        return ((const float *)p)[i];
    }
}

__device__ __forceinline__ void slc_store(void *p, sl_dtype_t dt, size_t i, float v) {
    switch (dt) {
    case SL_DTYPE_F16:
        ((__half *)p)[i] = __float2half_rn(v);
        break;
    case SL_DTYPE_BF16:
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
        break;
    default:
        ((float *)p)[i] = v;
    }
}

__device__ __forceinline__ float slc_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float slc_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over a CTA of up to 1024 threads (blockDim.x a multiple of 32); every
 * thread gets the result. sh: 32 floats of shared memory. */
__device__ __forceinline__ float slc_block_sum(float v, float *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = slc_warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return slc_warp_sum(v);
}

static inline unsigned slc_blocks(size_t n, unsigned per) {
    size_t b = (n + per - 1) / per;
    return b > 0x7fffffffu ? 0x7fffffffu : (unsigned)b;
}

/* Grid size for a grid-stride loop over n items, per per CTA, at most cap
 * CTAs. (A helper keeps clang-format from splitting <<<...>>>.) */
static inline unsigned slc_grid(size_t n, unsigned per, unsigned cap) {
    unsigned b = slc_blocks(n, per);
    return b < cap ? b : cap;
}

#endif
