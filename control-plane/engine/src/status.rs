//! The status report shared by `codexmesh status --json` and `GET /api/v1/status`.
//!
//! Each account names the quota windows its provider has (`windows`), so every surface draws
//! the right bars: Codex 5-hour and weekly, Claude 5-hour and 7-day, Gemini daily, none for
//! an API key.
//!
//! Per Envoy node it also shows the snapshot verdicts its filter reported (xDS's ACK/NACK, from
//! the store, so any replica and the CLI see every node): the version it accepted, whether that
//! is the newest (the store revision, which the newest snapshot carries), and its last
//! rejection with the reason.

use serde::Serialize;

use codexmesh_model::health::WindowStats;
use codexmesh_model::util::now_ms;
use codexmesh_store::{
    Account, Counters, CredentialKind, CreditsEvidence, EnvoyNode, KeyStatus, Pool, Provider,
    QuotaRecord, Store, StoreError, WindowEvidence,
};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatusReport {
    /// The store revision: the version the next snapshot carries.
    pub revision: i64,
    pub generated_at_ms: i64,
    pub pools: Vec<PoolStatus>,
    /// Each Envoy node's snapshot verdicts (nodes without one for 7 days are forgotten).
    pub envoys: Vec<EnvoyStatus>,
}

/// One Envoy node's snapshot verdicts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EnvoyStatus {
    pub node_id: String,
    /// The newest snapshot version its filter accepted (ACK) and runs.
    pub acked_version: Option<i64>,
    pub acked_at_ms: Option<i64>,
    /// `in_sync` (it accepted the newest version: the store revision), `behind`, or `unknown`
    /// (no ACK yet).
    pub sync: SyncState,
    /// The last version it rejected (NACK), if any.
    pub last_rejection: Option<RejectionView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    InSync,
    Behind,
    Unknown,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InSync => "in_sync",
            Self::Behind => "behind",
            Self::Unknown => "unknown",
        }
    }
}

/// A rejected snapshot version and why: the Envoy kept serving the version it had.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RejectionView {
    /// 0: a message that did not decode.
    pub version: i64,
    pub at_ms: i64,
    pub reason: String,
    /// The pool the reason concerns: decides who may read it (not shown).
    #[serde(skip)]
    pub pool_id: Option<String>,
}

