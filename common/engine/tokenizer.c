/* tokenizer.c - loading tokenizer.json / tokenizer_config.json, encode
 * orchestration (added tokens, normalizer, pre-tokenizer, model, template),
 * decode and vocabulary queries. The pieces live in tokenizer_normalize.c,
 * tokenizer_pretok.c, tokenizer_bpe.c and tokenizer_decode.c; see
 * tokenizer.h for the contract and common/engine/README.md for the design. */
#include "common/engine/tokenizer.h"

#include "common/base/err.h"
#include "common/base/log.h"
#include "common/engine/tokenizer_internal.h"
#include "common/engine/utf8.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* ---- small containers ---------------------------------------------------- */
int tk_buf_reserve(tk_buf_t *b, size_t extra) {
    if (extra > SIZE_MAX / 2 - b->len) return SL_ETOOBIG;
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return SL_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int tk_buf_put(tk_buf_t *b, const void *s, size_t n) {
    int rc = tk_buf_reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

void tk_buf_free(tk_buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int tk_ids_push(tk_ids_t *a, uint32_t id) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        if (cap > SIZE_MAX / sizeof *a->v) return SL_ENOMEM;
        uint32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return SL_ENOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

uint64_t tk_hash(const void *p, size_t n) {
    return XXH3_64bits(p, n);
}

/* ---- arena ----------------------------------------------------------------- */
typedef struct tk_blk {
    struct tk_blk *next;
    size_t used, cap;
    char data[];
} tk_blk_t;

static void *tk_arena_alloc(sl_tokenizer_t *t, size_t n) {
    tk_blk_t *b = t->arena;
    n = (n + 7) & ~(size_t)7;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > (1u << 20) ? n : (1u << 20);
        tk_blk_t *nb = malloc(sizeof *nb + cap);
        if (!nb) return NULL;
        nb->next = b;
        nb->used = 0;
        nb->cap = cap;
        t->arena = b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

static int tk_arena_str(sl_tokenizer_t *t, const char *s, size_t n, tk_str_t *out) {
    if (n > UINT32_MAX - 1) return SL_ETOOBIG;
    char *p = tk_arena_alloc(t, n + 1);
    if (!p) return SL_ENOMEM;
    if (n) memcpy(p, s, n);
    p[n] = 0;
    out->p = p;
    out->len = (uint32_t)n;
    return 0;
}

/* ---- string map ------------------------------------------------------------ */
static int tk_strmap_init(tk_strmap_t *m, size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap *= 2;
    m->slots = calloc(cap, sizeof *m->slots);
    if (!m->slots) return SL_ENOMEM;
    m->cap = cap;
    return 0;
}

int32_t tk_strmap_get(const tk_strmap_t *m, const tk_str_t *strs, const char *s, size_t n) {
    if (!m->slots) return -1;
    size_t mask = m->cap - 1, i = (size_t)tk_hash(s, n) & mask;
    for (;;) {
        uint32_t v = m->slots[i];
        if (!v) return -1;
        const tk_str_t *k = &strs[v - 1];
        if (k->len == n && memcmp(k->p, s, n) == 0) return (int32_t)(v - 1);
        i = (i + 1) & mask;
    }
}

/* Inserts id (its key is strs[id]); an existing equal key is replaced. */
static void tk_strmap_put(tk_strmap_t *m, const tk_str_t *strs, uint32_t id) {
    const tk_str_t *k = &strs[id];
    size_t mask = m->cap - 1, i = (size_t)tk_hash(k->p, k->len) & mask;
    for (;;) {
        uint32_t v = m->slots[i];
        if (!v) break;
        const tk_str_t *o = &strs[v - 1];
        if (o->len == k->len && memcmp(o->p, k->p, k->len) == 0) break;
        i = (i + 1) & mask;
    }
    m->slots[i] = id + 1;
}

/* ---- byte-level map (GPT-2 bytes_to_unicode) -------------------------------- */
uint16_t tk_byte2cp[256];
int16_t tk_cp2byte[512];
static pthread_once_t tk_bl_once = PTHREAD_ONCE_INIT;
static void tk_bytelevel_build(void) {
    int n = 0;
    for (int i = 0; i < 512; i++) tk_cp2byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        tk_byte2cp[b] = (uint16_t)(keep ? b : 256 + n++);
        tk_cp2byte[tk_byte2cp[b]] = (int16_t)b;
    }
}
void tk_bytelevel_init(void) {
    pthread_once(&tk_bl_once, tk_bytelevel_build);
}

/* ---- JSON helpers ----------------------------------------------------------- */
#define TK_FAIL(code, ...)                                                                         \
    do {                                                                                           \
        LOG_ERROR("tokenizer: " __VA_ARGS__);                                                      \
        rc = (code);                                                                               \
        goto out;                                                                                  \
    } while (0)

static const cJSON *tk_jget(const cJSON *o, const char *k) {
    return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
}

/* Optional bool: absent/null gives def; another type is an error. */
static int tk_jbool(const cJSON *o, const char *k, bool def, bool *out) {
    const cJSON *v = tk_jget(o, k);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) return SL_EFORMAT;
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Optional string: absent/null gives NULL. */
static int tk_jstr(const cJSON *o, const char *k, const char **out) {
    const cJSON *v = tk_jget(o, k);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v) || !v->valuestring) return SL_EFORMAT;
    if (strlen(v->valuestring) > SL_TOKENIZER_MAX_TOKLEN) return SL_ETOOBIG;
    *out = v->valuestring;
    return 0;
}

static int tk_juint(const cJSON *v, uint32_t max, uint32_t *out) {
    if (!cJSON_IsNumber(v)) return SL_EFORMAT;
    double d = v->valuedouble;
    if (!(d >= 0) || d >= (double)max || d != (double)(uint32_t)d) return SL_EFORMAT;
    *out = (uint32_t)d;
    return 0;
}

static bool tk_type_is(const cJSON *o, const char *type) {
    const cJSON *v = tk_jget(o, "type");
    return cJSON_IsString(v) && v->valuestring && strcmp(v->valuestring, type) == 0;
}

static const char *tk_type(const cJSON *o) {
    const cJSON *v = tk_jget(o, "type");
    return cJSON_IsString(v) && v->valuestring ? v->valuestring : "?";
}

/* ---- model ------------------------------------------------------------------ */
static int tk_merges_put(sl_tokenizer_t *t, uint32_t a, uint32_t b, uint32_t rank, uint32_t id) {
    uint64_t key = ((uint64_t)a << 32) | b;
    size_t mask = t->merges_cap - 1, i = (size_t)tk_mix64(key) & mask;
    while (t->merges[i].key != UINT64_MAX && t->merges[i].key != key) i = (i + 1) & mask;
    t->merges[i].key = key;
    t->merges[i].rank = rank;
    t->merges[i].id = id;
    return 0;
}

static int tk_load_model(sl_tokenizer_t *t, const cJSON *m) {
    int rc = 0;
    char *cat = NULL;
    if (!cJSON_IsObject(m)) TK_FAIL(SL_EFORMAT, "tokenizer.json: \"model\" is not an object");
    const cJSON *ty = tk_jget(m, "type");
    if (ty && !tk_type_is(m, "BPE"))
        TK_FAIL(SL_EUNSUPPORTED, "tokenizer.json: model type %s not supported (BPE only)",
                tk_type(m));
    const cJSON *vocab = tk_jget(m, "vocab"), *merges = tk_jget(m, "merges");
    if (!cJSON_IsObject(vocab)) TK_FAIL(SL_EFORMAT, "tokenizer.json: model.vocab missing");
    if (merges && !cJSON_IsArray(merges))
        TK_FAIL(SL_EFORMAT, "tokenizer.json: model.merges is not an array");
    uint32_t maxid = 0, n = 0;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        uint32_t id;
        if (!e->string || tk_juint(e, SL_TOKENIZER_MAX_VOCAB, &id))
            TK_FAIL(SL_EFORMAT, "tokenizer.json: bad id in model.vocab");
        if (strlen(e->string) > SL_TOKENIZER_MAX_TOKLEN)
            TK_FAIL(SL_ETOOBIG, "tokenizer.json: vocab token too long");
        if (id + 1 > maxid) maxid = id + 1;
        n++;
    }
    t->vocab_cap = maxid;
    t->vocab_n = n;
    t->tok = calloc(maxid ? maxid : 1, sizeof *t->tok);
    if (!t->tok) TK_FAIL(SL_ENOMEM, "out of memory");
    if ((rc = tk_strmap_init(&t->vmap, n))) goto out;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        uint32_t id = (uint32_t)e->valuedouble;
        if (t->tok[id].p) TK_FAIL(SL_EFORMAT, "tokenizer.json: id %u used twice in vocab", id);
        if ((rc = tk_arena_str(t, e->string, strlen(e->string), &t->tok[id]))) goto out;
        if (tk_strmap_get(&t->vmap, t->tok, t->tok[id].p, t->tok[id].len) >= 0)
            TK_FAIL(SL_EFORMAT, "tokenizer.json: duplicate vocab token");
        tk_strmap_put(&t->vmap, t->tok, id);
    }
    const char *s;
    bool b;
    if ((rc = tk_jstr(m, "unk_token", &s))) TK_FAIL(rc, "tokenizer.json: bad model.unk_token");
    t->unk_id = s ? tk_strmap_get(&t->vmap, t->tok, s, strlen(s)) : -1;
    if (tk_jbool(m, "byte_fallback", false, &t->byte_fallback) ||
        tk_jbool(m, "fuse_unk", false, &t->fuse_unk) ||
        tk_jbool(m, "ignore_merges", false, &t->ignore_merges))
        TK_FAIL(SL_EFORMAT, "tokenizer.json: bad model flag");
    const cJSON *dropout = tk_jget(m, "dropout");
    if (dropout && !cJSON_IsNull(dropout))
        TK_FAIL(SL_EUNSUPPORTED, "tokenizer.json: BPE dropout not supported");
    (void)b;
    if ((rc = tk_jstr(m, "continuing_subword_prefix", &s)))
        TK_FAIL(rc, "tokenizer.json: bad prefix");
    if (s && *s && (rc = tk_arena_str(t, s, strlen(s), &t->subword_prefix))) goto out;
    if ((rc = tk_jstr(m, "end_of_word_suffix", &s))) TK_FAIL(rc, "tokenizer.json: bad suffix");
    if (s && *s && (rc = tk_arena_str(t, s, strlen(s), &t->word_suffix))) goto out;
    for (int i = 0; i < 256; i++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", i);
        t->byte_tok[i] = tk_strmap_get(&t->vmap, t->tok, name, 6);
    }
    /* merges */
    size_t nm = merges ? (size_t)cJSON_GetArraySize(merges) : 0;
    size_t cap = 16;
    while (cap < nm * 4) cap *= 2; /* sparse: most lookups are misses */
    t->merges = malloc(cap * sizeof *t->merges);
    if (!t->merges) TK_FAIL(SL_ENOMEM, "out of memory");
    for (size_t i = 0; i < cap; i++) t->merges[i].key = UINT64_MAX;
    t->merges_cap = cap;
    cat = malloc(2 * SL_TOKENIZER_MAX_TOKLEN + 2);
    if (!cat) TK_FAIL(SL_ENOMEM, "out of memory");
    uint32_t rank = 0;
    for (const cJSON *e = merges ? merges->child : NULL; e; e = e->next, rank++) {
        const char *a, *bb;
        size_t la, lb;
        if (cJSON_IsString(e) && e->valuestring) {
            const char *sp = strchr(e->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' '))
                TK_FAIL(SL_EFORMAT, "tokenizer.json: merge %u is not \"a b\"", rank);
            a = e->valuestring;
            la = (size_t)(sp - a);
            bb = sp + 1;
            lb = strlen(bb);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
                   cJSON_IsString(e->child->next) && e->child->valuestring &&
                   e->child->next->valuestring) {
            a = e->child->valuestring;
            la = strlen(a);
            bb = e->child->next->valuestring;
            lb = strlen(bb);
        } else {
            TK_FAIL(SL_EFORMAT, "tokenizer.json: merge %u malformed", rank);
        }
        if (la > SL_TOKENIZER_MAX_TOKLEN || lb > SL_TOKENIZER_MAX_TOKLEN)
            TK_FAIL(SL_EFORMAT, "tokenizer.json: merge %u too long", rank);
        int32_t ia = tk_strmap_get(&t->vmap, t->tok, a, la);
        int32_t ib = tk_strmap_get(&t->vmap, t->tok, bb, lb);
        memcpy(cat, a, la);
        memcpy(cat + la, bb, lb);
        int32_t ic = tk_strmap_get(&t->vmap, t->tok, cat, la + lb);
        if (ia < 0 || ib < 0 || ic < 0)
            TK_FAIL(SL_EFORMAT, "tokenizer.json: merge %u uses a token not in the vocabulary",
                    rank);
        tk_merges_put(t, (uint32_t)ia, (uint32_t)ib, rank, (uint32_t)ic);
    }
