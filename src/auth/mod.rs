//! Stage 2 of a request: who is calling.
//!
//! Order matters for cost and for safety: a URL that carries a key is refused before
//! anything else (`url_has_key`); then exactly one credential is taken from the headers; its
//! format and checksum are verified without touching the index; only then is it hashed and
//! looked up. An address over its failed-attempt allowance gets its bad keys refused with
//! 429 (a malformed one before any hashing) while its valid keys are still served: behind a
//! proxy, many clients can share one address.

use crate::error::GatewayError;
use crate::keys::index::{KeyIndex, KeyRef, Secret};
use crate::keys::token::Token;
use crate::limit::FailedAuthGuard;
use crate::time::Timestamp;
use base64::Engine;
use http::header::{HeaderMap, AUTHORIZATION};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

/// Query parameters that would carry a key in a URL, which ends up in logs and histories.
const KEY_PARAMS: [&str; 6] = [
    "api_key",
    "api-key",
    "apikey",
    "key",
    "access_token",
    "token",
];

/// Base62 characters after `<prefix>_` from which a string is taken for a key (or a large
/// part of one): a whole key has 38.
const MIN_KEY_RUN: usize = 16;

/// The refusal for a URL that carries a key. It never repeats the URL.
pub fn key_in_url() -> GatewayError {
    GatewayError::InvalidRequest(
        "API keys are not accepted in the URL; send `Authorization: Bearer <key>`.".into(),
    )
}

/// True when `text` holds something shaped like a key of this gateway: `<prefix>_` and a
/// run of at least 16 base62 characters.
pub fn looks_like_key(text: &[u8], prefix: &str) -> bool {
    let p = prefix.as_bytes();
    memchr::memmem::find_iter(text, p).any(|i| {
        let rest = &text[i + p.len()..];
        rest.first() == Some(&b'_')
            && rest[1..]
                .iter()
                .take(MIN_KEY_RUN)
                .take_while(|b| b.is_ascii_alphanumeric())
                .count()
                == MIN_KEY_RUN
    })
}

/// True when `text` contains the presented credential. Credentials under 8 characters are
/// not real keys and are not searched for (every short string would match).
pub fn contains_secret(text: &[u8], credential: &str) -> bool {
    credential.len() >= 8 && memchr::memmem::find(text, credential.as_bytes()).is_some()
}

/// `text` percent-decoded up to three times (`%255F` is `_` to a client that decodes
/// twice), or `None` when it has no `%`. Only this case allocates.
fn decoded(text: &str) -> Option<Vec<u8>> {
    memchr::memchr(b'%', text.as_bytes())?;
    let mut cur: Vec<u8> = percent_encoding::percent_decode(text.as_bytes()).collect();
    for _ in 0..2 {
        match Cow::from(percent_encoding::percent_decode(&cur)) {
            Cow::Borrowed(_) => break,
            Cow::Owned(next) => cur = next,
        }
    }
    Some(cur)
}

/// True when `text` holds something shaped like a key, as it is or percent-decoded.
pub fn holds_key(text: &str, prefix: &str) -> bool {
    looks_like_key(text.as_bytes(), prefix)
        || decoded(text).is_some_and(|d| looks_like_key(&d, prefix))
}

/// True when the path or query carries a key: a key-named parameter (`api_key=`, …) or
/// anything shaped like a key anywhere, percent-decoded, whatever the separators around it
/// (`?q=Bearer%20sk_kg_…`, `?a=1;q=sk_kg_…`, `?q=sk%5Fkg_…`). Without a `%` in the URL this
/// neither allocates nor decodes.
pub fn url_has_key(path: &str, query: Option<&str>, prefix: &str) -> bool {
    let query = query.unwrap_or_default();
    if holds_key(path, prefix) || holds_key(query, prefix) {
        return true;
    }
    !query.is_empty()
        && query.split(['&', ';']).any(|pair| {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            let name: Cow<[u8]> = match decoded(name) {
                Some(d) => Cow::Owned(d),
                None => Cow::Borrowed(name.as_bytes()),
            };
            KEY_PARAMS
                .iter()
                .any(|p| name.trim_ascii().eq_ignore_ascii_case(p.as_bytes()))
        })
}

