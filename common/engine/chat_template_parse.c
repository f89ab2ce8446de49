/* chat_template_parse.c - recursive-descent parser for the Jinja subset.
 * Follows jinja2/parser.py's grammar and precedence (condexpr < or < and <
 * not < compare < + - < ~ < * / // % < ** < unary < postfix/filters) so that
 * templates parse as they do under jinja2. Unsupported tags, filters and
 * tests are load-time errors naming the construct and line. */
#include "common/engine/chat_template_internal.h"
#include "common/base/err.h"

#include <stdio.h>
#include <string.h>

typedef struct parser {
    ct_arena_t *a;
    const ct_toks_t *t;
    size_t i;
    int depth;
    int loops;
    char *err;
    size_t errlen;
} parser_t;

static ct_expr_t *parse_expr(parser_t *P, int with_cond);
static ct_expr_t *parse_or(parser_t *P);
static ct_expr_t *parse_unary(parser_t *P, int with_filter);
static ct_expr_t *parse_tuple(parser_t *P, int with_cond, int explicit_parens,
                              const char *end_name);
static int parse_body(parser_t *P, ct_body_t *body, const char *const *ends, const char **found);

static const ct_tok_t *cur(parser_t *P) {
    return &P->t->v[P->i];
}
static const ct_tok_t *peek(parser_t *P, size_t k) {
    size_t j = P->i + k;
    return j < P->t->n ? &P->t->v[j] : &P->t->v[P->t->n - 1];
}
static void adv(parser_t *P) {
    if (P->t->v[P->i].kind != CT_TOK_EOF) P->i++;
}

static const char *tok_desc(const ct_tok_t *t, char *buf, size_t n) {
    switch (t->kind) {
    case CT_TOK_EOF:
        return "end of template";
    case CT_TOK_DATA:
        return "template data";
    case CT_TOK_VAR_BEGIN:
        return "'{{'";
    case CT_TOK_VAR_END:
        return "end of print statement '}}'";
    case CT_TOK_BLOCK_BEGIN:
        return "'{%'";
    case CT_TOK_BLOCK_END:
        return "end of statement block '%}'";
    case CT_TOK_STRING:
        return "string literal";
    default:
        snprintf(buf, n, "'%.*s'", (int)(t->len > 40 ? 40 : t->len), t->s);
        return buf;
    }
}

static void *fail(parser_t *P, const char *fmt, const char *arg) {
    if (!P->err[0]) {
        char m[256];
        snprintf(m, sizeof m, fmt, arg);
        snprintf(P->err, P->errlen, "line %d: %s", cur(P)->line, m);
    }
    return NULL;
}

static void *fail_expect(parser_t *P, const char *what) {
    char b[64], m[160];
    snprintf(m, sizeof m, "expected %s, got %s", what, tok_desc(cur(P), b, sizeof b));
    return fail(P, "%s", m);
}

static int is_op(const ct_tok_t *t, const char *op) {
    size_t l = strlen(op);
    return t->kind == CT_TOK_OP && t->len == l && memcmp(t->s, op, l) == 0;
}
static int is_name(const ct_tok_t *t, const char *nm) {
    size_t l = strlen(nm);
    return t->kind == CT_TOK_NAME && t->len == l && memcmp(t->s, nm, l) == 0;
}
static int accept_op(parser_t *P, const char *op) {
    if (!is_op(cur(P), op)) return 0;
    adv(P);
    return 1;
}
static int accept_name(parser_t *P, const char *nm) {
    if (!is_name(cur(P), nm)) return 0;
    adv(P);
    return 1;
}
static int expect_op(parser_t *P, const char *op) {
    if (accept_op(P, op)) return 0;
    char w[16];
    snprintf(w, sizeof w, "'%s'", op);
    fail_expect(P, w);
    return SL_EINVAL;
}
static int expect_block_end(parser_t *P) {
    if (cur(P)->kind == CT_TOK_BLOCK_END) {
        adv(P);
        return 0;
    }
    fail_expect(P, "end of statement block '%}'");
    return SL_EINVAL;
}

static ct_expr_t *node(parser_t *P, ct_ekind_t k, int line) {
    ct_expr_t *e = ct_arena_alloc(P->a, sizeof *e);
    if (!e) return fail(P, "%s", "out of memory");
    e->kind = k;
    e->line = line;
    return e;
}

static const char *tok_name(parser_t *P, const ct_tok_t *t) {
    const char *s = ct_arena_strndup(P->a, t->s, t->len);
    if (!s) fail(P, "%s", "out of memory");
    return s;
}

/* Appends to a growable expr array kept in the arena. */
static int push_expr(parser_t *P, ct_expr_t ***arr, size_t *n, size_t *cap, ct_expr_t *e) {
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 4;
        ct_expr_t **v = ct_arena_alloc(P->a, nc * sizeof *v);
        if (!v) {
            fail(P, "%s", "out of memory");
            return SL_ENOMEM;
        }
        if (*n) memcpy(v, *arr, *n * sizeof *v);
        *arr = v;
        *cap = nc;
    }
    (*arr)[(*n)++] = e;
    return 0;
}

