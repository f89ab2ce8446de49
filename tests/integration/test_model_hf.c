/* test_model_hf.c - the C forward against Hugging Face transformers.
 *
 * A fixture (run once, in the parent) generates tiny random models with
 * build/bench/genmodel (Llama untied; Llama tied + llama3 rope scaling in 2
 * shards; Mistral with a sliding window shorter than the sequence; Qwen2 with
 * q/k/v bias, tied; Llama bf16; Qwen2 f16; Mistral bf16; Llama MQA with
 * head_dim 32 and 3 layers; Qwen2 bf16 MHA in 3 shards) and runs
 * tests/python/hf_ref.py once over all of them: prefill logits for a 40-token
 * prompt and 64 greedy steps with their logits. Each test then loads a model
 * with model_load() and checks:
 *   - one-shot prefill logits and every decode step's logits (fed one token at
 *     a time through block tables) within tolerance: f32 1e-4 max abs diff;
 *     bf16/f16 1e-3 (weights upcast exactly in the reference; the gap is f32
 *     summation order in kernels that convert weights on the fly);
 *   - greedy argmax equal to the reference for all 64 tokens;
 *   - chunked prefill (chunks 5, 11, 24) matches the reference rows at each
 *     chunk end and the one-shot prefill;
 *   - a mixed batch (one sequence decoding, another prefilling, in one step)
 *     equals running them alone.
 * Plus load and step errors: wrong shape, missing lm_head, unknown
 * architecture, bad token id / block table.
 */
#include "common/base/err.h"
#include "common/engine/model.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_PROMPT 40
#define N_GEN    64
#define BS       16

typedef struct ref {
    uint32_t n_prompt, n_gen, vocab;
    uint32_t *prompt, *gen;
    float *prefill; /* (n_prompt, vocab) */
    float *dec;     /* (n_gen - 1, vocab) */
} ref_t;

typedef struct case_def {
    const char *name;
    const char *args;
    float tol;
} case_def_t;

static const case_def_t cases[] = {
    {"llama_f32", "--arch llama --dtype f32", 1e-4f},
    {"llama_f32_tie_llama3_sharded",
     "--arch llama --dtype f32 --tie --rope-scaling llama3 --shards 2", 1e-4f},
    {"mistral_f32_swa", "--arch mistral --dtype f32 --sliding-window 12", 1e-4f},
    {"qwen2_f32_tie", "--arch qwen2 --dtype f32 --tie", 1e-4f},
    {"llama_bf16", "--arch llama --dtype bf16", 1e-3f},
    {"qwen2_f16", "--arch qwen2 --dtype f16", 1e-3f},
    {"mistral_bf16_swa", "--arch mistral --dtype bf16 --sliding-window 12 --tie", 1e-3f},
    {"llama_f32_mqa_hd32",
     "--arch llama --dtype f32 --hidden 128 --heads 4 --kv-heads 1 --layers 3", 1e-4f},
    {"qwen2_bf16_mha_3shards", "--arch qwen2 --dtype bf16 --kv-heads 4 --shards 3", 1e-3f},
};
#define N_CASES (sizeof cases / sizeof *cases)

static char root_dir[512];
static bool fixture_ok;

static const char *bench_dir(void) {
    const char *d = getenv("SLUICE_BENCH_DIR");
    return d ? d : "build/bench";
}

static const char *src_root(void) {
    const char *d = getenv("SLUICE_ROOT");
    return d ? d : ".";
}

static void model_dir(const char *name, char *out, size_t len) {
    snprintf(out, len, "%s/%s", root_dir, name);
}

