/* embed.cu - embedding gather; see embed.cuh. One CTA per token row. */
#include "kernels/cuda/embed.cuh"

__global__ void embed_kernel(float *y, const void *table, sl_dtype_t dt, const uint32_t *ids,
                             uint32_t D) {
    size_t src = (size_t)ids[blockIdx.x] * D, dst = (size_t)blockIdx.x * D;
    for (uint32_t i = threadIdx.x; i < D; i += blockDim.x)
        y[dst + i] = slc_load(table, dt, src + i);
}

int slc_embed(slc_ctx_t *c, float *y, const void *table, sl_dtype_t dt, const uint32_t *ids,
              uint32_t T, uint32_t D) {
    void *dids = NULL;
    int rc = slc_stage(c, ids, (size_t)T * sizeof(uint32_t), &dids);
    if (rc) return rc;
    embed_kernel<<<T, 256, 0, c->stream>>>(y, table, dt, (const uint32_t *)dids, D);
    return SLC_LAUNCHED();
}
