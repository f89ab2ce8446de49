/* main.c - loadgen: an OpenAI-API load generator (the role aiperf / genai-perf
 * play for Dynamo). Flags come from one table (lg_opts) that also generates
 * --help; workload.c builds the requests, driver.c sends and times them,
 * report.c prints the table and JSON. See bench/loadgen/README.md.
 *
 *   build/bench/loadgen --url http://127.0.0.1:8000 --model m --concurrency 64 \
 *       --num-requests 1000 --isl 512 --isl-stddev 64 --osl 128 --json out.json
 */
#include "bench/loadgen/driver.h"
#include "bench/loadgen/nats_driver.h"
#include "bench/loadgen/report.h"
#include "bench/loadgen/stub.h"
#include "bench/loadgen/workload.h"
#include "common/base/config.h"
#include "common/base/err.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

typedef struct lg_cfg {
    int target; /* lg_targets */
    char *url;
    char *nats;
    char *etcd;
    char *ns;
    char *model_path;
    bool per_request;
    bool quickack;
    bool fresh_connect;
    int api; /* workload_api_t */
    char *model;
    char *api_key;
    int64_t concurrency;
    double request_rate;
    int64_t num_requests;
    double duration_s;
    int64_t warmup;
    double timeout_s;
    double isl, isl_stddev, osl, osl_stddev;
    int dist; /* workload_dist_t */
    double shared_prefix_ratio;
    int64_t num_prefixes;
    uint64_t seed;
    bool stream;
    bool continuous_usage;
    bool min_tokens;
    bool ignore_eos;
    char *extra_body;
    char *json;
    bool progress;
    bool table;
    char *serve_stub; /* stub server mode: listen address */
    int64_t stub_threads;
    int64_t stub_ttft_ms;
    int64_t stub_itl_ms;
} lg_cfg_t;

static const char *const lg_apis[] = {"chat", "completions", NULL};
static const char *const lg_targets[] = {"http", "nats", NULL};
enum { LG_TARGET_HTTP = 0, LG_TARGET_NATS = 1 };
static const char *const lg_dists[] = {"normal", "uniform", NULL};

