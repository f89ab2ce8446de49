/* elementwise.cuh - SiLU·mul (on split or fused gate|up buffers) and add. */
#ifndef SL_KERNELS_CUDA_ELEMENTWISE_CUH
#define SL_KERNELS_CUDA_ELEMENTWISE_CUH

#include "kernels/cuda/common.cuh"

/* y(M,n) = silu(gate) * up; gate/up rows start at m * in_stride. */
int slc_silu_mul(slc_ctx_t *c, float *y, const float *gate, const float *up, uint32_t M, uint32_t n,
                 uint32_t in_stride);
/* y(n) = a + b; y may equal a or b. */
int slc_add(slc_ctx_t *c, float *y, const float *a, const float *b, size_t n);

#endif
