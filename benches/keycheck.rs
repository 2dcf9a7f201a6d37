//! Micro-benchmarks of the per-request work that does not touch a socket:
//!
//! - `keycheck/full/{1k,100k,1M}`: what `authenticate` + the rate stage cost for an allowed
//!   request — `Token::parse` (prefix, alphabet, CRC32 checksum), SHA-256 of the token,
//!   `KeyIndex::lookup`, and the key's GCRA cell (`RateCell::check`). The presented tokens rotate over
//!   1024 keys spread across the whole index, so at 1M keys the lookup pays real cache misses.
//! - `keycheck/parts/*`: the same four steps one by one, to see where the time goes, and the
//!   rate check's refused (429) path.
//! - `keycheck/index_load/10k_keys`: reading and indexing 10k keys' text (what a reload or
//!   start-up pays), through the key-file reader as the gateway does.
//! - `route/resolve/*`: `RouteTable::default().resolve` for typical and missing routes.
//! - `body_facts/*`: model extraction from a 4 KB and a 64 KB chat body, with `model` last
//!   (the OpenAI Python SDK puts `messages` first) and first.
//! - `usage_scanner/*`: `UsageScanner` over a realistic chat SSE stream, one event per chunk.
//! - `usage_record/*`: what a request adds to its key's state for usage over time and quotas:
//!   `KeyUsage::settle` (lifetime counters plus its model's pending hourly bucket) against the
//!   lifetime counters alone (what settling did before), the quota check with and without
//!   quotas, and finding the model in an answer's first chunk.
//!
//! Run: `cargo bench --bench keycheck` (about 2 minutes on 2 cores; the 1M-key index is built
//! once and takes a few seconds). Filter with e.g. `cargo bench --bench keycheck -- keycheck/full`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::Method;
use keygate::account::scanner::UsageScanner;
use keygate::authorize::json_body::body_facts;
use keygate::authorize::routes::{is_normal_path, RouteTable};
use keygate::config::LimitDefaults;
use keygate::keys::file::{KeyFile, FILE_VERSION};
use keygate::keys::index::KeyIndex;
use keygate::keys::record::{hash_hex, KeyLimits, KeyRecord};
use keygate::keys::scope::Scopes;
use keygate::keys::token::{self as key, Token};
use keygate::limit::rate::{Quota, RateCell, RateClock};
use keygate::time::Timestamp;
use std::hint::black_box;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const PREFIX: &str = "sk_kg";
const SIZES: [(usize, &str); 3] = [(1_000, "1k"), (100_000, "100k"), (1_000_000, "1M")];
/// How many distinct tokens the benchmark presents, spread evenly over the key set.
const PROBES: usize = 1024;

/// The built-in `[limits]` defaults (parsed, so new fields need no change here).
fn limits() -> LimitDefaults {
    keygate::config::Config::parse("", None)
        .expect("the empty configuration is valid")
        .limits
}

/// 1M key records (hashes from `key::generate`) and every plaintext, built once.
struct Keys {
    records: Vec<KeyRecord>,
    plaintexts: Vec<String>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let n = SIZES[SIZES.len() - 1].0;
        let started = std::time::Instant::now();
        let now = Timestamp::now();
        let scopes = Scopes::inference().names();
        let mut records = Vec::with_capacity(n);
        let mut plaintexts = Vec::with_capacity(n);
        for i in 0..n {
            let t = key::generate(PREFIX).expect("OS random source");
            records.push(KeyRecord {
                id: format!("key_{i:016}"),
                name: format!("bench-{i}"),
                sha256: hash_hex(&t.hash),
                last4: t.last4.clone(),
                scopes: scopes.clone(),
                models: Vec::new(),
                created_at: now,
                expires_at: None,
                revoked_at: None,
                rotated_at: None,
                // High enough that the limiter is exercised but never refuses.
                limits: KeyLimits {
                    requests_per_minute: Some(100_000_000),
                    ..KeyLimits::default()
                },
                previous: Vec::new(),
                ..KeyRecord::default()
            });
            plaintexts.push(t.plaintext);
        }
        eprintln!(
            "generated {n} keys in {:.2}s",
            started.elapsed().as_secs_f64()
        );
        Keys {
            records,
            plaintexts,
        }
    })
}

/// Key-file text indexed as the gateway does it: `KeyIndex::load`, through the key-file reader.
fn load(text: &str) -> KeyIndex {
    KeyIndex::load(std::path::Path::new("keys.json"), text, &limits(), None)
        .expect("a valid key file")
}

