/* test_tokenizer.c - the C tokenizer against Hugging Face `tokenizers`.
 *
 * For every tokenizer in ../shared/tokenizers/ (gpt2, qwen2.5, llama2-spm,
 * phi3-mini) a corpus (ASCII, code, whitespace runs, CJK, emoji and ZWJ
 * sequences, combining marks, non-NFC text, numbers, special-token strings,
 * invalid UTF-8) is encoded here and by tests/python/tokenizer_ref.py (run
 * through popen; a missing python3 or `tokenizers` fails the test). Checked:
 * ids with and without special tokens, decode with and without
 * skip_special, decode of random id sequences, decode(encode(x)) == x where
 * HF round-trips and for every entry marked as round-tripping, and the
 * incremental detokenizer == full decode.
 *
 * Invalid UTF-8: Python strings cannot hold it, so the reference gets the
 * bytes decoded with errors="replace" and the C side gets the raw bytes; the
 * ids must match, i.e. the C tokenizer replaces maximal invalid subparts by
 * U+FFFD exactly as Python does.
 */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/engine/detok.h"
#include "common/engine/tokenizer.h"
#include "common/engine/utf8.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <pthread.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const tok_names[] = {"gpt2", "qwen2.5", "llama2-spm", "phi3-mini"};
#define N_TOKS 4

typedef struct corpus_ent {
    const char *s;
    size_t len; /* 0: strlen */
    bool rt;    /* decode(encode(x)) == x expected on every tokenizer */
} corpus_ent_t;

#define E(str, rt)                                                                                 \
    { str, sizeof(str) - 1, rt }
static const corpus_ent_t corpus[] = {
    E("", true),
    E(" ", true),
    E("Hello world", true),
    E("Hello, world! How are you?", true),
    E("I'm sure they'll say we've done it; don't you think? He'd agree.", true),
    E("IT'S LOUD AND WE'VE GOT IT. YOU'LL SEE I'M RIGHT", true),
    E("int main(void) {\n\treturn 0;\n}\n", true),
    E("    four spaces\n\t\ttwo tabs\n", true),
    E("a  b   c    d     e", true),
    E("trailing spaces   ", true),
    E("   leading spaces", true),
    E("\n\n\nnewlines\r\n\r\nand CRLF\r\n", true),
    E(" \n \t \n", true),
    E("\t", true),
    E("x\u00a0y\u3000z\u2003w", true),   /* NBSP, ideographic, em space */
    E("zero\u200bwidth\ufeffbom", true), /* ZWSP, BOM */
    E("nel\xc2\x85line\u2028sep", true), /* U+0085, U+2028 */
    E("你好，世界！今天天气很好。", true),
    E("日本語のテキスト、カタカナ、ひらがな", true),
    E("안녕하세요 세계", true),
    E("👍😀🎉", true),
    E("👨‍👩‍👧‍👦 family and 🏳️‍🌈 flag", true),
    E("🇺🇸🇯🇵 👋🏽 🧑‍💻", true),
    E("ε = mc² ∀x∈ℝ ∑ ∫ ≠ ∞", true),
    E("नमस्ते दुनिया", true),
    E("مرحبا بالعالم", true),
    E("สวัสดีชาวโลก", true),
    E("Ñandú café naïve résumé", true),
    E("12345678901234567890", true),
    E("3.14159 -2.5e-10 1,000,000 ０１２３ ٣٤٥ ½", true),
    E("version 2024.11.21 build 0042", true),
    E("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      true),
    E("https://example.com/a?b=c&d=e#f", true),
    /* non-NFC: Qwen's NFC normalizer changes these, so no round trip */
    E("Cafe\u0301 and A\u030a and e\u0301\u0301", false),
    E("\u1100\u1161\u11a8 jamo", false),
    E("\u212b angstrom sign, \u2126 ohm sign", false),
    E("a\u0323\u0307 q\u0307\u0323 ordering", false),
    E("\u0958 nukta \u2adc fork", false),
    /* special-token strings */
    E("<|endoftext|>", false),
    E("Hello<|endoftext|>world <|endoftext|> again", false),
    E("<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n", false),
    E("<s>", false),
    E("<s> Hello </s>", false),
    E("a<s>b", false),
    E("text </s> more", false),
    E("<unk> unknown", false),
    E("<|user|>\nHello<|end|>\n<|assistant|>   Sure.<|end|>", false),
    E("<|system|>  \n\n  You are helpful.<|end|>  x", false),
    E("<|im_ <s <|end partial", true),
    /* invalid UTF-8 */
    E("\xff", false),
    E("abc\x80"
      "def",
      false),
    E("trunc \xe4\xbd", false),
    E("surrogate \xed\xa0\x80 end", false),
    E("overlong \xc0\xaf \xe0\x80\xaf", false),
    E("too big \xf4\x90\x80\x80", false),
    E("mix \xe4\xbd\xa0\xe5 \xf0\x9f\x98 x\xfe\xfe", false),
    E("\xc3", false),
};
#undef E
#define N_CORPUS (sizeof corpus / sizeof corpus[0])

static const char *root_dir(void) {
    const char *r = getenv("SLUICE_ROOT");
    return r && *r ? r : ".";
}

static char *hex_of(const char *s, size_t n) {
    char *h = malloc(n * 2 + 1);
    ck_assert_ptr_nonnull(h);
    for (size_t i = 0; i < n; i++) snprintf(h + 2 * i, 3, "%02x", (unsigned char)s[i]);
    h[2 * n] = 0;
    return h;
}

static char *unhex(const char *h, size_t *n) {
    size_t l = strlen(h);
    char *s = malloc(l / 2 + 1);
    ck_assert_ptr_nonnull(s);
    for (size_t i = 0; i < l / 2; i++) {
        unsigned v;
        ck_assert_int_eq(sscanf(h + 2 * i, "%2x", &v), 1);
        s[i] = (char)v;
    }
    s[l / 2] = 0;
    *n = l / 2;
    return s;
}

/* One reference request: the text of an E or D line. */
typedef struct req {
    char *bytes; /* E: the text */
    size_t len;
    bool rt;
    uint32_t *ids; /* D: the ids */
    size_t n_ids;
} req_t;

static uint64_t rng_state;
static uint32_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* Up to cap bytes of random text built from fragments: words, digits,
 * whitespace runs, scripts, emoji/ZWJ, combining marks, special-token
 * strings and invalid bytes. */
static size_t random_text(char *buf, size_t cap) {
    static const char *frags[] = {"the",
                                  "The",
                                  " of",
                                  "Hello",
                                  " world",
                                  "'s",
                                  "'T",
                                  "'ll",
                                  "don't",
                                  "x",
                                  "_",
                                  "ab",
                                  "0",
                                  "7",
                                  "42",
                                  "2024",
                                  "3.14",
                                  " ",
                                  "  ",
                                  "   ",
                                  "\t",
                                  "\n",
                                  "\n\n",
                                  "\r\n",
                                  " \n",
                                  "\t ",
                                  "\u00a0",
                                  "\u3000",
                                  "\u2028",
                                  "\xc2\x85",
                                  "\u200b",
                                  "\ufeff",
                                  "你",
                                  "好世界",
                                  "日本",
                                  "한국",
                                  "ąę",
                                  "Ελ",
                                  "Жи",
                                  "עב",
                                  "عر",
                                  "हि",
                                  "ไทย",
                                  "👍",
                                  "😀",
                                  "👨\u200d👩",
                                  "🏳️\u200d🌈",
                                  "🇺🇸",
                                  "👋🏽",
                                  "e\u0301",
                                  "\u0301",
                                  "a\u0308\u0301",
                                  "\u1100\u1161",
                                  "\u212b",
                                  "ﬁ",
                                  "①",
                                  "½",
                                  "０",
                                  "<s>",
                                  "</s>",
                                  "<unk>",
                                  "<|endoftext|>",
                                  "<|im_start|>",
                                  "<|im_end|>",
                                  "<|end|>",
                                  "<|user|>",
                                  "<|assistant|>",
                                  "<",
                                  "|",
                                  ">",
                                  "\xe2\x96\x81",
                                  "\xff",
                                  "\xc3",
                                  "\xe4\xbd",
                                  "\xed\xa0\x80",
                                  "\xf0\x9f\x98",
                                  "\x80",
                                  "{",
                                  "}",
                                  "();",
                                  "->",
                                  "==",
                                  "#",
                                  "//",
                                  "\"",
                                  "'",
                                  ",",
                                  ".",
                                  "!",
                                  "?",
                                  "...",
                                  "--",
                                  "$",
                                  "%"};
    size_t n = 0, nf = sizeof frags / sizeof frags[0];
    while (n < cap) {
        const char *f = frags[rng() % nf];
        size_t l = strlen(f);
        if (n + l > cap) break;
        memcpy(buf + n, f, l);
        n += l;
        if (rng() % 40 == 0) break;
    }
    return n;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    ck_assert_int_ge(sz, 0);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)sz + 1);
    ck_assert_ptr_nonnull(buf);
    *len = fread(buf, 1, (size_t)sz, f);
    buf[*len] = 0;
    fclose(f);
    return buf;
}

