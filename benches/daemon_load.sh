#!/usr/bin/env bash
# Daemon under training load: starts ewtuned on a fresh data dir, submits a DP job that trains
# for the whole measurement, and sends unary calls (Datasets.Get, Jobs.List, Budget.Get in turn)
# at a fixed rate, printing p50/p99 latency (target: p99 <= 10 ms at 200 requests/s).
# Usage: benches/daemon_load.sh [RATE] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-200}
seconds=${2:-10}
TENANT=load EXAMPLES=2000 source benches/start_daemon.sh
dataset=$("$bin/ewtune" datasets register --file "$run/assets/train.jsonl" --name load --budget-epsilon 1000 2>/dev/null)
[ -n "${IDLE:-}" ] || "$bin/ewtune" jobs submit --dataset "$dataset" --model tiny-gpt2 --noise-multiplier 1.0 --batch-size 100 --steps 100000 --full --micro-batch 50 --max-length 48 >/dev/null
sleep 2  # let the job start training
"$bin/ewtune" bench load --rate "$rate" --seconds "$seconds" --dataset "$dataset" "${@:3}"
"$bin/ewtune" jobs list | sed -n '2p' | awk '{print "training meanwhile: job " $1 " " $2 " at step " $3}'
