/* fe_bench.c - serving-path benchmarks of sluice-frontend (issue 4).
 *
 * Starts its own nats-server, etcd, mocker decode workers and frontend on
 * free loopback ports under a run directory, drives them with
 * build/bench/loadgen, and prints a table per phase plus one JSON document:
 *   overhead  TTFT through the frontend minus TTFT of the same worker asked
 *             directly over NATS (loadgen --target nats), same workload
 *             (same seed, request by request), runs interleaved round by
 *             round, at concurrency 1 and 64; frontend CPU per request.
 *   streams   K concurrent long streams from slow mocker workers for rising
 *             K; a level passes when every stream ends ok, all K were in
 *             flight at once (the frontend's in-flight gauge) and tokens came
 *             at the step rate (TPOT p99 <= 2 x step); frontend RSS/threads.
 *   memory    frontend VmRSS after a warm-up and every N of many short
 *             requests (chat/completions x streamed/whole) on fast mockers.
 * Phases have their own namespace, workers and frontend, so one cannot
 * colour another. See bench/README.md; figures go in bench/RESULTS.md.
 *
 * This is a benchmark driver, not library code: it reports and exits.
 */
#include "common/base/clock.h"
#include "common/base/config.h"
#include "common/base/err.h"
#include "common/base/stats.h"
#include "tests/harness/harness.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FB_MAX_WORKERS 64
#define FB_MAX_LEVELS  32
#define FB_MODEL       "m"

typedef struct fb_cfg {
    char *bin_dir, *bench_dir, *run_dir, *model_dir, *phases, *json, *fe_preload;
    int64_t rounds, c1_requests, c64_requests, ovh_isl, ovh_osl;
    double ovh_step_ms;
    char *levels;
    double stream_step_ms;
    int64_t stream_tokens, stream_workers, http_threads, default_threads_k;
    int64_t mem_requests, mem_every, mem_workers, mem_concurrency, mem_warmup, mem_http_threads;
} fb_cfg_t;

static const sl_config_entry_t fb_table[] = {
    SL_CONFIG_STRING_ENTRY("bin-dir", NULL, fb_cfg_t, bin_dir, "build/bin",
                           "Where sluice-frontend and sluice-decode-worker are"),
    SL_CONFIG_STRING_ENTRY("bench-dir", NULL, fb_cfg_t, bench_dir, "build/bench",
                           "Where loadgen and genmodel are"),
    SL_CONFIG_STRING_ENTRY("run-dir", NULL, fb_cfg_t, run_dir, "/tmp/fe_bench",
                           "Logs, data and loadgen JSON (created; reused)"),
    SL_CONFIG_STRING_ENTRY("model-dir", NULL, fb_cfg_t, model_dir, NULL,
                           "Tokenizer/config directory (default: genmodel tiny in the run dir)"),
    SL_CONFIG_STRING_ENTRY("phases", NULL, fb_cfg_t, phases, "overhead,memory,streams",
                           "Comma-separated phases to run"),
    SL_CONFIG_STRING_ENTRY("json", NULL, fb_cfg_t, json, NULL, "Write all results as JSON here"),
    SL_CONFIG_STRING_ENTRY("frontend-preload", NULL, fb_cfg_t, fe_preload, NULL,
                           "LD_PRELOAD for the frontend only (e.g. a heap profiler)"),
    SL_CONFIG_INT64_ENTRY("rounds", NULL, fb_cfg_t, rounds, "6", 1, 1000,
                          "overhead: interleaved rounds (HTTP, HTTP fresh-connect, NATS)"),
    SL_CONFIG_INT64_ENTRY("c1-requests", NULL, fb_cfg_t, c1_requests, "50", 1, 1000000,
                          "overhead: requests per round and side at concurrency 1"),
    SL_CONFIG_INT64_ENTRY("c64-requests", NULL, fb_cfg_t, c64_requests, "640", 64, 10000000,
                          "overhead: requests per round and side at concurrency 64"),
    SL_CONFIG_INT64_ENTRY("ovh-isl", NULL, fb_cfg_t, ovh_isl, "64", 1, 100000,
                          "overhead: prompt words"),
    SL_CONFIG_INT64_ENTRY("ovh-osl", NULL, fb_cfg_t, ovh_osl, "8", 1, 100000,
                          "overhead: output tokens"),
    SL_CONFIG_DOUBLE_ENTRY("ovh-step-ms", NULL, fb_cfg_t, ovh_step_ms, "2", 0, 10000,
                           "overhead: mocker prefill and decode step time (fixed)"),
    SL_CONFIG_STRING_ENTRY("levels", NULL, fb_cfg_t, levels, "250,500,1000,1500,2000,3000,4000",
                           "streams: concurrent stream counts tried, rising; stops at a failure"),
    SL_CONFIG_DOUBLE_ENTRY("stream-step-ms", NULL, fb_cfg_t, stream_step_ms, "100", 1, 10000,
                           "streams: mocker step time (one token per stream per step)"),
    SL_CONFIG_INT64_ENTRY("stream-tokens", NULL, fb_cfg_t, stream_tokens, "100", 2, 100000,
                          "streams: tokens per stream"),
    SL_CONFIG_INT64_ENTRY("stream-workers", NULL, fb_cfg_t, stream_workers, "4", 1, FB_MAX_WORKERS,
                          "streams: mocker workers (--max-seqs sized for the largest level)"),
    SL_CONFIG_INT64_ENTRY("http-threads", NULL, fb_cfg_t, http_threads, "0", 0, 20000,
                          "streams: frontend --http-threads (0: largest level + 100)"),
    SL_CONFIG_INT64_ENTRY("default-threads-k", NULL, fb_cfg_t, default_threads_k, "1500", 0, 100000,
                          "streams: then K streams against a frontend with its default "
                          "--http-threads (0 = skip)"),
    SL_CONFIG_INT64_ENTRY("mem-requests", NULL, fb_cfg_t, mem_requests, "100000", 4, 100000000,
                          "memory: measured requests"),
    SL_CONFIG_INT64_ENTRY("mem-every", NULL, fb_cfg_t, mem_every, "10000", 4, 100000000,
                          "memory: RSS sample interval in requests"),
    SL_CONFIG_INT64_ENTRY("mem-workers", NULL, fb_cfg_t, mem_workers, "2", 1, FB_MAX_WORKERS,
                          "memory: fast mocker workers"),
    SL_CONFIG_INT64_ENTRY("mem-concurrency", NULL, fb_cfg_t, mem_concurrency, "64", 1, 10000,
                          "memory: loadgen concurrency"),
    SL_CONFIG_INT64_ENTRY("mem-http-threads", NULL, fb_cfg_t, mem_http_threads, "0", 0, 20000,
                          "memory: frontend --http-threads (0: its default)"),
    SL_CONFIG_INT64_ENTRY("mem-warmup", NULL, fb_cfg_t, mem_warmup, "2000", 4, 100000000,
                          "memory: warm-up requests before the first sample"),
};
#define FB_NOPTS (sizeof fb_table / sizeof fb_table[0])

