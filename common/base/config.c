/* config.c - table-driven flags and environment (see config.h).
 *
 * Values are applied in three passes over the table (defaults, environment,
 * argv), each through the same parser, so that a default is validated exactly
 * like user input and one error path names the flag and its bounds.
 */
#include "common/base/config.h"
#include "common/base/err.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *const sl_config_log_levels[] = {"error", "warn", "info", "debug", "trace", NULL};

static const char *type_names[] = {"bool", "int", "uint", "number", "string", "enum", "duration"};

static const char *flag_name(const sl_config_entry_t *e) {
    const char *f = e->flag ? e->flag : "";
    while (*f == '-') f++;
    return f;
}

/* The value's storage: e->ptr when set, else cfg + e->offset. */
static void *field(const sl_config_entry_t *e, void *cfg) {
    return e->ptr ? e->ptr : (char *)cfg + e->offset;
}

static const void *cfield(const sl_config_entry_t *e, const void *cfg) {
    return e->ptr ? (const void *)e->ptr : (const char *)cfg + e->offset;
}

/* True when every entry has a ptr, so no config struct is needed. */
static bool table_all_ptr(const sl_config_entry_t *table, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!table[i].ptr) return false;
    return true;
}

static void seterr(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t len, const char *fmt, ...) {
    if (!err || !len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

/* Describes the accepted values of e ("an integer in [0, 65535]"). */
static void describe_bounds(const sl_config_entry_t *e, char *buf, size_t len) {
    switch (e->type) {
    case SL_CONFIG_BOOL:
        snprintf(buf, len, "true or false");
        break;
    case SL_CONFIG_INT64:
        snprintf(buf, len, "an integer in [%" PRId64 ", %" PRId64 "]", e->min, e->max);
        break;
    case SL_CONFIG_UINT64:
        snprintf(buf, len, "an unsigned integer in [%" PRIu64 ", %" PRIu64 "]", e->umin, e->umax);
        break;
    case SL_CONFIG_DOUBLE:
        snprintf(buf, len, "a number in [%g, %g]", e->dmin, e->dmax);
        break;
    case SL_CONFIG_STRING:
        snprintf(buf, len, "a string");
        break;
    case SL_CONFIG_DURATION:
        snprintf(buf, len, "a duration in [%" PRId64 "ms, %" PRId64 "ms] (units ms, s, m, h)",
                 e->min, e->max);
        break;
    case SL_CONFIG_ENUM: {
        size_t off = 0;
        int w = snprintf(buf, len, "one of ");
        if (w > 0) off = (size_t)w < len ? (size_t)w : len;
        for (size_t i = 0; e->choices && e->choices[i] && off < len; i++) {
            w = snprintf(buf + off, len - off, "%s%s", i ? "|" : "", e->choices[i]);
            if (w < 0) break;
            off += (size_t)w < len - off ? (size_t)w : len - off;
        }
        break;
    }
    default:
        snprintf(buf, len, "?");
        break;
    }
}

static bool parse_bool(const char *s, bool *out) {
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

/* Parses a whole decimal (or 0x hex) integer; false on junk or overflow. */
static bool parse_i64(const char *s, int64_t *out) {
    if (!*s) return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno || end == s || *end) return false;
    *out = v;
    return true;
}

static bool parse_u64(const char *s, uint64_t *out) {
    const char *p = s;
    while (*p == ' ' || *p == '\t') p++;
    if (!*p || *p == '-') return false; /* strtoull accepts "-1" as 2^64-1 */
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end) return false;
    *out = v;
    return true;
}

static bool parse_double(const char *s, double *out) {
    if (!*s) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return false;
    *out = v;
    return true;
}

/* "250ms", "10s", "2m", "1h", "1.5s", "100" (ms). Rejects overflow. */
static bool parse_duration(const char *s, int64_t *out) {
    if (!*s) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v)) return false;
    double mult;
    if (!*end || strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "m") == 0)
        mult = 60000;
    else if (strcmp(end, "h") == 0)
        mult = 3600000;
    else
        return false;
    double ms = v * mult;
    if (!(ms >= -9.2e18 && ms <= 9.2e18)) return false;
    if (ms != floor(ms)) return false; /* sub-millisecond precision is not representable */
    *out = (int64_t)ms;
    return true;
}

/* Parses text for entry e into cfg. src describes where it came from
 * ("--flag", "SLUICE_X" or "default") for the error message. */
