/* bus.h - the NATS message bus every Sluice process talks through.
 *
 * A thin, opinionated layer over nats.c (libnats 3.4.1):
 *   - one connection per bus_t, named, reconnecting forever with capped
 *     exponential backoff and jitter; nats.c resubscribes every subscription
 *     after a reconnect, so subscribers need do nothing;
 *   - SendAsap (low request latency) and unlimited pending limits on every
 *     subscription (bursty subscribers are not cut off as slow consumers);
 *   - publish / subscribe / queue-group subscribe / request-reply / respond;
 *   - a streamed reply (bus_stream_*): many ordered messages answering one
 *     request, framed with NATS headers (Sl-Seq, Sl-End, Sl-Error), with
 *     end-of-stream, idle timeout, gap and duplicate detection, cancellation,
 *     and prompt failure when the connection drops mid-stream;
 *   - typed protobuf-c subscriptions that count and drop malformed messages;
 *   - every payload is checked against the server's max_payload before it is
 *     sent (SL_ETOOBIG with a clear text, never a timeout);
 *   - subject builders for DESIGN.md's subject table.
 *
 * Errors: functions return 0 or a negative SL_E* code (common/base/err.h).
 * A failing call also leaves a human-readable explanation, readable on the
 * same thread with bus_last_error() until that thread's next failing bus call.
 *
 * Thread-safety: a bus_t and its subscriptions may be used from any thread
 * concurrently (nats.c connections are thread-safe). Subscription callbacks
 * run on nats.c delivery threads, one thread per subscription, so one
 * subscription's callbacks never run concurrently with themselves. A
 * bus_stream_t is for one consumer thread, except bus_stream_cancel(), which
 * may be called from any thread. A bus_stream_writer_t is for one thread at a
 * time.
 *
 * Wire framing of a streamed reply (payload-agnostic):
 *   header Sl-Seq:   decimal sequence number, 0, 1, 2, ... per stream
 *   header Sl-End:   "1" on the last message (which may carry a payload)
 *   header Sl-Error: on a last message only: a negative SL_E* code from the
 *                    responder; the payload is then the error text
 */
#ifndef SL_BUS_H
#define SL_BUS_H

#include "common/base/arena.h"

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BUS_HDR_SEQ   "Sl-Seq"
#define BUS_HDR_END   "Sl-End"
#define BUS_HDR_ERROR "Sl-Error"

/* Longest subject the subject builders produce, including the NUL. */
#define BUS_SUBJECT_MAX 256

typedef struct bus bus_t;
typedef struct bus_sub bus_sub_t;
typedef struct bus_stream bus_stream_t;
typedef struct bus_stream_writer bus_stream_writer_t;
/* A received message (opaque; read it with the bus_msg_* accessors). */
typedef struct bus_msg bus_msg_t;

/* ---- connection ------------------------------------------------------------ */

typedef struct bus_opts {
    const char *url;        /* NULL: $SLUICE_NATS, else nats://127.0.0.1:4222;
                               may be a comma-separated server list */
    const char *name;       /* connection name shown by the server; NULL: "sluice" */
    int connect_timeout_ms; /* per attempt; 0: 2000 */
    int reconnect_wait_ms;  /* first backoff step; 0: 100 */
    int reconnect_max_ms;   /* backoff cap; 0: 2000 */
    int ping_interval_ms;   /* dead-server detection; 0: 10000 */
    bool retry_initial;     /* true: bus_connect succeeds even if the server is
                               not up yet and keeps trying in the background */
} bus_opts_t;

/* Connects. opts may be NULL (all defaults). On success *out owns the
 * connection; free it with bus_free(). Errors: SL_EINVAL (bad options),
 * SL_EUNAVAIL (no server reachable and !retry_initial), SL_ENOMEM. */
int bus_connect(bus_t **out, const bus_opts_t *opts);

/* Closes the connection and frees the bus. Open streams fail with
 * SL_ECLOSED; every subscription, stream and writer must be freed before
 * (they hold a pointer to the bus). Must not be called from a bus callback.
 * bus_free(NULL) is a no-op. */
void bus_free(bus_t *bus);

/* True while connected (false while reconnecting). */
bool bus_is_connected(bus_t *bus);

/* Waits up to timeout_ms for the connection to be up. Returns 0, or
 * SL_ETIMEDOUT, or SL_ECLOSED once the bus is closed. */
