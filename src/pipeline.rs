//! One request, start to finish: every stage in the order it runs, doing none of them itself.
//!
//! 1. **listener** (`server`): the connection's peer; here its client address (behind a
//!    trusted proxy, the forwarded one) and the request id.
//! 2. **probes** (`ops::probes`): `/healthz`, `/readyz` and the console's files are answered
//!    before any stage.
//! 3. **route** (`authorize::route`): a method that is an API's, a path in normal form, no key
//!    in the URL, a route (else 404: deny by default). A key file must have loaded (else 503).
//! 4. **capacity** (`limit::inflight::Capacity`): the gateway-wide in-flight cap (503).
//! 5. **authenticate** (`auth`): one credential, checksum, index lookup; the failed-auth
//!    guard. The request counts against its key from here (`account`).
//! 6. **rate** (`limit::check_rate`): the key's rate cell is taken before anything can refuse
//!    the request, so every authenticated answer, a refusal included, reports the real rate.
//! 7. **scope** (`authorize::scope`), then the rate's verdict (429), then the key's quotas
//!    (`limit::check_quota`: 429 `insufficient_quota`, counted in memory).
//! 8. **slot** (`limit::acquire_slot`): the key's in-flight cap.
//! 9. **the route's handler**. Forward: **model** (`authorize::model`: the body read as far as
//!    its model, which the key's allowlist must match), **upstream** (`proxy::choose`, by
//!    model), **tokens** (`limit::hold_quota_tokens`, the estimate held against the token
//!    quotas while the request runs; `limit::reserve_tokens`, the minute's bucket), **forward**
//!    (`proxy::forward`). Or: a model
//!    by name, the model list, the management API (`admin`), usage.
//! 10. **answer**: a refusal becomes its OpenAI-shaped answer (`error`), with no key in it;
//!     every answer gets `x-request-id` and its limit headers (`limit::answer`).
//! 11. **account** (`account`): when the answer's body ends, or the client leaves, the request
//!     is settled: tokens, usage, slots, metrics, the access line.
//!
//! `handle` never fails. The stages are plain calls with no dynamic dispatch: the request's
//! future is one state machine, with boxes only for the wait for the upstream, the reading of a
//! body and the rare routes (each says why). The request's head is owned by `handle` and
//! borrowed by every stage (see `handle`).

use crate::account::{Added, RequestRecord};
use crate::auth::{self, Caller};
use crate::authorize::model::{self, Inspected, Plan};
use crate::authorize::routes::{Handler, RouteMatch};
use crate::error::GatewayError;
use crate::gateway::{Gateway, Live};
use crate::keys::index::KeyRef;
use crate::limit::answer::LimitHeaders;
use crate::limit::redis::RedisBackend;
use crate::limit::{self, Reservation};
use crate::proxy::headers::X_REQUEST_ID;
use crate::proxy::request_body::UpBody;
use crate::proxy::response_body::Body;
use crate::proxy::whole::without_body;
use crate::server::peer::Peer;
use crate::time::Timestamp;
use crate::{admin, authorize, ops, proxy};
use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use std::future::Future;
use std::sync::Arc;

