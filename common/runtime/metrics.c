/* metrics.c - Prometheus-style metric registry (see metrics.h).
 *
 * Structure changes (new family, new series) happen under one registry mutex;
 * values live in per-series atomics, so the hot path never locks. Doubles
 * (gauges, histogram sums) are stored as their bit patterns in uint64_t and
 * updated with compare-and-swap. Histogram buckets are kept non-cumulative and
 * summed at render time, which makes _count equal to the +Inf bucket by
 * construction.
 */
#include "common/runtime/metrics.h"
#include "common/base/err.h"
#include "common/base/log.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct metrics_series {
    metrics_family_t *family;
    char **values;     /* (n_labels) label values, raw */
    char *labels_text; /* k="escaped v",... pre-rendered for render(); "" if none */
    uint64_t value;    /* counter value, or gauge as double bits */
    uint64_t sum_bits; /* histogram: sum of observations as double bits */
    uint64_t *buckets; /* histogram: (n_bounds + 1) non-cumulative counts, last = +Inf */
};

struct metrics_family {
    metrics_registry_t *reg;
    metrics_type_t type;
    char *name;
    char *help;
    size_t n_labels;
    char *labels[METRICS_MAX_LABELS];
    size_t n_bounds;
    double *bounds; /* (n_bounds) finite upper bounds, increasing */
    struct metrics_series **series;
    size_t n_series, cap_series;
};

struct metrics_registry {
    pthread_mutex_t mu;
    metrics_family_t **families;
    size_t n_families, cap_families;
    metrics_collect_fn collect;
    void *collect_ud;
};

static const double default_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

static uint64_t dbits(double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bitsd(uint64_t u) {
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

/* ---- validation and escaping --------------------------------------------- */

static bool name_valid(const char *s, bool colon_ok) {
    if (!s || !*s) return false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool alpha =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon_ok && c == ':');
        bool digit = c >= '0' && c <= '9';
        if (!(alpha || (i > 0 && digit))) return false;
    }
    return true;
}

/* Appends s escaped for a label value (\\, \", \n) or a HELP line (\\, \n). */
static void write_escaped(FILE *f, const char *s, bool quote) {
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\\\", f);
        else if (*s == '\n')
            fputs("\\n", f);
        else if (quote && *s == '"')
            fputs("\\\"", f);
        else
            fputc(*s, f);
    }
}

void metrics_format_double(double v, char *buf, size_t len) {
    if (!buf || !len) return;
    if (isnan(v)) {
        snprintf(buf, len, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, len, "%s", v > 0 ? "+Inf" : "-Inf");
        return;
    }
    /* Go's strconv.FormatFloat(v, 'g', -1, 64), which Prometheus clients use:
     * the fewest significant digits that read back to the same double, in
     * exponent form when the decimal exponent is < -4 or >= 6 (Go's rule
     * for the shortest form), else in fixed form. */
    int prec = 1;
    for (; prec <= 17; prec++) {
        snprintf(buf, len, "%.*e", prec - 1, v);
        if (strtod(buf, NULL) == v) break;
    }
    if (prec > 17) prec = 17;
    const char *e = strchr(buf, 'e');
    int exp10 = e ? (int)strtol(e + 1, NULL, 10) : 0;
    if (exp10 < -4 || exp10 >= 6) return; /* keep the %e form */
    int decimals = prec - 1 - exp10;
    snprintf(buf, len, "%.*f", decimals > 0 ? decimals : 0, v);
}

/* ---- registry ---------------------------------------------------------------- */

metrics_registry_t *metrics_registry_new(void) {
    metrics_registry_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    if (pthread_mutex_init(&r->mu, NULL) != 0) {
        free(r);
        return NULL;
    }
    return r;
}

static void series_free(struct metrics_series *s, size_t n_labels) {
    if (!s) return;
    for (size_t i = 0; s->values && i < n_labels; i++) free(s->values[i]);
    free(s->values);
    free(s->labels_text);
    free(s->buckets);
    free(s);
}

static void family_free(metrics_family_t *f) {
    if (!f) return;
    for (size_t i = 0; i < f->n_series; i++) series_free(f->series[i], f->n_labels);
    free(f->series);
    for (size_t i = 0; i < f->n_labels; i++) free(f->labels[i]);
    free(f->bounds);
    free(f->name);
    free(f->help);
    free(f);
}

void metrics_registry_free(metrics_registry_t *r) {
    if (!r) return;
    for (size_t i = 0; i < r->n_families; i++) family_free(r->families[i]);
    free(r->families);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

void metrics_registry_on_collect(metrics_registry_t *r, metrics_collect_fn fn, void *ud) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    r->collect = fn;
    r->collect_ud = ud;
    pthread_mutex_unlock(&r->mu);
}

