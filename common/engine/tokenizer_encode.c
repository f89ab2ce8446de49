/* tokenizer_encode.c - encode as HF's Tokenizer::encode does: split out added
 * tokens that match the raw text (normalized: false), normalize the rest,
 * split out added tokens matching the normalized text (normalized: true),
 * pre-tokenize and run BPE on what remains, then wrap with the template. */
#include "common/base/err.h"
#include "common/engine/tokenizer_internal.h"
#include "common/engine/utf8.h"

#include <stdlib.h>
#include <string.h>

typedef struct tk_seg {
    size_t s, e;
    int32_t id; /* added token id, or -1 for text */
} tk_seg_t;

typedef struct tk_segs {
    tk_seg_t *v;
    size_t n, cap;
} tk_segs_t;

static int segs_push(tk_segs_t *a, size_t s, size_t e, int32_t id) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 16;
        tk_seg_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return SL_ENOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = (tk_seg_t){s, e, id};
    return 0;
}

static uint32_t last_cp(const char *s, size_t n, size_t *start) {
    size_t k = n - 1;
    while (k > 0 && ((uint8_t)s[k] & 0xC0) == 0x80) k--;
    uint32_t cp;
    sl_utf8_decode((const uint8_t *)s + k, n - k, &cp);
    if (start) *start = k;
    return cp;
}

/* Word characters for single_word: Rust regex's Unicode \\w (Alphabetic,
 * marks, decimal digits, connector punctuation, joiners), which HF uses. */
static pcre2_code *word_re;
static pthread_once_t word_once = PTHREAD_ONCE_INIT;
static void word_re_init(void) {
    int err;
    PCRE2_SIZE off;
    const char *pat = "^[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]";
    word_re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err,
                            &off, NULL);
    if (!word_re) /* PCRE2 before 10.40 has no Boolean properties */
        word_re = pcre2_compile((PCRE2_SPTR) "^[\\p{L}\\p{M}\\p{Nd}\\p{Pc}]", PCRE2_ZERO_TERMINATED,
                                PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
}

static bool is_word_cp(uint32_t c) {
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               c == '_';
    pthread_once(&word_once, word_re_init);
    if (!word_re) return false;
    uint8_t u[4];
    size_t n = sl_utf8_encode(c, u);
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return false;
    int r = pcre2_match(word_re, u, n, 0, PCRE2_NO_UTF_CHECK, md, NULL);
    pcre2_match_data_free(md);
    return r >= 0;
}

/* HF AddedVocabulary::find_matches over s with the tokens whose normalized
 * flag equals norm (matching their normalized content in that case). */
static int added_split(const sl_tokenizer_t *t, const char *s, size_t n, bool norm,
                       tk_segs_t *out) {
    int rc = 0;
    uint8_t first[32] = {0};
    bool any = false;
    out->n = 0;
    for (uint32_t i = 0; i < t->n_added; i++) {
        if (t->added[i].normalized != norm) continue;
        uint8_t c = (uint8_t)t->added[i].norm.p[0];
        first[c >> 3] |= (uint8_t)(1u << (c & 7));
        any = true;
    }
    size_t start_off = 0;
    for (size_t i = 0; any && i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        if (!(first[c >> 3] & (1u << (c & 7)))) continue;
        const tk_added_t *best = NULL;
        for (uint32_t k = 0; k < t->n_added; k++) {
            const tk_added_t *a = &t->added[k];
            if (a->normalized != norm || a->norm.len > n - i) continue;
            if (best && a->norm.len <= best->norm.len) continue;
            if (!memcmp(s + i, a->norm.p, a->norm.len)) best = a;
        }
        if (!best) continue;
        size_t ms = i, me = i + best->norm.len;
        if (best->single_word) {
            bool sp_before = ms == 0 || !is_word_cp(last_cp(s, ms, NULL));
            uint32_t nc = 0;
            if (me < n) sl_utf8_decode((const uint8_t *)s + me, n - me, &nc);
            bool sp_after = me == n || !is_word_cp(nc);
            if (!sp_before || !sp_after) { /* skipped; the search resumes after it */
                i = me - 1;
                continue;
            }
        }
        if (best->lstrip) {
            size_t ns = ms;
            while (ns > start_off) {
                size_t k;
                uint32_t cp = last_cp(s, ns, &k);
                if (!tk_is_ws(cp)) break;
                ns = k;
            }
            ms = ns;
        }
        if (best->rstrip) {
            while (me < n) {
                uint32_t cp;
                size_t k = sl_utf8_decode((const uint8_t *)s + me, n - me, &cp);
                if (!tk_is_ws(cp)) break;
                me += k;
            }
        }
        if (start_off < ms && (rc = segs_push(out, start_off, ms, -1))) goto out;
        if ((rc = segs_push(out, ms, me, (int32_t)best->id))) goto out;
        start_off = me;
        i = me - 1;
    }
    if (start_off < n || n == 0) rc = segs_push(out, start_off, n, -1);
out:
    return rc;
}

