//! The access line's cost on the request path: formatting one line the way keygate does
//! (`account::access_log::format_access`, straight into bytes) against the same fields as a `tracing`
//! event through `tracing-subscriber`'s JSON formatter (what it did before), both into memory
//! so only formatting is measured (keygate's write happens on the log thread).
//!
//! Run: `cargo bench --bench access_log` (a few seconds).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderValue, Method};
use keygate::account::access_log::{format_access, Timing};
use keygate::account::{RequestRecord, TokenUsage};
use keygate::config::LogFormat;
use keygate::keys::usage::Tokens;
use keygate::time::SecondStamp;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing_subscriber::layer::SubscriberExt;

fn record() -> RequestRecord {
    let mut f = RequestRecord::new(
        HeaderValue::from_static("req_5f1e2d3c4b5a69788000002a"),
        Method::POST,
        "10.1.2.3".parse().unwrap(),
    );
    f.path = Some(http::uri::PathAndQuery::from_static("/v1/chat/completions"));
    f.user_agent = Some(HeaderValue::from_static("OpenAI/Python 1.50.0"));
    f.route = "chat";
    f.model = Some("llama-3.1-8b-instruct".into());
    f.upstream = Some(Arc::from("vllm"));
    f.status = 200;
    f.upstream_latency = Some(Duration::from_micros(812));
    f.tokens = Some(TokenUsage::Reported(Tokens {
        prompt: 24,
        completion: 187,
    }));
    f.bytes_received = 142;
    f.bytes_sent = 1093;
    f
}

/// A writer into a reused buffer, for the tracing side.
#[derive(Clone, Default)]
struct Mem(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Mem {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut v = self.0.lock().unwrap();
        v.clear();
        v.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn bench(c: &mut Criterion) {
    let f = record();
    let (total, added) = (Duration::from_micros(1040), Duration::from_micros(95));
    let mut stamp = SecondStamp::default();
    c.bench_function("access_line/direct_json", |b| {
        b.iter(|| {
            let mut line = Vec::with_capacity(512);
            format_access(
                &mut line,
                &mut stamp,
                LogFormat::Json,
                black_box(&f),
                Timing {
                    at: SystemTime::now(),
                    total,
                    added: Some(added),
                },
                "sk_kg",
            );
            black_box(line)
        })
    });
    c.bench_function("access_line/direct_text", |b| {
        b.iter(|| {
            let mut line = Vec::with_capacity(512);
            format_access(
                &mut line,
                &mut stamp,
                LogFormat::Text,
                black_box(&f),
                Timing {
                    at: SystemTime::now(),
                    total,
                    added: Some(added),
                },
                "sk_kg",
            );
            black_box(line)
        })
    });
    let mem = Mem::default();
    let w = mem.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(move || w.clone()),
    );
    tracing::subscriber::with_default(subscriber, || {
        c.bench_function("access_line/tracing_json", |b| {
            b.iter(|| {
                let f = black_box(&f);
                let tokens = f.tokens.map(TokenUsage::tokens).unwrap_or_default();
                tracing::info!(
                    target: "keygate::access",
                    request_id = f.request_id.to_str().unwrap_or("-"),
                    client_addr = %f.client,
                    method = %f.method,
                    path = f.path.as_ref().map_or("-", |p| p.path()),
                    protocol = "HTTP/1.1",
                    user_agent = f.user_agent.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
                    key_id = "-",
                    key_name = "-",
                    route = f.route,
                    model = f.model.as_deref().unwrap_or("-"),
                    upstream = f.upstream.as_deref().unwrap_or("-"),
                    status = f.status,
                    error = f.error_code.unwrap_or("-"),
                    complete = f.complete,
                    latency_us = total.as_micros() as u64,
                    upstream_us = f.upstream_latency.map_or(0, |d| d.as_micros() as u64),
                    added_us = added.as_micros() as u64,
                    prompt_tokens = tokens.prompt,
                    completion_tokens = tokens.completion,
                    bytes_received = f.bytes_received,
                    bytes_sent = f.bytes_sent,
                    "request"
                );
            })
        });
    });
    assert!(!mem.0.lock().unwrap().is_empty(), "the tracing side wrote");
}

criterion_group!(benches, bench);
criterion_main!(benches);
