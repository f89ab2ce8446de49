/* test_discovery.c - discovery with real etcd and real processes.
 *
 * The test binary doubles as the service under test: run with --child it
 * registers a "backend/generate" instance, watches "backend", and writes what
 * it sees to stdout (ADD/REMOVE/ID lines; a VIEW line on SIGUSR1); SIGTERM
 * makes it close cleanly (revoking its lease) and print BYE. The parent reads
 * the children's logs, kills them (-9 or TERM), and stops etcd under them.
 */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/discovery.h"
#include "common/runtime/etcd.h"
#include "common/runtime/signals.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define TTL_S 3

static harness_etcd_t g_etcd;
static char g_self[PATH_MAX];

/* ---- child mode ------------------------------------------------------------------ */

static void child_name(const discovery_instance_t *inst, char *out, size_t cap) {
    cJSON *j = cJSON_Parse(inst->json);
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "name");
    snprintf(out, cap, "%s", cJSON_IsString(n) ? n->valuestring : "?");
    cJSON_Delete(j);
}

static void child_add(const discovery_instance_t *inst, void *ud) {
    (void)ud;
    char name[64];
    child_name(inst, name, sizeof name);
    printf("ADD %s %016" PRIx64 "\n", name, (uint64_t)inst->instance_id);
}

static void child_remove(const discovery_instance_t *inst, void *ud) {
    (void)ud;
    char name[64];
    child_name(inst, name, sizeof name);
    printf("REMOVE %s %016" PRIx64 "\n", name, (uint64_t)inst->instance_id);
}

static void child_id(int64_t old_id, int64_t new_id, void *ud) {
    (void)ud;
    printf("ID %016" PRIx64 " %016" PRIx64 "\n", (uint64_t)old_id, (uint64_t)new_id);
}

static volatile sig_atomic_t child_usr1; /* SIGUSR1: print the view */

static void child_on_usr1(int signo) {
    (void)signo;
    child_usr1 = 1;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(a, b);
}

/* argv: --child ETCD_URL NAMESPACE NAME TTL */
static int child_main(int argc, char **argv) {
    if (argc < 6) return 2;
    signals_install();
    struct sigaction sa = {.sa_handler = child_on_usr1};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    sl_log_init(argv[4]);
    discovery_opts_t o = {.etcd_url = argv[2],
                          .ns = argv[3],
                          .ttl_s = (int)strtol(argv[5], NULL, 10),
                          .etcd_timeout_ms = 1000,
                          .on_instance_change = child_id};
    discovery_t *d = NULL;
    discovery_watch_t *w = NULL;
    int rc = discovery_open(&o, &d);
    if (rc != 0) {
        printf("OPEN %s\n", sl_strerror(rc));
        return 3;
    }
    char meta[128];
    snprintf(meta, sizeof meta, "{\"name\":\"%s\",\"model\":\"tiny\"}", argv[4]);
    rc = discovery_register(d, "backend", "generate", meta);
    printf("REG %d\n", rc);
    rc = discovery_watch(d, "backend", child_add, child_remove, NULL, &w);
    printf("WATCH %d\n", rc);
    for (;;) {
        if (signals_wait(200) > 0) break; /* SIGTERM / SIGINT: close cleanly */
        if (child_usr1) {
            child_usr1 = 0;
            discovery_instance_t *arr;
            size_t n;
            if (discovery_watch_snapshot(w, &arr, &n) == 0) {
                /* names sorted, so the parent can match "VIEW 2 a,b" */
                char names[16][64], line[1100] = "";
                size_t k = n < 16 ? n : 16, off = 0;
                for (size_t i = 0; i < k; i++) child_name(&arr[i], names[i], sizeof names[i]);
                qsort(names, k, sizeof names[0], name_cmp);
                for (size_t i = 0; i < k; i++)
                    off += (size_t)snprintf(line + off, sizeof line - off, "%s%s", i ? "," : "",
                                            names[i]);
                printf("VIEW %zu %s\n", n, line);
                discovery_instances_free(arr, n);
            }
        }
        if (getppid() == 1) break; /* the test went away */
    }
    discovery_watch_free(w);
    discovery_close(d);
    printf("BYE\n");
    return 0;
}

