/* main.c - loadgen: an OpenAI-API load generator (the role aiperf / genai-perf
 * play for Dynamo). Flags come from one table (lg_opts) that also generates
 * --help; workload.c builds the requests, driver.c sends and times them,
 * report.c prints the table and JSON. See bench/loadgen/README.md.
 *
 *   build/bench/loadgen --url http://127.0.0.1:8000 --model m --concurrency 64 \
 *       --num-requests 1000 --isl 512 --isl-stddev 64 --osl 128 --json out.json
 */
#include "bench/loadgen/driver.h"
#include "bench/loadgen/report.h"
#include "bench/loadgen/workload.h"
#include "common/base/err.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

typedef struct lg_cfg {
    char *url;
    int api; /* workload_api_t */
    char *model;
    char *api_key;
    long concurrency;
    double request_rate;
    long num_requests;
    double duration_s;
    long warmup;
    double timeout_s;
    double isl, isl_stddev, osl, osl_stddev;
    int dist; /* workload_dist_t */
    double shared_prefix_ratio;
    long num_prefixes;
    long seed;
    int stream; /* bools: 0/1; progress: -1 = auto */
    int continuous_usage;
    int min_tokens;
    int ignore_eos;
    char *extra_body;
    char *json;
    int progress;
    int table;
} lg_cfg_t;

typedef enum lg_opt_type { LG_STR, LG_LONG, LG_DOUBLE, LG_BOOL, LG_ENUM } lg_opt_type_t;

typedef struct lg_opt {
    const char *flag;
    const char *env; /* NULL = none */
    lg_opt_type_t type;
    const char *def; /* NULL = unset / 0 / first choice; "auto" for a tri-state bool */
    double lo, hi;   /* LONG, DOUBLE bounds (inclusive) */
    const char *const *choices;
    size_t off;
    const char *help;
} lg_opt_t;

static const char *const lg_apis[] = {"chat", "completions", NULL};
static const char *const lg_dists[] = {"normal", "uniform", NULL};

#define O(f) offsetof(lg_cfg_t, f)
static const lg_opt_t lg_opts[] = {
    {"url", "SLUICE_LOADGEN_URL", LG_STR, "http://127.0.0.1:8000", 0, 0, NULL, O(url),
     "Server base URL (/v1/... is appended) or a full .../completions URL"},
    {"endpoint-type", NULL, LG_ENUM, "chat", 0, 0, lg_apis, O(api),
     "chat (/v1/chat/completions) or completions (/v1/completions)"},
    {"model", "SLUICE_MODEL", LG_STR, "default", 0, 0, NULL, O(model), "Model name sent"},
    {"api-key", "SLUICE_API_KEY", LG_STR, NULL, 0, 0, NULL, O(api_key),
     "Sent as Authorization: Bearer KEY"},
    {"concurrency", NULL, LG_LONG, "0", 0, 1000000, NULL, O(concurrency),
     "Closed loop: requests kept in flight (with --request-rate: a cap)"},
    {"request-rate", NULL, LG_DOUBLE, "0", 0, 1e7, NULL, O(request_rate),
     "Open loop: Poisson arrivals per second"},
    {"num-requests", NULL, LG_LONG, "0", 0, 1e12, NULL, O(num_requests),
     "Measured requests (default 100 when --duration is not given)"},
    {"duration", NULL, LG_DOUBLE, "0", 0, 1e7, NULL, O(duration_s),
     "Seconds during which requests start"},
    {"warmup", NULL, LG_LONG, "0", 0, 1e9, NULL, O(warmup), "Unmeasured requests run first"},
    {"timeout", NULL, LG_DOUBLE, "600", 0.001, 1e6, NULL, O(timeout_s),
     "Per-request timeout, seconds"},
    {"isl", NULL, LG_DOUBLE, "512", 1, 1e6, NULL, O(isl), "Mean input length (words ~ tokens)"},
    {"isl-stddev", NULL, LG_DOUBLE, "0", 0, 1e6, NULL, O(isl_stddev), "Input length stddev"},
    {"osl", NULL, LG_DOUBLE, "128", 1, 1e6, NULL, O(osl), "Mean output tokens (max_tokens)"},
    {"osl-stddev", NULL, LG_DOUBLE, "0", 0, 1e6, NULL, O(osl_stddev), "Output length stddev"},
    {"length-dist", NULL, LG_ENUM, "normal", 0, 0, lg_dists, O(dist),
     "Length distribution: normal, or uniform over mean +- stddev*sqrt(3)"},
    {"shared-prefix-ratio", NULL, LG_DOUBLE, "0", 0, 1, NULL, O(shared_prefix_ratio),
     "Fraction of each prompt taken from one of --num-prefixes shared prefixes"},
    {"num-prefixes", NULL, LG_LONG, "1", 1, 1e6, NULL, O(num_prefixes), "Distinct shared prefixes"},
    {"seed", NULL, LG_LONG, "0", 0, 9.2e18, NULL, O(seed), "Seed of prompts, lengths, arrivals"},
    {"stream", NULL, LG_BOOL, "true", 0, 0, NULL, O(stream), "Stream (SSE); --no-stream to not"},
    {"continuous-usage", NULL, LG_BOOL, "false", 0, 0, NULL, O(continuous_usage),
     "Ask for per-chunk usage (vLLM continuous_usage_stats): exact tokens per event"},
    {"min-tokens", NULL, LG_BOOL, "true", 0, 0, NULL, O(min_tokens),
     "Send min_tokens = max_tokens so outputs reach the length"},
    {"ignore-eos", NULL, LG_BOOL, "false", 0, 0, NULL, O(ignore_eos), "Send ignore_eos: true"},
    {"extra-body", NULL, LG_STR, NULL, 0, 0, NULL, O(extra_body),
     "JSON object merged into every request body"},
    {"json", NULL, LG_STR, NULL, 0, 0, NULL, O(json), "Write results as JSON to FILE (- = stdout)"},
    {"progress", NULL, LG_BOOL, "auto", 0, 0, NULL, O(progress),
     "Progress bar on stderr (default: when stderr is a terminal)"},
    {"table", NULL, LG_BOOL, "true", 0, 0, NULL, O(table), "Print the results table on stdout"},
};
#undef O
#define LG_NOPTS (sizeof lg_opts / sizeof lg_opts[0])

