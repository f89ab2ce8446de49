/* test_kv_transfer.c - KV block transfer over real UCX between processes.
 *
 * The test binary re-executes itself in a child mode (--child FD ...): the
 * child creates an agent over its own KV pool, sends its descriptor to the
 * parent over a socketpair, and dumps its pool on request, so the parent can
 * check byte for byte that written blocks landed in the right remote slots.
 * UCX_TLS (shared memory or TCP over lo) is set per child and in the parent.
 *
 * Write protocol: tests written for one-sided puts run with
 * SLUICE_KVX_PROTO=put (set in main; KVX_PROTO_PUT is still a supported mode);
 * the active-message tests set auto or am themselves (before spawning, so
 * writer children inherit it). Over active messages a write completes at the
 * writer before the data lands, so those tests declare a tag in the target
 * ('E') and wait there for its bytes ('W') before comparing pools.
 */
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/transfer/kv_transfer.h"

#include <check.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BB (3 * 4096 + 104) /* odd block size: catches offset bugs */

static long long mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fill(uint8_t *p, size_t n, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        p[i] = (uint8_t)s;
    }
}

static int read_full(int fd, void *buf, size_t n) {
    uint8_t *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t r = write(fd, p, n);
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* ---- child mode --------------------------------------------------------------------------- */

/* Target: a pool of (nblocks, bb) filled from seed, registered (or, with
 * flag 'a', allocated by UCX); its descriptor goes to the parent. Commands:
 * 'D' dump the pool, 'F' free the region (agent and memory stay), 'Q' quit. */
static int child_main(int fd, uint32_t nblocks, size_t bb, uint64_t seed, const char *flags) {
    int rc = 1;
    kvx_agent_t *a = NULL;
    kvx_region_t *r = NULL;
    uint8_t *desc = NULL, *mine = NULL;
    size_t desc_len = 0;
    size_t bytes = (size_t)nblocks * bb;
    bool alloc = strchr(flags, 'a') != NULL;
    uint8_t *pool = NULL; /* (nblocks, bb) */
    kvx_agent_opts_t ao = {.name = "child"};
    if (kvx_agent_new(&ao, &a)) goto out;
    if (alloc) {
        if (kvx_region_alloc(a, bb, nblocks, &r)) goto out;
        pool = kvx_region_ptr(r);
    } else {
        pool = mine = malloc(bytes);
        if (!pool || kvx_region_register(a, pool, bb, nblocks, NULL, &r)) goto out;
    }
    fill(pool, bytes, seed);
    if (kvx_region_desc_export(r, &desc, &desc_len)) goto out;
    uint32_t l = (uint32_t)desc_len;
    if (write_full(fd, &l, 4) || write_full(fd, desc, desc_len)) goto out;
    for (;;) {
        char c;
        if (read_full(fd, &c, 1)) break;
        if (c == 'D') {
            /* a lock round-trip with the progress thread, which wrote the
             * pool under the agent lock: orders those writes before the dump
             * for ThreadSanitizer (the parent's request is the real order) */
            (void)kvx_peer_connected(a, 0);
            if (write_full(fd, pool, bytes)) break;
            (void)kvx_peer_connected(a, 0); /* and the dump before later puts */
        } else if (c == 'F') {
            kvx_region_free(r); /* an allocated pool goes with it */
            r = NULL;
            if (write_full(fd, "f", 1)) break;
        } else if (c == 'E' || c == 'B' || c == 'W') { /* expect / wait for a tag's bytes */
            uint64_t tb[2];
            if (read_full(fd, tb, sizeof tb)) break;
            int32_t res;
            if (c == 'E') {
                res = kvx_recv_expect(a, r, tb[0], tb[1]);
            } else if (c == 'B') { /* tb[1]: two block ids, low and high half */
                uint32_t ids[2] = {(uint32_t)tb[1], (uint32_t)(tb[1] >> 32)};
                res = kvx_recv_expect_blocks(a, r, tb[0], ids, 2);
            } else {
                long long t0 = mono_ms();
                while ((res = kvx_recv_done(a, tb[0], tb[1])) == 0 && mono_ms() - t0 < 5000)
                    usleep(1000);
            }
            if (write_full(fd, &res, sizeof res)) break;
        } else if (c == 'S') {
            kvx_agent_stats_t st;
            kvx_agent_stats(a, &st);
            if (write_full(fd, &st, sizeof st)) break;
        } else {
            break;
        }
    }
    rc = 0;
out:
    free(desc);
    kvx_region_free(r);
    kvx_agent_free(a);
    free(mine);
    return rc;
}

/* Initiator: reads a target descriptor from fd, then writes its whole pool
 * (seeded, reversed block order: one put per block) to the target in a loop,
 * sending 'R' after the first write, until the parent closes fd or kills it. */
static int writer_main(int fd, uint32_t nblocks, size_t bb, uint64_t seed) {
    int rc = 1;
    kvx_agent_t *a = NULL;
    kvx_region_t *r = NULL;
    uint8_t *desc = NULL;
    uint32_t *src = NULL, *dst = NULL;
    size_t bytes = (size_t)nblocks * bb;
    uint8_t *pool = malloc(bytes); /* (nblocks, bb) */
    src = malloc(nblocks * sizeof *src);
    dst = malloc(nblocks * sizeof *dst);
    uint32_t l = 0;
    if (!pool || !src || !dst || read_full(fd, &l, 4) || l > (1u << 20)) goto out;
    desc = malloc(l);
    if (!desc || read_full(fd, desc, l)) goto out;
    fill(pool, bytes, seed);
    kvx_agent_opts_t ao = {.name = "writer"};
    if (kvx_agent_new(&ao, &a) || kvx_region_register(a, pool, bb, nblocks, NULL, &r) ||
        kvx_peer_import_desc(a, 1, desc, l))
        goto out;
    for (uint32_t i = 0; i < nblocks; i++) src[i] = i, dst[i] = nblocks - 1 - i;
    uint64_t am_total = 0; /* bytes sent by active messages, reported at the end */
    for (long i = 0;; i++) {
        kvx_xfer_t *x = NULL;
        kvx_write_opts_t wo = {.timeout_ms = 5000, .tag = seed}; /* the target expects seed */
        int st = kvx_write(a, 1, r, src, dst, nblocks, &wo, &x);
        if (st == 0) st = kvx_xfer_wait(x, -1);
        am_total += kvx_xfer_am_bytes(x);
        kvx_xfer_free(x);
        if (st) goto out;
        if (i == 0 && write_full(fd, "R", 1)) goto out;
        char c;
        if (recv(fd, &c, 1, MSG_DONTWAIT) == 0) break; /* parent shut its side */
    }
    if (write_full(fd, &am_total, sizeof am_total)) goto out;
    rc = 0;
out:
    kvx_region_free(r);
    kvx_agent_free(a);
    free(desc);
    free(src);
    free(dst);
    free(pool);
    return rc;
}

/* ---- parent side -------------------------------------------------------------------------- */

typedef struct child {
    pid_t pid;
    int fd;
    uint32_t nblocks;
    size_t bb;
    uint8_t *expect; /* (nblocks, bb) what the child's pool should hold */
    uint8_t *desc;
    size_t desc_len;
} child_t;

static void set_tls(const char *tls) {
    if (!tls) return;
    setenv("UCX_TLS", tls, 1);
    if (strstr(tls, "tcp")) setenv("UCX_NET_DEVICES", "lo", 1);
}

static int child_spawn(child_t *c, const char *mode, const char *tls, uint32_t nblocks, size_t bb,
                       uint64_t seed, const char *flags) {
    int sv[2];
    memset(c, 0, sizeof *c);
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(sv[0]);
        set_tls(tls);
        char fds[16], nb[16], bbs[32], sd[32];
        snprintf(fds, sizeof fds, "%d", sv[1]);
        snprintf(nb, sizeof nb, "%u", nblocks);
        snprintf(bbs, sizeof bbs, "%zu", bb);
        snprintf(sd, sizeof sd, "%llu", (unsigned long long)seed);
        char *argv[] = {"test_kv_transfer", (char *)mode, fds, nb, bbs, sd, (char *)flags, NULL};
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(sv[1]);
    c->pid = pid;
    c->fd = sv[0];
    c->nblocks = nblocks;
    c->bb = bb;
    c->expect = malloc((size_t)nblocks * bb);
    if (!c->expect) return -1;
    fill(c->expect, (size_t)nblocks * bb, seed);
    if (strcmp(mode, "--child") != 0) return 0;
    uint32_t l;
    if (read_full(c->fd, &l, 4) || l > (1u << 20)) return -1;
    c->desc = malloc(l);
    c->desc_len = l;
    if (!c->desc || read_full(c->fd, c->desc, l)) return -1;
    return 0;
}

static int child_start(child_t *c, const char *tls, uint32_t nblocks, size_t bb, uint64_t seed) {
    return child_spawn(c, "--child", tls, nblocks, bb, seed, "-");
}

/* Starts a writer child aimed at the descriptor desc. */
static int writer_start(child_t *c, const char *tls, uint32_t nblocks, size_t bb, uint64_t seed,
                        const uint8_t *desc, size_t dl) {
    if (child_spawn(c, "--writer", tls, nblocks, bb, seed, "-")) return -1;
    uint32_t l = (uint32_t)dl;
    return write_full(c->fd, &l, 4) || write_full(c->fd, desc, dl) ? -1 : 0;
}

static int child_check(child_t *c) {
    size_t n = (size_t)c->nblocks * c->bb;
    uint8_t *got = malloc(n);
    int rc = -1;
    if (!got) return -1;
    if (write_full(c->fd, "D", 1) == 0 && read_full(c->fd, got, n) == 0)
        rc = memcmp(got, c->expect, n) == 0 ? 0 : 1;
    if (rc == 1)
        for (uint32_t b = 0; b < c->nblocks; b++)
            if (memcmp(got + (size_t)b * c->bb, c->expect + (size_t)b * c->bb, c->bb)) {
                fprintf(stderr, "block %u differs\n", b);
                break;
            }
    free(got);
    return rc;
}

static void child_stop(child_t *c) {
    if (c->fd > 0) {
        ssize_t r = write(c->fd, "Q", 1);
        (void)r;
        close(c->fd);
    }
    if (c->pid > 0) {
        int st;
        long long t0 = mono_ms();
        while (waitpid(c->pid, &st, WNOHANG) == 0) {
            if (mono_ms() - t0 > 3000) {
                kill(c->pid, SIGKILL);
                waitpid(c->pid, &st, 0);
                break;
            }
            usleep(5000);
        }
    }
    free(c->expect);
    free(c->desc);
    memset(c, 0, sizeof *c);
}

/* SIGSTOP, then waits until every thread of pid is stopped: the signal is
 * asynchronous, and a small write can still complete in between. */
static void stop_child(pid_t pid) {
    kill(pid, SIGSTOP);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    for (int i = 0; i < 200; i++) {
        char buf[512] = {0};
        FILE *f = fopen(path, "r");
        if (!f) return;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        const char *rp = strrchr(buf, ')');
        if (rp && rp[1] == ' ' && rp[2] == 'T') break;
        usleep(1000);
    }
    usleep(20 * 1000); /* the group stop reaches the other threads */
}

/* Completion flags are read with acquire loads: the callback runs after the
 * data landed, so a check that follows the flag sees it (and TSan agrees). */
static void on_done_status(void *ud, kvx_xfer_t *x, int status) {
    (void)x;
    __atomic_store_n((int *)ud, status == 0 ? 1 : status, __ATOMIC_RELEASE);
}

static int done_get(int *d) {
    return __atomic_load_n(d, __ATOMIC_ACQUIRE);
}

/* Random pairs: a mix of runs and scattered ids, distinct destinations. */
static size_t make_pairs(uint32_t *src, uint32_t *dst, uint32_t n_src, uint32_t n_dst,
                         unsigned *seed) {
    uint8_t *used = calloc(n_dst, 1);
    size_t n = 0;
    size_t want = 1 + (size_t)rand_r(seed) % (n_dst / 2);
    while (n < want) {
        uint32_t run = 1 + (uint32_t)rand_r(seed) % 6;
        uint32_t s = (uint32_t)rand_r(seed) % n_src, d = (uint32_t)rand_r(seed) % n_dst;
        for (uint32_t k = 0; k < run && n < want; k++) {
            if (s + k >= n_src || d + k >= n_dst || used[d + k]) break;
            used[d + k] = 1;
            src[n] = s + k;
            dst[n] = d + k;
            n++;
        }
    }
    free(used);
    return n;
}

/* Declares tag in child c for bytes ('E'). */
static int child_expect(child_t *c, uint64_t tag, uint64_t bytes) {
    uint64_t tb[2] = {tag, bytes};
    int32_t res = -1;
    if (write_full(c->fd, "E", 1) || write_full(c->fd, tb, sizeof tb) ||
        read_full(c->fd, &res, sizeof res))
        return -1;
    return res;
}

/* The child declares tag for its blocks b0 and b1 only: 0 or SL_E*. */
static int child_expect_blocks(child_t *c, uint64_t tag, uint32_t b0, uint32_t b1) {
    uint64_t tb[2] = {tag, (uint64_t)b0 | (uint64_t)b1 << 32};
    int32_t res = -1;
    if (write_full(c->fd, "B", 1) || write_full(c->fd, tb, sizeof tb) ||
        read_full(c->fd, &res, sizeof res))
        return -1;
    return res;
}

/* Waits (up to 5 s, in the child) until bytes arrived under tag: 1, 0. */
static int child_wait(child_t *c, uint64_t tag, uint64_t bytes) {
    uint64_t tb[2] = {tag, bytes};
    int32_t res = -1;
    if (write_full(c->fd, "W", 1) || write_full(c->fd, tb, sizeof tb) ||
        read_full(c->fd, &res, sizeof res))
        return -1;
    return res;
}

static kvx_agent_stats_t child_stats(child_t *c) {
    kvx_agent_stats_t st;
    memset(&st, 0xff, sizeof st);
    if (write_full(c->fd, "S", 1) || read_full(c->fd, &st, sizeof st)) ck_abort_msg("stats");
    return st;
}

/* Random block lists into a child's pool, byte-exact check after each.
 * am < 0: the put-only run (no tags). am >= 0: SLUICE_KVX_PROTO=proto, every
 * write tagged, and it must have gone by active messages (am 1) or by puts
 * (am 0). */
static void roundtrip_proto(const char *tls, const char *flags, const char *proto, int am) {
    if (proto) setenv("SLUICE_KVX_PROTO", proto, 1);
    set_tls(tls);
    child_t c;
    ck_assert_int_eq(child_spawn(&c, "--child", tls, 48, BB, 7, flags), 0);
    kvx_agent_t *a = NULL;
    ck_assert_int_eq(kvx_agent_new(NULL, &a), 0);
    uint32_t nsrc = 32;
    uint8_t *pool = malloc((size_t)nsrc * BB); /* (nsrc, BB) */
    fill(pool, (size_t)nsrc * BB, 99);
    kvx_region_t *r = NULL;
    ck_assert_int_eq(kvx_region_register(a, pool, BB, nsrc, NULL, &r), 0);
    ck_assert_int_eq(kvx_peer_import_desc(a, 42, c.desc, c.desc_len), 0);
    ck_assert_int_eq(kvx_peer_connected(a, 42), 0); /* lazy */
    unsigned seed = 1234;
    uint32_t src[48], dst[48];
    for (int round = 0; round < 12; round++) {
        size_t n = make_pairs(src, dst, nsrc, c.nblocks, &seed);
        if (round == 0) { /* the whole remote tail incl. the last slot, one run */
            n = 8;
            for (uint32_t i = 0; i < 8; i++) src[i] = 10 + i, dst[i] = c.nblocks - 8 + i;
        }
        if (round == 1) { /* a partial last block: only its first tokens hold KV */
            memset(pool + 3 * BB + BB / 3, 0, BB - BB / 3);
            n = 1;
            src[0] = 3;
            dst[0] = c.nblocks - 1;
        }
        kvx_xfer_t *x = NULL;
        uint64_t tag = am >= 0 ? 1000 + (uint64_t)round : 0;
        if (tag) ck_assert_int_eq(child_expect(&c, tag, (uint64_t)n * BB), 0);
        kvx_write_opts_t wo = {.timeout_ms = 5000, .tag = tag};
        ck_assert_int_eq(kvx_write(a, 42, r, src, dst, n, &wo, &x), 0);
        int st = kvx_xfer_wait(x, 10000);
        ck_assert_msg(st == 0, "round %d: %s (%s)", round, sl_strerror(st), kvx_xfer_error_text(x));
        if (round == 0) ck_assert_uint_eq(kvx_xfer_n_puts(x), 1);
        if (am >= 0) ck_assert_uint_eq(kvx_xfer_am_bytes(x), am ? (uint64_t)n * BB : 0);
        if (am == 1) ck_assert_int_eq(child_wait(&c, tag, (uint64_t)n * BB), 1);
        kvx_xfer_free(x);
        /* whole slots move: the stale tail of the remote slot is overwritten */
        for (size_t i = 0; i < n; i++)
            memcpy(c.expect + (size_t)dst[i] * BB, pool + (size_t)src[i] * BB, BB);
        ck_assert_int_eq(child_check(&c), 0);
        ck_assert_int_eq(kvx_peer_connected(a, 42), 1);
    }
    kvx_region_free(r);
    kvx_agent_free(a);
    free(pool);
    child_stop(&c);
}

static void roundtrip(const char *tls, const char *flags) {
    roundtrip_proto(tls, flags, NULL, -1);
}

START_TEST(test_roundtrip_shm) {
    roundtrip("sm,self", "-");
}
END_TEST

/* auto: TCP has no RMA (UCX would emulate puts): active messages */
START_TEST(test_roundtrip_auto_tcp) {
    roundtrip_proto("tcp", "-", "auto", 1);
}
END_TEST

/* auto: shared memory into registered memory is emulated too */
START_TEST(test_roundtrip_auto_shm) {
    roundtrip_proto("sm,self", "-", "auto", 1);
}
END_TEST

/* auto: an allocated pool over shared memory is real RMA: puts */
START_TEST(test_roundtrip_auto_alloc_shm) {
    roundtrip_proto("sm,self", "a", "auto", 0);
}
END_TEST

/* forced active messages, both transports */
START_TEST(test_roundtrip_am_tcp) {
    roundtrip_proto("tcp", "a", "am", 1);
}
END_TEST

START_TEST(test_roundtrip_am_alloc_shm) {
    roundtrip_proto("sm,self", "a", "am", 1);
}
END_TEST

START_TEST(test_roundtrip_tcp) {
    roundtrip("tcp", "-");
}
END_TEST

START_TEST(test_roundtrip_alloc_shm) {
    roundtrip("sm,self", "a");
}
END_TEST

START_TEST(test_roundtrip_alloc_tcp) {
    roundtrip("tcp", "a");
}
END_TEST

/* kill -9 of a target peer during transfers: an error within the timeout,
 * and the agent still writes to another, live peer at once. Over shared
 * memory this used to time out about one run in six (a dead target's
 * half-written acknowledgement wedged the initiator's FIFO; see
 * kv_transfer.c), so the scenario runs `reps` times, killing at different
 * points of a 256-put write, with registered victims (2 in 3) and allocated
 * ones, the live peer connected before the kill or only after. With the
 * initiator-worker reset disabled, 3 of 4 runs of this test failed here. */
static void kill_peer_proto(const char *tls, int reps, const char *proto) {
    if (proto) setenv("SLUICE_KVX_PROTO", proto, 1);
    bool am = proto && strcmp(proto, "put") != 0; /* tagged writes, counted by the target */
    set_tls(tls);
    const uint32_t nb = 256;
    const size_t bb = 196608;
    uint8_t *pool = malloc((size_t)nb * bb);
    fill(pool, (size_t)nb * bb, 5);
    uint32_t *ids = malloc(nb * sizeof *ids);
    for (uint32_t i = 0; i < nb; i++) ids[i] = nb - 1 - i; /* reversed: many single puts */
    for (int rep = 0; rep < reps; rep++) {
        child_t victim, other;
        ck_assert_int_eq(child_spawn(&victim, "--child", tls, nb, bb, 3, rep % 3 == 2 ? "a" : "-"),
                         0);
        ck_assert_int_eq(child_start(&other, tls, 8, bb, 4), 0);
        kvx_agent_t *a = NULL;
        ck_assert_int_eq(kvx_agent_new(NULL, &a), 0);
        kvx_region_t *r = NULL;
        ck_assert_int_eq(kvx_region_register(a, pool, bb, nb, NULL, &r), 0);
        ck_assert_int_eq(kvx_peer_import_desc(a, 1, victim.desc, victim.desc_len), 0);
        ck_assert_int_eq(kvx_peer_import_desc(a, 2, other.desc, other.desc_len), 0);
        uint32_t s[3] = {0, 1, 100}, d[3] = {5, 6, 0};
        kvx_xfer_t *xo = NULL;
        kvx_write_opts_t wo = {.timeout_ms = 4000, .tag = 5}; /* the victim expects none */
        if (am) ck_assert_int_eq(child_expect(&other, 5, UINT64_MAX), 0);
        if (rep % 2) { /* the live peer connected and used before the victim dies */
            ck_assert_int_eq(kvx_write(a, 2, r, s, d, 3, &wo, &xo), 0);
            ck_assert_int_eq(kvx_xfer_wait(xo, 6000), 0);
            kvx_xfer_free(xo);
        }
        const uint32_t tmo = 3000;
        int err = 0;
        long long t_kill = 0, t_err = 0;
        for (int i = 0; i < 400 && !err; i++) {
            kvx_xfer_t *x = NULL;
            wo.timeout_ms = tmo;
            int rc = kvx_write(a, 1, r, ids, ids, nb, &wo, &x);
            if (i == 1) {
                usleep((useconds_t)(rep * 397 % 3000)); /* at different points of the write */
                kill(victim.pid, SIGKILL);
                t_kill = mono_ms();
            }
            if (rc == 0) rc = kvx_xfer_wait(x, (int)tmo + 2000);
            ck_assert_int_ne(rc, SL_EAGAIN); /* never a hang past the timeout */
            if (rc) {
                err = rc;
                t_err = mono_ms();
            }
            kvx_xfer_free(x);
        }
        ck_assert_msg(err == SL_EUNAVAIL || err == SL_ETIMEDOUT || err == SL_EIO, "err %s",
                      sl_strerror(err));
        ck_assert_int_le(t_err - t_kill, tmo + 1500);
        /* the live peer: asserted, on every transport, every repetition */
        long long t0 = mono_ms();
        wo.timeout_ms = 4000;
        int orc = kvx_write(a, 2, r, s, d, 3, &wo, &xo);
        if (orc == 0) orc = kvx_xfer_wait(xo, 6000);
        ck_assert_msg(orc == 0, "kill(%s) rep %d: live peer after the victim died: %s (%s)", tls,
                      rep, sl_strerror(orc), xo ? kvx_xfer_error_text(xo) : "");
        ck_assert_int_lt(mono_ms() - t0, 3500); /* a new initiator worker included */
        kvx_xfer_free(xo);
        xo = NULL;
        if (am) ck_assert_int_eq(child_wait(&other, 5, (rep % 2 ? 6 : 3) * (uint64_t)bb), 1);
        for (int i = 0; i < 3; i++)
            memcpy(other.expect + (size_t)d[i] * bb, pool + (size_t)s[i] * bb, bb);
        ck_assert_int_eq(child_check(&other), 0);
        /* and the victim's id now fails fast */
        t0 = mono_ms();
        wo.timeout_ms = 1000;
        orc = kvx_write(a, 1, r, s, d, 3, &wo, &xo);
        if (orc == 0) orc = kvx_xfer_wait(xo, 3000);
        ck_assert_int_ne(orc, 0);
        ck_assert_int_ne(orc, SL_EAGAIN);
        ck_assert_int_lt(mono_ms() - t0, 1500);
        kvx_xfer_free(xo);
        kvx_region_free(r);
        kvx_agent_free(a);
        waitpid(victim.pid, NULL, 0);
        victim.pid = 0;
        child_stop(&victim);
        child_stop(&other);
    }
    free(ids);
    free(pool);
}

START_TEST(test_kill_peer_shm) {
    kill_peer_proto("sm,self", 12, NULL);
}
END_TEST

START_TEST(test_kill_peer_tcp) {
    kill_peer_proto("tcp", 2, NULL);
}
END_TEST

/* a dead target under the active-message protocol: the writer's endpoint
 * fails (no acknowledgement to wait for, but TCP resets), within the timeout */
START_TEST(test_kill_peer_am_tcp) {
    kill_peer_proto("tcp", 3, "auto");
}
END_TEST

/* kill -9 of an initiator (the prefill worker) while it writes into our
 * pool; another initiator then writes into the same pool. The pool is
 * allocated by UCX, so over shared memory no message reaches this process
 * and a dying writer cannot wedge it. Over TCP (proto "auto": active
 * messages) this process must survive every kill: with UCX's emulated puts
 * its put handler's acknowledgement to the dead writer was fatal
 * (ucs_fatal "Endpoint timeout") in about 9 runs of 10. The writers' tags
 * are their seeds; the dead writer's tag is forgotten at once, so its data
 * still in flight is dropped, not written over the live writer's. */
static void kill_writer_proto(const char *tls, int reps, bool alloc, const char *proto) {
    if (proto) setenv("SLUICE_KVX_PROTO", proto, 1);
    set_tls(tls);
    const uint32_t nb = 64;
    const size_t bb = 196608;
    kvx_agent_t *a = NULL;
    ck_assert_int_eq(kvx_agent_new(NULL, &a), 0);
    kvx_region_t *r = NULL;
    uint8_t *mine = alloc ? NULL : malloc((size_t)nb * bb);
    if (alloc)
        ck_assert_int_eq(kvx_region_alloc(a, bb, nb, &r), 0);
    else
        ck_assert_int_eq(kvx_region_register(a, mine, bb, nb, NULL, &r), 0);
    uint8_t *pool = kvx_region_ptr(r); /* (nb, bb) */
    uint8_t *desc = NULL;
    size_t dl = 0;
    ck_assert_int_eq(kvx_region_desc_export(r, &desc, &dl), 0);
    for (int rep = 0; rep < reps; rep++) {
        child_t w1, w2;
        uint64_t tag1 = 100 + (uint64_t)rep, tag2 = 200 + (uint64_t)rep;
        ck_assert_int_eq(kvx_recv_expect(a, r, tag1, UINT64_MAX), 0);
        ck_assert_int_eq(kvx_recv_expect(a, r, tag2, UINT64_MAX), 0);
        ck_assert_int_eq(writer_start(&w1, tls, nb, bb, tag1, desc, dl), 0);
        char c = 0;
        ck_assert_int_eq(read_full(w1.fd, &c, 1), 0);
        ck_assert_int_eq(c, 'R');
        usleep((useconds_t)(rep * 3000)); /* kill at varying points of a write */
        kill(w1.pid, SIGKILL);
        waitpid(w1.pid, NULL, 0);
        w1.pid = 0;
        child_stop(&w1);
        ck_assert_int_eq(kvx_recv_forget(a, tag1), 0);
        ck_assert_int_eq(writer_start(&w2, tls, nb, bb, tag2, desc, dl), 0);
        ck_assert_int_eq(read_full(w2.fd, &c, 1), 0); /* its first write completed */
        ck_assert_int_eq(c, 'R');
        shutdown(w2.fd, SHUT_WR); /* it stops after the write in progress */
        uint64_t am_total = 0;
        ck_assert_int_eq(read_full(w2.fd, &am_total, sizeof am_total), 0);
        int st = 0;
        waitpid(w2.pid, &st, 0);
        w2.pid = 0;
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "writer 2 failed");
        if (proto && strcmp(proto, "put") != 0) ck_assert_uint_gt(am_total, 0);
        uint64_t got = 0;
        for (long long t0 = mono_ms(); mono_ms() - t0 < 5000; usleep(1000)) {
            ck_assert_int_eq(kvx_recv_bytes(a, tag2, &got), 0);
            if (got >= am_total) break;
        }
        ck_assert_uint_eq(got, am_total); /* every byte the writer sent, once */
        ck_assert_int_eq(kvx_recv_forget(a, tag2), 0);
        for (uint32_t b = 0; b < nb; b++) /* block b came from its block nb-1-b */
            ck_assert_int_eq(
                memcmp(pool + (size_t)b * bb, w2.expect + (size_t)(nb - 1 - b) * bb, bb), 0);
        child_stop(&w2);
    }
    free(desc);
    kvx_region_free(r);
    kvx_agent_free(a);
    free(mine);
}