/// The index over the first `n` keys, and `PROBES` tokens spread over them.
fn index_of(n: usize) -> (Arc<KeyIndex>, Vec<String>) {
    let k = keys();
    let file = KeyFile {
        version: FILE_VERSION,
        keys: k.records[..n].to_vec(),
    };
    let text = serde_json::to_string(&file).expect("records serialise");
    drop(file);
    let started = std::time::Instant::now();
    let rss_before = rss_kb();
    let index = Arc::new(load(&text));
    drop(text);
    let grown = rss_kb().saturating_sub(rss_before);
    eprintln!(
        "loaded index of {n} keys in {:.3}s; RSS grew {:.1} MB ({} bytes per key)",
        started.elapsed().as_secs_f64(),
        grown as f64 / 1024.0,
        grown * 1024 / n as u64
    );
    let step = (n / PROBES).max(1);
    let probes = (0..PROBES)
        .map(|i| k.plaintexts[(i * step) % n].clone())
        .collect();
    (index, probes)
}

/// This process's resident set (Linux), to see what the index itself costs per key.
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The whole check an allowed request pays before forwarding.
#[inline]
fn key_check(index: &Arc<KeyIndex>, clock: &RateClock, token: &str) -> u32 {
    let t = Token::parse(token, PREFIX).expect("well-formed token");
    let (key, _secret) = index.lookup(&t.hash()).expect("known key");
    let info = key.state().rate.check(clock, &key.rate);
    debug_assert!(info.verdict.is_allowed());
    info.remaining
}

fn bench_keycheck(c: &mut Criterion) {
    for (n, label) in SIZES {
        let (index, probes) = index_of(n);
        let clock = RateClock::new();
        let mut g = c.benchmark_group("keycheck/full");
        g.throughput(Throughput::Elements(1));
        let mut i = 0usize;
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                i = (i + 1) % PROBES;
                black_box(key_check(&index, &clock, black_box(&probes[i])))
            })
        });
        g.finish();
        if n == SIZES[0].0 || n == SIZES[SIZES.len() - 1].0 {
            // The lookup alone, at the smallest and largest size.
            let hashes: Vec<key::KeyHash> = probes.iter().map(|p| key::hash_token(p)).collect();
            let mut j = 0usize;
            let mut g = c.benchmark_group("keycheck/parts");
            g.bench_function(format!("lookup/{label}"), |b| {
                b.iter(|| {
                    j = (j + 1) % PROBES;
                    black_box(index.lookup(black_box(&hashes[j])).is_some())
                })
            });
            g.finish();
        }
    }

    let token = keys().plaintexts[0].clone();
    let mut g = c.benchmark_group("keycheck/parts");
    g.bench_function("token_parse_checksum", |b| {
        b.iter(|| Token::parse(black_box(&token), PREFIX).is_ok())
    });
    g.bench_function("sha256", |b| b.iter(|| key::hash_token(black_box(&token))));
    // A burst no benchmark run can drain: every check is allowed.
    let clock = RateClock::new();
    let rate = RateCell::default();
    let quota_open = Quota::new(100_000_000, u32::MAX);
    g.bench_function("rate_check/allowed", |b| {
        b.iter(|| black_box(rate.check(&clock, &quota_open)).remaining)
    });
    // One cell a minute, already taken: every check is refused (the 429 path).
    let refused = RateCell::default();
    let quota_1 = Quota::new(1, 1);
    let _ = refused.check(&clock, &quota_1);
    g.bench_function("rate_check/refused", |b| {
        b.iter(|| black_box(refused.check(&clock, &quota_1)).verdict)
    });
    g.finish();

    // What a reload or start-up pays per key: reading its record and one `KeyIndex` entry
    // (runtime state is created on first use).
    let file = KeyFile {
        version: FILE_VERSION,
        keys: keys().records[..10_000].to_vec(),
    };
    let text = serde_json::to_string(&file).expect("records serialise");
    let mut g = c.benchmark_group("keycheck/index_load");
    g.sample_size(10);
    g.throughput(Throughput::Elements(file.keys.len() as u64));
    g.bench_function("10k_keys", |b| b.iter(|| load(black_box(&text)).len()));
    g.finish();
}

