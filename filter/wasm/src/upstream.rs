//! Cluster upstream filter: runs once per attempt. Takes the attempt's account from the hand-off,
//! injects its credentials, learns from the answer (local cooldowns, circuits, 401 blocks,
//! turn-state ownership) and queues an outcome record for the control plane.
//!
//! Each provider's cluster runs its own instance (`Role::Upstream(provider)`): it injects only
//! into requests for its provider's endpoints and only the credentials of its provider's
//! accounts (`provider::credential_headers`). A Gemini generate call also gets the attempt's
//! account project in its body (`gemini::with_project`), on every attempt.
//!
//! A 200 model stream of any provider is fed, as forwarded, to a `stream_end::StreamWatch` of
//! that provider: a stream cut before its final event (while the client still read) or failed
//! by an error event is judged by `verdict::stream_verdict`, not counted a success. That is one
//! SSE scan per chunk; JSON is parsed only for a (possible) final event.
//!
//! The same scan reads the tokens the answer states (`tokens`; a JSON answer of Claude's
//! Messages or Gemini's generateContent through a bounded tail window): they go into the
//! outcome, and a key with a token budget has them added to its count on this Envoy
//! (`limits::add_tokens`) when the attempt ends.
//!
//! Envoy (1.40) runs the cluster's upstream HTTP filters once per attempt and hands each attempt
//! its own copy of the buffered request body (the router copies its buffer on a retry), so the
//! body an upstream filter replaces is that attempt's alone. Headers, by contrast, are shared
//! between attempts: every header an attempt may set is set or removed again by the next one.
//! The rewritten body's length differs, so `content-length` is dropped for those requests
//! (HTTP/1.1 upstreams then get a chunked body, HTTP/2 ones need no length).

use codexmesh_filter_core::config::UpstreamConfig;
use codexmesh_filter_core::egress;
use codexmesh_filter_core::endpoints::Endpoint;
use codexmesh_filter_core::errors::{ErrorKind, GatewayError};
use codexmesh_filter_core::evidence::{self, UsageLimit};
use codexmesh_filter_core::handoff::{self, RouteHandoff};
use codexmesh_filter_core::headers::is_account_response_header;
use codexmesh_filter_core::local::{self, token_fingerprint, LocalAccount, SeenQuota};
use codexmesh_filter_core::pb;
use codexmesh_filter_core::policy;
use codexmesh_filter_core::provider::{self, HeaderOp, Provider};
use codexmesh_filter_core::routing::{self, Limits};
use codexmesh_filter_core::stats::PoolCounter;
use codexmesh_filter_core::stream_end::StreamWatch;
use codexmesh_filter_core::tokens::{self, TailWindow, TokenUsage};
use codexmesh_filter_core::translate::responses::Outcome;
use codexmesh_filter_core::turnstate;
use codexmesh_filter_core::verdict::{self, NoAnswer, Verdict};
use codexmesh_filter_core::{claude, gemini};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::downstream::CLIENT_BETA_PROPERTY;
use crate::report::enqueue;
use crate::{cache, host, limits, metrics, reply_error};

/// Error bodies larger than this are not read (they are not the upstream's JSON errors).
const MAX_ERROR_BODY: usize = 64 * 1024;

struct Attempt {
    handoff: RouteHandoff,
    account_id: String,
    token_fp: u64,
    token_expires_at_unix: i64,
    limits: Limits,
    attempt: u32,
    started_ms: i64,
    path: String,
    /// Filled when the answer's headers arrive; None means no answer (reset, refused).
    status: Option<u32>,
    /// Why there was no answer, decided when the attempt ends without one.
    no_answer: Option<NoAnswer>,
    quota: Option<pb::QuotaSummary>,
    retry_after_ms: Option<i64>,
    body: Option<UsageLimit>,
    want_body: bool,
    latency_ms: u32,
    /// A 200 model stream (any provider's): watched for its final event, so a broken stream is
    /// not a success.
    stream: Option<StreamWatch>,
    /// How that stream ended, when it did not complete (decided when the attempt ends).
    stream_end: Option<Outcome>,
    /// Whose endpoint and account this attempt is.
    provider: Provider,
    /// A Gemini generate call: the account's project, set in the body when it has arrived.
    project: Option<String>,
    /// A 200 JSON answer that states its usage at its end (Claude Messages, Gemini generate).
    answer_tail: Option<TailWindow>,
    /// The tokens the answer stated.
    usage: TokenUsage,
    /// The key has a token budget: its answers' tokens are counted here, with entries older
    /// than this (unix ms, `policy::Standing::local_cutoff_ms`) taken as in the snapshot.
    count_tokens: Option<(String, i64)>,
}

