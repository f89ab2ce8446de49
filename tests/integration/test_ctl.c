/* test_ctl.c - sluice-ctl against a real etcd and nats-server.
 *
 * Registers instances through discovery (each with its own lease), runs the
 * real binary and checks what it prints: ls (table and JSON, invalid records
 * reported), watch (UP/JOIN/LEAVE), events (KvEventBatch and LoadMetrics
 * decoded, malformed counted), bad usage and unreachable servers.
 */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/bus.h"
#include "common/runtime/discovery.h"
#include "common/runtime/etcd.h"
#include "proto/sluice.pb-c.h"
#include "tests/harness/harness.h"

#include <check.h>
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static harness_etcd_t g_etcd;
static harness_nats_t g_nats;
static char g_dir[256];

/* Reads the whole file (up to 256 KiB) into a static buffer. */
static const char *slurp(const char *path) {
    static char buf[1 << 18];
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f) return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* Runs sluice-ctl with args (NULL-terminated) and output to a fresh log.
 * Returns the pid; *log receives the log path. */
static pid_t ctl_spawn(const char *const *args, char *log, size_t loglen) {
    static int seq;
    snprintf(log, loglen, "%s/ctl-%d.log", g_dir, seq++);
    unlink(log);
    char *argv[32] = {"sluice-ctl"};
    int n = 1;
    for (size_t i = 0; args[i] && n < 31; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    pid_t pid = harness_spawn(argv, NULL, log);
    ck_assert_int_gt(pid, 0);
    return pid;
}

/* Waits up to timeout_ms for pid to exit; returns its exit code (or -1). */
static int ctl_wait_exit(pid_t pid, int timeout_ms) {
    int st = 0;
    long long end = harness_now_ms() + timeout_ms;
    while (harness_now_ms() < end) {
        if (harness_exited(pid, &st)) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        harness_sleep_ms(20);
    }
    harness_kill(pid, SIGKILL, 1000);
    return -1;
}

static int ctl_run(const char *const *args, char *log, size_t loglen) {
    return ctl_wait_exit(ctl_spawn(args, log, loglen), 20000);
}

/* Waits until the log contains needle. */
static bool log_wait(const char *log, const char *needle, int timeout_ms) {
    long long end = harness_now_ms() + timeout_ms;
    while (harness_now_ms() < end) {
        if (strstr(slurp(log), needle)) return true;
        harness_sleep_ms(20);
    }
    return false;
}

/* Registers component/endpoint in ns through discovery, with the metadata a
 * worker announces. Returns the discovery handle (close it to leave); *id is
 * the instance id. */
static discovery_t *register_instance(const char *ns, const char *component, const char *endpoint,
                                      const char *model, int kv_blocks, int64_t *id) {
    discovery_opts_t o = {.etcd_url = g_etcd.url, .ns = ns, .ttl_s = 10};
    discovery_t *d = NULL;
    ck_assert_int_eq(discovery_open(&o, &d), 0);
    char meta[256];
    snprintf(meta, sizeof meta, "{\"model\":\"%s\",\"block_size\":16,\"kv_blocks\":%d}", model,
             kv_blocks);
    ck_assert_int_eq(discovery_register(d, component, endpoint, meta), 0);
    *id = discovery_instance_id(d);
    ck_assert_int_gt(*id, 0);
    return d;
}

static const char *hostname(void) {
    static char h[256];
    if (gethostname(h, sizeof h) != 0) snprintf(h, sizeof h, "?");
    h[sizeof h - 1] = 0;
    return h;
}

START_TEST(test_ls_table_and_json) {
    etcd_t *c = NULL;
    ck_assert_int_eq(etcd_open(g_etcd.url, 3000, &c), 0);
    int64_t b1, b2, r1, other;
    discovery_t *d1 = register_instance("lsns", "backend", "generate", "llama-3-8b", 4096, &b1);
    discovery_t *d2 = register_instance("lsns", "backend", "generate", "llama-3-8b", 2048, &b2);
    discovery_t *d3 = register_instance("lsns", "router", "route", "", 0, &r1);
    discovery_t *d4 = register_instance("otherns", "backend", "generate", "qwen", 1, &other);
    /* records an operator must hear about, not crash on */
    const char *bad = "{not json";
    ck_assert_int_eq(
        etcd_put(c, "sluice/v1/lsns/backend/generate/00000000000000ff", bad, strlen(bad), 0, NULL),
        0);
    const char *liar = "{\"component\":\"router\",\"endpoint\":\"generate\"}";
    ck_assert_int_eq(etcd_put(c, "sluice/v1/lsns/backend/generate/00000000000000fe", liar,
                              strlen(liar), 0, NULL),
                     0);
    const char *nosubj = "{\"component\":\"backend\",\"endpoint\":\"generate\"}";
    ck_assert_int_eq(etcd_put(c, "sluice/v1/lsns/backend/generate/00000000000000fd", nosubj,
                              strlen(nosubj), 0, NULL),
                     0);
    ck_assert_int_eq(etcd_put(c, "sluice/v1/lsns/short", "{}", 2, 0, NULL), 0);

    char log[320], id[24];
    const char *args[] = {"ls", "--etcd", g_etcd.url, "--namespace", "lsns", NULL};
    ck_assert_int_eq(ctl_run(args, log, sizeof log), 0);
    const char *out = slurp(log);
    ck_assert_msg(strstr(out, "backend (2)\n"), "%s", out);
    ck_assert_msg(strstr(out, "router (1)\n"), "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "INSTANCE"));
    ck_assert_ptr_nonnull(strstr(out, "KV_BLOCKS"));
    snprintf(id, sizeof id, "%016" PRIx64, (uint64_t)b1);
    ck_assert_ptr_nonnull(strstr(out, id));
    snprintf(id, sizeof id, "%016" PRIx64, (uint64_t)b2);
    ck_assert_ptr_nonnull(strstr(out, id));
    snprintf(id, sizeof id, "%016" PRIx64, (uint64_t)r1);
    ck_assert_ptr_nonnull(strstr(out, id));
    snprintf(id, sizeof id, "%016" PRIx64, (uint64_t)other);
    ck_assert_msg(!strstr(out, id), "other namespace leaked into ls:\n%s", out);
    ck_assert_ptr_nonnull(strstr(out, "llama-3-8b"));
    ck_assert_ptr_nonnull(strstr(out, "4096"));
    char pid[32];
    snprintf(pid, sizeof pid, "  %d  ", (int)getpid());
    ck_assert_ptr_nonnull(strstr(out, pid));
    ck_assert_ptr_nonnull(strstr(out, "3 instances in namespace lsns"));
    ck_assert_ptr_nonnull(strstr(out, "4 invalid record(s) skipped"));
    ck_assert_ptr_nonnull(strstr(out, "not a JSON object"));
    ck_assert_ptr_nonnull(strstr(out, "disagree with the key"));
    ck_assert_ptr_nonnull(strstr(out, "00000000000000fd: rejected by discovery"));
    ck_assert_ptr_nonnull(strstr(out, "sluice/v1/lsns/short: key is not"));
    /* components in key order: backend before router */
    ck_assert(strstr(out, "backend (2)") < strstr(out, "router (1)"));

    /* --component filter */
    const char *args_c[] = {"ls",   "--etcd",      g_etcd.url, "--namespace",
                            "lsns", "--component", "router",   NULL};
    ck_assert_int_eq(ctl_run(args_c, log, sizeof log), 0);
    out = slurp(log);
    ck_assert_ptr_null(strstr(out, "backend ("));
    ck_assert_ptr_nonnull(strstr(out, "router (1)"));

    /* --json: one document on stdout */
    const char *args_j[] = {"ls", "--json", "--etcd", g_etcd.url, "--namespace", "lsns", NULL};
    ck_assert_int_eq(ctl_run(args_j, log, sizeof log), 0);
    out = slurp(log);
    const char *doc = strstr(out, "{\"components\"");
    ck_assert_msg(doc != NULL, "%s", out);
    const char *nl = strchr(doc, '\n');
    cJSON *j = cJSON_ParseWithLength(doc, nl ? (size_t)(nl - doc) : strlen(doc));
    ck_assert_ptr_nonnull(j);
    cJSON *backend = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "components"), "backend");
    ck_assert_int_eq(cJSON_GetArraySize(backend), 2);
    cJSON *first = cJSON_GetArrayItem(backend, 0);
    ck_assert_str_eq(cJSON_GetObjectItem(first, "model")->valuestring, "llama-3-8b");
    ck_assert_int_eq(cJSON_GetObjectItem(first, "block_size")->valueint, 16);
    ck_assert_ptr_nonnull(cJSON_GetObjectItem(first, "key"));
    ck_assert_str_eq(cJSON_GetObjectItem(first, "host")->valuestring, hostname());
    ck_assert_int_eq(cJSON_GetObjectItem(first, "pid")->valueint, (int)getpid());
    ck_assert_int_eq(cJSON_GetObjectItem(j, "count")->valueint, 3);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "invalid")), 4);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "namespace")->valuestring, "lsns");
    cJSON_Delete(j);

    /* closing discovery (revoking the lease) removes the instance from the next ls */
    discovery_close(d2);
    ck_assert_int_eq(ctl_run(args, log, sizeof log), 0);
    out = slurp(log);
    ck_assert_ptr_nonnull(strstr(out, "backend (1)\n"));
    snprintf(id, sizeof id, "%016" PRIx64, (uint64_t)b2);
    ck_assert_ptr_null(strstr(out, id));

    /* empty namespace */
    const char *args_e[] = {"ls", "--etcd", g_etcd.url, "--namespace", "empty", NULL};
    ck_assert_int_eq(ctl_run(args_e, log, sizeof log), 0);
    ck_assert_ptr_nonnull(strstr(slurp(log), "no instances in namespace empty"));
    discovery_close(d1);
    discovery_close(d3);
    discovery_close(d4);
    etcd_free(c);
}
END_TEST