fn bench_route(c: &mut Criterion) {
    let t = RouteTable::default();
    let mut g = c.benchmark_group("route/resolve");
    for (name, m, p) in [
        ("chat", Method::POST, "/v1/chat/completions"),
        ("embeddings", Method::POST, "/v1/embeddings"),
        (
            "model_get",
            Method::GET,
            "/v1/models/meta-llama/Llama-3.1-8B",
        ),
        ("images", Method::POST, "/v1/images/generations"),
        ("miss", Method::GET, "/metrics"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| t.resolve(black_box(&m), black_box(p)).map(|r| r.scope))
        });
    }
    g.bench_function("is_normal_path", |b| {
        b.iter(|| is_normal_path(black_box("/v1/chat/completions")))
    });
    g.finish();
}

/// A chat body of about `size` bytes: several turns with escapes and unicode, as clients send.
fn chat_body(size: usize, model_first: bool) -> Vec<u8> {
    let turn = "Please summarise the following text.\n\"Quoted\" words, tabs\tand unicode: \u{e9}t\u{e9}, \u{4e2d}\u{6587}. ";
    let mut messages =
        vec![serde_json::json!({"role": "system", "content": "You are a helpful assistant."})];
    let mut i = 0;
    loop {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(serde_json::json!({"role": role, "content": turn.repeat(4)}));
        i += 1;
        let msgs = serde_json::Value::Array(messages.clone());
        let body = if model_first {
            format!(
                r#"{{"model":"llama-3.1-8b-instruct","messages":{msgs},"temperature":0.7,"max_tokens":256,"stream":true}}"#
            )
        } else {
            format!(
                r#"{{"messages":{msgs},"temperature":0.7,"max_tokens":256,"stream":true,"model":"llama-3.1-8b-instruct"}}"#
            )
        }
        .into_bytes();
        if body.len() >= size {
            return body;
        }
    }
}

fn bench_body(c: &mut Criterion) {
    let mut g = c.benchmark_group("body_facts");
    for (size, label) in [(4 << 10, "4KB"), (64 << 10, "64KB")] {
        for model_first in [false, true] {
            let body = chat_body(size, model_first);
            assert_eq!(
                body_facts(&body).unwrap().model.as_deref(),
                Some("llama-3.1-8b-instruct")
            );
            g.throughput(Throughput::Bytes(body.len() as u64));
            let where_ = if model_first {
                "model_first"
            } else {
                "model_last"
            };
            g.bench_function(format!("{label}/{where_}"), |b| {
                b.iter(|| body_facts(black_box(&body)).map(|f| f.stream))
            });
        }
    }
    g.finish();
}

/// A chat completion streamed as vLLM does: a role chunk, `tokens` content chunks, a finish
/// chunk, the usage chunk and `[DONE]`, one event per element.
fn sse_stream(tokens: usize) -> Vec<Vec<u8>> {
    let head = r#"{"id":"chatcmpl-8f2a9c1e6b3d4f7a","object":"chat.completion.chunk","created":1718000000,"model":"llama-3.1-8b-instruct","#;
    let mut ev = vec![format!(
        r#"data: {head}"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#
    )];
    for i in 0..tokens {
        ev.push(format!(
            r#"data: {head}"choices":[{{"index":0,"delta":{{"content":" word{i}"}},"logprobs":null,"finish_reason":null}}]}}"#
        ));
    }
    ev.push(format!(
        r#"data: {head}"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}]}}"#
    ));
    ev.push(format!(
        r#"data: {head}"choices":[],"usage":{{"prompt_tokens":1234,"total_tokens":{},"completion_tokens":{tokens}}}}}"#,
        1234 + tokens
    ));
    ev.push("data: [DONE]".into());
    ev.into_iter()
        .map(|e| format!("{e}\n\n").into_bytes())
        .collect()
}

