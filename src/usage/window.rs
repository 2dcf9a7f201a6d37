//! The windows usage is counted in: hours (the buckets), UTC calendar days and months (the
//! quotas), their names in Redis and in the state file, and the clock they are read from.
//!
//! Windows are numbered from the Unix epoch (hour `n` starts at `n * 3600`, day `n` at
//! `n * 86400`, month `n` is year `n / 12`, month `n % 12 + 1`), so they compare and subtract
//! as numbers; calendar months come from `chrono`.

use crate::time::Timestamp;
use chrono::{Datelike, NaiveDate};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The time usage windows are computed from: the system's, moved forward by `advance`, so a
/// test crosses an hour, a day or a month without waiting for it. Belongs to the gateway
/// (`usage::Usage`); the notifier finds events at its time too (`ops::notify`), so a test moves
/// a key past an expiry threshold the same way.
#[derive(Debug, Default)]
pub struct Clock {
    ahead: AtomicU64,
}

impl Clock {
    pub fn now(&self) -> Timestamp {
        self.at(Timestamp::now())
    }

    /// This clock's time when the system's is `now` (a request reads the system's once).
    pub fn at(&self, now: Timestamp) -> Timestamp {
        Timestamp(now.0 + self.ahead.load(Ordering::Relaxed))
    }

    /// Moves this clock forward by `d` (tests).
    pub fn advance(&self, d: Duration) {
        self.ahead.fetch_add(d.as_secs(), Ordering::Relaxed);
    }
}

pub const HOUR: u64 = 3_600;
pub const DAY: u64 = 86_400;

/// Hours since the epoch.
pub fn hour_of(t: Timestamp) -> u32 {
    u32::try_from(t.0 / HOUR).unwrap_or(u32::MAX)
}

pub fn hour_start(h: u32) -> Timestamp {
    Timestamp(u64::from(h) * HOUR)
}

/// UTC days since the epoch.
pub fn day_of(t: Timestamp) -> u32 {
    u32::try_from(t.0 / DAY).unwrap_or(u32::MAX)
}

pub fn day_start(d: u32) -> Timestamp {
    Timestamp(u64::from(d) * DAY)
}

fn date_of(t: Timestamp) -> NaiveDate {
    chrono::DateTime::from_timestamp(i64::try_from(t.0).unwrap_or(i64::MAX), 0)
        .unwrap_or_default()
        .date_naive()
}

/// UTC calendar months since the epoch's year 0 (`year * 12 + month - 1`).
pub fn month_of(t: Timestamp) -> u32 {
    let d = date_of(t);
    u32::try_from(d.year()).unwrap_or(0) * 12 + d.month0()
}

/// Midnight UTC of the first day of month `m`.
pub fn month_start(m: u32) -> Timestamp {
    let date = NaiveDate::from_ymd_opt((m / 12) as i32, m % 12 + 1, 1).unwrap_or_default();
    Timestamp(
        u64::try_from(date.and_time(chrono::NaiveTime::MIN).and_utc().timestamp()).unwrap_or(0),
    )
}

/// A quota window: a UTC calendar day or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    Day(u32),
    Month(u32),
}

impl Window {
    pub fn start(self) -> Timestamp {
        match self {
            Window::Day(d) => day_start(d),
            Window::Month(m) => month_start(m),
        }
    }

    /// When the window ends and the next one starts (its quota resets).
    pub fn end(self) -> Timestamp {
        match self {
            Window::Day(d) => day_start(d + 1),
            Window::Month(m) => month_start(m + 1),
        }
    }

    /// `2026-11-30` or `2026-11`: the state file's name for it.
    pub fn label(self) -> String {
        let d = date_of(self.start());
        match self {
            Window::Day(_) => d.format("%Y-%m-%d").to_string(),
            Window::Month(_) => d.format("%Y-%m").to_string(),
        }
    }

    /// The window a state-file label names.
    pub fn parse(label: &str) -> Option<Window> {
        if let Ok(d) = NaiveDate::parse_from_str(label, "%Y-%m-%d") {
            return Some(Window::Day(day_of(date_start(d))));
        }
        let d = NaiveDate::parse_from_str(&format!("{label}-01"), "%Y-%m-%d").ok()?;
        Some(Window::Month(month_of(date_start(d))))
    }

