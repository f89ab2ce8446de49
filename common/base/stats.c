/* stats.c - exact sample sets and log-linear histograms (see stats.h). */
#include "common/base/stats.h"

#include "common/base/err.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Running moments shared by both kinds (Welford). */
typedef struct stats_moments {
    uint64_t n;
    double mean;
    double m2;
    double min;
    double max;
} stats_moments_t;

static void stats_moments_merge(stats_moments_t *a, const stats_moments_t *b);

/* Adds k copies of v: a merge with the moments of {v x k}. */
static void stats_moments_add(stats_moments_t *m, double v, uint64_t k) {
    stats_moments_t one = {.n = k, .mean = v, .m2 = 0, .min = v, .max = v};
    stats_moments_merge(m, &one);
}

static void stats_moments_merge(stats_moments_t *a, const stats_moments_t *b) {
    if (!b->n) return;
    if (!a->n) {
        *a = *b;
        return;
    }
    double n = (double)a->n + (double)b->n;
    double d = b->mean - a->mean;
    a->m2 += b->m2 + d * d * (double)a->n * (double)b->n / n;
    a->mean += d * (double)b->n / n;
    a->n += b->n;
    if (b->min < a->min) a->min = b->min;
    if (b->max > a->max) a->max = b->max;
}

static void stats_moments_fill(const stats_moments_t *m, stats_summary_t *out) {
    out->count = m->n;
    out->mean = m->n ? m->mean : 0;
    out->stddev = m->n ? sqrt(m->m2 / (double)m->n) : 0;
    out->min = m->n ? m->min : 0;
    out->max = m->n ? m->max : 0;
}

/* ---- exact samples ------------------------------------------------------------------------- */

struct stats_samples {
    double *v; /* (cap) values; the first n are used */
    size_t n;
    size_t cap;
    bool sorted;
    stats_moments_t m;
};

stats_samples_t *stats_samples_new(void) {
    return calloc(1, sizeof(stats_samples_t));
}

void stats_samples_free(stats_samples_t *s) {
    if (!s) return;
    free(s->v);
    free(s);
}

int stats_samples_add(stats_samples_t *s, double v) {
    if (!s || !isfinite(v)) return SL_EINVAL;
    if (s->n == s->cap) {
        if (s->cap >= SIZE_MAX / 16) return SL_ETOOBIG;
        size_t cap = s->cap ? s->cap * 2 : 256;
        double *nv = realloc(s->v, cap * sizeof *nv);
        if (!nv) return SL_ENOMEM;
        s->v = nv;
        s->cap = cap;
    }
    s->v[s->n++] = v;
    s->sorted = s->n == 1;
    stats_moments_add(&s->m, v, 1);
    return 0;
}

void stats_samples_clear(stats_samples_t *s) {
    if (!s) return;
    s->n = 0;
    s->sorted = false;
    memset(&s->m, 0, sizeof s->m);
}

uint64_t stats_samples_count(const stats_samples_t *s) {
    return s ? s->n : 0;
}

static int stats_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int stats_samples_percentile(stats_samples_t *s, double q, double *out) {
    if (!s || !out) return SL_EINVAL;
    if (!(q >= 0 && q <= 100)) return SL_ERANGE;
    if (!s->n) return SL_ENOTFOUND;
    if (!s->sorted) {
        qsort(s->v, s->n, sizeof *s->v, stats_cmp_double);
        s->sorted = true;
    }
    double h = (double)(s->n - 1) * q / 100.0;
    size_t lo = (size_t)floor(h);
    if (lo >= s->n - 1) {
        *out = s->v[s->n - 1];
        return 0;
    }
    double frac = h - (double)lo;
    *out = s->v[lo] + frac * (s->v[lo + 1] - s->v[lo]);
    return 0;
}

int stats_samples_summary(stats_samples_t *s, stats_summary_t *out) {
    if (!s || !out) return SL_EINVAL;
    memset(out, 0, sizeof *out);
    if (!s->n) return 0;
    stats_moments_fill(&s->m, out);
    stats_samples_percentile(s, 50, &out->p50);
    stats_samples_percentile(s, 90, &out->p90);
    stats_samples_percentile(s, 99, &out->p99);
    return 0;
}

/* ---- log-linear histogram ------------------------------------------------------------------ */

struct stats_hist {
    double lowest;
    double highest;
    unsigned sub;      /* buckets per power of two */
    unsigned octaves;  /* powers of two between lowest and highest */
    size_t nbuckets;   /* 1 (underflow, <= lowest) + octaves * sub */
    uint64_t *buckets; /* (nbuckets) counts */
    stats_moments_t m;
};