/* ---- processes ----------------------------------------------------------------------------- */

static volatile sig_atomic_t fb_interrupted;
static void fb_on_signal(int sig) {
    (void)sig;
    fb_interrupted = 1;
}

/* Monotonic seconds. */
static double fb_now(void) {
    return (double)sl_mono_ns() * 1e-9;
}

static void fb_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR && !fb_interrupted) {
    }
}

static bool fb_port_open(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Starts argv with stdout+stderr appended to log and LD_PRELOAD=preload
 * (NULL = none); dies with us (tests/harness). */
static pid_t fb_spawn_preload(char *const argv[], const char *log, const char *preload) {
    char env_preload[4096];
    char *env[2] = {NULL, NULL};
    if (preload) {
        if ((size_t)snprintf(env_preload, sizeof env_preload, "LD_PRELOAD=%s", preload) >=
            sizeof env_preload)
            return -1;
        env[0] = env_preload;
    }
    return harness_spawn(argv, env, log);
}

static pid_t fb_spawn(char *const argv[], const char *log) {
    return harness_spawn(argv, NULL, log);
}

static bool fb_alive(pid_t pid) {
    return pid > 0 && waitpid(pid, NULL, WNOHANG) == 0;
}

/* /proc/<pid>/status: VmRSS (KiB) and Threads. */
static void fb_proc_status(pid_t pid, long *rss_kb, long *threads) {
    char path[64], line[256];
    *rss_kb = *threads = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "VmRSS:", 6)) *rss_kb = strtol(line + 6, NULL, 10);
        if (!strncmp(line, "Threads:", 8)) *threads = strtol(line + 8, NULL, 10);
    }
    fclose(f);
}

