/* tokenizer_internal.h - shared internals of tokenizer*.c and detok.c.
 * Not a public header: nothing outside those files includes it. */
#ifndef SL_ENGINE_TOKENIZER_INTERNAL_H
#define SL_ENGINE_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include "common/engine/tokenizer.h"

#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- growable buffers --------------------------------------------------- */
typedef struct tk_buf {
    char *p;
    size_t len, cap;
} tk_buf_t;
int tk_buf_reserve(tk_buf_t *b, size_t extra);
int tk_buf_put(tk_buf_t *b, const void *s, size_t n);
void tk_buf_free(tk_buf_t *b);

typedef struct tk_ids {
    uint32_t *v;
    size_t n, cap;
} tk_ids_t;
int tk_ids_push(tk_ids_t *a, uint32_t id);

/* ---- string -> id hash map over strings stored elsewhere ----------------- */
typedef struct tk_strmap {
    uint32_t *slots; /* id + 1, 0 = empty; (cap) */
    size_t cap;      /* power of two */
} tk_strmap_t;

/* A string owned by the tokenizer's arena. */
typedef struct tk_str {
    const char *p;
    uint32_t len;
} tk_str_t;

/* ---- components --------------------------------------------------------- */
enum tk_norm_kind { TK_NORM_NFC, TK_NORM_PREPEND, TK_NORM_REPLACE, TK_NORM_STRIP };
typedef struct tk_norm {
    enum tk_norm_kind kind;
    tk_str_t a, b;  /* prepend: a; replace: a -> b */
    pcre2_code *re; /* replace by regex (then a is unused) */
    bool left, right;
} tk_norm_t;

enum tk_split_beh {
    TK_SPLIT_REMOVED,
    TK_SPLIT_ISOLATED,
    TK_SPLIT_MERGED_PREV,
    TK_SPLIT_MERGED_NEXT,
    TK_SPLIT_CONTIGUOUS
};
enum tk_pre_kind { TK_PRE_BYTELEVEL, TK_PRE_SPLIT, TK_PRE_METASPACE };
enum tk_prepend { TK_PREPEND_ALWAYS, TK_PREPEND_FIRST, TK_PREPEND_NEVER };
typedef struct tk_pre {
    enum tk_pre_kind kind;
    pcre2_code *re; /* split by regex (NULL: by literal lit) */
    tk_str_t lit;   /* literal pattern / metaspace replacement */
    enum tk_split_beh beh;
    bool invert;
    bool add_prefix_space; /* bytelevel */
    enum tk_prepend prepend;
    bool split; /* metaspace */
} tk_pre_t;

enum tk_dec_kind {
    TK_DEC_BYTELEVEL,
    TK_DEC_REPLACE,
    TK_DEC_BYTEFALLBACK,
    TK_DEC_FUSE,
    TK_DEC_STRIP,
    TK_DEC_METASPACE,
    TK_DEC_JOIN_SPACE /* no decoder: HF joins tokens with " " */
};
typedef struct tk_dec {
    enum tk_dec_kind kind;
    tk_str_t a, b; /* replace a -> b; strip/metaspace char in a */
    uint32_t start, stop;
    enum tk_prepend prepend;
    bool fused_in; /* input is chunks of one string (after Fuse/ByteLevel) */
} tk_dec_t;

typedef struct tk_added {
    tk_str_t content;
    tk_str_t norm; /* normalized content (normalized tokens) */
    uint32_t id;
    bool special, lstrip, rstrip, normalized, single_word;
} tk_added_t;

typedef struct tk_merge_slot {
    uint64_t key; /* (a << 32) | b; UINT64_MAX = empty */
    uint32_t rank, id;
} tk_merge_slot_t;

#define TK_CACHE_SLOTS  8192
#define TK_CACHE_MAXKEY 64
typedef struct tk_cache_ent {
    uint64_t hash;
    uint32_t klen, n;
    char *mem; /* key bytes then (n) u32 ids, one allocation */
} tk_cache_ent_t;

