/* test_engine.c - the engine end to end on the fake forward: batched ==
 * sequential == reference, prefix hit == cold, preemption == none, chunked
 * == single-shot, seeded sampling stable under all of these, cancellation,
 * stop conditions (EOS, ids, strings across tokens, min_tokens, lengths),
 * forward failures and bad requests. The "detok" case checks the text of
 * engines with a tokenizer against sl_tokenizer_decode (itself verified
 * against HF) on real tokenizers, with a scripted forward that makes the
 * engine generate chosen id sequences. */
#include "common/base/err.h"
#include "common/engine/detok.h"
#include "common/engine/engine.h"
#include "common/engine/tokenizer.h"
#include "common/engine/utf8.h"
#include "kernels/cpu/threadpool.h"
#include "tests/harness/harness.h"
#include "tests/unit/engine_fake.h"

#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define VOCAB  50
#define MAXOUT 256

typedef struct collect {
    uint32_t tokens[MAXOUT];
    float logprobs[MAXOUT];
    uint32_t n, outputs;
    char text[4096];
    size_t text_len;
    engine_finish_t finish;
    int error;
    char stop_str[64];
    uint32_t prompt_tokens, cached_tokens, completion_tokens;
    engine_t *cancel_in_cb; /* cancel self after this many tokens */
    uint32_t cancel_after;
    const char *cancel_id;
} collect_t;

static void on_output(const engine_output_t *o, void *ud) {
    collect_t *c = ud;
    ck_assert_int_eq(c->finish, ENGINE_FINISH_NONE); /* nothing after the final output */
    c->outputs++;
    for (uint32_t i = 0; i < o->n_tokens && c->n < MAXOUT; i++) {
        c->logprobs[c->n] = o->logprobs ? o->logprobs[i].logprob : 1.0f;
        c->tokens[c->n++] = o->tokens[i];
    }
    if (o->text_len) {
        ck_assert_uint_lt(c->text_len + o->text_len, sizeof c->text);
        memcpy(c->text + c->text_len, o->text, o->text_len);
        c->text_len += o->text_len;
    }
    c->finish = o->finish;
    c->error = o->error;
    if (o->stop_str) snprintf(c->stop_str, sizeof c->stop_str, "%s", o->stop_str);
    c->prompt_tokens = o->prompt_tokens;
    c->cached_tokens = o->cached_tokens;
    c->completion_tokens = o->completion_tokens;
    if (c->cancel_in_cb && o->finish == ENGINE_FINISH_NONE && c->n == c->cancel_after)
        ck_assert_int_eq(engine_cancel(c->cancel_in_cb, c->cancel_id), 0);
    if (c->cancel_in_cb && o->finish != ENGINE_FINISH_NONE) /* too late: already ending */
        ck_assert_int_eq(engine_cancel(c->cancel_in_cb, c->cancel_id), SL_ENOTFOUND);
}

/* Two letters per token, so stop strings can straddle tokens. */
static char tok_text[VOCAB][3];
static int token_bytes(void *ud, uint32_t t, const char **b, size_t *n) {
    (void)ud;
    if (t >= VOCAB) return SL_EINVAL;
    tok_text[t][0] = (char)('a' + t % 5);
    tok_text[t][1] = (char)('a' + (t / 5) % 5);
    *b = tok_text[t];
    *n = 2;
    return 0;
}

static uint32_t argmax_row(const float *r) {
    uint32_t b = 0;
    for (uint32_t i = 1; i < VOCAB; i++)
        if (r[i] > r[b]) b = i;
    return b;
}

static void ref_generate(const uint32_t *prompt, uint32_t np, uint32_t n, uint32_t *out) {
    uint32_t *h = malloc((np + n) * sizeof *h);
    float row[VOCAB];
    memcpy(h, prompt, np * sizeof *h);
    for (uint32_t i = 0; i < n; i++) {
        fake_ref_logits(h, np + i, VOCAB, row);
        h[np + i] = out[i] = argmax_row(row);
    }
    free(h);
}

typedef struct spec {
    uint32_t prompt[200], np;
    uint32_t max_tokens;
    float temperature; /* 0 greedy, else seeded top-k sampling */
    uint64_t seed;
    int variant; /* 0: as above; 1..5: other sampling params (make_req) */
} spec_t;

static void make_specs(spec_t *sp, int n, unsigned seed, bool sampled) {
    srand(seed);
    uint32_t shared[64];
    for (int i = 0; i < 64; i++) shared[i] = (uint32_t)rand() % VOCAB;
    for (int k = 0; k < n; k++) {
        sp[k].np = 1 + (uint32_t)rand() % 60;
        uint32_t common = (uint32_t)rand() % (sp[k].np + 1);
        for (uint32_t i = 0; i < sp[k].np; i++)
            sp[k].prompt[i] = i < common ? shared[i] : (uint32_t)rand() % VOCAB;
        sp[k].max_tokens = 1 + (uint32_t)rand() % 30;
        sp[k].temperature = sampled ? 0.8f : 0.0f;
        sp[k].seed = 1000 + (uint64_t)k;
        sp[k].variant = 0;
    }
}

static const uint32_t stop_id_7 = 7;

static engine_request_t make_req(const spec_t *sp, char *id, collect_t *c) {
    engine_request_t r = {
        .id = id, .prompt = sp->prompt, .n_prompt = sp->np, .on_output = on_output, .ud = c};
    r.sampling.temperature = sp->temperature;
    r.sampling.top_k = 10;
    r.sampling.has_seed = true;
    r.sampling.seed = sp->seed;
    r.sampling.logprobs = true;
    r.stop.max_tokens = sp->max_tokens;
    switch (sp->variant) {
    case 1: /* greedy without logprobs: the fast path */
        r.sampling.temperature = 0;
        r.sampling.logprobs = false;
        break;
    case 2: /* top-p and min-p, top logprobs */
        r.sampling.top_k = 0;
        r.sampling.top_p = 0.9f;
        r.sampling.min_p = 0.05f;
        r.sampling.top_logprobs = 3;
        break;
    case 3: /* penalties over the history */
        r.sampling.repetition_penalty = 1.3f;
        r.sampling.frequency_penalty = 0.4f;
        r.sampling.presence_penalty = 0.2f;
        break;
    case 4: /* min_tokens masks the stop id in the row before the draw */
        r.sampling.top_k = 0;
        r.stop.min_tokens = r.stop.max_tokens / 2;
        r.stop.stop_token_ids = &stop_id_7;
        r.stop.n_stop_token_ids = 1;
        break;
    case 5: /* plain temperature over the whole vocabulary */
        r.sampling.top_k = 0;
        r.sampling.temperature = 1.3f;
        break;
    default:
        break;
    }
    return r;
}

typedef struct run_cfg {
    uint32_t n_blocks, block_size, max_batch_tokens, max_seqs;
    bool sequential;        /* one request at a time, fresh engine each */
    bool twice;             /* run every request twice on the same engine (cache hits) */
    int pool_threads;       /* > 0: the forward lends a thread pool of this size for sampling */
    uint32_t claim_workers; /* n_workers the forward announces (0: pool_threads) */
} run_cfg_t;

/* The fake forward's parallel_for: a real kernel thread pool (one at a
 * time; the engine calls it from the test's thread only). */
static sl_cpu_pool_t *pfor_pool;
static uint32_t pfor_calls;

