/* http_server.h - sluice-frontend: the OpenAI-compatible HTTP API.
 *
 * civetweb serves, one thread per connection (--http-threads bounds the
 * concurrent streams; main.c shrinks the default thread stack so 1,000+
 * threads cost little memory):
 *   POST /v1/chat/completions, /v1/completions   (stream or not)
 *   POST /tokenize, /detokenize                   (vLLM's shapes)
 *   POST /apply-template                          (llama.cpp's: {"prompt"})
 *   GET  /v1/models, /health, /live, /metrics
 * Requests are parsed (openai_parse.h), templated and tokenized here with the
 * served model's tokenizer (--model-path), then run on decode workers
 * (generate_client.h over worker_pool.h); answers and errors are shaped by
 * openai_format.h. Bodies over --max-body-bytes get 413; with --api-key (or
 * SLUICE_API_KEY) every endpoint but /health, /live and /metrics needs
 * "Authorization: Bearer <key>" (else 401).
 *
 * Ownership: http_server_start() returns a server freed with
 * http_server_free() (NULL is a no-op); cfg is copied where needed.
 * Thread-safety: start and free from one thread; handlers run on civetweb's
 * threads, each choice of a generation on a thread of its own (joined before
 * the handler returns); they share only thread-safe state, and the choices
 * of one request write to its connection under one lock.
 */
#ifndef SL_FRONTEND_HTTP_SERVER_H
#define SL_FRONTEND_HTTP_SERVER_H

#include "common/base/config.h"

#include <stddef.h>
#include <stdint.h>

typedef struct http_server http_server_t;

typedef struct http_server_cfg {
    sl_config_common_t common;
    char *host;
    int64_t port;
    char *model_path;        /* --model-path DIR (tokenizer, template) */
    char *served_model_name; /* default: basename of model_path */
    char *chat_template;     /* --chat-template FILE overrides the model's */
    char *api_key;           /* NULL: no auth */
    uint64_t max_body_bytes;
    uint64_t http_threads;
    uint64_t http_reserve_threads; /* kept from generation for /health etc. */
    uint64_t thread_stack_kb;
    int64_t stream_timeout_ms;
    uint64_t max_attempts;
    char *router_mode;         /* "" / none: round-robin in the frontend */
    int64_t router_timeout_ms; /* then fall back to round-robin */
} http_server_cfg_t;

extern const sl_config_entry_t http_server_config_table[];
extern const size_t http_server_config_table_n;

/* Loads the tokenizer and template, connects to NATS, watches etcd, and
 * starts listening. Returns 0 and *out, or a negative SL_E* code with a
 * reason in why (why_len bytes). */
int http_server_start(const http_server_cfg_t *cfg, http_server_t **out, char *why, size_t why_len);

/* The bound HTTP port. */
int http_server_port(const http_server_t *s);

/* Stops listening, waits for handlers, frees everything. NULL is a no-op. */
void http_server_free(http_server_t *s);

#endif
