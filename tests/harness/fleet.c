/* fleet.c - Sluice services for integration tests (see fleet.h). */
#include "tests/harness/fleet.h"

#include "common/runtime/discovery.h"
#include "tests/harness/harness.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* argv under construction: strings are copied into one arena so callers'
 * numbers can be formatted into temporaries. */
typedef struct fleet_argv {
    char *v[48];
    int n;
    char arena[4096];
    size_t used;
} fleet_argv_t;

static void arg(fleet_argv_t *a, const char *s) {
    size_t l = strlen(s) + 1;
    if (a->n >= (int)(sizeof a->v / sizeof a->v[0]) - 1 || a->used + l > sizeof a->arena) return;
    memcpy(a->arena + a->used, s, l);
    a->v[a->n++] = a->arena + a->used;
    a->v[a->n] = NULL;
    a->used += l;
}

static void arg2(fleet_argv_t *a, const char *flag, const char *val) {
    arg(a, flag);
    arg(a, val);
}

static void arg_int(fleet_argv_t *a, const char *flag, long v) {
    char b[32];
    snprintf(b, sizeof b, "%ld", v);
    arg2(a, flag, b);
}

static void arg_env(fleet_argv_t *a, const char *bin, const fleet_env_t *env) {
    arg(a, bin);
    arg2(a, "--namespace", env->ns);
    arg2(a, "--etcd", env->etcd);
    arg2(a, "--nats", env->nats);
}

pid_t fleet_worker_spawn(const fleet_env_t *env, const fleet_worker_opts_t *o) {
    if (!env || !o || !o->model) return -1;
    fleet_argv_t a = {0};
    arg_env(&a, o->bin ? o->bin : "sluice-decode-worker", env);
    arg2(&a, "--model", o->model);
    arg_int(&a, "--system-port", o->system_port);
    arg2(&a, "--threads", "1");
    if (o->mocker) {
        arg2(&a, "--engine", "mocker");
        if (o->mocker_params) arg2(&a, "--mocker-params", o->mocker_params);
        if (o->kv_blocks > 0) arg_int(&a, "--kv-blocks", o->kv_blocks);
    } else {
        arg_int(&a, "--kv-blocks", o->kv_blocks > 0 ? o->kv_blocks : 256);
    }
    if (o->lease_ttl_s > 0) arg_int(&a, "--lease-ttl", o->lease_ttl_s);
    if (o->extra) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", o->extra);
        for (char *q = buf; *q;) {
            char *t = q;
            while (*q && *q != ' ') q++;
            if (*q) *q++ = 0;
            if (*t) arg(&a, t);
        }
    }
    return harness_spawn(a.v, o->env, o->log);
}

int fleet_proc_start(fleet_proc_t *p, const fleet_env_t *env, fleet_worker_opts_t o,
                     const char *component, int timeout_ms) {
    memset(p, 0, sizeof *p);
    p->port = harness_free_port();
    snprintf(p->base, sizeof p->base, "http://127.0.0.1:%d", p->port);
    o.system_port = p->port;
    pid_t pid = fleet_worker_spawn(env, &o);
    if (pid <= 0) return -1;
    p->pid = pid;
    p->id = fleet_wait_registered(env, component, pid, p->subject, sizeof p->subject, timeout_ms);
    return p->id ? 0 : -1;
}

int64_t fleet_wait_registered(const fleet_env_t *env, const char *component, pid_t pid,
                              char *subject, size_t subject_len, int timeout_ms) {
    return fleet_wait_registered_json(env, component, pid, subject, subject_len, NULL, 0,
                                      timeout_ms);
}

int64_t fleet_wait_registered_json(const fleet_env_t *env, const char *component, pid_t pid,
                                   char *subject, size_t subject_len, char *json, size_t json_len,
                                   int timeout_ms) {
    discovery_opts_t o = {.etcd_url = env->etcd, .ns = env->ns};
    discovery_t *d = NULL;
    int64_t id = 0;
    if (discovery_open(&o, &d) != 0) return 0;
    long long end = harness_now_ms() + timeout_ms;
    while (!id && harness_now_ms() < end) {
        discovery_instance_t *arr = NULL;
        size_t n = 0;
        if (discovery_list(d, component, &arr, &n) == 0) {
            for (size_t i = 0; i < n; i++) {
                if (pid && arr[i].pid != pid) continue;
                id = arr[i].instance_id;
                if (subject && subject_len) snprintf(subject, subject_len, "%s", arr[i].subject);
                if (json && json_len) snprintf(json, json_len, "%s", arr[i].json);
            }
            discovery_instances_free(arr, n);
        }
        if (!id) harness_sleep_ms(30);
    }
    discovery_close(d);
    return id;
}

pid_t fleet_router_spawn(const fleet_env_t *env, const fleet_router_opts_t *o) {
    if (!env || !o) return -1;
    fleet_argv_t a = {0};
    arg_env(&a, "sluice-router", env);
    arg_int(&a, "--system-port", o->system_port);
    if (o->mode) arg2(&a, "--mode", o->mode);
    if (o->active_ttl) arg2(&a, "--active-ttl", o->active_ttl);
    return harness_spawn(a.v, NULL, o->log);
}

