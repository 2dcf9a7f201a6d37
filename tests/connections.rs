//! Connections: descriptors running out (the real binary under a low `ulimit -n`), idle and
//! silent connections over HTTP/1.1 and HTTP/2, clients that stop reading an answer, the
//! per-address cap, and HEAD — through the real listener on 127.0.0.1:0.
//!
//! The times they measure are bounded generously. Run with `--nocapture` to see them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::binary::*;
use common::raw::{chat_req, find, ms, Raw, SEC};
use common::*;
use http::Method;
use keygate::keys::record::KeyLimits;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n";

// ------------------------------------------------------------------ HTTP/2 client

/// A socket that keeps a copy of every byte it reads, to find the server's frames.
struct Tee {
    s: TcpStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Tee {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.s).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            this.seen
                .lock()
                .unwrap()
                .extend_from_slice(&buf.filled()[before..]);
        }
        r
    }
}

impl AsyncWrite for Tee {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().s).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().s).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().s).poll_shutdown(cx)
    }
}

/// An h2c connection from the `h2` crate (which answers PINGs and SETTINGS by itself).
struct H2 {
    client: h2::client::SendRequest<Bytes>,
    /// The connection task; it ends when the connection does.
    conn: tokio::task::JoinHandle<Result<(), h2::Error>>,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl H2 {
    async fn connect(addr: SocketAddr, builder: &h2::client::Builder) -> H2 {
        let s = TcpStream::connect(addr).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tee = Tee {
            s,
            seen: Arc::clone(&seen),
        };
        let (client, conn) = tokio::time::timeout(SEC, builder.handshake::<_, Bytes>(tee))
            .await
            .expect("h2 handshake")
            .unwrap();
        H2 {
            client,
            conn: tokio::spawn(conn),
            seen,
        }
    }

    /// Waits for the connection to end: how long it took, or `None` if still open.
    async fn wait_closed(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        tokio::time::timeout(limit, &mut self.conn)
            .await
            .ok()
            .map(|_| start.elapsed())
    }

    /// The error code of the first GOAWAY the server sent.
    fn goaway(&self) -> Option<u32> {
        let seen = self.seen.lock().unwrap();
        let mut buf = &seen[..];
        while buf.len() >= 9 {
            let n = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + n {
                break;
            }
            if buf[3] == 0x7 && n >= 8 {
                return Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
            }
            buf = &buf[9 + n..];
        }
        None
    }
}

// ------------------------------------------------------------------ raw SSE upstream

/// An upstream that answers every request with a chunked SSE stream: `x-test-events` events
/// (endless without it), each padded to `x-test-event-bytes`, `x-test-interval-ms` apart. It
/// counts the connections that the gateway closed.
struct SseUpstream {
    addr: SocketAddr,
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SseUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SseUpstream {
    async fn start() -> SseUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closed = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&closed);
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    sse_conn(s).await;
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        SseUpstream { addr, closed, task }
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Serves requests on one connection until the gateway closes it.
async fn sse_conn(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // A request: head, then a content-length body.
        let (head, used) = loop {
            if let Some(h) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
                let len: usize = header(&head, "content-length").unwrap_or(0);
                if buf.len() >= h + 4 + len {
                    break (head, h + 4 + len);
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..used);
        let events: Option<usize> = header(&head, "x-test-events");
        let pad: usize = header(&head, "x-test-event-bytes").unwrap_or(0);
        let interval = ms(header(&head, "x-test-interval-ms").unwrap_or(0));
        let (mut rd, mut wr) = s.split();
        let stream = async {
            wr.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await?;
            let mut i = 0;
            while events.is_none_or(|n| i < n) {
                let ev = format!(
                    "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} {}\"}}}}]}}\n\n",
                    "x".repeat(pad)
                );
                wr.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes())
                    .await?;
                i += 1;
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
            }
            wr.write_all(b"0\r\n\r\n").await
        };
        let mut probe = [0u8; 1];
        tokio::select! {
            r = stream => if r.is_err() { return },
            // The gateway does not pipeline: any read here is its close.
            _ = rd.read(&mut probe) => return,
        }
    }
}

fn header<T: std::str::FromStr>(head: &str, name: &str) -> Option<T> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// A gateway in front of `up`, with `server` in its `[server]` table.
async fn gateway_for(up: &SseUpstream, server: &str) -> TestGateway {
    start_gateway_raw(
        start_mock().await,
        &format!(
            "[server]\n{server}[[upstream]]\nname = \"sse\"\nurl = \"http://{}\"\n",
            up.addr
        ),
    )
    .await
}

/// A streamed chat of two events with `key`: the request that must get through once the
/// places a stuck client held are free.
async fn two_events(g: &TestGateway, key: &str) -> Answer {
    send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[
            ("authorization", bearer(key).as_str()),
            ("x-test-events", "2"),
        ],
        CHAT,
    )
    .await
}

