/* engine_bench.c - prefill and decode throughput of the whole engine loop
 * (scheduler + model forward + sampling) against the machine's yardsticks,
 * with the ratios the CPU engine's targets name, in one run.
 *
 *   engine_bench [--model DIR]... [--batches 1,8,32] [--prompt-len 128]
 *                [--gen 32] [--threads N] [--reps 3] [--bw-mib 1024]
 *                [--max-batch-tokens 2048] [--genmodel PATH]
 *                [--temperature T] [--top-p P]
 *
 * 1. Yardsticks, measured first (and again at the end; the best is used):
 *    memory read bandwidth (STREAM-style vector sum over --bw-mib, all
 *    threads) and OpenBLAS SGEMM GFLOP/s (1024^3 and a prefill shape).
 * 2. Per model (default: the ~100M Llama in f32 and bf16, generated with
 *    bench/genmodel into a temporary directory that is removed afterwards)
 *    and batch B, the best of --reps runs of
 *    - prefill: B requests of prompt-len distinct random tokens, max_tokens
 *      1; tokens/s = B * prompt-len / wall time; FLOP/s counts the matmuls
 *      (2 * params per token, the LM head once per sequence) and attention;
 *    - decode: B requests of 16-token prompts generate --gen tokens each
 *      (ignore_eos, greedy; or seeded draws with --temperature T > 0 and
 *      --top-p P, which cost a pass over the vocabulary per row); after
 *      every request has its first token the
 *      remaining steps are timed: tokens/s = tokens generated / wall time;
 *      weight bytes/s = steps/s * bytes of every matmul weight.
 *    Each also in tokens per CPU second of the process: with --threads 1
 *    that is the engine's own work rate, which a busy shared machine does
 *    not distort (use it to compare builds; wall rates for the targets).
 * 3. The ratios: batch-1 decode weight bytes/s / read bandwidth (target
 *    >= 0.85), best prefill FLOP/s / SGEMM (>= 0.60), batch-32 / batch-1
 *    decode tokens/s (>= 10), bf16 / f32 batch-1 decode speed (~2).
 * Prompts are distinct, so the prefix cache does not help.
 */
#include "common/base/err.h"
#include "common/engine/engine.h"
#include "common/engine/model.h"
#include "kernels/cpu/threadpool.h"
#include "kernels/cpu/yardstick.h"

#include <ftw.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define BENCH_MAX_MODELS  8
#define BENCH_MAX_BATCHES 8

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU seconds of the whole process: with --threads 1 this is the engine's
 * own work, which the neighbours on a shared machine do not inflate. */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double load_avg(void) {
    double l[1] = {0};
    return getloadavg(l, 1) == 1 ? l[0] : -1.0;
}

/* ---- yardsticks ------------------------------------------------------------------ */

typedef struct yardsticks {
    double bw, sgemm_sq, sgemm_pf;
} yardsticks_t;

static void yardsticks_measure(int nt, size_t bw_bytes, yardsticks_t *y) {
    sl_cpu_pool_t *pool = sl_cpu_pool_create(nt);
    y->bw = pool ? cpu_yardstick_read_bw(pool, bw_bytes) : 0;
    sl_cpu_pool_free(pool);
    y->sgemm_sq = cpu_yardstick_sgemm(nt, 1024, 1024, 1024);
    y->sgemm_pf = cpu_yardstick_sgemm(nt, 512, 2048, 768);
}

/* ---- the engine loop ------------------------------------------------------------- */

typedef struct counter {
    uint32_t tokens;
    bool done;
} counter_t;

static void on_out(const engine_output_t *o, void *ud) {
    counter_t *c = ud;
    c->tokens += o->n_tokens;
    if (o->finish != ENGINE_FINISH_NONE) c->done = true;
}

static uint64_t rng_state = 88172645463325252ULL;
static uint32_t rnd(uint32_t n) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

/* Sampling of the decode requests (greedy unless --temperature). */
static float g_temperature, g_top_p;

/* Adds B requests of len random tokens; returns 0 or an error. */
static int add_batch(engine_t *e, uint32_t vocab, uint32_t B, uint32_t len, uint32_t gen,
                     counter_t *cs, int round) {
    uint32_t *p = malloc((size_t)len * sizeof *p);
    if (!p) return SL_ENOMEM;
    int rc = 0;
    for (uint32_t b = 0; b < B && !rc; b++) {
        for (uint32_t i = 0; i < len; i++) p[i] = rnd(vocab);
        char id[32];
        snprintf(id, sizeof id, "r%d-%u", round, b);
        memset(&cs[b], 0, sizeof cs[b]);
        engine_request_t r = {
            .id = id, .prompt = p, .n_prompt = len, .on_output = on_out, .ud = &cs[b]};
        r.stop.max_tokens = gen;
        r.stop.ignore_eos = true;
        r.sampling.temperature = g_temperature;
        r.sampling.top_p = g_top_p;
        r.sampling.has_seed = true;
        r.sampling.seed = b;
        rc = engine_add(e, &r);
    }
    free(p);
    return rc;
}

