#!/usr/bin/env python3
"""tokenizer_ref.py DIR - Hugging Face `tokenizers` as the reference for
tests/unit/test_tokenizer.c.

Reads commands from stdin, one per line, and writes one JSON object per line:
  E <hex bytes>   encode: the bytes are decoded as UTF-8 with errors="replace"
                  (Python strings cannot hold invalid UTF-8; the C tokenizer
                  must apply the same replacement itself) and encoded with and
                  without special tokens. Reply: {"ids": [...] (no specials),
                  "ids_sp": [...] (add_special_tokens), "dec": hex of
                  decode(ids_sp, skip_special_tokens=False), "dec_skip": hex of
                  decode(ids_sp, True), "rt": decode(ids) == text}; a decode
                  that panics inside HF gives null
  D <id,id,...>   decode. Reply: {"dec": hex, "dec_skip": hex}
A missing `tokenizers` package exits with status 2 (the test then fails).
"""
import json
import sys

try:
    from tokenizers import Tokenizer
except ImportError:
    sys.stderr.write("tokenizer_ref.py: python package `tokenizers` is missing "
                     "(run deploy/deps-python.sh)\n")
    sys.exit(2)


def dec(tok, ids, skip):
    # HF's Strip decoder panics on an empty string (index underflow); report
    # null for that and let the test decide whether it may happen.
    try:
        return tok.decode(ids, skip_special_tokens=skip).encode().hex()
    except BaseException:  # pyo3 PanicException derives from BaseException
        return None


def main():
    tok = Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
    out = sys.stdout
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            continue
        cmd, _, arg = line.partition(" ")
        if cmd == "E":
            text = bytes.fromhex(arg).decode("utf-8", errors="replace")
            ids = tok.encode(text, add_special_tokens=False).ids
            ids_sp = tok.encode(text, add_special_tokens=True).ids
            rep = {
                "ids": ids,
                "ids_sp": ids_sp,
                "dec": dec(tok, ids_sp, False),
                "dec_skip": dec(tok, ids_sp, True),
                "rt": dec(tok, ids, False) == text.encode().hex(),
            }
        elif cmd == "D":
            ids = [int(x) for x in arg.split(",") if x]
            rep = {
                "dec": dec(tok, ids, False),
                "dec_skip": dec(tok, ids, True),
            }
        else:
            rep = {"error": "bad command"}
        out.write(json.dumps(rep) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
