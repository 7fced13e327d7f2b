//! `codexmesh alert …`: webhooks (add, list, remove, test) and the alert episodes.
//!
//! Rules: as every command, it parses, calls `codexmesh_engine::ops::alerts` and renders; a
//! webhook's signing secret is printed once, by `add` (on stdout, so it can be captured).

use clap::Subcommand;

use super::output::opt;
use super::{notify, CliError, Ctx};
use codexmesh_engine::ops::alerts;
use codexmesh_model::util;

#[derive(Debug, Subcommand)]
pub enum Args {
    /// Webhooks alerts are delivered to (signed JSON)
    #[command(subcommand)]
    Webhook(WebhookArgs),
    /// Alert episodes, newest first
    Episodes {
        /// Only those still firing
        #[arg(long)]
        open: bool,
        /// At most this many (1..=500)
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhookArgs {
    /// Add a webhook; prints its signing secret (whsec_…) once
    Add {
        name: String,
        /// http:// or https:// URL the alerts are POSTed to
        #[arg(long)]
        url: String,
        /// Only this pool's alerts (default: every pool's; owners only)
        #[arg(long)]
        pool: Option<String>,
    },
    /// List webhooks with their last delivery
    List,
    /// Remove a webhook (id or name)
    Remove { webhook: String },
    /// Send a signed test delivery now
    Test { webhook: String },
}

fn when(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), util::fmt_utc_ms)
}

pub async fn execute(args: Args, ctx: &Ctx) -> Result<(), CliError> {
    let out = &ctx.out;
    match args {
        Args::Webhook(WebhookArgs::Add { name, url, pool }) => {
            let w = notify(alerts::add_webhook(&ctx.ops, &name, &url, pool.as_deref()).await?);
            if out.json {
                return out.json(&w);
            }
            eprintln!(
                "webhook {} added ({}); its signing secret, shown only now:",
                w.webhook.name,
                w.webhook
                    .pool
                    .as_deref()
                    .map_or("every pool".to_owned(), |p| format!("pool {p}"))
            );
            out.line(&w.secret)
        }
        Args::Webhook(WebhookArgs::List) => {
            let hooks = notify(alerts::list_webhooks(&ctx.ops).await?);
            if out.json {
                return out.json(&hooks);
            }
            if hooks.is_empty() {
                return out.line("no webhooks: codexmesh alert webhook add NAME --url URL");
            }
            let rows: Vec<Vec<String>> = hooks
                .iter()
                .map(|h| {
                    vec![
                        h.name.clone(),
                        h.url.clone(),
                        h.pool.clone().unwrap_or_else(|| "(all)".to_owned()),
                        when(h.last_delivery_at_ms),
                        h.last_status
                            .map_or_else(|| "-".to_owned(), |s| s.to_string()),
                        opt(&h.last_error),
                    ]
                })
                .collect();
            out.table(
                &["NAME", "URL", "POOL", "LAST DELIVERY", "STATUS", "ERROR"],
                &rows,
            )
        }
        Args::Webhook(WebhookArgs::Remove { webhook }) => {
            let h = notify(alerts::remove_webhook(&ctx.ops, &webhook).await?);
            if out.json {
                return out.json(&h);
            }
            out.line(&format!("webhook {} removed", h.name))
        }
        Args::Webhook(WebhookArgs::Test { webhook }) => {
            let t = notify(alerts::test_webhook(&ctx.ops, &webhook).await?);
            if out.json {
                return out.json(&t);
            }
            if t.delivered {
                out.line(&format!(
                    "webhook {}: delivered (HTTP {})",
                    t.webhook, t.status
                ))
            } else {
                Err(CliError::Usage(format!(
                    "webhook {}: not delivered: {}",
                    t.webhook,
                    t.error.unwrap_or_default()
                )))
            }
        }
        Args::Episodes { open, limit } => {
            let eps = notify(alerts::episodes(&ctx.ops, open, Some(limit)).await?);
            if out.json {
                return out.json(&eps);
            }
            if eps.is_empty() {
                return out.line("no alerts");
            }
            let rows: Vec<Vec<String>> = eps
                .iter()
                .map(|e| {
                    vec![
                        e.kind.as_str().to_owned(),
                        e.severity.as_str().to_owned(),
                        e.pool.clone().unwrap_or_else(|| "-".to_owned()),
                        util::fmt_utc_ms(e.opened_at_ms),
                        e.closed_at_ms
                            .map_or_else(|| "open".to_owned(), util::fmt_utc_ms),
                        e.message.clone(),
                    ]
                })
                .collect();
            out.table(
                &["KIND", "SEVERITY", "POOL", "OPENED", "CLOSED", "MESSAGE"],
                &rows,
            )
        }
    }
}
