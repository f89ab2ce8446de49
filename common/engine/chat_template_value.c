/* chat_template_value.c - arenas, buffers and the tagged-union values of the
 * Jinja subset: Python truthiness, equality, ordering, str(), repr() and
 * json.dumps() as transformers' tojson calls it. */
#include "common/engine/chat_template_internal.h"
#include "common/base/err.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ------------------------------------------------------------------ */
struct ct_chunk {
    ct_chunk_t *next;
    size_t size, used;
    _Alignas(16) unsigned char data[];
};

#define CT_CHUNK_MIN (64u << 10)

void ct_arena_init(ct_arena_t *a, size_t cap) {
    a->head = NULL;
    a->used = 0;
    a->cap = cap;
}

void *ct_arena_alloc(ct_arena_t *a, size_t n) {
    if (n > a->cap) return NULL;
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    ct_chunk_t *c = a->head;
    if (!c || c->size - c->used < n) {
        size_t sz = n > CT_CHUNK_MIN ? n : CT_CHUNK_MIN;
        if (a->used + sz + sizeof *c > a->cap) return NULL;
        c = malloc(sizeof *c + sz);
        if (!c) return NULL;
        c->size = sz;
        c->used = 0;
        c->next = a->head;
        a->head = c;
        a->used += sz + sizeof *c;
    }
    void *p = c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

char *ct_arena_strndup(ct_arena_t *a, const char *s, size_t n) {
    if (n == SIZE_MAX) return NULL;
    char *p = ct_arena_alloc(a, n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void ct_arena_release(ct_arena_t *a) {
    ct_chunk_t *c = a->head;
    while (c) {
        ct_chunk_t *n = c->next;
        free(c);
        c = n;
    }
    a->head = NULL;
    a->used = 0;
}

/* ---- buffer ------------------------------------------------------------------ */
void ct_buf_init(ct_buf_t *b, size_t max) {
    b->p = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

int ct_buf_put(ct_buf_t *b, const char *s, size_t n) {
    if (n > b->max || b->len > b->max - n) return SL_ETOOBIG;
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->len + n + 1) nc *= 2;
        char *p = realloc(b->p, nc);
        if (!p) return SL_ENOMEM;
        b->p = p;
        b->cap = nc;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

int ct_buf_putc(ct_buf_t *b, char c) {
    return ct_buf_put(b, &c, 1);
}

int ct_buf_printf(ct_buf_t *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return SL_EINVAL;
    if ((size_t)n < sizeof tmp) return ct_buf_put(b, tmp, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big) return SL_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = ct_buf_put(b, big, (size_t)n);
    free(big);
    return rc;
}

void ct_buf_free(ct_buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- constructors ----------------------------------------------------------- */
ct_val_t ct_undef = {.kind = CT_V_UNDEF};
ct_val_t ct_none = {.kind = CT_V_NONE};
ct_val_t ct_true = {.kind = CT_V_BOOL, .u.b = 1};
ct_val_t ct_false = {.kind = CT_V_BOOL, .u.b = 0};

static ct_val_t *val_new(ct_arena_t *a, ct_vkind_t k) {
    ct_val_t *v = ct_arena_alloc(a, sizeof *v);
    if (v) v->kind = (uint8_t)k;
    return v;
}

ct_val_t *ct_val_int(ct_arena_t *a, int64_t i) {
    ct_val_t *v = val_new(a, CT_V_INT);
    if (v) v->u.i = i;
    return v;
}

ct_val_t *ct_val_float(ct_arena_t *a, double f) {
    ct_val_t *v = val_new(a, CT_V_FLOAT);
    if (v) v->u.f = f;
    return v;
}

ct_val_t *ct_val_bool(int b) {
    return b ? &ct_true : &ct_false;
}

ct_val_t *ct_val_str(ct_arena_t *a, const char *s, size_t len) {
    char *c = ct_arena_strndup(a, s, len);
    if (!c) return NULL;
    return ct_val_str_ref(a, c, len);
}

ct_val_t *ct_val_str_ref(ct_arena_t *a, const char *s, size_t len) {
    ct_val_t *v = val_new(a, CT_V_STR);
    if (v) {
        v->u.str.s = s;
        v->u.str.len = len;
    }
    return v;
}

ct_val_t *ct_val_undef(ct_arena_t *a, const char *name) {
    ct_val_t *v = val_new(a, CT_V_UNDEF);
    if (v) v->u.undef_name = name;
    return v;
}

ct_val_t *ct_val_list(ct_arena_t *a, size_t cap) {
    ct_val_t *v = val_new(a, CT_V_LIST);
    if (!v) return NULL;
    if (cap) {
        if (cap > SIZE_MAX / sizeof(ct_val_t *)) return NULL;
        v->u.list.items = ct_arena_alloc(a, cap * sizeof(ct_val_t *));
        if (!v->u.list.items) return NULL;
        v->u.list.cap = cap;
    }
    return v;
}

ct_val_t *ct_val_dict(ct_arena_t *a, size_t cap) {
    ct_val_t *v = val_new(a, CT_V_DICT);
    if (!v) return NULL;
    if (cap) {
        if (cap > SIZE_MAX / sizeof(ct_val_t *)) return NULL;
        v->u.dict.keys = ct_arena_alloc(a, cap * sizeof(ct_val_t *));
        v->u.dict.vals = ct_arena_alloc(a, cap * sizeof(ct_val_t *));
        if (!v->u.dict.keys || !v->u.dict.vals) return NULL;
        v->u.dict.cap = cap;
    }
    return v;
}

ct_val_t *ct_val_func(ct_arena_t *a, const char *name, ct_val_t *self) {
    ct_val_t *v = val_new(a, CT_V_FUNC);
    if (v) {
        v->u.func.name = name;
        v->u.func.self = self;
    }
    return v;
}

static int grow(ct_arena_t *a, ct_val_t ***arr, size_t n, size_t *cap) {
    if (n < *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 4;
    if (nc > SIZE_MAX / sizeof(ct_val_t *)) return SL_ENOMEM;
    ct_val_t **p = ct_arena_alloc(a, nc * sizeof *p);
    if (!p) return SL_ENOMEM;
    if (n) memcpy(p, *arr, n * sizeof *p);
    *arr = p;
    *cap = nc;
    return 0;
}

int ct_list_push(ct_arena_t *a, ct_val_t *l, ct_val_t *v) {
    size_t cap = l->u.list.cap;
    int rc = grow(a, &l->u.list.items, l->u.list.n, &cap);
    if (rc) return rc;
    l->u.list.cap = cap;
    l->u.list.items[l->u.list.n++] = v;
    return 0;
}

int ct_dict_set(ct_arena_t *a, ct_val_t *d, ct_val_t *k, ct_val_t *v) {
    for (size_t i = 0; i < d->u.dict.n; i++) {
        if (ct_val_eq(d->u.dict.keys[i], k)) {
            d->u.dict.vals[i] = v;
            return 0;
        }
    }
    size_t cap = d->u.dict.cap, cap2 = d->u.dict.cap;
    int rc = grow(a, &d->u.dict.keys, d->u.dict.n, &cap);
    if (!rc) rc = grow(a, &d->u.dict.vals, d->u.dict.n, &cap2);
    if (rc) return rc;
    d->u.dict.cap = cap;
    d->u.dict.keys[d->u.dict.n] = k;
    d->u.dict.vals[d->u.dict.n] = v;
    d->u.dict.n++;
    return 0;
}

ct_val_t *ct_dict_get(const ct_val_t *d, const ct_val_t *k) {
    for (size_t i = 0; i < d->u.dict.n; i++)
        if (ct_val_eq(d->u.dict.keys[i], k)) return d->u.dict.vals[i];
    return NULL;
}

ct_val_t *ct_dict_getn(const ct_val_t *d, const char *k, size_t klen) {
    for (size_t i = 0; i < d->u.dict.n; i++) {
        const ct_val_t *key = d->u.dict.keys[i];
        if (key->kind == CT_V_STR && key->u.str.len == klen && memcmp(key->u.str.s, k, klen) == 0)
            return d->u.dict.vals[i];
    }
    return NULL;
}

/* ---- semantics ----------------------------------------------------------------- */
int ct_val_truthy(const ct_val_t *v) {
    switch (v->kind) {
    case CT_V_UNDEF:
    case CT_V_NONE:
        return 0;
    case CT_V_BOOL:
        return v->u.b;
    case CT_V_INT:
        return v->u.i != 0;
    case CT_V_FLOAT:
        return v->u.f != 0.0;
    case CT_V_STR:
        return v->u.str.len != 0;
    case CT_V_LIST:
        return v->is_gen || v->u.list.n != 0;
    case CT_V_DICT:
        return v->is_ns || v->is_loop || v->u.dict.n != 0;
    default:
        return 1;
    }
}

static int is_num(const ct_val_t *v) {
    return v->kind == CT_V_BOOL || v->kind == CT_V_INT || v->kind == CT_V_FLOAT;
}

static double num_f(const ct_val_t *v) {
    return v->kind == CT_V_FLOAT ? v->u.f : v->kind == CT_V_INT ? (double)v->u.i : v->u.b;
}

static int64_t num_i(const ct_val_t *v) {
    return v->kind == CT_V_INT ? v->u.i : v->u.b;
}

/* Values built by a template can nest without bound ({% set ns.x = [ns.x] %}
 * in a loop); comparisons and repr() stop at this depth instead of
 * exhausting a thread's stack (Python raises RecursionError near 1000). */
#define CT_VAL_MAX_NEST 512

static int val_eq(const ct_val_t *x, const ct_val_t *y, int depth);

int ct_val_eq(const ct_val_t *x, const ct_val_t *y) {
    return val_eq(x, y, 0);
}

static int val_eq(const ct_val_t *x, const ct_val_t *y, int depth) {
    if (x == y) return 1;
    if (depth > CT_VAL_MAX_NEST) return 0;
    if (is_num(x) && is_num(y)) {
        if (x->kind == CT_V_FLOAT || y->kind == CT_V_FLOAT) return num_f(x) == num_f(y);
        return num_i(x) == num_i(y);
    }
    if (x->kind != y->kind) return 0;
    switch (x->kind) {
    case CT_V_UNDEF:
    case CT_V_NONE:
        return 1;
    case CT_V_STR:
        return x->u.str.len == y->u.str.len && memcmp(x->u.str.s, y->u.str.s, x->u.str.len) == 0;
    case CT_V_LIST:
        if (x->is_gen || y->is_gen || x->view != y->view) return 0;
        if (x->u.list.n != y->u.list.n || x->is_tuple != y->is_tuple) return 0;
        for (size_t i = 0; i < x->u.list.n; i++)
            if (!val_eq(x->u.list.items[i], y->u.list.items[i], depth + 1)) return 0;
        return 1;
    case CT_V_DICT:
        if (x->is_ns || y->is_ns || x->is_loop || y->is_loop) return 0;
        if (x->u.dict.n != y->u.dict.n) return 0;
        for (size_t i = 0; i < x->u.dict.n; i++) {
            ct_val_t *o = ct_dict_get(y, x->u.dict.keys[i]);
            if (!o || !val_eq(x->u.dict.vals[i], o, depth + 1)) return 0;
        }
        return 1;
    case CT_V_FUNC:
        return strcmp(x->u.func.name, y->u.func.name) == 0 && x->u.func.self == y->u.func.self;
    default:
        return 0;
    }
}

static int val_cmp(const ct_val_t *x, const ct_val_t *y, int *cmp, int depth);

int ct_val_cmp(const ct_val_t *x, const ct_val_t *y, int *cmp) {
    return val_cmp(x, y, cmp, 0);
}

static int val_cmp(const ct_val_t *x, const ct_val_t *y, int *cmp, int depth) {
    if (depth > CT_VAL_MAX_NEST) return SL_ERANGE;
    if ((x->kind == CT_V_LIST && x->is_gen) || (y->kind == CT_V_LIST && y->is_gen))
        return SL_EINVAL;
    if (is_num(x) && is_num(y)) {
        if (x->kind == CT_V_FLOAT || y->kind == CT_V_FLOAT) {
            double a = num_f(x), b = num_f(y);
            *cmp = a < b ? -1 : a > b ? 1 : 0;
        } else {
            int64_t a = num_i(x), b = num_i(y);
            *cmp = a < b ? -1 : a > b ? 1 : 0;
        }
        return 0;
    }
    if (x->kind == CT_V_STR && y->kind == CT_V_STR) {
        size_t n = x->u.str.len < y->u.str.len ? x->u.str.len : y->u.str.len;
        int c = n ? memcmp(x->u.str.s, y->u.str.s, n) : 0;
        if (c == 0) c = x->u.str.len < y->u.str.len ? -1 : x->u.str.len > y->u.str.len ? 1 : 0;
        *cmp = c < 0 ? -1 : c > 0 ? 1 : 0;
        return 0;
    }
    if (x->kind == CT_V_LIST && y->kind == CT_V_LIST && x->is_tuple == y->is_tuple) {
        size_t n = x->u.list.n < y->u.list.n ? x->u.list.n : y->u.list.n;
        for (size_t i = 0; i < n; i++) {
            if (ct_val_eq(x->u.list.items[i], y->u.list.items[i])) continue;
            return val_cmp(x->u.list.items[i], y->u.list.items[i], cmp, depth + 1);
        }
        *cmp = x->u.list.n < y->u.list.n ? -1 : x->u.list.n > y->u.list.n ? 1 : 0;
        return 0;
    }
    return SL_EINVAL;
}

const char *ct_val_type_name(const ct_val_t *v) {
    switch (v->kind) {
    case CT_V_UNDEF:
        return "Undefined";
    case CT_V_NONE:
        return "NoneType";
    case CT_V_BOOL:
        return "bool";
    case CT_V_INT:
        return "int";
    case CT_V_FLOAT:
        return "float";
    case CT_V_STR:
        return "str";
    case CT_V_LIST:
        return v->is_gen ? "generator" : v->is_tuple ? "tuple" : "list";
    case CT_V_DICT:
        return v->is_ns ? "Namespace" : v->is_loop ? "LoopContext" : "dict";
    case CT_V_MACRO:
        return "Macro";
    default:
        return "function";
    }
}

/* ---- UTF-8 ----------------------------------------------------------------------- */
size_t ct_utf8_len(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) c++;
    return c;
}

size_t ct_utf8_offset(const char *s, size_t n, size_t idx) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (c == idx) return i;
            c++;
        }
    }
    return n;
}

/* ---- str / repr / json ---------------------------------------------------------- */
int ct_float_repr(ct_buf_t *b, double f) {
    if (isnan(f)) return ct_buf_put(b, "nan", 3);
    if (isinf(f)) return f > 0 ? ct_buf_put(b, "inf", 3) : ct_buf_put(b, "-inf", 4);
    char tmp[64];
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, f);
        if (strtod(tmp, NULL) == f) break;
    }
    /* tmp = [-]d[.ddd]e[+-]XX: take digits and exponent, format as repr does */
    char digits[32];
    size_t nd = 0;
    const char *q = tmp;
    int neg = 0;
    if (*q == '-') {
        neg = 1;
        q++;
    }
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9' && nd < sizeof digits - 1) digits[nd++] = *q;
    digits[nd] = 0;
    int exp = *q == 'e' ? (int)strtol(q + 1, NULL, 10) : 0;
    while (nd > 1 && digits[nd - 1] == '0') digits[--nd] = 0;
    int rc = 0;
    if (neg) rc = ct_buf_putc(b, '-');
    if (rc) return rc;
    if (exp < -4 || exp >= 16) {
        rc = ct_buf_putc(b, digits[0]);
        if (!rc && nd > 1) {
            rc = ct_buf_putc(b, '.');
            if (!rc) rc = ct_buf_put(b, digits + 1, nd - 1);
        }
        if (!rc) rc = ct_buf_printf(b, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
        return rc;
    }
    if (exp < 0) {
        rc = ct_buf_put(b, "0.", 2);
        for (int i = 0; !rc && i < -exp - 1; i++) rc = ct_buf_putc(b, '0');
        if (!rc) rc = ct_buf_put(b, digits, nd);
        return rc;
    }
    /* exp >= 0: integer part is digits[0..exp] */
    for (int i = 0; !rc && i <= exp; i++) rc = ct_buf_putc(b, (size_t)i < nd ? digits[i] : '0');
    if (!rc) rc = ct_buf_putc(b, '.');
    if (!rc) {
        if ((size_t)exp + 1 < nd)
            rc = ct_buf_put(b, digits + exp + 1, nd - (size_t)exp - 1);
        else
            rc = ct_buf_putc(b, '0');
    }
    return rc;
}

/* Python's str.isprintable() is false for these non-ASCII code points: C1
 * controls, separators other than ' ' (Zs, Zl, Zp), common format characters
 * (Cf) and private use. An approximation of the Unicode tables that covers
 * what chat content carries; repr() escapes them. */
static int py_unprintable(uint32_t c) {
    return (c >= 0x80 && c <= 0xA0) || c == 0xAD || c == 0x61C || c == 0x1680 || c == 0x180E ||
           (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F) ||
           (c >= 0x205F && c <= 0x206F) || c == 0x3000 || (c >= 0xD800 && c <= 0xF8FF) ||
           c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFB) || c >= 0xF0000;
}

