//! The background workers of `serve` that keep every account alive and measured, and the
//! outcome sink that feeds them:
//!
//! - **refresh scheduler**: one task; refreshes each active OAuth account (any provider; API-key
//!   accounts have nothing to refresh) when it is due ([`crate::refresh::due_at`]), a few at a
//!   time, waking at the next due time (or every few seconds, to notice changes other processes
//!   made);
//! - **quota poller**: each pollable account's provider usage endpoint ([`crate::quota`]:
//!   Codex `/wham/usage`, Claude `/api/oauth/usage`, Gemini `retrieveUserQuota`) every
//!   `quota_poll_interval_secs`, spread over the interval with jitter, behind a store lease so
//!   replicas do not double up;
//! - **health aggregator**: recomputes the health scores from the outcome window after reports
//!   and on a timer (so old failures age out), publishes the ones that moved, and starts quota
//!   windows whose reset time passed over at 0 %;
//! - **watched folders** ([`crate::watch`]);
//! - **[`LifecycleSink`]**: stores reported outcomes and counters, merges their passive quota
//!   evidence (a 429 read by the account's provider's rules), and turns a 401 for the current
//!   token into one forced refresh (for an API-key account: `needs_reauth`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use codexmesh_proto::v1 as pb;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::push::OutcomeSink;
use crate::quota::{self, Observation, Polled};
use crate::refresh::{self, Done, Refresher, RefresherConfig, Request, Trigger};
use crate::watch::Watcher;
use codexmesh_model::records::Provider;
use codexmesh_model::util::now_ms;
use codexmesh_store::keyfile::KeySource;
use codexmesh_store::{AccountState, Actor, OutcomeRecord, Store, StoreError};

/// Scheduler and poller look at the store at least this often.
const RESCAN: Duration = Duration::from_secs(5);
/// Refreshes (and polls) in flight at once.
const CONCURRENCY: usize = 4;
/// After a refresh found another process holding the lease, look again after this.
const BUSY_RETRY_MS: i64 = 1_000;
/// Minimum spacing of health recomputations triggered by reports.
const HEALTH_DEBOUNCE: Duration = Duration::from_millis(250);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Logs a repeating failure once per outage.
struct Once(bool);

impl Once {
    fn fail(&mut self, what: &str, e: &dyn std::fmt::Display) {
        if !self.0 {
            tracing::warn!(error = %e, "{what}");
            self.0 = true;
        }
    }
    fn ok(&mut self) {
        self.0 = false;
    }
}

/// The running workers.
pub struct Lifecycle {
    refresher: Refresher,
    health_wake: Arc<Notify>,
    changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
    /// Told after reports that carried tokens or quota evidence (the usage push worker).
    usage_wake: Arc<Notify>,
}

impl Lifecycle {
    /// Starts every worker; they stop when `cancel` fires. `changed` is the snapshot builder's
    /// nudge, told after every write that changes the snapshot; `snapshots` wakes the refresh
    /// scheduler whenever the store changed (an import by the CLI, say).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        settings: &Settings,
        store: Store,
        key: KeySource,
        http: reqwest::Client,
        holder: String,
        changed: Arc<Notify>,
        snapshots: watch::Receiver<Arc<pb::Snapshot>>,
        cancel: CancellationToken,
    ) -> Self {
        let refresher = Refresher::new(
            store.clone(),
            key.clone(),
            http.clone(),
            RefresherConfig::from_settings(settings),
            holder.clone(),
            Actor::new("refresher".to_owned()),
            Some(changed.clone()),
        );
        let health_wake = Arc::new(Notify::new());
        let mut tasks = vec![tokio::spawn(run_scheduler(
            refresher.clone(),
            snapshots,
            cancel.clone(),
        ))];
        if !settings.quota_poll_interval.is_zero() {
            tasks.push(tokio::spawn(run_poller(
                Poller {
                    store: store.clone(),
                    key: key.clone(),
                    http,
                    upstreams: quota::Upstreams::from_settings(settings),
                    interval_ms: i64::try_from(settings.quota_poll_interval.as_millis())
                        .unwrap_or(60_000),
                    holder,
                    refresher: refresher.clone(),
                    changed: changed.clone(),
                },
                cancel.clone(),
            )));
        }
        tasks.push(tokio::spawn(run_health(
            store.clone(),
            i64::try_from(settings.health_window.as_millis()).unwrap_or(300_000),
            health_wake.clone(),
            changed.clone(),
            cancel.clone(),
        )));
        if !settings.outcome_retention.is_zero() {
            tasks.push(tokio::spawn(run_retention(
                store.clone(),
                i64::try_from(settings.outcome_retention.as_millis()).unwrap_or(i64::MAX),
                cancel.clone(),
            )));
        }
        if !settings.watch.is_empty() {
            let watcher = Watcher::new(store, key, settings.watch.clone())
                .with_gemini_base_url(settings.gemini_base_url.clone());
            tasks.push(tokio::spawn(watcher.run(
                settings.watch_interval,
                changed.clone(),
                cancel,
            )));
        }
        Self {
            refresher,
            health_wake,
            changed,
            tasks,
            usage_wake: Arc::new(Notify::new()),
        }
    }

    /// What reports with usage wake (`crate::usage_push`).
    pub fn usage_wake(&self) -> Arc<Notify> {
        self.usage_wake.clone()
    }

    pub fn refresher(&self) -> &Refresher {
        &self.refresher
    }

    /// The Report sink for the Mesh service.
    pub fn sink(&self) -> LifecycleSink {
        LifecycleSink {
            store: self.refresher.store().clone(),
            refresher: self.refresher.clone(),
            health_wake: self.health_wake.clone(),
            changed: self.changed.clone(),
            usage_wake: self.usage_wake.clone(),
        }
    }

    /// Waits (bounded) for the workers after cancellation.
    pub async fn join(self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                abort.abort();
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.refresher.wait_background(left).await;
    }
}

