//! Unit tests of `usage::query`.

use super::*;

fn t(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

#[test]
fn url_parameters() {
    let now = t("2026-11-30T12:34:00Z");
    let ninety = Duration::from_secs(90 * 86_400);
    let q = Query::from_url(None, now, ninety).unwrap();
    assert_eq!(q.group, Group::BY_KEY);
    assert_eq!(q.to.to_string(), "2026-11-30T13:00:00Z");
    assert_eq!(q.from.to_string(), "2026-09-01T12:00:00Z");
    let q = Query::from_url(
        Some("from=-7d&group_by=key,day&key_id=key_aaaaaaaaaaaaaaaa,key_bbbbbbbbbbbbbbbb&model=m&meta=team:x"),
        now,
        ninety,
    )
    .unwrap();
    assert_eq!(q.from.to_string(), "2026-11-23T12:00:00Z");
    assert_eq!(q.group.names(), ["key", "day"]);
    assert_eq!(q.keys.len(), 2);
    assert_eq!(q.meta, [("team".to_string(), "x".to_string())]);
    for (query, param) in [
        ("from=yesterday", "from"),
        ("to=-1d&from=now", "to"),
        ("group_by=week", "group_by"),
        ("group_by=day,hour", "group_by"),
        ("key_id=nope", "key_id"),
        ("meta=team", "meta"),
        ("meta=Team:x", "meta"),
        ("limit=3", "limit"),
        ("from=-1d&from=-2d", "from"),
    ] {
        let e = Query::from_url(Some(query), now, ninety).unwrap_err();
        assert_eq!(e.param, param, "{query}: {e:?}");
        assert!(e.message.contains(&format!("`{param}`")), "{e:?}");
    }
}

#[test]
fn sums_by_what_is_asked() {
    let h = hour_of(t("2026-11-30T10:00:00Z"));
    let a = KeyId::new("key_aaaaaaaaaaaaaaaa").unwrap();
    let b = KeyId::new("key_bbbbbbbbbbbbbbbb").unwrap();
    let one = |n: u64| Counts {
        requests: n,
        ..Default::default()
    };
    let rows: Vec<Row> = vec![
        (h, a, Arc::from("m1"), one(1)),
        (h, a, Arc::from("m2"), one(2)),
        (h + 1, a, Arc::from("m1"), one(4)),
        (h + 1, b, Arc::from(""), one(8)),
        (h + 30, b, Arc::from("m1"), one(16)),
    ];
    let keys = HashMap::new();
    let q = |g: &str| {
        Query::new(
            t("2026-11-30T00:00:00Z"),
            t("2026-12-02T00:00:00Z"),
            Group::parse(g).unwrap(),
        )
        .unwrap()
    };
    let total = sum(&q(""), rows.clone(), &keys);
    assert_eq!(total.len(), 1);
    assert_eq!(total[0].counts.requests, 31);
    let by_day = sum(&q("day"), rows.clone(), &keys);
    assert_eq!(
        by_day.iter().map(|l| l.counts.requests).collect::<Vec<_>>(),
        [15, 16]
    );
    let by_key_hour = sum(&q("key,hour"), rows.clone(), &keys);
    assert_eq!(
        by_key_hour
            .iter()
            .map(|l| l.counts.requests)
            .collect::<Vec<_>>(),
        [3, 4, 8, 16]
    );
    let mut only = q("model");
    only.keys = vec![a];
    let by_model = sum(&only, rows.clone(), &keys);
    assert_eq!(
        by_model
            .iter()
            .map(|l| (l.model.as_deref().unwrap().to_string(), l.counts.requests))
            .collect::<Vec<_>>(),
        [("m1".to_string(), 5), ("m2".to_string(), 2)]
    );
    let v = answer(&q("model"), &sum(&q("model"), rows, &keys), &keys);
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["model"].is_null()),
        "{v}"
    );
}
