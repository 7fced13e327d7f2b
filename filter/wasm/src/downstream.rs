//! Listener filter: admit only allowlisted endpoints (`endpoints::ENDPOINTS`), authenticate the
//! pool key, admit only the clients its pool allows (`network`), remove every header the gateway
//! owns (the pool key, cookies, account ids, Envoy's steering headers), answer the gateway's own
//! endpoints, rank the pool's accounts and hand the ranking to the upstream attempts through
//! filter state. On the way back, turns an upstream 429 into the pool-level answer when the whole
//! pool is spent.
//!
//! Claude and Gemini routes (`endpoints::EndpointSpec::provider`) rank only their provider's
//! accounts (the snapshot's lane), find their session key in their own header or body field, and
//! every answer the gateway makes on them is in their provider's error shape.
//!
//! A key with a policy (`policy`) is checked after it is authenticated and before anything is
//! routed: its share and token budgets with the head, its model list against the whole body
//! (only such a key's body is read whole), its concurrency slot and request rate when the
//! request is routed. The slot is given back exactly once, when the stream ends (`on_done`,
//! whatever ended it). Every refusal is answered in the route's error shape and reported as an
//! outcome without an account (`Outcome.policy_refusal`). A key without a policy costs one
//! field check.

use std::cell::Cell;
use std::rc::Rc;

use codexmesh_filter_core::affinity::{
    affinity_key, gemini_session_id, locality_windows, prompt_cache_key, LOCALITY_HEAD_BYTES,
};
use codexmesh_filter_core::config::DownstreamConfig;
use codexmesh_filter_core::egress;
use codexmesh_filter_core::endpoints::{self, Endpoint, Serving, Translation};
use codexmesh_filter_core::errors::{ErrorKind, GatewayError};
use codexmesh_filter_core::handoff::{self, RouteHandoff};
use codexmesh_filter_core::headers::RequestHead;
use codexmesh_filter_core::policy::{self, Standing, TokenLog};
use codexmesh_filter_core::provider::Provider;
use codexmesh_filter_core::ranker;
use codexmesh_filter_core::routing::{self, Limits, RouteInput, PROBE_RESERVATION_MS};
use codexmesh_filter_core::snapshot::SnapshotIndex;
use codexmesh_filter_core::stats::PoolCounter;
use codexmesh_filter_core::translate::IGNORED_PARAMS_HEADER;
use codexmesh_filter_core::{auth, claude, gemini, network, pb, turnstate, usage};

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::translation::{self, AnswerShape};
use crate::{cache, host, limits, metrics, reply_error, report};

thread_local! {
    /// Round-robin turn for this worker.
    static TURN: Cell<u64> = const { Cell::new(0) };
}

/// Where the request went, for the answer's way back.
struct Routed {
    snapshot: Rc<SnapshotIndex>,
    pool_ix: usize,
    key_ix: usize,
}

/// Filter-state property holding the client's own `anthropic-beta` on a Claude route (empty when
/// it sent none): every attempt starts its beta list from it, not from an earlier attempt's.
pub const CLIENT_BETA_PROPERTY: &str = "codexmesh.client_beta";

/// The body's session key for the route's provider (a bounded search of one window).
fn body_key_of(provider: Provider) -> fn(&[u8]) -> Option<String> {
    match provider {
        Provider::Codex => prompt_cache_key,
        Provider::Claude => claude::body_session_id,
        Provider::Gemini => gemini_session_id,
    }
}

