/* etcd_bench.c - latency of the etcd client's operations against a running etcd.
 *
 * Reports p50/p99/mean over N operations each: put, get, range over K keys,
 * create-if-absent txn, lease grant, keep-alive, revoke, and put-to-watch
 * delivery. It does not start etcd; start one by hand, e.g.
 *
 *   etcd --data-dir /tmp/etcd-bench --listen-client-urls http://127.0.0.1:23790 \
 *        --advertise-client-urls http://127.0.0.1:23790 \
 *        --listen-peer-urls http://127.0.0.1:23800 --logger=zap --log-level=warn &
 *   build/bench/etcd_bench --etcd http://127.0.0.1:23790 -n 1000
 *
 * Everything it writes lives under bench/<pid>/ and is deleted at the end.
 */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/etcd.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *op, double *lat, int n, int errors) {
    if (n <= 0) {
        printf("%-22s %6d %10s %10s %10s %6d\n", op, 0, "-", "-", "-", errors);
        return;
    }
    qsort(lat, (size_t)n, sizeof *lat, cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += lat[i];
    int i99 = (int)((double)n * 0.99);
    if (i99 >= n) i99 = n - 1;
    printf("%-22s %6d %10.1f %10.1f %10.1f %6d\n", op, n, lat[n / 2], lat[i99], sum / n, errors);
}

typedef struct watch_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t seen_rev;
} watch_wait_t;

static void on_event(const etcd_watch_event_t *ev, void *ud) {
    watch_wait_t *w = ud;
    if (ev->type != ETCD_WATCH_PUT && ev->type != ETCD_WATCH_SYNCED) return;
    pthread_mutex_lock(&w->mu);
    if (ev->revision > w->seen_rev) w->seen_rev = ev->revision;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static bool wait_rev(watch_wait_t *w, int64_t rev, int timeout_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&w->mu);
    while (w->seen_rev < rev)
        if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) != 0) break;
    bool ok = w->seen_rev >= rev;
    pthread_mutex_unlock(&w->mu);
    return ok;
}

static void usage(void) {
    fprintf(stderr, "usage: etcd_bench [--etcd URL] [-n OPS] [--value-size BYTES] "
                    "[--range-keys K]\n");
}

