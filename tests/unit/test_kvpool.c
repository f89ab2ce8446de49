/* test_kvpool.c - the block pool against a brute-force model under random
 * operations, plus events, dumps, LRU order and bad input. */
#include "common/base/err.h"
#include "common/engine/kvpool.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- an event recorder that mirrors what a router would know ---------------- */

#define VIEW_MAX 4096
typedef struct view {
    uint64_t hashes[VIEW_MAX];
    size_t n;
    uint64_t last_id;
    int gaps;
    int stored_events, removed_events, cleared_events;
    bool last_has_parent;
    uint64_t last_parent;
    size_t last_n_blocks;
} view_t;

static void view_del(view_t *v, uint64_t h) {
    for (size_t i = 0; i < v->n; i++)
        if (v->hashes[i] == h) {
            v->hashes[i] = v->hashes[--v->n];
            return;
        }
    v->gaps += 1000; /* removing something never stored */
}

static void on_event(const kvpool_event_t *ev, void *ud) {
    view_t *v = ud;
    if (ev->id != v->last_id + 1) v->gaps++;
    v->last_id = ev->id;
    switch (ev->kind) {
    case KVPOOL_EVENT_STORED:
        v->stored_events++;
        v->last_has_parent = ev->has_parent;
        v->last_parent = ev->parent_hash;
        v->last_n_blocks = ev->n_blocks;
        for (size_t i = 0; i < ev->n_blocks; i++) v->hashes[v->n++] = ev->blocks[i].seq_hash;
        break;
    case KVPOOL_EVENT_REMOVED:
        v->removed_events++;
        for (size_t i = 0; i < ev->n_removed; i++) view_del(v, ev->removed[i]);
        break;
    case KVPOOL_EVENT_CLEARED:
        v->cleared_events++;
        v->n = 0;
        break;
    }
}

static bool view_has(const view_t *v, uint64_t h) {
    for (size_t i = 0; i < v->n; i++)
        if (v->hashes[i] == h) return true;
    return false;
}

/* ---- brute-force model ---------------------------------------------------------- */

#define NB 24
typedef struct model {
    uint32_t ref[NB];
    bool hashed[NB];
    uint64_t h[NB];
    uint32_t lru[NB]; /* cached, oldest first */
    uint32_t n_lru;
    uint32_t held[4096]; /* one entry per reference we hold */
    uint32_t n_held;
} model_t;

static int model_find(const model_t *m, uint64_t h) {
    for (int i = 0; i < NB; i++)
        if (m->hashed[i] && m->h[i] == h) return i;
    return -1;
}

static void model_lru_remove(model_t *m, uint32_t b) {
    for (uint32_t i = 0; i < m->n_lru; i++)
        if (m->lru[i] == b) {
            memmove(&m->lru[i], &m->lru[i + 1], (m->n_lru - i - 1) * sizeof m->lru[0]);
            m->n_lru--;
            return;
        }
}

static void model_check(const model_t *m, kvpool_t *p, const view_t *v) {
    kvpool_stats_t st;
    kvpool_stats_get(p, &st);
    uint32_t used = 0, cached = 0, nfree = 0, hashed = 0;
    for (int i = 0; i < NB; i++) {
        ck_assert_uint_eq(kvpool_block_refcount(p, (uint32_t)i), m->ref[i]);
        if (m->ref[i])
            used++;
        else if (m->hashed[i])
            cached++;
        else
            nfree++;
        hashed += m->hashed[i];
        if (m->hashed[i]) {
            ck_assert_uint_eq(kvpool_prefix_lookup(p, &m->h[i], 1, NULL), 1);
            ck_assert(view_has(v, m->h[i]));
        }
    }
    ck_assert_uint_eq(st.used, used);
    ck_assert_uint_eq(st.cached, cached);
    ck_assert_uint_eq(st.free, nfree);
    ck_assert_uint_eq(st.used + st.cached + st.free, NB);
    ck_assert_uint_eq(kvpool_available(p), cached + nfree);
    ck_assert_uint_eq(v->n, hashed); /* the router's view equals the cache */
    ck_assert_int_eq(v->gaps, 0);
    ck_assert_uint_eq(v->last_id, st.last_event_id);
}