static int push_kw(parser_t *P, ct_expr_t *e, const char *name, ct_expr_t *v, size_t *cap) {
    if (e->nkw == *cap) {
        size_t nc = *cap ? *cap * 2 : 4;
        const char **kn = ct_arena_alloc(P->a, nc * sizeof *kn);
        ct_expr_t **kv = ct_arena_alloc(P->a, nc * sizeof *kv);
        if (!kn || !kv) {
            fail(P, "%s", "out of memory");
            return SL_ENOMEM;
        }
        if (e->nkw) {
            memcpy(kn, e->kwnames, e->nkw * sizeof *kn);
            memcpy(kv, e->kwargs, e->nkw * sizeof *kv);
        }
        e->kwnames = kn;
        e->kwargs = kv;
        *cap = nc;
    }
    e->kwnames[e->nkw] = name;
    e->kwargs[e->nkw++] = v;
    return 0;
}

/* (args, name=value, ...) after the '(' has been seen; fills e->args/kwargs. */
static int parse_call_args(parser_t *P, ct_expr_t *e) {
    size_t acap = 0, kcap = 0;
    if (expect_op(P, "(")) return SL_EINVAL;
    while (!is_op(cur(P), ")")) {
        if (e->nargs || e->nkw) {
            if (expect_op(P, ",")) return SL_EINVAL;
            if (is_op(cur(P), ")")) break;
        }
        if (is_op(cur(P), "*") || is_op(cur(P), "**")) {
            fail(P, "%s", "unsupported construct: *args / **kwargs in a call");
            return SL_EUNSUPPORTED;
        }
        if (cur(P)->kind == CT_TOK_NAME && is_op(peek(P, 1), "=")) {
            const char *nm = tok_name(P, cur(P));
            if (!nm) return SL_ENOMEM;
            adv(P);
            adv(P);
            ct_expr_t *v = parse_expr(P, 1);
            if (!v || push_kw(P, e, nm, v, &kcap)) return SL_EINVAL;
        } else {
            if (e->nkw) {
                fail(P, "%s", "positional argument after keyword argument");
                return SL_EINVAL;
            }
            ct_expr_t *v = parse_expr(P, 1);
            if (!v || push_expr(P, &e->args, &e->nargs, &acap, v)) return SL_EINVAL;
        }
    }
    return expect_op(P, ")");
}

static ct_expr_t *parse_primary(parser_t *P) {
    const ct_tok_t *t = cur(P);
    int line = t->line;
    ct_expr_t *e = NULL;
    if (t->kind == CT_TOK_NAME) {
        static const struct {
            const char *n;
            ct_val_t *v;
        } consts[] = {{"true", &ct_true},   {"True", &ct_true}, {"false", &ct_false},
                      {"False", &ct_false}, {"none", &ct_none}, {"None", &ct_none}};
        for (size_t k = 0; k < sizeof consts / sizeof consts[0]; k++) {
            if (is_name(t, consts[k].n)) {
                adv(P);
                e = node(P, CT_E_LIT, line);
                if (e) e->lit = consts[k].v;
                return e;
            }
        }
        e = node(P, CT_E_NAME, line);
        if (!e || !(e->name = tok_name(P, t))) return NULL;
        adv(P);
        return e;
    }
    if (t->kind == CT_TOK_STRING) {
        /* adjacent string literals concatenate */
        size_t total = 0, j = P->i;
        while (j < P->t->n && P->t->v[j].kind == CT_TOK_STRING) total += P->t->v[j++].len;
        char *s = ct_arena_alloc(P->a, total + 1);
        if (!s) return fail(P, "%s", "out of memory");
        size_t off = 0;
        while (cur(P)->kind == CT_TOK_STRING) {
            memcpy(s + off, cur(P)->s, cur(P)->len);
            off += cur(P)->len;
            adv(P);
        }
        e = node(P, CT_E_LIT, line);
        if (e && !(e->lit = ct_val_str_ref(P->a, s, total))) return fail(P, "%s", "out of memory");
        return e;
    }
    if (t->kind == CT_TOK_INT || t->kind == CT_TOK_FLOAT) {
        e = node(P, CT_E_LIT, line);
        if (!e) return NULL;
        e->lit = t->kind == CT_TOK_INT ? ct_val_int(P->a, t->i) : ct_val_float(P->a, t->f);
        if (!e->lit) return fail(P, "%s", "out of memory");
        adv(P);
        return e;
    }
    if (is_op(t, "(")) {
        adv(P);
        e = parse_tuple(P, 1, 1, NULL);
        if (!e || expect_op(P, ")")) return NULL;
        return e;
    }
    if (is_op(t, "[")) {
        adv(P);
        e = node(P, CT_E_LIST, line);
        if (!e) return NULL;
        size_t cap = 0;
        while (!is_op(cur(P), "]")) {
            if (e->nargs && expect_op(P, ",")) return NULL;
            if (is_op(cur(P), "]")) break;
            ct_expr_t *it = parse_expr(P, 1);
            if (!it || push_expr(P, &e->args, &e->nargs, &cap, it)) return NULL;
        }
        adv(P);
        return e;
    }
    if (is_op(t, "{")) {
        adv(P);
        e = node(P, CT_E_DICT, line);
        if (!e) return NULL;
        size_t cap = 0;
        while (!is_op(cur(P), "}")) {
            if (e->nargs && expect_op(P, ",")) return NULL;
            if (is_op(cur(P), "}")) break;
            ct_expr_t *k = parse_expr(P, 1);
            if (!k || expect_op(P, ":")) return NULL;
            ct_expr_t *v = parse_expr(P, 1);
            if (!v || push_expr(P, &e->args, &e->nargs, &cap, k) ||
                push_expr(P, &e->args, &e->nargs, &cap, v))
                return NULL;
        }
        adv(P);
        return e;
    }
    char b[64];
    return fail(P, "unexpected %s", tok_desc(t, b, sizeof b));
}

