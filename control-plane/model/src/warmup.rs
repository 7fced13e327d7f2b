//! Account warm-up schedules: at a chosen UTC time of day (on chosen weekdays) every active
//! account of a pool gets one minimal request, so its 5-hour window starts then.
//!
//! Rules: pure. A schedule is a minute of the UTC day and a weekday set (Monday = bit 0); the
//! text forms are `HH:MM` and `mon-fri`, `sat,sun`, `mon,wed-fri`, `all` (any case). A slot is
//! the scheduled instant of one day; [`due_slot`] is the newest slot at or before now, not
//! older than [`GRACE_MS`] (a control plane that was down at the time does not warm up hours
//! late) and newer than the last one claimed. So each slot runs at most once.

use serde::Serialize;

/// A slot missed by more than this is skipped.
pub const GRACE_MS: i64 = 10 * 60 * 1000;
/// Every day of the week.
pub const EVERY_DAY: u8 = 0b111_1111;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const FULL_DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
const DAY_MS: i64 = 86_400_000;

/// A pool's warm-up schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WarmupSchedule {
    /// Minutes after midnight UTC (0..1439).
    pub minute_of_day: u16,
    /// Bit 0 = Monday … bit 6 = Sunday.
    pub weekdays: u8,
    pub enabled: bool,
}

/// Bad schedule text: which part, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ScheduleError {
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> ScheduleError {
    ScheduleError {
        field,
        message: message.into(),
    }
}

/// `HH:MM` (UTC, 24 h) as minutes after midnight.
pub fn parse_time(s: &str) -> Result<u16, ScheduleError> {
    let bad = || {
        err(
            "at",
            format!("{s:?} is not a time of day HH:MM (UTC, 00:00 to 23:59)"),
        )
    };
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 || s.trim().len() > 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// `HH:MM` of a minute of the day.
pub fn format_time(minute_of_day: u16) -> String {
    format!("{:02}:{:02}", minute_of_day / 60, minute_of_day % 60)
}

fn day(s: &str) -> Result<u8, ScheduleError> {
    let s = s.trim().to_ascii_lowercase();
    DAYS.iter()
        .zip(FULL_DAYS)
        .position(|(d, full)| s == *d || s == full)
        .and_then(|i| u8::try_from(i).ok())
        .ok_or_else(|| err("weekdays", format!("{s:?} is not a weekday (mon … sun)")))
}

/// `mon-fri`, `sat,sun`, `all`: the weekday set.
pub fn parse_weekdays(s: &str) -> Result<u8, ScheduleError> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("all") || s == "*" {
        return Ok(EVERY_DAY);
    }
    let mut set = 0u8;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                if a > b {
                    return Err(err("weekdays", format!("{part:?} runs backwards")));
                }
                for d in a..=b {
                    set |= 1 << d;
                }
            }
            None => set |= 1 << day(part)?,
        }
    }
    if set == 0 {
        return Err(err("weekdays", "name at least one weekday"));
    }
    Ok(set)
}

/// The weekday set as text (`mon,tue,…` or `all`).
pub fn format_weekdays(set: u8) -> String {
    if set & EVERY_DAY == EVERY_DAY {
        return "all".to_owned();
    }
    DAYS.iter()
        .enumerate()
        .filter(|(i, _)| set & (1 << i) != 0)
        .map(|(_, d)| *d)
        .collect::<Vec<_>>()
        .join(",")
}

/// The weekday (0 = Monday) of a unix-ms instant's UTC day.
fn weekday(ms: i64) -> u8 {
    // 1970-01-01 was a Thursday (3).
    u8::try_from((ms.div_euclid(DAY_MS) + 3).rem_euclid(7)).unwrap_or(0)
}

/// The slot to run now, if any: the newest scheduled instant at or before `now_ms`, within
/// [`GRACE_MS`], newer than `last_slot_ms`, on an enabled schedule.
pub fn due_slot(s: &WarmupSchedule, last_slot_ms: Option<i64>, now_ms: i64) -> Option<i64> {
    if !s.enabled {
        return None;
    }
    let today = now_ms.div_euclid(DAY_MS) * DAY_MS + i64::from(s.minute_of_day) * 60_000;
    let slot = if today <= now_ms {
        today
    } else {
        today - DAY_MS
    };
    (now_ms - slot <= GRACE_MS
        && s.weekdays & (1 << weekday(slot)) != 0
        && last_slot_ms.is_none_or(|last| last < slot))
    .then_some(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-03 is a Thursday.
    const THU_0000: i64 = 1_796_256_000_000;

    fn sched(at: &str, days: &str) -> WarmupSchedule {
        WarmupSchedule {
            minute_of_day: parse_time(at).unwrap_or(0),
            weekdays: parse_weekdays(days).unwrap_or(0),
            enabled: true,
        }
    }

    #[test]
    fn times_and_weekdays_parse_and_print() {
        assert_eq!(parse_time("07:30"), Ok(450));
        assert_eq!(format_time(450), "07:30");
        for bad in ["7", "24:00", "07:60", "aa:bb", "07:30:00"] {
            assert_eq!(parse_time(bad).map_err(|e| e.field), Err("at"), "{bad}");
        }
        assert_eq!(parse_weekdays("mon-fri"), Ok(0b001_1111));
        assert_eq!(parse_weekdays("Sat,sun"), Ok(0b110_0000));
        assert_eq!(parse_weekdays("all"), Ok(EVERY_DAY));
        assert_eq!(format_weekdays(0b001_0101), "mon,wed,fri");
        assert_eq!(format_weekdays(EVERY_DAY), "all");
        for bad in ["", "fri-mon", "moon", "mon,"] {
            assert_eq!(
                parse_weekdays(bad).map_err(|e| e.field),
                Err("weekdays"),
                "{bad:?}"
            );
        }
        assert_eq!(weekday(THU_0000), 3);
    }

    #[test]
    fn a_slot_is_due_once_within_the_grace_on_its_weekdays() {
        let s = sched("07:30", "mon-fri");
        let slot = THU_0000 + 450 * 60_000;
        // Before the time: yesterday's slot is long past the grace.
        assert_eq!(due_slot(&s, None, slot - 1), None);
        assert_eq!(due_slot(&s, None, slot), Some(slot));
        assert_eq!(due_slot(&s, None, slot + GRACE_MS), Some(slot));
        // Claimed: not again.
        assert_eq!(due_slot(&s, Some(slot), slot + 60_000), None);
        // Missed by more than the grace: skipped.
        assert_eq!(due_slot(&s, None, slot + GRACE_MS + 1), None);
        // Not on a weekend: Saturday is two days later.
        assert_eq!(due_slot(&s, None, slot + 2 * DAY_MS), None);
        assert_eq!(due_slot(&s, Some(slot), slot + DAY_MS), Some(slot + DAY_MS));
        // Off: nothing.
        let off = WarmupSchedule {
            enabled: false,
            ..s
        };
        assert_eq!(due_slot(&off, None, slot), None);
        // Just after midnight, a slot at 23:55 yesterday is still within the grace.
        let late = sched("23:55", "all");
        assert_eq!(
            due_slot(&late, None, THU_0000 + 60_000),
            Some(THU_0000 - 5 * 60_000)
        );
    }
}
