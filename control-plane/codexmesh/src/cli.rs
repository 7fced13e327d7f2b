//! The `codexmesh` command line. Data goes to stdout (`--json` for machines); messages, warnings
//! and logs go to stderr. Exit codes: 0 ok, 1 error, 2 bad input file (or bad usage, from clap).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::envoy_bootstrap::{self, BootstrapError};
use crate::up::UpError;
use codexmesh_engine::config::{ConfigError, Settings, SettingsFlags};
use codexmesh_engine::login::LoginError;
use codexmesh_engine::refresh::{
    self, Done, RefreshError, Refresher, RefresherConfig, Request, Trigger,
};
use codexmesh_engine::server::{self, ServeError};
use codexmesh_engine::status::AccountStatus;
use codexmesh_model::credentials::{self as authjson, AuthJsonError};
use codexmesh_model::routing::{
    parse_u32_in, InvalidSetting, Primary, RawRoutingFlags, RoutingMode, RoutingPatch, RoutingView,
    WEIGHT,
};
use codexmesh_model::util::{self, now_ms, RandomError};
use codexmesh_store::files;
use codexmesh_store::{
    Account, Actor, ImportAction, ImportResult, KeyRouting, KeyRoutingChange, Store, StoreError,
    Strategy,
};

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
    Pool(PoolCmd),
    /// Import Codex logins and manage accounts
    #[command(subcommand)]
    Account(AccountCmd),
    /// Create, list and revoke pool keys
    #[command(subcommand)]
    Key(KeyCmd),
    /// Pools, accounts and key counts
    Status,
    /// The request log, newest first: which account served each upstream attempt, and why
    Requests {
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
    },
    /// Run the gRPC Mesh service and the admin HTTP API
    Serve,
    /// Write the Envoy bootstrap for these settings
    EnvoyBootstrap {
        /// Output file
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Envoy node id (reported to the control plane)
        #[arg(long, value_name = "ID", default_value = envoy_bootstrap::DEFAULT_NODE_ID)]
        node_id: String,
        /// Where Envoy reaches the control plane, when not at grpc_listen: HOST:PORT, where
        /// HOST may be a DNS name (a container or Kubernetes service)
        #[arg(long, value_name = "HOST:PORT")]
        control_plane: Option<String>,
    },
    /// Laptop mode: store, a default pool and key, serve, and Envoy, in one command
    Up,
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
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
    fn raw(&self) -> RawRoutingFlags<'_> {
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
    }
}

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
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
        #[arg(long, value_name = "SECS", default_value_t = 900)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
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

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Up(#[from] UpError),
    #[error("{}: {source}", path.display())]
    AuthJson {
        path: PathBuf,
        source: AuthJsonError,
    },
    #[error("envoy bootstrap: {0}")]
    Bootstrap(#[from] BootstrapError),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("cannot write output: {0}")]
    Output(String),
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    #[error("login: {0}")]
    Login(#[from] LoginError),
    #[error("cannot set up the HTTP client: {0}")]
    Http(String),
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
    #[error(transparent)]
    RequestLog(#[from] codexmesh_engine::requests::RequestLogError),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            // A bad input file is a usage error, like clap's own (2).
            CliError::AuthJson { .. } => 2,
            _ => 1,
        }
    }
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve | Command::Up));
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
    let out = Output { json: cli.json };
    match cli.command {
        Command::Pool(cmd) => pool_cmd(&settings, &out, cmd).await,
        Command::Account(cmd) => account_cmd(&settings, &out, cmd).await,
        Command::Key(cmd) => key_cmd(&settings, &out, cmd).await,
        Command::Status => status_cmd(&settings, &out).await,
        Command::Requests {
            pool,
            account,
            key,
            limit,
            before,
        } => {
            let filter = codexmesh_engine::requests::Filter {
                pool,
                account,
                key,
                before,
                limit,
            };
            requests_cmd(&settings, &out, &filter).await
        }
        Command::Serve => serve_cmd(&settings).await,
        Command::EnvoyBootstrap {
            out: path,
            node_id,
            control_plane,
        } => envoy_bootstrap_cmd(&settings, &out, &path, &node_id, control_plane.as_deref()),
        Command::Up => Ok(crate::up::run(&settings).await?),
    }
}

struct Output {
    json: bool,
}