static int str_repr(ct_buf_t *b, const char *s, size_t n) {
    int has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    int rc = ct_buf_putc(b, q);
    for (size_t i = 0; !rc && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == (unsigned char)q || c == '\\') {
            char e[2] = {'\\', (char)c};
            rc = ct_buf_put(b, e, 2);
        } else if (c == '\n') {
            rc = ct_buf_put(b, "\\n", 2);
        } else if (c == '\r') {
            rc = ct_buf_put(b, "\\r", 2);
        } else if (c == '\t') {
            rc = ct_buf_put(b, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f) {
            rc = ct_buf_printf(b, "\\x%02x", c);
        } else if (c >= 0x80) {
            size_t l = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
            if (i + l > n) l = n - i;
            uint32_t cp = c & (0xFF >> (l + 1));
            for (size_t k = 1; k < l; k++) cp = (cp << 6) | ((unsigned char)s[i + k] & 0x3F);
            if (!py_unprintable(cp))
                rc = ct_buf_put(b, s + i, l);
            else if (cp < 0x100)
                rc = ct_buf_printf(b, "\\x%02x", cp);
            else if (cp < 0x10000)
                rc = ct_buf_printf(b, "\\u%04x", cp);
            else
                rc = ct_buf_printf(b, "\\U%08x", cp);
            i += l - 1;
        } else {
            rc = ct_buf_putc(b, (char)c);
        }
    }
    if (!rc) rc = ct_buf_putc(b, q);
    return rc;
}

