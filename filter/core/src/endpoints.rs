//! The data path's allowlist: the only (method, path) pairs a pool key reaches, and how each one
//! is served. A pool key buys model capacity, not the accounts behind it, so:
//!
//! - Only the pairs listed in [`ENDPOINTS`] (and `GET /v1/models/{id}`) are served; every other
//!   method or path is answered by the gateway and never reaches the upstream: `404
//!   unknown_endpoint`, or `501 unsupported_endpoint` for OpenAI API routes the pool cannot serve
//!   (embeddings, audio, files, …). Nothing bypasses this list.
//! - Matching is exact, on the path as Envoy normalized it (dot segments removed, slashes
//!   merged, escaped slashes rejected: see the listener in `envoy/`). A path with a dot segment,
//!   an empty segment, a backslash or any percent-escape can never equal a listed path, so it is
//!   refused even where a listener does not normalize.
//! - Only [`Serving::Forward`] endpoints leave the gateway with an account's credentials, and each
//!   one goes to exactly one upstream path ([`EndpointSpec::upstream`]): the `/v1` surface is
//!   rewritten onto the Codex backend's endpoints, never forwarded as typed. The usage and
//!   account-check endpoints are answered by the gateway itself from its own view of the pool, so
//!   no account's profile or usage page is ever fetched on a client's behalf.
//! - The query string is forwarded only where the endpoint takes one (the model list's
//!   `client_version`); elsewhere it is dropped before the router sees the path.
//! - A WebSocket upgrade matches only the upgrade entries, and a plain request never does.

use crate::errors::{ErrorKind, GatewayError};

/// Where the Codex endpoints live on the gateway's listener (the Codex CLI's `base_url` is
/// `http://HOST/backend-api/codex`). Every upstream path is under it on the gateway side, and
/// the route's rewrite maps it to the upstream base.
pub const GATEWAY_PREFIX: &str = "/backend-api";

/// The OpenAI-compatible surface for SDKs and agent tools.
pub const V1_PREFIX: &str = "/v1";

/// `client_version` sent on the model list when the client (an SDK on `/v1/models`) has none:
/// the Codex backend lists the models a CLI of this version may use.
pub const MODELS_CLIENT_VERSION: &str = "0.169.0";

/// A path echoed in an error message is cut to this many characters.
const MAX_ECHOED_PATH: usize = 200;

/// Longest model id accepted in `GET /v1/models/{id}`.
const MAX_MODEL_ID: usize = 128;

/// OpenAI API routes the pool cannot serve: answered 501 rather than 404, so a client learns
/// the route exists but not here.
const UNSUPPORTED_V1: &[&str] = &[
    "/v1/completions",
    "/v1/embeddings",
    "/v1/audio",
    "/v1/images",
    "/v1/files",
    "/v1/uploads",
    "/v1/batches",
    "/v1/fine_tuning",
    "/v1/moderations",
    "/v1/assistants",
    "/v1/threads",
    "/v1/vector_stores",
    "/v1/realtime",
    "/v1/evals",
    "/v1/containers",
    "/v1/conversations",
    "/v1/chat/completions/",
    "/v1/responses/",
];

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
    /// `POST /v1/responses`: the Responses API, normalized for the Codex backend.
    V1Responses,
    /// `GET /v1/responses` upgraded to a WebSocket.
    V1ResponsesWebSocket,
    /// `POST /v1/chat/completions`: translated to a Responses request and back.
    V1ChatCompletions,
    /// `GET /v1/models`: the Codex model list in OpenAI's shape.
    V1Models,
    /// `GET /v1/models/{id}`: one model of that list.
    V1Model,
}

/// How the gateway serves an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// Routed to an account and forwarded with its credentials.
    Forward,
    /// Answered by the gateway itself; nothing goes upstream.
    Local,
}

/// What the gateway does to the body on the way (see `translate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    /// Bytes pass unchanged both ways.
    None,
    /// `/v1/responses`: the request is normalized; a non-streaming answer is collected from
    /// the upstream's stream into one Response object.
    Responses,
    /// `/v1/chat/completions`: request and answer translated.
    ChatCompletions,
    /// `/v1/models[/{id}]`: the model list translated.
    Models,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointSpec {
    pub endpoint: Endpoint,
    pub method: &'static str,
    /// The path on the gateway's listener.
    pub path: &'static str,
    /// The gateway-side path it is sent on ([`GATEWAY_PREFIX`] + the upstream base's path),
    /// which the route rewrites onto the upstream base.
    pub upstream: &'static str,
    /// Whether the request must be a WebSocket upgrade (and only then matches).
    pub websocket: bool,
    /// Whether the query string is forwarded.
    pub keeps_query: bool,
    pub serving: Serving,
    pub translation: Translation,
}

const fn forward(endpoint: Endpoint, method: &'static str, path: &'static str) -> EndpointSpec {
    EndpointSpec {
        endpoint,
        method,
        path,
        upstream: path,
        websocket: false,
        keeps_query: false,
        serving: Serving::Forward,
        translation: Translation::None,
    }
}

