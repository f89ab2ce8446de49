/* openai_format.h - responses, stream chunks and errors in OpenAI's JSON.
 *
 * Builders for the bodies the frontend sends: chat.completion /
 * text_completion objects, chat.completion.chunk / streamed text_completion
 * chunks (without the SSE framing), usage, logprobs in the chat shape
 * ({"content":[{token, logprob, bytes, top_logprobs}]}) and the completions
 * shape ({tokens, token_logprobs, top_logprobs, text_offset}), and errors
 * {"error":{"message","type","param","code"}}.
 *
 * Ownership: every char * returned is malloc'd (caller frees), NULL on
 * allocation failure. cJSON values returned are owned by the caller.
 * Thread-safety: pure functions.
 */
#ifndef SL_FRONTEND_OPENAI_FORMAT_H
#define SL_FRONTEND_OPENAI_FORMAT_H

#include "proto/sluice.pb-c.h"
#include "services/frontend/openai_parse.h"

#include <cjson/cJSON.h>
#include <stdint.h>

/* What every body of one response shares. */
typedef struct oai_resp_ctx {
    oai_kind_t kind;
    const char *id; /* chatcmpl-... / cmpl-... */
    int64_t created;
    const char *model;
} oai_resp_ctx_t;

/* One finished choice of a non-streamed response. */
typedef struct oai_choice {
    const char *text;
    const char *finish; /* "stop", "length", or NULL */
    cJSON *logprobs;    /* borrowed; NULL: "logprobs": null */
} oai_choice_t;

typedef struct oai_usage {
    uint32_t prompt, completion, cached;
} oai_usage_t;

/* Writes "<prefix><24 random hex digits>" into buf (len >= prefix + 25). */
void oai_id_make(char *buf, size_t len, const char *prefix);

/* "stop", "length" or NULL (still running / other) for a FinishReason. */
const char *oai_finish_name(int finish);

/* {"error":{"message":..,"type":..,"param":..|null,"code":..|null}}. The type
 * follows the status (400/413 invalid_request_error, 401
 * authentication_error, 404 not_found_error, 503 service_unavailable_error,
 * else internal_error). */
char *oai_error_json(int status, const char *message, const char *param);

/* A stream chunk for choice index: text may be NULL (role-only first chat
 * chunk when first is true), finish NULL while running, logprobs borrowed or
 * NULL. usage non-NULL gives the final usage-only chunk (choices []). */
char *oai_chunk_json(const oai_resp_ctx_t *ctx, uint32_t index, bool first, const char *text,
                     const char *finish, const cJSON *logprobs, const oai_usage_t *usage);

/* The whole non-streamed response with n choices and usage. */
char *oai_response_json(const oai_resp_ctx_t *ctx, const oai_choice_t *choices, size_t n,
                        const oai_usage_t *usage);

/* Appends a chunk's logprobs to acc (created on first use: chat shape
 * {"content":[...]} or completions shape {tokens, token_logprobs,
 * top_logprobs, text_offset}); text_offset counts bytes from *offset, which
 * is advanced. Token texts that are not valid UTF-8 are written as
 * "bytes:\xNN..." as vLLM does. Returns 0 or SL_ENOMEM. */
int oai_logprobs_append(oai_kind_t kind, cJSON **acc, const Sluice__V1__GenerateChunk *c,
                        size_t *offset);

/* {"prompt_tokens","completion_tokens","total_tokens",
 *  "prompt_tokens_details":{"cached_tokens"}} */
cJSON *oai_usage_json(const oai_usage_t *u);

#endif
