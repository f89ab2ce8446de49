/* sampling.h - turning one row of logits into the next token.
 *
 * Semantics follow vLLM / OpenAI, applied in this order:
 *   1. repetition_penalty r (1 or 0 = off), over tokens seen in the prompt or
 *      the output: logit > 0 ? logit / r : logit * r;
 *   2. frequency_penalty f and presence_penalty p, over output tokens only:
 *      logit -= f * count(token) + p * (count(token) > 0);
 *   3. temperature T: 0 (or < 1e-5) is greedy (argmax, lowest id on ties);
 *      else logits / T and a softmax;
 *   4. min_p m (0 = off): drop tokens whose probability < m * max probability;
 *   5. top_k k (<= 0 = off): keep tokens whose logit >= the k-th largest (ties
 *      at the boundary are kept);
 *   6. top_p q (0 or >= 1 = off): keep a token if the total probability of
 *      the tokens strictly more likely than it is < q (so the most likely
 *      token always stays); probabilities are those after steps 3-5;
 *   7. draw one token from what is left, renormalized, with the request's
 *      PRNG (xoshiro256**, seeded by splitmix64 from the request seed).
 * Logprobs (chosen and top-n) are log-softmax of the raw logits as the model
 * produced them, before penalties and temperature (vLLM's default
 * "raw_logprobs").
 *
 * Thread-safety: a sampler_t is owned by one thread; distinct samplers and
 * RNGs may be used concurrently. A draw depends only on its inputs (params,
 * logits, history, rng), never on the sampler's earlier calls, so the engine
 * samples the rows of a step on several threads, each with its own sampler,
 * and gets the same tokens on any number of threads.
 */
#ifndef SL_ENGINE_SAMPLING_H
#define SL_ENGINE_SAMPLING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SAMPLING_MAX_TOP_LOGPROBS 20

typedef struct sampling_params {
    float temperature; /* 0 = greedy */
    float top_p;       /* 0 or >= 1 = off */
    int32_t top_k;     /* <= 0 = off */
    float min_p;       /* 0 = off */
    float presence_penalty;
    float frequency_penalty;
    float repetition_penalty; /* 0 or 1 = off */
    bool has_seed;
    uint64_t seed;
    bool logprobs;         /* report the chosen token's logprob */
    uint32_t top_logprobs; /* alternatives per position, <= SAMPLING_MAX_TOP_LOGPROBS */
} sampling_params_t;

/* xoshiro256** state; one per request for reproducibility. */
typedef struct sampling_rng {
    uint64_t s[4];
} sampling_rng_t;

typedef struct sampling_logprob {
    uint32_t token;
    float logprob;
} sampling_logprob_t;

typedef struct sampling_result {
    uint32_t token;
    float logprob; /* of token under the raw distribution; 0 unless asked */
    uint32_t n_top;
    sampling_logprob_t top[SAMPLING_MAX_TOP_LOGPROBS]; /* most likely first */
} sampling_result_t;

typedef struct sampler sampler_t;

/* Checks ranges: temperature >= 0, 0 <= top_p, 0 <= min_p <= 1,
 * repetition_penalty >= 0, penalties finite, top_logprobs <= max. Returns 0
 * or SL_EINVAL. */
int sampling_params_validate(const sampling_params_t *p);

/* Seeds rng from seed (splitmix64 expansion). */
void sampling_rng_seed(sampling_rng_t *rng, uint64_t seed);

/* Next 64 random bits / a double uniform in [0, 1). */
uint64_t sampling_rng_next(sampling_rng_t *rng);
double sampling_rng_uniform(sampling_rng_t *rng);

/* The index of the largest non-NaN value of x[0, n) (the lowest on ties;
 * -0 and +0 tie), 0 when all are NaN or n is 0: the greedy choice. Vectorized
 * where the CPU allows, with the same result as the plain loop. Thread-safe. */
uint32_t sampling_argmax(const float *x, uint32_t n);

/* Creates a sampler with scratch space for vocab_size (> 0) tokens. NULL on
 * failure. Free with sampler_free() (NULL is a no-op). */
sampler_t *sampler_new(uint32_t vocab_size);
void sampler_free(sampler_t *s);

/* Samples one token from logits (vocab_size floats; modified in place: they
 * hold the processed logits afterwards). history[0, n_history) are the
 * request's tokens, of which the first n_prompt are the prompt and the rest
 * its output (for penalties; ids >= vocab_size are ignored). rng may be NULL
 * for greedy. Returns 0 and fills *out, or SL_EINVAL on bad params. */
int sampler_sample(sampler_t *s, const sampling_params_t *p, float *logits, const uint32_t *history,
                   size_t n_history, size_t n_prompt, sampling_rng_t *rng, sampling_result_t *out);

/* For tests: writes to keep[0, vocab) whether each token survives steps 1-6
 * (greedy keeps exactly the argmax) and its probability in probs (may be NULL;
 * 0 for dropped tokens, renormalized over kept ones). logits is modified as in
 * sampler_sample(). Returns the number kept, or a negative SL_E* code. */
int sampler_mask(sampler_t *s, const sampling_params_t *p, float *logits, const uint32_t *history,
                 size_t n_history, size_t n_prompt, bool *keep, double *probs);

#endif