typedef struct pfor_arg {
    void (*fn)(void *arg, uint32_t begin, uint32_t end, uint32_t worker);
    void *arg;
} pfor_arg_t;

static void pfor_task(void *arg, size_t b, size_t e, int tid) {
    const pfor_arg_t *p = arg;
    p->fn(p->arg, (uint32_t)b, (uint32_t)e, (uint32_t)tid);
}

static void fake_parallel_for(void *impl, uint32_t n,
                              void (*fn)(void *arg, uint32_t begin, uint32_t end, uint32_t worker),
                              void *arg) {
    (void)impl;
    pfor_arg_t p = {.fn = fn, .arg = arg};
    pfor_calls++;
    sl_cpu_pool_for(pfor_pool, n, 1, pfor_task, &p);
}

/* Runs specs through an engine; fills collects; returns total preemptions. */
static uint64_t run_specs(const spec_t *sp, int n, collect_t *out, run_cfg_t cfg,
                          uint32_t *cached_total) {
    uint64_t preempt = 0;
    *cached_total = 0;
    int groups = cfg.sequential ? n : 1;
    for (int g = 0; g < groups; g++) {
        fake_fwd_t ff;
        ck_assert_int_eq(fake_init(&ff, VOCAB, cfg.block_size, cfg.n_blocks), 0);
        if (cfg.pool_threads > 0) {
            pfor_pool = sl_cpu_pool_create(cfg.pool_threads);
            ck_assert_ptr_nonnull(pfor_pool);
            ff.f.parallel_for = fake_parallel_for;
            ff.f.n_workers = cfg.claim_workers ? cfg.claim_workers : (uint32_t)cfg.pool_threads;
        }
        engine_opts_t o = {.max_batch_tokens = cfg.max_batch_tokens,
                           .max_seqs = cfg.max_seqs,
                           .watermark_blocks = 1};
        engine_t *e = engine_new(&ff.f, &o);
        ck_assert_ptr_nonnull(e);
        int lo = cfg.sequential ? g : 0, hi = cfg.sequential ? g + 1 : n;
        for (int pass = 0; pass < (cfg.twice ? 2 : 1); pass++) {
            for (int k = lo; k < hi; k++) {
                char id[32];
                snprintf(id, sizeof id, "r%d", k);
                memset(&out[k], 0, sizeof out[k]);
                engine_request_t r = make_req(&sp[k], id, &out[k]);
                ck_assert_int_eq(engine_add(e, &r), 0);
            }
            int guard = 0, rc;
            while ((rc = engine_step(e)) > 0) ck_assert_int_lt(guard++, 100000);
            ck_assert_int_eq(rc, 0);
            for (int k = lo; k < hi; k++) *cached_total += out[k].cached_tokens;
        }
        engine_stats_t st;
        engine_stats_get(e, &st);
        preempt += st.preemptions;
        ck_assert_uint_eq(st.kv.used, 0);
        ck_assert_int_eq(ff.bad, 0);
        engine_free(e);
        fake_destroy(&ff);
        sl_cpu_pool_free(pfor_pool);
        pfor_pool = NULL;
    }
    return preempt;
}

static void assert_same(const collect_t *a, const collect_t *b, int n) {
    for (int k = 0; k < n; k++) {
        ck_assert_uint_eq(a[k].n, b[k].n);
        ck_assert_mem_eq(a[k].tokens, b[k].tokens, a[k].n * sizeof(uint32_t));
        ck_assert_mem_eq(a[k].logprobs, b[k].logprobs, a[k].n * sizeof(float));
        ck_assert_int_eq(a[k].finish, b[k].finish);
    }
}

#define NREQ 12

START_TEST(test_batched_equals_sequential_equals_reference) {
    static spec_t sp[NREQ];
    static collect_t batched[NREQ], seq[NREQ];
    make_specs(sp, NREQ, 1, false);
    uint32_t cached;
    run_cfg_t big = {.n_blocks = 256, .block_size = 4, .max_batch_tokens = 64};
    run_specs(sp, NREQ, batched, big, &cached);
    big.sequential = true;
    run_specs(sp, NREQ, seq, big, &cached);
    assert_same(batched, seq, NREQ);
    for (int k = 0; k < NREQ; k++) {
        uint32_t ref[64];
        ref_generate(sp[k].prompt, sp[k].np, sp[k].max_tokens, ref);
        ck_assert_uint_eq(batched[k].n, sp[k].max_tokens);
        ck_assert_mem_eq(batched[k].tokens, ref, sp[k].max_tokens * sizeof *ref);
        ck_assert_int_eq(batched[k].finish, ENGINE_FINISH_LENGTH);
        ck_assert_uint_eq(batched[k].completion_tokens, sp[k].max_tokens);
        ck_assert_uint_eq(batched[k].prompt_tokens, sp[k].np);
        ck_assert_uint_eq(batched[k].outputs, sp[k].max_tokens);
    }
}
END_TEST

static void equivalences(bool sampled) {
    static spec_t sp[NREQ];
    static collect_t cold[NREQ], warm[NREQ], tiny[NREQ], chunked[NREQ];
    for (unsigned seed = 2; seed < 8; seed++) {
        make_specs(sp, NREQ, seed, sampled);
        uint32_t cached;
        uint32_t bs = 1 + seed % 5;
        run_cfg_t cfg = {.n_blocks = 1024, .block_size = bs, .max_batch_tokens = 4096};
        run_specs(sp, NREQ, cold, cfg, &cached);
        /* Prefix hits: the second pass of the same requests reuses blocks. */
        cfg.twice = true;
        run_specs(sp, NREQ, warm, cfg, &cached);
        ck_assert_uint_gt(cached, 0);
        assert_same(cold, warm, NREQ);
        /* Preemption: a pool that holds about two sequences. */
        run_cfg_t small = {.n_blocks = 96 / bs,
                           .block_size = bs,
                           .max_batch_tokens = 4096,
                           .max_seqs = seed % 2 ? 0 : 5};
        ck_assert_uint_gt(run_specs(sp, NREQ, tiny, small, &cached), 0);
        assert_same(cold, tiny, NREQ);
        /* Chunked prefill: a few tokens per step. */
        run_cfg_t ch = {.n_blocks = 2048, .block_size = bs + 1, .max_batch_tokens = 1 + seed % 4};
        run_specs(sp, NREQ, chunked, ch, &cached);
        assert_same(cold, chunked, NREQ);
    }
}

START_TEST(test_prefix_preempt_chunked_equal_cold_greedy) {
    equivalences(false);
}
END_TEST

START_TEST(test_prefix_preempt_chunked_equal_cold_seeded_sampling) {
    equivalences(true);
}
END_TEST

/* Rows drawn on a thread pool: the same tokens and logprobs with no pool,
 * and pools of 1, 2 and 4 threads, for every kind of draw (greedy fast
 * path, top-k / top-p / min-p, penalties, min_tokens masking, plain
 * temperature), batched and with preemption; also when the forward names
 * fewer workers than its pool has (the extra threads leave their rows to
 * the engine thread). */
