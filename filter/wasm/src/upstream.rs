//! Cluster upstream filter: runs once per attempt. Takes the attempt's account from the hand-off,
//! injects its credentials, and turns the answer into an outcome record.

use codexmesh_filter_core::errors::{ErrorKind, GatewayError};
use codexmesh_filter_core::handoff::{self, RouteHandoff};
use codexmesh_filter_core::{evidence, pb, routing};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::{cache, host, reply_error, OUTCOME_QUEUE, VM_ID};

struct Attempt {
    handoff: RouteHandoff,
    account_id: String,
    attempt: u32,
    started_ms: i64,
    path: String,
}

#[derive(Default)]
pub struct Upstream {
    attempt: Option<Attempt>,
}

impl Context for Upstream {}

impl HttpContext for Upstream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        match self.inject(host::now_ms()) {
            Ok(()) => Action::Continue,
            Err(err) => reply_error(&err),
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.observe(host::now_ms());
        Action::Continue
    }
}

impl Upstream {
    fn inject(&mut self, now_ms: i64) -> Result<(), GatewayError> {
        let handoff = host::property(&[handoff::PROPERTY])
            .and_then(|b| RouteHandoff::decode(&b).ok())
            .ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::RouteMissing,
                    "codexmesh upstream filter found no route: the downstream filter must run on this route.",
                )
            })?;
        let snapshot = cache::current().ok_or_else(|| {
            GatewayError::new(ErrorKind::NotReady, "codexmesh has no routing table yet.")
        })?;
        let attempt = host::request_header("x-envoy-attempt-count")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(1)
            .max(1);
        let account = routing::account_for_attempt(
            &handoff.ranked_accounts,
            attempt,
            |id| snapshot.account(id).map(|(_, a)| a),
            now_ms,
        )
        .ok_or_else(|| {
            GatewayError::new(
                ErrorKind::NoAccountAvailable,
                "No account in the pool can serve this request right now.",
            )
        })?;
        let failed = |_| {
            GatewayError::new(
                ErrorKind::RouteMissing,
                "codexmesh could not set upstream credentials",
            )
        };
        host::set_request_header("authorization", &format!("Bearer {}", account.access_token))
            .map_err(failed)?;
        host::set_request_header("chatgpt-account-id", &account.chatgpt_account_id)
            .map_err(failed)?;
        // Envoy's retry bookkeeping is ours, not the upstream's business.
        let _ = host::remove_request_header("x-envoy-max-retries");
        let path = host::request_header(":path").unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default().to_string();
        self.attempt = Some(Attempt {
            account_id: account.id.clone(),
            handoff,
            attempt,
            started_ms: now_ms,
            path,
        });
        Ok(())
    }

    fn observe(&mut self, now_ms: i64) {
        let Some(attempt) = self.attempt.as_ref() else {
            return;
        };
        let status = host::response_header(":status")
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        let headers = host::response_headers();
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let outcome = pb::Outcome {
            pool_id: attempt.handoff.pool_id.clone(),
            key_id: attempt.handoff.key_id.clone(),
            account_id: attempt.account_id.clone(),
            attempt: attempt.attempt,
            status,
            started_at_unix_ms: attempt.started_ms,
            latency_ms: u32::try_from(now_ms.saturating_sub(attempt.started_ms))
                .unwrap_or(u32::MAX),
            quota: evidence::quota_from_headers(lookup, now_ms),
            request_path: attempt.path.clone(),
            snapshot_version: attempt.handoff.snapshot_version,
            ..Default::default()
        };
        enqueue(&outcome);
    }
}

fn enqueue(outcome: &pb::Outcome) {
    use prost::Message;
    let queue = match hostcalls::resolve_shared_queue(VM_ID, OUTCOME_QUEUE) {
        Ok(Some(id)) => id,
        // No service running (e.g. a test config without it): outcomes have nowhere to go.
        _ => return,
    };
    if hostcalls::enqueue_shared_queue(queue, Some(&outcome.encode_to_vec())).is_err() {
        host::log(LogLevel::Warn, "outcome queue refused a record");
    }
}