#[derive(Default)]
pub struct Upstream {
    /// The provider of this filter's cluster.
    provider: Option<Provider>,
    /// The egress proxy this cluster tunnels through (empty: direct): only its accounts'
    /// credentials go out here (`egress::serves`).
    egress: String,
    attempt: Option<Attempt>,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        Self {
            provider: Some(cfg.provider),
            egress: cfg.egress.clone(),
            attempt: None,
        }
    }
}

impl Context for Upstream {
    /// Envoy calls this once per attempt when the attempt ends, answered or not. (`on_log` is
    /// never called for upstream filters, so the outcome is flushed here.)
    fn on_done(&mut self) -> bool {
        self.finish(host::now_ms());
        true
    }
}

impl HttpContext for Upstream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        match self.inject(host::now_ms()) {
            Ok(()) => Action::Continue,
            Err(err) => reply_error(&err),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(project) = self.attempt.as_ref().and_then(|a| a.project.as_deref()) else {
            return Action::Continue;
        };
        if !end_of_stream {
            // Held until whole (bounded by the route's body buffer limit).
            return Action::Pause;
        }
        let rewritten = host::request_body_range(0, body_size)
            .and_then(|body| gemini::with_project(&body, project));
        if let Some(body) = rewritten {
            if host::replace_request_body(body_size, &body).is_err() {
                host::log(LogLevel::Warn, "could not set the account's project");
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.observe_headers(host::now_ms(), end_of_stream);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(attempt) = self.attempt.as_mut() else {
            return Action::Continue;
        };
        if let Some(tail) = attempt.answer_tail.as_mut() {
            if body_size > 0 {
                if let Some(chunk) = host::response_body(body_size) {
                    tail.push(&chunk);
                }
            }
            if end_of_stream {
                if let Some(stated) = tokens::json_answer_usage(attempt.provider, tail.bytes()) {
                    attempt.usage = stated;
                }
                attempt.answer_tail = None;
            }
            return Action::Continue;
        }
        if let Some(scanner) = attempt.stream.as_mut() {
            if body_size > 0 {
                if let Some(chunk) = host::response_body(body_size) {
                    scanner.feed(&chunk);
                }
            }
            if end_of_stream {
                scanner.finish();
            }
            return Action::Continue;
        }
        if !attempt.want_body {
            return Action::Continue;
        }
        if !end_of_stream {
            if body_size > MAX_ERROR_BODY {
                attempt.want_body = false;
                return Action::Continue;
            }
            // Error answers are small JSON: hold them until complete to read the reset time.
            return Action::Pause;
        }
        attempt.want_body = false;
        let now_ms = host::now_ms();
        let provider = attempt.provider;
        attempt.body = host::response_body(body_size.min(MAX_ERROR_BODY)).and_then(|b| {
            match provider {
                Provider::Gemini => gemini::parse_rpc_error(&b, now_ms),
                // Anthropic's `{"type":"error","error":{"type":..}}` reads like the Codex body.
                Provider::Codex | Provider::Claude => evidence::parse_error_body(&b, now_ms),
            }
        });
        if attempt.status == Some(429) && attempt.body.is_some() {
            // The body may know the reset time the headers did not.
            apply_verdict(attempt, now_ms);
        }
        Action::Continue
    }
}

fn elapsed(started_ms: i64, now_ms: i64) -> u32 {
    u32::try_from(now_ms.saturating_sub(started_ms).max(0)).unwrap_or(u32::MAX)
}

impl Upstream {
    /// Records the attempt's outcome once: a missing answer is a transport failure; a 200
    /// stream that ended without its final event is the account's failure unless the client
    /// left first.
    fn finish(&mut self, now_ms: i64) {
        let Some(attempt) = self.attempt.take() else {
            return;
        };
        let mut attempt = attempt;
        let stream_end = attempt.stream.as_ref().map(StreamWatch::outcome);
        let unfinished = matches!(stream_end, Some(Outcome::Pending | Outcome::Cut));
        if attempt.status.is_none() || unfinished {
            if attempt.status.is_none() {
                attempt.latency_ms = elapsed(attempt.started_ms, now_ms);
            }
            // Only an attempt without a (whole) answer pays for this lookup. A client that
            // left taught us nothing about the account: its state is not touched (no write).
            let client_gone = host::property(&[handoff::CLIENT_GONE_PROPERTY]).is_some();
            if client_gone {
                attempt.no_answer = Some(NoAnswer::ClientGone);
            } else if attempt.status.is_none() {
                attempt.no_answer = Some(NoAnswer::Transport);
                apply_verdict(&attempt, now_ms);
            } else {
                attempt.stream_end = Some(Outcome::Cut);
                apply_verdict(&attempt, now_ms);
            }
        } else if let Some(end @ Outcome::Failed { .. }) = stream_end {
            attempt.stream_end = Some(end);
            // A Gemini error frame may name its reset, like a 429's body.
            let frame = attempt.stream.as_ref().and_then(StreamWatch::error_frame);
            if let Some(body) = frame.and_then(|f| gemini::parse_rpc_error(f, now_ms)) {
                attempt.body = Some(body);
            }
            apply_verdict(&attempt, now_ms);
        }
        if let Some(stream) = attempt.stream.as_ref() {
            attempt.usage = stream.usage();
        }
        if let Some((key_id, forget_before_ms)) = attempt.count_tokens.as_ref() {
            let total = attempt.usage.total();
            if total > 0 {
                limits::add_tokens(key_id, total, now_ms, *forget_before_ms);
            }
        }
        enqueue(outcome(&attempt, now_ms), now_ms);
    }

