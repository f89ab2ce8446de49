/* main.c - sluice-ctl: flags, command dispatch, and helpers shared by the
 * commands (record parsing, safe terminal output, waiting). */
#include "services/ctl/ctl.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/discovery.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

volatile sig_atomic_t ctl_stop_requested;

static const sl_config_entry_t ctl_table[] = {
    SL_CONFIG_COMMON_CLIENT(ctl_cfg_t, common),
    SL_CONFIG_BOOL_ENTRY("json", NULL, ctl_cfg_t, json, "false",
                         "JSON output (ls: one document; watch, events: one object per line)"),
    SL_CONFIG_UINT64_ENTRY("count", NULL, ctl_cfg_t, count, "0", 0, UINT64_MAX,
                           "watch, events: exit after this many events (0 = run until Ctrl-C)"),
    SL_CONFIG_DURATION_ENTRY("timeout", NULL, ctl_cfg_t, timeout_ms, "0", 0, INT64_C(86400000),
                             "watch, events: exit after this long (0 = no limit); with --count, "
                             "exit 1 if the count was not reached"),
    SL_CONFIG_STRING_ENTRY("component", NULL, ctl_cfg_t, component, NULL,
                           "ls, watch: only this component (frontend, router, backend, ...)"),
};
#define CTL_TABLE_N (sizeof ctl_table / sizeof ctl_table[0])

static const char summary[] =
    "The operator's view of a Sluice namespace.\n"
    "Commands:\n"
    "  ls      live instances by component, with their metadata\n"
    "  watch   follow joins and leaves, one line each\n"
    "  events  decode KV events, load, router replica events and prefill jobs on sluice.<ns>.*";

static void on_signal(int sig) {
    (void)sig;
    ctl_stop_requested = 1;
}

