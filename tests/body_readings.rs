//! Bodies the gateway and an upstream could read differently, sent through a real gateway on
//! 127.0.0.1:0 in front of the mock upstream (whose `Recorder` shows exactly what crossed):
//! a multipart body with JSON before its first boundary or after its last (an upstream that
//! decodes the first JSON value whatever the Content-Type, as Ollama's handlers do, would
//! serve the JSON's model), JSON fields spelled like `model` (Go's `encoding/json` matches
//! names ignoring case), JSON labelled as multipart on a key with a token limit, the
//! stream-usage rewrite of bodies the old rewrite could not carry, the token hold of a body
//! asking for many choices (`n`, `best_of`), and the refusal of a `model` missing, empty or
//! not a string, which names `model`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::*;
use http::Method;
use keygate::keys::annotations::KeyQuotas;
use keygate::keys::record::{KeyLimits, NewKey};
use std::time::Duration;

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

/// Sends `body` to `path` while the same body, sent first, is still running upstream (the mock
/// holds it `delay_ms`): the second answer, then the first's status.
async fn while_one_runs(g: &TestGateway, key: &str, path: &str, body: &str) -> (Answer, u16) {
    let (url, auth) = (g.url(path), bearer(key));
    let first = {
        let (url, auth, body) = (url.clone(), auth.clone(), body.to_string());
        tokio::spawn(async move {
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
                ("x-mock-delay-ms", "1500"),
            ];
            send(Method::POST, &url, &headers, body).await
        })
    };
    // The mock records a request as it arrives, after the gateway placed its hold.
    assert!(
        eventually(Duration::from_secs(5), || async move {
            g.mock.recorder.len() == 1
        })
        .await,
        "the first request did not reach the upstream"
    );
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let second = send(Method::POST, &url, &headers, body.to_string()).await;
    let first = first.await.unwrap();
    g.mock.recorder.take();
    (second, first.status.as_u16())
}

