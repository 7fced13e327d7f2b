//! `codexmesh pool …`: create, list, set-routing, set-network (the client addresses a pool's
//! keys work from), overview (the dashboard's pools overview) and refresh-quota (its "refresh
//! live state") and forecast (when its windows run out).

use clap::Subcommand;
use serde::Serialize;

use super::output::{change_suffix, routing_text};
use super::{notify, CliError, Ctx, RoutingArgs};
use codexmesh_engine::ops::overview::WindowHeadroom;
use codexmesh_engine::ops::reports::WindowView;
use codexmesh_engine::ops::{forecast, overview, pools, reports, warmup};
use codexmesh_model::forecast::WindowForecast;
use codexmesh_model::network::{parse_cidr, AllowedCidrs, CidrError};
use codexmesh_model::routing::RoutingView;
use codexmesh_model::util;

#[derive(Debug, Subcommand)]
pub enum Args {
    /// Create a pool (name: 1-64 of A-Z a-z 0-9 . _ -)
    Create { name: String },
    /// List pools
    List,
    /// Change how a pool routes requests; only the given settings change. Prints the pool's
    /// effective routing (with no flags: just prints it)
    SetRouting {
        name: String,
        // Boxed: nine optional strings would make every command value this large.
        #[command(flatten)]
        routing: Box<RoutingArgs>,
    },
    /// Set the client addresses the pool's keys work from (others get 403 from the gateway).
    /// Prints the pool's list (with no flags: just prints it)
    SetNetwork {
        name: String,
        /// Admit clients from this CIDR (`10.0.0.0/8`, `2001:db8::/32`) or address; repeat
        /// for several. The flags given replace the whole list
        #[arg(long = "allow-cidr", value_name = "CIDR", value_parser = cidr_arg)]
        allow_cidr: Vec<String>,
        /// Admit any address again (empties the list)
        #[arg(long, conflicts_with = "allow_cidr")]
        clear_allowed_cidrs: bool,
    },
    /// Each pool at a glance: accounts by state, the combined headroom of the 5-hour and weekly
    /// windows with the next reset, and the last hour's requests, errors and failovers
    Overview,
    /// Poll the usage of a pool's accounts now (at most once per pool every 10 s) and print
    /// their quota windows
    RefreshQuota { name: String },
    /// When the pool's 5-hour and weekly windows run out at the current burn rate, and whether
    /// that is before their next reset
    Forecast { name: String },
    /// Warm the pool's accounts up daily: at --at (UTC) each active account gets one minimal
    /// request, so its 5-hour window starts then. With no flags: prints the schedule
    Warmup {
        name: String,
        /// Time of day, HH:MM, UTC
        #[arg(long, value_name = "HH:MM", conflicts_with = "off")]
        at: Option<String>,
        /// Only on these days: mon-fri, sat,sun, all (default)
        #[arg(long, value_name = "DAYS", requires = "at")]
        weekdays: Option<String>,
        /// Turn warm-up off (the time is kept)
        #[arg(long)]
        off: bool,
    },
}

/// `{"pool", <effective routing>}`.
#[derive(Serialize)]
struct PoolRoutingJson<'a> {
    pool: &'a str,
    #[serde(flatten)]
    routing: &'a RoutingView,
}

