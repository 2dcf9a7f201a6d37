//! What is answered before any stage, with no key: `/healthz` (the process is up), `/readyz`
//! (keys loaded, not draining, health-checked upstreams up) and the console's files. They are
//! not logged unless `[log] probes`, since a kubelet asks every few seconds.

use crate::admin::console;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::proxy::response_body::Body;
use crate::proxy::whole::text;
use http::{Method, Response, StatusCode};

/// The answer to a probe, if the request is one. HEAD is answered as GET (the pipeline drops
/// the body).
pub fn answer(
    gw: &Gateway,
    method: &Method,
    path: &str,
) -> Option<Result<Response<Body>, GatewayError>> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return None;
    }
    match path {
        "/healthz" => Some(Ok(text(StatusCode::OK, "ok\n"))),
        "/readyz" => Some(match gw.not_ready() {
            None => Ok(text(StatusCode::OK, "ready\n")),
            Some(why) => Err(GatewayError::Unready(why)),
        }),
        p if p.starts_with("/console") => console::asset(p).map(Ok),
        _ => None,
    }
}
