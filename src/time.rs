//! Timestamps and human durations (`90d`, `24h`, `30m`), and OpenAI's reset-duration form.
//!
//! Times are whole seconds since the Unix epoch inside the program and RFC 3339 (UTC) in
//! every file and API answer, so a key file can be read and diffed by a person.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

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
mod tests {
    use super::*;

    /// The once-a-second stamp writes what the full one does: times in order within a
    /// second and across seconds, days and years, a time before 1970, and after 9999.
    #[test]
    fn the_second_stamp_writes_what_the_full_stamp_writes() {
        let mut stamp = SecondStamp::default();
        let base = UNIX_EPOCH + Duration::from_secs(1_798_761_599); // 2026-12-31T23:59:59Z
        let mut times: Vec<SystemTime> = (0..4_000_000u64)
            .step_by(250_001)
            .map(|us| base + Duration::from_micros(us))
            .collect();
        times.push(UNIX_EPOCH - Duration::from_secs(5));
        times.push(UNIX_EPOCH + Duration::from_secs(253_402_300_800 + 86_400 * 400));
        times.push(base);
        for at in times {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            stamp.write(&mut a, at);
            write_rfc3339_micros(&mut b, at);
            assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
        }
    }

    /// The hand-written timestamp is humantime's, byte for byte: every day of 1970–2400 at
    /// varied times of day (leap years, 2000 and 2100 included), and the edges of a day.
    #[test]
    fn a_time_needs_its_zone_and_must_fit_before_the_year_10000() {
        let t = Timestamp::parse("2030-01-01T02:00:00+02:00").unwrap();
        assert_eq!(t, Timestamp::parse("2030-01-01T00:00:00Z").unwrap());
        assert!(Timestamp::parse("2030-01-01T00:00:00")
            .unwrap_err()
            .contains("no time zone"));
        assert_eq!(
            Timestamp::parse("9999-12-31T23:59:59Z").unwrap(),
            Timestamp::MAX
        );
        for late in ["9999-12-31T20:00:00-05:00", "9999-12-31T23:59:59-00:01"] {
            assert!(
                Timestamp::parse(late).unwrap_err().contains("9999"),
                "{late}"
            );
        }
        assert!(Timestamp::parse("1969-12-31T23:00:00+02:00").is_err());
    }

    #[test]
    fn timestamps_are_rfc3339_micros_as_humantime_writes_them() {
        let mut checked = 0;
        let mut day = 0u64;
        while day < 157_000 {
            for secs in [0, 1, 59, 3599, 43_210, 86_399] {
                for micros in [0, 7, 706_750, 999_999] {
                    let at = UNIX_EPOCH
                        + Duration::from_secs(day * 86_400 + secs)
                        + Duration::from_micros(micros);
                    let mut out = Vec::new();
                    write_rfc3339_micros(&mut out, at);
                    let want = humantime::format_rfc3339_micros(at).to_string();
                    assert_eq!(String::from_utf8(out).unwrap(), want);
                    checked += 1;
                }
            }
            day += if day < 20_000 { 1 } else { 7 };
        }
        assert!(checked > 500_000);
        let mut out = Vec::new();
        write_rfc3339_micros(&mut out, UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(out, b"1970-01-01T00:00:00.000000Z");
        // Past humantime's range: the year keeps all its digits.
        out.clear();
        let y10k = UNIX_EPOCH + Duration::from_secs(253_402_300_800) + Duration::from_micros(7);
        write_rfc3339_micros(&mut out, y10k);
        assert_eq!(out, b"10000-01-01T00:00:00.000007Z");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d").unwrap().as_secs(), 90 * 86_400);
        assert_eq!(parse_duration("24h").unwrap().as_secs(), 86_400);
        assert_eq!(parse_duration("30m").unwrap().as_secs(), 1_800);
        assert!(parse_duration("soon").is_err());
    }

    fn openai_duration(d: Duration) -> String {
        OpenAiDuration(d).to_string()
    }

    /// The form as first written, through the formatter: `text` must write the same bytes.
    fn openai_by_formatter(d: Duration) -> String {
        let ms = d.as_millis();
        if ms < 1_000 {
            return format!("{ms}ms");
        }
        let secs = d.as_secs();
        if secs < 60 {
            let frac = (ms % 1_000) as u32;
            if frac == 0 {
                return format!("{secs}s");
            }
            let (mut frac, mut width) = (frac, 3);
            while frac % 10 == 0 {
                frac /= 10;
                width -= 1;
            }
            return format!("{secs}.{frac:0width$}s");
        }
        let (h, m, s) = (secs / 3_600, (secs % 3_600) / 60, secs % 60);
        if h > 0 {
            format!("{h}h{m}m{s}s")
        } else {
            format!("{m}m{s}s")
        }
    }

    proptest::proptest! {
        #[test]
        fn openai_text_agrees_with_the_formatter(
            secs in proptest::prop_oneof![0u64..120, 0u64..200_000, proptest::num::u64::ANY],
            nanos in 0u32..1_000_000_000,
        ) {
            let d = Duration::new(secs, nanos);
            let text = OpenAiDuration(d).text();
            proptest::prop_assert_eq!(std::str::from_utf8(text.as_bytes()).unwrap(), openai_by_formatter(d));
        }
    }

    #[test]
    fn openai_forms() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_secs(1)), "1s");
        assert_eq!(openai_duration(Duration::from_millis(1_500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(Duration::from_secs(3_723)), "1h2m3s");
        assert_eq!(openai_duration(Duration::from_millis(1_250)), "1.25s");
        assert_eq!(openai_duration(Duration::from_millis(59_005)), "59.005s");
        assert_eq!(openai_duration(Duration::from_millis(999)), "999ms");
        assert_eq!(openai_duration(Duration::from_millis(1_050)), "1.05s");
        assert_eq!(openai_duration(Duration::from_millis(1_001)), "1.001s");
        assert_eq!(openai_duration(Duration::from_micros(999_999)), "999ms");
        assert_eq!(openai_duration(Duration::ZERO), "0ms");
        assert_eq!(openai_duration(Duration::from_millis(60_999)), "1m0s");
        assert_eq!(openai_duration(Duration::from_secs(86_400)), "24h0m0s");
        assert_eq!(
            openai_duration(Duration::from_secs(u64::MAX)),
            "5124095576030431h0m15s",
            "the longest fits"
        );
    }

    #[test]
    fn timestamps_round_trip() {
        let t = Timestamp(1_700_000_000);
        assert_eq!(t.to_string(), "2023-11-14T22:13:20Z");
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
    }
}
