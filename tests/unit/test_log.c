/* test_log.c - log levels, sink capture, request-id context, error strings. */
#include "common/base/err.h"
#include "common/base/log.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char last_line[4096];
static int lines;

static void capture(sl_log_level_t level, const char *line, void *ud) {
    (void)level;
    (void)ud;
    snprintf(last_line, sizeof last_line, "%s", line);
    lines++;
}

START_TEST(test_levels_filter) {
    sl_log_init("tester");
    sl_log_set_sink(capture, NULL);
    sl_log_set_level(SL_LOG_WARN);
    lines = 0;
    LOG_INFO("hidden %d", 1);
    ck_assert_int_eq(lines, 0);
    LOG_WARN("shown %d", 2);
    ck_assert_int_eq(lines, 1);
    ck_assert_ptr_nonnull(strstr(last_line, "WARN"));
    ck_assert_ptr_nonnull(strstr(last_line, "tester"));
    ck_assert_ptr_nonnull(strstr(last_line, "shown 2"));
    RLOG_ERROR("req-42", "boom");
    ck_assert_ptr_nonnull(strstr(last_line, "[req=req-42] boom"));
    sl_log_set_sink(NULL, NULL);
}
END_TEST

START_TEST(test_level_parse_and_env) {
    sl_log_level_t l;
    ck_assert_int_eq(sl_log_level_parse("DEBUG", &l), 0);
    ck_assert_int_eq(l, SL_LOG_DEBUG);
    ck_assert_int_eq(sl_log_level_parse("loud", &l), SL_EINVAL);
    setenv("SLUICE_LOG", "trace", 1);
    sl_log_init("x");
    ck_assert_int_eq(sl_log_get_level(), SL_LOG_TRACE);
    unsetenv("SLUICE_LOG");
}
END_TEST

START_TEST(test_long_line_truncated) {
    char big[8192];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    sl_log_set_sink(capture, NULL);
    sl_log_set_level(SL_LOG_INFO);
    LOG_INFO("%s", big);
    ck_assert_uint_lt(strlen(last_line), 2048);
    sl_log_set_sink(NULL, NULL);
}
END_TEST

START_TEST(test_strerror) {
    ck_assert_str_eq(sl_strerror(SL_ETIMEDOUT), "timed out");
    ck_assert_str_eq(sl_strerror(-2), "No such file or directory");
    ck_assert_str_eq(sl_strerror(-99999), "unknown error");
}
END_TEST

int main(void) {
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_levels_filter);
    tcase_add_test(tc, test_level_parse_and_env);
    tcase_add_test(tc, test_long_line_truncated);
    tcase_add_test(tc, test_strerror);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
