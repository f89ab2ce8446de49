/* main.c - replay: a Mooncake trace against a fleet of mocker workers behind
 * the real frontend and router, per routing mode, with the oracle's hit rate
 * beside the measured one. Flags come from one table (rp_table) that also
 * generates --help; trace.c reads the trace, fleet.c starts the servers,
 * client.c sends and times the requests, oracle.c simulates ideal routing.
 * See bench/replay/README.md.
 *
 *   build/bench/replay --modes kv,round-robin,random --workers 8 --speed 10 \
 *       --limit 1000 --mocker-params deploy/mocker/gpu7b.json --json out.json
 */
#include "bench/replay/client.h"
#include "bench/replay/fleet.h"
#include "bench/replay/oracle.h"
#include "bench/replay/trace.h"
#include "common/base/config.h"
#include "common/base/err.h"
#include "tests/harness/harness.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RP_MAX_MODES    8
#define RP_PROMPT_VOCAB 256 /* prompt ids < 256: byte tokens in any byte-level BPE */

typedef struct rp_cfg {
    char *trace;
    int64_t workers;
    char *mode;
    char *modes;
    double speed;
    int64_t limit;
    char *mocker_params;
    double mocker_speedup;
    int64_t kv_blocks;
    int64_t block_size;
    double scale;
    int64_t max_batch_tokens;
    int64_t max_seqs;
    char *json;
    char *model;
    char *bin_dir;
    char *router_args;
    double timeout_s;
    bool progress;
    bool keep_logs;
} rp_cfg_t;

static sl_config_entry_t rp_table[] = {
    SL_CONFIG_STRING_ENTRY("trace", NULL, rp_cfg_t, trace,
                           "../shared/data/mooncake/synthetic_trace.jsonl",
                           "Mooncake-format trace (JSONL: timestamp ms, input_length, "
                           "output_length, hash_ids)"),
    SL_CONFIG_INT64_ENTRY("workers", NULL, rp_cfg_t, workers, "8", 1, 256, "Mocker workers"),
    SL_CONFIG_STRING_ENTRY("mode", NULL, rp_cfg_t, mode, "kv",
                           "Router mode: kv, round-robin, random, least-loaded"),
    SL_CONFIG_STRING_ENTRY("modes", NULL, rp_cfg_t, modes, NULL,
                           "Several modes, comma-separated, one after another with the same "
                           "arrivals and a fresh fleet each (overrides --mode)"),
    SL_CONFIG_DOUBLE_ENTRY("speed", NULL, rp_cfg_t, speed, "1", 0.001, 1e6,
                           "Replay speed: request i is sent at timestamp / speed"),
    SL_CONFIG_INT64_ENTRY("limit", NULL, rp_cfg_t, limit, "0", 0, 100000000,
                          "Replay only the first N requests (0 = all)"),
    SL_CONFIG_STRING_ENTRY("mocker-params", NULL, rp_cfg_t, mocker_params, NULL,
                           "Mocker performance model (deploy/mocker/*.json; default: built-in)"),
    SL_CONFIG_DOUBLE_ENTRY("mocker-speedup", NULL, rp_cfg_t, mocker_speedup, "0", 0, 1e6,
                           "Mocker speedup, replacing the file's (0 = --speed, so the fleet "
                           "sees the trace's load at any speed)"),
    SL_CONFIG_INT64_ENTRY("kv-blocks", NULL, rp_cfg_t, kv_blocks, "16384", 16, 16777216,
                          "KV blocks per worker (and per oracle cache)"),
    SL_CONFIG_INT64_ENTRY("block-size", NULL, rp_cfg_t, block_size, "16", 1, 512,
                          "Tokens per KV block (must divide 512 * --scale)"),
    SL_CONFIG_DOUBLE_ENTRY("scale", NULL, rp_cfg_t, scale, "1", 0.001, 1,
                           "Prompt scale: each 512-token hash id becomes 512 * scale tokens"),
    SL_CONFIG_INT64_ENTRY("max-batch-tokens", NULL, rp_cfg_t, max_batch_tokens, "0", 0, 1 << 24,
                          "Workers' token budget per step (0 = their default)"),
    SL_CONFIG_INT64_ENTRY("max-seqs", NULL, rp_cfg_t, max_seqs, "0", 0, 1 << 20,
                          "Workers' running sequences (0 = their default)"),
    SL_CONFIG_STRING_ENTRY("json", NULL, rp_cfg_t, json, NULL, "Write results as JSON to FILE"),
    SL_CONFIG_STRING_ENTRY("model", NULL, rp_cfg_t, model, NULL,
                           "Model directory for tokenizer and config (default: a small one "
                           "written by genmodel)"),
    SL_CONFIG_STRING_ENTRY("bin-dir", "SLUICE_BIN_DIR", rp_cfg_t, bin_dir, NULL,
                           "Directory of the sluice-* programs (default: ../bin next to this "
                           "program)"),
    SL_CONFIG_STRING_ENTRY("router-args", NULL, rp_cfg_t, router_args, NULL,
                           "Extra sluice-router flags, space-separated"),
    SL_CONFIG_DOUBLE_ENTRY("timeout", NULL, rp_cfg_t, timeout_s, "1800", 1, 1e6,
                           "Per-request timeout, seconds"),
    SL_CONFIG_BOOL_ENTRY("progress", NULL, rp_cfg_t, progress, "false",
                         "A status line on stderr every second"),
    SL_CONFIG_BOOL_ENTRY("keep-logs", NULL, rp_cfg_t, keep_logs, "false",
                         "Keep the servers' logs (always kept when a mode fails)"),
};
#define RP_NOPTS (sizeof rp_table / sizeof rp_table[0])