// ------------------------------------------------------------------ the real binary

/// `keygate ARGS` with its open-file limit set by `ulimit OPTS` first (the shell execs it,
/// so the child's pid is keygate's).
fn spawn_limited(ulimit: &str, args: &[&std::ffi::OsStr]) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// CPU time the process has used (user + system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from field 3 here.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz: u64 = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    Duration::from_millis(ticks * 1000 / hz)
}

/// Soft and hard "Max open files" of a process.
fn nofile(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

/// Holds idle connections to `addr` until the process `pid` has used all `limit` descriptors,
/// with some more waiting in the listen backlog (what makes `accept` fail over and over).
/// Checks that it then stays near idle: CPU well under a core, a few log lines.
async fn hold_at_the_limit(
    pid: u32,
    addr: SocketAddr,
    limit: usize,
    logs: &Arc<Mutex<Vec<String>>>,
    what: &str,
) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..limit + 16 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let full = eventually(5 * SEC, || async { open_fds(pid) >= limit }).await;
    assert!(
        full,
        "{what}: the process holds {} descriptors, not {limit}",
        open_fds(pid)
    );
    let lines_before = logs.lock().unwrap().len();
    let cpu_before = cpu_time(pid);
    let start = Instant::now();
    tokio::time::sleep(2 * SEC).await;
    let cpu = cpu_time(pid) - cpu_before;
    let wall = start.elapsed();
    let lines: Vec<String> = logs.lock().unwrap()[lines_before..].to_vec();
    let accept_lines = logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    eprintln!(
        "{what}: at the descriptor limit ({} open), {cpu:?} CPU in {wall:?}, {} log lines \
         meanwhile, {accept_lines} \"accept failed\" lines in all",
        open_fds(pid),
        lines.len()
    );
    assert!(
        cpu < wall / 4,
        "{what}: {cpu:?} CPU in {wall:?} while out of descriptors (the accept loop spins)"
    );
    assert!(
        lines.len() <= 5 && accept_lines <= 5,
        "{what}: {} log lines in {wall:?}: {:?}",
        lines.len(),
        &lines[..lines.len().min(5)]
    );
    // `keygate mock` has no logger.
    if what != "mock" {
        assert!(
            accept_lines >= 1,
            "{what}: the failing accept was not logged"
        );
    }
    held
}

/// A status for GET `url`, or `None` if it failed or took over a second.
async fn try_get(url: &str) -> Option<u16> {
    let req = http::Request::get(url)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    match tokio::time::timeout(SEC, client().request(req)).await {
        Ok(Ok(r)) => Some(r.status().as_u16()),
        _ => None,
    }
}

fn stop(mut child: Child) {
    sigterm(&child);
    let _ = child.wait();
}

