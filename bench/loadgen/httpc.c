/* httpc.c - the HTTP benches' libcurl settings and error kinds (see
 * httpc.h). */
#include "bench/loadgen/httpc.h"

void httpc_easy_setup(CURL *e, void *priv, char *errbuf, long timeout_ms, long connect_timeout_ms) {
    curl_easy_setopt(e, CURLOPT_PRIVATE, priv);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout_ms);
}

const char *httpc_curl_kind(CURLcode cc) {
    switch (cc) {
    case CURLE_COULDNT_CONNECT:
        return "connect";
    case CURLE_COULDNT_RESOLVE_HOST:
        return "resolve";
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
        return "disconnected";
    default:
        return "transport";
    }
}
