/* tokenizer_pretok.c - pre-tokenizers (Split by PCRE2 regex or literal with
 * HF's five behaviours, ByteLevel, Metaspace, Digits, Whitespace) and the
 * hand-off of each resulting word to the BPE model. Words are spans into
 * one buffer per stage, so a stage that only splits copies nothing. */
#include "common/base/err.h"
#include "common/engine/tokenizer_internal.h"
#include "common/engine/utf8.h"

#include <stdlib.h>
#include <string.h>

typedef struct tk_span {
    size_t s, e; /* [s, e) in the stage buffer */
    bool m;      /* a match (while splitting) / starts at input offset 0 (origin) */
} tk_span_t;

typedef struct tk_spans {
    tk_span_t *v;
    size_t n, cap;
} tk_spans_t;

static int spans_push(tk_spans_t *a, size_t s, size_t e, bool m) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 32;
        tk_span_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return SL_ENOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = (tk_span_t){s, e, m};
    return 0;
}

/* All (gap | match) pieces of s[0..n) in order, as HF's Pattern::find_matches. */
static int find_matches(const tk_pre_t *p, const char *s, size_t n, const tk_match_t *mt,
                        tk_spans_t *out) {
    int rc = 0;
    size_t prev = 0, pos = 0;
    out->n = 0;
    if (n == 0) return spans_push(out, 0, 0, false);
    while (pos <= n) {
        size_t ms, me;
        if (p->re) {
            int r = pcre2_match(p->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, mt->md, mt->mc);
            if (r == PCRE2_ERROR_NOMATCH) break;
            if (r < 0) return SL_EINVAL; /* match limit etc.: refuse rather than guess */
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(mt->md);
            ms = ov[0];
            me = ov[1];
            if (ms < pos || me < ms || me > n) return SL_EINVAL;
        } else {
            const char *hit = memmem(s + pos, n - pos, p->lit.p, p->lit.len);
            if (!hit) break;
            ms = (size_t)(hit - s);
            me = ms + p->lit.len;
        }
        if (ms != prev && (rc = spans_push(out, prev, ms, false))) return rc;
        if ((rc = spans_push(out, ms, me, true))) return rc;
        prev = me;
        if (me == ms) {
            if (me >= n) break;
            uint32_t cp;
            pos = me + sl_utf8_decode((const uint8_t *)s + me, n - me, &cp);
        } else {
            pos = me;
        }
    }
    if (prev != n) rc = spans_push(out, prev, n, false);
    return rc;
}

/* Splits piece [base, base+n) of the buffer by p, appending non-empty words
 * (with origin flags) to out. Scratch: m. */
static int split_piece(const tk_pre_t *p, const char *buf, tk_span_t piece, const tk_match_t *mt,
                       tk_spans_t *m, tk_spans_t *out) {
    int rc = find_matches(p, buf + piece.s, piece.e - piece.s, mt, m);
    if (rc) return rc;
    tk_span_t *v = m->v;
    size_t n = m->n, w = 0;
    if (p->invert)
        for (size_t i = 0; i < n; i++) v[i].m = !v[i].m;
    switch (p->beh) {
    case TK_SPLIT_ISOLATED:
        w = n;
        break;
    case TK_SPLIT_REMOVED:
        for (size_t i = 0; i < n; i++)
            if (!v[i].m) v[w++] = v[i];
        break;
    case TK_SPLIT_MERGED_PREV: {
        bool prev = false;
        for (size_t i = 0; i < n; i++) {
            bool cur = v[i].m;
            if (cur && !prev && w > 0)
                v[w - 1].e = v[i].e;
            else
                v[w++] = v[i];
            prev = cur;
        }
        break;
    }
    case TK_SPLIT_MERGED_NEXT: {
        /* HF folds from the right: a match not preceded (to its right) by a
         * match is merged into the piece after it. */
        bool prev = false;
        size_t r = n;
        tk_span_t *tmp = v; /* compact from the right into the tail */
        size_t wr = n;
        while (r > 0) {
            r--;
            bool cur = tmp[r].m;
            if (cur && !prev && wr < n)
                tmp[wr].s = tmp[r].s;
            else
                tmp[--wr] = tmp[r];
            prev = cur;
        }
        memmove(v, v + wr, (n - wr) * sizeof *v);
        w = n - wr;
        break;
    }
    case TK_SPLIT_CONTIGUOUS: {
        bool prev = false;
        for (size_t i = 0; i < n; i++) {
            bool cur = v[i].m;
            if (cur == prev && w > 0)
                v[w - 1].e = v[i].e;
            else
                v[w++] = v[i];
            prev = cur;
        }
        break;
    }
    }
    for (size_t i = 0; i < w; i++) {
        if (v[i].e <= v[i].s) continue;
        bool origin = piece.m && v[i].s == 0;
        if ((rc = spans_push(out, piece.s + v[i].s, piece.s + v[i].e, origin))) return rc;
    }
    return 0;
}

