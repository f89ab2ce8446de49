/* generate_client.c - retries and migration of one generation (see
 * generate_client.h). */
#include "services/frontend/generate_client.h"

#include "common/base/err.h"
#include "common/base/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GEN_MAX_EXCLUDE  32
#define GEN_ROUTE_ID_MAX 128 /* the router refuses longer ids */

/* One attempt's stream, linked into the client while it runs so that a
 * worker's departure can cancel it from discovery's thread. */
typedef struct gen_attempt {
    int64_t worker;
    bus_stream_t *s;
    bool gone; /* the worker left discovery (under gen_client.mu) */
    struct gen_attempt *next;
} gen_attempt_t;

struct gen_client {
    bus_t *bus;
    worker_pool_t *pool;
    const sl_tokenizer_t *tok;
    char ns[128];
    int stream_timeout_ms, gone_grace_ms, max_attempts;
    metrics_counter_t *retries, *migrations;
    char router_mode[32];
    int router_timeout_ms;
    char route_subject[BUS_SUBJECT_MAX];
    char active_subject[BUS_SUBJECT_MAX];
    metrics_counter_t *routed, *route_fallbacks, *overlap_blocks, *prompt_blocks;
    pthread_mutex_t mu;
    gen_attempt_t *live; /* attempts streaming now */
};

/* Departure listener (discovery's thread, pool lock held). A worker whose
 * lease is gone either died (kill -9, lease expired) or is draining after
 * SIGTERM (it revoked the lease and finishes what it has): its streams get
 * the short --gone-grace instead of --stream-timeout, so a dead worker's
 * streams migrate at once while a draining one's keep flowing to the end. */
static void gen_on_gone(int64_t id, void *ud) {
    gen_client_t *g = ud;
    pthread_mutex_lock(&g->mu);
    for (gen_attempt_t *a = g->live; a; a = a->next) {
        if (a->worker != id || a->gone) continue;
        a->gone = true;
        bus_stream_set_idle_timeout(a->s, g->gone_grace_ms);
    }
    pthread_mutex_unlock(&g->mu);
}

int gen_client_new(bus_t *bus, worker_pool_t *pool, const gen_client_opts_t *opts,
                   gen_client_t **out) {
    if (!bus || !pool || !opts || !opts->ns || !out) return SL_EINVAL;
    gen_client_t *g = calloc(1, sizeof *g);
    if (!g) return SL_ENOMEM;
    g->bus = bus;
    g->pool = pool;
    g->tok = opts->tok;
    snprintf(g->ns, sizeof g->ns, "%s", opts->ns);
    g->stream_timeout_ms = opts->stream_timeout_ms > 0 ? opts->stream_timeout_ms : 30000;
    g->gone_grace_ms = opts->gone_grace_ms > 0 ? opts->gone_grace_ms : 2000;
    if (g->gone_grace_ms > g->stream_timeout_ms) g->gone_grace_ms = g->stream_timeout_ms;
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
                                 "route") ||
            bus_subject_endpoint(g->active_subject, sizeof g->active_subject, g->ns, "router",
                                 "active")) {
            free(g);
            return SL_EINVAL;
        }
    }
    pthread_mutex_init(&g->mu, NULL);
    worker_pool_on_gone(pool, gen_on_gone, g);
    *out = g;
    return 0;
}

void gen_client_free(gen_client_t *g) {
    if (!g) return;
    worker_pool_on_gone(g->pool, NULL, NULL); /* waits out a running listener */
    pthread_mutex_destroy(&g->mu);
    free(g);
}

static void count(metrics_counter_t *c, uint64_t n) {
    if (c) metrics_counter_add(c, n);
}

/* ---- router ---------------------------------------------------------------------- */

/* What the router was told about one attempt. */
typedef struct gen_routed {
    bool told;    /* the router may track it (answered, or timed out) */
    bool used;    /* the attempt runs on the router's pick */
    bool prefill; /* PREFILL_DONE sent */
    char id[GEN_ROUTE_ID_MAX + 1];
    uint64_t router_id, worker;
    uint64_t prefill_worker; /* the router's prefill worker for the attempt, 0 = none */
} gen_routed_t;

/* Asks a router for a worker under rt->id. Returns 0 and *out when it
 * answered with a worker the pool knows; else nonzero (the caller falls
 * back). rt->told says whether the router may be tracking the id. */
