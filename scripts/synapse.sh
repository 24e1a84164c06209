#!/usr/bin/env bash
# Runs a local Synapse (the reference homeserver) as a process on loopback, for
# checking our conformance suite and client tests against it, and for benches.
#
#   scripts/synapse.sh install        install it into .venv-synapse (once)
#   scripts/synapse.sh start [PORT]   install (once) into .venv-synapse, start, wait until ready
#   scripts/synapse.sh stop           stop it and remove its data
#   scripts/synapse.sh url            print its base URL
#
# Registration is open (m.login.dummy) and rate limits are off, as the
# conformance suite expects. Env: SYNAPSE_DB=postgres uses a fresh Postgres
# database (hearth_synapse_<port>) instead of SQLite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="${SYNAPSE_VENV:-$root/.venv-synapse}"
port="${2:-${SYNAPSE_PORT:-18008}}"
dir="${SYNAPSE_DIR:-/tmp/hearth-synapse-$port}"

install() {
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import synapse' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q matrix-synapse psycopg2-binary
  fi
}

start() {
  install
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    echo "http://127.0.0.1:$port"; return 0
  fi
  if curl -fsS "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1; then
    echo "port $port is already serving something else; stop it first" >&2; return 1
  fi
  rm -rf "$dir"; mkdir -p "$dir"
  (cd "$dir" && "$venv/bin/python" -m synapse.app.homeserver --server-name localhost \
      --config-path "$dir/homeserver.yaml" --generate-config --report-stats=no >/dev/null)
  local db_block="database:
  name: sqlite3
  args:
    database: $dir/homeserver.db"
  if [ "${SYNAPSE_DB:-sqlite}" = postgres ]; then
    local db="hearth_synapse_$port"
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db" >/dev/null
    psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" >/dev/null
    db_block="database:
  name: psycopg2
  args:
    user: postgres
    host: 127.0.0.1
    database: $db
    cp_min: 5
    cp_max: 10"
  fi
  "$venv/bin/python" - "$dir/homeserver.yaml" "$port" "$dir" "$db_block" <<'PY'
import sys, yaml
path, port, d, db_block = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
cfg = yaml.safe_load(open(path))
cfg["listeners"] = [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http",
                     "tls": False, "x_forwarded": False,
                     "resources": [{"names": ["client", "federation"], "compress": False}]}]
cfg["database"] = yaml.safe_load(db_block)["database"]
cfg["enable_registration"] = True
cfg["enable_registration_without_verification"] = True
cfg["suppress_key_server_warning"] = True
cfg["trusted_key_servers"] = []
cfg["report_stats"] = False
cfg["media_store_path"] = d + "/media"
cfg["log_config"] = None
cfg.pop("log_config", None)
big = {"per_second": 100000, "burst_count": 100000}
for k in ["rc_message", "rc_registration", "rc_joins_per_room", "rc_3pid_validation",
          "rc_invites", "rc_admin_redaction", "rc_registration_token_validity",
          "rc_media_create", "rc_delayed_event_mgmt", "rc_presence", "rc_room_creation",
          "rc_reports", "rc_send_message"]:
    cfg[k] = dict(big) if k != "rc_invites" else {"per_room": big, "per_user": big, "per_issuer": big}
cfg["rc_login"] = {"address": big, "account": big, "failed_attempts": big}
cfg["rc_joins"] = {"local": big, "remote": big}
cfg["rc_key_requests"] = big
cfg["rc_presence"] = {"per_user": big}
cfg["room_list_publication_rules"] = [{"action": "allow"}]
cfg["federation_rr_transactions_per_room_per_second"] = 10000
cfg["max_upload_size"] = "50M"
cfg["url_preview_enabled"] = False
cfg["presence"] = {"enabled": True}
cfg["user_directory"] = {"enabled": True, "search_all_users": False}
cfg["allow_public_rooms_without_auth"] = True
cfg["experimental_features"] = {}
yaml.safe_dump(cfg, open(path, "w"))
PY
  # exec + redirected fds: nothing keeps the caller's stdout open, so
  # `url=$(scripts/synapse.sh start)` returns once Synapse is ready.
  (cd "$dir" && exec "$venv/bin/python" -m synapse.app.homeserver --config-path "$dir/homeserver.yaml" \
      >"$dir/stdout.log" 2>&1 </dev/null) &
  echo $! >"$dir/pid"
  for _ in $(seq 1 120); do
    if curl -fsS "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1; then
      echo "http://127.0.0.1:$port"; return 0
    fi
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "synapse exited; see $dir/stdout.log" >&2; tail -30 "$dir/stdout.log" >&2; return 1
    fi
    sleep 0.5
  done
  echo "synapse did not become ready; see $dir/stdout.log" >&2; return 1
}

stop() {
  if [ -f "$dir/pid" ]; then
    pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS hearth_synapse_$port" >/dev/null 2>&1 || true
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  url) echo "http://127.0.0.1:$port" ;;
  *) echo "usage: $0 install|start|stop|url [PORT]" >&2; exit 2 ;;
esac
