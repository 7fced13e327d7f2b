#!/usr/bin/env bash
# Starts the gateway on a laptop: installs what is missing, builds, and runs `codexmesh up`
# (control plane on the embedded SQLite store plus a managed Envoy). Extra arguments go to `up`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PROFILE=release bash scripts/build.sh
exec target/release/codexmesh up "$@"
