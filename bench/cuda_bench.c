/* cuda_bench.c - the CUDA backend's yardsticks and a ~1B model's throughput.
 *
 * Measures on one GPU, through the backend interface (what the engine gets):
 *  1. HBM bandwidth: sl_backend_add over 3 x 1 GiB buffers (2 reads + 1
 *     write per element; a copy-like stream), best of 5;
 *  2. GEMM rate: sl_backend_matmul at M=4096, N=8192, K=2048 with bf16
 *     weights (cuBLAS, f32 accumulation), best of 5, TFLOP/s;
 *  3. decode tokens/s at batch 1, 8, 64, 256 (each sequence has a 128-token
 *     prompt; 32 timed greedy steps) on a generated ~1.1B Llama in bf16
 *     (16 layers, hidden 2048, 32/8 heads, intermediate 8192, vocab 32000),
 *     with batch 1's weight bytes/s as a fraction of (1);
 *  4. prefill tokens/s: 4 sequences x 512 tokens in one step, with its
 *     GEMM FLOP rate as a fraction of (2).
 * Without a GPU (or without the plugin) it prints "no GPU" and exits 0.
 *
 * Usage: cuda_bench [--model DIR] [--quick]   (SLUICE_BENCH_DIR finds genmodel)
 */
#include "common/base/err.h"
#include "common/engine/model.h"
#include "kernels/backend.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* BUILD/bench/cuda_bench -> BUILD/lib/libsluice_cuda.so, unless set. */
static void cuda_lib_env(void) {
    char exe[PATH_MAX], path[PATH_MAX + 64];
    if (getenv("SLUICE_CUDA_LIB")) return;
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return;
    exe[n] = '\0';
    char *s = strrchr(exe, '/');
    if (!s) return;
    *s = '\0';
    snprintf(path, sizeof path, "%s/../lib/libsluice_cuda.so", exe);
    if (access(path, R_OK) == 0) setenv("SLUICE_CUDA_LIB", path, 1);
}

static double bench_bandwidth(sl_backend_t *be, size_t bytes) {
    size_t n = bytes / sizeof(float);
    float *a = sl_backend_alloc(be, bytes), *b = sl_backend_alloc(be, bytes),
          *y = sl_backend_alloc(be, bytes);
    double best = 0;
    if (a && b && y) {
        sl_backend_add(be, y, a, b, n); /* warm-up */
        sl_backend_sync(be);
        for (int r = 0; r < 5; r++) {
            double t = now_s();
            if (sl_backend_add(be, y, a, b, n) || sl_backend_sync(be)) break;
            double gbs = 3.0 * bytes / (now_s() - t) / 1e9;
            if (gbs > best) best = gbs;
        }
    }
    sl_backend_mem_free(be, a), sl_backend_mem_free(be, b), sl_backend_mem_free(be, y);
    return best;
}

static double bench_gemm(sl_backend_t *be, uint32_t M, uint32_t N, uint32_t K) {
    float *x = sl_backend_alloc(be, (size_t)M * K * 4),
          *y = sl_backend_alloc(be, (size_t)M * N * 4);
    void *w = sl_backend_alloc(be, (size_t)N * K * 2);
    double best = 0;
    if (x && y && w) {
        sl_backend_matmul(be, y, x, w, SL_DTYPE_BF16, NULL, M, N, K, false);
        sl_backend_sync(be);
        for (int r = 0; r < 5; r++) {
            double t = now_s();
            if (sl_backend_matmul(be, y, x, w, SL_DTYPE_BF16, NULL, M, N, K, false) ||
                sl_backend_sync(be))
                break;
            double tf = 2.0 * M * N * K / (now_s() - t) / 1e12;
            if (tf > best) best = tf;
        }
    }
    sl_backend_mem_free(be, x), sl_backend_mem_free(be, y), sl_backend_mem_free(be, w);
    return best;
}

#define PROMPT  128
#define STEPS   32
#define MAX_B   256
#define BLK     16
#define PER_SEQ ((PROMPT + STEPS + 8 + BLK - 1) / BLK)

/* Prefills B sequences (8 per step), then times STEPS decode steps. Returns
 * tokens/s or a negative code. */
static double bench_decode(model_t *m, uint32_t B) {
    sl_forward_t *f = model_forward(m);
    uint32_t V = f->vocab_size;
    static uint32_t toks[MAX_B][PROMPT + STEPS + 1], blocks[MAX_B][PER_SEQ];
    static sl_fwd_seq_t sq[MAX_B];
    float *logits = malloc((size_t)B * V * sizeof(float));
    double rate = -1;
    if (!logits) return SL_ENOMEM;
    for (uint32_t s = 0; s < B; s++) {
        for (uint32_t i = 0; i < PROMPT + STEPS + 1; i++) toks[s][i] = (s * 131 + i * 17) % V;
        for (uint32_t b = 0; b < PER_SEQ; b++) blocks[s][b] = s * PER_SEQ + b;
    }
    for (uint32_t s0 = 0; s0 < B; s0 += 8) {
        uint32_t n = B - s0 < 8 ? B - s0 : 8;
        for (uint32_t i = 0; i < n; i++)
            sq[i] = (sl_fwd_seq_t){toks[s0 + i], PROMPT, 0, blocks[s0 + i], PER_SEQ, true};
        sl_fwd_batch_t bt = {sq, n, logits};
        if (f->step(f->impl, &bt)) goto out;
    }
    double t0 = 0;
    for (uint32_t g = 0; g <= STEPS; g++) { /* step 0 is a warm-up */
        if (g == 1) t0 = now_s();
        for (uint32_t s = 0; s < B; s++)
            sq[s] = (sl_fwd_seq_t){&toks[s][PROMPT + g], 1, PROMPT + g, blocks[s], PER_SEQ, true};
        sl_fwd_batch_t bt = {sq, B, logits};
        if (f->step(f->impl, &bt)) goto out;
    }
    rate = (double)B * STEPS / (now_s() - t0);
out:
    free(logits);
    return rate;
}

