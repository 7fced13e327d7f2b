//! Token refresh: single-flight per account, rotation-safe, shared by `serve` (scheduler, 401
//! reports, quota-poll 401s) and the CLI (`account refresh`, `account export`).
//!
//! One refresh of one account goes:
//! 1. the in-process lock for the account (concurrent triggers in this process queue here);
//! 2. the store lease `refresh:<account id>` (another process, a CLI run or a second replica,
//!    holding it means that one refreshes; a waiting caller then sees its result);
//! 3. the generation check: re-read the account; if its `token_revision` moved past what the
//!    trigger saw, someone already refreshed this generation: nothing to do;
//! 4. one call to the token endpoint;
//! 5. on success, ONE transaction that stores the new sealed tokens, their expiry and
//!    `token_revision` and bumps the revision, before anything else happens (the rotated
//!    refresh token is never only in memory when the lease is given back); on a permanent
//!    refusal, `needs_reauth` with the reason (also one bumping transaction); on a transient
//!    one, backoff bookkeeping;
//! 6. the lease is released and the snapshot builder nudged.
//!
//! A consumed refresh token is never sent twice: the only way to send one is step 4, which runs
//! under the lease after step 3 proved the stored token is the current generation, and a
//! successful answer is persisted (retried while the store is unreachable) before the lease
//! goes.
//!
//! Every provider goes the same way; only step 4's endpoint and grant differ
//! ([`oauth::Grant`]: Codex `oauth_token_url`, Claude `claude_token_url`, Gemini
//! `google_token_url` with the Google client settings). Claude and Google refresh tokens are
//! treated as rotating and single-use like Codex's: a returned one replaces the stored one in
//! step 5's transaction, none returned keeps the old. An API-key account (Claude console key)
//! has nothing to refresh: the scheduler skips it, a refresh request ends
//! [`Done::NotRefreshable`] without a call, and a 401 for its current key means the key itself
//! was refused: `needs_reauth` (`api_key_rejected`) at once ([`Refresher::on_unauthorized`]).
//! A token endpoint's 429 backs off at least as long as its `Retry-After`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

#[cfg(feature = "test-faults")]
use crate::config::Fault;
use crate::config::Settings;
use crate::oauth::{self, TokenError};
use codexmesh_model::credentials as authjson;
use codexmesh_model::records::{CredentialKind, Provider};
use codexmesh_model::util::{self, now_ms};
use codexmesh_store::keyfile::KeySource;
use codexmesh_store::{Account, AccountState, Actor, RefreshedTokens, Store, StoreError};

/// When the expiry is unknown, refresh this long after the last refresh (the Codex CLI's rule).
pub const UNKNOWN_EXPIRY_REFRESH_MS: i64 = 8 * 86_400 * 1000;
/// Transient failures back off from this ...
pub const BACKOFF_BASE_MS: i64 = 5_000;
/// ... doubling up to this.
pub const BACKOFF_MAX_MS: i64 = 300_000;
/// How often a caller waiting for another holder's lease looks again.
const LEASE_POLL: Duration = Duration::from_millis(200);

/// What started a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The scheduler: only refreshes when the account is due.
    Schedule,
    /// A 401 on the data path (or on a quota poll) for the current token generation.
    Unauthorized,
    /// An operator (`codexmesh account refresh`).
    Manual,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Unauthorized => "unauthorized",
            Trigger::Manual => "manual",
        }
    }
}

/// One refresh request: the trigger, the `token_revision` the trigger saw, and whether to wait
/// for another holder of the lease (the CLI does; background triggers do not).
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub trigger: Trigger,
    pub seen_revision: i64,
    pub wait: bool,
}

/// How a refresh request ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// We called the token endpoint and stored the new tokens.
    Refreshed {
        expires_at_ms: Option<i64>,
        revision: i64,
    },
    /// Someone else refreshed this generation first (another trigger, process or replica).
    RefreshedElsewhere { expires_at_ms: Option<i64> },
    /// A scheduled refresh that is not due (any more).
    NotDue,
    /// Another process holds the lease and the request does not wait.
    Busy,
    /// An API-key account: there is no token to refresh (nothing was called).
    NotRefreshable,
}

/// The reason an API-key account leaves routing when the provider refuses its key.
pub const API_KEY_REJECTED: &str = "api_key_rejected";

/// What an operator does to bring an account that needs re-authentication back: a fresh login
/// in its provider's own file (or a new key), imported over it.
pub fn reauth_hint(a: &Account) -> &'static str {
    match (a.provider, a.credential_kind) {
        (_, CredentialKind::ApiKey) => "import a new API key for it",
        (Provider::Codex, _) => "import a fresh auth.json for it or run `codexmesh account login`",
        (Provider::Claude, _) => {
            "sign in again with Claude Code and import its fresh .credentials.json for it"
        }
        (Provider::Gemini, _) => {
            "sign in again with Gemini CLI and import its fresh oauth_creds.json for it"
        }
    }
}

