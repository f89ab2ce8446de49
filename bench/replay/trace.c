/* trace.c - Mooncake trace parsing and prompt synthesis (see trace.h). */
#include "bench/replay/trace.h"

#include "common/base/err.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRACE_MAX_FILE (2ull << 30)
#define TRACE_MAX_ID   9007199254740992.0 /* 2^53: exact in a double */

__attribute__((format(printf, 3, 4))) static int trace_fail(char *err, size_t errlen,
                                                            const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return SL_EFORMAT;
}

/* An integer-valued JSON number in [lo, hi]. */
static bool trace_int(const cJSON *v, double lo, double hi, double *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!isfinite(d) || d < lo || d > hi || d != floor(d)) return false;
    *out = d;
    return true;
}

void trace_free(trace_t *t) {
    if (!t) return;
    free(t->reqs);
    free(t->ids);
    free(t);
}

static int trace_cmp(const void *a, const void *b) {
    const trace_req_t *x = a, *y = b;
    if (x->t_ms != y->t_ms) return x->t_ms < y->t_ms ? -1 : 1;
    return x->line < y->line ? -1 : x->line > y->line; /* stable */
}

/* Appends one parsed line. ids grow by doubling; reqs keep offsets into the
 * pool in `hashes` until the end (the pool moves). */
static int trace_add(trace_t *t, size_t *cap_reqs, size_t *cap_ids, const cJSON *root,
                     uint32_t line, char *err, size_t errlen) {
    if (!cJSON_IsObject(root)) return trace_fail(err, errlen, "line %u: not a JSON object", line);
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(root, "timestamp");
    const cJSON *il = cJSON_GetObjectItemCaseSensitive(root, "input_length");
    const cJSON *ol = cJSON_GetObjectItemCaseSensitive(root, "output_length");
    const cJSON *hs = cJSON_GetObjectItemCaseSensitive(root, "hash_ids");
    double tsv, in, out, id;
    if (!cJSON_IsNumber(ts) || !isfinite(ts->valuedouble) || ts->valuedouble < 0)
        return trace_fail(err, errlen, "line %u: \"timestamp\" must be a number >= 0 (ms)", line);
    tsv = ts->valuedouble;
    if (!trace_int(il, 1, TRACE_MAX_INPUT, &in))
        return trace_fail(err, errlen, "line %u: \"input_length\" must be an integer in [1, %u]",
                          line, TRACE_MAX_INPUT);
    if (!trace_int(ol, 1, TRACE_MAX_OUTPUT, &out))
        return trace_fail(err, errlen, "line %u: \"output_length\" must be an integer in [1, %u]",
                          line, TRACE_MAX_OUTPUT);
    if (!cJSON_IsArray(hs))
        return trace_fail(err, errlen, "line %u: \"hash_ids\" must be an array", line);
    size_t n = (size_t)cJSON_GetArraySize(hs);
    size_t want = ((size_t)in + TRACE_BLOCK_TOKENS - 1) / TRACE_BLOCK_TOKENS;
    if (n != want)
        return trace_fail(err, errlen,
                          "line %u: \"hash_ids\" has %zu ids, input_length %.0f needs %zu (one "
                          "per %u tokens)",
                          line, n, in, want, TRACE_BLOCK_TOKENS);
    if (t->n == *cap_reqs) {
        size_t nc = *cap_reqs ? *cap_reqs * 2 : 1024;
        trace_req_t *nr = realloc(t->reqs, nc * sizeof *nr);
        if (!nr) return SL_ENOMEM;
        t->reqs = nr;
        *cap_reqs = nc;
    }
    if (n > *cap_ids - t->n_ids) {
        size_t nc = *cap_ids ? *cap_ids : 4096;
        while (nc - t->n_ids < n) nc *= 2;
        uint64_t *ni = realloc(t->ids, nc * sizeof *ni);
        if (!ni) return SL_ENOMEM;
        t->ids = ni;
        *cap_ids = nc;
    }
    size_t base = t->n_ids, k = 0;
    const cJSON *h;
    cJSON_ArrayForEach(h, hs) {
        if (!trace_int(h, 0, TRACE_MAX_ID, &id))
            return trace_fail(
                err, errlen, "line %u: \"hash_ids\"[%zu] must be an integer in [0, 2^53]", line, k);
        t->ids[base + k++] = (uint64_t)id;
    }
    t->n_ids += n;
    trace_req_t *r = &t->reqs[t->n++];
    r->t_ms = tsv;
    r->input_len = (uint32_t)in;
    r->output_len = (uint32_t)out;
    r->n_hash = (uint32_t)n;
    r->hashes = (const uint64_t *)(uintptr_t)base; /* offset until the pool is final */
    r->line = line;
    return 0;
}

