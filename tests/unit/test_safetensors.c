/* test_safetensors.c - the safetensors reader: valid single and sharded
 * files, every header check with its message, and a mutation fuzz loop over
 * header bytes, header length and file size (run under ASan). */
#include "common/base/err.h"
#include "common/engine/safetensors.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[64];

static void setup(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sl-st-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup of %s failed\n", tmpdir);
}

/* Writes [u64 hlen][header padded with spaces to pad_to, else to 8n][data_len bytes 0..]. */
static void write_raw(const char *path, const char *header, size_t pad_to, size_t data_len) {
    size_t hl = strlen(header), plen = pad_to > hl ? pad_to : (hl + 7) / 8 * 8;
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)plen >> (8 * i));
    fwrite(len8, 1, 8, fp);
    fwrite(header, 1, hl, fp);
    for (size_t i = hl; i < plen; i++) fputc(' ', fp);
    for (size_t i = 0; i < data_len; i++) fputc((int)(i & 0xFF), fp);
    fclose(fp);
}

static void path_of(char *out, size_t len, const char *name) {
    snprintf(out, len, "%s/%s", tmpdir, name);
}

/* a: F32 (2,3) at [0,24); b: BF16 (4) at [24,32); header padded to 8n. */
static const char *good_header =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]}}";

START_TEST(test_valid_file) {
    char p[128];
    path_of(p, sizeof p, "m.safetensors");
    write_raw(p, good_header, 160, 32);
    safetensors_t *st = NULL;
    char *err = NULL;
    ck_assert_int_eq(safetensors_open(p, &st, &err), 0);
    ck_assert_ptr_null(err);
    ck_assert_uint_eq(safetensors_count(st), 2);
    const st_tensor_t *a = safetensors_find(st, "a"), *b = safetensors_find(st, "b");
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_null(safetensors_find(st, "c"));
    ck_assert_int_eq(a->dtype, ST_DTYPE_F32);
    ck_assert_uint_eq(a->n_dims, 2);
    ck_assert_uint_eq(a->shape[0], 2);
    ck_assert_uint_eq(a->shape[1], 3);
    ck_assert_uint_eq(a->n_elems, 6);
    ck_assert_uint_eq(a->n_bytes, 24);
    ck_assert_uint_eq(((const unsigned char *)a->data)[5], 5);
    ck_assert_uint_eq(((const unsigned char *)b->data)[0], 24);
    ck_assert_int_eq(b->dtype, ST_DTYPE_BF16);
    ck_assert_str_eq(safetensors_at(st, 0)->name, "a"); /* name order */
    ck_assert_ptr_null(safetensors_at(st, 2));
    ck_assert_str_eq(safetensors_dtype_name(ST_DTYPE_BF16), "BF16");
    ck_assert_uint_eq(safetensors_dtype_size(ST_DTYPE_F16), 2);
    safetensors_free(st);
    safetensors_free(NULL);

    /* The directory form finds model.safetensors. */
    char p2[128];
    path_of(p2, sizeof p2, "model.safetensors");
    ck_assert_int_eq(rename(p, p2), 0);
    ck_assert_int_eq(safetensors_open(tmpdir, &st, &err), 0);
    ck_assert_uint_eq(safetensors_count(st), 2);
    safetensors_free(st);
}
END_TEST

/* Each malformed file fails with SL_EFORMAT and a message naming the file
 * and, where there is one, the tensor. */
START_TEST(test_malformed_headers) {
    static const struct {
        const char *header;
        size_t data;
        const char *needle;
    } bad[] = {
        {"{\"t\":{\"dtype\":\"F99\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
         "tensor 't': unknown dtype 'F99'"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24,
         "tensor 't': shape needs 6 elements"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
         "tensor 't': data [0, 16) beyond"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "tensor 't'"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
         "tensor 't': bad shape"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 8,
         "tensor 't': bad shape"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
         "tensor 't': bad shape"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 8,
         "tensor 't': 9 dims"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", 8,
         "tensor 't': data at file offset"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"u\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         16, "overlaps"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "tensor 't': needs"},
        {"{\"t\":[1,2]}", 8, "tensor 't': entry is not an object"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8,
         "header is not a JSON object"},
        {"[1,2,3]", 8, "header is not a JSON object"},
        {"{\"__metadata__\":7}", 8, "__metadata__"},
    };
    char p[128];
    path_of(p, sizeof p, "bad.safetensors");
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        write_raw(p, bad[i].header, 0, bad[i].data);
        safetensors_t *st = NULL;
        char *err = NULL;
        int rc = safetensors_open(p, &st, &err);
        ck_assert_msg(rc == SL_EFORMAT, "case %zu: rc %d", i, rc);
        ck_assert_ptr_null(st);
        ck_assert_msg(err && strstr(err, bad[i].needle) && strstr(err, p),
                      "case %zu: message '%s' lacks '%s'", i, err ? err : "(null)", bad[i].needle);
        free(err);
    }
}
END_TEST

