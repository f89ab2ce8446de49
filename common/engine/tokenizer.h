/* tokenizer.h - Hugging Face tokenizer.json tokenizers in C.
 *
 * Loads a `tokenizer.json` (plus the optional `tokenizer_config.json` for
 * bos/eos and add_bos_token) and encodes/decodes exactly as the Hugging Face
 * `tokenizers` library does (tests/unit/test_tokenizer.c checks ids against
 * it on real tokenizers). Supported:
 *   model          BPE (merges ranked by position, ignore_merges, byte_fallback,
 *                  unk/fuse_unk, continuing_subword_prefix, end_of_word_suffix)
 *   normalizer     NFC, Prepend, Replace (string or regex), Strip, Sequence
 *   pre_tokenizer  ByteLevel, Split (string or PCRE2 regex, all behaviours,
 *                  invert), Digits, Punctuation, Metaspace, Whitespace,
 *                  WhitespaceSplit, Sequence
 *   post_processor TemplateProcessing (single), ByteLevel, Sequence
 *   decoder        ByteLevel, Replace (string), ByteFallback, Fuse, Strip,
 *                  Metaspace, Sequence
 *   added tokens   special and not, lstrip/rstrip/normalized/single_word
 * Anything else is refused at load with SL_EUNSUPPORTED. This covers GPT-2,
 * Llama 3, Qwen2/2.5 (byte-level BPE) and Llama 2, TinyLlama, Mistral, Phi-3
 * (SentencePiece-style BPE with byte fallback).
 *
 * Input text is bytes. Invalid UTF-8 is replaced before anything else by
 * U+FFFD, one per maximal invalid subpart (the Unicode/WHATWG practice, the
 * same as Python's bytes.decode("utf-8", errors="replace")), so encoding the
 * raw bytes gives the ids HF gives for the replaced Python string.
 *
 * Every value read from the files is validated; a malformed file gives
 * SL_EFORMAT (or SL_EUNSUPPORTED for a well-formed but unknown component),
 * never a crash.
 *
 * Thread-safety: after load, a tokenizer is immutable except for an internal
 * word cache guarded by a lock, so every function below may be called from
 * any number of threads at once on the same tokenizer. Only
 * sl_tokenizer_free() needs exclusive access.
 */
#ifndef SL_ENGINE_TOKENIZER_H
#define SL_ENGINE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sl_tokenizer sl_tokenizer_t;

/* Hard limits (untrusted files): larger inputs are refused with SL_ETOOBIG. */
#define SL_TOKENIZER_MAX_FILE   (256u << 20) /* bytes of tokenizer.json */
#define SL_TOKENIZER_MAX_VOCAB  (1u << 22)   /* ids are < this */
#define SL_TOKENIZER_MAX_TOKLEN 4096u        /* bytes of one token's text */

/* Loads dir/tokenizer.json and, if present, dir/tokenizer_config.json.
 * On success *out owns a new tokenizer (free with sl_tokenizer_free).
 * Errors: SL_EINVAL (NULL args), SL_EIO/-errno (unreadable), SL_EFORMAT
 * (malformed JSON or values), SL_EUNSUPPORTED, SL_ETOOBIG, SL_ENOMEM; the
 * log says which file and field. */
int sl_tokenizer_load(const char *dir, sl_tokenizer_t **out);

/* Same from memory: json/json_len is tokenizer.json, config/config_len is
 * tokenizer_config.json or NULL/0. The buffers are only read during the
 * call and need no NUL terminator. */
int sl_tokenizer_load_mem(const char *json, size_t json_len, const char *config, size_t config_len,
                          sl_tokenizer_t **out);

/* Frees everything. NULL is a no-op. */
void sl_tokenizer_free(sl_tokenizer_t *t);

/* Encodes text (len bytes, any bytes; need not be NUL-terminated). With
 * add_special, the post_processor's template tokens are added (BOS for
 * Llama 2); without a template, BOS is added if tokenizer_config.json says
 * add_bos_token (and EOS for add_eos_token). Special-token strings inside
 * the text are always recognised (as HF does by default).
 * On success *ids is a malloc'd array of *n_ids ids (the caller free()s it;
 * it is non-NULL even when *n_ids is 0). Errors: SL_EINVAL, SL_ENOMEM,
 * SL_ETOOBIG (len over 1 GiB). */
int sl_tokenizer_encode(const sl_tokenizer_t *t, const char *text, size_t len, bool add_special,
                        uint32_t **ids, size_t *n_ids);

/* Decodes ids to text as HF `decode` does: the decoder chain over the token
 * strings, joined; with skip_special, tokens marked special are dropped
 * (as in HF, except a special token with normalized: true, whose token
 * string is its normalized form: Llama 2's "<s>" survives skip_special).
 * Ids with no token are dropped (HF does the same). On success *text is a
 * malloc'd NUL-terminated valid UTF-8 string of *len bytes (caller frees).
 * len may be NULL. Errors: SL_EINVAL, SL_ENOMEM. */
int sl_tokenizer_decode(const sl_tokenizer_t *t, const uint32_t *ids, size_t n_ids,
                        bool skip_special, char **text, size_t *len);

/* Ids are in [0, vocab_size): the largest id of the model or added tokens
 * plus one. (The model's embedding table may be larger.) */
uint32_t sl_tokenizer_vocab_size(const sl_tokenizer_t *t);

/* The token's string as HF's id_to_token gives it (e.g. "Ġhello", "▁the",
 * "<0x0A>", "<|im_end|>"; an added token with normalized: true comes in
 * its normalized form, "▁<s>" for Llama 2), NUL-terminated, owned by the
 * tokenizer and valid until sl_tokenizer_free; NULL if id has no token. */
const char *sl_tokenizer_id_to_token(const sl_tokenizer_t *t, uint32_t id);

/* The bytes this token contributes to decoded text in the middle of a
 * sequence (byte-level tokens mapped back to raw bytes, "▁" as a space,
 * "<0xNN>" as the byte NN; added tokens likewise from their id_to_token
 * string). May be a partial
 * UTF-8 sequence: for logprobs and stop-string matching on bytes. *bytes is
 * owned by the tokenizer. Returns 0, or SL_ENOTFOUND for an id with no token. */
int sl_tokenizer_token_bytes(const sl_tokenizer_t *t, uint32_t id, const uint8_t **bytes,
                             size_t *len);

/* Id of a token given its vocabulary string (added tokens first, as HF),
 * or SL_ENOTFOUND. The result fits in int32_t (ids < 2^22). */
int32_t sl_tokenizer_token_to_id(const sl_tokenizer_t *t, const char *tok, size_t len);

/* True for added tokens marked "special": true (what skip_special drops). */
bool sl_tokenizer_is_special(const sl_tokenizer_t *t, uint32_t id);

/* BOS / EOS ids from tokenizer_config.json (bos_token / eos_token, a string
 * or an AddedToken object), or -1 when not given or not in the vocabulary.
 * Generation should also stop on generation_config.json's eos ids, which the
 * model loader reads. */
int32_t sl_tokenizer_bos_id(const sl_tokenizer_t *t);
int32_t sl_tokenizer_eos_id(const sl_tokenizer_t *t);

#endif
