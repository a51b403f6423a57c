#!/usr/bin/env bash
# Sets up what the tests need on a fresh machine and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "error: cargo (Rust toolchain) is required" >&2; exit 1; }
cargo test --workspace --release --locked