static void lg_usage(FILE *f) {
    fprintf(f, "Usage: loadgen [options]\n"
               "OpenAI-API load generator: TTFT, inter-token and end-to-end latency, "
               "throughput.\nOptions:\n");
    for (size_t i = 0; i < LG_NOPTS; i++) {
        const lg_opt_t *o = &lg_opts[i];
        char flag[64];
        snprintf(flag, sizeof flag, "--%s%s", o->flag,
                 o->type == LG_BOOL  ? ""
                 : o->type == LG_STR ? " S"
                                     : " N");
        fprintf(f, "  %-26s %s", flag, o->help);
        if (o->def) fprintf(f, " [%s]", o->def);
        if (o->env) fprintf(f, " (env %s)", o->env);
        if (o->choices) {
            fprintf(f, " {");
            for (size_t k = 0; o->choices[k]; k++) fprintf(f, "%s%s", k ? "," : "", o->choices[k]);
            fprintf(f, "}");
        }
        fputc('\n', f);
    }
}

/* Stores text into the option's field. Returns 0 or SL_EINVAL / SL_ERANGE /
 * SL_ENOMEM with a message in err. */
static int lg_opt_set(const lg_opt_t *o, lg_cfg_t *cfg, const char *v, char *err, size_t errlen) {
    char *base = (char *)cfg + o->off;
    char *end = NULL;
    switch (o->type) {
    case LG_STR: {
        char *dup = v ? strdup(v) : NULL;
        if (v && !dup) return SL_ENOMEM;
        free(*(char **)base);
        *(char **)base = dup;
        return 0;
    }
    case LG_LONG: {
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (errno || end == v || *end) break;
        if ((double)x < o->lo || (double)x > o->hi) {
            snprintf(err, errlen, "--%s: %s is outside [%.0f, %.0f]", o->flag, v, o->lo, o->hi);
            return SL_ERANGE;
        }
        *(long *)base = (long)x;
        return 0;
    }
    case LG_DOUBLE: {
        errno = 0;
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x)) break;
        if (x < o->lo || x > o->hi) {
            snprintf(err, errlen, "--%s: %s is outside [%g, %g]", o->flag, v, o->lo, o->hi);
            return SL_ERANGE;
        }
        *(double *)base = x;
        return 0;
    }
    case LG_BOOL:
        if (!strcasecmp(v, "true") || !strcmp(v, "1"))
            *(int *)base = 1;
        else if (!strcasecmp(v, "false") || !strcmp(v, "0"))
            *(int *)base = 0;
        else if (!strcasecmp(v, "auto"))
            *(int *)base = -1;
        else
            break;
        return 0;
    case LG_ENUM:
        for (int k = 0; o->choices[k]; k++) {
            if (!strcasecmp(v, o->choices[k])) {
                *(int *)base = k;
                return 0;
            }
        }
        break;
    }
    snprintf(err, errlen, "--%s: cannot parse \"%s\"", o->flag, v);
    return SL_EINVAL;
}

