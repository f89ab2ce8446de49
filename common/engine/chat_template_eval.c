/* chat_template_eval.c - tree-walking evaluator for the Jinja subset.
 *
 * Semantics follow jinja2 under transformers' ImmutableSandboxedEnvironment:
 * default (lenient) Undefined, Python operators and truthiness, a fresh scope
 * per loop iteration (a {% set %} inside a loop does not leak out, which is
 * why templates use namespace()), sandbox refusal of mutating methods
 * (list.append, dict.update ...), and the filters, tests, globals and string
 * methods that mainstream chat templates use. Every step counts against a
 * budget and all memory comes from the render arena, so any input ends in
 * output or an error message, never a crash or a hang. */
#include "common/engine/chat_template_internal.h"
#include "common/base/err.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct ev {
    ct_arena_t *a;
    ct_buf_t *out;
    char *err;
    size_t errlen;
    int depth;
    uint64_t steps;
    int brk, cont;
    ct_val_t *pending_caller; /* set while evaluating the call of {% call %} */
} ev_t;

/* ---- errors ------------------------------------------------------------------ */
static int ev_fail(ev_t *E, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int ev_fail(ev_t *E, int line, const char *fmt, ...) {
    if (E->err[0]) return SL_EINVAL;
    char m[CT_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    if (line > 0)
        snprintf(E->err, E->errlen, "line %d: %s", line, m);
    else
        snprintf(E->err, E->errlen, "%s", m);
    return SL_EINVAL;
}

static int ev_oom(ev_t *E) {
    ev_fail(E, 0, "template rendering ran out of memory (limit %u MiB)", CT_MAX_RENDER_ARENA >> 20);
    return SL_ENOMEM;
}

/* Undefined values carry jinja's wording of why they are undefined. */
static int undef_fail(ev_t *E, int line, const ct_val_t *v) {
    if (v->u.undef_name) return ev_fail(E, line, "%s", v->u.undef_name);
    return ev_fail(E, line, "value is undefined");
}

static ct_val_t *undef_msg(ev_t *E, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static ct_val_t *undef_msg(ev_t *E, const char *fmt, ...) {
    char m[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    const char *s = ct_arena_strndup(E->a, m, strlen(m));
    return s ? ct_val_undef(E->a, s) : NULL;
}

#define CHECK_ALLOC(p)                                                                             \
    do {                                                                                           \
        if (!(p)) return ev_oom(E);                                                                \
    } while (0)

/* ---- frames ----------------------------------------------------------------------- */
int ct_frame_set(ct_arena_t *a, ct_frame_t *f, const char *name, ct_val_t *v) {
    for (size_t i = 0; i < f->n; i++) {
        if (strcmp(f->names[i], name) == 0) {
            f->vals[i] = v;
            return 0;
        }
    }
    if (f->n == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 8;
        const char **nn = ct_arena_alloc(a, nc * sizeof *nn);
        ct_val_t **nv = ct_arena_alloc(a, nc * sizeof *nv);
        if (!nn || !nv) return SL_ENOMEM;
        if (f->n) {
            memcpy(nn, f->names, f->n * sizeof *nn);
            memcpy(nv, f->vals, f->n * sizeof *nv);
        }
        f->names = nn;
        f->vals = nv;
        f->cap = nc;
    }
    f->names[f->n] = name;
    f->vals[f->n++] = v;
    return 0;
}

ct_val_t *ct_frame_lookup(ct_frame_t *f, const char *name) {
    for (; f; f = f->parent)
        for (size_t i = f->n; i-- > 0;)
            if (strcmp(f->names[i], name) == 0) return f->vals[i];
    return NULL;
}

static ct_frame_t *frame_new(ev_t *E, ct_frame_t *parent) {
    ct_frame_t *f = ct_arena_alloc(E->a, sizeof *f);
    if (f) f->parent = parent;
    return f;
}

/* ---- small helpers ---------------------------------------------------------------- */
static ct_val_t *mkstr(ev_t *E, const char *s, size_t n) {
    return ct_val_str(E->a, s, n);
}

/* str(v) as a new string value */
static int to_str(ev_t *E, const ct_val_t *v, ct_val_t **out) {
    if (v->kind == CT_V_STR) {
        *out = (ct_val_t *)v;
        return 0;
    }
    ct_buf_t b;
    ct_buf_init(&b, CT_MAX_OUTPUT);
    int rc = ct_val_str_write(&b, v);
    if (!rc) {
        *out = mkstr(E, b.p ? b.p : "", b.len);
        if (!*out) rc = SL_ENOMEM;
    }
    ct_buf_free(&b);
    if (rc == SL_ENOMEM) return ev_oom(E);
    if (rc == SL_ERANGE) return ev_fail(E, 0, "value nested too deeply to print");
    if (rc) return ev_fail(E, 0, "string too long");
    return 0;
}

static size_t u8_clen(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

static uint32_t u8_decode(const char *s, size_t n, size_t i, size_t *len) {
    unsigned char c = (unsigned char)s[i];
    size_t l = u8_clen(c);
    if (i + l > n) l = 1;
    *len = l;
    if (l == 1) return c;
    uint32_t cp = c & (0xFF >> (l + 1));
    for (size_t k = 1; k < l; k++) cp = (cp << 6) | ((unsigned char)s[i + k] & 0x3F);
    return cp;
}

static int py_space(uint32_t c) {
    return (c >= 9 && c <= 13) || (c >= 28 && c <= 32) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static int in_chars(uint32_t cp, const ct_val_t *chars) {
    if (!chars) return py_space(cp);
    const char *s = chars->u.str.s;
    size_t n = chars->u.str.len, l;
    for (size_t i = 0; i < n; i += l)
        if (u8_decode(s, n, i, &l) == cp) return 1;
    return 0;
}

/* strip per Python: which = 1 left, 2 right, 3 both */
static void str_strip(const char *s, size_t n, const ct_val_t *chars, int which, size_t *b,
                      size_t *e) {
    size_t i = 0, j = n, l;
    if (which & 1) {
        while (i < j && in_chars(u8_decode(s, n, i, &l), chars)) i += l;
    }
    if (which & 2) {
        while (j > i) {
            size_t k = j - 1;
            while (k > i && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
            if (!in_chars(u8_decode(s, n, k, &l), chars)) break;
            j = k;
        }
    }
    *b = i;
    *e = j;
}

static char up(char c) {
    return (c >= 'a' && c <= 'z') ? (char)(c - 32) : c;
}
static char lo(char c) {
    return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}
static int is_alpha(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Simple case mappings of Python's str for ASCII, Latin-1, Latin Extended-A,
 * Greek and Cyrillic (the scripts chat content mostly uses); other code points
 * are left alone. Every mapping keeps or shortens the UTF-8 length. */
static uint32_t cp_upper(uint32_t c) {
    if (c >= 'a' && c <= 'z') return c - 32;
    if (c < 0x80) return c;
    if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) return c - 0x20;
    if (c == 0xFF) return 0x178;
    if (c == 0xB5) return 0x39C;
    if (c == 0x131) return 'I';
    if (c == 0x17F) return 'S';
    if (((c >= 0x100 && c <= 0x12F) || (c >= 0x132 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) &&
        (c & 1))
        return c - 1;
    if (((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) && !(c & 1)) return c - 1;
    if ((c >= 0x3B1 && c <= 0x3C1) || (c >= 0x3C3 && c <= 0x3CB)) return c - 0x20;
    if (c == 0x3C2) return 0x3A3;
    if (c == 0x3AC) return 0x386;
    if (c >= 0x3AD && c <= 0x3AF) return c - 0x25;
    if (c == 0x3CC) return 0x38C;
    if (c == 0x3CD || c == 0x3CE) return c - 0x3F;
    if (c >= 0x430 && c <= 0x44F) return c - 0x20;
    if (c >= 0x450 && c <= 0x45F) return c - 0x50;
    return c;
}

static uint32_t cp_lower(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c < 0x80) return c;
    if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 0x20;
    if (c == 0x178) return 0xFF;
    if (((c >= 0x100 && c <= 0x12F) || (c >= 0x132 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) &&
        !(c & 1))
        return c + 1;
    if (((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) && (c & 1)) return c + 1;
    if ((c >= 0x391 && c <= 0x3A1) || (c >= 0x3A3 && c <= 0x3AB)) return c + 0x20;
    if (c == 0x386) return 0x3AC;
    if (c >= 0x388 && c <= 0x38A) return c + 0x25;
    if (c == 0x38C) return 0x3CC;
    if (c == 0x38E || c == 0x38F) return c + 0x3F;
    if (c >= 0x410 && c <= 0x42F) return c + 0x20;
    if (c >= 0x400 && c <= 0x40F) return c + 0x50;
    return c;
}

static int cp_cased(uint32_t c) {
    return cp_upper(c) != c || cp_lower(c) != c || c == 0xDF;
}

static size_t put_cp(char *o, uint32_t cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    o[0] = (char)(0xE0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

/* Python's \w for the wordcount filter: ASCII alphanumerics and _, and
 * non-ASCII except the punctuation, symbol and emoji blocks (approximate). */
static int word_cp(uint32_t c) {
    if (c < 0x80) return is_alpha((char)c) || (c >= '0' && c <= '9') || c == '_';
    if (c >= 0x80 && c <= 0xBF)
        return c == 0xAA || c == 0xB2 || c == 0xB3 || c == 0xB5 || c == 0xB9 || c == 0xBA ||
               c >= 0xBC;
    if (c == 0xD7 || c == 0xF7) return 0;
    if (c >= 0x2000 && c <= 0x2BFF) return c >= 0x2070 && c <= 0x209F;
    if (c >= 0x3000 && c <= 0x303F) return c >= 0x3005 && c <= 0x3007;
    if ((c >= 0xFE30 && c <= 0xFE4F) || (c >= 0xFF00 && c <= 0xFF0F) ||
        (c >= 0xFF1A && c <= 0xFF20) || (c >= 0xFF3B && c <= 0xFF40) ||
        (c >= 0xFF5B && c <= 0xFF65) || (c >= 0xE000 && c <= 0xF8FF) ||
        (c >= 0x1F000 && c <= 0x1FAFF))
        return 0;
    return 1;
}

/* case: 0 lower, 1 upper, 2 capitalize, 3 str.title, 4 jinja's title filter */
static ct_val_t *str_case(ev_t *E, const ct_val_t *v, int mode) {
    size_t n = v->u.str.len, on = 0, l;
    char *o = ct_arena_alloc(E->a, n + 1);
    if (!o) return NULL;
    const char *s = v->u.str.s;
    int prev_cased = 0, first = 1;
    for (size_t i = 0; i < n; i += l, first = 0) {
        uint32_t c = u8_decode(s, n, i, &l);
        int to_up;
        switch (mode) {
        case 0:
            to_up = 0;
            break;
        case 1:
            to_up = 1;
            break;
        case 2:
            to_up = first;
            break;
        case 3:
            to_up = !prev_cased;
            prev_cased = cp_cased(c);
            break;
        default: {
            char p = i ? s[i - 1] : ' ';
            to_up = p == ' ' || p == '\t' || p == '\n' || p == '\r' || p == '\v' || p == '\f' ||
                    p == '-' || p == '(' || p == '{' || p == '[' || p == '<';
        }
        }
        if (l == 1 ? c >= 0x80 : (l > 2 || !cp_cased(c))) { /* copy untouched (and bad UTF-8) */
            memcpy(o + on, s + i, l);
            on += l;
            continue;
        }
        if (c == 0xDF && to_up && mode != 0) { /* sharp s: "SS" ("Ss" in str titles) */
            o[on++] = 'S';
            o[on++] = (mode == 1 || mode == 4) ? 'S' : 's';
            continue;
        }
        if (c == 0x3A3 && !to_up && i > 0) { /* final sigma, as Python lowers it */
            size_t nl, pi = i - 1;
            while (pi > 0 && ((unsigned char)s[pi] & 0xC0) == 0x80) pi--;
            int before = cp_cased(u8_decode(s, n, pi, &nl));
            int after = i + l < n && cp_cased(u8_decode(s, n, i + l, &nl));
            if (before && !after) {
                on += put_cp(o + on, 0x3C2);
                continue;
            }
        }
        on += put_cp(o + on, to_up ? cp_upper(c) : cp_lower(c));
    }
    o[on] = 0;
    return ct_val_str_ref(E->a, o, on);
}

static int is_int_like(const ct_val_t *v) {
    return v->kind == CT_V_INT || v->kind == CT_V_BOOL;
}
static int64_t ival(const ct_val_t *v) {
    return v->kind == CT_V_INT ? v->u.i : v->u.b;
}
static int is_number(const ct_val_t *v) {
    return is_int_like(v) || v->kind == CT_V_FLOAT;
}
static double fval(const ct_val_t *v) {
    return v->kind == CT_V_FLOAT ? v->u.f : (double)ival(v);
}

static int is_plain_dict(const ct_val_t *v) {
    return v->kind == CT_V_DICT && !v->is_ns && !v->is_loop;
}

/* Items of an iterable, as Python's iter() gives them. */
static int iterate(ev_t *E, int line, ct_val_t *v, ct_val_t ***items, size_t *n) {
    if (v->kind == CT_V_LIST && v->is_gen == 2) /* lazy error, raised when consumed */
        return ev_fail(E, line, "%s", v->u.list.items[0]->u.str.s);
    switch (v->kind) {
    case CT_V_UNDEF:
        *items = NULL;
        *n = 0;
        return 0;
    case CT_V_LIST:
        *items = v->u.list.items;
        *n = v->u.list.n;
        return 0;
    case CT_V_DICT:
        if (v->is_loop) break;
        *items = v->u.dict.keys;
        *n = v->u.dict.n;
        return 0;
    case CT_V_STR: {
        size_t cnt = ct_utf8_len(v->u.str.s, v->u.str.len), l;
        ct_val_t **arr = cnt ? ct_arena_alloc(E->a, cnt * sizeof *arr) : NULL;
        if (cnt && !arr) return ev_oom(E);
        size_t k = 0;
        for (size_t i = 0; i < v->u.str.len && k < cnt; i += l, k++) {
            u8_decode(v->u.str.s, v->u.str.len, i, &l);
            CHECK_ALLOC(arr[k] = ct_val_str_ref(E->a, v->u.str.s + i, l));
        }
        *items = arr;
        *n = k;
        return 0;
    }
    default:
        break;
    }
    return ev_fail(E, line, "'%s' object is not iterable", ct_val_type_name(v));
}

/* jinja's select/map/unique/items are generators: a non-iterable input fails
 * only when the result is consumed. Returns 1 and sets *out to such a pending
 * failure when v cannot be iterated. */
static int lazy_input(ev_t *E, ct_val_t *v, int need_mapping, ct_val_t **out) {
    int ok = v->kind == CT_V_UNDEF ||
             (need_mapping ? (v->kind == CT_V_DICT && !v->is_ns && !v->is_loop)
                           : ((v->kind == CT_V_LIST && v->is_gen != 2) || v->kind == CT_V_STR ||
                              (v->kind == CT_V_DICT && !v->is_loop)));
    if (ok) return 0;
    char m[128];
    if (need_mapping)
        snprintf(m, sizeof m, "Can only get item pairs from a mapping.");
    else
        snprintf(m, sizeof m, "'%s' object is not iterable", ct_val_type_name(v));
    ct_val_t *g = ct_val_list(E->a, 1), *msg = mkstr(E, m, strlen(m));
    if (!g || !msg) {
        *out = NULL;
        return 1;
    }
    g->is_gen = 2;
    g->u.list.items[0] = msg;
    *out = g;
    return 1;
}

static ct_val_t *list_from(ev_t *E, ct_val_t **items, size_t n) {
    ct_val_t *l = ct_val_list(E->a, n);
    if (!l) return NULL;
    if (n) memcpy(l->u.list.items, items, n * sizeof *items);
    l->u.list.n = n;
    return l;
}

static ct_val_t *tuple2(ev_t *E, ct_val_t *a, ct_val_t *b) {
    ct_val_t *t = ct_val_list(E->a, 2);
    if (!t) return NULL;
    t->is_tuple = 1;
    t->u.list.items[0] = a;
    t->u.list.items[1] = b;
    t->u.list.n = 2;
    return t;
}

static int length_of(ev_t *E, int line, const ct_val_t *v, int64_t *n) {
    switch (v->kind) {
    case CT_V_UNDEF:
        *n = 0;
        return 0;
    case CT_V_STR:
        *n = (int64_t)ct_utf8_len(v->u.str.s, v->u.str.len);
        return 0;
    case CT_V_LIST:
        if (v->is_gen) return ev_fail(E, line, "object of type 'generator' has no len()");
        *n = (int64_t)v->u.list.n;
        return 0;
    case CT_V_DICT:
        *n = (int64_t)v->u.dict.n;
        return 0;
    default:
        return ev_fail(E, line, "object of type '%s' has no len()", ct_val_type_name(v));
    }
}

/* ---- attribute and item access ------------------------------------------------------ */
static const char *const str_methods[] = {
    "strip",        "lstrip",       "rstrip",  "startswith", "endswith",   "split",
    "rsplit",       "upper",        "lower",   "title",      "capitalize", "replace",
    "find",         "rfind",        "count",   "join",       "format",     "splitlines",
    "isdigit",      "isalpha",      "isalnum", "isspace",    "isupper",    "islower",
    "removeprefix", "removesuffix", "index",   "swapcase",   NULL};
static const char *const dict_methods[] = {"get", "items", "keys", "values", NULL};
static const char *const dict_unsafe[] = {"pop",   "popitem", "update", "setdefault",
                                          "clear", "copy",    NULL};
static const char *const list_methods[] = {"index", "count", NULL};
static const char *const list_unsafe[] = {"append", "extend",  "insert", "pop",  "remove",
                                          "sort",   "reverse", "clear",  "copy", NULL};

static int in_list(const char *const *l, const char *s) {
    for (; *l; l++)
        if (strcmp(*l, s) == 0) return 1;
    return 0;
}

/* jinja's getattr(obj, name): attribute first, then item. */
static int get_attr(ev_t *E, int line, ct_val_t *obj, const char *name, ct_val_t **out) {
    *out = &ct_undef;
    switch (obj->kind) {
    case CT_V_UNDEF:
        return undef_fail(E, line, obj);
    case CT_V_DICT:
        if (obj->is_ns || obj->is_loop) {
            if (obj->is_loop && strcmp(name, "cycle") == 0) {
                CHECK_ALLOC(*out = ct_val_func(E->a, "loop.cycle", obj));
                return 0;
            }
            ct_val_t *v = ct_dict_getn(obj, name, strlen(name));
            if (v) *out = v;
            return 0;
        }
        if (in_list(dict_methods, name)) {
            CHECK_ALLOC(*out = ct_val_func(E->a, name, obj));
            return 0;
        }
        if (in_list(dict_unsafe, name))
            return ev_fail(E, line, "access to attribute '%s' of 'dict' object is unsafe", name);
        {
            ct_val_t *v = ct_dict_getn(obj, name, strlen(name));
            *out = v ? v : undef_msg(E, "'dict object' has no attribute '%.80s'", name);
            CHECK_ALLOC(*out);
        }
        return 0;
    case CT_V_STR:
        if (in_list(str_methods, name)) {
            CHECK_ALLOC(*out = ct_val_func(E->a, name, obj));
            return 0;
        }
        break;
    case CT_V_LIST:
        if (in_list(list_methods, name)) {
            CHECK_ALLOC(*out = ct_val_func(E->a, name, obj));
            return 0;
        }
        if (in_list(list_unsafe, name))
            return ev_fail(E, line, "access to attribute '%s' of '%s' object is unsafe", name,
                           ct_val_type_name(obj));
        break;
    default:
        break;
    }
    if (obj->kind == CT_V_NONE)
        *out = undef_msg(E, "'None' has no attribute '%.80s'", name);
    else
        *out = undef_msg(E, "'%s object' has no attribute '%.80s'", ct_val_type_name(obj), name);
    CHECK_ALLOC(*out);
    return 0;
}

static void slice_indices(int64_t len, const ct_val_t *st, const ct_val_t *sp, int64_t step,
                          int64_t *start, int64_t *stop) {
    int64_t lo_ = step < 0 ? -1 : 0, hi = step < 0 ? len - 1 : len;
    if (!st || st->kind == CT_V_NONE) {
        *start = step < 0 ? hi : lo_;
    } else {
        int64_t v = ival(st);
        if (v < 0) {
            v += len;
            if (v < lo_) v = lo_;
        } else if (v > hi) {
            v = hi;
        }
        *start = v;
    }
    if (!sp || sp->kind == CT_V_NONE) {
        *stop = step < 0 ? lo_ : hi;
    } else {
        int64_t v = ival(sp);
        if (v < 0) {
            v += len;
            if (v < lo_) v = lo_;
        } else if (v > hi) {
            v = hi;
        }
        *stop = v;
    }
}

static int do_slice(ev_t *E, int line, ct_val_t *obj, ct_val_t *st, ct_val_t *sp, ct_val_t *stp,
                    ct_val_t **out) {
    for (int k = 0; k < 3; k++) {
        ct_val_t *x = k == 0 ? st : k == 1 ? sp : stp;
        if (x && x->kind != CT_V_NONE && !is_int_like(x))
            return ev_fail(E, line, "slice indices must be integers or None");
    }
    int64_t step = (stp && stp->kind != CT_V_NONE) ? ival(stp) : 1;
    if (step == 0) return ev_fail(E, line, "slice step cannot be zero");
    if (obj->kind == CT_V_UNDEF) return undef_fail(E, line, obj);
    ct_val_t **items = NULL;
    size_t n = 0;
    int is_str = obj->kind == CT_V_STR;
    /* jinja compiles slices to a plain subscript: no undefined fallback */
    if (obj->kind == CT_V_DICT && !obj->is_ns && !obj->is_loop)
        return ev_fail(E, line, "unhashable type: 'slice'");
    if ((obj->kind != CT_V_LIST || obj->is_gen) && !is_str)
        return ev_fail(E, line, "'%s' object is not subscriptable", ct_val_type_name(obj));
    int rc = iterate(E, line, obj, &items, &n);
    if (rc) return rc;
    int64_t start, stop;
    slice_indices((int64_t)n, st, sp, step, &start, &stop);
    ct_val_t *res = ct_val_list(E->a, 0);
    CHECK_ALLOC(res);
    res->is_tuple = obj->is_tuple;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
        if (ct_list_push(E->a, res, items[i])) return ev_oom(E);
    if (!is_str) {
        *out = res;
        return 0;
    }
    size_t total = 0;
    for (size_t i = 0; i < res->u.list.n; i++) total += res->u.list.items[i]->u.str.len;
    char *s = ct_arena_alloc(E->a, total + 1);
    CHECK_ALLOC(s);
    size_t off = 0;
    for (size_t i = 0; i < res->u.list.n; i++) {
        memcpy(s + off, res->u.list.items[i]->u.str.s, res->u.list.items[i]->u.str.len);
        off += res->u.list.items[i]->u.str.len;
    }
    CHECK_ALLOC(*out = ct_val_str_ref(E->a, s, total));
    return 0;
}

/* jinja's getitem(obj, key): item first, then attribute for string keys. */
static int get_item(ev_t *E, int line, ct_val_t *obj, ct_val_t *key, ct_val_t **out) {
    *out = &ct_undef;
    if (obj->kind == CT_V_UNDEF) return undef_fail(E, line, obj);
    if (obj->kind == CT_V_DICT && !obj->is_loop && !obj->is_ns) {
        ct_val_t *v = ct_dict_get(obj, key);
        if (v) {
            *out = v;
            return 0;
        }
    } else if (((obj->kind == CT_V_LIST && !obj->is_gen) || obj->kind == CT_V_STR) &&
               is_int_like(key)) {
        int64_t n = 0, i = ival(key);
        length_of(E, line, obj, &n);
        if (i < 0) i += n;
        if (i < 0 || i >= n) {
            CHECK_ALLOC(*out = undef_msg(E, "%s object has no element %lld", ct_val_type_name(obj),
                                         (long long)ival(key)));
            return 0;
        }
        if (obj->kind == CT_V_LIST) {
            *out = obj->u.list.items[i];
            return 0;
        }
        size_t off = ct_utf8_offset(obj->u.str.s, obj->u.str.len, (size_t)i);
        CHECK_ALLOC(*out = ct_val_str_ref(E->a, obj->u.str.s + off,
                                          u8_clen((unsigned char)obj->u.str.s[off])));
        return 0;
    }
    if (key->kind == CT_V_STR && !memchr(key->u.str.s, 0, key->u.str.len)) {
        if (obj->kind == CT_V_DICT && (obj->is_ns || obj->is_loop)) {
            ct_val_t *v = ct_dict_get(obj, key);
            if (v) *out = v;
            return 0;
        }
        char *nm = ct_arena_strndup(E->a, key->u.str.s, key->u.str.len);
        CHECK_ALLOC(nm);
        return get_attr(E, line, obj, nm, out);
    }
    return 0;
}

/* True when jinja's optimizer would fold e to a constant when it compiles the
 * template: literals and operators over literals. */
static int is_const_expr(const ct_expr_t *e) {
    if (!e) return 1;
    switch (e->kind) {
    case CT_E_LIT:
        return 1;
    case CT_E_LIST:
    case CT_E_TUPLE:
    case CT_E_DICT:
        for (size_t i = 0; i < e->nargs; i++)
            if (!is_const_expr(e->args[i])) return 0;
        return 1;
    case CT_E_NEG:
    case CT_E_POS:
    case CT_E_NOT:
    case CT_E_BIN:
    case CT_E_CMP:
    case CT_E_AND:
    case CT_E_OR:
    case CT_E_COND:
    case CT_E_SLICE:
    case CT_E_ITEM:
        return is_const_expr(e->a) && is_const_expr(e->b) && is_const_expr(e->c);
    case CT_E_FILTER:
    case CT_E_TEST:
        if (e->unknown || !e->a || !is_const_expr(e->a)) return 0;
        for (size_t i = 0; i < e->nargs; i++)
            if (!is_const_expr(e->args[i])) return 0;
        for (size_t i = 0; i < e->nkw; i++)
            if (!is_const_expr(e->kwargs[i])) return 0;
        return 1;
    default:
        return 0;
    }
}

/* ---- forward declarations ---------------------------------------------------------------- */
static int eval(ev_t *E, ct_frame_t *f, const ct_expr_t *e, ct_val_t **out);
static int exec_body(ev_t *E, ct_frame_t *f, const ct_body_t *b);
static int apply_filter(ev_t *E, ct_frame_t *f, const char *name, int line, ct_val_t *subj,
                        ct_val_t **args, size_t nargs, const char **kwn, ct_val_t **kwv, size_t nkw,
                        ct_val_t **out);
static int apply_test(ev_t *E, int line, const char *name, ct_val_t *v, ct_val_t **args,
                      size_t nargs, int *res);
static int call_value(ev_t *E, ct_frame_t *f, int line, ct_val_t *fn, ct_val_t **args, size_t nargs,
                      const char **kwn, ct_val_t **kwv, size_t nkw, ct_val_t **out);

/* ---- arithmetic ---------------------------------------------------------------------- */
static int binop(ev_t *E, int line, int op, ct_val_t *x, ct_val_t *y, ct_val_t **out) {
    static const char *const opname[] = {"", "+", "-", "*", "/", "//", "%", "**", "~"};
    if (op == CT_OP_CONCAT) {
        ct_val_t *a, *b;
        int rc = to_str(E, x, &a);
        if (!rc) rc = to_str(E, y, &b);
        if (rc) return rc;
        size_t n = a->u.str.len + b->u.str.len;
        if (n > CT_MAX_OUTPUT) return ev_fail(E, line, "string too long");
        char *s = ct_arena_alloc(E->a, n + 1);
        CHECK_ALLOC(s);
        memcpy(s, a->u.str.s, a->u.str.len);
        memcpy(s + a->u.str.len, b->u.str.s, b->u.str.len);
        CHECK_ALLOC(*out = ct_val_str_ref(E->a, s, n));
        return 0;
    }
    if (x->kind == CT_V_UNDEF) return undef_fail(E, line, x);
    if (op == CT_OP_MOD && x->kind == CT_V_STR && y->kind == CT_V_UNDEF) /* 'fmt' % undefined */
        return apply_filter(E, NULL, "format", line, x, &y, 1, NULL, NULL, 0, out);
    if (y->kind == CT_V_UNDEF) return undef_fail(E, line, y);
    if (is_int_like(x) && is_int_like(y) && op != CT_OP_DIV) {
        int64_t a = ival(x), b = ival(y), r = 0;
        int ovf = 0;
        switch (op) {
        case CT_OP_ADD:
            ovf = __builtin_add_overflow(a, b, &r);
            break;
        case CT_OP_SUB:
            ovf = __builtin_sub_overflow(a, b, &r);
            break;
        case CT_OP_MUL:
            ovf = __builtin_mul_overflow(a, b, &r);
            break;
        case CT_OP_FLOORDIV:
        case CT_OP_MOD:
            if (b == 0) return ev_fail(E, line, "integer division or modulo by zero");
            if (a == INT64_MIN && b == -1) {
                ovf = 1;
                break;
            }
            r = op == CT_OP_FLOORDIV ? a / b : a % b;
            if (op == CT_OP_FLOORDIV && (a % b != 0) && ((a < 0) != (b < 0))) r--;
            if (op == CT_OP_MOD && r != 0 && ((r < 0) != (b < 0))) r += b;
            break;
        case CT_OP_POW:
            if (b < 0) {
                CHECK_ALLOC(*out = ct_val_float(E->a, pow((double)a, (double)b)));
                return 0;
            }
            r = 1;
            for (int64_t k = 0; k < b && !ovf; k++) ovf = __builtin_mul_overflow(r, a, &r);
            break;
        }
        if (ovf) return ev_fail(E, line, "integer overflow in '%s'", opname[op]);
        CHECK_ALLOC(*out = ct_val_int(E->a, r));
        return 0;
    }
    if (is_number(x) && is_number(y)) {
        double a = fval(x), b = fval(y), r = 0;
        switch (op) {
        case CT_OP_ADD:
            r = a + b;
            break;
        case CT_OP_SUB:
            r = a - b;
            break;
        case CT_OP_MUL:
            r = a * b;
            break;
        case CT_OP_DIV:
            if (b == 0) return ev_fail(E, line, "division by zero");
            r = a / b;
            break;
        case CT_OP_FLOORDIV:
        case CT_OP_MOD: {
            if (b == 0) return ev_fail(E, line, "float division or modulo by zero");
            /* CPython's float_divmod */
            double mod = fmod(a, b), div = (a - mod) / b, fd;
            if (mod != 0) {
                if ((b < 0) != (mod < 0)) {
                    mod += b;
                    div -= 1.0;
                }
            } else {
                mod = copysign(0.0, b);
            }
            if (div != 0) {
                fd = floor(div);
                if (div - fd > 0.5) fd += 1.0;
            } else {
                fd = copysign(0.0, a / b);
            }
            r = op == CT_OP_FLOORDIV ? fd : mod;
            break;
        }
        case CT_OP_POW:
            r = pow(a, b);
            break;
        }
        CHECK_ALLOC(*out = ct_val_float(E->a, r));
        return 0;
    }
    if (op == CT_OP_ADD && x->kind == CT_V_STR && y->kind == CT_V_STR)
        return binop(E, line, CT_OP_CONCAT, x, y, out);
    if (op == CT_OP_ADD && x->kind == CT_V_LIST && y->kind == CT_V_LIST &&
        x->is_tuple == y->is_tuple) {
        ct_val_t *l = ct_val_list(E->a, x->u.list.n + y->u.list.n);
        CHECK_ALLOC(l);
        l->is_tuple = x->is_tuple;
        for (size_t i = 0; i < x->u.list.n; i++)
            l->u.list.items[l->u.list.n++] = x->u.list.items[i];
        for (size_t i = 0; i < y->u.list.n; i++)
            l->u.list.items[l->u.list.n++] = y->u.list.items[i];
        *out = l;
        return 0;
    }
    if (op == CT_OP_MUL && ((x->kind == CT_V_STR || x->kind == CT_V_LIST) && is_int_like(y))) {
        int64_t k = ival(y);
        if (k < 0) k = 0;
        if (x->kind == CT_V_STR) {
            if (k && x->u.str.len > CT_MAX_OUTPUT / (uint64_t)k)
                return ev_fail(E, line, "string too long");
            size_t n = x->u.str.len * (size_t)k;
            char *s = ct_arena_alloc(E->a, n + 1);
            CHECK_ALLOC(s);
            for (int64_t i = 0; i < k; i++)
                memcpy(s + (size_t)i * x->u.str.len, x->u.str.s, x->u.str.len);
            CHECK_ALLOC(*out = ct_val_str_ref(E->a, s, n));
            return 0;
        }
        if (k && x->u.list.n > CT_MAX_RANGE / (uint64_t)k) return ev_fail(E, line, "list too long");
        ct_val_t *l = ct_val_list(E->a, x->u.list.n * (size_t)k);
        CHECK_ALLOC(l);
        l->is_tuple = x->is_tuple;
        for (int64_t i = 0; i < k; i++)
            for (size_t j = 0; j < x->u.list.n; j++)
                l->u.list.items[l->u.list.n++] = x->u.list.items[j];
        *out = l;
        return 0;
    }
    if (op == CT_OP_MUL && is_int_like(x) && (y->kind == CT_V_STR || y->kind == CT_V_LIST))
        return binop(E, line, op, y, x, out);
    if (op == CT_OP_MOD && x->kind == CT_V_STR) {
        ct_val_t *args = y;
        if (!(y->kind == CT_V_LIST && y->is_tuple)) {
            CHECK_ALLOC(args = ct_val_list(E->a, 1));
            args->u.list.items[args->u.list.n++] = y;
        }
        return apply_filter(E, NULL, "format", line, x, args->u.list.items, args->u.list.n, NULL,
                            NULL, 0, out);
    }
    return ev_fail(E, line, "unsupported operand type(s) for %s: '%s' and '%s'", opname[op],
                   ct_val_type_name(x), ct_val_type_name(y));
}

static int contains(ev_t *E, int line, ct_val_t *item, ct_val_t *seq, int *res) {
    *res = 0;
    if (seq->kind == CT_V_STR) {
        if (item->kind != CT_V_STR)
            return ev_fail(E, line, "'in <string>' requires string as left operand, not %s",
                           ct_val_type_name(item));
        if (item->u.str.len == 0) {
            *res = 1;
            return 0;
        }
        *res = memmem(seq->u.str.s, seq->u.str.len, item->u.str.s, item->u.str.len) != NULL;
        return 0;
    }
    if (seq->kind == CT_V_DICT && !seq->is_loop) {
        if ((item->kind == CT_V_LIST && !item->is_tuple) || item->kind == CT_V_DICT)
            return ev_fail(E, line, "unhashable type: '%s'", ct_val_type_name(item));
        *res = ct_dict_get(seq, item) != NULL;
        return 0;
    }
    ct_val_t **items;
    size_t n;
    int rc = iterate(E, line, seq, &items, &n);
    if (rc) {
        E->err[0] = 0;
        return ev_fail(E, line, "argument of type '%s' is not iterable", ct_val_type_name(seq));
    }
    for (size_t i = 0; i < n; i++) {
        if (ct_val_eq(items[i], item)) {
            *res = 1;
            break;
        }
    }
    return 0;
}

static int compare(ev_t *E, int line, int op, ct_val_t *x, ct_val_t *y, int *res) {
    static const char *const names[] = {"==", "!=", "<", "<=", ">", ">="};
    if (op == CT_OP_EQ || op == CT_OP_NE) {
        *res = ct_val_eq(x, y) ^ (op == CT_OP_NE);
        return 0;
    }
    if (op == CT_OP_IN || op == CT_OP_NOTIN) {
        int rc = contains(E, line, x, y, res);
        if (op == CT_OP_NOTIN) *res = !*res;
        return rc;
    }
    int c;
    if (ct_val_cmp(x, y, &c))
        return ev_fail(E, line, "'%s' not supported between instances of '%s' and '%s'",
                       names[op - CT_OP_EQ], ct_val_type_name(x), ct_val_type_name(y));
    switch (op) {
    case CT_OP_LT:
        *res = c < 0;
        break;
    case CT_OP_LE:
        *res = c <= 0;
        break;
    case CT_OP_GT:
        *res = c > 0;
        break;
    default:
        *res = c >= 0;
        break;
    }
    return 0;
}

/* ---- expression evaluation ------------------------------------------------------------- */
static int eval_args(ev_t *E, ct_frame_t *f, const ct_expr_t *e, ct_val_t ***args,
                     ct_val_t ***kwv) {
    *args = NULL;
    *kwv = NULL;
    if (e->nargs) {
        CHECK_ALLOC(*args = ct_arena_alloc(E->a, e->nargs * sizeof **args));
        for (size_t i = 0; i < e->nargs; i++) {
            int rc = eval(E, f, e->args[i], &(*args)[i]);
            if (rc) return rc;
        }
    }
    if (e->nkw) {
        CHECK_ALLOC(*kwv = ct_arena_alloc(E->a, e->nkw * sizeof **kwv));
        for (size_t i = 0; i < e->nkw; i++) {
            int rc = eval(E, f, e->kwargs[i], &(*kwv)[i]);
            if (rc) return rc;
        }
    }
    return 0;
}

/* Evaluates a filter node; subject is the value for a NULL e->a (block filters). */
static int eval_filter(ev_t *E, ct_frame_t *f, const ct_expr_t *e, ct_val_t *subject,
                       ct_val_t **out) {
    ct_val_t *v = subject, **args, **kwv;
    int rc = 0;
    if (e->unknown) return ev_fail(E, e->line, "unsupported filter '%s'", e->name);
    if (e->a)
        rc = e->a->kind == CT_E_FILTER && subject ? eval_filter(E, f, e->a, subject, &v)
                                                  : eval(E, f, e->a, &v);
    if (!rc) rc = eval_args(E, f, e, &args, &kwv);
    if (rc) return rc;
    return apply_filter(E, f, e->name, e->line, v ? v : &ct_undef, args, e->nargs, e->kwnames, kwv,
                        e->nkw, out);
}

static int eval(ev_t *E, ct_frame_t *f, const ct_expr_t *e, ct_val_t **out) {
    int rc = 0;
    if (++E->steps > CT_MAX_STEPS)
        return ev_fail(E, e->line, "template exceeded the evaluation step limit (%u)",
                       CT_MAX_STEPS);
    if (++E->depth > CT_MAX_DEPTH * 4) {
        E->depth--;
        return ev_fail(E, e->line, "expression nested too deeply");
    }
    ct_val_t *x = NULL, *y = NULL;
    switch (e->kind) {
    case CT_E_LIT:
        *out = e->lit;
        break;
    case CT_E_NAME: {
        ct_val_t *v = ct_frame_lookup(f, e->name);
        if (v) {
            *out = v;
        } else if (strcmp(e->name, "raise_exception") == 0 ||
                   strcmp(e->name, "strftime_now") == 0 || strcmp(e->name, "namespace") == 0 ||
                   strcmp(e->name, "range") == 0 || strcmp(e->name, "dict") == 0) {
            if (!(*out = ct_val_func(E->a, e->name, NULL))) rc = ev_oom(E);
        } else if (strcmp(e->name, "cycler") == 0 || strcmp(e->name, "joiner") == 0 ||
                   strcmp(e->name, "lipsum") == 0) {
            rc = ev_fail(E, e->line, "unsupported global function '%s'", e->name);
        } else if (!(*out = undef_msg(E, "'%.80s' is undefined", e->name))) {
            rc = ev_oom(E);
        }
        break;
    }
    case CT_E_LIST:
    case CT_E_TUPLE: {
        ct_val_t *l = ct_val_list(E->a, e->nargs);
        if (!l) {
            rc = ev_oom(E);
            break;
        }
        l->is_tuple = e->kind == CT_E_TUPLE;
        for (size_t i = 0; !rc && i < e->nargs; i++)
            rc = eval(E, f, e->args[i], &l->u.list.items[i]);
        l->u.list.n = e->nargs;
        *out = l;
        break;
    }
    case CT_E_DICT: {
        ct_val_t *d = ct_val_dict(E->a, e->nargs / 2);
        if (!d) {
            rc = ev_oom(E);
            break;
        }
        for (size_t i = 0; !rc && i + 1 < e->nargs; i += 2) {
            rc = eval(E, f, e->args[i], &x);
            if (!rc) rc = eval(E, f, e->args[i + 1], &y);
            if (!rc && (x->kind == CT_V_LIST && !x->is_tuple))
                rc = ev_fail(E, e->line, "unhashable type: 'list'");
            if (!rc && x->kind == CT_V_DICT) rc = ev_fail(E, e->line, "unhashable type: 'dict'");
            if (!rc && ct_dict_set(E->a, d, x, y)) rc = ev_oom(E);
        }
        *out = d;
        break;
    }
    case CT_E_ATTR:
        rc = eval(E, f, e->a, &x);
        if (!rc) rc = get_attr(E, e->line, x, e->name, out);
        break;
    case CT_E_ITEM:
        rc = eval(E, f, e->a, &x);
        if (rc) break;
        if (e->b->kind == CT_E_SLICE) {
            ct_val_t *s[3] = {NULL, NULL, NULL};
            const ct_expr_t *p[3] = {e->b->a, e->b->b, e->b->c};
            for (int k = 0; !rc && k < 3; k++)
                if (p[k]) rc = eval(E, f, p[k], &s[k]);
            if (!rc) rc = do_slice(E, e->line, x, s[0], s[1], s[2], out);
            if (rc == SL_EINVAL && x->kind != CT_V_UNDEF && is_const_expr(e)) {
                /* folded at compile time through the lenient getitem: undefined */
                E->err[0] = 0;
                rc = 0;
                *out = &ct_undef;
            }
        } else {
            rc = eval(E, f, e->b, &y);
            if (!rc) rc = get_item(E, e->line, x, y, out);
        }
        break;
    case CT_E_CALL: {
        ct_val_t **args, **kwv;
        rc = eval(E, f, e->a, &x);
        if (!rc) rc = eval_args(E, f, e, &args, &kwv);
        if (!rc) rc = call_value(E, f, e->line, x, args, e->nargs, e->kwnames, kwv, e->nkw, out);
        break;
    }
    case CT_E_FILTER:
        rc = eval_filter(E, f, e, NULL, out);
        break;
    case CT_E_TEST: {
        ct_val_t **args, **kwv;
        int res = 0;
        if (e->unknown) {
            rc = ev_fail(E, e->line, "unsupported test '%s'", e->name);
            break;
        }
        rc = eval(E, f, e->a, &x);
        if (!rc) rc = eval_args(E, f, e, &args, &kwv);
        if (!rc) rc = apply_test(E, e->line, e->name, x, args, e->nargs, &res);
        if (!rc) *out = ct_val_bool(res ^ (e->op != 0));
        break;
    }
    case CT_E_NEG:
    case CT_E_POS:
        rc = eval(E, f, e->a, &x);
        if (rc) break;
        if (x->kind == CT_V_UNDEF) {
            rc = undef_fail(E, e->line, x);
        } else if (!is_number(x)) {
            rc = ev_fail(E, e->line, "bad operand type for unary %c: '%s'",
                         e->kind == CT_E_NEG ? '-' : '+', ct_val_type_name(x));
        } else if (e->kind == CT_E_POS) {
            *out = x->kind == CT_V_BOOL ? ct_val_int(E->a, x->u.b) : x;
        } else if (x->kind == CT_V_FLOAT) {
            *out = ct_val_float(E->a, -x->u.f);
        } else if (ival(x) == INT64_MIN) {
            rc = ev_fail(E, e->line, "integer overflow in unary -");
        } else {
            *out = ct_val_int(E->a, -ival(x));
        }
        if (!rc && !*out) rc = ev_oom(E);
        break;
    case CT_E_NOT:
        rc = eval(E, f, e->a, &x);
        if (!rc) *out = ct_val_bool(!ct_val_truthy(x));
        break;
    case CT_E_BIN:
        rc = eval(E, f, e->a, &x);
        if (!rc) rc = eval(E, f, e->b, &y);
        if (!rc) rc = binop(E, e->line, e->op, x, y, out);
        break;
    case CT_E_CMP: {
        int res = 0;
        rc = eval(E, f, e->a, &x);
        if (!rc) rc = eval(E, f, e->b, &y);
        if (!rc) rc = compare(E, e->line, e->op, x, y, &res);
        if (!rc) *out = ct_val_bool(res);
        break;
    }
    case CT_E_AND:
    case CT_E_OR:
        rc = eval(E, f, e->a, &x);
        if (rc) break;
        if (ct_val_truthy(x) == (e->kind == CT_E_OR))
            *out = x;
        else
            rc = eval(E, f, e->b, out);
        break;
    case CT_E_COND:
        rc = eval(E, f, e->a, &x);
        if (rc) break;
        if (ct_val_truthy(x))
            rc = eval(E, f, e->b, out);
        else if (e->c)
            rc = eval(E, f, e->c, out);
        else
            *out = &ct_undef;
        break;
    default:
        rc = ev_fail(E, e->line, "unsupported expression");
    }
    E->depth--;
    return rc;
}

/* ---- argument helpers ------------------------------------------------------------------ */
typedef struct argv {
    ct_val_t **args;
    size_t nargs;
    const char **kwn;
    ct_val_t **kwv;
    size_t nkw;
} argv_t;

/* Positional pos or keyword name; NULL when absent. */
static ct_val_t *arg_get(const argv_t *A, size_t pos, const char *name) {
    if (pos < A->nargs) return A->args[pos];
    for (size_t i = 0; name && i < A->nkw; i++)
        if (strcmp(A->kwn[i], name) == 0) return A->kwv[i];
    return NULL;
}

static int arg_str(ev_t *E, int line, const char *fn, ct_val_t *v, const char *what) {
    if (v && v->kind != CT_V_STR)
        return ev_fail(E, line, "%s: %s must be a string, not '%s'", fn, what, ct_val_type_name(v));
    return 0;
}

/* Looks up a dotted attribute path ("a.b" or "0") as jinja's make_attrgetter. */
static int attr_path(ev_t *E, int line, ct_val_t *obj, const ct_val_t *path, ct_val_t **out) {
    const char *s = path->u.str.s;
    size_t n = path->u.str.len, i = 0;
    *out = obj;
    while (i <= n) {
        size_t j = i;
        while (j < n && s[j] != '.') j++;
        int all_digits = j > i;
        for (size_t k = i; k < j; k++) all_digits &= s[k] >= '0' && s[k] <= '9';
        ct_val_t *key;
        if (all_digits && j - i < 18) {
            CHECK_ALLOC(key = ct_val_int(E->a, strtoll(s + i, NULL, 10)));
        } else {
            CHECK_ALLOC(key = ct_val_str(E->a, s + i, j - i));
        }
        int rc = get_item(E, line, *out, key, out);
        if (rc) return rc;
        i = j + 1;
    }
    return 0;
}

/* ---- sorting (stable merge sort with a fallible comparator) ---------------------------- */
typedef struct sortctx {
    ev_t *E;
    int line;
    int case_sensitive;
    int by_value;   /* dictsort by value */
    ct_val_t *attr; /* sort by attribute */
    int failed;
} sortctx_t;

static int sort_key(sortctx_t *S, ct_val_t *v, ct_val_t **k) {
    *k = v;
    if (S->by_value >= 0 && v->kind == CT_V_LIST && v->u.list.n == 2)
        *k = v->u.list.items[S->by_value];
    if (S->attr && attr_path(S->E, S->line, *k, S->attr, k)) return -1;
    if (!S->case_sensitive && (*k)->kind == CT_V_STR) *k = str_case(S->E, *k, 0);
    return *k ? 0 : -1;
}

static int sort_cmp(sortctx_t *S, ct_val_t *a, ct_val_t *b) {
    ct_val_t *ka, *kb;
    int c = 0;
    if (S->failed || sort_key(S, a, &ka) || sort_key(S, b, &kb)) {
        S->failed = 1;
        return 0;
    }
    if (ct_val_cmp(ka, kb, &c)) {
        S->failed = 1;
        ev_fail(S->E, S->line, "'<' not supported between instances of '%s' and '%s'",
                ct_val_type_name(ka), ct_val_type_name(kb));
    }
    return c;
}

static int sort_items(sortctx_t *S, ct_val_t **v, size_t n, int reverse) {
    if (n < 2) return 0;
    ct_val_t **tmp = ct_arena_alloc(S->E->a, n * sizeof *tmp);
    if (!tmp) return ev_oom(S->E);
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo_ = 0; lo_ < n; lo_ += 2 * w) {
            size_t mid = lo_ + w < n ? lo_ + w : n, hi = lo_ + 2 * w < n ? lo_ + 2 * w : n;
            size_t i = lo_, j = mid, k = lo_;
            while (i < mid && j < hi) {
                int c = sort_cmp(S, v[i], v[j]);
                if (reverse) c = -c;
                tmp[k++] = c <= 0 ? v[i++] : v[j++];
            }
            while (i < mid) tmp[k++] = v[i++];
            while (j < hi) tmp[k++] = v[j++];
        }
        memcpy(v, tmp, n * sizeof *v);
        if (S->failed) return SL_EINVAL;
    }
    return S->failed ? SL_EINVAL : 0;
}

/* ---- Python %-formatting and str.format -------------------------------------------------- */
static int percent_format(ev_t *E, int line, const ct_val_t *fmt, ct_val_t **args, size_t nargs,
                          ct_val_t **out) {
    ct_buf_t b;
    ct_buf_init(&b, CT_MAX_OUTPUT);
    const char *s = fmt->u.str.s;
    size_t n = fmt->u.str.len, ai = 0;
    int rc = 0;
    ct_val_t *dict = (nargs == 1 && is_plain_dict(args[0])) ? args[0] : NULL;
    /* a lone list or dict operand is taken as a mapping: unused is fine */
    int lenient = nargs == 1 && (dict || args[0]->kind == CT_V_UNDEF ||
                                 (args[0]->kind == CT_V_LIST && !args[0]->is_tuple));
    for (size_t i = 0; !rc && i < n; i++) {
        if (s[i] != '%') {
            rc = ct_buf_putc(&b, s[i]);
            continue;
        }
        if (++i >= n) {
            rc = ev_fail(E, line, "incomplete format");
            break;
        }
        ct_val_t *v = NULL;
        if (s[i] == '(' && dict) {
            size_t j = i + 1;
            while (j < n && s[j] != ')') j++;
            v = ct_dict_getn(dict, s + i + 1, j - i - 1);
            if (!v) {
                rc = ev_fail(E, line, "format key not found");
                break;
            }
            i = j + 1;
            if (i >= n) {
                rc = ev_fail(E, line, "incomplete format");
                break;
            }
        }
        char c = s[i];
        if (c == '%') {
            rc = ct_buf_putc(&b, '%');
            continue;
        }
        if (!v) {
            if (ai >= nargs) {
                rc = ev_fail(E, line, "not enough arguments for format string");
                break;
            }
            v = args[ai++];
        }
        if (c == 's') {
            rc = ct_val_str_write(&b, v);
        } else if (c == 'r') {
            rc = ct_val_repr_write(&b, v);
        } else if ((c == 'd' || c == 'i') && is_number(v)) {
            rc = ct_buf_printf(&b, "%lld",
                               (long long)(v->kind == CT_V_FLOAT ? (int64_t)v->u.f : ival(v)));
        } else if (c == 'f' && is_number(v)) {
            rc = ct_buf_printf(&b, "%f", fval(v));
        } else {
            rc = ev_fail(E, line, "unsupported format character '%c' (0x%x)", c, (unsigned char)c);
        }
    }
    if (!rc && ai < nargs && !lenient)
        rc = ev_fail(E, line, "not all arguments converted during string formatting");
    if (!rc && !(*out = mkstr(E, b.p ? b.p : "", b.len))) rc = ev_oom(E);
    ct_buf_free(&b);
    if (rc == SL_ETOOBIG) rc = ev_fail(E, line, "string too long");
    return rc;
}

static int brace_format(ev_t *E, int line, const ct_val_t *fmt, const argv_t *A, ct_val_t **out) {
    ct_buf_t b;
    ct_buf_init(&b, CT_MAX_OUTPUT);
    const char *s = fmt->u.str.s;
    size_t n = fmt->u.str.len, auto_i = 0;
    int rc = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        if (s[i] == '{' && i + 1 < n && s[i + 1] == '{') {
            rc = ct_buf_putc(&b, '{');
            i++;
        } else if (s[i] == '}' && i + 1 < n && s[i + 1] == '}') {
            rc = ct_buf_putc(&b, '}');
            i++;
        } else if (s[i] == '{') {
            size_t j = i + 1;
            while (j < n && s[j] != '}') j++;
            if (j >= n) {
                rc = ev_fail(E, line, "single '{' encountered in format string");
                break;
            }
            const char *fld = s + i + 1;
            size_t fl = j - i - 1;
            if (memchr(fld, ':', fl) || memchr(fld, '!', fl) || memchr(fld, '.', fl) ||
                memchr(fld, '[', fl)) {
                rc = ev_fail(E, line, "unsupported construct: format spec in str.format");
                break;
            }
            ct_val_t *v = NULL;
            if (fl == 0) {
                v = auto_i < A->nargs ? A->args[auto_i++] : NULL;
            } else if (fld[0] >= '0' && fld[0] <= '9') {
                size_t k = (size_t)strtoul(fld, NULL, 10);
                v = k < A->nargs ? A->args[k] : NULL;
            } else {
                for (size_t k = 0; k < A->nkw; k++)
                    if (strlen(A->kwn[k]) == fl && memcmp(A->kwn[k], fld, fl) == 0) v = A->kwv[k];
            }
            if (!v) {
                rc = ev_fail(E, line, "str.format: missing argument for '{%.*s}'", (int)fl, fld);
                break;
            }
            rc = ct_val_str_write(&b, v);
            i = j;
        } else if (s[i] == '}') {
            rc = ev_fail(E, line, "single '}' encountered in format string");
        } else {
            rc = ct_buf_putc(&b, s[i]);
        }
    }
    if (!rc && !(*out = mkstr(E, b.p ? b.p : "", b.len))) rc = ev_oom(E);
    ct_buf_free(&b);
    if (rc == SL_ETOOBIG) rc = ev_fail(E, line, "string too long");
    return rc;
}

/* ---- string methods ----------------------------------------------------------------------------
 */
static int str_split(ev_t *E, int line, ct_val_t *self, ct_val_t *sep, ct_val_t *maxv, int right,
                     ct_val_t **out) {
    int64_t maxsplit = maxv && is_int_like(maxv) ? ival(maxv) : -1;
    if (sep && sep->kind == CT_V_NONE) sep = NULL;
    if (sep && sep->kind != CT_V_STR) return ev_fail(E, line, "split: separator must be a string");
    if (sep && sep->u.str.len == 0) return ev_fail(E, line, "empty separator");
    ct_val_t *l = ct_val_list(E->a, 0);
    CHECK_ALLOC(l);
    const char *s = self->u.str.s;
    size_t n = self->u.str.len;
    /* collect [b,e) pieces, left to right; rsplit with a limit splits from the right */
    size_t *bs = ct_arena_alloc(E->a, (n + 2) * 2 * sizeof(size_t));
    CHECK_ALLOC(bs);
    size_t np = 0;
    if (!sep) {
        size_t i = 0, l8;
        size_t cnt_limit = maxsplit < 0 ? SIZE_MAX : (size_t)maxsplit;
        if (!right) {
            size_t splits = 0;
            for (;;) {
                while (i < n && py_space(u8_decode(s, n, i, &l8))) i += l8;
                if (i >= n) break;
                if (splits == cnt_limit) {
                    size_t e = n;
                    while (e > i && py_space((unsigned char)s[e - 1])) e--;
                    bs[2 * np] = i;
                    bs[2 * np + 1] = e;
                    np++;
                    break;
                }
                size_t b0 = i;
                while (i < n && !py_space(u8_decode(s, n, i, &l8))) i += l8;
                bs[2 * np] = b0;
                bs[2 * np + 1] = i;
                np++;
                splits++;
            }
        } else {
            size_t j = n, splits = 0;
            size_t tmpn = 0;
            size_t *tb = ct_arena_alloc(E->a, (n + 2) * 2 * sizeof(size_t));
            CHECK_ALLOC(tb);
            for (;;) {
                while (j > 0 && py_space((unsigned char)s[j - 1])) j--;
                if (j == 0) break;
                if (splits == cnt_limit) {
                    size_t b0 = 0;
                    while (b0 < j && py_space((unsigned char)s[b0])) b0++;
                    tb[2 * tmpn] = b0;
                    tb[2 * tmpn + 1] = j;
                    tmpn++;
                    break;
                }
                size_t e = j;
                while (j > 0 && !py_space((unsigned char)s[j - 1])) j--;
                tb[2 * tmpn] = j;
                tb[2 * tmpn + 1] = e;
                tmpn++;
                splits++;
            }
            for (size_t k = 0; k < tmpn; k++) {
                bs[2 * k] = tb[2 * (tmpn - 1 - k)];
                bs[2 * k + 1] = tb[2 * (tmpn - 1 - k) + 1];
            }
            np = tmpn;
        }
    } else {
        const char *p = sep->u.str.s;
        size_t pl = sep->u.str.len;
        if (!right || maxsplit < 0) {
            size_t i = 0, splits = 0;
            for (;;) {
                const char *hit = (maxsplit >= 0 && splits >= (size_t)maxsplit)
                                      ? NULL
                                      : memmem(s + i, n - i, p, pl);
                if (!hit) {
                    bs[2 * np] = i;
                    bs[2 * np + 1] = n;
                    np++;
                    break;
                }
                size_t h = (size_t)(hit - s);
                bs[2 * np] = i;
                bs[2 * np + 1] = h;
                np++;
                i = h + pl;
                splits++;
            }
        } else {
            size_t j = n, splits = 0, tmpn = 0;
            size_t *tb = ct_arena_alloc(E->a, (n + 2) * 2 * sizeof(size_t));
            CHECK_ALLOC(tb);
            for (;;) {
                size_t h = SIZE_MAX;
                if (splits < (size_t)maxsplit && j >= pl) {
                    for (size_t k = j - pl + 1; k-- > 0;) {
                        if (memcmp(s + k, p, pl) == 0) {
                            h = k;
                            break;
                        }
                    }
                }
                if (h == SIZE_MAX) {
                    tb[2 * tmpn] = 0;
                    tb[2 * tmpn + 1] = j;
                    tmpn++;
                    break;
                }
                tb[2 * tmpn] = h + pl;
                tb[2 * tmpn + 1] = j;
                tmpn++;
                j = h;
                splits++;
            }
            for (size_t k = 0; k < tmpn; k++) {
                bs[2 * k] = tb[2 * (tmpn - 1 - k)];
                bs[2 * k + 1] = tb[2 * (tmpn - 1 - k) + 1];
            }
            np = tmpn;
        }
    }
    for (size_t k = 0; k < np; k++) {
        ct_val_t *piece = ct_val_str_ref(E->a, s + bs[2 * k], bs[2 * k + 1] - bs[2 * k]);
        if (!piece || ct_list_push(E->a, l, piece)) return ev_oom(E);
    }
    *out = l;
    return 0;
}

static int str_replace(ev_t *E, int line, ct_val_t *self, ct_val_t *old, ct_val_t *new_,
                       ct_val_t *cnt, ct_val_t **out) {
    if (!old || !new_ || old->kind != CT_V_STR || new_->kind != CT_V_STR)
        return ev_fail(E, line, "replace() arguments must be strings");
    int64_t count = cnt && is_int_like(cnt) ? ival(cnt) : -1;
    ct_buf_t b;
    ct_buf_init(&b, CT_MAX_OUTPUT);
    const char *s = self->u.str.s;
    size_t n = self->u.str.len, i = 0;
    int rc = 0;
    int64_t done = 0;
    if (old->u.str.len == 0) {
        size_t l8;
        for (;;) {
            if (count < 0 || done < count) {
                rc = ct_buf_put(&b, new_->u.str.s, new_->u.str.len);
                done++;
            }
            if (rc || i >= n) break;
            u8_decode(s, n, i, &l8);
            rc = ct_buf_put(&b, s + i, l8);
            i += l8;
            if (rc) break;
        }
    } else {
        while (!rc && i <= n) {
            const char *hit = (count >= 0 && done >= count)
                                  ? NULL
                                  : memmem(s + i, n - i, old->u.str.s, old->u.str.len);
            if (!hit) {
                rc = ct_buf_put(&b, s + i, n - i);
                break;
            }
            size_t h = (size_t)(hit - s);
            rc = ct_buf_put(&b, s + i, h - i);
            if (!rc) rc = ct_buf_put(&b, new_->u.str.s, new_->u.str.len);
            i = h + old->u.str.len;
            done++;
        }
    }
    if (!rc && !(*out = mkstr(E, b.p ? b.p : "", b.len))) rc = SL_ENOMEM;
    ct_buf_free(&b);
    if (rc == SL_ENOMEM) return ev_oom(E);
    if (rc) return ev_fail(E, line, "string too long");
    return 0;
}

static int str_affix(ct_val_t *self, ct_val_t *x, int end) {
    if (x->kind != CT_V_STR || x->u.str.len > self->u.str.len) return 0;
    const char *p = end ? self->u.str.s + self->u.str.len - x->u.str.len : self->u.str.s;
    return memcmp(p, x->u.str.s, x->u.str.len) == 0;
}

static int join_strs(ev_t *E, int line, ct_val_t *sep, ct_val_t **items, size_t n, ct_val_t *attr,
                     ct_val_t **out) {
    ct_buf_t b;
    ct_buf_init(&b, CT_MAX_OUTPUT);
    int rc = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        ct_val_t *v = items[i];
        if (attr) rc = attr_path(E, line, v, attr, &v);
        if (!rc && i && sep) rc = ct_buf_put(&b, sep->u.str.s, sep->u.str.len);
        if (!rc) rc = ct_val_str_write(&b, v);
    }
    if (!rc && !(*out = mkstr(E, b.p ? b.p : "", b.len))) rc = SL_ENOMEM;
    ct_buf_free(&b);
    if (rc == SL_ENOMEM) return ev_oom(E);
    if (rc == SL_ETOOBIG) return ev_fail(E, line, "string too long");
    return rc;
}

static int call_str_method(ev_t *E, int line, const char *m, ct_val_t *self, const argv_t *A,
                           ct_val_t **out) {
    ct_val_t *a0 = arg_get(A, 0, NULL), *a1 = arg_get(A, 1, NULL);
    const char *s = self->u.str.s;
    size_t n = self->u.str.len;
    if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
        if (a0 && a0->kind == CT_V_NONE) a0 = NULL;
        int rc = arg_str(E, line, m, a0, "chars");
        if (rc) return rc;
        size_t b, e;
        str_strip(s, n, a0, m[0] == 'l' ? 1 : m[0] == 'r' ? 2 : 3, &b, &e);
        CHECK_ALLOC(*out = ct_val_str_ref(E->a, s + b, e - b));
        return 0;
    }
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
        int end = m[0] == 'e', res = 0;
        if (!a0) return ev_fail(E, line, "%s() takes at least 1 argument", m);
        if (a0->kind == CT_V_LIST && a0->is_tuple) {
            for (size_t i = 0; i < a0->u.list.n; i++)
                res |= str_affix(self, a0->u.list.items[i], end);
        } else if (a0->kind == CT_V_STR) {
            res = str_affix(self, a0, end);
        } else {
            return ev_fail(E, line, "%s first arg must be str or a tuple of str", m);
        }
        *out = ct_val_bool(res);
        return 0;
    }
    if (!strcmp(m, "split") || !strcmp(m, "rsplit"))
        return str_split(E, line, self, arg_get(A, 0, "sep"), arg_get(A, 1, "maxsplit"),
                         m[0] == 'r', out);
    if (!strcmp(m, "upper") || !strcmp(m, "lower") || !strcmp(m, "capitalize") ||
        !strcmp(m, "title")) {
        int mode = m[0] == 'l' ? 0 : m[0] == 'u' ? 1 : m[0] == 'c' ? 2 : 3;
        CHECK_ALLOC(*out = str_case(E, self, mode));
        return 0;
    }
    if (!strcmp(m, "swapcase")) {
        char *o = ct_arena_alloc(E->a, n + 1);
        CHECK_ALLOC(o);
        for (size_t i = 0; i < n; i++) o[i] = s[i] >= 'a' && s[i] <= 'z' ? up(s[i]) : lo(s[i]);
        CHECK_ALLOC(*out = ct_val_str_ref(E->a, o, n));
        return 0;
    }
    if (!strcmp(m, "replace")) return str_replace(E, line, self, a0, a1, arg_get(A, 2, NULL), out);
    if (!strcmp(m, "find") || !strcmp(m, "rfind") || !strcmp(m, "index") || !strcmp(m, "count")) {
        if (!a0 || a0->kind != CT_V_STR) return ev_fail(E, line, "%s() argument must be str", m);
        const char *p = a0->u.str.s;
        size_t pl = a0->u.str.len;
        if (!strcmp(m, "count")) {
            int64_t c = 0;
            if (pl == 0) {
                c = (int64_t)ct_utf8_len(s, n) + 1;
            } else {
                for (size_t i = 0; i + pl <= n;) {
                    const char *h = memmem(s + i, n - i, p, pl);
                    if (!h) break;
                    c++;
                    i = (size_t)(h - s) + pl;
                }
            }
            CHECK_ALLOC(*out = ct_val_int(E->a, c));
            return 0;
        }
        int64_t pos = -1;
        if (m[0] == 'r') {
            for (size_t k = n >= pl ? n - pl + 1 : 0; k-- > 0;)
                if (memcmp(s + k, p, pl) == 0) {
                    pos = (int64_t)ct_utf8_len(s, k);
                    break;
                }
        } else {
            const char *h = pl ? memmem(s, n, p, pl) : s;
            if (h) pos = (int64_t)ct_utf8_len(s, (size_t)(h - s));
        }
        if (pos < 0 && m[0] == 'i') return ev_fail(E, line, "substring not found");
        CHECK_ALLOC(*out = ct_val_int(E->a, pos));
        return 0;
    }
    if (!strcmp(m, "join")) {
        ct_val_t **items;
        size_t cnt;
        if (!a0) return ev_fail(E, line, "join() takes exactly one argument");
        int rc = iterate(E, line, a0, &items, &cnt);
        if (rc) return rc;
        for (size_t i = 0; i < cnt; i++)
            if (items[i]->kind != CT_V_STR)
                return ev_fail(E, line, "sequence item %zu: expected str instance, %s found", i,
                               ct_val_type_name(items[i]));
        return join_strs(E, line, self, items, cnt, NULL, out);
    }
    if (!strcmp(m, "format")) return brace_format(E, line, self, A, out);
    if (!strcmp(m, "splitlines")) {
        ct_val_t *l = ct_val_list(E->a, 0);
        CHECK_ALLOC(l);
        size_t i = 0;
        while (i < n) {
            size_t j = i;
            while (j < n && s[j] != '\n' && s[j] != '\r') j++;
            ct_val_t *piece = ct_val_str_ref(E->a, s + i, j - i);
            if (!piece || ct_list_push(E->a, l, piece)) return ev_oom(E);
            if (j < n && s[j] == '\r' && j + 1 < n && s[j + 1] == '\n') j++;
            i = j + 1;
        }
        *out = l;
        return 0;
    }
    if (!strncmp(m, "is", 2)) {
        int res = n > 0, cased = 0;
        size_t l;
        for (size_t i = 0; i < n; i += l) {
            uint32_t c = u8_decode(s, n, i, &l);
            int ascii_alpha = c < 0x80 && is_alpha((char)c), digit = c >= '0' && c <= '9';
            int l1_num = c == 0xB2 || c == 0xB3 || c == 0xB9 || (c >= 0xBC && c <= 0xBE);
            digit |= c == 0xB2 || c == 0xB3 || c == 0xB9; /* superscripts are digits */
            if (!strcmp(m, "isdigit")) res &= digit;
            if (!strcmp(m, "isalpha")) res &= ascii_alpha || (c >= 0x80 && word_cp(c) && !l1_num);
            if (!strcmp(m, "isalnum")) res &= ascii_alpha || digit || (c >= 0x80 && word_cp(c));
            if (!strcmp(m, "isspace")) res &= py_space(c);
            /* upper: no lowercase letter and at least one cased one; lower likewise */
            int is_up = cp_lower(c) != c, is_lo = cp_upper(c) != c || c == 0xDF;
            if (!strcmp(m, "isupper")) {
                res &= !is_lo;
                cased |= is_up;
            }
            if (!strcmp(m, "islower")) {
                res &= !is_up;
                cased |= is_lo;
            }
        }
        if (!strcmp(m, "isupper") || !strcmp(m, "islower")) res = res && cased;
        *out = ct_val_bool(res);
        return 0;
    }
    if (!strcmp(m, "removeprefix") || !strcmp(m, "removesuffix")) {
        if (!a0 || a0->kind != CT_V_STR) return ev_fail(E, line, "%s() argument must be str", m);
        int end = m[6] == 's';
        if (!str_affix(self, a0, end)) {
            *out = self;
            return 0;
        }
        CHECK_ALLOC(*out = ct_val_str_ref(E->a, end ? s : s + a0->u.str.len, n - a0->u.str.len));
        return 0;
    }
    return ev_fail(E, line, "unsupported string method '%s'", m);
}

/* ---- calls ------------------------------------------------------------------------------------
 */
static int call_macro(ev_t *E, int line, ct_val_t *mv, const argv_t *A, ct_val_t *caller,
                      ct_val_t **out) {
    const ct_stmt_t *def = mv->u.macro.def;
    if (E->depth > CT_MAX_DEPTH * 2) return ev_fail(E, line, "macro recursion too deep");
    if (A->nargs > def->nparams)
        return ev_fail(E, line, "macro '%s' takes not more than %zu argument(s)",
                       def->name ? def->name : "caller", def->nparams);
    ct_frame_t *f = frame_new(E, mv->u.macro.closure);
    CHECK_ALLOC(f);
    for (size_t i = 0; i < A->nkw; i++) {
        size_t k;
        for (k = 0; k < def->nparams; k++)
            if (strcmp(def->params[k], A->kwn[i]) == 0) break;
        if (k == def->nparams)
            return ev_fail(E, line, "macro '%s' takes no keyword argument '%s'",
                           def->name ? def->name : "caller", A->kwn[i]);
    }
    for (size_t k = 0; k < def->nparams; k++) {
        ct_val_t *v = arg_get(A, k, def->params[k]);
        if (!v && def->defaults[k]) {
            int rc = eval(E, f, def->defaults[k], &v);
            if (rc) return rc;
        }
        if (!v) CHECK_ALLOC(v = undef_msg(E, "'%.80s' is undefined", def->params[k]));
        if (ct_frame_set(E->a, f, def->params[k], v)) return ev_oom(E);
    }
    if (caller && ct_frame_set(E->a, f, "caller", caller)) return ev_oom(E);
    ct_buf_t cap, *saved = E->out;
    ct_buf_init(&cap, CT_MAX_OUTPUT);
    E->out = &cap;
    E->depth++;
    int rc = exec_body(E, f, &def->body);
    E->depth--;
    E->out = saved;
    E->brk = E->cont = 0;
    if (!rc && !(*out = mkstr(E, cap.p ? cap.p : "", cap.len))) rc = ev_oom(E);
    ct_buf_free(&cap);
    return rc;
}

static int call_global(ev_t *E, int line, const char *name, const argv_t *A, ct_val_t **out) {
    if (!strcmp(name, "raise_exception")) {
        ct_val_t *m = arg_get(A, 0, "message");
        ct_val_t *s = NULL;
        if (m && to_str(E, m, &s)) return SL_EINVAL;
        if (!E->err[0])
            snprintf(E->err, E->errlen, "%.*s",
                     s ? (int)(s->u.str.len > 400 ? 400 : s->u.str.len) : 0, s ? s->u.str.s : "");
        return SL_EINVAL;
    }
    if (!strcmp(name, "strftime_now")) {
        ct_val_t *fmt = arg_get(A, 0, "format");
        if (!fmt || fmt->kind != CT_V_STR)
            return ev_fail(E, line, "strftime_now(format) needs a string");
        if (memchr(fmt->u.str.s, 0, fmt->u.str.len) || fmt->u.str.len > 256)
            return ev_fail(E, line, "strftime_now: bad format");
        char tbuf[1024];
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t k = fmt->u.str.len ? strftime(tbuf, sizeof tbuf, fmt->u.str.s, &tm) : 0;
        CHECK_ALLOC(*out = mkstr(E, tbuf, k));
        return 0;
    }
    if (!strcmp(name, "namespace") || !strcmp(name, "dict")) {
        ct_val_t *d = ct_val_dict(E->a, 0);
        CHECK_ALLOC(d);
        d->is_ns = name[0] == 'n';
        for (size_t i = 0; i < A->nargs; i++) {
            if (!is_plain_dict(A->args[i]))
                return ev_fail(E, line, "%s() positional argument must be a dict", name);
            for (size_t k = 0; k < A->args[i]->u.dict.n; k++)
                if (ct_dict_set(E->a, d, A->args[i]->u.dict.keys[k], A->args[i]->u.dict.vals[k]))
                    return ev_oom(E);
        }
        for (size_t i = 0; i < A->nkw; i++) {
            ct_val_t *k = ct_val_str_ref(E->a, A->kwn[i], strlen(A->kwn[i]));
            if (!k || ct_dict_set(E->a, d, k, A->kwv[i])) return ev_oom(E);
        }
        *out = d;
        return 0;
    }
    if (!strcmp(name, "range")) {
        int64_t st = 0, sp = 0, step = 1;
        for (size_t i = 0; i < A->nargs; i++)
            if (!is_int_like(A->args[i]))
                return ev_fail(E, line, "range() arguments must be integers, not '%s'",
                               ct_val_type_name(A->args[i]));
        if (A->nargs == 1) {
            sp = ival(A->args[0]);
        } else if (A->nargs == 2 || A->nargs == 3) {
            st = ival(A->args[0]);
            sp = ival(A->args[1]);
            if (A->nargs == 3) step = ival(A->args[2]);
        } else {
            return ev_fail(E, line, "range expected 1 to 3 arguments, got %zu", A->nargs);
        }
        if (step == 0) return ev_fail(E, line, "range() arg 3 must not be zero");
        double cnt = ceil(((double)sp - (double)st) / (double)step);
        if (cnt < 0) cnt = 0;
        if (cnt > CT_MAX_RANGE)
            return ev_fail(E, line, "range too big: the sandbox blocks ranges larger than %d",
                           CT_MAX_RANGE);
        ct_val_t *l = ct_val_list(E->a, (size_t)cnt);
        CHECK_ALLOC(l);
        for (size_t i = 0; i < (size_t)cnt; i++)
            CHECK_ALLOC(l->u.list.items[l->u.list.n++] = ct_val_int(E->a, st + (int64_t)i * step));
        *out = l;
        return 0;
    }
    return ev_fail(E, line, "unsupported function '%s'", name);
}

static int call_value(ev_t *E, ct_frame_t *f, int line, ct_val_t *fn, ct_val_t **args, size_t nargs,
                      const char **kwn, ct_val_t **kwv, size_t nkw, ct_val_t **out) {
    argv_t A = {args, nargs, kwn, kwv, nkw};
    (void)f;
    *out = &ct_undef;
    if (fn->kind == CT_V_MACRO) {
        ct_val_t *caller = E->pending_caller;
        E->pending_caller = NULL;
        return call_macro(E, line, fn, &A, caller, out);
    }
    if (fn->kind == CT_V_UNDEF) return undef_fail(E, line, fn);
    if (fn->kind != CT_V_FUNC)
        return ev_fail(E, line, "'%s' object is not callable", ct_val_type_name(fn));
    ct_val_t *self = fn->u.func.self;
    const char *m = fn->u.func.name;
    if (!self) return call_global(E, line, m, &A, out);
    if (self->kind == CT_V_STR) return call_str_method(E, line, m, self, &A, out);
    if (self->is_loop) { /* loop.cycle(a, b, ...) */
        if (nargs == 0) return ev_fail(E, line, "no items for cycling given");
        ct_val_t *i0 = ct_dict_getn(self, "index0", 6);
        *out = args[i0 ? (size_t)ival(i0) % nargs : 0];
        return 0;
    }
    if (self->kind == CT_V_DICT) {
        if (!strcmp(m, "get")) {
            ct_val_t *k = arg_get(&A, 0, NULL), *d = arg_get(&A, 1, NULL);
            if (!k) return ev_fail(E, line, "get expected at least 1 argument, got 0");
            ct_val_t *v = ct_dict_get(self, k);
            *out = v ? v : d ? d : &ct_none;
            return 0;
        }
        ct_val_t *l = ct_val_list(E->a, self->u.dict.n);
        CHECK_ALLOC(l);
        for (size_t i = 0; i < self->u.dict.n; i++) {
            ct_val_t *it = m[0] == 'k'   ? self->u.dict.keys[i]
                           : m[0] == 'v' ? self->u.dict.vals[i]
                                         : tuple2(E, self->u.dict.keys[i], self->u.dict.vals[i]);
            CHECK_ALLOC(it);
            l->u.list.items[l->u.list.n++] = it;
        }
        l->view = m[0] == 'k' ? 1 : m[0] == 'v' ? 2 : 3;
        *out = l;
        return 0;
    }
    if (self->kind == CT_V_LIST) {
        ct_val_t *x = arg_get(&A, 0, NULL);
        if (!x) return ev_fail(E, line, "%s() takes exactly one argument", m);
        int64_t c = 0, pos = -1;
        for (size_t i = 0; i < self->u.list.n; i++) {
            if (ct_val_eq(self->u.list.items[i], x)) {
                c++;
                if (pos < 0) pos = (int64_t)i;
            }
        }
        if (!strcmp(m, "index") && pos < 0) return ev_fail(E, line, "value is not in list");
        CHECK_ALLOC(*out = ct_val_int(E->a, !strcmp(m, "index") ? pos : c));
        return 0;
    }
    return ev_fail(E, line, "unsupported method '%s'", m);
}

/* ---- tests ---------------------------------------------------------------------------------- */
static const char *const test_names[] = {
    "defined", "undefined",   "none",    "boolean",     "false",    "true",     "integer",  "float",
    "number",  "string",      "mapping", "iterable",    "sequence", "callable", "sameas",   "eq",
    "equalto", "==",          "ne",      "!=",          "lt",       "<",        "lessthan", "le",
    "<=",      "gt",          ">",       "greaterthan", "ge",       ">=",       "in",       "odd",
    "even",    "divisibleby", "lower",   "upper",       "escaped",  NULL};

int ct_test_known(const char *name) {
    return in_list(test_names, name);
}

static int apply_test(ev_t *E, int line, const char *t, ct_val_t *v, ct_val_t **args, size_t nargs,
                      int *res) {
    ct_val_t *a0 = nargs ? args[0] : NULL;
    int k = v->kind;
    static const char *const no_arg[] = {"defined", "undefined", "none",     "boolean",  "false",
                                         "true",    "integer",   "float",    "number",   "string",
                                         "mapping", "iterable",  "sequence", "callable", "odd",
                                         "even",    "lower",     "upper",    "escaped",  NULL};
    if (nargs && in_list(no_arg, t))
        return ev_fail(E, line, "test_%s() takes 1 positional argument but %zu were given", t,
                       nargs + 1);
    if (!strcmp(t, "defined"))
        *res = k != CT_V_UNDEF;
    else if (!strcmp(t, "undefined"))
        *res = k == CT_V_UNDEF;
    else if (!strcmp(t, "none"))
        *res = k == CT_V_NONE;
    else if (!strcmp(t, "boolean"))
        *res = k == CT_V_BOOL;
    else if (!strcmp(t, "false"))
        *res = k == CT_V_BOOL && !v->u.b;
    else if (!strcmp(t, "true"))
        *res = k == CT_V_BOOL && v->u.b;
    else if (!strcmp(t, "integer"))
        *res = k == CT_V_INT;
    else if (!strcmp(t, "float"))
        *res = k == CT_V_FLOAT;
    else if (!strcmp(t, "number"))
        *res = is_number(v);
    else if (!strcmp(t, "string"))
        *res = k == CT_V_STR;
    else if (!strcmp(t, "mapping"))
        *res = k == CT_V_DICT && !v->is_ns && !v->is_loop;
    else if (!strcmp(t, "iterable"))
        *res = k == CT_V_UNDEF || k == CT_V_STR || k == CT_V_LIST || is_plain_dict(v);
    else if (!strcmp(t, "sequence"))
        *res =
            k == CT_V_UNDEF || k == CT_V_STR || (k == CT_V_LIST && !v->is_gen) || is_plain_dict(v);
    else if (!strcmp(t, "callable"))
        *res = k == CT_V_FUNC || k == CT_V_MACRO || k == CT_V_UNDEF; /* Undefined has __call__ */
    else if (!strcmp(t, "escaped"))
        *res = 0;
    else if (!strcmp(t, "lower") || !strcmp(t, "upper")) {
        ct_val_t *s;
        if (to_str(E, v, &s)) return SL_EINVAL;
        argv_t A = {0};
        ct_val_t *r;
        int rc = call_str_method(E, line, t[0] == 'l' ? "islower" : "isupper", s, &A, &r);
        if (rc) return rc;
        *res = r->u.b;
    } else if (!strcmp(t, "odd") || !strcmp(t, "even") || !strcmp(t, "divisibleby")) {
        int64_t d = 2;
        if (t[0] == 'd') {
            if (!a0 || !is_int_like(a0)) return ev_fail(E, line, "divisibleby needs an integer");
            d = ival(a0);
            if (d == 0) return ev_fail(E, line, "integer division or modulo by zero");
        }
        if (!is_number(v)) return ev_fail(E, line, "test '%s' needs a number", t);
        if (v->kind == CT_V_FLOAT) { /* value % d == 1 (odd) / == 0, in floats */
            double fr = v->u.f - floor(v->u.f / (double)d) * (double)d;
            *res = t[0] == 'o' ? fr == 1.0 : fr == 0.0;
            return 0;
        }
        int64_t x = ival(v);
        int64_t r = d == -1 ? 0 : x % d;
        if (r != 0 && ((r < 0) != (d < 0))) r += d; /* Python modulo */
        *res = t[0] == 'o' ? r != 0 : r == 0;
    } else {
        if (!a0) return ev_fail(E, line, "test '%s' needs an argument", t);
        if (!strcmp(t, "sameas")) {
            /* identity: singletons, and equal ints/strings (CPython shares the
             * small values templates compare) */
            *res =
                v == a0 || ((k == CT_V_NONE || k == CT_V_BOOL || k == CT_V_INT || k == CT_V_STR) &&
                            k == a0->kind && ct_val_eq(v, a0));
            return 0;
        }
        int op = (!strcmp(t, "eq") || !strcmp(t, "equalto") || !strcmp(t, "=="))      ? CT_OP_EQ
                 : (!strcmp(t, "ne") || !strcmp(t, "!="))                             ? CT_OP_NE
                 : (!strcmp(t, "lt") || !strcmp(t, "<") || !strcmp(t, "lessthan"))    ? CT_OP_LT
                 : (!strcmp(t, "le") || !strcmp(t, "<="))                             ? CT_OP_LE
                 : (!strcmp(t, "gt") || !strcmp(t, ">") || !strcmp(t, "greaterthan")) ? CT_OP_GT
                 : (!strcmp(t, "ge") || !strcmp(t, ">="))                             ? CT_OP_GE
                                                                                      : CT_OP_IN;
        return compare(E, line, op, v, a0, res);
    }
    return 0;
}

/* ---- filters --------------------------------------------------------------------------------- */
static const char *const filter_names[] = {
    "abs",    "capitalize", "count",      "d",         "default", "dictsort", "e",
    "escape", "first",      "float",      "format",    "indent",  "int",      "items",
    "join",   "last",       "length",     "list",      "lower",   "map",      "max",
    "min",    "reject",     "rejectattr", "replace",   "reverse", "round",    "safe",
    "select", "selectattr", "sort",       "string",    "sum",     "title",    "tojson",
    "trim",   "unique",     "upper",      "wordcount", "center",  "attr",     NULL};

int ct_filter_known(const char *name) {
    return in_list(filter_names, name);
}

/* select/reject/selectattr/rejectattr */
static int filter_select(ev_t *E, ct_frame_t *f, int line, const char *name, ct_val_t *subj,
                         const argv_t *A, ct_val_t **out) {
    int by_attr = strstr(name, "attr") != NULL, keep = name[0] == 's';
    ct_val_t **items;
    size_t n;
    if (!ct_val_truthy(subj)) { /* jinja: "if value:" before iterating */
        CHECK_ALLOC(*out = ct_val_list(E->a, 0));
        (*out)->is_gen = 1;
        return 0;
    }
    if (lazy_input(E, subj, 0, out)) return *out ? 0 : ev_oom(E);
    int rc = iterate(E, line, subj, &items, &n);
    if (rc) return rc;
    size_t ai = 0;
    ct_val_t *attr = NULL;
    if (by_attr) {
        attr = arg_get(A, ai++, NULL);
        if (!attr || attr->kind != CT_V_STR)
            return ev_fail(E, line, "%s: missing attribute name", name);
    }
    ct_val_t *test = arg_get(A, ai++, NULL);
    if (test && test->kind != CT_V_STR)
        return ev_fail(E, line, "%s: test name must be a string", name);
    char tname[64] = "";
    if (test) {
        snprintf(tname, sizeof tname, "%.*s", (int)(test->u.str.len > 63 ? 63 : test->u.str.len),
                 test->u.str.s);
        if (!ct_test_known(tname))
            return ev_fail(E, line, "%s: unsupported test '%s'", name, tname);
    }
    ct_val_t *l = ct_val_list(E->a, 0);
    CHECK_ALLOC(l);
    (void)f;
    for (size_t i = 0; i < n; i++) {
        ct_val_t *v = items[i];
        if (attr && (rc = attr_path(E, line, v, attr, &v))) return rc;
        int res;
        if (test) {
            rc = apply_test(E, line, tname, v, A->nargs > ai ? A->args + ai : NULL,
                            A->nargs > ai ? A->nargs - ai : 0, &res);
            if (rc) return rc;
        } else {
            res = ct_val_truthy(v);
        }
        if (res == keep && ct_list_push(E->a, l, items[i])) return ev_oom(E);
    }
    l->is_gen = 1;
    *out = l;
    return 0;
}

static int filter_map(ev_t *E, ct_frame_t *f, int line, ct_val_t *subj, const argv_t *A,
                      ct_val_t **out) {
    ct_val_t **items;
    size_t n;
    if (!ct_val_truthy(subj)) { /* jinja: "if value:" before iterating */
        CHECK_ALLOC(*out = ct_val_list(E->a, 0));
        (*out)->is_gen = 1;
        return 0;
    }
    if (lazy_input(E, subj, 0, out)) return *out ? 0 : ev_oom(E);
    int rc = iterate(E, line, subj, &items, &n);
    if (rc) return rc;
    ct_val_t *attr = arg_get(A, SIZE_MAX, "attribute"), *def = arg_get(A, SIZE_MAX, "default");
    ct_val_t *fname = A->nargs ? A->args[0] : NULL;
    if (!attr && (!fname || fname->kind != CT_V_STR))
        return ev_fail(E, line, "map: expected attribute= or a filter name");
    if (attr && attr->kind != CT_V_STR) return ev_fail(E, line, "map: attribute must be a string");
    char fn[64] = "";
    if (!attr) {
        snprintf(fn, sizeof fn, "%.*s", (int)(fname->u.str.len > 63 ? 63 : fname->u.str.len),
                 fname->u.str.s);
        if (!ct_filter_known(fn)) return ev_fail(E, line, "map: unsupported filter '%s'", fn);
    }
    ct_val_t *l = ct_val_list(E->a, n);
    CHECK_ALLOC(l);
    for (size_t i = 0; i < n; i++) {
        ct_val_t *v = items[i];
        if (attr) {
            rc = attr_path(E, line, v, attr, &v);
            if (!rc && v->kind == CT_V_UNDEF && def) v = def;
        } else {
            rc = apply_filter(E, f, fn, line, v, A->args + 1, A->nargs - 1, A->kwn, A->kwv, A->nkw,
                              &v);
        }
        if (rc) return rc;
        l->u.list.items[l->u.list.n++] = v;
    }
    l->is_gen = 1;
    *out = l;
    return 0;
}

static int filter_indent(ev_t *E, int line, ct_val_t *s, const argv_t *A, ct_val_t **out) {
    ct_val_t *w = arg_get(A, 0, "width"), *first = arg_get(A, 1, "first"),
             *blank = arg_get(A, 2, "blank");
    ct_buf_t ind, b;
    ct_buf_init(&ind, 4096);
    ct_buf_init(&b, CT_MAX_OUTPUT);
    int rc = 0;
    if (!w) {
        rc = ct_buf_put(&ind, "    ", 4);
    } else if (w->kind == CT_V_STR) {
        rc = ct_buf_put(&ind, w->u.str.s, w->u.str.len);
    } else if (is_int_like(w) && ival(w) >= 0 && ival(w) < 1024) {
        for (int64_t i = 0; !rc && i < ival(w); i++) rc = ct_buf_putc(&ind, ' ');
    } else {
        rc = ev_fail(E, line, "indent: bad width");
    }
    const char *p = s->u.str.s;
    size_t n = s->u.str.len, i = 0;
    int first_line = 1;
    /* s += "\n"; lines = s.splitlines() */
    while (!rc && i <= n) {
        size_t j = i;
        while (j < n && p[j] != '\n') j++;
        if (j >= n && i >= n) break; /* trailing piece after the final newline */
        size_t ll = j - i;
        if (!first_line) {
            rc = ct_buf_putc(&b, '\n');
            if (!rc && (ll || (blank && ct_val_truthy(blank)))) rc = ct_buf_put(&b, ind.p, ind.len);
        } else if (first && ct_val_truthy(first)) {
            rc = ct_buf_put(&b, ind.p ? ind.p : "", ind.len);
        }
        if (!rc) rc = ct_buf_put(&b, p + i, ll);
        first_line = 0;
        i = j + 1;
    }
    if (!rc && !(*out = mkstr(E, b.p ? b.p : "", b.len))) rc = SL_ENOMEM;
    ct_buf_free(&ind);
    ct_buf_free(&b);
    if (rc == SL_ENOMEM) return ev_oom(E);
    if (rc == SL_ETOOBIG) return ev_fail(E, line, "string too long");
    return rc;
}

static int apply_filter(ev_t *E, ct_frame_t *f, const char *name, int line, ct_val_t *v,
                        ct_val_t **args, size_t nargs, const char **kwn, ct_val_t **kwv, size_t nkw,
                        ct_val_t **out) {
    argv_t A = {args, nargs, kwn, kwv, nkw};
    int rc = 0;
    ct_val_t **items = NULL;
    size_t n = 0;
    if (!strcmp(name, "safe")) /* Markup(value): a string */
        return to_str(E, v, out);
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        ct_val_t *dv = arg_get(&A, 0, "default_value"), *b = arg_get(&A, 1, "boolean");
        int use = v->kind == CT_V_UNDEF || (b && ct_val_truthy(b) && !ct_val_truthy(v));
        if (use) {
            if (dv) {
                *out = dv;
            } else {
                CHECK_ALLOC(*out = mkstr(E, "", 0));
            }
        } else {
            *out = v;
        }
        return 0;
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        int64_t len;
        if ((rc = length_of(E, line, v, &len))) return rc;
        CHECK_ALLOC(*out = ct_val_int(E->a, len));
        return 0;
    }
    if (!strcmp(name, "tojson")) {
        ct_val_t *ind = arg_get(&A, 0, "indent"), *sk = arg_get(&A, SIZE_MAX, "sort_keys");
        if (arg_get(&A, SIZE_MAX, "separators"))
            return ev_fail(E, line, "unsupported construct: tojson(separators=...)");
        int indent = -1;
        if (ind && ind->kind != CT_V_NONE) {
            if (!is_int_like(ind) || ival(ind) < 0 || ival(ind) > 64)
                return ev_fail(E, line, "tojson: indent must be a small integer");
            indent = (int)ival(ind);
        }
        ct_buf_t b;
        ct_buf_init(&b, CT_MAX_OUTPUT);
        rc = ct_val_json_write(&b, v, indent, sk && ct_val_truthy(sk), 0);
        if (!rc && !(*out = mkstr(E, b.p ? b.p : "", b.len))) rc = SL_ENOMEM;
        ct_buf_free(&b);
        if (rc == SL_ENOMEM) return ev_oom(E);
        if (rc == SL_ETOOBIG) return ev_fail(E, line, "tojson: output too long");
        if (rc)
            return ev_fail(E, line, "tojson: object of type %s is not JSON serializable",
                           ct_val_type_name(v));
        return 0;
    }
    if (!strcmp(name, "items")) {
        if (v->kind == CT_V_UNDEF) {
            CHECK_ALLOC(*out = ct_val_list(E->a, 0));
            (*out)->is_gen = 1;
            return 0;
        }
        if (lazy_input(E, v, 1, out)) return *out ? 0 : ev_oom(E);
        argv_t none = {0};
        ct_val_t *fn = ct_val_func(E->a, "items", v);
        CHECK_ALLOC(fn);
        if ((rc = call_value(E, f, line, fn, none.args, 0, NULL, NULL, 0, out))) return rc;
        (*out)->is_gen = 1;
        return 0;
    }
    if (!strcmp(name, "dictsort")) {
        if (!is_plain_dict(v)) return ev_fail(E, line, "dictsort: can only sort a mapping");
        ct_val_t *cs = arg_get(&A, 0, "case_sensitive"), *by = arg_get(&A, 1, "by"),
                 *rev = arg_get(&A, 2, "reverse");
        ct_val_t *fn = ct_val_func(E->a, "items", v), *l;
        CHECK_ALLOC(fn);
        if ((rc = call_value(E, f, line, fn, NULL, 0, NULL, NULL, 0, &l))) return rc;
        int byv = 0;
        if (by) {
            if (by->kind == CT_V_STR && by->u.str.len == 5 && !memcmp(by->u.str.s, "value", 5))
                byv = 1;
            else if (!(by->kind == CT_V_STR && by->u.str.len == 3 &&
                       !memcmp(by->u.str.s, "key", 3)))
                return ev_fail(E, line,
                               "dictsort: you can only sort by either \"key\" or \"value\"");
        }
        sortctx_t S = {E, line, cs && ct_val_truthy(cs), byv, NULL, 0};
        if ((rc = sort_items(&S, l->u.list.items, l->u.list.n, rev && ct_val_truthy(rev))))
            return rc;
        l->view = 0;
        *out = l;
        return 0;
    }
    if (!strcmp(name, "select") || !strcmp(name, "reject") || !strcmp(name, "selectattr") ||
        !strcmp(name, "rejectattr"))
        return filter_select(E, f, line, name, v, &A, out);
    if (!strcmp(name, "map")) return filter_map(E, f, line, v, &A, out);
    if (!strcmp(name, "attr")) {
        ct_val_t *nm = arg_get(&A, 0, "name");
        if (!nm || nm->kind != CT_V_STR) return ev_fail(E, line, "attr: name must be a string");
        char *s = ct_arena_strndup(E->a, nm->u.str.s, nm->u.str.len);
        CHECK_ALLOC(s);
        return get_attr(E, line, v, s, out);
    }
    if (!strcmp(name, "list")) {
        if ((rc = iterate(E, line, v, &items, &n))) return rc;
        CHECK_ALLOC(*out = list_from(E, items, n));
        return 0;
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        if (name[0] == 'l' && v->kind == CT_V_LIST && v->is_gen)
            return ev_fail(E, line, "'generator' object is not reversible");
        if ((rc = iterate(E, line, v, &items, &n))) return rc;
        *out = n ? items[name[0] == 'f' ? 0 : n - 1] : &ct_undef;
        return 0;
    }
    if (!strcmp(name, "reverse")) {
        if ((rc = iterate(E, line, v, &items, &n))) return rc;
        ct_val_t *l = ct_val_list(E->a, n);
        CHECK_ALLOC(l);
        for (size_t i = 0; i < n; i++) l->u.list.items[i] = items[n - 1 - i];
        l->u.list.n = n;
        if (v->kind == CT_V_STR) return join_strs(E, line, NULL, l->u.list.items, n, NULL, out);
        l->is_gen = 1; /* a list_reverseiterator */
        *out = l;
        return 0;
    }
    if (!strcmp(name, "sort") || !strcmp(name, "unique") || !strcmp(name, "min") ||
        !strcmp(name, "max")) {
        int is_sort = name[0] == 's', is_uniq = name[0] == 'u';
        ct_val_t *rev = is_sort ? arg_get(&A, 0, "reverse") : NULL;
        ct_val_t *cs = arg_get(&A, is_sort ? 1 : 0, "case_sensitive");
        ct_val_t *attr = arg_get(&A, is_sort ? 2 : 1, "attribute");
        if (attr && attr->kind != CT_V_STR)
            return ev_fail(E, line, "%s: attribute must be a string", name);
        if (is_uniq && lazy_input(E, v, 0, out)) return *out ? 0 : ev_oom(E);
        if ((rc = iterate(E, line, v, &items, &n))) return rc;
        ct_val_t *l = list_from(E, items, n);
        CHECK_ALLOC(l);
        sortctx_t S = {E, line, cs && ct_val_truthy(cs), -1, attr, 0};
        if (is_uniq) {
            ct_val_t *u = ct_val_list(E->a, 0), *seenk = ct_val_list(E->a, 0);
            CHECK_ALLOC(u);
            CHECK_ALLOC(seenk);
            for (size_t i = 0; i < n; i++) {
                ct_val_t *k;
                if (sort_key(&S, items[i], &k)) return S.E->err[0] ? SL_EINVAL : ev_oom(E);
                if ((k->kind == CT_V_LIST && !k->is_tuple) || k->kind == CT_V_DICT)
                    return ev_fail(E, line, "unhashable type: '%s'", ct_val_type_name(k));
                int dup = 0;
                for (size_t j = 0; j < seenk->u.list.n && !dup; j++)
                    dup = ct_val_eq(seenk->u.list.items[j], k);
                if (!dup && (ct_list_push(E->a, seenk, k) || ct_list_push(E->a, u, items[i])))
                    return ev_oom(E);
            }
            u->is_gen = 1;
            *out = u;
            return 0;
        }
        if ((rc = sort_items(&S, l->u.list.items, n, rev && ct_val_truthy(rev)))) return rc;
        if (is_sort) {
            *out = l;
        } else {
            *out = n ? l->u.list.items[name[1] == 'i' ? 0 : n - 1] : &ct_undef;
        }
        return 0;
    }
    if (!strcmp(name, "sum")) {
        ct_val_t *attr = arg_get(&A, 0, "attribute"), *acc = arg_get(&A, 1, "start");
        if (!acc) CHECK_ALLOC(acc = ct_val_int(E->a, 0));
        if ((rc = iterate(E, line, v, &items, &n))) return rc;
        for (size_t i = 0; i < n; i++) {
            ct_val_t *x = items[i];
            if (attr && attr->kind == CT_V_STR && (rc = attr_path(E, line, x, attr, &x))) return rc;
            if ((rc = binop(E, line, CT_OP_ADD, acc, x, &acc))) return rc;
        }
        *out = acc;
        return 0;
    }
    if (!strcmp(name, "join")) {
        ct_val_t *sep = arg_get(&A, 0, "d"), *attr = arg_get(&A, 1, "attribute");
        if (sep && (rc = to_str(E, sep, &sep))) return rc;
        if (attr && attr->kind != CT_V_STR)
            return ev_fail(E, line, "join: attribute must be a string");
        if ((rc = iterate(E, line, v, &items, &n))) return rc;
        return join_strs(E, line, sep, items, n, attr, out);
    }
    if (!strcmp(name, "abs")) {
        if (!is_number(v))
            return ev_fail(E, line, "bad operand type for abs(): '%s'", ct_val_type_name(v));
        if (v->kind == CT_V_FLOAT)
            CHECK_ALLOC(*out = ct_val_float(E->a, fabs(v->u.f)));
        else if (ival(v) == INT64_MIN)
            return ev_fail(E, line, "integer overflow in abs");
        else
            CHECK_ALLOC(*out = ct_val_int(E->a, ival(v) < 0 ? -ival(v) : ival(v)));
        return 0;
    }
    if (!strcmp(name, "int") || !strcmp(name, "float")) {
        int want_int = name[0] == 'i';
        ct_val_t *def = arg_get(&A, 0, "default");
        double d = 0;
        int ok = 0;
        if (v->kind == CT_V_UNDEF) return undef_fail(E, line, v);
        if (is_number(v)) {
            d = fval(v);
            ok = 1;
            if (want_int && is_int_like(v)) {
                CHECK_ALLOC(*out = ct_val_int(E->a, ival(v)));
                return 0;
            }
        } else if (v->kind == CT_V_STR && v->u.str.len && v->u.str.len < 64) {
            char tmp[64], *end;
            size_t b, e;
            str_strip(v->u.str.s, v->u.str.len, NULL, 3, &b, &e);
            snprintf(tmp, sizeof tmp, "%.*s", (int)(e - b), v->u.str.s + b);
            if (want_int) {
                long long x = strtoll(tmp, &end, 10);
                if (*tmp && !*end) {
                    CHECK_ALLOC(*out = ct_val_int(E->a, x));
                    return 0;
                }
            }
            d = strtod(tmp, &end);
            ok = *tmp && !*end;
        }
        if (!ok) {
            if (def) {
                *out = def;
            } else {
                CHECK_ALLOC(*out = want_int ? ct_val_int(E->a, 0) : ct_val_float(E->a, 0.0));
            }
            return 0;
        }
        if (want_int) {
            if (!(d > -9.2e18 && d < 9.2e18)) return ev_fail(E, line, "int: value out of range");
            CHECK_ALLOC(*out = ct_val_int(E->a, (int64_t)d));
        } else {
            CHECK_ALLOC(*out = ct_val_float(E->a, d));
        }
        return 0;
    }
    if (!strcmp(name, "round")) {
        ct_val_t *p = arg_get(&A, 0, "precision"), *meth = arg_get(&A, 1, "method");
        if (!is_number(v)) return ev_fail(E, line, "round: value must be a number");
        int64_t prec = p && is_int_like(p) ? ival(p) : 0;
        if (prec < 0 || prec > 15) return ev_fail(E, line, "round: unsupported precision");
        double m = pow(10.0, (double)prec), x = fval(v) * m, r;
        const char *mm = meth && meth->kind == CT_V_STR ? meth->u.str.s : "common";
        if (is_int_like(v) && !strcmp(mm, "common")) { /* round(int, n) stays an int */
            CHECK_ALLOC(*out = ct_val_int(E->a, ival(v)));
            return 0;
        }
        if (!strncmp(mm, "ceil", 4))
            r = ceil(x);
        else if (!strncmp(mm, "floor", 5))
            r = floor(x);
        else
            r = nearbyint(x);
        CHECK_ALLOC(*out = ct_val_float(E->a, r / m));
        return 0;
    }
    if (!strcmp(name, "format")) {
        ct_val_t *s;
        if ((rc = to_str(E, v, &s))) return rc;
        return percent_format(E, line, s, args, nargs, out);
    }
    if ((!strcmp(name, "indent") || !strcmp(name, "center")) && v->kind != CT_V_STR) {
        if (v->kind == CT_V_UNDEF) return undef_fail(E, line, v);
        return ev_fail(E, line, "%s: expected a string, got '%s'", name, ct_val_type_name(v));
    }
    /* the rest work on str(value) */
    ct_val_t *s;
    if ((rc = to_str(E, v, &s))) return rc;
    if (!strcmp(name, "string")) {
        *out = s;
        return 0;
    }
    if (!strcmp(name, "trim")) {
        ct_val_t *chars = arg_get(&A, 0, "chars");
        argv_t B = {chars ? &chars : NULL, chars ? 1 : 0, NULL, NULL, 0};
        return call_str_method(E, line, "strip", s, &B, out);
    }
    if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "capitalize")) {
        argv_t B = {0};
        return call_str_method(E, line, name, s, &B, out);
    }
    if (!strcmp(name, "title")) {
        CHECK_ALLOC(*out = str_case(E, s, 4));
        return 0;
    }
    if (!strcmp(name, "replace"))
        return str_replace(E, line, s, arg_get(&A, 0, "old"), arg_get(&A, 1, "new"),
                           arg_get(&A, 2, "count"), out);
    if (!strcmp(name, "indent")) return filter_indent(E, line, s, &A, out);
    if (!strcmp(name, "escape") || !strcmp(name, "e")) {
        ct_buf_t b;
        ct_buf_init(&b, CT_MAX_OUTPUT);
        for (size_t i = 0; !rc && i < s->u.str.len; i++) {
            char c = s->u.str.s[i];
            rc = c == '&'    ? ct_buf_put(&b, "&amp;", 5)
                 : c == '<'  ? ct_buf_put(&b, "&lt;", 4)
                 : c == '>'  ? ct_buf_put(&b, "&gt;", 4)
                 : c == '"'  ? ct_buf_put(&b, "&#34;", 5)
                 : c == '\'' ? ct_buf_put(&b, "&#39;", 5)
                             : ct_buf_putc(&b, c);
        }
        if (!rc && !(*out = mkstr(E, b.p ? b.p : "", b.len))) rc = SL_ENOMEM;
        ct_buf_free(&b);
        if (rc == SL_ENOMEM) return ev_oom(E);
        if (rc) return ev_fail(E, line, "string too long");
        return 0;
    }
    if (!strcmp(name, "wordcount")) {
        int64_t c = 0;
        int inw = 0;
        size_t l;
        for (size_t i = 0; i < s->u.str.len; i += l) {
            uint32_t cp = u8_decode(s->u.str.s, s->u.str.len, i, &l);
            int w = word_cp(cp);
            if (w && !inw) c++;
            inw = w;
        }
        CHECK_ALLOC(*out = ct_val_int(E->a, c));
        return 0;
    }
    if (!strcmp(name, "center")) {
        ct_val_t *w = arg_get(&A, 0, "width");
        int64_t width = w && is_int_like(w) ? ival(w) : 80;
        int64_t len = (int64_t)ct_utf8_len(s->u.str.s, s->u.str.len);
        if (width > 100000) return ev_fail(E, line, "center: width too large");
        if (width <= len) {
            *out = s;
            return 0;
        }
        int64_t pad = width - len, left = pad / 2 + (pad & width & 1);
        ct_buf_t b;
        ct_buf_init(&b, CT_MAX_OUTPUT);
        for (int64_t i = 0; !rc && i < left; i++) rc = ct_buf_putc(&b, ' ');
        if (!rc) rc = ct_buf_put(&b, s->u.str.s, s->u.str.len);
        for (int64_t i = 0; !rc && i < pad - left; i++) rc = ct_buf_putc(&b, ' ');
        if (!rc && !(*out = mkstr(E, b.p ? b.p : "", b.len))) rc = SL_ENOMEM;
        ct_buf_free(&b);
        return rc ? ev_oom(E) : 0;
    }
    return ev_fail(E, line, "unsupported filter '%s'", name);
}

/* ---- statements ------------------------------------------------------------------------------ */
static int assign(ev_t *E, ct_frame_t *f, const ct_expr_t *target, ct_val_t *v, int line) {
    if (target->kind == CT_E_NAME) {
        if (ct_frame_set(E->a, f, target->name, v)) return ev_oom(E);
        return 0;
    }
    if (target->kind == CT_E_ATTR) {
        ct_val_t *ns = ct_frame_lookup(f, target->a->name);
        if (!ns || ns->kind != CT_V_DICT || !ns->is_ns)
            return ev_fail(E, line, "can't assign attribute on non-namespace object");
        ct_val_t *k = ct_val_str_ref(E->a, target->name, strlen(target->name));
        if (!k || ct_dict_set(E->a, ns, k, v)) return ev_oom(E);
        return 0;
    }
    /* tuple unpacking */
    ct_val_t **items;
    size_t n;
    int rc = iterate(E, line, v, &items, &n);
    if (rc) {
        E->err[0] = 0;
        return ev_fail(E, line, "cannot unpack non-iterable %s object", ct_val_type_name(v));
    }
    if (n != target->nargs)
        return ev_fail(E, line, "%s values to unpack (expected %zu, got %zu)",
                       n > target->nargs ? "too many" : "not enough", target->nargs, n);
    for (size_t i = 0; i < n; i++)
        if ((rc = assign(E, f, target->args[i], items[i], line))) return rc;
    return 0;
}

/* loop attribute names, shared by every loop object */
#define LOOP_KEY(s)                                                                                \
    {                                                                                              \
        .kind = CT_V_STR, .u.str = { s, sizeof s - 1 }                                             \
    }
static ct_val_t loop_keys[] = {LOOP_KEY("index"),     LOOP_KEY("index0"),  LOOP_KEY("revindex"),
                               LOOP_KEY("revindex0"), LOOP_KEY("first"),   LOOP_KEY("last"),
                               LOOP_KEY("length"),    LOOP_KEY("depth"),   LOOP_KEY("depth0"),
                               LOOP_KEY("previtem"),  LOOP_KEY("nextitem")};

/* Appends attribute k (an index into loop_keys; each set once per loop object). */
static int loop_set(ev_t *E, ct_val_t *d, int k, ct_val_t *v) {
    if (!v || d->u.dict.n >= d->u.dict.cap) return ev_oom(E);
    d->u.dict.keys[d->u.dict.n] = &loop_keys[k];
    d->u.dict.vals[d->u.dict.n++] = v;
    return 0;
}

static int exec_for(ev_t *E, ct_frame_t *f, const ct_stmt_t *s) {
    ct_val_t *it, **items;
    size_t n;
    /* jinja clears its "else" indicator at the end of each body run, so a
     * body left by continue or break does not count as an iteration */
    int run_else = 1;
    int rc = eval(E, f, s->expr, &it);
    if (!rc) rc = iterate(E, s->line, it, &items, &n);
    if (rc) return rc;
    if (s->cond) { /* filtered loops: loop.length counts the kept items */
        ct_val_t **kept = n ? ct_arena_alloc(E->a, n * sizeof *kept) : NULL;
        size_t nk = 0;
        if (n && !kept) return ev_oom(E);
        for (size_t i = 0; i < n; i++) {
            ct_frame_t *cf = frame_new(E, f);
            ct_val_t *c;
            if (!cf) return ev_oom(E);
            if ((rc = assign(E, cf, s->target, items[i], s->line))) return rc;
            if ((rc = eval(E, cf, s->cond, &c))) return rc;
            if (ct_val_truthy(c)) kept[nk++] = items[i];
        }
        items = kept;
        n = nk;
    }
    for (size_t i = 0; i < n; i++) {
        ct_frame_t *lf = frame_new(E, f);
        ct_val_t *loop = ct_val_dict(E->a, 12);
        if (!lf || !loop) return ev_oom(E);
        loop->is_loop = 1;
        int64_t len = (int64_t)n, idx = (int64_t)i;
        if ((rc = loop_set(E, loop, 0, ct_val_int(E->a, idx + 1))) ||
            (rc = loop_set(E, loop, 1, ct_val_int(E->a, idx))) ||
            (rc = loop_set(E, loop, 2, ct_val_int(E->a, len - idx))) ||
            (rc = loop_set(E, loop, 3, ct_val_int(E->a, len - idx - 1))) ||
            (rc = loop_set(E, loop, 4, ct_val_bool(i == 0))) ||
            (rc = loop_set(E, loop, 5, ct_val_bool(i + 1 == n))) ||
            (rc = loop_set(E, loop, 6, ct_val_int(E->a, len))) ||
            (rc = loop_set(E, loop, 7, ct_val_int(E->a, 1))) ||
            (rc = loop_set(E, loop, 8, ct_val_int(E->a, 0))))
            return rc;
        if (i > 0 && (rc = loop_set(E, loop, 9, items[i - 1]))) return rc;
        if (i + 1 < n && (rc = loop_set(E, loop, 10, items[i + 1]))) return rc;
        if (ct_frame_set(E->a, lf, "loop", loop)) return ev_oom(E);
        if ((rc = assign(E, lf, s->target, items[i], s->line))) return rc;
        if ((rc = exec_body(E, lf, &s->body))) return rc;
        if (E->brk) {
            E->brk = 0;
            break;
        }
        if (!E->cont) run_else = 0;
        E->cont = 0;
    }
    if (run_else && s->else_body.n) return exec_body(E, f, &s->else_body);
    return 0;
}

static int capture_body(ev_t *E, ct_frame_t *f, const ct_body_t *b, ct_val_t **out) {
    ct_buf_t cap, *saved = E->out;
    ct_buf_init(&cap, CT_MAX_OUTPUT);
    E->out = &cap;
    int rc = exec_body(E, f, b);
    E->out = saved;
    if (!rc && !(*out = mkstr(E, cap.p ? cap.p : "", cap.len))) rc = ev_oom(E);
    ct_buf_free(&cap);
    return rc;
}

static int exec_stmt(ev_t *E, ct_frame_t *f, const ct_stmt_t *s) {
    ct_val_t *v = NULL;
    int rc = 0;
    if (++E->steps > CT_MAX_STEPS)
        return ev_fail(E, s->line, "template exceeded the evaluation step limit (%u)",
                       CT_MAX_STEPS);
    switch (s->kind) {
    case CT_S_DATA:
        rc = ct_buf_put(E->out, s->text, s->len);
        break;
    case CT_S_OUTPUT:
        rc = eval(E, f, s->expr, &v);
        if (!rc) rc = ct_val_str_write(E->out, v);
        break;
    case CT_S_IF:
        rc = eval(E, f, s->expr, &v);
        if (!rc) rc = exec_body(E, f, ct_val_truthy(v) ? &s->body : &s->else_body);
        break;
    case CT_S_FOR:
        rc = exec_for(E, f, s);
        break;
    case CT_S_SET:
        rc = eval(E, f, s->expr, &v);
        if (!rc) rc = assign(E, f, s->target, v, s->line);
        break;
    case CT_S_SETBLOCK:
    case CT_S_FILTERBLOCK:
        rc = capture_body(E, f, &s->body, &v);
        if (!rc && s->expr) rc = eval_filter(E, f, s->expr, v, &v);
        if (rc) break;
        if (s->kind == CT_S_SETBLOCK)
            rc = assign(E, f, s->target, v, s->line);
        else
            rc = ct_val_str_write(E->out, v);
        break;
    case CT_S_MACRO: {
        ct_val_t *m = ct_arena_alloc(E->a, sizeof *m);
        if (!m) return ev_oom(E);
        m->kind = CT_V_MACRO;
        m->u.macro.def = s;
        m->u.macro.closure = f;
        if (ct_frame_set(E->a, f, s->name, m)) return ev_oom(E);
        break;
    }
    case CT_S_CALLBLOCK: {
        ct_val_t *caller = ct_arena_alloc(E->a, sizeof *caller);
        if (!caller) return ev_oom(E);
        caller->kind = CT_V_MACRO;
        caller->u.macro.def = s;
        caller->u.macro.closure = f;
        /* the call expression's callee receives caller */
        const ct_expr_t *call = s->expr;
        ct_val_t *fn, **args, **kwv;
        rc = eval(E, f, call->a, &fn);
        if (!rc) rc = eval_args(E, f, call, &args, &kwv);
        if (rc) break;
        if (fn->kind != CT_V_MACRO) {
            rc = ev_fail(E, s->line, "{%% call %%} needs a macro");
            break;
        }
        E->pending_caller = caller;
        rc = call_value(E, f, s->line, fn, args, call->nargs, call->kwnames, kwv, call->nkw, &v);
        E->pending_caller = NULL;
        if (!rc) rc = ct_val_str_write(E->out, v);
        break;
    }
    case CT_S_BREAK:
        E->brk = 1;
        break;
    case CT_S_CONTINUE:
        E->cont = 1;
        break;
    case CT_S_SCOPE: {
        ct_frame_t *sf = frame_new(E, f);
        if (!sf) return ev_oom(E);
        rc = exec_body(E, sf, &s->body);
        break;
    }
    default:
        rc = ev_fail(E, s->line, "unsupported statement");
    }
    if (rc == SL_ETOOBIG)
        return ev_fail(E, s->line, "rendered output exceeds %u MiB", CT_MAX_OUTPUT >> 20);
    if (rc == SL_ERANGE && !E->err[0])
        return ev_fail(E, s->line, "value nested too deeply to print");
    if (rc == SL_ENOMEM && !E->err[0]) return ev_oom(E);
    return rc;
}

static int exec_body(ev_t *E, ct_frame_t *f, const ct_body_t *b) {
    if (++E->depth > CT_MAX_DEPTH * 4) {
        E->depth--;
        return ev_fail(E, 0, "template nested too deeply");
    }
    int rc = 0;
    for (size_t i = 0; i < b->n && !rc; i++) {
        rc = exec_stmt(E, f, b->v[i]);
        if (E->brk || E->cont) break;
    }
    E->depth--;
    return rc;
}

int ct_eval_render(const ct_body_t *body, ct_arena_t *a, ct_frame_t *g, ct_buf_t *out, char *err,
                   size_t errlen) {
    ev_t E = {.a = a, .out = out, .err = err, .errlen = errlen};
    err[0] = 0;
    /* the template's own top-level scope sits above the globals */
    ct_frame_t *top = frame_new(&E, g);
    if (!top) return ev_oom(&E);
    int rc = exec_body(&E, top, body);
    if (rc && !err[0]) snprintf(err, errlen, "%s", sl_strerror(rc));
    return rc;
}
