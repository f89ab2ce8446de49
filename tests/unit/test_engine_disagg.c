/* test_engine_disagg.c - the engine's disaggregated-prefill modes on the fake
 * forward pass (engine_fake.h): ENGINE_MODE_PREFILL on one engine, blocks
 * copied by hand (what UCX does between processes), ENGINE_MODE_ADOPT on
 * another; the tokens must equal a plain local run, and no block may leak on
 * any path (done, fail, cancel, release, engine_free). */
#include "common/base/err.h"
#include "common/engine/engine.h"
#include "engine_fake.h"

#include <check.h>
#include <stdio.h>
#include <string.h>

#define VOCAB  97
#define BS     4
#define NBLK   256
#define MAXOUT 64

typedef struct out {
    uint32_t tokens[MAXOUT], n;
    engine_finish_t finish;
    uint32_t cached_tokens;
    bool reserved;
    uint32_t blocks[NBLK], n_blocks; /* reserved / prefill blocks */
    uint32_t first;
    float first_logprob;
    bool remote; /* outputs with tokens said remote_prefill */
    uint64_t xfer_bytes, xfer_us;
} out_t;

static void on_out(const engine_output_t *o, void *ud) {
    out_t *c = ud;
    if (o->reserved) {
        ck_assert(!c->reserved);
        c->reserved = true;
        ck_assert_uint_le(o->n_blocks, NBLK);
        memcpy(c->blocks, o->blocks, o->n_blocks * sizeof *o->blocks);
        c->n_blocks = o->n_blocks;
        c->cached_tokens = o->cached_tokens;
        ck_assert_uint_eq(o->n_tokens, 0);
        return;
    }
    if (o->blocks) {
        memcpy(c->blocks, o->blocks, o->n_blocks * sizeof *o->blocks);
        c->n_blocks = o->n_blocks;
        c->cached_tokens = o->cached_tokens;
    }
    for (uint32_t i = 0; i < o->n_tokens && c->n < MAXOUT; i++) c->tokens[c->n++] = o->tokens[i];
    if (o->n_tokens) {
        c->remote = o->remote_prefill;
        c->xfer_bytes = o->kv_transfer_bytes;
        c->xfer_us = o->kv_transfer_us;
    }
    if (o->n_tokens && o->logprobs) c->first_logprob = o->logprobs[0].logprob;
    c->finish = o->finish;
}

static void make_prompt(uint32_t *p, uint32_t n, uint32_t seed, uint32_t shared) {
    for (uint32_t i = 0; i < n; i++)
        p[i] = i < shared ? (i * 7 + 3) % VOCAB : (seed * 31 + i * 13 + 5) % VOCAB;
}

static engine_request_t req(const char *id, const uint32_t *p, uint32_t n, engine_mode_t mode,
                            uint32_t max_tokens, out_t *o) {
    engine_request_t r = {
        .id = id, .prompt = p, .n_prompt = n, .mode = mode, .on_output = on_out, .ud = o};
    r.stop.max_tokens = max_tokens;
    r.stop.ignore_eos = true;
    r.sampling.logprobs = 1;
    return r;
}

/* Adds ADOPT request r to D and steps once: r must have reserved its blocks
 * (its out_t, r->ud, says so). */
static void add_reserved(engine_t *D, engine_request_t *r) {
    ck_assert_int_eq(engine_add(D, r), 0);
    ck_assert_int_ge(engine_step(D), 0);
    ck_assert(((const out_t *)r->ud)->reserved);
}

static void run(engine_t *e) {
    for (int i = 0; i < 10000; i++) {
        ck_assert_int_ge(engine_step(e), 0); /* also applies what was submitted */
        engine_stats_t st;
        engine_stats_get(e, &st);
        if (st.active == st.adopting) break; /* nothing left but remote prefills */
    }
}

static uint32_t used(engine_t *e) {
    kvpool_stats_t st;
    kvpool_stats_get(engine_pool(e), &st);
    return st.used;
}

