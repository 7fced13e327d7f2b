//! `codexmesh operator …` (create, list, set-role, assign, disable, enable, set-password,
//! bootstrap, totp-enroll|confirm|disable, token create|list|revoke) and `codexmesh audit`. The
//! shell acts with full access (the context's `Ops` carries it; the audit log names the shell
//! user).
//!
//! Passwords are never a flag or an argument (they would show in `ps` and shell history):
//! with `--password-stdin` the first line of stdin (for scripts), else, when stdin is a
//! terminal, typed twice without echo (`rpassword`, on the controlling terminal). A password is
//! never printed, logged or put in an error message.

use std::io::{BufRead, IsTerminal};

use clap::Subcommand;
use serde::Serialize;

use super::output::change_suffix;
use super::{notify, CliError, Ctx};
use codexmesh_engine::ops::operators;
use codexmesh_model::operators::{ApiToken, Operator, Role};
use codexmesh_model::util;
use codexmesh_store::AuditFilter;

#[derive(Debug, Subcommand)]
pub enum Args {
    /// Create an operator
    Create {
        /// Sign-in name (an email or a handle)
        #[arg(long)]
        name: String,
        /// owner, admin or viewer
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Pools it works on, comma-separated (admins and viewers)
        #[arg(long, value_delimiter = ',')]
        pools: Vec<String>,
        /// Read the password from the first line of stdin (without it: typed at the terminal
        /// without echo, empty for none yet; no terminal: no password yet)
        #[arg(long)]
        password_stdin: bool,
    },
    /// List operators
    List,
    /// Change an operator's role (signs it out everywhere)
    SetRole {
        #[arg(value_name = "ID|NAME")]
        operator: String,
        #[arg(value_parser = parse_role)]
        role: Role,
    },
    /// Replace an operator's pools
    Assign {
        #[arg(value_name = "ID|NAME")]
        operator: String,
        /// Pools, comma-separated (empty: none)
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        pools: Vec<String>,
    },
    /// Disable an operator (signs it out everywhere)
    Disable {
        #[arg(value_name = "ID|NAME")]
        operator: String,
    },
    /// Enable a disabled operator
    Enable {
        #[arg(value_name = "ID|NAME")]
        operator: String,
    },
    /// Set an operator's password, typed at the terminal without echo or (--password-stdin)
    /// from stdin (signs it out everywhere)
    SetPassword {
        #[arg(value_name = "ID|NAME")]
        operator: String,
        /// Read the password from the first line of stdin (for scripts)
        #[arg(long)]
        password_stdin: bool,
    },
    /// Print a one-time secret (valid for an hour) that creates the first owner
    Bootstrap,
    /// Start a second factor (TOTP): prints its secret and otpauth URI once; enabled by
    /// totp-confirm
    TotpEnroll {
        #[arg(value_name = "ID|NAME")]
        operator: String,
    },
    /// Enable the enrolled second factor with a current code
    TotpConfirm {
        #[arg(value_name = "ID|NAME")]
        operator: String,
        #[arg(long)]
        code: String,
    },
    /// Turn the second factor off (drops its secret)
    TotpDisable {
        #[arg(value_name = "ID|NAME")]
        operator: String,
    },
    /// API tokens for automation
    #[command(subcommand)]
    Token(TokenArgs),
}

#[derive(Debug, Subcommand)]
pub enum TokenArgs {
    /// Create an API token; the token is printed once
    Create {
        #[arg(long)]
        label: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long, value_delimiter = ',')]
        pools: Vec<String>,
    },
    /// List API tokens (never the tokens themselves)
    List,
    /// Revoke an API token
    Revoke {
        #[arg(value_name = "ID|LABEL")]
        token: String,
    },
}

/// `codexmesh audit`: the audit log, newest first.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only this actor (cli:alice, operator:bob, token:ci)
    #[arg(long)]
    actor: Option<String>,
    /// Only this action (pool.create), or a prefix ending in "." (operator.)
    #[arg(long)]
    action: Option<String>,
    /// Only rows about this pool
    #[arg(long)]
    pool: Option<String>,
    /// Only rows about this target (an id)
    #[arg(long)]
    target: Option<String>,
    /// Only rows with this outcome (ok, forbidden, not_found, invalid, conflict, …)
    #[arg(long)]
    outcome: Option<String>,
    /// Only rows at most this long ago (e.g. 1h, 7d)
    #[arg(long, value_parser = parse_since)]
    since: Option<i64>,
    /// Rows per page (1-1000)
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// Only rows older than this id (the last id of the previous page)
    #[arg(long)]
    before: Option<i64>,
}

/// A duration like `1h` or `7d`, in milliseconds.
fn parse_since(s: &str) -> Result<i64, String> {
    codexmesh_model::activity::parse_span(s)
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("expected owner, admin or viewer, not {s:?}"))
}

