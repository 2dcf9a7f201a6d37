//! The route table: which scope a method and path need, and what the gateway does with them.
//!
//! Deny by default: a method and path that match no route are refused before anything is
//! forwarded, and so is a path that an upstream might normalise into a different route
//! (`..`, `//`, encoded slashes and dots, `;` path parameters, an encoded letter).

use crate::keys::scope::{Scope, Scopes};
use http::Method;

/// What the gateway does with a matched route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Forward to an upstream.
    Forward,
    /// `GET /v1/models`: the union of the upstreams' models that the key may use.
    ListModels,
    /// `GET /v1/models/{id}`: forwarded to the upstream serving that model.
    RetrieveModel,
    /// The management API (reference: Management API).
    Admin,
    /// `GET /v1/usage`.
    Usage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    pub scope: Scope,
    pub handler: Handler,
    /// Whether the body (JSON, multipart or form) carries a `model` to check and route by: a
    /// key with a model allowlist must name one here. Bodies on other routes are checked for
    /// a `model` too, but may go without one.
    pub has_model: bool,
}

/// An extra route from `[[route]]` in gateway.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    method: Option<Method>,
    path: String,
    /// The path ends in `/*`: it and everything below it.
    prefix: bool,
    scope: Scope,
}

impl RouteRule {
    pub fn new(method: Option<Method>, path: &str, scopes: Scopes) -> Result<RouteRule, String> {
        let mut it = scopes.iter();
        let (Some(scope), None) = (it.next(), it.next()) else {
            return Err("`scope` must name exactly one scope".into());
        };
        if !path.starts_with('/') || !is_normal_path(path.trim_end_matches("/*")) {
            return Err(format!(
                "`path` `{path}` must start with `/` and be in normal form"
            ));
        }
        let (path, prefix) = match path.strip_suffix("/*") {
            Some(p) => (p.to_string(), true),
            None => (path.to_string(), false),
        };
        Ok(RouteRule {
            method,
            path,
            prefix,
            scope,
        })
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.method
            .as_ref()
            .is_none_or(|m| m == method || (*m == Method::GET && *method == Method::HEAD))
            && if self.prefix {
                under(path, &self.path)
            } else {
                path == self.path
            }
    }
}

/// The route table: operators' `[[route]]`s first (so they can override), then reference: Scopes and routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    extra: Vec<RouteRule>,
}

/// `path` is `base` or below it.
fn under(path: &str, base: &str) -> bool {
    path.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Rejects paths an upstream could read differently from us.
pub fn is_normal_path(path: &str) -> bool {
    path_problem(path).is_none()
}

const SEPARATORS: &str =
    "The request path is not in normal form (no `..`, `//` or encoded separators).";

/// Why a path could be read differently by an upstream, or `None` for a path in normal form.
/// One pass over the bytes, allocation-free: the encoded forms are looked for only when the
/// path has a `%`. (The order of the checks decides which message a path with several
/// problems gets: separators, then `;`, then dot segments, then encodings.)
pub fn path_problem(path: &str) -> Option<&'static str> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Some(SEPARATORS);
    }
    let (mut semicolon, mut percent, mut dot_segment) = (false, false, false);
    let mut segment = 1; // where the current segment starts
    for i in 1..=b.len() {
        let c = b.get(i).copied();
        match c {
            Some(b'\\') => return Some(SEPARATORS),
            Some(b';') => semicolon = true,
            Some(b'%') => percent = true,
            None | Some(b'/') => {
                let seg = b.get(segment..i).unwrap_or_default();
                if seg.is_empty() && c.is_some() {
                    return Some(SEPARATORS); // `//`
                }
                dot_segment |= seg == b"." || seg == b"..";
                segment = i + 1;
            }
            Some(_) => {}
        }
    }
    // `/a/..;/b` is `/a/..` to a servlet container and `/b` to others: a path parameter is
    // no part of any API route.
    if semicolon {
        return Some("The request path contains `;` (a path parameter); no API route has one.");
    }
    if dot_segment {
        return Some(SEPARATORS);
    }
    if percent {
        return encoding_problem(b);
    }
    None
}

