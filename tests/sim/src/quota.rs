//! Per-account usage windows, the way the Codex backend reports them.
//!
//! Each account has a primary (5 h) and a secondary (weekly) window, each with a budget of
//! request units. Windows are fixed periods: when the clock passes `reset_at` the window empties
//! and `reset_at` moves forward by whole periods (so reset times are deterministic whatever the
//! moment they are observed).

use serde::Serialize;

/// Default primary window: 5 hours.
pub const PRIMARY_WINDOW_SECS: i64 = 300 * 60;
/// Default secondary window: 7 days.
pub const SECONDARY_WINDOW_SECS: i64 = 10_080 * 60;
/// Default budgets: large enough never to be hit by accident.
pub const DEFAULT_PRIMARY_LIMIT: u64 = 1_000_000;
/// Default secondary budget.
pub const DEFAULT_SECONDARY_LIMIT: u64 = 10_000_000;

/// One usage window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Units allowed per window (0 means always exhausted).
    pub limit: u64,
    /// Units used in the current window.
    pub used: u64,
    /// Window length in seconds (> 0).
    pub window_secs: i64,
    /// Unix seconds when the current window ends.
    pub reset_at: i64,
}

/// Which window is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// The short (5 h) window.
    Primary,
    /// The long (weekly) window.
    Secondary,
}

impl Window {
    /// A fresh window starting at `now`.
    pub fn new(limit: u64, window_secs: i64, now: i64) -> Self {
        let window_secs = window_secs.max(1);
        Self {
            limit,
            used: 0,
            window_secs,
            reset_at: now + window_secs,
        }
    }

    /// Empty the window if the clock has passed its end; returns whether it reset.
    pub fn roll(&mut self, now: i64) -> bool {
        if now < self.reset_at {
            return false;
        }
        let periods = (now - self.reset_at) / self.window_secs + 1;
        self.reset_at += periods * self.window_secs;
        self.used = 0;
        true
    }

    /// Whether no unit is left.
    pub fn exhausted(&self) -> bool {
        self.used >= self.limit
    }

    /// used / limit × 100, capped at 100 (100 when the limit is 0).
    pub fn used_percent(&self) -> f64 {
        if self.limit == 0 {
            return 100.0;
        }
        (self.used as f64 / self.limit as f64 * 100.0).min(100.0)
    }

    /// Window length in minutes, as the headers carry it.
    pub fn window_minutes(&self) -> i64 {
        self.window_secs / 60
    }

    /// Seconds until the reset (never negative).
    pub fn reset_after_secs(&self, now: i64) -> i64 {
        (self.reset_at - now).max(0)
    }

    /// A serializable view.
    pub fn view(&self, now: i64) -> WindowView {
        WindowView {
            limit: self.limit,
            used: self.used,
            used_percent: self.used_percent(),
            window_secs: self.window_secs,
            window_minutes: self.window_minutes(),
            reset_at: self.reset_at,
            reset_after_secs: self.reset_after_secs(now),
        }
    }
}

/// A window as the control API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowView {
    /// Units per window.
    pub limit: u64,
    /// Units used.
    pub used: u64,
    /// used / limit × 100.
    pub used_percent: f64,
    /// Window length in seconds.
    pub window_secs: i64,
    /// Window length in minutes.
    pub window_minutes: i64,
    /// Unix seconds of the next reset.
    pub reset_at: i64,
    /// Seconds until the reset.
    pub reset_after_secs: i64,
}

/// Why a turn was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// The window that is spent (the one resetting last when both are).
    pub kind: WindowKind,
    /// When that window resets.
    pub resets_at: i64,
}

/// Both windows of an account plus the cost of one turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    /// The 5 h window.
    pub primary: Window,
    /// The weekly window.
    pub secondary: Window,
    /// Units one successful turn uses.
    pub cost_per_turn: u64,
}

