#!/usr/bin/env bash
# Sets up what the tests need on a fresh machine (libtorch in a cached venv) and runs every
# test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Parallel test threads each run libtorch; its own OpenMP pool on top oversubscribes the cores
# (a choice for running the tests, not for users, so it lives here).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cargo test --workspace --release --locked