/* utime + stime of pid in seconds (/proc/<pid>/stat fields 14, 15). */
static double fb_proc_cpu_s(pid_t pid) {
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return NAN;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return NAN;
    unsigned long ut = 0, st = 0;
    /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt ut st */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return NAN;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- HTTP probes --------------------------------------------------------------------------- */

typedef struct fb_buf {
    char data[1 << 16];
    size_t len;
} fb_buf_t;

static size_t fb_buf_write(char *p, size_t sz, size_t nm, void *ud) {
    fb_buf_t *b = ud;
    size_t n = sz * nm, room = sizeof b->data - 1 - b->len;
    if (n > room) n = room;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
    return sz * nm;
}

/* GET url into b; returns the HTTP status or -1. */
static long fb_get(const char *url, fb_buf_t *b) {
    CURL *e = curl_easy_init();
    long status = -1;
    if (!e) return -1;
    b->len = 0;
    b->data[0] = 0;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, fb_buf_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 2000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (curl_easy_perform(e) == CURLE_OK) curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(e);
    return status;
}

/* The frontend's sluice_frontend_inflight_requests, or -1. */
static long fb_inflight(int port) {
    static fb_buf_t b;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", port);
    if (fb_get(url, &b) != 200) return -1;
    const char *k = "\nsluice_frontend_inflight_requests ";
    const char *p = strstr(b.data, k);
    return p ? (long)strtod(p + strlen(k), NULL) : -1;
}

/* ---- the stack ----------------------------------------------------------------------------- */

typedef struct fb {
    const fb_cfg_t *cfg;
    char nats_url[64], etcd_url[64], model_dir[1024];
    pid_t nats, etcd;
    pid_t workers[FB_MAX_WORKERS];
    int nworkers;
    pid_t fe;
    int fe_port;
    int run_id;
    cJSON *out;
} fb_t;

static int fb_servers_start(fb_t *b) {
    const fb_cfg_t *c = b->cfg;
    char path[1200], log[1200], datadir[1200];
    int np = harness_free_port(), ep = harness_free_port(), pp = harness_free_port();
    snprintf(path, sizeof path, "%s/nats.conf", c->run_dir);
    FILE *f = fopen(path, "w");
    if (!f) return -errno;
    fprintf(f, "listen: 127.0.0.1:%d\nmax_payload: 8MB\nmax_pending: 64MB\n", np);
    fclose(f);
    snprintf(log, sizeof log, "%s/nats.log", c->run_dir);
    char *na[] = {"nats-server", "-c", path, NULL};
    b->nats = fb_spawn(na, log);
    snprintf(b->nats_url, sizeof b->nats_url, "nats://127.0.0.1:%d", np);
    snprintf(b->etcd_url, sizeof b->etcd_url, "http://127.0.0.1:%d", ep);
    char peer[64];
    snprintf(peer, sizeof peer, "http://127.0.0.1:%d", pp);
    snprintf(datadir, sizeof datadir, "%s/etcd-data", c->run_dir);
    char cmd[1300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", datadir);
    if (system(cmd)) {
    }
    snprintf(log, sizeof log, "%s/etcd.log", c->run_dir);
    char *ea[] = {"etcd",
                  "--listen-client-urls",
                  b->etcd_url,
                  "--advertise-client-urls",
                  b->etcd_url,
                  "--listen-peer-urls",
                  peer,
                  "--data-dir",
                  datadir,
                  "--logger=zap",
                  "--log-level=warn",
                  NULL};
    b->etcd = fb_spawn(ea, log);
    for (int i = 0; i < 300; i++) {
        fb_buf_t *hb = malloc(sizeof *hb);
        char url[128];
        snprintf(url, sizeof url, "%s/health", b->etcd_url);
        bool ok = hb && fb_port_open(np) && fb_get(url, hb) == 200;
        free(hb);
        if (ok) return 0;
        fb_sleep_ms(50);
    }
    fprintf(stderr, "fe_bench: nats-server or etcd did not come up (see %s)\n", c->run_dir);
    return SL_ETIMEDOUT;
}

static int fb_params_write(const fb_t *b, const char *name, const char *json, char *path,
                           size_t len) {
    snprintf(path, len, "%s/%s.json", b->cfg->run_dir, name);
    FILE *f = fopen(path, "w");
    if (!f) return -errno;
    fputs(json, f);
    fclose(f);
    return 0;
}

/* Starts n mocker workers in namespace ns with the params file and sizes. */
static int fb_workers_start(fb_t *b, const char *ns, int n, const char *params, long max_seqs,
                            long kv_blocks, long max_batch_tokens) {
    char seqs[32], kv[32], mbt[32], log[1200];
    snprintf(seqs, sizeof seqs, "%ld", max_seqs);
    snprintf(kv, sizeof kv, "%ld", kv_blocks);
    snprintf(mbt, sizeof mbt, "%ld", max_batch_tokens);
    char bin[1100];
    snprintf(bin, sizeof bin, "%s/sluice-decode-worker", b->cfg->bin_dir);
    for (int i = 0; i < n && b->nworkers < FB_MAX_WORKERS; i++) {
        snprintf(log, sizeof log, "%s/%s-worker%d.log", b->cfg->run_dir, ns, i);
        char *a[] = {bin,
                     "--model",
                     b->model_dir,
                     "--engine",
                     "mocker",
                     "--mocker-params",
                     (char *)params,
                     "--served-model-name",
                     FB_MODEL,
                     "--namespace",
                     (char *)ns,
                     "--nats",
                     b->nats_url,
                     "--etcd",
                     b->etcd_url,
                     "--system-port",
                     "0",
                     "--max-seqs",
                     seqs,
                     "--kv-blocks",
                     kv,
                     "--max-batch-tokens",
                     mbt,
                     "--threads",
                     "1",
                     "--log-level",
                     "warn",
                     NULL};
        pid_t p = fb_spawn(a, log);
        if (p < 0) return SL_EIO;
        b->workers[b->nworkers++] = p;
    }
    return 0;
}

static double fb_workers_cpu_s(fb_t *b) {
    double t = 0;
    for (int i = 0; i < b->nworkers; i++) t += fb_proc_cpu_s(b->workers[i]);
    return t;
}

static void fb_workers_stop(fb_t *b) {
    for (int i = 0; i < b->nworkers; i++) kill(b->workers[i], SIGTERM);
    for (int i = 0; i < b->nworkers; i++) harness_kill(b->workers[i], SIGTERM, 5000);
    b->nworkers = 0;
}

/* Starts the frontend in ns; waits until /health reports nworkers workers. */
static int fb_frontend_start(fb_t *b, const char *ns, long http_threads) {
    char port[16], thr[32], log[1200], bin[1100], url[128];
    b->fe_port = harness_free_port();
    snprintf(port, sizeof port, "%d", b->fe_port);
    snprintf(thr, sizeof thr, "%ld", http_threads);
    snprintf(log, sizeof log, "%s/%s-frontend.log", b->cfg->run_dir, ns);
    snprintf(bin, sizeof bin, "%s/sluice-frontend", b->cfg->bin_dir);
    char *a[] = {bin,          "--model-path",
                 b->model_dir, "--served-model-name",
                 FB_MODEL,     "--port",
                 port,         "--host",
                 "127.0.0.1",  "--namespace",
                 (char *)ns,   "--nats",
                 b->nats_url,  "--etcd",
                 b->etcd_url,  "--log-level",
                 "warn",       http_threads > 0 ? "--http-threads" : NULL,
                 thr,          NULL};
    b->fe = fb_spawn_preload(a, log, b->cfg->fe_preload);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/health", b->fe_port);
    fb_buf_t *hb = malloc(sizeof *hb);
    if (!hb) return SL_ENOMEM;
    int rc = SL_ETIMEDOUT;
    for (int i = 0; i < 600 && !fb_interrupted; i++) {
        if (!fb_alive(b->fe)) {
            rc = SL_EIO;
            break;
        }
        if (fb_get(url, hb) == 200) {
            cJSON *j = cJSON_Parse(hb->data);
            const cJSON *w = cJSON_GetObjectItemCaseSensitive(j, "workers");
            bool all = cJSON_IsNumber(w) && w->valueint >= b->nworkers;
            cJSON_Delete(j);
            if (all) {
                rc = 0;
                break;
            }
        }
        fb_sleep_ms(50);
    }
    free(hb);
    if (rc) fprintf(stderr, "fe_bench: frontend not healthy with its workers (see %s)\n", log);
    return rc;
}

static void fb_frontend_stop(fb_t *b) {
    harness_kill(b->fe, SIGTERM, 8000);
    b->fe = 0;
}

/* ---- loadgen ------------------------------------------------------------------------------- */

typedef void (*fb_tick_fn)(fb_t *b, void *ud);

static double fb_last_loadgen_cpu_s; /* user + system CPU of the last loadgen run */

/* Runs loadgen with args (NULL-terminated; --json is added) and returns its
 * parsed JSON (caller frees) or NULL. tick runs every 250 ms meanwhile. */
static cJSON *fb_loadgen(fb_t *b, const char *const args[], fb_tick_fn tick, void *ud) {
    char bin[1100], json[1200], log[1200];
    char *argv[96];
    int n = 0;
    snprintf(bin, sizeof bin, "%s/loadgen", b->cfg->bench_dir);
    snprintf(json, sizeof json, "%s/lg-%d.json", b->cfg->run_dir, b->run_id);
    snprintf(log, sizeof log, "%s/loadgen.log", b->cfg->run_dir);
    b->run_id++;
    unlink(json);
    argv[n++] = bin;
    argv[n++] = "--json";
    argv[n++] = json;
    argv[n++] = "--no-table";
    argv[n++] = "--no-progress";
    argv[n++] = "--model";
    argv[n++] = FB_MODEL;
    for (int i = 0; args[i] && n < 94; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    FILE *lf = fopen(log, "a");
    if (lf) {
        for (int i = 0; argv[i]; i++) fprintf(lf, "%s%s", i ? " " : "$ ", argv[i]);
        fputc('\n', lf);
        fclose(lf);
    }
    pid_t pid = fb_spawn(argv, log);
    if (pid < 0) return NULL;
    int status = 0;
    double next = fb_now();
    struct rusage ru;
    for (;;) {
        pid_t r = wait4(pid, &status, WNOHANG, &ru);
        if (r == pid) {
            fb_last_loadgen_cpu_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
                                    (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
            break;
        }
        if (fb_interrupted) {
            harness_kill(pid, SIGTERM, 3000);
            return NULL;
        }
        if (tick && fb_now() >= next) {
            tick(b, ud);
            next += 0.25;
        }
        fb_sleep_ms(20);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "fe_bench: loadgen failed (status %d); see %s\n", status, log);
        return NULL;
    }
    FILE *f = fopen(json, "r");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = len > 0 ? malloc((size_t)len + 1) : NULL;
    cJSON *j = NULL;
    if (text && fread(text, 1, (size_t)len, f) == (size_t)len) {
        text[len] = 0;
        j = cJSON_Parse(text);
    }
    free(text);
    fclose(f);
    return j;
}

static double fb_jnum(const cJSON *j, const char *a, const char *k) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, a);
    if (k) x = cJSON_GetObjectItemCaseSensitive(x, k);
    return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

/* ---- phase: overhead ----------------------------------------------------------------------- */

enum { FB_HTTP, FB_FRESH, FB_NATS, FB_NSIDES };
static const char *const fb_side_names[FB_NSIDES] = {"http", "http_fresh_connect", "nats"};

static cJSON *fb_summary_json(stats_samples_t *s) {
    stats_summary_t m;
    stats_samples_summary(s, &m);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "count", (double)m.count);
    cJSON_AddNumberToObject(o, "p50", m.p50);
    cJSON_AddNumberToObject(o, "p90", m.p90);
    cJSON_AddNumberToObject(o, "p99", m.p99);
    cJSON_AddNumberToObject(o, "mean", m.mean);
    return o;
}

static int fb_overhead_level(fb_t *b, long conc, long per_round, cJSON *arr) {
    const fb_cfg_t *c = b->cfg;
    stats_samples_t *ttft[FB_NSIDES], *diff[2];
    double cpu_s = 0;
    long cpu_requests = 0, failed = 0;
    int rc = 0;
    for (int i = 0; i < FB_NSIDES; i++) ttft[i] = stats_samples_new();
    diff[0] = stats_samples_new();
    diff[1] = stats_samples_new();
    char sc[32], sn[32], isl[32], osl[32], warm[32], http[128];
    snprintf(sc, sizeof sc, "%ld", conc);
    snprintf(sn, sizeof sn, "%ld", per_round);
    snprintf(isl, sizeof isl, "%lld", (long long)c->ovh_isl);
    snprintf(osl, sizeof osl, "%lld", (long long)c->ovh_osl);
    snprintf(warm, sizeof warm, "%ld", conc < 8 ? 8 : conc);
    snprintf(http, sizeof http, "http://127.0.0.1:%d", b->fe_port);
    for (int64_t r = 0; r < c->rounds && !rc; r++) {
        char seed[32];
        snprintf(seed, sizeof seed, "%lld", (long long)(1000 + r));
        cJSON *res[FB_NSIDES] = {0};
        /* alternate the order so drift does not favour one side */
        static const int order[2][FB_NSIDES] = {{FB_HTTP, FB_FRESH, FB_NATS},
                                                {FB_NATS, FB_FRESH, FB_HTTP}};
        for (int k = 0; k < FB_NSIDES; k++) {
            int side = order[r % 2][k];
            const char *common[] = {"--concurrency",
                                    sc,
                                    "--num-requests",
                                    sn,
                                    "--isl",
                                    isl,
                                    "--osl",
                                    osl,
                                    "--seed",
                                    seed,
                                    "--warmup",
                                    warm,
                                    "--per-request",
                                    "--timeout",
                                    "60"};
            const char *a[40];
            int n = 0;
            for (size_t i = 0; i < sizeof common / sizeof common[0]; i++) a[n++] = common[i];
            if (side == FB_NATS) {
                const char *x[] = {"--target",     "nats",      "--nats",      b->nats_url,
                                   "--etcd",       b->etcd_url, "--namespace", "feb-ovh",
                                   "--model-path", b->model_dir};
                for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) a[n++] = x[i];
            } else {
                a[n++] = "--url";
                a[n++] = http;
                if (side == FB_FRESH) a[n++] = "--fresh-connect";
            }
            a[n] = NULL;
            double cpu0 = fb_proc_cpu_s(b->fe);
            res[side] = fb_loadgen(b, a, NULL, NULL);
            if (side != FB_NATS) {
                cpu_s += fb_proc_cpu_s(b->fe) - cpu0; /* includes the warm-up requests */
                cpu_requests += per_round + (conc < 8 ? 8 : conc);
            }
            if (!res[side]) rc = SL_EIO;
        }
        for (int side = 0; side < FB_NSIDES && !rc; side++)
            failed += (long)fb_jnum(res[side], "requests", "failed");
        const cJSON *pr[FB_NSIDES];
        for (int side = 0; side < FB_NSIDES; side++)
            pr[side] = res[side] ? cJSON_GetObjectItemCaseSensitive(res[side], "ttft_by_request_ms")
                                 : NULL;
        for (long i = 0; i < per_round && !rc; i++) {
            double v[FB_NSIDES];
            for (int side = 0; side < FB_NSIDES; side++) {
                const cJSON *x = cJSON_GetArrayItem(pr[side], (int)i);
                v[side] = cJSON_IsNumber(x) ? x->valuedouble : NAN;
                if (!isnan(v[side])) stats_samples_add(ttft[side], v[side]);
            }
            if (!isnan(v[FB_HTTP]) && !isnan(v[FB_NATS]))
                stats_samples_add(diff[0], v[FB_HTTP] - v[FB_NATS]);
            if (!isnan(v[FB_FRESH]) && !isnan(v[FB_NATS]))
                stats_samples_add(diff[1], v[FB_FRESH] - v[FB_NATS]);
        }
        for (int side = 0; side < FB_NSIDES; side++) cJSON_Delete(res[side]);
    }
    if (!rc) {
        stats_summary_t m[FB_NSIDES], d[2];
        for (int i = 0; i < FB_NSIDES; i++) stats_samples_summary(ttft[i], &m[i]);
        stats_samples_summary(diff[0], &d[0]);
        stats_samples_summary(diff[1], &d[1]);
        double cpu_ms = cpu_requests ? cpu_s * 1000.0 / (double)cpu_requests : NAN;
        printf("\nconcurrency %ld: %lld rounds x %ld requests per side, isl %lld, osl %lld, "
               "mocker step %.1f ms, %ld failed\n",
               conc, (long long)c->rounds, per_round, (long long)c->ovh_isl, (long long)c->ovh_osl,
               c->ovh_step_ms, failed);
        printf("  %-34s %9s %9s %9s\n", "TTFT (ms)", "p50", "p90", "p99");
        for (int i = 0; i < FB_NSIDES; i++)
            printf("  %-34s %9.2f %9.2f %9.2f\n", fb_side_names[i], m[i].p50, m[i].p90, m[i].p99);
        printf("  %-34s %9.2f %9.2f %9.2f\n", "http - nats (of percentiles)",
               m[FB_HTTP].p50 - m[FB_NATS].p50, m[FB_HTTP].p90 - m[FB_NATS].p90,
               m[FB_HTTP].p99 - m[FB_NATS].p99);
        printf("  %-34s %9.2f %9.2f %9.2f\n", "http_fresh - nats (of percentiles)",
               m[FB_FRESH].p50 - m[FB_NATS].p50, m[FB_FRESH].p90 - m[FB_NATS].p90,
               m[FB_FRESH].p99 - m[FB_NATS].p99);
        printf("  %-34s %9.2f %9.2f %9.2f\n", "http - nats (paired by request)", d[0].p50, d[0].p90,
               d[0].p99);
        printf("  %-34s %9.2f %9.2f %9.2f\n", "http_fresh - nats (paired)", d[1].p50, d[1].p90,
               d[1].p99);
        printf("  frontend CPU per HTTP request: %.3f ms\n", cpu_ms);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "concurrency", (double)conc);
        cJSON_AddNumberToObject(o, "requests_per_side", (double)(per_round * c->rounds));
        cJSON_AddNumberToObject(o, "failed", (double)failed);
        for (int i = 0; i < FB_NSIDES; i++)
            cJSON_AddItemToObject(o, fb_side_names[i], fb_summary_json(ttft[i]));
        cJSON_AddItemToObject(o, "paired_diff_http_ms", fb_summary_json(diff[0]));
        cJSON_AddItemToObject(o, "paired_diff_http_fresh_ms", fb_summary_json(diff[1]));
        cJSON_AddNumberToObject(o, "frontend_cpu_ms_per_request", cpu_ms);
        cJSON_AddItemToArray(arr, o);
    }
    for (int i = 0; i < FB_NSIDES; i++) stats_samples_free(ttft[i]);
    stats_samples_free(diff[0]);
    stats_samples_free(diff[1]);
    return rc;
}

