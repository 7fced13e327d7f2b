//! The alert evaluator `serve` runs: every `alert_interval_ms` it samples each pool's usage
//! (for the forecast), evaluates the alert conditions, opens and closes episodes, and sends the
//! deliveries that are due.
//!
//! Rules this module keeps:
//! - one replica evaluates: whoever holds the store lease [`LEASE`] (renewed every tick, for
//!   three intervals); and opening an episode is idempotent in the store (at most one open per
//!   condition), so even two evaluators at once cannot fire twice;
//! - conditions (each about a subject; an account's per pool it is in, subject
//!   `<account id>@<pool>`): `needs_reauth` (the account needs a new login), `refresh_failing`
//!   ([`REFRESH_FAILING_AFTER`] transient failures in a row), `headroom_low` (a window's headroom
//!   under `alert_headroom_percent`), `pool_exhausted` (a window's headroom 0), and
//!   `forecast_runs_out` (a window runs out before its next reset at the current burn rate)
//!   per unarchived pool, `envoy_not_acking` per Envoy connected to this replica whose newest
//!   sent snapshot has not been acknowledged for longer than `alert_envoy_lag_secs`, and
//!   `egress_proxy_missing` per account whose egress proxy an Envoy connected to this replica
//!   has no clusters for (it never serves the account);
//! - the episode state machine is [`codexmesh_model::alerts::reconcile`]; deliveries go out
//!   from the store's outbox, [`MAX_ATTEMPTS`] attempts each with growing backoff, a resolved
//!   only after its firing is done; each attempt's status is recorded on the webhook;
//! - the body is metadata only ([`AlertPayload`]), signed ([`crate::webhooks`]);
//! - the same tick runs the pools' due warm-up slots ([`crate::warmup`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::envoys::Envoys;
use crate::ops::forecast::{forecast_of, PoolUsageNow};
use crate::ops::OpsError;
use codexmesh_model::alerts::{reconcile, AlertKind, AlertPayload, Condition};
use codexmesh_model::records::AccountState;
use codexmesh_model::util::now_ms;
use codexmesh_store::crypto::Keys;
use codexmesh_store::keyfile::KeySource;
use codexmesh_store::{DueDelivery, Store, StoreError, WEBHOOK_SECRET_FIELD};

/// The store lease the evaluating replica holds.
pub const LEASE: &str = "alerts:evaluator";
/// Transient refresh failures in a row that make `refresh_failing`.
pub const REFRESH_FAILING_AFTER: u32 = 3;
/// Attempts per delivery before it is given up.
pub const MAX_ATTEMPTS: u32 = 5;
/// A pool's usage is sampled at most this often.
pub const SAMPLE_EVERY_MS: i64 = 60_000;
/// Old samples and closed episodes are deleted at most this often.
const PRUNE_EVERY_MS: i64 = 3_600_000;
/// Deliveries sent per tick at most.
const DELIVERIES_PER_TICK: i64 = 50;

/// The wait before attempt `n + 1` after `n` failed ones: 5 s, 30 s, 2 min, 10 min.
pub fn backoff_ms(failed: u32) -> i64 {
    match failed {
        0 | 1 => 5_000,
        2 => 30_000,
        3 => 120_000,
        _ => 600_000,
    }
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// False: another replica holds the lease (nothing was done).
    pub evaluated: bool,
    pub opened: usize,
    pub closed: usize,
    pub delivered: usize,
    pub failed: usize,
    /// Warm-up slots run ([`crate::warmup`]).
    pub warmups: Vec<crate::warmup::WarmupRun>,
}

/// The evaluator (one per `serve`; tests run several on one store).
pub struct Evaluator {
    store: Store,
    keys: KeySource,
    http: reqwest::Client,
    holder: String,
    interval: Duration,
    headroom_percent: f64,
    envoy_lag_ms: i64,
    health_window_secs: u64,
    upstreams: crate::quota::Upstreams,
    envoys: Option<Envoys>,
    behind_since: Mutex<HashMap<String, i64>>,
    /// When old samples and episodes were last pruned (unix ms).
    pruned_at: Mutex<i64>,
}

