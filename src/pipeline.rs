//! One request, start to finish, in the order of the stages:
//! listener (`server`) → authenticate → authorize → limit → forward → account.
//!
//! `handle` never fails: every refusal is a `GatewayError` turned into its OpenAI-shaped
//! answer in one place (`error.rs`), and every answer carries `x-request-id`, plus the
//! `x-ratelimit-*` headers once the caller is authenticated.

use crate::account::Finish;
use crate::auth::{
    authenticate, contains_secret, credential, holds_key, key_in_url, looks_like_key, url_has_key,
    url_has_secret,
};
use crate::authorize::{
    body_facts, body_kind, path_problem, BodyError, BodyKind, Handler, RouteMatch,
};
use crate::error::GatewayError;
use crate::gateway::{Gateway, Live};
use crate::keys::index::KeyRef;
use crate::limit::RateInfo;
use crate::proxy::response_body::{Body, UpBody};
use crate::proxy::upstream::{upstream_request, ForwardInfo};
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
pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>, mut conn: Conn) -> Response<Body> {
    let live = gw.live();
    let prefix = live.config.keys.prefix.as_str();
    let client = crate::proxy::headers::client_addr(
        conn.peer.ip(),
        req.headers(),
        &live.config.server.trusted_proxies,
    );
    if client != conn.peer.ip() {
        conn.forwarded_for = HeaderValue::from_str(&client.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    }
    // A request id that looks like a key is replaced, never logged, echoed or forwarded
    // (one that holds the presented credential is replaced once that is known).
    let request_id = req
        .headers()
        .get(crate::proxy::headers::X_REQUEST_ID)
        .filter(|v| is_valid_request_id(v) && !looks_like_key(v.as_bytes(), prefix))
        .cloned()
        .unwrap_or_else(new_request_id);
    let mut finish = Box::new(Finish::new(request_id, req.method().clone(), client));
    finish.gateway = Some(Arc::clone(&gw));
    finish.path = req.uri().path_and_query().cloned();
    finish.version = req.version();
    finish.user_agent = req.headers().get(header::USER_AGENT).cloned();
    let mut limits = LimitState::default();
    let head = req.method() == Method::HEAD;
    let mut caller = None;
    let answer = pipeline(&gw, &live, req, conn, &mut finish, &mut limits, &mut caller).await;
    let mut resp = match answer {
        Ok(r) => r,
        Err(e) => {
            let credential = caller.as_ref().map(|c: &Caller| c.credential.as_str());
            let e = withhold_keys(e, prefix, credential);
            finish.error_code = Some(e.code());
            e.to_response()
        }
    };
    if head {
        without_body(&mut resp);
    }
    finish.status = resp.status().as_u16();
    let h = resp.headers_mut();
    h.insert(
        crate::proxy::headers::X_REQUEST_ID,
        finish.request_id.clone(),
    );
    if let Some(r) = limits.rate {
        set_rate_headers(h, &r);
    }
    if let Some(t) = limits.tokens {
        h.insert(
            crate::proxy::headers::LIMIT_TOKENS,
            HeaderValue::from(t.limit),
        );
        h.insert(
            crate::proxy::headers::REMAINING_TOKENS,
            HeaderValue::from(t.remaining),
        );
        if let Some(v) = OpenAiDuration(t.reset).header_value() {
            h.insert(crate::proxy::headers::RESET_TOKENS, v);
        }
    }
    resp.body_mut().set_finish(finish);
    resp
}

/// The answer to a HEAD request: the GET answer's head, with its length, and no body. hyper
/// leaves the body out of an HTTP/1.1 HEAD answer but not out of an HTTP/2 one.
fn without_body(resp: &mut Response<Body>) {
    if let Some(n) = http_body::Body::size_hint(resp.body()).exact() {
        if n > 0 && !resp.headers().contains_key(header::CONTENT_LENGTH) {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    *resp.body_mut() = Body::full(Bytes::new());
}

/// An error whose message would repeat client text holding a key (the presented one, or
/// anything shaped like one: a model name, a path, a JSON parser's excerpt of the body)
/// becomes one that repeats nothing. Only errors that carry client text are searched, so
/// the cheap refusals (429, 401) stay cheap.
fn withhold_keys(e: GatewayError, prefix: &str, credential: Option<&str>) -> GatewayError {
    match e.client_text() {
        Some(t)
            if holds_key(t, prefix)
                || credential.is_some_and(|c| contains_secret(t.as_bytes(), c)) =>
        {
            GatewayError::KeyElsewhere
        }
        _ => e,
    }
}

/// The 404 for a path no route matches, with a hint when the path is a route without its
/// `/v1` (a client whose `base_url` lacks it).
fn unknown_route(live: &Live, req: &Request<Incoming>) -> GatewayError {
    let (method, path) = (req.method(), req.uri().path());
    // A credential that is not key-shaped could still be in the path: never repeat it.
    if let Ok(Some(c)) = credential(req.headers()) {
        if url_has_secret(path, None, c.as_str()) {
            return GatewayError::KeyElsewhere;
        }
    }
    if !path.starts_with("/v1/")
        && live
            .config
            .routes
            .resolve(method, &format!("/v1{path}"))
            .is_some()
    {
        return GatewayError::RouteUnderV1(method.clone(), path.to_string());
    }
    GatewayError::UnknownRoute(method.clone(), path.to_string())
}

/// Refuses a model name that holds a key: it would be logged and could be echoed.
fn check_model_text(model: &str, prefix: &str, caller: &Caller) -> Result<(), GatewayError> {
    if looks_like_key(model.as_bytes(), prefix)
        || contains_secret(model.as_bytes(), &caller.credential)
    {
        return Err(GatewayError::InvalidRequest(
            "The `model` holds an API key; name a model there, and send the key only in `Authorization`."
                .into(),
        ));
    }
    Ok(())
}

/// The limit state of an authenticated request, reported in `x-ratelimit-*` headers.
#[derive(Default)]
struct LimitState {
    rate: Option<RateInfo>,
    tokens: Option<crate::limit::TokenInfo>,
}

fn set_rate_headers(h: &mut http::HeaderMap, r: &RateInfo) {
    h.insert(
        crate::proxy::headers::LIMIT_REQUESTS,
        HeaderValue::from(r.limit),
    );
    h.insert(
        crate::proxy::headers::REMAINING_REQUESTS,
        HeaderValue::from(r.remaining),
    );
    if let Some(v) = OpenAiDuration(r.reset).header_value() {
        h.insert(crate::proxy::headers::RESET_REQUESTS, v);
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
    live: &Live,
    req: Request<Incoming>,
    conn: Conn,
    finish: &mut Finish,
    limits: &mut LimitState,
    caller_slot: &mut Option<Caller>,
) -> Result<Response<Body>, GatewayError> {
    let path = req.uri().path();
    // HEAD is answered as GET (`handle` drops the body).
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match (get, path) {
        (true, "/healthz") => {
            finish.probe = true;
            return Ok(text(StatusCode::OK, "ok\n"));
        }
        (true, "/readyz") => {
            finish.probe = true;
            return match gw.not_ready() {
                None => Ok(text(StatusCode::OK, "ready\n")),
                Some(why) => Err(GatewayError::Unready(why)),
            };
        }
        (true, p) if p.starts_with("/console") => {
            if let Some(r) = crate::admin::console::asset(p) {
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
    if let Some(problem) = path_problem(path) {
        return Err(GatewayError::InvalidRequest(problem.into()));
    }
    let prefix = &live.config.keys.prefix;
    // Before routing, so that no answer (a 404 included) repeats the URL's key.
    if url_has_key(path, req.uri().query(), prefix) {
        return Err(key_in_url());
    }
    let Some(route) = live.config.routes.resolve(req.method(), path) else {
        return Err(unknown_route(live, &req));
    };
    finish.route = route.scope.name();
    let index = live.keys.as_ref().ok_or(GatewayError::NotReady)?;
    finish.capacity = Some(gw.capacity.acquire()?);

    // Authenticate.
    let now = Timestamp::now();
    let (key, caller) = {
        let cred = credential(req.headers())?.ok_or(GatewayError::MissingKey)?;
        if url_has_secret(path, req.uri().query(), cred.as_str()) {
            return Err(key_in_url());
        }
        if contains_secret(finish.request_id.as_bytes(), cred.as_str()) {
            finish.request_id = new_request_id();
        }
        let key = authenticate(index, &cred, prefix, finish.client, &gw.failed_auth, now)?;
        let caller = caller_slot.insert(Caller {
            conn,
            credential: cred.as_str().to_owned(),
        });
        (key, &*caller)
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
        Handler::Forward => proxy(live, cluster, &key, route, req, caller, finish, limits).await,
        Handler::RetrieveModel => {
            // The upstream decodes the path: check (and log) the name it will see.
            let raw = &path["/v1/models/".len()..];
            let model = percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| {
                    GatewayError::InvalidRequest(
                        "The model name in the path is not UTF-8 once percent-decoded.".into(),
                    )
                })?
                .into_owned();
            check_model_text(&model, prefix, caller)?;
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
                caller,
                finish,
            )
            .await
        }
        Handler::ListModels => list_models(live, &key, caller, finish).await,
        Handler::Admin => crate::admin::handle(gw, live, &key, req, finish).await,
        Handler::Usage => Ok(crate::admin::usage(live)),
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

/// Forwards a request on a forward route. Its body is read for a `model` when the key has a
/// model allowlist (on every route and method: a body that names a model is checked, and
/// on a route that carries one it must name one), when several upstreams are chosen
/// between by model, or when a token limit needs an estimate. JSON and form bodies are read
/// whole, bounded by `max_body_bytes`; a multipart upload only up to its `model` field, then
/// streamed on through the parser (`multipart`). Other bodies stream untouched.
#[allow(clippy::too_many_arguments)]
async fn proxy(
    live: &Live,
    cluster: Option<&Arc<crate::limit::redis::Cluster>>,
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
    let invalid = |e: BodyError| GatewayError::InvalidRequest(e.to_string());
    let default = || {
        live.default_upstream()
            .ok_or_else(|| GatewayError::Internal("no upstream configured".into()))
    };
    let restricted = key.models.is_some();
    let by_model = route.has_model && live.upstreams.len() > 1;
    let count_tokens = route.has_model && key.tokens_per_minute().is_some();
    // A body streamed upstream is counted as it goes (for the access log and the prompt
    // estimate of an answer that ends without usage).
    let streamed = |body, finish: &mut Finish| {
        let seen = Arc::new(AtomicU64::new(0));
        finish.received = Some(Arc::clone(&seen));
        UpBody::stream(body, server.body_read_timeout, server.max_body_bytes, seen)
    };
    let empty = http_body::Body::is_end_stream(&body);
    if empty || !(restricted || by_model || count_tokens) {
        if empty && restricted && route.has_model {
            return Err(invalid(BodyError::NoModel));
        }
        let upstream = Arc::clone(default()?);
        let req = Request::from_parts(parts, ());
        let upbody = streamed(body, finish);
        return send(&upstream, key, req, upbody, caller, finish).await;
    }

    // The body's model, and the body as it will go upstream.
    let mut read = None; // a JSON or form body read whole
    let mut facts = None;
    let (model, mut upbody) = match body_kind(&parts.headers).map_err(invalid)? {
        BodyKind::Multipart { boundary } if restricted || by_model => {
            let mut m = crate::authorize::multipart::MultipartBody::new(
                body,
                boundary,
                server.body_read_timeout,
                server.max_body_bytes,
            );
            (m.find_model().await?, UpBody::multipart(m))
        }
        // Only a token estimate wanted it, and a multipart upload gives none.
        BodyKind::Multipart { .. } => (None, streamed(body, finish)),
        kind => {
            let bytes = read_body(
                body,
                server.max_body_bytes,
                server.body_read_timeout,
                declared,
            )
            .await?;
            let model = if kind == BodyKind::Form {
                crate::authorize::form_model(&bytes).map_err(invalid)?
            } else if bytes.is_empty() {
                None
            } else {
                match body_facts(&bytes) {
                    Ok(f) => {
                        let f = f.summary();
                        let model = f.model.clone();
                        facts = Some(f);
                        Some(model)
                    }
                    Err(BodyError::NoModel) => None,
                    Err(e) => return Err(invalid(e)),
                }
            };
            read = Some(bytes.len());
            finish.bytes_received = bytes.len() as u64;
            (model, UpBody::full(bytes))
        }
    };
    let upstream = match &model {
        Some(m) => {
            check_model_text(m, &live.config.keys.prefix, caller)?;
            if !key.may_use_model(m) {
                return Err(GatewayError::ModelNotAllowed(m.clone()));
            }
            let u = if route.has_model {
                live.upstream_for(m)
                    .ok_or_else(|| GatewayError::ModelNotFound(m.clone()))?
            } else {
                default()?
            };
            finish.model = Some(m.clone());
            u
        }
        None if restricted && route.has_model => return Err(invalid(BodyError::NoModel)),
        None => default()?,
    };
    if let (true, Some(len)) = (count_tokens, read) {
        let budget = facts
            .as_ref()
            .and_then(|f| f.completion_budget)
            .unwrap_or(live.config.limits.estimated_completion_tokens);
        let estimate = budget + len as u64 / 4;
        if let Some((info, charge)) = crate::limit::reserve_tokens(cluster, key, estimate).await? {
            limits.tokens = Some(info);
            info.into_result()?;
            finish.token_charge = Some(charge);
        }
    }
    // Exact accounting needs a stream's usage too: ask the upstream for it, and hide the
    // extra chunk from a client that did not ask for it.
    let completion = matches!(
        route.scope,
        crate::keys::scope::Scope::Chat | crate::keys::scope::Scope::Completions
    );
    let mut strip_usage = false;
    if completion && facts.as_ref().is_some_and(|f| f.stream && !f.wants_usage) {
        if let UpBody::Full(Some(bytes)) = &upbody {
            if let Some(rewritten) = crate::authorize::with_stream_usage(bytes) {
                upbody = UpBody::full(rewritten);
                strip_usage = true;
            }
        }
    }
    let upstream = Arc::clone(upstream);
    let req = Request::from_parts(parts, ());
    let mut resp = send(&upstream, key, req, upbody, caller, finish).await?;
    if strip_usage {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        resp.body_mut().strip_usage_chunk();
    }
    Ok(resp)
}

/// Sends to `upstream` and streams the answer back. A revoke of the key ends the wait for
/// the head (401 `revoked_api_key`; dropping the send closes the upstream connection) and
/// the answer's body.
async fn send<B>(
    upstream: &crate::proxy::upstream::Upstream,
    key: &KeyRef,
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
    let state = key.state();
    let (resp, lease) = tokio::select! {
        biased;
        () = state.revocation.revoked() => return Err(GatewayError::RevokedKey),
        r = upstream.send(up) => r?,
    };
    let upstream_latency = sent.elapsed();
    finish.upstream_latency = Some(upstream_latency);
    let (mut parts, incoming) = resp.into_parts();
    crate::proxy::headers::sanitize_response(&mut parts.headers);
    let event_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut body = Body::upstream(
        incoming,
        lease,
        upstream.config.idle_timeout,
        true,
        event_stream,
    );
    body.end_on_revoke(state);
    finish.added_latency = Some(before + (sent.elapsed() - upstream_latency));
    Ok(Response::from_parts(parts, body))
}

/// `GET /v1/models`: the union of the upstreams' models that this key may use.
async fn list_models(
    live: &Live,
    key: &KeyRef,
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
                    GatewayError::UpstreamUnavailable(_) => u
                        .series
                        .error(crate::ops::metrics::UpstreamError::Unavailable),
                    GatewayError::UpstreamTimeout(_) => {
                        u.series.error(crate::ops::metrics::UpstreamError::Timeout)
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
