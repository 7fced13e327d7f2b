//! Renders the Envoy bootstrap that `codexmesh up` (and the end-to-end tests) run Envoy with,
//! from `envoy/bootstrap.template.yaml`. Nothing secret is rendered: the push token reaches the
//! wasm service through Envoy's environment, credentials through the gRPC stream.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use codexmesh_proto::names;

use crate::envoy_egress::{self, PooledCluster};

const TEMPLATE: &str = include_str!("../../../envoy/bootstrap.template.yaml");

/// Everything the generated bootstrap depends on.
#[derive(Debug, Clone)]
pub struct BootstrapParams {
    /// Envoy node id, reported to the control plane in SubscribeRequest.
    pub node_id: String,
    /// The data-path listener clients talk to.
    pub listen: SocketAddr,
    /// Envoy's admin interface (keep it on loopback).
    pub admin_listen: SocketAddr,
    /// Where Envoy reaches the control plane's gRPC server.
    pub control_plane: ControlPlaneTarget,
    /// Further control-plane replicas: endpoints of the same cluster next to `control_plane`,
    /// so Envoy reconnects to another replica when one goes away.
    pub more_control_planes: Vec<ControlPlaneTarget>,
    /// Upstream base, e.g. `https://chatgpt.com/backend-api`.
    pub upstream_base_url: String,
    /// Anthropic's API base (`claude_base_url`), e.g. `https://api.anthropic.com`.
    pub claude_base_url: String,
    /// Google Code Assist's base (`gemini_base_url`), e.g. `https://cloudcode-pa.googleapis.com`.
    pub gemini_base_url: String,
    /// The built `codexmesh_filter.wasm`.
    pub wasm_path: PathBuf,
    /// A pooled WebSocket connection is closed after this long (the upstream closes at 60
    /// minutes anyway).
    pub websocket_max_lifetime_secs: u64,
    /// Request bodies over this are refused with 413 (the filter by content length, Envoy while
    /// buffering).
    pub max_request_body_bytes: u64,
    /// The CA bundle upstream certificates must chain to ([`SYSTEM_CA_BUNDLE`] unless the
    /// settings' `upstream_ca_file` names a private one).
    pub upstream_ca_file: Option<PathBuf>,
    /// TLS (and a client certificate) to the control plane; plain gRPC when `None`.
    pub control_plane_tls: Option<ControlPlaneTls>,
    /// Envoy's limits against slow and hostile clients.
    pub limits: EnvoyLimits,
    /// The accounts' egress proxies this Envoy tunnels through (canonical `http://host:port`,
    /// `envoy_egress_proxies`): each gets its own clusters (`crate::envoy_egress`).
    pub egress_proxies: Vec<String>,
}

/// Envoy's limits against slow and hostile clients (the bootstrap's overload manager, buffer
/// limits and HTTP/1 and HTTP/2 limits; the README's "Limits against slow and hostile
/// clients"). Rules kept: every value is one an operator can set (the `envoy_*` settings), and
/// the bootstrap renders them only where the template names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyLimits {
    /// `per_connection_buffer_limit_bytes` of the listener and the upstream clusters: how much
    /// Envoy queues for one connection before it stops reading the other side (watermarks).
    pub buffer_limit_bytes: u64,
    /// The heap the overload manager's `fixed_heap` monitor measures against.
    pub max_heap_bytes: u64,
    /// Open downstream connections at once (`global_downstream_max_connections`).
    pub max_connections: u64,
    /// `max_request_headers_kb` (HTTP/1 and HTTP/2): a larger header block gets 431.
    pub max_request_headers_kb: u64,
    /// `common_http_protocol_options.max_headers_count`: more headers get 431.
    pub max_headers_count: u64,
    /// `request_headers_timeout`: a header block not complete in this long is refused.
    pub request_headers_timeout_secs: u64,
    /// `http2_protocol_options.max_concurrent_streams` of a downstream HTTP/2 connection.
    pub http2_max_concurrent_streams: u64,
}

impl Default for EnvoyLimits {
    /// The settings' defaults (control-plane/engine/src/config.rs).
    fn default() -> Self {
        Self {
            buffer_limit_bytes: 32 << 10,
            max_heap_bytes: 1 << 30,
            max_connections: 10_000,
            max_request_headers_kb: 60,
            max_headers_count: 100,
            request_headers_timeout_secs: 10,
            http2_max_concurrent_streams: 100,
        }
    }
}