#[derive(Default)]
pub struct Downstream {
    config: DownstreamConfig,
    /// Authenticated, waiting for the body to find its locality key.
    pending: Option<Routed>,
    routed: Option<Routed>,
    /// The upstream 429 is being replaced by the pool-level answer.
    replacement: Option<GatewayError>,
    /// The allowlisted endpoint this request was admitted for.
    endpoint: Option<Endpoint>,
    /// The client's `x-codex-turn-state`, read with the head.
    turn_state: Option<String>,
    /// The answer's last byte went to the client.
    answered: bool,
    /// The body's head window was searched for the locality key.
    head_searched: bool,
    /// A `/v1` request waiting for its whole body to be translated.
    translating: Option<Translation>,
    /// How a translated request's answer is shaped for the client.
    answer: Option<AnswerShape>,
    /// Request parameters the translation dropped (sent back in a header).
    ignored_params: Option<String>,
    /// The continuity header's affinity key, kept while the body is awaited.
    header_key: Option<String>,
    /// Whose error shape the gateway's answers take (the route's provider).
    shape: Provider,
    /// The key's policy, when it limits anything (a small copy, made only then).
    policy: Option<pb::KeyPolicy>,
    /// The key's model list is checked against the whole body before routing.
    check_model: bool,
    /// The request's path, for a refusal's outcome (kept only under a policy).
    policy_path: String,
    /// The in-flight slot this request holds (key id, start): given back once, in `on_done`.
    slot: Option<(String, i64)>,
    /// The request body's `content-encoding`, for reading its model (zstd is decoded).
    content_encoding: Option<String>,
}

impl Downstream {
    pub fn new(config: DownstreamConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }
}

impl Context for Downstream {
    /// The stream is over. If it was routed and its answer never completed, the client went
    /// away (or its stream was cut): attempts still in flight are told, so none counts against
    /// its account (see `CLIENT_GONE_PROPERTY`).
    fn on_done(&mut self) -> bool {
        if let Some((key_id, started_ms)) = self.slot.take() {
            limits::release_slot(&key_id, started_ms);
        }
        if self.routed.is_some()
            && !self.answered
            && host::set_property(&[handoff::CLIENT_GONE_PROPERTY], b"1").is_err()
        {
            host::log(LogLevel::Warn, "could not mark a cancelled request");
        }
        true
    }
}

