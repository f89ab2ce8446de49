/* model_config.h - Hugging Face config.json / generation_config.json for the
 * Llama family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).
 *
 * Reads the fields the forward pass needs, applies each architecture's
 * defaults the way transformers does, and validates them (known architecture
 * and dtype, sizes in bounds and consistent, supported rope scaling). Errors
 * come with a text naming the file and the field.
 *
 * Ownership: model_config_t is plain data the caller owns; no allocations.
 * Thread-safety: functions are reentrant.
 */
#ifndef SL_ENGINE_MODEL_CONFIG_H
#define SL_ENGINE_MODEL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MODEL_CONFIG_MAX_EOS 8

typedef enum model_arch {
    MODEL_ARCH_LLAMA = 0,
    MODEL_ARCH_MISTRAL,
    MODEL_ARCH_QWEN2,
} model_arch_t;

typedef enum model_dtype {
    MODEL_DTYPE_F32 = 0,
    MODEL_DTYPE_F16,
    MODEL_DTYPE_BF16,
} model_dtype_t;

typedef enum model_rope_scaling {
    MODEL_ROPE_NONE = 0, /* "default" or absent */
    MODEL_ROPE_LINEAR,   /* positions divided by factor */
    MODEL_ROPE_LLAMA3,   /* Llama 3.1 frequency-dependent scaling */
} model_rope_scaling_t;

typedef struct model_config {
    model_arch_t arch;
    model_dtype_t dtype; /* torch_dtype (default float32) */
    uint32_t hidden_size;
    uint32_t intermediate_size;
    uint32_t n_layers;
    uint32_t n_heads;
    uint32_t n_kv_heads;
    uint32_t head_dim; /* config head_dim, else hidden_size / n_heads */
    uint32_t vocab_size;
    uint32_t max_position_embeddings;
    float rms_norm_eps;
    double rope_theta;
    model_rope_scaling_t rope_scaling;
    double rope_factor;             /* linear, llama3 */
    double rope_low_freq_factor;    /* llama3 */
    double rope_high_freq_factor;   /* llama3 */
    uint32_t rope_original_max_pos; /* llama3 original_max_position_embeddings */
    bool tie_word_embeddings;
    bool attention_bias; /* q/k/v (and o for Llama attention_bias) carry bias */
    bool o_bias;         /* o_proj has a bias (Llama attention_bias; not Qwen2) */
    bool mlp_bias;       /* gate/up/down carry bias (Llama mlp_bias) */
    /* Sliding-window attention: a token at position p sees keys at positions
     * (p - sliding_window, p]; 0 = full attention. Layers below
     * swa_first_layer use full attention (Qwen2 max_window_layers). */
    uint32_t sliding_window;
    uint32_t swa_first_layer;
    int64_t bos_token_id; /* -1 if none */
    uint32_t eos_token_ids[MODEL_CONFIG_MAX_EOS];
    uint32_t n_eos;
} model_config_t;

/* Parses config.json text (and generation_config.json text, which may be
 * NULL) into *cfg. Returns 0, or SL_EFORMAT / SL_EUNSUPPORTED with *err_text
 * (malloc'd, caller frees; may be NULL) naming the offending field. */
int model_config_parse(const char *config_json, size_t config_len, const char *gen_json,
                       size_t gen_len, model_config_t *cfg, char **err_text);

/* Reads DIR/config.json and, if present, DIR/generation_config.json. Same
 * returns as model_config_parse, plus SL_ENOTFOUND / SL_EIO for the files. */
int model_config_load(const char *dir, model_config_t *cfg, char **err_text);

/* "llama", "mistral", "qwen2"; "float32", "float16", "bfloat16". */
const char *model_arch_name(model_arch_t arch);
const char *model_dtype_name(model_dtype_t dtype);

/* The RoPE inverse frequencies as transformers computes them (including
 * llama3 scaling), in double precision then rounded to float the way torch
 * does: inv_freq[i] for i < head_dim / 2. out has head_dim / 2 entries. */
void model_config_rope_inv_freq(const model_config_t *cfg, float *out);

#endif
