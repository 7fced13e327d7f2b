//! Whether a pushed snapshot may be applied, and the ACK/NACK verdicts the service reports back
//! (xDS's version_info / error_detail, carried in `ReportBatch.snapshot_statuses`).
//!
//! Rules kept here:
//! - [`check`] runs before a snapshot is published. A rejected snapshot is never published: the
//!   Envoy keeps serving the one it applied before, and the rejection says why.
//! - It refuses what the filter would misread or cannot index: a version older than the one
//!   applied on the same stream (the first snapshot of a stream is authoritative: a restored
//!   control plane may count from lower), empty or repeated ids where lookups rely on them (pool
//!   ids; key ids and key hashes across the snapshot; account ids within a pool), key hashes that
//!   are not 32 bytes, and values outside the ranges the filter serves (unknown enum values,
//!   `max_attempts` over the cap, thresholds that are not a percentage, weights over
//!   [`affinity::MAX_WEIGHT`], health over 100, quota that is not a finite non-negative number).
//! - [`Verdicts`] keeps at most one undelivered ACK and one undelivered NACK (the newest of
//!   each); on one stream a verdict equal to the last one (same version, same answer) is not
//!   queued again, while a new stream's first verdict always is (as xDS ACKs each stream's first
//!   response: the control plane may have restarted and lost what it knew); a failed delivery is
//!   retried, not dropped.
//! - A detail is bounded ([`MAX_DETAIL_CHARS`]) and names pools, keys and accounts by id, never
//!   a token.

use prost::Message;

use crate::affinity;
use crate::pb;
use crate::routing::MAX_ATTEMPTS_CAP;

/// A rejection's detail is clipped to this many characters.
pub const MAX_DETAIL_CHARS: usize = 1024;

/// Why a snapshot was not applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// The message from the control plane is not a `SubscribeResponse`.
    Undecodable(String),
    /// Older than what this stream already applied.
    OlderVersion {
        version: u64,
        applied: u64,
    },
    /// A pool, key or account without an id.
    EmptyId {
        pool_id: String,
        what: &'static str,
    },
    DuplicatePool {
        pool_id: String,
    },
    DuplicateKeyId {
        pool_id: String,
        key_id: String,
    },
    /// Two keys with one hash: a presented key would resolve to either.
    DuplicateKeyHash {
        pool_id: String,
        key_id: String,
    },
    /// One account twice in the same pool.
    DuplicateAccount {
        pool_id: String,
        account_id: String,
    },
    KeyHashLength {
        pool_id: String,
        key_id: String,
        len: usize,
    },
    OutOfRange {
        pool_id: String,
        field: String,
        value: String,
        expected: &'static str,
    },
    /// Envoy refused the shared-data write.
    Publish(String),
}

impl Rejection {
    /// The pool the rejection concerns, when it concerns one.
    pub fn pool_id(&self) -> Option<&str> {
        match self {
            Self::Undecodable(_) | Self::OlderVersion { .. } | Self::Publish(_) => None,
            Self::EmptyId { pool_id, .. }
            | Self::DuplicatePool { pool_id }
            | Self::DuplicateKeyId { pool_id, .. }
            | Self::DuplicateKeyHash { pool_id, .. }
            | Self::DuplicateAccount { pool_id, .. }
            | Self::KeyHashLength { pool_id, .. }
            | Self::OutOfRange { pool_id, .. } => (!pool_id.is_empty()).then_some(pool_id),
        }
    }

