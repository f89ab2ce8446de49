/* test_harness.c - the harness really starts, restarts and stops the servers. */
#include "tests/harness/harness.h"

#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

START_TEST(test_nats_and_etcd_lifecycle) {
    harness_nats_t n;
    harness_etcd_t e;
    ck_assert_int_eq(harness_nats_start(&n, 0), 0);
    ck_assert_int_eq(harness_etcd_start(&e), 0);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "curl -sf -m 2 -X POST -d '{\"key\":\"Zm9v\",\"value\":\"YmFy\"}' %s/v3/kv/put >/dev/null", e.url);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_int_eq(harness_etcd_restart(&e), 0);
    snprintf(cmd, sizeof cmd, "curl -sf -m 2 -X POST -d '{\"key\":\"Zm9v\"}' %s/v3/kv/range | grep -q YmFy", e.url);
    ck_assert_int_eq(system(cmd), 0); /* data survived the restart */
    ck_assert_int_eq(harness_nats_restart(&n), 0);
    harness_nats_destroy(&n);
    harness_etcd_destroy(&e);
}
END_TEST

int main(void) {
    Suite *s = suite_create("harness");
    TCase *tc = tcase_create("servers");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_nats_and_etcd_lifecycle);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
