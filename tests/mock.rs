//! The project's mock upstream, which the tests and the load harness stand on: a repeated
//! completion is answered from the last one (`mock/last_reply.rs`) exactly as it was built,
//! and what a request's body or test headers change is never taken from it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use http::Method;

async fn post(mock: &Mock, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let url = format!("http://{}{}", mock.addr, path);
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(Method::POST, &url, &h, body.to_string()).await
}

#[tokio::test]
async fn a_repeated_completion_is_the_same_answer_and_what_changes_it_is_not_reused() {
    let mock = start_mock().await;
    let chat = "/v1/chat/completions";
    let first = post(&mock, chat, &[], CHAT).await;
    let again = post(&mock, chat, &[], CHAT).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.headers.get("content-type").unwrap(),
        "application/json"
    );
    assert_eq!(again.body, first.body, "the kept reply is the built one");
    assert_eq!(
        again.headers.get("content-type"),
        first.headers.get("content-type")
    );
    let v: serde_json::Value = serde_json::from_slice(&again.body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the keygate mock. You said: hello there"
    );

    // Padded by a test header: built, never the kept one, and not kept either.
    let padded = post(&mock, chat, &[("x-mock-reply-bytes", "400")], CHAT).await;
    let v: serde_json::Value = serde_json::from_slice(&padded.body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len(),
        400
    );
    assert_eq!(post(&mock, chat, &[], CHAT).await.body, first.body);

    // The same body on the other completion path, another text, a stream: each its own.
    let text = post(&mock, "/v1/completions", &[], CHAT).await;
    let v: serde_json::Value = serde_json::from_slice(&text.body).unwrap();
    assert_eq!(v["object"], "text_completion");
    let other = CHAT.replace("hello there", "something else");
    let v: serde_json::Value =
        serde_json::from_slice(&post(&mock, chat, &[], &other).await.body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the keygate mock. You said: something else"
    );
    let streamed = CHAT.replace("}]}", "}],\"stream\":true}");
    let s = post(&mock, chat, &[], &streamed).await;
    assert_eq!(s.headers.get("content-type").unwrap(), "text/event-stream");
    assert!(String::from_utf8_lossy(&s.body).ends_with("data: [DONE]\n\n"));

    // Every request still reaches the recorder, kept reply or not.
    assert_eq!(mock.recorder.len(), 7);
}
