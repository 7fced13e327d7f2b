//! Keeps the Subscribe stream alive: reconnect with capped exponential backoff and jitter, and a
//! watchdog that gives up on a stream that went silent (a frozen control plane sends nothing, not
//! even a close). Pure state machine; the service adapter performs the actions it returns.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisorSettings {
    /// A stream with no message (snapshot or heartbeat) for this long is dead.
    pub watchdog_ms: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        Self {
            watchdog_ms: 15_000,
            backoff_base_ms: 250,
            backoff_max_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not connected; may (re)connect at `retry_at_ms`.
    Waiting {
        retry_at_ms: i64,
    },
    Open {
        token: u32,
        last_activity_ms: i64,
    },
}

/// What the adapter must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    /// Open a new stream; report the result with `opened` or `open_failed`.
    Open,
    /// Cancel this stream (it went silent); the supervisor already counts it as closed.
    Cancel(u32),
}

#[derive(Debug, Clone)]
pub struct Supervisor {
    settings: SupervisorSettings,
    state: State,
    /// Consecutive failures since the last stream that delivered a message.
    failures: u32,
    /// Cheap deterministic jitter source (wasm has no thread-local RNG we want to rely on).
    jitter_state: u64,
}

impl Supervisor {
    pub fn new(settings: SupervisorSettings, seed: u64) -> Self {
        Self {
            settings,
            state: State::Waiting { retry_at_ms: 0 },
            failures: 0,
            jitter_state: seed | 1,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    pub fn stream_token(&self) -> Option<u32> {
        match self.state {
            State::Open { token, .. } => Some(token),
            State::Waiting { .. } => None,
        }
    }

    /// Called on every timer tick.
    pub fn tick(&mut self, now_ms: i64) -> Action {
        match self.state {
            State::Waiting { retry_at_ms } if now_ms >= retry_at_ms => Action::Open,
            State::Waiting { .. } => Action::None,
            State::Open {
                token,
                last_activity_ms,
            } => {
                let silent_for = now_ms.saturating_sub(last_activity_ms);
                if silent_for >= i64::try_from(self.settings.watchdog_ms).unwrap_or(i64::MAX) {
                    self.schedule_retry(now_ms);
                    Action::Cancel(token)
                } else {
                    Action::None
                }
            }
        }
    }

    pub fn opened(&mut self, token: u32, now_ms: i64) {
        self.state = State::Open {
            token,
            last_activity_ms: now_ms,
        };
    }

    pub fn open_failed(&mut self, now_ms: i64) {
        self.schedule_retry(now_ms);
    }

    /// A message arrived on `token`. Returns false when it belongs to a stream we already gave up.
    pub fn message(&mut self, token: u32, now_ms: i64) -> bool {
        match &mut self.state {
            State::Open {
                token: open,
                last_activity_ms,
            } if *open == token => {
                *last_activity_ms = now_ms;
                self.failures = 0;
                true
            }
            _ => false,
        }
    }

    /// The stream closed (remote end, error or reset). Stale tokens are ignored.
    pub fn closed(&mut self, token: u32, now_ms: i64) {
        if self.stream_token() == Some(token) {
            self.schedule_retry(now_ms);
        }
    }

    fn schedule_retry(&mut self, now_ms: i64) {
        let delay = self.next_delay_ms();
        self.failures = self.failures.saturating_add(1);
        self.state = State::Waiting {
            retry_at_ms: now_ms.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)),
        };
    }

    /// base × 2^failures, capped, with "equal jitter": half fixed, half random, so replicas that
    /// lost the same control plane do not reconnect in lockstep.
    fn next_delay_ms(&mut self) -> u64 {
        let exp = self
            .settings
            .backoff_base_ms
            .saturating_mul(1u64 << self.failures.min(20))
            .min(self.settings.backoff_max_ms)
            .max(1);
        let half = exp / 2;
        half + self.next_random() % (exp - half + 1)
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64
        self.jitter_state = self.jitter_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.jitter_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn sup() -> Supervisor {
        Supervisor::new(
            SupervisorSettings {
                watchdog_ms: 1000,
                backoff_base_ms: 100,
                backoff_max_ms: 1600,
            },
            42,
        )
    }

    #[test]
    fn opens_at_once_then_stays_quiet_while_messages_flow() {
        let mut s = sup();
        assert_eq!(s.tick(0), Action::Open);
        s.opened(7, 0);
        assert!(s.message(7, 900));
        assert_eq!(s.tick(1800), Action::None);
        assert_eq!(s.stream_token(), Some(7));
    }

    #[test]
    fn watchdog_cancels_a_silent_stream_and_reconnects_later() {
        let mut s = sup();
        s.tick(0);
        s.opened(1, 0);
        assert_eq!(s.tick(999), Action::None);
        assert_eq!(s.tick(1000), Action::Cancel(1));
        assert!(!s.is_open());
        assert!(
            !s.message(1, 1001),
            "messages of a cancelled stream are ignored"
        );
        // First retry after 50..=100 ms.
        assert_eq!(s.tick(1049), Action::None);
        assert_eq!(s.tick(1100), Action::Open);
    }

    #[test]
    fn backoff_grows_is_capped_and_resets_after_a_good_stream() {
        let mut s = sup();
        let mut now = 0i64;
        let mut delays = Vec::new();
        for token in 0..8u32 {
            assert_eq!(s.tick(now), Action::Open);
            s.opened(token, now);
            s.closed(token, now);
            // Find when it is willing to open again (bounded scan).
            let start = now;
            while s.tick(now) != Action::Open {
                now += 10;
                assert!(now - start <= 1600, "delay above the cap");
            }
            delays.push(now - start);
        }
        assert!(delays[0] <= 100, "{delays:?}");
        assert!(delays[3] >= 400, "{delays:?}");
        assert!(delays.iter().all(|d| *d <= 1600), "{delays:?}");
        // A stream that delivers resets the ladder.
        s.opened(99, now);
        assert!(s.message(99, now));
        s.closed(99, now);
        let start = now;
        while s.tick(now) != Action::Open {
            now += 10;
        }
        assert!(now - start <= 100);
    }

    #[test]
    fn stale_close_is_ignored() {
        let mut s = sup();
        s.tick(0);
        s.opened(5, 0);
        s.closed(4, 10);
        assert_eq!(s.stream_token(), Some(5));
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let mut a = Supervisor::new(SupervisorSettings::default(), 1);
        let mut b = Supervisor::new(SupervisorSettings::default(), 2);
        a.failures = 5;
        b.failures = 5;
        let da: Vec<u64> = (0..4).map(|_| a.next_delay_ms()).collect();
        let db: Vec<u64> = (0..4).map(|_| b.next_delay_ms()).collect();
        assert_ne!(da, db);
    }
}
