#!/usr/bin/env bash
# Benchmark (not a test: prints numbers, writes raw JSON, asserts nothing): the latency one
# failover (a 429 from the first account, then the next account serves) adds to a request through
# the real gateway (Envoy + filter + release control plane) against the simulator, next to the same
# request served at once and the simulator's own answer times. Interleaved, one request at a time.
#
#   scripts/bench-failover.sh [--accounts 10] [--requests 300] [--gap-ms 400] [--no-build]
#
# Builds the release wasm module, control plane, simulator and codexmesh-bench-push first (and
# Envoy via scripts/setup.sh). Every process binds 127.0.0.1 on ports chosen at run time and is
# stopped by its PID. Results: stdout and bench/results/failover-<UTC timestamp>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
build=1
pass=()
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    *) pass+=("$arg") ;;
  esac
done
if [ "$build" = 1 ]; then
  bash scripts/setup.sh >/dev/null
  cargo build --locked -p codexmesh-filter --target wasm32-wasip1 --release
  cargo build --locked --release -p codexmesh -p codexmesh-sim -p codexmesh-bench-push
fi
exec target/release/codexmesh-bench-push --results-dir bench/results failover ${pass[@]+"${pass[@]}"}
