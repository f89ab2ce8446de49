/* scheduler.c - continuous batching, chunked prefill, prefix reuse and
 * preemption by recompute (see scheduler.h). */
#include "common/engine/scheduler.h"

#include "common/base/block_hash.h"
#include "common/base/err.h"

#include <stdlib.h>
#include <string.h>

struct sched_seq {
    uint32_t *tokens; /* (cap) prompt then output */
    uint32_t n_tokens, cap, n_prompt;
    uint32_t n_computed; /* KV of tokens[0, n_computed) is in blocks */
    uint32_t *blocks;    /* (cap / block_size + 1) block table */
    uint32_t n_blocks;
    uint64_t *bhash;      /* (cap / block_size + 1) block hashes of full blocks */
    uint64_t *shash;      /* (cap / block_size + 1) sequence hashes */
    uint32_t n_hashed;    /* leading full blocks whose hashes are computed */
    uint32_t n_committed; /* leading blocks registered (or found) in the pool */
    uint32_t cached_tokens;
    uint32_t preemptions;
    bool admitted_once, running, scheduled, parked;
    uint32_t chunk; /* tokens scheduled in the current step */
    void *ud;
};

struct sched {
    kvpool_t *pool;
    sched_opts_t o;
    uint32_t bs;
    sched_seq_t **running; /* (n_running) oldest first */
    uint32_t n_running, cap_running;
    sched_seq_t **waiting; /* (n_waiting) next to admit first */
    uint32_t n_waiting, cap_waiting;
    sched_seq_t **parked; /* (n_parked) hold blocks, never scheduled or preempted */
    uint32_t n_parked, cap_parked;
    sl_fwd_seq_t *fwd;   /* (cap_plan) */
    sched_seq_t **pseqs; /* (cap_plan) */
    uint32_t cap_plan;
    uint64_t preemptions, steps;
};

static uint32_t ceil_div(uint32_t a, uint32_t b) {
    return a / b + (a % b != 0);
}

static int vec_reserve(sched_seq_t ***v, uint32_t *cap, uint32_t need) {
    if (need <= *cap) return 0;
    uint32_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    sched_seq_t **nv = realloc(*v, (size_t)c * sizeof *nv);
    if (!nv) return SL_ENOMEM;
    *v = nv;
    *cap = c;
    return 0;
}

sched_t *sched_new(kvpool_t *pool, const sched_opts_t *opts) {
    sched_t *s = NULL;
    if (!pool) goto fail;
    s = calloc(1, sizeof *s);
    if (!s) goto fail;
    s->pool = pool;
    if (opts) s->o = *opts;
    s->bs = kvpool_block_size(pool);
    if (!s->o.max_batch_tokens) s->o.max_batch_tokens = 512;
    if (!s->o.max_seqs) s->o.max_seqs = 256;
    uint64_t pool_tokens = (uint64_t)kvpool_n_blocks(pool) * s->bs;
    if (pool_tokens > UINT32_MAX / 2) pool_tokens = UINT32_MAX / 2;
    if (!s->o.max_context || s->o.max_context > pool_tokens)
        s->o.max_context = (uint32_t)pool_tokens;
    return s;
fail:
    sched_free(s);
    return NULL;
}

static void seq_release_blocks(sched_t *s, sched_seq_t *q) {
    /* Tail first: the LRU then evicts a sequence's last blocks before its
     * first ones, which more requests share. */
    for (uint32_t i = q->n_blocks; i > 0; i--) kvpool_blocks_release(s->pool, &q->blocks[i - 1], 1);
    q->n_blocks = 0;
}

static void seq_destroy(sched_seq_t *q) {
    if (!q) return;
    free(q->tokens);
    free(q->blocks);
    free(q->bhash);
    free(q->shash);
    free(q);
}

void sched_free(sched_t *s) {
    if (!s) return;
    for (uint32_t i = 0; i < s->n_running; i++) {
        seq_release_blocks(s, s->running[i]);
        seq_destroy(s->running[i]);
    }
    for (uint32_t i = 0; i < s->n_waiting; i++) seq_destroy(s->waiting[i]);
    for (uint32_t i = 0; i < s->n_parked; i++) {
        seq_release_blocks(s, s->parked[i]);
        seq_destroy(s->parked[i]);
    }
    free(s->running);
    free(s->waiting);
    free(s->parked);
    free(s->fwd);
    free(s->pseqs);
    free(s);
}

