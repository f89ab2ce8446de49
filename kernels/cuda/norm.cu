/* norm.cu - RMSNorm kernels; see norm.cuh. */
#include "kernels/cuda/norm.cuh"

/* res: the row to normalize (updated in place with x when x != NULL). */
__global__ void rmsnorm_kernel(float *__restrict__ y, float *res, const float *x,
                               const float *__restrict__ w, uint32_t D, float eps) {
    __shared__ float sh[32];
    size_t base = (size_t)blockIdx.x * D;
    float ss = 0.0f;
    for (uint32_t i = threadIdx.x; i < D; i += blockDim.x) {
        float v = res[base + i];
        if (x) {
            v += x[base + i];
            res[base + i] = v;
        }
        ss += v * v;
    }
    ss = slc_block_sum(ss, sh);
    float inv = rsqrtf(ss / (float)D + eps);
    for (uint32_t i = threadIdx.x; i < D; i += blockDim.x) y[base + i] = res[base + i] * inv * w[i];
}

static unsigned norm_threads(uint32_t D) {
    unsigned t = 32;
    while (t < D && t < 1024) t <<= 1;
    return t;
}

int slc_rmsnorm(slc_ctx_t *c, float *y, const float *x, const float *w, uint32_t M, uint32_t D,
                float eps) {
    /* res is read-only when x == NULL: the cast keeps one kernel for both. */
    rmsnorm_kernel<<<M, norm_threads(D), 0, c->stream>>>(y, (float *)x, NULL, w, D, eps);
    return SLC_LAUNCHED();
}

int slc_add_rmsnorm(slc_ctx_t *c, float *y, float *residual, const float *x, const float *w,
                    uint32_t M, uint32_t D, float eps) {
    rmsnorm_kernel<<<M, norm_threads(D), 0, c->stream>>>(y, residual, x, w, D, eps);
    return SLC_LAUNCHED();
}
