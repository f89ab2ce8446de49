/* sluice-run - load a Hugging Face model directory and generate from a
 * prompt on this machine, or tokenize / detokenize from the shell.
 *
 *   sluice-run --model DIR --prompt TEXT [--max-tokens N --temperature T
 *              --top-p P --top-k K --min-p M --seed S --stop STR ...] [--json]
 *   sluice-run --model DIR --tokenize    < one JSON string per line
 *   sluice-run --model DIR --detokenize  < one JSON array of ids per line
 *
 * Generation streams text to stdout, with a progress line on stderr while the
 * model loads and the token rates at the end. --json prints instead one JSON
 * object with the prompt ids, generated ids and their logprobs, so runs can
 * be compared exactly. --tokenize / --detokenize need only the tokenizer
 * files in DIR. Exit status: 0 ok, 1 runtime error, 2 bad usage.
 */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/engine/engine.h"
#include "common/engine/model.h"
#include "common/engine/tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RUN_MAX_STOP 16

/* ---- configuration: one table, --help generated from it ------------------------ */

typedef enum opt_type { OPT_STR, OPT_U32, OPT_F32, OPT_U64, OPT_BOOL, OPT_STRS } opt_type_t;

typedef struct run_cfg {
    const char *model, *prompt;
    uint32_t max_tokens, top_k, min_tokens, logprobs, threads, kv_blocks, block_size;
    uint32_t max_batch_tokens;
    float temperature, top_p, min_p, rep_pen, pres_pen, freq_pen;
    uint64_t seed;
    bool has_seed, json, tokenize, detokenize, ignore_eos, no_special, help, quiet;
    const char *stop[RUN_MAX_STOP];
    uint32_t n_stop;
} run_cfg_t;

typedef struct opt {
    const char *flag;
    opt_type_t type;
    size_t off;
    double lo, hi; /* bounds for numbers */
    const char *def, *help;
} opt_t;

#define OFF(f) offsetof(run_cfg_t, f)
static const opt_t opts[] = {
    {"--model", OPT_STR, OFF(model), 0, 0, NULL, "Hugging Face model directory (required)"},
    {"--prompt", OPT_STR, OFF(prompt), 0, 0, NULL, "prompt text to continue"},
    {"--max-tokens", OPT_U32, OFF(max_tokens), 0, 1 << 24, "64",
     "tokens to generate (0 = up to the context)"},
    {"--min-tokens", OPT_U32, OFF(min_tokens), 0, 1 << 24, "0", "no EOS / stop before this many"},
    {"--temperature", OPT_F32, OFF(temperature), 0, 100, "0", "0 = greedy"},
    {"--top-p", OPT_F32, OFF(top_p), 0, 1, "1", "nucleus sampling mass (1 = off)"},
    {"--top-k", OPT_U32, OFF(top_k), 0, 1 << 24, "0", "keep the k most likely (0 = off)"},
    {"--min-p", OPT_F32, OFF(min_p), 0, 1, "0", "drop tokens below min_p * max prob"},
    {"--repetition-penalty", OPT_F32, OFF(rep_pen), 0, 100, "1", "vLLM repetition penalty"},
    {"--presence-penalty", OPT_F32, OFF(pres_pen), -2, 2, "0", "OpenAI presence penalty"},
    {"--frequency-penalty", OPT_F32, OFF(freq_pen), -2, 2, "0", "OpenAI frequency penalty"},
    {"--seed", OPT_U64, OFF(seed), 0, 0, NULL, "sampling seed (reproducible)"},
    {"--stop", OPT_STRS, OFF(stop), 0, 0, NULL, "stop string (repeatable, up to 16)"},
    {"--ignore-eos", OPT_BOOL, OFF(ignore_eos), 0, 0, NULL, "do not stop at EOS"},
    {"--logprobs", OPT_U32, OFF(logprobs), 0, SAMPLING_MAX_TOP_LOGPROBS, "0",
     "top alternatives per token in --json"},
    {"--json", OPT_BOOL, OFF(json), 0, 0, NULL, "print ids and logprobs as JSON"},
    {"--tokenize", OPT_BOOL, OFF(tokenize), 0, 0, NULL, "stdin: JSON strings -> JSON id arrays"},
    {"--detokenize", OPT_BOOL, OFF(detokenize), 0, 0, NULL,
     "stdin: JSON id arrays -> JSON strings"},
    {"--no-special", OPT_BOOL, OFF(no_special), 0, 0, NULL, "encode without BOS/template tokens"},
    {"--threads", OPT_U32, OFF(threads), 0, 1024, "0", "CPU threads (0 = $SLUICE_THREADS or all)"},
    {"--kv-blocks", OPT_U32, OFF(kv_blocks), 0, 1 << 24, "0", "KV blocks (0 = 256 MiB worth)"},
    {"--block-size", OPT_U32, OFF(block_size), 1, 1024, "16", "tokens per KV block"},
    {"--max-batch-tokens", OPT_U32, OFF(max_batch_tokens), 1, 1 << 20, "512",
     "token budget per step"},
    {"--quiet", OPT_BOOL, OFF(quiet), 0, 0, NULL, "no progress or rate lines"},
    {"--help", OPT_BOOL, OFF(help), 0, 0, NULL, "this text"},
};
#define N_OPTS (sizeof opts / sizeof *opts)