static const lg_opt_t *lg_opt_find(const char *name, size_t len) {
    for (size_t i = 0; i < LG_NOPTS; i++)
        if (strlen(lg_opts[i].flag) == len && !strncmp(lg_opts[i].flag, name, len))
            return &lg_opts[i];
    return NULL;
}

/* Defaults, then environment, then flags. Returns 0, 1 for --help, or an error. */
static int lg_parse(lg_cfg_t *cfg, int argc, char **argv, char *err, size_t errlen) {
    int rc = 0;
    for (size_t i = 0; i < LG_NOPTS && !rc; i++) {
        const lg_opt_t *o = &lg_opts[i];
        if (o->def) rc = lg_opt_set(o, cfg, o->def, err, errlen);
        const char *e = o->env ? getenv(o->env) : NULL;
        if (!rc && e && *e) rc = lg_opt_set(o, cfg, e, err, errlen);
    }
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument \"%s\"", a);
            return SL_EINVAL;
        }
        a += 2;
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        const lg_opt_t *o = lg_opt_find(a, nlen);
        const char *val = eq ? eq + 1 : NULL;
        if (!o && !eq && !strncmp(a, "no-", 3)) { /* --no-BOOL */
            o = lg_opt_find(a + 3, nlen - 3);
            if (o && o->type == LG_BOOL)
                val = "false";
            else
                o = NULL;
        }
        if (!o) {
            snprintf(err, errlen, "unknown flag --%.*s (see --help)", (int)nlen, a);
            return SL_EINVAL;
        }
        if (!val && o->type == LG_BOOL) val = "true";
        if (!val) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "--%s needs a value", o->flag);
                return SL_EINVAL;
            }
            val = argv[++i];
        }
        rc = lg_opt_set(o, cfg, val, err, errlen);
    }
    return rc;
}

static void lg_cfg_release(lg_cfg_t *cfg) {
    for (size_t i = 0; i < LG_NOPTS; i++) {
        if (lg_opts[i].type != LG_STR) continue;
        char **p = (char **)((char *)cfg + lg_opts[i].off);
        free(*p);
        *p = NULL;
    }
}

/* The effective configuration for the JSON report (the API key left out). */
static cJSON *lg_cfg_json(const lg_cfg_t *cfg, const char *url) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    for (size_t i = 0; i < LG_NOPTS; i++) {
        const lg_opt_t *op = &lg_opts[i];
        const char *base = (const char *)cfg + op->off;
        if (!strcmp(op->flag, "api-key")) continue;
        cJSON *v = NULL;
        switch (op->type) {
        case LG_STR: {
            const char *s = *(char *const *)base;
            v = s ? cJSON_CreateString(s) : cJSON_CreateNull();
            break;
        }
        case LG_LONG:
            v = cJSON_CreateNumber((double)*(const long *)base);
            break;
        case LG_DOUBLE:
            v = cJSON_CreateNumber(*(const double *)base);
            break;
        case LG_BOOL:
            v = cJSON_CreateBool(*(const int *)base > 0);
            break;
        case LG_ENUM:
            v = cJSON_CreateString(op->choices[*(const int *)base]);
            break;
        }
        if (!v) goto fail;
        cJSON_AddItemToObject(o, op->flag, v);
    }
    if (!cJSON_AddStringToObject(o, "endpoint", url)) goto fail;
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

static void lg_on_signal(int sig) {
    (void)sig;
    driver_stop();
}

