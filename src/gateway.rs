//! One request, start to finish, in the order of the stages:
//! listener (`server`) → authenticate → authorize → limit → forward → account.
//!
//! `handle` never fails: every refusal is a `GatewayError` turned into its OpenAI-shaped
//! answer in one place (`error.rs`), and every answer carries `x-request-id`, plus the
//! `x-ratelimit-*` headers once the caller is authenticated.

use crate::account::Finish;
use crate::authenticate::{authenticate, credential};
use crate::authorize::{body_facts, is_normal_path, BodyError, Handler, RouteMatch};
use crate::body::{Body, UpBody};
use crate::error::GatewayError;
use crate::forward::{upstream_request, ForwardInfo};
use crate::index::KeyRef;
use crate::limit::RateInfo;
use crate::state::{Gateway, Live};
use crate::time::{OpenAiDuration, Timestamp};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// An authenticated caller: its connection, and the credential it presented, kept only so
/// the forward stage can make sure no copy of it goes upstream. Never logged.
pub struct Caller {
    pub conn: Conn,
    credential: String,
}

/// Connection facts the listener knows.
#[derive(Debug, Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    pub https: bool,
    /// The peer's address as `x-forwarded-for` carries it: formatted once per connection.
    pub forwarded_for: HeaderValue,
}

impl Conn {
    pub fn new(peer: SocketAddr, https: bool) -> Conn {
        let forwarded_for = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Conn {
            peer,
            https,
            forwarded_for,
        }
    }
}

/// Answers one request.
pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>, conn: Conn) -> Response<Body> {
    let request_id = req
        .headers()
        .get(crate::headers::X_REQUEST_ID)
        .filter(|v| is_valid_request_id(v))
        .cloned()
        .unwrap_or_else(new_request_id);
    let mut finish = Box::new(Finish::new(request_id.clone(), req.method().clone()));
    finish.gateway = Some(Arc::clone(&gw));
    finish.client_addr = Some(conn.peer.ip());
    finish.path = req.uri().path_and_query().cloned();
    finish.version = req.version();
    finish.user_agent = req.headers().get(header::USER_AGENT).cloned();
    let mut limits = LimitState::default();
    let mut resp = match pipeline(&gw, req, conn, &mut finish, &mut limits).await {
        Ok(r) => r,
        Err(e) => {
            finish.error_code = Some(e.code());
            e.to_response()
        }
    };
    finish.status = resp.status().as_u16();
    let h = resp.headers_mut();
    h.insert(crate::headers::X_REQUEST_ID, request_id);
    if let Some(r) = limits.rate {
        set_rate_headers(h, &r);
    }
    if let Some(t) = limits.tokens {
        h.insert(crate::headers::LIMIT_TOKENS, HeaderValue::from(t.limit));
        h.insert(
            crate::headers::REMAINING_TOKENS,
            HeaderValue::from(t.remaining),
        );
        if let Some(v) = OpenAiDuration(t.reset).header_value() {
            h.insert(crate::headers::RESET_TOKENS, v);
        }
    }
    resp.body_mut().set_finish(finish);
    resp
}

/// The limit state of an authenticated request, reported in `x-ratelimit-*` headers.
#[derive(Default)]
struct LimitState {
    rate: Option<RateInfo>,
    tokens: Option<crate::limit::TokenInfo>,
}

fn set_rate_headers(h: &mut http::HeaderMap, r: &RateInfo) {
    h.insert(crate::headers::LIMIT_REQUESTS, HeaderValue::from(r.limit));
    h.insert(
        crate::headers::REMAINING_REQUESTS,
        HeaderValue::from(r.remaining),
    );
    if let Some(v) = OpenAiDuration(r.reset).header_value() {
        h.insert(crate::headers::RESET_REQUESTS, v);
    }
}

fn is_valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

