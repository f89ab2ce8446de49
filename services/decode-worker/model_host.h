/* model_host.h - the model a worker serves: Hugging Face weights (model.h)
 * or the mocker (mocker.h), its tokenizer, and the geometry the rest of the
 * worker announces (vocabulary, block size and count, context, EOS ids).
 *
 * Shared by sluice-decode-worker and sluice-prefill-worker (which links this
 * service library), so both load a model the same way from the same flags.
 *
 * Ownership: model_host_open() fills a caller-owned struct; model_host_close()
 * frees what it holds (safe on a zeroed or half-opened struct).
 * Thread-safety: the forward pass belongs to the engine thread; the tokenizer
 * is thread-safe.
 */
#ifndef SL_DECODE_WORKER_MODEL_HOST_H
#define SL_DECODE_WORKER_MODEL_HOST_H

#include "common/engine/forward.h"
#include "common/engine/mocker.h"
#include "common/engine/model.h"
#include "common/engine/tokenizer.h"
#include "services/decode-worker/worker.h"

#include <stddef.h>
#include <stdint.h>

#define WORKER_ENGINE_MOCKER 1
#define WORKER_MOCKER_BLOCKS 16384 /* --kv-blocks 0 with the mocker */

typedef struct model_host {
    model_t *model;
    mocker_t *mocker; /* --engine mocker: instead of model */
    sl_tokenizer_t *tok;
    uint32_t vocab_size, block_size, n_blocks;
    uint32_t max_context;   /* what a prompt must stay below: min(model, pool) */
    uint32_t model_context; /* the model's own */
    uint32_t eos[MODEL_CONFIG_MAX_EOS + 1], n_eos;
} model_host_t;

/* Loads the tokenizer and the model (or mocker) named by cfg (--model,
 * --engine, --backend, --kv-blocks, --kv-memory-mb, --block-size,
 * --threads). Returns 0, or a negative SL_E* code with a reason in why:
 * SL_ENOTFOUND / SL_EFORMAT / SL_EUNSUPPORTED / SL_ERANGE / SL_ENOMEM. */
int model_host_open(model_host_t *h, const worker_cfg_t *cfg, char *why, size_t why_len);

/* The forward pass (borrowed; valid until model_host_close). Its kv_base is
 * NULL for the mocker. */
const sl_forward_t *model_host_forward(const model_host_t *h);

void model_host_close(model_host_t *h);

#endif
