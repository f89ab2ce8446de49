/* log.c - process-wide logger (see log.h). */
#include "common/base/log.h"
#include "common/base/err.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

volatile int sl_log_level_current = SL_LOG_INFO;

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_component[64] = "sluice";
static sl_log_sink_fn log_sink;
static void *log_sink_ud;

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG", "TRACE"};

int sl_log_level_parse(const char *s, sl_log_level_t *out) {
    static const char *const names[] = {"error", "warn", "info", "debug", "trace"};
    if (!s) return SL_EINVAL;
    for (int i = 0; i < 5; i++) {
        if (strcasecmp(s, names[i]) == 0) {
            *out = (sl_log_level_t)i;
            return 0;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = SL_LOG_WARN;
        return 0;
    }
    return SL_EINVAL;
}

void sl_log_init(const char *component) {
    pthread_mutex_lock(&log_mu);
    if (component) snprintf(log_component, sizeof log_component, "%s", component);
    pthread_mutex_unlock(&log_mu);
    const char *env = getenv("SLUICE_LOG");
    sl_log_level_t lvl;
    if (env && *env) {
        if (sl_log_level_parse(env, &lvl) == 0)
            sl_log_set_level(lvl);
        else
            sl_log_write(SL_LOG_WARN, NULL, "SLUICE_LOG=%s is not a level (error|warn|info|debug|trace)", env);
    }
}

void sl_log_set_level(sl_log_level_t level) {
    if ((int)level < SL_LOG_ERROR) level = SL_LOG_ERROR;
    if ((int)level > SL_LOG_TRACE) level = SL_LOG_TRACE;
    __atomic_store_n(&sl_log_level_current, (int)level, __ATOMIC_RELAXED);
}

sl_log_level_t sl_log_get_level(void) {
    return (sl_log_level_t)__atomic_load_n(&sl_log_level_current, __ATOMIC_RELAXED);
}

void sl_log_set_sink(sl_log_sink_fn fn, void *ud) {
    pthread_mutex_lock(&log_mu);
    log_sink = fn;
    log_sink_ud = ud;
    pthread_mutex_unlock(&log_mu);
}

void sl_log_vwrite(sl_log_level_t level, const char *req, const char *fmt, va_list ap) {
    if ((int)level < 0 || (int)level > SL_LOG_TRACE) level = SL_LOG_ERROR;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    pthread_mutex_lock(&log_mu);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], log_component);
    if (n < 0) n = 0;
    if (req && *req && (size_t)n < sizeof line) {
        int m = snprintf(line + n, sizeof line - (size_t)n, "[req=%s] ", req);
        if (m > 0) n += m;
    }
    if ((size_t)n < sizeof line) vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    if (log_sink) {
        log_sink(level, line, log_sink_ud);
    } else {
        fputs(line, stderr);
        fputc('\n', stderr);
    }
    pthread_mutex_unlock(&log_mu);
}

void sl_log_write(sl_log_level_t level, const char *req, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    sl_log_vwrite(level, req, fmt, ap);
    va_end(ap);
}
