/* worker_host.c - start-up and engine-thread pieces shared by the decode and
 * prefill workers (see worker_host.h). */
#include "services/decode-worker/worker_host.h"
#include "common/base/clock.h"
#include "common/base/err.h"
#include "common/base/log.h"

#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void worker_host_model_name(const worker_cfg_t *cfg, char *out, size_t out_len) {
    if (cfg->served_model_name && cfg->served_model_name[0]) {
        snprintf(out, out_len, "%s", cfg->served_model_name);
        return;
    }
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", cfg->model);
    size_t n = strlen(tmp);
    while (n > 1 && tmp[n - 1] == '/') tmp[--n] = 0;
    snprintf(out, out_len, "%s", basename(tmp));
}

int worker_host_sysserver_start(const worker_cfg_t *cfg, metrics_registry_t *reg,
                                sysserver_health_fn health, void *ud, sysserver_t **out, char *why,
                                size_t why_len) {
    *out = NULL;
    if (cfg->common.system_port < 0) return 0;
    sysserver_opts_t so = {
        .port = (int)cfg->common.system_port, .metrics = reg, .health = health, .health_ud = ud};
    const char *host = getenv("SLUICE_SYSTEM_HOST");
    if (host && host[0]) so.host = host;
    int rc = sysserver_start(&so, out);
    if (rc) {
        snprintf(why, why_len, "cannot serve on system port %" PRId64 ": %s",
                 cfg->common.system_port, sl_strerror(rc));
        return rc;
    }
    LOG_INFO("system server on port %d", sysserver_port(*out));
    return 0;
}

int worker_host_discovery_open(const worker_cfg_t *cfg, const char *ns,
                               discovery_instance_fn on_instance, void *ud, discovery_t **out,
                               char *why, size_t why_len) {
    discovery_opts_t dopts = {.etcd_url = cfg->common.etcd,
                              .ns = ns,
                              .ttl_s = (int)cfg->lease_ttl_s,
                              .on_instance_change = on_instance,
                              .ud = ud};
    int rc = discovery_open(&dopts, out);
    if (rc) snprintf(why, why_len, "discovery: %s", sl_strerror(rc));
    return rc;
}

int worker_host_register(discovery_t *d, const worker_cfg_t *cfg, const char *component,
                         const char *endpoint, const char *meta_json, char *why, size_t why_len) {
    int rc = discovery_register(d, component, endpoint, meta_json);
    if (rc == SL_EUNAVAIL || rc == SL_ETIMEDOUT) {
        LOG_WARN("etcd at %s not reachable: registering when it answers", cfg->common.etcd);
        rc = 0;
    }
    if (rc) snprintf(why, why_len, "registration refused: %s", sl_strerror(rc));
    return rc;
}

void worker_host_kv_events_collect(kvpub_t *kvpub, metrics_counter_t *counter) {
    kvpub_stats_t st;
    kvpub_stats_get(kvpub, &st);
    uint64_t have = metrics_counter_value(counter);
    if (st.events > have) metrics_counter_add(counter, st.events - have);
}

void worker_host_resync_enqueue(kvpub_t *kvpub, engine_t *engine, metrics_counter_t *malformed,
                                const bus_msg_t *msg) {
    int rc = kvpub_resync_enqueue(kvpub, msg);
    if (rc == SL_EPROTO || rc == SL_EINVAL)
        metrics_counter_inc(malformed);
    else if (rc == 0)
        engine_wake(engine);
}

void worker_host_step_failed(int rc, int64_t *last_warn_ns) {
    int64_t now = sl_mono_ns();
    if (now - *last_warn_ns > 1000000000LL) {
        LOG_WARN("engine step: %s", sl_strerror(rc));
        *last_warn_ns = now;
    }
    struct timespec ts = {0, 1000000L}; /* do not spin on a stuck queue */
    nanosleep(&ts, NULL);
}
