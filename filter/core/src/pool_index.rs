//! What a snapshot version fixes about a pool for ranking: the id order ("ix"), the priority
//! order and the affinity ring, built once per version (with `SnapshotIndex`) and read by
//! `ranker` per request; and its client allowlist, parsed once (`network`).

use crate::affinity::{self, PROBES};
use crate::network::{self, CidrSet};
use crate::pb;

/// What a snapshot version fixes about a pool. Accounts are numbered by id order ("ix").
#[derive(Debug, Clone, Default)]
pub struct PoolIndex {
    /// Position in `pool.accounts` of each ix.
    by_id: Vec<u32>,
    /// Ixs by (priority, id).
    pub(crate) by_priority: Vec<u32>,
    /// Per ix: its id's hash and its number of ring points.
    account_hash: Vec<u64>,
    points: Vec<u32>,
    /// Ring points `(position << 32) | ix`, sorted.
    ring: Vec<u64>,
    /// `buckets[t]`: first ring index whose position's bucket is ≥ t (see [`bucket_of`]).
    buckets: Vec<u32>,
    /// The client addresses the pool's keys work from; `None`: any.
    allowed_clients: Option<CidrSet>,
}

fn ring_pos(point: u64) -> u32 {
    (point >> 32) as u32
}

fn ring_ix(point: u64) -> u32 {
    (point & 0xffff_ffff) as u32
}

/// Bucket of a ring position among `len` equal buckets: monotone in the position.
fn bucket_of(pos: u32, len: usize) -> usize {
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    usize::try_from((u64::from(pos) * len) >> 32).unwrap_or(usize::MAX)
}

pub(crate) fn as_ix(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

pub(crate) fn as_usize(ix: u32) -> usize {
    usize::try_from(ix).unwrap_or(usize::MAX)
}

impl PoolIndex {
    pub fn new(pool: &pb::Pool) -> Self {
        let n = pool.accounts.len().min(as_usize(u32::MAX));
        let id_at = |p: u32| pool.accounts.get(as_usize(p)).map_or("", |a| a.id.as_str());
        let mut by_id: Vec<u32> = (0..n).map(as_ix).collect();
        if !pool.accounts.is_sorted_by(|a, b| a.id <= b.id) {
            by_id.sort_by(|a, b| id_at(*a).cmp(id_at(*b)));
        }
        let accounts: Vec<Option<&pb::Account>> = by_id
            .iter()
            .map(|p| pool.accounts.get(as_usize(*p)))
            .collect();
        let priority = |ix: u32| {
            accounts
                .get(as_usize(ix))
                .copied()
                .flatten()
                .map_or(u32::MAX, |a| a.priority)
        };
        let mut by_priority: Vec<u32> = (0..n).map(as_ix).collect();
        by_priority.sort_by(|a, b| priority(*a).cmp(&priority(*b)).then(a.cmp(b)));
        let account_hash: Vec<u64> = accounts
            .iter()
            .map(|a| a.map_or(0, |a| affinity::account_hash(&a.id)))
            .collect();
        let total: u64 = accounts
            .iter()
            .map(|a| u64::from(a.map_or(1, |a| a.weight).clamp(1, affinity::MAX_WEIGHT)))
            .sum();
        let points: Vec<u32> = accounts
            .iter()
            .map(|a| affinity::points_for(a.map_or(1, |a| a.weight), total))
            .collect();
        let mut ring = Vec::with_capacity(points.iter().map(|p| as_usize(*p)).sum());
        for (ix, (hash, count)) in account_hash.iter().zip(&points).enumerate() {
            for unit in 0..*count {
                let pos = affinity::point_position(*hash, unit);
                ring.push((u64::from(pos) << 32) | u64::from(as_ix(ix)));
            }
        }
        ring.sort_unstable();
        let len = ring.len().max(1);
        let mut buckets = Vec::with_capacity(len);
        let mut i = 0usize;
        for t in 0..len {
            while ring
                .get(i)
                .is_some_and(|p| bucket_of(ring_pos(*p), len) < t)
            {
                i += 1;
            }
            buckets.push(as_ix(i));
        }
        Self {
            by_id,
            by_priority,
            account_hash,
            points,
            ring,
            buckets,
            allowed_clients: network::pool_allowlist(&pool.allowed_cidrs),
        }
    }

    /// The pool's client allowlist, when it has one (`network::admit` checks a request).
    pub fn allowed_clients(&self) -> Option<&CidrSet> {
        self.allowed_clients.as_ref()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(crate) fn account<'a>(&self, pool: &'a pb::Pool, ix: u32) -> Option<&'a pb::Account> {
        let p = self.by_id.get(as_usize(ix))?;
        pool.accounts.get(as_usize(*p))
    }

    /// The ix of an account id (binary search over the id order).
    pub(crate) fn position(&self, pool: &pb::Pool, id: &str) -> Option<u32> {
        let i = self
            .by_id
            .partition_point(|p| pool.accounts.get(as_usize(*p)).map_or("", |a| &a.id) < id);
        let ix = as_ix(i);
        (self.account(pool, ix)?.id == id).then_some(ix)
    }

    /// First ring index at or after position `x` (may be `ring.len()`: wrap to 0).
    fn first_at_or_after(&self, x: u32) -> usize {
        let len = self.ring.len().max(1);
        let mut i = self
            .buckets
            .get(bucket_of(x, len))
            .map_or(self.ring.len(), |b| as_usize(*b));
        while self.ring.get(i).is_some_and(|p| ring_pos(*p) < x) {
            i += 1;
        }
        i
    }

    /// The session's first `k` accounts among those `accept` lets through, best first, as
    /// `(distance, ix)`. `candidates` lists every account `accept` may let through.
    pub(crate) fn affinity_top<F: Fn(u32) -> bool>(
        &self,
        key: &str,
        k: usize,
        candidates: &[u32],
        accept: F,
    ) -> Vec<(u32, u32)> {
        let mut best: Vec<(u32, u32)> = Vec::with_capacity(k.saturating_add(1));
        if k == 0 {
            return best;
        }
        let probes = affinity::probe_positions(affinity::session_hash(key));
        let ring_len = self.ring.len();
        // Walking the ring from each probe costs about (probes + k) / (share of eligible
        // accounts) steps; scoring the candidates directly costs one distance (a few hashes and
        // searches per point) each. Both give the same answer (a test holds them to it): take
        // the cheaper, with a direct point costing about three steps.
        let n = u64::try_from(self.len()).unwrap_or(u64::MAX);
        let c = u64::try_from(candidates.len()).unwrap_or(u64::MAX);
        let points = u64::try_from(ring_len).unwrap_or(u64::MAX);
        let walk = u64::try_from(PROBES + k)
            .unwrap_or(u64::MAX)
            .saturating_mul(n)
            .saturating_mul(n);
        let direct = c.saturating_mul(c).saturating_mul(points).saturating_mul(3);
        let few = direct <= walk;
        if few || ring_len == 0 {
            let mut sorted = probes;
            sorted.sort_unstable();
            for ix in candidates {
                if accept(*ix) {
                    let hash = self.account_hash.get(as_usize(*ix)).copied().unwrap_or(0);
                    let points = self.points.get(as_usize(*ix)).copied().unwrap_or(1);
                    offer(&mut best, k, affinity::distance(&sorted, hash, points), *ix);
                }
            }
            return best;
        }
        for x in probes {
            let start = self.first_at_or_after(x);
            for step in 0..ring_len {
                let Some(point) = self.ring.get((start + step) % ring_len) else {
                    break;
                };
                let d = ring_pos(*point).wrapping_sub(x);
                if best.len() >= k && best.last().is_some_and(|(worst, _)| d > *worst) {
                    break;
                }
                let ix = ring_ix(*point);
                if accept(ix) {
                    offer(&mut best, k, d, ix);
                }
            }
        }
        best
    }
}