typedef struct run_result {
    double prefill_tps;     /* best */
    double decode_tps;      /* best */
    double decode_cpu_tps;  /* best, tokens per CPU second of the process */
    double prefill_cpu_tps; /* best, likewise */
} run_result_t;

/* One prefill and one decode measurement of B sequences on e. */
static int run_once(engine_t *e, uint32_t vocab, uint32_t B, uint32_t prompt_len, uint32_t gen,
                    counter_t *cs, int *round, run_result_t *out) {
    int rc;
    kvpool_clear(engine_pool(e));
    if ((rc = add_batch(e, vocab, B, prompt_len, 1, cs, (*round)++))) return rc;
    double t0 = now_s(), c0 = cpu_s();
    while ((rc = engine_step(e)) > 0) {
    }
    double tp = now_s() - t0, cp = cpu_s() - c0;
    if (rc < 0) return rc;
    kvpool_clear(engine_pool(e));
    if ((rc = add_batch(e, vocab, B, 16, gen, cs, (*round)++))) return rc;
    uint32_t started = 0;
    while (started < B && (rc = engine_step(e)) > 0) {
        started = 0;
        for (uint32_t b = 0; b < B; b++) started += cs[b].tokens > 0;
    }
    if (rc < 0) return rc;
    uint32_t before = 0, after = 0;
    for (uint32_t b = 0; b < B; b++) before += cs[b].tokens;
    double t1 = now_s(), c1 = cpu_s();
    while ((rc = engine_step(e)) > 0) {
    }
    double td = now_s() - t1, cd = cpu_s() - c1;
    if (rc < 0) return rc;
    for (uint32_t b = 0; b < B; b++) after += cs[b].tokens;
    out->prefill_tps = (double)B * prompt_len / tp;
    out->prefill_cpu_tps = cp > 0 ? (double)B * prompt_len / cp : 0.0;
    out->decode_tps = td > 0 ? (double)(after - before) / td : 0.0;
    out->decode_cpu_tps = cd > 0 ? (double)(after - before) / cd : 0.0;
    return 0;
}

typedef struct model_result {
    char dtype[8];
    double weight_bytes_step; /* bytes of every matmul weight: streamed once per decode step */
    double flop_per_prompt;   /* prefill FLOPs of one prompt of prompt_len tokens */
    run_result_t r[BENCH_MAX_BATCHES];
} model_result_t;

/* Matmul weight bytes per step and prefill FLOPs per prompt from the config. */
static void model_costs(const model_info_t *mi, uint32_t prompt_len, model_result_t *mr) {
    const model_config_t *c = &mi->config;
    double H = c->hidden_size, Id = c->intermediate_size, hd = c->head_dim;
    double qd = (double)c->n_heads * hd, kvd = (double)c->n_kv_heads * hd;
    double layer = H * qd + 2.0 * H * kvd + qd * H + 3.0 * H * Id;
    double params = (double)mi->n_layers * layer + (double)mi->vocab_size * H;
    mr->weight_bytes_step = params * (double)sl_dtype_size(mi->weight_dtype);
    /* matmuls for every token, the LM head for the last one, and causal
     * attention: QK^T and AV over p keys at position p (1-based). */
    double T = prompt_len;
    mr->flop_per_prompt = 2.0 * T * (double)mi->n_layers * layer +
                          2.0 * H * (double)mi->vocab_size +
                          (double)mi->n_layers * 4.0 * qd * (T * (T + 1.0) / 2.0);
}

