/* workload.h - what loadgen sends: deterministic prompts and request bodies.
 *
 * Request i's body depends only on (seed, i) and the configuration, never on
 * timing or scheduling, so two runs with one seed send the same requests in the
 * same order. Prompts are words drawn from a built-in list of short common
 * English words that byte-level BPE tokenizers (Llama 3, Qwen2, GPT) encode as
 * one token each with their leading space, so "N words" is roughly N tokens
 * (the chat template adds a few more). A shared-prefix ratio r makes the
 * first round(r * isl) words of each prompt the start of one of K fixed
 * prefixes (chosen per request), so prefix caches see real reuse.
 *
 * Lengths (input words, output tokens) follow a normal or a uniform
 * distribution with the given mean and standard deviation (uniform spans
 * mean +- stddev * sqrt(3)), rounded and clamped to [1, WORKLOAD_MAX_LEN].
 *
 * Thread-safety: a workload_t is read-only after workload_new(), so
 * workload_request_build() may run on several threads; a workload_rng_t
 * belongs to one thread.
 */
#ifndef SL_LOADGEN_WORKLOAD_H
#define SL_LOADGEN_WORKLOAD_H

#include <cjson/cJSON.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WORKLOAD_MAX_LEN 1000000

typedef enum workload_dist {
    WORKLOAD_DIST_NORMAL = 0,
    WORKLOAD_DIST_UNIFORM = 1,
} workload_dist_t;

typedef enum workload_api {
    WORKLOAD_API_CHAT = 0,        /* POST /v1/chat/completions, messages */
    WORKLOAD_API_COMPLETIONS = 1, /* POST /v1/completions, prompt */
} workload_api_t;

typedef struct workload_cfg {
    uint64_t seed;
    workload_api_t api;
    const char *model;      /* sent as "model"; not NULL */
    double isl, isl_stddev; /* input length in words */
    double osl, osl_stddev; /* output tokens: max_tokens */
    workload_dist_t dist;
    double shared_prefix_ratio; /* [0, 1] */
    uint32_t num_prefixes;      /* >= 1 when the ratio is > 0 */
    bool stream;                /* "stream": true plus stream_options.include_usage */
    bool continuous_usage;      /* stream_options.continuous_usage_stats (vLLM) */
    bool min_tokens;            /* "min_tokens" = max_tokens, so outputs hit the length */
    bool ignore_eos;            /* "ignore_eos": true (vLLM, SGLang, TensorRT-LLM) */
    const char *extra_body;     /* JSON object merged into every body (keys override); NULL */
} workload_cfg_t;

typedef struct workload workload_t;

/* One request to send. body and prompt are heap memory owned by the struct. */
typedef struct workload_req {
    char *body; /* JSON, NUL-terminated */
    size_t body_len;
    char *prompt;          /* the prompt text alone (the user message / "prompt"), NUL-terminated:
                              what a direct-to-worker client renders and tokenizes itself */
    uint32_t input_words;  /* prompt length in words (~tokens) */
    uint32_t prefix_words; /* of which shared with other requests */
    uint32_t max_tokens;
} workload_req_t;

/* Validates cfg (ranges, extra_body must parse as a JSON object) and copies
 * what it needs; cfg may be freed afterwards. Returns 0 and *out, or SL_EINVAL
 * / SL_ERANGE with a message in err (may be NULL), or SL_ENOMEM. */
int workload_new(const workload_cfg_t *cfg, workload_t **out, char *err, size_t errlen);
void workload_free(workload_t *w);

/* Builds request number index. Returns 0 or SL_ENOMEM / SL_EINVAL; on success
 * release *out with workload_req_release(). */
int workload_request_build(const workload_t *w, uint64_t index, workload_req_t *out);
void workload_req_release(workload_req_t *r);

/* Adds "messages": [{"role": "user", "content": content}] to root: a
 * single-turn chat prompt, as the request bodies and the NATS driver's
 * template input carry it. Returns 0 or SL_ENOMEM (root may then hold a
 * partial array; the caller deletes root either way). */
int workload_chat_messages_add(cJSON *root, const char *content);

/* ---- deterministic random numbers (splitmix64) --------------------------------------------- */

typedef struct workload_rng {
    uint64_t s;
} workload_rng_t;

/* Seeds a stream; distinct (seed, stream) pairs give independent sequences. */
void workload_rng_seed(workload_rng_t *r, uint64_t seed, uint64_t stream);
uint64_t workload_rng_u64(workload_rng_t *r);
/* Uniform in [0, 1). */
double workload_rng_unit(workload_rng_t *r);
/* Standard normal (Box-Muller). */
double workload_rng_normal(workload_rng_t *r);
/* Exponential with the given rate (> 0): Poisson inter-arrival times. */
double workload_rng_exp(workload_rng_t *r, double rate);

/* Draws a length from the distribution, clamped to [1, WORKLOAD_MAX_LEN]. */
uint32_t workload_length_sample(workload_rng_t *r, workload_dist_t dist, double mean,
                                double stddev);

#endif
