//! The `codexmesh` command: wiring only. Each command group parses its arguments, calls the
//! engine's use cases and renders their results (tables for people, `--json` for machines);
//! `up` runs `serve` with a managed Envoy whose bootstrap [`envoy_bootstrap`] renders.
//!
//! `main.rs` only calls [`cli::main`]; the library target exists so the integration tests can
//! render a bootstrap the way `up` does.

pub mod cli;
pub mod envoy_bootstrap;
pub mod up;
