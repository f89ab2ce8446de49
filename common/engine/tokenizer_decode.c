/* tokenizer_decode.c - the decoder chain as a stream. Each stage of HF's
 * decode_chain (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace)
 * is written to take tokens one at a time and to hold back only what a later
 * token could still change, so full decode (push all, finish) and the
 * incremental detokenizer (detok.c) are the same code and agree byte for
 * byte. Stages after Fuse/ByteLevel see chunks of one fused string. */
#include "common/base/err.h"
#include "common/engine/tokenizer_internal.h"
#include "common/engine/utf8.h"

#include <stdlib.h>
#include <string.h>

static const char tk_fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

int tk_decst_init(tk_decst_t *d, const sl_tokenizer_t *t) {
    memset(d, 0, sizeof *d);
    d->t = t;
    d->stage_buf = calloc(t->n_dec + 1, sizeof *d->stage_buf);
    d->stage_cnt = calloc(t->n_dec + 1, sizeof *d->stage_cnt);
    d->stage_flag = calloc(t->n_dec + 1, sizeof *d->stage_flag);
    if (!d->stage_buf || !d->stage_cnt || !d->stage_flag) {
        tk_decst_free(d);
        return SL_ENOMEM;
    }
    return 0;
}

void tk_decst_reset(tk_decst_t *d) {
    for (uint32_t k = 0; k < d->t->n_dec; k++) {
        d->stage_buf[k].len = 0;
        d->stage_cnt[k] = 0;
        d->stage_flag[k] = 0;
    }
}

void tk_decst_free(tk_decst_t *d) {
    if (d->stage_buf && d->t)
        for (uint32_t k = 0; k < d->t->n_dec; k++) tk_buf_free(&d->stage_buf[k]);
    free(d->stage_buf);
    free(d->stage_cnt);
    free(d->stage_flag);
    tk_buf_free(&d->out);
    d->stage_buf = NULL;
    d->stage_cnt = d->stage_flag = NULL;
}

static int st_emit(tk_decst_t *d, uint32_t k, const char *s, size_t n);

/* Emits s[0..n) with invalid UTF-8 replaced. */
static int emit_lossy(tk_decst_t *d, uint32_t k, const char *s, size_t n) {
    if (n == 0) return 0;
    if (sl_utf8_valid((const uint8_t *)s, n)) return st_emit(d, k, s, n);
    char *c;
    size_t cl;
    int rc = sl_utf8_sanitize((const uint8_t *)s, n, &c, &cl);
    if (rc) return rc;
    rc = st_emit(d, k, c, cl);
    free(c);
    return rc;
}

static size_t char_len(const char *s, size_t n) {
    uint32_t cp;
    return n ? sl_utf8_decode((const uint8_t *)s, n, &cp) : 0;
}

static bool is_byte_token(const char *s, size_t n, uint8_t *b) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return false;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int x = (c >= '0' && c <= '9')   ? c - '0'
                : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                         : -1;
        if (x < 0) return false;
        v = v * 16 + x;
    }
    *b = (uint8_t)v;
    return true;
}

/* Replaces every from with to in s, emitting the result. */
static int emit_replaced(tk_decst_t *d, uint32_t k, const char *s, size_t n, const tk_str_t *from,
                         const char *to, size_t to_len) {
    int rc = 0;
    tk_buf_t b = {0};
    size_t i = 0;
    while (i < n) {
        const char *hit = from->len <= n - i ? memmem(s + i, n - i, from->p, from->len) : NULL;
        if (!hit) break;
        size_t run = (size_t)(hit - (s + i));
        if ((rc = tk_buf_put(&b, s + i, run)) || (rc = tk_buf_put(&b, to, to_len))) goto out;
        i += run + from->len;
    }
    if ((rc = tk_buf_put(&b, s + i, n - i))) goto out;
    rc = st_emit(d, k, b.p ? b.p : "", b.len);
out:
    tk_buf_free(&b);
    return rc;
}