fn bench_usage(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage_scanner");
    for tokens in [16usize, 256] {
        let events = sse_stream(tokens);
        let bytes: usize = events.iter().map(Vec::len).sum();
        let mut check = UsageScanner::for_answer(false);
        events.iter().for_each(|e| check.feed(e));
        assert_eq!(check.tokens().map(|t| t.completion), Some(tokens as u64));
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(format!("stream_{tokens}_events/per_event_chunks"), |b| {
            b.iter(|| {
                let mut s = UsageScanner::for_answer(false);
                for e in &events {
                    s.feed(black_box(e));
                }
                s.tokens()
            })
        });
        let whole: Vec<u8> = events.concat();
        g.bench_function(format!("stream_{tokens}_events/one_chunk"), |b| {
            b.iter(|| {
                let mut s = UsageScanner::for_answer(false);
                s.feed(black_box(&whole));
                s.tokens()
            })
        });
    }
    // A chat answer the size of the load harness's, usage last: the vector search every answer
    // but the Responses API's gets, and the structured read the Responses API's get; and a
    // Responses stream whose first event echoes the request's tools.
    for (name, echoes) in [("chat_400B/flat", false), ("chat_400B/structured", true)] {
        assert_eq!(scan(echoes, &[CHAT]), Some(27));
        g.throughput(Throughput::Bytes(CHAT.len() as u64));
        g.bench_function(name, |b| b.iter(|| scan(echoes, &[CHAT])));
    }
    let stream = responses_stream();
    let lines: Vec<&[u8]> = stream.split_inclusive(|b| *b == b'\n').collect();
    assert_eq!(scan(true, &lines), Some(40));
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("responses_stream/structured", |b| {
        b.iter(|| scan(true, &lines))
    });
    g.finish();
}

fn scan(echoes: bool, chunks: &[&[u8]]) -> Option<u64> {
    let mut s = UsageScanner::for_answer(echoes);
    for c in chunks {
        s.feed(black_box(c));
    }
    s.tokens().map(|t| t.completion)
}

const CHAT: &[u8] = br#"{"id":"chatcmpl-5f1e2d3c4b5a6978","object":"chat.completion","created":1764921600,"model":"llama-3.1-8b-instruct","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today? I can answer questions, write and explain code, or summarise a text.","tool_calls":[]},"logprobs":null,"finish_reason":"stop","stop_reason":null}],"usage":{"prompt_tokens":24,"total_tokens":51,"completion_tokens":27,"prompt_tokens_details":null},"prompt_logprobs":null}"#;

fn responses_stream() -> Vec<u8> {
    let mut s = String::from(
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"tools\":[{\"type\":\"function\",\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}],\"usage\":null},\"sequence_number\":0}\n\n",
    );
    for i in 1..=40 {
        s.push_str(&format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\" word\",\"sequence_number\":{i}}}\n\n"
        ));
    }
    s.push_str("event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":31,\"output_tokens\":40,\"total_tokens\":71}},\"sequence_number\":41}\n\n");
    s.into_bytes()
}

fn bench_usage_record(c: &mut Criterion) {
    use keygate::keys::state::KeyState;
    use keygate::keys::usage::{Settled, Tokens};
    use keygate::limit::quota;
    let mut g = c.benchmark_group("usage_record");
    let state = KeyState::default();
    let tokens = Tokens {
        prompt: 1234,
        completion: 256,
    };
    let settled = |model| Settled {
        model,
        status: 200,
        quota_refused: false,
        tokens: Some(tokens),
        estimated: false,
    };
    let models = [
        "llama-3.1-8b-instruct",
        "qwen2.5-7b-instruct",
        "bge-small-en",
        "m4",
        "m5",
        "m6",
        "m7",
        "m8",
    ];
    for m in models {
        state.usage.settle(settled(m));
    }
    g.bench_function("settle/lifetime_counters_only", |b| {
        b.iter(|| {
            state.usage.record_status(black_box(200));
            state.usage.add_tokens(black_box(tokens), false);
        })
    });
    g.bench_function("settle/first_of_8_models", |b| {
        b.iter(|| {
            state
                .usage
                .settle(black_box(settled("llama-3.1-8b-instruct")))
        })
    });
    g.bench_function("settle/last_of_8_models", |b| {
        b.iter(|| state.usage.settle(black_box(settled("m8"))))
    });
    let now = Timestamp::now();
    g.bench_function("quota_check/no_quotas", |b| {
        b.iter(|| quota::check(None, &state.quota, black_box(now)))
    });
    let q = keygate::keys::annotations::KeyQuotas {
        tokens_per_day: Some(u64::MAX),
        requests_per_month: Some(u64::MAX),
        ..Default::default()
    };
    g.bench_function("quota_check/two_quotas", |b| {
        b.iter(|| quota::check(Some(&q), &state.quota, black_box(now)))
    });
    let first = bytes::Bytes::from(sse_stream(16).swap_remove(0));
    assert!(keygate::account::answer_model::find(&first).is_some());
    g.bench_function("answer_model/first_event", |b| {
        b.iter(|| keygate::account::answer_model::find(black_box(&first)))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_route, bench_body, bench_usage, bench_usage_record, bench_keycheck
}
criterion_main!(benches);