/* Not const: the progress default depends on whether stderr is a terminal. */
static sl_config_entry_t lg_table[] = {
    SL_CONFIG_ENUM_ENTRY("target", NULL, lg_cfg_t, target, "http", lg_targets,
                         "http: the OpenAI API at --url; nats: decode workers directly over NATS "
                         "(found in etcd; needs --model-path), the frontend-free baseline"),
    SL_CONFIG_STRING_ENTRY("url", "SLUICE_LOADGEN_URL", lg_cfg_t, url, "http://127.0.0.1:8000",
                           "Server base URL (/v1/... is appended) or a full .../completions URL"),
    SL_CONFIG_ENUM_ENTRY("endpoint-type", NULL, lg_cfg_t, api, "chat", lg_apis,
                         "chat (/v1/chat/completions) or completions (/v1/completions)"),
    SL_CONFIG_STRING_ENTRY("model", "SLUICE_MODEL", lg_cfg_t, model, "default", "Model name sent"),
    SL_CONFIG_STRING_ENTRY("api-key", "SLUICE_API_KEY", lg_cfg_t, api_key, NULL,
                           "Sent as Authorization: Bearer KEY"),
    SL_CONFIG_STRING_ENTRY("nats", "SLUICE_NATS", lg_cfg_t, nats, "nats://127.0.0.1:4222",
                           "--target nats: NATS server URL"),
    SL_CONFIG_STRING_ENTRY("etcd", "SLUICE_ETCD", lg_cfg_t, etcd, "http://127.0.0.1:2379",
                           "--target nats: etcd endpoint where workers register"),
    SL_CONFIG_STRING_ENTRY("namespace", "SLUICE_NAMESPACE", lg_cfg_t, ns, "default",
                           "--target nats: namespace of the workers"),
    SL_CONFIG_STRING_ENTRY("model-path", NULL, lg_cfg_t, model_path, NULL,
                           "--target nats: model directory whose tokenizer and chat template "
                           "turn prompts into token ids, as the frontend does"),
    SL_CONFIG_BOOL_ENTRY("fresh-connect", NULL, lg_cfg_t, fresh_connect, "false",
                         "HTTP: a new connection per request instead of keep-alive reuse"),
    SL_CONFIG_BOOL_ENTRY("quickack", NULL, lg_cfg_t, quickack, "false",
                         "HTTP: TCP_QUICKACK after every read, so a server without TCP_NODELAY "
                         "is not held ~40 ms by delayed ACKs (a diagnosis aid)"),
    SL_CONFIG_BOOL_ENTRY("per-request", NULL, lg_cfg_t, per_request, "false",
                         "JSON: add ttft_by_request_ms, each measured request's TTFT by index "
                         "(pairs two runs with one seed)"),
    SL_CONFIG_INT64_ENTRY("concurrency", NULL, lg_cfg_t, concurrency, "0", 0, 1000000,
                          "Closed loop: requests kept in flight (with --request-rate: a cap; "
                          "default 1 when neither is given)"),
    SL_CONFIG_DOUBLE_ENTRY("request-rate", NULL, lg_cfg_t, request_rate, "0", 0, 1e7,
                           "Open loop: Poisson arrivals per second"),
    SL_CONFIG_INT64_ENTRY("num-requests", NULL, lg_cfg_t, num_requests, "0", 0, 1000000000000LL,
                          "Measured requests (default 100 when --duration is not given)"),
    SL_CONFIG_DOUBLE_ENTRY("duration", NULL, lg_cfg_t, duration_s, "0", 0, 1e7,
                           "Seconds during which requests start"),
    SL_CONFIG_INT64_ENTRY("warmup", NULL, lg_cfg_t, warmup, "0", 0, 1000000000,
                          "Unmeasured requests run first"),
    SL_CONFIG_DOUBLE_ENTRY("timeout", NULL, lg_cfg_t, timeout_s, "600", 0.001, 1e6,
                           "Per-request timeout, seconds"),
    SL_CONFIG_DOUBLE_ENTRY("isl", NULL, lg_cfg_t, isl, "512", 1, 1e6,
                           "Mean input length (words ~ tokens)"),
    SL_CONFIG_DOUBLE_ENTRY("isl-stddev", NULL, lg_cfg_t, isl_stddev, "0", 0, 1e6,
                           "Input length stddev"),
    SL_CONFIG_DOUBLE_ENTRY("osl", NULL, lg_cfg_t, osl, "128", 1, 1e6,
                           "Mean output tokens (max_tokens)"),
    SL_CONFIG_DOUBLE_ENTRY("osl-stddev", NULL, lg_cfg_t, osl_stddev, "0", 0, 1e6,
                           "Output length stddev"),
    SL_CONFIG_ENUM_ENTRY("length-dist", NULL, lg_cfg_t, dist, "normal", lg_dists,
                         "Length distribution: normal, or uniform over mean +- stddev*sqrt(3)"),
    SL_CONFIG_DOUBLE_ENTRY("shared-prefix-ratio", NULL, lg_cfg_t, shared_prefix_ratio, "0", 0, 1,
                           "Fraction of each prompt taken from one of --num-prefixes prefixes"),
    SL_CONFIG_INT64_ENTRY("num-prefixes", NULL, lg_cfg_t, num_prefixes, "1", 1, 1000000,
                          "Distinct shared prefixes"),
    SL_CONFIG_UINT64_ENTRY("seed", NULL, lg_cfg_t, seed, "0", 0, UINT64_MAX,
                           "Seed of prompts, lengths and arrivals"),
    SL_CONFIG_BOOL_ENTRY("stream", NULL, lg_cfg_t, stream, "true",
                         "Stream (SSE); --no-stream for whole responses"),
    SL_CONFIG_BOOL_ENTRY("continuous-usage", NULL, lg_cfg_t, continuous_usage, "false",
                         "Ask for per-chunk usage (vLLM continuous_usage_stats): exact tokens "
                         "per event"),
    SL_CONFIG_BOOL_ENTRY("min-tokens", NULL, lg_cfg_t, min_tokens, "true",
                         "Send min_tokens = max_tokens so outputs reach the length"),
    SL_CONFIG_BOOL_ENTRY("ignore-eos", NULL, lg_cfg_t, ignore_eos, "false",
                         "Send ignore_eos: true"),
    SL_CONFIG_STRING_ENTRY("extra-body", NULL, lg_cfg_t, extra_body, NULL,
                           "JSON object merged into every request body"),
    SL_CONFIG_STRING_ENTRY("json", NULL, lg_cfg_t, json, NULL,
                           "Write results as JSON to FILE (- = stdout; the table goes to stderr)"),
    SL_CONFIG_BOOL_ENTRY("progress", NULL, lg_cfg_t, progress, "false",
                         "Progress bar on stderr (default: on when stderr is a terminal)"),
    SL_CONFIG_BOOL_ENTRY("table", NULL, lg_cfg_t, table, "true",
                         "Print the results table on stdout"),
    SL_CONFIG_STRING_ENTRY("serve-stub", NULL, lg_cfg_t, serve_stub, NULL,
                           "Instead of generating load, serve a predictable OpenAI stub on "
                           "HOST:PORT until Ctrl-C (calibration; see README)"),
    SL_CONFIG_INT64_ENTRY("stub-threads", NULL, lg_cfg_t, stub_threads, "1100", 1, 100000,
                          "Stub: connections served at once"),
    SL_CONFIG_INT64_ENTRY("stub-ttft-ms", NULL, lg_cfg_t, stub_ttft_ms, "20", 0, 3600000,
                          "Stub: delay before the first token"),
    SL_CONFIG_INT64_ENTRY("stub-itl-ms", NULL, lg_cfg_t, stub_itl_ms, "10", 0, 3600000,
                          "Stub: delay between tokens"),
};
#define LG_NOPTS (sizeof lg_table / sizeof lg_table[0])