static void check_ids(const char *what, const char *tok, size_t idx, const req_t *rq,
                      const uint32_t *got, size_t ngot, const cJSON *want) {
    ck_assert_msg(cJSON_IsArray(want), "%s: reference gave no ids", tok);
    size_t nw = (size_t)cJSON_GetArraySize(want);
    bool same = nw == ngot;
    size_t i = 0;
    for (const cJSON *e = want->child; same && e; e = e->next, i++)
        if ((uint32_t)e->valuedouble != got[i]) same = false;
    if (!same) {
        char *w = cJSON_PrintUnformatted(want);
        char g[2048];
        size_t o = 0;
        for (size_t k = 0; k < ngot && o + 16 < sizeof g; k++)
            o += (size_t)snprintf(g + o, sizeof g - o, "%s%u", k ? "," : "", got[k]);
        g[o] = 0;
        char *hx = hex_of(rq->bytes, rq->len < 300 ? rq->len : 300);
        ck_abort_msg("%s %s entry %zu: ids differ\n  text: %s\n  HF: %s\n  C:  [%s]", tok, what,
                     idx, hx, w, g);
    }
}

/* Streams ids through a detok and checks the pieces against full. */
static void check_detok(const sl_tokenizer_t *t, const uint32_t *ids, size_t n, bool skip,
                        const char *full, size_t full_len, const char *ctx) {
    sl_detok_t *d;
    ck_assert_int_eq(sl_detok_new(t, skip, &d), 0);
    char *acc = malloc(full_len + 64);
    size_t al = 0;
    const char *piece;
    size_t pl;
    for (size_t i = 0; i <= n; i++) {
        int rc = i < n ? sl_detok_push(d, ids[i], &piece, &pl) : sl_detok_finish(d, &piece, &pl);
        ck_assert_int_eq(rc, 0);
        ck_assert_msg(sl_utf8_valid((const uint8_t *)piece, pl), "%s: detok piece not UTF-8", ctx);
        ck_assert_msg(al + pl <= full_len, "%s: detok emitted more than full decode", ctx);
        memcpy(acc + al, piece, pl);
        al += pl;
    }
    ck_assert_msg(al == full_len && memcmp(acc, full, al) == 0,
                  "%s: detok concatenation differs from decode", ctx);
    free(acc);
    sl_detok_free(d);
}

static bool allow_hf_panic; /* only the Strip-decoder variant may make HF panic */

static void check_decode(const sl_tokenizer_t *t, const uint32_t *ids, size_t n, const cJSON *rep,
                         const char *ctx) {
    for (int skip = 0; skip < 2; skip++) {
        const cJSON *h = cJSON_GetObjectItem(rep, skip ? "dec_skip" : "dec");
        if (cJSON_IsNull(h) && allow_hf_panic) continue; /* HF's Strip decoder panicked */
        ck_assert_msg(cJSON_IsString(h), "%s: no dec in reference", ctx);
        size_t wl;
        char *want = unhex(h->valuestring, &wl);
        char *got;
        size_t gl;
        ck_assert_int_eq(sl_tokenizer_decode(t, ids, n, skip, &got, &gl), 0);
        ck_assert_msg(gl == wl && memcmp(got, want, gl) == 0,
                      "%s skip=%d: decode differs\n  HF: %s\n  C:  %s", ctx, skip, want, got);
        check_detok(t, ids, n, skip, got, gl, ctx);
        free(want);
        free(got);
    }
}

/* Encodes/decodes the corpus (and n_random random id sequences) with the
 * tokenizer in dir and with HF, and checks that they agree. */
