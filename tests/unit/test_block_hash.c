/* test_block_hash.c - block and sequence hashes match their written
 * definition (built here independently from raw XXH3 calls). */
#include "common/base/block_hash.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

START_TEST(test_xxh3_known_vector) {
    /* Published XXH3-64 test vector: empty input, seed 0. */
    ck_assert_uint_eq(XXH3_64bits_withSeed("", 0, 0), 0x2D06800538D394C2ULL);
}
END_TEST

START_TEST(test_block_hash_definition) {
    uint32_t toks[16];
    uint8_t le[64];
    for (int i = 0; i < 16; i++) {
        toks[i] = 0x01020304u * (uint32_t)(i + 1) + 70000u;
        le[4 * i] = (uint8_t)toks[i];
        le[4 * i + 1] = (uint8_t)(toks[i] >> 8);
        le[4 * i + 2] = (uint8_t)(toks[i] >> 16);
        le[4 * i + 3] = (uint8_t)(toks[i] >> 24);
    }
    uint64_t want = XXH3_64bits_withSeed(le, sizeof le, 1337);
    ck_assert_uint_eq(block_hash_tokens(toks, 16), want);
    /* Longer than the internal 64-token buffer: streaming must not change it. */
    uint32_t big[200];
    uint8_t bigle[800];
    for (int i = 0; i < 200; i++) {
        big[i] = (uint32_t)i * 2654435761u;
        for (int k = 0; k < 4; k++) bigle[4 * i + k] = (uint8_t)(big[i] >> (8 * k));
    }
    ck_assert_uint_eq(block_hash_tokens(big, 200), XXH3_64bits_withSeed(bigle, 800, 1337));

    uint8_t pair[16];
    uint64_t parent = 0x1122334455667788ULL, bh = want;
    for (int k = 0; k < 8; k++) {
        pair[k] = (uint8_t)(parent >> (8 * k));
        pair[8 + k] = (uint8_t)(bh >> (8 * k));
    }
    ck_assert_uint_eq(block_hash_chain(parent, bh), XXH3_64bits_withSeed(pair, 16, 1337));
}
END_TEST

START_TEST(test_salt) {
    ck_assert_uint_eq(block_hash_salt(NULL), 0);
    ck_assert_uint_eq(block_hash_salt(""), 0);
    ck_assert_uint_eq(block_hash_salt("my-lora"), XXH3_64bits_withSeed("my-lora", 7, 1337));
    ck_assert_uint_ne(block_hash_salt("a"), block_hash_salt("b"));
}
END_TEST

START_TEST(test_seq_hashes_chain_and_partial_block) {
    uint32_t toks[50];
    for (int i = 0; i < 50; i++) toks[i] = (uint32_t)(i * 7 + 3);
    uint64_t bh[8], sh[8];
    /* 50 tokens, block 16: three full blocks, the partial fourth is not hashed. */
    ck_assert_uint_eq(block_hash_seq(toks, 50, 16, 0, bh, sh, 8), 3);
    uint64_t parent = 0;
    for (int i = 0; i < 3; i++) {
        ck_assert_uint_eq(bh[i], block_hash_tokens(toks + 16 * i, 16));
        parent = block_hash_chain(parent, bh[i]);
        ck_assert_uint_eq(sh[i], parent);
    }
    /* max caps the count; NULL outputs are allowed. */
    ck_assert_uint_eq(block_hash_seq(toks, 50, 16, 0, NULL, sh, 2), 2);
    ck_assert_uint_eq(block_hash_seq(toks, 15, 16, 0, bh, sh, 8), 0);
    ck_assert_uint_eq(block_hash_seq(toks, 50, 0, 0, bh, sh, 8), 0);
    /* A salt changes every sequence hash but no block hash. */
    uint64_t bh2[8], sh2[8];
    block_hash_seq(toks, 50, 16, 0, bh, sh, 8);
    block_hash_seq(toks, 50, 16, block_hash_salt("lora"), bh2, sh2, 8);
    ck_assert_uint_eq(sh2[0], block_hash_chain(block_hash_salt("lora"), bh[0]));
    for (int i = 0; i < 3; i++) {
        ck_assert_uint_eq(bh2[i], bh[i]);
        ck_assert_uint_ne(sh2[i], sh[i]);
    }
    /* Same block content at another depth gives another sequence hash. */
    uint32_t rep[32];
    for (int i = 0; i < 32; i++) rep[i] = (uint32_t)(i % 16);
    block_hash_seq(rep, 32, 16, 0, bh, sh, 8);
    ck_assert_uint_eq(bh[0], bh[1]);
    ck_assert_uint_ne(sh[0], sh[1]);
}
END_TEST

int main(void) {
    Suite *s = suite_create("block_hash");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_xxh3_known_vector);
    tcase_add_test(tc, test_block_hash_definition);
    tcase_add_test(tc, test_salt);
    tcase_add_test(tc, test_seq_hashes_chain_and_partial_block);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