/// Why a path with a `%` could be read differently: an encoded `;`, separator, dot or NUL, or
/// an encoded unreserved character, which every upstream decodes (RFC 3986 §6.2.2.2) and this
/// table would not: `/v1/audio/%73peech` is the speech route, with a model to check, to them.
fn encoding_problem(b: &[u8]) -> Option<&'static str> {
    let encoded = |e: &[u8]| b.windows(3).any(|w| w.eq_ignore_ascii_case(e));
    if encoded(b"%3b") {
        return Some(
            "The request path contains an encoded `;` (a path parameter); no API route has one.",
        );
    }
    if [b"%2f", b"%2e", b"%5c", b"%00"].iter().any(|e| encoded(*e)) {
        return Some(SEPARATORS);
    }
    let hex = |c: u8| (c as char).to_digit(16);
    let unreserved = |w: &[u8]| match (w[0], hex(w[1]), hex(w[2])) {
        (b'%', Some(h), Some(l)) => {
            matches!(h * 16 + l, 0x30..=0x39 | 0x41..=0x5a | 0x61..=0x7a | 0x2d | 0x5f | 0x7e)
        }
        _ => false,
    };
    b.windows(3).any(unreserved).then_some(
        "The request path percent-encodes a letter, digit, `-`, `_` or `~`, which an upstream would decode into another route; send it unencoded.",
    )
}

/// `path` without one trailing `/`.
fn trim_slash(path: &str) -> &str {
    path.strip_suffix('/').unwrap_or(path)
}

impl RouteTable {
    pub fn with_extra(extra: Vec<RouteRule>) -> RouteTable {
        RouteTable { extra }
    }

    /// The route for a request, or `None` (deny by default).
    pub fn resolve(&self, method: &Method, path: &str) -> Option<RouteMatch> {
        if let Some(rule) = self.extra.iter().find(|r| r.matches(method, path)) {
            return Some(RouteMatch {
                scope: rule.scope,
                handler: Handler::Forward,
                has_model: *method == Method::POST,
            });
        }
        let post = *method == Method::POST;
        // HEAD goes wherever GET does.
        let get = *method == Method::GET || *method == Method::HEAD;
        let fwd = |scope, has_model| {
            Some(RouteMatch {
                scope,
                handler: Handler::Forward,
                has_model,
            })
        };
        // A route that carries a model matches with one trailing `/` too (many servers take
        // it for the same endpoint); the path goes upstream as the client sent it.
        if post {
            let fixed = match trim_slash(path) {
                "/v1/chat/completions" => Some(Scope::Chat),
                "/v1/completions" => Some(Scope::Completions),
                "/v1/embeddings" => Some(Scope::Embeddings),
                "/v1/moderations" => Some(Scope::Moderations),
                "/v1/rerank" | "/rerank" => Some(Scope::Rerank),
                "/tokenize" | "/detokenize" => Some(Scope::Tokenize),
                _ => None,
            };
            if let Some(scope) = fixed {
                return fwd(scope, true);
            }
        }
        match path {
            "/v1/models" if get => Some(RouteMatch {
                scope: Scope::Models,
                handler: Handler::ListModels,
                has_model: false,
            }),
            "/v1/usage" if get => Some(RouteMatch {
                scope: Scope::Usage,
                handler: Handler::Usage,
                has_model: false,
            }),
            p if under(p, "/v1/api-keys") => Some(RouteMatch {
                scope: Scope::Admin,
                handler: Handler::Admin,
                has_model: false,
            }),
            p if get && p.len() > "/v1/models/".len() && p.starts_with("/v1/models/") => {
                Some(RouteMatch {
                    scope: Scope::Models,
                    handler: Handler::RetrieveModel,
                    has_model: false,
                })
            }
            // Under the prefix routes, a trailing `/` is the same endpoint to many servers:
            // it carries the model too. Any other body is still checked for one (`gateway`).
            p if under(p, "/v1/responses") => {
                fwd(Scope::Responses, post && trim_slash(p) == "/v1/responses")
            }
            p if p.starts_with("/v1/audio/") => fwd(
                Scope::Audio,
                post && matches!(
                    trim_slash(p),
                    "/v1/audio/speech" | "/v1/audio/transcriptions" | "/v1/audio/translations"
                ),
            ),
            p if p.starts_with("/v1/images/") => fwd(
                Scope::Images,
                post && matches!(
                    trim_slash(p),
                    "/v1/images/generations" | "/v1/images/edits" | "/v1/images/variations"
                ),
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