// ---- the outcome sink ----

/// Stores outcomes, merges their quota evidence, reacts to 401s, wakes the health aggregator.
#[derive(Clone)]
pub struct LifecycleSink {
    store: Store,
    refresher: Refresher,
    health_wake: Arc<Notify>,
    changed: Arc<Notify>,
    usage_wake: Arc<Notify>,
}

/// Folds observations of one account into one: per window the freshest.
pub fn combine(a: Observation, b: Observation) -> Observation {
    let fresher = |x: Option<codexmesh_store::WindowEvidence>,
                   y: Option<codexmesh_store::WindowEvidence>| {
        match (x, y) {
            (Some(x), Some(y)) => Some(if y.observed_at_ms >= x.observed_at_ms {
                y
            } else {
                x
            }),
            (x, y) => y.or(x),
        }
    };
    let newer_b = b.observed_at_ms >= a.observed_at_ms;
    Observation {
        primary: fresher(a.primary, b.primary),
        secondary: fresher(a.secondary, b.secondary),
        credits: match (a.credits, b.credits) {
            (Some(x), Some(y)) => Some(if y.observed_at_ms >= x.observed_at_ms {
                y
            } else {
                x
            }),
            (x, y) => y.or(x),
        },
        plan: if newer_b {
            b.plan.or(a.plan)
        } else {
            a.plan.or(b.plan)
        },
        limit_reached_resets_at: if newer_b {
            b.limit_reached_resets_at.or(a.limit_reached_resets_at)
        } else {
            a.limit_reached_resets_at.or(b.limit_reached_resets_at)
        },
        provider: b.provider.or(a.provider),
        observed_at_ms: a.observed_at_ms.max(b.observed_at_ms),
    }
}

impl LifecycleSink {
    async fn process(
        &self,
        node_id: String,
        outcomes: Vec<OutcomeRecord>,
    ) -> Result<u32, StoreError> {
        let accepted = self.store.record_outcomes(&node_id, &outcomes).await?;
        let received = now_ms();
        // A 429 is read by its account's provider's rules: look those accounts up once.
        let mut providers: HashMap<&str, Provider> = HashMap::new();
        for o in outcomes
            .iter()
            .filter(|o| o.status == 429 && !o.account_id.is_empty())
        {
            if !providers.contains_key(o.account_id.as_str()) {
                let provider = match self.store.account(&o.account_id).await {
                    Ok(a) => a.provider,
                    Err(_) => Provider::Codex,
                };
                providers.insert(o.account_id.as_str(), provider);
            }
        }
        let mut per_account: HashMap<&str, Observation> = HashMap::new();
        for o in outcomes.iter().filter(|o| !o.account_id.is_empty()) {
            let provider = providers
                .get(o.account_id.as_str())
                .copied()
                .unwrap_or(Provider::Codex);
            if let Some(obs) = quota::observation_from_outcome_of(o, received, provider) {
                let merged = match per_account.remove(o.account_id.as_str()) {
                    Some(prev) => combine(prev, obs),
                    None => obs,
                };
                per_account.insert(o.account_id.as_str(), merged);
            }
        }
        let mut bumped = false;
        for (account_id, obs) in per_account {
            match quota::record(&self.store, account_id, &obs).await {
                Ok(rev) => bumped |= rev.is_some(),
                Err(e) => tracing::warn!(account_id, error = %e, "cannot store quota evidence"),
            }
        }
        if bumped {
            self.changed.notify_one();
        }
        let mut seen: HashSet<(&str, i64, i64)> = HashSet::new();
        for o in outcomes
            .iter()
            .filter(|o| o.status == 401 && !o.account_id.is_empty())
        {
            let generation = o.token_expires_at_unix.unwrap_or(0);
            if !seen.insert((o.account_id.as_str(), generation, o.snapshot_version)) {
                continue;
            }
            if let Err(e) = self
                .refresher
                .on_unauthorized(&o.account_id, generation, o.snapshot_version)
                .await
            {
                tracing::warn!(account_id = %o.account_id, error = %e, "cannot act on a reported 401");
            }
        }
        self.health_wake.notify_one();
        if outcomes.iter().any(|o| {
            !o.key_id.is_empty()
                && (o.input_tokens > 0
                    || o.output_tokens > 0
                    || o.primary.is_some()
                    || o.secondary.is_some())
        }) {
            self.usage_wake.notify_one();
        }
        Ok(accepted)
    }
}