/* True if existing family f has exactly this definition. */
static bool family_same(const metrics_family_t *f, metrics_type_t type,
                        const char *const *label_names, size_t n_labels, const double *bounds,
                        size_t n_bounds) {
    if (f->type != type || f->n_labels != n_labels || f->n_bounds != n_bounds) return false;
    for (size_t i = 0; i < n_labels; i++)
        if (strcmp(f->labels[i], label_names[i]) != 0) return false;
    for (size_t i = 0; i < n_bounds; i++)
        if (f->bounds[i] != bounds[i]) return false;
    return true;
}

metrics_family_t *metrics_family_new(metrics_registry_t *r, metrics_type_t type, const char *name,
                                     const char *help, const char *const *label_names,
                                     size_t n_labels, const double *buckets, size_t n_buckets) {
    metrics_family_t *f = NULL, *result = NULL;
    if (!r || !name_valid(name, true)) {
        LOG_WARN("metrics: invalid metric name '%s'", name ? name : "(null)");
        return NULL;
    }
    if (type != METRICS_COUNTER && type != METRICS_GAUGE && type != METRICS_HISTOGRAM) {
        LOG_WARN("metrics: %s: invalid type %d", name, (int)type);
        return NULL;
    }
    if (n_labels > METRICS_MAX_LABELS || (n_labels && !label_names)) {
        LOG_WARN("metrics: %s: too many labels (%zu, max %d)", name, n_labels, METRICS_MAX_LABELS);
        return NULL;
    }
    for (size_t i = 0; i < n_labels; i++) {
        const char *l = label_names[i];
        bool bad = !name_valid(l, false) || strncmp(l, "__", 2) == 0 ||
                   (type == METRICS_HISTOGRAM && strcmp(l, "le") == 0);
        for (size_t j = 0; !bad && j < i; j++) bad = strcmp(label_names[j], l) == 0;
        if (bad) {
            LOG_WARN("metrics: %s: invalid or duplicate label name '%s'", name, l ? l : "(null)");
            return NULL;
        }
    }
    const double *bounds = NULL;
    size_t n_bounds = 0;
    if (type == METRICS_HISTOGRAM) {
        bounds = buckets && n_buckets ? buckets : default_buckets;
        n_bounds =
            buckets && n_buckets ? n_buckets : sizeof default_buckets / sizeof default_buckets[0];
        if (isinf(bounds[n_bounds - 1]) && bounds[n_bounds - 1] > 0) n_bounds--;
        if (n_bounds > METRICS_MAX_BUCKETS) {
            LOG_WARN("metrics: %s: too many buckets (%zu, max %d)", name, n_bounds,
                     METRICS_MAX_BUCKETS);
            return NULL;
        }
        for (size_t i = 0; i < n_bounds; i++) {
            if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) {
                LOG_WARN("metrics: %s: buckets must be finite and strictly increasing", name);
                return NULL;
            }
        }
    } else if (buckets || n_buckets) {
        LOG_WARN("metrics: %s: buckets given for a non-histogram", name);
        return NULL;
    }

    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n_families; i++) {
        metrics_family_t *g = r->families[i];
        if (strcmp(g->name, name) != 0) continue;
        if (family_same(g, type, label_names, n_labels, bounds, n_bounds))
            result = g;
        else
            LOG_WARN("metrics: %s registered twice with different definitions", name);
        goto out;
    }
    if (r->n_families == r->cap_families) {
        size_t cap = r->cap_families ? r->cap_families * 2 : 16;
        metrics_family_t **nf = realloc(r->families, cap * sizeof *nf);
        if (!nf) goto out;
        r->families = nf;
        r->cap_families = cap;
    }
    f = calloc(1, sizeof *f);
    if (!f) goto out;
    f->reg = r;
    f->type = type;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    if (!f->name || !f->help) goto out;
    for (size_t i = 0; i < n_labels; i++) {
        f->labels[i] = strdup(label_names[i]);
        if (!f->labels[i]) goto out;
        f->n_labels = i + 1;
    }
    if (n_bounds) {
        f->bounds = malloc(n_bounds * sizeof *f->bounds);
        if (!f->bounds) goto out;
        memcpy(f->bounds, bounds, n_bounds * sizeof *f->bounds);
    }
    f->n_bounds = n_bounds;
    r->families[r->n_families++] = f;
    result = f;
    f = NULL;
out:
    pthread_mutex_unlock(&r->mu);
    family_free(f);
    return result;
}

