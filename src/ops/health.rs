//! Running the upstream health checks (`proxy::health`), for readiness: an upstream with `health = "/health"` is asked on
//! its own interval, in the background, and `/readyz` reads the cached answer. A probe never
//! causes a request upstream, however often the kubelet or a load balancer asks.
//!
//! Readiness with several upstreams: the gateway is ready when every upstream *that has a
//! health check* last answered it with a 2xx. An upstream without `health` never holds
//! readiness back, so an operator chooses which upstreams the pod cannot serve without (the
//! model server in the same pod) and which it can (a shared one elsewhere). A failing check
//! only affects readiness: requests are still forwarded and fail or succeed on their own.

use crate::gateway::Gateway;
use crate::proxy::health::{CheckError, HealthState, Status};
use crate::proxy::request_body::UpBody;
use crate::proxy::response_body::Body;
use crate::proxy::upstream::{error_chain, Upstream};
use http::header::{self, HeaderValue};
use http::{Request, Uri};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Checks every upstream with a health check when it is due, until the task is aborted.
/// Reads the live upstream list each round, so a config reload that adds, changes or removes
/// a check takes effect at once.
pub async fn run(gw: Arc<Gateway>) {
    loop {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);
        for u in gw.live().upstreams.iter() {
            let (Some(check), Some(state)) = (u.config.health.as_ref(), u.health()) else {
                continue;
            };
            let (start, next) = state.claim(now, check.interval);
            wake = wake.min(next);
            if start {
                tokio::spawn(check_one(Arc::clone(u), Arc::clone(state)));
            }
        }
        tokio::time::sleep_until(wake).await;
    }
}

async fn check_one(u: Arc<Upstream>, state: Arc<HealthState>) {
    let result = check(&u).await;
    let before = state.record(result.is_ok());
    u.series.set_up(result.is_ok());
    match (before, result) {
        (Status::Up, Ok(())) => {}
        (_, Ok(())) => tracing::info!(upstream = %u.name, "upstream health check passes"),
        (Status::Down, Err(_)) => {}
        (_, Err(e)) => {
            tracing::warn!(upstream = %u.name, error = %e, "upstream health check fails; not ready")
        }
    }
}

/// Runs `u`'s health check once: `GET` the check's path on a pooled connection, a 2xx within
/// the interval is up. The body is read (bounded) so the connection is reused.
pub async fn check(u: &Upstream) -> Result<(), CheckError> {
    let Some(check) = &u.config.health else {
        return Ok(());
    };
    let mut req = Request::new(UpBody::full(bytes::Bytes::new()));
    *req.uri_mut() = Uri::from(check.path.clone());
    let h = req.headers_mut();
    h.insert(header::HOST, u.host().clone());
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("keygate-health/", env!("CARGO_PKG_VERSION"))),
    );
    if let Some(k) = &u.config.api_key {
        h.insert(header::AUTHORIZATION, k.clone());
    }
    let attempt = async {
        let (resp, lease) = u
            .pool()
            .send(req, std::time::Instant::now())
            .await
            .map_err(|e| CheckError::Send(error_chain(&e)))?;
        let status = resp.status();
        let body = Body::upstream(resp.into_body(), lease, check.interval, None, false);
        // Up to 64 KiB is read so the connection goes back to the pool; more is dropped.
        let _ = http_body_util::Limited::new(body, 64 * 1024)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(CheckError::Status(status))
        }
    };
    tokio::time::timeout(check.interval, attempt)
        .await
        .map_err(|_| CheckError::Timeout(check.interval))?
}
