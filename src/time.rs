//! Timestamps and human durations (`90d`, `24h`, `30m`), and OpenAI's reset-duration form.
//!
//! Times are whole seconds since the Unix epoch inside the program and RFC 3339 (UTC) in
//! every file and API answer, so a key file can be read and diffed by a person.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

/// A monotonic clock read taken once, when first wanted, for the several that want the same
/// moment (the end of an answer: the request's latency, its client connection's idle time,
/// its upstream connection's). Under load a read costs as much as the rest of what those
/// three do with it.
#[derive(Debug, Default)]
pub struct LazyNow(Option<std::time::Instant>);

impl LazyNow {
    pub fn at(&mut self) -> std::time::Instant {
        *self.0.get_or_insert_with(std::time::Instant::now)
    }
}

impl Timestamp {
    /// 9999-12-31T23:59:59Z: the last time RFC 3339 can write.
    pub const MAX: Timestamp = Timestamp(253_402_300_799);

    pub fn now() -> Timestamp {
        Timestamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
    }

    /// `self + d`, or `None` past `Timestamp::MAX` (such a time cannot be written down).
    pub fn checked_plus(self, d: Duration) -> Option<Timestamp> {
        Some(Timestamp(self.0.checked_add(d.as_secs())?)).filter(|t| *t <= Timestamp::MAX)
    }

    /// `self + d`, saturating at `Timestamp::MAX`.
    pub fn plus(self, d: Duration) -> Timestamp {
        self.checked_plus(d).unwrap_or(Timestamp::MAX)
    }

    /// An RFC 3339 time with its zone (`Z` or an offset), up to 9999-12-31T23:59:59Z.
    pub fn parse(s: &str) -> Result<Timestamp, String> {
        let text = s.trim();
        let t = match humantime::parse_rfc3339(text) {
            Ok(t) => t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            // humantime reads UTC (`Z`) only; RFC 3339 allows any offset
            // (`2030-01-01T02:00:00+02:00`), which is that instant in UTC.
            Err(e) => match chrono::DateTime::parse_from_rfc3339(text) {
                Ok(d) => {
                    u64::try_from(d.timestamp()).map_err(|_| format!("`{s}` is before 1970"))?
                }
                // A time without a zone is a local time to whoever typed it: read as UTC it
                // would be hours off, so it is refused rather than guessed.
                Err(_) if humantime::parse_rfc3339_weak(text).is_ok() => {
                    return Err(format!(
                        "`{s}` has no time zone: add `Z` for UTC or an offset such as `+02:00`"
                    ))
                }
                Err(_) => return Err(format!("`{s}` is not an RFC 3339 time ({e})")),
            },
        };
        // An offset can carry a time written in 9999 past the year's end.
        if t > Timestamp::MAX.0 {
            return Err(format!("`{s}` is past the year 9999"));
        }
        Ok(Timestamp(t))
    }

