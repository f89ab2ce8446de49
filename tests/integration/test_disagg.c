/* test_disagg.c - disaggregated prefill end to end: sluice-prefill-worker and
 * sluice-decode-worker --disagg, real nats-server, etcd and UCX, on a tiny
 * genmodel Llama.
 *
 * Checked: greedy tokens are identical with --disagg off, auto and always
 * (prompt lengths around and between block boundaries, shared prefixes cached
 * on either side, concurrent requests) over shared memory and TCP, and the
 * remote path really ran (metrics on both workers); kill -9 of the prefill
 * worker with jobs in flight: every request completes with the same tokens
 * (local fallback) and the decode worker's used blocks return to idle; a
 * decode worker killed while its prefill waits: the prefill worker drops the
 * job, frees its blocks, stays healthy and serves the next decode worker;
 * corrupt, stale and truncated descriptors and bad geometry in jobs are
 * refused with an error and the decode worker prefills locally; a job that is
 * never answered times out into a local prefill.
 */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/bus.h"
#include "common/runtime/discovery.h"
#include "common/transfer/kv_transfer.h"
#include "proto/sluice.pb-c.h"
#include "tests/harness/fleet.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXTOK 64

static harness_etcd_t g_etcd;
static harness_nats_t g_nats;
static char g_dir[256], g_model[512];
static bool g_ok;

static char *const ENV_SHM[] = {"UCX_TLS=sm,self", NULL};
static char *const ENV_TCP[] = {"UCX_TLS=tcp,self", "UCX_NET_DEVICES=lo", NULL};

/* ---- processes ---------------------------------------------------------------------- */

typedef fleet_proc_t proc_t;

/* Starts bin (registering as component) with the test's model and flags. */
static void start(proc_t *p, const char *bin, const char *component, const char *ns,
                  const char *extra, char *const *env, const char *logname) {
    char log[512];
    snprintf(log, sizeof log, "%s/%s.log", g_dir, logname);
    fleet_env_t fenv = {.ns = ns, .etcd = g_etcd.url, .nats = g_nats.url};
    fleet_worker_opts_t o = {.bin = bin,
                             .model = g_model,
                             .lease_ttl_s = 2,
                             .kv_blocks = 128,
                             .log = log,
                             .extra = extra,
                             .env = env};
    int rc = fleet_proc_start(p, &fenv, o, component, 20000);
    ck_assert_msg(rc == 0, "%s %s did not start or register", component, logname);
}

static void start_decode(proc_t *p, const char *ns, const char *extra, char *const *env,
                         const char *logname) {
    start(p, "sluice-decode-worker", "backend", ns, extra, env, logname);
}

static void start_prefill(proc_t *p, const char *ns, const char *extra, char *const *env,
                          const char *logname) {
    start(p, "sluice-prefill-worker", "prefill", ns, extra, env, logname);
}

static void stop(proc_t *p) {
    if (p->pid > 0) harness_kill(p->pid, SIGTERM, 5000);
    p->pid = 0;
}

/* ---- metrics --------------------------------------------------------------------------- */

/* Value of the metric line "name value" (name may carry labels), -1 if none. */
static double metric(const proc_t *p, const char *name) {
    return fleet_metric(p->base, name);
}

/* Waits until metric equals want (or timeout); returns the last value. */
static double metric_wait(const proc_t *p, const char *name, double want, int timeout_ms) {
    return fleet_wait_metric(p->base, name, '=', want, timeout_ms);
}

/* ---- requests --------------------------------------------------------------------------- */

typedef struct result {
    uint32_t ids[MAXTOK];
    float lp0;
    uint32_t n;
    int finish, err_code, rc;
    uint32_t cached_tokens;
    bool remote;         /* the final chunk said remote_prefill */
    uint64_t xfer_bytes; /* and kv_transfer_bytes */
} result_t;

static bus_t *bus_open(void) {
    bus_t *b = NULL;
    bus_opts_t o = {.url = g_nats.url, .name = "test-disagg"};
    ck_assert_int_eq(bus_connect(&b, &o), 0);
    return b;
}

/* Extra request fields for the next gen_open calls (migration, min_tokens). */
static uint32_t g_min_tokens, g_n_prior;

