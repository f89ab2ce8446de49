/* router_bench.c - sluice-router's hot paths on one core, no servers.
 *
 *   ingestion  KV events into the prefix index, in block events per CPU-second
 *              of the ingesting thread (a per-core rate load cannot distort):
 *              stored batches (index only, and protobuf unpack + index, as
 *              the router's kv_events callback does), then removed.
 *   decision   the whole routing decision as router.c makes it: hash the
 *              prompt's blocks, look the index up, build candidates with
 *              their predicted load, hot-prefix credit, cost and pick; p50 /
 *              p99 / max over many requests, with --blocks indexed blocks
 *              across --workers workers.
 *
 * Usage: router_bench [--workers 64] [--blocks 1000000] [--requests 20000]
 *                     [--min-tokens 512] [--max-tokens 8192] [--seed 1]
 */
#include "common/base/arena.h"
#include "common/base/block_hash.h"
#include "common/runtime/bus.h"
#include "common/runtime/kv_events.h"
#include "proto/sluice.pb-c.h"
#include "services/router/active_seqs.h"
#include "services/router/kv_index.h"
#include "services/router/router_cost.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BS      16
#define SEQ_TOK 4096 /* tokens per stored sequence (256 blocks) */
#define SYS_TOK 1024 /* shared system prompts: 64 blocks */
#define N_SYS   8

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* CPU seconds of this thread: ingestion is reported per core (events per
 * CPU-second), which other processes on a shared machine do not distort. */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Sequence s: system prompt (s % N_SYS) then tokens unique to s. */
static void seq_tokens(uint32_t *tok, size_t n, uint64_t s) {
    for (size_t i = 0; i < n; i++)
        tok[i] = i < SYS_TOK ? (uint32_t)((s % N_SYS) * 7919 + i)
                             : (uint32_t)(s * 1000003u + i * 31u) & 0x1ffff;
}

static long arg_long(int argc, char **argv, const char *name, long def) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], name)) return strtol(argv[i + 1], NULL, 10);
    return def;
}

