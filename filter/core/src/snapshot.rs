//! The routing table as the filters see it: the pushed `Snapshot`, indexed for per-request lookups.
//!
//! Rules kept here: everything a request looks up is indexed once per version (keys by hash,
//! accounts by id, per pool the ranking's `PoolIndex`), so a request's lookups do not walk the
//! table; accounts are sorted by id, the order every replica shares; bad input is an error, never
//! a panic.
//! - Ranking runs over a *lane*: one provider's accounts of one pool ([`SnapshotIndex::lane`]).
//!   A pool whose accounts are all of one provider is its own lane (lane = pool position: the
//!   Codex path costs one array read more than before); a mixed pool gets a filtered copy per
//!   provider, built here once per version, never a filter per request.

use std::collections::BTreeMap;

use prost::Message;

use crate::network::CidrSet;
use crate::pb;
use crate::pool_index::PoolIndex;
use crate::provider::Provider;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// The bytes in shared data are not a `Snapshot` (a version skew or a corrupted write).
    Decode(String),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Decode(why) => write!(f, "snapshot does not decode: {why}"),
        }
    }
}

/// Where a key lives in the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef {
    pub pool: usize,
    pub key: usize,
}

/// Where an account lives in the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountRef {
    pub pool: usize,
    pub account: usize,
}

/// A decoded snapshot plus the indexes every request needs. Built once per version per VM.
///
/// BTreeMap rather than HashMap: no random seed is needed, which wasm hosts may not provide.
#[derive(Debug, Clone, Default)]
pub struct SnapshotIndex {
    snapshot: pb::Snapshot,
    keys_by_hash: BTreeMap<[u8; 32], KeyRef>,
    accounts_by_id: BTreeMap<String, AccountRef>,
    /// Per pool (same positions as `snapshot.pools`): what ranking needs from this version.
    pool_indexes: Vec<PoolIndex>,
    /// The proxies whose `X-Forwarded-For` is believed (`network`).
    trusted_proxies: CidrSet,
    /// Per pool, per provider (`Provider::index`): its lane, `None` when the pool has no account
    /// of that provider.
    lanes_of: Vec<[Option<usize>; 3]>,
    /// Lanes numbered from `pools.len()`: one provider's accounts of a mixed pool.
    extra_lanes: Vec<(pb::Pool, PoolIndex)>,
}

