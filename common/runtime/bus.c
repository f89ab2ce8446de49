/* bus.c - NATS bus over nats.c: connection, pub/sub, request/reply, protobuf
 * helpers, streamed replies and subject builders. Contracts in bus.h.
 *
 * Streams share one wildcard subscription per connection ("<inbox>.*"), so
 * opening a stream costs a hash insert, not a SUB round trip and a delivery
 * thread. The inbox callback routes each message by its last subject token
 * (the stream id) into that stream's arrival queue; the consumer reorders,
 * checks framing and applies timeouts in bus_stream_recv().
 *
 * Locking: bus->mu guards the stream table and connection flags; each stream
 * has its own mu for its arrival queue and flags. Order: bus->mu, then s->mu.
 * The reorder buffer and sticky error belong to the consumer thread alone.
 */
#include "common/runtime/bus.h"

#include "common/base/arena.h"
#include "common/base/err.h"
#include "common/base/log.h"

#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUS_STREAM_BUCKETS   1024 /* power of two */
#define BUS_REORDER_MAX      4096
#define BUS_CLOSE_WAIT_MS    10000
#define BUS_MALFORMED_LOG_MS 1000

struct bus {
    natsConnection *nc;
    natsOptions *opts;
    natsSubscription *inbox_sub;
    char url[512];
    char name[128];
    char inbox[64]; /* "_INBOX.<nuid>"; streams reply to "<inbox>.<id>" */
    int reconnect_wait_ms;
    int reconnect_max_ms;
    uint64_t jitter_state;

    pthread_mutex_t mu;
    pthread_cond_t cond; /* connection state changes, close completion */
    bool closing;
    bool closed_cb_done;
    bool inbox_done;
    uint64_t next_stream_id;
    bus_stream_t *streams[BUS_STREAM_BUCKETS]; /* chained by bus_stream.next */

    bus_stats_t st;              /* updated with __atomic builtins */
    int64_t malformed_log_at_ms; /* rate limit of the malformed warning */
    int64_t dropped_log_at_ms;
};

struct bus_sub {
    bus_t *bus;
    natsSubscription *sub;
    bus_msg_fn cb;
    bus_proto_fn proto_cb;
    const ProtobufCMessageDescriptor *desc;
    arena_t *arena; /* proto subscriptions: unpacked messages live here */
    void *ud;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool complete;
};

struct bus_stream {
    bus_t *bus;
    bus_stream_t *next; /* hash chain, guarded by bus->mu */
    uint64_t id;
    char inbox[96];
    char subject[BUS_SUBJECT_MAX];

    pthread_mutex_t mu;
    pthread_cond_t cond;
    natsMsg **q; /* arrival ring: (qcap) */
    size_t qhead, qlen, qcap;
    int64_t last_arrival_ms;
    bool conn_lost;
    bool cancelled;

    /* consumer-only */
    int idle_timeout_ms;
    int gap_timeout_ms;
    int window;
    natsMsg **held; /* (window) early messages, slot = seq % window */
    int nheld;
    int64_t gap_since_ms;
    uint64_t expected;
    uint64_t delivered;
    bool finished;
    int err;
    char errmsg[384];
};

struct bus_stream_writer {
    bus_t *bus;
    uint64_t seq;
    uint64_t disconnects; /* bus disconnect count when created */
    bool ended;
    char reply[];
};

/* ---- small helpers ---------------------------------------------------------- */

static __thread char bus_errbuf[512];

const char *bus_last_error(void) {
    return bus_errbuf;
}

__attribute__((format(printf, 2, 3))) static int bus_fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(bus_errbuf, sizeof bus_errbuf, fmt, ap);
    va_end(ap);
    return code;
}

static int64_t bus_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void bus_stat_add(uint64_t *ctr, uint64_t n) {
    __atomic_fetch_add(ctr, n, __ATOMIC_RELAXED);
}

/* True at most once per BUS_MALFORMED_LOG_MS per slot, across threads. */
static bool bus_log_allowed(int64_t *slot) {
    int64_t now = bus_now_ms();
    int64_t last = __atomic_load_n(slot, __ATOMIC_RELAXED);
    if (last != 0 && now - last < BUS_MALFORMED_LOG_MS) return false;
    return __atomic_compare_exchange_n(slot, &last, now, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

static void bus_note_malformed(bus_t *bus, const char *subject, const char *what) {
    bus_stat_add(&bus->st.malformed, 1);
    if (bus_log_allowed(&bus->malformed_log_at_ms))
        LOG_WARN("bus: dropped malformed message on %s: %s (%" PRIu64 " malformed so far)",
                 subject ? subject : "?", what,
                 __atomic_load_n(&bus->st.malformed, __ATOMIC_RELAXED));
}

static void bus_note_dropped(bus_t *bus, const char *why) {
    bus_stat_add(&bus->st.dropped, 1);
    if (bus_log_allowed(&bus->dropped_log_at_ms))
        LOG_DEBUG("bus: dropped a message: %s (%" PRIu64 " dropped so far)", why,
                  __atomic_load_n(&bus->st.dropped, __ATOMIC_RELAXED));
}

static int bus_status_code(natsStatus s) {
    switch (s) {
    case NATS_OK:
        return 0;
    case NATS_TIMEOUT:
        return SL_ETIMEDOUT;
    case NATS_NO_RESPONDERS:
        return SL_EUNAVAIL;
    case NATS_CONNECTION_CLOSED:
        return SL_ECLOSED;
    case NATS_NO_SERVER:
    case NATS_NOT_YET_CONNECTED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_STALE_CONNECTION:
        return SL_EUNAVAIL;
    case NATS_MAX_PAYLOAD:
        return SL_ETOOBIG;
    case NATS_NO_MEMORY:
        return SL_ENOMEM;
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
    case NATS_INVALID_QUEUE_NAME:
    case NATS_INVALID_TIMEOUT:
    case NATS_ADDRESS_MISSING:
        return SL_EINVAL;
    default:
        return SL_EIO;
    }
}

/* Records status s of nats.c call `what` and returns the SL_E* code. */
static int bus_fail_nats(natsStatus s, const char *what, const char *subject) {
    const char *detail = nats_GetLastError(NULL);
    return bus_fail(bus_status_code(s), "%s%s%s: %s%s%s", what, subject ? " " : "",
                    subject ? subject : "", natsStatus_GetText(s), detail && *detail ? ": " : "",
                    detail && *detail ? detail : "");
}

/* Bytes a header block adds on the wire: "NATS/1.0\r\n" ... "\r\n". */
static size_t bus_hdr_size(int n, const char *const *kv) {
    size_t sz = 12;
    for (int i = 0; i < 2 * n; i += 2) sz += strlen(kv[i]) + 2 + strlen(kv[i + 1]) + 2;
    return sz;
}

/* SL_ETOOBIG if a message of len payload bytes plus hdr header bytes would
 * exceed the server's max_payload. Nothing to check before the first connect. */
static int bus_check_size(bus_t *bus, const char *subject, size_t len, size_t hdr) {
    if (len > INT32_MAX - hdr)
        return bus_fail(SL_ETOOBIG, "message of %zu bytes to %s is over 2 GiB", len,
                        subject ? subject : "?");
    int64_t max = natsConnection_GetMaxPayload(bus->nc);
    if (max <= 0) return 0;
    if (len > (uint64_t)max || len + hdr > (uint64_t)max)
        return bus_fail(SL_ETOOBIG,
                        "message of %zu bytes to %s exceeds the server's max_payload of %" PRId64
                        " bytes",
                        len + hdr, subject ? subject : "?", max);
    return 0;
}

static bool bus_parse_u64(const char *s, uint64_t *out) {
    if (!s || *s < '0' || *s > '9') return false;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || !end || *end) return false;
    *out = v;
    return true;
}

/* A subject is dot-separated non-empty tokens without whitespace or control
 * characters; "*" and ">" are allowed as whole tokens only where wild. */
static bool bus_subject_valid(const char *subj, bool wild) {
    if (!subj || !*subj || strlen(subj) >= BUS_SUBJECT_MAX) return false;
    const char *tok = subj;
    for (const char *p = subj;; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '.' || c == 0) {
            size_t n = (size_t)(p - tok);
            if (n == 0) return false;
            for (size_t i = 0; i < n; i++) {
                if (tok[i] != '*' && tok[i] != '>') continue;
                if (!wild || n != 1) return false;
                if (tok[i] == '>' && c != 0) return false;
            }
            if (c == 0) return true;
            tok = p + 1;
        } else if (c <= 0x20 || c == 0x7f) {
            return false;
        }
    }
}

