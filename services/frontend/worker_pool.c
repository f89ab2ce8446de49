/* worker_pool.c - discovered decode workers, round-robin (see worker_pool.h). */
#include "services/frontend/worker_pool.h"

#include "common/base/err.h"
#include "common/base/log.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct worker_pool {
    pthread_mutex_t mu;
    worker_pool_entry_t *w; /* (n, cap) */
    size_t n, cap;
    uint64_t rr; /* round-robin cursor */
    discovery_watch_t *watch;
    worker_pool_gone_fn gone; /* departure listener, called under mu */
    void *gone_ud;
};

static void pool_on_add(const discovery_instance_t *inst, void *ud) {
    worker_pool_t *p = ud;
    worker_pool_entry_t e;
    memset(&e, 0, sizeof e);
    e.id = inst->instance_id;
    snprintf(e.subject, sizeof e.subject, "%s", inst->subject);
    cJSON *j = cJSON_Parse(inst->json);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "model");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "context_length");
    if (cJSON_IsString(m)) snprintf(e.model, sizeof e.model, "%s", m->valuestring);
    if (cJSON_IsNumber(c) && c->valuedouble > 0 && c->valuedouble < 4294967295.0)
        e.context_length = (uint32_t)c->valuedouble;
    cJSON_Delete(j);
    if (!e.model[0]) {
        LOG_WARN("worker %016llx announces no model: ignored", (unsigned long long)e.id);
        return;
    }
    pthread_mutex_lock(&p->mu);
    size_t i;
    for (i = 0; i < p->n && p->w[i].id != e.id; i++) {
    }
    if (i == p->n) {
        if (p->n == p->cap) {
            size_t nc = p->cap ? p->cap * 2 : 8;
            worker_pool_entry_t *nw = realloc(p->w, nc * sizeof *nw);
            if (!nw) {
                pthread_mutex_unlock(&p->mu);
                LOG_ERROR("worker pool: out of memory");
                return;
            }
            p->w = nw;
            p->cap = nc;
        }
        p->n++;
        LOG_INFO("worker %016llx (%s) added", (unsigned long long)e.id, e.model);
    }
    p->w[i] = e;
    pthread_mutex_unlock(&p->mu);
}

static void pool_on_remove(const discovery_instance_t *inst, void *ud) {
    worker_pool_t *p = ud;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n; i++) {
        if (p->w[i].id == inst->instance_id) {
            p->w[i] = p->w[--p->n];
            LOG_INFO("worker %016llx removed", (unsigned long long)inst->instance_id);
            if (p->gone) p->gone(inst->instance_id, p->gone_ud);
            break;
        }
    }
    pthread_mutex_unlock(&p->mu);
}

int worker_pool_open(discovery_t *d, worker_pool_t **out) {
    if (!d || !out) return SL_EINVAL;
    *out = NULL;
    worker_pool_t *p = calloc(1, sizeof *p);
    if (!p) return SL_ENOMEM;
    pthread_mutex_init(&p->mu, NULL);
    int rc = discovery_watch(d, "backend", pool_on_add, pool_on_remove, p, &p->watch);
    if (rc) {
        worker_pool_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

void worker_pool_free(worker_pool_t *p) {
    if (!p) return;
    discovery_watch_free(p->watch);
    pthread_mutex_destroy(&p->mu);
    free(p->w);
    free(p);
}

int worker_pool_pick(worker_pool_t *p, const char *model, const int64_t *exclude, size_t n_exclude,
                     worker_pool_entry_t *out) {
    int rc = SL_ENOTFOUND;
    pthread_mutex_lock(&p->mu);
    size_t n = p->n;
    for (size_t k = 0; k < n; k++) {
        size_t i = (size_t)((p->rr + k) % n);
        if (strcmp(p->w[i].model, model) != 0) continue;
        rc = SL_EUNAVAIL;
        bool skip = false;
        for (size_t x = 0; x < n_exclude && !skip; x++) skip = exclude[x] == p->w[i].id;
        if (skip) continue;
        *out = p->w[i];
        p->rr = p->rr + k + 1;
        rc = 0;
        break;
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

int worker_pool_get(worker_pool_t *p, int64_t id, const char *model, worker_pool_entry_t *out) {
    int rc = SL_ENOTFOUND;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n; i++) {
        if (p->w[i].id == id && strcmp(p->w[i].model, model) == 0) {
            *out = p->w[i];
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void worker_pool_on_gone(worker_pool_t *p, worker_pool_gone_fn fn, void *ud) {
    pthread_mutex_lock(&p->mu);
    p->gone = fn;
    p->gone_ud = ud;
    pthread_mutex_unlock(&p->mu);
}

size_t worker_pool_count(worker_pool_t *p) {
    pthread_mutex_lock(&p->mu);
    size_t n = p->n;
    pthread_mutex_unlock(&p->mu);
    return n;
}

size_t worker_pool_model_info(worker_pool_t *p, const char *model, uint32_t *context_length) {
    size_t n = 0;
    uint32_t ctx = 0;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n; i++) {
        if (strcmp(p->w[i].model, model) != 0) continue;
        n++;
        uint32_t c = p->w[i].context_length;
        if (c && (!ctx || c < ctx)) ctx = c;
    }
    pthread_mutex_unlock(&p->mu);
    if (context_length) *context_length = ctx;
    return n;
}

int worker_pool_models(worker_pool_t *p, char ***names, size_t **counts, size_t *n) {
    int rc = 0;
    *names = NULL;
    *counts = NULL;
    *n = 0;
    pthread_mutex_lock(&p->mu);
    size_t cap = p->n;
    char **nm = cap ? calloc(cap, sizeof *nm) : NULL;
    size_t *ct = cap ? calloc(cap, sizeof *ct) : NULL;
    size_t k = 0;
    if (cap && (!nm || !ct)) {
        rc = SL_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < p->n; i++) {
        size_t j;
        for (j = 0; j < k && strcmp(nm[j], p->w[i].model) != 0; j++) {
        }
        if (j == k) {
            if (!(nm[k] = strdup(p->w[i].model))) {
                rc = SL_ENOMEM;
                goto out;
            }
            k++;
        }
        ct[j]++;
    }
out:
    pthread_mutex_unlock(&p->mu);
    if (rc) {
        worker_pool_models_free(nm, ct, k);
        return rc;
    }
    *names = nm;
    *counts = ct;
    *n = k;
    return 0;
}

void worker_pool_models_free(char **names, size_t *counts, size_t n) {
    for (size_t i = 0; names && i < n; i++) free(names[i]);
    free(names);
    free(counts);
}