int main(int argc, char **argv) {
    int rc = 0, exit_code = 1;
    lg_cfg_t cfg = {0};
    workload_t *w = NULL;
    driver_results_t res;
    bool res_init = false;
    cJSON *cj = NULL;
    char url[2048];
    char err[512] = "";

    rc = lg_parse(&cfg, argc, argv, err, sizeof err);
    if (rc == 1) {
        lg_usage(stdout);
        exit_code = 0;
        goto out;
    }
    if (rc) {
        fprintf(stderr, "loadgen: %s\n", err[0] ? err : sl_strerror(rc));
        exit_code = 2;
        goto out;
    }
    if (cfg.num_requests == 0 && cfg.duration_s == 0) cfg.num_requests = 100;
    if (cfg.concurrency == 0 && cfg.request_rate == 0) cfg.concurrency = 1;

    /* A base URL gets the endpoint path; a full .../completions URL is kept. */
    size_t ulen = strlen(cfg.url);
    while (ulen && cfg.url[ulen - 1] == '/') ulen--;
    if (ulen >= 3 && !strncmp(cfg.url + ulen - 3, "/v1", 3)) ulen -= 3; /* OpenAI-style base */
    bool full = ulen >= 12 && !strncmp(cfg.url + ulen - 12, "/completions", 12);
    int n = snprintf(url, sizeof url, "%.*s%s", (int)ulen, cfg.url,
                     full                           ? ""
                     : cfg.api == WORKLOAD_API_CHAT ? "/v1/chat/completions"
                                                    : "/v1/completions");
    if (n < 0 || (size_t)n >= sizeof url) {
        fprintf(stderr, "loadgen: --url too long\n");
        exit_code = 2;
        goto out;
    }

    workload_cfg_t wc = {
        .seed = (uint64_t)cfg.seed,
        .api = (workload_api_t)cfg.api,
        .model = cfg.model,
        .isl = cfg.isl,
        .isl_stddev = cfg.isl_stddev,
        .osl = cfg.osl,
        .osl_stddev = cfg.osl_stddev,
        .dist = (workload_dist_t)cfg.dist,
        .shared_prefix_ratio = cfg.shared_prefix_ratio,
        .num_prefixes = (uint32_t)cfg.num_prefixes,
        .stream = cfg.stream > 0,
        .continuous_usage = cfg.continuous_usage > 0,
        .min_tokens = cfg.min_tokens > 0,
        .ignore_eos = cfg.ignore_eos > 0,
        .extra_body = cfg.extra_body,
    };
    rc = workload_new(&wc, &w, err, sizeof err);
    if (rc) {
        fprintf(stderr, "loadgen: %s\n", err[0] ? err : sl_strerror(rc));
        exit_code = 2;
        goto out;
    }
    driver_cfg_t dc = {
        .url = url,
        .api_key = cfg.api_key,
        .chat = cfg.api == WORKLOAD_API_CHAT,
        .stream = cfg.stream > 0,
        .concurrency = cfg.concurrency,
        .request_rate = cfg.request_rate,
        .num_requests = cfg.num_requests,
        .duration_s = cfg.duration_s,
        .warmup = cfg.warmup,
        .timeout_s = cfg.timeout_s,
        .seed = (uint64_t)cfg.seed,
        .progress = cfg.progress > 0 || (cfg.progress < 0 && isatty(STDERR_FILENO)),
    };
    rc = driver_results_init(&res);
    res_init = true;
    if (rc) goto fail;

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = lg_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    rc = driver_run(&dc, w, &res, err, sizeof err);
    if (rc == SL_EINVAL) {
        fprintf(stderr, "loadgen: %s\n", err);
        exit_code = 2;
        goto out;
    }
    if (rc) goto fail;
    bool json_stdout = cfg.json && !strcmp(cfg.json, "-");
    if (cfg.table > 0) report_table(json_stdout ? stderr : stdout, &res);
    if (cfg.json) {
        cj = lg_cfg_json(&cfg, url);
        rc = cj ? report_json_write(&res, cj, cfg.json) : SL_ENOMEM;
        if (rc) goto fail;
    }
    exit_code = 0;
    goto out;
fail:
    fprintf(stderr, "loadgen: %s\n", sl_strerror(rc));
    exit_code = 1;
out:
    cJSON_Delete(cj);
    if (res_init) driver_results_release(&res);
    workload_free(w);
    lg_cfg_release(&cfg);
    return exit_code;
}
