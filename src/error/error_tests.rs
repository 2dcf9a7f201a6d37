use super::*;
use http_body_util::{BodyExt, Full};

#[tokio::test]
async fn shape() {
    let r: Response<Full<Bytes>> = GatewayError::MissingKey.to_response();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "missing_api_key");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(v["error"]["param"].is_null());
    assert_eq!(v["error"]["message"], GatewayError::MissingKey.to_string());
    // A 429 has room for its headers from the start (see `to_response`).
    let r: Response<Full<Bytes>> = GatewayError::RateLimited {
        limit: 1,
        retry_after: Duration::from_secs(1),
    }
    .to_response();
    assert!(r.headers().capacity() >= 12, "{}", r.headers().capacity());
    // A message with quotes and control characters stays valid JSON.
    let e = GatewayError::InvalidRequest("a \"quoted\"\n\\ path".into());
    let body = body_of(&e).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["message"], e.to_string());
    assert_eq!(v["error"]["code"], "invalid_request");
    assert!(v["error"]["param"].is_null());
    // A field error names the field in `param`.
    let e = GatewayError::InvalidParam {
        param: "limits.burst".into(),
        message: "`limits.burst` must be at least 1.".into(),
    };
    let r = e.to_response::<Full<Bytes>>();
    assert_eq!(r.status(), 400);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["param"], "limits.burst");
    assert_eq!(v["error"]["code"], "invalid_request");
    // A body longer than the stack buffer is written whole all the same.
    for len in [400, 600, 5000] {
        let e = GatewayError::ModelNotFound(format!("m\"{}", "x".repeat(len)));
        let body = body_of(&e).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["message"], e.to_string(), "{len}");
    }
}

/// The body of `e`'s answer.
async fn body_of(e: &GatewayError) -> Bytes {
    e.to_response::<Full<Bytes>>()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
}

/// What `serde_json` writes for the same envelope, fields in the same order.
fn reference(e: &GatewayError) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Detail<'a> {
        message: String,
        r#type: &'a str,
        param: Option<&'a str>,
        code: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        error: Detail<'a>,
    }
    serde_json::to_vec(&Envelope {
        error: Detail {
            message: e.to_string(),
            r#type: e.kind(),
            param: e.param(),
            code: e.code(),
        },
    })
    .unwrap()
}

/// The hand-written body (`body`) is byte for byte what `serde_json` writes, and the messages
/// written from their parts are their variants' `Display`.
#[tokio::test]
async fn the_body_is_what_serde_json_writes() {
    let every_control: String = (0u8..0x20).map(char::from).collect();
    let mut cases = vec![
        GatewayError::MissingKey,
        GatewayError::InvalidKey("the key's checksum does not match"),
        GatewayError::RevokedKey,
        GatewayError::InvalidRequest(format!("a \"quoted\"\n\\ path {every_control} é ✓")),
        GatewayError::InvalidParam {
            param: "limits.\"burst\"".into(),
            message: "`limits.burst` must be at least 1.".into(),
        },
        GatewayError::ModelNotFound(format!("m\"{}", "x".repeat(5000))),
        // Starting with a byte to escape; U+2028 and DEL, which JSON leaves as they are.
        GatewayError::InvalidRequest("\"\u{1}\u{7f}\u{2028}\"".into()),
    ];
    // Around the stack buffer's end (512 bytes): bodies that fit it, one that fills it
    // exactly, and ones that take the `Vec`.
    let body_len = |n: usize| {
        let e = GatewayError::ModelNotFound("x".repeat(n));
        reference(&e).len()
    };
    let exact = (0..600).find(|&n| body_len(n) == 512).unwrap();
    for n in exact - 2..=exact + 2 {
        cases.push(GatewayError::ModelNotFound("x".repeat(n)));
    }
    for (limit, ms) in [(1, 35_052), (60, 0), (u32::MAX, 1_000), (7, 3_600_000)] {
        cases.push(GatewayError::RateLimited {
            limit,
            retry_after: Duration::from_millis(ms),
        });
    }
    for e in &cases {
        let body = body_of(e).await;
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            std::str::from_utf8(&reference(e)).unwrap(),
            "{e:?}"
        );
    }
}

/// A body without a `model`, an empty one, or one that is not a string was a 400 with
/// `param: null` (a second `model` named it); every body error about one field names it now,
/// and every one is a sentence.
#[test]
fn body_errors_about_a_field_name_it() {
    use crate::authorize::body::BodyError;
    for (e, param) in [
        (BodyError::NoModel, Some("model")),
        (BodyError::ModelNotString, Some("model")),
        (BodyError::Twice("n"), Some("n")),
        (
            BodyError::SpelledLike {
                field: "best_of",
                spelled: "Best_Of".into(),
            },
            Some("best_of"),
        ),
        (BodyError::NotJson("expected value".into()), None),
        (BodyError::FormSemicolon, None),
    ] {
        let what = format!("{e:?}");
        let g = GatewayError::from(e);
        assert_eq!(g.status(), 400, "{what}");
        assert_eq!(g.param(), param, "{what}");
        let m = g.to_string();
        assert!(m.starts_with("The ") && m.ends_with('.'), "{m}");
    }
}
