/* backend.h - the one interface between the model and its compute kernels.
 *
 * A backend is a vtable of plain C functions plus an opaque context, chosen
 * once at start: "cpu" (kernels/cpu, always present) or "cuda" (a shared
 * library, libsluice_cuda.so, that sl_backend_create() dlopen()s and asks for
 * its vtable through sl_backend_plugin_open()). The model codes against the
 * sl_backend_* wrappers below, never against a backend directly.
 *
 * Memory. "Backend memory" is what sl_backend_alloc() returns: host memory on
 * the CPU backend, device memory on CUDA. Tensor pointers passed to ops
 * (activations, weights, biases, norm weights, KV memory) are backend memory.
 * When sl_backend_host_memory() is true, any host pointer is backend memory,
 * so memory-mapped weights can be used in place with no copy; otherwise the
 * model uploads weights once with sl_backend_alloc() + sl_backend_copy_in().
 * Index and metadata arrays (token ids, positions, inv_freq, block tables,
 * sequence descriptors, argmax output) are always host memory; a device
 * backend copies them itself.
 *
 * Dtypes. Weights and embedding tables may be f32, f16 or bf16. Activations
 * are f32. Biases and norm weights are f32 (the model converts those small
 * vectors at load time with sl_dtype_to_f32()). KV memory has its own dtype in
 * sl_kv_layout_t: f32, or bf16/f16 to halve KV memory (rounded to nearest even
 * on write, widened to f32 for the math).
 *
 * Shapes are written (rows, cols), row-major, innermost last; M is the number
 * of token rows in a step. All sizes are element counts unless named *_bytes.
 *
 * Errors. Every op returns 0 or a negative SL_E* code (common/base/err.h):
 * SL_EINVAL for NULL pointers or inconsistent shapes, SL_ERANGE for an index
 * (token id, block id, position) out of bounds, SL_EUNSUPPORTED for a dtype
 * the backend lacks, SL_EDEVICE for an accelerator failure. The wrappers
 * validate arguments before any backend runs, so a bad call never reaches a
 * kernel. On error the outputs are unspecified.
 *
 * Thread-safety. A backend runs one op at a time: ops from several threads on
 * the same backend must be serialized by the caller (the engine loop owns the
 * backend). Ops are internally multi-threaded (kernels/cpu has a persistent
 * thread pool sized by SLUICE_THREADS or the number of CPUs). Ops are
 * synchronous on the CPU backend; a device backend may queue them, and
 * sl_backend_copy_out() / sl_backend_sync() wait for queued work.
 */
#ifndef SL_KERNELS_BACKEND_H
#define SL_KERNELS_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- dtypes --------------------------------------------------------------- */

typedef enum sl_dtype {
    SL_DTYPE_F32 = 0,
    SL_DTYPE_F16 = 1,  /* IEEE 754 binary16 */
    SL_DTYPE_BF16 = 2, /* bfloat16: the top 16 bits of an f32 */
    SL_DTYPE_COUNT
} sl_dtype_t;

/* Bytes per element (4, 2, 2), or 0 for an invalid dtype. */
size_t sl_dtype_size(sl_dtype_t dt);
/* "f32", "f16", "bf16", or "?" for an invalid dtype. */
const char *sl_dtype_name(sl_dtype_t dt);

/* Scalar conversions, exact where the target can represent the value:
 * f16/bf16 -> f32 is exact (NaN stays NaN, Inf stays Inf, subnormals kept);
 * f32 -> f16/bf16 rounds to nearest even, overflows to Inf, keeps NaN a NaN
 * (quiet), and produces f16 subnormals where needed. */
static inline float sl_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t sl_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                             /* RNE */
    return (uint16_t)(u >> 16);
}

float sl_f16_to_f32(uint16_t h);
uint16_t sl_f32_to_f16(float f);

/* Converts n elements of src (dtype dt, host memory) to f32 in dst (host).
 * Vectorized where the CPU allows. Returns 0 or SL_EINVAL. Thread-safe. */
int sl_dtype_to_f32(float *dst, const void *src, sl_dtype_t dt, size_t n);
/* Converts n f32 values to dtype dt (rounding as above). Returns 0 or SL_EINVAL. */
int sl_dtype_from_f32(void *dst, sl_dtype_t dt, const float *src, size_t n);

/* ---- paged KV --------------------------------------------------------------- */

/* KV memory as common/engine/forward.h fixes it:
 *   block b at base + b * block_bytes; inside a block
 *   [layer (n_layers)][k|v (2)][kv_head (n_kv_heads)][token (block_size)][head_dim]
 * so layer l's K of kv_head h, slot t is at element
 *   ((l * 2 + 0) * n_kv_heads + h) * block_size * head_dim + t * head_dim
 * and V at (l * 2 + 1) in place of (l * 2 + 0). block_bytes may exceed the
 * bytes the layers need (padding) but never be less. */