impl HttpContext for Downstream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let now_ms = host::now_ms();
        // One host call for the whole head; every decision below reads from it.
        let head = RequestHead::new(host::request_headers());
        let anthropic_version = head.get("anthropic-version").is_some();
        let admitted = match endpoints::admit_request(
            head.method(),
            head.path(),
            head.is_websocket_upgrade(),
            anthropic_version,
        ) {
            Ok(a) => a,
            Err(err) => return reply_error(&err),
        };
        let provider = admitted.spec.provider;
        self.shape = provider;
        let authed = match authenticate(&head, provider) {
            Ok(a) => a,
            Err(err) => {
                if err.status() == 401 {
                    metrics::key_refused();
                }
                return reply_error(&err.shaped(provider));
            }
        };
        if let Err(err) = admit_client(&authed, &head) {
            return reply_error(&err.shaped(provider));
        }
        if let Err(err) = take_ownership(&head, admitted.rewritten_path.as_deref()) {
            return reply_error(&err.shaped(provider));
        }
        let endpoint = admitted.spec.endpoint;
        if admitted.spec.serving == Serving::Local {
            return answer_locally(&authed, endpoint, now_ms);
        }
        if provider == Provider::Claude {
            let beta = head.get("anthropic-beta").unwrap_or_default();
            if host::set_property(&[CLIENT_BETA_PROPERTY], beta.as_bytes()).is_err() {
                return reply_error(
                    &GatewayError::new(
                        ErrorKind::RouteMissing,
                        "codexmesh could not keep the request's anthropic-beta",
                    )
                    .shaped(provider),
                );
            }
        }
        if admitted.spec.websocket && websockets_disabled(&authed) {
            // 426 makes the Codex CLI fall back to HTTP SSE at once (other refusals cost it
            // several retries).
            return reply_error(&GatewayError::new(
                ErrorKind::WebSocketUnsupported,
                "WebSockets are turned off for this pool: use HTTP SSE (supports_websockets = false).",
            ));
        }
        if let Some(policy) = key_policy(&authed) {
            self.policy_path = head
                .path()
                .split('?')
                .next()
                .unwrap_or_default()
                .to_string();
            if let Err(err) = check_standing(&authed, &policy, now_ms) {
                return self.refuse(&authed, err, now_ms);
            }
            if !policy.allowed_models.is_empty() {
                if admitted.spec.websocket {
                    // The model is per frame: the client falls back to SSE, checked per request.
                    return reply_error(&GatewayError::new(
                        ErrorKind::WebSocketUnsupported,
                        "This key may use only some models, which is checked per request: use HTTP SSE.",
                    ));
                }
                if head.method() == "POST" {
                    self.content_encoding = head.get("content-encoding").map(str::to_string);
                    if end_of_stream {
                        let err = policy::body_model(b"").err().unwrap_or_else(|| {
                            GatewayError::new(ErrorKind::InvalidRequest, "the request has no body")
                        });
                        return self.refuse(&authed, err, now_ms);
                    }
                    self.check_model = true;
                }
            }
            self.policy = Some(policy);
        }
        self.endpoint = Some(endpoint);
        let header_key = match provider {
            Provider::Codex => {
                // Turn-state pinning exists only in the Codex protocol.
                self.turn_state = head.get("x-codex-turn-state").map(str::to_string);
                affinity_key(|name| head.get(name).map(str::to_string)).map(|k| k.value)
            }
            Provider::Claude => head
                .get(claude::SESSION_HEADER)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| v.chars().take(256).collect()),
            Provider::Gemini => None,
        };
        let declared_len = head
            .get("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared_len.is_some_and(|n| n > self.config.max_request_body_bytes) {
            return reply_error(&self.body_too_large());
        }
        match admitted.spec.translation {
            Translation::None => {}
            Translation::Models => {
                self.answer = Some(AnswerShape::Models {
                    id: admitted.model_id,
                    body: Vec::new(),
                });
            }
            Translation::Responses | Translation::ChatCompletions => {
                let content_type = head.get("content-type");
                if !translation::is_json_content_type(content_type) {
                    return translation::reply(&translation::wrong_content_type(
                        content_type.unwrap_or_default(),
                    ));
                }
                if end_of_stream {
                    return translation::reply(
                        &codexmesh_filter_core::translate::ApiError::invalid_json(
                            "the request has no body",
                        ),
                    );
                }
                // The whole body is translated before anything is routed or sent.
                self.translating = Some(admitted.spec.translation);
                self.header_key = header_key;
                self.pending = Some(authed);
                return Action::Pause;
            }
        }
        if self.check_model {
            // The whole body is read for its model (and its locality key) before routing.
            self.header_key = header_key;
            self.pending = Some(authed);
            return Action::Pause;
        }
        // No continuity header: the body's prompt_cache_key is the next best locality key, so
        // wait for the body (compressed bodies are forwarded untouched, not read).
        let wants_body = header_key.is_none()
            && !end_of_stream
            && !admitted.spec.websocket
            && head.get("content-encoding").is_none();
        if wants_body {
            self.pending = Some(authed);
            return Action::Pause;
        }
        match self.route(authed, header_key, now_ms) {
            Ok(()) => Action::Continue,
            Err(err) => reply_error(&err.shaped(provider)),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.pending.is_none() {
            return Action::Continue;
        }
        if u64::try_from(body_size).unwrap_or(u64::MAX) > self.config.max_request_body_bytes {
            self.pending = None;
            return reply_error(&self.body_too_large());
        }
        if let Some(translation) = self.translating {
            if !end_of_stream {
                return Action::Pause;
            }
            return self.translate_pending(translation, body_size);
        }
        if self.check_model {
            if !end_of_stream {
                return Action::Pause;
            }
            let body = host::request_body_range(0, body_size).unwrap_or_default();
            if let Some(action) = self.refuse_model(&body) {
                return action;
            }
            let compressed = self.content_encoding.is_some();
            let key = self.header_key.take().or_else(|| {
                if compressed {
                    // Compressed bodies are not searched (as without a policy).
                    return None;
                }
                let (head, tail) = locality_windows(body.len());
                let window =
                    |(start, len): (usize, usize)| body.get(start..start.saturating_add(len));
                let body_key = body_key_of(self.shape);
                window(head)
                    .and_then(body_key)
                    .or_else(|| tail.and_then(window).and_then(body_key))
            });
            return self.route_pending(key);
        }
        // Only two bounded windows of the body are ever copied and searched, so the cost does
        // not grow with the transcript (affinity::locality_windows).
        let (head, tail) = locality_windows(body_size);
        let body_key = body_key_of(self.shape);
        // A Gemini body goes upstream whole (the upstream filter rewrites its project per
        // attempt): it is routed at its end, never from the head window.
        let early = self.shape != Provider::Gemini && head.1 == LOCALITY_HEAD_BYTES;
        if !self.head_searched && (early || end_of_stream) {
            self.head_searched = true;
            let key = host::request_body_range(head.0, head.1).and_then(|b| body_key(&b));
            if key.is_some() {
                return self.route_pending(key);
            }
        }
        if !end_of_stream {
            // Envoy buffers the rest (bounded by the route's buffer limit): no copy into the VM.
            return Action::Pause;
        }
        let key = tail
            .and_then(|(start, len)| host::request_body_range(start, len))
            .and_then(|b| body_key(&b));
        self.route_pending(key)
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.answered = end_of_stream;
        let status = host::response_header(":status").and_then(|s| s.parse::<u16>().ok());
        let replacement = match status {
            // The last account's 429 speaks for one account; the pool's answer names the
            // earliest reset across all of them.
            Some(429) => self.pool_exhausted(host::now_ms()),
            // Envoy's own replies (connect failure, reset before headers, …) are plain text:
            // clients expect JSON in their provider's shape.
            Some(code @ 500..=599) if self.routed.is_some() && !is_json_response() => {
                Some(upstream_unavailable(code, self.shape))
            }
            _ => None,
        }
        .map(|err| err.shaped(self.shape));
        if replacement.is_none() && status == Some(200) {
            if let Some(ignored) = self.ignored_params.as_deref() {
                let _ = host::set_response_header(IGNORED_PARAMS_HEADER, ignored);
            }
            if let Some(answer) = self.answer.as_ref() {
                return answer.on_headers(end_of_stream);
            }
        } else if replacement.is_none() && self.answer.is_some() && status.unwrap_or(0) >= 400 {
            // A /v1 client reads OpenAI's error shape, not the Codex backend's.
            let answer = AnswerShape::UpstreamError {
                status: status.unwrap_or(0),
                body: Vec::new(),
            };
            let action = answer.on_headers(end_of_stream);
            self.answer = Some(answer);
            return action;
        } else {
            self.answer = None;
        }
        if let Some(err) = replacement {
            let _ = host::remove_response_header("content-length");
            let _ = host::set_response_header("content-type", "application/json");
            for (name, value) in err.headers() {
                let _ = host::set_response_header(name, &value);
            }
            if end_of_stream {
                // No body to replace: nothing more we can do without one.
                return Action::Continue;
            }
            self.replacement = Some(err);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.answered = end_of_stream;
        if let Some(answer) = self.answer.as_mut() {
            return answer.on_body(body_size, end_of_stream);
        }
        let Some(err) = self.replacement.as_ref() else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        if let Err(status) = host::replace_response_body(body_size, err.body().as_bytes()) {
            host::log(
                LogLevel::Warn,
                &format!("could not replace an error body: {status:?}"),
            );
        }
        Action::Continue
    }
}

