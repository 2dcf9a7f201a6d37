//! Stage 3 of a request: what it may do. First its route (`route`, before authentication: a
//! path no route matches is refused without looking at the key), then whether the key has the
//! route's scope (`scope`), and on routes that name a model, whether the key may use it
//! (`model`, with the body read as far as needed: `body`, `json_body`, `multipart`).

pub mod body;
pub mod envelope;
pub mod json_body;
mod json_values;
pub mod model;
pub mod multipart;
pub mod part_name;
pub mod routes;

use crate::auth::credential::credential;
use crate::auth::secrets::{url_has_key, url_has_secret};
use crate::error::GatewayError;
use crate::gateway::Live;
use crate::keys::index::KeyRef;
use http::request::Parts;
use http::Method;
use routes::{path_problem, RouteMatch};

/// The route of a request, or the refusal: a method that is no API's, a path an upstream
/// could read differently, a key in the URL (before routing, so that no answer, a 404
/// included, repeats it), or no route (deny by default).
pub fn route(live: &Live, req: &Parts) -> Result<RouteMatch, GatewayError> {
    let path = req.uri.path();
    if !matches!(
        req.method,
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
            req.method.clone(),
            path.to_string(),
        ));
    }
    if let Some(problem) = path_problem(path) {
        return Err(GatewayError::InvalidRequest(problem.into()));
    }
    if url_has_key(path, req.uri.query(), &live.config.keys.prefix) {
        return Err(GatewayError::KeyInUrl);
    }
    live.config
        .routes
        .resolve(&req.method, path)
        .ok_or_else(|| unknown_route(live, req))
}

/// The 404 for a path no route matches, with a hint when the path is a route without its
/// `/v1` (a client whose `base_url` lacks it).
fn unknown_route(live: &Live, req: &Parts) -> GatewayError {
    let (method, path) = (&req.method, req.uri.path());
    // A credential that is not key-shaped could still be in the path: never repeat it.
    if let Ok(Some(c)) = credential(&req.headers) {
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

/// Refuses a key without the route's scope.
pub fn scope(key: &KeyRef, route: RouteMatch) -> Result<(), GatewayError> {
    if key.scopes.contains(route.scope) {
        Ok(())
    } else {
        Err(GatewayError::MissingScope(route.scope))
    }
}