static int gen_route(gen_client_t *g, const Sluice__V1__GenerateRequest *req,
                     const int64_t *exclude, size_t n_exclude, gen_routed_t *rt,
                     worker_pool_entry_t *out) {
    uint64_t ex[GEN_MAX_EXCLUDE];
    for (size_t i = 0; i < n_exclude; i++) ex[i] = (uint64_t)exclude[i];
    Sluice__V1__RouteRequest rr = SLUICE__V1__ROUTE_REQUEST__INIT;
    rr.version = 1;
    rr.request_id = rt->id;
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
    if (rc) {
        rt->told = rc == SL_ETIMEDOUT; /* a late answer still adds it there */
        return rc;
    }
    Sluice__V1__RouteResponse *resp = (Sluice__V1__RouteResponse *)pm;
    if (resp->error && resp->error->code) {
        rc = SL_EUNAVAIL;
    } else {
        rt->told = true;
        rt->router_id = resp->router_id;
        rt->worker = resp->worker_id;
        rt->prefill_worker = resp->prefill_worker_id;
        rc = worker_pool_get(g->pool, (int64_t)resp->worker_id, req->model, out);
    }
    if (rc == 0) {
        rt->used = true;
        count(g->overlap_blocks, resp->overlap_blocks);
        count(g->prompt_blocks, resp->total_blocks);
    }
    protobuf_c_message_free_unpacked(pm, NULL);
    return rc;
}

/* Publishes an ActiveSeqEvent of kind about an attempt the router placed. */
static void gen_active(gen_client_t *g, const gen_routed_t *rt, int kind) {
    Sluice__V1__ActiveSeqEvent e = SLUICE__V1__ACTIVE_SEQ_EVENT__INIT;
    e.version = 1;
    e.router_id = rt->router_id;
    e.request_id = (char *)rt->id;
    e.worker_id = rt->worker;
    e.kind = kind;
    if (bus_publish_proto(g->bus, g->active_subject, &e.base))
        RLOG_DEBUG(rt->id, "active-sequence event not sent: %s", bus_last_error());
}

