/* engine_bench.c - prefill and decode throughput of the whole engine loop
 * (scheduler + model forward + sampling) on a model directory.
 *
 *   engine_bench --model DIR [--batches 1,8,32] [--prompt-len 256]
 *                [--gen 32] [--threads N] [--max-batch-tokens 2048]
 *
 * Prefill: B requests of prompt-len distinct random tokens and max_tokens 1;
 * tokens/s = B * prompt-len / wall time. Decode: B requests of 16-token
 * prompts generate --gen tokens each (ignore_eos, greedy); after every
 * request has its first token, the remaining steps are timed and tokens/s =
 * tokens generated in them / wall time. Prompts are distinct so the prefix
 * cache does not help.
 */
#include "common/base/err.h"
#include "common/engine/engine.h"
#include "common/engine/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

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
        rc = engine_add(e, &r);
    }
    free(p);
    return rc;
}

int main(int argc, char **argv) {
    const char *model = NULL, *batches = "1,8,32";
    uint32_t prompt_len = 256, gen = 32, threads = 0, mbt = 2048;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        if (strcmp(a, "--model") == 0)
            model = v;
        else if (strcmp(a, "--batches") == 0)
            batches = v;
        else if (strcmp(a, "--prompt-len") == 0)
            prompt_len = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--gen") == 0)
            gen = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--threads") == 0)
            threads = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--max-batch-tokens") == 0)
            mbt = (uint32_t)strtoul(v, NULL, 10);
        else
            goto usage;
        i++;
    }
    if (!model || prompt_len == 0 || gen < 2 || mbt == 0) goto usage;

    model_t *m = NULL;
    char *err = NULL;
    model_opts_t mo = {.n_threads = (int)threads, .kv_bytes = (size_t)2 << 30};
    int rc = model_load(model, &mo, &m, &err);
    if (rc) {
        fprintf(stderr, "engine_bench: %s: %s\n", model, err ? err : sl_strerror(rc));
        free(err);
        return 1;
    }
    const model_info_t *mi = model_info(m);
    printf("model %s: %s %s, %u layers, %.1f MB weights, %u KV blocks\n", model,
           model_arch_name(mi->config.arch), sl_dtype_name(mi->weight_dtype), mi->n_layers,
           (double)mi->weight_bytes / 1e6, mi->n_blocks);
    printf("%-6s %14s %14s\n", "batch", "prefill tok/s", "decode tok/s");
    const char *s = batches;
    int round = 0;
    while (*s) {
        char *end;
        uint32_t B = (uint32_t)strtoul(s, &end, 10);
        if (end == s || B == 0 || B > 4096) break;
        s = *end == ',' ? end + 1 : end;
        counter_t *cs = calloc(B, sizeof *cs);
        engine_opts_t eo = {.max_batch_tokens = mbt, .max_seqs = B};
        engine_t *e = engine_new(model_forward(m), &eo);
        if (!cs || !e) {
            rc = SL_ENOMEM;
            goto next;
        }
        /* Prefill. */
        rc = add_batch(e, mi->vocab_size, B, prompt_len, 1, cs, round++);
        if (rc) goto next;
        double t0 = now_s();
        while ((rc = engine_step(e)) > 0) {
        }
        double tp = now_s() - t0;
        if (rc < 0) goto next;
        /* Decode. */
        kvpool_clear(engine_pool(e));
        rc = add_batch(e, mi->vocab_size, B, 16, gen, cs, round++);
        if (rc) goto next;
        uint32_t started = 0;
        while (started < B && (rc = engine_step(e)) > 0) {
            started = 0;
            for (uint32_t b = 0; b < B; b++) started += cs[b].tokens > 0;
        }
        if (rc < 0) goto next;
        uint32_t before = 0, after = 0;
        for (uint32_t b = 0; b < B; b++) before += cs[b].tokens;
        double t1 = now_s();
        while ((rc = engine_step(e)) > 0) {
        }
        double td = now_s() - t1;
        if (rc < 0) goto next;
        for (uint32_t b = 0; b < B; b++) after += cs[b].tokens;
        printf("%-6u %14.1f %14.1f\n", B, (double)B * prompt_len / tp,
               td > 0 ? (double)(after - before) / td : 0.0);
        fflush(stdout);
    next:
        if (rc < 0) fprintf(stderr, "engine_bench: batch %u: %s\n", B, sl_strerror(rc));
        engine_free(e);
        free(cs);
        if (rc < 0) break;
    }
    model_free(m);
    return rc < 0 ? 1 : 0;
usage:
    fprintf(stderr, "usage: engine_bench --model DIR [--batches 1,8,32] [--prompt-len N] "
                    "[--gen N] [--threads N] [--max-batch-tokens N]\n");
    return 2;
}
