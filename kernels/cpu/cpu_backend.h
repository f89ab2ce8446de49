/* cpu_backend.h - the CPU backend: vectorized, multi-threaded kernels.
 *
 * Implements sl_backend_ops_t on host memory. Matmul uses OpenBLAS SGEMM
 * when M (token rows) reaches gemm_min_m (prefill), converting bf16/f16
 * weights to f32 a block of rows at a time, and otherwise (decode) a GEMV
 * kernel that streams each weight row once for all M rows: a dot-product tile
 * for few rows, and from panel_min_m rows a panel kernel that widens 12
 * weight rows to f32 once and broadcasts each weight to 32 rows of x. bf16
 * weights at M >= 2 (decode batches and prefill) use bf16 dot products where
 * the CPU has them (AMX tiles, else AVX512_BF16; SLUICE_BF16X_MIN_M /
 * SLUICE_BF16X_MAX_M bound the M range) on x split into bf16 hi + lo, which
 * keeps the result within ~2^-17 per term of f32. All split N
 * across the backend's thread pool; OpenBLAS is set to one thread per call so
 * the two pools never fight over cores (this is process-wide).
 *
 * Thread-safety: as backend.h: one op at a time per backend.
 */
#ifndef SL_KERNELS_CPU_BACKEND_H
#define SL_KERNELS_CPU_BACKEND_H

#include "kernels/backend.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/threadpool.h"

#include <stdint.h>

typedef struct sl_cpu_options {
    int n_threads;        /* 0 = $SLUICE_THREADS, else the CPUs this process may use */
    sl_cpu_isa_t isa;     /* SL_CPU_ISA_AUTO, or a level to force (tests, benchmarks) */
    uint32_t gemm_min_m;  /* M at which matmul switches to SGEMM; 0 = $SLUICE_GEMM_MIN_M
                             or 64; UINT32_MAX = never */
    uint32_t panel_min_m; /* M at which matmuls below gemm_min_m switch from the GEMV
                             tile to the panel kernel (each weight broadcast to up to
                             32 rows), for every weight dtype; 0 = $SLUICE_PANEL_MIN_M,
                             else 24 for f32 and never for bf16/f16 (the tile measured
                             as fast there); UINT32_MAX = never. Only where the ISA
                             has a panel kernel (AVX-512). */
    sl_cpu_pool_t *pool;  /* borrowed, optional: run on this pool (n_threads is then
                             ignored), so its owner can use the same threads between
                             ops (the model samples on them); it must outlive the
                             backend and not run jobs while an op runs */
} sl_cpu_options_t;

/* Creates a CPU backend (opt may be NULL for defaults). Returns 0 and stores
 * it in *out, SL_EUNSUPPORTED if opt->isa is beyond this CPU, SL_ENOMEM, or
 * SL_EINVAL. Free with sl_backend_free(). */
int sl_cpu_backend_create(const sl_cpu_options_t *opt, sl_backend_t **out);

#endif