START_TEST(test_watch_join_leave) {
    int64_t pre, joined;
    discovery_t *dpre = register_instance("wns", "frontend", "http", "", 0, &pre);
    char log[320], id[24];
    const char *args[] = {"watch",   "--etcd", g_etcd.url,  "--namespace", "wns",
                          "--count", "2",      "--timeout", "15s",         NULL};
    pid_t pid = ctl_spawn(args, log, sizeof log);
    ck_assert_msg(log_wait(log, "watching 1 instance(s)", 10000), "%s", slurp(log));
    discovery_t *dj = register_instance("wns", "backend", "generate", "tiny", 64, &joined);
    harness_sleep_ms(100);
    discovery_close(dj); /* revokes the lease: a LEAVE at once */
    ck_assert_int_eq(ctl_wait_exit(pid, 15000), 0);
    const char *out = slurp(log);
    snprintf(id, sizeof id, "%016" PRIx64, (uint64_t)pre);
    char want[512];
    snprintf(want, sizeof want, "UP     frontend/http %s", id);
    ck_assert_msg(strstr(out, want), "%s", out);
    snprintf(id, sizeof id, "%016" PRIx64, (uint64_t)joined);
    snprintf(want, sizeof want, "JOIN   backend/generate %s host=%.64s pid=%d model=tiny", id,
             hostname(), (int)getpid());
    ck_assert_msg(strstr(out, want), "want '%s' in:\n%s", want, out);
    /* the LEAVE names what left, from the last record seen */
    snprintf(want, sizeof want, "LEAVE  backend/generate %s host=", id);
    ck_assert_msg(strstr(out, want), "%s", out);
    ck_assert(strstr(out, "JOIN") < strstr(out, "LEAVE"));

    /* --count not reached before --timeout: exit 1 */
    const char *args_t[] = {"watch",   "--etcd", g_etcd.url,  "--namespace", "wns",
                            "--count", "5",      "--timeout", "300ms",       NULL};
    ck_assert_int_eq(ctl_run(args_t, log, sizeof log), 1);
    ck_assert_ptr_nonnull(strstr(slurp(log), "0 of 5 events"));

    /* --json: one object per line; no --count, so the timeout is a normal end */
    const char *args_j[] = {"watch", "--json",    "--etcd", g_etcd.url, "--namespace",
                            "wns",   "--timeout", "500ms",  NULL};
    ck_assert_int_eq(ctl_run(args_j, log, sizeof log), 0);
    out = slurp(log);
    const char *line = strstr(out, "{\"time\"");
    ck_assert_msg(line != NULL, "%s", out);
    const char *nl = strchr(line, '\n');
    cJSON *j = cJSON_ParseWithLength(line, nl ? (size_t)(nl - line) : strlen(line));
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "event")->valuestring, "UP");
    cJSON *rec = cJSON_GetObjectItem(j, "record");
    ck_assert_str_eq(cJSON_GetObjectItem(rec, "component")->valuestring, "frontend");
    snprintf(id, sizeof id, "%016" PRIx64, (uint64_t)pre);
    ck_assert_str_eq(cJSON_GetObjectItem(rec, "instance_id")->valuestring, id);
    cJSON_Delete(j);
    discovery_close(dpre);
}
END_TEST