static int bench_model(const char *dir, const uint32_t *Bs, int nB, uint32_t prompt_len,
                       uint32_t gen, uint32_t threads, uint32_t mbt, int reps, model_result_t *mr) {
    model_t *m = NULL;
    char *err = NULL;
    model_opts_t mo = {.n_threads = (int)threads, .kv_bytes = (size_t)2 << 30};
    int rc = model_load(dir, &mo, &m, &err);
    if (rc) {
        fprintf(stderr, "engine_bench: %s: %s\n", dir, err ? err : sl_strerror(rc));
        free(err);
        return rc;
    }
    const model_info_t *mi = model_info(m);
    snprintf(mr->dtype, sizeof mr->dtype, "%s", sl_dtype_name(mi->weight_dtype));
    model_costs(mi, prompt_len, mr);
    printf("\nmodel %s: %s %s, %u layers, %.1f MB weights (%.1f MB per decode step), %u KV "
           "blocks\n",
           dir, model_arch_name(mi->config.arch), mr->dtype, mi->n_layers,
           (double)mi->weight_bytes / 1e6, mr->weight_bytes_step / 1e6, mi->n_blocks);
    printf("%-6s %14s %14s %14s %14s %16s %16s\n", "batch", "prefill tok/s", "prefill GF/s",
           "decode tok/s", "decode GB/s", "prefill tok/cpu-s", "decode tok/cpu-s");
    int round = 0;
    for (int bi = 0; bi < nB && rc == 0; bi++) {
        uint32_t B = Bs[bi];
        counter_t *cs = calloc(B, sizeof *cs);
        engine_opts_t eo = {.max_batch_tokens = mbt, .max_seqs = B};
        engine_t *e = engine_new(model_forward(m), &eo);
        run_result_t *r = &mr->r[bi];
        if (!cs || !e) rc = SL_ENOMEM;
        for (int rep = 0; rep < reps && rc == 0; rep++) {
            run_result_t o = {0};
            rc = run_once(e, mi->vocab_size, B, prompt_len, gen, cs, &round, &o);
            if (o.prefill_tps > r->prefill_tps) r->prefill_tps = o.prefill_tps;
            if (o.decode_tps > r->decode_tps) r->decode_tps = o.decode_tps;
            if (o.prefill_cpu_tps > r->prefill_cpu_tps) r->prefill_cpu_tps = o.prefill_cpu_tps;
            if (o.decode_cpu_tps > r->decode_cpu_tps) r->decode_cpu_tps = o.decode_cpu_tps;
        }
        if (rc == 0) {
            printf("%-6u %14.1f %14.1f %14.1f %14.1f %16.1f %16.1f\n", B, r->prefill_tps,
                   r->prefill_tps / prompt_len * mr->flop_per_prompt / 1e9, r->decode_tps,
                   r->decode_tps / B * mr->weight_bytes_step / 1e9, r->prefill_cpu_tps,
                   r->decode_cpu_tps);
            fflush(stdout);
        } else {
            fprintf(stderr, "engine_bench: batch %u: %s\n", B, sl_strerror(rc));
        }
        engine_free(e);
        free(cs);
    }
    model_free(m);
    return rc;
}

