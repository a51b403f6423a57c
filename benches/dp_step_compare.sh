#!/usr/bin/env bash
# DP-step overhead side by side on CPU: ewtune (`ewtune bench dp-step`, release build) against
# Opacus (benches/dp_step_opacus.py: PyTorch + Opacus hooks and ghost clipping), on the same
# GPT-2-shaped random model, batch, trainable sets (full: linears + LayerNorms; lora: rank 8 on
# c_attn) and thread count. Makes its own venv at benches/.venv-opacus (PyPI only; torch's Linux
# wheel is large, a few GB, once).
# Usage: benches/dp_step_compare.sh [--layers 12] [--d-model 768] [--heads 12] [--seq-len 128]
#          [--batch 4] [--vocab 50257] [--repeats 3] [--threads 1]
# GPT-2-small at the defaults takes minutes on a 2-core machine. EWTUNE_SKIP_BUILD=1 skips the
# cargo build and uses the target/release/ewtune already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/benches/.venv-opacus"

layers=12 d_model=768 heads=12 seq_len=128 batch=4 vocab=50257 repeats=3 threads=1
while [ $# -gt 0 ]; do
  case "$1" in
    --layers) layers=$2; shift 2 ;;
    --d-model) d_model=$2; shift 2 ;;
    --heads) heads=$2; shift 2 ;;
    --seq-len) seq_len=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --vocab) vocab=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "dp_step_compare: unknown argument $1" >&2; exit 2 ;;
  esac
done
shape=(--layers "$layers" --d-model "$d_model" --heads "$heads" --seq-len "$seq_len" --batch "$batch" --vocab "$vocab" --repeats "$repeats")

# Same thread count for both: libtorch's intra-op pool in ewtune reads OMP_NUM_THREADS (the
# .cargo/config.toml setting only reaches `cargo run`), the Python side gets --threads too.
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"

if [ ! -f "$venv/.complete" ]; then
  echo "dp_step_compare: installing torch + opacus into $venv (once)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  echo '*' > "$venv/.gitignore"  # keep the venv out of git status
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.11.0 opacus==1.6.0 numpy
  touch "$venv/.complete"
fi

if [ "${EWTUNE_SKIP_BUILD:-0}" != 1 ]; then
  (cd "$root" && cargo build --release --locked -q --bin ewtune)
fi

ew=$(mktemp) op=$(mktemp)
trap 'rm -f "$ew" "$op"' EXIT
echo "dp_step_compare: ewtune (threads $threads) ..." >&2
"$root/target/release/ewtune" bench dp-step "${shape[@]}" --device cpu --json | grep '^{' > "$ew"
echo "dp_step_compare: opacus (threads $threads) ..." >&2
"$venv/bin/python" "$root/benches/dp_step_opacus.py" "${shape[@]}" --threads "$threads" --json | grep '^{' > "$op"

"$venv/bin/python" - "$ew" "$op" <<'PY'
import json, sys

def rows(path):
    return {r["mode"]: r for r in (json.loads(l) for l in open(path) if l.strip())}

ew, op = rows(sys.argv[1]), rows(sys.argv[2])
any_row = next(iter(op.values()), None) or next(iter(ew.values()), {})
print(f"DP step on CPU, {any_row.get('threads', '?')} thread(s): layers {any_row.get('layers')}, d_model {any_row.get('d_model')}, "
      f"seq_len {any_row.get('seq_len')}, batch {any_row.get('batch')}; seconds are medians")

def f(x, spec=".4f"):
    return "-" if x is None else format(x, spec)

head = ("mode", "ewtune dp", "ewtune non-dp", "ewtune ratio", "opacus dp", "opacus non-dp", "opacus ratio",
        "opacus ghost", "ghost ratio", "ewtune/opacus dp", "ewtune/ghost")
print("  ".join(f"{h:>{max(len(h), 7)}}" for h in head))
for mode in ("lora", "full"):
    e, o = ew.get(mode, {}), op.get(mode, {})
    edp, odp, og = e.get("dp_step_s"), o.get("opacus_dp_step_s"), o.get("opacus_ghost_dp_step_s")
    cells = (mode, f(edp), f(e.get("nondp_step_s")), f(e.get("ratio"), ".3f"), f(odp), f(o.get("nondp_step_s")),
             f(o.get("ratio"), ".3f"), f(og), f(o.get("ghost_ratio"), ".3f"),
             f(edp / odp if edp and odp else None, ".3f"), f(edp / og if edp and og else None, ".3f"))
    print("  ".join(f"{c:>{max(len(h), 7)}}" for c, h in zip(cells, head)))
    if o.get("ghost_error"):
        print(f"  ({mode}: Opacus ghost clipping failed: {o['ghost_error']})")
PY