static void compare_with_hf(const char *dir, const char *name, uint64_t seed, size_t n_random,
                            bool check_rt) {
    char path[1024], cmd[8192], tmp[] = "/tmp/sl_tokref_XXXXXX";
    sl_tokenizer_t *t = NULL;
    ck_assert_msg(sl_tokenizer_load(dir, &t) == 0, "%s: load failed", name);
    uint32_t vs = sl_tokenizer_vocab_size(t);

    /* requests: corpus, corpus file lines, random id sequences */
    size_t file_len;
    snprintf(path, sizeof path, "%s/tests/data/tokenizer_corpus.txt", root_dir());
    char *file = read_file(path, &file_len);
    /* SLUICE_TOK_FUZZ_N raises the number of random texts and id lists
     * for a deeper differential run by hand */
    const char *fz = getenv("SLUICE_TOK_FUZZ_N"), *san = getenv("SLUICE_SANITIZED");
    if (san && *san && strcmp(san, "0")) n_random /= 3; /* same paths, less time under ASan */
    if (fz && *fz) n_random = strtoul(fz, NULL, 10);
    size_t cap_reqs = N_CORPUS + 220 + 2 * n_random;
    req_t *reqs = calloc(cap_reqs, sizeof *reqs);
    char **owned = calloc(n_random + 10, sizeof *owned);
    size_t n_owned = 0;
    size_t nr = 0;
    for (size_t i = 0; i < N_CORPUS; i++)
        reqs[nr++] = (req_t){(char *)corpus[i].s, corpus[i].len, corpus[i].rt, NULL, 0};
    for (char *p = file; *p && nr < 200;) {
        char *nl = strchr(p, '\n');
        size_t l = nl ? (size_t)(nl - p + 1) : strlen(p);
        reqs[nr++] = (req_t){p, l, true, NULL, 0};
        p += l;
    }
    reqs[nr++] = (req_t){file, file_len, true, NULL, 0}; /* all of it at once */
    rng_state = 0x9E3779B97F4A7C15ull ^ seed;
    /* random texts from fragments of every kind (differential fuzzing) */
    for (size_t r = 0; r < n_random; r++) {
        char *txt = malloc(512);
        size_t tl = random_text(txt, 400 + rng() % 100);
        owned[n_owned++] = txt;
        reqs[nr++] = (req_t){txt, tl, false, NULL, 0};
    }
    /* long runs: one huge BPE word, long whitespace for the split regexes */
    static const char *const runs[] = {"a", " ", "\xc3\xa9", "\n ", "1", "!?", "\t"};
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        size_t rl = strlen(runs[r]), cnt = 6000 / rl;
        char *txt = malloc(cnt * rl + 4);
        for (size_t k = 0; k < cnt; k++) memcpy(txt + k * rl, runs[r], rl);
        memcpy(txt + cnt * rl, "x y", 3);
        owned[n_owned++] = txt;
        reqs[nr++] = (req_t){txt, cnt * rl + 3, false, NULL, 0};
    }
    size_t n_total = nr + n_random;
    while (nr < n_total) {
        size_t n = 1 + rng() % 24;
        uint32_t *ids = malloc(n * sizeof *ids);
        for (size_t k = 0; k < n; k++) {
            uint32_t r = rng() % 10;
            if (r < 4)
                ids[k] = 3 + rng() % 256; /* SPM byte tokens, byte-level singles */
            else if (r < 5)
                ids[k] = vs - 1 - rng() % 24; /* added tokens */
            else if (r < 6)
                ids[k] = vs + rng() % 4; /* out of range: dropped */
            else
                ids[k] = rng() % vs;
        }
        reqs[nr++] = (req_t){NULL, 0, false, ids, n};
    }

    int fd = mkstemp(tmp);
    ck_assert_int_ge(fd, 0);
    FILE *in = fdopen(fd, "w");
    for (size_t i = 0; i < nr; i++) {
        if (reqs[i].ids) {
            fputs("D ", in);
            for (size_t k = 0; k < reqs[i].n_ids; k++) fprintf(in, "%u,", reqs[i].ids[k]);
            fputc('\n', in);
        } else {
            char *h = hex_of(reqs[i].bytes, reqs[i].len);
            fprintf(in, "E %s\n", h);
            free(h);
        }
    }
    fclose(in);
    /* HF panics (and prints a Rust backtrace) only where allow_hf_panic */
    snprintf(cmd, sizeof cmd,
             "RUST_BACKTRACE=0 python3 '%s/tests/python/tokenizer_ref.py' '%s' < '%s'%s",
             root_dir(), dir, tmp, allow_hf_panic ? " 2>/dev/null" : "");
    FILE *ref = popen(cmd, "r");
    ck_assert_ptr_nonnull(ref);
    char *line = NULL;
    size_t cap = 0;
    size_t got_lines = 0;
    for (size_t i = 0; i < nr; i++) {
        ssize_t l = getline(&line, &cap, ref);
        if (l <= 0) break;
        got_lines++;
        cJSON *rep = cJSON_Parse(line);
        ck_assert_msg(rep != NULL, "bad reference line");
        char ctx[128];
        snprintf(ctx, sizeof ctx, "%s entry %zu", name, i);
        if (reqs[i].ids) {
            check_decode(t, reqs[i].ids, reqs[i].n_ids, rep, ctx);
            cJSON_Delete(rep);
            continue;
        }
        uint32_t *ids, *ids_sp;
        size_t n, n_sp;
        ck_assert_int_eq(sl_tokenizer_encode(t, reqs[i].bytes, reqs[i].len, false, &ids, &n), 0);
        ck_assert_int_eq(sl_tokenizer_encode(t, reqs[i].bytes, reqs[i].len, true, &ids_sp, &n_sp),
                         0);
        check_ids("plain", name, i, &reqs[i], ids, n, cJSON_GetObjectItem(rep, "ids"));
        check_ids("add_special", name, i, &reqs[i], ids_sp, n_sp,
                  cJSON_GetObjectItem(rep, "ids_sp"));
        check_decode(t, ids_sp, n_sp, rep, ctx);
        /* round trip: C agrees with HF on whether it holds, and it holds
         * for every entry marked so */
        char *dec, *clean;
        size_t dl, cl;
        ck_assert_int_eq(sl_tokenizer_decode(t, ids, n, false, &dec, &dl), 0);
        ck_assert_int_eq(sl_utf8_sanitize((const uint8_t *)reqs[i].bytes, reqs[i].len, &clean, &cl),
                         0);
        bool rt = dl == cl && memcmp(dec, clean, cl) == 0;
        if (!(allow_hf_panic && cJSON_IsNull(cJSON_GetObjectItem(rep, "dec"))))
            ck_assert_msg(rt == cJSON_IsTrue(cJSON_GetObjectItem(rep, "rt")),
                          "%s: round trip %d but HF says %d", ctx, rt, !rt);
        if (check_rt && reqs[i].rt) ck_assert_msg(rt, "%s: decode(encode(x)) != x: [%s]", ctx, dec);
        free(dec);
        free(clean);
        free(ids);
        free(ids_sp);
        cJSON_Delete(rep);
    }
    int st = pclose(ref);
    free(line);
    unlink(tmp);
    ck_assert_msg(st == 0 && got_lines == nr,
                  "reference failed (status %d, %zu of %zu replies): is python3 with `tokenizers` "
                  "installed? run deploy/deps-python.sh",
                  st, got_lines, nr);
    for (size_t i = 0; i < nr; i++) free(reqs[i].ids);
    for (size_t i = 0; i < n_owned; i++) free(owned[i]);
    free(owned);
    free(reqs);
    free(file);
    sl_tokenizer_free(t);
}

