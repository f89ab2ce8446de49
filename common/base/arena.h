/* arena.h - a bump allocator for short-lived, many-small-object work.
 *
 * An arena hands out memory from large chunks and frees it all at once with
 * arena_reset(). It exists for protobuf unpacking on hot subscriptions: a
 * KvEventBatch of 256 stored blocks is 260 separate allocations with
 * malloc, one pointer bump each here (bus.c uses an arena per proto
 * subscription; bus_arena_allocator() in common/runtime/bus.h adapts it to
 * protobuf-c).
 *
 * Memory: chunks of at least `chunk_bytes` (0: 64 KiB); a request larger
 * than that gets a chunk of its own. arena_reset() keeps the first chunk
 * and frees the others, so a burst of large messages does not pin memory.
 * Every pointer is aligned to 16 bytes.
 *
 * Thread-safety: none; one owner at a time. arena_free(NULL) is a no-op.
 */
#ifndef SL_ARENA_H
#define SL_ARENA_H

#include <stddef.h>

typedef struct arena arena_t;

/* Creates an empty arena (no chunk is allocated until the first alloc).
 * Returns NULL on ENOMEM. */
arena_t *arena_new(size_t chunk_bytes);
void arena_free(arena_t *a);

/* n bytes (n = 0 gives a valid unique pointer), 16-byte aligned, valid until
 * the next arena_reset() / arena_free(). Returns NULL on ENOMEM or overflow. */
void *arena_alloc(arena_t *a, size_t n);

/* Forgets every allocation; keeps the first chunk for reuse. */
void arena_reset(arena_t *a);

/* Bytes held in chunks (for metrics and tests). */
size_t arena_bytes_held(const arena_t *a);

#endif
