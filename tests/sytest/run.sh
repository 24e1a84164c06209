#!/usr/bin/env bash
# SyTest (matrix-org/sytest: the integration suite Synapse and Dendrite run in
# their CI) against a Hearth binary, checked against tests/sytest/passing.txt.
#
#   bash tests/sytest/run.sh                 # the whole suite, checked
#   bash tests/sytest/run.sh tests/31sync    # some files or folders, not checked
#
# Env:
#   HEARTH_BIN           the homeserver binary (default target/release/homeserver)
#   HEARTH_SYTEST_SUITE  SyTest's own tree (default: the workplace's copy,
#                        ../shared/sytest/suite or /work/shared/sytest/suite)
#   HEARTH_ROOM_VERSION  default_room_version Hearth is started with
#   SYTEST_PASS_LIST     the pass list checked, in tests/sytest (default
#                        passing.txt; passing-v10.txt for HEARTH_ROOM_VERSION=10)
#   SYTEST_OUT           output folder (default target/sytest/<time>)
#   SYTEST_PORT_RANGE    ports SyTest may use (default 28800:28999)
#   SYTEST_TIMEOUT       seconds for one run of the suite (default 3600)
#   HEARTH_PUSH_COALESCE_MS  Hearth's push coalescing window (default 0 here)
# Output: results.tap, progress.log, summary.txt (per-directory counts, the
# failing tests) and each Hearth's log and config, in SYTEST_OUT.
# Perl modules come from Debian (debian-packages.txt; installed here when
# missing); lib/ holds the Hearth server module (run-tests.pl -I Hearth) and
# stand-ins for the two CPAN modules Debian lacks.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

suite=${HEARTH_SYTEST_SUITE:-}
if [ -z "$suite" ]; then
  for c in "$ROOT/../shared/sytest/suite" /work/shared/sytest/suite; do
    [ -f "$c/run-tests.pl" ] && { suite=$c; break; }
  done
fi
[ -n "$suite" ] && [ -f "$suite/run-tests.pl" ] || {
  echo "SyTest not found: set HEARTH_SYTEST_SUITE to a checkout of matrix-org/sytest" >&2
  exit 2
}
HEARTH_BIN="${HEARTH_BIN:-$ROOT/target/release/homeserver}"
[ -x "$HEARTH_BIN" ] || { echo "no Hearth binary at $HEARTH_BIN (cargo build --release -p homeserver)" >&2; exit 2; }
export HEARTH_BIN="$(cd "$(dirname "$HEARTH_BIN")" && pwd)/$(basename "$HEARTH_BIN")"
OUT="${SYTEST_OUT:-$ROOT/target/sytest/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PERL5LIB="$HERE/lib${PERL5LIB:+:$PERL5LIB}"
# SyTest waits for one push per event; Hearth coalesces a burst of
# notifications into one push by default (spec/push.md): no window here.
export HEARTH_PUSH_COALESCE_MS="${HEARTH_PUSH_COALESCE_MS:-0}"

perl_ok() {
  perl -e 'use IO::Async::SSL; use Net::Async::HTTP; use Struct::Dumb; use List::UtilsBy; use YAML::XS; use JSON; use Email::MIME; use Email::Address::XS; use File::Slurper; use Data::Dump; use Class::Method::Modifiers; use Digest::HMAC_SHA1; use DBD::Pg; use Crypt::PK::Ed25519; use Crypt::Ed25519; use Net::Async::HTTP::Server;' 2>/dev/null
}
if ! perl_ok; then
  echo "installing SyTest's Perl modules from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(cat "$HERE/debian-packages.txt") >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(cat "$HERE/debian-packages.txt") >/dev/null; }
  perl_ok || { echo "SyTest's Perl modules are missing (debian-packages.txt)" >&2; exit 2; }
fi

# One run of run-tests.pl over the given files (all when none) into $1.
run_suite() {
  local out=$1; shift
  mkdir -p "$out/work"
  # SyTest runs from a writable copy of its tree (the shared one may be read-only).
  local tree="$out/sytest-tree"
  mkdir -p "$tree"
  (cd "$suite" && tar -cf - .) | (cd "$tree" && tar -xf -)
  local args=()
  for a in "$@"; do
    # run-tests.pl matches file names exactly: folders become their files.
    if [ -d "$tree/$a" ]; then
      while IFS= read -r f; do args+=("$f"); done < <(cd "$tree" && find "$a" -name '*.pl' | sort)
    else args+=("$a"); fi
  done
  (cd "$tree" && timeout --signal=INT --kill-after=60 "${SYTEST_TIMEOUT:-3600}" \
    ./run-tests.pl -I Hearth -O tap --all \
      --work-directory "$out/work" \
      --port-range "${SYTEST_PORT_RANGE:-28800:28999}" \
      ${args[@]+"${args[@]}"} > "$out/results.tap" 2> "$out/progress.log")
  local rc=$?
  echo "run-tests.pl exit status $rc" >> "$out/progress.log"
  for d in "$out"/work/server-*; do
    [ -d "$d" ] || continue
    for f in "$d"/hearth.log "$d"/hearth.toml; do
      [ -f "$f" ] && cp "$f" "$out/$(basename "$d")-$(basename "$f")"
    done
  done
  rm -rf "$tree"
  python3 "$HERE/summarize.py" "$out/progress.log" "$out/results.tap" > "$out/summary.txt"
}

echo "SyTest ($suite) against $HEARTH_BIN -> $OUT"
run_suite "$OUT" "$@"
if [ $# -gt 0 ]; then
  sed -n '/^FAILED:/q;p' "$OUT/summary.txt"
  python3 "$HERE/results.py" "$OUT" | tail -1
  exit 0
fi
sed -n '/^FAILED:/q;p' "$OUT/summary.txt"
# Listed tests that failed get one more try (their files only): SyTest has
# timing-sensitive tests, and one slow moment must not fail CI.
mapfile -t again < <(python3 "$HERE/results.py" "$OUT" | sed -n 's/^REGRESSION (listed as passing): \(tests\/[^:]*\.pl\): .*/\1/p' | sort -u)
runs=("$OUT")
if [ ${#again[@]} -gt 0 ]; then
  echo "retrying ${#again[@]} file(s) with listed tests that failed"
  run_suite "$OUT/retry" "${again[@]}"
  runs+=("$OUT/retry")
fi
python3 "$HERE/results.py" "${runs[@]}"
