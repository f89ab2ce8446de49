/* sample.cu - softmax, argmax and sampling; see sample.cuh. */
#include "kernels/cuda/sample.cuh"

#include <math.h>

__device__ __forceinline__ float block_max(float v, float *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = slc_warp_max(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return slc_warp_max(v);
}

/* mode 0: softmax; 1: log-softmax. inv_temp scales the logits first. */
__global__ void softmax_kernel(float *x, uint32_t n, int mode, float inv_temp) {
    __shared__ float sh[32];
    float *r = x + (size_t)blockIdx.x * n;
    float mx = -INFINITY;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) mx = fmaxf(mx, r[i] * inv_temp);
    mx = block_max(mx, sh);
    float s = 0.0f;
    if (mx != -INFINITY)
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) s += expf(r[i] * inv_temp - mx);
    s = slc_block_sum(s, sh);
    if (mode == 1) {
        float lse = mx + logf(s);
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) r[i] = r[i] * inv_temp - lse;
    } else {
        float inv = 1.0f / s;
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
            r[i] = expf(r[i] * inv_temp - mx) * inv;
    }
}

/* Better (value, index) under: non-NaN beats NaN, larger value, lower index. */
__device__ __forceinline__ bool am_better(float v, uint32_t i, float bv, uint32_t bi) {
    if (isnan(v)) return false;
    if (isnan(bv)) return true;
    return v > bv || (v == bv && i < bi);
}

__global__ void argmax_kernel(uint32_t *out, const float *x, uint32_t n) {
    __shared__ float shv[32];
    __shared__ uint32_t shi[32];
    const float *r = x + (size_t)blockIdx.x * n;
    float bv = NAN;
    uint32_t bi = 0;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
        if (am_better(r[i], i, bv, bi)) bv = r[i], bi = i;
    for (int o = 16; o > 0; o >>= 1) {
        float v = __shfl_xor_sync(0xffffffffu, bv, o);
        uint32_t i = __shfl_xor_sync(0xffffffffu, bi, o);
        if (am_better(v, i, bv, bi)) bv = v, bi = i;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) shv[warp] = bv, shi[warp] = bi;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < nw; w++)
            if (am_better(shv[w], shi[w], bv, bi)) bv = shv[w], bi = shi[w];
        out[blockIdx.x] = isnan(bv) ? 0u : bi;
    }
}

/* count and mass of p >= tau over the row */
__device__ void kept_stats(const float *p, uint32_t n, float tau, float *sh, float *cnt,
                           float *mass) {
    float c = 0.0f, m = 0.0f;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
        if (p[i] >= tau) c += 1.0f, m += p[i];
    *cnt = slc_block_sum(c, sh);
    *mass = slc_block_sum(m, sh);
}

/* x already holds probabilities. One CTA (1024 threads) per row. */
__global__ void sample_kernel(uint32_t *out, const float *x, uint32_t n,
                              const slc_sample_params_t *params, const uint32_t *greedy) {
    __shared__ float sh[32];
    __shared__ float part[1024];
    const float *p = x + (size_t)blockIdx.x * n;
    slc_sample_params_t sp = params[blockIdx.x];
    if (!(sp.temperature > 0.0f)) { /* greedy row: argmax of the raw logits */
        if (threadIdx.x == 0) out[blockIdx.x] = greedy[blockIdx.x];
        return;
    }
    float pmax = 0.0f;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) pmax = fmaxf(pmax, p[i]);
    pmax = block_max(pmax, sh);
    float tau = sp.min_p > 0.0f ? sp.min_p * pmax : 0.0f, cnt, mass;
    if (sp.top_k > 0 && sp.top_k < n) { /* smallest tau with count <= k */
        float lo = 0.0f, hi = pmax;
        for (int it = 0; it < 40; it++) {
            float mid = 0.5f * (lo + hi);
            kept_stats(p, n, mid, sh, &cnt, &mass);
            if (cnt > (float)sp.top_k)
                lo = mid;
            else
                hi = mid;
        }
        tau = fmaxf(tau, hi);
    }
    if (sp.top_p > 0.0f && sp.top_p < 1.0f) { /* largest tau with mass >= top_p */
        float lo = 0.0f, hi = pmax;
        for (int it = 0; it < 40; it++) {
            float mid = 0.5f * (lo + hi);
            kept_stats(p, n, mid, sh, &cnt, &mass);
            if (mass >= sp.top_p)
                lo = mid;
            else
                hi = mid;
        }
        tau = fmaxf(tau, fminf(lo, pmax));
    }
    tau = fminf(tau, pmax); /* the top token always survives */
    /* Each thread owns a contiguous chunk; prefix over chunk masses. */
    uint32_t per = (n + blockDim.x - 1) / blockDim.x, b = threadIdx.x * per;
    uint32_t e = b + per < n ? b + per : n;
    float m = 0.0f;
    for (uint32_t i = b; i < e; i++)
        if (p[i] >= tau) m += p[i];
    part[threadIdx.x] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (uint32_t t = 0; t < blockDim.x; t++) total += part[t];
        float target = sp.u * total, acc = 0.0f;
        uint32_t pick = UINT32_MAX, last = 0;
        for (uint32_t t = 0; t < blockDim.x && pick == UINT32_MAX; t++) {
            if (acc + part[t] <= target) {
                acc += part[t];
                continue;
            }
            uint32_t cb = t * per, ce = cb + per < n ? cb + per : n;
            for (uint32_t i = cb; i < ce; i++) {
                if (p[i] < tau) continue;
                last = i;
                acc += p[i];
                if (acc > target) {
                    pick = i;
                    break;
                }
            }
        }
        if (pick == UINT32_MAX) { /* rounding at the very end: take the last kept */
            for (uint32_t i = n; i-- > 0;)
                if (p[i] >= tau) {
                    last = i;
                    break;
                }
            pick = last;
        }
        out[blockIdx.x] = pick;
    }
}