/* ---- parent helpers ----------------------------------------------------------------- */

typedef struct child {
    pid_t pid;
    char log[512];
} child_t;

static void child_spawn(child_t *c, const char *dir, const char *url, const char *ns,
                        const char *name) {
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", TTL_S);
    snprintf(c->log, sizeof c->log, "%s/%s.log", dir, name);
    char *argv[] = {g_self, "--child", (char *)url, (char *)ns, (char *)name, ttl, NULL};
    c->pid = harness_spawn(argv, NULL, c->log);
    ck_assert_int_gt(c->pid, 0);
}

/* Occurrences of needle in the child's log. */
static int log_count(const child_t *c, const char *needle) {
    FILE *f = fopen(c->log, "r");
    if (!f) return 0;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    int k = 0;
    for (const char *p = buf; (p = strstr(p, needle)); p += strlen(needle)) k++;
    return k;
}

static bool log_wait(const child_t *c, const char *needle, int want, int timeout_ms) {
    long long end = harness_now_ms() + timeout_ms;
    while (harness_now_ms() < end) {
        if (log_count(c, needle) >= want) return true;
        harness_sleep_ms(20);
    }
    return log_count(c, needle) >= want;
}

static void dump_log(const child_t *c) {
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "echo '--- %s'; tail -20 %s", c->log, c->log);
    if (system(cmd) != 0) {
    }
}

/* The parent's own view: names currently in a watch. */
typedef struct pview {
    pthread_mutex_t mu;
    int adds, removes;
    char last_removed[64];
    long long last_remove_ms;
} pview_t;

static void pv_add(const discovery_instance_t *inst, void *ud) {
    (void)inst;
    pview_t *v = ud;
    pthread_mutex_lock(&v->mu);
    v->adds++;
    pthread_mutex_unlock(&v->mu);
}

static void pv_remove(const discovery_instance_t *inst, void *ud) {
    pview_t *v = ud;
    pthread_mutex_lock(&v->mu);
    v->removes++;
    child_name(inst, v->last_removed, sizeof v->last_removed);
    v->last_remove_ms = harness_now_ms();
    pthread_mutex_unlock(&v->mu);
}

static size_t snapshot_count(discovery_watch_t *w) {
    discovery_instance_t *arr;
    size_t n;
    ck_assert_int_eq(discovery_watch_snapshot(w, &arr, &n), 0);
    discovery_instances_free(arr, n);
    return n;
}

static bool wait_count(discovery_watch_t *w, size_t want, int timeout_ms) {
    long long end = harness_now_ms() + timeout_ms;
    while (harness_now_ms() < end) {
        if (snapshot_count(w) == want) return true;
        harness_sleep_ms(20);
    }
    return snapshot_count(w) == want;
}

static void unique_ns(char *ns, size_t cap, const char *tag) {
    snprintf(ns, cap, "%s%d", tag, (int)getpid());
}

/* ---- tests --------------------------------------------------------------------------- */

/* Two processes find each other; kill -9 of one disappears within TTL + 2 s;
 * SIGTERM of the other disappears at once (its lease is revoked). */