static void publish_batch(bus_t *bus, const char *subject) {
    Sluice__V1__KvStoredBlock b1 = SLUICE__V1__KV_STORED_BLOCK__INIT;
    Sluice__V1__KvStoredBlock b2 = SLUICE__V1__KV_STORED_BLOCK__INIT;
    b1.block_hash = 0x1111;
    b1.sequence_hash = 0xaaaa;
    b2.block_hash = 0x2222;
    b2.sequence_hash = 0xbbbb;
    Sluice__V1__KvStoredBlock *blocks[] = {&b1, &b2};
    Sluice__V1__KvStored stored = SLUICE__V1__KV_STORED__INIT;
    stored.has_parent = true;
    stored.parent_hash = 0x9999;
    stored.n_blocks = 2;
    stored.blocks = blocks;
    uint64_t removed_hashes[] = {0xcccc};
    Sluice__V1__KvRemoved removed = SLUICE__V1__KV_REMOVED__INIT;
    removed.n_sequence_hashes = 1;
    removed.sequence_hashes = removed_hashes;
    Sluice__V1__KvCleared cleared = SLUICE__V1__KV_CLEARED__INIT;
    Sluice__V1__KvEvent e1 = SLUICE__V1__KV_EVENT__INIT, e2 = SLUICE__V1__KV_EVENT__INIT,
                        e3 = SLUICE__V1__KV_EVENT__INIT;
    e1.data_case = SLUICE__V1__KV_EVENT__DATA_STORED;
    e1.stored = &stored;
    e2.data_case = SLUICE__V1__KV_EVENT__DATA_REMOVED;
    e2.removed = &removed;
    e3.data_case = SLUICE__V1__KV_EVENT__DATA_CLEARED;
    e3.cleared = &cleared;
    Sluice__V1__KvEvent *events[] = {&e1, &e2, &e3};
    Sluice__V1__KvEventBatch batch = SLUICE__V1__KV_EVENT_BATCH__INIT;
    batch.version = 1;
    batch.worker_id = 0xa1;
    batch.tier = SLUICE__V1__KV_TIER__KV_TIER_HOST;
    batch.event_id = 42;
    batch.n_events = 3;
    batch.events = events;
    batch.block_size = 16;
    batch.model = "llama";
    ck_assert_int_eq(bus_publish_proto(bus, subject, &batch.base), 0);
}