static int gen_open(bus_t *b, const char *subject, const char *id, const uint32_t *prompt, size_t n,
                    uint32_t max_tokens, bus_stream_t **s) {
    Sluice__V1__GenerateRequest m = SLUICE__V1__GENERATE_REQUEST__INIT;
    Sluice__V1__SamplingParams sp = SLUICE__V1__SAMPLING_PARAMS__INIT;
    Sluice__V1__StopConditions sc = SLUICE__V1__STOP_CONDITIONS__INIT;
    m.version = 1;
    m.request_id = (char *)id;
    size_t np = g_n_prior < n ? g_n_prior : 0; /* the last np prompt ids as prior output */
    m.n_token_ids = n - np;
    m.token_ids = (uint32_t *)prompt;
    m.n_prior_output_ids = np;
    m.prior_output_ids = (uint32_t *)prompt + (n - np);
    sc.min_tokens = g_min_tokens;
    sp.logprobs = 1;
    m.sampling = &sp;
    sc.max_tokens = max_tokens;
    sc.ignore_eos = true;
    m.stop = &sc;
    bus_stream_opts_t so = {.idle_timeout_ms = 30000};
    return bus_stream_open_proto(b, subject, &m.base, &so, s);
}

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
        for (size_t i = 0; i < c->n_token_ids && r->n < MAXTOK; i++) {
            if (r->n == 0 && i < c->n_logprobs) r->lp0 = c->logprobs[i]->chosen->logprob;
            r->ids[r->n++] = c->token_ids[i];
        }
        if (last) {
            r->finish = c->finish_reason;
            r->cached_tokens = c->cached_tokens;
            r->remote = c->remote_prefill;
            r->xfer_bytes = c->kv_transfer_bytes;
            if (c->error) r->err_code = c->error->code;
        }
        sluice__v1__generate_chunk__free_unpacked(c, NULL);
        if (last) return;
    }
}

/* Runs n requests concurrently against subject. */
static void gen_many(bus_t *b, const char *subject, const char *tag, uint32_t *const *prompts,
                     const size_t *lens, size_t n, uint32_t max_tokens, result_t *out) {
    bus_stream_t *s[32];
    ck_assert_uint_le(n, 32);
    for (size_t i = 0; i < n; i++) {
        char id[64];
        snprintf(id, sizeof id, "%s-%zu", tag, i);
        ck_assert_int_eq(gen_open(b, subject, id, prompts[i], lens[i], max_tokens, &s[i]), 0);
    }
    for (size_t i = 0; i < n; i++) {
        gen_collect(s[i], &out[i]);
        bus_stream_free(s[i]);
        ck_assert_msg(out[i].rc == 0 && out[i].err_code == 0, "%s-%zu: rc %d err %d", tag, i,
                      out[i].rc, out[i].err_code);
        ck_assert_uint_eq(out[i].n, max_tokens);
    }
}

static void make_prompt(uint32_t *p, size_t n, uint32_t seed, size_t shared) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1, y = 0x1234567ull;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        y ^= y << 13;
        y ^= y >> 7;
        y ^= y << 17;
        p[i] = (uint32_t)((i < shared ? y : x) % 480);
    }
}

static void assert_same(const result_t *a, const result_t *b, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(a[i].n == b[i].n && memcmp(a[i].ids, b[i].ids, a[i].n * 4) == 0,
                      "%s: request %zu differs", what, i);
        ck_assert_msg(a[i].lp0 - b[i].lp0 < 1e-3f && b[i].lp0 - a[i].lp0 < 1e-3f,
                      "%s: request %zu first logprob %f vs %f", what, i, a[i].lp0, b[i].lp0);
    }
}

/* ---- tests ------------------------------------------------------------------------------ */

#define NPROMPT 24
static uint32_t g_pbuf[NPROMPT][200];
static uint32_t *g_prompts[NPROMPT];
static size_t g_lens[NPROMPT];

/* Lengths around block boundaries (16), long and short, half of them sharing
 * a 40-token prefix (cached after the first round on whichever side). */
static void prompts_init(void) {
    static const size_t lens[NPROMPT] = {1,  15, 16, 17,  31,  32,  33,  47,  48, 49, 63, 64,
                                         65, 80, 97, 111, 128, 129, 150, 160, 17, 45, 70, 190};
    for (size_t i = 0; i < NPROMPT; i++) {
        g_lens[i] = lens[i];
        make_prompt(g_pbuf[i], lens[i], (uint32_t)i + 1, i % 2 ? 40 : 0);
        g_prompts[i] = g_pbuf[i];
    }
}

