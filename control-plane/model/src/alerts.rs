//! Alerts: the conditions the evaluator watches, their episodes, and what a webhook receives.
//!
//! Rules this module keeps:
//! - a condition is identified by (kind, subject): the account id, the pool name or the Envoy
//!   node id it is about; an **episode** is one stretch of time during which it held;
//! - [`reconcile`] is the whole state machine: a condition holding without an open episode
//!   opens one (one `firing` delivery); one holding with an open episode does nothing (quiet
//!   while it holds); an open episode whose condition no longer holds closes (one `resolved`
//!   delivery). So each alert fires once per episode and clears once;
//! - a delivery body carries metadata only (kind, subject, pool, severity, state, times and a
//!   message written from names and numbers), never a token, key or secret;
//! - the webhook signing secret (`whsec_` + 32 alphanumerics from the OS CSPRNG) is shown once;
//!   `Debug` redacts it and it is not `Serialize`.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::util::{self, RandomError};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// An account needs a new login (its refresh token was refused).
    NeedsReauth,
    /// An account's token refresh keeps failing (transient errors, retried with backoff).
    RefreshFailing,
    /// A pool's headroom of a window fell under the threshold.
    HeadroomLow,
    /// No active account of a pool has quota left in some window.
    PoolExhausted,
    /// At the current burn rate a pool's window runs out before its next reset.
    ForecastRunsOut,
    /// A connected Envoy has not acknowledged the newest snapshot for longer than the lag.
    EnvoyNotAcking,
    /// An account names an egress proxy that a connected Envoy has no clusters for: that Envoy
    /// never serves the account.
    EgressProxyMissing,
}

impl AlertKind {
    pub const ALL: [AlertKind; 7] = [
        AlertKind::NeedsReauth,
        AlertKind::RefreshFailing,
        AlertKind::HeadroomLow,
        AlertKind::PoolExhausted,
        AlertKind::ForecastRunsOut,
        AlertKind::EnvoyNotAcking,
        AlertKind::EgressProxyMissing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::NeedsReauth => "needs_reauth",
            AlertKind::RefreshFailing => "refresh_failing",
            AlertKind::HeadroomLow => "headroom_low",
            AlertKind::PoolExhausted => "pool_exhausted",
            AlertKind::ForecastRunsOut => "forecast_runs_out",
            AlertKind::EnvoyNotAcking => "envoy_not_acking",
            AlertKind::EgressProxyMissing => "egress_proxy_missing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// How urgent: `critical` when traffic is (about to be) refused, else `warning`.
    pub fn severity(self) -> Severity {
        match self {
            AlertKind::NeedsReauth
            | AlertKind::PoolExhausted
            | AlertKind::EnvoyNotAcking
            | AlertKind::EgressProxyMissing => Severity::Critical,
            AlertKind::RefreshFailing | AlertKind::HeadroomLow | AlertKind::ForecastRunsOut => {
                Severity::Warning
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// A delivery's state: the episode opened, or it cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "firing" => Some(AlertState::Firing),
            "resolved" => Some(AlertState::Resolved),
            _ => None,
        }
    }
}

/// A condition that holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: AlertKind,
    /// The account id, pool name or Envoy node id it is about.
    pub subject: String,
    /// The pool it concerns (None: an Envoy, which belongs to no pool; an account's alert
    /// names one pool per membership, see the evaluator).
    pub pool: Option<String>,
    /// For people: names and numbers only.
    pub message: String,
}

/// An episode that is open (its condition held when last evaluated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenEpisode {
    pub id: String,
    pub kind: AlertKind,
    pub subject: String,
}

/// What one evaluation changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Conditions that hold with no open episode: open one each (and fire).
    pub open: Vec<Condition>,
    /// Open episodes whose condition no longer holds: close each (and resolve).
    pub close: Vec<String>,
}

/// The episode state machine: compares the open episodes with the conditions holding now.
/// A condition listed twice counts once.
pub fn reconcile(open: &[OpenEpisode], holding: &[Condition]) -> Reconciled {
    let open_keys: BTreeSet<(AlertKind, &str)> =
        open.iter().map(|e| (e.kind, e.subject.as_str())).collect();
    let holding_keys: BTreeSet<(AlertKind, &str)> = holding
        .iter()
        .map(|c| (c.kind, c.subject.as_str()))
        .collect();
    let mut seen = BTreeSet::new();
    Reconciled {
        open: holding
            .iter()
            .filter(|c| !open_keys.contains(&(c.kind, c.subject.as_str())))
            .filter(|c| seen.insert((c.kind, c.subject.clone())))
            .cloned()
            .collect(),
        close: open
            .iter()
            .filter(|e| !holding_keys.contains(&(e.kind, e.subject.as_str())))
            .map(|e| e.id.clone())
            .collect(),
    }
}

/// What a webhook receives (JSON): metadata only.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AlertPayload {
    /// The episode's id: a firing and its resolved share it.
    pub episode: String,
    pub kind: AlertKind,
    pub subject: String,
    pub pool: Option<String>,
    pub severity: Severity,
    pub state: AlertState,
    /// When the episode opened (Unix ms).
    pub opened_at: i64,
    /// When it cleared (Unix ms; resolved only).
    pub closed_at: Option<i64>,
    pub message: String,
}