static void fixture_setup(void) {
    char cmd[8192];
    fixture_ok = false;
    if (harness_mkdtemp("sl-model-hf", root_dir, sizeof root_dir) != 0) return;
    for (size_t i = 0; i < N_CASES; i++) {
        char dir[600];
        model_dir(cases[i].name, dir, sizeof dir);
        snprintf(cmd, sizeof cmd,
                 "%s/genmodel --layers 2 --hidden 64 --heads 4 --kv-heads 2 --intermediate 128 "
                 "--vocab 512 --std 0.1 --seed %zu %s --out %s >/dev/null",
                 bench_dir(), 7 + i, cases[i].args, dir);
        if (system(cmd) != 0) {
            fprintf(stderr, "fixture: %s failed\n", cmd);
            return;
        }
    }
    /* The prompt: ids spread over the vocabulary, deterministic. */
    size_t o = (size_t)snprintf(cmd, sizeof cmd,
                                "/usr/bin/python3 %s/tests/python/hf_ref.py --gen %d --prompt-ids ",
                                src_root(), N_GEN);
    for (int i = 0; i < N_PROMPT; i++)
        o += (size_t)snprintf(cmd + o, sizeof cmd - o, "%s%d", i ? "," : "", (i * 37 + 11) % 480);
    for (size_t i = 0; i < N_CASES; i++) {
        char dir[600];
        model_dir(cases[i].name, dir, sizeof dir);
        o += (size_t)snprintf(cmd + o, sizeof cmd - o, " --job %s,%s/ref.bin", dir, dir);
    }
    snprintf(cmd + o, sizeof cmd - o, " 2>%s/hf_ref.log", root_dir);
    if (system(cmd) != 0) {
        fprintf(stderr,
                "fixture: hf_ref.py failed (see %s/hf_ref.log; deploy/deps-python.sh "
                "installs torch + transformers)\n",
                root_dir);
        char tail[700];
        snprintf(tail, sizeof tail, "tail -5 %s/hf_ref.log >&2", root_dir);
        if (system(tail) != 0) fprintf(stderr, "(no log)\n");
        return;
    }
    fixture_ok = true;
}

static void fixture_teardown(void) {
    if (root_dir[0] && !getenv("SLUICE_KEEP_TMP")) harness_rmtree(root_dir);
}

static void ref_free(ref_t *r) {
    free(r->prompt);
    free(r->gen);
    free(r->prefill);
    free(r->dec);
}

static int ref_load(const char *path, ref_t *r) {
    memset(r, 0, sizeof *r);
    FILE *fp = fopen(path, "rb");
    if (!fp) return -1;
    char magic[8];
    uint32_t hdr[3];
    int rc = -1;
    if (fread(magic, 1, 8, fp) != 8 || memcmp(magic, "SLREF001", 8) != 0) goto out;
    if (fread(hdr, sizeof(uint32_t), 3, fp) != 3) goto out;
    r->n_prompt = hdr[0], r->n_gen = hdr[1], r->vocab = hdr[2];
    if (r->n_gen < 1 || r->vocab == 0 || r->vocab > 1u << 20 || r->n_prompt > 4096) goto out;
    size_t V = r->vocab;
    r->prompt = malloc(r->n_prompt * sizeof(uint32_t));
    r->gen = malloc(r->n_gen * sizeof(uint32_t));
    r->prefill = malloc(r->n_prompt * V * sizeof(float));
    r->dec = malloc((r->n_gen - 1) * V * sizeof(float) + 1);
    if (!r->prompt || !r->gen || !r->prefill || !r->dec) goto out;
    if (fread(r->prompt, 4, r->n_prompt, fp) != r->n_prompt ||
        fread(r->gen, 4, r->n_gen, fp) != r->n_gen ||
        fread(r->prefill, 4, r->n_prompt * V, fp) != r->n_prompt * V ||
        fread(r->dec, 4, (r->n_gen - 1) * V, fp) != (r->n_gen - 1) * V)
        goto out;
    rc = 0;
out:
    fclose(fp);
    return rc;
}

static float max_abs_diff(const float *a, const float *b, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as a failure */
    }
    return m;
}