    /// Seconds from `self` until `later` (0 if `later` is not later).
    pub fn until(self, later: Timestamp) -> u64 {
        later.0.saturating_sub(self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Clamped so that formatting can never panic, whatever a caller computed.
        let t = UNIX_EPOCH + Duration::from_secs(self.0.min(Timestamp::MAX.0));
        write!(f, "{}", humantime::format_rfc3339_seconds(t))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses `90d`, `24h`, `30m`, `45s`, `2w` and combinations such as `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 90d, 24h or 30m ({e})"))
}

/// A short human form: `3d`, `5h`, `12m`, `40s`.
pub fn human_secs(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// OpenAI's reset form: `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`. A `Display`, so an error
/// message is written without an intermediate `String`; an answer's limit headers
/// (`limit::answer`) take `text`, the same form written on the stack without the formatter's
/// machinery (they are on every answer, and through `core::fmt` cost more than the rest of
/// the headers).
#[derive(Debug, Clone, Copy)]
pub struct OpenAiDuration(pub Duration);

/// An `OpenAiDuration` as text, on the stack: the longest (`5124095576030431h0m15s`, the
/// hours of `u64::MAX` seconds) fits with room to spare.
pub struct DurationText {
    buf: [u8; 32],
    len: usize,
}

impl DurationText {
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    fn push(&mut self, b: &[u8]) {
        if let Some(to) = self.buf.get_mut(self.len..self.len + b.len()) {
            to.copy_from_slice(b);
            self.len += b.len();
        }
    }

    fn number(&mut self, n: u64) {
        self.push(itoa::Buffer::new().format(n).as_bytes());
    }
}

impl OpenAiDuration {
    pub fn text(self) -> DurationText {
        let mut t = DurationText {
            buf: [0; 32],
            len: 0,
        };
        let d = self.0;
        let secs = d.as_secs();
        let ms = u64::from(d.subsec_millis());
        if secs == 0 {
            t.number(ms);
            t.push(b"ms");
        } else if secs < 60 {
            t.number(secs);
            if ms > 0 {
                // Milliseconds without trailing zeros: 1.5s, 1.25s, 1.05s, 1.125s.
                let (mut frac, mut width) = (ms, 3);
                while frac % 10 == 0 {
                    frac /= 10;
                    width -= 1;
                }
                let mut f = [b'.', b'0', b'0', b'0'];
                if let Some(to) = f.get_mut(1..=width) {
                    digits(to, frac);
                }
                t.push(f.get(..=width).unwrap_or_default());
            }
            t.push(b"s");
        } else {
            let (h, m, s) = (secs / 3_600, (secs % 3_600) / 60, secs % 60);
            if h > 0 {
                t.number(h);
                t.push(b"h");
            }
            t.number(m);
            t.push(b"m");
            t.number(s);
            t.push(b"s");
        }
        t
    }
}

impl fmt::Display for OpenAiDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text is ASCII digits and unit letters.
        f.write_str(std::str::from_utf8(self.text().as_bytes()).map_err(|_| fmt::Error)?)
    }
}

/// Writes `at` in RFC 3339, UTC, with microseconds (`2026-12-01T07:15:00.706750Z`, what
/// `humantime::format_rfc3339_micros` writes), digit by digit into a stack buffer copied
/// once: through the formatter it cost the access line as much as all its other fields. A
/// time before 1970 is written as 1970.
pub fn write_rfc3339_micros(out: &mut Vec<u8>, at: SystemTime) {
    SecondStamp::default().write(out, at);
}

/// `secs` as `YYYY-MM-DDTHH:MM:SS.000000Z` (microseconds left at zero), and the year's
/// digits above the last four (0 before the year 10000).
fn second_text(secs: u64) -> (u64, [u8; 27]) {
    use chrono::Datelike;
    // chrono's calendar (the one quotas and usage buckets use), without its formatter.
    let date = chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0)
        .unwrap_or_default()
        .date_naive();
    let year = u64::try_from(date.year()).unwrap_or(0);
    let of_day = secs % 86_400;
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    digits(&mut b[0..4], year);
    digits(&mut b[5..7], u64::from(date.month()));
    digits(&mut b[8..10], u64::from(date.day()));
    digits(&mut b[11..13], of_day / 3600);
    digits(&mut b[14..16], of_day / 60 % 60);
    digits(&mut b[17..19], of_day % 60);
    (year / 10_000, b)
}

/// `write_rfc3339_micros` for a writer whose times come in order, many in the same second
/// (the access lines): the calendar is worked out once a second, each line writes only its
/// microseconds.
#[derive(Debug, Default)]
pub struct SecondStamp {
    /// The second `text` is of, when there is one.
    second: Option<u64>,
    /// The year's digits above the last four (0 before the year 10000).
    ten_thousands: u64,
    text: [u8; 27],
}

impl SecondStamp {
    /// Writes `at` in RFC 3339 with microseconds (see `write_rfc3339_micros`).
    pub fn write(&mut self, out: &mut Vec<u8>, at: SystemTime) {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if self.second != Some(secs) {
            (self.ten_thousands, self.text) = second_text(secs);
            self.second = Some(secs);
        }
        if self.ten_thousands > 0 {
            out.extend_from_slice(itoa::Buffer::new().format(self.ten_thousands).as_bytes());
        }
        let mut b = self.text;
        digits(&mut b[20..26], u64::from(since.subsec_micros()));
        out.extend_from_slice(&b);
    }
}

/// Fills `to` with `n`'s last `to.len()` decimal digits, zero-padded.
fn digits(to: &mut [u8], mut n: u64) {
    for d in to.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

#[cfg(test)]
#[path = "time_tests.rs"]
mod tests;
