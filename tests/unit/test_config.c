/* test_config.c - config tables: precedence, every type, errors, --help. */
#include "common/base/config.h"
#include "common/base/err.h"
#include "common/base/log.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct test_cfg {
    sl_config_common_t common;
    bool verbose;
    bool cache;
    int64_t batch;
    uint64_t blocks;
    double scale;
    char *model;
    int mode;
    int64_t timeout_ms;
} test_cfg_t;

static const char *const modes[] = {"kv", "round-robin", "random", NULL};

static const sl_config_entry_t table[] = {
    SL_CONFIG_COMMON(test_cfg_t, common),
    SL_CONFIG_BOOL_ENTRY("verbose", NULL, test_cfg_t, verbose, NULL, "Say more"),
    SL_CONFIG_BOOL_ENTRY("cache", "SLUICE_T_CACHE", test_cfg_t, cache, "true", "Use the cache"),
    SL_CONFIG_INT64_ENTRY("batch", "SLUICE_T_BATCH", test_cfg_t, batch, "16", 1, 1024,
                          "Batch size"),
    SL_CONFIG_UINT64_ENTRY("blocks", NULL, test_cfg_t, blocks, "100", 0, UINT64_MAX, "Blocks"),
    SL_CONFIG_DOUBLE_ENTRY("scale", "SLUICE_T_SCALE", test_cfg_t, scale, "1.5", 0.0, 10.0,
                           "Prefill scale"),
    SL_CONFIG_STRING_ENTRY("model", "SLUICE_T_MODEL", test_cfg_t, model, NULL, "Model path"),
    SL_CONFIG_ENUM_ENTRY("mode", "SLUICE_T_MODE", test_cfg_t, mode, "kv", modes, "Routing mode"),
    SL_CONFIG_DURATION_ENTRY("timeout", NULL, test_cfg_t, timeout_ms, "10s", 0, 3600000,
                             "Request timeout"),
};
#define NT (sizeof table / sizeof table[0])

static const char *const env_vars[] = {
    "SLUICE_NAMESPACE", "SLUICE_ETCD",    "SLUICE_NATS",    "SLUICE_LOG",     "SLUICE_SYSTEM_PORT",
    "SLUICE_T_CACHE",   "SLUICE_T_BATCH", "SLUICE_T_SCALE", "SLUICE_T_MODEL", "SLUICE_T_MODE"};

static void clear_env(void) {
    for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++) unsetenv(env_vars[i]);
}

/* Parses a NULL-terminated argv list (argv[0] is added). */
static int parse(test_cfg_t *c, sl_config_parse_out_t *po, const char *const *args) {
    char *argv[64] = {"prog"};
    int argc = 1;
    for (size_t i = 0; args && args[i]; i++) argv[argc++] = (char *)args[i];
    memset(c, 0, sizeof *c);
    return sl_config_parse(table, NT, c, argc, argv, po);
}

START_TEST(test_defaults) {
    clear_env();
    test_cfg_t c;
    sl_config_parse_out_t po;
    ck_assert_int_eq(parse(&c, &po, NULL), 0);
    ck_assert_str_eq(c.common.ns, "default");
    ck_assert_str_eq(c.common.etcd, "http://127.0.0.1:2379");
    ck_assert_str_eq(c.common.nats, "nats://127.0.0.1:4222");
    ck_assert_int_eq(c.common.log_level, SL_LOG_INFO);
    ck_assert_int_eq(c.common.system_port, 0);
    ck_assert(!c.verbose);
    ck_assert(c.cache);
    ck_assert_int_eq(c.batch, 16);
    ck_assert_uint_eq(c.blocks, 100);
    ck_assert_double_eq(c.scale, 1.5);
    ck_assert_ptr_null(c.model);
    ck_assert_int_eq(c.mode, 0);
    ck_assert_int_eq(c.timeout_ms, 10000);
    ck_assert(!po.help);
    ck_assert_uint_eq(po.nargs, 0);
    sl_config_release(table, NT, &c);
    sl_config_release(table, NT, &c); /* twice is fine */
}
END_TEST

