//! What this Envoy learned about accounts between snapshots: cooldowns after a 429, open
//! circuits after repeated failures, tokens that answered 401, and the quota the latest answers
//! showed. The upstream filter writes it after an attempt that changes any of these, so the very
//! next request on any worker sees it; the next snapshot from the control plane confirms or
//! clears it (a new token ends a 401 block; newer quota evidence replaces ours).
//!
//! Stored in one shared-data value as short text lines: one per account that is in trouble or has
//! served traffic here (its seen quota); idle lines expire after an hour.

use std::collections::BTreeMap;

use crate::pb;

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
    /// Quota the latest answer from this account showed (its `x-codex-*` headers), so quota-aware
    /// routing reacts on the next request instead of after the control plane's round trip.
    pub seen_quota: SeenQuota,
}

/// One usage window as an answer reported it; used percent in tenths (keeps the state `Eq`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeenWindow {
    pub used_tenths: u32,
    pub window_minutes: u32,
    pub resets_at_unix: i64,
}

impl SeenWindow {
    fn from_pb(w: &pb::QuotaWindow) -> Self {
        let tenths = (w.used_percent.clamp(0.0, 100.0) * 10.0).round();
        Self {
            // Clamped to 0..=1000 above, so the cast cannot truncate.
            used_tenths: tenths as u32,
            window_minutes: w.window_minutes,
            resets_at_unix: w.resets_at_unix,
        }
    }

    fn to_pb(self) -> pb::QuotaWindow {
        pb::QuotaWindow {
            used_percent: f64::from(self.used_tenths) / 10.0,
            window_minutes: self.window_minutes,
            resets_at_unix: self.resets_at_unix,
        }
    }
}

/// Quota evidence from answers seen here; `observed_ms` 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeenQuota {
    pub observed_ms: i64,
    pub primary: Option<SeenWindow>,
    pub secondary: Option<SeenWindow>,
}

impl SeenQuota {
    pub fn from_pb(q: &pb::QuotaSummary) -> Self {
        Self {
            observed_ms: q.observed_at_unix_ms,
            primary: q.primary.as_ref().map(SeenWindow::from_pb),
            secondary: q.secondary.as_ref().map(SeenWindow::from_pb),
        }
    }
}

/// Smallest move in a window's used percent worth a shared-data write (tenths of a point).
const SEEN_QUOTA_STEP_TENTHS: u32 = 10;

/// The quota routing should believe for an account: the snapshot's, unless an answer seen here
/// is newer (per window: a window the answer did not carry keeps the snapshot's value).
pub fn effective_quota(account: &pb::Account, local: &LocalAccount) -> Option<pb::QuotaSummary> {
    let seen = &local.seen_quota;
    let pushed = account.quota.as_ref();
    let pushed_at = pushed.map_or(0, |q| q.observed_at_unix_ms);
    if seen.observed_ms == 0 || seen.observed_ms <= pushed_at {
        return pushed.copied();
    }
    Some(pb::QuotaSummary {
        primary: seen
            .primary
            .map(SeenWindow::to_pb)
            .or_else(|| pushed.and_then(|q| q.primary)),
        secondary: seen
            .secondary
            .map(SeenWindow::to_pb)
            .or_else(|| pushed.and_then(|q| q.secondary)),
        observed_at_unix_ms: seen.observed_ms,
    })
}

/// Whether an answer's quota headers tell routing something the current view does not: a
/// window moved by a point or more, or its reset time changed. Small moves are left to the
/// control plane's next snapshot, so a busy account does not cost a write per request.
pub fn quota_news(current: Option<&pb::QuotaSummary>, observed: &pb::QuotaSummary) -> bool {
    let differs = |now: Option<&pb::QuotaWindow>, new: Option<&pb::QuotaWindow>| match (now, new) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(a), Some(b)) => {
            let (a, b) = (SeenWindow::from_pb(a), SeenWindow::from_pb(b));
            a.used_tenths.abs_diff(b.used_tenths) >= SEEN_QUOTA_STEP_TENTHS
                || a.resets_at_unix != b.resets_at_unix
        }
    };
    let current_primary = current.and_then(|q| q.primary.as_ref());
    let current_secondary = current.and_then(|q| q.secondary.as_ref());
    differs(current_primary, observed.primary.as_ref())
        || differs(current_secondary, observed.secondary.as_ref())
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
        let mut out = String::from("cml2\n");
        for (id, s) in &self.entries {
            if id.contains(['\n', ' ']) {
                continue;
            }
            out.push_str(&format!(
                "{id} {} {} {} {} {} {} {} {} {} {}\n",
                s.cooldown_until_ms,
                s.ladder_step,
                s.consecutive_failures,
                s.circuit_open_until_ms,
                s.probe_until_ms,
                s.auth_failed_token,
                s.updated_ms,
                s.seen_quota.observed_ms,
                encode_window(s.seen_quota.primary),
                encode_window(s.seen_quota.secondary),
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
        // cml1 (no quota columns) is what a module from before this version wrote: still read,
        // so a hot module update keeps the cooldowns and circuits in force.
        let with_quota = match lines.next() {
            Some("cml2") => true,
            Some("cml1") => false,
            _ => return table,
        };
        for line in lines {
            if let Some((id, state)) = decode_line(line, with_quota) {
                table.entries.insert(id.to_string(), state);
            }
        }
        table
    }
}

/// `-` for no window, else `used_tenths/window_minutes/resets_at_unix`.
fn encode_window(w: Option<SeenWindow>) -> String {
    match w {
        None => "-".to_string(),
        Some(w) => format!(
            "{}/{}/{}",
            w.used_tenths, w.window_minutes, w.resets_at_unix
        ),
    }
}

/// Outer None: malformed; inner None: no window.
fn decode_window(text: &str) -> Option<Option<SeenWindow>> {
    if text == "-" {
        return Some(None);
    }
    let mut parts = text.split('/');
    let (Some(used), Some(minutes), Some(resets), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some(Some(SeenWindow {
        used_tenths: used.parse().ok()?,
        window_minutes: minutes.parse().ok()?,
        resets_at_unix: resets.parse().ok()?,
    }))
}

fn decode_line(line: &str, with_quota: bool) -> Option<(&str, LocalAccount)> {
    let p: Vec<&str> = line.split(' ').collect();
    let (base, quota) = match (p.as_slice(), with_quota) {
        ([base @ .., observed, primary, secondary], true) if base.len() == 8 => (
            base,
            SeenQuota {
                observed_ms: observed.parse().ok()?,
                primary: decode_window(primary)?,
                secondary: decode_window(secondary)?,
            },
        ),
        (base, false) if base.len() == 8 => (base, SeenQuota::default()),
        _ => return None,
    };
    let [id, cooldown, ladder, fails, open, probe, auth, updated] = base else {
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
            seen_quota: quota,
        },
    ))
}