    fn inject(&mut self, now_ms: i64) -> Result<(), GatewayError> {
        let handoff = host::property(&[handoff::PROPERTY])
            .and_then(|b| RouteHandoff::decode(&b).ok())
            .ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::RouteMissing,
                    "codexmesh upstream filter found no route: the downstream filter must run on this route.",
                )
            })?;
        let snapshot = cache::current().ok_or_else(|| {
            GatewayError::new(ErrorKind::NotReady, "codexmesh has no routing table yet.")
        })?;
        let attempt = host::request_header("x-envoy-attempt-count")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(1)
            .max(1);
        let endpoint = Endpoint::from_name(&handoff.endpoint);
        let provider = endpoint.map_or(Provider::Codex, Endpoint::provider);
        let pool = snapshot.pool_by_id(&handoff.pool_id);
        let key = pool.and_then(|pool| pool.keys.iter().find(|k| k.id == handoff.key_id));
        let settings = pool
            .zip(key)
            .and_then(|(pool, key)| routing::effective_routing(pool, key));
        let count_tokens = key
            .filter(|k| policy::active(k).is_some_and(policy::counts_tokens))
            .map(|k| {
                let cutoff = snapshot
                    .generated_at_ms()
                    .saturating_sub(policy::REPORT_GRACE_MS);
                (k.id.clone(), cutoff)
            });
        let limits = Limits::from_settings(settings);
        let path = host::request_header(":path").unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default().to_string();
        // Defence in depth behind the downstream allowlist: credentials go only into a request
        // for the endpoint the downstream filter admitted.
        // And only on the cluster of the endpoint's provider.
        if !endpoint.is_some_and(|e| e.matches_upstream_path(&path))
            || self.provider.unwrap_or(Provider::Codex) != provider
        {
            return Err(GatewayError::new(
                ErrorKind::RouteMissing,
                "codexmesh refused to forward a request outside its endpoint allowlist.",
            )
            .shaped(provider));
        }
        let local = cache::local_table();
        let account = routing::account_for_attempt(
            &handoff.ranked_accounts,
            attempt,
            |id| snapshot.account(id).map(|(_, a)| a),
            &local,
            &limits,
            now_ms,
        )
        .filter(|a| {
            provider::Provider::of_account(a) == Some(provider) && egress::serves(&self.egress, a)
        })
        .ok_or_else(|| {
            GatewayError::new(
                ErrorKind::NoAccountAvailable,
                "No account in the pool can serve this request right now.",
            )
            .shaped(provider)
        })?;
        let failed = |_| {
            GatewayError::new(
                ErrorKind::RouteMissing,
                "codexmesh could not set upstream credentials",
            )
            .shaped(provider)
        };
        if provider == Provider::Codex {
            // The hot path as before: two header writes, no list.
            host::set_request_header("authorization", &format!("Bearer {}", account.access_token))
                .map_err(failed)?;
            host::set_request_header("chatgpt-account-id", &account.chatgpt_account_id)
                .map_err(failed)?;
        } else {
            let client_beta = host::property(&[CLIENT_BETA_PROPERTY])
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|b| !b.is_empty());
            for op in provider::credential_headers(provider, account, client_beta.as_deref()) {
                match op {
                    HeaderOp::Set(name, value) => {
                        host::set_request_header(name, &value).map_err(failed)?
                    }
                    HeaderOp::Remove(name) => host::remove_request_header(name).map_err(failed)?,
                }
            }
        }
        let project = endpoint
            .filter(|e| e.carries_gemini_project() && !account.project_id.is_empty())
            .map(|_| account.project_id.clone());
        if project.is_some() {
            // The body is rewritten when it arrives: its length changes.
            let _ = host::remove_request_header("content-length");
        }
        // Envoy's retry bookkeeping is ours, not the upstream's business.
        let _ = host::remove_request_header("x-envoy-max-retries");
        if attempt > 1 {
            if let Some(pool) = pool {
                metrics::count(&pool.name, PoolCounter::Failovers);
            }
        }
        self.attempt = Some(Attempt {
            account_id: account.id.clone(),
            token_fp: token_fingerprint(&account.access_token),
            token_expires_at_unix: account.access_token_expires_at_unix,
            limits,
            handoff,
            attempt,
            started_ms: now_ms,
            path,
            status: None,
            no_answer: None,
            quota: None,
            retry_after_ms: None,
            body: None,
            want_body: false,
            latency_ms: 0,
            stream: None,
            stream_end: None,
            provider,
            project,
            answer_tail: None,
            usage: TokenUsage::default(),
            count_tokens,
        });
        Ok(())
    }

    fn observe_headers(&mut self, now_ms: i64, end_of_stream: bool) {
        let Some(attempt) = self.attempt.as_mut() else {
            return;
        };
        let headers = host::response_headers();
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let status = lookup(":status")
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        // Nothing of the account's session (cookies, echoed credentials) reaches the client.
        for (name, _) in headers
            .iter()
            .filter(|(k, _)| is_account_response_header(k))
        {
            if host::remove_response_header(name).is_err() {
                host::log(LogLevel::Warn, "could not strip an account response header");
            }
        }
        attempt.status = Some(status);
        if status == 429 {
            if let Some(pool) = cache::current()
                .as_ref()
                .and_then(|s| s.pool_by_id(&attempt.handoff.pool_id))
            {
                metrics::count(&pool.name, PoolCounter::Upstream429);
            }
        }
        attempt.latency_ms = elapsed(attempt.started_ms, now_ms);
        attempt.quota = match attempt.provider {
            Provider::Codex => evidence::quota_from_headers(lookup, now_ms),
            Provider::Claude => claude::quota_from_headers(lookup, now_ms),
            // Code Assist answers carry no quota headers.
            Provider::Gemini => None,
        };
        attempt.retry_after_ms = verdict::parse_retry_after(lookup("retry-after"), now_ms);
        if attempt.provider == Provider::Claude && status == 429 {
            // An overall rejection without a rejected window: its reset is the cooldown end.
            let rejected = claude::rejected_until_ms(lookup);
            attempt.retry_after_ms = attempt.retry_after_ms.max(rejected);
        }
        attempt.want_body = status >= 400 && !end_of_stream;
        let is_stream = lookup("content-type").is_some_and(|ct| ct.contains("text/event-stream"));
        if status == 200 && is_stream && !end_of_stream && streams_model_turns(&attempt.handoff) {
            attempt.stream = Some(StreamWatch::new(attempt.provider));
        } else if status == 200
            && !is_stream
            && !end_of_stream
            && answers_usage_json(&attempt.handoff)
        {
            attempt.answer_tail = Some(TailWindow::default());
        }
        apply_verdict(attempt, now_ms);
        if let Some(turn_state) = lookup("x-codex-turn-state").filter(|_| status < 400) {
            let entry = turnstate::encode_entry(turn_state, &attempt.account_id, now_ms);
            if host::set_shared_data(&turnstate::slot_key(turn_state), &entry).is_err() {
                host::log(LogLevel::Warn, "could not record a turn state");
            }
        }
        if attempt.handoff.explain {
            let header = explanation(attempt);
            let _ = host::set_response_header("x-codexmesh-route", &header);
        }
    }
}

