#!/usr/bin/env bash
# The main job on the embedded defaults: set up, make a small base model and a synthetic
# sensitive dataset (nothing can be downloaded), and run a DP fine-tuning job calibrated to a
# certified epsilon of 4, printing the privacy spent and the held-out loss before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -q --workspace --bins
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
run=demo-run
rm -rf "$run"
target/release/ewtune synth --dir "$run"
target/release/ewtune train --config "$run/job.toml"
echo
echo "== the accountant on the job's privacy history"
python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1]))["history"], open(sys.argv[2], "w"))' "$run/out/privacy.json" "$run/out/history.json"
target/release/ewtune-accountant epsilon --history "$run/out/history.json" --delta 1e-5
