#!/usr/bin/env python3
"""The deployment artifacts' checks and tools (run by tests/e2e/tests/deploy.rs).

Rules this module keeps:
- every failure names the file and the object (kind/name, or the fragment and its key) and
  the command exits non-zero; a check never passes on an empty input;
- it reads and writes only the paths it is given, and never the network;
- the Envoy fragments are cut out of a bootstrap that `codexmesh envoy-bootstrap` rendered, so
  they say exactly what the template says (nothing is written here by hand but the wiring).

Commands:
  fragments BOOTSTRAP OUTDIR        cut the pieces an existing Envoy needs out of a bootstrap
  merge CONFIG FRAGMENTS LISTENER VHOST OUT
                                    paste the fragments into an existing Envoy config
  istio-render FRAGMENTS OUT [WASM_URL SHA256]
                                    the Istio Gateway and EnvoyFilter from the fragments
  to-json FILE                      the YAML documents of FILE as one JSON list
  istio-assemble BASE ENVOYFILTERS OUT
                                    apply EnvoyFilter configPatches to a stand-in gateway config
  validate-k8s SOURCE FILE          every object in FILE against the Kubernetes schemas
                                    (kubernetes-validate), Istio's against
                                    deploy/istio/istio-networking.schema.json
"""

import copy
import json
import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ISTIO_SCHEMA = os.path.join(ROOT, "deploy", "istio", "istio-networking.schema.json")
# The oldest Kubernetes minor the manifests promise (policy/v1 PDBs, topology spread, seccomp
# fields), a middle one, and the newest the package bundles.
KUBERNETES_VERSIONS = ["1.27.0", "1.30.0", "latest"]

CODEXMESH_FILTER = "codexmesh.downstream"
ROUTER = "envoy.filters.http.router"
HCM = "envoy.filters.network.http_connection_manager"
# HCM settings the module depends on (README "Running inside an existing Envoy or Istio mesh").
HCM_SETTINGS = [
    "use_remote_address",
    "skip_xff_append",
    "normalize_path",
    "merge_slashes",
    "path_with_escaped_slashes_action",
    "stream_idle_timeout",
    "request_timeout",
    "local_reply_config",
    "upgrade_configs",
]
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
# Envoy cannot enable a filter that is off by default without a per-route config, which the
# wasm filter has none of: so the filter stays on and the operator's own routes turn it off.
DISABLE_ON_OTHER_ROUTES = {CODEXMESH_FILTER: {"@type": FILTER_CONFIG, "disabled": True}}


class CheckError(Exception):
    pass


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def dump(path, header, data):
    with open(path, "w", encoding="utf-8") as f:
        f.write(header)
        yaml.safe_dump(data, f, sort_keys=False, default_flow_style=False, width=100)


def the_hcm(listener, where):
    for chain in listener.get("filter_chains", []):
        for net in chain.get("filters", []):
            if net.get("name") == HCM:
                return net["typed_config"]
    raise CheckError(f"{where}: listener {listener.get('name')!r} has no {HCM}")


def find_named(items, name, what, where):
    for item in items:
        if item.get("name") == name:
            return item
    raise CheckError(f"{where}: no {what} named {name!r}")


# ---------------------------------------------------------------------------------- fragments