static void identical_outputs(const char *ns, char *const *env) {
    ck_assert(g_ok);
    prompts_init();
    proc_t pf = {0}, off = {0}, al = {0}, au = {0};
    start_prefill(&pf, ns, "--max-batch-tokens 64", env, "pf");
    start_decode(&off, ns, "--disagg off", env, "off");
    start_decode(&al, ns, "--disagg always", env, "always");
    start_decode(&au, ns, "--disagg auto --max-local-prefill 40 --prefill-queue-max 64", env,
                 "auto");
    /* the decode workers must have seen the prefill worker */
    ck_assert_double_eq(metric_wait(&al, "sluice_worker_prefill_workers", 1, 5000), 1);
    ck_assert_double_eq(metric_wait(&au, "sluice_worker_prefill_workers", 1, 5000), 1);
    bus_t *b = bus_open();
    static result_t r_off[2][NPROMPT], r_al[2][NPROMPT], r_au[2][NPROMPT];
    for (int round = 0; round < 2; round++) { /* round 1: prefixes cached everywhere */
        for (size_t k = 0; k < NPROMPT; k += 12) {
            gen_many(b, off.subject, "off", g_prompts + k, g_lens + k, 12, 6, r_off[round] + k);
            gen_many(b, al.subject, "al", g_prompts + k, g_lens + k, 12, 6, r_al[round] + k);
            gen_many(b, au.subject, "au", g_prompts + k, g_lens + k, 12, 6, r_au[round] + k);
        }
        assert_same(r_off[round], r_al[round], NPROMPT, "always vs off");
        assert_same(r_off[round], r_au[round], NPROMPT, "auto vs off");
    }
    assert_same(r_off[0], r_off[1], NPROMPT, "off, cold vs warm");
    /* the final chunk tells where the prompt was prefilled and what moving it cost */
    size_t n_remote = 0;
    for (size_t k = 0; k < NPROMPT; k++) {
        ck_assert(!r_off[0][k].remote);
        ck_assert_uint_eq(r_off[0][k].xfer_bytes, 0);
        if (r_al[0][k].remote) {
            n_remote++;
            ck_assert_uint_gt(r_al[0][k].xfer_bytes, 0);
        }
    }
    ck_assert_uint_ge(n_remote, NPROMPT - 1);
    /* and a frontend in front of the three counts it (round-robin: each
     * worker gets two of six requests) */
    char log[512], base[64];
    int port = harness_free_port();
    snprintf(base, sizeof base, "http://127.0.0.1:%d", port);
    snprintf(log, sizeof log, "%s/fe-%s.log", g_dir, ns);
    fleet_env_t fenv = {.ns = ns, .etcd = g_etcd.url, .nats = g_nats.url};
    fleet_frontend_opts_t fo = {
        .model = g_model, .port = port, .stream_timeout = "30s", .log = log};
    pid_t fe = fleet_frontend_spawn(&fenv, &fo);
    ck_assert_int_gt(fe, 0);
    ck_assert(fleet_wait_healthy(base, "\"workers\":3", 20000));
    for (int i = 0; i < 6; i++) {
        char body[512], *resp = NULL;
        int off = snprintf(body, sizeof body, "{\"model\":\"tiny\",\"max_tokens\":2,\"prompt\":[");
        for (int t = 0; t < 70; t++)
            off += snprintf(body + off, sizeof body - (size_t)off, "%s%d", t ? "," : "",
                            (i * 37 + t * 11) % 400 + 1);
        snprintf(body + off, sizeof body - (size_t)off, "]}");
        long st = fleet_http(base, "/v1/completions", body, 30000, &resp);
        ck_assert_msg(st == 200, "%ld %s", st, resp);
        free(resp);
    }
    double fl = fleet_metric(base, "sluice_frontend_prefills_total{where=\"local\"}");
    double fr = fleet_metric(base, "sluice_frontend_prefills_total{where=\"remote\"}");
    ck_assert_double_eq(fl + fr, 6);
    ck_assert_double_ge(fr, 2);
    ck_assert_double_gt(fleet_metric(base, "sluice_frontend_kv_transfer_bytes_total"), 0);
    harness_kill(fe, SIGTERM, 5000);
    /* migrated output and min_tokens travel in the job too */
    g_min_tokens = 4;
    g_n_prior = 5;
    static result_t m_off[6], m_al[6];
    gen_many(b, off.subject, "moff", g_prompts + 16, g_lens + 16, 6, 6, m_off);
    gen_many(b, al.subject, "mal", g_prompts + 16, g_lens + 16, 6, 6, m_al);
    g_min_tokens = g_n_prior = 0;
    assert_same(m_off, m_al, 6, "migrated + min_tokens, always vs off");
    /* the remote path ran, on both sides, and nothing leaked */
    double remote = metric(&al, "sluice_worker_prefills_total{where=\"remote\"}");
    ck_assert_double_ge(remote, 2 * NPROMPT - 2 + 6);
    ck_assert_double_ge(metric(&au, "sluice_worker_prefills_total{where=\"remote\"}"), 10);
    ck_assert_double_ge(metric(&au, "sluice_worker_prefills_total{where=\"local\"}"), 10);
    ck_assert_double_eq(metric(&off, "sluice_worker_prefills_total{where=\"remote\"}"), 0);
    ck_assert_double_gt(metric(&al, "sluice_worker_kv_transfer_bytes_total"), 0);
    /* over TCP every byte went by kv_transfer's active messages (UCX would
     * emulate puts); over shared memory into the allocated pool, by puts */
    if (env == ENV_TCP)
        ck_assert_double_eq(metric(&al, "sluice_worker_kv_transfer_am_bytes_total"),
                            metric(&al, "sluice_worker_kv_transfer_bytes_total"));
    else
        ck_assert_double_eq(metric(&al, "sluice_worker_kv_transfer_am_bytes_total"), 0);
    ck_assert_double_ge(metric(&pf, "sluice_prefill_jobs_done_total"), remote);
    ck_assert_double_eq(metric(&pf, "sluice_prefill_jobs_failed_total"), 0);
    ck_assert_double_gt(metric(&pf, "sluice_prefill_transfer_bytes_total"), 0);
    ck_assert_double_gt(metric(&pf, "sluice_prefill_cached_tokens_total"), 0);
    ck_assert_double_gt(metric(&pf, "sluice_prefill_kv_events_total"), 0);
    ck_assert_double_eq(metric_wait(&pf, "sluice_prefill_kv_blocks_used", 0, 3000), 0);
    ck_assert_double_eq(metric_wait(&al, "sluice_worker_kv_blocks_used", 0, 3000), 0);
    ck_assert_double_eq(metric_wait(&au, "sluice_worker_kv_blocks_used", 0, 3000), 0);
    bus_free(b);
    stop(&au);
    stop(&al);
    stop(&off);
    stop(&pf);
}