uint32_t sched_max_context(const sched_t *s) {
    return s->o.max_context;
}

/* Grows a sequence's arrays to hold `need` tokens. */
static int seq_reserve(sched_t *s, sched_seq_t *q, uint32_t need) {
    if (need <= q->cap) return 0;
    uint32_t c = q->cap ? q->cap : 64;
    while (c < need) c = c > UINT32_MAX / 2 ? need : c * 2;
    size_t nb = (size_t)c / s->bs + 2;
    uint32_t *t = realloc(q->tokens, (size_t)c * sizeof *t);
    if (!t) return SL_ENOMEM;
    q->tokens = t;
    uint32_t *b = realloc(q->blocks, nb * sizeof *b);
    if (!b) return SL_ENOMEM;
    q->blocks = b;
    uint64_t *bh = realloc(q->bhash, nb * sizeof *bh);
    if (!bh) return SL_ENOMEM;
    q->bhash = bh;
    uint64_t *sh = realloc(q->shash, nb * sizeof *sh);
    if (!sh) return SL_ENOMEM;
    q->shash = sh;
    q->cap = c;
    return 0;
}

int sched_seq_add(sched_t *s, const uint32_t *prompt, uint32_t n, void *ud, sched_seq_t **out) {
    int rc = 0;
    sched_seq_t *q = NULL;
    if (!s || !prompt || n == 0 || !out) {
        rc = SL_EINVAL;
        goto out;
    }
    if (n >= s->o.max_context) {
        rc = SL_ERANGE;
        goto out;
    }
    q = calloc(1, sizeof *q);
    if (!q) {
        rc = SL_ENOMEM;
        goto out;
    }
    rc = seq_reserve(s, q, n + 1);
    if (rc) goto out;
    /* Both queues can hold every sequence, so moving one between them
     * (admission, preemption) never allocates. */
    uint32_t total = s->n_running + s->n_waiting + s->n_parked + 1;
    rc = vec_reserve(&s->waiting, &s->cap_waiting, total);
    if (rc) goto out;
    rc = vec_reserve(&s->running, &s->cap_running, total);
    if (rc) goto out;
    rc = vec_reserve(&s->parked, &s->cap_parked, total);
    if (rc) goto out;
    memcpy(q->tokens, prompt, (size_t)n * sizeof *prompt);
    q->n_tokens = q->n_prompt = n;
    q->ud = ud;
    s->waiting[s->n_waiting++] = q;
    *out = q;
    q = NULL;
out:
    seq_destroy(q);
    return rc;
}

int sched_seq_append(sched_t *s, sched_seq_t *q, uint32_t token) {
    if (q->n_tokens >= s->o.max_context) return SL_ERANGE;
    int rc = seq_reserve(s, q, q->n_tokens + 1);
    if (rc) return rc;
    q->tokens[q->n_tokens++] = token;
    return 0;
}

static void vec_remove(sched_seq_t **v, uint32_t *n, sched_seq_t *q) {
    for (uint32_t i = 0; i < *n; i++)
        if (v[i] == q) {
            memmove(&v[i], &v[i + 1], (size_t)(*n - i - 1) * sizeof *v);
            (*n)--;
            return;
        }
}

void sched_seq_finish(sched_t *s, sched_seq_t *q) {
    if (!q) return;
    if (q->running) {
        seq_release_blocks(s, q);
        vec_remove(s->running, &s->n_running, q);
    } else if (q->parked) {
        seq_release_blocks(s, q);
        vec_remove(s->parked, &s->n_parked, q);
    } else {
        vec_remove(s->waiting, &s->n_waiting, q);
    }
    seq_destroy(q);
}

