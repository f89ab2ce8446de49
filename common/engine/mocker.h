/* mocker.h - a weightless sl_forward_t with simulated step time.
 *
 * The mocker plugs in where the model does (forward.h), so the real engine,
 * scheduler, block pool, prefix cache and KV events run unchanged while the
 * forward pass only sleeps for the time a performance model gives:
 *   prefill_s = prefill_a + prefill_b * T + prefill_c * T * ctx
 *               (T: tokens computed in the step, ctx: mean context of them)
 *   decode_s  = decode_d + decode_e * B + decode_g * sum(ctx)
 *               (B: decode rows, sum(ctx): their total context)
 *   step_s    = (prefill_s [if any prefill rows] + decode_s [if any decode
 *               rows]) / speedup
 * The sleep is clock_nanosleep to an absolute deadline, so it does not drift.
 * Logits are one peaked row per wanted token: the argmax is a hash of the last
 * token and its position, so a prompt always yields the same tokens whatever
 * the batch (greedy sampling) and prefix-cache / routing tests are meaningful.
 *
 * Thread-safety: a mocker serves one engine thread; distinct mockers are
 * independent. mocker_params_* are pure.
 */
#ifndef SL_ENGINE_MOCKER_H
#define SL_ENGINE_MOCKER_H

#include "common/engine/forward.h"

#include <stddef.h>
#include <stdint.h>

typedef struct mocker mocker_t;

typedef struct mocker_params {
    double prefill_a, prefill_b, prefill_c; /* seconds, s/token, s/(token*ctx) */
    double decode_d, decode_e, decode_g;    /* seconds, s/row, s/context token */
    double speedup;                         /* > 0; 10 = ten times real time */
} mocker_params_t;

/* Fills *p with the built-in defaults (same as deploy/mocker/default.json). */
void mocker_params_default(mocker_params_t *p);

/* Parses a JSON object of the fields above (all optional, defaulting to
 * mocker_params_default; unknown keys are errors, values must be finite
 * numbers >= 0, speedup > 0). Returns 0, SL_EINVAL (bad JSON or value; the
 * reason is logged) or SL_ENOMEM. */
int mocker_params_parse(const char *json, size_t len, mocker_params_t *p);

/* Reads and parses a file (<= 1 MiB). Returns 0, -errno, SL_ETOOBIG or as
 * mocker_params_parse. */
int mocker_params_load(const char *path, mocker_params_t *p);

/* Modelled real-time seconds (before speedup) of a step. */
double mocker_params_prefill_s(const mocker_params_t *p, double tokens, double ctx);
double mocker_params_decode_s(const mocker_params_t *p, double batch, double sum_ctx);

/* Least-squares fit of three coefficients: y_i ~ k0 + k1*x_i + k2*z_i over n
 * samples (x, z, y: (n) arrays). For prefill pass x = tokens, z = tokens*ctx,
 * y = seconds -> (prefill_a, b, c); for decode x = batch, z = sum ctx ->
 * (decode_d, e, g). Negative coefficients are clamped to 0. Returns 0,
 * SL_EINVAL (n < 3, NULL) or SL_ERANGE (singular system). */
int mocker_params_fit(const double *x, const double *z, const double *y, size_t n, double k[3]);

/* Creates a mocker. params_path NULL = defaults. block_size, n_blocks, vocab
 * must be > 0. Returns 0 and *out (free with mocker_free), or SL_EINVAL /
 * SL_ENOMEM / a load error. */
int mocker_new(const char *params_path, uint32_t block_size, uint32_t n_blocks, uint32_t vocab,
               mocker_t **out);

/* As mocker_new with explicit parameters (copied). */
int mocker_new_params(const mocker_params_t *p, uint32_t block_size, uint32_t n_blocks,
                      uint32_t vocab, mocker_t **out);

/* NULL is a no-op. The sl_forward_t must no longer be in use. */
void mocker_free(mocker_t *m);

/* The forward implementation, owned by m (valid until mocker_free). */
const sl_forward_t *mocker_forward(mocker_t *m);

/* The token the mocker makes most likely after `last` at position pos. */
uint32_t mocker_token_next(const mocker_t *m, uint32_t last, uint32_t pos);

/* Seconds actually slept over all steps, and steps run. */
double mocker_slept_s(const mocker_t *m);
uint64_t mocker_steps(const mocker_t *m);

#endif
