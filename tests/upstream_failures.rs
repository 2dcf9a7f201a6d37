//! Upstreams that fail, behind the real listener: refused, silent, reset mid-stream, closed
//! while pooled; clients that go away before or during the answer; the gateway at capacity.
//! Each is answered as the security model says, and what the upstream saw is checked on a raw
//! socket that records it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::raw::*;
use common::raw_upstream::*;
use common::*;
use std::time::{Duration, Instant};

/// A chat request through a real HTTP client: its status and its whole body, or the error
/// reading it.
async fn chat_through_a_client(g: &TestGateway, key: &str) -> (u16, Result<Bytes, hyper::Error>) {
    use http_body_util::BodyExt;
    let req = http::Request::post(g.url("/v1/chat/completions"))
        .header("authorization", bearer(key))
        .body(http_body_util::Full::new(Bytes::from(CHAT)))
        .unwrap();
    let resp = within(5 * SEC, "response head", client().request(req))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = within(5 * SEC, "response body", resp.into_body().collect()).await;
    (status, body.map(|b| b.to_bytes()))
}

// ------------------------------------------------------------------ 9-12. upstream faults

#[tokio::test]
async fn upstream_refusing_is_502_within_100ms() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let g = start_gateway_raw(
        start_mock().await,
        &format!("[[upstream]]\nname = \"down\"\nurl = \"http://{closed}\"\n"),
    )
    .await;
    let key = g.key();
    let mut c = Raw::connect(g.addr).await;
    let mut took = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
        let r = c.response().await.unwrap();
        took.push(start.elapsed());
        assert_eq!(r.status(), 502, "{r:?}");
        assert_eq!(r.error_code(), "upstream_unavailable");
        assert_eq!(r.json()["error"]["type"], "upstream_error");
    }
    eprintln!("502 latencies: {took:?}");
    // Fast: an answer that waited on anything (a slot, the 2 s connect timeout) would take
    // seconds; the bound leaves room for a loaded CI machine.
    assert!(took.iter().all(|t| *t < ms(1000)), "{took:?}");

    // An upstream that accepts and closes at once is also 502, just as fast.
    let m = RawMock::start(Mode::CloseImmediately).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    let mut c = Raw::connect(g.addr).await;
    let start = Instant::now();
    c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
    let r = c.response().await.unwrap();
    let t = start.elapsed();
    eprintln!("accept-and-close upstream: {} after {t:?}", r.status());
    assert_eq!(r.status(), 502, "{r:?}");
    assert_eq!(r.error_code(), "upstream_unavailable");
    assert!(t < ms(1000), "{t:?}");
}

#[tokio::test]
async fn upstream_silent_is_504_at_first_byte_timeout() {
    let m = RawMock::start(Mode::Silent).await;
    let g = gateway_for(&m, "first_byte_timeout = \"300ms\"\n", "").await;
    let key = g.key();
    let mut c = Raw::connect(g.addr).await;
    let start = Instant::now();
    c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
    let r = c.response().await.unwrap();
    let t = start.elapsed();
    eprintln!("504 after {t:?}");
    assert_eq!(r.status(), 504, "{r:?}");
    assert_eq!(r.error_code(), "upstream_timeout");
    assert!(t >= ms(300) && t < ms(1500), "{t:?}");
    assert_eq!(m.requests(), 1);
    // The abandoned upstream request's connection is closed, not left waiting.
    let eof = m.wait(SEC, |e| *e == Event::Eof(0)).await;
    assert!(
        eof.is_some(),
        "the timed-out upstream connection stayed open"
    );
}

#[tokio::test]
async fn upstream_reset_mid_stream_is_an_error_for_the_client() {
    for rst in [false, true] {
        let m = RawMock::start(Mode::ResetMidStream { rst }).await;
        let g = gateway_for(&m, "", "").await;
        let key = g.key();
        let mut c = Raw::connect(g.addr).await;
        c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
        let r = c.response().await;
        let text = String::from_utf8_lossy(&c.buf).to_string();
        eprintln!("upstream cut (rst={rst}): client got {r:?}");
        let err = r.expect_err("the client saw a clean end of a cut stream");
        assert!(err.contains("terminating chunk"), "rst={rst}: {err}");
        assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
        assert!(
            text.contains("w0 "),
            "the first event was not relayed: {text:?}"
        );
        assert!(!text.ends_with("0\r\n\r\n"), "{text:?}");

        // The same through a real HTTP client: reading the body fails.
        let (status, body) = chat_through_a_client(&g, &key).await;
        assert_eq!(status, 200);
        assert!(body.is_err(), "rst={rst}: a cut stream read as complete");
    }
}