int64_t ctl_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool ctl_wait(volatile int *done, int64_t deadline_ms) {
    for (;;) {
        if (done && __atomic_load_n(done, __ATOMIC_ACQUIRE)) return true;
        if (ctl_stop_requested) return false;
        if (deadline_ms && ctl_now_ms() >= deadline_ms) return false;
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

void ctl_time_now(char *buf, size_t len) {
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

const char *ctl_safe(const char *s, char *buf, size_t len, size_t max_chars) {
    if (!len) return "";
    if (!s) s = "-";
    size_t o = 0, i = 0;
    for (; s[i] && o + 1 < len; i++) {
        if (i >= max_chars && o + 4 < len) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        unsigned char c = (unsigned char)s[i];
        buf[o++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    buf[o] = 0;
    if (o == 0) snprintf(buf, len, "-");
    return buf;
}

/* A name token: 1..64 of [A-Za-z0-9_-] (the rule discovery.h gives). */
static bool token_valid(const char *s, size_t n) {
    if (n == 0 || n > 64) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

int ctl_prefix(char *buf, size_t len, const char *ns, const char *component) {
    int w = component ? snprintf(buf, len, "sluice/v1/%s/%s/", ns, component)
                      : snprintf(buf, len, "sluice/v1/%s/", ns);
    return w < 0 || (size_t)w >= len ? SL_ETOOBIG : 0;
}

static const char *json_str(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) && v->valuestring ? v->valuestring : "";
}

/* Integers may come as numbers or (int64-safe) strings. */
static int64_t json_int(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (cJSON_IsNumber(v) && v->valuedouble >= -9e15 && v->valuedouble <= 9e15)
        return (int64_t)v->valuedouble;
    if (cJSON_IsString(v) && v->valuestring && *v->valuestring) {
        char *end;
        errno = 0;
        long long x = strtoll(v->valuestring, &end, 10);
        if (!errno && !*end) return x;
    }
    return -1;
}

int ctl_record_parse(const char *ns, const char *key, const char *value, size_t len,
                     ctl_record_t *out, char *err, size_t errlen) {
    int rc = SL_EINVAL;
    memset(out, 0, sizeof *out);
    out->key = key;
    char prefix[256];
    if (ctl_prefix(prefix, sizeof prefix, ns, NULL) < 0 ||
        strncmp(key, prefix, strlen(prefix)) != 0) {
        snprintf(err, errlen, "key outside sluice/v1/%s/", ns);
        goto out;
    }
    /* <component>/<endpoint>/<16 hex> */
    const char *p = key + strlen(prefix);
    const char *s1 = strchr(p, '/');
    const char *s2 = s1 ? strchr(s1 + 1, '/') : NULL;
    if (!s1 || !s2 || strchr(s2 + 1, '/') || !token_valid(p, (size_t)(s1 - p)) ||
        !token_valid(s1 + 1, (size_t)(s2 - s1 - 1)) || strlen(s2 + 1) != 16 ||
        strspn(s2 + 1, "0123456789abcdefABCDEF") != 16) {
        snprintf(err, errlen, "key is not <component>/<endpoint>/<16 hex>");
        goto out;
    }
    if (!value || len == 0 || len > (1u << 20)) {
        snprintf(err, errlen, "empty or oversized value (%zu bytes)", len);
        goto out;
    }
    out->json = cJSON_ParseWithLength(value, len);
    if (!cJSON_IsObject(out->json)) {
        snprintf(err, errlen, "value is not a JSON object");
        goto out;
    }
    out->component = json_str(out->json, "component");
    out->endpoint = json_str(out->json, "endpoint");
    out->instance = json_str(out->json, "instance_id");
    out->subject = json_str(out->json, "subject");
    out->host = json_str(out->json, "host");
    out->model = json_str(out->json, "model");
    out->started_at = json_str(out->json, "started_at");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(out->json, "version");
    if (cJSON_IsString(ver) && ver->valuestring)
        snprintf(out->version, sizeof out->version, "%s", ver->valuestring);
    else if (cJSON_IsNumber(ver))
        snprintf(out->version, sizeof out->version, "%g", ver->valuedouble);
    out->pid = json_int(out->json, "pid");
    out->block_size = json_int(out->json, "block_size");
    out->kv_blocks = json_int(out->json, "kv_blocks");
    if (strlen(out->component) != (size_t)(s1 - p) ||
        strncmp(out->component, p, (size_t)(s1 - p)) != 0 ||
        strlen(out->endpoint) != (size_t)(s2 - s1 - 1) ||
        strncmp(out->endpoint, s1 + 1, (size_t)(s2 - s1 - 1)) != 0) {
        snprintf(err, errlen, "record's component/endpoint disagree with the key");
        goto out;
    }
    if (*out->instance && strcasecmp(out->instance, s2 + 1) != 0) {
        snprintf(err, errlen, "record's instance_id %.32s disagrees with the key", out->instance);
        goto out;
    }
    /* Last, the services' own validator: what ls shows is what routers and
     * frontends accept. The checks above only exist to say why not. */
    discovery_instance_t inst;
    int drc = discovery_instance_parse(key, value, len, &inst);
    if (drc < 0) {
        snprintf(err, errlen,
                 "rejected by discovery (needs instance_id equal to the key's, a "
                 "subject, a numeric pid)");
        goto out;
    }
    discovery_instance_clear(&inst);
    if (!*out->instance) out->instance = key + strlen(key) - 16;
    rc = 0;
out:
    if (rc < 0) ctl_record_clear(out);
    return rc;
}

void ctl_record_clear(ctl_record_t *r) {
    if (!r) return;
    cJSON_Delete(r->json);
    memset(r, 0, sizeof *r);
}

int main(int argc, char **argv) {
    int status = 2;
    ctl_cfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    sl_config_parse_out_t po;
    sl_log_init("sluice-ctl");
    setvbuf(stdout, NULL, _IOLBF, 0); /* one line per event, even into a pipe */

    int rc = sl_config_parse(ctl_table, CTL_TABLE_N, &cfg, argc, argv, &po);
    if (rc < 0) {
        fprintf(stderr, "sluice-ctl: %s\n", po.error);
        goto out;
    }
    if (po.help) {
        char *h = sl_config_help(ctl_table, CTL_TABLE_N, "sluice-ctl", "ls|watch|events", summary);
        if (h) fputs(h, stdout);
        free(h);
        status = 0;
        goto out;
    }
    sl_log_set_level((sl_log_level_t)cfg.common.log_level);
    if (po.nargs != 1) {
        fprintf(stderr, "sluice-ctl: expected one command (ls, watch or events); see --help\n");
        goto out;
    }
    if (cfg.component && !token_valid(cfg.component, strlen(cfg.component))) {
        fprintf(stderr, "sluice-ctl: --component: '%s' is not 1..64 of [A-Za-z0-9_-]\n",
                cfg.component);
        goto out;
    }
    if (!token_valid(cfg.common.ns, strlen(cfg.common.ns))) {
        fprintf(stderr, "sluice-ctl: --namespace: '%s' is not 1..64 of [A-Za-z0-9_-]\n",
                cfg.common.ns);
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    const char *cmd = po.args[0];
    if (strcmp(cmd, "ls") == 0)
        status = ctl_ls(&cfg);
    else if (strcmp(cmd, "watch") == 0)
        status = ctl_watch(&cfg);
    else if (strcmp(cmd, "events") == 0)
        status = ctl_events(&cfg);
    else
        fprintf(stderr, "sluice-ctl: unknown command '%s' (ls, watch, events)\n", cmd);
out:
    sl_config_release(ctl_table, CTL_TABLE_N, &cfg);
    return status;
}
