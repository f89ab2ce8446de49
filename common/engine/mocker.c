/* mocker.c - weightless forward pass: peaked logits and a modelled sleep.
 * See mocker.h for the performance model. */
#include "common/engine/mocker.h"

#include "common/base/err.h"
#include "common/base/log.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MOCKER_FILE_MAX (1u << 20)
#define MOCKER_PEAK     30.0f

struct mocker {
    sl_forward_t fwd;
    mocker_params_t p;
    double slept_s;
    uint64_t steps;
};

void mocker_params_default(mocker_params_t *p) {
    *p = (mocker_params_t){.prefill_a = 0.002,
                           .prefill_b = 0.00005,
                           .prefill_c = 0.00000001,
                           .decode_d = 0.004,
                           .decode_e = 0.0001,
                           .decode_g = 0.0000002,
                           .speedup = 1.0};
}

static const struct {
    const char *name;
    size_t off;
} mocker_fields[] = {
    {"prefill_a", offsetof(mocker_params_t, prefill_a)},
    {"prefill_b", offsetof(mocker_params_t, prefill_b)},
    {"prefill_c", offsetof(mocker_params_t, prefill_c)},
    {"decode_d", offsetof(mocker_params_t, decode_d)},
    {"decode_e", offsetof(mocker_params_t, decode_e)},
    {"decode_g", offsetof(mocker_params_t, decode_g)},
    {"speedup", offsetof(mocker_params_t, speedup)},
};

int mocker_params_parse(const char *json, size_t len, mocker_params_t *p) {
    int rc = SL_EINVAL;
    cJSON *root = NULL;
    mocker_params_t tmp;
    if (!json || !p) goto out;
    mocker_params_default(&tmp);
    root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        LOG_ERROR("mocker: parameters are not a JSON object");
        goto out;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        size_t i, n = sizeof(mocker_fields) / sizeof(mocker_fields[0]);
        for (i = 0; i < n; i++)
            if (it->string && strcmp(it->string, mocker_fields[i].name) == 0) break;
        if (i == n) {
            LOG_ERROR("mocker: unknown parameter '%s'", it->string ? it->string : "");
            goto out;
        }
        if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < 0) {
            LOG_ERROR("mocker: parameter '%s' must be a finite number >= 0", it->string);
            goto out;
        }
        *(double *)((char *)&tmp + mocker_fields[i].off) = it->valuedouble;
    }
    if (!(tmp.speedup > 0)) {
        LOG_ERROR("mocker: speedup must be > 0");
        goto out;
    }
    *p = tmp;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

int mocker_params_load(const char *path, mocker_params_t *p) {
    int rc = SL_EINVAL;
    FILE *f = NULL;
    char *buf = NULL;
    size_t n;
    if (!path || !p) goto out;
    f = fopen(path, "rb");
    if (!f) {
        rc = -errno;
        LOG_ERROR("mocker: cannot open %s: %s", path, strerror(errno));
        goto out;
    }
    buf = malloc(MOCKER_FILE_MAX + 1);
    if (!buf) {
        rc = SL_ENOMEM;
        goto out;
    }
    n = fread(buf, 1, MOCKER_FILE_MAX + 1, f);
    if (ferror(f)) {
        rc = SL_EIO;
        goto out;
    }
    if (n > MOCKER_FILE_MAX) {
        rc = SL_ETOOBIG;
        LOG_ERROR("mocker: %s is over 1 MiB", path);
        goto out;
    }
    rc = mocker_params_parse(buf, n, p);
    if (rc) LOG_ERROR("mocker: bad parameter file %s", path);
out:
    free(buf);
    if (f) fclose(f);
    return rc;
}

double mocker_params_prefill_s(const mocker_params_t *p, double tokens, double ctx) {
    return p->prefill_a + p->prefill_b * tokens + p->prefill_c * tokens * ctx;
}

double mocker_params_decode_s(const mocker_params_t *p, double batch, double sum_ctx) {
    return p->decode_d + p->decode_e * batch + p->decode_g * sum_ctx;
}

int mocker_params_fit(const double *x, const double *z, const double *y, size_t n, double k[3]) {
    /* Normal equations (A^T A) k = A^T y with rows [1 x z], Cramer's rule. */
    double m[3][3] = {{0}}, v[3] = {0}, det, d[3];
    if (!x || !z || !y || !k || n < 3) return SL_EINVAL;
    for (size_t i = 0; i < n; i++) {
        double r[3] = {1.0, x[i], z[i]};
        for (int a = 0; a < 3; a++) {
            v[a] += r[a] * y[i];
            for (int b = 0; b < 3; b++) m[a][b] += r[a] * r[b];
        }
    }
#define DET3(M)                                                                                    \
    ((M)[0][0] * ((M)[1][1] * (M)[2][2] - (M)[1][2] * (M)[2][1]) -                                 \
     (M)[0][1] * ((M)[1][0] * (M)[2][2] - (M)[1][2] * (M)[2][0]) +                                 \
     (M)[0][2] * ((M)[1][0] * (M)[2][1] - (M)[1][1] * (M)[2][0]))
    det = DET3(m);
    if (!isfinite(det) || fabs(det) < 1e-300) return SL_ERANGE;
    for (int c = 0; c < 3; c++) {
        double t[3][3];
        memcpy(t, m, sizeof(t));
        for (int r = 0; r < 3; r++) t[r][c] = v[r];
        d[c] = DET3(t) / det;
    }
#undef DET3
    for (int c = 0; c < 3; c++) k[c] = d[c] > 0 ? d[c] : 0;
    return 0;
}