/* Ends an attempt as far as the router is concerned (FREE once). */
static void gen_route_end(gen_client_t *g, gen_routed_t *rt) {
    if (rt->told) gen_active(g, rt, SLUICE__V1__ACTIVE_SEQ_EVENT__KIND__KIND_FREE);
    rt->told = rt->used = false;
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

/* ---- text and stop strings across migrations ------------------------------------- */

/* A growable byte string. */
typedef struct gen_buf {
    char *p; /* (n, cap), NUL-terminated when p != NULL */
    size_t n, cap;
} gen_buf_t;

static int buf_put(gen_buf_t *b, const char *s, size_t n) {
    if (n > SIZE_MAX / 2 - b->n - 1) return SL_ENOMEM;
    if (b->n + n + 1 > b->cap) {
        size_t nc = (b->n + n + 1) * 2;
        char *np = realloc(b->p, nc);
        if (!np) return SL_ENOMEM;
        b->p = np;
        b->cap = nc;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

/* The frontend's own stop matching, switched on at the first migration of a
 * request with stop strings. sent: text handed to the callback so far;
 * carry: text held back (it may begin a stop string). */
typedef struct gen_text {
    bool on;
    gen_buf_t sent, carry, scratch;
} gen_text_t;

static void text_free(gen_text_t *t) {
    free(t->sent.p);
    free(t->carry.p);
    free(t->scratch.p);
}

/* Recovers, at a migration, the text of out_ids the client has not seen:
 * decode(prompt + out) minus decode(prompt) minus what was sent. The dead
 * worker held it back as a possible stop-string start; the new worker,
 * primed with it as prompt, never sends it. A trailing incomplete character
 * (decoded as U+FFFD) is left out: the new worker completes it. */
static void text_recover(gen_client_t *g, const Sluice__V1__GenerateRequest *req,
                         const uint32_t *out_ids, size_t n_out, gen_text_t *t) {
    uint32_t *all = NULL;
    char *dp = NULL, *da = NULL;
    size_t lp = 0, la = 0;
    t->on = true;
    if (!g->tok || n_out > SIZE_MAX / sizeof *all - req->n_token_ids) goto out;
    all = malloc((req->n_token_ids + n_out) * sizeof *all);
    if (!all) goto out;
    memcpy(all, req->token_ids, req->n_token_ids * sizeof *all);
    memcpy(all + req->n_token_ids, out_ids, n_out * sizeof *all);
    if (sl_tokenizer_decode(g->tok, req->token_ids, req->n_token_ids, true, &dp, &lp) ||
        sl_tokenizer_decode(g->tok, all, req->n_token_ids + n_out, true, &da, &la))
        goto out;
    if (la < lp || memcmp(da, dp, lp) != 0) goto out; /* prompt ends mid-character */
    const char *gen = da + lp;
    size_t lg = la - lp;
    if (lg < t->sent.n || memcmp(gen, t->sent.p, t->sent.n) != 0) {
        RLOG_DEBUG(req->request_id, "migration: sent text is not a prefix of the decoded output");
        goto out;
    }
    const char *h = gen + t->sent.n;
    size_t lh = lg - t->sent.n;
    while (lh >= 3 && memcmp(h + lh - 3, "\xEF\xBF\xBD", 3) == 0) lh -= 3;
    t->carry.n = 0;
    if (buf_put(&t->carry, h, lh)) t->carry.n = 0;
out:
    free(all);
    free(dp);
    free(da);
}

/* Runs text s (one chunk's) through the matcher. Sets *emit / *n_emit to the
 * text that may go out now (points into t->scratch) and returns true when a
 * stop string matched (the stream ends after *emit). last: no more text will
 * come, so nothing is held back. */
static bool text_match(gen_text_t *t, const Sluice__V1__StopConditions *sc, const char *s,
                       bool last, const char **emit, size_t *n_emit) {
    gen_buf_t *b = &t->scratch;
    b->n = 0;
    if (buf_put(b, t->carry.p ? t->carry.p : "", t->carry.n) || buf_put(b, s, strlen(s))) {
        *emit = s; /* out of memory: pass through unmatched */
        *n_emit = strlen(s);
        t->carry.n = 0;
        return false;
    }
    t->carry.n = 0;
    size_t at = b->n;
    for (size_t i = 0; i < sc->n_stop; i++) {
        size_t ls = strlen(sc->stop[i]);
        const char *m = ls ? memmem(b->p, b->n, sc->stop[i], ls) : NULL;
        if (m && (size_t)(m - b->p) < at) at = (size_t)(m - b->p);
    }
    *emit = b->p;
    if (at < b->n) {
        *n_emit = at;
        return true;
    }
    size_t hold = 0; /* longest suffix that is a proper prefix of a stop string */
    for (size_t i = 0; !last && i < sc->n_stop; i++) {
        size_t ls = strlen(sc->stop[i]);
        for (size_t k = ls - 1 < b->n ? ls - 1 : b->n; k > hold; k--) {
            if (memcmp(b->p + b->n - k, sc->stop[i], k) == 0) {
                hold = k;
                break;
            }
        }
    }
    if (hold && buf_put(&t->carry, b->p + b->n - hold, hold)) hold = 0;
    *n_emit = b->n - hold;
    return false;
}

/* ---- the run ----------------------------------------------------------------------- */

int gen_client_run(gen_client_t *g, const Sluice__V1__GenerateRequest *req, gen_chunk_fn fn,
                   void *ud, gen_result_t *res) {
    int64_t exclude[GEN_MAX_EXCLUDE];
    size_t n_exclude = 0;
    uint32_t *out_ids = NULL; /* (n_out, cap_out) tokens delivered to the callback */
    size_t n_out = 0, cap_out = 0;
    uint32_t budget = req->stop ? req->stop->max_tokens : 0;
    bool stops = req->stop && req->stop->n_stop > 0;
    gen_text_t text = {0};
    bool done = false;
    int rc = 0;
    memset(res, 0, sizeof *res);
    res->finish = SLUICE__V1__FINISH_REASON__FINISH_REASON_NONE;

    while (!done) {
        worker_pool_entry_t w;
        gen_routed_t rt = {0};
        if (res->attempts >= g->max_attempts) {
            char why[512];
            snprintf(why, sizeof why, "%s", res->message[0] ? res->message : "gave up");
            res_fail(res, SL_EUNAVAIL, 503, "worker failed after retries: %s", why);
            rc = SL_EUNAVAIL;
            break;
        }
        rc = SL_ENOTFOUND;
        if (g->router_mode[0]) {
            const char *rid = req->request_id ? req->request_id : "";
            if (res->attempts == 0)
                snprintf(rt.id, sizeof rt.id, "%s", rid);
            else
                snprintf(rt.id, sizeof rt.id, "%.*s.%d", GEN_ROUTE_ID_MAX - 4, rid, res->attempts);
            rc = gen_route(g, req, exclude, n_exclude, &rt, &w);
            count(rc ? g->route_fallbacks : g->routed, 1);
            if (rc) gen_route_end(g, &rt); /* not its pick: the router must not count it */
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
                if (stops) text_recover(g, req, out_ids, n_out, &text);
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
        /* The router's prefill worker, asked again on every attempt (a retry
         * or migration routes anew); none when the pool picked. */
        m.prefill_worker_id = rt.used ? rt.prefill_worker : 0;
        bus_stream_opts_t so = {.idle_timeout_ms = g->stream_timeout_ms};
        bus_stream_t *s = NULL;
        rc = bus_stream_open_proto(g->bus, w.subject, &m.base, &so, &s);
        if (rc == SL_ETOOBIG) {
            res_fail(res, rc, 413, "request too large for the message bus (%s); shorten the prompt",
                     bus_last_error());
            gen_route_end(g, &rt);
            break;
        }
        if (rc) {
            res_fail(res, rc, 503, "%s", bus_last_error());
            gen_route_end(g, &rt);
            continue;
        }
        /* Listen for the worker's departure, then make sure it had not left
         * already (between the pick and now). */
        gen_attempt_t at = {.worker = w.id, .s = s};
        worker_pool_entry_t still;
        pthread_mutex_lock(&g->mu);
        at.next = g->live;
        g->live = &at;
        pthread_mutex_unlock(&g->mu);
        if (worker_pool_get(g->pool, w.id, req->model, &still) == SL_ENOTFOUND)
            gen_on_gone(w.id, g);

        bool failed = false, first = true;
        for (;;) {
            ProtobufCMessage *pm = NULL;
            bool last = false;
            rc = bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor, &pm, &last);
            if (rc) {
                /* the worker died, went silent, left discovery, or nobody listens */
                pthread_mutex_lock(&g->mu);
                bool gone = at.gone;
                pthread_mutex_unlock(&g->mu);
                if (gone)
                    res_fail(res, rc, 503,
                             "worker %016llx left (its lease is gone) and went silent: %s",
                             (unsigned long long)w.id, bus_stream_error(s));
                else
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
                if (first && rt.used) {
                    gen_active(g, &rt, SLUICE__V1__ACTIVE_SEQ_EVENT__KIND__KIND_PREFILL_DONE);
                    rt.prefill = true;
                }
                first = false;
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
                res->remote_prefill = c->remote_prefill;
                res->kv_transfer_bytes = c->kv_transfer_bytes;
                res->kv_transfer_us = c->kv_transfer_us;
            }
            /* After a migration the frontend matches stop strings over the
             * text before the migration point too. */
            Sluice__V1__GenerateChunk view = *c;
            bool hit = false;
            if (text.on) {
                const char *e = NULL;
                size_t ne = 0;
                hit = text_match(&text, req->stop, c->text ? c->text : "", last, &e, &ne);
                if (e == text.scratch.p) text.scratch.p[ne] = 0; /* else e is c->text */
                view.text = (char *)e;
            }
            const char *vt = view.text ? view.text : "";
            if (stops && buf_put(&text.sent, vt, strlen(vt))) text.sent.n = 0;
            int stop = (view.n_token_ids > 0 || vt[0]) ? fn(ud, &view) : 0;
            protobuf_c_message_free_unpacked(pm, NULL);
            if (hit && !stop) {
                gen_cancel(g, w.id, req->request_id);
                res->finish = SLUICE__V1__FINISH_REASON__FINISH_REASON_STOP;
                rc = 0;
                done = true;
                break;
            }
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
        pthread_mutex_lock(&g->mu);
        for (gen_attempt_t **pp = &g->live; *pp; pp = &(*pp)->next) {
            if (*pp == &at) {
                *pp = at.next;
                break;
            }
        }
        pthread_mutex_unlock(&g->mu);
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
        gen_route_end(g, &rt);
        res->last_worker = w.id;
        bus_stream_free(s);
    }
    /* text still held back when the budget ran out with the dead worker */
    if (text.on && text.carry.n && rc == 0 &&
        res->finish == SLUICE__V1__FINISH_REASON__FINISH_REASON_LENGTH) {
        Sluice__V1__GenerateChunk tail = SLUICE__V1__GENERATE_CHUNK__INIT;
        tail.text = text.carry.p;
        fn(ud, &tail);
    }
    res->completion_tokens = (uint32_t)n_out;
    if (!res->prompt_tokens) res->prompt_tokens = (uint32_t)req->n_token_ids;
    text_free(&text);
    free(out_ids);
    return rc;
}