out:
    free(cat);
    return rc;
}

/* ---- added tokens ------------------------------------------------------------- */
static int tk_load_added(sl_tokenizer_t *t, const cJSON *arr) {
    int rc = 0;
    t->n_ids = t->vocab_cap;
    if (!arr || cJSON_IsNull(arr)) goto ids;
    if (!cJSON_IsArray(arr)) TK_FAIL(SL_EFORMAT, "tokenizer.json: added_tokens is not an array");
    int n = cJSON_GetArraySize(arr);
    t->added = calloc((size_t)n + 1, sizeof *t->added);
    if (!t->added) TK_FAIL(SL_ENOMEM, "out of memory");
    /* Ids as HF assigns them when it loads the file (AddedVocabulary::
     * add_tokens): a content already in the model vocabulary takes that id,
     * a repeated content keeps its first id, anything else gets the next id
     * after the vocabulary. The file's id is only checked, as HF does. */
    uint32_t max_added = 0;
    bool have_added = false;
    for (const cJSON *e = arr->child; e; e = e->next) {
        tk_added_t a = {0};
        uint32_t file_id;
        const char *c;
        if (tk_juint(tk_jget(e, "id"), SL_TOKENIZER_MAX_VOCAB, &file_id) ||
            tk_jstr(e, "content", &c) || !c || !*c)
            TK_FAIL(SL_EFORMAT, "tokenizer.json: added token %u malformed", t->n_added);
        if (tk_jbool(e, "special", false, &a.special) || tk_jbool(e, "lstrip", false, &a.lstrip) ||
            tk_jbool(e, "rstrip", false, &a.rstrip) ||
            tk_jbool(e, "normalized", !a.special, &a.normalized) ||
            tk_jbool(e, "single_word", false, &a.single_word))
            TK_FAIL(SL_EFORMAT, "tokenizer.json: added token %u has a bad flag", t->n_added);
        size_t cl = strlen(c);
        tk_added_t *same = NULL;
        for (uint32_t i = 0; i < t->n_added; i++)
            if (t->added[i].content.len == cl && !memcmp(t->added[i].content.p, c, cl))
                same = &t->added[i];
        if (same) { /* HF: same content keeps its id; the newer flags win */
            a.id = same->id;
            a.content = same->content;
            *same = a;
            continue;
        }
        int32_t mid = tk_strmap_get(&t->vmap, t->tok, c, cl);
        if (mid >= 0)
            a.id = (uint32_t)mid;
        else if (have_added && (max_added >= t->vocab_n || t->vocab_n == 0))
            a.id = max_added + 1;
        else
            a.id = t->vocab_n;
        if (a.id >= SL_TOKENIZER_MAX_VOCAB)
            TK_FAIL(SL_EFORMAT, "tokenizer.json: too many added tokens");
        if (a.id != file_id)
            LOG_WARN("tokenizer: added token %s has id %u in the file, %u as HF assigns it", c,
                     file_id, a.id);
        if ((rc = tk_arena_str(t, c, cl, &a.content))) goto out;
        if (!have_added || a.id > max_added) max_added = a.id;
        have_added = true;
        if (a.id + 1 > t->n_ids) t->n_ids = a.id + 1;
        t->added[t->n_added++] = a;
    }
ids:
    t->added_of_id = malloc((t->n_ids ? t->n_ids : 1) * sizeof *t->added_of_id);
    if (!t->added_of_id) TK_FAIL(SL_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < t->n_ids; i++) t->added_of_id[i] = -1;
    for (uint32_t i = 0; i < t->n_added; i++) t->added_of_id[t->added[i].id] = (int32_t)i;
out:
    return rc;
}

