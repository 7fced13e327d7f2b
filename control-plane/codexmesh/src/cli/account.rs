//! `codexmesh account …`: import, login, list, set, pause, resume, remove, refresh, export.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use serde::Serialize;

use super::output::{expires_in, opt};
use super::{notify, print_notices, CliError, Ctx, Output};
use codexmesh_engine::ops::accounts::{self, ExportOptions, DEFAULT_LOGIN_TIMEOUT};
use codexmesh_model::routing::{parse_u32_in, WEIGHT};
use codexmesh_model::util::{self, now_ms};
use codexmesh_store::{Account, ImportAction, ImportResult};

#[derive(Debug, Subcommand)]
pub enum Args {
    /// Import a Codex auth.json (ChatGPT login) into a pool
    Import {
        /// Path to the auth.json
        path: PathBuf,
        /// Pool to import into
        #[arg(long)]
        pool: String,
        /// Label (default: the login's email, else its ChatGPT account id)
        #[arg(long)]
        name: Option<String>,
    },
    /// List accounts
    List {
        /// Only this pool's accounts
        #[arg(long)]
        pool: Option<String>,
    },
    /// Stop routing to an account
    Pause {
        #[arg(value_name = "ID|LABEL")]
        account: String,
    },
    /// Route to a paused account again
    Resume {
        #[arg(value_name = "ID|LABEL")]
        account: String,
    },
    /// Set an account's priority and weight; prints the account
    Set {
        #[arg(value_name = "ID|LABEL")]
        account: String,
        /// Lower goes first (priority_order; primary_first's fallback order); default 0
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        priority: Option<String>,
        /// Share of round robin and of session spreading (1-1000); default 1
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        weight: Option<String>,
    },
    /// Delete an account and its stored tokens
    Remove {
        #[arg(value_name = "ID|LABEL")]
        account: String,
    },
    /// Refresh an account's access token now (single-flight with every other process)
    Refresh {
        #[arg(value_name = "ID|LABEL")]
        account: String,
    },
    /// Write an account out as a Codex auth.json (mode 0600) and, unless --keep, remove it
    /// from its pool: its refresh token then belongs to whoever holds the file
    Export {
        #[arg(value_name = "ID|LABEL")]
        account: String,
        /// Where to write the auth.json
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Overwrite an existing file
        #[arg(long)]
        force: bool,
        /// Keep the account in the pool (both sides will then rotate one refresh token: only
        /// one of them can keep it)
        #[arg(long)]
        keep: bool,
    },
    /// Sign a ChatGPT account in with the device-code flow and add it to a pool
    Login {
        /// Pool to add the account to
        #[arg(long)]
        pool: String,
        /// Label (default: the login's email, else its ChatGPT account id)
        #[arg(long)]
        name: Option<String>,
        /// Give up waiting for the approval after this long
        #[arg(long, value_name = "SECS", default_value_t = DEFAULT_LOGIN_TIMEOUT.as_secs())]
        timeout_secs: u64,
    },
}

