//! The web console (reference: Health and console endpoints): a static page embedded in the binary at compile time. It is
//! unauthenticated by design — it holds no data and does nothing by itself; every action it
//! offers is a call to the management API, authorized there by the admin key the user types
//! in (kept in the tab's `sessionStorage` only).

use crate::proxy::response_body::Body;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");
const CHART: &str = include_str!("../../console/chart.js");
const EDIT: &str = include_str!("../../console/edit.js");
const USAGE: &str = include_str!("../../console/usage.js");

/// No inline script or style, no third-party origin, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console asset at `path`, if it is one.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (body, content_type) = match path {
        "/console" | "/console/" => (INDEX, "text/html; charset=utf-8"),
        "/console/console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/console/console.css" => (STYLE, "text/css; charset=utf-8"),
        "/console/chart.js" => (CHART, "text/javascript; charset=utf-8"),
        "/console/edit.js" => (EDIT, "text/javascript; charset=utf-8"),
        "/console/usage.js" => (USAGE, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}
