#!/usr/bin/env bash
# Builds the wasm module and the binaries. PROFILE=release for `up`; tests use debug binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PROFILE:-debug}"
cargo build --locked -p codexmesh-filter --target wasm32-wasip1 --release
if [ "$profile" = release ]; then
  cargo build --locked --release -p codexmesh-control-plane
else
  cargo build --locked --workspace --bins
fi
