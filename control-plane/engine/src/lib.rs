//! codexmesh's control-plane engine: everything `serve` runs and the use cases every surface
//! (CLI, admin API, the dashboard, and later MCP) calls.
//!
//! Rules this crate keeps: it reads and writes state only through `codexmesh_store`; it talks to
//! the outside (the auth server, the upstream's usage endpoint, Envoy over gRPC, operators over
//! HTTP) and nothing above it does; a workflow (import, refresh, set routing, …) is written once
//! in [`ops`] and called from every surface. Its public API is deliberate: [`config`], [`ops`],
//! [`server`] and [`snapshot`]; everything else is internal.
//!
//! Dependencies point one way: `server` → `api` → `ops` → (`status`, `requests`, `refresh`,
//! `login`, `oauth`, `quota`) → store; `ops` never depends on `api` or `server`.
//!
//! - [`config`]: settings (flag > environment > file > default) and secrets;
//! - [`ops`]: the use cases (pools, accounts, keys, reports) with their notices and errors;
//! - [`server`]: `serve` — the gRPC push service (`push`) and the admin API (`api`) side by
//!   side, with the lifecycle workers (`lifecycle`: refresh, quota polls, health, retention,
//!   watched folders (`watch`));
//! - `dashboard`: the operator dashboard's files, embedded and served beside the admin API;
//! - [`snapshot`]: builds, encodes and publishes what the filters run on;
//! - `refresh`, `oauth`, `login`: tokens and the auth server;
//! - `quota`: active quota polls and the evidence write;
//! - `status`, `requests`: the reports operators read (through [`ops::reports`]);
//! - [`tls`]: TLS on the two listeners (client certificates) and the outbound client's trust;
//! - `metrics`: the Prometheus metrics (`/metrics`) and the readiness check (`/readyz`).

pub mod alerts;
mod api;
pub mod config;
mod dashboard;
mod envoys;
mod lifecycle;
mod login;
mod metrics;
mod oauth;
pub mod ops;
mod push;
mod quota;
mod refresh;
mod requests;
pub mod server;
pub mod snapshot;
mod status;
pub mod tls;
pub mod usage_push;
pub mod warmup;
mod watch;
pub mod webhooks;
