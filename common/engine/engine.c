/* engine.c - one step = plan, forward, sample, stop checks, outputs (see
 * engine.h). */
#include "common/engine/engine.h"

#include "common/base/block_hash.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/engine/detok.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define ENGINE_MAX_ID      255
#define ENGINE_MAX_WORKERS 1024 /* samplers kept for fwd.parallel_for */

typedef struct ereq {
    struct ereq *prev, *next;
    char id[ENGINE_MAX_ID + 1];
    sampling_params_t sp;
    sampling_rng_t rng;
    uint32_t max_tokens, min_tokens;
    bool ignore_eos;
    uint32_t *stop_ids; /* (n_stop_ids) */
    uint32_t n_stop_ids;
    char **stop; /* (n_stop) */
    size_t *stop_len;
    uint32_t n_stop;
    size_t max_stop_len;
    sl_detok_t *detok; /* with opts.tokenizer: primed with the prompt */
    char *pending;     /* (pending_len, pending_cap) text not yet released */
    size_t pending_len, pending_cap;
    uint32_t n_prompt, completion;
    uint32_t n_pen_prompt; /* prompt length as penalties see it (without prior output) */
    engine_output_fn cb;
    void *ud;
    sched_seq_t *seq;
    bool cancel_pending;
    bool finishing; /* its final output is being delivered */
    engine_mode_t mode;
    bool remote;            /* an adopted prefill */
    engine_transfer_t xfer; /* what its transfer cost */
    uint32_t adopt_min;
    uint8_t adopt; /* ADOPT: 0 runs locally, ADOPT_WANT, ADOPT_RESERVED */
    bool hold;     /* PREFILL: park the sequence on the final output */
} ereq_t;

#define ADOPT_WANT     1
#define ADOPT_RESERVED 2

typedef enum inbox_kind {
    INBOX_REQUEST = 0,
    INBOX_CANCEL,
    INBOX_ADOPT_DONE,
    INBOX_ADOPT_FAIL,
    INBOX_RELEASE
} inbox_kind_t;

/* One logits row of a step: sampled first (on the forward's threads when it
 * lends them), then taken in batch order on the engine thread. */
typedef struct engine_row {
    ereq_t *r;
    float *logits; /* (vocab) */
    int rc;        /* of the draw; SL_EAGAIN: not drawn yet (no sampler) */
    sampling_result_t res;
} engine_row_t;

/* A submission waiting for the engine thread: a deep copy of the request
 * (req's pointers point into the item's own arrays) or a cancel. */
typedef struct inbox_item {
    struct inbox_item *next;
    inbox_kind_t kind;
    sampling_result_t first; /* INBOX_ADOPT_DONE */
    engine_transfer_t xfer;  /* INBOX_ADOPT_DONE */
    char *id;
    uint32_t *prompt, *stop_ids;
    char **stops; /* (req.stop.n_stop) */
    engine_request_t req;
} inbox_item_t;