typedef struct sl_kv_layout {
    void *base;          /* backend memory, n_blocks * block_bytes bytes */
    size_t block_bytes;  /* bytes per block */
    uint32_t n_blocks;   /* physical blocks; block ids must be < n_blocks */
    uint32_t block_size; /* tokens per block */
    uint32_t n_layers;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    sl_dtype_t dtype; /* KV element dtype: f32, bf16 or f16 */
} sl_kv_layout_t;

/* Bytes one block needs for this layout (2 * n_layers * n_kv_heads *
 * block_size * head_dim * dtype size), or 0 on overflow / invalid dtype. */
size_t sl_kv_block_bytes_min(const sl_kv_layout_t *kv);

/* One sequence's share of a step, for kv_write and attention. Its n_tokens
 * query/K/V rows are contiguous, sequences in order, so the step has
 * T = sum(n_tokens) rows. Token i is at position pos + i and lives in block
 * blocks[(pos + i) / block_size], slot (pos + i) % block_size. */
typedef struct sl_attn_seq {
    uint32_t n_tokens;      /* rows of this sequence in the step (may be 0) */
    uint32_t pos;           /* position of the first row; KV of [0, pos) already stored */
    const uint32_t *blocks; /* (n_blocks) block table, host memory */
    uint32_t n_blocks;      /* must cover pos + n_tokens tokens */
} sl_attn_seq_t;

/* ---- the vtable ------------------------------------------------------------- */

/* Bumped whenever sl_backend_ops_t changes; a plugin built against another
 * version is refused. */
#define SL_BACKEND_ABI_VERSION 1u

typedef struct sl_backend_config {
    int n_threads; /* CPU threads; 0 = $SLUICE_THREADS, else the number of CPUs */
    int device;    /* accelerator ordinal for device backends */
} sl_backend_config_t;

/* Implemented by each backend. Arguments arrive fully validated by the
 * wrappers: pointers non-NULL where required, shapes consistent, sizes free of
 * overflow, and the host index arrays (ids, positions, block tables) within
 * their bounds. A backend may therefore trust them. Every member is required. */
typedef struct sl_backend_ops {
    uint32_t abi_version; /* SL_BACKEND_ABI_VERSION */
    const char *name;     /* "cpu", "cuda" */
    bool host_memory;     /* backend memory is host memory */
    void (*destroy)(void *ctx);

    void *(*alloc)(void *ctx, size_t bytes);
    void (*free)(void *ctx, void *p);
    int (*copy_in)(void *ctx, void *dst, const void *src_host, size_t bytes);
    int (*copy_out)(void *ctx, void *dst_host, const void *src, size_t bytes);
    int (*sync)(void *ctx);

    int (*matmul)(void *ctx, float *y, const float *x, const void *w, sl_dtype_t wdt,
                  const float *bias, uint32_t M, uint32_t N, uint32_t K, bool accumulate);
    int (*rmsnorm)(void *ctx, float *y, const float *x, const float *w, uint32_t M, uint32_t D,
                   float eps);
    int (*add_rmsnorm)(void *ctx, float *y, float *residual, const float *x, const float *w,
                       uint32_t M, uint32_t D, float eps);
    int (*rope)(void *ctx, float *x, const uint32_t *pos, const float *inv_freq, uint32_t T,
                uint32_t n_heads, uint32_t head_dim, uint32_t rot_dim);
    int (*silu_mul)(void *ctx, float *y, const float *gate, const float *up, uint32_t M, uint32_t n,
                    uint32_t in_stride);
    int (*add)(void *ctx, float *y, const float *a, const float *b, size_t n);
    int (*softmax)(void *ctx, float *x, uint32_t M, uint32_t n);
    int (*log_softmax)(void *ctx, float *x, uint32_t M, uint32_t n);
    int (*argmax)(void *ctx, uint32_t *out, const float *x, uint32_t M, uint32_t n);
    int (*embed)(void *ctx, float *y, const void *table, sl_dtype_t dt, const uint32_t *ids,
                 uint32_t T, uint32_t D, uint32_t vocab);
    int (*kv_write)(void *ctx, const sl_kv_layout_t *kv, uint32_t layer, const sl_attn_seq_t *seqs,
                    uint32_t n_seqs, const float *k, const float *v);
    int (*attention)(void *ctx, float *out, const float *q, const sl_kv_layout_t *kv,
                     uint32_t layer, const sl_attn_seq_t *seqs, uint32_t n_seqs, uint32_t n_heads,
                     uint32_t window, float scale);
} sl_backend_ops_t;

