//! Hardening: hostile HTTP/1.1 and HTTP/2 input through the real listener on 127.0.0.1:0, in
//! front of a raw-TCP upstream that records the exact bytes it receives. Requests are written
//! as raw bytes, so no client library normalises them on the way in, and the upstream is a
//! bare socket, so nothing normalises what the gateway sends on the way out.
//!
//! Several tests measure time, so every test here takes `SERIAL` and they run one at a time.
//! Run with `--nocapture` to see the measured times.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::*;
use keygate::keys::record::{KeyLimits, NewKey};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

/// One test at a time: the timing assertions must not compete for the two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SEC: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Awaits `fut`, failing the test if it takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {limit:?}"))
}

// ------------------------------------------------------------------ HTTP/1.1 framing, by hand

#[derive(Debug, Clone)]
struct Msg {
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Bytes the whole message took.
    len: usize,
}

impl Msg {
    fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {:?}",
                self.start,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts the SPEC §3 error shape and returns the code.
    fn error_code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let v = self.json();
        assert!(v["error"]["message"].is_string(), "{v}");
        v["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

enum Parsed {
    Done(Msg),
    More,
    Bad(String),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    find(hay, needle.as_bytes()).is_some()
}

/// Decodes a chunked body: `None` while incomplete, else the body and the bytes it took.
fn dechunk(data: &[u8]) -> Option<Result<(Vec<u8>, usize), String>> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let end = find(&data[pos..], b"\r\n")? + pos;
        let line = String::from_utf8_lossy(&data[pos..end]).to_string();
        let size = match usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16) {
            Ok(s) => s,
            Err(_) => return Some(Err(format!("bad chunk-size line {line:?}"))),
        };
        pos = end + 2;
        if size == 0 {
            loop {
                let end = find(&data[pos..], b"\r\n")? + pos;
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Some(Ok((body, pos)));
                }
            }
        }
        if data.len() < pos + size + 2 {
            return None;
        }
        body.extend_from_slice(&data[pos..pos + size]);
        pos += size + 2;
    }
}

/// Parses the first message in `buf`. A response framed by neither length nor chunking ends
/// at `eof`; a request framed by neither has no body.
fn parse(buf: &[u8], response: bool, eof: bool) -> Parsed {
    let Some(h) = find(buf, b"\r\n\r\n") else {
        return if eof {
            Parsed::Bad("the connection closed before a whole message head".into())
        } else {
            Parsed::More
        };
    };
    let head = String::from_utf8_lossy(&buf[..h]).to_string();
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let at = h + 4;
    let msg = |body: Vec<u8>, len: usize| {
        Parsed::Done(Msg {
            start: start.clone(),
            headers: headers.clone(),
            body,
            len,
        })
    };
    let status: u16 = start
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if response && ((100..200).contains(&status) || status == 204 || status == 304) {
        return msg(Vec::new(), at);
    }
    let chunked =
        get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return match dechunk(&buf[at..]) {
            Some(Ok((body, used))) => msg(body, at + used),
            Some(Err(e)) => Parsed::Bad(e),
            None if eof => Parsed::Bad("the connection closed before the terminating chunk".into()),
            None => Parsed::More,
        };
    }
    if let Some(cl) = get("content-length") {
        let Ok(n) = cl.parse::<usize>() else {
            return Parsed::Bad(format!("content-length {cl:?}"));
        };
        return if buf.len() >= at + n {
            msg(buf[at..at + n].to_vec(), at + n)
        } else if eof {
            Parsed::Bad("the connection closed inside a content-length body".into())
        } else {
            Parsed::More
        };
    }
    if response {
        return if eof {
            msg(buf[at..].to_vec(), buf.len())
        } else {
            Parsed::More
        };
    }
    msg(Vec::new(), at)
}

// ------------------------------------------------------------------ raw client

