/* log.h - leveled logging with component and request-id context.
 *
 * One process-wide logger. Each line carries a timestamp, level, component
 * and, where given, a request id:
 *   2026-11-20T10:00:00.123Z INFO  router [req=abc] picked worker 1f
 * The level comes from SLUICE_LOG (error|warn|info|debug|trace) or
 * sl_log_set_level(). Library code logs through the same macros; a program
 * may install a sink callback to redirect lines (tests capture them that way).
 *
 * Thread-safety: all functions are thread-safe; lines are written whole.
 */
#ifndef SL_LOG_H
#define SL_LOG_H

#include <stdarg.h>

typedef enum sl_log_level {
    SL_LOG_ERROR = 0,
    SL_LOG_WARN = 1,
    SL_LOG_INFO = 2,
    SL_LOG_DEBUG = 3,
    SL_LOG_TRACE = 4
} sl_log_level_t;

/* Receives a fully formatted line (no trailing newline). */
typedef void (*sl_log_sink_fn)(sl_log_level_t level, const char *line, void *ud);

/* Sets the component name shown on every line (copied; default "sluice") and
 * reads SLUICE_LOG. Call once at program start; safe to call again. */
void sl_log_init(const char *component);

/* Parses "error", "warn", "info", "debug", "trace" (case-insensitive).
 * Returns 0 and sets *out, or SL_EINVAL. */
int sl_log_level_parse(const char *s, sl_log_level_t *out);

void sl_log_set_level(sl_log_level_t level);
sl_log_level_t sl_log_get_level(void);

/* Installs a sink (NULL restores stderr). */
void sl_log_set_sink(sl_log_sink_fn fn, void *ud);

/* Low-level entry; use the macros. req may be NULL. */
void sl_log_write(sl_log_level_t level, const char *req, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void sl_log_vwrite(sl_log_level_t level, const char *req, const char *fmt, va_list ap);

extern volatile int sl_log_level_current;

#define SL_LOG_ENABLED(lvl) ((int)(lvl) <= sl_log_level_current)
#define SL_LOG(lvl, req, ...)                                                                      \
    do {                                                                                           \
        if (SL_LOG_ENABLED(lvl)) sl_log_write((lvl), (req), __VA_ARGS__);                          \
    } while (0)
#define LOG_ERROR(...) SL_LOG(SL_LOG_ERROR, NULL, __VA_ARGS__)
#define LOG_WARN(...)  SL_LOG(SL_LOG_WARN, NULL, __VA_ARGS__)
#define LOG_INFO(...)  SL_LOG(SL_LOG_INFO, NULL, __VA_ARGS__)
#define LOG_DEBUG(...) SL_LOG(SL_LOG_DEBUG, NULL, __VA_ARGS__)
#define LOG_TRACE(...) SL_LOG(SL_LOG_TRACE, NULL, __VA_ARGS__)
/* Request-scoped variants: the request id is shown as [req=ID]. */
#define RLOG_ERROR(req, ...) SL_LOG(SL_LOG_ERROR, (req), __VA_ARGS__)
#define RLOG_WARN(req, ...)  SL_LOG(SL_LOG_WARN, (req), __VA_ARGS__)
#define RLOG_INFO(req, ...)  SL_LOG(SL_LOG_INFO, (req), __VA_ARGS__)
#define RLOG_DEBUG(req, ...) SL_LOG(SL_LOG_DEBUG, (req), __VA_ARGS__)

#endif