/// The snapshot and the authenticated key (by position, so no borrow outlives the call).
fn authenticate(head: &RequestHead, provider: Provider) -> Result<Routed, GatewayError> {
    let snapshot = cache::current().ok_or_else(|| {
        GatewayError::new(
            ErrorKind::NotReady,
            "codexmesh has not received its routing table from the control plane yet; retry shortly.",
        )
    })?;
    let authorization = auth::presented_authorization(head, provider == Provider::Claude)?;
    let authed = auth::authenticate(&snapshot, authorization.as_deref())?;
    let pool_ix = snapshot
        .pools()
        .iter()
        .position(|p| p.id == authed.pool.id)
        .unwrap_or(0);
    let key_ix = authed
        .pool
        .keys
        .iter()
        .position(|k| k.id == authed.key.id)
        .unwrap_or(0);
    Ok(Routed {
        snapshot: Rc::clone(&snapshot),
        pool_ix,
        key_ix,
    })
}

/// A pool with a client allowlist admits only the clients in it (`network::admit`, Envoy's
/// `source.address` and trusted proxies' X-Forwarded-For); a pool without one costs nothing.
fn admit_client(authed: &Routed, head: &RequestHead) -> Result<(), GatewayError> {
    let snapshot = &authed.snapshot;
    let Some(allowed) = snapshot
        .pool_index(authed.pool_ix)
        .and_then(|p| p.allowed_clients())
    else {
        return Ok(());
    };
    let peer = host::property(&["source", "address"]);
    network::admit(allowed, snapshot.trusted_proxies(), peer.as_deref(), head).map(|_| ())
}

