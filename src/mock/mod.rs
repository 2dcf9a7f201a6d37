//! A small OpenAI-compatible upstream: what `keygate demo` forwards to, and what the tests and
//! benchmarks measure against. It answers like vLLM does (chat with and without streaming,
//! completions, embeddings as floats or base64, models, tokenize, `/health`), and records every request it gets so tests can
//! check exactly what crossed the gateway. It is one cohesive thing: a
//! whole small server (its answers' bodies are in `reply.rs`).
//!
//! Test hooks are request headers, which pass through the gateway untouched:
//! `x-mock-status` (answer with that status), `x-mock-delay-ms` (wait before the head),
//! `x-mock-interval-ms` (wait between SSE events), `x-mock-reply-bytes` (pad the reply),
//! `x-mock-content-encoding` (label the answer with that encoding).

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

mod last_reply;
mod reply;
use last_reply::LastReply;
pub use reply::MockBody;
use reply::{embed, embedding_base64, model_obj, sse};

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub struct MockOptions {
    pub models: Vec<String>,
    /// Wait between SSE events unless the request says otherwise.
    pub sse_interval: Duration,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            models: vec![
                "llama-3.1-8b-instruct".into(),
                "qwen2.5-7b-instruct".into(),
                "bge-small-en".into(),
            ],
            sse_interval: Duration::from_millis(0),
        }
    }
}

/// Keeps the last requests the mock received, when enabled (tests); off by default so that
/// benchmarks measure forwarding, not recording.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Option<Arc<Mutex<std::collections::VecDeque<Recorded>>>>);

impl Recorder {
    pub fn enabled() -> Recorder {
        Recorder(Some(Arc::default()))
    }

    pub fn take(&self) -> Vec<Recorded> {
        self.0.as_ref().map_or_else(Vec::new, |m| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
                .collect()
        })
    }

    pub fn len(&self) -> usize {
        self.0
            .as_ref()
            .map_or(0, |m| m.lock().unwrap_or_else(|e| e.into_inner()).len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, r: impl FnOnce() -> Recorded) {
        if let Some(m) = &self.0 {
            let mut v = m.lock().unwrap_or_else(|e| e.into_inner());
            if v.len() >= 10_000 {
                v.pop_front();
            }
            v.push_back(r());
        }
    }
}

/// Serves the mock on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    opts: MockOptions,
    recorder: Recorder,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared {
        opts,
        last: LastReply::default(),
    });
    tokio::pin!(shutdown);
    let mut acceptor = crate::server::accept::Acceptor::new("mock");
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = acceptor.accept(&listener) => accepted,
        };
        let _ = stream.set_nodelay(true);
        let (shared, recorder) = (Arc::clone(&shared), recorder.clone());
        let freed = acceptor.freed();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (shared, recorder) = (Arc::clone(&shared), recorder.clone());
                async move {
                    // A label only, the body stays plain: what a compressing proxy in front
                    // of an upstream would claim.
                    let encoding = req.headers().get("x-mock-content-encoding").cloned();
                    let mut resp = answer(req, &shared.opts, &shared.last, &recorder).await;
                    if let Some(e) = encoding {
                        resp.headers_mut().insert(http::header::CONTENT_ENCODING, e);
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            freed.notify_one();
        });
    }
}

/// What every connection of one mock shares.
struct Shared {
    opts: MockOptions,
    last: LastReply,
}

