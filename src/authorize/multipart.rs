//! The `model` of a `multipart/form-data` upload (audio transcriptions and translations, image
//! edits and variations), read while the upload streams.
//!
//! The body is parsed by `multer` as it arrives, and every raw chunk is kept until the parser
//! has looked past it. The request waits only until the `model` field has been read: a 25 MB
//! recording whose `model` comes first is not held, and one whose `model` comes after the
//! file is held up to `max_body_bytes` (the limit every body has anyway). Then the kept
//! chunks and the rest of the stream go upstream, still through the parser: a second `model`
//! field (the form parsers behind vLLM keep the last one) or a malformed part ends the upload
//! with an error before the chunk that holds it is sent, so the upstream never gets a whole
//! request naming another model.
//!
//! Before the first boundary and after the closing one only whitespace may come
//! (`envelope`): an upstream reading the body as JSON would find a preamble's.
//!
//! A part counts as the `model` field only when multer and a strict reading of its
//! `Content-Disposition` agree on its name; a part they read differently (a `name*=`, a
//! `NAME=`, two names, two headers) is refused, since the upstream's parser might read it
//! the other way.

use crate::authorize::envelope::Envelope;
use crate::authorize::part_name::{role, Role};
use crate::error::GatewayError;
use crate::proxy::idle::{
    client_body_failure, BodyTooLarge, BoxError, ClientBodyError, Idle, IdleTimeout,
};
use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use multer::{Field, Multipart};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

/// The longest `model` value accepted: a model's name, not a file.
const MAX_MODEL_LEN: usize = 1024;

/// The client's body as it arrives. Each chunk handed to the parser is also kept in
/// `pending` until it is forwarded.
struct Source {
    inner: Incoming,
    idle: Idle,
    limit: u64,
    seen: u64,
    /// `seen`, shared: the first-byte deadline waits while it moves (`proxy::first_byte`).
    progress: Arc<AtomicU64>,
    pending: VecDeque<Bytes>,
    /// Why the body stopped, when it broke off: the parser only gets an opaque error.
    failure: Option<BoxError>,
    /// Nothing but whitespace before the first boundary and after the last (`envelope`).
    envelope: Envelope,
    ended: bool,
}

impl Source {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let frame = ready!(self.idle.poll_frame(&mut self.inner, cx));
        Poll::Ready(match frame {
            None => {
                self.ended = true;
                None
            }
            Some(Err(e)) if e.is::<IdleTimeout>() => Some(Err(e)),
            Some(Err(e)) => Some(Err(client_body_failure(e))),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    self.seen += d.len() as u64;
                    self.progress.store(self.seen, Ordering::Relaxed);
                    if self.seen > self.limit {
                        Some(Err(Box::new(BodyTooLarge(self.limit))))
                    } else if let Err(why) = self.envelope.check(&d) {
                        Some(Err(Box::new(ClientBodyError(why.into()))))
                    } else {
                        Some(Ok(d))
                    }
                }
                // Trailers end the body and are never forwarded (as for any streamed body).
                Err(_) => {
                    self.ended = true;
                    None
                }
            },
        })
    }
}

fn lock(s: &Mutex<Source>) -> MutexGuard<'_, Source> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the parser reads from: the source, with each chunk kept for forwarding.
struct Tee(Arc<Mutex<Source>>);

impl futures_core::Stream for Tee {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut s = lock(&self.0);
        Poll::Ready(match ready!(s.poll_chunk(cx)) {
            Some(Ok(d)) => {
                s.pending.push_back(d.clone());
                Some(Ok(d))
            }
            Some(Err(e)) => {
                s.failure = Some(e);
                Some(Err("the request body broke off".into()))
            }
            None => None,
        })
    }
}

/// A multipart upload being checked and forwarded.
pub struct MultipartBody {
    parser: Multipart<'static>,
    source: Arc<Mutex<Source>>,
    /// The parser has read the closing boundary: what follows passes through as it is.
    parsed: bool,
}

impl std::fmt::Debug for MultipartBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipartBody")
            .field("parsed", &self.parsed)
            .finish()
    }
}

impl MultipartBody {
    /// `timeout` bounds each gap and, from `started` (when the request began) and with the
    /// body's rate, the whole body (`Idle::for_body`); `limit` its size (`max_body_bytes`).
    pub fn new(
        inner: Incoming,
        boundary: String,
        timeout: Duration,
        started: std::time::Instant,
        limit: u64,
    ) -> MultipartBody {
        let source = Arc::new(Mutex::new(Source {
            inner,
            idle: Idle::for_body(timeout, started),
            limit,
            seen: 0,
            progress: Arc::default(),
            pending: VecDeque::new(),
            failure: None,
            envelope: Envelope::new(&boundary),
            ended: false,
        }));
        MultipartBody {
            parser: Multipart::new(Tee(Arc::clone(&source)), boundary),
            source,
            parsed: false,
        }
    }

