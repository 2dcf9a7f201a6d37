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
    // A message with quotes and control characters stays valid JSON.
    let e = GatewayError::InvalidRequest("a \"quoted\"\n\\ path".into());
    let body = e
        .to_response::<Full<Bytes>>()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
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
        let body = e
            .to_response::<Full<Bytes>>()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["message"], e.to_string(), "{len}");
    }
}
