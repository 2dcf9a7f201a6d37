//! `keygate usage`: usage over time as a table, JSON or CSV — from the state file a gateway
//! saves (file mode; up to 10 s behind), or from Redis with `[cluster]` or the shared key store (summed over
//! every replica). Also what `keygate keys show` adds about a key's usage and quotas.

use crate::cli::args::{duration_arg, key_id_arg};
use crate::cli::config::load_key_config;
use crate::cli::error::CliError;
use crate::cli::output::{line, print_json, written, Did};
use crate::config::KeyCommandsConfig;
use crate::keys::entry::KeyId;
use crate::keys::record::KeyRecord;
use crate::keys::store::KeyStore;
use crate::keys::usage::UsageSnapshot;
use crate::limit::quota::{self, Used};
use crate::time::Timestamp;
use crate::usage::buckets::Buckets;
use crate::usage::query::{self, Group, Query};
use crate::usage::window::{day_of, month_of, Window};
use crate::usage::{redis, Row};
use clap::Args;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// How far back, e.g. 7d, 24h, 90d.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, default_value = "7d", allow_hyphen_values = true)]
    pub since: Duration,
    /// What rows are summed by: key, model, day or hour, comma-separated (e.g. key,day; not
    /// day with hour); an empty value sums everything into one row.
    #[arg(long, value_name = "BY", value_parser = Group::parse, default_value = "key")]
    pub by: Group,
    /// Only this key (repeatable).
    #[arg(long = "key", value_name = "ID", value_parser = key_id_arg)]
    pub keys: Vec<String>,
    /// Only this model (repeatable).
    #[arg(long = "model", value_name = "MODEL")]
    pub models: Vec<String>,
    /// Print the answer `GET /v1/usage` gives, as JSON.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV with a header line.
    #[arg(long)]
    pub csv: bool,
}

/// A runtime for the commands that talk to Redis.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T, CliError> {
    Ok(crate::cli::serve::runtime()?.block_on(f))
}

pub fn usage(config: Option<PathBuf>, a: UsageArgs) -> Result<(), CliError> {
    let cfg = load_key_config(config)?;
    let now = Timestamp::now();
    let from = Timestamp(now.0.saturating_sub(a.since.as_secs()));
    let mut q = Query::new(from, Query::end_of_hour(now), a.by)
        .map_err(|e| CliError::Usage(format!("`--since`: {}", e.message)))?;
    q.keys = a.keys.iter().filter_map(|k| KeyId::new(k)).collect();
    q.models = a.models;
    // Names and labels: the key file, or the shared store itself (no key file needed here).
    let file = match &cfg.keys.store {
        crate::config::StoreMode::File => KeyStore::new(&cfg.keys.file).load()?,
        crate::config::StoreMode::Redis(_) => crate::keys::backend::Store::of(&cfg.keys)?.load()?,
    };
    let keys: HashMap<&str, &KeyRecord> = file.keys.iter().map(|k| (k.id.as_str(), k)).collect();
    let hours = q.hours(now, cfg.usage.retention);
    let rows: Vec<Row> = match crate::config::shared_redis(cfg.cluster.as_ref(), &cfg.keys) {
        Some(c) => block_on(async {
            let mut conn = redis::connect(&c).await?;
            let names = redis::Names::new(&c.key_prefix);
            redis::rows(&mut conn, &names, hours, Duration::from_secs(30)).await
        })?
        .map_err(|e| CliError::Runtime(format!("cannot read usage from Redis: {e}")))?,
        None => {
            let mut rows = Vec::new();
            saved_buckets(&cfg)?.rows(hours, |h, k, m, c| rows.push((h, k, m.into(), *c)));
            rows
        }
    };
    let lines = query::sum(&q, rows, &keys);
    if a.json {
        return written(print_json(&query::answer(&q, &lines, &keys)), Did::Nothing);
    }
    let mut table: Vec<Vec<String>> = Vec::new();
    for l in &lines {
        let cells = query::cells(&q, l, &keys);
        if table.is_empty() {
            table.push(cells.iter().map(|(name, _)| name.to_string()).collect());
        }
        table.push(
            cells
                .iter()
                .map(|(_, v)| match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                })
                .collect(),
        );
    }
    if a.csv {
        let mut w = csv::Writer::from_writer(std::io::stdout());
        let rows = table
            .iter()
            .try_for_each(|r| w.write_record(r).map_err(std::io::Error::from));
        return written(rows.and_then(|()| w.flush()), Did::Nothing);
    }
    if table.is_empty() {
        let none = line(format_args!("No usage from {} to {}.", q.from, q.to));
        return written(none, Did::Nothing);
    }
    for cell in table[0].iter_mut() {
        *cell = cell.to_uppercase();
    }
    for r in &mut table[1..] {
        for c in r.iter_mut().filter(|c| c.is_empty()) {
            *c = "-".into();
        }
    }
    written(print_rows(&table), Did::Nothing)
}