struct engine {
    sl_forward_t fwd;
    engine_opts_t o;
    uint32_t *eos; /* (n_eos) */
    kvpool_t *pool;
    sched_t *sched;
    sampler_t *sampler;
    /* (n_samplers) one per worker of fwd.parallel_for, made on first use by
     * that worker; [0] is sampler (worker 0 is the engine thread). */
    sampler_t **samplers;
    uint32_t n_samplers;
    sampling_rng_t rng; /* seeds requests without a seed */
    float *logits;      /* (cap_logits rows, vocab) */
    engine_row_t *rows; /* (cap_logits) */
    uint32_t cap_logits;
    ereq_t *head; /* active requests */
    uint32_t n_active;
    uint32_t n_parked; /* active ADOPT requests holding a reservation */
    ereq_t *held;      /* PREFILL results pinned until engine_release() */
    uint32_t n_held;
    /* ADOPT requests that ended (cancel, error) while their blocks were
     * reserved: a remote writer may still be filling them, so the blocks
     * stay parked until engine_adopt_done / _fail names the id. */
    ereq_t *orphans;
    uint32_t n_orphans;
    bool in_step;
    uint64_t prompt_computed, generated;
    uint64_t prompt_adopted; /* prompt tokens whose KV came from elsewhere */
    /* Submissions from other threads; mu guards in_head/in_tail/woken. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool sync_ok;
    inbox_item_t *in_head, *in_tail;
    bool woken;
};

/* ---- requests ------------------------------------------------------------------ */

static void req_destroy(ereq_t *r) {
    if (!r) return;
    for (uint32_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->stop_len);
    free(r->stop_ids);
    free(r->pending);
    sl_detok_free(r->detok);
    free(r);
}

static void req_unlink(engine_t *e, ereq_t *r) {
    if (r->prev)
        r->prev->next = r->next;
    else
        e->head = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    e->n_active--;
    if (r->adopt == ADOPT_RESERVED) e->n_parked--;
    r->adopt = 0;
}

/* Pushes r (unlinked) onto a side list (held or orphans). */
static void req_push(ereq_t **list, uint32_t *n, ereq_t *r) {
    r->finishing = false;
    r->prev = NULL;
    r->next = *list;
    if (*list) (*list)->prev = r;
    *list = r;
    (*n)++;
}

/* Unlinks and returns the request of id from a side list, or NULL. */
static ereq_t *req_pop(ereq_t **list, uint32_t *n, const char *id) {
    ereq_t *r = *list;
    while (r && (!id || strcmp(r->id, id) != 0)) r = r->next;
    if (!r) return NULL;
    if (r->prev)
        r->prev->next = r->next;
    else
        *list = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    (*n)--;
    return r;
}

/* Moves a PREFILL request whose final output went out to the held list, its
 * sequence parked with its blocks. */
static void req_hold(engine_t *e, ereq_t *r) {
    req_unlink(e, r);
    req_push(&e->held, &e->n_held, r);
}

static ereq_t *req_find(engine_t *e, const char *id) {
    for (ereq_t *r = e->head; r; r = r->next)
        if (!r->finishing && strcmp(r->id, id) == 0) return r;
    return NULL;
}

/* Delivers the output, and when it is final, ends the sequence and frees the
 * request. */
static void req_emit(engine_t *e, ereq_t *r, engine_output_t *o) {
    o->id = r->id;
    o->prompt_tokens = r->n_prompt;
    o->cached_tokens = r->seq ? sched_seq_cached_tokens(r->seq) : 0;
    o->completion_tokens = r->completion;
    o->remote_prefill = r->remote;
    o->kv_transfer_bytes = r->xfer.bytes;
    o->kv_transfer_us = r->xfer.us;
    /* A final output ends the request even for a callback that cancels it
     * (or adds a request with the same id) from inside. */
    if (o->finish != ENGINE_FINISH_NONE) r->finishing = true;
    if (r->cb) r->cb(o, r->ud);
    if (o->finish != ENGINE_FINISH_NONE && r->hold && !r->cancel_pending &&
        sched_seq_park(e->sched, r->seq) == 0) {
        req_hold(e, r);
        return;
    }
    if (o->finish != ENGINE_FINISH_NONE && r->adopt == ADOPT_RESERVED) {
        req_unlink(e, r); /* ended while a remote writer may fill its blocks */
        req_push(&e->orphans, &e->n_orphans, r);
        return;
    }
    if (o->finish != ENGINE_FINISH_NONE) {
        sched_seq_finish(e->sched, r->seq);
        r->seq = NULL;
        req_unlink(e, r);
        req_destroy(r);
    }
}

static bool engine_has_text(const engine_t *e) {
    return e->o.tokenizer || e->o.token_bytes;
}

/* Text for this request: never for a PREFILL one. */
static bool req_has_text(const engine_t *e, const ereq_t *r) {
    return r->mode != ENGINE_MODE_PREFILL && engine_has_text(e);
}

static int pending_append(ereq_t *r, const char *b, size_t n);

/* Ends the detokenizer's stream: what it held back joins pending. */
static int req_text_flush(ereq_t *r) {
    const char *t;
    size_t n;
    if (!r->detok) return 0;
    int rc = sl_detok_finish(r->detok, &t, &n);
    if (rc == 0 && n) rc = pending_append(r, t, n);
    return rc;
}

static void req_finish_simple(engine_t *e, ereq_t *r, engine_finish_t why, int err) {
    engine_output_t o = {.finish = why, .error = err};
    /* Release what text is held back: the stream ends here. A failing flush
     * only loses that tail (the request ends anyway). */
    if (req_has_text(e, r)) {
        (void)req_text_flush(r);
        o.text = r->pending ? r->pending : "";
        o.text_len = r->pending_len;
    }
    req_emit(e, r, &o);
}

/* ---- engine ---------------------------------------------------------------------- */

engine_t *engine_new(const sl_forward_t *fwd, const engine_opts_t *opts) {
    engine_t *e = NULL;
    if (!fwd || !fwd->step || !fwd->block_size || !fwd->n_blocks || !fwd->vocab_size) goto fail;
    e = calloc(1, sizeof *e);
    if (!e) goto fail;
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) goto fail;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int crc = pthread_cond_init(&e->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (crc != 0) goto fail;
    if (pthread_mutex_init(&e->mu, NULL) != 0) {
        pthread_cond_destroy(&e->cv);
        goto fail;
    }
    e->sync_ok = true;
    e->fwd = *fwd;
    if (opts) e->o = *opts;
    e->o.salt_name = NULL; /* not kept: only its hash is */
    if (e->o.n_eos) {
        if (!opts->eos_ids) goto fail;
        e->eos = malloc((size_t)e->o.n_eos * sizeof *e->eos);
        if (!e->eos) goto fail;
        memcpy(e->eos, opts->eos_ids, (size_t)e->o.n_eos * sizeof *e->eos);
    }
    e->o.eos_ids = e->eos;
    e->pool = kvpool_new(fwd->n_blocks, fwd->block_size);
    if (!e->pool) goto fail;
    if (e->o.kv_event) kvpool_set_event_cb(e->pool, e->o.kv_event, e->o.kv_event_ud);
    sched_opts_t so = {.max_batch_tokens = e->o.max_batch_tokens,
                       .max_seqs = e->o.max_seqs,
                       .watermark_blocks =
                           e->o.watermark_blocks ? e->o.watermark_blocks : fwd->n_blocks / 100,
                       .max_context = e->o.max_context,
                       .salt = block_hash_salt(opts ? opts->salt_name : NULL)};
    e->sched = sched_new(e->pool, &so);
    e->sampler = sampler_new(fwd->vocab_size);
    if (!e->sched || !e->sampler) goto fail;
    e->n_samplers = fwd->parallel_for && fwd->n_workers > 1 ? fwd->n_workers : 1;
    if (e->n_samplers > ENGINE_MAX_WORKERS) e->n_samplers = ENGINE_MAX_WORKERS;
    e->samplers = calloc(e->n_samplers, sizeof *e->samplers);
    if (!e->samplers) goto fail;
    e->samplers[0] = e->sampler;
    sampling_rng_seed(&e->rng, e->o.seed);
    return e;
fail:
    engine_free(e);
    return NULL;
}

static void inbox_item_free(inbox_item_t *it) {
    if (!it) return;
    for (uint32_t i = 0; it->stops && i < it->req.stop.n_stop; i++) free(it->stops[i]);
    free(it->stops);
    free(it->stop_ids);
    free(it->prompt);
    free(it->id);
    free(it);
}

void engine_free(engine_t *e) {
    if (!e) return;
    while (e->in_head) {
        inbox_item_t *it = e->in_head;
        e->in_head = it->next;
        inbox_item_free(it);
    }
    if (e->sync_ok) {
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->cv);
    }
    while (e->head) {
        ereq_t *r = e->head;
        req_unlink(e, r);
        req_destroy(r);
    }
    while (e->held) {
        ereq_t *r = e->held;
        e->held = r->next;
        req_destroy(r);
    }
    while (e->orphans) {
        ereq_t *r = e->orphans;
        e->orphans = r->next;
        req_destroy(r);
    }
    sched_free(e->sched); /* frees the sequences and their blocks */
    kvpool_free(e->pool);
    for (uint32_t i = 1; e->samplers && i < e->n_samplers; i++) sampler_free(e->samplers[i]);
    free(e->samplers);
    sampler_free(e->sampler);
    free(e->logits);
    free(e->rows);
    free(e->eos);
    free(e);
}

