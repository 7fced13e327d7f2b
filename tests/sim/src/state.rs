//! Shared simulator state: accounts, global behaviour knobs, the request log and the clock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::accounts::Registry;
use crate::clock::SimClock;
use crate::device::{DeviceLogins, SignInAs, DEFAULT_CODE_TTL_SECS, DEFAULT_POLL_INTERVAL_SECS};
use crate::recording::RequestRecord;

/// Default reply of a model turn.
pub const DEFAULT_REPLY: &str = "Hello from the codexmesh simulator.";

/// How a WebSocket upgrade on `GET /codex/responses` is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebsocketMode {
    /// Accept it (101) and serve Responses WebSocket turns, like the real backend.
    #[default]
    Accept,
    /// 426 Upgrade Required: the CLI falls back to SSE at once.
    UpgradeRequired,
    /// 404: the CLI retries a few times first.
    NotFound,
}

impl WebsocketMode {
    /// The refusal status, or `None` when upgrades are accepted.
    pub fn refusal_status(self) -> Option<u16> {
        match self {
            Self::Accept => None,
            Self::UpgradeRequired => Some(426),
            Self::NotFound => Some(404),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::UpgradeRequired => "426",
            Self::NotFound => "404",
        }
    }
}

impl Serialize for WebsocketMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WebsocketMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let s = match &v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        match s.as_str() {
            "accept" => Ok(Self::Accept),
            "426" => Ok(Self::UpgradeRequired),
            "404" => Ok(Self::NotFound),
            _ => Err(serde::de::Error::custom(
                "websocket must be \"accept\", \"426\" or \"404\"",
            )),
        }
    }
}

/// Which earlier responses a WebSocket `previous_response_id` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviousResponseScope {
    /// Any response the same account produced (on this connection, another one, or over HTTP).
    #[default]
    Account,
    /// Only responses produced on the same connection (what `store:false` really allows).
    Connection,
}

/// Default of [`Behavior::websocket_max_lifetime_secs`]: the backend's 60 minutes.
pub const DEFAULT_WEBSOCKET_LIFETIME_SECS: u64 = 3600;
/// Largest accepted [`Behavior::websocket_max_lifetime_secs`] (a week).
pub const MAX_WEBSOCKET_LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// The responses served so far and their accounts, for `previous_response_id` checks.
/// Bounded: the oldest are forgotten past [`ResponseIndex::CAP`].
#[derive(Debug, Default)]
pub struct ResponseIndex {
    owners: std::collections::HashMap<String, String>,
    order: VecDeque<String>,
}

impl ResponseIndex {
    /// How many responses are remembered.
    pub const CAP: usize = 100_000;

    /// Remember that `account` produced `response_id`.
    pub fn insert(&mut self, response_id: &str, account: &str) {
        if self
            .owners
            .insert(response_id.to_string(), account.to_string())
            .is_none()
        {
            self.order.push_back(response_id.to_string());
        }
        while self.order.len() > Self::CAP {
            match self.order.pop_front() {
                Some(old) => {
                    self.owners.remove(&old);
                }
                None => break,
            }
        }
    }

    /// The account that produced `response_id`.
    pub fn owner(&self, response_id: &str) -> Option<&str> {
        self.owners.get(response_id).map(String::as_str)
    }
}

/// How an injected failure shows itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// A plain HTTP error answer (`status`, `body`).
    #[default]
    Http,
    /// HTTP 200 SSE that sends `response.created`, then `response.failed` whose
    /// `response.error` is `body` (default `{"code":"server_error","message":...}`).
    SseFailed,
    /// HTTP 200 SSE that sends `response.created` and the deltas, then closes without
    /// `response.completed`.
    SseTruncated,
    /// The connection is reset (TCP RST) before any answer byte (Codex HTTP turns; see
    /// [`crate::flap`]). Recorded with status 502.
    Reset,
}

