//! Usage over time and quotas through the real server: hourly buckets summed by key, model,
//! day and hour; retention; quota refusals (429 `insufficient_quota`, `x-should-retry: false`)
//! and their reset at the next UTC day or month (the usage clock moved forward, not waited
//! for); a restart of the real binary keeping buckets and quota counts; `keygate usage` as a
//! table, JSON and CSV; two gateways on one real `redis-server` summing usage and holding one
//! quota.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::binary::*;
use common::raw_upstream::*;
use common::redis::Redis;
use common::*;
use http::Method;
use keygate::keys::annotations::KeyQuotas;
use keygate::keys::record::NewKey;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;

async fn get(addr: &str, key: &str, path: &str) -> Answer {
    send(
        Method::GET,
        &format!("http://{addr}{path}"),
        &[("authorization", &bearer(key))],
        "",
    )
    .await
}

/// `GET /v1/usage?query` on `g` as `admin`: the answer, which must be 200.
async fn usage(g: &TestGateway, admin: &str, query: &str) -> serde_json::Value {
    let a = get(&g.addr.to_string(), admin, &format!("/v1/usage?{query}")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    a.json()
}

fn chat_body(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hello there"}}]}}"#)
}

/// Moves the usage clock to 01:00 UTC of the next day, so the test's hours share one day.
fn to_next_day(g: &TestGateway) -> u64 {
    let now = g.gw.usage.clock.now().0;
    let target = (now / DAY + 1) * DAY + HOUR;
    g.gw.usage.clock.advance(Duration::from_secs(target - now));
    target
}

fn rows(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["data"].as_array().unwrap().clone()
}

/// (the row's `what`, its `requests`) for every row.
fn requests_by(v: &serde_json::Value, what: &str) -> Vec<(serde_json::Value, u64)> {
    rows(v)
        .iter()
        .map(|r| (r[what].clone(), r["requests"].as_u64().unwrap()))
        .collect()
}

#[tokio::test]
async fn buckets_sum_by_key_model_day_and_hour_and_filter() {
    let g = start_gateway("").await;
    let start = to_next_day(&g);
    let (a_id, a) = g.create_key(NewKey {
        name: "alpha".into(),
        metadata: BTreeMap::from([("team".to_string(), "search".to_string())]),
        ..Default::default()
    });
    // An allowlist: the gateway reads the request's model; alpha's is read from the answer.
    let (b_id, b) = g.create_key(NewKey {
        name: "beta".into(),
        models: vec!["m*".into()],
        ..Default::default()
    });
    let admin = g.key_with_scopes(&["usage"]);
    let mut tokens = 0;
    for (key, model) in [(&a, "m1"), (&a, "m1"), (&a, "m2"), (&b, "m1")] {
        let r = chat(&g, key, &chat_body(model)).await;
        assert_eq!(r.status, 200);
        tokens += r.json()["usage"]["total_tokens"].as_u64().unwrap();
    }
    // Refused for its scope: a client error of beta, with no model.
    assert_eq!(get(&g.addr.to_string(), &b, "/v1/usage").await.status, 403);
    g.gw.flush_usage().await;
    g.gw.usage.clock.advance(Duration::from_secs(HOUR));
    let r = chat(&g, &a, &chat_body("m1")).await;
    assert_eq!(r.status, 200);
    tokens += r.json()["usage"]["total_tokens"].as_u64().unwrap();
    let both = format!("key_id={a_id},{b_id}");

    let v = usage(&g, &admin, &both).await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["group_by"], serde_json::json!(["key"]));
    let data = rows(&v);
    assert_eq!(data.len(), 2, "{v}");
    let (alpha, beta) = (&data[0], &data[1]);
    assert_eq!(
        (&alpha["key_id"], &alpha["key_name"]),
        (&a_id.clone().into(), &"alpha".into())
    );
    assert_eq!(alpha["id"], alpha["key_id"], "the old names stay");
    assert_eq!(alpha["name"], "alpha");
    assert_eq!(alpha["requests"], 4);
    assert_eq!(beta["requests"], 2);
    assert_eq!(beta["client_errors"], 1);
    let sum = |f: &str| data.iter().map(|r| r[f].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("prompt_tokens") + sum("completion_tokens"), tokens);
    for r in &data {
        for f in [
            "estimated_tokens",
            "upstream_errors",
            "rate_limited",
            "quota_refused",
        ] {
            assert_eq!(r[f], 0, "{r}");
        }
    }

    let v = usage(&g, &admin, &format!("{both}&group_by=model")).await;
    assert_eq!(
        requests_by(&v, "model"),
        [
            (serde_json::Value::Null, 1),
            ("m1".into(), 4),
            ("m2".into(), 1)
        ],
        "{v}"
    );
    let hour1 = keygate::time::Timestamp(start).to_string();
    let hour2 = keygate::time::Timestamp(start + HOUR).to_string();
    let v = usage(&g, &admin, &format!("key_id={a_id}&group_by=hour")).await;
    assert_eq!(
        requests_by(&v, "hour"),
        [(hour1.clone().into(), 3), (hour2.clone().into(), 1)]
    );
    let v = usage(&g, &admin, &format!("key_id={a_id}&group_by=day")).await;
    assert_eq!(requests_by(&v, "day"), [(hour1[..10].into(), 4)]);
    let v = usage(
        &g,
        &admin,
        &format!("key_id={a_id}&group_by=key,model,hour"),
    )
    .await;
    let got: Vec<_> = rows(&v)
        .iter()
        .map(|r| (r["hour"].clone(), r["model"].clone(), r["requests"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (hour1.clone().into(), "m1".into(), 2.into()),
            (hour1.clone().into(), "m2".into(), 1.into()),
            (hour2.clone().into(), "m1".into(), 1.into()),
        ]
    );
    // Filters: a model, a label, a time range (whole hours).
    let v = usage(&g, &admin, &format!("{both}&model=m2")).await;
    assert_eq!(requests_by(&v, "key_id"), [(a_id.clone().into(), 1)]);
    let v = usage(&g, &admin, "meta=team:search").await;
    assert_eq!(requests_by(&v, "key_id"), [(a_id.clone().into(), 4)]);
    let v = usage(&g, &admin, &format!("{both}&from={hour2}")).await;
    assert_eq!(requests_by(&v, "key_id"), [(a_id.clone().into(), 1)]);
    assert_eq!(v["from"], hour2);
    let v = usage(&g, &admin, &format!("{both}&to={hour2}&group_by=")).await;
    assert_eq!(rows(&v).len(), 1, "no group_by: one row of everything");
    assert_eq!(rows(&v)[0]["requests"], 5);
    let v = usage(&g, &admin, &format!("{both}&to=-30m&group_by=hour")).await;
    assert_eq!(
        requests_by(&v, "hour"),
        [(hour1.clone().into(), 5)],
        "-30m from the clock"
    );

    // Bad parameters: 400 naming the parameter.
    for (query, param) in [
        ("from=yesterday", "from"),
        ("to=soon", "to"),
        ("from=-1h&to=-2h", "to"),
        ("group_by=week", "group_by"),
        ("group_by=day,hour", "group_by"),
        ("key_id=key_short", "key_id"),
        ("meta=team", "meta"),
        ("limit=10", "limit"),
    ] {
        let r = get(&g.addr.to_string(), &admin, &format!("/v1/usage?{query}")).await;
        assert_eq!(r.status, 400, "{query}");
        assert_eq!(r.error_code(), "invalid_request");
        let e = r.json();
        assert_eq!(e["error"]["param"], param, "{query}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(param),
            "{e}"
        );
    }
}

#[tokio::test]
async fn buckets_older_than_the_retention_are_dropped() {
    let g = start_gateway("[usage]\nretention = \"2h\"\n").await;
    let (id, key) = g.create_key(NewKey {
        name: "old".into(),
        ..Default::default()
    });
    let admin = g.key_with_scopes(&["usage"]);
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    g.gw.flush_usage().await;
    let kept = |g: &TestGateway| {
        let saved = g.gw.usage.saved().unwrap();
        saved.hours.values().any(|keys| keys.contains_key(&id))
    };
    assert!(kept(&g));
    assert_eq!(
        usage(&g, &admin, &format!("key_id={id}")).await["data"][0]["requests"],
        1
    );
    g.gw.usage.clock.advance(Duration::from_secs(3 * HOUR));
    g.gw.flush_usage().await;
    assert!(
        !kept(&g),
        "the bucket is gone, not only outside the default range"
    );
    let v = usage(&g, &admin, &format!("key_id={id}&from=-1d")).await;
    assert_eq!(rows(&v), Vec::<serde_json::Value>::new(), "{v}");
}

/// Asserts a quota refusal: 429 `insufficient_quota`, no retry, the reset in a header and the
/// message; returns the message.
fn assert_quota_refusal(r: &Answer, resets_at: &str) -> String {
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "insufficient_quota");
    let e = r.json();
    assert_eq!(e["error"]["type"], "insufficient_quota");
    assert_eq!(r.header("x-should-retry"), Some("false"));
    assert!(r.header("x-ratelimit-reset-quota").is_some());
    assert!(
        r.header("retry-after").is_none(),
        "an SDK would sleep until the reset"
    );
    let msg = e["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains(resets_at), "{msg}");
    msg
}

#[tokio::test]
async fn quotas_refuse_with_insufficient_quota_until_the_next_day_or_month() {
    let g = start_gateway("").await;
    let day = to_next_day(&g);
    let next_day = keygate::time::Timestamp(day + DAY - HOUR).to_string();
    let admin = g.key_with_scopes(&["admin", "usage"]);
    let (id, key) = g.create_key(NewKey {
        name: "daily".into(),
        quotas: KeyQuotas {
            requests_per_day: Some(2),
            tokens_per_day: Some(1_000),
            ..Default::default()
        },
        ..Default::default()
    });
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    let r = chat(&g, &key, CHAT).await;
    let msg = assert_quota_refusal(&r, &next_day);
    assert!(msg.contains("2 requests per day"), "{msg}");
    let reset = r.header("x-ratelimit-reset-quota").unwrap();
    assert!(
        reset.starts_with("22h") || reset.starts_with("23h"),
        "{reset}"
    );
    // The key shows it: used, nothing left, when it resets.
    let v = get(&g.addr.to_string(), &admin, &format!("/v1/api-keys/{id}"))
        .await
        .json();
    let q = &v["quota"]["requests_per_day"];
    assert_eq!(
        (
            q["limit"].as_u64(),
            q["used"].as_u64(),
            q["remaining"].as_u64()
        ),
        (Some(2), Some(2), Some(0)),
        "{v}"
    );
    assert_eq!(q["resets_at"], next_day.as_str());
    assert_eq!(v["quota"]["tokens_per_day"]["used"], 22, "{v}");
    assert!(v["quota"].get("tokens_per_month").is_none());
    // Counted as refused for a quota, not as rate limited.
    let u = usage(&g, &admin, &format!("key_id={id}")).await;
    assert_eq!(u["data"][0]["quota_refused"], 1, "{u}");
    assert_eq!(u["data"][0]["rate_limited"], 0);
    // The next UTC day: the daily quota starts again (flushed or not).
    g.gw.flush_usage().await;
    g.gw.usage.clock.advance(Duration::from_secs(DAY));
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);

    // A monthly token quota: the request that reaches it is served, the next is refused,
    // and a new day does not help, a new month does.
    let (_, monthly) = g.create_key(NewKey {
        name: "monthly".into(),
        quotas: KeyQuotas {
            tokens_per_month: Some(15),
            ..Default::default()
        },
        ..Default::default()
    });
    assert_eq!(
        chat(&g, &monthly, CHAT).await.status,
        200,
        "11 tokens of 15"
    );
    assert_eq!(
        chat(&g, &monthly, CHAT).await.status,
        200,
        "22 of 15: over once"
    );
    let now = g.gw.usage.clock.now();
    let month_end =
        keygate::usage::window::Window::Month(keygate::usage::window::month_of(now)).end();
    let msg = assert_quota_refusal(&chat(&g, &monthly, CHAT).await, &month_end.to_string());
    assert!(msg.contains("15 tokens per month"), "{msg}");
    g.gw.flush_usage().await;
    g.gw.usage.clock.advance(Duration::from_secs(DAY));
    if g.gw.usage.clock.now() < month_end {
        assert_eq!(
            chat(&g, &monthly, CHAT).await.status,
            429,
            "a new day, the same month"
        );
    }
    g.gw.usage.clock.advance(Duration::from_secs(
        month_end.0 - g.gw.usage.clock.now().0.min(month_end.0),
    ));
    assert_eq!(chat(&g, &monthly, CHAT).await.status, 200, "a new month");
}

