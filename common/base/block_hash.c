/* block_hash.c - XXH3-64 block and chained sequence hashes (see block_hash.h). */
#include "common/base/block_hash.h"

#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

static void le32_put(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void le64_put(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

uint64_t block_hash_salt(const char *name) {
    if (!name || !name[0]) return 0;
    return XXH3_64bits_withSeed(name, strlen(name), BLOCK_HASH_SEED);
}

uint64_t block_hash_tokens(const uint32_t *tokens, size_t n) {
    /* Stream through a small buffer so the result is the same on any
     * endianness and no allocation is needed. */
    XXH3_state_t st;
    uint8_t buf[256]; /* (64 tokens, 4 bytes LE) */
    XXH3_64bits_reset_withSeed(&st, BLOCK_HASH_SEED);
    size_t i = 0;
    while (i < n) {
        size_t k = 0;
        for (; k < 64 && i < n; k++, i++) le32_put(buf + 4 * k, tokens[i]);
        XXH3_64bits_update(&st, buf, 4 * k);
    }
    return XXH3_64bits_digest(&st);
}

uint64_t block_hash_chain(uint64_t parent, uint64_t block_hash) {
    uint8_t buf[16]; /* le64(parent) || le64(block_hash) */
    le64_put(buf, parent);
    le64_put(buf + 8, block_hash);
    return XXH3_64bits_withSeed(buf, sizeof buf, BLOCK_HASH_SEED);
}

size_t block_hash_seq(const uint32_t *tokens, size_t n_tokens, uint32_t block_size, uint64_t salt,
                      uint64_t *block_hashes, uint64_t *seq_hashes, size_t max) {
    if (block_size == 0 || !tokens) return 0;
    size_t n = n_tokens / block_size;
    if (n > max) n = max;
    uint64_t parent = salt;
    for (size_t i = 0; i < n; i++) {
        uint64_t bh = block_hash_tokens(tokens + i * block_size, block_size);
        parent = block_hash_chain(parent, bh);
        if (block_hashes) block_hashes[i] = bh;
        if (seq_hashes) seq_hashes[i] = parent;
    }
    return n;
}