START_TEST(test_truncated_files) {
    char p[128];
    path_of(p, sizeof p, "t.safetensors");
    safetensors_t *st = NULL;
    char *err = NULL;
    /* Shorter than the length prefix. */
    FILE *fp = fopen(p, "wb");
    fputs("abc", fp);
    fclose(fp);
    ck_assert_int_eq(safetensors_open(p, &st, &err), SL_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err, "too small"));
    free(err);
    /* Header length beyond the file. */
    write_raw(p, good_header, 160, 32);
    ck_assert_int_eq(truncate(p, 100), 0);
    ck_assert_int_eq(safetensors_open(p, &st, &err), SL_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err, "header length"));
    free(err);
    /* Data cut short: names the tensor that no longer fits. */
    write_raw(p, good_header, 160, 32);
    ck_assert_int_eq(truncate(p, 8 + 160 + 30), 0);
    ck_assert_int_eq(safetensors_open(p, &st, &err), SL_EFORMAT);
    ck_assert_msg(strstr(err, "tensor 'b'") && strstr(err, "truncated"), "%s", err);
    free(err);
    /* Absurd header length. */
    write_raw(p, good_header, 160, 32);
    fp = fopen(p, "r+b");
    unsigned char big[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
    fwrite(big, 1, 8, fp);
    fclose(fp);
    ck_assert_int_eq(safetensors_open(p, &st, &err), SL_EFORMAT);
    free(err);
    /* Missing file and empty directory. */
    path_of(p, sizeof p, "none.safetensors");
    ck_assert_int_eq(safetensors_open(p, &st, &err), SL_ENOTFOUND);
    free(err);
    ck_assert_int_eq(safetensors_open(tmpdir, &st, &err), SL_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(err, "model.safetensors"));
    free(err);
    ck_assert_int_eq(safetensors_open(NULL, &st, &err), SL_EINVAL);
}
END_TEST

static void write_text(const char *name, const char *text) {
    char p[128];
    path_of(p, sizeof p, name);
    FILE *fp = fopen(p, "w");
    ck_assert_ptr_nonnull(fp);
    fputs(text, fp);
    fclose(fp);
}