/// Every (method, path) a pool key may reach. The one list: the README documents it.
pub const ENDPOINTS: &[EndpointSpec] = &[
    forward(Endpoint::Responses, "POST", "/backend-api/codex/responses"),
    EndpointSpec {
        websocket: true,
        ..forward(
            Endpoint::ResponsesWebSocket,
            "GET",
            "/backend-api/codex/responses",
        )
    },
    forward(
        Endpoint::Compact,
        "POST",
        "/backend-api/codex/responses/compact",
    ),
    EndpointSpec {
        keeps_query: true,
        ..forward(Endpoint::Models, "GET", "/backend-api/codex/models")
    },
    EndpointSpec {
        serving: Serving::Local,
        ..forward(Endpoint::Usage, "GET", "/backend-api/wham/usage")
    },
    EndpointSpec {
        serving: Serving::Local,
        ..forward(
            Endpoint::AccountCheck,
            "GET",
            "/backend-api/wham/accounts/check",
        )
    },
    EndpointSpec {
        upstream: "/backend-api/codex/responses",
        translation: Translation::Responses,
        ..forward(Endpoint::V1Responses, "POST", "/v1/responses")
    },
    EndpointSpec {
        upstream: "/backend-api/codex/responses",
        websocket: true,
        ..forward(Endpoint::V1ResponsesWebSocket, "GET", "/v1/responses")
    },
    EndpointSpec {
        upstream: "/backend-api/codex/responses",
        translation: Translation::ChatCompletions,
        ..forward(Endpoint::V1ChatCompletions, "POST", "/v1/chat/completions")
    },
    EndpointSpec {
        upstream: "/backend-api/codex/models",
        translation: Translation::Models,
        ..forward(Endpoint::V1Models, "GET", "/v1/models")
    },
    EndpointSpec {
        upstream: "/backend-api/codex/models",
        translation: Translation::Models,
        ..forward(Endpoint::V1Model, "GET", "/v1/models/{id}")
    },
];

impl EndpointSpec {
    /// The path under [`GATEWAY_PREFIX`], as the upstream base has it (`/codex/responses`).
    pub fn upstream_path(&self) -> &'static str {
        self.upstream
            .strip_prefix(GATEWAY_PREFIX)
            .unwrap_or(self.upstream)
    }

    /// Whether the body is read or rewritten on the way.
    pub fn translates(&self) -> bool {
        self.translation != Translation::None
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
            Self::V1Responses => "v1_responses",
            Self::V1ResponsesWebSocket => "v1_responses_websocket",
            Self::V1ChatCompletions => "v1_chat_completions",
            Self::V1Models => "v1_models",
            Self::V1Model => "v1_model",
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

    /// Whether this is a WebSocket endpoint.
    pub fn is_websocket(self) -> bool {
        self.spec().websocket
    }
}

/// A request the allowlist admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub spec: &'static EndpointSpec,
    /// The path to send on when it differs from the client's (`None`: unchanged): the query
    /// dropped, or a `/v1` path mapped onto the Codex backend's.
    pub rewritten_path: Option<String>,
    /// `GET /v1/models/{id}`: the id asked for.
    pub model_id: Option<String>,
}

/// Admits `method path` (the `:path` with its query) or answers the documented 404 / 501.
pub fn admit(method: &str, path: &str, websocket_upgrade: bool) -> Result<Admitted, GatewayError> {
    let (bare, query) = match path.split_once('?') {
        Some((bare, query)) => (bare, Some(query)),
        None => (path, None),
    };
    if let Some(id) = bare.strip_prefix("/v1/models/") {
        if method == "GET" && !websocket_upgrade && is_model_id(id) {
            let spec = Endpoint::V1Model.spec();
            return Ok(Admitted {
                spec,
                rewritten_path: Some(models_path()),
                model_id: Some(id.to_string()),
            });
        }
        return Err(not_found(method, bare));
    }
    let Some(spec) = ENDPOINTS.iter().find(|spec| {
        spec.path == bare && spec.method == method && spec.websocket == websocket_upgrade
    }) else {
        return Err(if is_unsupported_v1(bare) {
            unsupported(method, bare)
        } else {
            not_found(method, bare)
        });
    };
    let rewritten_path = if spec.endpoint == Endpoint::V1Models {
        Some(models_path())
    } else if spec.upstream != spec.path || (query.is_some() && !spec.keeps_query) {
        Some(spec.upstream.to_string())
    } else {
        None
    };
    Ok(Admitted {
        spec,
        rewritten_path,
        model_id: None,
    })
}

fn models_path() -> String {
    format!("{GATEWAY_PREFIX}/codex/models?client_version={MODELS_CLIENT_VERSION}")
}

/// Model ids are short and plain (`gpt-5.1-codex`, `o4-mini`): anything else is not one.
fn is_model_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MODEL_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
}

