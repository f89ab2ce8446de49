/* router_cost.c - worker selection and the hot-prefix tracker (router_cost.h). */
#include "services/router/router_cost.h"
#include "common/base/err.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *const router_mode_names[] = {"kv",           "round-robin", "random",
                                         "least-loaded", "approx",      NULL};

int router_mode_parse(const char *s, router_mode_t *out) {
    if (!s || !out) return SL_EINVAL;
    for (int i = 0; i < ROUTER_MODE_COUNT; i++)
        if (!strcasecmp(s, router_mode_names[i])) {
            *out = (router_mode_t)i;
            return 0;
        }
    return SL_EINVAL;
}

/* splitmix64: a small deterministic generator for tie-breaks and sampling. */
static uint64_t mix_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double mix_unit(uint64_t *s) {
    return (double)(mix_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

double router_cost_of(const router_cost_params_t *p, uint32_t n, const router_candidate_t *c,
                      double credit) {
    double cached = (double)c->device + 0.75 * (double)c->host + 0.25 * (double)c->disk;
    double prefill = (double)n - credit * cached;
    if (prefill < 0) prefill = 0;
    return p->prefill_scale * prefill + c->load + (double)n;
}

/* Among candidates whose key (cost or load) is within eps of the minimum,
 * the lowest load wins, then a seeded random choice. */
static size_t pick_min(router_candidate_t *c, size_t n, bool by_cost, uint64_t *rng) {
    double best = INFINITY;
    for (size_t i = 0; i < n; i++) {
        double k = by_cost ? c[i].cost : c[i].load;
        if (k < best) best = k;
    }
    double eps = 1e-9 * (fabs(best) + 1);
    double best_load = INFINITY;
    for (size_t i = 0; i < n; i++) {
        double k = by_cost ? c[i].cost : c[i].load;
        if (k <= best + eps && c[i].load < best_load) best_load = c[i].load;
    }
    double leps = 1e-9 * (fabs(best_load) + 1);
    size_t ties = 0, pick = 0;
    for (size_t i = 0; i < n; i++) {
        double k = by_cost ? c[i].cost : c[i].load;
        if (k <= best + eps && c[i].load <= best_load + leps) ties++;
    }
    size_t want = (size_t)(mix_next(rng) % ties);
    for (size_t i = 0; i < n; i++) {
        double k = by_cost ? c[i].cost : c[i].load;
        if (k <= best + eps && c[i].load <= best_load + leps) {
            if (want == 0) {
                pick = i;
                break;
            }
            want--;
        }
    }
    return pick;
}

int router_cost_select(const router_cost_params_t *p, router_mode_t mode, uint32_t n_blocks,
                       double credit, router_candidate_t *cands, size_t n, uint64_t seed,
                       uint64_t *rr, size_t *picked) {
    if (!p || !cands || !n || !picked || !(p->prefill_scale > 0) || !(p->temperature >= 0) ||
        !isfinite(p->temperature) || !(credit >= 0 && credit <= 1))
        return SL_EINVAL;
    uint64_t rng = seed;
    switch (mode) {
    case ROUTER_MODE_ROUND_ROBIN: {
        if (!rr) return SL_EINVAL;
        /* k-th smallest worker id, k = counter mod n (independent of order). */
        size_t k = (size_t)(*rr % n);
        (*rr)++;
        for (size_t i = 0; i < n; i++) {
            cands[i].cost = 0;
            size_t below = 0;
            for (size_t j = 0; j < n; j++) below += cands[j].worker_id < cands[i].worker_id;
            if (below == k) *picked = i;
        }
        return 0;
    }
    case ROUTER_MODE_RANDOM:
        for (size_t i = 0; i < n; i++) cands[i].cost = 0;
        *picked = (size_t)(mix_next(&rng) % n);
        return 0;
    case ROUTER_MODE_LEAST_LOADED:
        for (size_t i = 0; i < n; i++) cands[i].cost = cands[i].load;
        *picked = pick_min(cands, n, false, &rng);
        return 0;
    case ROUTER_MODE_KV:
    case ROUTER_MODE_APPROX:
        break;
    default:
        return SL_EINVAL;
    }
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        cands[i].cost = router_cost_of(p, n_blocks, &cands[i], credit);
        if (cands[i].cost < lo) lo = cands[i].cost;
        if (cands[i].cost > hi) hi = cands[i].cost;
    }
    if (p->temperature == 0 || hi - lo <= 1e-9 * (fabs(lo) + 1)) {
        *picked = pick_min(cands, n, true, &rng);
        return 0;
    }
    /* softmax(-cost / ((max - min) T)); subtracting lo keeps exp() in range. */
    double scale = (hi - lo) * p->temperature, sum = 0;
    for (size_t i = 0; i < n; i++) sum += exp(-(cands[i].cost - lo) / scale);
    double u = mix_unit(&rng) * sum, acc = 0;
    *picked = n - 1;
    for (size_t i = 0; i < n; i++) {
        acc += exp(-(cands[i].cost - lo) / scale);
        if (u < acc) {
            *picked = i;
            break;
        }
    }
    return 0;
}

/* ---- hot-prefix tracker ------------------------------------------------------ */

typedef struct heat_slot {
    uint64_t key;
    double count; /* decayed to at_ms */
    int64_t at_ms;
    int used;
} heat_slot_t;

struct prefix_heat {
    heat_slot_t *slots; /* (cap) */
    size_t cap;
    double half_life_ms;
};

int prefix_heat_new(prefix_heat_t **out, size_t slots, int64_t half_life_ms) {
    int rc = SL_EINVAL;
    prefix_heat_t *h = NULL;
    if (!out || half_life_ms <= 0 || slots > ((size_t)1 << 24)) goto out;
    *out = NULL;
    rc = SL_ENOMEM;
    if (!(h = calloc(1, sizeof *h))) goto out;
    h->cap = 1;
    while (h->cap < (slots ? slots : 4096)) h->cap *= 2;
    if (!(h->slots = calloc(h->cap, sizeof *h->slots))) goto out;
    h->half_life_ms = (double)half_life_ms;
    *out = h;
    h = NULL;
    rc = 0;
out:
    prefix_heat_free(h);
    return rc;
}

void prefix_heat_free(prefix_heat_t *h) {
    if (!h) return;
    free(h->slots);
    free(h);
}

double prefix_heat_peek(const prefix_heat_t *h, uint64_t key, int64_t now_ms) {
    if (!h) return 0;
    const heat_slot_t *s = &h->slots[(size_t)((key * 0x9E3779B97F4A7C15ull) >> 40) & (h->cap - 1)];
    if (!s->used || s->key != key) return 0;
    double dt = (double)(now_ms - s->at_ms);
    return dt > 0 ? s->count * exp2(-dt / h->half_life_ms) : s->count;
}

double prefix_heat_touch(prefix_heat_t *h, uint64_t key, int64_t now_ms) {
    if (!h) return 0;
    heat_slot_t *s = &h->slots[(size_t)((key * 0x9E3779B97F4A7C15ull) >> 40) & (h->cap - 1)];
    double before = 0;
    bool same = s->used && s->key == key;
    if (same) {
        double dt = (double)(now_ms - s->at_ms);
        before = dt > 0 ? s->count * exp2(-dt / h->half_life_ms) : s->count;
    }
    s->used = 1;
    s->key = key;
    s->count = before + 1;
    s->at_ms = (same && now_ms < s->at_ms) ? s->at_ms : now_ms;
    return before;
}

double prefix_heat_credit(double heat, size_t workers) {
    if (!workers || !(heat > 0)) return 1.0;
    return 1.0 / (1.0 + heat / (double)workers);
}
