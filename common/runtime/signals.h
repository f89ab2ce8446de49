/* signals.h - orderly shutdown on SIGTERM / SIGINT for services.
 *
 * A service must not die on SIGTERM: it has to revoke its etcd lease
 * (discovery_close) and finish or hand off its requests. The pattern:
 *
 *   int main(void) {
 *       signals_install();            // early; any time before serving
 *       ... start threads, discovery_open, discovery_register ...
 *       int sig = signals_wait(-1);   // or signals_watch_start() beside an event loop
 *       ... stop serving, discovery_close(d) ...
 *   }
 *
 * signals_install() sets handlers for SIGTERM and SIGINT that only write the
 * signal number into a self-pipe (async-signal-safe), and ignores SIGPIPE (a
 * peer closing a socket must be an error code, not a death). Because the
 * handler runs on whichever thread the kernel picks, no thread's signal mask
 * matters: threads started by libraries (or by ASan) before the call are fine.
 * Signals that arrive before anyone waits are kept (up to the pipe's size).
 *
 * Thread-safety: one waiter at a time (signals_wait or one watch); each
 * signal is reported once, to whichever waits. The pipe is process-wide and
 * never freed.
 */
#ifndef SL_SIGNALS_H
#define SL_SIGNALS_H

typedef struct signals_watch signals_watch_t;

/* Called on the watch thread with the signal number (SIGTERM or SIGINT). */
typedef void (*signals_fn)(int signo, void *ud);

/* Installs the SIGTERM/SIGINT handlers and ignores SIGPIPE. Idempotent.
 * Returns 0 or a negative errno. */
int signals_install(void);

/* Waits for SIGTERM or SIGINT (signals_install() first). timeout_ms < 0 waits
 * forever. Returns the signal number, 0 on timeout, or a negative errno
 * (-EINVAL when nothing is installed). */
int signals_wait(int timeout_ms);

/* Starts a thread that calls fn for each SIGTERM / SIGINT until stopped.
 * Installs the handlers if needed. Returns 0 and *out, or an error. */
int signals_watch_start(signals_fn fn, void *ud, signals_watch_t **out);

/* Stops the thread (within ~100 ms) and frees the watch; after it returns fn
 * is not called again. Must not be called from fn. NULL is a no-op. */
void signals_watch_stop(signals_watch_t *w);

#endif
