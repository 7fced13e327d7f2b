#!/usr/bin/env bash
# Runs every test: installs what is missing, builds the wasm module and binaries, checks
# formatting and lints, then runs the unit, integration and end-to-end suites.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
bash scripts/build.sh
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo clippy --locked -p codexmesh-filter --target wasm32-wasip1 -- -D warnings
cargo test --locked --workspace "$@"
# The same filter-core tests compiled to wasm (32-bit usize, no threads, no clock), under Node.
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test --locked -p codexmesh-filter-core --target wasm32-unknown-unknown --lib
