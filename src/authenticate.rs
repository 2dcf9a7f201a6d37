//! Stage 2 of a request: who is calling.
//!
//! Order matters for cost and for safety: an address over its failed-attempt allowance is
//! refused first; then exactly one credential is taken from the headers; its format and
//! checksum are verified without touching the index; only then is it hashed and looked up.

use crate::error::GatewayError;
use crate::index::{KeyIndex, KeyRef, Secret};
use crate::key::Token;
use crate::limit::FailedAuthGuard;
use crate::time::Timestamp;
use base64::Engine;
use http::header::{HeaderMap, AUTHORIZATION};
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

/// Takes the one credential a request carries. `Ok(None)` means none.
pub fn credential<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
    prefix: &str,
) -> Result<Option<Credential<'a>>, GatewayError> {
    if let Some(q) = query {
        if query_has_key(q, prefix) {
            return Err(GatewayError::InvalidRequest(
                "API keys are not accepted in the URL; send `Authorization: Bearer <key>`.".into(),
            ));
        }
    }
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
        let password = decoded.split_once(':').map_or("", |(_, p)| p).to_string();
        return Ok(Some(Credential::Owned(password)));
    }
    Err(GatewayError::InvalidKey(
        "the Authorization scheme must be Bearer (or Basic with the key as the password)",
    ))
}

fn query_has_key(query: &str, prefix: &str) -> bool {
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        KEY_PARAMS.iter().any(|p| name.eq_ignore_ascii_case(p))
            || value.starts_with(prefix) && value[prefix.len()..].starts_with('_')
    })
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
/// against the client's address.
pub fn authenticate(
    index: &Arc<KeyIndex>,
    cred: &Credential<'_>,
    prefix: &str,
    ip: IpAddr,
    guard: &FailedAuthGuard,
    now: Timestamp,
) -> Result<KeyRef, GatewayError> {
    guard.check(ip)?;
    let token = match Token::parse(cred.as_str(), prefix) {
        Ok(t) => t,
        Err(e) => {
            guard.record_failure(ip);
            return Err(GatewayError::MalformedKey(e));
        }
    };
    let Some((entry, secret)) = index.lookup(&token.hash()) else {
        guard.record_failure(ip);
        return Err(GatewayError::InvalidKey("no such key"));
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
            credential(&h, None, "sk_kg"),
            Err(GatewayError::InvalidRequest(_))
        ));
        let h = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer a")]);
        assert!(credential(&h, None, "sk_kg").is_err());
        let h = headers(&[]);
        assert!(credential(&h, None, "sk_kg").unwrap().is_none());
    }

    #[test]
    fn forms() {
        let h = headers(&[("authorization", "Bearer  sk_kg_x ")]);
        assert_eq!(
            credential(&h, None, "sk_kg").unwrap().unwrap().as_str(),
            "sk_kg_x"
        );
        let h = headers(&[("x-api-key", "sk_kg_y")]);
        assert_eq!(
            credential(&h, None, "sk_kg").unwrap().unwrap().as_str(),
            "sk_kg_y"
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("user:sk_kg_z");
        let h = headers(&[("authorization", &format!("Basic {basic}"))]);
        assert_eq!(
            credential(&h, None, "sk_kg").unwrap().unwrap().as_str(),
            "sk_kg_z"
        );
    }

    #[test]
    fn key_in_query_refused() {
        let h = headers(&[]);
        assert!(credential(&h, Some("api_key=x"), "sk_kg").is_err());
        assert!(credential(&h, Some("q=sk_kg_abc"), "sk_kg").is_err());
        assert!(credential(&h, Some("limit=10"), "sk_kg").unwrap().is_none());
    }
}