const uint32_t *sched_seq_tokens(const sched_seq_t *q, uint32_t *n) {
    *n = q->n_tokens;
    return q->tokens;
}
uint32_t sched_seq_n_prompt(const sched_seq_t *q) {
    return q->n_prompt;
}
uint32_t sched_seq_n_computed(const sched_seq_t *q) {
    return q->n_computed;
}
uint32_t sched_seq_cached_tokens(const sched_seq_t *q) {
    return q->cached_tokens;
}
uint32_t sched_seq_preemptions(const sched_seq_t *q) {
    return q->preemptions;
}
bool sched_seq_running(const sched_seq_t *q) {
    return q->running;
}
bool sched_seq_parked(const sched_seq_t *q) {
    return q->parked;
}
void *sched_seq_ud(const sched_seq_t *q) {
    return q->ud;
}
const uint32_t *sched_seq_blocks(const sched_seq_t *q, uint32_t *n) {
    *n = q->n_blocks;
    return q->blocks;
}

/* Hashes full blocks up to nb (the tokens must exist). */
static void seq_hash_upto(sched_t *s, sched_seq_t *q, uint32_t nb) {
    for (uint32_t i = q->n_hashed; i < nb; i++) {
        q->bhash[i] = block_hash_tokens(q->tokens + (size_t)i * s->bs, s->bs);
        q->shash[i] = block_hash_chain(i ? q->shash[i - 1] : s->o.salt, q->bhash[i]);
    }
    if (nb > q->n_hashed) q->n_hashed = nb;
}

/* Moves the youngest running sequence back to the front of the waiting
 * queue. Returns the victim. */
static sched_seq_t *preempt_youngest(sched_t *s, uint32_t *budget) {
    sched_seq_t *v = s->running[--s->n_running];
    if (v->scheduled) *budget += v->chunk;
    v->scheduled = false;
    v->chunk = 0;
    seq_release_blocks(s, v);
    v->n_computed = 0;
    v->n_committed = 0;
    v->running = false;
    v->preemptions++;
    s->preemptions++;
    memmove(&s->waiting[1], &s->waiting[0], (size_t)s->n_waiting * sizeof *s->waiting);
    s->waiting[0] = v;
    s->n_waiting++;
    return v;
}

