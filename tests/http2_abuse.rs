//! HTTP/2 floods through the real listener: rapid reset (raw frames and the h2 crate) and
//! CONTINUATION floods end the connection, and spare the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::raw::*;
use common::raw_upstream::*;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ------------------------------------------------------------------ 7. HTTP/2 floods

/// `HEADERS` for `POST /v1/chat/completions` with `auth`, HPACK without indexing.
fn h2_chat_headers(auth: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86, 0x04, 20];
    block.extend_from_slice(b"/v1/chat/completions");
    // :authority gw, then authorization (static index 23) as a literal.
    block.extend_from_slice(&[0x01, 0x02, b'g', b'w', 0x0f, 0x08, auth.len() as u8]);
    block.extend_from_slice(auth.as_bytes());
    block
}

/// Reads from `rd` until EOF or an error; the bytes and when it ended (None: 5 s passed).
async fn read_until_closed(rd: &mut tokio::net::tcp::OwnedReadHalf) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(5 * SEC, rd.read(&mut chunk)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(start.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The CVE-2023-44487 pattern on the wire: HEADERS and RST_STREAM back to back, 2000 times.
#[tokio::test]
async fn h2_rapid_reset_frames_end_in_goaway_and_spare_the_upstream() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    let block = h2_chat_headers(&bearer(&key));
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(h2_frame(0x4, 0, 0, &[]));
        if wr.write_all(&out).await.is_err() {
            return 0;
        }
        let mut pairs = 0;
        for batch in 0..20u32 {
            let mut out = Vec::new();
            for j in 0..100u32 {
                let id = 2 * (batch * 100 + j) + 1;
                out.extend(h2_frame(0x1, 0x5, id, &block)); // END_STREAM | END_HEADERS
                out.extend(h2_frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
            }
            if wr.write_all(&out).await.is_err() {
                return pairs;
            }
            pairs += 100;
        }
        pairs
    });
    let (got, closed) = read_until_closed(&mut rd).await;
    let pairs = within(5 * SEC, "flood writer", writer).await.unwrap();
    let frames = h2_frames(&got);
    let goaway = frames.iter().find(|f| f.0 == 0x7).map(|f| {
        (
            u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]]),
            u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]),
            String::from_utf8_lossy(&f.3[8..]).to_string(),
        )
    });
    // Anything that slipped through has reached the upstream before it is counted.
    assert!(settled(&g, &m, 5 * SEC).await, "the upstream never settled");
    eprintln!(
        "rapid reset (raw frames): wrote {pairs} pairs, closed after {closed:?}, \
         GOAWAY (last stream, code, debug) {goaway:?}, upstream heads {}",
        m.heads()
    );
    assert!(closed.is_some(), "the connection stayed open");
    let (_, code, _) = goaway.expect("no GOAWAY");
    assert_eq!(code, 0xb, "GOAWAY code is not ENHANCE_YOUR_CALM");
    assert!(
        !frames.iter().any(|f| f.0 == 0x1),
        "the server answered reset streams"
    );
    assert!(
        m.heads() <= 5,
        "{} requests reached the upstream",
        m.heads()
    );
    assert_eq!(g.gw.capacity.in_use(), 0);

    let mut c = Raw::connect(g.addr).await;
    c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
    assert_eq!(c.response().await.unwrap().status(), 200);
}

