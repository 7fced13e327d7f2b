//! The `codexmesh` command line. Data goes to stdout (`--json` for machines); messages, warnings
//! and logs go to stderr. Exit codes: 0 ok, 1 error, 2 bad input file (or bad usage, from clap).
//!
//! Rules: one file per command group, each with an `Args` (clap) and an `execute`; a command
//! parses its arguments, calls a use case in `codexmesh_engine::ops`, prints the use case's
//! notices to stderr and renders its result through [`output`]. No command decides, validates
//! or writes anything itself, and command modules do not use each other (shared pieces live
//! here or in [`output`]).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::envoy_bootstrap::BootstrapError;
use crate::up::UpError;
use codexmesh_engine::config::{ConfigError, Settings, SettingsFlags};
use codexmesh_engine::ops::{ErrorKind, Notice, Ops, OpsError, Outcome};
use codexmesh_engine::server::ServeError;
use codexmesh_model::routing::{InvalidSetting, RawRoutingFlags, RoutingPatch};
use codexmesh_store::{Actor, StoreError};

mod account;
mod alert;
mod apply;
mod envoy_bootstrap;
mod get;
mod invite;
mod key;
mod operator;
mod output;
mod pool;
mod requests;
mod secrets;
mod serve;
mod status;
mod up;

pub use output::Output;

#[derive(Debug, Parser)]
#[command(
    name = "codexmesh",
    version,
    about = "Pool several Codex (ChatGPT) accounts behind one endpoint"
)]
pub struct Cli {
    /// Print machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub settings: SettingsFlags,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and list pools
    #[command(subcommand)]
    Pool(pool::Args),
    /// Import Codex logins and manage accounts
    #[command(subcommand)]
    Account(account::Args),
    /// Create, list and revoke pool keys
    #[command(subcommand)]
    Key(key::Args),
    /// Operators (owner, admin, viewer), their pools and API tokens
    #[command(subcommand)]
    Operator(operator::Args),
    /// The audit log, newest first, with filters and paging
    Audit(operator::AuditArgs),
    /// Pools, accounts and key counts
    Status(status::Args),
    /// The request log, newest first: which account served each upstream attempt, and why
    Requests(requests::Args),
    /// The master key: status and rotation
    #[command(subcommand)]
    Secrets(secrets::Args),
    /// Run the gRPC Mesh service and the admin HTTP API
    Serve(serve::Args),
    /// Write the Envoy bootstrap for these settings
    EnvoyBootstrap(envoy_bootstrap::Args),
    /// Laptop mode: store, a default pool and key, serve, and Envoy, in one command
    Up(up::Args),
    /// Create or update pools, memberships, keys and operators' pools from YAML documents
    Apply(apply::Args),
    /// Print pools or operators as the documents `apply` reads
    Get(get::Args),
    #[command(subcommand)]
    Alert(alert::Args),
    /// Invites ("friends mode"): a code that gets whoever redeems it a pool key of their own
    #[command(subcommand)]
    Invite(invite::Args),
}

/// What every command runs with: the use cases' context and the output.
pub struct Ctx {
    pub ops: Ops,
    pub out: Output,
}

impl Ctx {
    pub fn settings(&self) -> &Settings {
        self.ops.settings()
    }
}

/// Routing settings, shared by `pool set-routing` and `key set-routing`. Values are taken as
/// text and checked by codexmesh, so a bad one exits 1 naming its flag and changes nothing.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RoutingArgs {
    /// quota_first (most headroom first; the default), round_robin, primary_first (one owner
    /// account until it fails) or priority_order (lowest account priority first)
    #[arg(long, value_name = "STRATEGY", allow_hyphen_values = true)]
    pub strategy: Option<String>,
    /// Upstream attempts per request, first try included (1-10; default 3)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_attempts: Option<String>,
    /// Explain routes (x-codexmesh-route) to ordinary keys too, not only to operator keys
    #[arg(long, value_name = "true|false", allow_hyphen_values = true)]
    pub explain: Option<String>,
    /// primary_first's owner: an account id or label in the pool; "none" clears it (then the
    /// first account by priority leads)
    #[arg(long, value_name = "ACCOUNT|none", allow_hyphen_values = true)]
    pub primary: Option<String>,
    /// Skip an account whose 5-hour window is at or above PCT (0 < PCT <= 100; "default" = 95)
    #[arg(long, value_name = "PCT", allow_hyphen_values = true)]
    pub primary_threshold: Option<String>,
    /// Skip an account whose weekly window is at or above PCT (0 < PCT <= 100; "default" = 99)
    #[arg(long, value_name = "PCT", allow_hyphen_values = true)]
    pub secondary_threshold: Option<String>,
    /// Consecutive failures that open an account's circuit (>= 1; "default" = 3)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub circuit_failures: Option<String>,
    /// How long an open circuit stays open before one probe (>= 1000; "default" = 60000)
    #[arg(long, value_name = "MS", allow_hyphen_values = true)]
    pub circuit_open_ms: Option<String>,
    /// Longest cooldown after a 429 without a reset time (>= 1000; "default" = 1800000)
    #[arg(long, value_name = "MS", allow_hyphen_values = true)]
    pub cooldown_max_ms: Option<String>,
    /// Pool WebSocket upgrades of the Responses endpoint (on, the default) or refuse them with
    /// 426 so clients fall back to HTTP SSE (off)
    #[arg(long, value_name = "on|off", allow_hyphen_values = true)]
    pub websockets: Option<String>,
}

