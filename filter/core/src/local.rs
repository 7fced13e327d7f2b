//! What this Envoy learned about accounts between snapshots: cooldowns after a 429, open
//! circuits after repeated failures, and tokens that answered 401. The upstream filter writes it
//! after each attempt, so the very next request on any worker skips the account; the next
//! snapshot from the control plane confirms or clears it (a new token ends a 401 block).
//!
//! Stored in one shared-data value as short text lines; small (one line per troubled account).

use std::collections::BTreeMap;

/// Cheap fingerprint of an access token (FNV-1a 64): tells "the token that failed" from a
/// refreshed one without keeping the token itself anywhere else.
pub fn token_fingerprint(token: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in token.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash.max(1)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalAccount {
    /// No traffic before this (unix ms): a 429 cooldown.
    pub cooldown_until_ms: i64,
    /// Position on the backoff ladder for 429s that carried no reset time.
    pub ladder_step: u32,
    /// Consecutive upstream failures (5xx, resets); a success clears it.
    pub consecutive_failures: u32,
    /// Circuit open until (unix ms); 0 = closed.
    pub circuit_open_until_ms: i64,
    /// A half-open probe was handed out and is pending until (unix ms).
    pub probe_until_ms: i64,
    /// Fingerprint of the token that answered 401 (0 = none).
    pub auth_failed_token: u64,
    pub updated_ms: i64,
}

impl LocalAccount {
    /// Nothing here affects routing any more.
    fn is_idle(&self, now_ms: i64) -> bool {
        self.cooldown_until_ms <= now_ms
            && self.consecutive_failures == 0
            && self.circuit_open_until_ms == 0
            && self.auth_failed_token == 0
    }
}

/// Entries untouched this long and idle are dropped, so the table stays small.
const IDLE_EXPIRY_MS: i64 = 3_600_000;
/// Upper bound on entries: a misbehaving pool cannot grow shared data without limit.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalTable {
    entries: BTreeMap<String, LocalAccount>,
}

impl LocalTable {
    pub fn get(&self, account_id: &str) -> LocalAccount {
        self.entries.get(account_id).copied().unwrap_or_default()
    }

    pub fn set(&mut self, account_id: &str, state: LocalAccount) {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(account_id) {
            // Evict the stalest entry.
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, s)| s.updated_ms)
                .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(account_id.to_string(), state);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn prune(&mut self, now_ms: i64) {
        self.entries.retain(|_, s| {
            !(s.is_idle(now_ms) && now_ms.saturating_sub(s.updated_ms) > IDLE_EXPIRY_MS)
        });
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::from("cml1\n");
        for (id, s) in &self.entries {
            if id.contains(['\n', ' ']) {
                continue;
            }
            out.push_str(&format!(
                "{id} {} {} {} {} {} {} {}\n",
                s.cooldown_until_ms,
                s.ladder_step,
                s.consecutive_failures,
                s.circuit_open_until_ms,
                s.probe_until_ms,
                s.auth_failed_token,
                s.updated_ms
            ));
        }
        out.into_bytes()
    }

    /// Lenient: a bad line is skipped, an unknown format yields an empty table.
    pub fn decode(bytes: &[u8]) -> Self {
        let mut table = Self::default();
        let Ok(text) = std::str::from_utf8(bytes) else {
            return table;
        };
        let mut lines = text.lines();
        if lines.next() != Some("cml1") {
            return table;
        }
        for line in lines {
            if let Some((id, state)) = decode_line(line) {
                table.entries.insert(id.to_string(), state);
            }
        }
        table
    }
}

fn decode_line(line: &str) -> Option<(&str, LocalAccount)> {
    let p: Vec<&str> = line.split(' ').collect();
    let [id, cooldown, ladder, fails, open, probe, auth, updated] = p.as_slice() else {
        return None;
    };
    Some((
        id,
        LocalAccount {
            cooldown_until_ms: cooldown.parse().ok()?,
            ladder_step: ladder.parse().ok()?,
            consecutive_failures: fails.parse().ok()?,
            circuit_open_until_ms: open.parse().ok()?,
            probe_until_ms: probe.parse().ok()?,
            auth_failed_token: auth.parse().ok()?,
            updated_ms: updated.parse().ok()?,
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn round_trips_including_large_fingerprints() {
        let mut t = LocalTable::default();
        t.set(
            "a",
            LocalAccount {
                cooldown_until_ms: 5,
                ladder_step: 2,
                consecutive_failures: 3,
                circuit_open_until_ms: 9,
                probe_until_ms: 10,
                auth_failed_token: u64::MAX - 1,
                updated_ms: 11,
            },
        );
        t.set("b", LocalAccount::default());
        let back = LocalTable::decode(&t.encode());
        assert_eq!(back, t);
    }

    #[test]
    fn garbage_decodes_to_empty() {
        assert!(LocalTable::decode(b"nope").is_empty());
        assert!(LocalTable::decode(&[0xff]).is_empty());
        let partial = LocalTable::decode(b"cml1\na 1 2\nb 0 0 0 0 0 0 7\n");
        assert_eq!(partial.len(), 1);
        assert_eq!(partial.get("b").updated_ms, 7);
    }

    #[test]
    fn prune_drops_only_old_idle_entries() {
        let mut t = LocalTable::default();
        t.set("idle", LocalAccount::default());
        t.set(
            "cooling",
            LocalAccount {
                cooldown_until_ms: i64::MAX,
                ..Default::default()
            },
        );
        t.prune(IDLE_EXPIRY_MS + 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get("cooling").cooldown_until_ms, i64::MAX);
    }

    #[test]
    fn fingerprints_differ_and_are_never_zero() {
        assert_ne!(token_fingerprint("a"), token_fingerprint("b"));
        assert_ne!(token_fingerprint(""), 0);
    }
}
