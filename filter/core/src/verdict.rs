//! What one upstream attempt's answer means for its account, and how that changes the local
//! state. Pingora's rule: the error says where it came from, and the failover decision reads
//! that: a client's bad request never counts against an account, a 429 is quota (not health),
//! 5xx and broken connections are health, and an attempt cut short because the client went away
//! (a hang-up, Esc, a cancelled tool call, a load generator stopping) is nobody's failure: it
//! changes no account's state and is logged as `client_cancelled`.
//!
//! A 200 stream that fails inside (`stream_end`) is judged by its error's code with the same
//! rule: Codex's, Anthropic's and Google's codes that blame the request are the client's, those
//! that mean spent usage cool the account down as a 429 would (the Gemini error frame's reset
//! time when it gives one), and any other failure or a cut is health.

use crate::evidence::UsageLimit;
use crate::local::LocalAccount;
use crate::pb;
use crate::routing::Limits;
use crate::translate::responses::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// 4xx other than 401/429: the request itself is at fault.
    ClientError,
    /// 429: the account's usage is spent (or it is rate limited) until `until_ms`; `guessed`
    /// when no reset time was known and the backoff ladder chose it.
    UsageLimited {
        until_ms: i64,
        guessed: bool,
    },
    /// 401/403: the access token was refused.
    AuthRejected,
    /// 5xx from the upstream.
    UpstreamFailure,
    /// No answer at all: reset, refused or timed-out connection.
    TransportFailure,
    /// No answer because the client's stream ended first: never the account's doing.
    ClientCancelled,
    /// A 200 stream the upstream broke: `response.failed`, or cut before its final event while
    /// the client was still reading. Health, like a 5xx.
    StreamBroken,
}

/// Why an attempt ended without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// The client's stream ended before the answer came (the listener filter saw it go).
    ClientGone,
    /// The connection to the upstream failed or was reset.
    Transport,
}

impl NoAnswer {
    pub fn verdict(self) -> Verdict {
        match self {
            Self::ClientGone => Verdict::ClientCancelled,
            Self::Transport => Verdict::TransportFailure,
        }
    }
}

impl Verdict {
    /// Who caused it, for the outcome record: "client", "upstream" or "transport".
    pub fn source(self) -> &'static str {
        match self {
            Self::Success => "",
            Self::ClientError | Self::ClientCancelled => "client",
            Self::UsageLimited { .. }
            | Self::AuthRejected
            | Self::UpstreamFailure
            | Self::StreamBroken => "upstream",
            Self::TransportFailure => "transport",
        }
    }

    pub fn is_success(self) -> bool {
        self == Self::Success
    }

    /// The request log's error code when the answer itself carried none.
    pub fn error_code(self) -> Option<&'static str> {
        match self {
            Self::ClientCancelled => Some("client_cancelled"),
            Self::StreamBroken => Some("stream_broken"),
            _ => None,
        }
    }
}

/// `response.failed` codes that blame the request, not the account.
const CLIENT_FAULT_CODES: &[&str] = &[
    "context_length_exceeded",
    "invalid_prompt",
    "invalid_request_error",
    "invalid_image",
    "cyber_policy_violation",
    "content_policy_violation",
];

/// `response.failed` codes (and Anthropic's `error.type`, Google's `status` in a stream) that
/// mean the account's usage is spent or rate limited.
const USAGE_CODES: &[&str] = &[
    "rate_limit_exceeded",
    "usage_limit_reached",
    "insufficient_quota",
    "rate_limit_error",
    "RESOURCE_EXHAUSTED",
];

/// What the end of a 200 stream means beyond its status, when it did not complete: `None` for
/// a completed (or deliberately incomplete: length, content filter) stream, and for one still
/// open. The caller decides a cut stream's blame first: a stream the client abandoned is
/// `ClientCancelled`, never this. `body` is what the failing event said of the reset, if anything.
pub fn stream_verdict(
    end: &Outcome,
    body: Option<&UsageLimit>,
    state: &LocalAccount,
    limits: &Limits,
    now_ms: i64,
) -> Option<Verdict> {
    match end {
        Outcome::Pending | Outcome::Completed | Outcome::Incomplete { .. } => None,
        Outcome::Cut => Some(Verdict::StreamBroken),
        Outcome::Failed { code, .. } => {
            let code = code.as_deref().unwrap_or_default();
            Some(if CLIENT_FAULT_CODES.contains(&code) {
                Verdict::ClientError
            } else if USAGE_CODES.contains(&code) {
                classify(429, None, body, None, state, limits, now_ms)
            } else {
                Verdict::StreamBroken
            })
        }
    }
}