/* ---- connection callbacks ---------------------------------------------------- */

static void bus_fail_all_streams(bus_t *bus);

static void bus_on_disconnected(natsConnection *nc, void *closure) {
    (void)nc;
    bus_t *bus = closure;
    pthread_mutex_lock(&bus->mu);
    bool closing = bus->closing;
    pthread_cond_broadcast(&bus->cond);
    pthread_mutex_unlock(&bus->mu);
    if (!closing) {
        bus_stat_add(&bus->st.disconnects, 1);
        LOG_WARN("bus %s: disconnected from NATS; reconnecting, open streams fail", bus->name);
    }
    bus_fail_all_streams(bus);
}

static void bus_on_reconnected(natsConnection *nc, void *closure) {
    (void)nc;
    bus_t *bus = closure;
    bus_stat_add(&bus->st.reconnects, 1);
    LOG_INFO("bus %s: reconnected to NATS; subscriptions restored", bus->name);
    pthread_mutex_lock(&bus->mu);
    pthread_cond_broadcast(&bus->cond);
    pthread_mutex_unlock(&bus->mu);
}

static void bus_on_connected(natsConnection *nc, void *closure) {
    (void)nc;
    bus_t *bus = closure;
    LOG_INFO("bus %s: connected to NATS", bus->name);
    pthread_mutex_lock(&bus->mu);
    pthread_cond_broadcast(&bus->cond);
    pthread_mutex_unlock(&bus->mu);
}

static void bus_on_closed(natsConnection *nc, void *closure) {
    (void)nc;
    bus_t *bus = closure;
    pthread_mutex_lock(&bus->mu);
    bus->closed_cb_done = true;
    pthread_cond_broadcast(&bus->cond);
    pthread_mutex_unlock(&bus->mu);
}

static void bus_on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure) {
    (void)nc;
    (void)sub;
    bus_t *bus = closure;
    if (err == NATS_SLOW_CONSUMER) {
        bus_note_dropped(bus, "slow consumer");
        return;
    }
    LOG_WARN("bus %s: asynchronous NATS error: %s", bus->name, natsStatus_GetText(err));
}

/* Capped exponential backoff with +-25% jitter. attempts starts at 1. */
static int64_t bus_reconnect_delay(natsConnection *nc, int attempts, void *closure) {
    (void)nc;
    bus_t *bus = closure;
    int64_t d = bus->reconnect_wait_ms;
    for (int i = 1; i < attempts && d < bus->reconnect_max_ms; i++) d *= 2;
    if (d > bus->reconnect_max_ms) d = bus->reconnect_max_ms;
    uint64_t x = __atomic_add_fetch(&bus->jitter_state, 0x9e3779b97f4a7c15ULL, __ATOMIC_RELAXED);
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 29;
    int64_t span = d / 2;
    if (span > 0) d = d - span / 2 + (int64_t)(x % (uint64_t)span);
    return d;
}

static void bus_on_inbox_complete(void *closure) {
    bus_t *bus = closure;
    pthread_mutex_lock(&bus->mu);
    bus->inbox_done = true;
    pthread_cond_broadcast(&bus->cond);
    pthread_mutex_unlock(&bus->mu);
}

static void bus_inbox_cb(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);

/* ---- connect / free ----------------------------------------------------------- */

int bus_connect(bus_t **out, const bus_opts_t *o) {
    int rc = 0;
    natsStatus s;
    bus_t *bus = NULL;
    natsInbox *inbox = NULL;
    bus_opts_t def = {0};
    if (!out) return bus_fail(SL_EINVAL, "bus_connect: out is NULL");
    *out = NULL;
    if (!o) o = &def;
    if (o->connect_timeout_ms < 0 || o->reconnect_wait_ms < 0 || o->reconnect_max_ms < 0 ||
        o->ping_interval_ms < 0)
        return bus_fail(SL_EINVAL, "bus_connect: negative timeout in options");

    bus = calloc(1, sizeof *bus);
    if (!bus) return bus_fail(SL_ENOMEM, "bus_connect: out of memory");
    pthread_mutex_init(&bus->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&bus->cond, &ca);
    pthread_condattr_destroy(&ca);

    const char *url = o->url;
    if (!url || !*url) url = getenv("SLUICE_NATS");
    if (!url || !*url) url = "nats://127.0.0.1:4222";
    if ((size_t)snprintf(bus->url, sizeof bus->url, "%s", url) >= sizeof bus->url) {
        rc = bus_fail(SL_EINVAL, "bus_connect: NATS url too long");
        goto out;
    }
    snprintf(bus->name, sizeof bus->name, "%s", o->name && *o->name ? o->name : "sluice");
    bus->reconnect_wait_ms = o->reconnect_wait_ms ? o->reconnect_wait_ms : 100;
    bus->reconnect_max_ms = o->reconnect_max_ms ? o->reconnect_max_ms : 2000;
    if (bus->reconnect_max_ms < bus->reconnect_wait_ms)
        bus->reconnect_max_ms = bus->reconnect_wait_ms;
    bus->jitter_state = (uint64_t)bus_now_ms() ^ (uint64_t)(uintptr_t)bus;

    s = natsOptions_Create(&bus->opts);
    if (s == NATS_OK) {
        /* nats.c takes a comma-separated list through SetServers only. */
        if (strchr(bus->url, ',')) {
            const char *servers[32];
            int n = 0;
            char tmp[sizeof bus->url];
            snprintf(tmp, sizeof tmp, "%s", bus->url);
            for (char *t = tmp; t && n < 32;) {
                char *comma = strchr(t, ',');
                if (comma) *comma = 0;
                if (*t) servers[n++] = t;
                t = comma ? comma + 1 : NULL;
            }
            s = natsOptions_SetServers(bus->opts, servers, n);
        } else {
            s = natsOptions_SetURL(bus->opts, bus->url);
        }
    }
    if (s == NATS_OK) s = natsOptions_SetName(bus->opts, bus->name);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(bus->opts, o->connect_timeout_ms ? o->connect_timeout_ms : 2000);
    if (s == NATS_OK) s = natsOptions_SetAllowReconnect(bus->opts, true);
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(bus->opts, -1);
    if (s == NATS_OK) s = natsOptions_SetCustomReconnectDelay(bus->opts, bus_reconnect_delay, bus);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(bus->opts,
                                        o->ping_interval_ms ? o->ping_interval_ms : 10000);
    if (s == NATS_OK) s = natsOptions_SetSendAsap(bus->opts, true);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(bus->opts, bus_on_disconnected, bus);
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(bus->opts, bus_on_reconnected, bus);
    if (s == NATS_OK) s = natsOptions_SetClosedCB(bus->opts, bus_on_closed, bus);
    if (s == NATS_OK) s = natsOptions_SetErrorHandler(bus->opts, bus_on_error, bus);
    if (s == NATS_OK && o->retry_initial)
        s = natsOptions_SetRetryOnFailedConnect(bus->opts, true, bus_on_connected, bus);
    if (s != NATS_OK) {
        rc = bus_fail_nats(s, "bus_connect: options", NULL);
        goto out;
    }

    s = natsConnection_Connect(&bus->nc, bus->opts);
    if (s == NATS_NOT_YET_CONNECTED && o->retry_initial) s = NATS_OK;
    if (s != NATS_OK) {
        rc = bus_fail_nats(s, "bus_connect: cannot connect to NATS at", bus->url);
        if (rc == SL_EIO) rc = SL_EUNAVAIL;
        bus->nc = NULL;
        goto out;
    }

    s = natsInbox_Create(&inbox);
    if (s == NATS_OK) {
        snprintf(bus->inbox, sizeof bus->inbox, "%s", inbox);
        char wild[sizeof bus->inbox + 4];
        snprintf(wild, sizeof wild, "%s.*", bus->inbox);
        s = natsConnection_Subscribe(&bus->inbox_sub, bus->nc, wild, bus_inbox_cb, bus);
    }
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(bus->inbox_sub, -1, -1);
    if (s == NATS_OK)
        s = natsSubscription_SetOnCompleteCB(bus->inbox_sub, bus_on_inbox_complete, bus);
    if (s != NATS_OK) {
        rc = bus_fail_nats(s, "bus_connect: stream inbox subscription", NULL);
        goto out;
    }
    LOG_DEBUG("bus %s: connected to %s (max_payload %" PRId64 ")", bus->name, bus->url,
              natsConnection_GetMaxPayload(bus->nc));
    *out = bus;
    bus = NULL;
out:
    natsInbox_Destroy(inbox);
    bus_free(bus);
    return rc;
}

