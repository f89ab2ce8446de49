/* arena.c - bump allocator (see arena.h). */
#include "common/base/arena.h"

#include <stdint.h>
#include <stdlib.h>

#define ARENA_ALIGN         16
#define ARENA_DEFAULT_CHUNK (64 * 1024)

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t cap, used;
    _Alignas(ARENA_ALIGN) unsigned char data[];
} arena_chunk_t;

struct arena {
    arena_chunk_t *head; /* current chunk; the first one is last in the list */
    size_t chunk_bytes, held;
};

arena_t *arena_new(size_t chunk_bytes) {
    arena_t *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->chunk_bytes = chunk_bytes ? chunk_bytes : ARENA_DEFAULT_CHUNK;
    return a;
}

void arena_free(arena_t *a) {
    if (!a) return;
    for (arena_chunk_t *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(a);
}

void *arena_alloc(arena_t *a, size_t n) {
    if (!a) return NULL;
    if (n > SIZE_MAX - 2 * ARENA_ALIGN - sizeof(arena_chunk_t)) return NULL;
    size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (need == 0) need = ARENA_ALIGN;
    arena_chunk_t *c = a->head;
    if (!c || c->cap - c->used < need) {
        size_t cap = need > a->chunk_bytes ? need : a->chunk_bytes;
        c = malloc(sizeof *c + cap);
        if (!c) return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = a->head;
        a->head = c;
        a->held += cap;
    }
    void *p = c->data + c->used;
    c->used += need;
    return p;
}

void arena_reset(arena_t *a) {
    if (!a || !a->head) return;
    arena_chunk_t *c = a->head;
    while (c->next) { /* free all but the first (oldest) chunk */
        arena_chunk_t *next = c->next;
        a->held -= c->cap;
        free(c);
        c = next;
    }
    c->used = 0;
    a->head = c;
}

size_t arena_bytes_held(const arena_t *a) {
    return a ? a->held : 0;
}
