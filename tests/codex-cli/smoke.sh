#!/usr/bin/env bash
# Smoke test: the real Codex CLI (npm @openai/codex, pinned in package.json) against codexmesh-sim.
#
# Two runs, each on a fresh simulator with an OS-chosen loopback port:
#  1. pool-key mode (what a gateway client does): HTTP, custom provider with env_key, the
#     account's access token as the key;
#  2. ChatGPT mode: HTTPS (self-signed, trusted through CODEX_CA_CERTIFICATE), auth.json in
#     CODEX_HOME, zstd request bodies, /wham/accounts/check, /models, and a token refresh
#     (the access token is minted 5 minutes from expiry, so the CLI refreshes it first through
#     CODEX_REFRESH_TOKEN_URL_OVERRIDE and writes the rotated tokens back to auth.json).
#
# Needs: node/npm, curl, cargo (unless SIM_BIN points at a built codexmesh-sim).
# Env: SIM_BIN (prebuilt simulator), KEEP=1 (keep the temp dir), CODEX_TIMEOUT (s, default 90).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CODEX="$HERE/node_modules/.bin/codex"
REPLY="codexmesh smoke reply 7f3a"
TIMEOUT_S=${CODEX_TIMEOUT:-90}

if [ ! -x "$CODEX" ]; then
  (cd "$HERE" && npm ci --no-audit --no-fund)
fi
if [ -z "${SIM_BIN:-}" ]; then
  (cd "$REPO" && cargo build -q -p codexmesh-sim)
  SIM_BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/codexmesh-sim"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/codexmesh-smoke.XXXXXX")