// ------------------------------------------------------------------ 1. descriptors run out

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_listener_pauses_and_recovers() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"60s\"\n\
             [keys]\nfile = \"keys.json\"\npoll_interval = \"1s\"\n\
             [[upstream]]\nurl = \"http://{}\"\n",
            mock.addr
        ),
    )
    .unwrap();
    let (key, _) = cli_create_key(&cfg, "fd");
    const LIMIT: usize = 64;
    let mut child = spawn_limited(
        &format!("-n {LIMIT}"),
        &["serve".as_ref(), "--config".as_ref(), cfg.as_os_str()],
    );
    let logs = capture_stderr(&mut child);
    let addr = listening_addr(&mut child);
    let pid = child.id();
    let held = hold_at_the_limit(pid, addr, LIMIT, &logs, "api listener").await;

    // Descriptors come back: the listener accepts again and serves.
    drop(held);
    let url = format!("http://{addr}/healthz");
    let served = eventually(5 * SEC, || async { try_get(&url).await == Some(200) }).await;
    assert!(served, "no answer after the held connections closed");
    let a = send(
        Method::POST,
        &format!("http://{addr}/v1/chat/completions"),
        &[("authorization", &bearer(&key))],
        CHAT,
    )
    .await;
    assert_eq!(a.status, 200);
    let recovered = eventually(2 * SEC, || async {
        logs.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("accepting connections again"))
    })
    .await;
    stop(child);
    assert!(recovered, "{:?}", logs.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_mock_listeners_pause_too() {
    // The metrics listener, in a gateway whose API listener is left alone.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\npoll_interval = \"1s\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    cli_create_key(&cfg, "m");
    const LIMIT: usize = 64;
    let mut child = spawn_limited(
        &format!("-n {LIMIT}"),
        &["serve".as_ref(), "--config".as_ref(), cfg.as_os_str()],
    );
    let logs = capture_stderr(&mut child);
    listening_addr(&mut child);
    let mut maddr = None;
    assert!(
        eventually(5 * SEC, || {
            maddr = logs.lock().unwrap().iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == "metrics listening")
                    .then(|| v["addr"].as_str()?.parse::<SocketAddr>().ok())?
            });
            std::future::ready(maddr.is_some())
        })
        .await
    );
    let maddr = maddr.unwrap();
    let held = hold_at_the_limit(child.id(), maddr, LIMIT, &logs, "metrics listener").await;
    drop(held);
    let url = format!("http://{maddr}/metrics");
    let served = eventually(5 * SEC, || async { try_get(&url).await == Some(200) }).await;
    stop(child);
    assert!(
        served,
        "metrics not served after the held connections closed"
    );

    // The mock upstream (`keygate mock`).
    const MOCK_LIMIT: usize = 32;
    let mut child = spawn_limited(
        &format!("-n {MOCK_LIMIT}"),
        &["mock".as_ref(), "--listen".as_ref(), "127.0.0.1:0".as_ref()],
    );
    let logs = capture_stderr(&mut child);
    let addr = listening_addr(&mut child);
    let held = hold_at_the_limit(child.id(), addr, MOCK_LIMIT, &logs, "mock").await;
    drop(held);
    let url = format!("http://{addr}/v1/models");
    let served = eventually(5 * SEC, || async { try_get(&url).await == Some(200) }).await;
    stop(child);
    assert!(
        served,
        "the mock did not answer after the held connections closed"
    );
}

#[tokio::test]
async fn soft_open_file_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = nofile("self");
    if hard <= 256 {
        eprintln!("hard open-file limit {hard}: nothing to raise here; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\n",
    )
    .unwrap();
    let mut child = spawn_limited(
        "-S -n 256",
        &["serve".as_ref(), "--config".as_ref(), cfg.as_os_str()],
    );
    let logs = capture_stderr(&mut child);
    listening_addr(&mut child);
    let (soft, now_hard) = nofile(&child.id().to_string());
    stop(child);
    let raised = has_line(&logs, |l| {
        l.contains("raised the open-file limit") && l.contains("256")
    })
    .await;
    let lines = logs.lock().unwrap().clone();
    assert_eq!((soft, now_hard), (hard, hard), "{lines:?}");
    assert!(raised, "{lines:?}");
}

// ------------------------------------------------------------------ 2. idle connections

#[tokio::test]
async fn h2_connection_without_a_request_is_closed_at_header_read_timeout() {
    let g = start_gateway("[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"30s\"\n").await;
    // Preface and SETTINGS, then nothing; the h2 crate answers the server's PINGs.
    let mut c = H2::connect(g.addr, &h2::client::Builder::new()).await;
    let closed = c.wait_closed(5 * SEC).await;
    eprintln!(
        "h2 connection with no stream: closed after {closed:?}, GOAWAY {:?}",
        c.goaway()
    );
    let at = closed.expect("an h2 connection that opens no stream stayed open");
    assert!(at >= ms(800) && at <= ms(3000), "closed after {at:?}");
    assert_eq!(c.goaway(), Some(0), "no GOAWAY (NO_ERROR) before the close");
    drop(c.client);
}