/// The buckets in the state file.
fn saved_buckets(cfg: &KeyCommandsConfig) -> Result<Buckets, CliError> {
    let saved = crate::ops::usage_state::load(&cfg.keys.state_file).map_err(|e| {
        CliError::Runtime(format!(
            "cannot read the usage state file {}: {e}",
            cfg.keys.state_file.display()
        ))
    })?;
    let mut b = Buckets::default();
    b.merge(&saved.usage);
    Ok(b)
}

/// Aligned columns, every cell escaped for the terminal (names come from the key file).
fn print_rows(rows: &[Vec<String>]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| crate::text::escape(c).into_owned())
                .collect()
        })
        .collect();
    let mut widths = Vec::new();
    for r in &rows {
        widths.resize(widths.len().max(r.len()), 0);
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        line(format_args!("{}", cells.join("  ").trim_end()))?;
    }
    Ok(())
}

/// What `keys show` adds about key `rec`: its lifetime usage (summed over every replica in
/// cluster mode or with the shared key store, else as the state file saved it) and its `quota`.
pub fn key_figures(
    cfg: &KeyCommandsConfig,
    rec: &KeyRecord,
    saved: Option<&UsageSnapshot>,
) -> Result<(Option<UsageSnapshot>, serde_json::Value), CliError> {
    let now = Timestamp::now();
    let (day, month) = (Window::Day(day_of(now)), Window::Month(month_of(now)));
    let quotas = (!rec.quotas.is_empty()).then_some(&rec.quotas);
    let (usage, in_day, in_month) = match crate::config::shared_redis(
        cfg.cluster.as_ref(),
        &cfg.keys,
    ) {
        Some(c) => {
            let names = redis::Names::new(&c.key_prefix);
            let t = Duration::from_secs(5);
            let read = block_on(async {
                let mut conn = redis::connect(&c).await?;
                let totals = redis::key_totals(&mut conn, &names, &rec.id, t).await?;
                let used = redis::quota_used(&mut conn, &names, &rec.id, day, month, t).await?;
                Ok::<_, String>((totals, used))
            })?;
            match read {
                Ok(((c, last), (d, m))) => (Some(UsageSnapshot::of(&c, last)), d, m),
                Err(e) => {
                    crate::cli::output::say(format_args!("warning: cannot read usage from Redis ({e}); showing this host's state file"));
                    let b = saved_buckets(cfg)?;
                    let id = KeyId::new(&rec.id);
                    let of = |w| id.map(|id| b.quota(w, &id)).unwrap_or_default();
                    (saved.copied(), of(day), of(month))
                }
            }
        }
        None => {
            let b = saved_buckets(cfg)?;
            let id = KeyId::new(&rec.id);
            let of = |w| id.map(|id| b.quota(w, &id)).unwrap_or_default();
            (saved.copied(), of(day), of(month))
        }
    };
    let used = |w: Window| -> Used {
        match w {
            Window::Day(_) => in_day,
            Window::Month(_) => in_month,
        }
    };
    Ok((usage, quota::view(quotas, used, now)))
}
