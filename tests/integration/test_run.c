/* test_run.c - the engine on a real (generated) model, and sluice-run.
 *
 * A fixture generates a tiny random Llama with build/bench/genmodel (a
 * byte-level BPE tokenizer included). Then:
 *   - sluice-run --json gives the same prompt ids and greedy tokens (and
 *     logprobs) as the engine API;
 *   - with the real forward: batched == one at a time, prefix hit == cold,
 *     preemption (tiny KV pool) == none, chunked prefill == single-shot;
 *   - --tokenize / --detokenize agree with the tokenizer API and round-trip;
 *   - bad usage exits 2, a missing model exits 1, with a message.
 */
#include "common/base/err.h"
#include "common/engine/engine.h"
#include "common/engine/model.h"
#include "common/engine/tokenizer.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static char root_dir[512], model_dir[600];
static bool fixture_ok;

static const char *bench_dir(void) {
    const char *d = getenv("SLUICE_BENCH_DIR");
    return d ? d : "build/bench";
}

static void fixture_setup(void) {
    char cmd[2048];
    if (harness_mkdtemp("sl-run", root_dir, sizeof root_dir) != 0) return;
    snprintf(model_dir, sizeof model_dir, "%s/tiny", root_dir);
    snprintf(cmd, sizeof cmd,
             "%s/genmodel --arch llama --dtype f32 --layers 2 --hidden 64 --heads 4 --kv-heads 2 "
             "--intermediate 128 --vocab 512 --std 0.1 --seed 5 --out %s >/dev/null",
             bench_dir(), model_dir);
    fixture_ok = system(cmd) == 0;
    if (!fixture_ok) fprintf(stderr, "fixture: %s failed\n", cmd);
}

static void fixture_teardown(void) {
    if (root_dir[0] && !getenv("SLUICE_KEEP_TMP")) harness_rmtree(root_dir);
}