void bus_free(bus_t *bus) {
    if (!bus) return;
    pthread_mutex_lock(&bus->mu);
    bus->closing = true;
    pthread_mutex_unlock(&bus->mu);
    bus_fail_all_streams(bus);

    bool safe = true;
    if (bus->nc) {
        natsConnection_Close(bus->nc);
        /* Callbacks hold bus as closure: wait until nats.c is done with it. */
        int64_t deadline = bus_now_ms() + BUS_CLOSE_WAIT_MS;
        pthread_mutex_lock(&bus->mu);
        while ((!bus->closed_cb_done || (bus->inbox_sub && !bus->inbox_done)) &&
               bus_now_ms() < deadline) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_nsec += 50 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&bus->cond, &bus->mu, &ts);
        }
        safe = bus->closed_cb_done && (!bus->inbox_sub || bus->inbox_done);
        pthread_mutex_unlock(&bus->mu);
        natsSubscription_Destroy(bus->inbox_sub);
        natsConnection_Destroy(bus->nc);
    }
    natsOptions_Destroy(bus->opts);
    if (!safe) {
        /* Freeing now could let a late nats.c callback touch freed memory. */
        LOG_ERROR("bus %s: NATS callbacks did not finish within %d ms; leaking the bus", bus->name,
                  BUS_CLOSE_WAIT_MS);
        return;
    }
    pthread_cond_destroy(&bus->cond);
    pthread_mutex_destroy(&bus->mu);
    free(bus);
}

bool bus_is_connected(bus_t *bus) {
    return bus && bus->nc && natsConnection_Status(bus->nc) == NATS_CONN_STATUS_CONNECTED;
}

int bus_wait_connected(bus_t *bus, int timeout_ms) {
    if (!bus) return bus_fail(SL_EINVAL, "bus_wait_connected: bus is NULL");
    int64_t deadline = bus_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    int rc = 0;
    pthread_mutex_lock(&bus->mu);
    for (;;) {
        natsConnStatus st = natsConnection_Status(bus->nc);
        if (st == NATS_CONN_STATUS_CONNECTED) break;
        if (st == NATS_CONN_STATUS_CLOSED || bus->closing) {
            rc = bus_fail(SL_ECLOSED, "bus %s: connection closed", bus->name);
            break;
        }
        int64_t now = bus_now_ms();
        if (now >= deadline) {
            rc = bus_fail(SL_ETIMEDOUT, "bus %s: not connected to %s after %d ms", bus->name,
                          bus->url, timeout_ms);
            break;
        }
        /* Poll as well: a state change can precede its callback. */
        int64_t wait = deadline - now < 20 ? deadline - now : 20;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += wait * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&bus->cond, &bus->mu, &ts);
    }
    pthread_mutex_unlock(&bus->mu);
    return rc;
}

int bus_flush(bus_t *bus, int timeout_ms) {
    if (!bus) return bus_fail(SL_EINVAL, "bus_flush: bus is NULL");
    natsStatus s = natsConnection_FlushTimeout(bus->nc, timeout_ms > 0 ? timeout_ms : 1);
    if (s != NATS_OK) return bus_fail_nats(s, "bus_flush", NULL);
    return 0;
}

int64_t bus_max_payload(bus_t *bus) {
    if (!bus || !bus->nc) return 0;
    int64_t m = natsConnection_GetMaxPayload(bus->nc);
    return m > 0 ? m : 0;
}

void bus_stats_get(bus_t *bus, bus_stats_t *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (!bus) return;
    out->published = __atomic_load_n(&bus->st.published, __ATOMIC_RELAXED);
    out->bytes_out = __atomic_load_n(&bus->st.bytes_out, __ATOMIC_RELAXED);
    out->received = __atomic_load_n(&bus->st.received, __ATOMIC_RELAXED);
    out->bytes_in = __atomic_load_n(&bus->st.bytes_in, __ATOMIC_RELAXED);
    out->malformed = __atomic_load_n(&bus->st.malformed, __ATOMIC_RELAXED);
    out->dropped = __atomic_load_n(&bus->st.dropped, __ATOMIC_RELAXED);
    out->disconnects = __atomic_load_n(&bus->st.disconnects, __ATOMIC_RELAXED);
    out->reconnects = __atomic_load_n(&bus->st.reconnects, __ATOMIC_RELAXED);
}

/* ---- messages ------------------------------------------------------------------ */

/* A bus_msg_t is a natsMsg seen through an opaque type. */
static natsMsg *bus_nmsg(const bus_msg_t *m) {
    return (natsMsg *)(uintptr_t)m;
}

const char *bus_msg_subject(const bus_msg_t *msg) {
    return msg ? natsMsg_GetSubject(bus_nmsg(msg)) : NULL;
}

const char *bus_msg_reply(const bus_msg_t *msg) {
    const char *r = msg ? natsMsg_GetReply(bus_nmsg(msg)) : NULL;
    return r && *r ? r : NULL;
}

const void *bus_msg_data(const bus_msg_t *msg) {
    return msg ? natsMsg_GetData(bus_nmsg(msg)) : NULL;
}

size_t bus_msg_len(const bus_msg_t *msg) {
    int n = msg ? natsMsg_GetDataLength(bus_nmsg(msg)) : 0;
    return n > 0 ? (size_t)n : 0;
}

