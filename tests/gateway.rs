//! The gateway through a real listener on 127.0.0.1:0: every reference: Errors answer, forwarding
//! hygiene, streaming, reload and limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use http::Method;
use keygate::keys::record::{KeyLimits, NewKey};
use keygate::time::Timestamp;
use std::time::{Duration, Instant};

fn new_key(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn chat_is_forwarded_with_request_id_and_rate_headers() {
    let g = start_gateway("").await;
    let key = g.key();
    let a = chat(&g, &key, CHAT).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.json()["object"], "chat.completion");
    assert!(a.header("x-request-id").unwrap().starts_with("req_"));
    assert_eq!(a.header("x-ratelimit-limit-requests"), Some("600"));
    assert_eq!(a.header("x-ratelimit-remaining-requests"), Some("599"));
    assert_eq!(a.header("x-ratelimit-reset-requests"), Some("100ms"));

    // A client's request id is kept, upstream and back.
    let auth = bearer(&key);
    let a = send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[("authorization", &auth), ("x-request-id", "my-trace-42")],
        CHAT,
    )
    .await;
    assert_eq!(a.header("x-request-id"), Some("my-trace-42"));
    let seen = g.mock.recorder.take();
    assert_eq!(seen.last().unwrap().headers["x-request-id"], "my-trace-42");
}

#[tokio::test]
async fn missing_key_is_401_with_www_authenticate() {
    let g = start_gateway("").await;
    let a = send(Method::POST, &g.url("/v1/chat/completions"), &[], CHAT).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.error_code(), "missing_api_key");
    assert_eq!(a.json()["error"]["type"], "authentication_error");
    assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    assert!(a.header("x-request-id").is_some());
    assert!(a.header("x-ratelimit-limit-requests").is_none());
}

#[tokio::test]
async fn malformed_bad_checksum_and_unknown_keys_are_invalid() {
    let g = start_gateway("").await;
    let real = g.key();
    let mut flipped = real.clone().into_bytes();
    let i = flipped.len() - 10;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let unknown = keygate::keys::token::generate("sk_kg").unwrap().plaintext;
    for bad in ["nonsense", "sk_kg_short", &flipped, &unknown] {
        let a = chat(&g, bad, CHAT).await;
        assert_eq!(a.status, 401, "{bad}");
        assert_eq!(a.error_code(), "invalid_api_key");
        assert_eq!(a.header("www-authenticate"), Some("Bearer"));
        let text = String::from_utf8_lossy(&a.body);
        assert!(!text.contains(bad), "the error echoes the key: {text}");
    }
    assert!(g.mock.recorder.is_empty(), "nothing was forwarded");
}

#[tokio::test]
async fn expired_revoked_and_rotated_out_keys() {
    let g = start_gateway("").await;
    let (expired_id, expired) = g.create_key(new_key("soon"));
    let (revoked_id, revoked) = g.create_key(new_key("bad"));
    let (rotated_id, old) = g.create_key(new_key("rot"));
    let now = Timestamp::now();
    let past = Timestamp(now.0 - 10);
    let (_, fresh) = g
        .store()
        .update(|f| {
            let k = f.keys.iter_mut().find(|k| k.id == expired_id).unwrap();
            k.created_at = Timestamp(now.0 - 100);
            k.expires_at = Some(past);
            f.revoke(&revoked_id, now)?;
            f.rotate(&rotated_id, 0, "sk_kg", now)
        })
        .unwrap();
    g.gw.reload_keys().unwrap();

    let a = chat(&g, &expired, CHAT).await;
    assert_eq!(
        (a.status.as_u16(), a.error_code().as_str()),
        (401, "expired_api_key")
    );
    let a = chat(&g, &revoked, CHAT).await;
    assert_eq!(
        (a.status.as_u16(), a.error_code().as_str()),
        (401, "revoked_api_key")
    );
    let a = chat(&g, &old, CHAT).await;
    assert_eq!(
        (a.status.as_u16(), a.error_code().as_str()),
        (401, "expired_api_key")
    );
    assert_eq!(chat(&g, &fresh.plaintext, CHAT).await.status, 200);
}