static ct_expr_t *parse_subscript(parser_t *P) {
    int line = cur(P)->line;
    ct_expr_t *parts[3] = {NULL, NULL, NULL};
    if (!is_op(cur(P), ":")) {
        ct_expr_t *e = parse_expr(P, 1);
        if (!e) return NULL;
        if (!is_op(cur(P), ":")) return e;
        parts[0] = e;
    }
    adv(P); /* first ':' */
    if (!is_op(cur(P), ":") && !is_op(cur(P), "]") && !is_op(cur(P), ",")) {
        if (!(parts[1] = parse_expr(P, 1))) return NULL;
    }
    if (accept_op(P, ":")) {
        if (!is_op(cur(P), "]") && !is_op(cur(P), ",")) {
            if (!(parts[2] = parse_expr(P, 1))) return NULL;
        }
    }
    ct_expr_t *s = node(P, CT_E_SLICE, line);
    if (!s) return NULL;
    s->a = parts[0];
    s->b = parts[1];
    s->c = parts[2];
    return s;
}

static ct_expr_t *parse_postfix(parser_t *P, ct_expr_t *e) {
    for (;;) {
        const ct_tok_t *t = cur(P);
        int line = t->line;
        if (is_op(t, ".")) {
            adv(P);
            const ct_tok_t *n = cur(P);
            if (n->kind == CT_TOK_NAME) {
                ct_expr_t *x = node(P, CT_E_ATTR, line);
                if (!x || !(x->name = tok_name(P, n))) return NULL;
                x->a = e;
                adv(P);
                e = x;
            } else if (n->kind == CT_TOK_INT) {
                ct_expr_t *x = node(P, CT_E_ITEM, line), *k = node(P, CT_E_LIT, line);
                if (!x || !k || !(k->lit = ct_val_int(P->a, n->i))) return NULL;
                x->a = e;
                x->b = k;
                adv(P);
                e = x;
            } else {
                return fail_expect(P, "attribute name");
            }
        } else if (is_op(t, "[")) {
            adv(P);
            ct_expr_t *x = node(P, CT_E_ITEM, line);
            if (!x) return NULL;
            if (is_op(cur(P), "]")) { /* x[] subscripts with an empty tuple, as in jinja */
                if (!(x->b = node(P, CT_E_TUPLE, line))) return NULL;
            } else if (!(x->b = parse_subscript(P))) {
                return NULL;
            }
            if (is_op(cur(P), ",")) return fail(P, "%s", "unsupported construct: tuple subscript");
            if (expect_op(P, "]")) return NULL;
            x->a = e;
            e = x;
        } else if (is_op(t, "(")) {
            ct_expr_t *x = node(P, CT_E_CALL, line);
            if (!x || parse_call_args(P, x)) return NULL;
            x->a = e;
            e = x;
        } else {
            return e;
        }
    }
}

static const char *parse_dotted_name(parser_t *P) {
    if (cur(P)->kind != CT_TOK_NAME) return fail_expect(P, "a name");
    const ct_tok_t *t = cur(P);
    size_t len = t->len;
    const char *start = t->s;
    adv(P);
    while (is_op(cur(P), ".") && peek(P, 1)->kind == CT_TOK_NAME) {
        adv(P);
        len = (size_t)(cur(P)->s + cur(P)->len - start);
        adv(P);
    }
    const char *s = ct_arena_strndup(P->a, start, len);
    if (!s) return fail(P, "%s", "out of memory");
    return s;
}

static ct_expr_t *parse_filter(parser_t *P, ct_expr_t *subject) {
    int line = cur(P)->line;
    const char *nm = parse_dotted_name(P);
    if (!nm) return NULL;
    ct_expr_t *f = node(P, CT_E_FILTER, line);
    if (!f) return NULL;
    f->unknown = !ct_filter_known(nm); /* see check_soft() */
    f->name = nm;
    f->a = subject;
    if (is_op(cur(P), "(") && parse_call_args(P, f)) return NULL;
    return f;
}