static uint32_t argmax(const float *x, uint32_t n) {
    uint32_t b = 0;
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static model_t *load(const char *name, char **err) {
    char dir[600];
    model_dir(name, dir, sizeof dir);
    model_opts_t o = {.block_size = BS, .n_blocks = 64};
    model_t *m = NULL;
    int rc = model_load(dir, &o, &m, err);
    if (rc) fprintf(stderr, "model_load(%s): %s: %s\n", name, sl_strerror(rc), *err ? *err : "");
    return m;
}

static int step1(sl_forward_t *f, const uint32_t *toks, uint32_t n, uint32_t pos,
                 const uint32_t *blocks, bool want, float *logits) {
    sl_fwd_seq_t s = {.tokens = toks,
                      .n_tokens = n,
                      .pos = pos,
                      .blocks = blocks,
                      .n_blocks = (pos + n + BS - 1) / BS,
                      .want_logits = want};
    sl_fwd_batch_t b = {.seqs = &s, .n_seqs = 1, .logits = logits};
    return f->step(f->impl, &b);
}

/* One-shot prefill, then N_GEN - 1 decode steps fed with the reference's
 * greedy tokens; logits compared at every step, argmax must agree. */
static void check_case(const case_def_t *cd) {
    ck_assert_msg(fixture_ok, "fixture failed: genmodel or hf_ref.py did not run");
    char dir[600], path[700];
    model_dir(cd->name, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/ref.bin", dir);
    ref_t r;
    ck_assert_int_eq(ref_load(path, &r), 0);
    char *err = NULL;
    model_t *m = load(cd->name, &err);
    ck_assert_ptr_nonnull(m);
    sl_forward_t *f = model_forward(m);
    const uint32_t V = f->vocab_size;
    ck_assert_uint_eq(V, r.vocab);
    uint32_t blocks[16];
    for (int i = 0; i < 16; i++) blocks[i] = (uint32_t)(63 - i * 3); /* scattered, not 0..n */
    float *lg = malloc(V * sizeof(float));
    ck_assert_int_eq(step1(f, r.prompt, r.n_prompt, 0, blocks, true, lg), 0);
    float worst_prefill = max_abs_diff(lg, r.prefill + (size_t)(r.n_prompt - 1) * V, V);
    float *oneshot = malloc(V * sizeof(float));
    memcpy(oneshot, lg, V * sizeof(float));
    ck_assert_uint_eq(argmax(lg, V), r.gen[0]);
    float worst_dec = 0;
    uint32_t agree = 1;
    for (uint32_t i = 0; i + 1 < r.n_gen; i++) {
        ck_assert_int_eq(step1(f, &r.gen[i], 1, r.n_prompt + i, blocks, true, lg), 0);
        float d = max_abs_diff(lg, r.dec + (size_t)i * V, V);
        if (!(d <= worst_dec)) worst_dec = d;
        if (argmax(lg, V) == r.gen[i + 1]) agree++;
    }
    fprintf(stderr, "%-30s prefill max|diff| %.3g, decode max|diff| %.3g, greedy %u/%u (tol %g)\n",
            cd->name, worst_prefill, worst_dec, agree, r.n_gen, cd->tol);
    ck_assert_msg(worst_prefill <= cd->tol, "%s: prefill diff %g > %g", cd->name, worst_prefill,
                  cd->tol);
    ck_assert_msg(worst_dec <= cd->tol, "%s: decode diff %g > %g", cd->name, worst_dec, cd->tol);
    ck_assert_uint_eq(agree, r.n_gen);

    /* Chunked prefill into other blocks: chunk ends match the reference rows. */
    uint32_t blocks2[16];
    for (int i = 0; i < 16; i++) blocks2[i] = (uint32_t)(i * 3 + 1);
    static const uint32_t chunks[] = {5, 11, 24};
    uint32_t pos = 0;
    float worst_chunk = 0;
    for (size_t c = 0; c < 3; c++) {
        ck_assert_int_eq(step1(f, r.prompt + pos, chunks[c], pos, blocks2, true, lg), 0);
        pos += chunks[c];
        float d = max_abs_diff(lg, r.prefill + (size_t)(pos - 1) * V, V);
        if (!(d <= worst_chunk)) worst_chunk = d;
    }
    ck_assert_uint_eq(pos, r.n_prompt);
    ck_assert_msg(worst_chunk <= cd->tol, "%s: chunked prefill diff %g", cd->name, worst_chunk);
    /* Chunked and one-shot prefill of the same prompt agree with each other. */
    float d_self = max_abs_diff(lg, oneshot, V);
    ck_assert_msg(d_self <= 1e-5f, "%s: chunked vs one-shot prefill diff %g", cd->name, d_self);
    free(oneshot);

    /* Mixed batch: sequence A (blocks2, prefilled above) decodes g_0 while
     * sequence B prefills the first 20 prompt tokens into fresh blocks. */
    uint32_t blocks3[16];
    for (int i = 0; i < 16; i++) blocks3[i] = (uint32_t)(i * 3 + 2);
    sl_fwd_seq_t seqs[2] = {
        {.tokens = &r.gen[0],
         .n_tokens = 1,
         .pos = r.n_prompt,
         .blocks = blocks2,
         .n_blocks = (r.n_prompt + 1 + BS - 1) / BS,
         .want_logits = true},
        {.tokens = r.prompt,
         .n_tokens = 20,
         .pos = 0,
         .blocks = blocks3,
         .n_blocks = 2,
         .want_logits = true},
    };
    float *lg2 = malloc(2 * (size_t)V * sizeof(float));
    sl_fwd_batch_t b = {.seqs = seqs, .n_seqs = 2, .logits = lg2};
    ck_assert_int_eq(f->step(f->impl, &b), 0);
    float dA = max_abs_diff(lg2, r.dec, V);
    float dB = max_abs_diff(lg2 + V, r.prefill + 19 * (size_t)V, V);
    ck_assert_msg(dA <= cd->tol && dB <= cd->tol, "%s: mixed batch diffs %g %g", cd->name, dA, dB);
    free(lg2);
    free(lg);
    model_free(m);
    ref_free(&r);
}

START_TEST(test_case) {
    check_case(&cases[_i]);
}
END_TEST

/* Rewrites one "key": value line of DIR/config.json with sed. */
static void config_edit(const char *dir, const char *sed_expr) {
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "sed -i -E '%s' %s/config.json", sed_expr, dir);
    ck_assert_int_eq(system(cmd), 0);
}

static void copy_model(const char *from, const char *to_name, char *to, size_t len) {
    char src[600], cmd[1400];
    model_dir(from, src, sizeof src);
    model_dir(to_name, to, len);
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s %s", to, src, to);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(test_load_errors) {
    ck_assert_msg(fixture_ok, "fixture failed");
    char dir[600], *err = NULL;
    model_t *m = NULL;
    model_opts_t o = {.n_blocks = 8};

    /* intermediate_size disagrees with the gate_proj tensor. */
    copy_model("llama_f32", "bad_shape", dir, sizeof dir);
    config_edit(dir, "s/\"intermediate_size\":[[:space:]]*128/\"intermediate_size\": 96/");
    ck_assert_int_eq(model_load(dir, &o, &m, &err), SL_EFORMAT);
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(err);
    ck_assert_msg(strstr(err, "mlp.gate_proj.weight") && strstr(err, "[128, 64]"), "%s", err);
    free(err);
    err = NULL;

    /* A tied checkpoint declared untied: lm_head.weight is missing. */
    copy_model("qwen2_f32_tie", "no_lm_head", dir, sizeof dir);
    config_edit(dir, "s/\"tie_word_embeddings\":[[:space:]]*true/\"tie_word_embeddings\": false/");
    ck_assert_int_eq(model_load(dir, &o, &m, &err), SL_EFORMAT);
    ck_assert_msg(err && strstr(err, "lm_head.weight"), "%s", err ? err : "");
    free(err);
    err = NULL;

    /* Unknown architecture. */
    copy_model("llama_f32", "bad_arch", dir, sizeof dir);
    config_edit(dir, "s/LlamaForCausalLM/GPTNeoXForCausalLM/");
    ck_assert_int_eq(model_load(dir, &o, &m, &err), SL_EUNSUPPORTED);
    ck_assert_msg(err && strstr(err, "GPTNeoXForCausalLM"), "%s", err ? err : "");
    free(err);
    err = NULL;

    /* Truncated weights. */
    copy_model("llama_f32", "truncated", dir, sizeof dir);
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "truncate -s -100 %s/model.safetensors", dir);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_int_eq(model_load(dir, &o, &m, &err), SL_EFORMAT);
    ck_assert_msg(err && strstr(err, "model.safetensors") && strstr(err, "truncated"), "%s",
                  err ? err : "");
    free(err);
    err = NULL;

    /* Missing directory. */
    ck_assert_int_eq(model_load("/nonexistent/model", &o, &m, &err), SL_ENOTFOUND);
    ck_assert_ptr_nonnull(err);
    free(err);
}
END_TEST

