/* gemm.cu - matmul for the CUDA backend; see gemm.cuh. */
#include "kernels/cuda/gemm.cuh"

/* One warp per weight row n; each lane walks K in 8-element chunks (one
 * 16-byte load of W when aligned), dotting with all MR rows of x. */
template <int MR>
__global__ void gemv_kernel(float *__restrict__ y, const float *__restrict__ x,
                            const void *__restrict__ w, sl_dtype_t wdt,
                            const float *__restrict__ bias, uint32_t N, uint32_t K, int accumulate,
                            int vec) {
    uint32_t warps = blockDim.x >> 5;
    uint32_t n = blockIdx.x * warps + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= N) return;
    float acc[MR];
#pragma unroll
    for (int m = 0; m < MR; m++) acc[m] = 0.0f;
    size_t row = (size_t)n * K;
    if (vec && wdt != SL_DTYPE_F32) {
        /* (K/8) chunks of 8 halves/bf16s per 16-byte load */
        const uint4 *wv = (const uint4 *)((const uint16_t *)w + row);
        for (uint32_t c8 = lane; c8 < K / 8; c8 += 32) {
            uint4 raw = __ldg(wv + c8);
            float wf[8];
            const uint16_t *h = (const uint16_t *)&raw;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                if (wdt == SL_DTYPE_BF16)
                    wf[e] = __uint_as_float((uint32_t)h[e] << 16);
                else
                    wf[e] = __half2float(__ushort_as_half(h[e]));
            }
#pragma unroll
            for (int m = 0; m < MR; m++) {
                const float4 *xv = (const float4 *)(x + (size_t)m * K + (size_t)c8 * 8);
                float4 a = xv[0], b = xv[1];
                acc[m] += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w + wf[4] * b.x +
                          wf[5] * b.y + wf[6] * b.z + wf[7] * b.w;
            }
        }
    } else if (vec) {
        const float4 *wv = (const float4 *)((const float *)w + row);
        for (uint32_t c4 = lane; c4 < K / 4; c4 += 32) {
            float4 wf = __ldg(wv + c4);
#pragma unroll
            for (int m = 0; m < MR; m++) {
                float4 a = *(const float4 *)(x + (size_t)m * K + (size_t)c4 * 4);
                acc[m] += wf.x * a.x + wf.y * a.y + wf.z * a.z + wf.w * a.w;
            }
        }
    } else {
        for (uint32_t k = lane; k < K; k += 32) {
            float wf = slc_load(w, wdt, row + k);
#pragma unroll
            for (int m = 0; m < MR; m++) acc[m] += wf * x[(size_t)m * K + k];
        }
    }
#pragma unroll
    for (int m = 0; m < MR; m++) {
        float s = slc_warp_sum(acc[m]);
        if (lane == 0) {
            if (bias) s += bias[n];
            size_t o = (size_t)m * N + n;
            y[o] = accumulate ? y[o] + s : s;
        }
    }
}

template <int MR>
static void gemv_launch(slc_ctx_t *c, float *y, const float *x, const void *w, sl_dtype_t wdt,
                        const float *bias, uint32_t N, uint32_t K, bool accumulate, int vec) {
    const unsigned threads = 256, rows = threads / 32;
    gemv_kernel<MR>
        <<<slc_blocks(N, rows), threads, 0, c->stream>>>(y, x, w, wdt, bias, N, K, accumulate, vec);
}

/* Casts n f32 values to f16/bf16. */
__global__ void cast_kernel(void *dst, sl_dtype_t dt, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        slc_store(dst, dt, i, src[i]);
}

/* y(M,N) += bias(N) */
__global__ void bias_kernel(float *y, const float *bias, uint32_t M, uint32_t N) {
    size_t total = (size_t)M * N;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += bias[i % N];
}

int slc_gemm(slc_ctx_t *c, float *y, const float *x, const void *w, sl_dtype_t wdt,
             const float *bias, uint32_t M, uint32_t N, uint32_t K, bool accumulate) {
    int rc = 0;
    if (M <= SLC_GEMV_MAX_M) {
        unsigned align = wdt == SL_DTYPE_F32 ? 4 : 8; /* elements per 16-byte load */
        int vec =
            K % align == 0 && K % 8 == 0 && ((uintptr_t)w & 15u) == 0 && ((uintptr_t)x & 15u) == 0;
        switch (M) {
#define SLC_GEMV_CASE(m)                                                                           \
    case m:                                                                                        \
        gemv_launch<m>(c, y, x, w, wdt, bias, N, K, accumulate, vec);                              \
        break;
            SLC_GEMV_CASE(1)
            SLC_GEMV_CASE(2)
            SLC_GEMV_CASE(3)
            SLC_GEMV_CASE(4)
            SLC_GEMV_CASE(5)
            SLC_GEMV_CASE(6)
            SLC_GEMV_CASE(7)
            SLC_GEMV_CASE(8)
#undef SLC_GEMV_CASE
        default:
            return SL_EINVAL;
        }
        return SLC_LAUNCHED();
    }

    /* Row-major y(M,N) = x(M,K) W(N,K)^T is column-major Y(N,M) = W^T' X:
     * A = W seen column-major (K,N), transposed; B = x seen column-major (K,M). */
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const void *xb = x;
    cudaDataType_t ab = CUDA_R_32F;
    if (wdt != SL_DTYPE_F32) {
        size_t n = (size_t)M * K;
        void *s = slc_scratch(c, n * 2);
        if (!s) return SL_ENOMEM;
        unsigned grid = slc_blocks(n, 256) < 4096 ? slc_blocks(n, 256) : 4096;
        cast_kernel<<<grid, 256, 0, c->stream>>>(s, wdt, x, n);
        if ((rc = SLC_LAUNCHED())) return rc;
        xb = s;
        ab = wdt == SL_DTYPE_F16 ? CUDA_R_16F : CUDA_R_16BF;
    }
    rc = SLC_BLAS(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, w,
                               ab, (int)K, xb, ab, (int)K, &beta, y, CUDA_R_32F, (int)N,
                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (rc) return rc;
    if (bias) {
        size_t n = (size_t)M * N;
        unsigned grid = slc_blocks(n, 256) < 4096 ? slc_blocks(n, 256) : 4096;
        bias_kernel<<<grid, 256, 0, c->stream>>>(y, bias, M, N);
        rc = SLC_LAUNCHED();
    }
    return rc;
}