static void usage(FILE *fp) {
    fprintf(
        fp,
        "usage: sluice-run --model DIR (--prompt TEXT | --tokenize | --detokenize) [options]\n");
    for (size_t i = 0; i < N_OPTS; i++)
        fprintf(fp, "  %-22s %s%s%s%s\n", opts[i].flag, opts[i].help, opts[i].def ? " [" : "",
                opts[i].def ? opts[i].def : "", opts[i].def ? "]" : "");
}

static int opt_set(run_cfg_t *c, const opt_t *o, const char *v) {
    char *end = NULL;
    void *p = (char *)c + o->off;
    errno = 0;
    switch (o->type) {
    case OPT_STR:
        *(const char **)p = v;
        return 0;
    case OPT_BOOL:
        *(bool *)p = true;
        return 0;
    case OPT_STRS:
        if (c->n_stop >= RUN_MAX_STOP || !v[0]) return SL_ERANGE;
        c->stop[c->n_stop++] = v;
        return 0;
    case OPT_U64: {
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || !*v || *end || v[0] == '-') return SL_EINVAL;
        *(uint64_t *)p = x;
        c->has_seed = true; /* --seed is the only u64 */
        return 0;
    }
    case OPT_U32: {
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || !*v || *end || v[0] == '-') return SL_EINVAL;
        if ((double)x < o->lo || (double)x > o->hi) return SL_ERANGE;
        *(uint32_t *)p = (uint32_t)x;
        return 0;
    }
    case OPT_F32: {
        double x = strtod(v, &end);
        if (errno || !*v || *end || !isfinite(x)) return SL_EINVAL;
        if (x < o->lo || x > o->hi) return SL_ERANGE;
        *(float *)p = (float)x;
        return 0;
    }
    }
    return SL_EINVAL;
}

