//! The pools overview (read only): per pool the caller sees, how much quota is left, how its
//! accounts stand, and what it served in the last hour — the dashboard's first page, in one
//! answer.
//!
//! Rules: built from the status report and the activity use case (no query of its own), so it
//! shows exactly what those show the same principal: its pools only (archived ones left out),
//! each account with the pool's weight. Headroom is defined once, in
//! [`codexmesh_model::headroom`] (which `/metrics` shows too). `primary`/`secondary` cover every
//! member; `providers` splits a mixed pool by provider, each with that provider's windows.
//! Nothing is written.

use serde::Serialize;

use super::activity::ActivityRequest;
use super::{Ops, OpsError, Outcome};
use crate::status::{
    provider_windows, AccountStatus, PoolStatus, QuotaView, WindowName, WindowView,
};
pub use codexmesh_model::headroom::WindowHeadroom;
use codexmesh_model::headroom::{headroom, MemberWindow};
use codexmesh_model::records::{AccountState, CredentialKind, Provider};
use codexmesh_model::util::now_ms;

/// The activity window of the overview.
pub const OVERVIEW_SINCE: &str = "1h";

/// Every visible pool's overview.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// The store revision the overview is at least as new as.
    pub revision: i64,
    pub generated_at_ms: i64,
    /// Pools by name (archived pools are left out).
    pub pools: Vec<PoolOverview>,
}

/// One pool at a glance.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolOverview {
    pub pool: String,
    pub accounts: StateCounts,
    /// The 5-hour window.
    pub primary: WindowHeadroom,
    /// The weekly window.
    pub secondary: WindowHeadroom,
    /// Per provider of its members (each with that provider's windows; API-key accounts,
    /// which have none, count in `accounts` only): what a mixed pool has left for each client.
    pub providers: Vec<ProviderHeadroom>,
    /// The request log over the last hour.
    pub last_hour: HourActivity,
    /// The client addresses (CIDRs) the pool's keys work from; empty: any.
    pub allowed_cidrs: codexmesh_store::AllowedCidrs,
    /// When its windows run out at the current burn rate ([`super::forecast`]).
    pub forecast: super::forecast::PoolForecast,
}

/// A pool's members of one provider and their combined headroom per window of that provider.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProviderHeadroom {
    pub provider: Provider,
    pub accounts: StateCounts,
    pub windows: Vec<NamedHeadroom>,
}

/// One window of a provider (`label`: `5-hour`, `weekly`, `7-day`, `daily`) and its headroom.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NamedHeadroom {
    #[serde(flatten)]
    pub name: WindowName,
    pub headroom: WindowHeadroom,
}

/// Members of the pool by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StateCounts {
    pub total: u32,
    pub active: u32,
    pub paused: u32,
    pub cooling_down: u32,
    pub needs_reauth: u32,
}

/// Requests served in the last hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HourActivity {
    /// Attempts (request-log rows).
    pub requests: u64,
    /// Attempts that did not succeed.
    pub errors: u64,
    /// Attempts that served a request another account had failed first.
    pub failovers: u64,
}

/// The overview of every pool the principal sees.
pub async fn overview(ops: &Ops) -> Result<Outcome<Overview>, OpsError> {
    let now = now_ms();
    let report = super::reports::status(ops).await?.value;
    let mut pools = Vec::new();
    let mut notices = Vec::new();
    let mut live: Vec<&PoolStatus> = report
        .pools
        .iter()
        .filter(|p| p.pool.archived_at_ms.is_none())
        .collect();
    live.sort_by(|a, b| a.pool.name.cmp(&b.pool.name));
    for p in live {
        let activity = super::activity::activity_at(
            ops,
            &ActivityRequest {
                pool: Some(p.pool.name.clone()),
                since: Some(OVERVIEW_SINCE.to_owned()),
                ..ActivityRequest::default()
            },
            now,
        )
        .await?;
        for n in activity.notices {
            if !notices.contains(&n) {
                notices.push(n);
            }
        }
        let total = &activity.value.total;
        pools.push(PoolOverview {
            pool: p.pool.name.clone(),
            accounts: state_counts(p.accounts.iter().map(|a| a.account.state)),
            primary: headroom(members(p, |q| q.primary.as_ref()), now / 1000),
            secondary: headroom(members(p, |q| q.secondary.as_ref()), now / 1000),
            providers: provider_headroom(&p.accounts, now / 1000),
            last_hour: HourActivity {
                requests: total.requests,
                errors: total.errors,
                failovers: total.fallbacks,
            },
            allowed_cidrs: p.pool.allowed_cidrs.clone(),
            forecast: super::forecast::forecast_of(ops.store().await?, p, now).await?,
        });
    }
    Ok(Outcome::with_notices(
        Overview {
            revision: report.revision,
            generated_at_ms: report.generated_at_ms,
            pools,
        },
        notices,
    ))
}

fn state_counts(states: impl Iterator<Item = AccountState>) -> StateCounts {
    let mut c = StateCounts::default();
    for state in states {
        c.total += 1;
        match state {
            AccountState::Active => c.active += 1,
            AccountState::Paused => c.paused += 1,
            AccountState::CoolingDown => c.cooling_down += 1,
            AccountState::NeedsReauth => c.needs_reauth += 1,
        }
    }
    c
}

