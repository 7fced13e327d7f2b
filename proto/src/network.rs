//! Who the client is, and the address lists that decide it: declared once here, because the
//! data path (the filter, with `Snapshot.trusted_proxies` and `Pool.allowed_cidrs`) and the
//! admin API (with its own settings) must apply the same rule.
//!
//! Rules kept here:
//! - a CIDR is `ADDR/LEN` without host bits (`10.0.0.0/8`, `2001:db8::/32`) or a bare address
//!   (one host: `/32` or `/128`); an IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is the IPv4
//!   network it maps. Anything else is a [`CidrError`] naming the entry and why;
//! - addresses are compared canonically: an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, what a
//!   dual-stack socket reports) is its IPv4 address;
//! - [`client_address`]: the TCP peer is the client unless it is a trusted proxy. Then
//!   `X-Forwarded-For` is walked from the right, skipping trusted proxies, and the first
//!   untrusted entry is the client. An entry that is not an address stops the walk at the last
//!   trusted hop (the proxy that passed it on answers for it). The leftmost entry is never
//!   believed for standing leftmost: it is reached only through a chain of trusted hops;
//! - nothing here panics or allocates per request beyond splitting the header.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};

/// Entries of one list at most: a list is scanned per request.
pub const MAX_CIDRS: usize = 256;
/// `X-Forwarded-For` entries walked at most; beyond, the last trusted hop is the client.
pub const MAX_FORWARDED_HOPS: usize = 32;

/// Why an entry is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrProblem {
    Empty,
    /// Not an address (before the `/`, or the whole entry).
    NotAnAddress,
    /// The length after `/` is not a number within the family's bits.
    BadPrefixLength,
    /// Bits set after the prefix: `10.1.2.3/8` names the network `10.0.0.0/8` ambiguously.
    HostBits {
        network: String,
    },
    /// More than [`MAX_CIDRS`] entries.
    TooMany,
}

/// A list entry that could not be read: its position, the text, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError {
    /// Position in the list (0-based).
    pub index: usize,
    pub value: String,
    pub problem: CidrProblem,
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.value;
        match &self.problem {
            CidrProblem::Empty => write!(f, "an empty entry is not a CIDR"),
            CidrProblem::NotAnAddress => write!(
                f,
                "{v:?} is not a CIDR: expected ADDRESS/LENGTH (10.0.0.0/8, 2001:db8::/32) or an \
                 address"
            ),
            CidrProblem::BadPrefixLength => write!(
                f,
                "{v:?} is not a CIDR: the length after / must be 0-32 for IPv4, 0-128 for IPv6"
            ),
            CidrProblem::HostBits { network } => write!(
                f,
                "{v:?} has bits set after its prefix length: write the network, {network}"
            ),
            CidrProblem::TooMany => write!(f, "at most {MAX_CIDRS} CIDRs in one list"),
        }
    }
}

impl std::error::Error for CidrError {}

/// The canonical form of an address: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// One CIDR (see the module's rules), canonical.
pub fn parse_cidr(text: &str) -> Result<IpNet, CidrProblem> {
    let text = text.trim();
    if text.is_empty() {
        return Err(CidrProblem::Empty);
    }
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => {
            let len: u8 = len
                .trim()
                .parse()
                .map_err(|_| CidrProblem::BadPrefixLength)?;
            (addr.trim(), Some(len))
        }
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| CidrProblem::NotAnAddress)?;
    let full = if addr.is_ipv4() { 32 } else { 128 };
    let net = IpNet::new(addr, len.unwrap_or(full)).map_err(|_| CidrProblem::BadPrefixLength)?;
    if net.trunc() != net {
        return Err(CidrProblem::HostBits {
            network: net.trunc().to_string(),
        });
    }
    Ok(canonical_net(net))
}

/// An IPv4-mapped IPv6 network of at least /96 is the IPv4 network it maps.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (Some(v4), Some(len)) = (
            v6.network().to_ipv4_mapped(),
            v6.prefix_len().checked_sub(96),
        ) {
            if let Ok(v4net) = Ipv4Net::new(v4, len) {
                return IpNet::V4(v4net);
            }
        }
    }
    net
}

/// A list of networks, in the order given, without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    nets: Vec<IpNet>,
}