static void publish_load(bus_t *bus, const char *subject) {
    Sluice__V1__LoadMetrics l = SLUICE__V1__LOAD_METRICS__INIT;
    l.version = 1;
    l.worker_id = 0xb2;
    l.component = "backend";
    l.active_seqs = 3;
    l.waiting_seqs = 1;
    l.kv_blocks_total = 100;
    l.kv_blocks_used = 40;
    l.kv_blocks_cached = 7;
    l.kv_usage = 0.4f;
    l.requests_total = 12;
    l.tokens_per_s = 55.5;
    ck_assert_int_eq(bus_publish_proto(bus, subject, &l.base), 0);
}

/* A replica-sync event and a prefill job, printed through the generic form. */
static void publish_active_and_job(bus_t *bus) {
    Sluice__V1__ActiveSeqEvent a = SLUICE__V1__ACTIVE_SEQ_EVENT__INIT;
    uint64_t hs[2] = {1, 0xff};
    a.version = 1;
    a.router_id = 0xd4;
    a.request_id = "req-7";
    a.worker_id = 0xc3;
    a.kind = SLUICE__V1__ACTIVE_SEQ_EVENT__KIND__KIND_FREE;
    a.n_blocks = 5;
    a.n_seq_hashes = 2;
    a.seq_hashes = hs;
    ck_assert_int_eq(bus_publish_proto(bus, "sluice.evns.router.active", &a.base), 0);
    Sluice__V1__PrefillJob j = SLUICE__V1__PREFILL_JOB__INIT;
    Sluice__V1__SamplingParams sp = SLUICE__V1__SAMPLING_PARAMS__INIT;
    uint32_t toks[3] = {5, 6, 7}, dst[1] = {9};
    uint8_t addr[3] = {1, 2, 3};
    j.version = 1;
    j.request_id = "req-7";
    j.n_token_ids = 3;
    j.token_ids = toks;
    j.n_dst_block_ids = 1;
    j.dst_block_ids = dst;
    j.sampling = &sp;
    j.ucx_address.data = addr;
    j.ucx_address.len = 3;
    ck_assert_int_eq(bus_publish_proto(bus, "sluice.evns.prefill.jobs", &j.base), 0);
}

