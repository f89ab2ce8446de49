/* main.c - sluice-router: configuration, system server, signals. The routing
 * itself is router.c (index kv_index.c, cost router_cost.c, load
 * active_seqs.c). */
#include "common/base/config.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/runtime/metrics.h"
#include "common/runtime/signals.h"
#include "common/runtime/sysserver.h"
#include "services/router/router.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct router_cfg {
    sl_config_common_t common;
    char *model;
    uint64_t block_size;
    int mode;
    double prefill_scale;
    double queue_weight;
    double active_weight;
    double temperature;
    int64_t approx_ttl_ms;
    int64_t active_ttl_ms;
    int64_t hot_half_life_ms;
    bool hot_credit;
    int64_t resync_timeout_ms;
} router_cfg_t;

static const sl_config_entry_t table[] = {
    SL_CONFIG_COMMON(router_cfg_t, common),
    SL_CONFIG_STRING_ENTRY("model", "SLUICE_MODEL", router_cfg_t, model, NULL,
                           "Served model; workers announcing another are refused (unset: any)"),
    SL_CONFIG_UINT64_ENTRY("block-size", "SLUICE_BLOCK_SIZE", router_cfg_t, block_size, "16", 1,
                           65536,
                           "KV block size in tokens; workers announcing another are refused"),
    SL_CONFIG_ENUM_ENTRY("mode", "SLUICE_ROUTER_MODE", router_cfg_t, mode, "kv", router_mode_names,
                         "Routing mode"),
    SL_CONFIG_DOUBLE_ENTRY("prefill-scale", "SLUICE_ROUTER_PREFILL_SCALE", router_cfg_t,
                           prefill_scale, "1.0", 0.001, 1000,
                           "Weight of a block to prefill against a block of active load"),
    SL_CONFIG_DOUBLE_ENTRY("queue-weight", "SLUICE_ROUTER_QUEUE_WEIGHT", router_cfg_t, queue_weight,
                           "1", 0, 1000,
                           "> 0: load = this x queued prefill blocks + --active-weight x active "
                           "blocks (0: load = active blocks, DESIGN.md)"),
    SL_CONFIG_DOUBLE_ENTRY("active-weight", "SLUICE_ROUTER_ACTIVE_WEIGHT", router_cfg_t,
                           active_weight, "0.1", 0, 1000,
                           "With --queue-weight > 0: weight of a block of active context"),
    SL_CONFIG_DOUBLE_ENTRY("temperature", "SLUICE_ROUTER_TEMPERATURE", router_cfg_t, temperature,
                           "0", 0, 100, "0: lowest cost wins; > 0: softmax sampling over costs"),
    SL_CONFIG_DURATION_ENTRY("approx-ttl", "SLUICE_ROUTER_APPROX_TTL", router_cfg_t, approx_ttl_ms,
                             "120s", 1000, INT64_C(86400000),
                             "approx mode: how long a routed prefix counts as cached"),
    SL_CONFIG_DURATION_ENTRY("active-ttl", "SLUICE_ROUTER_ACTIVE_TTL", router_cfg_t, active_ttl_ms,
                             "10m", 1000, INT64_C(86400000),
                             "A routed request never reported finished stops counting after this"),
    SL_CONFIG_DURATION_ENTRY("hot-half-life", "SLUICE_ROUTER_HOT_HALF_LIFE", router_cfg_t,
                             hot_half_life_ms, "10s", 100, INT64_C(3600000),
                             "Memory of how many requests shared a prefix (hot-prefix credit)"),
    SL_CONFIG_BOOL_ENTRY("hot-credit", "SLUICE_ROUTER_HOT_CREDIT", router_cfg_t, hot_credit, "true",
                         "Discount cache hits on hot shared prefixes so load spreads them"),
    SL_CONFIG_DURATION_ENTRY("resync-timeout", NULL, router_cfg_t, resync_timeout_ms, "2s", 100,
                             60000, "How long to wait for a worker's KV resync reply"),
};
#define TABLE_N (sizeof table / sizeof table[0])

static bool health(void *ud, char **json) {
    router_t *r = ud;
    router_stats_t st;
    router_stats_get(r, &st);
    bool ok = router_healthy(r);
    char buf[256];
    snprintf(buf, sizeof buf,
             "{\"status\":\"%s\",\"nats\":%s,\"workers\":%llu,\"indexed_blocks\":%llu}",
             ok ? "healthy" : "unhealthy", ok ? "true" : "false", (unsigned long long)st.workers,
             (unsigned long long)st.indexed_blocks);
    *json = strdup(buf);
    return ok;
}

int main(int argc, char **argv) {
    int rc = 1;
    router_cfg_t cfg = {0};
    sl_config_parse_out_t po;
    metrics_registry_t *reg = NULL;
    router_t *r = NULL;
    sysserver_t *sys = NULL;
    sl_log_init("router");
    if (sl_config_parse(table, TABLE_N, &cfg, argc, argv, &po) < 0) {
        fprintf(stderr, "sluice-router: %s\n", po.error);
        rc = 2;
        goto out;
    }
    if (po.help) {
        char *h = sl_config_help(table, TABLE_N, "sluice-router", NULL,
                                 "KV-aware router: picks the worker for each request.");
        if (h) fputs(h, stdout);
        free(h);
        rc = 0;
        goto out;
    }
    if (po.nargs) {
        fprintf(stderr, "sluice-router: unexpected argument '%s'\n", po.args[0]);
        rc = 2;
        goto out;
    }
    sl_log_set_level((sl_log_level_t)cfg.common.log_level);
    if ((rc = signals_install()) < 0) {
        LOG_ERROR("cannot install signal handlers: %s", sl_strerror(rc));
        rc = 1;
        goto out;
    }
    rc = 1;

    if (!(reg = metrics_registry_new())) goto out;
    router_opts_t o = {
        .nats_url = cfg.common.nats,
        .etcd_url = cfg.common.etcd,
        .ns = cfg.common.ns,
        .model = cfg.model,
        .block_size = (uint32_t)cfg.block_size,
        .mode = (router_mode_t)cfg.mode,
        .prefill_scale = cfg.prefill_scale,
        .queue_weight = cfg.queue_weight,
        .active_weight = cfg.active_weight,
        .temperature = cfg.temperature,
        .approx_ttl_ms = cfg.approx_ttl_ms,
        .active_ttl_ms = cfg.active_ttl_ms,
        .hot_half_life_ms = cfg.hot_credit ? cfg.hot_half_life_ms : -1,
        .resync_timeout_ms = (int)cfg.resync_timeout_ms,
        .register_self = true,
        .metrics = reg,
    };
    int err = router_new(&o, &r);
    if (err < 0) {
        LOG_ERROR("cannot start: %s", sl_strerror(err));
        goto out;
    }
    if (cfg.common.system_port >= 0) {
        sysserver_opts_t so = {
            .port = (int)cfg.common.system_port, .metrics = reg, .health = health, .health_ud = r};
        if ((err = sysserver_start(&so, &sys)) < 0) {
            LOG_ERROR("cannot start the system server: %s", sl_strerror(err));
            goto out;
        }
        LOG_INFO("system server on port %d", sysserver_port(sys));
    }
    int sig;
    while ((sig = signals_wait(-1)) == -EINTR) {
    }
    LOG_INFO("stopping (signal %d)", sig);
    rc = 0;
out:
    sysserver_stop(sys);
    router_free(r);
    metrics_registry_free(reg);
    sl_config_release(table, TABLE_N, &cfg);
    return rc;
}
