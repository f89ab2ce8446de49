/* test_kv_index.c - the router's prefix index against a brute-force model under
 * random store / remove / clear / leave sequences, plus the edges: shared
 * (kv-manager) holders, early stop, more than 64 workers, bad input. */
#include "services/router/kv_index.h"
#include "common/base/err.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- brute-force model: have[worker index][tier][chain block id] ------------ */

#define CHAINS    6
#define CHAIN_LEN 40
#define MAXW      200
static uint64_t chains[CHAINS][CHAIN_LEN];
static bool have[MAXW][3][CHAINS * CHAIN_LEN];
static uint64_t *model_workers;

static int id_of(uint64_t h) {
    for (int i = 0; i < CHAINS * CHAIN_LEN; i++)
        if (chains[i / CHAIN_LEN][i % CHAIN_LEN] == h) return i;
    return -1;
}
static size_t widx(uint64_t w) {
    for (size_t i = 0; i < MAXW; i++)
        if (model_workers[i] == w) return i;
    ck_abort_msg("unknown worker");
    return 0;
}
static bool model_has(uint64_t w, int t, uint64_t h) {
    int id = id_of(h);
    return id >= 0 && have[widx(w)][t][id];
}
static void model_add(uint64_t w, int t, uint64_t h) {
    int id = id_of(h);
    ck_assert_int_ge(id, 0);
    have[widx(w)][t][id] = true;
}
static void model_del_if(uint64_t w, int t, uint64_t h, bool any_h, bool any_t) {
    size_t wi = widx(w);
    int id = any_h ? -1 : id_of(h);
    if (!any_h && id < 0) return;
    for (int tt = 0; tt < 3; tt++) {
        if (!any_t && tt != t) continue;
        for (int i = 0; i < CHAINS * CHAIN_LEN; i++)
            if (any_h || i == id) have[wi][tt][i] = false;
    }
}

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Expected overlap of worker w (non-shared) given shared holders. */
static void model_overlap(const uint64_t *hs, size_t n, uint64_t w, const uint64_t *shared,
                          size_t n_shared, uint32_t out[3]) {
    out[0] = out[1] = out[2] = 0;
    for (size_t i = 0; i < n; i++) {
        bool d = model_has(w, 0, hs[i]), h = model_has(w, 1, hs[i]), k = model_has(w, 2, hs[i]);
        for (size_t s = 0; s < n_shared; s++) {
            h |= model_has(shared[s], 1, hs[i]);
            k |= model_has(shared[s], 2, hs[i]);
        }
        if (d)
            out[0]++;
        else if (h)
            out[1]++;
        else if (k)
            out[2]++;
        else
            break;
    }
}

static void check_against_model(kv_index_t *idx, const uint64_t *workers, const bool *present,
                                const bool *is_shared, size_t nw) {
    uint64_t shared[16];
    size_t n_shared = 0;
    for (size_t i = 0; i < nw; i++)
        if (present[i] && is_shared[i]) shared[n_shared++] = workers[i];
    for (int c = 0; c < CHAINS; c++) {
        size_t n = 1 + rnd() % CHAIN_LEN;
        kv_overlap_t out[MAXW];
        size_t n_out = 0;
        ck_assert_int_eq(kv_index_lookup(idx, chains[c], n, out, MAXW, &n_out), 0);
        for (size_t i = 0; i < nw; i++) {
            uint32_t exp[3] = {0, 0, 0};
            if (present[i] && !is_shared[i])
                model_overlap(chains[c], n, workers[i], shared, n_shared, exp);
            uint32_t got[3] = {0, 0, 0};
            for (size_t j = 0; j < n_out; j++)
                if (out[j].worker_id == workers[i]) {
                    got[0] = out[j].device;
                    got[1] = out[j].host;
                    got[2] = out[j].disk;
                    ck_assert(got[0] + got[1] + got[2] > 0);
                }
            ck_assert_msg(memcmp(exp, got, sizeof exp) == 0,
                          "worker %zu chain %d n %zu: want %u/%u/%u got %u/%u/%u", i, c, n, exp[0],
                          exp[1], exp[2], got[0], got[1], got[2]);
        }
    }
    /* Size: distinct hashes in the model; per-worker counts. */
    size_t distinct = 0;
    for (int id = 0; id < CHAINS * CHAIN_LEN; id++) {
        bool any = false;
        for (size_t i = 0; i < nw && !any; i++)
            for (int t = 0; t < 3; t++) any |= have[i][t][id];
        distinct += any;
    }
    ck_assert_uint_eq(kv_index_size(idx), distinct);
    for (size_t i = 0; i < nw; i++) {
        if (!present[i]) continue;
        for (int t = 0; t < 3; t++) {
            size_t cnt = 0;
            for (int id = 0; id < CHAINS * CHAIN_LEN; id++) cnt += have[i][t][id];
            ck_assert_uint_eq(kv_index_worker_blocks(idx, workers[i], t), cnt);
        }
    }
}