static int entry_apply(const sl_config_entry_t *e, void *cfg, const char *text, const char *src,
                       char *err, size_t errlen) {
    char bounds[256];
    int rc = 0;
    describe_bounds(e, bounds, sizeof bounds);
    const char *envdesc = e->env ? e->env : "";
    switch (e->type) {
    case SL_CONFIG_BOOL: {
        bool b;
        if (!parse_bool(text, &b)) {
            rc = SL_EINVAL;
            goto bad;
        }
        *(bool *)field(e, cfg) = b;
        break;
    }
    case SL_CONFIG_INT64:
    case SL_CONFIG_DURATION: {
        int64_t v;
        bool ok = e->type == SL_CONFIG_INT64 ? parse_i64(text, &v) : parse_duration(text, &v);
        if (!ok) {
            rc = SL_EINVAL;
            goto bad;
        }
        if (v < e->min || v > e->max) {
            rc = SL_ERANGE;
            goto bad;
        }
        *(int64_t *)field(e, cfg) = v;
        break;
    }
    case SL_CONFIG_UINT64: {
        uint64_t v;
        if (!parse_u64(text, &v)) {
            rc = SL_EINVAL;
            goto bad;
        }
        if (v < e->umin || v > e->umax) {
            rc = SL_ERANGE;
            goto bad;
        }
        *(uint64_t *)field(e, cfg) = v;
        break;
    }
    case SL_CONFIG_DOUBLE: {
        double v;
        if (!parse_double(text, &v)) {
            rc = SL_EINVAL;
            goto bad;
        }
        if (v < e->dmin || v > e->dmax) {
            rc = SL_ERANGE;
            goto bad;
        }
        *(double *)field(e, cfg) = v;
        break;
    }
    case SL_CONFIG_STRING: {
        char *copy = strdup(text);
        if (!copy) {
            seterr(err, errlen, "--%s: out of memory", flag_name(e));
            return SL_ENOMEM;
        }
        char **slot = (char **)field(e, cfg);
        free(*slot);
        *slot = copy;
        break;
    }
    case SL_CONFIG_ENUM: {
        int idx = -1;
        for (int i = 0; e->choices && e->choices[i]; i++) {
            if (strcasecmp(e->choices[i], text) == 0) {
                idx = i;
                break;
            }
        }
        if (idx < 0) {
            rc = SL_EINVAL;
            goto bad;
        }
        *(int *)field(e, cfg) = idx;
        break;
    }
    default:
        seterr(err, errlen, "--%s: bad table entry (type %d)", flag_name(e), (int)e->type);
        return SL_EINVAL;
    }
    return 0;
bad:
    seterr(err, errlen, "--%s%s%s: %s '%s' from %s; expected %s", flag_name(e),
           *envdesc ? " / " : "", envdesc, rc == SL_ERANGE ? "out-of-range value" : "invalid value",
           text, src, bounds);
    return rc;
}

static int entry_default(const sl_config_entry_t *e, void *cfg, char *err, size_t errlen) {
    if (e->type > SL_CONFIG_DURATION) {
        seterr(err, errlen, "--%s: bad table entry (type %d)", flag_name(e), (int)e->type);
        return SL_EINVAL;
    }
    if (e->type == SL_CONFIG_ENUM && (!e->choices || !e->choices[0])) {
        seterr(err, errlen, "--%s: enum entry without choices", flag_name(e));
        return SL_EINVAL;
    }
    if (e->def) return entry_apply(e, cfg, e->def, "the default", err, errlen);
    switch (e->type) {
    case SL_CONFIG_BOOL:
        *(bool *)field(e, cfg) = false;
        break;
    case SL_CONFIG_INT64:
    case SL_CONFIG_DURATION:
        *(int64_t *)field(e, cfg) = 0;
        break;
    case SL_CONFIG_UINT64:
        *(uint64_t *)field(e, cfg) = 0;
        break;
    case SL_CONFIG_DOUBLE:
        *(double *)field(e, cfg) = 0;
        break;
    case SL_CONFIG_ENUM:
        *(int *)field(e, cfg) = 0;
        break;
    case SL_CONFIG_STRING: {
        char **slot = (char **)field(e, cfg);
        free(*slot);
        *slot = NULL;
        break;
    }
    }
    return 0;
}

/* Finds the entry for a flag name of length len (without dashes). */
static const sl_config_entry_t *entry_find(const sl_config_entry_t *table, size_t n,
                                           const char *name, size_t len) {
    for (size_t i = 0; i < n; i++) {
        const char *f = flag_name(&table[i]);
        if (strlen(f) == len && memcmp(f, name, len) == 0) return &table[i];
    }
    return NULL;
}

