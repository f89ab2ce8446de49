/* nats_driver.c - loadgen's direct-to-worker mode (see nats_driver.h).
 *
 * One thread per concurrent request (a bus stream blocks its reader), a
 * worker list kept current by a discovery watch, and one lock around the
 * shared results. The main thread waits, draws the progress bar and, on
 * nats_driver_stop(), cancels the streams in flight.
 */
#include "bench/loadgen/nats_driver.h"

#include "common/base/clock.h"
#include "common/base/err.h"
#include "common/engine/chat_template.h"
#include "common/engine/tokenizer.h"
#include "common/runtime/bus.h"
#include "common/runtime/discovery.h"
#include "proto/sluice.pb-c.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ND_MAX_WORKERS 1024
#define ND_STACK       (256u << 10)
#define ND_TICK_US     50000

static volatile sig_atomic_t nd_stop_flag;

void nats_driver_stop(void) {
    nd_stop_flag = 1;
}

typedef struct nd_worker {
    int64_t id;
    char subject[BUS_SUBJECT_MAX];
} nd_worker_t;

typedef struct nd nd_t;

/* One request thread. */
typedef struct nd_thread {
    nd_t *d;
    pthread_t tid;
    bool started;
    pthread_mutex_t mu; /* guards s and cancelled against the main thread */
    bus_stream_t *s;    /* stream in flight, or NULL */
    bool cancelled;
    driver_gaps_t itl; /* this request's gaps */
} nd_thread_t;

struct nd {
    const nats_driver_cfg_t *cfg;
    const workload_t *w;
    driver_results_t *res;
    bus_t *bus;
    discovery_t *disc;
    discovery_watch_t *watch;
    sl_tokenizer_t *tok;
    chat_template_t *tmpl;
    char ns[128];

    pthread_mutex_t wmu; /* guards workers */
    nd_worker_t *workers;
    size_t nworkers;
    atomic_uint_fast64_t rr;

    pthread_mutex_t rmu; /* guards res, t_last_done */
    bool measured;       /* phase */
    uint64_t total;      /* requests of the phase (0 = until deadline) */
    int64_t deadline;    /* ns, INT64_MAX = none */
    atomic_uint_fast64_t next;
    atomic_uint_fast64_t finished;
    int64_t t0, t_last_done;
    int64_t next_progress;
    atomic_int fatal; /* an internal error (ENOMEM) ends the run */
};

/* Sets err to msg followed by arg (may be NULL) and returns rc. */
static int nd_fail(char *err, size_t errlen, int rc, const char *msg, const char *arg) {
    if (err && errlen) snprintf(err, errlen, "%s%s", msg, arg ? arg : "");
    return rc;
}

/* ---- workers (discovery) ------------------------------------------------------------------- */

/* Model name of a registration record, into buf ("" if none). */
static void nd_record_model(const char *json, char *buf, size_t len) {
    buf[0] = 0;
    cJSON *j = json ? cJSON_Parse(json) : NULL;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "model");
    if (cJSON_IsString(m)) snprintf(buf, len, "%s", m->valuestring);
    cJSON_Delete(j);
}

static void nd_on_add(const discovery_instance_t *inst, void *ud) {
    nd_t *d = ud;
    char model[256];
    if (strcmp(inst->endpoint, "generate") != 0) return;
    nd_record_model(inst->json, model, sizeof model);
    if (strcmp(model, d->cfg->model) != 0) return; /* another model: the frontend skips it too */
    pthread_mutex_lock(&d->wmu);
    size_t i;
    for (i = 0; i < d->nworkers; i++)
        if (d->workers[i].id == inst->instance_id) break;
    if (i == d->nworkers && d->nworkers < ND_MAX_WORKERS) d->nworkers++;
    if (i < d->nworkers) {
        d->workers[i].id = inst->instance_id;
        snprintf(d->workers[i].subject, sizeof d->workers[i].subject, "%s", inst->subject);
    }
    pthread_mutex_unlock(&d->wmu);
}