impl OutcomeSink for LifecycleSink {
    fn record(
        &self,
        node_id: &str,
        outcomes: Vec<OutcomeRecord>,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send {
        let node_id = node_id.to_owned();
        async move { self.process(node_id, outcomes).await }
    }

    fn record_verdict(
        &self,
        node_id: &str,
        verdict: codexmesh_store::SnapshotVerdict,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.store.record_verdict(node_id, verdict)
    }
}

// ---- refresh scheduler ----

async fn run_scheduler(
    refresher: Refresher,
    snapshots: watch::Receiver<Arc<pb::Snapshot>>,
    cancel: CancellationToken,
) {
    let mut snapshots = Some(snapshots);
    let store = refresher.store().clone();
    let wake = Arc::new(Notify::new());
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let deferred: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let mut errors = Once(false);
    loop {
        let now = now_ms();
        let mut next = now + i64::try_from(RESCAN.as_millis()).unwrap_or(5_000);
        match store.list_accounts(None).await {
            Ok(accounts) => {
                errors.ok();
                let mut deferred_now = lock(&deferred);
                deferred_now.retain(|_, t| *t > now);
                for a in accounts {
                    if !matches!(a.state, AccountState::Active | AccountState::CoolingDown)
                        || !refresh::refreshable(&a)
                    {
                        continue;
                    }
                    let due = refresh::due_at(&a, refresher.lead_ms())
                        .max(deferred_now.get(&a.id).copied().unwrap_or(0));
                    if due > now {
                        next = next.min(due);
                        continue;
                    }
                    if !lock(&in_flight).insert(a.id.clone()) {
                        continue;
                    }
                    let (r, limit, in_flight, deferred, wake) = (
                        refresher.clone(),
                        limit.clone(),
                        in_flight.clone(),
                        deferred.clone(),
                        wake.clone(),
                    );
                    let req = Request {
                        trigger: Trigger::Schedule,
                        seen_revision: a.token_revision,
                        wait: false,
                    };
                    tokio::spawn(async move {
                        let _permit = limit.acquire_owned().await;
                        let defer = match r.refresh(&a.id, req).await {
                            Ok(Done::Busy) => Some(BUSY_RETRY_MS),
                            Ok(_) => None,
                            // The store now holds the backoff (or needs_reauth).
                            Err(refresh::RefreshError::Failed { .. })
                            | Err(refresh::RefreshError::NeedsReauth { .. }) => None,
                            Err(e) => {
                                tracing::warn!(account = %a.label, error = %e, "scheduled refresh failed");
                                Some(5_000)
                            }
                        };
                        if let Some(ms) = defer {
                            lock(&deferred).insert(a.id.clone(), now_ms() + ms);
                        }
                        lock(&in_flight).remove(&a.id);
                        wake.notify_one();
                    });
                }
            }
            Err(e) => errors.fail("refresh scheduler cannot read the accounts", &e),
        }
        let sleep_ms = u64::try_from((next - now_ms()).max(10)).unwrap_or(5_000);
        let store_changed = async {
            match snapshots.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
            _ = wake.notified() => {}
            alive = store_changed => {
                if !alive {
                    snapshots = None; // the builder stopped: timers only
                }
            }
        }
    }
}

// ---- quota poller ----

struct Poller {
    store: Store,
    key: KeySource,
    http: reqwest::Client,
    upstreams: quota::Upstreams,
    interval_ms: i64,
    holder: String,
    refresher: Refresher,
    changed: Arc<Notify>,
}

impl Poller {
    async fn poll(&self, account_id: &str) -> Result<(), StoreError> {
        // Replicas share the work: whoever holds the lease polls, for most of an interval.
        let lease = format!("quota:{account_id}");
        if !self
            .store
            .try_acquire_lease(&lease, &self.holder, self.interval_ms * 4 / 5)
            .await?
        {
            return Ok(());
        }
        let timeout = Duration::from_millis(
            u64::try_from(self.interval_ms.clamp(1_000, 20_000)).unwrap_or(20_000),
        );
        let (account, polled) = quota::poll_account(
            &self.store,
            &self.key,
            &self.http,
            &self.upstreams,
            account_id,
            timeout,
        )
        .await?;
        if let Some(m) = self.refresher.metrics() {
            m.quota_poll(crate::metrics::PollOutcome::of(&polled));
        }
        match polled {
            Polled::Recorded { bumped } => {
                if bumped {
                    self.changed.notify_one();
                }
                tracing::debug!(account = %account.label, "quota polled");
            }
            Polled::Unauthorized(status) => {
                tracing::info!(account = %account.label, status, "usage poll refused the access token");
                self.refresher.force(&account);
            }
            Polled::Failed(why) => {
                tracing::debug!(account = %account.label, error = %why, "usage poll failed");
            }
        }
        Ok(())
    }
}

async fn run_poller(poller: Poller, cancel: CancellationToken) {
    let poller = Arc::new(poller);
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut next_poll: HashMap<String, i64> = HashMap::new();
    let mut errors = Once(false);
    let interval = poller.interval_ms;
    let jittered = |base: i64, spread: f64| base + (spread * refresh::unit_random()) as i64;
    loop {
        let now = now_ms();
        let mut next = now + i64::try_from(RESCAN.as_millis()).unwrap_or(5_000);
        match poller.store.list_accounts(None).await {
            Ok(accounts) => {
                errors.ok();
                let live: HashSet<&str> = accounts.iter().map(|a| a.id.as_str()).collect();
                next_poll.retain(|id, _| live.contains(id.as_str()));
                for a in &accounts {
                    if !matches!(a.state, AccountState::Active | AccountState::CoolingDown)
                        || !quota::pollable(a)
                    {
                        continue;
                    }
                    // First sight: somewhere in the first interval, so accounts spread out.
                    let due = *next_poll
                        .entry(a.id.clone())
                        .or_insert_with(|| jittered(now, interval as f64));
                    if due > now {
                        next = next.min(due);
                        continue;
                    }
                    if !lock(&in_flight).insert(a.id.clone()) {
                        continue;
                    }
                    // Every interval ± 10 %.
                    let again = jittered(now + interval * 9 / 10, interval as f64 / 5.0);
                    next_poll.insert(a.id.clone(), again);
                    next = next.min(again);
                    let (p, limit, in_flight, id) = (
                        poller.clone(),
                        limit.clone(),
                        in_flight.clone(),
                        a.id.clone(),
                    );
                    tokio::spawn(async move {
                        let _permit = limit.acquire_owned().await;
                        if let Err(e) = p.poll(&id).await {
                            tracing::debug!(account_id = %id, error = %e, "usage poll skipped");
                        }
                        lock(&in_flight).remove(&id);
                    });
                }
            }
            Err(e) => errors.fail("quota poller cannot read the accounts", &e),
        }
        let sleep_ms = u64::try_from((next - now_ms()).max(10)).unwrap_or(5_000);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
        }
    }
}

