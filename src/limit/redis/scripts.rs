//! The Lua scripts of the Redis backend, one file each beside this one, each the twin of a
//! local limiter: `rate.lua` of `limit::rate::RateCell` (GCRA; `tests/limit_twins.rs` runs
//! both on one sequence), `slot.lua` of `limit::inflight::InFlight` (as leases in a sorted
//! set), `tokens.lua` of `limit::tokens::TokenBucket`. Each reads the time from Redis
//! (`TIME`), so replicas with skewed clocks agree.

use redis::Script;

/// GCRA in microseconds: `KEYS[1]` the cell, `ARGV` interval and tolerance; answers
/// `{allowed, remaining, wait}`.
pub const RATE: &str = include_str!("rate.lua");
/// A lease on one in-flight slot: `KEYS[1]` the set, `ARGV` cap, lease (ms) and member;
/// answers 1 when leased.
pub const SLOT: &str = include_str!("slot.lua");
/// The token bucket: `KEYS[1]` the bucket, `ARGV` size, `reserve` or `adjust`, and the
/// amount; answers `{ok, tokens, wait}`.
pub const TOKENS: &str = include_str!("tokens.lua");

/// The scripts, hashed once (`EVALSHA` by their hash, loaded on first use).
pub struct Scripts {
    pub rate: Script,
    pub slot: Script,
    pub tokens: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            rate: Script::new(RATE),
            slot: Script::new(SLOT),
            tokens: Script::new(TOKENS),
        }
    }
}

impl Default for Scripts {
    fn default() -> Scripts {
        Scripts::new()
    }
}