START_TEST(test_sharded) {
    char p[128];
    path_of(p, sizeof p, "s1.safetensors");
    write_raw(p, "{\"x\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 64, 4);
    path_of(p, sizeof p, "s2.safetensors");
    write_raw(p, "{\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 64, 4);
    write_text(
        "model.safetensors.index.json",
        "{\"metadata\":{},\"weight_map\":{\"x\":\"s1.safetensors\",\"y\":\"s2.safetensors\"}}");
    safetensors_t *st = NULL;
    char *err = NULL;
    ck_assert_int_eq(safetensors_open(tmpdir, &st, &err), 0);
    ck_assert_uint_eq(safetensors_count(st), 2);
    ck_assert_ptr_nonnull(strstr(safetensors_find(st, "y")->file, "s2.safetensors"));
    safetensors_free(st);

    /* The index names a tensor the shard lacks. */
    write_text("model.safetensors.index.json",
               "{\"weight_map\":{\"x\":\"s1.safetensors\",\"z\":\"s2.safetensors\"}}");
    ck_assert_int_eq(safetensors_open(tmpdir, &st, &err), SL_EFORMAT);
    ck_assert_msg(strstr(err, "tensor 'z' is not in shard s2.safetensors"), "%s", err);
    free(err);
    /* A shard path escaping the directory. */
    write_text("model.safetensors.index.json", "{\"weight_map\":{\"x\":\"../s1.safetensors\"}}");
    ck_assert_int_eq(safetensors_open(tmpdir, &st, &err), SL_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err, "invalid shard file name"));
    free(err);
    /* A missing shard. */
    write_text("model.safetensors.index.json", "{\"weight_map\":{\"x\":\"s9.safetensors\"}}");
    ck_assert_int_eq(safetensors_open(tmpdir, &st, &err), SL_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(err, "s9.safetensors"));
    free(err);
    /* The same tensor in two shards. */
    path_of(p, sizeof p, "s2.safetensors");
    write_raw(p, "{\"x\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 64, 4);
    write_text("model.safetensors.index.json",
               "{\"weight_map\":{\"x\":\"s1.safetensors\",\"w\":\"s2.safetensors\"}}");
    ck_assert_int_eq(safetensors_open(tmpdir, &st, &err), SL_EFORMAT);
    ck_assert_msg(strstr(err, "appears twice") || strstr(err, "not in shard"), "%s", err);
    free(err);
    /* Malformed index JSON. */
    write_text("model.safetensors.index.json", "{\"weight_map\": [");
    ck_assert_int_eq(safetensors_open(tmpdir, &st, &err), SL_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err, "weight_map"));
    free(err);
}
END_TEST

/* Random mutations of a valid file: header bytes, the length prefix, the file
 * size. Every open must succeed or fail with a message; on success every
 * tensor's bytes are read (a bad range would fault or trip ASan). */
START_TEST(test_fuzz_mutations) {
    static const char alphabet[] = "{}[]\",:0123456789-.eE FBIU";
    char p[128];
    path_of(p, sizeof p, "f.safetensors");
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                      "\"c\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[32,40]}}";
    size_t hl = strlen(hdr), plen = (hl + 7) / 8 * 8, total = 8 + plen + 40;
    unsigned char *orig = malloc(total), *buf = malloc(total);
    for (int i = 0; i < 8; i++) orig[i] = (unsigned char)((uint64_t)plen >> (8 * i));
    memcpy(orig + 8, hdr, hl);
    memset(orig + 8 + hl, ' ', plen - hl);
    for (size_t i = 0; i < 40; i++) orig[8 + plen + i] = (unsigned char)i;
    uint64_t s = 987654321;
    int ok = 0, fail = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(buf, orig, total);
        size_t len = total;
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int kind = (int)((s >> 60) % 4);
        int muts = 1 + (int)((s >> 20) % 3);
        for (int k = 0; k < muts; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = 8 + (size_t)(s >> 33) % plen;
            buf[pos] = (unsigned char)alphabet[(s >> 13) % (sizeof alphabet - 1)];
        }
        if (kind == 1) buf[(s >> 7) % 8] ^= (unsigned char)(1u << ((s >> 3) % 8));
        if (kind == 2) len = (size_t)(s >> 35) % total;
        FILE *fp = fopen(p, "wb");
        fwrite(buf, 1, len, fp);
        fclose(fp);
        safetensors_t *st = NULL;
        char *err = NULL;
        int rc = safetensors_open(p, &st, &err);
        if (rc == 0) {
            ok++;
            unsigned sum = 0;
            for (size_t i = 0; i < safetensors_count(st); i++) {
                const st_tensor_t *t = safetensors_at(st, i);
                for (size_t b = 0; b < t->n_bytes; b++) sum += ((const unsigned char *)t->data)[b];
            }
            (void)sum;
            safetensors_free(st);
        } else {
            fail++;
            ck_assert_msg(err && strstr(err, p), "iteration %d: rc %d, message '%s'", it, rc,
                          err ? err : "(null)");
        }
        free(err);
    }
    ck_assert_int_gt(ok, 0);
    ck_assert_int_gt(fail, 0);
    free(orig);
    free(buf);
}
END_TEST

int main(void) {
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_valid_file);
    tcase_add_test(tc, test_malformed_headers);
    tcase_add_test(tc, test_truncated_files);
    tcase_add_test(tc, test_sharded);
    tcase_add_test(tc, test_fuzz_mutations);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