/* Parses argv into c. Returns 0 or prints why and returns SL_EINVAL. */
static int cfg_parse(run_cfg_t *c, int argc, char **argv) {
    for (size_t i = 0; i < N_OPTS; i++)
        if (opts[i].def && opt_set(c, &opts[i], opts[i].def)) return SL_EINVAL;
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a], *val = NULL;
        const char *eq = strchr(arg, '=');
        size_t flen = eq ? (size_t)(eq - arg) : strlen(arg);
        const opt_t *o = NULL;
        for (size_t i = 0; i < N_OPTS; i++)
            if (strlen(opts[i].flag) == flen && strncmp(opts[i].flag, arg, flen) == 0) o = &opts[i];
        if (!o) {
            fprintf(stderr, "sluice-run: unknown option '%s' (see --help)\n", arg);
            return SL_EINVAL;
        }
        if (o->type != OPT_BOOL) {
            if (eq)
                val = eq + 1;
            else if (a + 1 < argc)
                val = argv[++a];
            else {
                fprintf(stderr, "sluice-run: %s needs a value\n", o->flag);
                return SL_EINVAL;
            }
        } else if (eq) {
            fprintf(stderr, "sluice-run: %s takes no value\n", o->flag);
            return SL_EINVAL;
        }
        int rc = opt_set(c, o, val);
        if (rc) {
            if (o->type == OPT_STRS)
                fprintf(stderr, "sluice-run: %s: empty or more than %d\n", o->flag, RUN_MAX_STOP);
            else if (o->type == OPT_STR || o->type == OPT_U64)
                fprintf(stderr, "sluice-run: bad value '%s' for %s\n", val, o->flag);
            else
                fprintf(stderr, "sluice-run: bad value '%s' for %s (%g..%g)\n", val, o->flag, o->lo,
                        o->hi);
            return SL_EINVAL;
        }
    }
    if (c->help) return 0;
    if (!c->model) {
        fprintf(stderr, "sluice-run: --model DIR is required\n");
        return SL_EINVAL;
    }
    int modes = (c->prompt != NULL) + c->tokenize + c->detokenize;
    if (modes != 1) {
        fprintf(stderr, "sluice-run: give exactly one of --prompt, --tokenize, --detokenize\n");
        return SL_EINVAL;
    }
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- tokenize / detokenize --------------------------------------------------------- */

static int print_json_and_free(cJSON *j) {
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!s) return SL_ENOMEM;
    puts(s);
    free(s);
    return 0;
}

static int run_tokenize(const run_cfg_t *c, const sl_tokenizer_t *t) {
    int rc = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned long lineno = 0;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        cJSON *in = cJSON_ParseWithLength(line, (size_t)n);
        if (!in || !cJSON_IsString(in)) {
            fprintf(stderr, "sluice-run: line %lu: expected a JSON string\n", lineno);
            cJSON_Delete(in);
            rc = SL_EINVAL;
            goto out;
        }
        const char *s = cJSON_GetStringValue(in);
        uint32_t *ids = NULL;
        size_t n_ids = 0;
        rc = sl_tokenizer_encode(t, s, strlen(s), !c->no_special, &ids, &n_ids);
        cJSON_Delete(in);
        if (rc) goto out;
        cJSON *arr = cJSON_CreateArray();
        for (size_t i = 0; arr && i < n_ids; i++)
            cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
        free(ids);
        rc = print_json_and_free(arr);
        if (rc) goto out;
        fflush(stdout);
    }
out:
    free(line);
    return rc;
}

static int run_detokenize(const sl_tokenizer_t *t) {
    int rc = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned long lineno = 0;
    uint32_t *ids = NULL;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        cJSON *in = cJSON_ParseWithLength(line, (size_t)n);
        int len = in && cJSON_IsArray(in) ? cJSON_GetArraySize(in) : -1;
        free(ids);
        ids = len > 0 ? malloc((size_t)len * sizeof *ids) : NULL;
        bool ok = len >= 0 && (len == 0 || ids);
        for (int i = 0; ok && i < len; i++) {
            cJSON *v = cJSON_GetArrayItem(in, i);
            double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
            ok = d >= 0 && d < 4294967296.0 && d == floor(d);
            if (ok) ids[i] = (uint32_t)d;
        }
        cJSON_Delete(in);
        if (!ok) {
            fprintf(stderr, "sluice-run: line %lu: expected a JSON array of token ids\n", lineno);
            rc = SL_EINVAL;
            goto out;
        }
        char *text = NULL;
        size_t tlen = 0;
        rc = sl_tokenizer_decode(t, ids, (size_t)len, false, &text, &tlen);
        if (rc) goto out;
        rc = print_json_and_free(cJSON_CreateString(text));
        free(text);
        if (rc) goto out;
        fflush(stdout);
    }
