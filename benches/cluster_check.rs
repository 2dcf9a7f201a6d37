//! The limit check with the Redis backend vs the local limiter (issue: cluster mode).
//!
//! Starts its own `redis-server` on a free loopback port (skipped if the binary is missing)
//! and measures one rate check (`keygate::limit::check_rate`) each way, plus an in-flight
//! lease acquire+release, on a current-thread runtime. Run: `cargo bench --bench cluster_check`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::config::cluster::{ClusterConfig, OnBackendError};
use keygate::config::Config;
use keygate::keys::file::KeyFile;
use keygate::keys::index::KeyIndex;
use keygate::keys::record::NewKey;
use keygate::limit::redis::RedisBackend;
use keygate::time::Timestamp;
use std::process::{Command, Stdio};
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Caps that never trip: this measures the cost of a check, not a refusal.
    let config = Config::parse(
        "[limits]\nrequests_per_minute = 100000000\nmax_in_flight = 100000000\n",
        None,
    )
    .unwrap();
    let mut file = KeyFile::empty();
    let (rec, _) = file
        .create(
            NewKey {
                name: "bench".into(),
                ..Default::default()
            },
            "sk_kg",
            Timestamp::now(),
        )
        .unwrap();
    let text = serde_json::to_string(&file).unwrap();
    let index = KeyIndex::load(
        std::path::Path::new("keys.json"),
        &text,
        &config.limits,
        None,
    );
    let index = std::sync::Arc::new(index.unwrap());
    let key = index.by_id(&rec.id).unwrap();
    let clock = keygate::limit::rate::RateClock::new();

    let mut g = c.benchmark_group("limit_check");
    g.measurement_time(Duration::from_secs(3)).sample_size(30);
    g.bench_function("local", |b| {
        b.iter(|| {
            rt.block_on(keygate::limit::check_rate(
                None,
                &clock,
                std::time::Instant::now(),
                &key,
            ))
            .unwrap()
        })
    });

    let Ok(port) =
        std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().unwrap().port())
    else {
        return;
    };
    let Ok(mut redis) = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
    else {
        eprintln!("redis-server not installed: skipping the Redis benchmarks");
        return;
    };
    let cluster = rt.block_on(async {
        let cluster = RedisBackend::start(ClusterConfig {
            redis_url: format!("redis://127.0.0.1:{port}/"),
            on_backend_error: OnBackendError::Deny,
            timeout: Duration::from_millis(200),
            key_prefix: "bench".into(),
            lease: Duration::from_secs(60),
            tls: Default::default(),
        });
        for _ in 0..200 {
            if keygate::limit::check_rate(Some(&cluster), &clock, std::time::Instant::now(), &key)
                .await
                .is_ok_and(|i| i.verdict.is_allowed())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster
    });
    g.bench_function("redis_rate", |b| {
        b.iter(|| {
            rt.block_on(keygate::limit::check_rate(
                Some(&cluster),
                &clock,
                std::time::Instant::now(),
                &key,
            ))
            .unwrap()
        })
    });
    g.bench_function("redis_in_flight_lease", |b| {
        b.iter(|| {
            rt.block_on(keygate::limit::acquire_slot(Some(&cluster), &key))
                .unwrap()
        })
    });
    g.finish();
    let _ = redis.kill();
}

criterion_group!(benches, bench);
criterion_main!(benches);
