/* safetensors.c - validated mmap reader for (sharded) safetensors weights.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {...}}
 * then the data region; offsets are relative to its start (8 + N).
 */
#include "common/engine/safetensors.h"

#include "common/base/err.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The reference implementation refuses headers over 100 MB; so do we. */
#define ST_HEADER_MAX   (100u * 1024u * 1024u)
#define ST_INDEX_MAX    (64u * 1024u * 1024u)
#define ST_NAME_MAX     1024u
#define ST_MAX_FILES    4096u
#define ST_JSON_INT_MAX 9007199254740992.0 /* 2^53: exact in a double */

typedef struct st_file {
    char *path;
    void *map;
    size_t size;
} st_file_t;

struct safetensors {
    st_file_t *files; /* (n_files) */
    size_t n_files;
    st_tensor_t *tensors; /* (n_tensors), sorted by name */
    size_t n_tensors;
    size_t cap_tensors;
};

static const struct {
    const char *name;
    size_t size;
} st_dtypes[ST_DTYPE_COUNT] = {
    [ST_DTYPE_F32] = {"F32", 4},         [ST_DTYPE_F16] = {"F16", 2},
    [ST_DTYPE_BF16] = {"BF16", 2},       [ST_DTYPE_F64] = {"F64", 8},
    [ST_DTYPE_I64] = {"I64", 8},         [ST_DTYPE_I32] = {"I32", 4},
    [ST_DTYPE_I16] = {"I16", 2},         [ST_DTYPE_I8] = {"I8", 1},
    [ST_DTYPE_U8] = {"U8", 1},           [ST_DTYPE_BOOL] = {"BOOL", 1},
    [ST_DTYPE_F8_E4M3] = {"F8_E4M3", 1}, [ST_DTYPE_F8_E5M2] = {"F8_E5M2", 1},
};

size_t safetensors_dtype_size(st_dtype_t dtype) {
    return (unsigned)dtype < ST_DTYPE_COUNT ? st_dtypes[dtype].size : 0;
}

const char *safetensors_dtype_name(st_dtype_t dtype) {
    return (unsigned)dtype < ST_DTYPE_COUNT ? st_dtypes[dtype].name : "?";
}

/* Sets *err_text once (the first, most specific error wins). */
static void st_errf(char **err_text, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void st_errf(char **err_text, const char *fmt, ...) {
    if (!err_text || *err_text) return;
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    *err_text = s;
}

/* A JSON number that is a non-negative integer below 2^53. */
static bool st_json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return false;
    double d = j->valuedouble;
    if (!(d >= 0.0) || d > ST_JSON_INT_MAX || floor(d) != d) return false;
    *out = (uint64_t)d;
    return true;
}

static int st_tensor_push(safetensors_t *st, st_tensor_t **slot) {
    if (st->n_tensors == st->cap_tensors) {
        size_t cap = st->cap_tensors ? st->cap_tensors * 2 : 64;
        st_tensor_t *t = realloc(st->tensors, cap * sizeof *t);
        if (!t) return SL_ENOMEM;
        st->tensors = t;
        st->cap_tensors = cap;
    }
    *slot = &st->tensors[st->n_tensors];
    memset(*slot, 0, sizeof **slot);
    return 0;
}

typedef struct st_range {
    uint64_t begin, end;
    const char *name;
} st_range_t;