START_TEST(test_matches_hf) {
    char dir[2048], path[1024];
    harness_shared("tokenizers", path, sizeof path);
    snprintf(dir, sizeof dir, "%s/%s", path, tok_names[_i]);
    compare_with_hf(dir, tok_names[_i], (uint64_t)_i, 220, true);
}
END_TEST

/* The byte-level tokenizer that bench/genmodel writes into test models must
 * load and match HF too (skipped only where genmodel is not built). */
START_TEST(test_genmodel_tokenizer) {
    const char *bd = getenv("SLUICE_BENCH_DIR");
    char gen[1024], tmpd[512], cmd[2048];
    snprintf(gen, sizeof gen, "%s/genmodel", bd && *bd ? bd : "build/bench");
    if (access(gen, X_OK) != 0) return;
    ck_assert_int_eq(harness_mkdtemp("sl_tokgen", tmpd, sizeof tmpd), 0);
    snprintf(cmd, sizeof cmd, "'%s' --preset tiny --out '%s/m' >/dev/null 2>&1", gen, tmpd);
    ck_assert_int_eq(system(cmd), 0);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/m", tmpd);
    allow_hf_panic = false;
    compare_with_hf(dir, "genmodel", 7, 40, false);
    harness_rmtree(tmpd);
}
END_TEST

/* Variants of the shared tokenizers exercising components none of them uses
 * (Llama 3 split regex and ignore_merges, Metaspace, Digits, Split
 * behaviours, Strip, lstrip/single_word added tokens, ...): the JSON is
 * edited here, written to a temp dir and compared with HF like the rest. */
static const struct variant {
    const char *name, *base;
    const char *edits[6][2]; /* key, JSON value (NULL key ends) */
} variants[] = {
    {"llama3-like",
     "gpt2",
     {{"pre_tokenizer",
       "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
       "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| "
       "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
       "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":"
       "false,\"trim_offsets\":true,\"use_regex\":false}]}"},
      {"post_processor",
       "{\"type\":\"Sequence\",\"processors\":[{\"type\":\"ByteLevel\",\"add_prefix_space\":true,"
       "\"trim_offsets\":false,\"use_regex\":true},{\"type\":\"TemplateProcessing\",\"single\":"
       "[{\"SpecialToken\":{\"id\":\"<|endoftext|>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\","
       "\"type_id\":0}}],\"pair\":[],\"special_tokens\":{\"<|endoftext|>\":{\"id\":\"<|endoftext|>"
       "\","
       "\"ids\":[50256],\"tokens\":[\"<|endoftext|>\"]}}}]}"},
      {"model.ignore_merges", "true"},
      {NULL, NULL}}},
    {"bytelevel-prefix-added",
     "gpt2",
     {{"pre_tokenizer", "{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,"
                        "\"use_regex\":true}"},
      {"added_tokens",
       "[{\"id\":50256,\"content\":\"<|endoftext|>\",\"single_word\":false,\"lstrip\":true,"
       "\"rstrip\":false,\"normalized\":false,\"special\":true},{\"id\":50257,\"content\":"
       "\"<s>\",\"single_word\":false,\"lstrip\":true,\"rstrip\":true,\"normalized\":false,"
       "\"special\":false},{\"id\":50258,\"content\":\"Hello\",\"single_word\":true,\"lstrip\":"
       "false,\"rstrip\":false,\"normalized\":false,\"special\":false},{\"id\":50259,\"content\":"
       "\"world\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":true,"
       "\"special\":false}]"},
      {NULL, NULL}}},
    {"splits-strip",
     "gpt2",
     {{"normalizer",
       "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Strip\",\"strip_left\":true,"
       "\"strip_right\":true},{\"type\":\"Replace\",\"pattern\":{\"String\":\"ab\"},"
       "\"content\":\"AB\"}]}"},
      {"pre_tokenizer",
       "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\",\"individual_digits\":"
       "false},{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},\"behavior\":"
       "\"MergedWithPrevious\",\"invert\":false},{\"type\":\"Split\",\"pattern\":{\"Regex\":"
       "\"[,.;]\"},\"behavior\":\"MergedWithNext\",\"invert\":false},{\"type\":\"Split\","
       "\"pattern\":{\"Regex\":\"\\\\p{Lo}\"},\"behavior\":\"Contiguous\",\"invert\":true},"
       "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\n+\"},\"behavior\":\"Removed\","
       "\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":"
       "false,\"trim_offsets\":false}]}"},
      {"decoder",
       "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"ByteLevel\",\"add_prefix_space\":"
       "true,\"trim_offsets\":true,\"use_regex\":true},{\"type\":\"Strip\","
       "\"content\":\" \",\"start\":2,\"stop\":1}]}"},
      {NULL, NULL}}},
    {"metaspace-first",
     "llama2-spm",
     {{"normalizer", "null"},
      {"pre_tokenizer",
       "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"first\","
       "\"split\":false}"},
      {"decoder",
       "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"ByteFallback\"},{\"type\":\"Metaspace\","
       "\"replacement\":\"\\u2581\",\"prepend_scheme\":\"first\",\"split\":false}]}"},
      {NULL, NULL}}},
    {"metaspace-split",
     "llama2-spm",
     {{"normalizer", "null"},
      {"pre_tokenizer",
       "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"add_prefix_space\":true}"},
      {"decoder",
       "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":"
       "\"\\u2581\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},"
       "{\"type\":\"Replace\",\"pattern\":{\"String\":\"  \"},\"content\":\"_\"}]}"},
      {"post_processor", "null"},
      {NULL, NULL}}},
    {"regex-replace-punct",
     "gpt2",
     {{"normalizer",
       "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Replace\",\"pattern\":{\"Regex\":"
       "\" {2,}\"},\"content\":\" \"},{\"type\":\"Replace\",\"pattern\":{\"Regex\":"
       "\"\\\\p{Nd}+\"},\"content\":\"<n>\"}]}"},
      {"pre_tokenizer",
       "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Punctuation\",\"behavior\":"
       "\"Isolated\"},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":"
       "true,\"use_regex\":true}]}"},
      {NULL, NULL}}},
    {"no-decoder", "gpt2", {{"decoder", "null"}, {NULL, NULL}}},
};
#define N_VARIANTS (sizeof variants / sizeof variants[0])