    /// The detail reported to the control plane: the message, bounded.
    pub fn detail(&self) -> String {
        self.to_string().chars().take(MAX_DETAIL_CHARS).collect()
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Undecodable(why) => write!(f, "message does not decode: {why}"),
            Self::OlderVersion { version, applied } => write!(
                f,
                "version {version} is older than version {applied} already applied on this stream"
            ),
            Self::EmptyId { pool_id, what } if pool_id.is_empty() => {
                write!(f, "a {what} has an empty id")
            }
            Self::EmptyId { pool_id, what } => {
                write!(f, "pool {pool_id}: a {what} has an empty id")
            }
            Self::DuplicatePool { pool_id } => write!(f, "pool {pool_id} appears twice"),
            Self::DuplicateKeyId { pool_id, key_id } => {
                write!(f, "pool {pool_id}: key id {key_id} appears twice")
            }
            Self::DuplicateKeyHash { pool_id, key_id } => write!(
                f,
                "pool {pool_id}: key {key_id} has the same hash as another key"
            ),
            Self::DuplicateAccount {
                pool_id,
                account_id,
            } => write!(f, "pool {pool_id}: account {account_id} appears twice"),
            Self::KeyHashLength {
                pool_id,
                key_id,
                len,
            } => write!(
                f,
                "pool {pool_id}: key {key_id} has a {len}-byte hash, expected 32 bytes (SHA-256)"
            ),
            Self::OutOfRange {
                pool_id,
                field,
                value,
                expected,
            } => write!(f, "pool {pool_id}: {field} is {value}, expected {expected}"),
            Self::Publish(why) => write!(f, "cannot store the snapshot in shared data: {why}"),
        }
    }
}

/// Decodes one message of the Subscribe stream.
pub fn decode_message(bytes: &[u8]) -> Result<pb::SubscribeResponse, Rejection> {
    pb::SubscribeResponse::decode(bytes).map_err(|e| Rejection::Undecodable(e.to_string()))
}

/// Whether `snapshot` may be published, given the newest version applied on this stream (None:
/// it is the stream's first).
pub fn check(snapshot: &pb::Snapshot, stream_version: Option<u64>) -> Result<(), Rejection> {
    if let Some(applied) = stream_version {
        if snapshot.version < applied {
            return Err(Rejection::OlderVersion {
                version: snapshot.version,
                applied,
            });
        }
    }
    let mut pool_ids = std::collections::BTreeSet::new();
    let mut key_ids = std::collections::BTreeSet::new();
    let mut key_hashes = std::collections::BTreeSet::new();
    for pool in &snapshot.pools {
        let pool_id = &pool.id;
        if pool_id.is_empty() {
            return Err(Rejection::EmptyId {
                pool_id: String::new(),
                what: "pool",
            });
        }
        if !pool_ids.insert(pool_id.as_str()) {
            return Err(Rejection::DuplicatePool {
                pool_id: pool_id.clone(),
            });
        }
        if let Some(r) = &pool.routing {
            check_routing(pool_id, "routing", r)?;
        }
        for key in &pool.keys {
            if key.id.is_empty() {
                return Err(Rejection::EmptyId {
                    pool_id: pool_id.clone(),
                    what: "key",
                });
            }
            if !key_ids.insert(key.id.as_str()) {
                return Err(Rejection::DuplicateKeyId {
                    pool_id: pool_id.clone(),
                    key_id: key.id.clone(),
                });
            }
            if key.key_hash.len() != 32 {
                return Err(Rejection::KeyHashLength {
                    pool_id: pool_id.clone(),
                    key_id: key.id.clone(),
                    len: key.key_hash.len(),
                });
            }
            if !key_hashes.insert(key.key_hash.as_slice()) {
                return Err(Rejection::DuplicateKeyHash {
                    pool_id: pool_id.clone(),
                    key_id: key.id.clone(),
                });
            }
            known_enum::<pb::KeyStatus>(
                pool_id,
                || format!("keys[{}].status", key.id),
                key.status,
            )?;
            if let Some(r) = &key.routing_override {
                check_routing(pool_id, &format!("keys[{}].routing_override", key.id), r)?;
            }
        }
        let mut account_ids = std::collections::BTreeSet::new();
        for account in &pool.accounts {
            if account.id.is_empty() {
                return Err(Rejection::EmptyId {
                    pool_id: pool_id.clone(),
                    what: "account",
                });
            }
            if !account_ids.insert(account.id.as_str()) {
                return Err(Rejection::DuplicateAccount {
                    pool_id: pool_id.clone(),
                    account_id: account.id.clone(),
                });
            }
            check_account(pool_id, account)?;
        }
    }
    Ok(())
}