/// A client socket that writes exactly the bytes it is given.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let s = within(SEC, "connect", TcpStream::connect(addr))
            .await
            .unwrap();
        s.set_nodelay(true).unwrap();
        Raw {
            s,
            buf: Vec::new(),
            eof: false,
        }
    }

    async fn send(&mut self, b: impl AsRef<[u8]>) -> std::io::Result<()> {
        self.s.write_all(b.as_ref()).await
    }

    /// Reads once; false on timeout.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                true
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next final response (interim 1xx skipped), within 5 s.
    async fn response(&mut self) -> Result<Msg, String> {
        self.response_within(Duration::from_secs(5)).await
    }

    async fn response_within(&mut self, limit: Duration) -> Result<Msg, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match parse(&self.buf, true, self.eof) {
                Parsed::Done(m) => {
                    self.buf.drain(..m.len);
                    if (100..200).contains(&m.status()) {
                        continue;
                    }
                    return Ok(m);
                }
                Parsed::Bad(e) => {
                    return Err(format!(
                        "{e}; received {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
                Parsed::More => {}
            }
            if !self.fill(deadline).await {
                return Err(format!(
                    "no whole response within {limit:?}; received {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        }
    }

    /// Waits for the peer to close; how long it took, or `None` if still open after `limit`.
    async fn wait_closed(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + limit;
        while !self.eof {
            if !self.fill(deadline).await {
                return None;
            }
        }
        Some(start.elapsed())
    }
}

/// `POST /v1/chat/completions` with a content-length body and an optional key.
fn chat_req(key: Option<&str>, extra: &str, body: &str) -> String {
    let auth = key.map_or_else(String::new, |k| format!("Authorization: Bearer {k}\r\n"));
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// The head of a chat request with the given framing headers (and no body).
fn chat_head(key: Option<&str>, framing: &str) -> String {
    let auth = key.map_or_else(String::new, |k| format!("Authorization: Bearer {k}\r\n"));
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n{auth}Content-Type: application/json\r\n{framing}\r\n"
    )
}

/// `body` as one chunk plus the terminating chunk.
fn chunked(body: &str) -> String {
    format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
}

// ------------------------------------------------------------------ raw recording upstream

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// A fixed 200 JSON answer with content-length, keep-alive.
    Answer,
    /// Reads everything, never answers.
    Silent,
    /// Waits, then answers like `Answer`.
    Delay(Duration),
    /// Accepts and closes at once.
    CloseImmediately,
    /// A chunked SSE head and one chunk, then a close: FIN, or RST when `rst`.
    ResetMidStream { rst: bool },
    /// Answers like `Answer`, then closes a connection idle for this long.
    CloseWhenIdle(Duration),
    /// A chunked SSE stream: one event per interval, then the terminating chunk.
    Sse { interval: Duration, count: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Accepted(usize),
    /// A request head arrived on this connection.
    Head(usize),
    /// A whole request arrived on this connection.
    Request(usize),
    /// The gateway closed this connection (read returned 0 or failed).
    Eof(usize),
    /// The mock closed this connection itself.
    MockClosed(usize),
}

#[derive(Clone)]
struct Shared {
    record: bool,
    conns: Arc<Mutex<Vec<Vec<u8>>>>,
    requests: Arc<Mutex<Vec<(usize, Msg)>>>,
    heads: Arc<AtomicUsize>,
    count: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<(Event, Instant)>>>,
    version: Arc<watch::Sender<u64>>,
}

impl Shared {
    fn event(&self, e: Event) {
        if self.record || !matches!(e, Event::Head(_) | Event::Request(_)) {
            self.log.lock().unwrap().push((e, Instant::now()));
        }
        self.version.send_modify(|v| *v += 1);
    }
}

struct RawMock {
    addr: SocketAddr,
    sh: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ok_response() -> Vec<u8> {
    const BODY: &str = r#"{"id":"chatcmpl-raw","object":"chat.completion","created":0,"model":"llama-3.1-8b-instruct","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

fn sse_chunk(i: usize) -> Vec<u8> {
    let ev = format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}}}}]}}\n\n"
    );
    format!("{:x}\r\n{ev}\r\n", ev.len()).into_bytes()
}

impl RawMock {
    async fn start(mode: Mode) -> RawMock {
        RawMock::start_with(mode, true).await
    }