/// True when the path or query contains the presented credential (as it is, or decoded):
/// a credential that is not key-shaped escapes `url_has_key`.
pub fn url_has_secret(path: &str, query: Option<&str>, credential: &str) -> bool {
    [path, query.unwrap_or_default()].iter().any(|part| {
        contains_secret(part.as_bytes(), credential)
            || decoded(part).is_some_and(|d| contains_secret(&d, credential))
    })
}

/// Takes the one credential a request carries. `Ok(None)` means none.
pub fn credential(headers: &HeaderMap) -> Result<Option<Credential<'_>>, GatewayError> {
    let mut auth = headers.get_all(AUTHORIZATION).iter();
    let mut xkey = headers.get_all("x-api-key").iter();
    let (a1, a2, x1, x2) = (auth.next(), auth.next(), xkey.next(), xkey.next());
    let count = [a1, a2, x1, x2].iter().filter(|v| v.is_some()).count();
    if count > 1 {
        return Err(GatewayError::InvalidRequest(
            "More than one credential was sent; send exactly one of `Authorization` or `x-api-key`."
                .into(),
        ));
    }
    if let Some(v) = x1 {
        let v = v
            .to_str()
            .map_err(|_| GatewayError::InvalidKey("not printable text"))?;
        return Ok(Some(Credential::Borrowed(v.trim())));
    }
    let Some(v) = a1 else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| GatewayError::InvalidKey("not printable text"))?;
    let (scheme, rest) = v.trim().split_once(' ').unwrap_or((v, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(Credential::Borrowed(rest.trim())));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(GatewayError::InvalidKey(
                "the Basic credential is not valid base64 text",
            ))?;
        return basic_key(decoded).map(|k| Some(Credential::Owned(k)));
    }
    Err(GatewayError::InvalidKey(
        "the Authorization scheme must be Bearer (or Basic with the key as the user name or the password)",
    ))
}

/// The key in a decoded Basic credential: the password (the contract's form, `user:KEY`, for
/// tools that need a user name), or the user name when the password is empty (`curl -u KEY:`,
/// as Stripe-style tools send it).
fn basic_key(mut decoded: String) -> Result<String, GatewayError> {
    let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
    match (user.is_empty(), password.is_empty()) {
        (false, true) => {
            let n = user.len();
            decoded.truncate(n);
            Ok(decoded)
        }
        (_, false) => {
            let n = user.len() + 1;
            Ok(decoded.split_off(n))
        }
        (true, true) => Err(GatewayError::InvalidKey(
            "the Basic credential is empty; send the key as the user name (`curl -u KEY:`) or the password",
        )),
    }
}

/// The presented secret, borrowed from a header or decoded from Basic.
pub enum Credential<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl Credential<'_> {
    pub fn as_str(&self) -> &str {
        match self {
            Credential::Borrowed(s) => s,
            Credential::Owned(s) => s,
        }
    }
}

