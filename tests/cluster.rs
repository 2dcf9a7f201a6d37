//! Cluster mode against a real `redis-server` on a free loopback port: limits held jointly by
//! two gateways, the failure policies when Redis dies and recovery when it returns, and token
//! limits (local and shared) charged with real usage, streams included.

mod common;

use common::*;
use keygate::store::{KeyLimits, NewKey};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis { child: None, port };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        assert!(
            eventually(Duration::from_secs(10), || async move { ping(port).await }).await,
            "redis-server did not start"
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"+PONG\r\n"
}

/// Two gateways on one key file, sharing `redis` with `policy`.
async fn pair(redis: &Redis, policy: &str) -> (TestGateway, TestGateway) {
    let cluster = format!("[cluster]\nbackend = \"redis\"\nredis_url = \"{}\"\non_backend_error = \"{policy}\"\ntimeout = \"100ms\"\n", redis.url());
    let a = start_gateway(&cluster).await;
    let keys = a.gw.config().keys.file.clone();
    let mock_b = start_mock().await;
    let b_toml = format!(
        "[keys]\nfile = \"{}\"\npoll_interval = \"100ms\"\n[[upstream]]\nurl = \"http://{}\"\n{cluster}",
        keys.display(),
        mock_b.addr
    );
    let b = start_gateway_raw(mock_b, &b_toml).await;
    // Wait until both are connected to Redis.
    for g in [&a, &b] {
        let probe = g.key();
        assert!(
            eventually(Duration::from_secs(10), || async {
                chat(g, &probe, CHAT).await.status == 200
            })
            .await
        );
    }
    (a, b)
}

#[tokio::test]
async fn two_gateways_share_one_request_limit() {
    let redis = Redis::start().await;
    let (a, b) = pair(&redis, "deny").await;
    let key = a.key_with_limits(KeyLimits {
        requests_per_minute: Some(20),
        ..Default::default()
    });
    b.gw.reload_keys().unwrap();
    let urls = (0..40)
        .map(|i| {
            if i % 2 == 0 {
                a.url("/v1/chat/completions")
            } else {
                b.url("/v1/chat/completions")
            }
        })
        .collect();
    let codes = parallel_chat_statuses(urls, &key).await;
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 20, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 20);
}

#[tokio::test]
async fn in_flight_cap_holds_across_both() {
    let redis = Redis::start().await;
    let (a, b) = pair(&redis, "deny").await;
    let key = a.key_with_limits(KeyLimits {
        max_in_flight: Some(2),
        ..Default::default()
    });
    b.gw.reload_keys().unwrap();
    let stream = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"a b c"}]}"#;
    let hold = |g: &TestGateway| {
        http::Request::post(g.url("/v1/chat/completions"))
            .header("authorization", bearer(&key))
            .header("x-mock-interval-ms", "400")
            .body(http_body_util::Full::new(bytes::Bytes::from(stream)))
            .unwrap()
    };
    let h1 = client().request(hold(&a)).await.unwrap();
    let h2 = client().request(hold(&b)).await.unwrap();
    assert_eq!((h1.status().as_u16(), h2.status().as_u16()), (200, 200));
    for g in [&a, &b] {
        let r = chat(g, &key, CHAT).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.error_code(), "concurrency_limit_exceeded");
    }
    drop(h1);
    assert!(
        eventually(Duration::from_secs(3), || async {
            chat(&b, &key, CHAT).await.status == 200
        })
        .await,
        "a slot released on one gateway is usable on the other"
    );
    drop(h2);
}

#[tokio::test]
async fn redis_down_follows_the_policy_and_recovers() {
    let mut redis = Redis::start().await;
    let deny = pair(&redis, "deny").await.0;
    let allow = pair(&redis, "allow").await.0;
    let local = pair(&redis, "local").await.0;
    let k_deny = deny.key();
    let k_allow = allow.key();
    let k_local = local.key_with_limits(KeyLimits {
        requests_per_minute: Some(3),
        ..Default::default()
    });
    assert_eq!(chat(&deny, &k_deny, CHAT).await.status, 200);

    redis.kill();
    let r = chat(&deny, &k_deny, CHAT).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "overloaded");
    for _ in 0..5 {
        assert_eq!(
            chat(&allow, &k_allow, CHAT).await.status,
            200,
            "allow: no limit while Redis is down"
        );
    }
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(chat(&local, &k_local, CHAT).await.status.as_u16());
        }
        v
    };
    assert_eq!(
        codes,
        [200, 200, 200, 429, 429],
        "local: this replica's own limit of 3"
    );
    // While the breaker is open, refusals are immediate, not a timeout each.
    let t = std::time::Instant::now();
    for _ in 0..5 {
        let _ = chat(&deny, &k_deny, CHAT).await;
    }
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );

    redis.spawn().await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            chat(&deny, &k_deny, CHAT).await.status == 200
        })
        .await,
        "recovers when Redis returns"
    );
}

