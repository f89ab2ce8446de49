/* active_seqs.h - the router's predicted load per worker.
 *
 * Every routed request becomes an active sequence on its worker at routing
 * time (this router's decisions, and other replicas' via ActiveSeqEvent ADD)
 * and leaves when it finishes (ActiveSeqEvent FREE, sent when the stream
 * completes) or after a TTL (a FREE that was lost). A worker's load is the
 * sum of its sequences' blocks: each sequence counts its full context, so a
 * prefix shared by 50 sequences counts 50 times (compute and decode slots
 * scale per sequence; counting it once is what lets one warm worker collect
 * all traffic).
 *
 * LoadMetrics correct the prediction without drifting: a report of m running
 * plus waiting sequences is compared with the sequences this router tracks
 * that are older than settle_ms (younger ones may not have reached the worker
 * yet); the difference times the worker's mean blocks per sequence is the
 * correction, replaced by each report and dropped when reports stop for
 * stale_ms. So a lost FREE or traffic from elsewhere (a frontend that fell
 * back to round-robin) shows up within one report period.
 *
 * Ownership: active_seqs_new() allocates; active_seqs_free() frees.
 * Thread-safety: none; the router serializes calls under its lock.
 * Errors: 0 or negative SL_E* codes.
 */
#ifndef SL_ACTIVE_SEQS_H
#define SL_ACTIVE_SEQS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ACTIVE_SEQS_ID_MAX 128 /* longest request id kept (bytes, without NUL) */

typedef struct active_seqs active_seqs_t;

typedef struct active_seqs_opts {
    int64_t ttl_ms;    /* a sequence never freed is dropped after this; 0: 600000 */
    int64_t settle_ms; /* newer additions are on top of a report; 0: 300 */
    int64_t stale_ms;  /* a report older than this is ignored; 0: 2000 */
} active_seqs_opts_t;

/* opts may be NULL (defaults). Returns 0 and *out, SL_EINVAL or SL_ENOMEM. */
int active_seqs_new(active_seqs_t **out, const active_seqs_opts_t *opts);
void active_seqs_free(active_seqs_t *a); /* NULL: no-op */

/* Adds a sequence of n_blocks context blocks (overlap of them cached) on
 * worker. Returns 0; SL_EEXIST if request_id is active already (nothing
 * changes: replicas see their own ADDs come back); SL_EINVAL (empty or over
 * ACTIVE_SEQS_ID_MAX id); SL_ECANCELLED if the id was finished before it
 * was added (see active_seqs_finish); SL_ENOMEM. */
int active_seqs_add(active_seqs_t *a, const char *request_id, uint64_t worker_id, uint32_t n_blocks,
                    uint32_t overlap, int64_t now_ms);

/* Marks the sequence's prefill done (it stops counting as pending prefill).
 * Returns 0 or SL_ENOTFOUND. */
int active_seqs_prefill_done(active_seqs_t *a, const char *request_id);

/* Removes a finished sequence. Returns 0, or SL_ENOTFOUND: then the id is
 * remembered for a minute, and an ADD for it arriving later (a replica's ADD
 * overtaken by the FREE: NATS orders messages per publisher only) is
 * ignored. */
int active_seqs_finish(active_seqs_t *a, const char *request_id, int64_t now_ms);

/* Drops every sequence and the report of a worker (it left). */
void active_seqs_worker_remove(active_seqs_t *a, uint64_t worker_id);

/* Applies a LoadMetrics report (running + waiting sequences) at now_ms. */
void active_seqs_report(active_seqs_t *a, uint64_t worker_id, uint32_t running_and_waiting,
                        int64_t now_ms);

/* Applies a LoadMetrics report of the worker's queued prefill, in blocks
 * (pending_prefill_tokens / block size, rounded up), at now_ms. */
void active_seqs_report_queue(active_seqs_t *a, uint64_t worker_id, uint64_t pending_blocks,
                              int64_t now_ms);

/* Predicted prefill blocks queued on worker at now_ms: the last queue report
 * (while fresh, see stale_ms) plus the uncached blocks of sequences added
 * since shortly before it (ACTIVE_SEQS_QUEUE_MARGIN_MS: they may not have
 * reached the worker when it reported); without a fresh report, the
 * uncached blocks of sequences added within settle_ms. >= 0. */
double active_seqs_queued(const active_seqs_t *a, uint64_t worker_id, int64_t now_ms);

#define ACTIVE_SEQS_QUEUE_MARGIN_MS 50

/* Predicted active blocks of worker at now_ms (>= 0; 0 for unknown). */
double active_seqs_load(const active_seqs_t *a, uint64_t worker_id, int64_t now_ms);

/* Sequences tracked on worker, and blocks still waiting for prefill there. */
size_t active_seqs_count(const active_seqs_t *a, uint64_t worker_id);
uint64_t active_seqs_pending_prefill(const active_seqs_t *a, uint64_t worker_id);

/* Sequences tracked in all. */
size_t active_seqs_total(const active_seqs_t *a);

/* Drops sequences older than the TTL; returns how many. */
size_t active_seqs_expire(active_seqs_t *a, int64_t now_ms);

#endif