static int fb_phase_overhead(fb_t *b) {
    const fb_cfg_t *c = b->cfg;
    char params[1200], pj[256];
    double s = c->ovh_step_ms / 1000.0;
    snprintf(pj, sizeof pj,
             "{\"prefill_a\":%g,\"prefill_b\":0,\"prefill_c\":0,\"decode_d\":%g,\"decode_e\":0,"
             "\"decode_g\":0,\"speedup\":1}",
             s, s);
    int rc = fb_params_write(b, "mocker-ovh", pj, params, sizeof params);
    if (!rc) rc = fb_workers_start(b, "feb-ovh", 1, params, 256, 0, 4096);
    if (!rc) rc = fb_frontend_start(b, "feb-ovh", 0);
    printf("== overhead: TTFT through the frontend vs the same worker over NATS ==\n");
    cJSON *arr = cJSON_AddArrayToObject(b->out, "overhead");
    if (!rc) rc = fb_overhead_level(b, 1, (long)c->c1_requests, arr);
    if (!rc) rc = fb_overhead_level(b, 64, (long)c->c64_requests, arr);
    fb_frontend_stop(b);
    fb_workers_stop(b);
    return rc;
}

/* ---- phase: streams ------------------------------------------------------------------------ */

typedef struct fb_sample {
    long max_inflight, rss_kb, threads; /* rss/threads at the max in-flight sample */
    long peak_rss_kb, peak_threads;
} fb_sample_t;