/* Appends the GPT-2 byte-to-unicode image of s[0..n) to b. */
static int bytelevel_map(const char *s, size_t n, tk_buf_t *b) {
    int rc = tk_buf_reserve(b, n * 2);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        uint16_t cp = tk_byte2cp[(uint8_t)s[i]];
        if (cp < 0x80) {
            b->p[b->len++] = (char)cp;
        } else {
            b->p[b->len++] = (char)(0xC0 | (cp >> 6));
            b->p[b->len++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    b->p[b->len] = 0;
    return 0;
}

int tk_pretok_encode(const sl_tokenizer_t *t, const char *s, size_t n, bool origin, tk_ids_t *ids) {
    int rc = 0;
    tk_buf_t bufs[2] = {{0}, {0}}, tmp = {0};
    tk_spans_t cur = {0}, next = {0}, m = {0}, sub = {0};
    tk_match_t mt = {0};
    const char *buf = s;
    int which = 0;
    if (n == 0) goto out;
    if ((rc = spans_push(&cur, 0, n, origin))) goto out;
    for (uint32_t k = 0; k < t->n_pre; k++) {
        const tk_pre_t *p = &t->pre[k];
        if (p->re && !mt.md && (rc = tk_match_init(&mt))) goto out;
        next.n = 0;
        if (p->kind == TK_PRE_SPLIT) {
            for (size_t i = 0; i < cur.n; i++)
                if ((rc = split_piece(p, buf, cur.v[i], &mt, &m, &next))) goto out;
        } else if (p->kind == TK_PRE_BYTELEVEL) {
            tk_buf_t *nb = &bufs[which];
            which ^= 1;
            nb->len = 0;
            for (size_t i = 0; i < cur.n; i++) {
                tk_span_t pc = cur.v[i];
                tmp.len = 0;
                if (p->add_prefix_space && buf[pc.s] != ' ' && (rc = tk_buf_put(&tmp, " ", 1)))
                    goto out;
                if ((rc = tk_buf_put(&tmp, buf + pc.s, pc.e - pc.s))) goto out;
                sub.n = 0;
                tk_span_t whole = {0, tmp.len, pc.m};
                if (p->re) {
                    if ((rc = split_piece(p, tmp.p, whole, &mt, &m, &sub))) goto out;
                } else if ((rc = spans_push(&sub, 0, tmp.len, pc.m))) {
                    goto out;
                }
                for (size_t j = 0; j < sub.n; j++) {
                    size_t st = nb->len;
                    if ((rc = bytelevel_map(tmp.p + sub.v[j].s, sub.v[j].e - sub.v[j].s, nb)))
                        goto out;
                    if ((rc = spans_push(&next, st, nb->len, sub.v[j].m))) goto out;
                }
            }
            buf = nb->p;
        } else { /* TK_PRE_METASPACE */
            tk_buf_t *nb = &bufs[which];
            which ^= 1;
            nb->len = 0;
            tk_pre_t lit = {.kind = TK_PRE_SPLIT, .lit = p->lit, .beh = TK_SPLIT_MERGED_NEXT};
            for (size_t i = 0; i < cur.n; i++) {
                tk_span_t pc = cur.v[i];
                size_t st = nb->len;
                bool starts =
                    pc.e - pc.s >= p->lit.len && !memcmp(buf + pc.s, p->lit.p, p->lit.len);
                bool pre =
                    p->prepend == TK_PREPEND_ALWAYS || (p->prepend == TK_PREPEND_FIRST && pc.m);
                /* " " at the start becomes the replacement, so test that too */
                if (pc.e > pc.s && buf[pc.s] == ' ') starts = true;
                if (pre && !starts && (rc = tk_buf_put(nb, p->lit.p, p->lit.len))) goto out;
                for (size_t j = pc.s; j < pc.e; j++) {
                    rc = buf[j] == ' ' ? tk_buf_put(nb, p->lit.p, p->lit.len)
                                       : tk_buf_put(nb, buf + j, 1);
                    if (rc) goto out;
                }
                tk_span_t whole = {st, nb->len, pc.m};
                if (p->split) {
                    if ((rc = split_piece(&lit, nb->p, whole, &mt, &m, &next))) goto out;
                } else if (whole.e > whole.s && (rc = spans_push(&next, st, nb->len, pc.m))) {
                    goto out;
                }
            }
            buf = nb->p;
        }
        tk_spans_t sw = cur;
        cur = next;
        next = sw;
    }
    for (size_t i = 0; i < cur.n; i++)
        if ((rc = tk_bpe_word(t, buf + cur.v[i].s, cur.v[i].e - cur.v[i].s, ids))) goto out;
out:
    tk_match_fini(&mt);
    tk_buf_free(&bufs[0]);
    tk_buf_free(&bufs[1]);
    tk_buf_free(&tmp);
    free(cur.v);
    free(next.v);
    free(m.v);
    free(sub.v);
    return rc;
}
