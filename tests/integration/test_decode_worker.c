/* test_decode_worker.c - sluice-decode-worker against real nats-server and
 * etcd, on a tiny random Llama written by build/bench/genmodel.
 *
 * One worker (namespace "dw") serves most tests; drain and kill -9 get their
 * own. Checked: registration metadata; greedy tokens and logprobs over the
 * bus equal the engine API's on the same model; 16 concurrent streams stay
 * untangled; stop strings; migration (prior_output_ids); cancellation frees
 * blocks (LoadMetrics); KV events with contiguous ids and the seq hashes of
 * the prompt, resync dump and ring replay; error chunks (prompt too long,
 * bad token id, wrong model); malformed bytes counted, worker alive;
 * /metrics and /health; SIGTERM drains (deregisters, 503 for new requests,
 * finishes the in-flight one, exit 0); kill -9 leaves no registration after
 * the lease TTL.
 */
#include "common/base/block_hash.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/engine/engine.h"
#include "common/engine/model.h"
#include "common/engine/mocker.h"
#include "common/runtime/bus.h"
#include "common/runtime/discovery.h"
#include "common/runtime/kv_events.h"
#include "proto/sluice.pb-c.h"
#include "tests/harness/fleet.h"
#include "tests/harness/harness.h"

#include <arpa/inet.h>
#include <check.h>
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define NS        "dw"
#define KV_BLOCKS 256
#define VOCAB     512

static harness_etcd_t g_etcd;
static harness_nats_t g_nats;
static char g_dir[256], g_model[512];
static pid_t g_worker;
static int g_sys_port;
static int64_t g_id;
static char g_subject[BUS_SUBJECT_MAX];
static bool g_ok;

/* ---- helpers ------------------------------------------------------------------- */

static pid_t worker_spawn(const char *ns, int sys_port, const char *extra, const char *log) {
    char port[16], *argv[32];
    int n = 0;
    snprintf(port, sizeof port, "%d", sys_port);
    argv[n++] = "sluice-decode-worker";
    argv[n++] = "--model";
    argv[n++] = g_model;
    argv[n++] = "--namespace";
    argv[n++] = (char *)ns;
    argv[n++] = "--etcd";
    argv[n++] = g_etcd.url;
    argv[n++] = "--nats";
    argv[n++] = g_nats.url;
    argv[n++] = "--kv-blocks";
    argv[n++] = "256";
    argv[n++] = "--threads";
    argv[n++] = "1";
    argv[n++] = "--system-port";
    argv[n++] = port;
    static char extra_buf[256];
    if (extra) { /* space-separated extra arguments */
        snprintf(extra_buf, sizeof extra_buf, "%s", extra);
        char *q = extra_buf;
        while (*q && n < 30) {
            argv[n++] = q;
            while (*q && *q != ' ') q++;
            if (*q) *q++ = 0;
        }
    }
    argv[n] = NULL;
    return harness_spawn(argv, NULL, log);
}

/* Waits for a backend instance in ns (optionally with pid); returns its id and
 * subject (BUS_SUBJECT_MAX bytes) and JSON, 0 on timeout. */
static int64_t wait_registered(const char *ns, pid_t pid, char *subject, char *json, size_t jlen,
                               int timeout_ms) {
    fleet_env_t env = {.ns = ns, .etcd = g_etcd.url, .nats = g_nats.url};
    return fleet_wait_registered_json(&env, "backend", pid, subject, subject ? BUS_SUBJECT_MAX : 0,
                                      json, jlen, timeout_ms);
}

static size_t count_registered(const char *ns) {
    discovery_opts_t o = {.etcd_url = g_etcd.url, .ns = ns};
    discovery_t *d = NULL;
    size_t n = 0;
    discovery_instance_t *arr = NULL;
    ck_assert_int_eq(discovery_open(&o, &d), 0);
    if (discovery_list(d, "backend", &arr, &n) != 0) n = 999;
    discovery_instances_free(arr, n == 999 ? 0 : n);
    discovery_close(d);
    return n;
}

static bus_t *bus_open(void) {
    bus_t *b = NULL;
    bus_opts_t o = {.url = g_nats.url, .name = "test-decode-worker"};
    ck_assert_int_eq(bus_connect(&b, &o), 0);
    return b;
}

/* Plain HTTP GET on 127.0.0.1:port; returns the status, body into buf. */
static int http_get(int port, const char *path, char *buf, size_t len) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    char req[256];
    int n =
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    size_t got = 0;
    ssize_t k;
    while (got + 1 < len && (k = read(fd, buf + got, len - got - 1)) > 0) got += (size_t)k;
    buf[got] = 0;
    close(fd);
    int status = -1;
    sscanf(buf, "HTTP/1.%*d %d", &status);
    return status;
}

/* Value of an unlabelled metric line "name value" in a /metrics page. */
static double metric_value(const char *page, const char *name) {
    char pat[256];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(page, pat);
    return p ? strtod(p + strlen(pat), NULL) : -1;
}

static double metric_now(const char *name) {
    static char page[1 << 17];
    if (http_get(g_sys_port, "/metrics", page, sizeof page) != 200) return -1;
    return metric_value(page, name);
}

/* ---- requests -------------------------------------------------------------------- */

typedef struct result {
    uint32_t ids[4096];
    float lps[4096];
    uint32_t n;
    char text[16384];
    size_t text_len;
    int finish;
    uint32_t prompt_tokens, completion_tokens, cached_tokens;
    int err_code;
    uint32_t http;
    char err_msg[256], stop_reason[64];
    int rc; /* stream error */
    uint32_t n_chunks;
    uint32_t n_top; /* top logprobs of the first position */
} result_t;

typedef struct gen_args {
    const char *id;
    const uint32_t *prompt;
    size_t n_prompt;
    const uint32_t *prior;
    size_t n_prior;
    uint32_t max_tokens;
    bool ignore_eos;
    const char *stop;
    uint32_t top_logprobs;
    const char *model;
    uint64_t deadline_unix_ms;
    float temperature;
    uint32_t n_stops; /* > 1: that many copies of stop */
} gen_args_t;

static int gen_open(bus_t *b, const char *subject, const gen_args_t *a, bus_stream_t **s) {
    Sluice__V1__GenerateRequest m = SLUICE__V1__GENERATE_REQUEST__INIT;
    Sluice__V1__SamplingParams sp = SLUICE__V1__SAMPLING_PARAMS__INIT;
    Sluice__V1__StopConditions sc = SLUICE__V1__STOP_CONDITIONS__INIT;
    char *stops[64];
    for (int i = 0; i < 64; i++) stops[i] = (char *)a->stop;
    m.version = 1;
    m.request_id = (char *)a->id;
    m.model = (char *)(a->model ? a->model : "");
    m.n_token_ids = a->n_prompt;
    m.token_ids = (uint32_t *)a->prompt;
    m.n_prior_output_ids = a->n_prior;
    m.prior_output_ids = (uint32_t *)a->prior;
    m.deadline_unix_ms = a->deadline_unix_ms;
    sp.logprobs = 1;
    sp.top_logprobs = a->top_logprobs;
    sp.temperature = a->temperature;
    m.sampling = &sp;
    sc.max_tokens = a->max_tokens;
    sc.ignore_eos = a->ignore_eos;
    if (a->stop) {
        sc.n_stop = a->n_stops > 1 ? (a->n_stops < 64 ? a->n_stops : 64) : 1;
        sc.stop = stops;
    }
    m.stop = &sc;
    bus_stream_opts_t so = {.idle_timeout_ms = 20000};
    return bus_stream_open_proto(b, subject, &m.base, &so, s);
}

