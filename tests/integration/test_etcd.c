/* test_etcd.c - the etcd client against a real etcd: leases, keys, the
 * create-if-absent txn, the gateway's quirks, errors, and watches that resume
 * after a broken stream, a compaction and an etcd restart.
 *
 * A small TCP proxy sits between a watch and etcd so a test can cut the
 * watch's connection while writing to etcd directly: that is how "events made
 * while disconnected arrive exactly once" is observed.
 */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/etcd.h"
#include "tests/harness/harness.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static harness_etcd_t g_etcd; /* shared by the tests that do not restart it */
static char g_prefix[64];     /* unique per test process */

static void set_prefix(const char *name) {
    snprintf(g_prefix, sizeof g_prefix, "test/%s/%d/", name, (int)getpid());
}

static const char *key(const char *suffix) {
    static char buf[4][128];
    static int i;
    char *b = buf[i++ % 4];
    snprintf(b, sizeof buf[0], "%s%s", g_prefix, suffix);
    return b;
}

/* ---- a cuttable TCP proxy ------------------------------------------------------ */

typedef struct proxy {
    int lfd, port, target;
    atomic_bool cut, stop;
    pthread_t th;
} proxy_t;

static int connect_port(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static void *proxy_main(void *arg) {
    proxy_t *p = arg;
    enum { MAXC = 32 };
    int a[MAXC], b[MAXC], n = 0;
    char buf[65536];
    while (!atomic_load(&p->stop)) {
        if (atomic_load(&p->cut)) {
            for (int i = 0; i < n; i++) close(a[i]), close(b[i]);
            n = 0;
        }
        struct pollfd pf[1 + 2 * MAXC];
        pf[0] = (struct pollfd){.fd = p->lfd, .events = POLLIN};
        for (int i = 0; i < n; i++) {
            pf[1 + 2 * i] = (struct pollfd){.fd = a[i], .events = POLLIN};
            pf[2 + 2 * i] = (struct pollfd){.fd = b[i], .events = POLLIN};
        }
        if (poll(pf, 1 + 2 * (nfds_t)n, 20) <= 0) continue;
        /* pairs first, downwards: pf[] describes exactly the pairs polled, and
         * a removal only moves an already handled pair into the hole */
        for (int i = n - 1; i >= 0; i--) {
            bool dead = false;
            for (int side = 0; side < 2 && !dead; side++) {
                struct pollfd *q = &pf[1 + 2 * i + side];
                if (!(q->revents & (POLLIN | POLLHUP | POLLERR))) continue;
                ssize_t r = read(q->fd, buf, sizeof buf);
                int to = side ? a[i] : b[i];
                if (r <= 0) dead = true;
                for (ssize_t off = 0; r > 0 && off < r && !dead;) {
                    ssize_t wr = write(to, buf + off, (size_t)(r - off));
                    if (wr <= 0)
                        dead = true;
                    else
                        off += wr;
                }
            }
            if (dead) {
                close(a[i]);
                close(b[i]);
                a[i] = a[n - 1];
                b[i] = b[n - 1];
                n--;
            }
        }
        if (pf[0].revents & POLLIN) {
            int c = accept(p->lfd, NULL, NULL);
            int t = c >= 0 && !atomic_load(&p->cut) && n < MAXC ? connect_port(p->target) : -1;
            if (t < 0) {
                if (c >= 0) close(c);
            } else {
                a[n] = c;
                b[n] = t;
                n++;
            }
        }
    }
    for (int i = 0; i < n; i++) close(a[i]), close(b[i]);
    return NULL;
}

static void proxy_start(proxy_t *p, int target) {
    memset(p, 0, sizeof *p);
    p->target = target;
    p->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    ck_assert_int_eq(bind(p->lfd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(p->lfd, 16), 0);
    getsockname(p->lfd, (struct sockaddr *)&a, &len);
    p->port = ntohs(a.sin_port);
    pthread_create(&p->th, NULL, proxy_main, p);
}

static void proxy_stop(proxy_t *p) {
    atomic_store(&p->stop, true);
    pthread_join(p->th, NULL);
    close(p->lfd);
}

/* ---- recording watch callback ------------------------------------------------- */

typedef struct rec_ev {
    etcd_watch_event_type_t type;
    char key[128];
    char value[128];
    bool has_value;
    int64_t revision;
} rec_ev_t;

typedef struct recorder {
    pthread_mutex_t mu;
    rec_ev_t ev[256];
    int n;
} recorder_t;

static void rec_fn(const etcd_watch_event_t *ev, void *ud) {
    recorder_t *r = ud;
    pthread_mutex_lock(&r->mu);
    if (r->n < 256) {
        rec_ev_t *e = &r->ev[r->n++];
        memset(e, 0, sizeof *e);
        e->type = ev->type;
        e->revision = ev->revision;
        if (ev->key) snprintf(e->key, sizeof e->key, "%s", ev->key);
        if (ev->value) {
            e->has_value = true;
            snprintf(e->value, sizeof e->value, "%.*s", (int)ev->value_len, ev->value);
        }
    }
    pthread_mutex_unlock(&r->mu);
}

static void rec_init(recorder_t *r) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
}

/* Number of events of type for key (key NULL: any key). */
static int rec_count(recorder_t *r, etcd_watch_event_type_t type, const char *k) {
    int c = 0;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n; i++)
        if (r->ev[i].type == type && (!k || strcmp(r->ev[i].key, k) == 0)) c++;
    pthread_mutex_unlock(&r->mu);
    return c;
}

