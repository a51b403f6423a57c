#!/usr/bin/env bash
# Sets up what the tests need on a fresh machine (libtorch in a cached venv) and runs every
# test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --release --locked