/* Reads a whole stream into r, checking chunk seq numbers. */
static void gen_collect(bus_stream_t *s, result_t *r) {
    memset(r, 0, sizeof *r);
    for (;;) {
        Sluice__V1__GenerateChunk *c = NULL;
        bool last = false;
        int rc = bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor,
                                       (ProtobufCMessage **)&c, &last);
        if (rc) {
            r->rc = rc;
            return;
        }
        ck_assert_uint_eq(c->seq, r->n_chunks);
        r->n_chunks++;
        for (size_t i = 0; i < c->n_token_ids && r->n < 4096; i++) {
            r->lps[r->n] = i < c->n_logprobs ? c->logprobs[i]->chosen->logprob : NAN;
            if (r->n == 0 && i < c->n_logprobs) r->n_top = (uint32_t)c->logprobs[i]->n_top;
            r->ids[r->n++] = c->token_ids[i];
        }
        size_t tl = strlen(c->text);
        if (r->text_len + tl < sizeof r->text) {
            memcpy(r->text + r->text_len, c->text, tl);
            r->text_len += tl;
            r->text[r->text_len] = 0;
        }
        if (last) {
            ck_assert_int_ne(c->finish_reason, 0);
            r->finish = c->finish_reason;
            r->prompt_tokens = c->prompt_tokens;
            r->completion_tokens = c->completion_tokens;
            r->cached_tokens = c->cached_tokens;
            snprintf(r->stop_reason, sizeof r->stop_reason, "%s", c->stop_reason);
            if (c->error) {
                r->err_code = c->error->code;
                r->http = c->error->http_status;
                snprintf(r->err_msg, sizeof r->err_msg, "%s", c->error->message);
            }
        } else {
            ck_assert_int_eq(c->finish_reason, 0);
        }
        sluice__v1__generate_chunk__free_unpacked(c, NULL);
        if (last) return;
    }
}

static void gen_run(bus_t *b, const char *subject, const gen_args_t *a, result_t *r) {
    bus_stream_t *s = NULL;
    ck_assert_int_eq(gen_open(b, subject, a, &s), 0);
    gen_collect(s, r);
    bus_stream_free(s);
}

static void make_prompt(uint32_t *p, size_t n, uint32_t seed) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint32_t)(x % 480);
    }
}

/* ---- the engine directly, as the reference --------------------------------------- */

typedef struct ref_out {
    uint32_t ids[512];
    float lps[512];
    uint32_t n;
} ref_out_t;

static void ref_on_out(const engine_output_t *o, void *ud) {
    ref_out_t *r = ud;
    for (uint32_t i = 0; i < o->n_tokens && r->n < 512; i++) {
        r->lps[r->n] = o->logprobs ? o->logprobs[i].logprob : 0;
        r->ids[r->n++] = o->tokens[i];
    }
}

/* Greedy reference for n prompts (run together, as the worker batches). */
static void ref_generate(uint32_t *const *prompts, const size_t *lens, size_t n,
                         uint32_t max_tokens, ref_out_t *outs) {
    model_t *m = NULL;
    char *err = NULL;
    model_opts_t mo = {.block_size = 16, .n_blocks = KV_BLOCKS, .n_threads = 1};
    int rc = model_load(g_model, &mo, &m, &err);
    ck_assert_msg(rc == 0, "model_load: %s", err ? err : sl_strerror(rc));
    engine_t *e = engine_new(model_forward(m), NULL);
    ck_assert_ptr_nonnull(e);
    for (size_t i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "ref%zu", i);
        memset(&outs[i], 0, sizeof outs[i]);
        engine_request_t r = {.id = id,
                              .prompt = prompts[i],
                              .n_prompt = (uint32_t)lens[i],
                              .on_output = ref_on_out,
                              .ud = &outs[i]};
        r.sampling.logprobs = true;
        r.stop.max_tokens = max_tokens;
        r.stop.ignore_eos = true;
        ck_assert_int_eq(engine_add(e, &r), 0);
    }
    int guard = 0;
    while ((rc = engine_step(e)) > 0) ck_assert_int_lt(guard++, 100000);
    ck_assert_int_eq(rc, 0);
    engine_free(e);
    model_free(m);
}

/* ---- tests ------------------------------------------------------------------------ */

START_TEST(test_registration_metadata) {
    ck_assert_msg(g_ok, "fixture failed");
    char subject[BUS_SUBJECT_MAX], json[4096];
    int64_t id = wait_registered(NS, g_worker, subject, json, sizeof json, 5000);
    ck_assert_int_eq(id, g_id);
    char want[BUS_SUBJECT_MAX];
    ck_assert_int_eq(
        bus_subject_instance(want, sizeof want, NS, "backend", "generate", (uint64_t)id), 0);
    ck_assert_str_eq(subject, want);
    cJSON *j = cJSON_Parse(json);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(j, "model")), "tiny");
    ck_assert_int_eq(cJSON_GetObjectItem(j, "block_size")->valueint, 16);
    ck_assert_int_eq(cJSON_GetObjectItem(j, "kv_blocks")->valueint, KV_BLOCKS);
    ck_assert_int_eq(cJSON_GetObjectItem(j, "vocab_size")->valueint, VOCAB);
    ck_assert_int_eq(cJSON_GetObjectItem(j, "context_length")->valueint, 4096);
    cJSON *eos = cJSON_GetObjectItem(j, "eos_token_ids");
    ck_assert_int_eq(cJSON_GetArraySize(eos), 2);
    ck_assert_int_eq(cJSON_GetArrayItem(eos, 0)->valueint, 483);
    ck_assert_int_eq(cJSON_GetArrayItem(eos, 1)->valueint, 485);
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(j, "component")), "backend");
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(j, "endpoint")), "generate");
    ck_assert_int_eq((pid_t)cJSON_GetObjectItem(j, "pid")->valuedouble, g_worker);
    cJSON_Delete(j);
}
END_TEST

START_TEST(test_greedy_matches_engine) {
    ck_assert_msg(g_ok, "fixture failed");
    uint32_t p[40];
    make_prompt(p, 40, 1);
    uint32_t *pp[1] = {p};
    size_t lens[1] = {40};
    ref_out_t ref;
    ref_generate(pp, lens, 1, 48, &ref);
    ck_assert_uint_eq(ref.n, 48);

    bus_t *b = bus_open();
    result_t *r = calloc(1, sizeof *r);
    gen_args_t a = {.id = "greedy-1",
                    .prompt = p,
                    .n_prompt = 40,
                    .max_tokens = 48,
                    .ignore_eos = true,
                    .top_logprobs = 3,
                    .model = "tiny"};
    gen_run(b, g_subject, &a, r);
    ck_assert_int_eq(r->rc, 0);
    ck_assert_int_eq(r->finish, SLUICE__V1__FINISH_REASON__FINISH_REASON_LENGTH);
    ck_assert_uint_eq(r->n, 48);
    for (uint32_t i = 0; i < 48; i++) {
        ck_assert_uint_eq(r->ids[i], ref.ids[i]);
        ck_assert_msg(fabsf(r->lps[i] - ref.lps[i]) < 1e-4, "logprob %u: %g vs %g", i, r->lps[i],
                      ref.lps[i]);
    }
    ck_assert_uint_eq(r->n_top, 3);
    ck_assert_uint_eq(r->prompt_tokens, 40);
    ck_assert_uint_eq(r->completion_tokens, 48);
    ck_assert_uint_eq(r->n_chunks, 48); /* one chunk per token, the last one final */

    /* The same prompt again: the prefix cache serves its full blocks. */
    a.id = "greedy-2";
    gen_run(b, g_subject, &a, r);
    ck_assert_int_eq(r->rc, 0);
    ck_assert_uint_eq(r->cached_tokens, 32);
    for (uint32_t i = 0; i < 48; i++) ck_assert_uint_eq(r->ids[i], ref.ids[i]);

    /* Migration: prompt + the first 20 outputs as prior_output_ids continue
     * exactly where the first run was. */
    a.id = "greedy-migrated";
    a.prior = ref.ids;
    a.n_prior = 20;
    a.max_tokens = 28;
    gen_run(b, g_subject, &a, r);
    ck_assert_int_eq(r->rc, 0);
    ck_assert_uint_eq(r->n, 28);
    for (uint32_t i = 0; i < 28; i++) ck_assert_uint_eq(r->ids[i], ref.ids[20 + i]);
    ck_assert_uint_eq(r->prompt_tokens, 40);
    free(r);
    bus_free(b);
}
END_TEST

