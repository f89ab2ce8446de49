/* sluice-frontend - the OpenAI-compatible HTTP API in front of the workers.
 *
 *   sluice-frontend --model-path DIR [--served-model-name NAME] [--port 8000]
 *                   [--api-key KEY] ...   (--help lists every option)
 *
 * Flags, thread stacks and signals live here; the server is http_server.c.
 * SIGTERM/SIGINT stop it. Exit status: 0 ok, 1 runtime failure, 2 bad usage.
 */
#include "common/base/err.h"
#include "common/base/log.h"
#include "services/frontend/http_server.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__SANITIZE_ADDRESS__)
#include <dlfcn.h>
#include <errno.h>

/* civetweb gives its threads fixed 100 KiB stacks (Debian's build calls
 * pthread_attr_setstacksize(0x19000)); under ASan its own error replies
 * (mg_send_http_error -> vsnprintf, intercepted) overflow them now and then.
 * Under ASan only, this definition, which civetweb's PLT finds before libc's,
 * raises small stacks to 1 MiB. */
int pthread_attr_setstacksize(pthread_attr_t *attr, size_t size) {
    int (*real)(pthread_attr_t *, size_t);
    *(void **)&real = dlsym(RTLD_NEXT, "pthread_attr_setstacksize");
    if (size < ((size_t)1 << 20)) size = (size_t)1 << 20;
    return real ? real(attr, size) : EINVAL;
}
#endif

static volatile sig_atomic_t signals_seen;

static void on_signal(int sig) {
    (void)sig;
    signals_seen++;
}

int main(int argc, char **argv) {
    http_server_cfg_t cfg = {0};
    sl_config_parse_out_t po;
    http_server_t *s = NULL;
    char why[1024];
    int status = 0;
    sl_log_init("frontend");
    int rc = sl_config_parse(http_server_config_table, http_server_config_table_n, &cfg, argc, argv,
                             &po);
    if (rc < 0) {
        fprintf(stderr, "sluice-frontend: %s\n", po.error);
        status = 2;
        goto out;
    }
    if (po.help) {
        char *h =
            sl_config_help(http_server_config_table, http_server_config_table_n, "sluice-frontend",
                           NULL, "OpenAI-compatible HTTP API in front of Sluice decode workers.");
        if (h) fputs(h, stdout);
        free(h);
        goto out;
    }
    if (po.nargs > 0 || !cfg.model_path) {
        fprintf(stderr, "sluice-frontend: %s (see --help)\n",
                po.nargs > 0 ? "unexpected argument" : "--model-path DIR is required");
        status = 2;
        goto out;
    }
    sl_log_set_level((sl_log_level_t)cfg.common.log_level);
    /* one civetweb thread per connection: small stacks keep 1,000+ cheap.
     * Not under ASan, whose thread bookkeeping crashed at thread exit with a
     * changed default stack size (and whose frames are larger anyway), nor
     * under TSan, where nats.c could not start its threads with them. */
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) == 0) {
        pthread_attr_setstacksize(&attr, (size_t)cfg.thread_stack_kb * 1024);
        pthread_setattr_default_np(&attr);
        pthread_attr_destroy(&attr);
    }
#endif
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    rc = http_server_start(&cfg, &s, why, sizeof why);
    if (rc) {
        fprintf(stderr, "sluice-frontend: %s\n", why[0] ? why : sl_strerror(rc));
        status = 1;
        goto out;
    }
    fprintf(stderr, "sluice-frontend: listening on port %d\n", http_server_port(s));
    while (!signals_seen) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    LOG_INFO("stopping");
out:
    http_server_free(s);
    sl_config_release(http_server_config_table, http_server_config_table_n, &cfg);
    return status;
}