#[tokio::test]
async fn an_upstream_answer_framed_twice_reaches_the_client_whole() {
    // `Content-Length` beside chunked framing: the body is the chunked one (RFC 9112 §6.3),
    // so the length must not reach the client, whose connection would cut the body at 3.
    let m = RawMock::start(Mode::Bytes(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 3\r\n\
         transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ))
    .await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    let mut c = Raw::connect(g.addr).await;
    for _ in 0..2 {
        c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
        let r = c.response().await.unwrap();
        assert_eq!(r.status(), 200, "{r:?}");
        assert_eq!(r.body, b"hello", "{r:?}");
        assert_ne!(r.header("content-length"), Some("3"), "{r:?}");
    }
    // The same through a real HTTP client.
    let (status, body) = chat_through_a_client(&g, &key).await;
    assert_eq!(status, 200);
    assert_eq!(&body.unwrap()[..], b"hello");
}

#[tokio::test]
async fn an_upstream_that_switches_protocols_unasked_is_502() {
    let m = RawMock::start(Mode::Bytes(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    ))
    .await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    let mut c = Raw::connect(g.addr).await;
    c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
    let r = c.response().await.unwrap();
    assert_eq!(r.status(), 502, "{r:?}");
    assert_eq!(r.error_code(), "upstream_unavailable");
    assert!(r.header("upgrade").is_none(), "{r:?}");
}

#[tokio::test]
async fn upstream_connection_is_reused_after_a_complete_answer() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    // Sequential requests, from one client connection and from fresh ones: each answer is
    // read to its end, so its upstream connection goes back to the pool and serves the next.
    for i in 0..6 {
        let mut c = Raw::connect(g.addr).await;
        for j in 0..2 {
            c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
            let r = c.response().await.unwrap();
            assert_eq!(r.status(), 200, "request {i}.{j}: {r:?}");
        }
    }
    assert_eq!(m.requests(), 12);
    assert_eq!(m.connections(), 1, "the upstream connection was not reused");
}

#[tokio::test]
async fn pool_sweep_closes_idle_connections_the_upstream_closed() {
    let m = RawMock::start(Mode::CloseWhenIdle(ms(100))).await;
    let g = gateway_for(&m, "", "").await;
    let mut c = Raw::connect(g.addr).await;
    c.send(chat_req(Some(&g.key()), "", CHAT)).await.unwrap();
    assert_eq!(c.response().await.unwrap().status(), 200);
    let live = g.gw.live();
    let pool = live.upstreams[0].pool();
    assert_eq!(
        pool.idle(),
        1,
        "the answered request's connection went back to the pool"
    );
    pool.sweep();
    assert_eq!(pool.idle(), 1, "an open idle connection was swept");
    assert!(
        m.wait(2 * SEC, |e| matches!(e, Event::MockClosed(_)))
            .await
            .is_some(),
        "the mock did not close"
    );
    // With no traffic at all, the periodic sweep is what lets the socket go.
    let swept = eventually(2 * SEC, || async {
        pool.sweep();
        pool.idle() == 0
    })
    .await;
    assert!(swept, "a connection the upstream closed stayed in the pool");
}

#[tokio::test]
async fn stale_pooled_upstream_connection_is_retried_once() {
    let m = RawMock::start(Mode::CloseWhenIdle(ms(100))).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    let mut c = Raw::connect(g.addr).await;
    let rounds = 10;
    for i in 0..rounds {
        c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
        let r = c.response().await.unwrap();
        assert_eq!(r.status(), 200, "round {i}: {r:?}");
        // The mock closes the idle pooled connection; the next request goes right after.
        let closed = m
            .wait_n(2 * SEC, i + 1, |e| matches!(e, Event::MockClosed(_)))
            .await;
        assert!(closed.is_some(), "round {i}: the mock did not close");
    }
    assert_eq!(m.requests(), rounds);
    assert_eq!(m.connections(), rounds, "one connection per request");
    let mut per_conn = vec![0; m.connections()];
    for i in 0..m.requests() {
        per_conn[m.request(i).0] += 1;
    }
    assert!(per_conn.iter().all(|n| *n == 1), "{per_conn:?}");
}

// ------------------------------------------------------------------ 13. client goes away

