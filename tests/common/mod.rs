//! Shared test harness: a real gateway on 127.0.0.1:0 in front of the project's mock upstream,
//! with a key file in a temporary directory, and a small HTTP client.
#![allow(dead_code)]

pub mod binary;
pub mod cli;
pub mod locked_dir;
pub mod raw;
pub mod raw_upstream;
pub mod receiver;
pub mod redis;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keygate::config::Config;
use keygate::gateway::Gateway;
use keygate::keys::record::NewKey;
use keygate::keys::store::KeyStore;
use keygate::mock::{MockOptions, Recorder};
use keygate::time::Timestamp;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct Mock {
    pub addr: SocketAddr,
    pub recorder: Recorder,
    _stop: oneshot::Sender<()>,
}

pub async fn start_mock() -> Mock {
    start_mock_with(MockOptions::default()).await
}

pub async fn start_mock_with(opts: MockOptions) -> Mock {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorder = Recorder::enabled();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(keygate::mock::serve(
        listener,
        opts,
        recorder.clone(),
        async {
            let _ = rx.await;
        },
    ));
    Mock {
        addr,
        recorder,
        _stop: tx,
    }
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub gw: Arc<Gateway>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub mock: Mock,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

/// A gateway whose only upstream is a fresh mock. `extra` is appended to gateway.toml.
pub async fn start_gateway(extra: &str) -> TestGateway {
    let mock = start_mock().await;
    start_gateway_with_mock(mock, extra).await
}

pub async fn start_gateway_with_mock(mock: Mock, extra: &str) -> TestGateway {
    let upstream = format!(
        "[[upstream]]\nname = \"mock\"\nurl = \"http://{}\"\n",
        mock.addr
    );
    start_gateway_raw(mock, &format!("{upstream}{extra}")).await
}

/// A gateway with exactly `toml` as its config (plus listen and key file set by the harness).
pub async fn start_gateway_raw(mock: Mock, toml: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("gateway.toml");
    let has_keys_section = toml.contains("[keys]");
    let text = if has_keys_section {
        toml.to_string()
    } else {
        format!("[keys]\nfile = \"keys.json\"\npoll_interval = \"200ms\"\n{toml}")
    };
    std::fs::write(&config_path, &text).unwrap();
    let config = Config::load(&config_path).unwrap();
    // An empty, valid key file so the gateway is ready.
    if !config.keys.file.exists() {
        KeyStore::new(&config.keys.file).update(|_| Ok(())).unwrap();
    }
    let gw = Gateway::new(config.clone());
    let g2 = Arc::clone(&gw);
    // As `serve` watches it: a change this gateway made and loaded itself is not loaded again.
    let watcher = keygate::watch::spawn(
        config.keys.file.clone(),
        config.keys.poll_interval,
        move || g2.reload_keys_if_changed().is_ok(),
    );
    gw.reload_keys().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let server = tokio::spawn(keygate::server::run(listener, Arc::clone(&gw), async {
        let _ = rx.await;
    }));
    TestGateway {
        addr,
        gw,
        dir,
        config_path,
        mock,
        stop: Some(tx),
        server: Some(server),
        watchers: vec![watcher],
    }
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn store(&self) -> KeyStore {
        self.gw.store()
    }

    /// Creates a key in the file, reloads, and returns (id, plaintext).
    pub fn create_key(&self, new: NewKey) -> (String, String) {
        let prefix = self.gw.config().keys.prefix.clone();
        let (rec, tok) = self
            .store()
            .update(|f| f.create(new, &prefix, Timestamp::now()))
            .unwrap();
        self.gw.reload_keys().unwrap();
        (rec.id, tok.plaintext)
    }

    /// A key with the default (inference) scopes.
    pub fn key(&self) -> String {
        self.create_key(NewKey {
            name: "test".into(),
            ..Default::default()
        })
        .1
    }

    /// A key with default scopes and these per-key limits.
    pub fn key_with_limits(&self, limits: keygate::keys::record::KeyLimits) -> String {
        self.create_key(NewKey {
            name: "limited".into(),
            limits,
            ..Default::default()
        })
        .1
    }

    pub fn key_with_scopes(&self, scopes: &[&str]) -> String {
        self.create_key(NewKey {
            name: "test".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .1
    }

    /// Stops accepting, drains, and waits for the server to return.
    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.server.take() {
            s.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts the reference: Errors error shape and returns the code.
    pub fn error_code(&self) -> String {
        assert_eq!(
            self.headers["content-type"], "application/json",
            "errors are JSON"
        );
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string(), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e["param"].is_null() || e["param"].is_string(), "{v}");
        e["code"].as_str().unwrap_or_default().to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A management API call with `key`: `body` as JSON (`null`: no body).
pub async fn api(
    g: &TestGateway,
    key: &str,
    method: Method,
    path: &str,
    body: serde_json::Value,
) -> Answer {
    let auth = bearer(key);
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    send(
        method,
        &g.url(path),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// Sends one request and reads the whole answer.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    try_send(method, url, headers, body).await.unwrap()
}

/// As `send`, with the error when the connection broke before the whole answer came.
pub async fn try_send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Answer, String> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client()
        .request(b.body(Full::new(body.into())).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

pub const CHAT: &str =
    r#"{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"hello there"}]}"#;

/// POST a chat completion with `key`.
pub async fn chat(g: &TestGateway, key: &str, body: &str) -> Answer {
    let auth = bearer(key);
    send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

/// The status of one chat request with `key`, or 0 when the answer was cut short: a request
/// that was let through just before its key's revoke applied is ended mid-answer by design, so
/// a test polling for the revoke's 401 treats a cut answer as "not yet" and asks again.
pub async fn chat_status(url: &str, key: &str) -> u16 {
    let auth = bearer(key);
    try_send(
        Method::POST,
        url,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        CHAT,
    )
    .await
    .map_or(0, |a| a.status.as_u16())
}

/// Polls `cond` every 20 ms for up to `limit`; returns whether it became true.
pub async fn eventually<F, Fut>(limit: std::time::Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

/// `keygate --config CFG keys create --name NAME --json` through the binary: (key, id).
pub fn cli_create_key(cfg: &std::path::Path, name: &str) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("--config")
        .arg(cfg)
        .args(["keys", "create", "--name", name, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["key"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &std::process::Child) {
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
}

/// Sends one chat completion per URL, all at once, with `key`; returns the statuses.
pub async fn parallel_chat_statuses(urls: Vec<String>, key: &str) -> Vec<u16> {
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let auth = bearer(key);
            tokio::spawn(async move {
                send(Method::POST, &url, &[("authorization", &auth)], CHAT)
                    .await
                    .status
                    .as_u16()
            })
        })
        .collect();
    let mut codes = Vec::with_capacity(tasks.len());
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    codes
}

/// Serves `/metrics` for `g` on a loopback port of its own, as `[metrics] listen` does for
/// the binary; returns its address.
pub async fn serve_metrics(g: &TestGateway) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(keygate::ops::metrics::scrape::serve(
        listener,
        g.gw.clone(),
        std::future::pending(),
    ));
    addr
}