HEADERS = {
    "bootstrap.yaml": "# codexmesh fragment: merge into your bootstrap's top level. The wasm service\n"
    "# (singleton) holds the Subscribe stream to the control plane; give Envoy CODEXMESH_PUSH_TOKEN\n"
    "# in its environment. stats_config tags the filter's per-pool counters.\n",
    "clusters.yaml": "# codexmesh fragment: append to static_resources.clusters. Each upstream cluster\n"
    "# runs codexmesh.upstream before upstream_codec; codexmesh_control_plane is the push channel\n"
    "# (HTTP/2; STRICT_DNS for a DNS name).\n",
    "http_connection_manager.yaml": "# codexmesh fragment for the HttpConnectionManager that serves pool keys:\n"
    "# `settings` merge into its typed_config (path normalization: the filter's allowlist matches\n"
    "# the normalized path exactly); `http_filters_before_router` go just before the router; the\n"
    "# router gets `router_typed_config` (suppress_envoy_headers). codexmesh.downstream answers\n"
    "# every request it sees as a pool-key request: turn it off on each of your other routes in\n"
    "# this HCM with `disable_on_your_routes` as the route's typed_per_filter_config.\n",
    "routes.yaml": "# codexmesh fragment: `virtual_host_settings` merge into the virtual host, `routes` go\n"
    "# before your catch-all route (each enables codexmesh.downstream for itself and carries the\n"
    "# retry policy the filter bounds per request).\n",
}


def cut_fragments(bootstrap_path, outdir):
    b = load_yaml(bootstrap_path)
    where = bootstrap_path
    listeners = b["static_resources"]["listeners"]
    if len(listeners) != 1:
        raise CheckError(f"{where}: expected the one codexmesh listener, found {len(listeners)}")
    hcm = the_hcm(listeners[0], where)
    filters = hcm["http_filters"]
    names = [f["name"] for f in filters]
    if names[-1] != ROUTER or CODEXMESH_FILTER not in names:
        raise CheckError(f"{where}: http_filters {names} lack {CODEXMESH_FILTER} or end without the router")
    before_router = []
    for f in filters[:-1]:
        before_router.append(copy.deepcopy(f))
    missing = [k for k in HCM_SETTINGS if k not in hcm]
    if missing:
        raise CheckError(f"{where}: the HCM lacks {missing}")
    vhosts = hcm["route_config"]["virtual_hosts"]
    vhost = find_named(vhosts, "codexmesh", "virtual host", where)
    routes = []
    for r in vhost["routes"]:
        if "direct_response" in r:
            continue  # codexmesh's own 404 catch-all: the operator has theirs.
        routes.append(copy.deepcopy(r))
    vhost_settings = {k: v for k, v in vhost.items() if k not in ("name", "domains", "routes")}
    pieces = {
        "bootstrap.yaml": {
            "bootstrap_extensions": b["bootstrap_extensions"],
            "stats_config": b["stats_config"],
        },
        "clusters.yaml": {"clusters": b["static_resources"]["clusters"]},
        "http_connection_manager.yaml": {
            "settings": {k: hcm[k] for k in HCM_SETTINGS},
            "http_filters_before_router": before_router,
            "router_typed_config": filters[-1]["typed_config"],
            "disable_on_your_routes": DISABLE_ON_OTHER_ROUTES,
        },
        "routes.yaml": {"virtual_host_settings": vhost_settings, "routes": routes},
    }
    os.makedirs(outdir, exist_ok=True)
    for name, data in pieces.items():
        dump(os.path.join(outdir, name), HEADERS[name], data)