/// One injected failure, used by the next matching request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectedFailure {
    /// HTTP status (default 500; ignored by the SSE modes, which answer 200).
    #[serde(default = "default_fail_status")]
    pub status: u16,
    /// Answer body (default: an error object matching the status).
    #[serde(default)]
    pub body: Option<Value>,
    /// Only for requests resolved to this account.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Only for request paths containing this; default: model turns (`.../responses` and
    /// `.../responses/compact`).
    #[serde(default)]
    pub path_contains: Option<String>,
    /// Extra answer headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How it fails.
    #[serde(default)]
    pub mode: FailMode,
}

/// Whether a path is a model turn (what a `fail_next` entry without `path_contains` hits):
/// Codex `.../responses(/compact)`, Claude `/v1/messages`, Gemini `:generateContent` and
/// `:streamGenerateContent`.
pub fn is_model_turn_path(path: &str) -> bool {
    path.ends_with("/responses")
        || path.ends_with("/responses/compact")
        || path == "/v1/messages"
        || path.ends_with(":generateContent")
        || path.ends_with(":streamGenerateContent")
}

fn default_fail_status() -> u16 {
    500
}

impl InjectedFailure {
    /// Whether this failure applies to a request.
    pub fn matches(&self, path: &str, account: Option<&str>) -> bool {
        if let Some(want) = &self.account_id {
            if account != Some(want.as_str()) {
                return false;
            }
        }
        match &self.path_contains {
            Some(p) => path.contains(p.as_str()),
            None => is_model_turn_path(path),
        }
    }

    /// The answer body, in the shape of the upstream that serves `path` (Anthropic's
    /// `{"type":"error",…}` for Claude paths, google.rpc for `/v1internal:*`, else OpenAI's).
    pub fn body_for_path(&self, path: &str) -> Value {
        if let Some(b) = &self.body {
            return b.clone();
        }
        if crate::claude::is_claude_path(path) {
            return crate::claude::error_body_for_status(self.status);
        }
        if crate::gemini::is_gemini_path(path) {
            return crate::gemini::error_body_for_status(self.status);
        }
        self.body_or_default()
    }

    /// The answer body.
    pub fn body_or_default(&self) -> Value {
        if let Some(b) = &self.body {
            return b.clone();
        }
        let (code, message) = match self.status {
            429 => (
                "rate_limit_exceeded",
                "Rate limit reached. Please try again later.",
            ),
            503 => (
                "server_is_overloaded",
                "Our servers are currently overloaded. Please try again later.",
            ),
            s if s >= 500 => (
                "server_error",
                "The server had an error processing your request.",
            ),
            _ => ("invalid_request", "Injected failure."),
        };
        serde_json::json!({"error": {"type": code, "code": code, "message": message}})
    }
}