static void fb_stream_tick(fb_t *b, void *ud) {
    fb_sample_t *s = ud;
    long inf = fb_inflight(b->fe_port), rss, thr;
    fb_proc_status(b->fe, &rss, &thr);
    if (rss > s->peak_rss_kb) s->peak_rss_kb = rss;
    if (thr > s->peak_threads) s->peak_threads = thr;
    if (inf >= s->max_inflight) {
        s->max_inflight = inf;
        s->rss_kb = rss;
        s->threads = thr;
    }
}

/* Runs one level of k streams against the running frontend; appends its
 * row to arr and says whether it passed. Returns 0 or SL_EIO. */
static int fb_stream_level(fb_t *b, long k, cJSON *arr, bool *pass) {
    const fb_cfg_t *c = b->cfg;
    char sk[32], tok[32], to[32], http[128];
    snprintf(sk, sizeof sk, "%ld", k);
    snprintf(tok, sizeof tok, "%lld", (long long)c->stream_tokens);
    snprintf(to, sizeof to, "%.0f", c->stream_tokens * c->stream_step_ms / 1000.0 * 4 + 60);
    snprintf(http, sizeof http, "http://127.0.0.1:%d", b->fe_port);
    const char *a[] = {"--url", http, "--concurrency", sk,  "--num-requests", sk,
                       "--isl", "8",  "--osl",         tok, "--timeout",      to,
                       NULL};
    fb_sample_t smp = {.max_inflight = -1};
    double fe0 = fb_proc_cpu_s(b->fe), w0 = fb_workers_cpu_s(b), t0 = fb_now();
    cJSON *j = fb_loadgen(b, a, fb_stream_tick, &smp);
    double wall = fb_now() - t0;
    double fe_cpu = (fb_proc_cpu_s(b->fe) - fe0) / wall;
    double w_cpu = (fb_workers_cpu_s(b) - w0) / wall;
    double lg_cpu = fb_last_loadgen_cpu_s / wall;
    *pass = false;
    if (!j) return SL_EIO;
    double ok = fb_jnum(j, "requests", "ok"), failed = fb_jnum(j, "requests", "failed");
    double tp50 = fb_jnum(j, "tpot_ms", "p50"), tp99 = fb_jnum(j, "tpot_ms", "p99");
    double ttft99 = fb_jnum(j, "ttft_ms", "p99");
    /* every stream ok, all k in flight at once, tokens at >= 2/3 of the step rate */
    *pass = ok == (double)k && failed == 0 && smp.max_inflight >= k &&
            tp50 <= 1.5 * c->stream_step_ms && tp99 <= 2 * c->stream_step_ms;
    bool fe_alive = fb_alive(b->fe);
    printf("  %6ld %6.0f %6.0f %8ld %8.1f %8.1f %8.1f %8ld %7ld %5.2f %5.2f %5.2f %s\n", k, ok,
           failed, smp.max_inflight, ttft99, tp50, tp99, smp.rss_kb, smp.threads, fe_cpu, w_cpu,
           lg_cpu,
           *pass      ? "pass"
           : fe_alive ? "FAIL"
                      : "FAIL (frontend died)");
    cJSON *l = cJSON_CreateObject();
    cJSON_AddNumberToObject(l, "k", (double)k);
    cJSON_AddNumberToObject(l, "ok", ok);
    cJSON_AddNumberToObject(l, "failed", failed);
    cJSON_AddNumberToObject(l, "max_inflight", (double)smp.max_inflight);
    cJSON_AddNumberToObject(l, "ttft_p99_ms", ttft99);
    cJSON_AddNumberToObject(l, "tpot_p50_ms", tp50);
    cJSON_AddNumberToObject(l, "tpot_p99_ms", tp99);
    cJSON_AddNumberToObject(l, "rss_kb", (double)smp.rss_kb);
    cJSON_AddNumberToObject(l, "threads", (double)smp.threads);
    cJSON_AddNumberToObject(l, "peak_rss_kb", (double)smp.peak_rss_kb);
    cJSON_AddNumberToObject(l, "frontend_cores", fe_cpu);
    cJSON_AddNumberToObject(l, "workers_cores", w_cpu);
    cJSON_AddNumberToObject(l, "loadgen_cores", lg_cpu);
    cJSON_AddBoolToObject(l, "pass", *pass);
    cJSON *errs = cJSON_GetObjectItemCaseSensitive(j, "errors");
    if (errs && errs->child) {
        cJSON_AddItemToObject(l, "errors", cJSON_Duplicate(errs, 1));
        for (cJSON *e = errs->child; e; e = e->next)
            printf("         error %s x%.0f: %.120s\n", e->string, fb_jnum(e, "count", NULL),
                   cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "example")));
    }
    cJSON_AddItemToArray(arr, l);
    cJSON_Delete(j);
    return 0;
}

