/* test_loadgen_sse.c - the SSE parser (common/base/sse) as the load generator
 * and the frontend use it: events cut at every possible chunk boundary,
 * multi-line data, comments, CRLF / CR / LF, [DONE], bounds and bad input. */
#include "common/base/err.h"
#include "common/base/sse.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EV 32

typedef struct collected {
    int n;
    char ev[MAX_EV][256]; /* "type|data|id" */
    int stop_at;          /* return 7 from the callback at this event (1-based), 0 = never */
} collected_t;

static int collect(const sse_event_t *ev, void *ud) {
    collected_t *c = ud;
    ck_assert_uint_eq(strlen(ev->data), ev->data_len);
    if (c->n < MAX_EV)
        snprintf(c->ev[c->n], sizeof c->ev[0], "%s|%s|%s", ev->type, ev->data, ev->id);
    c->n++;
    if (c->stop_at && c->n == c->stop_at) return 7;
    return 0;
}

/* A stream touching every rule, and what it must yield. */
static const char stream[] = ": keep-alive comment\r\n"
                             "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\r\n"
                             "\r\n"
                             "event: usage\n"
                             "id: 42\n"
                             "data: line one\n"
                             "data:line two\n"
                             "data\n"
                             "\n"
                             "retry: 1500\r"
                             "unknown: field\r"
                             "\r"
                             "event: lonely\n"
                             "\n"
                             "data: [DONE]\n"
                             "\n";
static const char *const expected[] = {
    "message|{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}|",
    "usage|line one\nline two\n|42",
    "message|[DONE]|42",
};
#define N_EXPECTED 3

static void check_expected(const collected_t *c) {
    ck_assert_int_eq(c->n, N_EXPECTED);
    for (int i = 0; i < N_EXPECTED; i++) ck_assert_str_eq(c->ev[i], expected[i]);
}

START_TEST(test_whole_stream) {
    collected_t c = {0};
    sse_parser_t *p = sse_parser_new(0, collect, &c);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(sse_parser_feed(p, stream, sizeof stream - 1), 0);
    check_expected(&c);
    ck_assert_uint_eq(sse_parser_events(p), N_EXPECTED);
    ck_assert_int_eq(sse_parser_finish(p), 0);
    sse_parser_free(p);
}
END_TEST

/* Every split into two chunks, and every split into three chunks. */
START_TEST(test_every_boundary) {
    size_t len = sizeof stream - 1;
    sse_parser_t *p = NULL;
    for (size_t i = 0; i <= len; i++) {
        for (size_t j = i; j <= len; j++) {
            collected_t c = {0};
            p = sse_parser_new(0, collect, &c);
            ck_assert_int_eq(sse_parser_feed(p, stream, i), 0);
            ck_assert_int_eq(sse_parser_feed(p, stream + i, j - i), 0);
            ck_assert_int_eq(sse_parser_feed(p, stream + j, len - j), 0);
            check_expected(&c);
            ck_assert_int_eq(sse_parser_finish(p), 0);
            sse_parser_free(p);
        }
    }
}
END_TEST

START_TEST(test_byte_by_byte_and_retry) {
    collected_t c = {0};
    sse_parser_t *p = sse_parser_new(0, collect, &c);
    for (size_t i = 0; i < sizeof stream - 1; i++)
        ck_assert_int_eq(sse_parser_feed(p, stream + i, 1), 0);
    check_expected(&c);
    sse_parser_free(p);
}
END_TEST

START_TEST(test_crlf_split_is_one_line_end) {
    collected_t c = {0};
    sse_parser_t *p = sse_parser_new(0, collect, &c);
    /* "\r" ends a chunk, "\n" starts the next: one line end, not two (two would
     * dispatch "a" early and then see an empty line). */
    ck_assert_int_eq(sse_parser_feed(p, "data: a\r", 8), 0);
    ck_assert_int_eq(c.n, 0);
    ck_assert_int_eq(sse_parser_feed(p, "\ndata: b\r", 9), 0);
    ck_assert_int_eq(c.n, 0);
    ck_assert_int_eq(sse_parser_feed(p, "\n\r\n", 3), 0);
    ck_assert_int_eq(c.n, 1);
    ck_assert_str_eq(c.ev[0], "message|a\nb|");
    sse_parser_free(p);
}
END_TEST

START_TEST(test_done_marker) {
    ck_assert(sse_data_is_done("[DONE]", 6));
    ck_assert(!sse_data_is_done("[DONE] ", 7));
    ck_assert(!sse_data_is_done("[done]", 6));
    ck_assert(!sse_data_is_done(NULL, 0));
}
END_TEST