fn is_unsupported_v1(path: &str) -> bool {
    UNSUPPORTED_V1.iter().any(|prefix| {
        path == prefix.trim_end_matches('/')
            || path
                .strip_prefix(prefix.trim_end_matches('/'))
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

fn shown(method: &str, path: &str) -> (String, String) {
    (
        method.chars().take(16).collect(),
        path.chars().take(MAX_ECHOED_PATH).collect(),
    )
}

/// OpenAI's own answer to an unknown URL, with the gateway's code.
fn not_found(method: &str, path: &str) -> GatewayError {
    let (method, path) = shown(method, path);
    GatewayError::new(
        ErrorKind::UnknownEndpoint,
        format!(
            "Invalid URL ({method} {path}): codexmesh serves the Codex endpoints under {GATEWAY_PREFIX}/codex/ and /v1/responses, /v1/chat/completions and /v1/models."
        ),
    )
}

/// An OpenAI API route that exists but that a pool of Codex subscriptions cannot serve.
fn unsupported(method: &str, path: &str) -> GatewayError {
    let (method, path) = shown(method, path);
    GatewayError::new(
        ErrorKind::UnsupportedEndpoint,
        format!(
            "{method} {path} is not available through codexmesh: a pool of Codex subscriptions serves /v1/responses, /v1/chat/completions and /v1/models only."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn admitted(method: &str, path: &str) -> Option<Endpoint> {
        admit(method, path, false).ok().map(|a| a.spec.endpoint)
    }

    #[test]
    fn each_endpoint_has_one_entry_sent_under_the_gateway_prefix() {
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
                spec.upstream,
                "every upstream path is under the gateway prefix"
            );
            assert!(
                spec.upstream.starts_with("/backend-api/codex/") || spec.serving == Serving::Local
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
        assert_eq!(ws.spec.serving, Serving::Forward);
        assert_eq!(ws.rewritten_path, None);
    }

    #[test]
    fn the_v1_surface_maps_onto_the_codex_backend() {
        let chat = admit("POST", "/v1/chat/completions", false).unwrap();
        assert_eq!(chat.spec.endpoint, Endpoint::V1ChatCompletions);
        assert_eq!(chat.spec.translation, Translation::ChatCompletions);
        assert_eq!(
            chat.rewritten_path.as_deref(),
            Some("/backend-api/codex/responses")
        );
        let responses = admit("POST", "/v1/responses?x=1", false).unwrap();
        assert_eq!(responses.spec.endpoint, Endpoint::V1Responses);
        assert_eq!(
            responses.rewritten_path.as_deref(),
            Some("/backend-api/codex/responses")
        );
        let ws = admit("GET", "/v1/responses", true).unwrap();
        assert_eq!(ws.spec.endpoint, Endpoint::V1ResponsesWebSocket);
        assert_eq!(ws.spec.translation, Translation::None);
        assert_eq!(
            ws.rewritten_path.as_deref(),
            Some("/backend-api/codex/responses")
        );
        let models = admit("GET", "/v1/models", false).unwrap();
        assert_eq!(models.spec.endpoint, Endpoint::V1Models);
        assert_eq!(
            models.rewritten_path.as_deref(),
            Some("/backend-api/codex/models?client_version=0.169.0")
        );
        let one = admit("GET", "/v1/models/gpt-5.1-codex", false).unwrap();
        assert_eq!(one.spec.endpoint, Endpoint::V1Model);
        assert_eq!(one.model_id.as_deref(), Some("gpt-5.1-codex"));
        assert!(Endpoint::V1ChatCompletions.matches_upstream_path("/backend-api/codex/responses"));
        assert!(Endpoint::V1Model.matches_upstream_path("/backend-api/codex/models"));
        assert!(!Endpoint::V1Models.matches_upstream_path("/backend-api/codex/responses"));
    }

    #[test]
    fn openai_routes_the_pool_cannot_serve_are_501() {
        for (method, path) in [
            ("POST", "/v1/embeddings"),
            ("POST", "/v1/audio/transcriptions"),
            ("GET", "/v1/files"),
            ("POST", "/v1/batches"),
            ("POST", "/v1/completions"),
            ("GET", "/v1/responses/resp_123"),
            ("GET", "/v1/chat/completions/abc"),
            // Stored completions: a real route, but nothing is stored here.
            ("GET", "/v1/chat/completions"),
        ] {
            let err = admit(method, path, false).unwrap_err();
            assert_eq!(err.status(), 501, "{method} {path}");
            assert_eq!(err.kind, ErrorKind::UnsupportedEndpoint);
        }
        for (method, path) in [
            ("GET", "/v1/models/"),
            ("GET", "/v1/models/a/b"),
            ("GET", "/v1/models/%2e%2e"),
            ("DELETE", "/v1/models/gpt-5"),
            ("POST", "/v1/models"),
            ("GET", "/v1/embeddingsx"),
            ("POST", "/v2/responses"),
        ] {
            let err = admit(method, path, false).unwrap_err();
            assert_eq!(err.status(), 404, "{method} {path}");
        }
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
        assert_eq!(
            turn.rewritten_path.as_deref(),
            Some("/backend-api/codex/responses")
        );
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
