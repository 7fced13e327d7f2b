//! The control plane's Prometheus metrics (`GET /metrics`, OpenMetrics text) and its readiness
//! check (`GET /readyz`). `docs/metrics.md` lists every metric with its labels.
//!
//! Rules this module keeps:
//! - one [`Metrics`] per `serve` process, built by `server` and handed to what records into it
//!   (the refresher, the quota poller, the Mesh service); cheap to clone;
//! - counters move where the thing happens (a refresh's answer, a quota poll, a frame written to
//!   an Envoy stream, a reported outcome); everything about pools, accounts and Envoys is read
//!   at scrape time from the newest snapshot the hub published and from the Envoy registry, so
//!   a scrape costs no store query and a removed pool or account leaves the output with the
//!   first snapshot that no longer has it;
//! - label sets are fixed and small (outcomes, states, windows, kinds) or bounded by what the
//!   store holds (pools, accounts) and by the Envoys connected; per-account traffic is counted by
//!   id (at most [`MAX_TRAFFIC_SERIES`] ids) and named at scrape time: an id the newest snapshot
//!   does not know is dropped there;
//! - a label is a pool name, an account label or id, a node id: never a token, a key or a
//!   prompt; every label value is escaped for the text format ([`escape_label`]);
//! - headroom is the overview's formula ([`codexmesh_model::headroom`]), not a second one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::envoys::{EnvoyView, Envoys};
use codexmesh_model::headroom::{self, MemberWindow, WindowHeadroom};
use codexmesh_model::health::{self, Class};
use codexmesh_model::quota::effective_used;
use codexmesh_model::records::{AccountState, WindowEvidence};
use codexmesh_model::util::now_ms;
use codexmesh_proto::v1 as pb;
use codexmesh_store::{OutcomeRecord, Store};

/// What `GET /metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Every metric's name starts with this (and `_`).
pub const PREFIX: &str = "codexmesh";
/// Distinct (pool, account) pairs whose traffic is counted; outcomes of further ids (which only
/// a misbehaving Envoy could report) are not counted until a scrape drops unknown ones.
pub const MAX_TRAFFIC_SERIES: usize = 100_000;
/// How long `/readyz` waits for the store's answer.
pub const READY_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a refresh that asked the token endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefreshOutcome {
    /// New tokens stored.
    Ok,
    /// A transient failure (network, 5xx, a store that would not take the new tokens): retried.
    Failed,
    /// The token endpoint refused the refresh token: the account needs a new login.
    NeedsReauth,
}

impl RefreshOutcome {
    pub const ALL: [Self; 3] = [Self::Ok, Self::Failed, Self::NeedsReauth];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::NeedsReauth => "needs_reauth",
        }
    }
}

/// How an active usage poll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PollOutcome {
    /// Evidence was read and recorded.
    Ok,
    /// The access token was refused (a refresh follows).
    Unauthorized,
    /// Anything else (status, transport, an answer without windows).
    Failed,
}

impl PollOutcome {
    pub const ALL: [Self; 3] = [Self::Ok, Self::Unauthorized, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unauthorized => "unauthorized",
            Self::Failed => "failed",
        }
    }

    pub fn of(polled: &crate::quota::Polled) -> Self {
        match polled {
            crate::quota::Polled::Recorded { .. } => Self::Ok,
            crate::quota::Polled::Unauthorized(_) => Self::Unauthorized,
            crate::quota::Polled::Failed(_) => Self::Failed,
        }
    }
}

/// What one reported attempt was, for `codexmesh_requests_total{outcome}`: the health score's
/// classes ([`health::classify`]), with failures split by who failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrafficOutcome {
    Success,
    /// A 429 (quota or rate limit).
    RateLimited,
    /// The client's fault (4xx it caused, a client that left): never the account's.
    ClientError,
    /// The upstream answered with a failure (5xx, 401/403, a broken stream).
    UpstreamError,
    /// No answer at all (connect failure, reset, timeout).
    Transport,
}