const char *bus_msg_header(const bus_msg_t *msg, const char *key) {
    const char *v = NULL;
    if (!msg || !key) return NULL;
    if (natsMsgHeader_Get(bus_nmsg(msg), key, &v) != NATS_OK) return NULL;
    return v;
}

uint64_t bus_msg_seq(const bus_msg_t *msg) {
    uint64_t v = 0;
    if (!bus_parse_u64(bus_msg_header(msg, BUS_HDR_SEQ), &v)) return 0;
    return v;
}

bool bus_msg_is_last(const bus_msg_t *msg) {
    return bus_msg_header(msg, BUS_HDR_END) != NULL;
}

bool bus_msg_is_no_responders(const bus_msg_t *msg) {
    return msg && natsMsg_IsNoResponders(bus_nmsg(msg));
}

void bus_msg_free(bus_msg_t *msg) {
    if (msg) natsMsg_Destroy(bus_nmsg(msg));
}

/* ---- publish ---------------------------------------------------------------------- */

static int bus_publish_impl(bus_t *bus, const char *subject, const char *reply, const void *data,
                            size_t len) {
    if (!bus || (len && !data)) return bus_fail(SL_EINVAL, "bus_publish: bad argument");
    if (!bus_subject_valid(subject, false) || (reply && *reply && !bus_subject_valid(reply, false)))
        return bus_fail(SL_EINVAL, "bus_publish: invalid subject '%s'", subject ? subject : "");
    int rc = bus_check_size(bus, subject, len, 0);
    if (rc) return rc;
    natsStatus s = reply && *reply
                       ? natsConnection_PublishRequest(bus->nc, subject, reply, data, (int)len)
                       : natsConnection_Publish(bus->nc, subject, data, (int)len);
    if (s != NATS_OK) return bus_fail_nats(s, "publish to", subject);
    bus_stat_add(&bus->st.published, 1);
    bus_stat_add(&bus->st.bytes_out, len);
    return 0;
}

int bus_publish(bus_t *bus, const char *subject, const void *data, size_t len) {
    return bus_publish_impl(bus, subject, NULL, data, len);
}

int bus_publish_reply(bus_t *bus, const char *subject, const char *reply, const void *data,
                      size_t len) {
    return bus_publish_impl(bus, subject, reply, data, len);
}

/* ---- subscribe ---------------------------------------------------------------------- */

static void *bus_arena_alloc(void *ud, size_t n) {
    return arena_alloc(ud, n);
}
static void bus_arena_free(void *ud, void *p) {
    (void)ud;
    (void)p;
}

ProtobufCAllocator bus_arena_allocator(arena_t *a) {
    return (ProtobufCAllocator){bus_arena_alloc, bus_arena_free, a};
}

static void bus_sub_cb(natsConnection *nc, natsSubscription *nsub, natsMsg *msg, void *closure) {
    (void)nc;
    (void)nsub;
    bus_sub_t *sub = closure;
    bus_t *bus = sub->bus;
    int n = natsMsg_GetDataLength(msg);
    size_t len = n > 0 ? (size_t)n : 0;
    bus_stat_add(&bus->st.received, 1);
    bus_stat_add(&bus->st.bytes_in, len);
    if (sub->desc) {
        const uint8_t *data = len ? (const uint8_t *)natsMsg_GetData(msg) : (const uint8_t *)"";
        /* Callbacks of one subscription never overlap (one delivery thread
         * each) and the message dies with the callback, so a bump arena reset
         * after it replaces hundreds of malloc/free pairs per KV batch. */
        ProtobufCAllocator al = bus_arena_allocator(sub->arena);
        ProtobufCMessage *m = protobuf_c_message_unpack(sub->desc, &al, len, data);
        if (!m) {
            bus_note_malformed(bus, natsMsg_GetSubject(msg), sub->desc->name);
        } else {
            sub->proto_cb(bus, (const bus_msg_t *)msg, m, sub->ud);
        }
        arena_reset(sub->arena);
    } else {
        sub->cb(bus, (const bus_msg_t *)msg, sub->ud);
    }
    natsMsg_Destroy(msg);
}

static void bus_sub_on_complete(void *closure) {
    bus_sub_t *sub = closure;
    pthread_mutex_lock(&sub->mu);
    sub->complete = true;
    pthread_cond_broadcast(&sub->cond);
    pthread_mutex_unlock(&sub->mu);
}

static int bus_subscribe_impl(bus_t *bus, const char *subject, const char *queue, bus_msg_fn cb,
                              const ProtobufCMessageDescriptor *desc, bus_proto_fn pcb, void *ud,
                              bus_sub_t **out) {
    int rc = 0;
    natsStatus s;
    bus_sub_t *sub = NULL;
    if (!out) return bus_fail(SL_EINVAL, "bus_subscribe: out is NULL");
    *out = NULL;
    if (!bus || (!cb && !pcb) || (queue && !bus_subject_valid(queue, false)))
        return bus_fail(SL_EINVAL, "bus_subscribe: bad argument");
    if (!bus_subject_valid(subject, true))
        return bus_fail(SL_EINVAL, "bus_subscribe: invalid subject '%s'", subject ? subject : "");
    sub = calloc(1, sizeof *sub);
    if (!sub) return bus_fail(SL_ENOMEM, "bus_subscribe: out of memory");
    sub->bus = bus;
    sub->cb = cb;
    sub->proto_cb = pcb;
    sub->desc = desc;
    sub->ud = ud;
    if (desc && !(sub->arena = arena_new(0))) {
        free(sub);
        return bus_fail(SL_ENOMEM, "bus_subscribe: out of memory");
    }
    pthread_mutex_init(&sub->mu, NULL);
    pthread_cond_init(&sub->cond, NULL);
    if (queue)
        s = natsConnection_QueueSubscribe(&sub->sub, bus->nc, subject, queue, bus_sub_cb, sub);
    else
        s = natsConnection_Subscribe(&sub->sub, bus->nc, subject, bus_sub_cb, sub);
    if (s != NATS_OK) {
        rc = bus_fail_nats(s, "subscribe to", subject);
        sub->sub = NULL;
        goto out;
    }
    s = natsSubscription_SetPendingLimits(sub->sub, -1, -1);
    if (s == NATS_OK) s = natsSubscription_SetOnCompleteCB(sub->sub, bus_sub_on_complete, sub);
    if (s != NATS_OK) {
        rc = bus_fail_nats(s, "configure subscription to", subject);
        goto out;
    }
    *out = sub;
    sub = NULL;
out:
    if (sub) {
        /* Subscribed but not configured: close it the normal way. */
        if (sub->sub) {
            natsSubscription_SetOnCompleteCB(sub->sub, bus_sub_on_complete, sub);
            bus_sub_free(sub);
        } else {
            pthread_cond_destroy(&sub->cond);
            pthread_mutex_destroy(&sub->mu);
            arena_free(sub->arena);
            free(sub);
        }
    }
    return rc;
}

int bus_subscribe(bus_t *bus, const char *subject, const char *queue, bus_msg_fn cb, void *ud,
                  bus_sub_t **out) {
    return bus_subscribe_impl(bus, subject, queue, cb, NULL, NULL, ud, out);
}