START_TEST(test_parallel_sampling_same_on_any_thread_count) {
    enum { N = 18 };
    static spec_t sp[N];
    static collect_t base[N], got[N];
    make_specs(sp, N, 21, true);
    for (int k = 0; k < N; k++) sp[k].variant = k % 6;
    uint32_t cached;
    run_cfg_t cfg = {.n_blocks = 1024, .block_size = 4, .max_batch_tokens = 4096};
    run_specs(sp, N, base, cfg, &cached);
    for (int k = 0; k < N; k++) ck_assert_uint_eq(base[k].n, sp[k].max_tokens);
    static const int threads[] = {1, 2, 4};
    for (size_t ti = 0; ti < 3; ti++) {
        cfg.pool_threads = threads[ti];
        pfor_calls = 0;
        run_specs(sp, N, got, cfg, &cached);
        ck_assert_uint_gt(pfor_calls, 0);
        assert_same(base, got, N);
    }
    cfg.pool_threads = 4;
    cfg.claim_workers = 1;
    run_specs(sp, N, got, cfg, &cached);
    assert_same(base, got, N);
    /* preemption and chunked prefill with the pool */
    run_cfg_t small = {.n_blocks = 24, .block_size = 4, .max_batch_tokens = 7, .pool_threads = 2};
    ck_assert_uint_gt(run_specs(sp, N, got, small, &cached), 0);
    assert_same(base, got, N);
}
END_TEST

START_TEST(test_cancel_frees_blocks) {
    fake_fwd_t ff;
    fake_init(&ff, VOCAB, 4, 64);
    engine_t *e = engine_new(&ff.f, NULL);
    static spec_t sp[3];
    make_specs(sp, 3, 3, false);
    collect_t c[3] = {0};
    for (int k = 0; k < 3; k++) sp[k].max_tokens = 50;
    char *ids[] = {"a", "b", "c"};
    for (int k = 0; k < 3; k++) {
        engine_request_t r = make_req(&sp[k], ids[k], &c[k]);
        ck_assert_int_eq(engine_add(e, &r), 0);
    }
    c[2].cancel_in_cb = e; /* c cancels itself from its callback after 3 tokens */
    c[2].cancel_after = 3;
    c[2].cancel_id = "c";
    for (int i = 0; i < 5; i++) ck_assert_int_ge(engine_step(e), 0);
    ck_assert_int_eq(c[2].finish, ENGINE_FINISH_CANCELLED);
    ck_assert_uint_eq(c[2].n, 3);
    c[0].cancel_in_cb = e; /* its final callback tries to cancel it again */
    c[0].cancel_after = 1000;
    c[0].cancel_id = "a";
    ck_assert_int_eq(engine_cancel(e, "a"), 0);
    ck_assert_int_eq(c[0].finish, ENGINE_FINISH_CANCELLED);
    ck_assert_int_eq(engine_cancel(e, "a"), SL_ENOTFOUND);
    ck_assert_int_eq(engine_cancel(e, "b"), 0);
    ck_assert_uint_eq(engine_active(e), 0);
    engine_stats_t st;
    engine_stats_get(e, &st);
    ck_assert_uint_eq(st.kv.used, 0);
    ck_assert_uint_eq(st.kv.free + st.kv.cached, 64);
    /* A waiting request can be cancelled too. */
    engine_request_t r = make_req(&sp[0], "w", &c[0]);
    memset(&c[0], 0, sizeof c[0]);
    ck_assert_int_eq(engine_add(e, &r), 0);
    ck_assert_int_eq(engine_cancel(e, "w"), 0);
    ck_assert_int_eq(c[0].finish, ENGINE_FINISH_CANCELLED);
    ck_assert_int_eq(engine_step(e), 0);
    engine_free(e);
    fake_destroy(&ff);
}
END_TEST

/* Generates without stops to learn the greedy continuation of a prompt. */
static void baseline(engine_t *e, const spec_t *sp, collect_t *c) {
    memset(c, 0, sizeof *c);
    engine_request_t r = make_req(sp, "base", c);
    ck_assert_int_eq(engine_add(e, &r), 0);
    while (engine_step(e) > 0) {
    }
}

START_TEST(test_stop_conditions) {
    fake_fwd_t ff;
    fake_init(&ff, VOCAB, 4, 128);
    static spec_t sp[1];
    make_specs(sp, 1, 4, false);
    sp[0].max_tokens = 40;
    collect_t base;
    {
        engine_opts_t o = {.token_bytes = token_bytes};
        engine_t *e = engine_new(&ff.f, &o);
        baseline(e, &sp[0], &base);
        engine_free(e);
    }
    ck_assert_uint_eq(base.n, 40);
    ck_assert_uint_eq(base.text_len, 80);
    /* EOS = the 6th generated token: stop there (first occurrence), no text for it. */
    uint32_t eos = base.tokens[5];
    uint32_t first = 0;
    while (base.tokens[first] != eos) first++;
    engine_opts_t o = {.token_bytes = token_bytes, .eos_ids = &eos, .n_eos = 1};
    engine_t *e = engine_new(&ff.f, &o);
    collect_t c = {0};
    engine_request_t r = make_req(&sp[0], "eos", &c);
    ck_assert_int_eq(engine_add(e, &r), 0);
    while (engine_step(e) > 0) {
    }
    ck_assert_int_eq(c.finish, ENGINE_FINISH_STOP);
    ck_assert_uint_eq(c.n, first + 1);
    ck_assert_uint_eq(c.text_len, 2 * first);
    ck_assert_mem_eq(c.text, base.text, c.text_len);
    /* ignore_eos: the full 40. */
    memset(&c, 0, sizeof c);
    r.id = "ign";
    r.stop.ignore_eos = true;
    ck_assert_int_eq(engine_add(e, &r), 0);
    while (engine_step(e) > 0) {
    }
    ck_assert_int_eq(c.finish, ENGINE_FINISH_LENGTH);
    ck_assert_uint_eq(c.n, 40);
    ck_assert_mem_eq(c.tokens, base.tokens, 40 * sizeof(uint32_t));
    /* min_tokens past the EOS: EOS is masked out, so tokens differ after it,
     * and the stream is at least min_tokens long. */
    memset(&c, 0, sizeof c);
    r.id = "min";
    r.stop.ignore_eos = false;
    r.stop.min_tokens = first + 3;
    ck_assert_int_eq(engine_add(e, &r), 0);
    while (engine_step(e) > 0) {
    }
    ck_assert_uint_ge(c.n, first + 3);
    for (uint32_t i = 0; i < first + 3 && i < c.n; i++) ck_assert_uint_ne(c.tokens[i], eos);
    /* A stop token id behaves like EOS. */
    uint32_t sid = base.tokens[7];
    uint32_t sfirst = 0;
    while (base.tokens[sfirst] != sid) sfirst++;
    memset(&c, 0, sizeof c);
    r.id = "sid";
    r.stop.min_tokens = 0;
    r.stop.ignore_eos = true;
    r.stop.stop_token_ids = &sid;
    r.stop.n_stop_token_ids = 1;
    ck_assert_int_eq(engine_add(e, &r), 0);
    while (engine_step(e) > 0) {
    }
    ck_assert_int_eq(c.finish, ENGINE_FINISH_STOP);
    ck_assert_uint_eq(c.n, sfirst + 1);
    engine_free(e);

    /* Stop string straddling tokens: 3 bytes starting mid-token. */
    o = (engine_opts_t){.token_bytes = token_bytes};
    e = engine_new(&ff.f, &o);
    char stop[4];
    memcpy(stop, base.text + 21, 3);
    stop[3] = 0;
    const char *found = memmem(base.text, base.text_len, stop, 3);
    size_t at = (size_t)(found - base.text);
    const char *stops[] = {"zzzz", stop};
    memset(&c, 0, sizeof c);
    r = make_req(&sp[0], "str", &c);
    r.stop.stop = stops;
    r.stop.n_stop = 2;
    ck_assert_int_eq(engine_add(e, &r), 0);
    size_t max_seen_lag = 0;
    while (engine_step(e) > 0) {
        size_t produced = 2 * c.n;
        if (c.finish == ENGINE_FINISH_NONE && produced - c.text_len > max_seen_lag)
            max_seen_lag = produced - c.text_len;
    }
    ck_assert_int_eq(c.finish, ENGINE_FINISH_STOP);
    ck_assert_str_eq(c.stop_str, stop);
    ck_assert_uint_eq(c.text_len, at); /* the match and what follows are not returned */
    ck_assert_mem_eq(c.text, base.text, at);
    ck_assert_uint_eq(c.n, (at + 3 + 1) / 2); /* up to the token completing the match */
    ck_assert_uint_le(max_seen_lag, 3);       /* held back at most len(longest stop) - 1 */
    /* A request that never matches gets all its text. */
    const char *nomatch[] = {"zz"};
    memset(&c, 0, sizeof c);
    r.id = "nomatch";
    r.stop.stop = nomatch;
    r.stop.n_stop = 1;
    ck_assert_int_eq(engine_add(e, &r), 0);
    while (engine_step(e) > 0) {
    }
    ck_assert_uint_eq(c.text_len, 80);
    ck_assert_mem_eq(c.text, base.text, 80);
    engine_free(e);
    fake_destroy(&ff);
}
END_TEST

