/* worker_pool.h - the decode workers the frontend can send requests to.
 *
 * Watches component "backend" in etcd (discovery.h) and keeps, per instance,
 * its id, generate subject, served model and context length. Picks workers
 * round-robin among those serving a model, skipping ones the caller excludes
 * (already failed for this request). This is the fallback routing of
 * DESIGN.md; a router hook (RouteRequest over sluice.<ns>.router.route) can
 * sit in front of worker_pool_pick without changing its callers.
 *
 * Ownership: worker_pool_open() returns a pool freed with worker_pool_free()
 * (NULL is a no-op); the discovery_t passed in is borrowed and must outlive
 * the pool. Thread-safety: every function may be called from any thread.
 */
#ifndef SL_FRONTEND_WORKER_POOL_H
#define SL_FRONTEND_WORKER_POOL_H

#include "common/runtime/bus.h"
#include "common/runtime/discovery.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct worker_pool worker_pool_t;

/* One worker as seen by the pool (a copy; no pointers into the pool). */
typedef struct worker_pool_entry {
    int64_t id;
    char subject[BUS_SUBJECT_MAX]; /* generate subject */
    char model[256];
    uint32_t context_length; /* 0 if not announced */
} worker_pool_entry_t;

/* Starts watching. Returns 0 and *out, or SL_EINVAL / SL_ENOMEM. */
int worker_pool_open(discovery_t *d, worker_pool_t **out);
void worker_pool_free(worker_pool_t *p);

/* Picks the next worker serving model (round-robin) whose id is not in
 * exclude (n_exclude ids). Returns 0 and *out; SL_ENOTFOUND when no worker
 * serves the model at all; SL_EUNAVAIL when all that do are excluded. */
int worker_pool_pick(worker_pool_t *p, const char *model, const int64_t *exclude, size_t n_exclude,
                     worker_pool_entry_t *out);

/* Copies the worker with this id serving model into *out. Returns 0, or
 * SL_ENOTFOUND (unknown id, or it serves another model). */
int worker_pool_get(worker_pool_t *p, int64_t id, const char *model, worker_pool_entry_t *out);

/* Called (on discovery's thread, with the pool's lock held: it must not call
 * back into the pool) each time a worker leaves: its lease was revoked or
 * expired. Used to migrate streams from a dead worker at once. */
typedef void (*worker_pool_gone_fn)(int64_t id, void *ud);

/* Sets the one departure listener (fn NULL: none). Once this returns, the
 * previous listener is no longer running and will not be called again, so
 * its ud may be freed. */
void worker_pool_on_gone(worker_pool_t *p, worker_pool_gone_fn fn, void *ud);

/* Number of known workers (all models). */
size_t worker_pool_count(worker_pool_t *p);

/* Number of workers serving model, and the smallest context length among
 * them (0 when none announce one). */
size_t worker_pool_model_info(worker_pool_t *p, const char *model, uint32_t *context_length);

/* Distinct model names with their worker counts: *names is a malloc'd array
 * of *n malloc'd strings, *counts a malloc'd array (either may be NULL when
 * *n is 0). Free with worker_pool_models_free(). */
int worker_pool_models(worker_pool_t *p, char ***names, size_t **counts, size_t *n);
void worker_pool_models_free(char **names, size_t *counts, size_t n);

#endif