static int st_range_cmp(const void *a, const void *b) {
    const st_range_t *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Parses one tensor entry of a header. On success appends it to st. */
static int st_entry_parse(safetensors_t *st, const st_file_t *f, size_t data_start,
                          size_t data_size, const cJSON *e, char **err_text) {
    const char *name = e->string;
    size_t name_len = name ? strnlen(name, ST_NAME_MAX + 1) : 0;
    if (name_len == 0 || name_len > ST_NAME_MAX) {
        st_errf(err_text, "%s: tensor name empty or longer than %u bytes", f->path, ST_NAME_MAX);
        return SL_EFORMAT;
    }
    if (!cJSON_IsObject(e)) {
        st_errf(err_text, "%s: tensor '%s': entry is not an object", f->path, name);
        return SL_EFORMAT;
    }
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo)) {
        st_errf(err_text, "%s: tensor '%s': needs string dtype, array shape and data_offsets",
                f->path, name);
        return SL_EFORMAT;
    }
    int dt = -1;
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (strcmp(jd->valuestring, st_dtypes[i].name) == 0) dt = i;
    if (dt < 0) {
        st_errf(err_text, "%s: tensor '%s': unknown dtype '%.32s'", f->path, name, jd->valuestring);
        return SL_EFORMAT;
    }
    int n_dims = cJSON_GetArraySize(js);
    if (n_dims > SAFETENSORS_MAX_DIMS) {
        st_errf(err_text, "%s: tensor '%s': %d dims (max %d)", f->path, name, n_dims,
                SAFETENSORS_MAX_DIMS);
        return SL_EFORMAT;
    }
    uint64_t shape[SAFETENSORS_MAX_DIMS] = {0};
    uint64_t n_elems = 1;
    int d = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, js) {
        if (!st_json_uint(it, &shape[d]) || __builtin_mul_overflow(n_elems, shape[d], &n_elems)) {
            st_errf(err_text, "%s: tensor '%s': bad shape (dim %d not a size or product overflows)",
                    f->path, name, d);
            return SL_EFORMAT;
        }
        d++;
    }
    uint64_t begin, end, n_bytes;
    if (cJSON_GetArraySize(jo) != 2 || !st_json_uint(cJSON_GetArrayItem(jo, 0), &begin) ||
        !st_json_uint(cJSON_GetArrayItem(jo, 1), &end) || begin > end) {
        st_errf(err_text, "%s: tensor '%s': data_offsets must be [begin, end] with begin <= end",
                f->path, name);
        return SL_EFORMAT;
    }
    size_t esz = st_dtypes[dt].size;
    if (__builtin_mul_overflow(n_elems, (uint64_t)esz, &n_bytes) || n_bytes != end - begin) {
        st_errf(
            err_text,
            "%s: tensor '%s': shape needs %llu elements of %zu bytes but data_offsets span %llu "
            "bytes",
            f->path, name, (unsigned long long)n_elems, esz, (unsigned long long)(end - begin));
        return SL_EFORMAT;
    }
    if (end > data_size) {
        st_errf(err_text,
                "%s: tensor '%s': data [%llu, %llu) beyond the data region of %zu bytes (file "
                "truncated?)",
                f->path, name, (unsigned long long)begin, (unsigned long long)end, data_size);
        return SL_EFORMAT;
    }
    if ((data_start + begin) % esz != 0) {
        st_errf(err_text, "%s: tensor '%s': data at file offset %llu not aligned to %zu bytes",
                f->path, name, (unsigned long long)(data_start + begin), esz);
        return SL_EFORMAT;
    }
    st_tensor_t *t;
    int rc = st_tensor_push(st, &t);
    if (rc) return rc;
    char *nm = strndup(name, name_len);
    if (!nm) return SL_ENOMEM;
    t->name = nm;
    t->file = f->path;
    t->dtype = (st_dtype_t)dt;
    t->n_dims = (uint32_t)n_dims;
    memcpy(t->shape, shape, sizeof shape);
    t->n_elems = n_elems;
    t->data = (const char *)f->map + data_start + begin;
    t->n_bytes = (size_t)n_bytes;
    st->n_tensors++;
    return 0;
}

