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
        (
            format!("[{host}]"),
            after.strip_prefix(':').ok_or_else(bad)?,
        )
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
        (host.to_owned(), port)
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok(format!("http://{host}:{port}"))
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