static unsigned row_threads(uint32_t n) {
    unsigned t = 32;
    while (t < n && t < 1024) t <<= 1;
    return t;
}

int slc_softmax(slc_ctx_t *c, float *x, uint32_t M, uint32_t n) {
    softmax_kernel<<<M, row_threads(n), 0, c->stream>>>(x, n, 0, 1.0f);
    return SLC_LAUNCHED();
}

int slc_log_softmax(slc_ctx_t *c, float *x, uint32_t M, uint32_t n) {
    softmax_kernel<<<M, row_threads(n), 0, c->stream>>>(x, n, 1, 1.0f);
    return SLC_LAUNCHED();
}

/* Copies the (M) ids back through the staging region (pinned), then waits. */
static int ids_to_host(slc_ctx_t *c, uint32_t *out, const uint32_t *dev, uint32_t M) {
    int rc = SLC_CUDA(
        cudaMemcpyAsync(out, dev, (size_t)M * sizeof(uint32_t), cudaMemcpyDeviceToHost, c->stream));
    if (rc == 0) rc = slc_stage_reset(c);
    return rc;
}

int slc_argmax(slc_ctx_t *c, uint32_t *out, const float *x, uint32_t M, uint32_t n) {
    uint32_t *d = (uint32_t *)slc_scratch(c, (size_t)M * sizeof(uint32_t));
    if (!d) return SL_ENOMEM;
    argmax_kernel<<<M, row_threads(n), 0, c->stream>>>(d, x, n);
    int rc = SLC_LAUNCHED();
    return rc ? rc : ids_to_host(c, out, d, M);
}

int slc_sample(slc_ctx_t *c, uint32_t *out, float *x, uint32_t M, uint32_t n,
               const slc_sample_params_t *params) {
    int rc = 0;
    bool any = false;
    for (uint32_t m = 0; m < M; m++) any |= params[m].temperature > 0.0f;
    if (!any) return slc_argmax(c, out, x, M, n); /* an all-greedy batch */
    void *dp = NULL;
    if ((rc = slc_stage(c, params, (size_t)M * sizeof *params, &dp))) return rc;
    /* (2, M): sampled ids, then greedy ids (taken before x turns into probs) */
    uint32_t *d = (uint32_t *)slc_scratch(c, 2 * (size_t)M * sizeof(uint32_t));
    if (!d) return SL_ENOMEM;
    argmax_kernel<<<M, row_threads(n), 0, c->stream>>>(d + M, x, n);
    if ((rc = SLC_LAUNCHED())) return rc;
    /* per-row temperature: one softmax launch per sampled row */
    for (uint32_t m = 0; m < M; m++) {
        if (!(params[m].temperature > 0.0f)) continue;
        softmax_kernel<<<1, row_threads(n), 0, c->stream>>>(x + (size_t)m * n, n, 0,
                                                            1.0f / params[m].temperature);
        if ((rc = SLC_LAUNCHED())) return rc;
    }
    sample_kernel<<<M, 1024, 0, c->stream>>>(d, x, n, (const slc_sample_params_t *)dp, d + M);
    if ((rc = SLC_LAUNCHED())) return rc;
    return ids_to_host(c, out, d, M);
}
