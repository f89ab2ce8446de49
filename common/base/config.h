/* config.h - one configuration table per program: flags, env vars, defaults.
 *
 * A program describes every setting once, in a static table of
 * sl_config_entry_t: the flag name, the environment variable (or none), the
 * type with its bounds or allowed values, the default, a help line, and where
 * the value goes (an offset into the program's own config struct, or a
 * pointer to a variable for entries that set `ptr`). Then
 *
 *     struct router_cfg cfg;
 *     sl_config_parse_out_t po;
 *     int rc = sl_config_parse(table, n, &cfg, argc, argv, &po);
 *     if (rc < 0) { fprintf(stderr, "%s\n", po.error); exit(2); }
 *     if (po.help) { print sl_config_help(...); exit(0); }
 *     ...
 *     sl_config_release(table, n, &cfg);
 *
 * Precedence: flag > environment > default. Flags are `--name value` or
 * `--name=value`; a bool is `--name` / `--no-name` (or `--name=true|false`).
 * `--` ends the flags; other arguments that do not start with `--` are
 * returned as positional arguments (for sub-commands). Unknown flags, missing
 * values, unparsable or out-of-range values (from a flag or the environment)
 * are errors whose message names the flag, the env var and the bounds. A bad
 * environment value is an error even when a flag overrides it, so a broken
 * deployment setting never hides. An empty environment variable counts as
 * unset.
 *
 * Value types and the C type at the entry's offset:
 *   SL_CONFIG_BOOL      bool
 *   SL_CONFIG_INT64     int64_t, within [min, max]
 *   SL_CONFIG_UINT64    uint64_t, within [umin, umax]
 *   SL_CONFIG_DOUBLE    double, finite, within [dmin, dmax]
 *   SL_CONFIG_STRING    char * (heap copy owned by the config struct; NULL if
 *                       the default is NULL and nothing was given)
 *   SL_CONFIG_ENUM      int, index into the NULL-terminated `choices`
 *   SL_CONFIG_DURATION  int64_t milliseconds, within [min, max]; input is a
 *                       number with an optional unit: ms, s, m, h (bare = ms)
 *
 * SL_CONFIG_COMMON(type, member) expands to the entries every service shares
 * (--namespace, --etcd, --nats, --log-level, --system-port), stored in a
 * sl_config_common_t embedded in the program's struct at `member`.
 *
 * Thread-safety: the table is read-only and may be shared; parse/release
 * write only the given config struct (and read the environment), so call them
 * from one thread at start-up.
 */
#ifndef SL_CONFIG_H
#define SL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum sl_config_type {
    SL_CONFIG_BOOL = 0,
    SL_CONFIG_INT64,
    SL_CONFIG_UINT64,
    SL_CONFIG_DOUBLE,
    SL_CONFIG_STRING,
    SL_CONFIG_ENUM,
    SL_CONFIG_DURATION
} sl_config_type_t;

typedef struct sl_config_entry {
    const char *flag; /* "system-port" (leading "--" optional) */
    const char *env;  /* "SLUICE_SYSTEM_PORT", or NULL for flag only */
    sl_config_type_t type;
    const char *def;            /* default as text, parsed like any input; NULL =
                                   false / 0 / NULL string / first enum choice */
    const char *help;           /* one line */
    size_t offset;              /* where the value goes in the config struct */
    void *ptr;                  /* if set, the value goes here instead (offset unused) */
    int64_t min, max;           /* INT64, DURATION bounds (inclusive) */
    uint64_t umin, umax;        /* UINT64 bounds (inclusive) */
    double dmin, dmax;          /* DOUBLE bounds (inclusive) */
    const char *const *choices; /* ENUM: allowed values, NULL-terminated */
} sl_config_entry_t;

/* Entry constructors, so that tables read as one line per setting. */
#define SL_CONFIG_BOOL_ENTRY(flag_, env_, T, field, def_, help_)                                   \
    {                                                                                              \
        .flag = (flag_), .env = (env_), .type = SL_CONFIG_BOOL, .def = (def_), .help = (help_),    \
        .offset = offsetof(T, field)                                                               \
    }
#define SL_CONFIG_INT64_ENTRY(flag_, env_, T, field, def_, lo, hi, help_)                          \
    {                                                                                              \
        .flag = (flag_), .env = (env_), .type = SL_CONFIG_INT64, .def = (def_), .help = (help_),   \
        .offset = offsetof(T, field), .min = (lo), .max = (hi)                                     \
    }
#define SL_CONFIG_UINT64_ENTRY(flag_, env_, T, field, def_, lo, hi, help_)                         \
    {                                                                                              \
        .flag = (flag_), .env = (env_), .type = SL_CONFIG_UINT64, .def = (def_), .help = (help_),  \
        .offset = offsetof(T, field), .umin = (lo), .umax = (hi)                                   \
    }
#define SL_CONFIG_DOUBLE_ENTRY(flag_, env_, T, field, def_, lo, hi, help_)                         \
    {                                                                                              \
        .flag = (flag_), .env = (env_), .type = SL_CONFIG_DOUBLE, .def = (def_), .help = (help_),  \
        .offset = offsetof(T, field), .dmin = (lo), .dmax = (hi)                                   \
    }
#define SL_CONFIG_STRING_ENTRY(flag_, env_, T, field, def_, help_)                                 \
    {                                                                                              \
        .flag = (flag_), .env = (env_), .type = SL_CONFIG_STRING, .def = (def_), .help = (help_),  \
        .offset = offsetof(T, field)                                                               \
    }
