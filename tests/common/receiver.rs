//! A webhook receiver on 127.0.0.1:0 for notification tests: it records every request (path,
//! headers, body, the status it answered) and answers 200, or what a test plans (a 503, a
//! 429 with `Retry-After`, a 400), plain or over TLS.
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Status(u16),
    /// A status with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status it was answered with.
    pub answered: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// `event` of a JSON notification.
    pub fn event(&self) -> String {
        self.json()["event"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn key_id(&self) -> String {
        self.json()["key"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

#[derive(Default)]
struct State {
    got: Vec<Received>,
    plan: VecDeque<Reply>,
    /// When nothing is planned.
    otherwise: Option<Reply>,
    /// Every answer says `Connection: close` (as an HTTP/1.0 server's does): the connection
    /// ends right after it.
    closing: bool,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    pub tls: bool,
}

impl Receiver {
    /// A plain HTTP receiver.
    pub async fn start() -> Receiver {
        Receiver::serve(None).await
    }

    /// An HTTPS receiver with this server configuration.
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Receiver {
        Receiver::serve(Some(config)).await
    }

    async fn serve(tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let r = Receiver {
            addr,
            state: Arc::clone(&state),
            tls: tls.is_some(),
        };
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&state);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let state = Arc::clone(&state);
                        async move {
                            let path = req.uri().to_string();
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await?.to_bytes();
                            let mut s = state.lock().unwrap();
                            let reply = s
                                .plan
                                .pop_front()
                                .or(s.otherwise)
                                .unwrap_or(Reply::Status(200));
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                            let status = match reply {
                                Reply::Status(c) => c,
                                Reply::RetryAfter(c, secs) => {
                                    resp.headers_mut()
                                        .insert("retry-after", secs.to_string().parse().unwrap());
                                    c
                                }
                            };
                            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                            if s.closing {
                                resp.headers_mut()
                                    .insert("connection", "close".parse().unwrap());
                            }
                            s.got.push(Received {
                                path,
                                headers,
                                body,
                                answered: status,
                            });
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(a) => {
                            if let Ok(s) = a.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        r
    }

    /// `http://ADDR/hook` (or https).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/hook/T0/SECRETPATH", self.addr)
    }

    /// The next requests are answered so, in order.
    pub fn plan(&self, replies: &[Reply]) {
        self.state
            .lock()
            .unwrap()
            .plan
            .extend(replies.iter().copied());
    }

    /// Requests nothing was planned for are answered so (`None`: 200).
    pub fn otherwise(&self, reply: Option<Reply>) {
        self.state.lock().unwrap().otherwise = reply;
    }

    /// Answers with `Connection: close` from now on (`true`), or keeps connections open.
    pub fn closing(&self, on: bool) {
        self.state.lock().unwrap().closing = on;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().got.clone()
    }

    /// The requests answered 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }

    /// The delivered (event, key id) pairs, in order.
    pub fn events(&self) -> Vec<(String, String)> {
        self.delivered()
            .iter()
            .map(|r| (r.event(), r.key_id()))
            .collect()
    }

    /// How many were delivered about `key` with `event`.
    pub fn count(&self, event: &str, key: &str) -> usize {
        self.events()
            .iter()
            .filter(|(e, k)| e == event && k == key)
            .count()
    }
}
