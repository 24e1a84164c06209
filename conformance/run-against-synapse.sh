#!/usr/bin/env bash
# Runs the conformance suite against a fresh local Synapse, to keep the cases
# honest: every case must pass there too.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port="${SYNAPSE_PORT:-18008}"
url=$(bash "$root/scripts/synapse.sh" start "$port")
trap 'bash "$root/scripts/synapse.sh" stop "$port"' EXIT
cd "$root"
cargo run -q --locked -p conformance -- --hs "$url" "$@"
