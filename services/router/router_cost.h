/* router_cost.h - picking a worker: the routing cost, modes, tie-breaks,
 * temperature sampling, and the hot-prefix credit that keeps a popular shared
 * prefix from pinning all traffic to one worker.
 *
 * Cost (DESIGN.md "Routing cost", with the hot-prefix credit c in [0, 1]):
 *   cached_w  = d_w + 0.75 h_w + 0.25 k_w
 *   prefill_w = max(n - c * cached_w, 0)
 *   cost_w    = prefill_scale * prefill_w + load_w + n
 * load_w is the predicted active blocks of worker w (active_seqs.h): the full
 * context of every sequence running there, shared prefix counted per sequence.
 * c = 1 / (1 + heat / workers), heat being how many recent requests reached
 * the same deepest cached block (prefix_heat_*): a prefix that many requests
 * share will soon be on every worker, so what one worker saves by holding it
 * now is a one-time warm-up elsewhere, and load decides. See README.md.
 *
 * Decisions are deterministic given a seed (the router derives it from the
 * request id), so router replicas with the same state pick the same worker.
 *
 * Thread-safety: router_cost_* functions are pure apart from the round-robin
 * counter the caller passes; prefix_heat_t is not thread-safe (the router
 * holds its lock).
 */
#ifndef SL_ROUTER_COST_H
#define SL_ROUTER_COST_H

#include <stddef.h>
#include <stdint.h>

typedef enum router_mode {
    ROUTER_MODE_KV = 0,
    ROUTER_MODE_ROUND_ROBIN,
    ROUTER_MODE_RANDOM,
    ROUTER_MODE_LEAST_LOADED,
    ROUTER_MODE_APPROX, /* kv over the router's own decisions (workers without events) */
    ROUTER_MODE_COUNT
} router_mode_t;

/* "kv", "round-robin", "random", "least-loaded", "approx", NULL: index ==
 * router_mode_t (usable as a config enum's choices). */
extern const char *const router_mode_names[];

/* Parses a mode name. Returns 0 and *out, or SL_EINVAL. */
int router_mode_parse(const char *s, router_mode_t *out);

typedef struct router_cost_params {
    double prefill_scale; /* weight of a block to prefill vs a block of load; > 0 */
    double temperature;   /* 0: argmin; > 0: softmax sampling */
} router_cost_params_t;

/* One candidate worker. The caller fills worker_id, the overlap and load;
 * router_cost_select() fills cost. */
typedef struct router_candidate {
    uint64_t worker_id;
    uint32_t device, host, disk; /* overlap in blocks (kv_index.h) */
    double load;                 /* predicted active blocks */
    double cost;
} router_candidate_t;

/* Cost of one candidate for a request of n blocks with prefix credit credit. */
double router_cost_of(const router_cost_params_t *p, uint32_t n, const router_candidate_t *c,
                      double credit);

/* Picks one of cands[0..n) for a request of n_blocks blocks under mode (APPROX
 * behaves as KV: the caller supplies overlaps from its own index). Sets
 * cands[i].cost for every candidate (kv/approx: the cost; least-loaded:
 * the load; others: 0). Ties of cost go to the less loaded worker, then to a
 * choice drawn from seed. round-robin takes *rr (a counter the caller owns)
 * modulo n over the candidates in worker-id order and increments it.
 * Returns 0 and *picked, or SL_EINVAL (no candidates, NULL arguments, bad
 * mode or parameters). */
int router_cost_select(const router_cost_params_t *p, router_mode_t mode, uint32_t n_blocks,
                       double credit, router_candidate_t *cands, size_t n, uint64_t seed,
                       uint64_t *rr, size_t *picked);

/* ---- hot-prefix tracker ------------------------------------------------------ */

typedef struct prefix_heat prefix_heat_t;

/* Creates a tracker with slots entries (rounded up to a power of two; 0: 4096)
 * and the given half-life of a request's contribution (> 0). Returns 0 and
 * *out, or SL_EINVAL / SL_ENOMEM. */
int prefix_heat_new(prefix_heat_t **out, size_t slots, int64_t half_life_ms);
void prefix_heat_free(prefix_heat_t *h);

/* Returns the decayed number of earlier requests that touched key (a sequence
 * hash) and counts this one. Distinct keys sharing a slot evict each other
 * (the tracker forgets, never over-counts). */
double prefix_heat_touch(prefix_heat_t *h, uint64_t key, int64_t now_ms);

/* The decayed count of requests that touched key, without counting one. */
double prefix_heat_peek(const prefix_heat_t *h, uint64_t key, int64_t now_ms);

/* Credit for a prefix with heat heat among workers candidates:
 * 1 / (1 + heat / workers); 1 when workers is 0. */
double prefix_heat_credit(double heat, size_t workers);

#endif