START_TEST(test_variants_match_hf) {
    const struct variant *v = &variants[_i];
    char dir[1024], path[2048], tmpd[512];
    harness_shared("tokenizers", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/%s/tokenizer.json", dir, v->base);
    size_t len;
    char *js = read_file(path, &len);
    cJSON *root = cJSON_Parse(js);
    ck_assert_ptr_nonnull(root);
    for (int k = 0; v->edits[k][0]; k++) {
        cJSON *val = cJSON_Parse(v->edits[k][1]);
        ck_assert_msg(val != NULL, "%s: edit %d is not JSON", v->name, k);
        cJSON *obj = root;
        const char *key = v->edits[k][0];
        if (!strncmp(key, "model.", 6)) {
            obj = cJSON_GetObjectItem(root, "model");
            key += 6;
        }
        if (cJSON_GetObjectItem(obj, key))
            cJSON_ReplaceItemInObject(obj, key, val);
        else
            cJSON_AddItemToObject(obj, key, val);
    }
    char *out = cJSON_PrintUnformatted(root);
    ck_assert_int_eq(harness_mkdtemp("sl_tokvar", tmpd, sizeof tmpd), 0);
    snprintf(path, sizeof path, "%s/tokenizer.json", tmpd);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(out, f);
    fclose(f);
    allow_hf_panic = strstr(v->name, "strip") != NULL;
    compare_with_hf(tmpd, v->name, 100 + (uint64_t)_i, 60, false);
    harness_rmtree(tmpd);
    free(out);
    free(js);
    cJSON_Delete(root);
}
END_TEST

static sl_tokenizer_t *load_shared(const char *name) {
    char dir[2048], path[1024];
    harness_shared("tokenizers", path, sizeof path);
    snprintf(dir, sizeof dir, "%s/%s", path, name);
    sl_tokenizer_t *t = NULL;
    ck_assert_int_eq(sl_tokenizer_load(dir, &t), 0);
    return t;
}

START_TEST(test_api_queries) {
    sl_tokenizer_t *t = load_shared("llama2-spm");
    ck_assert_uint_eq(sl_tokenizer_vocab_size(t), 32000);
    ck_assert_int_eq(sl_tokenizer_bos_id(t), 1);
    ck_assert_int_eq(sl_tokenizer_eos_id(t), 2);
    ck_assert(sl_tokenizer_is_special(t, 1));
    ck_assert(!sl_tokenizer_is_special(t, 100));
    ck_assert(!sl_tokenizer_is_special(t, 999999));
    ck_assert_int_eq(sl_tokenizer_token_to_id(t, "<0x0A>", 6), 13);
    ck_assert_int_eq(sl_tokenizer_token_to_id(t, "nope-not-a-token", 16), SL_ENOTFOUND);
    ck_assert_str_eq(sl_tokenizer_id_to_token(t, 13), "<0x0A>");
    ck_assert_ptr_null(sl_tokenizer_id_to_token(t, 32000));
    const uint8_t *b;
    size_t bl;
    ck_assert_int_eq(sl_tokenizer_token_bytes(t, 13, &b, &bl), 0); /* <0x0A> */
    ck_assert_uint_eq(bl, 1);
    ck_assert_uint_eq(b[0], '\n');
    int32_t hello = sl_tokenizer_token_to_id(t, "\xe2\x96\x81Hello", 8);
    ck_assert_int_ge(hello, 0);
    ck_assert_int_eq(sl_tokenizer_token_bytes(t, (uint32_t)hello, &b, &bl), 0);
    ck_assert_uint_eq(bl, 6);
    ck_assert_mem_eq(b, " Hello", 6);
    ck_assert_int_eq(sl_tokenizer_token_bytes(t, 40000, &b, &bl), SL_ENOTFOUND);
    sl_tokenizer_free(t);

    t = load_shared("gpt2");
    ck_assert_uint_eq(sl_tokenizer_vocab_size(t), 50257);
    ck_assert_int_eq(sl_tokenizer_eos_id(t), 50256);
    int32_t sp_the = sl_tokenizer_token_to_id(t, "\xc4\xa0the", 5); /* "Ġthe" */
    ck_assert_int_ge(sp_the, 0);
    ck_assert_int_eq(sl_tokenizer_token_bytes(t, (uint32_t)sp_the, &b, &bl), 0);
    ck_assert_uint_eq(bl, 4);
    ck_assert_mem_eq(b, " the", 4);
    /* a token that is half of a UTF-8 character gives that raw byte */
    uint32_t *ids;
    size_t n;
    ck_assert_int_eq(sl_tokenizer_encode(t, "\xf0\x9f\x98\x80", 4, false, &ids, &n), 0);
    ck_assert_uint_gt(n, 1);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(sl_tokenizer_token_bytes(t, ids[i], &b, &bl), 0);
        total += bl;
    }
    ck_assert_uint_eq(total, 4);
    free(ids);
    /* bad arguments */
    ck_assert_int_eq(sl_tokenizer_encode(NULL, "a", 1, false, &ids, &n), SL_EINVAL);
    ck_assert_int_eq(sl_tokenizer_encode(t, NULL, 1, false, &ids, &n), SL_EINVAL);
    ck_assert_int_eq(sl_tokenizer_encode(t, NULL, 0, false, &ids, &n), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_nonnull(ids);
    free(ids);
    char *s;
    ck_assert_int_eq(sl_tokenizer_decode(t, NULL, 3, false, &s, NULL), SL_EINVAL);
    ck_assert_int_eq(sl_tokenizer_load(NULL, &t), SL_EINVAL);
    sl_tokenizer_t *none = NULL;
    ck_assert_int_lt(sl_tokenizer_load("/nonexistent/dir", &none), 0);
    ck_assert_ptr_null(none);
    sl_tokenizer_free(NULL);
    sl_detok_free(NULL);
    sl_tokenizer_free(t);

    t = load_shared("qwen2.5");
    ck_assert_int_eq(sl_tokenizer_bos_id(t), -1);
    ck_assert_int_eq(sl_tokenizer_token_to_id(t, "<|im_end|>", 10), 151645);
    ck_assert(sl_tokenizer_is_special(t, 151645));
    ck_assert_uint_eq(sl_tokenizer_vocab_size(t), 151665);
    sl_tokenizer_free(t);
}
END_TEST

/* Many threads encoding with one tokenizer (shared word cache) get the same
 * ids as one thread. */
typedef struct thr_arg {
    const sl_tokenizer_t *t;
    const char *text;
    size_t len;
    const uint32_t *want;
    size_t n_want;
    int bad;
} thr_arg_t;

static void *thr_encode(void *p) {
    thr_arg_t *a = p;
    for (int r = 0; r < 20; r++) {
        uint32_t *ids;
        size_t n;
        if (sl_tokenizer_encode(a->t, a->text, a->len, r & 1, &ids, &n)) {
            a->bad++;
            continue;
        }
        size_t off = (r & 1) ? 1 : 0; /* llama2 adds <s> */
        if (n != a->n_want + off || memcmp(ids + off, a->want, a->n_want * sizeof *ids)) a->bad++;
        free(ids);
    }
    return NULL;
}

START_TEST(test_threads_share_tokenizer) {
    sl_tokenizer_t *t = load_shared("llama2-spm");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/data/tokenizer_corpus.txt", root_dir());
    size_t len;
    char *text = read_file(path, &len);
    uint32_t *want;
    size_t nw;
    ck_assert_int_eq(sl_tokenizer_encode(t, text, len, false, &want, &nw), 0);
    pthread_t th[4];
    thr_arg_t args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thr_arg_t){t, text, len, want, nw, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, thr_encode, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(args[i].bad, 0);
    }
    free(want);
    free(text);
    sl_tokenizer_free(t);
}
END_TEST