/* A plugin shared library exports this symbol (C linkage):
 *   int sl_backend_plugin_open(uint32_t abi_version, const sl_backend_config_t *cfg,
 *                              const sl_backend_ops_t **ops, void **ctx);
 * returning 0 with *ops (static storage) and *ctx set, or a negative SL_E*
 * code (SL_EUNAVAIL when no device is present). */
#define SL_BACKEND_PLUGIN_SYMBOL "sl_backend_plugin_open"
typedef int (*sl_backend_plugin_open_fn)(uint32_t abi_version, const sl_backend_config_t *cfg,
                                         const sl_backend_ops_t **ops, void **ctx);

typedef struct sl_backend sl_backend_t;

/* ---- lifetime ------------------------------------------------------------- */

/* Creates a backend by name (what a service's --device / --backend flag
 * carries): "cpu"; "cuda" or "cuda:N" (device ordinal N instead of
 * cfg->device): the CUDA driver is probed first (libcuda.so.1, cuInit,
 * cuDeviceGetCount through dlsym, never linked), and only with a device is
 * libsluice_cuda.so loaded from $SLUICE_CUDA_LIB, the executable's ../lib, or
 * the loader path; or NULL / "auto": $SLUICE_BACKEND if set, else cuda when
 * it loads and finds a device, else cpu. cfg may be NULL (defaults). Stores the backend in *out and
 * returns 0, or SL_EINVAL (unknown name), SL_EUNAVAIL (cuda asked for, none usable), SL_ENOMEM. The
 * caller frees it with sl_backend_free(). */
int sl_backend_create(const char *name, const sl_backend_config_t *cfg, sl_backend_t **out);

/* Wraps an ops table and context (used by the CPU backend and by tests).
 * Takes ownership of ctx (ops->destroy frees it) even on failure. */
int sl_backend_wrap(const sl_backend_ops_t *ops, void *ctx, sl_backend_t **out);

/* Destroys the backend and its context; memory from sl_backend_alloc() must
 * be freed before. NULL is a no-op. */
void sl_backend_free(sl_backend_t *be);

const char *sl_backend_name(const sl_backend_t *be);
/* True when host pointers are backend memory (weights usable in place). */
bool sl_backend_host_memory(const sl_backend_t *be);

/* ---- memory ---------------------------------------------------------------- */

/* Allocates bytes (> 0) of backend memory, 64-byte aligned, uninitialized.
 * Returns NULL on failure. Free with sl_backend_mem_free (NULL is a no-op). */
void *sl_backend_alloc(sl_backend_t *be, size_t bytes);
void sl_backend_mem_free(sl_backend_t *be, void *p);
/* Copies host -> backend memory and backend -> host memory. copy_out waits
 * for queued ops. Return 0 or SL_EINVAL / SL_EDEVICE. */
int sl_backend_copy_in(sl_backend_t *be, void *dst, const void *src_host, size_t bytes);
int sl_backend_copy_out(sl_backend_t *be, void *dst_host, const void *src, size_t bytes);
/* Waits until every queued op has finished (no-op on the CPU backend). */
int sl_backend_sync(sl_backend_t *be);

/* ---- ops --------------------------------------------------------------------- */

/* y(M,N) = x(M,K) · W(N,K)^T [+ bias(N)] [+ y(M,N) if accumulate].
 * W is a row-major (N,K) weight of dtype wdt, exactly as Hugging Face stores
 * nn.Linear weights; bias is f32 or NULL. accumulate adds into y (fuses the
 * residual add after o_proj / down_proj). y must not alias x or W.
 * CPU: M >= a threshold uses BLAS SGEMM (bf16/f16 W converted to f32 in
 * blocks); small M streams W once for all M rows with vectorized,
 * multi-threaded dot products; bf16 W at M >= 2 uses AMX / AVX512_BF16 dot
 * products on x split into bf16 hi + lo parts (within ~2^-17 per term of f32). */
int sl_backend_matmul(sl_backend_t *be, float *y, const float *x, const void *w, sl_dtype_t wdt,
                      const float *bias, uint32_t M, uint32_t N, uint32_t K, bool accumulate);

/* y(M,D) = x(M,D) / sqrt(mean(x^2) + eps) * w(D), per row. y may equal x. */
int sl_backend_rmsnorm(sl_backend_t *be, float *y, const float *x, const float *w, uint32_t M,
                       uint32_t D, float eps);