/// Global behaviour knobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Behavior {
    /// Delay before each SSE event after the first (ms).
    pub event_delay_ms: u64,
    /// How many `response.output_text.delta` events a turn sends.
    pub delta_count: usize,
    /// Reply text; `{account_id}`, `{model}` and `{seq}` are replaced.
    pub reply_text: String,
    /// Injected failures, used first to last.
    pub fail_next: VecDeque<InjectedFailure>,
    /// Answer to a WebSocket upgrade: "accept", "426" or "404".
    pub websocket: WebsocketMode,
    /// The upstream closes an accepted WebSocket (close frame 1000,
    /// `websocket_connection_limit_reached`) this many real seconds after the upgrade.
    pub websocket_max_lifetime_secs: u64,
    /// Which responses a WebSocket `previous_response_id` may name.
    pub websocket_previous_response_scope: PreviousResponseScope,
    /// Delay before a model turn answers at all (ms).
    pub response_delay_ms: u64,
    /// Also send `x-codex-*-reset-after-seconds` headers.
    pub reset_after_headers: bool,
    /// Send an `x-codex-turn-state` header on model turns.
    pub turn_state: bool,
    /// Send session cookies on every answer, as chatgpt.com does behind Cloudflare: a
    /// `__cf_bm` bot-management cookie, and `_puid` naming the account of the bearer.
    pub session_cookies: bool,
    /// Replace the model catalogue (a JSON array of model objects).
    pub models: Option<Value>,
    /// Set `prefer_websockets: true` on every model of the catalogue (false: the built-in
    /// catalogue says false, a replaced one is served as given).
    pub prefer_websockets: bool,
    /// Refuse a turn whose `model` is not in the catalogue, as the backend does for a ChatGPT
    /// account (`400 {"detail":"The 'X' model is not supported when using Codex with a ChatGPT
    /// account."}`). Off by default so tests may use any model name.
    pub reject_unknown_models: bool,
    /// Answer a turn that offers function tools (and `tool_choice` is not `"none"`, and the
    /// last input item is not a `function_call_output`) with function calls.
    pub tool_calls: bool,
    /// Do so for the Codex CLI too (requests with `originator: codex_*`); off by default: the
    /// CLI always offers its tools and would run the call.
    pub tool_calls_for_codex_cli: bool,
    /// Delay of the token endpoint for accounts without their own (ms).
    pub refresh_delay_ms: u64,
    /// Serve device-code login (false: the usercode endpoint answers 404, which the CLI
    /// reports as "device code login is not enabled").
    pub device_login_enabled: bool,
    /// The `interval` the usercode answer asks the client to poll at (seconds).
    pub device_poll_interval_secs: u64,
    /// Lifetime of a user code (simulated seconds).
    pub device_code_ttl_secs: i64,
    /// Approve a pending login by itself once this many polls were answered "pending"
    /// (`null`: never).
    pub device_auto_approve_after_polls: Option<u64>,
    /// Whom an auto-approved login signs in as (`null`: a new account each time).
    pub device_auto_approve_as: Option<SignInAs>,
    /// Status of a poll of a denied login (`error.code` `deviceauth_authorization_denied`).
    pub device_denied_status: u16,
    /// Status of a poll of an expired login (`error.code` `deviceauth_user_code_expired`).
    pub device_expired_status: u16,
    /// Google's token endpoint hands out a new refresh token at every refresh (and the old
    /// one becomes single-use like Claude's); off by default, as Google keeps them.
    pub google_rotates_refresh_tokens: bool,
    /// Accounts whose Codex turns flap between answers, 429s and resets ([`crate::flap`]).
    pub flap: Option<crate::flap::Flap>,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            event_delay_ms: 0,
            delta_count: 4,
            reply_text: DEFAULT_REPLY.to_string(),
            fail_next: VecDeque::new(),
            websocket: WebsocketMode::default(),
            websocket_max_lifetime_secs: DEFAULT_WEBSOCKET_LIFETIME_SECS,
            websocket_previous_response_scope: PreviousResponseScope::default(),
            response_delay_ms: 0,
            reset_after_headers: true,
            turn_state: true,
            session_cookies: true,
            models: None,
            prefer_websockets: false,
            reject_unknown_models: false,
            tool_calls: true,
            tool_calls_for_codex_cli: false,
            refresh_delay_ms: 0,
            device_login_enabled: true,
            device_poll_interval_secs: DEFAULT_POLL_INTERVAL_SECS,
            device_code_ttl_secs: DEFAULT_CODE_TTL_SECS,
            device_auto_approve_after_polls: None,
            device_auto_approve_as: None,
            device_denied_status: 403,
            device_expired_status: 403,
            google_rotates_refresh_tokens: false,
            flap: None,
        }
    }
}

