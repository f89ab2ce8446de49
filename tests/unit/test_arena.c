/* test_arena.c - bump allocator: alignment, growth, reset, huge requests. */
#include "common/base/arena.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_alloc_aligned_distinct) {
    arena_t *a = arena_new(256);
    ck_assert_ptr_nonnull(a);
    unsigned char *prev = NULL;
    for (size_t i = 0; i < 1000; i++) {
        unsigned char *p = arena_alloc(a, i % 37);
        ck_assert_ptr_nonnull(p);
        ck_assert_uint_eq((uintptr_t)p % 16, 0);
        ck_assert_ptr_ne(p, prev);
        memset(p, (int)i, i % 37); /* ASan catches overlap with the header */
        prev = p;
    }
    ck_assert_uint_gt(arena_bytes_held(a), 256);
    arena_free(a);
}
END_TEST

START_TEST(test_reset_keeps_first_chunk) {
    arena_t *a = arena_new(1024);
    for (int i = 0; i < 100; i++) ck_assert_ptr_nonnull(arena_alloc(a, 100));
    ck_assert_uint_gt(arena_bytes_held(a), 1024);
    arena_reset(a);
    ck_assert_uint_eq(arena_bytes_held(a), 1024);
    void *p = arena_alloc(a, 100), *q = arena_alloc(a, 100);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq((size_t)((char *)q - (char *)p), 112); /* reused, bump order */
    ck_assert_uint_eq(arena_bytes_held(a), 1024);
    arena_free(a);
}
END_TEST

START_TEST(test_large_and_overflow) {
    arena_t *a = arena_new(0);
    void *big = arena_alloc(a, 1 << 20);
    ck_assert_ptr_nonnull(big);
    memset(big, 1, 1 << 20);
    ck_assert_ptr_null(arena_alloc(a, SIZE_MAX));
    ck_assert_ptr_null(arena_alloc(a, SIZE_MAX - 8));
    ck_assert_ptr_null(arena_alloc(NULL, 8));
    arena_reset(NULL);
    ck_assert_uint_eq(arena_bytes_held(NULL), 0);
    arena_free(a);
    arena_free(NULL);
}
END_TEST

int main(void) {
    Suite *s = suite_create("arena");
    TCase *tc = tcase_create("arena");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_alloc_aligned_distinct);
    tcase_add_test(tc, test_reset_keeps_first_chunk);
    tcase_add_test(tc, test_large_and_overflow);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
