/* etcd.c - etcd v3 HTTP/JSON gateway client: unary calls on pooled curl
 * handles, watches on their own thread and curl multi handle.
 *
 * Wire notes (etcd 3.4 and 3.5 gateways): every request is a POST of JSON to
 * /v3/<service>/<method>; bytes fields are base64; int64 fields are sent and
 * received as JSON strings; zero-valued fields are omitted from replies; an
 * error reply is {"error":..,"message":..,"code":<gRPC code>} with a 4xx/5xx
 * status; a watch is one long POST whose reply is newline-delimited
 * {"result":{..}} objects.
 */
#include "common/runtime/etcd.h"

#include "common/base/base64.h"
#include "common/base/err.h"
#include "common/base/log.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ETCD_POOL_MAX      8
#define ETCD_EPS_MAX       8           /* endpoints in a comma-separated URL list */
#define ETCD_REPLY_MAX     (64u << 20) /* largest unary reply we accept */
#define ETCD_LINE_MAX      (64u << 20) /* largest single watch message */
#define ETCD_BACKOFF_MIN   100         /* ms */
#define ETCD_BACKOFF_MAX   2000        /* ms */
#define ETCD_DEFAULT_URL   "http://127.0.0.1:2379"
#define ETCD_DEFAULT_TIMEO 5000

struct etcd {
    char *url;               /* normalized endpoint list, comma-separated */
    char *eps[ETCD_EPS_MAX]; /* (neps) base URLs */
    size_t neps;
    atomic_uint cur; /* endpoint in use; moves on when one is unreachable */
    int timeout_ms;
    pthread_mutex_t mu;
    CURL *pool[ETCD_POOL_MAX]; /* idle handles, each keeps its connection */
    size_t npool;
};

/* growable byte buffer for replies */
typedef struct etcd_buf {
    char *p;
    size_t len, cap, max;
    bool overflow;
} etcd_buf_t;

static pthread_once_t etcd_curl_once = PTHREAD_ONCE_INIT;
static CURLcode etcd_curl_init_rc = CURLE_OK;

static void etcd_curl_global_init(void) {
    etcd_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- small helpers ---------------------------------------------------------- */

static int etcd_buf_append(etcd_buf_t *b, const void *data, size_t n) {
    if (n > b->max - b->len) {
        b->overflow = true;
        return SL_ETOOBIG;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return SL_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

static size_t etcd_buf_write_cb(char *data, size_t size, size_t nmemb, void *ud) {
    size_t n = size * nmemb;
    return etcd_buf_append(ud, data, n) == 0 ? n : 0;
}

/* Reads an int64 that the gateway sends as a string (or, defensively, a
 * number). A missing field is 0, as the gateway omits zeros. */
static int json_i64(const cJSON *obj, const char *name, int64_t *out) {
    *out = 0;
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!it || cJSON_IsNull(it)) return 0;
    if (cJSON_IsString(it)) {
        const char *s = it->valuestring;
        if (!*s) return SL_EPROTO;
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (errno || *end) return SL_EPROTO;
        *out = v;
        return 0;
    }
    if (cJSON_IsNumber(it)) {
        double d = it->valuedouble;
        if (d != d || d < -9.0e15 || d > 9.0e15) return SL_EPROTO;
        *out = (int64_t)d;
        return 0;
    }
    return SL_EPROTO;
}

static bool json_bool(const cJSON *obj, const char *name) {
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(obj, name));
}

/* Decodes a base64 field into a NUL-terminated malloc'd buffer; missing field
 * means empty. */
static int json_b64(const cJSON *obj, const char *name, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
    const char *s = "";
    if (it) {
        if (!cJSON_IsString(it)) return SL_EPROTO;
        s = it->valuestring;
    }
    uint8_t *buf;
    int rc = base64_decode_alloc(s, strlen(s), &buf, len);
    if (rc == SL_EINVAL) return SL_EPROTO;
    if (rc != 0) return rc;
    *out = (char *)buf;
    return 0;
}

static int json_add_b64(cJSON *obj, const char *name, const void *data, size_t n) {
    char *enc = base64_encode_alloc(data, n);
    if (!enc) return SL_ENOMEM;
    cJSON *s = cJSON_AddStringToObject(obj, name, enc);
    free(enc);
    return s ? 0 : SL_ENOMEM;
}

static int json_add_i64(cJSON *obj, const char *name, int64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    return cJSON_AddStringToObject(obj, name, buf) ? 0 : SL_ENOMEM;
}

/* The smallest key greater than every key starting with prefix: the prefix
 * with its last non-0xff byte incremented. An empty or all-0xff prefix has no
 * such key; etcd spells "to the end" as "\0". */
static size_t etcd_prefix_end(const char *prefix, size_t n, char *out) {
    memcpy(out, prefix, n);
    while (n > 0) {
        if ((unsigned char)out[n - 1] != 0xff) {
            out[n - 1] = (char)((unsigned char)out[n - 1] + 1);
            return n;
        }
        n--;
    }
    out[0] = 0;
    return 1;
}

static int etcd_kv_parse(const cJSON *j, etcd_kv_t *kv) {
    memset(kv, 0, sizeof *kv);
    int rc;
    if (!cJSON_IsObject(j)) return SL_EPROTO;
    if ((rc = json_b64(j, "key", &kv->key, &kv->key_len)) != 0) goto out;
    if ((rc = json_b64(j, "value", &kv->value, &kv->value_len)) != 0) goto out;
    if ((rc = json_i64(j, "create_revision", &kv->create_revision)) != 0) goto out;
    if ((rc = json_i64(j, "mod_revision", &kv->mod_revision)) != 0) goto out;
    if ((rc = json_i64(j, "version", &kv->version)) != 0) goto out;
    rc = json_i64(j, "lease", &kv->lease);
out:
    if (rc != 0) {
        free(kv->key);
        free(kv->value);
        memset(kv, 0, sizeof *kv);
    }
    return rc;
}

static void etcd_kv_clear(etcd_kv_t *kv) {
    free(kv->key);
    free(kv->value);
    memset(kv, 0, sizeof *kv);
}

void etcd_kv_free(etcd_kv_t *kv) {
    if (!kv) return;
    etcd_kv_clear(kv);
    free(kv);
}

void etcd_range_result_free(etcd_range_result_t *r) {
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) etcd_kv_clear(&r->kvs[i]);
    free(r->kvs);
    memset(r, 0, sizeof *r);
}