    async fn start_with(mode: Mode, record: bool) -> RawMock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sh = Shared {
            record,
            conns: Arc::default(),
            requests: Arc::default(),
            heads: Arc::default(),
            count: Arc::default(),
            log: Arc::default(),
            version: Arc::new(watch::channel(0).0),
        };
        let sh2 = sh.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let idx = {
                    let mut c = sh2.conns.lock().unwrap();
                    c.push(Vec::new());
                    c.len() - 1
                };
                sh2.event(Event::Accepted(idx));
                tokio::spawn(serve_conn(stream, idx, mode, sh2.clone()));
            }
        });
        RawMock { addr, sh, task }
    }

    fn connections(&self) -> usize {
        self.sh.conns.lock().unwrap().len()
    }

    /// Whole requests received, over all connections.
    fn requests(&self) -> usize {
        self.sh.count.load(Ordering::SeqCst)
    }

    /// Request heads received (a head whose body never completed counts here only).
    fn heads(&self) -> usize {
        self.sh.heads.load(Ordering::SeqCst)
    }

    fn request(&self, i: usize) -> (usize, Msg) {
        self.sh.requests.lock().unwrap()[i].clone()
    }

    /// Every byte received, on every connection.
    fn all_bytes(&self) -> Vec<u8> {
        self.sh.conns.lock().unwrap().concat()
    }

    /// Waits until `n` events match `pred`; the time of the `n`th, or `None` after `limit`.
    async fn wait_n(
        &self,
        limit: Duration,
        n: usize,
        pred: impl Fn(&Event) -> bool,
    ) -> Option<Instant> {
        let mut rx = self.sh.version.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            rx.borrow_and_update();
            let found = self
                .sh
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|(e, _)| pred(e))
                .nth(n - 1)
                .map(|(_, t)| *t);
            if found.is_some() {
                return found;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    async fn wait(&self, limit: Duration, pred: impl Fn(&Event) -> bool) -> Option<Instant> {
        self.wait_n(limit, 1, pred).await
    }
}

async fn serve_conn(stream: TcpStream, idx: usize, mode: Mode, sh: Shared) {
    if matches!(mode, Mode::CloseImmediately) {
        drop(stream);
        sh.event(Event::MockClosed(idx));
        return;
    }
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let stop = Arc::new(Notify::new());
    let reader = {
        let stop = Arc::clone(&stop);
        let sh = sh.clone();
        async move {
            let mut pending = Vec::new();
            let mut head_seen = false;
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                let n = tokio::select! {
                    r = rd.read(&mut chunk) => match r {
                        Ok(0) | Err(_) => {
                            sh.event(Event::Eof(idx));
                            break;
                        }
                        Ok(n) => n,
                    },
                    _ = stop.notified() => break,
                };
                if sh.record {
                    sh.conns.lock().unwrap()[idx].extend_from_slice(&chunk[..n]);
                }
                pending.extend_from_slice(&chunk[..n]);
                loop {
                    if !head_seen && find(&pending, b"\r\n\r\n").is_some() {
                        head_seen = true;
                        sh.heads.fetch_add(1, Ordering::SeqCst);
                        sh.event(Event::Head(idx));
                    }
                    let Parsed::Done(m) = parse(&pending, false, false) else {
                        break;
                    };
                    pending.drain(..m.len);
                    head_seen = false;
                    sh.count.fetch_add(1, Ordering::SeqCst);
                    if sh.record {
                        sh.requests.lock().unwrap().push((idx, m));
                    }
                    sh.event(Event::Request(idx));
                    let _ = tx.send(());
                }
            }
            rd
        }
    };
    let writer = {
        let stop = Arc::clone(&stop);
        async move {
            // Some(rst) when the mock closes the connection itself.
            let mut close = None;
            'requests: while rx.recv().await.is_some() {
                match mode {
                    Mode::Answer => {
                        if wr.write_all(&ok_response()).await.is_err() {
                            break;
                        }
                    }
                    Mode::Silent | Mode::CloseImmediately => {}
                    Mode::Delay(d) => {
                        tokio::time::sleep(d).await;
                        if wr.write_all(&ok_response()).await.is_err() {
                            break;
                        }
                    }
                    Mode::ResetMidStream { rst } => {
                        let mut out = SSE_HEAD.as_bytes().to_vec();
                        out.extend_from_slice(&sse_chunk(0));
                        let _ = wr.write_all(&out).await;
                        let _ = wr.flush().await;
                        close = Some(rst);
                        break;
                    }
                    Mode::CloseWhenIdle(idle) => {
                        if wr.write_all(&ok_response()).await.is_err() {
                            break;
                        }
                        loop {
                            match tokio::time::timeout(idle, rx.recv()).await {
                                Err(_) => {
                                    close = Some(false);
                                    break 'requests;
                                }
                                Ok(Some(())) => {
                                    if wr.write_all(&ok_response()).await.is_err() {
                                        break 'requests;
                                    }
                                }
                                Ok(None) => break 'requests,
                            }
                        }
                    }
                    Mode::Sse { interval, count } => {
                        if wr.write_all(SSE_HEAD.as_bytes()).await.is_err() {
                            break;
                        }
                        for i in 0..count {
                            tokio::time::sleep(interval).await;
                            if wr.write_all(&sse_chunk(i)).await.is_err() {
                                break 'requests;
                            }
                        }
                        if wr.write_all(b"0\r\n\r\n").await.is_err() {
                            break;
                        }
                    }
                }
            }
            if close.is_some() {
                stop.notify_one();
            }
            (wr, close)
        }
    };
    let (rd, (wr, close)) = tokio::join!(reader, writer);
    if let Some(rst) = close {
        if let Ok(s) = rd.reunite(wr) {
            if rst {
                // SO_LINGER 0: close() sends RST at once and does not block.
                #[allow(deprecated)]
                let _ = s.set_linger(Some(Duration::ZERO));
            }
            drop(s);
        }
        sh.event(Event::MockClosed(idx));
    }
}