    /// `20261130` or `202611`: Redis's name for it.
    pub fn compact(self) -> String {
        let d = date_of(self.start());
        match self {
            Window::Day(_) => d.format("%Y%m%d").to_string(),
            Window::Month(_) => d.format("%Y%m").to_string(),
        }
    }
}

fn date_start(d: NaiveDate) -> Timestamp {
    Timestamp(u64::try_from(d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp()).unwrap_or(0))
}

/// `2026113012`: Redis's name for hour `h`.
pub fn hour_compact(h: u32) -> String {
    let t = hour_start(h);
    let d = date_of(t);
    format!("{}{:02}", d.format("%Y%m%d"), (t.0 % DAY) / HOUR)
}

/// `2026-11-30T12:00:00Z`: the state file's and the API's name for hour `h`.
pub fn hour_label(h: u32) -> String {
    hour_start(h).to_string()
}

/// `2026-11-30`: the API's name for day `d`.
pub fn day_label(d: u32) -> String {
    Window::Day(d).label()
}

/// A time as a query gives it: RFC 3339 (`2026-11-30T12:00:00Z`), a date (`2026-11-30`,
/// midnight UTC), `now`, or a time ago (`-7d`, `-36h`, `-1h30m`).
pub fn parse_time(s: &str, now: Timestamp) -> Result<Timestamp, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Some(ago) = s.strip_prefix('-') {
        let d = crate::time::parse_duration(ago)?;
        return Ok(Timestamp(now.0.saturating_sub(d.as_secs())));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(date_start(d));
    }
    Timestamp::parse(s).map_err(|e| {
        format!("{e}: give an RFC 3339 time with its zone (2026-11-30T12:00:00Z), a date (2026-11-30), `now` or a time ago (-7d, -24h)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by an outside probe: a usage query's time past 9999 (or without a zone) was
    /// "not an RFC 3339 time", where the CLI and `expires_at` said why.
    #[test]
    fn a_query_time_says_why_it_is_refused() {
        let now = Timestamp(1_800_000_000);
        let late = parse_time("9999-12-31T23:00:00-01:00", now).unwrap_err();
        assert!(late.contains("past the year 9999"), "{late}");
        let local = parse_time("2026-11-30T12:00:00", now).unwrap_err();
        assert!(local.contains("no time zone"), "{local}");
    }

    #[test]
    fn calendar_windows() {
        // 2024-02-29T23:59:59Z, a leap day.
        let t = Timestamp(1_709_251_199);
        assert_eq!(Window::Day(day_of(t)).label(), "2024-02-29");
        assert_eq!(Window::Month(month_of(t)).label(), "2024-02");
        assert_eq!(
            Window::Month(month_of(t)).end().to_string(),
            "2024-03-01T00:00:00Z"
        );
        assert_eq!(
            Window::Day(day_of(t)).end().to_string(),
            "2024-03-01T00:00:00Z"
        );
        assert_eq!(
            Window::Month(month_of(t)).start().to_string(),
            "2024-02-01T00:00:00Z"
        );
        // December rolls into the next year.
        let dec = Timestamp::parse("2025-12-31T10:00:00Z").unwrap();
        assert_eq!(
            Window::Month(month_of(dec)).end().to_string(),
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(Window::Month(month_of(dec)).compact(), "202512");
        assert_eq!(hour_compact(hour_of(dec)), "2025123110");
        assert_eq!(hour_label(hour_of(dec)), "2025-12-31T10:00:00Z");
        for w in [Window::Day(day_of(dec)), Window::Month(month_of(dec))] {
            assert_eq!(Window::parse(&w.label()), Some(w));
        }
        assert_eq!(Window::parse("2025-13"), None);
    }

    #[test]
    fn query_times() {
        let now = Timestamp::parse("2026-11-30T12:00:00Z").unwrap();
        assert_eq!(
            parse_time("-7d", now).unwrap().to_string(),
            "2026-11-23T12:00:00Z"
        );
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(
            parse_time("2026-11-01", now).unwrap().to_string(),
            "2026-11-01T00:00:00Z"
        );
        assert_eq!(
            parse_time("2026-11-01T05:00:00Z", now).unwrap().to_string(),
            "2026-11-01T05:00:00Z"
        );
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("-7 parsecs", now).is_err());
    }
}