static const char *const rp_mode_names[] = {"kv", "round-robin", "random", "least-loaded"};

static volatile sig_atomic_t rp_signalled;

static void rp_on_signal(int sig) {
    (void)sig;
    rp_signalled = 1;
    client_stop();
}

/* One mode's figures. */
typedef struct rp_mode {
    char name[32];
    bool ran;
    client_results_t res;
    stats_samples_t *ttft, *e2e;
    stats_summary_t s_ttft, s_itl, s_e2e;
    uint64_t prompt_tokens, cached_tokens, output_mismatch, usage_missing;
    double hit_rate;        /* cached / prompt tokens, from usage */
    double router_hit_rate; /* frontend's promised overlap / prompt blocks; -1 unknown */
    double fallbacks;       /* frontend's route fallbacks */
    double lateness_p99_ms;
    char first_error[160];
} rp_mode_t;

static int rp_mode_summarize(rp_mode_t *m) {
    stats_samples_t *late = stats_samples_new();
    m->ttft = stats_samples_new();
    m->e2e = stats_samples_new();
    if (!late || !m->ttft || !m->e2e) {
        stats_samples_free(late);
        return SL_ENOMEM;
    }
    for (size_t i = 0; i < m->res.n; i++) {
        const client_rec_t *r = &m->res.recs[i];
        if (!r->ok) {
            if (!m->first_error[0] && r->error[0])
                snprintf(m->first_error, sizeof m->first_error, "%s", r->error);
            continue;
        }
        stats_samples_add(m->ttft, r->ttft_ms);
        stats_samples_add(m->e2e, r->e2e_ms);
        stats_samples_add(late, r->lateness_ms);
        if (r->prompt_tokens < 0 || r->cached_tokens < 0) {
            m->usage_missing++;
        } else {
            m->prompt_tokens += (uint64_t)r->prompt_tokens;
            m->cached_tokens += (uint64_t)r->cached_tokens;
        }
        if (r->completion_tokens != (int64_t)r->want_output) m->output_mismatch++;
    }
    stats_samples_summary(m->ttft, &m->s_ttft);
    stats_samples_summary(m->e2e, &m->s_e2e);
    stats_samples_summary(m->res.itl_ms, &m->s_itl);
    m->hit_rate = m->prompt_tokens ? (double)m->cached_tokens / (double)m->prompt_tokens : 0;
    m->lateness_p99_ms = 0;
    if (stats_samples_count(late)) stats_samples_percentile(late, 99, &m->lateness_p99_ms);
    stats_samples_free(late);
    return 0;
}