START_TEST(test_bom_skipped_even_split) {
    const char s[] = "\xEF\xBB\xBF"
                     "data: x\n\n";
    for (size_t cut = 0; cut <= 3; cut++) {
        collected_t c = {0};
        sse_parser_t *p = sse_parser_new(0, collect, &c);
        ck_assert_int_eq(sse_parser_feed(p, s, cut), 0);
        ck_assert_int_eq(sse_parser_feed(p, s + cut, sizeof s - 1 - cut), 0);
        ck_assert_int_eq(c.n, 1);
        ck_assert_str_eq(c.ev[0], "message|x|");
        sse_parser_free(p);
    }
    /* A lone 0xEF that is not a BOM stays part of the field name (unknown field). */
    collected_t c = {0};
    sse_parser_t *p = sse_parser_new(0, collect, &c);
    ck_assert_int_eq(sse_parser_feed(p, "\xEF", 1), 0);
    ck_assert_int_eq(sse_parser_feed(p, "data: y\n\ndata: z\n\n", 18), 0);
    ck_assert_int_eq(c.n, 1);
    ck_assert_str_eq(c.ev[0], "message|z|");
    sse_parser_free(p);
}
END_TEST

START_TEST(test_event_over_bound) {
    collected_t c = {0};
    sse_parser_t *p = sse_parser_new(100, collect, &c);
    char big[300];
    memset(big, 'x', sizeof big);
    /* One long partial line. */
    ck_assert_int_eq(sse_parser_feed(p, "data: ", 6), 0);
    ck_assert_int_eq(sse_parser_feed(p, big, sizeof big), SL_ETOOBIG);
    ck_assert_int_eq(sse_parser_feed(p, "\n\n", 2), SL_EINVAL); /* failed until reset */
    sse_parser_reset(p);
    ck_assert_int_eq(sse_parser_feed(p, "data: ok\n\n", 10), 0);
    ck_assert_int_eq(c.n, 1);
    /* Many short data lines that add up past the bound. */
    int rc = 0;
    for (int i = 0; i < 50 && rc == 0; i++) rc = sse_parser_feed(p, "data: 0123456789\n", 17);
    ck_assert_int_eq(rc, SL_ETOOBIG);
    ck_assert_int_eq(c.n, 1);
    sse_parser_free(p);
}
END_TEST

START_TEST(test_finish_and_stop) {
    collected_t c = {0};
    sse_parser_t *p = sse_parser_new(0, collect, &c);
    ck_assert_int_eq(sse_parser_feed(p, "data: partial", 13), 0);
    ck_assert_int_eq(sse_parser_finish(p), SL_EPROTO); /* dropped, as the spec says */
    ck_assert_int_eq(c.n, 0);
    ck_assert_int_eq(sse_parser_feed(p, "data: a\n", 8), 0);
    ck_assert_int_eq(sse_parser_finish(p), SL_EPROTO); /* event without blank line */
    ck_assert_int_eq(c.n, 0);
    ck_assert_int_eq(sse_parser_finish(p), 0);
    c.stop_at = 2;
    ck_assert_int_eq(sse_parser_feed(p, "data: 1\n\ndata: 2\n\ndata: 3\n\n", 27), 7);
    ck_assert_int_eq(c.n, 2);
    /* A callback's code does not poison the parser. */
    ck_assert_int_eq(sse_parser_feed(p, "data: 4\n\n", 9), 0);
    ck_assert_int_eq(c.n, 3);
    sse_parser_free(p);
}
END_TEST

START_TEST(test_bad_args) {
    collected_t c = {0};
    ck_assert_ptr_null(sse_parser_new(0, NULL, NULL));
    sse_parser_t *p = sse_parser_new(0, collect, &c);
    ck_assert_int_eq(sse_parser_feed(NULL, "x", 1), SL_EINVAL);
    ck_assert_int_eq(sse_parser_feed(p, NULL, 1), SL_EINVAL);
    ck_assert_int_eq(sse_parser_feed(p, NULL, 0), 0);
    ck_assert_int_eq(sse_parser_finish(NULL), SL_EINVAL);
    sse_parser_free(p);
    sse_parser_free(NULL);
}
END_TEST