static int tk_regex(const char *pat, pcre2_code **out);

/* ---- normalizer ---------------------------------------------------------------- */
static int tk_norm_count(const cJSON *o, uint32_t depth) {
    if (depth > 8) return -1;
    if (tk_type_is(o, "Sequence")) {
        const cJSON *l = tk_jget(o, "normalizers");
        if (!cJSON_IsArray(l)) return -1;
        int n = 0;
        for (const cJSON *e = l->child; e; e = e->next) {
            int k = tk_norm_count(e, depth + 1);
            if (k < 0) return -1;
            n += k;
        }
        return n;
    }
    return 1;
}

static int tk_string_pattern(const cJSON *o, const char **lit, const char **re) {
    const cJSON *p = tk_jget(o, "pattern");
    *lit = *re = NULL;
    if (tk_jstr(p, "String", lit) || tk_jstr(p, "Regex", re)) return SL_EFORMAT;
    if (!*lit && !*re) return SL_EFORMAT;
    return 0;
}

static int tk_load_norm1(sl_tokenizer_t *t, const cJSON *o) {
    int rc = 0;
    if (tk_type_is(o, "Sequence")) {
        for (const cJSON *e = tk_jget(o, "normalizers")->child; e; e = e->next)
            if ((rc = tk_load_norm1(t, e))) goto out;
        goto out;
    }
    tk_norm_t *n = &t->norm[t->n_norm];
    const char *s, *re;
    if (tk_type_is(o, "NFC")) {
        n->kind = TK_NORM_NFC;
    } else if (tk_type_is(o, "Prepend")) {
        n->kind = TK_NORM_PREPEND;
        if (tk_jstr(o, "prepend", &s) || !s) TK_FAIL(SL_EFORMAT, "tokenizer.json: bad Prepend");
        if ((rc = tk_arena_str(t, s, strlen(s), &n->a))) goto out;
    } else if (tk_type_is(o, "Replace")) {
        const char *content;
        n->kind = TK_NORM_REPLACE;
        if (tk_string_pattern(o, &s, &re) || tk_jstr(o, "content", &content) || !content)
            TK_FAIL(SL_EFORMAT, "tokenizer.json: bad Replace normalizer");
        if (s && !*s) TK_FAIL(SL_EFORMAT, "tokenizer.json: empty Replace pattern");
        if (re) {
            if ((rc = tk_regex(re, &n->re))) goto out;
        } else if ((rc = tk_arena_str(t, s, strlen(s), &n->a))) {
            goto out;
        }
        if ((rc = tk_arena_str(t, content, strlen(content), &n->b))) goto out;
    } else if (tk_type_is(o, "Strip")) {
        n->kind = TK_NORM_STRIP;
        if (tk_jbool(o, "strip_left", false, &n->left) ||
            tk_jbool(o, "strip_right", false, &n->right))
            TK_FAIL(SL_EFORMAT, "tokenizer.json: bad Strip normalizer");
    } else {
        TK_FAIL(SL_EUNSUPPORTED, "tokenizer.json: normalizer %s not supported", tk_type(o));
    }
    t->n_norm++;
out:
    return rc;
}