/* Starts `sluice-ctl events`: publishes garbage, a KvEventBatch, a LoadMetrics,
 * an ActiveSeqEvent and a PrefillJob to a running `sluice-ctl events` and returns its log. */
static const char *run_events(bool json, char *log, size_t loglen) {
    bus_t *bus = NULL;
    bus_opts_t bo = {.url = g_nats.url};
    ck_assert_int_eq(bus_connect(&bus, &bo), 0);
    const char *args[] = {
        "events",  "--nats", g_nats.url,  "--namespace", "evns",
        "--count", "4",      "--timeout", "15s",         json ? "--json" : "--no-json",
        NULL};
    pid_t pid = ctl_spawn(args, log, loglen);
    ck_assert_msg(log_wait(log, "subscribed to sluice.evns.kv_events and sluice.evns.load", 10000),
                  "%s", slurp(log));
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f}; /* truncated varint */
    ck_assert_int_eq(bus_publish(bus, "sluice.evns.kv_events", junk, sizeof junk), 0);
    publish_batch(bus, "sluice.evns.kv_events");
    publish_load(bus, "sluice.evns.load");
    publish_load(bus, "sluice.otherns.load"); /* not ours */
    publish_active_and_job(bus);
    ck_assert_int_eq(bus_flush(bus, 2000), 0);
    ck_assert_int_eq(ctl_wait_exit(pid, 15000), 0);
    bus_free(bus);
    return slurp(log);
}

