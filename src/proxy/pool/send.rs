//! `Pool::send`'s wait, written out as a state machine.
//!
//! As an `async` block it kept the request it captured for its whole run, beside hyper's
//! send (which holds the request until it is written, and holds its own copy after): 264 dead
//! bytes in a future that every request writes, in memory that is cold at each request when
//! many connections are open. Here the request is a state of its own, gone once it is sent.

use super::conn::{SendError, UpstreamConn};
use super::lease::{Lease, Shared};
use crate::proxy::request_body::UpBody;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, TrySendError};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

/// The pool's answer to one request: the response head with the lease of its connection.
pub type Sent = Result<(Response<Incoming>, Lease), SendError>;

/// What hyper's send of one request comes to.
type Answer = Result<Response<Incoming>, TrySendError<Request<UpBody>>>;

/// Making a connection: the rare path, boxed so that its future does not make every
/// request's larger.
type Connecting<'p> =
    Pin<Box<dyn Future<Output = Result<Box<UpstreamConn>, SendError>> + Send + 'p>>;

pin_project_lite::pin_project! {
    /// Ends with the response head and the lease of its connection, or with why there is
    /// none. `T` is hyper's send (`F` its future), a type parameter because its future's type
    /// has no name.
    pub struct PoolSend<'p, T, F> {
        shared: &'p Arc<Shared>,
        try_send: T,
        // When the request was handed to the pool: an idle connection's age is told from it.
        at: Instant,
        #[pin]
        step: Step<'p, F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StepProj]
    enum Step<'p, F> {
        // The request, on no connection yet. (An `Option` only so that it can be moved out
        // of a pinned state; it is `None` only between two steps.)
        Unsent { req: Option<Request<UpBody>> },
        // No idle connection was usable: a new one is being made.
        Connecting { req: Option<Request<UpBody>>, connect: Connecting<'p> },
        // Written (or being written) on the lease's connection: the wait for the head.
        // `reused`: the connection had served before, so a request it refused unwritten may
        // try another. Dropped here (the client left), the lease cancels the request.
        Waiting { lease: Option<Lease>, reused: bool, #[pin] answer: F },
    }
}

impl<'p, T, F> PoolSend<'p, T, F>
where
    T: Fn(&mut http1::SendRequest<UpBody>, Request<UpBody>) -> F,
{
    pub(super) fn new(
        shared: &'p Arc<Shared>,
        req: Request<UpBody>,
        at: Instant,
        try_send: T,
    ) -> Self {
        PoolSend {
            shared,
            try_send,
            at,
            step: Step::Unsent { req: Some(req) },
        }
    }
}

impl<'p, T, F> Future for PoolSend<'p, T, F>
where
    T: Fn(&mut http1::SendRequest<UpBody>, Request<UpBody>) -> F,
    F: Future<Output = Answer>,
{
    type Output = Sent;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Sent> {
        let mut this = self.project();
        loop {
            let next = match this.step.as_mut().project() {
                StepProj::Unsent { req } => {
                    let Some(req) = req.take() else {
                        return Poll::Ready(Err(SendError::Closed));
                    };
                    match this.shared.idle.checkout(*this.at) {
                        Some(conn) => waiting(this.try_send, this.shared, conn, req, true),
                        None => Step::Connecting {
                            req: Some(req),
                            connect: connect(this.shared),
                        },
                    }
                }
                StepProj::Connecting { req, connect } => {
                    let conn = ready!(connect.as_mut().poll(cx))?;
                    let Some(req) = req.take() else {
                        return Poll::Ready(Err(SendError::Closed));
                    };
                    waiting(this.try_send, this.shared, conn, req, false)
                }
                StepProj::Waiting {
                    lease,
                    reused,
                    answer,
                } => {
                    // The connection first: it writes the request and reads the head.
                    let alive = lease.as_mut().is_some_and(|l| l.alive(cx));
                    // The answer is asked with no waker: only driving the connection, above,
                    // can complete it, and that registered this task's waker wherever the
                    // connection waits. A waker here would be woken by that completion,
                    // from inside this very poll: one more wasted poll of the client's
                    // connection per request.
                    let mut quiet = Context::from_waker(std::task::Waker::noop());
                    let failed = match answer.poll(&mut quiet) {
                        Poll::Pending if alive => return Poll::Pending,
                        Poll::Pending => Err(SendError::Closed),
                        Poll::Ready(Ok(resp)) => {
                            return match lease.take() {
                                Some(lease) => Poll::Ready(Ok((resp, lease))),
                                None => Poll::Ready(Err(SendError::Closed)),
                            };
                        }
                        Poll::Ready(Err(mut e)) => match e.take_message() {
                            // Not written: a reused connection had gone stale; try another.
                            Some(req) if *reused => Ok(req),
                            _ => Err(SendError::Http(e.into_error())),
                        },
                    };
                    // The connection failed: closed, and not replaced.
                    if let Some(mut l) = lease.take() {
                        l.discard();
                    }
                    match failed {
                        Ok(req) => Step::Unsent { req: Some(req) },
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            };
            this.step.set(next);
        }
    }
}

/// `req` handed to hyper on `conn`, and the wait for its head.
fn waiting<'p, T, F>(
    try_send: &T,
    shared: &Arc<Shared>,
    mut conn: Box<UpstreamConn>,
    req: Request<UpBody>,
    reused: bool,
) -> Step<'p, F>
where
    T: Fn(&mut http1::SendRequest<UpBody>, Request<UpBody>) -> F,
{
    let answer = try_send(&mut conn.sender, req);
    Step::Waiting {
        lease: Some(Lease::new(conn, Arc::clone(shared))),
        reused,
        answer,
    }
}

/// A new connection, then one trip through the scheduler before the request is written: the
/// client's side runs once more, so a request it has already cancelled meanwhile (an HTTP/2
/// reset) is dropped here and costs the upstream nothing.
fn connect(shared: &Shared) -> Connecting<'_> {
    Box::pin(async move {
        let conn = shared.connector.connect().await?;
        tokio::task::yield_now().await;
        Ok(conn)
    })
}