static int tk_load_norm(sl_tokenizer_t *t, const cJSON *o) {
    int rc = 0;
    if (!o || cJSON_IsNull(o)) goto out;
    int n = tk_norm_count(o, 0);
    if (n < 0) TK_FAIL(SL_EFORMAT, "tokenizer.json: bad normalizer");
    t->norm = calloc((size_t)n + 1, sizeof *t->norm);
    if (!t->norm) TK_FAIL(SL_ENOMEM, "out of memory");
    rc = tk_load_norm1(t, o);
out:
    return rc;
}

/* ---- pre-tokenizer -------------------------------------------------------------- */
#define TK_RE_GPT2                                                                                 \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

static int tk_regex(const char *pat, pcre2_code **out) {
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                   &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        LOG_ERROR("tokenizer: regex /%s/ at %zu: %s", pat, (size_t)off, (const char *)msg);
        return SL_EUNSUPPORTED;
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* interpreter if JIT is unavailable */
    *out = re;
    return 0;
}

static int tk_split_behavior(const char *b, enum tk_split_beh *out) {
    if (!strcmp(b, "Removed"))
        *out = TK_SPLIT_REMOVED;
    else if (!strcmp(b, "Isolated"))
        *out = TK_SPLIT_ISOLATED;
    else if (!strcmp(b, "MergedWithPrevious"))
        *out = TK_SPLIT_MERGED_PREV;
    else if (!strcmp(b, "MergedWithNext"))
        *out = TK_SPLIT_MERGED_NEXT;
    else if (!strcmp(b, "Contiguous"))
        *out = TK_SPLIT_CONTIGUOUS;
    else
        return SL_EFORMAT;
    return 0;
}

static int tk_pre_count(const cJSON *o, uint32_t depth) {
    if (depth > 8) return -1;
    if (tk_type_is(o, "Sequence")) {
        const cJSON *l = tk_jget(o, "pretokenizers");
        if (!cJSON_IsArray(l)) return -1;
        int n = 0;
        for (const cJSON *e = l->child; e; e = e->next) {
            int k = tk_pre_count(e, depth + 1);
            if (k < 0) return -1;
            n += k;
        }
        return n;
    }
    return 1;
}

static int tk_prepend_scheme(const cJSON *o, enum tk_prepend *out) {
    const char *s;
    bool aps;
    if (tk_jstr(o, "prepend_scheme", &s)) return SL_EFORMAT;
    if (s) {
        if (!strcmp(s, "always"))
            *out = TK_PREPEND_ALWAYS;
        else if (!strcmp(s, "first"))
            *out = TK_PREPEND_FIRST;
        else if (!strcmp(s, "never"))
            *out = TK_PREPEND_NEVER;
        else
            return SL_EFORMAT;
        return 0;
    }
    if (tk_jbool(o, "add_prefix_space", true, &aps)) return SL_EFORMAT;
    *out = aps ? TK_PREPEND_ALWAYS : TK_PREPEND_NEVER;
    return 0;
}

static int tk_load_pre1(sl_tokenizer_t *t, const cJSON *o) {
    int rc = 0;
    if (tk_type_is(o, "Sequence")) {
        for (const cJSON *e = tk_jget(o, "pretokenizers")->child; e; e = e->next)
            if ((rc = tk_load_pre1(t, e))) goto out;
        goto out;
    }
    tk_pre_t *p = &t->pre[t->n_pre];
    const char *s, *re;
    if (tk_type_is(o, "ByteLevel")) {
        bool use_regex;
        p->kind = TK_PRE_BYTELEVEL;
        if (tk_jbool(o, "add_prefix_space", true, &p->add_prefix_space) ||
            tk_jbool(o, "use_regex", true, &use_regex))
            TK_FAIL(SL_EFORMAT, "tokenizer.json: bad ByteLevel pre-tokenizer");
        p->beh = TK_SPLIT_ISOLATED;
        if (use_regex && (rc = tk_regex(TK_RE_GPT2, &p->re))) goto out;
    } else if (tk_type_is(o, "Split")) {
        p->kind = TK_PRE_SPLIT;
        const char *b;
        if (tk_string_pattern(o, &s, &re) || tk_jstr(o, "behavior", &b) || !b ||
            tk_jbool(o, "invert", false, &p->invert))
            TK_FAIL(SL_EFORMAT, "tokenizer.json: bad Split pre-tokenizer");
        if (tk_split_behavior(b, &p->beh))
            TK_FAIL(SL_EFORMAT, "tokenizer.json: unknown Split behavior %s", b);
        if (re) {
            if ((rc = tk_regex(re, &p->re))) goto out;
        } else {
            if (!*s) TK_FAIL(SL_EFORMAT, "tokenizer.json: empty Split pattern");
            if ((rc = tk_arena_str(t, s, strlen(s), &p->lit))) goto out;
        }
    } else if (tk_type_is(o, "Digits")) {
        bool ind;
        p->kind = TK_PRE_SPLIT;
        p->beh = TK_SPLIT_ISOLATED;
        if (tk_jbool(o, "individual_digits", false, &ind))
            TK_FAIL(SL_EFORMAT, "tokenizer.json: bad Digits");
        if ((rc = tk_regex(ind ? "\\p{N}" : "\\p{N}+", &p->re))) goto out;
    } else if (tk_type_is(o, "Whitespace")) {
        p->kind = TK_PRE_SPLIT;
        p->beh = TK_SPLIT_REMOVED;
        p->invert = true;
        if ((rc = tk_regex("\\w+|[^\\w\\s]+", &p->re))) goto out;
    } else if (tk_type_is(o, "Punctuation")) {
        /* HF: char::is_ascii_punctuation() || Unicode P* categories */
        const char *b;
        p->kind = TK_PRE_SPLIT;
        p->beh = TK_SPLIT_ISOLATED;
        if (tk_jstr(o, "behavior", &b)) TK_FAIL(SL_EFORMAT, "tokenizer.json: bad Punctuation");
        if (b && (rc = tk_split_behavior(b, &p->beh)))
            TK_FAIL(rc, "tokenizer.json: unknown Punctuation behavior %s", b);
        if ((rc = tk_regex("[\\p{P}!-/:-@\\[-`{-~]", &p->re))) goto out;
    } else if (tk_type_is(o, "WhitespaceSplit")) {
        p->kind = TK_PRE_SPLIT;
        p->beh = TK_SPLIT_REMOVED;
        if ((rc = tk_regex("\\s+", &p->re))) goto out;
    } else if (tk_type_is(o, "Metaspace")) {
        p->kind = TK_PRE_METASPACE;
        if (tk_jstr(o, "replacement", &s) || !s || !*s || tk_prepend_scheme(o, &p->prepend) ||
            tk_jbool(o, "split", true, &p->split))
            TK_FAIL(SL_EFORMAT, "tokenizer.json: bad Metaspace");
        uint32_t cp;
        if (sl_utf8_decode((const uint8_t *)s, strlen(s), &cp) != strlen(s))
            TK_FAIL(SL_EFORMAT, "tokenizer.json: Metaspace replacement is not one char");
        if ((rc = tk_arena_str(t, s, strlen(s), &p->lit))) goto out;
    } else {
        TK_FAIL(SL_EUNSUPPORTED, "tokenizer.json: pre-tokenizer %s not supported", tk_type(o));
    }
    t->n_pre++;
out:
    return rc;
}

