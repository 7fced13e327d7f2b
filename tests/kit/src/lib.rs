//! The one test kit of codexmesh: the control-plane integration tests
//! (`control-plane/codexmesh/tests`), the engine's store scenarios, the end-to-end suite
//! (`tests/e2e`) and the Envoy benchmarks (`tests/bench-push`) start their processes with it.
//!
//! What it starts: the `codexmesh` binary ([`Workspace`] for CLI runs with flag settings,
//! [`ControlPlane`] for env settings, [`Served`] for `serve`), the ChatGPT simulator ([`Sim`], in
//! this process or as its binary), Envoy with the built wasm module ([`Envoy`], bootstrap
//! rendered by the CLI as `codexmesh up` does), a whole gateway ([`Stack`]) and a throwaway
//! PostgreSQL ([`pg::TempPostgres`]).
//!
//! Rules every module keeps:
//! - **Own children only.** Every process the kit starts is a child it owns ([`proc::Proc`]),
//!   signalled and killed by its PID when its guard drops; never by name.
//! - **Bounded waits.** Every wait has a deadline ([`wait`]) and fails with what it saw last.
//! - **No leaks in, nothing out.** `codexmesh` commands start with the developer's settings
//!   removed ([`env::SCRUBBED_ENV`]) and their outbound URLs on a closed loopback port
//!   ([`env::NOWHERE`]) until a test points them at a simulator; everything listens on
//!   loopback ports the OS picks.
//! - **Binaries, not crates.** The kit links no control-plane crate (engine, store): it runs the
//!   built binaries ([`bin`]) and speaks to them over the CLI, HTTP and gRPC.
//! - **Errors, not panics.** Helpers return [`anyhow::Result`] (which `?` turns into the
//!   [`AnyError`] the control-plane tests return); only assertion helpers panic.

pub mod agent_clis;
pub mod auth;
pub mod bin;
pub mod cli;
pub mod connect_proxy;
pub mod env;
pub mod envoy;
pub mod leaks;
pub mod load;
pub mod net;
pub mod pg;
pub mod proc;
pub mod serve;
pub mod sim;
pub mod source;
pub mod sse;
pub mod stack;
pub mod tls;
pub mod wait;

pub use auth::{jwt, Login};
pub use bin::{repo_root, Artifacts};
pub use cli::{logical_state, Cli, Run, Workspace};
pub use envoy::Envoy;
pub use load::{Load, LoadFigures, LoadSpec};
pub use net::{free_port, http_get, http_get_with, raw_http, RawResponse};
pub use proc::{tail, Proc};
pub use serve::Served;
pub use sim::Sim;
pub use stack::{
    import_account, openai_error_code, turn_body, ControlPlane, CpEnv, Stack, StackOptions, POOL,
};

/// The error type of the control-plane tests' helpers (any error, as a box).
pub type AnyError = Box<dyn std::error::Error>;
/// What a control-plane test returns.
pub type TestResult = Result<(), AnyError>;

/// A fresh temporary directory for one test (`prefix` names it). `CODEXMESH_E2E_KEEP=1` keeps it
/// (logs, bootstrap, store) after the test, for a look. The leak scan reads it before it goes
/// ([`leaks::TestDir`]).
pub fn test_dir(prefix: &str) -> anyhow::Result<leaks::TestDir> {
    Ok(leaks::TestDir::new(
        tempfile::Builder::new()
            .prefix(prefix)
            .disable_cleanup(std::env::var_os("CODEXMESH_E2E_KEEP").is_some())
            .tempdir()?,
    ))
}
