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
use codexmesh_store::{Account, CredentialKind, ImportAction, ImportResult, Provider, TokenUpdate};

#[derive(Debug, Subcommand)]
pub enum Args {
    /// Import a credential file into a pool: a Codex auth.json (ChatGPT login), Claude Code's
    /// .credentials.json or an API key (a file with {"api_key": …} or just the key), or Gemini
    /// CLI's oauth_creds.json; told apart by content. A login already present (in any pool)
    /// stays one account: it joins this pool too, and its tokens are updated unless the stored
    /// ones are newer. A Claude file whose refresh token rotated since its first import is
    /// matched by --name (its account's label)
    Import {
        /// Path to the credential file
        path: PathBuf,
        /// Pool to import into
        #[arg(long)]
        pool: String,
        /// Label (default: the login's email, else its login id)
        #[arg(long, alias = "label")]
        name: Option<String>,
        /// The provider the file must be: codex, claude or gemini (default: by content)
        #[arg(long, value_parser = parse_provider)]
        provider: Option<Provider>,
        /// Gemini: the Code Assist project (default: the file's project_id, else the one Code
        /// Assist's loadCodeAssist names)
        #[arg(long, value_name = "ID")]
        project: Option<String>,
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
    /// Set an account's priority and weight in a pool; prints the account
    Set {
        #[arg(value_name = "ID|LABEL")]
        account: String,
        /// The pool whose priority and weight change (needed when the account is in several)
        #[arg(long)]
        pool: Option<String>,
        /// Lower goes first (priority_order; primary_first's fallback order); default 0
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        priority: Option<String>,
        /// Share of round robin and of session spreading (1-1000); default 1
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        weight: Option<String>,
        /// The HTTP proxy this account's refresh, quota polls and warm-up go through
        /// (http://HOST:PORT); "none" for direct
        #[arg(long, value_name = "URL|none")]
        egress_proxy: Option<String>,
    },
    /// Delete an account and its stored tokens (from every pool), or with --pool take it out
    /// of that pool only (deleting it when that was its last pool)
    Remove {
        #[arg(value_name = "ID|LABEL")]
        account: String,
        /// Only leave this pool
        #[arg(long)]
        pool: Option<String>,
    },
    /// Add an account to another pool (one account, one token lineage, in several pools)
    Join {
        #[arg(value_name = "ID|LABEL")]
        account: String,
        /// The pool to join
        #[arg(long)]
        pool: String,
        /// Priority in that pool (default 0)
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        priority: Option<String>,
        /// Weight in that pool (1-1000; default 1)
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        weight: Option<String>,
    },
    /// Refresh an account's access token now (single-flight with every other process)
    Refresh {
        #[arg(value_name = "ID|LABEL")]
        account: String,
    },
    /// Write an account out as its provider's credential file (mode 0600): a Codex auth.json,
    /// a Claude Code .credentials.json (or {"api_key"} for a key), a Gemini CLI
    /// oauth_creds.json (with project_id). Unless --keep, remove it from its pool: its refresh
    /// token then belongs to whoever holds the file
    Export {
        #[arg(value_name = "ID|LABEL")]
        account: String,
        /// Where to write the file
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
        Args::Import {
            path,
            pool,
            name,
            provider,
            project,
        } => {
            let hints = accounts::ImportHints { provider, project };
            let result = notify(
                accounts::import_file_with(ops, &path, &pool, name.as_deref(), &hints).await?,
            );
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
            // One row per membership (an account in several pools shows in each); with
            // --pool, that pool's.
            let mut rows: Vec<(String, Vec<String>)> = Vec::new();
            for a in &accounts {
                let pools: Vec<&str> = match &pool {
                    Some(_) => vec![a.pool.as_str()],
                    None => a.pools.iter().map(|m| m.pool.as_str()).collect(),
                };
                for p in pools {
                    rows.push((
                        p.to_owned(),
                        vec![
                            p.to_owned(),
                            a.label.clone(),
                            provider_display(a),
                            a.id.clone(),
                            a.chatgpt_account_id.clone(),
                            opt(&a.plan),
                            a.state_display(),
                            expires_in(a, now),
                        ],
                    ));
                }
            }
            // Stable: within a pool, the listing's order (priority, label).
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
            out.table(
                &[
                    "POOL",
                    "LABEL",
                    "PROVIDER",
                    "ID",
                    "LOGIN",
                    "PLAN",
                    "STATE",
                    "TOKEN EXPIRES",
                ],
                &rows,
            )
        }
        Args::Set {
            account,
            pool,
            priority,
            weight,
            egress_proxy,
        } => {
            let priority = priority
                .map(|r| parse_u32_in("--priority", &r, &(0..=u32::MAX)))
                .transpose()?;
            let weight = weight
                .map(|r| parse_u32_in("--weight", &r, &WEIGHT))
                .transpose()?;
            if let Some(proxy) = egress_proxy {
                let proxy = Some(proxy.as_str()).filter(|p| !p.eq_ignore_ascii_case("none"));
                let result = notify(accounts::set_egress_proxy(ops, &account, proxy).await?);
                if priority.is_none() && weight.is_none() {
                    let a = &result.item;
                    if out.json {
                        return out.json(a);
                    }
                    return out.line(&format!(
                        "account {} ({}): egress proxy {}",
                        a.label,
                        a.id,
                        a.egress_proxy.as_deref().unwrap_or("none (direct)")
                    ));
                }
            }
            let result =
                notify(accounts::set(ops, &account, pool.as_deref(), priority, weight).await?);
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
        Args::Join {
            account,
            pool,
            priority,
            weight,
        } => {
            let priority = priority
                .map(|r| parse_u32_in("--priority", &r, &(0..=u32::MAX)))
                .transpose()?;
            let weight = weight
                .map(|r| parse_u32_in("--weight", &r, &WEIGHT))
                .transpose()?;
            let result = notify(accounts::join(ops, &account, &pool, priority, weight).await?);
            if out.json {
                return out.json(&result);
            }
            let a = &result.item;
            out.line(&format!(
                "account {} ({}) {} pool {} (priority {}, weight {}); its pools: {}",
                a.label,
                a.id,
                if result.changed {
                    "joined"
                } else {
                    "is already in"
                },
                a.pool,
                a.priority,
                a.weight,
                a.pool_names()
            ))
        }
        Args::Remove { account, pool } => {
            let accounts::Removed {
                account: removed,
                deleted,
            } = notify(accounts::remove(ops, &account, pool.as_deref()).await?);
            if out.json {
                #[derive(Serialize)]
                struct Removed<'a> {
                    removed: bool,
                    /// The account itself (and its tokens) went, not just one membership.
                    deleted: bool,
                    #[serde(flatten)]
                    account: &'a Account,
                }
                return out.json(&Removed {
                    removed: true,
                    deleted,
                    account: &removed,
                });
            }
            match pool.as_deref().filter(|_| !deleted) {
                None => out.line(&format!(
                    "removed account {} ({}) from pool(s) {}; its tokens are deleted",
                    removed.label,
                    removed.id,
                    removed.pool_names()
                )),
                Some(p) => out.line(&format!(
                    "removed account {} ({}) from pool {p}; it stays in {}",
                    removed.label,
                    removed.id,
                    removed
                        .pools
                        .iter()
                        .filter(|m| m.pool != p)
                        .map(|m| m.pool.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                )),
            }
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
    let tokens = match result.tokens {
        TokenUpdate::KeptNewer => "kept its newer stored tokens",
        _ => "updated its tokens",
    };
    match (result.action, result.joined_pool) {
        (ImportAction::Created, _) => out.line(&format!(
            "imported {} account {} ({}, {}) into pool {} as {}",
            provider_display(a),
            a.label,
            a.chatgpt_account_id,
            plan,
            a.pool,
            a.id
        )),
        (ImportAction::Updated, false) => out.line(&format!(
            "account {} ({}) was already in pool {}: {tokens} ({})",
            a.label, a.chatgpt_account_id, a.pool, a.id
        )),
        (ImportAction::Updated, true) => out.line(&format!(
            "account {} ({}) was already present ({}): added it to pool {} (one account, one \
             refresh token, now in {}) and {tokens}",
            a.label,
            a.chatgpt_account_id,
            a.id,
            a.pool,
            a.pool_names()
        )),
    }
}

/// `claude`, `claude (api key)`, `gemini (project P)`, `codex`.
pub fn provider_display(a: &Account) -> String {
    match (a.credential_kind, &a.project_id) {
        (CredentialKind::ApiKey, _) => format!("{} (api key)", a.provider),
        (_, Some(p)) => format!("{} ({p})", a.provider),
        _ => a.provider.to_string(),
    }
}

fn parse_provider(raw: &str) -> Result<Provider, String> {
    Provider::parse(raw).ok_or_else(|| format!("{raw:?} is not one of codex, claude, gemini"))
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