/// Whether the hand-off's endpoint answers a model turn as an event stream (when its answer is
/// `text/event-stream`): Codex's Responses events, Claude's Messages events, Gemini's
/// `streamGenerateContent` frames. JSON answers are judged by their status alone.
fn streams_model_turns(handoff: &RouteHandoff) -> bool {
    matches!(
        Endpoint::from_name(&handoff.endpoint),
        Some(
            Endpoint::Responses
                | Endpoint::V1Responses
                | Endpoint::V1ChatCompletions
                | Endpoint::ClaudeMessages
                | Endpoint::GeminiStreamGenerate
        )
    )
}

/// Whether the hand-off's endpoint answers a model turn as one JSON body stating its usage at
/// its end (when its answer is not a stream).
fn answers_usage_json(handoff: &RouteHandoff) -> bool {
    matches!(
        Endpoint::from_name(&handoff.endpoint),
        Some(Endpoint::ClaudeMessages | Endpoint::GeminiGenerate)
    )
}

/// What this attempt's answer means, given the account's local state (for the backoff ladder).
fn verdict_of(attempt: &Attempt, state: &LocalAccount, now_ms: i64) -> Verdict {
    if let Some(cause) = attempt.no_answer {
        return cause.verdict();
    }
    if let Some(v) = attempt.stream_end.as_ref().and_then(|end| {
        verdict::stream_verdict(end, attempt.body.as_ref(), state, &attempt.limits, now_ms)
    }) {
        return v;
    }
    verdict::classify(
        attempt.status.unwrap_or(0),
        attempt.quota.as_ref(),
        attempt.body.as_ref(),
        attempt.retry_after_ms,
        state,
        &attempt.limits,
        now_ms,
    )
}

