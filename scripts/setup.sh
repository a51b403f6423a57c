#!/usr/bin/env bash
# Installs what the build needs into a project-local venv: libtorch (the PyPI torch wheel pinned
# in requirements-ci.txt). The venv lives in a cache outside the clone, keyed by the requirements'
# hash, and is linked as .venv; .cargo/config.toml points LIBTORCH at it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "error: cargo (Rust toolchain) is required" >&2; exit 1; }
python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "error: python3 must be CPython 3.11 (.cargo/config.toml names python3.11 in LIBTORCH)" >&2; exit 1; }
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ewtune"
hash=$(cat requirements-ci.txt | sha256sum | cut -c1-12)
venv="$cache/venv-$hash"
if [ ! -f "$venv/.complete" ]; then
  echo "setup: installing libtorch into $venv (a few minutes, ~4.6 GB, once)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r requirements-ci.txt
  touch "$venv/.complete"
fi
ln -sfn "$venv" .venv
unset LIBTORCH_USE_PYTORCH LD_LIBRARY_PATH || true