impl Evaluator {
    /// An evaluator acting as `holder` (unique per replica) with the settings' thresholds,
    /// opening webhook secrets with `keys` and sending with `http`.
    pub fn new(
        settings: &Settings,
        store: Store,
        keys: KeySource,
        http: reqwest::Client,
        holder: impl Into<String>,
    ) -> Self {
        Self {
            store,
            keys,
            http,
            holder: holder.into(),
            interval: settings.alert_interval,
            headroom_percent: settings.alert_headroom_percent as f64,
            envoy_lag_ms: i64::try_from(settings.alert_envoy_lag.as_millis()).unwrap_or(i64::MAX),
            health_window_secs: settings.health_window.as_secs(),
            upstreams: crate::quota::Upstreams::from_settings(settings),
            envoys: None,
            behind_since: Mutex::new(HashMap::new()),
            pruned_at: Mutex::new(0),
        }
    }

    /// [`Evaluator::new`] with the settings' master keys and a new HTTP client.
    pub fn from_settings(
        settings: &Settings,
        store: Store,
        holder: impl Into<String>,
    ) -> Result<Self, OpsError> {
        let http =
            crate::oauth::http_client_for(settings).map_err(|e| OpsError::Http(e.to_string()))?;
        Ok(Self::new(
            settings,
            store,
            settings.master_keys()?,
            http,
            holder,
        ))
    }

    /// Watches the Envoys connected to this replica too.
    pub(crate) fn with_envoys(mut self, envoys: Envoys) -> Self {
        self.envoys = Some(envoys);
        self
    }

    /// Runs ticks every interval until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let this = Arc::new(self);
        loop {
            match this.tick().await {
                Ok(r) if r.opened + r.closed + r.delivered + r.failed + r.warmups.len() > 0 => {
                    tracing::info!(
                        opened = r.opened,
                        closed = r.closed,
                        delivered = r.delivered,
                        failed = r.failed,
                        "alerts evaluated"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "alert evaluation failed"),
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(this.interval) => {}
            }
        }
        let _ = this.store.release_lease(LEASE, &this.holder).await;
    }

    /// One evaluation and delivery pass, if this evaluator holds (or takes) the lease.
    pub async fn tick(&self) -> Result<TickReport, OpsError> {
        let ttl = i64::try_from(self.interval.as_millis().saturating_mul(3))
            .unwrap_or(i64::MAX)
            .max(5_000);
        if !self
            .store
            .try_acquire_lease(LEASE, &self.holder, ttl)
            .await?
        {
            return Ok(TickReport::default());
        }
        let now = now_ms();
        let holding = self.conditions(now).await?;
        let open = self.store.open_episodes().await?;
        let plan = reconcile(&open, &holding);
        let mut report = TickReport {
            evaluated: true,
            ..TickReport::default()
        };
        for c in &plan.open {
            if self.store.open_episode(c).await?.is_some() {
                report.opened += 1;
            }
        }
        for id in &plan.close {
            if self.store.close_episode(id).await? {
                report.closed += 1;
            }
        }
        let (delivered, failed) = self.deliver_due().await?;
        report.delivered = delivered;
        report.failed = failed;
        report.warmups =
            crate::warmup::run_due(&self.store, &self.keys, &self.http, &self.upstreams).await?;
        let prune = {
            let mut last = self
                .pruned_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = now - *last >= PRUNE_EVERY_MS;
            if due {
                *last = now;
            }
            due
        };
        if prune {
            self.store.prune_alert_history(now).await?;
        }
        Ok(report)
    }