START_TEST(test_two_processes_kill9_and_sigterm) {
    char dir[256], ns[64];
    ck_assert_int_eq(harness_mkdtemp("sluice-disc", dir, sizeof dir), 0);
    unique_ns(ns, sizeof ns, "two");
    child_t a, b;
    child_spawn(&a, dir, g_etcd.url, ns, "a");
    child_spawn(&b, dir, g_etcd.url, ns, "b");
    bool ok = log_wait(&a, "ADD b ", 1, 10000) && log_wait(&b, "ADD a ", 1, 10000) &&
              log_wait(&a, "ADD a ", 1, 1000) && log_wait(&b, "ADD b ", 1, 1000);
    if (!ok) dump_log(&a), dump_log(&b);
    ck_assert(ok);
    ck_assert_int_eq(log_count(&a, "REG 0"), 1);

    /* an observer in this process */
    discovery_opts_t o = {.etcd_url = g_etcd.url, .ns = ns, .ttl_s = TTL_S};
    discovery_t *d;
    ck_assert_int_eq(discovery_open(&o, &d), 0);
    pview_t pv = {.mu = PTHREAD_MUTEX_INITIALIZER};
    discovery_watch_t *w;
    ck_assert_int_eq(discovery_watch(d, "backend", pv_add, pv_remove, &pv, &w), 0);
    ck_assert(wait_count(w, 2, 5000));
    ck_assert(discovery_watch_synced(w));
    ck_assert_int_eq(pv.adds, 2);

    long long t0 = harness_now_ms();
    harness_kill(b.pid, SIGKILL, 1000);
    ck_assert(log_wait(&a, "REMOVE b ", 1, (TTL_S + 2) * 1000));
    long long took = harness_now_ms() - t0;
    ck_assert_msg(took <= (TTL_S + 2) * 1000, "kill -9 removal took %lld ms", took);
    ck_assert(wait_count(w, 1, 2000));

    t0 = harness_now_ms();
    int st = harness_kill(a.pid, SIGTERM, 5000);
    ck_assert(wait_count(w, 0, 2000));
    pthread_mutex_lock(&pv.mu);
    long long removed_after = pv.last_remove_ms - t0;
    ck_assert_str_eq(pv.last_removed, "a");
    pthread_mutex_unlock(&pv.mu);
    ck_assert_msg(removed_after < 1500, "SIGTERM removal took %lld ms", removed_after);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0); /* clean exit, no leaks under ASan */
    ck_assert_int_eq(log_count(&a, "BYE"), 1);
    discovery_watch_free(w);
    discovery_close(d);
    harness_rmtree(dir);
}
END_TEST

/* etcd stops for 15 s: both processes live on, report no removals, and are
 * registered and see each other again once it is back. */
START_TEST(test_etcd_outage_15s) {
    harness_etcd_t e;
    ck_assert_int_eq(harness_etcd_start(&e), 0);
    char dir[256], ns[64];
    ck_assert_int_eq(harness_mkdtemp("sluice-disc", dir, sizeof dir), 0);
    unique_ns(ns, sizeof ns, "outage");
    child_t a, b;
    child_spawn(&a, dir, e.url, ns, "a");
    child_spawn(&b, dir, e.url, ns, "b");
    ck_assert(log_wait(&a, "ADD b ", 1, 10000) && log_wait(&b, "ADD a ", 1, 10000));

    harness_etcd_stop(&e);
    long long end = harness_now_ms() + 15000;
    while (harness_now_ms() < end) {
        ck_assert(!harness_exited(a.pid, NULL));
        ck_assert(!harness_exited(b.pid, NULL));
        harness_sleep_ms(500);
    }
    ck_assert_int_eq(log_count(&a, "REMOVE"), 0); /* last view kept */
    ck_assert_int_eq(log_count(&b, "REMOVE"), 0);
    kill(a.pid, SIGUSR1);
    bool viewed = log_wait(&a, "VIEW 2 a,b", 1, 2000); /* snapshot served without etcd */
    if (!viewed) dump_log(&a);
    ck_assert(viewed);
    ck_assert_int_eq(harness_etcd_restart(&e), 0);

    /* both registered again (same lease if it survived, a new one if not) */
    etcd_t *c;
    ck_assert_int_eq(etcd_open(e.url, 2000, &c), 0);
    char prefix[128];
    snprintf(prefix, sizeof prefix, "sluice/v1/%s/backend/", ns);
    end = harness_now_ms() + 10000;
    size_t n = 0;
    while (harness_now_ms() < end) {
        etcd_range_result_t r;
        if (etcd_range_prefix(c, prefix, 0, &r) == 0) {
            n = r.n;
            etcd_range_result_free(&r);
            if (n == 2) break;
        }
        harness_sleep_ms(100);
    }
    ck_assert_uint_eq(n, 2);
    /* the registrations stay alive past a TTL (keep-alive resumed) */
    harness_sleep_ms(TTL_S * 1000 + 500);
    etcd_range_result_t r;
    ck_assert_int_eq(etcd_range_prefix(c, prefix, 0, &r), 0);
    ck_assert_uint_eq(r.n, 2);
    etcd_range_result_free(&r);
    /* and each sees the other */
    kill(a.pid, SIGUSR1);
    kill(b.pid, SIGUSR1);
    bool ok = log_wait(&a, "VIEW 2 a,b", 2, 3000) && log_wait(&b, "VIEW 2 a,b", 1, 3000);
    if (!ok) dump_log(&a), dump_log(&b);
    ck_assert(ok);
    ck_assert(!harness_exited(a.pid, NULL) && !harness_exited(b.pid, NULL));
    int sa = harness_kill(a.pid, SIGTERM, 5000), sb = harness_kill(b.pid, SIGTERM, 5000);
    ck_assert(WIFEXITED(sa) && WEXITSTATUS(sa) == 0);
    ck_assert(WIFEXITED(sb) && WEXITSTATUS(sb) == 0);
    etcd_free(c);
    harness_etcd_destroy(&e);
    harness_rmtree(dir);
}
END_TEST

