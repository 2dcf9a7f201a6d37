//! Hostile HTTP/1.1 through the real listener on 127.0.0.1:0, written as raw bytes (no client
//! library normalises them), in front of a raw upstream that records the exact bytes it gets:
//! framing conflicts, request smuggling, trailers, sizes, methods, and bad keys over raw TCP.
//! Run with `--nocapture` to see what each case was answered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::raw::*;
use common::raw_upstream::*;
use common::*;

// ------------------------------------------------------------------ 1. framing conflicts

#[tokio::test]
async fn framing_conflicts_are_refused_or_forwarded_once_as_chunked() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();

    // Content-Length and Transfer-Encoding together: hyper drops the length, decodes the
    // chunks and closes the connection after answering (RFC 9112 §6.3), or refuses.
    for framing in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        "Content-Length: 500\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let before = m.requests();
        let heads = m.heads();
        let mut c = Raw::connect(g.addr).await;
        c.send(format!(
            "{}{}",
            chat_head(Some(&key), framing),
            chunked(CHAT)
        ))
        .await
        .unwrap();
        let r = c.response().await.unwrap();
        let closed = c.wait_closed(2 * SEC).await;
        eprintln!(
            "CL+TE {framing:?}: {} then closed after {closed:?}",
            r.status()
        );
        match r.status() {
            400 => assert_eq!(m.requests(), before, "{framing:?}"),
            200 => {
                assert!(
                    closed.is_some(),
                    "{framing:?}: the connection stayed open after CL+TE"
                );
                assert_eq!(m.requests(), before + 1, "{framing:?}");
                let (_, up) = m.request(before);
                assert_eq!(up.header("content-length"), None, "{framing:?}: {up:?}");
                assert_eq!(up.header("transfer-encoding"), Some("chunked"), "{up:?}");
                assert_eq!(up.body, CHAT.as_bytes(), "{framing:?}");
            }
            s => panic!("{framing:?}: unexpected {s}: {r:?}"),
        }
        assert!(m.heads() - heads <= 1, "{framing:?}");
    }

    // Invalid framing: the listener refuses with 400 and closes; nothing goes upstream.
    let ten = "0123456789";
    let chunked_chat = chunked(CHAT);
    let cases: Vec<(&str, &str)> = vec![
        ("Content-Length: 10\r\nContent-Length: 11\r\n", ten),
        ("Content-Length: +10\r\n", ten),
        ("Content-Length: -10\r\n", ten),
        ("Content-Length: 0x0a\r\n", ten),
        ("Content-Length: 1 0\r\n", ten),
        ("Transfer-Encoding: gzip\r\n", ten),
        ("Transfer-Encoding: chunked, gzip\r\n", &chunked_chat),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            &chunked_chat,
        ),
        ("Transfer-Encoding : chunked\r\n", &chunked_chat),
        ("X-Pad: 1\r\n Transfer-Encoding: chunked\r\n", &chunked_chat),
    ];
    for (framing, body) in cases {
        let before = m.heads();
        let mut c = Raw::connect(g.addr).await;
        c.send(format!("{}{body}", chat_head(Some(&key), framing)))
            .await
            .unwrap();
        let r = c.response().await.unwrap();
        assert_eq!(r.status(), 400, "{framing:?}: {r:?}");
        assert!(
            c.wait_closed(2 * SEC).await.is_some(),
            "{framing:?}: still open after a 400"
        );
        assert_eq!(m.heads(), before, "{framing:?} reached the upstream");
    }
}

// ------------------------------------------------------------------ 2. smuggling

