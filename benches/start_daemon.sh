# Sourced by the daemon benches (daemon_load.sh, ledger_scale.sh): builds the binaries, writes a
# tiny GPT-2 and EXAMPLES synthetic notes, and starts ewtuned on a fresh data directory with a
# token for tenant TENANT. Sets bin, run (the temp dir: assets/, data/, ewtuned.log), daemon (its
# pid), EWTUNE_ADDR and EWTUNE_TOKEN, and an EXIT trap that stops the daemon and removes $run.
# EWTUNED_LOG_FILTER is the daemon's RUST_LOG (default info).
cargo build --release --locked -q --workspace --bins
bin=target/release
run=$(mktemp -d)
trap 'kill -TERM ${daemon:-0} 2>/dev/null; wait ${daemon:-0} 2>/dev/null || true; rm -rf "$run"' EXIT
"$bin/ewtune" synth --dir "$run/assets" --examples "${EXAMPLES:-2000}" >/dev/null
mkdir -p "$run/data/models" && cp -r "$run/assets/base" "$run/data/models/tiny-gpt2"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export EWTUNE_ADDR="http://127.0.0.1:$port"
EWTUNE_TOKEN=$("$bin/ewtuned" token create --data-dir "$run/data" --tenant "${TENANT:-bench}" 2>/dev/null)
export EWTUNE_TOKEN
RUST_LOG=${EWTUNED_LOG_FILTER:-info} OMP_NUM_THREADS=1 "$bin/ewtuned" --data-dir "$run/data" --listen "127.0.0.1:$port" 2>"$run/ewtuned.log" &
daemon=$!
for _ in $(seq 1 200); do "$bin/ewtune" datasets list >/dev/null 2>&1 && break; sleep 0.1; done
