//! The route table and the path checks.

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
fn extra_routes_come_first() {
    let rule = RouteRule::new(
        Some(Method::POST),
        "/v1/score",
        Scopes::EMPTY.with(Scope::Rerank),
    )
    .unwrap();
    let prefix = RouteRule::new(None, "/pooling/*", Scopes::EMPTY.with(Scope::Embeddings)).unwrap();
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
    // Found by a probe: the speech route, unseen, so no model was required.
    for p in [
        "/v1/audio/%73peech",
        "/v1/images/%67enerations",
        "/v1/x%5F%7e%2D%30%5a",
    ] {
        assert!(path_problem(p).unwrap().contains("a letter, digit"), "{p}");
    }
    assert!(is_normal_path("/v1/models/ollama%3Allama3%2B%25"));
    assert!(is_normal_path("/v1/models/meta-llama/Llama-3.1-8B"));
    assert!(is_normal_path("/v1/models/a%20b"));
    assert!(is_normal_path("/"));
    assert!(is_normal_path("/v1/models/"));
    assert!(is_normal_path("/v1/.well-known/x..y/...")); // dots inside a segment are fine
    assert!(!is_normal_path(""));
    assert!(!is_normal_path("v1/models"));
    assert!(!is_normal_path("/v1/.."));
    assert!(!is_normal_path("/v1/models//"));
}

/// The checks as first written, one scan per rule (the encodings' check, unchanged, is
/// shared): the one-pass `path_problem` must give the same answer, message included, for
/// every path.
fn path_problem_by_rules(path: &str) -> Option<&'static str> {
    let b = path.as_bytes();
    if !path.starts_with('/') || b.windows(2).any(|w| w == b"//") || b.contains(&b'\\') {
        return Some(SEPARATORS);
    }
    if b.contains(&b';') {
        return Some("The request path contains `;` (a path parameter); no API route has one.");
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Some(SEPARATORS);
    }
    if b.contains(&b'%') {
        return encoding_problem(b);
    }
    None
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
    #[test]
    fn one_pass_agrees_with_the_rules(path in "/?(/[.;%\\\\a2fF3bB5cCe0]{0,4}){1,4}") {
        proptest::prop_assert_eq!(path_problem(&path), path_problem_by_rules(&path));
    }
}