static void random_run(size_t nw, int steps, uint64_t seed, size_t expected, int every) {
    rng_state = seed;
    memset(have, 0, sizeof have);
    for (int c = 0; c < CHAINS; c++)
        for (int i = 0; i < CHAIN_LEN; i++)
            /* Small hash values on purpose (incl. 0): collisions in home slots. */
            chains[c][i] = (c < 2) ? (uint64_t)(c * CHAIN_LEN + i) : rnd();
    kv_index_t *idx;
    ck_assert_int_eq(kv_index_new(&idx, expected), 0);
    static uint64_t workers[MAXW];
    bool present[MAXW] = {0}, is_shared[MAXW] = {0};
    ck_assert_uint_le(nw, MAXW);
    for (size_t i = 0; i < MAXW; i++) workers[i] = 0x1000 + i * 7919;
    model_workers = workers;
    for (int step = 0; step < steps; step++) {
        size_t wi = rnd() % nw;
        uint64_t w = workers[wi];
        int op = (int)(rnd() % 100);
        int t = (int)(rnd() % 3);
        if (!present[wi]) {
            bool sh = (wi % 9) == 8;
            ck_assert_int_eq(kv_index_worker_add(idx, w, sh), 0);
            present[wi] = true;
            is_shared[wi] = sh;
            continue;
        }
        if (op < 55) { /* store a chain segment (engines store prefixes) */
            int c = (int)(rnd() % CHAINS);
            size_t from = rnd() % CHAIN_LEN, len = 1 + rnd() % (CHAIN_LEN - from);
            if (rnd() % 2) from = 0;
            ck_assert_int_eq(kv_index_store(idx, w, t, chains[c] + from, len), 0);
            for (size_t i = 0; i < len; i++) model_add(w, t, chains[c][from + i]);
        } else if (op < 85) { /* remove a few (some never stored) */
            uint64_t hs[5];
            for (int i = 0; i < 5; i++)
                hs[i] = (rnd() % 4) ? chains[rnd() % CHAINS][rnd() % CHAIN_LEN] : rnd();
            ck_assert_int_eq(kv_index_remove(idx, w, t, hs, 5), 0);
            for (int i = 0; i < 5; i++) model_del_if(w, t, hs[i], false, false);
        } else if (op < 93) {
            ck_assert_int_eq(kv_index_clear(idx, w, t), 0);
            model_del_if(w, t, 0, true, false);
        } else {
            ck_assert_int_eq(kv_index_worker_remove(idx, w), 0);
            ck_assert(!kv_index_worker_known(idx, w));
            model_del_if(w, 0, 0, true, true);
            present[wi] = false;
        }
        if (step % every == 0) check_against_model(idx, workers, present, is_shared, nw);
    }
    check_against_model(idx, workers, present, is_shared, nw);
    kv_index_free(idx);
}

START_TEST(test_random_vs_model_small) {
    random_run(5, 3000, 1 + (uint64_t)_i, 0, 7);
}
END_TEST

START_TEST(test_random_vs_model_many_workers) {
    /* 150 workers: the bitsets widen from one word to three while in use. */
    random_run(150, 4000, 99, 16, 200);
}
END_TEST

