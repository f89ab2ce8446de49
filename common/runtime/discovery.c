/* discovery.c - registration under one etcd lease per process, kept alive by a
 * background thread, and component watches that keep serving their last view
 * through etcd outages. See discovery.h for the record format.
 */
#include "common/runtime/discovery.h"

#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/etcd.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef SLUICE_VERSION
#define SLUICE_VERSION "0.1.0"
#endif

#define DISC_NAME_MAX   64
#define DISC_META_MAX   (1u << 20) /* caller fields; etcd's request cap is 1.5 MiB */
#define DISC_BACKOFF_LO 200        /* ms, first retry after a failure */
#define DISC_BACKOFF_HI 2000       /* ms */
#define DISC_KEY_ROOT   "sluice/v1/"

typedef struct disc_reg {
    char component[DISC_NAME_MAX + 1];
    char endpoint[DISC_NAME_MAX + 1];
    char *meta_json; /* caller fields, NULL for none */
    bool put;        /* record is in etcd under the current lease */
} disc_reg_t;

struct discovery {
    etcd_t *etcd;
    char ns[DISC_NAME_MAX + 1];
    int ttl_s;
    discovery_instance_fn on_change;
    void *ud;
    char host[256];
    char started_at[96];

    pthread_mutex_t mu; /* guards everything below and serializes etcd writes */
    pthread_cond_t cv;
    disc_reg_t *regs; /* (nregs) */
    size_t nregs;
    int64_t lease; /* 0: none held */
    bool stop;
    bool kick; /* a registration waits: work now */
    pthread_t thread;
    bool thread_started;
    _Atomic int64_t instance_id;
};

struct discovery_watch {
    discovery_t *d;
    discovery_watch_fn on_add, on_remove;
    void *ud;
    etcd_watch_t *w;
    pthread_mutex_t mu;
    discovery_instance_t *view; /* (nview) sorted by key */
    size_t nview, capview;
    atomic_bool synced;
};

/* ---- names, keys, records --------------------------------------------------- */

