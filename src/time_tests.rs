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