int sched_step_plan(sched_t *s, sched_plan_t *plan) {
    int rc = 0;
    uint32_t budget = s->o.max_batch_tokens, preempted = 0;
    memset(plan, 0, sizeof *plan);
    /* Passes 0 (decodes) and 1 (prefill chunks) over running, oldest first. */
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < s->n_running && budget > 0; i++) {
            sched_seq_t *q = s->running[i];
            if (q->scheduled) continue;
            uint32_t remaining = q->n_tokens - q->n_computed;
            if (remaining == 0 || (pass == 0) != (remaining == 1)) continue;
            uint32_t chunk = remaining < budget ? remaining : budget;
            uint32_t need = ceil_div(q->n_computed + chunk, s->bs) - q->n_blocks;
            bool self_preempted = false;
            while (need > kvpool_available(s->pool)) {
                sched_seq_t *v = preempt_youngest(s, &budget);
                preempted++;
                if (v == q) {
                    self_preempted = true;
                    break;
                }
            }
            if (self_preempted) break; /* q was the youngest: nothing after it */
            rc = kvpool_blocks_alloc(s->pool, need, q->blocks + q->n_blocks);
            if (rc) goto out;
            q->n_blocks += need;
            q->scheduled = true;
            q->chunk = chunk;
            budget -= chunk;
        }
    }
    /* Admission, only in steps without preemption (the pool is tight). */
    while (!preempted && s->n_waiting > 0 && budget > 0 && s->n_running < s->o.max_seqs) {
        sched_seq_t *q = s->waiting[0];
        uint32_t max_hit = (q->n_tokens - 1) / s->bs;
        seq_hash_upto(s, q, max_hit);
        size_t unref = 0;
        uint32_t hit = (uint32_t)kvpool_prefix_lookup(s->pool, q->shash, max_hit, &unref);
        uint32_t computed = hit * s->bs;
        uint32_t remaining = q->n_tokens - computed;
        uint32_t chunk = remaining < budget ? remaining : budget;
        uint32_t need = ceil_div(computed + chunk, s->bs) - hit;
        uint32_t avail = kvpool_available(s->pool) - (uint32_t)unref;
        uint32_t keep = s->n_running > 0 ? s->o.watermark_blocks : 0;
        if ((uint64_t)need + keep > avail) break;
        size_t got = kvpool_prefix_acquire(s->pool, q->shash, hit, q->blocks);
        if (got != hit) { /* cannot happen: lookup just saw them */
            kvpool_blocks_release(s->pool, q->blocks, got);
            rc = SL_EINVAL;
            goto out;
        }
        rc = kvpool_blocks_alloc(s->pool, need, q->blocks + hit);
        if (rc) {
            kvpool_blocks_release(s->pool, q->blocks, hit);
            goto out;
        }
        q->n_blocks = hit + need;
        q->n_computed = computed;
        q->n_committed = hit;
        if (!q->admitted_once) q->cached_tokens = computed < q->n_prompt ? computed : q->n_prompt;
        q->admitted_once = true;
        q->running = true;
        q->scheduled = true;
        q->chunk = chunk;
        budget -= chunk;
        memmove(&s->waiting[0], &s->waiting[1], (size_t)(s->n_waiting - 1) * sizeof *s->waiting);
        s->n_waiting--;
        s->running[s->n_running++] = q;
    }
    /* The plan, in running order. */
    if (s->cap_plan < s->n_running) {
        uint32_t c = s->n_running;
        sl_fwd_seq_t *f = realloc(s->fwd, (size_t)c * sizeof *f);
        if (!f) {
            rc = SL_ENOMEM;
            goto out;
        }
        s->fwd = f;
        sched_seq_t **ps = realloc(s->pseqs, (size_t)c * sizeof *ps);
        if (!ps) {
            rc = SL_ENOMEM;
            goto out;
        }
        s->pseqs = ps;
        s->cap_plan = c;
    }
    for (uint32_t i = 0; i < s->n_running; i++) {
        sched_seq_t *q = s->running[i];
        if (!q->scheduled) continue;
        bool last = q->n_computed + q->chunk == q->n_tokens;
        s->fwd[plan->n] = (sl_fwd_seq_t){.tokens = q->tokens + q->n_computed,
                                         .n_tokens = q->chunk,
                                         .pos = q->n_computed,
                                         .blocks = q->blocks,
                                         .n_blocks = ceil_div(q->n_computed + q->chunk, s->bs),
                                         .want_logits = last};
        s->pseqs[plan->n] = q;
        plan->n++;
        plan->n_logits += last;
        plan->n_tokens += q->chunk;
    }
    plan->fwd = s->fwd;
    plan->seqs = s->pseqs;
    plan->n_preempted = preempted;
    if (plan->n) s->steps++;
out:
    if (rc) { /* leave no sequence marked for a step that will not run */
        for (uint32_t i = 0; i < s->n_running; i++) s->running[i]->scheduled = false;
        memset(plan, 0, sizeof *plan);
    }
    return rc;
}

/* Registers the sequence's newly full computed blocks in the prefix cache. */
static int seq_commit(sched_t *s, sched_seq_t *q) {
    uint32_t full = q->n_computed / s->bs;
    int r = 0;
    if (full > q->n_committed) {
        seq_hash_upto(s, q, full);
        uint32_t f = q->n_committed;
        r = kvpool_blocks_commit(s->pool, f, f ? q->shash[f - 1] : s->o.salt, q->blocks + f,
                                 q->bhash + f, q->shash + f, full - f);
        q->n_committed = full;
    }
    return r < 0 ? r : 0;
}

int sched_step_done(sched_t *s, const sched_plan_t *plan, bool ok) {
    int rc = 0;
    for (uint32_t k = 0; k < plan->n; k++) {
        sched_seq_t *q = plan->seqs[k];
        q->scheduled = false;
        if (!ok) {
            q->chunk = 0;
            continue;
        }
        q->n_computed += q->chunk;
        q->chunk = 0;
        int r = seq_commit(s, q);
        if (r < 0 && !rc) rc = r;
    }
    return rc;
}

