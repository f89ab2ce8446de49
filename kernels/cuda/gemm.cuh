/* gemm.cuh - y(M,N) = x(M,K) · W(N,K)^T [+ bias(N)] [+ y], W f32/f16/bf16.
 *
 * M <= SLC_GEMV_MAX_M (decode): a bandwidth-bound kernel that streams each
 * weight row once for all M rows (16-byte loads, f32 accumulation, x kept in
 * f32 so results track the CPU backend closely).
 * Larger M (prefill, big batches): cuBLAS GemmEx. f32 W: SGEMM with f32
 * compute (no TF32, for parity with the CPU). f16/bf16 W: x is cast to W's
 * dtype in scratch and the GEMM runs on tensor cores with f32 accumulation
 * (CUBLAS_COMPUTE_32F) into f32 y; the bias is a cuBLASLt epilogue-free
 * separate pass (one read of y) so accumulate and bias compose. */
#ifndef SL_KERNELS_CUDA_GEMM_CUH
#define SL_KERNELS_CUDA_GEMM_CUH

#include "kernels/cuda/common.cuh"

#define SLC_GEMV_MAX_M 8u

int slc_gemm(slc_ctx_t *c, float *y, const float *x, const void *w, sl_dtype_t wdt,
             const float *bias, uint32_t M, uint32_t N, uint32_t K, bool accumulate);

#endif
