#!/usr/bin/env python3
"""Build the per-family model fixtures in tests/fixtures/models/ and the LoRA
adapter fixtures in tests/fixtures/adapters/.

What it makes
  tests/fixtures/models/<name>/   one tiny Hugging Face causal-LM checkpoint per
      fixture (Llama with tied head / llama3 / linear / dynamic / yarn RoPE,
      Mistral, Qwen2, Qwen3, Gemma2, Gemma3 text, Phi-3, GPT-NeoX, GPT-2 and the
      storage variants: hub key layout, sharded, bf16, f16, pytorch_model.bin,
      transformers-4 style config.json), each exactly as `save_pretrained`
      writes it (config.json, model.safetensors or shards +
      model.safetensors.index.json, generation_config.json), plus the tokenizer
      files `PreTrainedTokenizerFast.save_pretrained` writes for the committed
      byte-level BPE tests/fixtures/tiny-llama/tokenizer.json (vocab 300,
      "<|endoftext|>" = id 0 as bos/eos/unk/pad, a small chat template), plus
      reference_logprobs.jsonl: one JSON object per text,
          {"input": text, "ids": [...], "token_logprobs": [...]}
      ids are the tokenizer's ids without special tokens; token_logprobs[t-1] =
      log p(ids[t] | ids[:t]), the float64 log_softmax of the model's float32
      logits (model reloaded from the fixture directory with dtype=float32,
      eager attention, model.eval()).
  tests/fixtures/models/index.json   one entry per fixture: name, model_type,
      architectures, what it exercises, dtype, sharded, file layout, and the
      "feature matters" figures below.
  tests/fixtures/adapters/<name>/   PEFT LoRA adapters on models/llama-tied
      (adapter_config.json with base_model_name_or_path rewritten to
      "../../models/llama-tied", adapter_model.safetensors, PEFT's README.md,
      reference_logprobs.jsonl of the adapted model; no tokenizer files) and
      tests/fixtures/adapters/index.json.

Checks it makes (the script fails if one does not hold)
  * every fixture reloads from disk to the in-memory model's log-probs (f32);
  * for every configuration feature a fixture is meant to exercise, the
    log-probs recomputed with that feature switched off (rope scaling removed,
    sliding window off, softcapping off, norms at their init value, ...) differ
    from the references by more than 1e-3 (2e-4 for gelu's tanh approximation,
    whose effect is inherently small; the Rust parity tolerance is 1e-4), so a
    Rust port that ignores the feature fails its parity test; the figures are
    printed and kept in index.json;
  * layout variants (transformers-4 config.json, GPT-2 hub key layout) load in
    transformers to exactly the same log-probs as the fixture they derive from.

Seeded and reproducible: every fixture's weights come from torch.manual_seed
of a fixed per-name seed (crc32 of the name), every parameter then gets seeded
noise (so the norm weights and biases transformers initialises to 1 or 0 are
random too), torch runs single-threaded, and the output directories are deleted
and recreated, so running the script twice gives the same bytes (on the same
CPU kind; float32 results may differ in the last bits on another one).

Generated with torch 2.11.0, transformers 5.24.0, peft 0.21.2, tokenizers
0.23.3, safetensors 0.8.0 (CPU). Run it with the CI venv (requirements-ci.txt),
from the repository root (under a minute):
  .venv/bin/python scripts/reference/make_model_fixtures.py [DIR]
It writes tests/fixtures/models and tests/fixtures/adapters, or DIR/models and
DIR/adapters (to compare with the committed ones); the input tokenizer is always
the committed tests/fixtures/tiny-llama/tokenizer.json (make_llama_fixture.py).
The fixture files are committed; the Rust tests never need Python. Run this
script only to regenerate them.
"""

import copy
import json
import os
import re
import shutil
import sys
import zlib

import torch

import peft
import safetensors
import tokenizers
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The input tokenizer is always the committed one (made by make_llama_fixture.py); the output goes
# to tests/fixtures/{models,adapters} or, with an argument, to DIR/{models,adapters} (to compare).
TOKENIZER_JSON = os.path.join(REPO_ROOT, "tests", "fixtures", "tiny-llama", "tokenizer.json")
FIXTURES = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(REPO_ROOT, "tests", "fixtures")
MODELS_DIR = os.path.join(FIXTURES, "models")
ADAPTERS_DIR = os.path.join(FIXTURES, "adapters")

SPECIAL = "<|endoftext|>"  # id 0 in the tokenizer
EOT_ID = 0
VOCAB = 300
MODEL_MAX_LENGTH = 64
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|endoftext|>' + message['role'] + '\\n' + message['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|endoftext|>assistant\\n' }}{% endif %}"
)

# Texts scored against every model: 5 to 60 tokens each; five are over 40
# tokens, longer than the sliding windows (8) and the original context of the
# dynamic / yarn / llama3 RoPE fixtures (16).
TEXTS = [
    "Hello world",
    "The license is free.",
    "You may copy and distribute the work.",
    "The authors shall not be liable for any claim or damages.",
    "Each contributor grants you a patent license to make, use and sell the work.",
    "Redistribution and use in source and binary forms, with or without modification, are permitted.",
    "This program is distributed in the hope that it will be useful, but without any warranty.",
    "Permission is granted to use this software for any purpose, provided that the notice is kept.",
]

# A feature "matters" when switching it off moves some token log-prob by more
# than this; the Rust parity tests compare at 1e-4.
MATTERS = 1e-3
# Except for gelu's tanh approximation, whose effect is inherently small (see gemma2).
GELU_MATTERS = 2e-4

# Weight init: ten times the usual 0.02 so logits are far from uniform.
INIT_RANGE = 0.2
NOISE_CONSTANT = 0.3  # std of the noise added to parameters initialised to a constant (norms, biases)
NOISE_OTHER = 0.02  # std of the noise added to every other parameter


def seed_of(name):
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


# ---------------------------------------------------------------------------
# tokenizer, model construction, log-probs
# ---------------------------------------------------------------------------