#[tokio::test]
async fn rotation_grace_keeps_the_old_secret_working() {
    let g = start_gateway("").await;
    let (id, old) = g.create_key(new_key("rot"));
    let (_, new) = g
        .store()
        .update(|f| f.rotate(&id, 3600, "sk_kg", Timestamp::now()))
        .unwrap();
    g.gw.reload_keys().unwrap();
    assert_eq!(chat(&g, &old, CHAT).await.status, 200);
    assert_eq!(chat(&g, &new.plaintext, CHAT).await.status, 200);
}

#[tokio::test]
async fn two_credentials_and_key_in_query_are_refused() {
    let g = start_gateway("").await;
    let key = g.key();
    let auth = bearer(&key);
    let a = send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[("authorization", &auth), ("x-api-key", &key)],
        CHAT,
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.error_code().as_str()),
        (400, "invalid_request")
    );
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");
    let a = send(
        Method::POST,
        &g.url(&format!("/v1/chat/completions?api_key={key}")),
        &[],
        CHAT,
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.error_code().as_str()),
        (400, "invalid_request")
    );
    assert!(!String::from_utf8_lossy(&a.body).contains(&key));
}

#[tokio::test]
async fn x_api_key_and_basic_are_accepted() {
    let g = start_gateway("").await;
    let key = g.key();
    let a = send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[("x-api-key", &key)],
        CHAT,
    )
    .await;
    assert_eq!(a.status, 200);
    use base64::Engine;
    // The key as the password or as the user name (`curl -u KEY:`); the other one empty.
    for userpass in [format!(":{key}"), format!("{key}:")] {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(userpass)
        );
        let a = send(
            Method::POST,
            &g.url("/v1/chat/completions"),
            &[("authorization", &basic)],
            CHAT,
        )
        .await;
        assert_eq!(a.status, 200);
    }
}

#[tokio::test]
async fn missing_scope_is_403_naming_the_scope() {
    let g = start_gateway("").await;
    let key = g.key_with_scopes(&["embeddings"]);
    let a = chat(&g, &key, CHAT).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.error_code(), "insufficient_permissions");
    assert_eq!(a.json()["error"]["type"], "permission_error");
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`chat`"));
    assert!(a.header("x-ratelimit-remaining-requests").is_some());
    // admin is never implied by inference
    let inf = g.key();
    let a = send(
        Method::GET,
        &g.url("/v1/api-keys"),
        &[("authorization", &bearer(&inf))],
        "",
    )
    .await;
    assert_eq!(a.status, 403);
}

