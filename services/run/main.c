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
#include "common/base/config.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/engine/engine.h"
#include "common/engine/model.h"
#include "common/engine/tokenizer.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RUN_MAX_STOP 16

/* ---- configuration: the project's config table (config.h) -------------------- */

typedef struct run_cfg {
    char *model, *prompt;
    uint64_t max_tokens, top_k, min_tokens, logprobs, threads, kv_blocks, block_size;
    uint64_t max_batch_tokens, seed;
    double temperature, top_p, min_p, rep_pen, pres_pen, freq_pen;
    char *stop_unused; /* --stop is collected before parsing (run_args_split) */
    bool json, tokenize, detokenize, ignore_eos, no_special, quiet;
    /* Set by run_args_split, not by the table. */
    bool has_seed;
    const char *stop[RUN_MAX_STOP]; /* (n_stop) pointers into argv */
    uint32_t n_stop;
} run_cfg_t;

#define U24 (UINT64_C(1) << 24)
static const sl_config_entry_t run_table[] = {
    SL_CONFIG_STRING_ENTRY("model", NULL, run_cfg_t, model, NULL,
                           "Hugging Face model directory (required)"),
    SL_CONFIG_STRING_ENTRY("prompt", NULL, run_cfg_t, prompt, NULL,
                           "prompt text to continue (--prompt=TEXT if it starts with --)"),
    SL_CONFIG_UINT64_ENTRY("max-tokens", NULL, run_cfg_t, max_tokens, "64", 0, U24,
                           "tokens to generate (0 = up to the context)"),
    SL_CONFIG_UINT64_ENTRY("min-tokens", NULL, run_cfg_t, min_tokens, "0", 0, U24,
                           "no EOS / stop before this many"),
    SL_CONFIG_DOUBLE_ENTRY("temperature", NULL, run_cfg_t, temperature, "0", 0, 100, "0 = greedy"),
    SL_CONFIG_DOUBLE_ENTRY("top-p", NULL, run_cfg_t, top_p, "1", 0, 1,
                           "nucleus sampling mass (1 = off)"),
    SL_CONFIG_UINT64_ENTRY("top-k", NULL, run_cfg_t, top_k, "0", 0, U24,
                           "keep the k most likely (0 = off)"),
    SL_CONFIG_DOUBLE_ENTRY("min-p", NULL, run_cfg_t, min_p, "0", 0, 1,
                           "drop tokens below min_p * max prob"),
    SL_CONFIG_DOUBLE_ENTRY("repetition-penalty", NULL, run_cfg_t, rep_pen, "1", 0, 100,
                           "vLLM repetition penalty"),
    SL_CONFIG_DOUBLE_ENTRY("presence-penalty", NULL, run_cfg_t, pres_pen, "0", -2, 2,
                           "OpenAI presence penalty"),
    SL_CONFIG_DOUBLE_ENTRY("frequency-penalty", NULL, run_cfg_t, freq_pen, "0", -2, 2,
                           "OpenAI frequency penalty"),
    SL_CONFIG_UINT64_ENTRY("seed", NULL, run_cfg_t, seed, NULL, 0, UINT64_MAX,
                           "sampling seed (reproducible; unset = from the clock)"),
    SL_CONFIG_STRING_ENTRY("stop", NULL, run_cfg_t, stop_unused, NULL,
                           "stop string, not returned (repeatable, up to 16)"),
    SL_CONFIG_BOOL_ENTRY("ignore-eos", NULL, run_cfg_t, ignore_eos, "false", "do not stop at EOS"),
    SL_CONFIG_UINT64_ENTRY("logprobs", NULL, run_cfg_t, logprobs, "0", 0, SAMPLING_MAX_TOP_LOGPROBS,
                           "top alternatives per token in --json"),
    SL_CONFIG_BOOL_ENTRY("json", NULL, run_cfg_t, json, "false",
                         "print ids, logprobs and text as one JSON object"),
    SL_CONFIG_BOOL_ENTRY("tokenize", NULL, run_cfg_t, tokenize, "false",
                         "stdin: JSON strings -> JSON id arrays"),
    SL_CONFIG_BOOL_ENTRY("detokenize", NULL, run_cfg_t, detokenize, "false",
                         "stdin: JSON id arrays -> JSON strings"),
    SL_CONFIG_BOOL_ENTRY("no-special", NULL, run_cfg_t, no_special, "false",
                         "encode without BOS/template tokens"),
    SL_CONFIG_UINT64_ENTRY("threads", NULL, run_cfg_t, threads, "0", 0, 1024,
                           "CPU threads (0 = $SLUICE_THREADS or all)"),
    SL_CONFIG_UINT64_ENTRY("kv-blocks", NULL, run_cfg_t, kv_blocks, "0", 0, U24,
                           "KV blocks (0 = 256 MiB worth)"),
    SL_CONFIG_UINT64_ENTRY("block-size", NULL, run_cfg_t, block_size, "16", 1, 1024,
                           "tokens per KV block"),
    SL_CONFIG_UINT64_ENTRY("max-batch-tokens", NULL, run_cfg_t, max_batch_tokens, "512", 1,
                           UINT64_C(1) << 20, "token budget per step"),
    SL_CONFIG_BOOL_ENTRY("quiet", NULL, run_cfg_t, quiet, "false", "no progress or rate lines"),
};
#define RUN_TABLE_N (sizeof run_table / sizeof run_table[0])

static const char run_summary[] =
    "Generates from a prompt with a Hugging Face model directory, streaming text to stdout\n"
    "(decoded as HF's decode of prompt + output, minus the prompt's text), or tokenizes /\n"
    "detokenizes one JSON value per stdin line. Exit status: 0 ok, 1 runtime error, 2 usage.";

