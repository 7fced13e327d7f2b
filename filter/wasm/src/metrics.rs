//! The filter's counters in Envoy's stats (`filter_core::stats` names and bounds them): per pool,
//! requests, failovers, upstream 429s and pool-exhausted answers; without a pool, refused keys.
//!
//! Rules: each VM defines a pool's counters once, on the pool's first request, and keeps their
//! ids (`PoolSets`, bounded); a request then costs a map lookup and one `increment_metric` per
//! counter it moves. A host error never fails a request: the count is skipped.

use std::cell::{Cell, RefCell};

use codexmesh_filter_core::stats::{
    pool_metric_name, PoolCounter, PoolIds, PoolSets, KEYS_REFUSED,
};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

thread_local! {
    static POOLS: RefCell<PoolSets<u32>> = RefCell::new(PoolSets::default());
    static REFUSED_ID: Cell<Option<u32>> = const { Cell::new(None) };
}

fn define_pool(segment: &str) -> Option<PoolIds<u32>> {
    let mut ids = [0u32; PoolCounter::ALL.len()];
    for counter in PoolCounter::ALL {
        ids[counter.index()] =
            hostcalls::define_metric(MetricType::Counter, &pool_metric_name(segment, counter))
                .ok()?;
    }
    Some(ids)
}

/// Adds one to `counter` of the pool named `pool`.
pub fn count(pool: &str, counter: PoolCounter) {
    let ids = POOLS.with(|p| p.borrow_mut().ids(pool, define_pool));
    if let Some(ids) = ids {
        let _ = hostcalls::increment_metric(ids[counter.index()], 1);
    }
}

/// Adds one to the refused-keys counter.
pub fn key_refused() {
    let id = match REFUSED_ID.with(Cell::get) {
        Some(id) => id,
        None => match hostcalls::define_metric(MetricType::Counter, KEYS_REFUSED) {
            Ok(id) => {
                REFUSED_ID.with(|c| c.set(Some(id)));
                id
            }
            Err(_) => return,
        },
    };
    let _ = hostcalls::increment_metric(id, 1);
}