/// A gateway whose only upstream is `mock`. `upstream_extra` goes in the `[[upstream]]`
/// table, `extra` after it.
async fn gateway_for(m: &RawMock, upstream_extra: &str, extra: &str) -> TestGateway {
    let toml = format!(
        "[[upstream]]\nname = \"raw\"\nurl = \"http://{}\"\n{upstream_extra}{extra}",
        m.addr
    );
    start_gateway_raw(start_mock().await, &toml).await
}

fn key_with_models(g: &TestGateway, models: &[&str]) -> String {
    g.create_key(NewKey {
        name: "allowlist".into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    })
    .1
}

// ------------------------------------------------------------------ 1. framing conflicts

#[tokio::test]
async fn framing_conflicts_are_refused_or_forwarded_once_as_chunked() {
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    // allows. (SPEC prefers 414 for URIs; see the report.)
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
async fn bodies_over_max_body_bytes_are_413() {
    let _serial = SERIAL.lock().await;
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

// ------------------------------------------------------------------ 5. slowloris

#[tokio::test]
async fn slowloris_headers_are_cut_by_header_read_timeout() {
    let _serial = SERIAL.lock().await;
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

    // An idle keep-alive connection after a request is closed too.
    let mut c = Raw::connect(g.addr).await;
    c.send(&req).await.unwrap();
    assert_eq!(c.response().await.unwrap().status(), 200);
    let idle = c.wait_closed(4 * SEC).await;
    eprintln!("idle keep-alive connection closed after {idle:?}");
    assert!(idle.is_some_and(|d| d <= ms(2500)), "kept {idle:?}");
    assert_eq!(m.requests(), 1);
}

#[tokio::test]
async fn silent_and_partial_preface_connections_are_closed() {
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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

#[tokio::test]
async fn body_dripped_under_the_idle_gap_is_still_bounded() {
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    // Let anything that slipped through reach the upstream before counting.
    tokio::time::sleep(ms(300)).await;
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
    let _serial = SERIAL.lock().await;
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
    tokio::time::sleep(ms(300)).await;
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
    assert!(
        heads <= 5,
        "reset streams reached the upstream: {heads} requests over {conns} connections"
    );
    // Connections opened for requests cancelled before anything was sent carry no request
    // and are closed; the per-connection cancel limit (8) bounds them too.
    assert!(
        conns <= 16,
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
    let _serial = SERIAL.lock().await;
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

// ------------------------------------------------------------------ methods

#[tokio::test]
async fn connect_and_trace_are_refused_not_forwarded() {
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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

// ------------------------------------------------------------------ 9-12. upstream faults

#[tokio::test]
async fn upstream_refusing_is_502_within_100ms() {
    let _serial = SERIAL.lock().await;
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
    assert!(took.iter().all(|t| *t < ms(100)), "{took:?}");

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
    assert!(t < ms(100), "{t:?}");
}

#[tokio::test]
async fn upstream_silent_is_504_at_first_byte_timeout() {
    let _serial = SERIAL.lock().await;
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
    assert!(t >= ms(300) && t < ms(600), "{t:?}");
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
    let _serial = SERIAL.lock().await;
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
        let req = http::Request::post(g.url("/v1/chat/completions"))
            .header("authorization", bearer(&key))
            .body(http_body_util::Full::new(Bytes::from(CHAT)))
            .unwrap();
        let resp = within(5 * SEC, "response head", client().request(req))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        use http_body_util::BodyExt;
        let body = within(5 * SEC, "response body", resp.into_body().collect()).await;
        assert!(body.is_err(), "rst={rst}: a cut stream read as complete");
    }
}

#[tokio::test]
async fn upstream_connection_is_reused_after_a_complete_answer() {
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    assert!(took.iter().all(|t| *t < ms(300)), "{took:?}");
    assert_eq!(g.gw.capacity.in_use(), 0, "slots still held");
}

#[tokio::test]
async fn upstream_stalled_mid_stream_is_cut_at_idle_timeout() {
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    assert!(took.iter().all(|t| *t < ms(300)), "{took:?}");
}

// ------------------------------------------------------------------ 14. capacity

#[tokio::test]
async fn gateway_capacity_exhausted_is_fast_503() {
    let _serial = SERIAL.lock().await;
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
    assert!(took.iter().all(|t| *t < ms(100)), "{took:?}");
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

// ------------------------------------------------------------------ 15. garbage

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            prev(info);
        }));
    });
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    fn from(&mut self, set: &[u8], len: usize) -> Vec<u8> {
        (0..len).map(|_| *self.pick(set)).collect()
    }

    /// Any byte but CR and LF (and `extra`).
    fn any(&mut self, len: usize, extra: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let b = self.next() as u8;
            if b != b'\r' && b != b'\n' && !extra.contains(&b) {
                out.push(b);
            }
        }
        out
    }
}