START_TEST(test_identical_outputs_shm) {
    identical_outputs("dg-shm", ENV_SHM);
}
END_TEST

START_TEST(test_identical_outputs_tcp) {
    identical_outputs("dg-tcp", ENV_TCP);
}
END_TEST

/* kill -9 of the prefill worker with jobs in flight: same tokens, no leak.
 * Over TCP the writes go by kv_transfer's active messages; with UCX's
 * emulated puts a writer killed mid-put aborted the decode worker. */
static void kill_prefill_worker(const char *ns, char *const *env) {
    ck_assert(g_ok);
    prompts_init();
    proc_t pf = {0}, off = {0}, al = {0};
    char lpf[64], loff[64], lal[64], lpf2[64];
    snprintf(lpf, sizeof lpf, "%s-pf", ns);
    snprintf(loff, sizeof loff, "%s-off", ns);
    snprintf(lal, sizeof lal, "%s-al", ns);
    snprintf(lpf2, sizeof lpf2, "%s-pf2", ns);
    start_prefill(&pf, ns, "--max-batch-tokens 16", env, lpf);
    start_decode(&off, ns, "--disagg off", env, loff);
    start_decode(&al, ns, "--disagg always --prefill-timeout 1500ms", env, lal);
    ck_assert_double_eq(metric_wait(&al, "sluice_worker_prefill_workers", 1, 5000), 1);
    double idle = metric(&al, "sluice_worker_kv_blocks_used");
    ck_assert_double_eq(idle, 0);
    bus_t *b = bus_open();
    static result_t ref[12], got[12];
    gen_many(b, off.subject, "ref", g_prompts + 12, g_lens + 12, 12, 6, ref);
    /* Hold the prefill worker until all 12 jobs wait in it, then let it run
     * and kill it while it computes and writes. */
    kill(pf.pid, SIGSTOP);
    bus_stream_t *s[12];
    for (size_t i = 0; i < 12; i++) {
        char id[32];
        snprintf(id, sizeof id, "k-%zu", i);
        ck_assert_int_eq(gen_open(b, al.subject, id, g_prompts[12 + i], g_lens[12 + i], 6, &s[i]),
                         0);
    }
    ck_assert_double_eq(metric_wait(&al, "sluice_worker_remote_prefills_inflight", 12, 5000), 12);
    kill(pf.pid, SIGCONT);
    /* over TCP, let the first writes start: kill while they run */
    double bytes0 = metric(&al, "sluice_worker_kv_transfer_bytes_total");
    if (env == ENV_TCP) {
        for (long long t0 = harness_now_ms(); harness_now_ms() - t0 < 3000;) {
            if (metric(&al, "sluice_worker_kv_transfer_bytes_total") > bytes0) break;
        }
    } else {
        harness_sleep_ms(1);
    }
    if (env == ENV_TCP) /* some writes done, the rest in flight or to come */
        ck_assert_double_gt(metric(&al, "sluice_worker_kv_transfer_bytes_total"), bytes0);
    harness_kill(pf.pid, SIGKILL, 1000);
    pf.pid = 0;
    for (size_t i = 0; i < 12; i++) {
        gen_collect(s[i], &got[i]);
        bus_stream_free(s[i]);
        ck_assert_msg(got[i].rc == 0 && got[i].err_code == 0, "request %zu failed", i);
    }
    assert_same(ref, got, 12, "after kill -9 of the prefill worker");
    ck_assert_int_eq(waitpid(al.pid, NULL, WNOHANG), 0); /* the decode worker lives */
    ck_assert_double_gt(
        metric(&al, "sluice_worker_remote_prefill_failures_total{reason=\"timeout\"}"), 0);
    ck_assert_double_eq(metric_wait(&al, "sluice_worker_kv_blocks_used", idle, 3000), idle);
    ck_assert_double_eq(metric(&al, "sluice_worker_remote_prefills_inflight"), 0);
    /* once the lease is gone, requests run locally without waiting */
    ck_assert_double_eq(metric_wait(&al, "sluice_worker_prefill_workers", 0, 8000), 0);
    result_t one;
    long long t0 = harness_now_ms();
    gen_many(b, al.subject, "after", g_prompts + 20, g_lens + 20, 1, 6, &one);
    ck_assert_int_lt(harness_now_ms() - t0, 1000);
    /* A new prefill worker serves this decode worker again: nothing the
     * killed writer left behind blocks later transfers into its KV pool
     * (test_kv_transfer shows why the pool is UCX-allocated: a registered
     * one is wedged by a writer killed in the middle of a put). */
    double remote0 = metric(&al, "sluice_worker_prefills_total{where=\"remote\"}");
    double fail0 = metric(&al, "sluice_worker_remote_prefill_failures_total{reason=\"timeout\"}");
    start_prefill(&pf, ns, "--max-batch-tokens 16", env, lpf2);
    ck_assert_double_eq(metric_wait(&al, "sluice_worker_prefill_workers", 1, 5000), 1);
    static result_t again[12];
    gen_many(b, al.subject, "again", g_prompts + 12, g_lens + 12, 12, 6, again);
    assert_same(ref, again, 12, "with a new prefill worker");
    ck_assert_double_ge(metric(&al, "sluice_worker_prefills_total{where=\"remote\"}"),
                        remote0 + 11);
    ck_assert_double_eq(
        metric(&al, "sluice_worker_remote_prefill_failures_total{reason=\"timeout\"}"), fail0);
    bus_free(b);
    stop(&pf);
    stop(&al);
    stop(&off);
}

