#!/usr/bin/env bash
# The one test command (README, .ci/run): lint, unit and integration tests, the
# conformance suite and the matrix-nio client test against a freshly started
# Hearth, once on embedded SQLite and once on Postgres (started if it is down).
# Installs what it needs; safe to run again.
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

step "Postgres"
pg_base=${HEARTH_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432}
if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && break; sleep 0.2; done
fi
psql "$pg_base/postgres" -qtc 'SELECT 1' >/dev/null

step "unit and integration tests (SQLite)"
cargo test --workspace --locked

step "integration tests (Postgres, one database)"
HEARTH_TEST_POSTGRES="$pg_base" cargo test -p homeserver --locked --tests

step "integration tests (Postgres, main database and 2 event shards)"
HEARTH_TEST_POSTGRES="$pg_base" HEARTH_TEST_SHARDS=2 cargo test -p homeserver --locked --tests

step "python client environment"
bash tests/clients/setup.sh

# A fresh Hearth on a free loopback port, stopped on exit; with a database
# url, on a fresh Postgres database, dropped on exit.
hs_pid=""
data=""
db_names=()
stop_server() {
  if [ -n "$hs_pid" ]; then
    kill "$hs_pid" 2>/dev/null || true
    wait "$hs_pid" 2>/dev/null || true
  fi
  [ -n "$data" ] && rm -rf "$data"
  for db in "${db_names[@]}"; do
    psql "$pg_base/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  hs_pid="" data="" db_names=()
}
# Creates a database, remembered for cleanup; its url is left in $db_url.
new_db() {
  local name="hearth_suite_$$_${RANDOM}_$1"
  psql "$pg_base/postgres" -qc "CREATE DATABASE $name" >/dev/null
  db_names+=("$name")
  db_url="$pg_base/$name"
}
trap stop_server EXIT

start_server() {
  local mode=$1 extra=()
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  data=$(mktemp -d /tmp/hearth-test-XXXXXX)
  case "$mode" in
    postgres)
      new_db main
      extra=(--database-url "$db_url")
      ;;
    sharded)
      local main s0
      new_db main; main=$db_url
      new_db s0; s0=$db_url
      new_db s1
      extra=(--database-url "$main" --database-shards "$s0,$db_url")
      ;;
  esac
  "$root/target/debug/homeserver" --listen "127.0.0.1:$port" --data-dir "$data" --rate-limits false \
    "${extra[@]}" >"$data/server.log" 2>&1 &
  hs_pid=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1 && break
    sleep 0.1
  done
  url="http://127.0.0.1:$port"
}

for mode in sqlite postgres sharded; do
  start_server "$mode"

  step "conformance suite against Hearth, $mode ($url)"
  if ! "$root/target/debug/conformance" --hs "$url"; then
    tail -50 "$data/server.log" >&2
    exit 1
  fi

  step "matrix-nio client test against Hearth, $mode"
  HEARTH_URL="$url" "$root/.venv-clients/bin/pytest" -q tests/clients

  step "bench smoke against Hearth, $mode (correctness only)"
  "$root/target/debug/bench" --hs "hearth=$url" --smoke --scenarios unloaded,pairs,group8,room256,idle,idle_ws

  stop_server
done

if [ "${HEARTH_TEST_SYNAPSE:-0}" = 1 ]; then
  step "conformance suite against Synapse"
  bash conformance/run-against-synapse.sh
fi
