//! codexmesh's control-plane engine: everything `serve` runs and the use cases every surface
//! (CLI, admin API, and later the dashboard and MCP) calls.
//!
//! Rules this crate keeps: it reads and writes state only through `codexmesh_store`; it talks to
//! the outside (the auth server, the upstream's usage endpoint, Envoy over gRPC, operators over
//! HTTP) and nothing above it does; a workflow (import, refresh, set routing, …) is written once
//! here and called from every surface.
//!
//! - [`config`]: settings (flag > environment > file > default) and secrets;
//! - [`server`]: `serve` — the gRPC push service ([`push`]) and the admin API ([`api`]) side by
//!   side, with the lifecycle workers ([`lifecycle`]: refresh, quota polls, health, retention,
//!   watched folders);
//! - [`snapshot`]: builds, encodes and publishes what the filters run on;
//! - [`refresh`], [`oauth`], [`login`]: tokens and the auth server;
//! - [`quota`]: active quota polls and the evidence write;
//! - [`status`], [`requests`]: the reports operators read.

pub mod api;
pub mod config;
pub mod lifecycle;
pub mod login;
pub mod oauth;
pub mod push;
pub mod quota;
pub mod refresh;
pub mod requests;
pub mod server;
pub mod snapshot;
pub mod status;
pub mod watch;