START_TEST(test_concurrent_streams_untangled) {
    ck_assert_msg(g_ok, "fixture failed");
    enum { N = 16, MAXT = 24 };
    uint32_t *prompts[N];
    size_t lens[N];
    for (int i = 0; i < N; i++) {
        lens[i] = 8 + (size_t)i * 5;
        prompts[i] = malloc(lens[i] * sizeof(uint32_t));
        make_prompt(prompts[i], lens[i], 100 + (uint32_t)i);
    }
    ref_out_t *ref = calloc(N, sizeof *ref);
    ref_generate(prompts, lens, N, MAXT, ref);

    bus_t *b = bus_open();
    bus_stream_t *s[N];
    char ids[N][32];
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "conc-%d", i);
        gen_args_t a = {.id = ids[i],
                        .prompt = prompts[i],
                        .n_prompt = lens[i],
                        .max_tokens = MAXT,
                        .ignore_eos = true};
        ck_assert_int_eq(gen_open(b, g_subject, &a, &s[i]), 0);
    }
    result_t *r = calloc(1, sizeof *r);
    for (int i = 0; i < N; i++) {
        gen_collect(s[i], r);
        ck_assert_int_eq(r->rc, 0);
        ck_assert_uint_eq(r->n, MAXT);
        for (int k = 0; k < MAXT; k++)
            ck_assert_msg(r->ids[k] == ref[i].ids[k], "stream %d token %d: %u vs %u", i, k,
                          r->ids[k], ref[i].ids[k]);
        ck_assert_uint_eq(r->prompt_tokens, lens[i]);
        bus_stream_free(s[i]);
        free(prompts[i]);
    }
    free(r);
    free(ref);
    bus_free(b);
}
END_TEST

START_TEST(test_stop_string) {
    ck_assert_msg(g_ok, "fixture failed");
    uint32_t p[20];
    make_prompt(p, 20, 7);
    bus_t *b = bus_open();
    result_t *full = calloc(1, sizeof *full), *cut = calloc(1, sizeof *cut);
    gen_args_t a = {
        .id = "stop-full", .prompt = p, .n_prompt = 20, .max_tokens = 64, .ignore_eos = true};
    gen_run(b, g_subject, &a, full);
    ck_assert_int_eq(full->rc, 0);
    ck_assert_uint_gt(full->text_len, 24);
    /* A stop string taken from the middle of the text (on a character
     * boundary, 3..6 bytes). */
    size_t at = full->text_len / 2;
    while (at > 0 && ((unsigned char)full->text[at] & 0xC0) == 0x80) at--;
    size_t end = at + 3;
    while (end < full->text_len && ((unsigned char)full->text[end] & 0xC0) == 0x80) end++;
    char stop[16];
    ck_assert_uint_lt(end - at, sizeof stop);
    memcpy(stop, full->text + at, end - at);
    stop[end - at] = 0;
    size_t first = (size_t)(strstr(full->text, stop) - full->text);

    a.id = "stop-cut";
    a.stop = stop;
    gen_run(b, g_subject, &a, cut);
    ck_assert_int_eq(cut->rc, 0);
    ck_assert_int_eq(cut->finish, SLUICE__V1__FINISH_REASON__FINISH_REASON_STOP);
    ck_assert_str_eq(cut->stop_reason, stop);
    ck_assert_uint_eq(cut->text_len, first);
    ck_assert_int_eq(memcmp(cut->text, full->text, first), 0);
    ck_assert_uint_lt(cut->n, full->n);
    free(full);
    free(cut);
    bus_free(b);
}
END_TEST

typedef struct load_watch {
    pthread_mutex_t mu;
    uint64_t worker;
    Sluice__V1__LoadMetrics last;
    int n;
} load_watch_t;

static void on_load(bus_t *b, const bus_msg_t *msg, const ProtobufCMessage *pm, void *ud) {
    (void)b;
    (void)msg;
    load_watch_t *w = ud;
    const Sluice__V1__LoadMetrics *m = (const Sluice__V1__LoadMetrics *)pm;
    pthread_mutex_lock(&w->mu);
    if (m->worker_id == w->worker) {
        w->last = *m;
        w->last.component = NULL;
        w->n++;
    }
    pthread_mutex_unlock(&w->mu);
}

START_TEST(test_cancel_frees_blocks) {
    ck_assert_msg(g_ok, "fixture failed");
    bus_t *b = bus_open();
    load_watch_t lw = {.worker = (uint64_t)g_id};
    pthread_mutex_init(&lw.mu, NULL);
    char subj[BUS_SUBJECT_MAX];
    bus_sub_t *sub = NULL;
    ck_assert_int_eq(bus_subject_topic(subj, sizeof subj, NS, "load"), 0);
    ck_assert_int_eq(bus_subscribe_proto(b, subj, NULL, &sluice__v1__load_metrics__descriptor,
                                         on_load, &lw, &sub),
                     0);
    uint32_t p[100];
    make_prompt(p, 100, 99);
    gen_args_t a = {
        .id = "cancel-me", .prompt = p, .n_prompt = 100, .max_tokens = 3900, .ignore_eos = true};
    bus_stream_t *s = NULL;
    ck_assert_int_eq(gen_open(b, g_subject, &a, &s), 0);
    /* Wait for a few tokens, then check it holds blocks. */
    Sluice__V1__GenerateChunk *c = NULL;
    bool last = false;
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor,
                                               (ProtobufCMessage **)&c, &last),
                         0);
        ck_assert(!last);
        sluice__v1__generate_chunk__free_unpacked(c, NULL);
    }
    long long end = harness_now_ms() + 3000;
    bool busy = false;
    while (!busy && harness_now_ms() < end) {
        pthread_mutex_lock(&lw.mu);
        busy = lw.n > 0 && lw.last.kv_blocks_used >= 7 && lw.last.active_seqs == 1;
        pthread_mutex_unlock(&lw.mu);
        harness_sleep_ms(10);
    }
    ck_assert_msg(busy, "LoadMetrics never showed the running request");
    ck_assert_double_gt(metric_now("sluice_worker_kv_blocks_used"), 6);

    char csubj[BUS_SUBJECT_MAX];
    ck_assert_int_eq(
        bus_subject_instance(csubj, sizeof csubj, NS, "backend", "cancel", (uint64_t)g_id), 0);
    Sluice__V1__CancelRequest cr = SLUICE__V1__CANCEL_REQUEST__INIT;
    cr.version = 1;
    cr.request_id = "cancel-me";
    ck_assert_int_eq(bus_publish_proto(b, csubj, &cr.base), 0);
    int finish = 0, rc;
    uint32_t completion = 0;
    while ((rc = bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor,
                                       (ProtobufCMessage **)&c, &last)) == 0) {
        if (last) {
            finish = c->finish_reason;
            completion = c->completion_tokens;
        }
        sluice__v1__generate_chunk__free_unpacked(c, NULL);
        if (last) break;
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(finish, SLUICE__V1__FINISH_REASON__FINISH_REASON_CANCELLED);
    ck_assert_uint_lt(completion, 3900);
    bool freed = false;
    end = harness_now_ms() + 3000;
    while (!freed && harness_now_ms() < end) {
        pthread_mutex_lock(&lw.mu);
        freed = lw.last.kv_blocks_used == 0 && lw.last.active_seqs == 0;
        pthread_mutex_unlock(&lw.mu);
        harness_sleep_ms(10);
    }
    ck_assert_msg(freed, "blocks still used after the cancel");
    ck_assert_double_eq(metric_now("sluice_worker_kv_blocks_used"), 0);
    ck_assert_double_ge(metric_now("sluice_worker_cancel_requests_total"), 1);
    bus_stream_free(s);
    bus_sub_free(sub);
    bus_free(b);
}
END_TEST

/* KV events of our worker, in arrival order. */
typedef struct kv_watch {
    pthread_mutex_t mu;
    uint64_t worker;
    uint64_t first_id, next_id; /* next expected */
    int batches, gaps;
    uint64_t seqs[4096]; /* stored sequence hashes seen */
    size_t n_seqs;
} kv_watch_t;

static void on_kv(bus_t *b, const bus_msg_t *msg, const ProtobufCMessage *pm, void *ud) {
    (void)b;
    (void)msg;
    kv_watch_t *w = ud;
    const Sluice__V1__KvEventBatch *m = (const Sluice__V1__KvEventBatch *)pm;
    if (m->worker_id != w->worker) return;
    pthread_mutex_lock(&w->mu);
    if (w->batches == 0)
        w->first_id = m->event_id;
    else if (m->event_id != w->next_id)
        w->gaps++;
    w->next_id = m->event_id + m->n_events;
    w->batches++;
    for (size_t i = 0; i < m->n_events; i++) {
        const Sluice__V1__KvEvent *e = m->events[i];
        if (e->data_case != SLUICE__V1__KV_EVENT__DATA_STORED) continue;
        for (size_t k = 0; k < kv_stored_count(e->stored) && w->n_seqs < 4096; k++)
            w->seqs[w->n_seqs++] = kv_stored_seq_hash(e->stored, k);
    }
    pthread_mutex_unlock(&w->mu);
}

