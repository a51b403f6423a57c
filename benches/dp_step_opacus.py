#!/usr/bin/env python3
"""Opacus's DP-SGD step time on CPU, for comparison with `ewtune bench dp-step`.

What it measures: on one randomly initialised causal LM of the family `--family` (seeded with
torch.manual_seed(0) for the weights and torch.manual_seed(1) for the batch), on one fixed random
batch of token ids [B, T], with loss = mean next-token cross entropy over the T-1 predicted
positions, the wall-clock time of one optimizer step (forward + backward + AdamW step + zero_grad,
lr 1e-5, weight decay 0 as ewtune's default) in three ways:

  nondp_step_s             plain PyTorch, torch.optim.AdamW
  opacus_dp_step_s         Opacus PrivacyEngine.make_private, grad_sample_mode="hooks"
                           (materialised per-sample gradients, clip to 1.0, Gaussian noise, sigma 1.0)
  opacus_ghost_dp_step_s   the same with grad_sample_mode="ghost" (fast gradient clipping: per-sample
                           norms without materialising per-sample gradients, then a second backward);
                           null when Opacus refuses or fails on this model

Each is the median over --repeats timed steps after one untimed warm-up; the three are run
interleaved within each repeat (the order rotates from one repeat to the next), each on its own
copy of the same initial weights.

Families:
  gpt2   a GPT-2-shaped LM in plain PyTorch (learned positions, pre-LN blocks, fused qkv with
         biases, tanh-GELU MLP of width --intermediate, default 4 d). Attention is written with
         plain tensor ops (no parameters), so Opacus sees only Linear and LayerNorm layers.
  llama  transformers' LlamaForCausalLM built from a LlamaConfig (random weights; grouped-query
         attention with --kv-heads key/value heads, SwiGLU MLP of width --intermediate, default
         2.5 d as ewtune's synthetic model, RoPE, untied head, eager attention as ewtune computes
         it). Its LlamaRMSNorm modules are replaced by torch.nn.RMSNorm with the same weight and
         eps (the same arithmetic in float32), which Opacus has a grad sampler for; otherwise
         Opacus would fall back to functorch for them.

Two modes, with the same trainable set as ewtune:
  full  every block Linear and norm layer and the final norm train; token (and position)
        embeddings are frozen. The head: GPT-2 ties it to the token embedding, so it is frozen in
        ewtune; Opacus cannot hook a tied weight, so the GPT-2 head here is an untied, frozen
        Linear(d, V, bias=False), the same compute. Llama's head is untied and is a linear layer,
        so it trains in both (as ewtune's full mode trains every linear layer).
  lora  everything frozen; LoRA (rank 8, alpha 16, scale alpha/r) on PEFT's default targets for
        the family (GPT-2: every block's qkv linear `c_attn`; Llama: `q_proj` and `v_proj`), as
        two nn.Linear A: in->r and B: r->out, no bias, added to the frozen output (a hand-written
        equivalent of PEFT's layer, which Opacus hooks as two Linears). B gets a small random init
        (not PEFT's zeros) so that all gradients are non-trivial; this does not change the cost.

Threads: torch.set_num_threads(--threads), 1 by default, to match ewtune run with
OMP_NUM_THREADS=1.

Usage: dp_step_opacus.py [--family gpt2|llama --layers 12 --d-model 768 --heads 12 --kv-heads H
                          --intermediate I --seq-len 128 --batch 4 --vocab 50257 --repeats 3
                          --threads 1 --modes full,lora] [--json]
"""

import argparse
import copy
import json
import math
import statistics
import sys
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

LORA_RANK = 8
LORA_ALPHA = 16.0
LR = 1e-5
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0


class LoraLinear(nn.Module):
    """A frozen base Linear plus a trainable low-rank branch: base(x) + (alpha/r) * B(A(x))."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's A init
        nn.init.normal_(self.lora_B.weight, std=1e-3)  # PEFT zero-inits B; small random here
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scale * self.lora_B(self.lora_A(x))


class Block(nn.Module):
    """Pre-LN GPT-2 block."""

    def __init__(self, d: int, heads: int, inner: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d, eps=1e-5)
        self.c_attn = nn.Linear(d, 3 * d)
        self.attn_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=1e-5)
        self.c_fc = nn.Linear(d, inner)
        self.mlp_proj = nn.Linear(inner, d)

    def attention(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = self.c_attn(x).split(d, dim=-1)
        q = q.view(b, t, self.heads, hd).transpose(1, 2)
        k = k.view(b, t, self.heads, hd).transpose(1, 2)
        v = v.view(b, t, self.heads, hd).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(causal, float("-inf"))
        out = scores.softmax(dim=-1) @ v
        return self.attn_proj(out.transpose(1, 2).reshape(b, t, d))

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt2(nn.Module):
    """GPT-2-shaped LM with learned positions and an untied (frozen) head."""

    def __init__(self, layers: int, d: int, heads: int, inner: int, vocab: int, positions: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(positions, d)
        self.blocks = nn.ModuleList([Block(d, heads, inner) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        for m in self.modules():  # GPT-2's init: N(0, 0.02) weights, zero biases
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for blk in self.blocks:
            x = blk(x)
        return self.lm_head(self.ln_f(x))


class LlamaLogits(nn.Module):
    """transformers' LlamaForCausalLM, returning the logits [B, T, V] only."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids):
        return self.lm(input_ids=ids, use_cache=False).logits