/// The first line of stdin, without its line ending.
fn password_from_stdin() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Usage(format!("cannot read the password from stdin: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// A password typed at the terminal without echo, twice. `optional`: an empty first answer
/// means none (and is not asked again).
fn password_from_terminal(name: &str, optional: bool) -> Result<String, CliError> {
    let ask = |prompt: String| {
        rpassword::prompt_password(prompt)
            .map_err(|e| CliError::Usage(format!("cannot read the password: {e}")))
    };
    let hint = if optional { " (empty: none yet)" } else { "" };
    let first = ask(format!("password for {name}{hint}: "))?;
    if first.is_empty() && optional {
        return Ok(first);
    }
    if ask(format!("password for {name} again: "))? != first {
        return Err(CliError::Usage(
            "the two passwords differ: nothing changed".into(),
        ));
    }
    Ok(first)
}

/// Where a password comes from: `--password-stdin`, else the terminal when stdin is one.
/// `Ok(None)`: no password (only when `optional`; otherwise a usage error).
fn read_password(
    password_stdin: bool,
    name: &str,
    optional: bool,
) -> Result<Option<String>, CliError> {
    if password_stdin {
        return password_from_stdin().map(Some);
    }
    if std::io::stdin().is_terminal() {
        let pw = password_from_terminal(name, optional)?;
        return Ok((!pw.is_empty() || !optional).then_some(pw));
    }
    if optional {
        Ok(None)
    } else {
        Err(CliError::Usage(
            "stdin is not a terminal: pipe the password in with --password-stdin".into(),
        ))
    }
}

fn operator_rows(ops: &[Operator]) -> Vec<Vec<String>> {
    ops.iter()
        .map(|o| {
            vec![
                o.id.clone(),
                o.name.clone(),
                o.role.to_string(),
                if o.role == Role::Owner {
                    "(all)".to_owned()
                } else {
                    o.pools.join(",")
                },
                if o.disabled { "disabled" } else { "active" }.to_owned(),
                util::fmt_utc_ms(o.created_at_ms),
            ]
        })
        .collect()
}

const OPERATOR_HEADERS: &[&str] = &["ID", "NAME", "ROLE", "POOLS", "STATE", "CREATED"];

fn token_rows(ts: &[ApiToken]) -> Vec<Vec<String>> {
    ts.iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.label.clone(),
                t.role.to_string(),
                if t.role == Role::Owner {
                    "(all)".to_owned()
                } else {
                    t.pools.join(",")
                },
                t.last_used_at_ms
                    .map_or_else(|| "-".to_owned(), util::fmt_utc_ms),
                t.revoked_at_ms
                    .map_or_else(|| "-".to_owned(), util::fmt_utc_ms),
            ]
        })
        .collect()
}

const TOKEN_HEADERS: &[&str] = &["ID", "LABEL", "ROLE", "POOLS", "LAST USED", "REVOKED"];

#[derive(Serialize)]
struct CreatedToken<'a> {
    #[serde(flatten)]
    token: &'a ApiToken,
    secret: &'a str,
}

#[derive(Serialize)]
struct Bootstrap<'a> {
    secret: &'a str,
    expires_at_ms: i64,
}

async fn one(ctx: &Ctx, op: &Operator, changed: Option<bool>) -> Result<(), CliError> {
    let out = &ctx.out;
    if out.json {
        return match changed {
            Some(changed) => out.json(&codexmesh_model::records::Changed {
                changed,
                item: op.clone(),
            }),
            None => out.json(op),
        };
    }
    out.table(OPERATOR_HEADERS, &operator_rows(std::slice::from_ref(op)))?;
    if let Some(changed) = changed {
        eprintln!("{}{}", op.name, change_suffix(true, changed));
    }
    Ok(())
}