START_TEST(test_precedence_flag_env_default) {
    clear_env();
    setenv("SLUICE_T_BATCH", "32", 1);
    setenv("SLUICE_NAMESPACE", "envns", 1);
    setenv("SLUICE_T_MODE", "random", 1);
    setenv("SLUICE_LOG", "debug", 1);
    setenv("SLUICE_T_CACHE", "off", 1);
    test_cfg_t c;
    sl_config_parse_out_t po;
    /* env over default */
    ck_assert_int_eq(parse(&c, &po, NULL), 0);
    ck_assert_int_eq(c.batch, 32);
    ck_assert_str_eq(c.common.ns, "envns");
    ck_assert_int_eq(c.mode, 2);
    ck_assert_int_eq(c.common.log_level, SL_LOG_DEBUG);
    ck_assert(!c.cache);
    sl_config_release(table, NT, &c);
    /* flag over env, both spellings */
    const char *args[] = {"--batch", "64", "--namespace=flagns", "--mode", "round-robin",
                          "--cache", NULL};
    ck_assert_int_eq(parse(&c, &po, args), 0);
    ck_assert_int_eq(c.batch, 64);
    ck_assert_str_eq(c.common.ns, "flagns");
    ck_assert_int_eq(c.mode, 1);
    ck_assert(c.cache);
    /* an untouched entry keeps env */
    ck_assert_int_eq(c.common.log_level, SL_LOG_DEBUG);
    sl_config_release(table, NT, &c);
    /* empty env var counts as unset */
    setenv("SLUICE_T_BATCH", "", 1);
    ck_assert_int_eq(parse(&c, &po, NULL), 0);
    ck_assert_int_eq(c.batch, 16);
    sl_config_release(table, NT, &c);
    clear_env();
}
END_TEST

START_TEST(test_types_and_forms) {
    clear_env();
    test_cfg_t c;
    sl_config_parse_out_t po;
    const char *args[] = {"--verbose",
                          "--no-cache",
                          "--blocks=18446744073709551615",
                          "--scale",
                          "0.25",
                          "--model",
                          "/m/llama",
                          "--model=/m/qwen",
                          "--timeout",
                          "1.5s",
                          "--system-port",
                          "-1",
                          "--log-level=TRACE",
                          "--etcd",
                          "http://10.0.0.1:2379",
                          NULL};
    ck_assert_int_eq(parse(&c, &po, args), 0);
    ck_assert(c.verbose);
    ck_assert(!c.cache);
    ck_assert_uint_eq(c.blocks, UINT64_MAX);
    ck_assert_double_eq(c.scale, 0.25);
    ck_assert_str_eq(c.model, "/m/qwen"); /* last one wins, first freed (ASan checks) */
    ck_assert_int_eq(c.timeout_ms, 1500);
    ck_assert_int_eq(c.common.system_port, -1);
    ck_assert_int_eq(c.common.log_level, SL_LOG_TRACE);
    ck_assert_str_eq(c.common.etcd, "http://10.0.0.1:2379");
    char buf[64];
    ck_assert_int_eq(sl_config_format(&table[NT - 1], &c, buf, sizeof buf), 0);
    ck_assert_str_eq(buf, "1500ms");
    ck_assert_int_eq(sl_config_format(&table[NT - 2], &c, buf, sizeof buf), 0);
    ck_assert_str_eq(buf, "kv");
    ck_assert_int_eq(sl_config_format(&table[6], &c, buf, sizeof buf), 0); /* --cache */
    ck_assert_str_eq(buf, "false");
    ck_assert_int_eq(sl_config_format(&table[0], &c, buf, 4), SL_ETOOBIG);
    sl_config_release(table, NT, &c);

    const char *args2[] = {"--verbose=false", "--cache=yes", "--timeout=2m", "--timeout",
                           "250ms",           "--batch",     "0x10",         NULL};
    ck_assert_int_eq(parse(&c, &po, args2), 0);
    ck_assert(!c.verbose);
    ck_assert(c.cache);
    ck_assert_int_eq(c.timeout_ms, 250);
    ck_assert_int_eq(c.batch, 16);
    sl_config_release(table, NT, &c);

    ck_assert_int_eq(parse(&c, &po, (const char *[]){"--timeout=1h", NULL}), 0);
    ck_assert_int_eq(c.timeout_ms, 3600000);
    sl_config_release(table, NT, &c);
}
END_TEST

