//! Whole answers the gateway writes itself (probes, model lists, management answers), and
//! the bodiless answer to a HEAD request. Errors have their own: `error`.

use crate::proxy::response_body::Body;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body::Body as HttpBody;

/// A whole answer the gateway writes itself: `text/plain`.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// A whole answer the gateway writes itself: JSON.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The answer to a HEAD request: the GET answer's head, with its length, and no body. hyper
/// leaves the body out of an HTTP/1.1 HEAD answer but not out of an HTTP/2 one.
pub fn without_body(resp: &mut Response<Body>) {
    if let Some(n) = HttpBody::size_hint(resp.body()).exact() {
        if n > 0 && !resp.headers().contains_key(header::CONTENT_LENGTH) {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    *resp.body_mut() = Body::full(Bytes::new());
}