static int etcd_grpc_to_err(int code) {
    switch (code) {
    case 3:
        return SL_EINVAL; /* INVALID_ARGUMENT */
    case 4:
        return SL_ETIMEDOUT; /* DEADLINE_EXCEEDED */
    case 5:
        return SL_ENOTFOUND; /* NOT_FOUND */
    case 6:
        return SL_EEXIST; /* ALREADY_EXISTS */
    case 8:
        return SL_ETOOBIG; /* RESOURCE_EXHAUSTED */
    case 1:
        return SL_ECANCELLED; /* CANCELLED */
    case 12:
        return SL_EUNSUPPORTED;
    case 14:
        return SL_EUNAVAIL; /* UNAVAILABLE: no leader, shutting down */
    default:
        return SL_EIO;
    }
}

static int etcd_curl_to_err(CURLcode cc) {
    switch (cc) {
    case CURLE_OK:
        return 0;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
        return SL_EUNAVAIL;
    case CURLE_OPERATION_TIMEDOUT:
        return SL_ETIMEDOUT;
    case CURLE_OUT_OF_MEMORY:
        return SL_ENOMEM;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return SL_EINVAL;
    default:
        return SL_EIO;
    }
}

/* ---- client ----------------------------------------------------------------- */

/* Normalizes one endpoint ("host:port" gets http://, trailing '/' goes) into
 * a malloc'd string, or NULL when it is not an http(s) URL. */
static char *etcd_endpoint_parse(const char *s, size_t n) {
    if (n == 0 || n > 1024) return NULL;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == 0x7f) return NULL;
    bool bare = !memmem(s, n, "://", 3);
    if (!bare && !(n > 7 && strncmp(s, "http://", 7) == 0) &&
        !(n > 8 && strncmp(s, "https://", 8) == 0))
        return NULL;
    char *u = malloc(n + 8);
    if (!u) return NULL;
    snprintf(u, n + 8, "%s%.*s", bare ? "http://" : "", (int)n, s);
    size_t len = strlen(u);
    while (len > 0 && u[len - 1] == '/') u[--len] = 0;
    return u;
}

int etcd_open(const char *base_url, int timeout_ms, etcd_t **out) {
    int rc = 0;
    etcd_t *c = NULL;
    if (!out) return SL_EINVAL;
    *out = NULL;
    if (!base_url) base_url = getenv("SLUICE_ETCD");
    if (!base_url || !*base_url) base_url = ETCD_DEFAULT_URL;
    size_t n = strlen(base_url);
    if (n > 4096 || timeout_ms < 0) return SL_EINVAL;
    pthread_once(&etcd_curl_once, etcd_curl_global_init);
    if (etcd_curl_init_rc != CURLE_OK) return SL_EIO;
    if (!(c = calloc(1, sizeof *c)) || !(c->url = malloc(n * 2 + 16))) {
        rc = SL_ENOMEM;
        goto out;
    }
    c->url[0] = 0;
    size_t used = 0;
    for (const char *p = base_url;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (c->neps == ETCD_EPS_MAX || !(c->eps[c->neps] = etcd_endpoint_parse(p, len))) {
            rc = SL_EINVAL;
            goto out;
        }
        used += (size_t)snprintf(c->url + used, n * 2 + 16 - used, "%s%s", c->neps ? "," : "",
                                 c->eps[c->neps]);
        c->neps++;
        if (!comma) break;
        p = comma + 1;
    }
    atomic_init(&c->cur, 0);
    c->timeout_ms = timeout_ms ? timeout_ms : ETCD_DEFAULT_TIMEO;
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    c = NULL;
out:
    if (c) {
        for (size_t i = 0; i < c->neps; i++) free(c->eps[i]);
        free(c->url);
    }
    free(c);
    return rc;
}

void etcd_free(etcd_t *c) {
    if (!c) return;
    for (size_t i = 0; i < c->npool; i++) curl_easy_cleanup(c->pool[i]);
    pthread_mutex_destroy(&c->mu);
    for (size_t i = 0; i < c->neps; i++) free(c->eps[i]);
    free(c->url);
    free(c);
}

const char *etcd_url(const etcd_t *c) {
    return c ? c->url : NULL;
}

static CURL *etcd_handle_get(etcd_t *c) {
    CURL *h = NULL;
    pthread_mutex_lock(&c->mu);
    if (c->npool > 0) h = c->pool[--c->npool];
    pthread_mutex_unlock(&c->mu);
    if (h) {
        curl_easy_reset(h); /* keeps the live connection */
        return h;
    }
    return curl_easy_init();
}

static void etcd_handle_put(etcd_t *c, CURL *h) {
    pthread_mutex_lock(&c->mu);
    if (c->npool < ETCD_POOL_MAX) {
        c->pool[c->npool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&c->mu);
    if (h) curl_easy_cleanup(h);
}

/* Options shared by unary calls and the watch stream. */
static int etcd_handle_setup(const etcd_t *c, CURL *h, const char *base, const char *path,
                             const char *body, struct curl_slist *hdrs, char *url, size_t url_cap) {
    if ((size_t)snprintf(url, url_cap, "%s%s", base, path) >= url_cap) return SL_EINVAL;
    long connect_ms = c->timeout_ms < 2000 ? c->timeout_ms : 2000;
    CURLcode cc = CURLE_OK;
    cc |= curl_easy_setopt(h, CURLOPT_URL, url);
    cc |= curl_easy_setopt(h, CURLOPT_POST, 1L);
    cc |= curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    cc |= curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    cc |= curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    cc |= curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    cc |= curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    cc |= curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    cc |= curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    cc |= curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 5L);
    cc |= curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 2L);
    return cc == CURLE_OK ? 0 : SL_EIO;
}

