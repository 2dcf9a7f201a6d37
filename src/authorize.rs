//! Stage 3 of a request: which scope a route needs, and whether the key may use the model.
//!
//! Deny by default: a method and path that match no route are refused before anything is
//! forwarded, and so is a path that an upstream might normalise into a different route
//! (`..`, `//`, encoded slashes and dots).

use crate::scope::{Scope, Scopes};
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
    /// Whether the JSON body carries a `model` to check and route by.
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
    if !path.starts_with('/') || path.contains("//") || path.contains('\\') {
        return false;
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    !["%2f", "%2e", "%5c", "%00"]
        .iter()
        .any(|e| lower.contains(e))
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
            p if under(p, "/v1/responses") => fwd(Scope::Responses, post && p == "/v1/responses"),
            // Audio uploads are multipart: their model is not checked (see README).
            p if p.starts_with("/v1/audio/") => fwd(Scope::Audio, false),
            p if p.starts_with("/v1/images/") => {
                fwd(Scope::Images, post && p == "/v1/images/generations")
            }
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
        ] {
            assert!(!is_normal_path(p), "{p}");
        }
        assert!(is_normal_path("/v1/models/meta-llama/Llama-3.1-8B"));
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
