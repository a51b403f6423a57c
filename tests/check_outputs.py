"""transformers and PEFT, as people use them, load what ewtune wrote, and agree with ewtune.

Run by tests/outputs.rs with the project venv's Python (transformers and peft from
requirements-ci.txt). Its one argument is a JSON file listing cases:

  {"cases": [{"name", "dir", "kind": "adapter" | "full", "ids": [[int]], "logprobs": [[float]],
              "dtype": "bfloat16" | "float32" (full), "max_shard_size": int (full),
              "base": str, "r", "lora_alpha", "target_modules", "fan_in_fan_out" (adapter)}]}

For every case it loads `dir` with AutoModelForCausalLM.from_pretrained (an adapter directory
is recognised by transformers, which loads the base its adapter_config.json names), computes
log p(ids[t] | ids[:t]) in float64 from float32 logits (eager attention), and checks them against
ewtune's within 1e-4. Adapters are also loaded with PeftModel.from_pretrained over the base, and
their adapter_config.json must be byte for byte what PEFT's own LoraConfig.save_pretrained writes
for the same settings. Full checkpoints must load in their saved dtype by default, and
transformers' own save_pretrained of the loaded model, with the same max_shard_size, must write
the same weight files, byte for byte, and the same index. Prints one line per check; exits 1 on
the first failure.
"""

import json
import os
import sys
import tempfile

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM

TOLERANCE = 1e-4


def fail(message):
    print(f"FAIL {message}", flush=True)
    sys.exit(1)


def logprobs(model, ids):
    with torch.no_grad():
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits.float()
        lp = torch.log_softmax(logits[0, :-1].double(), dim=-1)
        return lp.gather(1, x[0, 1:].unsqueeze(1)).squeeze(1).tolist()


def max_diff(model, case):
    worst = 0.0
    for ids, want in zip(case["ids"], case["logprobs"]):
        got = logprobs(model, ids)
        if len(got) != len(want):
            fail(f"{case['name']}: {len(got)} log-probs, ewtune has {len(want)}")
        worst = max(worst, max(abs(g - w) for g, w in zip(got, want)))
    return worst


def check_logprobs(label, model, case):
    worst = max_diff(model, case)
    print(f"{case['name']}: {label}: max |log-prob - ewtune's| = {worst:.2e}", flush=True)
    if not worst < TOLERANCE:
        fail(f"{case['name']}: {label}: log-probs differ from ewtune's by {worst:.2e}")


def weight_files(directory):
    return sorted(f for f in os.listdir(directory) if f.endswith(".safetensors") or f.endswith(".index.json"))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def describe(path):
    """A weight file's header (safetensors) or text (index), for a failure message."""
    data = read(path)
    if path.endswith(".json"):
        return data.decode()
    n = int.from_bytes(data[:8], "little")
    return data[8:8 + n].decode()


def check_adapter(case):
    d = case["dir"]
    if os.path.exists(os.path.join(d, "config.json")):
        fail(f"{case['name']}: an adapter directory holds config.json")
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    if not hasattr(model, "peft_config"):
        fail(f"{case['name']}: transformers did not load {d} as an adapter")
    check_logprobs("AutoModelForCausalLM.from_pretrained(adapter dir)", model, case)
    base = AutoModelForCausalLM.from_pretrained(case["base"], dtype=torch.float32, attn_implementation="eager")
    peft_model = PeftModel.from_pretrained(base, d).eval()
    check_logprobs("PeftModel.from_pretrained(base, adapter dir)", peft_model, case)
    config = LoraConfig(
        r=case["r"],
        lora_alpha=case["lora_alpha"],
        target_modules=case["target_modules"],
        fan_in_fan_out=case["fan_in_fan_out"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=case["base"],
        inference_mode=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        theirs = json.loads(read(os.path.join(tmp, "adapter_config.json")))
        ours_bytes = read(os.path.join(d, "adapter_config.json"))
        # PEFT keeps target_modules in a set: its order is the set's; ewtune writes it sorted.
        theirs["target_modules"] = sorted(theirs["target_modules"])
        expected = json.dumps(theirs, indent=2, sort_keys=True).encode()
        if ours_bytes != expected:
            fail(f"{case['name']}: adapter_config.json differs from PEFT's:\n{ours_bytes.decode()}\n---\n{expected.decode()}")
    print(f"{case['name']}: adapter_config.json is byte for byte PEFT's", flush=True)


def check_full(case):
    d = case["dir"]
    default = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    dtype = str(next(default.parameters()).dtype).removeprefix("torch.")
    if dtype != case["dtype"]:
        fail(f"{case['name']}: transformers loads it as {dtype}, expected {case['dtype']}")
    print(f"{case['name']}: loads as {dtype} by default", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        default.save_pretrained(tmp, max_shard_size=case["max_shard_size"])
        ours, theirs = weight_files(d), weight_files(tmp)
        if ours != theirs:
            fail(f"{case['name']}: weight files {ours}, transformers writes {theirs}")
        for f in ours:
            if read(os.path.join(d, f)) != read(os.path.join(tmp, f)):
                fail(f"{case['name']}: {f} differs from what transformers' save_pretrained writes:\n"
                     f"ewtune's: {describe(os.path.join(d, f))}\ntransformers': {describe(os.path.join(tmp, f))}")
        print(f"{case['name']}: {', '.join(ours)} byte for byte what transformers writes", flush=True)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    check_logprobs("AutoModelForCausalLM.from_pretrained(dir)", model, case)


def main():
    torch.manual_seed(0)
    cases = json.loads(read(sys.argv[1]))["cases"]
    for case in cases:
        if case["kind"] == "adapter":
            check_adapter(case)
        else:
            check_full(case)
    print(f"OK {len(cases)} outputs", flush=True)


if __name__ == "__main__":
    main()
