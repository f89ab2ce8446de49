/* bus_bench.c - NATS bus benchmarks: protobuf request/reply round trip
 * (RouteRequest -> RouteResponse, as frontend -> router) and streamed-reply
 * throughput (GenerateChunk messages, as worker -> frontend).
 *
 * Both sides run in this process on two separate connections, so every
 * message crosses the server. Start a server first, e.g.:
 *   printf 'listen: 127.0.0.1:4222\nmax_payload: 8MB\nmax_pending: 64MB\n' \
 *     >/tmp/nats.conf && nats-server -c /tmp/nats.conf &
 *   build/bench/bus_bench --nats nats://127.0.0.1:4222
 */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/bus.h"
#include "proto/sluice.pb-c.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct bench_cfg {
    const char *url;
    long requests;      /* round trips measured */
    long prompt_tokens; /* RouteRequest.token_ids length */
    long chunks;        /* chunks per streamed reply */
    long text_bytes;    /* GenerateChunk.text size for the large-chunk run */
} bench_cfg_t;

static double bench_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static bool bench_parse_long(const char *s, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno || !end || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

/* ---- request/reply ------------------------------------------------------------ */

static void bench_route_cb(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *m, void *ud) {
    (void)ud;
    const Sluice__V1__RouteRequest *req = (const Sluice__V1__RouteRequest *)m;
    Sluice__V1__RouteResponse resp = SLUICE__V1__ROUTE_RESPONSE__INIT;
    resp.version = 1;
    resp.request_id = req->request_id;
    resp.worker_id = 0x7f3a0000c0ffee01ULL;
    resp.overlap_blocks = (uint32_t)(req->n_token_ids / 16 / 2);
    resp.total_blocks = (uint32_t)(req->n_token_ids / 16);
    resp.cost = 123.5;
    resp.router_id = 0x11;
    bus_respond_proto(bus, msg, &resp.base);
}

static int bench_request_reply(bus_t *cli, bus_t *srv, const bench_cfg_t *cfg) {
    int rc = 0;
    bus_sub_t *sub = NULL;
    double *lat = NULL;
    uint32_t *toks = NULL;
    rc = bus_subscribe_proto(srv, "sluice.bench.router.route", "router",
                             &sluice__v1__route_request__descriptor, bench_route_cb, NULL, &sub);
    if (rc) goto out;
    rc = bus_flush(srv, 2000);
    if (rc) goto out;
    lat = calloc((size_t)cfg->requests, sizeof *lat); /* (requests) round-trip µs */
    toks = calloc((size_t)cfg->prompt_tokens, sizeof *toks);
    if (!lat || !toks) {
        rc = SL_ENOMEM;
        goto out;
    }
    for (long i = 0; i < cfg->prompt_tokens; i++) toks[i] = (uint32_t)((i * 7919) % 128000);
    Sluice__V1__RouteRequest req = SLUICE__V1__ROUTE_REQUEST__INIT;
    req.version = 1;
    req.request_id = "0b9c6f1e-6a53-4f0e-9d2c-3f7f1c2e5a10";
    req.model = "meta-llama/Llama-3.1-8B-Instruct";
    req.n_token_ids = (size_t)cfg->prompt_tokens;
    req.token_ids = toks;
    size_t req_bytes = protobuf_c_message_get_packed_size(&req.base);
    long warm = cfg->requests / 10 < 500 ? cfg->requests / 10 : 500;
    for (long i = -warm; i < cfg->requests; i++) {
        ProtobufCMessage *out = NULL;
        double t0 = bench_now_us();
        rc = bus_request_proto(cli, "sluice.bench.router.route", &req.base,
                               &sluice__v1__route_response__descriptor, 2000, &out);
        double t1 = bench_now_us();
        if (rc) {
            fprintf(stderr, "request %ld: %s\n", i, bus_last_error());
            goto out;
        }
        protobuf_c_message_free_unpacked(out, NULL);
        if (i >= 0) lat[i] = t1 - t0;
    }
    double sum = 0;
    for (long i = 0; i < cfg->requests; i++) sum += lat[i];
    qsort(lat, (size_t)cfg->requests, sizeof *lat, bench_cmp_double);
    long n = cfg->requests;
    printf("request/reply  RouteRequest %zu B (%ld tokens) -> RouteResponse, %ld round trips:\n"
           "  p50 %.1f us  p90 %.1f us  p99 %.1f us  max %.1f us  mean %.1f us  (%.0f req/s "
           "sequential)\n",
           req_bytes, cfg->prompt_tokens, n, lat[n / 2], lat[n * 9 / 10], lat[n * 99 / 100],
           lat[n - 1], sum / (double)n, 1e6 * (double)n / sum);
out:
    bus_sub_free(sub);
    free(lat);
    free(toks);
    return rc;
}

/* ---- streamed replies ------------------------------------------------------------ */

typedef struct bench_stream_srv {
    const char *text;
} bench_stream_srv_t;

static void bench_generate_cb(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *m,
                              void *ud) {
    const bench_stream_srv_t *ss = ud;
    const Sluice__V1__GenerateRequest *req = (const Sluice__V1__GenerateRequest *)m;
    bus_stream_writer_t *w = NULL;
    if (bus_stream_writer_create(bus, msg, &w) != 0) return;
    uint32_t n = req->stop ? req->stop->max_tokens : 1;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t tok = 1000 + i % 30000;
        Sluice__V1__GenerateChunk c = SLUICE__V1__GENERATE_CHUNK__INIT;
        c.version = 1;
        c.request_id = req->request_id;
        c.seq = i;
        c.n_token_ids = 1;
        c.token_ids = &tok;
        c.text = (char *)ss->text;
        c.completion_tokens = i + 1;
        c.worker_id = 0x7f3a0000c0ffee01ULL;
        bool last = i + 1 == n;
        if (last) {
            c.finish_reason = SLUICE__V1__FINISH_REASON__FINISH_REASON_LENGTH;
            c.prompt_tokens = 2048;
        }
        int rc = last ? bus_stream_writer_end_proto(w, &c.base)
                      : bus_stream_writer_send_proto(w, &c.base);
        if (rc) {
            fprintf(stderr, "stream send %u: %s\n", i, bus_last_error());
            break;
        }
    }
    bus_stream_writer_free(w);
}

