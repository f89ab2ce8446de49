/* metrics.h - counters, gauges and histograms in the Prometheus text format.
 *
 * A registry holds metric families (name, help, type, label names, and for
 * histograms the bucket bounds). A family holds series, one per set of label
 * values. Looking a series up takes the registry lock and is linear in the
 * family's series: do it once (at start-up, or when a new worker / model
 * appears) and keep the handle. Updating through a handle is lock-free
 * (atomics), so it is cheap on the hot path:
 *
 *     metrics_family_t *f = metrics_family_new(reg, METRICS_COUNTER,
 *         "sluice_requests_total", "Requests served", (const char *[]){"model"}, 1, NULL, 0);
 *     metrics_counter_t *c = metrics_counter_get(f, (const char *[]){"llama"});
 *     ...
 *     metrics_counter_inc(c);
 *
 * metrics_registry_render() writes the text exposition format (version 0.0.4):
 * `# HELP` and `# TYPE` lines, label values escaped (\\, \", \n), histograms
 * as cumulative `_bucket{le="..."}` lines ending with le="+Inf", then `_sum`
 * and `_count`. Families appear in registration order, series in creation
 * order. Counters are unsigned 64-bit integers; gauges and histogram sums are
 * doubles.
 *
 * Ownership: the registry owns families and series; handles stay valid until
 * metrics_registry_free(). Update functions accept a NULL handle as a no-op so
 * that code can run with metrics switched off.
 *
 * Thread-safety: every function is thread-safe. Updates are atomic per
 * series; a render running concurrently sees each value at some moment
 * (a histogram's _count always equals its +Inf bucket; _sum may lag by the
 * observations in flight).
 */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct metrics_registry metrics_registry_t;
typedef struct metrics_family metrics_family_t;
typedef struct metrics_series metrics_counter_t;
typedef struct metrics_series metrics_gauge_t;
typedef struct metrics_series metrics_histogram_t;

typedef enum metrics_type {
    METRICS_COUNTER = 0,
    METRICS_GAUGE = 1,
    METRICS_HISTOGRAM = 2
} metrics_type_t;

#define METRICS_MAX_LABELS  8
#define METRICS_MAX_BUCKETS 64

/* Called at the start of each render, before any family is written, under no
 * lock: the place to refresh gauges that are computed rather than counted. */
typedef void (*metrics_collect_fn)(metrics_registry_t *r, void *ud);

/* Returns a new empty registry, or NULL on ENOMEM. */
metrics_registry_t *metrics_registry_new(void);

/* Frees the registry, its families and series; every handle becomes invalid.
 * NULL is a no-op. No other thread may be using the registry. */
void metrics_registry_free(metrics_registry_t *r);

/* Registers a family. name must match [a-zA-Z_:][a-zA-Z0-9_:]*; label names
 * [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__", unique, at most
 * METRICS_MAX_LABELS, and a histogram may not use "le". help may be NULL.
 * buckets (histograms only) are upper bounds, finite and strictly increasing,
 * at most METRICS_MAX_BUCKETS; +Inf is implied (a trailing +Inf is accepted
 * and dropped); NULL/0 gives the Prometheus defaults 0.005 ... 10. Strings are
 * copied. Registering the same name again with the same type, labels and
 * buckets returns the existing family; any other reuse of a name is an error.
 * Returns NULL on invalid input (logged with the reason) or ENOMEM. */
metrics_family_t *metrics_family_new(metrics_registry_t *r, metrics_type_t type, const char *name,
                                     const char *help, const char *const *label_names,
                                     size_t n_labels, const double *buckets, size_t n_buckets);

/* Returns the series of family f for label_values (one per label name, any
 * UTF-8 text, copied; may be NULL when the family has no labels), creating it
 * at zero on first use. Returns NULL if f is NULL or of another type, a value
 * is NULL, or on ENOMEM. */
metrics_counter_t *metrics_counter_get(metrics_family_t *f, const char *const *label_values);
metrics_gauge_t *metrics_gauge_get(metrics_family_t *f, const char *const *label_values);
metrics_histogram_t *metrics_histogram_get(metrics_family_t *f, const char *const *label_values);

/* Unlabelled shortcuts: register the family and return its only series. */
metrics_counter_t *metrics_counter_new(metrics_registry_t *r, const char *name, const char *help);
metrics_gauge_t *metrics_gauge_new(metrics_registry_t *r, const char *name, const char *help);
metrics_histogram_t *metrics_histogram_new(metrics_registry_t *r, const char *name,
                                           const char *help, const double *buckets,
                                           size_t n_buckets);

/* Hot path: lock-free, NULL handle is a no-op. */
void metrics_counter_inc(metrics_counter_t *c);
void metrics_counter_add(metrics_counter_t *c, uint64_t n);
void metrics_gauge_set(metrics_gauge_t *g, double v);
void metrics_gauge_add(metrics_gauge_t *g, double delta); /* negative to subtract */
/* Records one observation; NaN is ignored. */
void metrics_histogram_observe(metrics_histogram_t *h, double v);

/* Current values (tests, and services that publish them elsewhere). */
uint64_t metrics_counter_value(const metrics_counter_t *c);
double metrics_gauge_value(const metrics_gauge_t *g);
/* Observation count and sum of a histogram. */
uint64_t metrics_histogram_count(const metrics_histogram_t *h);
double metrics_histogram_sum(const metrics_histogram_t *h);

/* Sets the collect hook (NULL to remove). */
void metrics_registry_on_collect(metrics_registry_t *r, metrics_collect_fn fn, void *ud);

/* Renders every family into a new heap string (*out, NUL-terminated, length
 * in *len if len is not NULL; the caller frees). Returns 0, SL_EINVAL or
 * SL_ENOMEM (then *out is NULL). */
int metrics_registry_render(metrics_registry_t *r, char **out, size_t *len);

/* Formats a double as Prometheus does: shortest round-trip form, "+Inf",
 * "-Inf", "NaN". Writes at most len bytes including the NUL. */
void metrics_format_double(double v, char *buf, size_t len);

#endif
