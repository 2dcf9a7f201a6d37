//! Exactly one credential per request: `Authorization: Bearer`, `x-api-key`, or HTTP Basic
//! with the key as the password (or as the user name when the password is empty). Two are
//! refused: the upstream or a log could take the other one.

use crate::error::GatewayError;
use crate::proxy::headers::X_API_KEY;
use base64::Engine;
use http::header::{HeaderMap, AUTHORIZATION};

/// Takes the one credential a request carries. `Ok(None)` means none.
pub fn credential(headers: &HeaderMap) -> Result<Option<Credential<'_>>, GatewayError> {
    let mut auth = headers.get_all(AUTHORIZATION).iter();
    let mut xkey = headers.get_all(X_API_KEY).iter();
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
        return Ok(Some(Credential::Borrowed(v.trim_ascii())));
    }
    let Some(v) = a1 else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| GatewayError::InvalidKey("not printable text"))?;
    // The scheme ends at the first space (a byte search: `split_once(' ')` goes through the
    // general pattern machinery, on every request).
    let v = v.trim_ascii();
    let (scheme, rest) = match v.as_bytes().iter().position(|&b| b == b' ') {
        Some(i) => (
            v.get(..i).unwrap_or_default(),
            v.get(i + 1..).unwrap_or_default(),
        ),
        None => (v, ""),
    };
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(Credential::Borrowed(rest.trim_ascii())));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim_ascii())
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
}