int main(int argc, char **argv) {
    long workers = arg_long(argc, argv, "--workers", 64);
    long blocks = arg_long(argc, argv, "--blocks", 1000000);
    long requests = arg_long(argc, argv, "--requests", 20000);
    long min_tok = arg_long(argc, argv, "--min-tokens", 512);
    long max_tok = arg_long(argc, argv, "--max-tokens", 8192);
    rng ^= (uint64_t)arg_long(argc, argv, "--seed", 1) * 0x9E3779B97F4A7C15ull;
    if (workers < 1 || workers > 4096 || blocks < 1 || requests < 1 || min_tok < 16 ||
        max_tok < min_tok || max_tok > 1 << 20) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    const size_t per_seq = SEQ_TOK / BS;
    size_t n_seqs = ((size_t)blocks + per_seq - 1) / per_seq;
    /* Every sequence's hashes: (n_seqs, per_seq) */
    uint64_t *hs = malloc(n_seqs * per_seq * sizeof *hs);
    uint32_t *tok = malloc(((size_t)max_tok + SEQ_TOK) * sizeof *tok);
    if (!hs || !tok) return 1;
    for (size_t s = 0; s < n_seqs; s++) {
        seq_tokens(tok, SEQ_TOK, s);
        block_hash_seq(tok, SEQ_TOK, BS, 0, NULL, hs + s * per_seq, per_seq);
    }
    kv_index_t *idx;
    if (kv_index_new(&idx, (size_t)blocks) < 0) return 1;
    for (long w = 0; w < workers; w++) kv_index_worker_add(idx, (uint64_t)w + 1, false);

    /* ---- ingestion: index only, batches of one sequence's 256 blocks ---- */
    double t0 = cpu_s();
    size_t stored = 0;
    for (size_t s = 0; s < n_seqs; s++) {
        size_t n = per_seq;
        if (stored + n > (size_t)blocks) n = (size_t)blocks - stored;
        kv_index_store(idx, s % (size_t)workers + 1, 0, hs + s * per_seq, n);
        stored += n;
    }
    double t_store = cpu_s() - t0;
    printf("index: %zu block (worker, hash) entries across %ld workers, %zu distinct hashes\n",
           stored, workers, kv_index_size(idx));
    printf("ingest stored, cold (index only, 256-block batches, tables growing): %.1f M block "
           "events per CPU-s\n",
           (double)stored / t_store / 1e6);
    /* Steady state: the same blocks evicted and stored again (warm tables). */
    double t_rm = 0, t_st = 0;
    for (int round = 0; round < 3; round++) {
        t0 = cpu_s();
        for (size_t s = 0, k = 0; s < n_seqs && k < (size_t)blocks; s++, k += per_seq)
            kv_index_remove(idx, s % (size_t)workers + 1, 0, hs + s * per_seq,
                            k + per_seq > (size_t)blocks ? (size_t)blocks - k : per_seq);
        t_rm += cpu_s() - t0;
        t0 = cpu_s();
        for (size_t s = 0, k = 0; s < n_seqs && k < (size_t)blocks; s++, k += per_seq)
            kv_index_store(idx, s % (size_t)workers + 1, 0, hs + s * per_seq,
                           k + per_seq > (size_t)blocks ? (size_t)blocks - k : per_seq);
        t_st += cpu_s() - t0;
    }
    printf(
        "ingest steady state (index only): stored %.1f M, removed %.1f M block events per CPU-s\n",
        3.0 * (double)stored / t_st / 1e6, 3.0 * (double)stored / t_rm / 1e6);

    /* ---- ingestion through protobuf unpack, into a second index ---- */
    {
        kv_index_t *idx2;
        if (kv_index_new(&idx2, (size_t)blocks) < 0) return 1;
        for (long w = 0; w < workers; w++) kv_index_worker_add(idx2, (uint64_t)w + 1, false);
        size_t max_packed = 64 + per_seq * 24;
        uint8_t *packed = malloc(n_seqs * max_packed);
        size_t *plen = malloc(n_seqs * sizeof *plen);
        Sluice__V1__KvStoredBlock *blk = malloc(per_seq * sizeof *blk);
        Sluice__V1__KvStoredBlock **blkp = malloc(per_seq * sizeof *blkp);
        uint64_t *bh = malloc(per_seq * sizeof *bh);
        if (!packed || !plen || !blk || !blkp || !bh) return 1;
        /* KvStored as one sub-message per block (form 0) and as the packed
         * parallel arrays workers send (form 1); each unpacked with
         * protobuf-c's malloc per sub-message and with the bump arena the
         * bus uses for subscriptions (common/base/arena.h). */
        for (int form = 0; form < 2; form++) {
            for (size_t s = 0; s < n_seqs; s++) { /* pack each sequence's batch once */
                Sluice__V1__KvEventBatch b = SLUICE__V1__KV_EVENT_BATCH__INIT;
                Sluice__V1__KvEvent ev = SLUICE__V1__KV_EVENT__INIT, *evp = &ev;
                Sluice__V1__KvStored st = SLUICE__V1__KV_STORED__INIT;
                for (size_t i = 0; i < per_seq; i++) {
                    Sluice__V1__KvStoredBlock init = SLUICE__V1__KV_STORED_BLOCK__INIT;
                    blk[i] = init;
                    blk[i].block_hash = bh[i] = rnd();
                    blk[i].sequence_hash = hs[s * per_seq + i];
                    blkp[i] = &blk[i];
                }
                if (form == 0) {
                    st.n_blocks = per_seq;
                    st.blocks = blkp;
                } else {
                    kv_stored_set(&st, bh, &hs[s * per_seq], per_seq);
                }
                ev.data_case = SLUICE__V1__KV_EVENT__DATA_STORED;
                ev.stored = &st;
                b.version = 1;
                b.worker_id = s % (size_t)workers + 1;
                b.event_id = s;
                b.n_events = 1;
                b.events = &evp;
                b.block_size = BS;
                plen[s] = sluice__v1__kv_event_batch__pack(&b, packed + s * max_packed);
            }
            for (int use_arena = 0; use_arena < 2; use_arena++) {
                arena_t *ar = use_arena ? arena_new(0) : NULL;
                ProtobufCAllocator al = bus_arena_allocator(ar);
                for (long w = 0; w < workers; w++) kv_index_clear(idx2, (uint64_t)w + 1, 0);
                uint64_t tmp[256];
                t0 = cpu_s();
                size_t done = 0;
                for (size_t s = 0; s < n_seqs && done < (size_t)blocks; s++) {
                    Sluice__V1__KvEventBatch *b = sluice__v1__kv_event_batch__unpack(
                        ar ? &al : NULL, plen[s], packed + s * max_packed);
                    if (!b) return 1;
                    for (size_t e = 0; e < b->n_events; e++) { /* as services/router does */
                        const Sluice__V1__KvStored *st = b->events[e]->stored;
                        size_t nb = kv_stored_count(st);
                        const uint64_t *direct = kv_stored_seq_hashes(st);
                        if (direct) {
                            kv_index_store(idx2, b->worker_id, 0, direct, nb);
                            done += nb;
                            continue;
                        }
                        for (size_t i = 0; i < nb;) {
                            size_t k = 0;
                            for (; k < 256 && i < nb; i++) tmp[k++] = kv_stored_seq_hash(st, i);
                            kv_index_store(idx2, b->worker_id, 0, tmp, k);
                            done += k;
                        }
                    }
                    if (ar)
                        arena_reset(ar);
                    else
                        sluice__v1__kv_event_batch__free_unpacked(b, NULL);
                }
                double t = cpu_s() - t0;
                printf("ingest stored (protobuf %s, unpack %s + index): %.1f M block events per "
                       "CPU-s\n",
                       form ? "packed arrays" : "sub-messages",
                       ar ? "into an arena" : "with malloc", (double)done / t / 1e6);
                arena_free(ar);
            }
        }
        free(packed);
        free(plen);
        free(blk);
        free(blkp);
        free(bh);
        kv_index_free(idx2);
    }

    /* ---- decisions ---- */
    active_seqs_t *act;
    prefix_heat_t *heat;
    if (active_seqs_new(&act, NULL) < 0 || prefix_heat_new(&heat, 0, 10000) < 0) return 1;
    /* The same load everywhere (8 running sequences of 256 blocks per worker),
     * so that cache hits decide and the hit ratio means something. */
    char rid[64];
    for (long w = 0; w < workers; w++)
        for (int k = 0; k < 8; k++) {
            snprintf(rid, sizeof rid, "bg-%ld-%d", w, k);
            active_seqs_add(act, rid, (uint64_t)w + 1, 256, 0, 0);
        }
    router_candidate_t *c = malloc((size_t)workers * sizeof *c);
    kv_overlap_t *ov = malloc((size_t)workers * sizeof *ov);
    uint64_t *qh = malloc((size_t)(max_tok / BS + 1) * sizeof *qh);
    double *lat = malloc((size_t)requests * sizeof *lat);
    if (!c || !ov || !qh || !lat) return 1;
    router_cost_params_t p = {.prefill_scale = 1.0, .temperature = 0};
    uint64_t hits = 0, total = 0;
    for (long r = 0; r < requests; r++) {
        /* A stored sequence's prefix (random length), then new tokens. */
        size_t n_tok = (size_t)min_tok + rnd() % (size_t)(max_tok - min_tok + 1);
        uint64_t s = rnd() % n_seqs;
        size_t keep = (size_t)(rnd() % (SEQ_TOK + 1));
        if (keep > n_tok) keep = n_tok;
        seq_tokens(tok, keep, s);
        for (size_t i = keep; i < n_tok; i++) tok[i] = (uint32_t)rnd() & 0x1ffff;
        snprintf(rid, sizeof rid, "req-%ld", r);
        double a = now_s();
        /* what router.c's decide() does */
        size_t n = block_hash_seq(tok, n_tok, BS, 0, NULL, qh, (size_t)max_tok / BS + 1);
        size_t n_ov = 0;
        kv_index_lookup(idx, qh, n, ov, (size_t)workers, &n_ov);
        uint32_t deepest = 0;
        for (long w = 0; w < workers; w++) {
            memset(&c[w], 0, sizeof c[w]);
            c[w].worker_id = (uint64_t)w + 1;
            c[w].load = active_seqs_load(act, (uint64_t)w + 1, 0);
        }
        for (size_t j = 0; j < n_ov; j++) {
            router_candidate_t *cw = &c[ov[j].worker_id - 1];
            cw->device = ov[j].device;
            cw->host = ov[j].host;
            cw->disk = ov[j].disk;
            if (cw->device > deepest) deepest = cw->device;
        }
        double credit = 1;
        if (deepest)
            credit =
                prefix_heat_credit(prefix_heat_touch(heat, qh[deepest - 1], r), (size_t)workers);
        size_t pick;
        router_cost_select(&p, ROUTER_MODE_KV, (uint32_t)((n_tok + BS - 1) / BS), credit, c,
                           (size_t)workers, (uint64_t)r, NULL, &pick);
        lat[r] = now_s() - a;
        hits += c[pick].device;
        total += n;
    }
    qsort(lat, (size_t)requests, sizeof *lat, cmp_d);
    printf("decision (%ld requests of %ld..%ld tokens, %ld workers): p50 %.1f us  p99 %.1f us  "
           "max %.1f us; device hit ratio %.2f\n",
           requests, min_tok, max_tok, workers, lat[requests / 2] * 1e6,
           lat[(size_t)((double)requests * 0.99)] * 1e6, lat[requests - 1] * 1e6,
           total ? (double)hits / (double)total : 0.0);
    free(c);
    free(ov);
    free(qh);
    free(lat);
    free(hs);
    free(tok);
    active_seqs_free(act);
    prefix_heat_free(heat);
    kv_index_free(idx);
    return 0;
}