static struct curl_slist *etcd_headers(void) {
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (!h) return NULL;
    /* no "Expect: 100-continue" round trip on larger bodies */
    struct curl_slist *h2 = curl_slist_append(h, "Expect:");
    if (!h2) curl_slist_free_all(h);
    return h2;
}

/* Maps an error reply body to an SL code. */
static int etcd_error_reply(const char *path, long status, const etcd_buf_t *b) {
    int rc = SL_EIO;
    cJSON *j = b->p ? cJSON_ParseWithLength(b->p, b->len) : NULL;
    const cJSON *code = j ? cJSON_GetObjectItemCaseSensitive(j, "code") : NULL;
    const cJSON *msg = j ? cJSON_GetObjectItemCaseSensitive(j, "message") : NULL;
    if (cJSON_IsNumber(code))
        rc = etcd_grpc_to_err(code->valueint);
    else if (status == 404)
        rc = SL_EUNSUPPORTED; /* no such gateway path */
    else if (status == 503)
        rc = SL_EUNAVAIL;
    /* etcd reports its own request cap as INVALID_ARGUMENT */
    if (cJSON_IsString(msg) && strstr(msg->valuestring, "too large")) rc = SL_ETOOBIG;
    LOG_DEBUG("etcd %s: HTTP %ld: %s", path, status,
              cJSON_IsString(msg) ? msg->valuestring : "(no message)");
    cJSON_Delete(j);
    return rc;
}

/* One POST of body to base + path. *unsent is set when the request cannot
 * have reached etcd (no connection), so another endpoint may take it. */
static int etcd_call_one(etcd_t *c, CURL *h, const char *base, const char *path, const char *body,
                         struct curl_slist *hdrs, cJSON **resp, bool *unsent) {
    int rc = 0;
    etcd_buf_t b = {.max = ETCD_REPLY_MAX};
    char url[1200];
    *unsent = false;
    if ((rc = etcd_handle_setup(c, h, base, path, body, hdrs, url, sizeof url)) != 0) goto out;
    CURLcode cc = CURLE_OK;
    cc |= curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
    cc |= curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, etcd_buf_write_cb);
    cc |= curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    if (cc != CURLE_OK) {
        rc = SL_EIO;
        goto out;
    }
    cc = curl_easy_perform(h);
    if (cc != CURLE_OK) {
        rc = b.overflow ? SL_ETOOBIG : etcd_curl_to_err(cc);
        *unsent = cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST;
        LOG_DEBUG("etcd %s: %s", url, curl_easy_strerror(cc));
        goto out;
    }
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        rc = etcd_error_reply(path, status, &b);
        goto out;
    }
    *resp = b.p ? cJSON_ParseWithLength(b.p, b.len) : NULL;
    if (!cJSON_IsObject(*resp)) {
        cJSON_Delete(*resp);
        *resp = NULL;
        rc = SL_EPROTO;
    }
out:
    free(b.p);
    return rc;
}

/* One unary call: POST req to path, parse the reply into *resp (caller
 * deletes). With several endpoints, an unreachable one is skipped; a call
 * that may have reached etcd is never repeated elsewhere (a grant or txn
 * must not run twice), but the next call starts at the next endpoint. */
static int etcd_call(etcd_t *c, const char *path, const cJSON *req, cJSON **resp) {
    int rc = 0;
    char *body = NULL;
    CURL *h = NULL;
    struct curl_slist *hdrs = NULL;
    *resp = NULL;
    if (!(body = cJSON_PrintUnformatted(req)) || !(hdrs = etcd_headers()) ||
        !(h = etcd_handle_get(c))) {
        rc = SL_ENOMEM;
        goto out;
    }
    unsigned start = atomic_load(&c->cur) % (unsigned)c->neps, idx = start;
    for (size_t k = 0; k < c->neps; k++) {
        bool unsent;
        idx = (unsigned)((start + k) % c->neps);
        if (k > 0) curl_easy_reset(h);
        rc = etcd_call_one(c, h, c->eps[idx], path, body, hdrs, resp, &unsent);
        if (!unsent) break;
    }
    if (c->neps > 1) { /* races between threads here are harmless */
        if (rc == SL_EUNAVAIL || rc == SL_ETIMEDOUT)
            atomic_store(&c->cur, (unsigned)((idx + 1) % c->neps));
        else if (idx != start)
            atomic_store(&c->cur, idx); /* it answered */
    }
out:
    if (h) etcd_handle_put(c, h);
    curl_slist_free_all(hdrs);
    free(body);
    return rc;
}

static int64_t etcd_header_revision(const cJSON *resp) {
    int64_t rev = 0;
    json_i64(cJSON_GetObjectItemCaseSensitive(resp, "header"), "revision", &rev);
    return rev;
}

static bool etcd_key_ok(const char *key) {
    return key && *key && strlen(key) <= (1u << 20);
}

/* ---- leases ------------------------------------------------------------------ */