START_TEST(test_kill_prefill_worker) {
    kill_prefill_worker("dg-kill", ENV_SHM);
}
END_TEST

START_TEST(test_kill_prefill_worker_tcp) {
    kill_prefill_worker("dg-kill-tcp", ENV_TCP);
}
END_TEST

/* A request cancelled while its remote prefill runs: the client gets its
 * final chunk at once, the blocks stay reserved until the prefill worker has
 * answered (a late write must not land in reused blocks), then return. */
START_TEST(test_cancel_during_remote_prefill) {
    ck_assert(g_ok);
    prompts_init();
    proc_t pf = {0}, d = {0};
    start_prefill(&pf, "dg-cancel", NULL, ENV_SHM, "cancel-pf");
    start_decode(&d, "dg-cancel", "--disagg always --prefill-timeout 20s", ENV_SHM, "cancel-d");
    ck_assert_double_eq(metric_wait(&d, "sluice_worker_prefill_workers", 1, 5000), 1);
    bus_t *b = bus_open();
    kill(pf.pid, SIGSTOP);
    bus_stream_t *s = NULL;
    ck_assert_int_eq(gen_open(b, d.subject, "cx-1", g_prompts[23], g_lens[23], 4, &s), 0);
    ck_assert_double_eq(metric_wait(&d, "sluice_worker_remote_prefills_inflight", 1, 3000), 1);
    double reserved = metric(&d, "sluice_worker_kv_blocks_used");
    ck_assert_double_ge(reserved, (double)(g_lens[23] / 16));
    Sluice__V1__CancelRequest c = SLUICE__V1__CANCEL_REQUEST__INIT;
    c.version = 1;
    c.request_id = "cx-1";
    char subj[BUS_SUBJECT_MAX];
    ck_assert_int_eq(
        bus_subject_instance(subj, sizeof subj, "dg-cancel", "backend", "cancel", (uint64_t)d.id),
        0);
    ck_assert_int_eq(bus_publish_proto(b, subj, &c.base), 0);
    result_t r;
    gen_collect(s, &r);
    bus_stream_free(s);
    ck_assert_int_eq(r.finish, SLUICE__V1__FINISH_REASON__FINISH_REASON_CANCELLED);
    harness_sleep_ms(200);
    ck_assert_double_eq(metric(&d, "sluice_worker_kv_blocks_used"), reserved); /* still held */
    kill(pf.pid, SIGCONT);
    ck_assert_double_eq(metric_wait(&d, "sluice_worker_kv_blocks_used", 0, 5000), 0);
    ck_assert_double_eq(metric_wait(&d, "sluice_worker_remote_prefills_inflight", 0, 3000), 0);
    /* the worker still serves remotely */
    gen_many(b, d.subject, "cx-2", g_prompts + 21, g_lens + 21, 1, 4, &r);
    ck_assert_double_eq(metric(&d, "sluice_worker_prefills_total{where=\"remote\"}"), 1);
    bus_free(b);
    stop(&d);
    stop(&pf);
}
END_TEST

/* --disagg auto: a saturated prefill queue sends the next long prompt to the
 * local path at once; short prompts never go remote. */