/* Tokens that are single bytes of multi-byte UTF-8: lead or continuation. */
static const char *utf8_piece[3] = {"\xE2", "\x82", "\xAC"};
static int token_bytes_utf8(void *ud, uint32_t t, const char **b, size_t *n) {
    (void)ud;
    *b = utf8_piece[t % 3];
    *n = 1;
    return 0;
}

typedef struct chunks {
    collect_t c;
    size_t bounds[MAXOUT]; /* text offsets where non-final chunks ended */
    uint32_t n_bounds;
} chunks_t;

static void on_chunk(const engine_output_t *o, void *ud) {
    chunks_t *k = ud;
    on_output(o, &k->c);
    if (o->finish == ENGINE_FINISH_NONE && o->text_len && k->n_bounds < MAXOUT)
        k->bounds[k->n_bounds++] = k->c.text_len;
}

/* True if offset p of s[0, n) falls inside a complete, valid multi-byte
 * sequence (a chunk boundary there would split a character). */
static bool splits_char(const char *s, size_t n, size_t p) {
    for (size_t back = 1; back <= 3 && back <= p; back++) {
        unsigned char c = (unsigned char)s[p - back];
        if ((c & 0xC0) == 0x80) continue;
        size_t len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        if (len <= back || p - back + len > n) return false;
        for (size_t i = 1; i < len; i++)
            if (((unsigned char)s[p - back + i] & 0xC0) != 0x80) return false;
        return true;
    }
    return false;
}

START_TEST(test_text_holds_back_partial_utf8) {
    fake_fwd_t ff;
    fake_init(&ff, VOCAB, 4, 128);
    engine_opts_t o = {.token_bytes = token_bytes_utf8};
    engine_t *e = engine_new(&ff.f, &o);
    static spec_t sp[4];
    make_specs(sp, 4, 9, false);
    for (int k = 0; k < 4; k++) {
        chunks_t ch = {0};
        sp[k].max_tokens = 60;
        engine_request_t r = make_req(&sp[k], "u", &ch.c);
        r.on_output = on_chunk;
        r.ud = &ch;
        ck_assert_int_eq(engine_add(e, &r), 0);
        while (engine_step(e) > 0) {
        }
        for (uint32_t i = 0; i < ch.n_bounds; i++)
            ck_assert_msg(!splits_char(ch.c.text, ch.c.text_len, ch.bounds[i]),
                          "chunk boundary at %zu splits a character", ch.bounds[i]);
        ck_assert_uint_gt(ch.n_bounds, 10);
        /* Nothing lost: the text is every token's byte, in order. */
        ck_assert_uint_eq(ch.c.text_len, ch.c.n);
        for (uint32_t i = 0; i < ch.c.n; i++)
            ck_assert_int_eq(ch.c.text[i], utf8_piece[ch.c.tokens[i] % 3][0]);
    }
    engine_free(e);
    fake_destroy(&ff);
}
END_TEST

START_TEST(test_context_length_and_max_context) {
    fake_fwd_t ff;
    fake_init(&ff, VOCAB, 4, 64);
    engine_opts_t o = {.max_context = 20};
    engine_t *e = engine_new(&ff.f, &o);
    static spec_t sp[1];
    make_specs(sp, 1, 5, false);
    sp[0].np = 15;
    sp[0].max_tokens = 0; /* up to the context */
    collect_t c = {0};
    engine_request_t r = make_req(&sp[0], "ctx", &c);
    ck_assert_int_eq(engine_add(e, &r), 0);
    while (engine_step(e) > 0) {
    }
    ck_assert_int_eq(c.finish, ENGINE_FINISH_LENGTH);
    ck_assert_uint_eq(c.n, 5);
    sp[0].np = 20;
    r = make_req(&sp[0], "long", &c);
    ck_assert_int_eq(engine_add(e, &r), SL_ERANGE);
    engine_free(e);
    fake_destroy(&ff);
}
END_TEST

START_TEST(test_forward_failure_fails_requests) {
    fake_fwd_t ff;
    fake_init(&ff, VOCAB, 4, 64);
    ff.fail_at_step = 3;
    engine_t *e = engine_new(&ff.f, NULL);
    static spec_t sp[2];
    make_specs(sp, 2, 6, false);
    collect_t c[2] = {0};
    engine_request_t r0 = make_req(&sp[0], "x", &c[0]), r1 = make_req(&sp[1], "y", &c[1]);
    r0.stop.max_tokens = r1.stop.max_tokens = 10;
    engine_add(e, &r0);
    engine_add(e, &r1);
    while (engine_step(e) > 0) {
    }
    ck_assert_int_eq(c[0].finish, ENGINE_FINISH_ERROR);
    ck_assert_int_eq(c[0].error, SL_EDEVICE);
    ck_assert_int_eq(c[1].finish, ENGINE_FINISH_ERROR);
    engine_stats_t st;
    engine_stats_get(e, &st);
    ck_assert_uint_eq(st.kv.used, 0);
    engine_free(e);
    fake_destroy(&ff);
}
END_TEST

static int n_stored_events;
static void on_kv(const kvpool_event_t *ev, void *ud) {
    (void)ud;
    if (ev->kind == KVPOOL_EVENT_STORED) n_stored_events++;
}