#[tokio::test]
async fn client_gone_before_first_byte_closes_upstream() {
    let m = RawMock::start(Mode::Delay(Duration::from_secs(5))).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    let mut took = Vec::new();
    for i in 0..3 {
        let mut c = Raw::connect(g.addr).await;
        c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
        assert!(
            m.wait_n(2 * SEC, i + 1, |e| matches!(e, Event::Request(_)))
                .await
                .is_some(),
            "the request did not reach the upstream"
        );
        let gone = Instant::now();
        drop(c);
        let eof = m
            .wait_n(2 * SEC, i + 1, |e| matches!(e, Event::Eof(_)))
            .await
            .expect("the upstream connection stayed open after the client left");
        took.push(eof.saturating_duration_since(gone));
    }
    eprintln!("client gone before first byte → upstream closed after {took:?}");
    assert!(took.iter().all(|t| *t < ms(1000)), "{took:?}");
    assert_eq!(g.gw.capacity.in_use(), 0, "slots still held");
}

/// Which connection the `n`-th event matching `pred` was on, and when it came.
fn nth_event(m: &RawMock, n: usize, pred: impl Fn(&Event) -> bool) -> Option<(Event, Instant)> {
    m.sh.log
        .lock()
        .unwrap()
        .iter()
        .filter(|(e, _)| pred(e))
        .nth(n)
        .copied()
}

/// A client that leaves closes its request's upstream connection (the cancel), and a new one
/// is made at once in its place, in the background: the next request is sent on it, with no
/// connect on its path. Both ways a client can leave: before the answer's head (the wait for
/// it) and during its body (the lease).
#[tokio::test]
async fn a_connection_closed_by_a_client_that_left_is_replaced_in_the_background() {
    for (mode, mid_body) in [
        (Mode::Delay(Duration::from_secs(30)), false),
        (
            Mode::Sse {
                interval: ms(50),
                count: 400,
            },
            true,
        ),
    ] {
        let m = RawMock::start(mode).await;
        let g = gateway_for(&m, "", "").await;
        let key = g.key();
        let pool = || g.gw.live().upstreams[0].pool().idle();
        let mut c = Raw::connect(g.addr).await;
        c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
        assert!(
            m.wait(2 * SEC, |e| matches!(e, Event::Request(0)))
                .await
                .is_some(),
            "mid_body {mid_body}: the request did not reach the upstream"
        );
        if mid_body {
            let deadline = tokio::time::Instant::now() + 3 * SEC;
            while !contains(&c.buf, "w1 ") {
                assert!(c.fill(deadline).await && !c.eof, "no events: {:?}", c.buf);
            }
        }
        drop(c);
        assert!(
            m.wait(2 * SEC, |e| matches!(e, Event::Eof(0)))
                .await
                .is_some(),
            "mid_body {mid_body}: the upstream request was not cancelled"
        );
        // The replacement: a second connection, with no request on it, idle in the pool.
        assert!(
            m.wait(2 * SEC, |e| matches!(e, Event::Accepted(1)))
                .await
                .is_some(),
            "mid_body {mid_body}: the cancelled connection was not replaced"
        );
        assert!(
            eventually(2 * SEC, || async { pool() == 1 }).await,
            "mid_body {mid_body}: the replacement is not in the pool ({} idle)",
            pool()
        );
        assert_eq!(m.heads(), 1, "mid_body {mid_body}");
        // The next request goes on it.
        let mut c = Raw::connect(g.addr).await;
        c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
        let head = m
            .wait_n(2 * SEC, 2, |e| matches!(e, Event::Head(_)))
            .await
            .is_some();
        assert!(
            head,
            "mid_body {mid_body}: the second request did not arrive"
        );
        assert_eq!(
            nth_event(&m, 1, |e| matches!(e, Event::Head(_))).map(|(e, _)| e),
            Some(Event::Head(1)),
            "mid_body {mid_body}: the second request was not sent on the replacement"
        );
        assert_eq!(m.connections(), 2, "mid_body {mid_body}");
        drop(c);
    }
}

