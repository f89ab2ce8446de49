/* sse.c - incremental Server-Sent Events parser and encoder (see sse.h).
 *
 * Complete lines inside one chunk are handled in place; only a line cut by a
 * chunk boundary is copied into the pending-line buffer. The event's data is
 * accumulated in its own buffer, and both together stay under max_event_bytes.
 */
#include "common/base/sse.h"

#include "common/base/err.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SSE_DEFAULT_MAX (1u << 20)
#define SSE_MIN_MAX     64u

typedef struct sse_buf {
    char *p;
    size_t len;
    size_t cap;
} sse_buf_t;

struct sse_parser {
    sse_event_fn fn;
    void *ud;
    size_t max;       /* bound on line.len + data.len */
    sse_buf_t line;   /* pending partial line (cut by a chunk boundary) */
    sse_buf_t data;   /* data lines, each followed by '\n' */
    sse_buf_t type;   /* event type of the pending event ("" = message) */
    sse_buf_t id;     /* last event id */
    long retry_ms;    /* -1 = none */
    size_t events;    /* dispatched since reset */
    unsigned bom_pos; /* bytes of a leading BOM matched; 3 = decided */
    bool after_cr;    /* the previous byte was a CR: skip one LF */
    bool failed;      /* a feed failed with a bound or memory error */
    bool cb_stopped;  /* the last nonzero code came from the callback */
};

static const unsigned char sse_bom[3] = {0xEF, 0xBB, 0xBF};

/* Ensures room for len + extra + 1 bytes. The caller has checked the bound. */
static int sse_buf_reserve(sse_buf_t *b, size_t extra) {
    if (extra > SIZE_MAX - b->len - 1) return SL_ETOOBIG;
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *np = realloc(b->p, cap);
    if (!np) return SL_ENOMEM;
    b->p = np;
    b->cap = cap;
    return 0;
}

static int sse_buf_set(sse_buf_t *b, const char *s, size_t n) {
    b->len = 0;
    int rc = sse_buf_reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->p, s, n);
    b->len = n;
    b->p[n] = 0;
    return 0;
}

sse_parser_t *sse_parser_new(size_t max_event_bytes, sse_event_fn fn, void *ud) {
    if (!fn) return NULL;
    if (max_event_bytes == 0) max_event_bytes = SSE_DEFAULT_MAX;
    if (max_event_bytes < SSE_MIN_MAX) max_event_bytes = SSE_MIN_MAX;
    sse_parser_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->fn = fn;
    p->ud = ud;
    p->max = max_event_bytes;
    p->retry_ms = -1;
    return p;
}

void sse_parser_free(sse_parser_t *p) {
    if (!p) return;
    free(p->line.p);
    free(p->data.p);
    free(p->type.p);
    free(p->id.p);
    free(p);
}

void sse_parser_reset(sse_parser_t *p) {
    if (!p) return;
    p->line.len = 0;
    p->data.len = 0;
    p->type.len = 0;
    p->id.len = 0;
    p->retry_ms = -1;
    p->events = 0;
    p->bom_pos = 0;
    p->after_cr = false;
    p->failed = false;
}

size_t sse_parser_events(const sse_parser_t *p) {
    return p ? p->events : 0;
}

bool sse_data_is_done(const char *data, size_t len) {
    return data && len == 6 && memcmp(data, "[DONE]", 6) == 0;
}

static int sse_dispatch(sse_parser_t *p) {
    if (p->data.len == 0) { /* no data field: nothing to dispatch */
        p->type.len = 0;
        return 0;
    }
    p->data.len--; /* drop the '\n' after the last data line */
    p->data.p[p->data.len] = 0;
    static char empty[1];
    if (p->type.p) p->type.p[p->type.len] = 0;
    sse_event_t ev = {
        .type = p->type.len ? p->type.p : "message",
        .data = p->data.p,
        .data_len = p->data.len,
        .id = p->id.len ? p->id.p : empty,
        .retry_ms = p->retry_ms,
    };
    p->events++;
    int rc = p->fn(&ev, p->ud);
    p->cb_stopped = rc != 0;
    p->data.len = 0;
    p->type.len = 0;
    return rc;
}

/* Handles one complete line (without its terminator). */
static int sse_line(sse_parser_t *p, const char *s, size_t n) {
    if (n == 0) return sse_dispatch(p);
    if (s[0] == ':') return 0; /* comment */
    const char *colon = memchr(s, ':', n);
    size_t flen = colon ? (size_t)(colon - s) : n;
    const char *v = colon ? colon + 1 : s + n;
    size_t vlen = colon ? n - flen - 1 : 0;
    if (vlen && *v == ' ') {
        v++;
        vlen--;
    }
    if (flen == 4 && memcmp(s, "data", 4) == 0) {
        if (vlen + 1 > p->max - p->data.len) return SL_ETOOBIG;
        int rc = sse_buf_reserve(&p->data, vlen + 1);
        if (rc) return rc;
        if (vlen) memcpy(p->data.p + p->data.len, v, vlen);
        p->data.len += vlen;
        p->data.p[p->data.len++] = '\n';
        p->data.p[p->data.len] = 0;
    } else if (flen == 5 && memcmp(s, "event", 5) == 0) {
        return sse_buf_set(&p->type, v, vlen);
    } else if (flen == 2 && memcmp(s, "id", 2) == 0) {
        if (!memchr(v, 0, vlen)) return sse_buf_set(&p->id, v, vlen);
    } else if (flen == 5 && memcmp(s, "retry", 5) == 0) {
        long r = 0;
        size_t i;
        for (i = 0; i < vlen && v[i] >= '0' && v[i] <= '9'; i++) {
            if (r > (INT32_MAX - 9) / 10) break; /* absurd values are ignored */
            r = r * 10 + (v[i] - '0');
        }
        if (vlen && i == vlen) p->retry_ms = r;
    }
    return 0; /* unknown fields are ignored */
}