def mlp_width(args) -> int:
    if args.intermediate:
        return args.intermediate
    return 4 * args.d_model if args.family == "gpt2" else 2 * args.d_model + args.d_model // 2


def build_gpt2(args, mode: str) -> nn.Module:
    torch.manual_seed(0)
    model = Gpt2(args.layers, args.d_model, args.heads, mlp_width(args), args.vocab, max(args.seq_len, 8))
    for p in model.parameters():
        p.requires_grad_(mode == "full")
    for frozen in (model.wte, model.wpe, model.lm_head):
        frozen.weight.requires_grad_(False)
    if mode == "lora":
        for blk in model.blocks:
            blk.c_attn = LoraLinear(blk.c_attn, LORA_RANK, LORA_ALPHA)
    return model


def build_llama(args, mode: str) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        intermediate_size=mlp_width(args),
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(args.seq_len, 8),
        rms_norm_eps=1e-6,
        hidden_act="silu",
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attn_implementation="eager",
    )
    lm = LlamaForCausalLM(cfg)
    # LlamaRMSNorm -> nn.RMSNorm (same float32 arithmetic), which Opacus hooks natively.
    for name, module in list(lm.named_modules()):
        if type(module).__name__ == "LlamaRMSNorm":
            norm = nn.RMSNorm(module.weight.shape[0], eps=module.variance_epsilon)
            with torch.no_grad():
                norm.weight.copy_(module.weight)
            parent_name, _, child = name.rpartition(".")
            setattr(lm.get_submodule(parent_name) if parent_name else lm, child, norm)
    for p in lm.parameters():
        p.requires_grad_(mode == "full")
    lm.model.embed_tokens.weight.requires_grad_(False)
    if mode == "lora":
        for layer in lm.model.layers:
            layer.self_attn.q_proj = LoraLinear(layer.self_attn.q_proj, LORA_RANK, LORA_ALPHA)
            layer.self_attn.v_proj = LoraLinear(layer.self_attn.v_proj, LORA_RANK, LORA_ALPHA)
    return LlamaLogits(lm)


def build(args, mode: str) -> nn.Module:
    return build_gpt2(args, mode) if args.family == "gpt2" else build_llama(args, mode)


def lm_loss(model, criterion, ids, ghost=False):
    """Mean next-token cross entropy over the T-1 predicted positions of every sequence. Logits
    are flattened to [B*(T-1), V]; Opacus's ghost-clipping loss wrapper is told the [B, T-1]
    shape so it can average per sequence (the privacy unit) before clipping."""
    logits = model(ids)[:, :-1, :]
    b, t, v = logits.shape
    flat_logits, flat_targets = logits.reshape(b * t, v), ids[:, 1:].reshape(b * t)
    if ghost:
        return criterion(flat_logits, flat_targets, shape=(b, t, v))
    return criterion(flat_logits, flat_targets)