/* A detok primed with the first k ids returns exactly the rest of the full
 * decode; Llama 2's first generated "▁Hello" keeps its space after a prime. */
START_TEST(test_detok_prime) {
    sl_tokenizer_t *t = load_shared(tok_names[_i]);
    for (size_t c = 0; c < N_CORPUS; c++) {
        uint32_t *ids;
        size_t n;
        ck_assert_int_eq(sl_tokenizer_encode(t, corpus[c].s, corpus[c].len, true, &ids, &n), 0);
        char *full;
        size_t fl;
        ck_assert_int_eq(sl_tokenizer_decode(t, ids, n, false, &full, &fl), 0);
        for (size_t k = 0; k <= n; k += 1 + n / 5) {
            sl_detok_t *a, *b;
            ck_assert_int_eq(sl_detok_new(t, false, &a), 0);
            ck_assert_int_eq(sl_detok_new(t, false, &b), 0);
            size_t pl = 0, got = 0;
            const char *p;
            size_t l;
            for (size_t i = 0; i < k; i++) {
                ck_assert_int_eq(sl_detok_push(a, ids[i], &p, &l), 0);
                pl += l;
            }
            ck_assert_int_eq(sl_detok_prime(b, ids, k), 0);
            for (size_t i = k; i <= n; i++) {
                int rc = i < n ? sl_detok_push(b, ids[i], &p, &l) : sl_detok_finish(b, &p, &l);
                ck_assert_int_eq(rc, 0);
                ck_assert_msg(pl + got + l <= fl && !memcmp(full + pl + got, p, l),
                              "%s entry %zu k=%zu: primed detok diverges", tok_names[_i], c, k);
                got += l;
            }
            ck_assert_uint_eq(pl + got, fl);
            sl_detok_free(a);
            sl_detok_free(b);
        }
        free(full);
        free(ids);
    }
    if (!strcmp(tok_names[_i], "llama2-spm")) {
        int32_t hello = sl_tokenizer_token_to_id(t, "\xe2\x96\x81Hello", 8);
        uint32_t ctx[1] = {1}; /* <s> */
        sl_detok_t *d;
        const char *p;
        size_t l;
        ck_assert_int_eq(sl_detok_new(t, true, &d), 0);
        ck_assert_int_eq(sl_detok_push(d, (uint32_t)hello, &p, &l), 0);
        ck_assert_str_eq(p, "Hello"); /* alone: HF strips the leading space */
        sl_detok_free(d);
        ck_assert_int_eq(sl_detok_new(t, true, &d), 0);
        ck_assert_int_eq(sl_detok_prime(d, ctx, 1), 0);
        ck_assert_int_eq(sl_detok_push(d, (uint32_t)hello, &p, &l), 0);
        ck_assert_str_eq(p, " Hello");
        ck_assert_int_eq(sl_detok_prime(NULL, ctx, 1), SL_EINVAL);
        sl_detok_free(d);
    }
    sl_tokenizer_free(t);
}
END_TEST