    /// Every condition that holds now (and a usage sample per pool, when one is due).
    async fn conditions(&self, now: i64) -> Result<Vec<Condition>, OpsError> {
        let report = crate::status::build(&self.store, self.health_window_secs).await?;
        let mut out = Vec::new();
        // The egress proxies each Envoy connected here has clusters for.
        let nodes: Vec<(String, Vec<String>)> = self
            .envoys
            .as_ref()
            .map(|e| {
                e.list()
                    .into_iter()
                    .map(|v| (v.node_id, v.egress_proxies))
                    .collect()
            })
            .unwrap_or_default();
        for p in report
            .pools
            .iter()
            .filter(|p| p.pool.archived_at_ms.is_none())
        {
            let pool = &p.pool.name;
            for a in &p.accounts {
                let acc = &a.account;
                let proxy = acc.egress_proxy.as_deref();
                if let Some(c) = egress_unserved((&acc.id, &acc.label), proxy, pool, &nodes) {
                    out.push(c);
                }
                let subject = format!("{}@{pool}", acc.id);
                if acc.state == AccountState::NeedsReauth {
                    out.push(Condition {
                        kind: AlertKind::NeedsReauth,
                        subject,
                        pool: Some(pool.clone()),
                        message: format!(
                            "account {} in pool {pool} needs a new login ({})",
                            acc.label,
                            acc.state_reason.as_deref().unwrap_or("refresh refused")
                        ),
                    });
                } else if acc.refresh_failures >= REFRESH_FAILING_AFTER {
                    out.push(Condition {
                        kind: AlertKind::RefreshFailing,
                        subject,
                        pool: Some(pool.clone()),
                        message: format!(
                            "account {} in pool {pool}: {} token refreshes failed in a row ({})",
                            acc.label,
                            acc.refresh_failures,
                            acc.last_refresh_error.as_deref().unwrap_or("unknown error")
                        ),
                    });
                }
            }
            let usage = PoolUsageNow::of(p, now / 1000);
            let windows = [("5-hour", usage.primary), ("weekly", usage.secondary)];
            let exhausted: Vec<&str> = windows
                .iter()
                .filter(|(_, h)| h.headroom_percent.is_some_and(|l| l <= 0.0))
                .map(|(n, _)| *n)
                .collect();
            if !exhausted.is_empty() {
                out.push(Condition {
                    kind: AlertKind::PoolExhausted,
                    subject: pool.clone(),
                    pool: Some(pool.clone()),
                    message: format!(
                        "pool {pool} has no quota left in its {} window",
                        exhausted.join(" and ")
                    ),
                });
            }
            let low: Vec<String> = windows
                .iter()
                .filter_map(|(n, h)| {
                    h.headroom_percent
                        .filter(|l| *l > 0.0 && *l < self.headroom_percent)
                        .map(|l| format!("{n} {l:.1} %"))
                })
                .collect();
            if !low.is_empty() {
                out.push(Condition {
                    kind: AlertKind::HeadroomLow,
                    subject: pool.clone(),
                    pool: Some(pool.clone()),
                    message: format!(
                        "pool {pool} headroom under {} %: {}",
                        self.headroom_percent,
                        low.join(", ")
                    ),
                });
            }
            let recent = self
                .store
                .pool_samples(&p.pool.id, now - SAMPLE_EVERY_MS + 1)
                .await?;
            let forecast = forecast_of(&self.store, p, now).await?;
            if recent.is_empty() {
                self.store
                    .record_pool_sample(&p.pool.id, usage.sample(now))
                    .await?;
            }
            let early: Vec<String> = [("5-hour", forecast.primary), ("weekly", forecast.secondary)]
                .iter()
                .filter(|(_, f)| {
                    f.runs_out_before_reset && f.used_percent.is_some_and(|u| u < 100.0)
                })
                .map(|(n, f)| {
                    format!(
                        "{n} at {:.1} %/h runs out at {} before its reset at {}",
                        f.burn_percent_per_hour.unwrap_or_default(),
                        f.runs_out_at_unix.unwrap_or_default(),
                        f.next_reset_unix.unwrap_or_default()
                    )
                })
                .collect();
            if !early.is_empty() {
                out.push(Condition {
                    kind: AlertKind::ForecastRunsOut,
                    subject: pool.clone(),
                    pool: Some(pool.clone()),
                    message: format!("pool {pool}: {}", early.join("; ")),
                });
            }
        }
        if let Some(envoys) = &self.envoys {
            let views: Vec<(String, Option<u64>, Option<u64>)> = envoys
                .list()
                .into_iter()
                .map(|v| (v.node_id, v.sent_version, v.acked_version))
                .collect();
            let mut since = self
                .behind_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            out.extend(lagging_envoys(&views, &mut since, now, self.envoy_lag_ms));
        }
        Ok(out)
    }

