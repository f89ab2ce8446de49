/* report.h - loadgen's results as a table (stdout) and as JSON.
 *
 * JSON shape (all latencies in ms; every distribution has count, mean,
 * stddev, min, max, p50, p90, p99):
 *   { "config": {...as given...},
 *     "requests": {"sent", "ok", "failed", "cancelled"},
 *     "errors": {"<kind>": {"count", "example"}},
 *     "duration_s",
 *     "ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "output_tokens", "input_tokens": {distribution},
 *     "request_throughput", "output_token_throughput", "total_token_throughput",
 *     "ttft_by_request_ms": [TTFT of measured request i, or null] (only with r->per_request) }
 * Throughputs are per second of duration_s (first measured send to the last
 * measured completion), counting successful requests and their tokens.
 *
 * Thread-safety: none needed; called once at the end of a run. The results
 * are not const because percentiles sort the sample sets in place.
 */
#ifndef SL_LOADGEN_REPORT_H
#define SL_LOADGEN_REPORT_H

#include "bench/loadgen/driver.h"

#include <cjson/cJSON.h>
#include <stdio.h>

/* Prints the human-readable table to f. */
void report_table(FILE *f, driver_results_t *r);

/* Builds the JSON document; config (may be NULL) is copied into it. Returns
 * a new object (caller frees with cJSON_Delete) or NULL on ENOMEM. */
cJSON *report_json(driver_results_t *r, const cJSON *config);

/* Writes the JSON document to path ("-" = stdout), pretty-printed. Returns 0,
 * SL_ENOMEM or a negative errno from opening or writing the file. */
int report_json_write(driver_results_t *r, const cJSON *config, const char *path);

#endif
