#!/usr/bin/env bash
# The one test command (README, .ci/run): lint, unit and integration tests, the
# conformance suite and the matrix-nio client test against a freshly started
# Hearth: on embedded SQLite, on Postgres, on Postgres with two event shards,
# and as two processes on those shards sharing Redis behind an alternating
# front (Postgres and Redis are started if they are down).
# Installs what it needs; safe to run again.
# Federation is tested between Hearth processes and with one Synapse; SyTest
# (the outside suite Synapse and Dendrite run) against the release binary
# must pass every test in tests/sytest/passing.txt (default room version 12)
# and in passing-v10.txt (a second run with default room version 10).
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

step "Redis"
# The cluster tests start private redis-servers; the two-process suite run
# uses the one on 6379 (under a key prefix of its own).
if ! command -v redis-server >/dev/null 2>&1; then
  apt-get install -y redis-server >/dev/null
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null

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
hs_pids=()
data=""
db_names=()
db_urls=()
stop_server() {
  for pid in "${hs_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [ -n "$data" ] && rm -rf "$data"
  for db in "${db_names[@]}"; do
    psql "$pg_base/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  hs_pids=() data="" db_names=() db_urls=()
}
# Creates a database, remembered for cleanup; its url is left in $db_url.
new_db() {
  local name="hearth_suite_$$_${RANDOM}_$1"
  psql "$pg_base/postgres" -qc "CREATE DATABASE $name" >/dev/null
  db_names+=("$name")
  db_url="$pg_base/$name"
  db_urls+=("$db_url")
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
  if [ "$mode" = cluster ]; then
    # Two processes on one main database and two shards, sharing Redis and
    # room writer leases, behind a front that alternates every request.
    local main s0 p1 p2
    new_db main; main=$db_url
    new_db s0; s0=$db_url
    new_db s1
    p1=$(free_port) p2=$(free_port)
    # One prefix and one secret for both: they are one server.
    local prefix="hearth-ci-$$-$RANDOM" secret="ci-$$-$RANDOM$RANDOM"
    for p in $p1 $p2; do
      # One data directory too: media must be where both can read it.
      "$root/target/debug/homeserver" --listen "127.0.0.1:$p" --data-dir "$data" --rate-limits false \
        --database-url "$main" --database-shards "$s0,$db_url" \
        --redis-url redis://127.0.0.1:6379 --redis-prefix "$prefix" \
        --cluster-secret "$secret" >"$data/server-$p.log" 2>&1 &
      hs_pids+=($!)
      wait_up "http://127.0.0.1:$p"
    done
    "$root/.venv-clients/bin/python" tests/cluster/front.py "$port" "http://127.0.0.1:$p1" "http://127.0.0.1:$p2" \
      >"$data/front.log" 2>&1 &
    hs_pids+=($!)
    url="http://127.0.0.1:$port"
    wait_up "$url"
    # The bench smoke holds WebSockets, which the front does not carry.
    bench_url="http://127.0.0.1:$p1"
    return
  fi
  "$root/target/debug/homeserver" --listen "127.0.0.1:$port" --data-dir "$data" --rate-limits false \
    "${extra[@]}" >"$data/server.log" 2>&1 &
  hs_pids+=($!)
  url="http://127.0.0.1:$port"
  wait_up "$url"
  bench_url=$url
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_up() {
  for _ in $(seq 1 100); do
    curl -fsS "$1/_matrix/client/versions" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "$1 did not come up" >&2
  tail -n 30 "$data"/*.log >&2 || true
  exit 1
}

for mode in sqlite postgres sharded cluster; do
  start_server "$mode"

  step "conformance suite against Hearth, $mode ($url)"
  if ! "$root/target/debug/conformance" --hs "$url"; then
    tail -n 50 "$data"/*.log >&2
    exit 1
  fi

  step "matrix-nio client tests against Hearth, $mode (end-to-end encryption included)"
  # The E2EE test reads what the server stored, to prove it holds no plaintext.
  HEARTH_URL="$url" HEARTH_DATA_DIR="$data" HEARTH_DB_URLS="${db_urls[*]}" \
    "$root/.venv-clients/bin/pytest" -q tests/clients

  step "bench smoke against Hearth, $mode (correctness only)"
  "$root/target/debug/bench" --hs "hearth=$bench_url" --smoke --scenarios unloaded,pairs,group8,room256,ws_sends,idle,idle_ws

  stop_server
done

step "a mautrix-python bridge against Hearth (application services)"
HEARTH_BIN="$root/target/debug/homeserver" "$root/.venv-clients/bin/pytest" -q tests/appservice

step "federation with Synapse (one Hearth, one Synapse, IP-literal names, a test CA)"
bash scripts/synapse.sh install
"$root/.venv-synapse/bin/python" tests/federation/synapse_interop.py "$root/target/debug/homeserver"

step "SyTest against the release binary (tests/sytest: pass list enforced)"
cargo build --release -p homeserver --locked
HEARTH_BIN="$root/target/release/homeserver" bash tests/sytest/run.sh
step "SyTest with default room version 10, so its own federation side (versions 1-11) can join Hearth's rooms"
HEARTH_ROOM_VERSION=10 SYTEST_PASS_LIST=passing-v10.txt \
  HEARTH_BIN="$root/target/release/homeserver" bash tests/sytest/run.sh

if [ "${HEARTH_TEST_SYNAPSE:-0}" = 1 ]; then
  step "conformance suite against Synapse"
  bash conformance/run-against-synapse.sh
fi
