/* tp.cuh - tensor parallelism over the GPUs of one machine with NCCL.
 *
 * One worker process drives N GPUs: ncclCommInitAll over the device list,
 * and all-reduces issued as one ncclGroupStart/End so a single thread can
 * drive every rank. libnccl.so.2 is dlopen()ed on first use: single-GPU and
 * CPU-only machines never need it. The shard plan (model side, see
 * kernels/cuda/README.md): q/k/v and gate/up column-parallel (W rows split
 * along N), o_proj and down_proj row-parallel (split along K), one f32
 * all-reduce after attention's o_proj and one after the MLP's down_proj. */
#ifndef SL_KERNELS_CUDA_TP_CUH
#define SL_KERNELS_CUDA_TP_CUH

#include "kernels/cuda/common.cuh"

/* Opens communicators for devices[0..n) (n >= 1, distinct ordinals). Returns
 * 0, SL_EINVAL, SL_EUNAVAIL (no libnccl), SL_ENOMEM or SL_EDEVICE. */
int slc_tp_open(slc_ctx_t *c, int n, const int *devices);
/* In-place sum of bufs[r] (count f32 on device r) across ranks. */
int slc_tp_allreduce(slc_ctx_t *c, float *const *bufs, size_t count);
int slc_tp_size(const slc_ctx_t *c);
void slc_tp_close(slc_ctx_t *c);

#endif