static void nd_on_remove(const discovery_instance_t *inst, void *ud) {
    nd_t *d = ud;
    pthread_mutex_lock(&d->wmu);
    for (size_t i = 0; i < d->nworkers; i++) {
        if (d->workers[i].id == inst->instance_id) {
            d->workers[i] = d->workers[--d->nworkers];
            break;
        }
    }
    pthread_mutex_unlock(&d->wmu);
}

/* Next worker round-robin. Returns false when none is known. */
static bool nd_pick(nd_t *d, nd_worker_t *out) {
    bool ok = false;
    pthread_mutex_lock(&d->wmu);
    if (d->nworkers) {
        *out = d->workers[atomic_fetch_add(&d->rr, 1) % d->nworkers];
        ok = true;
    }
    pthread_mutex_unlock(&d->wmu);
    return ok;
}

/* ---- one request --------------------------------------------------------------------------- */

typedef struct nd_outcome {
    const char *kind; /* NULL = ok */
    char kind_buf[32];
    char msg[200];
    int64_t t_start, t_first, t_last, t_end;
    uint64_t content_events;
    uint32_t prompt_tokens, completion_tokens;
    bool cancelled;
} nd_outcome_t;

static void nd_out_fail(nd_outcome_t *o, const char *kind, const char *msg) {
    if (o->kind) return;
    snprintf(o->kind_buf, sizeof o->kind_buf, "%s", kind);
    o->kind = o->kind_buf;
    size_t j = 0;
    for (const char *p = msg ? msg : ""; *p && j + 1 < sizeof o->msg; p++)
        o->msg[j++] = ((unsigned char)*p < 0x20) ? ' ' : *p;
    o->msg[j] = 0;
}

static float nd_num(const cJSON *root, const char *key, float def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) ? (float)v->valuedouble : def;
}

/* Renders and tokenizes req's prompt as the frontend does. */
static int nd_prompt_ids(nd_t *d, const workload_req_t *req, uint32_t **ids, size_t *n,
                         nd_outcome_t *o) {
    int rc = 0;
    char *text = NULL, *et = NULL;
    cJSON *chat = NULL;
    if (!d->cfg->chat)
        return sl_tokenizer_encode(d->tok, req->prompt, strlen(req->prompt), true, ids, n);
    rc = SL_ENOMEM;
    chat = cJSON_CreateObject();
    if (!chat || workload_chat_messages_add(chat, req->prompt) ||
        !cJSON_AddTrueToObject(chat, "add_generation_prompt"))
        goto out;
    rc = chat_template_render(d->tmpl, chat, NULL, NULL, &text, NULL, &et);
    if (rc) {
        nd_out_fail(o, "template", et ? et : sl_strerror(rc));
        goto out;
    }
    rc = sl_tokenizer_encode(d->tok, text, strlen(text), false, ids, n);
out:
    free(text);
    free(et);
    cJSON_Delete(chat);
    return rc;
}

static void nd_cancel_remote(nd_t *d, const nd_worker_t *wk, const char *rid) {
    char subj[BUS_SUBJECT_MAX];
    Sluice__V1__CancelRequest c = SLUICE__V1__CANCEL_REQUEST__INIT;
    c.version = 1;
    c.request_id = (char *)rid;
    if (!bus_subject_instance(subj, sizeof subj, d->ns, "backend", "cancel", (uint64_t)wk->id))
        bus_publish_proto(d->bus, subj, &c.base);
}