static ct_expr_t *parse_filter_expr(parser_t *P, ct_expr_t *e) {
    for (;;) {
        const ct_tok_t *t = cur(P);
        if (is_op(t, "|")) {
            adv(P);
            if (!(e = parse_filter(P, e))) return NULL;
        } else if (is_name(t, "is")) {
            int line = t->line;
            adv(P);
            int neg = accept_name(P, "not");
            const char *nm = parse_dotted_name(P);
            if (!nm) return NULL;
            ct_expr_t *x = node(P, CT_E_TEST, line);
            if (!x) return NULL;
            x->unknown = !ct_test_known(nm);
            x->name = nm;
            x->op = neg;
            x->a = e;
            const ct_tok_t *c = cur(P);
            if (is_op(c, "(")) {
                if (parse_call_args(P, x)) return NULL;
            } else if ((c->kind == CT_TOK_NAME || c->kind == CT_TOK_STRING ||
                        c->kind == CT_TOK_INT || c->kind == CT_TOK_FLOAT || is_op(c, "[") ||
                        is_op(c, "{")) &&
                       !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and")) {
                if (is_name(c, "is"))
                    return fail(P, "%s", "you cannot chain multiple tests with is");
                ct_expr_t *arg = parse_primary(P);
                if (!arg || !(arg = parse_postfix(P, arg))) return NULL;
                size_t cap = 0;
                if (push_expr(P, &x->args, &x->nargs, &cap, arg)) return NULL;
            }
            e = x;
        } else if (is_op(t, "(")) {
            ct_expr_t *x = node(P, CT_E_CALL, t->line);
            if (!x || parse_call_args(P, x)) return NULL;
            x->a = e;
            e = x;
        } else {
            return e;
        }
    }
}

static ct_expr_t *parse_unary(parser_t *P, int with_filter) {
    if (++P->depth > CT_MAX_DEPTH) return fail(P, "%s", "expression nested too deeply");
    const ct_tok_t *t = cur(P);
    ct_expr_t *e;
    if (is_op(t, "-") || is_op(t, "+")) {
        int neg = is_op(t, "-");
        adv(P);
        e = node(P, neg ? CT_E_NEG : CT_E_POS, t->line);
        if (e && !(e->a = parse_unary(P, 0))) e = NULL;
    } else {
        e = parse_primary(P);
    }
    if (e) e = parse_postfix(P, e);
    if (e && with_filter) e = parse_filter_expr(P, e);
    P->depth--;
    return e;
}

static ct_expr_t *binop(parser_t *P, ct_ekind_t k, int op, ct_expr_t *a, ct_expr_t *b, int line) {
    if (!a || !b) return NULL;
    ct_expr_t *e = node(P, k, line);
    if (!e) return NULL;
    e->op = op;
    e->a = a;
    e->b = b;
    return e;
}

static ct_expr_t *parse_pow(parser_t *P) {
    ct_expr_t *e = parse_unary(P, 1);
    while (e && is_op(cur(P), "**")) {
        int line = cur(P)->line;
        adv(P);
        e = binop(P, CT_E_BIN, CT_OP_POW, e, parse_unary(P, 1), line);
    }
    return e;
}

static ct_expr_t *parse_math2(parser_t *P) {
    ct_expr_t *e = parse_pow(P);
    for (;;) {
        if (!e) return NULL;
        const ct_tok_t *t = cur(P);
        int op = is_op(t, "*")    ? CT_OP_MUL
                 : is_op(t, "/")  ? CT_OP_DIV
                 : is_op(t, "//") ? CT_OP_FLOORDIV
                 : is_op(t, "%")  ? CT_OP_MOD
                                  : 0;
        if (!op) return e;
        adv(P);
        e = binop(P, CT_E_BIN, op, e, parse_pow(P), t->line);
    }
}

static ct_expr_t *parse_concat(parser_t *P) {
    ct_expr_t *e = parse_math2(P);
    while (e && is_op(cur(P), "~")) {
        int line = cur(P)->line;
        adv(P);
        e = binop(P, CT_E_BIN, CT_OP_CONCAT, e, parse_math2(P), line);
    }
    return e;
}

static ct_expr_t *parse_math1(parser_t *P) {
    ct_expr_t *e = parse_concat(P);
    for (;;) {
        if (!e) return NULL;
        const ct_tok_t *t = cur(P);
        int op = is_op(t, "+") ? CT_OP_ADD : is_op(t, "-") ? CT_OP_SUB : 0;
        if (!op) return e;
        adv(P);
        e = binop(P, CT_E_BIN, op, e, parse_concat(P), t->line);
    }
}

