/* ctl.h - sluice-ctl internals shared by its command files.
 *
 * sluice-ctl is the operator's view of a running namespace:
 *   ls      instances registered in etcd, grouped by component (ctl_ls.c)
 *   watch   joins and leaves as they happen (ctl_watch.c)
 *   events  KvEventBatch, LoadMetrics, ActiveSeqEvent, PrefillJob from NATS,
 *           decoded (ctl_events.c, ctl_proto.c)
 * Each command returns the process exit status: 0 ok, 1 failure (etcd or NATS
 * unreachable, or --count not reached before --timeout).
 *
 * Everything read from etcd or NATS is untrusted: records are validated, and
 * text printed to a terminal has control characters replaced.
 */
#ifndef SL_CTL_H
#define SL_CTL_H

#include "common/base/config.h"

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ctl_cfg {
    sl_config_common_t common; /* namespace, etcd, nats, log level */
    bool json;                 /* JSON (ls) or JSON lines (watch, events) */
    uint64_t count;            /* watch/events: exit after this many; 0 = no limit */
    int64_t timeout_ms;        /* watch/events: exit after this long; 0 = no limit */
    char *component;           /* ls/watch: only this component */
} ctl_cfg_t;

/* Set by SIGINT/SIGTERM; commands poll it. */
extern volatile sig_atomic_t ctl_stop_requested;

int ctl_ls(const ctl_cfg_t *cfg);
int ctl_watch(const ctl_cfg_t *cfg);
int ctl_events(const ctl_cfg_t *cfg);

/* One discovery record (DESIGN.md "Discovery"), parsed from an etcd key and
 * JSON value. The strings point into json (or are static ""), valid until
 * ctl_record_clear(). */
typedef struct ctl_record {
    cJSON *json;     /* the whole value, owned */
    const char *key; /* borrowed from the caller */
    const char *component, *endpoint, *instance, *subject, *host, *model, *started_at;
    char version[32];                   /* string or number in the record; "" if absent */
    int64_t pid, block_size, kv_blocks; /* -1 when absent */
} ctl_record_t;

/* Parses and validates one record under prefix "sluice/v1/<ns>/": the checks
 * of discovery_instance_parse() (the services' validator), preceded by our
 * own so that the error says why. Returns 0, or SL_EINVAL with a reason in
 * err (the key does not have the <component>/<endpoint>/<16 hex> shape, the
 * value is not a JSON object, the record disagrees with the key, or
 * discovery rejects it). */
int ctl_record_parse(const char *ns, const char *key, const char *value, size_t len,
                     ctl_record_t *out, char *err, size_t errlen);
void ctl_record_clear(ctl_record_t *r);

/* The etcd prefix for ns and an optional component. */
int ctl_prefix(char *buf, size_t len, const char *ns, const char *component);

/* UTC time now as 2026-11-20T10:00:00.123Z. */
void ctl_time_now(char *buf, size_t len);

/* Copies s into buf for terminal output: control characters become '?', and
 * text beyond max_chars is cut with "...". NULL gives "-". */
const char *ctl_safe(const char *s, char *buf, size_t len, size_t max_chars);

/* Waits until the stop flag, *done (read under the caller's lock elsewhere:
 * polled here atomically) or the deadline (ms since the monotonic epoch; 0 =
 * none). Returns true if *done was reached. */
bool ctl_wait(volatile int *done, int64_t deadline_ms);

/* Monotonic milliseconds. */
int64_t ctl_now_ms(void);

#endif
