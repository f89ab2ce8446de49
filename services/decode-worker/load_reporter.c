/* load_reporter.c - periodic and on-change LoadMetrics (see load_reporter.h). */
#include "services/decode-worker/load_reporter.h"
#include "common/base/clock.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "proto/sluice.pb-c.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct loadrep {
    bus_t *bus;
    char *subject, *component;
    uint32_t interval_ms;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    bool stop, changed, have;
    uint64_t worker_id;
    loadrep_snapshot_t cur;
    uint64_t published;
};

static int64_t loadrep_mono_ms(void) {
    return sl_mono_ns() / 1000000;
}

static void *loadrep_main(void *arg) {
    loadrep_t *lr = arg;
    int64_t last_tick = loadrep_mono_ms(), last_pub = 0;
    uint64_t tok_at_tick = 0;
    double tps = 0;
    bool tok_init = false;
    pthread_mutex_lock(&lr->mu);
    while (!lr->stop) {
        int64_t now = loadrep_mono_ms();
        int64_t due = last_tick + lr->interval_ms;
        if (!lr->changed && now < due) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t wait = due - now;
            ts.tv_sec += wait / 1000;
            ts.tv_nsec += (long)(wait % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&lr->cv, &lr->mu, &ts);
            continue;
        }
        now = loadrep_mono_ms();
        if (now == last_pub && now < due) { /* on-change messages: at most one per ms */
            pthread_mutex_unlock(&lr->mu);
            struct timespec ts = {0, 1000000L};
            nanosleep(&ts, NULL);
            pthread_mutex_lock(&lr->mu);
            continue;
        }
        if (now >= due) {
            if (tok_init && now > last_tick)
                tps = (double)(lr->cur.generated_tokens - tok_at_tick) * 1000.0 /
                      (double)(now - last_tick);
            tok_at_tick = lr->cur.generated_tokens;
            tok_init = true;
            last_tick = now;
        }
        lr->changed = false;
        if (!lr->have || lr->worker_id == 0) continue;
        Sluice__V1__LoadMetrics m;
        sluice__v1__load_metrics__init(&m);
        m.version = 1;
        m.worker_id = lr->worker_id;
        m.component = lr->component;
        m.active_seqs = lr->cur.active_seqs;
        m.waiting_seqs = lr->cur.waiting_seqs;
        m.kv_blocks_total = lr->cur.kv_blocks_total;
        m.kv_blocks_used = lr->cur.kv_blocks_used;
        m.kv_blocks_cached = lr->cur.kv_blocks_cached;
        m.pending_prefill_tokens = lr->cur.pending_prefill_tokens;
        m.kv_usage = lr->cur.kv_blocks_total
                         ? (float)((double)lr->cur.kv_blocks_used / (double)lr->cur.kv_blocks_total)
                         : 0.0f;
        m.timestamp_ms = sl_wall_ms();
        m.requests_total = lr->cur.requests_total;
        m.tokens_per_s = tps;
        m.prefill_queue_depth = lr->cur.prefill_queue_depth;
        last_pub = now;
        pthread_mutex_unlock(&lr->mu);
        int rc = bus_publish_proto(lr->bus, lr->subject, &m.base);
        pthread_mutex_lock(&lr->mu);
        if (rc == 0)
            lr->published++;
        else
            LOG_DEBUG("load metrics not published: %s", sl_strerror(rc));
    }
    pthread_mutex_unlock(&lr->mu);
    return NULL;
}

int loadrep_new(bus_t *bus, const char *subject, const char *component, uint32_t interval_ms,
                loadrep_t **out) {
    int rc = 0;
    if (!bus || !subject || !component || !out) return SL_EINVAL;
    *out = NULL;
    loadrep_t *lr = calloc(1, sizeof *lr);
    if (!lr) return SL_ENOMEM;
    lr->bus = bus;
    lr->interval_ms = interval_ms ? interval_ms : 100;
    lr->subject = strdup(subject);
    lr->component = strdup(component);
    if (!lr->subject || !lr->component) {
        rc = SL_ENOMEM;
        goto out;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&lr->mu, NULL);
    pthread_cond_init(&lr->cv, &ca);
    pthread_condattr_destroy(&ca);
    int e = pthread_create(&lr->th, NULL, loadrep_main, lr);
    if (e) {
        rc = -e;
        pthread_mutex_destroy(&lr->mu);
        pthread_cond_destroy(&lr->cv);
        goto out;
    }
    *out = lr;
    lr = NULL;
out:
    if (lr) {
        free(lr->subject);
        free(lr->component);
        free(lr);
    }
    return rc;
}

void loadrep_free(loadrep_t *lr) {
    if (!lr) return;
    pthread_mutex_lock(&lr->mu);
    lr->stop = true;
    pthread_cond_broadcast(&lr->cv);
    pthread_mutex_unlock(&lr->mu);
    pthread_join(lr->th, NULL);
    pthread_mutex_destroy(&lr->mu);
    pthread_cond_destroy(&lr->cv);
    free(lr->subject);
    free(lr->component);
    free(lr);
}

void loadrep_set_worker_id(loadrep_t *lr, uint64_t worker_id) {
    if (!lr) return;
    pthread_mutex_lock(&lr->mu);
    lr->worker_id = worker_id;
    lr->changed = true;
    pthread_cond_broadcast(&lr->cv);
    pthread_mutex_unlock(&lr->mu);
}

void loadrep_update(loadrep_t *lr, const loadrep_snapshot_t *s) {
    if (!lr || !s) return;
    pthread_mutex_lock(&lr->mu);
    bool ch = !lr->have || s->active_seqs != lr->cur.active_seqs ||
              s->waiting_seqs != lr->cur.waiting_seqs ||
              s->kv_blocks_used != lr->cur.kv_blocks_used;
    lr->cur = *s;
    lr->have = true;
    if (ch) {
        lr->changed = true;
        pthread_cond_broadcast(&lr->cv);
    }
    pthread_mutex_unlock(&lr->mu);
}

uint64_t loadrep_published(loadrep_t *lr) {
    if (!lr) return 0;
    pthread_mutex_lock(&lr->mu);
    uint64_t n = lr->published;
    pthread_mutex_unlock(&lr->mu);
    return n;
}
