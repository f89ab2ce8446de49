/* base64.c - strict RFC 4648 base64 for etcd keys/values and binary fields. */
#include "common/base/base64.h"

#include "common/base/err.h"

#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* -1: not in the alphabet. '=' is handled by the caller. */
static int b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

size_t base64_encoded_len(size_t n) {
    size_t groups = n / 3 + (n % 3 != 0);
    if (groups > SIZE_MAX / 4) return SIZE_MAX;
    return groups * 4;
}

size_t base64_decoded_max(size_t n) {
    return n / 4 * 3 + 3;
}

long base64_encode(const void *src, size_t n, char *dst, size_t dst_cap) {
    if ((!src && n) || !dst) return SL_EINVAL;
    size_t need = base64_encoded_len(n);
    if (need == SIZE_MAX || need >= dst_cap || need > (size_t)LONG_MAX) return SL_ETOOBIG;
    const unsigned char *s = src;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        dst[o++] = b64_alphabet[v >> 18 & 63];
        dst[o++] = b64_alphabet[v >> 12 & 63];
        dst[o++] = b64_alphabet[v >> 6 & 63];
        dst[o++] = b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        dst[o++] = b64_alphabet[v >> 18 & 63];
        dst[o++] = b64_alphabet[v >> 12 & 63];
        dst[o++] = '=';
        dst[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        dst[o++] = b64_alphabet[v >> 18 & 63];
        dst[o++] = b64_alphabet[v >> 12 & 63];
        dst[o++] = b64_alphabet[v >> 6 & 63];
        dst[o++] = '=';
    }
    dst[o] = 0;
    return (long)o;
}

char *base64_encode_alloc(const void *src, size_t n) {
    size_t need = base64_encoded_len(n);
    if (need == SIZE_MAX) return NULL;
    char *out = malloc(need + 1);
    if (!out) return NULL;
    if (base64_encode(src, n, out, need + 1) < 0) {
        free(out);
        return NULL;
    }
    return out;
}

int base64_decode(const char *src, size_t n, void *dst, size_t dst_cap, size_t *out_len) {
    if ((!src && n) || (!dst && dst_cap) || !out_len) return SL_EINVAL;
    if (n % 4 != 0) return SL_EINVAL;
    unsigned char *d = dst;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        bool last = i + 4 == n;
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)src[i + k];
            if (c == '=') {
                /* padding only in the last group, only in its last two slots,
                 * and nothing but padding after it */
                if (!last || k < 2) return SL_EINVAL;
                pad++;
                v[k] = 0;
                continue;
            }
            if (pad) return SL_EINVAL;
            v[k] = b64_value(c);
            if (v[k] < 0) return SL_EINVAL;
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        size_t bytes = 3 - (size_t)pad;
        /* canonical form: the bits dropped by padding must be zero */
        if (pad == 1 && (w & 0xff)) return SL_EINVAL;
        if (pad == 2 && (w & 0xffff)) return SL_EINVAL;
        if (dst_cap - o < bytes) return SL_ETOOBIG;
        d[o++] = (unsigned char)(w >> 16);
        if (bytes > 1) d[o++] = (unsigned char)(w >> 8);
        if (bytes > 2) d[o++] = (unsigned char)w;
    }
    *out_len = o;
    return 0;
}

int base64_decode_alloc(const char *src, size_t n, uint8_t **out, size_t *out_len) {
    if (!out || !out_len) return SL_EINVAL;
    *out = NULL;
    int rc;
    size_t cap = base64_decoded_max(n);
    uint8_t *buf = malloc(cap + 1);
    if (!buf) {
        rc = SL_ENOMEM;
        goto out;
    }
    rc = base64_decode(src, n, buf, cap, out_len);
    if (rc != 0) goto out;
    buf[*out_len] = 0;
    *out = buf;
    buf = NULL;
out:
    free(buf);
    return rc;
}
