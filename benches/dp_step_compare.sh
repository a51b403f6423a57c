#!/usr/bin/env bash
# DP-step overhead side by side on CPU, for GPT-2 and Llama shapes: ewtune (`ewtune bench dp-step
# --family F`, release build) against Opacus (benches/dp_step_opacus.py: PyTorch + Opacus hooks and
# ghost clipping; Llama = transformers' LlamaForCausalLM from a LlamaConfig, random weights), on
# the same shapes, batch, trainable sets and thread count. full: every linear and norm layer
# (embeddings frozen; GPT-2's tied head frozen, Llama's untied head trains); lora: rank 8 on PEFT's
# default targets (GPT-2 c_attn, Llama q_proj + v_proj). Prints one table: per family and mode the
# non-DP and DP step times of each and their ratios (targets for ewtune: lora <= 1.15, full <= 1.3).
# Makes its own venv at benches/.venv-opacus (PyPI only, pinned; torch's Linux wheel is a few GB,
# once).
# Usage: benches/dp_step_compare.sh [--families gpt2,llama] [--layers 12] [--d-model 768]
#          [--heads 12] [--kv-heads H] [--intermediate I] [--seq-len 128] [--batch 4]
#          [--vocab 50257] [--repeats 3] [--threads 1]
# --kv-heads (default heads / 4) and --intermediate (default 2.5 d_model) shape the Llama model;
# GPT-2 has kv-heads = heads and an MLP of 4 d_model. GPT-2-small at the defaults takes many
# minutes on a 2-core machine; README gives a smaller shape. EWTUNE_SKIP_BUILD=1 skips the cargo
# build and uses the target/release/ewtune already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/benches/.venv-opacus"
pins="torch==2.11.0 opacus==1.6.0 transformers==5.24.0 numpy==2.4.6"

families=gpt2,llama layers=12 d_model=768 heads=12 kv_heads="" intermediate="" seq_len=128 batch=4 vocab=50257 repeats=3 threads=1
while [ $# -gt 0 ]; do
  case "$1" in
    --families) families=$2; shift 2 ;;
    --layers) layers=$2; shift 2 ;;
    --d-model) d_model=$2; shift 2 ;;
    --heads) heads=$2; shift 2 ;;
    --kv-heads) kv_heads=$2; shift 2 ;;
    --intermediate) intermediate=$2; shift 2 ;;
    --seq-len) seq_len=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --vocab) vocab=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "dp_step_compare: unknown argument $1" >&2; exit 2 ;;
  esac
done
shape=(--layers "$layers" --d-model "$d_model" --heads "$heads" --seq-len "$seq_len" --batch "$batch" --vocab "$vocab" --repeats "$repeats")
llama_shape=()
[ -n "$kv_heads" ] && llama_shape+=(--kv-heads "$kv_heads")
[ -n "$intermediate" ] && llama_shape+=(--intermediate "$intermediate")

# Same thread count for both: libtorch's intra-op pool in ewtune reads OMP_NUM_THREADS, the
# Python side gets --threads too.
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"

# The venv records the pins it was made with; other pins (an older script's) remake it.
if [ "$(cat "$venv/.complete" 2>/dev/null)" != "$pins" ]; then
  echo "dp_step_compare: installing $pins into $venv (once)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  echo '*' > "$venv/.gitignore"  # keep the venv out of git status
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check $pins
  echo "$pins" > "$venv/.complete"
fi

if [ "${EWTUNE_SKIP_BUILD:-0}" != 1 ]; then
  (cd "$root" && cargo build --release --locked -q --bin ewtune)
fi

ew=$(mktemp) op=$(mktemp)
trap 'rm -f "$ew" "$op"' EXIT
IFS=, read -r -a fams <<< "$families"
for fam in "${fams[@]}"; do
  case "$fam" in
    gpt2) extra=() ;;
    llama) extra=("${llama_shape[@]}") ;;
    *) echo "dp_step_compare: unknown family $fam (gpt2, llama)" >&2; exit 2 ;;
  esac
  echo "dp_step_compare: $fam: ewtune (threads $threads) ..." >&2
  "$root/target/release/ewtune" bench dp-step --family "$fam" "${shape[@]}" "${extra[@]}" --device cpu --json | grep '^{' >> "$ew"
  echo "dp_step_compare: $fam: opacus (threads $threads) ..." >&2
  "$venv/bin/python" "$root/benches/dp_step_opacus.py" --family "$fam" "${shape[@]}" "${extra[@]}" --threads "$threads" --json | grep '^{' >> "$op"
done

"$venv/bin/python" - "$ew" "$op" <<'PY'
import json, sys

def rows(path):
    return {(r["family"], r["mode"]): r for r in (json.loads(l) for l in open(path) if l.strip())}

ew, op = rows(sys.argv[1]), rows(sys.argv[2])
first = next(iter(ew.values()), None) or next(iter(op.values()), {})
print(f"DP step on CPU, {first.get('threads', '?')} thread(s); medians of {first.get('repeats', '?')} interleaved repeats; "
      f"layers {first.get('layers')}, d_model {first.get('d_model')}, heads {first.get('heads')}, "
      f"seq_len {first.get('seq_len')}, batch {first.get('batch')}, vocab {first.get('vocab')}")

def f(x, spec):
    return "-" if x is None else format(x, spec)

def ms(x):
    return None if x is None else 1e3 * x

head = ("family", "mode", "kv", "mlp", "ewtune non-DP ms", "ewtune DP ms", "ratio", "target",
        "opacus non-DP ms", "opacus DP ms", "ratio", "opacus ghost ms", "ghost ratio")
width = [max(len(h), 6) for h in head]
print("  ".join(f"{h:>{w}}" for h, w in zip(head, width)))
notes = []
for key in sorted(set(ew) | set(op), key=lambda k: (k[0] != "gpt2", k[1] != "lora")):
    e, o = ew.get(key, {}), op.get(key, {})
    ratio = e.get("ratio")
    mark = "" if ratio is None or e.get("target") is None else (" ok" if ratio <= e["target"] else " OVER")
    cells = (key[0], key[1], f(e.get("kv_heads", o.get("kv_heads")), "d"), f(e.get("intermediate", o.get("intermediate")), "d"),
             f(ms(e.get("nondp_step_s")), ".1f"), f(ms(e.get("dp_step_s")), ".1f"), f(ratio, ".3f"),
             f(e.get("target"), ".2f") + mark,
             f(ms(o.get("nondp_step_s")), ".1f"), f(ms(o.get("opacus_dp_step_s")), ".1f"), f(o.get("ratio"), ".3f"),
             f(ms(o.get("opacus_ghost_dp_step_s")), ".1f"), f(o.get("ghost_ratio"), ".3f"))
    print("  ".join(f"{c:>{w}}" for c, w in zip(cells, width)))
    if e and o and e.get("trainable_params") != o.get("trainable_params"):
        notes.append(f"{key[0]} {key[1]}: trainable sets differ (ewtune {e.get('trainable_params')}, opacus {o.get('trainable_params')})")
    if e.get("paired_ratio") is not None and o.get("paired_ratio") is not None:
        notes.append(f"{key[0]} {key[1]}: median of per-repeat ratios: ewtune {e['paired_ratio']:.3f}, opacus {o['paired_ratio']:.3f}; "
                     f"{e.get('trainable_params')} trainable")
    if o.get("ghost_error"):
        notes.append(f"{key[0]} {key[1]}: Opacus ghost clipping failed: {o['ghost_error']}")
for n in notes:
    print("  " + n)
PY
