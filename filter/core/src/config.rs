//! Plugin configuration: which role a root context plays and the service's knobs. JSON, because
//! that is what Envoy's `StringValue` configuration carries. No secrets live here: it shows in
//! Envoy's config dump.

use crate::supervisor::SupervisorSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The bootstrap singleton: Subscribe stream, shared data, reports.
    Service(ServiceConfig),
    /// Listener filter: auth, ranking and the `/v1` translations.
    Downstream(DownstreamConfig),
    /// Cluster upstream filter: per-attempt injection and evidence.
    Upstream,
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
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            control_plane_cluster: "codexmesh_control_plane".into(),
            node_id: "codexmesh-envoy".into(),
            push_token_env: "CODEXMESH_PUSH_TOKEN".into(),
            supervisor: SupervisorSettings::default(),
            tick_ms: 200,
            report_interval_ms: 1000,
            report_batch_max: 500,
        }
    }
}

/// The listener filter's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamConfig {
    /// Request bodies over this many bytes are refused with 413 (the route's buffer limit is
    /// rendered from the same setting).
    pub max_request_body_bytes: u64,
}

/// 64 MiB: Codex requests carry whole transcripts.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 64 * 1024 * 1024;

impl Default for DownstreamConfig {
    fn default() -> Self {
        Self {
            max_request_body_bytes: DEFAULT_MAX_REQUEST_BODY_BYTES,
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
            let mut cfg = DownstreamConfig::default();
            if let Some(v) = obj.get("max_request_body_bytes") {
                cfg.max_request_body_bytes = v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                    ConfigError("'max_request_body_bytes' must be a positive integer".into())
                })?;
            }
            Ok(Role::Downstream(cfg))
        }
        "upstream" => Ok(Role::Upstream),
        "service" => {
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
#[allow(clippy::unwrap_used)]
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
                max_request_body_bytes: 1024
            })
        );
        assert!(parse(br#"{"role":"downstream","max_request_body_bytes":0}"#).is_err());
        assert_eq!(parse(br#"{"role":"upstream"}"#).unwrap(), Role::Upstream);
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
}
