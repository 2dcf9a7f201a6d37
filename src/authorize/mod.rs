//! Stage 3 of a request: which scope a route needs, and whether the key may use the model.
//!
//! Deny by default: a method and path that match no route are refused before anything is
//! forwarded, and so is a path that an upstream might normalise into a different route
//! (`..`, `//`, encoded slashes and dots, `;` path parameters).

pub mod multipart;

use crate::keys::scope::{Scope, Scopes};
use http::Method;
use serde::Deserialize;
use std::borrow::Cow;

/// What the gateway does with a matched route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Forward to an upstream.
    Forward,
    /// `GET /v1/models`: the union of the upstreams' models that the key may use.
    ListModels,
    /// `GET /v1/models/{id}`: forwarded to the upstream serving that model.
    RetrieveModel,
    /// The management API (SPEC §7).
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

/// The route table: operators' `[[route]]`s first (so they can override), then SPEC §2.
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

/// Why a path could be read differently by an upstream, or `None` for a path in normal form.
/// Allocation-free: the encoded forms are looked for only when the path has a `%`.
pub fn path_problem(path: &str) -> Option<&'static str> {
    const SEPARATORS: &str =
        "The request path is not in normal form (no `..`, `//` or encoded separators).";
    let b = path.as_bytes();
    if !path.starts_with('/') || memchr::memmem::find(b, b"//").is_some() || b.contains(&b'\\') {
        return Some(SEPARATORS);
    }
    // `/a/..;/b` is `/a/..` to a servlet container and `/b` to others: a path parameter is
    // no part of any API route.
    if b.contains(&b';') {
        return Some("The request path contains `;` (a path parameter); no API route has one.");
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Some(SEPARATORS);
    }
    if memchr::memchr(b'%', b).is_some() {
        let encoded = |e: &[u8]| b.windows(3).any(|w| w.eq_ignore_ascii_case(e));
        if encoded(b"%3b") {
            return Some(
                "The request path contains an encoded `;` (a path parameter); no API route has one.",
            );
        }
        if [b"%2f", b"%2e", b"%5c", b"%00"].iter().any(|e| encoded(*e)) {
            return Some(SEPARATORS);
        }
    }
    None
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
        match path {
            "/v1/chat/completions" if post => fwd(Scope::Chat, true),
            "/v1/completions" if post => fwd(Scope::Completions, true),
            "/v1/embeddings" if post => fwd(Scope::Embeddings, true),
            "/v1/models" if get => Some(RouteMatch {
                scope: Scope::Models,
                handler: Handler::ListModels,
                has_model: false,
            }),
            "/v1/moderations" if post => fwd(Scope::Moderations, true),
            "/v1/rerank" | "/rerank" if post => fwd(Scope::Rerank, true),
            "/tokenize" | "/detokenize" if post => fwd(Scope::Tokenize, true),
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

/// Compiles one model glob (`*`, `?`, `[a-z]`, `{a,b}`); `*` also matches `/`.
pub fn compile_glob(pattern: &str) -> Result<globset::Glob, String> {
    if pattern.trim().is_empty() {
        return Err("a model pattern is empty".into());
    }
    globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .map_err(|e| format!("`{pattern}` is not a valid glob: {e}"))
}

/// Builds a key's model allowlist; an empty list allows every model.
pub fn compile_allowlist(patterns: &[String]) -> Result<Option<globset::GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        b.add(compile_glob(p)?);
    }
    b.build().map(Some).map_err(|e| e.to_string())
}

/// The fields of an OpenAI request body the gateway looks at. Everything else is skipped
/// without being copied.
#[derive(Debug, Default, Deserialize)]
pub struct BodyFacts<'a> {
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub max_completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub max_output_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// A count the gateway only uses for estimates: anything that is not a whole number is
/// left for the upstream to judge.
fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(serde_json::Value::deserialize(d)?.as_u64())
}

/// What the request path keeps of a body's facts, owned.
#[derive(Debug, Clone)]
pub struct Summary {
    pub model: String,
    pub stream: bool,
    /// The client asked for `stream_options.include_usage`.
    pub wants_usage: bool,
    /// `max_completion_tokens`, `max_tokens` or `max_output_tokens`, if given.
    pub completion_budget: Option<u64>,
}

impl BodyFacts<'_> {
    pub fn summary(&self) -> Summary {
        Summary {
            model: self.model.as_deref().unwrap_or_default().to_string(),
            stream: self.stream == Some(true),
            wants_usage: self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            completion_budget: self
                .max_completion_tokens
                .or(self.max_tokens)
                .or(self.max_output_tokens),
        }
    }
}

/// The same JSON body with `stream_options.include_usage = true`, or `None` if it is not
/// a JSON object.
pub fn with_stream_usage(body: &[u8]) -> Option<bytes::Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    let opts = obj
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    if !opts.is_object() {
        *opts = serde_json::json!({});
    }
    opts.as_object_mut()?
        .insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&v).ok().map(bytes::Bytes::from)
}