/// Before: `max_tokens: 100, n: 100` held 100 tokens of a token quota where vLLM (and OpenAI)
/// generate 100 choices of up to 100 tokens each: eight such requests at once passed a quota
/// of 1,000 tokens and used 80,000. The hold is the budget for each sequence now (`n`, or
/// `best_of` in a completion), so while one runs the next is refused (told to retry: the
/// quota is not used up); with `n: 1` both are served.
#[tokio::test]
async fn a_token_hold_counts_every_choice_the_body_asks_for() {
    let g = start_gateway("").await;
    let (_, key) = g.create_key(NewKey {
        name: "token-quota".into(),
        quotas: KeyQuotas {
            tokens_per_day: Some(1_000),
            ..Default::default()
        },
        ..Default::default()
    });
    let chat_path = "/v1/chat/completions";
    let one = format!(r#"{{"model":"{GOOD}","max_tokens":100,"n":1,"messages":[]}}"#);
    let (a, first) = while_one_runs(&g, &key, chat_path, &one).await;
    assert_eq!((first, a.status.as_u16()), (200, 200), "{:?}", a.body);
    for (path, body, sequences) in [
        (
            chat_path,
            format!(r#"{{"model":"{GOOD}","max_tokens":100,"n":100,"messages":[]}}"#),
            100,
        ),
        (
            "/v1/completions",
            format!(r#"{{"model":"{GOOD}","max_tokens":100,"n":1,"best_of":20,"prompt":"hi"}}"#),
            20,
        ),
        (
            "/v1/completions",
            format!(
                r#"{{"model":"{GOOD}","max_tokens":100,"prompt":[{}]}}"#,
                vec![r#""hi""#; 20].join(",")
            ),
            20,
        ),
    ] {
        let (a, first) = while_one_runs(&g, &key, path, &body).await;
        assert_eq!(first, 200, "{body}");
        assert_eq!(a.status, 429, "{body}: {:?}", a.body);
        assert_eq!(a.error_code(), "concurrency_limit_exceeded", "{body}");
        let held = 100 * sequences + body.len() / 4;
        let message = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains(&format!("hold {held} tokens")),
            "{body}: {message}"
        );
    }
    // A spelling an upstream folds onto `n` is refused, not read as one choice.
    let folded = format!(r#"{{"model":"{GOOD}","max_tokens":100,"N":100,"messages":[]}}"#);
    let a = chat(&g, &key, &folded).await;
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.json()["error"]["param"], "n");
    assert!(g.mock.recorder.is_empty());
}

/// Asserts `a` is the 400 that names `model`, in the reference's error shape.
fn names_model(a: &Answer, what: &str) {
    assert_eq!(a.status, 400, "{what}: {:?}", a.body);
    assert_eq!(a.error_code(), "invalid_request", "{what}");
    let v = a.json();
    let e = v["error"].as_object().unwrap();
    assert_eq!(e.len(), 4, "{what}: {v}");
    assert_eq!(e["type"], "invalid_request_error", "{what}");
    assert_eq!(e["param"], "model", "{what}: {v}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.starts_with("The request body") && message.ends_with('.'),
        "{what}: {message}"
    );
    assert!(message.contains("`model`"), "{what}: {message}");
    assert!(!message.contains("invalid type"), "{what}: {message}");
}

/// Before: no `model`, an empty one, or one that is not a string (with serde's "invalid type:
/// integer `123`, expected a string") was a 400 with `param: null`, though a second `model`
/// was named and the reference promised "400 naming `model`". A route without a model still
/// forwards a body without one, and refuses one whose `model` is not a string.
#[tokio::test]
async fn a_missing_or_odd_model_is_refused_by_name() {
    let g = start_gateway("").await;
    let key = allowlisted(&g);
    for body in [
        r#"{"messages":[]}"#,
        r#"{"model":"","messages":[]}"#,
        r#"{"model":null,"messages":[]}"#,
        r#"{"model":123,"messages":[]}"#,
        r#"{"model":true}"#,
        r#"{"model":["llama-3.1-8b-instruct"],"messages":[]}"#,
        r#"{"model":{"id":"llama-3.1-8b-instruct"},"messages":[]}"#,
    ] {
        names_model(&chat(&g, &key, body).await, body);
    }
    let ct = format!("multipart/form-data; boundary={B}");
    let empty =
        format!("--{B}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\r\n--{B}--\r\n");
    let none = format!(
        "--{B}\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n--{B}--\r\n"
    );
    for (what, body, ct) in [
        ("multipart, empty model", empty, ct.as_str()),
        ("multipart, no model", none, ct.as_str()),
        (
            "form, empty model",
            "model=&language=en".into(),
            "application/x-www-form-urlencoded",
        ),
        (
            "form, no model",
            "language=en".into(),
            "application/x-www-form-urlencoded",
        ),
    ] {
        let a = post(&g, "/v1/audio/transcriptions", &key, body.into_bytes(), ct).await;
        names_model(&a, what);
    }
    assert!(
        g.mock.recorder.is_empty(),
        "a refused body reached the upstream"
    );

    // A key without an allowlist (a token quota has the body read): the same.
    let (_, counted) = g.create_key(NewKey {
        name: "token-quota".into(),
        quotas: KeyQuotas {
            tokens_per_day: Some(1_000_000),
            ..Default::default()
        },
        ..Default::default()
    });
    names_model(
        &chat(&g, &counted, r#"{"model":7,"messages":[]}"#).await,
        "unlisted",
    );

    // On a route without a model, no model is forwarded; a model that is not a string is not.
    let cancel = "/v1/responses/resp_1/cancel";
    let a = post(&g, cancel, &key, b"{}".to_vec(), "application/json").await;
    assert_eq!(g.mock.recorder.take().len(), 1, "{:?}", a.body);
    let a = post(
        &g,
        cancel,
        &key,
        br#"{"model":5}"#.to_vec(),
        "application/json",
    )
    .await;
    names_model(&a, "cancel");
    assert!(g.mock.recorder.is_empty());
}