static bool rec_wait(recorder_t *r, etcd_watch_event_type_t type, const char *k, int want,
                     int timeout_ms) {
    long long end = harness_now_ms() + timeout_ms;
    while (harness_now_ms() < end) {
        if (rec_count(r, type, k) >= want) return true;
        harness_sleep_ms(10);
    }
    return rec_count(r, type, k) >= want;
}

static etcd_t *open_client(const char *url) {
    etcd_t *c = NULL;
    ck_assert_int_eq(etcd_open(url, 3000, &c), 0);
    return c;
}

/* ---- tests ---------------------------------------------------------------------- */

START_TEST(test_lease_lifecycle) {
    etcd_t *c = open_client(g_etcd.url);
    int64_t id = 0, ttl = 0, left = 0;
    ck_assert_int_eq(etcd_lease_grant(c, 7, &id, &ttl), 0);
    ck_assert_int_gt(id, 0);
    ck_assert_int_eq(ttl, 7); /* "TTL" spelled right, or etcd would grant its minimum */
    ck_assert_int_eq(etcd_lease_ttl(c, id, &left), 0);
    ck_assert(left > 0 && left <= 7);
    ttl = 0;
    ck_assert_int_eq(etcd_lease_keepalive(c, id, &ttl), 0);
    ck_assert_int_eq(ttl, 7);
    ck_assert_int_eq(etcd_lease_revoke(c, id), 0);
    /* gone: each call says so in its own gateway dialect */
    ck_assert_int_eq(etcd_lease_revoke(c, id), SL_ENOTFOUND);
    ck_assert_int_eq(etcd_lease_keepalive(c, id, NULL), SL_ENOTFOUND);
    ck_assert_int_eq(etcd_lease_ttl(c, id, &left), SL_ENOTFOUND);
    ck_assert_int_eq(etcd_lease_keepalive(c, 0x1234567, NULL), SL_ENOTFOUND);
    /* a lease id above 2^53 survives the trip (int64 as JSON strings) */
    ck_assert_int_eq(etcd_lease_grant(c, 5, &id, NULL), 0);
    ck_assert_int_gt(id, 1LL << 53);
    ck_assert_int_eq(etcd_lease_keepalive(c, id, NULL), 0);
    ck_assert_int_eq(etcd_lease_revoke(c, id), 0);
    /* bad arguments never reach etcd */
    ck_assert_int_eq(etcd_lease_grant(c, 0, &id, NULL), SL_EINVAL);
    ck_assert_int_eq(etcd_lease_grant(c, -3, &id, NULL), SL_EINVAL);
    ck_assert_int_eq(etcd_lease_grant(c, 5, NULL, NULL), SL_EINVAL);
    ck_assert_int_eq(etcd_lease_keepalive(c, -1, NULL), SL_EINVAL);
    ck_assert_int_eq(etcd_lease_revoke(NULL, 5), SL_EINVAL);
    etcd_free(c);
}
END_TEST

START_TEST(test_lease_expiry_deletes_keys) {
    set_prefix("expiry");
    etcd_t *c = open_client(g_etcd.url);
    int64_t id;
    ck_assert_int_eq(etcd_lease_grant(c, 1, &id, NULL), 0);
    ck_assert_int_eq(etcd_put(c, key("a"), "1", 1, id, NULL), 0);
    etcd_kv_t *kv = NULL;
    ck_assert_int_eq(etcd_get(c, key("a"), &kv), 0);
    ck_assert_int_eq(kv->lease, id);
    etcd_kv_free(kv);
    long long end = harness_now_ms() + 5000;
    int rc = 0;
    while (harness_now_ms() < end && (rc = etcd_get(c, key("a"), &kv)) == 0) {
        etcd_kv_free(kv);
        harness_sleep_ms(100);
    }
    ck_assert_int_eq(rc, SL_ENOTFOUND);
    ck_assert_int_eq(etcd_lease_keepalive(c, id, NULL), SL_ENOTFOUND);
    etcd_free(c);
}
END_TEST