static bool has_hash(const uint64_t *v, size_t n, uint64_t h) {
    for (size_t i = 0; i < n; i++)
        if (v[i] == h) return true;
    return false;
}

START_TEST(test_kv_events_and_resync) {
    ck_assert_msg(g_ok, "fixture failed");
    bus_t *b = bus_open();
    kv_watch_t *kw = calloc(1, sizeof *kw);
    kw->worker = (uint64_t)g_id;
    pthread_mutex_init(&kw->mu, NULL);
    char subj[BUS_SUBJECT_MAX];
    bus_sub_t *sub = NULL;
    ck_assert_int_eq(bus_subject_topic(subj, sizeof subj, NS, "kv_events"), 0);
    ck_assert_int_eq(bus_subscribe_proto(b, subj, NULL, &sluice__v1__kv_event_batch__descriptor,
                                         on_kv, kw, &sub),
                     0);
    ck_assert_int_eq(bus_flush(b, 2000), 0);
    /* Several requests with distinct 64-token prompts: 4 full blocks each. */
    uint64_t want[8][4];
    result_t *r = calloc(1, sizeof *r);
    for (int i = 0; i < 8; i++) {
        uint32_t p[64];
        char id[32];
        make_prompt(p, 64, 500 + (uint32_t)i);
        ck_assert_uint_eq(block_hash_seq(p, 64, 16, 0, NULL, want[i], 4), 4);
        snprintf(id, sizeof id, "kv-%d", i);
        gen_args_t a = {.id = id, .prompt = p, .n_prompt = 64, .max_tokens = 4, .ignore_eos = true};
        gen_run(b, g_subject, &a, r);
        ck_assert_int_eq(r->rc, 0);
    }
    free(r);
    long long end = harness_now_ms() + 3000;
    bool all = false;
    while (!all && harness_now_ms() < end) {
        pthread_mutex_lock(&kw->mu);
        all = true;
        for (int i = 0; i < 8; i++)
            for (int k = 0; k < 4; k++) all = all && has_hash(kw->seqs, kw->n_seqs, want[i][k]);
        pthread_mutex_unlock(&kw->mu);
        if (!all) harness_sleep_ms(10);
    }
    ck_assert_msg(all, "stored events missing some prompt blocks");
    pthread_mutex_lock(&kw->mu);
    ck_assert_int_eq(kw->gaps, 0);
    ck_assert_int_gt(kw->batches, 0);
    uint64_t first = kw->first_id, next = kw->next_id;
    pthread_mutex_unlock(&kw->mu);

    /* Full dump: cleared, then every cached block; event_id = the last id. */
    char rs[BUS_SUBJECT_MAX];
    ck_assert_int_eq(
        bus_subject_instance(rs, sizeof rs, NS, "backend", "kv_resync", (uint64_t)g_id), 0);
    Sluice__V1__KvResyncRequest q = SLUICE__V1__KV_RESYNC_REQUEST__INIT;
    q.version = 1;
    q.requester_id = 7;
    Sluice__V1__KvEventBatch *dump = NULL;
    ck_assert_int_eq(bus_request_proto(b, rs, &q.base, &sluice__v1__kv_event_batch__descriptor,
                                       5000, (ProtobufCMessage **)&dump),
                     0);
    ck_assert(dump->resync);
    ck_assert_uint_eq(dump->worker_id, (uint64_t)g_id);
    ck_assert_uint_eq(dump->block_size, 16);
    ck_assert_str_eq(dump->model, "tiny");
    ck_assert_uint_eq(dump->event_id, next - 1);
    ck_assert_uint_ge(dump->n_events, 1 + 32);
    ck_assert_int_eq(dump->events[0]->data_case, SLUICE__V1__KV_EVENT__DATA_CLEARED);
    uint64_t *dseq = calloc(dump->n_events, sizeof *dseq);
    size_t nd = 0;
    for (size_t i = 1; i < dump->n_events; i++) {
        ck_assert_int_eq(dump->events[i]->data_case, SLUICE__V1__KV_EVENT__DATA_STORED);
        const Sluice__V1__KvStored *st = dump->events[i]->stored;
        /* parents first: a parent is already in the dump */
        if (st->has_parent) ck_assert(has_hash(dseq, nd, st->parent_hash));
        for (size_t k = 0; k < kv_stored_count(st); k++) dseq[nd++] = kv_stored_seq_hash(st, k);
    }
    for (int i = 0; i < 8; i++)
        for (int k = 0; k < 4; k++) ck_assert(has_hash(dseq, nd, want[i][k]));
    free(dseq);
    sluice__v1__kv_event_batch__free_unpacked(dump, NULL);

    /* Replay from the ring: the events since first, as one ordinary batch. */
    q.from_event_id = first;
    Sluice__V1__KvEventBatch *rep = NULL;
    ck_assert_int_eq(bus_request_proto(b, rs, &q.base, &sluice__v1__kv_event_batch__descriptor,
                                       5000, (ProtobufCMessage **)&rep),
                     0);
    ck_assert(!rep->resync);
    ck_assert_uint_eq(rep->event_id, first);
    ck_assert_uint_eq(rep->n_events, next - first);
    sluice__v1__kv_event_batch__free_unpacked(rep, NULL);

    /* A malformed resync request is dropped (no reply), the worker stays. */
    bus_msg_t *reply = NULL;
    ck_assert_int_eq(bus_request(b, rs, "\xff\xff\xff", 3, 300, &reply), SL_ETIMEDOUT);
    bus_sub_free(sub);
    free(kw);
    bus_free(b);
}
END_TEST

/* A live index (stored minus removed) of one worker's events. */
typedef struct kv_index {
    pthread_mutex_t mu;
    uint64_t worker, next_id;
    int gaps, removed_events;
    uint64_t *h;
    size_t n, cap;
} kv_index_t;

static void index_del(kv_index_t *x, uint64_t v) {
    for (size_t i = 0; i < x->n; i++)
        if (x->h[i] == v) {
            x->h[i] = x->h[--x->n];
            return;
        }
}

static void on_kv_index(bus_t *b, const bus_msg_t *msg, const ProtobufCMessage *pm, void *ud) {
    (void)b;
    (void)msg;
    kv_index_t *x = ud;
    const Sluice__V1__KvEventBatch *m = (const Sluice__V1__KvEventBatch *)pm;
    if (m->worker_id != x->worker) return;
    pthread_mutex_lock(&x->mu);
    if (x->next_id && m->event_id != x->next_id) x->gaps++;
    x->next_id = m->event_id + m->n_events;
    for (size_t i = 0; i < m->n_events; i++) {
        const Sluice__V1__KvEvent *e = m->events[i];
        if (e->data_case == SLUICE__V1__KV_EVENT__DATA_STORED) {
            for (size_t k = 0; k < kv_stored_count(e->stored); k++) {
                if (x->n == x->cap) {
                    x->cap = x->cap ? x->cap * 2 : 256;
                    x->h = realloc(x->h, x->cap * sizeof *x->h);
                }
                x->h[x->n++] = kv_stored_seq_hash(e->stored, k);
            }
        } else if (e->data_case == SLUICE__V1__KV_EVENT__DATA_REMOVED) {
            x->removed_events++;
            for (size_t k = 0; k < e->removed->n_sequence_hashes; k++)
                index_del(x, e->removed->sequence_hashes[k]);
        } else {
            x->n = 0;
        }
    }
    pthread_mutex_unlock(&x->mu);
}

static Sluice__V1__KvEventBatch *resync(bus_t *b, const char *subj, uint64_t from) {
    Sluice__V1__KvResyncRequest q = SLUICE__V1__KV_RESYNC_REQUEST__INIT;
    q.version = 1;
    q.from_event_id = from;
    Sluice__V1__KvEventBatch *m = NULL;
    ck_assert_int_eq(bus_request_proto(b, subj, &q.base, &sluice__v1__kv_event_batch__descriptor,
                                       5000, (ProtobufCMessage **)&m),
                     0);
    return m;
}

