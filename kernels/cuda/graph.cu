/* graph.cu - decode graph cache; see graph.cuh. Host code only. */
#include "kernels/cuda/graph.cuh"

#include <stdlib.h>

typedef struct slc_graph_entry {
    uint32_t key;
    uint64_t last_use;
    cudaGraphExec_t exec; /* NULL: empty slot */
} slc_graph_entry_t;

struct slc_graph_cache {
    slc_graph_entry_t e[SLC_N_GRAPHS];
    uint64_t clock;
    bool capturing;
};

int slc_graph_cache_create(slc_ctx_t *c) {
    c->graphs = (struct slc_graph_cache *)calloc(1, sizeof *c->graphs);
    return c->graphs ? 0 : SL_ENOMEM;
}

void slc_graph_cache_clear(slc_ctx_t *c) {
    if (!c->graphs) return;
    for (int i = 0; i < SLC_N_GRAPHS; i++) {
        if (c->graphs->e[i].exec) cudaGraphExecDestroy(c->graphs->e[i].exec);
        c->graphs->e[i].exec = NULL;
    }
}

void slc_graph_cache_free(slc_ctx_t *c) {
    if (!c->graphs) return;
    slc_graph_cache_clear(c);
    free(c->graphs);
    c->graphs = NULL;
}

bool slc_graph_capturing(const slc_ctx_t *c) {
    return c->graphs && c->graphs->capturing;
}

static slc_graph_entry_t *graph_find(slc_ctx_t *c, uint32_t key) {
    for (int i = 0; i < SLC_N_GRAPHS; i++)
        if (c->graphs->e[i].exec && c->graphs->e[i].key == key) return &c->graphs->e[i];
    return NULL;
}

int slc_graph_begin(slc_ctx_t *c, uint32_t key) {
    if (!c->graphs || c->graphs->capturing) return SL_EINVAL;
    if (graph_find(c, key)) return 1;
    int rc = SLC_CUDA(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    if (rc == 0) c->graphs->capturing = true;
    return rc;
}

int slc_graph_end(slc_ctx_t *c, uint32_t key) {
    int rc = 0;
    cudaGraph_t g = NULL;
    cudaGraphExec_t exec = NULL;
    if (!c->graphs || !c->graphs->capturing) return SL_EINVAL;
    c->graphs->capturing = false;
    if ((rc = SLC_CUDA(cudaStreamEndCapture(c->stream, &g)))) goto out;
    if ((rc = SLC_CUDA(cudaGraphInstantiate(&exec, g, 0)))) goto out;
    {
        slc_graph_entry_t *slot = &c->graphs->e[0];
        for (int i = 0; i < SLC_N_GRAPHS; i++) { /* empty slot, else least recently used */
            slc_graph_entry_t *e = &c->graphs->e[i];
            if (!e->exec) {
                slot = e;
                break;
            }
            if (e->last_use < slot->last_use) slot = e;
        }
        if (slot->exec) cudaGraphExecDestroy(slot->exec);
        slot->exec = exec;
        slot->key = key;
        slot->last_use = ++c->graphs->clock;
        exec = NULL;
    }
out:
    if (exec) cudaGraphExecDestroy(exec);
    if (g) cudaGraphDestroy(g);
    return rc;
}

int slc_graph_launch(slc_ctx_t *c, uint32_t key) {
    if (!c->graphs || c->graphs->capturing) return SL_EINVAL;
    slc_graph_entry_t *e = graph_find(c, key);
    if (!e) return SL_ENOTFOUND;
    e->last_use = ++c->graphs->clock;
    return SLC_CUDA(cudaGraphLaunch(e->exec, c->stream));
}
