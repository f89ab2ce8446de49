/* graph.cuh - CUDA graphs for decode steps, cached by batch size.
 *
 * A decode step at batch size B launches the same kernels with the same
 * device pointers every time; only the staged index arrays (positions, block
 * tables) change. Capturing the step once per B and replaying it removes
 * ~L*12 launch latencies per step. Invariants the cache keeps: a graph is
 * dropped when the scratch or staging region it captured is reallocated
 * (slc_graph_cache_clear), and at most SLC_N_GRAPHS are kept (LRU). */
#ifndef SL_KERNELS_CUDA_GRAPH_CUH
#define SL_KERNELS_CUDA_GRAPH_CUH

#include "kernels/cuda/common.cuh"

int slc_graph_cache_create(slc_ctx_t *c);
void slc_graph_cache_free(slc_ctx_t *c);
/* Drops every cached graph (device pointers they hold went stale). */
void slc_graph_cache_clear(slc_ctx_t *c);
/* 1: cached (launch it); 0: capture started; <0: error. */
int slc_graph_begin(slc_ctx_t *c, uint32_t key);
int slc_graph_end(slc_ctx_t *c, uint32_t key);
int slc_graph_launch(slc_ctx_t *c, uint32_t key);
bool slc_graph_capturing(const slc_ctx_t *c);

#endif