/// A partial update of [`Behavior`] (what `POST /__sim/behavior` takes).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BehaviorPatch {
    /// See [`Behavior::event_delay_ms`].
    pub event_delay_ms: Option<u64>,
    /// See [`Behavior::delta_count`].
    pub delta_count: Option<usize>,
    /// See [`Behavior::reply_text`].
    pub reply_text: Option<String>,
    /// Replaces the queue.
    pub fail_next: Option<Vec<InjectedFailure>>,
    /// Appends to the queue.
    pub fail_next_append: Option<Vec<InjectedFailure>>,
    /// See [`Behavior::websocket`].
    pub websocket: Option<WebsocketMode>,
    /// See [`Behavior::websocket_max_lifetime_secs`] (1..=604800).
    pub websocket_max_lifetime_secs: Option<u64>,
    /// See [`Behavior::websocket_previous_response_scope`].
    pub websocket_previous_response_scope: Option<PreviousResponseScope>,
    /// See [`Behavior::response_delay_ms`].
    pub response_delay_ms: Option<u64>,
    /// See [`Behavior::reset_after_headers`].
    pub reset_after_headers: Option<bool>,
    /// See [`Behavior::turn_state`].
    pub turn_state: Option<bool>,
    /// See [`Behavior::session_cookies`].
    pub session_cookies: Option<bool>,
    /// See [`Behavior::models`]; `null` restores the built-in catalogue.
    #[serde(default, deserialize_with = "double_option")]
    pub models: Option<Option<Value>>,
    /// See [`Behavior::prefer_websockets`].
    pub prefer_websockets: Option<bool>,
    /// See [`Behavior::reject_unknown_models`].
    pub reject_unknown_models: Option<bool>,
    /// See [`Behavior::tool_calls`].
    pub tool_calls: Option<bool>,
    /// See [`Behavior::tool_calls_for_codex_cli`].
    pub tool_calls_for_codex_cli: Option<bool>,
    /// See [`Behavior::refresh_delay_ms`].
    pub refresh_delay_ms: Option<u64>,
    /// See [`Behavior::device_login_enabled`].
    pub device_login_enabled: Option<bool>,
    /// See [`Behavior::device_poll_interval_secs`].
    pub device_poll_interval_secs: Option<u64>,
    /// See [`Behavior::device_code_ttl_secs`].
    pub device_code_ttl_secs: Option<i64>,
    /// See [`Behavior::device_auto_approve_after_polls`]; `null` turns it off.
    #[serde(default, deserialize_with = "double_option")]
    pub device_auto_approve_after_polls: Option<Option<u64>>,
    /// See [`Behavior::device_auto_approve_as`]; `null` means new accounts.
    #[serde(default, deserialize_with = "double_option")]
    pub device_auto_approve_as: Option<Option<SignInAs>>,
    /// See [`Behavior::device_denied_status`].
    pub device_denied_status: Option<u16>,
    /// See [`Behavior::device_expired_status`].
    pub device_expired_status: Option<u16>,
    /// See [`Behavior::google_rotates_refresh_tokens`].
    pub google_rotates_refresh_tokens: Option<bool>,
    /// See [`Behavior::flap`]; `null` stops the flapping.
    #[serde(default, deserialize_with = "double_option")]
    pub flap: Option<Option<crate::flap::Flap>>,
    /// Restore every default first.
    #[serde(default)]
    pub reset: bool,
}

/// A field that may be absent (outer `None`), `null` (`Some(None)`) or a value.
fn double_option<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::<T>::deserialize(d)?))
}

