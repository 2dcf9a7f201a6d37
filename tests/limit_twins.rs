//! The request-rate limiter has two twins, one per process (`limit::rate::RateCell`, GCRA in
//! nanoseconds of this process's clock) and one shared (`limit/redis/rate.lua`, the same GCRA
//! in microseconds of Redis's clock). Replayed on one sequence of moments, they must give the
//! same answers: allowed or refused, what remains, and when to retry.
//!
//! The script runs in a real `redis-server`, with its clock read replaced by the moment of the
//! sequence (the one line that differs; the test checks it is there).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::redis::Redis;
use keygate::limit::rate::{Quota, RateCell, Verdict};
use keygate::limit::redis::scripts;
use std::time::Duration;

/// The script's clock read, and what replaces it: the moment passed as the third argument.
const CLOCK: &str = "local now_t = redis.call('TIME')\nlocal now = now_t[1] * 1000000 + now_t[2]\n";
const GIVEN: &str = "local now = tonumber(ARGV[3])\n";

/// xorshift64: the same sequence every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n.max(1)
    }
}

/// What both twins answer, in the backend's terms (`RedisBackend::check_rate`).
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    allowed: bool,
    remaining: u32,
    retry_after: Option<Duration>,
}

#[tokio::test]
async fn the_rust_and_lua_rate_limiters_answer_a_sequence_alike() {
    assert!(
        scripts::RATE.contains(CLOCK),
        "the script reads the clock elsewhere now"
    );
    let script = redis::Script::new(&scripts::RATE.replace(CLOCK, GIVEN));
    let redis = Redis::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    // Quotas whose interval is a whole number of microseconds, so that both clocks agree on
    // it exactly: (per minute, burst).
    let quotas = [(60, 1), (60, 5), (600, 10), (6_000, 1), (120, 120), (1, 3)];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut compared = (0, 0);
    for (case, (per_minute, burst)) in quotas.into_iter().enumerate() {
        let quota = Quota::new(per_minute, burst);
        let interval_us = 60_000_000 / u64::from(per_minute);
        let (t, tau) = (interval_us, interval_us * u64::from(burst));
        let cell = RateCell::default();
        let key = format!("keygate-test:rate:{{case{case}}}");
        let mut now_us: u64 = 1_000_000;
        for step in 0..300 {
            // Bursts at one moment, gaps under and over the interval, and long pauses.
            now_us += match rng.below(10) {
                0..=3 => 0,
                4..=6 => rng.below(interval_us),
                7..=8 => interval_us + rng.below(2 * interval_us),
                _ => rng.below(u64::from(burst) * interval_us * 2),
            };
            let local = cell.check_at(now_us * 1_000, &quota);
            let local = Answer {
                allowed: local.verdict.is_allowed(),
                remaining: local.remaining,
                retry_after: match local.verdict {
                    Verdict::Limited { retry_after } => Some(retry_after),
                    _ => None,
                },
            };
            let (ok, remaining, wait_us): (i64, i64, i64) = script
                .key(&key)
                .arg(t)
                .arg(tau)
                .arg(now_us)
                .invoke_async(&mut conn)
                .await
                .unwrap();
            let shared = Answer {
                allowed: ok == 1,
                remaining: remaining.max(0) as u32,
                retry_after: (ok == 0).then(|| Duration::from_micros(wait_us.max(1000) as u64)),
            };
            assert_eq!(
                local, shared,
                "{per_minute}/min, burst {burst}: step {step} at {now_us} µs"
            );
            compared.0 += 1;
            if !shared.allowed {
                compared.1 += 1;
            }
        }
    }
    let (steps, refused) = compared;
    eprintln!("{steps} checks compared, {refused} of them refusals");
    assert!(
        refused > steps / 10 && refused < steps * 9 / 10,
        "the sequence exercises both answers: {refused} of {steps} refused"
    );
}