/// A connection the upstream broke is closed and not replaced: the next request makes its
/// own, after it was sent (no reconnecting to a failing upstream behind the clients' backs).
#[tokio::test]
async fn a_connection_the_upstream_broke_is_not_replaced() {
    let m = RawMock::start(Mode::ResetMidStream { rst: false }).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    let mut c = Raw::connect(g.addr).await;
    c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
    let deadline = tokio::time::Instant::now() + 3 * SEC;
    while c.fill(deadline).await && !c.eof {}
    assert!(
        m.wait(2 * SEC, |e| matches!(e, Event::MockClosed(0)))
            .await
            .is_some(),
        "the mock did not close"
    );
    let sent = Instant::now();
    let mut c = Raw::connect(g.addr).await;
    c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
    let accepted = m
        .wait(2 * SEC, |e| matches!(e, Event::Accepted(1)))
        .await
        .expect("the second request did not reach the upstream");
    assert!(
        accepted >= sent,
        "a connection was made before the second request: a broken one was replaced"
    );
    drop(c);
}

/// Replacements stop at the pool's cap: at most 256 connections idle or being made. 300
/// requests in flight whose clients all leave at once close 300 upstream connections; 256 are
/// made again, the other 44 are not (a gateway whose clients vanish together must not dial
/// its upstream without bound), and the pool keeps 256 idle.
#[tokio::test]
async fn replacements_stop_at_the_idle_cap() {
    const CLIENTS: usize = 300;
    const CAP: usize = 256;
    let m = RawMock::start_with(Mode::Delay(Duration::from_secs(60)), false).await;
    let limits = "[limits]\nmax_in_flight = 1000\nrequests_per_minute = 1000000\n";
    let g = gateway_for(&m, "", limits).await;
    let key = g.key();
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut c = Raw::connect(g.addr).await;
        c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
        clients.push(c);
    }
    assert!(
        eventually(10 * SEC, || async { m.heads() == CLIENTS }).await,
        "{} of {CLIENTS} requests reached the upstream",
        m.heads()
    );
    assert_eq!(
        m.connections(),
        CLIENTS,
        "one connection per request in flight"
    );
    drop(clients);
    let pool = || g.gw.live().upstreams[0].pool().idle();
    assert!(
        eventually(10 * SEC, || async {
            g.gw.capacity.in_use() == 0 && pool() == CAP && m.connections() >= CLIENTS + CAP
        })
        .await,
        "the cancelled connections were not replaced up to the cap: {} idle, {} made, {} in flight",
        pool(),
        m.connections() - CLIENTS,
        g.gw.capacity.in_use()
    );
    // Every cancel was decided when its lease was dropped; a replacement past the cap would
    // arrive with the others. Give a stray one time to show.
    let stray = eventually(ms(500), || async { m.connections() > CLIENTS + CAP }).await;
    assert!(
        !stray,
        "{} replacements were made for {CLIENTS} cancels: the cap is {CAP}",
        m.connections() - CLIENTS
    );
    assert_eq!(pool(), CAP);
}

#[tokio::test]
async fn upstream_stalled_mid_stream_is_cut_at_idle_timeout() {
    /// A chat request through a gateway with a 400 ms idle timeout to an SSE upstream.
    async fn stream(interval: Duration, count: usize) -> (RawMock, TestGateway, Raw, Instant) {
        let m = RawMock::start(Mode::Sse { interval, count }).await;
        let g = gateway_for(&m, "idle_timeout = \"400ms\"\n", "").await;
        let mut c = Raw::connect(g.addr).await;
        let start = Instant::now();
        c.send(chat_req(Some(&g.key()), "", CHAT)).await.unwrap();
        (m, g, c, start)
    }

    // Gaps under the idle timeout, a stream longer than it: the timer restarts at each event.
    let (_m, _g, mut c, _) = stream(ms(150), 4).await;
    let r = c
        .response()
        .await
        .expect("a stream with short gaps completes");
    assert_eq!(r.status(), 200);
    assert!(
        contains(&r.body, "w3 "),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );

    // A gap over it: the stream is cut, the client sees a broken body, not a clean end.
    let (m, _g, mut c, start) = stream(ms(1500), 2).await;
    let r = c.response().await;
    let took = start.elapsed();
    eprintln!("stalled upstream stream: {r:?} after {took:?}");
    let err = r.expect_err("a stalled stream read as complete");
    assert!(err.contains("terminating chunk"), "{err}");
    assert!(String::from_utf8_lossy(&c.buf).starts_with("HTTP/1.1 200"));
    assert!(took >= ms(400) && took < ms(1400), "{took:?}");
    assert!(
        m.wait(SEC, |e| matches!(e, Event::Eof(_))).await.is_some(),
        "the stalled upstream connection stayed open"
    );
}

