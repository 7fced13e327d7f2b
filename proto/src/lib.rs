//! Generated types for the codexmesh control-plane ↔ Envoy contract (`codexmesh.proto`).
#![allow(clippy::derive_partial_eq_without_eq)]

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/codexmesh.v1.rs"));
}

pub use prost::Message;