START_TEST(test_put_get_range_delete) {
    set_prefix("kv");
    etcd_t *c = open_client(g_etcd.url);
    int64_t rev1 = 0, rev2 = 0, n = -1;
    /* binary value with NULs and high bytes survives base64 */
    const char bin[] = {'a', 0, (char)0xff, '\n', '"', 'z'};
    ck_assert_int_eq(etcd_put(c, key("b"), bin, sizeof bin, 0, &rev1), 0);
    ck_assert_int_gt(rev1, 0);
    ck_assert_int_eq(etcd_put(c, key("a"), "x", 1, 0, &rev2), 0);
    ck_assert_int_eq(rev2, rev1 + 1);
    ck_assert_int_eq(etcd_put(c, key("c"), NULL, 0, 0, NULL), 0); /* empty value */
    etcd_kv_t *kv = NULL;
    ck_assert_int_eq(etcd_get(c, key("b"), &kv), 0);
    ck_assert_uint_eq(kv->value_len, sizeof bin);
    ck_assert_int_eq(memcmp(kv->value, bin, sizeof bin), 0);
    ck_assert_str_eq(kv->key, key("b"));
    ck_assert_int_eq(kv->mod_revision, rev1);
    ck_assert_int_eq(kv->create_revision, rev1);
    ck_assert_int_eq(kv->version, 1);
    ck_assert_int_eq(kv->lease, 0);
    etcd_kv_free(kv);
    ck_assert_int_eq(etcd_get(c, key("c"), &kv), 0);
    ck_assert_uint_eq(kv->value_len, 0); /* omitted "value" means empty */
    ck_assert_str_eq(kv->value, "");
    etcd_kv_free(kv);
    ck_assert_int_eq(etcd_get(c, key("nope"), &kv), SL_ENOTFOUND);
    ck_assert_ptr_null(kv);

    etcd_range_result_t r;
    ck_assert_int_eq(etcd_range_prefix(c, g_prefix, 0, &r), 0);
    ck_assert_uint_eq(r.n, 3);
    ck_assert_str_eq(r.kvs[0].key, key("a")); /* sorted by key */
    ck_assert_str_eq(r.kvs[1].key, key("b"));
    ck_assert_str_eq(r.kvs[2].key, key("c"));
    ck_assert(!r.more);
    ck_assert_int_ge(r.revision, rev2);
    etcd_range_result_free(&r);
    ck_assert_int_eq(etcd_range_prefix(c, g_prefix, 2, &r), 0);
    ck_assert_uint_eq(r.n, 2);
    ck_assert(r.more);
    etcd_range_result_free(&r);
    /* empty range: the gateway omits "kvs" and "count" */
    ck_assert_int_eq(etcd_range_prefix(c, key("zzz/"), 0, &r), 0);
    ck_assert_uint_eq(r.n, 0);
    ck_assert_ptr_null(r.kvs);
    ck_assert_int_gt(r.revision, 0);
    etcd_range_result_free(&r);
    /* the whole store (empty prefix) holds at least ours */
    ck_assert_int_eq(etcd_range_prefix(c, "", 0, &r), 0);
    ck_assert_uint_ge(r.n, 3);
    etcd_range_result_free(&r);

    ck_assert_int_eq(etcd_delete(c, key("a"), &n), 0);
    ck_assert_int_eq(n, 1);
    ck_assert_int_eq(etcd_delete(c, key("a"), &n), 0); /* missing: not an error */
    ck_assert_int_eq(n, 0);
    /* prefix delete does not reach past the prefix ("kv/<pid>/" vs "kv/<pid>0") */
    char sibling[96];
    snprintf(sibling, sizeof sibling, "%.*s0x", (int)strlen(g_prefix) - 1, g_prefix);
    ck_assert_int_eq(etcd_put(c, sibling, "s", 1, 0, NULL), 0);
    ck_assert_int_eq(etcd_delete_prefix(c, g_prefix, &n), 0);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(etcd_get(c, sibling, &kv), 0);
    etcd_kv_free(kv);
    ck_assert_int_eq(etcd_delete(c, sibling, NULL), 0);
    ck_assert_int_eq(etcd_delete_prefix(c, "", &n), SL_EINVAL); /* never wipe the store */
    etcd_free(c);
}
END_TEST