def merge(config_path, fragments, listener_name, vhost_name, out):
    cfg = load_yaml(config_path)
    where = config_path

    def frag(name):
        return load_yaml(os.path.join(fragments, name))

    boot, clusters, hcm_frag, routes = (
        frag("bootstrap.yaml"),
        frag("clusters.yaml"),
        frag("http_connection_manager.yaml"),
        frag("routes.yaml"),
    )
    cfg.setdefault("bootstrap_extensions", []).extend(boot["bootstrap_extensions"])
    stats = cfg.setdefault("stats_config", {})
    stats.setdefault("stats_tags", []).extend(boot["stats_config"].get("stats_tags", []))
    static = cfg.setdefault("static_resources", {})
    have = {c["name"] for c in static.get("clusters", [])}
    for c in clusters["clusters"]:
        if c["name"] in have:
            raise CheckError(f"{where}: a cluster named {c['name']!r} exists already")
    static.setdefault("clusters", []).extend(clusters["clusters"])
    listener = find_named(static.get("listeners", []), listener_name, "listener", where)
    hcm = the_hcm(listener, where)
    for k, v in hcm_frag["settings"].items():
        if k == "upgrade_configs":
            kinds = {u.get("upgrade_type") for u in hcm.get(k, [])}
            hcm.setdefault(k, []).extend(u for u in v if u.get("upgrade_type") not in kinds)
        else:
            hcm[k] = v
    filters = hcm.setdefault("http_filters", [])
    router_at = [i for i, f in enumerate(filters) if f.get("name") == ROUTER]
    if not router_at:
        raise CheckError(f"{where}: listener {listener_name!r} has no {ROUTER}")
    i = router_at[0]
    filters[i].setdefault("typed_config", {}).update(hcm_frag["router_typed_config"])
    filters[i:i] = hcm_frag["http_filters_before_router"]
    # Every route already on this HCM keeps working as before: the filter is off on it.
    for vh in hcm["route_config"]["virtual_hosts"]:
        for r in vh.get("routes", []):
            r.setdefault("typed_per_filter_config", {}).update(
                copy.deepcopy(hcm_frag["disable_on_your_routes"])
            )
    vhost = find_named(hcm["route_config"]["virtual_hosts"], vhost_name, "virtual host", where)
    vhost.update(routes["virtual_host_settings"])
    existing = vhost.setdefault("routes", [])
    # codexmesh's routes before a catch-all `prefix: /` without headers, else at the end.
    at = len(existing)
    for j, r in enumerate(existing):
        m = r.get("match", {})
        if m.get("prefix") == "/" and not m.get("headers"):
            at = j
            break
    existing[at:at] = routes["routes"]
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


# ------------------------------------------------------------------------------------- istio


