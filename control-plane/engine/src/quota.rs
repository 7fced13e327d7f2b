//! Quota evidence, the I/O half: active polls of each provider's usage endpoint ([`poll_once`]
//! Codex `GET {upstream_base_url}/wham/usage`; [`poll_claude`] `GET
//! {claude_base_url}/api/oauth/usage` with the OAuth betas; [`poll_gemini`] `POST
//! {gemini_base_url}/v1internal:retrieveUserQuota` for the account's project), [`poll_account`]
//! polls one stored account of any provider and records what it learnt (for the poller in
//! `lifecycle`, which spreads them over `quota_poll_interval_secs`, and for an operator's
//! refresh-now in `ops::reports`), and the compare-and-set write of merged evidence
//! ([`record`]). What the evidence means and how it merges is `codexmesh_model::quota`.
//!
//! Rules: an account without a usage endpoint (a Claude API key) is never polled
//! ([`pollable`]); a 401/403 means the credential, not the quota, is the problem; tokens go
//! only in the `Authorization` header and never in a log line.

use std::time::Duration;

pub use codexmesh_model::quota::*;
use codexmesh_model::records::{CredentialKind, Provider};
use codexmesh_store::crypto::Keys;
use codexmesh_store::{Account, QuotaWrite, Store, StoreError};
use serde_json::Value;

/// The `anthropic-beta` an OAuth token needs on `/api/oauth/usage`.
pub const CLAUDE_OAUTH_BETA: &str = "oauth-2025-04-20";
/// The `anthropic-version` sent with it.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The base URL of each provider's usage endpoint (from the settings).
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub codex: String,
    pub claude: String,
    pub gemini: String,
    /// The clients of accounts with their own egress proxy.
    pub egress: crate::oauth::Egress,
}

impl Upstreams {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Self {
            codex: s.upstream_base_url.clone(),
            claude: s.claude_base_url.clone(),
            gemini: s.gemini_base_url.clone(),
            // A bad CA file stops `serve` earlier (its direct client); here it would only
            // mean fewer roots, which fails closed.
            egress: crate::oauth::Egress::from_settings(s).unwrap_or_default(),
        }
    }
}

/// Whether `a` has a usage endpoint to poll (every OAuth account; not an API key).
pub fn pollable(a: &Account) -> bool {
    a.credential_kind == CredentialKind::Oauth
}

/// Merges an observation into the store: read, merge, compare-and-set write (bumping the
/// revision only when the change matters), retried a few times on a concurrent write.
/// Returns the revision when it bumped.
pub async fn record(
    store: &Store,
    account_id: &str,
    obs: &Observation,
) -> Result<Option<i64>, StoreError> {
    for _ in 0..4 {
        let current = store.quota(account_id).await?;
        let merged = merge(
            current.as_ref(),
            obs,
            codexmesh_model::util::now_ms() / 1000,
        );
        if !merged.changed {
            return Ok(None);
        }
        match store
            .write_quota(
                account_id,
                current.as_ref().map(|c| c.version),
                &merged.record,
                merged.matters,
            )
            .await?
        {
            QuotaWrite::Written(rev) => return Ok(rev),
            QuotaWrite::Gone => return Ok(None),
            QuotaWrite::Conflict => continue,
        }
    }
    tracing::debug!(
        account_id,
        "quota evidence dropped after repeated concurrent writes"
    );
    Ok(None)
}

/// What one active poll learnt.
#[derive(Debug)]
pub enum PollResult {
    Observed(Observation),
    /// The access token was refused (401/403): the token is the problem, not the quota.
    Unauthorized(u16),
    /// Anything else (status, or a transport error), for the log.
    Failed(String),
}

/// `GET {base}/wham/usage` with the account's credentials.
pub async fn poll_once(
    http: &reqwest::Client,
    upstream_base_url: &str,
    access_token: &str,
    chatgpt_account_id: &str,
    timeout: Duration,
) -> PollResult {
    let url = format!("{}/wham/usage", upstream_base_url.trim_end_matches('/'));
    let req = http
        .get(url)
        .bearer_auth(access_token)
        .header("chatgpt-account-id", chatgpt_account_id)
        .header("accept", "application/json");
    answer(req, timeout, parse_usage).await
}

/// `GET {base}/api/oauth/usage` with a Claude OAuth account's bearer and the OAuth beta.
pub fn claude_usage_request(
    http: &reqwest::Client,
    claude_base_url: &str,
    access_token: &str,
) -> reqwest::RequestBuilder {
    let url = format!("{}/api/oauth/usage", claude_base_url.trim_end_matches('/'));
    http.get(url)
        .bearer_auth(access_token)
        .header("anthropic-beta", CLAUDE_OAUTH_BETA)
        .header("anthropic-version", ANTHROPIC_VERSION)
        .header("accept", "application/json")
}

/// Polls a Claude OAuth account's 5-hour and 7-day windows.
pub async fn poll_claude(
    http: &reqwest::Client,
    claude_base_url: &str,
    access_token: &str,
    timeout: Duration,
) -> PollResult {
    let req = claude_usage_request(http, claude_base_url, access_token);
    answer(req, timeout, parse_claude_usage).await
}

