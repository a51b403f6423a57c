#!/usr/bin/env bash
# Sets up what the tests need on a fresh machine (libtorch in a cached venv) and runs every
# test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The report pages are tested in a real browser: Debian's chromium (tests/pages.rs).
if ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium (Debian's package) for the report pages' browser tests" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends chromium >&2
fi
# Parallel test threads each run libtorch; its own OpenMP pool on top oversubscribes the cores
# (a choice for running the tests, not for users, so it lives here).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cargo test --workspace --release --locked