int bus_subscribe_proto(bus_t *bus, const char *subject, const char *queue,
                        const ProtobufCMessageDescriptor *desc, bus_proto_fn cb, void *ud,
                        bus_sub_t **out) {
    if (!desc || !cb) {
        if (out) *out = NULL;
        return bus_fail(SL_EINVAL, "bus_subscribe_proto: descriptor and callback required");
    }
    return bus_subscribe_impl(bus, subject, queue, NULL, desc, cb, ud, out);
}

void bus_sub_free(bus_sub_t *sub) {
    if (!sub) return;
    bool safe = true;
    if (sub->sub) {
        natsSubscription_Unsubscribe(sub->sub);
        int64_t deadline = bus_now_ms() + BUS_CLOSE_WAIT_MS;
        pthread_mutex_lock(&sub->mu);
        while (!sub->complete && bus_now_ms() < deadline) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 50 * 1000000L;
            ts.tv_sec += ts.tv_nsec / 1000000000L;
            ts.tv_nsec %= 1000000000L;
            pthread_cond_timedwait(&sub->cond, &sub->mu, &ts);
        }
        safe = sub->complete;
        pthread_mutex_unlock(&sub->mu);
        natsSubscription_Destroy(sub->sub);
    }
    if (!safe) {
        LOG_ERROR("bus: subscription did not complete within %d ms; leaking it", BUS_CLOSE_WAIT_MS);
        return;
    }
    pthread_cond_destroy(&sub->cond);
    pthread_mutex_destroy(&sub->mu);
    arena_free(sub->arena);
    free(sub);
}

/* ---- request / reply -------------------------------------------------------------------- */

int bus_request(bus_t *bus, const char *subject, const void *data, size_t len, int timeout_ms,
                bus_msg_t **out) {
    if (!out) return bus_fail(SL_EINVAL, "bus_request: out is NULL");
    *out = NULL;
    if (!bus || !bus_subject_valid(subject, false) || (len && !data) || timeout_ms <= 0)
        return bus_fail(SL_EINVAL, "bus_request: bad argument");
    int rc = bus_check_size(bus, subject, len, 0);
    if (rc) return rc;
    natsMsg *reply = NULL;
    natsStatus s = natsConnection_Request(&reply, bus->nc, subject, data, (int)len, timeout_ms);
    if (s == NATS_NO_RESPONDERS)
        return bus_fail(SL_EUNAVAIL, "no responders on %s (nobody is subscribed)", subject);
    if (s == NATS_TIMEOUT)
        return bus_fail(SL_ETIMEDOUT, "request to %s: no reply within %d ms", subject, timeout_ms);
    if (s != NATS_OK) return bus_fail_nats(s, "request to", subject);
    bus_stat_add(&bus->st.published, 1);
    bus_stat_add(&bus->st.bytes_out, len);
    bus_stat_add(&bus->st.received, 1);
    bus_stat_add(&bus->st.bytes_in, (uint64_t)natsMsg_GetDataLength(reply));
    *out = (bus_msg_t *)reply;
    return 0;
}

int bus_respond(bus_t *bus, const bus_msg_t *req, const void *data, size_t len) {
    const char *reply = bus_msg_reply(req);
    if (!bus || !reply) return bus_fail(SL_EINVAL, "bus_respond: request has no reply subject");
    return bus_publish_impl(bus, reply, NULL, data, len);
}

/* ---- protobuf ------------------------------------------------------------------------------ */

typedef struct bus_packed {
    uint8_t *p;
    size_t n;
    uint8_t inl[1024];
} bus_packed_t;

/* Packs m into pk (inline buffer when small), checking the size first. */
static int bus_pack(bus_t *bus, const char *subject, const ProtobufCMessage *m, size_t hdr,
                    bus_packed_t *pk) {
    pk->p = NULL;
    pk->n = 0;
    if (!m || !m->descriptor || m->descriptor->magic != PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC)
        return bus_fail(SL_EINVAL, "bus: not a protobuf-c message");
    size_t n = protobuf_c_message_get_packed_size(m);
    int rc = bus_check_size(bus, subject, n, hdr);
    if (rc) return rc;
    uint8_t *p = n <= sizeof pk->inl ? pk->inl : malloc(n);
    if (!p) return bus_fail(SL_ENOMEM, "bus: out of memory packing %zu bytes", n);
    size_t w = protobuf_c_message_pack(m, p);
    if (w != n) {
        if (p != pk->inl) free(p);
        return bus_fail(SL_EINVAL, "bus: %s packed to %zu bytes, expected %zu", m->descriptor->name,
                        w, n);
    }
    pk->p = p;
    pk->n = n;
    return 0;
}

static void bus_packed_release(bus_packed_t *pk) {
    if (pk->p && pk->p != pk->inl) free(pk->p);
    pk->p = NULL;
}

int bus_publish_proto(bus_t *bus, const char *subject, const ProtobufCMessage *m) {
    bus_packed_t pk;
    if (!bus) return bus_fail(SL_EINVAL, "bus_publish_proto: bus is NULL");
    int rc = bus_pack(bus, subject, m, 0, &pk);
    if (rc) return rc;
    rc = bus_publish_impl(bus, subject, NULL, pk.p, pk.n);
    bus_packed_release(&pk);
    return rc;
}

int bus_respond_proto(bus_t *bus, const bus_msg_t *req, const ProtobufCMessage *m) {
    const char *reply = bus_msg_reply(req);
    if (!bus || !reply)
        return bus_fail(SL_EINVAL, "bus_respond_proto: request has no reply subject");
    return bus_publish_proto(bus, reply, m);
}

int bus_msg_unpack(const bus_msg_t *msg, const ProtobufCMessageDescriptor *desc,
                   ProtobufCMessage **out) {
    if (!out) return bus_fail(SL_EINVAL, "bus_msg_unpack: out is NULL");
    *out = NULL;
    if (!msg || !desc) return bus_fail(SL_EINVAL, "bus_msg_unpack: bad argument");
    size_t len = bus_msg_len(msg);
    const uint8_t *data = len ? bus_msg_data(msg) : (const uint8_t *)"";
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, len, data);
    if (!m)
        return bus_fail(SL_EPROTO, "message of %zu bytes on %s does not unpack as %s", len,
                        bus_msg_subject(msg), desc->name);
    *out = m;
    return 0;
}

int bus_request_proto(bus_t *bus, const char *subject, const ProtobufCMessage *m,
                      const ProtobufCMessageDescriptor *resp_desc, int timeout_ms,
                      ProtobufCMessage **out) {
    bus_packed_t pk = {0};
    bus_msg_t *reply = NULL;
    int rc;
    if (!out) return bus_fail(SL_EINVAL, "bus_request_proto: out is NULL");
    *out = NULL;
    if (!bus || !resp_desc) return bus_fail(SL_EINVAL, "bus_request_proto: bad argument");
    rc = bus_pack(bus, subject, m, 0, &pk);
    if (rc) goto out;
    rc = bus_request(bus, subject, pk.p, pk.n, timeout_ms, &reply);
    if (rc) goto out;
    rc = bus_msg_unpack(reply, resp_desc, out);
    if (rc) bus_note_malformed(bus, bus_msg_subject(reply), resp_desc->name);
out:
    bus_packed_release(&pk);
    bus_msg_free(reply);
    return rc;
}

/* ---- streams: requester side ---------------------------------------------------------------- */

static size_t bus_stream_bucket(uint64_t id) {
    return (size_t)((id * 0x9e3779b97f4a7c15ULL) >> 32) & (BUS_STREAM_BUCKETS - 1);
}