/* Runs a shell command; returns its stdout (malloc'd) and exit status. */
static char *run_cmd(const char *cmd, int *status) {
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t k;
    while ((k = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += k;
        if (n + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return buf;
}

typedef struct out {
    uint32_t ids[256];
    float lps[256];
    uint32_t n, cached;
    engine_finish_t finish;
} out_t;

static void on_out(const engine_output_t *o, void *ud) {
    out_t *r = ud;
    for (uint32_t i = 0; i < o->n_tokens && r->n < 256; i++) {
        r->lps[r->n] = o->logprobs ? o->logprobs[i].logprob : 0;
        r->ids[r->n++] = o->tokens[i];
    }
    r->finish = o->finish;
    r->cached = o->cached_tokens;
}

typedef struct setup {
    model_t *m;
    engine_t *e;
} setup_t;

static void setup_open(setup_t *s, uint32_t n_blocks, uint32_t max_batch_tokens) {
    ck_assert_msg(fixture_ok, "fixture failed: genmodel did not run");
    char *err = NULL;
    model_opts_t mo = {.block_size = 16, .n_blocks = n_blocks};
    int rc = model_load(model_dir, &mo, &s->m, &err);
    ck_assert_msg(rc == 0, "model_load: %s", err ? err : sl_strerror(rc));
    engine_opts_t eo = {.max_batch_tokens = max_batch_tokens, .watermark_blocks = 1};
    s->e = engine_new(model_forward(s->m), &eo);
    ck_assert_ptr_nonnull(s->e);
}

static void setup_close(setup_t *s) {
    engine_stats_t st;
    engine_stats_get(s->e, &st);
    ck_assert_uint_eq(st.kv.used, 0);
    engine_free(s->e);
    model_free(s->m);
}

static void add_greedy(engine_t *e, const char *id, const uint32_t *p, uint32_t n,
                       uint32_t max_tokens, out_t *o) {
    memset(o, 0, sizeof *o);
    engine_request_t r = {.id = id, .prompt = p, .n_prompt = n, .on_output = on_out, .ud = o};
    r.sampling.logprobs = true;
    r.stop.max_tokens = max_tokens;
    r.stop.ignore_eos = true;
    ck_assert_int_eq(engine_add(e, &r), 0);
}

static void drain(engine_t *e) {
    int rc, guard = 0;
    while ((rc = engine_step(e)) > 0) ck_assert_int_lt(guard++, 100000);
    ck_assert_int_eq(rc, 0);
}

START_TEST(test_sluice_run_json_equals_engine_api) {
    ck_assert_msg(fixture_ok, "fixture failed");
    char cmd[2048], bin[512];
    harness_bin("sluice-run", bin, sizeof bin);
    snprintf(cmd, sizeof cmd,
             "%s --model %s --prompt 'The quick brown fox jumps over the lazy dog' "
             "--max-tokens 24 --ignore-eos --json --quiet",
             bin, model_dir);
    int st;
    char *o = run_cmd(cmd, &st);
    ck_assert_int_eq(st, 0);
    cJSON *j = cJSON_Parse(o);
    ck_assert_ptr_nonnull(j);
    cJSON *pi = cJSON_GetObjectItem(j, "prompt_ids"), *gi = cJSON_GetObjectItem(j, "generated_ids"),
          *lp = cJSON_GetObjectItem(j, "logprobs");
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(j, "finish_reason")), "length");

    sl_tokenizer_t *t;
    ck_assert_int_eq(sl_tokenizer_load(model_dir, &t), 0);
    const char *text = "The quick brown fox jumps over the lazy dog";
    uint32_t *ids;
    size_t n;
    ck_assert_int_eq(sl_tokenizer_encode(t, text, strlen(text), true, &ids, &n), 0);
    ck_assert_int_eq(cJSON_GetArraySize(pi), (int)n);
    for (size_t i = 0; i < n; i++)
        ck_assert_uint_eq((uint32_t)cJSON_GetArrayItem(pi, (int)i)->valuedouble, ids[i]);

    setup_t s;
    setup_open(&s, 0, 512);
    out_t r;
    add_greedy(s.e, "x", ids, (uint32_t)n, 24, &r);
    drain(s.e);
    ck_assert_uint_eq(r.n, 24);
    ck_assert_int_eq(cJSON_GetArraySize(gi), 24);
    for (uint32_t i = 0; i < 24; i++) {
        ck_assert_uint_eq((uint32_t)cJSON_GetArrayItem(gi, (int)i)->valuedouble, r.ids[i]);
        ck_assert_double_eq_tol(cJSON_GetArrayItem(lp, (int)i)->valuedouble, r.lps[i], 1e-5);
    }
    setup_close(&s);
    free(ids);
    sl_tokenizer_free(t);
    cJSON_Delete(j);
    free(o);
}
END_TEST

#define NREQ 6
#define GEN  20

static void prompts(uint32_t p[NREQ][80], uint32_t *np) {
    /* Shared 40-token prefix for half of them, so the cache is exercised. */
    for (int k = 0; k < NREQ; k++) {
        np[k] = 20 + (uint32_t)k * 9;
        for (uint32_t i = 0; i < np[k]; i++)
            p[k][i] =
                (k % 2 == 0 && i < 40) ? (i * 37 + 11) % 480 : (uint32_t)(i * 13 + k * 101) % 480;
    }
}

/* Runs the NREQ prompts; together or one by one; n_blocks 0 = default pool. */
static uint64_t run_set(out_t *outs, bool together, uint32_t n_blocks, uint32_t budget,
                        uint32_t *cached) {
    static uint32_t p[NREQ][80];
    uint32_t np[NREQ];
    prompts(p, np);
    setup_t s;
    setup_open(&s, n_blocks, budget);
    *cached = 0;
    for (int k = 0; k < NREQ; k++) {
        char id[16];
        snprintf(id, sizeof id, "r%d", k);
        add_greedy(s.e, id, p[k], np[k], GEN, &outs[k]);
        if (!together) drain(s.e);
    }
    drain(s.e);
    for (int k = 0; k < NREQ; k++) *cached += outs[k].cached;
    engine_stats_t st;
    engine_stats_get(s.e, &st);
    setup_close(&s);
    return st.preemptions;
}

static void assert_same(const out_t *a, const out_t *b) {
    for (int k = 0; k < NREQ; k++) {
        ck_assert_uint_eq(a[k].n, GEN);
        ck_assert_uint_eq(b[k].n, GEN);
        ck_assert_mem_eq(a[k].ids, b[k].ids, GEN * sizeof(uint32_t));
        for (int i = 0; i < GEN; i++) ck_assert_float_eq_tol(a[k].lps[i], b[k].lps[i], 1e-3);
    }
}

START_TEST(test_real_model_batched_prefix_preempt_chunked) {
    static out_t seq[NREQ], bat[NREQ], tiny[NREQ], chunk[NREQ];
    uint32_t cached;
    /* One at a time on one engine: later prompts hit the shared prefix. */
    run_set(seq, false, 0, 512, &cached);
    ck_assert_uint_gt(cached, 0);
    /* All at once: batched decode, no hits among the first admissions. */
    run_set(bat, true, 0, 512, &cached);
    assert_same(seq, bat);
    /* 14 blocks of 16 for 6 sequences of up to 85 tokens: preemption. */
    ck_assert_uint_gt(run_set(tiny, true, 14, 512, &cached), 0);
    assert_same(seq, tiny);
    /* 7-token budget: every prompt goes in chunks. */
    run_set(chunk, true, 0, 7, &cached);
    assert_same(seq, chunk);
}
END_TEST

START_TEST(test_prefix_hit_equals_cold) {
    static uint32_t p[NREQ][80];
    uint32_t np[NREQ];
    prompts(p, np);
    setup_t s;
    setup_open(&s, 0, 512);
    out_t cold, warm;
    add_greedy(s.e, "a", p[5], np[5], GEN, &cold);
    drain(s.e);
    add_greedy(s.e, "b", p[5], np[5], GEN, &warm);
    drain(s.e);
    ck_assert_uint_eq(cold.cached, 0);
    ck_assert_uint_eq(warm.cached, (np[5] - 1) / 16 * 16);
    ck_assert_mem_eq(cold.ids, warm.ids, GEN * sizeof(uint32_t));
    setup_close(&s);
}
END_TEST

START_TEST(test_tokenize_detokenize_cli) {
    ck_assert_msg(fixture_ok, "fixture failed");
    char in[700], cmd[2048], bin[512];
    harness_bin("sluice-run", bin, sizeof bin);
    snprintf(in, sizeof in, "%s/lines.txt", root_dir);
    FILE *f = fopen(in, "w");
    fputs("\"hello world\"\n\"caf\\u00e9 \\u4e2d\\u6587 \\ud83d\\ude00\\n\\ttabs\"\n\"\"\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s --model %s --tokenize --no-special < %s", bin, model_dir, in);
    int st;
    char *o = run_cmd(cmd, &st);
    ck_assert_int_eq(st, 0);
    sl_tokenizer_t *t;
    ck_assert_int_eq(sl_tokenizer_load(model_dir, &t), 0);
    const char *texts[] = {"hello world",
                           "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80\n\ttabs", ""};
    char *line = o, *save;
    char out2[700];
    snprintf(out2, sizeof out2, "%s/ids.txt", root_dir);
    FILE *ids_f = fopen(out2, "w");
    for (int k = 0; k < 3; k++) {
        char *nl = strchr(line, '\n');
        ck_assert_ptr_nonnull(nl);
        *nl = 0;
        save = nl + 1;
        uint32_t *ids;
        size_t n;
        ck_assert_int_eq(sl_tokenizer_encode(t, texts[k], strlen(texts[k]), false, &ids, &n), 0);
        cJSON *a = cJSON_Parse(line);
        ck_assert(cJSON_IsArray(a));
        ck_assert_int_eq(cJSON_GetArraySize(a), (int)n);
        for (size_t i = 0; i < n; i++)
            ck_assert_uint_eq((uint32_t)cJSON_GetArrayItem(a, (int)i)->valuedouble, ids[i]);
        fprintf(ids_f, "%s\n", line);
        cJSON_Delete(a);
        free(ids);
        line = save;
    }
    fclose(ids_f);
    free(o);
    /* And back. */
    snprintf(cmd, sizeof cmd, "%s --model %s --detokenize < %s", bin, model_dir, out2);
    o = run_cmd(cmd, &st);
    ck_assert_int_eq(st, 0);
    line = o;
    for (int k = 0; k < 3; k++) {
        char *nl = strchr(line, '\n');
        ck_assert_ptr_nonnull(nl);
        *nl = 0;
        cJSON *s = cJSON_Parse(line);
        ck_assert(cJSON_IsString(s));
        ck_assert_str_eq(cJSON_GetStringValue(s), texts[k]);
        cJSON_Delete(s);
        line = nl + 1;
    }
    free(o);
    /* Malformed input lines fail with status 1. */
    snprintf(cmd, sizeof cmd, "echo '[1, -3]' | %s --model %s --detokenize 2>/dev/null", bin,
             model_dir);
    free(run_cmd(cmd, &st));
    ck_assert_int_eq(st, 1);
    snprintf(cmd, sizeof cmd, "echo 'not json' | %s --model %s --tokenize 2>/dev/null", bin,
             model_dir);
    free(run_cmd(cmd, &st));
    ck_assert_int_eq(st, 1);
    sl_tokenizer_free(t);
}
END_TEST

/* Runs sluice-run --json with extra args; returns the parsed object. */
static cJSON *run_json(const char *extra) {
    char cmd[4096], bin[512];
    harness_bin("sluice-run", bin, sizeof bin);
    snprintf(cmd, sizeof cmd, "%s --model %s --prompt 'It was the best of times' --json --quiet %s",
             bin, model_dir, extra);
    int st;
    char *o = run_cmd(cmd, &st);
    ck_assert_msg(st == 0, "%s: exit %d", cmd, st);
    cJSON *j = cJSON_Parse(o);
    ck_assert_ptr_nonnull(j);
    free(o);
    return j;
}

static bool same_ids(cJSON *a, cJSON *b) {
    char *x = cJSON_PrintUnformatted(cJSON_GetObjectItem(a, "generated_ids"));
    char *y = cJSON_PrintUnformatted(cJSON_GetObjectItem(b, "generated_ids"));
    bool eq = strcmp(x, y) == 0;
    free(x);
    free(y);
    return eq;
}

START_TEST(test_cli_seed_and_stop_string) {
    ck_assert_msg(fixture_ok, "fixture failed");
    cJSON *a = run_json("--max-tokens 24 --ignore-eos --temperature 1.0 --seed 7");
    cJSON *b = run_json("--max-tokens 24 --ignore-eos --temperature 1.0 --seed 7");
    cJSON *c = run_json("--max-tokens 24 --ignore-eos --temperature 1.0 --seed 8");
    ck_assert(same_ids(a, b));
    ck_assert(!same_ids(a, c));
    /* Greedy with text: the std 0.1 model emits tokens with bytes often
     * enough; pick a 2-byte stop string from the middle of the text. */
    cJSON *g = run_json("--max-tokens 48 --ignore-eos");
    const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(g, "text"));
    size_t len = strlen(text);
    ck_assert_uint_ge(len, 6);
    /* Two printable ASCII bytes, no quote, from the middle on. */
    size_t i = len / 3;
    while (i + 1 < len && !(text[i] > ' ' && text[i] < 127 && text[i] != '\'' &&
                            text[i + 1] >= ' ' && text[i + 1] < 127 && text[i + 1] != '\''))
        i++;
    ck_assert_msg(i + 1 < len, "no printable pair in %s", text);
    char stop[3] = {text[i], text[i + 1], 0};
    const char *at = strstr(text, stop);
    char extra[256];
    snprintf(extra, sizeof extra, "--max-tokens 48 --ignore-eos --stop '%s'", stop);
    cJSON *s = run_json(extra);
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(s, "finish_reason")), "stop");
    const char *st = cJSON_GetStringValue(cJSON_GetObjectItem(s, "text"));
    ck_assert_uint_eq(strlen(st), (size_t)(at - text));
    ck_assert_int_eq(strncmp(st, text, strlen(st)), 0);
    cJSON_Delete(a);
    cJSON_Delete(b);
    cJSON_Delete(c);
    cJSON_Delete(g);
    cJSON_Delete(s);
}
END_TEST

