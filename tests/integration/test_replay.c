/* test_replay.c - build/bench/replay end to end, and its trace parser and
 * oracle on inputs whose answers are known.
 *
 * The end-to-end case writes a 40-request trace (10 conversations of 4 turns
 * sharing a 6-block prefix, interleaved) and replays it over 3 mocker workers
 * behind a real router and frontend (real nats-server and etcd, started by
 * the replay itself) in kv and round-robin modes: every request must
 * complete with the asked number of tokens, and kv must reuse more of the
 * cache than round-robin. The parser and oracle are compiled in from
 * bench/replay (bench code is not in a library the tests link).
 */
#include "bench/replay/oracle.c"
#include "bench/replay/trace.c"
#include "common/base/err.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static char g_dir[256];

static const char *replay_bin(char *buf, size_t len) {
    const char *d = getenv("SLUICE_BENCH_DIR");
    snprintf(buf, len, "%s/replay", d && *d ? d : "build/bench");
    return buf;
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_ge(fputs(text, f), 0);
    fclose(f);
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = calloc(1, 1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    (void)n;
    fclose(f);
    return buf;
}

/* Runs the replay with args; returns its exit status; its stderr+stdout go
 * to out_path. */
static int run_replay(const char *args, const char *out_path) {
    char bin[512], cmd[4096];
    snprintf(cmd, sizeof cmd, "timeout 50 %s %s >%s 2>&1", replay_bin(bin, sizeof bin), args,
             out_path);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* 10 conversations x 4 turns, interleaved 100 ms apart: turn k of
 * conversation c has the conversation's 6 shared ids plus k + 1 own ids. */
static void write_conversations(const char *path) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    int t = 0;
    for (int turn = 0; turn < 4; turn++)
        for (int c = 0; c < 10; c++) {
            int n = 6 + turn + 1;
            fprintf(f, "{\"timestamp\": %d, \"input_length\": %d, \"output_length\": %d, ", t,
                    n * 512 - 100, 4 + (c + turn) % 5);
            fprintf(f, "\"hash_ids\": [");
            for (int i = 0; i < n; i++) {
                int id = i < 6 ? c * 100 + i : c * 100 + 10 + i; /* own ids grow per turn */
                fprintf(f, "%s%d", i ? ", " : "", id);
            }
            fprintf(f, "], \"extra\": \"ignored\"}\n");
            t += 100;
        }
    fclose(f);
}

static const cJSON *mode_obj(const cJSON *root, const char *name) {
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItem(root, "modes")) {
        const cJSON *n = cJSON_GetObjectItem(m, "mode");
        if (cJSON_IsString(n) && !strcmp(n->valuestring, name)) return m;
    }
    return NULL;
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItem(o, k);
    ck_assert_msg(cJSON_IsNumber(v), "missing number %s", k);
    return v->valuedouble;
}

START_TEST(test_kv_beats_round_robin) {
    char trace[320], json[320], out[320], args[2048];
    snprintf(trace, sizeof trace, "%s/conv.jsonl", g_dir);
    snprintf(json, sizeof json, "%s/out.json", g_dir);
    snprintf(out, sizeof out, "%s/replay.out", g_dir);
    write_conversations(trace);
    snprintf(args, sizeof args,
             "--trace %s --workers 3 --modes kv,round-robin --speed 1 --mocker-speedup 10 "
             "--scale 0.0625 --kv-blocks 512 --json %s",
             trace, json);
    int st = run_replay(args, out);
    char *log = read_file(out);
    ck_assert_msg(st == 0, "replay exited %d:\n%s", st, log ? log : "");
    ck_assert_ptr_nonnull(strstr(log, "oracle"));
    char *text = read_file(json);
    ck_assert_ptr_nonnull(text);
    cJSON *root = cJSON_Parse(text);
    ck_assert_msg(root != NULL, "JSON does not parse: %s", text);
    const cJSON *kv = mode_obj(root, "kv"), *rr = mode_obj(root, "round-robin");
    ck_assert_ptr_nonnull(kv);
    ck_assert_ptr_nonnull(rr);
    const cJSON *ms[2] = {kv, rr};
    for (int i = 0; i < 2; i++) {
        const cJSON *rq = cJSON_GetObjectItem(ms[i], "requests");
        ck_assert_double_eq(num(rq, "sent"), 40);
        ck_assert_msg(num(rq, "ok") == 40, "%s", log);
        ck_assert_double_eq(num(rq, "failed"), 0);
        ck_assert_double_eq(num(rq, "output_mismatch"), 0);
        ck_assert_double_eq(num(cJSON_GetObjectItem(ms[i], "ttft_ms"), "count"), 40);
        ck_assert_double_gt(num(cJSON_GetObjectItem(ms[i], "itl_ms"), "count"), 0);
        ck_assert_double_gt(num(ms[i], "prompt_tokens"), 0);
    }
    double hk = num(kv, "hit_rate"), hr = num(rr, "hit_rate");
    double ho = num(cJSON_GetObjectItem(root, "oracle"), "hit_rate");
    ck_assert_msg(hk > hr, "kv hit rate %.3f not above round-robin's %.3f\n%s", hk, hr, log);
    ck_assert_msg(ho >= hk - 0.02 && ho > 0.3, "oracle %.3f vs kv %.3f", ho, hk);
    ck_assert_double_gt(num(kv, "router_hit_rate"), 0);
    cJSON_Delete(root);
    free(text);
    free(log);
}
END_TEST