def proto_merge(dst, src):
    """Protobuf merge as Istio's MERGE does: messages recursively, repeated fields appended."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            proto_merge(dst[k], v)
        elif isinstance(v, list) and isinstance(dst.get(k), list):
            dst[k].extend(copy.deepcopy(v))
        else:
            dst[k] = copy.deepcopy(v)


def istio_assemble(base_path, filters_path, out):
    """Applies the configPatches the way istiod would to a stand-in gateway config (one HCM
    listener with an inline route config, the router, its clusters). Only the patch shapes
    deploy/istio uses are understood; anything else is an error naming the object."""
    cfg = load_yaml(base_path)
    with open(filters_path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if not docs:
        raise CheckError(f"{filters_path}: no EnvoyFilter")
    static = cfg["static_resources"]
    docs = [d for d in docs if d.get("kind") == "EnvoyFilter"]
    if not docs:
        raise CheckError(f"{filters_path}: no EnvoyFilter")
    for doc in docs:
        name = f"{filters_path}: EnvoyFilter/{doc['metadata']['name']}"
        for n, p in enumerate(doc["spec"]["configPatches"]):
            at = f"{name} configPatches[{n}]"
            apply_to, op, value = p["applyTo"], p["patch"]["operation"], p["patch"].get("value")
            match = p.get("match", {})
            if apply_to == "BOOTSTRAP" and op == "MERGE":
                proto_merge(cfg, value)
            elif apply_to == "CLUSTER" and op == "ADD":
                static.setdefault("clusters", []).append(copy.deepcopy(value))
            elif apply_to in ("HTTP_FILTER", "NETWORK_FILTER", "VIRTUAL_HOST"):
                port = (match.get("listener") or match.get("routeConfiguration") or {}).get("portNumber")
                listeners = [
                    l for l in static["listeners"]
                    if l["address"]["socket_address"].get("port_value") == port
                    or l.get("name", "").endswith(f"_{port}")
                ]
                if not listeners:
                    raise CheckError(f"{at}: no listener on port {port}")
                hcm = the_hcm(listeners[0], at)
                if apply_to == "NETWORK_FILTER" and op == "MERGE":
                    proto_merge(hcm, value["typed_config"])
                elif apply_to == "HTTP_FILTER":
                    sub = match["listener"]["filterChain"]["filter"]["subFilter"]["name"]
                    filters = hcm["http_filters"]
                    i = [k for k, f in enumerate(filters) if f["name"] == sub]
                    if not i:
                        raise CheckError(f"{at}: no http filter {sub!r}")
                    if op == "INSERT_BEFORE":
                        filters.insert(i[0], copy.deepcopy(value))
                    elif op == "MERGE":
                        proto_merge(filters[i[0]], value)
                    else:
                        raise CheckError(f"{at}: operation {op} not understood here")
                elif apply_to == "VIRTUAL_HOST" and op == "MERGE":
                    for vh in hcm["route_config"]["virtual_hosts"]:
                        proto_merge(vh, value)
                elif apply_to == "VIRTUAL_HOST" and op == "ADD":
                    hcm["route_config"]["virtual_hosts"].insert(0, copy.deepcopy(value))
                else:
                    raise CheckError(f"{at}: {apply_to}/{op} not understood here")
            else:
                raise CheckError(f"{at}: {apply_to}/{op} not understood here")
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


ISTIO_HEADER = """\
# codexmesh in an Istio ingress gateway: EnvoyFilter patches generated from the Envoy fragments
# (scripts/render-deploy.sh; do not edit by hand: change envoy/bootstrap.template.yaml and
# render again). The tests assemble these patches into a gateway config and load it with a real
# Envoy (tests/e2e/tests/deploy.rs).
#
# Before applying:
# - publish codexmesh_filter.wasm (from the codexmesh image, /opt/codexmesh/) at an HTTP URL the
#   gateway reaches and render this file for it and its digest:
#     .venv/bin/python tests/deploy/deploy_check.py istio-render envoy/fragments OUT.yaml \\
#       http://HOST[:PORT]/codexmesh_filter.wasm "$(sha256sum codexmesh_filter.wasm | cut -d' ' -f1)"
#   (this copy names http://codexmesh-wasm.codexmesh.svc.cluster.local/ and an all-zero sha256:
#   Envoy refuses a module whose digest differs, and the gateway's listener stays warming,
#   serving nothing, until the module it fetched matches. Envoy 1.40 logs "Wasm remote code
#   fetch is unstable" for every remote module: the tests serve through it all the same);
# - give the gateway pods CODEXMESH_PUSH_TOKEN from the Secret codexmesh-secrets (key
#   push-token), e.g. in the gateway's Helm values or Deployment `env` (secretKeyRef): the
#   module reads it through host_env_keys, so it never appears in /config_dump;
# - the control plane's gRPC Service (deploy/kustomize: codexmesh-grpc in namespace codexmesh)
#   must be reachable from the gateway; change the address in codexmesh_control_plane if not.
# Pool-key traffic is served for the host codexmesh.example.com on the gateway's port 8080
# (the Gateway server below); the filter is turned off on every other virtual host there.
# A WasmPlugin cannot do this: it reaches only the listener's filter chain, and the module also
# needs the bootstrap singleton and the upstream clusters' filters.
"""
ISTIO_NAMESPACE = "istio-system"
ISTIO_SELECTOR = {"istio": "ingressgateway"}
ISTIO_PORT = 8080
ISTIO_HOST = "codexmesh.example.com"
WASM_URL = "http://codexmesh-wasm.codexmesh.svc.cluster.local/codexmesh_filter.wasm"
WASM_SHA256 = "0" * 64
WASM_SOURCE_CLUSTER = "codexmesh_wasm_source"


def remote_code(wasm_holder, url, sha256):
    """Swaps a wasm config's local file for the remote module with its sha256."""
    vm = wasm_holder["vm_config"]
    vm["code"] = {
        "remote": {
            "http_uri": {"uri": url, "cluster": WASM_SOURCE_CLUSTER, "timeout": "30s"},
            "sha256": sha256,
            "retry_policy": {"num_retries": 10},
        }
    }