impl SnapshotIndex {
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let snapshot =
            pb::Snapshot::decode(bytes).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        Ok(Self::new(snapshot))
    }

    pub fn new(mut snapshot: pb::Snapshot) -> Self {
        // Routing walks accounts in id order (the same on every replica): sort once here, not
        // per request.
        for pool in &mut snapshot.pools {
            pool.accounts.sort_by(|a, b| a.id.cmp(&b.id));
        }
        let mut keys_by_hash = BTreeMap::new();
        let mut accounts_by_id = BTreeMap::new();
        for (pool_ix, pool) in snapshot.pools.iter().enumerate() {
            for (key_ix, key) in pool.keys.iter().enumerate() {
                // A hash of the wrong length cannot match any presented key: skip it.
                if let Ok(hash) = <[u8; 32]>::try_from(key.key_hash.as_slice()) {
                    keys_by_hash.insert(
                        hash,
                        KeyRef {
                            pool: pool_ix,
                            key: key_ix,
                        },
                    );
                }
            }
            for (account_ix, account) in pool.accounts.iter().enumerate() {
                accounts_by_id.insert(
                    account.id.clone(),
                    AccountRef {
                        pool: pool_ix,
                        account: account_ix,
                    },
                );
            }
        }
        let pool_indexes = snapshot.pools.iter().map(PoolIndex::new).collect();
        let trusted_proxies = CidrSet::parse_lenient(&snapshot.trusted_proxies);
        let mut lanes_of = Vec::with_capacity(snapshot.pools.len());
        let mut extra_lanes = Vec::new();
        let n = snapshot.pools.len();
        for (pool_ix, pool) in snapshot.pools.iter().enumerate() {
            let providers: Vec<Option<Provider>> =
                pool.accounts.iter().map(Provider::of_account).collect();
            let mut lanes = [None; 3];
            let single = match providers.first() {
                // An empty pool is the Codex lane (its requests get the empty-pool answer).
                None => Some(Provider::Codex),
                Some(first) => first.filter(|p| providers.iter().all(|q| *q == Some(*p))),
            };
            match single {
                Some(p) => lanes[p.index()] = Some(pool_ix),
                None => {
                    for p in Provider::ALL {
                        if !providers.contains(&Some(p)) {
                            continue;
                        }
                        let mut lane = pb::Pool {
                            accounts: pool
                                .accounts
                                .iter()
                                .filter(|a| Provider::of_account(a) == Some(p))
                                .cloned()
                                .collect(),
                            ..pool.clone()
                        };
                        lane.accounts.shrink_to_fit();
                        let index = PoolIndex::new(&lane);
                        lanes[p.index()] = Some(n + extra_lanes.len());
                        extra_lanes.push((lane, index));
                    }
                }
            }
            lanes_of.push(lanes);
        }
        Self {
            snapshot,
            keys_by_hash,
            accounts_by_id,
            pool_indexes,
            trusted_proxies,
            lanes_of,
            extra_lanes,
        }
    }

    /// The lane ranking uses for `provider`'s requests in pool `pool_ix`; `None` when the pool
    /// has no account of that provider.
    pub fn lane(&self, pool_ix: usize, provider: Provider) -> Option<usize> {
        self.lanes_of.get(pool_ix)?.get(provider.index()).copied()?
    }

    /// A lane's accounts (a pool, or one provider's part of a mixed pool).
    pub fn lane_pool(&self, lane: usize) -> Option<&pb::Pool> {
        match lane.checked_sub(self.snapshot.pools.len()) {
            None => self.snapshot.pools.get(lane),
            Some(extra) => self.extra_lanes.get(extra).map(|(pool, _)| pool),
        }
    }

    /// A lane's ranking index.
    pub fn lane_index(&self, lane: usize) -> Option<&PoolIndex> {
        match lane.checked_sub(self.snapshot.pools.len()) {
            None => self.pool_indexes.get(lane),
            Some(extra) => self.extra_lanes.get(extra).map(|(_, index)| index),
        }
    }

    pub fn version(&self) -> u64 {
        self.snapshot.version
    }

    /// When the control plane built this snapshot (unix ms): its keys' usage counts are as of
    /// then (`policy::Standing`).
    pub fn generated_at_ms(&self) -> i64 {
        self.snapshot.generated_at_unix_ms
    }

    pub fn pools(&self) -> &[pb::Pool] {
        &self.snapshot.pools
    }

    pub fn pool(&self, ix: usize) -> Option<&pb::Pool> {
        self.snapshot.pools.get(ix)
    }

    /// The ranking's per-version index of pool `ix`.
    pub fn pool_index(&self, ix: usize) -> Option<&PoolIndex> {
        self.pool_indexes.get(ix)
    }

    /// The proxies in front of Envoy whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &CidrSet {
        &self.trusted_proxies
    }

    pub fn pool_by_id(&self, id: &str) -> Option<&pb::Pool> {
        self.snapshot.pools.iter().find(|p| p.id == id)
    }

    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Option<(&pb::Pool, &pb::PoolKey)> {
        let r = self.keys_by_hash.get(hash)?;
        let pool = self.snapshot.pools.get(r.pool)?;
        Some((pool, pool.keys.get(r.key)?))
    }

    pub fn account(&self, id: &str) -> Option<(&pb::Pool, &pb::Account)> {
        let r = self.accounts_by_id.get(id)?;
        let pool = self.snapshot.pools.get(r.pool)?;
        Some((pool, pool.accounts.get(r.account)?))
    }
}

/// The shared-data version key holds the version as 8 little-endian bytes.
pub fn encode_version(version: u64) -> [u8; 8] {
    version.to_le_bytes()
}