impl Quota {
    /// Fresh windows starting at `now`.
    pub fn new(
        primary_limit: u64,
        secondary_limit: u64,
        primary_window_secs: i64,
        secondary_window_secs: i64,
        now: i64,
    ) -> Self {
        Self {
            primary: Window::new(primary_limit, primary_window_secs, now),
            secondary: Window::new(secondary_limit, secondary_window_secs, now),
            cost_per_turn: 1,
        }
    }

    /// Reset whichever windows have ended.
    pub fn roll(&mut self, now: i64) {
        self.primary.roll(now);
        self.secondary.roll(now);
    }

    /// Whether a turn may run now; the error names the spent window.
    pub fn check(&mut self, now: i64) -> Result<(), Exhausted> {
        self.roll(now);
        let p = self.primary.exhausted().then_some(Exhausted {
            kind: WindowKind::Primary,
            resets_at: self.primary.reset_at,
        });
        let s = self.secondary.exhausted().then_some(Exhausted {
            kind: WindowKind::Secondary,
            resets_at: self.secondary.reset_at,
        });
        match (p, s) {
            (None, None) => Ok(()),
            (Some(e), None) | (None, Some(e)) => Err(e),
            (Some(p), Some(s)) => Err(if s.resets_at >= p.resets_at { s } else { p }),
        }
    }

    /// Check, then take one turn's cost from both windows.
    pub fn consume(&mut self, now: i64) -> Result<(), Exhausted> {
        self.check(now)?;
        self.primary.used = self.primary.used.saturating_add(self.cost_per_turn);
        self.secondary.used = self.secondary.used.saturating_add(self.cost_per_turn);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_math() {
        let mut w = Window::new(4, 100, 0);
        assert_eq!(w.used_percent(), 0.0);
        w.used = 1;
        assert_eq!(w.used_percent(), 25.0);
        w.used = 3;
        assert_eq!(w.used_percent(), 75.0);
        w.used = 9;
        assert_eq!(w.used_percent(), 100.0);
        assert_eq!(Window::new(0, 100, 0).used_percent(), 100.0);
        assert_eq!(Window::new(3, 100, 0).window_minutes(), 1);
    }

    #[test]
    fn windows_reset_on_fixed_periods() {
        let mut w = Window::new(2, 100, 1000);
        assert_eq!(w.reset_at, 1100);
        w.used = 2;
        assert!(!w.roll(1099));
        assert_eq!(w.used, 2);
        assert!(w.roll(1100));
        assert_eq!((w.used, w.reset_at), (0, 1200));
        w.used = 1;
        assert!(w.roll(1450));
        assert_eq!((w.used, w.reset_at), (0, 1500));
    }

    #[test]
    fn budget_then_429_then_reset() {
        let mut q = Quota::new(3, 100, 300, 10_000, 0);
        for _ in 0..3 {
            q.consume(10).unwrap();
        }
        assert_eq!(q.primary.used_percent(), 100.0);
        let e = q.consume(10).unwrap_err();
        assert_eq!(e.kind, WindowKind::Primary);
        assert_eq!(e.resets_at, 300);
        // Still spent just before the reset, fine at it.
        assert!(q.consume(299).is_err());
        q.consume(300).unwrap();
        assert_eq!(q.primary.used, 1);
        assert_eq!(q.secondary.used, 4);
    }

    #[test]
    fn secondary_exhaustion_reports_its_reset() {
        let mut q = Quota::new(100, 2, 300, 10_000, 0);
        q.cost_per_turn = 2;
        q.consume(0).unwrap();
        let e = q.consume(1).unwrap_err();
        assert_eq!(e.kind, WindowKind::Secondary);
        assert_eq!(e.resets_at, 10_000);
        // Primary resets, secondary still blocks.
        assert!(q.consume(400).is_err());
    }

    #[test]
    fn both_exhausted_reports_the_later_reset() {
        let mut q = Quota::new(1, 1, 300, 10_000, 0);
        q.consume(0).unwrap();
        let e = q.check(1).unwrap_err();
        assert_eq!((e.kind, e.resets_at), (WindowKind::Secondary, 10_000));
    }
}