fn header_num(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<MockBody> {
    let mut r = Response::new(http_body_util::Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn json_resp(status: StatusCode, v: &Value) -> Response<MockBody> {
    full(status, "application/json", v.to_string())
}

fn error(status: StatusCode, msg: &str) -> Response<MockBody> {
    json_resp(
        status,
        &json!({"error": {"message": msg, "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

fn words(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(a) => a.iter().map(words).sum(),
        Value::Object(o) => o.get("content").map_or(0, words),
        _ => 0,
    }
}

fn last_user_text(body: &Value) -> String {
    let from_messages = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str());
    from_messages
        .or_else(|| body["prompt"].as_str())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    opts: &MockOptions,
    last: &LastReply,
    rec: &Recorder,
) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::BAD_REQUEST, "body read failed"),
    };
    rec.push(|| Recorded {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let h = &parts.headers;
    if let Some(ms) = header_num(h, "x-mock-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) =
        header_num(h, "x-mock-status").and_then(|c| StatusCode::from_u16(c as u16).ok())
    {
        return error(code, "mock failure on request");
    }
    let interval =
        header_num(h, "x-mock-interval-ms").map_or(opts.sse_interval, Duration::from_millis);
    let pad = header_num(h, "x-mock-reply-bytes").unwrap_or(0) as usize;
    let path = parts.uri.path();
    let chat = path == "/v1/chat/completions";
    // The same request as the last whole, unpadded completion's gets its reply (`last_reply`).
    let keep = parts.method == Method::POST && (chat || path == "/v1/completions") && pad == 0;
    if keep {
        if let Some(reply) = last.get(chat, &body) {
            return full(StatusCode::OK, "application/json", reply);
        }
    }
    let req_json: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return error(StatusCode::BAD_REQUEST, "body is not JSON"),
        }
    };
    let model = req_json["model"].as_str().unwrap_or("").to_string();
    // HEAD is answered as GET; hyper leaves the body out.
    let method = if parts.method == Method::HEAD {
        &Method::GET
    } else {
        &parts.method
    };
    match (method, path) {
        // vLLM's and TGI's liveness path: the example manifests' `health = "/health"`.
        (&Method::GET, "/health") => json_resp(StatusCode::OK, &json!({})),
        (&Method::GET, "/v1/models") => {
            let data: Vec<Value> = opts.models.iter().map(|m| model_obj(m)).collect();
            json_resp(StatusCode::OK, &json!({"object": "list", "data": data}))
        }
        (&Method::GET, p) if p.starts_with("/v1/models/") => {
            let id = &p["/v1/models/".len()..];
            if opts.models.iter().any(|m| m == id) {
                json_resp(StatusCode::OK, &model_obj(id))
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    &format!("The model `{id}` does not exist."),
                )
            }
        }
        (&Method::POST, "/v1/chat/completions") | (&Method::POST, "/v1/completions") => {
            let mut reply = format!(
                "Hello from the keygate mock. You said: {}",
                last_user_text(&req_json)
            );
            if pad > reply.len() {
                reply.extend(std::iter::repeat_n('x', pad - reply.len()));
            }
            let prompt_tokens = if chat {
                words(&req_json["messages"])
            } else {
                words(&req_json["prompt"])
            };
            let completion_tokens = reply.split_whitespace().count() as u64;
            let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
            if req_json["stream"] == true {
                let include_usage = req_json["stream_options"]["include_usage"] == true;
                return sse(chat, &model, &reply, usage, include_usage, interval);
            }
            let whole = if chat {
                json!({
                    "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                    "usage": usage,
                })
            } else {
                json!({
                    "id": "cmpl-mock", "object": "text_completion", "created": 0, "model": model,
                    "choices": [{"index": 0, "text": reply, "finish_reason": "stop"}],
                    "usage": usage,
                })
            };
            let whole = Bytes::from(whole.to_string());
            if keep {
                last.put(chat, &body, &whole);
            }
            full(StatusCode::OK, "application/json", whole)
        }
        (&Method::POST, "/v1/embeddings") => {
            let inputs: Vec<String> = match &req_json["input"] {
                Value::String(s) => vec![s.clone()],
                Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_str().unwrap_or("").to_string())
                    .collect(),
                _ => return error(StatusCode::BAD_REQUEST, "`input` is required"),
            };
            // As OpenAI does: floats by default, or with `encoding_format: "base64"` the
            // little-endian f32 bytes in base64 (what the Node SDK asks for by default).
            let base64 = match &req_json["encoding_format"] {
                Value::Null => false,
                Value::String(f) if f == "float" => false,
                Value::String(f) if f == "base64" => true,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "`encoding_format` must be \"float\" or \"base64\"",
                    )
                }
            };
            let data: Vec<Value> = inputs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let v = embed(s);
                    let embedding = if base64 {
                        Value::String(embedding_base64(&v))
                    } else {
                        json!(v)
                    };
                    json!({"object": "embedding", "index": i, "embedding": embedding})
                })
                .collect();
            let n = inputs
                .iter()
                .map(|s| s.split_whitespace().count() as u64)
                .sum::<u64>();
            json_resp(
                StatusCode::OK,
                &json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": n, "total_tokens": n}}),
            )
        }
        (&Method::POST, "/tokenize") => {
            let text = req_json["prompt"].as_str().unwrap_or("");
            let tokens: Vec<u64> = text.split_whitespace().map(|w| w.len() as u64).collect();
            json_resp(
                StatusCode::OK,
                &json!({"count": tokens.len(), "max_model_len": 8192, "tokens": tokens}),
            )
        }
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("mock has no route {} {path}", parts.method),
        ),
    }
}