/// Whether the refresher keeps `a`'s credential alive (OAuth accounts; not API keys).
pub fn refreshable(a: &Account) -> bool {
    a.credential_kind == CredentialKind::Oauth
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("account {label} needs re-authentication ({reason}): {hint}")]
    NeedsReauth {
        label: String,
        reason: String,
        /// What brings it back, in its provider's words ([`reauth_hint`]).
        hint: &'static str,
    },
    #[error("refreshing account {label} failed: {source}; next attempt in {}", util::human_span_ms(.retry_in_ms))]
    Failed {
        label: String,
        source: TokenError,
        retry_in_ms: i64,
    },
    #[error("another process held the refresh lease of account {label} for too long")]
    LeaseTimeout { label: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// When an account's token should be refreshed next (unix ms): a pending backoff retry, else
/// `refresh_lead` before expiry, but never earlier than half way through the token's observed
/// lifetime (so a short-lived token is not refreshed in a loop), else 8 days after the last
/// refresh when the expiry is unknown.
pub fn due_at(a: &Account, lead_ms: i64) -> i64 {
    if let Some(t) = a.next_refresh_at_ms {
        return t;
    }
    match a.access_token_expires_at_ms {
        Some(exp) => {
            let lifetime = exp.saturating_sub(a.tokens_updated_at_ms).max(0);
            exp.saturating_sub(lead_ms.min(lifetime / 2))
        }
        None => a
            .last_refresh_at_ms
            .unwrap_or(a.tokens_updated_at_ms)
            .saturating_add(UNKNOWN_EXPIRY_REFRESH_MS),
    }
}

/// Exponential backoff after the `failures`-th consecutive transient failure (1-based):
/// 5 s doubling to 5 min, with "equal jitter" (a random point in the upper half) so replicas
/// and accounts do not retry in lockstep. `unit` is a random number in [0, 1).
pub fn backoff_ms(failures: u32, unit: f64) -> i64 {
    let exp = failures.saturating_sub(1).min(16);
    let base = BACKOFF_BASE_MS
        .saturating_mul(1i64 << exp)
        .min(BACKOFF_MAX_MS);
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    base / 2 + ((base / 2) as f64 * unit) as i64
}

/// Settings of a [`Refresher`].
#[derive(Debug, Clone)]
pub struct RefresherConfig {
    /// Codex's token endpoint.
    pub token_url: String,
    pub claude_token_url: String,
    pub google_token_url: String,
    /// The Google OAuth client (id, secret) Gemini accounts refresh with.
    pub google_client: oauth::Grant,
    pub lead_ms: i64,
    pub lease_ms: i64,
    /// The clients of accounts with their own egress proxy.
    pub egress: oauth::Egress,
    /// Test-only (see [`Fault`]).
    #[cfg(feature = "test-faults")]
    pub fault: Option<Fault>,
}

impl RefresherConfig {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            token_url: s.oauth_token_url.clone(),
            claude_token_url: s.claude_token_url.clone(),
            google_token_url: s.google_token_url.clone(),
            google_client: oauth::Grant::Google {
                client_id: s.google_oauth_client_id.clone(),
                client_secret: s.google_oauth_client_secret.clone(),
            },
            lead_ms: i64::try_from(s.refresh_lead.as_millis()).unwrap_or(i64::MAX),
            lease_ms: i64::try_from(s.refresh_lease.as_millis()).unwrap_or(60_000),
            // A bad CA file stops `serve` earlier (its direct client); here it would only mean
            // fewer roots, which fails closed.
            egress: oauth::Egress::from_settings(s).unwrap_or_default(),
            #[cfg(feature = "test-faults")]
            fault: s.fault,
        }
    }

    /// The token endpoint and grant of `a`'s provider; None for an API-key account.
    pub fn grant_for(&self, a: &Account) -> Option<(oauth::Grant, &str)> {
        if !refreshable(a) {
            return None;
        }
        Some(match a.provider {
            Provider::Codex => (oauth::Grant::Codex, self.token_url.as_str()),
            Provider::Claude => (oauth::Grant::Claude, self.claude_token_url.as_str()),
            Provider::Gemini => (self.google_client.clone(), self.google_token_url.as_str()),
        })
    }
}

struct Inner {
    store: Store,
    key: KeySource,
    http: reqwest::Client,
    cfg: RefresherConfig,
    /// Identifies this process in leases.
    holder: String,
    actor: Actor,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// (account id, token_revision) generations a 401 already forced a refresh for.
    forced: Mutex<HashSet<(String, i64)>>,
    /// Told after every store write that changes the snapshot.
    changed: Option<Arc<Notify>>,
    tasks: TaskTracker,
    /// `serve`'s metrics (refresh outcomes), set once after start; the CLI has none.
    metrics: std::sync::OnceLock<crate::metrics::Metrics>,
}