impl Downstream {
    fn body_too_large(&self) -> GatewayError {
        GatewayError::new(
            ErrorKind::BodyTooLarge,
            format!(
                "The request body is larger than this gateway accepts ({} bytes).",
                self.config.max_request_body_bytes
            ),
        )
        .shaped(self.shape)
    }

    /// The whole `/v1` body is here: translate it for the Codex backend, then route.
    fn translate_pending(&mut self, translation: Translation, body_size: usize) -> Action {
        let body = host::request_body_range(0, body_size).unwrap_or_default();
        if self.check_model {
            if let Some(action) = self.refuse_model(&body) {
                return action;
            }
        }
        let (request, shape) = match translation::translate_request(translation, &body) {
            Ok(t) => t,
            Err(err) => {
                self.pending = None;
                return translation::reply(&err);
            }
        };
        let replaced = host::replace_request_body(body_size, &request.body).is_ok()
            && host::set_request_header("content-length", &request.body.len().to_string()).is_ok()
            && host::set_request_header("content-type", "application/json").is_ok();
        if !replaced {
            self.pending = None;
            return reply_error(&GatewayError::new(
                ErrorKind::RouteMissing,
                "codexmesh could not rewrite the request body",
            ));
        }
        self.ignored_params = request.ignored_header();
        self.answer = Some(shape);
        let key = self
            .header_key
            .take()
            .or_else(|| prompt_cache_key(&request.body));
        self.route_pending(key)
    }

    /// Routes the request that waited for its body, with the locality key found there (if any).
    fn route_pending(&mut self, key: Option<String>) -> Action {
        let Some(authed) = self.pending.take() else {
            return Action::Continue;
        };
        match self.route(authed, key, host::now_ms()) {
            Ok(()) => Action::Continue,
            Err(err) => reply_error(&err.shaped(self.shape)),
        }
    }

    /// The lane of this request's provider in the key's pool, or the provider's no-account answer.
    fn lane(
        &self,
        snapshot: &SnapshotIndex,
        pool: &pb::Pool,
        pool_ix: usize,
    ) -> Result<usize, GatewayError> {
        snapshot.lane(pool_ix, self.shape).ok_or_else(|| {
            GatewayError::new(
                ErrorKind::NoAccountAvailable,
                format!(
                    "Pool '{}' has no {} accounts: add one with `codexmesh account import --pool {}`.",
                    pool.name,
                    self.shape.as_str(),
                    pool.name
                ),
            )
        })
    }