START_TEST(test_put_with_lease_and_missing_lease) {
    set_prefix("lease");
    etcd_t *c = open_client(g_etcd.url);
    int64_t id;
    ck_assert_int_eq(etcd_put(c, key("x"), "v", 1, 0x7777777, NULL), SL_ENOTFOUND);
    ck_assert_int_eq(etcd_lease_grant(c, 30, &id, NULL), 0);
    ck_assert_int_eq(etcd_put(c, key("x"), "v", 1, id, NULL), 0);
    ck_assert_int_eq(etcd_put(c, key("y"), "w", 1, id, NULL), 0);
    ck_assert_int_eq(etcd_lease_revoke(c, id), 0); /* revoke deletes both at once */
    etcd_range_result_t r;
    ck_assert_int_eq(etcd_range_prefix(c, g_prefix, 0, &r), 0);
    ck_assert_uint_eq(r.n, 0);
    etcd_range_result_free(&r);
    etcd_free(c);
}
END_TEST

START_TEST(test_txn_create_if_absent) {
    set_prefix("txn");
    etcd_t *c = open_client(g_etcd.url);
    int64_t rev = 0;
    ck_assert_int_eq(etcd_put_if_absent(c, key("k"), "first", 5, 0, &rev), 0);
    ck_assert_int_gt(rev, 0);
    /* failed txn: the gateway omits "succeeded" */
    ck_assert_int_eq(etcd_put_if_absent(c, key("k"), "second", 6, 0, NULL), SL_EEXIST);
    etcd_kv_t *kv;
    ck_assert_int_eq(etcd_get(c, key("k"), &kv), 0);
    ck_assert_str_eq(kv->value, "first");
    ck_assert_int_eq(kv->version, 1);
    etcd_kv_free(kv);
    /* after a delete it can be created again */
    ck_assert_int_eq(etcd_delete(c, key("k"), NULL), 0);
    ck_assert_int_eq(etcd_put_if_absent(c, key("k"), "third", 5, 0, NULL), 0);
    /* with a lease that does not exist */
    ck_assert_int_eq(etcd_put_if_absent(c, key("l"), "x", 1, 0x7654321, NULL), SL_ENOTFOUND);
    ck_assert_int_eq(etcd_delete_prefix(c, g_prefix, NULL), 0);
    etcd_free(c);
}
END_TEST

START_TEST(test_bad_arguments) {
    etcd_t *c = NULL;
    ck_assert_int_eq(etcd_open("ftp://x", 0, &c), SL_EINVAL);
    ck_assert_ptr_null(c);
    ck_assert_int_eq(etcd_open("http://bad host:2379", 0, &c), SL_EINVAL);
    ck_assert_int_eq(etcd_open("127.0.0.1:2379", 0, &c), 0); /* bare host:port is http */
    ck_assert_str_eq(etcd_url(c), "http://127.0.0.1:2379");
    etcd_free(c);
    c = NULL;
    ck_assert_int_eq(etcd_open(g_etcd.url, -1, &c), SL_EINVAL);
    ck_assert_int_eq(etcd_open(g_etcd.url, 0, NULL), SL_EINVAL);
    c = open_client(g_etcd.url);
    etcd_kv_t *kv;
    etcd_range_result_t r;
    ck_assert_int_eq(etcd_put(c, "", "v", 1, 0, NULL), SL_EINVAL);
    ck_assert_int_eq(etcd_put(c, NULL, "v", 1, 0, NULL), SL_EINVAL);
    ck_assert_int_eq(etcd_put(c, "k", NULL, 3, 0, NULL), SL_EINVAL);
    ck_assert_int_eq(etcd_put(c, "k", "v", 1, -1, NULL), SL_EINVAL);
    ck_assert_int_eq(etcd_get(c, "", &kv), SL_EINVAL);
    ck_assert_int_eq(etcd_get(c, "k", NULL), SL_EINVAL);
    ck_assert_int_eq(etcd_range_prefix(c, NULL, 0, &r), SL_EINVAL);
    ck_assert_int_eq(etcd_range_prefix(c, "k", -1, &r), SL_EINVAL);
    ck_assert_int_eq(etcd_delete(c, "", NULL), SL_EINVAL);
    etcd_watch_t *w = NULL;
    ck_assert_int_eq(etcd_watch_prefix(c, "p", 0, NULL, NULL, &w), SL_EINVAL);
    ck_assert_int_eq(etcd_watch_prefix(c, NULL, 0, rec_fn, NULL, &w), SL_EINVAL);
    ck_assert_int_eq(etcd_watch_prefix(c, "p", -5, rec_fn, NULL, &w), SL_EINVAL);
    ck_assert_ptr_null(w);
    /* frees of NULL are no-ops */
    etcd_free(NULL);
    etcd_kv_free(NULL);
    etcd_range_result_free(NULL);
    etcd_watch_free(NULL);
    ck_assert_str_eq(etcd_url(c), g_etcd.url);
    etcd_free(c);
    /* trailing slash trimmed; SLUICE_ETCD used when the URL is NULL */
    char slash[96];
    snprintf(slash, sizeof slash, "%s/", g_etcd.url);
    c = open_client(slash);
    ck_assert_str_eq(etcd_url(c), g_etcd.url);
    ck_assert_int_eq(etcd_ping(c), 0);
    etcd_free(c);
    setenv("SLUICE_ETCD", g_etcd.url, 1);
    c = open_client(NULL);
    ck_assert_str_eq(etcd_url(c), g_etcd.url);
    etcd_free(c);
}
END_TEST