int bus_wait_connected(bus_t *bus, int timeout_ms);

/* Sends everything buffered and waits for the server's acknowledgement.
 * Returns 0, SL_ETIMEDOUT, or SL_EUNAVAIL while disconnected. */
int bus_flush(bus_t *bus, int timeout_ms);

/* The server's max_payload in bytes (as announced at the last connect;
 * 0 if never connected). */
int64_t bus_max_payload(bus_t *bus);

/* Text explaining this thread's last failed bus call ("" if none). The
 * string is thread-local and valid until this thread's next bus call fails. */
const char *bus_last_error(void);

typedef struct bus_stats {
    uint64_t published;   /* messages sent (publish, request, respond, stream) */
    uint64_t bytes_out;   /* payload bytes sent */
    uint64_t received;    /* messages handed to callbacks or streams */
    uint64_t bytes_in;    /* payload bytes received */
    uint64_t malformed;   /* proto messages that failed to unpack, and stream
                             chunks with broken framing; dropped */
    uint64_t dropped;     /* received but not delivered: chunks for streams
                             already closed, slow-consumer drops by nats.c */
    uint64_t disconnects; /* connection losses */
    uint64_t reconnects;  /* successful reconnects */
} bus_stats_t;

/* Snapshot of the counters (each read atomically; not one consistent cut). */
void bus_stats_get(bus_t *bus, bus_stats_t *out);

/* ---- messages -------------------------------------------------------------- */

/* A bus_msg_t handed to a callback is borrowed for the callback's duration.
 * One returned by bus_request() or bus_stream_recv() is owned by the caller
 * and freed with bus_msg_free(). */
const char *bus_msg_subject(const bus_msg_t *msg);
const char *bus_msg_reply(const bus_msg_t *msg); /* NULL if none */
const void *bus_msg_data(const bus_msg_t *msg);  /* may be NULL when len is 0 */
size_t bus_msg_len(const bus_msg_t *msg);
/* Value of header key, or NULL. The string lives as long as the message. */
const char *bus_msg_header(const bus_msg_t *msg, const char *key);
/* Stream framing of a message received with bus_stream_recv(). */
uint64_t bus_msg_seq(const bus_msg_t *msg);
bool bus_msg_is_last(const bus_msg_t *msg);
/* Whether msg is the "no responders" status (503, no data) that the server
 * sends to a reply subject when a message published with that reply
 * (bus_publish_reply, as bus_request does) had no subscriber. Lets a
 * subscription on one's own reply subjects tell a dead target from an
 * answer without a blocking bus_request. false for NULL. */
bool bus_msg_is_no_responders(const bus_msg_t *msg);
/* Frees an owned message. bus_msg_free(NULL) is a no-op. */
void bus_msg_free(bus_msg_t *msg);

/* ---- publish / subscribe ----------------------------------------------------- */

/* Publishes data (len bytes, may be 0) on subject. reply may be NULL.
 * Returns 0; SL_EINVAL (bad subject); SL_ETOOBIG when the message exceeds
 * the server's max_payload (checked here, nothing is sent); SL_ECLOSED after
 * close; SL_EIO otherwise. While reconnecting the message is buffered
 * (nats.c reconnect buffer, 8 MiB) and sent after the reconnect. */
int bus_publish(bus_t *bus, const char *subject, const void *data, size_t len);
int bus_publish_reply(bus_t *bus, const char *subject, const char *reply, const void *data,
                      size_t len);

/* Called for each message on a nats.c delivery thread. msg is borrowed. */
typedef void (*bus_msg_fn)(bus_t *bus, const bus_msg_t *msg, void *ud);

/* Subscribes to subject (wildcards allowed). With queue != NULL, joins that
 * queue group: each message goes to one member of the group. On success
 * *out is the subscription; free it with bus_sub_free(). The callback runs
 * until bus_sub_free() returns. */
int bus_subscribe(bus_t *bus, const char *subject, const char *queue, bus_msg_fn cb, void *ud,
                  bus_sub_t **out);

/* Unsubscribes and waits until no callback of this subscription is running
 * any more (so ud may be freed afterwards). Must not be called from this
 * subscription's own callback. bus_sub_free(NULL) is a no-op. */
void bus_sub_free(bus_sub_t *sub);

/* ---- request / reply --------------------------------------------------------- */