// ---- health aggregator ----

/// One health pass: recompute, publish the scores that moved, reset passed quota windows.
/// Returns whether it wrote anything the snapshot shows.
pub async fn health_pass(store: &Store, window_ms: i64) -> Result<bool, StoreError> {
    let now = now_ms();
    let groups = store
        .outcome_groups(
            now - window_ms,
            now - window_ms / codexmesh_model::health::RECENT_FRACTION,
        )
        .await?;
    let stats = codexmesh_model::health::window_stats(&groups);
    let accounts = store.list_accounts(None).await?;
    let updates: Vec<(String, u32)> = accounts
        .iter()
        .filter_map(|a| {
            let live = stats.get(&a.id).map_or(100, codexmesh_model::health::score);
            codexmesh_model::health::should_publish(a.health, live).then(|| (a.id.clone(), live))
        })
        .collect();
    let mut wrote = false;
    if let Some(revision) = store.set_health(&updates).await? {
        tracing::debug!(
            revision,
            accounts = updates.len(),
            "health scores published"
        );
        wrote = true;
    }
    if let Some(revision) = store.expire_quota_windows(now / 1000).await? {
        tracing::info!(revision, "quota windows reset");
        wrote = true;
    }
    Ok(wrote)
}

async fn run_health(
    store: Store,
    window_ms: i64,
    wake: Arc<Notify>,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    // Often enough that failures age out smoothly; never busier than once a second.
    let tick = Duration::from_millis(
        u64::try_from((window_ms / 10).clamp(1_000, 10_000)).unwrap_or(5_000),
    );
    let mut errors = Once(false);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
            _ = wake.notified() => {
                // Let a burst of reports land first.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(HEALTH_DEBOUNCE) => {}
                }
            }
        }
        match health_pass(&store, window_ms).await {
            Ok(wrote) => {
                errors.ok();
                if wrote {
                    changed.notify_one();
                }
            }
            Err(e) => errors.fail("health aggregation failed", &e),
        }
    }
}

