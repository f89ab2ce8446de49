/* threadpool.c - persistent worker threads for the CPU kernels.
 *
 * A job is published by bumping a generation counter; helpers notice it by
 * spinning a short while, then by sleeping on a condition variable. Work is
 * handed out in chunks from an atomic cursor.
 *
 * A helper must *join* a job before it touches the job's fields: one CAS on
 * a word holding (generation, closed bit, joined count). When the caller has
 * run out of chunks it closes the job (sets the bit) and waits only for the
 * helpers that joined. A helper that was asleep, descheduled by other load,
 * or simply late finds the job closed (or a newer generation) and skips it,
 * so the caller never waits for a thread that has nothing to do; that wait
 * (a futex wake-up, or a whole scheduler slice on a busy machine) used to
 * be paid on each of the ~100 ops of a batch-1 decode step. Joined helpers
 * have finished before the caller returns, which is what makes it safe to
 * reuse the job fields for the next job.
 */
#include "kernels/cpu/threadpool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define POOL_SPIN_ITERS  4000
#define POOL_MAX_THREADS 1024
/* join word: generation in the high 32 bits, then the closed bit, then the
 * number of helpers that joined (< POOL_MAX_THREADS) */
#define POOL_JOIN_CLOSED (UINT64_C(1) << 31)
#define POOL_JOIN_COUNT  (POOL_JOIN_CLOSED - 1)

struct sl_cpu_pool {
    int n;              /* threads, caller included */
    int n_started;      /* helpers started */
    pthread_t *threads; /* (n - 1) */
    pthread_mutex_t mu;
    pthread_cond_t cv_work;
    pthread_cond_t cv_done;
    atomic_uint gen;
    atomic_int stop;
    /* current job, written by the caller before gen is bumped */
    sl_cpu_pool_fn fn;
    void *arg;
    size_t n_items;
    size_t grain;
    atomic_size_t next;
    _Atomic uint64_t join; /* (gen << 32) | closed | joined helpers */
    atomic_int finished;   /* joined helpers that are done with the job */
    atomic_int waiting;    /* the caller sleeps on cv_done */
};

typedef struct pool_helper_arg {
    sl_cpu_pool_t *pool;
    int tid;
} pool_helper_arg_t;

static inline void pool_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

int sl_cpu_pool_default_threads(void) {
    const char *env = getenv("SLUICE_THREADS");
    if (env && *env) {
        char *end = NULL;
        errno = 0;
        long v = strtol(env, &end, 10);
        if (errno == 0 && end && *end == '\0' && v > 0)
            return v > POOL_MAX_THREADS ? POOL_MAX_THREADS : (int)v;
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int c = CPU_COUNT(&set);
        if (c > 0) return c > POOL_MAX_THREADS ? POOL_MAX_THREADS : c;
    }
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    if (c < 1) c = 1;
    return c > POOL_MAX_THREADS ? POOL_MAX_THREADS : (int)c;
}

static void pool_run_chunks(sl_cpu_pool_t *pool, int tid) {
    size_t n = pool->n_items, grain = pool->grain;
    for (;;) {
        size_t b = atomic_fetch_add_explicit(&pool->next, grain, memory_order_relaxed);
        if (b >= n) break;
        size_t e = n - b < grain ? n : b + grain;
        pool->fn(pool->arg, b, e, tid);
    }
}

/* Joins job g unless it is closed or no longer current. */
static bool pool_join(sl_cpu_pool_t *pool, unsigned g) {
    uint64_t v = atomic_load_explicit(&pool->join, memory_order_acquire);
    for (;;) {
        if ((unsigned)(v >> 32) != g || (v & POOL_JOIN_CLOSED)) return false;
        if (atomic_compare_exchange_weak_explicit(&pool->join, &v, v + 1, memory_order_acq_rel,
                                                  memory_order_acquire))
            return true;
    }
}

static void *pool_helper_main(void *p) {
    pool_helper_arg_t a = *(pool_helper_arg_t *)p;
    free(p);
    sl_cpu_pool_t *pool = a.pool;
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load_explicit(&pool->gen, memory_order_acquire);
        for (int i = 0; g == seen && i < POOL_SPIN_ITERS; i++) {
            pool_cpu_relax();
            g = atomic_load_explicit(&pool->gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&pool->mu);
            while ((g = atomic_load_explicit(&pool->gen, memory_order_acquire)) == seen)
                pthread_cond_wait(&pool->cv_work, &pool->mu);
            pthread_mutex_unlock(&pool->mu);
        }
        seen = g;
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) break;
        if (!pool_join(pool, g)) continue; /* closed already, or superseded */
        pool_run_chunks(pool, a.tid);
        atomic_fetch_add_explicit(&pool->finished, 1, memory_order_seq_cst);
        if (atomic_load_explicit(&pool->waiting, memory_order_seq_cst)) {
            pthread_mutex_lock(&pool->mu);
            pthread_cond_signal(&pool->cv_done);
            pthread_mutex_unlock(&pool->mu);
        }
    }
    return NULL;
}

