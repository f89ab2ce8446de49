/* openai_parse.h - OpenAI request JSON -> the frontend's internal request.
 *
 * Parses and validates the body of POST /v1/chat/completions and
 * POST /v1/completions (untrusted input: every field's type and range is
 * checked, sizes are bounded). Unknown fields are ignored as OpenAI-compatible
 * servers do. A failure names the offending parameter so the HTTP layer can
 * answer 400 {"error":{"message","type","param","code"}}.
 *
 * Ownership: oai_request_parse() returns a request freed with
 * oai_request_free() (NULL is a no-op).
 * Thread-safety: pure functions; a request is used by one thread at a time.
 */
#ifndef SL_FRONTEND_OPENAI_PARSE_H
#define SL_FRONTEND_OPENAI_PARSE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OAI_MAX_N           16   /* choices per request */
#define OAI_MAX_STOP        16   /* stop strings */
#define OAI_MAX_STOP_BYTES  1024 /* per stop string */
#define OAI_MAX_TOPLOGPROBS 20
#define OAI_MAX_MESSAGES    4096

typedef enum oai_kind { OAI_KIND_CHAT = 0, OAI_KIND_COMPLETION = 1 } oai_kind_t;

/* Why a request was refused: HTTP status, message and parameter name. */
typedef struct oai_error {
    int status;        /* 400, 404, 413, 503, ... */
    char message[512]; /* human-readable, no trailing newline */
    char param[64];    /* offending parameter or "" */
} oai_error_t;

typedef struct oai_request {
    oai_kind_t kind;
    char *model;
    /* Chat: {"messages": [...] with content-part arrays flattened to strings,
     * "tools"?, "add_generation_prompt": true, "chat_template_kwargs"?}
     * ready for chat_template_render(). NULL for completions. */
    cJSON *chat;
    char *prompt_text;    /* completions string prompt, or NULL */
    uint32_t *prompt_ids; /* (n_prompt_ids) completions token-id prompt, or NULL */
    size_t n_prompt_ids;
    bool stream, include_usage;
    uint32_t max_tokens; /* 0: not given (up to the context) */
    float temperature, top_p, min_p, presence_penalty, frequency_penalty, repetition_penalty;
    int32_t top_k; /* <= 0: off */
    bool has_seed;
    uint64_t seed;
    char **stop; /* (n_stop) non-empty stop strings */
    size_t n_stop;
    uint32_t n;            /* choices, 1..OAI_MAX_N */
    bool logprobs;         /* return the chosen token's logprob */
    uint32_t top_logprobs; /* alternatives per position */
    bool ignore_eos;
    uint32_t min_tokens;
    char *user; /* or NULL */
} oai_request_t;

/* Parses body (len bytes, need not be NUL-terminated) as a request of kind.
 * Returns 0 and *out, or SL_EINVAL with err filled (status 400, the
 * parameter named), or SL_ENOMEM (err status 500). */
int oai_request_parse(const char *body, size_t len, oai_kind_t kind, oai_request_t **out,
                      oai_error_t *err);

void oai_request_free(oai_request_t *r);

/* Fills err (status, printf-style message, param may be NULL). */
void oai_error_set(oai_error_t *err, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Flattens a message "content": a string is copied; an array of content
 * parts concatenates the "text" of parts of type "text" (other part types
 * are refused: SL_EUNSUPPORTED); null gives "". Returns 0 and *out
 * (malloc'd), or SL_EINVAL for any other shape. Exposed for tests. */
int oai_content_flatten(const cJSON *content, char **out);

#endif