def make_tokenizer():
    return PreTrainedTokenizerFast(
        tokenizer_file=TOKENIZER_JSON,
        bos_token=SPECIAL,
        eos_token=SPECIAL,
        unk_token=SPECIAL,
        pad_token=SPECIAL,
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )


def common(**kw):
    """Config keyword arguments shared by every fixture."""
    base = dict(
        vocab_size=VOCAB,
        initializer_range=INIT_RANGE,
        bos_token_id=EOT_ID,
        eos_token_id=EOT_ID,
        pad_token_id=None,
    )
    base.update(kw)
    return base


def build(cls, config, seed):
    """Seeded random model; every parameter gets seeded noise on top of the init.

    Returns (model, init_constants): init_constants maps the names of the
    parameters transformers initialised to a single constant (norm weights,
    biases) to that constant, for the "reset to init" checks.
    """
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    init_constants = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().flatten()
            if flat.numel() > 1 and bool((flat == flat[0]).all()):
                init_constants[name] = float(flat[0])
                std = NOISE_CONSTANT
            else:
                std = NOISE_OTHER
            p.add_(std * torch.randn(p.shape, generator=gen, dtype=torch.float32))
    model.set_attn_implementation("eager")
    return model.eval(), init_constants


def encode_texts(tok):
    out = []
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert 5 <= len(ids) <= 60, (text, len(ids))
        out.append(ids)
    assert sum(len(i) > 40 for i in out) >= 2
    return out


def logprobs(model, all_ids):
    """[[log p(ids[t] | ids[:t]) for t >= 1] for each text], float64 of f32 logits.

    Each text runs on a fresh copy of the model: dynamic RoPE keeps the
    frequencies of the longest sequence seen so far in the module, so in
    transformers the result for a text would depend on which texts ran before
    it. A fresh copy gives the stateless definition (scaling from this
    sequence's own length).
    """
    out = []
    for ids in all_ids:
        m = copy.deepcopy(model)
        with torch.no_grad():
            logits = m(torch.tensor([ids])).logits[0]
        assert logits.dtype == torch.float32, logits.dtype
        lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
        out.append([lp[t - 1, ids[t]].item() for t in range(1, len(ids))])
    return out


def max_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def reload(cls, path):
    m = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def variant(model, cfg_edit=None, sd_edit=None, mod_edit=None):
    """A copy of `model` with its config, weights or modules changed."""
    d = model.config.to_dict()
    if cfg_edit:
        cfg_edit(d)
    cfg = type(model.config).from_dict(d)
    torch.manual_seed(0)
    m = type(model)(cfg).to(torch.float32)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if sd_edit:
        sd_edit(sd)
    m.load_state_dict(sd, strict=True)
    if mod_edit:
        mod_edit(m)
    m.set_attn_implementation("eager")
    return m.eval()


# --- ablations shared by several fixtures -----------------------------------


def ab_reset_init(init_constants, what):
    """Parameters initialised to a constant whose name matches `what` set back to it."""

    def edit(sd):
        hit = 0
        for name, value in init_constants.items():
            if re.search(what, name) and name in sd:
                sd[name].fill_(value)
                hit += 1
        assert hit, what

    return edit


def ab_rope(**changes):
    def edit(d):
        rp = d["rope_parameters"]
        for k, v in changes.items():
            if v is None:
                rp.pop(k, None)
            else:
                rp[k] = v

    return edit


def ab_set(**changes):
    def edit(d):
        d.update(changes)

    return edit


def ab_identity(*suffixes):
    def edit(m):
        hit = 0
        for name, mod in list(m.named_modules()):
            for s in suffixes:
                if name.endswith(s):
                    parent_name, _, child = name.rpartition(".")
                    setattr(m.get_submodule(parent_name), child, torch.nn.Identity())
                    hit += 1
        assert hit, suffixes

    return edit


def ab_gqa_modulo(n_heads, n_kv, head_dim, prefix="model.layers"):
    """Query head h reads KV head h % n_kv instead of h // (n_heads / n_kv).

    Simulated in the correct implementation by permuting the query heads (rows
    of q_proj, columns of o_proj) so that head P(h) // n_rep == h % n_kv.
    """
    n_rep = n_heads // n_kv
    # For each wanted KV head, the free query slots (in order) that read it.
    slots = {kv: list(range(kv * n_rep, (kv + 1) * n_rep)) for kv in range(n_kv)}
    perm = [slots[h % n_kv].pop(0) for h in range(n_heads)]  # head h goes to slot perm[h]
    inv = [0] * n_heads
    for h, p in enumerate(perm):
        inv[p] = h

    def edit(sd):
        for k in list(sd):
            if k.startswith(prefix) and k.endswith("self_attn.q_proj.weight"):
                w = sd[k].view(n_heads, head_dim, -1)
                sd[k] = w[inv].reshape(n_heads * head_dim, -1).clone()
            if k.startswith(prefix) and k.endswith("self_attn.o_proj.weight"):
                w = sd[k].view(-1, n_heads, head_dim)
                sd[k] = w[:, inv].reshape(-1, n_heads * head_dim).clone()

    return edit


# ---------------------------------------------------------------------------
# writing fixtures
# ---------------------------------------------------------------------------


def write_jsonl(path, all_ids, refs):
    with open(path, "w") as f:
        for text, ids, lp in zip(TEXTS, all_ids, refs, strict=True):
            f.write(json.dumps({"input": text, "ids": ids, "token_logprobs": lp}) + "\n")


def dump_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def layout(path):
    return sorted(os.listdir(path))