int trace_parse(const char *text, size_t len, size_t limit, trace_t **out, char *err,
                size_t errlen) {
    int rc = 0;
    size_t cap_reqs = 0, cap_ids = 0;
    trace_t *t = NULL;
    if (!text || !out) return SL_EINVAL;
    *out = NULL;
    if (!(t = calloc(1, sizeof *t))) return SL_ENOMEM;
    uint32_t line = 0;
    size_t pos = 0;
    while (pos < len && (limit == 0 || t->n < limit)) {
        const char *start = text + pos;
        const char *nl = memchr(start, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - start) : len - pos;
        pos += ll + (nl ? 1 : 0);
        if (line == UINT32_MAX) {
            rc = trace_fail(err, errlen, "more than %u lines", UINT32_MAX - 1);
            goto out;
        }
        line++;
        size_t b = 0;
        while (b < ll && (start[b] == ' ' || start[b] == '\t' || start[b] == '\r')) b++;
        if (b == ll) continue; /* blank */
        if (ll > TRACE_MAX_LINE) {
            rc = trace_fail(err, errlen, "line %u: longer than %u bytes", line, TRACE_MAX_LINE);
            goto out;
        }
        cJSON *root = cJSON_ParseWithLength(start, ll);
        if (!root) {
            rc = trace_fail(err, errlen, "line %u: not valid JSON", line);
            goto out;
        }
        rc = trace_add(t, &cap_reqs, &cap_ids, root, line, err, errlen);
        cJSON_Delete(root);
        if (rc) goto out;
    }
    if (t->n == 0) {
        rc = trace_fail(err, errlen, "the trace holds no requests");
        goto out;
    }
    for (size_t i = 0; i < t->n; i++)
        t->reqs[i].hashes = t->ids + (size_t)(uintptr_t)t->reqs[i].hashes;
    qsort(t->reqs, t->n, sizeof *t->reqs, trace_cmp);
    *out = t;
    t = NULL;
out:
    if (rc == SL_ENOMEM && err && errlen) snprintf(err, errlen, "out of memory");
    trace_free(t);
    return rc;
}

int trace_load(const char *path, size_t limit, trace_t **out, char *err, size_t errlen) {
    int rc = 0;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    FILE *f = NULL;
    if (!path || !out) return SL_EINVAL;
    if (!(f = fopen(path, "rb"))) {
        rc = -errno;
        if (err && errlen) snprintf(err, errlen, "%s: %s", path, strerror(-rc));
        goto out;
    }
    for (;;) {
        if (cap - len < 65536) {
            if (cap >= TRACE_MAX_FILE) {
                rc = SL_ETOOBIG;
                if (err && errlen) snprintf(err, errlen, "%s: larger than 2 GiB", path);
                goto out;
            }
            size_t nc = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, nc);
            if (!nb) {
                rc = SL_ENOMEM;
                goto out;
            }
            buf = nb;
            cap = nc;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        rc = SL_EIO;
        if (err && errlen) snprintf(err, errlen, "%s: read error", path);
        goto out;
    }
    rc = trace_parse(buf ? buf : "", len, limit, out, err, errlen);
    if (rc == SL_EFORMAT && err && errlen) { /* prefix the path */
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%s", err);
        snprintf(err, errlen, "%s: %s", path, tmp);
    }
out:
    if (f) fclose(f);
    free(buf);
    return rc;
}

uint32_t trace_prompt_len(const trace_req_t *r, uint32_t tokens_per_hash) {
    uint64_t n =
        ((uint64_t)r->input_len * tokens_per_hash + TRACE_BLOCK_TOKENS - 1) / TRACE_BLOCK_TOKENS;
    return n ? (uint32_t)n : 1;
}

static uint64_t trace_mix(uint64_t x) { /* splitmix64 finalizer */
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

uint32_t trace_prompt_token(const trace_req_t *r, uint32_t tokens_per_hash, uint32_t vocab,
                            uint32_t pos) {
    uint64_t id = r->hashes[pos / tokens_per_hash];
    uint64_t j = pos % tokens_per_hash;
    return (uint32_t)(trace_mix(trace_mix(id) ^ j) % vocab);
}

uint64_t trace_block_key(const trace_req_t *r, uint32_t tokens_per_hash, uint32_t block_size,
                         uint32_t block) {
    uint64_t first = (uint64_t)block * block_size;
    uint64_t id = r->hashes[first / tokens_per_hash];
    uint64_t sub = (first % tokens_per_hash) / block_size;
    return id * TRACE_BLOCK_TOKENS + sub;
}