/* Over etcd's request cap (1.5 MiB) or the gateway's message cap (2 MiB). */
START_TEST(test_too_large) {
    set_prefix("big");
    etcd_t *c = open_client(g_etcd.url);
    size_t sizes[] = {1700u << 10, 2600u << 10};
    for (size_t i = 0; i < 2; i++) {
        char *v = malloc(sizes[i]);
        ck_assert_ptr_nonnull(v);
        memset(v, 'x', sizes[i]);
        ck_assert_int_eq(etcd_put(c, key("big"), v, sizes[i], 0, NULL), SL_ETOOBIG);
        free(v);
    }
    etcd_kv_t *kv;
    ck_assert_int_eq(etcd_get(c, key("big"), &kv), SL_ENOTFOUND);
    etcd_free(c);
}
END_TEST

START_TEST(test_unreachable_and_timeout) {
    /* nobody listens: SL_EUNAVAIL at once */
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", harness_free_port());
    etcd_t *c = open_client(url);
    long long t0 = harness_now_ms();
    int64_t id;
    ck_assert_int_eq(etcd_lease_grant(c, 5, &id, NULL), SL_EUNAVAIL);
    ck_assert_int_eq(etcd_put(c, "k", "v", 1, 0, NULL), SL_EUNAVAIL);
    ck_assert_int_eq(etcd_ping(c), SL_EUNAVAIL);
    ck_assert_int_lt(harness_now_ms() - t0, 1000);
    etcd_free(c);
    /* a listener that never answers: SL_ETIMEDOUT after the call timeout */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    ck_assert_int_eq(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(lfd, 4), 0);
    getsockname(lfd, (struct sockaddr *)&a, &len);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", ntohs(a.sin_port));
    ck_assert_int_eq(etcd_open(url, 300, &c), 0);
    t0 = harness_now_ms();
    ck_assert_int_eq(etcd_put(c, "k", "v", 1, 0, NULL), SL_ETIMEDOUT);
    long long took = harness_now_ms() - t0;
    ck_assert(took >= 250 && took < 2000);
    etcd_free(c);
    close(lfd);
}
END_TEST

START_TEST(test_watch_list_then_events) {
    set_prefix("watch");
    etcd_t *c = open_client(g_etcd.url);
    ck_assert_int_eq(etcd_put(c, key("a"), "1", 1, 0, NULL), 0);
    ck_assert_int_eq(etcd_put(c, key("b"), "2", 1, 0, NULL), 0);
    ck_assert_int_eq(etcd_put(c, "test/outside", "o", 1, 0, NULL), 0);
    recorder_t rec;
    rec_init(&rec);
    etcd_watch_t *w = NULL;
    ck_assert_int_eq(etcd_watch_prefix(c, g_prefix, 0, rec_fn, &rec, &w), 0);
    ck_assert(rec_wait(&rec, ETCD_WATCH_SYNCED, NULL, 1, 5000));
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_PUT, NULL), 2); /* the initial list */
    ck_assert_int_eq(rec.ev[0].type, ETCD_WATCH_PUT);
    ck_assert_str_eq(rec.ev[0].key, key("a"));
    ck_assert_str_eq(rec.ev[0].value, "1");
    ck_assert_int_eq(rec.ev[2].type, ETCD_WATCH_SYNCED);
    int64_t rev;
    ck_assert_int_eq(etcd_put(c, key("c"), "3", 1, 0, &rev), 0);
    ck_assert(rec_wait(&rec, ETCD_WATCH_PUT, key("c"), 1, 5000));
    ck_assert_int_eq(rec.ev[3].revision, rev);
    ck_assert_str_eq(rec.ev[3].value, "3");
    ck_assert_int_eq(etcd_put(c, "test/outside", "o2", 2, 0, NULL), 0); /* not ours */
    ck_assert_int_eq(etcd_delete(c, key("a"), NULL), 0);
    ck_assert(rec_wait(&rec, ETCD_WATCH_DELETE, key("a"), 1, 5000));
    ck_assert_int_eq(rec.ev[4].type, ETCD_WATCH_DELETE);
    ck_assert(rec.ev[4].has_value); /* prev_kv supplied the old value */
    ck_assert_str_eq(rec.ev[4].value, "1");
    /* lease expiry arrives as a DELETE too */
    int64_t id;
    ck_assert_int_eq(etcd_lease_grant(c, 1, &id, NULL), 0);
    ck_assert_int_eq(etcd_put(c, key("l"), "x", 1, id, NULL), 0);
    ck_assert(rec_wait(&rec, ETCD_WATCH_DELETE, key("l"), 1, 6000));
    ck_assert_int_eq(etcd_watch_connects(w), 1);
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_LOST, NULL), 0);
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_PUT, "test/outside"), 0);
    ck_assert_int_ge(etcd_watch_revision(w), rev);
    etcd_watch_free(w);
    /* no callback after free */
    int before = rec.n;
    ck_assert_int_eq(etcd_put(c, key("d"), "4", 1, 0, NULL), 0);
    harness_sleep_ms(200);
    ck_assert_int_eq(rec.n, before);
    etcd_delete_prefix(c, g_prefix, NULL);
    etcd_delete(c, "test/outside", NULL);
    etcd_free(c);
}
END_TEST

