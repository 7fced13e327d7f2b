//! Which account issued an `x-codex-turn-state`: a request replaying it must go back to that
//! account. A bounded table in shared data; entries expire (a turn lasts minutes, not hours).

use crate::affinity::pair_hash;

const MAX_ENTRIES: usize = 4096;
pub const TTL_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnStateTable {
    /// (hash of the turn state, account id, expires at ms), oldest first.
    entries: Vec<(u64, String, i64)>,
}

pub fn turn_state_hash(token: &str) -> u64 {
    pair_hash(token, "turn-state")
}

impl TurnStateTable {
    pub fn lookup(&self, token: &str, now_ms: i64) -> Option<&str> {
        let h = turn_state_hash(token);
        self.entries
            .iter()
            .rev()
            .find(|(eh, _, exp)| *eh == h && *exp > now_ms)
            .map(|(_, id, _)| id.as_str())
    }

    pub fn record(&mut self, token: &str, account_id: &str, now_ms: i64) {
        let h = turn_state_hash(token);
        self.entries
            .retain(|(eh, _, exp)| *eh != h && *exp > now_ms);
        if self.entries.len() >= MAX_ENTRIES {
            let excess = self.entries.len() + 1 - MAX_ENTRIES;
            self.entries.drain(..excess);
        }
        self.entries
            .push((h, account_id.to_string(), now_ms.saturating_add(TTL_MS)));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::from("cmt1\n");
        for (h, id, exp) in &self.entries {
            out.push_str(&format!("{h} {id} {exp}\n"));
        }
        out.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Self {
        let mut table = Self::default();
        let Ok(text) = std::str::from_utf8(bytes) else {
            return table;
        };
        let mut lines = text.lines();
        if lines.next() != Some("cmt1") {
            return table;
        }
        for line in lines {
            let p: Vec<&str> = line.split(' ').collect();
            if let [h, id, exp] = p.as_slice() {
                if let (Ok(h), Ok(exp)) = (h.parse(), exp.parse()) {
                    table.entries.push((h, (*id).to_string(), exp));
                }
            }
        }
        table
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn records_looks_up_and_expires() {
        let mut t = TurnStateTable::default();
        t.record("ts-1", "a", 0);
        t.record("ts-2", "b", 0);
        t.record("ts-1", "c", 10);
        assert_eq!(t.lookup("ts-1", 20), Some("c"));
        assert_eq!(t.lookup("ts-2", 20), Some("b"));
        assert_eq!(t.lookup("ts-2", TTL_MS + 1), None);
        let back = TurnStateTable::decode(&t.encode());
        assert_eq!(back, t);
        assert!(TurnStateTable::decode(b"junk").is_empty());
    }

    #[test]
    fn bounded() {
        let mut t = TurnStateTable::default();
        for i in 0..(MAX_ENTRIES + 50) {
            t.record(&format!("ts-{i}"), "a", 0);
        }
        assert_eq!(t.len(), MAX_ENTRIES);
        assert_eq!(t.lookup("ts-0", 1), None);
        assert_eq!(t.lookup(&format!("ts-{}", MAX_ENTRIES + 49), 1), Some("a"));
    }
}