SIM_PID=""
cleanup() {
  if [ -n "$SIM_PID" ]; then
    kill "$SIM_PID" 2>/dev/null || true
    wait "$SIM_PID" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

fail() {
  echo "SMOKE FAIL: $*" >&2
  for f in "$WORK"/*.out "$WORK"/*.err; do
    [ -f "$f" ] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }
  done
  exit 1
}

# json FIELD.PATH < document  (prints strings raw, other values as JSON)
json() {
  node -e '
    let s = "";
    process.stdin.on("data", d => (s += d)).on("end", () => {
      let v = JSON.parse(s);
      for (const k of process.argv[1].split(".").filter(Boolean)) v = v == null ? v : v[k];
      process.stdout.write(typeof v === "string" ? v : JSON.stringify(v));
    });' "$1"
}

start_sim() {
  rm -f "$WORK/port"
  "$SIM_BIN" --listen 127.0.0.1:0 --port-file "$WORK/port" --reply-text "$REPLY" "$@" \
    >"$WORK/sim.out" 2>"$WORK/sim.err" &
  SIM_PID=$!
  for _ in $(seq 1 100); do
    [ -s "$WORK/port" ] && break
    sleep 0.1
  done
  [ -s "$WORK/port" ] || fail "simulator did not start"
  PORT=$(tr -d '\n' <"$WORK/port")
}

stop_sim() {
  kill "$SIM_PID" 2>/dev/null || true
  wait "$SIM_PID" 2>/dev/null || true
  SIM_PID=""
}

# run_codex NAME CODEX_HOME [VAR=value ...]: runs `codex exec`, sets ELAPSED_MS.
run_codex() {
  local name=$1 home=$2
  shift 2
  mkdir -p "$WORK/cwd"
  local t0 t1
  t0=$(date +%s%N)
  if ! (cd "$WORK/cwd" && env "$@" CODEX_HOME="$home" timeout "$TIMEOUT_S" \
    "$CODEX" exec --skip-git-repo-check --color never "say hi" \
    </dev/null >"$WORK/$name.out" 2>"$WORK/$name.err"); then
    fail "$name: codex exec failed"
  fi
  t1=$(date +%s%N)
  ELAPSED_MS=$(((t1 - t0) / 1000000))
  grep -qF "$REPLY" "$WORK/$name.out" || fail "$name: reply not on stdout"
}

summarize_requests() {
  node -e '
    let s = "";
    process.stdin.on("data", d => (s += d)).on("end", () => {
      const rs = JSON.parse(s);
      const t0 = rs.length ? rs[0].real_unix_ms : 0;
      for (const r of rs) {
        const enc = r.headers["content-encoding"] ? ` ${r.headers["content-encoding"]} ${r.body_len}->${r.decoded_body_len}B` : "";
        console.log(`  +${String(r.real_unix_ms - t0).padStart(5)}ms ${r.method} ${r.path}${r.query ? "?" + r.query : ""} -> ${r.status}${enc}`);
      }
    });'
}

config_common() {
  cat <<EOF
check_for_update_on_startup = false

[features]
plugins = false
remote_plugin = false
apps = false

[analytics]
enabled = false

[feedback]
enabled = false
EOF
}

# ---------------------------------------------------------------------------------------------
echo "== 1. pool-key mode (HTTP, env_key)"
start_sim
BASE="http://127.0.0.1:$PORT"
ACC=$(curl -fsS -X POST "$BASE/__sim/accounts" -d '{"account_id":"smoke-key","plan":"plus"}')
TOKEN=$(json access_token <<<"$ACC")
HOME1="$WORK/home-key"
mkdir -p "$HOME1"
{
  cat <<EOF
model_provider = "codexmesh"
model = "gpt-5.1-codex"

[model_providers.codexmesh]
name = "OpenAI"
base_url = "$BASE/backend-api/codex"
env_key = "CODEXMESH_API_KEY"
wire_api = "responses"
supports_websockets = false

EOF
  config_common
} >"$HOME1/config.toml"
run_codex key "$HOME1" CODEXMESH_API_KEY="$TOKEN"
REQS=$(curl -fsS "$BASE/__sim/requests")
echo "  codex exec took ${ELAPSED_MS}ms; requests:"
summarize_requests <<<"$REQS"
TURNS=$(curl -fsS "$BASE/__sim/accounts/smoke-key" | json turns)
[ "$TURNS" = 1 ] || fail "key: expected 1 turn, got $TURNS"
stop_sim

# ---------------------------------------------------------------------------------------------
echo "== 2. ChatGPT mode (HTTPS, auth.json, zstd, refresh)"
CERT="$WORK/sim-cert.pem"
start_sim --tls --tls-cert-out "$CERT"
BASE="https://127.0.0.1:$PORT"
CURL=(curl -fsS --cacert "$CERT")
# Mint the tokens 55 minutes in the past: they expire in 5 minutes of real time, inside the
# CLI's refresh window, so it refreshes before the first request.
"${CURL[@]}" -X POST "$BASE/__sim/clock" -d '{"advance_secs":-3300}' >/dev/null
ACC=$("${CURL[@]}" -X POST "$BASE/__sim/accounts" -d '{"account_id":"smoke-chatgpt","plan":"pro"}')
"${CURL[@]}" -X POST "$BASE/__sim/clock" -d '{"advance_secs":3300}' >/dev/null
OLD_RT=$(json refresh_token <<<"$ACC")
HOME2="$WORK/home-chatgpt"
mkdir -p "$HOME2"
json auth_json <<<"$ACC" >"$HOME2/auth.json"
{
  cat <<EOF
model_provider = "codexmesh"
model = "gpt-5.1-codex"
chatgpt_base_url = "$BASE/backend-api/"
forced_login_method = "chatgpt"

[model_providers.codexmesh]
name = "OpenAI"
base_url = "$BASE/backend-api/codex"
requires_openai_auth = true
wire_api = "responses"
supports_websockets = false

EOF
  config_common
} >"$HOME2/config.toml"
run_codex chatgpt "$HOME2" CODEX_CA_CERTIFICATE="$CERT" \
  CODEX_REFRESH_TOKEN_URL_OVERRIDE="$BASE/oauth/token"
REQS=$("${CURL[@]}" "$BASE/__sim/requests")
echo "  codex exec took ${ELAPSED_MS}ms; requests:"
summarize_requests <<<"$REQS"
STATE=$("${CURL[@]}" "$BASE/__sim/accounts/smoke-chatgpt")
[ "$(json refresh_successes <<<"$STATE")" = 1 ] || fail "chatgpt: expected one refresh"
[ "$(json turns <<<"$STATE")" = 1 ] || fail "chatgpt: expected one turn"
NEW_RT=$(json tokens.refresh_token <"$HOME2/auth.json")
[ "$NEW_RT" != "$OLD_RT" ] || fail "chatgpt: auth.json still holds the old refresh token"
[ "$NEW_RT" = "$(json refresh_token <<<"$STATE")" ] || fail "chatgpt: auth.json refresh token is not the newest"
ZSTD=$(node -e '
  const rs = JSON.parse(process.argv[1]);
  const t = rs.filter(r => r.method === "POST" && r.path.endsWith("/codex/responses"));
  process.stdout.write(String(t.length > 0 && t.every(r => r.headers["content-encoding"] === "zstd" && r.headers["chatgpt-account-id"] === "smoke-chatgpt")));
' "$REQS")
[ "$ZSTD" = true ] || fail "chatgpt: model turns were not zstd-encoded with chatgpt-account-id"
stop_sim

echo "2 passed, 0 failed"