static double bench_prefill(model_t *m, uint32_t n_seqs, uint32_t len) {
    sl_forward_t *f = model_forward(m);
    uint32_t nb = (len + BLK - 1) / BLK;
    uint32_t *toks = calloc(len, 4), *blocks = malloc((size_t)n_seqs * nb * 4);
    sl_fwd_seq_t sq[8];
    float *logits = malloc((size_t)n_seqs * f->vocab_size * 4);
    double best = -1;
    if (!toks || !blocks || !logits || n_seqs > 8) goto out;
    for (uint32_t i = 0; i < len; i++) toks[i] = (i * 7919) % f->vocab_size;
    for (uint32_t i = 0; i < n_seqs * nb; i++) blocks[i] = i;
    for (uint32_t s = 0; s < n_seqs; s++)
        sq[s] = (sl_fwd_seq_t){toks, len, 0, blocks + (size_t)s * nb, nb, true};
    for (int r = 0; r < 4; r++) {
        sl_fwd_batch_t bt = {sq, n_seqs, logits};
        double t = now_s();
        if (f->step(f->impl, &bt)) break;
        double tps = (double)n_seqs * len / (now_s() - t);
        if (r > 0 && tps > best) best = tps; /* r = 0 warms up */
    }
out:
    free(toks), free(blocks), free(logits);
    return best;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL;
    bool quick = false;
    char tmp[] = "/tmp/sl-cuda-bench-XXXXXX", cmd[1024];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model_dir = argv[++i];
        else if (!strcmp(argv[i], "--quick"))
            quick = true;
        else {
            fprintf(stderr, "usage: cuda_bench [--model DIR] [--quick]\n");
            return 2;
        }
    }
    cuda_lib_env();
    sl_backend_t *be = NULL;
    int rc = sl_backend_create("cuda", NULL, &be);
    if (rc) {
        printf("cuda_bench: no GPU (%s)\n", sl_strerror(rc));
        return 0;
    }
    double bw = bench_bandwidth(be, quick ? (256u << 20) : (1u << 30));
    double tf = bench_gemm(be, 4096, 8192, 2048);
    printf("hbm (add, 2R+1W)     %8.1f GB/s\n", bw);
    printf("gemm bf16 4096x8192x2048 %6.1f TFLOP/s\n", tf);
    if (!model_dir) {
        const char *bd = getenv("SLUICE_BENCH_DIR");
        if (!mkdtemp(tmp)) return 1;
        snprintf(cmd, sizeof cmd,
                 "%s/genmodel --arch llama --dtype bf16 --layers %d --hidden 2048 --heads 32 "
                 "--kv-heads 8 --intermediate 8192 --vocab 32000 --std 0.02 --out %s/m >/dev/null",
                 bd ? bd : "build/bench", quick ? 4 : 16, tmp);
        if (system(cmd) != 0) {
            fprintf(stderr, "cuda_bench: %s failed\n", cmd);
            return 1;
        }
        snprintf(cmd, sizeof cmd, "%s/m", tmp);
        model_dir = cmd;
    }
    model_opts_t o = {.backend = be, .block_size = BLK, .n_blocks = MAX_B * PER_SEQ};
    model_t *m = NULL;
    char *err = NULL;
    if ((rc = model_load(model_dir, &o, &m, &err))) {
        fprintf(stderr, "cuda_bench: model_load: %s: %s\n", sl_strerror(rc), err ? err : "");
        free(err);
        sl_backend_free(be);
        return 1;
    }
    double wbytes = (double)model_info(m)->weight_bytes;
    printf("model %s: %.2f GB of weights\n", model_dir, wbytes / 1e9);
    static const uint32_t batches[] = {1, 8, 64, 256};
    for (size_t i = 0; i < 4; i++) {
        double tps = bench_decode(m, batches[i]);
        printf("decode batch %3u      %8.1f tok/s", batches[i], tps);
        if (batches[i] == 1 && tps > 0)
            printf("  (%.2f of HBM bandwidth)", wbytes * tps / (bw * 1e9));
        printf("\n");
    }
    double ptps = bench_prefill(m, 4, 512);
    printf("prefill 4 x 512       %8.1f tok/s  (%.2f of the GEMM rate)\n", ptps,
           tf > 0 ? 2.0 * wbytes / 2 * ptps / (tf * 1e12) : 0.0);
    model_free(m);
    sl_backend_free(be);
    if (tmp[strlen(tmp) - 1] != 'X') {
        snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
        if (system(cmd) != 0) fprintf(stderr, "cuda_bench: could not remove %s\n", tmp);
    }
    return 0;
}
