//! Cluster mode against a real `redis-server` on a free loopback port: limits held jointly by
//! two gateways (over TLS too), the failure policies when Redis dies or stalls and recovery
//! when it returns, in-flight leases renewed while held and freed after a crash, the breaker's
//! single probe, what is logged, and token limits (local and shared) charged with real usage,
//! streams included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::binary::*;
use common::redis::*;
use common::*;
use keygate::keys::record::{KeyLimits, NewKey};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The `[cluster]` section for `url` with `policy`, plus `extra` lines.
fn cluster_toml(url: &str, policy: &str, extra: &str) -> String {
    format!("[cluster]\nbackend = \"redis\"\nredis_url = \"{url}\"\non_backend_error = \"{policy}\"\n{extra}")
}

/// Whether `g` answers a chat with `key` within 10 s (once it has connected to Redis).
async fn answers(g: &TestGateway, key: &str) -> bool {
    eventually(Duration::from_secs(10), || async {
        chat(g, key, CHAT).await.status == 200
    })
    .await
}

/// Two gateways on one key file, sharing `redis` with `policy`.
async fn pair(redis: &Redis, policy: &str) -> (TestGateway, TestGateway) {
    pair_with(&redis.url(), policy, "timeout = \"100ms\"\n").await
}

/// Two gateways on one key file, sharing the Redis at `url` with `policy` and `extra`
/// `[cluster]` lines.
async fn pair_with(url: &str, policy: &str, extra: &str) -> (TestGateway, TestGateway) {
    let cluster = cluster_toml(url, policy, extra);
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
        assert!(answers(g, &probe).await);
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
    // from ~100000 - 13, so it lands up to 13 below the first (less as the bucket refills,
    // 1667 a second); unrefunded it would be ~1021 below.
    let b = chat(&g, &key, plain).await;
    let second = remaining_tokens(&b);
    assert!(
        (first - 40..=first).contains(&second),
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

fn cap_one() -> KeyLimits {
    KeyLimits {
        max_in_flight: Some(1),
        ..Default::default()
    }
}

/// A request that holds its slot for `ms` (the mock waits that long before answering).
async fn slow_chat(url: String, key: &str, ms: u64) -> Option<u16> {
    let req = http::Request::post(url)
        .header("authorization", bearer(key))
        .header("x-mock-delay-ms", ms.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::from(CHAT)))
        .unwrap();
    client()
        .request(req)
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test]
async fn a_redis_stall_leaves_no_phantom_in_flight_slot() {
    let redis = Redis::start_with(&["--enable-debug-command", "yes"], None).await;
    // The default timeout (50 ms) and lease (30 s): a slot left behind would outlive the test.
    let g = start_gateway(&cluster_toml(&redis.url(), "allow", "")).await;
    let port = redis.port;
    for stall in ["DEBUG SLEEP", "SIGSTOP"] {
        let key = g.key_with_limits(cap_one());
        assert!(answers(&g, &key).await);
        let sleeper = match stall {
            "DEBUG SLEEP" => Some(tokio::spawn(async move {
                command(port, &["DEBUG", "SLEEP", "0.6"], Duration::from_secs(10)).await
            })),
            _ => {
                redis.signal("STOP");
                None
            }
        };
        assert!(
            eventually(Duration::from_secs(5), || async {
                !ping(port, Duration::from_millis(30)).await
            })
            .await,
            "{stall}: Redis stalls"
        );
        // Both calls time out (the policy lets the request through), but the acquire was
        // written: Redis runs it when it resumes.
        let during = chat(&g, &key, CHAT).await;
        assert_eq!(during.status, 200, "{stall}");
        match sleeper {
            Some(s) => assert_eq!(s.await.unwrap().as_deref(), Some("+OK\r\n")),
            None => redis.signal("CONT"),
        }
        assert!(ping(port, Duration::from_secs(5)).await);
        assert!(
            eventually(Duration::from_secs(5), || async {
                chat(&g, &key, CHAT).await.status == 200
            })
            .await,
            "{stall}: the cap-1 key is usable again (no slot left behind for the lease)"
        );
    }
}

#[tokio::test]
async fn a_long_request_keeps_its_slot_and_a_killed_gateway_frees_it() {
    let redis = Redis::start().await;
    let cluster = cluster_toml(&redis.url(), "deny", "lease = \"1s\"\n");
    let a = start_gateway(&cluster).await;
    let key = a.key_with_limits(cap_one());
    assert!(answers(&a, &key).await);
    // Gateway B: the real binary on the same key file and Redis.
    let mock = start_mock().await;
    let cfg = a.dir.path().join("b.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"{}\"\n[[upstream]]\nurl = \"http://{}\"\n{cluster}",
            a.gw.config().keys.file.display(),
            mock.addr
        ),
    )
    .unwrap();
    let mut served_b = serve(&cfg);
    let b_addr = served_b.addr;
    let b = &mut served_b.child;
    let b_url = format!("http://{b_addr}/v1/chat/completions");
    assert!(
        eventually(Duration::from_secs(10), || async {
            send(
                http::Method::POST,
                &b_url,
                &[("authorization", &bearer(&key))],
                CHAT,
            )
            .await
            .status
                == 200
        })
        .await,
        "B is connected to Redis"
    );
    // A request on B that lasts many leases.
    let long = tokio::spawn({
        let (url, key) = (b_url.clone(), key.clone());
        async move {
            // The slot of B's last request is released in the background: until it is,
            // this one is refused at once.
            loop {
                let r = slow_chat(url.clone(), &key, 8_000).await;
                if r != Some(429) {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            chat(&a, &key, CHAT).await.status == 429
        })
        .await,
        "B's request holds the key's one slot"
    );
    // Nothing to await here: the slot must survive several leases.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let r = chat(&a, &key, CHAT).await;
    assert_eq!(r.status, 429, "renewed while the request runs");
    assert_eq!(r.error_code(), "concurrency_limit_exceeded");
    assert!(!long.is_finished());

    b.kill().unwrap();
    b.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(6), || async {
            chat(&a, &key, CHAT).await.status == 200
        })
        .await,
        "a killed gateway's slot frees within about one lease"
    );
    long.abort();
}