/* Maps one file and parses its header; appends its tensors to st. */
static int st_file_open(safetensors_t *st, const char *path, char **err_text) {
    int rc = 0, fd = -1;
    cJSON *root = NULL;
    st_range_t *ranges = NULL;
    if (st->n_files >= ST_MAX_FILES) {
        st_errf(err_text, "%s: more than %u shards", path, ST_MAX_FILES);
        return SL_EFORMAT;
    }
    st_file_t *files = realloc(st->files, (st->n_files + 1) * sizeof *files);
    if (!files) return SL_ENOMEM;
    st->files = files;
    st_file_t *f = &st->files[st->n_files];
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) return SL_ENOMEM;
    st->n_files++; /* from here on safetensors_free() cleans f up */

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = errno == ENOENT ? SL_ENOTFOUND : -errno;
        st_errf(err_text, "%s: cannot open: %s", path, strerror(errno));
        goto out;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        rc = SL_EIO;
        st_errf(err_text, "%s: not a regular file", path);
        goto out;
    }
    if (sb.st_size < 8) {
        rc = SL_EFORMAT;
        st_errf(err_text, "%s: %lld bytes is too small for a safetensors file (truncated?)", path,
                (long long)sb.st_size);
        goto out;
    }
    f->size = (size_t)sb.st_size;
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        rc = -errno;
        st_errf(err_text, "%s: mmap failed: %s", path, strerror(errno));
        goto out;
    }
    const unsigned char *p = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen < 2 || hlen > ST_HEADER_MAX || hlen > f->size - 8) {
        rc = SL_EFORMAT;
        st_errf(err_text,
                "%s: header length %llu invalid (file has %zu bytes, limit %u; truncated or not "
                "safetensors?)",
                path, (unsigned long long)hlen, f->size, ST_HEADER_MAX);
        goto out;
    }
    root = cJSON_ParseWithLength((const char *)p + 8, (size_t)hlen);
    if (!cJSON_IsObject(root)) {
        rc = SL_EFORMAT;
        st_errf(err_text, "%s: header is not a JSON object", path);
        goto out;
    }
    size_t data_start = 8 + (size_t)hlen, data_size = f->size - data_start;
    size_t first = st->n_tensors;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (e->string && strcmp(e->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(e)) {
                rc = SL_EFORMAT;
                st_errf(err_text, "%s: __metadata__ is not an object", path);
                goto out;
            }
            continue;
        }
        rc = st_entry_parse(st, f, data_start, data_size, e, err_text);
        if (rc) goto out;
    }
    /* Ranges of one file must not overlap (zero-sized tensors may sit anywhere). */
    size_t n = st->n_tensors - first;
    if (n > 1) {
        ranges = malloc(n * sizeof *ranges);
        if (!ranges) {
            rc = SL_ENOMEM;
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            const st_tensor_t *t = &st->tensors[first + i];
            uint64_t b = (uint64_t)((const char *)t->data - (const char *)f->map - data_start);
            ranges[i] = (st_range_t){b, b + t->n_bytes, t->name};
        }
        qsort(ranges, n, sizeof *ranges, st_range_cmp);
        uint64_t prev_end = 0;
        const char *prev = NULL;
        for (size_t i = 0; i < n; i++) {
            if (ranges[i].begin == ranges[i].end) continue;
            if (prev && ranges[i].begin < prev_end) {
                rc = SL_EFORMAT;
                st_errf(err_text, "%s: tensor '%s' overlaps tensor '%s'", path, ranges[i].name,
                        prev);
                goto out;
            }
            prev_end = ranges[i].end;
            prev = ranges[i].name;
        }
    }
out:
    free(ranges);
    cJSON_Delete(root);
    if (fd >= 0) close(fd);
    return rc;
}

static int st_name_cmp(const void *a, const void *b) {
    return strcmp(((const st_tensor_t *)a)->name, ((const st_tensor_t *)b)->name);
}

static int st_read_text(const char *path, size_t max, char **out, size_t *len, char **err_text) {
    int rc = 0;
    char *buf = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        rc = errno == ENOENT ? SL_ENOTFOUND : -errno;
        st_errf(err_text, "%s: cannot open: %s", path, strerror(errno));
        goto out;
    }
    buf = malloc(max + 1);
    if (!buf) {
        rc = SL_ENOMEM;
        goto out;
    }
    size_t n = fread(buf, 1, max + 1, fp);
    if (ferror(fp)) {
        rc = SL_EIO;
        st_errf(err_text, "%s: read error", path);
        goto out;
    }
    if (n > max) {
        rc = SL_ETOOBIG;
        st_errf(err_text, "%s: larger than %zu bytes", path, max);
        goto out;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    buf = NULL;
out:
    free(buf);
    if (fp) fclose(fp);
    return rc;
}