/* Caller holds bus->mu. */
static bus_stream_t *bus_stream_find(bus_t *bus, uint64_t id) {
    for (bus_stream_t *s = bus->streams[bus_stream_bucket(id)]; s; s = s->next)
        if (s->id == id) return s;
    return NULL;
}

static void bus_stream_unlink(bus_stream_t *s) {
    bus_t *bus = s->bus;
    pthread_mutex_lock(&bus->mu);
    for (bus_stream_t **pp = &bus->streams[bus_stream_bucket(s->id)]; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    pthread_mutex_unlock(&bus->mu);
}

static void bus_fail_all_streams(bus_t *bus) {
    pthread_mutex_lock(&bus->mu);
    for (size_t i = 0; i < BUS_STREAM_BUCKETS; i++) {
        for (bus_stream_t *s = bus->streams[i]; s; s = s->next) {
            pthread_mutex_lock(&s->mu);
            s->conn_lost = true;
            pthread_cond_broadcast(&s->cond);
            pthread_mutex_unlock(&s->mu);
        }
    }
    pthread_mutex_unlock(&bus->mu);
}

/* Appends m to s's arrival ring. Caller holds s->mu. */
static int bus_stream_push(bus_stream_t *s, natsMsg *m) {
    if (s->qlen == s->qcap) {
        size_t ncap = s->qcap ? s->qcap * 2 : 64;
        if (ncap > SIZE_MAX / sizeof *s->q) return SL_ENOMEM;
        natsMsg **nq = malloc(ncap * sizeof *nq);
        if (!nq) return SL_ENOMEM;
        for (size_t i = 0; i < s->qlen; i++) nq[i] = s->q[(s->qhead + i) % s->qcap];
        free(s->q);
        s->q = nq;
        s->qcap = ncap;
        s->qhead = 0;
    }
    s->q[(s->qhead + s->qlen) % s->qcap] = m;
    s->qlen++;
    return 0;
}

static void bus_inbox_cb(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
    (void)nc;
    (void)sub;
    bus_t *bus = closure;
    const char *subj = natsMsg_GetSubject(msg);
    size_t plen = strlen(bus->inbox);
    uint64_t id = 0;
    int n = natsMsg_GetDataLength(msg);
    bus_stat_add(&bus->st.received, 1);
    bus_stat_add(&bus->st.bytes_in, n > 0 ? (uint64_t)n : 0);
    if (!subj || strncmp(subj, bus->inbox, plen) != 0 || subj[plen] != '.' ||
        !bus_parse_u64(subj + plen + 1, &id)) {
        bus_note_malformed(bus, subj, "reply to an unknown inbox");
        natsMsg_Destroy(msg);
        return;
    }
    pthread_mutex_lock(&bus->mu);
    bus_stream_t *s = bus_stream_find(bus, id);
    if (s) {
        pthread_mutex_lock(&s->mu);
        if (bus_stream_push(s, msg) == 0) {
            msg = NULL;
            s->last_arrival_ms = bus_now_ms();
            pthread_cond_signal(&s->cond);
        }
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_unlock(&bus->mu);
    if (msg) {
        bus_note_dropped(bus, s ? "out of memory queueing a stream chunk"
                                : "chunk for a stream that is already closed");
        natsMsg_Destroy(msg);
    }
}

int bus_stream_open(bus_t *bus, const char *subject, const void *data, size_t len,
                    const bus_stream_opts_t *opts, bus_stream_t **out) {
    int rc = 0;
    bus_stream_t *s = NULL;
    bus_stream_opts_t def = {0};
    if (!out) return bus_fail(SL_EINVAL, "bus_stream_open: out is NULL");
    *out = NULL;
    if (!opts) opts = &def;
    if (!bus || !bus_subject_valid(subject, false) || (len && !data))
        return bus_fail(SL_EINVAL, "bus_stream_open: bad argument");
    if (opts->idle_timeout_ms < 0 || opts->gap_timeout_ms < 0 || opts->reorder_window < 0 ||
        opts->reorder_window > BUS_REORDER_MAX)
        return bus_fail(SL_EINVAL, "bus_stream_open: options out of range (reorder_window <= %d)",
                        BUS_REORDER_MAX);
    if (strlen(subject) >= BUS_SUBJECT_MAX)
        return bus_fail(SL_EINVAL, "bus_stream_open: subject longer than %d bytes",
                        BUS_SUBJECT_MAX - 1);
    rc = bus_check_size(bus, subject, len, 0);
    if (rc) return rc;

    s = calloc(1, sizeof *s);
    if (!s) return bus_fail(SL_ENOMEM, "bus_stream_open: out of memory");
    s->bus = bus;
    s->idle_timeout_ms = opts->idle_timeout_ms ? opts->idle_timeout_ms : 30000;
    s->gap_timeout_ms = opts->gap_timeout_ms ? opts->gap_timeout_ms : 500;
    s->window = opts->reorder_window ? opts->reorder_window : 64;
    snprintf(s->subject, sizeof s->subject, "%s", subject);
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);
    s->held = calloc((size_t)s->window, sizeof *s->held);
    if (!s->held) {
        rc = bus_fail(SL_ENOMEM, "bus_stream_open: out of memory");
        goto out;
    }
    s->last_arrival_ms = bus_now_ms();

    pthread_mutex_lock(&bus->mu);
    if (bus->closing) {
        pthread_mutex_unlock(&bus->mu);
        rc = bus_fail(SL_ECLOSED, "bus %s is closing", bus->name);
        goto out;
    }
    s->id = ++bus->next_stream_id;
    snprintf(s->inbox, sizeof s->inbox, "%s.%" PRIu64, bus->inbox, s->id);
    size_t b = bus_stream_bucket(s->id);
    s->next = bus->streams[b];
    bus->streams[b] = s;
    pthread_mutex_unlock(&bus->mu);

    rc = bus_publish_impl(bus, subject, s->inbox, data, len);
    if (rc) goto out;
    *out = s;
    s = NULL;
out:
    bus_stream_free(s); /* unlinks it when it was linked (id != 0) */
    return rc;
}

int bus_stream_open_proto(bus_t *bus, const char *subject, const ProtobufCMessage *m,
                          const bus_stream_opts_t *opts, bus_stream_t **out) {
    bus_packed_t pk;
    if (out) *out = NULL;
    if (!bus) return bus_fail(SL_EINVAL, "bus_stream_open_proto: bus is NULL");
    int rc = bus_pack(bus, subject, m, 0, &pk);
    if (rc) return rc;
    rc = bus_stream_open(bus, subject, pk.p, pk.n, opts, out);
    bus_packed_release(&pk);
    return rc;
}

__attribute__((format(printf, 3, 4))) static int bus_stream_set_err(bus_stream_t *s, int code,
                                                                    const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->errmsg, sizeof s->errmsg, fmt, ap);
    va_end(ap);
    s->err = code;
    return bus_fail(code, "%s", s->errmsg);
}

/* Takes an arrived message m (consumer side, s->mu not held). Returns 1 and sets
 * *ready when m is the next in sequence, 0 when it was held for reordering,
 * or a negative code (stream failed; m consumed). */
