//! Small helpers shared by several modules: clock, random identifiers, hex, durations.

use std::time::{SystemTime, UNIX_EPOCH};

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

pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.as_bytes()
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect()
}

/// Compares two byte strings without an early exit, so timing does not reveal where they differ.
/// Callers pass fixed-length digests so the length does not leak either.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
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
    !presented.is_empty() && constant_time_eq(&token_digest(presented), digest)
}

/// "in 3d 4h", "in 12m", "expired 2h ago": coarse, for people.
pub fn human_until(target_ms: i64, now_ms: i64) -> String {
    let delta = target_ms.saturating_sub(now_ms);
    let span = human_span(delta.unsigned_abs() / 1000);
    if delta >= 0 {
        format!("in {span}")
    } else {
        format!("expired {span} ago")
    }
}

/// "5s", "4m", "1h 2m" for a duration in milliseconds (negative counts as 0).
pub fn human_span_ms(ms: &i64) -> String {
    human_span(u64::try_from((*ms).max(0)).unwrap_or(0) / 1000)
}

fn human_span(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, (secs % 86_400) / 3600, (secs % 3600) / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{secs}s")
    }
}

/// `2026-01-02 03:04Z` (UTC, minute precision) for tables.
pub fn fmt_utc_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// `2026-01-02T03:04:05.678Z` (RFC 3339, UTC, milliseconds), as Codex writes `last_refresh`.
pub fn fmt_rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// Parses RFC 3339 (`2027-01-15T08:15:00.000000Z`, `...+02:00`) into unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let ms_digits: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        millis = ms_digits.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let oh: i64 = tz[1..3].parse().ok()?;
            let om: i64 = tz[4..6].parse().ok()?;
            let v = oh * 3600 + om * 60;
            if tz.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    Some(secs * 1000 + millis)
}

/// (year, month, day) to days since 1970-01-01 (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Writes `contents` to a temp file beside `path` and renames it into place, so a reader (Envoy)
/// never sees half a file. Creates the parent directory if needed.
pub fn write_file_atomically(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, contents)
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let bytes = [0u8, 1, 0xab, 0xff, 0x10];
        let s = hex_encode(&bytes);
        assert_eq!(s, "0001abff10");
        assert_eq!(hex_decode(&s).as_deref(), Some(&bytes[..]));
        assert_eq!(hex_decode("0g"), None);
        assert_eq!(hex_decode("abc"), None);
    }

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
    fn ct_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
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
        assert_eq!(human_span_ms(&65_000), "1m");
        for ms in [
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
        assert_eq!(human_span_ms(&-5), "0s");
    }

    #[test]
    fn human() {
        assert_eq!(human_until(90_000_000 + 1000, 1000), "in 1d 1h");
        assert_eq!(human_until(0, 7_200_000), "expired 2h 0m ago");
        assert_eq!(human_until(65_000, 0), "in 1m");
        assert_eq!(human_until(5_000, 0), "in 5s");
    }
}
