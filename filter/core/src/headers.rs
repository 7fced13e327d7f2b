//! Which headers belong to the gateway, not the client, and the request head the downstream filter
//! reads once per request.
//!
//! Rules kept here:
//! - A client never chooses or steers the account or the router: its `authorization` (the pool
//!   key), `proxy-authorization`, `cookie`, `chatgpt-account-id`, every `x-envoy-*` header (retry
//!   policy, timeouts, attempt counts, internal markers) and every `x-codexmesh-*` header are
//!   removed before the router and the upstream see the request, and so are `x-api-key` and
//!   `x-goog-api-key` (the pool key on a Claude route; never an account's). The upstream filter
//!   then sets the attempt's own credential headers (`provider::credential_headers`).
//! - Nothing of an account's session reaches the client: `set-cookie` / `set-cookie2` (and any
//!   credential header an upstream might echo) are removed from every upstream answer.
//! - Names are compared ASCII case-insensitively (HTTP/1 clients may send any case; Envoy hands
//!   HTTP/2 and its own maps over lowercased).

/// Request headers the gateway owns outright.
const OWNED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "chatgpt-account-id",
    // The pool key on a Claude route, and Google's API-key header: credentials, never passed.
    "x-api-key",
    "x-goog-api-key",
];

/// Request header prefixes the gateway owns (Envoy's steering headers, the gateway's own).
const OWNED_REQUEST_PREFIXES: &[&str] = &["x-envoy-", "x-codexmesh-"];

/// Response headers that would hand the client a piece of an account's session or identity.
const ACCOUNT_RESPONSE_HEADERS: &[&str] = &[
    "set-cookie",
    "set-cookie2",
    "authorization",
    "chatgpt-account-id",
    "x-api-key",
];

fn has_prefix_ignore_case(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Whether a client-sent request header must be removed before routing.
pub fn is_gateway_owned_request_header(name: &str) -> bool {
    OWNED_REQUEST_HEADERS
        .iter()
        .any(|owned| name.eq_ignore_ascii_case(owned))
        || OWNED_REQUEST_PREFIXES
            .iter()
            .any(|prefix| has_prefix_ignore_case(name, prefix))
}

/// Whether an upstream response header must not reach the client.
pub fn is_account_response_header(name: &str) -> bool {
    ACCOUNT_RESPONSE_HEADERS
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// The request's headers as Envoy handed them over (pseudo-headers included), read once.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    pairs: Vec<(String, String)>,
}

impl RequestHead {
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// The first value of a header.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in the order received.
    pub fn all<'a>(&'a self, name: &'a str) -> impl DoubleEndedIterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many times a header was sent.
    pub fn count(&self, name: &str) -> usize {
        self.pairs
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn method(&self) -> &str {
        self.get(":method").unwrap_or_default()
    }

    pub fn path(&self) -> &str {
        self.get(":path").unwrap_or_default()
    }

    /// `Upgrade: websocket` (any case, possibly among other protocols).
    pub fn is_websocket_upgrade(&self) -> bool {
        self.get("upgrade")
            .is_some_and(|u| u.to_ascii_lowercase().contains("websocket"))
    }

    /// Names of the gateway-owned headers the client sent, each once (lowercased).
    pub fn gateway_owned(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (name, _) in &self.pairs {
            if is_gateway_owned_request_header(name) {
                let lower = name.to_ascii_lowercase();
                if !names.contains(&lower) {
                    names.push(lower);
                }
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn head(pairs: &[(&str, &str)]) -> RequestHead {
        RequestHead::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn steering_and_credential_headers_belong_to_the_gateway() {
        for name in [
            "authorization",
            "Authorization",
            "proxy-authorization",
            "cookie",
            "Cookie",
            "chatgpt-account-id",
            "ChatGPT-Account-ID",
            "x-envoy-max-retries",
            "X-Envoy-Retry-On",
            "x-envoy-upstream-rq-timeout-ms",
            "x-envoy-attempt-count",
            "x-envoy-internal",
            "x-codexmesh-route",
            "x-api-key",
            "X-Api-Key",
            "x-goog-api-key",
        ] {
            assert!(is_gateway_owned_request_header(name), "{name}");
        }
        assert!(is_account_response_header("x-api-key"));
        for name in [
            "anthropic-version",
            "anthropic-beta",
            "x-claude-code-session-id",
            "x-goog-api-client",
            "content-type",
            "session-id",
            "x-codex-turn-state",
            "x-codex-window-id",
            "openai-beta",
            "x-envoy",
            "envoy-x",
            "user-agent",
        ] {
            assert!(!is_gateway_owned_request_header(name), "{name}");
        }
    }

    #[test]
    fn session_headers_never_reach_the_client() {
        assert!(is_account_response_header("set-cookie"));
        assert!(is_account_response_header("Set-Cookie"));
        assert!(is_account_response_header("set-cookie2"));
        assert!(!is_account_response_header("x-codex-primary-used-percent"));
        assert!(!is_account_response_header("content-type"));
    }

    #[test]
    fn the_head_is_read_case_insensitively_and_lists_owned_headers_once() {
        let h = head(&[
            (":method", "POST"),
            (":path", "/backend-api/codex/responses"),
            ("Authorization", "Bearer a"),
            ("authorization", "Bearer b"),
            ("x-envoy-max-retries", "9"),
            ("cookie", "a=1"),
            ("Upgrade", "WebSocket"),
            ("session-id", "s"),
        ]);
        assert_eq!(h.method(), "POST");
        assert_eq!(h.path(), "/backend-api/codex/responses");
        assert_eq!(h.get("authorization"), Some("Bearer a"));
        assert_eq!(h.count("authorization"), 2);
        assert!(h.is_websocket_upgrade());
        assert_eq!(
            h.gateway_owned(),
            vec!["authorization", "x-envoy-max-retries", "cookie"]
        );
        assert!(head(&[]).gateway_owned().is_empty());
        assert_eq!(head(&[]).method(), "");
    }
}