/* A small pool (evictions), one event per batch (the ring overflows), and
 * one block per step (one STORED event per block): the live index built from
 * the events equals the dump; replays from the ring, empty replay at the
 * head, dump when the ring no longer reaches back. */
START_TEST(test_kv_ring_and_eviction) {
    ck_assert_msg(g_ok, "fixture failed");
    char log[512], subject[BUS_SUBJECT_MAX];
    snprintf(log, sizeof log, "%s/ring.log", g_dir);
    pid_t pid =
        worker_spawn("ring", -1, "--kv-blocks 48 --kv-batch-events 1 --max-batch-tokens 16", log);
    ck_assert_int_gt(pid, 0);
    bus_t *b = bus_open();
    kv_index_t *x = calloc(1, sizeof *x);
    pthread_mutex_init(&x->mu, NULL);
    char subj[BUS_SUBJECT_MAX];
    bus_sub_t *sub = NULL;
    ck_assert_int_eq(bus_subject_topic(subj, sizeof subj, "ring", "kv_events"), 0);
    ck_assert_int_eq(bus_subscribe_proto(b, subj, NULL, &sluice__v1__kv_event_batch__descriptor,
                                         on_kv_index, x, &sub),
                     0);
    ck_assert_int_eq(bus_flush(b, 2000), 0);
    int64_t id = wait_registered("ring", pid, subject, NULL, 0, 20000);
    ck_assert_msg(id != 0, "ring worker did not register");
    x->worker = (uint64_t)id;
    result_t *r = calloc(1, sizeof *r);
    for (int i = 0; i < 8; i++) { /* 8 x 20 blocks through a 48-block pool */
        uint32_t p[320];
        char rid[32];
        make_prompt(p, 320, 900 + (uint32_t)i);
        snprintf(rid, sizeof rid, "ring-%d", i);
        gen_args_t a = {
            .id = rid, .prompt = p, .n_prompt = 320, .max_tokens = 2, .ignore_eos = true};
        gen_run(b, subject, &a, r);
        ck_assert_int_eq(r->rc, 0);
        ck_assert_uint_eq(r->n, 2);
    }
    free(r);
    char rs[BUS_SUBJECT_MAX];
    ck_assert_int_eq(
        bus_subject_instance(rs, sizeof rs, "ring", "backend", "kv_resync", (uint64_t)id), 0);
    Sluice__V1__KvEventBatch *dump = resync(b, rs, 0);
    ck_assert(dump->resync);
    uint64_t last = dump->event_id;
    ck_assert_uint_gt(last, 140); /* more events than the ring holds batches */
    long long end = harness_now_ms() + 3000;
    for (;;) {
        pthread_mutex_lock(&x->mu);
        bool caught_up = x->next_id == last + 1;
        pthread_mutex_unlock(&x->mu);
        if (caught_up || harness_now_ms() > end) break;
        harness_sleep_ms(10);
    }
    pthread_mutex_lock(&x->mu);
    ck_assert_uint_eq(x->next_id, last + 1);
    ck_assert_int_eq(x->gaps, 0);
    ck_assert_int_gt(x->removed_events, 0);
    ck_assert_uint_le(x->n, 48);
    ck_assert_uint_eq(x->n, dump->n_events - 1);
    for (size_t i = 1; i < dump->n_events; i++)
        ck_assert(has_hash(x->h, x->n, kv_stored_seq_hash(dump->events[i]->stored, 0)));
    pthread_mutex_unlock(&x->mu);
    sluice__v1__kv_event_batch__free_unpacked(dump, NULL);

    Sluice__V1__KvEventBatch *m = resync(b, rs, last - 5); /* replay of the last 6 */
    ck_assert(!m->resync);
    ck_assert_uint_eq(m->event_id, last - 5);
    ck_assert_uint_eq(m->n_events, 6);
    sluice__v1__kv_event_batch__free_unpacked(m, NULL);
    m = resync(b, rs, last + 1); /* up to date: an empty replay */
    ck_assert(!m->resync);
    ck_assert_uint_eq(m->n_events, 0);
    sluice__v1__kv_event_batch__free_unpacked(m, NULL);
    m = resync(b, rs, 1); /* long out of the ring: a dump */
    ck_assert(m->resync);
    ck_assert_uint_eq(m->event_id, last);
    sluice__v1__kv_event_batch__free_unpacked(m, NULL);
    m = resync(b, rs, last + 100); /* from the future: a dump */
    ck_assert(m->resync);
    sluice__v1__kv_event_batch__free_unpacked(m, NULL);

    bus_sub_free(sub);
    free(x->h);
    free(x);
    bus_free(b);
    harness_kill(pid, SIGTERM, 5000);
}
END_TEST

START_TEST(test_error_chunks) {
    ck_assert_msg(g_ok, "fixture failed");
    bus_t *b = bus_open();
    result_t *r = calloc(1, sizeof *r);
    uint32_t *big = calloc(4096, sizeof *big);
    make_prompt(big, 4096, 3);
    gen_args_t a = {.id = "too-long", .prompt = big, .n_prompt = 4096, .max_tokens = 4};
    gen_run(b, g_subject, &a, r);
    ck_assert_int_eq(r->rc, 0);
    ck_assert_int_eq(r->finish, SLUICE__V1__FINISH_REASON__FINISH_REASON_ERROR);
    ck_assert_uint_eq(r->http, 400);
    ck_assert_int_eq(r->err_code, SL_ERANGE);
    ck_assert_ptr_nonnull(strstr(r->err_msg, "context"));
    ck_assert_uint_eq(r->n, 0);

    uint32_t bad[3] = {1, 2, VOCAB};
    a = (gen_args_t){.id = "bad-token", .prompt = bad, .n_prompt = 3, .max_tokens = 4};
    gen_run(b, g_subject, &a, r);
    ck_assert_int_eq(r->finish, SLUICE__V1__FINISH_REASON__FINISH_REASON_ERROR);
    ck_assert_uint_eq(r->http, 400);

    uint32_t ok[3] = {1, 2, 3};
    a = (gen_args_t){
        .id = "wrong-model", .prompt = ok, .n_prompt = 3, .max_tokens = 4, .model = "other"};
    gen_run(b, g_subject, &a, r);
    ck_assert_int_eq(r->finish, SLUICE__V1__FINISH_REASON__FINISH_REASON_ERROR);
    ck_assert_uint_eq(r->http, 404);

    a = (gen_args_t){.id = "", .prompt = ok, .n_prompt = 3, .max_tokens = 4};
    gen_run(b, g_subject, &a, r);
    ck_assert_uint_eq(r->http, 400);

    a = (gen_args_t){.id = "empty", .prompt = ok, .n_prompt = 0, .max_tokens = 4};
    gen_run(b, g_subject, &a, r);
    ck_assert_uint_eq(r->http, 400);

    /* Sampling values out of range, too many stop strings or top_logprobs. */
    a = (gen_args_t){.id = "bad-temp", .prompt = ok, .n_prompt = 3, .temperature = -1};
    gen_run(b, g_subject, &a, r);
    ck_assert_uint_eq(r->http, 400);
    a = (gen_args_t){.id = "bad-top", .prompt = ok, .n_prompt = 3, .top_logprobs = 21};
    gen_run(b, g_subject, &a, r);
    ck_assert_uint_eq(r->http, 400);
    a = (gen_args_t){.id = "many-stops", .prompt = ok, .n_prompt = 3, .stop = "x", .n_stops = 33};
    gen_run(b, g_subject, &a, r);
    ck_assert_uint_eq(r->http, 400);
    a.n_stops = 32; /* at the limit: fine */
    a.max_tokens = 2;
    a.id = "max-stops";
    gen_run(b, g_subject, &a, r);
    ck_assert_int_ne(r->finish, SLUICE__V1__FINISH_REASON__FINISH_REASON_ERROR);

    /* A deadline already passed. */
    a = (gen_args_t){.id = "late-deadline",
                     .prompt = ok,
                     .n_prompt = 3,
                     .max_tokens = 4,
                     .deadline_unix_ms = 1000};
    gen_run(b, g_subject, &a, r);
    ck_assert_uint_eq(r->http, 504);

    /* Prompt + migrated output over the context. */
    a = (gen_args_t){.id = "mig-long",
                     .prompt = big,
                     .n_prompt = 2048,
                     .prior = big,
                     .n_prior = 2048,
                     .max_tokens = 4};
    gen_run(b, g_subject, &a, r);
    ck_assert_uint_eq(r->http, 400);
    free(big);
    free(r);
    bus_free(b);
}
END_TEST