static bool disc_name_ok(const char *s) {
    if (!s) return false;
    size_t n = strlen(s);
    if (n == 0 || n > DISC_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

static void disc_hex(int64_t id, char out[17]) {
    snprintf(out, 17, "%016" PRIx64, (uint64_t)id);
}

static bool disc_hex_parse(const char *s, size_t n, int64_t *out) {
    if (n != 16) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < 16; i++) {
        char c = s[i];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else
            return false;
        v = v << 4 | (uint64_t)d;
    }
    if (v == 0 || v > INT64_MAX) return false;
    *out = (int64_t)v;
    return true;
}

void discovery_instance_clear(discovery_instance_t *inst) {
    if (!inst) return;
    free(inst->key);
    free(inst->component);
    free(inst->endpoint);
    free(inst->subject);
    free(inst->host);
    free(inst->json);
    memset(inst, 0, sizeof *inst);
}

void discovery_instances_free(discovery_instance_t *arr, size_t n) {
    if (!arr) return;
    for (size_t i = 0; i < n; i++) discovery_instance_clear(&arr[i]);
    free(arr);
}

static char *disc_strndup(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* The segment of key starting at *pos up to the next '/' (or the end). */
static bool disc_segment(const char *key, size_t *pos, char *out, size_t cap, bool last) {
    const char *s = key + *pos;
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    if (last != !slash || n == 0 || n >= cap) return false;
    memcpy(out, s, n);
    out[n] = 0;
    *pos += n + (slash ? 1 : 0);
    return true;
}

int discovery_instance_parse(const char *key, const char *value, size_t value_len,
                             discovery_instance_t *out) {
    int rc = SL_EINVAL;
    cJSON *j = NULL;
    char ns[DISC_NAME_MAX + 1], comp[DISC_NAME_MAX + 1], ep[DISC_NAME_MAX + 1],
        hex[DISC_NAME_MAX + 1];
    int64_t id = 0;
    if (!out) return SL_EINVAL;
    memset(out, 0, sizeof *out);
    if (!key || !value || value_len > DISC_META_MAX * 2) goto out;
    size_t root = strlen(DISC_KEY_ROOT), pos = root;
    if (strncmp(key, DISC_KEY_ROOT, root) != 0) goto out;
    if (!disc_segment(key, &pos, ns, sizeof ns, false) || !disc_name_ok(ns) ||
        !disc_segment(key, &pos, comp, sizeof comp, false) || !disc_name_ok(comp) ||
        !disc_segment(key, &pos, ep, sizeof ep, false) || !disc_name_ok(ep) ||
        !disc_segment(key, &pos, hex, sizeof hex, true) || !disc_hex_parse(hex, strlen(hex), &id))
        goto out;
    const char *end = NULL;
    j = cJSON_ParseWithLengthOpts(value, value_len, &end, false);
    if (!cJSON_IsObject(j) || !end) goto out;
    for (; end < value + value_len; end++) /* nothing but whitespace after the object */
        if (*end != ' ' && *end != '\n' && *end != '\r' && *end != '\t') goto out;
    const cJSON *jid = cJSON_GetObjectItemCaseSensitive(j, "instance_id");
    const cJSON *jcomp = cJSON_GetObjectItemCaseSensitive(j, "component");
    const cJSON *jep = cJSON_GetObjectItemCaseSensitive(j, "endpoint");
    const cJSON *jsub = cJSON_GetObjectItemCaseSensitive(j, "subject");
    const cJSON *jhost = cJSON_GetObjectItemCaseSensitive(j, "host");
    const cJSON *jpid = cJSON_GetObjectItemCaseSensitive(j, "pid");
    /* the record must agree with its key */
    if (!cJSON_IsString(jid) || strcmp(jid->valuestring, hex) != 0 || !cJSON_IsString(jcomp) ||
        strcmp(jcomp->valuestring, comp) != 0 || !cJSON_IsString(jep) ||
        strcmp(jep->valuestring, ep) != 0 || !cJSON_IsString(jsub) || !*jsub->valuestring ||
        strlen(jsub->valuestring) > 512 || (jhost && !cJSON_IsString(jhost)) ||
        (jpid && !cJSON_IsNumber(jpid)))
        goto out;
    out->instance_id = id;
    out->pid =
        jpid && jpid->valuedouble > 0 && jpid->valuedouble < 1e15 ? (int64_t)jpid->valuedouble : 0;
    if (!(out->key = strdup(key)) || !(out->component = strdup(comp)) ||
        !(out->endpoint = strdup(ep)) || !(out->subject = strdup(jsub->valuestring)) ||
        !(out->host = strdup(jhost ? jhost->valuestring : "")) ||
        !(out->json = disc_strndup(value, value_len))) {
        rc = SL_ENOMEM;
        goto out;
    }
    rc = 0;
out:
    if (rc != 0) discovery_instance_clear(out);
    cJSON_Delete(j);
    return rc;
}

static int disc_instance_copy(const discovery_instance_t *src, discovery_instance_t *dst) {
    memset(dst, 0, sizeof *dst);
    dst->instance_id = src->instance_id;
    dst->pid = src->pid;
    if (!(dst->key = strdup(src->key)) || !(dst->component = strdup(src->component)) ||
        !(dst->endpoint = strdup(src->endpoint)) || !(dst->subject = strdup(src->subject)) ||
        !(dst->host = strdup(src->host)) || !(dst->json = strdup(src->json))) {
        discovery_instance_clear(dst);
        return SL_ENOMEM;
    }
    return 0;
}

/* Builds the record of reg under lease id: caller fields first, then ours
 * (which replace any caller field of the same name). */
static char *disc_record(const discovery_t *d, const disc_reg_t *reg, int64_t id) {
    char hex[17], subject[DISC_NAME_MAX * 3 + 40];
    char *out = NULL;
    cJSON *j = reg->meta_json ? cJSON_Parse(reg->meta_json) : cJSON_CreateObject();
    if (!j) goto out;
    disc_hex(id, hex);
    snprintf(subject, sizeof subject, "sluice.%s.%s.%s.%s", d->ns, reg->component, reg->endpoint,
             hex);
    static const char *const ours[] = {"instance_id", "namespace",  "component",
                                       "endpoint",    "subject",    "host",
                                       "pid",         "started_at", "version"};
    for (size_t i = 0; i < sizeof ours / sizeof *ours; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(j, ours[i]);
    if (!cJSON_AddStringToObject(j, "instance_id", hex) ||
        !cJSON_AddStringToObject(j, "namespace", d->ns) ||
        !cJSON_AddStringToObject(j, "component", reg->component) ||
        !cJSON_AddStringToObject(j, "endpoint", reg->endpoint) ||
        !cJSON_AddStringToObject(j, "subject", subject) ||
        !cJSON_AddStringToObject(j, "host", d->host) ||
        !cJSON_AddNumberToObject(j, "pid", (double)getpid()) ||
        !cJSON_AddStringToObject(j, "started_at", d->started_at) ||
        !cJSON_AddStringToObject(j, "version", SLUICE_VERSION))
        goto out;
    out = cJSON_PrintUnformatted(j);
out:
    cJSON_Delete(j);
    return out;
}

static int disc_key(const discovery_t *d, const char *component, const char *endpoint, int64_t id,
                    char *buf, size_t cap) {
    char hex[17];
    disc_hex(id, hex);
    int n = snprintf(buf, cap, DISC_KEY_ROOT "%s/%s/%s/%s", d->ns, component, endpoint, hex);
    return n > 0 && (size_t)n < cap ? 0 : SL_EINVAL;
}

/* ---- lease and registrations (d->mu held) --------------------------------------- */

static bool disc_transient(int rc) {
    return rc == SL_EUNAVAIL || rc == SL_ETIMEDOUT || rc == SL_EIO;
}

/* Makes sure a lease is held and every registration is in etcd under it.
 * A new lease is reported to on_change before anything is put under it. */
static int disc_ensure(discovery_t *d) {
    int rc = 0;
    char key[512];
    if (d->nregs == 0) return 0;
    if (d->lease == 0) {
        int64_t id;
        if ((rc = etcd_lease_grant(d->etcd, d->ttl_s, &id, NULL)) != 0) return rc;
        int64_t prev = atomic_load(&d->instance_id);
        d->lease = id;
        atomic_store(&d->instance_id, id);
        for (size_t i = 0; i < d->nregs; i++) d->regs[i].put = false;
        LOG_INFO("discovery: instance %016" PRIx64 " (lease TTL %d s)", (uint64_t)id, d->ttl_s);
        /* Before the records go up: what they announce (a worker's
         * subjects) must be there when a reader finds them, or its first
         * request meets no responders. */
        if (d->on_change && id != prev) d->on_change(prev, id, d->ud);
    }
    for (size_t i = 0; i < d->nregs; i++) {
        disc_reg_t *r = &d->regs[i];
        if (r->put) continue;
        char *val = disc_record(d, r, d->lease);
        if (!val) return SL_ENOMEM;
        rc = disc_key(d, r->component, r->endpoint, d->lease, key, sizeof key);
        if (rc == 0) rc = etcd_put(d->etcd, key, val, strlen(val), d->lease, NULL);
        free(val);
        if (rc == SL_ENOTFOUND) { /* the lease vanished between grant and put */
            d->lease = 0;         /* instance_id keeps the old id until a new lease */
            return SL_EAGAIN;
        }
        if (rc != 0) return rc;
        r->put = true;
        LOG_DEBUG("discovery: registered %s", key);
    }
    return 0;
}

/* Marks for a new put every record that vanished from etcd although its
 * lease lives (someone deleted it). */
static int disc_verify(discovery_t *d) {
    char key[512];
    for (size_t i = 0; i < d->nregs; i++) {
        disc_reg_t *r = &d->regs[i];
        etcd_kv_t *kv = NULL;
        int rc = disc_key(d, r->component, r->endpoint, d->lease, key, sizeof key);
        if (rc == 0) rc = etcd_get(d->etcd, key, &kv);
        etcd_kv_free(kv);
        if (rc == SL_ENOTFOUND) {
            LOG_WARN("discovery: %s was deleted; putting it back", key);
            r->put = false;
        } else if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

static bool disc_all_put(const discovery_t *d) {
    for (size_t i = 0; i < d->nregs; i++)
        if (!d->regs[i].put) return false;
    return true;
}

static void disc_deadline(struct timespec *ts, int ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Keep-alive thread: refresh every TTL/3; on failure retry with jittered
 * backoff; when the lease is gone, take a new one and put everything again. */
static void *disc_main(void *arg) {
    discovery_t *d = arg;
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    int period = d->ttl_s * 1000 / 3;
    int backoff = 0; /* 0: healthy */
    unsigned tick = 0;
    bool warned = false;
    pthread_mutex_lock(&d->mu);
    while (!d->stop) {
        int wait_ms = period;
        if (backoff) wait_ms = backoff / 2 + (int)(rand_r(&seed) % (unsigned)(backoff / 2 + 1));
        if (d->kick && !backoff) wait_ms = 0;
        if (wait_ms > 0) {
            struct timespec ts;
            disc_deadline(&ts, wait_ms);
            while (!d->stop && !(d->kick && !backoff))
                if (pthread_cond_timedwait(&d->cv, &d->mu, &ts) == ETIMEDOUT) break;
            if (d->stop) break;
        }
        d->kick = false;
        int rc = 0;
        if (d->lease != 0 && disc_all_put(d)) {
            rc = etcd_lease_keepalive(d->etcd, d->lease, NULL);
            if (rc == SL_ENOTFOUND) {
                LOG_WARN("discovery: lease %016" PRIx64 " is gone; registering again",
                         (uint64_t)d->lease);
                d->lease = 0;
                rc = 0;
            } else if (rc == 0 && ++tick % 3 == 0) {
                rc = disc_verify(d); /* once per TTL: records deleted by hand come back */
            }
        }
        if (rc == 0) rc = disc_ensure(d);
        if (rc == SL_EAGAIN) rc = disc_ensure(d);
        if (rc == 0) {
            if (warned) LOG_INFO("discovery: etcd reachable again");
            warned = false;
            backoff = 0;
        } else {
            if (!warned || !disc_transient(rc))
                LOG_WARN("discovery: etcd %s: %s; keeping current state and retrying",
                         etcd_url(d->etcd), sl_strerror(rc));
            warned = true;
            backoff = backoff ? backoff * 2 : DISC_BACKOFF_LO;
            int cap = period < DISC_BACKOFF_HI ? period : DISC_BACKOFF_HI;
            if (cap < DISC_BACKOFF_LO) cap = DISC_BACKOFF_LO;
            if (backoff > cap) backoff = cap;
        }
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* ---- public: lifecycle ---------------------------------------------------------- */

int discovery_open(const discovery_opts_t *opts, discovery_t **out) {
    int rc = 0;
    discovery_t *d = NULL;
    if (!out) return SL_EINVAL;
    *out = NULL;
    discovery_opts_t o = opts ? *opts : (discovery_opts_t){0};
    const char *ns = o.ns ? o.ns : getenv("SLUICE_NAMESPACE");
    if (!ns || !*ns) ns = "default";
    int ttl = o.ttl_s ? o.ttl_s : 10;
    if (!disc_name_ok(ns) || ttl < 1 || ttl > 3600 || o.etcd_timeout_ms < 0) return SL_EINVAL;
    if (!(d = calloc(1, sizeof *d))) return SL_ENOMEM;
    pthread_mutex_init(&d->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->cv, &ca);
    pthread_condattr_destroy(&ca);
    snprintf(d->ns, sizeof d->ns, "%s", ns);
    d->ttl_s = ttl;
    d->on_change = o.on_instance_change;
    d->ud = o.ud;
    if (gethostname(d->host, sizeof d->host) != 0) snprintf(d->host, sizeof d->host, "unknown");
    d->host[sizeof d->host - 1] = 0;
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(d->started_at, sizeof d->started_at, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(tv.tv_usec / 1000));
    atomic_init(&d->instance_id, 0);
    if ((rc = etcd_open(o.etcd_url, o.etcd_timeout_ms ? o.etcd_timeout_ms : 2000, &d->etcd)) != 0)
        goto out;
    if (pthread_create(&d->thread, NULL, disc_main, d) != 0) {
        rc = SL_ENOMEM;
        goto out;
    }
    d->thread_started = true;
    *out = d;
    d = NULL;
out:
    if (d) discovery_close(d);
    return rc;
}

void discovery_close(discovery_t *d) {
    if (!d) return;
    pthread_mutex_lock(&d->mu);
    d->stop = true;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    if (d->thread_started) pthread_join(d->thread, NULL);
    if (d->lease) {
        int rc = etcd_lease_revoke(d->etcd, d->lease);
        if (rc == 0)
            LOG_INFO("discovery: instance %016" PRIx64 " deregistered", (uint64_t)d->lease);
        else if (rc != SL_ENOTFOUND)
            LOG_WARN("discovery: revoke of lease %016" PRIx64 " failed (%s); it expires in %d s",
                     (uint64_t)d->lease, sl_strerror(rc), d->ttl_s);
    }
    for (size_t i = 0; i < d->nregs; i++) free(d->regs[i].meta_json);
    free(d->regs);
    etcd_free(d->etcd);
    pthread_cond_destroy(&d->cv);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

int discovery_register(discovery_t *d, const char *component, const char *endpoint,
                       const char *meta_json) {
    int rc = 0;
    char *meta = NULL;
    if (!d || !disc_name_ok(component) || !disc_name_ok(endpoint)) return SL_EINVAL;
    if (meta_json) {
        if (strlen(meta_json) > DISC_META_MAX) return SL_ETOOBIG;
        cJSON *j = cJSON_Parse(meta_json);
        bool ok = cJSON_IsObject(j);
        cJSON_Delete(j);
        if (!ok) return SL_EINVAL;
        if (!(meta = strdup(meta_json))) return SL_ENOMEM;
    }
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < d->nregs; i++)
        if (strcmp(d->regs[i].component, component) == 0 &&
            strcmp(d->regs[i].endpoint, endpoint) == 0) {
            rc = SL_EEXIST;
            goto unlock;
        }
    disc_reg_t *regs = realloc(d->regs, (d->nregs + 1) * sizeof *regs);
    if (!regs) {
        rc = SL_ENOMEM;
        goto unlock;
    }
    d->regs = regs;
    disc_reg_t *r = &d->regs[d->nregs++];
    memset(r, 0, sizeof *r);
    snprintf(r->component, sizeof r->component, "%s", component);
    snprintf(r->endpoint, sizeof r->endpoint, "%s", endpoint);
    r->meta_json = meta;
    meta = NULL;
    rc = disc_ensure(d);
    if (rc == SL_EAGAIN) rc = disc_ensure(d);
    if (rc != 0 && !disc_transient(rc) && rc != SL_EAGAIN) {
        /* etcd refused this record (too big, invalid): do not keep it */
        free(r->meta_json);
        d->nregs--;
    } else if (rc != 0) {
        d->kick = true; /* keep it; the thread puts it when etcd answers */
        pthread_cond_broadcast(&d->cv);
        if (rc == SL_EAGAIN) rc = SL_EUNAVAIL;
    }
unlock:
    pthread_mutex_unlock(&d->mu);
    free(meta);
    return rc;
}

int64_t discovery_instance_id(discovery_t *d) {
    return d ? atomic_load(&d->instance_id) : 0;
}

const char *discovery_namespace(const discovery_t *d) {
    return d ? d->ns : NULL;
}

struct etcd *discovery_etcd(discovery_t *d) {
    return d ? d->etcd : NULL;
}

/* ---- watch ---------------------------------------------------------------------- */

static long dw_find(const discovery_watch_t *w, const char *key) {
    size_t lo = 0, hi = w->nview;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = strcmp(w->view[mid].key, key);
        if (r == 0) return (long)mid;
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -(long)lo - 1;
}

/* Removes key from the view into *gone (ownership to the caller). */
static bool dw_take(discovery_watch_t *w, const char *key, discovery_instance_t *gone) {
    long i = dw_find(w, key);
    if (i < 0) return false;
    *gone = w->view[i];
    memmove(&w->view[i], &w->view[i + 1], (w->nview - (size_t)i - 1) * sizeof *w->view);
    w->nview--;
    return true;
}

/* Inserts or replaces inst (ownership moves into the view on success). */
static int dw_put(discovery_watch_t *w, discovery_instance_t *inst) {
    long i = dw_find(w, inst->key);
    if (i >= 0) {
        discovery_instance_clear(&w->view[i]);
        w->view[i] = *inst;
        return 0;
    }
    if (w->nview == w->capview) {
        size_t cap = w->capview ? w->capview * 2 : 16;
        discovery_instance_t *v = realloc(w->view, cap * sizeof *v);
        if (!v) return SL_ENOMEM;
        w->view = v;
        w->capview = cap;
    }
    size_t at = (size_t)(-i - 1);
    memmove(&w->view[at + 1], &w->view[at], (w->nview - at) * sizeof *w->view);
    w->view[at] = *inst;
    w->nview++;
    return 0;
}

static void dw_event(const etcd_watch_event_t *ev, void *ud) {
    discovery_watch_t *w = ud;
    discovery_instance_t inst, gone;
    bool added = false, removed = false;
    memset(&gone, 0, sizeof gone);
    switch (ev->type) {
    case ETCD_WATCH_SYNCED:
        atomic_store(&w->synced, true);
        return;
    case ETCD_WATCH_LOST:
        return; /* keep serving the last view */
    case ETCD_WATCH_DELETE:
        pthread_mutex_lock(&w->mu);
        removed = dw_take(w, ev->key, &gone);
        pthread_mutex_unlock(&w->mu);
        break;
    case ETCD_WATCH_PUT: {
        int rc = discovery_instance_parse(ev->key, ev->value, ev->value_len, &inst);
        pthread_mutex_lock(&w->mu);
        if (rc != 0) {
            LOG_WARN("discovery: ignoring invalid record %.200s (%s)", ev->key, sl_strerror(rc));
            removed = dw_take(w, ev->key, &gone); /* an instance that became invalid is gone */
        } else if ((rc = dw_put(w, &inst)) != 0) {
            LOG_ERROR("discovery: %s; dropping %s", sl_strerror(rc), inst.key);
            discovery_instance_clear(&inst);
        } else {
            added = true;
        }
        pthread_mutex_unlock(&w->mu);
        if (added && w->on_add) {
            /* only this thread changes the view, so the entry stays valid */
            long i = dw_find(w, ev->key);
            if (i >= 0) w->on_add(&w->view[i], w->ud);
        }
        break;
    }
    }
    if (removed) {
        if (w->on_remove) w->on_remove(&gone, w->ud);
        discovery_instance_clear(&gone);
    }
}

int discovery_watch(discovery_t *d, const char *component, discovery_watch_fn on_add,
                    discovery_watch_fn on_remove, void *ud, discovery_watch_t **out) {
    int rc;
    discovery_watch_t *w = NULL;
    char prefix[256];
    if (!out) return SL_EINVAL;
    *out = NULL;
    if (!d || (component && !disc_name_ok(component))) return SL_EINVAL;
    if (component)
        snprintf(prefix, sizeof prefix, DISC_KEY_ROOT "%s/%s/", d->ns, component);
    else
        snprintf(prefix, sizeof prefix, DISC_KEY_ROOT "%s/", d->ns);
    if (!(w = calloc(1, sizeof *w))) return SL_ENOMEM;
    w->d = d;
    w->on_add = on_add;
    w->on_remove = on_remove;
    w->ud = ud;
    pthread_mutex_init(&w->mu, NULL);
    atomic_init(&w->synced, false);
    if ((rc = etcd_watch_prefix(d->etcd, prefix, 0, dw_event, w, &w->w)) != 0) goto out;
    *out = w;
    w = NULL;
out:
    discovery_watch_free(w);
    return rc;
}

void discovery_watch_free(discovery_watch_t *w) {
    if (!w) return;
    etcd_watch_free(w->w);
    discovery_instances_free(w->view, w->nview);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

bool discovery_watch_synced(discovery_watch_t *w) {
    return w && atomic_load(&w->synced);
}

int discovery_watch_snapshot(discovery_watch_t *w, discovery_instance_t **out, size_t *n) {
    int rc = 0;
    if (!out || !n) return SL_EINVAL;
    *out = NULL;
    *n = 0;
    if (!w) return SL_EINVAL;
    pthread_mutex_lock(&w->mu);
    discovery_instance_t *arr = w->nview ? calloc(w->nview, sizeof *arr) : NULL;
    if (w->nview && !arr) {
        rc = SL_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < w->nview; i++) {
        if ((rc = disc_instance_copy(&w->view[i], &arr[i])) != 0) {
            discovery_instances_free(arr, i);
            goto out;
        }
    }
    *out = arr;
    *n = w->nview;
out:
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int discovery_list(discovery_t *d, const char *component, discovery_instance_t **out, size_t *n) {
    int rc;
    char prefix[256];
    etcd_range_result_t r;
    if (!out || !n) return SL_EINVAL;
    *out = NULL;
    *n = 0;
    if (!d || (component && !disc_name_ok(component))) return SL_EINVAL;
    if (component)
        snprintf(prefix, sizeof prefix, DISC_KEY_ROOT "%s/%s/", d->ns, component);
    else
        snprintf(prefix, sizeof prefix, DISC_KEY_ROOT "%s/", d->ns);
    if ((rc = etcd_range_prefix(d->etcd, prefix, 0, &r)) != 0) return rc;
    discovery_instance_t *arr = r.n ? calloc(r.n, sizeof *arr) : NULL;
    size_t k = 0;
    if (r.n && !arr) {
        rc = SL_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < r.n; i++) {
        int prc =
            discovery_instance_parse(r.kvs[i].key, r.kvs[i].value, r.kvs[i].value_len, &arr[k]);
        if (prc == SL_ENOMEM) {
            rc = prc;
            discovery_instances_free(arr, k);
            goto out;
        }
        if (prc == 0)
            k++;
        else
            LOG_WARN("discovery: skipping invalid record %.200s", r.kvs[i].key);
    }
    *out = arr;
    *n = k;
    if (k == 0) {
        free(arr);
        *out = NULL;
    }
out:
    etcd_range_result_free(&r);
    return rc;
}
