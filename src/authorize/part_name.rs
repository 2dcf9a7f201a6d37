//! Which part of a multipart upload is its `model` field, read strictly: a part counts as
//! `model` only when multer and a strict reading of its `Content-Disposition` agree on its
//! name; a part they read differently (a `name*=`, a `NAME=`, two names, two headers) is
//! refused, since the upstream's parser might read it the other way.

use http::header::{HeaderMap, CONTENT_DISPOSITION};
use std::borrow::Cow;

/// What a part is, by its name.
#[derive(Debug, PartialEq, Eq)]
pub enum Role {
    Model,
    Other,
}

/// A part's role, from multer's reading of its name (`parsed`) and a strict one of its
/// `Content-Disposition`; `Err` when they disagree or the name is ambiguous.
pub fn role(headers: &HeaderMap, parsed: Option<&str>) -> Result<Role, &'static str> {
    let mut cd = headers.get_all(CONTENT_DISPOSITION).iter();
    let (first, second) = (cd.next(), cd.next());
    if second.is_some() {
        return Err("a multipart part has two Content-Disposition headers");
    }
    let strict = match first {
        None => None,
        Some(v) => disposition_name(v.as_bytes())?,
    };
    if strict.as_deref() != parsed {
        return Err("a multipart part's name is ambiguous (write it as name=\"…\")");
    }
    match parsed {
        Some("model") => Ok(Role::Model),
        Some(n) if looks_like_model(n) => {
            Err("a multipart part's name is ambiguous (write it as name=\"model\")")
        }
        _ => Ok(Role::Other),
    }
}

/// A name that some parser could take for `model`: other case, spaces, percent-encoding.
fn looks_like_model(name: &str) -> bool {
    let t = name.trim();
    if t.eq_ignore_ascii_case("model") {
        return true;
    }
    let decoded: Cow<[u8]> = percent_encoding::percent_decode(t.as_bytes()).into();
    decoded.trim_ascii().eq_ignore_ascii_case(b"model")
}

/// The `name` parameter of a `Content-Disposition` value (RFC 7578), read strictly:
/// parameter names in any case, quoted strings with escapes, and `name*` (RFC 5987) counted
/// as a name too. `Err` when the value holds more than one name or cannot be read.
fn disposition_name(v: &[u8]) -> Result<Option<String>, &'static str> {
    const BAD: &str = "a multipart part's Content-Disposition cannot be read";
    let text = std::str::from_utf8(v).map_err(|_| BAD)?;
    let mut rest = match text.find(';') {
        Some(i) => &text[i + 1..],
        None => return Ok(None),
    };
    let mut name: Option<String> = None;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let end = rest.find(['=', ';']).unwrap_or(rest.len());
        let param = rest[..end].trim().to_ascii_lowercase();
        rest = &rest[end..];
        let value = if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            if let Some(q) = after.strip_prefix('"') {
                let mut out = String::new();
                let mut chars = q.char_indices();
                let mut close = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => out.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            close = Some(i);
                            break;
                        }
                        c => out.push(c),
                    }
                }
                let close = close.ok_or(BAD)?;
                rest = &q[close + 1..];
                out
            } else {
                let end = after.find(';').unwrap_or(after.len());
                let token = after[..end].trim().to_string();
                rest = &after[end..];
                token
            }
        } else {
            String::new()
        };
        rest = rest.trim_start();
        match rest.strip_prefix(';') {
            Some(r) => rest = r,
            None if rest.is_empty() => {}
            None => return Err(BAD),
        }
        let value = match param.as_str() {
            "name" => value,
            // charset'language'percent-encoded
            p if p.starts_with("name*") => {
                let encoded = value.rsplit('\'').next().unwrap_or("");
                percent_encoding::percent_decode_str(encoded)
                    .decode_utf8_lossy()
                    .into_owned()
            }
            _ => continue,
        };
        if name.replace(value).is_some() {
            return Err("a multipart part has more than one name");
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cd(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(CONTENT_DISPOSITION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn names_read_strictly() {
        let name = |v: &str| disposition_name(v.as_bytes());
        assert_eq!(name(r#"form-data; name="model""#), Ok(Some("model".into())));
        assert_eq!(
            name(r#"form-data; name="file"; filename="a; name=model.wav""#),
            Ok(Some("file".into()))
        );
        assert_eq!(name("form-data; NAME=model"), Ok(Some("model".into())));
        assert_eq!(
            name("form-data; name*=utf-8''mod%65l"),
            Ok(Some("model".into()))
        );
        assert_eq!(name(r#"form-data; name="a\"b""#), Ok(Some("a\"b".into())));
        assert!(name(r#"form-data; name="x"; name="model""#).is_err());
        assert!(name(r#"form-data; name="x"; name*=utf-8''model"#).is_err());
        assert!(name(r#"form-data; name="unclosed"#).is_err());
        assert_eq!(name("form-data"), Ok(None));
    }

    #[test]
    fn roles_need_agreement() {
        assert_eq!(
            role(&cd(r#"form-data; name="model""#), Some("model")),
            Ok(Role::Model)
        );
        assert_eq!(
            role(
                &cd(r#"form-data; name="file"; filename="x.wav""#),
                Some("file")
            ),
            Ok(Role::Other)
        );
        // What multer reads for these differs from what other parsers read: refused.
        assert!(role(&cd("form-data; NAME=\"model\""), None).is_err());
        assert!(role(&cd(r#"form-data; filename="a; name=model""#), Some("model")).is_err());
        assert!(role(&cd(r#"form-data; name="Model""#), Some("Model")).is_err());
        assert!(role(&cd(r#"form-data; name="mod%65l""#), Some("mod%65l")).is_err());
        let mut two = cd(r#"form-data; name="x""#);
        two.append(
            CONTENT_DISPOSITION,
            HeaderValue::from_static("form-data; name=\"model\""),
        );
        assert!(role(&two, Some("x")).is_err());
    }
}
