/* safetensors.h - memory-mapped, validated reader of Hugging Face safetensors.
 *
 * Opens one `*.safetensors` file, or a model directory holding either
 * `model.safetensors` or shards listed by `model.safetensors.index.json`, maps
 * every file read-only and indexes its tensors. Files are untrusted: before any
 * tensor is visible the header is checked (8-byte length within bounds and the
 * file, JSON well formed, dtype known, shape product * element size equal to
 * the byte range, ranges inside the file, pairwise non-overlapping, data aligned
 * to the element size, names unique across shards). Every error comes with a
 * text naming the file and, where there is one, the tensor.
 *
 * Ownership: safetensors_open() returns a handle owning the mappings; tensor
 * views (names, shapes, data pointers) stay valid until safetensors_free().
 * Thread-safety: a handle is immutable after open; concurrent readers are fine.
 */
#ifndef SL_ENGINE_SAFETENSORS_H
#define SL_ENGINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define SAFETENSORS_MAX_DIMS 8

typedef enum st_dtype {
    ST_DTYPE_F32 = 0,
    ST_DTYPE_F16,
    ST_DTYPE_BF16,
    ST_DTYPE_F64,
    ST_DTYPE_I64,
    ST_DTYPE_I32,
    ST_DTYPE_I16,
    ST_DTYPE_I8,
    ST_DTYPE_U8,
    ST_DTYPE_BOOL,
    ST_DTYPE_F8_E4M3,
    ST_DTYPE_F8_E5M2,
    ST_DTYPE_COUNT
} st_dtype_t;

typedef struct st_tensor {
    const char *name; /* NUL-terminated, owned by the handle */
    const char *file; /* path of the file holding it, owned by the handle */
    st_dtype_t dtype;
    uint32_t n_dims;
    uint64_t shape[SAFETENSORS_MAX_DIMS]; /* (n_dims), row-major, last dim fastest */
    uint64_t n_elems;
    const void *data; /* mapped, read-only, aligned to the element size */
    size_t n_bytes;
} st_tensor_t;

typedef struct safetensors safetensors_t;

/* Opens path: a `.safetensors` file, or a directory with
 * `model.safetensors.index.json` (all shards it names) or `model.safetensors`.
 * On success returns 0 and *out. On failure returns SL_EFORMAT (malformed
 * content), SL_ENOTFOUND (no weights file), SL_EIO, SL_ENOMEM or -errno, and,
 * when err_text is not NULL, sets *err_text to a malloc'd message the caller
 * frees (naming file and tensor). */
int safetensors_open(const char *path, safetensors_t **out, char **err_text);

/* Frees the handle and unmaps the files. NULL is a no-op. */
void safetensors_free(safetensors_t *st);

/* Number of tensors over all shards. */
size_t safetensors_count(const safetensors_t *st);

/* The i-th tensor in name order (i < count), or NULL. */
const st_tensor_t *safetensors_at(const safetensors_t *st, size_t i);

/* Looks up a tensor by exact name; NULL if absent. O(log n). */
const st_tensor_t *safetensors_find(const safetensors_t *st, const char *name);

/* Element size in bytes of dtype (0 if out of range) and its safetensors name
 * ("F32", "BF16", ...). */
size_t safetensors_dtype_size(st_dtype_t dtype);
const char *safetensors_dtype_name(st_dtype_t dtype);

#endif