impl EnvoyLimits {
    /// The template's placeholders these limits fill.
    fn vars(&self) -> [(&'static str, String); 7] {
        [
            ("buffer_limit_bytes", self.buffer_limit_bytes.to_string()),
            ("max_heap_bytes", self.max_heap_bytes.to_string()),
            ("max_connections", self.max_connections.to_string()),
            (
                "max_request_headers_kb",
                self.max_request_headers_kb.to_string(),
            ),
            ("max_headers_count", self.max_headers_count.to_string()),
            (
                "request_headers_timeout",
                format!("{}s", self.request_headers_timeout_secs),
            ),
            (
                "http2_max_concurrent_streams",
                self.http2_max_concurrent_streams.to_string(),
            ),
        ]
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootstrapError {
    #[error("upstream base URL {0:?} is not an http(s) URL with a host (e.g. https://chatgpt.com/backend-api)")]
    BadUpstreamUrl(String),
    #[error("node id {0:?} must be 1-128 characters of [A-Za-z0-9._-]")]
    BadNodeId(String),
    #[error("wasm path {0:?} is not valid UTF-8")]
    BadWasmPath(PathBuf),
    #[error("control-plane address {0:?} must be HOST:PORT (an IP or a DNS name, port 1-65535)")]
    BadControlPlane(String),
    #[error("TLS file path {0:?} is not valid UTF-8")]
    BadTlsPath(PathBuf),
    #[error("control-plane TLS server name {0:?} must be a DNS name or an IP")]
    BadServerName(String),
}

/// Where Envoy dials the control plane: an IP (a STATIC cluster) or a DNS name (STRICT_DNS,
/// re-resolved, so a container or Kubernetes service name works without a fixed address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneTarget {
    pub host: String,
    pub port: u16,
}

impl From<SocketAddr> for ControlPlaneTarget {
    fn from(addr: SocketAddr) -> Self {
        Self {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl ControlPlaneTarget {
    /// `HOST:PORT`, `[v6]:PORT` or `IP:PORT`.
    pub fn parse(text: &str) -> Result<Self, BootstrapError> {
        let bad = || BootstrapError::BadControlPlane(text.to_owned());
        if let Ok(addr) = text.trim().parse::<SocketAddr>() {
            return (addr.port() != 0).then(|| addr.into()).ok_or_else(bad);
        }
        let (host, port) = text.trim().rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }
}

/// The pieces of the upstream base URL the cluster and route need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" or "/backend-api").
    pub base_path: String,
}

impl UpstreamTarget {
    pub fn parse(url: &str) -> Result<Self, BootstrapError> {
        let bad = || BootstrapError::BadUpstreamUrl(url.to_string());
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') || path.contains(['?', '#']) {
            return Err(bad());
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => default_port,
                None => return Err(bad()),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
                None => (authority.to_string(), default_port),
            }
        };
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        if !host_ok || port == 0 {
            return Err(bad());
        }
        Ok(Self {
            tls,
            host,
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// A DNS name is re-resolved (LOGICAL_DNS); an IP is STATIC.
    fn cluster_type(&self) -> &'static str {
        if self.host.parse::<IpAddr>().is_ok() {
            "STATIC"
        } else {
            "LOGICAL_DNS"
        }
    }

    /// The cluster's TLS transport socket (SNI and SAN check on the host, certificates from
    /// `trusted_ca`), or nothing.
    fn tls_socket(&self, trusted_ca: &str) -> String {
        if !self.tls {
            return String::new();
        }
        tls_transport_socket(&self.host, trusted_ca, "[h2, http/1.1]", None)
    }

    /// TLS upstreams negotiate h2 by ALPN; plain ones (the simulator, an egress proxy) speak h1.
    fn protocol(&self) -> &'static str {
        if self.tls {
            "        auto_config:\n          http_protocol_options: {}\n          http2_protocol_options: {}"
        } else {
            "        explicit_http_config:\n          http_protocol_options: {}"
        }
    }

    /// `host:port` as a CONNECT request names it (the port always written).
    fn connect_authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// The system CA bundle Envoy trusts for upstreams unless `upstream_ca_file` names another.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// An `UpstreamTlsContext` transport socket (at a cluster's indentation): the peer's certificate
/// must chain to `trusted_ca` and name `host` (a DNS SAN, or an IP SAN for an address; SNI only
/// for a name); `client` is a certificate chain and key Envoy presents.
fn tls_transport_socket(
    host: &str,
    trusted_ca: &str,
    alpn: &str,
    client: Option<(&str, &str)>,
) -> String {
    let is_ip = host.parse::<IpAddr>().is_ok();
    let sni = if is_ip {
        String::new()
    } else {
        format!("        sni: {}\n", quote(host))
    };
    let san_type = if is_ip { "IP_ADDRESS" } else { "DNS" };
    let certs = match client {
        Some((chain, key)) => format!(
            "          tls_certificates:\n          - certificate_chain: {{ filename: {} }}\n            private_key: {{ filename: {} }}\n",
            quote(chain),
            quote(key)
        ),
        None => String::new(),
    };
    let ca = if trusted_ca == SYSTEM_CA_BUNDLE {
        // As it always was (the goldens keep the bare path).
        trusted_ca.to_owned()
    } else {
        quote(trusted_ca)
    };
    format!(
        "    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n{sni}        common_tls_context:\n          alpn_protocols: {alpn}\n{certs}          validation_context:\n            trusted_ca: {{ filename: {ca} }}\n            match_typed_subject_alt_names:\n            - san_type: {san_type}\n              matcher: {{ exact: {} }}",
        quote(host)
    )
}

/// How Envoy reaches the control plane over TLS (`codexmesh envoy-bootstrap
/// --control-plane-ca`): the CA its certificate must chain to, the name it must carry, and the
/// client certificate Envoy presents (required when `serve` has `grpc_tls_client_ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneTls {
    /// PEM bundle the control plane's certificate must chain to.
    pub ca: PathBuf,
    /// The name (DNS or IP) its certificate must carry; the dialed host when `None`.
    pub server_name: Option<String>,
    /// Certificate chain and private key (PEM files) Envoy presents.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl ControlPlaneTls {
    fn render(&self, dialed_host: &str) -> Result<String, BootstrapError> {
        let path = |p: &PathBuf| {
            p.to_str()
                .map(str::to_owned)
                .ok_or_else(|| BootstrapError::BadTlsPath(p.clone()))
        };
        let ca = path(&self.ca)?;
        let client = match &self.client_cert {
            Some((chain, key)) => Some((path(chain)?, path(key)?)),
            None => None,
        };
        let name = self.server_name.as_deref().unwrap_or(dialed_host);
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        if !name_ok {
            return Err(BootstrapError::BadServerName(name.to_owned()));
        }
        let socket = tls_transport_socket(
            name,
            &ca,
            "[h2]",
            client.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
        );
        Ok(format!("\n{socket}"))
    }
}

/// YAML double-quoted scalar (JSON string escaping is a subset YAML accepts).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Renders the bootstrap as YAML.
pub fn render(params: &BootstrapParams) -> Result<String, BootstrapError> {
    let node_ok = !params.node_id.is_empty()
        && params.node_id.len() <= 128
        && params
            .node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !node_ok {
        return Err(BootstrapError::BadNodeId(params.node_id.clone()));
    }
    let wasm = params
        .wasm_path
        .to_str()
        .ok_or_else(|| BootstrapError::BadWasmPath(params.wasm_path.clone()))?;
    let upstream = UpstreamTarget::parse(&params.upstream_base_url)?;
    let claude = UpstreamTarget::parse(&params.claude_base_url)?;
    let gemini = UpstreamTarget::parse(&params.gemini_base_url)?;
    let cluster_type = upstream.cluster_type();
    let trusted_ca = match &params.upstream_ca_file {
        Some(p) => p
            .to_str()
            .ok_or_else(|| BootstrapError::BadTlsPath(p.clone()))?
            .to_owned(),
        None => SYSTEM_CA_BUNDLE.to_owned(),
    };
    let tls = upstream.tls_socket(&trusted_ca);
    let control_plane_tls = match &params.control_plane_tls {
        Some(t) => t.render(&params.control_plane.host)?,
        None => String::new(),
    };
    let protocol = upstream.protocol();
    let tls_ws = tls.replace(
        "alpn_protocols: [h2, http/1.1]",
        "alpn_protocols: [http/1.1]",
    );
    let service_config = serde_json_string(&params.node_id, &params.egress_proxies);
    let downstream_config = if params.egress_proxies.is_empty() {
        format!(
            "{{\"role\":\"downstream\",\"max_request_body_bytes\":{}}}",
            params.max_request_body_bytes
        )
    } else {
        format!(
            "{{\"role\":\"downstream\",\"max_request_body_bytes\":{},\"egress_proxies\":{}}}",
            params.max_request_body_bytes,
            envoy_egress::downstream_list(&params.egress_proxies)
        )
    };
    let all_control_planes =
        || std::iter::once(&params.control_plane).chain(&params.more_control_planes);
    let control_plane_type = if all_control_planes().all(ControlPlaneTarget::is_ip) {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    // One endpoint renders exactly as before; each further replica is one more lb_endpoint.
    let more_control_plane_endpoints: String = params
        .more_control_planes
        .iter()
        .map(|t| {
            format!(
                "\n        - endpoint:\n            address:\n              socket_address: \
                 {{ address: {}, port_value: {} }}",
                quote(&t.host),
                t.port
            )
        })
        .collect();
    let vars: [(&str, String); 26] = [
        ("vm_id", names::VM_ID.to_string()),
        (
            "control_plane_cluster",
            names::CONTROL_PLANE_CLUSTER.to_string(),
        ),
        ("push_token_env", names::PUSH_TOKEN_ENV.to_string()),
        ("node_id", quote(&params.node_id)),
        ("admin_host", quote(&params.admin_listen.ip().to_string())),
        ("admin_port", params.admin_listen.port().to_string()),
        ("listen_host", quote(&params.listen.ip().to_string())),
        ("listen_port", params.listen.port().to_string()),
        ("control_plane_host", quote(&params.control_plane.host)),
        ("control_plane_port", params.control_plane.port.to_string()),
        ("control_plane_cluster_type", control_plane_type.to_string()),
        ("more_control_plane_endpoints", more_control_plane_endpoints),
        ("control_plane_tls", control_plane_tls),
        ("wasm_path", quote(wasm)),
        ("service_config", quote(&service_config)),
        (
            "upstream_prefix",
            quote(&format!("{}/", upstream.base_path)),
        ),
        ("upstream_authority", quote(&upstream.authority())),
        ("upstream_cluster_type", cluster_type.to_string()),
        ("upstream_host", quote(&upstream.host)),
        ("upstream_port", upstream.port.to_string()),
        ("upstream_tls", tls),
        ("upstream_protocol", protocol.to_string()),
        ("upstream_tls_ws", tls_ws),
        ("downstream_config", quote(&downstream_config)),
        (
            "max_request_body_bytes",
            params.max_request_body_bytes.to_string(),
        ),
        (
            "websocket_max_lifetime",
            format!("{}s", params.websocket_max_lifetime_secs),
        ),
    ];
    let mut out = TEMPLATE.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), &value);
    }
    for (name, value) in params.limits.vars() {
        out = out.replace(&format!("{{{{{name}}}}}"), &value);
    }
    // Claude's and Gemini's clusters and routes, exactly as the Codex upstream's: the base URL's
    // path goes in front of the client's path (`/v1/…`, `/v1internal:…`).
    for (provider, target, path) in [
        ("claude", &claude, "/v1/"),
        ("gemini", &gemini, "/v1internal:"),
    ] {
        let vars: [(&str, String); 7] = [
            ("cluster_type", target.cluster_type().to_string()),
            ("host", quote(&target.host)),
            ("port", target.port.to_string()),
            ("tls", target.tls_socket(&trusted_ca)),
            ("protocol", target.protocol().to_string()),
            ("authority", quote(&target.authority())),
            ("prefix", quote(&format!("{}{path}", target.base_path))),
        ];
        for (name, value) in vars {
            out = out.replace(&format!("{{{{{provider}_{name}}}}}"), &value);
        }
    }
    let (codex_at, claude_at, gemini_at) = (
        upstream.connect_authority(),
        claude.connect_authority(),
        gemini.connect_authority(),
    );
    let pooled = [
        PooledCluster {
            name: "codexmesh_upstream",
            target_name: "codex",
            authority: &codex_at,
        },
        PooledCluster {
            name: "codexmesh_upstream_ws",
            target_name: "codex",
            authority: &codex_at,
        },
        PooledCluster {
            name: "codexmesh_upstream_claude",
            target_name: "claude",
            authority: &claude_at,
        },
        PooledCluster {
            name: "codexmesh_upstream_gemini",
            target_name: "gemini",
            authority: &gemini_at,
        },
    ];
    Ok(envoy_egress::add_egress(
        out,
        &params.egress_proxies,
        &pooled,
        params.limits.buffer_limit_bytes,
    ))
}

/// The service's plugin configuration (JSON; no secrets). The egress proxies (when any) are
/// told to the control plane when subscribing.
fn serde_json_string(node_id: &str, egress_proxies: &[String]) -> String {
    let egress = if egress_proxies.is_empty() {
        String::new()
    } else {
        format!(
            ",\"egress_proxies\":{}",
            envoy_egress::downstream_list(egress_proxies)
        )
    };
    format!(
        "{{\"role\":\"service\",\"node_id\":{},\"control_plane_cluster\":{},\"push_token_env\":{}{egress}}}",
        quote(node_id),
        quote(names::CONTROL_PLANE_CLUSTER),
        quote(names::PUSH_TOKEN_ENV)
    )
}

pub const DEFAULT_NODE_ID: &str = "codexmesh-local";

/// Envoy cannot dial an unspecified address: use loopback for 0.0.0.0 / [::].
pub fn dialable(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, addr.port())
}