static void fb_stream_header(void) {
    printf("  %6s %6s %6s %8s %8s %8s %8s %8s %7s %5s %5s %5s %s\n", "K", "ok", "failed",
           "inflight", "TTFTp99", "TPOTp50", "TPOTp99", "RSS_KiB", "threads", "feCPU", "wCPU",
           "lgCPU", "verdict");
}

static int fb_phase_streams(fb_t *b) {
    const fb_cfg_t *c = b->cfg;
    long levels[FB_MAX_LEVELS];
    int nl = 0;
    char *end;
    for (const char *p = c->levels; *p && nl < FB_MAX_LEVELS;) {
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 1 || v > 100000) {
            fprintf(stderr, "fe_bench: bad --levels '%s'\n", c->levels);
            return SL_EINVAL;
        }
        levels[nl++] = v;
        p = *end == ',' ? end + 1 : end;
    }
    if (!nl) return SL_EINVAL;
    long maxk = levels[nl - 1];
    if (c->default_threads_k > maxk) maxk = (long)c->default_threads_k;
    long threads = c->http_threads ? (long)c->http_threads : maxk + 100;
    long per_worker = (maxk + c->stream_workers - 1) / c->stream_workers + 16;
    long blocks_per_seq = (64 + c->stream_tokens) / 16 + 2;
    char params[1200], pj[256];
    double s = c->stream_step_ms / 1000.0;
    snprintf(pj, sizeof pj,
             "{\"prefill_a\":%g,\"prefill_b\":0,\"prefill_c\":0,\"decode_d\":%g,\"decode_e\":0,"
             "\"decode_g\":0,\"speedup\":1}",
             s, s);
    int rc = fb_params_write(b, "mocker-streams", pj, params, sizeof params);
    if (!rc)
        rc = fb_workers_start(b, "feb-str", (int)c->stream_workers, params, per_worker,
                              per_worker * blocks_per_seq + 256, per_worker * 64);
    if (!rc) rc = fb_frontend_start(b, "feb-str", threads);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    long rss0 = -1, thr0 = -1;
    fb_proc_status(b->fe, &rss0, &thr0);
    printf("\n== streams: concurrent streams held by the frontend ==\n");
    printf("%ld mocker workers (--max-seqs %ld), step %.0f ms, %lld tokens per stream, "
           "--http-threads %ld, RLIMIT_NOFILE %llu/%llu; idle frontend %ld KiB, %ld threads\n"
           "(CPU columns: cores used by the frontend, all workers, loadgen)\n",
           (long)c->stream_workers, per_worker, c->stream_step_ms, (long long)c->stream_tokens,
           threads, (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max, rss0, thr0);
    fb_stream_header();
    cJSON *o = cJSON_AddObjectToObject(b->out, "streams");
    cJSON_AddNumberToObject(o, "step_ms", c->stream_step_ms);
    cJSON_AddNumberToObject(o, "tokens", (double)c->stream_tokens);
    cJSON_AddNumberToObject(o, "workers", (double)c->stream_workers);
    cJSON_AddNumberToObject(o, "http_threads", (double)threads);
    cJSON_AddNumberToObject(o, "nofile_soft", (double)rl.rlim_cur);
    cJSON_AddNumberToObject(o, "nofile_hard", (double)rl.rlim_max);
    cJSON_AddNumberToObject(o, "idle_rss_kb", (double)rss0);
    cJSON *arr = cJSON_AddArrayToObject(o, "levels");
    long best = 0;
    for (int i = 0; i < nl && !rc && !fb_interrupted; i++) {
        bool pass = false;
        rc = fb_stream_level(b, levels[i], arr, &pass);
        if (rc || !pass) break;
        best = levels[i];
        fb_sleep_ms(1000); /* let the frontend's threads go idle */
    }
    cJSON_AddNumberToObject(o, "highest_passing_k", (double)best);
    printf("  highest passing K: %ld\n", best);
    fb_frontend_stop(b);
    if (!rc && c->default_threads_k > 0 && !fb_interrupted) {
        /* the same workers behind a frontend with its default --http-threads */
        rc = fb_frontend_start(b, "feb-str", 0);
        printf("  with the frontend's default --http-threads:\n");
        fb_stream_header();
        cJSON *d = cJSON_AddArrayToObject(o, "default_http_threads");
        bool pass = false;
        if (!rc) rc = fb_stream_level(b, (long)c->default_threads_k, d, &pass);
        fb_frontend_stop(b);
    }
    fb_workers_stop(b);
    return rc;
}

