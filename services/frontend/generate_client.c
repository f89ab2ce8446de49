/* generate_client.c - retries and migration of one generation (see
 * generate_client.h). */
#include "services/frontend/generate_client.h"

#include "common/base/err.h"
#include "common/base/log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GEN_MAX_EXCLUDE 32

struct gen_client {
    bus_t *bus;
    worker_pool_t *pool;
    char ns[128];
    int stream_timeout_ms, max_attempts;
    metrics_counter_t *retries, *migrations;
    char router_mode[32];
    int router_timeout_ms;
    char route_subject[BUS_SUBJECT_MAX];
    metrics_counter_t *routed, *route_fallbacks, *overlap_blocks, *prompt_blocks;
};

int gen_client_new(bus_t *bus, worker_pool_t *pool, const gen_client_opts_t *opts,
                   gen_client_t **out) {
    if (!bus || !pool || !opts || !opts->ns || !out) return SL_EINVAL;
    gen_client_t *g = calloc(1, sizeof *g);
    if (!g) return SL_ENOMEM;
    g->bus = bus;
    g->pool = pool;
    snprintf(g->ns, sizeof g->ns, "%s", opts->ns);
    g->stream_timeout_ms = opts->stream_timeout_ms > 0 ? opts->stream_timeout_ms : 30000;
    g->max_attempts = opts->max_attempts > 0 ? opts->max_attempts : 3;
    if (g->max_attempts > GEN_MAX_EXCLUDE) g->max_attempts = GEN_MAX_EXCLUDE;
    g->retries = opts->retries;
    g->migrations = opts->migrations;
    g->routed = opts->routed;
    g->route_fallbacks = opts->route_fallbacks;
    g->overlap_blocks = opts->overlap_blocks;
    g->prompt_blocks = opts->prompt_blocks;
    g->router_timeout_ms = opts->router_timeout_ms > 0 ? opts->router_timeout_ms : 100;
    if (opts->router_mode && opts->router_mode[0]) {
        snprintf(g->router_mode, sizeof g->router_mode, "%s", opts->router_mode);
        if (bus_subject_endpoint(g->route_subject, sizeof g->route_subject, g->ns, "router",
                                 "route")) {
            free(g);
            return SL_EINVAL;
        }
    }
    *out = g;
    return 0;
}

void gen_client_free(gen_client_t *g) {
    free(g);
}

static void count(metrics_counter_t *c, uint64_t n) {
    if (c) metrics_counter_add(c, n);
}

/* Asks a router for a worker. Returns 0 and *out when it answered with a
 * worker the pool knows; else nonzero (the caller falls back). */
static int gen_route(gen_client_t *g, const Sluice__V1__GenerateRequest *req,
                     const int64_t *exclude, size_t n_exclude, worker_pool_entry_t *out) {
    uint64_t ex[GEN_MAX_EXCLUDE];
    for (size_t i = 0; i < n_exclude; i++) ex[i] = (uint64_t)exclude[i];
    Sluice__V1__RouteRequest rr = SLUICE__V1__ROUTE_REQUEST__INIT;
    rr.version = 1;
    rr.request_id = req->request_id;
    rr.model = req->model;
    rr.token_ids = req->token_ids;
    rr.n_token_ids = req->n_token_ids;
    rr.exclude_workers = ex;
    rr.n_exclude_workers = n_exclude;
    rr.mode = strcmp(g->router_mode, "default") == 0 ? "" : g->router_mode;
    rr.lora_name = req->lora_name;
    ProtobufCMessage *pm = NULL;
    int rc = bus_request_proto(g->bus, g->route_subject, &rr.base,
                               &sluice__v1__route_response__descriptor, g->router_timeout_ms, &pm);
    if (rc) return rc;
    Sluice__V1__RouteResponse *resp = (Sluice__V1__RouteResponse *)pm;
    if (resp->error && resp->error->code)
        rc = SL_EUNAVAIL;
    else
        rc = worker_pool_get(g->pool, (int64_t)resp->worker_id, req->model, out);
    if (rc == 0) {
        count(g->overlap_blocks, resp->overlap_blocks);
        count(g->prompt_blocks, resp->total_blocks);
    }
    protobuf_c_message_free_unpacked(pm, NULL);
    return rc;
}