#[tokio::test]
async fn h2_connection_is_closed_idle_timeout_after_its_last_stream_with_goaway() {
    let g = start_gateway("[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n").await;
    let mut c = H2::connect(g.addr, &h2::client::Builder::new()).await;
    let mut client = c.client.clone().ready().await.unwrap();
    let req = http::Request::get(format!("http://{}/healthz", g.addr))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    while let Some(d) = body.data().await {
        d.unwrap();
    }
    let closed = c.wait_closed(6 * SEC).await;
    eprintln!(
        "h2 connection after one request: closed after {closed:?}, GOAWAY {:?}",
        c.goaway()
    );
    let at = closed.expect("an idle h2 connection stayed open");
    // Not at the first-request deadline (1 s): at the idle one.
    assert!(at >= ms(1700) && at <= ms(4500), "closed after {at:?}");
    assert_eq!(c.goaway(), Some(0), "no GOAWAY (NO_ERROR) before the close");
}

/// One raw HTTP/2 frame: its 9-byte header (length, type, flags, stream) and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn h2_headers_dripped_in_continuation_frames_are_cut() {
    let g = start_gateway("[server]\nheader_read_timeout = \"1s\"\n").await;
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    // :method GET, :scheme http, :path /, :authority gw; no END_HEADERS.
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend(h2_frame(0x4, 0, 0, &[]));
    start.extend(h2_frame(
        0x1,
        0x1,
        1,
        &[0x82, 0x86, 0x84, 0x01, 0x02, b'g', b'w'],
    ));
    wr.write_all(&start).await.unwrap();
    // A one-byte header block fragment (an indexed field) every 1.5 s: h2 itself ends the
    // connection only at the sixth CONTINUATION (9 s).
    let drip = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(ms(1500)).await;
            if wr.write_all(&h2_frame(0x9, 0, 1, &[0x90])).await.is_err() {
                return;
            }
        }
    });
    let began = Instant::now();
    let deadline = tokio::time::Instant::now() + 6 * SEC;
    let mut chunk = vec![0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Err(_) => break None,
            Ok(Ok(0)) | Ok(Err(_)) => break Some(began.elapsed()),
            Ok(Ok(_)) => {}
        }
    };
    drip.abort();
    eprintln!("HEADERS + CONTINUATION drip: closed after {closed:?}");
    let at = closed.expect("a request head dripped in CONTINUATION frames held the connection");
    assert!(at <= ms(4000), "closed after {at:?}");
}

/// The listener tells HTTP/1.1 from HTTP/2 by the first bytes; when they do not tell yet ("P"
/// could begin a POST or the HTTP/2 preface), detection reads on: both are still served.
#[tokio::test]
async fn first_bytes_that_arrive_in_pieces_are_still_served() {
    let g = start_gateway("").await;
    // HTTP/1.1, its first byte alone.
    let mut c = Raw::connect(g.addr).await;
    c.send("P").await.unwrap();
    // Apart, so that the listener finds the one byte alone (there is nothing to await).
    tokio::time::sleep(ms(200)).await;
    c.send("OST /healthz HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let status = c.status().await;
    assert!(
        status.is_some_and(|s| s >= 200),
        "an HTTP/1.1 request whose first byte came alone: {status:?}"
    );

    // HTTP/2, its preface in two pieces, then GET /healthz on stream 1.
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    wr.write_all(&preface[..16]).await.unwrap();
    tokio::time::sleep(ms(200)).await;
    let mut rest = preface[16..].to_vec();
    rest.extend(h2_frame(0x4, 0, 0, &[]));
    // :method GET, :scheme http, :path /healthz, :authority gw; END_STREAM | END_HEADERS.
    let mut block = vec![0x82, 0x86, 0x44, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x01, 0x02, b'g', b'w']);
    rest.extend(h2_frame(0x1, 0x5, 1, &block));
    wr.write_all(&rest).await.unwrap();
    let deadline = tokio::time::Instant::now() + 5 * SEC;
    let mut seen = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let status = loop {
        // The frames so far: the first HEADERS on stream 1 holds the status.
        let mut at = 0;
        let mut found = None;
        while seen.len() >= at + 9 {
            let len = (usize::from(seen[at]) << 16)
                | (usize::from(seen[at + 1]) << 8)
                | usize::from(seen[at + 2]);
            if seen.len() < at + 9 + len {
                break;
            }
            let stream =
                u32::from_be_bytes([seen[at + 5], seen[at + 6], seen[at + 7], seen[at + 8]]);
            if seen[at + 3] == 0x1 && stream == 1 {
                found = seen.get(at + 9).copied();
                break;
            }
            at += 9 + len;
        }
        if found.is_some() {
            break found;
        }
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&chunk[..n]),
            other => panic!("no HTTP/2 answer to a preface sent in two pieces: {other:?}"),
        }
    };
    // 0x88: the static table's ":status: 200".
    assert_eq!(status, Some(0x88), "the answer's first header field");
}