/// Headroom per provider present in the pool, in `Provider::ALL` order; each window over that
/// provider's subscription accounts only.
fn provider_headroom(members: &[AccountStatus], now_unix: i64) -> Vec<ProviderHeadroom> {
    Provider::ALL
        .iter()
        .filter_map(|&provider| {
            let of = |a: &&AccountStatus| a.account.provider == provider;
            let accounts: Vec<&AccountStatus> = members.iter().filter(of).collect();
            if accounts.is_empty() {
                return None;
            }
            let windows = provider_windows(provider, CredentialKind::Oauth)
                .into_iter()
                .map(|name| {
                    let secondary = name.window == "secondary";
                    let members = accounts
                        .iter()
                        .filter(|a| a.account.credential_kind == CredentialKind::Oauth)
                        .map(|a| {
                            let q = a.quota.as_ref();
                            let w = if secondary {
                                q.and_then(|q| q.secondary.as_ref())
                            } else {
                                q.and_then(|q| q.primary.as_ref())
                            };
                            (a.account.state, a.account.weight, w.map(member_window))
                        });
                    NamedHeadroom {
                        headroom: headroom(members, now_unix),
                        name,
                    }
                })
                .collect();
            Some(ProviderHeadroom {
                provider,
                accounts: state_counts(accounts.iter().map(|a| a.account.state)),
                windows,
            })
        })
        .collect()
}

fn member_window(w: &WindowView) -> MemberWindow {
    MemberWindow {
        used_percent: w.used_percent,
        resets_at_unix: w.resets_at_unix,
    }
}

/// Each member's state, weight in the pool and one window (`window` picks it).
fn members<'a>(
    p: &'a PoolStatus,
    window: impl Fn(&'a QuotaView) -> Option<&'a WindowView> + 'a,
) -> impl Iterator<Item = (AccountState, u32, Option<MemberWindow>)> + 'a {
    p.accounts.iter().map(move |a| {
        (
            a.account.state,
            a.account.weight,
            a.quota.as_ref().and_then(&window).map(member_window),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(used: f64, resets_at_unix: i64) -> WindowView {
        WindowView {
            used_percent: used,
            observed_used_percent: used,
            window_minutes: 300,
            resets_at_unix,
            resets_in_secs: 0,
            observed_at_ms: 0,
            source: "poll".into(),
        }
    }

    #[test]
    fn members_carry_state_weight_and_the_window_routing_sees() {
        let (w20, w100) = (window(20.0, 500), window(100.0, 200));
        let mapped = member_window(&w20);
        assert_eq!((mapped.used_percent, mapped.resets_at_unix), (20.0, 500));
        let pool = [
            (AccountState::Active, 1, Some(member_window(&w20))),
            (AccountState::Paused, 5, Some(member_window(&w100))),
            (AccountState::NeedsReauth, 1, None),
        ];
        // The one formula (codexmesh_model::headroom): only the active account counts.
        assert_eq!(
            headroom(pool.iter().copied(), 100).headroom_percent,
            Some(80.0)
        );
        let c = state_counts(pool.iter().map(|(s, _, _)| *s));
        assert_eq!(
            (c.total, c.active, c.paused, c.needs_reauth, c.cooling_down),
            (3, 1, 1, 1, 0)
        );
    }

    fn member(id: &str, provider: Provider, kind: CredentialKind, used: f64) -> AccountStatus {
        let mut account = codexmesh_model::records::fixtures::account(id);
        account.provider = provider;
        account.credential_kind = kind;
        AccountStatus {
            account,
            windows: provider_windows(provider, kind),
            quota: Some(QuotaView {
                primary: Some(window(used, 0)),
                secondary: None,
                credits: None,
                plan: None,
            }),
            health: crate::status::HealthView {
                score: 100,
                published: 100,
                window_secs: 0,
                window: Default::default(),
            },
            counters: Default::default(),
        }
    }

    #[test]
    fn a_mixed_pool_has_headroom_per_provider() {
        let pool = [
            member("c1", Provider::Codex, CredentialKind::Oauth, 30.0),
            member("a1", Provider::Claude, CredentialKind::Oauth, 90.0),
            member("a2", Provider::Claude, CredentialKind::ApiKey, 0.0),
            member("g1", Provider::Gemini, CredentialKind::Oauth, 50.0),
        ];
        let by = provider_headroom(&pool, 100);
        let names: Vec<Provider> = by.iter().map(|p| p.provider).collect();
        assert_eq!(names, [Provider::Codex, Provider::Claude, Provider::Gemini]);
        let claude = &by[1];
        assert_eq!(claude.accounts.total, 2);
        let labels: Vec<&str> = claude
            .windows
            .iter()
            .map(|w| w.name.label.as_str())
            .collect();
        assert_eq!(labels, ["5-hour", "7-day"]);
        // The API key has no windows: only the subscription account counts.
        assert_eq!(claude.windows[0].headroom.headroom_percent, Some(10.0));
        let gemini = &by[2];
        assert_eq!(gemini.windows.len(), 1);
        assert_eq!(gemini.windows[0].name.label, "daily");
        assert_eq!(gemini.windows[0].headroom.headroom_percent, Some(50.0));
        assert_eq!(by[0].windows[0].headroom.headroom_percent, Some(70.0));
    }
}