static ct_expr_t *parse_compare(parser_t *P) {
    ct_expr_t *first = parse_math1(P), *result = NULL, *left = first;
    for (;;) {
        if (!left) return NULL;
        const ct_tok_t *t = cur(P);
        int line = t->line, op = 0;
        if (is_op(t, "=="))
            op = CT_OP_EQ;
        else if (is_op(t, "!="))
            op = CT_OP_NE;
        else if (is_op(t, "<"))
            op = CT_OP_LT;
        else if (is_op(t, "<="))
            op = CT_OP_LE;
        else if (is_op(t, ">"))
            op = CT_OP_GT;
        else if (is_op(t, ">="))
            op = CT_OP_GE;
        else if (is_name(t, "in"))
            op = CT_OP_IN;
        else if (is_name(t, "not") && is_name(peek(P, 1), "in"))
            op = CT_OP_NOTIN;
        if (!op) return result ? result : first;
        adv(P);
        if (op == CT_OP_NOTIN) adv(P);
        ct_expr_t *right = parse_math1(P);
        ct_expr_t *cmp = binop(P, CT_E_CMP, op, left, right, line);
        if (!cmp) return NULL;
        /* a < b < c is (a < b) and (b < c) */
        result = result ? binop(P, CT_E_AND, 0, result, cmp, line) : cmp;
        left = right;
    }
}

static ct_expr_t *parse_not(parser_t *P) {
    if (is_name(cur(P), "not")) {
        int line = cur(P)->line;
        adv(P);
        if (++P->depth > CT_MAX_DEPTH) return fail(P, "%s", "expression nested too deeply");
        ct_expr_t *e = node(P, CT_E_NOT, line);
        if (e && !(e->a = parse_not(P))) e = NULL;
        P->depth--;
        return e;
    }
    return parse_compare(P);
}

static ct_expr_t *parse_and(parser_t *P) {
    ct_expr_t *e = parse_not(P);
    while (e && is_name(cur(P), "and")) {
        int line = cur(P)->line;
        adv(P);
        e = binop(P, CT_E_AND, 0, e, parse_not(P), line);
    }
    return e;
}

static ct_expr_t *parse_or(parser_t *P) {
    ct_expr_t *e = parse_and(P);
    while (e && is_name(cur(P), "or")) {
        int line = cur(P)->line;
        adv(P);
        e = binop(P, CT_E_OR, 0, e, parse_and(P), line);
    }
    return e;
}

static ct_expr_t *parse_expr(parser_t *P, int with_cond) {
    if (++P->depth > CT_MAX_DEPTH) return fail(P, "%s", "expression nested too deeply");
    ct_expr_t *e = parse_or(P);
    while (with_cond && e && is_name(cur(P), "if")) {
        int line = cur(P)->line;
        adv(P);
        ct_expr_t *c = node(P, CT_E_COND, line);
        if (!c || !(c->a = parse_or(P))) {
            e = NULL;
            break;
        }
        c->b = e;
        if (accept_name(P, "else") && !(c->c = parse_expr(P, 1))) {
            e = NULL;
            break;
        }
        e = c;
    }
    P->depth--;
    return e;
}

static int tuple_end(parser_t *P, const char *end_name) {
    const ct_tok_t *t = cur(P);
    return t->kind == CT_TOK_VAR_END || t->kind == CT_TOK_BLOCK_END || t->kind == CT_TOK_EOF ||
           is_op(t, ")") || (end_name && is_name(t, end_name));
}

static ct_expr_t *parse_tuple(parser_t *P, int with_cond, int explicit_parens,
                              const char *end_name) {
    int line = cur(P)->line;
    ct_expr_t *t = NULL, *first = NULL;
    size_t cap = 0;
    for (;;) {
        if (first && !accept_op(P, ",")) break;
        if (tuple_end(P, end_name)) break;
        ct_expr_t *e = with_cond ? parse_expr(P, 1) : parse_or(P);
        if (!e) return NULL;
        if (!first) {
            first = e;
            if (!is_op(cur(P), ",")) return first;
            if (!(t = node(P, CT_E_TUPLE, line))) return NULL;
        }
        if (push_expr(P, &t->args, &t->nargs, &cap, e)) return NULL;
    }
    if (t) return t;
    if (explicit_parens) return node(P, CT_E_TUPLE, line);
    return fail_expect(P, "an expression");
}

/* name | name, name | ns.attr (with_ns) */
static ct_expr_t *parse_target(parser_t *P, int with_ns, const char *end_name) {
    int line = cur(P)->line;
    ct_expr_t *t = NULL;
    size_t cap = 0;
    for (;;) {
        if (cur(P)->kind != CT_TOK_NAME) return fail_expect(P, "a variable name");
        ct_expr_t *n = node(P, CT_E_NAME, cur(P)->line);
        if (!n || !(n->name = tok_name(P, cur(P)))) return NULL;
        adv(P);
        if (with_ns && is_op(cur(P), ".") && peek(P, 1)->kind == CT_TOK_NAME) {
            adv(P);
            ct_expr_t *at = node(P, CT_E_ATTR, line);
            if (!at || !(at->name = tok_name(P, cur(P)))) return NULL;
            adv(P);
            at->a = n;
            return at;
        }
        if (!t && !is_op(cur(P), ",")) return n;
        if (!t && !(t = node(P, CT_E_TUPLE, line))) return NULL;
        if (push_expr(P, &t->args, &t->nargs, &cap, n)) return NULL;
        if (!accept_op(P, ",")) break;
        if (end_name && is_name(cur(P), end_name)) break;
    }
    return t;
}