/* The effective configuration for the JSON report (the API key left out). */
static cJSON *lg_cfg_json(const lg_cfg_t *cfg, const char *url) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    for (size_t i = 0; i < LG_NOPTS; i++) {
        const sl_config_entry_t *e = &lg_table[i];
        const char *base = (const char *)cfg + e->offset;
        if (!strcmp(e->flag, "api-key")) continue;
        cJSON *v = NULL;
        switch (e->type) {
        case SL_CONFIG_STRING: {
            const char *str = *(char *const *)base;
            v = str ? cJSON_CreateString(str) : cJSON_CreateNull();
            break;
        }
        case SL_CONFIG_INT64:
        case SL_CONFIG_DURATION:
            v = cJSON_CreateNumber((double)*(const int64_t *)base);
            break;
        case SL_CONFIG_UINT64:
            v = cJSON_CreateNumber((double)*(const uint64_t *)base);
            break;
        case SL_CONFIG_DOUBLE:
            v = cJSON_CreateNumber(*(const double *)base);
            break;
        case SL_CONFIG_BOOL:
            v = cJSON_CreateBool(*(const bool *)base);
            break;
        case SL_CONFIG_ENUM:
            v = cJSON_CreateString(e->choices[*(const int *)base]);
            break;
        }
        if (!v) goto fail;
        cJSON_AddItemToObject(o, e->flag, v);
    }
    if (!cJSON_AddStringToObject(o, "endpoint", cfg->target == LG_TARGET_NATS ? "nats" : url))
        goto fail;
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

static volatile sig_atomic_t lg_signalled;

static void lg_on_signal(int sig) {
    (void)sig;
    lg_signalled = 1;
    driver_stop();
    nats_driver_stop();
}

