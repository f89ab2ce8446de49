/* etcd.h - client for the etcd v3 HTTP/JSON gateway (libcurl + cJSON).
 *
 * Speaks the /v3/ paths, which etcd 3.4 and 3.5+ both serve. The gateway's
 * quirks are handled here so callers never see them: keys and values travel
 * as base64, every int64 (lease id, revision, TTL) is a JSON string, field
 * names are case-sensitive ("TTL"), and zero/false fields are omitted (an
 * empty range has no "kvs", a failed txn no "succeeded", a PUT watch event no
 * "type").
 *
 * Keys are C strings (no NUL inside); values are byte buffers of any content.
 * Every call has a timeout (etcd_open's timeout_ms). Errors:
 *   SL_EUNAVAIL   etcd cannot be reached (connection refused, host down)
 *   SL_ETIMEDOUT  no answer within the timeout
 *   SL_ENOTFOUND  key or lease does not exist
 *   SL_EEXIST     create-if-absent found the key present
 *   SL_EINVAL     bad argument, or etcd rejected the request as invalid
 *   SL_ETOOBIG    a request or reply over etcd's or our size limit
 *   SL_EPROTO     etcd answered something we cannot parse
 *   SL_EIO        any other transport or server error
 *   SL_ENOMEM     allocation failed
 *
 * Thread-safety: an etcd_t may be used from any number of threads at once.
 * Each call borrows a curl handle from the client's small pool (so TCP
 * connections are reused) and gives it back; no two threads ever share a
 * handle. A watch runs on its own thread with its own curl handle.
 */
#ifndef SL_ETCD_H
#define SL_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct etcd etcd_t;
typedef struct etcd_watch etcd_watch_t;

/* One key-value pair. key and value are NUL-terminated (value may also
 * contain NULs; value_len is authoritative). */
typedef struct etcd_kv {
    char *key;
    size_t key_len;
    char *value;
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease; /* 0 when the key has no lease */
} etcd_kv_t;

/* Result of a range read. Owned by the caller; release with
 * etcd_range_result_free(). */
typedef struct etcd_range_result {
    etcd_kv_t *kvs; /* (n) sorted by key */
    size_t n;
    int64_t revision; /* store revision the read was served at */
    bool more;        /* more keys exist beyond the limit */
} etcd_range_result_t;

/* Connects lazily: creates a client for base_url ("http://host:port"; a bare
 * "host:port" means http://; NULL means $SLUICE_ETCD or
 * http://127.0.0.1:2379). A comma-separated list of up to 8 endpoints names
 * the members of one cluster: a call that cannot connect to one goes to the
 * next, and a call that timed out or lost its connection is not repeated (a
 * grant or txn must not run twice) but moves the client to the next member.
 * timeout_ms bounds each call (0 means 5000). Does not contact etcd. Returns
 * 0 and *out, or SL_EINVAL / SL_ENOMEM. Free with etcd_free(). */
int etcd_open(const char *base_url, int timeout_ms, etcd_t **out);

/* Frees the client. Every watch created on it must be freed first.
 * NULL is a no-op. */
void etcd_free(etcd_t *c);

/* The endpoint list this client talks to, normalized (owned by the client). */
const char *etcd_url(const etcd_t *c);

/* GET /health-style probe via a cheap range on a key nobody uses. Returns 0
 * when etcd answers, else an error code. */
int etcd_ping(etcd_t *c);

/* ---- leases ---------------------------------------------------------------- */

/* Grants a lease of ttl_s seconds (1..9e9). *id receives the lease id (> 0);
 * ttl_out, if not NULL, the TTL etcd granted (it may raise a small TTL to its
 * minimum). */
int etcd_lease_grant(etcd_t *c, int64_t ttl_s, int64_t *id, int64_t *ttl_out);

/* Refreshes a lease once. ttl_out, if not NULL, receives the renewed TTL.
 * Returns SL_ENOTFOUND when the lease has expired or was revoked. */
int etcd_lease_keepalive(etcd_t *c, int64_t id, int64_t *ttl_out);

/* Revokes a lease, deleting every key attached to it at once.
 * Returns SL_ENOTFOUND when the lease does not exist. */
int etcd_lease_revoke(etcd_t *c, int64_t id);

/* Remaining TTL in seconds of a lease. SL_ENOTFOUND when it is gone. */
int etcd_lease_ttl(etcd_t *c, int64_t id, int64_t *remaining_s);

/* ---- keys ------------------------------------------------------------------ */