/* ---- phase: memory ------------------------------------------------------------------------- */

/* Sends n requests split over the four kinds (chat/completions x stream/whole). */
static int fb_mixed(fb_t *b, long n, long *ok, long *failed) {
    const fb_cfg_t *c = b->cfg;
    char http[128], conc[32];
    snprintf(http, sizeof http, "http://127.0.0.1:%d", b->fe_port);
    snprintf(conc, sizeof conc, "%lld", (long long)c->mem_concurrency);
    for (int kind = 0; kind < 4; kind++) {
        char num[32], seed[32];
        snprintf(num, sizeof num, "%ld", n / 4 + (kind < n % 4 ? 1 : 0));
        snprintf(seed, sizeof seed, "%d", b->run_id);
        const char *a[] = {"--url",
                           http,
                           "--endpoint-type",
                           kind < 2 ? "chat" : "completions",
                           kind % 2 ? "--no-stream" : "--stream",
                           "--concurrency",
                           conc,
                           "--num-requests",
                           num,
                           "--isl",
                           "16",
                           "--osl",
                           "4",
                           "--seed",
                           seed,
                           "--timeout",
                           "30",
                           NULL};
        cJSON *j = fb_loadgen(b, a, NULL, NULL);
        if (!j) return SL_EIO;
        *ok += (long)fb_jnum(j, "requests", "ok");
        /* a stream whose few tokens all decode to nothing (special tokens, partial
         * characters of the random tokenizer) is not a frontend failure */
        double empty;
        const cJSON *nc = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(j, "errors"), "no_content");
        empty = cJSON_IsObject(nc) ? fb_jnum(nc, "count", NULL) : 0;
        *failed += (long)(fb_jnum(j, "requests", "failed") - empty);
        cJSON_Delete(j);
    }
    return 0;
}

static int fb_phase_memory(fb_t *b) {
    const fb_cfg_t *c = b->cfg;
    char params[1200];
    int rc = fb_params_write(b, "mocker-fast", "{\"speedup\":100}", params, sizeof params);
    if (!rc) rc = fb_workers_start(b, "feb-mem", (int)c->mem_workers, params, 256, 0, 4096);
    if (!rc) rc = fb_frontend_start(b, "feb-mem", (long)c->mem_http_threads);
    printf("\n== memory: frontend VmRSS over %lld short requests ==\n", (long long)c->mem_requests);
    long ok = 0, failed = 0;
    if (!rc) rc = fb_mixed(b, (long)c->mem_warmup, &ok, &failed);
    cJSON *o = cJSON_AddObjectToObject(b->out, "memory");
    cJSON *arr = cJSON_AddArrayToObject(o, "series");
    long rss, thr;
    fb_proc_status(b->fe, &rss, &thr);
    printf("  %9s %9s %9s %8s %8s\n", "requests", "RSS_KiB", "threads", "failed", "req/s");
    printf("  %9s %9ld %9ld %8ld %8s\n", "warm-up", rss, thr, failed, "");
    cJSON_AddNumberToObject(o, "warmup_requests", (double)c->mem_warmup);
    cJSON_AddNumberToObject(o, "after_warmup_rss_kb", (double)rss);
    long done = 0, failed_total = 0;
    double t0 = fb_now();
    while (!rc && done < c->mem_requests && !fb_interrupted) {
        long n =
            (long)(c->mem_requests - done < c->mem_every ? c->mem_requests - done : c->mem_every);
        long okb = 0, fb = 0;
        double t = fb_now();
        rc = fb_mixed(b, n, &okb, &fb);
        if (rc) break;
        done += n;
        failed_total += fb;
        fb_proc_status(b->fe, &rss, &thr);
        double rate = (double)n / (fb_now() - t);
        printf("  %9ld %9ld %9ld %8ld %8.0f\n", done, rss, thr, fb, rate);
        fflush(stdout);
        cJSON *p = cJSON_CreateObject();
        cJSON_AddNumberToObject(p, "requests", (double)done);
        cJSON_AddNumberToObject(p, "rss_kb", (double)rss);
        cJSON_AddNumberToObject(p, "threads", (double)thr);
        cJSON_AddNumberToObject(p, "failed", (double)fb);
        cJSON_AddNumberToObject(p, "req_per_s", rate);
        cJSON_AddItemToArray(arr, p);
    }
    cJSON_AddNumberToObject(o, "requests", (double)done);
    cJSON_AddNumberToObject(o, "failed", (double)failed_total);
    cJSON_AddNumberToObject(o, "seconds", fb_now() - t0);
    printf("  %ld requests in %.1f s, %ld failed\n", done, fb_now() - t0, failed_total);
    fb_frontend_stop(b);
    fb_workers_stop(b);
    return rc;
}