static int val_repr(ct_buf_t *b, const ct_val_t *v, int depth);

int ct_val_repr_write(ct_buf_t *b, const ct_val_t *v) {
    return val_repr(b, v, 0);
}

static int val_repr(ct_buf_t *b, const ct_val_t *v, int depth) {
    int rc = 0;
    if (depth > CT_VAL_MAX_NEST) return SL_ERANGE;
    switch (v->kind) {
    case CT_V_STR:
        return str_repr(b, v->u.str.s, v->u.str.len);
    case CT_V_LIST: {
        if (v->is_gen) return ct_buf_put(b, "<generator object>", 18);
        if (v->view) {
            static const char *const vn[] = {"", "dict_keys(", "dict_values(", "dict_items("};
            rc = ct_buf_put(b, vn[v->view], strlen(vn[v->view]));
        }
        if (!rc) rc = ct_buf_putc(b, v->is_tuple ? '(' : '[');
        for (size_t i = 0; !rc && i < v->u.list.n; i++) {
            if (i) rc = ct_buf_put(b, ", ", 2);
            if (!rc) rc = val_repr(b, v->u.list.items[i], depth + 1);
        }
        if (!rc && v->is_tuple && v->u.list.n == 1) rc = ct_buf_putc(b, ',');
        if (!rc) rc = ct_buf_putc(b, v->is_tuple ? ')' : ']');
        if (!rc && v->view) rc = ct_buf_putc(b, ')');
        return rc;
    }
    case CT_V_DICT: {
        if (v->is_ns) rc = ct_buf_put(b, "<Namespace ", 11);
        if (!rc) rc = ct_buf_putc(b, '{');
        for (size_t i = 0; !rc && i < v->u.dict.n; i++) {
            if (i) rc = ct_buf_put(b, ", ", 2);
            if (!rc) rc = val_repr(b, v->u.dict.keys[i], depth + 1);
            if (!rc) rc = ct_buf_put(b, ": ", 2);
            if (!rc) rc = val_repr(b, v->u.dict.vals[i], depth + 1);
        }
        if (!rc) rc = ct_buf_putc(b, '}');
        if (!rc && v->is_ns) rc = ct_buf_putc(b, '>');
        return rc;
    }
    case CT_V_UNDEF:
        return ct_buf_put(b, "Undefined", 9);
    default:
        return ct_val_str_write(b, v);
    }
}

