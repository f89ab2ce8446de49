/* httpc.h - libcurl conventions shared by the HTTP benches (loadgen's
 * driver, replay's client): the per-request easy-handle settings both time
 * requests under, and the error kind they report for a failed transfer, so
 * both measure and name failures the same way.
 *
 * Thread-safety: no shared state; an easy handle is used by one thread at a
 * time, as libcurl requires.
 */
#ifndef SL_LOADGEN_HTTPC_H
#define SL_LOADGEN_HTTPC_H

#include <curl/curl.h>

/* Sets what every bench request needs on e: CURLOPT_PRIVATE = priv,
 * CURLOPT_ERRORBUFFER = errbuf (CURL_ERROR_SIZE bytes, kept alive by the
 * caller), no signals, TCP_NODELAY, HTTP/1.1, the whole-transfer timeout
 * timeout_ms and the connect timeout connect_timeout_ms. URL, method,
 * headers, body and callbacks stay the caller's. */
void httpc_easy_setup(CURL *e, void *priv, char *errbuf, long timeout_ms, long connect_timeout_ms);

/* The kind of a transfer that ended with cc != CURLE_OK: "connect",
 * "resolve", "timeout", "disconnected" (nothing / partial reply, send or
 * receive error) or "transport" (anything else). Returns a static string. */
const char *httpc_curl_kind(CURLcode cc);

#endif