/// `POST {base}/v1internal:retrieveUserQuota` `{"project": project_id}` with a Gemini
/// account's bearer.
pub fn gemini_quota_request(
    http: &reqwest::Client,
    gemini_base_url: &str,
    access_token: &str,
    project_id: &str,
) -> reqwest::RequestBuilder {
    let url = format!(
        "{}/v1internal:retrieveUserQuota",
        gemini_base_url.trim_end_matches('/')
    );
    http.post(url)
        .bearer_auth(access_token)
        .header("accept", "application/json")
        .json(&serde_json::json!({ "project": project_id }))
}

/// Polls a Gemini account's daily quota.
pub async fn poll_gemini(
    http: &reqwest::Client,
    gemini_base_url: &str,
    access_token: &str,
    project_id: &str,
    timeout: Duration,
) -> PollResult {
    let req = gemini_quota_request(http, gemini_base_url, access_token, project_id);
    answer(req, timeout, parse_gemini_quota).await
}

/// Sends a usage request and reads its answer with `parse`.
async fn answer(
    req: reqwest::RequestBuilder,
    timeout: Duration,
    parse: fn(&Value, i64) -> Option<Observation>,
) -> PollResult {
    let resp = req.timeout(timeout).send().await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return PollResult::Failed(format!("transport: {}", crate::oauth::describe(&e))),
    };
    let status = resp.status().as_u16();
    if status == 401 || status == 403 {
        return PollResult::Unauthorized(status);
    }
    if !resp.status().is_success() {
        return PollResult::Failed(format!("HTTP {status}"));
    }
    let observed = codexmesh_model::util::now_ms();
    match resp.json::<Value>().await {
        Ok(v) => match parse(&v, observed) {
            Some(o) => PollResult::Observed(o),
            None => PollResult::Failed("answer carried no usage windows".to_owned()),
        },
        Err(_) => PollResult::Failed("answer is not JSON".to_owned()),
    }
}

/// What [`poll_account`] did.
#[derive(Debug)]
pub enum Polled {
    /// Evidence was merged; `bumped`: it mattered enough to move the store revision.
    Recorded { bumped: bool },
    /// The access token was refused (401/403): a refresh is due, not a quota change.
    Unauthorized(u16),
    /// Anything else, for the log (never shown to API callers: it may name the upstream).
    Failed(String),
}

/// Polls one stored account's usage now (its access token opened with `key`) at its
/// provider's endpoint and records the evidence; returns the account as stored with what
/// happened. An account that is not [`pollable`] is not asked (`Failed`).
pub async fn poll_account(
    store: &Store,
    key: &(impl Keys + ?Sized),
    http: &reqwest::Client,
    upstreams: &Upstreams,
    account_id: &str,
    timeout: Duration,
) -> Result<(Account, Polled), StoreError> {
    let s = store.account_secrets(account_id, key).await?;
    if !pollable(&s.account) {
        return Ok((
            s.account,
            Polled::Failed("an API-key account has no usage endpoint".to_owned()),
        ));
    }
    // Through the account's egress proxy when it names one (never directly instead).
    let http = match upstreams
        .egress
        .client(http, s.account.egress_proxy.as_deref())
    {
        Ok(c) => c,
        Err(e) => return Ok((s.account, Polled::Failed(e))),
    };
    let http = &http;
    let result = match s.account.provider {
        Provider::Codex => {
            poll_once(
                http,
                &upstreams.codex,
                &s.access_token,
                &s.account.chatgpt_account_id,
                timeout,
            )
            .await
        }
        Provider::Claude => poll_claude(http, &upstreams.claude, &s.access_token, timeout).await,
        Provider::Gemini => match s.account.project_id.as_deref().filter(|p| !p.is_empty()) {
            Some(project) => {
                poll_gemini(http, &upstreams.gemini, &s.access_token, project, timeout).await
            }
            None => PollResult::Failed("the Gemini account has no project id".to_owned()),
        },
    };
    let polled = match result {
        PollResult::Observed(obs) => Polled::Recorded {
            bumped: record(store, account_id, &obs).await?.is_some(),
        },
        PollResult::Unauthorized(status) => Polled::Unauthorized(status),
        PollResult::Failed(why) => Polled::Failed(why),
    };
    Ok((s.account, polled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(req: &reqwest::Request, name: &str) -> String {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn claude_usage_request_carries_the_oauth_beta() -> Result<(), reqwest::Error> {
        let http = reqwest::Client::new();
        let req = claude_usage_request(&http, "http://sim/", "sk-ant-oat01-x").build()?;
        assert_eq!(req.method(), reqwest::Method::GET);
        assert_eq!(req.url().as_str(), "http://sim/api/oauth/usage");
        assert_eq!(header(&req, "authorization"), "Bearer sk-ant-oat01-x");
        assert_eq!(header(&req, "anthropic-beta"), "oauth-2025-04-20");
        assert_eq!(header(&req, "anthropic-version"), "2023-06-01");
        Ok(())
    }

    #[test]
    fn gemini_quota_request_names_the_project() -> Result<(), Box<dyn std::error::Error>> {
        let http = reqwest::Client::new();
        let req = gemini_quota_request(&http, "http://sim", "ya29.x", "proj-7").build()?;
        assert_eq!(req.method(), reqwest::Method::POST);
        assert_eq!(
            req.url().as_str(),
            "http://sim/v1internal:retrieveUserQuota"
        );
        assert_eq!(header(&req, "authorization"), "Bearer ya29.x");
        let body = req.body().and_then(|b| b.as_bytes()).unwrap_or_default();
        let v: Value = serde_json::from_slice(body)?;
        assert_eq!(v, serde_json::json!({"project": "proj-7"}));
        Ok(())
    }
}