START_TEST(test_kv_events_and_salt) {
    fake_fwd_t ff;
    fake_init(&ff, VOCAB, 4, 64);
    engine_opts_t o = {.kv_event = on_kv};
    engine_t *e = engine_new(&ff.f, &o);
    static spec_t sp[1];
    make_specs(sp, 1, 7, false);
    sp[0].np = 17;
    sp[0].max_tokens = 8;
    collect_t c = {0};
    engine_request_t r = make_req(&sp[0], "k", &c);
    n_stored_events = 0;
    engine_add(e, &r);
    while (engine_step(e) > 0) {
    }
    ck_assert_int_gt(n_stored_events, 0);
    kvpool_cached_t *d;
    size_t n;
    ck_assert_int_eq(kvpool_dump(engine_pool(e), &d, &n, NULL), 0);
    ck_assert_uint_eq(n, (17 + 8 - 1) / 4); /* every full computed block */
    free(d);
    engine_free(e);
    fake_destroy(&ff);
}
END_TEST

/* A migrated request (prompt + tokens already sent, reduced budget) continues
 * exactly as the unbroken run, penalties included. */
START_TEST(test_migration_prior_output) {
    fake_fwd_t ff;
    fake_init(&ff, VOCAB, 4, 256);
    engine_t *e = engine_new(&ff.f, NULL);
    static spec_t sp[1];
    make_specs(sp, 1, 11, false);
    sp[0].max_tokens = 30;
    collect_t full = {0}, rest = {0}, naive = {0};
    engine_request_t r = make_req(&sp[0], "full", &full);
    r.sampling.frequency_penalty = 1.5f;
    r.sampling.presence_penalty = 0.5f;
    ck_assert_int_eq(engine_add(e, &r), 0);
    while (engine_step(e) > 0) {
    }
    ck_assert_uint_eq(full.n, 30);
    uint32_t k = 12, mp[256];
    memcpy(mp, sp[0].prompt, sp[0].np * sizeof *mp);
    memcpy(mp + sp[0].np, full.tokens, k * sizeof *mp);
    engine_request_t m = r;
    m.id = "migrated";
    m.prompt = mp;
    m.n_prompt = sp[0].np + k;
    m.n_prior_output = k;
    m.stop.max_tokens = 30 - k;
    m.ud = &rest;
    ck_assert_int_eq(engine_add(e, &m), 0);
    while (engine_step(e) > 0) {
    }
    ck_assert_uint_eq(rest.n, 30 - k);
    ck_assert_mem_eq(rest.tokens, full.tokens + k, (30 - k) * sizeof(uint32_t));
    /* Without n_prior_output the penalties differ, and so do the tokens. */
    m.id = "naive";
    m.n_prior_output = 0;
    m.ud = &naive;
    ck_assert_int_eq(engine_add(e, &m), 0);
    while (engine_step(e) > 0) {
    }
    ck_assert(memcmp(naive.tokens, full.tokens + k, (30 - k) * sizeof(uint32_t)) != 0);
    m.n_prior_output = m.n_prompt; /* must leave a prompt */
    ck_assert_int_eq(engine_add(e, &m), SL_EINVAL);
    engine_free(e);
    fake_destroy(&ff);
}
END_TEST

/* ---- submissions from another thread ---- */

#define NSUB 40
typedef struct producer {
    engine_t *e;
    spec_t *sp;
    collect_t *c;
    char ids[NSUB + 1][16];
    int submit_rc;
} producer_t;

static void *producer_main(void *arg) {
    producer_t *p = arg;
    for (int k = 0; k < NSUB; k++) {
        snprintf(p->ids[k], sizeof p->ids[k], "s%d", k);
        char stack_id[16]; /* the engine must copy everything */
        memcpy(stack_id, p->ids[k], sizeof stack_id);
        uint32_t prompt[200];
        memcpy(prompt, p->sp[k].prompt, p->sp[k].np * sizeof *prompt);
        spec_t tmp = p->sp[k];
        engine_request_t r = make_req(&tmp, stack_id, &p->c[k]);
        r.prompt = prompt;
        int rc = engine_submit(p->e, &r);
        memset(prompt, 0xff, sizeof prompt);
        memset(stack_id, 'x', sizeof stack_id - 1);
        if (rc && !p->submit_rc) p->submit_rc = rc;
        if (k % 4 == 3) engine_submit_cancel(p->e, p->ids[k]); /* right after its add */
        if (k % 7 == 0) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
    /* A duplicate of an id that may still be active, and a malformed one. */
    engine_request_t dup = make_req(&p->sp[0], "s1", &p->c[NSUB]);
    engine_submit(p->e, &dup);
    engine_request_t bad = dup;
    bad.prompt = NULL;
    if (engine_submit(p->e, &bad) != SL_EINVAL) p->submit_rc = -1;
    engine_wake(p->e);
    return NULL;
}

START_TEST(test_submit_from_another_thread) {
    fake_fwd_t ff;
    fake_init(&ff, VOCAB, 4, 512);
    engine_t *e = engine_new(&ff.f, NULL);
    static spec_t sp[NSUB];
    static collect_t c[NSUB + 1];
    memset(c, 0, sizeof c);
    make_specs(sp, NSUB, 12, false);
    static producer_t p;
    p = (producer_t){.e = e, .sp = sp, .c = c};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, producer_main, &p), 0);
    int done = 0, guard = 0;
    while (done < NSUB + 1 && guard++ < 200000) {
        engine_wait(e, 20);
        ck_assert_int_ge(engine_step(e), 0);
        done = 0;
        for (int k = 0; k <= NSUB; k++) done += c[k].finish != ENGINE_FINISH_NONE;
    }
    pthread_join(th, NULL);
    ck_assert_int_eq(p.submit_rc, 0);
    ck_assert_int_eq(done, NSUB + 1);
    for (int k = 0; k < NSUB; k++) {
        uint32_t ref[64];
        ref_generate(sp[k].prompt, sp[k].np, sp[k].max_tokens, ref);
        /* A cancel queued right after its add lands before or after some
         * steps: the request ends cancelled with a prefix of the tokens, or
         * finished first. */
        if (k % 4 == 3 && c[k].finish == ENGINE_FINISH_CANCELLED) {
            ck_assert_uint_lt(c[k].n, sp[k].max_tokens);
        } else {
            ck_assert_int_eq(c[k].finish, ENGINE_FINISH_LENGTH);
            ck_assert_uint_eq(c[k].n, sp[k].max_tokens);
        }
        ck_assert_mem_eq(c[k].tokens, ref, c[k].n * sizeof *ref);
    }
    /* The duplicate either ran (s1 was done by then) or was refused. */
    ck_assert(c[NSUB].finish == ENGINE_FINISH_LENGTH ||
              (c[NSUB].finish == ENGINE_FINISH_ERROR && c[NSUB].error == SL_EEXIST));
    /* Idle: wait times out, a wake returns at once. */
    ck_assert_int_eq(engine_wait(e, 10), 0);
    engine_wake(e);
    ck_assert_int_eq(engine_wait(e, 10000), 1);
    /* Queued submissions die with the engine without callbacks. */
    engine_request_t r = make_req(&sp[0], "late", &c[0]);
    ck_assert_int_eq(engine_submit(e, &r), 0);
    engine_free(e);
    fake_destroy(&ff);
}
END_TEST