fn new_request_id() -> HeaderValue {
    static SEED: LazyLock<u64> = LazyLock::new(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b)
    });
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // `req_` + 16 hex of a per-process seed + 8 hex of a counter, without formatting machinery.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 28];
    id[..4].copy_from_slice(b"req_");
    for (i, shift) in (0..16).rev().enumerate() {
        id[4 + i] = HEX[((*SEED >> (shift * 4)) & 0xf) as usize];
    }
    for (i, shift) in (0..8).rev().enumerate() {
        id[20 + i] = HEX[((n >> (shift * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn pipeline(
    gw: &Arc<Gateway>,
    req: Request<Incoming>,
    conn: Conn,
    finish: &mut Finish,
    limits: &mut LimitState,
) -> Result<Response<Body>, GatewayError> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/healthz") => {
            finish.probe = true;
            return Ok(text(StatusCode::OK, "ok\n"));
        }
        (&Method::GET, "/readyz") => {
            finish.probe = true;
            return match gw.not_ready() {
                None => Ok(text(StatusCode::OK, "ready\n")),
                Some(why) => Err(GatewayError::Unready(why)),
            };
        }
        (&Method::GET, p) if p.starts_with("/console") => {
            if let Some(r) = crate::console::asset(p) {
                finish.probe = true;
                return Ok(r);
            }
        }
        _ => {}
    }
    if !matches!(
        *req.method(),
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
    ) {
        // CONNECT would become a tunnel upstream and TRACE echoes headers: neither is an API.
        return Err(GatewayError::UnknownRoute(
            req.method().clone(),
            path.to_string(),
        ));
    }
    if !is_normal_path(path) {
        return Err(GatewayError::InvalidRequest(
            "The request path is not in normal form (no `..`, `//` or encoded separators).".into(),
        ));
    }
    let live = gw.live();
    let route = live
        .config
        .routes
        .resolve(req.method(), path)
        .ok_or_else(|| GatewayError::UnknownRoute(req.method().clone(), path.to_string()))?;
    finish.route = route.scope.name();
    let index = live.keys.as_ref().ok_or(GatewayError::NotReady)?;
    finish.capacity = Some(gw.capacity.acquire()?);

    // Authenticate.
    let now = Timestamp::now();
    let prefix = &live.config.keys.prefix;
    let (key, caller) = {
        let cred = credential(req.headers(), req.uri().query(), prefix)?
            .ok_or(GatewayError::MissingKey)?;
        let key = authenticate(index, &cred, prefix, conn.peer.ip(), &gw.failed_auth, now)?;
        let caller = Caller {
            conn,
            credential: cred.as_str().to_owned(),
        };
        (key, caller)
    };
    finish.key = Some(key.clone());
    key.state().usage.touch(now);

    // Authorize and limit. The rate cell is taken first so that every authenticated answer,
    // a refusal included, reports the key's real rate state.
    let cluster = gw.cluster.as_ref();
    let info = crate::limit::check_rate(cluster, &key).await?;
    limits.rate = Some(info);
    if !key.scopes.contains(route.scope) {
        return Err(GatewayError::MissingScope(route.scope));
    }
    info.into_result()?;
    finish.slot = Some(crate::limit::acquire_slot(cluster, &key).await?);

    match route.handler {
        Handler::Forward => proxy(&live, cluster, &key, route, req, &caller, finish, limits).await,
        Handler::RetrieveModel => {
            let model = path["/v1/models/".len()..].to_string();
            if !key.may_use_model(&model) {
                return Err(GatewayError::ModelNotAllowed(model));
            }
            let upstream = live
                .upstream_for(&model)
                .ok_or_else(|| GatewayError::ModelNotFound(model.clone()))?;
            finish.model = Some(model);
            let upstream = Arc::clone(upstream);
            send(
                &upstream,
                &key,
                req,
                UpBody::full(Bytes::new()),
                &caller,
                finish,
            )
            .await
        }
        Handler::ListModels => list_models(&live, &key, &caller, finish).await,
        Handler::Admin => crate::admin::handle(gw, &live, &key, req, finish).await,
        Handler::Usage => Ok(crate::admin::usage(&live)),
    }
}

/// Reads a whole request body, bounded in size, in time between frames, and in total time.
async fn read_body(
    body: Incoming,
    limit: u64,
    idle: Duration,
    size_hint: Option<u64>,
) -> Result<Bytes, GatewayError> {
    tokio::time::timeout(idle, read_body_frames(body, limit, idle, size_hint))
        .await
        .map_err(|_| {
            GatewayError::InvalidRequest("The request body did not arrive in time.".into())
        })?
}

async fn read_body_frames(
    mut body: Incoming,
    limit: u64,
    idle: Duration,
    size_hint: Option<u64>,
) -> Result<Bytes, GatewayError> {
    let mut buf = BytesMut::with_capacity(size_hint.unwrap_or(0).min(limit) as usize);
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| {
                GatewayError::InvalidRequest(
                    "The request body stopped arriving before it was complete.".into(),
                )
            })?;
        match frame {
            None => return Ok(buf.freeze()),
            Some(Err(e)) => {
                return Err(GatewayError::InvalidRequest(format!(
                    "The request body could not be read: {e}."
                )))
            }
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    if buf.len() as u64 + d.len() as u64 > limit {
                        return Err(GatewayError::TooLarge(limit));
                    }
                    buf.extend_from_slice(&d);
                }
            }
        }
    }
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Forwards an inference request: checks the model when the key or routing needs it, and
/// reserves tokens when the key has a token limit.
#[allow(clippy::too_many_arguments)]
async fn proxy(
    live: &Live,
    cluster: Option<&Arc<crate::cluster::Cluster>>,
    key: &KeyRef,
    route: RouteMatch,
    req: Request<Incoming>,
    caller: &Caller,
    finish: &mut Finish,
    limits: &mut LimitState,
) -> Result<Response<Body>, GatewayError> {
    let server = &live.config.server;
    let (parts, body) = req.into_parts();
    let declared = content_length(&parts.headers);
    if declared.is_some_and(|n| n > server.max_body_bytes) {
        return Err(GatewayError::TooLarge(server.max_body_bytes));
    }
    let needs_body = route.has_model
        && (key.models.is_some() || live.upstreams.len() > 1 || key.tokens_per_minute().is_some());
    let mut strip_usage = false;
    let (upstream, upbody) = if needs_body {
        let mut bytes = read_body(
            body,
            server.max_body_bytes,
            server.body_read_timeout,
            declared,
        )
        .await?;
        finish.bytes_received = bytes.len() as u64;
        let facts = match body_facts(&bytes) {
            Ok(f) => Some(f.summary()),
            Err(BodyError::NoModel) if key.models.is_none() => None,
            Err(e) => return Err(GatewayError::InvalidRequest(e.to_string())),
        };
        let upstream = match &facts {
            Some(f) => {
                if !key.may_use_model(&f.model) {
                    return Err(GatewayError::ModelNotAllowed(f.model.clone()));
                }
                let u = live
                    .upstream_for(&f.model)
                    .ok_or_else(|| GatewayError::ModelNotFound(f.model.clone()))?;
                finish.model = Some(f.model.clone());
                u
            }
            None => live
                .default_upstream()
                .ok_or_else(|| GatewayError::Internal("no upstream configured".into()))?,
        };
        if key.tokens_per_minute().is_some() {
            let budget = facts
                .as_ref()
                .and_then(|f| f.completion_budget)
                .unwrap_or(live.config.limits.estimated_completion_tokens);
            let estimate = budget + bytes.len() as u64 / 4;
            if let Some((info, charge)) =
                crate::limit::reserve_tokens(cluster, key, estimate).await?
            {
                limits.tokens = Some(info);
                info.into_result()?;
                finish.token_charge = Some(charge);
            }
        }
        // Exact accounting needs a stream's usage too: ask the upstream for it, and hide the
        // extra chunk from a client that did not ask for it.
        let completion = matches!(
            route.scope,
            crate::scope::Scope::Chat | crate::scope::Scope::Completions
        );
        if completion && facts.as_ref().is_some_and(|f| f.stream && !f.wants_usage) {
            if let Some(rewritten) = crate::authorize::with_stream_usage(&bytes) {
                bytes = rewritten;
                strip_usage = true;
            }
        }
        (Arc::clone(upstream), UpBody::full(bytes))
    } else {
        let u = live
            .default_upstream()
            .ok_or_else(|| GatewayError::Internal("no upstream configured".into()))?;
        let upbody = UpBody::stream(body, server.body_read_timeout, server.max_body_bytes);
        finish.received_counter = upbody.counter();
        (Arc::clone(u), upbody)
    };
    let req = Request::from_parts(parts, ());
    let mut resp = send(&upstream, key, req, upbody, caller, finish).await?;
    if strip_usage {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        resp.body_mut().strip_usage_chunk();
    }
    Ok(resp)
}