/* ---- generated models ------------------------------------------------------------ */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Runs genmodel for the 100m preset in dtype into out. 0 or SL_EIO. */
static int genmodel_run(const char *genmodel, const char *dtype, const char *out) {
    char *args[] = {(char *)genmodel, "--preset", "100m", "--arch", "llama",     "--dtype",
                    (char *)dtype,    "--seed",   "1",    "--out",  (char *)out, NULL};
    pid_t pid;
    int st = 0;
    if (posix_spawnp(&pid, genmodel, NULL, NULL, args, environ) != 0) {
        fprintf(stderr, "engine_bench: cannot run %s (give --genmodel or --model)\n", genmodel);
        return SL_EIO;
    }
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "engine_bench: %s --dtype %s failed\n", genmodel, dtype);
        return SL_EIO;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *models[BENCH_MAX_MODELS];
    int n_models = 0, nB = 0, reps = 3, ret = 1;
    const char *batches = "1,8,32", *genmodel = NULL;
    uint32_t prompt_len = 128, gen = 32, threads = 0, mbt = 2048, Bs[BENCH_MAX_BATCHES];
    size_t bw_mib = 1024;
    char tmp[] = "/tmp/engine_bench.XXXXXX", gm_buf[4096], dirs[2][4200];
    bool made_tmp = false;
    model_result_t res[BENCH_MAX_MODELS];
    memset(res, 0, sizeof res);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        if (strcmp(a, "--model") == 0) {
            if (n_models == BENCH_MAX_MODELS) goto usage;
            models[n_models++] = v;
        } else if (strcmp(a, "--batches") == 0)
            batches = v;
        else if (strcmp(a, "--prompt-len") == 0)
            prompt_len = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--gen") == 0)
            gen = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--threads") == 0)
            threads = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--reps") == 0)
            reps = (int)strtol(v, NULL, 10);
        else if (strcmp(a, "--bw-mib") == 0)
            bw_mib = strtoul(v, NULL, 10);
        else if (strcmp(a, "--max-batch-tokens") == 0)
            mbt = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--genmodel") == 0)
            genmodel = v;
        else if (strcmp(a, "--temperature") == 0)
            g_temperature = strtof(v, NULL);
        else if (strcmp(a, "--top-p") == 0)
            g_top_p = strtof(v, NULL);
        else
            goto usage;
        i++;
    }
    for (const char *s = batches; *s;) {
        char *end;
        unsigned long B = strtoul(s, &end, 10);
        if (end == s || B == 0 || B > 4096 || nB == BENCH_MAX_BATCHES) goto usage;
        Bs[nB++] = (uint32_t)B;
        if (*end && *end != ',') goto usage;
        s = *end == ',' ? end + 1 : end;
    }
    if (nB == 0 || prompt_len == 0 || gen < 2 || mbt == 0 || reps < 1 || reps > 100 ||
        bw_mib < 16 || bw_mib > 65536 || threads > 1024 || !(g_temperature >= 0) ||
        g_temperature > 100 || !(g_top_p >= 0) || g_top_p > 1)
        goto usage;
    int nt = threads ? (int)threads : sl_cpu_pool_default_threads();

    yardsticks_t y0, y1;
    double la0 = load_avg();
    yardsticks_measure(nt, bw_mib << 20, &y0);
    printf("threads %d, load average %.2f at start\n", nt, la0);
    printf("yardsticks first:  read %.1f GB/s (%zu MiB, all threads), SGEMM %.1f GFLOP/s "
           "(1024^3), %.1f (512x2048x768)\n",
           y0.bw, bw_mib, y0.sgemm_sq, y0.sgemm_pf);
    fflush(stdout);

    if (n_models == 0) {
        if (!genmodel) {
            const char *slash = strrchr(argv[0], '/');
            if (slash)
                snprintf(gm_buf, sizeof gm_buf, "%.*s/genmodel", (int)(slash - argv[0]), argv[0]);
            else
                snprintf(gm_buf, sizeof gm_buf, "genmodel");
            genmodel = gm_buf;
        }
        if (!mkdtemp(tmp)) {
            perror("engine_bench: mkdtemp");
            goto out;
        }
        made_tmp = true;
        static const char *dts[2] = {"f32", "bf16"};
        for (int i = 0; i < 2; i++) {
            snprintf(dirs[i], sizeof dirs[i], "%s/%s", tmp, dts[i]);
            if (genmodel_run(genmodel, dts[i], dirs[i])) goto out;
            models[n_models++] = dirs[i];
        }
    }
    for (int i = 0; i < n_models; i++)
        if (bench_model(models[i], Bs, nB, prompt_len, gen, threads, mbt, reps, &res[i])) goto out;

    yardsticks_measure(nt, bw_mib << 20, &y1);
    double la1 = load_avg();
    printf("\nyardsticks again: read %.1f GB/s, SGEMM %.1f / %.1f GFLOP/s; load average %.2f at "
           "end\n",
           y1.bw, y1.sgemm_sq, y1.sgemm_pf, la1);
    double bw = y0.bw > y1.bw ? y0.bw : y1.bw;
    double sg = y0.sgemm_sq;
    if (y0.sgemm_pf > sg) sg = y0.sgemm_pf;
    if (y1.sgemm_sq > sg) sg = y1.sgemm_sq;
    if (y1.sgemm_pf > sg) sg = y1.sgemm_pf;
    printf("ratios against the best yardsticks (read %.1f GB/s, SGEMM %.1f GFLOP/s); best of %d "
           "runs each:\n",
           bw, sg, reps);
    int i32 = -1, i1 = -1;
    for (int b = 0; b < nB; b++) {
        if (Bs[b] == 1) i1 = b;
        if (Bs[b] == 32) i32 = b;
    }
    for (int i = 0; i < n_models; i++) {
        model_result_t *mr = &res[i];
        double pf = 0;
        for (int b = 0; b < nB; b++) {
            double f = mr->r[b].prefill_tps / prompt_len * mr->flop_per_prompt / 1e9;
            if (f > pf) pf = f;
        }
        printf("  %-5s prefill best %.1f GFLOP/s = %.2f of SGEMM (target >= 0.60)", mr->dtype, pf,
               pf / sg);
        if (i1 >= 0) {
            double gbs = mr->r[i1].decode_tps * mr->weight_bytes_step / 1e9;
            printf("; decode b1 weights %.1f GB/s = %.2f of read bw (target >= 0.85)", gbs,
                   gbs / bw);
            if (i32 >= 0)
                printf("; b32/b1 decode %.1fx (target >= 10)",
                       mr->r[i32].decode_tps / mr->r[i1].decode_tps);
        }
        printf("\n");
    }
    if (i1 >= 0)
        for (int i = 0; i < n_models; i++)
            for (int j = 0; j < n_models; j++)
                if (!strcmp(res[i].dtype, "bf16") && !strcmp(res[j].dtype, "f32") &&
                    res[j].r[i1].decode_tps > 0)
                    printf("  bf16 / f32 decode speed at batch 1: %.2fx (target ~2)\n",
                           res[i].r[i1].decode_tps / res[j].r[i1].decode_tps);
    ret = 0;
out:
    if (made_tmp) nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return ret;
usage:
    fprintf(stderr, "usage: engine_bench [--model DIR]... [--batches 1,8,32] [--prompt-len N] "
                    "[--gen N] [--threads N] [--reps N] [--bw-mib MiB] [--max-batch-tokens N] "
                    "[--genmodel PATH] [--temperature T] [--top-p P]\n");
    return 2;
}