int etcd_lease_grant(etcd_t *c, int64_t ttl_s, int64_t *id, int64_t *ttl_out) {
    int rc;
    cJSON *req = NULL, *resp = NULL;
    if (!c || !id || ttl_s < 1 || ttl_s > 9000000000LL) return SL_EINVAL;
    if (!(req = cJSON_CreateObject()) || json_add_i64(req, "TTL", ttl_s) != 0) {
        rc = SL_ENOMEM;
        goto out;
    }
    if ((rc = etcd_call(c, "/v3/lease/grant", req, &resp)) != 0) goto out;
    int64_t lid, ttl;
    if ((rc = json_i64(resp, "ID", &lid)) != 0 || (rc = json_i64(resp, "TTL", &ttl)) != 0) goto out;
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(resp, "error");
    if (lid <= 0 || cJSON_IsString(err)) {
        rc = SL_EIO;
        goto out;
    }
    *id = lid;
    if (ttl_out) *ttl_out = ttl;
out:
    cJSON_Delete(req);
    cJSON_Delete(resp);
    return rc;
}

static cJSON *etcd_id_req(int64_t id) {
    cJSON *req = cJSON_CreateObject();
    if (req && json_add_i64(req, "ID", id) != 0) {
        cJSON_Delete(req);
        req = NULL;
    }
    return req;
}

int etcd_lease_keepalive(etcd_t *c, int64_t id, int64_t *ttl_out) {
    int rc;
    cJSON *req = NULL, *resp = NULL;
    if (!c || id <= 0) return SL_EINVAL;
    if (!(req = etcd_id_req(id))) {
        rc = SL_ENOMEM;
        goto out;
    }
    if ((rc = etcd_call(c, "/v3/lease/keepalive", req, &resp)) != 0) goto out;
    /* a stream of one: {"result":{..}} or {"error":{..}} */
    const cJSON *res = cJSON_GetObjectItemCaseSensitive(resp, "result");
    if (!cJSON_IsObject(res)) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(resp, "error");
        const cJSON *code = e ? cJSON_GetObjectItemCaseSensitive(e, "grpc_code") : NULL;
        rc = cJSON_IsNumber(code) ? etcd_grpc_to_err(code->valueint) : SL_EPROTO;
        goto out;
    }
    int64_t ttl;
    if ((rc = json_i64(res, "TTL", &ttl)) != 0) goto out;
    if (ttl <= 0) { /* TTL omitted: the lease is gone */
        rc = SL_ENOTFOUND;
        goto out;
    }
    if (ttl_out) *ttl_out = ttl;
out:
    cJSON_Delete(req);
    cJSON_Delete(resp);
    return rc;
}

int etcd_lease_revoke(etcd_t *c, int64_t id) {
    int rc;
    cJSON *req = NULL, *resp = NULL;
    if (!c || id <= 0) return SL_EINVAL;
    if (!(req = etcd_id_req(id))) {
        rc = SL_ENOMEM;
        goto out;
    }
    rc = etcd_call(c, "/v3/lease/revoke", req, &resp);
out:
    cJSON_Delete(req);
    cJSON_Delete(resp);
    return rc;
}

int etcd_lease_ttl(etcd_t *c, int64_t id, int64_t *remaining_s) {
    int rc;
    cJSON *req = NULL, *resp = NULL;
    if (!c || id <= 0 || !remaining_s) return SL_EINVAL;
    if (!(req = etcd_id_req(id))) {
        rc = SL_ENOMEM;
        goto out;
    }
    if ((rc = etcd_call(c, "/v3/lease/timetolive", req, &resp)) != 0) goto out;
    int64_t ttl;
    if ((rc = json_i64(resp, "TTL", &ttl)) != 0) goto out;
    if (ttl < 0) { /* -1: no such lease */
        rc = SL_ENOTFOUND;
        goto out;
    }
    *remaining_s = ttl;
out:
    cJSON_Delete(req);
    cJSON_Delete(resp);
    return rc;
}

/* ---- keys ---------------------------------------------------------------------- */

static cJSON *etcd_put_req(const char *key, const void *value, size_t len, int64_t lease) {
    cJSON *req = cJSON_CreateObject();
    if (!req || json_add_b64(req, "key", key, strlen(key)) != 0 ||
        json_add_b64(req, "value", value, len) != 0 ||
        (lease && json_add_i64(req, "lease", lease) != 0)) {
        cJSON_Delete(req);
        return NULL;
    }
    return req;
}

int etcd_put(etcd_t *c, const char *key, const void *value, size_t len, int64_t lease,
             int64_t *revision) {
    int rc;
    cJSON *req = NULL, *resp = NULL;
    if (!c || !etcd_key_ok(key) || (!value && len) || lease < 0) return SL_EINVAL;
    if (!(req = etcd_put_req(key, value, len, lease))) {
        rc = SL_ENOMEM;
        goto out;
    }
    if ((rc = etcd_call(c, "/v3/kv/put", req, &resp)) != 0) goto out;
    if (revision) *revision = etcd_header_revision(resp);
out:
    cJSON_Delete(req);
    cJSON_Delete(resp);
    return rc;
}

int etcd_put_if_absent(etcd_t *c, const char *key, const void *value, size_t len, int64_t lease,
                       int64_t *revision) {
    int rc;
    cJSON *req = NULL, *resp = NULL, *put = NULL;
    if (!c || !etcd_key_ok(key) || (!value && len) || lease < 0) return SL_EINVAL;
    /* {"compare":[{"key":K,"target":"CREATE","result":"EQUAL","create_revision":"0"}],
     *  "success":[{"request_put":{..}}]} */
    cJSON *cmp, *cmps, *succ, *op;
    if (!(req = cJSON_CreateObject()) || !(cmps = cJSON_AddArrayToObject(req, "compare")) ||
        !(cmp = cJSON_CreateObject()) || !cJSON_AddItemToArray(cmps, cmp) ||
        json_add_b64(cmp, "key", key, strlen(key)) != 0 ||
        !cJSON_AddStringToObject(cmp, "target", "CREATE") ||
        !cJSON_AddStringToObject(cmp, "result", "EQUAL") ||
        json_add_i64(cmp, "create_revision", 0) != 0 ||
        !(succ = cJSON_AddArrayToObject(req, "success")) || !(op = cJSON_CreateObject()) ||
        !cJSON_AddItemToArray(succ, op) || !(put = etcd_put_req(key, value, len, lease)) ||
        !cJSON_AddItemToObject(op, "request_put", put)) {
        if (put && !put->string) cJSON_Delete(put);
        rc = SL_ENOMEM;
        goto out;
    }
    if ((rc = etcd_call(c, "/v3/kv/txn", req, &resp)) != 0) goto out;
    if (!json_bool(resp, "succeeded")) { /* omitted when false */
        rc = SL_EEXIST;
        goto out;
    }
    if (revision) *revision = etcd_header_revision(resp);
out:
    cJSON_Delete(req);
    cJSON_Delete(resp);
    return rc;
}

