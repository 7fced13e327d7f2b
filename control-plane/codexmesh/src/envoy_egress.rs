//! The Envoy side of the accounts' egress proxies: what the bootstrap gains for each proxy in
//! `envoy_egress_proxies` (`envoy-bootstrap --egress-proxy`).
//!
//! Rules kept here:
//! - Without proxies the bootstrap is byte for byte what the template renders: nothing here runs.
//! - Proxy `i` (from 1, in the list's order) is `e<i>`, the name the downstream filter routes by
//!   (`x-codexmesh-egress`, `filter/core/src/egress.rs`). Each upstream cluster gets a copy
//!   `<cluster>_e<i>` that differs only in where it connects (an internal listener) and in its
//!   upstream filter's `egress`, which makes that filter inject only that proxy's accounts.
//! - The tunnel: the copy's connection (TLS, SNI and certificate check as on the direct cluster,
//!   end to end with the provider) goes to the internal listener `codexmesh_egress_e<i>_<target>`,
//!   whose `tcp_proxy` opens `CONNECT host:port` (the upstream's name, not an address) through the
//!   cluster `codexmesh_egress_proxy_e<i>` (the proxy; a DNS name is re-resolved). A proxy that
//!   refuses or is down fails the attempt: nothing falls back to a direct connection.
//! - Each pooled route's `cluster:` becomes a matcher on `x-codexmesh-egress` whose default is the
//!   direct cluster: a request the filter did not mark leaves directly, as before.

use codexmesh_model::egress::egress_proxy_host_port;
use codexmesh_proto::names::{egress_name, EGRESS_HEADER};

/// One upstream cluster of the template and the upstream it reaches.
pub struct PooledCluster<'a> {
    pub name: &'static str,
    /// Names the internal listener: clusters reaching the same upstream share one.
    pub target_name: &'static str,
    /// The upstream as the CONNECT names it: `host:port` (`[v6]:port`).
    pub authority: &'a str,
}