#[tokio::test]
async fn limits_are_shared_over_rediss() {
    let redis = Redis::start_with(&["--tls-auth-clients", "no"], Some(TlsFiles::new())).await;
    let ca = redis.tls.as_ref().unwrap().ca.display().to_string();
    let (a, b) = pair_with(&redis.url(), "deny", &format!("ca_file = \"{ca}\"\n")).await;
    let key = a.key_with_limits(KeyLimits {
        requests_per_minute: Some(20),
        ..Default::default()
    });
    b.gw.reload_keys().unwrap();
    let urls = (0..40)
        .map(|i| {
            let g = if i % 2 == 0 { &a } else { &b };
            g.url("/v1/chat/completions")
        })
        .collect();
    let codes = parallel_chat_statuses(urls, &key).await;
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 20, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 20);
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_redis_asks() {
    let redis = Redis::start_with(&["--tls-auth-clients", "yes"], Some(TlsFiles::new())).await;
    let t = redis.tls.as_ref().unwrap();
    let ca = format!("ca_file = \"{}\"\n", t.ca.display());
    let with_cert = format!(
        "{ca}client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        t.client_cert.display(),
        t.client_key.display()
    );
    let g = start_gateway(&cluster_toml(&redis.url(), "deny", &with_cert)).await;
    let key = g.key();
    assert!(
        answers(&g, &key).await,
        "connected with the client certificate"
    );
    let without = start_gateway(&cluster_toml(&redis.url(), "deny", &ca)).await;
    let key = without.key();
    let r = chat(&without, &key, CHAT).await;
    assert_eq!(
        r.status, 503,
        "without one, Redis refuses and `deny` applies"
    );
    assert_eq!(r.error_code(), "overloaded");
}

