//! The data path's allowlist: the only (method, path) pairs a pool key reaches, and how each one
//! is served. A pool key buys Codex capacity, not the accounts behind it, so:
//!
//! - Only the pairs listed in [`ENDPOINTS`] are served; every other method or path, under
//!   `/backend-api/` or anywhere else, is answered `404` by the gateway and never reaches the
//!   upstream. New surfaces (the `/v1` API, other providers) extend this list; nothing bypasses it.
//! - Matching is exact, on the path as Envoy normalized it (dot segments removed, slashes
//!   merged, escaped slashes rejected: see the listener in `envoy/`). A path with a dot segment,
//!   an empty segment, a backslash or any percent-escape can never equal a listed path, so it is
//!   refused even where a listener does not normalize.
//! - Only [`Serving::Forward`] endpoints leave the gateway with an account's credentials; the
//!   usage and account-check endpoints are answered by the gateway itself from its own view of the
//!   pool, so no account's profile or usage page is ever fetched on a client's behalf.
//! - The query string is forwarded only where the endpoint takes one (the model list's
//!   `client_version`); elsewhere it is dropped before the router sees the path.

use crate::errors::{ErrorKind, GatewayError};

/// Where every endpoint lives on the gateway's listener (the Codex CLI's `base_url` is
/// `http://HOST/backend-api/codex`).
pub const GATEWAY_PREFIX: &str = "/backend-api";

/// A path echoed in an error message is cut to this many characters.
const MAX_ECHOED_PATH: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// A model turn over HTTP (SSE or JSON).
    Responses,
    /// A model turn over a WebSocket (the upgrade of `GET /codex/responses`).
    ResponsesWebSocket,
    /// Remote compaction.
    Compact,
    /// The model list.
    Models,
    /// Quota status: answered by the gateway for the whole pool.
    Usage,
    /// The Codex CLI's start-up account check: answered by the gateway.
    AccountCheck,
}

/// How the gateway serves an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// Routed to an account and forwarded with its credentials.
    Forward,
    /// Answered by the gateway itself; nothing goes upstream.
    Local,
    /// A WebSocket upgrade (answered 426 until WebSockets are pooled).
    WebSocket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointSpec {
    pub endpoint: Endpoint,
    pub method: &'static str,
    /// The path on the gateway's listener: [`GATEWAY_PREFIX`], then the path the upstream base
    /// has too ([`EndpointSpec::upstream_path`]).
    pub path: &'static str,
    /// Whether the request must be a WebSocket upgrade (and only then matches).
    pub websocket: bool,
    /// Whether the query string is forwarded.
    pub keeps_query: bool,
    pub serving: Serving,
}

/// Every (method, path) a pool key may reach. The one list: the README documents it.
pub const ENDPOINTS: &[EndpointSpec] = &[
    EndpointSpec {
        endpoint: Endpoint::Responses,
        method: "POST",
        path: "/backend-api/codex/responses",
        websocket: false,
        keeps_query: false,
        serving: Serving::Forward,
    },
    EndpointSpec {
        endpoint: Endpoint::ResponsesWebSocket,
        method: "GET",
        path: "/backend-api/codex/responses",
        websocket: true,
        keeps_query: false,
        serving: Serving::WebSocket,
    },
    EndpointSpec {
        endpoint: Endpoint::Compact,
        method: "POST",
        path: "/backend-api/codex/responses/compact",
        websocket: false,
        keeps_query: false,
        serving: Serving::Forward,
    },
    EndpointSpec {
        endpoint: Endpoint::Models,
        method: "GET",
        path: "/backend-api/codex/models",
        websocket: false,
        keeps_query: true,
        serving: Serving::Forward,
    },
    EndpointSpec {
        endpoint: Endpoint::Usage,
        method: "GET",
        path: "/backend-api/wham/usage",
        websocket: false,
        keeps_query: false,
        serving: Serving::Local,
    },
    EndpointSpec {
        endpoint: Endpoint::AccountCheck,
        method: "GET",
        path: "/backend-api/wham/accounts/check",
        websocket: false,
        keeps_query: false,
        serving: Serving::Local,
    },
];

