/* workload.c - deterministic prompts and OpenAI request bodies (see workload.h). */
#include "bench/loadgen/workload.h"

#include "common/base/err.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Short, frequent English words: one token each (with the leading space) in
 * the Llama 3, Qwen2 and GPT-2/4 vocabularies. */
static const char *const workload_words[] = {
    "the",     "of",    "and",    "to",     "in",    "is",      "that",  "for",    "it",
    "as",      "was",   "with",   "be",     "by",    "on",      "not",   "he",     "this",
    "are",     "or",    "his",    "from",   "at",    "which",   "but",   "have",   "an",
    "had",     "they",  "you",    "were",   "their", "one",     "all",   "we",     "can",
    "her",     "has",   "there",  "been",   "if",    "more",    "when",  "will",   "would",
    "who",     "so",    "no",     "she",    "other", "its",     "may",   "these",  "what",
    "them",    "than",  "some",   "him",    "time",  "into",    "only",  "do",     "about",
    "out",     "any",   "then",   "new",    "made",  "also",    "two",   "most",   "first",
    "over",    "such",  "after",  "could",  "used",  "many",    "where", "like",   "our",
    "work",    "how",   "should", "very",   "me",    "because", "make",  "each",   "good",
    "people",  "those", "well",   "before", "must",  "through", "back",  "years",  "much",
    "way",     "down",  "same",   "under",  "life",  "three",   "while", "world",  "day",
    "long",    "great", "own",    "part",   "both",  "just",    "high",  "still",  "now",
    "between", "place", "number", "water",  "small", "right",   "home",  "point",  "side",
    "state",   "found", "under",  "name",   "very",  "house",   "going", "night",  "water",
    "city",    "light", "left",   "year",   "end",   "line",    "large", "hand",   "group",
    "system",  "form",  "case",   "power",  "order", "level",   "early", "public", "game",
    "music",   "team",  "book",   "study",  "money", "story",   "fact",  "month",  "lot",
    "area",    "party", "road",   "table",  "field", "word",    "model", "data",   "value",
    "price",   "color", "paper",  "plant",  "river", "sun",     "moon",  "tree",   "stone",
    "open",    "close", "small",  "young",  "old",   "real",    "best",  "free",   "full",
    "sure",    "clear", "strong", "simple", "past",  "human",   "local", "late",   "hard",
    "major",   "true",  "whole",  "white",  "black", "red",     "blue",  "green",  "short",
};
#define WORKLOAD_NWORDS (sizeof workload_words / sizeof workload_words[0])

struct workload {
    workload_cfg_t cfg; /* strings point into the copies below */
    char *model;
    cJSON *extra; /* parsed extra_body, or NULL */
};

/* ---- rng ------------------------------------------------------------------------------------ */

static uint64_t workload_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void workload_rng_seed(workload_rng_t *r, uint64_t seed, uint64_t stream) {
    r->s = workload_mix(seed ^ workload_mix(stream + 0x9E3779B97F4A7C15ull));
}

uint64_t workload_rng_u64(workload_rng_t *r) {
    r->s += 0x9E3779B97F4A7C15ull;
    return workload_mix(r->s);
}

double workload_rng_unit(workload_rng_t *r) {
    return (double)(workload_rng_u64(r) >> 11) * 0x1.0p-53;
}