uint32_t engine_active(const engine_t *e) {
    return e->n_active;
}

kvpool_t *engine_pool(engine_t *e) {
    return e->pool;
}

int engine_add(engine_t *e, const engine_request_t *q) {
    int rc = 0;
    ereq_t *r = NULL;
    if (!e || !q || !q->id || !q->id[0] || strlen(q->id) > ENGINE_MAX_ID || !q->prompt ||
        q->n_prompt == 0 || q->n_prior_output >= q->n_prompt || (q->stop.n_stop && !q->stop.stop) ||
        (q->stop.n_stop_token_ids && !q->stop.stop_token_ids)) {
        rc = SL_EINVAL;
        goto out;
    }
    rc = sampling_params_validate(&q->sampling);
    if (rc) goto out;
    if (q->mode != ENGINE_MODE_GENERATE && q->mode != ENGINE_MODE_PREFILL &&
        q->mode != ENGINE_MODE_ADOPT) {
        rc = SL_EINVAL;
        goto out;
    }
    if (q->stop.n_stop && (!engine_has_text(e) || q->mode == ENGINE_MODE_PREFILL)) {
        rc = SL_EINVAL;
        goto out;
    }
    for (uint32_t i = 0; i < q->n_prompt; i++)
        if (q->prompt[i] >= e->fwd.vocab_size) {
            rc = SL_EINVAL;
            goto out;
        }
    if (req_find(e, q->id)) {
        rc = SL_EEXIST;
        goto out;
    }
    r = calloc(1, sizeof *r);
    if (!r) {
        rc = SL_ENOMEM;
        goto out;
    }
    memcpy(r->id, q->id, strlen(q->id) + 1);
    r->sp = q->sampling;
    if (r->sp.has_seed)
        sampling_rng_seed(&r->rng, r->sp.seed);
    else
        sampling_rng_seed(&r->rng, sampling_rng_next(&e->rng));
    r->max_tokens = q->stop.max_tokens;
    r->min_tokens = q->stop.min_tokens;
    r->ignore_eos = q->stop.ignore_eos;
    r->n_prompt = q->n_prompt;
    r->n_pen_prompt = q->n_prompt - q->n_prior_output;
    r->cb = q->on_output;
    r->ud = q->ud;
    r->mode = q->mode;
    r->adopt_min = q->adopt_min_tokens;
    r->adopt = q->mode == ENGINE_MODE_ADOPT ? ADOPT_WANT : 0;
    if (q->stop.n_stop_token_ids) {
        r->stop_ids = malloc((size_t)q->stop.n_stop_token_ids * sizeof *r->stop_ids);
        if (!r->stop_ids) {
            rc = SL_ENOMEM;
            goto out;
        }
        memcpy(r->stop_ids, q->stop.stop_token_ids,
               (size_t)q->stop.n_stop_token_ids * sizeof *r->stop_ids);
        r->n_stop_ids = q->stop.n_stop_token_ids;
    }
    if (q->stop.n_stop) {
        r->stop = calloc(q->stop.n_stop, sizeof *r->stop);
        r->stop_len = calloc(q->stop.n_stop, sizeof *r->stop_len);
        if (!r->stop || !r->stop_len) {
            rc = SL_ENOMEM;
            goto out;
        }
        for (uint32_t i = 0; i < q->stop.n_stop; i++) {
            const char *s = q->stop.stop[i];
            if (!s || !s[0]) {
                rc = SL_EINVAL;
                goto out;
            }
            r->stop[i] = strdup(s);
            if (!r->stop[i]) {
                rc = SL_ENOMEM;
                goto out;
            }
            r->n_stop = i + 1;
            r->stop_len[i] = strlen(s);
            if (r->stop_len[i] > r->max_stop_len) r->max_stop_len = r->stop_len[i];
        }
    }
    if (e->o.tokenizer && q->mode != ENGINE_MODE_PREFILL) {
        rc = sl_detok_new(e->o.tokenizer, !q->keep_special, &r->detok);
        if (rc == 0) rc = sl_detok_prime(r->detok, q->prompt, q->n_prompt);
        if (rc) goto out;
    }
    rc = sched_seq_add(e->sched, q->prompt, q->n_prompt, r, &r->seq);
    if (rc) goto out;
    r->next = e->head;
    if (e->head) e->head->prev = r;
    e->head = r;
    e->n_active++;
    r = NULL;
out:
    req_destroy(r);
    return rc;
}

