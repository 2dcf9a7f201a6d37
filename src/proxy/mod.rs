//! Stage 5 of a request: send it to the upstream that serves its model, and bring the answer
//! back as it streams.
//!
//! One connection pool per upstream (`pool`), HTTP/1.1 keep-alive with TCP_NODELAY, leased to
//! the request's own task. Time limits are split the way LLM servers fail: connect (server
//! down), first byte (queued or stuck prefill), idle between body frames (a stream that
//! stalls). A client that goes away drops the response body, which drops the upstream
//! connection and so cancels the generation. Headers are cleaned both ways (`headers`).

pub mod first_byte;
pub mod headers;
pub mod health;
pub mod idle;
pub mod pool;
pub mod request_body;
pub mod response_body;
pub mod revoke;
pub mod sending;
pub mod stream_usage;
pub mod upstream;
pub mod whole;

use crate::account::{Added, RequestRecord};
use crate::auth::Caller;
use crate::authorize::json_body::with_stream_usage;
use crate::authorize::model::Inspected;
use crate::authorize::routes::RouteMatch;
use crate::error::GatewayError;
use crate::gateway::Live;
use crate::keys::index::KeyRef;
use crate::keys::scope::Scope;
use crate::ops::metrics::UpstreamError;
use bytes::Bytes;
use first_byte::HeadLate;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use pool::Sent;
use request_body::UpBody;
use response_body::Body;
use sending::Sending;
use std::future::Future;
use std::sync::Arc;
use upstream::{upstream_request, ForwardInfo, Upstream};
use whole::json;

/// The upstream for a request on a forward route: the one serving its model where the route
/// carries one, else the first.
pub fn choose<'l>(
    live: &'l Live,
    route: RouteMatch,
    model: Option<&str>,
) -> Result<&'l Arc<Upstream>, GatewayError> {
    match model {
        Some(m) if route.has_model => live
            .upstream_for(m)
            .ok_or_else(|| GatewayError::ModelNotFound(m.to_string())),
        _ => live
            .default_upstream()
            .ok_or_else(|| GatewayError::Internal("no upstream configured".into())),
    }
}

/// Forwards a request on a forward route with its body as the model stage left it. Exact
/// accounting needs a stream's usage too: for a streamed chat or completion whose client did
/// not ask for it, the upstream is asked for it, and the extra chunk is hidden from the client.
#[allow(clippy::too_many_arguments)]
pub fn forward<'a>(
    upstream: &'a Upstream,
    key: &'a KeyRef,
    route: RouteMatch,
    parts: http::request::Parts,
    inspected: Inspected,
    caller: &Caller,
    prefix: &str,
    record: &'a mut RequestRecord,
) -> Result<Sending<'a, impl Future<Output = Result<Sent, HeadLate>> + 'a>, GatewayError> {
    let Inspected { body, facts, .. } = inspected;
    let mut body = body;
    let completion = matches!(route.scope, Scope::Chat | Scope::Completions);
    let mut strip_usage = false;
    if completion && facts.as_ref().is_some_and(|f| f.stream && !f.wants_usage) {
        if let UpBody::Full(Some(bytes)) = &body {
            body = UpBody::full(with_stream_usage(bytes)?);
            strip_usage = true;
        }
    }
    let sending = send(upstream, key, parts, body, caller, prefix, record)?;
    Ok(sending.stripping_usage(strip_usage))
}

/// Sends to `upstream`; the future it returns ends with the answer, streaming back. A revoke
/// of the key ends the wait for the head (401 `revoked_api_key`; dropping the send closes the
/// upstream connection) and the answer's body. Fails at once on a request the upstream's URL
/// cannot carry. `prefix` is the gateway's key prefix: no header holding a key goes upstream.
pub fn send<'a>(
    upstream: &'a Upstream,
    key: &'a KeyRef,
    parts: http::request::Parts,
    body: UpBody,
    caller: &Caller,
    prefix: &str,
    record: &'a mut RequestRecord,
) -> Result<Sending<'a, impl Future<Output = Result<Sent, HeadLate>> + 'a>, GatewayError> {
    let info = ForwardInfo {
        forwarded_for: &caller.forwarded_for,
        https: caller.https,
        credential: caller.credential(),
        prefix,
        key_id: &key.id,
        request_id: &record.request_id,
    };
    let progress = body.progress();
    let up = upstream_request(upstream, parts, body, &info)?;
    record.upstream = Some(Arc::clone(&upstream.name));
    record.upstream_series = Some(Arc::clone(&upstream.series));
    // One clock read: the request's sending time, its first-byte deadline, and the age of
    // the idle connection it goes on.
    let sent = std::time::Instant::now();
    Ok(Sending::new(
        upstream,
        key.state(),
        record,
        sent,
        upstream.send(up, sent, progress),
    ))
}

/// `GET /v1/models`: the union of the upstreams' models that this key may use.
pub async fn list_models(
    live: &Live,
    key: &KeyRef,
    caller: &Caller,
    record: &mut RequestRecord,
) -> Result<Response<Body>, GatewayError> {
    let mut data: Vec<serde_json::Value> = Vec::new();
    let mut answered = 0;
    for u in live.upstreams.iter() {
        let (parts, ()) = Request::get("/v1/models")
            .body(())
            .map_err(|e| GatewayError::Internal(e.to_string()))?
            .into_parts();
        let empty = UpBody::full(Bytes::new());
        let prefix = &live.config.keys.prefix;
        let sent = match send(u, key, parts, empty, caller, prefix, record) {
            Ok(sending) => sending.await,
            Err(e) => Err(e),
        };
        let resp = match sent {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tracing::warn!(upstream = %u.name, status = %r.status(), "upstream did not list its models");
                continue;
            }
            Err(e) => {
                tracing::warn!(upstream = %u.name, error = %e, "upstream did not list its models");
                match e {
                    GatewayError::UpstreamUnavailable(_) => {
                        u.series.error(UpstreamError::Unavailable)
                    }
                    GatewayError::UpstreamTimeout(_) => u.series.error(UpstreamError::Timeout),
                    _ => {}
                }
                continue;
            }
        };
        let collected = tokio::time::timeout(
            u.config.first_byte_timeout,
            http_body_util::Limited::new(resp.into_body(), 4 << 20).collect(),
        )
        .await;
        let Ok(Ok(bytes)) = collected.map(|r| r.map(|c| c.to_bytes())) else {
            continue;
        };
        let Ok(list) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        answered += 1;
        for m in list["data"].as_array().into_iter().flatten() {
            let Some(id) = m["id"].as_str() else { continue };
            if u.serves(id) && key.may_use_model(id) && !data.iter().any(|d| d["id"] == id) {
                data.push(m.clone());
            }
        }
    }
    record.upstream = None;
    record.upstream_series = None;
    record.upstream_latency = None;
    record.added = Added::All;
    if answered == 0 {
        let name = live
            .default_upstream()
            .map_or_else(String::new, |u| u.config.name.clone());
        return Err(GatewayError::UpstreamUnavailable(name));
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "object": "list", "data": data }),
    ))
}