START_TEST(test_cli_errors) {
    ck_assert_msg(fixture_ok, "fixture failed");
    char cmd[2048], bin[512];
    harness_bin("sluice-run", bin, sizeof bin);
    int st;
    snprintf(cmd, sizeof cmd, "%s --bogus 2>&1", bin);
    char *o = run_cmd(cmd, &st);
    ck_assert_int_eq(st, 2);
    ck_assert_ptr_nonnull(strstr(o, "unknown option"));
    free(o);
    snprintf(cmd, sizeof cmd, "%s --model %s --prompt hi --top-p 3 2>&1", bin, model_dir);
    o = run_cmd(cmd, &st);
    ck_assert_int_eq(st, 2);
    ck_assert_ptr_nonnull(strstr(o, "--top-p"));
    free(o);
    snprintf(cmd, sizeof cmd, "%s --model %s 2>&1", bin, model_dir);
    free(run_cmd(cmd, &st));
    ck_assert_int_eq(st, 2);
    snprintf(cmd, sizeof cmd, "%s --model %s/nope --prompt hi 2>&1", bin, root_dir);
    o = run_cmd(cmd, &st);
    ck_assert_int_eq(st, 1);
    ck_assert_ptr_nonnull(strstr(o, "cannot load"));
    free(o);
    snprintf(cmd, sizeof cmd, "%s --help", bin);
    o = run_cmd(cmd, &st);
    ck_assert_int_eq(st, 0);
    ck_assert_ptr_nonnull(strstr(o, "--temperature"));
    free(o);
    /* Streaming text mode with a stop string runs and exits 0. */
    snprintf(cmd, sizeof cmd,
             "%s --model %s --prompt 'Once upon a time' --max-tokens 16 --stop zz "
             "--temperature 0.8 --top-p 0.9 --seed 3 2>/dev/null",
             bin, model_dir);
    free(run_cmd(cmd, &st));
    ck_assert_int_eq(st, 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("run");
    TCase *tc = tcase_create("real_model");
    tcase_set_timeout(tc, 60);
    tcase_add_unchecked_fixture(tc, fixture_setup, fixture_teardown);
    tcase_add_test(tc, test_sluice_run_json_equals_engine_api);
    tcase_add_test(tc, test_real_model_batched_prefix_preempt_chunked);
    tcase_add_test(tc, test_prefix_hit_equals_cold);
    tcase_add_test(tc, test_tokenize_detokenize_cli);
    tcase_add_test(tc, test_cli_seed_and_stop_string);
    tcase_add_test(tc, test_cli_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
