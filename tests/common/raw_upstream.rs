//! A raw recording upstream: a bare socket that records the exact bytes it receives (so nothing
//! normalises what the gateway sends), with modes for the ways upstreams fail.
#![allow(dead_code)]

use super::raw::{find, parse, Msg, Parsed};
use super::{start_gateway_raw, start_mock, TestGateway};
use keygate::keys::record::NewKey;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

#[derive(Debug, Clone, Copy)]
pub enum Mode {
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
    /// Answers every request with these bytes, as they are (framing faults).
    Bytes(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
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
pub struct Shared {
    pub record: bool,
    pub conns: Arc<Mutex<Vec<Vec<u8>>>>,
    pub requests: Arc<Mutex<Vec<(usize, Msg)>>>,
    pub heads: Arc<AtomicUsize>,
    pub count: Arc<AtomicUsize>,
    pub log: Arc<Mutex<Vec<(Event, Instant)>>>,
    pub version: Arc<watch::Sender<u64>>,
}

impl Shared {
    pub fn event(&self, e: Event) {
        if self.record || !matches!(e, Event::Head(_) | Event::Request(_)) {
            self.log.lock().unwrap().push((e, Instant::now()));
        }
        self.version.send_modify(|v| *v += 1);
    }
}

pub struct RawMock {
    pub addr: SocketAddr,
    pub sh: Shared,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for RawMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn ok_response() -> Vec<u8> {
    const BODY: &str = r#"{"id":"chatcmpl-raw","object":"chat.completion","created":0,"model":"llama-3.1-8b-instruct","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

pub const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

pub fn sse_chunk(i: usize) -> Vec<u8> {
    let ev = format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}}}}]}}\n\n"
    );
    format!("{:x}\r\n{ev}\r\n", ev.len()).into_bytes()
}

impl RawMock {
    pub async fn start(mode: Mode) -> RawMock {
        RawMock::start_with(mode, true).await
    }

    pub async fn start_with(mode: Mode, record: bool) -> RawMock {
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

    pub fn connections(&self) -> usize {
        self.sh.conns.lock().unwrap().len()
    }

    /// Whole requests received, over all connections.
    pub fn requests(&self) -> usize {
        self.sh.count.load(Ordering::SeqCst)
    }

    /// Request heads received (a head whose body never completed counts here only).
    /// Connections accepted and not closed by either side (as far as the mock has read).
    pub fn open_connections(&self) -> usize {
        let log = self.sh.log.lock().unwrap();
        let accepted = log
            .iter()
            .filter(|(e, _)| matches!(e, Event::Accepted(_)))
            .count();
        let closed: std::collections::BTreeSet<usize> = log
            .iter()
            .filter_map(|(e, _)| match e {
                Event::Eof(i) | Event::MockClosed(i) => Some(*i),
                _ => None,
            })
            .collect();
        accepted - closed.len()
    }

    pub fn heads(&self) -> usize {
        self.sh.heads.load(Ordering::SeqCst)
    }

    pub fn request(&self, i: usize) -> (usize, Msg) {
        self.sh.requests.lock().unwrap()[i].clone()
    }

    /// Every byte received, on every connection.
    pub fn all_bytes(&self) -> Vec<u8> {
        self.sh.conns.lock().unwrap().concat()
    }

    /// Waits until `n` events match `pred`; the time of the `n`th, or `None` after `limit`.
    pub async fn wait_n(
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

    pub async fn wait(&self, limit: Duration, pred: impl Fn(&Event) -> bool) -> Option<Instant> {
        self.wait_n(limit, 1, pred).await
    }
}

pub async fn serve_conn(stream: TcpStream, idx: usize, mode: Mode, sh: Shared) {
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
                    Mode::Bytes(b) => {
                        if wr.write_all(b.as_bytes()).await.is_err() {
                            break;
                        }
                    }
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
pub async fn gateway_for(m: &RawMock, upstream_extra: &str, extra: &str) -> TestGateway {
    let toml = format!(
        "[[upstream]]\nname = \"raw\"\nurl = \"http://{}\"\n{upstream_extra}{extra}",
        m.addr
    );
    start_gateway_raw(start_mock().await, &toml).await
}

pub fn key_with_models(g: &TestGateway, models: &[&str]) -> String {
    g.create_key(NewKey {
        name: "allowlist".into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    })
    .1
}

/// Waits until nothing more can reach the upstream `m` through `g`: no request runs at the
/// gateway, and every upstream connection still open is idle in the gateway's pool (one a
/// request abandoned is closed, and the mock has read it to its end). False after `limit`.
pub async fn settled(g: &TestGateway, m: &RawMock, limit: Duration) -> bool {
    super::eventually(limit, || async {
        let idle: usize = g.gw.live().upstreams.iter().map(|u| u.pool().idle()).sum();
        g.gw.capacity.in_use() == 0 && m.open_connections() == idle
    })
    .await
}