class Run:
    def __init__(self):
        self.tok = make_tokenizer()
        self.ids = encode_texts(self.tok)
        self.index = []
        self.refs = {}  # fixture name -> log-probs
        self.models = {}  # fixture name -> (reloaded f32 model, init_constants)

    def check_matters(self, name, refs, base, init_constants, ablations):
        figures = {}
        for label, kw in ablations:
            kw = dict(kw)
            reset = kw.pop("reset", None)
            threshold = kw.pop("threshold", MATTERS)
            if reset is not None:
                kw["sd_edit"] = ab_reset_init(init_constants, reset)
            m = variant(base, **kw)
            d = max_diff(refs, logprobs(m, self.ids))
            figures[label] = float(f"{d:.6g}")
            note = "" if threshold == MATTERS else f" (threshold {threshold:g})"
            print(f"    {label:<62} max |dlogprob| = {d:.4g}{note}")
            assert d > threshold, f"{name}: switching off '{label}' changes log-probs by only {d:.3g}"
        return figures

    def model_fixture(
        self,
        name,
        cls,
        config,
        exercises,
        ablations=(),
        dtype=torch.float32,
        max_shard_size=None,
        notes=None,
    ):
        print(f"== {name}")
        path = os.path.join(MODELS_DIR, name)
        model, init_constants = build(cls, config, seed_of(name))
        kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        # Cast a copy: casting the model itself would also round its RoPE inv_freq buffers.
        (model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)).save_pretrained(path, **kwargs)
        self.tok.save_pretrained(path)

        reloaded = reload(cls, path)
        refs = logprobs(reloaded, self.ids)
        if dtype == torch.float32:
            d = max_diff(refs, logprobs(model, self.ids))
            assert d <= 1e-6, (name, d)
            print(f"    reload from disk vs in-memory model: max |dlogprob| = {d:.3g}")
        else:
            want = {k: v.to(dtype).to(torch.float32) for k, v in model.state_dict().items()}
            got = reloaded.state_dict()
            assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want), name
            d = max_diff(refs, logprobs(model, self.ids))
            print(f"    {dtype} rounding of the weights moves log-probs by {d:.4g} (vs the f32 weights)")
        write_jsonl(os.path.join(path, "reference_logprobs.jsonl"), self.ids, refs)
        figures = self.check_matters(name, refs, reloaded, init_constants, ablations)
        self.refs[name] = refs
        self.models[name] = (reloaded, init_constants)
        self.add_index(name, path, exercises, dtype, figures, notes)
        return reloaded

    def add_index(self, name, path, exercises, dtype, figures, notes=None, references=True):
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        files = layout(path)
        entry = {
            "name": name,
            "model_type": cfg["model_type"],
            "architectures": cfg.get("architectures"),
            "exercises": exercises,
            "dtype": str(dtype).replace("torch.", ""),
            "sharded": "model.safetensors.index.json" in files,
            "files": files,
            "reference_logprobs": references,
            "feature_matters_max_abs_dlogprob": figures,
        }
        if notes:
            entry["notes"] = notes
        self.index.append(entry)


# ---------------------------------------------------------------------------
# the fixtures
# ---------------------------------------------------------------------------


def llama_kw(**kw):
    base = common(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
    )
    base.update(kw)
    return base


NORMS_AT_INIT = ("norm weights at their init value (1)", {"reset": r"norm\.weight$"})