#[tokio::test]
async fn model_allowlist() {
    let g = start_gateway("").await;
    let (_, key) = g.create_key(NewKey {
        name: "llama-only".into(),
        models: vec!["llama-*".into()],
        ..Default::default()
    });
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    let a = chat(&g, &key, r#"{"model":"qwen2.5-7b-instruct","messages":[]}"#).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.error_code(), "model_not_allowed");
    // A restricted key must name its model, in JSON.
    let a = chat(&g, &key, "not json").await;
    assert_eq!(
        (a.status.as_u16(), a.error_code().as_str()),
        (400, "invalid_request")
    );
    let a = chat(&g, &key, r#"{"messages":[]}"#).await;
    assert_eq!(
        (a.status.as_u16(), a.error_code().as_str()),
        (400, "invalid_request")
    );
    // models.list shows only what the key may use
    let a = send(
        Method::GET,
        &g.url("/v1/models"),
        &[("authorization", &bearer(&key))],
        "",
    )
    .await;
    let ids: Vec<String> = a.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["llama-3.1-8b-instruct"]);
    let a = send(
        Method::GET,
        &g.url("/v1/models/qwen2.5-7b-instruct"),
        &[("authorization", &bearer(&key))],
        "",
    )
    .await;
    assert_eq!(a.error_code(), "model_not_allowed");
    let a = send(
        Method::GET,
        &g.url("/v1/models/llama-3.1-8b-instruct"),
        &[("authorization", &bearer(&key))],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["id"], "llama-3.1-8b-instruct");
}

#[tokio::test]
async fn unknown_routes_and_abnormal_paths() {
    let g = start_gateway("").await;
    let key = g.key();
    let auth = bearer(&key);
    for (m, p) in [
        (Method::GET, "/v1/secret"),
        (Method::GET, "/admin"),
        (Method::GET, "/v1/chat/completions"),
        (Method::POST, "/metrics"),
    ] {
        let a = send(m.clone(), &g.url(p), &[("authorization", &auth)], "").await;
        assert_eq!(a.status, 404, "{m} {p}");
        assert_eq!(a.error_code(), "unknown_route");
    }
    let a = send(
        Method::GET,
        &g.url("/v1/responses/..%2F..%2Fadmin"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(g.mock.recorder.is_empty());
    assert_eq!(
        send(Method::GET, &g.url("/healthz"), &[], "").await.status,
        200
    );
    assert_eq!(
        send(Method::GET, &g.url("/readyz"), &[], "").await.status,
        200
    );
}

#[tokio::test]
async fn body_over_limit_is_413_before_forwarding() {
    let g = start_gateway("[server]\nmax_body_bytes = 1024\n").await;
    let key = g.key();
    let big = format!(
        r#"{{"model":"llama-3.1-8b-instruct","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4000)
    );
    let a = chat(&g, &key, &big).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.error_code(), "request_too_large");
    assert!(g.mock.recorder.is_empty());
}

#[tokio::test]
async fn rate_limit_429_with_retry_headers() {
    let g = start_gateway("").await;
    let key = g.key_with_limits(KeyLimits {
        requests_per_minute: Some(2),
        ..Default::default()
    });
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    let a = chat(&g, &key, CHAT).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.error_code(), "rate_limit_exceeded");
    assert_eq!(a.json()["error"]["type"], "rate_limit_error");
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    let retry_ms: u64 = a.header("retry-after-ms").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert!(retry_ms > 0 && retry_ms <= retry * 1000, "{retry_ms}");
    assert_eq!(a.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(a.header("x-ratelimit-remaining-requests"), Some("0"));
    // Until both cells are back: one minute less the few milliseconds this test took.
    let reset = a.header("x-ratelimit-reset-requests").unwrap();
    assert!(
        reset == "1m0s" || (reset.starts_with("59.") && reset.ends_with('s')),
        "{reset}"
    );
}

#[tokio::test]
async fn fifty_parallel_on_a_limit_of_ten_let_exactly_ten_through() {
    let g = start_gateway("").await;
    let key = g.key_with_limits(KeyLimits {
        requests_per_minute: Some(10),
        ..Default::default()
    });
    let urls = vec![g.url("/v1/chat/completions"); 50];
    let codes = parallel_chat_statuses(urls, &key).await;
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 10, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 40);
}

#[tokio::test]
async fn concurrency_cap_and_gateway_capacity() {
    let g = start_gateway("[server]\nmax_in_flight = 2\n").await;
    let one = g.key_with_limits(KeyLimits {
        max_in_flight: Some(1),
        ..Default::default()
    });
    let other = g.key();
    let slow = r#"{"model":"llama-3.1-8b-instruct","stream":true,"messages":[{"role":"user","content":"a b c"}]}"#;
    // Hold one stream open on `one`: its response head arrives, the body trickles.
    let req = http::Request::post(g.url("/v1/chat/completions"))
        .header("authorization", bearer(&one))
        .header("x-mock-interval-ms", "300")
        .body(http_body_util::Full::new(bytes::Bytes::from(slow)))
        .unwrap();
    let held = client().request(req).await.unwrap();
    assert_eq!(held.status(), 200);
    let a = chat(&g, &one, CHAT).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.error_code(), "concurrency_limit_exceeded");
    assert!(a.header("retry-after").is_some());

    // Gateway-wide: one stream held + one more = cap of 2; the third is 503 overloaded.
    let req = http::Request::post(g.url("/v1/chat/completions"))
        .header("authorization", bearer(&other))
        .header("x-mock-interval-ms", "300")
        .body(http_body_util::Full::new(bytes::Bytes::from(slow)))
        .unwrap();
    let held2 = client().request(req).await.unwrap();
    assert_eq!(held2.status(), 200);
    let a = chat(&g, &other, CHAT).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.error_code(), "overloaded");
    assert_eq!(a.json()["error"]["type"], "server_error");
    drop(held);
    drop(held2);
    assert!(
        eventually(Duration::from_secs(3), || async {
            chat(&g, &one, CHAT).await.status == 200
        })
        .await,
        "slots are released when the client drops the stream"
    );
}

