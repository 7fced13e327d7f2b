//! `codexmesh pool …`: create, list, set-routing.

use clap::Subcommand;
use serde::Serialize;

use super::output::{change_suffix, routing_text};
use super::{notify, CliError, Ctx, RoutingArgs};
use codexmesh_engine::ops::pools;
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
    }
}
