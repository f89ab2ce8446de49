/* chat_template_internal.h - the Jinja subset behind chat_template.h.
 *
 * Shared between the lexer (chat_template_lex.c), parser (chat_template_parse.c),
 * values (chat_template_value.c) and evaluator (chat_template_eval.c). Not a
 * public header: only chat_template*.c include it.
 *
 * Memory: everything lives in arenas. A loaded template owns one arena holding
 * its tokens and AST (read-only after load, so renders may share it across
 * threads); each render owns another for its values, freed when it returns.
 * Both arenas have a byte cap, so a hostile template cannot exhaust memory.
 */
#ifndef SL_CHAT_TEMPLATE_INTERNAL_H
#define SL_CHAT_TEMPLATE_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- limits -------------------------------------------------------------- */
#define CT_MAX_DEPTH        128                /* AST nesting and macro calls */
#define CT_MAX_STEPS        (5u * 1000 * 1000) /* evaluator steps per render */
#define CT_MAX_OUTPUT       (16u << 20)        /* rendered bytes */
#define CT_MAX_RENDER_ARENA (64u << 20)        /* value memory per render */
#define CT_MAX_LOAD_ARENA   (64u << 20)        /* AST memory per template */
#define CT_MAX_RANGE        100000             /* range() length, as jinja's sandbox */
#define CT_ERR_LEN          512

/* ---- arena --------------------------------------------------------------- */
typedef struct ct_chunk ct_chunk_t;
typedef struct ct_arena {
    ct_chunk_t *head;
    size_t used; /* bytes handed out plus chunk overhead */
    size_t cap;  /* fail allocations beyond this */
} ct_arena_t;

void ct_arena_init(ct_arena_t *a, size_t cap);
/* Zeroed, 16-byte aligned; NULL when over the cap or out of memory. */
void *ct_arena_alloc(ct_arena_t *a, size_t n);
/* Copies n bytes and NUL-terminates; NULL on failure. */
char *ct_arena_strndup(ct_arena_t *a, const char *s, size_t n);
void ct_arena_release(ct_arena_t *a);

/* ---- growable byte buffer (malloc'd, capped) ------------------------------ */
typedef struct ct_buf {
    char *p;
    size_t len, cap, max;
} ct_buf_t;