START_TEST(test_lookup_tiers_and_early_stop) {
    kv_index_t *idx;
    ck_assert_int_eq(kv_index_new(&idx, 0), 0);
    uint64_t h[10];
    for (int i = 0; i < 10; i++) h[i] = 1000 + (uint64_t)i;
    ck_assert_int_eq(kv_index_worker_add(idx, 1, false), 0);
    ck_assert_int_eq(kv_index_worker_add(idx, 2, false), 0);
    ck_assert_int_eq(kv_index_worker_add(idx, 99, true), 0); /* kv-manager */
    ck_assert_int_eq(kv_index_store(idx, 1, KV_INDEX_TIER_DEVICE, h, 3), 0);
    ck_assert_int_eq(kv_index_store(idx, 1, KV_INDEX_TIER_HOST, h, 5), 0); /* overlaps device */
    ck_assert_int_eq(kv_index_store(idx, 2, KV_INDEX_TIER_DEVICE, h + 1, 9), 0); /* no block 0 */
    kv_overlap_t out[4];
    size_t n = 9;
    ck_assert_int_eq(kv_index_lookup(idx, h, 10, out, 4, &n), 0);
    ck_assert_uint_eq(n, 1); /* worker 2 lacks the first block: no prefix */
    ck_assert_uint_eq(out[0].worker_id, 1);
    ck_assert_uint_eq(out[0].device, 3);
    ck_assert_uint_eq(out[0].host, 2);
    ck_assert_uint_eq(out[0].disk, 0);
    /* The kv-manager holds 0..6 on disk: everyone gets them at disk weight. */
    ck_assert_int_eq(kv_index_store(idx, 99, KV_INDEX_TIER_DISK, h, 7), 0);
    ck_assert_int_eq(kv_index_lookup(idx, h, 10, out, 4, &n), 0);
    ck_assert_uint_eq(n, 2);
    for (size_t i = 0; i < n; i++) {
        if (out[i].worker_id == 1) {
            ck_assert_uint_eq(out[i].device + out[i].host + out[i].disk, 7);
            ck_assert_uint_eq(out[i].disk, 2);
        } else {
            ck_assert_uint_eq(out[i].worker_id, 2);
            /* block 0 on disk via the kv-manager, 1..6 device, 7..9 device */
            ck_assert_uint_eq(out[i].disk, 1);
            ck_assert_uint_eq(out[i].device, 9);
        }
    }
    /* max too small */
    ck_assert_int_eq(kv_index_lookup(idx, h, 10, out, 1, &n), SL_ETOOBIG);
    ck_assert_uint_eq(n, 1);
    /* Purge worker 2: only worker 1 left. */
    ck_assert_int_eq(kv_index_worker_remove(idx, 2), 0);
    ck_assert_int_eq(kv_index_worker_remove(idx, 2), SL_ENOTFOUND);
    ck_assert_int_eq(kv_index_lookup(idx, h, 10, out, 4, &n), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(kv_index_worker_blocks(idx, 2, 0), 0);
    /* Purge everyone: the table is empty again. */
    ck_assert_int_eq(kv_index_worker_remove(idx, 1), 0);
    ck_assert_int_eq(kv_index_worker_remove(idx, 99), 0);
    ck_assert_uint_eq(kv_index_size(idx), 0);
    ck_assert_int_eq(kv_index_lookup(idx, h, 10, out, 4, &n), 0);
    ck_assert_uint_eq(n, 0);
    kv_index_free(idx);
}
END_TEST

START_TEST(test_bad_input) {
    kv_index_t *idx;
    uint64_t h = 5;
    size_t n;
    kv_overlap_t o;
    ck_assert_int_eq(kv_index_new(NULL, 0), SL_EINVAL);
    ck_assert_int_eq(kv_index_new(&idx, 0), 0);
    ck_assert_int_eq(kv_index_store(idx, 7, 0, &h, 1), SL_ENOTFOUND);
    ck_assert_int_eq(kv_index_worker_add(idx, 7, false), 0);
    ck_assert_int_eq(kv_index_worker_add(idx, 7, false), SL_EEXIST);
    ck_assert_int_eq(kv_index_store(idx, 7, 3, &h, 1), SL_EINVAL);
    ck_assert_int_eq(kv_index_store(idx, 7, -1, &h, 1), SL_EINVAL);
    ck_assert_int_eq(kv_index_store(idx, 7, 0, NULL, 1), SL_EINVAL);
    ck_assert_int_eq(kv_index_store(idx, 7, 0, NULL, 0), 0);
    ck_assert_int_eq(kv_index_remove(idx, 8, 0, &h, 1), SL_ENOTFOUND);
    ck_assert_int_eq(kv_index_remove(idx, 7, 5, &h, 1), SL_EINVAL);
    ck_assert_int_eq(kv_index_clear(idx, 8, 0), SL_ENOTFOUND);
    ck_assert_int_eq(kv_index_clear(idx, 7, 9), SL_EINVAL);
    ck_assert_int_eq(kv_index_lookup(idx, NULL, 3, &o, 1, &n), SL_EINVAL);
    ck_assert_int_eq(kv_index_lookup(idx, &h, 1, NULL, 1, &n), SL_EINVAL);
    ck_assert_int_eq(kv_index_lookup(idx, &h, 1, &o, 1, NULL), SL_EINVAL);
    ck_assert_int_eq(kv_index_lookup(idx, &h, 0, &o, 1, &n), 0);
    ck_assert_uint_eq(n, 0);
    /* Storing twice and removing once leaves nothing. */
    ck_assert_int_eq(kv_index_store(idx, 7, 0, &h, 1), 0);
    ck_assert_int_eq(kv_index_store(idx, 7, 0, &h, 1), 0);
    ck_assert_uint_eq(kv_index_worker_blocks(idx, 7, 0), 1);
    ck_assert_int_eq(kv_index_remove(idx, 7, 0, &h, 1), 0);
    ck_assert_uint_eq(kv_index_size(idx), 0);
    kv_index_free(idx);
    kv_index_free(NULL);
}
END_TEST

START_TEST(test_worker_limit_and_slot_reuse) {
    kv_index_t *idx;
    ck_assert_int_eq(kv_index_new(&idx, 0), 0);
    for (uint64_t w = 0; w < KV_INDEX_MAX_WORKERS; w++)
        ck_assert_int_eq(kv_index_worker_add(idx, w, false), 0);
    ck_assert_int_eq(kv_index_worker_add(idx, 1u << 30, false), SL_ETOOBIG);
    uint64_t h[3] = {1, 2, 3};
    ck_assert_int_eq(kv_index_store(idx, KV_INDEX_MAX_WORKERS - 1, 0, h, 3), 0);
    ck_assert_int_eq(kv_index_worker_remove(idx, 17), 0);
    ck_assert_int_eq(kv_index_worker_add(idx, 1u << 30, false), 0); /* reuses slot 17 */
    kv_overlap_t out[2];
    size_t n;
    ck_assert_int_eq(kv_index_lookup(idx, h, 3, out, 2, &n), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(out[0].worker_id, KV_INDEX_MAX_WORKERS - 1);
    ck_assert_uint_eq(out[0].device, 3);
    kv_index_free(idx);
}
END_TEST

START_TEST(test_growth_large) {
    /* 200k blocks over 4 workers, then remove half: sizes and lookups hold. */
    kv_index_t *idx;
    ck_assert_int_eq(kv_index_new(&idx, 0), 0);
    enum { N = 200000 };
    uint64_t *h = malloc(N * sizeof *h);
    ck_assert_ptr_nonnull(h);
    for (size_t i = 0; i < N; i++) h[i] = i * 0x100000001b3ull;
    for (uint64_t w = 0; w < 4; w++) {
        ck_assert_int_eq(kv_index_worker_add(idx, w, false), 0);
        ck_assert_int_eq(kv_index_store(idx, w, 0, h + w * (N / 4), N / 4), 0);
    }
    ck_assert_uint_eq(kv_index_size(idx), N);
    ck_assert_int_eq(kv_index_store(idx, 1, 0, h, N / 8), 0); /* share worker 0's first half */
    ck_assert_uint_eq(kv_index_size(idx), N);
    kv_overlap_t out[4];
    size_t n;
    ck_assert_int_eq(kv_index_lookup(idx, h, N / 4, out, 4, &n), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(out[0].device, N / 4);
    ck_assert_uint_eq(out[1].device, N / 8);
    ck_assert_int_eq(kv_index_clear(idx, 0, 0), 0);
    ck_assert_uint_eq(kv_index_size(idx), N - N / 8);
    ck_assert_int_eq(kv_index_worker_remove(idx, 1), 0);
    ck_assert_uint_eq(kv_index_size(idx), N / 2);
    free(h);
    kv_index_free(idx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("kv_index");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_random_vs_model_small, 0, 4);
    tcase_add_test(tc, test_random_vs_model_many_workers);
    tcase_add_test(tc, test_lookup_tiers_and_early_stop);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_worker_limit_and_slot_reuse);
    tcase_add_test(tc, test_growth_large);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