/* Sends request index and reads its stream to the end; fills *o. */
static void nd_request(nd_thread_t *t, uint64_t index, bool measured, nd_outcome_t *o) {
    nd_t *d = t->d;
    workload_req_t req = {0};
    uint32_t *ids = NULL;
    size_t n_ids = 0;
    cJSON *body = NULL;
    bus_stream_t *s = NULL;
    nd_worker_t wk;
    char rid[64];
    memset(o, 0, sizeof *o);
    t->itl.n = 0;
    int rc = workload_request_build(d->w, index, &req);
    if (rc) {
        nd_out_fail(o, "client_nomem", sl_strerror(rc));
        goto out;
    }
    rc = nd_prompt_ids(d, &req, &ids, &n_ids, o);
    if (rc) {
        nd_out_fail(o, "tokenize", sl_strerror(rc));
        goto out;
    }
    body = cJSON_Parse(req.body); /* sampling and stop fields, as the frontend reads them */
    if (!body) {
        nd_out_fail(o, "client_nomem", "body");
        goto out;
    }
    Sluice__V1__SamplingParams sp = SLUICE__V1__SAMPLING_PARAMS__INIT;
    sp.temperature = nd_num(body, "temperature", 1.0f);
    sp.top_p = nd_num(body, "top_p", 1.0f);
    sp.top_k = (int32_t)nd_num(body, "top_k", 0);
    sp.min_p = nd_num(body, "min_p", 0);
    sp.presence_penalty = nd_num(body, "presence_penalty", 0);
    sp.frequency_penalty = nd_num(body, "frequency_penalty", 0);
    sp.repetition_penalty = nd_num(body, "repetition_penalty", 0);
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(body, "seed");
    if (cJSON_IsNumber(seed) && seed->valuedouble >= 0) {
        sp.has_seed = true;
        sp.seed = (uint64_t)seed->valuedouble;
    }
    Sluice__V1__StopConditions sc = SLUICE__V1__STOP_CONDITIONS__INIT;
    sc.max_tokens = req.max_tokens;
    sc.min_tokens = (uint32_t)nd_num(body, "min_tokens", 0);
    sc.ignore_eos = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "ignore_eos"));
    snprintf(rid, sizeof rid, "lg-%d-%s%" PRIu64, (int)getpid(), measured ? "" : "w", index);
    Sluice__V1__GenerateRequest m = SLUICE__V1__GENERATE_REQUEST__INIT;
    m.version = 1;
    m.request_id = rid;
    m.model = (char *)d->cfg->model;
    m.token_ids = ids;
    m.n_token_ids = n_ids;
    m.sampling = &sp;
    m.stop = &sc;
    if (!nd_pick(d, &wk)) {
        nd_out_fail(o, "no_worker", "no worker serves the model");
        goto out;
    }
    int64_t limit_ns = (int64_t)(d->cfg->timeout_s * 1e9);
    bus_stream_opts_t so = {.idle_timeout_ms = (int)(d->cfg->timeout_s * 1000)};
    o->t_start = sl_mono_ns();
    rc = bus_stream_open_proto(d->bus, wk.subject, &m.base, &so, &s);
    if (rc) {
        nd_out_fail(o, rc == SL_ETOOBIG ? "too_big" : "no_responders", bus_last_error());
        goto out;
    }
    pthread_mutex_lock(&t->mu);
    t->s = s;
    bool cancelled = t->cancelled;
    pthread_mutex_unlock(&t->mu);
    if (cancelled) bus_stream_cancel(s);
    for (;;) {
        ProtobufCMessage *pm = NULL;
        bool last = false;
        rc = bus_stream_recv_proto(s, &sluice__v1__generate_chunk__descriptor, &pm, &last);
        int64_t now = sl_mono_ns();
        if (rc) {
            const char *k = rc == SL_ETIMEDOUT  ? "stream_timeout"
                            : rc == SL_ECLOSED  ? "stream_closed"
                            : rc == SL_EPROTO   ? "stream_proto"
                            : rc == SL_EUNAVAIL ? "no_responders"
                                                : "stream_error";
            if (rc == SL_ECANCELLED) {
                o->cancelled = true;
                nd_cancel_remote(d, &wk, rid);
            }
            nd_out_fail(o, k, bus_stream_error(s));
            break;
        }
        Sluice__V1__GenerateChunk *c = (Sluice__V1__GenerateChunk *)pm;
        if (c->finish_reason == SLUICE__V1__FINISH_REASON__FINISH_REASON_ERROR) {
            char k[32];
            snprintf(k, sizeof k, "worker_%u", c->error ? c->error->http_status : 500u);
            nd_out_fail(o, k, c->error && c->error->message ? c->error->message : "error");
            protobuf_c_message_free_unpacked(pm, NULL);
            break;
        }
        if (c->text && c->text[0]) {
            if (!o->t_first)
                o->t_first = now;
            else if (driver_gaps_push(&t->itl, (double)(now - o->t_last) / 1e6, 1))
                nd_out_fail(o, "client_nomem", "itl");
            o->t_last = now;
            o->content_events++;
        }
        if (last) {
            o->prompt_tokens = c->prompt_tokens;
            o->completion_tokens = c->completion_tokens;
        }
        protobuf_c_message_free_unpacked(pm, NULL);
        if (last) break;
        if (now - o->t_start > limit_ns) {
            nd_cancel_remote(d, &wk, rid);
            nd_out_fail(o, "timeout", "request took longer than --timeout");
            break;
        }
    }
    o->t_end = sl_mono_ns();
    if (!o->kind && !o->content_events) nd_out_fail(o, "no_content", "stream had no text");
