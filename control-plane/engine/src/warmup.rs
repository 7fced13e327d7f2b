//! Account warm-up runs: at a pool's scheduled slot, one minimal request per active account,
//! straight to its provider's upstream with the account's own credential, so its 5-hour window
//! starts then (run by the alert evaluator's tick in `serve`).
//!
//! Rules this module keeps:
//! - a slot runs once: [`codexmesh_model::warmup::due_slot`] decides it is due and the store's
//!   compare-and-set claim ([`Store::claim_warmup_slot`]) lets exactly one caller run it;
//! - each active member gets exactly one attempt, no retry; Codex accounts a streaming
//!   `POST {upstream_base_url}/codex/responses` with a one-word input (`store: false`, read to
//!   its end, nothing kept); Claude subscription accounts `POST {claude_base_url}/v1/messages`
//!   with `max_tokens: 1`; Gemini accounts are skipped and counted as such: Code Assist's
//!   quota is per day and resets at a fixed time (midnight Pacific), so a request cannot move
//!   its reset; API keys have no window to start;
//! - each attempt is written to the request log like any traffic (key `warmup`, route reason
//!   `warmup`), its quota headers (`x-codex-*`, Anthropic's unified ones) merged into the account's evidence as the
//!   poller's are, and the run audited once (`pool.warmup_run`, counts only);
//! - tokens go only into the `Authorization` header, never into a log line or the audit.

use std::time::Duration;

use codexmesh_model::records::{
    AccountState, CredentialKind, OutcomeRecord, Provider, QuotaWindowRecord,
};
use codexmesh_model::util::now_ms;
use codexmesh_model::warmup::{due_slot, format_time};
use codexmesh_store::crypto::Keys;
use codexmesh_store::{Actor, Store, StoreError};

/// The request log's key id and route reason of a warm-up attempt.
pub const WARMUP: &str = "warmup";
/// The model a Codex warm-up asks for.
pub const CODEX_WARMUP_MODEL: &str = "gpt-5-codex";
/// The model a Claude warm-up asks for.
pub const CLAUDE_WARMUP_MODEL: &str = "claude-haiku-4-5";
/// One attempt's time limit.
pub const WARMUP_TIMEOUT: Duration = Duration::from_secs(60);

/// What one pool's run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarmupRun {
    pub pool: String,
    pub slot_ms: i64,
    /// Accounts sent a request, and of those answered 2xx.
    pub sent: u32,
    pub succeeded: u32,
    /// Active accounts whose window a request cannot start (Gemini: a fixed daily reset).
    pub skipped: u32,
}

