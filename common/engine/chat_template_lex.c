/* chat_template_lex.c - the Jinja lexer, configured as transformers does it:
 * trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False. Mirrors
 * jinja2/lexer.py rule for rule (whitespace control, the "line starting"
 * state that decides lstrip after a trimmed newline, bracket balancing inside
 * tags, Python string escapes) so rendered whitespace is byte-identical. */
#include "common/engine/chat_template_internal.h"
#include "common/base/err.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct lexer {
    ct_arena_t *a;
    const char *s;
    size_t n, pos;
    int line;
    int line_starting;
    ct_toks_t *out;
    char *err;
    size_t errlen;
} lexer_t;

static int is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
static int is_digit(char c) {
    return c >= '0' && c <= '9';
}
static int is_name0(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static int is_hex(char c) {
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int lex_fail(lexer_t *L, const char *msg) {
    snprintf(L->err, L->errlen, "line %d: %s", L->line, msg);
    return SL_EINVAL;
}

static int count_nl(const char *s, size_t n) {
    int c = 0;
    for (size_t i = 0; i < n; i++) c += s[i] == '\n';
    return c;
}

static ct_tok_t *emit(lexer_t *L, ct_tok_kind_t k, const char *s, size_t len) {
    ct_toks_t *t = L->out;
    if (t->n == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 256;
        if (nc > SIZE_MAX / sizeof(ct_tok_t)) return NULL;
        ct_tok_t *v = ct_arena_alloc(L->a, nc * sizeof *v);
        if (!v) return NULL;
        if (t->n) memcpy(v, t->v, t->n * sizeof *v);
        t->v = v;
        t->cap = nc;
    }
    ct_tok_t *tok = &t->v[t->n++];
    memset(tok, 0, sizeof *tok);
    tok->kind = k;
    tok->line = L->line;
    tok->s = s;
    tok->len = len;
    return tok;
}

static int put_utf8(char *o, size_t *on, uint32_t cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) return -1;
    if (cp < 0x80) {
        o[(*on)++] = (char)cp;
    } else if (cp < 0x800) {
        o[(*on)++] = (char)(0xC0 | (cp >> 6));
        o[(*on)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        o[(*on)++] = (char)(0xE0 | (cp >> 12));
        o[(*on)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[(*on)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x110000) {
        o[(*on)++] = (char)(0xF0 | (cp >> 18));
        o[(*on)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        o[(*on)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[(*on)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        return -1;
    }
    return 0;
}

/* Decodes a string literal body with Python's unicode-escape rules. */
static int lex_string(lexer_t *L) {
    char q = L->s[L->pos];
    size_t start = L->pos + 1, i = start;
    while (i < L->n && L->s[i] != q) {
        if (L->s[i] == '\\') i++;
        i++;
    }
    if (i >= L->n) return lex_fail(L, "unterminated string literal");
    size_t rawlen = i - start;
    /* decoded text is never longer than the raw text */
    char *o = ct_arena_alloc(L->a, rawlen + 1);
    if (!o) return SL_ENOMEM;
    size_t on = 0;
    const char *r = L->s + start;
    for (size_t k = 0; k < rawlen; k++) {
        char c = r[k];
        if (c != '\\' || k + 1 >= rawlen) {
            o[on++] = c;
            continue;
        }
        char e = r[++k];
        uint32_t cp = 0;
        int nhex = 0;
        switch (e) {
        case '\\':
            o[on++] = '\\';
            break;
        case '\'':
            o[on++] = '\'';
            break;
        case '"':
            o[on++] = '"';
            break;
        case 'a':
            o[on++] = '\a';
            break;
        case 'b':
            o[on++] = '\b';
            break;
        case 'f':
            o[on++] = '\f';
            break;
        case 'n':
            o[on++] = '\n';
            break;
        case 'r':
            o[on++] = '\r';
            break;
        case 't':
            o[on++] = '\t';
            break;
        case 'v':
            o[on++] = '\v';
            break;
        case '\n':
            break;
        case 'x':
            nhex = 2;
            break;
        case 'u':
            nhex = 4;
            break;
        case 'U':
            nhex = 8;
            break;
        case 'N':
            return lex_fail(L, "unsupported \\N{...} escape in string literal");
        default:
            if (e >= '0' && e <= '7') {
                int d = 0;
                while (d < 3 && k < rawlen && r[k] >= '0' && r[k] <= '7') {
                    cp = cp * 8 + (uint32_t)(r[k] - '0');
                    k++;
                    d++;
                }
                k--;
                if (cp > 0x7F) {
                    if (put_utf8(o, &on, cp)) return lex_fail(L, "bad octal escape");
                } else {
                    o[on++] = (char)cp;
                }
            } else {
                o[on++] = '\\';
                o[on++] = e;
            }
        }
        if (nhex) {
            if (k + (size_t)nhex >= rawlen)
                return lex_fail(L, "truncated \\x/\\u escape in string literal");
            for (int h = 1; h <= nhex; h++) {
                char x = r[k + (size_t)h];
                if (!is_hex(x)) return lex_fail(L, "truncated \\x/\\u escape in string literal");
                cp = cp * 16 + (uint32_t)(is_digit(x) ? x - '0' : (x | 0x20) - 'a' + 10);
            }
            k += (size_t)nhex;
            if (put_utf8(o, &on, cp)) return lex_fail(L, "escape is not a valid code point");
        }
    }
    o[on] = 0;
    ct_tok_t *t = emit(L, CT_TOK_STRING, o, on);
    if (!t) return SL_ENOMEM;
    L->line += count_nl(L->s + L->pos, i + 1 - L->pos);
    L->pos = i + 1;
    L->line_starting = 0;
    return 0;
}

static int lex_number(lexer_t *L) {
    size_t i = L->pos, n = L->n;
    const char *s = L->s;
    char tmp[128];
    size_t tn = 0;
    int is_float = 0;
    if (s[i] == '0' && i + 1 < n &&
        (s[i + 1] == 'x' || s[i + 1] == 'X' || s[i + 1] == 'o' || s[i + 1] == 'O' ||
         s[i + 1] == 'b' || s[i + 1] == 'B')) {
        int base = (s[i + 1] | 0x20) == 'x' ? 16 : (s[i + 1] | 0x20) == 'o' ? 8 : 2;
        i += 2;
        while (i < n && (is_hex(s[i]) || s[i] == '_') && tn < sizeof tmp - 1) {
            if (s[i] != '_') tmp[tn++] = s[i];
            i++;
        }
        tmp[tn] = 0;
        errno = 0;
        char *end;
        long long v = strtoll(tmp, &end, base);
        if (tn == 0 || *end || errno) return lex_fail(L, "bad integer literal");
        ct_tok_t *t = emit(L, CT_TOK_INT, s + L->pos, i - L->pos);
        if (!t) return SL_ENOMEM;
        t->i = v;
        L->pos = i;
        L->line_starting = 0;
        return 0;
    }
    while (i < n && (is_digit(s[i]) || s[i] == '_') && tn < sizeof tmp - 1) {
        if (s[i] != '_') tmp[tn++] = s[i];
        i++;
    }
    if (i + 1 < n && s[i] == '.' && is_digit(s[i + 1])) {
        is_float = 1;
        tmp[tn++] = s[i++];
        while (i < n && (is_digit(s[i]) || s[i] == '_') && tn < sizeof tmp - 1) {
            if (s[i] != '_') tmp[tn++] = s[i];
            i++;
        }
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        size_t j = i + 1;
        if (j < n && (s[j] == '+' || s[j] == '-')) j++;
        if (j < n && is_digit(s[j])) {
            is_float = 1;
            tmp[tn++] = 'e';
            if (s[i + 1] == '-' || s[i + 1] == '+') tmp[tn++] = s[i + 1];
            while (j < n && is_digit(s[j]) && tn < sizeof tmp - 1) tmp[tn++] = s[j++];
            i = j;
        }
    }
    if (tn >= sizeof tmp - 1) return lex_fail(L, "number literal too long");
    tmp[tn] = 0;
    ct_tok_t *t = emit(L, is_float ? CT_TOK_FLOAT : CT_TOK_INT, s + L->pos, i - L->pos);
    if (!t) return SL_ENOMEM;
    errno = 0;
    if (is_float) {
        t->f = strtod(tmp, NULL);
    } else {
        t->i = strtoll(tmp, NULL, 10);
        if (errno) return lex_fail(L, "integer literal out of range");
    }
    L->pos = i;
    L->line_starting = 0;
    return 0;
}

static const char *const ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "/",
                                  "*",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                  "<",  ">",  "=",  ".",  ":",  "|",  ",", ";"};

/* Lexes the inside of {{ }} or {% %} up to and including its end. */
static int lex_tag(lexer_t *L, int is_block) {
    char stack[CT_MAX_DEPTH];
    int depth = 0;
    const char *s = L->s;
    for (;;) {
        if (L->pos >= L->n) return lex_fail(L, "unexpected end of template inside a tag");
        size_t p = L->pos;
        char ec = is_block ? '%' : '}';
        if (depth == 0) {
            if (is_block && p + 2 < L->n && s[p] == '+' && s[p + 1] == '%' && s[p + 2] == '}') {
                if (!emit(L, CT_TOK_BLOCK_END, s + p, 3)) return SL_ENOMEM;
                L->pos = p + 3;
                L->line_starting = 0;
                return 0;
            }
            if (p + 2 < L->n && s[p] == '-' && s[p + 1] == ec && s[p + 2] == '}') {
                if (!emit(L, is_block ? CT_TOK_BLOCK_END : CT_TOK_VAR_END, s + p, 3))
                    return SL_ENOMEM;
                size_t q = p + 3;
                while (q < L->n && is_ws(s[q])) q++;
                L->line_starting = s[q - 1] == '\n';
                L->line += count_nl(s + p, q - p);
                L->pos = q;
                return 0;
            }
            if (p + 1 < L->n && s[p] == ec && s[p + 1] == '}') {
                if (!emit(L, is_block ? CT_TOK_BLOCK_END : CT_TOK_VAR_END, s + p, 2))
                    return SL_ENOMEM;
                size_t q = p + 2;
                if (is_block && q < L->n && s[q] == '\n') q++; /* trim_blocks */
                L->line_starting = s[q - 1] == '\n';
                L->line += count_nl(s + p, q - p);
                L->pos = q;
                return 0;
            }
        }
        char c = s[p];
        if (is_ws(c)) {
            size_t q = p;
            while (q < L->n && is_ws(s[q])) q++;
            L->line += count_nl(s + p, q - p);
            L->line_starting = s[q - 1] == '\n';
            L->pos = q;
            continue;
        }
        int rc = 0;
        if (is_digit(c)) {
            rc = lex_number(L);
        } else if (is_name0(c)) {
            size_t q = p;
            while (q < L->n && (is_name0(s[q]) || is_digit(s[q]))) q++;
            if (!emit(L, CT_TOK_NAME, s + p, q - p)) return SL_ENOMEM;
            L->pos = q;
            L->line_starting = 0;
        } else if (c == '\'' || c == '"') {
            rc = lex_string(L);
        } else {
            size_t k, nops = sizeof ops / sizeof ops[0];
            for (k = 0; k < nops; k++) {
                size_t ol = strlen(ops[k]);
                if (p + ol <= L->n && memcmp(s + p, ops[k], ol) == 0) break;
            }
            if (k == nops) {
                char m[64];
                snprintf(m, sizeof m, "unexpected character '%c' in tag",
                         (c >= 0x20 && c < 0x7f) ? c : '?');
                return lex_fail(L, m);
            }
            size_t ol = strlen(ops[k]);
            if (ol == 1 && (c == '(' || c == '[' || c == '{')) {
                if (depth >= (int)sizeof stack) return lex_fail(L, "brackets nested too deeply");
                stack[depth++] = c == '(' ? ')' : c == '[' ? ']' : '}';
            } else if (ol == 1 && (c == ')' || c == ']' || c == '}')) {
                if (depth == 0 || stack[depth - 1] != c) {
                    char m[64];
                    snprintf(m, sizeof m, "unexpected '%c'", c);
                    return lex_fail(L, m);
                }
                depth--;
            }
            if (!emit(L, CT_TOK_OP, s + p, ol)) return SL_ENOMEM;
            L->pos = p + ol;
            L->line_starting = 0;
        }
        if (rc) return rc;
    }
}

/* Applies jinja's whitespace control to the data before a tag and emits it. */
static int emit_data(lexer_t *L, const char *text, size_t len, char sign, int lstrip_ok) {
    int nl = count_nl(text, len);
    if (sign == '-') {
        while (len && is_ws(text[len - 1])) len--;
    } else if (sign != '+' && lstrip_ok) {
        size_t l_pos = len;
        while (l_pos > 0 && text[l_pos - 1] != '\n') l_pos--;
        if (l_pos > 0 || L->line_starting) {
            size_t k = l_pos;
            while (k < len && is_ws(text[k])) k++;
            if (k == len && len > l_pos) len = l_pos;
        }
    }
    if (len && !emit(L, CT_TOK_DATA, text, len)) return SL_ENOMEM;
    L->line += nl;
    return 0;
}

/* Matches "{%[-+]?\s*raw\s*(-%}\s*|%})" at p; returns the end or 0. */
static size_t match_raw_begin(lexer_t *L, size_t p) {
    const char *s = L->s;
    size_t q = p + 2;
    if (q < L->n && (s[q] == '-' || s[q] == '+')) q++;
    while (q < L->n && is_ws(s[q])) q++;
    if (q + 3 > L->n || memcmp(s + q, "raw", 3) != 0) return 0;
    q += 3;
    while (q < L->n && is_ws(s[q])) q++;
    if (q + 3 <= L->n && memcmp(s + q, "-%}", 3) == 0) {
        q += 3;
        while (q < L->n && is_ws(s[q])) q++;
        return q;
    }
    if (q + 2 <= L->n && memcmp(s + q, "%}", 2) == 0) return q + 2;
    return 0;
}

static int lex_raw(lexer_t *L, size_t body) {
    const char *s = L->s;
    for (size_t p = body; p + 1 < L->n; p++) {
        if (s[p] != '{' || s[p + 1] != '%') continue;
        size_t q = p + 2;
        char sign = 0;
        if (q < L->n && (s[q] == '-' || s[q] == '+')) sign = s[q++];
        while (q < L->n && is_ws(s[q])) q++;
        if (q + 6 > L->n || memcmp(s + q, "endraw", 6) != 0) continue;
        q += 6;
        while (q < L->n && is_ws(s[q])) q++;
        size_t end = 0;
        if (q + 3 <= L->n && memcmp(s + q, "+%}", 3) == 0) {
            end = q + 3;
        } else if (q + 3 <= L->n && memcmp(s + q, "-%}", 3) == 0) {
            end = q + 3;
            while (end < L->n && is_ws(s[end])) end++;
        } else if (q + 2 <= L->n && memcmp(s + q, "%}", 2) == 0) {
            end = q + 2;
            if (end < L->n && s[end] == '\n') end++;
        } else {
            continue;
        }
        int rc = emit_data(L, s + body, p - body, sign, 1);
        if (rc) return rc;
        L->line += count_nl(s + p, end - p);
        L->line_starting = s[end - 1] == '\n';
        L->pos = end;
        return 0;
    }
    return lex_fail(L, "missing end of raw directive");
}

int ct_lex(ct_arena_t *a, const char *src, size_t len, ct_toks_t *out, char *err, size_t errlen) {
    /* newline normalization and keep_trailing_newline=False, as jinja does */
    char *s = ct_arena_alloc(a, len + 1);
    if (!s) return SL_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = 0;

    lexer_t L = {.a = a,
                 .s = s,
                 .n = n,
                 .line = 1,
                 .line_starting = 1,
                 .out = out,
                 .err = err,
                 .errlen = errlen};
    memset(out, 0, sizeof *out);
    int rc = 0;
    while (L.pos < L.n) {
        size_t p = L.pos, q = SIZE_MAX;
        for (size_t i = p; i + 1 < L.n; i++) {
            if (s[i] == '{' && (s[i + 1] == '{' || s[i + 1] == '%' || s[i + 1] == '#')) {
                q = i;
                break;
            }
        }
        if (q == SIZE_MAX) {
            if (!emit(&L, CT_TOK_DATA, s + p, L.n - p)) return SL_ENOMEM;
            L.pos = L.n;
            break;
        }
        char kind = s[q + 1];
        char sign = (q + 2 < L.n && (s[q + 2] == '-' || s[q + 2] == '+')) ? s[q + 2] : 0;
        size_t raw_end = kind == '%' ? match_raw_begin(&L, q) : 0;
        rc = emit_data(&L, s + p, q - p, sign, kind != '{');
        if (rc) return rc;
        L.line_starting = 0;
        size_t body = q + 2 + (sign ? 1 : 0);
        if (raw_end) {
            L.line += count_nl(s + q, raw_end - q);
            rc = lex_raw(&L, raw_end);
            if (rc) return rc;
            continue;
        }
        if (kind == '#') {
            size_t e = SIZE_MAX;
            for (size_t i = body; i + 1 < L.n; i++) {
                if (s[i] == '#' && s[i + 1] == '}') {
                    e = i;
                    break;
                }
            }
            if (e == SIZE_MAX) return lex_fail(&L, "missing end of comment tag");
            size_t end = e + 2;
            if (e > body && s[e - 1] == '-') {
                while (end < L.n && is_ws(s[end])) end++;
            } else if (e > body && s[e - 1] == '+') {
                /* keep */
            } else if (end < L.n && s[end] == '\n') {
                end++;
            }
            L.line += count_nl(s + q, end - q);
            L.line_starting = s[end - 1] == '\n';
            L.pos = end;
            continue;
        }
        if (!emit(&L, kind == '{' ? CT_TOK_VAR_BEGIN : CT_TOK_BLOCK_BEGIN, s + q, body - q))
            return SL_ENOMEM;
        L.pos = body;
        rc = lex_tag(&L, kind == '%');
        if (rc) return rc;
    }
    if (!emit(&L, CT_TOK_EOF, s + L.n, 0)) return SL_ENOMEM;
    return 0;
}