def make_step(model, optimizer, criterion, ids, ghost=False):
    def step():
        t = time.perf_counter()
        loss = lm_loss(model, criterion, ids, ghost)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    return step


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def opacus_step(base: nn.Module, ids, grad_sample_mode: str):
    """A timed-step closure for a private copy of `base` under Opacus."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    model = copy.deepcopy(base)
    opt = torch.optim.AdamW(trainable(model), lr=LR, weight_decay=0.0)
    loader = DataLoader(TensorDataset(ids), batch_size=ids.shape[0])
    engine = PrivacyEngine(accountant="rdp")
    criterion = nn.CrossEntropyLoss(reduction="mean")
    kwargs = dict(
        module=model,
        optimizer=opt,
        data_loader=loader,
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=MAX_GRAD_NORM,
        poisson_sampling=False,
        grad_sample_mode=grad_sample_mode,
    )
    if grad_sample_mode == "ghost":
        # Ghost clipping returns a wrapped criterion whose .backward() runs both passes.
        model, opt, criterion, _ = engine.make_private(criterion=criterion, **kwargs)
    else:
        model, opt, _ = engine.make_private(**kwargs)
    return make_step(model, opt, criterion, ids, ghost=grad_sample_mode == "ghost")


def run_mode(args, mode: str):
    base = build(args, mode)
    torch.manual_seed(1)
    ids = torch.randint(args.vocab, (args.batch, args.seq_len))
    n_trainable = sum(p.numel() for p in trainable(base))

    plain = copy.deepcopy(base)
    steps = {
        "nondp": make_step(plain, torch.optim.AdamW(trainable(plain), lr=LR, weight_decay=0.0), nn.CrossEntropyLoss(), ids),
        "hooks": opacus_step(base, ids, "hooks"),
    }
    errors = {}
    paired = []
    try:
        steps["ghost"] = opacus_step(base, ids, "ghost")
    except Exception as e:  # noqa: BLE001 - report and go on without ghost
        errors["ghost"] = f"{type(e).__name__}: {e}"
    del base

    times = {k: [] for k in steps}
    for rep in range(args.repeats + 1):  # rep 0 is the warm-up
        names = list(steps)
        names = names[rep % len(names):] + names[:rep % len(names)]  # rotate the order
        row = {}
        for name in names:
            try:
                dt = steps[name]()
            except Exception as e:  # noqa: BLE001
                if name != "ghost":
                    raise
                errors["ghost"] = f"{type(e).__name__}: {e}"
                del steps[name], times[name]
                continue
            row[name] = dt
            if rep > 0:
                times[name].append(dt)
        if rep > 0:
            paired.append(row["hooks"] / row["nondp"])
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "family": args.family,
        "mode": mode,
        "impl": "opacus",
        "nondp_step_s": med["nondp"],
        "opacus_dp_step_s": med["hooks"],
        "opacus_ghost_dp_step_s": med.get("ghost"),
        "ratio": med["hooks"] / med["nondp"],
        "paired_ratio": statistics.median(paired),
        "ghost_ratio": med["ghost"] / med["nondp"] if "ghost" in med else None,
        "trainable_params": n_trainable,
        "layers": args.layers,
        "d_model": args.d_model,
        "heads": args.heads,
        "kv_heads": args.kv_heads,
        "intermediate": mlp_width(args),
        "seq_len": args.seq_len,
        "batch": args.batch,
        "vocab": args.vocab,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "opacus": __import__("opacus").__version__,
    }
    if args.family == "llama":
        out["transformers"] = __import__("transformers").__version__
    if "ghost" in errors:
        out["ghost_error"] = errors["ghost"][:300]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=("gpt2", "llama"), default="gpt2")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=None, help="llama; default heads/4 where that divides, else heads")
    ap.add_argument("--intermediate", type=int, default=None, help="MLP width; default gpt2 4 d, llama 2.5 d")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default="full,lora", help="comma-separated subset of full,lora")
    ap.add_argument("--json", action="store_true", help="one JSON object per mode per line")
    args = ap.parse_args()
    if args.d_model % args.heads:
        ap.error("--d-model must be divisible by --heads")
    if args.kv_heads is None:
        args.kv_heads = args.heads // 4 if args.family == "llama" and args.heads % 4 == 0 else args.heads
    if args.family == "gpt2" and args.kv_heads != args.heads:
        ap.error("gpt2 has no grouped-query attention: --kv-heads must equal --heads")
    if args.heads % args.kv_heads:
        ap.error("--heads must be a multiple of --kv-heads")
    args.repeats = max(args.repeats, 1)
    torch.set_num_threads(args.threads)
    # Opacus warns about secure RNG, the accountant and hook-based modules on every make_private.
    warnings.filterwarnings("ignore")

    for mode in args.modes.split(","):
        if mode not in ("full", "lora"):
            ap.error(f"unknown mode {mode!r}")
        r = run_mode(args, mode)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            ghost = "n/a" if r["opacus_ghost_dp_step_s"] is None else f"{r['opacus_ghost_dp_step_s']:.4f}s (ratio {r['ghost_ratio']:.3f})"
            print(
                f"{args.family} {mode:<5} non-dp {r['nondp_step_s']:.4f}s  opacus hooks {r['opacus_dp_step_s']:.4f}s (ratio {r['ratio']:.3f})"
                f"  opacus ghost {ghost}  ({r['trainable_params']} trainable, {r['threads']} thread(s))",
                flush=True,
            )
            if "ghost_error" in r:
                print(f"      ghost failed: {r['ghost_error']}", file=sys.stderr)


if __name__ == "__main__":
    main()
