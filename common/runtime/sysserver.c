/* sysserver.c - /metrics, /health, /live over civetweb (see sysserver.h).
 *
 * One catch-all handler dispatches on the cleaned path, so that the 404 and
 * 405 answers are ours and civetweb never serves files (no document_root).
 */
#include "common/runtime/sysserver.h"
#include "common/base/err.h"
#include "common/base/log.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct sysserver {
    struct mg_context *ctx;
    int port;
    struct in_addr wake_addr; /* where to connect to wake civetweb on stop */
    bool can_wake;
    volatile int stopped;
    metrics_registry_t *metrics;
    sysserver_health_fn health;
    void *health_ud;
};

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

static void lib_init(void) {
    mg_init_library(0);
}

static int on_log(const struct mg_connection *conn, const char *message) {
    (void)conn;
    LOG_WARN("sysserver: %s", message);
    return 1; /* handled: civetweb prints nothing itself */
}

static const char *status_text(int status) {
    switch (status) {
    case 200:
        return "OK";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

static void reply(struct mg_connection *conn, bool head, int status, const char *ctype,
                  const char *body, size_t len) {
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\n"
              "Content-Type: %s\r\n"
              "Content-Length: %zu\r\n"
              "Cache-Control: no-store\r\n"
              "%s"
              "Connection: close\r\n\r\n",
              status, status_text(status), ctype, len, status == 405 ? "Allow: GET, HEAD\r\n" : "");
    if (!head && len) mg_write(conn, body, len);
}

#define JSON_TYPE "application/json"

static int serve_metrics(sysserver_t *s, struct mg_connection *conn, bool head) {
    char *text = NULL;
    size_t len = 0;
    int status = 200;
    if (s->metrics) {
        int rc = metrics_registry_render(s->metrics, &text, &len);
        if (rc < 0) {
            LOG_WARN("sysserver: rendering metrics: %s", sl_strerror(rc));
            status = 500;
        }
    }
    if (status == 200) {
        reply(conn, head, 200, "text/plain; version=0.0.4; charset=utf-8", text ? text : "", len);
    } else {
        static const char fail[] = "{\"error\":\"metrics unavailable\"}";
        reply(conn, head, 500, JSON_TYPE, fail, sizeof fail - 1);
    }
    free(text);
    return status;
}

static int serve_health(sysserver_t *s, struct mg_connection *conn, bool head) {
    char *json = NULL;
    bool healthy = true;
    if (s->health) healthy = s->health(s->health_ud, &json);
    const char *body =
        json ? json : (healthy ? "{\"status\":\"healthy\"}" : "{\"status\":\"unhealthy\"}");
    int status = healthy ? 200 : 503;
    reply(conn, head, status, JSON_TYPE, body, strlen(body));
    free(json);
    return status;
}

static int on_request(struct mg_connection *conn, void *cbdata) {
    sysserver_t *s = cbdata;
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *path = ri && ri->local_uri ? ri->local_uri : "";
    const char *method = ri && ri->request_method ? ri->request_method : "";
    bool known =
        strcmp(path, "/metrics") == 0 || strcmp(path, "/health") == 0 || strcmp(path, "/live") == 0;
    if (!known) {
        static const char nf[] = "{\"error\":\"not found\"}";
        reply(conn, strcmp(method, "HEAD") == 0, 404, JSON_TYPE, nf, sizeof nf - 1);
        return 404;
    }
    bool head = strcmp(method, "HEAD") == 0;
    if (!head && strcmp(method, "GET") != 0) {
        static const char na[] = "{\"error\":\"method not allowed\"}";
        reply(conn, false, 405, JSON_TYPE, na, sizeof na - 1);
        return 405;
    }
    if (strcmp(path, "/metrics") == 0) return serve_metrics(s, conn, head);
    if (strcmp(path, "/health") == 0) return serve_health(s, conn, head);
    static const char live[] = "{\"status\":\"live\"}";
    reply(conn, head, 200, JSON_TYPE, live, sizeof live - 1);
    return 200;
}

int sysserver_start(const sysserver_opts_t *opts, sysserver_t **out) {
    int rc = 0;
    sysserver_t *s = NULL;
    if (out) *out = NULL;
    if (!opts || !out || opts->port < 0 || opts->port > 65535 || opts->num_threads < 0)
        return SL_EINVAL;
    const char *host = opts->host ? opts->host : "0.0.0.0";
    char ports[128], threads[16];
    int w = snprintf(ports, sizeof ports, "%s:%d", host, opts->port);
    if (w < 0 || (size_t)w >= sizeof ports || strchr(host, ',')) return SL_EINVAL;
    snprintf(threads, sizeof threads, "%d", opts->num_threads ? opts->num_threads : 4);

    pthread_once(&lib_once, lib_init);
    s = calloc(1, sizeof *s);
    if (!s) return SL_ENOMEM;
    s->metrics = opts->metrics;
    s->health = opts->health;
    s->health_ud = opts->health_ud;

    const char *options[] = {
        "listening_ports",   ports, "num_threads", threads, "request_timeout_ms", "10000",
        "enable_keep_alive", "no",  NULL};
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.log_message = on_log;
    struct mg_init_data init = {.callbacks = &cb, .user_data = s, .configuration_options = options};
    char errtext[256] = "";
    unsigned errcode = 0;
    struct mg_error_data err = {
        .code = &errcode, .text = errtext, .text_buffer_size = sizeof errtext};
    s->ctx = mg_start2(&init, &err);
    if (!s->ctx) {
        LOG_ERROR("sysserver: cannot listen on %s: %s", ports, errtext[0] ? errtext : "unknown");
        rc = SL_EIO;
        goto out;
    }
    mg_set_request_handler(s->ctx, "/", on_request, s);
    struct mg_server_port sp[4];
    int n = mg_get_server_ports(s->ctx, 4, sp);
    if (n < 1) {
        LOG_ERROR("sysserver: no listening port after start");
        rc = SL_EIO;
        goto out;
    }
    s->port = sp[0].port;
    /* 0.0.0.0 is reached through loopback; a host name is not woken (stop
     * then takes civetweb's 2 s). */
    s->can_wake =
        inet_pton(AF_INET, strcmp(host, "0.0.0.0") == 0 ? "127.0.0.1" : host, &s->wake_addr) == 1;
    LOG_INFO("sysserver: listening on %s:%d (/metrics /health /live)", host, s->port);
    *out = s;
    s = NULL;
out:
    sysserver_stop(s);
    return rc;
}

int sysserver_port(const sysserver_t *s) {
    return s ? s->port : -1;
}

/* civetweb's master thread polls the listening socket with a 2 s timeout and
 * only then notices mg_stop(); a connection wakes it at once. The waker keeps
 * connecting until mg_stop() has returned (a connection accepted just before
 * the stop flag is set is closed unanswered, which is harmless). */
static void *stop_waker(void *arg) {
    sysserver_t *s = arg;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)s->port);
    a.sin_addr = s->wake_addr;
    while (!__atomic_load_n(&s->stopped, __ATOMIC_ACQUIRE)) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) break;
        (void)connect(fd, (struct sockaddr *)&a, sizeof a);
        close(fd);
    }
    return NULL;
}

void sysserver_stop(sysserver_t *s) {
    if (!s) return;
    if (s->ctx) {
        pthread_t waker;
        bool waking = s->can_wake && pthread_create(&waker, NULL, stop_waker, s) == 0;
        mg_stop(s->ctx);
        __atomic_store_n(&s->stopped, 1, __ATOMIC_RELEASE);
        if (waking) pthread_join(waker, NULL);
    }
    free(s);
}
