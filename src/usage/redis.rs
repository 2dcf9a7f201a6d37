//! Cluster mode's usage store: Redis, shared by every replica, so usage, last-used times and
//! quota counts are summed across them. One pipelined transaction a second per replica
//! writes what it counted (`write`); queries read the hours they cover (`rows`).
//!
//! Layout, under `{<[cluster] key_prefix>}` (in braces: a hash tag, so every usage key is in
//! one Redis Cluster slot and a transaction may touch them all):
//!
//! | key | type | content |
//! |---|---|---|
//! | `{p}:usage:<yyyymmddhh>` | hash | `<key id>\|<model>\|<counter>` → count; expires `[usage] retention` after its hour ends |
//! | `{p}:usage:total` | hash | `<key id>\|<counter>` → lifetime count |
//! | `{p}:usage:lastused` | sorted set | key id → Unix seconds of its last request (`ZADD GT`) |
//! | `{p}:quota:<yyyymmdd>`, `{p}:quota:<yyyymm>` | hash | `<key id>\|requests`, `<key id>\|tokens` → count in that UTC day or month; expires a day after it |
//!
//! A model name may hold `|`; a key id and a counter never do, so a field splits at its first
//! and last `|`.

use crate::config::cluster::{redis_client, ClusterConfig};
use crate::keys::entry::KeyId;
use crate::keys::usage::{Counter, Counts};
use crate::limit::quota::{Stored, Used};
use crate::time::Timestamp;
use crate::usage::batch::Batch;
use crate::usage::window::{hour_compact, hour_start, Window, DAY, HOUR};
use redis::aio::ConnectionLike;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// The names of the usage keys under one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    tag: String,
}

impl Names {
    /// For `[cluster] key_prefix`.
    pub fn new(key_prefix: &str) -> Names {
        Names {
            tag: format!("{{{key_prefix}}}"),
        }
    }

    pub fn hour(&self, h: u32) -> String {
        format!("{}:usage:{}", self.tag, hour_compact(h))
    }

    fn total(&self) -> String {
        format!("{}:usage:total", self.tag)
    }

    fn last_used(&self) -> String {
        format!("{}:usage:lastused", self.tag)
    }

    pub fn quota(&self, w: Window) -> String {
        format!("{}:quota:{}", self.tag, w.compact())
    }
}

/// Unix seconds as Redis takes them.
fn secs(t: Timestamp) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

/// Writes one flush in one transaction (so a retry after a refused one does not count twice),
/// and reads, in the same round trip, the day's and month's quota counts of `refresh`.
pub async fn write(
    conn: &mut impl ConnectionLike,
    names: &Names,
    batch: &Batch,
    retention: Duration,
    refresh: &[KeyId],
    timeout: Duration,
) -> Result<Vec<(KeyId, Stored)>, String> {
    let mut p = redis::pipe();
    p.atomic();
    if !batch.buckets.is_empty() {
        let hour = names.hour(batch.hour);
        let mut totals: HashMap<KeyId, Counts> = HashMap::new();
        for (id, m, c) in &batch.buckets {
            for counter in Counter::ALL {
                let n = c.get(counter);
                if n > 0 {
                    let field = format!("{id}|{}|{}", m.model, counter.name());
                    p.cmd("HINCRBY").arg(&hour).arg(field).arg(n).ignore();
                }
            }
            totals.entry(*id).or_default().add(c);
        }
        let expires = hour_start(batch.hour)
            .plus(retention)
            .plus(Duration::from_secs(HOUR));
        p.cmd("EXPIREAT").arg(&hour).arg(secs(expires)).ignore();
        let total = names.total();
        for (id, c) in &totals {
            for counter in Counter::ALL {
                let n = c.get(counter);
                if n > 0 {
                    let field = format!("{id}|{}", counter.name());
                    p.cmd("HINCRBY").arg(&total).arg(field).arg(n).ignore();
                }
            }
        }
    }
    if !batch.last_used.is_empty() {
        let mut z = redis::cmd("ZADD");
        z.arg(names.last_used()).arg("GT");
        for (id, t) in &batch.last_used {
            z.arg(*t).arg(id.as_str());
        }
        p.add_command(z).ignore();
    }
    let windows = [batch.day, batch.month];
    if !batch.quota.is_empty() {
        for w in windows {
            let key = names.quota(w);
            for (id, _, u) in &batch.quota {
                for (what, n) in [("requests", u.requests), ("tokens", u.tokens)] {
                    if n > 0 {
                        p.cmd("HINCRBY")
                            .arg(&key)
                            .arg(format!("{id}|{what}"))
                            .arg(n)
                            .ignore();
                    }
                }
            }
            p.cmd("EXPIREAT")
                .arg(&key)
                .arg(secs(w.end().plus(Duration::from_secs(DAY))))
                .ignore();
        }
    }
    if !refresh.is_empty() {
        for w in windows {
            let mut get = redis::cmd("HMGET");
            get.arg(names.quota(w));
            for id in refresh {
                get.arg(format!("{id}|requests"))
                    .arg(format!("{id}|tokens"));
            }
            p.add_command(get);
        }
    }
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let run = p.query_async::<Vec<Vec<Option<u64>>>>(conn);
    let counts = match tokio::time::timeout(timeout, run).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => {
            return Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        }
    };
    let (Some(day), Some(month)) = (counts.first(), counts.get(1)) else {
        return Ok(Vec::new());
    };
    let used = |v: &Vec<Option<u64>>, i: usize| Used {
        requests: v.get(2 * i).copied().flatten().unwrap_or(0),
        tokens: v.get(2 * i + 1).copied().flatten().unwrap_or(0),
    };
    Ok(refresh
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (Window::Day(d), Window::Month(m)) = (batch.day, batch.month) else {
                return (*id, Stored::default());
            };
            let stored = Stored {
                day: d,
                month: m,
                in_day: used(day, i),
                in_month: used(month, i),
            };
            (*id, stored)
        })
        .collect())
}