impl TrafficOutcome {
    pub const ALL: [Self; 5] = [
        Self::Success,
        Self::RateLimited,
        Self::ClientError,
        Self::UpstreamError,
        Self::Transport,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::RateLimited => "rate_limited",
            Self::ClientError => "client_error",
            Self::UpstreamError => "upstream_error",
            Self::Transport => "transport",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    pub fn of(status: i64, error_source: Option<&str>) -> Self {
        match health::classify(status, error_source) {
            Class::Success => Self::Success,
            Class::Quota => Self::RateLimited,
            Class::Neutral => Self::ClientError,
            Class::Failure
                if status == 0
                    || error_source.is_some_and(|s| s.eq_ignore_ascii_case("transport")) =>
            {
                Self::Transport
            }
            Class::Failure => Self::UpstreamError,
        }
    }
}

type OutcomeLabel = [(&'static str, &'static str); 1];

/// The registry and the counters recorded into it. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    refreshes: Family<OutcomeLabel, Counter>,
    quota_polls: Family<OutcomeLabel, Counter>,
    pushes: Counter,
    traffic: Arc<Mutex<Traffic>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Attempts per (pool id, account id), by outcome, and how many of them were failovers.
#[derive(Debug, Default)]
struct Traffic {
    by_account: HashMap<(String, String), AccountTraffic>,
}

/// One report's attempts summed per (pool id, account id), ready for [`Metrics::reported`].
#[derive(Debug, Default)]
pub struct Tally {
    by_account: HashMap<(String, String), AccountTraffic>,
}

impl Tally {
    pub fn of(outcomes: &[OutcomeRecord]) -> Self {
        let mut by_account: HashMap<(String, String), AccountTraffic> = HashMap::new();
        for o in outcomes {
            if o.pool_id.is_empty() || o.account_id.is_empty() {
                continue;
            }
            let entry = by_account
                .entry((o.pool_id.clone(), o.account_id.clone()))
                .or_default();
            let outcome = TrafficOutcome::of(o.status, o.error_source.as_deref());
            entry.outcomes[outcome.index()] += 1;
            entry.failovers += u64::from(o.fallback);
        }
        Self { by_account }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct AccountTraffic {
    outcomes: [u64; TrafficOutcome::ALL.len()],
    failovers: u64,
}

fn lock(traffic: &Mutex<Traffic>) -> MutexGuard<'_, Traffic> {
    // Plain counter updates: a panic elsewhere cannot leave it inconsistent.
    traffic.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// A registry over the hub's published snapshots and the Envoy registry (read at scrape
    /// time), with every fixed-label counter at 0 so its series exist from the start.
    pub fn new(snapshots: watch::Receiver<Arc<pb::Snapshot>>, envoys: Envoys) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let refreshes = Family::<OutcomeLabel, Counter>::default();
        for o in RefreshOutcome::ALL {
            let _ = refreshes.get_or_create(&[("outcome", o.as_str())]);
        }
        registry.register(
            "token_refreshes",
            "Token refreshes that asked the token endpoint, by outcome (ok, failed, needs_reauth)",
            refreshes.clone(),
        );
        let quota_polls = Family::<OutcomeLabel, Counter>::default();
        for o in PollOutcome::ALL {
            let _ = quota_polls.get_or_create(&[("outcome", o.as_str())]);
        }
        registry.register(
            "quota_polls",
            "Background usage polls (GET /wham/usage), by outcome (ok, unauthorized, failed)",
            quota_polls.clone(),
        );
        let pushes = Counter::default();
        registry.register(
            "snapshot_pushes",
            "Snapshot frames written to Envoy Subscribe streams",
            pushes.clone(),
        );
        let traffic = Arc::new(Mutex::new(Traffic::default()));
        registry.register_collector(Box::new(Live {
            snapshots,
            envoys,
            traffic: Arc::clone(&traffic),
        }));
        Self {
            inner: Arc::new(Inner {
                registry,
                refreshes,
                quota_polls,
                pushes,
                traffic,
            }),
        }
    }

