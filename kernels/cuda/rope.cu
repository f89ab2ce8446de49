/* rope.cu - rotary embedding; see rope.cuh. One thread per rotated pair. */
#include "kernels/cuda/rope.cuh"

__global__ void rope_kernel(float *x, const uint32_t *pos, const float *inv_freq, uint32_t T,
                            uint32_t n_heads, uint32_t head_dim, uint32_t half) {
    size_t total = (size_t)T * n_heads * half;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t k = (uint32_t)(i % half);
        size_t th = i / half; /* t * n_heads + h */
        uint32_t t = (uint32_t)(th / n_heads);
        float a = (float)pos[t] * inv_freq[k];
        double s, co;
        sincos((double)a, &s, &co);
        float *r = x + th * head_dim;
        float x0 = r[k], x1 = r[k + half];
        r[k] = (float)(x0 * co - x1 * s);
        r[k + half] = (float)(x1 * co + x0 * s);
    }
}

int slc_rope(slc_ctx_t *c, float *x, const uint32_t *pos, const float *inv_freq, uint32_t T,
             uint32_t n_heads, uint32_t head_dim, uint32_t rot_dim) {
    void *dpos = NULL, *dfreq = NULL;
    uint32_t half = rot_dim / 2;
    size_t pb = (size_t)T * sizeof(uint32_t), fb = (size_t)half * sizeof(float);
    int rc = slc_stage_reserve(c, ((pb + 15) & ~(size_t)15) + ((fb + 15) & ~(size_t)15));
    if (rc == 0) rc = slc_stage(c, pos, pb, &dpos);
    if (rc == 0) rc = slc_stage(c, inv_freq, fb, &dfreq);
    if (rc) return rc;
    size_t total = (size_t)T * n_heads * half;
    unsigned grid = slc_grid(total, 256, 65535);
    rope_kernel<<<grid, 256, 0, c->stream>>>(x, (const uint32_t *)dpos, (const float *)dfreq, T,
                                             n_heads, head_dim, half);
    return SLC_LAUNCHED();
}
