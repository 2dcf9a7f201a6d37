//! What happens to a request after it was forwarded: streams abandoned or cut short are
//! charged what they relayed (local and Redis token buckets), a revoke ends the key's running
//! requests while a rotation does not, and the access log tells a client that left (499) and
//! the bytes each way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::binary::*;
use common::redis::Redis;
use common::*;
use http::Method;
use http_body_util::BodyExt;
use keygate::keys::record::{KeyLimits, NewKey};
use keygate::mock::MockOptions;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);

/// A streamed chat whose user message is `words` words (the mock echoes them back one SSE
/// event per word).
fn stream_body(words: usize, max_tokens: u64) -> String {
    let text = vec!["alpha"; words].join(" ");
    format!(
        r#"{{"model":"llama-3.1-8b-instruct","stream":true,"max_tokens":{max_tokens},"messages":[{{"role":"user","content":"{text}"}}]}}"#
    )
}

/// Starts a streamed chat and returns the response with its head read.
async fn start_stream(
    g: &TestGateway,
    key: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> http::Response<hyper::body::Incoming> {
    let mut b = http::Request::post(g.url("/v1/chat/completions"))
        .header("authorization", bearer(key))
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    client()
        .request(
            b.body(http_body_util::Full::new(Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
        .unwrap()
}

/// The next data frame of `body`, or how it ended: `Ok(None)` for a clean end.
async fn next_data(body: &mut hyper::body::Incoming) -> Result<Option<Bytes>, String> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    return Ok(Some(d));
                }
            }
        }
    }
}

/// Sends streams on `key` until one is refused, at most `max`: each read to its end, or,
/// with `abandon_after`, dropped after that many data frames (then waits until the gateway
/// has let go of it). Returns how many were let through.
async fn admitted(
    g: &TestGateway,
    key: &str,
    body: &str,
    abandon_after: Option<usize>,
    max: usize,
) -> usize {
    for i in 0..max {
        let interval = if abandon_after.is_some() { "100" } else { "0" };
        let resp = start_stream(g, key, body, &[("x-mock-interval-ms", interval)]).await;
        if resp.status() == 429 {
            return i;
        }
        assert_eq!(resp.status(), 200);
        let mut b = resp.into_body();
        match abandon_after {
            None => {
                let all = b.collect().await.unwrap().to_bytes();
                assert!(all.ends_with(b"data: [DONE]\n\n"));
            }
            Some(n) => {
                for _ in 0..n {
                    assert!(next_data(&mut b).await.unwrap().is_some());
                }
                drop(b);
            }
        }
        assert!(
            eventually(5 * SEC, || async { g.gw.capacity.in_use() == 0 }).await,
            "the gateway kept the request after the client left"
        );
    }
    max
}

/// One key reads its streams to the end, the other abandons each after three events: the
/// abandoned one must not get more requests through, and its usage shows estimated tokens.
async fn abandoned_streams_hit_the_token_limit_like_complete_ones(g: &TestGateway) {
    let tpm = KeyLimits {
        tokens_per_minute: Some(1000),
        ..Default::default()
    };
    let (complete_id, complete) = g.create_key(NewKey {
        name: "complete".into(),
        limits: tpm,
        ..Default::default()
    });
    let (abandoned_id, abandoned) = g.create_key(NewKey {
        name: "abandoned".into(),
        limits: tpm,
        ..Default::default()
    });
    // 60 prompt words (~115 tokens by the gateway's 4-bytes estimate), ~41 echoed back.
    let body = stream_body(60, 50);
    const MAX: usize = 20;
    let ok_complete = admitted(g, &complete, &body, None, MAX).await;
    let ok_abandoned = admitted(g, &abandoned, &body, Some(3), MAX).await;
    eprintln!("admitted before 429: complete {ok_complete}, abandoned {ok_abandoned}");
    assert!(ok_complete < MAX, "the complete key never hit its limit");
    assert!(
        ok_abandoned <= ok_complete + 1,
        "abandoning streams dodges the token limit: {ok_abandoned} vs {ok_complete}"
    );

    let admin = g.key_with_scopes(&["usage"]);
    let a = send(
        Method::GET,
        &g.url("/v1/usage"),
        &[("authorization", &bearer(&admin))],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    let v = a.json();
    let of = |id: &str| {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .unwrap()
            .clone()
    };
    let u = of(&abandoned_id);
    let used = u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap();
    assert!(used > 0, "abandoned streams show no usage: {u}");
    assert!(u["completion_tokens"].as_u64().unwrap() > 0, "{u}");
    assert_eq!(u["estimated_tokens"].as_u64(), Some(used), "{u}");
    let c = of(&complete_id);
    assert_eq!(
        c["estimated_tokens"], 0,
        "real usage is not an estimate: {c}"
    );
    assert!(c["completion_tokens"].as_u64().unwrap() > 0, "{c}");
}

#[tokio::test]
async fn abandoned_streams_are_charged_what_they_relayed() {
    let g = start_gateway("").await;
    abandoned_streams_hit_the_token_limit_like_complete_ones(&g).await;
}

#[tokio::test]
async fn abandoned_streams_are_charged_through_redis_too() {
    let redis = Redis::start().await;
    // `deny`: a request that got through was limited by Redis, not by a local fallback.
    let g = start_gateway(&format!(
        "[cluster]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}/\"\non_backend_error = \"deny\"\n",
        redis.port
    ))
    .await;
    let probe = g.key();
    assert!(
        eventually(10 * SEC, || async {
            chat(&g, &probe, CHAT).await.status == 200
        })
        .await,
        "the gateway did not connect to Redis"
    );
    abandoned_streams_hit_the_token_limit_like_complete_ones(&g).await;
}

/// An upstream that answers every request with a 200 event stream of three content events
/// and then drops the connection without ending the stream.
async fn breaking_upstream() -> std::net::SocketAddr {
    breaking_upstream_with(
        ["Hello", " wonderful", " world"]
            .iter()
            .map(|w| format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{w}\"}}}}]}}\n\n"))
            .collect(),
    )
    .await
}