/* ---- parking (disaggregated prefill) ---------------------------------------------- */

uint32_t sched_seq_cached_prefix(sched_t *s, sched_seq_t *q) {
    if (!q || q->running || q->parked) return 0;
    uint32_t max_hit = (q->n_tokens - 1) / s->bs;
    seq_hash_upto(s, q, max_hit);
    return (uint32_t)kvpool_prefix_lookup(s->pool, q->shash, max_hit, NULL) * s->bs;
}

int sched_seq_reserve(sched_t *s, sched_seq_t *q) {
    if (!s || !q || q->running || q->parked) return SL_EINVAL;
    uint32_t max_hit = (q->n_tokens - 1) / s->bs;
    seq_hash_upto(s, q, max_hit);
    size_t unref = 0;
    uint32_t hit = (uint32_t)kvpool_prefix_lookup(s->pool, q->shash, max_hit, &unref);
    uint32_t need = ceil_div(q->n_tokens, s->bs) - hit;
    uint32_t avail = kvpool_available(s->pool) - (uint32_t)unref;
    uint32_t keep = s->n_running + s->n_parked > 0 ? s->o.watermark_blocks : 0;
    if ((uint64_t)need + keep > avail) return SL_EAGAIN;
    size_t got = kvpool_prefix_acquire(s->pool, q->shash, hit, q->blocks);
    if (got != hit) { /* cannot happen: lookup just saw them */
        kvpool_blocks_release(s->pool, q->blocks, got);
        return SL_EINVAL;
    }
    int rc = kvpool_blocks_alloc(s->pool, need, q->blocks + hit);
    if (rc) {
        kvpool_blocks_release(s->pool, q->blocks, hit);
        return rc;
    }
    q->n_blocks = hit + need;
    q->n_computed = hit * s->bs;
    q->n_committed = hit;
    if (!q->admitted_once) q->cached_tokens = q->n_computed;
    q->admitted_once = true;
    vec_remove(s->waiting, &s->n_waiting, q);
    q->parked = true;
    s->parked[s->n_parked++] = q;
    return 0;
}

int sched_seq_park(sched_t *s, sched_seq_t *q) {
    if (!s || !q || !q->running || q->scheduled) return SL_EINVAL;
    vec_remove(s->running, &s->n_running, q);
    q->running = false;
    q->parked = true;
    s->parked[s->n_parked++] = q;
    return 0;
}

int sched_seq_resume(sched_t *s, sched_seq_t *q, uint32_t n_computed) {
    if (!s || !q || !q->parked || n_computed > q->n_tokens || n_computed < q->n_computed ||
        ceil_div(n_computed, s->bs) > q->n_blocks)
        return SL_EINVAL;
    vec_remove(s->parked, &s->n_parked, q);
    q->parked = false;
    q->running = true;
    q->n_computed = n_computed;
    s->running[s->n_running++] = q;
    return seq_commit(s, q);
}

int sched_seq_unpark(sched_t *s, sched_seq_t *q) {
    if (!s || !q || !q->parked) return SL_EINVAL;
    vec_remove(s->parked, &s->n_parked, q);
    q->parked = false;
    seq_release_blocks(s, q);
    q->n_computed = 0;
    q->n_committed = 0;
    memmove(&s->waiting[1], &s->waiting[0], (size_t)s->n_waiting * sizeof *s->waiting);
    s->waiting[0] = q;
    s->n_waiting++;
    return 0;
}

void sched_stats_get(const sched_t *s, sched_stats_t *out) {
    uint64_t pending = 0;
    for (uint32_t i = 0; i < s->n_running; i++) {
        uint32_t left = s->running[i]->n_tokens - s->running[i]->n_computed;
        if (left > 1) pending += left;
    }
    for (uint32_t i = 0; i < s->n_waiting; i++) pending += s->waiting[i]->n_tokens;
    *out = (sched_stats_t){.running = s->n_running,
                           .pending_prefill_tokens = pending,
                           .waiting = s->n_waiting,
                           .parked = s->n_parked,
                           .preemptions = s->preemptions,
                           .steps = s->steps};
}