/* The watch's connection is cut while keys change; on reconnect it resumes at
 * the last revision + 1: every missed event arrives once, none twice. */
START_TEST(test_watch_resume_after_cut) {
    set_prefix("resume");
    proxy_t px;
    proxy_start(&px, g_etcd.port);
    char purl[64];
    snprintf(purl, sizeof purl, "http://127.0.0.1:%d", px.port);
    etcd_t *direct = open_client(g_etcd.url);
    etcd_t *via = open_client(purl);
    ck_assert_int_eq(etcd_put(direct, key("a"), "1", 1, 0, NULL), 0);
    recorder_t rec;
    rec_init(&rec);
    etcd_watch_t *w;
    ck_assert_int_eq(etcd_watch_prefix(via, g_prefix, 0, rec_fn, &rec, &w), 0);
    ck_assert(rec_wait(&rec, ETCD_WATCH_SYNCED, NULL, 1, 5000));
    atomic_store(&px.cut, true);
    ck_assert(rec_wait(&rec, ETCD_WATCH_LOST, NULL, 1, 5000));
    ck_assert_int_eq(etcd_put(direct, key("b"), "2", 1, 0, NULL), 0);
    ck_assert_int_eq(etcd_put(direct, key("a"), "1b", 2, 0, NULL), 0);
    ck_assert_int_eq(etcd_delete(direct, key("b"), NULL), 0);
    harness_sleep_ms(300);
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_PUT, key("b")), 0); /* really cut */
    atomic_store(&px.cut, false);
    ck_assert(rec_wait(&rec, ETCD_WATCH_DELETE, key("b"), 1, 5000));
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_PUT, key("b")), 1);
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_PUT, key("a")), 2); /* initial + update */
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_SYNCED, NULL), 1);  /* resumed, not re-listed */
    ck_assert_int_ge(etcd_watch_connects(w), 2);
    /* events come in revision order */
    for (int i = 1; i < rec.n; i++)
        if (rec.ev[i].type == ETCD_WATCH_PUT || rec.ev[i].type == ETCD_WATCH_DELETE)
            ck_assert_int_ge(rec.ev[i].revision, rec.ev[i - 1].revision);
    etcd_watch_free(w);
    proxy_stop(&px);
    etcd_delete_prefix(direct, g_prefix, NULL);
    etcd_free(via);
    etcd_free(direct);
}
END_TEST

static int64_t compact(const char *url, int64_t rev) {
    char cmd[256];
    snprintf(cmd, sizeof cmd,
             "curl -sf -m 3 -X POST -d '{\"revision\":\"%lld\",\"physical\":true}' "
             "%s/v3/kv/compaction >/dev/null",
             (long long)rev, url);
    return system(cmd);
}

/* Missed revisions compacted away: the watch re-lists and reports the
 * difference (a DELETE for a key that vanished meanwhile, PUTs for changes). */