    /// Sends the due deliveries: (delivered, failed attempts).
    async fn deliver_due(&self) -> Result<(usize, usize), OpsError> {
        let due = self
            .store
            .due_deliveries(now_ms(), DELIVERIES_PER_TICK)
            .await?;
        let (mut delivered, mut failed) = (0, 0);
        for d in due {
            let secret = self
                .keys
                .open(&d.webhook_id, WEBHOOK_SECRET_FIELD, &d.sealed_secret)
                .map_err(StoreError::from)
                .and_then(|s| {
                    String::from_utf8(s)
                        .map_err(|_| StoreError::Corrupt("a webhook secret is not text".into()))
                })?;
            let body = serde_json::to_string(&payload(&d))
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let sent = crate::webhooks::send(&self.http, &d.url, &secret, &body).await;
            let (status, error) = match &sent {
                Ok(s) => (*s, None),
                Err(f) => (f.status, Some(f.message.clone())),
            };
            let next = match sent {
                Ok(_) => None,
                Err(_) if d.attempts + 1 >= MAX_ATTEMPTS => None,
                Err(_) => Some(now_ms() + backoff_ms(d.attempts + 1)),
            };
            self.store.record_delivery_attempt(&d, status, next).await?;
            self.store
                .record_webhook_result(&d.webhook_id, status, error.as_deref())
                .await?;
            if error.is_none() {
                delivered += 1;
            } else {
                failed += 1;
                tracing::warn!(webhook = %d.webhook_name, episode = %d.episode.id,
                    attempt = d.attempts + 1, status, error = error.as_deref().unwrap_or(""),
                    "alert delivery failed");
            }
        }
        Ok((delivered, failed))
    }
}

/// The body of a delivery.
fn payload(d: &DueDelivery) -> AlertPayload {
    let e = &d.episode;
    AlertPayload {
        episode: e.id.clone(),
        kind: e.kind,
        subject: e.subject.clone(),
        pool: e.pool.clone(),
        severity: e.severity,
        state: d.state,
        opened_at: e.opened_at_ms,
        closed_at: e.closed_at_ms,
        message: e.message.clone(),
    }
}

/// `egress_proxy_missing` for an account (in `pool`) whose egress proxy some connected node
/// (`nodes`: node id and the proxies it has clusters for) lacks.
fn egress_unserved(
    (id, label): (&str, &str),
    proxy: Option<&str>,
    pool: &str,
    nodes: &[(String, Vec<String>)],
) -> Option<Condition> {
    let proxy = proxy?;
    let mut lacking: Vec<&str> = nodes
        .iter()
        .filter(|(_, proxies)| !proxies.iter().any(|p| p == proxy))
        .map(|(node, _)| node.as_str())
        .collect();
    lacking.sort_unstable();
    lacking.dedup();
    if lacking.is_empty() {
        return None;
    }
    Some(Condition {
        kind: AlertKind::EgressProxyMissing,
        subject: format!("{id}@{pool}"),
        pool: Some(pool.to_owned()),
        message: format!(
            "account {} in pool {pool} tunnels through {proxy}, which Envoy {} has no clusters for: it never serves the account (add the proxy to envoy_egress_proxies and re-render its bootstrap)",
            label,
            lacking.join(", ")
        ),
    })
}

