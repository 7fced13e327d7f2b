//! The environment of every `codexmesh` process the kit starts.
//!
//! Rules: a `codexmesh` command comes from [`codexmesh_command`] and nowhere else. It starts with
//! every setting in [`SCRUBBED_ENV`] removed, so the developer's shell cannot change what a test
//! sees, and with the outbound URLs (upstream, OAuth token, device login) on [`NOWHERE`], so no
//! test reaches the Internet unless it points them at a simulator. stdin is `/dev/null`.
//! [`SCRUBBED_ENV`] is the one list of those variables: a new `CODEXMESH_*` setting of the
//! control plane (`control-plane/engine/src/config.rs`) belongs here, and the engine's test
//! `the_test_kit_scrubs_exactly_the_declared_variables` fails until it is (the kit cannot
//! depend on the engine, so the check lives there).

use std::path::Path;
use std::process::{Command, Stdio};

/// Every variable the control plane reads as a setting (each `CODEXMESH_*` of
/// `control-plane/engine/src/config.rs`), plus `RUST_LOG`: removed from every `codexmesh` child.
pub const SCRUBBED_ENV: &[&str] = &[
    "CODEXMESH_CONFIG",
    "CODEXMESH_STORE",
    "CODEXMESH_DATA_DIR",
    "CODEXMESH_UPSTREAM_BASE_URL",
    "CODEXMESH_OAUTH_TOKEN_URL",
    "CODEXMESH_CLAUDE_BASE_URL",
    "CODEXMESH_CLAUDE_TOKEN_URL",
    "CODEXMESH_GEMINI_BASE_URL",
    "CODEXMESH_GOOGLE_TOKEN_URL",
    "CODEXMESH_GOOGLE_OAUTH_CLIENT_ID",
    "CODEXMESH_GOOGLE_OAUTH_CLIENT_SECRET",
    "CODEXMESH_AUTH_BASE_URL",
    "CODEXMESH_GRPC_LISTEN",
    "CODEXMESH_ADMIN_LISTEN",
    "CODEXMESH_GRPC_TLS_CERT",
    "CODEXMESH_GRPC_TLS_KEY",
    "CODEXMESH_GRPC_TLS_CLIENT_CA",
    "CODEXMESH_ADMIN_TLS_CERT",
    "CODEXMESH_ADMIN_TLS_KEY",
    "CODEXMESH_ADMIN_TLS_CLIENT_CA",
    "CODEXMESH_UPSTREAM_CA_FILE",
    "CODEXMESH_GATEWAY_LISTEN",
    "CODEXMESH_GATEWAY_URL",
    "CODEXMESH_ENVOY_ADMIN_LISTEN",
    "CODEXMESH_PUSH_TOKEN",
    "CODEXMESH_MASTER_KEY",
    "CODEXMESH_ENVOY_BIN",
    "CODEXMESH_WASM",
    "CODEXMESH_HEARTBEAT_INTERVAL_MS",
    "CODEXMESH_CHANGE_POLL_MS",
    "CODEXMESH_REFRESH_LEAD_SECS",
    "CODEXMESH_REFRESH_LEASE_SECS",
    "CODEXMESH_QUOTA_POLL_INTERVAL_SECS",
    "CODEXMESH_HEALTH_WINDOW_SECS",
    "CODEXMESH_OUTCOME_RETENTION_HOURS",
    "CODEXMESH_MAX_REQUEST_BODY_BYTES",
    "CODEXMESH_ENVOY_BUFFER_LIMIT_BYTES",
    "CODEXMESH_ENVOY_EGRESS_PROXIES",
    "CODEXMESH_ENVOY_MAX_HEAP_BYTES",
    "CODEXMESH_ENVOY_MAX_CONNECTIONS",
    "CODEXMESH_ENVOY_MAX_REQUEST_HEADERS_KB",
    "CODEXMESH_ENVOY_MAX_HEADERS_COUNT",
    "CODEXMESH_ENVOY_REQUEST_HEADERS_TIMEOUT_SECS",
    "CODEXMESH_ENVOY_HTTP2_MAX_CONCURRENT_STREAMS",
    "CODEXMESH_WEBSOCKET_MAX_LIFETIME_SECS",
    "CODEXMESH_WATCH",
    "CODEXMESH_WATCH_INTERVAL_MS",
    "CODEXMESH_REQUIRE_TOTP",
    "CODEXMESH_ADMIN_ALLOWED_CIDRS",
    "CODEXMESH_ADMIN_TRUSTED_PROXIES",
    "CODEXMESH_GATEWAY_TRUSTED_PROXIES",
    "CODEXMESH_ALERT_INTERVAL_MS",
    "CODEXMESH_ALERT_HEADROOM_PERCENT",
    "CODEXMESH_ALERT_ENVOY_LAG_SECS",
    "CODEXMESH_PUBLIC_URL",
    "CODEXMESH_FAULT",
    "CODEXMESH_USAGE_PUSH_INTERVAL_MS",
    "RUST_LOG",
];

/// Where the binary's outbound calls go unless a test points them at a simulator: a closed
/// loopback port (the discard port), so no test ever reaches the Internet.
pub const NOWHERE: &str = "http://127.0.0.1:9";

/// `bin` with [`SCRUBBED_ENV`] removed, outbound URLs on [`NOWHERE`] and stdin closed; the caller
/// adds its settings (env or flags) and the subcommand.
pub fn codexmesh_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.env(
        "CODEXMESH_UPSTREAM_BASE_URL",
        format!("{NOWHERE}/backend-api"),
    )
    .env(
        "CODEXMESH_OAUTH_TOKEN_URL",
        format!("{NOWHERE}/oauth/token"),
    )
    .env("CODEXMESH_CLAUDE_BASE_URL", NOWHERE)
    .env(
        "CODEXMESH_CLAUDE_TOKEN_URL",
        format!("{NOWHERE}/v1/oauth/token"),
    )
    .env("CODEXMESH_GEMINI_BASE_URL", NOWHERE)
    .env(
        "CODEXMESH_GOOGLE_TOKEN_URL",
        format!("{NOWHERE}/google/oauth2/token"),
    )
    .env("CODEXMESH_AUTH_BASE_URL", NOWHERE)
    .stdin(Stdio::null());
    cmd
}