/* Range over [key, range_end) (range_end NULL: the single key). */
static int etcd_range_raw(etcd_t *c, const char *key, size_t key_len, const char *range_end,
                          size_t end_len, int64_t limit, etcd_range_result_t *out) {
    int rc;
    cJSON *req = NULL, *resp = NULL;
    memset(out, 0, sizeof *out);
    if (!(req = cJSON_CreateObject()) || json_add_b64(req, "key", key, key_len) != 0 ||
        (range_end && json_add_b64(req, "range_end", range_end, end_len) != 0) ||
        (limit > 0 && json_add_i64(req, "limit", limit) != 0)) {
        rc = SL_ENOMEM;
        goto out;
    }
    if ((rc = etcd_call(c, "/v3/kv/range", req, &resp)) != 0) goto out;
    out->revision = etcd_header_revision(resp);
    out->more = json_bool(resp, "more");
    const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(resp, "kvs"); /* absent when empty */
    if (kvs && !cJSON_IsArray(kvs)) {
        rc = SL_EPROTO;
        goto out;
    }
    size_t n = (size_t)cJSON_GetArraySize(kvs);
    if (n > 0) {
        if (!(out->kvs = calloc(n, sizeof *out->kvs))) {
            rc = SL_ENOMEM;
            goto out;
        }
        const cJSON *it;
        cJSON_ArrayForEach(it, kvs) {
            if ((rc = etcd_kv_parse(it, &out->kvs[out->n])) != 0) goto out;
            out->n++;
        }
    }
out:
    if (rc != 0) etcd_range_result_free(out);
    cJSON_Delete(req);
    cJSON_Delete(resp);
    return rc;
}

int etcd_get(etcd_t *c, const char *key, etcd_kv_t **out) {
    int rc;
    etcd_range_result_t r;
    if (!out) return SL_EINVAL;
    *out = NULL;
    if (!c || !etcd_key_ok(key)) return SL_EINVAL;
    if ((rc = etcd_range_raw(c, key, strlen(key), NULL, 0, 0, &r)) != 0) return rc;
    if (r.n == 0) {
        rc = SL_ENOTFOUND;
        goto out;
    }
    if (!(*out = malloc(sizeof **out))) {
        rc = SL_ENOMEM;
        goto out;
    }
    **out = r.kvs[0];
    memset(&r.kvs[0], 0, sizeof r.kvs[0]); /* ownership moved */
out:
    etcd_range_result_free(&r);
    return rc;
}

int etcd_range_prefix(etcd_t *c, const char *prefix, int64_t limit, etcd_range_result_t *out) {
    if (!out) return SL_EINVAL;
    memset(out, 0, sizeof *out);
    if (!c || !prefix || limit < 0) return SL_EINVAL;
    size_t n = strlen(prefix);
    if (n > (1u << 20)) return SL_EINVAL;
    char *end = malloc(n + 1);
    if (!end) return SL_ENOMEM;
    size_t end_len = etcd_prefix_end(prefix, n, end);
    int rc = n ? etcd_range_raw(c, prefix, n, end, end_len, limit, out)
               : etcd_range_raw(c, "", 1, end, end_len, limit, out); /* key "\0": all */
    free(end);
    return rc;
}

static int etcd_delete_raw(etcd_t *c, const char *key, size_t key_len, const char *range_end,
                           size_t end_len, int64_t *deleted) {
    int rc;
    cJSON *req = NULL, *resp = NULL;
    if (!(req = cJSON_CreateObject()) || json_add_b64(req, "key", key, key_len) != 0 ||
        (range_end && json_add_b64(req, "range_end", range_end, end_len) != 0)) {
        rc = SL_ENOMEM;
        goto out;
    }
    if ((rc = etcd_call(c, "/v3/kv/deleterange", req, &resp)) != 0) goto out;
    int64_t n;
    if ((rc = json_i64(resp, "deleted", &n)) != 0) goto out;
    if (deleted) *deleted = n;
out:
    cJSON_Delete(req);
    cJSON_Delete(resp);
    return rc;
}

int etcd_delete(etcd_t *c, const char *key, int64_t *deleted) {
    if (!c || !etcd_key_ok(key)) return SL_EINVAL;
    return etcd_delete_raw(c, key, strlen(key), NULL, 0, deleted);
}

int etcd_delete_prefix(etcd_t *c, const char *prefix, int64_t *deleted) {
    if (!c || !etcd_key_ok(prefix)) return SL_EINVAL;
    size_t n = strlen(prefix);
    char *end = malloc(n + 1);
    if (!end) return SL_ENOMEM;
    size_t end_len = etcd_prefix_end(prefix, n, end);
    int rc = etcd_delete_raw(c, prefix, n, end, end_len, deleted);
    free(end);
    return rc;
}

int etcd_ping(etcd_t *c) {
    etcd_range_result_t r;
    if (!c) return SL_EINVAL;
    int rc = etcd_range_raw(c, "sluice/.ping", 12, NULL, 0, 1, &r);
    if (rc == 0) etcd_range_result_free(&r);
    return rc;
}

/* ---- watch --------------------------------------------------------------------- */

/* One key the watch has reported, for diffing after a re-list. */
typedef struct watch_entry {
    char *key;
    size_t key_len;
    int64_t mod_rev;
} watch_entry_t;