int main(int argc, char **argv) {
    const char *url = NULL;
    long n = 1000, vsize = 256, nkeys = 100;
    for (int i = 1; i < argc; i++) {
        char *end = NULL;
        if (strcmp(argv[i], "--etcd") == 0 && i + 1 < argc)
            url = argv[++i];
        else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
            n = strtol(argv[++i], &end, 10);
        else if (strcmp(argv[i], "--value-size") == 0 && i + 1 < argc)
            vsize = strtol(argv[++i], &end, 10);
        else if (strcmp(argv[i], "--range-keys") == 0 && i + 1 < argc)
            nkeys = strtol(argv[++i], &end, 10);
        else {
            usage();
            return 2;
        }
        if (end && *end) {
            usage();
            return 2;
        }
    }
    if (n < 1 || n > 1000000 || vsize < 0 || vsize > (1 << 20) || nkeys < 1 || nkeys > 100000) {
        usage();
        return 2;
    }
    sl_log_init("etcd_bench");
    etcd_t *c = NULL;
    int rc = etcd_open(url, 5000, &c);
    if (rc == 0) rc = etcd_ping(c);
    if (rc != 0) {
        fprintf(stderr, "etcd_bench: cannot reach etcd at %s: %s\n", c ? etcd_url(c) : url,
                sl_strerror(rc));
        etcd_free(c);
        return 1;
    }
    double *lat = calloc((size_t)n, sizeof *lat);
    char *val = malloc((size_t)vsize + 1);
    int64_t *leases = calloc((size_t)n, sizeof *leases);
    if (!lat || !val || !leases) return 1;
    memset(val, 'v', (size_t)vsize);
    char prefix[64], key[128];
    snprintf(prefix, sizeof prefix, "bench/%d/", (int)getpid());
    printf("etcd %s, %ld ops each, value %ld B, range over %ld keys (latency in us)\n", etcd_url(c),
           n, vsize, nkeys);
    printf("%-22s %6s %10s %10s %10s %6s\n", "op", "n", "p50", "p99", "mean", "errors");

    int k = 0, err = 0;
    for (long i = 0; i < n; i++) {
        snprintf(key, sizeof key, "%sput/%ld", prefix, i);
        double t = now_us();
        if (etcd_put(c, key, val, (size_t)vsize, 0, NULL) != 0)
            err++;
        else
            lat[k++] = now_us() - t;
    }
    report("put", lat, k, err);

    k = err = 0;
    for (long i = 0; i < n; i++) {
        snprintf(key, sizeof key, "%sput/%ld", prefix, i % n);
        etcd_kv_t *kv = NULL;
        double t = now_us();
        if (etcd_get(c, key, &kv) != 0)
            err++;
        else
            lat[k++] = now_us() - t;
        etcd_kv_free(kv);
    }
    report("get", lat, k, err);

    for (long i = 0; i < nkeys; i++) {
        snprintf(key, sizeof key, "%srange/%05ld", prefix, i);
        etcd_put(c, key, val, (size_t)vsize, 0, NULL);
    }
    char rprefix[96];
    snprintf(rprefix, sizeof rprefix, "%srange/", prefix);
    k = err = 0;
    for (long i = 0; i < n; i++) {
        etcd_range_result_t r;
        double t = now_us();
        if (etcd_range_prefix(c, rprefix, 0, &r) != 0 || r.n != (size_t)nkeys)
            err++;
        else
            lat[k++] = now_us() - t;
        etcd_range_result_free(&r);
    }
    char label[64];
    snprintf(label, sizeof label, "range (%ld keys)", nkeys);
    report(label, lat, k, err);

    k = err = 0;
    for (long i = 0; i < n; i++) {
        snprintf(key, sizeof key, "%stxn/%ld", prefix, i);
        double t = now_us();
        if (etcd_put_if_absent(c, key, val, (size_t)vsize, 0, NULL) != 0)
            err++;
        else
            lat[k++] = now_us() - t;
    }
    report("put_if_absent (txn)", lat, k, err);

    k = err = 0;
    for (long i = 0; i < n; i++) {
        double t = now_us();
        if (etcd_lease_grant(c, 60, &leases[i], NULL) != 0) {
            leases[i] = 0;
            err++;
        } else {
            lat[k++] = now_us() - t;
        }
    }
    report("lease grant", lat, k, err);

    k = err = 0;
    for (long i = 0; i < n; i++) {
        if (!leases[i]) continue;
        double t = now_us();
        if (etcd_lease_keepalive(c, leases[i], NULL) != 0)
            err++;
        else
            lat[k++] = now_us() - t;
    }
    report("lease keepalive", lat, k, err);

    k = err = 0;
    for (long i = 0; i < n; i++) {
        if (!leases[i]) continue;
        double t = now_us();
        if (etcd_lease_revoke(c, leases[i]) != 0)
            err++;
        else
            lat[k++] = now_us() - t;
    }
    report("lease revoke", lat, k, err);

    /* put -> watch callback, one at a time */
    watch_wait_t ww = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    char wprefix[96];
    snprintf(wprefix, sizeof wprefix, "%swatch/", prefix);
    etcd_watch_t *w = NULL;
    k = err = 0;
    if (etcd_watch_prefix(c, wprefix, 0, on_event, &ww, &w) == 0 && wait_rev(&ww, 1, 5000)) {
        for (long i = 0; i < n; i++) {
            snprintf(key, sizeof key, "%s%ld", wprefix, i);
            int64_t rev = 0;
            double t = now_us();
            if (etcd_put(c, key, val, (size_t)vsize, 0, &rev) != 0 || !wait_rev(&ww, rev, 5000))
                err++;
            else
                lat[k++] = now_us() - t;
        }
    } else {
        err = 1;
    }
    etcd_watch_free(w);
    report("put -> watch event", lat, k, err);

    int64_t deleted = 0;
    etcd_delete_prefix(c, prefix, &deleted);
    free(lat);
    free(val);
    free(leases);
    etcd_free(c);
    return 0;
}