START_TEST(test_malformed_dropped_worker_alive) {
    ck_assert_msg(g_ok, "fixture failed");
    bus_t *b = bus_open();
    double before = metric_now("sluice_worker_malformed_total");
    ck_assert_double_ge(before, 0);
    /* Bytes that are not a GenerateRequest (a field 2 length past the end). */
    static const uint8_t junk[] = {0x12, 0x7f, 0x01, 0x02, 0xff, 0xff, 0xff};
    bus_stream_t *s = NULL;
    ck_assert_int_eq(bus_stream_open(b, g_subject, junk, sizeof junk, NULL, &s), 0);
    result_t *r = calloc(1, sizeof *r);
    gen_collect(s, r);
    bus_stream_free(s);
    ck_assert_int_eq(r->rc, 0);
    ck_assert_int_eq(r->finish, SLUICE__V1__FINISH_REASON__FINISH_REASON_ERROR);
    ck_assert_uint_eq(r->http, 400);
    /* Without a reply subject: counted, nothing to answer. */
    ck_assert_int_eq(bus_publish(b, g_subject, junk, sizeof junk), 0);
    ck_assert_int_eq(bus_flush(b, 2000), 0);
    long long end = harness_now_ms() + 2000;
    while (metric_now("sluice_worker_malformed_total") < before + 2 && harness_now_ms() < end)
        harness_sleep_ms(10);
    ck_assert_double_ge(metric_now("sluice_worker_malformed_total"), before + 2);
    ck_assert_int_eq(kill(g_worker, 0), 0); /* still running */
    uint32_t p[5] = {5, 6, 7, 8, 9};
    gen_args_t a = {
        .id = "after-junk", .prompt = p, .n_prompt = 5, .max_tokens = 3, .ignore_eos = true};
    gen_run(b, g_subject, &a, r);
    ck_assert_int_eq(r->rc, 0);
    ck_assert_uint_eq(r->n, 3);
    free(r);
    bus_free(b);
}
END_TEST