/// A node's verdicts, compared with the newest version (`revision`).
pub fn envoy_status(node: &EnvoyNode, revision: i64) -> EnvoyStatus {
    let acked = node.acked.as_ref();
    EnvoyStatus {
        node_id: node.node_id.clone(),
        acked_version: acked.map(|a| a.version),
        acked_at_ms: acked.map(|a| a.at_ms),
        sync: match acked {
            None => SyncState::Unknown,
            Some(a) if a.version >= revision => SyncState::InSync,
            Some(_) => SyncState::Behind,
        },
        last_rejection: node.rejected.as_ref().map(|r| RejectionView {
            version: r.version,
            at_ms: r.at_ms,
            reason: r.detail.clone(),
            pool_id: r.pool_id.clone(),
        }),
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolStatus {
    #[serde(flatten)]
    pub pool: Pool,
    pub keys: KeyCounts,
    pub accounts: Vec<AccountStatus>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct KeyCounts {
    pub active: u32,
    pub revoked: u32,
}

/// One subscription quota window an account's provider has, named for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WindowName {
    /// `primary` or `secondary`: where its evidence is in `quota`.
    pub window: String,
    /// `5-hour`, `weekly`, `7-day`, `daily`.
    pub label: String,
    pub minutes: u32,
}

/// The windows an account's provider has: Codex 5-hour and weekly, Claude 5-hour and 7-day,
/// Gemini daily (primary only); an API key has none.
pub fn provider_windows(provider: Provider, kind: CredentialKind) -> Vec<WindowName> {
    let w = |window: &str, label: &str, minutes| WindowName {
        window: window.to_owned(),
        label: label.to_owned(),
        minutes,
    };
    if kind == CredentialKind::ApiKey {
        return Vec::new();
    }
    match provider {
        Provider::Codex => vec![w("primary", "5-hour", 300), w("secondary", "weekly", 10080)],
        Provider::Claude => vec![w("primary", "5-hour", 300), w("secondary", "7-day", 10080)],
        Provider::Gemini => vec![w("primary", "daily", 1440)],
    }
}

/// An account with what the lifecycle workers know about it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccountStatus {
    #[serde(flatten)]
    pub account: Account,
    /// The subscription windows of its provider (empty for an API key: no windows to show).
    pub windows: Vec<WindowName>,
    /// The freshest quota evidence; None before the first poll or report.
    pub quota: Option<QuotaView>,
    pub health: HealthView,
    /// All-time activity counters.
    pub counters: Counters,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QuotaView {
    /// The 5-hour window.
    pub primary: Option<WindowView>,
    /// The weekly window.
    pub secondary: Option<WindowView>,
    pub credits: Option<CreditsEvidence>,
    pub plan: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WindowView {
    /// As routing sees it: 0 once the reset time passed.
    pub used_percent: f64,
    /// As last observed.
    pub observed_used_percent: f64,
    pub window_minutes: i64,
    /// Unix seconds, 0 = unknown.
    pub resets_at_unix: i64,
    /// Seconds until the reset (0 when passed or unknown).
    pub resets_in_secs: i64,
    pub observed_at_ms: i64,
    /// poll | headers | limit | reset
    pub source: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HealthView {
    /// The live score (0..100) over the window, from the outcomes in the store.
    pub score: u32,
    /// The score the snapshot carries (moves in steps, see `crate::health`).
    pub published: u32,
    pub window_secs: u64,
    /// Counters over the window.
    #[serde(flatten)]
    pub window: WindowStats,
}

fn window_view(w: &WindowEvidence, now_unix: i64) -> WindowView {
    WindowView {
        used_percent: crate::quota::effective_used(w, now_unix),
        observed_used_percent: w.used_percent,
        window_minutes: w.window_minutes,
        resets_at_unix: w.resets_at_unix,
        resets_in_secs: if w.resets_at_unix > 0 {
            (w.resets_at_unix - now_unix).max(0)
        } else {
            0
        },
        observed_at_ms: w.observed_at_ms,
        source: w.source.clone(),
    }
}

pub fn quota_view(q: &QuotaRecord, now_unix: i64) -> QuotaView {
    QuotaView {
        primary: q.primary.as_ref().map(|w| window_view(w, now_unix)),
        secondary: q.secondary.as_ref().map(|w| window_view(w, now_unix)),
        credits: q.credits.clone(),
        plan: q.plan.clone(),
    }
}

pub async fn build(store: &Store, health_window_secs: u64) -> Result<StatusReport, StoreError> {
    // Read the revision first: the rest is then at least as new as the number shown.
    let revision = store.revision().await?;
    let pools = store.list_pools().await?;
    let keys = store.list_keys(None).await?;
    let accounts = store.list_accounts(None).await?;
    let quotas = store.all_quota().await?;
    let counters = store.all_counters().await?;
    let now = now_ms();
    let window_ms = i64::try_from(health_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let groups = store
        .outcome_groups(
            now.saturating_sub(window_ms),
            now.saturating_sub(window_ms / codexmesh_model::health::RECENT_FRACTION),
        )
        .await?;
    let stats = codexmesh_model::health::window_stats(&groups);
    let pools = pools
        .into_iter()
        .map(|pool| {
            let mut counts = KeyCounts::default();
            for k in keys.iter().filter(|k| k.pool_id == pool.id) {
                match k.status {
                    KeyStatus::Active => counts.active += 1,
                    KeyStatus::Revoked => counts.revoked += 1,
                }
            }
            // An account in several pools is shown in each, with that pool's priority and
            // weight in view.
            let mut members: Vec<Account> = accounts
                .iter()
                .filter_map(|a| {
                    let m = a.membership(&pool.id)?;
                    let mut a = a.clone();
                    a.view_membership(&m.clone());
                    Some(a)
                })
                .collect();
            members
                .sort_by(|a, b| (a.priority, &a.label, &a.id).cmp(&(b.priority, &b.label, &b.id)));
            let accounts = members
                .into_iter()
                .map(|a| {
                    let window = stats.get(&a.id).copied().unwrap_or_default();
                    AccountStatus {
                        windows: provider_windows(a.provider, a.credential_kind),
                        quota: quotas.get(&a.id).map(|q| quota_view(q, now / 1000)),
                        health: HealthView {
                            score: codexmesh_model::health::score(&window),
                            published: a.health,
                            window_secs: health_window_secs,
                            window,
                        },
                        counters: counters.get(&a.id).copied().unwrap_or_default(),
                        account: a,
                    }
                })
                .collect();
            PoolStatus {
                pool,
                keys: counts,
                accounts,
            }
        })
        .collect();
    let envoys = store
        .envoy_nodes()
        .await?
        .iter()
        .map(|n| envoy_status(n, revision))
        .collect();
    Ok(StatusReport {
        revision,
        generated_at_ms: now,
        pools,
        envoys,
    })
}
