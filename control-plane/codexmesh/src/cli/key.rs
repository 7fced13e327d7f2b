//! `codexmesh key …`: create, list, revoke, set-routing.

use clap::Subcommand;
use serde::Serialize;

use super::output::{change_suffix, routing_text};
use super::{notify, CliError, Ctx, RoutingArgs};
use codexmesh_engine::ops::keys;
use codexmesh_model::routing::{RoutingMode, RoutingView};
use codexmesh_model::util;

#[derive(Debug, Subcommand)]
pub enum Args {
    /// Create a pool key; the key is printed once
    Create {
        /// Pool the key gives access to
        #[arg(long)]
        pool: String,
        /// Label (default: key-N)
        #[arg(long)]
        name: Option<String>,
        /// Operator key (may see routing details)
        #[arg(long)]
        operator: bool,
    },
    /// List keys (never the keys themselves)
    List {
        /// Only this pool's keys
        #[arg(long)]
        pool: Option<String>,
    },
    /// Revoke a key
    Revoke {
        #[arg(value_name = "ID|LABEL")]
        key: String,
    },
    /// Give a key its own routing (any routing flag: starts from the pool's current settings)
    /// or make it follow its pool again (--inherit). Prints the key's effective routing
    SetRouting {
        #[arg(value_name = "ID|LABEL")]
        key: String,
        /// Drop the key's own settings: follow the pool's routing
        #[arg(long)]
        inherit: bool,
        // Boxed: nine optional strings would make every command value this large.
        #[command(flatten)]
        routing: Box<RoutingArgs>,
    },
}

#[derive(Serialize)]
struct CreatedKey<'a> {
    id: &'a str,
    pool: &'a str,
    label: &'a str,
    key: &'a str,
    operator: bool,
}

/// `{"key", "label", "pool", "mode", <effective routing>}`.
#[derive(Serialize)]
struct KeyRoutingJson<'a> {
    key: &'a str,
    label: &'a str,
    pool: &'a str,
    mode: RoutingMode,
    #[serde(flatten)]
    routing: &'a RoutingView,
}

pub async fn execute(args: Args, ctx: &Ctx) -> Result<(), CliError> {
    let out = &ctx.out;
    match args {
        Args::Create {
            pool,
            name,
            operator,
        } => {
            let issued = notify(keys::issue(&ctx.ops, &pool, name.as_deref(), operator).await?);
            let (key, raw) = (&issued.key, &issued.secret);
            if out.json {
                return out.json(&CreatedKey {
                    id: &key.id,
                    pool: &key.pool,
                    label: &key.label,
                    key: raw.expose(),
                    operator: key.operator,
                });
            }
            out.line(raw.expose())?;
            eprintln!(
                "created key {} ({}) for pool {}{}. The key above is shown only once: store it now.",
                key.id,
                key.label,
                key.pool,
                if key.operator { " (operator)" } else { "" }
            );
            Ok(())
        }
        Args::List { pool } => {
            let keys = notify(keys::list(&ctx.ops, pool.as_deref()).await?);
            if out.json {
                return out.json(&keys);
            }
            if keys.is_empty() {
                return out.line("no keys: codexmesh key create --pool NAME");
            }
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.pool.clone(),
                        k.id.clone(),
                        k.label.clone(),
                        k.status.to_string(),
                        if k.operator { "yes" } else { "no" }.to_owned(),
                        util::fmt_utc_ms(k.created_at_ms),
                        k.revoked_at_ms
                            .map_or_else(|| "-".to_owned(), util::fmt_utc_ms),
                        match &k.routing_override {
                            Some(r) => format!("custom ({})", r.strategy),
                            None => "inherit".to_owned(),
                        },
                    ]
                })
                .collect();
            out.table(
                &[
                    "POOL", "ID", "LABEL", "STATUS", "OPERATOR", "CREATED", "REVOKED", "ROUTING",
                ],
                &rows,
            )
        }
        Args::Revoke { key } => {
            let result = notify(keys::revoke(&ctx.ops, &key).await?);
            if out.json {
                return out.json(&result);
            }
            let k = &result.item;
            if result.changed {
                out.line(&format!(
                    "revoked key {} ({}) of pool {}",
                    k.id, k.label, k.pool
                ))
            } else {
                out.line(&format!("key {} ({}) was already revoked", k.id, k.label))
            }
        }
        Args::SetRouting {
            key,
            inherit,
            routing,
        } => {
            // Parse and check every flag before touching the store: bad input changes nothing.
            let patch = routing.patch()?;
            let r = notify(keys::set_routing(&ctx.ops, &key, inherit, &patch).await?);
            if out.json {
                return out.json(&KeyRoutingJson {
                    key: &r.key.id,
                    label: &r.key.label,
                    pool: &r.pool.name,
                    mode: r.key.routing_mode,
                    routing: &r.routing,
                });
            }
            let what = change_suffix(r.requested, r.changed);
            let mode = match r.key.routing_mode {
                RoutingMode::Inherit => format!("inherits pool {}", r.pool.name),
                RoutingMode::Custom => format!("own settings, pool {}", r.pool.name),
            };
            out.line(&format!(
                "key {} ({}) routing{what}: {mode}",
                r.key.id, r.key.label
            ))?;
            out.line(&routing_text(&r.routing))
        }
    }
}