pub async fn execute(args: Args, ctx: &Ctx) -> Result<(), CliError> {
    let out = &ctx.out;
    match args {
        Args::Create { name } => {
            let pool = notify(pools::create(&ctx.ops, &name).await?);
            if out.json {
                out.json(&pool)
            } else {
                out.line(&format!("created pool {} ({})", pool.name, pool.id))
            }
        }
        Args::List => {
            let summaries = notify(pools::list(&ctx.ops).await?);
            if out.json {
                return out.json(&summaries);
            }
            let rows: Vec<Vec<String>> = summaries
                .iter()
                .map(|p| {
                    vec![
                        p.pool.name.clone(),
                        p.pool.id.clone(),
                        p.pool.routing.strategy.to_string(),
                        p.accounts.to_string(),
                        format!("{} active, {} revoked", p.keys.active, p.keys.revoked),
                        util::fmt_utc_ms(p.pool.created_at_ms),
                    ]
                })
                .collect();
            if rows.is_empty() {
                return out.line("no pools yet: codexmesh pool create NAME");
            }
            out.table(
                &["POOL", "ID", "STRATEGY", "ACCOUNTS", "KEYS", "CREATED"],
                &rows,
            )
        }
        Args::SetRouting { name, routing } => {
            // Parse and check every flag before touching the store: bad input changes nothing.
            let patch = routing.patch()?;
            let r = notify(pools::set_routing(&ctx.ops, &name, &patch).await?);
            if out.json {
                return out.json(&PoolRoutingJson {
                    pool: &r.pool.name,
                    routing: &r.routing,
                });
            }
            let what = change_suffix(r.requested, r.changed);
            out.line(&format!("pool {} routing{what}:", r.pool.name))?;
            out.line(&routing_text(&r.routing))
        }
        Args::SetNetwork {
            name,
            allow_cidr,
            clear_allowed_cidrs,
        } => {
            let allowed = if clear_allowed_cidrs {
                Some(AllowedCidrs::default())
            } else if allow_cidr.is_empty() {
                None
            } else {
                Some(AllowedCidrs::parse(&allow_cidr).map_err(|e: CidrError| {
                    CliError::Usage(format!("invalid --allow-cidr: {e}"))
                })?)
            };
            let r = notify(pools::set_network(&ctx.ops, &name, allowed.as_ref()).await?);
            if out.json {
                return out.json(&r);
            }
            let what = change_suffix(allowed.is_some(), r.changed);
            let list = &r.item.allowed_cidrs;
            out.line(&format!(
                "pool {} allowed client addresses{what}: {}",
                r.item.name,
                if list.is_empty() {
                    "any".to_owned()
                } else {
                    list.to_strings().join(", ")
                }
            ))
        }
        Args::Overview => {
            let o = notify(overview::overview(&ctx.ops).await?);
            if out.json {
                return out.json(&o);
            }
            if o.pools.is_empty() {
                return out.line("no pools yet: codexmesh pool create NAME");
            }
            let rows: Vec<Vec<String>> = o
                .pools
                .iter()
                .map(|p| {
                    let a = &p.accounts;
                    vec![
                        p.pool.clone(),
                        format!(
                            "{} ({} active, {} paused, {} cooling, {} re-login)",
                            a.total, a.active, a.paused, a.cooling_down, a.needs_reauth
                        ),
                        headroom(&p.primary),
                        headroom(&p.secondary),
                        format!(
                            "{}/{}/{}",
                            p.last_hour.requests, p.last_hour.errors, p.last_hour.failovers
                        ),
                    ]
                })
                .collect();
            out.table(
                &[
                    "POOL",
                    "ACCOUNTS",
                    "5H LEFT",
                    "WEEK LEFT",
                    "LAST HOUR REQ/ERR/FAILOVER",
                ],
                &rows,
            )
        }
        Args::RefreshQuota { name } => {
            let r = notify(reports::refresh_quota(&ctx.ops, &name).await?);
            if out.json {
                return out.json(&r);
            }
            if r.cooldown {
                out.line(&format!(
                    "pool {name} was refreshed moments ago: nothing polled now"
                ))?;
            } else {
                out.line(&format!(
                    "polled {} account(s) of pool {name}, {} without an answer",
                    r.polled, r.failed
                ))?;
            }
            let rows: Vec<Vec<String>> = r
                .accounts
                .iter()
                .map(|a| {
                    vec![
                        a.label.clone(),
                        a.state.to_string(),
                        window(a.primary.as_ref()),
                        window(a.secondary.as_ref()),
                    ]
                })
                .collect();
            out.table(&["ACCOUNT", "STATE", "5H USED", "WEEK USED"], &rows)
        }
        Args::Warmup {
            name,
            at,
            weekdays,
            off,
        } => {
            let change = match (at, off) {
                (Some(at), _) => Some(warmup::WarmupChange::On { at, weekdays }),
                (None, true) => Some(warmup::WarmupChange::Off),
                (None, false) => None,
            };
            let v = match &change {
                Some(c) => notify(warmup::set(&ctx.ops, &name, c).await?),
                None => notify(warmup::get(&ctx.ops, &name).await?),
            };
            if out.json {
                return out.json(&v);
            }
            match (&v.at, v.enabled) {
                (Some(at), true) => out.line(&format!(
                    "pool {} warm-up: on, at {at} UTC on {}{}",
                    v.pool,
                    v.weekdays.as_deref().unwrap_or("all"),
                    v.last_run_ms
                        .map(|t| format!(" (last ran {})", util::fmt_utc_ms(t)))
                        .unwrap_or_default()
                )),
                _ => out.line(&format!("pool {} warm-up: off", v.pool)),
            }
        }
        Args::Forecast { name } => {
            let f = notify(forecast::forecast(&ctx.ops, &name).await?);
            if out.json {
                return out.json(&f);
            }
            let rows: Vec<Vec<String>> = [("5-hour", &f.primary), ("weekly", &f.secondary)]
                .iter()
                .map(|(label, w)| forecast_row(label, w))
                .collect();
            out.line(&format!("pool {} forecast:", f.pool))?;
            out.table(
                &[
                    "WINDOW",
                    "USED",
                    "BURN",
                    "RUNS OUT",
                    "NEXT RESET",
                    "BEFORE RESET",
                ],
                &rows,
            )
        }
    }
}

/// One window's forecast for the table: unknowns spelled out.
fn forecast_row(label: &str, w: &WindowForecast) -> Vec<String> {
    let when = |t: Option<i64>| t.map_or_else(|| "-".to_owned(), |t| util::fmt_utc_ms(t * 1000));
    vec![
        label.to_owned(),
        w.used_percent
            .map_or_else(|| "unknown".to_owned(), |u| format!("{u:.0}%")),
        w.burn_percent_per_hour
            .map_or_else(|| "unknown".to_owned(), |b| format!("{b:.1}%/h")),
        match (w.runs_out_at_unix, w.burn_percent_per_hour) {
            (Some(t), _) => when(Some(t)),
            (None, Some(_)) => "not at this rate".to_owned(),
            (None, None) => "unknown".to_owned(),
        },
        when(w.next_reset_unix),
        if w.runs_out_before_reset { "yes" } else { "no" }.to_owned(),
    ]
}

/// One `--allow-cidr` value, checked as clap reads it (a bad one exits 2 like any bad flag).
fn cidr_arg(text: &str) -> Result<String, String> {
    parse_cidr(text)
        .map(|net| net.to_string())
        .map_err(|problem| {
            CidrError {
                index: 0,
                value: text.to_owned(),
                problem,
            }
            .to_string()
        })
}

/// `62% (resets 2026-12-02 14:00:00 UTC)`, or `unknown` before any evidence.
fn headroom(h: &WindowHeadroom) -> String {
    match (h.headroom_percent, h.earliest_reset_unix) {
        (Some(p), Some(reset)) => format!("{p:.0}% (resets {})", util::fmt_utc_ms(reset * 1000)),
        (Some(p), None) => format!("{p:.0}%"),
        (None, _) => "unknown".to_owned(),
    }
}

fn window(w: Option<&WindowView>) -> String {
    w.map_or_else(
        || "unknown".to_owned(),
        |w| format!("{:.0}%", w.used_percent),
    )
}