pid_t fleet_frontend_spawn(const fleet_env_t *env, const fleet_frontend_opts_t *o) {
    if (!env || !o || !o->model || o->port <= 0) return -1;
    fleet_argv_t a = {0};
    arg_env(&a, "sluice-frontend", env);
    arg2(&a, "--model-path", o->model);
    arg_int(&a, "--port", o->port);
    arg2(&a, "--host", "127.0.0.1");
    arg2(&a, "--stream-timeout", o->stream_timeout ? o->stream_timeout : "2s");
    arg_int(&a, "--http-threads", o->http_threads > 0 ? o->http_threads : 200);
    if (o->http_reserve_threads > 0) arg_int(&a, "--http-reserve-threads", o->http_reserve_threads);
    if (o->router_mode) arg2(&a, "--router-mode", o->router_mode);
    if (o->router_timeout) arg2(&a, "--router-timeout", o->router_timeout);
    if (o->api_key) arg2(&a, "--api-key", o->api_key);
    if (o->max_attempts > 0) arg_int(&a, "--max-attempts", o->max_attempts);
    return harness_spawn(a.v, NULL, o->log);
}

int fleet_genmodel(const char *dir, const char *name, char *out, size_t len) {
    const char *bd = getenv("SLUICE_BENCH_DIR");
    char cmd[2048];
    if ((size_t)snprintf(out, len, "%s/%s", dir, name) >= len) return -1;
    snprintf(cmd, sizeof cmd,
             "%s/genmodel --arch llama --dtype f32 --layers 2 --hidden 64 --heads 4 --kv-heads 2 "
             "--intermediate 128 --vocab 512 --std 0.1 --seed 5 --out %s >/dev/null",
             bd && *bd ? bd : "build/bench", out);
    return system(cmd) == 0 ? 0 : -1;
}

int fleet_mocker_params_write(const char *path, double decode_s, double prefill_per_token_s) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f,
            "{\"prefill_a\":0,\"prefill_b\":%.9f,\"prefill_c\":0,\"decode_d\":%.9f,"
            "\"decode_e\":0,\"decode_g\":0,\"speedup\":1}\n",
            prefill_per_token_s, decode_s);
    return fclose(f) == 0 ? 0 : -1;
}

typedef struct fleet_body {
    char *p;
    size_t n;
} fleet_body_t;

static size_t on_body(char *p, size_t sz, size_t nm, void *ud) {
    fleet_body_t *b = ud;
    size_t n = sz * nm;
    char *np = realloc(b->p, b->n + n + 1);
    if (!np) return 0;
    b->p = np;
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
    return n;
}

long fleet_http(const char *base, const char *path, const char *body, int timeout_ms, char **out) {
    char url[512];
    fleet_body_t b = {0};
    long status = 0;
    if (out) *out = NULL;
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (!c || !h) goto out;
    snprintf(url, sizeof url, "%s%s", base, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(timeout_ms > 0 ? timeout_ms : 30000));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body) curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
out:
    curl_slist_free_all(h);
    if (c) curl_easy_cleanup(c);
    if (out)
        *out = b.p ? b.p : calloc(1, 1);
    else
        free(b.p);
    return status;
}

double fleet_metric(const char *base, const char *name) {
    char *body = NULL;
    double v = -1;
    if (fleet_http(base, "/metrics", NULL, 5000, &body) == 200) {
        size_t nl = strlen(name);
        for (const char *p = body; (p = strstr(p, name)); p += nl) {
            if ((p == body || p[-1] == '\n') && (p[nl] == ' ' || p[nl] == '{')) {
                const char *sp = strchr(p, ' ');
                if (sp) v = strtod(sp + 1, NULL);
                break;
            }
        }
    }
    free(body);
    return v;
}

bool fleet_wait_healthy(const char *base, const char *needle, int timeout_ms) {
    long long end = harness_now_ms() + timeout_ms;
    for (;;) {
        char *body = NULL;
        bool ok = fleet_http(base, "/health", NULL, 2000, &body) == 200 &&
                  (!needle || strstr(body, needle));
        free(body);
        if (ok) return true;
        if (harness_now_ms() >= end) return false;
        harness_sleep_ms(50);
    }
}

static bool cmp(double v, char op, double want) {
    switch (op) {
    case '=':
        return v == want;
    case '>':
        return v > want;
    case '<':
        return v < want;
    default:
        return v >= want;
    }
}

double fleet_wait_metric(const char *base, const char *name, char op, double value,
                         int timeout_ms) {
    long long end = harness_now_ms() + timeout_ms;
    for (;;) {
        double v = fleet_metric(base, name);
        if (cmp(v, op, value) || harness_now_ms() >= end) return v;
        harness_sleep_ms(20);
    }
}

int fleet_fixture_start(const char *prefix, char *dir, size_t dir_len, char *model,
                        size_t model_len, harness_etcd_t *etcd, harness_nats_t *nats) {
    if (harness_mkdtemp(prefix, dir, dir_len) != 0) return -1;
    if (fleet_genmodel(dir, "tiny", model, model_len) != 0) {
        fprintf(stderr, "fixture: genmodel failed\n");
        return -1;
    }
    if (harness_etcd_start(etcd) != 0 || harness_nats_start(nats, 0) != 0) {
        fprintf(stderr, "fixture: servers did not start\n");
        return -1;
    }
    return 0;
}

void fleet_fixture_stop(const char *dir, harness_etcd_t *etcd, harness_nats_t *nats) {
    harness_nats_destroy(nats);
    harness_etcd_destroy(etcd);
    if (dir[0] && !getenv("SLUICE_KEEP_TMP")) harness_rmtree(dir);
}
