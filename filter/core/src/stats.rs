//! The filter's own counters in Envoy's stats: their names, and the bound on how many pools get a
//! set of their own. The adapter (`filter/wasm/src/metrics.rs`) defines them with the host and
//! keeps their ids in a [`PoolSets`], so a request costs a map lookup and one host call per
//! counter it moves.
//!
//! Rules kept here:
//! - a counter's name is `codexmesh.filter.pool.<pool>.<counter>` (or
//!   `codexmesh.filter.<counter>` without a pool); Envoy adds `wasmcustom.`, the bootstrap's tag
//!   regex moves `<pool>` into the `codexmesh_pool` label, and `/stats/prometheus` prints
//!   `codexmesh_filter_<counter>{codexmesh_pool="<pool>"}`; `<pool>` is the pool's name made safe ([`pool_segment`]: only `A-Z a-z 0-9 _ -`,
//!   anything else becomes `_`, at most [`MAX_POOL_SEGMENT`] characters, an empty name
//!   `_empty`), so it can neither add a dot to Envoy's dotted name nor escape that tag regex
//!   (`stats_config.stats_tags` in `envoy/bootstrap.template.yaml`);
//! - at most [`MAX_POOL_SETS`] distinct pool names per VM get their own set; every later one
//!   counts under [`OTHER_POOL`]. Two names that become the same segment share one set in Envoy.

use std::collections::HashMap;

/// The first segments of every counter's name.
pub const PREFIX: &str = "codexmesh.filter";
/// Distinct pools with their own counters per VM; later pools count under [`OTHER_POOL`].
pub const MAX_POOL_SETS: usize = 100;
/// The pool segment of every pool past [`MAX_POOL_SETS`].
pub const OTHER_POOL: &str = "_other";
/// Longest pool segment (characters, all ASCII).
pub const MAX_POOL_SEGMENT: usize = 64;

/// The counters kept per pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolCounter {
    /// Requests the listener filter authenticated for the pool and handed to the router.
    Requests,
    /// Attempts after the first (the router retried on another account).
    Failovers,
    /// Attempts the upstream answered with 429.
    Upstream429,
    /// The filter's own "no account can serve" answer (429 `usage_limit_reached` for the pool).
    PoolExhausted,
}

impl PoolCounter {
    pub const ALL: [PoolCounter; 4] = [
        PoolCounter::Requests,
        PoolCounter::Failovers,
        PoolCounter::Upstream429,
        PoolCounter::PoolExhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolCounter::Requests => "requests",
            PoolCounter::Failovers => "failovers",
            PoolCounter::Upstream429 => "upstream_429",
            PoolCounter::PoolExhausted => "pool_exhausted",
        }
    }

    /// Its position in [`PoolCounter::ALL`] (and in a set of ids).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The one counter without a pool: requests refused for a missing, malformed, unknown or
/// revoked pool key (the 401 answer), before any pool is known.
pub const KEYS_REFUSED: &str = "codexmesh.filter.keys_refused";

/// A pool name as a stat-name segment (see the module rules).
pub fn pool_segment(name: &str) -> String {
    if name.is_empty() {
        return "_empty".to_string();
    }
    name.chars()
        .take(MAX_POOL_SEGMENT)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The full stat name of one pool counter, from a segment [`pool_segment`] made.
pub fn pool_metric_name(segment: &str, counter: PoolCounter) -> String {
    format!("{PREFIX}.pool.{segment}.{}", counter.as_str())
}

/// The ids of one pool's counters, by [`PoolCounter::index`].
pub type PoolIds<T> = [T; PoolCounter::ALL.len()];

/// Per VM: each pool name's counter ids, defined on first sight, at most [`MAX_POOL_SETS`].
#[derive(Debug)]
pub struct PoolSets<T> {
    sets: HashMap<String, PoolIds<T>>,
    other: Option<PoolIds<T>>,
}

impl<T> Default for PoolSets<T> {
    fn default() -> Self {
        Self {
            sets: HashMap::new(),
            other: None,
        }
    }
}

impl<T: Copy> PoolSets<T> {
    /// The ids for `pool`: cached, else defined by `define` (given the pool's segment) and
    /// cached; past the bound, the [`OTHER_POOL`] set's. None when `define` failed (tried again
    /// next time).
    pub fn ids(
        &mut self,
        pool: &str,
        define: impl FnOnce(&str) -> Option<PoolIds<T>>,
    ) -> Option<PoolIds<T>> {
        if let Some(ids) = self.sets.get(pool) {
            return Some(*ids);
        }
        if self.sets.len() >= MAX_POOL_SETS {
            if self.other.is_none() {
                self.other = define(OTHER_POOL);
            }
            return self.other;
        }
        let ids = define(&pool_segment(pool))?;
        self.sets.insert(pool.to_string(), ids);
        Some(ids)
    }

    /// Pools with their own set.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn pool_names_become_safe_segments() {
        assert_eq!(pool_segment("team-a_1"), "team-a_1");
        assert_eq!(pool_segment("a.b c/ü\"{}"), "a_b_c_____");
        assert_eq!(pool_segment(""), "_empty");
        assert_eq!(pool_segment(&"x".repeat(200)).len(), MAX_POOL_SEGMENT);
        assert_eq!(
            pool_metric_name("team", PoolCounter::Upstream429),
            "codexmesh.filter.pool.team.upstream_429"
        );
        for c in PoolCounter::ALL {
            assert_eq!(PoolCounter::ALL[c.index()], c);
        }
    }

    #[test]
    fn pools_are_defined_once_and_bounded() {
        let mut sets: PoolSets<u32> = PoolSets::default();
        let mut defined: Vec<String> = Vec::new();
        let mut next = 0u32;
        let mut define = |segment: &str, defined: &mut Vec<String>| {
            defined.push(segment.to_string());
            next += 4;
            Some([next, next + 1, next + 2, next + 3])
        };
        let a = sets.ids("team.a", |s| define(s, &mut defined));
        assert_eq!(sets.ids("team.a", |s| define(s, &mut defined)), a);
        assert_eq!(defined, ["team_a"], "defined once, under its safe segment");
        for i in 0..(MAX_POOL_SETS + 5) {
            let _ = sets.ids(&format!("p{i}"), |s| define(s, &mut defined));
        }
        assert_eq!(sets.len(), MAX_POOL_SETS);
        assert_eq!(
            defined.iter().filter(|d| *d == OTHER_POOL).count(),
            1,
            "the pools past the bound share one set"
        );
        let other = sets.ids("late", |s| define(s, &mut defined));
        assert_eq!(sets.ids("later", |s| define(s, &mut defined)), other);
        assert_ne!(other, a);
        // A failed definition is not cached.
        let mut fresh: PoolSets<u32> = PoolSets::default();
        assert_eq!(fresh.ids("x", |_| None), None);
        assert!(fresh.is_empty());
        assert_eq!(fresh.ids("x", |_| Some([1, 2, 3, 4])), Some([1, 2, 3, 4]));
    }
}