pub async fn execute(args: Args, ctx: &Ctx) -> Result<(), CliError> {
    let (ops, out) = (&ctx.ops, &ctx.out);
    match args {
        Args::Create {
            name,
            role,
            pools,
            password_stdin,
        } => {
            let password = read_password(password_stdin, &name, true)?;
            let op =
                notify(operators::create(ops, &name, role, &pools, password.as_deref()).await?);
            if password.is_none() {
                eprintln!(
                    "note: {} has no password yet: codexmesh operator set-password {} (at a \
                     terminal, or with --password-stdin)",
                    op.name, op.name
                );
            }
            one(ctx, &op, None).await
        }
        Args::List => {
            let list = notify(operators::list(ops).await?);
            if out.json {
                return out.json(&list);
            }
            if list.is_empty() {
                return out.line("no operators: codexmesh operator bootstrap, or operator create");
            }
            out.table(OPERATOR_HEADERS, &operator_rows(&list))
        }
        Args::SetRole { operator, role } => {
            let c = notify(operators::set_role(ops, &operator, role).await?);
            one(ctx, &c.item, Some(c.changed)).await
        }
        Args::Assign { operator, pools } => {
            let c = notify(operators::assign(ops, &operator, &pools).await?);
            one(ctx, &c.item, Some(c.changed)).await
        }
        Args::Disable { operator } => {
            let c = notify(operators::set_disabled(ops, &operator, true).await?);
            one(ctx, &c.item, Some(c.changed)).await
        }
        Args::Enable { operator } => {
            let c = notify(operators::set_disabled(ops, &operator, false).await?);
            one(ctx, &c.item, Some(c.changed)).await
        }
        Args::SetPassword {
            operator,
            password_stdin,
        } => {
            let password = read_password(password_stdin, &operator, false)?.unwrap_or_default();
            let op = notify(operators::set_password(ops, &operator, &password).await?);
            one(ctx, &op, Some(true)).await
        }
        Args::Bootstrap => {
            let b = notify(operators::bootstrap_secret(ops).await?);
            if out.json {
                return out.json(&Bootstrap {
                    secret: b.secret.expose(),
                    expires_at_ms: b.expires_at_ms,
                });
            }
            out.line(b.secret.expose())?;
            eprintln!(
                "one-time owner bootstrap secret, valid once until {}: shown only now",
                util::fmt_utc_ms(b.expires_at_ms)
            );
            Ok(())
        }
        Args::TotpEnroll { operator } => {
            let e = notify(operators::totp_enroll(ops, &operator).await?);
            if out.json {
                return out.json(&serde_json::json!({
                    "operator": e.operator.name,
                    "secret": e.secret_base32,
                    "uri": e.uri,
                }));
            }
            out.line(&e.secret_base32)?;
            out.line(&e.uri)?;
            eprintln!(
                "second factor enrolled for {} (shown only now); enable it with \
                 codexmesh operator totp-confirm {} --code CODE",
                e.operator.name, e.operator.name
            );
            Ok(())
        }
        Args::TotpConfirm { operator, code } => {
            let c = notify(operators::totp_confirm(ops, &operator, &code).await?);
            one(ctx, &c.item, Some(c.changed)).await
        }
        Args::TotpDisable { operator } => {
            let c = notify(operators::totp_disable(ops, &operator).await?);
            one(ctx, &c.item, Some(c.changed)).await
        }
        Args::Token(t) => match t {
            TokenArgs::Create { label, role, pools } => {
                let issued = notify(operators::issue_token(ops, &label, role, &pools).await?);
                if out.json {
                    return out.json(&CreatedToken {
                        token: &issued.token,
                        secret: issued.secret.expose(),
                    });
                }
                out.line(issued.secret.expose())?;
                eprintln!(
                    "created API token {} ({}, {}). The token above is shown only once: store it now.",
                    issued.token.id, issued.token.label, issued.token.role
                );
                Ok(())
            }
            TokenArgs::List => {
                let list = notify(operators::list_tokens(ops).await?);
                if out.json {
                    return out.json(&list);
                }
                if list.is_empty() {
                    return out.line("no API tokens: codexmesh operator token create");
                }
                out.table(TOKEN_HEADERS, &token_rows(&list))
            }
            TokenArgs::Revoke { token } => {
                let c = notify(operators::revoke_token(ops, &token).await?);
                if out.json {
                    return out.json(&c);
                }
                out.table(TOKEN_HEADERS, &token_rows(std::slice::from_ref(&c.item)))?;
                eprintln!("{}{}", c.item.label, change_suffix(true, c.changed));
                Ok(())
            }
        },
    }
}

pub async fn execute_audit(args: AuditArgs, ctx: &Ctx) -> Result<(), CliError> {
    let filter = AuditFilter {
        actor: args.actor,
        action: args.action,
        pool: args.pool,
        target: args.target,
        outcome: args.outcome,
        since_ms: args
            .since
            .map(|ms| codexmesh_model::util::now_ms().saturating_sub(ms)),
        before_id: args.before,
        limit: args.limit,
        ..AuditFilter::default()
    };
    let rows = notify(operators::audit(&ctx.ops, filter).await?);
    let out = &ctx.out;
    if out.json {
        return out.json(&rows);
    }
    if rows.is_empty() {
        return out.line("no audit rows match");
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                util::fmt_utc_ms(e.at_ms),
                e.actor.clone(),
                e.action.clone(),
                e.outcome.clone(),
                e.target.clone().unwrap_or_else(|| "-".to_owned()),
                e.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.table(
        &["ID", "AT", "ACTOR", "ACTION", "OUTCOME", "TARGET", "DETAIL"],
        &table,
    )
}