def models(run):
    # 1. Llama, tied head, GQA, explicit head_dim != hidden / heads -------------
    run.model_fixture(
        "llama-tied",
        LlamaForCausalLM,
        LlamaConfig(**llama_kw(head_dim=16, tie_word_embeddings=True)),
        "Llama with tie_word_embeddings (no lm_head.weight in the file: the head is embed_tokens), "
        "GQA 4 query / 2 KV heads, explicit head_dim 16 != hidden_size 32 / 4 heads.",
        [
            NORMS_AT_INIT,
            ("GQA: query head h reads KV head h % 2 instead of h // 2", {"sd_edit": ab_gqa_modulo(4, 2, 16)}),
        ],
    )

    # 2. llama3 RoPE ------------------------------------------------------------
    llama3 = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    run.model_fixture(
        "llama3-rope",
        LlamaForCausalLM,
        LlamaConfig(**llama_kw(rope_parameters=dict(llama3), max_position_embeddings=128)),
        "Llama 3.x RoPE: rope_parameters.rope_type llama3 (factor 8, low/high_freq_factor 1/4, "
        "original_max_position_embeddings 16, rope_theta 500000), untied head.",
        [
            ("rope_type default (llama3 frequency scaling dropped)", {"cfg_edit": ab_rope(rope_type="default", factor=None, low_freq_factor=None, high_freq_factor=None, original_max_position_embeddings=None)}),
            ("rope_theta 10000 instead of 500000", {"cfg_edit": ab_rope(rope_theta=10000.0)}),
            ("original_max_position_embeddings 64 instead of 16", {"cfg_edit": ab_rope(original_max_position_embeddings=64)}),
        ],
    )
    v4_config(run, "llama3-rope", "llama3-rope-v4config", LlamaForCausalLM)

    # 3. linear / dynamic / yarn RoPE --------------------------------------------
    run.model_fixture(
        "llama-linear-rope",
        LlamaForCausalLM,
        LlamaConfig(**llama_kw(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}, tie_word_embeddings=True)),
        "Llama with linear RoPE scaling (rope_type linear, factor 4: positions divided by 4), tied head.",
        [("linear scaling dropped (rope_type default)", {"cfg_edit": ab_rope(rope_type="default", factor=None)})],
    )
    run.model_fixture(
        "llama-dynamic-rope",
        LlamaForCausalLM,
        LlamaConfig(
            **llama_kw(
                rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
                max_position_embeddings=16,
                tie_word_embeddings=True,
            )
        ),
        "Llama with dynamic NTK RoPE (factor 2, max_position_embeddings 16): texts longer than 16 "
        "tokens use base * ((factor * len / 16) - (factor - 1)) ** (dim / (dim - 2)) with len the "
        "sequence's own length; shorter ones plain RoPE. Tied head.",
        [("dynamic scaling dropped (rope_type default)", {"cfg_edit": ab_rope(rope_type="default", factor=None)})],
        notes="References computed on a fresh model per text: transformers' DynamicNTK rotary module "
        "keeps the frequencies of the longest sequence it has seen, so in one long-lived transformers "
        "model a text's log-probs depend on the texts scored before it.",
    )
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0}
    m = run.model_fixture(
        "llama-yarn-rope",
        LlamaForCausalLM,
        LlamaConfig(**llama_kw(rope_parameters=dict(yarn), max_position_embeddings=64, tie_word_embeddings=True)),
        "Llama with YaRN RoPE (factor 4, original_max_position_embeddings 16, beta_fast/beta_slow "
        "absent so the defaults 32/1 apply, attention_factor absent so 0.1 ln(4) + 1 scales cos/sin), "
        "tied head.",
        [
            ("yarn dropped (rope_type default)", {"cfg_edit": ab_rope(rope_type="default", factor=None, original_max_position_embeddings=None)}),
            ("attention_factor 1 (no yarn mscale on cos/sin)", {"cfg_edit": ab_rope(attention_factor=1.0)}),
        ],
    )
    same = variant(m, cfg_edit=ab_rope(beta_fast=32.0, beta_slow=1.0))
    d = max_diff(run.refs["llama-yarn-rope"], logprobs(same, run.ids))
    print(f"    explicit beta_fast 32 / beta_slow 1 (the defaults): max |dlogprob| = {d:.3g}")
    assert d == 0.0, d

    # 4. Mistral, sliding window ----------------------------------------------------
    run.model_fixture(
        "mistral",
        MistralForCausalLM,
        MistralConfig(**llama_kw(sliding_window=8, head_dim=8, tie_word_embeddings=True)),
        "Mistral with sliding_window 8: query i attends keys j with i - 8 < j <= i. Tied head.",
        [
            NORMS_AT_INIT,
            ("sliding_window None (full causal attention)", {"cfg_edit": ab_set(sliding_window=None)}),
            ("sliding_window 9 (off by one: window counted without self)", {"cfg_edit": ab_set(sliding_window=9)}),
        ],
    )

    # 5. Qwen2: q/k/v bias, tied embeddings ------------------------------------------
    qwen2_cfg = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True,
    )
    run.model_fixture(
        "qwen2",
        Qwen2ForCausalLM,
        Qwen2Config(**common(**qwen2_cfg)),
        "Qwen2: bias on q_proj/k_proj/v_proj (none on o_proj), tied embeddings, rope_theta 1e6, GQA.",
        [
            NORMS_AT_INIT,
            ("q/k/v biases zeroed", {"reset": r"proj\.bias$"}),
        ],
    )

    # 6. Qwen3: q_norm / k_norm, explicit head_dim -----------------------------------
    run.model_fixture(
        "qwen3",
        Qwen3ForCausalLM,
        Qwen3Config(
            **common(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                max_position_embeddings=64,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                tie_word_embeddings=False,
            )
        ),
        "Qwen3: per-head RMSNorm q_norm/k_norm (over head_dim, before RoPE), explicit head_dim 16, "
        "no attention bias, untied head.",
        [
            NORMS_AT_INIT,
            ("q_norm / k_norm weights at init (1)", {"reset": r"[qk]_norm\.weight$"}),
            ("q_norm / k_norm removed", {"mod_edit": ab_identity("q_norm", "k_norm")}),
        ],
    )

    # 7. Gemma2 -----------------------------------------------------------------------
    gemma_norms = ("RMSNorm as w*x instead of (1+w)*x", {"sd_edit": lambda sd: [sd[k].sub_(1.0) for k in sd if k.endswith("norm.weight")]})

    def no_embed_scale(m):
        m.model.embed_tokens.embed_scale.fill_(1.0)

    # gelu_pytorch_tanh differs from exact gelu by < 5e-4 per activation, so switching it
    # moves log-probs by well under 1e-3 in models this small; this one ablation is held to
    # GELU_MATTERS (twice the 1e-4 parity tolerance) instead.
    exact_gelu = (
        "hidden_activation exact gelu instead of tanh approximation",
        {"cfg_edit": ab_set(hidden_activation="gelu"), "threshold": GELU_MATTERS},
    )

    run.model_fixture(
        "gemma2",
        Gemma2ForCausalLM,
        Gemma2Config(
            **common(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                max_position_embeddings=64,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                query_pre_attn_scalar=24,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                attn_logit_softcapping=5.0,
                final_logit_softcapping=3.0,
                hidden_activation="gelu_pytorch_tanh",
                tie_word_embeddings=True,
            )
        ),
        "Gemma2: layer_types sliding/full (sliding_window 8 on layer 0), attn_logit_softcapping 5, "
        "final_logit_softcapping 3, query_pre_attn_scalar 24 != head_dim 16, (1+w) RMSNorm, "
        "pre/post feedforward norms and post-attention norm, gelu_pytorch_tanh, embeddings scaled "
        "by sqrt(hidden_size), tied head.",
        [
            ("norm weights at init (0, i.e. (1+w) = 1)", {"reset": r"norm\.weight$"}),
            gemma_norms,
            ("all layers full attention (sliding window ignored)", {"cfg_edit": ab_set(layer_types=["full_attention"] * 2)}),
            ("attn_logit_softcapping None", {"cfg_edit": ab_set(attn_logit_softcapping=None)}),
            ("final_logit_softcapping None", {"cfg_edit": ab_set(final_logit_softcapping=None)}),
            ("query_pre_attn_scalar = head_dim (16)", {"cfg_edit": ab_set(query_pre_attn_scalar=16)}),
            ("no sqrt(hidden_size) embedding scale", {"mod_edit": no_embed_scale}),
            ("post_feedforward_layernorm removed", {"mod_edit": ab_identity("post_feedforward_layernorm")}),
            ("pre_feedforward_layernorm removed", {"mod_edit": ab_identity("pre_feedforward_layernorm")}),
            exact_gelu,
        ],
    )

    # 8. Gemma3 (text only) ----------------------------------------------------------
    gemma3_types = ["sliding_attention", "full_attention", "sliding_attention"]
    m = run.model_fixture(
        "gemma3",
        Gemma3ForCausalLM,
        Gemma3TextConfig(
            **common(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=8,
                max_position_embeddings=64,
                rms_norm_eps=1e-6,
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                },
                query_pre_attn_scalar=24,
                sliding_window=8,
                layer_types=gemma3_types,
                hidden_activation="gelu_pytorch_tanh",
                tie_word_embeddings=True,
            )
        ),
        "Gemma3 text (model_type gemma3_text, Gemma3ForCausalLM): layer_types sliding/full/sliding "
        "(not what the legacy sliding_window_pattern 6 would give), sliding_window 8, q_norm/k_norm "
        "((1+w) RMSNorm, over head_dim 8), rope_parameters nested per layer type (sliding: default theta 1e4, i.e. "
        "rope_local_base_freq; full: linear factor 8, theta 1e6), query_pre_attn_scalar 24, "
        "embedding scale, tied head.",
        [
            ("norm weights at init (0, i.e. (1+w) = 1)", {"reset": r"norm\.weight$"}),
            gemma_norms,
            ("all layers sliding (layer_types from sliding_window_pattern 6)", {"cfg_edit": ab_set(layer_types=["sliding_attention"] * 3)}),
            ("all layers full attention (sliding window ignored)", {"cfg_edit": ab_set(layer_types=["full_attention"] * 3)}),
            ("local layers use the global rope (theta 1e6, linear 8)", {"cfg_edit": lambda d: d["rope_parameters"].update(sliding_attention=dict(d["rope_parameters"]["full_attention"]))}),
            ("global layers without linear scaling", {"cfg_edit": lambda d: d["rope_parameters"].update(full_attention={"rope_type": "default", "rope_theta": 1000000.0})}),
            ("q_norm / k_norm removed", {"mod_edit": ab_identity("q_norm", "k_norm")}),
            ("query_pre_attn_scalar = head_dim (8)", {"cfg_edit": ab_set(query_pre_attn_scalar=8)}),
            ("no sqrt(hidden_size) embedding scale", {"mod_edit": no_embed_scale}),
            exact_gelu,
        ],
    )
    gemma3_v4(run, m)

    # 9. Phi-3 ------------------------------------------------------------------------
    phi3_kw = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        original_max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )

    def swap_halves(suffix, n_first):
        def edit(sd):
            for k in sd:
                if k.endswith(suffix):
                    w = sd[k]
                    sd[k] = torch.cat([w[n_first:], w[:n_first]]).clone()

        return edit

    run.model_fixture(
        "phi3",
        Phi3ForCausalLM,
        Phi3Config(**common(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **phi3_kw)),
        "Phi-3: fused qkv_proj (rows q | k | v; 2 query heads, 1 KV head, head_dim 16) and fused gate_up_proj "
        "(rows gate | up), default RoPE, untied head.",
        [
            NORMS_AT_INIT,
            ("gate_up_proj read as up | gate", {"sd_edit": swap_halves("gate_up_proj.weight", 64)}),
            ("qkv_proj rows permuted (q/k/v split wrong)", {"sd_edit": swap_halves("qkv_proj.weight", 32)}),
        ],
    )
    run.model_fixture(
        "phi3-partial-rotary",
        Phi3ForCausalLM,
        Phi3Config(
            **common(
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75},
                **phi3_kw,
            )
        ),
        "Phi-3 with partial_rotary_factor 0.75 (as Phi-4-mini): RoPE on the first 12 of 16 head dims.",
        [("partial_rotary_factor 1.0 (rotate all dims)", {"cfg_edit": ab_rope(partial_rotary_factor=1.0)})],
    )

    # 10. GPT-NeoX ----------------------------------------------------------------------
    def neox_kw(parallel):
        return common(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
            use_parallel_residual=parallel,
            hidden_act="gelu",
            tie_word_embeddings=False,
            layer_norm_eps=1e-5,
        )

    def neox_qkv_blocked(sd):
        # what a loader assuming rows [q(all heads) | k | v] would compute: reinterpret the
        # per-head interleaved [head][q|k|v][head_dim] rows that way.
        for k in list(sd):
            if k.endswith("attention.query_key_value.weight") or k.endswith("attention.query_key_value.bias"):
                w = sd[k]
                rest = w.shape[1:]
                sd[k] = w.reshape(3, 4, 8, *rest).transpose(0, 1).reshape(w.shape).clone()

    run.model_fixture(
        "gpt-neox",
        GPTNeoXForCausalLM,
        GPTNeoXConfig(**neox_kw(True)),
        "GPT-NeoX (Pythia-like): rotary on the first 25% of head dims (rope_parameters."
        "partial_rotary_factor 0.25, the old rotary_pct), use_parallel_residual True, fused "
        "query_key_value laid out per head [head][q|k|v][head_dim] with bias, LayerNorm with bias, "
        "exact gelu, untied embed_out.",
        [
            ("norm weights at their init value (1)", {"reset": r"(layernorm|layer_norm)\.weight$"}),
            ("biases zeroed", {"reset": r"\.bias$"}),
            ("use_parallel_residual False", {"cfg_edit": ab_set(use_parallel_residual=False)}),
            ("partial_rotary_factor 1.0 (rotate all dims)", {"cfg_edit": ab_rope(partial_rotary_factor=1.0)}),
            ("query_key_value split as [q|k|v] blocks, not per head", {"sd_edit": neox_qkv_blocked}),
        ],
    )
    run.model_fixture(
        "gpt-neox-sequential",
        GPTNeoXForCausalLM,
        GPTNeoXConfig(**neox_kw(False)),
        "GPT-NeoX with use_parallel_residual False (x + attn(ln1(x)), then + mlp(ln2(.))).",
        [("use_parallel_residual True", {"cfg_edit": ab_set(use_parallel_residual=True)})],
    )

    # 11./12. GPT-2 ---------------------------------------------------------------------
    gpt2_kw = dict(
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        n_inner=64,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
    )
    m = run.model_fixture(
        "gpt2-untied",
        GPT2LMHeadModel,
        GPT2Config(**common(tie_word_embeddings=False, **gpt2_kw)),
        "GPT-2 with tie_word_embeddings False: a separate lm_head.weight; Conv1D weights stored "
        "[in, out]; learned position embeddings; gelu_new.",
        [
            ("norm weights at their init value (1)", {"reset": r"ln_.*\.weight$"}),
            ("biases zeroed", {"reset": r"\.bias$"}),
            ("head tied to wte (lm_head.weight ignored)", {"sd_edit": lambda sd: sd.__setitem__("lm_head.weight", sd["transformer.wte.weight"].clone())}),
        ],
    )
    gpt2_hub_layout(run, gpt2_kw)

    # 13. sharded ------------------------------------------------------------------------
    run.model_fixture(
        "llama-sharded",
        LlamaForCausalLM,
        LlamaConfig(**llama_kw()),
        "Llama saved with max_shard_size 40kB: model-0000i-of-0000n.safetensors shards plus "
        "model.safetensors.index.json (weight_map).",
        max_shard_size="40kB",
    )
    shards = [f for f in layout(os.path.join(MODELS_DIR, "llama-sharded")) if re.match(r"model-\d+-of-\d+\.safetensors$", f)]
    print(f"    {len(shards)} shards")
    assert len(shards) >= 3, shards

    # 14. bf16 / f16 -----------------------------------------------------------------------
    run.model_fixture(
        "llama-bf16",
        LlamaForCausalLM,
        LlamaConfig(**llama_kw()),
        "Llama stored in bfloat16 (config dtype bfloat16).",
        dtype=torch.bfloat16,
        notes="reference_logprobs are the float32 computation over the bf16 weights upcast to "
        "float32 (from_pretrained(dtype=float32)), not a bf16 forward pass.",
    )
    run.model_fixture(
        "qwen2-f16",
        Qwen2ForCausalLM,
        Qwen2Config(**common(**qwen2_cfg)),
        "Qwen2 stored in float16 (config dtype float16), q/k/v bias, tied embeddings.",
        dtype=torch.float16,
        notes="reference_logprobs are the float32 computation over the f16 weights upcast to "
        "float32 (from_pretrained(dtype=float32)), not an f16 forward pass.",
    )

    # 15. pytorch_model.bin ----------------------------------------------------------------
    pytorch_bin(run)


