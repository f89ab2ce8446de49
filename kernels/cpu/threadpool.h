/* threadpool.h - a small persistent thread pool with a parallel-for.
 *
 * The CPU kernels split each op into index ranges and run them on a fixed
 * set of threads that live as long as the pool. The calling thread takes part
 * as thread 0, so a pool of n threads starts n - 1 helpers. Between jobs the
 * helpers spin briefly (decode issues many small ops back to back) and then
 * sleep on a condition variable, so an idle pool costs no CPU.
 *
 * Thread-safety: one sl_cpu_pool_for() at a time per pool (the CPU backend
 * runs one op at a time); fn must not call back into the same pool.
 */
#ifndef SL_KERNELS_CPU_THREADPOOL_H
#define SL_KERNELS_CPU_THREADPOOL_H

#include <stddef.h>

typedef struct sl_cpu_pool sl_cpu_pool_t;

/* Runs items [begin, end) on thread tid (0 <= tid < pool size). */
typedef void (*sl_cpu_pool_fn)(void *arg, size_t begin, size_t end, int tid);

/* Number of threads to use when none is given: $SLUICE_THREADS if it is a
 * positive integer (capped at 1024), else the CPUs this process may run on. */
int sl_cpu_pool_default_threads(void);

/* Creates a pool of n_threads (0 = sl_cpu_pool_default_threads()), starting
 * n_threads - 1 helper threads. Returns NULL on failure (no thread is left
 * running). Free with sl_cpu_pool_free(). */
sl_cpu_pool_t *sl_cpu_pool_create(int n_threads);

/* Stops and joins the helpers and frees the pool. NULL is a no-op. */
void sl_cpu_pool_free(sl_cpu_pool_t *pool);

/* Number of threads, the caller included (>= 1). */
int sl_cpu_pool_size(const sl_cpu_pool_t *pool);

/* Calls fn over [0, n) in chunks of grain items (0 = split evenly), spread
 * over the pool's threads, and returns when all chunks are done. A NULL pool
 * or a job too small to split runs inline on the caller as tid 0. */
void sl_cpu_pool_for(sl_cpu_pool_t *pool, size_t n, size_t grain, sl_cpu_pool_fn fn, void *arg);

#endif
