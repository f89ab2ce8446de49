/* yardstick.h - what this machine can do, measured the same way everywhere.
 *
 * Benchmarks report their figures as fractions of these yardsticks, measured
 * in the same run: the all-thread memory read bandwidth (STREAM-style vector
 * sum, each pool thread reading its own contiguous part after first-touching
 * it) and OpenBLAS SGEMM. Both return the best of several timed repetitions
 * after a warm-up, and 0 when memory runs out. Not thread-safe: call from
 * one thread while nothing else runs on the pool.
 */
#ifndef SL_KERNELS_CPU_YARDSTICK_H
#define SL_KERNELS_CPU_YARDSTICK_H

#include "kernels/cpu/threadpool.h"

#include <stddef.h>

/* Read bandwidth in GB/s over a buffer of about bytes, on every pool thread. */
double cpu_yardstick_read_bw(sl_cpu_pool_t *pool, size_t bytes);

/* GFLOP/s of OpenBLAS C(M,N) = A(M,K) B(N,K)^T on nt threads. Leaves OpenBLAS
 * at one thread afterwards (the CPU backend's setting). */
double cpu_yardstick_sgemm(int nt, int M, int N, int K);

#endif
