//! codexmesh's domain: the types every other control-plane crate speaks, with no I/O.
//!
//! Rules this crate keeps: nothing here touches a file, a socket or a database (the clock and the
//! OS random source are the only things it reads); nothing here holds a plaintext secret in a
//! type that can be printed or serialised; values are checked where they are made (a `Strategy`
//! is one of four, a label is short and printable), so the crates above never re-check them.
//!
//! - [`records`]: pools, accounts, keys, quota evidence, outcomes as the store keeps them;
//! - [`routing`]: routing settings, their views and how a change to them is parsed and checked;
//! - [`quota`]: what quota evidence says and how two pieces of it merge;
//! - [`health`]: the 0–100 health score from outcome windows;
//! - [`credentials`]: Codex `auth.json` and the JWT claims read from it;
//! - [`keys`]: pool keys (format, hashing);
//! - [`ids`]: identifiers and the names people give things;
//! - [`util`]: the clock, random values, constant-time token checks, times for people.
#![forbid(unsafe_code)]

pub mod credentials;
pub mod health;
pub mod ids;
pub mod keys;
pub mod quota;
pub mod records;
pub mod routing;
pub mod util;

pub use records::*;