/// Bootstrap parameters from the settings; `grpc` is where the control plane really listens.
pub fn from_settings(
    settings: &codexmesh_engine::config::Settings,
    node_id: &str,
    grpc: std::net::SocketAddr,
) -> BootstrapParams {
    BootstrapParams {
        node_id: node_id.to_owned(),
        listen: settings.gateway_listen,
        admin_listen: settings.envoy_admin_listen,
        control_plane: dialable(grpc).into(),
        more_control_planes: Vec::new(),
        upstream_base_url: settings.upstream_base_url.clone(),
        claude_base_url: settings.claude_base_url.clone(),
        gemini_base_url: settings.gemini_base_url.clone(),
        // Envoy resolves relative paths against its own working directory: pin it down.
        wasm_path: std::path::absolute(&settings.wasm_path)
            .unwrap_or_else(|_| settings.wasm_path.clone()),
        websocket_max_lifetime_secs: settings.websocket_max_lifetime.as_secs(),
        max_request_body_bytes: settings.max_request_body_bytes,
        limits: EnvoyLimits {
            buffer_limit_bytes: settings.envoy_buffer_limit_bytes,
            max_heap_bytes: settings.envoy_max_heap_bytes,
            max_connections: settings.envoy_max_connections,
            max_request_headers_kb: settings.envoy_max_request_headers_kb,
            max_headers_count: settings.envoy_max_headers_count,
            request_headers_timeout_secs: settings.envoy_request_headers_timeout.as_secs(),
            http2_max_concurrent_streams: settings.envoy_http2_max_concurrent_streams,
        },
        upstream_ca_file: settings
            .upstream_ca_file
            .as_ref()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        control_plane_tls: None,
        egress_proxies: settings.envoy_egress_proxies.as_slice().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(url: &str) -> BootstrapParams {
        BootstrapParams {
            node_id: "envoy-1".into(),
            listen: "127.0.0.1:18080".parse().unwrap(),
            admin_listen: "127.0.0.1:19901".parse().unwrap(),
            control_plane: ControlPlaneTarget::parse("127.0.0.1:18090").unwrap(),
            more_control_planes: Vec::new(),
            upstream_base_url: url.into(),
            claude_base_url: "https://api.anthropic.com".into(),
            gemini_base_url: "https://cloudcode-pa.googleapis.com".into(),
            wasm_path: "/tmp/x.wasm".into(),
            websocket_max_lifetime_secs: 3600,
            max_request_body_bytes: 1 << 20,
            limits: EnvoyLimits::default(),
            upstream_ca_file: None,
            control_plane_tls: None,
            egress_proxies: Vec::new(),
        }
    }

    #[test]
    fn parses_upstream_urls() {
        let t = UpstreamTarget::parse("https://chatgpt.com/backend-api").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.base_path.as_str()),
            (true, "chatgpt.com", 443, "/backend-api")
        );
        let t = UpstreamTarget::parse("http://127.0.0.1:9000/backend-api/").unwrap();
        assert_eq!(
            (t.port, t.base_path.as_str(), t.authority()),
            (9000, "/backend-api", "127.0.0.1:9000".to_string())
        );
        let t = UpstreamTarget::parse("http://[::1]:81").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.base_path.as_str()),
            ("::1", 81, "")
        );
        for bad in [
            "ftp://x",
            "http://",
            "https://u@h/",
            "http://h:0",
            "http://h:x",
            "chatgpt.com",
            "http://h/p?q",
        ] {
            assert!(UpstreamTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let yaml = render(&params("https://chatgpt.com/backend-api")).unwrap();
        assert!(!yaml.contains("{{"), "unfilled placeholder");
        assert!(yaml.contains("LOGICAL_DNS"));
        assert!(yaml.contains("UpstreamTlsContext"));
        assert!(yaml.contains("prefix_rewrite: \"/backend-api/\""));
        assert!(yaml.contains("host_rewrite_literal: \"chatgpt.com\""));
        let mut p = params("http://127.0.0.1:9000/backend-api");
        p.claude_base_url = "http://127.0.0.1:9000".into();
        p.gemini_base_url = "http://127.0.0.1:9000".into();
        let yaml = render(&p).unwrap();
        assert!(yaml.contains("type: STATIC") && !yaml.contains("UpstreamTlsContext"));
        assert!(yaml.contains("host_rewrite_literal: \"127.0.0.1:9000\""));
    }

    #[test]
    fn claude_and_gemini_get_their_own_clusters_and_routes() {
        let mut p = params("https://chatgpt.com/backend-api");
        p.claude_base_url = "https://anthropic.egress.example/claude/".into();
        p.gemini_base_url = "http://10.0.0.7:8443".into();
        let yaml = render(&p).unwrap();
        assert!(!yaml.contains("{{"), "unfilled placeholder");
        for (cluster, provider) in [
            ("codexmesh_upstream_claude", "claude"),
            ("codexmesh_upstream_gemini", "gemini"),
        ] {
            assert!(yaml.contains(&format!("- name: {cluster}")), "{cluster}");
            assert!(yaml.contains(&format!("cluster: {cluster}")), "{cluster}");
            assert!(yaml.contains(&format!(
                r#"value: '{{"role":"upstream","provider":"{provider}"}}'"#
            )));
        }
        assert!(yaml.contains("substitution: \"/claude/v1/\""));
        assert!(yaml.contains("host_rewrite_literal: \"anthropic.egress.example\""));
        assert!(yaml.contains("sni: \"anthropic.egress.example\""));
        assert!(yaml.contains("substitution: \"/v1internal:\""));
        assert!(yaml.contains("host_rewrite_literal: \"10.0.0.7:8443\""));
        assert!(yaml.contains("address: \"10.0.0.7\", port_value: 8443"));
        // Claude's model list only with anthropic-version; the Claude routes come before /v1/.
        let claude_models = yaml.find("- name: anthropic-version").unwrap();
        let v1 = yaml.find("match: { prefix: \"/v1/\" }").unwrap();
        let messages = yaml.find("match: { prefix: \"/v1/messages\" }").unwrap();
        assert!(messages < v1 && claude_models < v1);
        p.claude_base_url = "ftp://nope".into();
        assert!(render(&p).is_err());
    }

    #[test]
    fn the_control_plane_can_be_an_ip_or_a_dns_name() {
        let t = ControlPlaneTarget::parse("control-plane:18090").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("control-plane", 18090));
        let t = ControlPlaneTarget::parse("[::1]:9").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        for bad in [
            "control-plane",
            "h:0",
            "h:70000",
            ":80",
            "bad host:1",
            "-x:1",
            "a..b:1",
            "127.0.0.1:0",
        ] {
            assert!(ControlPlaneTarget::parse(bad).is_err(), "{bad}");
        }
        let mut p = params("http://127.0.0.1:1");
        let cluster = |yaml: &str| {
            let at = yaml.find("- name: codexmesh_control_plane").unwrap();
            yaml[at..].lines().nth(1).unwrap().trim().to_string()
        };
        assert_eq!(cluster(&render(&p).unwrap()), "type: STATIC");
        p.control_plane = ControlPlaneTarget::parse("codexmesh.mesh.svc:18090").unwrap();
        let yaml = render(&p).unwrap();
        assert_eq!(cluster(&yaml), "type: STRICT_DNS");
        assert!(yaml.contains("address: \"codexmesh.mesh.svc\", port_value: 18090"));
    }

    #[test]
    fn several_control_plane_replicas_are_endpoints_of_one_cluster() {
        let mut p = params("http://127.0.0.1:1");
        p.more_control_planes = vec![ControlPlaneTarget::parse("127.0.0.2:18091").unwrap()];
        let yaml = render(&p).unwrap();
        let at = yaml.find("- name: codexmesh_control_plane").unwrap();
        let cluster = &yaml[at..];
        assert_eq!(cluster.lines().nth(1).unwrap().trim(), "type: STATIC");
        let endpoints: Vec<&str> = cluster
            .lines()
            .take_while(|l| !l.contains("typed_extension_protocol_options"))
            .filter(|l| l.contains("socket_address"))
            .map(str::trim)
            .collect();
        assert_eq!(
            endpoints,
            [
                "socket_address: { address: \"127.0.0.1\", port_value: 18090 }",
                "socket_address: { address: \"127.0.0.2\", port_value: 18091 }",
            ]
        );
        // One DNS name among them makes the cluster resolve names.
        p.more_control_planes
            .push(ControlPlaneTarget::parse("cp-2.mesh.svc:18090").unwrap());
        let yaml = render(&p).unwrap();
        let at = yaml.find("- name: codexmesh_control_plane").unwrap();
        assert_eq!(
            yaml[at..].lines().nth(1).unwrap().trim(),
            "type: STRICT_DNS"
        );
        assert!(!yaml.contains("{{"));
    }

    /// Golden files of the whole bootstrap for the three upstream shapes (`snapshots/`): an IP
    /// (STATIC, plain HTTP/1.1), a DNS name over TLS (LOGICAL_DNS, ALPN h2 + SNI + SAN check) and a
    /// DNS name over plain HTTP (LOGICAL_DNS, HTTP/1.1). Review a change with `cargo insta review`
    /// (or `INSTA_UPDATE=always` then `git diff`).
    #[test]
    fn bootstrap_goldens() {
        let proxies = vec![
            "http://proxy.internal:3128".to_string(),
            "http://10.0.0.5:8080".to_string(),
        ];
        for (name, url, egress_proxies) in [
            (
                "bootstrap_ip_upstream",
                "http://127.0.0.1:9000/backend-api",
                Vec::new(),
            ),
            (
                "bootstrap_dns_tls_upstream",
                "https://chatgpt.com/backend-api",
                Vec::new(),
            ),
            (
                "bootstrap_dns_plain_upstream",
                "http://egress.internal:8080/backend-api",
                Vec::new(),
            ),
            // Two egress proxies: each upstream cluster's copy per proxy, the tunnels' internal
            // listeners, the proxies' clusters and the routes' egress matchers.
            (
                "bootstrap_egress_proxies",
                "https://chatgpt.com/backend-api",
                proxies.clone(),
            ),
        ] {
            let params = BootstrapParams {
                node_id: "envoy-golden".into(),
                listen: "0.0.0.0:8080".parse().unwrap(),
                admin_listen: "127.0.0.1:9901".parse().unwrap(),
                control_plane: ControlPlaneTarget::parse("127.0.0.1:18090").unwrap(),
                more_control_planes: Vec::new(),
                upstream_base_url: url.into(),
                claude_base_url: "https://api.anthropic.com".into(),
                gemini_base_url: "https://cloudcode-pa.googleapis.com".into(),
                wasm_path: "/opt/codexmesh/codexmesh_filter.wasm".into(),
                websocket_max_lifetime_secs: 3000,
                max_request_body_bytes: 16 << 20,
                limits: EnvoyLimits::default(),
                upstream_ca_file: None,
                control_plane_tls: None,
                egress_proxies,
            };
            let yaml = render(&params).unwrap();
            assert!(!yaml.contains("{{"), "{name}: unfilled placeholder");
            // No secret is rendered: the push token is named (an environment variable Envoy hands
            // to the wasm service), never inlined. Every line that mentions a token or a
            // credential must be one of the known ones that only name the variable.
            assert!(
                yaml.contains("host_env_keys: [CODEXMESH_PUSH_TOKEN]"),
                "{name}: the push token must reach the wasm service through host_env_keys"
            );
            for line in yaml.lines() {
                let lower = line.to_ascii_lowercase();
                let mentions_secret = ["token", "secret", "bearer", "authorization", "password"]
                    .iter()
                    .any(|w| lower.contains(w));
                let allowed = line.trim_start().starts_with('#')
                    || line.trim() == "host_env_keys: [CODEXMESH_PUSH_TOKEN]"
                    || line.contains(r#"\"push_token_env\":\"CODEXMESH_PUSH_TOKEN\""#);
                assert!(
                    !mentions_secret || allowed,
                    "{name}: unexpected secret-looking line: {line}"
                );
            }
            insta::assert_snapshot!(name, yaml);
        }
    }

    /// The filter's per-pool counters (`codexmesh.filter.pool.<pool>.<counter>`, which Envoy
    /// prefixes with `wasmcustom.`) get their pool as the `codexmesh_pool` label, and the rest
    /// of the name loses the pool: `codexmesh_filter_<counter>{codexmesh_pool="<pool>"}` in
    /// `/stats/prometheus` (checked against a real Envoy by `tests/e2e/tests/metrics.rs`).
    #[test]
    fn filter_counters_get_their_pool_as_a_label() {
        let yaml = render(&params("http://127.0.0.1:1")).unwrap();
        let stats = &yaml[yaml.find("stats_config:").expect("stats_config")..];
        assert!(stats.contains("- tag_name: codexmesh_pool"), "{stats}");
        assert!(
            stats.contains(r"regex: '^wasmcustom\.codexmesh\.filter\.(pool\.([A-Za-z0-9_-]+)\.)'"),
            "{stats}"
        );
    }

    /// The limits against slow and hostile clients land where Envoy reads them: the buffer
    /// limit on the listener and every upstream cluster (not the control plane's), the header
    /// limits and HTTP/2 windows in the connection manager, and the overload manager's heap and
    /// connection monitors.
    #[test]
    fn hostile_client_limits_are_rendered_where_envoy_reads_them() {
        let mut p = params("http://127.0.0.1:1");
        p.limits = EnvoyLimits {
            buffer_limit_bytes: 12345,
            max_heap_bytes: 987_654_321,
            max_connections: 4321,
            max_request_headers_kb: 33,
            max_headers_count: 77,
            request_headers_timeout_secs: 7,
            http2_max_concurrent_streams: 55,
        };
        let yaml = render(&p).unwrap();
        assert!(!yaml.contains("{{"), "unfilled placeholder");
        let buffer = "per_connection_buffer_limit_bytes: 12345";
        // The listener and the four upstream clusters.
        assert_eq!(yaml.matches(buffer).count(), 5, "{yaml}");
        let listener = yaml.find("- name: codexmesh_gateway").unwrap();
        let chains = yaml.find("filter_chains:").unwrap();
        assert!(yaml[listener..chains].contains(buffer));
        let cp = yaml.find("- name: codexmesh_control_plane").unwrap();
        assert!(!yaml[cp..].contains(buffer));
        for line in [
            "max_request_headers_kb: 33",
            "request_headers_timeout: 7s",
            "max_headers_count: 77",
            "max_concurrent_streams: 55",
            "initial_stream_window_size: 65536",
            "max_heap_size_bytes: 987654321",
            "max_active_downstream_connections: 4321",
            "ignore_global_conn_limit: true",
            "- name: envoy.overload_actions.shrink_heap",
            "- name: envoy.overload_actions.stop_accepting_requests",
            "- name: envoy.overload_actions.reset_high_memory_stream",
        ] {
            assert!(yaml.contains(line), "missing {line}");
        }
        let overload = yaml.find("overload_manager:").unwrap();
        let static_resources = yaml.find("static_resources:").unwrap();
        assert!(overload < static_resources && !yaml[..overload].contains("  overload_manager"));
    }

    #[test]
    fn upstream_tls_verifies_against_the_named_bundle_and_the_host() {
        // Default: the system bundle, the DNS name as SNI and SAN.
        let yaml = render(&params("https://chatgpt.com/backend-api")).unwrap();
        assert!(yaml.contains("trusted_ca: { filename: /etc/ssl/certs/ca-certificates.crt }"));
        assert!(yaml.contains("san_type: DNS\n              matcher: { exact: \"chatgpt.com\" }"));
        assert!(
            !yaml.contains("trust_chain_verification"),
            "never ACCEPT_UNTRUSTED"
        );
        // A private CA by name; an IP upstream is matched as an IP SAN, without SNI.
        let mut p = params("https://10.0.0.7:8443/backend-api");
        p.upstream_ca_file = Some(PathBuf::from("/etc/codexmesh/private-ca.pem"));
        let yaml = render(&p).unwrap();
        assert!(yaml.contains("trusted_ca: { filename: \"/etc/codexmesh/private-ca.pem\" }"));
        assert!(
            yaml.contains("san_type: IP_ADDRESS\n              matcher: { exact: \"10.0.0.7\" }")
        );
        assert!(!yaml.contains("sni: \"10.0.0.7\""));
    }

    #[test]
    fn the_control_plane_cluster_gets_tls_and_a_client_certificate_when_asked() {
        let cluster = |yaml: &str| {
            let at = yaml.find("- name: codexmesh_control_plane").unwrap();
            yaml[at..].to_owned()
        };
        let mut p = params("https://chatgpt.com/backend-api");
        assert!(!cluster(&render(&p).unwrap()).contains("transport_socket"));
        p.control_plane = ControlPlaneTarget::parse("codexmesh.mesh.svc:18090").unwrap();
        p.control_plane_tls = Some(ControlPlaneTls {
            ca: PathBuf::from("/certs/ca.pem"),
            server_name: None,
            client_cert: Some((
                PathBuf::from("/certs/envoy.pem"),
                PathBuf::from("/certs/envoy.key"),
            )),
        });
        let c = cluster(&render(&p).unwrap());
        assert!(c.contains("UpstreamTlsContext"), "{c}");
        assert!(c.contains("sni: \"codexmesh.mesh.svc\""), "{c}");
        assert!(c.contains("alpn_protocols: [h2]"), "{c}");
        assert!(
            c.contains("certificate_chain: { filename: \"/certs/envoy.pem\" }"),
            "{c}"
        );
        assert!(
            c.contains("private_key: { filename: \"/certs/envoy.key\" }"),
            "{c}"
        );
        assert!(
            c.contains("trusted_ca: { filename: \"/certs/ca.pem\" }"),
            "{c}"
        );
        assert!(
            c.contains("matcher: { exact: \"codexmesh.mesh.svc\" }"),
            "{c}"
        );
        // Another name to check, and no client certificate.
        p.control_plane_tls = Some(ControlPlaneTls {
            ca: PathBuf::from("/certs/ca.pem"),
            server_name: Some("cp.internal".to_owned()),
            client_cert: None,
        });
        let c = cluster(&render(&p).unwrap());
        assert!(c.contains("matcher: { exact: \"cp.internal\" }"), "{c}");
        assert!(!c.contains("tls_certificates"), "{c}");
        p.control_plane_tls = Some(ControlPlaneTls {
            ca: PathBuf::from("/certs/ca.pem"),
            server_name: Some("bad name\"".to_owned()),
            client_cert: None,
        });
        assert!(matches!(render(&p), Err(BootstrapError::BadServerName(_))));
    }

    #[test]
    fn rejects_bad_inputs() {
        assert!(matches!(
            render(&params("nope")),
            Err(BootstrapError::BadUpstreamUrl(_))
        ));
        let mut p = params("http://127.0.0.1:1");
        p.node_id = "a b".into();
        assert!(matches!(render(&p), Err(BootstrapError::BadNodeId(_))));
    }

    #[test]
    fn unspecified_addresses_become_loopback() -> Result<(), std::net::AddrParseError> {
        assert_eq!(dialable("0.0.0.0:5".parse()?).to_string(), "127.0.0.1:5");
        assert_eq!(dialable("[::]:5".parse()?).to_string(), "[::1]:5");
        assert_eq!(dialable("10.1.2.3:5".parse()?).to_string(), "10.1.2.3:5");
        Ok(())
    }
}