def istio_render(fragments, out, url=WASM_URL, sha256=WASM_SHA256):
    if not url.startswith("http://") or len(sha256) != 64:
        raise CheckError(f"istio-render: {url!r} is not an http:// URL or {sha256!r} not a sha256")
    authority = url.split("/")[2]
    wasm_host, _, wasm_port = authority.rpartition(":") if ":" in authority else (authority, "", "80")
    def frag(name):
        return load_yaml(os.path.join(fragments, name))

    boot, clusters, hcm_frag, routes = (
        frag("bootstrap.yaml"),
        frag("clusters.yaml"),
        frag("http_connection_manager.yaml"),
        frag("routes.yaml"),
    )
    for ext in boot["bootstrap_extensions"]:
        remote_code(ext["typed_config"]["config"], url, sha256)
    static_clusters, upstream_clusters = [], []
    for c in clusters["clusters"]:
        for opts in c.get("typed_extension_protocol_options", {}).values():
            for f in opts.get("http_filters", []):
                if "vm_config" in f["typed_config"].get("config", {}):
                    remote_code(f["typed_config"]["config"], url, sha256)
        (static_clusters if c["name"] == "codexmesh_control_plane" else upstream_clusters).append(c)
    static_clusters.append({
        "name": WASM_SOURCE_CLUSTER,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": WASM_SOURCE_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": wasm_host, "port_value": int(wasm_port)}}}}]}],
        },
    })
    for f in hcm_frag["http_filters_before_router"]:
        remote_code(f["typed_config"]["config"], url, sha256)
    listener_match = {
        "context": "GATEWAY",
        "listener": {
            "portNumber": ISTIO_PORT,
            "filterChain": {"filter": {"name": HCM, "subFilter": {"name": ROUTER}}},
        },
    }
    # Istio's gateway already upgrades WebSockets; a second websocket entry is refused.
    settings = {k: v for k, v in hcm_frag["settings"].items() if k != "upgrade_configs"}
    vhost = {"name": "codexmesh", "domains": [ISTIO_HOST, f"{ISTIO_HOST}:*"]}
    vhost.update(routes["virtual_host_settings"])
    vhost["routes"] = routes["routes"]
    route_match = {"context": "GATEWAY", "routeConfiguration": {"portNumber": ISTIO_PORT}}
    patches = [
        # The singleton, its push channel and where the module comes from: bootstrap objects,
        # there before any xDS cluster.
        {"applyTo": "BOOTSTRAP", "patch": {"operation": "MERGE", "value": {
            "bootstrap_extensions": boot["bootstrap_extensions"],
            "stats_config": boot["stats_config"],
            "static_resources": {"clusters": static_clusters},
        }}},
    ]
    for c in upstream_clusters:
        patches.append({"applyTo": "CLUSTER", "match": {"context": "GATEWAY"},
                        "patch": {"operation": "ADD", "value": c}})
    patches += [
        {"applyTo": "NETWORK_FILTER", "match": {"context": "GATEWAY", "listener": {
            "portNumber": ISTIO_PORT, "filterChain": {"filter": {"name": HCM}}}},
         "patch": {"operation": "MERGE", "value": {"name": HCM, "typed_config": dict(
             {"@type": "type.googleapis.com/envoy.extensions.filters.network."
                       "http_connection_manager.v3.HttpConnectionManager"}, **settings)}}},
    ]
    for f in hcm_frag["http_filters_before_router"]:
        patches.append({"applyTo": "HTTP_FILTER", "match": listener_match,
                        "patch": {"operation": "INSERT_BEFORE", "value": f}})
    patches += [
        {"applyTo": "HTTP_FILTER", "match": listener_match,
         "patch": {"operation": "MERGE", "value": {"name": ROUTER,
                                                    "typed_config": hcm_frag["router_typed_config"]}}},
        # Every virtual host already on the port: the filter is off there.
        {"applyTo": "VIRTUAL_HOST", "match": route_match, "patch": {"operation": "MERGE", "value": {
            "typed_per_filter_config": hcm_frag["disable_on_your_routes"]}}},
        {"applyTo": "VIRTUAL_HOST", "match": route_match,
         "patch": {"operation": "ADD", "value": vhost}},
    ]
    envoyfilter = {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "codexmesh", "namespace": ISTIO_NAMESPACE},
        "spec": {"workloadSelector": {"labels": ISTIO_SELECTOR}, "configPatches": patches},
    }
    gateway = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "codexmesh", "namespace": ISTIO_NAMESPACE},
        "spec": {"selector": ISTIO_SELECTOR, "servers": [{
            "port": {"number": 80, "name": "http-codexmesh", "protocol": "HTTP"},
            "hosts": [ISTIO_HOST]}]},
    }
    with open(out, "w", encoding="utf-8") as f:
        f.write(ISTIO_HEADER)
        yaml.safe_dump_all([gateway, envoyfilter], f, sort_keys=False, width=100)