/// `envoy_not_acking` for each connected node (id, newest version sent, newest acked) that has
/// been behind for longer than `lag_ms`; `since` remembers when each was first seen behind
/// (nodes caught up or gone are forgotten).
fn lagging_envoys(
    nodes: &[(String, Option<u64>, Option<u64>)],
    since: &mut HashMap<String, i64>,
    now: i64,
    lag_ms: i64,
) -> Vec<Condition> {
    let behind: Vec<(&String, u64, u64)> = nodes
        .iter()
        .filter_map(|(id, sent, acked)| {
            let sent = (*sent)?;
            let acked = acked.unwrap_or(0);
            (acked < sent).then_some((id, sent, acked))
        })
        .collect();
    since.retain(|id, _| behind.iter().any(|(b, _, _)| *b == id));
    behind
        .into_iter()
        .filter_map(|(id, sent, acked)| {
            let first = *since.entry(id.clone()).or_insert(now);
            (now - first > lag_ms).then(|| Condition {
                kind: AlertKind::EnvoyNotAcking,
                subject: id.clone(),
                pool: None,
                message: format!(
                    "Envoy {id} has not acknowledged snapshot {sent} for {} s (it acknowledged {acked})",
                    (now - first) / 1000
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envoy_alerts_only_after_lagging_longer_than_the_lag() {
        let mut since = HashMap::new();
        let behind = vec![
            ("e1".to_owned(), Some(7), Some(6)),
            ("e2".to_owned(), Some(7), Some(7)),
        ];
        // First seen behind: not yet.
        assert!(lagging_envoys(&behind, &mut since, 1_000, 120_000).is_empty());
        assert!(lagging_envoys(&behind, &mut since, 121_000, 120_000).is_empty());
        let late = lagging_envoys(&behind, &mut since, 121_001, 120_000);
        assert_eq!(late.len(), 1);
        assert_eq!(
            (late[0].kind, late[0].subject.as_str()),
            (AlertKind::EnvoyNotAcking, "e1")
        );
        // It caught up: forgotten, and a new lag starts from scratch.
        let caught = vec![("e1".to_owned(), Some(8), Some(8))];
        assert!(lagging_envoys(&caught, &mut since, 200_000, 120_000).is_empty());
        assert!(since.is_empty());
        // Never acked anything: behind too.
        let never = vec![("e3".to_owned(), Some(3), None)];
        assert!(lagging_envoys(&never, &mut since, 0, 10).is_empty());
        assert_eq!(lagging_envoys(&never, &mut since, 11, 10).len(), 1);
    }

    #[test]
    fn an_account_behind_a_proxy_an_envoy_lacks_alerts_naming_that_envoy() {
        let acc = ("acct_1", "alice");
        let nodes = vec![
            ("e1".to_owned(), vec!["http://p:1".to_owned()]),
            ("e2".to_owned(), Vec::new()),
        ];
        // No proxy: nothing to miss.
        assert!(egress_unserved(acc, None, "team", &nodes).is_none());
        let proxy = Some("http://p:1");
        let c = egress_unserved(acc, proxy, "team", &nodes).unwrap();
        assert_eq!(
            (c.kind, c.subject.as_str(), c.pool.as_deref()),
            (AlertKind::EgressProxyMissing, "acct_1@team", Some("team"))
        );
        assert!(
            c.message.contains("Envoy e2 ") && !c.message.contains("e1"),
            "{}",
            c.message
        );
        // Every Envoy has it (or none is connected here): resolved.
        assert!(egress_unserved(acc, proxy, "team", &nodes[..1]).is_none());
        assert!(egress_unserved(acc, proxy, "team", &[]).is_none());
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let waits: Vec<i64> = (1..=6).map(backoff_ms).collect();
        assert_eq!(waits, [5_000, 30_000, 120_000, 600_000, 600_000, 600_000]);
    }
}
