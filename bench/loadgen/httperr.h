/* httperr.h - the error kinds the HTTP benches (loadgen, replay) report for a
 * failed libcurl transfer, so both name transport failures the same way.
 *
 * Thread-safety: pure function, safe from any thread.
 */
#ifndef SL_LOADGEN_HTTPERR_H
#define SL_LOADGEN_HTTPERR_H

#include <curl/curl.h>

/* The kind of a transfer that ended with cc != CURLE_OK: "connect",
 * "resolve", "timeout", "disconnected" (nothing / partial reply, send or
 * receive error) or "transport" (anything else). Returns a static string. */
const char *httperr_curl_kind(CURLcode cc);

#endif