/// Seconds form of `Retry-After` (the HTTP-date form is not used by this upstream).
pub fn parse_retry_after(value: Option<&str>, now_ms: i64) -> Option<i64> {
    let secs: i64 = value?.trim().parse().ok()?;
    (secs >= 0).then(|| now_ms.saturating_add(secs.saturating_mul(1000)))
}

/// Classifies an answer. `status` 0 means no answer reached the filter.
/// For a 429, the cooldown end comes from (in order) the body's `resets_at`, an exhausted window
/// in the quota headers, `Retry-After`, or else the backoff ladder of `state`.
pub fn classify(
    status: u32,
    quota: Option<&pb::QuotaSummary>,
    body: Option<&UsageLimit>,
    retry_after_ms: Option<i64>,
    state: &LocalAccount,
    limits: &Limits,
    now_ms: i64,
) -> Verdict {
    match status {
        0 => Verdict::TransportFailure,
        // 101: a WebSocket upgrade the account accepted.
        101 | 200..=399 => Verdict::Success,
        401 | 403 => Verdict::AuthRejected,
        429 => {
            let from_body = body
                .and_then(|b| b.resets_at_unix)
                .map(|s| s.saturating_mul(1000));
            let from_headers = quota.and_then(|q| {
                [q.primary.as_ref(), q.secondary.as_ref()]
                    .into_iter()
                    .flatten()
                    .filter(|w| w.used_percent >= 100.0 && w.resets_at_unix > 0)
                    .map(|w| w.resets_at_unix.saturating_mul(1000))
                    .max()
            });
            let known = [from_body, from_headers, retry_after_ms]
                .into_iter()
                .flatten()
                .find(|t| *t > now_ms);
            match known {
                Some(until_ms) => Verdict::UsageLimited {
                    until_ms,
                    guessed: false,
                },
                None => Verdict::UsageLimited {
                    until_ms: now_ms.saturating_add(ladder_delay_ms(state.ladder_step, limits)),
                    guessed: true,
                },
            }
        }
        400..=499 => Verdict::ClientError,
        _ => Verdict::UpstreamFailure,
    }
}

/// 1 s, 2 s, 4 s … capped at `cooldown_max_ms`.
pub fn ladder_delay_ms(step: u32, limits: &Limits) -> i64 {
    let delay = 1000u64.saturating_mul(1u64 << step.min(30));
    i64::try_from(delay.min(u64::from(limits.cooldown_max_ms))).unwrap_or(i64::MAX)
}

/// Whether a success would change this state (so whether it must be written back at all).
pub fn success_changes(state: &LocalAccount, token_fp: u64) -> bool {
    state.consecutive_failures != 0
        || state.circuit_open_until_ms != 0
        || state.probe_until_ms != 0
        || state.ladder_step != 0
        || (state.auth_failed_token != 0 && state.auth_failed_token == token_fp)
}