#[tokio::test]
async fn client_gone_mid_sse_closes_upstream() {
    let m = RawMock::start(Mode::Sse {
        interval: ms(50),
        count: 200,
    })
    .await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    let mut took = Vec::new();
    for i in 0..3 {
        let mut c = Raw::connect(g.addr).await;
        c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
        let deadline = tokio::time::Instant::now() + 3 * SEC;
        while !contains(&c.buf, "w1 ") {
            assert!(c.fill(deadline).await && !c.eof, "no events: {:?}", c.buf);
        }
        let gone = Instant::now();
        drop(c);
        let eof = m
            .wait_n(2 * SEC, i + 1, |e| matches!(e, Event::Eof(_)))
            .await
            .expect("the upstream stream continued after the client left");
        took.push(eof.saturating_duration_since(gone));
    }
    eprintln!("client gone mid-SSE → upstream closed after {took:?}");
    assert!(took.iter().all(|t| *t < ms(1000)), "{took:?}");
}

// ------------------------------------------------------------------ 14. capacity

#[tokio::test]
async fn gateway_capacity_exhausted_is_fast_503() {
    let m = RawMock::start(Mode::Silent).await;
    let g = gateway_for(&m, "", "[server]\nmax_in_flight = 2\n").await;
    let key = g.key();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Raw::connect(g.addr).await;
        c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
        held.push(c);
    }
    assert!(
        m.wait_n(2 * SEC, 2, |e| matches!(e, Event::Request(_)))
            .await
            .is_some(),
        "the two held requests did not reach the upstream"
    );
    let mut took = Vec::new();
    let mut c = Raw::connect(g.addr).await;
    for _ in 0..3 {
        let start = Instant::now();
        c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
        let r = c.response().await.unwrap();
        took.push(start.elapsed());
        assert_eq!(r.status(), 503, "{r:?}");
        assert_eq!(r.error_code(), "overloaded");
        assert_eq!(r.json()["error"]["type"], "server_error");
        assert!(r.header("retry-after").is_some());
    }
    eprintln!("503 overloaded latencies: {took:?}");
    // Fast: an answer that waited on anything (a slot, the 2 s connect timeout) would take
    // seconds; the bound leaves room for a loaded CI machine.
    assert!(took.iter().all(|t| *t < ms(1000)), "{took:?}");
    assert_eq!(m.requests(), 2, "a refused request reached the upstream");

    drop(held);
    assert!(
        m.wait_n(2 * SEC, 2, |e| matches!(e, Event::Eof(_)))
            .await
            .is_some(),
        "the held upstream requests were not cancelled"
    );
    assert_eq!(g.gw.capacity.in_use(), 0, "slots were not given back");
}

/// Before: the first-byte deadline counted from when the gateway began sending, while the
/// client was still uploading, so a slow upload got 504 `upstream_timeout`, blamed on an
/// upstream that could not answer before it had the body. It now counts from the body's last
/// byte: a body streamed unread, and a multipart upload read through its parser.
#[tokio::test]
async fn a_slow_upload_is_not_an_upstream_timeout() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "first_byte_timeout = \"400ms\"\n", "").await;
    let plain = g.key();
    let allowlisted = key_with_models(&g, &["llama-*"]);
    let filler = "x".repeat(1500);
    let json = format!(
        r#"{{"model":"llama-3.1-8b-instruct","messages":[{{"role":"user","content":"{filler}"}}]}}"#
    );
    let b = "kgSlowB0undary";
    let upload = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nllama-3.1-8b-instruct\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n{filler}\r\n--{b}--\r\n"
    );
    let cases = [
        (
            "streamed unread",
            &plain,
            "application/json".to_string(),
            "/v1/chat/completions",
            json,
        ),
        (
            "multipart, parsed",
            &allowlisted,
            format!("multipart/form-data; boundary={b}"),
            "/v1/audio/transcriptions",
            upload,
        ),
    ];
    for (what, key, ct, path, body) in cases {
        let mut c = Raw::connect(g.addr).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        c.send(head).await.unwrap();
        let start = Instant::now();
        // About 1.2 s of upload at about 1.4 KB/s, three first-byte timeouts long.
        for piece in body.as_bytes().chunks(body.len().div_ceil(8)) {
            tokio::time::sleep(ms(150)).await;
            c.send(piece).await.unwrap();
        }
        let r = c.response().await.unwrap();
        eprintln!("{what}: {} after {:?}", r.status(), start.elapsed());
        assert_eq!(r.status(), 200, "{what}: {r:?}");
    }
}