START_TEST(test_random_against_model) {
    for (unsigned seed = 1; seed <= 40; seed++) {
        srand(seed);
        kvpool_t *p = kvpool_new(NB, 4);
        ck_assert_ptr_nonnull(p);
        view_t *v = calloc(1, sizeof *v);
        model_t *m = calloc(1, sizeof *m);
        kvpool_set_event_cb(p, on_event, v);
        for (int op = 0; op < 3000; op++) {
            int r = rand() % 100;
            if (r < 30) { /* alloc */
                uint32_t n = (uint32_t)(rand() % 5), out[8];
                uint32_t free_unhashed = 0;
                for (int i = 0; i < NB; i++) free_unhashed += !m->ref[i] && !m->hashed[i];
                int rc = kvpool_blocks_alloc(p, n, out);
                if (n > free_unhashed + m->n_lru) {
                    ck_assert_int_eq(rc, SL_EAGAIN);
                    continue;
                }
                ck_assert_int_eq(rc, 0);
                uint32_t evict = n > free_unhashed ? n - free_unhashed : 0, seen = 0;
                uint32_t want_evicted[NB];
                memcpy(want_evicted, m->lru, evict * sizeof *want_evicted);
                for (uint32_t k = 0; k < n; k++) {
                    uint32_t b = out[k];
                    ck_assert_uint_lt(b, NB);
                    ck_assert_uint_eq(m->ref[b], 0);
                    if (m->hashed[b]) {
                        /* evictions take the least recently used, in order */
                        ck_assert_uint_eq(b, want_evicted[seen]);
                        seen++;
                        model_lru_remove(m, b);
                        m->hashed[b] = false;
                    }
                    m->ref[b] = 1;
                    m->held[m->n_held++] = b;
                }
                ck_assert_uint_eq(seen, evict);
            } else if (r < 60) { /* release one reference */
                if (!m->n_held) continue;
                uint32_t i = (uint32_t)rand() % m->n_held, b = m->held[i];
                m->held[i] = m->held[--m->n_held];
                ck_assert_int_eq(kvpool_blocks_release(p, &b, 1), 0);
                if (--m->ref[b] == 0 && m->hashed[b]) m->lru[m->n_lru++] = b;
            } else if (r < 80) { /* commit a held block under a hash from a small space */
                if (!m->n_held) continue;
                uint32_t b = m->held[rand() % m->n_held];
                uint64_t h = 1000 + (uint64_t)(rand() % 40), bh = h * 7;
                int rc = kvpool_blocks_commit(p, (uint32_t)(rand() % 3), 5, &b, &bh, &h, 1);
                bool fresh = !m->hashed[b] && model_find(m, h) < 0;
                ck_assert_int_eq(rc, fresh ? 1 : 0);
                if (fresh) {
                    m->hashed[b] = true;
                    m->h[b] = h;
                }
            } else if (r < 98) { /* acquire a prefix of random hashes */
                uint64_t hs[4];
                uint32_t out[4];
                size_t n = (size_t)(rand() % 4);
                for (size_t k = 0; k < n; k++) hs[k] = 1000 + (uint64_t)(rand() % 40);
                size_t want = 0;
                while (want < n && model_find(m, hs[want]) >= 0) want++;
                ck_assert_uint_eq(kvpool_prefix_lookup(p, hs, n, NULL), want);
                size_t got = kvpool_prefix_acquire(p, hs, n, out);
                ck_assert_uint_eq(got, want);
                for (size_t k = 0; k < got; k++) {
                    int b = model_find(m, hs[k]);
                    ck_assert_int_eq((int)out[k], b);
                    if (m->ref[b] == 0) model_lru_remove(m, (uint32_t)b);
                    m->ref[b]++;
                    m->held[m->n_held++] = (uint32_t)b;
                }
            } else { /* clear */
                kvpool_clear(p);
                for (int i = 0; i < NB; i++) m->hashed[i] = false;
                m->n_lru = 0;
            }
            model_check(m, p, v);
        }
        /* A dump equals the model's registered set. */
        kvpool_cached_t *d;
        size_t nd;
        uint64_t last;
        ck_assert_int_eq(kvpool_dump(p, &d, &nd, &last), 0);
        uint32_t hashed = 0;
        for (int i = 0; i < NB; i++) hashed += m->hashed[i];
        ck_assert_uint_eq(nd, hashed);
        ck_assert_uint_eq(last, v->last_id);
        for (size_t k = 0; k < nd; k++) {
            ck_assert_int_eq(model_find(m, d[k].seq_hash), (int)d[k].block);
            ck_assert_uint_eq(d[k].refcount, m->ref[d[k].block]);
            if (k) ck_assert_uint_le(d[k - 1].depth, d[k].depth);
        }
        free(d);
        /* Releasing everything leaves nothing used. */
        ck_assert_int_eq(kvpool_blocks_release(p, m->held, m->n_held), 0);
        kvpool_stats_t st;
        kvpool_stats_get(p, &st);
        ck_assert_uint_eq(st.used, 0);
        kvpool_free(p);
        free(v);
        free(m);
    }
}
END_TEST

