//! The model stage: on a forward route, the request body is read as far as its `model` when the
//! key has a model allowlist (on every route and method: a body that names a model is checked,
//! and on a route that carries one it must name one), when several upstreams are chosen
//! between by model, or when a token limit needs an estimate. JSON and form bodies are read
//! whole, bounded by `max_body_bytes`; a multipart upload only up to its `model` field, then
//! streamed on through the parser (`multipart`), which also holds it to its boundaries. Other
//! bodies stream untouched.
//!
//! A model name is checked twice: it must hold no key (it would be logged and could be
//! echoed), and the key's allowlist must match it.

use crate::account::RequestRecord;
use crate::auth::secrets::{contains_secret, looks_like_key};
use crate::auth::Caller;
use crate::authorize::body::{body_kind, form_model, is_json_object, BodyError, BodyKind};
use crate::authorize::json_body::{body_facts, Summary};
use crate::authorize::multipart::MultipartBody;
use crate::authorize::routes::RouteMatch;
use crate::config::LimitDefaults;
use crate::error::GatewayError;
use crate::gateway::Live;
use crate::keys::index::KeyRef;
use crate::keys::tokens::MAX_COUNT;
use crate::proxy::idle::{client_left, earned};
use crate::proxy::request_body::UpBody;
use bytes::{Bytes, BytesMut};
use http::header;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// What the model stage found: the body as it goes upstream, and what was read from it.
pub struct Inspected {
    /// The body's model, checked; `None` when the body was not read or names none.
    pub model: Option<String>,
    pub body: UpBody,
    /// The facts of a JSON body read whole that names a model.
    pub facts: Option<Summary>,
    /// The length of a body read whole (JSON or form).
    pub read: Option<usize>,
    /// A multipart upload read through its parser.
    pub upload: bool,
}

impl Inspected {
    /// The tokens to reserve for a request on `route`: the completion budget the body names
    /// (else `[limits] estimated_completion_tokens`) times the sequences it asks for (`n`,
    /// `best_of`, for each prompt of an array: each is generated up to the budget), plus one token per 4 bytes of a body
    /// read whole (none for a multipart upload: a file is not prompt text). `None` when the
    /// key counts no tokens (no token limit or quota) or the body was not read.
    pub fn token_estimate(
        &self,
        key: &KeyRef,
        route: RouteMatch,
        limits: &LimitDefaults,
    ) -> Option<u64> {
        let len = match self.read {
            Some(len) => len,
            None if self.upload => 0,
            None => return None,
        };
        if !route.has_model || !key.counts_tokens() {
            return None;
        }
        let default = limits.estimated_completion_tokens;
        let completion = self
            .facts
            .as_ref()
            .map_or(default.min(MAX_COUNT), |f| f.completion_tokens(default));
        // Both at most `MAX_COUNT`, or the body's length: a wrapped sum would reserve next to
        // nothing, and the estimate is what a quota is charged when no usage comes.
        Some(completion.saturating_add(len as u64 / 4))
    }
}

/// What the model stage does with a body, decided without reading it.
pub enum Plan {
    /// Nothing needs the body's model: it streams upstream unread (or is empty).
    Stream(Inspected),
    /// The body must be read as far as its model: `inspect` does, asynchronously.
    Read(Incoming),
}

/// Decides, without waiting, whether the body must be read: most requests (no allowlist, one
/// upstream, no token limit or quota) stream it, and skip the reading stage's future altogether.
pub fn plan(
    live: &Live,
    key: &KeyRef,
    route: RouteMatch,
    parts: &http::request::Parts,
    body: Incoming,
    record: &mut RequestRecord,
) -> Result<Plan, GatewayError> {
    let server = &live.config.server;
    if content_length(&parts.headers).is_some_and(|n| n > server.max_body_bytes) {
        return Err(GatewayError::TooLarge(server.max_body_bytes));
    }
    let wanted = Wanted::of(live, key, route);
    let empty = http_body::Body::is_end_stream(&body);
    if !empty && wanted.any() {
        return Ok(Plan::Read(body));
    }
    if empty && wanted.restricted && route.has_model {
        return Err(BodyError::NoModel.into());
    }
    Ok(Plan::Stream(Inspected {
        model: None,
        body: streamed(live, body, record),
        facts: None,
        read: None,
        upload: false,
    }))
}

/// Who needs a body's model: the key's allowlist, the choice between upstreams, a token
/// estimate.
struct Wanted {
    restricted: bool,
    by_model: bool,
    count_tokens: bool,
}

impl Wanted {
    fn of(live: &Live, key: &KeyRef, route: RouteMatch) -> Wanted {
        Wanted {
            restricted: key.models.is_some(),
            by_model: route.has_model && live.upstreams.len() > 1,
            count_tokens: route.has_model && key.counts_tokens(),
        }
    }

    fn any(&self) -> bool {
        self.restricted || self.by_model || self.count_tokens
    }
}

