//! The codexmesh data path, independent of any proxy host.
//!
//! Everything that decides something lives here and is tested natively and compiled to wasm; the
//! proxy-wasm adapter (`filter/wasm`) only moves bytes between Envoy and these functions. Time is
//! always passed in (`now_unix_ms`): wasm has no system clock of its own.

pub mod acceptance;
pub mod affinity;
pub mod auth;
pub mod claude;
pub mod config;
pub mod egress;
pub mod endpoints;
pub mod errors;
pub mod evidence;
pub mod gemini;
pub mod handoff;
pub mod headers;
pub mod local;
pub mod network;
pub mod outbox;
#[cfg(test)]
mod parser_props;
// The fuzz checks (`fuzz/checks/`, run by `parser_props`) name this crate as the fuzzers do.
#[cfg(test)]
extern crate self as codexmesh_filter_core;
pub mod policy;
pub mod pool_index;
pub mod provider;
pub mod ranker;
pub mod routing;
pub mod snapshot;
pub mod stats;
pub mod stream_end;
pub mod supervisor;
pub mod tokens;
pub mod translate;
pub mod turnstate;
pub mod usage;
pub mod verdict;

pub use codexmesh_proto::v1 as pb;