#[tokio::test]
async fn too_many_failed_attempts_from_one_address() {
    let g = start_gateway("[limits]\nfailed_auth_per_minute = 3\n").await;
    let good = g.key();
    let mut last = None;
    for i in 0..6 {
        let bogus = keygate::keys::token::generate("sk_kg").unwrap().plaintext;
        let a = chat(&g, &bogus, CHAT).await;
        last = Some(a.status.as_u16());
        if i < 3 {
            assert_eq!(a.status, 401);
        }
    }
    assert_eq!(last, Some(429));
    // A blocked address keeps getting 429 for bad keys, but its valid keys are served:
    // behind a proxy, one address is many clients.
    let bogus = keygate::keys::token::generate("sk_kg").unwrap().plaintext;
    let a = chat(&g, &bogus, CHAT).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.error_code(), "too_many_failed_attempts");
    assert!(a.header("retry-after").is_some());
    assert_eq!(chat(&g, &good, CHAT).await.status, 200);
}

#[tokio::test]
async fn upstream_refusing_is_502_fast() {
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mock = start_mock().await;
    let g = start_gateway_raw(
        mock,
        &format!("[[upstream]]\nname = \"down\"\nurl = \"http://{closed}\"\n"),
    )
    .await;
    let key = g.key();
    let t = Instant::now();
    let a = chat(&g, &key, CHAT).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.error_code(), "upstream_unavailable");
    assert_eq!(a.json()["error"]["type"], "upstream_error");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn upstream_silent_is_504_at_first_byte_timeout() {
    let mock = start_mock().await;
    let toml = format!(
        "[[upstream]]\nname = \"slow\"\nurl = \"http://{}\"\nfirst_byte_timeout = \"300ms\"\n",
        mock.addr
    );
    let g = start_gateway_raw(mock, &toml).await;
    let key = g.key();
    let auth = bearer(&key);
    let t = Instant::now();
    let a = send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[("authorization", &auth), ("x-mock-delay-ms", "3000")],
        CHAT,
    )
    .await;
    assert_eq!(a.status, 504);
    assert_eq!(a.error_code(), "upstream_timeout");
    assert!(t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn not_ready_until_a_key_file_loads() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = keygate::config::Config::parse(
        &format!(
            "[keys]\nfile = \"{}\"\n[[upstream]]\nurl = \"http://{}\"\n",
            dir.path().join("absent.json").display(),
            mock.addr
        ),
        None,
    )
    .unwrap();
    let gw = keygate::gateway::Gateway::new(cfg);
    assert!(gw.reload_keys().is_err());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(keygate::server::run(listener, gw, std::future::pending()));
    let a = send(Method::GET, &format!("http://{addr}/readyz"), &[], "").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.error_code(), "not_ready");
    let a = send(
        Method::POST,
        &format!("http://{addr}/v1/chat/completions"),
        &[("authorization", "Bearer x")],
        CHAT,
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.error_code().as_str()),
        (503, "not_ready")
    );
    assert_eq!(
        send(Method::GET, &format!("http://{addr}/healthz"), &[], "")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn canary_no_credential_or_hop_header_reaches_upstream() {
    let g = start_gateway("").await;
    let (id, key) = g.create_key(new_key("canary"));
    let auth = bearer(&key);
    let hostile: Vec<(&str, &str)> = vec![
        ("authorization", &auth),
        ("proxy-authorization", "Basic c2VjcmV0"),
        ("connection", "keep-alive, x-hop-secret"),
        ("x-hop-secret", "should-not-pass"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("upgrade", "websocket"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "gopher"),
        ("forwarded", "for=6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        // What frameworks behind the gateway honour from a proxy in front (found by a probe:
        // only three `X-Forwarded-*` names were removed).
        ("x-forwarded-prefix", "/admin"),
        ("x-forwarded-port", "443"),
        ("true-client-ip", "6.6.6.6"),
        ("x-original-url", "/v1/api-keys"),
        ("x-http-method-override", "DELETE"),
        ("x-keygate-key-id", "key_spoofedspoofed00"),
        ("cookie", "session=abc"),
        ("content-type", "application/json"),
        ("x-custom", "kept"),
    ];
    let a = send(Method::POST, &g.url("/v1/chat/completions"), &hostile, CHAT).await;
    assert_eq!(a.status, 200);
    let basic = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(":{key}"))
        )
    };
    assert_eq!(
        send(
            Method::POST,
            &g.url("/v1/chat/completions"),
            &[("authorization", &basic)],
            CHAT
        )
        .await
        .status,
        200
    );
    assert_eq!(
        send(
            Method::POST,
            &g.url("/v1/chat/completions"),
            &[("x-api-key", &key)],
            CHAT
        )
        .await
        .status,
        200
    );

    // Found by the request_path fuzzer: the key copied into other headers (Azure-style
    // `api-key`, or anything else) must not ride along.
    let copy = format!("b Bearer {key}");
    let a = send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[
            ("x-api-key", &key),
            ("api-key", &key),
            ("truthorization", &copy),
        ],
        CHAT,
    )
    .await;
    assert_eq!(a.status, 200);

    let seen = g.mock.recorder.take();
    assert_eq!(seen.len(), 4);
    for r in &seen {
        let h = &r.headers;
        for name in [
            "authorization",
            "x-api-key",
            "api-key",
            "truthorization",
            "proxy-authorization",
            "connection",
            "x-hop-secret",
            "keep-alive",
            "te",
            "upgrade",
            "forwarded",
            "x-real-ip",
            "x-forwarded-prefix",
            "x-forwarded-port",
            "true-client-ip",
            "x-original-url",
            "x-http-method-override",
            "cookie",
        ] {
            assert!(!h.contains_key(name), "{name} reached the upstream: {h:?}");
        }
        for v in h.values() {
            let v = v.to_str().unwrap_or("");
            assert!(
                !v.contains(&key[6..]),
                "a credential reached the upstream: {h:?}"
            );
        }
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-keygate-key-id"], id.as_str());
        assert!(h.contains_key("x-request-id"));
    }
    assert_eq!(seen[0].headers["x-custom"], "kept");
}