impl CidrSet {
    /// Every entry must be a CIDR; the first that is not is the error.
    pub fn parse<I, S>(entries: I) -> Result<Self, CidrError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let entry = entry.as_ref();
            let error = |problem| CidrError {
                index,
                value: entry.to_owned(),
                problem,
            };
            if index >= MAX_CIDRS {
                return Err(error(CidrProblem::TooMany));
            }
            let net = parse_cidr(entry).map_err(error)?;
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        Ok(Self { nets })
    }

    /// The entries that are CIDRs, the others left out: for lists already validated where they
    /// were written (a version skew must not make the filter fail; an allowlist that loses an
    /// entry admits less, a trusted list that loses one trusts less).
    pub fn parse_lenient<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for entry in entries.into_iter().take(MAX_CIDRS) {
            if let Ok(net) = parse_cidr(entry.as_ref()) {
                if !nets.contains(&net) {
                    nets.push(net);
                }
            }
        }
        Self { nets }
    }

    /// Whether `ip` (taken canonically) is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn len(&self) -> usize {
        self.nets.len()
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// The canonical text of each network (`10.0.0.0/8`, `127.0.0.1/32`), as stored and pushed.
    pub fn to_strings(&self) -> Vec<String> {
        self.nets.iter().map(ToString::to_string).collect()
    }
}

/// An address as proxies and Envoy write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:443`, surrounding blanks ignored; canonical. Anything else
/// (`unknown`, an obfuscated name, a zone id) is `None`.
pub fn parse_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let ip = if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else if let Ok(sock) = text.parse::<SocketAddr>() {
        sock.ip()
    } else {
        let inner = text.strip_prefix('[')?.strip_suffix(']')?;
        IpAddr::V6(inner.parse::<Ipv6Addr>().ok()?)
    };
    Some(canonical(ip))
}

/// The client of a request that arrived from `peer` (the TCP peer) with these
/// `X-Forwarded-For` values (each header's value, in the order received), given the proxies
/// whose header is believed (the module's rule).
pub fn client_address<'a, I>(peer: IpAddr, forwarded_for: I, trusted: &CidrSet) -> IpAddr
where
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: DoubleEndedIterator,
{
    let mut last = canonical(peer);
    if trusted.is_empty() || !trusted.contains(last) {
        return last;
    }
    let entries = forwarded_for
        .into_iter()
        .rev()
        .flat_map(|value| value.rsplit(','))
        .take(MAX_FORWARDED_HOPS);
    for entry in entries {
        let Some(ip) = parse_address(entry) else {
            return last;
        };
        if !trusted.contains(ip) {
            return ip;
        }
        last = ip;
    }
    last
}