typedef struct idlog {
    pthread_mutex_t mu;
    int64_t old_id[8], new_id[8];
    int visible[8]; /* records under new_id already in etcd at the call */
    int n;
    discovery_t *peek; /* another client's view, or NULL */
} idlog_t;

static void id_change(int64_t old_id, int64_t new_id, void *ud) {
    idlog_t *l = ud;
    int visible = -1;
    if (l->peek) {
        discovery_instance_t *arr = NULL;
        size_t n = 0;
        if (discovery_list(l->peek, NULL, &arr, &n) == 0) {
            visible = 0;
            for (size_t i = 0; i < n; i++) visible += arr[i].instance_id == new_id;
            discovery_instances_free(arr, n);
        }
    }
    pthread_mutex_lock(&l->mu);
    if (l->n < 8) {
        l->old_id[l->n] = old_id;
        l->new_id[l->n] = new_id;
        l->visible[l->n] = visible;
        l->n++;
    }
    pthread_mutex_unlock(&l->mu);
}

static bool id_wait(idlog_t *l, int want, int timeout_ms) {
    long long end = harness_now_ms() + timeout_ms;
    for (;;) {
        pthread_mutex_lock(&l->mu);
        int n = l->n;
        pthread_mutex_unlock(&l->mu);
        if (n >= want) return true;
        if (harness_now_ms() >= end) return false;
        harness_sleep_ms(20);
    }
}

/* The lease disappears behind the process's back: it registers again under a
 * NEW lease, says so through the callback, and peers see old out, new in. */
START_TEST(test_lost_lease_reregisters_new_id) {
    char ns[64];
    unique_ns(ns, sizeof ns, "relet");
    idlog_t ids = {.mu = PTHREAD_MUTEX_INITIALIZER};
    discovery_opts_t o = {.etcd_url = g_etcd.url,
                          .ns = ns,
                          .ttl_s = TTL_S,
                          .on_instance_change = id_change,
                          .ud = &ids};
    discovery_t *d, *obs, *peek;
    discovery_opts_t po = {.etcd_url = g_etcd.url, .ns = ns, .ttl_s = TTL_S};
    ck_assert_int_eq(discovery_open(&po, &peek), 0);
    ids.peek = peek; /* the callback runs before the records go up */
    ck_assert_int_eq(discovery_open(&o, &d), 0);
    ck_assert_int_eq(discovery_instance_id(d), 0);
    ck_assert_int_eq(discovery_register(d, "backend", "generate", NULL), 0);
    ck_assert_int_eq(discovery_register(d, "backend", "clear_kv", "{}"), 0);
    int64_t id1 = discovery_instance_id(d);
    ck_assert_int_gt(id1, 0);
    ck_assert(id_wait(&ids, 1, 100));
    ck_assert_int_eq(ids.old_id[0], 0);
    ck_assert_int_eq(ids.new_id[0], id1);
    ck_assert_int_eq(ids.visible[0], 0);

    discovery_opts_t oo = {.etcd_url = g_etcd.url, .ns = ns, .ttl_s = TTL_S};
    ck_assert_int_eq(discovery_open(&oo, &obs), 0);
    pview_t pv = {.mu = PTHREAD_MUTEX_INITIALIZER};
    discovery_watch_t *w;
    ck_assert_int_eq(discovery_watch(obs, NULL, pv_add, pv_remove, &pv, &w), 0);
    ck_assert(wait_count(w, 2, 5000));

    /* a record deleted by hand comes back under the same lease within ~TTL */
    char k1[256];
    snprintf(k1, sizeof k1, "sluice/v1/%s/backend/generate/%016" PRIx64, ns, (uint64_t)id1);
    ck_assert_int_eq(etcd_delete(discovery_etcd(obs), k1, NULL), 0);
    ck_assert(wait_count(w, 1, 2000));
    ck_assert(wait_count(w, 2, (TTL_S + 2) * 1000));
    ck_assert_int_eq(discovery_instance_id(d), id1);

    ck_assert_int_eq(etcd_lease_revoke(discovery_etcd(obs), id1), 0);
    ck_assert(id_wait(&ids, 2, (TTL_S + 2) * 1000));
    int64_t id2 = discovery_instance_id(d);
    ck_assert_int_eq(ids.old_id[1], id1);
    ck_assert_int_eq(ids.new_id[1], id2);
    ck_assert_int_eq(ids.visible[1], 0);
    ck_assert_int_ne(id2, id1);
    ck_assert(wait_count(w, 2, 3000));
    discovery_instance_t *arr;
    size_t n;
    ck_assert_int_eq(discovery_watch_snapshot(w, &arr, &n), 0);
    ck_assert_uint_eq(n, 2);
    for (size_t i = 0; i < n; i++) ck_assert_int_eq(arr[i].instance_id, id2);
    discovery_instances_free(arr, n);
    ck_assert_int_ge(pv.removes, 3); /* the hand deletion, then both old endpoints */

    discovery_close(d);
    ck_assert(wait_count(w, 0, 2000));
    discovery_watch_free(w);
    discovery_close(obs);
    discovery_close(peek);
}
END_TEST