/// Keeps `best` the `k` smallest `(distance, ix)` with one entry per ix.
fn offer(best: &mut Vec<(u32, u32)>, k: usize, d: u32, ix: u32) {
    if let Some(i) = best.iter().position(|(_, other)| *other == ix) {
        if best.get(i).is_some_and(|(old, _)| *old <= d) {
            return;
        }
        best.remove(i);
    }
    let at = best.partition_point(|e| *e < (d, ix));
    if at >= k {
        return;
    }
    best.insert(at, (d, ix));
    best.truncate(k);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::account;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_ring_walk_finds_what_scoring_every_account_finds() {
        let pool = pb::Pool {
            accounts: (0..2_000)
                .map(|i| {
                    let mut a = account(&format!("acc-{i:05}"), pb::AccountState::Active);
                    a.weight = 1 + (i % 3);
                    a
                })
                .collect(),
            ..Default::default()
        };
        let pix = PoolIndex::new(&pool);
        let all: Vec<u32> = (0..2_000).collect();
        for i in 0..200 {
            let key = format!("s-{i}");
            // Every third account out: the walk skips them.
            let accept = |ix: u32| ix % 3 != 1;
            let walked = pix.affinity_top(&key, 7, &all, accept);
            let probes = affinity::sorted_probes(&key);
            let mut scored: Vec<(u32, u32)> = all
                .iter()
                .filter(|ix| accept(**ix))
                .map(|ix| {
                    let i = *ix as usize;
                    (
                        affinity::distance(&probes, pix.account_hash[i], pix.points[i]),
                        *ix,
                    )
                })
                .collect();
            scored.sort_unstable();
            scored.truncate(7);
            assert_eq!(walked, scored, "{key}");
        }
    }
}