int sl_config_set(const sl_config_entry_t *table, size_t n, void *cfg, const char *flag,
                  const char *value, char *err, size_t errlen) {
    if (!table || (!cfg && !table_all_ptr(table, n)) || !flag || !value) return SL_EINVAL;
    while (*flag == '-') flag++;
    const sl_config_entry_t *e = entry_find(table, n, flag, strlen(flag));
    if (!e) {
        seterr(err, errlen, "unknown flag --%s", flag);
        return SL_ENOTFOUND;
    }
    return entry_apply(e, cfg, value, "sl_config_set", err, errlen);
}

int sl_config_parse(const sl_config_entry_t *table, size_t n, void *cfg, int argc,
                    char *const argv[], sl_config_parse_out_t *out) {
    int rc = 0;
    sl_config_parse_out_t dummy;
    if (!out) out = &dummy;
    memset(out, 0, sizeof *out);
    if (!table || (!cfg && !table_all_ptr(table, n)) || argc < 0 || (argc > 0 && !argv)) {
        seterr(out->error, sizeof out->error, "sl_config_parse: invalid arguments");
        return SL_EINVAL;
    }
    char *err = out->error;
    size_t errlen = sizeof out->error;

    for (size_t i = 0; i < n; i++) {
        /* Duplicate flag names would make one entry unreachable. */
        const char *fi = flag_name(&table[i]);
        if (!*fi || entry_find(table, i, fi, strlen(fi))) {
            seterr(err, errlen, "config table: empty or duplicate flag '--%s'", fi);
            rc = SL_EINVAL;
            goto out;
        }
        rc = entry_default(&table[i], cfg, err, errlen);
        if (rc < 0) goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const sl_config_entry_t *e = &table[i];
        if (!e->env) continue;
        const char *v = getenv(e->env);
        if (!v || !*v) continue; /* empty env var = unset, as shells often export empties */
        char src[128];
        snprintf(src, sizeof src, "environment %s", e->env);
        rc = entry_apply(e, cfg, v, src, err, errlen);
        if (rc < 0) goto out;
    }
    bool flags_done = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!a) break;
        if (flags_done || a[0] != '-' || strcmp(a, "-") == 0) {
            if (out->nargs >= SL_CONFIG_MAX_ARGS) {
                seterr(err, errlen, "too many arguments (at most %d)", SL_CONFIG_MAX_ARGS);
                rc = SL_EINVAL;
                goto out;
            }
            out->args[out->nargs++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            flags_done = true;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            out->help = true;
            continue;
        }
        if (a[1] != '-') {
            seterr(err, errlen, "unknown option '%s' (flags are --name; see --help)", a);
            rc = SL_EINVAL;
            goto out;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const sl_config_entry_t *e = entry_find(table, n, name, nlen);
        bool negated = false;
        if (!e && nlen > 3 && strncmp(name, "no-", 3) == 0) {
            e = entry_find(table, n, name + 3, nlen - 3);
            if (e && e->type == SL_CONFIG_BOOL && !eq)
                negated = true;
            else
                e = NULL;
        }
        if (!e) {
            seterr(err, errlen, "unknown flag --%.*s (see --help)", (int)nlen, name);
            rc = SL_EINVAL;
            goto out;
        }
        const char *val;
        char src[160];
        snprintf(src, sizeof src, "flag --%s", flag_name(e));
        if (e->type == SL_CONFIG_BOOL && !eq) {
            val = negated ? "false" : "true";
        } else if (eq) {
            val = eq + 1;
        } else {
            /* "--a --b" is a missing value for --a, not the value "--b"
             * (use --a=--b for that). */
            if (i + 1 >= argc || !argv[i + 1] || strncmp(argv[i + 1], "--", 2) == 0) {
                char bounds[256];
                describe_bounds(e, bounds, sizeof bounds);
                seterr(err, errlen, "--%s needs a value: %s", flag_name(e), bounds);
                rc = SL_EINVAL;
                goto out;
            }
            val = argv[++i];
        }
        rc = entry_apply(e, cfg, val, src, err, errlen);
        if (rc < 0) goto out;
    }
out:
    return rc;
}

void sl_config_release(const sl_config_entry_t *table, size_t n, void *cfg) {
    if (!table) return;
    for (size_t i = 0; i < n; i++) {
        if (table[i].type != SL_CONFIG_STRING || (!cfg && !table[i].ptr)) continue;
        char **slot = (char **)field(&table[i], cfg);
        free(*slot);
        *slot = NULL;
    }
}