def v4_config(run, src, name, cls):
    """`src` with config.json rewritten as transformers 4 wrote Llama 3.x configs."""
    print(f"== {name}")
    path = os.path.join(MODELS_DIR, name)
    shutil.copytree(os.path.join(MODELS_DIR, src), path)
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = dict(sorted(rp.items()))
    cfg["torch_dtype"] = cfg.pop("dtype")
    cfg["transformers_version"] = "4.45.0"
    dump_json(cfg_path, dict(sorted(cfg.items())))

    reloaded = reload(cls, path)
    want = run.models[src][0].config.rope_parameters
    assert reloaded.config.rope_parameters == want, (reloaded.config.rope_parameters, want)
    refs = logprobs(reloaded, run.ids)
    d = max_diff(refs, run.refs[src])
    print(f"    transformers 5 loads the v4 config.json to rope_parameters {reloaded.config.rope_parameters}")
    print(f"    vs {src}: max |dlogprob| = {d:.3g}")
    assert d == 0.0, d
    write_jsonl(os.path.join(path, "reference_logprobs.jsonl"), run.ids, refs)
    run.refs[name] = refs
    run.add_index(
        name,
        path,
        f"Same weights and references as {src}, config.json in the transformers-4 layout real Llama "
        "3.x checkpoints have: top-level rope_theta, rope_scaling {rope_type llama3, factor, "
        "low_freq_factor, high_freq_factor, original_max_position_embeddings}, torch_dtype "
        "instead of dtype, transformers_version 4.45.0.",
        torch.float32,
        {},
        notes="transformers 5.24 loads it to the same rope_parameters and identical log-probs.",
    )