/// Folds this attempt's verdict into the Envoy-wide local state.
fn apply_verdict(attempt: &Attempt, now_ms: i64) {
    let account = attempt.account_id.clone();
    // The common case, a success on an account with nothing to clear and quota that barely
    // moved, needs no write: a shared data write (and its compare-and-swap) per request is the
    // costliest host call here.
    let current = cache::local_table().get(&account);
    let quota_news = attempt.quota.as_ref().is_some_and(|observed| {
        let snapshot = cache::current();
        let believed = snapshot
            .as_ref()
            .and_then(|s| s.account(&account))
            .and_then(|(_, a)| local::effective_quota(a, &current));
        local::quota_news(believed.as_ref(), observed)
    });
    if verdict_of(attempt, &current, now_ms) == Verdict::Success
        && !verdict::success_changes(&current, attempt.token_fp)
        && !quota_news
    {
        return;
    }
    let ok = cache::update_local(|table| {
        let mut state = table.get(&account);
        if let Some(observed) = attempt.quota.as_ref() {
            if observed.observed_at_unix_ms > state.seen_quota.observed_ms {
                state.seen_quota = SeenQuota::from_pb(observed);
            }
        }
        let v = verdict_of(attempt, &state, now_ms);
        if v != Verdict::ClientError {
            verdict::apply(&mut state, v, attempt.token_fp, &attempt.limits, now_ms);
        }
        state.updated_ms = now_ms;
        table.set(&account, state);
        table.prune(now_ms);
    });
    if !ok {
        host::log(LogLevel::Warn, "could not update local account state");
    }
}