/// An unspecified IPv4 address: what a caller uses when the host gave no peer at all (it
/// matches no allowlist entry but `0.0.0.0/0`).
pub const UNKNOWN_PEER: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[&str]) -> CidrSet {
        CidrSet::parse(entries).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_are_read_canonically() {
        let s = set(&[
            "10.0.0.0/8",
            " 192.168.1.7 ",
            "2001:db8::/32",
            "::ffff:172.16.0.0/108",
            "::1",
            "10.0.0.0/8",
        ]);
        assert_eq!(
            s.to_strings(),
            [
                "10.0.0.0/8",
                "192.168.1.7/32",
                "2001:db8::/32",
                "172.16.0.0/12",
                "::1/128"
            ]
        );
        assert!(set(&[]).is_empty());
    }

    #[test]
    fn bad_cidrs_name_the_entry_and_why() {
        let err = CidrSet::parse(["10.0.0.0/8", "10.1.2.3/8"]).unwrap_err();
        assert_eq!(err.index, 1);
        assert_eq!(
            err.problem,
            CidrProblem::HostBits {
                network: "10.0.0.0/8".into()
            }
        );
        assert!(err.to_string().contains("write the network, 10.0.0.0/8"));
        for (bad, problem) in [
            ("", CidrProblem::Empty),
            ("example.com", CidrProblem::NotAnAddress),
            ("10.0.0/8", CidrProblem::NotAnAddress),
            ("10.0.0.0/33", CidrProblem::BadPrefixLength),
            ("::/129", CidrProblem::BadPrefixLength),
            ("10.0.0.0/x", CidrProblem::BadPrefixLength),
            ("10.0.0.0/-1", CidrProblem::BadPrefixLength),
        ] {
            assert_eq!(parse_cidr(bad), Err(problem), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_CIDRS)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        assert_eq!(
            CidrSet::parse(&many).unwrap_err().problem,
            CidrProblem::TooMany
        );
    }

    #[test]
    fn lenient_parsing_keeps_what_it_can_read() {
        let s = CidrSet::parse_lenient(["nonsense", "10.0.0.0/8", "10.1.0.0/8"]);
        assert_eq!(s.to_strings(), ["10.0.0.0/8"]);
        assert!(CidrSet::parse_lenient(["nonsense"]).is_empty());
    }

    #[test]
    fn membership_compares_mapped_addresses_as_ipv4() {
        let s = set(&["10.0.0.0/8", "2001:db8::/32"]);
        assert!(s.contains(ip("10.200.0.1")));
        assert!(s.contains(ip("::ffff:10.200.0.1")));
        assert!(!s.contains(ip("11.0.0.1")));
        assert!(s.contains(ip("2001:db8::5")));
        assert!(!s.contains(ip("2001:db9::5")));
        assert!(set(&["0.0.0.0/0"]).contains(ip("::ffff:1.2.3.4")));
        assert!(!set(&["0.0.0.0/0"]).contains(ip("2001:db8::1")));
    }

    #[test]
    fn addresses_are_read_in_every_form_proxies_write() {
        for (text, want) in [
            ("1.2.3.4", "1.2.3.4"),
            (" 1.2.3.4:5678 ", "1.2.3.4"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("::ffff:10.0.0.1", "10.0.0.1"),
            ("[::ffff:10.0.0.1]:80", "10.0.0.1"),
        ] {
            assert_eq!(parse_address(text), Some(ip(want)), "{text:?}");
        }
        for bad in [
            "",
            "unknown",
            "_hidden",
            "1.2.3",
            "fe80::1%eth0",
            "[1.2.3.4]",
        ] {
            assert_eq!(parse_address(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = set(&["10.0.0.0/8"]);
        let peer = ip("203.0.113.9");
        assert_eq!(client_address(peer, ["10.0.0.1"], &trusted), peer);
        assert_eq!(client_address(peer, ["1.1.1.1, 10.0.0.1"], &trusted), peer);
        // No trusted proxies at all: the header is never read.
        assert_eq!(
            client_address(ip("10.0.0.1"), ["1.1.1.1"], &CidrSet::default()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_trusted_chain_is_walked_from_the_right() {
        let trusted = set(&["10.0.0.0/8", "192.168.0.0/16"]);
        let peer = ip("10.0.0.2");
        // The first untrusted entry from the right, not the leftmost (which the client wrote).
        assert_eq!(
            client_address(peer, ["6.6.6.6, 198.51.100.7, 192.168.1.1"], &trusted),
            ip("198.51.100.7")
        );
        // Several headers are one list, in the order received.
        assert_eq!(
            client_address(peer, ["6.6.6.6, 198.51.100.7", "192.168.1.1"], &trusted),
            ip("198.51.100.7")
        );
        // A trusted peer without the header is the client itself.
        assert_eq!(client_address(peer, [], &trusted), peer);
        // Every hop trusted: the leftmost, which only trusted hops vouched for.
        assert_eq!(
            client_address(peer, ["192.168.3.3, 10.9.9.9"], &trusted),
            ip("192.168.3.3")
        );
    }

    #[test]
    fn a_malformed_entry_stops_at_the_last_trusted_hop() {
        let trusted = set(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        assert_eq!(
            client_address(peer, ["6.6.6.6, garbage, 10.0.0.9"], &trusted),
            ip("10.0.0.9")
        );
        assert_eq!(client_address(peer, ["6.6.6.6, unknown"], &trusted), peer);
        assert_eq!(client_address(peer, ["6.6.6.6,,"], &trusted), peer);
    }

    #[test]
    fn ipv6_and_mapped_addresses_follow_the_same_rule() {
        let trusted = set(&["2001:db8::/32", "10.0.0.0/8"]);
        assert_eq!(
            client_address(
                ip("2001:db8::1"),
                ["[2001:db8:1::9]:443, 2001:db8::2"],
                &trusted
            ),
            ip("2001:db8:1::9")
        );
        // A dual-stack socket reports the IPv4 proxy as mapped: still trusted.
        assert_eq!(
            client_address(ip("::ffff:10.0.0.2"), ["2001:db9::7"], &trusted),
            ip("2001:db9::7")
        );
        // An untrusted mapped peer is reported as plain IPv4.
        assert_eq!(
            client_address(ip("::ffff:198.51.100.1"), ["10.0.0.1"], &trusted),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn the_walk_is_bounded() {
        let trusted = set(&["10.0.0.0/8"]);
        let mut hops: Vec<String> = vec!["6.6.6.6".into()];
        hops.extend((0..100).map(|i| format!("10.0.0.{}", i % 250)));
        let header = hops.join(", ");
        // 32 trusted entries walked, the 6.6.6.6 at the far left never reached.
        let got = client_address(ip("10.0.0.1"), [header.as_str()], &trusted);
        assert!(trusted.contains(got), "{got}");
    }
}