def gemma3_v4(run, m):
    """gemma3 with config.json as transformers 4 wrote Gemma 3 configs."""
    src, name = "gemma3", "gemma3-v4config"
    print(f"== {name}")
    path = os.path.join(MODELS_DIR, name)
    shutil.copytree(os.path.join(MODELS_DIR, src), path)
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters")
    full, local = rp["full_attention"], rp["sliding_attention"]
    assert local["rope_type"] == "default"
    cfg["rope_theta"] = full.pop("rope_theta")
    cfg["rope_scaling"] = dict(sorted(full.items()))
    cfg["rope_local_base_freq"] = local["rope_theta"]
    # As in the first Gemma 3 configs (transformers 4.50): no layer_types, only the period of
    # the full-attention layers (layer i is full iff (i + 1) % pattern == 0); 2 gives the
    # fixture's sliding / full / sliding.
    cfg.pop("_sliding_window_pattern")
    layer_types = cfg.pop("layer_types")
    pattern = 2
    derived = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(len(layer_types))]
    assert derived == layer_types, (derived, layer_types)
    cfg["sliding_window_pattern"] = pattern
    cfg["torch_dtype"] = cfg.pop("dtype")
    cfg["transformers_version"] = "4.50.0"
    dump_json(cfg_path, dict(sorted(cfg.items())))

    reloaded = reload(Gemma3ForCausalLM, path)
    assert reloaded.config.rope_parameters == m.config.rope_parameters, reloaded.config.rope_parameters
    assert reloaded.config.layer_types == m.config.layer_types, reloaded.config.layer_types
    refs = logprobs(reloaded, run.ids)
    d = max_diff(refs, run.refs[src])
    print(f"    transformers 5 loads the v4 config.json to rope_parameters {reloaded.config.rope_parameters}")
    print(f"    vs {src}: max |dlogprob| = {d:.3g}")
    assert d == 0.0, d
    write_jsonl(os.path.join(path, "reference_logprobs.jsonl"), run.ids, refs)
    run.add_index(
        name,
        path,
        f"Same weights and references as {src}, config.json in the transformers-4 layout of real "
        "Gemma 3 checkpoints: top-level rope_theta (global layers), rope_scaling {rope_type linear, "
        "factor 8} (global layers), rope_local_base_freq (sliding layers), no layer_types but "
        "sliding_window_pattern 2 (layer i is full attention iff (i + 1) % 2 == 0), torch_dtype "
        "instead of dtype.",
        torch.float32,
        {},
        notes="Extra (not in the original list). transformers 5.24 loads it to the same nested "
        "rope_parameters and layer_types and identical log-probs.",
    )