int sl_config_format(const sl_config_entry_t *e, const void *cfg, char *buf, size_t len) {
    if (!e || (!cfg && !e->ptr) || !buf || !len) return SL_EINVAL;
    int w;
    switch (e->type) {
    case SL_CONFIG_BOOL:
        w = snprintf(buf, len, "%s", *(const bool *)cfield(e, cfg) ? "true" : "false");
        break;
    case SL_CONFIG_INT64:
        w = snprintf(buf, len, "%" PRId64, *(const int64_t *)cfield(e, cfg));
        break;
    case SL_CONFIG_DURATION:
        w = snprintf(buf, len, "%" PRId64 "ms", *(const int64_t *)cfield(e, cfg));
        break;
    case SL_CONFIG_UINT64:
        w = snprintf(buf, len, "%" PRIu64, *(const uint64_t *)cfield(e, cfg));
        break;
    case SL_CONFIG_DOUBLE:
        w = snprintf(buf, len, "%g", *(const double *)cfield(e, cfg));
        break;
    case SL_CONFIG_STRING: {
        const char *s = *(char *const *)cfield(e, cfg);
        w = snprintf(buf, len, "%s", s ? s : "");
        break;
    }
    case SL_CONFIG_ENUM: {
        int idx = *(const int *)cfield(e, cfg);
        size_t nchoices = 0;
        while (e->choices && e->choices[nchoices]) nchoices++;
        w = snprintf(buf, len, "%s", idx >= 0 && (size_t)idx < nchoices ? e->choices[idx] : "?");
        break;
    }
    default:
        return SL_EINVAL;
    }
    if (w < 0) return SL_EINVAL;
    return (size_t)w < len ? 0 : SL_ETOOBIG;
}

char *sl_config_help(const sl_config_entry_t *table, size_t n, const char *prog,
                     const char *usage_args, const char *summary) {
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    if (!f) return NULL;
    fprintf(f, "Usage: %s [options]%s%s\n", prog ? prog : "sluice", usage_args ? " " : "",
            usage_args ? usage_args : "");
    if (summary) fprintf(f, "%s\n", summary);
    fprintf(f, "\nOptions (flag > environment > default):\n");
    for (size_t i = 0; table && i < n; i++) {
        const sl_config_entry_t *e = &table[i];
        char left[96];
        const char *tn = e->type <= SL_CONFIG_DURATION ? type_names[e->type] : "?";
        if (e->type == SL_CONFIG_BOOL)
            snprintf(left, sizeof left, "--[no-]%s", flag_name(e));
        else
            snprintf(left, sizeof left, "--%s %s", flag_name(e), tn);
        fprintf(f, "  %-28s %s\n", left, e->help ? e->help : "");
        fprintf(f, "  %-28s ", "");
        if (e->env) fprintf(f, "env %s, ", e->env);
        if (e->def) {
            fprintf(f, "default %s", *e->def ? e->def : "\"\"");
        } else if (e->type == SL_CONFIG_STRING) {
            fprintf(f, "default none");
        } else if (e->type == SL_CONFIG_ENUM && e->choices && e->choices[0]) {
            fprintf(f, "default %s", e->choices[0]);
        } else {
            fprintf(f, "default %s", e->type == SL_CONFIG_BOOL ? "false" : "0");
        }
        switch (e->type) {
        case SL_CONFIG_INT64:
            fprintf(f, ", range [%" PRId64 ", %" PRId64 "]", e->min, e->max);
            break;
        case SL_CONFIG_DURATION:
            fprintf(f, ", range [%" PRId64 "ms, %" PRId64 "ms], units ms|s|m|h", e->min, e->max);
            break;
        case SL_CONFIG_UINT64:
            fprintf(f, ", range [%" PRIu64 ", %" PRIu64 "]", e->umin, e->umax);
            break;
        case SL_CONFIG_DOUBLE:
            fprintf(f, ", range [%g, %g]", e->dmin, e->dmax);
            break;
        case SL_CONFIG_ENUM: {
            fprintf(f, ", one of ");
            for (size_t k = 0; e->choices && e->choices[k]; k++)
                fprintf(f, "%s%s", k ? "|" : "", e->choices[k]);
            break;
        }
        default:
            break;
        }
        fprintf(f, "\n");
    }
    fprintf(f, "  %-28s %s\n", "-h, --help", "Show this help and exit");
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}