int engine_cancel(engine_t *e, const char *id) {
    ereq_t *r = id ? req_find(e, id) : NULL;
    if (!r) return SL_ENOTFOUND;
    if (e->in_step) {
        r->cancel_pending = true;
        return 0;
    }
    req_finish_simple(e, r, ENGINE_FINISH_CANCELLED, 0);
    return 0;
}

/* ---- text and stop strings ------------------------------------------------------ */

static int pending_append(ereq_t *r, const char *b, size_t n) {
    if (n == 0) return 0;
    if (n > SIZE_MAX / 2 - r->pending_len) return SL_ENOMEM;
    if (r->pending_len + n > r->pending_cap) {
        size_t c = r->pending_cap ? r->pending_cap : 64;
        while (c < r->pending_len + n) c *= 2;
        char *p = realloc(r->pending, c);
        if (!p) return SL_ENOMEM;
        r->pending = p;
        r->pending_cap = c;
    }
    memcpy(r->pending + r->pending_len, b, n);
    r->pending_len += n;
    return 0;
}

/* Length of a trailing incomplete UTF-8 sequence in s[0, n) (0..3). */
static size_t utf8_incomplete_tail(const char *s, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned char c = (unsigned char)s[n - k];
        if ((c & 0xC0) == 0x80) continue; /* continuation: look further back */
        size_t need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        return need > k ? k : 0;
    }
    return 0;
}

/* Searches pending for the earliest stop string. Returns its index or -1 and
 * the match position in *at. */
static int stop_find(const ereq_t *r, size_t *at) {
    int best = -1;
    size_t best_at = SIZE_MAX;
    for (uint32_t i = 0; r->pending_len && i < r->n_stop; i++) {
        const char *m = memmem(r->pending, r->pending_len, r->stop[i], r->stop_len[i]);
        if (m && (size_t)(m - r->pending) < best_at) {
            best_at = (size_t)(m - r->pending);
            best = (int)i;
        }
    }
    *at = best_at;
    return best;
}

/* Longest suffix of pending that is a proper prefix of some stop string. */
static size_t stop_hold(const ereq_t *r) {
    size_t hold = 0;
    for (uint32_t i = 0; i < r->n_stop; i++) {
        size_t L = r->stop_len[i] - 1;
        if (L > r->pending_len) L = r->pending_len;
        for (size_t k = L; k > hold; k--)
            if (memcmp(r->pending + r->pending_len - k, r->stop[i], k) == 0) {
                hold = k;
                break;
            }
    }
    return hold;
}

static bool id_in(uint32_t t, const uint32_t *v, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        if (v[i] == t) return true;
    return false;
}

/* Appends the text of token t to pending: through the detokenizer, or the
 * token_bytes fallback (whose failures just add no text). */
static int req_text_push(engine_t *e, ereq_t *r, uint32_t t) {
    const char *b = NULL;
    size_t n = 0;
    if (r->detok) {
        int rc = sl_detok_push(r->detok, t, &b, &n);
        return rc ? rc : pending_append(r, b, n);
    }
    if (e->o.token_bytes(e->o.token_bytes_ud, t, &b, &n) != 0 || !b) return 0;
    return pending_append(r, b, n);
}

