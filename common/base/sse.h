/* sse.h - Server-Sent Events: an incremental parser and an event encoder.
 *
 * The parser follows the WHATWG "event stream interpretation" rules: lines end
 * in CRLF, LF or CR (a CR at the end of one chunk and an LF at the start of the
 * next are one line end); "field: value" with one optional space after the
 * colon; `data` lines accumulate joined by "\n"; a blank line dispatches the
 * event if any data was seen; lines starting with ':' are comments; unknown
 * fields are ignored; a leading UTF-8 BOM is skipped. Bytes may arrive split
 * anywhere (inside a field name, between CR and LF, inside UTF-8). The OpenAI
 * end marker `data: [DONE]` is an ordinary event; sse_data_is_done() tests it.
 *
 * Input is untrusted: a pending line plus the event's data buffer are bounded
 * by max_event_bytes; going over fails the feed with SL_ETOOBIG and the parser
 * must be reset before reuse.
 *
 * Thread-safety: a parser is used by one thread at a time; distinct parsers
 * are independent. sse_event_encode is reentrant.
 */
#ifndef SL_SSE_H
#define SL_SSE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct sse_parser sse_parser_t;

/* One dispatched event. All strings are NUL-terminated and valid only during
 * the callback (they point into the parser's buffers). */
typedef struct sse_event {
    const char *type; /* "message" unless an `event:` field set it */
    const char *data; /* data lines joined by "\n", no trailing newline */
    size_t data_len;
    const char *id; /* last event id seen on this stream ("" if none) */
    long retry_ms;  /* last valid `retry:` value, -1 if none */
} sse_event_t;

/* Called for each dispatched event. Return 0 to go on; a nonzero value stops
 * the feed, which returns that value (the rest of the chunk is dropped). */
typedef int (*sse_event_fn)(const sse_event_t *ev, void *ud);

/* Creates a parser. max_event_bytes bounds the memory one event may take
 * (0 = 1 MiB default; at least 64). fn must not be NULL. Returns NULL on
 * ENOMEM or bad arguments. Free with sse_parser_free(). */
sse_parser_t *sse_parser_new(size_t max_event_bytes, sse_event_fn fn, void *ud);

/* Frees the parser. NULL is a no-op. */
void sse_parser_free(sse_parser_t *p);

/* Feeds len bytes (len 0 is allowed). Calls fn for each complete event.
 * Returns 0, the callback's nonzero value, SL_ETOOBIG (event over the bound),
 * SL_ENOMEM, or SL_EINVAL (NULL arguments, or a parser already failed). */
int sse_parser_feed(sse_parser_t *p, const char *buf, size_t len);

/* Marks the end of the stream. A trailing event without its blank line is
 * discarded, as the spec says. Returns 0 if the stream ended cleanly, or
 * SL_EPROTO if a partial line or an undispatched event was dropped (callers
 * may ignore it). The parser is reset afterwards. */
int sse_parser_finish(sse_parser_t *p);

/* Clears all state (buffers kept, last event id and retry forgotten) so the
 * parser can read a new stream. */
void sse_parser_reset(sse_parser_t *p);

/* Number of events dispatched since creation or the last reset. */
size_t sse_parser_events(const sse_parser_t *p);

/* True if data is exactly "[DONE]" (the OpenAI end-of-stream marker). */
bool sse_data_is_done(const char *data, size_t len);

/* Encodes one event: an optional `event: TYPE` line (type NULL or "" for
 * none), one `data: ` line per line of data (a data containing "\n" becomes
 * several lines, so the parser gives it back unchanged; CR is not allowed in
 * data and gives SL_EINVAL) and the blank line. Writes at most cap bytes to
 * buf and NUL-terminates; *out_len gets the encoded length without the NUL.
 * With buf NULL and cap 0 only the length is computed. Returns 0, SL_ETOOBIG
 * if cap is smaller than length + 1, or SL_EINVAL. */
int sse_event_encode(const char *type, const char *data, size_t data_len, char *buf, size_t cap,
                     size_t *out_len);

#endif
