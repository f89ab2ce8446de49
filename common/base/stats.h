/* stats.h - latency statistics: exact sample sets and a log-linear histogram.
 *
 * stats_samples_t keeps every value and gives exact order statistics: the
 * q-th percentile is the linear interpolation between the closest ranks
 * (numpy's default "linear" method): with n sorted values x[0..n-1],
 * h = (n - 1) * q / 100, p = x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h]).
 * So p50 of {1, 2, 3, 4} is 2.5 and p0 / p100 are min / max. Benchmarks use it.
 *
 * stats_hist_t has fixed memory for long-running services: values between
 * `lowest` and `highest` land in log-linear buckets (sub_buckets per power of
 * two), so a reported percentile is within a relative 1 / (2 * sub_buckets) of
 * a true sample; count, mean, min and max are exact. Values below lowest share
 * the first bucket, values above highest the last one (percentiles are
 * clamped to the exact [min, max]).
 *
 * Both reject NaN, infinities and (for the histogram) negative values with
 * SL_EINVAL. Mean and standard deviation (population) use Welford's method.
 *
 * Thread-safety: none; one owner at a time (merge per-thread histograms with
 * stats_hist_merge). *_free(NULL) is a no-op.
 */
#ifndef SL_STATS_H
#define SL_STATS_H

#include <stddef.h>
#include <stdint.h>

/* Summary of a distribution. All zero when count is 0. */
typedef struct stats_summary {
    uint64_t count;
    double mean;
    double stddev; /* population standard deviation */
    double min;
    double max;
    double p50;
    double p90;
    double p99;
} stats_summary_t;

/* ---- exact samples ------------------------------------------------------------------------- */

typedef struct stats_samples stats_samples_t;

/* Creates an empty set. Returns NULL on ENOMEM. */
stats_samples_t *stats_samples_new(void);
void stats_samples_free(stats_samples_t *s);

/* Appends v. Returns 0, SL_EINVAL (NULL set, NaN or infinite v), SL_ENOMEM or
 * SL_ETOOBIG (over SIZE_MAX / 16 values). */
int stats_samples_add(stats_samples_t *s, double v);

/* Removes all values (memory kept). */
void stats_samples_clear(stats_samples_t *s);

uint64_t stats_samples_count(const stats_samples_t *s);

/* The q-th percentile, q in [0, 100], by linear interpolation (see above).
 * Sorts the values in place the first time after an add (O(n log n)).
 * Returns 0, SL_ERANGE (q outside [0, 100] or NaN), SL_ENOTFOUND (empty set) or
 * SL_EINVAL (NULL). */
int stats_samples_percentile(stats_samples_t *s, double q, double *out);

/* Fills *out (count, mean, stddev, min, max, p50, p90, p99). Returns 0 (an
 * empty set gives an all-zero summary) or SL_EINVAL. */
int stats_samples_summary(stats_samples_t *s, stats_summary_t *out);

/* ---- log-linear histogram ------------------------------------------------------------------ */

typedef struct stats_hist stats_hist_t;

/* Creates a histogram for values in [lowest, highest] with sub_buckets buckets
 * per power of two (1..1024); 0 < lowest < highest, highest / lowest <= 2^60.
 * Example: lowest 1e-3 ms, highest 1e6 ms, 64 sub-buckets: 0.8% error, ~2,000
 * buckets, 16 KiB. Returns NULL on bad arguments or ENOMEM. */
stats_hist_t *stats_hist_new(double lowest, double highest, unsigned sub_buckets);
void stats_hist_free(stats_hist_t *h);

/* Records v (>= 0, finite) n times. Returns 0 or SL_EINVAL. */
int stats_hist_add_n(stats_hist_t *h, double v, uint64_t n);
int stats_hist_add(stats_hist_t *h, double v);

/* Adds src's counts into dst. Both must have been created with the same
 * arguments, else SL_EINVAL. */
int stats_hist_merge(stats_hist_t *dst, const stats_hist_t *src);

void stats_hist_reset(stats_hist_t *h);
uint64_t stats_hist_count(const stats_hist_t *h);

/* Approximate q-th percentile (q in [0, 100]): the midpoint of the bucket that
 * holds the sample of rank round((count - 1) * q / 100), clamped to [min, max];
 * the first and last ranks give the exact min and max.
 * Returns 0, SL_ERANGE, SL_ENOTFOUND (empty) or SL_EINVAL. */
int stats_hist_percentile(const stats_hist_t *h, double q, double *out);

/* Summary: count, mean, stddev, min, max exact; p50/p90/p99 approximate. */
int stats_hist_summary(const stats_hist_t *h, stats_summary_t *out);

#endif