static int bus_stream_accept(bus_stream_t *s, natsMsg *m, natsMsg **ready) {
    uint64_t seq = 0;
    const char *v = NULL;
    if (natsMsg_IsNoResponders(m)) {
        natsMsg_Destroy(m);
        return bus_stream_set_err(s, SL_EUNAVAIL, "no responders on %s (nobody is subscribed)",
                                  s->subject);
    }
    if (natsMsgHeader_Get(m, BUS_HDR_SEQ, &v) != NATS_OK || !bus_parse_u64(v, &seq)) {
        natsMsg_Destroy(m);
        bus_note_malformed(s->bus, s->inbox, "stream chunk without a valid Sl-Seq header");
        return bus_stream_set_err(s, SL_EPROTO,
                                  "stream from %s: message without a valid %s header after %" PRIu64
                                  " messages",
                                  s->subject, BUS_HDR_SEQ, s->delivered);
    }
    if (seq == s->expected) {
        *ready = m;
        return 1;
    }
    if (seq < s->expected) {
        natsMsg_Destroy(m);
        return bus_stream_set_err(
            s, SL_EPROTO, "stream from %s: duplicate seq %" PRIu64 " (expected %" PRIu64 ")",
            s->subject, seq, s->expected);
    }
    if (seq - s->expected >= (uint64_t)s->window) {
        natsMsg_Destroy(m);
        return bus_stream_set_err(s, SL_EPROTO,
                                  "stream from %s: gap: expected seq %" PRIu64 ", got %" PRIu64
                                  " (beyond the reorder window of %d)",
                                  s->subject, s->expected, seq, s->window);
    }
    size_t slot = (size_t)(seq % (uint64_t)s->window);
    if (s->held[slot]) {
        natsMsg_Destroy(m);
        return bus_stream_set_err(s, SL_EPROTO, "stream from %s: duplicate seq %" PRIu64,
                                  s->subject, seq);
    }
    s->held[slot] = m;
    if (s->nheld++ == 0) s->gap_since_ms = bus_now_ms();
    return 0;
}

/* Final processing of the in-sequence message m. Returns 0 with *out, or the
 * responder's error code. */
static int bus_stream_deliver(bus_stream_t *s, natsMsg *m, bus_msg_t **out) {
    const char *v = NULL;
    s->expected++;
    s->delivered++;
    if (natsMsgHeader_Get(m, BUS_HDR_END, &v) == NATS_OK) s->finished = true;
    if (natsMsgHeader_Get(m, BUS_HDR_ERROR, &v) == NATS_OK) {
        char *end = NULL;
        errno = 0;
        long code = strtol(v, &end, 10);
        if (errno || !end || *end || code >= 0 || code < INT32_MIN) code = SL_EIO;
        int n = natsMsg_GetDataLength(m);
        const char *txt = natsMsg_GetData(m);
        s->finished = true;
        int rc = bus_stream_set_err(s, (int)code, "responder on %s failed: %.*s", s->subject,
                                    n > 300 ? 300 : (n > 0 ? n : 0), txt ? txt : "");
        natsMsg_Destroy(m);
        return rc;
    }
    *out = (bus_msg_t *)m;
    return 0;
}