START_TEST(test_bad_requests) {
    fake_fwd_t ff;
    fake_init(&ff, VOCAB, 4, 64);
    ck_assert_ptr_null(engine_new(NULL, NULL));
    sl_forward_t bad = ff.f;
    bad.block_size = 0;
    ck_assert_ptr_null(engine_new(&bad, NULL));
    engine_free(NULL);
    engine_t *e = engine_new(&ff.f, NULL);
    uint32_t p[3] = {1, 2, 3}, oov[2] = {1, VOCAB};
    collect_t c = {0};
    engine_request_t r = {.id = "a", .prompt = p, .n_prompt = 3, .on_output = on_output, .ud = &c};
    ck_assert_int_eq(engine_add(e, &r), 0);
    ck_assert_int_eq(engine_add(e, &r), SL_EEXIST);
    r.id = "";
    ck_assert_int_eq(engine_add(e, &r), SL_EINVAL);
    char longid[300];
    memset(longid, 'x', sizeof longid - 1);
    longid[299] = 0;
    r.id = longid;
    ck_assert_int_eq(engine_add(e, &r), SL_EINVAL);
    r.id = "b";
    r.n_prompt = 0;
    ck_assert_int_eq(engine_add(e, &r), SL_EINVAL);
    r.prompt = oov;
    r.n_prompt = 2;
    ck_assert_int_eq(engine_add(e, &r), SL_EINVAL);
    r.prompt = p;
    r.n_prompt = 3;
    r.sampling.temperature = -2;
    ck_assert_int_eq(engine_add(e, &r), SL_EINVAL);
    r.sampling.temperature = 0;
    const char *stops[] = {"x"};
    r.stop.stop = stops;
    r.stop.n_stop = 1; /* no token_bytes callback */
    ck_assert_int_eq(engine_add(e, &r), SL_EINVAL);
    ck_assert_uint_eq(engine_active(e), 1);
    engine_free(e); /* frees the active request without callbacks */
    fake_destroy(&ff);
}
END_TEST

/* ---- text through the tokenizer (detok) ------------------------------------------ */

/* A forward whose greedy choice is script[pos]: it makes the engine generate
 * exactly script[n_prompt ..] after a prompt of script[0, n_prompt). One
 * request at a time. */
typedef struct script_fwd {
    sl_forward_t f;
    const uint32_t *script; /* (n_script) prompt followed by the output */
    uint32_t n_script;
} script_fwd_t;

static int script_step(void *impl, const sl_fwd_batch_t *b) {
    script_fwd_t *sf = impl;
    uint32_t row = 0, vocab = sf->f.vocab_size;
    for (uint32_t i = 0; i < b->n_seqs; i++) {
        const sl_fwd_seq_t *q = &b->seqs[i];
        if (!q->want_logits) continue;
        float *l = b->logits + (size_t)row++ * vocab; /* (vocab) */
        memset(l, 0, (size_t)vocab * sizeof *l);
        uint32_t at = q->pos + q->n_tokens;
        l[at < sf->n_script ? sf->script[at] : 0] = 1.0f;
    }
    return 0;
}

static void script_init(script_fwd_t *sf, uint32_t vocab) {
    memset(sf, 0, sizeof *sf);
    sf->f = (sl_forward_t){
        .impl = sf, .vocab_size = vocab, .block_size = 16, .n_blocks = 64, .step = script_step};
}

typedef struct tcollect {
    char *text; /* (len, cap) */
    size_t len, cap;
    uint32_t n_tokens, chunks_invalid;
    engine_finish_t finish;
    char stop_str[64];
} tcollect_t;

static void on_text(const engine_output_t *o, void *ud) {
    tcollect_t *c = ud;
    ck_assert_int_eq(c->finish, ENGINE_FINISH_NONE);
    c->n_tokens += o->n_tokens;
    ck_assert_ptr_nonnull(o->text);
    if (!sl_utf8_valid((const uint8_t *)o->text, o->text_len)) c->chunks_invalid++;
    if (c->len + o->text_len + 1 > c->cap) {
        c->cap = (c->len + o->text_len + 1) * 2;
        c->text = realloc(c->text, c->cap);
        ck_assert_ptr_nonnull(c->text);
    }
    memcpy(c->text + c->len, o->text, o->text_len);
    c->len += o->text_len;
    c->text[c->len] = 0;
    c->finish = o->finish;
    if (o->stop_str) snprintf(c->stop_str, sizeof c->stop_str, "%s", o->stop_str);
}

/* Generates script[np, n) after the prompt script[0, np) through an engine
 * with tokenizer t; fills c. */
static void gen_text(const sl_tokenizer_t *t, const uint32_t *script, uint32_t np, uint32_t n,
                     const char *stop, bool keep_special, tcollect_t *c) {
    script_fwd_t sf;
    script_init(&sf, sl_tokenizer_vocab_size(t) + 8); /* 8 ids with no token */
    sf.script = script;
    sf.n_script = n;
    engine_opts_t o = {.tokenizer = t};
    engine_t *e = engine_new(&sf.f, &o);
    ck_assert_ptr_nonnull(e);
    memset(c, 0, sizeof *c);
    engine_request_t r = {.id = "t",
                          .prompt = script,
                          .n_prompt = np,
                          .on_output = on_text,
                          .ud = c,
                          .keep_special = keep_special};
    r.stop.max_tokens = n - np;
    r.stop.ignore_eos = true;
    const char *stops[1] = {stop};
    if (stop) {
        r.stop.stop = stops;
        r.stop.n_stop = 1;
    }
    ck_assert_int_eq(engine_add(e, &r), 0);
    int rc, guard = 0;
    while ((rc = engine_step(e)) > 0) ck_assert_int_lt(guard++, 10000);
    ck_assert_int_eq(rc, 0);
    ck_assert_uint_eq(c->chunks_invalid, 0);
    engine_free(e);
}

/* decode(ids[0, n)) (malloc'd, *len bytes: may hold NULs). */
static char *decode_ids(const sl_tokenizer_t *t, const uint32_t *ids, size_t n, bool skip,
                        size_t *len) {
    char *s = NULL;
    ck_assert_int_eq(sl_tokenizer_decode(t, ids, n, skip, &s, len), 0);
    return s;
}

/* Ids worth mixing into random sequences: those whose bytes are not valid
 * UTF-8 alone (byte-fallback <0xNN>, byte-level pieces of characters),
 * the ids of a multilingual snippet, and BOS / EOS. */
typedef struct idpool {
    uint32_t *partial, n_partial;
    uint32_t *text, n_text;
    uint32_t special[2], n_special;
} idpool_t;

static void idpool_init(idpool_t *p, const sl_tokenizer_t *t) {
    memset(p, 0, sizeof *p);
    uint32_t v = sl_tokenizer_vocab_size(t);
    p->partial = malloc((size_t)v * sizeof *p->partial);
    ck_assert_ptr_nonnull(p->partial);
    for (uint32_t id = 0; id < v; id++) {
        const uint8_t *b;
        size_t n;
        if (sl_tokenizer_token_bytes(t, id, &b, &n) == 0 && n && !sl_utf8_valid(b, n))
            p->partial[p->n_partial++] = id;
    }
    static const char snippet[] =
        "Hello, world!  The café naïve 你好世界 こんにちは 🙂👍🏽 "
        "\n\tdef f(x):\n    return x**2  # ok\n\xe4\xbd";
    uint32_t *ids = NULL;
    size_t n = 0;
    ck_assert_int_eq(sl_tokenizer_encode(t, snippet, sizeof snippet - 1, false, &ids, &n), 0);
    p->text = ids;
    p->n_text = (uint32_t)n;
    if (sl_tokenizer_bos_id(t) >= 0) p->special[p->n_special++] = (uint32_t)sl_tokenizer_bos_id(t);
    if (sl_tokenizer_eos_id(t) >= 0) p->special[p->n_special++] = (uint32_t)sl_tokenizer_eos_id(t);
}

