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
# Several daemons on one ledger are tested against a throwaway PostgreSQL cluster that the tests
# start themselves with initdb and pg_ctl: Debian's server package (src/store/scratch_postgres.rs).
have_initdb() {
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; }
}
if ! have_initdb; then
  echo "setup: installing postgresql (Debian's package) for the shared-ledger tests" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends postgresql >&2
fi
# Parallel test threads each run libtorch; its own OpenMP pool on top oversubscribes the cores
# (a choice for running the tests, not for users, so it lives here).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cargo test --workspace --release --locked
# The store's whole suite once more, on PostgreSQL (each test on a fresh database of one
# throwaway cluster): the same SQL, migrations and ledger rules on both engines.
EWTUNE_TEST_STORE=postgres cargo test --release --locked --lib store::
