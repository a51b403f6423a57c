#!/usr/bin/env bash
# Accountant speed and agreement, side by side in one run: ewtune's certified (PLD) and Edgeworth
# accountants (cargo bench) against dp_accounting's PLD and RDP and Microsoft's prv_accountant,
# on the same settings. Makes its own venv under benches/.venv (PyPI only).
# Usage: benches/accountant_compare.sh [--full]   (--full also times Python at 10^6 steps: minutes)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/benches/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q dp-accounting==0.6.0 prv-accountant==0.2.0
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
(cd "$root" && cargo bench -q -p ewtune-accountant --bench accountant 2>/dev/null) | grep '^{' > "$out"
"$venv/bin/python" "$root/benches/accountant_python.py" "$out" "$@"
