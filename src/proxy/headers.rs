//! Header hygiene at the boundary: what must never cross the gateway in either direction.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and are removed both ways,
//! including any header the `Connection` header names. Client credentials are removed before
//! anything goes upstream, and the forwarding headers the gateway sets itself are removed
//! first, so a client cannot spoof its address or its key id.

use http::header::{self, HeaderMap, HeaderName};

// Names the gateway sets, parsed once: a `&str` name is parsed and hashed again on every use.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_KEYGATE_KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Always hop-by-hop, whatever `Connection` says.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Never forwarded upstream: credentials and headers only the gateway may set.
const CLIENT_ONLY: [HeaderName; 9] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    header::COOKIE,
    header::FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
    X_KEYGATE_KEY_ID,
];

/// Removes hop-by-hop headers, including those listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_connection_listed(headers);
    // `Proxy-Connection` is a non-standard hop-by-hop header some clients still send.
    remove_listed(headers, &[&HOP_BY_HOP, &[PROXY_CONNECTION]]);
}

/// Removes the headers `Connection` names, when it names more than the connection's state.
fn strip_connection_listed(headers: &mut HeaderMap) {
    if let Some(listed) = headers.get(header::CONNECTION) {
        // The common cases name nothing but the connection's own state.
        let v = listed.as_bytes();
        let plain = v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close");
        if !plain || headers.get_all(header::CONNECTION).iter().count() > 1 {
            strip_connection_named(headers);
        }
    }
}

/// Removes every header named in `lists`: a pass over the few headers a message has, instead
/// of a hash lookup for each of the ~20 listed names, most of them absent. Each one found is
/// removed by the listed name (no clone of the message's, no list of them allocated), and the
/// pass starts again.
fn remove_listed(headers: &mut HeaderMap, lists: &[&[HeaderName]]) {
    let listed = |n: &HeaderName| lists.iter().flat_map(|l| l.iter()).find(|l| *l == n);
    while let Some(name) = headers.keys().find_map(listed) {
        headers.remove(name);
    }
}

fn strip_connection_named(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Prepares a client's headers for the upstream: hop-by-hop, credentials and spoofable
/// forwarding headers removed; `Host` dropped so the client sets the upstream's own.
pub fn sanitize_request(headers: &mut HeaderMap) {
    strip_connection_listed(headers);
    remove_listed(
        headers,
        &[&HOP_BY_HOP, &[PROXY_CONNECTION, header::HOST], &CLIENT_ONLY],
    );
}

/// Removes every header whose value contains `secret`: a client that sends its key twice
/// (`Authorization` and Azure-style `api-key`, or any custom header) must not leak the copy.
pub fn remove_containing(headers: &mut HeaderMap, secret: &str) {
    if secret.len() < 8 {
        return; // not a real key: nothing a substring search could protect
    }
    // Most values are shorter than a key: only build the searcher when one is not.
    if !headers.values().any(|v| v.len() >= secret.len()) {
        return;
    }
    let finder = memchr::memmem::Finder::new(secret.as_bytes());
    let leaking: Vec<HeaderName> = headers
        .iter()
        .filter(|(_, v)| v.len() >= secret.len() && finder.find(v.as_bytes()).is_some())
        .map(|(n, _)| n.clone())
        .collect();
    for name in leaking {
        headers.remove(&name);
    }
}

/// Prepares an upstream's headers for the client.
pub fn sanitize_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("content-type", "application/json"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn copies_of_the_credential_are_removed_whatever_the_header() {
        let mut h = HeaderMap::new();
        h.append("api-key", HeaderValue::from_static("sk_kg_SECRETSECRET"));
        h.append(
            "truthorization",
            HeaderValue::from_static("b Bearer sk_kg_SECRETSECRET"),
        );
        h.append("x-other", HeaderValue::from_static("fine"));
        remove_containing(&mut h, "sk_kg_SECRETSECRET");
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-other"]);
    }

    #[test]
    fn never_forwards_credentials_or_spoofed_forwarding() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer sk_kg_x"),
            ("x-api-key", "sk_kg_x"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-keygate-key-id", "key_spoofed"),
            ("host", "evil"),
            ("x-request-id", "abc"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        sanitize_request(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-request-id"]);
    }
}