void ct_buf_init(ct_buf_t *b, size_t max);
/* 0, SL_ENOMEM, or SL_ETOOBIG past b->max. */
int ct_buf_put(ct_buf_t *b, const char *s, size_t n);
int ct_buf_putc(ct_buf_t *b, char c);
int ct_buf_printf(ct_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ct_buf_free(ct_buf_t *b);

/* ---- tokens -------------------------------------------------------------- */
typedef enum ct_tok_kind {
    CT_TOK_EOF = 0,
    CT_TOK_DATA,
    CT_TOK_VAR_BEGIN,
    CT_TOK_VAR_END,
    CT_TOK_BLOCK_BEGIN,
    CT_TOK_BLOCK_END,
    CT_TOK_NAME,
    CT_TOK_STRING,
    CT_TOK_INT,
    CT_TOK_FLOAT,
    CT_TOK_OP
} ct_tok_kind_t;

typedef struct ct_tok {
    ct_tok_kind_t kind;
    int line;
    const char *s; /* text (decoded for strings, raw for data/names/ops) */
    size_t len;
    int64_t i;
    double f;
} ct_tok_t;

typedef struct ct_toks {
    ct_tok_t *v;
    size_t n, cap;
} ct_toks_t;

/* Tokenizes src with jinja's trim_blocks + lstrip_blocks rules as transformers
 * configures them. Tokens point into the arena. Returns 0 or SL_EINVAL with a
 * message in err. */
int ct_lex(ct_arena_t *a, const char *src, size_t len, ct_toks_t *out, char *err, size_t errlen);

/* ---- values ---------------------------------------------------------------- */
typedef enum ct_vkind {
    CT_V_UNDEF = 0,
    CT_V_NONE,
    CT_V_BOOL,
    CT_V_INT,
    CT_V_FLOAT,
    CT_V_STR,
    CT_V_LIST, /* also tuples (is_tuple) */
    CT_V_DICT, /* also namespace() objects (is_ns) and loop objects */
    CT_V_MACRO,
    CT_V_FUNC /* builtin global or bound method */
} ct_vkind_t;

typedef struct ct_val ct_val_t;
struct ct_stmt;
struct ct_frame;

struct ct_val {
    uint8_t kind;
    uint8_t is_tuple;
    uint8_t is_ns;
    uint8_t is_loop;
    uint8_t is_gen; /* list standing for a jinja generator (select, map, ...) */
    uint8_t view;   /* list from dict.keys() 1, .values() 2, .items() 3 */
    union {
        int b;
        int64_t i;
        double f;
        struct {
            const char *s;
            size_t len;
        } str;
        struct {
            ct_val_t **items;
            size_t n, cap;
        } list;
        struct {
            ct_val_t **keys; /* parallel arrays, insertion order */
            ct_val_t **vals;
            size_t n, cap;
        } dict;
        struct {
            const struct ct_stmt *def;
            struct ct_frame *closure;
            ct_val_t *caller; /* for {% call %} */
        } macro;
        struct {
            const char *name; /* builtin or method name */
            ct_val_t *self;   /* bound object, NULL for globals */
        } func;
        const char *undef_name; /* for messages */
    } u;
};

extern ct_val_t ct_undef, ct_none, ct_true, ct_false;

ct_val_t *ct_val_int(ct_arena_t *a, int64_t i);
ct_val_t *ct_val_float(ct_arena_t *a, double f);
ct_val_t *ct_val_bool(int b);
ct_val_t *ct_val_str(ct_arena_t *a, const char *s, size_t len);     /* copies */
ct_val_t *ct_val_str_ref(ct_arena_t *a, const char *s, size_t len); /* no copy */
ct_val_t *ct_val_undef(ct_arena_t *a, const char *name);
ct_val_t *ct_val_list(ct_arena_t *a, size_t cap);
ct_val_t *ct_val_dict(ct_arena_t *a, size_t cap);
ct_val_t *ct_val_func(ct_arena_t *a, const char *name, ct_val_t *self);
int ct_list_push(ct_arena_t *a, ct_val_t *l, ct_val_t *v);
/* Sets key (replacing an equal key's value in place, as Python dicts do). */
int ct_dict_set(ct_arena_t *a, ct_val_t *d, ct_val_t *k, ct_val_t *v);
ct_val_t *ct_dict_get(const ct_val_t *d, const ct_val_t *k);
ct_val_t *ct_dict_getn(const ct_val_t *d, const char *k, size_t klen);

int ct_val_truthy(const ct_val_t *v);
/* Python ==, with 1 == 1.0 == True. */
int ct_val_eq(const ct_val_t *x, const ct_val_t *y);
/* Python ordering: returns 0 and *cmp (<0, 0, >0), or SL_EINVAL when the types
 * do not order. */
int ct_val_cmp(const ct_val_t *x, const ct_val_t *y, int *cmp);
const char *ct_val_type_name(const ct_val_t *v);

/* str(v) and repr(v) as Python writes them, appended to b. */
int ct_val_str_write(ct_buf_t *b, const ct_val_t *v);
int ct_val_repr_write(ct_buf_t *b, const ct_val_t *v);
/* json.dumps(v, ensure_ascii=False, indent=indent (<0: none), sort_keys).
 * Returns SL_EINVAL for values JSON cannot hold (undefined, macros). */
int ct_val_json_write(ct_buf_t *b, const ct_val_t *v, int indent, int sort_keys, int depth);
/* Python float repr (shortest round-trip). */
int ct_float_repr(ct_buf_t *b, double f);

/* UTF-8 helpers: number of code points, and byte offset of code point idx. */
size_t ct_utf8_len(const char *s, size_t n);
size_t ct_utf8_offset(const char *s, size_t n, size_t idx);

/* ---- AST ------------------------------------------------------------------- */
typedef enum ct_ekind {
    CT_E_LIT = 1,
    CT_E_NAME,
    CT_E_LIST,
    CT_E_TUPLE,
    CT_E_DICT,   /* args: key, value, key, value... */
    CT_E_ATTR,   /* a.name */
    CT_E_ITEM,   /* a[b] */
    CT_E_SLICE,  /* a:b:c inside [], any may be NULL */
    CT_E_CALL,   /* a(args, kw=...) */
    CT_E_FILTER, /* a | name(args) ; a NULL inside {% filter %} */
    CT_E_TEST,   /* a is [not] name(args), op = negated */
    CT_E_NEG,
    CT_E_POS,
    CT_E_NOT,
    CT_E_BIN, /* op: + - * / // % ** ~ */
    CT_E_CMP, /* op: == != < <= > >= in notin */
    CT_E_AND,
    CT_E_OR,
    CT_E_COND /* b if a else c; c may be NULL */
} ct_ekind_t;

enum {
    CT_OP_ADD = 1,
    CT_OP_SUB,
    CT_OP_MUL,
    CT_OP_DIV,
    CT_OP_FLOORDIV,
    CT_OP_MOD,
    CT_OP_POW,
    CT_OP_CONCAT,
    CT_OP_EQ,
    CT_OP_NE,
    CT_OP_LT,
    CT_OP_LE,
    CT_OP_GT,
    CT_OP_GE,
    CT_OP_IN,
    CT_OP_NOTIN
};

typedef struct ct_expr ct_expr_t;
struct ct_expr {
    ct_ekind_t kind;
    int line;
    int op;
    ct_val_t *lit;
    const char *name; /* NUL-terminated */
    ct_expr_t *a, *b, *c;
    ct_expr_t **args;
    size_t nargs;
    const char **kwnames;
    ct_expr_t **kwargs;
    size_t nkw;
    int unknown; /* filter/test name not supported: an error when evaluated */
};

typedef enum ct_skind {
    CT_S_DATA = 1,
    CT_S_OUTPUT,
    CT_S_IF,        /* expr, body, else_body (elif = nested if) */
    CT_S_FOR,       /* target, expr (iterable), cond, body, else_body */
    CT_S_SET,       /* target, expr */
    CT_S_SETBLOCK,  /* target, body */
    CT_S_MACRO,     /* name, params, defaults, body */
    CT_S_CALLBLOCK, /* expr (the call), params, body (caller) */
    CT_S_BREAK,
    CT_S_CONTINUE,
    CT_S_SCOPE,      /* generation blocks: body rendered in place */
    CT_S_FILTERBLOCK /* expr: filter chain applied to the rendered body */
} ct_skind_t;

typedef struct ct_stmt ct_stmt_t;
typedef struct ct_body {
    ct_stmt_t **v;
    size_t n, cap;
} ct_body_t;

struct ct_stmt {
    ct_skind_t kind;
    int line;
    const char *text; /* data */
    size_t len;
    ct_expr_t *expr;
    ct_expr_t *target;
    ct_expr_t *cond;
    ct_body_t body, else_body;
    const char *name;
    const char **params;
    ct_expr_t **defaults; /* NULL entries: no default */
    size_t nparams;
};

/* Parses tokens into a body. Checks filter and test names against what the
 * evaluator knows, as jinja does at compile time. */
int ct_parse(ct_arena_t *a, const ct_toks_t *toks, ct_body_t *out, char *err, size_t errlen);

/* ---- evaluation ------------------------------------------------------------ */
typedef struct ct_frame ct_frame_t;
struct ct_frame {
    ct_frame_t *parent;
    const char **names;
    ct_val_t **vals;
    size_t n, cap;
};

int ct_frame_set(ct_arena_t *a, ct_frame_t *f, const char *name, ct_val_t *v);
ct_val_t *ct_frame_lookup(ct_frame_t *f, const char *name);

/* Renders body with globals in frame g into out. On failure returns a
 * negative code and writes a message into err. */
int ct_eval_render(const ct_body_t *body, ct_arena_t *a, ct_frame_t *g, ct_buf_t *out, char *err,
                   size_t errlen);

int ct_filter_known(const char *name);
int ct_test_known(const char *name);

#endif
