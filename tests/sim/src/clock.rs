//! The simulator's controllable clock.
//!
//! Every time the simulator reasons about (token expiry, quota windows, resets, request
//! timestamps) comes from here. Simulated time runs as `anchor_sim + (real elapsed since the
//! anchor) × scale`; each change re-anchors at "now", so time never jumps except when told to.

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A clock that starts at real time and can be set, advanced and sped up or slowed down.
#[derive(Debug)]
pub struct SimClock {
    inner: Mutex<ClockState>,
}

/// The pure part of the clock: what "now" is at a given real instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockState {
    /// Simulated unix time (seconds, fractional) at `anchor_real`.
    pub anchor_sim: f64,
    /// The real instant the anchor was taken.
    pub anchor_real: Instant,
    /// How many simulated seconds pass per real second.
    pub scale: f64,
}

impl ClockState {
    /// Simulated unix seconds at the real instant `real`.
    pub fn at(&self, real: Instant) -> f64 {
        let elapsed = real
            .saturating_duration_since(self.anchor_real)
            .as_secs_f64();
        self.anchor_sim + elapsed * self.scale
    }

    /// Re-anchor at `real`, keeping the simulated time continuous.
    pub fn rebase(&mut self, real: Instant) {
        self.anchor_sim = self.at(real);
        self.anchor_real = real;
    }
}

/// A clock change, as the control API accepts it. Fields apply in order: set, advance, scale.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockChange {
    /// Jump to this unix time (seconds).
    pub set_unix: Option<f64>,
    /// Move forward (or back, if negative) by this many seconds.
    pub advance_secs: Option<f64>,
    /// Simulated seconds per real second from now on (0 freezes the clock).
    pub scale: Option<f64>,
}

/// What `GET /__sim/clock` answers.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ClockView {
    /// Simulated unix seconds (whole).
    pub now_unix: i64,
    /// Simulated unix milliseconds.
    pub now_unix_ms: i64,
    /// Simulated unix seconds, fractional.
    pub now: f64,
    /// Simulated seconds per real second.
    pub scale: f64,
    /// Simulated minus real time, in seconds.
    pub offset_secs: f64,
}

/// Real wall-clock unix seconds, fractional.
pub fn real_unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SimClock {
    /// A clock equal to real time.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(ClockState {
                anchor_sim: real_unix_now(),
                anchor_real: Instant::now(),
                scale: 1.0,
            }),
        }
    }

    fn state(&self) -> ClockState {
        match self.inner.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Simulated unix seconds, fractional.
    pub fn now_f64(&self) -> f64 {
        self.state().at(Instant::now())
    }

    /// Simulated unix seconds, rounded down.
    pub fn now(&self) -> i64 {
        self.now_f64().floor() as i64
    }

    /// Simulated unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        (self.now_f64() * 1000.0).floor() as i64
    }

    /// Apply a change and return the resulting view. A negative or non-finite scale is refused.
    pub fn apply(&self, change: ClockChange) -> Result<ClockView, String> {
        if let Some(scale) = change.scale {
            if !scale.is_finite() || scale < 0.0 {
                return Err("scale must be a finite number >= 0".to_string());
            }
        }
        for v in [change.set_unix, change.advance_secs].into_iter().flatten() {
            if !v.is_finite() {
                return Err("clock values must be finite".to_string());
            }
        }
        let mut guard = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let real = Instant::now();
        guard.rebase(real);
        if let Some(t) = change.set_unix {
            guard.anchor_sim = t;
        }
        if let Some(d) = change.advance_secs {
            guard.anchor_sim += d;
        }
        if let Some(scale) = change.scale {
            guard.scale = scale;
        }
        let state = *guard;
        drop(guard);
        Ok(view_of(state, real))
    }

    /// The current view.
    pub fn view(&self) -> ClockView {
        view_of(self.state(), Instant::now())
    }
}

fn view_of(state: ClockState, real: Instant) -> ClockView {
    let now = state.at(real);
    ClockView {
        now_unix: now.floor() as i64,
        now_unix_ms: (now * 1000.0).floor() as i64,
        now,
        scale: state.scale,
        offset_secs: now - real_unix_now(),
    }
}

/// Format unix seconds as RFC 3339 UTC with microseconds, e.g. `2026-05-01T12:00:00.000000Z`
/// (the shape Codex writes in `auth.json` `last_refresh`).
pub fn rfc3339(unix: f64) -> String {
    let secs = unix.floor() as i64;
    let micros = ((unix - secs as f64) * 1_000_000.0)
        .floor()
        .clamp(0.0, 999_999.0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn state_scales_elapsed_time() {
        let t0 = Instant::now();
        let state = ClockState {
            anchor_sim: 1000.0,
            anchor_real: t0,
            scale: 60.0,
        };
        assert_eq!(state.at(t0), 1000.0);
        assert_eq!(state.at(t0 + Duration::from_secs(2)), 1120.0);
    }

    #[test]
    fn rebase_keeps_time_continuous() {
        let t0 = Instant::now();
        let mut state = ClockState {
            anchor_sim: 0.0,
            anchor_real: t0,
            scale: 10.0,
        };
        let t1 = t0 + Duration::from_secs(3);
        state.rebase(t1);
        assert_eq!(state.anchor_sim, 30.0);
        state.scale = 1.0;
        assert_eq!(state.at(t1 + Duration::from_secs(1)), 31.0);
    }

    #[test]
    fn set_advance_and_freeze() {
        let clock = SimClock::new();
        let v = clock
            .apply(ClockChange {
                set_unix: Some(1_000_000.0),
                advance_secs: Some(60.0),
                scale: Some(0.0),
            })
            .unwrap();
        assert_eq!(v.now_unix, 1_000_060);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), 1_000_060);
        assert!(clock
            .apply(ClockChange {
                scale: Some(-1.0),
                ..Default::default()
            })
            .is_err());
    }

    #[test]
    fn default_is_real_time() {
        let clock = SimClock::new();
        assert!((clock.now_f64() - real_unix_now()).abs() < 1.0);
    }

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(1_700_000_000.5), "2023-11-14T22:13:20.500000Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00.000000Z");
    }
}
