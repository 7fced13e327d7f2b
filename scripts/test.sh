#!/usr/bin/env bash
# Runs every test: installs what is missing, checks formatting and the dependency tree
# (cargo deny), builds the wasm module and binaries, checks lints, then runs the unit,
# integration and end-to-end suites.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# A one-off build gains nothing from incremental caches; they would double the debug target's
# size on disk.
export CARGO_INCREMENTAL=0
# Cheap checks first: they fail in seconds, before the long build.
cargo fmt --all --check
# Licenses, sources (crates.io only) and bans (deny.toml), offline. Advisories are not checked:
# they need the RustSec database, which this offline run cannot fetch (see deny.toml).
cargo deny --offline --locked check --hide-inclusion-graph licenses sources bans
# Generated docs: the README's settings table must be what the settings declaration renders, and
# the module layering must hold (crates one way, no module cycles). Both read source files only;
# the crates they compile are the ones the long build needs first anyway.
cargo test --locked -p codexmesh-engine --lib -- config::tests::readme_settings_table_is_generated
cargo test --locked -p codexmesh --test architecture
bash scripts/build.sh
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo clippy --locked -p codexmesh-filter --target wasm32-wasip1 -- -D warnings
# The leak scan (tests/kit/src/leaks.rs): while the tests run, the kit scans every test directory,
# process log, PostgreSQL data directory and Envoy admin dump before it goes; the report at the
# end fails on any secret or prompt text found.
export CODEXMESH_LEAK_SCAN_DIR="$PWD/target/leak-scan"
rm -rf "$CODEXMESH_LEAK_SCAN_DIR"
# Setup installed PostgreSQL and the deployment checkers (kubectl's kustomize, kubernetes-validate,
# docker-compose): their tests must run, not skip.
CODEXMESH_REQUIRE_POSTGRES=1 CODEXMESH_REQUIRE_DEPLOY_TOOLS=1 cargo test --locked --workspace "$@"
# The same filter-core tests compiled to wasm (32-bit usize, no threads, no clock), under Node.
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test --locked -p codexmesh-filter-core --target wasm32-unknown-unknown --lib
# The leak scan's report, over everything the suite left: each kind of place must have been read.
# (Built by scripts/build.sh with the workspace's binaries.)
"${CARGO_TARGET_DIR:-target}/debug/codexmesh-leak-scan" \
  --expect "process log,test dir,postgres data,envoy /config_dump,envoy /stats" \
  "$CODEXMESH_LEAK_SCAN_DIR" target/test-artifacts
echo "build artifacts on disk: $(du -sh target | cut -f1)"