/* ---- step ------------------------------------------------------------------------- */

static void req_take_token(engine_t *e, ereq_t *r, const sampling_result_t *res);

/* PREFILL: the prompt is computed and its first token sampled: one final
 * output with the blocks, then the request is held (req_emit). */
static void req_prefill_done(engine_t *e, ereq_t *r, const sampling_result_t *res) {
    engine_output_t o = {0};
    uint32_t nb;
    const uint32_t *blocks = sched_seq_blocks(r->seq, &nb);
    uint32_t bs = e->fwd.block_size;
    uint32_t need = r->n_prompt / bs + (r->n_prompt % bs != 0);
    r->completion++;
    o.tokens = &res->token;
    o.n_tokens = 1;
    if (r->sp.logprobs || r->sp.top_logprobs) o.logprobs = res;
    o.blocks = blocks;
    o.n_blocks = need < nb ? need : nb;
    o.finish = ENGINE_FINISH_LENGTH;
    r->hold = true;
    req_emit(e, r, &o);
}

/* Draws the token of one row with sampler s. Touches only the row, its
 * request's RNG and s, so rows are drawn concurrently (one sampler per
 * thread) and each draw is the same on any number of threads. */
static void row_sample(const engine_t *e, engine_row_t *w, sampler_t *s) {
    ereq_t *r = w->r;
    float *row = w->logits;
    uint32_t n_hist;
    const uint32_t *hist = sched_seq_tokens(r->seq, &n_hist);
    if (r->completion < r->min_tokens) {
        for (uint32_t i = 0; i < r->n_stop_ids; i++)
            if (r->stop_ids[i] < e->fwd.vocab_size) row[r->stop_ids[i]] = -INFINITY;
        if (!r->ignore_eos)
            for (uint32_t i = 0; i < e->o.n_eos; i++)
                if (e->eos[i] < e->fwd.vocab_size) row[e->eos[i]] = -INFINITY;
    }
    w->rc = sampler_sample(s, &r->sp, row, hist, n_hist, r->n_pen_prompt, &r->rng, &w->res);
}

/* fwd.parallel_for body: rows [b, end) on worker's sampler, made here on
 * the worker's first use (a failure leaves the rows to the engine thread). */
static void rows_sample_task(void *arg, uint32_t b, uint32_t end, uint32_t worker) {
    engine_t *e = arg;
    sampler_t *s = NULL;
    if (worker < e->n_samplers) {
        if (!e->samplers[worker]) e->samplers[worker] = sampler_new(e->fwd.vocab_size);
        s = e->samplers[worker];
    }
    for (uint32_t i = b; i < end; i++) {
        if (s)
            row_sample(e, &e->rows[i], s);
        else
            e->rows[i].rc = SL_EAGAIN;
    }
}

/* Appends and reports the token drawn for a row, or fails its request. */
static void row_take(engine_t *e, engine_row_t *w) {
    ereq_t *r = w->r;
    if (w->rc) {
        req_finish_simple(e, r, ENGINE_FINISH_ERROR, w->rc);
        return;
    }
    if (r->mode == ENGINE_MODE_PREFILL)
        req_prefill_done(e, r, &w->res);
    else
        req_take_token(e, r, &w->res);
}

/* Appends and reports the token in res (sampled here, or by a prefill worker
 * for an adopted request): stop checks, text, output. */
static void req_take_token(engine_t *e, ereq_t *r, const sampling_result_t *res) {
    engine_output_t o = {0};
    int rc = sched_seq_append(e->sched, r->seq, res->token);
    if (rc) {
        req_finish_simple(e, r, ENGINE_FINISH_ERROR, rc);
        return;
    }
    r->completion++;
    e->generated++;
    o.tokens = &res->token;
    o.n_tokens = 1;
    if (r->sp.logprobs || r->sp.top_logprobs) o.logprobs = res;
    uint32_t t = res->token;
    bool checks = r->completion >= r->min_tokens;
    bool id_stop = checks && ((!r->ignore_eos && id_in(t, e->eos, e->o.n_eos)) ||
                              id_in(t, r->stop_ids, r->n_stop_ids));
    uint32_t n_tok;
    sched_seq_tokens(r->seq, &n_tok);
    bool length = !id_stop && ((r->max_tokens && r->completion >= r->max_tokens) ||
                               n_tok >= sched_max_context(e->sched));
    size_t release = 0;
    if (id_stop)
        o.finish = ENGINE_FINISH_STOP;
    else if (length)
        o.finish = ENGINE_FINISH_LENGTH;
    if (engine_has_text(e)) {
        rc = id_stop ? 0 : req_text_push(e, r, t);
        if (rc == 0 && o.finish != ENGINE_FINISH_NONE) rc = req_text_flush(r);
        if (rc) {
            req_finish_simple(e, r, ENGINE_FINISH_ERROR, rc);
            return;
        }
        size_t at;
        int si = checks && r->n_stop ? stop_find(r, &at) : -1;
        if (si >= 0) {
            /* Also when the flush at the end completed a stop string. */
            o.finish = ENGINE_FINISH_STOP;
            o.stop_str = r->stop[si];
            release = at;
        } else if (o.finish != ENGINE_FINISH_NONE) {
            release = r->pending_len;
        } else {
            size_t hold = stop_hold(r);
            size_t u = utf8_incomplete_tail(r->pending, r->pending_len);
            if (u > hold) hold = u;
            release = r->pending_len - hold;
        }
    }
    if (engine_has_text(e)) {
        o.text = r->pending ? r->pending : "";
        o.text_len = release;
    }
    /* Consume the released bytes after the callback has seen them. */
    bool final = o.finish != ENGINE_FINISH_NONE;
    if (!final) {
        /* Keep the held-back tail; shift after delivery (below). */
        char *keep_from = r->pending ? r->pending + release : NULL;
        size_t keep = r->pending_len - release;
        req_emit(e, r, &o);
        if (keep && keep_from != r->pending) memmove(r->pending, keep_from, keep);
        r->pending_len = keep;
    } else {
        req_emit(e, r, &o); /* frees r */
    }
}