struct etcd_watch {
    etcd_t *c;
    char *prefix, *end; /* [prefix, end) byte ranges */
    size_t prefix_len, end_len;
    etcd_watch_fn fn;
    void *ud;

    pthread_t thread;
    bool thread_started;
    atomic_bool stop;
    CURLM *multi; /* also the interruptible sleep */

    /* watch-thread state */
    watch_entry_t *view; /* (nview) sorted by key bytes */
    size_t nview, capview;
    int64_t next_rev;   /* revision to resume from */
    bool have_view;     /* next_rev reflects data actually seen */
    bool need_sync;     /* re-list before the next stream */
    bool lost_reported; /* LOST delivered for the current outage */
    bool stream_error;  /* the stream carried an error or cancel */
    bool got_created;
    etcd_buf_t line; /* partial line of the stream */

    _Atomic int64_t revision;
    atomic_int connects;
};

static int watch_key_cmp(const char *a, size_t an, const char *b, size_t bn) {
    int r = memcmp(a, b, an < bn ? an : bn);
    if (r) return r;
    return an < bn ? -1 : an > bn;
}

/* Index of key in the view, or -(insertion point) - 1. */
static long watch_view_find(const etcd_watch_t *w, const char *key, size_t n) {
    size_t lo = 0, hi = w->nview;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = watch_key_cmp(w->view[mid].key, w->view[mid].key_len, key, n);
        if (r == 0) return (long)mid;
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -(long)lo - 1;
}

static int watch_view_set(etcd_watch_t *w, const char *key, size_t n, int64_t rev) {
    long i = watch_view_find(w, key, n);
    if (i >= 0) {
        w->view[i].mod_rev = rev;
        return 0;
    }
    size_t at = (size_t)(-i - 1);
    if (w->nview == w->capview) {
        size_t cap = w->capview ? w->capview * 2 : 16;
        watch_entry_t *v = realloc(w->view, cap * sizeof *v);
        if (!v) return SL_ENOMEM;
        w->view = v;
        w->capview = cap;
    }
    char *k = malloc(n + 1);
    if (!k) return SL_ENOMEM;
    memcpy(k, key, n);
    k[n] = 0;
    memmove(&w->view[at + 1], &w->view[at], (w->nview - at) * sizeof *w->view);
    w->view[at] = (watch_entry_t){k, n, rev};
    w->nview++;
    return 0;
}

static void watch_view_del(etcd_watch_t *w, const char *key, size_t n) {
    long i = watch_view_find(w, key, n);
    if (i < 0) return;
    free(w->view[i].key);
    memmove(&w->view[i], &w->view[i + 1], (w->nview - (size_t)i - 1) * sizeof *w->view);
    w->nview--;
}

static void watch_deliver(etcd_watch_t *w, etcd_watch_event_type_t type, const etcd_kv_t *kv,
                          int64_t revision) {
    etcd_watch_event_t ev = {.type = type, .revision = revision};
    if (kv) {
        ev.key = kv->key;
        ev.key_len = kv->key_len;
        ev.value = kv->value;
        ev.value_len = kv->value_len;
        ev.lease = kv->lease;
    }
    if (w->fn) w->fn(&ev, w->ud);
}

static void watch_advance(etcd_watch_t *w, int64_t rev) {
    if (rev + 1 > w->next_rev) w->next_rev = rev + 1;
    if (rev > atomic_load(&w->revision)) atomic_store(&w->revision, rev);
    w->have_view = true;
}

/* Lists the prefix and reports the difference against the view. */
static int watch_sync(etcd_watch_t *w) {
    etcd_range_result_t r;
    int rc = etcd_range_raw(w->c, w->prefix_len ? w->prefix : "", w->prefix_len ? w->prefix_len : 1,
                            w->end, w->end_len, 0, &r);
    if (rc != 0) return rc;
    /* deletions first: view entries missing from the listing */
    size_t j = 0;
    for (size_t i = 0; i < w->nview;) {
        watch_entry_t *e = &w->view[i];
        while (j < r.n && watch_key_cmp(r.kvs[j].key, r.kvs[j].key_len, e->key, e->key_len) < 0)
            j++;
        if (j < r.n && watch_key_cmp(r.kvs[j].key, r.kvs[j].key_len, e->key, e->key_len) == 0) {
            i++;
            continue;
        }
        etcd_kv_t gone = {.key = e->key, .key_len = e->key_len};
        watch_deliver(w, ETCD_WATCH_DELETE, &gone, r.revision);
        watch_view_del(w, e->key, e->key_len);
    }
    for (size_t k = 0; k < r.n; k++) {
        const etcd_kv_t *kv = &r.kvs[k];
        long i = watch_view_find(w, kv->key, kv->key_len);
        if (i >= 0 && w->view[i].mod_rev == kv->mod_revision) continue;
        if ((rc = watch_view_set(w, kv->key, kv->key_len, kv->mod_revision)) != 0) goto out;
        watch_deliver(w, ETCD_WATCH_PUT, kv, kv->mod_revision);
    }
    w->next_rev = r.revision + 1;
    atomic_store(&w->revision, r.revision);
    w->have_view = true;
    watch_deliver(w, ETCD_WATCH_SYNCED, NULL, r.revision);
out:
    etcd_range_result_free(&r);
    return rc;
}

/* Handles one {"result":{..}} message. Returns 0 to continue, or an error to
 * end the stream (need_sync tells why). */
