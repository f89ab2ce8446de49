/* model.h - a Llama-family model (Llama, Mistral, Qwen2) loaded from a Hugging
 * Face directory, computing forward steps over the paged KV cache.
 *
 * model_load() reads config.json (+ generation_config.json), maps the
 * safetensors weights and checks every tensor's presence, dtype and shape
 * against the config, then allocates the KV memory with the layout of
 * common/engine/forward.h. Weights are used in place from the mapping when
 * the backend works on host memory (f32, f16 and bf16 alike: the backend's
 * matmul reads them as stored); only norm weights and biases of f16/bf16
 * models are converted to small f32 copies.
 *
 * The step (model_forward(m)->step) runs all tokens of a batch through the
 * GEMMs together, prefill chunks and decode rows mixed:
 *   embed -> L x [RMSNorm, q/k/v proj (+bias), RoPE (HF inv_freq incl. llama3),
 *   KV write into blocks, paged GQA attention (sliding window where the config
 *   asks), o_proj + residual, RMSNorm, SiLU(gate) * up, down_proj + residual]
 *   -> final RMSNorm -> lm_head (tied or not), only for rows that want logits.
 * KV elements are f32: block = [layer][k|v][kv_head][token][head_dim].
 *
 * Ownership: model_load() returns a model the caller frees with model_free();
 * the forward handle and info pointer live as long as the model. A borrowed
 * backend (opts->backend) must outlive the model.
 * Thread-safety: one step at a time per model (the engine loop owns it);
 * model_info() may be read from any thread.
 */
#ifndef SL_ENGINE_MODEL_H
#define SL_ENGINE_MODEL_H

#include "common/engine/forward.h"
#include "common/engine/model_config.h"
#include "kernels/backend.h"

#include <stddef.h>
#include <stdint.h>

typedef struct model model_t;

typedef struct model_opts {
    sl_backend_t *backend;    /* borrowed; NULL: the model creates its own */
    const char *backend_name; /* when backend is NULL: "cpu" (default), "cuda", "auto" */
    int n_threads;            /* for a backend the model creates; 0 = default */
    uint32_t block_size;      /* tokens per KV block; 0 = 16 */
    uint32_t n_blocks;        /* KV blocks; 0 = as many as kv_bytes holds */
    size_t kv_bytes;          /* KV memory when n_blocks is 0; 0 = 256 MiB */
    /* Host backends only, optional: the KV memory comes from the caller, e.g.
     * a pool UCX allocated for peers to write into. Called once with the
     * geometry; returns n_blocks * block_bytes bytes (NULL: SL_ENOMEM) that
     * stay valid until model_free, which does not free them. */
    void *(*kv_alloc)(void *ud, size_t block_bytes, uint32_t n_blocks);
    void *kv_alloc_ud;
} model_opts_t;

typedef struct model_info {
    model_config_t config; /* architecture, sizes, eos/bos ids, context length */
    uint32_t vocab_size;
    uint32_t n_layers;
    uint32_t context_length; /* max_position_embeddings: positions must stay below */
    uint32_t block_size;
    uint32_t n_blocks;
    size_t block_bytes;
    size_t weight_bytes;     /* bytes of weights mapped */
    sl_dtype_t weight_dtype; /* dtype of the embedding table (the model's dtype) */
} model_info_t;

/* Loads the model in dir. opts may be NULL (defaults). Returns 0 and *out, or
 * SL_ENOTFOUND / SL_EFORMAT / SL_EUNSUPPORTED / SL_ENOMEM / SL_EIO with
 * *err_text (malloc'd, caller frees; err_text may be NULL) naming the file
 * and tensor or field at fault. */
int model_load(const char *dir, const model_opts_t *opts, model_t **out, char **err_text);

/* Frees the model, its KV memory, scratch buffers and mappings (and the
 * backend if the model created it). NULL is a no-op. */
void model_free(model_t *m);

/* The forward implementation for the scheduler. Its step() validates the
 * batch (token ids < vocab, positions < context length, block tables long
 * enough, block ids < n_blocks, at least one token where logits are wanted)
 * and returns SL_EINVAL / SL_ERANGE without touching KV otherwise. */
sl_forward_t *model_forward(model_t *m);

const model_info_t *model_info(const model_t *m);

/* The backend the model computes on (borrowed). */
sl_backend_t *model_backend(model_t *m);

#endif