double workload_rng_normal(workload_rng_t *r) {
    double u1 = workload_rng_unit(r), u2 = workload_rng_unit(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

double workload_rng_exp(workload_rng_t *r, double rate) {
    double u = workload_rng_unit(r);
    return -log1p(-u) / rate;
}

uint32_t workload_length_sample(workload_rng_t *r, workload_dist_t dist, double mean,
                                double stddev) {
    double v = mean;
    if (stddev > 0) {
        if (dist == WORKLOAD_DIST_UNIFORM)
            v = mean + stddev * sqrt(3.0) * (2.0 * workload_rng_unit(r) - 1.0);
        else
            v = mean + stddev * workload_rng_normal(r);
    }
    v = round(v);
    if (!(v >= 1)) v = 1;
    if (v > WORKLOAD_MAX_LEN) v = WORKLOAD_MAX_LEN;
    return (uint32_t)v;
}

/* ---- setup ---------------------------------------------------------------------------------- */

static int workload_fail(char *err, size_t errlen, int rc, const char *msg) {
    if (err && errlen) snprintf(err, errlen, "%s", msg);
    return rc;
}

int workload_new(const workload_cfg_t *cfg, workload_t **out, char *err, size_t errlen) {
    int rc = 0;
    workload_t *w = NULL;
    if (!cfg || !out || !cfg->model) return workload_fail(err, errlen, SL_EINVAL, "no model");
    *out = NULL;
    if (!(cfg->isl >= 1 && cfg->isl <= WORKLOAD_MAX_LEN) ||
        !(cfg->osl >= 1 && cfg->osl <= WORKLOAD_MAX_LEN))
        return workload_fail(err, errlen, SL_ERANGE, "--isl and --osl must be in [1, 1000000]");
    if (!(cfg->isl_stddev >= 0 && cfg->isl_stddev <= WORKLOAD_MAX_LEN) ||
        !(cfg->osl_stddev >= 0 && cfg->osl_stddev <= WORKLOAD_MAX_LEN))
        return workload_fail(err, errlen, SL_ERANGE, "length stddev must be in [0, 1000000]");
    if (!(cfg->shared_prefix_ratio >= 0 && cfg->shared_prefix_ratio <= 1))
        return workload_fail(err, errlen, SL_ERANGE, "--shared-prefix-ratio must be in [0, 1]");
    if (cfg->shared_prefix_ratio > 0 && cfg->num_prefixes < 1)
        return workload_fail(err, errlen, SL_ERANGE, "--num-prefixes must be >= 1");
    if (cfg->dist != WORKLOAD_DIST_NORMAL && cfg->dist != WORKLOAD_DIST_UNIFORM)
        return workload_fail(err, errlen, SL_EINVAL, "unknown length distribution");
    if (cfg->api != WORKLOAD_API_CHAT && cfg->api != WORKLOAD_API_COMPLETIONS)
        return workload_fail(err, errlen, SL_EINVAL, "unknown API");
    w = calloc(1, sizeof *w);
    if (!w) return SL_ENOMEM;
    w->cfg = *cfg;
    w->model = strdup(cfg->model);
    if (!w->model) {
        rc = SL_ENOMEM;
        goto out;
    }
    w->cfg.model = w->model;
    w->cfg.extra_body = NULL;
    if (cfg->extra_body && *cfg->extra_body) {
        w->extra = cJSON_Parse(cfg->extra_body);
        if (!w->extra || !cJSON_IsObject(w->extra)) {
            rc = workload_fail(err, errlen, SL_EINVAL, "--extra-body must be a JSON object");
            goto out;
        }
    }
    *out = w;
    w = NULL;
out:
    workload_free(w);
    return rc;
}

void workload_free(workload_t *w) {
    if (!w) return;
    free(w->model);
    cJSON_Delete(w->extra);
    free(w);
}

void workload_req_release(workload_req_t *r) {
    if (!r) return;
    free(r->body);
    free(r->prompt);
    memset(r, 0, sizeof *r);
}

/* ---- prompts -------------------------------------------------------------------------------- */

typedef struct workload_text {
    char *p;
    size_t len, cap;
} workload_text_t;

static int workload_text_word(workload_text_t *t, const char *word) {
    size_t n = strlen(word);
    if (t->len + n + 2 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        while (cap < t->len + n + 2) cap *= 2;
        char *np = realloc(t->p, cap);
        if (!np) return SL_ENOMEM;
        t->p = np;
        t->cap = cap;
    }
    if (t->len) t->p[t->len++] = ' ';
    memcpy(t->p + t->len, word, n);
    t->len += n;
    t->p[t->len] = 0;
    return 0;
}

static int workload_text_words(workload_text_t *t, workload_rng_t *r, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        int rc = workload_text_word(t, workload_words[workload_rng_u64(r) % WORKLOAD_NWORDS]);
        if (rc) return rc;
    }
    return 0;
}

/* Stream ids: requests use their index; prefixes and arrivals live far above. */
#define WORKLOAD_STREAM_PREFIX (1ull << 62)

int workload_chat_messages_add(cJSON *root, const char *content) {
    cJSON *msgs = cJSON_AddArrayToObject(root, "messages");
    cJSON *m = cJSON_CreateObject();
    if (!msgs || !m) {
        cJSON_Delete(m);
        return SL_ENOMEM;
    }
    cJSON_AddItemToArray(msgs, m);
    if (!cJSON_AddStringToObject(m, "role", "user") ||
        !cJSON_AddStringToObject(m, "content", content))
        return SL_ENOMEM;
    return 0;
}

int workload_request_build(const workload_t *w, uint64_t index, workload_req_t *out) {
    int rc = 0;
    workload_text_t text = {0};
    cJSON *root = NULL;
    if (!w || !out) return SL_EINVAL;
    memset(out, 0, sizeof *out);
    const workload_cfg_t *c = &w->cfg;
    workload_rng_t r;
    workload_rng_seed(&r, c->seed, index);
    uint32_t isl = workload_length_sample(&r, c->dist, c->isl, c->isl_stddev);
    uint32_t osl = workload_length_sample(&r, c->dist, c->osl, c->osl_stddev);
    uint32_t npre = (uint32_t)lround(c->shared_prefix_ratio * isl);
    if (npre > isl) npre = isl;
    if (npre) {
        uint64_t k = workload_rng_u64(&r) % c->num_prefixes;
        workload_rng_t pr; /* prefix k's words are the same in every request */
        workload_rng_seed(&pr, c->seed, WORKLOAD_STREAM_PREFIX + k);
        rc = workload_text_words(&text, &pr, npre);
        if (rc) goto out;
    }
    rc = workload_text_words(&text, &r, isl - npre);
    if (rc) goto out;

    rc = SL_ENOMEM;
    root = cJSON_CreateObject();
    if (!root || !cJSON_AddStringToObject(root, "model", c->model)) goto out;
    if (c->api == WORKLOAD_API_CHAT) {
        if (workload_chat_messages_add(root, text.p ? text.p : "")) goto out;
    } else if (!cJSON_AddStringToObject(root, "prompt", text.p ? text.p : "")) {
        goto out;
    }
    if (!cJSON_AddNumberToObject(root, "max_tokens", osl)) goto out;
    if (c->min_tokens && !cJSON_AddNumberToObject(root, "min_tokens", osl)) goto out;
    if (c->ignore_eos && !cJSON_AddTrueToObject(root, "ignore_eos")) goto out;
    if (!cJSON_AddBoolToObject(root, "stream", c->stream)) goto out;
    if (c->stream) {
        cJSON *so = cJSON_AddObjectToObject(root, "stream_options");
        if (!so || !cJSON_AddTrueToObject(so, "include_usage")) goto out;
        if (c->continuous_usage && !cJSON_AddTrueToObject(so, "continuous_usage_stats")) goto out;
    }
    if (w->extra) {
        for (cJSON *e = w->extra->child; e; e = e->next) {
            cJSON *dup = cJSON_Duplicate(e, 1);
            if (!dup) goto out;
            cJSON_DeleteItemFromObjectCaseSensitive(root, e->string);
            cJSON_AddItemToObject(root, e->string, dup);
        }
    }
    out->body = cJSON_PrintUnformatted(root);
    if (!out->body) goto out;
    out->body_len = strlen(out->body);
    out->input_words = isl;
    out->prefix_words = npre;
    out->max_tokens = osl;
    out->prompt = text.p ? text.p : strdup("");
    if (!out->prompt) {
        rc = SL_ENOMEM;
        goto out;
    }
    text.p = NULL;
    rc = 0;
out:
    if (rc) workload_req_release(out);
    cJSON_Delete(root);
    free(text.p);
    return rc;
}