static int watch_message(etcd_watch_t *w, const char *p, size_t n) {
    int rc = 0;
    cJSON *j = cJSON_ParseWithLength(p, n);
    const cJSON *res = j ? cJSON_GetObjectItemCaseSensitive(j, "result") : NULL;
    if (!cJSON_IsObject(res)) {
        const cJSON *e = j ? cJSON_GetObjectItemCaseSensitive(j, "error") : NULL;
        char *txt = e ? cJSON_PrintUnformatted(e) : NULL;
        LOG_WARN("etcd watch %s: stream error: %.200s", w->c->url, txt ? txt : "(unparsable)");
        free(txt);
        rc = SL_EPROTO;
        goto out;
    }
    int64_t hdr_rev = 0, compact = 0;
    json_i64(cJSON_GetObjectItemCaseSensitive(res, "header"), "revision", &hdr_rev);
    if ((rc = json_i64(res, "compact_revision", &compact)) != 0) goto out;
    if (compact > 0) {
        LOG_INFO("etcd watch: revision %" PRId64 " compacted (at %" PRId64 "); re-listing",
                 w->next_rev, compact);
        w->need_sync = true;
        rc = SL_EAGAIN;
        goto out;
    }
    if (json_bool(res, "created")) {
        atomic_fetch_add(&w->connects, 1);
        w->got_created = true;
        w->lost_reported = false;
        if (w->have_view && hdr_rev > 0 && hdr_rev < w->next_rev - 1) {
            LOG_WARN("etcd watch: store revision %" PRId64 " is behind ours %" PRId64
                     " (restored or new cluster); re-listing",
                     hdr_rev, w->next_rev - 1);
            w->need_sync = true;
            rc = SL_EAGAIN;
            goto out;
        }
    }
    if (json_bool(res, "canceled")) {
        const cJSON *why = cJSON_GetObjectItemCaseSensitive(res, "cancel_reason");
        LOG_WARN("etcd watch canceled: %s", cJSON_IsString(why) ? why->valuestring : "");
        rc = SL_ECANCELLED;
        goto out;
    }
    const cJSON *evs = cJSON_GetObjectItemCaseSensitive(res, "events");
    const cJSON *ev;
    cJSON_ArrayForEach(ev, evs) {
        etcd_kv_t kv, prev;
        memset(&prev, 0, sizeof prev);
        if ((rc = etcd_kv_parse(cJSON_GetObjectItemCaseSensitive(ev, "kv"), &kv)) != 0) goto out;
        const cJSON *pj = cJSON_GetObjectItemCaseSensitive(ev, "prev_kv");
        if (pj) etcd_kv_parse(pj, &prev); /* best effort: only feeds DELETE values */
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(ev, "type");
        bool del = cJSON_IsString(type) && strcmp(type->valuestring, "DELETE") == 0;
        if (del) {
            watch_view_del(w, kv.key, kv.key_len);
            etcd_kv_t shown = kv;
            shown.value = prev.key ? prev.value : NULL;
            shown.value_len = prev.key ? prev.value_len : 0;
            shown.lease = prev.key ? prev.lease : 0;
            watch_deliver(w, ETCD_WATCH_DELETE, &shown, kv.mod_revision);
        } else {
            rc = watch_view_set(w, kv.key, kv.key_len, kv.mod_revision);
            if (rc == 0) watch_deliver(w, ETCD_WATCH_PUT, &kv, kv.mod_revision);
        }
        watch_advance(w, kv.mod_revision);
        etcd_kv_clear(&kv);
        etcd_kv_clear(&prev);
        if (rc != 0) goto out;
    }
out:
    cJSON_Delete(j);
    return rc;
}

static size_t watch_write_cb(char *data, size_t size, size_t nmemb, void *ud) {
    etcd_watch_t *w = ud;
    size_t n = size * nmemb;
    if (atomic_load(&w->stop)) return 0;
    if (etcd_buf_append(&w->line, data, n) != 0) {
        LOG_WARN("etcd watch: message over %u bytes; reconnecting", ETCD_LINE_MAX);
        w->stream_error = true;
        return 0;
    }
    /* handle every complete line; keep the tail */
    size_t start = 0;
    for (;;) {
        char *nl = memchr(w->line.p + start, '\n', w->line.len - start);
        if (!nl) break;
        size_t len = (size_t)(nl - (w->line.p + start));
        if (len > 0 && watch_message(w, w->line.p + start, len) != 0) {
            w->stream_error = true;
            return 0;
        }
        start += len + 1;
    }
    if (start > 0) {
        memmove(w->line.p, w->line.p + start, w->line.len - start);
        w->line.len -= start;
        w->line.p[w->line.len] = 0;
    }
    return n;
}

/* One watch stream, from connect until it ends. Returns 0 when it ended on
 * its own, SL_ECANCELLED when asked to stop, else an error. */