#[tokio::test]
async fn a_backend_that_cannot_be_built_stops_check_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let cases = [
        (
            "redis://127.0.0.1:notaport/",
            String::new(),
            "cluster.redis_url",
        ),
        (
            "rediss://127.0.0.1:6379/",
            format!("ca_file = \"{}\"\n", garbage.display()),
            "cluster.ca_file",
        ),
        (
            "rediss://127.0.0.1:6379/#insecure",
            String::new(),
            "cluster.redis_url",
        ),
    ];
    for (url, extra, field) in cases {
        let cfg = dir.path().join("gateway.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n{}",
                cluster_toml(url, "deny", &extra)
            ),
        )
        .unwrap();
        let check = Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("check")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&check.stderr);
        assert!(!check.status.success(), "check passed {url}");
        assert!(err.contains(field), "{url}: {err}");
        // `serve` refuses too, before listening: no silent per-process limits.
        let serve = Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("serve")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&serve.stderr);
        assert!(!serve.status.success(), "serve ran with {url}");
        assert!(err.contains(field), "{url}: {err}");
        assert!(String::from_utf8_lossy(&serve.stdout).is_empty());
    }
}

/// A TCP proxy in front of Redis that records when each script call (`EVALSHA`) passes, and
/// can swallow everything (a Redis that no longer answers).
struct Proxy {
    port: u16,
    calls: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
    blackhole: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn proxy(to: u16) -> Proxy {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = Proxy {
        port: listener.local_addr().unwrap().port(),
        calls: Default::default(),
        blackhole: Default::default(),
    };
    let (calls, blackhole) = (p.calls.clone(), p.blackhole.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut ur, &mut cw).await;
            });
            let (calls, blackhole) = (calls.clone(), blackhole.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut window: Vec<u8> = Vec::new();
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    // Count across reads: keep the last bytes of the previous one.
                    window.extend_from_slice(&buf[..n]);
                    let found = window.windows(7).filter(|w| w == b"EVALSHA").count();
                    {
                        let mut c = calls.lock().unwrap();
                        for _ in 0..found {
                            c.push(std::time::Instant::now());
                        }
                    }
                    let keep = window.len().min(6);
                    window.drain(..window.len() - keep);
                    if !blackhole.load(Ordering::Relaxed) && uw.write_all(&buf[..n]).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    p
}