START_TEST(test_encode_roundtrip) {
    const char *datas[] = {"{\"a\":1}", "two\nlines", "", "\n", "trailing\n"};
    for (size_t k = 0; k < sizeof datas / sizeof datas[0]; k++) {
        size_t need = 0;
        ck_assert_int_eq(sse_event_encode("t", datas[k], strlen(datas[k]), NULL, 0, &need), 0);
        char buf[128];
        size_t len = 0;
        ck_assert_int_eq(sse_event_encode("t", datas[k], strlen(datas[k]), buf, sizeof buf, &len),
                         0);
        ck_assert_uint_eq(len, need);
        ck_assert_uint_eq(strlen(buf), len);
        collected_t c = {0};
        sse_parser_t *p = sse_parser_new(0, collect, &c);
        ck_assert_int_eq(sse_parser_feed(p, buf, len), 0);
        ck_assert_int_eq(c.n, 1);
        char want[256];
        snprintf(want, sizeof want, "t|%s|", datas[k]);
        ck_assert_str_eq(c.ev[0], want);
        sse_parser_free(p);
    }
    char small[8];
    size_t len = 0;
    ck_assert_int_eq(sse_event_encode(NULL, "hello", 5, small, sizeof small, &len), SL_ETOOBIG);
    ck_assert_int_eq(sse_event_encode(NULL, "a\rb", 3, NULL, 0, &len), SL_EINVAL);
    ck_assert_int_eq(sse_event_encode("x\ny", "a", 1, NULL, 0, &len), SL_EINVAL);
    ck_assert_int_eq(sse_event_encode(NULL, NULL, 3, NULL, 0, &len), SL_EINVAL);
    char exact[16];
    ck_assert_int_eq(sse_event_encode(NULL, "hello", 5, exact, 14, &len), 0); /* 13 + NUL */
    ck_assert_str_eq(exact, "data: hello\n\n");
}
END_TEST

/* Random byte soup built from SSE-ish pieces, fed whole and in random
 * chunks: the same events either way, and no memory errors (run under ASan). */
typedef struct digest {
    unsigned long long h;
    int n;
} digest_t;

static int digest_event(const sse_event_t *ev, void *ud) {
    digest_t *d = ud;
    const char *parts[3] = {ev->type, ev->data, ev->id};
    for (int k = 0; k < 3; k++) {
        for (const char *p = parts[k]; *p; p++)
            d->h = (d->h ^ (unsigned char)*p) * 1099511628211ull;
        d->h = (d->h ^ 0xff) * 1099511628211ull;
    }
    d->n++;
    return 0;
}

START_TEST(test_random_streams_chunking_invariant) {
    static const char *const pieces[] = {
        "data", "data:", "data: ", "event:", "id:",  "retry:",   ":",  " ", "\r",
        "\n",   "\r\n",  "x",      "[DONE]", "\xEF", "\xBB\xBF", "12", "\0"};
    unsigned seed = 99;
    char buf[2048];
    for (int round = 0; round < 500; round++) {
        size_t len = 0;
        while (len < sizeof buf - 16) {
            seed = seed * 1103515245u + 12345u;
            const char *pc = pieces[(seed >> 16) % (sizeof pieces / sizeof pieces[0])];
            size_t pl = strlen(pc);
            if (pl == 0) { /* the empty piece stands for a NUL byte */
                buf[len++] = 0;
                continue;
            }
            memcpy(buf + len, pc, pl);
            len += pl;
            if ((seed >> 8) % 97 == 0) break;
        }
        digest_t whole = {14695981039346656037ull, 0}, chunked = whole;
        sse_parser_t *a = sse_parser_new(round % 2 ? 64 : 4096, digest_event, &whole);
        sse_parser_t *b = sse_parser_new(round % 2 ? 64 : 4096, digest_event, &chunked);
        int ra = sse_parser_feed(a, buf, len);
        int rb = 0;
        for (size_t off = 0; off < len && rb == 0;) {
            seed = seed * 1103515245u + 12345u;
            size_t n = 1 + (seed >> 16) % 40;
            if (n > len - off) n = len - off;
            rb = sse_parser_feed(b, buf + off, n);
            off += n;
        }
        ck_assert_int_eq(ra == 0, rb == 0); /* both within the bound, or both over */
        if (ra == 0) {
            ck_assert_int_eq(whole.n, chunked.n);
            ck_assert(whole.h == chunked.h);
            ck_assert_int_eq(sse_parser_finish(a), sse_parser_finish(b));
        }
        sse_parser_free(a);
        sse_parser_free(b);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("loadgen_sse");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_whole_stream);
    tcase_add_test(tc, test_every_boundary);
    tcase_add_test(tc, test_byte_by_byte_and_retry);
    tcase_add_test(tc, test_crlf_split_is_one_line_end);
    tcase_add_test(tc, test_done_marker);
    tcase_add_test(tc, test_bom_skipped_even_split);
    tcase_add_test(tc, test_event_over_bound);
    tcase_add_test(tc, test_finish_and_stop);
    tcase_add_test(tc, test_bad_args);
    tcase_add_test(tc, test_encode_roundtrip);
    tcase_add_test(tc, test_random_streams_chunking_invariant);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