/// Why a body cannot be checked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the request body is not valid JSON: {0}")]
    NotJson(String),
    #[error("the request body has no `model` field (a string naming the model)")]
    NoModel,
    #[error("the request body has more than one `model` field")]
    TwoModels,
    #[error("the request has more than one Content-Type header")]
    TwoContentTypes,
    #[error("the Content-Type header cannot be read (a multipart/form-data body needs exactly one `boundary`)")]
    BadContentType,
    #[error("the request body is compressed (`Content-Encoding`); send it uncompressed so that its `model` can be checked")]
    Compressed,
    #[error("the form body contains a raw `;`, which form parsers split differently; percent-encode it as %3B")]
    FormSemicolon,
    #[error("the form body has a field named like `model` but spelled differently; name it exactly `model`")]
    FormAmbiguous,
}

/// How a request body is encoded, for finding its `model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    /// JSON, and anything that is not a form: upstreams such as llama.cpp read a body as JSON
    /// whatever its Content-Type says, so a body that is not JSON cannot pass as "no model".
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `multipart/form-data`, read as it streams (`multipart`).
    Multipart { boundary: String },
}

/// The body's kind from its headers. A second Content-Type, or a multipart one with two
/// boundaries, is refused: the upstream might take the other one.
pub fn body_kind(headers: &http::HeaderMap) -> Result<BodyKind, BodyError> {
    use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
    if headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
    {
        return Err(BodyError::Compressed);
    }
    let mut all = headers.get_all(CONTENT_TYPE).iter();
    let Some(ct) = all.next() else {
        return Ok(BodyKind::Json);
    };
    if all.next().is_some() {
        return Err(BodyError::TwoContentTypes);
    }
    let ct = ct.to_str().map_err(|_| BodyError::BadContentType)?;
    let essence = ct.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("multipart/form-data") {
        // (A boundary has no `;`: RFC 2046 `bchars`.)
        let boundaries = ct
            .split(';')
            .filter(|p| {
                p.split_once('=')
                    .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("boundary"))
            })
            .count();
        if boundaries != 1 {
            return Err(BodyError::BadContentType);
        }
        let boundary = multer::parse_boundary(ct).map_err(|_| BodyError::BadContentType)?;
        return Ok(BodyKind::Multipart { boundary });
    }
    if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Ok(BodyKind::Form);
    }
    Ok(BodyKind::Json)
}

/// The `model` of a form-urlencoded body, `None` when it has none (or an empty one).
pub fn form_model(body: &[u8]) -> Result<Option<String>, BodyError> {
    // Some parsers also split pairs on `;` (older Python): refuse what they would read
    // differently from `&`-only parsers.
    if body.contains(&b';') {
        return Err(BodyError::FormSemicolon);
    }
    let mut model = None;
    for (name, value) in form_urlencoded::parse(body) {
        if name == "model" {
            if model.replace(value).is_some() {
                return Err(BodyError::TwoModels);
            }
        } else if name.trim().eq_ignore_ascii_case("model") {
            return Err(BodyError::FormAmbiguous);
        }
    }
    Ok(model.filter(|m| !m.is_empty()).map(|m| m.into_owned()))
}