fn write_config(
    dir: &std::path::Path,
    extra: &str,
    upstream: std::net::SocketAddr,
) -> std::path::PathBuf {
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\n[[upstream]]\nurl = \"http://{upstream}\"\n{extra}"),
    )
    .unwrap();
    cfg
}

fn keygate(cfg: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_restart_keeps_buckets_and_quota_counts_and_keygate_usage_prints_them() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "", mock.addr);
    let store = keygate::keys::store::KeyStore::new(dir.path().join("keys.json"));
    let (rec, token) = store
        .update(|f| {
            f.create(
                NewKey {
                    name: "app, \"quoted\"".into(),
                    quotas: KeyQuotas {
                        requests_per_day: Some(2),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "sk_kg",
                keygate::time::Timestamp::now(),
            )
        })
        .unwrap();
    let (key, id) = (token.plaintext, rec.id);
    // A state file as an earlier version wrote it: its counters are read and kept.
    std::fs::write(
        dir.path().join("keys.json.state"),
        format!(r#"{{"version":1,"saved_at":"2026-01-01T00:00:00Z","keys":{{"{id}":{{"requests":5,"client_errors":0,"upstream_errors":0,"rate_limited":0,"prompt_tokens":10,"completion_tokens":0,"last_used_at":"2026-01-01T00:00:00Z"}}}}}}"#),
    )
    .unwrap();

    let served = serve(&cfg);
    let url = served.url("/v1/chat/completions");
    let auth = bearer(&key);
    let headers = [("authorization", auth.as_str())];
    let post = || send(Method::POST, &url, &headers, CHAT);
    assert_eq!(post().await.status, 200);
    assert_eq!(post().await.status, 200);
    assert_eq!(post().await.status, 429);
    sigterm(&served.child);
    let mut served = served;
    assert!(served.child.wait().unwrap().success());

    // After the restart the day's count is back before the first request.
    let served = serve(&cfg);
    let r = send(
        Method::POST,
        &served.url("/v1/chat/completions"),
        &[("authorization", &bearer(&key))],
        CHAT,
    )
    .await;
    assert_quota_refusal(&r, "T00:00:00Z");
    sigterm(&served.child);
    let mut served = served;
    assert!(served.child.wait().unwrap().success());

    let show: serde_json::Value =
        serde_json::from_str(&keygate(&cfg, &["keys", "show", &id, "--json"])).unwrap();
    assert_eq!(show["usage"]["requests"], 5 + 4, "{show}");
    assert_eq!(show["usage"]["quota_refused"], 2);
    assert_eq!(show["quota"]["requests_per_day"]["used"], 2, "{show}");
    assert_eq!(show["quota"]["requests_per_day"]["remaining"], 0);
    let text = keygate(&cfg, &["keys", "show", &id]);
    assert!(
        text.contains("quota.requests_per_day:") && text.contains("2 of 2 used, 0 left"),
        "{text}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&keygate(&cfg, &["usage", "--json"])).unwrap();
    let row = &json["data"][0];
    assert_eq!(row["key_id"], id.as_str(), "{json}");
    assert_eq!(
        (row["requests"].as_u64(), row["quota_refused"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(row["prompt_tokens"], 4);
    let by_model: serde_json::Value =
        serde_json::from_str(&keygate(&cfg, &["usage", "--by", "model,day", "--json"])).unwrap();
    let models: Vec<_> = by_model["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["model"].clone(), r["requests"].clone()))
        .collect();
    assert_eq!(
        models,
        [
            (serde_json::Value::Null, 2.into()),
            ("llama-3.1-8b-instruct".into(), 2.into())
        ],
        "{by_model}"
    );

    let table = keygate(&cfg, &["usage", "--since", "1d"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("KEY_ID") && lines[0].contains("QUOTA_REFUSED"),
        "{table}"
    );
    assert!(
        lines[1].contains(&id) && lines[1].contains("app, \"quoted\""),
        "{table}"
    );
    let csv = keygate(&cfg, &["usage", "--csv", "--key", &id]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("key_id,key_name,requests,prompt_tokens,completion_tokens,estimated_tokens,client_errors,upstream_errors,rate_limited,quota_refused")
    );
    assert_eq!(
        lines.next(),
        Some(format!(r#"{id},"app, ""quoted""",4,4,18,0,0,0,0,2"#).as_str())
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["usage", "--by", "week"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("week"));
}

#[tokio::test]
async fn two_gateways_on_one_redis_sum_usage_and_hold_one_quota() {
    let redis = Redis::start().await;
    let cluster = format!(
        "[cluster]\nbackend = \"redis\"\nredis_url = \"{}\"\n[usage]\nretention = \"30d\"\n",
        redis.url()
    );
    let a = start_gateway(&cluster).await;
    let mock_b = start_mock().await;
    let b_toml = format!(
        "[keys]\nfile = \"{}\"\npoll_interval = \"100ms\"\n[[upstream]]\nurl = \"http://{}\"\n{cluster}",
        a.gw.config().keys.file.display(),
        mock_b.addr
    );
    let b = start_gateway_raw(mock_b, &b_toml).await;
    let admin = a.key_with_scopes(&["admin", "usage"]);
    let (id, key) = a.create_key(NewKey {
        name: "shared".into(),
        quotas: KeyQuotas {
            requests_per_day: Some(4),
            ..Default::default()
        },
        ..Default::default()
    });
    b.gw.reload_keys().unwrap();
    // Both connected to Redis (the usage store is written through the limit backend's connection).
    for g in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(10), || async {
                g.gw.redis.as_ref().unwrap().connection().is_some()
            })
            .await
        );
    }
    for g in [&a, &b, &a, &b] {
        assert_eq!(chat(g, &key, CHAT).await.status, 200);
    }
    // Each gateway learns the other's count within about a second, then both refuse.
    for g in [&a, &b] {
        let used = || async {
            let v = get(&g.addr.to_string(), &admin, &format!("/v1/api-keys/{id}"))
                .await
                .json();
            v["quota"]["requests_per_day"]["used"] == 4
        };
        assert!(eventually(Duration::from_secs(10), used).await);
        assert_quota_refusal(&chat(g, &key, CHAT).await, "T00:00:00Z");
    }
    // Usage summed over both, from either; the key's lifetime usage too.
    for g in [&a, &b] {
        let summed = || async {
            let v = usage(g, &admin, &format!("key_id={id}")).await;
            v["data"][0]["requests"] == 6 && v["data"][0]["quota_refused"] == 2
        };
        assert!(
            eventually(Duration::from_secs(10), summed).await,
            "{}",
            usage(g, &admin, &format!("key_id={id}")).await
        );
        let v = get(&g.addr.to_string(), &admin, &format!("/v1/api-keys/{id}"))
            .await
            .json();
        assert_eq!(v["usage"]["requests"], 6, "{v}");
        assert!(v["last_used_at"].is_string());
    }
    // The CLI reads Redis too.
    a.gw.flush_usage().await;
    b.gw.flush_usage().await;
    let cli: serde_json::Value =
        serde_json::from_str(&keygate(&a.config_path, &["usage", "--key", &id, "--json"])).unwrap();
    assert_eq!(cli["data"][0]["requests"], 6, "{cli}");
    let show: serde_json::Value =
        serde_json::from_str(&keygate(&a.config_path, &["keys", "show", &id, "--json"])).unwrap();
    assert_eq!(show["quota"]["requests_per_day"]["used"], 4, "{show}");
    assert_eq!(show["usage"]["requests"], 6, "{show}");
    // Buckets expire with the retention.
    let mut conn = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let hour = keygate::usage::redis::Names::new("keygate")
        .hour(keygate::usage::window::hour_of(a.gw.usage.clock.now()));
    let ttl: i64 = ::redis::cmd("TTL").arg(&hour).query(&mut conn).unwrap();
    assert!(
        (29 * DAY as i64..=30 * DAY as i64 + HOUR as i64).contains(&ttl),
        "{hour}: {ttl}"
    );
    let last: Option<f64> = ::redis::cmd("ZSCORE")
        .arg("{keygate}:usage:lastused")
        .arg(&id)
        .query(&mut conn)
        .unwrap();
    assert!(last.is_some());
}

#[tokio::test]
async fn usage_counted_while_redis_is_down_is_written_when_it_returns() {
    let mut redis = Redis::start().await;
    let cluster = format!(
        "[cluster]\nbackend = \"redis\"\nredis_url = \"{}\"\non_backend_error = \"allow\"\ntimeout = \"100ms\"\n",
        redis.url()
    );
    let g = start_gateway(&cluster).await;
    let admin = g.key_with_scopes(&["usage"]);
    let (id, key) = g.create_key(NewKey {
        name: "outage".into(),
        ..Default::default()
    });
    assert!(
        eventually(Duration::from_secs(10), || async {
            g.gw.redis.as_ref().unwrap().connection().is_some()
        })
        .await
    );
    redis.kill();
    for _ in 0..3 {
        assert_eq!(
            chat(&g, &key, CHAT).await.status,
            200,
            "allow: served while Redis is down"
        );
    }
    g.gw.flush_usage().await; // fails or is skipped: the counts stay here
    let r = get(&g.addr.to_string(), &admin, "/v1/usage").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "usage_store_unavailable");
    redis.spawn().await;
    // Written to Redis once it answers...
    let client = ::redis::Client::open(redis.url()).unwrap();
    let total = || {
        let mut conn = client.get_connection().unwrap();
        ::redis::cmd("HGET")
            .arg("{keygate}:usage:total")
            .arg(format!("{id}|requests"))
            .query::<Option<u64>>(&mut conn)
            .unwrap()
    };
    assert!(eventually(Duration::from_secs(15), || async { total() == Some(3) }).await);
    // ...and counted once.
    let r = get(
        &g.addr.to_string(),
        &admin,
        &format!("/v1/usage?key_id={id}"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"][0]["requests"], 3);
}

/// The key's token quota `kind` used so far, as the management API shows it.
async fn quota_used(g: &TestGateway, admin: &str, id: &str, kind: &str) -> u64 {
    let v = get(&g.addr.to_string(), admin, &format!("/v1/api-keys/{id}"))
        .await
        .json();
    v["quota"][kind]["used"]
        .as_u64()
        .unwrap_or_else(|| panic!("{v}"))
}

/// Whether the key's daily token quota has been charged something (the charge lands when the
/// answer's body ends, just after the client has it).
async fn charged(g: &TestGateway, admin: &str, id: &str) -> bool {
    eventually(Duration::from_secs(5), || async move {
        quota_used(g, admin, id, "tokens_per_day").await > 0
    })
    .await
}

fn token_quota(per_day: u64) -> NewKey {
    NewKey {
        name: "token-quota".into(),
        quotas: KeyQuotas {
            tokens_per_day: Some(per_day),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn a_token_quota_counts_streams_whether_or_not_the_upstream_reports_usage() {
    const STREAM: &str = r#"{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"Say hello in five words."}],"stream":true}"#;
    // The built-in mock reports a stream's usage only when asked, as vLLM does: for a key
    // with a token quota (and no token limit) the gateway asks, and the client that did not
    // ask never sees the answer.
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, key) = g.create_key(token_quota(1_000_000));
    let r = chat(&g, &key, STREAM).await;
    assert_eq!(r.status, 200);
    assert!(
        !String::from_utf8_lossy(&r.body).contains("\"usage\""),
        "the client saw usage it did not ask for"
    );
    assert!(
        charged(&g, &admin, &id).await,
        "a whole stream was not charged to the token quota"
    );

    // An upstream that never reports usage: the request's estimate is charged, as the
    // minute's reservation stands (finishing a stream is never cheaper than leaving it).
    let m = RawMock::start(Mode::Sse {
        interval: Duration::ZERO,
        count: 2,
    })
    .await;
    let g = gateway_for(&m, "", "").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, key) = g.create_key(token_quota(1_000_000));
    let r = chat(&g, &key, STREAM).await;
    assert_eq!(r.status, 200);
    assert!(
        charged(&g, &admin, &id).await,
        "a stream without usage was not charged to the token quota"
    );
    // What the quota was charged is what the key's usage shows, as the gateway's estimate
    // (it showed 0 tokens while the quota had been charged its estimate).
    let quota = quota_used(&g, &admin, &id, "tokens_per_day").await;
    let v = get(&g.addr.to_string(), &admin, &format!("/v1/api-keys/{id}"))
        .await
        .json();
    let u = &v["usage"];
    let shown = u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap();
    assert_eq!(shown, quota, "{v}");
    assert_eq!(u["estimated_tokens"].as_u64().unwrap(), quota, "{v}");
    assert!(quota >= 256, "the default completion budget: {quota}");
}

/// Requests admitted together each hold their estimate against a token quota while they run.
/// Before: ten requests sent at once, each estimated at about 310 tokens, were all served
/// against a quota of 1,000 tokens a day (the tokens only counted when they ended). Those
/// the holds refuse are told to retry, not that the quota is used up.
#[tokio::test]
async fn requests_running_together_cannot_all_pass_a_token_quota() {
    let g = start_gateway("").await;
    let (_, key) = g.create_key(token_quota(1_000));
    let body = r#"{"model":"llama-3.1-8b-instruct","max_tokens":300,"messages":[]}"#;
    let url = g.url("/v1/chat/completions");
    let auth = bearer(&key);
    let all = (0..10).map(|_| {
        let (url, auth) = (url.clone(), auth.clone());
        tokio::spawn(async move {
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
                ("x-mock-delay-ms", "400"),
            ];
            send(Method::POST, &url, &headers, body).await
        })
    });
    let mut served = 0;
    let mut refused = 0;
    for a in all.collect::<Vec<_>>() {
        let a = a.await.unwrap();
        match a.status.as_u16() {
            200 => served += 1,
            429 => {
                // Not used up: held by the running ones. A retry helps, so the answer is not
                // the quota's (which tells SDKs to stop until the window resets).
                assert_eq!(a.error_code(), "concurrency_limit_exceeded", "{:?}", a.body);
                assert_eq!(a.header("retry-after"), Some("1"));
                assert_eq!(a.header("x-should-retry"), None);
                assert_eq!(a.header("x-ratelimit-reset-quota"), None);
                let m = a.json()["error"]["message"].as_str().unwrap().to_string();
                assert!(m.contains("still running hold"), "{m}");
                refused += 1;
            }
            s => panic!("{s}: {:?}", a.body),
        }
    }
    // Each holds ~310 of 1,000: the fourth is the one that reaches the quota.
    assert!(
        (1..=4).contains(&served),
        "{served} served, {refused} refused"
    );
    assert_eq!(served + refused, 10);
    // Once they ended, what they held is free again: the quota has room (the mock's usage
    // is a few tokens each).
    let a = send(
        Method::POST,
        &url,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
}

#[tokio::test]
async fn the_responses_apis_usage_is_charged() {
    const ANSWER: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 106\r\n\r\n\
        {\"id\":\"resp_1\",\"object\":\"response\",\"usage\":{\"input_tokens\":1200,\"output_tokens\":1000,\"total_tokens\":2200}}";
    let m = RawMock::start(Mode::Bytes(ANSWER)).await;
    let g = gateway_for(&m, "", "").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, key) = g.create_key(token_quota(3_000));
    let respond = || async {
        send(
            Method::POST,
            &g.url("/v1/responses"),
            &[
                ("authorization", &bearer(&key)),
                ("content-type", "application/json"),
            ],
            r#"{"model":"llama-3.1-8b-instruct","input":"hi"}"#,
        )
        .await
    };
    assert_eq!(respond().await.status, 200);
    assert_eq!(
        quota_used(&g, &admin, &id, "tokens_per_day").await,
        2200,
        "input and output tokens are the request's usage"
    );
    assert_eq!(
        respond().await.status,
        200,
        "the request that reaches the quota is served"
    );
    let r = respond().await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "insufficient_quota");
}