static void rp_mode_release(rp_mode_t *m) {
    client_results_release(&m->res);
    stats_samples_free(m->ttft);
    stats_samples_free(m->e2e);
}

/* Writes a copy of the mocker parameters (or {}) with speedup replaced. */
static int rp_mocker_file(const char *src, double speedup, const char *dst, char *err,
                          size_t errlen) {
    int rc = 0;
    char *text = NULL, *out = NULL;
    cJSON *j = NULL;
    FILE *f = NULL;
    if (src) {
        if (!(f = fopen(src, "rb"))) {
            snprintf(err, errlen, "--mocker-params %.900s: %s", src, strerror(errno));
            return SL_EINVAL;
        }
        char buf[65536];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        f = NULL;
        buf[n] = 0;
        j = cJSON_Parse(buf);
        if (!cJSON_IsObject(j)) {
            snprintf(err, errlen, "--mocker-params %.900s: not a JSON object", src);
            rc = SL_EINVAL;
            goto out;
        }
    } else if (!(j = cJSON_CreateObject())) {
        return SL_ENOMEM;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(j, "speedup");
    if (!cJSON_AddNumberToObject(j, "speedup", speedup) || !(out = cJSON_Print(j))) {
        rc = SL_ENOMEM;
        goto out;
    }
    if (!(f = fopen(dst, "w")) || fputs(out, f) < 0) {
        snprintf(err, errlen, "%.900s: %s", dst, strerror(errno));
        rc = SL_EIO;
    }
out:
    if (f) fclose(f);
    free(text);
    cJSON_free(out);
    cJSON_Delete(j);
    return rc;
}

static int rp_vocab_check(const char *model_dir, char *err, size_t errlen) {
    char path[PATH_MAX + 16], buf[65536];
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%.900s: %s", path, strerror(errno));
        return SL_EINVAL;
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "vocab_size");
    int rc = cJSON_IsNumber(v) && v->valuedouble >= RP_PROMPT_VOCAB ? 0 : SL_EINVAL;
    if (rc) snprintf(err, errlen, "%.900s: vocab_size missing or below %d", path, RP_PROMPT_VOCAB);
    cJSON_Delete(j);
    return rc;
}

static cJSON *rp_summary_json(const stats_summary_t *s) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "count", (double)s->count);
    cJSON_AddNumberToObject(o, "mean", s->mean);
    cJSON_AddNumberToObject(o, "min", s->min);
    cJSON_AddNumberToObject(o, "max", s->max);
    cJSON_AddNumberToObject(o, "p50", s->p50);
    cJSON_AddNumberToObject(o, "p90", s->p90);
    cJSON_AddNumberToObject(o, "p99", s->p99);
    return o;
}