static int tk_load_pre(sl_tokenizer_t *t, const cJSON *o) {
    int rc = 0;
    if (!o || cJSON_IsNull(o)) goto out;
    int n = tk_pre_count(o, 0);
    if (n < 0) TK_FAIL(SL_EFORMAT, "tokenizer.json: bad pre_tokenizer");
    t->pre = calloc((size_t)n + 1, sizeof *t->pre);
    if (!t->pre) TK_FAIL(SL_ENOMEM, "out of memory");
    rc = tk_load_pre1(t, o);
out:
    return rc;
}

/* ---- post-processor ---------------------------------------------------------------- */
static int tk_tmpl_add(uint32_t **v, uint32_t *n, uint32_t id) {
    if (*n >= 64) return SL_ETOOBIG;
    uint32_t *p = realloc(*v, (*n + 1) * sizeof *p);
    if (!p) return SL_ENOMEM;
    p[(*n)++] = id;
    *v = p;
    return 0;
}

static int tk_load_post(sl_tokenizer_t *t, const cJSON *o, uint32_t depth) {
    int rc = 0;
    if (!o || cJSON_IsNull(o)) goto out;
    if (depth > 8) TK_FAIL(SL_EFORMAT, "tokenizer.json: post_processor nested too deep");
    if (tk_type_is(o, "Sequence")) {
        const cJSON *l = tk_jget(o, "processors");
        if (!cJSON_IsArray(l)) TK_FAIL(SL_EFORMAT, "tokenizer.json: bad post_processor");
        for (const cJSON *e = l->child; e; e = e->next)
            if ((rc = tk_load_post(t, e, depth + 1))) goto out;
    } else if (tk_type_is(o, "ByteLevel")) {
        /* offsets only */
    } else if (tk_type_is(o, "TemplateProcessing")) {
        const cJSON *single = tk_jget(o, "single"), *sp = tk_jget(o, "special_tokens");
        if (!cJSON_IsArray(single) || (sp && !cJSON_IsObject(sp)))
            TK_FAIL(SL_EFORMAT, "tokenizer.json: bad TemplateProcessing");
        if (t->has_template) TK_FAIL(SL_EUNSUPPORTED, "tokenizer.json: two templates");
        t->has_template = true;
        bool seen_seq = false;
        for (const cJSON *e = single->child; e; e = e->next) {
            const cJSON *st = tk_jget(e, "SpecialToken"), *sq = tk_jget(e, "Sequence");
            if (sq) {
                if (seen_seq) TK_FAIL(SL_EFORMAT, "tokenizer.json: template has two sequences");
                seen_seq = true;
                continue;
            }
            const char *name;
            if (!st || tk_jstr(st, "id", &name) || !name)
                TK_FAIL(SL_EFORMAT, "tokenizer.json: bad template item");
            const cJSON *ids = tk_jget(tk_jget(sp, name), "ids");
            if (!cJSON_IsArray(ids))
                TK_FAIL(SL_EFORMAT, "tokenizer.json: template token %s not defined", name);
            for (const cJSON *i = ids->child; i; i = i->next) {
                uint32_t id;
                if (tk_juint(i, t->n_ids, &id))
                    TK_FAIL(SL_EFORMAT, "tokenizer.json: template id out of range");
                rc = seen_seq ? tk_tmpl_add(&t->tmpl_post, &t->n_tmpl_post, id)
                              : tk_tmpl_add(&t->tmpl_pre, &t->n_tmpl_pre, id);
                if (rc) TK_FAIL(rc, "tokenizer.json: template too long");
            }
        }
    } else if (tk_type_is(o, "RobertaProcessing") || tk_type_is(o, "BertProcessing")) {
        const cJSON *cls = tk_jget(o, "cls"), *sep = tk_jget(o, "sep");
        uint32_t c, s;
        if (!cJSON_IsArray(cls) || !cJSON_IsArray(sep) || cJSON_GetArraySize(cls) != 2 ||
            cJSON_GetArraySize(sep) != 2 || tk_juint(cls->child->next, t->n_ids, &c) ||
            tk_juint(sep->child->next, t->n_ids, &s))
            TK_FAIL(SL_EFORMAT, "tokenizer.json: bad %s", tk_type(o));
        if (t->has_template) TK_FAIL(SL_EUNSUPPORTED, "tokenizer.json: two templates");
        t->has_template = true;
        if ((rc = tk_tmpl_add(&t->tmpl_pre, &t->n_tmpl_pre, c)) ||
            (rc = tk_tmpl_add(&t->tmpl_post, &t->n_tmpl_post, s)))
            goto out;
    } else {
        TK_FAIL(SL_EUNSUPPORTED, "tokenizer.json: post_processor %s not supported", tk_type(o));
    }
out:
    return rc;
}

