/* sample.cuh - row-wise softmax / log-softmax / argmax, and on-device
 * sampling (temperature, top-k, top-p, min-p) so a decode step returns ids,
 * not (M, vocab) logits, across PCIe. One CTA per row. */
#ifndef SL_KERNELS_CUDA_SAMPLE_CUH
#define SL_KERNELS_CUDA_SAMPLE_CUH

#include "kernels/cuda/common.cuh"

int slc_softmax(slc_ctx_t *c, float *x, uint32_t M, uint32_t n);
int slc_log_softmax(slc_ctx_t *c, float *x, uint32_t M, uint32_t n);
/* out (M) host: ties to the lowest index, NaN never chosen unless all NaN
 * (then 0). Waits for the stream (the result is on the host). */
int slc_argmax(slc_ctx_t *c, uint32_t *out, const float *x, uint32_t M, uint32_t n);

/* Per-row sampling parameters (host). temperature <= 0 means greedy. */
typedef struct slc_sample_params {
    float temperature;
    uint32_t top_k; /* 0 = off */
    float top_p;    /* 1 = off */
    float min_p;    /* 0 = off */
    float u;        /* uniform [0,1) draw from the caller's RNG (reproducible) */
} slc_sample_params_t;

/* out (M) host = a token per row of logits x(M,n) (device; sampled rows are
 * left as softmax probabilities of the tempered logits). Rows with
 * temperature <= 0 take the argmax of their raw logits, in the same batch. The kept set is the
 * tokens with p >= max(tau_k, tau_p, min_p * p_max), where tau_k / tau_p are found by bisection on
 * the probability (no sort): the k-th largest and the smallest set with mass >= top_p, keeping ties
 * together. The draw walks the kept tokens in index order. Waits for the stream. */
int slc_sample(slc_ctx_t *c, uint32_t *out, float *x, uint32_t M, uint32_t n,
               const slc_sample_params_t *params);

#endif