#define SL_CONFIG_ENUM_ENTRY(flag_, env_, T, field, def_, choices_, help_)                         \
    {                                                                                              \
        .flag = (flag_), .env = (env_), .type = SL_CONFIG_ENUM, .def = (def_), .help = (help_),    \
        .offset = offsetof(T, field), .choices = (choices_)                                        \
    }
#define SL_CONFIG_DURATION_ENTRY(flag_, env_, T, field, def_, lo, hi, help_)                       \
    {                                                                                              \
        .flag = (flag_), .env = (env_), .type = SL_CONFIG_DURATION, .def = (def_),                 \
        .help = (help_), .offset = offsetof(T, field), .min = (lo), .max = (hi)                    \
    }

/* Settings shared by every service. */
typedef struct sl_config_common {
    char *ns;            /* --namespace, SLUICE_NAMESPACE, "default" */
    char *etcd;          /* --etcd, SLUICE_ETCD, "http://127.0.0.1:2379" */
    char *nats;          /* --nats, SLUICE_NATS, "nats://127.0.0.1:4222" */
    int log_level;       /* --log-level, SLUICE_LOG: sl_log_level_t value */
    int64_t system_port; /* --system-port, SLUICE_SYSTEM_PORT: 0 = any free, -1 = off */
} sl_config_common_t;

/* "error", "warn", "info", "debug", "trace", NULL: index == sl_log_level_t. */
extern const char *const sl_config_log_levels[];

/* The shared entries as a table fragment. T is the program's struct type,
 * member the sl_config_common_t field inside it. SL_CONFIG_COMMON_CLIENT is
 * the part for tools that serve no HTTP (no --system-port). */
#define SL_CONFIG_COMMON_CLIENT(T, member)                                                         \
    SL_CONFIG_STRING_ENTRY("namespace", "SLUICE_NAMESPACE", T, member.ns, "default",               \
                           "Namespace: prefix of etcd keys and NATS subjects"),                    \
        SL_CONFIG_STRING_ENTRY("etcd", "SLUICE_ETCD", T, member.etcd, "http://127.0.0.1:2379",     \
                               "etcd endpoint (v3 HTTP gateway)"),                                 \
        SL_CONFIG_STRING_ENTRY("nats", "SLUICE_NATS", T, member.nats, "nats://127.0.0.1:4222",     \
                               "NATS server URL"),                                                 \
        SL_CONFIG_ENUM_ENTRY("log-level", "SLUICE_LOG", T, member.log_level, "info",               \
                             sl_config_log_levels, "Log level")
#define SL_CONFIG_COMMON(T, member)                                                                \
    SL_CONFIG_COMMON_CLIENT(T, member),                                                            \
        SL_CONFIG_INT64_ENTRY("system-port", "SLUICE_SYSTEM_PORT", T, member.system_port, "0", -1, \
                              65535,                                                               \
                              "Port of /metrics, /health, /live (0 = any free port, -1 = off)")

#define SL_CONFIG_MAX_ARGS 16

/* What sl_config_parse found besides the values. */
typedef struct sl_config_parse_out {
    bool help;                            /* --help or -h was given */
    size_t nargs;                         /* positional arguments, in order */
    const char *args[SL_CONFIG_MAX_ARGS]; /* pointers into argv */
    char error[512];                      /* on failure: one line, no newline */
} sl_config_parse_out_t;

/* Fills cfg from defaults, then the environment, then argv[1..argc-1].
 * cfg may be NULL when every entry has a ptr.
 * cfg must start zeroed (or released): string fields are freed before being
 * replaced. On success returns 0 (even with help set: the caller prints
 * sl_config_help() and exits 0). On failure returns SL_EINVAL (bad input, or a
 * table entry whose default does not parse), SL_ERANGE (out of bounds) or
 * SL_ENOMEM, with out->error naming the flag; cfg may then be partly filled
 * and must still be passed to sl_config_release(). More than
 * SL_CONFIG_MAX_ARGS positional arguments is SL_EINVAL. */
int sl_config_parse(const sl_config_entry_t *table, size_t n, void *cfg, int argc,
                    char *const argv[], sl_config_parse_out_t *out);

/* Sets one entry (looked up by flag name, with or without "--") from text, as
 * if given on the command line. Returns 0, SL_ENOTFOUND, SL_EINVAL, SL_ERANGE
 * or SL_ENOMEM; err (may be NULL) receives the message. */
int sl_config_set(const sl_config_entry_t *table, size_t n, void *cfg, const char *flag,
                  const char *value, char *err, size_t errlen);

/* Frees the string fields of cfg and sets them to NULL. Safe to call twice. */
void sl_config_release(const sl_config_entry_t *table, size_t n, void *cfg);

/* Returns the --help text generated from the table (heap string, caller
 * frees; NULL on ENOMEM):
 *   Usage: PROG [options] USAGE_ARGS
 *   SUMMARY
 *   Options:
 *     --flag VALUE   help
 *                    env X, default D, range [lo, hi]
 * usage_args and summary may be NULL. */
char *sl_config_help(const sl_config_entry_t *table, size_t n, const char *prog,
                     const char *usage_args, const char *summary);

/* Writes the effective value of an entry as text into buf (for start-up log
 * lines and tests). Returns 0, or SL_ETOOBIG if buf is too small. */
int sl_config_format(const sl_config_entry_t *e, const void *cfg, char *buf, size_t len);

#endif
