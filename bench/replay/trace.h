/* trace.h - Mooncake-format request traces and the prompts they stand for.
 *
 * A trace is JSON Lines, one request per line:
 *   {"timestamp": ms, "input_length": tokens, "output_length": tokens,
 *    "hash_ids": [id, ...]}
 * with one hash id per 512-token block of the prompt (the last one may be
 * partial); equal ids mean an equal prefix up to and including that block.
 * Unknown fields are ignored, blank lines skipped. Every line is validated
 * (it is untrusted input): an object; timestamp a finite number >= 0;
 * input_length an integer in [1, TRACE_MAX_INPUT]; output_length an integer
 * in [1, TRACE_MAX_OUTPUT]; hash_ids a non-empty array of integers in
 * [0, 2^53] with exactly ceil(input_length / 512) entries. A bad line fails
 * the whole load with a message naming the line number and the field.
 * Requests are kept in timestamp order (stable, so equal timestamps keep
 * file order).
 *
 * Prompts: each hash id expands to `tokens_per_hash` token ids derived only
 * from (id, position in the block), so equal ids give equal token blocks and
 * requests sharing ids share real prefixes; the prompt is the first
 * ceil(input_length * tokens_per_hash / 512) of them. tokens_per_hash = 512
 * replays the trace at full length; a smaller value (bench --scale) shrinks
 * every prompt by the same factor and keeps its block structure.
 *
 * Thread-safety: a trace_t is read-only after trace_parse(); trace functions
 * are reentrant.
 */
#ifndef SL_REPLAY_TRACE_H
#define SL_REPLAY_TRACE_H

#include <stddef.h>
#include <stdint.h>

#define TRACE_BLOCK_TOKENS 512u       /* tokens per Mooncake hash id */
#define TRACE_MAX_INPUT    (1u << 24) /* input_length bound */
#define TRACE_MAX_OUTPUT   (1u << 20) /* output_length bound */
#define TRACE_MAX_LINE     (64u << 20)

typedef struct trace_req {
    double t_ms;            /* arrival, ms from the trace's start */
    uint32_t input_len;     /* tokens at the trace's scale (512 per hash id) */
    uint32_t output_len;    /* tokens to generate */
    uint32_t n_hash;        /* == ceil(input_len / 512) */
    const uint64_t *hashes; /* (n_hash) ids, owned by the trace */
    uint32_t line;          /* 1-based line in the file */
} trace_req_t;

typedef struct trace {
    trace_req_t *reqs; /* (n) in arrival order */
    size_t n;
    uint64_t *ids; /* pool behind every reqs[i].hashes */
    size_t n_ids;
} trace_t;

/* Parses len bytes of JSONL; keeps at most `limit` requests (0 = all; the
 * first `limit` lines with a request, before sorting). Returns 0 and *out
 * (free with trace_free), SL_EFORMAT with a one-line message in err (line
 * number and field) for a malformed line or an empty trace, or SL_ENOMEM. */
int trace_parse(const char *text, size_t len, size_t limit, trace_t **out, char *err,
                size_t errlen);

/* Reads path (<= 2 GiB) and parses it as above. Returns as trace_parse, or a
 * negative errno / SL_ETOOBIG with the path in err. */
int trace_load(const char *path, size_t limit, trace_t **out, char *err, size_t errlen);

/* NULL is a no-op. */
void trace_free(trace_t *t);

/* Prompt length of r in tokens when each hash id stands for tokens_per_hash
 * tokens: ceil(input_len * tokens_per_hash / 512), at least 1. */
uint32_t trace_prompt_len(const trace_req_t *r, uint32_t tokens_per_hash);

/* Token id at position pos (< trace_prompt_len) of r's prompt: a hash of
 * (hash id, pos % tokens_per_hash) mapped into [0, vocab). vocab > 0. */
uint32_t trace_prompt_token(const trace_req_t *r, uint32_t tokens_per_hash, uint32_t vocab,
                            uint32_t pos);

/* Key of the pos-th KV block of block_size tokens (tokens_per_hash must be
 * a multiple of block_size): (hash id, sub-block), unique per distinct
 * prefix block, for the oracle's caches. */
uint64_t trace_block_key(const trace_req_t *r, uint32_t tokens_per_hash, uint32_t block_size,
                         uint32_t block);

#endif
