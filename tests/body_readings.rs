//! Bodies the gateway and an upstream could read differently, sent through a real gateway on
//! 127.0.0.1:0 in front of the mock upstream (whose `Recorder` shows exactly what crossed):
//! a multipart body with JSON before its first boundary or after its last (an upstream that
//! decodes the first JSON value whatever the Content-Type, as Ollama's handlers do, would
//! serve the JSON's model), JSON fields spelled like `model` (Go's `encoding/json` matches
//! names ignoring case), JSON labelled as multipart on a key with a token limit, and the
//! stream-usage rewrite of bodies the old rewrite could not carry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::*;
use http::Method;
use keygate::keys::record::{KeyLimits, NewKey};

const GOOD: &str = "llama-3.1-8b-instruct";
const BAD: &str = "gpt-4";
const B: &str = "kgB0undary";

fn allowlisted(g: &TestGateway) -> String {
    g.create_key(NewKey {
        name: "allowlist".into(),
        models: vec!["llama-*".into()],
        ..Default::default()
    })
    .1
}

async fn post(g: &TestGateway, path: &str, key: &str, body: Vec<u8>, ct: &str) -> Answer {
    let auth = bearer(key);
    send(
        Method::POST,
        &g.url(path),
        &[("authorization", &auth), ("content-type", ct)],
        Bytes::from(body),
    )
    .await
}

fn model_part() -> String {
    format!("--{B}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{GOOD}\r\n")
}

/// Before: 200, the upstream got a body that starts (or ends) with `{"model":"gpt-4"}`.
#[tokio::test]
async fn json_around_a_multipart_body_is_refused() {
    let g = start_gateway("").await;
    let key = allowlisted(&g);
    let json = format!(r#"{{"model":"{BAD}","messages":[]}}"#);
    let ct = format!("multipart/form-data; boundary={B}");
    let before = format!("{json}\r\n{}--{B}--\r\n", model_part());
    let after = format!("{}--{B}--\r\n{json}", model_part());
    for (what, body, path) in [
        ("preamble", before.clone(), "/v1/chat/completions"),
        ("epilogue", after.clone(), "/v1/chat/completions"),
        ("preamble, audio", before, "/v1/audio/transcriptions"),
        ("epilogue, audio", after, "/v1/audio/transcriptions"),
    ] {
        let a = post(&g, path, &key, body.into_bytes(), &ct).await;
        assert_eq!(a.status, 400, "{what}: {:?}", a.body);
        assert_eq!(a.error_code(), "invalid_request", "{what}");
        let message = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains("boundary"), "{what}: {message}");
        assert!(g.mock.recorder.is_empty(), "{what} reached the upstream");
    }
    // The same parts with nothing around them (whitespace aside) go through (the mock
    // upstream answers anything but JSON with a 400 of its own).
    let plain = format!("\r\n{}--{B}--\r\n\r\n", model_part());
    post(
        &g,
        "/v1/audio/transcriptions",
        &key,
        plain.clone().into_bytes(),
        &ct,
    )
    .await;
    let sent = g.mock.recorder.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body, plain.as_bytes());
}