/* --serve-stub: runs the stub server until SIGINT / SIGTERM. */
static int lg_serve_stub(const lg_cfg_t *cfg) {
    stub_cfg_t sc = {.listen = cfg->serve_stub,
                     .threads = (int)cfg->stub_threads,
                     .ttft_ms = (int)cfg->stub_ttft_ms,
                     .itl_ms = (int)cfg->stub_itl_ms};
    stub_server_t *srv = NULL;
    struct rlimit rl; /* one descriptor per connection */
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int rc = stub_server_start(&sc, &srv);
    if (rc) {
        fprintf(stderr, "loadgen: stub on %s: %s\n", sc.listen, sl_strerror(rc));
        return rc;
    }
    fprintf(stderr,
            "loadgen: stub serving on %s (ttft %d ms, itl %d ms, %d threads); Ctrl-C stops\n",
            sc.listen, sc.ttft_ms, sc.itl_ms, sc.threads);
    while (!lg_signalled) usleep(100000); /* pause() could miss a signal that came just before */
    stub_server_stop(srv);
    return 0;
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

    for (size_t i = 0; i < LG_NOPTS; i++)
        if (!strcmp(lg_table[i].flag, "progress"))
            lg_table[i].def = isatty(STDERR_FILENO) ? "true" : "false";
    sl_config_parse_out_t po;
    rc = sl_config_parse(lg_table, LG_NOPTS, &cfg, argc, argv, &po);
    if (rc) {
        fprintf(stderr, "loadgen: %s\n", po.error);
        exit_code = 2;
        goto out;
    }
    if (po.help) {
        char *help = sl_config_help(lg_table, LG_NOPTS, "loadgen", NULL,
                                    "OpenAI-API load generator: TTFT, inter-token and end-to-end "
                                    "latency, throughput (see bench/loadgen/README.md).");
        if (help) fputs(help, stdout);
        free(help);
        exit_code = help ? 0 : 1;
        goto out;
    }
    if (po.nargs) {
        fprintf(stderr, "loadgen: unexpected argument \"%s\" (see --help)\n", po.args[0]);
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
        .stream = cfg.stream,
        .continuous_usage = cfg.continuous_usage,
        .min_tokens = cfg.min_tokens,
        .ignore_eos = cfg.ignore_eos,
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
        .stream = cfg.stream,
        .concurrency = (long)cfg.concurrency,
        .request_rate = cfg.request_rate,
        .num_requests = (long)cfg.num_requests,
        .duration_s = cfg.duration_s,
        .warmup = (long)cfg.warmup,
        .timeout_s = cfg.timeout_s,
        .seed = (uint64_t)cfg.seed,
        .progress = cfg.progress,
        .quickack = cfg.quickack,
        .fresh_connect = cfg.fresh_connect,
    };
    nats_driver_cfg_t nc = {
        .nats_url = cfg.nats,
        .etcd_url = cfg.etcd,
        .ns = cfg.ns,
        .model_path = cfg.model_path,
        .model = cfg.model,
        .chat = cfg.api == WORKLOAD_API_CHAT,
        .stream = cfg.stream,
        .concurrency = (long)cfg.concurrency,
        .num_requests = (long)cfg.num_requests,
        .duration_s = cfg.duration_s,
        .warmup = (long)cfg.warmup,
        .timeout_s = cfg.timeout_s,
        .progress = cfg.progress,
    };
    bool nats = cfg.target == LG_TARGET_NATS;
    if (nats && cfg.request_rate > 0) {
        fprintf(stderr, "loadgen: --target nats runs closed loop only: drop --request-rate\n");
        exit_code = 2;
        goto out;
    }
    if (nats && (!cfg.model_path || !cfg.model_path[0])) {
        fprintf(stderr, "loadgen: --target nats needs --model-path DIR (the tokenizer and chat "
                        "template that turn prompts into token ids)\n");
        exit_code = 2;
        goto out;
    }
    rc = driver_results_init(&res);
    res_init = true;
    if (rc) goto fail;
    res.per_request = cfg.per_request;

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = lg_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    if (cfg.serve_stub) {
        exit_code = lg_serve_stub(&cfg) ? 1 : 0;
        goto out;
    }
    rc = nats ? nats_driver_run(&nc, w, &res, err, sizeof err)
              : driver_run(&dc, w, &res, err, sizeof err);
    if (rc && nats && err[0] && rc != SL_EINVAL) { /* setup failed: the reason, not the code */
        fprintf(stderr, "loadgen: %s (%s)\n", err, sl_strerror(rc));
        goto out;
    }
    if (rc == SL_EINVAL) {
        fprintf(stderr, "loadgen: %s\n", err);
        exit_code = 2;
        goto out;
    }
    if (rc) goto fail;
    bool json_stdout = cfg.json && !strcmp(cfg.json, "-");
    if (cfg.table) report_table(json_stdout ? stderr : stdout, &res);
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
    sl_config_release(lg_table, LG_NOPTS, &cfg);
    return exit_code;
}
