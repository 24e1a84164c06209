#!/usr/bin/env bash
# The one test command (README, .ci/run): lint, unit and integration tests, the
# conformance suite and the matrix-nio client test against a freshly started
# Hearth. Installs what it needs; safe to run again.
#   HEARTH_TEST_SYNAPSE=1  also runs the conformance suite against Synapse.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --all-targets --locked

step "unit and integration tests"
cargo test --workspace --locked

step "python client environment"
bash tests/clients/setup.sh

# A fresh Hearth on a free loopback port, stopped on exit.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data=$(mktemp -d /tmp/hearth-test-XXXXXX)
"$root/target/debug/homeserver" --listen "127.0.0.1:$port" --data-dir "$data" --rate-limits false \
  >"$data/server.log" 2>&1 &
hs_pid=$!
cleanup() {
  kill "$hs_pid" 2>/dev/null || true
  wait "$hs_pid" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1 && break
  sleep 0.1
done
url="http://127.0.0.1:$port"

step "conformance suite against Hearth ($url)"
if ! "$root/target/debug/conformance" --hs "$url"; then
  tail -50 "$data/server.log" >&2
  exit 1
fi

step "matrix-nio client test against Hearth"
HEARTH_URL="$url" "$root/.venv-clients/bin/pytest" -q tests/clients

step "bench smoke against Hearth (correctness only)"
"$root/target/debug/bench" --hs "hearth=$url" --smoke --scenarios unloaded,pairs,group8,room256,idle,idle_ws

if [ "${HEARTH_TEST_SYNAPSE:-0}" = 1 ]; then
  step "conformance suite against Synapse"
  bash conformance/run-against-synapse.sh
fi