/// The refresher. Cheap to clone.
#[derive(Clone)]
pub struct Refresher {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Refresher {
    pub fn new(
        store: Store,
        key: impl Into<KeySource>,
        http: reqwest::Client,
        cfg: RefresherConfig,
        holder: String,
        actor: Actor,
        changed: Option<Arc<Notify>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                key: key.into(),
                http,
                cfg,
                holder,
                actor,
                locks: Mutex::new(HashMap::new()),
                forced: Mutex::new(HashSet::new()),
                changed,
                tasks: TaskTracker::new(),
                metrics: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn lead_ms(&self) -> i64 {
        self.inner.cfg.lead_ms
    }

    pub fn lease_ms(&self) -> i64 {
        self.inner.cfg.lease_ms
    }

    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// Records refresh outcomes (and, through [`Refresher::metrics`], the poller's) into
    /// `metrics` from now on; only the first call counts.
    pub fn record_into(&self, metrics: crate::metrics::Metrics) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// The metrics this refresher records into, when `serve` set them.
    pub fn metrics(&self) -> Option<&crate::metrics::Metrics> {
        self.inner.metrics.get()
    }

    fn count(&self, outcome: crate::metrics::RefreshOutcome) {
        if let Some(m) = self.metrics() {
            m.refresh(outcome);
        }
    }

    /// Background refreshes started by [`Refresher::force`]: wait for them at shutdown.
    pub async fn wait_background(&self, within: Duration) {
        self.inner.tasks.close();
        let _ = tokio::time::timeout(within, self.inner.tasks.wait()).await;
    }

    fn nudge(&self) {
        if let Some(n) = &self.inner.changed {
            n.notify_one();
        }
    }

    fn account_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.inner.locks)
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Refreshes one account (see the module documentation).
    pub async fn refresh(&self, account_id: &str, req: Request) -> Result<Done, RefreshError> {
        let per_account = self.account_lock(account_id);
        let _serial = per_account.lock().await;
        let store = &self.inner.store;
        let lease = format!("refresh:{account_id}");
        let ttl = self.inner.cfg.lease_ms;
        let started = std::time::Instant::now();
        let patience =
            Duration::from_millis(u64::try_from(ttl).unwrap_or(60_000)) + Duration::from_secs(10);
        loop {
            if store
                .try_acquire_lease(&lease, &self.inner.holder, ttl)
                .await?
            {
                break;
            }
            if !req.wait {
                return Ok(Done::Busy);
            }
            tokio::time::sleep(LEASE_POLL).await;
            let a = store.account(account_id).await?;
            if a.token_revision > req.seen_revision {
                return Ok(Done::RefreshedElsewhere {
                    expires_at_ms: a.access_token_expires_at_ms,
                });
            }
            if started.elapsed() > patience {
                return Err(RefreshError::LeaseTimeout { label: a.label });
            }
        }
        let result = self.refresh_leased(account_id, req).await;
        if let Err(e) = store.release_lease(&lease, &self.inner.holder).await {
            // It expires on its own; the next holder just waits a little longer.
            tracing::warn!(account_id, error = %e, "cannot release the refresh lease");
        }
        result
    }

