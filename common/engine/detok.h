/* detok.h - incremental detokenizer for streaming generation.
 *
 * Feed generated token ids one at a time; each call returns the text that is
 * now final. The concatenation of everything returned by sl_detok_push()
 * and sl_detok_finish() equals sl_tokenizer_decode() of all the ids pushed
 * (same skip_special), byte for byte: partial UTF-8 is held back until it
 * completes (or proves invalid and becomes U+FFFD, as full decode would),
 * SentencePiece byte-fallback runs are held until the run ends (HF replaces
 * a whole invalid run), and the leading-space strip of the Llama-2 decoder
 * applies only to the very start of the stream. Every returned chunk is
 * valid UTF-8, possibly empty. Cost per token is O(token length).
 *
 * Ownership: a detok borrows its tokenizer, which must outlive it. Returned
 * text points into the detok and is valid until the next call on it.
 * Thread-safety: one detok per stream, used by one thread at a time; many
 * detoks may share one tokenizer across threads.
 */
#ifndef SL_ENGINE_DETOK_H
#define SL_ENGINE_DETOK_H

#include "common/engine/tokenizer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sl_detok sl_detok_t;

/* Creates a detokenizer over t. Returns 0 and *out, or SL_EINVAL/SL_ENOMEM. */
int sl_detok_new(const sl_tokenizer_t *t, bool skip_special, sl_detok_t **out);

/* Frees it. NULL is a no-op. */
void sl_detok_free(sl_detok_t *d);

/* Feeds context ids (typically the prompt, or its last few tokens) whose
 * text is not returned, so that generated tokens decode as they read after
 * the prompt: with Llama 2's decoder a first generated "▁Hello" then gives
 * " Hello", not "Hello" as decoding the generated ids alone would.
 * decode(context + generated) is then what pushing the context would have
 * returned followed by everything returned from here on (a character split
 * between context and generated tokens comes out whole, after the prime).
 * Call before the first push. Returns 0 or SL_EINVAL / SL_ENOMEM. */
int sl_detok_prime(sl_detok_t *d, const uint32_t *ids, size_t n);

/* Pushes one id. *text and *len receive the newly final text (NUL-terminated,
 * *len may be 0). Unknown ids are ignored, as in full decode.
 * Returns 0, or SL_EINVAL/SL_ENOMEM (the stream is then unusable). */
int sl_detok_push(sl_detok_t *d, uint32_t id, const char **text, size_t *len);

/* Ends the stream: returns whatever was held back (an unfinished UTF-8
 * sequence becomes U+FFFD). The detok is then reset for a new stream. */
int sl_detok_finish(sl_detok_t *d, const char **text, size_t *len);

#endif