/* ---- decoder ------------------------------------------------------------------------ */
static int tk_dec_count(const cJSON *o, uint32_t depth) {
    if (depth > 8) return -1;
    if (tk_type_is(o, "Sequence")) {
        const cJSON *l = tk_jget(o, "decoders");
        if (!cJSON_IsArray(l)) return -1;
        int n = 0;
        for (const cJSON *e = l->child; e; e = e->next) {
            int k = tk_dec_count(e, depth + 1);
            if (k < 0) return -1;
            n += k;
        }
        return n;
    }
    return 1;
}

static int tk_load_dec1(sl_tokenizer_t *t, const cJSON *o) {
    int rc = 0;
    if (tk_type_is(o, "Sequence")) {
        for (const cJSON *e = tk_jget(o, "decoders")->child; e; e = e->next)
            if ((rc = tk_load_dec1(t, e))) goto out;
        goto out;
    }
    tk_dec_t *d = &t->dec[t->n_dec];
    const char *s, *re;
    uint32_t cp;
    if (tk_type_is(o, "ByteLevel")) {
        d->kind = TK_DEC_BYTELEVEL;
    } else if (tk_type_is(o, "Replace")) {
        d->kind = TK_DEC_REPLACE;
        if (tk_string_pattern(o, &s, &re) || tk_jstr(o, "content", &re) || !re)
            TK_FAIL(SL_EFORMAT, "tokenizer.json: bad Replace decoder");
        if (!s || !*s) TK_FAIL(SL_EUNSUPPORTED, "tokenizer.json: Replace decoder by regex");
        if ((rc = tk_arena_str(t, s, strlen(s), &d->a)) ||
            (rc = tk_arena_str(t, re, strlen(re), &d->b)))
            goto out;
    } else if (tk_type_is(o, "ByteFallback")) {
        d->kind = TK_DEC_BYTEFALLBACK;
    } else if (tk_type_is(o, "Fuse")) {
        d->kind = TK_DEC_FUSE;
    } else if (tk_type_is(o, "Strip")) {
        d->kind = TK_DEC_STRIP;
        if (tk_jstr(o, "content", &s) || !s || !*s ||
            sl_utf8_decode((const uint8_t *)s, strlen(s), &cp) != strlen(s) ||
            tk_juint(tk_jget(o, "start"), 1u << 20, &d->start) ||
            tk_juint(tk_jget(o, "stop"), 1u << 20, &d->stop))
            TK_FAIL(SL_EFORMAT, "tokenizer.json: bad Strip decoder");
        if ((rc = tk_arena_str(t, s, strlen(s), &d->a))) goto out;
    } else if (tk_type_is(o, "Metaspace")) {
        d->kind = TK_DEC_METASPACE;
        if (tk_jstr(o, "replacement", &s) || !s || !*s ||
            sl_utf8_decode((const uint8_t *)s, strlen(s), &cp) != strlen(s) ||
            tk_prepend_scheme(o, &d->prepend))
            TK_FAIL(SL_EFORMAT, "tokenizer.json: bad Metaspace decoder");
        if ((rc = tk_arena_str(t, s, strlen(s), &d->a))) goto out;
    } else {
        TK_FAIL(SL_EUNSUPPORTED, "tokenizer.json: decoder %s not supported", tk_type(o));
    }
    t->n_dec++;
out:
    return rc;
}

static int tk_load_dec(sl_tokenizer_t *t, const cJSON *o) {
    int rc = 0;
    int n = (!o || cJSON_IsNull(o)) ? 0 : tk_dec_count(o, 0);
    if (n < 0) TK_FAIL(SL_EFORMAT, "tokenizer.json: bad decoder");
    t->dec = calloc((size_t)n + 1, sizeof *t->dec);
    if (!t->dec) TK_FAIL(SL_ENOMEM, "out of memory");
    if (!o || cJSON_IsNull(o)) { /* no decoder: HF joins the tokens with spaces */
        t->dec[0].kind = TK_DEC_JOIN_SPACE;
        t->n_dec = 1;
        goto out;
    }
    if ((rc = tk_load_dec1(t, o))) goto out;
    bool fused = false;
    for (uint32_t i = 0; i < t->n_dec; i++) {
        t->dec[i].fused_in = fused;
        if (fused && t->dec[i].kind == TK_DEC_BYTEFALLBACK)
            TK_FAIL(SL_EUNSUPPORTED, "tokenizer.json: ByteFallback after Fuse");
        if (t->dec[i].kind == TK_DEC_FUSE || t->dec[i].kind == TK_DEC_BYTELEVEL) fused = true;
    }
out:
    return rc;
}

/* ---- tokenizer_config.json ------------------------------------------------------------ */
static int32_t tk_config_token(const sl_tokenizer_t *t, const cJSON *cfg, const char *key) {
    const cJSON *v = tk_jget(cfg, key);
    const char *s = NULL;
    if (cJSON_IsString(v))
        s = v->valuestring;
    else if (cJSON_IsObject(v) && tk_jstr(v, "content", &s) != 0)
        s = NULL;
    if (!s) return -1; /* absent, null or malformed: no such token */
    int32_t id = sl_tokenizer_token_to_id(t, s, strlen(s));
    return id >= 0 ? id : -1;
}

/* ---- derived tables ------------------------------------------------------------------- */
static bool tk_dec_has(const sl_tokenizer_t *t, enum tk_dec_kind k) {
    for (uint32_t i = 0; i < t->n_dec; i++)
        if (t->dec[i].kind == k) return true;
    return false;
}