fn remaining_tokens(a: &Answer) -> i64 {
    a.header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn token_limits_charge_real_usage_for_plain_and_streamed_requests() {
    let g = start_gateway("").await;
    let (id, key) = g.create_key(NewKey {
        name: "tokens".into(),
        limits: KeyLimits {
            tokens_per_minute: Some(100_000),
            ..Default::default()
        },
        ..Default::default()
    });
    let plain =
        r#"{"model":"m","max_tokens":1000,"messages":[{"role":"user","content":"one two three"}]}"#;
    let a = chat(&g, &key, plain).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-ratelimit-limit-tokens"), Some("100000"));
    let first = remaining_tokens(&a);
    // Reserved max_tokens plus a prompt estimate while it ran.
    assert!((98_900..99_000).contains(&first), "{first}");
    // Settled to the real usage (3 prompt + 10 completion): the second reservation starts
    // from ~100000 - 13, so it lands ~13 below the first; unrefunded it would be ~1021 below.
    let b = chat(&g, &key, plain).await;
    let second = remaining_tokens(&b);
    assert!(
        (first - 40..=first - 5).contains(&second),
        "the first request was charged its real usage: {first} -> {second}"
    );

    // A stream whose client did not ask for usage: the gateway asks, counts it, hides it.
    let stream = r#"{"model":"m","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"four five"}]}"#;
    let before =
        g.gw.live()
            .keys
            .as_ref()
            .unwrap()
            .state_of(&id)
            .unwrap()
            .usage
            .snapshot();
    let s = chat(&g, &key, stream).await;
    assert_eq!(s.status, 200);
    let text = String::from_utf8_lossy(&s.body).to_string();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("\"usage\":{"),
        "the client sees no usage chunk: {text}"
    );
    let sent = g.mock.recorder.take();
    let upstream_body: serde_json::Value =
        serde_json::from_slice(&sent.last().unwrap().body).unwrap();
    assert_eq!(upstream_body["stream_options"]["include_usage"], true);
    let after =
        g.gw.live()
            .keys
            .as_ref()
            .unwrap()
            .state_of(&id)
            .unwrap()
            .usage
            .snapshot();
    assert_eq!(after.prompt_tokens - before.prompt_tokens, 2);
    assert_eq!(after.completion_tokens - before.completion_tokens, 9);

    // A client that asked for usage still gets it.
    let asked = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#;
    let s = chat(&g, &key, asked).await;
    assert!(String::from_utf8_lossy(&s.body).contains("\"usage\":{"));
}

#[tokio::test]
async fn token_limit_refuses_with_429_and_token_headers() {
    let g = start_gateway("").await;
    let (_, key) = g.create_key(NewKey {
        name: "small".into(),
        limits: KeyLimits {
            tokens_per_minute: Some(100),
            ..Default::default()
        },
        ..Default::default()
    });
    let body = r#"{"model":"m","max_tokens":90,"messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(chat(&g, &key, body).await.status, 200);
    let a = chat(&g, &key, body).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.error_code(), "rate_limit_exceeded");
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tokens per minute"));
    assert_eq!(a.header("x-ratelimit-limit-tokens"), Some("100"));
    assert!(a.header("x-ratelimit-reset-tokens").is_some());
    assert!(a.header("retry-after-ms").is_some());
}

#[tokio::test]
async fn token_buckets_are_shared_through_redis() {
    let redis = Redis::start().await;
    let (a, b) = pair(&redis, "deny").await;
    let key = a.key_with_limits(KeyLimits {
        tokens_per_minute: Some(100),
        ..Default::default()
    });
    b.gw.reload_keys().unwrap();
    let body = r#"{"model":"m","max_tokens":90,"messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(chat(&a, &key, body).await.status, 200);
    // Settling happens in the background: wait until B sees A's refund, then drain B.
    let r = chat(&b, &key, body).await;
    assert_eq!(r.status, 429, "B sees what A reserved and used");
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("100"));
}
