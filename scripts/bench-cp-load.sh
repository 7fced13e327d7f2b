#!/usr/bin/env bash
# Benchmark (not a test: prints numbers, writes raw JSON, asserts nothing): the control plane's
# CPU and memory while it keeps N accounts alive. A release `codexmesh serve` against the
# simulator's token and usage endpoints, N accounts whose access tokens come due for refresh
# (lifetimes spread over --ttl-min..--ttl-max seconds, refreshed at half their life) and whose
# quota is polled every --poll-secs, one Subscribe stream attached; CPU (utime+stime) and RSS
# sampled every --sample-secs, refreshes and polls counted at the simulator.
#
#   scripts/bench-cp-load.sh [--accounts 1000] [--minutes 5] [--ttl-min 120] [--ttl-max 360]
#                            [--poll-secs 60] [--sample-secs 10] [--rust-log info] [--no-build]
#
# Builds the release control plane, simulator and codexmesh-bench-push first. Everything binds
# 127.0.0.1 on ports chosen at run time and is stopped by its PID. Results: stdout and
# bench/results/cp-load-<UTC timestamp>.json.
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
  # release_artifacts() also checks for the wasm module and Envoy, though cp-load starts neither.
  cargo build --locked -p codexmesh-filter --target wasm32-wasip1 --release
  cargo build --locked --release -p codexmesh -p codexmesh-sim -p codexmesh-bench-push
fi
exec target/release/codexmesh-bench-push --results-dir bench/results cp-load ${pass[@]+"${pass[@]}"}
