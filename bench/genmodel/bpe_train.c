/* bpe_train.c - deterministic byte-level BPE training for genmodel's tokenizer.
 *
 * Learns merges from a built-in English/code text the way GPT-2's tokenizer
 * was built (byte-level alphabet, words split GPT-2 style, most frequent pair
 * first; ties broken by the smaller pair of ids so the result never depends
 * on hash order), and writes a tokenizer.json that Hugging Face `tokenizers`
 * loads as a ByteLevel BPE.
 */
#include "bench/genmodel/genmodel.h"

#include "common/base/err.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char genmodel_corpus[] =
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the fox runs "
    "into the forest where the trees are tall and the river is cold.\n"
    "Once upon a time there was a little model that wanted to generate text. It read every "
    "word of the book, one token at a time, and it learned that the most common words are "
    "the, and, of, to, in, is, that, it, was, for, on, are, as, with, his, they, at, be, this, "
    "from, have, or, by, one, had, not, but, what, all, were, when, we, there, can, an, your, "
    "which, their, said, if, do, will, each, about, how, up, out, them, then, she, many, some, "
    "so, these, would, other, into, has, more, her, two, like, him, see, time, could, no, make, "
    "than, first, been, its, who, now, people, my, made, over, did, down, only, way, find, use, "
    "may, water, long, little, very, after, words, called, just, where, most, know.\n"
    "def generate(model, prompt, max_tokens=64):\n"
    "    tokens = tokenize(prompt)\n"
    "    for step in range(max_tokens):\n"
    "        logits = model.forward(tokens)\n"
    "        next_token = argmax(logits[-1])\n"
    "        tokens.append(next_token)\n"
    "    return detokenize(tokens)\n"
    "int main(int argc, char **argv) { return argc > 1 ? run(argv[1]) : 0; }\n"
    "Inference servers batch many requests together: while one request is in its prefill, "
    "others are decoding, and the scheduler decides which sequences run in each step. The KV "
    "cache is split into blocks of sixteen tokens, and blocks that hold the same prefix are "
    "shared between requests, which saves both memory and time.\n"
    "Numbers like 1, 2, 3, 10, 42, 100, 2024 and 3.14159 appear in text, as do dates such as "
    "2026-11-21 and times like 12:30. Questions? Answers! Lists: apples, oranges, pears; "
    "brackets (round), [square], {curly} and \"quotes\" or 'single quotes'.\n"
    "She sells sea shells by the sea shore. Peter Piper picked a peck of pickled peppers. "
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?\n";

/* GPT-2's byte -> printable code point table. */
static void bpe_byte_map(uint32_t map[256]) {
    uint32_t n = 0;
    for (uint32_t b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        map[b] = keep ? b : 256 + n++;
    }
}