static int bf_flush_group(tk_decst_t *d, uint32_t k) {
    int rc = 0;
    tk_buf_t *g = &d->stage_buf[k];
    if (g->len == 0) return 0;
    if (sl_utf8_valid((const uint8_t *)g->p, g->len)) {
        rc = st_emit(d, k + 1, g->p, g->len);
    } else {
        for (size_t i = 0; i < g->len && !rc; i++) rc = st_emit(d, k + 1, tk_fffd, 3);
    }
    g->len = 0;
    return rc;
}

static int st_emit(tk_decst_t *d, uint32_t k, const char *s, size_t n) {
    const sl_tokenizer_t *t = d->t;
    if (k >= t->n_dec) return tk_buf_put(&d->out, s, n);
    const tk_dec_t *st = &t->dec[k];
    tk_buf_t *pend = &d->stage_buf[k];
    int rc = 0;
    switch (st->kind) {
    case TK_DEC_JOIN_SPACE:
        if (d->stage_cnt[k]++ > 0 && (rc = st_emit(d, k + 1, " ", 1))) return rc;
        return st_emit(d, k + 1, s, n);
    case TK_DEC_FUSE:
        return st_emit(d, k + 1, s, n);
    case TK_DEC_BYTELEVEL: {
        /* the token's chars mapped back to bytes, or its raw bytes if any
         * char is outside the byte map (HF does the same per token) */
        size_t start = pend->len;
        bool ok = true;
        if ((rc = tk_buf_reserve(pend, n))) return rc;
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            i += sl_utf8_decode((const uint8_t *)s + i, n - i, &cp);
            if (cp >= 512 || tk_cp2byte[cp] < 0) {
                ok = false;
                break;
            }
            pend->p[pend->len++] = (char)tk_cp2byte[cp];
        }
        if (!ok) {
            pend->len = start;
            if ((rc = tk_buf_put(pend, s, n))) return rc;
        }
        size_t fp = sl_utf8_final_prefix((const uint8_t *)pend->p, pend->len);
        if (fp == 0) return 0;
        if ((rc = emit_lossy(d, k + 1, pend->p, fp))) return rc;
        memmove(pend->p, pend->p + fp, pend->len - fp);
        pend->len -= fp;
        return 0;
    }
    case TK_DEC_BYTEFALLBACK: {
        uint8_t b;
        if (is_byte_token(s, n, &b)) return tk_buf_put(pend, &b, 1);
        if ((rc = bf_flush_group(d, k))) return rc;
        return st_emit(d, k + 1, s, n);
    }
    case TK_DEC_REPLACE:
        if (!st->fused_in) return emit_replaced(d, k + 1, s, n, &st->a, st->b.p, st->b.len);
        {
            if ((rc = tk_buf_put(pend, s, n))) return rc;
            /* Scan as the left-to-right replace would; hold back from the
             * first position where only a prefix of the pattern remains. */
            size_t i = 0, pl = st->a.len;
            while (i < pend->len) {
                size_t rest = pend->len - i;
                if (rest >= pl) {
                    i += memcmp(pend->p + i, st->a.p, pl) ? 1 : pl;
                    continue;
                }
                if (!memcmp(pend->p + i, st->a.p, rest)) break;
                i++;
            }
            size_t done = i, keep = pend->len - i;
            rc = emit_replaced(d, k + 1, pend->p, done, &st->a, st->b.p, st->b.len);
            memmove(pend->p, pend->p + done, keep);
            pend->len = keep;
            return rc;
        }
    case TK_DEC_METASPACE: {
        uint32_t idx = st->fused_in ? 0 : d->stage_cnt[k]++;
        bool drop = idx == 0 && st->prepend != TK_PREPEND_NEVER;
        if (drop) return emit_replaced(d, k + 1, s, n, &st->a, "", 0);
        return emit_replaced(d, k + 1, s, n, &st->a, " ", 1);
    }
    case TK_DEC_STRIP: {
        const tk_str_t *c = &st->a;
        if (!st->fused_in) {
            size_t a = 0, e = n;
            for (uint32_t i = 0; i < st->start && a < e; i++) {
                if (e - a < c->len || memcmp(s + a, c->p, c->len)) break;
                a += c->len;
            }
            for (uint32_t i = 0; i < st->stop && e > a; i++) {
                if (e - a < c->len || memcmp(s + e - c->len, c->p, c->len)) break;
                e -= c->len;
            }
            return st_emit(d, k + 1, s + a, e - a);
        }
        /* fused: stage_flag = past the leading part; stage_cnt = stripped so
         * far; pend = trailing run of c held for the stop strip */
        for (size_t i = 0; i < n;) {
            size_t cl = char_len(s + i, n - i);
            bool is_c = cl == c->len && !memcmp(s + i, c->p, cl);
            if (!d->stage_flag[k]) {
                if (is_c && d->stage_cnt[k] < st->start) {
                    d->stage_cnt[k]++;
                    i += cl;
                    continue;
                }
                d->stage_flag[k] = 1;
            }
            if (st->stop == 0) {
                if ((rc = st_emit(d, k + 1, s + i, n - i))) return rc;
                break;
            }
            if (is_c) {
                if ((rc = tk_buf_put(pend, s + i, cl))) return rc;
            } else {
                if (pend->len && (rc = st_emit(d, k + 1, pend->p, pend->len))) return rc;
                pend->len = 0;
                if ((rc = st_emit(d, k + 1, s + i, cl))) return rc;
            }
            i += cl;
        }
        return 0;
    }
    }
    return SL_EINVAL;
}

