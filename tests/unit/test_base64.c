/* test_base64.c - RFC 4648 vectors, round trips, and strict rejection of bad input. */
#include "common/base/base64.h"
#include "common/base/err.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *vec_plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
static const char *vec_enc[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};

START_TEST(test_rfc4648_vectors) {
    for (size_t i = 0; i < sizeof vec_plain / sizeof *vec_plain; i++) {
        char out[32];
        long n = base64_encode(vec_plain[i], strlen(vec_plain[i]), out, sizeof out);
        ck_assert_int_eq(n, (long)strlen(vec_enc[i]));
        ck_assert_str_eq(out, vec_enc[i]);
        ck_assert_uint_eq(base64_encoded_len(strlen(vec_plain[i])), strlen(vec_enc[i]));
        uint8_t dec[32];
        size_t len = 99;
        ck_assert_int_eq(base64_decode(vec_enc[i], strlen(vec_enc[i]), dec, sizeof dec, &len), 0);
        ck_assert_uint_eq(len, strlen(vec_plain[i]));
        ck_assert_int_eq(memcmp(dec, vec_plain[i], len), 0);
    }
}
END_TEST

START_TEST(test_roundtrip_binary) {
    uint8_t src[1000];
    unsigned seed = 7;
    for (size_t n = 0; n <= sizeof src; n += 37) {
        for (size_t i = 0; i < n; i++) src[i] = (uint8_t)rand_r(&seed);
        char *enc = base64_encode_alloc(src, n);
        ck_assert_ptr_nonnull(enc);
        ck_assert_uint_eq(strlen(enc), base64_encoded_len(n));
        uint8_t *dec;
        size_t len;
        ck_assert_int_eq(base64_decode_alloc(enc, strlen(enc), &dec, &len), 0);
        ck_assert_uint_eq(len, n);
        ck_assert_int_eq(memcmp(dec, src, n), 0);
        ck_assert_int_eq(dec[len], 0); /* NUL after the bytes */
        free(dec);
        free(enc);
    }
    /* every byte value through the alphabet */
    uint8_t all[256];
    for (int i = 0; i < 256; i++) all[i] = (uint8_t)i;
    char *enc = base64_encode_alloc(all, sizeof all);
    uint8_t back[256];
    size_t len;
    ck_assert_int_eq(base64_decode(enc, strlen(enc), back, sizeof back, &len), 0);
    ck_assert_uint_eq(len, 256);
    ck_assert_int_eq(memcmp(all, back, 256), 0);
    free(enc);
}
END_TEST

START_TEST(test_decode_rejects_bad_input) {
    static const char *bad[] = {
        "Zm9",      /* length not a multiple of 4 */
        "Zm9v!A==", /* character outside the alphabet */
        "Zm 9",     /* whitespace */
        "=Zm9",     /* padding first */
        "Z===",     /* three pads */
        "Zm=v",     /* data after padding */
        "Zg==Zg==", /* padding in a middle group */
        "Zh==",     /* non-zero padding bits (not canonical) */
        "Zm9=",     /* non-zero padding bits, one pad */
        "Zm9v-_==", /* URL-safe alphabet is not accepted */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint8_t out[16];
        size_t len;
        ck_assert_msg(base64_decode(bad[i], strlen(bad[i]), out, sizeof out, &len) == SL_EINVAL,
                      "accepted %s", bad[i]);
        uint8_t *p = (uint8_t *)"x";
        ck_assert_int_eq(base64_decode_alloc(bad[i], strlen(bad[i]), &p, &len), SL_EINVAL);
        ck_assert_ptr_null(p);
    }
    /* an embedded NUL is outside the alphabet too */
    uint8_t out[8];
    size_t len;
    ck_assert_int_eq(base64_decode("Zm\0v", 4, out, sizeof out, &len), SL_EINVAL);
}
END_TEST

START_TEST(test_buffer_limits_and_null_args) {
    char small[4];
    ck_assert_int_eq(base64_encode("foo", 3, small, sizeof small), SL_ETOOBIG); /* needs 5 */
    char exact[5];
    ck_assert_int_eq(base64_encode("foo", 3, exact, sizeof exact), 4);
    uint8_t two[2];
    size_t len;
    ck_assert_int_eq(base64_decode("Zm9v", 4, two, sizeof two, &len), SL_ETOOBIG);
    ck_assert_int_eq(base64_encode(NULL, 1, exact, sizeof exact), SL_EINVAL);
    ck_assert_int_eq(base64_encode("a", 1, NULL, 0), SL_EINVAL);
    ck_assert_int_eq(base64_decode(NULL, 4, two, sizeof two, &len), SL_EINVAL);
    ck_assert_int_eq(base64_decode("Zm9v", 4, two, sizeof two, NULL), SL_EINVAL);
    ck_assert_int_eq(base64_decode_alloc("Zm9v", 4, NULL, &len), SL_EINVAL);
    /* empty input decodes to nothing */
    ck_assert_int_eq(base64_decode("", 0, two, sizeof two, &len), 0);
    ck_assert_uint_eq(len, 0);
    /* sizes near SIZE_MAX report overflow instead of wrapping */
    ck_assert_uint_eq(base64_encoded_len(SIZE_MAX), SIZE_MAX);
    ck_assert_ptr_null(base64_encode_alloc("x", SIZE_MAX));
}
END_TEST

/* Random text: the strict decoder accepts exactly the canonical encodings, so
 * whatever it accepts must re-encode to the same text. */
START_TEST(test_random_text_canonical) {
    static const char chars[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=*";
    unsigned seed = 12345;
    int accepted = 0;
    for (int iter = 0; iter < 200000; iter++) {
        char text[13];
        size_t n = (size_t)(rand_r(&seed) % 13);
        for (size_t i = 0; i < n; i++) text[i] = chars[rand_r(&seed) % (sizeof chars - 1)];
        text[n] = 0;
        uint8_t out[16];
        size_t len;
        if (base64_decode(text, n, out, sizeof out, &len) != 0) continue;
        accepted++;
        char back[32];
        ck_assert_int_eq(base64_encode(out, len, back, sizeof back), (long)n);
        ck_assert_str_eq(back, text);
    }
    ck_assert_int_gt(accepted, 100); /* the generator does reach valid text */
}
END_TEST

int main(void) {
    Suite *s = suite_create("base64");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_rfc4648_vectors);
    tcase_add_test(tc, test_roundtrip_binary);
    tcase_add_test(tc, test_decode_rejects_bad_input);
    tcase_add_test(tc, test_buffer_limits_and_null_args);
    tcase_add_test(tc, test_random_text_canonical);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