/// Reads the `model` (and `stream`) of a JSON body.
pub fn body_facts(body: &[u8]) -> Result<BodyFacts<'_>, BodyError> {
    let facts: BodyFacts =
        serde_json::from_slice(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    if facts.model.as_deref().is_none_or(str::is_empty) {
        return Err(BodyError::NoModel);
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes() {
        let t = RouteTable::default();
        let r = |m: Method, p: &str| t.resolve(&m, p).map(|r| r.scope);
        assert_eq!(r(Method::POST, "/v1/chat/completions"), Some(Scope::Chat));
        assert_eq!(
            r(Method::GET, "/v1/models/meta-llama/Llama-3-8B"),
            Some(Scope::Models)
        );
        assert_eq!(
            r(Method::GET, "/v1/responses/resp_1/input_items"),
            Some(Scope::Responses)
        );
        assert_eq!(
            r(Method::POST, "/v1/audio/transcriptions"),
            Some(Scope::Audio)
        );
        assert_eq!(r(Method::DELETE, "/v1/api-keys/key_x"), Some(Scope::Admin));
        assert_eq!(r(Method::POST, "/tokenize"), Some(Scope::Tokenize));
        assert_eq!(r(Method::GET, "/v1/chat/completions"), None);
        assert_eq!(r(Method::POST, "/v1/responsesX"), None);
        assert_eq!(r(Method::GET, "/metrics"), None);
        // HEAD wherever GET.
        assert_eq!(r(Method::HEAD, "/v1/models"), Some(Scope::Models));
        assert_eq!(r(Method::HEAD, "/v1/models/m"), Some(Scope::Models));
        assert_eq!(r(Method::HEAD, "/v1/usage"), Some(Scope::Usage));
        assert_eq!(r(Method::HEAD, "/v1/chat/completions"), None);
        let carries = |p: &str| t.resolve(&Method::POST, p).unwrap().has_model;
        for p in [
            "/v1/responses",
            "/v1/responses/",
            "/v1/audio/speech",
            "/v1/audio/transcriptions/",
            "/v1/audio/translations",
            "/v1/images/generations/",
            "/v1/images/edits",
            "/v1/images/variations",
        ] {
            assert!(carries(p), "{p}");
        }
        assert!(!carries("/v1/responses/resp_1/cancel"));
        assert!(!t.resolve(&Method::GET, "/v1/responses").unwrap().has_model);
    }

    #[test]
    fn body_kinds() {
        let kind = |pairs: &[(&'static str, &'static str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, http::HeaderValue::from_static(v));
            }
            body_kind(&h)
        };
        assert_eq!(kind(&[]), Ok(BodyKind::Json));
        assert_eq!(kind(&[("content-type", "text/plain")]), Ok(BodyKind::Json));
        assert_eq!(
            kind(&[(
                "content-type",
                "Application/X-WWW-Form-Urlencoded; charset=utf-8"
            )]),
            Ok(BodyKind::Form)
        );
        assert_eq!(
            kind(&[(
                "content-type",
                "multipart/form-data; boundary=\"a-boundary\""
            )]),
            Ok(BodyKind::Multipart {
                boundary: "a-boundary".into()
            })
        );
        for bad in [
            "multipart/form-data",
            "multipart/form-data; boundary=a; boundary=b",
            "multipart/form-data; boundary=a; BOUNDARY=b",
        ] {
            let h = [("content-type", bad)];
            assert_eq!(kind(&h), Err(BodyError::BadContentType), "{bad}");
        }
        assert_eq!(
            kind(&[("content-type", "a/b"), ("content-type", "c/d")]),
            Err(BodyError::TwoContentTypes)
        );
        assert_eq!(
            kind(&[("content-encoding", "gzip")]),
            Err(BodyError::Compressed)
        );
        assert_eq!(
            kind(&[("content-encoding", "identity")]),
            Ok(BodyKind::Json)
        );
    }

    #[test]
    fn form_models() {
        assert_eq!(form_model(b"model=llama-3&x=1"), Ok(Some("llama-3".into())));
        assert_eq!(form_model(b"mod%65l=gpt%2D4"), Ok(Some("gpt-4".into())));
        assert_eq!(form_model(b"x=1"), Ok(None));
        assert_eq!(form_model(b"model="), Ok(None));
        assert_eq!(form_model(b"model=a&model=b"), Err(BodyError::TwoModels));
        assert_eq!(
            form_model(b"model=a;model=b"),
            Err(BodyError::FormSemicolon)
        );
        assert_eq!(form_model(b"Model=gpt-4"), Err(BodyError::FormAmbiguous));
    }

    #[test]
    fn extra_routes_come_first() {
        let rule = RouteRule::new(
            Some(Method::POST),
            "/v1/score",
            Scopes::EMPTY.with(Scope::Rerank),
        )
        .unwrap();
        let prefix =
            RouteRule::new(None, "/pooling/*", Scopes::EMPTY.with(Scope::Embeddings)).unwrap();
        let t = RouteTable::with_extra(vec![rule, prefix]);
        assert_eq!(
            t.resolve(&Method::POST, "/v1/score").unwrap().scope,
            Scope::Rerank
        );
        assert_eq!(
            t.resolve(&Method::GET, "/pooling/x").unwrap().scope,
            Scope::Embeddings
        );
        let get = RouteRule::new(
            Some(Method::GET),
            "/v1/score",
            Scopes::EMPTY.with(Scope::Rerank),
        )
        .unwrap();
        let t = RouteTable::with_extra(vec![get]);
        assert!(t.resolve(&Method::HEAD, "/v1/score").is_some());
        assert!(t.resolve(&Method::POST, "/v1/score").is_none());
        assert!(RouteRule::new(None, "/x", Scopes::inference()).is_err());
    }

    #[test]
    fn abnormal_paths() {
        for p in [
            "/v1/responses/../api-keys",
            "//v1/models",
            "/v1/x%2F..",
            "/v1/./models",
            "/a\\b",
            "/v1/audio/..;/chat/completions",
            "/v1/audio/x;y/speech",
            "/v1/chat/completions;",
            "/v1/audio/..%3B/chat/completions",
            "/v1/audio/..%3b/chat/completions",
        ] {
            assert!(!is_normal_path(p), "{p}");
        }
        assert!(path_problem("/v1/audio/..;/chat").unwrap().contains("`;`"));
        assert!(is_normal_path("/v1/models/meta-llama/Llama-3.1-8B"));
        assert!(is_normal_path("/v1/models/a%20b"));
    }

    #[test]
    fn body_model() {
        assert_eq!(
            body_facts(br#"{"messages":[],"model":"llama-3"}"#)
                .unwrap()
                .model
                .unwrap(),
            "llama-3"
        );
        assert_eq!(
            body_facts(br#"{"messages":[]}"#).unwrap_err(),
            BodyError::NoModel
        );
        assert!(matches!(body_facts(b"{nope"), Err(BodyError::NotJson(_))));
        let set = compile_allowlist(&["llama-*".into()]).unwrap().unwrap();
        assert!(set.is_match("llama-3/8b") && !set.is_match("gpt-4"));
    }
}