/* Builds `k="v",...` with escaping. Returns a heap string or NULL. */
static char *labels_render(const metrics_family_t *f, const char *const *values) {
    char *buf = NULL;
    size_t size = 0;
    FILE *m = open_memstream(&buf, &size);
    if (!m) return NULL;
    for (size_t i = 0; i < f->n_labels; i++) {
        fprintf(m, "%s%s=\"", i ? "," : "", f->labels[i]);
        write_escaped(m, values[i], true);
        fputc('"', m);
    }
    if (fclose(m) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static struct metrics_series *series_get(metrics_family_t *f, metrics_type_t type,
                                         const char *const *values) {
    struct metrics_series *s = NULL, *result = NULL;
    if (!f || f->type != type) return NULL;
    if (f->n_labels && !values) return NULL;
    for (size_t i = 0; i < f->n_labels; i++)
        if (!values[i]) return NULL;
    metrics_registry_t *r = f->reg;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < f->n_series; i++) {
        struct metrics_series *c = f->series[i];
        size_t k = 0;
        while (k < f->n_labels && strcmp(c->values[k], values[k]) == 0) k++;
        if (k == f->n_labels) {
            result = c;
            goto out;
        }
    }
    if (f->n_series == f->cap_series) {
        size_t cap = f->cap_series ? f->cap_series * 2 : 4;
        struct metrics_series **ns = realloc(f->series, cap * sizeof *ns);
        if (!ns) goto out;
        f->series = ns;
        f->cap_series = cap;
    }
    s = calloc(1, sizeof *s);
    if (!s) goto out;
    s->family = f;
    if (f->n_labels) {
        s->values = calloc(f->n_labels, sizeof *s->values);
        if (!s->values) goto out;
        for (size_t i = 0; i < f->n_labels; i++) {
            s->values[i] = strdup(values[i]);
            if (!s->values[i]) goto out;
        }
    }
    s->labels_text = labels_render(f, values);
    if (!s->labels_text) goto out;
    if (type == METRICS_HISTOGRAM) {
        s->buckets = calloc(f->n_bounds + 1, sizeof *s->buckets);
        if (!s->buckets) goto out;
    }
    s->value = type == METRICS_GAUGE ? dbits(0.0) : 0;
    s->sum_bits = dbits(0.0);
    f->series[f->n_series++] = s;
    result = s;
    s = NULL;
out:
    pthread_mutex_unlock(&r->mu);
    series_free(s, f->n_labels);
    return result;
}

metrics_counter_t *metrics_counter_get(metrics_family_t *f, const char *const *label_values) {
    return series_get(f, METRICS_COUNTER, label_values);
}

metrics_gauge_t *metrics_gauge_get(metrics_family_t *f, const char *const *label_values) {
    return series_get(f, METRICS_GAUGE, label_values);
}

metrics_histogram_t *metrics_histogram_get(metrics_family_t *f, const char *const *label_values) {
    return series_get(f, METRICS_HISTOGRAM, label_values);
}

metrics_counter_t *metrics_counter_new(metrics_registry_t *r, const char *name, const char *help) {
    return metrics_counter_get(metrics_family_new(r, METRICS_COUNTER, name, help, NULL, 0, NULL, 0),
                               NULL);
}

metrics_gauge_t *metrics_gauge_new(metrics_registry_t *r, const char *name, const char *help) {
    return metrics_gauge_get(metrics_family_new(r, METRICS_GAUGE, name, help, NULL, 0, NULL, 0),
                             NULL);
}

metrics_histogram_t *metrics_histogram_new(metrics_registry_t *r, const char *name,
                                           const char *help, const double *buckets,
                                           size_t n_buckets) {
    return metrics_histogram_get(
        metrics_family_new(r, METRICS_HISTOGRAM, name, help, NULL, 0, buckets, n_buckets), NULL);
}

/* ---- hot path ------------------------------------------------------------------ */

void metrics_counter_inc(metrics_counter_t *c) {
    if (c) __atomic_fetch_add(&c->value, 1, __ATOMIC_RELAXED);
}

void metrics_counter_add(metrics_counter_t *c, uint64_t n) {
    if (c) __atomic_fetch_add(&c->value, n, __ATOMIC_RELAXED);
}

void metrics_gauge_set(metrics_gauge_t *g, double v) {
    if (g) __atomic_store_n(&g->value, dbits(v), __ATOMIC_RELAXED);
}

/* Adds delta to the double stored as bits in *slot. */
static void atomic_add_double(uint64_t *slot, double delta) {
    uint64_t old = __atomic_load_n(slot, __ATOMIC_RELAXED);
    uint64_t next;
    do {
        next = dbits(bitsd(old) + delta);
    } while (
        !__atomic_compare_exchange_n(slot, &old, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
}

void metrics_gauge_add(metrics_gauge_t *g, double delta) {
    if (g) atomic_add_double(&g->value, delta);
}

void metrics_histogram_observe(metrics_histogram_t *h, double v) {
    if (!h || isnan(v)) return;
    const double *b = h->family->bounds;
    /* First bound >= v (binary search; le is inclusive). */
    size_t lo = 0, hi = h->family->n_bounds;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= b[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    __atomic_fetch_add(&h->buckets[lo], 1, __ATOMIC_RELAXED);
    atomic_add_double(&h->sum_bits, v);
}

uint64_t metrics_counter_value(const metrics_counter_t *c) {
    return c ? __atomic_load_n(&c->value, __ATOMIC_RELAXED) : 0;
}

double metrics_gauge_value(const metrics_gauge_t *g) {
    return g ? bitsd(__atomic_load_n(&g->value, __ATOMIC_RELAXED)) : 0.0;
}

uint64_t metrics_histogram_count(const metrics_histogram_t *h) {
    uint64_t n = 0;
    for (size_t i = 0; h && i <= h->family->n_bounds; i++)
        n += __atomic_load_n(&h->buckets[i], __ATOMIC_RELAXED);
    return n;
}

double metrics_histogram_sum(const metrics_histogram_t *h) {
    return h ? bitsd(__atomic_load_n(&h->sum_bits, __ATOMIC_RELAXED)) : 0.0;
}

/* ---- exposition ---------------------------------------------------------------- */

static const char *type_name(metrics_type_t t) {
    switch (t) {
    case METRICS_COUNTER:
        return "counter";
    case METRICS_GAUGE:
        return "gauge";
    case METRICS_HISTOGRAM:
        return "histogram";
    }
    return "untyped";
}

/* Writes NAME{labels[,extra]} with braces only when there is something inside. */
static void write_series_name(FILE *m, const char *name, const char *suffix, const char *labels,
                              const char *extra) {
    fputs(name, m);
    fputs(suffix, m);
    bool has_labels = labels && *labels;
    if (!has_labels && !extra) return;
    fputc('{', m);
    if (has_labels) fputs(labels, m);
    if (extra) {
        if (has_labels) fputc(',', m);
        fputs(extra, m);
    }
    fputc('}', m);
}

static void render_histogram(FILE *m, const metrics_family_t *f, const struct metrics_series *s) {
    char num[64], le[96];
    uint64_t cum = 0;
    for (size_t i = 0; i <= f->n_bounds; i++) {
        cum += __atomic_load_n(&s->buckets[i], __ATOMIC_RELAXED);
        if (i < f->n_bounds)
            metrics_format_double(f->bounds[i], num, sizeof num);
        else
            snprintf(num, sizeof num, "+Inf");
        snprintf(le, sizeof le, "le=\"%s\"", num);
        write_series_name(m, f->name, "_bucket", s->labels_text, le);
        fprintf(m, " %llu\n", (unsigned long long)cum);
    }
    metrics_format_double(bitsd(__atomic_load_n(&s->sum_bits, __ATOMIC_RELAXED)), num, sizeof num);
    write_series_name(m, f->name, "_sum", s->labels_text, NULL);
    fprintf(m, " %s\n", num);
    write_series_name(m, f->name, "_count", s->labels_text, NULL);
    fprintf(m, " %llu\n", (unsigned long long)cum);
}

int metrics_registry_render(metrics_registry_t *r, char **out, size_t *len) {
    int rc = 0;
    char *buf = NULL;
    size_t size = 0;
    if (out) *out = NULL;
    if (len) *len = 0;
    if (!r || !out) return SL_EINVAL;

    pthread_mutex_lock(&r->mu);
    metrics_collect_fn collect = r->collect;
    void *collect_ud = r->collect_ud;
    pthread_mutex_unlock(&r->mu);
    if (collect) collect(r, collect_ud);

    FILE *m = open_memstream(&buf, &size);
    if (!m) return SL_ENOMEM;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n_families; i++) {
        const metrics_family_t *f = r->families[i];
        fprintf(m, "# HELP %s ", f->name);
        write_escaped(m, f->help, false);
        fprintf(m, "\n# TYPE %s %s\n", f->name, type_name(f->type));
        for (size_t k = 0; k < f->n_series; k++) {
            const struct metrics_series *s = f->series[k];
            char num[64];
            switch (f->type) {
            case METRICS_COUNTER:
                write_series_name(m, f->name, "", s->labels_text, NULL);
                fprintf(m, " %llu\n",
                        (unsigned long long)__atomic_load_n(&s->value, __ATOMIC_RELAXED));
                break;
            case METRICS_GAUGE:
                metrics_format_double(bitsd(__atomic_load_n(&s->value, __ATOMIC_RELAXED)), num,
                                      sizeof num);
                write_series_name(m, f->name, "", s->labels_text, NULL);
                fprintf(m, " %s\n", num);
                break;
            case METRICS_HISTOGRAM:
                render_histogram(m, f, s);
                break;
            }
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (fclose(m) != 0) {
        free(buf);
        buf = NULL;
        rc = SL_ENOMEM;
        goto out;
    }
    *out = buf;
    if (len) *len = size;
out:
    return rc;
}