/// A connection for a command (`keygate usage`, `keygate keys show`) to the cluster's Redis,
/// made within 5 s.
pub async fn connect(c: &ClusterConfig) -> Result<redis::aio::MultiplexedConnection, String> {
    if c.redis_url.starts_with("rediss://") {
        // redis-rs builds its TLS configuration with the process's default provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let client = redis_client(c).map_err(|e| format!("`{}`: {e}", e.field()))?;
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| "Redis did not answer within 5s".to_string())?
    .map_err(|e| e.to_string())
}

/// A hash field's parts: key id, model, counter.
fn split_field(field: &str) -> Option<(KeyId, &str, Counter)> {
    let (id, rest) = field.split_once('|')?;
    let (model, counter) = rest.rsplit_once('|')?;
    Some((KeyId::new(id)?, model, Counter::from_name(counter)?))
}

/// Every bucket of the hours in `hours`, read in pipelines of a week of hours.
pub async fn rows(
    conn: &mut impl ConnectionLike,
    names: &Names,
    hours: Range<u32>,
    timeout: Duration,
) -> Result<Vec<(u32, KeyId, Arc<str>, Counts)>, String> {
    let mut out: HashMap<(u32, KeyId, Arc<str>), Counts> = HashMap::new();
    let mut models: HashMap<String, Arc<str>> = HashMap::new();
    let all: Vec<u32> = hours.collect();
    for chunk in all.chunks(168) {
        let mut p = redis::pipe();
        for h in chunk {
            p.cmd("HGETALL").arg(names.hour(*h));
        }
        let got = tokio::time::timeout(timeout, p.query_async::<Vec<HashMap<String, u64>>>(conn))
            .await
            .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
            .map_err(|e| e.to_string())?;
        for (h, fields) in chunk.iter().zip(got) {
            for (field, n) in fields {
                let Some((id, model, counter)) = split_field(&field) else {
                    continue;
                };
                let model = match models.get(model) {
                    Some(m) => Arc::clone(m),
                    None => {
                        let m: Arc<str> = Arc::from(model);
                        models.insert(model.to_string(), Arc::clone(&m));
                        m
                    }
                };
                let c = out.entry((*h, id, model)).or_default();
                let mut a = c.to_array();
                a[counter as usize] = a[counter as usize].saturating_add(n);
                *c = Counts::from_array(a);
            }
        }
    }
    Ok(out.into_iter().map(|((h, k, m), c)| (h, k, m, c)).collect())
}

/// A key's lifetime totals and last-used time, summed over every replica.
pub async fn key_totals(
    conn: &mut impl ConnectionLike,
    names: &Names,
    id: &str,
    timeout: Duration,
) -> Result<(Counts, Option<Timestamp>), String> {
    let mut get = redis::cmd("HMGET");
    get.arg(names.total());
    for c in Counter::ALL {
        get.arg(format!("{id}|{}", c.name()));
    }
    let mut p = redis::pipe();
    p.add_command(get);
    p.cmd("ZSCORE").arg(names.last_used()).arg(id);
    let (values, last): (Vec<Option<u64>>, Option<f64>) =
        tokio::time::timeout(timeout, p.query_async(conn))
            .await
            .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
            .map_err(|e| e.to_string())?;
    let mut a = [0u64; 8];
    for (slot, v) in a.iter_mut().zip(values) {
        *slot = v.unwrap_or(0);
    }
    let last = last.filter(|t| *t > 0.0).map(|t| Timestamp(t as u64));
    Ok((Counts::from_array(a), last))
}

/// A key's quota counts in the day and month of `now`, summed over every replica.
pub async fn quota_used(
    conn: &mut impl ConnectionLike,
    names: &Names,
    id: &str,
    day: Window,
    month: Window,
    timeout: Duration,
) -> Result<(Used, Used), String> {
    let mut p = redis::pipe();
    for w in [day, month] {
        p.cmd("HMGET")
            .arg(names.quota(w))
            .arg(format!("{id}|requests"))
            .arg(format!("{id}|tokens"));
    }
    let got: Vec<Vec<Option<u64>>> = tokio::time::timeout(timeout, p.query_async(conn))
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
        .map_err(|e| e.to_string())?;
    let used = |i: usize| Used {
        requests: got
            .get(i)
            .and_then(|v| v.first())
            .copied()
            .flatten()
            .unwrap_or(0),
        tokens: got
            .get(i)
            .and_then(|v| v.get(1))
            .copied()
            .flatten()
            .unwrap_or(0),
    };
    Ok((used(0), used(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_at_the_first_and_last_bar() {
        let (id, model, c) = split_field("key_aaaaaaaaaaaaaaaa|org|model|prompt_tokens").unwrap();
        assert_eq!(id.as_str(), "key_aaaaaaaaaaaaaaaa");
        assert_eq!(model, "org|model");
        assert_eq!(c, Counter::PromptTokens);
        assert!(split_field("key_aaaaaaaaaaaaaaaa||requests").is_some());
        assert!(split_field("nonsense").is_none());
        let n = Names::new("keygate");
        let t = Timestamp::parse("2026-11-30T12:00:00Z").unwrap();
        assert_eq!(
            n.hour(crate::usage::window::hour_of(t)),
            "{keygate}:usage:2026113012"
        );
    }
}