static void rp_table_print(FILE *f, rp_mode_t *m, size_t n, const oracle_result_t *orc,
                           const rp_cfg_t *cfg, size_t n_req) {
    fprintf(f,
            "\nreplay: %zu requests, %lld workers, speed %g, scale %g, kv-blocks %lld "
            "(times are wall-clock ms)\n",
            n_req, (long long)cfg->workers, cfg->speed, cfg->scale, (long long)cfg->kv_blocks);
    fprintf(f, "%-13s %9s %9s %9s %9s %9s %7s %7s %9s %9s %6s %6s\n", "mode", "ok/sent", "TTFT p50",
            "p90", "p99", "mean", "ITL p50", "p99", "E2E p50", "p99", "hit", "router");
    for (size_t i = 0; i < n; i++) {
        if (!m[i].ran) continue;
        char okc[32], rh[16];
        snprintf(okc, sizeof okc, "%llu/%zu", (unsigned long long)m[i].res.ok, m[i].res.n);
        if (m[i].router_hit_rate >= 0)
            snprintf(rh, sizeof rh, "%.3f", m[i].router_hit_rate);
        else
            snprintf(rh, sizeof rh, "-");
        fprintf(f, "%-13s %9s %9.1f %9.1f %9.1f %9.1f %7.2f %7.2f %9.1f %9.1f %6.3f %6s\n",
                m[i].name, okc, m[i].s_ttft.p50, m[i].s_ttft.p90, m[i].s_ttft.p99, m[i].s_ttft.mean,
                m[i].s_itl.p50, m[i].s_itl.p99, m[i].s_e2e.p50, m[i].s_e2e.p99, m[i].hit_rate, rh);
    }
    fprintf(f, "%-13s %69s %6.3f  (ideal routing, same LRU capacity)\n", "oracle", "",
            orc->hit_rate);
    fprintf(f, "%-13s %69s %6.3f  (every block cached everywhere)\n", "unbounded", "",
            orc->unbounded_hit_rate);
    for (size_t i = 0; i < n; i++) {
        if (!m[i].ran) continue;
        if (m[i].res.failed || m[i].res.cancelled)
            fprintf(f, "%s: %llu failed, %llu cancelled; first error: %s\n", m[i].name,
                    (unsigned long long)m[i].res.failed, (unsigned long long)m[i].res.cancelled,
                    m[i].first_error);
        if (m[i].output_mismatch)
            fprintf(f, "%s: %llu requests returned another number of tokens than asked\n",
                    m[i].name, (unsigned long long)m[i].output_mismatch);
        if (m[i].fallbacks > 0)
            fprintf(f, "%s: %.0f route fallbacks (router did not answer in time)\n", m[i].name,
                    m[i].fallbacks);
    }
    for (size_t i = 0; i < n; i++) /* ratios to round-robin */
        if (m[i].ran && !strcmp(m[i].name, "round-robin"))
            for (size_t k = 0; k < n; k++)
                if (k != i && m[k].ran && m[k].s_ttft.mean > 0)
                    fprintf(f, "TTFT mean round-robin / %s: %.2fx\n", m[k].name,
                            m[i].s_ttft.mean / m[k].s_ttft.mean);
}

static int rp_json_write(const char *path, rp_mode_t *m, size_t n, const oracle_result_t *orc,
                         const rp_cfg_t *cfg, size_t n_req, uint32_t tph) {
    int rc = SL_ENOMEM;
    char *text = NULL;
    cJSON *root = cJSON_CreateObject(), *c, *o, *arr;
    if (!root) return SL_ENOMEM;
    if (!(c = cJSON_AddObjectToObject(root, "config"))) goto out;
    cJSON_AddStringToObject(c, "trace", cfg->trace);
    cJSON_AddNumberToObject(c, "requests", (double)n_req);
    cJSON_AddNumberToObject(c, "workers", (double)cfg->workers);
    cJSON_AddNumberToObject(c, "speed", cfg->speed);
    cJSON_AddNumberToObject(c, "scale", cfg->scale);
    cJSON_AddNumberToObject(c, "tokens_per_hash_id", tph);
    cJSON_AddNumberToObject(c, "block_size", (double)cfg->block_size);
    cJSON_AddNumberToObject(c, "kv_blocks", (double)cfg->kv_blocks);
    if (cfg->mocker_params) cJSON_AddStringToObject(c, "mocker_params", cfg->mocker_params);
    cJSON_AddNumberToObject(c, "mocker_speedup",
                            cfg->mocker_speedup > 0 ? cfg->mocker_speedup : cfg->speed);
    if (!(o = cJSON_AddObjectToObject(root, "oracle"))) goto out;
    cJSON_AddNumberToObject(o, "hit_rate", orc->hit_rate);
    cJSON_AddNumberToObject(o, "unbounded_hit_rate", orc->unbounded_hit_rate);
    cJSON_AddNumberToObject(o, "prompt_tokens", (double)orc->prompt_tokens);
    cJSON_AddNumberToObject(o, "cached_tokens", (double)orc->cached_tokens);
    if (!(arr = cJSON_AddArrayToObject(root, "modes"))) goto out;
    for (size_t i = 0; i < n; i++) {
        if (!m[i].ran) continue;
        cJSON *x = cJSON_CreateObject(), *rq;
        if (!x) goto out;
        cJSON_AddItemToArray(arr, x);
        cJSON_AddStringToObject(x, "mode", m[i].name);
        if (!(rq = cJSON_AddObjectToObject(x, "requests"))) goto out;
        cJSON_AddNumberToObject(rq, "sent", (double)m[i].res.sent);
        cJSON_AddNumberToObject(rq, "ok", (double)m[i].res.ok);
        cJSON_AddNumberToObject(rq, "failed", (double)m[i].res.failed);
        cJSON_AddNumberToObject(rq, "cancelled", (double)m[i].res.cancelled);
        cJSON_AddNumberToObject(rq, "output_mismatch", (double)m[i].output_mismatch);
        if (m[i].first_error[0]) cJSON_AddStringToObject(x, "first_error", m[i].first_error);
        cJSON_AddItemToObject(x, "ttft_ms", rp_summary_json(&m[i].s_ttft));
        cJSON_AddItemToObject(x, "itl_ms", rp_summary_json(&m[i].s_itl));
        cJSON_AddItemToObject(x, "e2e_ms", rp_summary_json(&m[i].s_e2e));
        cJSON_AddNumberToObject(x, "hit_rate", m[i].hit_rate);
        cJSON_AddNumberToObject(x, "prompt_tokens", (double)m[i].prompt_tokens);
        cJSON_AddNumberToObject(x, "cached_tokens", (double)m[i].cached_tokens);
        if (m[i].router_hit_rate >= 0)
            cJSON_AddNumberToObject(x, "router_hit_rate", m[i].router_hit_rate);
        cJSON_AddNumberToObject(x, "route_fallbacks", m[i].fallbacks);
        cJSON_AddNumberToObject(x, "send_lateness_p99_ms", m[i].lateness_p99_ms);
        cJSON_AddNumberToObject(x, "duration_s", m[i].res.duration_s);
    }
    if (!(text = cJSON_Print(root))) goto out;
    FILE *f = strcmp(path, "-") ? fopen(path, "w") : stdout;
    if (!f) {
        rc = -errno;
        goto out;
    }
    rc = fputs(text, f) < 0 || fputc('\n', f) < 0 ? SL_EIO : 0;
    if (f != stdout && fclose(f)) rc = SL_EIO;
out:
    cJSON_free(text);
    cJSON_Delete(root);
    return rc;
}