/// `x-codexmesh-route`: which account served, by which rule, after how many attempts.
fn explanation(attempt: &Attempt) -> String {
    let snapshot = cache::current();
    let label_of = |id: &str| {
        snapshot
            .as_ref()
            .and_then(|s| s.account(id).map(|(_, a)| a.label.clone()))
    };
    let label = label_of(&attempt.account_id).unwrap_or_else(|| attempt.account_id.clone());
    let mut out = format!(
        "account={label}; strategy={}; attempt={}",
        attempt.handoff.strategy, attempt.attempt
    );
    if attempt.attempt > 1 {
        let previous = usize::try_from(attempt.attempt - 2)
            .ok()
            .and_then(|i| attempt.handoff.ranked_accounts.get(i))
            .and_then(|id| label_of(id));
        out.push_str("; reason=failover");
        if let Some(from) = previous {
            out.push_str(&format!("; from={from}"));
        }
    } else {
        out.push_str(&format!("; reason={}", attempt.handoff.reason));
    }
    out
}

fn outcome(attempt: &Attempt, now_ms: i64) -> pb::Outcome {
    let status = attempt.status.unwrap_or(0);
    // Only the source is needed here, which the ladder position does not change.
    let v = verdict_of(attempt, &LocalAccount::default(), now_ms);
    let body = attempt.body.clone().unwrap_or_default();
    pb::Outcome {
        pool_id: attempt.handoff.pool_id.clone(),
        key_id: attempt.handoff.key_id.clone(),
        account_id: attempt.account_id.clone(),
        attempt: attempt.attempt,
        status,
        error_code: match (
            &attempt.stream_end,
            body.error_type.is_empty(),
            v.error_code(),
        ) {
            (
                Some(Outcome::Failed {
                    code: Some(code), ..
                }),
                _,
                _,
            ) => code.clone(),
            (_, true, Some(code)) => code.to_string(),
            _ => body.error_type,
        },
        started_at_unix_ms: attempt.started_ms,
        latency_ms: attempt.latency_ms,
        quota: attempt.quota,
        resets_at_unix: body.resets_at_unix.unwrap_or(0),
        request_path: attempt.path.clone(),
        snapshot_version: attempt.handoff.snapshot_version,
        plan: body.plan.unwrap_or_default(),
        error_source: v.source().to_string(),
        fallback: attempt.attempt > 1,
        retry_after_unix: attempt.retry_after_ms.map_or(0, |ms| ms / 1000),
        token_expires_at_unix: attempt.token_expires_at_unix,
        strategy: attempt.handoff.strategy.clone(),
        route_reason: if attempt.attempt > 1 {
            "failover".to_string()
        } else {
            attempt.handoff.reason.clone()
        },
        input_tokens: attempt.usage.input,
        output_tokens: attempt.usage.output,
        ..Default::default()
    }
}