int sl_tokenizer_encode(const sl_tokenizer_t *t, const char *text, size_t len, bool add_special,
                        uint32_t **ids_out, size_t *n_out) {
    int rc = 0;
    char *clean = NULL;
    size_t clen = 0;
    tk_ids_t ids = {0};
    tk_segs_t raw = {0}, sub = {0};
    tk_buf_t nb = {0};
    if (!t || (!text && len) || !ids_out || !n_out) return SL_EINVAL;
    *ids_out = NULL;
    *n_out = 0;
    if ((rc = sl_utf8_sanitize((const uint8_t *)(text ? text : ""), len, &clean, &clen))) goto out;
    if (add_special) {
        if (t->has_template) {
            for (uint32_t i = 0; i < t->n_tmpl_pre; i++)
                if ((rc = tk_ids_push(&ids, t->tmpl_pre[i]))) goto out;
        } else if (t->add_bos && t->bos_id >= 0 && (rc = tk_ids_push(&ids, (uint32_t)t->bos_id))) {
            goto out;
        }
    }
    if ((rc = added_split(t, clean, clen, false, &raw))) goto out;
    for (size_t i = 0; i < raw.n; i++) {
        tk_seg_t sg = raw.v[i];
        if (sg.id >= 0) {
            if ((rc = tk_ids_push(&ids, (uint32_t)sg.id))) goto out;
            continue;
        }
        if ((rc = tk_normalize(t, clean + sg.s, sg.e - sg.s, &nb))) goto out;
        const char *ns = nb.p ? nb.p : "";
        if (t->any_added_norm) {
            if ((rc = added_split(t, ns, nb.len, true, &sub))) goto out;
        } else {
            sub.n = 0;
            if ((rc = segs_push(&sub, 0, nb.len, -1))) goto out;
        }
        for (size_t j = 0; j < sub.n; j++) {
            tk_seg_t s2 = sub.v[j];
            if (s2.id >= 0)
                rc = tk_ids_push(&ids, (uint32_t)s2.id);
            else
                rc = tk_pretok_encode(t, ns + s2.s, s2.e - s2.s, sg.s == 0 && s2.s == 0, &ids);
            if (rc) goto out;
        }
    }
    if (add_special) {
        if (t->has_template) {
            for (uint32_t i = 0; i < t->n_tmpl_post; i++)
                if ((rc = tk_ids_push(&ids, t->tmpl_post[i]))) goto out;
        } else if (t->add_eos && t->eos_id >= 0 && (rc = tk_ids_push(&ids, (uint32_t)t->eos_id))) {
            goto out;
        }
    }
    if (!ids.v && (rc = tk_ids_push(&ids, 0)) == 0) ids.n = 0; /* non-NULL on success */
    if (rc) goto out;
    *ids_out = ids.v;
    *n_out = ids.n;
    ids.v = NULL;
out:
    free(clean);
    free(ids.v);
    free(raw.v);
    free(sub.v);
    tk_buf_free(&nb);
    return rc;
}
