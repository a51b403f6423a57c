#!/usr/bin/env bash
# Daemon under training load: starts ewtuned on a fresh data dir, submits a DP job that trains
# for the whole measurement, and sends unary calls (Datasets.Get, Jobs.List, Budget.Get in turn)
# at a fixed rate, printing p50/p99 latency (target: p99 <= 10 ms at 200 requests/s).
# Usage: benches/daemon_load.sh [RATE] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-200}
seconds=${2:-10}
cargo build --release --locked -q --workspace --bins
bin=target/release
run=$(mktemp -d)
trap 'kill -TERM ${daemon:-0} 2>/dev/null; wait ${daemon:-0} 2>/dev/null || true; rm -rf "$run"' EXIT
"$bin/ewtune" synth --dir "$run/assets" --examples 2000 >/dev/null
mkdir -p "$run/data/models" && cp -r "$run/assets/base" "$run/data/models/tiny-gpt2"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export EWTUNE_ADDR="http://127.0.0.1:$port"
export EWTUNE_TOKEN=$("$bin/ewtuned" token create --data-dir "$run/data" --tenant load 2>/dev/null)
OMP_NUM_THREADS=1 "$bin/ewtuned" --data-dir "$run/data" --listen "127.0.0.1:$port" 2>"$run/ewtuned.log" &
daemon=$!
for _ in $(seq 1 200); do "$bin/ewtune" datasets list >/dev/null 2>&1 && break; sleep 0.1; done
dataset=$("$bin/ewtune" datasets register --file "$run/assets/train.jsonl" --name load --budget-epsilon 1000 2>/dev/null)
[ -n "${IDLE:-}" ] || "$bin/ewtune" jobs submit --dataset "$dataset" --model tiny-gpt2 --noise-multiplier 1.0 --batch-size 100 --steps 100000 --full --micro-batch 50 --max-length 48 >/dev/null
sleep 2  # let the job start training
"$bin/ewtune" bench load --rate "$rate" --seconds "$seconds" --dataset "$dataset" "${@:3}"
"$bin/ewtune" jobs list | sed -n '2p' | awk '{print "training meanwhile: job " $1 " " $2 " at step " $3}'
