//! `codexmesh key …`: create, list, revoke, set-routing, policy.
//!
//! Rules: policy flags are taken as text and checked here before the store is opened (a bad
//! value exits 1 naming its flag); `key policy` edits the key's current policy (flags set,
//! `--unset` drops, `--clear` empties) and with no change only shows it.

use clap::Subcommand;
use serde::Serialize;

use super::output::{change_suffix, routing_text};
use super::{notify, CliError, Ctx, RoutingArgs};
use codexmesh_engine::ops::keys;
use codexmesh_model::policy::KeyPolicy;
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
        #[command(flatten)]
        policy: Box<PolicyArgs>,
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
    /// Show or change a key's policy: allowed models, rate, concurrency, token budgets and
    /// quota shares. Flags change only what they name; with none it shows the policy
    Policy {
        #[arg(value_name = "ID|LABEL")]
        key: String,
        #[command(flatten)]
        policy: Box<PolicyArgs>,
        /// Drop one limit (repeatable): allowed-models, rpm, max-concurrent, tokens-per-day,
        /// tokens-per-week, primary-share, secondary-share
        #[arg(long, value_name = "LIMIT")]
        unset: Vec<String>,
        /// Drop every limit: the key has no policy
        #[arg(long)]
        clear: bool,
    },
}

/// A key's limits as flags (`key create`, `key policy`, `invite create` for the keys it mints).
/// Values are checked by codexmesh.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicyArgs {
    /// Models the key may use: names or prefixes ending in * (gpt-5*,o3), comma separated
    #[arg(long, value_name = "MODELS", allow_hyphen_values = true)]
    pub allowed_models: Option<String>,
    /// Requests per minute (counted per Envoy)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub rpm: Option<String>,
    /// Requests in flight at once (per Envoy)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_concurrent: Option<String>,
    /// Tokens (input + output) per UTC day
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub tokens_per_day: Option<String>,
    /// Tokens per week (from Monday 00:00 UTC)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub tokens_per_week: Option<String>,
    /// Share of the pool's 5-hour window capacity, in percent (20 or 20%)
    #[arg(long, value_name = "PERCENT", allow_hyphen_values = true)]
    pub primary_share: Option<String>,
    /// Share of the pool's weekly window capacity, in percent
    #[arg(long, value_name = "PERCENT", allow_hyphen_values = true)]
    pub secondary_share: Option<String>,
}

/// The flag that sets each policy field.
fn flag_of(field: &str) -> &'static str {
    match field.split('[').next().unwrap_or(field) {
        "allowed_models" => "--allowed-models",
        "requests_per_minute" => "--rpm",
        "max_concurrent_requests" => "--max-concurrent",
        "tokens_per_day" => "--tokens-per-day",
        "tokens_per_week" => "--tokens-per-week",
        "primary_share_percent" => "--primary-share",
        "secondary_share_percent" => "--secondary-share",
        _ => "--policy",
    }
}

