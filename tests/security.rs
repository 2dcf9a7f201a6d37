//! Request checks before forwarding, probed from outside: the model allowlist on every route
//! and body encoding, keys leaking through other fields (request id, path, model, URL),
//! path parameters, the failed-auth guard behind proxies, Basic auth, and the `/v1` hint.
//! Each test runs a real gateway on 127.0.0.1:0 in front of the mock upstream (whose
//! `Recorder` shows exactly what crossed), or of a raw TCP upstream that reports bytes as
//! they arrive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::*;
use http::Method;
use keygate::keys::record::NewKey;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GOOD: &str = "llama-3.1-8b-instruct";
const BAD: &str = "gpt-4";
const BOUNDARY: &str = "kgBOUNDARY7MA4YWxkTrZu0gW";

fn allowlisted(g: &TestGateway, models: &[&str]) -> String {
    g.create_key(NewKey {
        name: "allowlist".into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    })
    .1
}

// ------------------------------------------------------------------ bodies

/// One multipart part: (name, filename, bytes).
type Part<'a> = (&'a str, Option<&'a str>, &'a [u8]);

fn multipart(parts: &[Part<'_>]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, file, data) in parts {
        b.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file {
            Some(f) => b.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => b.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

#[derive(Clone, Copy, Debug)]
enum Enc {
    Json,
    Multipart,
    Form,
}

/// A body naming `model` (or none) in encoding `enc`, with its content type.
fn body(enc: Enc, model: Option<&str>) -> (Vec<u8>, String) {
    match enc {
        Enc::Json => {
            let mut v = serde_json::json!({"input": "hello", "prompt": "a cat", "messages": []});
            if let Some(m) = model {
                v["model"] = m.into();
            }
            (v.to_string().into_bytes(), "application/json".into())
        }
        Enc::Multipart => {
            let audio = vec![b'A'; 2048];
            let mut parts: Vec<Part<'_>> = vec![("file", Some("speech.wav"), &audio)];
            if let Some(m) = model {
                parts.insert(0, ("model", None, m.as_bytes()));
            }
            parts.push(("language", None, b"en"));
            (multipart(&parts), multipart_type())
        }
        Enc::Form => {
            let mut s = String::from("prompt=a+cat&n=1");
            if let Some(m) = model {
                s.push_str(&format!("&model={m}"));
            }
            (s.into_bytes(), "application/x-www-form-urlencoded".into())
        }
    }
}

async fn post(
    g: &TestGateway,
    method: Method,
    path: &str,
    key: &str,
    body: Vec<u8>,
    ct: &str,
) -> Answer {
    let auth = bearer(key);
    send(
        method,
        &g.url(path),
        &[("authorization", &auth), ("content-type", ct)],
        Bytes::from(body),
    )
    .await
}

// ------------------------------------------------------------------ 4. the model allowlist

/// Every built-in route that carries a model, with its trailing-slash and sub-path variants,
/// other methods with bodies, `[[route]]` extras, and each body encoding.
const ROUTES: &[(&str, &str, Enc)] = &[
    ("POST", "/v1/chat/completions", Enc::Json),
    ("POST", "/v1/completions", Enc::Json),
    ("POST", "/v1/embeddings", Enc::Json),
    ("POST", "/v1/moderations", Enc::Json),
    ("POST", "/v1/rerank", Enc::Json),
    ("POST", "/rerank", Enc::Json),
    ("POST", "/tokenize", Enc::Json),
    ("POST", "/detokenize", Enc::Json),
    ("POST", "/v1/chat/completions/", Enc::Json),
    ("POST", "/v1/completions/", Enc::Json),
    ("POST", "/v1/embeddings/", Enc::Json),
    ("POST", "/v1/moderations/", Enc::Json),
    ("POST", "/v1/rerank/", Enc::Json),
    ("POST", "/rerank/", Enc::Json),
    ("POST", "/tokenize/", Enc::Json),
    ("POST", "/detokenize/", Enc::Json),
    ("POST", "/v1/responses", Enc::Json),
    ("POST", "/v1/responses/", Enc::Json),
    ("POST", "/v1/responses/x", Enc::Json),
    ("POST", "/v1/responses/resp_1/cancel", Enc::Json),
    ("DELETE", "/v1/responses/resp_1", Enc::Json),
    ("POST", "/v1/audio/speech", Enc::Json),
    ("POST", "/v1/audio/speech/", Enc::Json),
    ("POST", "/v1/audio/transcriptions", Enc::Multipart),
    ("POST", "/v1/audio/transcriptions/", Enc::Multipart),
    ("POST", "/v1/audio/translations", Enc::Multipart),
    ("POST", "/v1/audio/transcriptions", Enc::Form),
    ("POST", "/v1/images/generations", Enc::Json),
    ("POST", "/v1/images/generations/", Enc::Json),
    ("POST", "/v1/images/generations", Enc::Form),
    ("POST", "/v1/images/edits", Enc::Json),
    ("POST", "/v1/images/edits", Enc::Multipart),
    ("POST", "/v1/images/variations", Enc::Multipart),
    ("POST", "/v1/images/x/y", Enc::Json),
    ("POST", "/v1/score", Enc::Json),
    ("PUT", "/v1/extra/thing", Enc::Json),
    ("PATCH", "/v1/extra/thing", Enc::Multipart),
];

const EXTRA_ROUTES: &str =
    "[[route]]\nmethod = \"POST\"\npath = \"/v1/score\"\nscope = \"rerank\"\n\
     [[route]]\nmethod = \"*\"\npath = \"/v1/extra/*\"\nscope = \"chat\"\n";

#[tokio::test]
async fn allowlist_holds_on_every_route_and_encoding() {
    let g = start_gateway(EXTRA_ROUTES).await;
    let key = allowlisted(&g, &["llama-*"]);
    for (m, path, enc) in ROUTES {
        let method: Method = m.parse().unwrap();
        let (b, ct) = body(*enc, Some(BAD));
        let a = post(&g, method.clone(), path, &key, b, &ct).await;
        assert_eq!(
            (a.status.as_u16(), a.error_code().as_str()),
            (403, "model_not_allowed"),
            "{m} {path} {enc:?} with `{BAD}`: {:?}",
            a.body
        );
        let seen = g.mock.recorder.take();
        assert!(
            seen.is_empty(),
            "{m} {path} {enc:?} reached the upstream: {seen:?}"
        );

        let (b, ct) = body(*enc, Some(GOOD));
        let a = post(&g, method.clone(), path, &key, b.clone(), &ct).await;
        let seen = g.mock.recorder.take();
        assert_eq!(
            seen.len(),
            1,
            "{m} {path} {enc:?} with `{GOOD}` was not forwarded: {a:?}",
            a = a.body
        );
        assert_eq!((&seen[0].method, seen[0].path.as_str()), (&method, *path));
        assert_eq!(
            seen[0].body, b,
            "{m} {path} {enc:?}: the body changed on the way"
        );
    }
    // Retrieving a model is checked too.
    let auth = bearer(&key);
    let a = send(
        Method::GET,
        &g.url(&format!("/v1/models/{BAD}")),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(a.error_code(), "model_not_allowed");
    // ... by the name the upstream will see, percent-decoded (an Ollama tag's `:`).
    let a = send(
        Method::GET,
        &g.url("/v1/models/gpt-4%3Alatest"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(a.error_code(), "model_not_allowed");
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`gpt-4:latest`"));
    // An encoded letter, digit or `-._~` is refused: no encoder writes one, and an upstream
    // decodes it into a route the table never saw (`/v1/audio/%73peech`: found by a probe).
    for path in [
        "/v1/models/gpt%2D4",
        "/v1/audio/%73peech",
        "/v1/images/%67enerations",
    ] {
        let a = send(
            Method::POST,
            &g.url(path),
            &[("authorization", &auth)],
            "{}",
        )
        .await;
        assert_eq!(a.status, 400, "{path}");
        assert!(a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a letter, digit"));
    }
    assert!(g.mock.recorder.is_empty());
    let a = send(
        Method::GET,
        &g.url("/v1/models/llama-3.1-8b-instruct%3Aq4"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    let seen = g.mock.recorder.take();
    assert_eq!(seen.len(), 1, "{:?}", a.body);
    assert_eq!(seen[0].path, "/v1/models/llama-3.1-8b-instruct%3Aq4");
}

#[tokio::test]
async fn a_route_that_carries_a_model_must_name_one() {
    let g = start_gateway("").await;
    let key = allowlisted(&g, &["llama-*"]);
    for (path, enc) in [
        ("/v1/images/generations/", Enc::Json),
        ("/v1/audio/speech", Enc::Json),
        ("/v1/responses/", Enc::Json),
        ("/v1/audio/transcriptions", Enc::Multipart),
        ("/v1/images/edits", Enc::Multipart),
        ("/v1/images/generations", Enc::Form),
    ] {
        let (b, ct) = body(enc, None);
        let a = post(&g, Method::POST, path, &key, b, &ct).await;
        assert_eq!(
            (a.status.as_u16(), a.error_code().as_str()),
            (400, "invalid_request"),
            "{path} {enc:?}"
        );
        let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains("`model`"), "{path}: {msg}");
        // Named in `param` too, as a second `model` is (it was `null`).
        assert_eq!(a.json()["error"]["param"], "model", "{path} {enc:?}");
    }
    // An empty body on such a route names no model either.
    let a = post(
        &g,
        Method::POST,
        "/v1/chat/completions",
        &key,
        Vec::new(),
        "application/json",
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "model");
    // A body that cannot be read for its model is refused rather than passed on.
    let a = post(
        &g,
        Method::POST,
        "/v1/responses/x",
        &key,
        b"<xml/>".to_vec(),
        "text/xml",
    )
    .await;
    assert_eq!(a.status, 400);
    let a = post(
        &g,
        Method::POST,
        "/v1/chat/completions",
        &key,
        b"model=gpt-4".to_vec(),
        "application/x-www-form-urlencoded; charset=utf-8",
    )
    .await;
    assert_eq!(a.error_code(), "model_not_allowed");
    assert!(g.mock.recorder.is_empty());
    // A sub-path without a model in its body is forwarded (cancel, delete, ...).
    let a = post(
        &g,
        Method::POST,
        "/v1/responses/resp_1/cancel",
        &key,
        b"{}".to_vec(),
        "application/json",
    )
    .await;
    assert_eq!(g.mock.recorder.take().len(), 1, "{:?}", a.body);
}

#[tokio::test]
async fn ambiguous_bodies_are_refused_not_guessed() {
    let g = start_gateway("").await;
    let key = allowlisted(&g, &["llama-*"]);
    let path = "/v1/audio/transcriptions";
    let audio = vec![b'A'; 1000];
    // A second `model` after the file (form parsers keep the last one).
    let two = multipart(&[
        ("model", None, GOOD.as_bytes()),
        ("file", Some("a.wav"), &audio),
        ("model", None, BAD.as_bytes()),
    ]);
    // Names that multer and other parsers read differently.
    let raw = |cd: &str| {
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{GOOD}\r\n--{BOUNDARY}\r\nContent-Disposition: {cd}\r\n\r\n{BAD}\r\n--{BOUNDARY}--\r\n"
        )
        .into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        ("second model field", two, multipart_type()),
        ("NAME=", raw("form-data; NAME=\"model\""), multipart_type()),
        (
            "name*=",
            raw("form-data; name*=utf-8''model"),
            multipart_type(),
        ),
        (
            "two names",
            raw("form-data; name=\"x\"; name=\"model\""),
            multipart_type(),
        ),
        (
            "name in filename",
            raw("form-data; filename=\"a; name=model\""),
            multipart_type(),
        ),
        (
            "two boundaries",
            multipart(&[("model", None, GOOD.as_bytes())]),
            format!("multipart/form-data; boundary={BOUNDARY}; boundary=other"),
        ),
        (
            "two form models",
            format!("model={GOOD}&model={BAD}").into_bytes(),
            "application/x-www-form-urlencoded".into(),
        ),
        (
            "form ;",
            format!("model={GOOD};model={BAD}").into_bytes(),
            "application/x-www-form-urlencoded".into(),
        ),
        (
            "two JSON models",
            format!(r#"{{"model":"{GOOD}","model":"{BAD}"}}"#).into_bytes(),
            "application/json".into(),
        ),
        (
            "escaped JSON key",
            format!(r#"{{"model":"{GOOD}","mod\u0065l":"{BAD}"}}"#).into_bytes(),
            "application/json".into(),
        ),
    ];
    for (what, b, ct) in cases {
        let a = post(&g, Method::POST, path, &key, b, &ct).await;
        assert_eq!(a.status, 400, "{what}: {:?}", a.body);
        assert_eq!(a.error_code(), "invalid_request", "{what}");
        assert!(g.mock.recorder.is_empty(), "{what} reached the upstream");
    }
    // A compressed body cannot be read for its model.
    let auth = bearer(&key);
    let a = send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[("authorization", &auth), ("content-encoding", "gzip")],
        CHAT,
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(g.mock.recorder.is_empty());
}

#[tokio::test]
async fn multipart_model_after_the_file_and_size_bound() {
    let g = start_gateway("[server]\nmax_body_bytes = 200000\n").await;
    let key = allowlisted(&g, &["llama-*"]);
    let audio = vec![b'Z'; 150_000];
    let b = multipart(&[
        ("file", Some("a.wav"), &audio),
        ("model", None, GOOD.as_bytes()),
    ]);
    let a = post(
        &g,
        Method::POST,
        "/v1/audio/transcriptions",
        &key,
        b.clone(),
        &multipart_type(),
    )
    .await;
    let seen = g.mock.recorder.take();
    assert_eq!(seen.len(), 1, "{:?}", a.body);
    assert_eq!(seen[0].body, b);
    let b = multipart(&[
        ("file", Some("a.wav"), &audio),
        ("model", None, BAD.as_bytes()),
    ]);
    let a = post(
        &g,
        Method::POST,
        "/v1/audio/transcriptions",
        &key,
        b,
        &multipart_type(),
    )
    .await;
    assert_eq!(a.error_code(), "model_not_allowed");
    // Past max_body_bytes before the model shows up: 413, nothing forwarded.
    let big = vec![b'Z'; 250_000];
    let b = multipart(&[
        ("file", Some("a.wav"), &big),
        ("model", None, GOOD.as_bytes()),
    ]);
    let auth = bearer(&key);
    let ct = multipart_type();
    // Chunked (no Content-Length), so the limit is found while reading.
    let stream = http_body_util::StreamBody::new(futures_stream(b));
    let req = http::Request::post(g.url("/v1/audio/transcriptions"))
        .header("authorization", &auth)
        .header("content-type", &ct)
        .body(stream)
        .unwrap();
    let resp = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http()
        .request(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(g.mock.recorder.is_empty());
}

fn futures_stream(
    b: Vec<u8>,
) -> impl futures_core::Stream<Item = Result<http_body::Frame<Bytes>, std::convert::Infallible>> {
    let chunks: Vec<_> = b
        .chunks(16 * 1024)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    tokio_stream::iter(chunks)
}

#[tokio::test]
async fn multipart_uploads_are_routed_by_model() {
    let a_mock = start_mock().await;
    let b_mock = start_mock().await;
    let toml = format!(
        "[[upstream]]\nname = \"a\"\nurl = \"http://{}\"\nmodels = [\"llama-*\"]\n[[upstream]]\nname = \"b\"\nurl = \"http://{}\"\nmodels = [\"whisper-*\"]\n",
        a_mock.addr, b_mock.addr
    );
    let b_rec = b_mock.recorder.clone();
    let g = start_gateway_raw(a_mock, &toml).await;
    let key = g.key();
    let (b, ct) = body(Enc::Multipart, Some("whisper-large-v3"));
    post(
        &g,
        Method::POST,
        "/v1/audio/transcriptions",
        &key,
        b.clone(),
        &ct,
    )
    .await;
    let seen = b_rec.take();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b);
    assert!(g.mock.recorder.is_empty(), "went to the first upstream");
    let (b, ct) = body(Enc::Multipart, Some("nobody-serves-this"));
    let a = post(&g, Method::POST, "/v1/audio/transcriptions", &key, b, &ct).await;
    assert_eq!(a.error_code(), "model_not_found");
}

// ------------------------------------------------------------------ a raw upstream

/// An upstream that records the bytes of each request's body as they arrive and answers
/// 200 once the body (by Content-Length) is complete.
struct RawUpstream {
    addr: SocketAddr,
    body: Arc<Mutex<Vec<u8>>>,
    complete: Arc<tokio::sync::Notify>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let body = Arc::new(Mutex::new(Vec::new()));
        let complete = Arc::new(tokio::sync::Notify::new());
        let (b, c) = (Arc::clone(&body), Arc::clone(&complete));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (b, c) = (Arc::clone(&b), Arc::clone(&c));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = vec![0u8; 65536];
                    let mut need: Option<(usize, usize)> = None;
                    loop {
                        let n = match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        if need.is_none() {
                            if let Some(h) = find(&buf, b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
                                let len = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length:"))
                                    .and_then(|v| v.trim().parse().ok())
                                    .unwrap_or(0);
                                need = Some((h + 4, len));
                            }
                        }
                        if let Some((start, len)) = need {
                            *b.lock().unwrap() = buf[start.min(buf.len())..].to_vec();
                            if buf.len() >= start + len {
                                c.notify_waiters();
                                let _ = s
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                                    .await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        RawUpstream {
            addr,
            body,
            complete,
        }
    }

    fn received(&self) -> Vec<u8> {
        self.body.lock().unwrap().clone()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response's status code from a raw socket.
async fn status_of(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(h) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..h]).to_string();
                return head
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return 0,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or(0)
}

async fn raw_gateway(up: &RawUpstream) -> TestGateway {
    let toml = format!(
        "[[upstream]]\nname = \"raw\"\nurl = \"http://{}\"\n",
        up.addr
    );
    start_gateway_raw(start_mock().await, &toml).await
}

#[tokio::test]
async fn multipart_streams_on_once_the_model_is_read() {
    let up = RawUpstream::start().await;
    let g = raw_gateway(&up).await;
    let key = allowlisted(&g, &["llama-*"]);
    let audio: Vec<u8> = (0..3_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let b = multipart(&[
        ("model", None, GOOD.as_bytes()),
        ("file", Some("a.wav"), &audio),
    ]);
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    let head = format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        multipart_type(),
        b.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let first = 64 * 1024;
    s.write_all(&b[..first]).await.unwrap();
    // The upstream gets the model and the start of the file while the client still holds
    // most of it back: the gateway does not wait for the whole upload.
    let arrived = eventually(Duration::from_secs(10), || {
        let r = up.received();
        async move { r.len() >= first / 2 }
    })
    .await;
    assert!(
        arrived,
        "nothing reached the upstream before the upload was complete ({} bytes)",
        up.received().len()
    );
    let done = up.complete.notified();
    s.write_all(&b[first..]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .unwrap();
    assert_eq!(status_of(&mut s).await, 200);
    assert!(up.received() == b, "the upstream got different bytes");
}

#[tokio::test]
async fn a_second_model_field_never_reaches_the_upstream_whole() {
    let up = RawUpstream::start().await;
    let g = raw_gateway(&up).await;
    let key = allowlisted(&g, &["llama-*"]);
    let audio = vec![b'Q'; 200_000];
    let b = multipart(&[
        ("model", None, GOOD.as_bytes()),
        ("file", Some("a.wav"), &audio),
        ("model", None, BAD.as_bytes()),
    ]);
    let split = find(&b, b"name=\"model\"\r\n\r\ngpt-4").unwrap() - 60;
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    let head = format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        multipart_type(),
        b.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&b[..split]).await.unwrap();
    let started = eventually(Duration::from_secs(10), || {
        let r = up.received();
        async move { r.len() > 100_000 }
    })
    .await;
    assert!(started, "the first part was not streamed on");
    s.write_all(&b[split..]).await.unwrap();
    let status = status_of(&mut s).await;
    assert_eq!(status, 400);
    let got = up.received();
    assert!(got.len() < b.len(), "the upstream got the whole request");
    assert!(
        find(&got, BAD.as_bytes()).is_none(),
        "the second model reached the upstream"
    );
}

// ------------------------------------------------------------------ 6. keys in other fields

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged by this test binary so far (the subscriber is installed on first use).
fn logs() -> String {
    let buf = LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = Arc::clone(&buf);
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(Arc::clone(&w)))
            .try_init();
        buf
    });
    String::from_utf8_lossy(&buf.lock().unwrap()).to_string()
}

/// Sends `g`'s access lines (written by the gateway's own log writer, not through tracing)
/// to the same buffer as `logs()`.
fn capture_access(g: &TestGateway) {
    logs();
    if let Some(buf) = LOGS.get() {
        let l = keygate::ops::logging::Logging::to_writer(
            Box::new(LogWriter(Arc::clone(buf))),
            keygate::config::LogFormat::Text,
        )
        .unwrap();
        let _ = g.gw.logging.set(l);
    }
}

async fn logged(needle: &str) -> bool {
    eventually(Duration::from_secs(5), || {
        let found = logs().contains(needle);
        async move { found }
    })
    .await
}

#[tokio::test]
async fn a_key_in_the_request_id_is_replaced() {
    let g = start_gateway("").await;
    capture_access(&g);
    let key = g.key();
    // Percent-encoded too (found by a probe: `sk_kg%5F…` was kept, logged and forwarded).
    let (prefix, rest) = key.split_once('_').unwrap();
    for id in [
        key.clone(),
        format!("trace-{key}-1"),
        format!("{prefix}%5F{rest}"),
        format!("trace-{prefix}%255F{rest}"),
    ] {
        let auth = bearer(&key);
        let a = send(
            Method::POST,
            &g.url("/v1/chat/completions"),
            &[("authorization", &auth), ("x-request-id", &id)],
            CHAT,
        )
        .await;
        assert_eq!(a.status, 200);
        let echoed = a.header("x-request-id").unwrap().to_string();
        assert!(echoed.starts_with("req_"), "{echoed}");
        let seen = g.mock.recorder.take();
        assert_eq!(seen[0].headers["x-request-id"], echoed.as_str());
        for (name, v) in seen[0].headers.iter() {
            let v = String::from_utf8_lossy(v.as_bytes());
            assert!(
                !v.contains(&key) && !v.contains(&id),
                "{name} carries the key"
            );
        }
        assert!(logged(&echoed).await, "no access-log line for {echoed}");
        assert!(!logs().contains(&id), "the request id {id} was logged");
    }
    // A credential that is not key-shaped is a secret too, as sent or percent-encoded.
    for id in ["id-hunter2-hunter2", "id-hunter2%2Dhunter2"] {
        let a = send(
            Method::POST,
            &g.url("/v1/chat/completions"),
            &[
                ("authorization", "Bearer hunter2-hunter2"),
                ("x-request-id", id),
            ],
            CHAT,
        )
        .await;
        assert_eq!(a.status, 401);
        let echoed = a.header("x-request-id").unwrap().to_string();
        assert!(echoed.starts_with("req_"), "{id} was kept as {echoed}");
        // Its access line is written by now (the log is in order), so its absence means
        // something.
        assert!(logged(&echoed).await, "no access-log line for {echoed}");
    }
    assert!(!logs().contains(&key), "the key was logged");
    assert!(
        !logs().contains("hunter2-hunter2") && !logs().contains("hunter2%2Dhunter2"),
        "the credential was logged"
    );
}

#[tokio::test]
async fn a_key_as_path_or_model_is_refused_and_never_logged_or_echoed() {
    let g = start_gateway("").await;
    capture_access(&g);
    let key = g.key();
    let limited = allowlisted(&g, &["llama-*"]);
    let auth = bearer(&key);
    let a = send(
        Method::GET,
        &g.url(&format!("/v1/models/{key}")),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(!String::from_utf8_lossy(&a.body).contains(&key));
    // A model that is the key: refused, not `model_not_allowed` naming it. (A body the
    // gateway does not read, with no allowlist, one upstream and no token limit, is not
    // searched: its model is neither known to the gateway nor logged.)
    for (path, enc) in [
        ("/v1/chat/completions", Enc::Json),
        ("/v1/audio/transcriptions", Enc::Multipart),
        ("/v1/images/generations", Enc::Form),
    ] {
        let (b, ct) = body(enc, Some(&limited));
        let a = post(&g, Method::POST, path, &limited, b, &ct).await;
        assert_eq!(
            (a.status.as_u16(), a.error_code().as_str()),
            (400, "invalid_request"),
            "{enc:?}"
        );
        assert!(!String::from_utf8_lossy(&a.body).contains(&limited));
        let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains("`model`"), "{msg}");
    }
    // Nor can a parser's message repeat it.
    let a = chat(
        &g,
        &limited,
        &format!(r#"{{"model":"{GOOD}","stream":"{limited}"}}"#),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(!String::from_utf8_lossy(&a.body).contains(&limited));
    // Another key of this gateway, in a model name, is not echoed either.
    let other = keygate::keys::token::generate("sk_kg").unwrap().plaintext;
    let a = chat(
        &g,
        &limited,
        &format!(r#"{{"model":"x-{other}","messages":[]}}"#),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(!String::from_utf8_lossy(&a.body).contains(&other));
    assert!(g.mock.recorder.is_empty());
    // The refusals were logged (their request ids), the keys were not.
    let id = a.header("x-request-id").unwrap().to_string();
    assert!(logged(&id).await);
    let text = logs();
    for k in [&key, &limited, &other] {
        assert!(!text.contains(k.as_str()), "a key was logged");
    }
}

#[tokio::test]
async fn a_key_in_an_encoded_path_or_in_the_user_agent_is_never_logged() {
    let g = start_gateway("").await;
    capture_access(&g);
    let key = g.key();
    let auth = bearer(&key);
    // What makes it a secret: the part after `sk_kg_`, in whatever encoding carries it.
    let secret = key.strip_prefix("sk_kg_").unwrap().to_string();
    for path in [
        format!("/v1/models/sk%5Fkg%5F{secret}"),
        format!("/v1/models/%73k_kg_{secret}"),
        format!("/v1/models/%2573k_kg_{secret}"),
    ] {
        let a = send(Method::GET, &g.url(&path), &[("authorization", &auth)], "").await;
        assert_eq!(a.status, 400, "{path}");
        assert!(!String::from_utf8_lossy(&a.body).contains(&secret));
        let id = a.header("x-request-id").unwrap().to_string();
        assert!(logged(&id).await, "no access line for {path}");
    }
    // The client's own key, or another one, in its user agent: served, never logged.
    let other = keygate::keys::token::generate("sk_kg").unwrap().plaintext;
    for ua in [format!("k {key}"), format!("bot (token {other})")] {
        let a = send(
            Method::POST,
            &g.url("/v1/chat/completions"),
            &[("authorization", &auth), ("user-agent", &ua)],
            CHAT,
        )
        .await;
        assert_eq!(a.status, 200);
        let id = a.header("x-request-id").unwrap().to_string();
        assert!(logged(&id).await, "no access line for {ua}");
    }
    let text = logs();
    assert!(!text.contains(&secret), "a key was logged");
    assert!(!text.contains(other.as_str()), "another key was logged");
    assert!(text.contains("user_agent=[redacted]"), "{text}");
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_is_logged_as_gone_not_as_a_bad_request() {
    let g = start_gateway("").await;
    capture_access(&g);
    let streamed = g.key();
    // A key with an allowlist: the gateway reads the body itself (for its `model`).
    let read = allowlisted(&g, &["llama-*"]);
    for (key, ua) in [(&streamed, "leaver-streamed"), (&read, "leaver-read")] {
        let mut c = TcpStream::connect(g.addr).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
             user-agent: {ua}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n\
             {{\"model\":\"llama-3\",\"mess"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        c.flush().await.unwrap();
        drop(c);
        let needle = format!("user_agent={ua}");
        assert!(logged(&needle).await, "no access line for {ua}");
        let text = logs();
        let line = text.lines().find(|l| l.contains(&needle)).unwrap();
        assert!(line.contains(" status=499"), "{line}");
        assert!(line.contains(" complete=false"), "{line}");
        assert!(line.contains(" error=-"), "{line}");
    }
}

#[tokio::test]
async fn a_json_body_labelled_as_a_form_is_reserved_and_counted_as_json() {
    let g = start_gateway("").await;
    capture_access(&g);
    let key = g.key_with_limits(keygate::keys::record::KeyLimits {
        tokens_per_minute: Some(100_000),
        ..Default::default()
    });
    let body = r#"{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":5000}"#;
    let a = send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[
            ("authorization", &bearer(&key)),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        body,
    )
    .await;
    assert_eq!(a.status, 200);
    // The whole budget is reserved, as for the same body labelled JSON (not 256 + body/4).
    let remaining: u64 = a
        .header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining <= 95_000, "{remaining}");
    // And the stream was asked for its usage, so its real tokens are counted.
    let seen = g.mock.recorder.take();
    assert!(
        String::from_utf8_lossy(&seen[0].body).contains("include_usage"),
        "{:?}",
        String::from_utf8_lossy(&seen[0].body)
    );
    // A body the gateway read and refused still counts what came in the log.
    let a = send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[
            ("authorization", &bearer(&key)),
            ("content-type", "application/json"),
            ("x-request-id", "not-json-40"),
        ],
        "this is not json at all, 40 bytes long..",
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(logged("request_id=not-json-40").await);
    let text = logs();
    let line = text
        .lines()
        .find(|l| l.contains("request_id=not-json-40"))
        .unwrap();
    assert!(line.contains(" bytes_received=40"), "{line}");
}

// ------------------------------------------------------------------ 7. keys in the URL

#[tokio::test]
async fn a_key_anywhere_in_the_url_is_refused_in_any_encoding() {
    let g = start_gateway("").await;
    let key = g.key();
    let under = key.replacen('_', "%5F", 1);
    let auth = bearer(&key);
    for q in [
        format!("q=Bearer%20{key}"),
        format!("auth=x:{key}"),
        format!("a=1;q={key}"),
        format!("q={under}"),
        format!("q={}", key.replacen('_', "%255F", 1)),
        "API%5FKEY=whatever".to_string(),
    ] {
        let a = send(
            Method::POST,
            &g.url(&format!("/v1/chat/completions?{q}")),
            &[("authorization", &auth)],
            CHAT,
        )
        .await;
        assert_eq!(
            (a.status.as_u16(), a.error_code().as_str()),
            (400, "invalid_request"),
            "{q}"
        );
        let body = String::from_utf8_lossy(&a.body).to_string();
        assert!(
            !body.contains(&key) && !body.contains(&under),
            "{q}: {body}"
        );
    }
    // In the path, on an unknown route too: 400, never a 404 that repeats the path.
    for p in [format!("/v1/models/{under}"), format!("/v1/nothing/{key}")] {
        let a = send(Method::GET, &g.url(&p), &[("authorization", &auth)], "").await;
        assert_eq!(a.status, 400, "{p}");
        assert!(!String::from_utf8_lossy(&a.body).contains(&key));
    }
    assert!(g.mock.recorder.is_empty());
    // Ordinary queries pass.
    let a = send(
        Method::POST,
        &g.url("/v1/chat/completions?limit=10&q=sk_kg_docs"),
        &[("authorization", &auth)],
        CHAT,
    )
    .await;
    assert_eq!(a.status, 200);
}

// ------------------------------------------------------------------ 8. `;` in the path

#[tokio::test]
async fn path_parameters_are_refused_before_routing() {
    let g = start_gateway("").await;
    let audio_only = g.key_with_scopes(&["audio"]);
    let auth = bearer(&audio_only);
    for p in [
        "/v1/audio/..;/chat/completions",
        "/v1/audio/..%3B/chat/completions",
        "/v1/audio/..%3b/chat/completions",
        "/v1/audio/speech;x=1",
    ] {
        let a = send(Method::POST, &g.url(p), &[("authorization", &auth)], CHAT).await;
        assert_eq!(
            (a.status.as_u16(), a.error_code().as_str()),
            (400, "invalid_request"),
            "{p}"
        );
    }
    assert!(g.mock.recorder.is_empty());
}

// ------------------------------------------------------------------ 9. failed auth and proxies

#[tokio::test]
async fn bad_keys_from_an_address_never_lock_out_its_valid_keys() {
    let g = start_gateway("[limits]\nfailed_auth_per_minute = 3\n").await;
    let good = g.key();
    // An attacker on the same address keeps sending bad keys; the user keeps working.
    let mut refused_bad = 0;
    for round in 0..12 {
        let bogus = keygate::keys::token::generate("sk_kg").unwrap().plaintext;
        let a = chat(&g, &bogus, CHAT).await;
        if round >= 3 {
            assert_eq!(a.error_code(), "too_many_failed_attempts", "round {round}");
            refused_bad += 1;
        }
        // A malformed key is refused the same way, without hashing.
        if round >= 3 {
            let a = chat(&g, "sk_kg_short", CHAT).await;
            assert_eq!(a.status, 429);
        }
        assert_eq!(chat(&g, &good, CHAT).await.status, 200, "round {round}");
    }
    assert_eq!(refused_bad, 9);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_counted_logged_and_forwarded() {
    logs();
    let g = start_gateway(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n[limits]\nfailed_auth_per_minute = 2\n",
    )
    .await;
    capture_access(&g);
    let good = g.key();
    let xff = |client: &str| format!("6.6.6.6, {client}, 10.1.2.3");
    let as_client = |client: &str, key: &str| {
        let (url, auth, xff) = (g.url("/v1/chat/completions"), bearer(key), xff(client));
        async move {
            send(
                Method::POST,
                &url,
                &[("authorization", &auth), ("x-forwarded-for", &xff)],
                CHAT,
            )
            .await
        }
    };
    let a = as_client("198.51.100.7", &good).await;
    assert_eq!(a.status, 200);
    let seen = g.mock.recorder.take();
    assert_eq!(seen[0].headers["x-forwarded-for"], "198.51.100.7");
    let id = a.header("x-request-id").unwrap().to_string();
    assert!(logged(&id).await);
    let line = logs()
        .lines()
        .find(|l| l.contains(&id))
        .unwrap()
        .to_string();
    assert!(line.contains("client_addr=198.51.100.7"), "{line}");
    // The guard counts the forwarded client, not the proxy everyone shares.
    for _ in 0..3 {
        let bogus = keygate::keys::token::generate("sk_kg").unwrap().plaintext;
        as_client("198.51.100.66", &bogus).await;
    }
    let bogus = keygate::keys::token::generate("sk_kg").unwrap().plaintext;
    assert_eq!(as_client("198.51.100.66", &bogus).await.status, 429);
    let bogus = keygate::keys::token::generate("sk_kg").unwrap().plaintext;
    assert_eq!(
        as_client("198.51.100.67", &bogus).await.status,
        401,
        "another client behind the proxy"
    );
    assert_eq!(as_client("198.51.100.66", &good).await.status, 200);
    // Forwarded, when there is no X-Forwarded-For.
    let auth = bearer(&good);
    send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[
            ("authorization", &auth),
            (
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8::9]:1234\";proto=https",
            ),
        ],
        CHAT,
    )
    .await;
    let seen = g.mock.recorder.take();
    assert_eq!(
        seen.last().unwrap().headers["x-forwarded-for"],
        "2001:db8::9"
    );
}

#[tokio::test]
async fn without_trusted_proxies_forwarding_headers_are_ignored() {
    let g = start_gateway("").await;
    let key = g.key();
    let auth = bearer(&key);
    send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[
            ("authorization", &auth),
            ("x-forwarded-for", "198.51.100.7"),
        ],
        CHAT,
    )
    .await;
    assert_eq!(
        g.mock.recorder.take()[0].headers["x-forwarded-for"],
        "127.0.0.1"
    );
}

// ------------------------------------------------------------------ 14.11 Basic, 14.12 /v1

#[tokio::test]
async fn basic_auth_takes_the_key_as_user_or_password() {
    use base64::Engine;
    let g = start_gateway("").await;
    let key = g.key();
    let basic = |s: String| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    };
    let go = |auth: String| {
        let url = g.url("/v1/chat/completions");
        async move { send(Method::POST, &url, &[("authorization", &auth)], CHAT).await }
    };
    assert_eq!(
        go(basic(format!("{key}:"))).await.status,
        200,
        "curl -u KEY:"
    );
    assert_eq!(go(basic(format!(":{key}"))).await.status, 200);
    // The contract's own form: any user name, the key as the password.
    assert_eq!(go(basic(format!("user:{key}"))).await.status, 200);
    let a = go(basic(":".into())).await;
    assert_eq!(a.status, 401);
    let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("empty") && msg.contains("-u KEY:"), "{msg}");
}

#[tokio::test]
async fn a_base_url_without_v1_gets_a_hint() {
    let g = start_gateway("").await;
    let key = g.key();
    let auth = bearer(&key);
    for (m, p) in [
        (Method::POST, "/chat/completions"),
        (Method::GET, "/models"),
        (Method::POST, "/embeddings"),
    ] {
        let a = send(m.clone(), &g.url(p), &[("authorization", &auth)], CHAT).await;
        assert_eq!(
            (a.status.as_u16(), a.error_code().as_str()),
            (404, "unknown_route"),
            "{p}"
        );
        let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains(&format!("/v1{p}")) && msg.contains("`base_url`") && msg.contains("`/v1`"),
            "{msg}"
        );
    }
    let a = send(
        Method::POST,
        &g.url("/nothing/here"),
        &[("authorization", &auth)],
        CHAT,
    )
    .await;
    let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(!msg.contains("base_url"), "{msg}");
}

/// `max_tokens` is the client's number: at u64::MAX the estimate must not wrap to a few
/// tokens (which let a key with its minute spent in, and charged a quota next to nothing).
#[tokio::test]
async fn a_max_tokens_at_the_top_of_u64_reserves_the_whole_minute() {
    let g = start_gateway("").await;
    let key = g.key_with_limits(keygate::keys::record::KeyLimits {
        tokens_per_minute: Some(300),
        ..Default::default()
    });
    let huge = format!(
        r#"{{"model":"llama-3.1-8b-instruct","messages":[{{"role":"user","content":"hi"}}],"max_tokens":{}}}"#,
        u64::MAX
    );
    let a = chat(&g, &key, &huge).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.header("x-ratelimit-remaining-tokens"), Some("0"));
    // The minute is spent: the next one waits.
    let b = chat(&g, &key, &huge).await;
    assert_eq!(b.status, 429, "{:?}", b.body);
}

/// A JSON body behind a UTF-8 byte-order mark, labelled as a form: upstreams that parse JSON
/// whatever the label skip the mark, so the gateway must not read it as a form without a
/// model (which routed it by default, unreserved and without its stream's usage).
#[tokio::test]
async fn a_json_body_behind_a_byte_order_mark_labelled_as_a_form_is_read_as_json() {
    let g = start_gateway("").await;
    let key = g.key_with_limits(keygate::keys::record::KeyLimits {
        tokens_per_minute: Some(100_000),
        ..Default::default()
    });
    let mut body = b"\xEF\xBB\xBF".to_vec();
    body.extend_from_slice(
        br#"{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":5000}"#,
    );
    let a = send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[
            ("authorization", &bearer(&key)),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        body,
    )
    .await;
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.error_code(), "invalid_request");
    assert!(
        g.mock.recorder.take().is_empty(),
        "nothing reached the upstream"
    );
}

/// A request refused for its model (not on the key's allowlist, or served by no upstream)
/// names that model in its access line: the gateway read it, and it holds no key.
#[tokio::test]
async fn the_access_line_of_a_refused_model_names_it() {
    let mock = start_mock().await;
    let toml = format!(
        "[[upstream]]\nname = \"a\"\nurl = \"http://{0}\"\nmodels = [\"llama-*\"]\n\
         [[upstream]]\nname = \"b\"\nurl = \"http://{0}\"\nmodels = [\"whisper-*\"]\n",
        mock.addr
    );
    let g = start_gateway_raw(mock, &toml).await;
    capture_access(&g);
    let narrow = allowlisted(&g, &["llama-*"]);
    let wide = g.key();
    for (key, model, id, status) in [
        (&narrow, "gpt-4o-refused", "refused-model-1", 403),
        (&wide, "mistral-nowhere", "refused-model-2", 404),
    ] {
        let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
        let a = send(
            Method::POST,
            &g.url("/v1/chat/completions"),
            &[
                ("authorization", &bearer(key)),
                ("content-type", "application/json"),
                ("x-request-id", id),
            ],
            body,
        )
        .await;
        assert_eq!(a.status, status, "{:?}", a.body);
        let needle = format!("request_id={id}");
        assert!(logged(&needle).await, "no access line for {id}");
        let text = logs();
        let line = text.lines().find(|l| l.contains(&needle)).unwrap();
        assert!(line.contains(&format!(" model={model} ")), "{line}");
    }
}