static ct_stmt_t *stmt_new(parser_t *P, ct_skind_t k, int line) {
    ct_stmt_t *s = ct_arena_alloc(P->a, sizeof *s);
    if (!s) return fail(P, "%s", "out of memory");
    s->kind = k;
    s->line = line;
    return s;
}

static int body_push(parser_t *P, ct_body_t *b, ct_stmt_t *s) {
    if (b->n == b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 8;
        ct_stmt_t **v = ct_arena_alloc(P->a, nc * sizeof *v);
        if (!v) {
            fail(P, "%s", "out of memory");
            return SL_ENOMEM;
        }
        if (b->n) memcpy(v, b->v, b->n * sizeof *v);
        b->v = v;
        b->cap = nc;
    }
    b->v[b->n++] = s;
    return 0;
}

static ct_stmt_t *parse_if(parser_t *P, int line) {
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    static const char *const endif[] = {"endif", NULL};
    ct_stmt_t *s = stmt_new(P, CT_S_IF, line);
    const char *found = NULL;
    if (!s || !(s->expr = parse_tuple(P, 0, 0, NULL)) || expect_block_end(P)) return NULL;
    if (parse_body(P, &s->body, ends, &found)) return NULL;
    if (strcmp(found, "elif") == 0) {
        ct_stmt_t *e = parse_if(P, cur(P)->line);
        if (!e || body_push(P, &s->else_body, e)) return NULL;
        return s;
    }
    if (strcmp(found, "else") == 0) {
        if (expect_block_end(P) || parse_body(P, &s->else_body, endif, &found)) return NULL;
    }
    if (expect_block_end(P)) return NULL;
    return s;
}

static ct_stmt_t *parse_for(parser_t *P, int line) {
    static const char *const ends[] = {"else", "endfor", NULL};
    static const char *const endfor[] = {"endfor", NULL};
    ct_stmt_t *s = stmt_new(P, CT_S_FOR, line);
    const char *found = NULL;
    if (!s || !(s->target = parse_target(P, 0, "in"))) return NULL;
    if (!accept_name(P, "in")) return fail_expect(P, "'in'");
    if (!(s->expr = parse_tuple(P, 0, 0, "recursive"))) return NULL;
    if (accept_name(P, "if") && !(s->cond = parse_expr(P, 1))) return NULL;
    if (is_name(cur(P), "recursive")) return fail(P, "%s", "unsupported construct: recursive for");
    if (expect_block_end(P)) return NULL;
    P->loops++;
    int rc = parse_body(P, &s->body, ends, &found);
    P->loops--;
    if (rc) return NULL;
    if (strcmp(found, "else") == 0) {
        if (expect_block_end(P) || parse_body(P, &s->else_body, endfor, &found)) return NULL;
    }
    if (expect_block_end(P)) return NULL;
    return s;
}

static ct_stmt_t *parse_set(parser_t *P, int line) {
    static const char *const ends[] = {"endset", NULL};
    ct_stmt_t *s = stmt_new(P, CT_S_SET, line);
    const char *found;
    if (!s || !(s->target = parse_target(P, 1, NULL))) return NULL;
    if (accept_op(P, "=")) {
        if (!(s->expr = parse_tuple(P, 1, 0, NULL)) || expect_block_end(P)) return NULL;
        return s;
    }
    if (s->target->kind != CT_E_NAME) return fail_expect(P, "'='");
    s->kind = CT_S_SETBLOCK;
    if (is_op(cur(P), "|")) {
        adv(P);
        ct_expr_t *f = parse_filter(P, NULL);
        while (f && accept_op(P, "|")) f = parse_filter(P, f);
        if (!f) return NULL;
        s->expr = f;
    }
    if (expect_block_end(P) || parse_body(P, &s->body, ends, &found) || expect_block_end(P))
        return NULL;
    return s;
}

/* (a, b=default, ...) for macro and call signatures */
static int parse_signature(parser_t *P, ct_stmt_t *s) {
    size_t cap = 0, n = 0;
    ct_expr_t **names = NULL, **defs = NULL;
    size_t dcap = 0, dn = 0;
    if (expect_op(P, "(")) return SL_EINVAL;
    while (!is_op(cur(P), ")")) {
        if (n && expect_op(P, ",")) return SL_EINVAL;
        if (cur(P)->kind != CT_TOK_NAME) {
            fail_expect(P, "a parameter name");
            return SL_EINVAL;
        }
        ct_expr_t *nm = node(P, CT_E_NAME, cur(P)->line);
        if (!nm || !(nm->name = tok_name(P, cur(P)))) return SL_ENOMEM;
        adv(P);
        ct_expr_t *d = NULL;
        if (accept_op(P, "=") && !(d = parse_expr(P, 1))) return SL_EINVAL;
        if (push_expr(P, &names, &n, &cap, nm) || push_expr(P, &defs, &dn, &dcap, d))
            return SL_ENOMEM;
    }
    adv(P);
    s->nparams = n;
    if (n) {
        s->params = ct_arena_alloc(P->a, n * sizeof *s->params);
        if (!s->params) return SL_ENOMEM;
        for (size_t i = 0; i < n; i++) s->params[i] = names[i]->name;
    }
    s->defaults = defs;
    return 0;
}