/// Finds the key for a credential. Every failure that looks like guessing is counted
/// against the client's address; while the address is over its allowance those failures
/// are answered 429 and each one extends the block, but a valid key is served.
pub fn authenticate(
    index: &Arc<KeyIndex>,
    cred: &Credential<'_>,
    prefix: &str,
    client: IpAddr,
    guard: &FailedAuthGuard,
    now: Timestamp,
) -> Result<KeyRef, GatewayError> {
    let blocked = guard.is_blocked(client);
    let failed = |e: GatewayError| match guard.record_failure(client) {
        Some(retry_after) if blocked => GatewayError::TooManyFailedAttempts { retry_after },
        _ => e,
    };
    // Format and checksum first: a malformed key costs no hashing, blocked or not.
    let token =
        Token::parse(cred.as_str(), prefix).map_err(|e| failed(GatewayError::MalformedKey(e)))?;
    let Some((entry, secret)) = index.lookup(&token.hash()) else {
        return Err(failed(GatewayError::InvalidKey("no such key")));
    };
    if entry.revoked_at.is_some_and(|t| t <= now) {
        return Err(GatewayError::RevokedKey);
    }
    if let Some(t) = entry.expires_at.filter(|t| *t <= now) {
        return Err(GatewayError::ExpiredKey(format!(
            "This API key expired at {t}."
        )));
    }
    if let Secret::Retired { valid_until } = secret {
        if valid_until <= now {
            return Err(GatewayError::ExpiredKey(format!(
                "This API key was rotated; the old secret stopped working at {valid_until}. Use the new key."
            )));
        }
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn one_credential_only() {
        let h = headers(&[("authorization", "Bearer a"), ("x-api-key", "b")]);
        assert!(matches!(
            credential(&h),
            Err(GatewayError::InvalidRequest(_))
        ));
        let h = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer a")]);
        assert!(credential(&h).is_err());
        let h = headers(&[]);
        assert!(credential(&h).unwrap().is_none());
    }

    fn basic(text: &str) -> Result<String, GatewayError> {
        let b = base64::engine::general_purpose::STANDARD.encode(text);
        let h = headers(&[("authorization", &format!("Basic {b}"))]);
        credential(&h).map(|c| c.unwrap().as_str().to_string())
    }

    #[test]
    fn forms() {
        let h = headers(&[("authorization", "Bearer  sk_kg_x ")]);
        assert_eq!(credential(&h).unwrap().unwrap().as_str(), "sk_kg_x");
        let h = headers(&[("x-api-key", "sk_kg_y")]);
        assert_eq!(credential(&h).unwrap().unwrap().as_str(), "sk_kg_y");
        assert_eq!(basic(":sk_kg_z").unwrap(), "sk_kg_z");
        assert_eq!(basic("sk_kg_z:").unwrap(), "sk_kg_z", "curl -u KEY:");
        assert_eq!(basic("sk_kg_z").unwrap(), "sk_kg_z");
        assert_eq!(basic(":a:b").unwrap(), "a:b");
    }

    #[test]
    fn basic_with_both_takes_the_password_and_with_neither_says_what_to_change() {
        assert_eq!(basic("user:sk_kg_z").unwrap(), "sk_kg_z");
        assert_eq!(basic("sk_kg_z:x").unwrap(), "x", "the password wins");
        let none = basic(":").unwrap_err().to_string();
        assert!(none.contains("empty") && none.contains("-u KEY:"), "{none}");
    }

    const KEY: &str = "sk_kg_0123456789ABCDEFabcdef0123456789XYZabc";

    #[test]
    fn key_in_url_refused_in_any_encoding() {
        let q = |query: &str| url_has_key("/v1/chat/completions", Some(query), "sk_kg");
        assert!(q("api_key=x"));
        assert!(q("API%5FKEY=x"));
        assert!(q("a=1;token=x"));
        assert!(q(&format!("q={KEY}")));
        assert!(q(&format!("q=Bearer%20{KEY}")));
        assert!(q(&format!("auth=x:{KEY}")));
        assert!(q(&format!("a=1;q={KEY}")));
        assert!(q(&format!("q={}", KEY.replacen('_', "%5F", 1))));
        assert!(q(&format!("q={}", KEY.replacen('_', "%5f", 2))));
        assert!(
            q(&format!("q={}", KEY.replacen('_', "%255F", 1))),
            "decoded twice"
        );
        assert!(q(&format!("q={}", KEY.replacen("01", "%30%31", 1))));
        assert!(url_has_key(&format!("/v1/models/{KEY}"), None, "sk_kg"));
        assert!(url_has_key(
            &format!("/v1/models/{}", KEY.replacen('_', "%5F", 1)),
            None,
            "sk_kg"
        ));
        // Not keys: short runs, other prefixes, ordinary queries.
        assert!(!q("limit=10&after=sk_kg_docs"));
        assert!(!q("q=pk_kg_0123456789ABCDEFabcdef"));
        assert!(!q("order=desc"));
        assert!(!url_has_key("/v1/models/llama-3.1-8b", None, "sk_kg"));
    }

    #[test]
    fn secrets_in_text() {
        assert!(contains_secret(b"req-sk_kg_secret-1", "sk_kg_secret"));
        assert!(!contains_secret(b"abc", "abc"), "too short to search for");
        assert!(url_has_secret(
            "/v1/models/hunter2hunter2",
            None,
            "hunter2hunter2"
        ));
        assert!(url_has_secret(
            "/v1/models/hunter2%68unter2",
            None,
            "hunter2hunter2"
        ));
        assert!(!url_has_secret(
            "/v1/models/llama",
            Some("a=b"),
            "hunter2hunter2"
        ));
    }
}
