/* kv.cuh - writing a step's K/V rows into paged KV blocks, and block copies.
 *
 * KV memory keeps DESIGN.md's layout in device memory: block b at
 * base + b * block_bytes, inside [layer][k|v][kv_head][token][head_dim] in
 * kv->dtype (f32, f16 or bf16), so a block is one contiguous range for UCX
 * puts and host offload, exactly as on the CPU backend. */
#ifndef SL_KERNELS_CUDA_KV_CUH
#define SL_KERNELS_CUDA_KV_CUH

#include "kernels/cuda/common.cuh"

/* Element offset of (layer, k|v, kv_head) inside a block: the start of a
 * (block_size, head_dim) plane. */
__host__ __device__ __forceinline__ size_t slc_kv_plane(uint32_t layer, uint32_t which,
                                                        uint32_t head, uint32_t n_kv_heads,
                                                        uint32_t block_size, uint32_t head_dim) {
    return (((size_t)layer * 2 + which) * n_kv_heads + head) * block_size * head_dim;
}

/* k, v (T, n_kv_heads, head_dim) f32 device -> their slots; seqs and block
 * tables host (validated). Converts to kv->dtype. */
int slc_kv_write(slc_ctx_t *c, const sl_kv_layout_t *kv, uint32_t layer, const sl_attn_seq_t *seqs,
                 uint32_t n_seqs, const float *k, const float *v);

/* Copies whole blocks src[i] -> dst[i] (i < n, host arrays, ids < n_blocks,
 * dst ids distinct) inside the pool: copy-on-write of a shared prefix block
 * and compaction. Queued; returns 0 / SL_EINVAL / SL_EDEVICE. */
int slc_kv_block_copy(slc_ctx_t *c, const sl_kv_layout_t *kv, const uint32_t *src,
                      const uint32_t *dst, uint32_t n);

#endif