uint32_t mocker_token_next(const mocker_t *m, uint32_t last, uint32_t pos) {
    /* splitmix64 of (last, pos): cheap, well mixed, deterministic. */
    uint64_t h = ((uint64_t)last << 32 | pos) + 0x9e3779b97f4a7c15ull;
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
    h ^= h >> 31;
    return (uint32_t)(h % m->fwd.vocab_size);
}

static void mocker_sleep_s(double s) {
    struct timespec t;
    if (!(s > 0)) return;
    clock_gettime(CLOCK_MONOTONIC, &t);
    double ns = (double)t.tv_nsec + s * 1e9;
    t.tv_sec += (time_t)(ns / 1e9);
    t.tv_nsec = (long)fmod(ns, 1e9);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR) {
    }
}

static int mocker_step(void *impl, const sl_fwd_batch_t *batch) {
    mocker_t *m = impl;
    uint32_t row = 0, V = m->fwd.vocab_size;
    double pre_tok = 0, pre_ctx = 0, dec_rows = 0, dec_ctx = 0, s = 0;
    if (!batch || (batch->n_seqs && !batch->seqs)) return SL_EINVAL;
    for (uint32_t i = 0; i < batch->n_seqs; i++) {
        const sl_fwd_seq_t *q = &batch->seqs[i];
        double ctx = (double)q->pos + q->n_tokens;
        if (q->n_tokens == 0 || !q->tokens) return SL_EINVAL;
        /* Same checks as a real pass: the blocks must hold the context. */
        if ((uint64_t)q->n_blocks * m->fwd.block_size < (uint64_t)q->pos + q->n_tokens ||
            (q->n_blocks && !q->blocks))
            return SL_EINVAL;
        for (uint32_t b = 0; b < q->n_blocks; b++)
            if (q->blocks[b] >= m->fwd.n_blocks) return SL_EINVAL;
        if (q->n_tokens == 1 && q->pos > 0) {
            dec_rows += 1;
            dec_ctx += ctx;
        } else {
            pre_tok += q->n_tokens;
            pre_ctx += q->n_tokens * ctx;
        }
        if (q->want_logits) {
            if (!batch->logits) return SL_EINVAL;
            float *r = batch->logits + (size_t)row * V; /* (vocab) */
            memset(r, 0, sizeof(float) * V);
            r[mocker_token_next(m, q->tokens[q->n_tokens - 1], q->pos + q->n_tokens - 1)] =
                MOCKER_PEAK;
            row++;
        }
    }
    if (pre_tok > 0) s += mocker_params_prefill_s(&m->p, pre_tok, pre_ctx / pre_tok);
    if (dec_rows > 0) s += mocker_params_decode_s(&m->p, dec_rows, dec_ctx);
    s /= m->p.speedup;
    mocker_sleep_s(s);
    m->slept_s += s;
    m->steps++;
    return 0;
}

int mocker_new_params(const mocker_params_t *p, uint32_t block_size, uint32_t n_blocks,
                      uint32_t vocab, mocker_t **out) {
    mocker_t *m = NULL;
    if (!p || !out || !block_size || !n_blocks || !vocab || !(p->speedup > 0)) return SL_EINVAL;
    m = calloc(1, sizeof(*m));
    if (!m) return SL_ENOMEM;
    m->p = *p;
    m->fwd = (sl_forward_t){.impl = m,
                            .vocab_size = vocab,
                            .block_size = block_size,
                            .n_blocks = n_blocks,
                            .block_bytes = 0,
                            .kv_base = NULL,
                            .step = mocker_step};
    *out = m;
    return 0;
}

int mocker_new(const char *params_path, uint32_t block_size, uint32_t n_blocks, uint32_t vocab,
               mocker_t **out) {
    mocker_params_t p;
    int rc;
    mocker_params_default(&p);
    if (params_path && (rc = mocker_params_load(params_path, &p)) != 0) return rc;
    return mocker_new_params(&p, block_size, n_blocks, vocab, out);
}

void mocker_free(mocker_t *m) {
    free(m);
}

const sl_forward_t *mocker_forward(mocker_t *m) {
    return m ? &m->fwd : NULL;
}

double mocker_slept_s(const mocker_t *m) {
    return m->slept_s;
}

uint64_t mocker_steps(const mocker_t *m) {
    return m->steps;
}
