//! Which account issued an `x-codex-turn-state`: a request replaying it must go back to that
//! account. Kept in a fixed number of shared-data slots (one small key each, chosen by hash), so
//! recording one is O(1) and memory is bounded. Two live turn states landing in one slot: the
//! older one is forgotten and its replay falls back to session affinity.

use crate::affinity::pair_hash;

/// Number of slots; each holds one entry of a few dozen bytes.
pub const SLOTS: u64 = 4096;
/// A turn lasts minutes; an hour is generous.
pub const TTL_MS: i64 = 3_600_000;
const KEY_PREFIX: &str = "codexmesh.ts.";

pub fn turn_state_hash(token: &str) -> u64 {
    pair_hash(token, "turn-state")
}

/// The shared-data key of the slot for this turn state.
pub fn slot_key(token: &str) -> String {
    format!("{KEY_PREFIX}{}", turn_state_hash(token) % SLOTS)
}

/// The slot's value recording that `account_id` issued `token`.
pub fn encode_entry(token: &str, account_id: &str, now_ms: i64) -> Vec<u8> {
    format!(
        "{} {} {}",
        turn_state_hash(token),
        now_ms.saturating_add(TTL_MS),
        account_id
    )
    .into_bytes()
}

/// The issuing account, if the slot holds a live entry for exactly this token.
pub fn lookup(slot: &[u8], token: &str, now_ms: i64) -> Option<String> {
    let text = std::str::from_utf8(slot).ok()?;
    let mut parts = text.splitn(3, ' ');
    let hash: u64 = parts.next()?.parse().ok()?;
    let expires: i64 = parts.next()?.parse().ok()?;
    let account = parts.next()?;
    (hash == turn_state_hash(token) && expires > now_ms && !account.is_empty())
        .then(|| account.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn records_looks_up_and_expires() {
        let entry = encode_entry("ts-1", "acct-a", 0);
        assert_eq!(lookup(&entry, "ts-1", 10).as_deref(), Some("acct-a"));
        assert_eq!(
            lookup(&entry, "ts-2", 10),
            None,
            "another token in the same slot"
        );
        assert_eq!(lookup(&entry, "ts-1", TTL_MS + 1), None, "expired");
        assert_eq!(lookup(b"junk", "ts-1", 0), None);
        assert_eq!(lookup(b"", "ts-1", 0), None);
    }

    #[test]
    fn slots_are_bounded_and_spread() {
        let mut used = std::collections::BTreeSet::new();
        for i in 0..20_000 {
            used.insert(slot_key(&format!("ts-{i}")));
        }
        assert!(used.len() as u64 <= SLOTS);
        assert!(
            used.len() as u64 > SLOTS * 9 / 10,
            "poor spread: {}",
            used.len()
        );
    }
}