/// Found by reviewing the canary: a second key of this gateway (another app's, pasted into
/// a custom header or a cookie, percent-encoded or not) rode along to the upstream, which
/// has no use for it and may log it. Only the presented credential's copies were removed.
#[tokio::test]
async fn no_key_of_the_gateway_reaches_upstream_in_any_header() {
    let g = start_gateway("").await;
    let (_, key) = g.create_key(new_key("presented"));
    let (_, other) = g.create_key(new_key("someone-else"));
    let encoded = format!("session=1; token={}", other.replace('_', "%5F"));
    let auth = bearer(&key);
    let a = send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[
            ("authorization", &auth),
            ("x-other-app-key", &other),
            ("x-trace", &encoded),
            ("x-custom", "kept"),
        ],
        CHAT,
    )
    .await;
    assert_eq!(a.status, 200);
    let seen = g.mock.recorder.take();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    for v in h.values() {
        let v = v.to_str().unwrap_or("");
        assert!(
            !v.contains(&other[6..]) && !v.contains(&other[7..]),
            "another key reached the upstream: {h:?}"
        );
    }
    assert!(!h.contains_key("x-other-app-key") && !h.contains_key("x-trace"));
    assert_eq!(h["x-custom"], "kept");
}

/// Found by an outside probe: the client's `Accept-Encoding: gzip` (the OpenAI SDKs' default)
/// went upstream, and an upstream behind a compressing proxy answered gzip: its `usage` was
/// unreadable, so token limits and quotas were charged the estimate (16k real tokens through
/// a 1k quota), and the usage event hidden from a stream reached the SDK, which failed on
/// its empty `choices`. The upstream is asked for an uncompressed answer.
#[tokio::test]
async fn the_upstream_is_asked_for_an_uncompressed_answer() {
    let g = start_gateway("").await;
    let key = g.key();
    let auth = bearer(&key);
    for enc in ["gzip, deflate, br, zstd", "identity;q=0, gzip"] {
        let a = send(
            Method::POST,
            &g.url("/v1/chat/completions"),
            &[("authorization", &auth), ("accept-encoding", enc)],
            CHAT,
        )
        .await;
        assert_eq!(a.status, 200);
        assert!(a.headers.get("content-encoding").is_none());
    }
    let seen = g.mock.recorder.take();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        let sent: Vec<_> = r.headers.get_all("accept-encoding").iter().collect();
        assert_eq!(sent, ["identity"], "{:?}", r.headers);
    }
}