static ct_stmt_t *parse_macro(parser_t *P, int line) {
    static const char *const ends[] = {"endmacro", NULL};
    ct_stmt_t *s = stmt_new(P, CT_S_MACRO, line);
    const char *found;
    if (!s) return NULL;
    if (cur(P)->kind != CT_TOK_NAME) return fail_expect(P, "a macro name");
    if (!(s->name = tok_name(P, cur(P)))) return NULL;
    adv(P);
    int saved = P->loops;
    P->loops = 0;
    int rc = parse_signature(P, s);
    if (!rc) rc = expect_block_end(P);
    if (!rc) rc = parse_body(P, &s->body, ends, &found);
    P->loops = saved;
    if (rc || expect_block_end(P)) return NULL;
    return s;
}

static ct_stmt_t *parse_callblock(parser_t *P, int line) {
    static const char *const ends[] = {"endcall", NULL};
    ct_stmt_t *s = stmt_new(P, CT_S_CALLBLOCK, line);
    const char *found;
    if (!s) return NULL;
    if (is_op(cur(P), "(") && parse_signature(P, s)) return NULL;
    if (!(s->expr = parse_expr(P, 1))) return NULL;
    if (s->expr->kind != CT_E_CALL) return fail(P, "%s", "expected a call after 'call'");
    if (expect_block_end(P) || parse_body(P, &s->body, ends, &found) || expect_block_end(P))
        return NULL;
    return s;
}

static ct_stmt_t *parse_stmt(parser_t *P) {
    const ct_tok_t *t = cur(P);
    int line = t->line;
    if (t->kind != CT_TOK_NAME) return fail_expect(P, "a statement name");
    char nm[32];
    snprintf(nm, sizeof nm, "%.*s", (int)(t->len < 31 ? t->len : 31), t->s);
    adv(P);
    if (strcmp(nm, "if") == 0) return parse_if(P, line);
    if (strcmp(nm, "for") == 0) return parse_for(P, line);
    if (strcmp(nm, "set") == 0) return parse_set(P, line);
    if (strcmp(nm, "macro") == 0) return parse_macro(P, line);
    if (strcmp(nm, "call") == 0) return parse_callblock(P, line);
    if (strcmp(nm, "break") == 0 || strcmp(nm, "continue") == 0) {
        if (!P->loops) return fail(P, "'%s' outside of a loop", nm);
        ct_stmt_t *s = stmt_new(P, nm[0] == 'b' ? CT_S_BREAK : CT_S_CONTINUE, line);
        if (!s || expect_block_end(P)) return NULL;
        return s;
    }
    if (strcmp(nm, "generation") == 0) {
        static const char *const ends[] = {"endgeneration", NULL};
        const char *found;
        ct_stmt_t *s = stmt_new(P, CT_S_SCOPE, line);
        if (!s || expect_block_end(P) || parse_body(P, &s->body, ends, &found) ||
            expect_block_end(P))
            return NULL;
        return s;
    }
    if (strcmp(nm, "filter") == 0) {
        static const char *const ends[] = {"endfilter", NULL};
        const char *found;
        ct_stmt_t *s = stmt_new(P, CT_S_FILTERBLOCK, line);
        if (!s) return NULL;
        ct_expr_t *f = parse_filter(P, NULL);
        while (f && accept_op(P, "|")) f = parse_filter(P, f);
        if (!f) return NULL;
        s->expr = f;
        if (expect_block_end(P) || parse_body(P, &s->body, ends, &found) || expect_block_end(P))
            return NULL;
        return s;
    }
    static const char *const known[] = {"elif",          "else",     "endif",   "endfor",
                                        "endset",        "endmacro", "endcall", "endfilter",
                                        "endgeneration", NULL};
    for (size_t k = 0; known[k]; k++)
        if (strcmp(nm, known[k]) == 0) return fail(P, "unexpected '%s'", nm);
    return fail(P, "unsupported tag '%s'", nm);
}