def gpt2_hub_layout(run, gpt2_kw):
    """GPT-2 whose model.safetensors has the original openai-community/gpt2 key layout."""
    name = "gpt2-hub-layout"
    print(f"== {name}")
    path = os.path.join(MODELS_DIR, name)
    model, _ = build(GPT2LMHeadModel, GPT2Config(**common(tie_word_embeddings=True, **gpt2_kw)), seed_of(name))
    model.save_pretrained(path)
    run.tok.save_pretrained(path)
    in_memory = logprobs(model, run.ids)

    st = os.path.join(path, "model.safetensors")
    sd = load_file(st)
    assert "lm_head.weight" not in sd, sorted(sd)  # tied: transformers 5 already leaves it out
    hub = {}
    for k, v in sd.items():
        assert k.startswith("transformer."), k
        hub[k[len("transformer.") :]] = v
    # The hub file also carries each layer's causal-mask buffer (float32, 1 x 1 x n_positions^2),
    # which loaders must skip.
    n = gpt2_kw["n_positions"]
    for i in range(gpt2_kw["n_layer"]):
        hub[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.float32)).view(1, 1, n, n)
    save_file(hub, st, metadata={"format": "pt"})

    reloaded = reload(GPT2LMHeadModel, path)
    refs = logprobs(reloaded, run.ids)
    d = max_diff(refs, in_memory)
    print(f"    transformers loads the prefix-less file: vs in-memory model max |dlogprob| = {d:.3g}")
    assert d == 0.0, d
    write_jsonl(os.path.join(path, "reference_logprobs.jsonl"), run.ids, refs)
    run.add_index(
        name,
        path,
        "GPT-2 (tied head) whose model.safetensors uses the original openai-community/gpt2 layout: "
        "keys without the 'transformer.' prefix (wte.weight, h.0.ln_1.weight, ...), no "
        "lm_head.weight, plus unused h.N.attn.bias causal-mask buffers.",
        torch.float32,
        {},
        notes="transformers 5.24 loads it to log-probs identical to the model before the rewrite.",
    )


def pytorch_bin(run):
    """A Llama stored as pytorch_model.bin (what transformers 4 wrote with safe_serialization=False)."""
    name = "llama-pytorch-bin"
    print(f"== {name}")
    path = os.path.join(MODELS_DIR, name)
    model, _ = build(LlamaForCausalLM, LlamaConfig(**llama_kw(tie_word_embeddings=True)), seed_of(name))
    # transformers 5 has no safe_serialization=False: save normally, then replace the weights
    # file with torch.save of the state dict, as transformers 4 did.
    model.save_pretrained(path)
    run.tok.save_pretrained(path)
    os.remove(os.path.join(path, "model.safetensors"))
    # Tied embed_tokens / lm_head stay one shared storage, as in transformers 4's files.
    sd = dict(model.state_dict())
    torch.save(sd, os.path.join(path, "pytorch_model.bin"))
    reloaded = reload(LlamaForCausalLM, path)
    d = max_diff(logprobs(reloaded, run.ids), logprobs(model, run.ids))
    print(f"    transformers loads pytorch_model.bin: max |dlogprob| = {d:.3g}")
    assert d == 0.0, d
    run.add_index(
        name,
        path,
        "Llama stored only as pytorch_model.bin (pickle, torch.save of the state dict): ewtune must "
        "refuse it with a clear message. No reference log-probs.",
        torch.float32,
        {},
        references=False,
    )


# ---------------------------------------------------------------------------
# LoRA adapters
# ---------------------------------------------------------------------------

BASE_REL = "../../models/llama-tied"