START_TEST(test_step_errors) {
    ck_assert_msg(fixture_ok, "fixture failed");
    char *err = NULL;
    model_t *m = load("llama_f32", &err);
    ck_assert_ptr_nonnull(m);
    sl_forward_t *f = model_forward(m);
    const model_info_t *info = model_info(m);
    ck_assert_uint_eq(info->vocab_size, 512);
    ck_assert_uint_eq(info->n_layers, 2);
    ck_assert_uint_eq(info->config.n_eos, 2);
    ck_assert_uint_eq(info->block_size, BS);
    ck_assert_uint_eq(f->n_blocks, 64);
    ck_assert_uint_eq(f->block_bytes, 2u * 2 * 2 * BS * 16 * sizeof(float));
    float *lg = malloc(512 * sizeof(float));
    uint32_t toks[3] = {1, 2, 3}, bad_tok[1] = {512}, blocks[2] = {0, 1}, bad_blocks[1] = {64};
    ck_assert_int_eq(step1(f, bad_tok, 1, 0, blocks, true, lg), SL_ERANGE);
    ck_assert_int_eq(step1(f, toks, 3, 0, bad_blocks, true, lg), SL_ERANGE);
    /* Block table too short for pos + n. */
    sl_fwd_seq_t s = {.tokens = toks,
                      .n_tokens = 3,
                      .pos = 15,
                      .blocks = blocks,
                      .n_blocks = 1,
                      .want_logits = true};
    sl_fwd_batch_t b = {.seqs = &s, .n_seqs = 1, .logits = lg};
    ck_assert_int_eq(f->step(f->impl, &b), SL_ERANGE);
    /* Logits wanted from an empty chunk; positions beyond the context. */
    s = (sl_fwd_seq_t){.tokens = toks, .n_tokens = 0, .blocks = blocks, .want_logits = true};
    ck_assert_int_eq(f->step(f->impl, &b), SL_EINVAL);
    s = (sl_fwd_seq_t){.tokens = toks,
                       .n_tokens = 1,
                       .pos = info->context_length,
                       .blocks = blocks,
                       .n_blocks = 2,
                       .want_logits = true};
    ck_assert_int_eq(f->step(f->impl, &b), SL_ERANGE);
    /* Still works after the refusals. */
    ck_assert_int_eq(step1(f, toks, 3, 0, blocks, true, lg), 0);
    free(lg);
    model_free(m);
    model_free(NULL);
}
END_TEST

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    ck_assert_uint_eq(fread(b, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return b;
}

static void spill(const char *dir, const char *name, const unsigned char *b, size_t len) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *fp = fopen(p, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(fwrite(b, 1, len, fp), len);
    fclose(fp);
}

/* Random mutations of a whole sharded model directory (config digits, index
 * text, shard header bytes, shard truncation): model_load returns 0 or an
 * error with a message, never crashes (run under ASan too); a model that
 * loads must run a step. */
START_TEST(test_load_fuzz) {
    ck_assert_msg(fixture_ok, "fixture failed");
    static const char *files[] = {"config.json", "model.safetensors.index.json",
                                  "model-00001-of-00002.safetensors",
                                  "model-00002-of-00002.safetensors"};
    char src[600], dir[600];
    model_dir("llama_f32_tie_llama3_sharded", src, sizeof src);
    model_dir("fuzz", dir, sizeof dir);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s %s", dir, src, dir);
    ck_assert_int_eq(system(cmd), 0);
    unsigned char *orig[4], *buf[4];
    size_t len[4];
    for (int i = 0; i < 4; i++) {
        char p[700];
        snprintf(p, sizeof p, "%s/%s", src, files[i]);
        orig[i] = slurp(p, &len[i]);
        buf[i] = malloc(len[i] + 1);
    }
    uint64_t s = 4242;
    int ok = 0, fail = 0;
    for (int it = 0; it < 150; it++) {
        size_t wlen[4];
        for (int i = 0; i < 4; i++) {
            memcpy(buf[i], orig[i], len[i]);
            wlen[i] = len[i];
        }
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int f = (int)((s >> 40) % 4);
        int kind = (int)((s >> 50) % 3);
        for (int k = 0; k < 1 + (int)((s >> 20) % 3); k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            size_t span = f >= 2 ? (len[f] < 600 ? len[f] : 600) : len[f];
            size_t pos = (size_t)(s >> 33) % span;
            if (f == 0 && kind != 2) {
                /* change a digit of a number in config.json */
                while (pos < len[0] && !(buf[0][pos] >= '0' && buf[0][pos] <= '9')) pos++;
                if (pos < len[0]) buf[0][pos] = (unsigned char)('0' + (s >> 13) % 10);
            } else {
                buf[f][pos] = (unsigned char)"{}[]\",:0123456789 -eE"[(s >> 13) % 21];
            }
        }
        if (kind == 2 && f >= 2) wlen[f] = (size_t)(s >> 30) % len[f];
        for (int i = 0; i < 4; i++) spill(dir, files[i], buf[i], wlen[i]);
        model_opts_t o = {.n_blocks = 4};
        model_t *m = NULL;
        char *err = NULL;
        int rc = model_load(dir, &o, &m, &err);
        if (rc == 0) {
            ok++;
            sl_forward_t *fw = model_forward(m);
            uint32_t toks[3] = {1, 2, 3}, blocks[1] = {0};
            float *lg = malloc((size_t)fw->vocab_size * sizeof(float));
            int src2 = step1(fw, toks, 3, 0, blocks, true, lg);
            ck_assert_msg(src2 == 0 || src2 == SL_ERANGE, "step after fuzzed load: %d", src2);
            free(lg);
            model_free(m);
        } else {
            fail++;
            ck_assert_msg(err != NULL, "iteration %d: rc %d without a message", it, rc);
        }
        free(err);
    }
    fprintf(stderr, "load fuzz: %d loaded, %d refused\n", ok, fail);
    ck_assert_int_gt(fail, 0);
    for (int i = 0; i < 4; i++) {
        free(orig[i]);
        free(buf[i]);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("model_hf");
    TCase *tc = tcase_create("hf");
    tcase_set_timeout(tc, 120);
    tcase_add_unchecked_fixture(tc, fixture_setup, fixture_teardown);
    tcase_add_loop_test(tc, test_case, 0, (int)N_CASES);
    tcase_add_test(tc, test_load_errors);
    tcase_add_test(tc, test_step_errors);
    tcase_add_test(tc, test_load_fuzz);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
