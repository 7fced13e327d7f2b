//! Generated types for the codexmesh control-plane ↔ Envoy contract (`codexmesh.proto`), and the
//! routing defaults both sides read ([`defaults`]).
#![allow(clippy::derive_partial_eq_without_eq)]

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

#[cfg(test)]
mod tests {
    use super::defaults;

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
