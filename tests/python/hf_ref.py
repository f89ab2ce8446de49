#!/usr/bin/env python3
"""hf_ref.py - Hugging Face transformers reference for Sluice's model forward.

Runs transformers (CPU torch, eager attention, float32 compute) on a model
directory and records, for a prompt of token ids:
  - the logits of every prompt position (one-shot prefill),
  - greedy generation of N tokens with the KV cache, one token per step, and
    the logits of every decode step.
bf16/f16 checkpoints are upcast to float32 at load (exact), so the reference
is the same function the C engine computes with f32 activations; --native
runs in the checkpoint's own dtype instead (for a looser sanity check).

Output (--out FILE, little-endian binary, read by tests/integration/test_model_hf.c):
  magic    8 bytes  b"SLREF001"
  u32      n_prompt, n_gen, vocab
  u32[n_prompt]     prompt ids
  u32[n_gen]        greedy ids g_0..g_{n-1} (g_0 = argmax of the last prompt row)
  f32[n_prompt*V]   prefill logits, row i = position i
  f32[(n_gen-1)*V]  decode logits, row i = after feeding g_i at position n_prompt+i
--json prints a summary (ids and the first logits) instead of / as well.

Usage: hf_ref.py --model DIR --prompt-ids 1,2,3 [--prompt TEXT] --gen 64 --out FILE
Several jobs in one process (torch loads once): --job DIR,OUT [--job DIR,OUT ...]
with the same --prompt-ids/--gen for all.

Needs /usr/bin/python3 with Debian's python3-torch and transformers 4.45.2
(deploy/deps-python.sh installs them).
"""
import argparse
import json
import struct
import sys

import torch
from transformers import AutoModelForCausalLM, DynamicCache


def run(model_dir, prompt_ids, n_gen, native):
    dtype = None if native else torch.float32
    kw = {"attn_implementation": "eager"}
    if dtype is not None:
        kw["torch_dtype"] = dtype
    else:
        kw["torch_dtype"] = "auto"
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    model.eval()
    with torch.no_grad():
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        out = model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
        prefill = out.logits[0].float()
        past = out.past_key_values
        gen = [int(torch.argmax(prefill[-1]).item())]
        dec = []
        for i in range(n_gen - 1):
            pos = len(prompt_ids) + i
            out = model(input_ids=torch.tensor([[gen[-1]]], dtype=torch.long),
                        past_key_values=past, use_cache=True,
                        position_ids=torch.tensor([[pos]], dtype=torch.long),
                        cache_position=torch.tensor([pos], dtype=torch.long))
            past = out.past_key_values
            row = out.logits[0, -1].float()
            dec.append(row)
            gen.append(int(torch.argmax(row).item()))
    return prefill, gen, dec


def write(path, prompt_ids, gen, prefill, dec):
    vocab = prefill.shape[1]
    with open(path, "wb") as f:
        f.write(b"SLREF001")
        f.write(struct.pack("<III", len(prompt_ids), len(gen), vocab))
        f.write(struct.pack("<%dI" % len(prompt_ids), *prompt_ids))
        f.write(struct.pack("<%dI" % len(gen), *gen))
        f.write(prefill.contiguous().numpy().astype("<f4").tobytes())
        for row in dec:
            f.write(row.contiguous().numpy().astype("<f4").tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--out")
    ap.add_argument("--job", action="append", default=[], help="DIR,OUT")
    ap.add_argument("--prompt-ids", default=None, help="comma-separated token ids")
    ap.add_argument("--prompt", default=None, help="text, tokenized with the model's tokenizer")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--native", action="store_true", help="compute in the checkpoint dtype")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    jobs = [tuple(j.split(",", 1)) for j in a.job]
    if a.model:
        jobs.append((a.model, a.out))
    if not jobs:
        ap.error("--model or --job required")
    for model_dir, out in jobs:
        if a.prompt_ids:
            prompt = [int(x) for x in a.prompt_ids.split(",") if x]
        else:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(model_dir)
            prompt = tok.encode(a.prompt or "The quick brown fox")
        prefill, gen, dec = run(model_dir, prompt, a.gen, a.native)
        if out:
            write(out, prompt, gen, prefill, dec)
        if a.json or not out:
            text = None
            try:
                from transformers import AutoTokenizer
                text = AutoTokenizer.from_pretrained(model_dir).decode(gen)
            except Exception:  # a model dir without tokenizer files: ids only
                pass
            print(json.dumps({"model": model_dir, "prompt_ids": prompt, "generated": gen,
                              "generated_text": text,
                              "prefill_last_logits": prefill[-1][:8].tolist(),
                              "decode_logits_first": [r[:4].tolist() for r in dec[:4]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
