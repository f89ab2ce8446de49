/* block_hash.h - the KV block hashes shared by workers and routers.
 *
 * Lives in common/base because the router hashes prompts too and must not
 * depend on the engine. Exact definition (DESIGN.md "KV blocks"):
 *
 *   block_hash(b)   = XXH3_64bits_withSeed(bytes, 4 * block_size, 1337)
 *                     where bytes are the block's token ids as u32 little-endian
 *   seq_hash(0)     = XXH3_64bits_withSeed(le64(salt) || le64(block_hash(0)), 16, 1337)
 *   seq_hash(i > 0) = XXH3_64bits_withSeed(le64(seq_hash(i-1)) || le64(block_hash(i)), 16, 1337)
 *   salt            = 0 for the base model (name NULL or ""), else
 *                     XXH3_64bits_withSeed(name bytes without NUL, strlen(name), 1337)
 *
 * The salt is the "parent" of the first block, so a LoRA's prefixes never
 * collide with the base model's. Only full blocks are hashed; the trailing
 * partial block of a prompt has no hash.
 *
 * Thread-safety: all functions are pure and thread-safe.
 */
#ifndef SL_BLOCK_HASH_H
#define SL_BLOCK_HASH_H

#include <stddef.h>
#include <stdint.h>

#define BLOCK_HASH_SEED 1337u

/* Salt for a model or LoRA name: 0 for NULL or "", else the XXH3-64 of the
 * name's bytes (seed 1337). */
uint64_t block_hash_salt(const char *name);

/* Hash of one block's token ids (n of them, normally block_size). */
uint64_t block_hash_tokens(const uint32_t *tokens, size_t n);

/* Sequence hash of a block given its parent's sequence hash (or the salt for
 * the first block) and its own block hash. */
uint64_t block_hash_chain(uint64_t parent, uint64_t block_hash);

/* Hashes the full blocks of tokens[0, n_tokens): for block i writes
 * block_hashes[i] (may be NULL) and seq_hashes[i] (may be NULL), up to max
 * blocks. Returns the number of full blocks hashed: min(n_tokens / block_size,
 * max), or 0 when block_size is 0. */
size_t block_hash_seq(const uint32_t *tokens, size_t n_tokens, uint32_t block_size, uint64_t salt,
                      uint64_t *block_hashes, uint64_t *seq_hashes, size_t max);

#endif