/// Before: 200 with an allowlist of `llama-*`, the body also naming `gpt-4` as `Model`.
#[tokio::test]
async fn json_fields_spelled_like_model_are_refused() {
    let g = start_gateway("").await;
    let key = allowlisted(&g);
    for (body, param) in [
        (
            format!(r#"{{"model":"{GOOD}","Model":"{BAD}","messages":[]}}"#),
            "model",
        ),
        (
            format!(r#"{{"MODEL":"{BAD}","model":"{GOOD}","messages":[]}}"#),
            "model",
        ),
        (
            format!(r#"{{"model":"{GOOD}","Stream":true,"messages":[]}}"#),
            "stream",
        ),
        (
            format!(r#"{{"model":"{GOOD}","max_tokens":1,"max_tokens":9,"messages":[]}}"#),
            "max_tokens",
        ),
    ] {
        let a = chat(&g, &key, &body).await;
        assert_eq!(a.status, 400, "{body}: {:?}", a.body);
        assert_eq!(a.json()["error"]["param"], param, "{body}");
        assert!(g.mock.recorder.is_empty(), "{body} reached the upstream");
    }
}

/// Before: a key over its token limit sent JSON labelled multipart, which streamed upstream
/// unread with nothing reserved: 200, as often as it liked.
#[tokio::test]
async fn json_labelled_multipart_does_not_dodge_a_token_limit() {
    let g = start_gateway("").await;
    let key = g.key_with_limits(KeyLimits {
        tokens_per_minute: Some(1000),
        ..Default::default()
    });
    let body = format!(r#"{{"model":"{GOOD}","max_tokens":100000,"messages":[]}}"#);
    let ct = format!("multipart/form-data; boundary={B}");
    for _ in 0..3 {
        let a = post(
            &g,
            "/v1/chat/completions",
            &key,
            body.clone().into_bytes(),
            &ct,
        )
        .await;
        assert_eq!(a.status, 400, "{:?}", a.body);
        assert!(g.mock.recorder.is_empty(), "it reached the upstream");
    }
    // A real upload on that key is checked against the limit (the estimate's headers).
    let upload = format!("{}--{B}--\r\n", model_part());
    let a = post(
        &g,
        "/v1/audio/transcriptions",
        &key,
        upload.into_bytes(),
        &ct,
    )
    .await;
    assert_eq!(
        a.header("x-ratelimit-limit-tokens"),
        Some("1000"),
        "{:?}",
        a.body
    );
    assert_eq!(g.mock.recorder.take().len(), 1);
}

/// Before: a body the old rewrite (through `serde_json::Value`) could not carry went up as it
/// was, without `include_usage`, so no usage came back; and one it could carry went up with
/// its members sorted and its big numbers rounded.
#[tokio::test]
async fn the_stream_usage_rewrite_carries_every_body_and_changes_nothing_else() {
    let g = start_gateway("").await;
    let key = g.key_with_limits(KeyLimits {
        tokens_per_minute: Some(1_000_000),
        ..Default::default()
    });
    // The mock upstream's JSON parser refuses a number past f64: what it was sent is what
    // counts here.
    let huge = format!(r#"{{"model":"{GOOD}","stream":true,"x":1e400,"messages":[]}}"#);
    chat(&g, &key, &huge).await;
    let sent = g.mock.recorder.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        String::from_utf8(sent[0].body.to_vec()).unwrap(),
        format!(
            r#"{{"model":"{GOOD}","stream":true,"x":1e400,"messages":[],"stream_options":{{"include_usage":true}}}}"#
        )
    );
    let body = format!(
        r#"{{"seed":12345678901234567890123,"model":"{GOOD}","stream":true,"t":0.1000000000000000055,"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let a = chat(&g, &key, &body).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let sent = g.mock.recorder.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        String::from_utf8(sent[0].body.to_vec()).unwrap(),
        format!(
            r#"{{"seed":12345678901234567890123,"model":"{GOOD}","stream":true,"t":0.1000000000000000055,"messages":[{{"role":"user","content":"hi"}}],"stream_options":{{"include_usage":true}}}}"#
        )
    );
    // `[true]` is not asking (serde's derive read it as `{"include_usage":true}`, and the
    // body went up without the rewrite): replaced.
    let odd =
        format!(r#"{{"model":"{GOOD}","stream":true,"stream_options":[true],"messages":[]}}"#);
    chat(&g, &key, &odd).await;
    let sent = g.mock.recorder.take();
    assert_eq!(
        String::from_utf8(sent[0].body.to_vec()).unwrap(),
        format!(
            r#"{{"model":"{GOOD}","stream":true,"stream_options":{{"include_usage":true}},"messages":[]}}"#
        )
    );
    // The usage event the client did not ask for is hidden from it.
    assert!(!String::from_utf8_lossy(&a.body).contains("\"usage\""));
}
