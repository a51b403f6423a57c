#!/usr/bin/env bash
# The main job on the embedded defaults. For now (the accountant is what has landed): calibrate
# the noise for EW-Tune's SST-2 setting at epsilon = 8, delta = 1e-5, and print what each
# accountant says of EW-Tune's own choice (sigma = 0.7865) next to the certified one.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "error: cargo (Rust toolchain) is required" >&2; exit 1; }
cargo build --release --locked -q -p ewtune-accountant
acc=target/release/ewtune-accountant
schedule=(--batch-size 2000 --dataset-size 67349 --epochs 20)
echo "== EW-Tune's noise (sigma = 0.7865, chosen with its order-1 Edgeworth estimate)"
"$acc" epsilon --sigma 0.7865 "${schedule[@]}" --delta 1e-5 --order 1
echo
echo "== the noise ewtune certifies for epsilon <= 8"
"$acc" sigma --epsilon 8 --delta 1e-5 "${schedule[@]}"
