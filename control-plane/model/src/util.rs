//! Small helpers shared by several modules: clock, random identifiers, bearer tokens, dates and
//! durations for people, atomic file writes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use subtle::ConstantTimeEq;
use time::format_description::well_known::Rfc3339;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

const ALNUM: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The OS random source failed (should never happen on a healthy host).
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomError(String);

/// Current time as unix milliseconds (the store's time unit).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Fills `buf` from the OS CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(|e| RandomError(e.to_string()))
}

/// `n` characters uniformly from `[A-Za-z0-9]`, from the OS CSPRNG.
pub fn random_alnum(n: usize) -> Result<String, RandomError> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        random_bytes(&mut buf)?;
        for &b in &buf {
            // Rejection sampling: 248 = 4 * 62, so `b % 62` stays uniform.
            if b < 248 && out.len() < n {
                out.push(char::from(ALNUM[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

/// A new identifier such as `acc_3kTqk2nV9xYb1LpQ`: readable prefix, 16 random alphanumerics.
pub fn new_id(prefix: &str) -> Result<String, RandomError> {
    Ok(format!("{prefix}_{}", random_alnum(16)?))
}

/// SHA-256 of a shared token, the form it is kept in memory for [`bearer_matches`].
pub fn token_digest(token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).into()
}

/// Whether an `authorization` value is `Bearer <token>` for the token behind `digest`, compared
/// as digests in constant time so neither its content nor its length leaks through timing.
pub fn bearer_matches(authorization: Option<&str>, digest: &[u8; 32]) -> bool {
    let presented = authorization
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .unwrap_or("");
    !presented.is_empty() && bool::from(token_digest(presented).ct_eq(digest))
}

/// "in 3days 4h", "in 12m 5s", "expired 2h ago": coarse, for people.
pub fn human_until(target_ms: i64, now_ms: i64) -> String {
    let delta = target_ms.saturating_sub(now_ms);
    let span = human_span(delta.unsigned_abs() / 1000);
    if delta >= 0 {
        format!("in {span}")
    } else {
        format!("expired {span} ago")
    }
}

/// "5s", "4m 10s", "1h 2m" for a duration in milliseconds (negative counts as 0).
pub fn human_span_ms(ms: &i64) -> String {
    human_span(u64::try_from((*ms).max(0)).unwrap_or(0) / 1000)
}

/// `humantime`'s rendering cut to its two largest units ("1day 3h", not "1day 3h 12m 7s");
/// spans of a day or more drop their minutes first, so a day and a second reads "1day".
fn human_span(secs: u64) -> String {
    let secs = if secs >= 86_400 {
        secs - secs % 3600
    } else {
        secs
    };
    let full = humantime::format_duration(Duration::from_secs(secs)).to_string();
    full.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// See [`fmt_utc_ms`].
const TABLE_UTC: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]Z");
/// See [`fmt_rfc3339_ms`].
const RFC3339_MS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

fn utc_from_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// Formats unix milliseconds; outside the years 1-9999 (which `time` rejects) the raw number.
fn fmt_ms(ms: i64, format: &[BorrowedFormatItem<'_>]) -> String {
    utc_from_ms(ms)
        .and_then(|t| t.format(format).ok())
        .unwrap_or_else(|| format!("{ms} ms since 1970"))
}

/// `2026-01-02 03:04Z` (UTC, minute precision) for tables.
pub fn fmt_utc_ms(ms: i64) -> String {
    fmt_ms(ms, TABLE_UTC)
}

/// `2026-01-02T03:04:05.678Z` (RFC 3339, UTC, milliseconds), as Codex writes `last_refresh`.
pub fn fmt_rfc3339_ms(ms: i64) -> String {
    fmt_ms(ms, RFC3339_MS)
}

/// Parses RFC 3339 (`2027-01-15T08:15:00.000000Z`, `...+02:00`) into unix milliseconds
/// (sub-millisecond digits are dropped).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s.trim(), &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// Hides a password in a store URL for messages.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.split_once('@') {
            if let Some((user, _)) = creds.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alnum_has_requested_length_and_charset() -> Result<(), RandomError> {
        let s = random_alnum(40)?;
        assert_eq!(s.len(), 40);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(s, random_alnum(40)?);
        Ok(())
    }

    #[test]
    fn bearer_tokens() {
        let d = token_digest("s3cret");
        assert!(bearer_matches(Some("Bearer s3cret"), &d));
        assert!(bearer_matches(Some("bearer  s3cret "), &d));
        assert!(!bearer_matches(Some("Bearer s3cre"), &d));
        assert!(!bearer_matches(Some("Basic s3cret"), &d));
        assert!(!bearer_matches(Some("s3cret"), &d));
        assert!(!bearer_matches(Some("Bearer "), &token_digest("")));
        assert!(!bearer_matches(None, &d));
    }

    #[test]
    fn utc_format() {
        assert_eq!(fmt_utc_ms(0), "1970-01-01 00:00Z");
        assert_eq!(fmt_utc_ms(951_782_400_000), "2000-02-29 00:00Z");
        assert_eq!(
            fmt_utc_ms(1_767_225_600_000 + 3_723_000),
            "2026-01-01 01:02Z"
        );
    }

    #[test]
    fn rfc3339() {
        assert_eq!(fmt_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            fmt_rfc3339_ms(1_767_225_600_000 + 3_723_456),
            "2026-01-01T01:02:03.456Z"
        );
        assert_eq!(fmt_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        for ms in [
            -1,
            0,
            951_782_400_000,
            1_767_225_600_000 + 3_723_456,
            4_102_444_800_123,
        ] {
            assert_eq!(parse_rfc3339_ms(&fmt_rfc3339_ms(ms)), Some(ms));
        }
        assert_eq!(
            parse_rfc3339_ms("2027-01-15T08:15:00.000000Z"),
            parse_rfc3339_ms("2027-01-15T10:15:00+02:00")
        );
        assert_eq!(
            parse_rfc3339_ms("2027-01-15T08:15:00Z"),
            Some(1_800_000_900_000)
        );
        for bad in [
            "",
            "2027-01-15",
            "2027-13-15T08:15:00Z",
            "2027-01-15T08:15:00",
            "x027-01-15T08:15:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
        // Codex's own `last_refresh` carries microseconds; they are dropped, not rounded.
        assert_eq!(
            parse_rfc3339_ms(" 2027-01-15T08:15:00.123999Z "),
            Some(1_800_000_900_123)
        );
        // Years `time` cannot represent are printed as the raw number, never a panic.
        assert_eq!(fmt_utc_ms(i64::MAX), format!("{} ms since 1970", i64::MAX));
    }

    #[test]
    fn human() {
        assert_eq!(human_until(90_000_000 + 1000, 1000), "in 1day 1h");
        assert_eq!(human_until(0, 7_200_000), "expired 2h ago");
        assert_eq!(human_until(65_000, 0), "in 1m 5s");
        assert_eq!(human_until(5_000, 0), "in 5s");
        assert_eq!(human_until(86_401_000, 0), "in 1day");
        assert_eq!(human_until(40 * 86_400_000 + 61_000, 0), "in 1month 9days");
        assert_eq!(human_span_ms(&3_725_000), "1h 2m");
        assert_eq!(human_span_ms(&-5), "0s");
    }
}