fn bad(flag: &str, message: &str) -> CliError {
    CliError::Usage(format!("{flag}: {message}"))
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, CliError> {
    v.trim()
        .parse()
        .map_err(|_| bad(flag, &format!("{v:?} is not a whole number of 1 or more")))
}

fn percent(flag: &str, v: &str) -> Result<f64, CliError> {
    let t = v.trim();
    t.strip_suffix('%')
        .unwrap_or(t)
        .trim()
        .parse()
        .map_err(|_| bad(flag, &format!("{v:?} is not a percentage")))
}

impl PolicyArgs {
    fn is_empty(&self) -> bool {
        self.allowed_models.is_none()
            && self.rpm.is_none()
            && self.max_concurrent.is_none()
            && self.tokens_per_day.is_none()
            && self.tokens_per_week.is_none()
            && self.primary_share.is_none()
            && self.secondary_share.is_none()
    }

    /// `p` with the given flags set, checked (errors name the flag).
    pub(crate) fn apply(&self, mut p: KeyPolicy) -> Result<KeyPolicy, CliError> {
        if let Some(m) = &self.allowed_models {
            p.allowed_models = m
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = &self.rpm {
            p.requests_per_minute = Some(number("--rpm", v)?);
        }
        if let Some(v) = &self.max_concurrent {
            p.max_concurrent_requests = Some(number("--max-concurrent", v)?);
        }
        if let Some(v) = &self.tokens_per_day {
            p.tokens_per_day = Some(number("--tokens-per-day", v)?);
        }
        if let Some(v) = &self.tokens_per_week {
            p.tokens_per_week = Some(number("--tokens-per-week", v)?);
        }
        if let Some(v) = &self.primary_share {
            p.primary_share_percent = Some(percent("--primary-share", v)?);
        }
        if let Some(v) = &self.secondary_share {
            p.secondary_share_percent = Some(percent("--secondary-share", v)?);
        }
        p.validate()
            .map_err(|e| bad(flag_of(&e.field), &format!("{} ({})", e.message, e.field)))?;
        Ok(p)
    }
}

/// Drops the limit `--unset` names.
fn unset(p: &mut KeyPolicy, name: &str) -> Result<(), CliError> {
    match name.trim().trim_start_matches("--") {
        "allowed-models" | "allowed_models" => p.allowed_models.clear(),
        "rpm" | "requests_per_minute" => p.requests_per_minute = None,
        "max-concurrent" | "max_concurrent_requests" => p.max_concurrent_requests = None,
        "tokens-per-day" | "tokens_per_day" => p.tokens_per_day = None,
        "tokens-per-week" | "tokens_per_week" => p.tokens_per_week = None,
        "primary-share" | "primary_share_percent" => p.primary_share_percent = None,
        "secondary-share" | "secondary_share_percent" => p.secondary_share_percent = None,
        other => {
            return Err(bad(
                "--unset",
                &format!(
                    "unknown limit {other:?} (allowed-models, rpm, max-concurrent, \
                     tokens-per-day, tokens-per-week, primary-share, secondary-share)"
                ),
            ))
        }
    }
    Ok(())
}

/// One line: `today=1200 week=5400 share5h=3.5% shareweek=0.4%` (and `blocked until … (primary)`
/// past a share); `-` when nothing is counted.
pub fn usage_summary(u: Option<&codexmesh_model::usage::KeyUsageView>) -> String {
    let Some(u) = u else {
        return "-".to_owned();
    };
    let mut s = format!(
        "today={} week={} share5h={:.1}% shareweek={:.1}%",
        u.tokens.tokens_today,
        u.tokens.tokens_this_week,
        u.primary_share_used_percent,
        u.secondary_share_used_percent
    );
    if let Some(until) = u.share_blocked_until_unix {
        s.push_str(&format!(
            " blocked until {}",
            util::fmt_utc_ms(until.saturating_mul(1000))
        ));
        if let Some(w) = u.share_blocked_window {
            s.push_str(&format!(" ({})", w.as_str()));
        }
    }
    s
}

/// One line: `models=gpt-5*,o3 rpm=60 concurrent=2 tokens/day=100000 share5h=20%`; `-` for none.
pub fn policy_summary(p: Option<&KeyPolicy>) -> String {
    let Some(p) = p.filter(|p| !p.is_empty()) else {
        return "-".to_owned();
    };
    let mut parts = Vec::new();
    if !p.allowed_models.is_empty() {
        parts.push(format!("models={}", p.allowed_models.join(",")));
    }
    let limits = [
        ("rpm", p.requests_per_minute.map(u64::from)),
        ("concurrent", p.max_concurrent_requests.map(u64::from)),
        ("tokens/day", p.tokens_per_day),
        ("tokens/week", p.tokens_per_week),
    ];
    for (name, v) in limits {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    }
    for (name, v) in [
        ("share5h", p.primary_share_percent),
        ("shareweek", p.secondary_share_percent),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name}={v}%"));
        }
    }
    parts.join(" ")
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
            policy,
        } => {
            let policy = policy.apply(KeyPolicy::default())?;
            let issued = notify(
                keys::issue_with_policy(&ctx.ops, &pool, name.as_deref(), operator, Some(&policy))
                    .await?,
            );
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
                        policy_summary(k.policy.as_ref()),
                        usage_summary(k.usage.as_ref()),
                    ]
                })
                .collect();
            out.table(
                &[
                    "POOL", "ID", "LABEL", "STATUS", "OPERATOR", "CREATED", "REVOKED", "ROUTING",
                    "POLICY", "USAGE",
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
        Args::Policy {
            key,
            policy,
            unset: unset_names,
            clear,
        } => {
            if clear && (!policy.is_empty() || !unset_names.is_empty()) {
                return Err(CliError::Usage(
                    "--clear drops every limit; it cannot be combined with other policy flags"
                        .to_owned(),
                ));
            }
            let current = keys::get(&ctx.ops, &key).await?.value;
            let changing = clear || !policy.is_empty() || !unset_names.is_empty();
            let (k, changed) = if changing {
                let mut wanted = if clear {
                    KeyPolicy::default()
                } else {
                    current.policy.clone().unwrap_or_default()
                };
                for name in &unset_names {
                    unset(&mut wanted, name)?;
                }
                let wanted = policy.apply(wanted)?;
                let result = notify(keys::set_policy(&ctx.ops, &current.id, &wanted).await?);
                (result.item, result.changed)
            } else {
                (current, false)
            };
            if out.json {
                return out.json(&k.policy.clone().unwrap_or_default());
            }
            out.line(&format!(
                "key {} ({}) policy{}: {}",
                k.id,
                k.label,
                change_suffix(changing, changed),
                policy_summary(k.policy.as_ref())
            ))
        }
    }
}