START_TEST(test_kill_writer_shm) {
    kill_writer_proto("sm,self", 6, true, "put");
}
END_TEST

/* In the default run since the active-message protocol: 8 kills. */
START_TEST(test_kill_writer_tcp) {
    kill_writer_proto("tcp", 8, true, "auto");
}
END_TEST

/* The old emulated puts over TCP: aborts this process (known, not run). */
START_TEST(test_kill_writer_put_tcp) {
    kill_writer_proto("tcp", 8, true, "put");
}
END_TEST

START_TEST(test_kill_writer_reg_shm) {
    kill_writer_proto("sm,self", 6, false, "auto");
}
END_TEST

/* A stopped peer (SIGSTOP) never acknowledges: timeout, cancel, then after
 * SIGCONT the agent reconnects and writes. A UCX-allocated pool on the same
 * host takes the writes even while its owner is stopped (one-sided puts). */
static void timeout_cancel(const char *tls, const char *flags) {
    set_tls(tls);
    bool one_sided = strncmp(tls, "sm", 2) == 0 && strchr(flags, 'a');
    child_t c;
    ck_assert_int_eq(child_spawn(&c, "--child", tls, 16, BB, 11, flags), 0);
    kvx_agent_t *a = NULL;
    ck_assert_int_eq(kvx_agent_new(NULL, &a), 0);
    uint8_t *pool = malloc(16 * BB);
    fill(pool, 16 * BB, 12);
    kvx_region_t *r = NULL;
    ck_assert_int_eq(kvx_region_register(a, pool, BB, 16, NULL, &r), 0);
    ck_assert_int_eq(kvx_peer_import_desc(a, 9, c.desc, c.desc_len), 0);
    uint32_t ids[4] = {0, 1, 2, 9};
    kvx_xfer_t *x = NULL;
    kvx_write_opts_t wo = {.timeout_ms = 5000};
    ck_assert_int_eq(kvx_write(a, 9, r, ids, ids, 4, &wo, &x), 0); /* connected */
    ck_assert_int_eq(kvx_xfer_wait(x, 6000), 0);
    kvx_xfer_free(x);
    stop_child(c.pid);
    wo.timeout_ms = 300;
    long long t0 = mono_ms();
    ck_assert_int_eq(kvx_write(a, 9, r, ids, ids, 4, &wo, &x), 0);
    if (one_sided) {
        ck_assert_int_eq(kvx_xfer_wait(x, 3000), 0);
        kvx_xfer_free(x);
    } else {
        ck_assert_int_eq(kvx_xfer_wait(x, 3000), SL_ETIMEDOUT);
        ck_assert_int_lt(mono_ms() - t0, 1500);
        ck_assert_ptr_nonnull(strstr(kvx_xfer_error_text(x), "timed out"));
        kvx_xfer_free(x);
        ck_assert_int_eq(kvx_peer_connected(a, 9), 0); /* dropped */
        /* cancel */
        wo.timeout_ms = 20000;
        ck_assert_int_eq(kvx_write(a, 9, r, ids, ids, 4, &wo, &x), 0);
        usleep(100 * 1000);
        ck_assert_int_eq(kvx_xfer_wait(x, 0), SL_EAGAIN);
        t0 = mono_ms();
        kvx_xfer_cancel(x);
        ck_assert_int_eq(kvx_xfer_wait(x, 3000), SL_ECANCELLED);
        ck_assert_int_lt(mono_ms() - t0, 1000);
        kvx_xfer_cancel(x); /* no-op once complete */
        ck_assert_int_eq(kvx_xfer_wait(x, 0), SL_ECANCELLED);
        kvx_xfer_free(x);
        /* cancel through kvx_xfer_free, with a callback */
        int done = 0;
        kvx_write_opts_t wc = {.timeout_ms = 20000, .cb = on_done_status, .ud = &done};
        ck_assert_int_eq(kvx_write(a, 9, r, ids, ids, 4, &wc, &x), 0);
        kvx_xfer_free(x);
        ck_assert_int_eq(done_get(&done), SL_ECANCELLED);
    }
    kill(c.pid, SIGCONT);
    wo.timeout_ms = 5000;
    ck_assert_int_eq(kvx_write(a, 9, r, ids, ids, 4, &wo, &x), 0);
    int st = kvx_xfer_wait(x, 8000);
    ck_assert_msg(st == 0, "after SIGCONT: %s (%s)", sl_strerror(st), kvx_xfer_error_text(x));
    kvx_xfer_free(x);
    for (int i = 0; i < 4; i++)
        memcpy(c.expect + (size_t)ids[i] * BB, pool + (size_t)ids[i] * BB, BB);
    ck_assert_int_eq(child_check(&c), 0);
    kvx_region_free(r);
    kvx_agent_free(a);
    free(pool);
    child_stop(&c);
}