#[tokio::test]
async fn idle_http1_keep_alive_connection_is_closed_at_idle_timeout() {
    let g = start_gateway("[server]\nheader_read_timeout = \"5s\"\nidle_timeout = \"1s\"\n").await;
    let mut c = Raw::connect(g.addr).await;
    c.send(HEALTHZ).await.unwrap();
    assert_eq!(c.status().await, Some(200));
    c.send(HEALTHZ).await.unwrap();
    assert_eq!(c.status().await, Some(200), "keep-alive");
    let closed = c.wait_closed(4 * SEC).await;
    eprintln!("idle HTTP/1.1 keep-alive connection: closed after {closed:?}");
    let at = closed.expect("an idle keep-alive connection stayed open");
    assert!(at >= ms(800) && at <= ms(3000), "closed after {at:?}");
}

#[tokio::test]
async fn a_long_stream_is_not_closed_while_it_runs() {
    // Every deadline is far shorter than the stream; the client reads as it comes.
    let g = start_gateway(
        "[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"1s\"\nwrite_timeout = \"1s\"\n",
    )
    .await;
    let key = g.key();
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"a b c d e f g h i j k l"}]}"#;
    let began = Instant::now();

    // HTTP/2.
    let c = H2::connect(g.addr, &h2::client::Builder::new()).await;
    let mut h2 = c.client.clone().ready().await.unwrap();
    let req = http::Request::post(format!("http://{}/v1/chat/completions", g.addr))
        .header("authorization", bearer(&key))
        .header("x-mock-interval-ms", "150")
        .body(())
        .unwrap();
    let (resp, mut up) = h2.send_request(req, false).unwrap();
    up.send_data(Bytes::from(body), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = Vec::new();
    let mut stream = resp.into_body();
    while let Some(d) = stream.data().await {
        let d = d.expect("the stream broke off");
        stream.flow_control().release_capacity(d.len()).unwrap();
        got.extend_from_slice(&d);
    }
    let h2_took = began.elapsed();
    assert!(
        String::from_utf8_lossy(&got).ends_with("data: [DONE]\n\n"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // HTTP/1.1.
    let began = Instant::now();
    let req = http::Request::post(g.url("/v1/chat/completions"))
        .header("authorization", bearer(&key))
        .header("x-mock-interval-ms", "150")
        .body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    let h1_took = began.elapsed();
    eprintln!("streams of {h2_took:?} (h2) and {h1_took:?} (h1) ran to their end");
    assert!(String::from_utf8_lossy(&got).ends_with("data: [DONE]\n\n"));
    assert!(
        h2_took > 2 * SEC && h1_took > 2 * SEC,
        "the streams were not long"
    );
    drop(c.client);
}

#[tokio::test]
async fn connections_over_max_connections_per_ip_are_refused() {
    let g = start_gateway("[server]\nmax_connections_per_ip = 2\n").await;
    let mut a = Raw::connect(g.addr).await;
    let mut b = Raw::connect(g.addr).await;
    for c in [&mut a, &mut b] {
        c.send(HEALTHZ).await.unwrap();
        assert_eq!(c.status().await, Some(200));
    }
    // A third from the same address is closed without an answer.
    let mut third = Raw::connect(g.addr).await;
    let _ = third.send(HEALTHZ).await;
    assert_eq!(third.status().await, None, "{:?}", third.buf);
    assert!(
        third.eof,
        "the third connection was neither answered nor closed"
    );
    // The two admitted ones still work, and a closed one makes room.
    a.send(HEALTHZ).await.unwrap();
    assert_eq!(a.status().await, Some(200));
    drop(b);
    let admitted = eventually(3 * SEC, || async {
        let mut c = Raw::connect(g.addr).await;
        c.send(HEALTHZ).await.is_ok() && c.status().await == Some(200)
    })
    .await;
    assert!(admitted, "a closed connection did not free its place");
}

// ------------------------------------------------------------------ 5. clients that stop reading

#[tokio::test]
async fn h2_client_with_no_receive_window_frees_upstream_and_slot_at_write_timeout() {
    let upstream = SseUpstream::start().await;
    let g = gateway_for(&upstream, "write_timeout = \"1s\"\n").await;
    let key = g.key_with_limits(KeyLimits {
        max_in_flight: Some(1),
        ..Default::default()
    });
    // SETTINGS_INITIAL_WINDOW_SIZE 0: the server may send no DATA on any stream.
    let mut b = h2::client::Builder::new();
    b.initial_window_size(0);
    let c = H2::connect(g.addr, &b).await;
    let mut h2 = c.client.clone().ready().await.unwrap();
    let req = http::Request::post(format!("http://{}/v1/chat/completions", g.addr))
        .header("authorization", bearer(&key))
        .header("x-test-interval-ms", "20")
        .body(())
        .unwrap();
    let (resp, mut up) = h2.send_request(req, false).unwrap();
    up.send_data(Bytes::from(CHAT), true).unwrap();
    let resp = tokio::time::timeout(5 * SEC, resp)
        .await
        .expect("response head")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let head_at = Instant::now();
    let freed = eventually(5 * SEC, || async { upstream.closed() >= 1 }).await;
    let took = head_at.elapsed();
    eprintln!("h2 client with a zero window: upstream closed {took:?} after the response head");
    assert!(freed, "the upstream connection stayed open");
    assert!(
        took >= ms(900),
        "closed after {took:?}, before write_timeout"
    );
    assert!(
        eventually(SEC, || async { g.gw.capacity.in_use() == 0 }).await,
        "the gateway slot is still held"
    );
    let a = two_events(&g, &key).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(String::from_utf8_lossy(&a.body).contains("w1 "));
    drop(resp);
}

/// A refusal is the gateway's own whole answer: it holds no place in the gateway's in-flight
/// cap while a client that opened no window leaves it unsent. Before, a client with no key
/// could fill every place with 401s nobody read, and everyone got 503 until write_timeout.
#[tokio::test]
async fn refusals_a_client_never_reads_hold_no_in_flight_place() {
    let upstream = SseUpstream::start().await;
    let g = gateway_for(&upstream, "write_timeout = \"30s\"\nmax_in_flight = 4\n").await;
    let (_, key) = g.create_key(keygate::keys::record::NewKey {
        name: "one-at-a-time".into(),
        models: vec!["llama-*".into()],
        limits: KeyLimits {
            max_in_flight: Some(1),
            ..Default::default()
        },
        ..Default::default()
    });
    let mut b = h2::client::Builder::new();
    b.initial_window_size(0);
    let c = H2::connect(g.addr, &b).await;
    let mut heads = Vec::new();
    // Twice the cap of refusals: every other one has no key (401), the rest the key and a
    // model its allowlist refuses (403, after the key's own in-flight slot is taken).
    for i in 0..8 {
        let mut h2 = c.client.clone().ready().await.unwrap();
        let mut req = http::Request::post(format!("http://{}/v1/chat/completions", g.addr));
        if i % 2 == 1 {
            req = req.header("authorization", bearer(&key));
        }
        let (resp, mut up) = h2.send_request(req.body(()).unwrap(), false).unwrap();
        let body = if i % 2 == 1 {
            r#"{"model":"gpt-4o","messages":[]}"#
        } else {
            CHAT
        };
        up.send_data(Bytes::from(body), true).unwrap();
        let resp = tokio::time::timeout(5 * SEC, resp)
            .await
            .expect("response head")
            .unwrap();
        assert!(
            resp.status() == 401 || resp.status() == 403,
            "request {i}: {}",
            resp.status()
        );
        heads.push(resp);
    }
    assert!(
        eventually(SEC, || async { g.gw.capacity.in_use() == 0 }).await,
        "unsent refusals hold {} in-flight places",
        g.gw.capacity.in_use()
    );
    let a = two_events(&g, &key).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    drop(heads);
}

#[tokio::test]
async fn http1_client_that_never_reads_frees_upstream_and_slot_at_write_timeout() {
    let upstream = SseUpstream::start().await;
    let g = gateway_for(&upstream, "write_timeout = \"1s\"\n").await;
    let key = g.key_with_limits(KeyLimits {
        max_in_flight: Some(1),
        ..Default::default()
    });
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut c = sock.connect(g.addr).await.unwrap();
    c.write_all(chat_req(Some(&key), "x-test-event-bytes: 65536\r\n", CHAT).as_bytes())
        .await
        .unwrap();
    // Never read: the socket buffers fill, then the gateway can write no more.
    let sent = Instant::now();
    let freed = eventually(8 * SEC, || async { upstream.closed() >= 1 }).await;
    let took = sent.elapsed();
    eprintln!("HTTP/1.1 client that never reads: upstream closed {took:?} after the request");
    assert!(freed, "the upstream connection stayed open");
    assert!(
        took >= ms(900),
        "closed after {took:?}, before write_timeout"
    );
    assert!(
        eventually(SEC, || async { g.gw.capacity.in_use() == 0 }).await,
        "the gateway slot is still held"
    );
    let a = two_events(&g, &key).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    drop(c);
}

// ------------------------------------------------------------------ 14.6 HEAD

#[tokio::test]
async fn head_is_answered_wherever_get_is() {
    let g = start_gateway("").await;
    let key = g.key();
    let admin = g.key_with_scopes(&["admin"]);
    let h2c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let cases: [(&str, Option<&str>); 7] = [
        ("/healthz", None),
        ("/readyz", None),
        ("/console", None),
        ("/console/console.js", None),
        ("/v1/models", Some(key.as_str())),
        ("/v1/models/llama-3.1-8b-instruct", Some(key.as_str())),
        ("/v1/api-keys", Some(admin.as_str())),
    ];
    for (path, auth) in cases {
        let auth = auth.map(bearer);
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        let get = send(Method::GET, &g.url(path), &headers, "").await;
        assert_eq!(get.status, 200, "GET {path}");
        let head = send(Method::HEAD, &g.url(path), &headers, "").await;
        assert_eq!(head.status, 200, "HEAD {path}: {:?}", head.body);
        assert!(head.body.is_empty(), "HEAD {path} has a body");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "HEAD {path}"
        );
        if path != "/v1/api-keys" && path != "/v1/models" {
            // Dynamic lists aside, the length is the GET body's.
            let len = get.body.len().to_string();
            assert_eq!(
                head.header("content-length"),
                Some(len.as_str()),
                "HEAD {path}"
            );
        }
        // Over HTTP/2 too, with no DATA.
        let mut b = http::Request::head(g.url(path));
        if let Some(a) = &auth {
            b = b.header("authorization", a);
        }
        let resp = h2c
            .request(b.body(http_body_util::Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "h2 HEAD {path}");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty(), "h2 HEAD {path} has a body");
    }
    // HEAD does not open POST-only routes.
    let head = send(
        Method::HEAD,
        &g.url("/v1/chat/completions"),
        &[("authorization", &bearer(&key))],
        "",
    )
    .await;
    assert_eq!(head.status, 404);
}
