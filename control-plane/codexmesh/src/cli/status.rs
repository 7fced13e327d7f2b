//! `codexmesh status`: pools, accounts (provider, quota windows of that provider, health,
//! counters) and key counts, and per Envoy
//! node the snapshot version its filter accepted, whether that is the newest, and its last
//! rejection with the reason.

use super::output::{expires_in, opt};
use super::{notify, CliError, Ctx};
use codexmesh_engine::ops::reports::{self, AccountStatus, EnvoyStatus, WindowView};
use codexmesh_model::util::{self, now_ms};
use codexmesh_store::Strategy;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn execute(_args: Args, ctx: &Ctx) -> Result<(), CliError> {
    let out = &ctx.out;
    let report = notify(reports::status(&ctx.ops).await?);
    if out.json {
        return out.json(&report);
    }
    if report.pools.is_empty() {
        out.line("no pools yet: codexmesh pool create NAME (or codexmesh up)")?;
        return envoys(out, &report.envoys, now_ms());
    }
    let now = now_ms();
    let mut rows = Vec::new();
    for p in &report.pools {
        if p.accounts.is_empty() {
            let mut row = vec![p.pool.name.clone(), "(no accounts)".to_owned()];
            row.resize(11, String::new());
            rows.push(row);
        }
        for s in &p.accounts {
            let a = &s.account;
            rows.push(vec![
                p.pool.name.clone(),
                a.label.clone(),
                super::account::provider_display(a),
                a.chatgpt_account_id.clone(),
                opt(&a.plan),
                a.state_display(),
                expires_in(a, now),
                quota_bars(s),
                resets(s),
                s.health.score.to_string(),
                format!(
                    "{}/{}/{}",
                    s.counters.requests, s.counters.successes, s.counters.fallbacks_served
                ),
            ]);
        }
    }
    out.table(
        &[
            "POOL",
            "ACCOUNT",
            "PROVIDER",
            "LOGIN",
            "PLAN",
            "STATE",
            "TOKEN EXPIRES",
            "QUOTA",
            "RESETS",
            "HEALTH",
            "REQ/OK/FALLBACK",
        ],
        &rows,
    )?;
    out.line("")?;
    for p in &report.pools {
        let r = &p.pool.routing;
        let primary = match (&r.strategy, &r.primary_account_id) {
            (Strategy::PrimaryFirst, Some(id)) => {
                let label = p
                    .accounts
                    .iter()
                    .find(|a| &a.account.id == id)
                    .map_or(id.as_str(), |a| a.account.label.as_str());
                format!(" (primary {label})")
            }
            _ => String::new(),
        };
        out.line(&format!(
            "pool {}: strategy {}{primary}, {} active key(s), {} revoked",
            p.pool.name, r.strategy, p.keys.active, p.keys.revoked
        ))?;
    }
    envoys(out, &report.envoys, now)?;
    out.line(&format!("store revision {}", report.revision))
}

/// Per Envoy node: the version it accepted and when, in sync or behind, the last rejection.
fn envoys(out: &super::output::Output, envoys: &[EnvoyStatus], now: i64) -> Result<(), CliError> {
    if envoys.is_empty() {
        return Ok(());
    }
    let ago = |at: i64| format!("{} ago", util::human_span_ms(&now.saturating_sub(at)));
    let rows: Vec<Vec<String>> = envoys
        .iter()
        .map(|e| {
            let (rejected, reason) = match &e.last_rejection {
                Some(r) => (
                    format!("v{} ({})", r.version, ago(r.at_ms)),
                    r.reason.clone(),
                ),
                None => ("-".to_owned(), String::new()),
            };
            vec![
                e.node_id.clone(),
                match (e.acked_version, e.acked_at_ms) {
                    (Some(v), Some(at)) => format!("v{v} ({})", ago(at)),
                    _ => "-".to_owned(),
                },
                e.sync.as_str().to_owned(),
                rejected,
                reason,
            ]
        })
        .collect();
    out.line("")?;
    out.table(
        &["ENVOY", "ACKED", "SYNC", "LAST REJECTED", "REASON"],
        &rows,
    )?;
    out.line("")
}

/// The windows of the account's provider with their use (`5-hour 42% weekly 7%`, `daily 30%`);
/// an API key has none.
fn quota_bars(a: &AccountStatus) -> String {
    if a.windows.is_empty() {
        return "no subscription windows".to_owned();
    }
    let q = a.quota.as_ref();
    a.windows
        .iter()
        .map(|w| {
            let evidence = q.and_then(|q| match w.window.as_str() {
                "primary" => q.primary.as_ref(),
                _ => q.secondary.as_ref(),
            });
            format!("{} {}", w.label, pct(evidence))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// "42%" for a window as routing sees it, "-" without evidence.
fn pct(w: Option<&WindowView>) -> String {
    w.map_or_else(|| "-".to_owned(), |w| format!("{:.0}%", w.used_percent))
}

/// When the busier window resets ("in 2h 3m"), "-" without evidence.
fn resets(a: &AccountStatus) -> String {
    let Some(q) = &a.quota else {
        return "-".to_owned();
    };
    [q.primary.as_ref(), q.secondary.as_ref()]
        .into_iter()
        .flatten()
        .filter(|w| w.resets_in_secs > 0)
        .max_by(|x, y| x.used_percent.total_cmp(&y.used_percent))
        .map_or_else(
            || "-".to_owned(),
            |w| format!("in {}", util::human_span_ms(&(w.resets_in_secs * 1000))),
        )
}