START_TEST(test_auto_saturation) {
    ck_assert(g_ok);
    prompts_init();
    proc_t pf = {0}, d = {0};
    start_prefill(&pf, "dg-sat", NULL, ENV_SHM, "sat-pf");
    start_decode(&d, "dg-sat",
                 "--disagg auto --max-local-prefill 64 --prefill-queue-max 1 --prefill-timeout 20s",
                 ENV_SHM, "sat-d");
    ck_assert_double_eq(metric_wait(&d, "sluice_worker_prefill_workers", 1, 5000), 1);
    bus_t *b = bus_open();
    kill(pf.pid, SIGSTOP);
    bus_stream_t *s = NULL;
    ck_assert_int_eq(gen_open(b, d.subject, "sat-1", g_prompts[23], g_lens[23], 4, &s), 0);
    ck_assert_double_eq(metric_wait(&d, "sluice_worker_remote_prefills_inflight", 1, 3000), 1);
    result_t r[3];
    long long t0 = harness_now_ms();
    gen_many(b, d.subject, "sat-2", g_prompts + 22, g_lens + 22, 1, 4, &r[0]); /* queue full */
    gen_many(b, d.subject, "sat-3", g_prompts + 2, g_lens + 2, 1, 4, &r[1]);   /* 16 tokens */
    ck_assert_int_lt(harness_now_ms() - t0, 3000);
    ck_assert_double_eq(metric(&d, "sluice_worker_prefills_total{where=\"local\"}"), 2);
    kill(pf.pid, SIGCONT);
    gen_collect(s, &r[2]);
    bus_stream_free(s);
    ck_assert_int_eq(r[2].err_code, 0);
    ck_assert_double_eq(metric(&d, "sluice_worker_prefills_total{where=\"remote\"}"), 1);
    bus_free(b);
    stop(&d);
    stop(&pf);
}
END_TEST

/* A decode worker that dies while its job waits: the prefill worker drops the
 * job, frees the blocks, stays healthy and serves the next decode worker. */
START_TEST(test_decode_worker_vanishes) {
    ck_assert(g_ok);
    prompts_init();
    proc_t pf = {0}, d1 = {0}, d2 = {0};
    start_prefill(&pf, "dg-van", NULL, ENV_TCP, "van-pf");
    start_decode(&d1, "dg-van", "--disagg always --prefill-timeout 20s", ENV_TCP, "van-d1");
    ck_assert_double_eq(metric_wait(&d1, "sluice_worker_prefill_workers", 1, 5000), 1);
    bus_t *b = bus_open();
    kill(pf.pid, SIGSTOP); /* the job waits in the prefill worker's socket */
    bus_stream_t *s = NULL;
    ck_assert_int_eq(gen_open(b, d1.subject, "van-1", g_prompts[23], g_lens[23], 4, &s), 0);
    ck_assert_double_eq(metric_wait(&d1, "sluice_worker_remote_prefills_inflight", 1, 3000), 1);
    harness_kill(d1.pid, SIGKILL, 1000);
    d1.pid = 0;
    kill(pf.pid, SIGCONT);
    bus_stream_free(s);
    ck_assert_double_eq(metric_wait(&pf, "sluice_prefill_jobs_failed_total", 1, 10000), 1);
    ck_assert_double_eq(metric_wait(&pf, "sluice_prefill_kv_blocks_used", 0, 3000), 0);
    ck_assert_double_eq(metric(&pf, "sluice_prefill_inflight_jobs"), 0);
    ck_assert_int_eq(fleet_http(pf.base, "/health", NULL, 3000, NULL), 200);
    /* the next decode worker is served remotely */
    start_decode(&d2, "dg-van", "--disagg always", ENV_TCP, "van-d2");
    ck_assert_double_eq(metric_wait(&d2, "sluice_worker_prefill_workers", 1, 5000), 1);
    result_t r;
    gen_many(b, d2.subject, "van-2", g_prompts + 22, g_lens + 22, 1, 4, &r);
    ck_assert_double_eq(metric(&d2, "sluice_worker_prefills_total{where=\"remote\"}"), 1);
    ck_assert_double_eq(metric(&pf, "sluice_prefill_jobs_done_total"), 1);
    bus_free(b);
    stop(&d2);
    stop(&pf);
}
END_TEST

/* The test stands between decode and prefill worker: it registers a fake
 * prefill instance in the decode worker's namespace, takes its jobs, spoils
 * them and forwards them to a real prefill worker in another namespace. */
typedef struct relay {
    bus_t *bus;
    char to[BUS_SUBJECT_MAX];
    atomic_int mode; /* 0 forward, 1 corrupt rkey, 2 stale rkey, 3 truncated address,
                        4 block_bytes, 5 swallow, 6 dst count, 7 other transfer_tag (the
                        PrefillDone is stale: ignored, then a timeout) */
    atomic_int seen;
    uint8_t stale[4096];
    size_t stale_len;
} relay_t;

static void relay_on_job(bus_t *bus, const bus_msg_t *msg, void *ud) {
    (void)bus;
    relay_t *rl = ud;
    Sluice__V1__PrefillJob *m = NULL;
    if (bus_msg_unpack(msg, &sluice__v1__prefill_job__descriptor, (ProtobufCMessage **)&m)) return;
    int mode = atomic_load(&rl->mode);
    atomic_fetch_add(&rl->seen, 1);
    uint8_t *rk = malloc(m->rkey.len + 1);
    memcpy(rk, m->rkey.data, m->rkey.len);
    ProtobufCBinaryData orig_rkey = m->rkey, orig_addr = m->ucx_address;
    size_t orig_ndst = m->n_dst_block_ids;
    m->rkey.data = rk;
    if (mode == 1) rk[m->rkey.len / 2] ^= 0x40;
    if (mode == 2) m->rkey = (ProtobufCBinaryData){.data = rl->stale, .len = rl->stale_len};
    if (mode == 3) m->ucx_address.len /= 2;
    if (mode == 4) m->block_bytes += 4;
    if (mode == 6) m->n_dst_block_ids--;
    if (mode == 7) m->transfer_tag ^= 0x8000;
    if (mode != 5) bus_publish_proto(rl->bus, rl->to, &m->base);
    m->rkey = orig_rkey;
    m->ucx_address = orig_addr;
    m->n_dst_block_ids = orig_ndst;
    free(rk);
    sluice__v1__prefill_job__free_unpacked(m, NULL);
}