static uint64_t g_stored;
static void count_events(const kvpool_event_t *ev, void *ud) {
    (void)ud;
    if (ev->kind == KVPOOL_EVENT_STORED) g_stored += ev->n_blocks;
}

/* Prefill on P, copy, adopt on D; compare with a local run on R. */
START_TEST(test_prefill_adopt_equals_local) {
    fake_fwd_t fp, fd, fr;
    ck_assert_int_eq(fake_init(&fp, VOCAB, BS, NBLK), 0);
    ck_assert_int_eq(fake_init(&fd, VOCAB, BS, NBLK), 0);
    ck_assert_int_eq(fake_init(&fr, VOCAB, BS, NBLK), 0);
    engine_opts_t od = {.max_batch_tokens = 8, .kv_event = count_events}; /* chunked */
    engine_opts_t op = {.max_batch_tokens = 8};
    engine_t *P = engine_new(&fp.f, &op), *D = engine_new(&fd.f, &od), *R = engine_new(&fr.f, &op);
    ck_assert(P && D && R);
    static const uint32_t lens[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 41};
    for (unsigned k = 0; k < sizeof lens / sizeof *lens * 2; k++) {
        uint32_t n = lens[k % (sizeof lens / sizeof *lens)];
        uint32_t prompt[64];
        /* second round: long shared prefixes, cached on either side */
        make_prompt(prompt, n, k, k >= sizeof lens / sizeof *lens ? n - n / 3 : 0);
        char id[32];
        snprintf(id, sizeof id, "r%u", k);
        out_t ref = {0}, pre = {0}, dec = {0};
        engine_request_t rr = req(id, prompt, n, ENGINE_MODE_GENERATE, 6, &ref);
        ck_assert_int_eq(engine_add(R, &rr), 0);
        run(R);
        ck_assert_uint_eq(ref.n, 6);

        uint64_t stored_before = g_stored;
        engine_request_t dr = req(id, prompt, n, ENGINE_MODE_ADOPT, 6, &dec);
        ck_assert_int_eq(engine_add(D, &dr), 0);
        ck_assert_int_ge(engine_step(D), 0);
        if (!dec.reserved) { /* everything but the last token cached: ran locally */
            run(D);
            ck_assert_uint_eq(dec.n, 6);
            ck_assert_mem_eq(dec.tokens, ref.tokens, 6 * sizeof(uint32_t));
            continue;
        }
        ck_assert_uint_eq(dec.n_blocks, (n + BS - 1) / BS);
        ck_assert_int_eq(engine_step(D), 1); /* waits: nothing to compute, not stuck */

        engine_request_t pr = req(id, prompt, n, ENGINE_MODE_PREFILL, 0, &pre);
        ck_assert_int_eq(engine_add(P, &pr), 0);
        run(P);
        ck_assert_int_eq(pre.finish, ENGINE_FINISH_LENGTH);
        ck_assert_uint_eq(pre.n, 1);
        ck_assert_uint_eq(pre.n_blocks, dec.n_blocks);
        engine_stats_t ps;
        engine_stats_get(P, &ps);
        ck_assert_uint_eq(ps.held, 1);
        ck_assert_uint_eq(ps.active, 0);
        ck_assert_uint_ge(used(P), pre.n_blocks); /* pinned */
        uint32_t skip = dec.cached_tokens / BS;
        for (uint32_t b = skip; b < dec.n_blocks; b++)
            memcpy((char *)fd.f.kv_base + (size_t)dec.blocks[b] * fd.f.block_bytes,
                   (char *)fp.f.kv_base + (size_t)pre.blocks[b] * fp.f.block_bytes,
                   fd.f.block_bytes);
        ck_assert_int_eq(engine_release(P, id), 0);
        ck_assert_int_eq(engine_release(P, id), SL_ENOTFOUND);
        ck_assert_uint_eq(used(P), 0);

        sampling_result_t first = {.token = pre.tokens[0], .logprob = pre.first_logprob};
        engine_transfer_t xf = {.bytes = 1000 + n, .us = 7};
        ck_assert_int_eq(engine_adopt_done(D, id, &first, &xf), 0);
        ck_assert_int_eq(engine_adopt_done(D, id, &first, NULL), SL_ENOTFOUND);
        ck_assert_uint_eq(g_stored - stored_before, n / BS - skip); /* adopted blocks published */
        run(D);
        ck_assert_uint_eq(dec.n, 6);
        ck_assert_mem_eq(dec.tokens, ref.tokens, 6 * sizeof(uint32_t));
        ck_assert(dec.remote); /* every output after adoption says so, the last one too */
        ck_assert_uint_eq(dec.xfer_bytes, 1000 + n);
        ck_assert_uint_eq(dec.xfer_us, 7);
        ck_assert(!ref.remote);
        ck_assert_uint_eq(used(D), 0);
    }
    ck_assert_int_eq(fd.bad | fp.bad | fr.bad, 0);
    engine_free(P);
    engine_free(D);
    engine_free(R);
    fake_destroy(&fp);
    fake_destroy(&fd);
    fake_destroy(&fr);
}
END_TEST