int ct_val_str_write(ct_buf_t *b, const ct_val_t *v) {
    switch (v->kind) {
    case CT_V_UNDEF:
        return 0;
    case CT_V_NONE:
        return ct_buf_put(b, "None", 4);
    case CT_V_BOOL:
        return v->u.b ? ct_buf_put(b, "True", 4) : ct_buf_put(b, "False", 5);
    case CT_V_INT:
        return ct_buf_printf(b, "%lld", (long long)v->u.i);
    case CT_V_FLOAT:
        return ct_float_repr(b, v->u.f);
    case CT_V_STR:
        return ct_buf_put(b, v->u.str.s, v->u.str.len);
    case CT_V_LIST:
    case CT_V_DICT:
        return ct_val_repr_write(b, v);
    case CT_V_MACRO:
        return ct_buf_put(b, "<Macro>", 7);
    default:
        return ct_buf_printf(b, "<built-in function %s>", v->u.func.name);
    }
}

static int json_str(ct_buf_t *b, const char *s, size_t n) {
    int rc = ct_buf_putc(b, '"');
    size_t run = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *e = NULL;
        switch (c) {
        case '"':
            e = "\\\"";
            break;
        case '\\':
            e = "\\\\";
            break;
        case '\n':
            e = "\\n";
            break;
        case '\r':
            e = "\\r";
            break;
        case '\t':
            e = "\\t";
            break;
        case '\b':
            e = "\\b";
            break;
        case '\f':
            e = "\\f";
            break;
        default:
            break;
        }
        if (!e && c >= 0x20) {
            run++;
            continue;
        }
        if (run) rc = ct_buf_put(b, s + i - run, run);
        run = 0;
        if (rc) break;
        rc = e ? ct_buf_put(b, e, strlen(e)) : ct_buf_printf(b, "\\u%04x", c);
    }
    if (!rc && run) rc = ct_buf_put(b, s + n - run, run);
    if (!rc) rc = ct_buf_putc(b, '"');
    return rc;
}

