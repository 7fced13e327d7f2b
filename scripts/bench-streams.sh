#!/usr/bin/env bash
# Benchmark (prints numbers, asserts nothing): Envoy memory per open SSE stream, bare Envoy vs
# codexmesh, with 1,000 and 5,000 concurrent streams held open (bench/streams.py says how).
#   scripts/bench-streams.sh [--streams 1000,5000] [--wasm PATH] [--accounts N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
PROFILE=release bash scripts/build.sh >/dev/null
cargo build -q --locked --release -p codexmesh-sim
exec python3 bench/streams.py "$@"