/* Puts key = value (len bytes; value may be NULL when len is 0), attached to
 * lease (0 for none). revision, if not NULL, receives the store revision of
 * the write. Returns SL_ENOTFOUND when the lease does not exist. */
int etcd_put(etcd_t *c, const char *key, const void *value, size_t len, int64_t lease,
             int64_t *revision);

/* Create-if-absent in one transaction: puts key = value only when the key
 * does not exist (create_revision == 0). Returns 0 when it was created,
 * SL_EEXIST when the key already existed (nothing written). */
int etcd_put_if_absent(etcd_t *c, const char *key, const void *value, size_t len, int64_t lease,
                       int64_t *revision);

/* Reads one key. On success *out is a malloc'd kv, freed with etcd_kv_free().
 * Returns SL_ENOTFOUND when the key does not exist. */
int etcd_get(etcd_t *c, const char *key, etcd_kv_t **out);

/* Reads every key starting with prefix (an empty prefix means all keys),
 * sorted by key, at most limit of them (0 = no limit). *out is filled (zeroed
 * first); an empty result is success with n == 0. Free with
 * etcd_range_result_free(). */
int etcd_range_prefix(etcd_t *c, const char *prefix, int64_t limit, etcd_range_result_t *out);

/* Deletes one key. deleted, if not NULL, receives how many keys went (0 or
 * 1); deleting a missing key is not an error. */
int etcd_delete(etcd_t *c, const char *key, int64_t *deleted);

/* Deletes every key starting with prefix (which must not be empty, so a typo
 * cannot wipe the store). */
int etcd_delete_prefix(etcd_t *c, const char *prefix, int64_t *deleted);

void etcd_kv_free(etcd_kv_t *kv);
/* Frees what *r holds and zeroes it; NULL is a no-op. */
void etcd_range_result_free(etcd_range_result_t *r);

/* ---- watch ----------------------------------------------------------------- */

typedef enum etcd_watch_event_type {
    ETCD_WATCH_PUT = 0,    /* key created or changed */
    ETCD_WATCH_DELETE = 1, /* key deleted (or expired with its lease) */
    ETCD_WATCH_SYNCED = 2, /* the initial listing (or a re-listing) is complete */
    ETCD_WATCH_LOST = 3,   /* the stream broke; reconnecting (the view is kept) */
} etcd_watch_event_type_t;

/* Borrowed for the duration of the callback only. For PUT, value is the new
 * value; for DELETE, value is the previous value when etcd supplied it, else
 * NULL. revision is the revision of the change (for SYNCED: the revision the
 * view is now consistent with). key is NULL for SYNCED and LOST. */
typedef struct etcd_watch_event {
    etcd_watch_event_type_t type;
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
    int64_t revision;
    int64_t lease;
} etcd_watch_event_t;

typedef void (*etcd_watch_fn)(const etcd_watch_event_t *ev, void *ud);

/* Watches every key under prefix on a dedicated thread and curl handle.
 *
 * start_revision == 0: first lists the prefix and delivers every key as a PUT,
 * then SYNCED, then live events from the listing's revision + 1.
 * start_revision > 0: delivers events from that revision on, no listing.
 *
 * The watch keeps the set of keys it has reported. When the stream breaks it
 * delivers LOST once, reconnects with jittered backoff (100 ms .. 2 s) and
 * resumes at the last seen revision + 1, so no event is lost or repeated.
 * When that revision was compacted away (or the store went back in time after
 * a restore), it re-lists and reports the difference against its set as PUTs
 * and DELETEs, followed by SYNCED. A DELETE is never invented just because
 * etcd is unreachable.
 *
 * Callbacks run on the watch thread, one at a time, in revision order; they
 * must not call etcd_watch_free() on their own watch. c must outlive the
 * watch. Returns 0 and *out once the thread runs (the listing happens on the
 * thread, so etcd being down is not an error here), else SL_EINVAL/SL_ENOMEM.
 */
int etcd_watch_prefix(etcd_t *c, const char *prefix, int64_t start_revision, etcd_watch_fn fn,
                      void *ud, etcd_watch_t **out);

/* Stops the thread (promptly, even mid-request) and frees the watch. After it
 * returns no callback runs. NULL is a no-op. */
void etcd_watch_free(etcd_watch_t *w);

/* Last revision the watch has delivered (0 before the first). Thread-safe. */
int64_t etcd_watch_revision(const etcd_watch_t *w);

/* Number of times the stream was (re)established; for tests and metrics. */
int etcd_watch_connects(const etcd_watch_t *w);

#endif
