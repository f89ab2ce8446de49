/* base64.h - standard base64 (RFC 4648, "+/" alphabet, "=" padding).
 *
 * The etcd v3 JSON gateway carries every key and value as base64; the
 * discovery records carry UCX addresses the same way. Decoding is strict:
 * it rejects characters outside the alphabet, bad padding and non-zero
 * trailing bits, so an untrusted peer cannot smuggle bytes past a parser.
 *
 * Thread-safety: every function is pure and thread-safe.
 */
#ifndef SL_BASE64_H
#define SL_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Length of the encoding of n bytes, without the terminating NUL.
 * Returns SIZE_MAX if it would overflow size_t. */
size_t base64_encoded_len(size_t n);

/* Upper bound of the decoded length of a text of n characters. */
size_t base64_decoded_max(size_t n);

/* Encodes n bytes of src into dst (capacity dst_cap, NUL-terminated).
 * Returns the encoded length (>= 0, excluding the NUL) or SL_ETOOBIG when
 * dst_cap < base64_encoded_len(n) + 1, SL_EINVAL on NULL arguments. */
long base64_encode(const void *src, size_t n, char *dst, size_t dst_cap);

/* Allocates and returns the NUL-terminated encoding of n bytes of src, or NULL
 * on allocation failure or overflow. The caller frees it with free(). */
char *base64_encode_alloc(const void *src, size_t n);

/* Decodes n characters of src into dst (capacity dst_cap). On success returns
 * 0 and sets *out_len. Errors: SL_EINVAL (NULL arguments, a length that is not
 * a multiple of 4, a character outside the alphabet, misplaced padding or
 * non-zero padding bits), SL_ETOOBIG (dst_cap too small). dst is unspecified
 * after an error. */
int base64_decode(const char *src, size_t n, void *dst, size_t dst_cap, size_t *out_len);

/* Allocating variant: *out receives a malloc'd buffer of *out_len bytes plus a
 * NUL byte after them (so text values can be used as C strings); the caller
 * frees it with free(). On error *out is NULL; errors as base64_decode plus
 * SL_ENOMEM. */
int base64_decode_alloc(const char *src, size_t n, uint8_t **out, size_t *out_len);

#endif