    async fn refresh_leased(&self, account_id: &str, req: Request) -> Result<Done, RefreshError> {
        let store = &self.inner.store;
        let secrets = store.account_secrets(account_id, &self.inner.key).await?;
        let acc = &secrets.account;
        if acc.token_revision > req.seen_revision {
            return Ok(Done::RefreshedElsewhere {
                expires_at_ms: acc.access_token_expires_at_ms,
            });
        }
        if acc.state == AccountState::NeedsReauth {
            return Err(RefreshError::NeedsReauth {
                label: acc.label.clone(),
                reason: acc
                    .state_reason
                    .clone()
                    .unwrap_or_else(|| "unknown".to_owned()),
                hint: reauth_hint(acc),
            });
        }
        let Some((grant, token_url)) = self.inner.cfg.grant_for(acc) else {
            return Ok(Done::NotRefreshable);
        };
        let now = now_ms();
        if req.trigger == Trigger::Schedule
            && (acc.state == AccountState::Paused || due_at(acc, self.inner.cfg.lead_ms) > now)
        {
            return Ok(Done::NotDue);
        }
        // The call must finish well within the lease.
        let timeout = Duration::from_millis(
            u64::try_from((self.inner.cfg.lease_ms * 2 / 3).clamp(1_000, 30_000)).unwrap_or(30_000),
        );
        tracing::info!(account = %acc.label, provider = %acc.provider,
            trigger = req.trigger.as_str(), "refreshing access token");
        // Through the account's egress proxy when it names one (never directly instead).
        let answer = match self
            .inner
            .cfg
            .egress
            .client(&self.inner.http, acc.egress_proxy.as_deref())
        {
            Ok(http) => {
                oauth::refresh_grant_for(&http, &grant, token_url, &secrets.refresh_token, timeout)
                    .await
            }
            Err(e) => Err(oauth::TokenError::Transient(e)),
        };
        match answer {
            Ok(t) => {
                let claims = t.id_token.as_deref().map(authjson::id_claims);
                let expires_at_ms = authjson::jwt_expiry_ms(&t.access_token).or_else(|| {
                    t.expires_in
                        .filter(|s| *s > 0)
                        .map(|s| now.saturating_add(s.saturating_mul(1000)))
                });
                let tokens = RefreshedTokens {
                    access_token: t.access_token,
                    // No new refresh token: the old one stays valid (not rotated).
                    refresh_token: t
                        .refresh_token
                        .unwrap_or_else(|| secrets.refresh_token.clone()),
                    id_token: t.id_token.unwrap_or_else(|| secrets.id_token.clone()),
                    access_token_expires_at_ms: expires_at_ms,
                    plan: claims.as_ref().and_then(|c| c.plan.clone()),
                    email: claims.and_then(|c| c.email),
                };
                let revision = self
                    .persist(account_id, &acc.label, &tokens)
                    .await
                    .inspect_err(|_| self.count(crate::metrics::RefreshOutcome::Failed))?;
                self.count(crate::metrics::RefreshOutcome::Ok);
                #[cfg(feature = "test-faults")]
                if self.inner.cfg.fault == Some(Fault::KillAfterRefreshPersist) {
                    tracing::warn!("test fault kill_after_refresh_persist: SIGKILL now");
                    // SAFETY: raise(3) on our own process; SIGKILL cannot be caught.
                    unsafe {
                        libc::raise(libc::SIGKILL);
                    }
                }
                self.nudge();
                tracing::info!(
                    account = %acc.label,
                    expires_at = %expires_at_ms.map_or_else(|| "unknown".to_owned(), util::fmt_utc_ms),
                    revision,
                    "access token refreshed"
                );
                Ok(Done::Refreshed {
                    expires_at_ms,
                    revision,
                })
            }
            Err(TokenError::Permanent { code }) => {
                self.count(crate::metrics::RefreshOutcome::NeedsReauth);
                let detail = format!("token endpoint refused the refresh token: {code}");
                store
                    .mark_needs_reauth(&self.inner.actor, account_id, &code, &detail)
                    .await?;
                self.nudge();
                tracing::warn!(
                    account = %acc.label,
                    reason = %code,
                    "refresh token refused: account needs re-authentication and leaves routing"
                );
                Err(RefreshError::NeedsReauth {
                    label: acc.label.clone(),
                    reason: code,
                    hint: reauth_hint(acc),
                })
            }
            Err(e) => {
                self.count(crate::metrics::RefreshOutcome::Failed);
                let failures = acc.refresh_failures.saturating_add(1);
                // A 429's Retry-After is the earliest next attempt.
                let delay =
                    backoff_ms(failures, unit_random()).max(e.retry_after_ms().unwrap_or(0));
                store
                    .record_refresh_failure(account_id, failures, now + delay, &e.to_string())
                    .await?;
                let still_valid = acc.access_token_expires_at_ms.is_none_or(|t| t > now);
                if matches!(e, TokenError::Misconfigured(_)) {
                    tracing::error!(account = %acc.label, error = %e, failures, retry_in_ms = delay,
                        "refresh failed: the token endpoint refused our request");
                } else {
                    tracing::warn!(account = %acc.label, error = %e, failures, retry_in_ms = delay,
                        still_valid, "refresh failed, will retry; the account keeps serving while its token is valid");
                }
                Err(RefreshError::Failed {
                    label: acc.label.clone(),
                    source: e,
                    retry_in_ms: delay,
                })
            }
        }
    }

