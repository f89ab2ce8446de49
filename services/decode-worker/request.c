/* request.c - GenerateRequest validation and GenerateChunk framing (see
 * request.h). */
#include "services/decode-worker/request.h"
#include "common/base/err.h"
#include "common/base/log.h"
#include "common/engine/utf8.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t wreq_http_status(int code) {
    switch (code) {
    case SL_EINVAL:
    case SL_ERANGE:
    case SL_ETOOBIG:
    case SL_EUNSUPPORTED:
    case SL_EPROTO:
        return 400;
    case SL_ENOTFOUND:
        return 404;
    case SL_EEXIST:
        return 409;
    case SL_EUNAVAIL:
    case SL_ENOMEM:
    case SL_EAGAIN:
        return 503;
    case SL_ETIMEDOUT:
        return 504;
    default:
        return 500;
    }
}

static int wreq_fail(char *why, size_t len, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int wreq_fail(char *why, size_t len, int code, const char *fmt, ...) {
    if (why && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, len, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Request ids appear in logs and subjects of other services: printable ASCII
 * without spaces. */
static bool wreq_id_ok(const char *id) {
    size_t n = strlen(id);
    if (n == 0 || n > WREQ_MAX_ID_LEN) return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] <= 0x20 || (unsigned char)id[i] >= 0x7f) return false;
    return true;
}

int wreq_sampling_from_proto(const Sluice__V1__SamplingParams *s, sampling_params_t *out) {
    sampling_params_t sp = {0};
    if (s) {
        sp.temperature = s->temperature;
        sp.top_p = s->top_p;
        sp.top_k = s->top_k;
        sp.min_p = s->min_p;
        sp.presence_penalty = s->presence_penalty;
        sp.frequency_penalty = s->frequency_penalty;
        sp.repetition_penalty = s->repetition_penalty;
        sp.has_seed = s->has_seed;
        sp.seed = s->seed;
        sp.logprobs = s->logprobs > 0 || s->top_logprobs > 0;
        if (s->top_logprobs > SAMPLING_MAX_TOP_LOGPROBS) return SL_ERANGE;
        sp.top_logprobs = s->top_logprobs;
    }
    if (!isfinite(sp.temperature) || !isfinite(sp.top_p) || !isfinite(sp.min_p) ||
        !isfinite(sp.repetition_penalty) || sampling_params_validate(&sp) != 0)
        return SL_EINVAL;
    *out = sp;
    return 0;
}

void wreq_sampling_to_proto(const sampling_params_t *sp, Sluice__V1__SamplingParams *out) {
    sluice__v1__sampling_params__init(out);
    out->temperature = sp->temperature;
    out->top_p = sp->top_p;
    out->top_k = sp->top_k;
    out->min_p = sp->min_p;
    out->presence_penalty = sp->presence_penalty;
    out->frequency_penalty = sp->frequency_penalty;
    out->repetition_penalty = sp->repetition_penalty;
    out->has_seed = sp->has_seed;
    out->seed = sp->seed;
    out->logprobs = sp->logprobs ? 1 : 0;
    out->top_logprobs = sp->top_logprobs;
}

void wreq_free(wreq_t *r) {
    if (!r) return;
    free(r->id);
    free(r->tokens);
    for (uint32_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->stop_ids);
    bus_stream_writer_free(r->w);
    free(r);
}

int wreq_new(const Sluice__V1__GenerateRequest *m, const wreq_limits_t *lim, bus_stream_writer_t *w,
             wreq_t **out, char *why, size_t why_len) {
    int rc = 0;
    wreq_t *r = NULL;
    if (why && why_len) why[0] = 0;
    if (!m || !lim || !w || !out) return wreq_fail(why, why_len, SL_EINVAL, "bad arguments");
    *out = NULL;
    if (!m->request_id || !wreq_id_ok(m->request_id))
        return wreq_fail(why, why_len, SL_EINVAL,
                         "request_id must be 1..%d printable ASCII characters without spaces",
                         WREQ_MAX_ID_LEN);
    if (m->model && m->model[0] && lim->model && strcmp(m->model, lim->model) != 0)
        return wreq_fail(why, why_len, SL_ENOTFOUND,
                         "model '%.*s' is not served here (this is '%s')", WREQ_MAX_MODEL_LEN,
                         m->model, lim->model);
    if (m->lora_name && m->lora_name[0])
        return wreq_fail(why, why_len, SL_EUNSUPPORTED, "LoRA adapters are not supported");
    if (m->n_token_ids == 0) return wreq_fail(why, why_len, SL_EINVAL, "the prompt is empty");
    /* Counts come from the wire: bound them before adding. */
    if (m->n_token_ids >= lim->max_context || m->n_prior_output_ids >= lim->max_context ||
        m->n_token_ids + m->n_prior_output_ids >= lim->max_context)
        return wreq_fail(why, why_len, SL_ERANGE,
                         "the prompt (%zu tokens%s) is longer than the context (%u tokens, one "
                         "kept for output)",
                         m->n_token_ids + m->n_prior_output_ids,
                         m->n_prior_output_ids ? " with migrated output" : "", lim->max_context);
    for (size_t i = 0; i < m->n_token_ids; i++)
        if (m->token_ids[i] >= lim->vocab_size)
            return wreq_fail(why, why_len, SL_EINVAL,
                             "token_ids[%zu] = %u is not below the vocabulary size %u", i,
                             m->token_ids[i], lim->vocab_size);
    for (size_t i = 0; i < m->n_prior_output_ids; i++)
        if (m->prior_output_ids[i] >= lim->vocab_size)
            return wreq_fail(why, why_len, SL_EINVAL,
                             "prior_output_ids[%zu] = %u is not below the vocabulary size %u", i,
                             m->prior_output_ids[i], lim->vocab_size);
    const Sluice__V1__StopConditions *sc = m->stop;
    if (sc && sc->n_stop > WREQ_MAX_STOP)
        return wreq_fail(why, why_len, SL_EINVAL, "more than %d stop strings", WREQ_MAX_STOP);
    if (sc && sc->n_stop_token_ids > WREQ_MAX_STOP_IDS)
        return wreq_fail(why, why_len, SL_EINVAL, "more than %d stop token ids", WREQ_MAX_STOP_IDS);
    for (size_t i = 0; sc && i < sc->n_stop; i++)
        if (!sc->stop[i] || strlen(sc->stop[i]) > WREQ_MAX_STOP_LEN)
            return wreq_fail(why, why_len, SL_EINVAL, "stop string %zu is longer than %d bytes", i,
                             WREQ_MAX_STOP_LEN);
    if (sc && sc->min_tokens && sc->max_tokens && sc->min_tokens > sc->max_tokens)
        return wreq_fail(why, why_len, SL_EINVAL, "min_tokens %u > max_tokens %u", sc->min_tokens,
                         sc->max_tokens);

    sampling_params_t sp;
    rc = wreq_sampling_from_proto(m->sampling, &sp);
    if (rc == SL_ERANGE)
        return wreq_fail(why, why_len, SL_EINVAL, "top_logprobs %u is over %d",
                         m->sampling->top_logprobs, SAMPLING_MAX_TOP_LOGPROBS);
    if (rc)
        return wreq_fail(why, why_len, SL_EINVAL,
                         "bad sampling parameters (temperature >= 0, 0 <= top_p, 0 <= min_p <= 1, "
                         "repetition_penalty >= 0, finite penalties)");

    r = calloc(1, sizeof *r);
    if (!r) goto nomem;
    r->id = strdup(m->request_id);
    r->n_tokens = (uint32_t)(m->n_token_ids + m->n_prior_output_ids);
    r->n_prior = (uint32_t)m->n_prior_output_ids;
    r->tokens = malloc((size_t)r->n_tokens * sizeof *r->tokens);
    if (!r->id || !r->tokens) goto nomem;
    memcpy(r->tokens, m->token_ids, m->n_token_ids * sizeof *r->tokens);
    if (m->n_prior_output_ids)
        memcpy(r->tokens + m->n_token_ids, m->prior_output_ids,
               m->n_prior_output_ids * sizeof *r->tokens);
    r->sampling = sp;
    if (sc) {
        r->max_tokens = sc->max_tokens;
        r->min_tokens = sc->min_tokens;
        r->ignore_eos = sc->ignore_eos;
        if (sc->n_stop) {
            r->stop = calloc(sc->n_stop, sizeof *r->stop);
            if (!r->stop) goto nomem;
            for (size_t i = 0; i < sc->n_stop; i++) {
                if (!sc->stop[i][0]) continue; /* an empty stop string matches nothing */
                if (!(r->stop[r->n_stop] = strdup(sc->stop[i]))) goto nomem;
                r->n_stop++;
            }
        }
        if (sc->n_stop_token_ids) {
            r->stop_ids = malloc(sc->n_stop_token_ids * sizeof *r->stop_ids);
            if (!r->stop_ids) goto nomem;
            memcpy(r->stop_ids, sc->stop_token_ids, sc->n_stop_token_ids * sizeof *r->stop_ids);
            r->n_stop_ids = (uint32_t)sc->n_stop_token_ids;
        }
    }
    r->deadline_unix_ms = m->deadline_unix_ms;
    r->prefill_hint = m->prefill_worker_id;
    r->w = w;
    *out = r;
    r = NULL;
    goto out;
nomem:
    rc = wreq_fail(why, why_len, SL_ENOMEM, "out of memory");
out:
    if (r) {
        r->w = NULL; /* the caller keeps w on failure */
        wreq_free(r);
    }
    return rc;
}

void wreq_engine_request(const wreq_t *r, engine_request_t *out) {
    memset(out, 0, sizeof *out);
    out->id = r->id;
    out->prompt = r->tokens;
    out->n_prompt = r->n_tokens;
    out->n_prior_output = r->n_prior;
    out->sampling = r->sampling;
    out->stop.max_tokens = r->max_tokens;
    out->stop.min_tokens = r->min_tokens;
    out->stop.ignore_eos = r->ignore_eos;
    out->stop.stop_token_ids = r->stop_ids;
    out->stop.n_stop_token_ids = r->n_stop_ids;
    out->stop.stop = (const char *const *)r->stop;
    out->stop.n_stop = r->n_stop;
}

static void wreq_token_text(const sl_tokenizer_t *t, uint32_t id, ProtobufCBinaryData *out) {
    const uint8_t *b = NULL;
    size_t n = 0;
    out->data = NULL;
    out->len = 0;
    if (t && sl_tokenizer_token_bytes(t, id, &b, &n) == 0) {
        out->data = (uint8_t *)b;
        out->len = n;
    }
}

int wreq_send(wreq_t *r, const engine_output_t *o, const sl_tokenizer_t *t, uint64_t worker_id) {
    int rc = 0;
    char *text = NULL;
    Sluice__V1__PositionLogprobs *pl = NULL, **plp = NULL;
    Sluice__V1__TokenLogprob *tl = NULL, **tlp = NULL;
    Sluice__V1__Error err = SLUICE__V1__ERROR__INIT;
    if (!r || !o) return SL_EINVAL;
    if (r->ended) return SL_ECLOSED;
    bool final = o->finish != ENGINE_FINISH_NONE;
    Sluice__V1__GenerateChunk c = SLUICE__V1__GENERATE_CHUNK__INIT;
    c.version = 1;
    c.request_id = r->id;
    c.seq = bus_stream_writer_seq(r->w);
    c.worker_id = worker_id;
    c.n_token_ids = o->n_tokens;
    c.token_ids = (uint32_t *)o->tokens;
    if (o->text_len) {
        if (sl_utf8_valid((const uint8_t *)o->text, o->text_len)) {
            text = malloc(o->text_len + 1);
            if (!text) {
                rc = SL_ENOMEM;
                goto out;
            }
            memcpy(text, o->text, o->text_len);
            text[o->text_len] = 0;
        } else {
            size_t n;
            rc = sl_utf8_sanitize((const uint8_t *)o->text, o->text_len, &text, &n);
            if (rc) goto out;
        }
        c.text = text;
    }
    if (o->logprobs && o->n_tokens) {
        size_t n_top = 0;
        for (uint32_t i = 0; i < o->n_tokens; i++) n_top += o->logprobs[i].n_top;
        pl = calloc(o->n_tokens, sizeof *pl);
        plp = calloc(o->n_tokens, sizeof *plp);
        tl = calloc(o->n_tokens + n_top, sizeof *tl);
        tlp = calloc(n_top ? n_top : 1, sizeof *tlp);
        if (!pl || !plp || !tl || !tlp) {
            rc = SL_ENOMEM;
            goto out;
        }
        size_t k = o->n_tokens; /* tl[0, n_tokens): chosen; then the alternatives */
        for (uint32_t i = 0; i < o->n_tokens; i++) {
            const sampling_result_t *res = &o->logprobs[i];
            sluice__v1__position_logprobs__init(&pl[i]);
            sluice__v1__token_logprob__init(&tl[i]);
            tl[i].token_id = res->token;
            tl[i].logprob = res->logprob;
            wreq_token_text(t, res->token, &tl[i].text);
            pl[i].chosen = &tl[i];
            pl[i].top = &tlp[k - o->n_tokens];
            pl[i].n_top = res->n_top;
            for (uint32_t j = 0; j < res->n_top; j++, k++) {
                sluice__v1__token_logprob__init(&tl[k]);
                tl[k].token_id = res->top[j].token;
                tl[k].logprob = res->top[j].logprob;
                wreq_token_text(t, res->top[j].token, &tl[k].text);
                tlp[k - o->n_tokens] = &tl[k];
            }
            plp[i] = &pl[i];
        }
        c.n_logprobs = o->n_tokens;
        c.logprobs = plp;
    }
    r->completion += o->n_tokens;
    if (final) {
        c.finish_reason = (Sluice__V1__FinishReason)o->finish;
        uint32_t own = r->n_tokens - r->n_prior;
        c.prompt_tokens = own;
        c.cached_tokens = o->cached_tokens < own ? o->cached_tokens : own;
        c.completion_tokens = r->completion;
        c.remote_prefill = o->remote_prefill;
        c.kv_transfer_bytes = o->kv_transfer_bytes;
        c.kv_transfer_us = o->kv_transfer_us;
        if (o->stop_str) c.stop_reason = (char *)o->stop_str;
        if (o->finish == ENGINE_FINISH_ERROR) {
            int code = o->error ? o->error : SL_EIO;
            err.code = code;
            err.message = (char *)(code == SL_ERANGE ? "the prompt is longer than the context"
                                                     : sl_strerror(code));
            err.http_status = wreq_http_status(code);
            c.error = &err;
        }
        rc = bus_stream_writer_end_proto(r->w, &c.base);
        r->ended = true;
    } else {
        rc = bus_stream_writer_send_proto(r->w, &c.base);
    }
    if (rc) r->send_failed = true;
out:
    free(text);
    free(pl);
    free(plp);
    free(tl);
    free(tlp);
    return rc;
}

int wreq_send_error(bus_stream_writer_t *w, const char *request_id, uint64_t worker_id, int code,
                    uint32_t http_status, const char *why) {
    if (!w) return SL_EINVAL;
    Sluice__V1__GenerateChunk c = SLUICE__V1__GENERATE_CHUNK__INIT;
    Sluice__V1__Error err = SLUICE__V1__ERROR__INIT;
    c.version = 1;
    c.request_id = (char *)(request_id ? request_id : "");
    c.seq = bus_stream_writer_seq(w);
    c.worker_id = worker_id;
    c.finish_reason = SLUICE__V1__FINISH_REASON__FINISH_REASON_ERROR;
    err.code = code;
    err.message = (char *)(why && why[0] ? why : sl_strerror(code));
    err.http_status = http_status ? http_status : wreq_http_status(code);
    c.error = &err;
    return bus_stream_writer_end_proto(w, &c.base);
}