START_TEST(test_timeout_cancel_tcp) {
    timeout_cancel("tcp", "-");
}
END_TEST

START_TEST(test_timeout_cancel_shm) {
    timeout_cancel("sm,self", "-");
}
END_TEST

START_TEST(test_stopped_alloc_shm) {
    timeout_cancel("sm,self", "a");
}
END_TEST

/* The descriptor of a peer that has exited: refused at import on the same
 * host (its registry is gone); a peer that exits after the import fails the
 * write within the timeout. */
static void stale_peer(const char *tls) {
    set_tls(tls);
    child_t c, live;
    ck_assert_int_eq(child_start(&c, tls, 4, BB, 1), 0);
    ck_assert_int_eq(child_start(&live, tls, 4, BB, 1), 0);
    uint8_t *desc = malloc(c.desc_len);
    size_t dl = c.desc_len;
    memcpy(desc, c.desc, dl);
    kvx_agent_t *a = NULL;
    ck_assert_int_eq(kvx_agent_new(NULL, &a), 0);
    ck_assert_int_eq(kvx_peer_import_desc(a, 6, live.desc, live.desc_len), 0);
    child_stop(&c);
    child_stop(&live); /* exits after the import */
    uint8_t *pool = malloc(4 * BB);
    memset(pool, 1, 4 * BB);
    kvx_region_t *r = NULL;
    ck_assert_int_eq(kvx_region_register(a, pool, BB, 4, NULL, &r), 0);
    ck_assert_int_eq(kvx_peer_import_desc(a, 5, desc, dl), SL_EUNAVAIL);
    uint32_t ids[2] = {0, 3};
    for (int i = 0; i < 2; i++) { /* the first write and a retry */
        kvx_xfer_t *x = NULL;
        kvx_write_opts_t wo = {.timeout_ms = 1000};
        long long t0 = mono_ms();
        int rc = kvx_write(a, 6, r, ids, ids, 2, &wo, &x);
        if (rc == 0) rc = kvx_xfer_wait(x, 4000);
        ck_assert_int_ne(rc, 0);
        ck_assert_int_ne(rc, SL_EAGAIN);
        ck_assert_int_lt(mono_ms() - t0, 2500);
        kvx_xfer_free(x);
    }
    kvx_region_free(r);
    kvx_agent_free(a);
    free(pool);
    free(desc);
}

