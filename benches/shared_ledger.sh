#!/usr/bin/env bash
# Several daemons on one ledger (docs/operations.md): `ewtune bench admissions` against one
# ewtuned on its SQLite file, then against three ewtuned on one PostgreSQL database (a throwaway
# cluster started here with initdb and pg_ctl, durable: fsync on, as SQLite's synchronous=FULL)
# sharing one data directory; prints admissions per second and Budget.Get p50/p99 for both, side
# by side. The base model has a config and a tokenizer but no weights: Create admits against it,
# and each admitted job then fails at model load, so the daemons' CPU goes to the ledger, not to
# training. Last, one of the three alone on the same database separates the engine's cost from the
# spread over daemons. Usage: benches/shared_ledger.sh [extra `ewtune bench admissions` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q --workspace --bins
bin=target/release
run=$(mktemp -d)
pids=()
pg=""
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$pg" ] && $as_pg "$pg/pg_ctl" -D "$run/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$run"
}
as_pg=""
[ "$(id -u)" = 0 ] && as_pg="runuser -u postgres --"
trap cleanup EXIT
chmod 755 "$run"

"$bin/ewtune" synth --dir "$run/assets" --examples 10 >/dev/null
model() { mkdir -p "$1/models/tiny-gpt2" && cp "$run/assets/base/config.json" "$run/assets/base/tokenizer.json" "$1/models/tiny-gpt2/"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
up() { for _ in $(seq 1 300); do EWTUNE_ADDR="http://127.0.0.1:$1" "$bin/ewtune" datasets list >/dev/null 2>&1 && return; sleep 0.1; done; echo "ewtuned on $1 did not come up" >&2; exit 1; }

echo "== one daemon, SQLite"
model "$run/sqlite"
export EWTUNE_TOKEN
EWTUNE_TOKEN=$("$bin/ewtuned" token create --data-dir "$run/sqlite" --tenant bench 2>/dev/null)
port=$(free_port)
OMP_NUM_THREADS=1 "$bin/ewtuned" --data-dir "$run/sqlite" --listen "127.0.0.1:$port" 2>"$run/sqlite.log" &
pids+=($!)
up "$port"
"$bin/ewtune" bench admissions --daemon "http://127.0.0.1:$port" "$@"
kill -TERM "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true; pids=()

echo "== three daemons, one PostgreSQL"
pg=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
mkdir -p "$run/pg" && [ -z "$as_pg" ] || chown postgres: "$run/pg"
$as_pg "$pg/initdb" -A trust -U postgres -D "$run/pg/data" >/dev/null
pgport=$(free_port)
$as_pg "$pg/pg_ctl" -D "$run/pg/data" -w -o "-p $pgport -c listen_addresses=127.0.0.1 -k $run/pg" -l "$run/pg/log" start >/dev/null
url="postgres://postgres@127.0.0.1:$pgport/postgres"
model "$run/shared"
EWTUNE_TOKEN=$("$bin/ewtuned" token create --data-dir "$run/shared" --database-url "$url" --tenant bench 2>/dev/null)
addrs=()
for id in a b c; do
  port=$(free_port)
  OMP_NUM_THREADS=1 "$bin/ewtuned" --data-dir "$run/shared" --database-url "$url" --daemon-id "$id" --listen "127.0.0.1:$port" 2>"$run/$id.log" &
  pids+=($!)
  up "$port"
  addrs+=(--daemon "http://127.0.0.1:$port")
done
"$bin/ewtune" bench admissions "${addrs[@]}" "$@"
echo "== one of the three daemons alone (same PostgreSQL, a fresh tenant)"
EWTUNE_TOKEN=$("$bin/ewtuned" token create --data-dir "$run/shared" --database-url "$url" --tenant bench-alone 2>/dev/null)
"$bin/ewtune" bench admissions "${addrs[@]:0:2}" "$@"
