/* tokenizer_normalize.c - the normalizers of tokenizer.json: NFC, Prepend,
 * Replace (literal), Strip, applied in sequence to one segment of text. */
#include "common/base/err.h"
#include "common/engine/tokenizer_internal.h"
#include "common/engine/tokenizer_nfc.h"
#include "common/engine/utf8.h"

#include <stdlib.h>
#include <string.h>

/* Rust's char::is_whitespace (Unicode White_Space). */
bool tk_is_ws(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Replaces every match of n->re (left to right, as HF's find_matches; an
 * empty match inserts the content and moves on one character). */
static int replace_regex(const tk_norm_t *n, const char *s, size_t len, tk_buf_t *out) {
    int rc = 0;
    size_t prev = 0, pos = 0;
    tk_match_t mt = {0};
    if ((rc = tk_match_init(&mt))) return rc;
    while (pos <= len) {
        int r = pcre2_match(n->re, (PCRE2_SPTR)s, len, pos, PCRE2_NO_UTF_CHECK, mt.md, mt.mc);
        if (r == PCRE2_ERROR_NOMATCH) break;
        if (r < 0) {
            rc = SL_EINVAL;
            goto out;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(mt.md);
        size_t ms = ov[0], me = ov[1];
        if (ms < prev || me < ms || me > len) {
            rc = SL_EINVAL;
            goto out;
        }
        if ((rc = tk_buf_put(out, s + prev, ms - prev)) || (rc = tk_buf_put(out, n->b.p, n->b.len)))
            goto out;
        prev = me;
        if (me == ms) {
            if (me >= len) break;
            uint32_t cp;
            size_t k = sl_utf8_decode((const uint8_t *)s + me, len - me, &cp);
            if ((rc = tk_buf_put(out, s + me, k))) goto out;
            prev = pos = me + k;
        } else {
            pos = me;
        }
    }
    rc = tk_buf_put(out, s + prev, len - prev);
out:
    tk_match_fini(&mt);
    return rc;
}

static int norm_apply(const tk_norm_t *n, const char *s, size_t len, tk_buf_t *out) {
    int rc = 0;
    char *tmp = NULL;
    out->len = 0;
    switch (n->kind) {
    case TK_NORM_NFC: {
        size_t ol;
        if ((rc = sl_nfc_normalize(s, len, &tmp, &ol))) goto out;
        rc = tmp ? tk_buf_put(out, tmp, ol) : tk_buf_put(out, s, len);
        break;
    }
    case TK_NORM_PREPEND:
        if (len && (rc = tk_buf_put(out, n->a.p, n->a.len))) goto out;
        rc = tk_buf_put(out, s, len);
        break;
    case TK_NORM_REPLACE: {
        if (n->re) {
            rc = replace_regex(n, s, len, out);
            break;
        }
        if ((rc = tk_buf_reserve(out, len))) goto out;
        size_t i = 0, run = 0;
        while (i < len) {
            const char *hit = n->a.len <= len - i ? memmem(s + i, len - i, n->a.p, n->a.len) : NULL;
            if (!hit) break;
            run = (size_t)(hit - (s + i));
            if ((rc = tk_buf_put(out, s + i, run)) || (rc = tk_buf_put(out, n->b.p, n->b.len)))
                goto out;
            i += run + n->a.len;
        }
        rc = tk_buf_put(out, s + i, len - i);
        break;
    }
    case TK_NORM_STRIP: {
        size_t a = 0, b = len;
        const uint8_t *u = (const uint8_t *)s;
        while (n->left && a < b) {
            uint32_t cp;
            size_t k = sl_utf8_decode(u + a, b - a, &cp);
            if (!tk_is_ws(cp)) break;
            a += k;
        }
        while (n->right && b > a) {
            size_t k = b - 1;
            while (k > a && (u[k] & 0xC0) == 0x80) k--;
            uint32_t cp;
            sl_utf8_decode(u + k, b - k, &cp);
            if (!tk_is_ws(cp)) break;
            b = k;
        }
        rc = tk_buf_put(out, s + a, b - a);
        break;
    }
    }
out:
    free(tmp);
    return rc;
}

int tk_normalize(const sl_tokenizer_t *t, const char *s, size_t n, tk_buf_t *out) {
    int rc = 0;
    tk_buf_t tmp = {0};
    out->len = 0;
    if (t->n_norm == 0) {
        rc = tk_buf_put(out, s, n);
        goto out;
    }
    /* Ping-pong between out and tmp so the result ends in out. */
    tk_buf_t *bufs[2] = {(t->n_norm % 2) ? out : &tmp, (t->n_norm % 2) ? &tmp : out};
    const char *cur = s;
    size_t cur_len = n;
    for (uint32_t i = 0; i < t->n_norm; i++) {
        tk_buf_t *dst = bufs[i % 2];
        if ((rc = norm_apply(&t->norm[i], cur, cur_len, dst))) goto out;
        cur = dst->p ? dst->p : "";
        cur_len = dst->len;
    }
    if (cur != out->p) {
        out->len = 0;
        rc = tk_buf_put(out, cur, cur_len);
    }
out:
    tk_buf_free(&tmp);
    return rc;
}