sl_cpu_pool_t *sl_cpu_pool_create(int n_threads) {
    sl_cpu_pool_t *pool = NULL;
    if (n_threads <= 0) n_threads = sl_cpu_pool_default_threads();
    if (n_threads > POOL_MAX_THREADS) n_threads = POOL_MAX_THREADS;
    pool = calloc(1, sizeof *pool);
    if (!pool) goto fail;
    pool->n = n_threads;
    atomic_init(&pool->gen, 0);
    atomic_init(&pool->stop, 0);
    atomic_init(&pool->next, 0);
    atomic_init(&pool->join, 0);
    atomic_init(&pool->finished, 0);
    atomic_init(&pool->waiting, 0);
    if (pthread_mutex_init(&pool->mu, NULL) != 0) {
        free(pool);
        pool = NULL;
        goto fail;
    }
    pthread_cond_init(&pool->cv_work, NULL);
    pthread_cond_init(&pool->cv_done, NULL);
    if (n_threads > 1) {
        pool->threads = calloc((size_t)n_threads - 1, sizeof *pool->threads);
        if (!pool->threads) goto fail;
        for (int i = 1; i < n_threads; i++) {
            pool_helper_arg_t *a = malloc(sizeof *a);
            if (!a) goto fail;
            a->pool = pool;
            a->tid = i;
            if (pthread_create(&pool->threads[i - 1], NULL, pool_helper_main, a) != 0) {
                free(a);
                goto fail;
            }
            pool->n_started++;
        }
    }
    return pool;
fail:
    sl_cpu_pool_free(pool);
    return NULL;
}

void sl_cpu_pool_free(sl_cpu_pool_t *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->mu);
    atomic_store_explicit(&pool->stop, 1, memory_order_release);
    atomic_fetch_add_explicit(&pool->gen, 1, memory_order_acq_rel);
    pthread_cond_broadcast(&pool->cv_work);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < pool->n_started; i++) pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->cv_work);
    pthread_cond_destroy(&pool->cv_done);
    pthread_mutex_destroy(&pool->mu);
    free(pool->threads);
    free(pool);
}

int sl_cpu_pool_size(const sl_cpu_pool_t *pool) {
    return pool ? pool->n : 1;
}

void sl_cpu_pool_for(sl_cpu_pool_t *pool, size_t n, size_t grain, sl_cpu_pool_fn fn, void *arg) {
    if (n == 0) return;
    int nt = pool ? pool->n_started + 1 : 1;
    if (grain == 0) grain = (n + (size_t)nt - 1) / (size_t)nt;
    if (grain == 0) grain = 1;
    if (nt == 1 || n <= grain) {
        fn(arg, 0, n, 0);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    pool->n_items = n;
    pool->grain = grain;
    atomic_store_explicit(&pool->next, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->finished, 0, memory_order_relaxed);
    unsigned g = atomic_load_explicit(&pool->gen, memory_order_relaxed) + 1;
    atomic_store_explicit(&pool->join, (uint64_t)g << 32, memory_order_release);
    pthread_mutex_lock(&pool->mu);
    atomic_store_explicit(&pool->gen, g, memory_order_release);
    pthread_cond_broadcast(&pool->cv_work);
    pthread_mutex_unlock(&pool->mu);

    pool_run_chunks(pool, 0);

    /* no chunk is left: close the job and wait for those who joined */
    uint64_t v = atomic_fetch_or_explicit(&pool->join, POOL_JOIN_CLOSED, memory_order_acq_rel);
    int joined = (int)(v & POOL_JOIN_COUNT);
    for (int i = 0; i < POOL_SPIN_ITERS; i++) {
        if (atomic_load_explicit(&pool->finished, memory_order_acquire) == joined) return;
        pool_cpu_relax();
    }
    pthread_mutex_lock(&pool->mu);
    atomic_store_explicit(&pool->waiting, 1, memory_order_seq_cst);
    while (atomic_load_explicit(&pool->finished, memory_order_seq_cst) != joined)
        pthread_cond_wait(&pool->cv_done, &pool->mu);
    atomic_store_explicit(&pool->waiting, 0, memory_order_relaxed);
    pthread_mutex_unlock(&pool->mu);
}