pub fn decode_version(bytes: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::hash_key;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    pub(crate) fn account(id: &str, state: pb::AccountState) -> pb::Account {
        pb::Account {
            id: id.to_string(),
            label: format!("label-{id}"),
            chatgpt_account_id: format!("chatgpt-{id}"),
            access_token: format!("token-{id}"),
            state: state as i32,
            weight: 1,
            health: 100,
            ..Default::default()
        }
    }

    pub(crate) fn sample() -> pb::Snapshot {
        pb::Snapshot {
            version: 7,
            pools: vec![
                pb::Pool {
                    id: "pool-a".into(),
                    name: "team-a".into(),
                    keys: vec![
                        pb::PoolKey {
                            id: "key-1".into(),
                            key_hash: hash_key("cmk_live").to_vec(),
                            status: pb::KeyStatus::Active as i32,
                            ..Default::default()
                        },
                        pb::PoolKey {
                            id: "key-2".into(),
                            key_hash: hash_key("cmk_revoked").to_vec(),
                            status: pb::KeyStatus::Revoked as i32,
                            ..Default::default()
                        },
                    ],
                    accounts: vec![
                        account("a1", pb::AccountState::Active),
                        account("a2", pb::AccountState::Active),
                        account("a3", pb::AccountState::Paused),
                    ],
                    ..Default::default()
                },
                pb::Pool {
                    id: "pool-b".into(),
                    name: "team-b".into(),
                    keys: vec![pb::PoolKey {
                        id: "key-3".into(),
                        key_hash: hash_key("cmk_other").to_vec(),
                        status: pb::KeyStatus::Active as i32,
                        ..Default::default()
                    }],
                    accounts: vec![account("b1", pb::AccountState::Active)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn indexes_keys_and_accounts_across_pools() {
        let bytes = sample().encode_to_vec();
        let index = SnapshotIndex::decode(&bytes).unwrap();
        assert_eq!(index.version(), 7);
        let (pool, key) = index.key_by_hash(&hash_key("cmk_other")).unwrap();
        assert_eq!((pool.id.as_str(), key.id.as_str()), ("pool-b", "key-3"));
        let (pool, account) = index.account("a2").unwrap();
        assert_eq!(
            (pool.id.as_str(), account.label.as_str()),
            ("pool-a", "label-a2")
        );
        assert!(index.key_by_hash(&hash_key("cmk_nope")).is_none());
        assert!(index.account("zz").is_none());
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let err = SnapshotIndex::decode(&[0xff, 0xff, 0xff, 0x01]).unwrap_err();
        assert!(matches!(err, SnapshotError::Decode(_)));
    }

    #[test]
    fn key_hash_of_wrong_length_is_ignored() {
        let mut snap = sample();
        snap.pools[0].keys[0].key_hash = vec![1, 2, 3];
        let index = SnapshotIndex::new(snap);
        assert!(index.key_by_hash(&hash_key("cmk_live")).is_none());
        assert!(index.key_by_hash(&hash_key("cmk_revoked")).is_some());
    }

    #[test]
    fn network_lists_are_read_once_per_version() {
        let mut snap = sample();
        snap.trusted_proxies = vec!["10.0.0.0/8".into(), "junk".into()];
        snap.pools[1].allowed_cidrs = vec!["192.168.0.0/16".into()];
        let index = SnapshotIndex::new(snap);
        assert_eq!(index.trusted_proxies().to_strings(), ["10.0.0.0/8"]);
        assert!(index.pool_index(0).unwrap().allowed_clients().is_none());
        let allowed = index.pool_index(1).unwrap().allowed_clients().unwrap();
        assert!(allowed.contains("192.168.7.7".parse().unwrap()));
    }

    #[test]
    fn version_round_trips_through_eight_bytes() {
        assert_eq!(
            decode_version(&encode_version(u64::MAX - 3)),
            Some(u64::MAX - 3)
        );
        assert_eq!(decode_version(&[1, 2, 3]), None);
    }
}
