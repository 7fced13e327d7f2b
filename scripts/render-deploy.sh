#!/usr/bin/env bash
# Renders the deployment artifacts that come from `codexmesh envoy-bootstrap`, so they say what
# envoy/bootstrap.template.yaml says:
#   deploy/kustomize/base/gateway-envoy.yaml  the gateway's bootstrap (ConfigMap)
#   envoy/fragments/*.yaml                    the pieces an existing Envoy needs
#   deploy/istio/codexmesh.yaml               the Istio Gateway and EnvoyFilter
# Usage: scripts/render-deploy.sh [OUT_ROOT]   (default: the repository; the tests render into
# a temporary root and compare). Needs the codexmesh binary (scripts/build.sh; CODEXMESH_BIN
# overrides) and .venv (scripts/setup.sh --test).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
bin=${CODEXMESH_BIN:-${CARGO_TARGET_DIR:-target}/debug/codexmesh}
py=.venv/bin/python
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out/deploy/kustomize/base" "$out/envoy/fragments" "$out/deploy/istio"

# Only these settings: nothing from the caller's environment or config file leaks in.
bootstrap() { # WASM OUT NODE_ID CONTROL_PLANE
  env -i PATH="$PATH" HOME="$tmp" CODEXMESH_DATA_DIR="$tmp/data" \
    CODEXMESH_GATEWAY_LISTEN=0.0.0.0:8080 CODEXMESH_ENVOY_ADMIN_LISTEN=127.0.0.1:9901 \
    CODEXMESH_WASM="$1" "$bin" envoy-bootstrap --out "$2" --node-id "$3" --control-plane "$4" >/dev/null
}

# The gateway: module and bootstrap under /run/codexmesh (the init container puts them there and
# replaces __POD_NAME__), the control plane at the headless Service in the same namespace.
bootstrap /run/codexmesh/codexmesh_filter.wasm "$out/deploy/kustomize/base/gateway-envoy.yaml" \
  __POD_NAME__ codexmesh-grpc:18090

# Fragments for an existing Envoy: the module at /etc/envoy, the control plane as
# deploy/kustomize names it; upstreams are the real providers (TLS).
bootstrap /etc/envoy/codexmesh_filter.wasm "$tmp/fragments-source.yaml" codexmesh-envoy \
  codexmesh-grpc.codexmesh.svc.cluster.local:18090
"$py" tests/deploy/deploy_check.py fragments "$tmp/fragments-source.yaml" "$out/envoy/fragments"
"$py" tests/deploy/deploy_check.py istio-render "$out/envoy/fragments" "$out/deploy/istio/codexmesh.yaml"