    /// Reads up to the end of the `model` field: its value, or `None` when the body ends
    /// without one or it is empty (as in a JSON or form body: an allowlisted key is told to
    /// name a model, not that `` is not allowed). What was read is kept and forwarded first.
    pub async fn find_model(&mut self) -> Result<Option<String>, GatewayError> {
        loop {
            let next = poll_fn(|cx| self.parser.poll_next_field(cx)).await;
            let field = match next {
                Ok(Some(f)) => f,
                Ok(None) => {
                    self.parsed = true;
                    return Ok(None);
                }
                Err(e) => return Err(self.gateway_error(&e)),
            };
            match role(field.headers(), field.name()) {
                Err(problem) => return Err(GatewayError::InvalidRequest(format!("{problem}."))),
                // Dropped: the parser skips the rest of its data.
                Ok(Role::Other) => {}
                Ok(Role::Model) => {
                    let model = self.read_model(field).await?;
                    return Ok(Some(model).filter(|m| !m.is_empty()));
                }
            }
        }
    }

    async fn read_model(&mut self, mut field: Field<'static>) -> Result<String, GatewayError> {
        use futures_core::Stream;
        if field
            .headers()
            .get("content-transfer-encoding")
            .is_some_and(|v| {
                !["7bit", "8bit", "binary"]
                    .iter()
                    .any(|e| v.as_bytes().eq_ignore_ascii_case(e.as_bytes()))
            })
        {
            return Err(GatewayError::InvalidRequest(
                "The multipart `model` field has a Content-Transfer-Encoding; send it as plain text."
                    .into(),
            ));
        }
        let mut value = Vec::new();
        while let Some(chunk) = poll_fn(|cx| Pin::new(&mut field).poll_next(cx)).await {
            let chunk = chunk.map_err(|e| self.gateway_error(&e))?;
            if value.len() + chunk.len() > MAX_MODEL_LEN {
                return Err(GatewayError::InvalidRequest(format!(
                    "The multipart `model` field is longer than {MAX_MODEL_LEN} bytes."
                )));
            }
            value.extend_from_slice(&chunk);
        }
        String::from_utf8(value).map_err(|_| {
            GatewayError::InvalidRequest("The multipart `model` field is not UTF-8 text.".into())
        })
    }

    /// The refusal for a parser error before anything was forwarded.
    fn gateway_error(&self, e: &multer::Error) -> GatewayError {
        match lock(&self.source).failure.take() {
            Some(f) => GatewayError::client_body(&*f)
                .unwrap_or_else(|| GatewayError::InvalidRequest(format!("{f}."))),
            None => GatewayError::InvalidRequest(format!(
                "The multipart/form-data body is malformed: {}.",
                malformed(e)
            )),
        }
    }

    /// The error a parser failure ends the upstream body with.
    fn body_error(&self, e: &multer::Error) -> BoxError {
        match lock(&self.source).failure.take() {
            Some(f) => f,
            None => Box::new(ClientBodyError(format!(
                "the multipart/form-data body is malformed: {}",
                malformed(e)
            ))),
        }
    }

    /// Parses as far as the data read so far allows. `Ready(Ok)`: the closing boundary.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            match ready!(self.parser.poll_next_field(cx)) {
                Ok(None) => return Poll::Ready(Ok(())),
                Ok(Some(field)) => match role(field.headers(), field.name()) {
                    Ok(Role::Other) => {}
                    Ok(Role::Model) => {
                        return Poll::Ready(Err(Box::new(ClientBodyError(
                            "the multipart body has a second `model` field".into(),
                        ))))
                    }
                    Err(problem) => {
                        return Poll::Ready(Err(Box::new(ClientBodyError(problem.into()))))
                    }
                },
                Err(e) => return Poll::Ready(Err(self.body_error(&e))),
            }
        }
    }

    /// The next chunk for the upstream: a chunk is released only once the parser has seen
    /// past it (it returned `Pending` wanting more, or reached the end).
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.parsed {
            match self.drive(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(())) => self.parsed = true,
                // The parser waits on the client's body, which wakes this task.
                Poll::Pending => {}
            }
        }
        let mut s = lock(&self.source);
        if let Some(d) = s.pending.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if !self.parsed {
            return Poll::Pending;
        }
        // After the closing boundary (an epilogue, ignored by form parsers): as it comes.
        Poll::Ready(ready!(s.poll_chunk(cx)).map(|r| r.map(Frame::data)))
    }

    /// The bytes received so far, shared (`UpBody::progress`).
    pub fn progress(&self) -> Arc<AtomicU64> {
        Arc::clone(&lock(&self.source).progress)
    }

    pub fn is_end_stream(&self) -> bool {
        let s = lock(&self.source);
        self.parsed && s.ended && s.pending.is_empty()
    }
}

/// A parser error, described without repeating anything from the body.
fn malformed(e: &multer::Error) -> &'static str {
    use multer::Error::*;
    match e {
        IncompleteFieldData { .. } | IncompleteStream => "it ends before its closing boundary",
        IncompleteHeaders | ReadHeaderFailed(_) => "a part's headers cannot be read",
        DecodeHeaderName { .. } | DecodeHeaderValue { .. } => "a part has an invalid header",
        _ => "it cannot be parsed",
    }
}