int bus_stream_recv(bus_stream_t *s, bus_msg_t **out) {
    int rc = 0;
    if (!out) return bus_fail(SL_EINVAL, "bus_stream_recv: out is NULL");
    *out = NULL;
    if (!s) return bus_fail(SL_EINVAL, "bus_stream_recv: stream is NULL");
    if (s->err) return bus_fail(s->err, "%s", s->errmsg);
    if (s->finished) return bus_fail(SL_EEND, "stream from %s ended", s->subject);

    pthread_mutex_lock(&s->mu);
    for (;;) {
        natsMsg *ready = NULL;
        size_t slot = (size_t)(s->expected % (uint64_t)s->window);
        if (s->held[slot]) {
            ready = s->held[slot];
            s->held[slot] = NULL;
            if (--s->nheld > 0) s->gap_since_ms = bus_now_ms();
            rc = bus_stream_deliver(s, ready, out);
            break;
        }
        if (s->qlen) {
            natsMsg *m = s->q[s->qhead];
            s->qhead = (s->qhead + 1) % s->qcap;
            s->qlen--;
            /* Framing checks touch consumer-only state: run them unlocked so
             * the inbox callback (which holds bus->mu) never waits on them. */
            pthread_mutex_unlock(&s->mu);
            rc = bus_stream_accept(s, m, &ready);
            if (rc == 1) rc = bus_stream_deliver(s, ready, out);
            pthread_mutex_lock(&s->mu);
            if (rc != 0 || *out) break;
            continue;
        }
        if (s->cancelled) {
            rc = bus_stream_set_err(s, SL_ECANCELLED, "stream from %s cancelled", s->subject);
            break;
        }
        if (s->conn_lost) {
            rc = bus_stream_set_err(s, SL_ECLOSED,
                                    "connection to NATS lost mid-stream from %s after %" PRIu64
                                    " messages; the stream cannot be resumed",
                                    s->subject, s->delivered);
            break;
        }
        int64_t now = bus_now_ms();
        int64_t idle_at = s->last_arrival_ms + s->idle_timeout_ms;
        int64_t gap_at = s->nheld ? s->gap_since_ms + s->gap_timeout_ms : INT64_MAX;
        if (now >= gap_at) {
            rc = bus_stream_set_err(s, SL_EPROTO,
                                    "stream from %s: gap: seq %" PRIu64
                                    " missing for %d ms while %d later messages arrived",
                                    s->subject, s->expected, s->gap_timeout_ms, s->nheld);
            break;
        }
        if (now >= idle_at) {
            rc = bus_stream_set_err(
                s, SL_ETIMEDOUT,
                "stream from %s: no message for %d ms (idle timeout) after %" PRIu64 " messages",
                s->subject, s->idle_timeout_ms, s->delivered);
            break;
        }
        int64_t until = idle_at < gap_at ? idle_at : gap_at;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t wait = until - now;
        ts.tv_sec += wait / 1000;
        ts.tv_nsec += (wait % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->cond, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int bus_stream_recv_proto(bus_stream_t *s, const ProtobufCMessageDescriptor *desc,
                          ProtobufCMessage **out, bool *last) {
    bus_msg_t *m = NULL;
    if (!out || !desc) return bus_fail(SL_EINVAL, "bus_stream_recv_proto: bad argument");
    *out = NULL;
    if (last) *last = false;
    int rc = bus_stream_recv(s, &m);
    if (rc) return rc;
    if (last) *last = bus_msg_is_last(m);
    rc = bus_msg_unpack(m, desc, out);
    if (rc) {
        bus_note_malformed(s->bus, s->inbox, desc->name);
        rc = bus_stream_set_err(s, SL_EPROTO,
                                "stream from %s: message seq %" PRIu64 " does not unpack as %s",
                                s->subject, bus_msg_seq(m), desc->name);
    }
    bus_msg_free(m);
    return rc;
}

void bus_stream_cancel(bus_stream_t *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->cancelled = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

void bus_stream_set_idle_timeout(bus_stream_t *s, int ms) {
    if (!s || ms <= 0) return;
    pthread_mutex_lock(&s->mu);
    s->idle_timeout_ms = ms;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

const char *bus_stream_inbox(const bus_stream_t *s) {
    return s ? s->inbox : "";
}

const char *bus_stream_error(const bus_stream_t *s) {
    return s ? s->errmsg : "";
}

void bus_stream_free(bus_stream_t *s) {
    if (!s) return;
    if (s->id) bus_stream_unlink(s);
    /* Unlinked: the inbox callback can no longer reach s. */
    for (size_t i = 0; i < s->qlen; i++) natsMsg_Destroy(s->q[(s->qhead + i) % s->qcap]);
    if (s->held)
        for (int i = 0; i < s->window; i++) natsMsg_Destroy(s->held[i]);
    free(s->q);
    free(s->held);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* ---- streams: responder side -------------------------------------------------------------- */

int bus_stream_writer_create_reply(bus_t *bus, const char *reply, bus_stream_writer_t **out) {
    if (!out) return bus_fail(SL_EINVAL, "bus_stream_writer_create: out is NULL");
    *out = NULL;
    if (!bus || !bus_subject_valid(reply, false))
        return bus_fail(SL_EINVAL, "bus_stream_writer_create: no valid reply subject");
    size_t n = strlen(reply);
    if (n >= BUS_SUBJECT_MAX)
        return bus_fail(SL_EINVAL, "bus_stream_writer_create: reply subject too long");
    bus_stream_writer_t *w = calloc(1, sizeof *w + n + 1);
    if (!w) return bus_fail(SL_ENOMEM, "bus_stream_writer_create: out of memory");
    w->bus = bus;
    w->disconnects = __atomic_load_n(&bus->st.disconnects, __ATOMIC_RELAXED);
    memcpy(w->reply, reply, n + 1);
    *out = w;
    return 0;
}

int bus_stream_writer_create(bus_t *bus, const bus_msg_t *req, bus_stream_writer_t **out) {
    return bus_stream_writer_create_reply(bus, bus_msg_reply(req), out);
}

static int bus_writer_emit(bus_stream_writer_t *w, const void *data, size_t len, bool end,
                           int errcode) {
    int rc = 0;
    natsMsg *m = NULL;
    natsStatus s;
    char seqbuf[24], codebuf[16];
    const char *kv[6];
    int nkv = 0;
    if (!w || (len && !data)) return bus_fail(SL_EINVAL, "bus_stream_writer: bad argument");
    if (w->ended)
        return bus_fail(SL_ECLOSED, "stream to %s already ended after %" PRIu64 " messages",
                        w->reply, w->seq);
    /* The requester fails its stream when the link drops; anything sent
     * after that is lost, so tell the producer to stop instead. */
    if (natsConnection_Status(w->bus->nc) != NATS_CONN_STATUS_CONNECTED ||
        __atomic_load_n(&w->bus->st.disconnects, __ATOMIC_RELAXED) != w->disconnects)
        return bus_fail(SL_ECLOSED,
                        "connection to NATS lost after %" PRIu64
                        " messages of the stream to %s; it cannot continue",
                        w->seq, w->reply);
    snprintf(seqbuf, sizeof seqbuf, "%" PRIu64, w->seq);
    kv[nkv++] = BUS_HDR_SEQ;
    kv[nkv++] = seqbuf;
    if (end) {
        kv[nkv++] = BUS_HDR_END;
        kv[nkv++] = "1";
    }
    if (errcode) {
        snprintf(codebuf, sizeof codebuf, "%d", errcode);
        kv[nkv++] = BUS_HDR_ERROR;
        kv[nkv++] = codebuf;
    }
    rc = bus_check_size(w->bus, w->reply, len, bus_hdr_size(nkv / 2, kv));
    if (rc) return rc;
    s = natsMsg_Create(&m, w->reply, NULL, data, (int)len);
    for (int i = 0; s == NATS_OK && i < nkv; i += 2) s = natsMsgHeader_Set(m, kv[i], kv[i + 1]);
    if (s == NATS_OK) s = natsConnection_PublishMsg(w->bus->nc, m);
    if (s != NATS_OK) {
        rc = bus_fail_nats(s, "stream send to", w->reply);
        goto out;
    }
    w->seq++;
    if (end) w->ended = true;
    bus_stat_add(&w->bus->st.published, 1);
    bus_stat_add(&w->bus->st.bytes_out, len);
out:
    natsMsg_Destroy(m);
    return rc;
}

int bus_stream_writer_send(bus_stream_writer_t *w, const void *data, size_t len) {
    return bus_writer_emit(w, data, len, false, 0);
}

int bus_stream_writer_end(bus_stream_writer_t *w, const void *data, size_t len) {
    return bus_writer_emit(w, data, len, true, 0);
}

static int bus_writer_emit_proto(bus_stream_writer_t *w, const ProtobufCMessage *m, bool end) {
    bus_packed_t pk;
    if (!w) return bus_fail(SL_EINVAL, "bus_stream_writer: writer is NULL");
    int rc = bus_pack(w->bus, w->reply, m, 64, &pk);
    if (rc) return rc;
    rc = bus_writer_emit(w, pk.p, pk.n, end, 0);
    bus_packed_release(&pk);
    return rc;
}

int bus_stream_writer_send_proto(bus_stream_writer_t *w, const ProtobufCMessage *m) {
    return bus_writer_emit_proto(w, m, false);
}

int bus_stream_writer_end_proto(bus_stream_writer_t *w, const ProtobufCMessage *m) {
    return bus_writer_emit_proto(w, m, true);
}

int bus_stream_writer_fail(bus_stream_writer_t *w, int code, const char *message) {
    if (code >= 0) return bus_fail(SL_EINVAL, "bus_stream_writer_fail: code must be negative");
    if (!message) message = sl_strerror(code);
    size_t n = strnlen(message, 1024);
    return bus_writer_emit(w, message, n, true, code);
}

uint64_t bus_stream_writer_seq(const bus_stream_writer_t *w) {
    return w ? w->seq : 0;
}

void bus_stream_writer_free(bus_stream_writer_t *w) {
    free(w);
}

/* ---- subjects -----------------------------------------------------------------------------------
 */

static bool bus_token_ok(const char *t) {
    if (!t || !*t) return false;
    for (const unsigned char *p = (const unsigned char *)t; *p; p++)
        if (*p <= 0x20 || *p == 0x7f || *p == '.' || *p == '*' || *p == '>') return false;
    return true;
}

static int bus_subject_put(char *buf, size_t len, int n) {
    if (n < 0) return bus_fail(SL_EINVAL, "bus_subject: format error");
    if ((size_t)n >= len) {
        if (len) buf[0] = 0;
        return bus_fail(SL_ETOOBIG, "bus_subject: %d bytes do not fit in %zu", n + 1, len);
    }
    return 0;
}

int bus_subject_instance(char *buf, size_t len, const char *ns, const char *component,
                         const char *endpoint, uint64_t instance_id) {
    if (!buf || !bus_token_ok(ns) || !bus_token_ok(component) || !bus_token_ok(endpoint))
        return bus_fail(SL_EINVAL, "bus_subject_instance: bad subject token");
    return bus_subject_put(
        buf, len,
        snprintf(buf, len, "sluice.%s.%s.%s.%016" PRIx64, ns, component, endpoint, instance_id));
}

int bus_subject_endpoint(char *buf, size_t len, const char *ns, const char *component,
                         const char *endpoint) {
    if (!buf || !bus_token_ok(ns) || !bus_token_ok(component) || !bus_token_ok(endpoint))
        return bus_fail(SL_EINVAL, "bus_subject_endpoint: bad subject token");
    return bus_subject_put(buf, len,
                           snprintf(buf, len, "sluice.%s.%s.%s", ns, component, endpoint));
}

int bus_subject_topic(char *buf, size_t len, const char *ns, const char *topic) {
    if (!buf || !bus_token_ok(ns) || !bus_token_ok(topic))
        return bus_fail(SL_EINVAL, "bus_subject_topic: bad subject token");
    return bus_subject_put(buf, len, snprintf(buf, len, "sluice.%s.%s", ns, topic));
}