static void idpool_free(idpool_t *p) {
    free(p->partial);
    free(p->text);
}

static uint32_t idpool_pick(const idpool_t *p, uint32_t vocab) {
    int k = rand() % 100;
    if (k < 35 && p->n_partial) return p->partial[(uint32_t)rand() % p->n_partial];
    if (k < 70 && p->n_text) return p->text[(uint32_t)rand() % p->n_text];
    if (k < 75 && p->n_special) return p->special[(uint32_t)rand() % p->n_special];
    if (k < 77) return vocab + (uint32_t)rand() % 8; /* no token: decode drops it */
    return (uint32_t)rand() % vocab;
}

static const char *const detok_toks[] = {"llama2-spm", "gpt2", "qwen2.5", "phi3-mini", "genmodel"};

/* Loads detok_toks[i]; NULL when it is the genmodel one and genmodel is not
 * built. *tmpd receives a directory to remove (or ""). */
static sl_tokenizer_t *detok_load(int i, char *tmpd, size_t tmpd_len) {
    char dir[2048], path[1024];
    sl_tokenizer_t *t = NULL;
    tmpd[0] = 0;
    if (strcmp(detok_toks[i], "genmodel") == 0) {
        const char *bd = getenv("SLUICE_BENCH_DIR");
        char gen[1024], cmd[4096];
        snprintf(gen, sizeof gen, "%s/genmodel", bd && *bd ? bd : "build/bench");
        if (access(gen, X_OK) != 0) return NULL;
        ck_assert_int_eq(harness_mkdtemp("sl_engdetok", tmpd, tmpd_len), 0);
        snprintf(cmd, sizeof cmd, "'%s' --preset tiny --out '%s/m' >/dev/null 2>&1", gen, tmpd);
        ck_assert_int_eq(system(cmd), 0);
        snprintf(dir, sizeof dir, "%s/m", tmpd);
    } else {
        harness_shared("tokenizers", path, sizeof path);
        snprintf(dir, sizeof dir, "%s/%s", path, detok_toks[i]);
    }
    ck_assert_int_eq(sl_tokenizer_load(dir, &t), 0);
    return t;
}

/* Random prompt + output ids: the prompt's final text followed by the
 * streamed text equals decode(prompt + output), and when the prompt ends on
 * a finished character the streamed text is vLLM's
 * decode(prompt + output)[len(decode(prompt)):]. */
START_TEST(test_detok_text_equals_decode) {
    char tmpd[512];
    sl_tokenizer_t *t = detok_load(_i, tmpd, sizeof tmpd);
    if (!t) return;
    idpool_t pool;
    idpool_init(&pool, t);
    uint32_t vocab = sl_tokenizer_vocab_size(t);
    srand(1234 + (unsigned)_i);
    int n_cases = getenv("SLUICE_SANITIZED") ? 60 : 200, n_prefix = 0;
    for (int k = 0; k < n_cases; k++) {
        uint32_t script[96];
        uint32_t np = 1 + (uint32_t)rand() % 40, no = 1 + (uint32_t)rand() % 48;
        for (uint32_t i = 0; i < np + no; i++) script[i] = idpool_pick(&pool, vocab);
        bool keep = k % 4 == 3;
        tcollect_t c;
        gen_text(t, script, np, np + no, NULL, keep, &c);
        ck_assert_int_eq(c.finish, ENGINE_FINISH_LENGTH);
        ck_assert_uint_eq(c.n_tokens, no);
        /* The prompt's final text: what a detok returns for it before any
         * flush, and what it still holds back. */
        sl_detok_t *d;
        ck_assert_int_eq(sl_detok_new(t, !keep, &d), 0);
        char *pre = calloc(1, 1);
        size_t lp = 0;
        for (uint32_t i = 0; i < np; i++) {
            const char *x;
            size_t n;
            ck_assert_int_eq(sl_detok_push(d, script[i], &x, &n), 0);
            pre = realloc(pre, lp + n + 1);
            memcpy(pre + lp, x, n);
            lp += n;
        }
        const char *held;
        size_t n_held;
        ck_assert_int_eq(sl_detok_finish(d, &held, &n_held), 0);
        sl_detok_free(d);
        size_t lf;
        char *full = decode_ids(t, script, np + no, !keep, &lf);
        ck_assert_msg(
            lp + c.len == lf && memcmp(full, pre, lp) == 0 && memcmp(full + lp, c.text, c.len) == 0,
            "%s case %d: prompt text + streamed != decode(prompt + output)", detok_toks[_i], k);
        if (n_held == 0) {
            /* The prompt's text is final: exactly vLLM's
             * decode(prompt + output)[len(decode(prompt)):]. */
            size_t ldp;
            char *dp = decode_ids(t, script, np, !keep, &ldp);
            ck_assert_uint_eq(ldp, lp);
            ck_assert_mem_eq(dp, pre, lp);
            free(dp);
            n_prefix++;
        }
        free(full);
        free(pre);
        free(c.text);
    }
    ck_assert_int_ge(n_prefix, n_cases / 4); /* the usual case is well covered */
    idpool_free(&pool);
    sl_tokenizer_free(t);
    if (tmpd[0]) harness_rmtree(tmpd);
}
END_TEST

/* Stop strings cut from the decoded text so that they start inside one
 * token's text and end inside a later one's: generation stops there and the
 * text is what precedes the first occurrence. */
