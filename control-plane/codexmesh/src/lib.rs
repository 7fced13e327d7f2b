//! The `codexmesh` command: wiring only. Each command group ([`cli`]) parses its arguments,
//! calls the engine's use cases (`codexmesh_engine::ops`) and renders their results (tables
//! for people, `--json` for machines); `up` runs `serve` with a managed Envoy whose bootstrap
//! [`envoy_bootstrap`] renders.
//!
//! Rules: no workflow lives here (deciding, validating and writing are the engine's); modules
//! depend one way: `cli` → (`up`, `envoy_bootstrap`) → engine, and `up` → `envoy_bootstrap`.
//!
//! `main.rs` only calls [`cli::main`]; the library target exists so the integration tests can
//! render a bootstrap the way `up` does.

mod announce;
pub mod cli;
pub mod envoy_bootstrap;
mod envoy_egress;
mod up;