#[tokio::test]
async fn bytes_after_a_chunked_body_are_a_new_request_that_must_authenticate() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    let admin_get = "GET /v1/api-keys HTTP/1.1\r\nHost: gw\r\n\r\n";
    let anon_post = chat_req(None, "", CHAT);

    // Keep-alive and chunked only: the trailing bytes are parsed as the client's next request.
    for smuggled in [admin_get, anon_post.as_str()] {
        let before = m.requests();
        let mut c = Raw::connect(g.addr).await;
        c.send(format!(
            "{}{}{smuggled}",
            chat_head(Some(&key), "Transfer-Encoding: chunked\r\n"),
            chunked(CHAT)
        ))
        .await
        .unwrap();
        let first = c.response().await.unwrap();
        assert_eq!(first.status(), 200, "{first:?}");
        let second = c.response().await.unwrap();
        assert_eq!(second.status(), 401, "{second:?}");
        assert_eq!(second.error_code(), "missing_api_key");
        assert_eq!(m.requests(), before + 1);
    }

    // CL.TE: a length that would cover the smuggled request. Hyper frames by the chunks and
    // closes after the answer, so the trailing request is never read.
    let before = m.requests();
    let tail = format!("{}{anon_post}", chunked(CHAT));
    let mut c = Raw::connect(g.addr).await;
    c.send(format!(
        "{}{tail}",
        chat_head(
            Some(&key),
            &format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                tail.len()
            )
        )
    ))
    .await
    .unwrap();
    let first = c.response().await.unwrap();
    assert_eq!(first.status(), 200, "{first:?}");
    match c.response_within(2 * SEC).await {
        Err(_) => assert!(c.eof, "neither a second answer nor a close"),
        Ok(second) => assert_eq!(second.status(), 401, "{second:?}"),
    }
    assert_eq!(m.requests(), before + 1);

    // TE.CL: a short length, the smuggled request inside a chunk. It is data of one request.
    let before = m.requests();
    let inner = anon_post.clone();
    let mut c = Raw::connect(g.addr).await;
    c.send(format!(
        "{}{:x}\r\n{inner}\r\n0\r\n\r\n",
        chat_head(
            Some(&key),
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n"
        ),
        inner.len()
    ))
    .await
    .unwrap();
    let r = c.response().await.unwrap();
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(m.requests(), before + 1);
    assert_eq!(m.request(before).1.body, inner.as_bytes());

    // Whatever happened, the upstream only ever saw authenticated chat requests.
    let total = m.requests();
    for i in 0..total {
        let (_, req) = m.request(i);
        assert!(
            req.start.starts_with("POST /v1/chat/completions "),
            "{req:?}"
        );
        assert!(req.header("x-keygate-key-id").is_some(), "{req:?}");
    }
    assert!(!contains(&m.all_bytes(), "/v1/api-keys"));
    assert_eq!(m.heads(), total, "a partial request went upstream");
}

#[tokio::test]
async fn malformed_chunked_body_is_a_client_error_not_an_upstream_one() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "").await;
    let streamed = g.key();
    let buffered = key_with_models(&g, &["llama-*"]);
    // A bare-LF last chunk and a non-hex chunk size, each followed by a smuggled GET.
    let bodies = [
        format!(
            "{:x}\r\n{CHAT}\r\n0\n\nGET /v1/api-keys HTTP/1.1\r\nHost: gw\r\n\r\n",
            CHAT.len()
        ),
        format!(
            "{:x}\r\n{CHAT}\r\nzz\r\nGET /v1/api-keys HTTP/1.1\r\nHost: gw\r\n\r\n",
            CHAT.len()
        ),
    ];
    let mut seen = Vec::new();
    for (what, key) in [("buffered", &buffered), ("streamed", &streamed)] {
        for body in &bodies {
            let before = m.requests();
            let mut c = Raw::connect(g.addr).await;
            c.send(format!(
                "{}{body}",
                chat_head(Some(key), "Transfer-Encoding: chunked\r\n")
            ))
            .await
            .unwrap();
            let r = c.response().await.unwrap();
            let code = r.error_code();
            assert_eq!(m.requests(), before, "a broken body became a whole request");
            seen.push((what, r.status(), code));
        }
    }
    eprintln!("malformed chunked bodies answered {seen:?}");
    assert!(!contains(&m.all_bytes(), "/v1/api-keys"));
    assert!(
        seen.iter()
            .all(|(_, status, code)| *status == 400 && code == "invalid_request"),
        "a malformed client body must be 400 invalid_request, never blamed on the upstream: {seen:?}"
    );
}

// ------------------------------------------------------------------ 3. trailers