out:
    free(ids);
    free(line);
    return rc;
}

/* ---- generation -------------------------------------------------------------------- */

typedef struct progress {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    const char *what;
    double t0;
} progress_t;

static void *progress_main(void *arg) {
    progress_t *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->done) {
        fprintf(stderr, "\r%s ... %.1f s", p->what, now_s() - p->t0);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

typedef struct gen {
    const run_cfg_t *c;
    uint32_t *ids; /* (n, cap) generated */
    float *lps;
    cJSON *tops; /* per-token alternatives for --json */
    uint32_t n, cap;
    engine_finish_t finish;
    int error;
    uint32_t cached;
    double t_first;
    char *text; /* generated text (for --json) */
    size_t text_len, text_cap;
    int oom;
} gen_t;

static void on_output(const engine_output_t *o, void *ud) {
    gen_t *g = ud;
    if (o->n_tokens && g->n == 0) g->t_first = now_s();
    for (uint32_t i = 0; i < o->n_tokens; i++) {
        if (g->n == g->cap) {
            uint32_t nc = g->cap ? g->cap * 2 : 256;
            uint32_t *ni = realloc(g->ids, nc * sizeof *ni);
            if (ni) g->ids = ni;
            float *nl = realloc(g->lps, nc * sizeof *nl);
            if (nl) g->lps = nl;
            if (!ni || !nl) {
                g->oom = 1;
                return;
            }
            g->cap = nc;
        }
        g->ids[g->n] = o->tokens[i];
        g->lps[g->n] = o->logprobs ? o->logprobs[i].logprob : 0;
        if (g->tops && o->logprobs) {
            cJSON *alts = cJSON_CreateArray();
            for (uint32_t k = 0; alts && k < o->logprobs[i].n_top; k++) {
                cJSON *a = cJSON_CreateObject();
                cJSON_AddNumberToObject(a, "id", o->logprobs[i].top[k].token);
                cJSON_AddNumberToObject(a, "logprob", o->logprobs[i].top[k].logprob);
                cJSON_AddItemToArray(alts, a);
            }
            cJSON_AddItemToArray(g->tops, alts);
        }
        g->n++;
    }
    if (o->text_len) {
        if (g->c->json) {
            if (g->text_len + o->text_len + 1 > g->text_cap) {
                size_t nc = (g->text_len + o->text_len + 1) * 2;
                char *nt = realloc(g->text, nc);
                if (!nt) {
                    g->oom = 1;
                    return;
                }
                g->text = nt;
                g->text_cap = nc;
            }
            memcpy(g->text + g->text_len, o->text, o->text_len);
            g->text_len += o->text_len;
            g->text[g->text_len] = 0;
        } else {
            fwrite(o->text, 1, o->text_len, stdout);
            fflush(stdout);
        }
    }
    g->cached = o->cached_tokens;
    g->finish = o->finish;
    g->error = o->error;
}

static int token_bytes_cb(void *ud, uint32_t token, const char **bytes, size_t *len) {
    const sl_tokenizer_t *t = ud;
    if (sl_tokenizer_is_special(t, token)) { /* skip_special, as decode does */
        *bytes = "";
        *len = 0;
        return 0;
    }
    const uint8_t *b;
    int rc = sl_tokenizer_token_bytes(t, token, &b, len);
    *bytes = (const char *)b;
    return rc;
}

static const char *finish_name(engine_finish_t f) {
    switch (f) {
    case ENGINE_FINISH_STOP:
        return "stop";
    case ENGINE_FINISH_LENGTH:
        return "length";
    case ENGINE_FINISH_CANCELLED:
        return "cancelled";
    case ENGINE_FINISH_ERROR:
        return "error";
    default:
        return "none";
    }
}

static int run_generate(const run_cfg_t *c, const sl_tokenizer_t *t) {
    int rc = 0;
    model_t *m = NULL;
    engine_t *e = NULL;
    char *err = NULL;
    uint32_t *prompt = NULL;
    size_t n_prompt = 0;
    gen_t g = {.c = c};
    progress_t pr = {.what = "loading model", .t0 = now_s()};
    bool show = !c->quiet;

    rc = sl_tokenizer_encode(t, c->prompt, strlen(c->prompt), !c->no_special, &prompt, &n_prompt);
    if (rc) {
        fprintf(stderr, "sluice-run: cannot tokenize the prompt: %s\n", sl_strerror(rc));
        goto out;
    }
    if (n_prompt == 0) {
        fprintf(stderr, "sluice-run: the prompt has no tokens\n");
        rc = SL_EINVAL;
        goto out;
    }
    if (show) {
        pthread_mutex_init(&pr.mu, NULL);
        pthread_cond_init(&pr.cv, NULL);
        if (pthread_create(&pr.th, NULL, progress_main, &pr) != 0) show = false;
    }
    model_opts_t mo = {
        .n_threads = (int)c->threads, .block_size = c->block_size, .n_blocks = c->kv_blocks};
    rc = model_load(c->model, &mo, &m, &err);
    if (show) {
        pthread_mutex_lock(&pr.mu);
        pr.done = true;
        pthread_cond_signal(&pr.cv);
        pthread_mutex_unlock(&pr.mu);
        pthread_join(pr.th, NULL);
        pthread_mutex_destroy(&pr.mu);
        pthread_cond_destroy(&pr.cv);
    }
    if (rc) {
        fprintf(stderr, "%ssluice-run: cannot load %s: %s\n", show ? "\n" : "", c->model,
                err ? err : sl_strerror(rc));
        goto out;
    }
    const model_info_t *mi = model_info(m);
    if (show)
        fprintf(stderr,
                "\rloaded %s: %s %s, %u layers, %.1f MB of weights, %u KV blocks in %.2f s\n",
                c->model, model_arch_name(mi->config.arch), sl_dtype_name(mi->weight_dtype),
                mi->n_layers, (double)mi->weight_bytes / 1e6, mi->n_blocks, now_s() - pr.t0);
    uint32_t eos[MODEL_CONFIG_MAX_EOS + 1], n_eos = 0;
    for (uint32_t i = 0; i < mi->config.n_eos; i++) eos[n_eos++] = mi->config.eos_token_ids[i];
    if (sl_tokenizer_eos_id(t) >= 0) eos[n_eos++] = (uint32_t)sl_tokenizer_eos_id(t);
    engine_opts_t eo = {.max_batch_tokens = c->max_batch_tokens,
                        .max_context = mi->context_length,
                        .eos_ids = eos,
                        .n_eos = n_eos,
                        .token_bytes = token_bytes_cb,
                        .token_bytes_ud = (void *)t,
                        .seed = (uint64_t)time(NULL)};
    e = engine_new(model_forward(m), &eo);
    if (!e) {
        rc = SL_ENOMEM;
        goto out;
    }
    engine_request_t req = {.id = "run",
                            .prompt = prompt,
                            .n_prompt = (uint32_t)n_prompt,
                            .on_output = on_output,
                            .ud = &g};
    req.sampling = (sampling_params_t){.temperature = c->temperature,
                                       .top_p = c->top_p,
                                       .top_k = (int32_t)c->top_k,
                                       .min_p = c->min_p,
                                       .presence_penalty = c->pres_pen,
                                       .frequency_penalty = c->freq_pen,
                                       .repetition_penalty = c->rep_pen,
                                       .has_seed = c->has_seed,
                                       .seed = c->seed,
                                       .logprobs = c->json,
                                       .top_logprobs = c->json ? c->logprobs : 0};
    req.stop = (engine_stop_t){.max_tokens = c->max_tokens,
                               .min_tokens = c->min_tokens,
                               .ignore_eos = c->ignore_eos,
                               .stop = c->stop,
                               .n_stop = c->n_stop};
    if (c->json && c->logprobs) g.tops = cJSON_CreateArray();
    rc = engine_add(e, &req);
    if (rc) {
        fprintf(stderr, "sluice-run: request refused: %s\n", sl_strerror(rc));
        goto out;
    }
    double t0 = now_s();
    int left;
    while ((left = engine_step(e)) > 0 && !g.oom) {
    }
    double t1 = now_s();
    if (left < 0) {
        rc = left;
        fprintf(stderr, "sluice-run: engine: %s\n", sl_strerror(rc));
        goto out;
    }
    if (g.oom) {
        rc = SL_ENOMEM;
        goto out;
    }
    if (g.finish == ENGINE_FINISH_ERROR) {
        rc = g.error ? g.error : SL_EIO;
        fprintf(stderr, "sluice-run: generation failed: %s\n", sl_strerror(rc));
        goto out;
    }
    if (c->json) {
        cJSON *j = cJSON_CreateObject();
        cJSON *pi = cJSON_AddArrayToObject(j, "prompt_ids");
        for (size_t i = 0; pi && i < n_prompt; i++)
            cJSON_AddItemToArray(pi, cJSON_CreateNumber(prompt[i]));
        cJSON *gi = cJSON_AddArrayToObject(j, "generated_ids");
        cJSON *lp = cJSON_AddArrayToObject(j, "logprobs");
        for (uint32_t i = 0; gi && lp && i < g.n; i++) {
            cJSON_AddItemToArray(gi, cJSON_CreateNumber(g.ids[i]));
            cJSON_AddItemToArray(lp, cJSON_CreateNumber(g.lps[i]));
        }
        if (g.tops) {
            cJSON_AddItemToObject(j, "top_logprobs", g.tops);
            g.tops = NULL;
        }
        cJSON_AddStringToObject(j, "text", g.text ? g.text : "");
        cJSON_AddStringToObject(j, "finish_reason", finish_name(g.finish));
        cJSON_AddNumberToObject(j, "cached_tokens", g.cached);
        rc = print_json_and_free(j);
        if (rc) goto out;
    } else {
        fputc('\n', stdout);
    }
    if (show) {
        double prefill = g.n ? g.t_first - t0 : t1 - t0, decode = t1 - (g.n ? g.t_first : t1);
        fprintf(stderr,
                "[%zu prompt tokens in %.3f s (%.1f tok/s), %u generated, decode %.1f tok/s, "
                "finish %s]\n",
                n_prompt, prefill, prefill > 0 ? (double)n_prompt / prefill : 0.0, g.n,
                g.n > 1 && decode > 0 ? (double)(g.n - 1) / decode : 0.0, finish_name(g.finish));
    }
out:
    cJSON_Delete(g.tops);
    free(g.ids);
    free(g.lps);
    free(g.text);
    engine_free(e);
    model_free(m);
    free(err);
    free(prompt);
    return rc;
}

int main(int argc, char **argv) {
    run_cfg_t c = {0};
    sl_tokenizer_t *t = NULL;
    int rc, status = 0;
    sl_log_init("run");
    if (cfg_parse(&c, argc, argv)) {
        status = 2;
        goto out;
    }
    if (c.help) {
        usage(stdout);
        goto out;
    }
    rc = sl_tokenizer_load(c.model, &t);
    if (rc) {
        fprintf(stderr, "sluice-run: cannot load the tokenizer in %s: %s\n", c.model,
                sl_strerror(rc));
        status = 1;
        goto out;
    }
    if (c.tokenize)
        rc = run_tokenize(&c, t);
    else if (c.detokenize)
        rc = run_detokenize(t);
    else
        rc = run_generate(&c, t);
    status = rc ? 1 : 0;
out:
    sl_tokenizer_free(t);
    return status;
}