    pub fn refresh(&self, outcome: RefreshOutcome) {
        self.inner
            .refreshes
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    pub fn quota_poll(&self, outcome: PollOutcome) {
        self.inner
            .quota_polls
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    /// A snapshot frame went out on a Subscribe stream.
    pub fn pushed(&self) {
        self.inner.pushes.inc();
    }

    /// Adds a report's attempts (once the store took them) by pool, account and outcome.
    pub fn reported(&self, tally: Tally) {
        let mut traffic = lock(&self.inner.traffic);
        for (key, t) in tally.by_account {
            let full = traffic.by_account.len() >= MAX_TRAFFIC_SERIES;
            let entry = match traffic.by_account.get_mut(&key) {
                Some(e) => e,
                None if full => continue,
                None => traffic.by_account.entry(key).or_default(),
            };
            for (sum, n) in entry.outcomes.iter_mut().zip(t.outcomes) {
                *sum += n;
            }
            entry.failovers += t.failovers;
        }
    }

    /// The OpenMetrics text of every metric, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            // Only a formatter error (writing to a String does not fail): say so, serve what
            // there is.
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// Escapes a label value for the text format (`\`, `"` and newlines).
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn model_state(s: i32) -> Option<AccountState> {
    match pb::AccountState::try_from(s).ok()? {
        pb::AccountState::Active => Some(AccountState::Active),
        pb::AccountState::Paused => Some(AccountState::Paused),
        pb::AccountState::CoolingDown => Some(AccountState::CoolingDown),
        pb::AccountState::NeedsReauth => Some(AccountState::NeedsReauth),
        pb::AccountState::Unspecified => None,
    }
}

/// A pool's combined headroom of one window from its snapshot members (the overview's rule).
fn pool_headroom(
    pool: &pb::Pool,
    window: impl Fn(&pb::QuotaSummary) -> Option<&pb::QuotaWindow>,
    now_unix: i64,
) -> WindowHeadroom {
    let members = pool.accounts.iter().filter_map(|a| {
        let state = model_state(a.state)?;
        let w = a.quota.as_ref().and_then(&window).map(|w| {
            let evidence = WindowEvidence {
                used_percent: w.used_percent,
                resets_at_unix: w.resets_at_unix,
                ..WindowEvidence::default()
            };
            MemberWindow {
                used_percent: effective_used(&evidence, now_unix),
                resets_at_unix: w.resets_at_unix,
            }
        });
        Some((state, a.weight.max(1), w))
    });
    headroom::headroom(members, now_unix)
}

/// Everything computed at scrape time.
#[derive(Debug)]
struct Live {
    snapshots: watch::Receiver<Arc<pb::Snapshot>>,
    envoys: Envoys,
    traffic: Arc<Mutex<Traffic>>,
}

/// One metric family: a descriptor and its series (label pairs, value).
fn family<V: Copy>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: &[(Vec<(&'static str, String)>, V)],
    encode: impl Fn(V, prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    match series {
        // Without labels: one sample, `name value` (not `name{} value`).
        [(labels, value)] if labels.is_empty() => encode(*value, metric),
        _ => {
            for (labels, value) in series {
                encode(*value, metric.encode_family(labels)?)?;
            }
            Ok(())
        }
    }
}

fn gauge(value: i64, encoder: prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result {
    ConstGauge::new(value).encode(encoder)
}

fn ratio(value: f64, encoder: prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result {
    ConstGauge::new(value).encode(encoder)
}

fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

fn counter(
    value: u64,
    encoder: prometheus_client::encoding::MetricEncoder<'_>,
) -> std::fmt::Result {
    ConstCounter::new(value).encode(encoder)
}

/// The versions `codexmesh_envoy_snapshot_version` shows per Envoy, by `kind`.
type VersionOf = fn(&EnvoyView) -> Option<u64>;
const VERSION_KINDS: [(&str, VersionOf); 4] = [
    ("sent", |v| v.sent_version),
    ("running", |v| v.running_version),
    ("acked", |v| v.acked_version),
    ("nacked", |v| v.nacked_version),
];

/// Per node id and kind: the newest version over all of the node's streams.
fn envoy_versions(list: &[EnvoyView]) -> BTreeMap<(String, &'static str), u64> {
    let mut out = BTreeMap::new();
    for v in list {
        for (kind, version_of) in VERSION_KINDS {
            if let Some(version) = version_of(v) {
                let e = out.entry((v.node_id.clone(), kind)).or_insert(version);
                *e = (*e).max(version);
            }
        }
    }
    out
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let snapshot = Arc::clone(&*self.snapshots.borrow());
        let now_unix = now_ms() / 1000;

        family(
            &mut encoder,
            "snapshot_version",
            "The newest snapshot version this control plane built (the store revision)",
            MetricType::Gauge,
            &[(Vec::new(), int(snapshot.version))],
            gauge,
        )?;

        let envoys = self.envoys.list();
        family(
            &mut encoder,
            "envoys_connected",
            "Envoy Subscribe streams open to this control plane",
            MetricType::Gauge,
            &[(Vec::new(), int(envoys.len()))],
            gauge,
        )?;
        let mut versions = Vec::new();
        for ((node, kind), version) in envoy_versions(&envoys) {
            versions.push((
                vec![("node", escape_label(&node)), ("kind", kind.to_owned())],
                int(version),
            ));
        }
        family(
            &mut encoder,
            "envoy_snapshot_version",
            "Per connected Envoy (node id): the newest snapshot version sent to it, the one its \
             outcome reports say it runs, the one its filter accepted (acked) and the last it rejected \
             (nacked)",
            MetricType::Gauge,
            &versions,
            gauge,
        )?;

        let mut pools: Vec<&pb::Pool> = snapshot.pools.iter().collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        let mut states = Vec::new();
        let mut headroom = Vec::new();
        for pool in &pools {
            let name = escape_label(&pool.name);
            for state in AccountState::ALL {
                let n = pool
                    .accounts
                    .iter()
                    .filter(|a| model_state(a.state) == Some(*state))
                    .count();
                states.push((
                    vec![("pool", name.clone()), ("state", state.as_str().to_owned())],
                    int(n),
                ));
            }
            let windows = [
                (
                    "primary",
                    pool_headroom(pool, |q| q.primary.as_ref(), now_unix),
                ),
                (
                    "secondary",
                    pool_headroom(pool, |q| q.secondary.as_ref(), now_unix),
                ),
            ];
            for (window, h) in windows {
                if let Some(percent) = h.headroom_percent {
                    headroom.push((
                        vec![("pool", name.clone()), ("window", window.to_owned())],
                        percent,
                    ));
                }
            }
        }
        family(
            &mut encoder,
            "accounts",
            "Members of each pool by state (an account in two pools counts in both)",
            MetricType::Gauge,
            &states,
            gauge,
        )?;
        family(
            &mut encoder,
            "pool_headroom_percent",
            "What is left of a quota window across a pool: the weight-weighted mean of 100 - \
             used % over its active accounts with evidence (absent without evidence)",
            MetricType::Gauge,
            &headroom,
            ratio,
        )?;

        let (requests, failovers) = self.traffic_series(&pools);
        family(
            &mut encoder,
            "requests",
            "Upstream attempts reported by the Envoys, by pool, account and outcome",
            MetricType::Counter,
            &requests,
            counter,
        )?;
        family(
            &mut encoder,
            "failovers",
            "Attempts an account served after another account of the request had failed",
            MetricType::Counter,
            &failovers,
            counter,
        )
    }
}

type Series = Vec<(Vec<(&'static str, String)>, u64)>;

impl Live {
    /// The traffic counters of the accounts the snapshot knows, named; the rest are dropped.
    fn traffic_series(&self, pools: &[&pb::Pool]) -> (Series, Series) {
        let mut names: HashMap<(&str, &str), (&str, &str)> = HashMap::new();
        for pool in pools {
            for a in &pool.accounts {
                names.insert(
                    (pool.id.as_str(), a.id.as_str()),
                    (pool.name.as_str(), a.label.as_str()),
                );
            }
        }
        let mut rows: Vec<((&str, &str, String), AccountTraffic)> = Vec::new();
        {
            let mut traffic = lock(&self.traffic);
            traffic
                .by_account
                .retain(|(p, a), _| names.contains_key(&(p.as_str(), a.as_str())));
            for ((pool_id, account_id), t) in &traffic.by_account {
                if let Some((pool, label)) = names.get(&(pool_id.as_str(), account_id.as_str())) {
                    rows.push(((*pool, *label, account_id.clone()), *t));
                }
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let mut requests = Vec::new();
        let mut failovers = Vec::new();
        for ((pool, label, id), t) in rows {
            let base = vec![
                ("pool", escape_label(pool)),
                ("account", escape_label(label)),
                ("account_id", escape_label(&id)),
            ];
            for o in TrafficOutcome::ALL {
                let mut labels = base.clone();
                labels.push(("outcome", o.as_str().to_owned()));
                requests.push((labels, t.outcomes[o.index()]));
            }
            failovers.push((base, t.failovers));
        }
        (requests, failovers)
    }
}

/// Why the server is not ready (`GET /readyz` answers 503 with this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("no snapshot has been built yet")]
    NoSnapshot,
    #[error("the store did not answer within {} ms", READY_STORE_TIMEOUT.as_millis())]
    StoreTimeout,
    #[error("the store is unavailable")]
    StoreUnavailable,
}

impl NotReady {
    /// A stable code for the JSON answer.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ShuttingDown => "shutting_down",
            Self::NoSnapshot => "no_snapshot",
            Self::StoreTimeout => "store_timeout",
            Self::StoreUnavailable => "store_unavailable",
        }
    }
}

/// Ready: not shutting down, a snapshot built, and the store answers a cheap query (its
/// revision) within `timeout`.
pub async fn readiness(
    store: &Store,
    snapshot: &pb::Snapshot,
    shutting_down: bool,
    timeout: Duration,
) -> Result<(), NotReady> {
    if shutting_down {
        return Err(NotReady::ShuttingDown);
    }
    if snapshot.generated_at_unix_ms <= 0 {
        return Err(NotReady::NoSnapshot);
    }
    match tokio::time::timeout(timeout, store.revision()).await {
        Err(_) => Err(NotReady::StoreTimeout),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the store did not answer");
            Err(NotReady::StoreUnavailable)
        }
        Ok(Ok(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn account(id: &str, label: &str, state: pb::AccountState, used: Option<f64>) -> pb::Account {
        pb::Account {
            id: id.into(),
            label: label.into(),
            state: state as i32,
            weight: 1,
            access_token: "secret-token-never-a-label".into(),
            quota: used.map(|u| pb::QuotaSummary {
                primary: Some(pb::QuotaWindow {
                    used_percent: u,
                    window_minutes: 300,
                    resets_at_unix: 0,
                }),
                secondary: None,
                observed_at_unix_ms: 1,
            }),
            ..pb::Account::default()
        }
    }

    fn snapshot(version: u64, pools: Vec<pb::Pool>) -> Arc<pb::Snapshot> {
        Arc::new(pb::Snapshot {
            version,
            generated_at_unix_ms: 1,
            pools,
            control_plane_id: "cp".into(),
            ..pb::Snapshot::default()
        })
    }

    fn team() -> pb::Pool {
        pb::Pool {
            id: "pool-1".into(),
            name: "te\"am".into(),
            accounts: vec![
                account("a1", "alice", pb::AccountState::Active, Some(20.0)),
                account("a2", "bob", pb::AccountState::Active, Some(60.0)),
                account("a3", "carol", pb::AccountState::NeedsReauth, None),
            ],
            ..pb::Pool::default()
        }
    }

    fn outcome(
        pool: &str,
        account: &str,
        status: i64,
        source: &str,
        fallback: bool,
    ) -> OutcomeRecord {
        OutcomeRecord {
            pool_id: pool.into(),
            account_id: account.into(),
            status,
            error_source: (!source.is_empty()).then(|| source.to_owned()),
            fallback,
            ..OutcomeRecord::default()
        }
    }

    fn line<'a>(text: &'a str, start: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(start))
    }

    #[test]
    fn outcomes_fall_into_a_small_fixed_set() {
        assert_eq!(TrafficOutcome::of(200, None), TrafficOutcome::Success);
        assert_eq!(
            TrafficOutcome::of(429, Some("upstream")),
            TrafficOutcome::RateLimited
        );
        assert_eq!(TrafficOutcome::of(400, None), TrafficOutcome::ClientError);
        assert_eq!(
            TrafficOutcome::of(0, Some("client")),
            TrafficOutcome::ClientError
        );
        assert_eq!(
            TrafficOutcome::of(503, Some("upstream")),
            TrafficOutcome::UpstreamError
        );
        assert_eq!(TrafficOutcome::of(401, None), TrafficOutcome::UpstreamError);
        assert_eq!(
            TrafficOutcome::of(0, Some("transport")),
            TrafficOutcome::Transport
        );
        assert_eq!(TrafficOutcome::of(0, None), TrafficOutcome::Transport);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny\u{7}"), "x\\ny");
    }

    #[test]
    fn a_scrape_names_pools_accounts_and_traffic_from_the_snapshot() -> TestResult {
        let (tx, rx) = watch::channel(snapshot(7, vec![team()]));
        let envoys = Envoys::default();
        let metrics = Metrics::new(rx, envoys.clone());
        let text = metrics.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for outcome in ["ok", "failed", "needs_reauth"] {
            let want = format!("codexmesh_token_refreshes_total{{outcome=\"{outcome}\"}} 0");
            assert!(text.contains(&want), "{want} in {text}");
        }
        assert!(
            line(&text, "codexmesh_snapshot_version 7").is_some(),
            "{text}"
        );
        assert!(
            line(&text, "codexmesh_envoys_connected 0").is_some(),
            "{text}"
        );
        assert!(
            text.contains(r#"codexmesh_accounts{pool="te\"am",state="active"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"codexmesh_accounts{pool="te\"am",state="needs_reauth"} 1"#),
            "{text}"
        );
        // (80 + 40) / 2 over the two active accounts with evidence; no secondary evidence.
        assert!(
            text.contains(r#"codexmesh_pool_headroom_percent{pool="te\"am",window="primary"} 60"#),
            "{text}"
        );
        assert!(!text.contains("window=\"secondary\""), "{text}");
        assert!(!text.contains("secret-token"), "no token in the output");

        // Traffic moves the counters; an id the snapshot does not know is not shown.
        metrics.reported(Tally::of(&[
            outcome("pool-1", "a1", 200, "", false),
            outcome("pool-1", "a1", 429, "upstream", false),
            outcome("pool-1", "a2", 200, "", true),
            outcome("pool-1", "ghost", 200, "", false),
            outcome("", "a1", 200, "", false),
        ]));
        metrics.refresh(RefreshOutcome::Ok);
        metrics.quota_poll(PollOutcome::Unauthorized);
        metrics.pushed();
        let registration = envoys.register("node-1".into(), "peer".into(), "b".into(), 0);
        registration.sent(7);
        envoys.reported("node-1", 6);
        for (version, accepted) in [(6, true), (7, false)] {
            let verdict = codexmesh_store::SnapshotVerdict {
                version,
                accepted,
                detail: (!accepted).then(|| "bad".to_owned()),
                pool_id: None,
                at_ms: 1,
            };
            envoys.verdict_recorded("node-1", &verdict);
        }
        let text = metrics.encode();
        let alice = r#"pool="te\"am",account="alice",account_id="a1""#;
        for (outcome, n) in [("success", 1), ("rate_limited", 1), ("transport", 0)] {
            let want = format!("codexmesh_requests_total{{{alice},outcome=\"{outcome}\"}} {n}");
            assert!(text.contains(&want), "{want} in {text}");
        }
        assert!(
            text.contains(
                r#"codexmesh_failovers_total{pool="te\"am",account="bob",account_id="a2"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"codexmesh_failovers_total{pool="te\"am",account="alice",account_id="a1"} 0"#
            ),
            "{text}"
        );
        assert!(!text.contains("ghost"), "{text}");
        assert!(
            text.contains("codexmesh_token_refreshes_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("codexmesh_quota_polls_total{outcome=\"unauthorized\"} 1"),
            "{text}"
        );
        assert!(text.contains("codexmesh_snapshot_pushes_total 1"), "{text}");
        assert!(
            line(&text, "codexmesh_envoys_connected 1").is_some(),
            "{text}"
        );
        assert!(
            text.contains(r#"codexmesh_envoy_snapshot_version{node="node-1",kind="sent"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"codexmesh_envoy_snapshot_version{node="node-1",kind="running"} 6"#),
            "{text}"
        );
        for (kind, version) in [("acked", 6), ("nacked", 7)] {
            let want = format!(
                "codexmesh_envoy_snapshot_version{{node=\"node-1\",kind=\"{kind}\"}} {version}"
            );
            assert!(text.contains(&want), "{want} in {text}");
        }

        // bob leaves the pool, the pool is renamed: the next scrape follows the snapshot.
        let mut renamed = team();
        renamed.name = "team-b".into();
        renamed.accounts.retain(|a| a.id != "a2");
        tx.send_replace(snapshot(8, vec![renamed]));
        drop(registration);
        let text = metrics.encode();
        assert!(!text.contains("bob"), "{text}");
        assert!(!text.contains("te\\\"am"), "{text}");
        assert!(
            text.contains(r#"codexmesh_requests_total{pool="team-b",account="alice",account_id="a1",outcome="success"} 1"#),
            "{text}"
        );
        assert!(
            line(&text, "codexmesh_envoys_connected 0").is_some(),
            "{text}"
        );
        assert!(!text.contains("envoy_snapshot_version{"), "{text}");
        assert_eq!(
            lock(&metrics.inner.traffic).by_account.len(),
            1,
            "bob's counts are dropped"
        );
        Ok(())
    }

    #[test]
    fn traffic_of_unknown_ids_is_bounded() {
        let (_tx, rx) = watch::channel(snapshot(1, vec![]));
        let metrics = Metrics::new(rx, Envoys::default());
        let many: Vec<OutcomeRecord> = (0..MAX_TRAFFIC_SERIES + 10)
            .map(|i| outcome("p", &format!("a{i}"), 200, "", false))
            .collect();
        metrics.reported(Tally::of(&many));
        assert_eq!(
            lock(&metrics.inner.traffic).by_account.len(),
            MAX_TRAFFIC_SERIES
        );
        // A scrape drops what no snapshot knows.
        let _ = metrics.encode();
        assert!(lock(&metrics.inner.traffic).by_account.is_empty());
    }

    #[tokio::test]
    async fn readiness_needs_a_snapshot_a_store_and_no_shutdown() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&format!("sqlite://{}", dir.path().join("s.db").display())).await?;
        let built = snapshot(1, vec![]);
        let timeout = READY_STORE_TIMEOUT;
        assert_eq!(readiness(&store, &built, false, timeout).await, Ok(()));
        assert_eq!(
            readiness(&store, &built, true, timeout).await,
            Err(NotReady::ShuttingDown)
        );
        let none = pb::Snapshot::default();
        assert_eq!(
            readiness(&store, &none, false, timeout).await,
            Err(NotReady::NoSnapshot)
        );
        store.close().await;
        assert_eq!(
            readiness(&store, &built, false, timeout).await,
            Err(NotReady::StoreUnavailable)
        );
        Ok(())
    }
}