impl Output {
    fn json<T: Serialize>(&self, value: &T) -> Result<(), CliError> {
        let s = serde_json::to_string(value).map_err(|e| CliError::Output(e.to_string()))?;
        self.line(&s)
    }

    fn line(&self, s: &str) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{s}")
            .and_then(|()| stdout.flush())
            .map_err(|e| CliError::Output(e.to_string()))
    }

    fn table(&self, headers: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
        self.line(render_table(headers, rows).trim_end())
    }
}

/// Left-aligned columns two spaces apart, no borders, no trailing spaces.
fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(headers.iter().copied())
        .add_rows(rows.iter().map(|r| r.iter().map(String::as_str)));
    let last = headers.len().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    let mut s = table.trim_fmt();
    s.push('\n');
    s
}

async fn open_store(settings: &Settings) -> Result<Store, CliError> {
    Ok(Store::open(&settings.store).await?)
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".to_owned())
}

fn expires_in(a: &Account, now: i64) -> String {
    a.access_token_expires_at_ms
        .map_or_else(|| "unknown".to_owned(), |t| util::human_until(t, now))
}

// ---- pool ----

async fn pool_cmd(settings: &Settings, out: &Output, cmd: PoolCmd) -> Result<(), CliError> {
    match cmd {
        PoolCmd::Create { name } => {
            // Validate before touching the store so bad input creates nothing.
            codexmesh_store::validate_pool_name(&name)?;
            let store = open_store(settings).await?;
            let pool = store.create_pool(&Actor::cli(), &name).await?;
            if out.json {
                out.json(&pool)
            } else {
                out.line(&format!("created pool {} ({})", pool.name, pool.id))
            }
        }
        PoolCmd::List => {
            let store = open_store(settings).await?;
            let report =
                codexmesh_engine::status::build(&store, settings.health_window_secs).await?;
            if out.json {
                #[derive(Serialize)]
                struct Row<'a> {
                    #[serde(flatten)]
                    pool: &'a codexmesh_store::Pool,
                    accounts: usize,
                    keys: codexmesh_engine::status::KeyCounts,
                }
                let rows: Vec<Row> = report
                    .pools
                    .iter()
                    .map(|p| Row {
                        pool: &p.pool,
                        accounts: p.accounts.len(),
                        keys: p.keys,
                    })
                    .collect();
                return out.json(&rows);
            }
            let rows: Vec<Vec<String>> = report
                .pools
                .iter()
                .map(|p| {
                    vec![
                        p.pool.name.clone(),
                        p.pool.id.clone(),
                        p.pool.routing.strategy.to_string(),
                        p.accounts.len().to_string(),
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
        PoolCmd::SetRouting { name, routing } => {
            set_pool_routing(settings, out, &name, &routing).await
        }
    }
}

/// `{"pool", <effective routing>}`.
#[derive(Serialize)]
struct PoolRoutingJson<'a> {
    pool: &'a str,
    #[serde(flatten)]
    routing: RoutingView,
}

/// `{"key", "label", "pool", "mode", <effective routing>}`.
#[derive(Serialize)]
struct KeyRoutingJson<'a> {
    key: &'a str,
    label: &'a str,
    pool: &'a str,
    mode: RoutingMode,
    #[serde(flatten)]
    routing: RoutingView,
}

/// The settings as indented "name  value" lines for people.
fn routing_text(v: &RoutingView) -> String {
    let rows = [
        ("strategy", v.strategy.to_string()),
        ("max attempts", v.max_attempts.to_string()),
        ("explain routes", v.explain_routes.to_string()),
        (
            "websockets",
            if v.websockets { "on" } else { "off" }.to_owned(),
        ),
        (
            "primary account",
            v.primary_account_id
                .clone()
                .unwrap_or_else(|| "- (first by priority)".to_owned()),
        ),
        (
            "5-hour threshold",
            format!("{}%", v.primary_threshold_percent),
        ),
        (
            "weekly threshold",
            format!("{}%", v.secondary_threshold_percent),
        ),
        ("circuit failures", v.circuit_failures.to_string()),
        ("circuit open", format!("{} ms", v.circuit_open_ms)),
        ("cooldown max", format!("{} ms", v.cooldown_max_ms)),
    ];
    rows.iter()
        .map(|(k, v)| format!("  {k:<17} {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A primary account only steers primary_first: say so rather than let it look effective.
fn warn_unused_primary(patch: &RoutingPatch, v: &RoutingView) {
    if matches!(patch.primary, Some(Primary::Account(_))) && v.strategy != Strategy::PrimaryFirst {
        eprintln!(
            "note: the primary account is stored but only matters with --strategy primary_first \
             (the strategy is {})",
            v.strategy
        );
    }
}

async fn set_pool_routing(
    settings: &Settings,
    out: &Output,
    name: &str,
    args: &RoutingArgs,
) -> Result<(), CliError> {
    // Parse and check every flag before touching the store: bad input changes nothing.
    let patch = args.raw().parse()?;
    let store = open_store(settings).await?;
    let result = if patch.is_empty() {
        codexmesh_store::Changed {
            changed: false,
            item: store.pool_by_name(name).await?,
        }
    } else {
        store.set_pool_routing(&Actor::cli(), name, &patch).await?
    };
    let pool = &result.item;
    let view = pool.routing.view();
    warn_unused_primary(&patch, &view);
    if result.changed {
        let custom = store
            .list_keys(Some(&pool.name))
            .await?
            .iter()
            .filter(|k| k.routing_mode == RoutingMode::Custom)
            .count();
        if custom > 0 {
            eprintln!(
                "note: {custom} key(s) of pool {} have their own routing and keep it \
                 (codexmesh key set-routing ID --inherit to follow the pool)",
                pool.name
            );
        }
    }
    if out.json {
        return out.json(&PoolRoutingJson {
            pool: &pool.name,
            routing: view,
        });
    }
    let what = match (patch.is_empty(), result.changed) {
        (true, _) => "",
        (false, true) => " (changed)",
        (false, false) => " (unchanged)",
    };
    out.line(&format!("pool {} routing{what}:", pool.name))?;
    out.line(&routing_text(&view))
}

// ---- account ----

async fn account_cmd(settings: &Settings, out: &Output, cmd: AccountCmd) -> Result<(), CliError> {
    match cmd {
        AccountCmd::Import { path, pool, name } => {
            import_account(settings, out, &path, &pool, name.as_deref()).await
        }
        AccountCmd::List { pool } => {
            let store = open_store(settings).await?;
            let accounts = store.list_accounts(pool.as_deref()).await?;
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
        AccountCmd::Refresh { account } => refresh_account(settings, out, &account).await,
        AccountCmd::Export {
            account,
            out: path,
            force,
            keep,
        } => export_account(settings, out, &account, &path, force, keep).await,
        AccountCmd::Login {
            pool,
            name,
            timeout_secs,
        } => login_account(settings, out, &pool, name.as_deref(), timeout_secs).await,
        AccountCmd::Set {
            account,
            priority,
            weight,
        } => {
            set_account(
                settings,
                out,
                &account,
                priority.as_deref(),
                weight.as_deref(),
            )
            .await
        }
        AccountCmd::Pause { account } => set_paused(settings, out, &account, true).await,
        AccountCmd::Resume { account } => set_paused(settings, out, &account, false).await,
        AccountCmd::Remove { account } => {
            let store = open_store(settings).await?;
            let removed = store.remove_account(&Actor::cli(), &account).await?;
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
    }
}

async fn import_account(
    settings: &Settings,
    out: &Output,
    path: &Path,
    pool: &str,
    label: Option<&str>,
) -> Result<(), CliError> {
    // Parse and check everything before writing anything.
    let creds = authjson::read_file(path).map_err(|source| CliError::AuthJson {
        path: path.to_owned(),
        source,
    })?;
    if let Some(l) = label {
        codexmesh_store::validate_label(l)?;
    }
    let store = open_store(settings).await?;
    store.pool_by_name(pool).await?;
    let key = settings.master_key()?;
    let result = store
        .import_account(&Actor::cli(), pool, label, &creds, &key)
        .await?;
    let a = &result.account;
    if let Some(exp) = a.access_token_expires_at_ms {
        if exp <= now_ms() {
            eprintln!(
                "warning: this access token already expired ({}); requests through the account \
                 fail until it is refreshed or re-imported",
                util::fmt_utc_ms(exp)
            );
        }
    }
    eprintln!(
        "note: the gateway now uses this login's refresh token; do not keep using this \
         auth.json in another Codex install (refresh tokens rotate)"
    );
    print_import(out, &result)
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

async fn set_account(
    settings: &Settings,
    out: &Output,
    ident: &str,
    priority: Option<&str>,
    weight: Option<&str>,
) -> Result<(), CliError> {
    let priority = priority
        .map(|r| parse_u32_in("--priority", r, &(0..=u32::MAX)))
        .transpose()?;
    let weight = weight
        .map(|r| parse_u32_in("--weight", r, &WEIGHT))
        .transpose()?;
    let store = open_store(settings).await?;
    let result = if priority.is_none() && weight.is_none() {
        codexmesh_store::Changed {
            changed: false,
            item: store.account(ident).await?,
        }
    } else {
        store
            .set_account_routing(&Actor::cli(), ident, priority, weight)
            .await?
    };
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

async fn set_paused(
    settings: &Settings,
    out: &Output,
    ident: &str,
    paused: bool,
) -> Result<(), CliError> {
    let store = open_store(settings).await?;
    let result = store
        .set_account_paused(&Actor::cli(), ident, paused)
        .await?;
    if out.json {
        return out.json(&result);
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

async fn refresh_account(settings: &Settings, out: &Output, ident: &str) -> Result<(), CliError> {
    let store = open_store(settings).await?;
    let key = settings.master_key()?;
    store.verify_master_key(&key).await?;
    let before = store.account(ident).await?;
    let http = codexmesh_engine::oauth::http_client().map_err(|e| CliError::Http(e.to_string()))?;
    let refresher = Refresher::new(
        store.clone(),
        key,
        http,
        RefresherConfig::from_settings(settings),
        refresh::holder_id("cli"),
        Actor::cli(),
        None,
    );
    let done = refresher
        .refresh(
            &before.id,
            Request {
                trigger: Trigger::Manual,
                seen_revision: before.token_revision,
                wait: true,
            },
        )
        .await?;
    let after = store.account(&before.id).await?;
    let by_us = matches!(done, Done::Refreshed { .. });
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
            by: if by_us { "this" } else { "other" },
            account: &after,
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
    if by_us {
        out.line(&format!(
            "refreshed account {} ({}): the access token expires {expiry}",
            after.label, after.id
        ))
    } else {
        out.line(&format!(
            "account {} ({}) was refreshed by another process meanwhile: the access token \
             expires {expiry}",
            after.label, after.id
        ))
    }
}

async fn export_account(
    settings: &Settings,
    out: &Output,
    ident: &str,
    path: &Path,
    force: bool,
    keep: bool,
) -> Result<(), CliError> {
    if !force && std::fs::symlink_metadata(path).is_ok() {
        return Err(CliError::Usage(format!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        )));
    }
    let store = open_store(settings).await?;
    let key = settings.master_key()?;
    store.verify_master_key(&key).await?;
    let account = store.account(ident).await?;
    // Hold the refresh lease, so no refresh rotates the token while it changes hands.
    let holder = refresh::holder_id("cli-export");
    let lease = format!("refresh:{}", account.id);
    let lease_ms =
        i64::try_from(settings.refresh_lease_secs.saturating_mul(1000)).unwrap_or(60_000);
    let patience = std::time::Instant::now()
        + std::time::Duration::from_millis(u64::try_from(lease_ms).unwrap_or(60_000))
        + std::time::Duration::from_secs(10);
    while !store.try_acquire_lease(&lease, &holder, lease_ms).await? {
        if std::time::Instant::now() > patience {
            return Err(RefreshError::LeaseTimeout {
                label: account.label.clone(),
            }
            .into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let result = export_leased(&store, &key, &account.id, path, force, keep).await;
    if let Err(e) = store.release_lease(&lease, &holder).await {
        tracing::warn!(error = %e, "cannot release the refresh lease; it expires on its own");
    }
    let (account, removed) = result?;
    if account.state == codexmesh_store::AccountState::NeedsReauth {
        eprintln!(
            "warning: account {} needs re-authentication ({}): the exported refresh token \
             no longer works",
            account.label,
            account.state_reason.as_deref().unwrap_or("unknown")
        );
    }
    if removed {
        eprintln!(
            "removed account {} from pool {}: its refresh token now belongs to whoever holds {}",
            account.label,
            account.pool,
            path.display()
        );
    } else {
        eprintln!(
            "warning: account {} stays in pool {} (--keep): the gateway and the holder of {} \
             now share one refresh token; whichever refreshes second loses the login",
            account.label,
            account.pool,
            path.display()
        );
    }
    if out.json {
        #[derive(Serialize)]
        struct Exported<'a> {
            path: &'a Path,
            removed: bool,
            account: &'a Account,
        }
        return out.json(&Exported {
            path,
            removed,
            account: &account,
        });
    }
    out.line(&format!(
        "wrote {} (account {}, {})",
        path.display(),
        account.label,
        account.chatgpt_account_id
    ))
}

async fn export_leased(
    store: &Store,
    key: &codexmesh_store::crypto::MasterKey,
    id: &str,
    path: &Path,
    force: bool,
    keep: bool,
) -> Result<(Account, bool), CliError> {
    let s = store.account_secrets(id, key).await?;
    let text = authjson::render(
        &s.id_token,
        &s.access_token,
        &s.refresh_token,
        &s.account.chatgpt_account_id,
        &util::fmt_rfc3339_ms(
            s.account
                .last_refresh_at_ms
                .unwrap_or(s.account.tokens_updated_at_ms),
        ),
    );
    // Mode 0600, never a partial file, and no existing file replaced unless --force.
    let existing = if force {
        files::Existing::Replace
    } else {
        files::Existing::Keep
    };
    files::write_file_atomically(path, text.as_bytes(), files::Access::Private, existing).map_err(
        |source| CliError::Write {
            path: path.to_owned(),
            source,
        },
    )?;
    if keep {
        return Ok((s.account, false));
    }
    let removed = store.remove_account(&Actor::cli(), id).await?;
    Ok((removed, true))
}

async fn login_account(
    settings: &Settings,
    out: &Output,
    pool: &str,
    label: Option<&str>,
    timeout_secs: u64,
) -> Result<(), CliError> {
    if let Some(l) = label {
        codexmesh_store::validate_label(l)?;
    }
    if timeout_secs == 0 {
        return Err(CliError::Usage(
            "--timeout-secs must be at least 1".to_owned(),
        ));
    }
    // Everything that can fail without a person's help, before asking for one.
    let store = open_store(settings).await?;
    store.pool_by_name(pool).await?;
    let key = settings.master_key()?;
    store.verify_master_key(&key).await?;
    let http = codexmesh_engine::oauth::http_client().map_err(|e| CliError::Http(e.to_string()))?;
    let issuer = settings.auth_base_url.trim_end_matches('/').to_owned();

    let code = codexmesh_engine::login::request_user_code(&http, &issuer).await?;
    let minutes = code
        .expires_at_ms
        .map_or(15, |e| ((e - now_ms()).max(0) + 59_999) / 60_000);
    eprintln!(
        "To add a ChatGPT account to pool {pool}, open\n\n    {}\n\nand enter the code\n\n    \
         {}\n\n(it expires in {minutes} minutes). Device codes are a common phishing target: \
         only enter a code you asked for yourself.\nWaiting for the approval...",
        codexmesh_engine::login::verification_url(&issuer),
        code.user_code
    );
    let approval = codexmesh_engine::login::wait_for_approval(
        &http,
        &issuer,
        &code,
        std::time::Duration::from_secs(timeout_secs),
    )
    .await?;
    let tokens = codexmesh_engine::login::exchange(&http, &issuer, &approval).await?;
    // The claims decide the account, exactly as for an imported auth.json.
    let rendered = authjson::render(
        &tokens.id_token,
        &tokens.access_token,
        &tokens.refresh_token,
        "",
        &util::fmt_rfc3339_ms(now_ms()),
    );
    let creds = authjson::parse(rendered.as_bytes()).map_err(|e| {
        CliError::Login(LoginError::BadAnswer(format!(
            "the new login's tokens: {e}"
        )))
    })?;
    let result = store
        .import_account(&Actor::cli(), pool, label, &creds, &key)
        .await?;
    eprintln!("approved: the gateway holds this login now");
    print_import(out, &result)
}

// ---- key ----

#[derive(Serialize)]
struct CreatedKey<'a> {
    id: &'a str,
    pool: &'a str,
    label: &'a str,
    key: &'a str,
    operator: bool,
}

async fn key_cmd(settings: &Settings, out: &Output, cmd: KeyCmd) -> Result<(), CliError> {
    match cmd {
        KeyCmd::Create {
            pool,
            name,
            operator,
        } => {
            if let Some(l) = &name {
                codexmesh_store::validate_label(l)?;
            }
            let store = open_store(settings).await?;
            let (key, raw) = store
                .issue_key(&Actor::cli(), &pool, name.as_deref(), operator)
                .await?;
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
        KeyCmd::List { pool } => {
            let store = open_store(settings).await?;
            let keys = store.list_keys(pool.as_deref()).await?;
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
        KeyCmd::SetRouting {
            key,
            inherit,
            routing,
        } => set_key_routing(settings, out, &key, inherit, &routing).await,
        KeyCmd::Revoke { key } => {
            let store = open_store(settings).await?;
            let result = store.revoke_key(&Actor::cli(), &key).await?;
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
    }
}

async fn set_key_routing(
    settings: &Settings,
    out: &Output,
    ident: &str,
    inherit: bool,
    args: &RoutingArgs,
) -> Result<(), CliError> {
    // Parse and check every flag before touching the store: bad input changes nothing.
    let patch = args.raw().parse()?;
    if inherit && !patch.is_empty() {
        return Err(CliError::Usage(format!(
            "--inherit drops the key's own routing; it cannot be combined with {}",
            patch.flags().join(", ")
        )));
    }
    let store = open_store(settings).await?;
    let change = if inherit {
        Some(KeyRoutingChange::Inherit)
    } else if patch.is_empty() {
        None
    } else {
        Some(KeyRoutingChange::Custom(patch.clone()))
    };
    let result = match &change {
        Some(c) => store.set_key_routing(&Actor::cli(), ident, c).await?,
        None => codexmesh_store::Changed {
            changed: false,
            item: store.key_routing(ident).await?,
        },
    };
    let KeyRouting { key, pool } = &result.item;
    let view = result.item.effective().view();
    warn_unused_primary(&patch, &view);
    if key.status == codexmesh_store::KeyStatus::Revoked && result.changed {
        eprintln!(
            "note: key {} is revoked; its routing only matters if it is used again",
            key.id
        );
    }
    if out.json {
        return out.json(&KeyRoutingJson {
            key: &key.id,
            label: &key.label,
            pool: &pool.name,
            mode: key.routing_mode,
            routing: view,
        });
    }
    let what = match (change.is_some(), result.changed) {
        (false, _) => "",
        (true, true) => " (changed)",
        (true, false) => " (unchanged)",
    };
    let mode = match key.routing_mode {
        RoutingMode::Inherit => format!("inherits pool {}", pool.name),
        RoutingMode::Custom => format!("own settings, pool {}", pool.name),
    };
    out.line(&format!(
        "key {} ({}) routing{what}: {mode}",
        key.id, key.label
    ))?;
    out.line(&routing_text(&view))
}

// ---- status ----

/// "42%" for a window as routing sees it, "-" without evidence.
fn pct(w: Option<&codexmesh_engine::status::WindowView>) -> String {
    w.map_or_else(|| "-".to_owned(), |w| format!("{:.0}%", w.used_percent))
}

/// When the busier window resets ("in 2h 3m"), "-" without evidence.
fn resets(a: &AccountStatus) -> String {
    let Some(q) = &a.quota else {
        return "-".to_owned();
    };
    [q.primary.as_ref(), q.secondary.as_ref()]
        .into_iter()
        .flatten()
        .filter(|w| w.resets_in_secs > 0)
        .max_by(|x, y| x.used_percent.total_cmp(&y.used_percent))
        .map_or_else(
            || "-".to_owned(),
            |w| format!("in {}", util::human_span_ms(&(w.resets_in_secs * 1000))),
        )
}

async fn status_cmd(settings: &Settings, out: &Output) -> Result<(), CliError> {
    let store = open_store(settings).await?;
    let report = codexmesh_engine::status::build(&store, settings.health_window_secs).await?;
    if out.json {
        return out.json(&report);
    }
    if report.pools.is_empty() {
        return out.line("no pools yet: codexmesh pool create NAME (or codexmesh up)");
    }
    let now = now_ms();
    let mut rows = Vec::new();
    for p in &report.pools {
        if p.accounts.is_empty() {
            let mut row = vec![p.pool.name.clone(), "(no accounts)".to_owned()];
            row.resize(11, String::new());
            rows.push(row);
        }
        for s in &p.accounts {
            let a = &s.account;
            let q = s.quota.as_ref();
            rows.push(vec![
                p.pool.name.clone(),
                a.label.clone(),
                a.chatgpt_account_id.clone(),
                opt(&a.plan),
                a.state_display(),
                expires_in(a, now),
                pct(q.and_then(|q| q.primary.as_ref())),
                pct(q.and_then(|q| q.secondary.as_ref())),
                resets(s),
                s.health.score.to_string(),
                format!(
                    "{}/{}/{}",
                    s.counters.requests, s.counters.successes, s.counters.fallbacks_served
                ),
            ]);
        }
    }
    out.table(
        &[
            "POOL",
            "ACCOUNT",
            "CHATGPT ACCOUNT ID",
            "PLAN",
            "STATE",
            "TOKEN EXPIRES",
            "5H",
            "WEEK",
            "RESETS",
            "HEALTH",
            "REQ/OK/FALLBACK",
        ],
        &rows,
    )?;
    out.line("")?;
    for p in &report.pools {
        let r = &p.pool.routing;
        let primary = match (&r.strategy, &r.primary_account_id) {
            (Strategy::PrimaryFirst, Some(id)) => {
                let label = p
                    .accounts
                    .iter()
                    .find(|a| &a.account.id == id)
                    .map_or(id.as_str(), |a| a.account.label.as_str());
                format!(" (primary {label})")
            }
            _ => String::new(),
        };
        out.line(&format!(
            "pool {}: strategy {}{primary}, {} active key(s), {} revoked",
            p.pool.name, r.strategy, p.keys.active, p.keys.revoked
        ))?;
    }
    out.line(&format!("store revision {}", report.revision))
}

// ---- request log ----

async fn requests_cmd(
    settings: &Settings,
    out: &Output,
    filter: &codexmesh_engine::requests::Filter,
) -> Result<(), CliError> {
    // Checked before the store is opened: a bad number touches nothing.
    codexmesh_engine::requests::check_limit(filter.limit)?;
    let store = open_store(settings).await?;
    let entries = codexmesh_engine::requests::query(&store, filter).await?;
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
                or_id(&e.account, &e.account_id),
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

// ---- serve ----

async fn serve_cmd(settings: &Settings) -> Result<(), CliError> {
    let signals = server::watch_signals();
    let store = open_store(settings).await?;
    let running = server::start(settings, store.clone()).await?;
    // One line on stdout once both listeners are bound: harnesses wait for it.
    Output { json: false }.line(&format!(
        "codexmesh serving grpc={} admin={}",
        running.grpc_addr, running.admin_addr
    ))?;
    let token = running.shutdown_token();
    tokio::spawn(async move {
        signals.cancelled().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    running.finish().await?;
    store.close().await;
    Ok(())
}

// ---- envoy-bootstrap ----

fn envoy_bootstrap_cmd(
    settings: &Settings,
    out: &Output,
    path: &Path,
    node_id: &str,
    control_plane: Option<&str>,
) -> Result<(), CliError> {
    let control_plane = control_plane
        .map(envoy_bootstrap::ControlPlaneTarget::parse)
        .transpose()?;
    if control_plane.is_none() && settings.grpc_listen.port() == 0 {
        return Err(CliError::Usage(
            "grpc_listen has port 0; Envoy needs the control plane's real port".to_owned(),
        ));
    }
    if node_id.is_empty() || node_id.chars().any(char::is_control) {
        return Err(CliError::Usage(
            "--node-id must be non-empty printable text".to_owned(),
        ));
    }
    let mut params = envoy_bootstrap::from_settings(settings, node_id, settings.grpc_listen);
    if let Some(target) = control_plane {
        params.control_plane = target;
    }
    let yaml = envoy_bootstrap::render(&params)?;
    files::write_shared_file(path, yaml.as_bytes()).map_err(|source| CliError::Write {
        path: path.to_owned(),
        source,
    })?;
    if out.json {
        #[derive(Serialize)]
        struct Written<'a> {
            path: &'a Path,
            node_id: &'a str,
        }
        return out.json(&Written { path, node_id });
    }
    out.line(&format!("wrote {}", path.display()))
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
    fn table_alignment() {
        let t = render_table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
        // Empty cells, a row wider than the header, a short row, no rows.
        let t = render_table(
            &["ID", "NAME", "NOTE"],
            &[
                vec!["1".into(), String::new(), "long note".into()],
                vec!["22".into(), "b".into()],
            ],
        );
        assert_eq!(t, "ID  NAME  NOTE\n1         long note\n22  b\n");
        assert_eq!(render_table(&["A", "B"], &[]), "A  B\n");
    }
}