/* token_bytes for every id: what the token adds mid-sequence (tokenizer.h). */
static int tk_build_bytes(sl_tokenizer_t *t) {
    int rc = 0;
    tk_buf_t b = {0}, r = {0};
    t->tbytes = calloc(t->n_ids ? t->n_ids : 1, sizeof *t->tbytes);
    t->tbytes_len = calloc(t->n_ids ? t->n_ids : 1, sizeof *t->tbytes_len);
    if (!t->tbytes || !t->tbytes_len) TK_FAIL(SL_ENOMEM, "out of memory");
    bool bl = tk_dec_has(t, TK_DEC_BYTELEVEL), bf = tk_dec_has(t, TK_DEC_BYTEFALLBACK);
    for (uint32_t id = 0; id < t->n_ids; id++) {
        const tk_str_t *s = tk_token_str(t, id);
        if (!s) continue;
        b.len = 0;
        if ((rc = tk_buf_put(&b, s->p, s->len))) goto out;
        if (bl) {
            size_t o = 0;
            bool ok = true;
            for (size_t i = 0; i < s->len;) {
                uint32_t cp;
                i += sl_utf8_decode((const uint8_t *)s->p + i, s->len - i, &cp);
                if (cp >= 512 || tk_cp2byte[cp] < 0) {
                    ok = false;
                    break;
                }
                b.p[o++] = (char)tk_cp2byte[cp];
            }
            if (ok) b.len = o;
        } else if (bf && s->len == 6 && !memcmp(s->p, "<0x", 3) && s->p[5] == '>') {
            char hex[3] = {s->p[3], s->p[4], 0}, *end;
            unsigned long v = strtoul(hex, &end, 16);
            if (*end == 0 && hex[0] != '-' && hex[0] != '+') {
                b.p[0] = (char)v;
                b.len = 1;
            }
        } else {
            for (uint32_t k = 0; k < t->n_dec; k++) {
                const tk_dec_t *d = &t->dec[k];
                const tk_str_t *from = NULL, *to = NULL;
                tk_str_t sp = {" ", 1};
                if (d->kind == TK_DEC_REPLACE)
                    from = &d->a, to = &d->b;
                else if (d->kind == TK_DEC_METASPACE)
                    from = &d->a, to = &sp;
                if (!from) continue;
                r.len = 0;
                for (size_t i = 0; i < b.len;) {
                    if (b.len - i >= from->len && !memcmp(b.p + i, from->p, from->len)) {
                        if ((rc = tk_buf_put(&r, to->p, to->len))) goto out;
                        i += from->len;
                    } else {
                        if ((rc = tk_buf_put(&r, b.p + i, 1))) goto out;
                        i++;
                    }
                }
                b.len = 0;
                if ((rc = tk_buf_put(&b, r.p, r.len))) goto out;
            }
        }
        uint8_t *p = tk_arena_alloc(t, b.len + 1);
        if (!p) TK_FAIL(SL_ENOMEM, "out of memory");
        memcpy(p, b.p, b.len);
        p[b.len] = 0;
        t->tbytes[id] = p;
        t->tbytes_len[id] = (uint32_t)b.len;
    }
out:
    tk_buf_free(&b);
    tk_buf_free(&r);
    return rc;
}

static int tk_build_added(sl_tokenizer_t *t) {
    int rc = 0;
    tk_buf_t nb = {0};
    for (uint32_t i = 0; i < t->n_added; i++) {
        tk_added_t *a = &t->added[i];
        if (a->normalized) {
            t->any_added_norm = true;
            nb.len = 0;
            if ((rc = tk_normalize(t, a->content.p, a->content.len, &nb))) goto out;
            if (nb.len == 0) TK_FAIL(SL_EFORMAT, "tokenizer.json: added token normalizes to \"\"");
            if ((rc = tk_arena_str(t, nb.p, nb.len, &a->norm))) goto out;
        } else {
            t->any_added_raw = true;
            a->norm = a->content;
        }
    }
    /* HF's skip_special_tokens drops a token whose id_to_token string is the
     * content of a special added token, so a normalized special token
     * ("▁<s>" in Llama 2) is not dropped. Same rule here. */
    t->skip_dec = calloc(t->n_ids ? t->n_ids : 1, 1);
    if (!t->skip_dec) TK_FAIL(SL_ENOMEM, "out of memory");
    for (uint32_t id = 0; id < t->n_ids && t->n_added; id++) {
        const tk_str_t *s = tk_token_str(t, id);
        for (uint32_t i = 0; s && i < t->n_added; i++) {
            const tk_added_t *a = &t->added[i];
            if (a->special && a->content.len == s->len && !memcmp(a->content.p, s->p, s->len))
                t->skip_dec[id] = 1;
        }
    }
out:
    tk_buf_free(&nb);
    return rc;
}

/* ---- load / free ------------------------------------------------------------------------- */
int sl_tokenizer_load_mem(const char *json, size_t json_len, const char *config, size_t config_len,
                          sl_tokenizer_t **out) {
    int rc = 0;
    cJSON *root = NULL, *cfg = NULL;
    sl_tokenizer_t *t = NULL;
    if (!json || !out) return SL_EINVAL;
    *out = NULL;
    if (json_len > SL_TOKENIZER_MAX_FILE || config_len > SL_TOKENIZER_MAX_FILE)
        TK_FAIL(SL_ETOOBIG, "tokenizer file over %u bytes", SL_TOKENIZER_MAX_FILE);
    tk_bytelevel_init();
    t = calloc(1, sizeof *t);
    if (!t) TK_FAIL(SL_ENOMEM, "out of memory");
    pthread_mutex_init(&t->cache_lock, NULL);
    t->unk_id = t->bos_id = t->eos_id = -1;
    root = cJSON_ParseWithLength(json, json_len);
    if (!cJSON_IsObject(root)) TK_FAIL(SL_EFORMAT, "tokenizer.json: not a JSON object");
    if (config && config_len) {
        cfg = cJSON_ParseWithLength(config, config_len);
        if (!cJSON_IsObject(cfg)) TK_FAIL(SL_EFORMAT, "tokenizer_config.json: not a JSON object");
    }
    if ((rc = tk_load_model(t, tk_jget(root, "model")))) goto out;
    if ((rc = tk_load_added(t, tk_jget(root, "added_tokens")))) goto out;
    if ((rc = tk_load_norm(t, tk_jget(root, "normalizer")))) goto out;
    if ((rc = tk_load_pre(t, tk_jget(root, "pre_tokenizer")))) goto out;
    if ((rc = tk_load_post(t, tk_jget(root, "post_processor"), 0))) goto out;
    if ((rc = tk_load_dec(t, tk_jget(root, "decoder")))) goto out;
    if ((rc = tk_build_added(t))) goto out;
    if ((rc = tk_build_bytes(t))) goto out;
    if (cfg) {
        if (tk_jbool(cfg, "add_bos_token", false, &t->add_bos) ||
            tk_jbool(cfg, "add_eos_token", false, &t->add_eos))
            TK_FAIL(SL_EFORMAT, "tokenizer_config.json: bad add_bos_token/add_eos_token");
        t->bos_id = tk_config_token(t, cfg, "bos_token");
        t->eos_id = tk_config_token(t, cfg, "eos_token");
    }
    t->cache = calloc(TK_CACHE_SLOTS, sizeof *t->cache);
    if (!t->cache) TK_FAIL(SL_ENOMEM, "out of memory");
    *out = t;
    t = NULL;
out:
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    sl_tokenizer_free(t);
    return rc;
}

