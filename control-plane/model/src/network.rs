//! Address lists people write: a pool's `allowed_cidrs` (which client addresses its keys work
//! from), the admin API's `admin_allowed_cidrs`, and the trusted proxies of both listeners.
//!
//! Rules kept here: a [`CidrList`] is checked where it is made (every entry a CIDR or an
//! address, as `codexmesh_proto::network` reads them: the filter and the admin API apply the
//! same rule with the same parser), so the crates above never re-check it; it is stored, pushed
//! and shown as canonical text (`10.0.0.0/8`, `127.0.0.1/32`), in the order given, without
//! duplicates; an empty list means "any address" for an allowlist and "nobody" for trusted
//! proxies.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use codexmesh_proto::network::{
    canonical, client_address, parse_address, parse_cidr, CidrError, CidrProblem, CidrSet,
    MAX_CIDRS,
};

/// A validated list of CIDRs (see the module's rules).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(CidrSet);

/// A pool's client allowlist: empty = any address.
pub type AllowedCidrs = CidrList;

impl CidrList {
    /// Every entry must be a CIDR or an address; the error names the first that is not (its
    /// position, for a field path such as `allowed_cidrs[2]`).
    pub fn parse<I, S>(entries: I) -> Result<Self, CidrError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        CidrSet::parse(entries).map(Self)
    }

    /// As stored: the canonical entries separated by commas (empty: none).
    pub fn from_stored(text: &str) -> Result<Self, CidrError> {
        text.parse()
    }

    pub fn to_stored(&self) -> String {
        self.to_strings().join(",")
    }

    /// The networks, for deciding.
    pub fn set(&self) -> &CidrSet {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The canonical text of each entry, as pushed in the snapshot.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.to_strings()
    }

    /// Whether an allowlist lets `ip` in: an empty list lets everyone in.
    pub fn admits(&self, ip: IpAddr) -> bool {
        self.is_empty() || self.0.contains(ip)
    }
}

/// Comma-separated, blanks ignored (an environment variable or a flag); empty is the empty
/// list.
impl FromStr for CidrList {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        Self::parse(s.split(','))
    }
}

/// The canonical entries, comma-separated.
impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_stored())
    }
}

/// A list of strings.
impl Serialize for CidrList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_strings().serialize(serializer)
    }
}

/// A list of strings (a config file's array), each checked.
impl<'de> Deserialize<'de> for CidrList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(d)?;
        Self::parse(&entries).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for CidrList {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <Vec<String> as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for CidrList {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_round_trips_through_its_stored_text_and_json() {
        let list: CidrList = " 10.0.0.0/8, 127.0.0.1 ,::ffff:192.168.0.0/112"
            .parse()
            .unwrap();
        assert_eq!(list.to_stored(), "10.0.0.0/8,127.0.0.1/32,192.168.0.0/16");
        assert_eq!(CidrList::from_stored(&list.to_stored()).unwrap(), list);
        let json = serde_json::to_string(&list).unwrap();
        assert_eq!(json, r#"["10.0.0.0/8","127.0.0.1/32","192.168.0.0/16"]"#);
        assert_eq!(serde_json::from_str::<CidrList>(&json).unwrap(), list);
        assert!(CidrList::from_stored("").unwrap().is_empty());
    }

    #[test]
    fn bad_entries_are_errors_naming_them() {
        let err = "10.0.0.0/8, nope".parse::<CidrList>().unwrap_err();
        assert_eq!((err.index, err.value.as_str()), (1, " nope"));
        let err = serde_json::from_str::<CidrList>(r#"["10.0.0.1/8"]"#).unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/8"), "{err}");
    }

    #[test]
    fn an_empty_allowlist_admits_everyone() {
        let any = CidrList::default();
        assert!(any.admits("203.0.113.1".parse().unwrap()));
        let lan: CidrList = "10.0.0.0/8".parse().unwrap();
        assert!(lan.admits("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!lan.admits("203.0.113.1".parse().unwrap()));
    }
}