static int st_flush(tk_decst_t *d, uint32_t k) {
    const sl_tokenizer_t *t = d->t;
    int rc = 0;
    if (k >= t->n_dec) return 0;
    const tk_dec_t *st = &t->dec[k];
    tk_buf_t *pend = &d->stage_buf[k];
    switch (st->kind) {
    case TK_DEC_BYTELEVEL:
        rc = emit_lossy(d, k + 1, pend->p, pend->len);
        break;
    case TK_DEC_BYTEFALLBACK:
        rc = bf_flush_group(d, k);
        break;
    case TK_DEC_REPLACE:
        if (pend->len) rc = st_emit(d, k + 1, pend->p, pend->len);
        break;
    case TK_DEC_STRIP:
        if (pend->len) {
            size_t r = pend->len / st->a.len, drop = r < st->stop ? r : st->stop;
            rc = st_emit(d, k + 1, pend->p, (r - drop) * st->a.len);
        }
        break;
    default:
        break;
    }
    pend->len = 0;
    if (rc) return rc;
    return st_flush(d, k + 1);
}

int tk_decst_push(tk_decst_t *d, uint32_t id, bool skip_special) {
    const tk_str_t *s = tk_token_str(d->t, id);
    if (!s) return 0;
    if (skip_special && d->t->skip_dec[id]) return 0;
    return st_emit(d, 0, s->p, s->len);
}

int tk_decst_finish(tk_decst_t *d) {
    int rc = st_flush(d, 0);
    tk_decst_reset(d);
    return rc;
}

int sl_tokenizer_decode(const sl_tokenizer_t *t, const uint32_t *ids, size_t n_ids,
                        bool skip_special, char **text, size_t *len) {
    int rc = 0;
    tk_decst_t d;
    if (!t || (!ids && n_ids) || !text) return SL_EINVAL;
    *text = NULL;
    if ((rc = tk_decst_init(&d, t))) return rc;
    for (size_t i = 0; i < n_ids; i++)
        if ((rc = tk_decst_push(&d, ids[i], skip_special))) goto out;
    if ((rc = tk_decst_finish(&d))) goto out;
    if ((rc = tk_buf_put(&d.out, "", 0))) goto out;
    if (len) *len = d.out.len;
    *text = d.out.p;
    d.out.p = NULL;
out:
    tk_decst_free(&d);
    return rc;
}
