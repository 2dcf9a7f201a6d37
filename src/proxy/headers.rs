//! Header hygiene at the boundary: what must never cross the gateway in either direction.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and are removed both ways,
//! including any header the `Connection` header names. Client credentials are removed before
//! anything goes upstream, and the forwarding headers the gateway sets itself are removed
//! first, so a client cannot spoof its address or its key id.

use crate::auth::secrets::{contains_secret, holds_key_bytes, shortest_key};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// Names the gateway sets, parsed once: a `&str` name is parsed and hashed again on every use.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_KEYGATE_KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
/// A client credential (`auth::credential` reads it; it never goes upstream).
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Which way a message crosses the gateway: what it must lose depends on it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Crossing {
    /// A client's request on its way upstream.
    ToUpstream,
    /// An upstream's answer on its way to the client.
    ToClient,
}

/// The name to remove, when `name` is one that must not cross: hop-by-hop names (RFC 9110
/// §7.6.1, plus the non-standard `Proxy-Connection` some clients still send) both ways;
/// towards the upstream also credentials and what only a proxy in front may say about a
/// request: its client (`Forwarded`, every `X-Forwarded-*`, `X-Real-IP` and the CDNs'
/// client-address headers), its original URL or method (every `X-Original-*`,
/// `X-Rewrite-URL`, the method overrides), which frameworks behind the gateway honour.
/// (The client's `Host` is not removed but replaced: `sanitize_request`.)
///
/// One `match` on the name (a switch on its length, then one compare) instead of comparing
/// it with each of the ~30 names; the name returned is a constant where it can be, so
/// removing it needs no clone of the message's own.
fn must_not_cross(name: &HeaderName, crossing: Crossing) -> Option<HeaderName> {
    let hop = match name.as_str() {
        "connection" => Some(header::CONNECTION),
        "keep-alive" => Some(HeaderName::from_static("keep-alive")),
        "proxy-authenticate" => Some(header::PROXY_AUTHENTICATE),
        "proxy-authorization" => Some(header::PROXY_AUTHORIZATION),
        "proxy-connection" => Some(HeaderName::from_static("proxy-connection")),
        "te" => Some(header::TE),
        "trailer" => Some(header::TRAILER),
        "transfer-encoding" => Some(header::TRANSFER_ENCODING),
        "upgrade" => Some(header::UPGRADE),
        _ => None,
    };
    if hop.is_some() || crossing == Crossing::ToClient {
        return hop;
    }
    match name.as_str() {
        "authorization" => Some(header::AUTHORIZATION),
        "x-api-key" => Some(X_API_KEY),
        "cookie" => Some(header::COOKIE),
        "forwarded" => Some(header::FORWARDED),
        "x-forwarded-for" => Some(X_FORWARDED_FOR),
        "x-forwarded-proto" => Some(X_FORWARDED_PROTO),
        "x-forwarded-host" => Some(HeaderName::from_static("x-forwarded-host")),
        "x-real-ip" => Some(HeaderName::from_static("x-real-ip")),
        "x-keygate-key-id" => Some(X_KEYGATE_KEY_ID),
        "x-client-ip"
        | "true-client-ip"
        | "x-cluster-client-ip"
        | "cf-connecting-ip"
        | "fastly-client-ip"
        | "x-rewrite-url"
        | "x-http-method-override"
        | "x-http-method"
        | "x-method-override" => Some(name.clone()),
        n if n.starts_with("x-forwarded-") || n.starts_with("x-original-") => Some(name.clone()),
        _ => None,
    }
}

/// Removes hop-by-hop headers, including those listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_connection_listed(headers);
    remove_listed(headers, Crossing::ToClient);
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