out:
    if (s) {
        pthread_mutex_lock(&t->mu);
        t->s = NULL;
        pthread_mutex_unlock(&t->mu);
        bus_stream_free(s);
    }
    if (!o->t_end) o->t_end = sl_mono_ns();
    cJSON_Delete(body);
    free(ids);
    workload_req_release(&req);
}

/* Adds one finished measured request to the results (under rmu). */
static void nd_record(nd_t *d, nd_thread_t *t, uint64_t index, const nd_outcome_t *o) {
    driver_results_t *r = d->res;
    if (o->cancelled) {
        r->cancelled++;
        return;
    }
    d->t_last_done = o->t_end;
    if (o->kind) {
        size_t i;
        for (i = 0; i < r->nkinds; i++)
            if (!strcmp(r->kinds[i].kind, o->kind)) break;
        if (i == r->nkinds) {
            if (r->nkinds == DRIVER_MAX_KINDS) {
                i = DRIVER_MAX_KINDS - 1;
                snprintf(r->kinds[i].kind, sizeof r->kinds[i].kind, "other");
            } else {
                r->nkinds++;
                snprintf(r->kinds[i].kind, sizeof r->kinds[i].kind, "%s", o->kind);
                snprintf(r->kinds[i].example, sizeof r->kinds[i].example, "%s", o->msg);
            }
        }
        r->kinds[i].count++;
        r->failed++;
        driver_results_request(r, index, NAN);
        return;
    }
    r->ok++;
    double ttft = (double)(o->t_first - o->t_start) / 1e6;
    stats_samples_add(r->e2e_ms, (double)(o->t_end - o->t_start) / 1e6);
    stats_samples_add(r->output_tokens, o->completion_tokens);
    stats_samples_add(r->input_tokens, o->prompt_tokens);
    r->sum_output_tokens += o->completion_tokens;
    r->sum_input_tokens += o->prompt_tokens;
    if (driver_results_request(r, index, d->cfg->stream ? ttft : NAN) == SL_ENOMEM)
        atomic_store(&d->fatal, SL_ENOMEM);
    if (!d->cfg->stream) return;
    stats_samples_add(r->ttft_ms, ttft);
    if (o->completion_tokens > 1)
        stats_samples_add(r->tpot_ms, (double)(o->t_end - o->t_first) / 1e6 /
                                          (double)(o->completion_tokens - 1));
    driver_gaps_commit(&t->itl, r->itl_ms);
}

static void *nd_thread_main(void *arg) {
    nd_thread_t *t = arg;
    nd_t *d = t->d;
    for (;;) {
        if (nd_stop_flag || atomic_load(&d->fatal)) break;
        uint64_t index = atomic_fetch_add(&d->next, 1);
        if (d->total && index >= d->total) break;
        if (sl_mono_ns() >= d->deadline) break;
        nd_outcome_t o;
        nd_request(t, d->measured ? index : (1ull << 61) + index, d->measured, &o);
        if (o.kind && !strcmp(o.kind, "client_nomem")) atomic_store(&d->fatal, SL_ENOMEM);
        pthread_mutex_lock(&d->rmu);
        if (d->measured) {
            d->res->sent++;
            nd_record(d, t, index, &o);
        }
        pthread_mutex_unlock(&d->rmu);
        atomic_fetch_add(&d->finished, 1);
    }
    return NULL;
}