START_TEST(test_events_text) {
    char log[320];
    const char *out = run_events(false, log, sizeof log);
    ck_assert_msg(strstr(out, "sluice.evns.kv_events MALFORMED 5 bytes (expected KvEventBatch"),
                  "%s", out);
    ck_assert_msg(strstr(out, "sluice.evns.kv_events KvEventBatch worker=00000000000000a1 "
                              "tier=host event_id=42 events=3 model=llama block_size=16"
                              " | stored parent=0000000000009999 blocks=2 "
                              "000000000000aaaa 000000000000bbbb"
                              " | removed 1 000000000000cccc | cleared\n"),
                  "%s", out);
    ck_assert_msg(strstr(out, "sluice.evns.load LoadMetrics worker=00000000000000b2 "
                              "component=backend active=3 waiting=1 kv_used=40/100 kv_cached=7 "
                              "kv_usage=0.400 pending_prefill=0 prefill_queue=0 requests=12 "
                              "tokens_per_s=55.5\n"),
                  "%s", out);
    ck_assert_msg(strstr(out, "sluice.evns.router.active ActiveSeqEvent {\"version\":1,"
                              "\"router_id\":\"00000000000000d4\",\"request_id\":\"req-7\","
                              "\"worker_id\":\"00000000000000c3\",\"kind\":\"KIND_FREE\","
                              "\"n_blocks\":5,\"overlap_blocks\":0,\"n_tokens\":0,"
                              "\"seq_hashes\":[\"0000000000000001\",\"00000000000000ff\"],"
                              "\"hot_prefix\":\"0000000000000000\"}\n"),
                  "%s", out);
    ck_assert_msg(strstr(out, "sluice.evns.prefill.jobs PrefillJob {"), "%s", out);
    ck_assert_msg(strstr(out, "\"token_ids\":[5,6,7]"), "%s", out);
    ck_assert_msg(strstr(out, "\"ucx_address\":\"AQID\""), "%s", out);
    ck_assert_msg(strstr(out, "\"sampling\":{"), "%s", out);
    ck_assert_ptr_null(strstr(out, "otherns"));
    ck_assert_ptr_nonnull(strstr(out, "4 decoded, 1 malformed"));
}
END_TEST

START_TEST(test_events_json) {
    char log[320];
    const char *out = run_events(true, log, sizeof log);
    int kv = 0, load = 0, bad = 0, active = 0, job = 0;
    for (const char *p = out; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (*p == '{') {
            cJSON *j = cJSON_ParseWithLength(p, n);
            ck_assert_msg(j != NULL, "bad JSON line: %.*s", (int)n, p);
            const char *type = cJSON_GetObjectItem(j, "type")->valuestring;
            if (strcmp(type, "KvEventBatch") == 0) {
                kv++;
                ck_assert_str_eq(cJSON_GetObjectItem(j, "worker_id")->valuestring,
                                 "00000000000000a1");
                ck_assert_str_eq(cJSON_GetObjectItem(j, "tier")->valuestring, "host");
                ck_assert_int_eq(cJSON_GetObjectItem(j, "event_id")->valueint, 42);
                cJSON *evs = cJSON_GetObjectItem(j, "events");
                ck_assert_int_eq(cJSON_GetArraySize(evs), 3);
                cJSON *st = cJSON_GetObjectItem(cJSON_GetArrayItem(evs, 0), "stored");
                ck_assert_str_eq(cJSON_GetObjectItem(st, "parent_hash")->valuestring,
                                 "0000000000009999");
                cJSON *blk = cJSON_GetArrayItem(cJSON_GetObjectItem(st, "blocks"), 1);
                ck_assert_str_eq(cJSON_GetObjectItem(blk, "sequence_hash")->valuestring,
                                 "000000000000bbbb");
                ck_assert_ptr_nonnull(cJSON_GetObjectItem(cJSON_GetArrayItem(evs, 2), "cleared"));
            } else if (strcmp(type, "LoadMetrics") == 0) {
                load++;
                ck_assert_int_eq(cJSON_GetObjectItem(j, "kv_blocks_used")->valueint, 40);
                ck_assert_str_eq(cJSON_GetObjectItem(j, "component")->valuestring, "backend");
            } else if (strcmp(type, "ActiveSeqEvent") == 0) {
                active++;
                ck_assert_str_eq(cJSON_GetObjectItem(j, "kind")->valuestring, "KIND_FREE");
                ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "seq_hashes")), 2);
            } else if (strcmp(type, "PrefillJob") == 0) {
                job++;
                ck_assert_str_eq(cJSON_GetObjectItem(j, "request_id")->valuestring, "req-7");
                ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "dst_block_ids")), 1);
            } else if (strcmp(type, "malformed") == 0) {
                bad++;
                ck_assert_int_eq(cJSON_GetObjectItem(j, "bytes")->valueint, 5);
            }
            ck_assert_ptr_nonnull(cJSON_GetObjectItem(j, "time"));
            cJSON_Delete(j);
        }
        p = nl ? nl + 1 : NULL;
    }
    ck_assert_int_eq(kv, 1);
    ck_assert_int_eq(load, 1);
    ck_assert_int_eq(bad, 1);
    ck_assert_int_eq(active, 1);
    ck_assert_int_eq(job, 1);
}
END_TEST