def adapters(run):
    base_path = os.path.join(MODELS_DIR, "llama-tied")
    index = []
    base_refs = run.refs["llama-tied"]

    def adapter(name, lora_kw, exercises, references=True, ablations=()):
        print(f"== adapters/{name}")
        path = os.path.join(ADAPTERS_DIR, name)
        base = reload(LlamaForCausalLM, base_path)
        cfg = LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **lora_kw)
        torch.manual_seed(seed_of(name))
        pm = get_peft_model(base, cfg)
        gen = torch.Generator().manual_seed(seed_of(name) + 1)
        with torch.no_grad():
            for pname, p in pm.named_parameters():
                if "lora_B" in pname:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
                elif "lora_A" in pname:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
                elif "lora_magnitude_vector" in pname:
                    p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
        pm.eval()
        targeted = sorted(
            n for n, mod in pm.base_model.model.named_modules() if hasattr(mod, "lora_A") and "default" in mod.lora_A
        )
        ranks = {n: pm.base_model.model.get_submodule(n).r["default"] for n in targeted}
        scalings = {n: pm.base_model.model.get_submodule(n).scaling["default"] for n in targeted}
        pm.save_pretrained(path)

        # base_model_name_or_path -> relative path of the base fixture; stable key order.
        cfg_path = os.path.join(path, "adapter_config.json")
        with open(cfg_path) as f:
            acfg = json.load(f)
        acfg["base_model_name_or_path"] = BASE_REL
        if isinstance(acfg.get("target_modules"), list):
            acfg["target_modules"] = sorted(acfg["target_modules"])
        dump_json(cfg_path, dict(sorted(acfg.items())))
        readme = os.path.join(path, "README.md")
        if os.path.exists(readme):
            with open(readme) as f:
                text = f.read()
            text = text.replace(os.path.abspath(base_path), BASE_REL).replace(base_path, BASE_REL)
            assert REPO_ROOT not in text and FIXTURES not in text
            with open(readme, "w") as f:
                f.write(text)
        assert not any(f.startswith("tokenizer") for f in os.listdir(path))

        figures = {}
        if references:
            in_memory = logprobs(pm, run.ids)
            loaded = PeftModel.from_pretrained(reload(LlamaForCausalLM, base_path), path).eval()
            refs = logprobs(loaded, run.ids)
            d = max_diff(refs, in_memory)
            print(f"    reload from disk vs in-memory: max |dlogprob| = {d:.3g}")
            assert d <= 1e-6, d
            write_jsonl(os.path.join(path, "reference_logprobs.jsonl"), run.ids, refs)
            d = max_diff(refs, base_refs)
            print(f"    {'adapter ignored (base model alone)':<62} max |dlogprob| = {d:.4g}")
            assert d > MATTERS, d
            figures["adapter ignored (base model alone)"] = float(f"{d:.6g}")
            for label, edit in ablations:
                m = copy.deepcopy(loaded)
                edit(m)
                d = max_diff(refs, logprobs(m, run.ids))
                print(f"    {label:<62} max |dlogprob| = {d:.4g}")
                assert d > MATTERS, (label, d)
                figures[label] = float(f"{d:.6g}")
        index.append(
            {
                "name": name,
                "base": BASE_REL,
                "exercises": exercises,
                "targeted_modules": targeted,
                "rank": ranks,
                "scaling": scalings,
                "files": layout(path),
                "reference_logprobs": references,
                "feature_matters_max_abs_dlogprob": figures,
            }
        )
        print(f"    targeted {targeted}")

    def set_scaling(fn):
        def edit(m):
            for n, mod in m.base_model.model.named_modules():
                if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                    mod.scaling["default"] = fn(n, mod)

        return edit

    adapter(
        "lora-plain",
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        "LoRA r 4, alpha 8 (scaling alpha / r = 2) on q_proj and v_proj of every layer.",
        ablations=[("scaling 1 instead of alpha / r", set_scaling(lambda n, mod: 1.0))],
    )
    adapter(
        "lora-rslora",
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True),
        "rsLoRA: use_rslora True, scaling alpha / sqrt(r) = 4 (not alpha / r = 2).",
        ablations=[("scaling alpha / r instead of alpha / sqrt(r)", set_scaling(lambda n, mod: 8 / 4))],
    )
    adapter(
        "lora-patterns",
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj"],
            rank_pattern={"model.layers.1.self_attn.q_proj": 8},
            alpha_pattern={"model.layers.1.self_attn.q_proj": 32},
        ),
        "rank_pattern / alpha_pattern: model.layers.1.self_attn.q_proj has r 8, alpha 32 (scaling 4); "
        "every other target r 4, alpha 8 (scaling 2). PEFT matches pattern keys as "
        "re.match(rf'(.*\\.)?({key})$', module_name).",
        ablations=[
            (
                "alpha_pattern ignored (layers.1 q_proj scaling 8 / 8)",
                set_scaling(lambda n, mod: 1.0 if n == "model.layers.1.self_attn.q_proj" else mod.scaling["default"]),
            )
        ],
    )
    adapter(
        "lora-regex",
        dict(r=4, lora_alpha=8, target_modules=r".*\.1\.self_attn\.(q_proj|o_proj)|.*mlp\.(up|down)"),
        "target_modules as one regex string, r'.*\\.1\\.self_attn\\.(q_proj|o_proj)|.*mlp\\.(up|down)', "
        "which PEFT applies with re.fullmatch to the module name: only layer 1's q_proj and o_proj "
        "match; the second alternative matches nothing in full-match semantics (re.search would "
        "also pick up every mlp.up_proj / mlp.down_proj).",
    )
    adapter(
        "lora-dora",
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True),
        "DoRA (use_dora True, lora_magnitude_vector weights): ewtune must refuse it. No references.",
        references=False,
    )
    return index


# ---------------------------------------------------------------------------


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"tokenizers {tokenizers.__version__}, safetensors {safetensors.__version__}"
    )
    for d in (MODELS_DIR, ADAPTERS_DIR):
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)

    run = Run()
    for text, ids in zip(TEXTS, run.ids):
        print(f"{len(ids):3d} tokens: {text!r}")
    models(run)
    adapter_index = adapters(run)

    meta = {
        "generator": "scripts/reference/make_model_fixtures.py",
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "tokenizer": "tests/fixtures/tiny-llama/tokenizer.json",
        "texts": TEXTS,
        "reference": "token_logprobs[t-1] = log p(ids[t] | ids[:t]), float64 log_softmax of float32 "
        "logits, model reloaded from the directory with dtype float32, eager attention, eval mode",
        "feature_matters_threshold": MATTERS,
        "feature_matters_threshold_gelu_tanh_approximation": GELU_MATTERS,
    }
    dump_json(os.path.join(MODELS_DIR, "index.json"), {**meta, "fixtures": run.index})
    dump_json(os.path.join(ADAPTERS_DIR, "index.json"), {**meta, "adapters": adapter_index})

    print()
    with open(os.path.join(MODELS_DIR, "index.json")) as f:
        print(f.read())
    total = 0
    for root in (MODELS_DIR, ADAPTERS_DIR):
        for name in sorted(os.listdir(root)):
            p = os.path.join(root, name)
            if os.path.isdir(p):
                size = sum(os.path.getsize(os.path.join(p, f)) for f in os.listdir(p))
                total += size
                print(f"{os.path.relpath(p, FIXTURES):<40} {size / 1024:8.1f} KiB")
    print(f"total {total / 1024:.1f} KiB")


if __name__ == "__main__":
    sys.exit(main())
