//! `codexmesh invite …`: create (the code and link printed once), list, revoke.

use clap::Subcommand;
use serde::Serialize;

use super::{notify, CliError, Ctx};
use codexmesh_engine::ops::invites::{self, InviteRequest};
use codexmesh_model::policy::KeyPolicy;
use codexmesh_model::util;

#[derive(Debug, Subcommand)]
pub enum Args {
    /// Create an invite to a pool; its link (with the code) is printed once
    Create {
        /// Pool the minted keys give access to
        #[arg(long)]
        pool: String,
        /// How long it stays valid (1m to 90days, e.g. 24h, 7days)
        #[arg(long, value_name = "DURATION", default_value = "7days")]
        expires: String,
        /// How many people may redeem it (1-1000)
        #[arg(long, value_name = "N", default_value_t = 1)]
        uses: u32,
        /// A note for operators (who it is for)
        #[arg(long)]
        label: Option<String>,
        /// The limits each minted key gets (the flags of `key create`)
        #[command(flatten)]
        policy: Box<super::key::PolicyArgs>,
    },
    /// List invites: uses left, expiry and status (never the code)
    List {
        /// Only this pool's invites
        #[arg(long)]
        pool: Option<String>,
    },
    /// Revoke an invite (keys already minted from it stay)
    Revoke {
        #[arg(value_name = "ID|LABEL")]
        invite: String,
    },
}

#[derive(Serialize)]
struct CreatedInvite<'a> {
    #[serde(flatten)]
    invite: &'a codexmesh_model::invites::Invite,
    code: &'a str,
    link: &'a str,
}

/// The `--expires` value in milliseconds, or a usage error naming the flag.
fn expires_ms(text: &str) -> Result<i64, CliError> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| CliError::Usage(format!("--expires {text:?}: {e} (e.g. 24h, 7days)")))?;
    i64::try_from(d.as_millis())
        .map_err(|_| CliError::Usage(format!("--expires {text:?} is too long")))
}

pub async fn execute(args: Args, ctx: &Ctx) -> Result<(), CliError> {
    let out = &ctx.out;
    match args {
        Args::Create {
            pool,
            expires,
            uses,
            label,
            policy,
        } => {
            let request = InviteRequest {
                pool: &pool,
                label: label.as_deref(),
                max_uses: uses,
                expires_in_ms: expires_ms(&expires)?,
                policy: policy.apply(KeyPolicy::default())?,
            };
            let issued = notify(invites::create(&ctx.ops, &request).await?);
            if out.json {
                return out.json(&CreatedInvite {
                    invite: &issued.invite,
                    code: issued.code.expose(),
                    link: &issued.link,
                });
            }
            out.line(&issued.link)?;
            let i = &issued.invite;
            eprintln!(
                "created invite {} to pool {} ({} use{}, expires {}). The link above holds the \
                 code and is shown only once.",
                i.id,
                i.pool,
                i.max_uses,
                if i.max_uses == 1 { "" } else { "s" },
                util::fmt_utc_ms(i.expires_at_ms)
            );
            Ok(())
        }
        Args::List { pool } => {
            let list = notify(invites::list(&ctx.ops, pool.as_deref()).await?);
            if out.json {
                return out.json(&list);
            }
            if list.is_empty() {
                return out.line("no invites: codexmesh invite create --pool NAME");
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|i| {
                    vec![
                        i.pool.clone(),
                        i.id.clone(),
                        i.label.clone().unwrap_or_else(|| "-".to_owned()),
                        i.status.to_string(),
                        format!("{}/{}", i.uses_left, i.max_uses),
                        util::fmt_utc_ms(i.expires_at_ms),
                        i.created_by.clone(),
                    ]
                })
                .collect();
            out.table(
                &[
                    "POOL",
                    "ID",
                    "LABEL",
                    "STATUS",
                    "USES LEFT",
                    "EXPIRES",
                    "CREATED BY",
                ],
                &rows,
            )
        }
        Args::Revoke { invite } => {
            let result = notify(invites::revoke(&ctx.ops, &invite).await?);
            if out.json {
                return out.json(&result);
            }
            let i = &result.item;
            if result.changed {
                out.line(&format!("revoked invite {} of pool {}", i.id, i.pool))
            } else {
                out.line(&format!("invite {} was already revoked", i.id))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_flag_is_checked_naming_the_flag() {
        assert!(matches!(expires_ms("24h"), Ok(86_400_000)));
        let Err(e) = expires_ms("soon") else {
            panic!("accepted --expires soon");
        };
        assert!(e.to_string().starts_with("--expires \"soon\""), "{e}");
    }
}
