//! Outcome records on their way from a worker's upstream filter to the singleton service.
//!
//! Each enqueue on Envoy's shared queue wakes the main thread and calls into its VM, so a record
//! per attempt would cost a cross-thread hop per request. Records are gathered per worker VM and
//! sent as one `ReportBatch` message when [`MAX_RECORDS`] are waiting or the oldest has waited
//! [`MAX_WAIT_MS`] (checked on every new record and on the worker's tick). Rules kept here:
//! - a record waits at most `MAX_WAIT_MS` plus one tick before it is handed on;
//! - the outbox never holds more than `MAX_RECORDS` records;
//! - the message is a `ReportBatch` (its `node_id` left empty: the service fills in its own).

use prost::Message;

use crate::pb;

/// Records sent in one message at most.
pub const MAX_RECORDS: usize = 64;
/// How long the oldest record may wait before the outbox is flushed (ms).
pub const MAX_WAIT_MS: i64 = 100;

#[derive(Debug, Default)]
pub struct Outbox {
    records: Vec<pb::Outcome>,
    oldest_ms: i64,
}

impl Outbox {
    /// Adds a record; returns the encoded batch when it is time to send.
    pub fn push(&mut self, record: pb::Outcome, now_ms: i64) -> Option<Vec<u8>> {
        if self.records.is_empty() {
            self.oldest_ms = now_ms;
        }
        self.records.push(record);
        self.flush_due(now_ms)
    }

    /// The encoded batch if one is due (full, or its oldest record waited long enough).
    pub fn flush_due(&mut self, now_ms: i64) -> Option<Vec<u8>> {
        let full = self.records.len() >= MAX_RECORDS;
        let old = !self.records.is_empty() && now_ms.saturating_sub(self.oldest_ms) >= MAX_WAIT_MS;
        (full || old).then(|| self.take())
    }

    /// Everything waiting, encoded, and the outbox emptied.
    pub fn take(&mut self) -> Vec<u8> {
        let batch = pb::ReportBatch {
            node_id: String::new(),
            outcomes: std::mem::take(&mut self.records),
            ..Default::default()
        };
        batch.encode_to_vec()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// The records of one queued message.
pub fn decode(message: &[u8]) -> Option<Vec<pb::Outcome>> {
    pb::ReportBatch::decode(message).ok().map(|b| b.outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn record(n: u32) -> pb::Outcome {
        pb::Outcome {
            account_id: format!("acc-{n}"),
            status: 200,
            attempt: 1,
            ..Default::default()
        }
    }

    #[test]
    fn records_wait_until_the_batch_is_full_or_old() {
        let mut outbox = Outbox::default();
        for n in 0..(MAX_RECORDS as u32 - 1) {
            assert!(outbox.push(record(n), 1000).is_none());
        }
        assert_eq!(outbox.len(), MAX_RECORDS - 1);
        let full = outbox.push(record(99), 1000).unwrap();
        assert!(outbox.is_empty());
        let sent = decode(&full).unwrap();
        assert_eq!(sent.len(), MAX_RECORDS);
        assert_eq!(sent[0].account_id, "acc-0");
        assert_eq!(sent[MAX_RECORDS - 1].account_id, "acc-99");
    }

    #[test]
    fn an_old_record_is_flushed_by_the_next_record_or_tick() {
        let mut outbox = Outbox::default();
        assert!(outbox.push(record(1), 1000).is_none());
        assert!(outbox.flush_due(1000 + MAX_WAIT_MS - 1).is_none());
        let batch = outbox.flush_due(1000 + MAX_WAIT_MS).unwrap();
        assert_eq!(decode(&batch).unwrap().len(), 1);
        assert!(outbox.flush_due(10_000).is_none(), "nothing left");
        // The age counts from the oldest waiting record.
        assert!(outbox.push(record(2), 5000).is_none());
        let batch = outbox.push(record(3), 5000 + MAX_WAIT_MS).unwrap();
        assert_eq!(decode(&batch).unwrap().len(), 2);
    }

    #[test]
    fn garbage_is_not_a_batch() {
        assert!(decode(&[0xff, 0xff, 0xff]).is_none());
        assert_eq!(decode(&[]).unwrap().len(), 0);
    }
}
