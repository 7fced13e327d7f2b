//! Which way a request leaves Envoy: directly, or tunnelled through one account's egress proxy
//! (an HTTP CONNECT proxy, `pb::Account::egress_proxy`).
//!
//! Rules kept here:
//! - An account with a proxy is served only through that proxy. Each proxy an Envoy knows
//!   (`envoy-bootstrap --egress-proxy`, listed in the downstream filter's configuration in the
//!   same order) has its own clusters; the downstream filter sends the request to them with
//!   [`EGRESS_HEADER`] (`e1`, `e2`, ... by position), and without the header the request takes the
//!   direct clusters. An account whose proxy this Envoy does not know is never tried.
//! - One request stays behind one egress: the router's retries stay in the cluster the route
//!   chose, so the candidates are narrowed to the first usable candidate's egress, in ranking
//!   order. A failover to an account behind another egress happens on the next request.
//! - The upstream filter of an egress's cluster injects only the credentials of that egress's
//!   accounts ([`serves`]), so no account's token ever leaves by another way.
//! - A client never picks the egress: [`EGRESS_HEADER`] is an `x-codexmesh-*` header, removed
//!   from every client request (`headers`) before the filter sets its own.

use crate::errors::{ErrorKind, GatewayError};
use crate::pb;

/// The request header the route's cluster matcher reads (`e1`, `e2`, ...).
pub use codexmesh_proto::names::EGRESS_HEADER;

/// The [`EGRESS_HEADER`] value of the proxy at `index` in the configured list (`e1` first): the
/// bootstrap renders the same name for that proxy's clusters.
pub use codexmesh_proto::names::egress_name as route_value;

/// Whether the upstream filter of a cluster for `cluster_egress` (empty: the direct clusters)
/// may inject `account`'s credentials.
pub fn serves(cluster_egress: &str, account: &pb::Account) -> bool {
    account.egress_proxy == cluster_egress
}

/// Narrows `candidates` (in ranking order) to one egress: the first candidate this Envoy can
/// reach decides (directly, or through a proxy in `proxies`); the candidates behind any other
/// egress are dropped. Returns the chosen proxy's position in `proxies` (`None`: direct).
///
/// The common case (no account of the ranking has a proxy) keeps every candidate and allocates
/// nothing. When no candidate is reachable, the answer says which proxy is missing.
pub fn narrow(
    candidates: &mut Vec<&pb::Account>,
    proxies: &[String],
) -> Result<Option<usize>, GatewayError> {
    if candidates.iter().all(|a| a.egress_proxy.is_empty()) {
        return Ok(None);
    }
    let reachable = |a: &pb::Account| -> Option<Option<usize>> {
        if a.egress_proxy.is_empty() {
            return Some(None);
        }
        proxies.iter().position(|p| *p == a.egress_proxy).map(Some)
    };
    let Some((chosen, egress)) = candidates
        .iter()
        .find_map(|a| reachable(a).map(|at| (at, a.egress_proxy.clone())))
    else {
        let missing = candidates
            .first()
            .map(|a| a.egress_proxy.clone())
            .unwrap_or_default();
        return Err(GatewayError::new(
            ErrorKind::EgressNotConfigured,
            format!(
                "The accounts that could serve this request tunnel through the egress proxy {missing}, which this gateway's Envoy is not configured with (codexmesh envoy-bootstrap --egress-proxy {missing})."
            ),
        ));
    };
    candidates.retain(|a| a.egress_proxy == egress);
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn account(id: &str, proxy: &str) -> pb::Account {
        pb::Account {
            id: id.into(),
            egress_proxy: proxy.into(),
            ..Default::default()
        }
    }

    fn ids(candidates: &[&pb::Account]) -> Vec<String> {
        candidates.iter().map(|a| a.id.clone()).collect()
    }

    const A: &str = "http://proxy-a.internal:3128";
    const B: &str = "http://10.0.0.2:8080";

    #[test]
    fn no_proxy_anywhere_keeps_every_candidate() {
        let (x, y) = (account("x", ""), account("y", ""));
        let mut c = vec![&x, &y];
        assert_eq!(narrow(&mut c, &[]), Ok(None));
        assert_eq!(ids(&c), ["x", "y"]);
    }

    #[test]
    fn the_first_candidate_decides_and_the_others_are_dropped() {
        let (a1, d1, a2, b1) = (
            account("a1", A),
            account("d1", ""),
            account("a2", A),
            account("b1", B),
        );
        let proxies = [B.to_string(), A.to_string()];
        let mut c = vec![&a1, &d1, &a2, &b1];
        assert_eq!(narrow(&mut c, &proxies), Ok(Some(1)));
        assert_eq!(ids(&c), ["a1", "a2"]);
        assert_eq!(route_value(1), "e2");

        let mut c = vec![&d1, &a1, &b1];
        assert_eq!(narrow(&mut c, &proxies), Ok(None));
        assert_eq!(ids(&c), ["d1"]);
    }

    #[test]
    fn an_unknown_proxy_is_skipped_never_taken_directly() {
        let (a1, b1, d1) = (account("a1", A), account("b1", B), account("d1", ""));
        let proxies = [B.to_string()];
        let mut c = vec![&a1, &b1, &d1];
        assert_eq!(narrow(&mut c, &proxies), Ok(Some(0)));
        assert_eq!(ids(&c), ["b1"]);

        let mut c = vec![&a1];
        let err = narrow(&mut c, &proxies).unwrap_err();
        assert_eq!(err.kind, ErrorKind::EgressNotConfigured);
        assert!(err.message.contains(A), "{}", err.message);
        assert_eq!(err.kind.status(), 503);
    }

    #[test]
    fn a_cluster_serves_only_its_own_egress() {
        assert!(serves("", &account("d", "")));
        assert!(!serves("", &account("a", A)));
        assert!(serves(A, &account("a", A)));
        assert!(!serves(A, &account("b", B)));
        assert!(!serves(A, &account("d", "")));
    }
}