impl RoutingArgs {
    /// Parses and checks every flag (in `codexmesh_model::routing`): the first bad one is the
    /// error, before anything is opened.
    pub fn patch(&self) -> Result<RoutingPatch, InvalidSetting> {
        RawRoutingFlags {
            strategy: self.strategy.as_deref(),
            max_attempts: self.max_attempts.as_deref(),
            explain: self.explain.as_deref(),
            primary: self.primary.as_deref(),
            primary_threshold: self.primary_threshold.as_deref(),
            secondary_threshold: self.secondary_threshold.as_deref(),
            circuit_failures: self.circuit_failures.as_deref(),
            circuit_open_ms: self.circuit_open_ms.as_deref(),
            cooldown_max_ms: self.cooldown_max_ms.as_deref(),
            websockets: self.websockets.as_deref(),
        }
        .parse()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Ops(#[from] OpsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Up(#[from] UpError),
    #[error("envoy bootstrap: {0}")]
    Bootstrap(#[from] BootstrapError),
    #[error("{}: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("cannot write output: {0}")]
    Output(String),
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            // A bad input file is a usage error, like clap's own (2).
            CliError::Ops(OpsError::AuthJson { .. } | OpsError::CredentialFile { .. }) => 2,
            CliError::Ops(e @ OpsError::Document(_)) if e.kind() == ErrorKind::Invalid => 2,
            _ => 1,
        }
    }
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve(_) | Command::Up(_)));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(run(cli));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs go to stderr. `RUST_LOG` takes `tracing` target syntax (`info`, `codexmesh_engine=debug`).
fn init_logging(server: bool) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    // sqlx reports database notices at info ("relation already exists, skipping"): not news.
    let default = if server { "info,sqlx=warn" } else { "warn" };
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| default.parse().unwrap_or_default());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .try_init();
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let settings = Settings::from_env(&cli.settings)?;
    let ctx = Ctx {
        ops: Ops::new(settings, Actor::cli()),
        out: Output { json: cli.json },
    };
    match cli.command {
        Command::Pool(args) => pool::execute(args, &ctx).await,
        Command::Account(args) => account::execute(args, &ctx).await,
        Command::Key(args) => key::execute(args, &ctx).await,
        Command::Operator(args) => operator::execute(args, &ctx).await,
        Command::Audit(args) => operator::execute_audit(args, &ctx).await,
        Command::Status(args) => status::execute(args, &ctx).await,
        Command::Requests(args) => requests::execute(args, &ctx).await,
        Command::Secrets(args) => secrets::execute(args, &ctx).await,
        Command::Serve(args) => serve::execute(args, &ctx).await,
        Command::EnvoyBootstrap(args) => envoy_bootstrap::execute(args, &ctx),
        Command::Up(args) => up::execute(args, &ctx).await,
        Command::Apply(args) => apply::execute(args, &ctx).await,
        Command::Get(args) => get::execute(args, &ctx).await,
        Command::Alert(args) => alert::execute(args, &ctx).await,
        Command::Invite(args) => invite::execute(args, &ctx).await,
    }
}

/// Prints a use case's notices on stderr (`warning: …`, `note: …`) and hands back its value.
fn notify<T>(outcome: Outcome<T>) -> T {
    print_notices(&outcome.notices);
    outcome.value
}

fn print_notices(notices: &[Notice]) {
    for n in notices {
        eprintln!("{n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() -> Result<(), clap::Error> {
        let cli = Cli::try_parse_from([
            "codexmesh",
            "pool",
            "list",
            "--json",
            "--store",
            "sqlite://x.db",
        ])?;
        assert!(cli.json);
        assert_eq!(cli.settings.store.as_deref(), Some("sqlite://x.db"));
        Ok(())
    }

    #[test]
    fn secrets_have_no_flags() {
        assert!(Cli::try_parse_from(["codexmesh", "--push-token", "x", "status"]).is_err());
        assert!(Cli::try_parse_from(["codexmesh", "--master-key", "x", "status"]).is_err());
    }

    #[test]
    fn a_bad_auth_json_exits_2_and_other_errors_1() {
        let e = CliError::Ops(OpsError::AuthJson {
            path: "auth.json".into(),
            source: codexmesh_model::credentials::AuthJsonError::NotObject,
        });
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.to_string(), "auth.json: not a JSON object");
        let e = CliError::Ops(
            StoreError::NotFound {
                what: codexmesh_store::Entity::Pool,
                ident: "x".into(),
                lookup: codexmesh_store::Lookup::Name,
            }
            .into(),
        );
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "no pool named \"x\"");
    }
}
