/* signals.c - SIGTERM/SIGINT through a self-pipe: the handler only writes the
 * signal number; waiters poll the pipe. */
#include "common/runtime/signals.h"

#include "common/base/err.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define SIGNALS_POLL_MS 100 /* how often a watch looks at its stop flag */

struct signals_watch {
    pthread_t thread;
    atomic_bool stop;
    signals_fn fn;
    void *ud;
};

static int signals_pipe[2] = {-1, -1}; /* [0] read, [1] write; both non-blocking */
static pthread_mutex_t signals_mu = PTHREAD_MUTEX_INITIALIZER;

static void signals_handler(int signo) {
    int saved = errno;
    unsigned char b = (unsigned char)signo;
    ssize_t r = write(signals_pipe[1], &b, 1); /* full pipe: the signal is dropped */
    (void)r;
    errno = saved;
}

int signals_install(void) {
    int rc = 0;
    pthread_mutex_lock(&signals_mu);
    if (signals_pipe[0] < 0 && pipe2(signals_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        rc = -errno;
        goto out;
    }
    struct sigaction sa = {.sa_handler = signals_handler, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0) {
        rc = -errno;
        goto out;
    }
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&ign.sa_mask);
    if (sigaction(SIGPIPE, &ign, NULL) != 0) rc = -errno;
out:
    pthread_mutex_unlock(&signals_mu);
    return rc;
}

static long long signals_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int signals_wait(int timeout_ms) {
    int fd = signals_pipe[0];
    if (fd < 0) return -EINVAL;
    long long end = timeout_ms >= 0 ? signals_now_ms() + timeout_ms : 0;
    for (;;) {
        unsigned char b;
        ssize_t r = read(fd, &b, 1);
        if (r == 1) return b;
        if (r < 0 && errno != EAGAIN && errno != EINTR) return -errno;
        int left = -1;
        if (timeout_ms >= 0) {
            long long now = signals_now_ms();
            if (now >= end) return 0;
            left = (int)(end - now);
        }
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, left) < 0 && errno != EINTR) return -errno;
    }
}

static void *signals_main(void *arg) {
    signals_watch_t *w = arg;
    while (!atomic_load(&w->stop)) {
        int sig = signals_wait(SIGNALS_POLL_MS);
        if (sig > 0) w->fn(sig, w->ud);
    }
    return NULL;
}

int signals_watch_start(signals_fn fn, void *ud, signals_watch_t **out) {
    if (!out) return SL_EINVAL;
    *out = NULL;
    if (!fn) return SL_EINVAL;
    int rc = signals_install();
    if (rc != 0) return rc;
    signals_watch_t *w = calloc(1, sizeof *w);
    if (!w) return SL_ENOMEM;
    w->fn = fn;
    w->ud = ud;
    atomic_init(&w->stop, false);
    if (pthread_create(&w->thread, NULL, signals_main, w) != 0) {
        free(w);
        return SL_ENOMEM;
    }
    *out = w;
    return 0;
}

void signals_watch_stop(signals_watch_t *w) {
    if (!w) return;
    atomic_store(&w->stop, true);
    pthread_join(w->thread, NULL);
    free(w);
}