/// The minimal Codex request body: one word in, streamed, not stored.
pub fn codex_body() -> serde_json::Value {
    serde_json::json!({
        "model": CODEX_WARMUP_MODEL,
        "instructions": "Reply with one word.",
        "input": [{"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "hi"}]}],
        "stream": true,
        "store": false,
    })
}

/// A quota window from the `x-codex-<family>-*` headers of an answer.
fn header_window(
    headers: &reqwest::header::HeaderMap,
    family: &str,
    now_unix: i64,
) -> Option<QuotaWindowRecord> {
    let get = |name: &str| {
        headers
            .get(format!("x-codex-{family}-{name}"))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let used: f64 = get("used-percent")?
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())?;
    Some(QuotaWindowRecord {
        used_percent: used.clamp(0.0, 100.0),
        window_minutes: get("window-minutes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        resets_at_unix: get("reset-at")
            .and_then(|v| v.parse().ok())
            .or_else(|| {
                get("reset-after-seconds")
                    .and_then(|v| v.parse::<i64>().ok())
                    .map(|s| now_unix.saturating_add(s))
            })
            .unwrap_or(0),
    })
}

/// Runs every warm-up slot that is due now; returns what each run did.
pub async fn run_due(
    store: &Store,
    keys: &(impl Keys + ?Sized),
    http: &reqwest::Client,
    upstreams: &crate::quota::Upstreams,
) -> Result<Vec<WarmupRun>, StoreError> {
    let mut runs = Vec::new();
    for w in store.enabled_warmups().await? {
        let now = now_ms();
        let Some(slot) = due_slot(&w.schedule, w.last_slot_ms, now) else {
            continue;
        };
        if !store.claim_warmup_slot(&w.pool_id, slot).await? {
            continue; // another replica ran it
        }
        let mut run = WarmupRun {
            pool: w.pool.clone(),
            slot_ms: slot,
            ..WarmupRun::default()
        };
        let members = store.list_accounts(Some(&w.pool)).await?;
        for a in members.iter().filter(|a| a.state == AccountState::Active) {
            if a.credential_kind != CredentialKind::Oauth {
                continue;
            }
            if a.provider == Provider::Gemini {
                run.skipped += 1;
                continue;
            }
            run.sent += 1;
            match warm(store, keys, http, upstreams, &w.pool_id, &a.id).await {
                Ok(true) => run.succeeded += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(account = %a.label, error = %e, "warm-up failed"),
            }
        }
        store
            .audit_refusal(
                &Actor::new(WARMUP),
                "pool.warmup_run",
                Some(&w.pool_id),
                "ok",
                std::slice::from_ref(&w.pool),
                serde_json::json!({"pool": w.pool, "at": format_time(w.schedule.minute_of_day),
                    "slot_ms": slot, "sent": run.sent, "succeeded": run.succeeded,
                    "skipped": run.skipped}),
            )
            .await?;
        tracing::info!(pool = %w.pool, sent = run.sent, succeeded = run.succeeded,
            skipped = run.skipped, "warm-up ran");
        runs.push(run);
    }
    Ok(runs)
}

/// The minimal Claude request body: one token out, not streamed.
pub fn claude_body() -> serde_json::Value {
    serde_json::json!({
        "model": CLAUDE_WARMUP_MODEL,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "hi"}],
    })
}

/// A quota window from Anthropic's `anthropic-ratelimit-unified-<window>-*` headers
/// (utilization 0..1, reset in unix seconds).
fn claude_window(
    headers: &reqwest::header::HeaderMap,
    window: &str,
    minutes: i64,
) -> Option<QuotaWindowRecord> {
    let get = |name: &str| {
        headers
            .get(format!("anthropic-ratelimit-unified-{window}-{name}"))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let used: f64 = get("utilization")?
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())?;
    Some(QuotaWindowRecord {
        used_percent: (used * 100.0).clamp(0.0, 100.0),
        window_minutes: minutes,
        resets_at_unix: get("reset").and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// One account's warm-up request (Codex `/codex/responses`, Claude `/v1/messages`): logged,
/// its quota headers recorded. True on a 2xx.
async fn warm(
    store: &Store,
    keys: &(impl Keys + ?Sized),
    http: &reqwest::Client,
    upstreams: &crate::quota::Upstreams,
    pool_id: &str,
    account_id: &str,
) -> Result<bool, StoreError> {
    let s = store.account_secrets(account_id, keys).await?;
    // Through the account's egress proxy when it names one (never directly instead).
    let http = match upstreams
        .egress
        .client(http, s.account.egress_proxy.as_deref())
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(account = %s.account.label, error = %e, "warm-up skipped");
            return Ok(false);
        }
    };
    let http = &http;
    let provider = s.account.provider;
    let (path, request) = match provider {
        Provider::Claude => {
            let path = "/v1/messages";
            let url = format!("{}{path}", upstreams.claude.trim_end_matches('/'));
            let req = http
                .post(url)
                .bearer_auth(&s.access_token)
                .header("anthropic-version", crate::quota::ANTHROPIC_VERSION)
                .header("anthropic-beta", crate::quota::CLAUDE_OAUTH_BETA)
                .json(&claude_body());
            (path, req)
        }
        _ => {
            let path = "/codex/responses";
            let url = format!("{}{path}", upstreams.codex.trim_end_matches('/'));
            let req = http
                .post(url)
                .bearer_auth(&s.access_token)
                .header("chatgpt-account-id", &s.account.chatgpt_account_id)
                .header("accept", "text/event-stream")
                .json(&codex_body());
            (path, req)
        }
    };
    let started = now_ms();
    let answer = request.timeout(WARMUP_TIMEOUT).send().await;
    let mut outcome = OutcomeRecord {
        pool_id: pool_id.to_owned(),
        key_id: WARMUP.to_owned(),
        account_id: account_id.to_owned(),
        attempt: 1,
        started_at_ms: started,
        request_path: Some(path.to_owned()),
        route_reason: Some(WARMUP.to_owned()),
        ..OutcomeRecord::default()
    };
    let ok = match answer {
        Ok(r) => {
            let status = r.status();
            let now = now_ms();
            outcome.status = i64::from(status.as_u16());
            let (primary, secondary) = match provider {
                Provider::Claude => (
                    claude_window(r.headers(), "5h", codexmesh_model::quota::PRIMARY_MINUTES),
                    claude_window(r.headers(), "7d", codexmesh_model::quota::SECONDARY_MINUTES),
                ),
                _ => (
                    header_window(r.headers(), "primary", now / 1000),
                    header_window(r.headers(), "secondary", now / 1000),
                ),
            };
            outcome.primary = primary;
            outcome.secondary = secondary;
            if outcome.primary.is_some() || outcome.secondary.is_some() {
                outcome.quota_observed_at_ms = Some(now);
            }
            if !status.is_success() {
                outcome.error_source = Some("upstream".to_owned());
            }
            // Read the answer to its end (the turn completes upstream); nothing is kept.
            let _ = r.bytes().await;
            status.is_success()
        }
        Err(e) => {
            outcome.error_source = Some("transport".to_owned());
            outcome.error_code = Some(crate::oauth::describe(&e));
            false
        }
    };
    outcome.latency_ms = now_ms() - started;
    store
        .record_outcomes("control-plane", std::slice::from_ref(&outcome))
        .await?;
    if let Some(obs) = crate::quota::observation_from_outcome_of(&outcome, now_ms(), provider) {
        crate::quota::record(store, account_id, &obs).await?;
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_headers_become_windows() {
        let mut h = reqwest::header::HeaderMap::new();
        use reqwest::header::HeaderValue;
        h.insert(
            "x-codex-primary-used-percent",
            HeaderValue::from_static("12.5"),
        );
        h.insert(
            "x-codex-primary-window-minutes",
            HeaderValue::from_static("300"),
        );
        h.insert(
            "x-codex-primary-reset-after-seconds",
            HeaderValue::from_static("60"),
        );
        let w = header_window(&h, "primary", 1000);
        assert_eq!(
            w,
            Some(QuotaWindowRecord {
                used_percent: 12.5,
                window_minutes: 300,
                resets_at_unix: 1060
            })
        );
        assert_eq!(header_window(&h, "secondary", 1000), None);
        assert_eq!(codex_body()["store"], false);
        let mut c = reqwest::header::HeaderMap::new();
        c.insert(
            "anthropic-ratelimit-unified-5h-utilization",
            HeaderValue::from_static("0.25"),
        );
        c.insert(
            "anthropic-ratelimit-unified-5h-reset",
            HeaderValue::from_static("19000"),
        );
        assert_eq!(
            claude_window(&c, "5h", 300),
            Some(QuotaWindowRecord {
                used_percent: 25.0,
                window_minutes: 300,
                resets_at_unix: 19000
            })
        );
        assert_eq!(claude_window(&c, "7d", 10080), None);
        assert_eq!(claude_body()["max_tokens"], 1);
    }
}
