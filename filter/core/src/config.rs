//! Plugin configuration: which role a root context plays and the service's knobs. JSON, because
//! that is what Envoy's `StringValue` configuration carries. No secrets live here: it shows in
//! Envoy's config dump.

use crate::provider::Provider;
use crate::supervisor::SupervisorSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The bootstrap singleton: Subscribe stream, shared data, reports.
    Service(ServiceConfig),
    /// Listener filter: auth, ranking and the `/v1` translations.
    Downstream(DownstreamConfig),
    /// Cluster upstream filter: per-attempt injection and evidence, on the cluster of one
    /// provider (`"provider"`, default codex) and one egress (`"egress"`, default direct): it
    /// injects credentials only into requests for that provider's endpoints, and only of
    /// accounts leaving by that egress (`egress::serves`).
    Upstream(UpstreamConfig),
}

/// The upstream filter's cluster: whose requests it may carry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamConfig {
    pub provider: Provider,
    /// The egress proxy (`http://host:port`) this cluster tunnels through; empty: direct.
    pub egress: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Envoy cluster (HTTP/2) that reaches the control plane's gRPC server.
    pub control_plane_cluster: String,
    pub node_id: String,
    /// Name of the host environment variable that holds the push token.
    pub push_token_env: String,
    pub supervisor: SupervisorSettings,
    pub tick_ms: u64,
    pub report_interval_ms: u64,
    pub report_batch_max: usize,
    /// The egress proxies this Envoy has clusters for, told to the control plane when
    /// subscribing (the same list the downstream filter routes by).
    pub egress_proxies: Vec<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            control_plane_cluster: codexmesh_proto::names::CONTROL_PLANE_CLUSTER.into(),
            node_id: "codexmesh-envoy".into(),
            push_token_env: codexmesh_proto::names::PUSH_TOKEN_ENV.into(),
            supervisor: SupervisorSettings::default(),
            tick_ms: 200,
            report_interval_ms: 1000,
            report_batch_max: 500,
            egress_proxies: Vec::new(),
        }
    }
}

/// The listener filter's knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamConfig {
    /// Request bodies over this many bytes are refused with 413 (the route's buffer limit is
    /// rendered from the same setting).
    pub max_request_body_bytes: u64,
    /// The egress proxies this Envoy has clusters for, in the bootstrap's order (`egress`):
    /// the first is routed as `e1`.
    pub egress_proxies: Vec<String>,
}

/// 64 MiB: Codex requests carry whole transcripts.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 64 * 1024 * 1024;

impl Default for DownstreamConfig {
    fn default() -> Self {
        Self {
            max_request_body_bytes: DEFAULT_MAX_REQUEST_BODY_BYTES,
            egress_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "codexmesh plugin configuration: {}", self.0)
    }
}

/// The keys each role reads; anything else is refused, so a misspelt knob fails at load instead
/// of silently keeping its default.
const DOWNSTREAM_KEYS: &[&str] = &["role", "max_request_body_bytes", "egress_proxies"];
const UPSTREAM_KEYS: &[&str] = &["role", "provider", "egress"];
const SERVICE_KEYS: &[&str] = &[
    "role",
    "control_plane_cluster",
    "node_id",
    "push_token_env",
    "watchdog_ms",
    "backoff_base_ms",
    "backoff_max_ms",
    "tick_ms",
    "report_interval_ms",
    "report_batch_max",
    "egress_proxies",
];

fn only_known_keys(
    obj: &serde_json::Map<String, serde_json::Value>,
    role: &str,
    known: &[&str],
) -> Result<(), ConfigError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(ConfigError(format!(
            "unknown key {key:?} for role {role}: expected {}",
            known.join(", ")
        ))),
    }
}

/// `"egress_proxies"`: a list of non-empty strings (the bootstrap writes canonical URLs).
fn egress_proxies(
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<String>, ConfigError> {
    let Some(v) = obj.get("egress_proxies") else {
        return Ok(Vec::new());
    };
    let bad = || ConfigError("'egress_proxies' must be a list of proxy URLs".into());
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|p| {
            p.as_str()
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .ok_or_else(bad)
        })
        .collect()
}

