/* test_signals.c - SIGTERM/SIGINT are waited for, not fatal, once installed,
 * whichever thread the kernel delivers them to. */
#include "common/base/err.h"
#include "common/runtime/signals.h"

#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

START_TEST(test_wait_returns_signal) {
    ck_assert_int_eq(signals_wait(0), -EINVAL); /* nothing installed yet */
    ck_assert_int_eq(signals_install(), 0);
    ck_assert_int_eq(signals_install(), 0); /* idempotent */
    kill(getpid(), SIGTERM);                /* kept for the waiter instead of killing us */
    ck_assert_int_eq(signals_wait(1000), SIGTERM);
    kill(getpid(), SIGINT);
    ck_assert_int_eq(signals_wait(-1), SIGINT);
    long long t0 = now_ms();
    ck_assert_int_eq(signals_wait(150), 0); /* nothing pending: timeout */
    ck_assert_int_ge(now_ms() - t0, 140);
    kill(getpid(), SIGPIPE); /* ignored */
    ck_assert_int_eq(signals_wait(0), 0);
    /* two before anyone waits: both kept, in order */
    kill(getpid(), SIGINT);
    kill(getpid(), SIGTERM);
    ck_assert_int_eq(signals_wait(1000), SIGINT);
    ck_assert_int_eq(signals_wait(1000), SIGTERM);
}
END_TEST

/* The signal lands on another thread (any thread with it unblocked, as
 * ASan's own thread is): the process survives and the waiter gets it. */
static void *sleeper(void *arg) {
    (void)arg;
    struct timespec ts = {0, 300 * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
    return NULL;
}

START_TEST(test_signal_on_other_thread) {
    ck_assert_int_eq(signals_install(), 0);
    pthread_t th;
    pthread_create(&th, NULL, sleeper, NULL);
    pthread_kill(th, SIGTERM);
    ck_assert_int_eq(signals_wait(2000), SIGTERM);
    pthread_join(th, NULL);
}
END_TEST

static atomic_int got_sig;
static atomic_int calls;

static void on_sig(int signo, void *ud) {
    (void)ud;
    atomic_store(&got_sig, signo);
    atomic_fetch_add(&calls, 1);
}

START_TEST(test_watch_thread) {
    signals_watch_t *w = NULL;
    ck_assert_int_eq(signals_watch_start(NULL, NULL, &w), SL_EINVAL);
    ck_assert_int_eq(signals_watch_start(on_sig, NULL, NULL), SL_EINVAL);
    ck_assert_int_eq(signals_watch_start(on_sig, NULL, &w), 0);
    kill(getpid(), SIGINT);
    long long end = now_ms() + 2000;
    while (atomic_load(&calls) < 1 && now_ms() < end) usleep(5000);
    ck_assert_int_eq(atomic_load(&got_sig), SIGINT);
    long long t0 = now_ms();
    signals_watch_stop(w);
    ck_assert_int_lt(now_ms() - t0, 500);
    signals_watch_stop(NULL);
    ck_assert_int_eq(atomic_load(&calls), 1);
}
END_TEST

int main(void) {
    Suite *s = suite_create("signals");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_wait_returns_signal);
    tcase_add_test(tc, test_signal_on_other_thread);
    tcase_add_test(tc, test_watch_thread);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
