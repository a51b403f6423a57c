#!/usr/bin/env python3
"""Loads what ewtune wrote with transformers and peft themselves and prints per-token log-probs.

Used by tests/hf_roundtrip.rs (the oracle side of the round trip): the Rust test trains with
ewtune, then runs this script with the CI venv's python and compares. Usage:

  hf_roundtrip.py KIND OUT_DIR TEXTS_JSON [BASE_DIR]

KIND is one of
  peft         PeftModel.from_pretrained(AutoModelForCausalLM(BASE_DIR), OUT_DIR)
  autopeft     AutoPeftModelForCausalLM.from_pretrained(OUT_DIR) (run from another directory)
  merged       the peft model after merge_and_unload()
  full         AutoModelForCausalLM.from_pretrained(OUT_DIR)
TEXTS_JSON is a JSON list of token-id lists. Prints one JSON object: {"logprobs": [[...], ...],
"dtype": "...", "files": [...]} with log p(ids[t] | ids[:t]) in float64 from float32 logits.
"""

import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM


def logprobs(model, seqs):
    out = []
    with torch.no_grad():
        for ids in seqs:
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits.float()
            lp = torch.log_softmax(logits[0, :-1].double(), dim=-1)
            out.append(lp.gather(1, x[0, 1:].unsqueeze(1)).squeeze(1).tolist())
    return out


def main():
    kind, out_dir, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    base = sys.argv[4] if len(sys.argv) > 4 else None
    torch.manual_seed(0)
    load = dict(dtype=torch.float32, attn_implementation="eager")
    if kind == "peft":
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, **load), out_dir)
    elif kind in ("autopeft", "merged"):
        from peft import AutoPeftModelForCausalLM

        os.chdir("/")  # another working directory than the one ewtune trained in
        model = AutoPeftModelForCausalLM.from_pretrained(out_dir, **load)
        if kind == "merged":
            model = model.merge_and_unload()
    elif kind == "full":
        saved = AutoModelForCausalLM.from_pretrained(out_dir, attn_implementation="eager")
        dtype = str(saved.dtype)
        model = saved.float()
    else:
        raise SystemExit(f"unknown kind {kind}")
    model.eval()
    print(json.dumps({
        "logprobs": logprobs(model, texts),
        "dtype": dtype if kind == "full" else "float32",
        "files": sorted(os.listdir(out_dir)),
        "transformers": transformers.__version__,
    }))


if __name__ == "__main__":
    main()