/* Failure, cancel, thresholds and bad input: same tokens, no leak. */
START_TEST(test_adopt_fail_cancel_and_errors) {
    fake_fwd_t fd, fr;
    ck_assert_int_eq(fake_init(&fd, VOCAB, BS, 64), 0);
    ck_assert_int_eq(fake_init(&fr, VOCAB, BS, 64), 0);
    engine_t *D = engine_new(&fd.f, NULL), *R = engine_new(&fr.f, NULL);
    uint32_t prompt[30];
    make_prompt(prompt, 30, 9, 0);
    out_t ref = {0}, a = {0}, b = {0}, c = {0}, d = {0};
    uint32_t prompt2_for_orphan[30];
    make_prompt(prompt2_for_orphan, 30, 4242, 0);
    engine_request_t rr = req("x", prompt, 30, ENGINE_MODE_GENERATE, 5, &ref);
    ck_assert_int_eq(engine_add(R, &rr), 0);
    run(R);

    /* fail -> local prefill, same tokens */
    engine_request_t ra = req("a", prompt, 30, ENGINE_MODE_ADOPT, 5, &a);
    add_reserved(D, &ra);
    /* garbage in the reserved blocks, as a half-finished transfer leaves */
    for (uint32_t i = 0; i < a.n_blocks; i++)
        memset((char *)fd.f.kv_base + (size_t)a.blocks[i] * fd.f.block_bytes, 0x5a,
               fd.f.block_bytes);
    ck_assert_int_eq(engine_wait(D, 30), 0); /* sleeps: only a parked request */
    ck_assert_int_eq(engine_adopt_fail(D, "a"), 0);
    ck_assert_int_eq(engine_adopt_fail(D, "a"), SL_ENOTFOUND);
    run(D);
    ck_assert_mem_eq(a.tokens, ref.tokens, 5 * sizeof(uint32_t));
    ck_assert_uint_eq(used(D), 0);

    /* cancel while reserved */
    engine_request_t rb = req("b", prompt, 30, ENGINE_MODE_ADOPT, 5, &b);
    add_reserved(D, &rb);
    ck_assert_int_eq(engine_cancel(D, "b"), 0);
    ck_assert_int_eq(b.finish, ENGINE_FINISH_CANCELLED);
    /* the client is told at once; the blocks wait for the remote writer */
    engine_stats_t es;
    engine_stats_get(D, &es);
    ck_assert_uint_eq(es.orphans, 1);
    ck_assert_uint_eq(es.active, 0);
    ck_assert_uint_gt(used(D), 0);
    ck_assert_int_eq(engine_wait(D, 20), 0); /* nothing to run */
    ck_assert_int_eq(engine_adopt_fail(D, "b"), 0);
    ck_assert_uint_eq(used(D), 0);
    ck_assert_int_eq(engine_adopt_fail(D, "b"), SL_ENOTFOUND);
    /* and a late done frees them the same way */
    out_t b2 = {0};
    engine_request_t rb2 = req("b2", prompt, 30, ENGINE_MODE_ADOPT, 5, &b2);
    rb2.prompt = prompt2_for_orphan;
    add_reserved(D, &rb2);
    ck_assert_int_eq(engine_cancel(D, "b2"), 0);
    ck_assert_uint_gt(used(D), 0);
    sampling_result_t late = {.token = 1};
    ck_assert_int_eq(engine_adopt_done(D, "b2", &late, NULL), 0);
    ck_assert_uint_eq(used(D), 0);
    ck_assert_int_eq(b2.n, 0); /* no token after the final output */

    /* under the threshold (the prefix is cached now): no reservation */
    engine_request_t rc = req("c", prompt, 30, ENGINE_MODE_ADOPT, 5, &c);
    rc.adopt_min_tokens = 8;
    ck_assert_int_eq(engine_add(D, &rc), 0);
    run(D);
    ck_assert(!c.reserved);
    ck_assert_mem_eq(c.tokens, ref.tokens, 5 * sizeof(uint32_t));

    /* bad input */
    engine_request_t bad = req("z", prompt, 30, (engine_mode_t)7, 5, &d);
    ck_assert_int_eq(engine_add(D, &bad), SL_EINVAL);
    const char *stops[] = {"x"};
    bad = req("z", prompt, 30, ENGINE_MODE_PREFILL, 5, &d);
    bad.stop.stop = stops;
    bad.stop.n_stop = 1;
    ck_assert_int_eq(engine_add(D, &bad), SL_EINVAL);
    sampling_result_t first = {.token = VOCAB + 5};
    ck_assert_int_eq(engine_adopt_done(D, "nope", &first, NULL), SL_ENOTFOUND);
    ck_assert_int_eq(engine_release(D, "nope"), SL_ENOTFOUND);
    /* out-of-vocabulary first token: falls back to local, same tokens */
    uint32_t p2[30];
    make_prompt(p2, 30, 77, 0);
    out_t ref2 = {0}, e2 = {0};
    engine_request_t r2 = req("y", p2, 30, ENGINE_MODE_GENERATE, 5, &ref2);
    ck_assert_int_eq(engine_add(R, &r2), 0);
    run(R);
    engine_request_t re = req("e", p2, 30, ENGINE_MODE_ADOPT, 5, &e2);
    add_reserved(D, &re);
    ck_assert_int_eq(engine_adopt_done(D, "e", &first, NULL), SL_EINVAL);
    run(D);
    ck_assert_mem_eq(e2.tokens, ref2.tokens, 5 * sizeof(uint32_t));
    ck_assert_uint_eq(used(D), 0);

    /* thread-safe forms go through the inbox */
    out_t f = {0};
    engine_request_t rf = req("f", p2, 30, ENGINE_MODE_ADOPT, 5, &f);
    rf.sampling.logprobs = 0;
    rf.adopt_min_tokens = 2; /* 28 of 30 tokens cached on D now */
    ck_assert_int_eq(engine_add(D, &rf), 0);
    ck_assert_int_ge(engine_step(D), 0);
    ck_assert(!f.reserved); /* fully cached but the last token: local */
    run(D);
    uint32_t p3[40];
    make_prompt(p3, 40, 123, 0);
    out_t g = {0};
    engine_request_t rg = req("g", p3, 40, ENGINE_MODE_ADOPT, 5, &g);
    ck_assert_int_eq(engine_submit(D, &rg), 0);
    ck_assert_int_ge(engine_step(D), 0);
    ck_assert(g.reserved);
    ck_assert_int_eq(engine_submit_adopt_fail(D, "g"), 0);
    ck_assert_int_eq(engine_submit_adopt_done(D, "g", NULL, NULL), SL_EINVAL);
    run(D);
    ck_assert_uint_eq(g.n, 5);
    ck_assert_uint_eq(used(D), 0);

    /* engine_free with a reservation and a held prefill: no leak (ASan) */
    out_t h = {0}, i = {0};
    uint32_t p4[40];
    make_prompt(p4, 40, 321, 0);
    engine_request_t rh = req("h", p4, 40, ENGINE_MODE_ADOPT, 5, &h);
    add_reserved(D, &rh);
    engine_request_t ri = req("i", p3, 40, ENGINE_MODE_PREFILL, 0, &i);
    ck_assert_int_eq(engine_add(R, &ri), 0);
    run(R);
    ck_assert_uint_eq(i.n, 1);
    ck_assert_int_eq(engine_submit_release(R, "i"), 0);
    engine_step(R);
    ck_assert_uint_eq(used(R), 0);
    ck_assert_int_eq(engine_add(R, &ri), 0);
    run(R);
    engine_free(D);
    engine_free(R);
    fake_destroy(&fd);
    fake_destroy(&fr);
}
END_TEST