// ---- request-log retention ----

/// Rows deleted per statement, and statements per pass: a pass stays short, and a large backlog
/// (retention just shortened) drains over a few passes.
const RETENTION_BATCH: i64 = 5_000;
const RETENTION_BATCHES_PER_PASS: usize = 20;
const RETENTION_INTERVAL: Duration = Duration::from_secs(600);

/// Deletes outcomes older than `retention_ms`; returns how many went.
pub async fn retention_pass(store: &Store, retention_ms: i64) -> Result<u64, StoreError> {
    let cut = now_ms().saturating_sub(retention_ms);
    let mut total = 0;
    for _ in 0..RETENTION_BATCHES_PER_PASS {
        let n = store.prune_outcomes(cut, RETENTION_BATCH).await?;
        total += n;
        if n < u64::try_from(RETENTION_BATCH).unwrap_or(0) {
            break;
        }
    }
    Ok(total)
}

async fn run_retention(store: Store, retention_ms: i64, cancel: CancellationToken) {
    let mut errors = Once(false);
    loop {
        match retention_pass(&store, retention_ms).await {
            Ok(0) => errors.ok(),
            Ok(n) => {
                errors.ok();
                tracing::info!(deleted = n, "request log: outcomes past retention deleted");
            }
            Err(e) => errors.fail("request-log retention failed", &e),
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(RETENTION_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codexmesh_store::WindowEvidence;

    fn w(used: f64, observed: i64) -> WindowEvidence {
        WindowEvidence {
            used_percent: used,
            observed_at_ms: observed,
            ..WindowEvidence::default()
        }
    }

    #[tokio::test]
    async fn retention_deletes_only_outcomes_past_the_cut() -> Result<(), StoreError> {
        let store = Store::open("sqlite::memory:").await?;
        let row = codexmesh_store::OutcomeRecord {
            account_id: "a".into(),
            status: 200,
            ..Default::default()
        };
        store
            .record_outcomes("n", &[row.clone(), row.clone(), row])
            .await?;
        assert_eq!(retention_pass(&store, 3_600_000).await?, 0, "all fresh");
        assert_eq!(store.count_outcomes().await?, 3);
        // A cut a minute ahead of now takes every row.
        assert_eq!(retention_pass(&store, -60_000).await?, 3);
        assert_eq!(store.count_outcomes().await?, 0);
        Ok(())
    }

    #[test]
    fn combining_keeps_the_freshest_window() {
        let a = Observation {
            primary: Some(w(10.0, 5)),
            secondary: Some(w(1.0, 5)),
            plan: Some("plus".into()),
            observed_at_ms: 5,
            ..Observation::default()
        };
        let b = Observation {
            primary: Some(w(20.0, 3)),
            limit_reached_resets_at: Some(99),
            observed_at_ms: 3,
            ..Observation::default()
        };
        let c = combine(a, b);
        assert_eq!(c.primary.map(|x| x.used_percent), Some(10.0));
        assert_eq!(c.secondary.map(|x| x.used_percent), Some(1.0));
        assert_eq!(c.plan.as_deref(), Some("plus"));
        assert_eq!(c.limit_reached_resets_at, Some(99));
        assert_eq!(c.observed_at_ms, 5);
    }
}