pub async fn execute(args: Args, ctx: &Ctx) -> Result<(), CliError> {
    let (ops, out) = (&ctx.ops, &ctx.out);
    match args {
        Args::Import { path, pool, name } => {
            let result = notify(accounts::import_file(ops, &path, &pool, name.as_deref()).await?);
            print_import(out, &result)
        }
        Args::List { pool } => {
            let accounts = notify(accounts::list(ops, pool.as_deref()).await?);
            if out.json {
                return out.json(&accounts);
            }
            if accounts.is_empty() {
                return out.line("no accounts: codexmesh account import PATH --pool NAME");
            }
            let now = now_ms();
            let rows: Vec<Vec<String>> = accounts
                .iter()
                .map(|a| {
                    vec![
                        a.pool.clone(),
                        a.label.clone(),
                        a.id.clone(),
                        a.chatgpt_account_id.clone(),
                        opt(&a.plan),
                        a.state_display(),
                        expires_in(a, now),
                    ]
                })
                .collect();
            out.table(
                &[
                    "POOL",
                    "LABEL",
                    "ID",
                    "CHATGPT ACCOUNT",
                    "PLAN",
                    "STATE",
                    "TOKEN EXPIRES",
                ],
                &rows,
            )
        }
        Args::Set {
            account,
            priority,
            weight,
        } => {
            let priority = priority
                .map(|r| parse_u32_in("--priority", &r, &(0..=u32::MAX)))
                .transpose()?;
            let weight = weight
                .map(|r| parse_u32_in("--weight", &r, &WEIGHT))
                .transpose()?;
            let result = notify(accounts::set(ops, &account, priority, weight).await?);
            let a = &result.item;
            if out.json {
                return out.json(a);
            }
            out.line(&format!(
                "account {} ({}) in pool {}: priority {}, weight {}{}",
                a.label,
                a.id,
                a.pool,
                a.priority,
                a.weight,
                if result.changed { "" } else { " (unchanged)" }
            ))
        }
        Args::Pause { account } => {
            let result = notify(accounts::pause(ops, &account).await?);
            print_paused(out, &result, true)
        }
        Args::Resume { account } => {
            let result = notify(accounts::resume(ops, &account).await?);
            print_paused(out, &result, false)
        }
        Args::Remove { account } => {
            let removed = notify(accounts::remove(ops, &account).await?);
            if out.json {
                #[derive(Serialize)]
                struct Removed<'a> {
                    removed: bool,
                    #[serde(flatten)]
                    account: &'a Account,
                }
                return out.json(&Removed {
                    removed: true,
                    account: &removed,
                });
            }
            out.line(&format!(
                "removed account {} ({}) from pool {}; its tokens are deleted",
                removed.label, removed.id, removed.pool
            ))
        }
        Args::Refresh { account } => {
            let r = notify(accounts::refresh(ops, &account).await?);
            let after = &r.account;
            if out.json {
                #[derive(Serialize)]
                struct Refreshed<'a> {
                    refreshed: bool,
                    /// "this" when this command called the token endpoint, "other" when another
                    /// process refreshed the same generation meanwhile.
                    by: &'static str,
                    account: &'a Account,
                }
                return out.json(&Refreshed {
                    refreshed: true,
                    by: if r.by_us { "this" } else { "other" },
                    account: after,
                });
            }
            let expiry = after.access_token_expires_at_ms.map_or_else(
                || "an unknown time".to_owned(),
                |t| {
                    format!(
                        "{} ({})",
                        util::fmt_utc_ms(t),
                        util::human_until(t, now_ms())
                    )
                },
            );
            if r.by_us {
                out.line(&format!(
                    "refreshed account {} ({}): the access token expires {expiry}",
                    after.label, after.id
                ))
            } else {
                out.line(&format!(
                    "account {} ({}) was refreshed by another process meanwhile: the access \
                     token expires {expiry}",
                    after.label, after.id
                ))
            }
        }
        Args::Export {
            account,
            out: path,
            force,
            keep,
        } => {
            let options = ExportOptions { force, keep };
            let e = notify(accounts::export(ops, &account, &path, options).await?);
            if out.json {
                #[derive(Serialize)]
                struct Exported<'a> {
                    path: &'a Path,
                    removed: bool,
                    account: &'a Account,
                }
                return out.json(&Exported {
                    path: &path,
                    removed: e.removed,
                    account: &e.account,
                });
            }
            out.line(&format!(
                "wrote {} (account {}, {})",
                path.display(),
                e.account.label,
                e.account.chatgpt_account_id
            ))
        }
        Args::Login {
            pool,
            name,
            timeout_secs,
        } => {
            let timeout = Duration::from_secs(timeout_secs);
            let pending = accounts::login_start(ops, &pool, name.as_deref(), timeout).await?;
            eprintln!(
                "To add a ChatGPT account to pool {pool}, open\n\n    {}\n\nand enter the code\n\n    \
                 {}\n\n(it expires in {} minutes). Device codes are a common phishing target: \
                 only enter a code you asked for yourself.\nWaiting for the approval...",
                pending.verification_url(),
                pending.user_code(),
                pending.expires_in_minutes()
            );
            let outcome = accounts::login_finish(ops, pending).await?;
            print_notices(&outcome.notices);
            print_import(out, &outcome.value)
        }
    }
}

fn print_import(out: &Output, result: &ImportResult) -> Result<(), CliError> {
    if out.json {
        return out.json(result);
    }
    let a = &result.account;
    let plan = a.plan.clone().unwrap_or_else(|| "unknown plan".to_owned());
    match result.action {
        ImportAction::Created => out.line(&format!(
            "imported account {} ({}, {}) into pool {} as {}",
            a.label, a.chatgpt_account_id, plan, a.pool, a.id
        )),
        ImportAction::Updated => out.line(&format!(
            "account {} ({}) was already in pool {}: updated its tokens ({})",
            a.label, a.chatgpt_account_id, a.pool, a.id
        )),
    }
}

fn print_paused(
    out: &Output,
    result: &codexmesh_store::Changed<Account>,
    paused: bool,
) -> Result<(), CliError> {
    if out.json {
        return out.json(result);
    }
    let a = &result.item;
    let verb = if paused { "paused" } else { "resumed" };
    if result.changed {
        out.line(&format!("{verb} account {} ({})", a.label, a.id))
    } else {
        out.line(&format!(
            "account {} ({}) is already {}",
            a.label, a.id, a.state
        ))
    }
}
