//! How a request body is encoded (JSON, form, multipart), why one cannot be checked, and the
//! `model` of a form. A JSON body is read by `json_body`, a multipart one by `multipart`.

/// Why a body cannot be checked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the request body is not valid JSON: {0}")]
    NotJson(String),
    /// No `model`, or an empty one (on a route without a model, the body is then forwarded).
    #[error("the request body names no model (its `model` must be a non-empty string)")]
    NoModel,
    /// A `model` that is not a string: refused on every route, as it was when the parser
    /// refused it.
    #[error("the request body's `model` is not a string (it must be a string naming the model)")]
    ModelNotString,
    #[error("the request body has more than one `{0}` field; send it once")]
    Twice(&'static str),
    #[error("the request body has a field `{spelled}`, spelled like `{field}` but not exactly (upstreams that match names ignoring case would read it as `{field}`); name it exactly `{field}`")]
    SpelledLike {
        field: &'static str,
        spelled: String,
    },
    #[error(
        "the request body cannot be rewritten to ask the upstream for the stream's usage: {0}"
    )]
    Unrewritable(String),
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

/// Whether the body is sent compressed: a `Content-Encoding` other than `identity`. A body
/// the gateway must read is refused then (it would be read as garbage, or as the plain text
/// it happens to be).
pub fn is_compressed(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
}

/// Whether a body is a JSON object (its first byte past a UTF-8 byte-order mark and
/// whitespace is `{`). The mark counts: upstreams such as llama.cpp and Python's `json` skip
/// it, so a body labelled as a form that starts with one is still JSON to them (and is then
/// refused here as JSON, which may not start with one).
pub fn is_json_object(body: &[u8]) -> bool {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The body's kind from its headers. A second Content-Type, or a multipart one with two
/// boundaries, is refused: the upstream might take the other one.
pub fn body_kind(headers: &http::HeaderMap) -> Result<BodyKind, BodyError> {
    use http::header::CONTENT_TYPE;
    if is_compressed(headers) {
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
                return Err(BodyError::Twice("model"));
            }
        } else if name.trim().eq_ignore_ascii_case("model") {
            return Err(BodyError::FormAmbiguous);
        }
    }
    Ok(model.filter(|m| !m.is_empty()).map(|m| m.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            form_model(b"model=a&model=b"),
            Err(BodyError::Twice("model"))
        );
        assert_eq!(
            form_model(b"model=a;model=b"),
            Err(BodyError::FormSemicolon)
        );
        assert_eq!(form_model(b"Model=gpt-4"), Err(BodyError::FormAmbiguous));
    }
}