/// Sends to `upstream` and streams the answer back.
async fn send<B>(
    upstream: &crate::forward::Upstream,
    key: &crate::index::KeyEntry,
    req: Request<B>,
    body: UpBody,
    caller: &Caller,
    finish: &mut Finish,
) -> Result<Response<Body>, GatewayError> {
    let (parts, _) = req.into_parts();
    let info = ForwardInfo {
        forwarded_for: &caller.conn.forwarded_for,
        https: caller.conn.https,
        credential: &caller.credential,
        key_id: &key.id,
        request_id: &finish.request_id,
    };
    let up = upstream_request(upstream, parts, body, &info)?;
    finish.upstream = Some(Arc::clone(&upstream.name));
    finish.upstream_series = Some(Arc::clone(&upstream.series));
    let sent = Instant::now();
    let before = sent - finish.started;
    let (resp, lease) = upstream.send(up).await?;
    let upstream_latency = sent.elapsed();
    finish.upstream_latency = Some(upstream_latency);
    let (mut parts, incoming) = resp.into_parts();
    crate::headers::sanitize_response(&mut parts.headers);
    let body = Body::upstream(incoming, lease, upstream.config.idle_timeout, true);
    finish.added_latency = Some(before + (sent.elapsed() - upstream_latency));
    Ok(Response::from_parts(parts, body))
}

/// `GET /v1/models`: the union of the upstreams' models that this key may use.
async fn list_models(
    live: &Live,
    key: &crate::index::KeyEntry,
    caller: &Caller,
    finish: &mut Finish,
) -> Result<Response<Body>, GatewayError> {
    let mut data: Vec<serde_json::Value> = Vec::new();
    let mut answered = 0;
    for u in live.upstreams.iter() {
        let req = Request::get("/v1/models")
            .body(())
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        let resp = match send(u, key, req, UpBody::full(Bytes::new()), caller, finish).await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tracing::warn!(upstream = %u.name, status = %r.status(), "upstream did not list its models");
                continue;
            }
            Err(e) => {
                tracing::warn!(upstream = %u.name, error = %e, "upstream did not list its models");
                match e {
                    GatewayError::UpstreamUnavailable(_) => {
                        u.series.error(crate::metrics::UpstreamError::Unavailable)
                    }
                    GatewayError::UpstreamTimeout(_) => {
                        u.series.error(crate::metrics::UpstreamError::Timeout)
                    }
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
    finish.upstream = None;
    finish.upstream_series = None;
    finish.upstream_latency = None;
    finish.added_latency = None;
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
