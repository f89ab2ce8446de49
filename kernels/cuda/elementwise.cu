/* elementwise.cu - SiLU·mul and add; see elementwise.cuh. Grid-stride loops. */
#include "kernels/cuda/elementwise.cuh"

__global__ void silu_mul_kernel(float *y, const float *gate, const float *up, uint32_t n,
                                uint32_t in_stride, size_t total) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t m = i / n, j = i % n, o = m * in_stride + j;
        float g = gate[o];
        y[i] = g / (1.0f + expf(-g)) * up[o];
    }
}

__global__ void add_kernel(float *y, const float *a, const float *b, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = a[i] + b[i];
}

static unsigned ew_grid(size_t n) {
    unsigned b = slc_blocks(n, 256);
    return b > 65535 ? 65535 : b;
}

int slc_silu_mul(slc_ctx_t *c, float *y, const float *gate, const float *up, uint32_t M, uint32_t n,
                 uint32_t in_stride) {
    size_t total = (size_t)M * n;
    silu_mul_kernel<<<ew_grid(total), 256, 0, c->stream>>>(y, gate, up, n, in_stride, total);
    return SLC_LAUNCHED();
}

int slc_add(slc_ctx_t *c, float *y, const float *a, const float *b, size_t n) {
    add_kernel<<<ew_grid(n), 256, 0, c->stream>>>(y, a, b, n);
    return SLC_LAUNCHED();
}