/* Registering while etcd is down is kept and completed when it comes up. */
START_TEST(test_register_while_etcd_down) {
    harness_etcd_t e;
    ck_assert_int_eq(harness_etcd_start(&e), 0);
    harness_etcd_stop(&e);
    idlog_t ids = {.mu = PTHREAD_MUTEX_INITIALIZER};
    discovery_opts_t o = {.etcd_url = e.url,
                          .ns = "down",
                          .ttl_s = TTL_S,
                          .etcd_timeout_ms = 500,
                          .on_instance_change = id_change,
                          .ud = &ids};
    discovery_t *d;
    ck_assert_int_eq(discovery_open(&o, &d), 0);
    ck_assert_int_eq(discovery_register(d, "router", "route", "{\"mode\":\"kv\"}"), SL_EUNAVAIL);
    ck_assert_int_eq(discovery_instance_id(d), 0);
    discovery_instance_t *arr;
    size_t n;
    ck_assert_int_eq(discovery_list(d, NULL, &arr, &n), SL_EUNAVAIL);
    /* a watch can start while etcd is down too */
    pview_t pv = {.mu = PTHREAD_MUTEX_INITIALIZER};
    discovery_watch_t *w;
    ck_assert_int_eq(discovery_watch(d, "router", pv_add, pv_remove, &pv, &w), 0);
    ck_assert(!discovery_watch_synced(w));
    ck_assert_int_eq(harness_etcd_restart(&e), 0);
    ck_assert(id_wait(&ids, 1, 5000));
    ck_assert_int_gt(discovery_instance_id(d), 0);
    ck_assert(wait_count(w, 1, 5000));
    ck_assert_int_eq(discovery_list(d, "router", &arr, &n), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(arr[0].instance_id, discovery_instance_id(d));
    discovery_instances_free(arr, n);
    discovery_watch_free(w);
    discovery_close(d);
    harness_etcd_destroy(&e);
}
END_TEST

START_TEST(test_record_contents) {
    char ns[64];
    unique_ns(ns, sizeof ns, "rec");
    discovery_opts_t o = {.etcd_url = g_etcd.url, .ns = ns, .ttl_s = TTL_S};
    discovery_t *d;
    ck_assert_int_eq(discovery_open(&o, &d), 0);
    ck_assert_str_eq(discovery_namespace(d), ns);
    ck_assert_int_eq(
        discovery_register(d, "backend", "generate",
                           "{\"model\":\"llama\",\"block_size\":16,\"component\":\"evil\","
                           "\"ucx_address\":\"AAEC\"}"),
        0);
    ck_assert_int_eq(discovery_register(d, "backend", "generate", NULL), SL_EEXIST);
    int64_t id = discovery_instance_id(d);
    char hex[17], key[256], subject[256];
    snprintf(hex, sizeof hex, "%016" PRIx64, (uint64_t)id);
    snprintf(key, sizeof key, "sluice/v1/%s/backend/generate/%s", ns, hex);
    snprintf(subject, sizeof subject, "sluice.%s.backend.generate.%s", ns, hex);
    etcd_kv_t *kv;
    ck_assert_int_eq(etcd_get(discovery_etcd(d), key, &kv), 0);
    ck_assert_int_eq(kv->lease, id);
    cJSON *j = cJSON_Parse(kv->value);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "instance_id")->valuestring, hex);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "component")->valuestring, "backend"); /* ours won */
    ck_assert_str_eq(cJSON_GetObjectItem(j, "endpoint")->valuestring, "generate");
    ck_assert_str_eq(cJSON_GetObjectItem(j, "namespace")->valuestring, ns);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "subject")->valuestring, subject);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "model")->valuestring, "llama"); /* theirs merged */
    ck_assert_int_eq(cJSON_GetObjectItem(j, "block_size")->valueint, 16);
    ck_assert_int_eq(cJSON_GetObjectItem(j, "pid")->valueint, getpid());
    ck_assert(cJSON_IsString(cJSON_GetObjectItem(j, "host")));
    ck_assert(cJSON_IsString(cJSON_GetObjectItem(j, "version")));
    const char *started = cJSON_GetObjectItem(j, "started_at")->valuestring;
    ck_assert_uint_eq(strlen(started), 24); /* 2026-11-21T00:05:14.123Z */
    ck_assert_int_eq(started[10], 'T');
    cJSON_Delete(j);
    discovery_instance_t inst;
    ck_assert_int_eq(discovery_instance_parse(kv->key, kv->value, kv->value_len, &inst), 0);
    ck_assert_int_eq(inst.instance_id, id);
    ck_assert_str_eq(inst.subject, subject);
    ck_assert_str_eq(inst.component, "backend");
    ck_assert_int_eq(inst.pid, getpid());
    discovery_instance_clear(&inst);
    etcd_kv_free(kv);
    discovery_instance_t *arr;
    size_t n;
    ck_assert_int_eq(discovery_list(d, "backend", &arr, &n), 0);
    ck_assert_uint_eq(n, 1);
    discovery_instances_free(arr, n);
    ck_assert_int_eq(discovery_list(d, "router", &arr, &n), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(arr);
    /* a foreign, invalid record under our prefix is skipped, not fatal */
    char bad[256];
    snprintf(bad, sizeof bad, "sluice/v1/%s/backend/generate/00000000000000ff", ns);
    ck_assert_int_eq(etcd_put(discovery_etcd(d), bad, "{\"instance_id\":\"x\"}", 18, 0, NULL), 0);
    ck_assert_int_eq(discovery_list(d, NULL, &arr, &n), 0);
    ck_assert_uint_eq(n, 1);
    discovery_instances_free(arr, n);
    etcd_delete(discovery_etcd(d), bad, NULL);
    discovery_close(d);
}
END_TEST

