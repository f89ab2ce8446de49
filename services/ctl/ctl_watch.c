/* ctl_watch.c - `sluice-ctl watch`: joins and leaves, one line each.
 *
 * Runs an etcd prefix watch (which lists first, then follows from that
 * revision and resumes after reconnects without losing or repeating events).
 * Instances present at start are printed as UP; afterwards a new key is JOIN,
 * a changed key UPDATE, a deleted or expired one LEAVE. The watch keeps the
 * last record per key so that a LEAVE can say what left even when etcd does
 * not send the previous value.
 */
#include "services/ctl/ctl.h"
#include "common/base/err.h"
#include "common/runtime/etcd.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct known {
    char *key;
    char *value;
    size_t len;
} known_t;

typedef struct watch_state {
    const ctl_cfg_t *cfg;
    pthread_mutex_t mu;
    known_t *known; /* (n_known) keys seen alive */
    size_t n_known, cap_known;
    bool synced;
    uint64_t events; /* JOIN/UPDATE/LEAVE after sync */
    uint64_t invalid;
    volatile int done;
} watch_state_t;

static known_t *known_find(watch_state_t *st, const char *key) {
    for (size_t i = 0; i < st->n_known; i++)
        if (strcmp(st->known[i].key, key) == 0) return &st->known[i];
    return NULL;
}

/* Remembers key's latest value; returns false on ENOMEM. */
static bool known_put(watch_state_t *st, const char *key, const char *value, size_t len) {
    known_t *k = known_find(st, key);
    char *v = malloc(len + 1);
    if (!v) return false;
    memcpy(v, value, len);
    v[len] = 0;
    if (k) {
        free(k->value);
        k->value = v;
        k->len = len;
        return true;
    }
    if (st->n_known == st->cap_known) {
        size_t cap = st->cap_known ? st->cap_known * 2 : 16;
        known_t *nk = realloc(st->known, cap * sizeof *nk);
        if (!nk) {
            free(v);
            return false;
        }
        st->known = nk;
        st->cap_known = cap;
    }
    char *kc = strdup(key);
    if (!kc) {
        free(v);
        return false;
    }
    st->known[st->n_known++] = (known_t){kc, v, len};
    return true;
}

static void known_del(watch_state_t *st, const char *key) {
    known_t *k = known_find(st, key);
    if (!k) return;
    free(k->key);
    free(k->value);
    *k = st->known[--st->n_known];
}

static void print_event(watch_state_t *st, const char *what, const char *key, const char *value,
                        size_t len) {
    char now[40];
    ctl_time_now(now, sizeof now);
    ctl_record_t r;
    char err[160];
    bool ok =
        value && ctl_record_parse(st->cfg->common.ns, key, value, len, &r, err, sizeof err) == 0;
    if (!ok) {
        st->invalid++;
        if (!value) snprintf(err, sizeof err, "no record");
    }
    if (st->cfg->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "time", now);
        cJSON_AddStringToObject(o, "event", what);
        cJSON_AddStringToObject(o, "key", key);
        if (ok)
            cJSON_AddItemToObject(o, "record", cJSON_Duplicate(r.json, 1));
        else
            cJSON_AddStringToObject(o, "error", err);
        char *text = cJSON_PrintUnformatted(o);
        if (text) printf("%s\n", text);
        cJSON_free(text);
        cJSON_Delete(o);
    } else if (ok) {
        char c[80], e[80], h[80], m[80];
        printf("%s %-6s %s/%s %s host=%s pid=%" PRId64 " model=%s\n", now, what,
               ctl_safe(r.component, c, sizeof c, 64), ctl_safe(r.endpoint, e, sizeof e, 64),
               r.instance, ctl_safe(*r.host ? r.host : NULL, h, sizeof h, 64), r.pid,
               ctl_safe(*r.model ? r.model : NULL, m, sizeof m, 64));
    } else {
        char k[200];
        printf("%s %-6s %s (invalid record: %s)\n", now, what, ctl_safe(key, k, sizeof k, 180),
               err);
    }
    if (ok) ctl_record_clear(&r);
}