fn out_of_range(
    pool_id: &str,
    field: String,
    value: impl std::fmt::Display,
    expected: &'static str,
) -> Rejection {
    Rejection::OutOfRange {
        pool_id: pool_id.to_owned(),
        field,
        value: value.to_string().chars().take(64).collect(),
        expected,
    }
}

fn known_enum<E: TryFrom<i32>>(
    pool_id: &str,
    field: impl FnOnce() -> String,
    value: i32,
) -> Result<(), Rejection> {
    match E::try_from(value) {
        Ok(_) => Ok(()),
        Err(_) => Err(out_of_range(
            pool_id,
            field(),
            value,
            "a value this filter knows",
        )),
    }
}

fn check_routing(pool_id: &str, at: &str, r: &pb::RoutingSettings) -> Result<(), Rejection> {
    known_enum::<pb::Strategy>(pool_id, || format!("{at}.strategy"), r.strategy)?;
    if r.max_attempts > MAX_ATTEMPTS_CAP {
        return Err(out_of_range(
            pool_id,
            format!("{at}.max_attempts"),
            r.max_attempts,
            "0 (the default) to 10",
        ));
    }
    for (name, pct) in [
        ("primary_threshold_percent", r.primary_threshold_percent),
        ("secondary_threshold_percent", r.secondary_threshold_percent),
    ] {
        // 0 means the default; anything else must be a percentage.
        if pct != 0.0 && !(pct.is_finite() && pct > 0.0 && pct <= 100.0) {
            return Err(out_of_range(
                pool_id,
                format!("{at}.{name}"),
                pct,
                "0 (the default) or a percentage above 0 and at most 100",
            ));
        }
    }
    Ok(())
}