/// An upstream that answers every request with a 200 event stream of `events` and then drops
/// the connection without ending the stream.
async fn breaking_upstream_with(events: Vec<String>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let events = std::sync::Arc::new(events);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let events = std::sync::Arc::clone(&events);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    let n = s.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for event in events.iter() {
                    out.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
                }
                let _ = s.write_all(&out).await;
                let _ = s.flush().await;
                // Gone without the last chunk.
            });
        }
    });
    addr
}

/// Once the request has ended, the key's usage is what the breaking upstream relayed,
/// estimated: "Hello" 1 + " wonderful" 2 + " world" 1, and the prompt at 4 bytes a token.
async fn charged_the_three_words_relayed(
    g: &TestGateway,
    id: &str,
    body_len: usize,
) -> keygate::keys::usage::UsageSnapshot {
    assert!(eventually(5 * SEC, || async { g.gw.capacity.in_use() == 0 }).await);
    let usage =
        g.gw.live()
            .keys
            .as_ref()
            .unwrap()
            .state_of(id)
            .unwrap()
            .usage
            .snapshot();
    assert_eq!(usage.completion_tokens, 4, "{usage:?}");
    assert_eq!(usage.prompt_tokens, body_len as u64 / 4, "{usage:?}");
    let v = serde_json::to_value(usage).unwrap();
    assert_eq!(v["estimated_tokens"], usage.prompt_tokens + 4, "{v}");
    usage
}

/// The Responses API's first event echoes the request's tools back: a client that names
/// members of its tool's schema `input_tokens` and `output_tokens`, then leaves (or whose
/// upstream breaks) before `response.completed`, is charged what was relayed, not those
/// planted zeros as if the upstream had reported them.
#[tokio::test]
async fn counts_a_client_planted_in_its_echoed_tools_are_not_its_usage() {
    let created = r#"event: response.created
data: {"type":"response.created","response":{"id":"resp_1","status":"in_progress","tools":[{"type":"function","name":"f","parameters":{"type":"object","input_tokens":0,"output_tokens":0}}],"usage":null},"sequence_number":0}

"#;
    let mut events = vec![created.to_string()];
    for (i, w) in ["Hello", " wonderful", " world"].iter().enumerate() {
        events.push(format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"{w}\",\"sequence_number\":{}}}\n\n",
            i + 1
        ));
    }
    let addr = breaking_upstream_with(events).await;
    let g = start_gateway_raw(
        start_mock().await,
        &format!("[[upstream]]\nname = \"breaks\"\nurl = \"http://{addr}\"\n"),
    )
    .await;
    let (id, key) = g.create_key(NewKey {
        name: "planter".into(),
        limits: KeyLimits {
            tokens_per_minute: Some(10_000),
            ..Default::default()
        },
        ..Default::default()
    });
    let body = r#"{"model":"llama-3.1-8b-instruct","stream":true,"max_output_tokens":500,"input":"write a long story","tools":[{"type":"function","name":"f","parameters":{"type":"object","input_tokens":0,"output_tokens":0}}]}"#;
    let resp = client()
        .request(
            http::Request::post(g.url("/v1/responses"))
                .header("authorization", bearer(&key))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut b = resp.into_body();
    while let Ok(Some(_)) = next_data(&mut b).await {}
    charged_the_three_words_relayed(&g, &id, body.len()).await;
}

