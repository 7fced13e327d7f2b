//! Outcome records on their way to the singleton service: each worker VM gathers them in one
//! outbox (`filter_core::outbox`) and hands it on as one shared-queue message when it is full or
//! its oldest record waited long enough (checked on each record and on the root's tick). The
//! upstream filter records every attempt here, the listener filter its policy refusals.

use codexmesh_filter_core::outbox::Outbox;
use codexmesh_filter_core::pb;
use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

use crate::{host, OUTCOME_QUEUE, VM_ID};

thread_local! {
    /// The outcome queue's id in this VM, resolved once (again if the service came back).
    static QUEUE: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
    /// Outcomes waiting to be handed to the service in one message (see `outbox`).
    static OUTBOX: std::cell::RefCell<Outbox> = std::cell::RefCell::new(Outbox::default());
}

pub fn enqueue(outcome: pb::Outcome, now_ms: i64) {
    if let Some(batch) = OUTBOX.with(|o| o.borrow_mut().push(outcome, now_ms)) {
        send(&batch);
    }
}

/// Hands on what waited long enough; called on the listener and upstream roots' tick.
pub fn flush_outcomes(now_ms: i64) {
    if let Some(batch) = OUTBOX.with(|o| o.borrow_mut().flush_due(now_ms)) {
        send(&batch);
    }
}

fn send(batch: &[u8]) {
    for _ in 0..2 {
        let queue = match QUEUE.with(std::cell::Cell::get) {
            Some(id) => id,
            None => match hostcalls::resolve_shared_queue(VM_ID, OUTCOME_QUEUE) {
                Ok(Some(id)) => {
                    QUEUE.with(|q| q.set(Some(id)));
                    id
                }
                // No service running (e.g. a test config without it): nowhere to go.
                _ => return,
            },
        };
        if hostcalls::enqueue_shared_queue(queue, Some(batch)).is_ok() {
            return;
        }
        // The queue went away (the service's VM was replaced): resolve it again once.
        QUEUE.with(|q| q.set(None));
    }
    host::log(LogLevel::Warn, "outcome queue refused a batch");
}
