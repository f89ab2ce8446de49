/* kv.cu - KV write and block copy; see kv.cuh. */
#include "kernels/cuda/kv.cuh"

#include <stdlib.h>

/* slots (T): (block id, slot) per row. One thread per (row, head, dim). */
__global__ void kv_write_kernel(unsigned char *base, size_t block_bytes, sl_dtype_t dt,
                                uint32_t layer, uint32_t nkv, uint32_t bs, uint32_t hd,
                                const uint2 *slots, const float *k, const float *v, size_t total) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t d = (uint32_t)(i % hd);
        size_t rh = i / hd;
        uint32_t h = (uint32_t)(rh % nkv), r = (uint32_t)(rh / nkv);
        uint2 s = slots[r];
        void *blk = base + (size_t)s.x * block_bytes;
        size_t off = (size_t)s.y * hd + d;
        slc_store(blk, dt, slc_kv_plane(layer, 0, h, nkv, bs, hd) + off, k[i]);
        slc_store(blk, dt, slc_kv_plane(layer, 1, h, nkv, bs, hd) + off, v[i]);
    }
}

int slc_kv_write(slc_ctx_t *c, const sl_kv_layout_t *kv, uint32_t layer, const sl_attn_seq_t *seqs,
                 uint32_t n_seqs, const float *k, const float *v) {
    int rc = 0;
    uint32_t T = 0;
    for (uint32_t s = 0; s < n_seqs; s++) T += seqs[s].n_tokens;
    uint2 *slots = (uint2 *)malloc((size_t)T * sizeof *slots); /* (T) */
    void *dslots = NULL;
    if (!slots) return SL_ENOMEM;
    uint32_t r = 0;
    for (uint32_t s = 0; s < n_seqs; s++)
        for (uint32_t i = 0; i < seqs[s].n_tokens; i++, r++) {
            uint32_t p = seqs[s].pos + i;
            slots[r] = make_uint2(seqs[s].blocks[p / kv->block_size], p % kv->block_size);
        }
    if ((rc = slc_stage(c, slots, (size_t)T * sizeof *slots, &dslots))) goto out;
    {
        size_t total = (size_t)T * kv->n_kv_heads * kv->head_dim;
        unsigned grid = slc_grid(total, 256, 65535);
        kv_write_kernel<<<grid, 256, 0, c->stream>>>(
            (unsigned char *)kv->base, kv->block_bytes, kv->dtype, layer, kv->n_kv_heads,
            kv->block_size, kv->head_dim, (const uint2 *)dslots, k, v, total);
        rc = SLC_LAUNCHED();
    }
out:
    free(slots);
    return rc;
}

/* One CTA per block pair, 16-byte words when block_bytes allows. */
__global__ void kv_copy_kernel(unsigned char *base, size_t block_bytes, const uint2 *pairs) {
    uint2 p = pairs[blockIdx.x];
    const unsigned char *s = base + (size_t)p.x * block_bytes;
    unsigned char *d = base + (size_t)p.y * block_bytes;
    if ((block_bytes & 15u) == 0) {
        for (size_t i = threadIdx.x; i < block_bytes / 16; i += blockDim.x)
            ((uint4 *)d)[i] = ((const uint4 *)s)[i];
    } else {
        for (size_t i = threadIdx.x; i < block_bytes; i += blockDim.x) d[i] = s[i];
    }
}

int slc_kv_block_copy(slc_ctx_t *c, const sl_kv_layout_t *kv, const uint32_t *src,
                      const uint32_t *dst, uint32_t n) {
    int rc = 0;
    void *dp = NULL;
    if (!kv || !kv->base || (n && (!src || !dst))) return SL_EINVAL;
    if (n == 0) return 0;
    uint2 *pairs = (uint2 *)malloc((size_t)n * sizeof *pairs); /* (n) */
    if (!pairs) return SL_ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        if (src[i] >= kv->n_blocks || dst[i] >= kv->n_blocks || src[i] == dst[i]) {
            rc = SL_EINVAL;
            goto out;
        }
        pairs[i] = make_uint2(src[i], dst[i]);
    }
    if ((rc = slc_stage(c, pairs, (size_t)n * sizeof *pairs, &dp))) goto out;
    kv_copy_kernel<<<n, 256, 0, c->stream>>>((unsigned char *)kv->base, kv->block_bytes,
                                             (const uint2 *)dp);
    rc = SLC_LAUNCHED();
out:
    free(pairs);
    return rc;
}
