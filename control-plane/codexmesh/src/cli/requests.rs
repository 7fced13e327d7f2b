//! `codexmesh requests`: the request log, newest first.

use super::output::opt;
use super::{notify, CliError, Ctx};
use codexmesh_engine::ops::reports::{self, Filter};
use codexmesh_model::util::{self, now_ms};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this pool's requests
    #[arg(long, value_name = "NAME")]
    pool: Option<String>,
    /// Only attempts served by this account
    #[arg(long, value_name = "ID|LABEL")]
    account: Option<String>,
    /// Only requests made with this key
    #[arg(long, value_name = "ID|LABEL")]
    key: Option<String>,
    /// How many entries (1-1000; default 50)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    limit: Option<i64>,
    /// Only entries older than this entry id (the next page)
    #[arg(long, value_name = "ID", allow_hyphen_values = true)]
    before: Option<i64>,
    /// Only attempts that did not succeed (status outside 2xx, or a reset)
    #[arg(long)]
    failed: bool,
    /// Only entries at most this long ago (e.g. 15m, 1h, 7d)
    #[arg(long, value_parser = codexmesh_model::activity::parse_span)]
    since: Option<i64>,
}

pub async fn execute(args: Args, ctx: &Ctx) -> Result<(), CliError> {
    let out = &ctx.out;
    let filter = Filter {
        pool: args.pool,
        account: args.account,
        key: args.key,
        before: args.before,
        limit: args.limit,
        failed: args.failed,
        since_ms: args.since.map(|span| now_ms().saturating_sub(span)),
    };
    let entries = notify(reports::requests(&ctx.ops, &filter).await?);
    if out.json {
        return out.json(&entries);
    }
    if entries.is_empty() {
        return out.line("no requests logged (yet)");
    }
    let now = now_ms();
    let or_id = |name: &Option<String>, id: &str| name.clone().unwrap_or_else(|| id.to_owned());
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let reason = match (&e.reason, e.fallback) {
                (Some(r), true) if r != "failover" => format!("{r}, failover"),
                (Some(r), _) => r.clone(),
                (None, true) => "failover".to_owned(),
                (None, false) => "-".to_owned(),
            };
            let error = match (&e.error_source, &e.error_code) {
                _ if e.policy_refusal.is_some() => {
                    format!("policy: {}", opt(&e.policy_refusal))
                }
                (Some(s), Some(c)) => format!("{s}: {c}"),
                (Some(s), None) => s.clone(),
                (None, Some(c)) => c.clone(),
                (None, None) => "-".to_owned(),
            };
            vec![
                e.id.to_string(),
                format!(
                    "{} ago",
                    util::human_span_ms(&(now - e.received_at_ms).max(0))
                ),
                or_id(&e.pool, &e.pool_id),
                or_id(&e.key, &e.key_id),
                if e.account_id.is_empty() && e.policy_refusal.is_some() {
                    "(refused)".to_owned()
                } else {
                    or_id(&e.account, &e.account_id)
                },
                e.attempt.to_string(),
                if e.status == 0 {
                    "no answer".to_owned()
                } else {
                    e.status.to_string()
                },
                format!("{} ms", e.latency_ms),
                opt(&e.strategy),
                reason,
                error,
            ]
        })
        .collect();
    out.table(
        &[
            "ID", "WHEN", "POOL", "KEY", "ACCOUNT", "ATTEMPT", "STATUS", "LATENCY", "STRATEGY",
            "WHY", "ERROR",
        ],
        &rows,
    )
}