START_TEST(test_stored_events_chain_and_dump_order) {
    kvpool_t *p = kvpool_new(8, 16);
    view_t v = {0};
    kvpool_set_event_cb(p, on_event, &v);
    uint32_t b[4];
    ck_assert_int_eq(kvpool_blocks_alloc(p, 4, b), 0);
    uint64_t bh[4] = {11, 12, 13, 14}, sh[4] = {21, 22, 23, 24};
    /* First two blocks of a sequence: no parent. */
    ck_assert_int_eq(kvpool_blocks_commit(p, 0, 999, b, bh, sh, 2), 2);
    ck_assert_int_eq(v.stored_events, 1);
    ck_assert(!v.last_has_parent);
    ck_assert_uint_eq(v.last_n_blocks, 2);
    /* Next two: parent is the second block's sequence hash. */
    ck_assert_int_eq(kvpool_blocks_commit(p, 2, 22, b + 2, bh + 2, sh + 2, 2), 2);
    ck_assert(v.last_has_parent);
    ck_assert_uint_eq(v.last_parent, 22);
    /* Committing again changes nothing and emits nothing. */
    ck_assert_int_eq(kvpool_blocks_commit(p, 0, 0, b, bh, sh, 2), 0);
    ck_assert_int_eq(v.stored_events, 2);
    /* A duplicate hash in the middle splits a run into two events. */
    uint32_t c[3];
    ck_assert_int_eq(kvpool_blocks_alloc(p, 3, c), 0);
    uint64_t bh2[3] = {31, 12, 33}, sh2[3] = {41, 22, 43};
    ck_assert_int_eq(kvpool_blocks_commit(p, 0, 0, c, bh2, sh2, 3), 2);
    ck_assert_int_eq(v.stored_events, 4);
    ck_assert(v.last_has_parent);
    ck_assert_uint_eq(v.last_parent, 22);

    kvpool_cached_t *d;
    size_t n;
    ck_assert_int_eq(kvpool_dump(p, &d, &n, NULL), 0);
    ck_assert_uint_eq(n, 6);
    for (size_t k = 1; k < n; k++) ck_assert_uint_le(d[k - 1].depth, d[k].depth);
    ck_assert(!d[0].has_parent);
    for (size_t k = 0; k < n; k++)
        if (d[k].seq_hash == 24) {
            ck_assert(d[k].has_parent);
            ck_assert_uint_eq(d[k].parent_hash, 23);
            ck_assert_uint_eq(d[k].depth, 3);
            ck_assert_uint_eq(d[k].block_hash, 14);
        }
    free(d);
    kvpool_free(p);
}
END_TEST

