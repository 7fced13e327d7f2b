//! The per-key policy counters in shared data (`filter_core::policy`): the GCRA arrival time,
//! the slots in flight and the tokens this Envoy counted, one value per key, each updated with
//! compare-and-swap so every worker of the Envoy shares it.
//!
//! Rules kept here: only keys with a policy ever touch these values; a host failure admits the
//! request (a limit this Envoy cannot count is not a reason to refuse) and is logged.

use codexmesh_filter_core::errors::GatewayError;
use codexmesh_filter_core::policy::{
    self, Inflight, TokenLog, INFLIGHT_PREFIX, RATE_PREFIX, TOKENS_PREFIX,
};
use codexmesh_filter_core::snapshot::{decode_version, encode_version};
use proxy_wasm::types::LogLevel;

use crate::host;

fn key_of(prefix: &str, key_id: &str) -> String {
    format!("{prefix}{key_id}")
}

/// Admits one request of `key_id` under `rpm` requests per minute (GCRA).
pub fn take_rate(key_id: &str, rpm: u32, now_ms: i64) -> Result<(), GatewayError> {
    let decided = host::decide_shared_data(&key_of(RATE_PREFIX, key_id), |bytes| {
        let tat = decode_version(bytes).and_then(|v| i64::try_from(v).ok());
        let next = policy::gcra_admit(tat, rpm, now_ms)?;
        let stored = u64::try_from(next).unwrap_or(0);
        Ok((encode_version(stored).to_vec(), ()))
    });
    match decided {
        Some(result) => result,
        None => {
            host::log(LogLevel::Warn, "could not count a key's request rate");
            Ok(())
        }
    }
}

/// Takes one of `key_id`'s `max` slots; the slot's start time (to release it with).
pub fn take_slot(key_id: &str, max: u32, now_ms: i64) -> Result<Option<i64>, GatewayError> {
    let decided = host::decide_shared_data(&key_of(INFLIGHT_PREFIX, key_id), |bytes| {
        let mut slots = Inflight::decode(bytes);
        if !slots.try_take(max, now_ms) {
            return Err(policy::too_many_concurrent(max));
        }
        Ok((slots.encode(), ()))
    });
    match decided {
        Some(Ok(())) => Ok(Some(now_ms)),
        Some(Err(err)) => Err(err),
        None => {
            host::log(LogLevel::Warn, "could not count a key's requests in flight");
            Ok(None)
        }
    }
}

/// Gives back the slot taken at `started_ms`.
pub fn release_slot(key_id: &str, started_ms: i64) {
    let released = host::update_shared_data(&key_of(INFLIGHT_PREFIX, key_id), |bytes| {
        let mut slots = Inflight::decode(bytes);
        slots.release(started_ms);
        slots.encode()
    });
    if !released {
        host::log(LogLevel::Warn, "could not release a key's slot in flight");
    }
}

/// What this Envoy counted of `key_id`'s tokens.
pub fn token_log(key_id: &str) -> TokenLog {
    host::shared_data(&key_of(TOKENS_PREFIX, key_id))
        .map(|bytes| TokenLog::decode(&bytes))
        .unwrap_or_default()
}

/// Counts one answer's tokens for `key_id`; entries the snapshot already counted are dropped.
pub fn add_tokens(key_id: &str, tokens: u64, now_ms: i64, forget_before_ms: i64) {
    let added = host::update_shared_data(&key_of(TOKENS_PREFIX, key_id), |bytes| {
        let mut log = TokenLog::decode(bytes);
        log.add(tokens, now_ms, forget_before_ms);
        log.encode()
    });
    if !added {
        host::log(LogLevel::Warn, "could not count a key's tokens");
    }
}
