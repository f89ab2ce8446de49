/* kv_publisher.h - KV cache events of one worker onto the bus.
 *
 * The block pool (common/engine/kvpool.h) reports every STORED / REMOVED /
 * CLEARED event synchronously on the engine thread; kvpub_event() copies it
 * into the pending batch. A batch is published as a KvEventBatch on
 * sluice.<ns>.kv_events when it holds max_events events, when the next event
 * would take it over the server's max_payload (less 512 bytes of headroom;
 * only an event too big alone still fails, and the gap makes routers resync),
 * or flush_ms after its first event (a flusher thread), with worker_id, tier DEVICE, block_size,
 * model and event_id = the id of its first event. Ids are the pool's own
 * (1, 2, 3, ... one per event), so they are contiguous across batches and
 * agree with kvpool_dump()'s last_event_id.
 *
 * The last ring_batches published batches are kept (packed). A
 * KvResyncRequest is answered by kvpub_resync_reply() with a streamed reply
 * (bus_stream_writer: Sl-Seq framing, end-of-stream on the last part) of one
 * or more KvEventBatch parts, each at most the server's max_payload minus
 * 512 bytes of headroom for the framing, all with the same event_id and
 * resync flag, cut at event boundaries; the requester applies the parts in
 * order once the end-of-stream has arrived:
 *   - from_event_id > 0 and the ring still holds every event since it: a
 *     replay, resync=false, event_id=from_event_id, carrying the events
 *     [from_event_id, last] across the parts (a router applies them as
 *     batches; the events of all parts count for the next id). A replay with
 *     one event larger than a part is answered with a dump instead;
 *   - otherwise a full dump, resync=true, events = cleared (first part),
 *     then one stored event per cached block, parents first, each carrying
 *     its own parent_hash (so the chain may be cut between parts), event_id
 *     = the id of the last event the dump includes: the next live batch
 *     starts at event_id + 1, so the router continues from there.
 * A requester that reads only the first message (bus_request) gets the whole
 * answer whenever it fits one part. The reply also flushes what is pending
 * first, so nothing published later carries an id the reply already covers.
 *
 * Ownership: kvpub_new() returns a publisher freed with kvpub_free(), which
 * flushes what is pending. The bus is borrowed and must outlive it.
 * Thread-safety: kvpub_event() and kvpub_resync_reply() are for the pool's
 * owner thread (the latter reads the pool); kvpub_set_worker_id(),
 * kvpub_flush() and kvpub_stats_get() are thread-safe.
 */
#ifndef SL_DECODE_WORKER_KV_PUBLISHER_H
#define SL_DECODE_WORKER_KV_PUBLISHER_H

#include "common/engine/kvpool.h"
#include "common/runtime/bus.h"

#include <stdint.h>

typedef struct kvpub kvpub_t;
typedef struct kvpub_resync kvpub_resync_t;

typedef struct kvpub_opts {
    const char *subject;   /* publish subject (sluice.<ns>.kv_events), copied */
    const char *model;     /* served model name, copied */
    uint32_t block_size;   /* tokens per block */
    uint32_t max_events;   /* flush at this many pending events; 0 = 256 */
    uint32_t flush_ms;     /* flush this long after the first pending event; 0 = 5 */
    uint32_t ring_batches; /* recent batches kept for replay; 0 = 128 */
} kvpub_opts_t;

typedef struct kvpub_stats {
    uint64_t events;         /* events published */
    uint64_t batches;        /* batches published */
    uint64_t publish_errors; /* batches the bus refused (events lost: routers resync) */
    uint64_t resyncs;        /* full dumps answered */
    uint64_t replays;        /* ring replays answered */
    uint64_t reply_parts;    /* messages of the streamed resync / replay replies */
    uint64_t last_event_id;  /* id of the last event seen */
} kvpub_stats_t;

/* Creates a publisher on bus and starts its flusher thread. Returns 0 and
 * *out, or SL_EINVAL / SL_ENOMEM / -errno. */
int kvpub_new(bus_t *bus, const kvpub_opts_t *opts, kvpub_t **out);

/* Flushes what is pending, stops the thread, frees. NULL is a no-op. */
void kvpub_free(kvpub_t *p);

/* Sets the worker id put in every batch (the discovery instance id; it may
 * change when the lease is re-granted). Thread-safe. */
void kvpub_set_worker_id(kvpub_t *p, uint64_t worker_id);

/* The pool's event callback (kvpool_event_fn; ud is the kvpub_t). Copies ev;
 * an allocation failure drops the event and counts a publish error (the gap
 * makes routers resync). */
void kvpub_event(const kvpool_event_t *ev, void *ud);

/* Publishes the pending batch now. Thread-safe. Returns 0 or the bus error. */
int kvpub_flush(kvpub_t *p);

/* Answers a KvResyncRequest whose reply subject is reply with a streamed
 * replay or full dump of pool, as described above. Pool owner thread only
 * (the dump is one consistent snapshot taken and sent on it). Returns 0 or a
 * negative SL_E* code: SL_ETOOBIG only when max_payload is too small for one
 * block (under about 1 KiB); a send failing mid-way ends the stream with
 * Sl-Error when it still can, else the requester sees it cut short (idle
 * timeout) and retries. */
int kvpub_resync_reply(kvpub_t *p, kvpool_t *pool, const char *reply, uint64_t from_event_id);

/* Queue of resync requests for workers whose pool lives on another thread
 * (decode and prefill workers share it): kvpub_resync_enqueue() is the body
 * of a kv_resync subscription callback (any thread): it unpacks msg as a
 * KvResyncRequest and queues (reply subject, from_event_id); the caller then
 * wakes the pool thread, which calls kvpub_resync_run() to answer every
 * queued request with kvpub_resync_reply(). Returns 0, SL_EINVAL (no reply
 * subject), SL_EPROTO (malformed: the caller counts it) or SL_ENOMEM.
 * kvpub_resync_run() returns how many were answered; kvpub_free() drops
 * requests never run. */
int kvpub_resync_enqueue(kvpub_t *p, const bus_msg_t *msg);
size_t kvpub_resync_run(kvpub_t *p, kvpool_t *pool);

void kvpub_stats_get(kvpub_t *p, kvpub_stats_t *out);

#endif