impl EndpointSpec {
    /// The path under [`GATEWAY_PREFIX`], as the upstream base has it (`/codex/responses`).
    pub fn upstream_path(&self) -> &'static str {
        self.path.strip_prefix(GATEWAY_PREFIX).unwrap_or(self.path)
    }
}

impl Endpoint {
    /// A stable name, for the hand-off and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Responses => "responses",
            Self::ResponsesWebSocket => "responses_websocket",
            Self::Compact => "compact",
            Self::Models => "models",
            Self::Usage => "usage",
            Self::AccountCheck => "account_check",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        ENDPOINTS
            .iter()
            .map(|spec| spec.endpoint)
            .find(|e| e.as_str() == name)
    }

    pub fn spec(self) -> &'static EndpointSpec {
        // Every variant has exactly one entry (a unit test holds this); the first entry is
        // only a fallback the compiler needs.
        ENDPOINTS
            .iter()
            .find(|spec| spec.endpoint == self)
            .unwrap_or(&ENDPOINTS[0])
    }

    /// Whether an upstream request path (after the route's prefix rewrite, without its query)
    /// is this endpoint's. The upstream filter checks this before it injects credentials.
    pub fn matches_upstream_path(self, path: &str) -> bool {
        let spec = self.spec();
        spec.serving != Serving::Local && path.ends_with(spec.upstream_path())
    }
}

/// A request the allowlist admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub spec: &'static EndpointSpec,
    /// The path to send on when the client's query string must be dropped (`None`: unchanged).
    pub rewritten_path: Option<&'static str>,
}

/// Admits `method path` (the `:path` with its query) or answers the documented 404.
pub fn admit(method: &str, path: &str, websocket_upgrade: bool) -> Result<Admitted, GatewayError> {
    let (bare, query) = match path.split_once('?') {
        Some((bare, query)) => (bare, Some(query)),
        None => (path, None),
    };
    let spec = ENDPOINTS
        .iter()
        .find(|spec| {
            spec.path == bare && spec.method == method && spec.websocket == websocket_upgrade
        })
        .ok_or_else(|| not_found(method, bare))?;
    let rewritten_path = match (query, spec.keeps_query) {
        (Some(_), false) => Some(spec.path),
        _ => None,
    };
    Ok(Admitted {
        spec,
        rewritten_path,
    })
}