static int bench_stream(bus_t *cli, bus_t *srv, long chunks, long text_bytes) {
    int rc = 0;
    bus_sub_t *sub = NULL;
    bus_stream_t *s = NULL;
    char *text = calloc(1, (size_t)text_bytes + 1);
    bench_stream_srv_t ss = {text};
    if (!text) return SL_ENOMEM;
    memset(text, 'x', (size_t)text_bytes);
    rc = bus_subscribe_proto(srv, "sluice.bench.backend.generate.0000000000000001", NULL,
                             &sluice__v1__generate_request__descriptor, bench_generate_cb, &ss,
                             &sub);
    if (rc) goto out;
    rc = bus_flush(srv, 2000);
    if (rc) goto out;
    Sluice__V1__StopConditions stop = SLUICE__V1__STOP_CONDITIONS__INIT;
    stop.max_tokens = (uint32_t)chunks;
    Sluice__V1__GenerateRequest req = SLUICE__V1__GENERATE_REQUEST__INIT;
    req.version = 1;
    req.request_id = "0b9c6f1e-6a53-4f0e-9d2c-3f7f1c2e5a10";
    req.stop = &stop;
    bus_stats_t st0, st1;
    bus_stats_get(cli, &st0);
    double t0 = bench_now_us(), tfirst = 0;
    bus_stream_opts_t so = {.idle_timeout_ms = 10000};
    rc = bus_stream_open_proto(cli, "sluice.bench.backend.generate.0000000000000001", &req.base,
                               &so, &s);
    if (rc) goto out;
    long got = 0;
    for (;;) {
        ProtobufCMessage *m = NULL;
        bool last = false;
        rc = bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor, &m, &last);
        if (rc) {
            fprintf(stderr, "stream recv after %ld: %s\n", got, bus_stream_error(s));
            goto out;
        }
        if (got == 0) tfirst = bench_now_us();
        got++;
        protobuf_c_message_free_unpacked(m, NULL);
        if (last) break;
    }
    double t1 = bench_now_us();
    bus_stats_get(cli, &st1);
    double secs = (t1 - t0) / 1e6;
    double bytes = (double)(st1.bytes_in - st0.bytes_in);
    printf("streamed reply %ld GenerateChunk of ~%.0f B (text %ld B): %.3f s, %.0f chunks/s, "
           "%.1f MB/s payload, first chunk after %.0f us\n",
           got, bytes / (double)got, text_bytes, secs, (double)got / secs, bytes / secs / 1e6,
           tfirst - t0);
out:
    bus_stream_free(s);
    bus_sub_free(sub);
    free(text);
    return rc;
}

/* Many short streams: latency from open to the first chunk and to the end,
 * the shape of time-to-first-token overhead the bus adds. */
