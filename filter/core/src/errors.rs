//! Errors the data path answers with, in the shape the route's client reads: OpenAI's on the Codex
//! and `/v1` routes (SDKs and the Codex CLI show them), Anthropic's on a Claude route
//! (`{"type":"error","error":{"type":..,"message":..}}`) and google.rpc's on a Gemini route
//! (`{"error":{"code","message","status","details"}}`). Status and headers are the same whatever
//! the shape; a pool-exhausted answer carries the reset in each shape's own way.
//!
//! Each kind says where it came from and whether trying again may help (Pingora's rule): failover
//! and the answer's status read that, not ad-hoc string matching.

use std::fmt;

use crate::provider::Provider;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client's own request is at fault (bad key, bad input): never counts against an account.
    Client,
    /// The ChatGPT backend answered with an error or could not be reached.
    Upstream,
    /// The gateway itself cannot serve (no routing table yet, no account left).
    Internal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    MissingKey,
    MalformedKey,
    UnknownKey,
    RevokedKey,
    /// No snapshot has reached this Envoy yet.
    NotReady,
    /// The pool has no account that may serve right now (paused, re-login, failing).
    NoAccountAvailable,
    /// Every account's usage is spent: answered like the upstream's own 429.
    PoolExhausted,
    /// Every attempt failed without a usable answer (connect failure, reset, 5xx).
    UpstreamUnavailable,
    /// A WebSocket upgrade: answered 426 so the Codex CLI falls back to SSE at once.
    WebSocketUnsupported,
    /// The upstream filter found no hand-off from the downstream filter (a misconfigured route).
    RouteMissing,
    /// A method or path outside the allowlist (`endpoints::ENDPOINTS`): never forwarded.
    UnknownEndpoint,
    /// A `/v1` request the translation refuses (malformed JSON, a field it cannot honour).
    InvalidRequest,
    /// A `/v1/models/{id}` lookup for a model the pool does not serve.
    ModelNotFound,
    /// The upstream answered with a failed response (`response.failed`, `error` event).
    UpstreamFailed,
    /// An OpenAI API route a pool of Codex subscriptions cannot serve (embeddings, audio, …).
    UnsupportedEndpoint,
    /// A request body over the gateway's size limit.
    BodyTooLarge,
    /// The client's address is outside the pool's `allowed_cidrs` (`network`).
    ClientAddressNotAllowed,
    /// The key's policy does not list the requested model (`policy`).
    ModelNotAllowed,
    /// The key's requests per minute are used up on this Envoy (`policy`).
    RateLimited,
    /// The key already has its most concurrent requests in flight on this Envoy (`policy`).
    TooManyConcurrentRequests,
    /// The key's tokens for the UTC day or week are used up (`policy`).
    TokenBudgetExhausted,
    /// The key is past its share of the pool's 5-hour or weekly capacity (`policy`).
    QuotaShareExhausted,
    /// The accounts that could serve tunnel through an egress proxy this Envoy was not rendered
    /// with (`egress`): never sent directly instead.
    EgressNotConfigured,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            Self::MissingKey | Self::MalformedKey | Self::UnknownKey | Self::RevokedKey => 401,
            Self::NotReady
            | Self::NoAccountAvailable
            | Self::UpstreamUnavailable
            | Self::EgressNotConfigured => 503,
            Self::PoolExhausted => 429,
            Self::RouteMissing => 500,
            Self::WebSocketUnsupported => 426,
            Self::UnknownEndpoint => 404,
            Self::InvalidRequest => 400,
            Self::ModelNotFound => 404,
            Self::UpstreamFailed => 502,
            Self::UnsupportedEndpoint => 501,
            Self::BodyTooLarge => 413,
            Self::ClientAddressNotAllowed => 403,
            Self::ModelNotAllowed => 403,
            Self::RateLimited
            | Self::TooManyConcurrentRequests
            | Self::TokenBudgetExhausted
            | Self::QuotaShareExhausted => 429,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::MissingKey | Self::MalformedKey | Self::UnknownKey | Self::RevokedKey => {
                "invalid_api_key"
            }
            Self::NotReady => "gateway_not_ready",
            Self::NoAccountAvailable => "no_account_available",
            Self::PoolExhausted => "usage_limit_reached",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::WebSocketUnsupported => "websocket_not_supported",
            Self::RouteMissing => "gateway_misconfigured",
            Self::UnknownEndpoint => "unknown_endpoint",
            Self::InvalidRequest => "invalid_request",
            Self::ModelNotFound => "model_not_found",
            Self::UpstreamFailed => "upstream_failed",
            Self::UnsupportedEndpoint => "unsupported_endpoint",
            Self::BodyTooLarge => "request_too_large",
            Self::ClientAddressNotAllowed => "client_address_not_allowed",
            Self::ModelNotAllowed => "model_not_allowed",
            Self::RateLimited => "rate_limited",
            Self::TooManyConcurrentRequests => "too_many_concurrent_requests",
            Self::TokenBudgetExhausted => "token_budget_exhausted",
            Self::QuotaShareExhausted => "quota_share_exhausted",
            Self::EgressNotConfigured => "egress_proxy_not_configured",
        }
    }

    pub fn error_type(self) -> &'static str {
        if self.is_policy_limit() {
            // OpenAI's own type for a 429 of its rate limits (SDKs raise RateLimitError).
            return "rate_limit_error";
        }
        match self.source() {
            ErrorSource::Client => "invalid_request_error",
            ErrorSource::Upstream | ErrorSource::Internal => "server_error",
        }
    }

    pub fn source(self) -> ErrorSource {
        match self {
            Self::MissingKey
            | Self::MalformedKey
            | Self::UnknownKey
            | Self::RevokedKey
            | Self::WebSocketUnsupported
            | Self::UnknownEndpoint
            | Self::InvalidRequest
            | Self::ModelNotFound
            | Self::UnsupportedEndpoint
            | Self::BodyTooLarge
            | Self::ClientAddressNotAllowed
            | Self::ModelNotAllowed
            | Self::RateLimited
            | Self::TooManyConcurrentRequests
            | Self::TokenBudgetExhausted
            | Self::QuotaShareExhausted => ErrorSource::Client,
            Self::NotReady
            | Self::NoAccountAvailable
            | Self::PoolExhausted
            | Self::RouteMissing
            | Self::EgressNotConfigured => ErrorSource::Internal,
            Self::UpstreamUnavailable | Self::UpstreamFailed => ErrorSource::Upstream,
        }
    }

    /// A refusal of the key's policy (`policy`), reported as `Outcome.policy_refusal`.
    pub fn is_policy_refusal(self) -> bool {
        self == Self::ModelNotAllowed || self.is_policy_limit()
    }

    /// A policy limit that frees up with time (a 429 with Retry-After).
    pub fn is_policy_limit(self) -> bool {
        matches!(
            self,
            Self::RateLimited
                | Self::TooManyConcurrentRequests
                | Self::TokenBudgetExhausted
                | Self::QuotaShareExhausted
        )
    }

    /// Whether the same request may succeed if sent again later.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::NotReady
                | Self::NoAccountAvailable
                | Self::PoolExhausted
                | Self::UpstreamUnavailable
        )
    }
}