/* Parses bytes that follow the BOM check. */
static int sse_feed_body(sse_parser_t *p, const char *buf, size_t len) {
    size_t i = 0;
    int rc = 0;
    while (i < len) {
        if (p->after_cr) {
            p->after_cr = false;
            if (buf[i] == '\n') {
                i++;
                continue;
            }
        }
        size_t j = i;
        while (j < len && buf[j] != '\n' && buf[j] != '\r') j++;
        if (j == len) { /* partial line: keep it for the next chunk */
            size_t n = len - i;
            if (n > p->max - p->data.len || p->line.len > p->max - p->data.len - n)
                return SL_ETOOBIG;
            rc = sse_buf_reserve(&p->line, n);
            if (rc) return rc;
            memcpy(p->line.p + p->line.len, buf + i, n);
            p->line.len += n;
            return 0;
        }
        if (buf[j] == '\r') p->after_cr = true;
        if (p->line.len) { /* completes a line begun in an earlier chunk */
            size_t n = j - i;
            if (n > p->max - p->data.len || p->line.len > p->max - p->data.len - n)
                return SL_ETOOBIG;
            rc = sse_buf_reserve(&p->line, n);
            if (rc) return rc;
            memcpy(p->line.p + p->line.len, buf + i, n);
            p->line.len += n;
            size_t ln = p->line.len;
            p->line.len = 0; /* the callback may not re-enter, but reset first anyway */
            rc = sse_line(p, p->line.p, ln);
        } else if (j - i > p->max - p->data.len) { /* same bound as a line cut in two */
            return SL_ETOOBIG;
        } else {
            rc = sse_line(p, buf + i, j - i);
        }
        if (rc) return rc;
        i = j + 1;
    }
    return 0;
}

int sse_parser_feed(sse_parser_t *p, const char *buf, size_t len) {
    if (!p || (!buf && len) || p->failed) return SL_EINVAL;
    int rc = 0;
    p->cb_stopped = false;
    while (p->bom_pos < 3 && len) {
        if ((unsigned char)*buf == sse_bom[p->bom_pos]) {
            p->bom_pos++;
            buf++;
            len--;
            continue;
        }
        /* Not a BOM: give back the bytes that looked like one. */
        unsigned matched = p->bom_pos;
        p->bom_pos = 3;
        if (matched) {
            rc = sse_feed_body(p, (const char *)sse_bom, matched);
            if (rc) goto out;
        }
    }
    rc = sse_feed_body(p, buf, len);
out:
    if ((rc == SL_ETOOBIG || rc == SL_ENOMEM) && !p->cb_stopped) p->failed = true;
    return rc;
}

int sse_parser_finish(sse_parser_t *p) {
    if (!p) return SL_EINVAL;
    bool dropped = p->line.len > 0 || p->data.len > 0 || (p->bom_pos > 0 && p->bom_pos < 3);
    sse_parser_reset(p);
    return dropped ? SL_EPROTO : 0;
}

int sse_event_encode(const char *type, const char *data, size_t data_len, char *buf, size_t cap,
                     size_t *out_len) {
    if ((!data && data_len) || !out_len || (!buf && cap)) return SL_EINVAL;
    if (data && memchr(data, '\r', data_len)) return SL_EINVAL;
    size_t tlen = type ? strlen(type) : 0;
    if (tlen && strpbrk(type, "\r\n")) return SL_EINVAL;
    /* length: "event: " T "\n" + per line "data: " L "\n" + "\n" */
    size_t lines = 1;
    for (size_t i = 0; i < data_len; i++) lines += data[i] == '\n';
    size_t need = 1;
    if (tlen) {
        if (tlen > SIZE_MAX / 2) return SL_ETOOBIG;
        need += 8 + tlen;
    }
    if (lines > (SIZE_MAX / 2) / 7 || data_len > SIZE_MAX / 4) return SL_ETOOBIG;
    need += lines * 7 + (data_len - (lines - 1)); /* newlines inside data become line ends */
    *out_len = need;
    if (!buf) return 0;
    if (cap < need + 1) return SL_ETOOBIG;
    char *w = buf;
    if (tlen) {
        memcpy(w, "event: ", 7);
        w += 7;
        memcpy(w, type, tlen);
        w += tlen;
        *w++ = '\n';
    }
    size_t i = 0;
    for (;;) {
        const char *nl = data_len > i ? memchr(data + i, '\n', data_len - i) : NULL;
        size_t n = nl ? (size_t)(nl - (data + i)) : data_len - i;
        memcpy(w, "data: ", 6);
        w += 6;
        if (n) memcpy(w, data + i, n);
        w += n;
        *w++ = '\n';
        if (!nl) break;
        i += n + 1;
    }
    *w++ = '\n';
    *w = 0;
    return 0;
}