# -------------------------------------------------------------------------------- validation


def validate_k8s(source, path):
    import jsonschema
    import kubernetes_validate

    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if not docs:
        raise CheckError(f"{source}: rendered no object")
    with open(ISTIO_SCHEMA, encoding="utf-8") as f:
        istio_schema = json.load(f)
    failures, kinds = [], []
    for doc in docs:
        ident = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        kinds.append(ident)
        try:
            if doc.get("apiVersion", "").startswith("networking.istio.io/"):
                # The most relevant error of the kind's branch, not "is not valid under oneOf".
                kind_schema = [b for b in istio_schema["oneOf"]
                               if b["properties"]["kind"]["const"] == doc.get("kind")]
                if not kind_schema:
                    raise CheckError(f"{source}: {ident}: no schema for this Istio kind")
                jsonschema.validate(doc, kind_schema[0])
            else:
                for version in KUBERNETES_VERSIONS:
                    if version == "latest":
                        version = kubernetes_validate.latest_version()
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        at = ".".join(map(str, e.path))
                        failures.append(f"{source}: {ident}: Kubernetes {version}: {e.message} at {at}")
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{source}: {ident}: {e.message} at {'.'.join(map(str, e.path))}")
        except jsonschema.ValidationError as e:
            failures.append(f"{source}: {ident}: {e.message} at {'.'.join(map(str, e.absolute_path))}")
        except Exception as e:  # schema not found, version not supported: a failure too
            failures.append(f"{source}: {ident}: {type(e).__name__}: {e}")
    if failures:
        raise CheckError("\n".join(failures))
    versions = ", ".join(v if v != "latest" else kubernetes_validate.latest_version()
                         for v in KUBERNETES_VERSIONS)
    print(f"{source}: {len(docs)} objects valid (Kubernetes {versions}): {', '.join(kinds)}")


def main(argv):
    cmd, args = (argv[1], argv[2:]) if len(argv) > 1 else ("", [])
    try:
        if cmd == "fragments" and len(args) == 2:
            cut_fragments(*args)
        elif cmd == "merge" and len(args) == 5:
            merge(*args)
        elif cmd == "to-json" and len(args) == 1:
            with open(args[0], encoding="utf-8") as f:
                print(json.dumps([d for d in yaml.safe_load_all(f) if d]))
        elif cmd == "istio-render" and len(args) in (2, 4):
            istio_render(*args)
        elif cmd == "istio-assemble" and len(args) == 3:
            istio_assemble(*args)
        elif cmd == "validate-k8s" and len(args) == 2:
            validate_k8s(*args)
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
        print(f"error: {cmd} {' '.join(args)}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