/* Seeded sampling: the first token drawn on P, the rest on D, equals one
 * local run with the same seed. */
START_TEST(test_seeded_sampling_continues) {
    fake_fwd_t fp, fd, fr;
    ck_assert_int_eq(fake_init(&fp, VOCAB, BS, 64), 0);
    ck_assert_int_eq(fake_init(&fd, VOCAB, BS, 64), 0);
    ck_assert_int_eq(fake_init(&fr, VOCAB, BS, 64), 0);
    engine_t *P = engine_new(&fp.f, NULL), *D = engine_new(&fd.f, NULL),
             *R = engine_new(&fr.f, NULL);
    for (uint32_t k = 0; k < 8; k++) {
        uint32_t prompt[23];
        make_prompt(prompt, 23, 500 + k, 0);
        out_t ref = {0}, pre = {0}, dec = {0};
        engine_request_t q = req("s", prompt, 23, ENGINE_MODE_GENERATE, 8, &ref);
        q.sampling.temperature = 1.5f;
        q.sampling.has_seed = true;
        q.sampling.seed = 77 + k;
        ck_assert_int_eq(engine_add(R, &q), 0);
        run(R);
        q.ud = &dec;
        q.mode = ENGINE_MODE_ADOPT;
        add_reserved(D, &q);
        q.ud = &pre;
        q.mode = ENGINE_MODE_PREFILL;
        q.stop.max_tokens = 0;
        ck_assert_int_eq(engine_add(P, &q), 0);
        run(P);
        for (uint32_t b = dec.cached_tokens / BS; b < dec.n_blocks; b++)
            memcpy((char *)fd.f.kv_base + (size_t)dec.blocks[b] * fd.f.block_bytes,
                   (char *)fp.f.kv_base + (size_t)pre.blocks[b] * fp.f.block_bytes,
                   fd.f.block_bytes);
        ck_assert_int_eq(engine_release(P, "s"), 0);
        sampling_result_t first = {.token = pre.tokens[0], .logprob = pre.first_logprob};
        ck_assert_int_eq(engine_adopt_done(D, "s", &first, NULL), 0);
        run(D);
        ck_assert_uint_eq(dec.n, 8);
        ck_assert_mem_eq(dec.tokens, ref.tokens, 8 * sizeof(uint32_t));
    }
    ck_assert_uint_eq(used(D) + used(P), 0);
    engine_free(P);
    engine_free(D);
    engine_free(R);
    fake_destroy(&fp);
    fake_destroy(&fd);
    fake_destroy(&fr);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("engine_disagg");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_prefill_adopt_equals_local);
    tcase_add_test(tc, test_adopt_fail_cancel_and_errors);
    tcase_add_test(tc, test_seeded_sampling_continues);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