static int json_nl(ct_buf_t *b, int indent, int level) {
    int rc = ct_buf_putc(b, '\n');
    for (int i = 0; !rc && i < indent * level; i++) rc = ct_buf_putc(b, ' ');
    return rc;
}

static int json_rec(ct_buf_t *b, const ct_val_t *v, int indent, int sort_keys, int level) {
    int rc = 0;
    if (level > CT_MAX_DEPTH) return SL_ERANGE;
    switch (v->kind) {
    case CT_V_NONE:
        return ct_buf_put(b, "null", 4);
    case CT_V_BOOL:
        return v->u.b ? ct_buf_put(b, "true", 4) : ct_buf_put(b, "false", 5);
    case CT_V_INT:
        return ct_buf_printf(b, "%lld", (long long)v->u.i);
    case CT_V_FLOAT:
        if (isnan(v->u.f)) return ct_buf_put(b, "NaN", 3);
        if (isinf(v->u.f))
            return v->u.f > 0 ? ct_buf_put(b, "Infinity", 8) : ct_buf_put(b, "-Infinity", 9);
        return ct_float_repr(b, v->u.f);
    case CT_V_STR:
        return json_str(b, v->u.str.s, v->u.str.len);
    case CT_V_LIST:
        if (v->is_gen || v->view) return SL_EINVAL; /* not JSON serializable */
        if (v->u.list.n == 0) return ct_buf_put(b, "[]", 2);
        rc = ct_buf_putc(b, '[');
        for (size_t i = 0; !rc && i < v->u.list.n; i++) {
            if (i) rc = ct_buf_put(b, indent >= 0 ? "," : ", ", indent >= 0 ? 1 : 2);
            if (!rc && indent >= 0) rc = json_nl(b, indent, level + 1);
            if (!rc) rc = json_rec(b, v->u.list.items[i], indent, sort_keys, level + 1);
        }
        if (!rc && indent >= 0) rc = json_nl(b, indent, level);
        if (!rc) rc = ct_buf_putc(b, ']');
        return rc;
    case CT_V_DICT: {
        if (v->is_loop) return SL_EINVAL;
        size_t n = v->u.dict.n;
        if (n == 0) return ct_buf_put(b, "{}", 2);
        size_t *ord = malloc(n * sizeof *ord);
        if (!ord) return SL_ENOMEM;
        for (size_t i = 0; i < n; i++) ord[i] = i;
        if (sort_keys) {
            for (size_t i = 1; i < n; i++) { /* insertion sort: dicts are small */
                size_t k = ord[i], j = i;
                int c = 0;
                while (j > 0) {
                    if (ct_val_cmp(v->u.dict.keys[ord[j - 1]], v->u.dict.keys[k], &c) < 0) {
                        free(ord);
                        return SL_EINVAL;
                    }
                    if (c <= 0) break;
                    ord[j] = ord[j - 1];
                    j--;
                }
                ord[j] = k;
            }
        }
        rc = ct_buf_putc(b, '{');
        for (size_t i = 0; !rc && i < n; i++) {
            const ct_val_t *k = v->u.dict.keys[ord[i]];
            if (i) rc = ct_buf_put(b, indent >= 0 ? "," : ", ", indent >= 0 ? 1 : 2);
            if (!rc && indent >= 0) rc = json_nl(b, indent, level + 1);
            if (rc) break;
            if (k->kind == CT_V_STR) {
                rc = json_str(b, k->u.str.s, k->u.str.len);
            } else if (k->kind == CT_V_NONE || k->kind == CT_V_BOOL || k->kind == CT_V_INT ||
                       k->kind == CT_V_FLOAT) {
                ct_buf_t t;
                ct_buf_init(&t, 1024);
                rc = json_rec(&t, k, -1, 0, level + 1);
                if (!rc) rc = json_str(b, t.p, t.len);
                ct_buf_free(&t);
            } else {
                rc = SL_EINVAL;
            }
            if (!rc) rc = ct_buf_put(b, ": ", 2);
            if (!rc) rc = json_rec(b, v->u.dict.vals[ord[i]], indent, sort_keys, level + 1);
        }
        free(ord);
        if (!rc && indent >= 0) rc = json_nl(b, indent, level);
        if (!rc) rc = ct_buf_putc(b, '}');
        return rc;
    }
    default:
        return SL_EINVAL;
    }
}

int ct_val_json_write(ct_buf_t *b, const ct_val_t *v, int indent, int sort_keys, int depth) {
    return json_rec(b, v, indent, sort_keys, depth);
}
