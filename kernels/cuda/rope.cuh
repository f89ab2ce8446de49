/* rope.cuh - rotary embedding in place, Hugging Face rotate_half layout. */
#ifndef SL_KERNELS_CUDA_ROPE_CUH
#define SL_KERNELS_CUDA_ROPE_CUH

#include "kernels/cuda/common.cuh"

/* x(T, n_heads, head_dim); pos (T) and inv_freq (rot_dim/2) are host arrays,
 * staged here. Angle = f32 product pos * inv_freq (as HF), cos/sin in double
 * (as the CPU backend), so long positions agree bit for bit in the angle. */
int slc_rope(slc_ctx_t *c, float *x, const uint32_t *pos, const float *inv_freq, uint32_t T,
             uint32_t n_heads, uint32_t head_dim, uint32_t rot_dim);

#endif