START_TEST(test_watch_relist_after_compaction) {
    set_prefix("compact");
    proxy_t px;
    proxy_start(&px, g_etcd.port);
    char purl[64];
    snprintf(purl, sizeof purl, "http://127.0.0.1:%d", px.port);
    etcd_t *direct = open_client(g_etcd.url);
    etcd_t *via = open_client(purl);
    ck_assert_int_eq(etcd_put(direct, key("keep"), "k", 1, 0, NULL), 0);
    ck_assert_int_eq(etcd_put(direct, key("gone"), "g", 1, 0, NULL), 0);
    recorder_t rec;
    rec_init(&rec);
    etcd_watch_t *w;
    ck_assert_int_eq(etcd_watch_prefix(via, g_prefix, 0, rec_fn, &rec, &w), 0);
    ck_assert(rec_wait(&rec, ETCD_WATCH_SYNCED, NULL, 1, 5000));
    atomic_store(&px.cut, true);
    ck_assert(rec_wait(&rec, ETCD_WATCH_LOST, NULL, 1, 5000));
    int64_t rev;
    ck_assert_int_eq(etcd_delete(direct, key("gone"), NULL), 0);
    ck_assert_int_eq(etcd_put(direct, key("new"), "n", 1, 0, NULL), 0);
    ck_assert_int_eq(etcd_put(direct, key("new"), "n2", 2, 0, &rev), 0);
    ck_assert_int_eq(compact(g_etcd.url, rev), 0);
    atomic_store(&px.cut, false);
    ck_assert(rec_wait(&rec, ETCD_WATCH_SYNCED, NULL, 2, 8000));
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_DELETE, key("gone")), 1);
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_PUT, key("new")), 1);  /* only the final state */
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_PUT, key("keep")), 1); /* unchanged: no repeat */
    /* live again afterwards */
    ck_assert_int_eq(etcd_put(direct, key("after"), "a", 1, 0, NULL), 0);
    ck_assert(rec_wait(&rec, ETCD_WATCH_PUT, key("after"), 1, 5000));
    etcd_watch_free(w);

    /* start_revision below the compaction point: re-listed, never stuck */
    rec_init(&rec);
    ck_assert_int_eq(etcd_watch_prefix(direct, g_prefix, 1, rec_fn, &rec, &w), 0);
    ck_assert(rec_wait(&rec, ETCD_WATCH_SYNCED, NULL, 1, 5000));
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_PUT, NULL), 3);
    etcd_watch_free(w);
    proxy_stop(&px);
    etcd_delete_prefix(direct, g_prefix, NULL);
    etcd_free(via);
    etcd_free(direct);
}
END_TEST

/* etcd itself goes down and comes back (same data dir): the watch reports
 * LOST once, keeps its view, reconnects and resumes. */
START_TEST(test_watch_survives_etcd_restart) {
    harness_etcd_t e;
    ck_assert_int_eq(harness_etcd_start(&e), 0);
    set_prefix("restart");
    etcd_t *c = open_client(e.url);
    ck_assert_int_eq(etcd_put(c, key("a"), "1", 1, 0, NULL), 0);
    recorder_t rec;
    rec_init(&rec);
    etcd_watch_t *w;
    ck_assert_int_eq(etcd_watch_prefix(c, g_prefix, 0, rec_fn, &rec, &w), 0);
    ck_assert(rec_wait(&rec, ETCD_WATCH_SYNCED, NULL, 1, 5000));
    harness_etcd_stop(&e);
    ck_assert(rec_wait(&rec, ETCD_WATCH_LOST, NULL, 1, 5000));
    ck_assert_int_eq(etcd_put(c, key("x"), "v", 1, 0, NULL), SL_EUNAVAIL);
    harness_sleep_ms(1000);
    ck_assert_int_eq(harness_etcd_restart(&e), 0);
    ck_assert_int_eq(etcd_put(c, key("b"), "2", 1, 0, NULL), 0);
    ck_assert(rec_wait(&rec, ETCD_WATCH_PUT, key("b"), 1, 8000));
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_LOST, NULL), 1);
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_DELETE, NULL), 0); /* no invented removals */
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_PUT, key("a")), 1);
    ck_assert_int_eq(rec_count(&rec, ETCD_WATCH_PUT, key("b")), 1);
    ck_assert_int_ge(etcd_watch_connects(w), 2);
    etcd_watch_free(w);
    etcd_free(c);
    harness_etcd_destroy(&e);
}
END_TEST

