/* stub.h - a stand-in OpenAI server for calibrating loadgen (`--serve-stub`).
 *
 * Answers POST /v1/chat/completions and /v1/completions like an OpenAI
 * server with a perfectly predictable model: max_tokens tokens (default 16),
 * the first after ttft_ms, then one every itl_ms, streamed as SSE chunks with
 * a final usage chunk and [DONE] when "stream" is true, else one JSON body
 * after the same total time. prompt_tokens counts the prompt's words. Running
 * loadgen against it measures the client and HTTP floor of a setup (what a
 * real frontend adds is the difference), and lets loadgen's own capacity be
 * measured. civetweb: one thread per connection, so `threads` bounds the
 * streams it holds; TCP_NODELAY is on (without it small events wait ~40 ms
 * for delayed ACKs).
 *
 * Thread-safety: start and stop from one thread; requests are served on
 * civetweb's threads.
 */
#ifndef SL_LOADGEN_STUB_H
#define SL_LOADGEN_STUB_H

typedef struct stub_cfg {
    const char *listen; /* "127.0.0.1:8000" (civetweb listening_ports syntax) */
    int threads;        /* concurrent connections served, >= 1 */
    int ttft_ms;        /* delay before the first token, >= 0 */
    int itl_ms;         /* delay between tokens, >= 0 */
} stub_cfg_t;

typedef struct stub_server stub_server_t;

/* Starts serving. Returns 0 and *out, SL_EINVAL (bad cfg), SL_EIO (could
 * not listen) or SL_ENOMEM. */
int stub_server_start(const stub_cfg_t *cfg, stub_server_t **out);

/* Stops (waits for the connections to end, ~2 s) and frees. NULL is a no-op. */
void stub_server_stop(stub_server_t *s);

#endif