/// The header a delivery is signed in.
pub const SIGNATURE_HEADER: &str = "x-codexmesh-signature";

/// The webhook signing secret's prefix.
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";
const SECRET_RANDOM_LEN: usize = 32;

/// A new webhook signing secret: shown once, stored sealed.
pub struct WebhookSecret(String);

impl WebhookSecret {
    pub fn generate() -> Result<Self, RandomError> {
        Ok(Self(format!(
            "{WEBHOOK_SECRET_PREFIX}{}",
            util::random_alnum(SECRET_RANDOM_LEN)?
        )))
    }

    /// A secret read back from the store.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// A webhook alerts are delivered to (its secret is never part of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Webhook {
    pub id: String,
    pub name: String,
    /// The URL's origin only (`https://hooks.example.com/…`): a path may carry a token.
    pub url: String,
    /// Only alerts about this pool (None: every alert the evaluator raises).
    pub pool: Option<String>,
    pub created_at_ms: i64,
    /// The latest delivery attempt: when, its HTTP status (0: no answer) and error.
    pub last_delivery_at_ms: Option<i64>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// An alert episode: one stretch of time a condition held (open while `closed_at_ms` is None).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Episode {
    pub id: String,
    pub kind: AlertKind,
    pub subject: String,
    pub pool: Option<String>,
    pub severity: Severity,
    pub message: String,
    pub opened_at_ms: i64,
    pub closed_at_ms: Option<i64>,
}

/// A URL as shown and audited: its origin, and `/…` when it has a path or query (which may
/// carry a token, as chat webhooks' do).
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "…".to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = &rest[..end];
    // Credentials in the authority are never shown.
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let tail = &rest[end..];
    if tail.is_empty() || tail == "/" {
        format!("{scheme}://{host}{tail}")
    } else {
        format!("{scheme}://{host}/…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(kind: AlertKind, subject: &str) -> Condition {
        Condition {
            kind,
            subject: subject.into(),
            pool: Some("team".into()),
            message: format!("{} {subject}", kind.as_str()),
        }
    }

    fn episode(id: &str, kind: AlertKind, subject: &str) -> OpenEpisode {
        OpenEpisode {
            id: id.into(),
            kind,
            subject: subject.into(),
        }
    }

    #[test]
    fn an_episode_opens_once_stays_quiet_and_clears_once() {
        let reauth = cond(AlertKind::NeedsReauth, "acc_1");
        // The condition appears: one episode opens.
        let first = reconcile(&[], std::slice::from_ref(&reauth));
        assert_eq!(first.open, vec![reauth.clone()]);
        assert!(first.close.is_empty());
        // It still holds while the episode is open: nothing to do.
        let open = [episode("ep_1", AlertKind::NeedsReauth, "acc_1")];
        assert_eq!(
            reconcile(&open, std::slice::from_ref(&reauth)),
            Reconciled::default()
        );
        // It clears: the episode closes.
        let cleared = reconcile(&open, &[]);
        assert!(cleared.open.is_empty());
        assert_eq!(cleared.close, vec!["ep_1".to_owned()]);
        // Closed and back again: a new episode.
        assert_eq!(
            reconcile(&[], std::slice::from_ref(&reauth)).open,
            vec![reauth]
        );
    }

    #[test]
    fn conditions_are_told_apart_by_kind_and_subject() {
        let open = [episode("ep_1", AlertKind::HeadroomLow, "team")];
        let holding = [
            cond(AlertKind::PoolExhausted, "team"),
            cond(AlertKind::HeadroomLow, "other"),
            cond(AlertKind::HeadroomLow, "other"),
        ];
        let r = reconcile(&open, &holding);
        let opened: Vec<(AlertKind, &str)> = r
            .open
            .iter()
            .map(|c| (c.kind, c.subject.as_str()))
            .collect();
        assert_eq!(
            opened,
            [
                (AlertKind::PoolExhausted, "team"),
                (AlertKind::HeadroomLow, "other")
            ]
        );
        assert_eq!(r.close, vec!["ep_1".to_owned()]);
    }

    #[test]
    fn urls_show_their_origin_only() {
        assert_eq!(
            shown_url("https://h.example/services/T0/B0/xyz"),
            "https://h.example/…"
        );
        assert_eq!(
            shown_url("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(
            shown_url("https://u:p@h.example?t=1"),
            "https://h.example/…"
        );
        assert_eq!(shown_url("nonsense"), "…");
    }

    #[test]
    fn kinds_round_trip_and_secrets_do_not_show() -> Result<(), RandomError> {
        for k in AlertKind::ALL {
            assert_eq!(AlertKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(AlertKind::parse("nope"), None);
        let s = WebhookSecret::generate()?;
        assert!(s.expose().starts_with(WEBHOOK_SECRET_PREFIX));
        assert_eq!(
            s.expose().len(),
            WEBHOOK_SECRET_PREFIX.len() + SECRET_RANDOM_LEN
        );
        assert!(!format!("{s:?}").contains(s.expose()));
        Ok(())
    }
}