/* Captures PrefillDone replies sent to the test. */
typedef struct cap {
    atomic_int n;
    atomic_int code;
} cap_t;

static void on_reply(bus_t *bb, const bus_msg_t *msg, void *ud) {
    (void)bb;
    cap_t *cap = ud;
    Sluice__V1__PrefillDone *d = NULL;
    if (bus_msg_unpack(msg, &sluice__v1__prefill_done__descriptor, (ProtobufCMessage **)&d)) return;
    atomic_store(&cap->code, d->error ? d->error->code : 0);
    atomic_fetch_add(&cap->n, 1);
    sluice__v1__prefill_done__free_unpacked(d, NULL);
}

START_TEST(test_bad_descriptors_fall_back) {
    ck_assert(g_ok);
    prompts_init();
    proc_t pf = {0}, d = {0}, off = {0};
    start_prefill(&pf, "dg-real", NULL, ENV_SHM, "bad-pf");
    start_decode(&off, "dg-bad", "--disagg off", ENV_SHM, "bad-off");
    start_decode(&d, "dg-bad", "--disagg always --prefill-timeout 1s", ENV_SHM, "bad-d");
    /* a stale rkey: a well-formed blob of another incarnation */
    relay_t rl = {0};
    kvx_agent_t *ag = NULL;
    kvx_region_t *rg = NULL;
    static uint8_t mem[4096];
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    ck_assert_int_eq(kvx_agent_new(NULL, &ag), 0);
    ck_assert_int_eq(kvx_region_register(ag, mem, 1024, 4, NULL, &rg), 0);
    ck_assert_int_eq(kvx_region_rkey_export(rg, &blob, &blob_len), 0);
    ck_assert_uint_le(blob_len, sizeof rl.stale);
    memcpy(rl.stale, blob, blob_len);
    rl.stale_len = blob_len;
    free(blob);
    kvx_region_free(rg);
    kvx_agent_free(ag);

    rl.bus = bus_open();
    bus_t *b = bus_open();
    ck_assert_int_eq(bus_subject_endpoint(rl.to, sizeof rl.to, "dg-real", "prefill", "jobs"), 0);
    char from[BUS_SUBJECT_MAX];
    ck_assert_int_eq(bus_subject_endpoint(from, sizeof from, "dg-bad", "prefill", "jobs"), 0);
    bus_sub_t *sub = NULL;
    ck_assert_int_eq(bus_subscribe(rl.bus, from, "prefill", relay_on_job, &rl, &sub), 0);
    bus_flush(rl.bus, 2000);
    discovery_opts_t dopts = {.etcd_url = g_etcd.url, .ns = "dg-bad", .ttl_s = 5};
    discovery_t *fake = NULL;
    ck_assert_int_eq(discovery_open(&dopts, &fake), 0);
    ck_assert_int_eq(discovery_register(fake, "prefill", "jobs", "{\"model\":\"tiny\"}"), 0);
    ck_assert_double_eq(metric_wait(&d, "sluice_worker_prefill_workers", 1, 5000), 1);
    /* a prefill worker with another block size is not counted */
    discovery_t *other = NULL;
    ck_assert_int_eq(discovery_open(&dopts, &other), 0);
    ck_assert_int_eq(discovery_register(other, "prefill", "jobs", "{\"block_size\":32}"), 0);
    harness_sleep_ms(300);
    ck_assert_double_eq(metric(&d, "sluice_worker_prefill_workers"), 1);
    discovery_close(other);

    static result_t ref[8], got[8];
    gen_many(b, off.subject, "bref", g_prompts + 14, g_lens + 14, 8, 5, ref);
    double failed_before = 0;
    double stale0 = metric(&d, "sluice_worker_prefill_done_ignored_total");
    for (int mode = 0; mode <= 7; mode++) {
        atomic_store(&rl.mode, mode);
        int seen = atomic_load(&rl.seen);
        char tag[16];
        snprintf(tag, sizeof tag, "bad%d", mode);
        gen_many(b, d.subject, tag, g_prompts + 14 + mode, g_lens + 14 + mode, 1, 5, &got[mode]);
        ck_assert_int_eq(atomic_load(&rl.seen), seen + 1);
        double remote = metric(&d, "sluice_worker_prefills_total{where=\"remote\"}");
        double failed = metric(&pf, "sluice_prefill_jobs_failed_total");
        if (mode == 0) {
            ck_assert_double_eq(remote, 1);
        } else {
            ck_assert_double_eq(remote, 1); /* every spoiled job fell back to local */
            if (mode != 5 && mode != 7) ck_assert_double_eq(failed, failed_before + 1);
        }
        failed_before = failed;
    }
    assert_same(ref, got, 8, "spoiled jobs vs local");
    ck_assert_double_eq(metric(&d, "sluice_worker_remote_prefill_failures_total{reason=\"error\"}"),
                        5);
    ck_assert_double_eq(
        metric(&d, "sluice_worker_remote_prefill_failures_total{reason=\"timeout\"}"), 2);
    /* the answer under another tag was ignored as stale */
    ck_assert_double_eq(metric(&d, "sluice_worker_prefill_done_ignored_total"), stale0 + 1);
    ck_assert_double_eq(metric_wait(&d, "sluice_worker_kv_blocks_used", 0, 3000), 0);
    ck_assert_double_eq(metric_wait(&pf, "sluice_prefill_kv_blocks_used", 0, 3000), 0);

    /* malformed bytes and jobs the worker must refuse outright */
    double mal = metric(&pf, "sluice_prefill_malformed_total");
    ck_assert_int_eq(bus_publish(b, rl.to, "\xff\xff\xff", 3), 0);
    Sluice__V1__PrefillJob j = SLUICE__V1__PREFILL_JOB__INIT;
    uint32_t toks[3] = {1, 2, 999999}, dst[1] = {0};
    j.version = 1;
    j.request_id = "refuse";
    j.token_ids = toks;
    j.n_token_ids = 3;
    j.dst_block_ids = dst;
    j.n_dst_block_ids = 1;
    char inbox[64];
    snprintf(inbox, sizeof inbox, "test.disagg.reply.%d", getpid());
    j.reply_subject = inbox;
    bus_sub_t *rs = NULL;
    static cap_t cap;
    atomic_store(&cap.n, 0);
    ck_assert_int_eq(bus_subscribe(b, inbox, NULL, on_reply, &cap, &rs), 0);
    bus_flush(b, 2000);
    ck_assert_int_eq(bus_publish_proto(b, rl.to, &j.base), 0);
    long long end = harness_now_ms() + 3000;
    while (atomic_load(&cap.n) < 1 && harness_now_ms() < end) harness_sleep_ms(10);
    ck_assert_int_eq(atomic_load(&cap.n), 1);
    ck_assert_int_eq(atomic_load(&cap.code), SL_EINVAL);
    ck_assert_double_eq(metric_wait(&pf, "sluice_prefill_malformed_total", mal + 1, 2000), mal + 1);
    bus_sub_free(rs);
    ck_assert_int_eq(fleet_http(pf.base, "/health", NULL, 3000, NULL), 200);

    discovery_close(fake);
    bus_sub_free(sub);
    bus_free(rl.bus);
    bus_free(b);
    stop(&d);
    stop(&off);
    stop(&pf);
}
END_TEST