    fn route(
        &mut self,
        authed: Routed,
        affinity: Option<String>,
        now_ms: i64,
    ) -> Result<(), GatewayError> {
        let internal = |what: &str| {
            GatewayError::new(
                ErrorKind::RouteMissing,
                format!("codexmesh could not {what}"),
            )
        };
        let snapshot = Rc::clone(&authed.snapshot);
        let pool = snapshot
            .pool(authed.pool_ix)
            .ok_or_else(|| internal("find the pool"))?;
        let key = pool
            .keys
            .get(authed.key_ix)
            .ok_or_else(|| internal("find the key"))?;
        if let Some(policy) = self.policy.as_ref() {
            let admitted = admit_limits(policy, &key.id, now_ms);
            match admitted {
                Ok(slot) => self.slot = slot.map(|started| (key.id.clone(), started)),
                Err(err) => {
                    self.report_refusal(&authed, &err, now_ms);
                    return Err(err);
                }
            }
        }
        let settings = routing::effective_routing(pool, key);
        let lane = self.lane(&snapshot, pool, authed.pool_ix)?;
        let local = cache::local_table();
        let turn_state_account = self.turn_state.as_deref().and_then(|ts| {
            host::shared_data(&turnstate::slot_key(ts))
                .and_then(|slot| turnstate::lookup(&slot, ts, now_ms))
        });
        let turn = TURN.with(|t| {
            let v = t.get();
            t.set(v.wrapping_add(1));
            v
        });
        let input = RouteInput {
            affinity_key: affinity.as_deref(),
            turn_state_account: turn_state_account.as_deref(),
            turn,
        };
        let mut ranking = ranker::rank(&snapshot, lane, settings, &local, input, now_ms)
            .inspect_err(|err| {
                if err.kind == ErrorKind::PoolExhausted {
                    metrics::count(&pool.name, PoolCounter::PoolExhausted);
                }
            })?;
        // One egress per request (the router's retries stay in the route's cluster).
        let ranked = ranking.accounts.len();
        let egress = egress::narrow(&mut ranking.accounts, &self.config.egress_proxies)?;
        if ranking.accounts.len() != ranked {
            let kept = &ranking.accounts;
            ranking.probes.retain(|id| kept.iter().any(|a| a.id == *id));
        }
        if let Some(index) = egress {
            // Read by the route's cluster matcher; the client's own was removed with every
            // x-codexmesh-* header (take_ownership).
            host::set_request_header(egress::EGRESS_HEADER, &egress::route_value(index))
                .map_err(|_| internal("choose the egress proxy"))?;
            host::clear_route_cache();
        }
        if !ranking.probes.is_empty() {
            claim_probes(&ranking.probes, now_ms);
        }
        let handoff = RouteHandoff::for_ranking(
            snapshot.version(),
            pool,
            key,
            settings,
            &ranking,
            self.endpoint.map(Endpoint::as_str).unwrap_or_default(),
        );
        let attempts = handoff.max_attempts;
        let encoded = handoff.encode().map_err(|_| internal("encode the route"))?;
        host::set_property(&[handoff::PROPERTY], &encoded)
            .map_err(|_| internal("store the route"))?;
        // Bound the router's retries by the accounts we have: no point retrying the same one.
        // (The client's own x-envoy-* headers are already gone: see take_ownership.)
        host::set_request_header(
            "x-envoy-max-retries",
            &attempts.saturating_sub(1).to_string(),
        )
        .map_err(|_| internal("set the retry bound"))?;
        metrics::count(&pool.name, PoolCounter::Requests);
        self.routed = Some(authed);
        Ok(())
    }

    /// Answers a refusal in the route's shape; a policy refusal is also reported.
    fn refuse(&self, authed: &Routed, err: GatewayError, now_ms: i64) -> Action {
        self.report_refusal(authed, &err, now_ms);
        reply_error(&err.shaped(self.shape))
    }