/// OpenAI's own answer to an unknown URL, with the gateway's code.
fn not_found(method: &str, path: &str) -> GatewayError {
    let shown: String = path.chars().take(MAX_ECHOED_PATH).collect();
    let method: String = method.chars().take(16).collect();
    GatewayError::new(
        ErrorKind::UnknownEndpoint,
        format!(
            "Invalid URL ({method} {shown}): codexmesh serves only the Codex endpoints under {GATEWAY_PREFIX}/codex/."
        ),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn admitted(method: &str, path: &str) -> Option<Endpoint> {
        admit(method, path, false).ok().map(|a| a.spec.endpoint)
    }

    #[test]
    fn each_endpoint_has_one_entry_under_the_gateway_prefix() {
        for spec in ENDPOINTS {
            assert_eq!(
                ENDPOINTS
                    .iter()
                    .filter(|s| s.endpoint == spec.endpoint)
                    .count(),
                1
            );
            assert_eq!(spec.endpoint.spec(), spec);
            assert_eq!(
                Endpoint::from_name(spec.endpoint.as_str()),
                Some(spec.endpoint)
            );
            assert_eq!(
                format!("{GATEWAY_PREFIX}{}", spec.upstream_path()),
                spec.path,
                "every endpoint lives under the gateway prefix"
            );
        }
    }

    #[test]
    fn codex_endpoints_are_admitted() {
        assert_eq!(
            admitted("POST", "/backend-api/codex/responses"),
            Some(Endpoint::Responses)
        );
        assert_eq!(
            admitted("POST", "/backend-api/codex/responses/compact"),
            Some(Endpoint::Compact)
        );
        assert_eq!(
            admitted("GET", "/backend-api/codex/models?client_version=0.169.0"),
            Some(Endpoint::Models)
        );
        assert_eq!(
            admitted("GET", "/backend-api/wham/usage"),
            Some(Endpoint::Usage)
        );
        assert_eq!(
            admitted("GET", "/backend-api/wham/accounts/check"),
            Some(Endpoint::AccountCheck)
        );
        let ws = admit("GET", "/backend-api/codex/responses", true).unwrap();
        assert_eq!(ws.spec.endpoint, Endpoint::ResponsesWebSocket);
        assert_eq!(ws.spec.serving, Serving::WebSocket);
    }

    #[test]
    fn anything_else_is_a_404() {
        for (method, path) in [
            ("GET", "/backend-api/conversations"),
            ("GET", "/backend-api/me"),
            ("POST", "/backend-api/settings/user"),
            ("GET", "/backend-api/codex/responses"),
            ("PUT", "/backend-api/codex/responses"),
            ("DELETE", "/backend-api/codex/responses"),
            ("POST", "/backend-api/codex/models"),
            ("POST", "/backend-api/wham/usage"),
            ("GET", "/backend-api/codex/tasks"),
            ("GET", "/backend-api/wham/tasks/list"),
            ("GET", "/"),
            ("GET", "/v1/models"),
            ("POST", "/codex/responses"),
            ("POST", "/backend-api/codex/responses/"),
            ("POST", "/backend-api/codex/../conversations"),
            ("POST", "/backend-api/codex/%2e%2e/conversations"),
            ("POST", "/backend-api/codex/%72esponses"),
            ("POST", "/backend-api//codex/responses"),
            ("POST", "/backend-api/codex/responses/../../me"),
            ("POST", "/backend-api/codex\\responses"),
            ("POST", "/BACKEND-API/codex/responses"),
            ("POST", "/backend-api/codex/responses%2F..%2F..%2Fme"),
            ("post", "/backend-api/codex/responses"),
            ("POST", ""),
        ] {
            let err = admit(method, path, false).unwrap_err();
            assert_eq!(err.status(), 404, "{method} {path}");
            assert_eq!(err.kind, ErrorKind::UnknownEndpoint);
        }
        // An upgrade only matches the upgrade entry, and a plain POST never matches it.
        assert!(admit("POST", "/backend-api/codex/responses", true).is_err());
        assert!(admit("GET", "/backend-api/codex/models", true).is_err());
    }

    #[test]
    fn the_query_is_kept_only_where_the_endpoint_takes_one() {
        let models = admit(
            "GET",
            "/backend-api/codex/models?client_version=1.2.3",
            false,
        )
        .unwrap();
        assert_eq!(models.rewritten_path, None);
        let turn = admit("POST", "/backend-api/codex/responses?x=../../me", false).unwrap();
        assert_eq!(turn.rewritten_path, Some("/backend-api/codex/responses"));
        let plain = admit("POST", "/backend-api/codex/responses", false).unwrap();
        assert_eq!(plain.rewritten_path, None);
    }

    #[test]
    fn the_404_echoes_a_bounded_path_as_valid_json() {
        let long = format!("/backend-api/{}\"x", "a".repeat(5000));
        let err = admit("GET", &long, false).unwrap_err();
        assert!(err.message.len() < 400);
        let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
        assert_eq!(body["error"]["code"], "unknown_endpoint");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn upstream_paths_are_checked_by_suffix_and_local_endpoints_never_match() {
        assert!(Endpoint::Responses.matches_upstream_path("/backend-api/codex/responses"));
        assert!(Endpoint::Responses.matches_upstream_path("/codex/responses"));
        assert!(!Endpoint::Responses.matches_upstream_path("/backend-api/conversations"));
        assert!(!Endpoint::Models.matches_upstream_path("/backend-api/codex/responses"));
        assert!(!Endpoint::Usage.matches_upstream_path("/backend-api/wham/usage"));
        assert!(!Endpoint::AccountCheck.matches_upstream_path("/backend-api/wham/accounts/check"));
    }
}