static const sl_config_entry_t *run_entry(const char *name, size_t len) {
    for (size_t i = 0; i < RUN_TABLE_N; i++)
        if (strlen(run_table[i].flag) == len && strncmp(run_table[i].flag, name, len) == 0)
            return &run_table[i];
    return NULL;
}

/* --stop may repeat, which a config entry cannot: every --stop is taken out
 * of argv here (into c->stop) and the rest goes to sl_config_parse; the
 * table's "stop" entry only documents it in --help. Also notes whether --seed
 * was given (unset = a seed from the clock). Values are skipped with the
 * rules of sl_config_parse (a value never starts with "--"), so a flag's
 * value is never mistaken for --stop. rest gets argv[0] and what remains
 * (argc entries at most). Returns 0, or SL_EINVAL with err set. */
static int run_args_split(run_cfg_t *c, int argc, char **argv, char **rest, int *n_rest, char *err,
                          size_t errlen) {
    int n = 0;
    bool flags_done = false;
    rest[n++] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (flags_done || strncmp(a, "--", 2) != 0) {
            rest[n++] = argv[i];
            continue;
        }
        if (a[2] == 0) flags_done = true;
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        bool takes_value = !eq && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0;
        if (len == 4 && strncmp(name, "stop", 4) == 0) {
            const char *v = eq ? eq + 1 : takes_value ? argv[++i] : NULL;
            if (!v || !v[0] || c->n_stop >= RUN_MAX_STOP) {
                snprintf(err, errlen, "--stop needs a non-empty string, at most %d times",
                         RUN_MAX_STOP);
                return SL_EINVAL;
            }
            c->stop[c->n_stop++] = v;
            continue;
        }
        if (len == 4 && strncmp(name, "seed", 4) == 0) c->has_seed = true;
        const sl_config_entry_t *e = run_entry(name, len);
        rest[n++] = argv[i];
        if (e && e->type != SL_CONFIG_BOOL && takes_value) rest[n++] = argv[++i];
    }
    *n_rest = n;
    return 0;
}

/* Parses argv into c (zeroed; release with sl_config_release). Returns 0 with
 * *help set for --help, or prints why and returns SL_EINVAL. */
static int cfg_parse(run_cfg_t *c, int argc, char **argv, bool *help) {
    int rc = 0, n_rest = 0;
    sl_config_parse_out_t po;
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    memset(&po, 0, sizeof po);
    *help = false;
    if (!rest) {
        rc = SL_ENOMEM;
        goto out;
    }
    rc = run_args_split(c, argc, argv, rest, &n_rest, po.error, sizeof po.error);
    if (rc == 0) rc = sl_config_parse(run_table, RUN_TABLE_N, c, n_rest, rest, &po);
    if (rc) {
        fprintf(stderr, "sluice-run: %s\n", po.error);
        goto out;
    }
    *help = po.help;
    if (po.help) goto out;
    if (po.nargs) {
        fprintf(stderr, "sluice-run: unexpected argument '%s' (see --help)\n", po.args[0]);
        rc = SL_EINVAL;
        goto out;
    }
    if (!c->model) {
        fprintf(stderr, "sluice-run: --model DIR is required\n");
        rc = SL_EINVAL;
        goto out;
    }
    int modes = (c->prompt != NULL) + c->tokenize + c->detokenize;
    if (modes != 1) {
        fprintf(stderr, "sluice-run: give exactly one of --prompt, --tokenize, --detokenize\n");
        rc = SL_EINVAL;
        goto out;
    }
out:
    free(rest);
    return rc ? SL_EINVAL : 0;
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
    model_opts_t mo = {.n_threads = (int)c->threads,
                       .block_size = (uint32_t)c->block_size,
                       .n_blocks = (uint32_t)c->kv_blocks};
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
    engine_opts_t eo = {.max_batch_tokens = (uint32_t)c->max_batch_tokens,
                        .max_context = mi->context_length,
                        .eos_ids = eos,
                        .n_eos = n_eos,
                        .tokenizer = t,
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
    req.sampling = (sampling_params_t){.temperature = (float)c->temperature,
                                       .top_p = (float)c->top_p,
                                       .top_k = (int32_t)c->top_k,
                                       .min_p = (float)c->min_p,
                                       .presence_penalty = (float)c->pres_pen,
                                       .frequency_penalty = (float)c->freq_pen,
                                       .repetition_penalty = (float)c->rep_pen,
                                       .has_seed = c->has_seed,
                                       .seed = c->seed,
                                       .logprobs = c->json,
                                       .top_logprobs = c->json ? (uint32_t)c->logprobs : 0};
    req.stop = (engine_stop_t){.max_tokens = (uint32_t)c->max_tokens,
                               .min_tokens = (uint32_t)c->min_tokens,
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
    run_cfg_t c;
    sl_tokenizer_t *t = NULL;
    int rc, status = 0;
    bool help = false;
    memset(&c, 0, sizeof c);
    sl_log_init("run");
    if (cfg_parse(&c, argc, argv, &help)) {
        status = 2;
        goto out;
    }
    if (help) {
        char *h =
            sl_config_help(run_table, RUN_TABLE_N, "sluice-run",
                           "--model DIR (--prompt TEXT | --tokenize | --detokenize)", run_summary);
        if (h) fputs(h, stdout);
        free(h);
        status = h ? 0 : 1;
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
    sl_config_release(run_table, RUN_TABLE_N, &c);
    return status;
}
