/* cuda_ext.h - what libsluice_cuda.so offers beyond kernels/backend.h's
 * vtable (plain C, for tests, benchmarks and a future ABI v2 engine hook).
 *
 * The plugin exports `const sl_cuda_ext_t *sl_cuda_plugin_ext(void)`; every
 * function takes the ctx that sl_backend_plugin_open() returned. Same error
 * and thread-safety rules as the vtable (one op at a time per ctx). */
#ifndef SL_KERNELS_CUDA_EXT_H
#define SL_KERNELS_CUDA_EXT_H

#include "kernels/backend.h"

#include <stddef.h>
#include <stdint.h>

#define SL_CUDA_EXT_SYMBOL  "sl_cuda_plugin_ext"
#define SL_CUDA_EXT_VERSION 1u

/* Per-row sampling parameters; temperature <= 0 means greedy. u is a uniform
 * [0,1) draw from the caller's RNG, so runs are reproducible. */
typedef struct sl_cuda_sample_params {
    float temperature;
    uint32_t top_k; /* 0 = off */
    float top_p;    /* >= 1 = off */
    float min_p;    /* 0 = off */
    float u;
} sl_cuda_sample_params_t;

typedef struct sl_cuda_ext {
    uint32_t version; /* SL_CUDA_EXT_VERSION */
    /* Copies KV blocks src[i] -> dst[i] (host id arrays) inside kv's pool. */
    int (*kv_block_copy)(void *ctx, const sl_kv_layout_t *kv, const uint32_t *src,
                         const uint32_t *dst, uint32_t n);
    /* out (M) host = sampled token per row of x(M,n) (device logits; left
     * overwritten with probabilities). Waits for the stream. */
    int (*sample)(void *ctx, uint32_t *out, float *x, uint32_t M, uint32_t n,
                  const sl_cuda_sample_params_t *params);
    /* Decode graphs keyed by batch size. graph_begin returns 1 when a graph
     * for key is cached (then call graph_launch), 0 when capture started
     * (run the step's ops, then graph_end), or a negative code. No op that
     * waits (copy_out, argmax, sample) may run while capturing. */
    int (*graph_begin)(void *ctx, uint32_t key);
    int (*graph_end)(void *ctx, uint32_t key);
    int (*graph_launch)(void *ctx, uint32_t key);
    /* Tensor parallelism: NCCL communicators over n devices driven by this
     * process (libnccl.so.2 is dlopen()ed here, never linked), and an
     * in-place f32 sum all-reduce of bufs[r] (device r's memory, count
     * elements) issued as one NCCL group. SL_EUNAVAIL without NCCL. */
    int (*tp_open)(void *ctx, int n, const int *devices);
    int (*tp_allreduce)(void *ctx, float *const *bufs, size_t count);
    int (*tp_size)(void *ctx);
} sl_cuda_ext_t;

typedef const sl_cuda_ext_t *(*sl_cuda_ext_fn)(void);

#endif