static int bench_stream_latency(bus_t *cli, bus_t *srv, long streams, long chunks) {
    int rc = 0;
    bus_sub_t *sub = NULL;
    double *first = calloc((size_t)streams, sizeof *first); /* (streams) µs */
    double *total = calloc((size_t)streams, sizeof *total); /* (streams) µs */
    bench_stream_srv_t ss = {"hello"};
    if (!first || !total) {
        rc = SL_ENOMEM;
        goto out;
    }
    rc = bus_subscribe_proto(srv, "sluice.bench.backend.generate.0000000000000002", NULL,
                             &sluice__v1__generate_request__descriptor, bench_generate_cb, &ss,
                             &sub);
    if (!rc) rc = bus_flush(srv, 2000);
    if (rc) goto out;
    Sluice__V1__StopConditions stop = SLUICE__V1__STOP_CONDITIONS__INIT;
    stop.max_tokens = (uint32_t)chunks;
    Sluice__V1__GenerateRequest req = SLUICE__V1__GENERATE_REQUEST__INIT;
    req.version = 1;
    req.request_id = "0b9c6f1e-6a53-4f0e-9d2c-3f7f1c2e5a10";
    req.stop = &stop;
    long warm = streams / 10;
    for (long i = -warm; i < streams; i++) {
        bus_stream_t *s = NULL;
        double t0 = bench_now_us(), tf = 0;
        rc = bus_stream_open_proto(cli, "sluice.bench.backend.generate.0000000000000002", &req.base,
                                   NULL, &s);
        for (long got = 0; !rc; got++) {
            ProtobufCMessage *m = NULL;
            bool last = false;
            rc = bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor, &m, &last);
            if (rc) break;
            if (got == 0) tf = bench_now_us();
            protobuf_c_message_free_unpacked(m, NULL);
            if (last) break;
        }
        double t1 = bench_now_us();
        if (rc) fprintf(stderr, "stream %ld: %s\n", i, bus_last_error());
        bus_stream_free(s);
        if (rc) goto out;
        if (i >= 0) {
            first[i] = tf - t0;
            total[i] = t1 - t0;
        }
    }
    qsort(first, (size_t)streams, sizeof *first, bench_cmp_double);
    qsort(total, (size_t)streams, sizeof *total, bench_cmp_double);
    printf("short streams  %ld streams of %ld chunks: first chunk p50 %.1f us p99 %.1f us; "
           "whole stream p50 %.1f us p99 %.1f us\n",
           streams, chunks, first[streams / 2], first[streams * 99 / 100], total[streams / 2],
           total[streams * 99 / 100]);
out:
    bus_sub_free(sub);
    free(first);
    free(total);
    return rc;
}

static void bench_usage(FILE *f) {
    fprintf(f, "usage: bus_bench [--nats URL] [--requests N] [--prompt-tokens N] [--chunks N]\n"
               "                 [--text-bytes N]\n"
               "  --nats URL          NATS server (default $SLUICE_NATS or "
               "nats://127.0.0.1:4222)\n"
               "  --requests N        round trips to time (default 20000)\n"
               "  --prompt-tokens N   token ids per RouteRequest (default 2048)\n"
               "  --chunks N          chunks per streamed reply (default 100000)\n"
               "  --text-bytes N      text per chunk in the large-chunk run (default 4096;\n"
               "                      that run sends chunks/10)\n");
}

int main(int argc, char **argv) {
    bench_cfg_t cfg = {NULL, 20000, 2048, 100000, 4096};
    sl_log_init("bus_bench");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            bench_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--nats") && v) {
            cfg.url = v;
        } else if (!strcmp(a, "--requests")) {
            ok = bench_parse_long(v, 1, 10000000, &cfg.requests);
        } else if (!strcmp(a, "--prompt-tokens")) {
            ok = bench_parse_long(v, 0, 2000000, &cfg.prompt_tokens);
        } else if (!strcmp(a, "--chunks")) {
            ok = bench_parse_long(v, 1, 100000000, &cfg.chunks);
        } else if (!strcmp(a, "--text-bytes")) {
            ok = bench_parse_long(v, 0, 4 << 20, &cfg.text_bytes);
        } else {
            ok = false;
        }
        if (!ok) {
            fprintf(stderr, "bus_bench: bad argument '%s'\n", a);
            bench_usage(stderr);
            return 2;
        }
        i++;
    }
    bus_t *cli = NULL, *srv = NULL;
    bus_opts_t co = {.url = cfg.url, .name = "bench-client"};
    bus_opts_t so = {.url = cfg.url, .name = "bench-server"};
    int rc = bus_connect(&cli, &co);
    if (!rc) rc = bus_connect(&srv, &so);
    if (rc) {
        fprintf(stderr, "bus_bench: %s\n", bus_last_error());
        goto out;
    }
    printf("server max_payload %" PRId64 " bytes\n", bus_max_payload(cli));
    rc = bench_request_reply(cli, srv, &cfg);
    if (!rc) rc = bench_stream_latency(cli, srv, 2000, 16);
    if (!rc) rc = bench_stream(cli, srv, cfg.chunks, 8);
    /* a tenth as many large chunks: same time, bounded memory */
    if (!rc) rc = bench_stream(cli, srv, cfg.chunks / 10 ? cfg.chunks / 10 : 1, cfg.text_bytes);
    if (rc) fprintf(stderr, "bus_bench: failed: %s (%s)\n", sl_strerror(rc), bus_last_error());
out:
    bus_free(cli);
    bus_free(srv);
    return rc ? 1 : 0;
}
