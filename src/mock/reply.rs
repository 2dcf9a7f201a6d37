//! The mock's answer bodies: model objects, deterministic embeddings, and SSE streams whose
//! events are paced as a model server paces its tokens.

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::Duration;

/// The mock's answer bodies, whole or streamed.
pub type MockBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub(super) fn model_obj(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "keygate-mock"})
}

/// A deterministic 8-dimensional unit vector from the text, in f32 as embeddings are.
pub(super) fn embed(s: &str) -> Vec<f32> {
    let h = crate::keys::token::hash_token(s);
    let v: Vec<f64> = h[..8].iter().map(|b| f64::from(*b) / 255.0 - 0.5).collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
    v.into_iter().map(|x| (x / norm) as f32).collect()
}

/// An embedding as OpenAI's `encoding_format: "base64"` sends it: little-endian f32 bytes.
pub(super) fn embedding_base64(v: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(super) fn sse(
    chat: bool,
    model: &str,
    reply: &str,
    usage: Value,
    include_usage: bool,
    interval: Duration,
) -> Response<MockBody> {
    let mut events: Vec<Value> = Vec::new();
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut v = json!({
            "id": if chat { "chatcmpl-mock" } else { "cmpl-mock" },
            "object": if chat { "chat.completion.chunk" } else { "text_completion" },
            "created": 0, "model": model, "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u.clone();
        }
        v
    };
    if chat {
        events.push(chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]), None));
    }
    let pieces: Vec<&str> = reply.split_inclusive(' ').collect();
    for p in &pieces {
        let choice = if chat {
            json!([{"index": 0, "delta": {"content": p}, "finish_reason": null}])
        } else {
            json!([{"index": 0, "text": p, "finish_reason": null}])
        };
        events.push(chunk(choice, None));
    }
    let end = if chat {
        json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    } else {
        json!([{"index": 0, "text": "", "finish_reason": "stop"}])
    };
    events.push(chunk(end, None));
    if include_usage {
        events.push(chunk(json!([]), Some(&usage)));
    }
    let mut frames: Vec<Bytes> = events
        .iter()
        .map(|e| Bytes::from(format!("data: {e}\n\n")))
        .collect();
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let stream = futures_stream(frames, interval);
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    r
}

/// Emits `frames` one by one with `interval` between them.
fn futures_stream(
    frames: Vec<Bytes>,
    interval: Duration,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for (i, f) in frames.into_iter().enumerate() {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if tx.send(Ok(Frame::data(f))).await.is_err() {
                return; // the client went away
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