#[tokio::test]
async fn upstream_credential_is_added() {
    // Only this test reads this variable.
    std::env::set_var("KEYGATE_TEST_UPSTREAM_KEY", "upstream-secret-1");
    let mock = start_mock().await;
    let toml = format!(
        "[[upstream]]\nname = \"m\"\nurl = \"http://{}\"\napi_key_env = \"KEYGATE_TEST_UPSTREAM_KEY\"\n",
        mock.addr
    );
    let g = start_gateway_raw(mock, &toml).await;
    let key = g.key();
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    let seen = g.mock.recorder.take();
    assert_eq!(seen[0].headers["authorization"], "Bearer upstream-secret-1");
}

#[tokio::test]
async fn models_union_and_routing_by_model() {
    let a_mock = start_mock_with(keygate::mock::MockOptions {
        models: vec!["llama-a".into()],
        ..Default::default()
    })
    .await;
    let b_mock = start_mock_with(keygate::mock::MockOptions {
        models: vec!["qwen-b".into(), "qwen-c".into()],
        ..Default::default()
    })
    .await;
    let toml = format!(
        "[[upstream]]\nname = \"a\"\nurl = \"http://{}\"\nmodels = [\"llama-*\"]\n[[upstream]]\nname = \"b\"\nurl = \"http://{}\"\nmodels = [\"qwen-*\"]\n",
        a_mock.addr, b_mock.addr
    );
    let b_rec = b_mock.recorder.clone();
    let g = start_gateway_raw(a_mock, &toml).await;
    let (_, key) = g.create_key(NewKey {
        name: "k".into(),
        models: vec!["llama-*".into(), "qwen-b".into()],
        ..Default::default()
    });
    let a = send(
        Method::GET,
        &g.url("/v1/models"),
        &[("authorization", &bearer(&key))],
        "",
    )
    .await;
    let mut ids: Vec<String> = a.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().into())
        .collect();
    ids.sort();
    assert_eq!(ids, ["llama-a", "qwen-b"]);
    let a = chat(&g, &key, r#"{"model":"qwen-b","messages":[]}"#).await;
    assert_eq!(a.status, 200);
    assert!(b_rec
        .take()
        .iter()
        .any(|r| r.path == "/v1/chat/completions"));
    let unrestricted = g.key();
    let a = chat(&g, &unrestricted, r#"{"model":"mistral","messages":[]}"#).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.error_code(), "model_not_found");
}

#[tokio::test]
async fn sse_events_are_relayed_one_by_one() {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    // An upstream whose events the test releases one at a time: if the gateway buffered,
    // the client would never see event 1 before event 2 is released.
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<Frame<bytes::Bytes>, std::convert::Infallible>>(1);
    let rx = std::sync::Mutex::new(Some(rx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let rx = std::sync::Arc::new(rx);
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let rx = rx.clone();
        let svc = hyper::service::service_fn(move |_req| {
            let r = rx.lock().unwrap().take().unwrap();
            async move {
                let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(r));
                let mut resp = http::Response::new(body);
                resp.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
    });
    let mock = start_mock().await;
    let g = start_gateway_raw(mock, &format!("[[upstream]]\nurl = \"http://{up_addr}\"\n")).await;
    let key = g.key();
    let req = http::Request::post(g.url("/v1/chat/completions"))
        .header("authorization", bearer(&key))
        .body(http_body_util::Full::new(bytes::Bytes::from(CHAT)))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    for i in 0..3 {
        let event = format!("data: {{\"n\":{i}}}\n\n");
        tx.send(Ok(Frame::data(bytes::Bytes::from(event.clone()))))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), body.frame())
            .await
            .expect("event relayed before the next was sent")
            .unwrap()
            .unwrap();
        assert_eq!(got.into_data().unwrap(), event.as_bytes());
    }
    tx.send(Ok(Frame::data(bytes::Bytes::from_static(
        b"data: [DONE]\n\n",
    ))))
    .await
    .unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"data: [DONE]\n\n");
}