/* The detokenizer holds partial characters back and emits them whole. */
START_TEST(test_detok_holds_partial_utf8) {
    for (int k = 0; k < 2; k++) {
        sl_tokenizer_t *t = load_shared(k ? "llama2-spm" : "gpt2");
        const char *text = "ok \xf0\x9f\x98\x80 \xe4\xbd\xa0\xe5\xa5\xbd!";
        uint32_t *ids;
        size_t n;
        ck_assert_int_eq(sl_tokenizer_encode(t, text, strlen(text), false, &ids, &n), 0);
        sl_detok_t *d;
        ck_assert_int_eq(sl_detok_new(t, true, &d), 0);
        char acc[128];
        size_t al = 0, pieces_with_emoji = 0;
        for (size_t i = 0; i <= n; i++) {
            const char *p;
            size_t pl;
            ck_assert_int_eq(
                i < n ? sl_detok_push(d, ids[i], &p, &pl) : sl_detok_finish(d, &p, &pl), 0);
            ck_assert(sl_utf8_valid((const uint8_t *)p, pl));
            ck_assert_uint_eq(strlen(p), pl);
            if (memmem(p, pl, "\xf0\x9f\x98\x80", 4)) pieces_with_emoji++;
            memcpy(acc + al, p, pl);
            al += pl;
        }
        acc[al] = 0;
        ck_assert_str_eq(acc, text);
        ck_assert_uint_eq(pieces_with_emoji, 1);
        /* a truncated character at the end becomes U+FFFD on finish */
        const char *p;
        size_t pl;
        uint32_t lone = k ? 3 + 0xF0 : (uint32_t)sl_tokenizer_token_to_id(t, "\xc3\xb0", 2);
        ck_assert_int_eq(sl_detok_push(d, lone, &p, &pl), 0);
        ck_assert_uint_eq(pl, 0);
        ck_assert_int_eq(sl_detok_finish(d, &p, &pl), 0);
        ck_assert_str_eq(p, "\xef\xbf\xbd");
        ck_assert_int_eq(sl_detok_push(NULL, 1, &p, &pl), SL_EINVAL);
        sl_detok_free(d);
        free(ids);
        sl_tokenizer_free(t);
    }
}
END_TEST

START_TEST(test_utf8_replacement) {
    /* expected outputs are Python's bytes.decode("utf-8", "replace") */
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"a\xff"
         "b",
         "a\xef\xbf\xbd"
         "b"},
        {"\xe4\xbd", "\xef\xbf\xbd"},
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xf0\x9f\x98", "\xef\xbf\xbd"},
        {"\xf0\x9f\x98x", "\xef\xbf\xbdx"},
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xe0\x80\xaf", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"ok \xc3\xa9", "ok \xc3\xa9"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *o;
        size_t ol;
        ck_assert_int_eq(
            sl_utf8_sanitize((const uint8_t *)cases[i].in, strlen(cases[i].in), &o, &ol), 0);
        ck_assert_msg(strcmp(o, cases[i].out) == 0, "case %zu", i);
        free(o);
    }
    ck_assert_uint_eq(sl_utf8_final_prefix((const uint8_t *)"ab\xe4\xbd", 4), 2);
    ck_assert_uint_eq(sl_utf8_final_prefix((const uint8_t *)"ab\xe4\x20", 4), 4);
    ck_assert_uint_eq(sl_utf8_final_prefix((const uint8_t *)"\xf0\x9f\x98", 3), 0);
    ck_assert_uint_eq(sl_utf8_final_prefix((const uint8_t *)"\xed\xa0", 2), 2);
}
END_TEST

/* ---- fuzz-style: malformed tokenizer files and random input ----------------- */
static void log_discard(sl_log_level_t level, const char *line, void *ud) {
    (void)level;
    (void)line;
    (void)ud;
}

static const char mini_json[] =
    "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":5,\"content\":\"<e>\",\"single_word\":false,"
    "\"lstrip\":true,\"rstrip\":true,\"normalized\":false,\"special\":true}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},"
    "{\"type\":\"Replace\",\"pattern\":{\"String\":\"x\"},\"content\":\"y\"}]},"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","
    "\"pattern\":{\"Regex\":\"\\\\p{N}|\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},"
    "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]},"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
    "{\"id\":\"<e>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],"
    "\"special_tokens\":{\"<e>\":{\"id\":\"<e>\",\"ids\":[5],\"tokens\":[\"<e>\"]}}},"
    "\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"byte_fallback\":false,"
    "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"y\":3,\"aby\":4},\"merges\":[\"a b\",[\"ab\",\"y\"]]}}";

static void try_load_and_use(const char *js, size_t len) {
    sl_tokenizer_t *t = NULL;
    int rc = sl_tokenizer_load_mem(js, len, NULL, 0, &t);
    if (rc) {
        ck_assert_ptr_null(t);
        ck_assert_int_lt(rc, 0);
        return;
    }
    uint32_t *ids;
    size_t n;
    if (sl_tokenizer_encode(t, "abx <e> 12 ab\xff", 14, true, &ids, &n) == 0) {
        char *s;
        if (sl_tokenizer_decode(t, ids, n, false, &s, NULL) == 0) free(s);
        free(ids);
    }
    sl_tokenizer_free(t);
}

START_TEST(test_mini_tokenizer) {
    sl_tokenizer_t *t = NULL;
    ck_assert_int_eq(sl_tokenizer_load_mem(mini_json, strlen(mini_json), NULL, 0, &t), 0);
    uint32_t *ids;
    size_t n;
    /* "abx" -> NFC, x->y -> "aby" -> merges a+b, ab+y -> 4; "<e>" rstrip/lstrip */
    ck_assert_int_eq(sl_tokenizer_encode(t, "abx  <e>  ab", 12, true, &ids, &n), 0);
    ck_assert_uint_eq(n, 4);
    ck_assert_uint_eq(ids[0], 5);
    ck_assert_uint_eq(ids[1], 4);
    ck_assert_uint_eq(ids[2], 5);
    ck_assert_uint_eq(ids[3], 2);
    free(ids);
    sl_tokenizer_free(t);
    /* semantic errors */
    sl_log_set_sink(log_discard, NULL);
    static const char *bad[] = {
        "[]",
        "{}",
        "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}",
        "{\"model\":{\"vocab\":{\"a\":-1},\"merges\":[]}}",
        "{\"model\":{\"vocab\":{\"a\":1.5},\"merges\":[]}}",
        "{\"model\":{\"vocab\":{\"a\":99999999999},\"merges\":[]}}",
        "{\"model\":{\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}}",
        "{\"model\":{\"vocab\":{\"a\":0},\"merges\":[\"a q\"]}}",
        "{\"model\":{\"vocab\":{\"a\":0},\"merges\":[\"a\"]}}",
        "{\"model\":{\"vocab\":{\"a\":0},\"merges\":[[\"a\"]]}}",
        "{\"model\":{\"vocab\":{\"a\":0},\"merges\":7}}",
        "{\"model\":{\"vocab\":{\"a\":0}},\"added_tokens\":[{\"id\":\"x\",\"content\":\"a\"}]}",
        "{\"model\":{\"vocab\":{\"a\":0}},\"added_tokens\":[{\"id\":1,\"content\":\"\"}]}",
        "{\"model\":{\"vocab\":{\"a\":0}},\"normalizer\":{\"type\":\"NFKD\"}}",
        "{\"model\":{\"vocab\":{\"a\":0}},\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":"
        "{\"Regex\":\"(\"},\"behavior\":\"Isolated\"}}",
        "{\"model\":{\"vocab\":{\"a\":0}},\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":"
        "{\"Regex\":\"a\"},\"behavior\":\"Sideways\"}}",
        "{\"model\":{\"vocab\":{\"a\":0}},\"decoder\":{\"type\":\"CTC\"}}",
        "{\"model\":{\"vocab\":{\"a\":0}},\"post_processor\":{\"type\":\"TemplateProcessing\","
        "\"single\":[{\"SpecialToken\":{\"id\":\"<x>\"}}],\"special_tokens\":{}}}",
        "{\"model\":{\"vocab\":{\"a\":0}},\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":"
        "[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{"
        "\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{"
        "\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{"
        "\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{"
        "\"type\":\"Sequence\",\"normalizers\":[]}]}]}]}]}]}]}]}]}]}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        t = NULL;
        int rc = sl_tokenizer_load_mem(bad[i], strlen(bad[i]), NULL, 0, &t);
        ck_assert_msg(rc < 0, "bad[%zu] loaded", i);
        ck_assert_ptr_null(t);
    }
    ck_assert_int_eq(
        sl_tokenizer_load_mem(mini_json, strlen(mini_json), "{\"add_bos_token\":3}", 19, &t),
        SL_EFORMAT);
}
END_TEST