pub fn parse(bytes: &[u8]) -> Result<Role, ConfigError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ConfigError(format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ConfigError("must be a JSON object".into()))?;
    let role = obj
        .get("role")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ConfigError("'role' is required: service, downstream or upstream".into()))?;
    match role {
        "downstream" => {
            only_known_keys(obj, role, DOWNSTREAM_KEYS)?;
            let mut cfg = DownstreamConfig::default();
            if let Some(v) = obj.get("max_request_body_bytes") {
                cfg.max_request_body_bytes = v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                    ConfigError("'max_request_body_bytes' must be a positive integer".into())
                })?;
            }
            cfg.egress_proxies = egress_proxies(obj)?;
            Ok(Role::Downstream(cfg))
        }
        "upstream" => {
            only_known_keys(obj, role, UPSTREAM_KEYS)?;
            let provider = match obj.get("provider") {
                None => Provider::Codex,
                Some(v) => v.as_str().and_then(Provider::from_name).ok_or_else(|| {
                    ConfigError("'provider' must be codex, claude or gemini".into())
                })?,
            };
            let egress = match obj.get("egress") {
                None => String::new(),
                Some(v) => v
                    .as_str()
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| ConfigError("'egress' must be a proxy URL".into()))?
                    .to_string(),
            };
            Ok(Role::Upstream(UpstreamConfig { provider, egress }))
        }
        "service" => {
            only_known_keys(obj, role, SERVICE_KEYS)?;
            let mut cfg = ServiceConfig::default();
            let string = |name: &str, into: &mut String| -> Result<(), ConfigError> {
                match obj.get(name) {
                    None => Ok(()),
                    Some(v) => match v.as_str() {
                        Some(s) if !s.is_empty() => {
                            *into = s.to_string();
                            Ok(())
                        }
                        _ => Err(ConfigError(format!("'{name}' must be a non-empty string"))),
                    },
                }
            };
            let number = |name: &str, into: &mut u64| -> Result<(), ConfigError> {
                match obj.get(name) {
                    None => Ok(()),
                    Some(v) => match v.as_u64() {
                        Some(n) if n > 0 => {
                            *into = n;
                            Ok(())
                        }
                        _ => Err(ConfigError(format!("'{name}' must be a positive integer"))),
                    },
                }
            };
            string("control_plane_cluster", &mut cfg.control_plane_cluster)?;
            string("node_id", &mut cfg.node_id)?;
            string("push_token_env", &mut cfg.push_token_env)?;
            number("watchdog_ms", &mut cfg.supervisor.watchdog_ms)?;
            number("backoff_base_ms", &mut cfg.supervisor.backoff_base_ms)?;
            number("backoff_max_ms", &mut cfg.supervisor.backoff_max_ms)?;
            number("tick_ms", &mut cfg.tick_ms)?;
            number("report_interval_ms", &mut cfg.report_interval_ms)?;
            let mut batch = cfg.report_batch_max as u64;
            number("report_batch_max", &mut batch)?;
            cfg.report_batch_max = usize::try_from(batch).unwrap_or(usize::MAX);
            cfg.egress_proxies = egress_proxies(obj)?;
            if cfg.supervisor.backoff_max_ms < cfg.supervisor.backoff_base_ms {
                return Err(ConfigError(
                    "'backoff_max_ms' must not be below 'backoff_base_ms'".into(),
                ));
            }
            Ok(Role::Service(cfg))
        }
        other => Err(ConfigError(format!(
            "unknown role {other:?}: expected service, downstream or upstream"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn filter_roles() {
        assert_eq!(
            parse(br#"{"role":"downstream"}"#).unwrap(),
            Role::Downstream(DownstreamConfig::default())
        );
        assert_eq!(
            parse(br#"{"role":"downstream","max_request_body_bytes":1024}"#).unwrap(),
            Role::Downstream(DownstreamConfig {
                max_request_body_bytes: 1024,
                egress_proxies: Vec::new(),
            })
        );
        assert_eq!(
            parse(br#"{"role":"downstream","egress_proxies":["http://p:1","http://q:2"]}"#)
                .unwrap(),
            Role::Downstream(DownstreamConfig {
                egress_proxies: vec!["http://p:1".into(), "http://q:2".into()],
                ..DownstreamConfig::default()
            })
        );
        assert!(parse(br#"{"role":"downstream","egress_proxies":"http://p:1"}"#).is_err());
        assert!(parse(br#"{"role":"downstream","egress_proxies":[""]}"#).is_err());
        assert_eq!(
            parse(br#"{"role":"upstream","provider":"claude","egress":"http://p:1"}"#).unwrap(),
            Role::Upstream(UpstreamConfig {
                provider: Provider::Claude,
                egress: "http://p:1".into()
            })
        );
        assert!(parse(br#"{"role":"upstream","egress":""}"#).is_err());
        assert!(parse(br#"{"role":"downstream","max_request_body_bytes":0}"#).is_err());
        assert_eq!(
            parse(br#"{"role":"upstream"}"#).unwrap(),
            Role::Upstream(UpstreamConfig {
                provider: Provider::Codex,
                egress: String::new()
            })
        );
        assert_eq!(
            parse(br#"{"role":"upstream","provider":"claude"}"#).unwrap(),
            Role::Upstream(UpstreamConfig {
                provider: Provider::Claude,
                egress: String::new()
            })
        );
        assert_eq!(
            parse(br#"{"role":"upstream","provider":"gemini"}"#).unwrap(),
            Role::Upstream(UpstreamConfig {
                provider: Provider::Gemini,
                egress: String::new()
            })
        );
        assert!(parse(br#"{"role":"upstream","provider":"openai"}"#).is_err());
        assert!(parse(br#"{"role":"upstream","provider":1}"#).is_err());
    }

    #[test]
    fn service_defaults_and_overrides() {
        let Role::Service(cfg) =
            parse(br#"{"role":"service","node_id":"e1","watchdog_ms":3000}"#).unwrap()
        else {
            unreachable!()
        };
        assert_eq!(cfg.node_id, "e1");
        assert_eq!(cfg.supervisor.watchdog_ms, 3000);
        assert!(cfg.egress_proxies.is_empty());
        let Role::Service(cfg) =
            parse(br#"{"role":"service","egress_proxies":["http://p:1"]}"#).unwrap()
        else {
            unreachable!()
        };
        assert_eq!(cfg.egress_proxies, ["http://p:1"]);
        assert!(parse(br#"{"role":"service","egress_proxies":[1]}"#).is_err());
        assert_eq!(cfg.control_plane_cluster, "codexmesh_control_plane");
    }

    #[test]
    fn clear_errors() {
        assert!(parse(b"nope").unwrap_err().0.contains("not JSON"));
        assert!(parse(b"{}").unwrap_err().0.contains("'role' is required"));
        assert!(parse(br#"{"role":"x"}"#)
            .unwrap_err()
            .0
            .contains("unknown role"));
        assert!(parse(br#"{"role":"service","tick_ms":0}"#)
            .unwrap_err()
            .0
            .contains("tick_ms"));
        assert!(parse(br#"{"role":"service","backoff_base_ms":10,"backoff_max_ms":5}"#).is_err());
    }

    #[test]
    fn unknown_keys_are_refused_per_role() {
        let err = parse(br#"{"role":"downstream","max_body":1}"#).unwrap_err();
        assert!(err.0.contains("\"max_body\""), "{err}");
        assert!(err.0.contains("role downstream"), "{err}");
        assert!(err.0.contains("max_request_body_bytes"), "{err}");

        // Another role's key is unknown too.
        let err = parse(br#"{"role":"upstream","max_request_body_bytes":1024}"#).unwrap_err();
        assert!(err.0.contains("\"max_request_body_bytes\""), "{err}");
        assert!(err.0.contains("role upstream"), "{err}");

        let err = parse(br#"{"role":"service","node_id":"e1","tick":5}"#).unwrap_err();
        assert!(err.0.contains("\"tick\""), "{err}");
        assert!(err.0.contains("role service"), "{err}");
        assert!(parse(br#"{"role":"downstream","watchdog_ms":5}"#).is_err());
    }

    #[test]
    fn every_service_key_is_accepted() {
        let all = br#"{"role":"service","control_plane_cluster":"cp","node_id":"n",
            "push_token_env":"T","watchdog_ms":1,"backoff_base_ms":2,"backoff_max_ms":3,
            "tick_ms":4,"report_interval_ms":5,"report_batch_max":6}"#;
        let Role::Service(cfg) = parse(all).unwrap() else {
            unreachable!()
        };
        assert_eq!(
            (cfg.control_plane_cluster.as_str(), cfg.node_id.as_str()),
            ("cp", "n")
        );
        assert_eq!(cfg.push_token_env, "T");
        assert_eq!(
            (
                cfg.supervisor.watchdog_ms,
                cfg.supervisor.backoff_base_ms,
                cfg.supervisor.backoff_max_ms
            ),
            (1, 2, 3)
        );
        assert_eq!(
            (cfg.tick_ms, cfg.report_interval_ms, cfg.report_batch_max),
            (4, 5, 6)
        );
    }

    /// Every plugin configuration the repo renders (the Envoy template and the control plane's
    /// golden bootstraps) parses: a key added on the rendering side without the filter knowing
    /// it fails here, not at Envoy start. Native only: no filesystem under wasm.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn rendered_configurations_parse() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let mut files = vec![format!("{root}/envoy/bootstrap.template.yaml")];
        let snaps = format!("{root}/control-plane/codexmesh/src/snapshots");
        for entry in std::fs::read_dir(&snaps).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.contains("envoy_bootstrap") && name.ends_with(".snap") {
                files.push(path.to_string_lossy().into_owned());
            }
        }
        let mut roles = std::collections::BTreeSet::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for line in text.lines() {
                let Some(value) = line.trim().strip_prefix("value: ") else {
                    continue;
                };
                // YAML single quotes carry the JSON as is; double quotes escape it like JSON.
                let json = if let Some(raw) = value.strip_prefix('\'') {
                    raw.trim_end_matches('\'').to_string()
                } else if value.starts_with('"') {
                    serde_json::from_str::<String>(value).unwrap()
                } else {
                    continue;
                };
                if !json.contains("\"role\"") {
                    continue;
                }
                let role = parse(json.as_bytes()).unwrap_or_else(|e| unreachable!("{file}: {e}"));
                roles.insert(match role {
                    Role::Service(_) => "service",
                    Role::Downstream(_) => "downstream",
                    Role::Upstream(_) => "upstream",
                });
            }
        }
        assert_eq!(
            roles.into_iter().collect::<Vec<_>>(),
            ["downstream", "service", "upstream"],
            "{files:?}"
        );
    }
}