START_TEST(test_detok_stop_strings_across_tokens) {
    char tmpd[512];
    sl_tokenizer_t *t = detok_load(_i, tmpd, sizeof tmpd);
    if (!t) return;
    idpool_t pool;
    idpool_init(&pool, t);
    uint32_t vocab = sl_tokenizer_vocab_size(t);
    srand(99 + (unsigned)_i);
    int n_cases = getenv("SLUICE_SANITIZED") ? 40 : 120, n_span = 0;
    for (int k = 0; k < n_cases; k++) {
        uint32_t script[80];
        uint32_t np = 1 + (uint32_t)rand() % 20, no = 4 + (uint32_t)rand() % 40;
        for (uint32_t i = 0; i < np + no; i++) script[i] = idpool_pick(&pool, vocab);
        /* Where each output token's text ends in the streamed text. */
        sl_detok_t *d;
        ck_assert_int_eq(sl_detok_new(t, true, &d), 0);
        ck_assert_int_eq(sl_detok_prime(d, script, np), 0);
        size_t ends[64], total = 0;
        for (uint32_t i = 0; i < no; i++) {
            const char *x;
            size_t n;
            ck_assert_int_eq(sl_detok_push(d, script[np + i], &x, &n), 0);
            total += n;
            ends[i] = total;
        }
        sl_detok_free(d);
        tcollect_t c;
        gen_text(t, script, np, np + no, NULL, false, &c);
        ck_assert_uint_ge(c.len, total);
        /* A stop string over the boundary after token i: a few bytes each
         * side, on character boundaries. */
        uint32_t i = (uint32_t)rand() % no;
        size_t b = ends[i];
        if (b == 0 || b >= total) {
            free(c.text);
            continue;
        }
        size_t s0 = b - 1 - (size_t)rand() % (b < 4 ? b : 4), s1 = b + 1 + (size_t)rand() % 4;
        if (s1 > total) s1 = total;
        while (s0 > 0 && ((unsigned char)c.text[s0] & 0xC0) == 0x80) s0--;
        while (s1 < total && ((unsigned char)c.text[s1] & 0xC0) == 0x80) s1++;
        char stop[64];
        if (s1 - s0 >= sizeof stop || memchr(c.text + s0, 0, s1 - s0)) {
            free(c.text);
            continue;
        }
        memcpy(stop, c.text + s0, s1 - s0);
        stop[s1 - s0] = 0;
        const char *first = memmem(c.text, c.len, stop, s1 - s0);
        ck_assert_ptr_nonnull(first);
        size_t want = (size_t)(first - c.text);
        char *whole = c.text;
        gen_text(t, script, np, np + no, stop, false, &c);
        ck_assert_int_eq(c.finish, ENGINE_FINISH_STOP);
        ck_assert_str_eq(c.stop_str, stop);
        ck_assert_uint_eq(c.len, want);
        ck_assert_mem_eq(c.text, whole, want);
        ck_assert_uint_le(c.n_tokens, no);
        n_span++;
        free(whole);
        free(c.text);
    }
    ck_assert_int_ge(n_span, n_cases / 3);
    idpool_free(&pool);
    sl_tokenizer_free(t);
    if (tmpd[0]) harness_rmtree(tmpd);
}
END_TEST

/* Known Llama-2 cases, expected strings from HF tokenizers 0.23:
 * t.decode(p + out)[len(t.decode(p)):]. */
START_TEST(test_detok_llama2_golden) {
    char tmpd[512];
    sl_tokenizer_t *t = detok_load(0, tmpd, sizeof tmpd);
    /* "<s>" + "▁Hello▁world": the text continues the prompt, so the first
     * space stays (decoding the output alone would give "Hello world"). */
    uint32_t a[] = {1, 15043, 3186};
    tcollect_t c;
    gen_text(t, a, 1, 3, NULL, false, &c);
    ck_assert_str_eq(c.text, " Hello world");
    free(c.text);
    /* "<s>▁Hi" + <0xE4><0xBD> "▁a" <0xE4><0xBD><0xA0>: an invalid byte run
     * gives one U+FFFD per byte, a valid one its character. */
    uint32_t b[] = {1, 6324, 231, 192, 263, 231, 192, 163};
    gen_text(t, b, 2, 8, NULL, false, &c);
    ck_assert_str_eq(c.text, "\xef\xbf\xbd\xef\xbf\xbd a\xe4\xbd\xa0");
    free(c.text);
    /* The run is held until it ends: cut after <0xE4><0xBD> by max_tokens,
     * the flush gives two U+FFFD, as decode of the same ids does. */
    gen_text(t, b, 2, 4, NULL, false, &c);
    ck_assert_str_eq(c.text, "\xef\xbf\xbd\xef\xbf\xbd");
    free(c.text);
    /* keep_special: EOS in the middle (ignore_eos) shows as "</s>". */
    uint32_t d[] = {1, 6324, 2, 15043, 3186};
    gen_text(t, d, 2, 5, NULL, true, &c);
    ck_assert_str_eq(c.text, " </s> Hello world");
    free(c.text);
    /* A stop string completed by the end-of-run flush still stops. */
    gen_text(t, b, 2, 4, "\xef\xbf\xbd\xef\xbf\xbd", false, &c);
    ck_assert_int_eq(c.finish, ENGINE_FINISH_STOP);
    ck_assert_uint_eq(c.len, 0);
    free(c.text);
    sl_tokenizer_free(t);
}
END_TEST

/* EOS stops without adding text but flushes what the detok held; ids the
 * tokenizer does not know (the model's vocabulary may be larger) add none. */
START_TEST(test_detok_eos_flush_and_unknown_ids) {
    char tmpd[512];
    sl_tokenizer_t *t = detok_load(0, tmpd, sizeof tmpd);
    script_fwd_t sf;
    uint32_t v = sl_tokenizer_vocab_size(t);
    script_init(&sf, v + 8);
    uint32_t s[] = {1, v + 3, 6324, 231, v + 1, 2, 263};
    sf.script = s;
    sf.n_script = 7;
    uint32_t eos = 2;
    engine_opts_t o = {.tokenizer = t, .eos_ids = &eos, .n_eos = 1};
    engine_t *e = engine_new(&sf.f, &o);
    tcollect_t c = {0};
    engine_request_t r = {.id = "x", .prompt = s, .n_prompt = 3, .on_output = on_text, .ud = &c};
    r.stop.max_tokens = 10;
    ck_assert_int_eq(engine_add(e, &r), 0);
    while (engine_step(e) > 0) {
    }
    ck_assert_int_eq(c.finish, ENGINE_FINISH_STOP);
    ck_assert_uint_eq(c.n_tokens, 3);
    ck_assert_str_eq(c.text, "\xef\xbf\xbd"); /* <0xE4> alone, flushed at EOS */
    free(c.text);
    /* Cancel also flushes. */
    memset(&c, 0, sizeof c);
    ck_assert_int_eq(engine_add(e, &r), 0);
    ck_assert_int_eq(engine_step(e), 1); /* prefill + first token (<0xE4>, held) */
    ck_assert_uint_eq(c.len, 0);
    ck_assert_int_eq(engine_cancel(e, "x"), 0);
    ck_assert_int_eq(c.finish, ENGINE_FINISH_CANCELLED);
    ck_assert_str_eq(c.text, "\xef\xbf\xbd");
    free(c.text);
    engine_free(e);
    sl_tokenizer_free(t);
}
END_TEST

int main(void) {
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_batched_equals_sequential_equals_reference);
    tcase_add_test(tc, test_prefix_preempt_chunked_equal_cold_greedy);
    tcase_add_test(tc, test_prefix_preempt_chunked_equal_cold_seeded_sampling);
    tcase_add_test(tc, test_cancel_frees_blocks);
    tcase_add_test(tc, test_stop_conditions);
    tcase_add_test(tc, test_text_holds_back_partial_utf8);
    tcase_add_test(tc, test_context_length_and_max_context);
    tcase_add_test(tc, test_forward_failure_fails_requests);
    tcase_add_test(tc, test_kv_events_and_salt);
    tcase_add_test(tc, test_migration_prior_output);
    tcase_add_test(tc, test_submit_from_another_thread);
    tcase_add_test(tc, test_bad_requests);
    tcase_add_test(tc, test_parallel_sampling_same_on_any_thread_count);
    suite_add_tcase(s, tc);
    TCase *td = tcase_create("detok");
    tcase_set_timeout(td, 60);
    int n_tok = (int)(sizeof detok_toks / sizeof *detok_toks);
    tcase_add_loop_test(td, test_detok_text_equals_decode, 0, n_tok);
    tcase_add_loop_test(td, test_detok_stop_strings_across_tokens, 0, n_tok);
    tcase_add_test(td, test_detok_llama2_golden);
    tcase_add_test(td, test_detok_eos_flush_and_unknown_ids);
    suite_add_tcase(s, td);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