static void process_pending_cancels(engine_t *e) {
    ereq_t *r = e->head;
    while (r) {
        ereq_t *next = r->next;
        if (r->cancel_pending) req_finish_simple(e, r, ENGINE_FINISH_CANCELLED, 0);
        r = next;
    }
}

/* ---- submissions from other threads ------------------------------------------------ */

static void inbox_push(engine_t *e, inbox_item_t *it) {
    pthread_mutex_lock(&e->mu);
    if (e->in_tail)
        e->in_tail->next = it;
    else
        e->in_head = it;
    e->in_tail = it;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

static void *dup_array(const void *src, size_t n, size_t size) {
    if (n == 0) return NULL;
    void *d = malloc(n * size); /* n <= UINT32_MAX, size <= 8: no overflow on 64-bit */
    if (d) memcpy(d, src, n * size);
    return d;
}

int engine_submit(engine_t *e, const engine_request_t *q) {
    int rc = 0;
    inbox_item_t *it = NULL;
    if (!e || !q || !q->id || !q->prompt || q->n_prompt == 0 || (q->stop.n_stop && !q->stop.stop) ||
        (q->stop.n_stop_token_ids && !q->stop.stop_token_ids)) {
        rc = SL_EINVAL;
        goto out;
    }
    for (uint32_t i = 0; i < q->stop.n_stop; i++)
        if (!q->stop.stop[i]) {
            rc = SL_EINVAL;
            goto out;
        }
    it = calloc(1, sizeof *it);
    if (!it) {
        rc = SL_ENOMEM;
        goto out;
    }
    it->req = *q;
    it->id = strdup(q->id);
    it->prompt = dup_array(q->prompt, q->n_prompt, sizeof *q->prompt);
    it->stop_ids =
        dup_array(q->stop.stop_token_ids, q->stop.n_stop_token_ids, sizeof *q->stop.stop_token_ids);
    if (!it->id || !it->prompt || (q->stop.n_stop_token_ids && !it->stop_ids)) {
        rc = SL_ENOMEM;
        goto out;
    }
    if (q->stop.n_stop) {
        it->stops = calloc(q->stop.n_stop, sizeof *it->stops);
        if (!it->stops) {
            rc = SL_ENOMEM;
            goto out;
        }
        for (uint32_t i = 0; i < q->stop.n_stop; i++) {
            it->stops[i] = strdup(q->stop.stop[i]);
            if (!it->stops[i]) {
                rc = SL_ENOMEM;
                goto out;
            }
        }
    }
    it->req.id = it->id;
    it->req.prompt = it->prompt;
    it->req.stop.stop_token_ids = it->stop_ids;
    it->req.stop.stop = (const char *const *)it->stops;
    inbox_push(e, it);
    it = NULL;
out:
    inbox_item_free(it);
    return rc;
}

/* Queues an operation on id (cancel, adopt done / fail, release). */
static int inbox_push_op(engine_t *e, inbox_kind_t kind, const char *id,
                         const sampling_result_t *first, const engine_transfer_t *xfer) {
    if (!e || !id) return SL_EINVAL;
    inbox_item_t *it = calloc(1, sizeof *it);
    if (!it) return SL_ENOMEM;
    it->kind = kind;
    if (first) it->first = *first;
    if (xfer) it->xfer = *xfer;
    it->id = strdup(id);
    if (!it->id) {
        free(it);
        return SL_ENOMEM;
    }
    inbox_push(e, it);
    return 0;
}

int engine_submit_cancel(engine_t *e, const char *id) {
    return inbox_push_op(e, INBOX_CANCEL, id, NULL, NULL);
}

int engine_submit_adopt_done(engine_t *e, const char *id, const sampling_result_t *first,
                             const engine_transfer_t *xfer) {
    if (!first) return SL_EINVAL;
    return inbox_push_op(e, INBOX_ADOPT_DONE, id, first, xfer);
}

int engine_submit_adopt_fail(engine_t *e, const char *id) {
    return inbox_push_op(e, INBOX_ADOPT_FAIL, id, NULL, NULL);
}

int engine_submit_release(engine_t *e, const char *id) {
    return inbox_push_op(e, INBOX_RELEASE, id, NULL, NULL);
}

/* ---- disaggregated prefill --------------------------------------------------------- */

static ereq_t *req_find_reserved(engine_t *e, const char *id) {
    ereq_t *r = id ? req_find(e, id) : NULL;
    return r && r->adopt == ADOPT_RESERVED ? r : NULL;
}

/* The remote writer of an orphaned reservation is done: free its blocks. */
static int orphan_release(engine_t *e, const char *id) {
    ereq_t *r = id ? req_pop(&e->orphans, &e->n_orphans, id) : NULL;
    if (!r) return SL_ENOTFOUND;
    sched_seq_finish(e->sched, r->seq);
    req_destroy(r);
    return 0;
}

int engine_adopt_fail(engine_t *e, const char *id) {
    ereq_t *r = req_find_reserved(e, id);
    if (!r) return orphan_release(e, id);
    int rc = sched_seq_unpark(e->sched, r->seq);
    r->adopt = 0;
    e->n_parked--;
    return rc;
}

int engine_adopt_done(engine_t *e, const char *id, const sampling_result_t *first,
                      const engine_transfer_t *xfer) {
    ereq_t *r = req_find_reserved(e, id);
    if (!r) return orphan_release(e, id);
    if (!first || first->token >= e->fwd.vocab_size) {
        engine_adopt_fail(e, id);
        return SL_EINVAL;
    }
    int rc = sched_seq_resume(e->sched, r->seq, sched_seq_n_prompt(r->seq));
    if (rc == SL_EINVAL) {
        engine_adopt_fail(e, id);
        return rc;
    }
    if (rc) LOG_WARN("engine: registering adopted blocks of %s failed: %s", r->id, sl_strerror(rc));
    r->adopt = 0;
    r->remote = true;
    if (xfer) r->xfer = *xfer;
    e->n_parked--;
    e->prompt_adopted += r->n_prompt - sched_seq_cached_tokens(r->seq);
    /* The other side drew the first token from the same seed: skip that draw
     * so a seeded request continues as an unbroken local run would (exact
     * whenever that draw had more than one candidate, i.e. drew at all). */
    if (r->sp.temperature >= 1e-5f && r->sp.top_k != 1) (void)sampling_rng_next(&r->rng);
    req_take_token(e, r, first);
    return 0;
}

int engine_release(engine_t *e, const char *id) {
    ereq_t *r = req_pop(&e->held, &e->n_held, id);
    if (!r) return SL_ENOTFOUND;
    sched_seq_finish(e->sched, r->seq);
    req_destroy(r);
    return 0;
}

/* Start of a step: ADOPT requests that asked for a reservation get it (and
 * their reserved output) or run locally. Cancels from callbacks wait until
 * the end (in_step). */
static void adopt_reserve_all(engine_t *e) {
    e->in_step = true;
    for (ereq_t *r = e->head, *next; r; r = next) {
        next = r->next;
        if (r->adopt != ADOPT_WANT || r->cancel_pending) continue;
        r->adopt = 0;
        uint32_t hit = sched_seq_cached_prefix(e->sched, r->seq);
        if (r->n_prompt - hit <= r->adopt_min) continue;
        if (sched_seq_reserve(e->sched, r->seq) != 0) continue;
        r->adopt = ADOPT_RESERVED;
        e->n_parked++;
        uint32_t nb;
        const uint32_t *blocks = sched_seq_blocks(r->seq, &nb);
        engine_output_t o = {.reserved = true, .blocks = blocks, .n_blocks = nb};
        req_emit(e, r, &o);
    }
    e->in_step = false;
    process_pending_cancels(e);
}

void engine_wake(engine_t *e) {
    pthread_mutex_lock(&e->mu);
    e->woken = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

int engine_wait(engine_t *e, int timeout_ms) {
    int work;
    pthread_mutex_lock(&e->mu);
    if (e->n_active == e->n_parked && !e->in_head && !e->woken && timeout_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += timeout_ms / 1000;
        ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        while (!e->in_head && !e->woken)
            if (pthread_cond_timedwait(&e->cv, &e->mu, &ts) != 0) break;
    }
    work = e->n_active > e->n_parked || e->in_head != NULL || e->woken;
    e->woken = false;
    pthread_mutex_unlock(&e->mu);
    return work;
}

/* Applies queued submissions in order (engine thread). */
static void inbox_drain(engine_t *e) {
    pthread_mutex_lock(&e->mu);
    inbox_item_t *it = e->in_head;
    e->in_head = e->in_tail = NULL;
    pthread_mutex_unlock(&e->mu);
    while (it) {
        inbox_item_t *next = it->next;
        if (it->kind == INBOX_CANCEL) {
            (void)engine_cancel(e, it->id);
        } else if (it->kind == INBOX_ADOPT_DONE) {
            (void)engine_adopt_done(e, it->id, &it->first, &it->xfer);
        } else if (it->kind == INBOX_ADOPT_FAIL) {
            (void)engine_adopt_fail(e, it->id);
        } else if (it->kind == INBOX_RELEASE) {
            (void)engine_release(e, it->id);
        } else {
            int rc = engine_add(e, &it->req);
            if (rc && it->req.on_output) {
                engine_output_t o = {.id = it->id,
                                     .finish = ENGINE_FINISH_ERROR,
                                     .error = rc,
                                     .prompt_tokens = it->req.n_prompt};
                it->req.on_output(&o, it->req.ud);
            }
        }
        inbox_item_free(it);
        it = next;
    }
}

int engine_step(engine_t *e) {
    int rc = 0;
    sched_plan_t plan;
    inbox_drain(e);
    adopt_reserve_all(e);
    rc = sched_step_plan(e->sched, &plan);
    if (rc) goto out;
    if (plan.n == 0) {
        /* Requests waiting only for remote prefills are not stuck. */
        rc = e->n_active > e->n_parked ? SL_EAGAIN : (int)e->n_active;
        goto out;
    }
    if (plan.n_logits > e->cap_logits) {
        size_t bytes = (size_t)plan.n_logits * e->fwd.vocab_size * sizeof(float);
        float *l = realloc(e->logits, bytes);
        if (l) e->logits = l;
        engine_row_t *w = l ? realloc(e->rows, (size_t)plan.n_logits * sizeof *w) : NULL;
        if (w) e->rows = w;
        if (!l || !w) {
            sched_step_done(e->sched, &plan, false);
            rc = SL_ENOMEM;
            goto out;
        }
        e->cap_logits = plan.n_logits;
    }
    sl_fwd_batch_t batch = {.seqs = plan.fwd, .n_seqs = plan.n, .logits = e->logits};
    int frc = e->fwd.step(e->fwd.impl, &batch);
    e->in_step = true;
    if (frc) {
        sched_step_done(e->sched, &plan, false);
        LOG_WARN("engine: forward step of %u sequences failed: %s", plan.n, sl_strerror(frc));
        for (uint32_t k = 0; k < plan.n; k++) {
            ereq_t *r = sched_seq_ud(plan.seqs[k]);
            req_finish_simple(e, r, ENGINE_FINISH_ERROR, frc);
        }
        goto done;
    }
    int crc = sched_step_done(e->sched, &plan, true);
    if (crc) LOG_WARN("engine: registering blocks failed: %s", sl_strerror(crc));
    /* Draw every row first, on the forward's threads when it lends them
     * (the serial part of a batched decode step was mostly these draws),
     * then append and report in batch order on this thread. */
    uint32_t row = 0, n_rows = 0;
    for (uint32_t k = 0; k < plan.n; k++) {
        const sl_fwd_seq_t *f = &plan.fwd[k];
        ereq_t *r = sched_seq_ud(plan.seqs[k]);
        if (f->pos < r->n_prompt) {
            uint32_t end = f->pos + f->n_tokens;
            e->prompt_computed += (end < r->n_prompt ? end : r->n_prompt) - f->pos;
        }
        if (!f->want_logits) continue;
        float *lrow = e->logits + (size_t)row++ * e->fwd.vocab_size;
        if (r->cancel_pending) continue;
        e->rows[n_rows++] = (engine_row_t){.r = r, .logits = lrow, .rc = SL_EAGAIN};
    }
    if (n_rows > 1 && e->fwd.parallel_for)
        e->fwd.parallel_for(e->fwd.impl, n_rows, rows_sample_task, e);
    for (uint32_t i = 0; i < n_rows; i++) {
        engine_row_t *w = &e->rows[i];
        if (w->rc == SL_EAGAIN) row_sample(e, w, e->sampler);
        /* A callback of an earlier row may have cancelled this one. */
        if (w->r->cancel_pending) continue;
        row_take(e, w);
    }
done:
    e->in_step = false;
    process_pending_cancels(e);
    rc = (int)e->n_active;
out:
    return rc;
}

void engine_stats_get(const engine_t *e, engine_stats_t *out) {
    sched_stats_t ss;
    sched_stats_get(e->sched, &ss);
    *out = (engine_stats_t){.active = e->n_active,
                            .running = ss.running,
                            .waiting = ss.waiting,
                            .pending_prefill_tokens = ss.pending_prefill_tokens,
                            .steps = ss.steps,
                            .preemptions = ss.preemptions,
                            .prompt_tokens_computed = e->prompt_computed,
                            .prompt_tokens_adopted = e->prompt_adopted,
                            .adopting = e->n_parked,
                            .held = e->n_held,
                            .orphans = e->n_orphans,
                            .generated_tokens = e->generated};
    kvpool_stats_get(e->pool, &out->kv);
}