#[cfg(test)]
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
                seen_quota: SeenQuota {
                    observed_ms: 12,
                    primary: Some(SeenWindow {
                        used_tenths: 1000,
                        window_minutes: 300,
                        resets_at_unix: i64::MAX,
                    }),
                    secondary: None,
                },
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
        let partial =
            LocalTable::decode(b"cml2\na 1 2\nb 0 0 0 0 0 0 7 0 - -\nc 0 0 0 0 0 0 7 1 x -\n");
        assert_eq!(partial.len(), 1);
        assert_eq!(partial.get("b").updated_ms, 7);
    }

    #[test]
    fn the_previous_format_still_decodes() {
        let old = LocalTable::decode(b"cml1\na 5 1 0 0 0 0 7\nb 0 0 0 0 0 0 7 0 - -\n");
        assert_eq!(old.len(), 1, "cml1 lines have eight fields");
        assert_eq!(old.get("a").cooldown_until_ms, 5);
        assert_eq!(old.get("a").seen_quota, SeenQuota::default());
    }

    fn window(used: f64, resets_at_unix: i64) -> pb::QuotaWindow {
        pb::QuotaWindow {
            used_percent: used,
            window_minutes: 300,
            resets_at_unix,
        }
    }

    fn summary(primary: Option<f64>, secondary: Option<f64>, at: i64) -> pb::QuotaSummary {
        pb::QuotaSummary {
            primary: primary.map(|u| window(u, 100)),
            secondary: secondary.map(|u| window(u, 200)),
            observed_at_unix_ms: at,
        }
    }

    #[test]
    fn the_newer_of_snapshot_and_local_evidence_wins_per_window() {
        let mut account = pb::Account {
            quota: Some(summary(Some(30.0), Some(10.0), 1_000)),
            ..Default::default()
        };
        let mut local = LocalAccount::default();
        // Nothing seen here: the snapshot's view.
        assert_eq!(effective_quota(&account, &local), account.quota);
        // Seen later, primary only: primary from the answer, secondary kept.
        local.seen_quota = SeenQuota::from_pb(&summary(Some(42.5), None, 2_000));
        let q = effective_quota(&account, &local).unwrap();
        assert_eq!(q.primary.unwrap().used_percent, 42.5);
        assert_eq!(q.secondary.unwrap().used_percent, 10.0);
        assert_eq!(q.observed_at_unix_ms, 2_000);
        // A newer snapshot replaces what was seen here.
        account.quota = Some(summary(Some(50.0), None, 3_000));
        assert_eq!(effective_quota(&account, &local), account.quota);
        // No quota in the snapshot at all: what was seen here, if anything.
        account.quota = None;
        let q = effective_quota(&account, &local).unwrap();
        assert_eq!(q.primary.unwrap().used_percent, 42.5);
        assert!(q.secondary.is_none());
    }

    #[test]
    fn only_a_point_of_movement_or_a_new_reset_is_news() {
        let current = summary(Some(30.0), Some(10.0), 1);
        assert!(!quota_news(Some(&current), &summary(Some(30.9), None, 2)));
        assert!(quota_news(Some(&current), &summary(Some(31.0), None, 2)));
        assert!(quota_news(Some(&current), &summary(Some(29.0), None, 2)));
        assert!(quota_news(Some(&current), &summary(None, Some(11.0), 2)));
        let mut moved = summary(Some(30.0), None, 2);
        moved.primary.as_mut().unwrap().resets_at_unix = 999;
        assert!(quota_news(Some(&current), &moved));
        assert!(quota_news(None, &summary(Some(0.0), None, 2)));
        assert!(!quota_news(None, &summary(None, None, 2)));
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