START_TEST(test_bad_input) {
    discovery_t *d = NULL;
    discovery_opts_t o = {.etcd_url = g_etcd.url, .ns = "bad/ns"};
    ck_assert_int_eq(discovery_open(&o, &d), SL_EINVAL);
    o.ns = "ok";
    o.ttl_s = -1;
    ck_assert_int_eq(discovery_open(&o, &d), SL_EINVAL);
    o.ttl_s = 100000;
    ck_assert_int_eq(discovery_open(&o, &d), SL_EINVAL);
    o.ttl_s = 0;
    o.etcd_url = "not a url";
    ck_assert_int_eq(discovery_open(&o, &d), SL_EINVAL);
    ck_assert_ptr_null(d);
    ck_assert_int_eq(discovery_open(&o, NULL), SL_EINVAL);
    o.etcd_url = g_etcd.url;
    ck_assert_int_eq(discovery_open(&o, &d), 0);
    ck_assert_int_eq(discovery_register(d, "", "x", NULL), SL_EINVAL);
    ck_assert_int_eq(discovery_register(d, "a.b", "x", NULL), SL_EINVAL);
    ck_assert_int_eq(discovery_register(d, "a", "x/y", NULL), SL_EINVAL);
    char longname[80];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    ck_assert_int_eq(discovery_register(d, longname, "x", NULL), SL_EINVAL);
    ck_assert_int_eq(discovery_register(d, "a", "x", "[1,2]"), SL_EINVAL);
    ck_assert_int_eq(discovery_register(d, "a", "x", "{\"unterminated\":"), SL_EINVAL);
    ck_assert_int_eq(discovery_instance_id(d), 0); /* nothing registered, no lease */
    discovery_watch_t *w = NULL;
    ck_assert_int_eq(discovery_watch(d, "bad name", NULL, NULL, NULL, &w), SL_EINVAL);
    ck_assert_ptr_null(w);
    discovery_close(d);
    discovery_close(NULL);
    discovery_watch_free(NULL);
    discovery_instances_free(NULL, 0);
    discovery_instance_clear(NULL);
}
END_TEST

