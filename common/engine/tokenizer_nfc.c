/* tokenizer_nfc.c - NFC: canonical decomposition, canonical ordering and
 * canonical composition (UAX #15), with Hangul done algorithmically. Used by
 * the "NFC" normalizer (Qwen2). Tables: tokenizer_nfc_table.c (generated). */
#include "common/engine/tokenizer_nfc.h"

#include "common/base/err.h"
#include "common/engine/utf8.h"

#include <stdbool.h>
#include <stdlib.h>

#define HANGUL_S  0xAC00u
#define HANGUL_L  0x1100u
#define HANGUL_V  0x1161u
#define HANGUL_T  0x11A7u
#define HANGUL_LN 19u
#define HANGUL_VN 21u
#define HANGUL_TN 28u
#define HANGUL_N  (HANGUL_VN * HANGUL_TN)
#define HANGUL_SN (HANGUL_LN * HANGUL_N)

static unsigned nfc_ccc(uint32_t cp) {
    if (cp < 0x300) return 0;
    unsigned lo = 0, hi = sl_nfc_ccc_n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (cp < sl_nfc_ccc[mid].first)
            hi = mid;
        else if (cp > sl_nfc_ccc[mid].last)
            lo = mid + 1;
        else
            return sl_nfc_ccc[mid].ccc;
    }
    return 0;
}

static bool nfc_notyes(uint32_t cp) {
    unsigned lo = 0, hi = sl_nfc_notyes_n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (cp < sl_nfc_notyes[mid].first)
            hi = mid;
        else if (cp > sl_nfc_notyes[mid].last)
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

static const sl_nfc_dec_t *nfc_dec_find(uint32_t cp) {
    unsigned lo = 0, hi = sl_nfc_dec_n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (cp < sl_nfc_dec[mid].cp)
            hi = mid;
        else if (cp > sl_nfc_dec[mid].cp)
            lo = mid + 1;
        else
            return &sl_nfc_dec[mid];
    }
    return NULL;
}

static uint32_t nfc_compose_pair(uint32_t a, uint32_t b) {
    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_LN && b >= HANGUL_V && b < HANGUL_V + HANGUL_VN)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_VN + (b - HANGUL_V)) * HANGUL_TN;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_SN && (a - HANGUL_S) % HANGUL_TN == 0 &&
        b > HANGUL_T && b < HANGUL_T + HANGUL_TN)
        return a + (b - HANGUL_T);
    uint64_t key = ((uint64_t)a << 21) | b;
    unsigned lo = 0, hi = sl_nfc_comp_n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (key < sl_nfc_comp[mid].key)
            hi = mid;
        else if (key > sl_nfc_comp[mid].key)
            lo = mid + 1;
        else
            return sl_nfc_comp[mid].cp;
    }
    return 0;
}

/* Appends the full canonical decomposition of cp. Depth is bounded by the
 * data (at most 4 levels); out has room for 4 code points per input byte. */
static void nfc_decompose(uint32_t cp, uint32_t *out, size_t *n, int depth) {
    if (cp >= HANGUL_S && cp < HANGUL_S + HANGUL_SN) {
        uint32_t s = cp - HANGUL_S;
        out[(*n)++] = HANGUL_L + s / HANGUL_N;
        out[(*n)++] = HANGUL_V + (s % HANGUL_N) / HANGUL_TN;
        if (s % HANGUL_TN) out[(*n)++] = HANGUL_T + s % HANGUL_TN;
        return;
    }
    const sl_nfc_dec_t *d = cp >= 0xC0 && depth < 8 ? nfc_dec_find(cp) : NULL;
    if (!d) {
        out[(*n)++] = cp;
        return;
    }
    nfc_decompose(d->a, out, n, depth + 1);
    if (d->b) nfc_decompose(d->b, out, n, depth + 1);
}

int sl_nfc_normalize(const char *s, size_t len, char **out, size_t *out_len) {
    int rc = 0;
    uint32_t *cps = NULL;
    char *buf = NULL;
    const uint8_t *u = (const uint8_t *)s;
    *out = NULL;
    *out_len = len;
    /* Quick check (UAX #15): already NFC if no character has NFC_QC No or
     * Maybe and combining classes never decrease. Nothing below U+0300
     * (lead bytes < 0xCC) can fail it. */
    bool simple = true;
    unsigned last_cc = 0;
    for (size_t i = 0; i < len;) {
        if (u[i] < 0xCC) {
            last_cc = 0;
            i++;
            continue;
        }
        uint32_t cp;
        i += sl_utf8_decode(u + i, len - i, &cp);
        unsigned cc = nfc_ccc(cp);
        if ((cc && last_cc > cc) || nfc_notyes(cp)) {
            simple = false;
            break;
        }
        last_cc = cc;
    }
    if (simple) goto out;
    if (len > (1u << 28)) {
        rc = SL_ETOOBIG;
        goto out;
    }
    /* A decomposition expands one code point to at most 4 (Hangul 3, the
     * deepest canonical chain 4), and each code point takes >= 1 byte. */
    cps = malloc(sizeof *cps * (len * 4 + 1));
    if (!cps) {
        rc = SL_ENOMEM;
        goto out;
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = sl_utf8_decode(u + i, len - i, &cp);
        i += k;
        nfc_decompose(cp, cps, &n, 0);
    }
    /* Canonical ordering: stable insertion sort of non-starter runs. */
    for (size_t i = 1; i < n; i++) {
        unsigned c = nfc_ccc(cps[i]);
        if (c == 0) continue;
        size_t j = i;
        while (j > 0) {
            unsigned p = nfc_ccc(cps[j - 1]);
            if (p <= c || p == 0) break;
            uint32_t tmp = cps[j - 1];
            cps[j - 1] = cps[j];
            cps[j] = tmp;
            j--;
        }
    }
    /* Canonical composition. */
    size_t m = n;
    if (n > 0) {
        size_t starter = 0, w = 1;
        uint32_t starter_cp = cps[0];
        unsigned last = nfc_ccc(starter_cp) ? 256 : 0;
        bool have_starter = last == 0;
        for (size_t r = 1; r < n; r++) {
            uint32_t ch = cps[r];
            unsigned cc = nfc_ccc(ch);
            uint32_t comp = have_starter ? nfc_compose_pair(starter_cp, ch) : 0;
            if (comp && (last < cc || last == 0)) {
                cps[starter] = comp;
                starter_cp = comp;
                continue;
            }
            if (cc == 0) {
                starter = w;
                starter_cp = ch;
                have_starter = true;
            }
            last = cc;
            cps[w++] = ch;
        }
        m = w;
    }
    buf = malloc(m * 4 + 1);
    if (!buf) {
        rc = SL_ENOMEM;
        goto out;
    }
    size_t o = 0;
    for (size_t i = 0; i < m; i++) o += sl_utf8_encode(cps[i], (uint8_t *)buf + o);
    buf[o] = 0;
    *out = buf;
    *out_len = o;
    buf = NULL;
out:
    free(cps);
    free(buf);
    return rc;
}