START_TEST(test_positional_and_help) {
    clear_env();
    test_cfg_t c;
    sl_config_parse_out_t po;
    const char *args[] = {"ls", "--batch", "3", "extra", "--", "--not-a-flag", NULL};
    ck_assert_int_eq(parse(&c, &po, args), 0);
    ck_assert_uint_eq(po.nargs, 3);
    ck_assert_str_eq(po.args[0], "ls");
    ck_assert_str_eq(po.args[1], "extra");
    ck_assert_str_eq(po.args[2], "--not-a-flag");
    ck_assert_int_eq(c.batch, 3);
    ck_assert(!po.help);
    sl_config_release(table, NT, &c);

    ck_assert_int_eq(parse(&c, &po, (const char *[]){"--help", NULL}), 0);
    ck_assert(po.help);
    sl_config_release(table, NT, &c);
    ck_assert_int_eq(parse(&c, &po, (const char *[]){"-h", NULL}), 0);
    ck_assert(po.help);
    sl_config_release(table, NT, &c);

    const char *many[SL_CONFIG_MAX_ARGS + 2];
    for (int i = 0; i < SL_CONFIG_MAX_ARGS + 1; i++) many[i] = "x";
    many[SL_CONFIG_MAX_ARGS + 1] = NULL;
    ck_assert_int_eq(parse(&c, &po, many), SL_EINVAL);
    ck_assert_ptr_nonnull(strstr(po.error, "too many arguments"));
    sl_config_release(table, NT, &c);
}
END_TEST

START_TEST(test_help_text) {
    char *h = sl_config_help(table, NT, "sluice-test", "COMMAND", "Test program.");
    ck_assert_ptr_nonnull(h);
    ck_assert_ptr_nonnull(strstr(h, "Usage: sluice-test [options] COMMAND\nTest program.\n"));
    /* flag, help, env, default, bounds, all from the table */
    ck_assert_ptr_nonnull(strstr(h, "--batch int"));
    ck_assert_ptr_nonnull(strstr(h, "Batch size\n"));
    ck_assert_ptr_nonnull(strstr(h, "env SLUICE_T_BATCH, default 16, range [1, 1024]\n"));
    ck_assert_ptr_nonnull(strstr(h, "--[no-]cache"));
    ck_assert_ptr_nonnull(strstr(h, "env SLUICE_T_MODE, default kv, one of kv|round-robin|random"));
    ck_assert_ptr_nonnull(strstr(h, "default 1.5, range [0, 10]"));
    ck_assert_ptr_nonnull(strstr(h, "default none"));
    ck_assert_ptr_nonnull(strstr(h, "default 10s, range [0ms, 3600000ms]"));
    ck_assert_ptr_nonnull(strstr(h, "--system-port int"));
    ck_assert_ptr_nonnull(strstr(h, "env SLUICE_SYSTEM_PORT, default 0, range [-1, 65535]"));
    ck_assert_ptr_nonnull(strstr(h, "env SLUICE_NAMESPACE, default default"));
    ck_assert_ptr_nonnull(
        strstr(h, "env SLUICE_LOG, default info, one of error|warn|info|debug|trace"));
    ck_assert_ptr_nonnull(strstr(h, "--help"));
    free(h);
}
END_TEST

/* Each bad input must fail with a message naming the flag (and bounds). */
static void expect_fail(const char *const *args, int code, const char *needle1,
                        const char *needle2) {
    test_cfg_t c;
    sl_config_parse_out_t po;
    int rc = parse(&c, &po, args);
    ck_assert_msg(rc == code, "%s: rc %d (%s), want %d; error '%s'", args[0], rc, sl_strerror(rc),
                  code, po.error);
    ck_assert_msg(strstr(po.error, needle1), "error '%s' lacks '%s'", po.error, needle1);
    if (needle2)
        ck_assert_msg(strstr(po.error, needle2), "error '%s' lacks '%s'", po.error, needle2);
    ck_assert_ptr_null(strchr(po.error, '\n'));
    sl_config_release(table, NT, &c);
}

