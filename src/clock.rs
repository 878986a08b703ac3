//! The time: now, and the UTC calendar, without a dependency (the initrd has no zoneinfo and
//! the tool only ever shows UTC).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, now (0 if the clock is before 1970).
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Seconds since the epoch to the UTC calendar: (year, month, day, hour, minute, second)
/// (Howard Hinnant's `civil_from_days`).
pub fn utc(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// `2026-11-27 10:04:05 UTC`, for messages; times before 1970 read as 1970.
pub fn utc_text(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = utc(secs.max(0) as u64);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_calendar() {
        assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(utc(1_795_774_145), (2026, 11, 27, 10, 9, 5));
        assert_eq!(utc(4_107_542_399), (2100, 2, 28, 23, 59, 59));
        assert_eq!(utc_text(1_795_774_145), "2026-11-27 10:09:05 UTC");
        assert_eq!(utc_text(-5), "1970-01-01 00:00:00 UTC");
    }
}