/* ---- phases -------------------------------------------------------------------------------- */

static void nd_progress(nd_t *d, bool final) {
    const nats_driver_cfg_t *c = d->cfg;
    int64_t now = sl_mono_ns();
    if (!c->progress || (!final && now < d->next_progress)) return;
    d->next_progress = now + 250000000LL;
    uint64_t done = atomic_load(&d->finished);
    double frac = d->total ? (double)done / (double)d->total
                           : (double)(now - d->t0) / 1e9 / (c->duration_s > 0 ? c->duration_s : 1);
    if (frac > 1) frac = 1;
    char bar[31];
    for (int i = 0; i < 30; i++) bar[i] = i < (int)(frac * 30) ? '#' : '.';
    bar[30] = 0;
    fprintf(stderr, "\r[%s] %3.0f%% %s %" PRIu64 " done (nats) ", bar, frac * 100,
            d->measured ? "" : "warmup", done);
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

static int nd_phase(nd_t *d, nd_thread_t *th, long nthreads, bool measured) {
    const nats_driver_cfg_t *c = d->cfg;
    int rc = 0;
    d->measured = measured;
    d->total = measured ? (uint64_t)c->num_requests : (uint64_t)c->warmup;
    if (!measured && !d->total) return 0;
    atomic_store(&d->next, 0);
    atomic_store(&d->finished, 0);
    int64_t start = sl_mono_ns();
    d->deadline =
        measured && c->duration_s > 0 ? start + (int64_t)(c->duration_s * 1e9) : INT64_MAX;
    if (measured) d->t0 = d->t_last_done = start;
    if (!measured && nthreads > (long)d->total) nthreads = (long)d->total;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, ND_STACK);
    long started = 0;
    for (long i = 0; i < nthreads; i++) {
        th[i].itl.n = 0;
        pthread_mutex_lock(&th[i].mu);
        th[i].cancelled = false;
        pthread_mutex_unlock(&th[i].mu);
        if (pthread_create(&th[i].tid, &attr, nd_thread_main, &th[i])) {
            rc = SL_ENOMEM;
            nd_stop_flag = 1;
            break;
        }
        th[i].started = true;
        started++;
    }
    pthread_attr_destroy(&attr);
    bool cancelled = false;
    for (;;) {
        bool running = atomic_load(&d->finished) < d->total || d->total == 0;
        if (nd_stop_flag && !cancelled) {
            for (long i = 0; i < started; i++) {
                pthread_mutex_lock(&th[i].mu);
                th[i].cancelled = true;
                if (th[i].s) bus_stream_cancel(th[i].s);
                pthread_mutex_unlock(&th[i].mu);
            }
            cancelled = true;
        }
        if (!running || nd_stop_flag || atomic_load(&d->fatal)) break;
        if (d->total == 0 && sl_mono_ns() >= d->deadline) break;
        nd_progress(d, false);
        usleep(ND_TICK_US);
    }
    for (long i = 0; i < started; i++) {
        pthread_join(th[i].tid, NULL);
        th[i].started = false;
    }
    nd_progress(d, measured);
    if (!rc) rc = atomic_load(&d->fatal);
    return rc;
}

