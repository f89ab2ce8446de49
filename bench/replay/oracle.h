/* oracle.h - the prefix-cache hit rate an ideal router would reach on a trace.
 *
 * Simulation, no servers: `workers` caches of `capacity` KV blocks each, LRU.
 * Requests arrive in trace order; each goes to the worker holding the
 * longest cached prefix of its blocks (perfect, instant knowledge of every
 * cache), ties to the worker chosen longest ago; its hit is that prefix,
 * capped as the engine caps it (at least the prompt's last token is
 * computed: at most (tokens - 1) / block_size blocks); then all its full
 * blocks are touched on that worker (inserted or moved to the front, the
 * least recently used evicted beyond capacity). Load, queueing and blocks
 * pinned by running sequences are ignored: it is the cache's bound, not a
 * router. Also computed: the unbounded hit rate (every block ever computed
 * anywhere counts as cached everywhere, infinite capacity), the trace's own
 * ceiling.
 *
 * Hit rates are cached prompt tokens / prompt tokens, as the engine reports
 * cached_tokens, so they compare with a replay's measured rate.
 *
 * Thread-safety: oracle_run is reentrant.
 */
#ifndef SL_REPLAY_ORACLE_H
#define SL_REPLAY_ORACLE_H

#include "bench/replay/trace.h"

#include <stdint.h>

typedef struct oracle_cfg {
    uint32_t workers;         /* >= 1 */
    uint32_t capacity;        /* blocks per worker, >= 1 */
    uint32_t block_size;      /* tokens per block, >= 1 */
    uint32_t tokens_per_hash; /* multiple of block_size, <= 512 */
} oracle_cfg_t;

typedef struct oracle_result {
    uint64_t prompt_tokens;    /* over all requests */
    uint64_t cached_tokens;    /* ideal routing, bounded LRU caches */
    uint64_t unbounded_tokens; /* infinite shared cache */
    double hit_rate;           /* cached / prompt */
    double unbounded_hit_rate; /* unbounded / prompt */
} oracle_result_t;

/* Runs the simulation over the first n requests of t (n <= t->n). Returns 0,
 * SL_EINVAL (bad cfg) or SL_ENOMEM. */
int oracle_run(const trace_t *t, size_t n, const oracle_cfg_t *cfg, oracle_result_t *out);

#endif