    /// Stores a successful refresh. The refresh token we sent is consumed by now, so the new
    /// one must not be lost to a passing store hiccup: retried for a while before giving up.
    async fn persist(
        &self,
        account_id: &str,
        label: &str,
        tokens: &RefreshedTokens,
    ) -> Result<i64, RefreshError> {
        let mut attempt = 0u32;
        loop {
            match self
                .inner
                .store
                .store_refreshed_tokens(&self.inner.actor, account_id, tokens, &self.inner.key)
                .await
            {
                Ok(r) => return Ok(r),
                Err(e @ (StoreError::NotFound { .. } | StoreError::Crypto(_))) => {
                    return Err(e.into())
                }
                Err(e) if attempt < 10 => {
                    attempt += 1;
                    tracing::error!(account = %label, error = %e, attempt,
                        "cannot store the refreshed tokens yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                Err(e) => {
                    tracing::error!(account = %label, error = %e,
                        "giving up storing the refreshed tokens: the account needs a new login");
                    return Err(e.into());
                }
            }
        }
    }

    /// A 401 for `account_id` reported by the data path: refresh at once, once per token
    /// generation. The outcome names the generation by the token expiry the filter saw, or
    /// (when that is 0) by the snapshot version it routed with (a snapshot older than the
    /// token's `token_revision` carried an older token). When both are given, both must agree.
    pub async fn on_unauthorized(
        &self,
        account_id: &str,
        token_expires_at_unix: i64,
        snapshot_version: i64,
    ) -> Result<bool, StoreError> {
        let a = match self.inner.store.account(account_id).await {
            Ok(a) => a,
            Err(StoreError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        // The snapshot the attempt routed with already carried the current token ...
        let routed_with_current = a.token_revision <= snapshot_version;
        let current = if token_expires_at_unix != 0 {
            // ... and the token it used is the current one. Two refreshes within one second
            // give the same expiry: the snapshot version tells them apart when it is known.
            a.access_token_expires_at_ms.map(|ms| ms.div_euclid(1000))
                == Some(token_expires_at_unix)
                && (snapshot_version == 0 || routed_with_current)
        } else {
            routed_with_current
        };
        if !refreshable(&a) {
            // An API key has no generation but the stored one: only a 401 routed with the
            // snapshot carrying it counts (never one for a key already replaced).
            return self.reject_api_key(&a, routed_with_current).await;
        }
        if !current {
            tracing::debug!(account = %a.label, "401 concerned a token that was already replaced");
            return Ok(false);
        }
        Ok(self.force(&a))
    }

    /// A 401 for an API-key account: the provider refused the key, so the account needs a new
    /// one (`needs_reauth`, [`API_KEY_REJECTED`]). Returns whether it marked it.
    async fn reject_api_key(&self, a: &Account, current: bool) -> Result<bool, StoreError> {
        if !current || matches!(a.state, AccountState::NeedsReauth) {
            return Ok(false);
        }
        self.inner
            .store
            .mark_needs_reauth(
                &self.inner.actor,
                &a.id,
                API_KEY_REJECTED,
                "the provider refused the account's API key (HTTP 401)",
            )
            .await?;
        self.count(crate::metrics::RefreshOutcome::NeedsReauth);
        self.nudge();
        tracing::warn!(account = %a.label, provider = %a.provider,
            "API key refused: account needs a new key and leaves routing");
        Ok(true)
    }

    /// Starts one background refresh for `a`'s current token generation, unless one was already
    /// forced for it. Returns whether it started one.
    pub fn force(&self, a: &Account) -> bool {
        if !refreshable(a) || matches!(a.state, AccountState::NeedsReauth | AccountState::Paused) {
            return false;
        }
        {
            let mut forced = lock(&self.inner.forced);
            // Older generations of this account can never match again.
            forced.retain(|(id, rev)| id != &a.id || *rev >= a.token_revision);
            if !forced.insert((a.id.clone(), a.token_revision)) {
                return false;
            }
        }
        tracing::info!(account = %a.label, "401 for the current token: refreshing now");
        let this = self.clone();
        let id = a.id.clone();
        let req = Request {
            trigger: Trigger::Unauthorized,
            seen_revision: a.token_revision,
            wait: false,
        };
        self.inner.tasks.spawn(async move {
            match this.refresh(&id, req).await {
                Ok(_) | Err(RefreshError::NeedsReauth { .. } | RefreshError::Failed { .. }) => {}
                Err(e) => tracing::warn!(account_id = %id, error = %e, "forced refresh failed"),
            }
        });
        true
    }
}

/// A random number in [0, 1) from the OS source (0.5 if that fails).
pub fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    match util::random_bytes(&mut b) {
        Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

/// The lease holder name of this process: host, pid and a random suffix.
pub fn holder_id(kind: &str) -> String {
    let suffix = util::random_alnum(8).unwrap_or_else(|_| "x".to_owned());
    format!("{kind}:{}:{suffix}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use codexmesh_store::crypto::MasterKey;

    fn account(exp: Option<i64>, updated: i64) -> Account {
        let mut a = codexmesh_model::records::fixtures::account("acc_1");
        a.access_token_expires_at_ms = exp;
        a.tokens_updated_at_ms = updated;
        a
    }

    #[test]
    fn due_times() {
        let hour = 3_600_000;
        // A 1-hour token with the default 15-minute lead: due at 45 minutes.
        let a = account(Some(hour), 0);
        assert_eq!(due_at(&a, 900_000), hour - 900_000);
        // A 30 s token with a 20 s lead: never earlier than half its life.
        let a = account(Some(30_000), 0);
        assert_eq!(due_at(&a, 20_000), 15_000);
        // Imported already expired: due at once (at its expiry, in the past).
        let a = account(Some(1_000), 5_000);
        assert_eq!(due_at(&a, 900_000), 1_000);
        // Unknown expiry: 8 days after the last refresh (or import).
        let mut a = account(None, 7);
        assert_eq!(due_at(&a, 900_000), 7 + UNKNOWN_EXPIRY_REFRESH_MS);
        a.last_refresh_at_ms = Some(100);
        assert_eq!(due_at(&a, 900_000), 100 + UNKNOWN_EXPIRY_REFRESH_MS);
        // A pending backoff wins.
        a.next_refresh_at_ms = Some(42);
        assert_eq!(due_at(&a, 900_000), 42);
    }

    /// A store with one imported account, and a refresher whose token endpoint is a closed
    /// loopback port: any call to it fails (transiently), so a test sees when one was made.
    async fn fixture() -> Result<(Refresher, Account), Box<dyn std::error::Error>> {
        let store = Store::open("sqlite::memory:").await?;
        let key = MasterKey::generate()?;
        let actor = Actor::new("test");
        store.create_pool(&actor, "p").await?;
        let ns = "https://api.openai.com/auth";
        let id_token = authjson::unsigned_jwt(&serde_json::json!({
            "email": "a@b.c", ns: {"chatgpt_account_id": "acct-1", "chatgpt_plan_type": "plus"}
        }));
        let access = authjson::unsigned_jwt(&serde_json::json!({"exp": 2_000_000_000}));
        let creds = authjson::parse(
            serde_json::json!({"tokens": {"id_token": id_token, "access_token": access,
                                          "refresh_token": "rt_1"}})
            .to_string()
            .as_bytes(),
        )?;
        let imported = store
            .import_account(&actor, "p", None, &creds, &key)
            .await?;
        let r = Refresher::new(
            store,
            key,
            oauth::http_client()?,
            RefresherConfig {
                token_url: "http://127.0.0.1:9/oauth/token".into(),
                claude_token_url: "http://127.0.0.1:9/v1/oauth/token".into(),
                google_token_url: "http://127.0.0.1:9/google/oauth2/token".into(),
                google_client: oauth::Grant::Google {
                    client_id: "cid".into(),
                    client_secret: "secret".into(),
                },
                lead_ms: 900_000,
                lease_ms: 60_000,
                egress: oauth::Egress::default(),
                #[cfg(feature = "test-faults")]
                fault: None,
            },
            holder_id("test"),
            actor,
            None,
        );
        Ok((r, imported.account))
    }

    #[tokio::test]
    async fn generation_check_and_guards_come_before_any_call(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (r, a) = fixture().await?;
        let req = |trigger, seen_revision, wait| Request {
            trigger,
            seen_revision,
            wait,
        };
        // Someone refreshed after the trigger looked: nothing to do, no call.
        let done = r
            .refresh(&a.id, req(Trigger::Manual, a.token_revision - 1, false))
            .await?;
        assert_eq!(
            done,
            Done::RefreshedElsewhere {
                expires_at_ms: Some(2_000_000_000_000)
            }
        );
        // The scheduler only acts when due (this token has years left).
        let done = r
            .refresh(&a.id, req(Trigger::Schedule, a.token_revision, false))
            .await?;
        assert_eq!(done, Done::NotDue);
        // Another process holds the lease: a background trigger does not wait ...
        let lease = format!("refresh:{}", a.id);
        assert!(r.store().try_acquire_lease(&lease, "other", 60_000).await?);
        let done = r
            .refresh(&a.id, req(Trigger::Unauthorized, a.token_revision, false))
            .await?;
        assert_eq!(done, Done::Busy);
        r.store().release_lease(&lease, "other").await?;
        // A forced refresh does call (and fails transiently here: backoff recorded).
        let err = r
            .refresh(&a.id, req(Trigger::Unauthorized, a.token_revision, false))
            .await;
        assert!(matches!(err, Err(RefreshError::Failed { .. })), "{err:?}");
        let after = r.store().account(&a.id).await?;
        assert_eq!(after.refresh_failures, 1);
        assert!(after.next_refresh_at_ms.is_some());
        assert!(r.store().lease(&lease).await?.is_none(), "lease released");
        // needs_reauth: refused before the token endpoint.
        r.store()
            .mark_needs_reauth(&Actor::new("t"), &a.id, "refresh_token_reused", "x")
            .await?;
        let err = r
            .refresh(
                &a.id,
                req(Trigger::Manual, after.token_revision + 100, true),
            )
            .await;
        assert!(
            matches!(&err, Err(RefreshError::NeedsReauth { reason, .. }) if reason == "refresh_token_reused"),
            "{err:?}"
        );
        assert_eq!(r.store().account(&a.id).await?.refresh_failures, 0);
        Ok(())
    }

    #[tokio::test]
    async fn one_forced_refresh_per_token_generation() -> Result<(), Box<dyn std::error::Error>> {
        let (r, a) = fixture().await?;
        let exp = 2_000_000_000;
        // Another generation's expiry, or a snapshot older than the token: not this token.
        assert!(!r.on_unauthorized(&a.id, exp - 1, 0).await?);
        assert!(!r.on_unauthorized(&a.id, 0, a.token_revision - 1).await?);
        assert!(!r.on_unauthorized(&a.id, exp, a.token_revision - 1).await?);
        assert!(!r.on_unauthorized("acc_unknown", exp, 0).await?);
        // This generation: once.
        assert!(r.on_unauthorized(&a.id, exp, a.token_revision).await?);
        assert!(!r.on_unauthorized(&a.id, exp, 0).await?);
        assert!(!r.on_unauthorized(&a.id, 0, a.token_revision + 5).await?);
        r.wait_background(Duration::from_secs(20)).await;
        // A new generation (a re-import) may force again.
        let mut next = r.store().account(&a.id).await?;
        next.token_revision += 1;
        assert!(r.force(&next));
        assert!(!r.force(&next));
        next.state = AccountState::Paused;
        next.token_revision += 1;
        assert!(!r.force(&next), "paused accounts are left alone");
        Ok(())
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        assert_eq!(backoff_ms(1, 0.0), 2_500);
        assert_eq!(backoff_ms(1, 1.0), 5_000);
        assert_eq!(backoff_ms(2, 1.0), 10_000);
        assert_eq!(backoff_ms(3, 0.5), 15_000);
        assert_eq!(backoff_ms(7, 1.0), 300_000);
        assert_eq!(backoff_ms(40, 1.0), 300_000);
        assert_eq!(backoff_ms(0, 1.0), 5_000);
        assert_eq!(backoff_ms(2, f64::NAN), 7_500);
        for _ in 0..100 {
            let r = unit_random();
            assert!((0.0..1.0).contains(&r));
            let b = backoff_ms(3, r);
            assert!((10_000..=20_000).contains(&b));
        }
    }

    /// A token endpoint on loopback that answers from a script (status, extra header, body)
    /// and records each request's content type and body.
    struct TokenServer {
        url: String,
        seen: Arc<Mutex<Vec<(String, String)>>>,
    }

    /// One scripted answer: status, an extra header, body.
    type Answer = (u16, Option<(&'static str, &'static str)>, String);

    async fn token_server(script: Vec<Answer>) -> Result<TokenServer, Box<dyn std::error::Error>> {
        use axum::response::IntoResponse;
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let (seen2, script2) = (seen.clone(), script.clone());
        let app =
            axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: String| {
                let (seen, script) = (seen2.clone(), script2.clone());
                async move {
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    lock(&seen).push((ct, body));
                    let (status, header, body) =
                        lock(&script)
                            .pop_front()
                            .unwrap_or((500, None, "{}".to_owned()));
                    let mut resp = (
                        axum::http::StatusCode::from_u16(status)
                            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                        [("content-type", "application/json")],
                        body,
                    )
                        .into_response();
                    if let Some((k, v)) = header {
                        resp.headers_mut()
                            .insert(k, axum::http::HeaderValue::from_static(v));
                    }
                    resp
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(TokenServer { url, seen })
    }

    /// A refresher whose three token endpoints are `server`, and an account of `provider`
    /// (imported, then given its provider columns by hand) with refresh token `rt_1`.
    async fn provider_fixture(
        server: &TokenServer,
        provider: Provider,
        kind: CredentialKind,
    ) -> Result<(Refresher, Account, KeySource), Box<dyn std::error::Error>> {
        let (r, a) = fixture().await?;
        sqlx::query(
            "UPDATE accounts SET provider = $1, credential_kind = $2, project_id = $3 WHERE id = $4",
        )
        .bind(provider.as_str())
        .bind(kind.as_str())
        .bind((provider == Provider::Gemini).then_some("proj-1"))
        .bind(a.id.clone())
        .execute(r.store().sql_pool())
        .await?;
        let key = r.inner.key.clone();
        let mut cfg = r.inner.cfg.clone();
        cfg.token_url = format!("{}/oauth/token", server.url);
        cfg.claude_token_url = format!("{}/v1/oauth/token", server.url);
        cfg.google_token_url = format!("{}/google/oauth2/token", server.url);
        let r = Refresher::new(
            r.store().clone(),
            key.clone(),
            oauth::http_client()?,
            cfg,
            holder_id("test"),
            Actor::new("test"),
            None,
        );
        let a = r.store().account(&a.id).await?;
        Ok((r, a, key))
    }

    fn manual(a: &Account) -> Request {
        Request {
            trigger: Trigger::Manual,
            seen_revision: a.token_revision,
            wait: true,
        }
    }

    #[tokio::test]
    async fn claude_refresh_rotates_and_keeps_an_unrotated_token(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let server =
            token_server(vec![
            (
                200,
                None,
                r#"{"access_token":"sk-ant-oat01-new","refresh_token":"rt_2","expires_in":28800}"#
                    .into(),
            ),
            (200, None, r#"{"access_token":"sk-ant-oat01-newer","expires_in":28800}"#.into()),
        ])
            .await?;
        let (r, a, key) =
            provider_fixture(&server, Provider::Claude, CredentialKind::Oauth).await?;
        let before = now_ms();
        let done = r.refresh(&a.id, manual(&a)).await?;
        let Done::Refreshed { expires_at_ms, .. } = done else {
            return Err(format!("{done:?}").into());
        };
        let exp = expires_at_ms.unwrap_or(0);
        assert!((before + 28_800_000..=now_ms() + 28_800_000).contains(&exp));
        let s = r.store().account_secrets(&a.id, &key).await?;
        assert_eq!(
            (s.access_token.as_str(), s.refresh_token.as_str()),
            ("sk-ant-oat01-new", "rt_2")
        );
        // The next refresh sends the rotated token; an answer without one keeps it.
        let a = s.account;
        r.refresh(&a.id, manual(&a)).await?;
        let s = r.store().account_secrets(&a.id, &key).await?;
        assert_eq!(
            (s.access_token.as_str(), s.refresh_token.as_str()),
            ("sk-ant-oat01-newer", "rt_2")
        );
        let seen = lock(&server.seen).clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0, "application/json");
        let first: serde_json::Value = serde_json::from_str(&seen[0].1)?;
        assert_eq!(first["refresh_token"], "rt_1");
        assert_eq!(first["client_id"], oauth::CLAUDE_CLIENT_ID);
        assert_eq!(first["scope"], oauth::CLAUDE_SCOPES);
        let second: serde_json::Value = serde_json::from_str(&seen[1].1)?;
        assert_eq!(second["refresh_token"], "rt_2");
        Ok(())
    }

    #[tokio::test]
    async fn google_refresh_sends_the_form_and_keeps_the_refresh_token(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let server = token_server(vec![(
            200,
            None,
            r#"{"access_token":"ya29.new","expires_in":3599,"token_type":"Bearer"}"#.into(),
        )])
        .await?;
        let (r, a, key) =
            provider_fixture(&server, Provider::Gemini, CredentialKind::Oauth).await?;
        assert!(matches!(
            r.refresh(&a.id, manual(&a)).await?,
            Done::Refreshed { .. }
        ));
        let s = r.store().account_secrets(&a.id, &key).await?;
        assert_eq!(
            (s.access_token.as_str(), s.refresh_token.as_str()),
            ("ya29.new", "rt_1")
        );
        let seen = lock(&server.seen).clone();
        assert_eq!(seen[0].0, "application/x-www-form-urlencoded");
        assert_eq!(
            seen[0].1,
            "client_id=cid&client_secret=secret&grant_type=refresh_token&refresh_token=rt_1"
        );
        Ok(())
    }

    #[tokio::test]
    async fn invalid_grant_needs_reauth_and_429_honours_retry_after(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let server = token_server(vec![
            (429, Some(("retry-after", "120")), r#"{"error":"rate_limited"}"#.into()),
            (
                400,
                None,
                r#"{"error":"invalid_grant","error_description":"Refresh token has already been used"}"#
                    .into(),
            ),
        ])
        .await?;
        let (r, a, _) = provider_fixture(&server, Provider::Claude, CredentialKind::Oauth).await?;
        let before = now_ms();
        let err = r.refresh(&a.id, manual(&a)).await;
        assert!(
            matches!(&err, Err(RefreshError::Failed { retry_in_ms, .. }) if *retry_in_ms >= 120_000),
            "{err:?}"
        );
        let after = r.store().account(&a.id).await?;
        assert!(after.next_refresh_at_ms.unwrap_or(0) >= before + 120_000);
        assert_eq!(
            after.state,
            AccountState::Active,
            "a 429 keeps the account serving"
        );
        let err = r.refresh(&a.id, manual(&after)).await;
        assert!(
            matches!(&err, Err(RefreshError::NeedsReauth { reason, .. }) if reason == "invalid_grant"),
            "{err:?}"
        );
        let after = r.store().account(&a.id).await?;
        assert_eq!(after.state, AccountState::NeedsReauth);
        assert_eq!(after.state_reason.as_deref(), Some("invalid_grant"));
        Ok(())
    }

    #[tokio::test]
    async fn api_key_accounts_are_never_refreshed_and_a_401_rejects_the_key(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let server = token_server(Vec::new()).await?;
        let (r, a, _) = provider_fixture(&server, Provider::Claude, CredentialKind::ApiKey).await?;
        assert_eq!(r.refresh(&a.id, manual(&a)).await?, Done::NotRefreshable);
        let sched = Request {
            trigger: Trigger::Schedule,
            ..manual(&a)
        };
        assert_eq!(r.refresh(&a.id, sched).await?, Done::NotRefreshable);
        assert!(!r.force(&a), "a 401 never forces a refresh of a key");
        // A 401 routed with an older snapshot concerned another key: ignored.
        assert!(!r.on_unauthorized(&a.id, 0, a.token_revision - 1).await?);
        assert_eq!(r.store().account(&a.id).await?.state, AccountState::Active);
        // One for the current key: the key is bad.
        assert!(r.on_unauthorized(&a.id, 0, a.token_revision).await?);
        let after = r.store().account(&a.id).await?;
        assert_eq!(after.state, AccountState::NeedsReauth);
        assert_eq!(after.state_reason.as_deref(), Some(API_KEY_REJECTED));
        assert!(
            !r.on_unauthorized(&a.id, 0, after.token_revision).await?,
            "once"
        );
        assert!(lock(&server.seen).is_empty(), "no token endpoint call");
        Ok(())
    }
}