static void gen_cancel(gen_client_t *g, int64_t worker, const char *request_id) {
    char subj[BUS_SUBJECT_MAX];
    Sluice__V1__CancelRequest c = SLUICE__V1__CANCEL_REQUEST__INIT;
    c.version = 1;
    c.request_id = (char *)request_id;
    if (bus_subject_instance(subj, sizeof subj, g->ns, "backend", "cancel", (uint64_t)worker) == 0)
        bus_publish_proto(g->bus, subj, &c.base);
}

__attribute__((format(printf, 4, 5))) static void res_fail(gen_result_t *res, int code, int status,
                                                           const char *fmt, ...) {
    char tmp[sizeof res->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap); /* args may point into res->message */
    va_end(ap);
    res->code = code;
    res->http_status = status;
    memcpy(res->message, tmp, sizeof tmp);
}

int gen_client_run(gen_client_t *g, const Sluice__V1__GenerateRequest *req, gen_chunk_fn fn,
                   void *ud, gen_result_t *res) {
    int64_t exclude[GEN_MAX_EXCLUDE];
    size_t n_exclude = 0;
    uint32_t *out_ids = NULL; /* (n_out, cap_out) tokens delivered to the callback */
    size_t n_out = 0, cap_out = 0;
    uint32_t budget = req->stop ? req->stop->max_tokens : 0;
    bool done = false;
    int rc = 0;
    memset(res, 0, sizeof *res);
    res->finish = SLUICE__V1__FINISH_REASON__FINISH_REASON_NONE;

    while (!done) {
        worker_pool_entry_t w;
        if (res->attempts >= g->max_attempts) {
            char why[512];
            snprintf(why, sizeof why, "%s", res->message[0] ? res->message : "gave up");
            res_fail(res, SL_EUNAVAIL, 503, "worker failed after retries: %s", why);
            rc = SL_EUNAVAIL;
            break;
        }
        rc = SL_ENOTFOUND;
        if (g->router_mode[0]) {
            rc = gen_route(g, req, exclude, n_exclude, &w);
            count(rc ? g->route_fallbacks : g->routed, 1);
        }
        if (rc) rc = worker_pool_pick(g->pool, req->model, exclude, n_exclude, &w);
        if (rc == SL_ENOTFOUND && res->attempts == 0) {
            res_fail(res, rc, 404, "model '%s' is not served by any worker", req->model);
            break;
        }
        if (rc) {
            char why[1024];
            snprintf(why, sizeof why, "no worker available for model '%s'%s%s", req->model,
                     res->message[0] ? ": last error: " : "", res->message);
            res_fail(res, SL_EUNAVAIL, 503, "%s", why);
            rc = SL_EUNAVAIL;
            break;
        }
        if (res->attempts > 0) {
            if (n_out > 0) {
                if (g->migrations) metrics_counter_inc(g->migrations);
                RLOG_INFO(req->request_id, "migrating to worker %016llx after %zu tokens",
                          (unsigned long long)w.id, n_out);
            } else if (g->retries) {
                metrics_counter_inc(g->retries);
            }
        }
        res->attempts++;
        exclude[n_exclude++] = w.id;

        /* This attempt's request: the prompt plus what was delivered so far,
         * with the remaining budget. */
        Sluice__V1__GenerateRequest m = *req;
        Sluice__V1__StopConditions sc = SLUICE__V1__STOP_CONDITIONS__INIT;
        if (req->stop) sc = *req->stop;
        if (budget) sc.max_tokens = budget - (uint32_t)n_out;
        m.stop = &sc;
        m.prior_output_ids = out_ids;
        m.n_prior_output_ids = n_out;
        bus_stream_opts_t so = {.idle_timeout_ms = g->stream_timeout_ms};
        bus_stream_t *s = NULL;
        rc = bus_stream_open_proto(g->bus, w.subject, &m.base, &so, &s);
        if (rc == SL_ETOOBIG) {
            res_fail(res, rc, 413, "request too large for the message bus (%s); shorten the prompt",
                     bus_last_error());
            break;
        }
        if (rc) {
            res_fail(res, rc, 503, "%s", bus_last_error());
            continue;
        }
        bool failed = false;
        for (;;) {
            ProtobufCMessage *pm = NULL;
            bool last = false;
            rc = bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor, &pm, &last);
            if (rc) {
                /* the worker died, went silent, or nobody listens */
                res_fail(res, rc, 503, "worker stream failed: %s", bus_stream_error(s));
                RLOG_WARN(req->request_id, "worker %016llx: %s", (unsigned long long)w.id,
                          res->message);
                failed = true;
                break;
            }
            Sluice__V1__GenerateChunk *c = (Sluice__V1__GenerateChunk *)pm;
            if (c->finish_reason == SLUICE__V1__FINISH_REASON__FINISH_REASON_ERROR) {
                int st = c->error && c->error->http_status ? (int)c->error->http_status : 500;
                res_fail(res, c->error && c->error->code ? c->error->code : SL_EIO, st, "%s",
                         c->error && c->error->message ? c->error->message : "worker error");
                protobuf_c_message_free_unpacked(pm, NULL);
                if (st >= 500) {
                    failed = true; /* try elsewhere */
                } else {
                    rc = res->code;
                    done = true;
                }
                break;
            }
            if (c->n_token_ids > 0) {
                if (n_out + c->n_token_ids > cap_out) {
                    size_t nc = (n_out + c->n_token_ids) * 2;
                    uint32_t *ni = realloc(out_ids, nc * sizeof *ni);
                    if (!ni) {
                        protobuf_c_message_free_unpacked(pm, NULL);
                        res_fail(res, SL_ENOMEM, 500, "%s", "out of memory");
                        rc = SL_ENOMEM;
                        gen_cancel(g, w.id, req->request_id);
                        done = true;
                        break;
                    }
                    out_ids = ni;
                    cap_out = nc;
                }
                memcpy(out_ids + n_out, c->token_ids, c->n_token_ids * sizeof *out_ids);
                n_out += c->n_token_ids;
            }
            if (last) {
                res->finish = (int)c->finish_reason;
                res->prompt_tokens = c->prompt_tokens;
                res->cached_tokens = c->cached_tokens;
            }
            int stop = (c->n_token_ids > 0 || (c->text && c->text[0])) ? fn(ud, c) : 0;
            protobuf_c_message_free_unpacked(pm, NULL);
            if (stop) {
                gen_cancel(g, w.id, req->request_id);
                res->finish = SLUICE__V1__FINISH_REASON__FINISH_REASON_CANCELLED;
                rc = 0;
                done = true;
                break;
            }
            if (last) {
                rc = 0;
                done = true;
                break;
            }
        }
        if (failed) {
            gen_cancel(g, w.id, req->request_id); /* in case it is merely slow */
            if (budget && n_out >= budget) {
                res->finish =
                    SLUICE__V1__FINISH_REASON__FINISH_REASON_LENGTH; /* all was delivered */
                res->code = 0;
                res->http_status = 0;
                rc = 0;
                done = true;
            }
        }
        res->last_worker = w.id;
        bus_stream_free(s);
    }
    res->completion_tokens = (uint32_t)n_out;
    if (!res->prompt_tokens) res->prompt_tokens = (uint32_t)req->n_token_ids;
    free(out_ids);
    return rc;
}