#[tokio::test]
async fn streamed_and_plain_usage_is_counted_for_the_key() {
    let g = start_gateway("").await;
    let (id, key) = g.create_key(new_key("tokens"));
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    let stream = r#"{"model":"llama-3.1-8b-instruct","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"one two three"}]}"#;
    let a = chat(&g, &key, stream).await;
    assert_eq!(a.status, 200);
    assert!(String::from_utf8_lossy(&a.body).ends_with("data: [DONE]\n\n"));
    let live = g.gw.live();
    let usage = live
        .keys
        .as_ref()
        .unwrap()
        .state_of(&id)
        .unwrap()
        .usage
        .snapshot();
    assert_eq!(usage.requests, 2);
    // mock: prompt = words of the user message; completion = words of its reply
    assert_eq!(usage.prompt_tokens, 2 + 3);
    assert_eq!(usage.completion_tokens, 9 + 10);
}

#[tokio::test]
async fn http2_prior_knowledge_works() {
    let g = start_gateway("").await;
    let key = g.key();
    let c: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = http::Request::post(g.url("/v1/chat/completions"))
        .header("authorization", bearer(&key))
        .body(http_body_util::Full::new(bytes::Bytes::from(CHAT)))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn kubernetes_style_symlink_swap_is_picked_up() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(secret.join("..v1")).unwrap();
    // Build two versions of the key file with the store, then mount v1.
    let scratch = tempfile::tempdir().unwrap();
    let store = keygate::keys::store::KeyStore::new(scratch.path().join("keys.json"));
    let (_, k1) = store
        .update(|f| f.create(new_key("one"), "sk_kg", Timestamp::now()))
        .unwrap();
    std::fs::copy(store.path(), secret.join("..v1/keys.json")).unwrap();
    let (_, k2) = store
        .update(|f| f.create(new_key("two"), "sk_kg", Timestamp::now()))
        .unwrap();
    std::fs::create_dir_all(secret.join("..v2")).unwrap();
    std::fs::copy(store.path(), secret.join("..v2/keys.json")).unwrap();
    std::os::unix::fs::symlink("..v1", secret.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/keys.json", secret.join("keys.json")).unwrap();

    let toml = format!(
        "[keys]\nfile = \"{}\"\npoll_interval = \"5s\"\n[[upstream]]\nurl = \"http://{}\"\n",
        secret.join("keys.json").display(),
        mock.addr
    );
    let g = start_gateway_raw(mock, &toml).await;
    assert_eq!(chat(&g, &k1.plaintext, CHAT).await.status, 200);
    assert_eq!(chat(&g, &k2.plaintext, CHAT).await.status, 401);
    // The kubelet's atomic swap: a new ..data link renamed over the old one.
    std::os::unix::fs::symlink("..v2", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            chat(&g, &k2.plaintext, CHAT).await.status == 200
        })
        .await,
        "the swapped key file was not picked up (watch on the directory, poll is 5s)"
    );
    // Writes to a mounted Secret are refused as read-only.
    let err = g.store().update(|_| Ok(())).unwrap_err();
    assert!(
        matches!(err, keygate::keys::error::StoreError::ReadOnly { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_broken_key_file_keeps_the_last_good_keys() {
    let g = start_gateway("").await;
    let key = g.key();
    let failures = || {
        g.gw.reloads
            .key_reload_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = failures();
    let path = g.gw.config().keys.file.clone();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    assert!(eventually(Duration::from_secs(3), || async { failures() > before }).await);
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    assert_eq!(
        send(Method::GET, &g.url("/readyz"), &[], "").await.status,
        200
    );
}

#[tokio::test]
async fn cli_revoke_stops_the_key_on_a_running_gateway_within_a_second() {
    let g = start_gateway("").await;
    let (id, key) = g.create_key(new_key("to-revoke"));
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("--config")
        .arg(&g.config_path)
        .args(["keys", "revoke", &id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(Duration::from_secs(1), || async {
            chat_status(&g.url("/v1/chat/completions"), &key).await == 401
        })
        .await,
        "still accepted after 1 s"
    );
    assert_eq!(chat(&g, &key, CHAT).await.error_code(), "revoked_api_key");
}

#[tokio::test]
async fn graceful_shutdown_lets_a_stream_finish() {
    let mut g = start_gateway("[server]\ndrain_timeout = \"10s\"\n").await;
    let key = g.key();
    let req = http::Request::post(g.url("/v1/chat/completions"))
        .header("authorization", bearer(&key))
        .header("x-mock-interval-ms", "50")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"model":"llama-3.1-8b-instruct","stream":true,"messages":[{"role":"user","content":"a b c d"}]}"#,
        )))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let gw = g.gw.clone();
    let reader = tokio::spawn(async move {
        use http_body_util::BodyExt;
        resp.into_body().collect().await.map(|c| c.to_bytes())
    });
    g.shutdown().await;
    assert!(!gw.is_ready(), "readiness fails once draining");
    let body = reader.await.unwrap().expect("stream completed");
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
}

/// A `gateway.toml` for the binary in a directory of its own: a port the kernel picks, a
/// key file beside it, one upstream (the mock) with `upstream` added to its section.
fn binary_config(mock: &Mock, upstream: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\n[[upstream]]\nurl = \"http://{}\"\n{upstream}",
            mock.addr
        ),
    )
    .unwrap();
    (dir, cfg)
}

