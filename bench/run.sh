#!/usr/bin/env bash
# Runs the benchmark against a fresh Hearth (embedded SQLite) and a fresh local
# Synapse (Postgres, rate limits off) on this machine, in one run, and prints
# the side-by-side table.
#   bench/run.sh [bench args...]     e.g. --scenarios unloaded,pairs --seconds 10
# Needs PostgreSQL on 127.0.0.1:5432 for Synapse (started if it is down).
#   BENCH_SHARDED=1  also measures Hearth on Postgres with two event shards
#                    (fresh databases, dropped afterwards).
#   BENCH_CLUSTER=1  also measures two Hearth processes on Postgres with two
#                    event shards and Redis; users alternate between them.
#   BENCH_FEDERATION=1  also measures two federating Hearth servers (SQLite,
#                    TLS from a throwaway CA): each room's creator is on one,
#                    the other members alternate, so deliveries cross servers.
#   BENCH_BASELINE=<homeserver binary>  also measures that build (say, the
#                    last landed commit's) on SQLite, as "hearth-baseline":
#                    a before/after ratio from one run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --locked -p homeserver -p bench

if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Waits (up to 10 s) until the server on 127.0.0.1:$1 answers.
wait_up() {
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$1/_matrix/client/versions" >/dev/null 2>&1 && return
    sleep 0.1
  done
}

# Creates a fresh database hearth_bench_<pid>_<tag> for each tag, and
# remembers it in dbs (dropped on exit).
create_dbs() {
  for n in "$@"; do
    dbs+=("hearth_bench_$$_$n")
    psql "$pg/postgres" -qc "CREATE DATABASE hearth_bench_$$_$n" >/dev/null
  done
}

hport=18300
sport=18301
data=$(mktemp -d /tmp/hearth-bench-XXXXXX)
"$root/target/release/homeserver" --listen "127.0.0.1:$hport" --data-dir "$data" --rate-limits false \
  >"$data/server.log" 2>&1 &
hpid=$!
pg=postgres://postgres@127.0.0.1:5432
dbs=()
extra_hs=()
if [ "${BENCH_SHARDED:-0}" = 1 ]; then
  create_dbs main s0 s1
  pport=18302
  "$root/target/release/homeserver" --listen "127.0.0.1:$pport" --data-dir "$data/pg" --rate-limits false \
    --database-url "$pg/${dbs[0]}" --database-shards "$pg/${dbs[1]},$pg/${dbs[2]}" \
    >"$data/server-pg.log" 2>&1 &
  ppid=$!
  extra_hs=(--hs "hearth-pg2shards=http://127.0.0.1:$pport,pid=$ppid")
fi
if [ "${BENCH_CLUSTER:-0}" = 1 ]; then
  # Two processes on a main database and two shards, sharing Redis (which
  # must run on 127.0.0.1:6379) and room writer leases.
  create_dbs cmain cs0 cs1
  n=${#dbs[@]}
  cmain=${dbs[$((n - 3))]} cs0=${dbs[$((n - 2))]} cs1=${dbs[$((n - 1))]}
  cpids=()
  csecret="bench-$$-$RANDOM$RANDOM"
  for cport in 18303 18304; do
    "$root/target/release/homeserver" --listen "127.0.0.1:$cport" --data-dir "$data/cluster" --rate-limits false \
      --database-url "$pg/$cmain" --database-shards "$pg/$cs0,$pg/$cs1" \
      --redis-url redis://127.0.0.1:6379 --redis-prefix "hearth-bench-$$" --cluster-secret "$csecret" \
      >"$data/server-$cport.log" 2>&1 &
    cpids+=($!)
    # The first creates the schema; the second starts once it is there.
    wait_up "$cport"
  done
  extra_hs+=(--hs "hearth-pg2shards-2proc=http://127.0.0.1:18303+http://127.0.0.1:18304,pid=${cpids[0]}")
fi
if [ "${BENCH_FEDERATION:-0}" = 1 ]; then
  # IP-literal server names: no DNS needed; certificates name the IPs.
  fed="$data/federation"
  mkdir -p "$fed"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=Hearth bench CA" -keyout "$fed/ca.key" -out "$fed/ca.pem" 2>/dev/null
  fpids=()
  furls=()
  for n in 1 2; do
    ip="127.0.0.2$n"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$ip" \
      -keyout "$fed/s$n.key" -out "$fed/s$n.csr" 2>/dev/null
    printf 'subjectAltName=IP:%s\n' "$ip" >"$fed/s$n.ext"
    openssl x509 -req -in "$fed/s$n.csr" -CA "$fed/ca.pem" -CAkey "$fed/ca.key" -CAcreateserial \
      -days 2 -extfile "$fed/s$n.ext" -out "$fed/s$n.pem" 2>/dev/null
    fport=$((18304 + n))
    "$root/target/release/homeserver" --listen "127.0.0.1:$fport" --data-dir "$fed/data$n" --rate-limits false \
      --server-name "$ip:18448" --federation-listen "$ip:18448" \
      --federation-tls-cert "$fed/s$n.pem" --federation-tls-key "$fed/s$n.key" \
      --federation-ca-files "$fed/ca.pem" >"$data/server-fed$n.log" 2>&1 &
    fpids+=($!)
    furls+=("http://127.0.0.1:$fport")
    wait_up "$fport"
  done
  extra_hs+=(--hs "hearth-federated=${furls[0]}+${furls[1]},pid=${fpids[0]}")
fi
if [ -n "${BENCH_BASELINE:-}" ]; then
  bport=18309
  "$BENCH_BASELINE" --listen "127.0.0.1:$bport" --data-dir "$data/baseline" --rate-limits false \
    >"$data/server-baseline.log" 2>&1 &
  bpid=$!
  wait_up "$bport"
  extra_hs+=(--hs "hearth-baseline=http://127.0.0.1:$bport,pid=$bpid")
fi
cleanup() {
  kill "$hpid" ${ppid:-} ${cpids[@]:-} ${fpids[@]:-} ${bpid:-} 2>/dev/null || true
  SYNAPSE_DB=postgres bash "$root/scripts/synapse.sh" stop "$sport" || true
  sleep 0.5
  for db in "${dbs[@]}"; do
    psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$data"
}
trap cleanup EXIT
surl=$(SYNAPSE_DB=postgres bash "$root/scripts/synapse.sh" start "$sport")
spid=$(cat "/tmp/hearth-synapse-$sport/pid")
for port in $hport ${pport:-}; do
  wait_up "$port"
done
"$root/target/release/bench" \
  --hs "hearth=http://127.0.0.1:$hport,pid=$hpid" \
  "${extra_hs[@]}" \
  --hs "synapse=$surl,pid=$spid" "$@"
