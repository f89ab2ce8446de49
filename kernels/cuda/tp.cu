/* tp.cu - NCCL communicators and all-reduce, NCCL loaded at run time. */
#include "kernels/cuda/tp.cuh"

#include <dlfcn.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

typedef ncclResult_t (*comm_init_all_fn)(ncclComm_t *, int, const int *);
typedef ncclResult_t (*all_reduce_fn)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t,
                                      ncclComm_t, cudaStream_t);
typedef ncclResult_t (*group_fn)(void);
typedef ncclResult_t (*comm_destroy_fn)(ncclComm_t);
typedef const char *(*error_string_fn)(ncclResult_t);

struct slc_tp {
    void *dl;
    int n;
    int *devices;          /* (n) */
    ncclComm_t *comms;     /* (n) */
    cudaStream_t *streams; /* (n) one per device; rank 0 uses the backend's stream */
    bool own_stream0;
    all_reduce_fn all_reduce;
    group_fn group_start, group_end;
    comm_destroy_fn comm_destroy;
    error_string_fn error_string;
};

static int tp_rc(slc_tp *tp, ncclResult_t r, const char *what) {
    if (r == ncclSuccess) return 0;
    slc_log_error(what, tp->error_string ? tp->error_string(r) : "nccl error", __FILE__, __LINE__);
    return SL_EDEVICE;
}

template <typename F> static F tp_sym(void *dl, const char *name) {
    F f;
    void *p = dlsym(dl, name);
    memcpy(&f, &p, sizeof f);
    return f;
}

void slc_tp_close(slc_ctx_t *c) {
    slc_tp *tp = c->tp;
    if (!tp) return;
    for (int r = 0; r < tp->n; r++) {
        if (tp->comms && tp->comms[r] && tp->comm_destroy) tp->comm_destroy(tp->comms[r]);
        if (tp->streams && tp->streams[r] && r > 0) {
            cudaSetDevice(tp->devices[r]);
            cudaStreamDestroy(tp->streams[r]);
        }
    }
    cudaSetDevice(c->device);
    free(tp->devices);
    free(tp->comms);
    free(tp->streams);
    if (tp->dl) dlclose(tp->dl);
    free(tp);
    c->tp = NULL;
}

int slc_tp_open(slc_ctx_t *c, int n, const int *devices) {
    int rc = 0, count = 0;
    slc_tp *tp = NULL;
    comm_init_all_fn init_all;
    if (n < 1 || n > 64 || !devices || c->tp || devices[0] != c->device) return SL_EINVAL;
    if ((rc = SLC_CUDA(cudaGetDeviceCount(&count)))) return rc;
    for (int i = 0; i < n; i++) {
        if (devices[i] < 0 || devices[i] >= count) return SL_EINVAL;
        for (int j = 0; j < i; j++)
            if (devices[i] == devices[j]) return SL_EINVAL;
    }
    tp = (slc_tp *)calloc(1, sizeof *tp);
    if (!tp) return SL_ENOMEM;
    c->tp = tp;
    tp->dl = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!tp->dl) {
        rc = SL_EUNAVAIL;
        goto out;
    }
    init_all = tp_sym<comm_init_all_fn>(tp->dl, "ncclCommInitAll");
    tp->all_reduce = tp_sym<all_reduce_fn>(tp->dl, "ncclAllReduce");
    tp->group_start = tp_sym<group_fn>(tp->dl, "ncclGroupStart");
    tp->group_end = tp_sym<group_fn>(tp->dl, "ncclGroupEnd");
    tp->comm_destroy = tp_sym<comm_destroy_fn>(tp->dl, "ncclCommDestroy");
    tp->error_string = tp_sym<error_string_fn>(tp->dl, "ncclGetErrorString");
    if (!init_all || !tp->all_reduce || !tp->group_start || !tp->group_end || !tp->comm_destroy) {
        rc = SL_EUNAVAIL;
        goto out;
    }
    tp->devices = (int *)calloc((size_t)n, sizeof(int));
    tp->comms = (ncclComm_t *)calloc((size_t)n, sizeof(ncclComm_t));
    tp->streams = (cudaStream_t *)calloc((size_t)n, sizeof(cudaStream_t));
    if (!tp->devices || !tp->comms || !tp->streams) {
        rc = SL_ENOMEM;
        goto out;
    }
    memcpy(tp->devices, devices, (size_t)n * sizeof(int));
    tp->n = n;
    tp->streams[0] = c->stream;
    for (int r = 1; r < n; r++) {
        if ((rc = SLC_CUDA(cudaSetDevice(devices[r])))) goto out;
        if ((rc = SLC_CUDA(cudaStreamCreateWithFlags(&tp->streams[r], cudaStreamNonBlocking))))
            goto out;
    }
    if ((rc = SLC_CUDA(cudaSetDevice(c->device)))) goto out;
    rc = tp_rc(tp, init_all(tp->comms, n, devices), "ncclCommInitAll");
out:
    if (rc) slc_tp_close(c);
    return rc;
}

int slc_tp_allreduce(slc_ctx_t *c, float *const *bufs, size_t count) {
    slc_tp *tp = c->tp;
    int rc = 0, rc2;
    if (!tp || !bufs) return SL_EINVAL;
    if ((rc = tp_rc(tp, tp->group_start(), "ncclGroupStart"))) return rc;
    for (int r = 0; r < tp->n && rc == 0; r++)
        rc = tp_rc(tp,
                   tp->all_reduce(bufs[r], bufs[r], count, ncclFloat32, ncclSum, tp->comms[r],
                                  tp->streams[r]),
                   "ncclAllReduce");
    rc2 = tp_rc(tp, tp->group_end(), "ncclGroupEnd"); /* always close the group */
    return rc ? rc : rc2;
}

int slc_tp_size(const slc_ctx_t *c) {
    return c->tp ? c->tp->n : 1;
}