/* ---- main ---------------------------------------------------------------------------------- */

/* The 1-minute load average (NaN if unreadable): the machine is shared. */
static double fb_loadavg(void) {
    double l = NAN;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) l = NAN;
        fclose(f);
    }
    return l;
}

static bool fb_has_phase(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == 0 || p[n] == ',')) return true;
    return false;
}

int main(int argc, char **argv) {
    fb_cfg_t cfg = {0};
    fb_t b = {0};
    int rc = 0, exit_code = 1;
    sl_config_parse_out_t po;
    if (sl_config_parse(fb_table, FB_NOPTS, &cfg, argc, argv, &po)) {
        fprintf(stderr, "fe_bench: %s\n", po.error);
        exit_code = 2;
        goto out;
    }
    if (po.help) {
        char *h = sl_config_help(fb_table, FB_NOPTS, "fe_bench", NULL,
                                 "Frontend overhead, stream capacity and memory "
                                 "(see bench/README.md).");
        if (h) fputs(h, stdout);
        free(h);
        exit_code = 0;
        goto out;
    }
    if (po.nargs) {
        fprintf(stderr, "fe_bench: unexpected argument \"%s\"\n", po.args[0]);
        exit_code = 2;
        goto out;
    }
    static const char *const known[] = {"overhead", "memory", "streams"};
    for (const char *p = cfg.phases; *p;) {
        size_t n = strcspn(p, ",");
        bool ok = false;
        for (size_t i = 0; i < 3; i++) ok |= strlen(known[i]) == n && !strncmp(p, known[i], n);
        if (!ok) {
            fprintf(stderr, "fe_bench: unknown phase in --phases '%s'\n", cfg.phases);
            exit_code = 2;
            goto out;
        }
        p += n + (p[n] == ',');
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* rows appear as levels finish, also into a file */
    b.cfg = &cfg;
    b.out = cJSON_CreateObject();
    struct sigaction sa = {0};
    sa.sa_handler = fb_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl; /* one descriptor per stream in loadgen and the frontend (inherited) */
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    mkdir(cfg.run_dir, 0755);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (cfg.model_dir) {
        snprintf(b.model_dir, sizeof b.model_dir, "%s", cfg.model_dir);
    } else {
        snprintf(b.model_dir, sizeof b.model_dir, "%s/model", cfg.run_dir);
        char gm[1100], log[1200];
        snprintf(gm, sizeof gm, "%s/genmodel", cfg.bench_dir);
        snprintf(log, sizeof log, "%s/genmodel.log", cfg.run_dir);
        char *a[] = {gm,    "--preset", "tiny", "--arch", "llama",     "--dtype",
                     "f32", "--seed",   "1",    "--out",  b.model_dir, NULL};
        pid_t p = fb_spawn(a, log);
        int st = 0;
        if (p < 0 || waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st)) {
            fprintf(stderr, "fe_bench: genmodel failed (see %s)\n", log);
            goto out;
        }
    }
    rc = fb_servers_start(&b);
    if (rc) goto out;
    double t0 = fb_now();
    double load0 = fb_loadavg();
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    printf("fe_bench: %ld CPUs, load average %.2f at start\n", ncpu, load0);
    cJSON_AddNumberToObject(b.out, "cpus", (double)ncpu);
    cJSON_AddNumberToObject(b.out, "loadavg_start", load0);
    if (!rc && fb_has_phase(cfg.phases, "overhead")) rc = fb_phase_overhead(&b);
    if (!rc && fb_has_phase(cfg.phases, "memory")) rc = fb_phase_memory(&b);
    if (!rc && fb_has_phase(cfg.phases, "streams")) rc = fb_phase_streams(&b);
    cJSON_AddNumberToObject(b.out, "seconds", fb_now() - t0);
    cJSON_AddNumberToObject(b.out, "loadavg_end", fb_loadavg());
    printf("\nfe_bench: %.0f s, load average %.2f at the end%s\n", fb_now() - t0, fb_loadavg(),
           rc ? " (a phase failed)" : "");
    if (cfg.json) {
        char *text = cJSON_Print(b.out);
        FILE *f = text ? fopen(cfg.json, "w") : NULL;
        if (f) {
            fputs(text, f);
            fputc('\n', f);
            fclose(f);
        }
        free(text);
    }
    exit_code = rc ? 1 : 0;
out:
    if (b.fe) fb_frontend_stop(&b);
    fb_workers_stop(&b);
    harness_kill(b.etcd, SIGTERM, 3000);
    harness_kill(b.nats, SIGTERM, 3000);
    cJSON_Delete(b.out);
    curl_global_cleanup();
    sl_config_release(fb_table, FB_NOPTS, &cfg);
    return exit_code;
}