START_TEST(test_errors) {
    clear_env();
    expect_fail((const char *[]){"--bogus", NULL}, SL_EINVAL, "unknown flag --bogus", NULL);
    expect_fail((const char *[]){"--bogus=3", NULL}, SL_EINVAL, "unknown flag --bogus", NULL);
    expect_fail((const char *[]){"-x", NULL}, SL_EINVAL, "unknown option '-x'", NULL);
    expect_fail((const char *[]){"--no-batch", NULL}, SL_EINVAL, "unknown flag --no-batch", NULL);
    expect_fail((const char *[]){"--batch", NULL}, SL_EINVAL, "--batch needs a value", "[1, 1024]");
    expect_fail((const char *[]){"--batch", "--verbose", NULL}, SL_EINVAL, "--batch needs a value",
                NULL);
    expect_fail((const char *[]){"--batch", "12abc", NULL}, SL_EINVAL, "--batch",
                "invalid value '12abc'");
    expect_fail((const char *[]){"--batch=", NULL}, SL_EINVAL, "--batch", "invalid value ''");
    expect_fail((const char *[]){"--batch", "0", NULL}, SL_ERANGE, "--batch / SLUICE_T_BATCH",
                "expected an integer in [1, 1024]");
    expect_fail((const char *[]){"--batch", "99999999999999999999", NULL}, SL_EINVAL, "--batch",
                NULL);
    expect_fail((const char *[]){"--blocks", "-1", NULL}, SL_EINVAL, "--blocks", "unsigned");
    expect_fail((const char *[]){"--scale", "11", NULL}, SL_ERANGE, "--scale",
                "a number in [0, 10]");
    expect_fail((const char *[]){"--scale", "nan", NULL}, SL_EINVAL, "--scale", NULL);
    expect_fail((const char *[]){"--scale", "inf", NULL}, SL_EINVAL, "--scale", NULL);
    expect_fail((const char *[]){"--mode", "fastest", NULL}, SL_EINVAL, "--mode",
                "one of kv|round-robin|random");
    expect_fail((const char *[]){"--verbose=maybe", NULL}, SL_EINVAL, "--verbose", "true or false");
    expect_fail((const char *[]){"--timeout", "5d", NULL}, SL_EINVAL, "--timeout", "units");
    expect_fail((const char *[]){"--timeout", "2h", NULL}, SL_ERANGE, "--timeout", "3600000ms");
    expect_fail((const char *[]){"--timeout", "0.5ms", NULL}, SL_EINVAL, "--timeout", NULL);
    expect_fail((const char *[]){"--system-port", "65536", NULL}, SL_ERANGE, "--system-port",
                "[-1, 65535]");
    expect_fail((const char *[]){"--log-level", "loud", NULL}, SL_EINVAL, "--log-level",
                "error|warn|info|debug|trace");

    /* bad environment values are errors too, naming the variable */
    setenv("SLUICE_T_BATCH", "lots", 1);
    expect_fail((const char *[]){NULL}, SL_EINVAL, "environment SLUICE_T_BATCH", "[1, 1024]");
    /* ... even when a flag would override it: the operator should know */
    expect_fail((const char *[]){"--batch", "4", NULL}, SL_EINVAL, "SLUICE_T_BATCH", NULL);
    unsetenv("SLUICE_T_BATCH");
    setenv("SLUICE_T_SCALE", "-1", 1);
    expect_fail((const char *[]){NULL}, SL_ERANGE, "SLUICE_T_SCALE", "[0, 10]");
    clear_env();
}
END_TEST

typedef struct bad_cfg {
    int64_t a;
    int64_t b;
    int e;
} bad_cfg_t;

