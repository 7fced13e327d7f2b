#!/usr/bin/env bash
# Failure drills under sustained load, with a longer load than the test suite gives them:
# tests/e2e/tests/drills.rs (control plane SIGKILLed and restarted, frozen 25 s, one of two
# replicas on PostgreSQL killed, PostgreSQL restarted) and tests/e2e/tests/drills_state.rs
# (SIGKILL during a token refresh, a flapping upstream, the SQLite disk full), one drill at a
# time. Each drill prints one line `DRILL <name> key=value ...`; this script prints them all
# again at the end (and writes them to bench/results/drills-<UTC timestamp>.txt).
#
#   scripts/drill.sh [--no-build] [SECONDS]
#
# SECONDS (or CODEXMESH_DRILL_SECONDS; default 60) is the load before and after each event; the
# freeze is always 25 s. Every process binds 127.0.0.1 on ports chosen at run time and is
# stopped by its PID. Exits non-zero when a drill failed (its figures are still printed).
set -euo pipefail
cd "$(dirname "$0")/.."
build=1
seconds="${CODEXMESH_DRILL_SECONDS:-60}"
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    ''|*[!0-9]*) echo "usage: scripts/drill.sh [--no-build] [SECONDS]" >&2; exit 2 ;;
    *) seconds="$arg" ;;
  esac
done
export CODEXMESH_DRILL_SECONDS="$seconds" CODEXMESH_REQUIRE_POSTGRES=1
if [ "$build" = 1 ]; then
  # PostgreSQL, Envoy and the rest of the test tools (idempotent), then the wasm module and
  # the debug binaries the tests run.
  bash scripts/setup.sh --test >/dev/null
  bash scripts/build.sh
fi
mkdir -p bench/results
out="bench/results/drills-$(date -u +%Y%m%dT%H%M%SZ).txt"
log="$(mktemp -t codexmesh-drills.XXXXXX)"
status=0
for suite in drills drills_state; do
  if [ ! -f "tests/e2e/tests/$suite.rs" ]; then
    echo "note: tests/e2e/tests/$suite.rs is not here: its drills SKIPPED" | tee -a "$log"
    continue
  fi
  echo "== $suite (load ${seconds}s around each event)"
  cargo test --locked -p codexmesh-e2e --test "$suite" -- --nocapture --test-threads=1 \
    2>&1 | tee -a "$log" || status=1
done
echo
echo "== drill figures (CODEXMESH_DRILL_SECONDS=$seconds)"
# A line may follow the harness's `test NAME ... ` on the same line (--nocapture).
grep -oE 'DRILL [A-Za-z0-9_]+( .*)?$' "$log" | tee "$out" || true
grep -E '^test .* FAILED$|^failures:$' "$log" >/dev/null && status=1
rm -f "$log"
echo "(written to $out)"
exit "$status"
