/* discovery.h - service registration and discovery on etcd leases.
 *
 * A process opens one discovery_t, which owns one etcd lease; its instance id
 * is that lease id. Each discovery_register() puts one record under the lease:
 *
 *   key   sluice/v1/<namespace>/<component>/<endpoint>/<instance_id as 16 hex>
 *   value {"instance_id":"<16 hex>","namespace":..,"component":..,"endpoint":..,
 *          "subject":"sluice.<ns>.<component>.<endpoint>.<16 hex>","host":..,
 *          "pid":..,"started_at":"<RFC 3339 UTC>","version":.., <caller fields>}
 *
 * instance_id is a hex string because a lease id does not fit a JSON double.
 * Caller fields (a JSON object) are merged in; the fields above always win.
 *
 * A background thread refreshes the lease every TTL/3 and, once per TTL,
 * checks that its records are still there (one deleted by hand is put back).
 * When etcd is
 * unreachable the process keeps going on what it has (registrations and
 * watch views stay as they are; no removal is reported because etcd is down)
 * and retries with jittered backoff. When etcd answers again and the old lease
 * is gone, it grants a NEW lease, puts every record again under it and calls
 * the instance-change callback. Nothing here ever exits the process.
 *
 * discovery_close() revokes the lease so peers see the removal at once; call
 * it on SIGTERM. A process killed outright disappears when its lease expires
 * (within TTL).
 *
 * Thread-safety: every function may be called from any thread, except that
 * callbacks must not free the watch or close the discovery_t that runs them.
 * Callbacks run on internal threads (the keep-alive thread for instance
 * changes, the watch's thread for add/remove).
 */
#ifndef SL_DISCOVERY_H
#define SL_DISCOVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct discovery discovery_t;
typedef struct discovery_watch discovery_watch_t;

/* Called when the instance id changes (old_id 0: first registration), after
 * the new lease is granted and before any record is put under it, so that
 * what the records announce can be made ready first. It runs with the
 * discovery's lock held (on the registering thread or the keep-alive
 * thread): it must not call back into the same discovery_t. */
typedef void (*discovery_instance_fn)(int64_t old_id, int64_t new_id, void *ud);

typedef struct discovery_opts {
    const char *etcd_url;                     /* NULL: $SLUICE_ETCD, else http://127.0.0.1:2379 */
    const char *ns;                           /* NULL: $SLUICE_NAMESPACE, else "default" */
    int ttl_s;                                /* lease TTL; 0 means 10; 1..3600 */
    int etcd_timeout_ms;                      /* per etcd call; 0 means 2000 */
    discovery_instance_fn on_instance_change; /* may be NULL */
    void *ud;
} discovery_opts_t;

/* One registered instance. In callbacks every pointer is borrowed for the
 * call; from discovery_watch_snapshot()/discovery_list() the strings are owned
 * by the array (free it with discovery_instances_free()). */
typedef struct discovery_instance {
    int64_t instance_id;
    char *key; /* full etcd key */
    char *component;
    char *endpoint;
    char *subject; /* NATS subject of this instance's endpoint */
    char *host;    /* may be "" if the record had none */
    int64_t pid;   /* 0 if absent */
    char *json;    /* the whole record, for fields such as model, block_size */
} discovery_instance_t;

typedef void (*discovery_watch_fn)(const discovery_instance_t *inst, void *ud);

/* Validates options and creates the client and keep-alive machinery. Does not
 * need etcd to be up. Returns 0 and *out, or SL_EINVAL (bad namespace or
 * TTL) / SL_ENOMEM. */
int discovery_open(const discovery_opts_t *opts, discovery_t **out);

/* Registers component/endpoint under this process's lease. meta_json is NULL
 * or a JSON object whose fields are merged into the record. Names must be 1..64
 * chars of [A-Za-z0-9_-]. Returns 0 once the record is in etcd. Returns
 * SL_EUNAVAIL/SL_ETIMEDOUT when etcd cannot be reached now: the registration is
 * still kept and put in the background as soon as etcd answers. SL_EEXIST if
 * this component/endpoint is already registered here; SL_EINVAL for bad names
 * or meta_json that is not an object. */
int discovery_register(discovery_t *d, const char *component, const char *endpoint,
                       const char *meta_json);

/* Current instance id (the lease id), 0 while not registered. Thread-safe. */
int64_t discovery_instance_id(discovery_t *d);

/* The namespace in use (owned by d). */
const char *discovery_namespace(const discovery_t *d);

/* The etcd client d uses (owned by d; thread-safe; valid until close). */
struct etcd *discovery_etcd(discovery_t *d);

/* Stops the keep-alive thread, revokes the lease (so every record of this
 * process vanishes at once; skipped with a warning when etcd is unreachable,
 * the lease then expires) and frees d. Every watch on d must be freed first.
 * NULL is a no-op. */
void discovery_close(discovery_t *d);

/* Watches instances of component (NULL: every component) in d's namespace.
 * The current instances are delivered first as on_add, then changes as they
 * happen; on_add fires again when a known instance's record changes (same
 * key). on_remove receives the last known record of an instance that went.
 * Either callback may be NULL. On etcd trouble the view is kept as it is and
 * resumed (see etcd_watch_prefix). Records that fail validation are logged
 * and skipped. Returns 0 and *out, or SL_EINVAL / SL_ENOMEM. */
int discovery_watch(discovery_t *d, const char *component, discovery_watch_fn on_add,
                    discovery_watch_fn on_remove, void *ud, discovery_watch_t **out);

/* Stops the watch; after it returns no callback runs. NULL is a no-op. */
void discovery_watch_free(discovery_watch_t *w);

/* Copies the watch's current view (the last one seen if etcd is down):
 * *out is an array of *n instances sorted by key; free with
 * discovery_instances_free(). *out may be NULL when *n is 0. */
int discovery_watch_snapshot(discovery_watch_t *w, discovery_instance_t **out, size_t *n);

/* True once the watch has delivered its initial listing. */
bool discovery_watch_synced(discovery_watch_t *w);

/* Lists instances of component (NULL: all) straight from etcd (for tools such
 * as sluice-ctl). Errors as etcd_range_prefix; invalid records are skipped. */
int discovery_list(discovery_t *d, const char *component, discovery_instance_t **out, size_t *n);

void discovery_instances_free(discovery_instance_t *arr, size_t n);

/* Parses one record (key and JSON value) into *out (owned strings; release
 * with discovery_instance_clear()). Returns SL_EINVAL when the key is not a
 * sluice/v1 key or the value is not a valid record. Exposed for tools/tests. */
int discovery_instance_parse(const char *key, const char *value, size_t value_len,
                             discovery_instance_t *out);
void discovery_instance_clear(discovery_instance_t *inst);

#endif
