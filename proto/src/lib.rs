//! Generated types for the codexmesh control-plane ↔ Envoy contract (`codexmesh.proto`), the
//! routing defaults both sides read ([`defaults`]), the names both sides spell ([`names`]) and
//! the client-address rule both sides apply ([`network`]).
#![allow(clippy::derive_partial_eq_without_eq)]

pub mod network;

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/codexmesh.v1.rs"));
}

pub use prost::Message;

/// What a zero (or unspecified) field of [`v1::RoutingSettings`] means. Declared once here: the
/// filter decides with these, the control plane shows them as the effective values. The proto
/// comments name the same numbers for readers of the `.proto` alone.
pub mod defaults {
    use crate::v1::Strategy;

    /// `STRATEGY_UNSPECIFIED` is served as this.
    pub const STRATEGY: Strategy = Strategy::QuotaFirst;
    /// Upstream attempts per request, first try included.
    pub const MAX_ATTEMPTS: u32 = 3;
    /// Never more attempts than this, whatever the settings say: Envoy buffers the body for
    /// every retry.
    pub const MAX_ATTEMPTS_CAP: u32 = 10;
    /// An account whose primary (5-hour) window is at or above this percent is skipped.
    pub const PRIMARY_THRESHOLD_PERCENT: f64 = 95.0;
    /// Same for the secondary (weekly) window.
    pub const SECONDARY_THRESHOLD_PERCENT: f64 = 99.0;
    /// Consecutive failures that open an account's circuit.
    pub const CIRCUIT_FAILURES: u32 = 3;
    /// How long an open circuit stays open before one half-open probe.
    pub const CIRCUIT_OPEN_MS: u32 = 60_000;
    /// Longest cooldown of the backoff ladder after a 429 without a reset time.
    pub const COOLDOWN_MAX_MS: u32 = 1_800_000;
}

/// Names the filter and the control plane (or the Envoy bootstrap it renders) must spell the same
/// way. Declared once here; the filter's own shared-data keys and queues stay in the filter.
pub mod names {
    /// The proxy-wasm VM id of every codexmesh plugin (the bootstrap's `vm_id`): shared data and
    /// queues are scoped by it.
    pub const VM_ID: &str = "codexmesh";
    /// The Envoy cluster that reaches the control plane: a cluster of the rendered bootstrap and
    /// the service plugin's default `control_plane_cluster`.
    pub const CONTROL_PLANE_CLUSTER: &str = "codexmesh_control_plane";
    /// The host environment variable holding the push token: the bootstrap's `host_env_keys`,
    /// the service plugin's default `push_token_env` and the control plane's push-token setting.
    pub const PUSH_TOKEN_ENV: &str = "CODEXMESH_PUSH_TOKEN";
    /// The gRPC service of `codexmesh.proto` (package `codexmesh.v1`, service `Mesh`).
    pub const MESH_SERVICE: &str = "codexmesh.v1.Mesh";
    /// The streaming method the service plugin opens.
    pub const SUBSCRIBE_METHOD: &str = "Subscribe";
    /// The unary method that carries the filters' outcomes.
    pub const REPORT_METHOD: &str = "Report";
    /// `/{MESH_SERVICE}/{SUBSCRIBE_METHOD}`: the HTTP/2 path of a Subscribe call.
    pub const SUBSCRIBE_PATH: &str = "/codexmesh.v1.Mesh/Subscribe";
    /// The request header the downstream filter marks a proxied request with, and the routes'
    /// cluster matcher reads (its value: [`egress_name`]).
    pub const EGRESS_HEADER: &str = "x-codexmesh-egress";

    /// The name of the egress proxy at `index` of an Envoy's list (`e1` first): the value of
    /// [`EGRESS_HEADER`] and the suffix of that proxy's clusters and listeners.
    pub fn egress_name(index: usize) -> String {
        format!("e{}", index.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::{defaults, names};

    #[test]
    fn names_agree_with_the_proto() {
        assert_eq!(
            names::SUBSCRIBE_PATH,
            format!("/{}/{}", names::MESH_SERVICE, names::SUBSCRIBE_METHOD)
        );
        let proto = include_str!("../codexmesh.proto");
        let (package, service) = names::MESH_SERVICE.rsplit_once('.').unwrap_or_default();
        assert!(proto.contains(&format!("package {package};")));
        assert!(proto.contains(&format!("service {service} {{")));
        for method in [names::SUBSCRIBE_METHOD, names::REPORT_METHOD] {
            assert!(proto.contains(&format!("rpc {method}(")), "{method}");
        }
    }

    /// The `.proto` comments repeat the defaults for its readers; they must say the same.
    #[test]
    fn proto_comments_name_the_defaults() {
        let proto = include_str!("../codexmesh.proto");
        for said in [
            format!("0 = default ({}).", defaults::MAX_ATTEMPTS),
            format!("Never more than {}", defaults::MAX_ATTEMPTS_CAP),
            format!("0 = {}.", defaults::PRIMARY_THRESHOLD_PERCENT),
            format!("0 = {}.", defaults::SECONDARY_THRESHOLD_PERCENT),
            format!("0 = {}.", defaults::CIRCUIT_FAILURES),
            format!("0 = {}.", defaults::CIRCUIT_OPEN_MS),
            format!("0 = {}.", defaults::COOLDOWN_MAX_MS),
            "treated as the default (quota first)".to_string(),
        ] {
            assert!(
                proto.contains(&said),
                "codexmesh.proto does not say {said:?}"
            );
        }
        assert_eq!(defaults::STRATEGY, crate::v1::Strategy::QuotaFirst);
    }
}
