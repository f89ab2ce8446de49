/* report.c - table and JSON output of a loadgen run (see report.h). */
#include "bench/loadgen/report.h"

#include "common/base/err.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static double report_rate(uint64_t n, double s) {
    return s > 0 ? (double)n / s : 0;
}

static void report_row(FILE *f, const char *name, stats_samples_t *s) {
    stats_summary_t m;
    stats_samples_summary(s, &m);
    if (!m.count) {
        fprintf(f, "%-24s %10s\n", name, "n/a");
        return;
    }
    fprintf(f, "%-24s %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f\n", name, m.mean, m.min,
            m.p50, m.p90, m.p99, m.max, m.stddev);
}

void report_table(FILE *f, driver_results_t *r) {
    fprintf(f, "%-24s %10s %10s %10s %10s %10s %10s %10s\n", "metric", "avg", "min", "p50", "p90",
            "p99", "max", "stddev");
    report_row(f, "TTFT (ms)", r->ttft_ms);
    report_row(f, "ITL (ms)", r->itl_ms);
    report_row(f, "TPOT (ms)", r->tpot_ms);
    report_row(f, "E2E latency (ms)", r->e2e_ms);
    report_row(f, "Output tokens/request", r->output_tokens);
    report_row(f, "Input tokens/request", r->input_tokens);
    fprintf(f, "\n");
    fprintf(f,
            "%-32s %" PRIu64 " sent, %" PRIu64 " ok, %" PRIu64 " failed, %" PRIu64 " cancelled\n",
            "Requests:", r->sent, r->ok, r->failed, r->cancelled);
    fprintf(f, "%-32s %.3f\n", "Duration (s):", r->duration_s);
    fprintf(f, "%-32s %.2f\n", "Request throughput (req/s):", report_rate(r->ok, r->duration_s));
    fprintf(f, "%-32s %.2f\n",
            "Output tokens/s:", report_rate(r->sum_output_tokens, r->duration_s));
    fprintf(f, "%-32s %.2f\n", "Total tokens/s:",
            report_rate(r->sum_output_tokens + r->sum_input_tokens, r->duration_s));
    if (r->nkinds) {
        fprintf(f, "Errors:\n");
        for (size_t i = 0; i < r->nkinds; i++)
            fprintf(f, "  %-20s %8" PRIu64 "  %.100s\n", r->kinds[i].kind, r->kinds[i].count,
                    r->kinds[i].example);
    }
}

static cJSON *report_dist(stats_samples_t *s) {
    stats_summary_t m;
    stats_samples_summary(s, &m);
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    bool ok = cJSON_AddNumberToObject(o, "count", (double)m.count) &&
              cJSON_AddNumberToObject(o, "mean", m.mean) &&
              cJSON_AddNumberToObject(o, "stddev", m.stddev) &&
              cJSON_AddNumberToObject(o, "min", m.min) &&
              cJSON_AddNumberToObject(o, "max", m.max) &&
              cJSON_AddNumberToObject(o, "p50", m.p50) &&
              cJSON_AddNumberToObject(o, "p90", m.p90) && cJSON_AddNumberToObject(o, "p99", m.p99);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

cJSON *report_json(driver_results_t *r, const cJSON *config) {
    cJSON *root = cJSON_CreateObject();
    cJSON *ret = NULL;
    if (!root) return NULL;
    if (config) {
        cJSON *c = cJSON_Duplicate(config, 1);
        if (!c) goto out;
        cJSON_AddItemToObject(root, "config", c);
    }
    cJSON *req = cJSON_AddObjectToObject(root, "requests");
    if (!req || !cJSON_AddNumberToObject(req, "sent", (double)r->sent) ||
        !cJSON_AddNumberToObject(req, "ok", (double)r->ok) ||
        !cJSON_AddNumberToObject(req, "failed", (double)r->failed) ||
        !cJSON_AddNumberToObject(req, "cancelled", (double)r->cancelled))
        goto out;
    cJSON *errs = cJSON_AddObjectToObject(root, "errors");
    if (!errs) goto out;
    for (size_t i = 0; i < r->nkinds; i++) {
        cJSON *e = cJSON_AddObjectToObject(errs, r->kinds[i].kind);
        if (!e || !cJSON_AddNumberToObject(e, "count", (double)r->kinds[i].count) ||
            !cJSON_AddStringToObject(e, "example", r->kinds[i].example))
            goto out;
    }
    if (!cJSON_AddNumberToObject(root, "duration_s", r->duration_s)) goto out;
    struct {
        const char *name;
        stats_samples_t *s;
    } dists[] = {{"ttft_ms", r->ttft_ms},
                 {"itl_ms", r->itl_ms},
                 {"tpot_ms", r->tpot_ms},
                 {"e2e_ms", r->e2e_ms},
                 {"output_tokens", r->output_tokens},
                 {"input_tokens", r->input_tokens}};
    for (size_t i = 0; i < sizeof dists / sizeof dists[0]; i++) {
        cJSON *d = report_dist(dists[i].s);
        if (!d) goto out;
        cJSON_AddItemToObject(root, dists[i].name, d);
    }
    if (!cJSON_AddNumberToObject(root, "request_throughput", report_rate(r->ok, r->duration_s)) ||
        !cJSON_AddNumberToObject(root, "output_token_throughput",
                                 report_rate(r->sum_output_tokens, r->duration_s)) ||
        !cJSON_AddNumberToObject(
            root, "total_token_throughput",
            report_rate(r->sum_output_tokens + r->sum_input_tokens, r->duration_s)))
        goto out;
    if (r->per_request) { /* pairs requests of two runs with one seed, e.g. HTTP vs NATS */
        cJSON *arr = cJSON_AddArrayToObject(root, "ttft_by_request_ms");
        if (!arr) goto out;
        for (size_t i = 0; i < r->n_req; i++) {
            double v = r->req_ttft_ms[i];
            cJSON *x = isnan(v) ? cJSON_CreateNull() : cJSON_CreateNumber(v);
            if (!x) goto out;
            cJSON_AddItemToArray(arr, x);
        }
    }
    ret = root;
    root = NULL;
out:
    cJSON_Delete(root);
    return ret;
}

int report_json_write(driver_results_t *r, const cJSON *config, const char *path) {
    int rc = 0;
    char *text = NULL;
    FILE *f = NULL;
    cJSON *j = report_json(r, config);
    if (!j) {
        rc = SL_ENOMEM;
        goto out;
    }
    text = cJSON_Print(j);
    if (!text) {
        rc = SL_ENOMEM;
        goto out;
    }
    bool to_stdout = strcmp(path, "-") == 0;
    f = to_stdout ? stdout : fopen(path, "w");
    if (!f) {
        rc = -errno;
        goto out;
    }
    if (fputs(text, f) < 0 || fputc('\n', f) < 0) rc = SL_EIO;
    if (to_stdout) {
        fflush(f);
        f = NULL;
    }
out:
    if (f && fclose(f) && !rc) rc = SL_EIO;
    free(text);
    cJSON_Delete(j);
    return rc;
}
