/* tokenizer_bench.c - encode/decode throughput of the C tokenizer.
 *
 * Builds a text of about --mb MiB from tests/data/tokenizer_corpus.txt
 * (lines shuffled, numbers varied, so the word cache sees realistic reuse),
 * cuts it into documents of about 2 KiB (prompt-sized; a SentencePiece
 * tokenizer without pre-tokenizer treats a whole document as one word), and
 * reports single-thread encode MB/s, decode MB/s and tokens/s per tokenizer.
 *
 * usage: tokenizer_bench [--dir ../shared/tokenizers] [--corpus FILE] [--mb 4]
 *                        [names...]   (default: gpt2 qwen2.5 llama2-spm phi3-mini)
 */
#include "common/base/err.h"
#include "common/engine/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    const char *dir = "../shared/tokenizers", *corpus = "tests/data/tokenizer_corpus.txt";
    double mb = 4;
    const char *names[16];
    int nn = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--corpus") && i + 1 < argc)
            corpus = argv[++i];
        else if (!strcmp(argv[i], "--mb") && i + 1 < argc)
            mb = strtod(argv[++i], NULL);
        else if (argv[i][0] != '-' && nn < 16)
            names[nn++] = argv[i];
        else {
            fprintf(stderr, "usage: %s [--dir D] [--corpus F] [--mb N] [names...]\n", argv[0]);
            return 2;
        }
    }
    if (nn == 0) {
        names[nn++] = "gpt2";
        names[nn++] = "qwen2.5";
        names[nn++] = "llama2-spm";
        names[nn++] = "phi3-mini";
    }
    if (!(mb > 0 && mb <= 256)) mb = 4;
    FILE *f = fopen(corpus, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", corpus);
        return 1;
    }
    static char src[1 << 20];
    size_t sl = fread(src, 1, sizeof src - 1, f);
    fclose(f);
    src[sl] = 0;
    /* lines of the corpus */
    char *lines[4096];
    size_t ll[4096], nl = 0;
    for (char *p = src; *p && nl < 4096;) {
        char *e = strchr(p, '\n');
        size_t l = e ? (size_t)(e - p + 1) : strlen(p);
        lines[nl] = p;
        ll[nl++] = l;
        p += l;
    }
    size_t target = (size_t)(mb * 1048576.0);
    char *text = malloc(target + 4096);
    size_t tl = 0;
    uint64_t r = 88172645463325252ull;
    while (tl < target) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        size_t k = (size_t)(r % nl);
        memcpy(text + tl, lines[k], ll[k]);
        tl += ll[k];
        tl += (size_t)snprintf(text + tl, 32, "%u ", (unsigned)(r >> 40) % 100000);
    }
    /* documents of ~2 KiB cut at line ends */
    size_t *doc = malloc((tl / 1024 + 2) * sizeof *doc), nd = 0;
    doc[nd++] = 0;
    for (size_t i = 2048; i < tl; i++) {
        if (text[i] == '\n') {
            doc[nd++] = i + 1;
            i += 2048;
        }
    }
    if (doc[nd - 1] != tl) doc[nd++] = tl;
    printf("text: %.2f MiB in %zu documents\n", (double)tl / 1048576.0, nd - 1);
    printf("%-12s %8s %12s %12s %12s %10s\n", "tokenizer", "load_ms", "encode_MB/s", "Mtok/s",
           "decode_MB/s", "bytes/tok");
    for (int k = 0; k < nn; k++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, names[k]);
        sl_tokenizer_t *t;
        double t0 = now_s();
        int rc = sl_tokenizer_load(path, &t);
        double load = now_s() - t0;
        if (rc) {
            printf("%-12s load failed: %s\n", names[k], sl_strerror(rc));
            continue;
        }
        size_t ntok = 0;
        uint32_t **ids = calloc(nd, sizeof *ids);
        size_t *nids = calloc(nd, sizeof *nids);
        t0 = now_s();
        for (size_t d = 0; d + 1 < nd; d++) {
            if (sl_tokenizer_encode(t, text + doc[d], doc[d + 1] - doc[d], false, &ids[d],
                                    &nids[d])) {
                printf("encode failed\n");
                return 1;
            }
            ntok += nids[d];
        }
        double enc = now_s() - t0;
        size_t out = 0;
        t0 = now_s();
        for (size_t d = 0; d + 1 < nd; d++) {
            char *s;
            size_t l;
            if (sl_tokenizer_decode(t, ids[d], nids[d], false, &s, &l)) return 1;
            out += l;
            free(s);
        }
        double dec = now_s() - t0;
        printf("%-12s %8.1f %12.1f %12.2f %12.1f %10.2f\n", names[k], load * 1e3,
               (double)tl / 1e6 / enc, (double)ntok / 1e6 / enc, (double)out / 1e6 / dec,
               (double)tl / (double)ntok);
        for (size_t d = 0; d < nd; d++) free(ids[d]);
        free(ids);
        free(nids);
        sl_tokenizer_free(t);
    }
    free(text);
    free(doc);
    return 0;
}
