/* genmodel.h - internals shared by the files of the genmodel tool. */
#ifndef SL_BENCH_GENMODEL_H
#define SL_BENCH_GENMODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Writes len bytes to path (created or truncated). Returns 0 or -errno. */
int genmodel_file_write(const char *path, const void *data, size_t len);

/* Learns a byte-level BPE with at most vocab_size tokens (256 bytes, merges,
 * 3 special tokens) and writes DIR/tokenizer.json and
 * DIR/tokenizer_config.json. *eos_id is <|endoftext|>, *n_tokens the
 * tokenizer's vocabulary size. Returns 0 or a negative SL_E* code. */
int genmodel_tokenizer_write(const char *dir, uint32_t vocab_size, uint32_t *eos_id,
                             uint32_t *n_tokens);

#endif
