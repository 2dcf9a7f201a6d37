//! Clients that take their time, through the real listener: heads dripped byte by byte
//! (slowloris), connections that send nothing or part of the HTTP/2 preface, request bodies
//! that stall or drip just under the gap. Each is cut by its timeout, within generous bounds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::raw::*;
use common::raw_upstream::*;
use common::*;
use std::time::Instant;

// ------------------------------------------------------------------ 5. slowloris

#[tokio::test]
async fn slowloris_headers_are_cut_by_header_read_timeout() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "[server]\nheader_read_timeout = \"1s\"\n").await;
    let key = g.key();
    let req = chat_req(Some(&key), "", CHAT);

    // A head dripped one byte every 200 ms.
    let mut c = Raw::connect(g.addr).await;
    let start = Instant::now();
    let mut closed_at = None;
    for b in req.as_bytes() {
        if c.send([*b]).await.is_err() || c.wait_closed(ms(200)).await.is_some() {
            closed_at = Some(start.elapsed());
            break;
        }
        if start.elapsed() > 5 * SEC {
            break;
        }
    }
    let at = closed_at.expect("a head dripped at 5 bytes/s was still being read after 5 s");
    eprintln!(
        "slowloris: closed after {at:?}, answer before close: {:?}",
        String::from_utf8_lossy(&c.buf)
    );
    assert!(at >= ms(800) && at <= ms(2500), "closed after {at:?}");
    if !c.buf.is_empty() {
        assert!(
            c.buf.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&c.buf)
        );
    }

    // On a kept-alive connection, the next head is bounded from its first byte too.
    let mut c = Raw::connect(g.addr).await;
    c.send(&req).await.unwrap();
    assert_eq!(c.response().await.unwrap().status(), 200);
    let start = Instant::now();
    let mut closed_at = None;
    for b in req.as_bytes() {
        if c.send([*b]).await.is_err() || c.wait_closed(ms(200)).await.is_some() {
            closed_at = Some(start.elapsed());
            break;
        }
        if start.elapsed() > 5 * SEC {
            break;
        }
    }
    let at = closed_at.expect("a second head dripped at 5 bytes/s was still read after 5 s");
    eprintln!("slowloris on a kept-alive connection: closed after {at:?}");
    assert!(at >= ms(800) && at <= ms(2500), "closed after {at:?}");
    assert_eq!(m.requests(), 1);
}

/// An idle HTTP/1.1 keep-alive connection lasts `idle_timeout`, not `header_read_timeout`:
/// a load balancer that keeps backend connections open for a minute must not find them closed
/// at 10 s (it would race the gateway with its next request).
#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_header_read_timeout() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(
        &m,
        "",
        "[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"3s\"\n",
    )
    .await;
    let key = g.key();
    let req = chat_req(Some(&key), "", CHAT);
    let mut c = Raw::connect(g.addr).await;
    c.send(&req).await.unwrap();
    assert_eq!(c.response().await.unwrap().status(), 200);
    assert_eq!(
        c.wait_closed(ms(2000)).await,
        None,
        "closed before idle_timeout"
    );
    // Still usable after twice the header timeout.
    c.send(&req).await.unwrap();
    assert_eq!(c.response().await.unwrap().status(), 200);
    let closed = c.wait_closed(5 * SEC).await;
    eprintln!("idle keep-alive connection closed after {closed:?}");
    assert!(
        closed.is_some_and(|d| d >= ms(2500) && d <= ms(4500)),
        "closed after {closed:?}"
    );
}

#[tokio::test]
async fn silent_and_partial_preface_connections_are_closed() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "[server]\nheader_read_timeout = \"1s\"\n").await;
    // Each is held open by a client that then says nothing more. "G" decides HTTP/1.1 at
    // once; the others are prefixes of the HTTP/2 preface, so protocol detection waits.
    let mut held = Vec::new();
    for sent in ["", "P", "PRI * HTTP/2.0\r\n", "G"] {
        let mut c = Raw::connect(g.addr).await;
        c.send(sent).await.unwrap();
        held.push((sent, c));
    }
    let mut outcomes = Vec::new();
    for (sent, c) in &mut held {
        outcomes.push((*sent, c.wait_closed(3 * SEC).await));
    }
    eprintln!("connections that stop sending, closed after: {outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|(_, at)| at.is_some_and(|d| d <= ms(2500))),
        "with header_read_timeout = 1s, a connection that sends nothing (or part of the \
         HTTP/2 preface) must not be held open: {outcomes:?}"
    );
    assert_eq!(m.connections(), 0);
}

// ------------------------------------------------------------------ 6. slow bodies

