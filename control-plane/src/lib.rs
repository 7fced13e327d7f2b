//! codexmesh control plane: the store, the CLI, snapshot push to Envoy and the admin API.
//!
//! `main.rs` only calls [`cli::main`]; everything else is here so tests and later work can
//! drive the pieces directly (e.g. [`server::start`] in-process).

pub mod api;
pub mod authjson;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod envoy_bootstrap;
pub mod health;
pub mod keys;
pub mod lifecycle;
pub mod login;
pub mod oauth;
pub mod push;
pub mod quota;
pub mod refresh;
pub mod requests;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod status;
pub mod store;
pub mod up;
pub mod util;
pub mod watch;
