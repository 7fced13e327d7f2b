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
//! - Each endpoint belongs to one provider ([`EndpointSpec::provider`]) and is served only by
//!   that provider's accounts, through that provider's Envoy cluster. Claude's Messages API
//!   (`/v1/messages`, `/v1/messages/count_tokens`) keeps its query (`beta=true`); the model
//!   list `/v1/models[/{id}]` is Claude's only when the request carries `anthropic-version`
//!   (Claude Code always does), otherwise it stays the Codex list in OpenAI's shape. Gemini's
//!   Code Assist calls are `/v1internal:<method>`: three are forwarded, the start-up and
//!   bookkeeping calls are answered by the gateway (`gemini::local_answer`), any other method
//!   is a Google-shaped 404.
//! - Every refusal is in the shape the request's client reads ([`request_shape`]).

use crate::errors::{ErrorKind, GatewayError};
use crate::gemini::LocalCall;
use crate::provider::Provider;

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
    /// `POST /v1/messages`: a Claude turn (SSE or JSON).
    ClaudeMessages,
    /// `POST /v1/messages/count_tokens`.
    ClaudeCountTokens,
    /// `GET /v1/models` with `anthropic-version`: Anthropic's model list.
    ClaudeModels,
    /// `GET /v1/models/{id}` with `anthropic-version`.
    ClaudeModel,
    /// `POST /v1internal:generateContent`.
    GeminiGenerate,
    /// `POST /v1internal:streamGenerateContent` (`?alt=sse`).
    GeminiStreamGenerate,
    /// `POST /v1internal:countTokens` (no project).
    GeminiCountTokens,
    /// Gemini CLI's start-up and bookkeeping calls, answered by the gateway.
    GeminiLoadCodeAssist,
    GeminiOnboardUser,
    GeminiRetrieveUserQuota,
    GeminiListExperiments,
    GeminiFetchAdminControls,
    GeminiRecordMetrics,
    GeminiGetUserSetting,
    GeminiSetUserSetting,
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
    /// Whose accounts serve it (and whose error shape its refusals take).
    pub provider: Provider,
}

/// Where Claude's Messages API lives (the same path upstream).
pub const CLAUDE_PREFIX: &str = "/v1/messages";

/// Where Gemini CLI's Code Assist calls live (`/v1internal:<method>`, the same path upstream).
pub const GEMINI_PREFIX: &str = "/v1internal:";

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
        provider: Provider::Codex,
    }
}

const fn claude(endpoint: Endpoint, method: &'static str, path: &'static str) -> EndpointSpec {
    EndpointSpec {
        keeps_query: true,
        provider: Provider::Claude,
        ..forward(endpoint, method, path)
    }
}

const fn gemini(endpoint: Endpoint, method: &'static str, path: &'static str) -> EndpointSpec {
    EndpointSpec {
        provider: Provider::Gemini,
        ..forward(endpoint, method, path)
    }
}