/// Folds a verdict into the account's local state. `token_fp` identifies the token that was used.
pub fn apply(
    state: &mut LocalAccount,
    verdict: Verdict,
    token_fp: u64,
    limits: &Limits,
    now_ms: i64,
) {
    state.updated_ms = now_ms;
    match verdict {
        Verdict::Success => {
            state.consecutive_failures = 0;
            state.circuit_open_until_ms = 0;
            state.probe_until_ms = 0;
            state.ladder_step = 0;
            if state.auth_failed_token == token_fp {
                state.auth_failed_token = 0;
            }
        }
        Verdict::ClientError | Verdict::ClientCancelled => {}
        Verdict::UsageLimited { until_ms, guessed } => {
            state.cooldown_until_ms = state.cooldown_until_ms.max(until_ms);
            if guessed {
                state.ladder_step = state.ladder_step.saturating_add(1);
            }
        }
        Verdict::AuthRejected => state.auth_failed_token = token_fp,
        Verdict::UpstreamFailure | Verdict::TransportFailure | Verdict::StreamBroken => {
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            let half_open_probe_failed = state.probe_until_ms > 0;
            if half_open_probe_failed || state.consecutive_failures >= limits.circuit_failures {
                state.circuit_open_until_ms =
                    now_ms.saturating_add(i64::from(limits.circuit_open_ms));
                state.probe_until_ms = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn limits() -> Limits {
        Limits::from_settings(None)
    }

    fn window(used: f64, resets: i64) -> pb::QuotaWindow {
        pb::QuotaWindow {
            used_percent: used,
            window_minutes: 300,
            resets_at_unix: resets,
        }
    }

    #[test]
    fn statuses_map_to_sources() {
        let s = LocalAccount::default();
        let l = limits();
        let c = |status| classify(status, None, None, None, &s, &l, 0);
        assert_eq!(c(200), Verdict::Success);
        assert_eq!(c(400).source(), "client");
        assert_eq!(c(413).source(), "client");
        assert_eq!(c(401), Verdict::AuthRejected);
        assert_eq!(c(503), Verdict::UpstreamFailure);
        assert_eq!(c(0).source(), "transport");
    }

    #[test]
    fn a_429_cools_down_until_the_best_known_reset() {
        let s = LocalAccount::default();
        let l = limits();
        let now = 1_000_000;
        let body = UsageLimit {
            resets_at_unix: Some(2_000),
            ..Default::default()
        };
        let v = classify(429, None, Some(&body), Some(now + 5), &s, &l, now);
        assert_eq!(
            v,
            Verdict::UsageLimited {
                until_ms: 2_000_000,
                guessed: false
            }
        );
        let q = pb::QuotaSummary {
            primary: Some(window(100.0, 3_000)),
            secondary: Some(window(40.0, 9_000)),
            observed_at_unix_ms: now,
        };
        let v = classify(429, Some(&q), None, None, &s, &l, now);
        assert_eq!(
            v,
            Verdict::UsageLimited {
                until_ms: 3_000_000,
                guessed: false
            }
        );
        let v = classify(429, None, None, Some(now + 7_000), &s, &l, now);
        assert_eq!(
            v,
            Verdict::UsageLimited {
                until_ms: now + 7_000,
                guessed: false
            }
        );
        // A reset time in the past is no use: fall back to the ladder.
        let stale = UsageLimit {
            resets_at_unix: Some(1),
            ..Default::default()
        };
        let v = classify(429, None, Some(&stale), None, &s, &l, now);
        assert_eq!(
            v,
            Verdict::UsageLimited {
                until_ms: now + 1000,
                guessed: true
            }
        );
    }

    #[test]
    fn ladder_doubles_and_caps_at_thirty_minutes() {
        let l = limits();
        let mut s = LocalAccount::default();
        let mut delays = Vec::new();
        for i in 0..14 {
            let now = i * 10_000_000;
            let v = classify(429, None, None, None, &s, &l, now);
            let Verdict::UsageLimited { until_ms, .. } = v else {
                unreachable!()
            };
            delays.push(until_ms - now);
            apply(&mut s, v, 1, &l, now);
        }
        assert_eq!(&delays[..4], &[1000, 2000, 4000, 8000]);
        assert_eq!(*delays.last().unwrap(), 1_800_000);
    }

    #[test]
    fn a_client_hanging_up_is_nobodys_failure() {
        let l = limits();
        let mut s = LocalAccount {
            consecutive_failures: 2,
            ..Default::default()
        };
        for i in 0..100 {
            apply(&mut s, NoAnswer::ClientGone.verdict(), 1, &l, i);
        }
        assert_eq!(s.consecutive_failures, 2, "neither a failure nor a success");
        assert_eq!(s.circuit_open_until_ms, 0);
        assert_eq!(s.cooldown_until_ms, 0);
        let v = NoAnswer::ClientGone.verdict();
        assert_eq!(
            (v.source(), v.error_code()),
            ("client", Some("client_cancelled"))
        );
        let t = NoAnswer::Transport.verdict();
        assert_eq!((t.source(), t.error_code()), ("transport", None));
        apply(&mut s, t, 1, &l, 200);
        assert_eq!(
            s.circuit_open_until_ms, 60_200,
            "a real transport failure still counts"
        );
    }

    #[test]
    fn circuit_opens_after_consecutive_failures_and_a_failed_probe_reopens_it() {
        let l = limits();
        let mut s = LocalAccount::default();
        apply(&mut s, Verdict::UpstreamFailure, 1, &l, 0);
        apply(&mut s, Verdict::TransportFailure, 1, &l, 0);
        assert_eq!(s.circuit_open_until_ms, 0);
        apply(&mut s, Verdict::UpstreamFailure, 1, &l, 10);
        assert_eq!(s.circuit_open_until_ms, 60_010);
        // Half-open probe handed out, and it fails: open again.
        s.probe_until_ms = 70_000;
        apply(&mut s, Verdict::UpstreamFailure, 1, &l, 61_000);
        assert_eq!((s.circuit_open_until_ms, s.probe_until_ms), (121_000, 0));
        // A success closes it.
        apply(&mut s, Verdict::Success, 1, &l, 122_000);
        assert_eq!((s.circuit_open_until_ms, s.consecutive_failures), (0, 0));
    }

    #[test]
    fn client_errors_and_quota_do_not_touch_the_circuit() {
        let l = limits();
        let mut s = LocalAccount::default();
        for _ in 0..5 {
            apply(&mut s, Verdict::ClientError, 1, &l, 0);
            apply(
                &mut s,
                Verdict::UsageLimited {
                    until_ms: 5,
                    guessed: true,
                },
                1,
                &l,
                0,
            );
        }
        assert_eq!((s.consecutive_failures, s.circuit_open_until_ms), (0, 0));
    }

    #[test]
    fn auth_block_is_per_token() {
        let l = limits();
        let mut s = LocalAccount::default();
        apply(&mut s, Verdict::AuthRejected, 42, &l, 0);
        assert_eq!(s.auth_failed_token, 42);
        // A success with another token (refreshed) does not clear a block it is not about...
        apply(&mut s, Verdict::Success, 43, &l, 1);
        assert_eq!(s.auth_failed_token, 42);
        // ...but success with the same token does.
        apply(&mut s, Verdict::Success, 42, &l, 2);
        assert_eq!(s.auth_failed_token, 0);
    }

    #[test]
    fn success_on_a_clean_account_changes_nothing() {
        let l = limits();
        let clean = LocalAccount {
            cooldown_until_ms: 5,
            updated_ms: 3,
            ..Default::default()
        };
        assert!(!success_changes(&clean, 1));
        let mut after = clean;
        apply(&mut after, Verdict::Success, 1, &l, 10);
        after.updated_ms = clean.updated_ms;
        assert_eq!(
            after, clean,
            "success_changes said no change, apply changed something"
        );
        for dirty in [
            LocalAccount {
                consecutive_failures: 1,
                ..clean
            },
            LocalAccount {
                circuit_open_until_ms: 9,
                ..clean
            },
            LocalAccount {
                probe_until_ms: 9,
                ..clean
            },
            LocalAccount {
                ladder_step: 2,
                ..clean
            },
            LocalAccount {
                auth_failed_token: 1,
                ..clean
            },
        ] {
            assert!(success_changes(&dirty, 1), "{dirty:?}");
        }
        // A 401 block on another token is not cleared by this token's success.
        assert!(!success_changes(
            &LocalAccount {
                auth_failed_token: 7,
                ..clean
            },
            1
        ));
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(parse_retry_after(Some(" 3 "), 1000), Some(4000));
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT"), 0),
            None
        );
        assert_eq!(parse_retry_after(Some("-1"), 0), None);
        assert_eq!(parse_retry_after(None, 0), None);
    }

    #[test]
    fn a_broken_stream_is_the_account_s_failure_and_a_bad_prompt_is_not() {
        let state = LocalAccount::default();
        let limits = Limits::from_settings(None);
        let v = |end: Outcome| stream_verdict(&end, None, &state, &limits, 1_000);
        assert_eq!(v(Outcome::Completed), None);
        assert_eq!(v(Outcome::Pending), None);
        assert_eq!(v(Outcome::Incomplete { reason: None }), None);
        assert_eq!(v(Outcome::Cut), Some(Verdict::StreamBroken));
        let failed = |code: &str| Outcome::Failed {
            code: Some(code.into()),
            message: None,
        };
        assert_eq!(v(failed("server_error")), Some(Verdict::StreamBroken));
        assert_eq!(
            v(failed("context_length_exceeded")),
            Some(Verdict::ClientError)
        );
        assert!(matches!(
            v(failed("usage_limit_reached")),
            Some(Verdict::UsageLimited { guessed: true, .. })
        ));
        assert_eq!(Verdict::StreamBroken.source(), "upstream");
        // Anthropic's error event types and Google's statuses, mid-stream.
        assert_eq!(v(failed("overloaded_error")), Some(Verdict::StreamBroken));
        assert_eq!(v(failed("api_error")), Some(Verdict::StreamBroken));
        assert_eq!(v(failed("UNAVAILABLE")), Some(Verdict::StreamBroken));
        assert_eq!(v(failed("INTERNAL")), Some(Verdict::StreamBroken));
        assert_eq!(
            v(failed("invalid_request_error")),
            Some(Verdict::ClientError)
        );
        assert!(matches!(
            v(failed("rate_limit_error")),
            Some(Verdict::UsageLimited { guessed: true, .. })
        ));
        // A Google error frame's reset time is the cooldown's end, as for a 429's body.
        let reset = UsageLimit {
            resets_at_unix: Some(60),
            ..Default::default()
        };
        assert_eq!(
            stream_verdict(
                &failed("RESOURCE_EXHAUSTED"),
                Some(&reset),
                &state,
                &limits,
                1_000
            ),
            Some(Verdict::UsageLimited {
                until_ms: 60_000,
                guessed: false
            })
        );
        let mut s = LocalAccount::default();
        for _ in 0..limits.circuit_failures {
            apply(&mut s, Verdict::StreamBroken, 1, &limits, 1_000);
        }
        assert!(
            s.circuit_open_until_ms > 1_000,
            "broken streams open the circuit"
        );
    }
}
