/* test_engine.c - the engine end to end on the fake forward: batched ==
 * sequential == reference, prefix hit == cold, preemption == none, chunked
 * == single-shot, seeded sampling stable under all of these, cancellation,
 * stop conditions (EOS, ids, strings across tokens, min_tokens, lengths),
 * forward failures and bad requests. */
#include "common/base/err.h"
#include "common/engine/engine.h"
#include "tests/unit/engine_fake.h"

#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    }
}

static engine_request_t make_req(const spec_t *sp, char *id, collect_t *c) {
    engine_request_t r = {
        .id = id, .prompt = sp->prompt, .n_prompt = sp->np, .on_output = on_output, .ud = c};
    r.sampling.temperature = sp->temperature;
    r.sampling.top_k = 10;
    r.sampling.has_seed = true;
    r.sampling.seed = sp->seed;
    r.sampling.logprobs = true;
    r.stop.max_tokens = sp->max_tokens;
    return r;
}

typedef struct run_cfg {
    uint32_t n_blocks, block_size, max_batch_tokens, max_seqs;
    bool sequential; /* one request at a time, fresh engine each */
    bool twice;      /* run every request twice on the same engine (cache hits) */
} run_cfg_t;

/* Runs specs through an engine; fills collects; returns total preemptions. */
static uint64_t run_specs(const spec_t *sp, int n, collect_t *out, run_cfg_t cfg,
                          uint32_t *cached_total) {
    uint64_t preempt = 0;
    *cached_total = 0;
    int groups = cfg.sequential ? n : 1;
    for (int g = 0; g < groups; g++) {
        fake_fwd_t ff;
        ck_assert_int_eq(fake_init(&ff, VOCAB, cfg.block_size, cfg.n_blocks), 0);
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
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