/* Runs one mode over a fresh fleet. Returns 0 (failed requests are results)
 * or an error with a message in err. */
static int rp_run_mode(const rp_cfg_t *cfg, const rfleet_cfg_t *base, const trace_t *t, size_t n,
                       uint32_t tph, rp_mode_t *m, const char *run_dir, char *err, size_t errlen) {
    int rc = 0;
    rfleet_t *f = NULL;
    char log_dir[3100], url[128];
    snprintf(log_dir, sizeof log_dir, "%.3000s/%.31s", run_dir, m->name);
    if (mkdir(log_dir, 0755) && errno != EEXIST) {
        snprintf(err, errlen, "%.900s: %s", log_dir, strerror(errno));
        return -errno;
    }
    rfleet_cfg_t fc = *base;
    fc.mode = m->name;
    fc.log_dir = log_dir;
    fprintf(stderr, "replay: %s: starting %u workers, router and frontend\n", m->name, fc.workers);
    if ((rc = rfleet_start(&fc, &f, err, errlen))) return rc;
    if ((rc = client_results_init(&m->res, n))) goto out;
    snprintf(url, sizeof url, "%s/v1/completions", rfleet_frontend_url(f));
    client_cfg_t cc = {.url = url,
                       .model = fc.model_name,
                       .speed = cfg->speed,
                       .tokens_per_hash = tph,
                       .vocab = RP_PROMPT_VOCAB,
                       .timeout_s = cfg->timeout_s,
                       .progress = cfg->progress};
    fprintf(stderr, "replay: %s: sending %zu requests\n", m->name, n);
    if ((rc = client_run(&cc, t, &m->res))) {
        snprintf(err, errlen, "client: %s", sl_strerror(rc));
        goto out;
    }
    double ov = 0, pb = 0;
    m->router_hit_rate = -1;
    if (!strcmp(m->name, "kv") &&
        !rfleet_frontend_metric(f, "sluice_frontend_router_overlap_blocks_total", &ov) &&
        !rfleet_frontend_metric(f, "sluice_frontend_router_prompt_blocks_total", &pb) && pb > 0)
        m->router_hit_rate = ov / pb;
    if (rfleet_frontend_metric(f, "sluice_frontend_route_fallbacks_total", &m->fallbacks))
        m->fallbacks = 0;
    m->ran = true;
    rc = rp_mode_summarize(m);
out:
    rfleet_stop(f);
    return rc;
}