const TOKEN: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";
const VISIBLE: &[u8] = b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~\t";

/// One request with random method, target, version and headers, framed consistently (so
/// that no answer waits on body bytes that never come), ending in `Connection: close`.
fn garbage_request(rng: &mut Rng, key: &str) -> Vec<u8> {
    const METHODS: &[&str] = &[
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "PRI",
        "get", "FOO", "M-SEARCH",
    ];
    const BASES: &[&str] = &[
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/",
        "/v1/api-keys",
        "/v1/api-keys/",
        "/v1/usage",
        "/v1/responses",
        "/v1/responses/",
        "/v1/audio/",
        "/v1/images/",
        "/v1/moderations",
        "/healthz",
        "/readyz",
        "/console",
        "/rerank",
        "/tokenize",
        "/detokenize",
        "/",
        "*",
        "",
        "http://gw/v1/models",
        "//v1/models",
        "/v1/../v1/api-keys",
        "/v1/%2e%2e/api-keys",
        "/v1/chat%2fcompletions",
    ];
    const PATH: &[u8] = b"abcXYZ019-._~%/?#&=;:@!$'()*+,[]\\\"<>{}|^` ";
    const SAFE: &[u8] = b"abcxyz0189-._~/?&=%";
    const NAMES: &[&str] = &[
        "content-type",
        "accept",
        "connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "x-forwarded-for",
        "forwarded",
        "cookie",
        "host",
        "x-request-id",
        "range",
        "accept-encoding",
        "x-api-key",
        "authorization",
        "proxy-authorization",
        "proxy-connection",
        "keep-alive",
        "x-keygate-key-id",
        "x-real-ip",
    ];
    let mut out = Vec::new();
    match rng.below(20) {
        0 | 1 => {
            let n = 1 + rng.below(12);
            out.extend(rng.from(TOKEN, n));
        }
        2 => {
            let n = 1 + rng.below(8);
            out.extend(rng.any(n, b""));
        }
        3..=9 => out.extend_from_slice(b"POST"),
        _ => out.extend_from_slice(rng.pick(METHODS).as_bytes()),
    }
    out.push(b' ');
    out.extend_from_slice(rng.pick(BASES).as_bytes());
    match rng.below(10) {
        0..=4 => {}
        5..=7 => {
            let n = 1 + rng.below(30);
            out.extend(rng.from(SAFE, n));
        }
        _ => {
            let n = 1 + rng.below(30);
            out.extend(rng.from(PATH, n));
        }
    }
    if rng.chance(3) {
        let n = 1 + rng.below(6);
        out.extend(rng.any(n, b""));
    }
    if rng.chance(1) {
        out.extend(rng.from(b"abc/", 3000));
    }
    out.push(b' ');
    let version = if rng.chance(92) {
        "HTTP/1.1"
    } else {
        rng.pick(&[
            "HTTP/1.0",
            "HTTP/2.0",
            "HTTP/1.2",
            "HTTP/9.9",
            "http/1.1",
            "HTTP/1.1 x",
            "",
            " HTTP/1.1",
        ])
    };
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(b"\r\n");
    if rng.chance(90) {
        out.extend_from_slice(b"Host: gw\r\n");
    }
    match rng.below(6) {
        0 | 1 => out.extend_from_slice(format!("Authorization: Bearer {key}\r\n").as_bytes()),
        2 => out.extend_from_slice(format!("x-api-key: {key}\r\n").as_bytes()),
        3 => {
            out.extend_from_slice(b"Authorization: ");
            let n = rng.below(80);
            out.extend(rng.from(VISIBLE, n));
            out.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    for _ in 0..rng.below(10) {
        match rng.below(100) {
            0..=69 => {
                let n = 1 + rng.below(24);
                out.extend(rng.from(TOKEN, n));
            }
            70..=94 => out.extend_from_slice(rng.pick(NAMES).as_bytes()),
            95..=97 => {
                let n = 1 + rng.below(10);
                out.extend(rng.any(n, b":"));
            }
            _ => {}
        }
        out.extend_from_slice(b": ");
        let n = rng.below(64);
        match rng.below(100) {
            0..=93 => out.extend(rng.from(VISIBLE, n)),
            94..=98 => out.extend(rng.any(n, b"")),
            _ => {
                let mut v = rng.from(VISIBLE, n);
                let at = rng.below(v.len() + 1);
                v.insert(at, *rng.pick(b"\r\n"));
                out.extend(v);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    let body: Vec<u8> = match rng.below(10) {
        0..=4 => Vec::new(),
        5 | 6 => CHAT.as_bytes().to_vec(),
        _ => {
            let n = rng.below(200);
            rng.any(n, b"")
        }
    };
    if !body.is_empty() && rng.chance(30) {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
        let cut = rng.below(body.len());
        for part in [&body[..cut], &body[cut..]] {
            if !part.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        if !body.is_empty() || rng.chance(50) {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out.extend_from_slice(&body);
    }
    out
}

/// Sends one request on a fresh connection; the final status, or what went wrong.
async fn one_garbage(addr: SocketAddr, req: Vec<u8>) -> Result<(u16, bool), &'static str> {
    let Ok(Ok(mut s)) = tokio::time::timeout(2 * SEC, TcpStream::connect(addr)).await else {
        return Err("connect");
    };
    // The listener may answer and close before reading everything (431 and the like).
    let _ = s.write_all(&req).await;
    let deadline = tokio::time::Instant::now() + 5 * SEC;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        while let Some(h) = find(&buf, b"\r\n\r\n") {
            let line = String::from_utf8_lossy(&buf[..h]).to_string();
            let status: u16 = line
                .split(' ')
                .nth(1)
                .and_then(|s| s.get(..3))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if (100..200).contains(&status) {
                buf.drain(..h + 4);
                continue;
            }
            // The listener's own answers to unparseable requests carry no request id.
            let from_gateway = line.to_ascii_lowercase().contains("\r\nx-request-id:");
            return Ok((status, from_gateway));
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return Err("timeout"),
            Ok(Ok(0)) | Ok(Err(_)) => return Err("closed without an answer"),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_garbage_requests_no_5xx_no_panic_bounded_rss() {
    let _serial = SERIAL.lock().await;
    count_panics();
    let m = RawMock::start_with(Mode::Answer, false).await;
    let g = gateway_for(
        &m,
        "",
        "[server]\nheader_read_timeout = \"2s\"\nbody_read_timeout = \"2s\"\n\
         [limits]\nfailed_auth_per_minute = 1000000\n",
    )
    .await;
    let (_, key) = g.create_key(NewKey {
        name: "fuzz".into(),
        limits: KeyLimits {
            requests_per_minute: Some(1_000_000),
            burst: Some(1_000_000),
            max_in_flight: Some(1000),
            ..Default::default()
        },
        ..Default::default()
    });
    // Warm up pools, allocator arenas and lazies before the baseline.
    for _ in 0..50 {
        let mut c = Raw::connect(g.addr).await;
        c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
        assert_eq!(c.response().await.unwrap().status(), 200);
    }
    let panics_before = PANICS.load(Ordering::SeqCst);
    let rss_before = rss_kb();
    let start = Instant::now();
    let total = 10_000;
    let workers = 16;
    let addr = g.addr;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng =
                Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            let mut bad: Vec<(u16, String)> = Vec::new();
            for _ in 0..total / workers {
                let req = garbage_request(&mut rng, &key);
                let outcome = one_garbage(addr, req.clone()).await;
                let label = match outcome {
                    Ok((s, true)) => s.to_string(),
                    Ok((s, false)) => format!("{s} (listener)"),
                    // A 2xx to CONNECT ends the connection without an answer: reported by
                    // connect_and_trace_are_refused_not_forwarded, counted apart here.
                    Err(e) if req.starts_with(b"CONNECT ") => format!("CONNECT: {e}"),
                    Err(e) => e.to_string(),
                };
                if outcome.map_or(true, |(s, _)| s >= 500 || s == 0) && bad.len() < 5 {
                    bad.push((
                        outcome.map_or(0, |(s, _)| s),
                        String::from_utf8_lossy(&req[..req.len().min(300)]).to_string(),
                    ));
                }
                *seen.entry(label).or_default() += 1;
            }
            (seen, bad)
        }));
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for t in tasks {
        let (s, b) = within(60 * SEC, "fuzz worker", t).await.unwrap();
        for (k, v) in s {
            *seen.entry(k).or_default() += v;
        }
        bad.extend(b);
    }
    let took = start.elapsed();
    let rss_after = rss_kb();
    eprintln!(
        "fuzz: {total} requests in {took:?}; outcomes {seen:?}; upstream got {} requests; \
         RSS {rss_before} kB → {rss_after} kB",
        m.requests()
    );
    for (s, r) in &bad {
        eprintln!("  {s}: {r:?}");
    }
    let fivexx: usize = seen
        .iter()
        .filter(|(k, _)| k.starts_with('5'))
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(fivexx, 0, "5xx answers: {seen:?}\n{bad:?}");
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        panics_before,
        "the gateway panicked"
    );
    for failure in ["timeout", "closed without an answer", "connect"] {
        assert!(!seen.contains_key(failure), "{failure}: {seen:?}\n{bad:?}");
    }
    assert!(
        m.requests() > 200,
        "too few requests were valid enough to forward"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 50 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );
    assert!(took < 30 * SEC, "took {took:?}");

    let mut c = Raw::connect(g.addr).await;
    c.send("GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.response().await.unwrap().status(), 200);
    c.send(chat_req(Some(&key), "", CHAT)).await.unwrap();
    assert_eq!(c.response().await.unwrap().status(), 200);
}