START_TEST(test_stale_peer_tcp) {
    stale_peer("tcp");
}
END_TEST

START_TEST(test_stale_peer_shm) {
    stale_peer("sm,self");
}
END_TEST

/* The rkey of a region its owner has since freed (the owner lives on):
 * refused at import, and a write through an rkey imported before the free
 * fails with SL_EPROTO, before UCX sees it (which would write into freed
 * memory over TCP, or crash unpacking a gone shared-memory segment). */
static void freed_region(const char *tls, const char *flags) {
    set_tls(tls);
    child_t c;
    ck_assert_int_eq(child_spawn(&c, "--child", tls, 4, BB, 1, flags), 0);
    kvx_agent_t *a = NULL;
    ck_assert_int_eq(kvx_agent_new(NULL, &a), 0);
    uint8_t *pool = malloc(4 * BB);
    memset(pool, 1, 4 * BB);
    kvx_region_t *r = NULL;
    ck_assert_int_eq(kvx_region_register(a, pool, BB, 4, NULL, &r), 0);
    ck_assert_int_eq(kvx_peer_import_desc(a, 5, c.desc, c.desc_len), 0);
    uint32_t ids[2] = {0, 3};
    kvx_xfer_t *x = NULL;
    kvx_write_opts_t wo = {.timeout_ms = 2000};
    ck_assert_int_eq(kvx_write(a, 5, r, ids, ids, 2, &wo, &x), 0);
    ck_assert_int_eq(kvx_xfer_wait(x, 4000), 0);
    kvx_xfer_free(x);
    ck_assert_int_eq(write_full(c.fd, "F", 1), 0);
    char f = 0;
    ck_assert_int_eq(read_full(c.fd, &f, 1), 0);
    ck_assert_int_eq(f, 'f');
    ck_assert_int_eq(kvx_write(a, 5, r, ids, ids, 2, &wo, &x), SL_EPROTO);
    ck_assert_ptr_null(x);
    ck_assert_int_eq(kvx_peer_import_desc(a, 7, c.desc, c.desc_len), SL_EPROTO);
    ck_assert_int_eq(kvx_write(a, 7, r, ids, ids, 2, &wo, &x), SL_ENOTFOUND);
    ck_assert_int_eq(waitpid(c.pid, NULL, WNOHANG), 0); /* the owner is unharmed */
    kvx_region_free(r);
    kvx_agent_free(a);
    free(pool);
    child_stop(&c);
}