#[tokio::test]
async fn a_stream_the_upstream_breaks_is_charged_what_it_relayed() {
    let addr = breaking_upstream().await;
    let g = start_gateway_raw(
        start_mock().await,
        &format!("[[upstream]]\nname = \"breaks\"\nurl = \"http://{addr}\"\n"),
    )
    .await;
    let (id, key) = g.create_key(NewKey {
        name: "broken".into(),
        limits: KeyLimits {
            tokens_per_minute: Some(10_000),
            ..Default::default()
        },
        ..Default::default()
    });
    let body = stream_body(20, 500);
    // The bucket refills at 10000 a minute meanwhile; the upper bound below allows for it.
    let t0 = Instant::now();
    let resp = start_stream(&g, &key, &body, &[]).await;
    assert_eq!(resp.status(), 200);
    let mut b = resp.into_body();
    let end = loop {
        match next_data(&mut b).await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert!(end.is_err(), "a broken stream read as complete: {end:?}");
    let usage = charged_the_three_words_relayed(&g, &id, body.len()).await;
    // The bucket was charged the same: the next reservation starts from 10000 - used.
    let next = start_stream(&g, &key, &body, &[]).await;
    let remaining: u64 = next.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let reserved = 500 + body.len() as u64 / 4;
    let used = usage.prompt_tokens + 4;
    let refilled = (t0.elapsed().as_secs_f64() * 10_000.0 / 60.0).ceil() as u64;
    assert!(
        (10_000 - used - reserved..=10_000 - reserved - used.saturating_sub(refilled))
            .contains(&remaining),
        "{remaining}, {refilled} refilled"
    );
}

#[tokio::test]
async fn revoke_ends_the_keys_running_requests_within_a_second() {
    let mock = start_mock_with(MockOptions {
        sse_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let g = start_gateway_with_mock(mock, "").await;
    let (id, revoked) = g.create_key(NewKey {
        name: "revoked".into(),
        ..Default::default()
    });
    let (_, other) = g.create_key(NewKey {
        name: "other".into(),
        ..Default::default()
    });
    // ~50 events 200 ms apart: a 10 s stream.
    let body = stream_body(40, 100);
    let a = start_stream(&g, &revoked, &body, &[]).await;
    let b = start_stream(&g, &other, &body, &[]).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let (mut a, mut b) = (a.into_body(), b.into_body());
    assert!(next_data(&mut a).await.unwrap().is_some());
    assert!(next_data(&mut b).await.unwrap().is_some());
    // A request of the same key still waiting for a slow upstream head.
    let seen = g.mock.recorder.len();
    let url = g.url("/v1/chat/completions");
    let auth = bearer(&revoked);
    let waiting = tokio::spawn(async move {
        send(
            Method::POST,
            &url,
            &[("authorization", &auth), ("x-mock-delay-ms", "10000")],
            CHAT,
        )
        .await
    });
    assert!(
        eventually(5 * SEC, || async { g.mock.recorder.len() > seen }).await,
        "the slow request did not reach the upstream"
    );

    let out = Command::new(BIN)
        .arg("--config")
        .arg(&g.config_path)
        .args(["keys", "revoke", &id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = Instant::now();

    // The stream ends with an error, not a clean end, and soon.
    let end = tokio::time::timeout(5 * SEC, async {
        loop {
            match next_data(&mut a).await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the revoked key's stream kept running");
    let took = revoked_at.elapsed();
    eprintln!("revoked stream ended after {took:?}: {end:?}");
    assert!(end.is_err(), "the stream ended cleanly: {end:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // The request waiting for its head is answered 401 revoked_api_key.
    let w = tokio::time::timeout(5 * SEC, waiting)
        .await
        .expect("the request waiting for its head was not ended")
        .unwrap();
    let took = revoked_at.elapsed();
    eprintln!("waiting request answered after {took:?}");
    assert_eq!(w.status, 401);
    assert_eq!(w.error_code(), "revoked_api_key");
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // The other key's stream goes on.
    for _ in 0..2 {
        let more = tokio::time::timeout(2 * SEC, next_data(&mut b))
            .await
            .expect("the other stream stalled");
        assert!(matches!(more, Ok(Some(_))), "{more:?}");
    }
    assert_eq!(chat(&g, &revoked, CHAT).await.status, 401);
}

#[tokio::test]
async fn rotation_does_not_end_running_streams() {
    let g = start_gateway("").await;
    let (id, key) = g.create_key(NewKey {
        name: "rotated".into(),
        ..Default::default()
    });
    let resp = start_stream(
        &g,
        &key,
        &stream_body(10, 100),
        &[("x-mock-interval-ms", "50")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = next_data(&mut body).await.unwrap().unwrap().to_vec();
    let prefix = g.gw.config().keys.prefix.clone();
    g.store()
        .update(|f| f.rotate(&id, 0, &prefix, keygate::time::Timestamp::now()))
        .unwrap();
    g.gw.reload_keys().unwrap();
    assert_eq!(chat(&g, &key, CHAT).await.status, 401, "rotated out");
    while let Some(d) = next_data(&mut body).await.expect("the stream broke") {
        text.extend_from_slice(&d);
    }
    assert!(text.ends_with(b"data: [DONE]\n\n"));
}

fn access_lines(logs: &Mutex<Vec<String>>) -> Vec<serde_json::Value> {
    logs.lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "keygate::access")
        .collect()
}

#[tokio::test]
async fn access_log_has_499_for_a_client_gone_before_the_head_and_bytes_both_ways() {
    use tokio::io::AsyncWriteExt;
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\n[log]\nformat = \"json\"\n[[upstream]]\nurl = \"http://{}\"\n", mock.addr),
    )
    .unwrap();
    let (key, _) = cli_create_key(&cfg, "logged");
    let mut served = serve(&cfg);
    let (addr, logs) = (served.addr, std::sync::Arc::clone(&served.logs));
    let child = &mut served.child;

    let ok = send(
        Method::POST,
        &format!("http://{addr}/v1/chat/completions"),
        &[("authorization", &bearer(&key))],
        CHAT,
    )
    .await;
    assert_eq!(ok.status, 200);

    // A client that leaves while the upstream has not answered yet.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\nx-mock-delay-ms: 5000\r\ncontent-length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    );
    c.write_all(req.as_bytes()).await.unwrap();
    assert!(
        eventually(5 * SEC, || async { mock.recorder.len() == 2 }).await,
        "the request did not reach the upstream"
    );
    drop(c);
    let logged = eventually(5 * SEC, || async { access_lines(&logs).len() == 2 }).await;
    sigterm(child);
    assert!(child.wait().unwrap().success());
    let access = access_lines(&logs);
    assert!(logged, "{:?}", logs.lock().unwrap());
    let (done, left) = (&access[0], &access[1]);
    assert_eq!(left["status"], 499, "{left}");
    assert_eq!(left["complete"], false, "{left}");
    assert_eq!(done["status"], 200);
    assert_eq!(done["complete"], true);
    assert_eq!(done["bytes_received"], CHAT.len() as u64);
    assert_eq!(done["bytes_sent"], ok.body.len() as u64);
    assert_eq!(left["bytes_received"], CHAT.len() as u64);
    assert_eq!(left["bytes_sent"], 0);
}

/// Disable is revoke's reversible twin: a disabled key is refused with 401
/// `disabled_api_key`, its running stream ends, and enabling it lets it work again.
#[tokio::test]
async fn a_disabled_key_is_refused_its_stream_ends_and_enable_restores_it() {
    let mock = start_mock_with(MockOptions {
        sse_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let g = start_gateway_with_mock(mock, "").await;
    let (id, key) = g.create_key(NewKey {
        name: "to-disable".into(),
        ..Default::default()
    });
    let body = stream_body(40, 100);
    let a = start_stream(&g, &key, &body, &[]).await;
    assert_eq!(a.status().as_u16(), 200);
    let mut a = a.into_body();
    assert!(next_data(&mut a).await.unwrap().is_some());

    let set_disabled = |on: bool| {
        g.store()
            .update(|f| {
                let k = f.keys.iter_mut().find(|k| k.id == id).unwrap();
                k.disabled_at = on.then(keygate::time::Timestamp::now);
                Ok(())
            })
            .unwrap();
        g.gw.reload_keys().unwrap();
    };
    set_disabled(true);
    let end = tokio::time::timeout(5 * SEC, async {
        loop {
            match next_data(&mut a).await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the disabled key's stream kept running");
    assert!(end.is_err(), "the stream ended cleanly: {end:?}");
    let refused = chat(&g, &key, CHAT).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.error_code(), "disabled_api_key");

    set_disabled(false);
    assert_eq!(chat(&g, &key, CHAT).await.status, 200, "enabled again");
}