impl Behavior {
    /// Apply a partial update.
    pub fn apply(&mut self, p: BehaviorPatch) -> Result<(), String> {
        if p.reset {
            *self = Behavior::default();
        }
        if let Some(Some(models)) = &p.models {
            if !models.is_array() {
                return Err("models must be a JSON array of model objects".into());
            }
        }
        if p.websocket_max_lifetime_secs
            .is_some_and(|t| t == 0 || t > MAX_WEBSOCKET_LIFETIME_SECS)
        {
            return Err(format!(
                "websocket_max_lifetime_secs must be 1..={MAX_WEBSOCKET_LIFETIME_SECS}"
            ));
        }
        if let Some(Some(flap)) = &p.flap {
            flap.check()?;
        }
        if p.device_code_ttl_secs.is_some_and(|t| t <= 0) {
            return Err("device_code_ttl_secs must be > 0".into());
        }
        for s in [p.device_denied_status, p.device_expired_status]
            .into_iter()
            .flatten()
        {
            if !(400..=599).contains(&s) {
                return Err(
                    "device_denied_status and device_expired_status must be 400..=599".into(),
                );
            }
        }
        if let Some(v) = p.event_delay_ms {
            self.event_delay_ms = v;
        }
        if let Some(v) = p.delta_count {
            self.delta_count = v;
        }
        if let Some(v) = p.reply_text {
            self.reply_text = v;
        }
        if let Some(v) = p.fail_next {
            self.fail_next = v.into();
        }
        if let Some(v) = p.fail_next_append {
            self.fail_next.extend(v);
        }
        if let Some(v) = p.websocket {
            self.websocket = v;
        }
        if let Some(v) = p.websocket_max_lifetime_secs {
            self.websocket_max_lifetime_secs = v;
        }
        if let Some(v) = p.websocket_previous_response_scope {
            self.websocket_previous_response_scope = v;
        }
        if let Some(v) = p.response_delay_ms {
            self.response_delay_ms = v;
        }
        if let Some(v) = p.reset_after_headers {
            self.reset_after_headers = v;
        }
        if let Some(v) = p.turn_state {
            self.turn_state = v;
        }
        if let Some(v) = p.session_cookies {
            self.session_cookies = v;
        }
        if let Some(v) = p.models {
            self.models = v;
        }
        if let Some(v) = p.reject_unknown_models {
            self.reject_unknown_models = v;
        }
        if let Some(v) = p.prefer_websockets {
            self.prefer_websockets = v;
        }
        if let Some(v) = p.tool_calls {
            self.tool_calls = v;
        }
        if let Some(v) = p.tool_calls_for_codex_cli {
            self.tool_calls_for_codex_cli = v;
        }
        if let Some(v) = p.refresh_delay_ms {
            self.refresh_delay_ms = v;
        }
        if let Some(v) = p.device_login_enabled {
            self.device_login_enabled = v;
        }
        if let Some(v) = p.device_poll_interval_secs {
            self.device_poll_interval_secs = v;
        }
        if let Some(v) = p.device_code_ttl_secs {
            self.device_code_ttl_secs = v;
        }
        if let Some(v) = p.device_auto_approve_after_polls {
            self.device_auto_approve_after_polls = v;
        }
        if let Some(v) = p.device_auto_approve_as {
            self.device_auto_approve_as = v;
        }
        if let Some(v) = p.device_denied_status {
            self.device_denied_status = v;
        }
        if let Some(v) = p.device_expired_status {
            self.device_expired_status = v;
        }
        if let Some(v) = p.google_rotates_refresh_tokens {
            self.google_rotates_refresh_tokens = v;
        }
        if let Some(v) = p.flap {
            self.flap = v;
        }
        Ok(())
    }

    /// The tool-call policy for a request from a client with this `originator` header.
    pub fn tool_policy(&self, originator: Option<&str>) -> crate::reply::ToolPolicy {
        crate::reply::ToolPolicy {
            enabled: self.tool_calls,
            exempt_client: !self.tool_calls_for_codex_cli
                && crate::reply::is_codex_cli_originator(originator),
        }
    }

    /// Whether a turn for `model` is refused (see [`Behavior::reject_unknown_models`]).
    pub fn refuses_model(&self, model: &str) -> bool {
        self.reject_unknown_models
            && !self.models_response().0["models"]
                .as_array()
                .is_some_and(|list| list.iter().any(|m| m["slug"] == model))
    }

    /// The model catalogue and its ETag, as the knobs make it.
    pub fn models_response(&self) -> (Value, String) {
        crate::models::models_response(self.models.as_ref(), self.prefer_websockets)
    }

    /// Take the first injected failure that applies to this request.
    pub fn take_failure(&mut self, path: &str, account: Option<&str>) -> Option<InjectedFailure> {
        let idx = self
            .fail_next
            .iter()
            .position(|f| f.matches(path, account))?;
        self.fail_next.remove(idx)
    }

    /// Take the first injected failure that applies to this request only if `take` accepts
    /// it (it stays queued otherwise).
    pub fn take_failure_if(
        &mut self,
        path: &str,
        account: Option<&str>,
        take: impl FnOnce(&InjectedFailure) -> bool,
    ) -> Option<InjectedFailure> {
        let idx = self
            .fail_next
            .iter()
            .position(|f| f.matches(path, account))?;
        if !take(self.fail_next.get(idx)?) {
            return None;
        }
        self.fail_next.remove(idx)
    }
}

