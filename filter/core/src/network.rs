//! Which client addresses a pool's keys work from.
//!
//! Rules kept here:
//! - the lists are read once per snapshot version (`SnapshotIndex`: the snapshot's
//!   `trusted_proxies`, each pool's `allowed_cidrs` into its `PoolIndex`), never per request; a
//!   pool without a list has no set, and its requests cost nothing here;
//! - the client is decided by the one rule both sides apply
//!   ([`codexmesh_proto::network::client_address`]): Envoy's TCP peer (`source.address`, the
//!   listener keeps it the peer: `use_remote_address`), or what trusted proxies'
//!   `X-Forwarded-For` says;
//! - it fails closed: no peer address, or an allowlist whose entries this filter cannot read,
//!   admits nobody; the refusal is `403 client_address_not_allowed` before anything is routed.

use std::net::IpAddr;

pub use codexmesh_proto::network::CidrSet;
use codexmesh_proto::network::{client_address, parse_address};

use crate::errors::{ErrorKind, GatewayError};
use crate::headers::RequestHead;

/// The header trusted proxies name the client in.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// A pool's allowlist as the filter keeps it: `None` when the pool has none (any address).
/// Entries the filter cannot read are left out, so a list of only such entries admits nobody.
pub fn pool_allowlist(entries: &[String]) -> Option<CidrSet> {
    (!entries.is_empty()).then(|| CidrSet::parse_lenient(entries))
}

/// The client of a request: `source_address` is Envoy's `source.address` property
/// (`ip:port`), `None` when the host gave none.
pub fn client_of(
    source_address: Option<&[u8]>,
    head: &RequestHead,
    trusted: &CidrSet,
) -> Option<IpAddr> {
    let peer = parse_address(std::str::from_utf8(source_address?).ok()?)?;
    Some(client_address(peer, head.all(FORWARDED_FOR), trusted))
}

/// Admits the request's client into a pool with an allowlist, or refuses it.
pub fn admit(
    allowlist: &CidrSet,
    trusted: &CidrSet,
    source_address: Option<&[u8]>,
    head: &RequestHead,
) -> Result<IpAddr, GatewayError> {
    match client_of(source_address, head, trusted) {
        Some(ip) if allowlist.contains(ip) => Ok(ip),
        Some(ip) => Err(refused(&ip.to_string())),
        None => Err(refused("an unknown address")),
    }
}

fn refused(who: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::ClientAddressNotAllowed,
        format!("This pool's keys do not work from {who}: ask its operator to allow your address."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn set(entries: &[&str]) -> CidrSet {
        CidrSet::parse(entries).unwrap()
    }

    fn head(xff: &[&str]) -> RequestHead {
        RequestHead::new(
            xff.iter()
                .map(|v| ("X-Forwarded-For".to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_pool_without_a_list_has_no_set() {
        assert!(pool_allowlist(&[]).is_none());
        let lan = pool_allowlist(&["10.0.0.0/8".into()]).unwrap();
        assert!(lan.contains("10.1.1.1".parse().unwrap()));
        // Unreadable entries admit nobody rather than everybody.
        assert!(pool_allowlist(&["bogus".into()]).unwrap().is_empty());
    }

    #[test]
    fn the_peer_decides_unless_it_is_a_trusted_proxy() {
        let allow = set(&["10.0.0.0/8"]);
        let none = CidrSet::default();
        // Loopback peer, not allowed; a spoofed header from it changes nothing.
        let err = admit(&allow, &none, Some(b"127.0.0.1:5555"), &head(&["10.0.0.7"])).unwrap_err();
        assert_eq!(
            (err.status(), err.kind.code()),
            (403, "client_address_not_allowed")
        );
        assert!(err.message.contains("127.0.0.1"), "{}", err.message);
        // The peer is allowed.
        assert_eq!(
            admit(&allow, &none, Some(b"10.2.3.4:80"), &head(&[])).unwrap(),
            "10.2.3.4".parse::<IpAddr>().unwrap()
        );
        // A trusted proxy's header decides, walked from the right.
        let proxies = set(&["127.0.0.1/32"]);
        let peer = Some(&b"127.0.0.1:5555"[..]);
        assert!(admit(&allow, &proxies, peer, &head(&["203.0.113.5, 10.0.0.7"])).is_ok());
        assert!(admit(&allow, &proxies, peer, &head(&["10.0.0.7, 203.0.113.5"])).is_err());
        // IPv6 peers, as Envoy writes them.
        assert!(admit(&set(&["::1"]), &none, Some(b"[::1]:40000"), &head(&[])).is_ok());
    }

    #[test]
    fn no_readable_peer_admits_nobody() {
        let anyone = set(&["0.0.0.0/0", "::/0"]);
        let none = CidrSet::default();
        for peer in [None, Some(&b"pipe:/tmp/x"[..]), Some(&[0xff, 0xfe][..])] {
            let err = admit(&anyone, &none, peer, &head(&[])).unwrap_err();
            assert_eq!(err.kind, ErrorKind::ClientAddressNotAllowed, "{peer:?}");
        }
    }
}
