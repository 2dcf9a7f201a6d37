//! A raw HTTP/1.1 client: it writes exactly the bytes it is given, so no client library
//! normalises a hostile request on the way in, and parses answers by hand.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const SEC: Duration = Duration::from_secs(1);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Awaits `fut`, failing the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {limit:?}"))
}

// ------------------------------------------------------------------ HTTP/1.1 framing, by hand

#[derive(Debug, Clone)]
pub struct Msg {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Bytes the whole message took.
    pub len: usize,
}

impl Msg {
    pub fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {:?}",
                self.start,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts the reference: Errors error shape and returns the code.
    pub fn error_code(&self) -> String {
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

pub enum Parsed {
    Done(Msg),
    More,
    Bad(String),
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    find(hay, needle.as_bytes()).is_some()
}

/// Decodes a chunked body: `None` while incomplete, else the body and the bytes it took.
pub fn dechunk(data: &[u8]) -> Option<Result<(Vec<u8>, usize), String>> {
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
pub fn parse(buf: &[u8], response: bool, eof: bool) -> Parsed {
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
pub struct Raw {
    pub s: TcpStream,
    pub buf: Vec<u8>,
    pub eof: bool,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
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

    pub async fn send(&mut self, b: impl AsRef<[u8]>) -> std::io::Result<()> {
        self.s.write_all(b.as_ref()).await
    }

    /// Reads once; false on timeout.
    pub async fn fill(&mut self, deadline: tokio::time::Instant) -> bool {
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
    pub async fn response(&mut self) -> Result<Msg, String> {
        self.response_within(Duration::from_secs(5)).await
    }

    pub async fn response_within(&mut self, limit: Duration) -> Result<Msg, String> {
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

    /// The status of the next response with a content-length body (read and discarded), or
    /// `None` if the connection closed or nothing came within 5 s.
    pub async fn status(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + 5 * SEC;
        loop {
            if let Some(h) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..h]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if self.buf.len() >= h + 4 + len {
                    self.buf.drain(..h + 4 + len);
                    return head.split(' ').nth(1).and_then(|s| s.parse().ok());
                }
            }
            if self.eof || !self.fill(deadline).await {
                return None;
            }
        }
    }

    /// Waits for the peer to close; how long it took, or `None` if still open after `limit`.
    pub async fn wait_closed(&mut self, limit: Duration) -> Option<Duration> {
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
pub fn chat_req(key: Option<&str>, extra: &str, body: &str) -> String {
    let auth = key.map_or_else(String::new, |k| format!("Authorization: Bearer {k}\r\n"));
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// The head of a chat request with the given framing headers (and no body).
pub fn chat_head(key: Option<&str>, framing: &str) -> String {
    let auth = key.map_or_else(String::new, |k| format!("Authorization: Bearer {k}\r\n"));
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n{auth}Content-Type: application/json\r\n{framing}\r\n"
    )
}

/// `body` as one chunk plus the terminating chunk.
pub fn chunked(body: &str) -> String {
    format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
}