START_TEST(test_bad_usage) {
    char bin[512], cmd[1200];
    harness_bin("sluice-prefill-worker", bin, sizeof bin);
    snprintf(cmd, sizeof cmd, "%s --no-such-flag >/dev/null 2>&1", bin);
    ck_assert_int_eq(WEXITSTATUS(system(cmd)), 2);
    snprintf(cmd, sizeof cmd, "%s >/dev/null 2>&1", bin);
    ck_assert_int_eq(WEXITSTATUS(system(cmd)), 2);
    snprintf(cmd, sizeof cmd, "%s --help | grep -q transfer-timeout", bin);
    ck_assert_int_eq(system(cmd), 0);
    harness_bin("sluice-decode-worker", bin, sizeof bin);
    snprintf(cmd, sizeof cmd, "%s --model x --disagg sometimes >/dev/null 2>&1", bin);
    ck_assert_int_eq(WEXITSTATUS(system(cmd)), 2);
}
END_TEST

int main(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    sl_log_init("test");
    sl_log_set_level(SL_LOG_ERROR);
    g_ok = fleet_fixture_start("sl-dg", g_dir, sizeof g_dir, g_model, sizeof g_model, &g_etcd,
                               &g_nats) == 0;
    Suite *s = suite_create("disagg");
    TCase *tc = tcase_create("disagg");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_identical_outputs_shm);
    tcase_add_test(tc, test_identical_outputs_tcp);
    tcase_add_test(tc, test_kill_prefill_worker);
    tcase_add_test(tc, test_kill_prefill_worker_tcp);
    tcase_add_test(tc, test_decode_worker_vanishes);
    tcase_add_test(tc, test_cancel_during_remote_prefill);
    tcase_add_test(tc, test_auto_saturation);
    tcase_add_test(tc, test_bad_descriptors_fall_back);
    tcase_add_test(tc, test_bad_usage);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    fleet_fixture_stop(g_dir, &g_etcd, &g_nats);
    return nf == 0 ? 0 : 1;
}