static void on_watch(const etcd_watch_event_t *ev, void *ud) {
    watch_state_t *st = ud;
    pthread_mutex_lock(&st->mu);
    if (st->done) goto out;
    switch (ev->type) {
    case ETCD_WATCH_SYNCED:
        if (!st->synced) {
            fprintf(stderr, "sluice-ctl: watching %zu instance(s) in namespace %s\n", st->n_known,
                    st->cfg->common.ns);
            st->synced = true;
        }
        goto out;
    case ETCD_WATCH_LOST:
        fprintf(stderr, "sluice-ctl: etcd watch stream lost; reconnecting\n");
        goto out;
    case ETCD_WATCH_PUT: {
        if (!ev->key) goto out;
        const char *what = !st->synced ? "UP" : known_find(st, ev->key) ? "UPDATE" : "JOIN";
        if (!known_put(st, ev->key, ev->value ? ev->value : "", ev->value ? ev->value_len : 0))
            fprintf(stderr, "sluice-ctl: out of memory tracking %s\n", ev->key);
        print_event(st, what, ev->key, ev->value, ev->value_len);
        break;
    }
    case ETCD_WATCH_DELETE: {
        if (!ev->key) goto out;
        known_t *k = known_find(st, ev->key);
        if (ev->value && ev->value_len)
            print_event(st, "LEAVE", ev->key, ev->value, ev->value_len);
        else
            print_event(st, "LEAVE", ev->key, k ? k->value : NULL, k ? k->len : 0);
        known_del(st, ev->key);
        break;
    }
    }
    if (st->synced) {
        st->events++;
        if (st->cfg->count && st->events >= st->cfg->count)
            __atomic_store_n(&st->done, 1, __ATOMIC_RELEASE);
    }
out:
    pthread_mutex_unlock(&st->mu);
}

int ctl_watch(const ctl_cfg_t *cfg) {
    int status = 1;
    etcd_t *etcd = NULL;
    etcd_watch_t *w = NULL;
    watch_state_t st;
    memset(&st, 0, sizeof st);
    st.cfg = cfg;
    pthread_mutex_init(&st.mu, NULL);
    char prefix[256];
    if (ctl_prefix(prefix, sizeof prefix, cfg->common.ns, cfg->component) < 0) {
        fprintf(stderr, "sluice-ctl: namespace or component too long\n");
        goto out;
    }
    int rc = etcd_open(cfg->common.etcd, 3000, &etcd);
    if (rc == 0) rc = etcd_ping(etcd);
    if (rc < 0) {
        fprintf(stderr, "sluice-ctl: cannot reach etcd at %s: %s\n", cfg->common.etcd,
                sl_strerror(rc));
        goto out;
    }
    rc = etcd_watch_prefix(etcd, prefix, 0, on_watch, &st, &w);
    if (rc < 0) {
        fprintf(stderr, "sluice-ctl: watch %s: %s\n", prefix, sl_strerror(rc));
        goto out;
    }
    int64_t deadline = cfg->timeout_ms ? ctl_now_ms() + cfg->timeout_ms : 0;
    bool reached = ctl_wait(&st.done, deadline);
    /* Without --count, a timeout or Ctrl-C is the normal end. */
    status = reached || !cfg->count ? 0 : 1;
    if (!reached && cfg->count)
        fprintf(stderr, "sluice-ctl: %" PRIu64 " of %" PRIu64 " events before the end\n", st.events,
                cfg->count);
out:
    pthread_mutex_lock(&st.mu);
    st.done = 1; /* late callbacks print nothing */
    pthread_mutex_unlock(&st.mu);
    etcd_watch_free(w);
    etcd_free(etcd);
    for (size_t i = 0; i < st.n_known; i++) {
        free(st.known[i].key);
        free(st.known[i].value);
    }
    free(st.known);
    pthread_mutex_destroy(&st.mu);
    return status;
}