/* A list of endpoints: a dead member is skipped, for calls and for watches. */
START_TEST(test_endpoint_list_failover) {
    set_prefix("eps");
    char list[256];
    int dead = harness_free_port();
    snprintf(list, sizeof list, "127.0.0.1:%d,%s/", dead, g_etcd.url);
    etcd_t *c = open_client(list);
    char want[256];
    snprintf(want, sizeof want, "http://127.0.0.1:%d,%s", dead, g_etcd.url);
    ck_assert_str_eq(etcd_url(c), want);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(etcd_put(c, key("k"), "v", 1, 0, NULL), 0);
    recorder_t rec;
    rec_init(&rec);
    etcd_watch_t *w;
    ck_assert_int_eq(etcd_watch_prefix(c, g_prefix, 0, rec_fn, &rec, &w), 0);
    ck_assert(rec_wait(&rec, ETCD_WATCH_SYNCED, NULL, 1, 5000));
    ck_assert_int_eq(etcd_put(c, key("k2"), "v", 1, 0, NULL), 0);
    ck_assert(rec_wait(&rec, ETCD_WATCH_PUT, key("k2"), 1, 5000));
    etcd_watch_free(w);
    ck_assert_int_eq(etcd_delete_prefix(c, g_prefix, NULL), 0);
    etcd_free(c);
    /* every member dead: unavailable; a bad member makes the list invalid */
    snprintf(list, sizeof list, "127.0.0.1:%d,127.0.0.1:%d", dead, harness_free_port());
    c = open_client(list);
    ck_assert_int_eq(etcd_ping(c), SL_EUNAVAIL);
    etcd_free(c);
    c = NULL;
    snprintf(list, sizeof list, "%s,,%s", g_etcd.url, g_etcd.url);
    ck_assert_int_eq(etcd_open(list, 0, &c), SL_EINVAL);
    snprintf(list, sizeof list, "%s,ftp://x", g_etcd.url);
    ck_assert_int_eq(etcd_open(list, 0, &c), SL_EINVAL);
    ck_assert_ptr_null(c);
}
END_TEST

/* Many threads share one client. */
typedef struct mt_arg {
    etcd_t *c;
    int id, errors;
} mt_arg_t;

static void *mt_main(void *p) {
    mt_arg_t *a = p;
    for (int i = 0; i < 50; i++) {
        char k[128], v[32];
        snprintf(k, sizeof k, "%st%d/%d", g_prefix, a->id, i);
        snprintf(v, sizeof v, "%d", i);
        etcd_kv_t *kv = NULL;
        if (etcd_put(a->c, k, v, strlen(v), 0, NULL) != 0 || etcd_get(a->c, k, &kv) != 0 ||
            strcmp(kv->value, v) != 0)
            a->errors++;
        etcd_kv_free(kv);
    }
    return NULL;
}

START_TEST(test_threads_share_client) {
    set_prefix("mt");
    etcd_t *c = open_client(g_etcd.url);
    pthread_t th[6];
    mt_arg_t args[6];
    for (int i = 0; i < 6; i++) {
        args[i] = (mt_arg_t){c, i, 0};
        pthread_create(&th[i], NULL, mt_main, &args[i]);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(args[i].errors, 0);
    }
    etcd_range_result_t r;
    ck_assert_int_eq(etcd_range_prefix(c, g_prefix, 0, &r), 0);
    ck_assert_uint_eq(r.n, 300);
    etcd_range_result_free(&r);
    int64_t n;
    ck_assert_int_eq(etcd_delete_prefix(c, g_prefix, &n), 0);
    ck_assert_int_eq(n, 300);
    etcd_free(c);
}
END_TEST

int main(void) {
    sl_log_init("test_etcd");
    if (harness_etcd_start(&g_etcd) != 0) {
        fprintf(stderr, "cannot start etcd\n");
        return 1;
    }
    Suite *s = suite_create("etcd");
    TCase *tc = tcase_create("kv");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_lease_lifecycle);
    tcase_add_test(tc, test_lease_expiry_deletes_keys);
    tcase_add_test(tc, test_put_get_range_delete);
    tcase_add_test(tc, test_put_with_lease_and_missing_lease);
    tcase_add_test(tc, test_txn_create_if_absent);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_unreachable_and_timeout);
    tcase_add_test(tc, test_too_large);
    tcase_add_test(tc, test_endpoint_list_failover);
    tcase_add_test(tc, test_threads_share_client);
    suite_add_tcase(s, tc);
    TCase *tw = tcase_create("watch");
    tcase_set_timeout(tw, 60);
    tcase_add_test(tw, test_watch_list_then_events);
    tcase_add_test(tw, test_watch_resume_after_cut);
    tcase_add_test(tw, test_watch_relist_after_compaction);
    tcase_add_test(tw, test_watch_survives_etcd_restart);
    suite_add_tcase(s, tw);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    harness_etcd_destroy(&g_etcd);
    return nf == 0 ? 0 : 1;
}