/* A shard name from an index must be a plain file name in the same directory. */
static bool st_shard_name_ok(const char *s) {
    size_t n = strnlen(s, 256);
    return n > 0 && n < 256 && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int st_open_index(safetensors_t *st, const char *dir, const char *index_path,
                         char **err_text) {
    int rc = 0;
    char *text = NULL, *path = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    const char **shards = NULL;
    size_t n_shards = 0;
    rc = st_read_text(index_path, ST_INDEX_MAX, &text, &len, err_text);
    if (rc) goto out;
    root = cJSON_ParseWithLength(text, len);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        rc = SL_EFORMAT;
        st_errf(err_text, "%s: not JSON with a weight_map object", index_path);
        goto out;
    }
    int n_entries = cJSON_GetArraySize(wm);
    shards = calloc((size_t)n_entries + 1, sizeof *shards);
    if (!shards) {
        rc = SL_ENOMEM;
        goto out;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || !st_shard_name_ok(e->valuestring)) {
            rc = SL_EFORMAT;
            st_errf(err_text, "%s: tensor '%.200s' maps to an invalid shard file name", index_path,
                    e->string ? e->string : "?");
            goto out;
        }
        size_t k = 0;
        while (k < n_shards && strcmp(shards[k], e->valuestring) != 0) k++;
        if (k == n_shards) shards[n_shards++] = e->valuestring;
    }
    if (n_shards == 0) {
        rc = SL_EFORMAT;
        st_errf(err_text, "%s: weight_map is empty", index_path);
        goto out;
    }
    for (size_t k = 0; k < n_shards; k++) {
        free(path);
        path = NULL;
        if (asprintf(&path, "%s/%s", dir, shards[k]) < 0) {
            path = NULL;
            rc = SL_ENOMEM;
            goto out;
        }
        rc = st_file_open(st, path, err_text);
        if (rc) goto out;
    }
    if (st->n_tensors > 1) qsort(st->tensors, st->n_tensors, sizeof *st->tensors, st_name_cmp);
    /* Every tensor the index names must be in the shard it names. */
    cJSON_ArrayForEach(e, wm) {
        const st_tensor_t *t = safetensors_find(st, e->string);
        const char *slash = t ? strrchr(t->file, '/') : NULL;
        const char *base = slash ? slash + 1 : (t ? t->file : "");
        if (!t || strcmp(base, e->valuestring) != 0) {
            rc = SL_EFORMAT;
            st_errf(err_text, "%s: tensor '%.200s' is not in shard %s", index_path, e->string,
                    e->valuestring);
            goto out;
        }
    }
out:
    free(path);
    free(shards);
    cJSON_Delete(root);
    free(text);
    return rc;
}

int safetensors_open(const char *path, safetensors_t **out, char **err_text) {
    int rc = 0;
    char *sub = NULL;
    safetensors_t *st = NULL;
    if (err_text) *err_text = NULL;
    if (!path || !out) return SL_EINVAL;
    *out = NULL;
    st = calloc(1, sizeof *st);
    if (!st) return SL_ENOMEM;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        rc = errno == ENOENT ? SL_ENOTFOUND : -errno;
        st_errf(err_text, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (S_ISDIR(sb.st_mode)) {
        if (asprintf(&sub, "%s/model.safetensors.index.json", path) < 0) {
            sub = NULL;
            rc = SL_ENOMEM;
            goto out;
        }
        if (access(sub, F_OK) == 0) {
            rc = st_open_index(st, path, sub, err_text);
            if (rc) goto out;
        } else {
            free(sub);
            if (asprintf(&sub, "%s/model.safetensors", path) < 0) {
                sub = NULL;
                rc = SL_ENOMEM;
                goto out;
            }
            if (access(sub, F_OK) != 0) {
                rc = SL_ENOTFOUND;
                st_errf(err_text, "%s: no model.safetensors or model.safetensors.index.json", path);
                goto out;
            }
            rc = st_file_open(st, sub, err_text);
            if (rc) goto out;
        }
    } else {
        rc = st_file_open(st, path, err_text);
        if (rc) goto out;
    }
    if (st->n_tensors > 1) qsort(st->tensors, st->n_tensors, sizeof *st->tensors, st_name_cmp);
    for (size_t i = 1; i < st->n_tensors; i++) {
        if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0) {
            rc = SL_EFORMAT;
            st_errf(err_text, "%s: tensor '%s' appears twice (also in %s)", st->tensors[i].file,
                    st->tensors[i].name, st->tensors[i - 1].file);
            goto out;
        }
    }
    *out = st;
    st = NULL;
out:
    if (rc && err_text && !*err_text) st_errf(err_text, "%s: %s", path, sl_strerror(rc));
    free(sub);
    safetensors_free(st);
    return rc;
}

void safetensors_free(safetensors_t *st) {
    if (!st) return;
    for (size_t i = 0; i < st->n_tensors; i++) free((char *)st->tensors[i].name);
    free(st->tensors);
    for (size_t i = 0; i < st->n_files; i++) {
        if (st->files[i].map) munmap(st->files[i].map, st->files[i].size);
        free(st->files[i].path);
    }
    free(st->files);
    free(st);
}

size_t safetensors_count(const safetensors_t *st) {
    return st ? st->n_tensors : 0;
}

const st_tensor_t *safetensors_at(const safetensors_t *st, size_t i) {
    return st && i < st->n_tensors ? &st->tensors[i] : NULL;
}

const st_tensor_t *safetensors_find(const safetensors_t *st, const char *name) {
    if (!st || !name) return NULL;
    size_t lo = 0, hi = st->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->tensors[mid].name, name);
        if (c == 0) return &st->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}