#[tokio::test]
async fn credentials_in_chunked_trailers_are_ignored_and_never_forwarded() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    let body_with_trailers =
        |trailers: &str| format!("{:x}\r\n{CHAT}\r\n0\r\n{trailers}\r\n", CHAT.len());

    // The only credential is in the trailer: refused as missing.
    let mut c = Raw::connect(g.addr).await;
    c.send(format!(
        "{}{}",
        chat_head(
            None,
            "Transfer-Encoding: chunked\r\nTrailer: Authorization\r\n"
        ),
        body_with_trailers(&format!("Authorization: Bearer {key}\r\n"))
    ))
    .await
    .unwrap();
    let r = c.response().await.unwrap();
    assert_eq!(r.status(), 401, "{r:?}");
    assert_eq!(r.error_code(), "missing_api_key");
    assert_eq!(
        m.connections(),
        0,
        "a refused request opened an upstream connection"
    );

    // A valid header credential plus trailers: forwarded, trailers dropped.
    let canary = "trailer-canary-5f1e";
    let mut c = Raw::connect(g.addr).await;
    c.send(format!(
        "{}{}",
        chat_head(Some(&key), "Transfer-Encoding: chunked\r\nTE: trailers\r\n"),
        body_with_trailers(&format!("x-api-key: {key}\r\nx-canary: {canary}\r\n"))
    ))
    .await
    .unwrap();
    let r = c.response().await.unwrap();
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(m.requests(), 1);
    let up = m.all_bytes();
    assert!(!contains(&up, &key), "the key reached the upstream");
    assert!(!contains(&up, canary), "a trailer reached the upstream");
    assert_eq!(m.request(0).1.body, CHAT.as_bytes());
}

// ------------------------------------------------------------------ 4. sizes

#[tokio::test]
async fn oversized_heads_and_uris_are_refused_by_the_listener() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();

    let big = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    for (what, extra) in [("one 20 KB header", big), ("200 headers", many)] {
        let mut c = Raw::connect(g.addr).await;
        let _ = c.send(chat_req(Some(&key), &extra, CHAT)).await;
        let r = c.response().await.unwrap();
        assert_eq!(r.status(), 431, "{what}: {r:?}");
        assert!(c.wait_closed(2 * SEC).await.is_some(), "{what}: still open");
    }

    // A 20 KB request target. Hyper reads the head into a buffer capped at
    // max_header_bytes (16 KB), so a long URI overflows it like a long header: 431. Hyper's
    // 414 applies only to a URI over 64 KB that fits in the buffer, which this config never
    // allows. (414 would also be right for a URI.)
    for target in [
        format!("/v1/chat/completions?q={}", "a".repeat(20 * 1024)),
        format!("/v1/{}", "b".repeat(20 * 1024)),
    ] {
        let mut c = Raw::connect(g.addr).await;
        let _ = c
            .send(format!(
                "POST {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{CHAT}",
                CHAT.len()
            ))
            .await;
        let r = c.response().await.unwrap();
        eprintln!("20 KB URI answered {}", r.status());
        assert_eq!(r.status(), 431, "{r:?}");
    }
    assert_eq!(m.connections(), 0, "an oversized head reached the upstream");
}

#[tokio::test]
async fn listener_limits_changed_on_reload_apply_to_new_connections() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    let thirty: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let status = || async {
        let mut c = Raw::connect(g.addr).await;
        let _ = c.send(chat_req(Some(&key), &thirty, CHAT)).await;
        c.response().await.unwrap().status()
    };
    assert_eq!(status().await, 200, "30 headers are within the default 100");
    // `[server] max_headers` is one of hyper's own settings: a reload builds a new builder.
    let text = std::fs::read_to_string(&g.config_path).unwrap();
    let next = keygate::config::Config::parse(
        &format!("[server]\nmax_headers = 20\n{text}"),
        Some(&g.config_path),
    )
    .unwrap();
    assert!(g.gw.apply_config(next).is_empty(), "no restart needed");
    assert_eq!(
        status().await,
        431,
        "the new limit applies to a new connection"
    );
}