const fn gemini_local(
    endpoint: Endpoint,
    method: &'static str,
    path: &'static str,
) -> EndpointSpec {
    EndpointSpec {
        serving: Serving::Local,
        ..gemini(endpoint, method, path)
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
    claude(Endpoint::ClaudeMessages, "POST", "/v1/messages"),
    claude(
        Endpoint::ClaudeCountTokens,
        "POST",
        "/v1/messages/count_tokens",
    ),
    claude(Endpoint::ClaudeModels, "GET", "/v1/models"),
    claude(Endpoint::ClaudeModel, "GET", "/v1/models/{id}"),
    gemini(
        Endpoint::GeminiGenerate,
        "POST",
        "/v1internal:generateContent",
    ),
    EndpointSpec {
        keeps_query: true,
        ..gemini(
            Endpoint::GeminiStreamGenerate,
            "POST",
            "/v1internal:streamGenerateContent",
        )
    },
    gemini(
        Endpoint::GeminiCountTokens,
        "POST",
        "/v1internal:countTokens",
    ),
    gemini_local(
        Endpoint::GeminiLoadCodeAssist,
        "POST",
        "/v1internal:loadCodeAssist",
    ),
    gemini_local(
        Endpoint::GeminiOnboardUser,
        "POST",
        "/v1internal:onboardUser",
    ),
    gemini_local(
        Endpoint::GeminiRetrieveUserQuota,
        "POST",
        "/v1internal:retrieveUserQuota",
    ),
    gemini_local(
        Endpoint::GeminiListExperiments,
        "POST",
        "/v1internal:listExperiments",
    ),
    gemini_local(
        Endpoint::GeminiFetchAdminControls,
        "POST",
        "/v1internal:fetchAdminControls",
    ),
    gemini_local(
        Endpoint::GeminiRecordMetrics,
        "POST",
        "/v1internal:recordCodeAssistMetrics",
    ),
    gemini_local(
        Endpoint::GeminiGetUserSetting,
        "GET",
        "/v1internal:getCodeAssistGlobalUserSetting",
    ),
    gemini_local(
        Endpoint::GeminiSetUserSetting,
        "POST",
        "/v1internal:setCodeAssistGlobalUserSetting",
    ),
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
            Self::ClaudeMessages => "claude_messages",
            Self::ClaudeCountTokens => "claude_count_tokens",
            Self::ClaudeModels => "claude_models",
            Self::ClaudeModel => "claude_model",
            Self::GeminiGenerate => "gemini_generate",
            Self::GeminiStreamGenerate => "gemini_stream_generate",
            Self::GeminiCountTokens => "gemini_count_tokens",
            Self::GeminiLoadCodeAssist => "gemini_load_code_assist",
            Self::GeminiOnboardUser => "gemini_onboard_user",
            Self::GeminiRetrieveUserQuota => "gemini_retrieve_user_quota",
            Self::GeminiListExperiments => "gemini_list_experiments",
            Self::GeminiFetchAdminControls => "gemini_fetch_admin_controls",
            Self::GeminiRecordMetrics => "gemini_record_metrics",
            Self::GeminiGetUserSetting => "gemini_get_user_setting",
            Self::GeminiSetUserSetting => "gemini_set_user_setting",
        }
    }

    /// Whose accounts serve this endpoint (a match, not a walk of [`ENDPOINTS`]: the upstream
    /// filter asks per attempt; a unit test holds it equal to the spec's).
    pub fn provider(self) -> Provider {
        match self {
            Self::Responses
            | Self::ResponsesWebSocket
            | Self::Compact
            | Self::Models
            | Self::Usage
            | Self::AccountCheck
            | Self::V1Responses
            | Self::V1ResponsesWebSocket
            | Self::V1ChatCompletions
            | Self::V1Models
            | Self::V1Model => Provider::Codex,
            Self::ClaudeMessages
            | Self::ClaudeCountTokens
            | Self::ClaudeModels
            | Self::ClaudeModel => Provider::Claude,
            Self::GeminiGenerate
            | Self::GeminiStreamGenerate
            | Self::GeminiCountTokens
            | Self::GeminiLoadCodeAssist
            | Self::GeminiOnboardUser
            | Self::GeminiRetrieveUserQuota
            | Self::GeminiListExperiments
            | Self::GeminiFetchAdminControls
            | Self::GeminiRecordMetrics
            | Self::GeminiGetUserSetting
            | Self::GeminiSetUserSetting => Provider::Gemini,
        }
    }

    /// For a Gemini call the gateway answers itself: which one.
    pub fn gemini_local_call(self) -> Option<LocalCall> {
        match self {
            Self::GeminiLoadCodeAssist => Some(LocalCall::LoadCodeAssist),
            Self::GeminiOnboardUser => Some(LocalCall::OnboardUser),
            Self::GeminiRetrieveUserQuota => Some(LocalCall::RetrieveUserQuota),
            Self::GeminiListExperiments
            | Self::GeminiFetchAdminControls
            | Self::GeminiRecordMetrics
            | Self::GeminiGetUserSetting
            | Self::GeminiSetUserSetting => Some(LocalCall::Empty),
            _ => None,
        }
    }

    /// Whether the upstream gets the account's project in the body (`gemini::with_project`).
    pub fn carries_gemini_project(self) -> bool {
        matches!(self, Self::GeminiGenerate | Self::GeminiStreamGenerate)
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
        if spec.serving == Serving::Local {
            return false;
        }
        if self == Self::ClaudeModel {
            return path
                .rsplit_once("/v1/models/")
                .is_some_and(|(_, id)| is_model_id(id));
        }
        path.ends_with(spec.upstream_path())
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

/// Whose error shape a request's refusals take: Gemini's for `/v1internal:…`, Anthropic's for
/// `/v1/messages…` or a request carrying `anthropic-version`, else OpenAI's.
pub fn request_shape(path: &str, anthropic_version: bool) -> Provider {
    if path.starts_with(GEMINI_PREFIX) {
        Provider::Gemini
    } else if anthropic_version || path.starts_with(CLAUDE_PREFIX) {
        Provider::Claude
    } else {
        Provider::Codex
    }
}

/// Admits `method path` (the `:path` with its query) or answers the documented 404 / 501.
pub fn admit(method: &str, path: &str, websocket_upgrade: bool) -> Result<Admitted, GatewayError> {
    admit_request(method, path, websocket_upgrade, false)
}

/// [`admit`] for a request that may carry `anthropic-version` (which makes `/v1/models[/{id}]`
/// Claude's).
pub fn admit_request(
    method: &str,
    path: &str,
    websocket_upgrade: bool,
    anthropic_version: bool,
) -> Result<Admitted, GatewayError> {
    let shape = request_shape(path, anthropic_version);
    admit_shaped(method, path, websocket_upgrade, anthropic_version).map_err(|e| e.shaped(shape))
}

fn admit_shaped(
    method: &str,
    path: &str,
    websocket_upgrade: bool,
    anthropic_version: bool,
) -> Result<Admitted, GatewayError> {
    let (bare, query) = match path.split_once('?') {
        Some((bare, query)) => (bare, Some(query)),
        None => (path, None),
    };
    if let Some(id) = bare.strip_prefix("/v1/models/") {
        if method == "GET" && !websocket_upgrade && is_model_id(id) && anthropic_version {
            return Ok(Admitted {
                spec: Endpoint::ClaudeModel.spec(),
                rewritten_path: None,
                model_id: Some(id.to_string()),
            });
        }
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
    let claude_models = anthropic_version && bare == "/v1/models";
    let Some(spec) = ENDPOINTS.iter().find(|spec| {
        spec.path == bare
            && spec.method == method
            && spec.websocket == websocket_upgrade
            && (!claude_models || spec.provider == Provider::Claude)
    }) else {
        if bare.starts_with(GEMINI_PREFIX) {
            return Err(gemini_not_found(method, bare));
        }
        if bare.starts_with(CLAUDE_PREFIX) || anthropic_version {
            return Err(claude_not_found(method, bare));
        }
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

/// Anthropic's answer to an unknown URL.
fn claude_not_found(method: &str, path: &str) -> GatewayError {
    let (method, path) = shown(method, path);
    GatewayError::new(
        ErrorKind::UnknownEndpoint,
        format!(
            "Not found ({method} {path}): codexmesh serves Claude's POST /v1/messages, POST /v1/messages/count_tokens and GET /v1/models."
        ),
    )
}

/// Google's answer to a Code Assist method the gateway does not serve.
fn gemini_not_found(method: &str, path: &str) -> GatewayError {
    let (method, path) = shown(method, path);
    GatewayError::new(
        ErrorKind::UnknownEndpoint,
        format!(
            "Method not found ({method} {path}): codexmesh serves Code Assist's generateContent, streamGenerateContent and countTokens."
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
            assert_eq!(spec.endpoint.provider(), spec.provider);
            assert_eq!(
                Endpoint::from_name(spec.endpoint.as_str()),
                Some(spec.endpoint)
            );
            match spec.provider {
                Provider::Codex => {
                    assert_eq!(
                        format!("{GATEWAY_PREFIX}{}", spec.upstream_path()),
                        spec.upstream,
                        "every Codex upstream path is under the gateway prefix"
                    );
                    assert!(
                        spec.upstream.starts_with("/backend-api/codex/")
                            || spec.serving == Serving::Local
                    );
                }
                // Claude and Gemini paths go upstream as the client sent them.
                Provider::Claude => {
                    assert_eq!(spec.upstream, spec.path);
                    assert!(spec.path.starts_with("/v1/"));
                }
                Provider::Gemini => {
                    assert_eq!(spec.upstream, spec.path);
                    assert!(spec.path.starts_with(GEMINI_PREFIX));
                    assert_eq!(
                        spec.serving == Serving::Local,
                        spec.endpoint.gemini_local_call().is_some()
                    );
                }
            }
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

    fn claude_admitted(method: &str, path: &str) -> Result<Admitted, GatewayError> {
        admit_request(method, path, false, true)
    }

    #[test]
    fn claude_routes_keep_their_query_and_models_follow_anthropic_version() {
        let turn = admit("POST", "/v1/messages?beta=true", false).unwrap();
        assert_eq!(turn.spec.endpoint, Endpoint::ClaudeMessages);
        assert_eq!(turn.spec.provider, Provider::Claude);
        assert_eq!(turn.rewritten_path, None, "the query is kept");
        let count = claude_admitted("POST", "/v1/messages/count_tokens?beta=true").unwrap();
        assert_eq!(count.spec.endpoint, Endpoint::ClaudeCountTokens);
        assert_eq!(count.rewritten_path, None);
        let models = claude_admitted("GET", "/v1/models?limit=20").unwrap();
        assert_eq!(models.spec.endpoint, Endpoint::ClaudeModels);
        assert_eq!(models.rewritten_path, None);
        let one = claude_admitted("GET", "/v1/models/claude-sonnet-5-5").unwrap();
        assert_eq!(one.spec.endpoint, Endpoint::ClaudeModel);
        assert_eq!(one.model_id.as_deref(), Some("claude-sonnet-5-5"));
        assert_eq!(one.rewritten_path, None);
        // Without anthropic-version the model list stays the Codex one.
        assert_eq!(admitted("GET", "/v1/models"), Some(Endpoint::V1Models));
        assert_eq!(admitted("GET", "/v1/models/x"), Some(Endpoint::V1Model));
        // anthropic-version does not turn an OpenAI route into a Claude one.
        let chat = claude_admitted("POST", "/v1/chat/completions").unwrap();
        assert_eq!(chat.spec.provider, Provider::Codex);
        assert!(Endpoint::ClaudeModel.matches_upstream_path("/v1/models/claude-x"));
        assert!(!Endpoint::ClaudeModel.matches_upstream_path("/v1/models/a/b"));
        assert!(Endpoint::ClaudeMessages.matches_upstream_path("/anthropic/v1/messages"));
        assert!(!Endpoint::ClaudeMessages.matches_upstream_path("/v1/messages/batches"));
    }

    #[test]
    fn claude_refusals_are_anthropic_shaped() {
        for (method, path) in [
            ("GET", "/v1/messages"),
            ("POST", "/v1/messages/batches"),
            ("POST", "/v1/messages/"),
            ("POST", "/v1/messages/../models"),
            ("POST", "/v1/complete"),
        ] {
            let err = claude_admitted(method, path).unwrap_err();
            assert_eq!(err.status(), 404, "{method} {path}");
            assert_eq!(err.shape, Provider::Claude);
            let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], "not_found_error");
        }
        // /v1/messages… is Claude's even without the version header.
        let err = admit("POST", "/v1/messages/batches", false).unwrap_err();
        assert_eq!(err.shape, Provider::Claude);
    }

    #[test]
    fn gemini_calls_are_forwarded_answered_or_refused_in_googles_shape() {
        for (method, path, endpoint, serving) in [
            (
                "POST",
                "/v1internal:generateContent",
                Endpoint::GeminiGenerate,
                Serving::Forward,
            ),
            (
                "POST",
                "/v1internal:countTokens",
                Endpoint::GeminiCountTokens,
                Serving::Forward,
            ),
            (
                "POST",
                "/v1internal:loadCodeAssist",
                Endpoint::GeminiLoadCodeAssist,
                Serving::Local,
            ),
            (
                "POST",
                "/v1internal:onboardUser",
                Endpoint::GeminiOnboardUser,
                Serving::Local,
            ),
            (
                "POST",
                "/v1internal:retrieveUserQuota",
                Endpoint::GeminiRetrieveUserQuota,
                Serving::Local,
            ),
            (
                "POST",
                "/v1internal:listExperiments",
                Endpoint::GeminiListExperiments,
                Serving::Local,
            ),
            (
                "POST",
                "/v1internal:fetchAdminControls",
                Endpoint::GeminiFetchAdminControls,
                Serving::Local,
            ),
            (
                "POST",
                "/v1internal:recordCodeAssistMetrics",
                Endpoint::GeminiRecordMetrics,
                Serving::Local,
            ),
            (
                "GET",
                "/v1internal:getCodeAssistGlobalUserSetting",
                Endpoint::GeminiGetUserSetting,
                Serving::Local,
            ),
            (
                "POST",
                "/v1internal:setCodeAssistGlobalUserSetting",
                Endpoint::GeminiSetUserSetting,
                Serving::Local,
            ),
        ] {
            let a = admit(method, path, false).unwrap();
            assert_eq!(a.spec.endpoint, endpoint, "{path}");
            assert_eq!(a.spec.serving, serving, "{path}");
            assert_eq!(a.spec.provider, Provider::Gemini);
            assert_eq!(a.rewritten_path, None);
        }
        let stream = admit("POST", "/v1internal:streamGenerateContent?alt=sse", false).unwrap();
        assert_eq!(stream.spec.endpoint, Endpoint::GeminiStreamGenerate);
        assert_eq!(stream.rewritten_path, None, "alt=sse is kept");
        let plain = admit("POST", "/v1internal:generateContent?x=1", false).unwrap();
        assert_eq!(
            plain.rewritten_path.as_deref(),
            Some("/v1internal:generateContent")
        );
        assert!(Endpoint::GeminiGenerate.carries_gemini_project());
        assert!(Endpoint::GeminiStreamGenerate.carries_gemini_project());
        assert!(!Endpoint::GeminiCountTokens.carries_gemini_project());
        assert!(!Endpoint::GeminiLoadCodeAssist.matches_upstream_path("/v1internal:loadCodeAssist"));
        for (method, path) in [
            ("POST", "/v1internal:deleteEverything"),
            ("GET", "/v1internal:generateContent"),
            ("POST", "/v1internal:generateContent/x"),
            ("POST", "/v1internal:"),
            ("GET", "/v1internal/operations/x"),
        ] {
            let err = admit(method, path, false).unwrap_err();
            assert_eq!(err.status(), 404, "{method} {path}");
            let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
            if path.starts_with(GEMINI_PREFIX) {
                assert_eq!(body["error"]["status"], "NOT_FOUND", "{path}");
                assert_eq!(body["error"]["code"], 404);
            }
        }
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
