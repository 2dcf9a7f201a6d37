use super::*;

/// A moment late on 2026-11-29 and quotas of 2 requests a day and 100 tokens a month.
fn two_a_day_and_100_tokens_a_month() -> (Timestamp, KeyQuotas) {
    let now = Timestamp::parse("2026-11-29T23:00:00Z").unwrap();
    let q = KeyQuotas {
        requests_per_day: Some(2),
        tokens_per_month: Some(100),
        ..Default::default()
    };
    (now, q)
}

#[test]
fn requests_and_tokens_per_window() {
    let (now, q) = two_a_day_and_100_tokens_a_month();
    let s = QuotaState::default();
    assert!(check(Some(&q), &s, now).is_ok());
    assert!(check(Some(&q), &s, now).is_ok());
    let r = check(Some(&q), &s, now).unwrap_err();
    assert_eq!(r.kind, QuotaKind::RequestsPerDay);
    assert_eq!(r.resets_at.to_string(), "2026-11-30T00:00:00Z");
    assert_eq!(r.reset_in, Duration::from_secs(3600));
    assert_eq!(s.pending().requests, 2, "a refusal is not counted");
    // Written to the store: the store's total for today counts, pending is gone.
    let day = day_of(now);
    s.drained(s.pending());
    s.set_stored(Stored {
        day,
        month: month_of(now),
        in_day: Used {
            requests: 2,
            tokens: 0,
        },
        in_month: Used {
            requests: 2,
            tokens: 100,
        },
    });
    // Both used up: the month's, which resets last, is named.
    let r = check(Some(&q), &s, now).unwrap_err();
    assert_eq!(r.kind, QuotaKind::TokensPerMonth);
    // The next day the daily quota starts again, the monthly one not.
    let tomorrow = Timestamp(now.0 + 3600);
    let r = check(Some(&q), &s, tomorrow).unwrap_err();
    assert_eq!(r.kind, QuotaKind::TokensPerMonth);
    assert_eq!(r.resets_at.to_string(), "2026-12-01T00:00:00Z");
    let v = view(Some(&q), |w| s.used(w), now);
    assert_eq!(v["tokens_per_month"]["remaining"], 0);
    assert_eq!(v["requests_per_day"]["used"], 2);
    assert_eq!(v["requests_per_day"]["resets_at"], "2026-11-30T00:00:00Z");
    // A new month starts from nothing.
    let december = Timestamp::parse("2026-12-01T00:00:00Z").unwrap();
    assert!(check(Some(&q), &s, december).is_ok());
    assert!(v.get("tokens_per_day").is_none());
}

#[test]
fn used_up_agrees_with_check() {
    let (now, q) = two_a_day_and_100_tokens_a_month();
    let s = QuotaState::default();
    assert!(used_up(&q, &s, now).is_empty());
    assert!(check(Some(&q), &s, now).is_ok());
    assert!(used_up(&q, &s, now).is_empty(), "one request of two left");
    assert!(check(Some(&q), &s, now).is_ok());
    let up = used_up(&q, &s, now);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].kind, QuotaKind::RequestsPerDay);
    assert_eq!((up[0].limit, up[0].used), (2, 2));
    assert_eq!(up[0].window, Window::Day(day_of(now)));
    assert!(
        check(Some(&q), &s, now).is_err(),
        "and check refuses the next"
    );
    s.add_tokens(100);
    assert_eq!(used_up(&q, &s, now).len(), 2, "tokens per month reached");
    // Written to the store for today and this month; the next day has a fresh day.
    s.drained(s.pending());
    s.set_stored(Stored {
        day: day_of(now),
        month: month_of(now),
        in_day: Used {
            requests: 2,
            tokens: 100,
        },
        in_month: Used {
            requests: 2,
            tokens: 100,
        },
    });
    assert_eq!(used_up(&q, &s, now).len(), 2);
    let tomorrow = Timestamp(now.0 + 3600);
    let up = used_up(&q, &s, tomorrow);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].kind, QuotaKind::TokensPerMonth);
}