#[tokio::test]
async fn stalled_body_is_cut_by_body_read_timeout() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "[server]\nbody_read_timeout = \"1s\"\n").await;
    let streamed = g.key();
    let buffered = key_with_models(&g, &["llama-*"]);

    for (what, key) in [("buffered", &buffered), ("streamed", &streamed)] {
        let conns = m.connections();
        let mut c = Raw::connect(g.addr).await;
        c.send(chat_head(Some(key), "Content-Length: 100\r\n"))
            .await
            .unwrap();
        c.send(&CHAT.as_bytes()[..10]).await.unwrap();
        let start = Instant::now();
        let r = c.response_within(4 * SEC).await;
        let took = start.elapsed();
        eprintln!(
            "{what} stalled body: {:?} after {took:?}",
            r.as_ref().map(Msg::status)
        );
        let r = r.unwrap();
        assert!(matches!(r.status(), 400 | 408), "{what}: {r:?}");
        assert!(took <= ms(2000), "{what}: answered after {took:?}");
        assert_eq!(
            m.requests(),
            0,
            "{what}: a partial body became a whole request"
        );
        if what == "buffered" {
            assert_eq!(m.connections(), conns, "the buffered body went upstream");
        } else if m.connections() > conns {
            let eof = m.wait(2 * SEC, |e| *e == Event::Eof(conns)).await;
            assert!(eof.is_some(), "{what}: the upstream connection stayed open");
            eprintln!(
                "{what} stalled body: upstream closed {:?} after the answer",
                eof.unwrap().saturating_duration_since(start + took)
            );
        }
    }
}

/// Found by an outside probe: a body that never paused (50 bytes every 100 ms) was cut at
/// `body_read_timeout` in all, so an upload on a slow link failed however steadily it came.
/// A body may take longer while it keeps coming at 1 KiB/s or more (`MIN_BODY_RATE`); the
/// drip below is still cut.
#[tokio::test]
async fn a_steady_body_slower_than_the_timeout_in_all_arrives() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "[server]\nbody_read_timeout = \"1s\"\n").await;
    let streamed = g.key();
    let buffered = key_with_models(&g, &["llama-*"]);
    // 256 bytes every 100 ms (2.5 KiB/s) for 2.5 s: 2.5 times the timeout.
    let body = format!("{CHAT:<6400}");
    for (what, key) in [("buffered", &buffered), ("streamed", &streamed)] {
        let mut c = Raw::connect(g.addr).await;
        let framing = format!("Content-Length: {}\r\n", body.len());
        c.send(chat_head(Some(key), &framing)).await.unwrap();
        let start = Instant::now();
        let pieces: Vec<&[u8]> = body.as_bytes().chunks(256).collect();
        for (i, piece) in pieces.iter().enumerate() {
            c.send(*piece).await.unwrap();
            if i + 1 == pieces.len() {
                break;
            }
            assert!(
                c.wait_closed(ms(100)).await.is_none() && c.buf.is_empty(),
                "{what}: answered or closed after {:?} mid-body: {:?}",
                start.elapsed(),
                String::from_utf8_lossy(&c.buf)
            );
        }
        let r = c.response_within(4 * SEC).await.unwrap();
        assert_eq!(r.status(), 200, "{what}: {r:?}");
        assert!(start.elapsed() >= ms(2400), "{what}");
    }
}

#[tokio::test]
async fn body_dripped_under_the_idle_gap_is_still_bounded() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "[server]\nbody_read_timeout = \"1s\"\n").await;
    let streamed = g.key();
    let buffered = key_with_models(&g, &["llama-*"]);

    // One byte every 300 ms: never a 1 s gap, but 100 bytes would take 30 s.
    let mut outcomes = Vec::new();
    for (what, key) in [("buffered", &buffered), ("streamed", &streamed)] {
        let mut c = Raw::connect(g.addr).await;
        c.send(chat_head(Some(key), "Content-Length: 100\r\n"))
            .await
            .unwrap();
        let start = Instant::now();
        let mut ended = None;
        let mut i = 0;
        while start.elapsed() < 4 * SEC {
            if c.send([CHAT.as_bytes()[i % CHAT.len()]]).await.is_err()
                || c.wait_closed(ms(300)).await.is_some()
                || !c.buf.is_empty()
            {
                ended = Some(start.elapsed());
                break;
            }
            i += 1;
        }
        eprintln!(
            "{what} dripped body: ended {ended:?} after {i} bytes, answer {:?}",
            String::from_utf8_lossy(&c.buf).lines().next()
        );
        outcomes.push((what, ended));
    }
    for (what, ended) in outcomes {
        assert!(
            ended.is_some_and(|d| d <= ms(2500)),
            "{what}: a body dripped at 3 bytes/s held the request for {ended:?} \
             (no total body deadline)"
        );
    }
}