stats_hist_t *stats_hist_new(double lowest, double highest, unsigned sub_buckets) {
    if (!(lowest > 0) || !(highest > lowest) || !isfinite(highest)) return NULL;
    if (sub_buckets < 1 || sub_buckets > 1024) return NULL;
    double oct = ceil(log2(highest / lowest));
    if (!(oct >= 1 && oct <= 60)) return NULL;
    stats_hist_t *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->lowest = lowest;
    h->highest = highest;
    h->sub = sub_buckets;
    h->octaves = (unsigned)oct;
    h->nbuckets = 1 + (size_t)h->octaves * sub_buckets;
    h->buckets = calloc(h->nbuckets, sizeof *h->buckets);
    if (!h->buckets) {
        free(h);
        return NULL;
    }
    return h;
}

void stats_hist_free(stats_hist_t *h) {
    if (!h) return;
    free(h->buckets);
    free(h);
}

static size_t stats_hist_index(const stats_hist_t *h, double v) {
    if (v <= h->lowest) return 0;
    int e = 0;
    double m = frexp(v / h->lowest, &e); /* v / lowest = m * 2^e, m in [0.5, 1) */
    long octave = e - 1;
    if (octave >= (long)h->octaves) return h->nbuckets - 1;
    size_t sub = (size_t)((2.0 * m - 1.0) * h->sub);
    if (sub >= h->sub) sub = h->sub - 1;
    return 1 + (size_t)octave * h->sub + sub;
}

static double stats_hist_mid(const stats_hist_t *h, size_t idx) {
    if (idx == 0) return h->lowest;
    size_t octave = (idx - 1) / h->sub, sub = (idx - 1) % h->sub;
    return h->lowest * ldexp(1.0 + ((double)sub + 0.5) / h->sub, (int)octave);
}

int stats_hist_add_n(stats_hist_t *h, double v, uint64_t n) {
    if (!h || !isfinite(v) || v < 0) return SL_EINVAL;
    if (!n) return 0;
    h->buckets[stats_hist_index(h, v)] += n;
    stats_moments_add(&h->m, v, n);
    return 0;
}

int stats_hist_add(stats_hist_t *h, double v) {
    return stats_hist_add_n(h, v, 1);
}

int stats_hist_merge(stats_hist_t *dst, const stats_hist_t *src) {
    if (!dst || !src || dst->nbuckets != src->nbuckets || dst->sub != src->sub ||
        dst->lowest != src->lowest)
        return SL_EINVAL;
    for (size_t i = 0; i < dst->nbuckets; i++) dst->buckets[i] += src->buckets[i];
    stats_moments_merge(&dst->m, &src->m);
    return 0;
}

void stats_hist_reset(stats_hist_t *h) {
    if (!h) return;
    memset(h->buckets, 0, h->nbuckets * sizeof *h->buckets);
    memset(&h->m, 0, sizeof h->m);
}

uint64_t stats_hist_count(const stats_hist_t *h) {
    return h ? h->m.n : 0;
}

int stats_hist_percentile(const stats_hist_t *h, double q, double *out) {
    if (!h || !out) return SL_EINVAL;
    if (!(q >= 0 && q <= 100)) return SL_ERANGE;
    if (!h->m.n) return SL_ENOTFOUND;
    uint64_t rank = (uint64_t)llround((double)(h->m.n - 1) * q / 100.0); /* 0-based */
    if (rank == 0 || rank == h->m.n - 1) { /* the extremes are known exactly */
        *out = rank == 0 ? h->m.min : h->m.max;
        return 0;
    }
    uint64_t seen = 0;
    size_t i = 0;
    for (; i < h->nbuckets; i++) {
        seen += h->buckets[i];
        if (seen > rank) break;
    }
    if (i == h->nbuckets) i = h->nbuckets - 1;
    double v = stats_hist_mid(h, i);
    if (v < h->m.min) v = h->m.min;
    if (v > h->m.max) v = h->m.max;
    *out = v;
    return 0;
}

int stats_hist_summary(const stats_hist_t *h, stats_summary_t *out) {
    if (!h || !out) return SL_EINVAL;
    memset(out, 0, sizeof *out);
    if (!h->m.n) return 0;
    stats_moments_fill(&h->m, out);
    stats_hist_percentile(h, 50, &out->p50);
    stats_hist_percentile(h, 90, &out->p90);
    stats_hist_percentile(h, 99, &out->p99);
    return 0;
}