/* Sends a request and waits up to timeout_ms for one reply, returned in *out
 * (caller frees with bus_msg_free()). Errors: SL_ETIMEDOUT; SL_EUNAVAIL when
 * nobody is subscribed to subject (the server says "no responders");
 * SL_ETOOBIG; SL_EINVAL; SL_EIO. */
int bus_request(bus_t *bus, const char *subject, const void *data, size_t len, int timeout_ms,
                bus_msg_t **out);

/* Answers req on its reply subject. SL_EINVAL if req has no reply subject. */
int bus_respond(bus_t *bus, const bus_msg_t *req, const void *data, size_t len);

/* ---- protobuf ---------------------------------------------------------------- */

/* Packs m and publishes it (SL_ETOOBIG checked on the packed size). */
int bus_publish_proto(bus_t *bus, const char *subject, const ProtobufCMessage *m);
int bus_respond_proto(bus_t *bus, const bus_msg_t *req, const ProtobufCMessage *m);

/* Sends m as a request and unpacks the reply as resp_desc into *out (caller
 * frees with protobuf_c_message_free_unpacked(*out, NULL)). A reply that does
 * not unpack gives SL_EPROTO (and counts as malformed). */
int bus_request_proto(bus_t *bus, const char *subject, const ProtobufCMessage *m,
                      const ProtobufCMessageDescriptor *resp_desc, int timeout_ms,
                      ProtobufCMessage **out);

/* Unpacks msg's payload as desc. Caller frees *out with
 * protobuf_c_message_free_unpacked(*out, NULL). SL_EPROTO if malformed. */
int bus_msg_unpack(const bus_msg_t *msg, const ProtobufCMessageDescriptor *desc,
                   ProtobufCMessage **out);

/* Called with each message that unpacked as the subscription's descriptor;
 * m is freed when the callback returns (msg, e.g. for bus_respond, too). */
typedef void (*bus_proto_fn)(bus_t *bus, const bus_msg_t *msg, const ProtobufCMessage *m, void *ud);

/* A protobuf-c allocator over a bump arena (common/base/arena.h): unpacking
 * with it allocates from a; free is a no-op (arena_reset frees everything).
 * Each proto subscription unpacks its messages this way. */
ProtobufCAllocator bus_arena_allocator(arena_t *a);

/* Like bus_subscribe(), but unpacks every message as desc. Unknown fields are
 * ignored (protobuf rules). A message that fails to unpack is counted in
 * bus_stats_t.malformed and dropped with a rate-limited warning; the callback
 * never sees it. */
int bus_subscribe_proto(bus_t *bus, const char *subject, const char *queue,
                        const ProtobufCMessageDescriptor *desc, bus_proto_fn cb, void *ud,
                        bus_sub_t **out);

/* ---- streamed replies: requester side ---------------------------------------- */

typedef struct bus_stream_opts {
    int idle_timeout_ms; /* max wait for the next message; 0: 30000 */
    int reorder_window;  /* messages that may arrive early and be held for
                            reordering; 0: 64; beyond it a gap is SL_EPROTO */
    int gap_timeout_ms;  /* how long a missing seq may stay missing while
                            later ones are held; 0: 500 */
} bus_stream_opts_t;

/* Opens a reply stream: allocates a unique reply subject on this bus's
 * inbox, then sends the request (data, len) to subject with that reply
 * subject. opts may be NULL. On success *out owns the stream; free it with
 * bus_stream_free(). Errors as bus_publish(). */
int bus_stream_open(bus_t *bus, const char *subject, const void *data, size_t len,
                    const bus_stream_opts_t *opts, bus_stream_t **out);
/* Same, packing a protobuf request. */
int bus_stream_open_proto(bus_t *bus, const char *subject, const ProtobufCMessage *m,
                          const bus_stream_opts_t *opts, bus_stream_t **out);

/* Waits for the next message in sequence order and returns it in *out
 * (owned by the caller, free with bus_msg_free()). The message flagged
 * bus_msg_is_last() is returned like the others; after it, calls return
 * SL_EEND. Errors (the stream is then finished; every later call returns the
 * same code, and bus_stream_error() explains):
 *   SL_ETIMEDOUT   no message for idle_timeout_ms
 *   SL_EPROTO      gap (a seq missing beyond the reorder window or the gap
 *                  timeout), duplicate seq, or a message without framing
 *   SL_ECLOSED     the connection to NATS dropped mid-stream (messages
 *                  received before the drop are still returned first)
 *   SL_ECANCELLED  bus_stream_cancel() was called
 *   other SL_E*    the responder ended the stream with bus_stream_writer_fail()
 */