/* Fused residual add + RMSNorm: residual(M,D) += x(M,D); then
 * y(M,D) = rmsnorm(residual) * w(D). x may be NULL (no add: plain norm of the
 * residual). y must not alias residual or x. */
int sl_backend_add_rmsnorm(sl_backend_t *be, float *y, float *residual, const float *x,
                           const float *w, uint32_t M, uint32_t D, float eps);

/* Rotary embedding in place, Hugging Face Llama ("neox", rotate_half) style:
 * x(T, n_heads, head_dim); for each row t at position pos[t] (host) and each
 * i < rot_dim/2, with a = pos[t] * inv_freq[i] (inv_freq host, (rot_dim/2)):
 *   x0 = x[i], x1 = x[i + rot_dim/2]
 *   x[i] = x0 cos a - x1 sin a;  x[i + rot_dim/2] = x1 cos a + x0 sin a
 * Dimensions [rot_dim, head_dim) are left as they are (partial rotary).
 * rot_dim is even, 2 <= rot_dim <= head_dim. inv_freq carries any rope
 * scaling (llama3 etc.): that is the model's business. The angle is the f32
 * product pos * inv_freq[i], as Hugging Face computes it, so long positions
 * round the same way; its cos and sin are taken in double. */
int sl_backend_rope(sl_backend_t *be, float *x, const uint32_t *pos, const float *inv_freq,
                    uint32_t T, uint32_t n_heads, uint32_t head_dim, uint32_t rot_dim);

/* y(M,n) = silu(gate) * up, silu(g) = g / (1 + exp(-g)). Row m of gate and
 * up starts at m * in_stride (in_stride >= n), so a fused gate|up matmul
 * output (M, 2n) works with gate = buf, up = buf + n, in_stride = 2n.
 * y may equal gate when in_stride == n. */
int sl_backend_silu_mul(sl_backend_t *be, float *y, const float *gate, const float *up, uint32_t M,
                        uint32_t n, uint32_t in_stride);

/* y(n) = a(n) + b(n). y may equal a or b. */
int sl_backend_add(sl_backend_t *be, float *y, const float *a, const float *b, size_t n);

/* In place over each row of x(M,n), numerically stable (max subtracted). */
int sl_backend_softmax(sl_backend_t *be, float *x, uint32_t M, uint32_t n);
/* x = x - logsumexp(x), per row of x(M,n). -Inf entries stay -Inf. */
int sl_backend_log_softmax(sl_backend_t *be, float *x, uint32_t M, uint32_t n);
/* out(M) (host) = index of the largest value in each row of x(M,n); ties go
 * to the lowest index; NaN entries are never chosen unless a row is all NaN
 * (then 0). */
int sl_backend_argmax(sl_backend_t *be, uint32_t *out, const float *x, uint32_t M, uint32_t n);

/* y(T,D) = table(vocab,D)[ids[t]] converted to f32; ids (T) host memory.
 * SL_ERANGE if any id >= vocab (y then unspecified). */
int sl_backend_embed(sl_backend_t *be, float *y, const void *table, sl_dtype_t dt,
                     const uint32_t *ids, uint32_t T, uint32_t D, uint32_t vocab);

/* Stores the step's new K and V rows of one layer into their block slots:
 * k, v (T, n_kv_heads, head_dim), rows ordered as seqs (see sl_attn_seq_t).
 * Converts to kv->dtype. SL_ERANGE if a block table is too short for
 * pos + n_tokens or names a block >= kv->n_blocks; nothing is written then. */
int sl_backend_kv_write(sl_backend_t *be, const sl_kv_layout_t *kv, uint32_t layer,
                        const sl_attn_seq_t *seqs, uint32_t n_seqs, const float *k, const float *v);

/* Paged causal attention of one layer for a batch of sequences:
 * q, out (T, n_heads, head_dim), rows ordered as seqs. Query row i of a
 * sequence sits at position p = pos + i and attends to the stored keys at
 * positions j with j <= p and (window == 0 or p - j < window), read from the
 * sequence's blocks; so kv_write for this step must come first. GQA: query
 * head h uses kv head h / (n_heads / n_kv_heads); n_heads must be a multiple
 * of kv->n_kv_heads. scale <= 0 means 1/sqrt(head_dim). Online softmax in
 * f32 (running max and sum), stable for any logits. out must not alias q.
 * SL_ERANGE as for kv_write. */
int sl_backend_attention(sl_backend_t *be, float *out, const float *q, const sl_kv_layout_t *kv,
                         uint32_t layer, const sl_attn_seq_t *seqs, uint32_t n_seqs,
                         uint32_t n_heads, uint32_t window, float scale);

#endif
