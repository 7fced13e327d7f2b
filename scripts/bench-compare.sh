#!/usr/bin/env bash
# Benchmark (not a test: prints numbers, writes raw JSON, asserts nothing): the same Codex SSE load
# through bare Envoy, codexmesh (Envoy + filter + control plane) and the LiteLLM proxy, side by
# side, all in front of one fast upstream stand-in (an Envoy answering from direct_response), plus
# a second bare Envoy as an A/A control. Interleaved rounds, medians, CPU per request.
#
#   scripts/bench-compare.sh [--quick] [--wasm PATH] [--duration S] [--warmup S] [--rounds R]
#                            [--connections 1,32,256,1024] [--kinds session,pck,large]
#                            [--servers a,b,c,a2] [--accounts N] [--timeout S] [--keep-logs]
#                            [--seed-accounts N [--pools P]] [--egress] [--no-build]
#
# --egress sends codexmesh's accounts through an egress proxy (an Envoy terminating CONNECT on the
# load core; envoy_egress_proxies and each account's egress_proxy), the bare Envoys direct.
#
# --seed-accounts N writes N accounts (spread over P pools, one key each) straight into the store
# with `codexmesh-bench-push seed` instead of N CLI imports; the load uses the first pool's key.
#
# Installs what it needs first (idempotent): scripts/setup.sh (Envoy, wasm target, protoc), Debian
# wrk, LiteLLM in bench/.venv-litellm; builds release binaries. The orchestration is bench/compare.py;
# every process it starts binds 127.0.0.1 and is stopped by its PID on exit.
# Results: a table on stdout and bench/results/compare-<UTC timestamp>.json.
set -euo pipefail
orig_pwd=$PWD
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }
command_line="scripts/bench-compare.sh $*"

build=1
wants_litellm=1
seeding=0
pass=()
prev=""
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$orig_pwd" "$1" ;; esac; }
for arg in "$@"; do
  # --wasm PATH is relative to where the script was started, not to the repository.
  if [ "$prev" = "--wasm" ]; then arg=$(abs "$arg"); fi
  case "$arg" in --wasm=*) arg="--wasm=$(abs "${arg#--wasm=}")" ;; esac
  case "$arg" in
    --no-build) build=0 ;;
    --seed-accounts|--seed-accounts=*) seeding=1; pass+=("$arg") ;;
    -h|--help) exec python3 bench/compare.py --help ;;
    *) pass+=("$arg") ;;
  esac
  # --servers without c: no LiteLLM install needed
  if [ "$prev" = "--servers" ] && [[ ",$arg," != *,c,* ]]; then wants_litellm=0; fi
  case "$arg" in --servers=*) [[ ",${arg#--servers=}," != *,c,* ]] && wants_litellm=0 ;; esac
  prev="$arg"
done

setup_log=$(mktemp "${TMPDIR:-/tmp}/bench-compare-setup.XXXXXX")
trap 'rm -f "$setup_log"' EXIT
step() { # step DESCRIPTION TIMEOUT_SECS CMD...: runs a setup step quietly, shows its output on failure
  local what="$1" limit="$2"
  shift 2
  if ! timeout "$limit" "$@" >"$setup_log" 2>&1; then
    echo "bench-compare: $what failed (or took over ${limit}s):" >&2
    tail -30 "$setup_log" >&2
    return 1
  fi
}

say "setup (scripts/setup.sh)"
step "scripts/setup.sh" 1800 bash scripts/setup.sh || exit 1
if ! command -v wrk >/dev/null 2>&1 || ! command -v taskset >/dev/null 2>&1; then
  say "apt-get install wrk util-linux"
  step "apt-get update" 600 apt-get update -qq || exit 1
  step "apt-get install wrk" 600 env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk util-linux || exit 1
fi

notes=()
if [ "$wants_litellm" = 1 ]; then
  lvenv=bench/.venv-litellm
  if ! "$lvenv/bin/python" -c "import litellm.proxy.proxy_server" >/dev/null 2>&1; then
    say "installing LiteLLM proxy into $lvenv (pip install 'litellm[proxy]', a few minutes once)"
    if ! { [ -x "$lvenv/bin/python" ] || step "python3 -m venv $lvenv" 300 python3 -m venv "$lvenv"; } ||
      ! step "pip install litellm[proxy]" 1800 "$lvenv/bin/pip" install -q 'litellm[proxy]'; then
      notes+=(--note "LiteLLM could not be installed into $lvenv; it was left out")
      say "LiteLLM install failed: continuing without it"
    fi
  fi
fi

if [ "$build" = 1 ]; then
  say "building release binaries (filter module, control plane, simulator)"
  if ! step "PROFILE=release scripts/build.sh" 3600 env PROFILE=release bash scripts/build.sh ||
    ! step "cargo build --release -p codexmesh-sim" 3600 cargo build --locked --release -p codexmesh-sim ||
    { [ "$seeding" = 1 ] &&
      ! step "cargo build --release -p codexmesh-bench-push" 3600 cargo build --locked --release -p codexmesh-bench-push; }; then
    if [ -x target/release/codexmesh ] && [ -x target/release/codexmesh-sim ] &&
      [ -f target/wasm32-wasip1/release/codexmesh_filter.wasm ]; then
      say "build failed: benchmarking the binaries already in target/"
      notes+=(--note "the release build failed; the binaries already in target/ were used")
    else
      exit 1
    fi
  fi
fi
for f in target/release/codexmesh target/release/codexmesh-sim; do
  [ -x "$f" ] || { echo "bench-compare: $f is missing (run without --no-build)" >&2; exit 1; }
done

# 1024 connections from wrk, as many through each proxy: more descriptors than the usual 1024.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

python3 bench/compare.py --command "$command_line" ${notes[@]+"${notes[@]}"} ${pass[@]+"${pass[@]}"} &
py=$!
stop() { kill -TERM "$py" 2>/dev/null || true; }
trap 'stop' INT TERM
trap 'stop; wait "$py" 2>/dev/null; rm -f "$setup_log"' EXIT
set +e
wait "$py"
rc=$?
# A signal interrupts the first wait; wait again (bounded by the orchestrator's own clean-up).
if kill -0 "$py" 2>/dev/null; then wait "$py"; rc=$?; fi
exit "$rc"