struct sl_tokenizer {
    /* arena of every string above (one block per allocation, chained) */
    void *arena;
    /* model vocabulary: tok[id] (vocab_cap); p == NULL for gaps */
    tk_str_t *tok;
    uint32_t vocab_cap; /* model ids are < vocab_cap */
    uint32_t vocab_n;   /* entries in the model vocabulary */
    tk_strmap_t vmap;   /* model vocabulary */
    tk_merge_slot_t *merges;
    size_t merges_cap; /* power of two */
    int32_t unk_id;
    bool byte_fallback, fuse_unk, ignore_merges;
    tk_str_t subword_prefix, word_suffix;
    int32_t byte_tok[256]; /* "<0xNN>" ids, -1 absent */

    tk_added_t *added;
    uint32_t n_added;
    int32_t *added_of_id; /* (n_ids) index into added or -1 */
    uint8_t *skip_dec;    /* (n_ids) dropped by decode(skip_special) */
    uint32_t n_ids;       /* vocab_size() */
    bool any_added_raw, any_added_norm;

    tk_norm_t *norm;
    uint32_t n_norm;
    tk_pre_t *pre;
    uint32_t n_pre;
    tk_dec_t *dec;
    uint32_t n_dec;

    uint32_t *tmpl_pre, *tmpl_post; /* post-processor ids around the sequence */
    uint32_t n_tmpl_pre, n_tmpl_post;
    bool has_template;
    bool add_bos, add_eos;
    int32_t bos_id, eos_id;

    uint8_t **tbytes; /* (n_ids) token_bytes, in arena */
    uint32_t *tbytes_len;

    pthread_mutex_t cache_lock;
    tk_cache_ent_t *cache; /* (TK_CACHE_SLOTS) */
};

/* ---- shared helpers ----------------------------------------------------- */
static inline uint64_t tk_mix64(uint64_t x) { /* murmur3 finalizer */
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}
uint64_t tk_hash(const void *p, size_t n);
/* Looks s up in m whose keys are strs[id]; returns id or -1. */
int32_t tk_strmap_get(const tk_strmap_t *m, const tk_str_t *strs, const char *s, size_t n);
/* Token string of any id (added first), or NULL. */
const tk_str_t *tk_token_str(const sl_tokenizer_t *t, uint32_t id);
/* GPT-2 byte <-> unicode map. */
extern uint16_t tk_byte2cp[256];
extern int16_t tk_cp2byte[512];
void tk_bytelevel_init(void);

/* tokenizer_normalize.c */
bool tk_is_ws(uint32_t cp); /* Unicode White_Space, as Rust's char::is_whitespace */
int tk_normalize(const sl_tokenizer_t *t, const char *s, size_t n, tk_buf_t *out);
/* tokenizer_pretok.c: splits s into words and runs the model on each,
 * appending ids. origin: s starts at offset 0 of the input. */
int tk_pretok_encode(const sl_tokenizer_t *t, const char *s, size_t n, bool origin, tk_ids_t *ids);
int tk_split_matches(const tk_pre_t *p, const char *s, size_t n, size_t **spans, size_t *n_spans);
/* tokenizer_bpe.c */
int tk_bpe_word(const sl_tokenizer_t *t, const char *w, size_t n, tk_ids_t *ids);
void tk_cache_free(sl_tokenizer_t *t);

/* tokenizer_decode.c: streaming decoder state shared by decode and detok */
typedef struct tk_decst {
    const sl_tokenizer_t *t;
    tk_buf_t out;
    tk_buf_t *stage_buf; /* (n_dec) per-stage pending bytes */
    uint32_t *stage_cnt; /* (n_dec) tokens seen / chars stripped */
    uint32_t *stage_flag;
} tk_decst_t;
int tk_decst_init(tk_decst_t *d, const sl_tokenizer_t *t);
void tk_decst_reset(tk_decst_t *d);
void tk_decst_free(tk_decst_t *d);
int tk_decst_push(tk_decst_t *d, uint32_t id, bool skip_special);
int tk_decst_finish(tk_decst_t *d);

/* Regex match state for one encode call: match data plus a private JIT stack
 * in its own match context. PCRE2's default JIT area lives on the calling
 * thread's machine stack, which server threads (small or sanitizer-inflated
 * stacks) cannot always spare; a private stack makes every call independent
 * of the caller's stack. tk_match_init returns 0 or SL_ENOMEM; fini is safe
 * on a zeroed or failed struct. */
typedef struct tk_match {
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
} tk_match_t;
int tk_match_init(tk_match_t *m);
void tk_match_fini(tk_match_t *m);

#endif