static uint64_t fz_next(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Random bytes and random-but-well-formed requests with wild values: every
 * one gets a final chunk (an answer or an error), and the worker stays up. */
START_TEST(test_fuzz_requests) {
    ck_assert_msg(g_ok, "fixture failed");
    bus_t *b = bus_open();
    uint64_t x = 0x1234567887654321ull;
    result_t *r = calloc(1, sizeof *r);
    static const float wild[] = {0, 0.5f, 1, 2, -1, 1e30f, NAN, INFINITY, -INFINITY, 1e-8f};
    int errors = 0, answered = 0;
    for (int round = 0; round < 20; round++) {
        enum { B = 16 };
        bus_stream_t *s[B];
        for (int i = 0; i < B; i++) {
            if (i % 2 == 0) { /* raw bytes */
                uint8_t junk[200];
                size_t n = fz_next(&x) % sizeof junk;
                for (size_t k = 0; k < n; k++) junk[k] = (uint8_t)fz_next(&x);
                ck_assert_int_eq(bus_stream_open(b, g_subject, junk, n, NULL, &s[i]), 0);
                continue;
            }
            Sluice__V1__GenerateRequest m = SLUICE__V1__GENERATE_REQUEST__INIT;
            Sluice__V1__SamplingParams sp = SLUICE__V1__SAMPLING_PARAMS__INIT;
            Sluice__V1__StopConditions sc = SLUICE__V1__STOP_CONDITIONS__INIT;
            char id[32], stop[8];
            uint32_t toks[24], stop_ids[3];
            snprintf(id, sizeof id, "fz-%d-%d", round, i);
            m.request_id = id;
            m.n_token_ids = fz_next(&x) % 24;
            m.token_ids = toks;
            for (size_t k = 0; k < m.n_token_ids; k++)
                toks[k] = (uint32_t)(fz_next(&x) % (VOCAB + 3)); /* sometimes out of range */
            if (fz_next(&x) % 3 == 0) {
                m.n_prior_output_ids = fz_next(&x) % 8;
                m.prior_output_ids = toks;
            }
            sp.temperature = wild[fz_next(&x) % 10];
            sp.top_p = wild[fz_next(&x) % 10];
            sp.top_k = (int32_t)(fz_next(&x) % 7) - 2;
            sp.min_p = wild[fz_next(&x) % 10];
            sp.repetition_penalty = wild[fz_next(&x) % 10];
            sp.presence_penalty = wild[fz_next(&x) % 10];
            sp.has_seed = true;
            sp.seed = fz_next(&x);
            sp.logprobs = (uint32_t)(fz_next(&x) % 2);
            sp.top_logprobs = (uint32_t)(fz_next(&x) % 24);
            m.sampling = fz_next(&x) % 4 ? &sp : NULL;
            sc.max_tokens = 1 + (uint32_t)(fz_next(&x) % 40); /* 0 would run to the context */
            sc.min_tokens = (uint32_t)(fz_next(&x) % 10);
            sc.ignore_eos = fz_next(&x) % 2;
            for (int k = 0; k < 7; k++) stop[k] = (char)(1 + fz_next(&x) % 255);
            stop[fz_next(&x) % 8] = 0;
            char *stops[2] = {stop, ""};
            sc.n_stop = fz_next(&x) % 3;
            sc.stop = stops;
            for (int k = 0; k < 3; k++) stop_ids[k] = (uint32_t)fz_next(&x);
            sc.n_stop_token_ids = fz_next(&x) % 4;
            sc.stop_token_ids = stop_ids;
            m.stop = &sc; /* without it a request runs to the context: too slow here */
            ck_assert_int_eq(bus_stream_open_proto(b, g_subject, &m.base, NULL, &s[i]), 0);
        }
        for (int i = 0; i < B; i++) {
            gen_collect(s[i], r);
            ck_assert_msg(r->rc == 0, "round %d stream %d: %s", round, i, sl_strerror(r->rc));
            ck_assert_int_ne(r->finish, 0);
            if (r->finish == SLUICE__V1__FINISH_REASON__FINISH_REASON_ERROR) {
                errors++;
                ck_assert_uint_ge(r->http, 400);
                ck_assert_uint_lt(r->http, 600);
            } else {
                answered++;
            }
            bus_stream_free(s[i]);
        }
    }
    ck_assert_int_eq(kill(g_worker, 0), 0);
    ck_assert_int_gt(answered, 10); /* not everything refused */
    ck_assert_int_gt(errors, 160);  /* all raw junk at least */
    /* Nothing leaked: every block is back once the streams are done. */
    long long end = harness_now_ms() + 2000;
    while (metric_now("sluice_worker_kv_blocks_used") != 0 && harness_now_ms() < end)
        harness_sleep_ms(10);
    ck_assert_double_eq(metric_now("sluice_worker_kv_blocks_used"), 0);
    ck_assert_double_eq(metric_now("sluice_worker_inflight_requests"), 0);
    free(r);
    bus_free(b);
}
END_TEST

START_TEST(test_metrics_and_health) {
    ck_assert_msg(g_ok, "fixture failed");
    static char page[1 << 17];
    ck_assert_int_eq(http_get(g_sys_port, "/health", page, sizeof page), 200);
    ck_assert_ptr_nonnull(strstr(page, "\"healthy\""));
    ck_assert_int_eq(http_get(g_sys_port, "/metrics", page, sizeof page), 200);
    const char *names[] = {"sluice_worker_requests_total",
                           "sluice_worker_active_seqs",
                           "sluice_worker_waiting_seqs",
                           "sluice_worker_kv_usage",
                           "sluice_worker_kv_blocks_total",
                           "sluice_worker_generated_tokens_total",
                           "sluice_worker_ttft_seconds_count",
                           "sluice_worker_prefill_step_seconds_count",
                           "sluice_worker_decode_step_seconds_count"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        ck_assert_msg(metric_value(page, names[i]) >= 0, "missing %s", names[i]);
    ck_assert_double_eq(metric_value(page, "sluice_worker_kv_blocks_total"), KV_BLOCKS);
    ck_assert_ptr_nonnull(strstr(page, "sluice_worker_finished_total{reason=\"length\"}"));
}
END_TEST

/* A cancel that overtakes its request (it arrives first) still cancels it. */
START_TEST(test_cancel_before_request) {
    ck_assert_msg(g_ok, "fixture failed");
    bus_t *b = bus_open();
    char csubj[BUS_SUBJECT_MAX];
    ck_assert_int_eq(
        bus_subject_instance(csubj, sizeof csubj, NS, "backend", "cancel", (uint64_t)g_id), 0);
    Sluice__V1__CancelRequest cr = SLUICE__V1__CANCEL_REQUEST__INIT;
    cr.version = 1;
    cr.request_id = "early-1";
    ck_assert_int_eq(bus_publish_proto(b, csubj, &cr.base), 0);
    ck_assert_int_eq(bus_flush(b, 2000), 0);
    harness_sleep_ms(50);
    uint32_t p[10];
    make_prompt(p, 10, 1234);
    result_t *r = calloc(1, sizeof *r);
    gen_args_t a = {
        .id = "early-1", .prompt = p, .n_prompt = 10, .max_tokens = 3000, .ignore_eos = true};
    gen_run(b, g_subject, &a, r);
    ck_assert_int_eq(r->rc, 0);
    ck_assert_int_eq(r->finish, SLUICE__V1__FINISH_REASON__FINISH_REASON_CANCELLED);
    ck_assert_uint_eq(r->n, 0);
    /* Only once: the same id afterwards runs normally. */
    a.max_tokens = 2;
    gen_run(b, g_subject, &a, r);
    ck_assert_int_eq(r->finish, SLUICE__V1__FINISH_REASON__FINISH_REASON_LENGTH);
    free(r);
    bus_free(b);
}
END_TEST

/* The worker's NATS connection drops mid-stream: its writer reports the
 * requester gone, the request is cancelled and its blocks freed. Runs last
 * of all (the nats-server it restarts dies with the forked test). */
START_TEST(test_connection_drop_cancels) {
    ck_assert_msg(g_ok, "fixture failed");
    bus_t *b = bus_open();
    uint32_t p[50];
    make_prompt(p, 50, 4321);
    gen_args_t a = {
        .id = "dropped", .prompt = p, .n_prompt = 50, .max_tokens = 3900, .ignore_eos = true};
    bus_stream_t *s = NULL;
    ck_assert_int_eq(gen_open(b, g_subject, &a, &s), 0);
    Sluice__V1__GenerateChunk *c = NULL;
    bool last = false;
    ck_assert_int_eq(bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor,
                                           (ProtobufCMessage **)&c, &last),
                     0);
    sluice__v1__generate_chunk__free_unpacked(c, NULL);
    double cancelled = metric_now("sluice_worker_finished_total{reason=\"cancelled\"}");
    harness_nats_stop(&g_nats);
    long long end = harness_now_ms() + 15000; /* generous: ASan on a loaded machine */
    while (metric_now("sluice_worker_kv_blocks_used") != 0 && harness_now_ms() < end)
        harness_sleep_ms(20);
    ck_assert_double_eq(metric_now("sluice_worker_kv_blocks_used"), 0);
    ck_assert_double_gt(metric_now("sluice_worker_finished_total{reason=\"cancelled\"}"),
                        cancelled);
    ck_assert_double_eq(metric_now("sluice_worker_inflight_requests"), 0);
    ck_assert_int_eq(harness_nats_restart(&g_nats), 0);
    bus_stream_free(s);
    bus_free(b);
    /* The worker reconnects and serves again. */
    b = bus_open();
    result_t *r = calloc(1, sizeof *r);
    a = (gen_args_t){
        .id = "after-drop", .prompt = p, .n_prompt = 5, .max_tokens = 3, .ignore_eos = true};
    end = harness_now_ms() + 10000;
    do {
        gen_run(b, g_subject, &a, r);
        if (r->rc) harness_sleep_ms(100);
    } while (r->rc && harness_now_ms() < end);
    ck_assert_int_eq(r->rc, 0);
    ck_assert_uint_eq(r->n, 3);
    free(r);
    bus_free(b);
}
END_TEST

START_TEST(test_sigterm_drains) {
    ck_assert_msg(g_ok, "fixture failed");
    char log[512], subject[BUS_SUBJECT_MAX];
    snprintf(log, sizeof log, "%s/drain.log", g_dir);
    pid_t pid = worker_spawn("drain", harness_free_port(), NULL, log);
    ck_assert_int_gt(pid, 0);
    int64_t id = wait_registered("drain", pid, subject, NULL, 0, 20000);
    ck_assert_msg(id != 0, "drain worker did not register");
    bus_t *b = bus_open();
    uint32_t p[30];
    make_prompt(p, 30, 77);
    gen_args_t a = {
        .id = "inflight", .prompt = p, .n_prompt = 30, .max_tokens = 2000, .ignore_eos = true};
    bus_stream_t *s = NULL;
    ck_assert_int_eq(gen_open(b, subject, &a, &s), 0);
    Sluice__V1__GenerateChunk *c = NULL;
    bool last = false;
    ck_assert_int_eq(bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor,
                                           (ProtobufCMessage **)&c, &last),
                     0);
    uint32_t n = (uint32_t)c->n_token_ids;
    sluice__v1__generate_chunk__free_unpacked(c, NULL);
    kill(pid, SIGTERM);
    /* Deregistered at once (lease revoked), new requests refused with 503. */
    long long end = harness_now_ms() + 3000;
    while (count_registered("drain") != 0 && harness_now_ms() < end) harness_sleep_ms(20);
    ck_assert_uint_eq(count_registered("drain"), 0);
    result_t *r = calloc(1, sizeof *r);
    gen_args_t late = {.id = "late", .prompt = p, .n_prompt = 30, .max_tokens = 3};
    gen_run(b, subject, &late, r);
    int late_http = (int)r->http, late_finish = r->finish, late_rc = r->rc;
    free(r);
    /* The in-flight request runs to its end. */
    int finish = 0, rc;
    while ((rc = bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor,
                                       (ProtobufCMessage **)&c, &last)) == 0) {
        n += (uint32_t)c->n_token_ids;
        if (last) finish = c->finish_reason;
        sluice__v1__generate_chunk__free_unpacked(c, NULL);
        if (last) break;
    }
    bus_stream_free(s);
    int st = 0;
    end = harness_now_ms() + 20000;
    bool exited = false;
    while (!(exited = harness_exited(pid, &st)) && harness_now_ms() < end) harness_sleep_ms(20);
    if (!exited) harness_kill(pid, SIGKILL, 1000);
    bus_free(b);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(finish, SLUICE__V1__FINISH_REASON__FINISH_REASON_LENGTH);
    ck_assert_uint_eq(n, 2000);
    /* The late request either got the 503 chunk or (if the worker was already
     * gone) no responders; never a token. */
    ck_assert_msg((late_rc == 0 && late_finish == SLUICE__V1__FINISH_REASON__FINISH_REASON_ERROR &&
                   late_http == 503) ||
                      late_rc == SL_EUNAVAIL,
                  "late request: rc %d finish %d http %d", late_rc, late_finish, late_http);
    ck_assert(exited);
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 0);
}
END_TEST

/* A second SIGTERM during the drain exits at once, with status 1. */
START_TEST(test_second_signal_exits_at_once) {
    ck_assert_msg(g_ok, "fixture failed");
    char log[512], subject[BUS_SUBJECT_MAX];
    snprintf(log, sizeof log, "%s/twice.log", g_dir);
    pid_t pid = worker_spawn("twice", -1, NULL, log);
    ck_assert_int_gt(pid, 0);
    ck_assert_msg(wait_registered("twice", pid, subject, NULL, 0, 20000) != 0, "no registration");
    bus_t *b = bus_open();
    enum { N = 32 };
    bus_stream_t *s[N];
    uint32_t p[16];
    make_prompt(p, 16, 5);
    for (int i = 0; i < N; i++) { /* far more work than the drain could finish */
        char id[32];
        snprintf(id, sizeof id, "twice-%d", i);
        gen_args_t a = {
            .id = id, .prompt = p, .n_prompt = 16, .max_tokens = 4000, .ignore_eos = true};
        ck_assert_int_eq(gen_open(b, subject, &a, &s[i]), 0);
    }
    Sluice__V1__GenerateChunk *c = NULL;
    bool last = false;
    ck_assert_int_eq(bus_stream_recv_proto(s[N - 1], &sluice__v1__generate_chunk__descriptor,
                                           (ProtobufCMessage **)&c, &last),
                     0);
    sluice__v1__generate_chunk__free_unpacked(c, NULL);
    kill(pid, SIGTERM);
    harness_sleep_ms(30);
    long long t0 = harness_now_ms();
    kill(pid, SIGTERM);
    int st = 0;
    bool exited = false;
    while (!(exited = harness_exited(pid, &st)) && harness_now_ms() - t0 < 3000)
        harness_sleep_ms(5);
    if (!exited) harness_kill(pid, SIGKILL, 1000);
    for (int i = 0; i < N; i++) bus_stream_free(s[i]);
    bus_free(b);
    ck_assert_msg(exited, "still running 3 s after the second signal");
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 1);
}
END_TEST