START_TEST(test_freed_region_shm) {
    freed_region("sm,self", "-");
    freed_region("sm,self", "a");
}
END_TEST

START_TEST(test_freed_region_tcp) {
    freed_region("tcp", "-");
    freed_region("tcp", "a");
}
END_TEST

/* CPU time of pid (all threads) in ms, from /proc. */
static long long proc_cpu_ms(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (long long)((ut + st) * 1000 / (unsigned long long)sysconf(_SC_CLK_TCK));
}

static long long self_cpu_ms(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}

/* An idle agent (connected, nothing in flight) sleeps: under 5% of a core
 * over ~1 s, in this process (initiator) and in the target child. */
static void idle_cpu(const char *tls) {
    set_tls(tls);
    child_t c;
    ck_assert_int_eq(child_start(&c, tls, 8, BB, 1), 0);
    kvx_agent_t *a = NULL;
    ck_assert_int_eq(kvx_agent_new(NULL, &a), 0);
    uint8_t *pool = calloc(8, BB);
    kvx_region_t *r = NULL;
    ck_assert_int_eq(kvx_region_register(a, pool, BB, 8, NULL, &r), 0);
    ck_assert_int_eq(kvx_peer_import_desc(a, 3, c.desc, c.desc_len), 0);
    uint32_t ids[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    kvx_xfer_t *x = NULL;
    ck_assert_int_eq(kvx_write(a, 3, r, ids, ids, 8, NULL, &x), 0);
    ck_assert_int_eq(kvx_xfer_wait(x, 5000), 0);
    kvx_xfer_free(x);
    ck_assert_int_eq(kvx_peer_connected(a, 3), 1);
    usleep(100 * 1000); /* let connection setup settle */
    long long t0 = mono_ms(), me0 = self_cpu_ms(), ch0 = proc_cpu_ms(c.pid);
    usleep(1200 * 1000);
    long long dt = mono_ms() - t0, me = self_cpu_ms() - me0, ch = proc_cpu_ms(c.pid) - ch0;
    fprintf(stderr, "idle(%s): %lld ms wall, this process %lld ms CPU, target %lld ms CPU\n", tls,
            dt, me, ch);
    ck_assert_int_ge(ch0, 0);
    ck_assert_int_lt(me * 20, dt);
    ck_assert_int_lt(ch * 20, dt);
    kvx_region_free(r);
    kvx_agent_free(a);
    free(pool);
    child_stop(&c);
}

START_TEST(test_idle_cpu_shm) {
    idle_cpu("sm,self");
}
END_TEST

START_TEST(test_idle_cpu_tcp) {
    idle_cpu("tcp");
}
END_TEST

/* ---- single-process: descriptors, bad input, loopback, staging ------------------------------ */

static int memcpy_stage(void *ud, void *dst, const void *src, size_t n) {
    (*(int *)ud)++;
    memcpy(dst, src, n);
    return 0;
}

static void on_done(void *ud, kvx_xfer_t *x, int status) {
    on_done_status(ud, x, status);
}

START_TEST(test_descriptors_rejected) {
    kvx_agent_t *a = NULL, *b = NULL;
    ck_assert_int_eq(kvx_agent_new(NULL, &a), 0);
    ck_assert_int_eq(kvx_agent_new(NULL, &b), 0);
    uint8_t *pool = malloc(8 * BB);
    kvx_region_t *r = NULL, *rb = NULL;
    ck_assert_int_eq(kvx_region_register(a, pool, BB, 8, NULL, &r), 0);
    ck_assert_int_eq(kvx_region_register(b, pool, BB, 8, NULL, &rb), 0);
    uint8_t *desc = NULL, *addr = NULL, *rk = NULL, *addr_b = NULL;
    size_t dl, al, rl, al_b;
    ck_assert_int_eq(kvx_region_desc_export(r, &desc, &dl), 0);
    ck_assert_int_eq(kvx_agent_address_export(a, &addr, &al), 0);
    ck_assert_int_eq(kvx_region_rkey_export(r, &rk, &rl), 0);
    ck_assert_int_eq(kvx_agent_address_export(b, &addr_b, &al_b), 0);
    /* every truncation */
    for (size_t n = 0; n < dl; n++) ck_assert_int_ne(kvx_peer_import_desc(a, 1, desc, n), 0);
    /* every single-byte corruption */
    for (size_t i = 0; i < dl; i++) {
        desc[i] ^= 0x5a;
        ck_assert_msg(kvx_peer_import_desc(a, 1, desc, dl) != 0, "corrupt byte %zu accepted", i);
        desc[i] ^= 0x5a;
    }
    /* random bytes, bare and behind a valid descriptor header */
    unsigned rs = 99;
    uint8_t junk[600];
    for (int i = 0; i < 3000; i++) {
        size_t n = (size_t)rand_r(&rs) % sizeof junk;
        for (size_t k = 0; k < n; k++) junk[k] = (uint8_t)rand_r(&rs);
        if (i % 3 == 1 && n >= 16) { /* "SLXD" v2, lengths that add up */
            memcpy(junk, desc, 8);
            uint32_t al2 = (uint32_t)(n - 16) / 2, rl2 = (uint32_t)(n - 16) - al2;
            memcpy(junk + 8, &al2, 4);
            memcpy(junk + 12, &rl2, 4);
        }
        if (i % 3 == 2 && n >= al) memcpy(junk, addr, al); /* a good address, junk rkey */
        ck_assert_int_ne(kvx_peer_import_desc(a, 1, junk, n), 0);
        ck_assert_int_ne(kvx_peer_import(a, 1, junk, n, junk, n, 0, 0), 0);
        if (i % 3 == 2 && n >= al)
            ck_assert_int_ne(kvx_peer_import(a, 1, addr, al, junk + al, n - al, 0, 0), 0);
    }
    ck_assert_int_eq(kvx_write(a, 1, r, NULL, NULL, 0, NULL, NULL), SL_ENOTFOUND);
    /* trailing garbage, wrong blob in the wrong slot */
    uint8_t *longer = calloc(1, dl + 1);
    memcpy(longer, desc, dl);
    ck_assert_int_eq(kvx_peer_import_desc(a, 1, longer, dl + 1), SL_EPROTO);
    free(longer);
    ck_assert_int_eq(kvx_peer_import(a, 1, rk, rl, addr, al, 0, 0), SL_EPROTO);
    /* stale: rkey of this agent with the address of another incarnation */
    ck_assert_int_eq(kvx_peer_import(a, 1, addr_b, al_b, rk, rl, 0, 0), SL_EPROTO);
    /* PrefillJob fields that disagree with the rkey blob */
    ck_assert_int_eq(kvx_peer_import(a, 1, addr, al, rk, rl, kvx_region_base(r) + 1, 0), SL_EINVAL);
    ck_assert_int_eq(kvx_peer_import(a, 1, addr, al, rk, rl, 0, BB + 1), SL_EINVAL);
    ck_assert_int_eq(kvx_peer_import(a, 1, NULL, al, rk, rl, 0, 0), SL_EINVAL);
    ck_assert_int_eq(kvx_peer_import(a, 1, addr, (size_t)1 << 30, rk, rl, 0, 0), SL_EINVAL);
    /* the good one, as PrefillJob fields */
    ck_assert_int_eq(
        kvx_peer_import(a, 1, addr, al, rk, rl, kvx_region_base(r), kvx_region_block_bytes(r)), 0);
    uint32_t s[2] = {0, 1}, d[2] = {7, 8};
    ck_assert_int_eq(kvx_write(a, 1, r, s, d, 2, NULL, NULL), SL_ERANGE); /* remote 8 */
    d[1] = 7;
    ck_assert_int_eq(kvx_write(a, 1, r, s, d, 2, NULL, NULL), SL_EINVAL); /* duplicate */
    s[0] = 8;
    d[1] = 6;
    ck_assert_int_eq(kvx_write(a, 1, r, s, d, 2, NULL, NULL), SL_ERANGE);  /* local 8 */
    ck_assert_int_eq(kvx_write(a, 1, rb, s, d, 2, NULL, NULL), SL_EINVAL); /* foreign region */
    ck_assert_int_eq(kvx_write(a, 1, r, NULL, d, 2, NULL, NULL), SL_EINVAL);
    ck_assert_int_eq(kvx_peer_remove(a, 1), 0);
    ck_assert_int_eq(kvx_peer_remove(a, 1), SL_ENOTFOUND);
    /* registration */
    kvx_region_t *bad = NULL;
    ck_assert_int_eq(kvx_region_register(a, NULL, BB, 8, NULL, &bad), SL_EINVAL);
    ck_assert_int_eq(kvx_region_register(a, pool, 0, 8, NULL, &bad), SL_EINVAL);
    ck_assert_int_eq(kvx_region_register(a, pool, BB, 0, NULL, &bad), SL_EINVAL);
    ck_assert_int_eq(kvx_region_register(a, pool, SIZE_MAX / 2, 3, NULL, &bad), SL_EINVAL);
    kvx_region_opts_t dev = {.mem_type = KVX_MEM_DEVICE};
    ck_assert_int_eq(kvx_region_register(a, pool, BB, 8, &dev, &bad), SL_EUNSUPPORTED);
    ck_assert_ptr_null(bad);
    kvx_region_free(NULL);
    kvx_agent_free(NULL);
    kvx_xfer_free(NULL);
    free(desc);
    free(addr);
    free(rk);
    free(addr_b);
    kvx_region_free(r);
    kvx_region_free(rb);
    kvx_agent_free(a);
    kvx_agent_free(b);
    free(pool);
}
END_TEST

START_TEST(test_loopback_staging_callback) {
    kvx_agent_t *a = NULL;
    kvx_agent_opts_t ao = {.name = "loop", .staging_bytes = 4 * BB};
    ck_assert_int_eq(kvx_agent_new(&ao, &a), 0);
    uint8_t *dstpool = calloc(16, BB), *srcpool = malloc(16 * BB);
    fill(srcpool, 16 * BB, 77);
    kvx_region_t *rd = NULL, *rs = NULL, *rstage = NULL;
    ck_assert_int_eq(kvx_region_register(a, dstpool, BB, 16, NULL, &rd), 0);
    ck_assert_int_eq(kvx_region_register(a, srcpool, BB, 16, NULL, &rs), 0);
    int staged_calls = 0;
    kvx_region_opts_t so = {
        .mem_type = KVX_MEM_DEVICE, .stage_fn = memcpy_stage, .stage_ud = &staged_calls};
    ck_assert_int_eq(kvx_region_register(a, srcpool, BB, 16, &so, &rstage), 0);
    uint8_t *tmp = NULL;
    size_t tl;
    ck_assert_int_eq(kvx_region_rkey_export(rstage, &tmp, &tl), SL_EUNSUPPORTED);
    uint8_t *desc = NULL;
    size_t dl;
    ck_assert_int_eq(kvx_region_desc_export(rd, &desc, &dl), 0);
    ck_assert_int_eq(kvx_peer_import_desc(a, 7, desc, dl), 0);
    ck_assert_int_eq(kvx_peer_import_desc(a, 7, desc, dl), 0); /* same again: kept */
    /* coalescing: {5,6,7}->{10,11,12} is one run, 1->3 another, in any order */
    uint32_t s[4] = {6, 1, 7, 5}, d[4] = {11, 3, 12, 10};
    int done = 0;
    kvx_write_opts_t wo = {.cb = on_done, .ud = &done};
    kvx_xfer_t *x = NULL;
    ck_assert_int_eq(kvx_write(a, 7, rs, s, d, 4, &wo, &x), 0);
    ck_assert_int_eq(kvx_xfer_wait(x, 5000), 0);
    ck_assert_int_eq(done_get(&done), 1);
    ck_assert_uint_eq(kvx_xfer_n_puts(x), 2);
    kvx_xfer_free(x);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(memcmp(dstpool + (size_t)d[i] * BB, srcpool + (size_t)s[i] * BB, BB), 0);
    /* agent-owned transfer, staged source */
    uint32_t s2[3] = {15, 0, 9}, d2[3] = {0, 1, 2};
    __atomic_store_n(&done, 0, __ATOMIC_RELEASE);
    ck_assert_int_eq(kvx_write(a, 7, rstage, s2, d2, 3, &wo, NULL), 0);
    for (int i = 0; i < 500 && !done_get(&done); i++) usleep(2000);
    ck_assert_int_eq(done_get(&done), 1);
    ck_assert_int_eq(staged_calls, 3);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(memcmp(dstpool + (size_t)d2[i] * BB, srcpool + (size_t)s2[i] * BB, BB), 0);
    uint32_t s5[5] = {0, 1, 2, 3, 4}, d5[5] = {0, 1, 2, 3, 4};
    ck_assert_int_eq(kvx_write(a, 7, rstage, s5, d5, 5, NULL, NULL), SL_ETOOBIG);
    /* empty transfer completes */
    ck_assert_int_eq(kvx_write(a, 7, rs, NULL, NULL, 0, NULL, &x), 0);
    ck_assert_int_eq(kvx_xfer_wait(x, 1000), 0);
    kvx_xfer_free(x);
    free(desc);
    kvx_region_free(rd);
    kvx_region_free(rs);
    kvx_region_free(rstage);
    kvx_agent_free(a);
    free(dstpool);
    free(srcpool);
}
END_TEST

/* Malformed active messages into a live target: every one dropped and
 * counted, the pool untouched, the target healthy, and a good write after
 * them lands byte for byte. */
static void am_malformed(const char *tls) {
    setenv("SLUICE_KVX_PROTO", "am", 1);
    set_tls(tls);
    const uint32_t nb = 8;
    child_t c;
    ck_assert_int_eq(child_spawn(&c, "--child", tls, nb, BB, 21, "-"), 0);
    kvx_agent_t *a = NULL;
    ck_assert_int_eq(kvx_agent_new(NULL, &a), 0);
    ck_assert_int_eq(kvx_peer_import_desc(a, 3, c.desc, c.desc_len), 0);
    const uint64_t tag = 77, small = 99, blk = 55;
    ck_assert_int_eq(child_expect(&c, tag, 4 * BB), 0);
    ck_assert_int_eq(child_expect(&c, small, 50), 0);
    ck_assert_int_eq(child_expect_blocks(&c, blk, 4, 1), 0); /* blocks 1 and 4 only */
    uint8_t data[300], h[KVX_AM_HDR_BYTES], bad[KVX_AM_HDR_BYTES];
    memset(data, 0xAB, sizeof data);
    const uint64_t pool_bytes = (uint64_t)nb * BB;
    struct {
        uint64_t tag, off, len;
        int patch; /* byte of the header to flip; -1 none */
        size_t hdr_len, data_len;
    } cases[] = {
        {tag, pool_bytes - 10, 100, -1, KVX_AM_HDR_BYTES, 100}, /* past the end */
        {tag, UINT64_MAX - 5, 100, -1, KVX_AM_HDR_BYTES, 100},  /* offset overflow */
        {tag, 0, 100, 16, KVX_AM_HDR_BYTES, 100},               /* unknown region serial */
        {tag + 1, 0, 100, -1, KVX_AM_HDR_BYTES, 100},           /* unknown tag */
        {0, 0, 100, -1, KVX_AM_HDR_BYTES, 100},                 /* tag 0 */
        {tag, 0, 100, -1, 20, 100},                             /* truncated header */
        {tag, 0, 100, -1, 0, 100},                              /* no header */
        {tag, 0, 200, -1, KVX_AM_HDR_BYTES, 100},               /* length != data */
        {tag, 0, 0, -1, KVX_AM_HDR_BYTES, 0},                   /* empty */
        {tag, 0, 100, 8, KVX_AM_HDR_BYTES, 100},                /* other incarnation */
        {tag, 0, 100, 0, KVX_AM_HDR_BYTES, 100},                /* bad magic */
        {tag, 0, 100, 4, KVX_AM_HDR_BYTES, 100},                /* bad version */
        {small, 0, 100, -1, KVX_AM_HDR_BYTES, 100},             /* more than expected */
        {blk, 2 * BB, 100, -1, KVX_AM_HDR_BYTES, 100},          /* block not the tag's */
        {blk, 2 * BB - 50, 100, -1, KVX_AM_HDR_BYTES, 100},     /* from block 1 into 2 */
        {blk, 5 * BB - 50, 100, -1, KVX_AM_HDR_BYTES, 100},     /* from block 4 into 5 */
    };
    size_t n_cases = sizeof cases / sizeof cases[0];
    for (size_t i = 0; i < n_cases; i++) {
        ck_assert_int_eq(kvx_debug_am_header(a, 3, cases[i].tag, cases[i].off, cases[i].len, h), 0);
        memcpy(bad, h, sizeof h);
        if (cases[i].patch >= 0) bad[cases[i].patch] ^= 0x5A;
        int rc = kvx_debug_am_send(a, 3, bad, cases[i].hdr_len, data, cases[i].data_len, 3000);
        ck_assert_msg(rc == 0, "case %zu: %s", i, sl_strerror(rc));
    }
    kvx_agent_stats_t st = {0};
    for (long long t0 = mono_ms(); mono_ms() - t0 < 5000; usleep(2000)) {
        st = child_stats(&c);
        if (st.am_dropped >= n_cases) break;
    }
    ck_assert_uint_eq(st.am_dropped, n_cases);
    ck_assert_uint_eq(st.am_msgs, 0);
    ck_assert_int_eq(kvx_peer_connected(a, 3), 1);
    ck_assert_int_eq(child_check(&c), 0); /* nothing written */
    /* healthy: a well-formed message and a real write land */
    ck_assert_int_eq(kvx_debug_am_header(a, 3, tag, 5, 100, h), 0);
    ck_assert_int_eq(kvx_debug_am_send(a, 3, h, sizeof h, data, 100, 3000), 0);
    ck_assert_int_eq(child_wait(&c, tag, 100), 1);
    memset(c.expect + 5, 0xAB, 100);
    /* the block-restricted tag takes a message inside its block 4 */
    ck_assert_int_eq(kvx_debug_am_header(a, 3, blk, 4 * BB + 7, 100, h), 0);
    ck_assert_int_eq(kvx_debug_am_send(a, 3, h, sizeof h, data, 100, 3000), 0);
    ck_assert_int_eq(child_wait(&c, blk, 100), 1);
    memset(c.expect + 4 * BB + 7, 0xAB, 100);
    uint8_t *pool = malloc(4 * BB); /* (4, BB) */
    fill(pool, 4 * BB, 5);
    kvx_region_t *r = NULL;
    ck_assert_int_eq(kvx_region_register(a, pool, BB, 4, NULL, &r), 0);
    uint32_t s2[3] = {0, 1, 3}, d2[3] = {7, 2, 3};
    kvx_xfer_t *x = NULL;
    kvx_write_opts_t wo = {.timeout_ms = 5000, .tag = tag};
    ck_assert_int_eq(kvx_write(a, 3, r, s2, d2, 3, &wo, &x), 0);
    ck_assert_int_eq(kvx_xfer_wait(x, 6000), 0);
    ck_assert_uint_eq(kvx_xfer_am_bytes(x), 3 * BB);
    kvx_xfer_free(x);
    ck_assert_int_eq(child_wait(&c, tag, 100 + 3 * BB), 1);
    for (int i = 0; i < 3; i++)
        memcpy(c.expect + (size_t)d2[i] * BB, pool + (size_t)s2[i] * BB, BB);
    ck_assert_int_eq(child_check(&c), 0);
    /* the tag is full now (100 + 3 blocks of 4): one more block is refused */
    uint32_t s3[1] = {2}, d3[1] = {6};
    ck_assert_int_eq(kvx_write(a, 3, r, s3, d3, 1, &wo, &x), 0);
    ck_assert_int_eq(kvx_xfer_wait(x, 6000), 0);
    kvx_xfer_free(x);
    for (long long t0 = mono_ms(); mono_ms() - t0 < 5000; usleep(2000)) {
        st = child_stats(&c);
        if (st.am_dropped > n_cases) break;
    }
    ck_assert_uint_eq(st.am_dropped, n_cases + 1);
    ck_assert_int_eq(child_check(&c), 0);
    /* a write by active messages needs a tag */
    wo.tag = 0;
    ck_assert_int_eq(kvx_write(a, 3, r, s3, d3, 1, &wo, &x), SL_EINVAL);
    ck_assert_int_eq(waitpid(c.pid, NULL, WNOHANG), 0); /* alive */
    kvx_region_free(r);
    kvx_agent_free(a);
    free(pool);
    child_stop(&c);
}

START_TEST(test_am_malformed_tcp) {
    am_malformed("tcp");
}
END_TEST

START_TEST(test_am_malformed_shm) {
    am_malformed("sm,self");
}
END_TEST

/* The receive-completion callback: once per declaration, when the tag's
 * declared bytes have all landed (loopback, active messages), not for a
 * partial write nor for dropped data. */
typedef struct notify_seen {
    kvx_agent_t *a;
    int calls; /* atomic */
    uint64_t tag;
    int done_then; /* kvx_recv_done from inside the callback */
} notify_seen_t;

static void notify_cb(void *ud, uint64_t tag) {
    notify_seen_t *n = ud;
    n->tag = tag;
    n->done_then = kvx_recv_done(n->a, tag, 2 * BB); /* outside the agent lock */
    __atomic_add_fetch(&n->calls, 1, __ATOMIC_SEQ_CST);
}

static int notify_calls_wait(notify_seen_t *n, int want, int ms) {
    for (long long t0 = mono_ms(); mono_ms() - t0 < ms; usleep(2000))
        if (__atomic_load_n(&n->calls, __ATOMIC_SEQ_CST) >= want) break;
    return __atomic_load_n(&n->calls, __ATOMIC_SEQ_CST);
}

START_TEST(test_recv_notify) {
    setenv("SLUICE_KVX_PROTO", "am", 1);
    set_tls("tcp");
    kvx_agent_t *a = NULL;
    ck_assert_int_eq(kvx_agent_new(NULL, &a), 0);
    uint8_t *dst = calloc(8, BB), *src = malloc(8 * BB); /* (8, BB) each */
    fill(src, 8 * BB, 9);
    kvx_region_t *rd = NULL, *rs = NULL;
    ck_assert_int_eq(kvx_region_register(a, dst, BB, 8, NULL, &rd), 0);
    ck_assert_int_eq(kvx_region_register(a, src, BB, 8, NULL, &rs), 0);
    uint8_t *desc = NULL;
    size_t dl;
    ck_assert_int_eq(kvx_region_desc_export(rd, &desc, &dl), 0);
    ck_assert_int_eq(kvx_peer_import_desc(a, 7, desc, dl), 0);
    notify_seen_t n = {.a = a};
    ck_assert_int_eq(kvx_agent_recv_notify(NULL, notify_cb, &n), SL_EINVAL);
    ck_assert_int_eq(kvx_agent_recv_notify(a, notify_cb, &n), 0);
    const uint64_t tag = 4242;
    uint32_t blocks[2] = {3, 4};
    ck_assert_int_eq(kvx_recv_expect_blocks(a, rd, tag, blocks, 2), 0);
    /* dropped: a block that is not the tag's, and an unknown tag */
    uint8_t h[KVX_AM_HDR_BYTES], data[100];
    memset(data, 0xCD, sizeof data);
    ck_assert_int_eq(kvx_debug_am_header(a, 7, tag, 0, sizeof data, h), 0);
    ck_assert_int_eq(kvx_debug_am_send(a, 7, h, sizeof h, data, sizeof data, 3000), 0);
    ck_assert_int_eq(kvx_debug_am_header(a, 7, tag + 1, 3 * BB, sizeof data, h), 0);
    ck_assert_int_eq(kvx_debug_am_send(a, 7, h, sizeof h, data, sizeof data, 3000), 0);
    kvx_agent_stats_t st = {0};
    for (long long t0 = mono_ms(); mono_ms() - t0 < 5000 && st.am_dropped < 2; usleep(2000))
        kvx_agent_stats(a, &st);
    ck_assert_uint_eq(st.am_dropped, 2);
    /* half of the declared bytes: no call yet */
    uint32_t s1[1] = {0}, d1[1] = {3};
    kvx_xfer_t *x = NULL;
    kvx_write_opts_t wo = {.timeout_ms = 5000, .tag = tag};
    ck_assert_int_eq(kvx_write(a, 7, rs, s1, d1, 1, &wo, &x), 0);
    ck_assert_int_eq(kvx_xfer_wait(x, 6000), 0);
    kvx_xfer_free(x);
    uint64_t got = 0;
    for (long long t0 = mono_ms(); mono_ms() - t0 < 5000 && got < BB; usleep(2000))
        ck_assert_int_eq(kvx_recv_bytes(a, tag, &got), 0);
    ck_assert_uint_eq(got, BB);
    ck_assert_int_eq(notify_calls_wait(&n, 1, 100), 0);
    /* the rest: exactly one call, with the data already visible */
    uint32_t s2[1] = {1}, d2[1] = {4};
    ck_assert_int_eq(kvx_write(a, 7, rs, s2, d2, 1, &wo, &x), 0);
    ck_assert_int_eq(kvx_xfer_wait(x, 6000), 0);
    kvx_xfer_free(x);
    ck_assert_int_eq(notify_calls_wait(&n, 1, 5000), 1);
    ck_assert_uint_eq(n.tag, tag);
    ck_assert_int_eq(n.done_then, 1);
    ck_assert_int_eq(memcmp(dst + 4 * BB, src + 1 * BB, BB), 0);
    ck_assert_int_eq(notify_calls_wait(&n, 2, 200), 1); /* once */
    ck_assert_int_eq(kvx_agent_recv_notify(a, NULL, NULL), 0);
    free(desc);
    kvx_region_free(rd);
    kvx_region_free(rs);
    kvx_agent_free(a);
    free(dst);
    free(src);
}
END_TEST

/* The target's tag table: bad arguments, a bound, forget, region free. */
START_TEST(test_recv_table) {
    kvx_agent_t *a = NULL;
    ck_assert_int_eq(kvx_agent_new(NULL, &a), 0);
    uint8_t *pool = malloc(2 * BB);
    kvx_region_t *r = NULL;
    ck_assert_int_eq(kvx_region_register(a, pool, BB, 2, NULL, &r), 0);
    uint64_t got = 0;
    ck_assert_int_eq(kvx_recv_expect(a, r, 0, 10), SL_EINVAL);
    ck_assert_int_eq(kvx_recv_expect(NULL, r, 1, 10), SL_EINVAL);
    ck_assert_int_eq(kvx_recv_expect(a, NULL, 1, 10), SL_EINVAL);
    ck_assert_int_eq(kvx_recv_done(a, 1, 0), SL_ENOTFOUND);
    ck_assert_int_eq(kvx_recv_bytes(a, 1, &got), SL_ENOTFOUND);
    ck_assert_int_eq(kvx_recv_forget(a, 1), SL_ENOTFOUND);
    for (uint64_t t = 1; t <= KVX_RECV_MAX; t++) ck_assert_int_eq(kvx_recv_expect(a, r, t, 10), 0);
    ck_assert_int_eq(kvx_recv_expect(a, r, KVX_RECV_MAX + 1, 10), SL_EAGAIN); /* bounded */
    ck_assert_int_eq(kvx_recv_expect(a, r, 5, 20), 0);                        /* re-declare */
    ck_assert_int_eq(kvx_recv_done(a, 5, 0), 1);
    ck_assert_int_eq(kvx_recv_done(a, 5, 1), 0);
    ck_assert_int_eq(kvx_recv_bytes(a, 5, &got), 0);
    ck_assert_uint_eq(got, 0);
    ck_assert_int_eq(kvx_recv_forget(a, 5), 0);
    ck_assert_int_eq(kvx_recv_expect(a, r, KVX_RECV_MAX + 1, 10), 0); /* a slot again */
    uint32_t ids[3] = {1, 0, 1};
    ck_assert_int_eq(kvx_recv_forget(a, 6), 0);
    ck_assert_int_eq(kvx_recv_expect_blocks(a, r, 6, NULL, 1), SL_EINVAL);
    ck_assert_int_eq(kvx_recv_expect_blocks(a, r, 6, ids, 3), SL_EINVAL); /* more than r has */
    ck_assert_int_eq(kvx_recv_expect_blocks(a, r, 6, ids + 1, 2), 0);
    ck_assert_int_eq(kvx_recv_done(a, 6, 2 * BB), 0); /* two blocks' bytes expected */
    ck_assert_int_eq(kvx_recv_forget(a, 6), 0);
    ids[1] = 1;
    ck_assert_int_eq(kvx_recv_expect_blocks(a, r, 6, ids, 2), SL_EINVAL); /* repeated */
    ids[1] = 2;
    ck_assert_int_eq(kvx_recv_expect_blocks(a, r, 6, ids, 2), SL_EINVAL); /* out of range */
    ck_assert_int_eq(kvx_recv_expect_blocks(a, r, 6, ids, 1), 0);
    kvx_region_free(r); /* forgets its tags */
    ck_assert_int_eq(kvx_recv_done(a, 7, 0), SL_ENOTFOUND);
    ck_assert_int_eq(kvx_region_register(a, pool, BB, 2, NULL, &r), 0);
    for (uint64_t t = 1; t <= KVX_RECV_MAX; t++) ck_assert_int_eq(kvx_recv_expect(a, r, t, 10), 0);
    kvx_region_free(r);
    kvx_agent_free(a);
    free(pool);
}
END_TEST

int main(int argc, char **argv) {
    if (argc == 7 && strcmp(argv[1], "--child") == 0) {
        sl_log_init("kvx-child");
        return child_main((int)strtol(argv[2], NULL, 10), (uint32_t)strtoul(argv[3], NULL, 10),
                          (size_t)strtoull(argv[4], NULL, 10), strtoull(argv[5], NULL, 10),
                          argv[6]);
    }
    if (argc == 7 && strcmp(argv[1], "--writer") == 0) {
        sl_log_init("kvx-writer");
        return writer_main((int)strtol(argv[2], NULL, 10), (uint32_t)strtoul(argv[3], NULL, 10),
                           (size_t)strtoull(argv[4], NULL, 10), strtoull(argv[5], NULL, 10));
    }
    sl_log_init("test_kv_transfer");
    signal(SIGPIPE, SIG_IGN);
    setenv("SLUICE_KVX_PROTO", "put", 1); /* the put tests; AM tests set their own */
    Suite *s = suite_create("kv_transfer");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    const TTest *all[] = {
        test_descriptors_rejected, test_loopback_staging_callback,
        test_roundtrip_shm,        test_roundtrip_tcp,
        test_roundtrip_alloc_shm,  test_roundtrip_alloc_tcp,
        test_timeout_cancel_tcp,   test_timeout_cancel_shm,
        test_stopped_alloc_shm,    test_stale_peer_tcp,
        test_stale_peer_shm,       test_freed_region_shm,
        test_freed_region_tcp,     test_idle_cpu_shm,
        test_idle_cpu_tcp,         test_kill_peer_shm,
        test_kill_peer_tcp,        test_kill_writer_shm,
        test_kill_writer_tcp,      test_roundtrip_auto_tcp,
        test_roundtrip_auto_shm,   test_roundtrip_auto_alloc_shm,
        test_roundtrip_am_tcp,     test_roundtrip_am_alloc_shm,
        test_am_malformed_tcp,     test_am_malformed_shm,
        test_recv_table,           test_kill_peer_am_tcp,
        test_recv_notify,
    };
    /* Known to fail, run only when named (common/transfer/README.md): UCX
     * 1.13 aborts the target process when a TCP writer dies mid-put (with
     * SLUICE_KVX_PROTO=put, the emulated puts the AM protocol replaces), and
     * a writer killed mid-write can wedge a target's registered (not
     * allocated) pool over shm. */
    const TTest *known[] = {test_kill_writer_put_tcp, test_kill_writer_reg_shm};
    const char *only = getenv("KVX_ONLY"); /* e.g. KVX_ONLY=kill_peer_shm */
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (!only || strstr(all[i]->name, only)) tcase_add_test(tc, all[i]);
    for (size_t i = 0; only && i < sizeof known / sizeof known[0]; i++)
        if (strstr(known[i]->name, only)) tcase_add_test(tc, known[i]);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