static int parse_body(parser_t *P, ct_body_t *body, const char *const *ends, const char **found) {
    if (++P->depth > CT_MAX_DEPTH) {
        fail(P, "%s", "blocks nested too deeply");
        return SL_ERANGE;
    }
    int rc = SL_EINVAL;
    for (;;) {
        const ct_tok_t *t = cur(P);
        if (t->kind == CT_TOK_EOF) {
            if (ends) {
                const char *want = ends[0];
                for (size_t k = 0; ends[k]; k++)
                    if (strncmp(ends[k], "end", 3) == 0) want = ends[k];
                fail(P, "unexpected end of template, expected '%s'", want);
                goto out;
            }
            rc = 0;
            goto out;
        }
        if (t->kind == CT_TOK_DATA) {
            ct_stmt_t *s = stmt_new(P, CT_S_DATA, t->line);
            if (!s) goto out;
            s->text = t->s;
            s->len = t->len;
            if (body_push(P, body, s)) goto out;
            adv(P);
            continue;
        }
        if (t->kind == CT_TOK_VAR_BEGIN) {
            adv(P);
            ct_stmt_t *s = stmt_new(P, CT_S_OUTPUT, t->line);
            if (!s || !(s->expr = parse_tuple(P, 1, 0, NULL))) goto out;
            if (cur(P)->kind != CT_TOK_VAR_END) {
                fail_expect(P, "end of print statement '}}'");
                goto out;
            }
            adv(P);
            if (body_push(P, body, s)) goto out;
            continue;
        }
        if (t->kind == CT_TOK_BLOCK_BEGIN) {
            adv(P);
            const ct_tok_t *n = cur(P);
            for (size_t k = 0; ends && ends[k]; k++) {
                if (is_name(n, ends[k])) {
                    *found = ends[k];
                    adv(P);
                    rc = 0;
                    goto out;
                }
            }
            ct_stmt_t *s = parse_stmt(P);
            if (!s || body_push(P, body, s)) goto out;
            continue;
        }
        fail_expect(P, "template data or a tag");
        goto out;
    }
out:
    P->depth--;
    return rc;
}

/* Unknown filters and tests: jinja rejects them when it compiles the template,
 * except inside an if statement or a conditional expression (a "soft" frame),
 * where the error waits until the branch runs. Loops, macros and block sets
 * open a new frame that is not soft again. check_* find the hard ones. */
static const ct_expr_t *check_expr(const ct_expr_t *e, int soft) {
    if (!e) return NULL;
    if (e->unknown && !soft) return e;
    int sub = soft || e->kind == CT_E_COND;
    const ct_expr_t *r;
    if ((r = check_expr(e->a, sub)) || (r = check_expr(e->b, sub)) || (r = check_expr(e->c, sub)))
        return r;
    for (size_t i = 0; i < e->nargs; i++)
        if ((r = check_expr(e->args[i], sub))) return r;
    for (size_t i = 0; i < e->nkw; i++)
        if ((r = check_expr(e->kwargs[i], sub))) return r;
    return NULL;
}

static const ct_expr_t *check_body(const ct_body_t *b, int soft) {
    const ct_expr_t *r = NULL;
    for (size_t i = 0; i < b->n && !r; i++) {
        const ct_stmt_t *s = b->v[i];
        switch (s->kind) {
        case CT_S_IF:
            if (!(r = check_expr(s->expr, 1)) && !(r = check_body(&s->body, 1)))
                r = check_body(&s->else_body, 1);
            break;
        case CT_S_FOR:
            if (!(r = check_expr(s->expr, soft)) && !(r = check_expr(s->cond, 0)) &&
                !(r = check_body(&s->body, 0)))
                r = check_body(&s->else_body, 0);
            break;
        case CT_S_OUTPUT:
        case CT_S_SET:
            r = check_expr(s->expr, soft);
            break;
        case CT_S_CALLBLOCK:
            if (!(r = check_expr(s->expr, soft))) r = check_body(&s->body, 0);
            break;
        case CT_S_SETBLOCK:
        case CT_S_FILTERBLOCK:
            if (!(r = check_expr(s->expr, soft))) r = check_body(&s->body, 0);
            break;
        case CT_S_MACRO:
            for (size_t k = 0; k < s->nparams && !r; k++) r = check_expr(s->defaults[k], 0);
            if (!r) r = check_body(&s->body, 0);
            break;
        case CT_S_SCOPE:
            r = check_body(&s->body, 0);
            break;
        default:
            break;
        }
    }
    return r;
}

int ct_parse(ct_arena_t *a, const ct_toks_t *toks, ct_body_t *out, char *err, size_t errlen) {
    parser_t P = {.a = a, .t = toks, .err = err, .errlen = errlen};
    err[0] = 0;
    memset(out, 0, sizeof *out);
    int rc = parse_body(&P, out, NULL, NULL);
    if (rc && !err[0]) snprintf(err, errlen, "line %d: syntax error", cur(&P)->line);
    const ct_expr_t *bad = rc ? NULL : check_body(out, 0);
    if (bad) {
        snprintf(err, errlen, "line %d: unsupported %s '%s'", bad->line,
                 bad->kind == CT_E_TEST ? "test" : "filter", bad->name);
        rc = SL_EUNSUPPORTED;
    }
    return rc ? SL_EINVAL : 0;
}