static int tk_read_file(const char *path, char **buf, size_t *len, bool optional) {
    int rc = 0, fd = -1;
    char *p = NULL;
    struct stat st;
    *buf = NULL;
    *len = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        if (optional && errno == ENOENT)
            rc = 0;
        else
            LOG_ERROR("tokenizer: %s: %s", path, sl_strerror(rc));
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)SL_TOKENIZER_MAX_FILE) {
        LOG_ERROR("tokenizer: %s: not a regular file or over %u bytes", path,
                  SL_TOKENIZER_MAX_FILE);
        rc = SL_ETOOBIG;
        goto out;
    }
    size_t n = (size_t)st.st_size, got = 0;
    p = malloc(n + 1);
    if (!p) {
        rc = SL_ENOMEM;
        goto out;
    }
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            rc = r < 0 ? -errno : SL_EIO;
            goto out;
        }
        got += (size_t)r;
    }
    p[n] = 0;
    *buf = p;
    *len = n;
    p = NULL;
out:
    if (fd >= 0) close(fd);
    free(p);
    return rc;
}

int sl_tokenizer_load(const char *dir, sl_tokenizer_t **out) {
    int rc = 0;
    char path[4096];
    char *js = NULL, *cf = NULL;
    size_t jl = 0, cl = 0;
    if (!dir || !out) return SL_EINVAL;
    *out = NULL;
    if ((size_t)snprintf(path, sizeof path, "%s/tokenizer.json", dir) >= sizeof path) {
        rc = SL_EINVAL;
        goto out;
    }
    if ((rc = tk_read_file(path, &js, &jl, false))) goto out;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if ((rc = tk_read_file(path, &cf, &cl, true))) goto out;
    rc = sl_tokenizer_load_mem(js, jl, cf, cl, out);
    if (rc) LOG_ERROR("tokenizer: loading %s failed: %s", dir, sl_strerror(rc));
out:
    free(js);
    free(cf);
    return rc;
}

void sl_tokenizer_free(sl_tokenizer_t *t) {
    if (!t) return;
    for (uint32_t i = 0; i < t->n_pre; i++) pcre2_code_free(t->pre[i].re);
    for (uint32_t i = 0; i < t->n_norm; i++) pcre2_code_free(t->norm[i].re);
    free(t->pre);
    free(t->norm);
    free(t->dec);
    free(t->tok);
    free(t->vmap.slots);
    free(t->merges);
    free(t->added);
    free(t->added_of_id);
    free(t->skip_dec);
    free(t->tmpl_pre);
    free(t->tmpl_post);
    free(t->tbytes);
    free(t->tbytes_len);
    tk_cache_free(t);
    pthread_mutex_destroy(&t->cache_lock);
    tk_blk_t *b = t->arena;
    while (b) {
        tk_blk_t *n = b->next;
        free(b);
        b = n;
    }
    free(t);
}

/* ---- queries ------------------------------------------------------------------------------ */
const tk_str_t *tk_token_str(const sl_tokenizer_t *t, uint32_t id) {
    if (id >= t->n_ids) return NULL;
    /* HF gives a normalized added token's normalized form ("▁<s>" for Llama 2) */
    if (t->added_of_id[id] >= 0) return &t->added[t->added_of_id[id]].norm;
    if (id < t->vocab_cap && t->tok[id].p) return &t->tok[id];
    return NULL;
}

uint32_t sl_tokenizer_vocab_size(const sl_tokenizer_t *t) {
    return t ? t->n_ids : 0;
}

const char *sl_tokenizer_id_to_token(const sl_tokenizer_t *t, uint32_t id) {
    const tk_str_t *s = t ? tk_token_str(t, id) : NULL;
    return s ? s->p : NULL;
}

int sl_tokenizer_token_bytes(const sl_tokenizer_t *t, uint32_t id, const uint8_t **bytes,
                             size_t *len) {
    if (!t || !bytes || !len) return SL_EINVAL;
    if (id >= t->n_ids || !t->tbytes[id]) return SL_ENOTFOUND;
    *bytes = t->tbytes[id];
    *len = t->tbytes_len[id];
    return 0;
}

int32_t sl_tokenizer_token_to_id(const sl_tokenizer_t *t, const char *tok, size_t len) {
    if (!t || !tok) return SL_EINVAL;
    for (uint32_t i = 0; i < t->n_added; i++)
        if (t->added[i].content.len == len && !memcmp(t->added[i].content.p, tok, len))
            return (int32_t)t->added[i].id;
    int32_t id = tk_strmap_get(&t->vmap, t->tok, tok, len);
    return id >= 0 ? id : SL_ENOTFOUND;
}

bool sl_tokenizer_is_special(const sl_tokenizer_t *t, uint32_t id) {
    return t && id < t->n_ids && t->added_of_id[id] >= 0 && t->added[t->added_of_id[id]].special;
}

int32_t sl_tokenizer_bos_id(const sl_tokenizer_t *t) {
    return t ? t->bos_id : -1;
}

int32_t sl_tokenizer_eos_id(const sl_tokenizer_t *t) {
    return t ? t->eos_id : -1;
}

int tk_match_init(tk_match_t *m) {
    m->md = pcre2_match_data_create(1, NULL);
    m->mc = pcre2_match_context_create(NULL);
    m->js = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, NULL);
    if (!m->md || !m->mc || !m->js) {
        tk_match_fini(m);
        return SL_ENOMEM;
    }
    pcre2_jit_stack_assign(m->mc, NULL, m->js);
    return 0;
}

void tk_match_fini(tk_match_t *m) {
    pcre2_match_data_free(m->md);
    pcre2_match_context_free(m->mc);
    pcre2_jit_stack_free(m->js);
    m->md = NULL;
    m->mc = NULL;
    m->js = NULL;
}