#[tokio::test]
async fn bodies_over_max_body_bytes_are_413() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "[server]\nmax_body_bytes = 1024\n").await;
    let streamed = g.key();
    let buffered = key_with_models(&g, &["llama-*"]);
    let big = format!(
        r#"{{"model":"llama-3.1-8b-instruct","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(3000)
    );

    // Declared length over the limit: refused before reading, for both kinds of key.
    for key in [&streamed, &buffered] {
        let mut c = Raw::connect(g.addr).await;
        let _ = c.send(chat_req(Some(key), "", &big)).await;
        let r = c.response().await.unwrap();
        assert_eq!(r.status(), 413, "{r:?}");
        assert_eq!(r.error_code(), "request_too_large");
    }
    assert_eq!(
        m.connections(),
        0,
        "a declared-too-large body went upstream"
    );

    // Chunked, read by the gateway (model allowlist): 413, nothing upstream.
    let mut c = Raw::connect(g.addr).await;
    let _ = c
        .send(format!(
            "{}{}",
            chat_head(Some(&buffered), "Transfer-Encoding: chunked\r\n"),
            chunked(&big)
        ))
        .await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status(), 413, "{r:?}");
    assert_eq!(r.error_code(), "request_too_large");
    assert_eq!(
        m.connections(),
        0,
        "the buffered too-large body went upstream"
    );

    // Chunked, streamed upstream: the client gets 413; the upstream saw at most a partial
    // request, never a whole one, and its connection is closed, not pooled.
    let mut c = Raw::connect(g.addr).await;
    let _ = c
        .send(format!(
            "{}{}",
            chat_head(Some(&streamed), "Transfer-Encoding: chunked\r\n"),
            chunked(&big)
        ))
        .await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status(), 413, "{r:?}");
    assert_eq!(r.error_code(), "request_too_large");
    assert_eq!(m.requests(), 0, "a too-large body arrived whole upstream");
    let partial = m.heads();
    if m.connections() > 0 {
        assert!(
            m.wait(2 * SEC, |e| matches!(e, Event::Eof(_)))
                .await
                .is_some(),
            "the upstream connection carrying the cut body stayed open"
        );
    }
    eprintln!(
        "streamed chunked 413: upstream connections {}, partial heads {partial}, upstream bytes {}",
        m.connections(),
        m.all_bytes().len()
    );
}

// ------------------------------------------------------------------ methods

#[tokio::test]
async fn connect_and_trace_are_refused_not_forwarded() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    let mut seen = Vec::new();
    for (method, target) in [
        ("CONNECT", "/v1/images/generations"),
        ("CONNECT", "/v1/responses/x"),
        ("TRACE", "/v1/images/generations"),
        ("TRACE", "/v1/audio/speech"),
    ] {
        let before = m.heads();
        let mut c = Raw::connect(g.addr).await;
        c.send(format!(
            "{method} {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Length: 5\r\n\r\nhello"
        ))
        .await
        .unwrap();
        let r = c.response_within(2 * SEC).await;
        let reached = m.heads() > before;
        seen.push((
            method,
            target,
            r.as_ref()
                .map(Msg::status)
                .map_err(|e| e[..40.min(e.len())].to_string()),
            reached,
        ));
    }
    eprintln!("CONNECT/TRACE with a valid key: {seen:?}");
    let up = m.all_bytes();
    eprintln!(
        "upstream request lines: {:?}",
        String::from_utf8_lossy(&up)
            .split("\r\n")
            .filter(|l| l.contains("CONNECT ") || l.contains("TRACE "))
            .collect::<Vec<_>>()
    );
    for (method, target, answer, reached) in &seen {
        assert!(
            matches!(answer, Ok(404 | 405)),
            "{method} {target}: answered {answer:?}"
        );
        assert!(!reached, "{method} {target} was forwarded upstream");
    }
}

// ------------------------------------------------------------------ 8. failed-auth guard

#[tokio::test]
async fn failed_auth_guard_over_raw_tcp_refuses_bad_keys_but_serves_a_valid_one() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "[limits]\nfailed_auth_per_minute = 5\n").await;
    let good = g.key();
    let mut c = Raw::connect(g.addr).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let bogus = keygate::keys::token::generate("sk_kg").unwrap().plaintext;
        c.send(chat_req(Some(&bogus), "", CHAT)).await.unwrap();
        let r = c.response().await.unwrap();
        if r.status() == 401 {
            assert_eq!(r.error_code(), "invalid_api_key");
        }
        statuses.push(r.status());
    }
    eprintln!("failed auth, 8 bad keys: {statuses:?}");
    assert!(statuses[..5].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(
        statuses[5], 429,
        "the 6th bad key was evaluated although the allowance is 5 per minute: {statuses:?}"
    );
    assert!(statuses[6..].iter().all(|s| *s == 429), "{statuses:?}");
    let bogus = keygate::keys::token::generate("sk_kg").unwrap().plaintext;
    c.send(chat_req(Some(&bogus), "", CHAT)).await.unwrap();
    let r = c.response().await.unwrap();
    assert_eq!(r.status(), 429, "{r:?}");
    assert_eq!(r.error_code(), "too_many_failed_attempts");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert!(r.header("retry-after-ms").is_some());
    assert_eq!(m.connections(), 0, "the upstream saw something");

    // The same address, still blocked, with a valid key: served (a lock-out of everyone
    // behind one address is what the guard must not hand out).
    c.send(chat_req(Some(&good), "", CHAT)).await.unwrap();
    let r = c.response().await.unwrap();
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(m.requests(), 1);
}