START_TEST(test_parse_rejects_malformed_records) {
    const char *good_key = "sluice/v1/ns/backend/gen/00000000000000ab";
    const char *good =
        "{\"instance_id\":\"00000000000000ab\",\"component\":\"backend\","
        "\"endpoint\":\"gen\",\"subject\":\"sluice.ns.backend.gen.00000000000000ab\","
        "\"host\":\"h\",\"pid\":42}";
    discovery_instance_t inst;
    ck_assert_int_eq(discovery_instance_parse(good_key, good, strlen(good), &inst), 0);
    ck_assert_int_eq(inst.instance_id, 0xab);
    ck_assert_int_eq(inst.pid, 42);
    ck_assert_str_eq(inst.host, "h");
    discovery_instance_clear(&inst);
    static const char *bad_keys[] = {
        "sluice/v2/ns/backend/gen/00000000000000ab",
        "other/v1/ns/backend/gen/00000000000000ab",
        "sluice/v1/ns/backend/00000000000000ab",
        "sluice/v1/ns/backend/gen/extra/00000000000000ab",
        "sluice/v1/ns/backend/gen/00000000000000AB",
        "sluice/v1/ns/backend/gen/abc",
        "sluice/v1/ns/backend/gen/0000000000000000",
        "sluice/v1/ns/backend/gen/ffffffffffffffff",
        "sluice/v1/ns/back end/gen/00000000000000ab",
        "sluice/v1//backend/gen/00000000000000ab",
        "sluice/v1/ns/backend/gen/00000000000000ab/",
        "",
    };
    for (size_t i = 0; i < sizeof bad_keys / sizeof *bad_keys; i++)
        ck_assert_msg(discovery_instance_parse(bad_keys[i], good, strlen(good), &inst) == SL_EINVAL,
                      "accepted key %s", bad_keys[i]);
    static const char *bad_vals[] = {
        "",
        "not json",
        "[]",
        "{\"instance_id\":\"00000000000000ac\",\"component\":\"backend\",\"endpoint\":\"gen\","
        "\"subject\":\"s\"}", /* id differs from the key */
        "{\"instance_id\":\"00000000000000ab\",\"component\":\"router\",\"endpoint\":\"gen\","
        "\"subject\":\"s\"}", /* component differs */
        "{\"instance_id\":\"00000000000000ab\",\"component\":\"backend\",\"endpoint\":\"gen\"}",
        "{\"instance_id\":\"00000000000000ab\",\"component\":\"backend\",\"endpoint\":\"gen\","
        "\"subject\":\"s\",\"pid\":\"12\"}", /* pid of the wrong type */
        "{\"instance_id\":171,\"component\":\"backend\",\"endpoint\":\"gen\",\"subject\":\"s\"}",
    };
    for (size_t i = 0; i < sizeof bad_vals / sizeof *bad_vals; i++)
        ck_assert_msg(discovery_instance_parse(good_key, bad_vals[i], strlen(bad_vals[i]), &inst) ==
                          SL_EINVAL,
                      "accepted value %s", bad_vals[i]);
    ck_assert_int_eq(discovery_instance_parse(NULL, good, strlen(good), &inst), SL_EINVAL);
    ck_assert_int_eq(discovery_instance_parse(good_key, good, strlen(good), NULL), SL_EINVAL);
    /* trailing bytes after the object are rejected, trailing whitespace is not */
    char trail[512];
    snprintf(trail, sizeof trail, "%s}x", good);
    ck_assert_int_eq(discovery_instance_parse(good_key, trail, strlen(trail), &inst), SL_EINVAL);
    snprintf(trail, sizeof trail, "%s\n ", good);
    ck_assert_int_eq(discovery_instance_parse(good_key, trail, strlen(trail), &inst), 0);
    discovery_instance_clear(&inst);
    /* a value cut short is rejected, not read past */
    ck_assert_int_eq(discovery_instance_parse(good_key, good, strlen(good) - 1, &inst), SL_EINVAL);
}
END_TEST