int nats_driver_run(const nats_driver_cfg_t *cfg, const workload_t *w, driver_results_t *res,
                    char *err, size_t errlen) {
    int rc = 0;
    nd_t d;
    nd_thread_t *th = NULL;
    char *et = NULL;
    memset(&d, 0, sizeof d);
    if (!cfg || !w || !res || !cfg->model || !cfg->model[0])
        return nd_fail(err, errlen, SL_EINVAL, "missing arguments", NULL);
    if (!cfg->model_path || !cfg->model_path[0])
        return nd_fail(err, errlen, SL_EINVAL,
                       "--target nats needs --model-path DIR (tokenizer and chat template)", NULL);
    if (cfg->concurrency < 1 || cfg->concurrency > NATS_DRIVER_MAX_THREADS)
        return nd_fail(err, errlen, SL_EINVAL,
                       "--target nats needs --concurrency in [1, 4096] (closed loop only)", NULL);
    if (cfg->num_requests < 0 || cfg->warmup < 0 || !(cfg->duration_s >= 0))
        return nd_fail(err, errlen, SL_EINVAL,
                       "--num-requests, --warmup and --duration must be >= 0", NULL);
    if (cfg->num_requests == 0 && cfg->duration_s == 0)
        return nd_fail(err, errlen, SL_EINVAL, "give --num-requests N or --duration S", NULL);
    if (!(cfg->timeout_s > 0 && cfg->timeout_s < 2e6))
        return nd_fail(err, errlen, SL_EINVAL, "--timeout must be in (0, 2e6) s", NULL);
    nd_stop_flag = 0;
    pthread_mutex_init(&d.wmu, NULL);
    pthread_mutex_init(&d.rmu, NULL);
    d.cfg = cfg;
    d.w = w;
    d.res = res;
    d.workers = calloc(ND_MAX_WORKERS, sizeof *d.workers);
    th = calloc((size_t)cfg->concurrency, sizeof *th);
    if (!d.workers || !th) {
        rc = SL_ENOMEM;
        goto out;
    }
    for (long i = 0; i < cfg->concurrency; i++) {
        th[i].d = &d;
        pthread_mutex_init(&th[i].mu, NULL);
    }
    rc = sl_tokenizer_load(cfg->model_path, &d.tok);
    if (rc) {
        rc = nd_fail(err, errlen, SL_EINVAL, "--model-path: cannot load the tokenizer of ",
                     cfg->model_path);
        goto out;
    }
    if (cfg->chat) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizer_config.json", cfg->model_path);
        rc = chat_template_load_config_file(path, &d.tmpl, &et);
        if (rc) {
            rc =
                nd_fail(err, errlen, SL_EINVAL, "--model-path: no chat template: ", et ? et : path);
            goto out;
        }
    }
    bus_opts_t bo = {.url = cfg->nats_url, .name = "loadgen"};
    rc = bus_connect(&d.bus, &bo);
    if (rc) {
        rc = nd_fail(err, errlen, rc, "cannot connect to NATS: ", bus_last_error());
        goto out;
    }
    discovery_opts_t dopt = {.etcd_url = cfg->etcd_url, .ns = cfg->ns};
    rc = discovery_open(&dopt, &d.disc);
    if (rc) {
        rc = nd_fail(err, errlen, rc, "bad --namespace or --etcd", NULL);
        goto out;
    }
    snprintf(d.ns, sizeof d.ns, "%s", discovery_namespace(d.disc));
    rc = discovery_watch(d.disc, "backend", nd_on_add, nd_on_remove, &d, &d.watch);
    if (rc) goto out;
    double wait_s = cfg->discover_s > 0 ? cfg->discover_s : 10;
    if (wait_s > cfg->timeout_s) wait_s = cfg->timeout_s;
    int64_t until = sl_mono_ns() + (int64_t)(wait_s * 1e9);
    for (;;) {
        pthread_mutex_lock(&d.wmu);
        size_t n = d.nworkers;
        pthread_mutex_unlock(&d.wmu);
        if (n) break;
        if (sl_mono_ns() >= until || nd_stop_flag) {
            rc = nd_fail(err, errlen, SL_EUNAVAIL, "no worker found in etcd serving model ",
                         cfg->model);
            goto out;
        }
        usleep(20000);
    }
    rc = nd_phase(&d, th, cfg->concurrency, false);
    if (rc) goto out;
    rc = nd_phase(&d, th, cfg->concurrency, true);
    res->duration_s = (double)(d.t_last_done - d.t0) / 1e9;
out:
    if (th) {
        for (long i = 0; i < cfg->concurrency; i++) {
            free(th[i].itl.v);
            pthread_mutex_destroy(&th[i].mu);
        }
    }
    free(th);
    discovery_watch_free(d.watch);
    discovery_close(d.disc);
    bus_free(d.bus);
    chat_template_free(d.tmpl);
    sl_tokenizer_free(d.tok);
    free(et);
    free(d.workers);
    pthread_mutex_destroy(&d.wmu);
    pthread_mutex_destroy(&d.rmu);
    return rc;
}
