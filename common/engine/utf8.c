/* utf8.c - UTF-8 decode/encode with maximal-subpart replacement. */
#include "common/engine/utf8.h"

#include "common/base/err.h"

#include <stdlib.h>
#include <string.h>

/* Valid second-byte range for each lead byte (Unicode Table 3-7). */
static int utf8_lead(uint8_t b, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b == 0xE0) {
        *lo = 0xA0;
        return 3;
    }
    if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return 3;
    if (b == 0xED) {
        *hi = 0x9F;
        return 3;
    }
    if (b == 0xF0) {
        *lo = 0x90;
        return 4;
    }
    if (b >= 0xF1 && b <= 0xF3) return 4;
    if (b == 0xF4) {
        *hi = 0x8F;
        return 4;
    }
    return 0;
}

size_t sl_utf8_decode(const uint8_t *s, size_t len, uint32_t *cp) {
    if (len == 0) return 0;
    uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    uint8_t lo, hi;
    int n = utf8_lead(b, &lo, &hi);
    *cp = SL_UTF8_REPLACEMENT;
    if (n == 0) return 1;
    uint32_t v = b & (0xFFu >> (n + 1));
    for (int i = 1; i < n; i++) {
        if ((size_t)i >= len) return (size_t)i;
        uint8_t c = s[i];
        uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (c < l || c > h) return (size_t)i;
        v = (v << 6) | (c & 0x3F);
    }
    *cp = v;
    return (size_t)n;
}

size_t sl_utf8_encode(uint32_t cp, uint8_t out[4]) {
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = SL_UTF8_REPLACEMENT;
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

bool sl_utf8_valid(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t n = sl_utf8_decode(s + i, len - i, &cp);
        if (cp == SL_UTF8_REPLACEMENT &&
            !(n == 3 && s[i] == 0xEF && s[i + 1] == 0xBF && s[i + 2] == 0xBD))
            return false;
        i += n;
    }
    return true;
}

size_t sl_utf8_final_prefix(const uint8_t *s, size_t len) {
    /* Only the last (up to 3) bytes can be an unfinished sequence. */
    size_t start = len > 3 ? len - 3 : 0;
    for (size_t i = start; i < len; i++) {
        uint8_t lo, hi;
        int n = utf8_lead(s[i], &lo, &hi);
        if (n == 0) continue;
        if (i + (size_t)n <= len) continue; /* complete (valid or not) */
        /* Incomplete: is what is there a valid beginning? */
        bool ok = true;
        for (size_t j = i + 1; j < len; j++) {
            uint8_t l = j == i + 1 ? lo : 0x80, h = j == i + 1 ? hi : 0xBF;
            if (s[j] < l || s[j] > h) ok = false;
        }
        if (ok) return i;
    }
    return len;
}

int sl_utf8_sanitize(const uint8_t *s, size_t len, char **out, size_t *out_len) {
    int rc = 0;
    char *buf = NULL;
    if (len > (1u << 30)) {
        rc = SL_ETOOBIG;
        goto out;
    }
    /* Worst case: every byte becomes a 3-byte U+FFFD. */
    buf = malloc(len * 3 + 1);
    if (!buf) {
        rc = SL_ENOMEM;
        goto out;
    }
    size_t i = 0, o = 0;
    while (i < len) {
        if (s[i] < 0x80) {
            buf[o++] = (char)s[i++];
            continue;
        }
        uint32_t cp;
        size_t n = sl_utf8_decode(s + i, len - i, &cp);
        if (cp == SL_UTF8_REPLACEMENT) {
            o += sl_utf8_encode(cp, (uint8_t *)buf + o);
        } else {
            memcpy(buf + o, s + i, n);
            o += n;
        }
        i += n;
    }
    buf[o] = 0;
    *out = buf;
    *out_len = o;
    buf = NULL;
out:
    free(buf);
    return rc;
}
