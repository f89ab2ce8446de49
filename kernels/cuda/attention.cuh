/* attention.cuh - paged causal GQA attention over the block table.
 *
 * Rows are split by kind on the host:
 *  - decode rows (sequences with one new token): one CTA per (row, head,
 *    split); each warp walks keys with an online softmax, warps merge in
 *    shared memory. Long contexts with few (row, head) pairs to fill the SMs
 *    use split-K (flash-decoding): each split writes (max, sum, acc) partials
 *    to scratch and a combine kernel merges them, log-sum-exp style.
 *  - prefill rows (sequences with several new tokens): flash-attention-style
 *    tiles of SLC_ATT_QTILE query rows of one sequence per CTA; K/V tiles of
 *    SLC_ATT_KTILE keys are staged in shared memory once for all the tile's
 *    rows, each warp keeps its rows' running max/sum/accumulator.
 * Both read K/V in kv->dtype and accumulate in f32; both honor the sliding
 * window. head_dim <= SLC_MAX_HEAD_DIM (else SL_EUNSUPPORTED). */
#ifndef SL_KERNELS_CUDA_ATTENTION_CUH
#define SL_KERNELS_CUDA_ATTENTION_CUH

#include "kernels/cuda/common.cuh"

#define SLC_ATT_QTILE 16u
#define SLC_ATT_KTILE 16u

/* q, out (T, n_heads, head_dim) f32 device; seqs/block tables host. Forcing
 * a path (tests): SLUICE_CUDA_ATTN=rows|split|tiles. */
int slc_attention(slc_ctx_t *c, float *out, const float *q, const sl_kv_layout_t *kv,
                  uint32_t layer, const sl_attn_seq_t *seqs, uint32_t n_seqs, uint32_t n_heads,
                  uint32_t window, float scale);

#endif