/* Random byte mutations of a valid key and record never crash the parser, and
 * whatever it accepts is self-consistent. */
START_TEST(test_parse_mutations) {
    const char *key0 = "sluice/v1/ns/backend/gen/00000000000000ab";
    const char *val0 =
        "{\"instance_id\":\"00000000000000ab\",\"component\":\"backend\","
        "\"endpoint\":\"gen\",\"subject\":\"sluice.ns.backend.gen.00000000000000ab\","
        "\"host\":\"h\",\"pid\":42,\"model\":\"m\"}";
    unsigned seed = 99;
    int ok = 0;
    for (int iter = 0; iter < 20000; iter++) {
        char key[64], val[256];
        size_t kn = strlen(key0), vn = strlen(val0);
        memcpy(key, key0, kn + 1);
        memcpy(val, val0, vn + 1);
        int muts = 1 + (int)(rand_r(&seed) % 3);
        for (int m = 0; m < muts; m++) {
            if (rand_r(&seed) % 4 == 0)
                key[rand_r(&seed) % kn] = (char)(rand_r(&seed) % 256 ?: 1);
            else
                val[rand_r(&seed) % vn] = (char)(rand_r(&seed) % 256);
        }
        if (rand_r(&seed) % 8 == 0) vn = rand_r(&seed) % vn; /* truncated */
        discovery_instance_t inst;
        if (discovery_instance_parse(key, val, vn, &inst) != 0) continue;
        ok++;
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, (uint64_t)inst.instance_id);
        ck_assert_ptr_nonnull(strstr(inst.key, hex));
        ck_assert_ptr_nonnull(strstr(inst.key, inst.component));
        ck_assert_uint_eq(strlen(inst.json), strnlen(val, vn));
        discovery_instance_clear(&inst);
    }
    ck_assert_int_gt(ok, 0); /* harmless mutations (e.g. in "model") still parse */
}
END_TEST

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--child") == 0) return child_main(argc, argv);
    ssize_t n = readlink("/proc/self/exe", g_self, sizeof g_self - 1);
    if (n <= 0) return 1;
    g_self[n] = 0;
    sl_log_init("test_discovery");
    if (harness_etcd_start(&g_etcd) != 0) {
        fprintf(stderr, "cannot start etcd\n");
        return 1;
    }
    Suite *s = suite_create("discovery");
    TCase *tc = tcase_create("inproc");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_parse_rejects_malformed_records);
    tcase_add_test(tc, test_parse_mutations);
    tcase_add_test(tc, test_record_contents);
    tcase_add_test(tc, test_lost_lease_reregisters_new_id);
    tcase_add_test(tc, test_register_while_etcd_down);
    suite_add_tcase(s, tc);
    TCase *tp = tcase_create("processes");
    tcase_set_timeout(tp, 60);
    tcase_add_test(tp, test_two_processes_kill9_and_sigterm);
    tcase_add_test(tp, test_etcd_outage_15s);
    suite_add_tcase(s, tp);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    harness_etcd_destroy(&g_etcd);
    return nf == 0 ? 0 : 1;
}