fn check_account(pool_id: &str, a: &pb::Account) -> Result<(), Rejection> {
    known_enum::<pb::AccountState>(pool_id, || format!("accounts[{}].state", a.id), a.state)?;
    if a.weight > affinity::MAX_WEIGHT {
        return Err(out_of_range(
            pool_id,
            format!("accounts[{}].weight", a.id),
            a.weight,
            "at most 1000",
        ));
    }
    if a.health > 100 {
        return Err(out_of_range(
            pool_id,
            format!("accounts[{}].health", a.id),
            a.health,
            "0 to 100",
        ));
    }
    if let Some(q) = &a.quota {
        for (name, w) in [("primary", &q.primary), ("secondary", &q.secondary)] {
            if let Some(w) = w {
                if !(w.used_percent.is_finite() && w.used_percent >= 0.0) {
                    return Err(out_of_range(
                        pool_id,
                        format!("accounts[{}].quota.{name}.used_percent", a.id),
                        w.used_percent,
                        "a finite percentage of at least 0",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The verdicts of one service: what it applied, and what it still has to report.
#[derive(Debug, Clone, Default)]
pub struct Verdicts {
    /// The newest version applied on the current stream (None: nothing yet on it).
    stream_version: Option<u64>,
    /// The version shared data serves (0: none yet).
    applied: u64,
    /// The newest verdict recorded: (version, accepted).
    last: Option<(u64, bool)>,
    pending_ack: Option<pb::SnapshotStatus>,
    pending_nack: Option<pb::SnapshotStatus>,
    /// After a failed delivery, not before this time (unix ms).
    retry_at_ms: i64,
}

impl Verdicts {
    /// A new Subscribe stream opened: its first snapshot is authoritative, and its verdict is
    /// reported whatever the last one was.
    pub fn new_stream(&mut self) {
        self.stream_version = None;
        self.last = None;
    }

    pub fn stream_version(&self) -> Option<u64> {
        self.stream_version
    }

    /// The version shared data serves (0: none yet).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// `version` was published.
    pub fn accepted(&mut self, version: u64, now_ms: i64) {
        self.stream_version = Some(version);
        self.applied = version;
        if self.last == Some((version, true)) {
            return;
        }
        self.last = Some((version, true));
        self.pending_ack = Some(pb::SnapshotStatus {
            version,
            accepted: true,
            at_unix_ms: now_ms,
            applied_version: version,
            ..Default::default()
        });
        self.retry_at_ms = 0;
    }

    /// `version` was not published, for `why`.
    pub fn rejected(&mut self, version: u64, why: &Rejection, now_ms: i64) {
        if self.last == Some((version, false)) {
            return;
        }
        self.last = Some((version, false));
        self.pending_nack = Some(pb::SnapshotStatus {
            version,
            accepted: false,
            error_detail: why.detail(),
            at_unix_ms: now_ms,
            applied_version: self.applied,
            pool_id: why.pool_id().unwrap_or_default().to_owned(),
        });
        self.retry_at_ms = 0;
    }

    /// A verdict waits and may be sent now.
    pub fn due(&self, now_ms: i64) -> bool {
        (self.pending_ack.is_some() || self.pending_nack.is_some()) && now_ms >= self.retry_at_ms
    }

    /// What the next report carries: the undelivered verdicts, oldest first.
    pub fn to_report(&self) -> Vec<pb::SnapshotStatus> {
        let mut out: Vec<pb::SnapshotStatus> = [&self.pending_ack, &self.pending_nack]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        out.sort_by_key(|s| (s.at_unix_ms, s.version));
        out
    }

    /// The report carrying `sent` succeeded: those verdicts are delivered (a newer one queued
    /// meanwhile stays).
    pub fn delivered(&mut self, sent: &[pb::SnapshotStatus]) {
        for slot in [&mut self.pending_ack, &mut self.pending_nack] {
            if slot.as_ref().is_some_and(|p| sent.contains(p)) {
                *slot = None;
            }
        }
    }

    /// The report carrying verdicts failed: try again at `retry_at_ms`.
    pub fn failed(&mut self, retry_at_ms: i64) {
        self.retry_at_ms = retry_at_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::sample;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn rejection(snapshot: &pb::Snapshot) -> Rejection {
        check(snapshot, None).unwrap_err()
    }

    #[test]
    fn the_sample_snapshot_is_accepted() {
        assert_eq!(check(&sample(), None), Ok(()));
        assert_eq!(check(&sample(), Some(7)), Ok(()), "the same version again");
        assert_eq!(check(&sample(), Some(6)), Ok(()));
    }

    #[test]
    fn an_undecodable_message_is_rejected() {
        let err = decode_message(&[0xff, 0xff, 0xff, 0x01]).unwrap_err();
        assert!(matches!(err, Rejection::Undecodable(_)), "{err:?}");
        assert!(err.detail().starts_with("message does not decode"));
        assert_eq!(err.pool_id(), None);
    }

    #[test]
    fn an_older_version_on_the_same_stream_is_rejected_but_a_new_stream_starts_over() {
        let err = check(&sample(), Some(8)).unwrap_err();
        assert_eq!(
            err,
            Rejection::OlderVersion {
                version: 7,
                applied: 8
            }
        );
        assert_eq!(
            err.detail(),
            "version 7 is older than version 8 already applied on this stream"
        );
        assert_eq!(check(&sample(), None), Ok(()), "first on a stream");
    }

    #[test]
    fn repeated_and_empty_ids_are_rejected() {
        let mut s = sample();
        s.pools[1].id = "pool-a".into();
        assert_eq!(
            rejection(&s),
            Rejection::DuplicatePool {
                pool_id: "pool-a".into()
            }
        );

        let mut s = sample();
        s.pools[1].keys[0].id = "key-1".into();
        assert_eq!(
            rejection(&s),
            Rejection::DuplicateKeyId {
                pool_id: "pool-b".into(),
                key_id: "key-1".into()
            }
        );

        let mut s = sample();
        s.pools[1].keys[0].key_hash = s.pools[0].keys[0].key_hash.clone();
        assert_eq!(
            rejection(&s),
            Rejection::DuplicateKeyHash {
                pool_id: "pool-b".into(),
                key_id: "key-3".into()
            }
        );

        let mut s = sample();
        s.pools[0].accounts[2].id = "a1".into();
        let err = rejection(&s);
        assert_eq!(
            err,
            Rejection::DuplicateAccount {
                pool_id: "pool-a".into(),
                account_id: "a1".into()
            }
        );
        assert_eq!(err.pool_id(), Some("pool-a"));

        // One account in two pools is a membership, not a duplicate.
        let mut s = sample();
        let shared = s.pools[0].accounts[0].clone();
        s.pools[1].accounts.push(shared);
        assert_eq!(check(&s, None), Ok(()));

        let mut s = sample();
        s.pools[0].id.clear();
        assert_eq!(
            rejection(&s),
            Rejection::EmptyId {
                pool_id: String::new(),
                what: "pool"
            }
        );
        let mut s = sample();
        s.pools[0].keys[1].id.clear();
        assert_eq!(rejection(&s).detail(), "pool pool-a: a key has an empty id");
        let mut s = sample();
        s.pools[1].accounts[0].id.clear();
        assert_eq!(
            rejection(&s).detail(),
            "pool pool-b: a account has an empty id"
        );
    }

    #[test]
    fn a_key_hash_must_be_32_bytes() {
        let mut s = sample();
        s.pools[0].keys[1].key_hash = vec![1, 2, 3];
        let err = rejection(&s);
        assert_eq!(
            err,
            Rejection::KeyHashLength {
                pool_id: "pool-a".into(),
                key_id: "key-2".into(),
                len: 3
            }
        );
        assert!(err.detail().contains("3-byte hash"), "{}", err.detail());
    }

    #[test]
    fn routing_values_out_of_range_are_rejected() {
        type Change = Box<dyn Fn(&mut pb::RoutingSettings)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|r| r.max_attempts = 50),
                "routing.max_attempts is 50",
            ),
            (Box::new(|r| r.strategy = 99), "routing.strategy is 99"),
            (
                Box::new(|r| r.primary_threshold_percent = 150.0),
                "routing.primary_threshold_percent is 150",
            ),
            (
                Box::new(|r| r.secondary_threshold_percent = -1.0),
                "routing.secondary_threshold_percent is -1",
            ),
            (
                Box::new(|r| r.primary_threshold_percent = f64::NAN),
                "routing.primary_threshold_percent is NaN",
            ),
        ];
        for (change, said) in cases {
            let mut s = sample();
            let mut r = pb::RoutingSettings::default();
            change(&mut r);
            s.pools[1].routing = Some(r);
            let err = rejection(&s);
            assert!(
                matches!(err, Rejection::OutOfRange { .. }),
                "{said}: {err:?}"
            );
            assert_eq!(err.pool_id(), Some("pool-b"));
            assert!(
                err.detail().starts_with(&format!("pool pool-b: {said}")),
                "{}",
                err.detail()
            );
        }
        // The edges are fine: the cap, 100 %, and 0 for "the default".
        let mut s = sample();
        s.pools[0].routing = Some(pb::RoutingSettings {
            max_attempts: MAX_ATTEMPTS_CAP,
            primary_threshold_percent: 100.0,
            secondary_threshold_percent: 0.0,
            strategy: pb::Strategy::PriorityOrder as i32,
            ..Default::default()
        });
        assert_eq!(check(&s, None), Ok(()));

        // A key's override is checked like its pool's routing.
        let mut s = sample();
        s.pools[0].keys[0].routing_override = Some(pb::RoutingSettings {
            max_attempts: 11,
            ..Default::default()
        });
        assert!(rejection(&s)
            .detail()
            .contains("keys[key-1].routing_override.max_attempts is 11"));
    }

    #[test]
    fn key_and_account_values_out_of_range_are_rejected() {
        let mut s = sample();
        s.pools[0].keys[0].status = 7;
        assert!(rejection(&s).detail().contains("keys[key-1].status is 7"));

        let mut s = sample();
        s.pools[0].accounts[1].state = 12;
        assert!(rejection(&s).detail().contains("accounts[a2].state is 12"));

        let mut s = sample();
        s.pools[0].accounts[0].weight = 1001;
        assert!(rejection(&s)
            .detail()
            .contains("accounts[a1].weight is 1001"));

        let mut s = sample();
        s.pools[0].accounts[0].health = 101;
        assert!(rejection(&s)
            .detail()
            .contains("accounts[a1].health is 101"));

        let mut s = sample();
        s.pools[0].accounts[0].quota = Some(pb::QuotaSummary {
            secondary: Some(pb::QuotaWindow {
                used_percent: f64::INFINITY,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(rejection(&s)
            .detail()
            .contains("accounts[a1].quota.secondary.used_percent is inf"));
    }

    #[test]
    fn a_detail_is_bounded_and_never_carries_a_token() {
        let mut s = sample();
        s.pools[0].id = "p".repeat(5000);
        s.pools[0].routing = Some(pb::RoutingSettings {
            max_attempts: 99,
            ..Default::default()
        });
        let err = rejection(&s);
        assert_eq!(err.detail().chars().count(), MAX_DETAIL_CHARS);
        let mut s = sample();
        s.pools[0].accounts[0].weight = 5000;
        let detail = rejection(&s).detail();
        assert!(!detail.contains("token-a1"), "{detail}");
    }

    #[test]
    fn verdicts_are_queued_once_per_version_and_delivered_oldest_first() {
        let mut v = Verdicts::default();
        assert!(!v.due(0));
        v.accepted(5, 100);
        assert!(v.due(100));
        assert_eq!((v.applied(), v.stream_version()), (5, Some(5)));
        let sent = v.to_report();
        assert_eq!(sent.len(), 1);
        assert!(sent[0].accepted && sent[0].version == 5 && sent[0].applied_version == 5);
        v.delivered(&sent);
        assert!(!v.due(100));
        // The same version again on the same stream: nothing new to say.
        v.accepted(5, 150);
        assert!(!v.due(150));
        // A new stream's first verdict is reported again (the control plane may have
        // restarted), once.
        v.new_stream();
        v.accepted(5, 200);
        assert!(v.due(200));
        let sent = v.to_report();
        assert_eq!(
            (sent.len(), sent[0].version, sent[0].at_unix_ms),
            (1, 5, 200)
        );
        v.delivered(&sent);
        v.accepted(5, 250);
        assert!(!v.due(250));

        // A rejection keeps the applied version and says which pool.
        let why = Rejection::OutOfRange {
            pool_id: "pool-b".into(),
            field: "routing.max_attempts".into(),
            value: "50".into(),
            expected: "0 (the default) to 10",
        };
        v.rejected(6, &why, 300);
        v.rejected(6, &why, 301);
        let sent = v.to_report();
        assert_eq!(sent.len(), 1, "not repeated for the same version");
        assert!(!sent[0].accepted);
        assert_eq!(sent[0].version, 6);
        assert_eq!(sent[0].applied_version, 5);
        assert_eq!(sent[0].pool_id, "pool-b");
        assert!(sent[0].error_detail.contains("max_attempts is 50"));
        assert_eq!(v.applied(), 5, "a rejected snapshot is not applied");

        // A failed delivery is retried later, not dropped; meanwhile an ACK of a newer
        // version joins it, behind it.
        v.failed(1300);
        assert!(!v.due(1000));
        v.accepted(7, 1100);
        assert!(v.due(1100), "a new verdict goes out at once");
        let sent = v.to_report();
        assert_eq!(
            sent.iter()
                .map(|s| (s.version, s.accepted))
                .collect::<Vec<_>>(),
            vec![(6, false), (7, true)]
        );
        // A verdict queued while the report was in flight survives its delivery.
        v.rejected(8, &Rejection::Publish("no memory".into()), 1200);
        v.delivered(&sent);
        let left = v.to_report();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].version, left[0].accepted), (8, false));
        assert_eq!(left[0].pool_id, "");
        v.delivered(&left);
        assert!(!v.due(5000));
    }
}
