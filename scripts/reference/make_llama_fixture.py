#!/usr/bin/env python3
"""Build the tiny HF Llama parity fixture in tests/fixtures/tiny-llama/.

The output is *seeded* and reproducible: the same inputs and library versions
always give the same bytes. The tokenizer is trained on a fixed list of local text
(the first lines of a few files under /usr/share/common-licenses/; the sha256 of
that text is printed and kept in fixture_meta.json). Model weights come from
torch.manual_seed(0). The fixture files are committed, so the Rust tests never
need Python. Run this script only to regenerate them.

What it writes:
  tokenizer.json              byte-level BPE (GPT-2 style ByteLevel pre-tokenizer,
                              decoder and post-processor), vocab 300, one special
                              token "<|endoftext|>" (id 0)
  config.json                 LlamaConfig: hidden 32, intermediate 64, 2 layers,
                              4 query heads, 2 KV heads (GQA, n_rep = 2),
                              head_dim 8, untied lm_head
  model.safetensors           float32 weights (save_pretrained, safe_serialization)
  reference_logprobs.jsonl    one JSON object per text:
      input             the text
      ids               tokenizer ids, no special tokens added
      token_logprobs    [log p(ids[t] | ids[:t]) for t in 1..len-1], float64
                        log_softmax of the model's float32 logits (eager attention)
      logits_first_row  the first 8 float32 logits at position 0, for debugging
  fixture_meta.json           library versions, seed, sha256 of the training text

Run it with the CI venv (requirements-ci.txt pins torch 2.11.0 and transformers 5.24.0, which
bring tokenizers 0.23.3 and safetensors 0.8.0), from the repository root; a few seconds:
  .venv/bin/python scripts/reference/make_llama_fixture.py [OUT_DIR]
OUT_DIR defaults to tests/fixtures/tiny-llama. It was generated with those versions (CPU).
Run again on this machine kind, it writes tokenizer.json, config.json, model.safetensors and
fixture_meta.json byte for byte; reference_logprobs.jsonl comes out within 1.5e-6 of the
committed one (float32 kernels: those of the machine that made it differ in the last bits). The tokenizer
is also the input of make_model_fixtures.py beside this file, which writes every other model
fixture; it stays a separate script so that the fixtures built on it keep their bytes.
"""

import hashlib
import json
import os
import sys

import torch
import tokenizers
import transformers
import safetensors
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM

SEED = 0
VOCAB_SIZE = 300
SPECIAL = "<|endoftext|>"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO_ROOT, "tests", "fixtures", "tiny-llama")

# Training text for the tokenizer: a fixed, ordered list of local files, first
# LINES_PER_FILE lines of each (a few hundred lines in total).
LICENSE_DIR = "/usr/share/common-licenses"
LICENSE_FILES = ["Apache-2.0", "GPL-3", "MPL-2.0", "BSD"]
LINES_PER_FILE = 120

# Texts scored against the model (5 to 40 tokens each).
TEXTS = [
    "Hello world",
    "The license is free.",
    "You may copy and distribute the work.",
    "Permission is granted to use this software for any purpose.",
    "The authors shall not be liable for any claim.",
    "This program comes without any warranty.",
]


def training_lines():
    lines = []
    for name in LICENSE_FILES:
        with open(os.path.join(LICENSE_DIR, name), encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= LINES_PER_FILE:
                    break
                line = line.strip()
                if line:
                    lines.append(line)
    return lines


def build_tokenizer(lines):
    # GPT-2 style byte-level BPE: every byte is in the initial alphabet, so any
    # string tokenizes; merges learned from the training lines fill the rest.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def main():
    os.makedirs(OUT_DIR, exist_ok=True)

    # --- tokenizer -----------------------------------------------------------
    lines = training_lines()
    text_sha = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
    tok = build_tokenizer(lines)
    vocab = tok.get_vocab_size()
    eot_id = tok.token_to_id(SPECIAL)
    tok.save(os.path.join(OUT_DIR, "tokenizer.json"))
    print(f"tokenizer: {len(lines)} training lines (sha256 {text_sha}), vocab {vocab}, {SPECIAL}={eot_id}")

    # --- model ---------------------------------------------------------------
    # Seeded: all random weights come from torch.manual_seed(SEED).
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        # Ten times the default 0.02 so logits are far from uniform and a parity
        # check actually exercises every weight.
        initializer_range=0.2,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    # RMSNorm weights init to exactly 1.0, which would hide a missing or
    # misplaced norm weight in the Rust port; give them seeded noise around 1.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(OUT_DIR, safe_serialization=True)
    # save_pretrained may add generation_config.json; the fixture does not need it.
    gen_cfg = os.path.join(OUT_DIR, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)

    # --- reference log-probs ----------------------------------------------------
    # Eager attention (plain matmul + softmax) is the reference path.
    model.config._attn_implementation = "eager"
    rows = []
    with torch.no_grad():
        for text in TEXTS:
            ids = tok.encode(text, add_special_tokens=False).ids
            assert 5 <= len(ids) <= 40, (text, len(ids))
            logits = model(torch.tensor([ids])).logits[0]  # [T, V] float32
            assert logits.dtype == torch.float32
            logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
            token_logprobs = [logp[t - 1, ids[t]].item() for t in range(1, len(ids))]
            rows.append(
                {
                    "input": text,
                    "ids": ids,
                    "token_logprobs": token_logprobs,
                    "logits_first_row": [float(x) for x in logits[0, :8].tolist()],
                }
            )
            spread = logits.std(dim=-1).mean().item()
            print(f"{len(ids):3d} tokens, mean logit std {spread:.3f}, mean logprob "
                  f"{sum(token_logprobs) / len(token_logprobs):.3f}: {text!r}")
    with open(os.path.join(OUT_DIR, "reference_logprobs.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")

    meta = {
        "generator": "scripts/reference/make_llama_fixture.py",
        "seed": SEED,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "tokenizer_training_files": [os.path.join(LICENSE_DIR, n) for n in LICENSE_FILES],
        "tokenizer_training_lines_per_file": LINES_PER_FILE,
        "tokenizer_training_text_sha256": text_sha,
        "attn_implementation_for_reference": "eager",
        "logprob_dtype": "float64 log_softmax of float32 logits",
    }
    with open(os.path.join(OUT_DIR, "fixture_meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    # --- self-check: reload from disk, recompute, compare -----------------------
    # Eager reload reproduces the reference bit for bit; the default SDPA path
    # differs by ~1.5e-6 in log-prob (float32 summation order), so test eager.
    reloaded = LlamaForCausalLM.from_pretrained(OUT_DIR, attn_implementation="eager").eval()
    worst = 0.0
    with torch.no_grad():
        for row in rows:
            ids = row["ids"]
            lp = torch.log_softmax(reloaded(torch.tensor([ids])).logits[0].to(torch.float64), dim=-1)
            for t in range(1, len(ids)):
                worst = max(worst, abs(lp[t - 1, ids[t]].item() - row["token_logprobs"][t - 1]))
    assert worst <= 1e-6, worst
    print(f"reload check: max |dlogprob| = {worst:.3g}")
    print(f"wrote {OUT_DIR}")


if __name__ == "__main__":
    main()
