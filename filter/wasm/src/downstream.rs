//! Listener filter: authenticate the pool key, rank the pool's accounts, hand the ranking to the
//! upstream attempts through filter state, and strip the pool key.

use std::cell::Cell;

use codexmesh_filter_core::errors::{ErrorKind, GatewayError};
use codexmesh_filter_core::handoff::{self, RouteHandoff};
use codexmesh_filter_core::{auth, routing};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::{cache, host, reply_error};

thread_local! {
    /// Round-robin turn for this worker.
    static TURN: Cell<u64> = const { Cell::new(0) };
}

#[derive(Default)]
pub struct Downstream;

impl Context for Downstream {}

impl HttpContext for Downstream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        match route_request(host::now_ms()) {
            Ok(()) => Action::Continue,
            Err(err) => reply_error(&err),
        }
    }
}

fn route_request(now_ms: i64) -> Result<(), GatewayError> {
    let snapshot = cache::current().ok_or_else(|| {
        GatewayError::new(
            ErrorKind::NotReady,
            "codexmesh has not received its routing table from the control plane yet; retry shortly.",
        )
    })?;
    let authorization = host::request_header("authorization");
    let authed = auth::authenticate(&snapshot, authorization.as_deref())?;
    let settings = routing::effective_routing(authed.pool, authed.key);
    let turn = TURN.with(|t| {
        let v = t.get();
        t.set(v.wrapping_add(1));
        v
    });
    let ranked = routing::rank(authed.pool, settings, turn, now_ms)?;
    let attempts =
        routing::max_attempts(settings).min(u32::try_from(ranked.len()).unwrap_or(u32::MAX));
    let handoff = RouteHandoff {
        snapshot_version: snapshot.version(),
        pool_id: authed.pool.id.clone(),
        key_id: authed.key.id.clone(),
        max_attempts: attempts,
        ranked_accounts: ranked.iter().map(|a| a.id.clone()).collect(),
    };
    let internal = |what: &str| {
        GatewayError::new(
            ErrorKind::RouteMissing,
            format!("codexmesh could not {what}"),
        )
    };
    let encoded = handoff.encode().map_err(|_| internal("encode the route"))?;
    host::set_property(&[handoff::PROPERTY], &encoded).map_err(|_| internal("store the route"))?;
    // Bound the router's retries by the accounts we have: no point retrying the same one.
    host::set_request_header(
        "x-envoy-max-retries",
        &attempts.saturating_sub(1).to_string(),
    )
    .map_err(|_| internal("set the retry bound"))?;
    // The pool key must never reach the upstream.
    host::remove_request_header("authorization").map_err(|_| internal("strip the pool key"))?;
    Ok(())
}