START_TEST(test_usage_errors) {
    char log[320];
    ck_assert_int_eq(ctl_run((const char *[]){NULL}, log, sizeof log), 2);
    ck_assert_ptr_nonnull(strstr(slurp(log), "expected one command"));
    ck_assert_int_eq(ctl_run((const char *[]){"frobnicate", NULL}, log, sizeof log), 2);
    ck_assert_ptr_nonnull(strstr(slurp(log), "unknown command 'frobnicate'"));
    ck_assert_int_eq(ctl_run((const char *[]){"events", "--count", "many", NULL}, log, sizeof log),
                     2);
    ck_assert_ptr_nonnull(strstr(slurp(log), "--count"));
    ck_assert_int_eq(ctl_run((const char *[]){"ls", "--bogus", NULL}, log, sizeof log), 2);
    ck_assert_ptr_nonnull(strstr(slurp(log), "unknown flag --bogus"));
    ck_assert_int_eq(ctl_run((const char *[]){"ls", "--namespace", "a.b", NULL}, log, sizeof log),
                     2);
    ck_assert_int_eq(ctl_run((const char *[]){"ls", "--component", "x/y", NULL}, log, sizeof log),
                     2);
    ck_assert_int_eq(ctl_run((const char *[]){"--help", NULL}, log, sizeof log), 0);
    const char *h = slurp(log);
    ck_assert_ptr_nonnull(strstr(h, "Usage: sluice-ctl [options] ls|watch|events"));
    ck_assert_ptr_nonnull(strstr(h, "env SLUICE_ETCD, default http://127.0.0.1:2379"));
    /* servers that are not there: a clear error and exit 1, no hang */
    ck_assert_int_eq(
        ctl_run((const char *[]){"ls", "--etcd", "http://127.0.0.1:1", NULL}, log, sizeof log), 1);
    ck_assert_ptr_nonnull(strstr(slurp(log), "cannot list sluice/v1/default/"));
    ck_assert_int_eq(
        ctl_run((const char *[]){"watch", "--etcd", "http://127.0.0.1:1", NULL}, log, sizeof log),
        1);
    ck_assert_ptr_nonnull(strstr(slurp(log), "cannot reach etcd"));
    ck_assert_int_eq(
        ctl_run((const char *[]){"events", "--nats", "nats://127.0.0.1:1", NULL}, log, sizeof log),
        1);
    ck_assert_ptr_nonnull(strstr(slurp(log), "cannot connect to NATS"));
}
END_TEST

int main(void) {
    sl_log_init("test_ctl");
    if (harness_mkdtemp("sluice-ctl-test", g_dir, sizeof g_dir) != 0 ||
        harness_etcd_start(&g_etcd) != 0 || harness_nats_start(&g_nats, 0) != 0) {
        fprintf(stderr, "cannot start etcd / nats-server\n");
        return 1;
    }
    Suite *s = suite_create("ctl");
    TCase *tc = tcase_create("ctl");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ls_table_and_json);
    tcase_add_test(tc, test_watch_join_leave);
    tcase_add_test(tc, test_events_text);
    tcase_add_test(tc, test_events_json);
    tcase_add_test(tc, test_usage_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    harness_nats_destroy(&g_nats);
    harness_etcd_destroy(&g_etcd);
    harness_rmtree(g_dir);
    return nf == 0 ? 0 : 1;
}
