/* model_host.c - model or mocker loading shared by the workers (see
 * model_host.h). */
#include "services/decode-worker/model_host.h"
#include "common/base/err.h"
#include "common/base/log.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const worker_engine_names[] = {"model", "mocker", NULL};

static void model_host_eos_merge(model_host_t *w, const model_config_t *mc) {
    for (uint32_t i = 0; i < mc->n_eos && w->n_eos < MODEL_CONFIG_MAX_EOS; i++)
        w->eos[w->n_eos++] = mc->eos_token_ids[i];
    int32_t te = sl_tokenizer_eos_id(w->tok);
    bool have = false;
    for (uint32_t i = 0; i < w->n_eos; i++) have |= te >= 0 && w->eos[i] == (uint32_t)te;
    if (te >= 0 && !have) w->eos[w->n_eos++] = (uint32_t)te;
}

/* The mocker: config.json gives vocabulary, context and EOS; no weights. */
static int model_host_mocker_open(model_host_t *w, const worker_cfg_t *cfg, char *why,
                                  size_t why_len) {
    model_config_t mc;
    char *err = NULL;
    int rc = model_config_load(cfg->model, &mc, &err);
    if (rc) {
        snprintf(why, why_len, "cannot read the config in %s: %s", cfg->model,
                 err ? err : sl_strerror(rc));
        free(err);
        return rc;
    }
    uint32_t nb = cfg->kv_blocks ? (uint32_t)cfg->kv_blocks : WORKER_MOCKER_BLOCKS;
    rc = mocker_new(cfg->mocker_params, (uint32_t)cfg->block_size, nb, mc.vocab_size, &w->mocker);
    if (rc) {
        snprintf(why, why_len, "cannot create the mocker%s%s: %s",
                 cfg->mocker_params ? " from " : "", cfg->mocker_params ? cfg->mocker_params : "",
                 sl_strerror(rc));
        return rc;
    }
    w->vocab_size = mc.vocab_size;
    w->block_size = (uint32_t)cfg->block_size;
    w->n_blocks = nb;
    w->model_context = mc.max_position_embeddings;
    uint64_t pool_tokens = (uint64_t)nb * w->block_size;
    w->max_context = w->model_context && w->model_context < pool_tokens
                         ? w->model_context
                         : (uint32_t)(pool_tokens < UINT32_MAX ? pool_tokens : UINT32_MAX);
    model_host_eos_merge(w, &mc);
    LOG_INFO("mocker for %s: vocab %u, context %u, %u KV blocks of %u tokens", cfg->model,
             w->vocab_size, w->max_context, nb, w->block_size);
    return 0;
}

int model_host_open(model_host_t *w, const worker_cfg_t *cfg, char *why, size_t why_len) {
    memset(w, 0, sizeof *w);
    char *err = NULL;
    int rc = sl_tokenizer_load(cfg->model, &w->tok);
    if (rc) {
        snprintf(why, why_len, "cannot load the tokenizer in %s: %s", cfg->model, sl_strerror(rc));
        return rc;
    }
    if (cfg->kv_memory_mb > SIZE_MAX >> 20) return SL_ERANGE;
    if (cfg->engine == WORKER_ENGINE_MOCKER) return model_host_mocker_open(w, cfg, why, why_len);
    model_opts_t mo = {.backend_name = cfg->backend,
                       .n_threads = (int)cfg->threads,
                       .block_size = (uint32_t)cfg->block_size,
                       .n_blocks = (uint32_t)cfg->kv_blocks,
                       .kv_bytes = (size_t)cfg->kv_memory_mb << 20};
    rc = model_load(cfg->model, &mo, &w->model, &err);
    if (rc) {
        snprintf(why, why_len, "cannot load %s: %s", cfg->model, err ? err : sl_strerror(rc));
        free(err);
        return rc;
    }
    const model_info_t *mi = model_info(w->model);
    w->vocab_size = mi->vocab_size;
    w->block_size = mi->block_size;
    w->n_blocks = mi->n_blocks;
    w->model_context = mi->context_length;
    uint64_t pool_tokens = (uint64_t)mi->n_blocks * mi->block_size;
    w->max_context = mi->context_length && mi->context_length < pool_tokens
                         ? mi->context_length
                         : (uint32_t)(pool_tokens < UINT32_MAX ? pool_tokens : UINT32_MAX);
    model_host_eos_merge(w, &mi->config);
    LOG_INFO("loaded %s: %s %s, %u layers, vocab %u, context %u, %u KV blocks of %u tokens",
             cfg->model, model_arch_name(mi->config.arch), sl_dtype_name(mi->weight_dtype),
             mi->n_layers, mi->vocab_size, w->max_context, mi->n_blocks, mi->block_size);
    return 0;
}

const sl_forward_t *model_host_forward(const model_host_t *h) {
    return h->mocker ? mocker_forward(h->mocker) : model_forward(h->model);
}

void model_host_close(model_host_t *h) {
    if (!h) return;
    model_free(h->model);
    mocker_free(h->mocker);
    sl_tokenizer_free(h->tok);
    h->model = NULL;
    h->mocker = NULL;
    h->tok = NULL;
}