START_TEST(test_kill9_registration_expires) {
    ck_assert_msg(g_ok, "fixture failed");
    char log[512];
    snprintf(log, sizeof log, "%s/kill.log", g_dir);
    pid_t pid = worker_spawn("kill", -1, "--lease-ttl 2", log);
    ck_assert_int_gt(pid, 0);
    ck_assert_msg(wait_registered("kill", pid, NULL, NULL, 0, 20000) != 0, "no registration");
    harness_kill(pid, SIGKILL, 1000);
    ck_assert_uint_eq(count_registered("kill"), 1); /* still there until the TTL */
    long long end = harness_now_ms() + 8000;
    while (count_registered("kill") != 0 && harness_now_ms() < end) harness_sleep_ms(100);
    ck_assert_uint_eq(count_registered("kill"), 0);
}
END_TEST

/* --engine mocker: no weights, the mocker's deterministic tokens, the real
 * prefix cache; a bad parameter file is a start-up error. */
START_TEST(test_mocker_engine) {
    ck_assert_msg(g_ok, "fixture failed");
    char log[512], params[512], subject[BUS_SUBJECT_MAX], json[4096];
    snprintf(params, sizeof params, "%s/mocker.json", g_dir);
    FILE *f = fopen(params, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"prefill_b\": 1e-6, \"decode_d\": 1e-4, \"speedup\": 10}", f);
    fclose(f);
    char extra[600];
    snprintf(extra, sizeof extra, "--engine mocker --mocker-params %s", params);
    snprintf(log, sizeof log, "%s/mocker.log", g_dir);
    pid_t pid = worker_spawn("mock", -1, extra, log);
    ck_assert_int_gt(pid, 0);
    ck_assert_msg(wait_registered("mock", pid, subject, json, sizeof json, 20000) != 0,
                  "mocker did not register (see %s)", log);
    ck_assert_msg(strstr(json, "\"engine\":\"mocker\"") != NULL, "%s", json);

    /* The mocker's tokens, computed here from its contract. */
    mocker_t *m = NULL;
    ck_assert_int_eq(mocker_new(NULL, 16, 256, VOCAB, &m), 0);
    uint32_t p[40], want[24];
    make_prompt(p, 40, 9);
    uint32_t last = p[39];
    for (uint32_t i = 0; i < 24; i++) last = want[i] = mocker_token_next(m, last, 39 + i);
    mocker_free(m);

    bus_t *b = bus_open();
    result_t *r = calloc(1, sizeof *r);
    gen_args_t a = {.id = "mock-1",
                    .prompt = p,
                    .n_prompt = 40,
                    .max_tokens = 24,
                    .ignore_eos = true,
                    .model = "tiny"};
    gen_run(b, subject, &a, r);
    ck_assert_int_eq(r->rc, 0);
    ck_assert_uint_eq(r->n, 24);
    for (uint32_t i = 0; i < 24; i++) ck_assert_uint_eq(r->ids[i], want[i]);
    a.id = "mock-2";
    gen_run(b, subject, &a, r);
    ck_assert_int_eq(r->rc, 0);
    ck_assert_uint_eq(r->cached_tokens, 32);
    for (uint32_t i = 0; i < 24; i++) ck_assert_uint_eq(r->ids[i], want[i]);
    free(r);
    bus_free(b);
    harness_kill(pid, SIGTERM, 5000);

    /* An unknown key in the parameter file: exit status 1 with the reason. */
    f = fopen(params, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"prefil_b\": 1}", f);
    fclose(f);
    char bin[512], cmd[2048];
    harness_bin("sluice-decode-worker", bin, sizeof bin);
    snprintf(cmd, sizeof cmd,
             "%s --model %s --engine mocker --mocker-params %s --system-port -1 --nats %s "
             "--etcd %s >%s/mockbad.log 2>&1",
             bin, g_model, params, g_nats.url, g_etcd.url, g_dir);
    int st = system(cmd);
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 1);
    char out[4096] = {0};
    snprintf(cmd, sizeof cmd, "%s/mockbad.log", g_dir);
    f = fopen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    size_t got = fread(out, 1, sizeof out - 1, f);
    out[got] = 0;
    fclose(f);
    ck_assert_msg(strstr(out, "mocker") != NULL, "%s", out);
}
END_TEST

START_TEST(test_bad_usage) {
    char bin[512], cmd[1200];
    harness_bin("sluice-decode-worker", bin, sizeof bin);
    snprintf(cmd, sizeof cmd, "%s --no-such-flag >/dev/null 2>&1", bin);
    int st = system(cmd);
    ck_assert_int_eq(WEXITSTATUS(st), 2);
    snprintf(cmd, sizeof cmd, "%s --system-port -1 >/dev/null 2>&1", bin);
    st = system(cmd);
    ck_assert_int_eq(WEXITSTATUS(st), 2); /* --model missing */
    snprintf(cmd, sizeof cmd,
             "%s --model /nonexistent --system-port -1 --nats %s --etcd %s >/dev/null 2>&1", bin,
             g_nats.url, g_etcd.url);
    st = system(cmd);
    ck_assert_int_eq(WEXITSTATUS(st), 1);
    snprintf(cmd, sizeof cmd, "%s --help | grep -q -- --kv-blocks", bin);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

static void fixture_start(void) {
    char log[512];
    if (fleet_fixture_start("sl-dw", g_dir, sizeof g_dir, g_model, sizeof g_model, &g_etcd,
                            &g_nats) != 0)
        return;
    g_sys_port = harness_free_port();
    snprintf(log, sizeof log, "%s/worker.log", g_dir);
    g_worker = worker_spawn(NS, g_sys_port, NULL, log);
    if (g_worker <= 0) return;
    g_id = wait_registered(NS, g_worker, g_subject, NULL, 0, 20000);
    if (!g_id) {
        fprintf(stderr, "fixture: worker did not register (see %s)\n", log);
        return;
    }
    g_ok = true;
}

int main(void) {
    sl_log_init("test");
    sl_log_set_level(SL_LOG_ERROR);
    fixture_start();
    Suite *s = suite_create("decode_worker");
    TCase *tc = tcase_create("worker");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_registration_metadata);
    tcase_add_test(tc, test_greedy_matches_engine);
    tcase_add_test(tc, test_concurrent_streams_untangled);
    tcase_add_test(tc, test_stop_string);
    tcase_add_test(tc, test_cancel_frees_blocks);
    tcase_add_test(tc, test_kv_events_and_resync);
    tcase_add_test(tc, test_kv_ring_and_eviction);
    tcase_add_test(tc, test_error_chunks);
    tcase_add_test(tc, test_malformed_dropped_worker_alive);
    tcase_add_test(tc, test_fuzz_requests);
    tcase_add_test(tc, test_metrics_and_health);
    tcase_add_test(tc, test_cancel_before_request);
    tcase_add_test(tc, test_sigterm_drains);
    tcase_add_test(tc, test_second_signal_exits_at_once);
    tcase_add_test(tc, test_kill9_registration_expires);
    tcase_add_test(tc, test_bad_usage);
    tcase_add_test(tc, test_mocker_engine);
    /* Last: restarts nats-server inside the forked test (the new one dies with it). */
    tcase_add_test(tc, test_connection_drop_cancels);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (g_worker > 0) harness_kill(g_worker, SIGTERM, 5000);
    fleet_fixture_stop(g_dir, &g_etcd, &g_nats);
    return nf == 0 ? 0 : 1;
}