#[tokio::test]
async fn an_open_breaker_lets_one_probe_through_per_interval_and_deny_reports_the_limit() {
    use std::sync::atomic::Ordering;
    let redis = Redis::start().await;
    let proxy = proxy(redis.port).await;
    let g = start_gateway(&cluster_toml(
        &format!("redis://127.0.0.1:{}/", proxy.port),
        "deny",
        "",
    ))
    .await;
    let key = g.key_with_limits(KeyLimits {
        requests_per_minute: Some(600),
        ..Default::default()
    });
    assert!(answers(&g, &key).await);
    // Redis stops answering; four callers keep asking for 5 s (two and a half intervals).
    proxy.blackhole.store(true, Ordering::Relaxed);
    proxy.calls.lock().unwrap().clear();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (url, auth) = (g.url("/v1/chat/completions"), bearer(&key));
            tokio::spawn(async move {
                let mut last = None;
                while std::time::Instant::now() < until {
                    let a = send(http::Method::POST, &url, &[("authorization", &auth)], CHAT).await;
                    last = Some(a);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                last.unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for c in callers {
        answers.push(c.await.unwrap());
    }
    // Calls close together belong to one moment: the failures that opened the breaker, then
    // one group per interval, which must be a single probe.
    let calls = proxy.calls.lock().unwrap().clone();
    let mut groups: Vec<Vec<std::time::Instant>> = Vec::new();
    for t in calls {
        match groups.last_mut() {
            Some(g) if t - *g.last().unwrap() < Duration::from_millis(500) => g.push(t),
            _ => groups.push(vec![t]),
        }
    }
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    assert!(sizes.len() >= 2, "no probe in 5 s: {sizes:?}");
    assert!(
        sizes[1..].iter().all(|n| *n == 1),
        "one probe per open interval: {sizes:?}"
    );
    // The `deny` refusal carries the key's limit headers, like every authenticated answer.
    let r = &answers[0];
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "overloaded");
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("600"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    assert!(r.header("x-ratelimit-reset-requests").is_some());
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn a_missing_redis_password_is_logged_once_with_its_reason() {
    let redis = Redis::start_with(&["--requirepass", "s3cret-pass"], None).await;
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock().await;
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\n[log]\nformat = \"json\"\n[[upstream]]\nurl = \"http://{}\"\n{}",
            mock.addr,
            cluster_toml(&redis.url(), "deny", "")
        ),
    )
    .unwrap();
    let (key, _) = cli_create_key(&cfg, "nopass");
    let mut served = serve(&cfg);
    let (addr, logs) = (served.addr, std::sync::Arc::clone(&served.logs));
    let child = &mut served.child;
    // Requests for three breaker intervals: every probe fails the same way.
    let url = format!("http://{addr}/v1/chat/completions");
    let until = std::time::Instant::now() + Duration::from_millis(6_500);
    while std::time::Instant::now() < until {
        let r = send(
            http::Method::POST,
            &url,
            &[("authorization", &bearer(&key))],
            CHAT,
        )
        .await;
        assert_eq!(r.status, 503);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let lines = logs.lock().unwrap().clone();
    let loud: Vec<&String> = lines
        .iter()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            matches!(v["level"].as_str(), Some("WARN" | "ERROR")) && l.contains("NOAUTH")
        })
        .collect();
    assert_eq!(loud.len(), 1, "the reason, once: {lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("s3cret-pass")));
}

/// Redis drops every client connection (a restart, `CLIENT KILL`, its idle `timeout`): the
/// next request on each gateway reconnects and is answered, not refused by the failure policy.
#[tokio::test]
async fn a_connection_redis_dropped_is_reopened_without_failing_a_request() {
    let redis = Redis::start().await;
    let (a, b) = pair(&redis, "deny").await;
    let key = a.key_with_limits(KeyLimits {
        requests_per_minute: Some(100_000),
        max_in_flight: Some(100),
        tokens_per_minute: Some(1_000_000),
        ..Default::default()
    });
    b.gw.reload_keys().unwrap();
    for round in 0..3 {
        for g in [&a, &b] {
            assert_eq!(chat(g, &key, CHAT).await.status, 200, "round {round}");
        }
        let killed = command(
            redis.port,
            &["CLIENT", "KILL", "TYPE", "normal"],
            Duration::from_secs(1),
        )
        .await;
        assert!(killed.is_some(), "CLIENT KILL answered");
        for g in [&a, &b] {
            let r = chat(g, &key, CHAT).await;
            assert_eq!(r.status, 200, "round {round}: {:?}", r.body);
        }
    }
}

/// Redis's password changes and every connection is dropped (a rotation done in the wrong
/// order, a Redis briefly up with another password): the replica's logins fail, the policy
/// applies, and once the password it has works again it reconnects by itself — the failed
/// login must not leave it failing until a restart.
#[tokio::test]
async fn a_failed_login_to_redis_is_retried_until_it_works_again() {
    let redis = Redis::start_with(&["--requirepass", "first-pass"], None).await;
    let url = format!("redis://:first-pass@127.0.0.1:{}/", redis.port);
    // One replica: every refused login counted below is its own.
    let a = start_gateway(&cluster_toml(&url, "deny", "timeout = \"100ms\"\n")).await;
    let key = a.key();
    assert!(answers(&a, &key).await);

    let changed = commands_as(
        redis.port,
        "first-pass",
        &[
            &["CONFIG", "SET", "requirepass", "second-pass"],
            &["CLIENT", "KILL", "TYPE", "normal"],
        ],
        Duration::from_secs(1),
    )
    .await;
    assert!(changed.is_some(), "password changed");
    // Logins fail now: the policy (deny) answers.
    assert!(
        eventually(Duration::from_secs(5), || async {
            chat(&a, &key, CHAT).await.status == 503
        })
        .await
    );
    // The replica's reconnection has tried its logins and given up (redis-rs's manager makes
    // two attempts): only now does the password work again.
    assert!(
        eventually(Duration::from_secs(10), || async {
            chat(&a, &key, CHAT).await;
            wrong_passwords(redis.port, "second-pass", Duration::from_secs(1))
                .await
                .is_some_and(|n| n >= 2)
        })
        .await,
        "the replica never tried to log in"
    );
    let back = commands_as(
        redis.port,
        "second-pass",
        &[&["CONFIG", "SET", "requirepass", "first-pass"]],
        Duration::from_secs(1),
    )
    .await;
    assert!(back.is_some(), "password changed back");
    assert!(answers(&a, &key).await, "the replica never logged in again");
}

/// Redis stalls and comes back while a replica has no traffic: the breaker is closed by the
/// background probe, so the first burst after the stall is served, not refused by a policy
/// (`deny`) that only a request's probe would have lifted.
#[tokio::test]
async fn an_idle_replica_closes_its_breaker_without_waiting_for_a_request() {
    let redis = Redis::start().await;
    let a = start_gateway(&cluster_toml(&redis.url(), "deny", "timeout = \"100ms\"\n")).await;
    let key = a.key();
    assert!(answers(&a, &key).await);
    redis.signal("STOP");
    for _ in 0..3 {
        assert_eq!(chat(&a, &key, CHAT).await.status, 503);
    }
    let up = || {
        let text = a.gw.metrics.render(&a.gw);
        text.lines()
            .find_map(|l| l.strip_prefix("keygate_cluster_backend_up "))
            .map(str::to_string)
    };
    assert_eq!(up().as_deref(), Some("0"));
    redis.signal("CONT");
    // No request from here on until the breaker has closed (a scrape is no request).
    assert!(
        eventually(Duration::from_secs(10), || async {
            up().as_deref() == Some("1")
        })
        .await,
        "the breaker stays open while nobody sends a request"
    );
    let urls = (0..10).map(|_| a.url("/v1/chat/completions")).collect();
    let codes = parallel_chat_statuses(urls, &key).await;
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
}

/// Redis loses its data while a key's quota counts are in it (restarted without persistence):
/// the counts start again from what Redis has, and each replica says so once, loudly.
#[tokio::test]
async fn quota_counts_lost_by_redis_are_reported() {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock().await;
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\n[log]\nformat = \"json\"\n[[upstream]]\nurl = \"http://{}\"\n{}",
            mock.addr,
            cluster_toml(&redis.url(), "local", "")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("--config")
        .arg(&cfg)
        .args([
            "keys",
            "create",
            "--name",
            "quota",
            "--requests-per-day",
            "1000",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = v["key"].as_str().unwrap().to_string();
    let served = serve(&cfg);
    let url = served.url("/v1/chat/completions");
    let chat_once = || async {
        send(
            http::Method::POST,
            &url,
            &[("authorization", &bearer(&key))],
            CHAT,
        )
        .await
        .status
    };
    for _ in 0..5 {
        assert_eq!(chat_once().await, 200);
    }
    // Written to Redis (each second): the key's day count is there.
    let count_in_redis = || async {
        command(redis.port, &["KEYS", "*quota*"], Duration::from_secs(1))
            .await
            .is_some_and(|r| !r.starts_with("*0"))
    };
    assert!(eventually(Duration::from_secs(5), count_in_redis).await);
    assert!(command(redis.port, &["FLUSHALL"], Duration::from_secs(1))
        .await
        .is_some());
    assert!(
        eventually(Duration::from_secs(5), || async {
            served.count("USAGE COUNTS IN REDIS WENT BACKWARDS") == 1
        })
        .await,
        "{:?}",
        served.logs.lock().unwrap()
    );
    assert_eq!(chat_once().await, 200);
    sigterm(&served.child);
}