    /// Queues the outcome of a policy refusal (no account; the answer's status and code).
    fn report_refusal(&self, authed: &Routed, err: &GatewayError, now_ms: i64) {
        if !err.kind.is_policy_refusal() {
            return;
        }
        let Some(pool) = authed.snapshot.pool(authed.pool_ix) else {
            return;
        };
        let key_id = pool.keys.get(authed.key_ix).map_or("", |k| k.id.as_str());
        let outcome = policy::refusal_outcome(
            &pool.id,
            key_id,
            err,
            &self.policy_path,
            authed.snapshot.version(),
            now_ms,
        );
        report::enqueue(outcome, now_ms);
    }

    /// The whole body is here: refuses (and answers) a request whose model the key may not
    /// use, or whose body names none.
    fn refuse_model(&mut self, body: &[u8]) -> Option<Action> {
        let policy = self.policy.as_ref()?;
        let cap = usize::try_from(self.config.max_request_body_bytes).unwrap_or(usize::MAX);
        let err = match policy::encoded_body_model(body, self.content_encoding.as_deref(), cap) {
            Ok(model) => policy::check_model(policy, &model).err()?,
            Err(err) => err,
        };
        let action = match self.pending.take() {
            Some(authed) => self.refuse(&authed, err, host::now_ms()),
            None => reply_error(&err.shaped(self.shape)),
        };
        Some(action)
    }

    /// The pool-exhausted error when, after this request's attempts, no account can serve.
    fn pool_exhausted(&self, now_ms: i64) -> Option<GatewayError> {
        let routed = self.routed.as_ref()?;
        let pool: &pb::Pool = routed.snapshot.pool(routed.pool_ix)?;
        let key = pool.keys.get(routed.key_ix)?;
        let settings = routing::effective_routing(pool, key);
        let lane = routed.snapshot.lane(routed.pool_ix, self.shape)?;
        let local = cache::local_table();
        let ranked = ranker::rank(
            &routed.snapshot,
            lane,
            settings,
            &local,
            RouteInput::default(),
            now_ms,
        );
        match ranked {
            Err(err) if err.kind == ErrorKind::PoolExhausted => {
                metrics::count(&pool.name, PoolCounter::PoolExhausted);
                Some(err)
            }
            _ => None,
        }
    }
}

/// Removes every header the gateway owns (the pool key among them: it must never reach the
/// upstream) and drops a query string the endpoint does not take, before the router sees the
/// request. Fails closed: a header that cannot be removed stops the request.
fn take_ownership(head: &RequestHead, rewritten_path: Option<&str>) -> Result<(), GatewayError> {
    let failed = |what: &str| {
        GatewayError::new(
            ErrorKind::RouteMissing,
            format!("codexmesh could not {what}"),
        )
    };
    for name in head.gateway_owned() {
        host::remove_request_header(&name).map_err(|_| failed("strip a client header"))?;
    }
    if let Some(path) = rewritten_path {
        host::set_request_header(":path", path).map_err(|_| failed("rewrite the path"))?;
    }
    Ok(())
}

/// The key's policy, when it limits anything.
fn key_policy(authed: &Routed) -> Option<pb::KeyPolicy> {
    let key = authed
        .snapshot
        .pool(authed.pool_ix)?
        .keys
        .get(authed.key_ix)?;
    policy::active(key).cloned()
}

/// The key's share and token budgets (read only: nothing is taken).
fn check_standing(
    authed: &Routed,
    policy: &pb::KeyPolicy,
    now_ms: i64,
) -> Result<(), GatewayError> {
    let Some(key) = authed
        .snapshot
        .pool(authed.pool_ix)
        .and_then(|p| p.keys.get(authed.key_ix))
    else {
        return Ok(());
    };
    let local = if policy::counts_tokens(policy) {
        limits::token_log(&key.id)
    } else {
        TokenLog::default()
    };
    policy::check_standing(
        policy,
        &Standing {
            usage: key.usage.as_ref(),
            snapshot_generated_ms: authed.snapshot.generated_at_ms(),
            local: &local,
            now_ms,
        },
    )
}