/// Answers one request.
///
/// This and the stages below are plain functions returning `async` blocks rather than `async
/// fn`s: an `async fn` keeps each argument twice for its whole run (the call's copy and the
/// body's). For the same reason the request is split here, before the block: the block owns
/// its head (`Parts`), which every stage borrows and only the upstream's request takes, and
/// its body, which the stage that reads or forwards it takes. A request passed down by value
/// stays in every future it passed through (a future keeps what it captured, even moved out),
/// and every byte of a request's future is written once per request, in memory that is cold
/// at every request when many connections are open.
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
pub fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    mut peer: Peer,
) -> impl Future<Output = Response<Body>> {
    let (mut head, body) = req.into_parts();
    async move {
        let live = gw.live();
        let prefix = live.config.keys.prefix.as_str();
        peer.resolve_client(&head.headers, &live.config.server.trusted_proxies);
        let request_id = gw.request_ids.for_request(&head.headers, prefix);
        let mut record = RequestRecord::begin(&gw, &head, request_id, peer.client);
        let mut limits = LimitHeaders::default();
        let is_head = head.method == Method::HEAD;
        let mut caller = None;
        let answer = stages(
            &gw,
            &live,
            &mut head,
            body,
            &peer,
            &mut record,
            &mut limits,
            &mut caller,
        )
        .await;
        let (mut resp, retry_after) = match answer {
            Ok(r) => (r, None),
            // Nobody reads this answer: the record, dropped here, logs and counts a client
            // that left before the head (499, not complete), as when it leaves later.
            Err(GatewayError::ClientGone) => {
                if record.added == Added::All {
                    record.added = Added::Unknown; // it left while the gateway waited on it
                }
                drop(record);
                return GatewayError::ClientGone.to_response();
            }
            Err(e) => {
                let e = e.withholding_keys(prefix, caller.as_ref().map(Caller::credential));
                record.error_code = Some(e.code());
                if matches!(e, GatewayError::BodyTimeout) && record.added == Added::All {
                    record.added = Added::Unknown; // the time went waiting for the body
                }
                if let (None, Some(m)) = (&record.model, e.refused_model()) {
                    record.model = Some(m.to_string());
                }
                (e.to_response(), e.retry_after())
            }
        };
        if is_head {
            without_body(&mut resp);
        }
        record.status = resp.status().as_u16();
        let h = resp.headers_mut();
        h.insert(X_REQUEST_ID, record.request_id.clone());
        limits.write(h, retry_after);
        resp.body_mut().set_record(record);
        resp
    }
}

/// Takes the request's head from the stages that borrow it, for the one that sends it on (an
/// empty head, which costs no allocation, is left behind).
fn take(head: &mut Parts) -> Parts {
    std::mem::replace(head, Request::new(()).into_parts().0)
}

/// Stages 2 to 9. `caller_slot` keeps the authenticated caller for the answer (no answer may
/// repeat its credential).
#[allow(clippy::manual_async_fn, clippy::too_many_arguments)] // as `handle`
fn stages<'a>(
    gw: &'a Arc<Gateway>,
    live: &'a Live,
    head: &'a mut Parts,
    body: Incoming,
    peer: &'a Peer,
    record: &'a mut RequestRecord,
    limits: &'a mut LimitHeaders,
    caller_slot: &'a mut Option<Caller>,
) -> impl Future<Output = Result<Response<Body>, GatewayError>> + 'a {
    async move {
        if let Some(answer) = ops::probes::answer(gw, &head.method, head.uri.path()) {
            record.probe = true;
            return answer;
        }
        let route = authorize::route(live, head)?;
        record.route = route.scope.name();
        let index = live.keys.as_ref().ok_or(GatewayError::NotReady)?;
        record.capacity = Some(gw.capacity.acquire()?);

        let now = Timestamp::now();
        let prefix = &live.config.keys.prefix;
        let (key, caller) =
            auth::authenticate(gw, index, prefix, head, peer, &mut record.request_id, now)?;
        let caller = &*caller_slot.insert(caller);
        record.count_use(&key, now);

        let redis = gw.redis.as_ref();
        let rate = limit::check_rate(redis, &gw.rate_clock, record.started, &key).await?;
        limits.rate = Some(rate);
        authorize::scope(&key, route)?;
        limit::rate_verdict(&rate)?;
        limit::check_quota(&key, gw.usage.clock.at(now), limits)?;
        record.slot = Some(limit::acquire_slot(redis, &key).await?);

        match route.handler {
            Handler::Forward => {
                let quota_now = gw.usage.clock.at(now);
                forward(
                    live, redis, &key, route, head, body, caller, record, limits, quota_now,
                )
                .await
            }
            Handler::RetrieveModel => {
                let model = model::in_path(head.uri.path(), prefix, &key, caller)?;
                let upstream = live
                    .upstream_for(&model)
                    .ok_or_else(|| GatewayError::ModelNotFound(model.clone()))?;
                record.model = Some(model);
                let upstream = Arc::clone(upstream);
                let body = UpBody::full(Bytes::new());
                let sending =
                    proxy::send(&upstream, &key, take(head), body, caller, prefix, record)?;
                // Bound before the arm ends: the box borrows `upstream`, dropped with the arm.
                let answer = Box::pin(sending).await;
                answer
            }
            // The rare routes are boxed: the request path's future is as large as its largest
            // branch, and each request moves it whole.
            Handler::ListModels => Box::pin(proxy::list_models(live, &key, caller, record)).await,
            Handler::Admin => {
                let req = Request::from_parts(take(head), body);
                Box::pin(admin::handle(gw, live, &key, req, record)).await
            }
            Handler::Usage => Box::pin(admin::usage(gw, live, &head.uri)).await,
        }
    }
}