/// Everything behind the clock.
#[derive(Debug, Default)]
pub struct Inner {
    /// Accounts and tokens.
    pub registry: Registry,
    /// Global knobs.
    pub behavior: Behavior,
    /// Device-code logins.
    pub device: DeviceLogins,
    /// Request log.
    pub requests: Vec<RequestRecord>,
    /// Next request sequence number.
    pub next_seq: u64,
    /// Model turns served (for ids).
    pub responses_served: u64,
    /// Responses served and their accounts (`previous_response_id` on WebSockets).
    pub response_index: ResponseIndex,
}

/// The simulator's state, shared by every handler.
#[derive(Debug, Default)]
pub struct SimState {
    /// The controllable clock.
    pub clock: SimClock,
    inner: Mutex<Inner>,
}

/// Shared handle.
pub type Shared = Arc<SimState>;

impl SimState {
    /// Fresh state at real time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lock the state (never held across an await).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_failures_match_by_path_and_account() {
        let mut b = Behavior::default();
        b.apply(
            serde_json::from_value(serde_json::json!({
                "fail_next": [
                    {"status": 503, "account_id": "b"},
                    {"status": 500, "path_contains": "/wham/usage"},
                    {"status": 502}
                ]
            }))
            .unwrap(),
        )
        .unwrap();
        assert!(b
            .take_failure("/backend-api/codex/models", Some("a"))
            .is_none());
        assert_eq!(
            b.take_failure("/backend-api/codex/responses", Some("a"))
                .unwrap()
                .status,
            502
        );
        assert_eq!(
            b.take_failure("/wham/usage", Some("a")).unwrap().status,
            500
        );
        assert!(b.take_failure("/codex/responses", Some("a")).is_none());
        assert_eq!(
            b.take_failure("/codex/responses", Some("b"))
                .unwrap()
                .status,
            503
        );
        assert!(b.fail_next.is_empty());
    }

    #[test]
    fn websocket_mode_parses() {
        assert_eq!(Behavior::default().websocket, WebsocketMode::Accept);
        let p: BehaviorPatch = serde_json::from_str(r#"{"websocket":"404"}"#).unwrap();
        assert_eq!(p.websocket, Some(WebsocketMode::NotFound));
        let p: BehaviorPatch = serde_json::from_str(r#"{"websocket":426}"#).unwrap();
        assert_eq!(p.websocket, Some(WebsocketMode::UpgradeRequired));
        let p: BehaviorPatch = serde_json::from_str(r#"{"websocket":"accept"}"#).unwrap();
        assert_eq!(p.websocket, Some(WebsocketMode::Accept));
        assert!(serde_json::from_str::<BehaviorPatch>(r#"{"websocket":"200"}"#).is_err());
        let v = serde_json::to_value(Behavior::default()).unwrap();
        assert_eq!(v["websocket"], "accept");
        assert_eq!(v["websocket_max_lifetime_secs"], 3600);
        assert_eq!(v["websocket_previous_response_scope"], "account");
        let mut b = Behavior::default();
        assert!(b
            .apply(serde_json::from_str(r#"{"websocket_max_lifetime_secs":0}"#).unwrap())
            .is_err());
        b.apply(
            serde_json::from_str(
                r#"{"websocket_max_lifetime_secs":2,"websocket_previous_response_scope":"connection"}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(b.websocket_max_lifetime_secs, 2);
        assert_eq!(
            b.websocket_previous_response_scope,
            PreviousResponseScope::Connection
        );
    }

    #[test]
    fn response_index_is_bounded() {
        let mut idx = ResponseIndex::default();
        for i in 0..ResponseIndex::CAP + 5 {
            idx.insert(&format!("r{i}"), "a");
        }
        assert_eq!(idx.owner("r0"), None);
        assert_eq!(idx.owner("r5"), Some("a"));
        assert_eq!(
            idx.owner(&format!("r{}", ResponseIndex::CAP + 4)),
            Some("a")
        );
    }

    #[test]
    fn take_failure_if_leaves_refused_entries() {
        let mut b = Behavior::default();
        b.apply(
            serde_json::from_value(serde_json::json!({
                "fail_next": [{"status": 200, "mode": "sse_failed"}, {"status": 429}]
            }))
            .unwrap(),
        )
        .unwrap();
        assert!(b
            .take_failure_if("/codex/responses", Some("a"), |f| f.mode == FailMode::Http)
            .is_none());
        assert_eq!(b.fail_next.len(), 2);
        assert_eq!(
            b.take_failure("/codex/responses", Some("a")).unwrap().mode,
            FailMode::SseFailed
        );
    }

    #[test]
    fn device_knobs_patch_and_validate() {
        let mut b = Behavior::default();
        assert_eq!(b.device_auto_approve_after_polls, None);
        b.apply(
            serde_json::from_str(
                r#"{"device_auto_approve_after_polls":2,"device_auto_approve_as":{"account_id":"a"},"device_poll_interval_secs":0}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(b.device_auto_approve_after_polls, Some(2));
        assert_eq!(
            b.device_auto_approve_as
                .as_ref()
                .unwrap()
                .account_id
                .as_deref(),
            Some("a")
        );
        assert_eq!(b.device_poll_interval_secs, 0);
        // Absent keeps, null clears.
        b.apply(serde_json::from_str(r#"{"delta_count":1}"#).unwrap())
            .unwrap();
        assert_eq!(b.device_auto_approve_after_polls, Some(2));
        b.apply(
            serde_json::from_str(
                r#"{"device_auto_approve_after_polls":null,"device_auto_approve_as":null}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(b.device_auto_approve_after_polls, None);
        assert_eq!(b.device_auto_approve_as, None);
        assert!(b
            .apply(serde_json::from_str(r#"{"device_code_ttl_secs":0}"#).unwrap())
            .is_err());
        assert!(b
            .apply(serde_json::from_str(r#"{"device_denied_status":200}"#).unwrap())
            .is_err());
        assert!(
            serde_json::from_str::<BehaviorPatch>(r#"{"device_auto_approve_as":{"nope":1}}"#)
                .is_err()
        );
    }

    #[test]
    fn tool_and_catalogue_knobs() {
        let mut b = Behavior::default();
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v["prefer_websockets"], false);
        assert_eq!(v["tool_calls"], true);
        assert_eq!(v["tool_calls_for_codex_cli"], false);
        assert!(b.tool_policy(Some("codex_exec")).exempt_client);
        assert!(!b.tool_policy(None).exempt_client);
        let (_, etag) = b.models_response();
        b.apply(
            serde_json::from_str(
                r#"{"prefer_websockets":true,"tool_calls":false,"tool_calls_for_codex_cli":true}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert!(!b.tool_policy(None).enabled);
        assert!(!b.tool_policy(Some("codex_exec")).exempt_client);
        let (body, etag2) = b.models_response();
        assert_ne!(etag, etag2);
        assert!(body["models"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["prefer_websockets"] == true));
    }

    #[test]
    fn models_null_restores_default() {
        let mut b = Behavior::default();
        b.apply(serde_json::from_str(r#"{"models":[{"slug":"x"}]}"#).unwrap())
            .unwrap();
        assert!(b.models.is_some());
        b.apply(serde_json::from_str(r#"{"models":null}"#).unwrap())
            .unwrap();
        assert!(b.models.is_none());
        assert!(b
            .apply(serde_json::from_str(r#"{"models":{}}"#).unwrap())
            .is_err());
    }

    #[test]
    fn unknown_models_are_refused_only_when_asked() {
        let mut b = Behavior::default();
        assert!(!b.refuses_model("no-such-model"));
        b.reject_unknown_models = true;
        assert!(b.refuses_model("no-such-model"));
        let known = b.models_response().0["models"][0]["slug"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(!b.refuses_model(&known));
    }
}