/// The same flood from the `h2` crate. Its client drops a stream reset before its HEADERS
/// were written, so the loop yields once per stream to put HEADERS on the wire first: the
/// server then accepts each stream before its RST_STREAM arrives.
#[tokio::test]
async fn h2_rapid_reset_flood_from_the_h2_crate_ends_in_goaway() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();
    let auth = bearer(&key);

    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let (client, conn) = within(
        SEC,
        "h2 handshake",
        h2::client::Builder::new()
            // Only the server's limits should end this connection.
            .max_local_error_reset_streams(None)
            .max_concurrent_reset_streams(10_000)
            .handshake::<_, Bytes>(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let mut client = Some(client);
    let start = Instant::now();
    let mut sent = 0;
    let mut refused = None;
    for _ in 0..2000 {
        let ready = client.take().unwrap().ready();
        let mut c = match within(5 * SEC, "h2 ready", ready).await {
            Ok(c) => c,
            Err(e) => {
                refused = Some(e);
                break;
            }
        };
        let req = http::Request::post(format!("http://{}/v1/chat/completions", g.addr))
            .header("authorization", auth.as_str())
            .body(())
            .unwrap();
        match c.send_request(req, true) {
            Ok((_resp, mut stream)) => {
                tokio::task::yield_now().await;
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
                client = Some(c);
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    drop(client);
    let ended = within(5 * SEC, "h2 connection end", conn).await.unwrap();
    assert!(settled(&g, &m, 5 * SEC).await, "the upstream never settled");
    let upstream_eofs =
        m.sh.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| matches!(e, Event::Eof(_)))
            .count();
    eprintln!(
        "rapid reset (h2 crate): {sent} streams in {:?}; client refused: {refused:?}; \
         connection: {ended:?}; upstream: {} heads, {} whole requests, {} connections \
         ({upstream_eofs} closed); gateway slots in use {}",
        start.elapsed(),
        m.heads(),
        m.requests(),
        m.connections(),
        g.gw.capacity.in_use()
    );
    let (heads, conns) = (m.heads(), m.connections());
    assert_eq!(g.gw.capacity.in_use(), 0, "slots leaked");
    // Still healthy.
    let mut c = Raw::connect(g.addr).await;
    c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
    assert_eq!(c.response().await.unwrap().status(), 200);

    assert!(
        refused.is_some() || ended.is_err(),
        "{sent} streams opened and reset, and the server never ended the connection"
    );
    // A request that finds an idle upstream connection is written at once, before its reset
    // can arrive (a new connection waits one scheduler trip first, and a request reset by then
    // is not sent). From the first cancel on there is one: the replacement of the connection
    // the cancel closed. So the bound is the per-connection cancel limit: a client that
    // cancels more than 8 requests, and more than it lets finish, is cut off at the 9th.
    assert!(
        heads <= 9,
        "reset streams reached the upstream: {heads} requests over {conns} connections"
    );
    // Each cancelled request costs at most two connections: its own, closed (made for it,
    // or taken idle), and the replacement of a healthy one; plus the request at the end.
    assert!(
        conns <= 2 * 9 + 2,
        "{conns} upstream connections for one abusive client"
    );
}

/// One HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Splits received bytes into (type, flags, stream, payload) frames; the server's bytes
/// start after no preface.
fn h2_frames(mut buf: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while buf.len() >= 9 {
        let n = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
        if buf.len() < 9 + n {
            break;
        }
        let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
        out.push((buf[3], buf[4], stream, buf[9..9 + n].to_vec()));
        buf = &buf[9 + n..];
    }
    out
}

#[tokio::test]
async fn h2_continuation_flood_is_cut_without_an_answer() {
    let m = RawMock::start(Mode::Answer).await;
    let g = gateway_for(&m, "", "").await;
    let key = g.key();

    // A literal header field without indexing, new name: junk that decodes fine.
    let mut junk = vec![0x00, 6];
    junk.extend_from_slice(b"x-junk");
    junk.push(100);
    junk.extend_from_slice(&[b'j'; 100]);
    for (what, payload, frames) in [("junk", junk, 2000usize), ("empty", Vec::new(), 20_000)] {
        let tcp = TcpStream::connect(g.addr).await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        // :method POST, :scheme http, :path /, :authority gw; no END_HEADERS.
        let first: Vec<u8> = vec![0x83, 0x86, 0x84, 0x01, 0x02, b'g', b'w'];
        let writer = tokio::spawn(async move {
            let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            out.extend(h2_frame(0x4, 0, 0, &[]));
            out.extend(h2_frame(0x1, 0x1, 1, &first));
            if wr.write_all(&out).await.is_err() {
                return 0;
            }
            let cont = h2_frame(0x9, 0, 1, &payload);
            let mut written = 0;
            for batch in 0..frames / 100 {
                let bytes: Vec<u8> = cont.repeat(100);
                if wr.write_all(&bytes).await.is_err() {
                    return batch * 100;
                }
                written += 100;
            }
            written
        });
        let start = Instant::now();
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        let closed = loop {
            match tokio::time::timeout(5 * SEC, rd.read(&mut chunk)).await {
                Err(_) => break None,
                Ok(Ok(0)) | Ok(Err(_)) => break Some(start.elapsed()),
                Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            }
        };
        let written = within(5 * SEC, "flood writer", writer).await.unwrap();
        let frames_in = h2_frames(&got);
        let goaway = frames_in
            .iter()
            .find(|f| f.0 == 0x7)
            .map(|f| u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]));
        eprintln!(
            "continuation flood ({what}): wrote {written} frames, closed after {closed:?}, \
             GOAWAY code {goaway:?}, frame types {:?}",
            frames_in.iter().map(|f| f.0).collect::<Vec<_>>()
        );
        assert!(closed.is_some(), "{what}: the connection stayed open");
        assert!(
            !frames_in.iter().any(|f| f.0 == 0x1),
            "{what}: the server answered the flooded stream"
        );
        // ENHANCE_YOUR_CALM (0xb) for too many frames, or a compression/protocol error.
        if let Some(code) = goaway {
            assert!(matches!(code, 0x1 | 0x9 | 0xb), "{what}: GOAWAY {code:#x}");
        }
    }
    assert_eq!(m.connections(), 0, "a flooded stream reached the upstream");

    let mut c = Raw::connect(g.addr).await;
    c.send("GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.response().await.unwrap().status(), 200);
    c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
    assert_eq!(c.response().await.unwrap().status(), 200);
}
