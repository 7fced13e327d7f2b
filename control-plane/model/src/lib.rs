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
//! - [`headroom`]: how much of a quota window is left across a pool;
//! - [`health`]: the 0–100 health score from outcome windows;
//! - [`credentials`]: what an import needs from a login, Codex `auth.json` and the JWT claims
//!   read from it; [`claude_credentials`] and [`gemini_credentials`]: Claude Code's and Gemini
//!   CLI's files; [`credential_files`]: telling the three apart;
//! - [`keys`]: pool keys (format, hashing);
//! - [`operators`]: operators, roles, API tokens and who may see or change which pool;
//! - [`network`]: CIDR lists (pool allowlists, the admin allowlist, trusted proxies);
//! - [`ids`]: identifiers and the names people give things;
//! - [`declarative`], [`declarative_plan`]: `codexmesh apply`'s documents (read, checked,
//!   written back) and what applying them to a store's state changes;
//! - [`util`]: the clock, random values, constant-time token checks, times for people.
#![forbid(unsafe_code)]

/// A closed set of names stored as text: `as_str`, `parse`, `ALL`, `Display`, serialised in
/// snake_case. Defined before the modules so each can use it.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// From its name; anything else is an error listing the names.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).ok_or_else(|| {
                    let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    serde::de::Error::custom(format!(
                        "{s:?} is not one of {}",
                        names.join(", ")
                    ))
                })
            }
        }
    };
}

pub mod activity;
pub mod alerts;
pub mod claude_credentials;
pub mod credential_files;
pub mod credentials;
pub mod declarative;
pub mod declarative_plan;
pub mod egress;
pub mod forecast;
pub mod gemini_credentials;
pub mod headroom;
pub mod health;
pub mod ids;
pub mod invites;
pub mod keys;
pub mod network;
pub mod operators;
pub mod policy;
pub mod quota;
pub mod records;
pub mod routing;
pub mod usage;
pub mod util;
pub mod warmup;

pub use records::*;
