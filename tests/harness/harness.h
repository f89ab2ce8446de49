/* harness.h - real servers and processes for integration tests.
 *
 * Starts nats-server and etcd on free loopback ports with temporary data
 * directories, and spawns Sluice programs as child processes. Everything a
 * test starts is stopped by harness_*_stop() or, as a safety net, when the
 * test process exits (children get PR_SET_PDEATHSIG so a crashed test leaves
 * no servers behind).
 *
 * Thread-safety: call from the test's main thread only.
 */
#ifndef SL_HARNESS_H
#define SL_HARNESS_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct harness_nats {
    pid_t pid;
    int port;
    char url[64];       /* nats://127.0.0.1:PORT */
    char dir[256];      /* temp dir holding the config file */
    long max_payload;   /* configured max_payload in bytes */
} harness_nats_t;

typedef struct harness_etcd {
    pid_t pid;
    int port;
    int peer_port;
    char url[64];       /* http://127.0.0.1:PORT */
    char dir[256];      /* data dir */
} harness_etcd_t;

/* Returns a TCP port on 127.0.0.1 that was free a moment ago (bind to 0). */
int harness_free_port(void);

/* Starts nats-server with max_payload (bytes; 0 = 8 MiB) and waits until it
 * accepts connections (up to 5 s). Returns 0 or a negative error. */
int harness_nats_start(harness_nats_t *n, long max_payload);
/* Stops it (SIGTERM, then SIGKILL after 2 s). Keeps port and dir so that
 * harness_nats_restart() can bring it back on the same port. */
void harness_nats_stop(harness_nats_t *n);
int harness_nats_restart(harness_nats_t *n);
/* Stops and removes the temp dir. Safe to call twice. */
void harness_nats_destroy(harness_nats_t *n);

/* Starts etcd and waits for /health (up to 15 s). */
int harness_etcd_start(harness_etcd_t *e);
void harness_etcd_stop(harness_etcd_t *e);     /* keeps data dir and ports */
int harness_etcd_restart(harness_etcd_t *e);
void harness_etcd_destroy(harness_etcd_t *e);

/* Spawns argv[0] (a path, or a name looked up in $SLUICE_BIN_DIR first, then
 * PATH) with extra environment entries env ("K=V", NULL-terminated, may be
 * NULL). stdout/stderr go to log_path if non-NULL, else inherited.
 * Returns the pid or -1. */
pid_t harness_spawn(char *const argv[], char *const env[], const char *log_path);
/* Sends sig and waits up to timeout_ms for exit; escalates to SIGKILL.
 * Returns the exit status as waitpid gives it, or -1. */
int harness_kill(pid_t pid, int sig, int timeout_ms);
/* Non-blocking: true if pid has exited (reaps it, stores status). */
bool harness_exited(pid_t pid, int *status);

/* Path of a Sluice binary: $SLUICE_BIN_DIR/name (or build/bin/name). */
const char *harness_bin(const char *name, char *buf, size_t len);
/* Path under ../shared (or $SLUICE_SHARED). */
const char *harness_shared(const char *rel, char *buf, size_t len);

/* Creates a temp dir under $TMPDIR with the prefix; returns 0. */
int harness_mkdtemp(const char *prefix, char *out, size_t len);
/* rm -rf of a dir created by harness_mkdtemp. */
void harness_rmtree(const char *dir);

/* Monotonic milliseconds. */
long long harness_now_ms(void);
void harness_sleep_ms(int ms);

#endif