/// A body streamed upstream, counted as it goes (for the access log and the prompt estimate of
/// an answer that ends without usage).
fn streamed(live: &Live, body: Incoming, record: &mut RequestRecord) -> UpBody {
    let server = &live.config.server;
    let seen = Arc::new(AtomicU64::new(0));
    record.received = Some(Arc::clone(&seen));
    UpBody::stream(
        body,
        server.body_read_timeout,
        record.started,
        server.max_body_bytes,
        seen,
    )
}

/// Reads a body `plan` said must be read, as far as its model (see the module doc), and
/// checks it.
pub async fn inspect(
    live: &Live,
    key: &KeyRef,
    route: RouteMatch,
    parts: &http::request::Parts,
    body: Incoming,
    caller: &Caller,
    record: &mut RequestRecord,
) -> Result<Inspected, GatewayError> {
    let server = &live.config.server;
    let declared = content_length(&parts.headers);
    let restricted = Wanted::of(live, key, route).restricted;
    let mut read = None; // a JSON or form body read whole
    let mut upload = false;
    let mut facts = None;
    let (model, body) = match body_kind(&parts.headers)? {
        // Read through the parser even when only a token estimate wanted the body: streamed
        // unread, JSON labelled as multipart went to an upstream that reads JSON whatever the
        // label with no estimate reserved, past the key's token limit.
        BodyKind::Multipart { boundary } => {
            let mut m = MultipartBody::new(
                body,
                boundary,
                server.body_read_timeout,
                record.started,
                server.max_body_bytes,
            );
            upload = true;
            (m.find_model().await?, UpBody::multipart(m))
        }
        kind => {
            let bytes = read_body(
                body,
                server.max_body_bytes,
                server.body_read_timeout,
                declared,
            )
            .await?;
            // Counted before anything can refuse it: the log's `bytes_received` is what came.
            record.bytes_received = bytes.len() as u64;
            // A JSON object labelled as a form is read as the JSON it is (an upstream that
            // parses JSON whatever the label would otherwise run a budget and a stream the
            // gateway never saw); no form starts with `{`.
            let model = if kind == BodyKind::Form && !is_json_object(&bytes) {
                form_model(&bytes)?
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
                    Err(e) => return Err(e.into()),
                }
            };
            read = Some(bytes.len());
            (model, UpBody::full(bytes))
        }
    };
    match &model {
        Some(m) => check(m, &live.config.keys.prefix, key, caller)?,
        None if restricted && route.has_model => return Err(BodyError::NoModel.into()),
        None => {}
    }
    Ok(Inspected {
        model,
        body,
        facts,
        read,
        upload,
    })
}

/// The model `GET /v1/models/{model}` names, as the upstream will decode it, checked like a
/// body's (and logged as the upstream sees it).
pub fn in_path(
    path: &str,
    prefix: &str,
    key: &KeyRef,
    caller: &Caller,
) -> Result<String, GatewayError> {
    let raw = path.strip_prefix("/v1/models/").unwrap_or_default();
    let model = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| {
            GatewayError::InvalidRequest(
                "The model name in the path is not UTF-8 once percent-decoded.".into(),
            )
        })?
        .into_owned();
    check(&model, prefix, key, caller)?;
    Ok(model)
}

/// A model name must hold no key (it would be logged and could be echoed), and the key's
/// allowlist must match it.
fn check(model: &str, prefix: &str, key: &KeyRef, caller: &Caller) -> Result<(), GatewayError> {
    if looks_like_key(model.as_bytes(), prefix)
        || contains_secret(model.as_bytes(), caller.credential())
    {
        return Err(GatewayError::InvalidRequest(
            "The `model` holds an API key; name a model there, and send the key only in `Authorization`."
                .into(),
        ));
    }
    if !key.may_use_model(model) {
        return Err(GatewayError::ModelNotAllowed(model.to_string()));
    }
    Ok(())
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Reads a whole request body, bounded in size, in time between frames, and in total time
/// (`idle` and what the body's bytes earned, as a streamed body: `Idle::for_body`).
async fn read_body(
    mut body: Incoming,
    limit: u64,
    idle: Duration,
    size_hint: Option<u64>,
) -> Result<Bytes, GatewayError> {
    let mut buf = BytesMut::with_capacity(size_hint.unwrap_or(0).min(limit) as usize);
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        let wait = deadline.min(tokio::time::Instant::now() + idle);
        let frame = tokio::time::timeout_at(wait, body.frame())
            .await
            .map_err(|_| GatewayError::BodyTimeout)?;
        match frame {
            None => return Ok(buf.freeze()),
            Some(Err(e)) if client_left(&e) => return Err(GatewayError::ClientGone),
            Some(Err(e)) => return Err(GatewayError::ClientBody(e.to_string())),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    if buf.len() as u64 + d.len() as u64 > limit {
                        return Err(GatewayError::TooLarge(limit));
                    }
                    buf.extend_from_slice(&d);
                    deadline += earned(d.len() as u64);
                }
            }
        }
    }
}