/// A forward route: model, upstream, tokens (the token quotas' hold, then the minute's
/// reservation), forward. The model stage's first step (does the
/// body need reading?) runs at once; the rest waits.
#[allow(clippy::too_many_arguments)]
fn forward<'a>(
    live: &'a Live,
    redis: Option<&'a Arc<RedisBackend>>,
    key: &'a KeyRef,
    route: RouteMatch,
    head: &'a mut Parts,
    body: Incoming,
    caller: &'a Caller,
    record: &'a mut RequestRecord,
    limits: &'a mut LimitHeaders,
    quota_now: Timestamp,
) -> impl Future<Output = Result<Response<Body>, GatewayError>> + 'a {
    let plan = model::plan(live, key, route, head, body, record);
    async move {
        // A match on the captured value itself: `plan?` would be a temporary kept across the
        // body's read, beside it.
        let mut inspected: Inspected = match plan {
            Err(e) => return Err(e),
            Ok(Plan::Stream(unread)) => unread,
            // Boxed: reading a body is the larger future, and not every request's.
            Ok(Plan::Read(body)) => {
                Box::pin(model::inspect(live, key, route, head, body, caller, record)).await?
            }
        };
        let upstream = Arc::clone(proxy::choose(live, route, inspected.model.as_deref())?);
        if let Some(m) = inspected.model.take() {
            record.model = Some(m);
        }
        if let Some(estimate) = inspected.token_estimate(key, route, &live.config.limits) {
            record.estimated_tokens = Some(estimate);
            record.quota_held = limit::hold_quota_tokens(key, quota_now, estimate, limits)?;
            if let Reservation::Checked(info, charge) =
                limit::reserve_tokens(redis, key, estimate).await
            {
                limits.tokens = Some(info);
                limit::token_verdict(&info)?;
                record.token_charge = Some(charge);
            }
        }
        // Boxed: the wait for the upstream is the request's largest state (576 bytes); inline,
        // it would make the request's future, copied whole into its box when the request
        // starts, that much larger. (At 256 connections the box is cold too: callgrind counts
        // about 7 last-level misses per request copying the wait into it.)
        // Bound before the block ends, as in `stages`: the box borrows `upstream`.
        let prefix = &live.config.keys.prefix;
        let sending = proxy::forward(
            &upstream,
            key,
            route,
            take(head),
            inspected,
            caller,
            prefix,
            record,
        )?;
        let answer = Box::pin(sending).await;
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn output_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every byte of a request's future is written at least once per request, into memory
    /// that is cold at every request when many connections are open (benches/RESULTS.md,
    /// last-level misses at 256 connections). What made it large: `async fn`s, which keep
    /// their arguments twice; a `?` on a future's result, a temporary kept across its wait
    /// (2,792 bytes before those, 1,800 after); and the request passed down by value, which
    /// `handle` and `stages` each kept after handing it on, beside the head `forward` split
    /// off (1,232 bytes since the head is owned once, by `handle`, and borrowed below).
    #[test]
    fn a_requests_future_stays_small() {
        let size = output_size(handle);
        assert!(size <= 1280, "the request's future is {size} bytes");
    }

    /// The wait for an upstream's answer holds the request once, and only until it is sent:
    /// 1,280 bytes as an `async fn` that held it twice and its own state beside the pool's,
    /// 720 as an `async` block that kept the request it had handed to hyper, 416 written out
    /// (`proxy::pool::send`).
    #[tokio::test]
    async fn the_wait_for_an_upstream_holds_the_request_once() {
        let toml = "[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:9\"\nmodels = [\"*\"]\n";
        let gw = Gateway::new(Config::parse(toml, None).unwrap());
        let live = gw.live();
        let sending = live.upstreams[0].send(
            Request::new(UpBody::full(Bytes::new())),
            std::time::Instant::now(),
            None,
        );
        let size = std::mem::size_of_val(&sending);
        assert!(size <= 448, "the wait for the head is {size} bytes");
    }
}
