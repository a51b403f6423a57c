#!/usr/bin/env bash
# The per-person ledger at scale (docs/budgets.md): starts ewtuned on a fresh data dir and runs
# `ewtune bench ledger`: 50 example-level datasets of 10^5 distinct records each, overlapping
# windows over 10^6 people (each person in about 5 datasets), then jobs and budget reports.
# Prints the time of each Register and Create (target: each under 2 s) and Budget.Get latency.
# Usage: benches/ledger_scale.sh [extra `ewtune bench ledger` flags, e.g. --datasets 10]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q --workspace --bins
bin=target/release
run=$(mktemp -d)
trap 'kill -TERM ${daemon:-0} 2>/dev/null; wait ${daemon:-0} 2>/dev/null || true; rm -rf "$run"' EXIT
"$bin/ewtune" synth --dir "$run/assets" --examples 100 >/dev/null
mkdir -p "$run/data/models" && cp -r "$run/assets/base" "$run/data/models/tiny-gpt2"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export EWTUNE_ADDR="http://127.0.0.1:$port"
export EWTUNE_TOKEN=$("$bin/ewtuned" token create --data-dir "$run/data" --tenant ledger 2>/dev/null)
RUST_LOG=${RUST_LOG:-info,ewtune::service::datasets=debug} OMP_NUM_THREADS=1 "$bin/ewtuned" --data-dir "$run/data" --listen "127.0.0.1:$port" 2>"$run/ewtuned.log" &
daemon=$!
for _ in $(seq 1 200); do "$bin/ewtune" datasets list >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/ewtune" bench ledger "$@"
grep -h "registration timings" "$run/ewtuned.log" | tail -3 || true
echo "database: $(du -h "$run/data/ewtune.db" | cut -f1) (+ WAL $(du -h "$run/data/ewtune.db-wal" 2>/dev/null | cut -f1))"
