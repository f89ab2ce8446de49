/* utf8.h - UTF-8 decoding with the standard replacement of invalid bytes.
 *
 * Invalid input is replaced by U+FFFD one maximal subpart at a time (Unicode
 * 15 section 3.9 "best practice", WHATWG, Python's errors="replace", Rust's
 * from_utf8_lossy): a lead byte followed by valid continuation bytes that
 * stop short of a full character is one U+FFFD; any other bad byte is one
 * U+FFFD by itself. Surrogates and overlongs are invalid.
 *
 * Thread-safety: pure functions.
 */
#ifndef SL_ENGINE_UTF8_H
#define SL_ENGINE_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SL_UTF8_REPLACEMENT 0xFFFDu

/* Decodes the character at s (len > 0 bytes available). Returns the number
 * of bytes consumed (1..4) and sets *cp; for invalid input *cp is U+FFFD and
 * the return value is the length of the maximal invalid subpart. Returns 0
 * only if len is 0. */
size_t sl_utf8_decode(const uint8_t *s, size_t len, uint32_t *cp);

/* Writes cp (<= 0x10FFFF, not a surrogate; others become U+FFFD) to out as
 * 1..4 bytes and returns the count. */
size_t sl_utf8_encode(uint32_t cp, uint8_t out[4]);

/* True if s[0..len) is entirely valid UTF-8. */
bool sl_utf8_valid(const uint8_t *s, size_t len);

/* Length of the longest prefix of s whose lossy decoding is final: all of s
 * except a trailing sequence that is incomplete but could still become a
 * valid character with more bytes. For streaming decoders. */
size_t sl_utf8_final_prefix(const uint8_t *s, size_t len);

/* Lossy conversion: *out is a malloc'd NUL-terminated copy of s with invalid
 * subparts replaced by U+FFFD (3 bytes each), *out_len its length.
 * Returns 0, SL_ENOMEM or SL_ETOOBIG (len > 1 GiB). */
int sl_utf8_sanitize(const uint8_t *s, size_t len, char **out, size_t *out_len);

#endif