START_TEST(test_bad_tables) {
    bad_cfg_t c = {0};
    sl_config_parse_out_t po;
    char *argv[] = {"prog", NULL};
    /* default out of its own bounds */
    static const sl_config_entry_t t1[] = {
        SL_CONFIG_INT64_ENTRY("a", NULL, bad_cfg_t, a, "100", 0, 10, "A"),
    };
    ck_assert_int_eq(sl_config_parse(t1, 1, &c, 1, argv, &po), SL_ERANGE);
    ck_assert_ptr_nonnull(strstr(po.error, "the default"));
    /* duplicate flag */
    static const sl_config_entry_t t2[] = {
        SL_CONFIG_INT64_ENTRY("a", NULL, bad_cfg_t, a, "1", 0, 10, "A"),
        SL_CONFIG_INT64_ENTRY("--a", NULL, bad_cfg_t, b, "1", 0, 10, "B"),
    };
    ck_assert_int_eq(sl_config_parse(t2, 2, &c, 1, argv, &po), SL_EINVAL);
    ck_assert_ptr_nonnull(strstr(po.error, "duplicate"));
    /* enum without choices */
    static const sl_config_entry_t t3[] = {
        SL_CONFIG_ENUM_ENTRY("e", NULL, bad_cfg_t, e, NULL, NULL, "E"),
    };
    ck_assert_int_eq(sl_config_parse(t3, 1, &c, 1, argv, &po), SL_EINVAL);
    /* NULL arguments */
    ck_assert_int_eq(sl_config_parse(NULL, 0, &c, 1, argv, &po), SL_EINVAL);
    ck_assert_int_eq(sl_config_parse(t1, 1, NULL, 1, argv, &po), SL_EINVAL);
    ck_assert_int_eq(sl_config_parse(t1, 1, &c, 2, NULL, &po), SL_EINVAL);
    sl_config_release(NULL, 0, NULL);
}
END_TEST

START_TEST(test_set) {
    clear_env();
    test_cfg_t c;
    sl_config_parse_out_t po;
    ck_assert_int_eq(parse(&c, &po, NULL), 0);
    char err[256];
    ck_assert_int_eq(sl_config_set(table, NT, &c, "--batch", "8", err, sizeof err), 0);
    ck_assert_int_eq(c.batch, 8);
    ck_assert_int_eq(sl_config_set(table, NT, &c, "model", "/x", err, sizeof err), 0);
    ck_assert_str_eq(c.model, "/x");
    ck_assert_int_eq(sl_config_set(table, NT, &c, "nope", "1", err, sizeof err), SL_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(err, "--nope"));
    ck_assert_int_eq(sl_config_set(table, NT, &c, "batch", "2000", err, sizeof err), SL_ERANGE);
    ck_assert_int_eq(c.batch, 8); /* unchanged on error */
    ck_assert_int_eq(sl_config_set(table, NT, &c, "batch", "x", NULL, 0), SL_EINVAL);
    sl_config_release(table, NT, &c);
}
END_TEST

/* Entries may point at variables instead of a struct field. */
static int64_t g_port;
static char *g_name;
static bool g_flag;

START_TEST(test_pointer_entries) {
    clear_env();
    static const sl_config_entry_t pt[] = {
        {.flag = "port",
         .type = SL_CONFIG_INT64,
         .def = "80",
         .min = 1,
         .max = 65535,
         .ptr = &g_port,
         .help = "Port"},
        {.flag = "name",
         .env = "SLUICE_T_MODEL",
         .type = SL_CONFIG_STRING,
         .def = "x",
         .ptr = &g_name,
         .help = "Name"},
        {.flag = "flag", .type = SL_CONFIG_BOOL, .ptr = &g_flag, .help = "Flag"},
    };
    setenv("SLUICE_T_MODEL", "from-env", 1);
    char *argv[] = {"prog", "--port=8080", "--flag", NULL};
    sl_config_parse_out_t po;
    ck_assert_int_eq(sl_config_parse(pt, 3, NULL, 3, argv, &po), 0);
    ck_assert_int_eq(g_port, 8080);
    ck_assert_str_eq(g_name, "from-env");
    ck_assert(g_flag);
    char buf[32];
    ck_assert_int_eq(sl_config_format(&pt[0], NULL, buf, sizeof buf), 0);
    ck_assert_str_eq(buf, "8080");
    ck_assert_int_eq(sl_config_set(pt, 3, NULL, "port", "0", NULL, 0), SL_ERANGE);
    sl_config_release(pt, 3, NULL);
    ck_assert_ptr_null(g_name);
    /* a table mixing offsets needs a struct */
    ck_assert_int_eq(sl_config_parse(table, NT, NULL, 1, argv, &po), SL_EINVAL);
    clear_env();
}
END_TEST

int main(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_precedence_flag_env_default);
    tcase_add_test(tc, test_types_and_forms);
    tcase_add_test(tc, test_positional_and_help);
    tcase_add_test(tc, test_help_text);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_bad_tables);
    tcase_add_test(tc, test_set);
    tcase_add_test(tc, test_pointer_entries);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
