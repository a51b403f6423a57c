#!/usr/bin/env bash
# The per-person ledger at scale (docs/budgets.md): starts ewtuned on a fresh data dir and runs
# `ewtune bench ledger`: 50 example-level datasets of 10^5 distinct records each, overlapping
# windows over 10^6 people (each person in about 5 datasets), then jobs and budget reports.
# Prints the time of each Register and Create (target: each under 2 s) and Budget.Get latency.
# Usage: benches/ledger_scale.sh [extra `ewtune bench ledger` flags, e.g. --datasets 10]
set -euo pipefail
cd "$(dirname "$0")/.."
TENANT=ledger EXAMPLES=100 EWTUNED_LOG_FILTER=${EWTUNED_LOG_FILTER:-info,ewtune::service::datasets=debug} source benches/start_daemon.sh
"$bin/ewtune" bench ledger "$@"
grep -h "registration timings" "$run/ewtuned.log" | tail -3 || true
echo "database: $(du -h "$run/data/ewtune.db" | cut -f1) (+ WAL $(du -h "$run/data/ewtune.db-wal" 2>/dev/null | cut -f1))"
