//! Quota evidence, the I/O half: active polls of `{upstream_base_url}/wham/usage`
//! ([`poll_once`]; [`poll_account`] polls one stored account and records what it learnt, for
//! the poller in `lifecycle`, which spreads them over `quota_poll_interval_secs`, and for an
//! operator's refresh-now in `ops::reports`) and the compare-and-set write of merged evidence
//! ([`record`]). What the evidence means and how it merges is `codexmesh_model::quota`.

use std::time::Duration;

pub use codexmesh_model::quota::*;
use codexmesh_store::crypto::Keys;
use codexmesh_store::{Account, QuotaWrite, Store, StoreError};
use serde_json::Value;

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
    let resp = http
        .get(url)
        .bearer_auth(access_token)
        .header("chatgpt-account-id", chatgpt_account_id)
        .header("accept", "application/json")
        .timeout(timeout)
        .send()
        .await;
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
        Ok(v) => match parse_usage(&v, observed) {
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

/// Polls one stored account's usage now (its access token opened with `key`) and records the
/// evidence; returns the account as stored with what happened.
pub async fn poll_account(
    store: &Store,
    key: &(impl Keys + ?Sized),
    http: &reqwest::Client,
    upstream_base_url: &str,
    account_id: &str,
    timeout: Duration,
) -> Result<(Account, Polled), StoreError> {
    let s = store.account_secrets(account_id, key).await?;
    let polled = match poll_once(
        http,
        upstream_base_url,
        &s.access_token,
        &s.account.chatgpt_account_id,
        timeout,
    )
    .await
    {
        PollResult::Observed(obs) => Polled::Recorded {
            bumped: record(store, account_id, &obs).await?.is_some(),
        },
        PollResult::Unauthorized(status) => Polled::Unauthorized(status),
        PollResult::Failed(why) => Polled::Failed(why),
    };
    Ok((s.account, polled))
}