START_TEST(test_lru_eviction_order_and_events) {
    kvpool_t *p = kvpool_new(4, 16);
    view_t v = {0};
    kvpool_set_event_cb(p, on_event, &v);
    uint32_t b[4];
    ck_assert_int_eq(kvpool_blocks_alloc(p, 4, b), 0);
    uint64_t bh[4] = {1, 2, 3, 4}, sh[4] = {101, 102, 103, 104};
    ck_assert_int_eq(kvpool_blocks_commit(p, 0, 0, b, bh, sh, 4), 4);
    /* Release tail first, as the scheduler does: 104, 103, 102, 101. */
    for (int i = 3; i >= 0; i--) kvpool_blocks_release(p, &b[i], 1);
    kvpool_stats_t st;
    kvpool_stats_get(p, &st);
    ck_assert_uint_eq(st.cached, 4);
    ck_assert_uint_eq(st.free, 0);
    /* Touch 104 (acquire + release): it becomes most recent. */
    uint32_t got;
    ck_assert_uint_eq(kvpool_prefix_acquire(p, &sh[3], 1, &got), 1);
    ck_assert_uint_eq(got, b[3]);
    kvpool_blocks_release(p, &got, 1);
    /* Two allocations evict 103 then 102, in one REMOVED event. */
    uint32_t n2[2];
    ck_assert_int_eq(kvpool_blocks_alloc(p, 2, n2), 0);
    ck_assert_uint_eq(n2[0], b[2]);
    ck_assert_uint_eq(n2[1], b[1]);
    ck_assert_int_eq(v.removed_events, 1);
    ck_assert(!view_has(&v, 103) && !view_has(&v, 102));
    ck_assert(view_has(&v, 101) && view_has(&v, 104));
    ck_assert_uint_eq(kvpool_prefix_lookup(p, sh, 4, NULL), 1);
    kvpool_stats_get(p, &st);
    ck_assert_uint_eq(st.evictions, 2);
    ck_assert_uint_eq(st.hits, 1);
    /* Nothing left for a third: EAGAIN changes nothing. */
    uint32_t n3[3];
    ck_assert_int_eq(kvpool_blocks_alloc(p, 3, n3), SL_EAGAIN);
    ck_assert_uint_eq(kvpool_available(p), 2);
    kvpool_clear(p);
    ck_assert_int_eq(v.cleared_events, 1);
    ck_assert_uint_eq(kvpool_prefix_lookup(p, sh, 4, NULL), 0);
    kvpool_stats_get(p, &st);
    ck_assert_uint_eq(st.cached, 0);
    ck_assert_uint_eq(st.free, 2);
    ck_assert_uint_eq(st.last_event_id, (uint64_t)v.last_id);
    kvpool_free(p);
}
END_TEST

START_TEST(test_bad_input) {
    ck_assert_ptr_null(kvpool_new(0, 16));
    ck_assert_ptr_null(kvpool_new(16, 0));
    ck_assert_ptr_null(kvpool_new(1u << 31, 16));
    kvpool_free(NULL);
    kvpool_t *p = kvpool_new(4, 16);
    uint32_t bad = 7, b;
    ck_assert_int_eq(kvpool_blocks_release(p, &bad, 1), SL_EINVAL);
    ck_assert_int_eq(kvpool_blocks_alloc(p, 1, &b), 0);
    ck_assert_int_eq(kvpool_blocks_release(p, &b, 1), 0);
    ck_assert_int_eq(kvpool_blocks_release(p, &b, 1), SL_EINVAL); /* double release */
    uint64_t h = 5;
    ck_assert_int_eq(kvpool_blocks_commit(p, 0, 0, &b, &h, &h, 1), SL_EINVAL); /* unreferenced */
    ck_assert_int_eq(kvpool_blocks_commit(p, 0, 0, &bad, &h, &h, 1), SL_EINVAL);
    ck_assert_uint_eq(kvpool_block_refcount(p, 99), 0);
    ck_assert_int_eq(kvpool_blocks_alloc(p, 5, NULL), SL_EAGAIN);
    kvpool_cached_t *d = (void *)1;
    size_t n = 9;
    ck_assert_int_eq(kvpool_dump(p, &d, &n, NULL), 0);
    ck_assert_ptr_null(d);
    ck_assert_uint_eq(n, 0);
    kvpool_free(p);
}
END_TEST

int main(void) {
    Suite *s = suite_create("kvpool");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_random_against_model);
    tcase_add_test(tc, test_stored_events_chain_and_dump_order);
    tcase_add_test(tc, test_lru_eviction_order_and_events);
    tcase_add_test(tc, test_bad_input);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