/// An error answer: status, OpenAI-shaped JSON body and extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub message: String,
    /// For PoolExhausted: the pool's earliest reset (unix seconds), when known.
    pub resets_at_unix: Option<i64>,
    /// Seconds a client should wait (Retry-After).
    pub retry_after_secs: Option<i64>,
    /// Whose error shape the body takes (the route's provider).
    pub shape: Provider,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            resets_at_unix: None,
            retry_after_secs: None,
            shape: Provider::Codex,
        }
    }

    /// The same error in the shape a client of `provider`'s route reads.
    pub fn shaped(mut self, provider: Provider) -> Self {
        self.shape = provider;
        self
    }

    /// Every account's usage is spent; `earliest_ms` is the first moment one comes back.
    pub fn pool_exhausted(pool: &str, earliest_ms: Option<i64>, now_ms: i64) -> Self {
        let resets_at_unix = earliest_ms.map(|ms| (ms + 999) / 1000);
        let retry_after_secs = earliest_ms.map(|ms| ((ms - now_ms).max(0) + 999) / 1000);
        Self {
            kind: ErrorKind::PoolExhausted,
            message: format!(
                "Every account in pool '{pool}' has reached its usage limit.{}",
                retry_after_secs
                    .map(|s| format!(" Try again in {s} seconds."))
                    .unwrap_or_default()
            ),
            resets_at_unix,
            retry_after_secs,
            shape: Provider::Codex,
        }
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// `{"error":{"message":..,"type":..,"param":null,"code":..}}`, as the OpenAI API answers.
    pub fn body(&self) -> String {
        match self.shape {
            Provider::Codex => {}
            Provider::Claude => return self.anthropic_body(),
            Provider::Gemini => return self.google_body(),
        }
        if self.kind == ErrorKind::PoolExhausted {
            // The shape the Codex backend itself uses, so clients show the reset time.
            let mut error = serde_json::json!({
                "type": "usage_limit_reached",
                "code": "usage_limit_reached",
                "message": self.message,
            });
            if let (Some(at), Some(obj)) = (self.resets_at_unix, error.as_object_mut()) {
                obj.insert("resets_at".into(), at.into());
                obj.insert(
                    "resets_in_seconds".into(),
                    self.retry_after_secs.unwrap_or(0).into(),
                );
            }
            return serde_json::json!({ "error": error }).to_string();
        }
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind.error_type(),
                "param": serde_json::Value::Null,
                "code": self.kind.code(),
            }
        });
        body.to_string()
    }

    /// Anthropic's error type for this kind.
    pub fn anthropic_type(&self) -> &'static str {
        match self.kind {
            ErrorKind::MissingKey
            | ErrorKind::MalformedKey
            | ErrorKind::UnknownKey
            | ErrorKind::RevokedKey => "authentication_error",
            ErrorKind::ClientAddressNotAllowed | ErrorKind::ModelNotAllowed => "permission_error",
            ErrorKind::UnknownEndpoint
            | ErrorKind::ModelNotFound
            | ErrorKind::UnsupportedEndpoint => "not_found_error",
            ErrorKind::InvalidRequest | ErrorKind::WebSocketUnsupported => "invalid_request_error",
            ErrorKind::BodyTooLarge => "request_too_large",
            ErrorKind::PoolExhausted
            | ErrorKind::RateLimited
            | ErrorKind::TooManyConcurrentRequests
            | ErrorKind::TokenBudgetExhausted
            | ErrorKind::QuotaShareExhausted => "rate_limit_error",
            ErrorKind::NotReady
            | ErrorKind::NoAccountAvailable
            | ErrorKind::UpstreamUnavailable
            | ErrorKind::RouteMissing
            | ErrorKind::UpstreamFailed
            | ErrorKind::EgressNotConfigured => "api_error",
        }
    }

    /// `{"type":"error","error":{"type":..,"message":..}}`, as the Anthropic API answers.
    fn anthropic_body(&self) -> String {
        serde_json::json!({
            "type": "error",
            "error": {"type": self.anthropic_type(), "message": self.message},
        })
        .to_string()
    }

    /// google.rpc's canonical status name for this answer's HTTP status.
    pub fn google_status(&self) -> &'static str {
        match self.status() {
            400 | 413 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            426 => "FAILED_PRECONDITION",
            429 => "RESOURCE_EXHAUSTED",
            501 => "UNIMPLEMENTED",
            503 => "UNAVAILABLE",
            _ => "INTERNAL",
        }
    }

    /// `{"error":{"code","message","status","details"}}`, as Google APIs answer; a 429 carries
    /// its wait as `RetryInfo.retryDelay`.
    fn google_body(&self) -> String {
        let mut details = vec![serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": self.kind.code().to_ascii_uppercase(),
            "domain": "codexmesh",
        })];
        if let Some(secs) = self.retry_after_secs.filter(|_| self.status() == 429) {
            details.push(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": format!("{}s", secs.max(1)),
            }));
        }
        serde_json::json!({
            "error": {
                "code": self.status(),
                "message": self.message,
                "status": self.google_status(),
                "details": details,
            }
        })
        .to_string()
    }

    /// Headers that go with the body.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            ("x-codexmesh-error", self.kind.code().to_string()),
        ];
        if let Some(secs) = self.retry_after_secs {
            headers.push(("retry-after", secs.max(1).to_string()));
        } else if self.kind.retryable() || self.kind.is_policy_limit() {
            headers.push(("retry-after", "1".to_string()));
        }
        if self.kind.source() == ErrorSource::Client && self.kind.status() == 401 {
            headers.push(("www-authenticate", "Bearer realm=\"codexmesh\"".to_string()));
        }
        headers
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn unknown_key_is_an_openai_shaped_401() {
        let err = GatewayError::new(ErrorKind::UnknownKey, "Incorrect API key provided.");
        assert_eq!(err.status(), 401);
        let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["message"], "Incorrect API key provided.");
        assert!(body["error"]["param"].is_null());
    }

    #[test]
    fn message_with_quotes_stays_valid_json() {
        let err = GatewayError::new(ErrorKind::NotReady, "a \"quoted\"\nline");
        let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
        assert_eq!(body["error"]["message"], "a \"quoted\"\nline");
        assert_eq!(body["error"]["type"], "server_error");
    }

    #[test]
    fn websocket_upgrades_get_426() {
        let err = GatewayError::new(ErrorKind::WebSocketUnsupported, "use SSE");
        assert_eq!(err.status(), 426);
        assert!(!err.kind.retryable());
        let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
        assert_eq!(body["error"]["code"], "websocket_not_supported");
    }

    /// Every kind, once. The match has no wildcard, so a new kind fails to compile until it is
    /// listed here and so gets a golden.
    #[cfg(not(target_arch = "wasm32"))]
    fn all_kinds() -> Vec<ErrorKind> {
        let all = [
            ErrorKind::MissingKey,
            ErrorKind::MalformedKey,
            ErrorKind::UnknownKey,
            ErrorKind::RevokedKey,
            ErrorKind::NotReady,
            ErrorKind::NoAccountAvailable,
            ErrorKind::PoolExhausted,
            ErrorKind::UpstreamUnavailable,
            ErrorKind::WebSocketUnsupported,
            ErrorKind::RouteMissing,
            ErrorKind::UnknownEndpoint,
            ErrorKind::InvalidRequest,
            ErrorKind::ModelNotFound,
            ErrorKind::UpstreamFailed,
            ErrorKind::UnsupportedEndpoint,
            ErrorKind::BodyTooLarge,
            ErrorKind::ClientAddressNotAllowed,
            ErrorKind::ModelNotAllowed,
            ErrorKind::RateLimited,
            ErrorKind::TooManyConcurrentRequests,
            ErrorKind::TokenBudgetExhausted,
            ErrorKind::QuotaShareExhausted,
            ErrorKind::EgressNotConfigured,
        ];
        for kind in all {
            match kind {
                ErrorKind::MissingKey
                | ErrorKind::MalformedKey
                | ErrorKind::UnknownKey
                | ErrorKind::RevokedKey
                | ErrorKind::NotReady
                | ErrorKind::NoAccountAvailable
                | ErrorKind::PoolExhausted
                | ErrorKind::UpstreamUnavailable
                | ErrorKind::WebSocketUnsupported
                | ErrorKind::RouteMissing
                | ErrorKind::UnknownEndpoint
                | ErrorKind::InvalidRequest
                | ErrorKind::ModelNotFound
                | ErrorKind::UpstreamFailed
                | ErrorKind::UnsupportedEndpoint
                | ErrorKind::BodyTooLarge
                | ErrorKind::ClientAddressNotAllowed
                | ErrorKind::ModelNotAllowed
                | ErrorKind::RateLimited
                | ErrorKind::TooManyConcurrentRequests
                | ErrorKind::TokenBudgetExhausted
                | ErrorKind::QuotaShareExhausted
                | ErrorKind::EgressNotConfigured => {}
            }
        }
        all.to_vec()
    }

    /// The golden of every error answer (`snapshots/`): `{status, headers, body}` per kind, plus
    /// `PoolExhausted` with a known reset. Native only (wasm has no filesystem), like the
    /// translation goldens. Review a change with `cargo insta review` (or `INSTA_UPDATE=always`
    /// then `git diff`).
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn error_answers_golden() {
        // Headers as ordered `name: value` lines, so order and duplicates show in the diff.
        let answer = |case: String, err: &GatewayError| {
            let headers: Vec<String> = err
                .headers()
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            serde_json::json!({
                "kind": case,
                "status": err.status(),
                "headers": headers,
                "body": serde_json::from_str::<serde_json::Value>(&err.body()).unwrap(),
            })
        };
        let kinds = all_kinds();
        let mut golden: Vec<serde_json::Value> = kinds
            .iter()
            .map(|kind| answer(format!("{kind:?}"), &GatewayError::new(*kind, "message")))
            .collect();
        // 90.5 s before the reset: Retry-After and resets_in_seconds round up.
        let exhausted =
            GatewayError::pool_exhausted("team", Some(1_700_000_090_500), 1_700_000_000_000);
        golden.push(answer("PoolExhausted (with reset)".into(), &exhausted));
        // A key's policy limits, as the listener answers them (`policy`).
        let rate = crate::policy::gcra_admit(Some(1_700_000_045_500), 2, 1_700_000_000_000)
            .expect_err("over the rate");
        golden.push(answer("RateLimited (with Retry-After)".into(), &rate));
        let model = crate::policy::check_model(
            &crate::pb::KeyPolicy {
                allowed_models: vec!["gpt-5*".into()],
                ..Default::default()
            },
            "o3",
        )
        .expect_err("not listed");
        golden.push(answer("ModelNotAllowed (naming the model)".into(), &model));
        assert_eq!(golden.len(), kinds.len() + 3);
        insta::assert_json_snapshot!("error_answers", golden);
        for (shape, name) in [
            (Provider::Claude, "error_answers_claude"),
            (Provider::Gemini, "error_answers_gemini"),
        ] {
            let mut golden: Vec<serde_json::Value> = kinds
                .iter()
                .map(|kind| {
                    answer(
                        format!("{kind:?}"),
                        &GatewayError::new(*kind, "message").shaped(shape),
                    )
                })
                .collect();
            golden.push(answer(
                "PoolExhausted (with reset)".into(),
                &exhausted.clone().shaped(shape),
            ));
            golden.push(answer(
                "RateLimited (with Retry-After)".into(),
                &rate.clone().shaped(shape),
            ));
            golden.push(answer(
                "ModelNotAllowed (naming the model)".into(),
                &model.clone().shaped(shape),
            ));
            insta::assert_json_snapshot!(name, golden);
        }
    }

    #[test]
    fn provider_shapes_are_what_their_clients_parse() {
        let claude = GatewayError::new(ErrorKind::UnknownKey, "bad key").shaped(Provider::Claude);
        let body: serde_json::Value = serde_json::from_str(&claude.body()).unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(body["error"]["message"], "bad key");
        assert_eq!(claude.status(), 401);
        let exhausted = GatewayError::pool_exhausted("p", Some(10_500), 0);
        let claude = exhausted.clone().shaped(Provider::Claude);
        let body: serde_json::Value = serde_json::from_str(&claude.body()).unwrap();
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert!(claude
            .headers()
            .iter()
            .any(|(k, v)| *k == "retry-after" && v == "11"));
        let gemini = exhausted.shaped(Provider::Gemini);
        let body: serde_json::Value = serde_json::from_str(&gemini.body()).unwrap();
        assert_eq!(body["error"]["code"], 429);
        assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(
            body["error"]["details"][1]["@type"],
            "type.googleapis.com/google.rpc.RetryInfo"
        );
        assert_eq!(body["error"]["details"][1]["retryDelay"], "11s");
        for (kind, status) in [
            (ErrorKind::UnknownKey, "UNAUTHENTICATED"),
            (ErrorKind::ClientAddressNotAllowed, "PERMISSION_DENIED"),
            (ErrorKind::UnknownEndpoint, "NOT_FOUND"),
        ] {
            let err = GatewayError::new(kind, "m").shaped(Provider::Gemini);
            let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
            assert_eq!(body["error"]["status"], status);
            assert_eq!(body["error"]["code"], err.status());
        }
    }

    #[test]
    fn only_internal_capacity_errors_are_retryable() {
        assert!(ErrorKind::NotReady.retryable());
        assert!(ErrorKind::NoAccountAvailable.retryable());
        assert!(!ErrorKind::UnknownKey.retryable());
        assert!(!ErrorKind::RouteMissing.retryable());
        let retry = GatewayError::new(ErrorKind::NotReady, "x").headers();
        assert!(retry.iter().any(|(k, v)| *k == "retry-after" && v == "1"));
        let auth = GatewayError::new(ErrorKind::RevokedKey, "x").headers();
        assert!(auth.iter().any(|(k, _)| *k == "www-authenticate"));
        assert!(!auth.iter().any(|(k, _)| *k == "retry-after"));
    }
}