/// Adds the proxies' listeners and clusters to `rendered` (the template, every placeholder
/// filled) and points the pooled routes at them. `proxies` are canonical URLs.
pub fn add_egress(
    rendered: String,
    proxies: &[String],
    clusters: &[PooledCluster<'_>],
    buffer_limit_bytes: u64,
) -> String {
    if proxies.is_empty() {
        return rendered;
    }
    let mut out = rendered;
    // The internal listeners need Envoy's internal-listener extension.
    out = out.replacen(
        "static_resources:\n",
        "# Egress proxies (envoy_egress_proxies): the tunnels' internal listeners.\n\
         - name: envoy.bootstrap.internal_listener\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener\n\
         static_resources:\n",
        1,
    );
    // Before: the direct clusters' blocks as rendered, copied per proxy below.
    let blocks: Vec<(&PooledCluster<'_>, String)> = clusters
        .iter()
        .filter_map(|c| cluster_block(&out, c.name).map(|b| (c, b)))
        .collect();
    for c in clusters {
        out = out.replace(
            &format!("                  cluster: {}\n", c.name),
            &route_matcher(c.name, proxies.len()),
        );
    }
    // The filter's mark steers Envoy only: it never reaches an upstream.
    out = out.replacen(
        "              domains: [\"*\"]\n",
        &format!(
            "              domains: [\"*\"]\n              request_headers_to_remove: [{EGRESS_HEADER}]\n"
        ),
        1,
    );
    let mut listeners = String::new();
    let mut added_clusters = String::new();
    for (index, url) in proxies.iter().enumerate() {
        let egress = egress_name(index);
        let mut targets: Vec<&str> = Vec::new();
        for c in clusters {
            if targets.contains(&c.target_name) {
                continue;
            }
            targets.push(c.target_name);
            listeners.push_str(&internal_listener(
                &egress,
                c.target_name,
                c.authority,
                buffer_limit_bytes,
            ));
        }
        added_clusters.push_str(&proxy_cluster(&egress, url));
        for (c, block) in &blocks {
            added_clusters.push_str(&egress_copy(block, c, &egress, url));
        }
    }
    out = out.replacen("  clusters:\n", &format!("{listeners}  clusters:\n"), 1);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&added_clusters);
    out
}

/// The text of cluster `name` (from its `- name:` line to the next cluster's).
fn cluster_block(rendered: &str, name: &str) -> Option<String> {
    let head = format!("  - name: {name}\n");
    let start = rendered.find(&head)?;
    let rest = &rendered[start + head.len()..];
    let end = rest
        .find("\n  - name: ")
        .map_or(rendered.len(), |i| start + head.len() + i + 1);
    Some(rendered[start..end].to_owned())
}

/// A route's cluster choice: the proxy's copy for `e<i>`, the direct cluster otherwise.
fn route_matcher(cluster: &str, proxies: usize) -> String {
    let action = |name: &str, to: &str| {
        format!(
            "action:\n                                    name: {name}\n                                    typed_config:\n                                      \"@type\": type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.ClusterAction\n                                      cluster: {to}\n"
        )
    };
    let mut entries = String::new();
    for index in 0..proxies {
        let egress = egress_name(index);
        entries.push_str(&format!(
            "                                \"{egress}\":\n                                  {}",
            action(&egress, &format!("{cluster}_{egress}"))
        ));
    }
    format!(
        "                  # The egress proxy the filter chose ({EGRESS_HEADER}); direct without it.
                  inline_cluster_specifier_plugin:
                    extension:
                      name: envoy.router.cluster_specifier_plugin.matcher
                      typed_config:
                        \"@type\": type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.MatcherClusterSpecifier
                        cluster_matcher:
                          matcher_tree:
                            input:
                              name: egress
                              typed_config:
                                \"@type\": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput
                                header_name: {EGRESS_HEADER}
                            exact_match_map:
                              map:
{entries}                          on_no_match:
                            {}",
        action("direct", cluster).replace(
            "\n                                    ",
            "\n                              "
        )
    )
}

/// The internal listener of proxy `egress` towards one upstream: CONNECT `authority` through
/// the proxy's cluster.
fn internal_listener(egress: &str, target: &str, authority: &str, buffer_limit: u64) -> String {
    format!(
        "  # Egress proxy {egress} towards the {target} upstream: the bytes of the cluster
  # codexmesh_upstream*_{egress} (TLS with the upstream inside) tunnel through CONNECT.
  - name: codexmesh_egress_{egress}_{target}
    internal_listener: {{}}
    per_connection_buffer_limit_bytes: {buffer_limit}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: codexmesh_egress_{egress}_{target}
          cluster: codexmesh_egress_proxy_{egress}
          tunneling_config:
            hostname: \"{authority}\"
"
    )
}

/// The cluster of the proxy itself (HTTP/1.1, the CONNECT's carrier).
fn proxy_cluster(egress: &str, url: &str) -> String {
    // `url` is canonical (the settings and the flag are checked by the same parser).
    let (host, port) = egress_proxy_host_port(url).unwrap_or_default();
    let kind = if host.parse::<std::net::IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    format!(
        "  # Egress proxy {egress}: {url}
  - name: codexmesh_egress_proxy_{egress}
    type: {kind}
    dns_lookup_family: V4_PREFERRED
    connect_timeout: 10s
    circuit_breakers:
      thresholds:
      - priority: DEFAULT
        max_connections: 1000000
        max_pending_requests: 1000000
        max_requests: 1000000
        max_retries: 1000000
    load_assignment:
      cluster_name: codexmesh_egress_proxy_{egress}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: \"{host}\", port_value: {port} }}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http_protocol_options: {{}}
"
    )
}

/// `block` (a direct cluster) as proxy `egress`'s copy: connects to the internal listener, and
/// its upstream filter serves only that proxy's accounts.
fn egress_copy(block: &str, c: &PooledCluster<'_>, egress: &str, url: &str) -> String {
    let name = format!("{}_{egress}", c.name);
    let mut lines: Vec<String> = Vec::new();
    for line in block.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if line == format!("  - name: {}", c.name) {
            lines.push(format!("  - name: {name}"));
        } else if trimmed == format!("cluster_name: {}", c.name) {
            lines.push(format!("{indent}cluster_name: {name}"));
        } else if trimmed.starts_with("type: ") && indent.len() == 4 {
            lines.push(format!("{indent}type: STATIC"));
        } else if trimmed.starts_with("dns_lookup_family:") && indent.len() == 4 {
            continue;
        } else if trimmed.starts_with("socket_address: {") {
            lines.push(format!(
                "{indent}envoy_internal_address: {{ server_listener_name: codexmesh_egress_{egress}_{} }}",
                c.target_name
            ));
        } else if trimmed.starts_with("value: '{\"role\":\"upstream\"") && line.ends_with("}'") {
            let head = &line[..line.len() - 2];
            lines.push(format!("{head},\"egress\":\"{url}\"}}'"));
        } else {
            lines.push(line.to_owned());
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// The proxies as the filters' configuration lists them (`egress_proxies`): a JSON array.
pub fn downstream_list(proxies: &[String]) -> String {
    serde_json::to_string(proxies).unwrap_or_else(|_| "[]".to_owned())
}
