#!/usr/bin/env bash
# Builds the wasm module and the binaries. PROFILE=release for `up`; tests use debug binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PROFILE:-debug}"
cargo build --locked -p codexmesh-filter --target wasm32-wasip1 --release
if [ "$profile" = release ]; then
  # No test-only switches: a release binary ignores CODEXMESH_FAULT.
  cargo build --locked --release -p codexmesh
else
  # The debug binaries the tests run carry the test-only switches (feature test-faults), the
  # same build `cargo test` makes, so the two do not rebuild each other's binary. The feature is
  # named on `-p codexmesh` itself: in a workspace-wide build `codexmesh/test-faults` names the
  # feature of codexmesh's dev-dependency on itself and leaves the binary without it.
  cargo build --locked --workspace --exclude codexmesh --bins
  cargo build --locked -p codexmesh --bins --features test-faults
fi