/// Removes every header that must not cross: a pass over the few headers a message has; each
/// one found is removed (all its values) and the pass starts again.
fn remove_listed(headers: &mut HeaderMap, crossing: Crossing) {
    while let Some(name) = headers.keys().find_map(|n| must_not_cross(n, crossing)) {
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
/// forwarding headers removed; `Host` is the upstream's own, `host`, in place of every value
/// the client sent (one insert, not a removal and then an insert: this runs on every
/// request).
pub fn sanitize_request(headers: &mut HeaderMap, host: HeaderValue) {
    strip_connection_listed(headers);
    remove_listed(headers, Crossing::ToUpstream);
    headers.insert(header::HOST, host);
}

/// Removes every header whose value contains `secret` (the presented credential) or
/// anything shaped like a key of this gateway (`<prefix>_` and a run of base62, as it is or
/// percent-decoded): a client that sends its key twice (`Authorization` and Azure-style
/// `api-key`, or any custom header), or a second key beside its own, must not have the copy
/// reach the upstream, which has no use for a gateway's key and may log it.
pub fn remove_keys(headers: &mut HeaderMap, secret: &str, prefix: &str) {
    // Most values (a content type, a length, a host) are shorter than any key: the length
    // alone clears them, which the searches below would cost every request.
    let shortest = shortest_key(prefix).min(secret.len().max(8));
    // Bytes, not text: one `é` or `\xff` must not make the value skip the decoded search.
    let holds = |b: &[u8]| {
        b.len() >= shortest && (contains_secret(b, secret) || holds_key_bytes(b, prefix))
    };
    // A name can carry a key too (`x-sk_kg_…: 1`), lower-cased.
    let leaks =
        |(n, v): (&HeaderName, &HeaderValue)| holds(v.as_bytes()) || holds(n.as_str().as_bytes());
    // Most requests have none: only then is a list of names built.
    if !headers.iter().any(leaks) {
        return;
    }
    let leaking: Vec<HeaderName> = headers
        .iter()
        .filter(|&(n, v)| leaks((n, v)))
        .map(|(n, _)| n.clone())
        .collect();
    for name in leaking {
        headers.remove(&name);
    }
}

/// Prepares an upstream's headers for the client. An answer framed by `Transfer-Encoding`
/// has its body decoded by that framing, so a `Content-Length` beside it (which the upstream
/// had no business sending, RFC 9112 §6.3) does not describe the body the client gets: kept,
/// it would make the client's connection cut the body short and call it complete.
pub fn sanitize_response(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

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

    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    const CLIENT_ONLY: [&str; 25] = [
        "authorization",
        "x-api-key",
        "cookie",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        "x-keygate-key-id",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "x-client-ip",
        "true-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-original-url",
        "x-original-uri",
        "x-original-forwarded-for",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ];

    /// Every listed name, in any case the client wrote it, and every value it came with, is
    /// removed in the direction it must not cross, and only there; near-misses stay.
    #[test]
    fn each_listed_name_is_removed_only_where_it_must_not_cross() {
        let kept = [
            "x-api-keys",
            "hosts",
            "tee",
            "content-type",
            "x-forwarded",
            "x-originals",
            "x-real-ips",
        ];
        let build = || {
            let mut h = HeaderMap::new();
            for name in HOP.iter().chain(&CLIENT_ONLY).chain(&kept) {
                let upper = HeaderName::from_bytes(name.to_uppercase().as_bytes()).unwrap();
                h.append(upper, HeaderValue::from_static("close"));
                h.append(*name, HeaderValue::from_static("a"));
            }
            h
        };
        let mut up = build();
        up.append("HOST", HeaderValue::from_static("evil"));
        up.append("host", HeaderValue::from_static("evil2"));
        sanitize_request(&mut up, HeaderValue::from_static("upstream:8000"));
        let mut left: Vec<&str> = up.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        let mut want = kept.to_vec();
        want.push("host");
        want.sort_unstable();
        assert_eq!(left, want);
        assert!(up.get_all("content-type").iter().count() == 2);
        let host: Vec<_> = up.get_all("host").iter().collect();
        assert_eq!(
            host,
            ["upstream:8000"],
            "every Host the client sent is replaced"
        );

        let mut down = build();
        sanitize_response(&mut down);
        for name in HOP {
            assert!(!down.contains_key(name), "{name} reached the client");
        }
        for name in CLIENT_ONLY.iter().chain(&kept) {
            assert_eq!(down.get_all(*name).iter().count(), 2, "{name} was dropped");
        }
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
        remove_keys(&mut h, "sk_kg_SECRETSECRET", "sk_kg");
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-other"]);
    }

    #[test]
    fn any_key_of_the_gateway_is_removed_not_only_the_presented_one() {
        let other = "sk_kg_0123456789abcdefghijABCDEFGHIJ012345";
        let mut h = HeaderMap::new();
        h.append("x-second-key", HeaderValue::from_str(other).unwrap());
        let encoded = format!("t={}", other.replace('_', "%5F"));
        h.append("cookie-ish", HeaderValue::from_str(&encoded).unwrap());
        let mut raw = b"\xff ".to_vec();
        raw.extend_from_slice(other.as_bytes());
        h.append("x-binary", HeaderValue::from_bytes(&raw).unwrap());
        // Found by an outside probe: a byte that is not ASCII skipped the decoded search,
        // and a header's name was never searched.
        let mut accented = "café ".as_bytes().to_vec();
        accented.extend_from_slice(other.replace('_', "%5F").as_bytes());
        h.append("x-accented", HeaderValue::from_bytes(&accented).unwrap());
        let name = format!("x-{}", other.to_ascii_lowercase());
        h.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static("1"),
        );
        // Near misses stay: the prefix alone, another prefix, too short a run.
        h.append(
            "x-doc",
            HeaderValue::from_static("keys look like sk_kg_..."),
        );
        h.append("x-short", HeaderValue::from_static("sk_kg_abc123"));
        h.append(
            "x-openai",
            HeaderValue::from_static("sk-proj-0123456789abcdefghij"),
        );
        remove_keys(&mut h, "sk_kg_SECRETSECRET", "sk_kg");
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-doc", "x-openai", "x-short"]);
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
        sanitize_request(&mut h, HeaderValue::from_static("vllm.internal"));
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-request-id"]);
        assert_eq!(h["host"], "vllm.internal");
    }
}
