/* embed.cuh - token embedding lookup with dtype widening. */
#ifndef SL_KERNELS_CUDA_EMBED_CUH
#define SL_KERNELS_CUDA_EMBED_CUH

#include "kernels/cuda/common.cuh"

/* y(T,D) = f32(table(vocab,D)[ids[t]]); ids (T) host, already < vocab. */
int slc_embed(slc_ctx_t *c, float *y, const void *table, sl_dtype_t dt, const uint32_t *ids,
              uint32_t T, uint32_t D);

#endif