/// Found by an outside probe: the vLLM example's `health = "/health"` against the built-in
/// mock never became ready (the mock answered 404 there). The mock answers vLLM's health
/// path, so the example runs against it as it is.
#[tokio::test]
async fn the_mock_answers_vllms_health_path_so_the_examples_get_ready() {
    let mock = start_mock().await;
    let (_dir, cfg) = binary_config(
        &mock,
        "name = \"vllm\"\nhealth = \"/health\"\nhealth_interval = \"100ms\"\n",
    );
    cli_create_key(&cfg, "k");
    let served = binary::serve(&cfg);
    let ready = eventually(std::time::Duration::from_secs(5), || async {
        send(Method::GET, &served.url("/readyz"), &[], "")
            .await
            .status
            == 200
    })
    .await;
    assert!(
        ready,
        "the gateway never became ready on the mock's /health"
    );
}

/// Found by an outside probe: an upstream (or a proxy in front of it) that compresses its
/// answer although asked for none made token accounting fall back to the estimate without a
/// word. It is said once per upstream, as a warning that names the fix.
#[tokio::test]
async fn an_upstream_that_compresses_anyway_is_reported_once() {
    let mock = start_mock().await;
    let (_dir, cfg) = binary_config(&mock, "name = \"zipped\"\n");
    let (key, _) = cli_create_key(&cfg, "k");
    let served = binary::serve(&cfg);
    let url = served.url("/v1/chat/completions");
    let auth = bearer(&key);
    let plain = send(Method::POST, &url, &[("authorization", &auth)], CHAT).await;
    assert_eq!(plain.status, 200);
    for _ in 0..3 {
        let a = send(
            Method::POST,
            &url,
            &[
                ("authorization", &auth),
                ("x-mock-content-encoding", "gzip"),
            ],
            CHAT,
        )
        .await;
        assert_eq!(a.status, 200);
    }
    let said = "the upstream compressed its answer although asked not to";
    assert!(
        eventually(std::time::Duration::from_secs(3), || async {
            served.count(said) >= 1
        })
        .await
    );
    assert_eq!(served.count(said), 1);
    assert_eq!(served.count("encoding=gzip"), 1);
}