START_TEST(test_fuzz_json) {
    sl_log_set_sink(log_discard, NULL); /* thousands of expected load errors */
    rng_state = 12345;
    size_t n = strlen(mini_json);
    char *buf = malloc(n + 1);
    static const char junk[] = "{}[]\":,0-9e\\ntuf";
    for (int iter = 0; iter < 4000; iter++) {
        memcpy(buf, mini_json, n + 1);
        size_t len = n;
        int muts = 1 + (int)(rng() % 4);
        for (int m = 0; m < muts; m++) {
            size_t pos = rng() % len;
            switch (rng() % 4) {
            case 0:
                buf[pos] = junk[rng() % (sizeof junk - 1)];
                break;
            case 1:
                buf[pos] = (char)rng();
                break;
            case 2:
                len = pos;
                break; /* truncate */
            case 3:
                memmove(buf + pos, buf + pos + 1, len - pos - 1);
                len--;
                break;
            }
            if (len == 0) break;
        }
        try_load_and_use(buf, len);
    }
    free(buf);
    /* truncations of a real file */
    char path[2048], dir[1024];
    harness_shared("tokenizers", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/llama2-spm/tokenizer.json", dir);
    size_t fl;
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    char *file = malloc(4 << 20);
    fl = fread(file, 1, 4 << 20, f);
    fclose(f);
    for (int i = 0; i < 12; i++) {
        size_t cut = (size_t)rng() % fl;
        sl_tokenizer_t *t = NULL;
        ck_assert_int_lt(sl_tokenizer_load_mem(file, cut, NULL, 0, &t), 0);
        ck_assert_ptr_null(t);
    }
    free(file);
}
END_TEST

START_TEST(test_fuzz_encode_decode) {
    sl_tokenizer_t *t = load_shared(tok_names[_i]);
    rng_state = 777 + (uint64_t)_i;
    static const char *frags[] = {
        "<s>",       "</s>",     "<|end|>", "<|im_start|>", "<|endoftext|>",
        " ",         "\n",       "\t",      "\xe2\x96\x81", "'s",
        "e\xcc\x81", "\xf0\x9f", "1",       "\xef\xbf\xbd", "\xc3",
        "ab"};
    char buf[512];
    uint32_t vs = sl_tokenizer_vocab_size(t);
    for (int iter = 0; iter < 600; iter++) {
        size_t len = rng() % sizeof buf;
        for (size_t i = 0; i < len;) {
            if (rng() % 3 == 0) {
                const char *fr = frags[rng() % (sizeof frags / sizeof frags[0])];
                size_t fl = strlen(fr);
                if (i + fl > len) break;
                memcpy(buf + i, fr, fl);
                i += fl;
            } else {
                buf[i++] = (char)(rng() % 3 ? rng() % 128 : rng());
            }
        }
        uint32_t *ids;
        size_t n;
        ck_assert_int_eq(sl_tokenizer_encode(t, buf, len, iter & 1, &ids, &n), 0);
        for (size_t i = 0; i < n; i++) ck_assert_uint_lt(ids[i], vs);
        /* decode of valid-UTF-8-free random ids, and detok agreement */
        for (size_t i = 0; i < n; i += 3) ids[i] = rng() % (vs + 10);
        char *s;
        size_t sl;
        ck_assert_int_eq(sl_tokenizer_decode(t, ids, n, iter & 2, &s, &sl), 0);
        ck_assert(sl_utf8_valid((const uint8_t *)s, sl));
        check_detok(t, ids, n, iter & 2, s, sl, tok_names[_i]);
        free(s);
        free(ids);
    }
    sl_tokenizer_free(t);
}
END_TEST

int main(void) {
    sl_log_set_level(SL_LOG_ERROR);
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("hf");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_matches_hf, 0, N_TOKS);
    tcase_add_loop_test(tc, test_variants_match_hf, 0, N_VARIANTS);
    tcase_add_test(tc, test_genmodel_tokenizer);
    suite_add_tcase(s, tc);
    TCase *tu = tcase_create("unit");
    tcase_set_timeout(tu, 60);
    tcase_add_test(tu, test_api_queries);
    tcase_add_test(tu, test_detok_holds_partial_utf8);
    tcase_add_test(tu, test_threads_share_tokenizer);
    tcase_add_loop_test(tu, test_detok_prime, 0, N_TOKS);
    tcase_add_test(tu, test_utf8_replacement);
    tcase_add_test(tu, test_mini_tokenizer);
    suite_add_tcase(s, tu);
    TCase *tf = tcase_create("fuzz");
    tcase_set_timeout(tf, 120);
    tcase_add_test(tf, test_fuzz_json);
    tcase_add_loop_test(tf, test_fuzz_encode_decode, 0, N_TOKS);
    suite_add_tcase(s, tf);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