static size_t utf8_put(char *out, uint32_t cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

typedef struct bpe_word {
    uint32_t *ids; /* (n) current symbols */
    size_t n;
    uint32_t count;
} bpe_word_t;

typedef struct bpe_tok {
    char *bytes; /* raw bytes of the token */
    size_t len;
} bpe_tok_t;

static int pair_cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Splits the corpus GPT-2 style: an optional leading space, then a run of
 * letters, digits, or other non-space bytes; whitespace runs on their own. */
static size_t bpe_chunk(const char *s, size_t n, size_t i) {
    size_t j = i;
    if (s[j] == ' ' && j + 1 < n && !isspace((unsigned char)s[j + 1])) j++;
    unsigned char c = (unsigned char)s[j];
    int cls = isalpha(c) ? 1 : isdigit(c) ? 2 : isspace(c) ? 3 : 4;
    j++;
    while (j < n) {
        unsigned char d = (unsigned char)s[j];
        int cl = isalpha(d) ? 1 : isdigit(d) ? 2 : isspace(d) ? 3 : 4;
        if (cl != cls) break;
        j++;
    }
    return j - i;
}

int genmodel_tokenizer_write(const char *dir, uint32_t vocab_size, uint32_t *eos_id,
                             uint32_t *n_tokens) {
    int rc = SL_ENOMEM;
    bpe_word_t *words = NULL;
    size_t n_words = 0;
    bpe_tok_t *toks = NULL;
    uint64_t *pairs = NULL;
    uint32_t *merge_a = NULL, *merge_b = NULL;
    cJSON *root = NULL;
    char *text = NULL, *path = NULL;
    static const char *specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    const uint32_t n_special = 3;
    if (vocab_size < 256 + n_special) return SL_EINVAL;
    uint32_t max_merges = vocab_size - 256 - n_special;

    /* Unique words with counts. */
    const char *s = genmodel_corpus;
    size_t sn = sizeof genmodel_corpus - 1;
    words = calloc(sn, sizeof *words);
    if (!words) goto out;
    for (size_t i = 0; i < sn;) {
        size_t len = bpe_chunk(s, sn, i);
        size_t w = 0;
        for (; w < n_words; w++) {
            if (words[w].n == len) {
                size_t k = 0;
                while (k < len && words[w].ids[k] == (unsigned char)s[i + k]) k++;
                if (k == len) break;
            }
        }
        if (w == n_words) {
            words[w].ids = malloc(len * sizeof(uint32_t));
            if (!words[w].ids) goto out;
            for (size_t k = 0; k < len; k++) words[w].ids[k] = (unsigned char)s[i + k];
            words[w].n = len;
            n_words++;
        }
        words[w].count++;
        i += len;
    }

    toks = calloc(256 + max_merges, sizeof *toks);
    merge_a = calloc(max_merges + 1, sizeof *merge_a);
    merge_b = calloc(max_merges + 1, sizeof *merge_b);
    pairs = malloc(sn * sizeof *pairs * 2);
    if (!toks || !merge_a || !merge_b || !pairs) goto out;
    for (uint32_t b = 0; b < 256; b++) {
        toks[b].bytes = malloc(1);
        if (!toks[b].bytes) goto out;
        toks[b].bytes[0] = (char)b;
        toks[b].len = 1;
    }
    uint32_t n_tok = 256, n_merges = 0;
    while (n_merges < max_merges) {
        /* Count pairs: expand each occurrence count times, sort, count runs. */
        size_t np = 0;
        for (size_t w = 0; w < n_words; w++)
            for (size_t k = 0; k + 1 < words[w].n; k++)
                for (uint32_t c = 0; c < words[w].count; c++)
                    pairs[np++] = ((uint64_t)words[w].ids[k] << 32) | words[w].ids[k + 1];
        if (np == 0) break;
        qsort(pairs, np, sizeof *pairs, pair_cmp);
        uint64_t best = 0;
        size_t best_n = 0;
        for (size_t i = 0; i < np;) {
            size_t j = i;
            while (j < np && pairs[j] == pairs[i]) j++;
            if (j - i > best_n) { /* strictly greater: the smallest pair wins ties */
                best_n = j - i;
                best = pairs[i];
            }
            i = j;
        }
        if (best_n < 2) break;
        uint32_t a = (uint32_t)(best >> 32), b = (uint32_t)best;
        bpe_tok_t *t = &toks[n_tok];
        t->len = toks[a].len + toks[b].len;
        t->bytes = malloc(t->len);
        if (!t->bytes) goto out;
        memcpy(t->bytes, toks[a].bytes, toks[a].len);
        memcpy(t->bytes + toks[a].len, toks[b].bytes, toks[b].len);
        merge_a[n_merges] = a;
        merge_b[n_merges] = b;
        /* Two merge paths can spell the same bytes ("x"+"yz", "xy"+"z"): reuse the id. */
        uint32_t id = n_tok;
        for (uint32_t e = 256; e < n_tok; e++) {
            if (toks[e].len == t->len && memcmp(toks[e].bytes, t->bytes, t->len) == 0) {
                id = e;
                break;
            }
        }
        if (id != n_tok) {
            free(t->bytes);
            t->bytes = NULL;
            t->len = 0;
        }
        for (size_t w = 0; w < n_words; w++) {
            size_t o = 0;
            for (size_t k = 0; k < words[w].n; k++) {
                if (k + 1 < words[w].n && words[w].ids[k] == a && words[w].ids[k + 1] == b) {
                    words[w].ids[o++] = id;
                    k++;
                } else {
                    words[w].ids[o++] = words[w].ids[k];
                }
            }
            words[w].n = o;
        }
        if (id == n_tok) n_tok++;
        n_merges++;
    }

    /* tokenizer.json */
    uint32_t map[256];
    bpe_byte_map(map);
    char enc[4096];
    root = cJSON_CreateObject();
    cJSON *vocab = cJSON_CreateObject(), *merges = cJSON_CreateArray();
    cJSON *added = cJSON_CreateArray();
    if (!root || !vocab || !merges || !added) {
        cJSON_Delete(vocab);
        cJSON_Delete(merges);
        cJSON_Delete(added);
        goto out;
    }
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON_AddItemToObject(root, "added_tokens", added);
    for (uint32_t i = 0; i < n_special; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", n_tok + i);
        cJSON_AddStringToObject(a, "content", specials[i]);
        cJSON_AddBoolToObject(a, "single_word", false);
        cJSON_AddBoolToObject(a, "lstrip", false);
        cJSON_AddBoolToObject(a, "rstrip", false);
        cJSON_AddBoolToObject(a, "normalized", false);
        cJSON_AddBoolToObject(a, "special", true);
        cJSON_AddItemToArray(added, a);
    }
    cJSON_AddNullToObject(root, "normalizer");
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddBoolToObject(pre, "add_prefix_space", false);
    cJSON_AddBoolToObject(pre, "trim_offsets", true);
    cJSON_AddBoolToObject(pre, "use_regex", true);
    cJSON *post = cJSON_AddObjectToObject(root, "post_processor");
    cJSON_AddStringToObject(post, "type", "ByteLevel");
    cJSON_AddBoolToObject(post, "add_prefix_space", true);
    cJSON_AddBoolToObject(post, "trim_offsets", false);
    cJSON_AddBoolToObject(post, "use_regex", true);
    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    cJSON_AddStringToObject(dec, "type", "ByteLevel");
    cJSON_AddBoolToObject(dec, "add_prefix_space", true);
    cJSON_AddBoolToObject(dec, "trim_offsets", true);
    cJSON_AddBoolToObject(dec, "use_regex", true);
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddStringToObject(model, "continuing_subword_prefix", "");
    cJSON_AddStringToObject(model, "end_of_word_suffix", "");
    cJSON_AddBoolToObject(model, "fuse_unk", false);
    cJSON_AddBoolToObject(model, "byte_fallback", false);
    cJSON_AddBoolToObject(model, "ignore_merges", false);
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    for (uint32_t t = 0; t < n_tok; t++) {
        size_t o = 0;
        for (size_t k = 0; k < toks[t].len && o + 4 < sizeof enc; k++)
            o += utf8_put(enc + o, map[(unsigned char)toks[t].bytes[k]]);
        enc[o] = 0;
        cJSON_AddNumberToObject(vocab, enc, t);
    }
    for (uint32_t m = 0; m < n_merges; m++) {
        size_t o = 0;
        for (int side = 0; side < 2; side++) {
            const bpe_tok_t *t = &toks[side ? merge_b[m] : merge_a[m]];
            if (side) enc[o++] = ' ';
            for (size_t k = 0; k < t->len && o + 4 < sizeof enc; k++)
                o += utf8_put(enc + o, map[(unsigned char)t->bytes[k]]);
        }
        enc[o] = 0;
        cJSON_AddItemToArray(merges, cJSON_CreateString(enc));
    }
    text = cJSON_PrintUnformatted(root);
    if (!text) goto out;
    if (asprintf(&path, "%s/tokenizer.json", dir) < 0) {
        path = NULL;
        goto out;
    }
    rc = genmodel_file_write(path, text, strlen(text));
    if (rc) goto out;
    cJSON_Delete(root);
    free(text);
    free(path);
    path = NULL;
    text = NULL;

    /* tokenizer_config.json */
    root = cJSON_CreateObject();
    if (!root) {
        rc = SL_ENOMEM;
        goto out;
    }
    cJSON *atd = cJSON_AddObjectToObject(root, "added_tokens_decoder");
    for (uint32_t i = 0; i < n_special; i++) {
        char key[16];
        snprintf(key, sizeof key, "%u", n_tok + i);
        cJSON *a = cJSON_AddObjectToObject(atd, key);
        cJSON_AddStringToObject(a, "content", specials[i]);
        cJSON_AddBoolToObject(a, "lstrip", false);
        cJSON_AddBoolToObject(a, "normalized", false);
        cJSON_AddBoolToObject(a, "rstrip", false);
        cJSON_AddBoolToObject(a, "single_word", false);
        cJSON_AddBoolToObject(a, "special", true);
    }
    cJSON_AddBoolToObject(root, "add_bos_token", false);
    cJSON_AddBoolToObject(root, "add_eos_token", false);
    cJSON_AddStringToObject(root, "bos_token", specials[0]);
    cJSON_AddStringToObject(root, "eos_token", specials[0]);
    cJSON_AddNullToObject(root, "pad_token");
    cJSON_AddBoolToObject(root, "clean_up_tokenization_spaces", false);
    cJSON_AddNumberToObject(root, "model_max_length", 4096);
    cJSON_AddStringToObject(root, "tokenizer_class", "PreTrainedTokenizerFast");
    cJSON_AddStringToObject(
        root, "chat_template",
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt "
        "%}{{ '<|im_start|>assistant\\n' }}{% endif %}");
    text = cJSON_Print(root);
    if (!text) {
        rc = SL_ENOMEM;
        goto out;
    }
    if (asprintf(&path, "%s/tokenizer_config.json", dir) < 0) {
        path = NULL;
        rc = SL_ENOMEM;
        goto out;
    }
    rc = genmodel_file_write(path, text, strlen(text));
    if (rc) goto out;
    *eos_id = n_tok;
    *n_tokens = n_tok + n_special;
out:
    free(path);
    free(text);
    cJSON_Delete(root);
    if (words)
        for (size_t w = 0; w < n_words; w++) free(words[w].ids);
    free(words);
    if (toks)
        for (uint32_t t = 0; t < 256 + max_merges; t++) free(toks[t].bytes);
    free(toks);
    free(pairs);
    free(merge_a);
    free(merge_b);
    return rc;
}
