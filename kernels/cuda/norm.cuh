/* norm.cuh - RMSNorm and the fused residual add + RMSNorm, one CTA per row. */
#ifndef SL_KERNELS_CUDA_NORM_CUH
#define SL_KERNELS_CUDA_NORM_CUH

#include "kernels/cuda/common.cuh"

/* y(M,D) = x / sqrt(mean(x^2) + eps) * w(D); y may equal x. */
int slc_rmsnorm(slc_ctx_t *c, float *y, const float *x, const float *w, uint32_t M, uint32_t D,
                float eps);
/* residual(M,D) += x (x may be NULL); y = rmsnorm(residual) * w. One pass over
 * x and residual: the sum of squares is taken on the updated residual. */
int slc_add_rmsnorm(slc_ctx_t *c, float *y, float *residual, const float *x, const float *w,
                    uint32_t M, uint32_t D, float eps);

#endif
