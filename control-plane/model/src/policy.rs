//! A pool key's policy: the limits the listener filter enforces for one key before routing
//! (allowed models, requests per minute, concurrent requests, token budgets per UTC day and week,
//! shares of the pool's 5-hour and weekly window capacity).
//!
//! Rules kept here:
//! - `None` / empty means "no limit of this kind"; [`KeyPolicy::default`] limits nothing, and a
//!   key without a policy behaves exactly as before policies existed.
//! - Every value is checked by [`KeyPolicy::validate`] before it is stored, with the field's
//!   name in the error (the API turns it into a field path, the CLI into a flag message).
//! - The wire form is `pb::KeyPolicy` ([`KeyPolicy::to_proto`]); 0 / empty there means "no
//!   limit", so an unset field and a policy-less key read the same in the filter.
//! - Model patterns: an exact model name, or a prefix ending in `*` (`gpt-5*`). Matching is
//!   exact and case-sensitive, as the upstreams name models ([`model_allowed`], which the
//!   filter's rule mirrors).

use codexmesh_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// The most model patterns one key may list.
pub const MAX_ALLOWED_MODELS: usize = 64;
/// The longest model pattern accepted.
pub const MAX_MODEL_PATTERN_LEN: usize = 128;

/// A key's limits. Serialized as the API and `apply -f` spell it (snake_case, absent = none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicy {
    /// Models the key may ask for: exact names or prefixes ending in `*`. Empty: any model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_models: Vec<String>,
    /// Requests admitted per minute, per Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Requests in flight at once, per Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u32>,
    /// Tokens (input + output) per UTC day, across every Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// Tokens per week (from Monday 00:00 UTC), across every Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_week: Option<u64>,
    /// Percent (0 < x ≤ 100) of the pool's 5-hour window capacity this key may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_share_percent: Option<f64>,
    /// Percent (0 < x ≤ 100) of the pool's weekly window capacity this key may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_share_percent: Option<f64>,
}

/// A policy value that cannot be stored. `field` is the policy's field name
/// (`allowed_models[2]`, `requests_per_minute`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidPolicy {
    pub field: String,
    pub message: String,
}

impl InvalidPolicy {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl KeyPolicy {
    /// Whether the policy limits nothing (stored as no policy at all).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Checks every field; the first problem, naming its field.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if self.allowed_models.len() > MAX_ALLOWED_MODELS {
            return Err(InvalidPolicy::new(
                "allowed_models",
                format!("at most {MAX_ALLOWED_MODELS} models"),
            ));
        }
        for (i, m) in self.allowed_models.iter().enumerate() {
            let field = format!("allowed_models[{i}]");
            let stem = m.strip_suffix('*').unwrap_or(m);
            if m.is_empty() || m.len() > MAX_MODEL_PATTERN_LEN {
                return Err(InvalidPolicy::new(
                    field,
                    format!("a model name of 1 to {MAX_MODEL_PATTERN_LEN} characters"),
                ));
            }
            if stem.contains('*')
                || !stem
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._:/@".contains(c))
            {
                return Err(InvalidPolicy::new(
                    field,
                    "a model name (letters, digits, - . _ : / @), optionally ending in * for a prefix",
                ));
            }
        }
        for (field, v) in [
            (
                "requests_per_minute",
                self.requests_per_minute.map(u64::from),
            ),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests.map(u64::from),
            ),
            ("tokens_per_day", self.tokens_per_day),
            ("tokens_per_week", self.tokens_per_week),
        ] {
            if v == Some(0) {
                return Err(InvalidPolicy::new(
                    field,
                    "at least 1 (leave it out for no limit)",
                ));
            }
        }
        for (field, v) in [
            ("primary_share_percent", self.primary_share_percent),
            ("secondary_share_percent", self.secondary_share_percent),
        ] {
            if let Some(p) = v {
                if !(p.is_finite() && p > 0.0 && p <= 100.0) {
                    return Err(InvalidPolicy::new(
                        field,
                        "a percentage above 0 and at most 100",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The snapshot's form (0 / empty for "no limit").
    pub fn to_proto(&self) -> pb::KeyPolicy {
        pb::KeyPolicy {
            allowed_models: self.allowed_models.clone(),
            requests_per_minute: self.requests_per_minute.unwrap_or(0),
            max_concurrent_requests: self.max_concurrent_requests.unwrap_or(0),
            tokens_per_day: self.tokens_per_day.unwrap_or(0),
            tokens_per_week: self.tokens_per_week.unwrap_or(0),
            primary_share_percent: self.primary_share_percent.unwrap_or(0.0),
            secondary_share_percent: self.secondary_share_percent.unwrap_or(0.0),
        }
    }
}

/// Whether `model` is allowed by `patterns` (empty: every model). The filter keeps the same
/// rule (`filter/core`), tested against the same cases.
pub fn model_allowed(patterns: &[String], model: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => p == model,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_policy_limits_nothing() {
        let p = KeyPolicy::default();
        assert!(p.is_empty());
        assert!(p.validate().is_ok());
        assert_eq!(p.to_proto(), pb::KeyPolicy::default());
        assert_eq!(serde_json::to_string(&p).unwrap(), "{}");
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |p: KeyPolicy| p.validate().unwrap_err().field;
        assert_eq!(
            bad(KeyPolicy {
                allowed_models: vec!["gpt-5".into(), "".into()],
                ..Default::default()
            }),
            "allowed_models[1]"
        );
        assert_eq!(
            bad(KeyPolicy {
                allowed_models: vec!["g*pt".into()],
                ..Default::default()
            }),
            "allowed_models[0]"
        );
        assert_eq!(
            bad(KeyPolicy {
                requests_per_minute: Some(0),
                ..Default::default()
            }),
            "requests_per_minute"
        );
        assert_eq!(
            bad(KeyPolicy {
                tokens_per_week: Some(0),
                ..Default::default()
            }),
            "tokens_per_week"
        );
        assert_eq!(
            bad(KeyPolicy {
                primary_share_percent: Some(120.0),
                ..Default::default()
            }),
            "primary_share_percent"
        );
        assert_eq!(
            bad(KeyPolicy {
                secondary_share_percent: Some(f64::NAN),
                ..Default::default()
            }),
            "secondary_share_percent"
        );
        assert!(serde_json::from_str::<KeyPolicy>(r#"{"rpm": 3}"#).is_err());
    }

    #[test]
    fn models_match_exactly_or_by_prefix() {
        let pats = vec!["gpt-5*".to_owned(), "claude-sonnet-4-5".to_owned()];
        assert!(model_allowed(&pats, "gpt-5.1-codex"));
        assert!(model_allowed(&pats, "claude-sonnet-4-5"));
        assert!(!model_allowed(&pats, "claude-sonnet-4-5-20250929"));
        assert!(!model_allowed(&pats, "GPT-5"));
        assert!(!model_allowed(&pats, "o3"));
        assert!(model_allowed(&[], "anything"));
    }
}