static int watch_stream(etcd_watch_t *w) {
    int rc = 0;
    cJSON *req = NULL, *cr;
    char *body = NULL;
    struct curl_slist *hdrs = NULL;
    CURL *h = NULL;
    bool added = false;
    char url[1200];
    w->line.len = 0;
    w->stream_error = false;
    w->got_created = false;
    if (!(req = cJSON_CreateObject()) || !(cr = cJSON_AddObjectToObject(req, "create_request")) ||
        json_add_b64(cr, "key", w->prefix_len ? w->prefix : "",
                     w->prefix_len ? w->prefix_len : 1) ||
        json_add_b64(cr, "range_end", w->end, w->end_len) ||
        (w->next_rev > 0 && json_add_i64(cr, "start_revision", w->next_rev)) ||
        !cJSON_AddTrueToObject(cr, "prev_kv") || !(body = cJSON_PrintUnformatted(req)) ||
        !(hdrs = etcd_headers()) || !(h = curl_easy_init())) {
        rc = SL_ENOMEM;
        goto out;
    }
    unsigned ep = atomic_load(&w->c->cur) % (unsigned)w->c->neps;
    if ((rc = etcd_handle_setup(w->c, h, w->c->eps[ep], "/v3/watch", body, hdrs, url,
                                sizeof url)) != 0)
        goto out;
    if (curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, watch_write_cb) != CURLE_OK ||
        curl_easy_setopt(h, CURLOPT_WRITEDATA, w) != CURLE_OK ||
        curl_multi_add_handle(w->multi, h) != CURLM_OK) {
        rc = SL_EIO;
        goto out;
    }
    added = true;
    int running = 1;
    while (running && !atomic_load(&w->stop)) {
        if (curl_multi_perform(w->multi, &running) != CURLM_OK) {
            rc = SL_EIO;
            goto out;
        }
        if (!running) break;
        if (curl_multi_poll(w->multi, NULL, 0, 1000, NULL) != CURLM_OK) {
            rc = SL_EIO;
            goto out;
        }
    }
    if (atomic_load(&w->stop)) {
        rc = SL_ECANCELLED;
        goto out;
    }
    int left;
    CURLMsg *m = curl_multi_info_read(w->multi, &left);
    CURLcode cc = m && m->msg == CURLMSG_DONE ? m->data.result : CURLE_OK;
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (w->need_sync)
        rc = SL_EAGAIN;
    else if (w->stream_error)
        rc = SL_EPROTO;
    else if (cc != CURLE_OK)
        rc = etcd_curl_to_err(cc);
    else if (status != 200)
        rc = etcd_error_reply("/v3/watch", status, &w->line);
    else
        rc = SL_ECLOSED; /* etcd ended the stream (shutting down) */
    if (cc != CURLE_OK && !w->need_sync && !w->stream_error)
        LOG_DEBUG("etcd watch %s: %s", url, curl_easy_strerror(cc));
    if (w->c->neps > 1 && (rc == SL_EUNAVAIL || rc == SL_ETIMEDOUT || rc == SL_ECLOSED)) {
        unsigned expect = ep; /* try the next endpoint, unless a call moved on already */
        atomic_compare_exchange_strong(&w->c->cur, &expect, (ep + 1) % (unsigned)w->c->neps);
    }
out:
    if (added) curl_multi_remove_handle(w->multi, h);
    if (h) curl_easy_cleanup(h);
    curl_slist_free_all(hdrs);
    free(body);
    cJSON_Delete(req);
    return rc;
}

/* Sleeps up to ms, waking early when the watch is freed. */
static void watch_sleep(etcd_watch_t *w, int ms) {
    long long end_ms;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    end_ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + ms;
    while (!atomic_load(&w->stop)) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long long now = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        if (now >= end_ms) break;
        curl_multi_poll(w->multi, NULL, 0, (int)(end_ms - now), NULL);
    }
}

static int watch_jitter(unsigned *seed, int base) {
    return base / 2 + (int)(rand_r(seed) % (unsigned)(base / 2 + 1));
}

static void *watch_main(void *arg) {
    etcd_watch_t *w = arg;
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)w;
    int backoff = ETCD_BACKOFF_MIN;
    while (!atomic_load(&w->stop)) {
        int rc = 0;
        if (w->need_sync) {
            rc = watch_sync(w);
            if (rc == 0) w->need_sync = false;
        }
        if (rc == 0) {
            rc = watch_stream(w);
            if (rc == SL_ECANCELLED && atomic_load(&w->stop)) break;
            if (w->got_created) backoff = ETCD_BACKOFF_MIN; /* it worked for a while */
            if (rc == SL_EAGAIN) continue;                  /* re-list right away */
        }
        if (!w->lost_reported) {
            LOG_WARN("etcd watch %s: %s; retrying", w->c->url, sl_strerror(rc));
            w->lost_reported = true;
            watch_deliver(w, ETCD_WATCH_LOST, NULL, atomic_load(&w->revision));
        }
        watch_sleep(w, watch_jitter(&seed, backoff));
        backoff = backoff * 2 > ETCD_BACKOFF_MAX ? ETCD_BACKOFF_MAX : backoff * 2;
    }
    return NULL;
}

int etcd_watch_prefix(etcd_t *c, const char *prefix, int64_t start_revision, etcd_watch_fn fn,
                      void *ud, etcd_watch_t **out) {
    int rc = 0;
    etcd_watch_t *w = NULL;
    if (!out) return SL_EINVAL;
    *out = NULL;
    if (!c || !prefix || !fn || start_revision < 0 || strlen(prefix) > (1u << 20)) return SL_EINVAL;
    size_t n = strlen(prefix);
    if (!(w = calloc(1, sizeof *w)) || !(w->prefix = strdup(prefix)) || !(w->end = malloc(n + 1)) ||
        !(w->multi = curl_multi_init())) {
        rc = SL_ENOMEM;
        goto out;
    }
    w->c = c;
    w->prefix_len = n;
    w->end_len = etcd_prefix_end(prefix, n, w->end);
    w->fn = fn;
    w->ud = ud;
    w->line.max = ETCD_LINE_MAX;
    w->need_sync = start_revision == 0;
    w->next_rev = start_revision;
    atomic_init(&w->stop, false);
    atomic_init(&w->revision, 0);
    atomic_init(&w->connects, 0);
    if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
        rc = SL_ENOMEM;
        goto out;
    }
    w->thread_started = true;
    *out = w;
    w = NULL;
out:
    etcd_watch_free(w);
    return rc;
}

void etcd_watch_free(etcd_watch_t *w) {
    if (!w) return;
    atomic_store(&w->stop, true);
    if (w->thread_started) {
        curl_multi_wakeup(w->multi);
        pthread_join(w->thread, NULL);
    }
    if (w->multi) curl_multi_cleanup(w->multi);
    for (size_t i = 0; i < w->nview; i++) free(w->view[i].key);
    free(w->view);
    free(w->line.p);
    free(w->prefix);
    free(w->end);
    free(w);
}

int64_t etcd_watch_revision(const etcd_watch_t *w) {
    return w ? atomic_load(&((etcd_watch_t *)w)->revision) : 0;
}

int etcd_watch_connects(const etcd_watch_t *w) {
    return w ? atomic_load(&((etcd_watch_t *)w)->connects) : 0;
}
