/* httperr.c - libcurl result to the benches' error kind (see httperr.h). */
#include "bench/loadgen/httperr.h"

const char *httperr_curl_kind(CURLcode cc) {
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