int bus_stream_recv(bus_stream_t *s, bus_msg_t **out);
/* Same, unpacking each message as desc into *out (caller frees with
 * protobuf_c_message_free_unpacked). *last is set on the final message. A
 * message that does not unpack ends the stream with SL_EPROTO. */
int bus_stream_recv_proto(bus_stream_t *s, const ProtobufCMessageDescriptor *desc,
                          ProtobufCMessage **out, bool *last);

/* Makes a blocked or later bus_stream_recv() return SL_ECANCELLED. Thread-
 * safe; local only: tell the responder through your own protocol (e.g. a
 * CancelRequest), later chunks are dropped. */
void bus_stream_cancel(bus_stream_t *s);

/* Changes the idle timeout (ms > 0; counted from the last message, as at
 * open) of a stream, including a bus_stream_recv() blocked on it now.
 * Thread-safe like bus_stream_cancel(). */
void bus_stream_set_idle_timeout(bus_stream_t *s, int ms);

/* The reply subject of this stream (valid until bus_stream_free()). */
const char *bus_stream_inbox(const bus_stream_t *s);

/* Why the stream failed ("" while healthy). Valid until bus_stream_free(). */
const char *bus_stream_error(const bus_stream_t *s);

/* Stops the stream (chunks still arriving are dropped) and frees it.
 * bus_stream_free(NULL) is a no-op. */
void bus_stream_free(bus_stream_t *s);

/* ---- streamed replies: responder side ---------------------------------------- */

/* Creates a writer answering req (which must have a reply subject: else
 * SL_EINVAL). The writer copies what it needs; req may be freed afterwards. */
int bus_stream_writer_create(bus_t *bus, const bus_msg_t *req, bus_stream_writer_t **out);
/* Same from a bare reply subject (e.g. carried inside a protobuf job). */
int bus_stream_writer_create_reply(bus_t *bus, const char *reply, bus_stream_writer_t **out);

/* Sends the next message of the stream (seq increases by one per call).
 * Errors as bus_publish(); SL_ECLOSED after the end was sent, and once the
 * connection has dropped since the writer was created (the requester's
 * stream has failed then: stop producing). A failed send does not consume a
 * sequence number. */
int bus_stream_writer_send(bus_stream_writer_t *w, const void *data, size_t len);
int bus_stream_writer_send_proto(bus_stream_writer_t *w, const ProtobufCMessage *m);
/* Sends the last message (data may be NULL with len 0). */
int bus_stream_writer_end(bus_stream_writer_t *w, const void *data, size_t len);
int bus_stream_writer_end_proto(bus_stream_writer_t *w, const ProtobufCMessage *m);
/* Ends the stream with an error: the requester's bus_stream_recv() returns
 * code (a negative SL_E* code) and bus_stream_error() shows message. */
int bus_stream_writer_fail(bus_stream_writer_t *w, int code, const char *message);
/* Next sequence number to be sent (= messages sent so far). */
uint64_t bus_stream_writer_seq(const bus_stream_writer_t *w);
/* Frees the writer without sending anything. NULL is a no-op. */
void bus_stream_writer_free(bus_stream_writer_t *w);

/* ---- subjects (DESIGN.md "Messages") ----------------------------------------- */

/* Each writes a NUL-terminated subject into buf (len bytes) and returns 0,
 * SL_EINVAL when a token is empty or contains '.', '*', '>', whitespace or a
 * control character, or SL_ETOOBIG when it does not fit. */

/* sluice.<ns>.<component>.<endpoint>.<instance_id as 16 hex digits> */
int bus_subject_instance(char *buf, size_t len, const char *ns, const char *component,
                         const char *endpoint, uint64_t instance_id);
/* sluice.<ns>.<component>.<endpoint>  (router.route, prefill.jobs, router.active) */
int bus_subject_endpoint(char *buf, size_t len, const char *ns, const char *component,
                         const char *endpoint);
/* sluice.<ns>.<topic>  (kv_events, load) */
int bus_subject_topic(char *buf, size_t len, const char *ns, const char *topic);

#endif
