/* harness.c - start real nats-server / etcd and child processes for tests. */
#include "tests/harness/harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

long long harness_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void harness_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

int harness_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static bool port_open(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

int harness_mkdtemp(const char *prefix, char *out, size_t len) {
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp) tmp = "/tmp";
    if ((size_t)snprintf(out, len, "%s/%s.XXXXXX", tmp, prefix) >= len) return -ENAMETOOLONG;
    return mkdtemp(out) ? 0 : -errno;
}

void harness_rmtree(const char *dir) {
    if (!dir || !*dir) return;
    char *argv[] = {"rm", "-rf", (char *)dir, NULL};
    pid_t p = fork();
    if (p == 0) {
        execvp("rm", argv);
        _exit(127);
    }
    if (p > 0) waitpid(p, NULL, 0);
}

const char *harness_bin(const char *name, char *buf, size_t len) {
    const char *d = getenv("SLUICE_BIN_DIR");
    snprintf(buf, len, "%s/%s", d && *d ? d : "build/bin", name);
    return buf;
}

const char *harness_shared(const char *rel, char *buf, size_t len) {
    const char *d = getenv("SLUICE_SHARED");
    snprintf(buf, len, "%s/%s", d && *d ? d : "../shared", rel);
    return buf;
}

pid_t harness_spawn(char *const argv[], char *const env[], const char *log_path) {
    char path[1024];
    const char *exe = argv[0];
    if (!strchr(exe, '/')) {
        harness_bin(exe, path, sizeof path);
        if (access(path, X_OK) == 0) exe = path;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(126);
        setpgid(0, 0);
        if (log_path) {
            int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
                close(fd);
            }
        }
        for (size_t i = 0; env && env[i]; i++) putenv(env[i]);
        execvp(exe, argv);
        fprintf(stderr, "harness: exec %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
    return pid;
}

bool harness_exited(pid_t pid, int *status) {
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
        if (status) *status = st;
        return true;
    }
    return r < 0 && errno == ECHILD;
}

int harness_kill(pid_t pid, int sig, int timeout_ms) {
    if (pid <= 0) return -1;
    int st = -1;
    kill(pid, sig);
    long long end = harness_now_ms() + timeout_ms;
    while (harness_now_ms() < end) {
        if (harness_exited(pid, &st)) return st;
        harness_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    if (waitpid(pid, &st, 0) < 0) return -1;
    return st;
}

/* ---- nats ---- */

static int nats_launch(harness_nats_t *n) {
    char conf[320], log[320];
    snprintf(conf, sizeof conf, "%s/nats.conf", n->dir);
    snprintf(log, sizeof log, "%s/nats.log", n->dir);
    char *argv[] = {"nats-server", "-c", conf, NULL};
    n->pid = harness_spawn(argv, NULL, log);
    if (n->pid < 0) return -1;
    long long end = harness_now_ms() + 5000;
    while (harness_now_ms() < end) {
        if (port_open(n->port)) return 0;
        if (harness_exited(n->pid, NULL)) break;
        harness_sleep_ms(20);
    }
    harness_kill(n->pid, SIGKILL, 1000);
    n->pid = 0;
    return -ETIMEDOUT;
}

int harness_nats_start(harness_nats_t *n, long max_payload) {
    memset(n, 0, sizeof *n);
    n->max_payload = max_payload > 0 ? max_payload : 8L << 20;
    if (harness_mkdtemp("sluice-nats", n->dir, sizeof n->dir) != 0) return -1;
    for (int attempt = 0; attempt < 5; attempt++) {
        n->port = harness_free_port();
        snprintf(n->url, sizeof n->url, "nats://127.0.0.1:%d", n->port);
        char conf[320];
        snprintf(conf, sizeof conf, "%s/nats.conf", n->dir);
        FILE *f = fopen(conf, "w");
        if (!f) return -errno;
        fprintf(f, "listen: 127.0.0.1:%d\nmax_payload: %ld\nmax_pending: 67108864\n", n->port,
                n->max_payload);
        fclose(f);
        if (nats_launch(n) == 0) return 0;
    }
    return -1;
}

void harness_nats_stop(harness_nats_t *n) {
    if (n->pid > 0) harness_kill(n->pid, SIGTERM, 2000);
    n->pid = 0;
}

int harness_nats_restart(harness_nats_t *n) {
    harness_nats_stop(n);
    return nats_launch(n);
}

void harness_nats_destroy(harness_nats_t *n) {
    harness_nats_stop(n);
    if (n->dir[0]) harness_rmtree(n->dir);
    n->dir[0] = 0;
}

/* ---- etcd ---- */

static bool etcd_healthy(const harness_etcd_t *e) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "curl -sf -m 1 %s/health 2>/dev/null | grep -q true", e->url);
    return system(cmd) == 0;
}

static int etcd_launch(harness_etcd_t *e) {
    char listen[96], peer[96], data[320], log[320], name[64];
    snprintf(listen, sizeof listen, "http://127.0.0.1:%d", e->port);
    snprintf(peer, sizeof peer, "http://127.0.0.1:%d", e->peer_port);
    snprintf(data, sizeof data, "%s/data", e->dir);
    snprintf(log, sizeof log, "%s/etcd.log", e->dir);
    snprintf(name, sizeof name, "test%d", e->port);
    char initial[160];
    snprintf(initial, sizeof initial, "%s=%s", name, peer);
    char *argv[] = {"etcd", "--name", name, "--listen-client-urls", listen,
                    "--advertise-client-urls", listen, "--listen-peer-urls", peer,
                    "--initial-advertise-peer-urls", peer, "--initial-cluster", initial,
                    "--data-dir", data, "--logger=zap", "--log-level=warn", NULL};
    e->pid = harness_spawn(argv, NULL, log);
    if (e->pid < 0) return -1;
    long long end = harness_now_ms() + 15000;
    while (harness_now_ms() < end) {
        if (port_open(e->port) && etcd_healthy(e)) return 0;
        if (harness_exited(e->pid, NULL)) break;
        harness_sleep_ms(50);
    }
    harness_kill(e->pid, SIGKILL, 1000);
    e->pid = 0;
    return -ETIMEDOUT;
}

int harness_etcd_start(harness_etcd_t *e) {
    memset(e, 0, sizeof *e);
    if (harness_mkdtemp("sluice-etcd", e->dir, sizeof e->dir) != 0) return -1;
    for (int attempt = 0; attempt < 5; attempt++) {
        e->port = harness_free_port();
        e->peer_port = harness_free_port();
        if (e->port == e->peer_port) continue;
        snprintf(e->url, sizeof e->url, "http://127.0.0.1:%d", e->port);
        if (etcd_launch(e) == 0) return 0;
    }
    return -1;
}

void harness_etcd_stop(harness_etcd_t *e) {
    if (e->pid > 0) harness_kill(e->pid, SIGTERM, 3000);
    e->pid = 0;
}

int harness_etcd_restart(harness_etcd_t *e) {
    harness_etcd_stop(e);
    return etcd_launch(e);
}

void harness_etcd_destroy(harness_etcd_t *e) {
    harness_etcd_stop(e);
    if (e->dir[0]) harness_rmtree(e->dir);
    e->dir[0] = 0;
}