/// Takes the key's concurrency slot (if it has a limit), then its rate (if it has one); a slot
/// taken for a request the rate refuses is given back at once. The slot's start, when one was
/// taken.
fn admit_limits(
    policy: &pb::KeyPolicy,
    key_id: &str,
    now_ms: i64,
) -> Result<Option<i64>, GatewayError> {
    let slot = if policy.max_concurrent_requests > 0 {
        limits::take_slot(key_id, policy.max_concurrent_requests, now_ms)?
    } else {
        None
    };
    if policy.requests_per_minute > 0 {
        if let Err(err) = limits::take_rate(key_id, policy.requests_per_minute, now_ms) {
            if let Some(started) = slot {
                limits::release_slot(key_id, started);
            }
            return Err(err);
        }
    }
    Ok(slot)
}

/// Whether the key's pool (or the key's own routing) turns WebSockets off.
fn websockets_disabled(authed: &Routed) -> bool {
    authed.snapshot.pool(authed.pool_ix).is_some_and(|pool| {
        pool.keys
            .get(authed.key_ix)
            .and_then(|key| routing::effective_routing(pool, key))
            .is_some_and(|r| r.websockets_disabled)
    })
}

/// Answers an endpoint the gateway serves itself (usage, account check) for the key's pool.
fn answer_locally(authed: &Routed, endpoint: Endpoint, now_ms: i64) -> Action {
    let Some(pool) = authed.snapshot.pool(authed.pool_ix) else {
        return reply_error(
            &GatewayError::new(ErrorKind::RouteMissing, "codexmesh could not find the pool")
                .shaped(endpoint.provider()),
        );
    };
    // The Codex usage and account check describe the pool's Codex accounts only.
    let codex_only;
    let codex_pool = match authed.snapshot.lane(authed.pool_ix, Provider::Codex) {
        Some(lane) => authed.snapshot.lane_pool(lane).unwrap_or(pool),
        None => {
            codex_only = pb::Pool {
                accounts: Vec::new(),
                ..pool.clone()
            };
            &codex_only
        }
    };
    let body = match endpoint {
        Endpoint::AccountCheck => usage::account_check(codex_pool),
        _ if endpoint.gemini_local_call().is_some() => gemini::local_answer(
            endpoint
                .gemini_local_call()
                .unwrap_or(gemini::LocalCall::Empty),
            pool,
            &cache::local_table(),
            now_ms,
        ),
        _ => {
            let settings = pool
                .keys
                .get(authed.key_ix)
                .and_then(|key| routing::effective_routing(pool, key));
            let limits = Limits::from_settings(settings);
            usage::pool_usage(codex_pool, &cache::local_table(), &limits, now_ms)
        }
    };
    let headers = [
        ("content-type", "application/json".to_string()),
        ("cache-control", "no-store".to_string()),
    ];
    if let Err(status) = host::send_response(200, &headers, &body) {
        host::log(
            LogLevel::Error,
            &format!(
                "could not answer {} locally ({status:?})",
                endpoint.as_str()
            ),
        );
    }
    Action::Pause
}

fn is_json_response() -> bool {
    host::response_header("content-type").is_some_and(|ct| ct.to_ascii_lowercase().contains("json"))
}

fn upstream_unavailable(status: u16, provider: Provider) -> GatewayError {
    GatewayError::new(
        ErrorKind::UpstreamUnavailable,
        format!(
            "{} could not be reached or failed on every attempt (HTTP {status}); retry shortly.",
            provider.upstream_name()
        ),
    )
}

/// Reserves the half-open probe of each account for this request (one probe per open period).
fn claim_probes(accounts: &[String], now_ms: i64) {
    cache::update_local(|table| {
        for id in accounts {
            let mut state = table.get(id);
            if state.probe_until_ms <= now_ms {
                state.probe_until_ms = now_ms.saturating_add(PROBE_RESERVATION_MS);
                state.updated_ms = now_ms;
                table.set(id, state);
            }
        }
    });
}
