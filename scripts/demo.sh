#!/usr/bin/env bash
# The main job on the embedded defaults. On a fresh machine: set up (libtorch in a cached venv),
# build, make a small base model and a small sensitive dataset (nothing can be downloaded),
# start ewtuned on the embedded defaults, and through its gRPC API register the dataset with a
# privacy budget, plan and submit a DP fine-tuning job, watch it, and print the signed budget
# report (verified offline); the job inserts canaries, and a membership audit of the trained
# model (canaries and labelled texts) is signed by the daemon and verified offline too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -q --workspace --bins
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
bin=target/release
run=demo-run
rm -rf "$run"
mkdir -p "$run/data/models"
"$bin/ewtune" synth --dir "$run/assets" --examples 2000 >/dev/null
cp -r "$run/assets/base" "$run/data/models/tiny-gpt2"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export EWTUNE_ADDR="http://127.0.0.1:$port"
export EWTUNE_TOKEN=$("$bin/ewtuned" token create --data-dir "$run/data" --tenant demo-clinic 2>/dev/null)
"$bin/ewtuned" --data-dir "$run/data" --listen "127.0.0.1:$port" 2>"$run/ewtuned.log" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  "$bin/ewtune" datasets list >/dev/null 2>&1 && break
  sleep 0.1
done
# The key that signs this daemon's reports (created at its first start), pinned for `ewtune
# verify` as its operator would publish it.
export EWTUNE_PUBLIC_KEY=$("$bin/ewtuned" key show --data-dir "$run/data")

echo "== ewtuned serving on $EWTUNE_ADDR (data in $run/data, log in $run/ewtuned.log)"
echo "== register the sensitive dataset with a total budget of epsilon 8 at delta 1e-5"
dataset=$("$bin/ewtune" datasets register --file "$run/assets/train.jsonl" --name clinical-notes --budget-epsilon 8 --budget-delta 1e-5)
job=(--dataset "$dataset" --model tiny-gpt2 --batch-size 100 --epochs 2 --full --learning-rate 3e-3 --micro-batch 50 --max-length 48)
echo "== plan (nothing runs, nothing is reserved)"
"$bin/ewtune" jobs plan "${job[@]}" --epsilon 4
echo "== submit (with 200 canaries for the membership audit) and watch"
job_id=$("$bin/ewtune" jobs submit "${job[@]}" --epsilon 4 --canaries 200)
"$bin/ewtune" jobs watch "$job_id"
echo "== a second job that would overspend the budget is refused"
"$bin/ewtune" jobs submit "${job[@]}" --epsilon 7.5 2>&1 | sed 's/^/   /' || true
echo "== the budget report, signed by the daemon"
"$bin/ewtune" budget show "$dataset" --html "$run/budget-report.html"
"$bin/ewtune" budget show "$dataset" --json > "$run/budget-report.json"
"$bin/ewtune" verify "$run/budget-report.json"
echo "== the membership audit of the trained model: canaries (one-run epsilon lower bound) and texts"
audit=$("$bin/ewtune" audits create --job "$job_id" --texts "$run/assets/audit_texts.jsonl" --no-wait)
"$bin/ewtune" audits get "$audit" --html "$run/audit-report.html"
"$bin/ewtune" audits get "$audit" --json > "$run/audit-report.json"
"$bin/ewtune" verify "$run/audit-report.json"