int main(int argc, char **argv) {
    int rc = 0, exit_code = 1;
    rp_cfg_t cfg = {0};
    trace_t *t = NULL;
    rp_mode_t modes[RP_MAX_MODES];
    size_t n_modes = 0;
    char err[1024] = "", run_dir[PATH_MAX] = "", self_dir[PATH_MAX], bin_dir[PATH_MAX];
    char model_dir[PATH_MAX], mocker_path[PATH_MAX + 32];
    bool keep = false;
    memset(modes, 0, sizeof modes);

    sl_config_parse_out_t po;
    rc = sl_config_parse(rp_table, RP_NOPTS, &cfg, argc, argv, &po);
    if (rc) {
        fprintf(stderr, "replay: %s\n", po.error);
        exit_code = 2;
        goto out;
    }
    if (po.help) {
        char *help = sl_config_help(rp_table, RP_NOPTS, "replay", NULL,
                                    "Replays a Mooncake trace against mocker workers behind the "
                                    "real frontend and router (see bench/replay/README.md).");
        if (help) fputs(help, stdout);
        free(help);
        exit_code = help ? 0 : 1;
        goto out;
    }
    if (po.nargs) {
        fprintf(stderr, "replay: unexpected argument \"%s\" (see --help)\n", po.args[0]);
        exit_code = 2;
        goto out;
    }
    /* modes */
    char mode_list[256];
    snprintf(mode_list, sizeof mode_list, "%s", cfg.modes ? cfg.modes : cfg.mode);
    for (char *save = NULL, *tok = strtok_r(mode_list, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        bool known = false;
        for (size_t i = 0; i < sizeof rp_mode_names / sizeof rp_mode_names[0]; i++)
            known |= !strcmp(tok, rp_mode_names[i]);
        if (!known || n_modes == RP_MAX_MODES) {
            fprintf(stderr, "replay: %s mode \"%s\" (kv, round-robin, random, least-loaded)\n",
                    known ? "too many modes at" : "unknown", tok);
            exit_code = 2;
            goto out;
        }
        snprintf(modes[n_modes++].name, sizeof modes[0].name, "%s", tok);
    }
    if (!n_modes) {
        fprintf(stderr, "replay: no mode given\n");
        exit_code = 2;
        goto out;
    }
    /* the trace's scale in our blocks */
    double tph_d = TRACE_BLOCK_TOKENS * cfg.scale;
    uint32_t tph = (uint32_t)llround(tph_d);
    if (fabs(tph_d - tph) > 1e-9 || tph == 0 || tph % (uint32_t)cfg.block_size) {
        fprintf(stderr,
                "replay: 512 * --scale (%g) must be a whole multiple of --block-size (%lld)\n",
                tph_d, (long long)cfg.block_size);
        exit_code = 2;
        goto out;
    }
    rc = trace_load(cfg.trace, (size_t)cfg.limit, &t, err, sizeof err);
    if (rc) {
        fprintf(stderr, "replay: %s\n", err[0] ? err : sl_strerror(rc));
        exit_code = rc == SL_ENOMEM ? 1 : 2;
        goto out;
    }
    size_t n = t->n;

    /* the oracle first: it needs no servers */
    oracle_cfg_t oc = {.workers = (uint32_t)cfg.workers,
                       .capacity = (uint32_t)cfg.kv_blocks,
                       .block_size = (uint32_t)cfg.block_size,
                       .tokens_per_hash = tph};
    oracle_result_t orc;
    if ((rc = oracle_run(t, n, &oc, &orc))) goto fail;
    fprintf(stderr, "replay: %zu requests; oracle hit rate %.3f, unbounded %.3f\n", n, orc.hit_rate,
            orc.unbounded_hit_rate);

    /* programs, model, run directory */
    ssize_t sl = readlink("/proc/self/exe", self_dir, sizeof self_dir - 1);
    if (sl <= 0) {
        rc = -errno;
        goto fail;
    }
    self_dir[sl] = 0;
    dirname(self_dir);
    snprintf(bin_dir, sizeof bin_dir, "%s", cfg.bin_dir ? cfg.bin_dir : "");
    if (!cfg.bin_dir) snprintf(bin_dir, sizeof bin_dir, "%.4000s/../bin", self_dir);
    if (harness_mkdtemp("sluice-replay", run_dir, sizeof run_dir)) {
        rc = SL_EIO;
        goto fail;
    }
    if (cfg.model) {
        snprintf(model_dir, sizeof model_dir, "%s", cfg.model);
    } else {
        char cmd[3 * PATH_MAX];
        snprintf(model_dir, sizeof model_dir, "%.4000s/model", run_dir);
        snprintf(cmd, sizeof cmd,
                 "'%s/genmodel' --arch llama --dtype f32 --layers 1 --hidden 64 --heads 4 "
                 "--kv-heads 2 --intermediate 128 --vocab 512 --max-pos 1048576 --seed 7 "
                 "--out '%s' >/dev/null",
                 self_dir, model_dir);
        if (system(cmd) != 0) {
            snprintf(err, sizeof err, "genmodel failed: %.900s", cmd);
            rc = SL_EIO;
            goto fail_msg;
        }
    }
    if ((rc = rp_vocab_check(model_dir, err, sizeof err))) {
        fprintf(stderr, "replay: %s\n", err);
        exit_code = 2;
        goto out;
    }
    snprintf(mocker_path, sizeof mocker_path, "%s/mocker.json", run_dir);
    rc = rp_mocker_file(cfg.mocker_params, cfg.mocker_speedup > 0 ? cfg.mocker_speedup : cfg.speed,
                        mocker_path, err, sizeof err);
    if (rc == SL_EINVAL) {
        fprintf(stderr, "replay: %s\n", err);
        exit_code = 2;
        goto out;
    }
    if (rc) goto fail_msg;

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = rp_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    rfleet_cfg_t base = {.bin_dir = bin_dir,
                         .model_dir = model_dir,
                         .model_name = "replay",
                         .mocker_params = mocker_path,
                         .router_args = cfg.router_args,
                         .workers = (uint32_t)cfg.workers,
                         .kv_blocks = (uint32_t)cfg.kv_blocks,
                         .block_size = (uint32_t)cfg.block_size,
                         .max_batch_tokens = (uint32_t)cfg.max_batch_tokens,
                         .max_seqs = (uint32_t)cfg.max_seqs,
                         .start_timeout_ms = 60000};
    for (size_t i = 0; i < n_modes && !rp_signalled; i++) {
        rc = rp_run_mode(&cfg, &base, t, n, tph, &modes[i], run_dir, err, sizeof err);
        if (rc) {
            keep = true;
            goto fail_msg;
        }
        if (modes[i].res.failed || modes[i].res.cancelled) keep = true;
    }
    rp_table_print(stdout, modes, n_modes, &orc, &cfg, n);
    if (cfg.json && (rc = rp_json_write(cfg.json, modes, n_modes, &orc, &cfg, n, tph))) {
        snprintf(err, sizeof err, "--json %.900s: %s", cfg.json, sl_strerror(rc));
        goto fail_msg;
    }
    exit_code = rp_signalled ? 1 : 0;
    goto out;
fail:
    snprintf(err, sizeof err, "%s", sl_strerror(rc));
fail_msg:
    fprintf(stderr, "replay: %s\n", err);
    exit_code = 1;
out:
    if (run_dir[0]) {
        if (keep || cfg.keep_logs)
            fprintf(stderr, "replay: logs kept in %s\n", run_dir);
        else
            harness_rmtree(run_dir);
    }
    for (size_t i = 0; i < n_modes; i++) rp_mode_release(&modes[i]);
    trace_free(t);
    sl_config_release(rp_table, RP_NOPTS, &cfg);
    return exit_code;
}