START_TEST(test_malformed_trace_exits_2) {
    char trace[320], out[320], args[1024];
    snprintf(trace, sizeof trace, "%s/bad.jsonl", g_dir);
    snprintf(out, sizeof out, "%s/bad.out", g_dir);
    const char *cases[][2] = {
        {"{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 2, \"hash_ids\": [1]}\n\n"
         "{\"timestamp\": 5, \"input_length\": \"x\", \"output_length\": 2, \"hash_ids\": [1]}\n",
         "line 3: \"input_length\""},
        {"{\"timestamp\": 0, \"input_length\": 1000, \"output_length\": 2, \"hash_ids\": [1]}\n",
         "line 1: \"hash_ids\" has 1 ids, input_length 1000 needs 2"},
        {"{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 2, \"hash_ids\": [1]\n",
         "line 1: not valid JSON"},
        {"{\"timestamp\": -1, \"input_length\": 10, \"output_length\": 2, \"hash_ids\": [1]}\n",
         "line 1: \"timestamp\""},
        {"{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 0, \"hash_ids\": [1]}\n",
         "line 1: \"output_length\""},
        {"{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 2, \"hash_ids\": [-4]}\n",
         "line 1: \"hash_ids\"[0]"},
        {"[1, 2]\n", "line 1: not a JSON object"},
        {"\n  \n", "no requests"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_file(trace, cases[i][0]);
        snprintf(args, sizeof args, "--trace %s --workers 1", trace);
        int st = run_replay(args, out);
        char *log = read_file(out);
        ck_assert_msg(st == 2, "case %zu: exit %d, want 2: %s", i, st, log);
        ck_assert_msg(strstr(log, cases[i][1]) != NULL, "case %zu: no \"%s\" in: %s", i,
                      cases[i][1], log);
        free(log);
    }
    /* a missing file, bad flags */
    const char *bad[] = {"--trace /nonexistent/t.jsonl", "--modes kv,fastest", "--scale 0.01",
                         "--workers 0", "--no-such-flag 1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int st = run_replay(bad[i], out);
        char *log = read_file(out);
        ck_assert_msg(st == 2, "%s: exit %d, want 2: %s", bad[i], st, log);
        ck_assert_msg(strlen(log) > 0, "%s: no message", bad[i]);
        free(log);
    }
}
END_TEST

/* Prompts: equal hash ids give equal tokens, different ids different ones. */
START_TEST(test_trace_prompts) {
    const char *text =
        "{\"timestamp\": 30, \"input_length\": 1024, \"output_length\": 1, \"hash_ids\": [7, 8]}\n"
        "{\"timestamp\": 10, \"input_length\": 700, \"output_length\": 3, \"hash_ids\": [7, 9]}\n"
        "{\"timestamp\": 10, \"input_length\": 1, \"output_length\": 2, \"hash_ids\": [5]}\n";
    trace_t *t = NULL;
    char err[256];
    ck_assert_int_eq(trace_parse(text, strlen(text), 0, &t, err, sizeof err), 0);
    ck_assert_uint_eq(t->n, 3);
    /* sorted by time, ties in file order */
    ck_assert_uint_eq(t->reqs[0].line, 2);
    ck_assert_uint_eq(t->reqs[1].line, 3);
    ck_assert_uint_eq(t->reqs[2].line, 1);
    const trace_req_t *a = &t->reqs[2], *b = &t->reqs[0];
    ck_assert_uint_eq(trace_prompt_len(a, 512), 1024);
    ck_assert_uint_eq(trace_prompt_len(b, 512), 700);
    ck_assert_uint_eq(trace_prompt_len(b, 32), 44); /* ceil(700 / 16) */
    int same = 0, diff = 0;
    for (uint32_t p = 0; p < 512; p++) {
        ck_assert_uint_eq(trace_prompt_token(a, 512, 256, p), trace_prompt_token(b, 512, 256, p));
        ck_assert_uint_lt(trace_prompt_token(a, 512, 256, p), 256);
        same++;
    }
    for (uint32_t p = 512; p < 700; p++)
        diff += trace_prompt_token(a, 512, 256, p) != trace_prompt_token(b, 512, 256, p);
    ck_assert_int_eq(same, 512);
    ck_assert_int_gt(diff, 150);
    ck_assert_uint_eq(trace_block_key(a, 512, 16, 31), trace_block_key(b, 512, 16, 31));
    ck_assert_uint_ne(trace_block_key(a, 512, 16, 32), trace_block_key(b, 512, 16, 32));
    trace_free(t);
    /* limit keeps the first lines */
    ck_assert_int_eq(trace_parse(text, strlen(text), 1, &t, err, sizeof err), 0);
    ck_assert_uint_eq(t->n, 1);
    ck_assert_uint_eq(t->reqs[0].input_len, 1024);
    trace_free(t);
    trace_free(NULL);
}
END_TEST

/* The oracle on traces with known answers. */
START_TEST(test_oracle_known_answers) {
    /* one prefix twice: the second request hits all but the block holding
     * its last token (15 of 16 blocks of 16 tokens = 240 of 512 + 256) */
    const char *two = "{\"timestamp\": 0, \"input_length\": 256, \"output_length\": 1, "
                      "\"hash_ids\": [1]}\n"
                      "{\"timestamp\": 1, \"input_length\": 256, \"output_length\": 1, "
                      "\"hash_ids\": [1]}\n";
    trace_t *t = NULL;
    char err[256];
    ck_assert_int_eq(trace_parse(two, strlen(two), 0, &t, err, sizeof err), 0);
    oracle_cfg_t c = {.workers = 4, .capacity = 100, .block_size = 16, .tokens_per_hash = 512};
    oracle_result_t r;
    ck_assert_int_eq(oracle_run(t, t->n, &c, &r), 0);
    ck_assert_uint_eq(r.prompt_tokens, 512);
    ck_assert_uint_eq(r.cached_tokens, 240);
    ck_assert_uint_eq(r.unbounded_tokens, 240);
    /* a cache of 8 blocks cannot keep 16: LRU evicts the tail first, and the
     * head blocks the second request needs were touched last, so they stay */
    c.capacity = 8;
    ck_assert_int_eq(oracle_run(t, t->n, &c, &r), 0);
    ck_assert_uint_eq(r.cached_tokens, 128);
    ck_assert_uint_eq(r.unbounded_tokens, 240);
    c.tokens_per_hash = 24; /* not a multiple of the block size */
    ck_assert_int_eq(oracle_run(t, t->n, &c, &r), SL_EINVAL);
    c.tokens_per_hash = 512;
    c.workers = 0;
    ck_assert_int_eq(oracle_run(t, t->n, &c, &r), SL_EINVAL);
    trace_free(t);

    /* three distinct prefixes A, B, A on 2 workers with room for one each:
     * ideal routing sends the second A back to A's worker; unbounded agrees */
    const char *aba = "{\"timestamp\": 0, \"input_length\": 512, \"output_length\": 1, "
                      "\"hash_ids\": [1]}\n"
                      "{\"timestamp\": 1, \"input_length\": 512, \"output_length\": 1, "
                      "\"hash_ids\": [2]}\n"
                      "{\"timestamp\": 2, \"input_length\": 1024, \"output_length\": 1, "
                      "\"hash_ids\": [1, 3]}\n";
    ck_assert_int_eq(trace_parse(aba, strlen(aba), 0, &t, err, sizeof err), 0);
    oracle_cfg_t c2 = {.workers = 2, .capacity = 32, .block_size = 16, .tokens_per_hash = 512};
    ck_assert_int_eq(oracle_run(t, t->n, &c2, &r), 0);
    ck_assert_uint_eq(r.cached_tokens, 512);
    ck_assert_double_eq_tol(r.hit_rate, 512.0 / 2048.0, 1e-12);
    c2.workers = 1; /* one worker of 32 blocks: B evicted A */
    ck_assert_int_eq(oracle_run(t, t->n, &c2, &r), 0);
    ck_assert_uint_eq(r.cached_tokens, 0);
    ck_assert_uint_eq(r.unbounded_tokens, 512);
    trace_free(t);
}
END_TEST

int main(void) {
    if (harness_mkdtemp("sl-replay", g_dir, sizeof g_dir) != 0) return 1;
    Suite *s = suite_create("replay");
    TCase *tc = tcase_create("replay");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_trace_prompts);
    tcase_add_test(tc, test_oracle_known_answers);
    tcase_add_test(tc, test_malformed_trace_exits_2);
    tcase_add_test(tc, test_kv_beats_round_robin);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    harness_rmtree(g_dir);
    return nf ? 1 : 0;
}
