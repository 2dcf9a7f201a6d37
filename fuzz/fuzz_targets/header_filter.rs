//! `headers::sanitize_request` on arbitrary headers: no credential, hop-by-hop or
//! gateway-owned header ever survives (reference: Forwarding), and nothing else is touched.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

/// Names the filter must remove, in the spellings clients send.
const INTERESTING: [&str; 20] = [
    "Authorization",
    "authorization",
    "X-Api-Key",
    "x-api-key",
    "Proxy-Authorization",
    "Connection",
    "connection",
    "Transfer-Encoding",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Upgrade",
    "Proxy-Connection",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Keygate-Key-Id",
    "Content-Type",
    "X-Request-Id",
    "Accept",
    "Host",
];

/// Never forwarded upstream, whatever else the request holds.
const MUST_GO: [&str; 13] = [
    "authorization",
    "x-api-key",
    "proxy-authorization",
    "connection",
    "transfer-encoding",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-keygate-key-id",
];

fuzz_target!(|pairs: Vec<(u8, Vec<u8>, Vec<u8>)>| {
    let mut headers = HeaderMap::new();
    for (pick, name, value) in &pairs {
        let name = match INTERESTING.get(*pick as usize) {
            Some(n) => HeaderName::from_bytes(n.as_bytes()),
            None => HeaderName::from_bytes(name),
        };
        let (Ok(name), Ok(value)) = (name, HeaderValue::from_bytes(value)) else {
            continue;
        };
        headers.append(name, value);
    }
    // Headers the client listed in `Connection` are hop-by-hop too.
    let listed: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let before = headers.clone();

    keygate::proxy::headers::sanitize_request(
        &mut headers,
        HeaderValue::from_static("upstream:8000"),
    );

    // Every `Host` the client sent is replaced by the upstream's one.
    let host: Vec<_> = headers.get_all(http::header::HOST).iter().collect();
    assert_eq!(host, ["upstream:8000"], "Host not replaced: {headers:?}");
    headers.remove(http::header::HOST);

    for name in MUST_GO {
        assert!(
            !headers.contains_key(name),
            "`{name}` survived: {headers:?}"
        );
    }
    for name in &listed {
        assert!(
            !headers.contains_key(name),
            "`{name}` named in Connection survived"
        );
    }
    // What is left is a subset of what came in, values untouched.
    for (name, value) in &headers {
        assert!(
            before.get_all(name).iter().any(|v| v == value),
            "`{name}` was altered"
        );
    }
});
