//! An account's egress proxy: the HTTP proxy its control-plane calls (token refresh, quota
//! polls, warm-up) tunnel through with CONNECT.
//!
//! Rules: the value is an `http://HOST:PORT` URL (a DNS name or an IP; `[v6]` in brackets) with
//! no user info (proxy credentials would be a secret stored in the clear and shown in listings),
//! no path other than `/`, no query or fragment; it is stored and shown as
//! `http://host:port` (lowercase scheme and host, the port always written). An account with
//! one never falls back to a direct connection when the proxy is down.

/// Why an egress proxy URL is refused (said to whoever typed it).
pub const EGRESS_PROXY_RULE: &str =
    "must be http://HOST:PORT (no user info, path, query or fragment), e.g. http://proxy.internal:3128";

/// Checks `raw` and returns its canonical form.
pub fn parse_egress_proxy(raw: &str) -> Result<String, String> {
    let (host, port) = egress_proxy_host_port(raw)?;
    if host.contains(':') {
        Ok(format!("http://[{host}]:{port}"))
    } else {
        Ok(format!("http://{host}:{port}"))
    }
}

/// Checks `raw` as [`parse_egress_proxy`] does and returns the proxy's host (lowercase; an IPv6
/// address without its brackets) and port: where a connection to it goes.
pub fn egress_proxy_host_port(raw: &str) -> Result<(String, u16), String> {
    let bad = || format!("{raw:?} {EGRESS_PROXY_RULE}");
    let trimmed = raw.trim();
    let lower = trimmed.to_ascii_lowercase();
    let rest = lower.strip_prefix("http://").ok_or_else(bad)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (host, after.strip_prefix(':').ok_or_else(bad)?)
    } else {
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        let ok = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !ok {
            return Err(bad());
        }
        (host, port)
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// The egress proxies an Envoy is rendered with (the `envoy_egress_proxies` setting,
/// `envoy-bootstrap --egress-proxy`): each canonical ([`parse_egress_proxy`]), no duplicates, in
/// the order given (the filter routes the first as `e1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressProxyList(Vec<String>);

impl EgressProxyList {
    /// Checks each entry; the first bad one is named.
    pub fn parse<I, S>(entries: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list: Vec<String> = Vec::new();
        for raw in entries {
            let canonical = parse_egress_proxy(raw.as_ref())?;
            if !list.contains(&canonical) {
                list.push(canonical);
            }
        }
        Ok(Self(list))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Comma-separated (a flag or the environment); empty: none.
impl std::str::FromStr for EgressProxyList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        Self::parse(s.split(','))
    }
}

impl std::fmt::Display for EgressProxyList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl serde::Serialize for EgressProxyList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// A config file's array of strings, each checked.
impl<'de> serde::Deserialize<'de> for EgressProxyList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(d)?;
        Self::parse(&entries).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(
            parse_egress_proxy("HTTP://Proxy.Internal:3128/").unwrap(),
            "http://proxy.internal:3128"
        );
        assert_eq!(
            parse_egress_proxy("http://10.0.0.1:8080").unwrap(),
            "http://10.0.0.1:8080"
        );
        assert_eq!(
            parse_egress_proxy("http://[::1]:3128").unwrap(),
            "http://[::1]:3128"
        );
        assert_eq!(
            egress_proxy_host_port("http://[::1]:3128").unwrap(),
            ("::1".to_string(), 3128)
        );
        assert_eq!(
            egress_proxy_host_port("HTTP://Proxy.Internal:3128/").unwrap(),
            ("proxy.internal".to_string(), 3128)
        );
    }

    #[test]
    fn proxy_lists_are_canonical_without_duplicates() {
        let list: EgressProxyList =
            " HTTP://P.internal:3128/, http://10.0.0.1:8080,http://p.internal:3128"
                .parse()
                .unwrap();
        assert_eq!(
            list.as_slice(),
            ["http://p.internal:3128", "http://10.0.0.1:8080"]
        );
        assert!("".parse::<EgressProxyList>().unwrap().is_empty());
        let err = "http://ok:1,socks5://bad:2"
            .parse::<EgressProxyList>()
            .unwrap_err();
        assert!(err.contains("socks5://bad:2"), "{err}");
        let json: EgressProxyList = serde_json::from_str(r#"["http://a:1"]"#).unwrap();
        assert_eq!(json.to_string(), "http://a:1");
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "proxy:3128",
            "https://proxy:3128",
            "socks5://proxy:1080",
            "http://proxy",
            "http://proxy:0",
            "http://proxy:99999",
            "http://user:pw@proxy:3128",
            "http://proxy:3128/path",
            "http://proxy:3128?x=1",
            "http://[::1:3128",
            "http://pro xy:3128",
        ] {
            assert!(parse_egress_proxy(bad).is_err(), "{bad}");
        }
    }
}
