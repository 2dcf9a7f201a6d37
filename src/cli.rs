//! `keygate keys …` and `keygate check`: what operators type every day.
//!
//! Human output is a table on stdout; `--json` prints what scripts parse; errors go to
//! stderr with a non-zero exit (see `main`). A plaintext key is printed once, by `create` or
//! `rotate`, and nowhere else.

use crate::account::UsageSnapshot;
use crate::config::{Config, ConfigError};
use crate::store::{KeyLimits, KeyRecord, KeyStore, NewKey, Status, StoreError};
use crate::time::{self, Timestamp};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name people recognise, e.g. the app or person using the key.
    #[arg(long)]
    pub name: String,
    /// Comma-separated scopes (default: inference). See `keygate keys create --help`.
    #[arg(long, value_delimiter = ',')]
    pub scopes: Vec<String>,
    /// Comma-separated model globs the key may use, e.g. 'llama-*' (default: all).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Expire after this long, e.g. 90d, 24h, 30m (default: never).
    #[arg(long)]
    pub expires_in: Option<String>,
    /// Requests per minute (default: [limits] requests_per_minute).
    #[arg(long)]
    pub rpm: Option<u32>,
    /// Burst size in requests (default: the per-minute rate).
    #[arg(long)]
    pub burst: Option<u32>,
    /// Tokens per minute.
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    pub max_in_flight: Option<u32>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub json: bool,
    /// Only active keys that expire within this long, e.g. 7d.
    #[arg(long)]
    pub expiring_within: Option<String>,
    /// Include revoked keys.
    #[arg(long)]
    pub all: bool,
}

/// `--config`, else ./gateway.toml if present, else built-in defaults (keys.json here).
pub fn load_config(path: Option<PathBuf>) -> Result<Config, CliError> {
    match path {
        Some(p) => Ok(Config::load(&p)?),
        None if Path::new("gateway.toml").exists() => Ok(Config::load(Path::new("gateway.toml"))?),
        None => Ok(Config::parse("", None)?),
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn announce_secret(action: &str, rec: &KeyRecord, plaintext: &str) {
    println!("{action} key {} ({})", rec.id, rec.name);
    println!();
    println!("    {plaintext}");
    println!();
    println!("This is the only time this key is shown. Store it now: keygate keeps only its hash.");
}

pub fn create(config: Option<PathBuf>, a: CreateArgs) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let now = Timestamp::now();
    let expires_at = a
        .expires_in
        .as_deref()
        .map(|d| {
            time::parse_duration(d).and_then(|d| {
                now.checked_plus(d)
                    .ok_or_else(|| "the expiry must be before the year 10000".to_string())
            })
        })
        .transpose()
        .map_err(CliError::Usage)?;
    let new = NewKey {
        name: a.name,
        scopes: a.scopes,
        models: a.models,
        expires_at,
        limits: KeyLimits {
            requests_per_minute: a.rpm,
            burst: a.burst,
            tokens_per_minute: a.tpm,
            max_in_flight: a.max_in_flight,
        },
    };
    let prefix = cfg.keys.prefix.clone();
    let (rec, token) = KeyStore::new(&cfg.keys.file).update(|f| f.create(new, &prefix, now))?;
    audit("created", &rec);
    if a.json {
        let mut v = rec.view(&prefix, now, None);
        v["key"] = token.plaintext.into();
        print_json(&v);
    } else {
        announce_secret("Created", &rec, &token.plaintext);
    }
    Ok(())
}

fn audit(action: &str, rec: &KeyRecord) {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    tracing::info!(target: "keygate::audit", action, key_id = %rec.id, key_name = %rec.name, by = %format!("cli:{user}"), "key {action}");
}

/// Last-used times and usage saved by a gateway that shares this key file.
fn saved_usage(cfg: &Config) -> std::collections::HashMap<String, UsageSnapshot> {
    crate::usage::load_state(&cfg.keys.state_file).unwrap_or_default()
}

pub fn list(config: Option<PathBuf>, a: ListArgs) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let file = KeyStore::new(&cfg.keys.file).load()?;
    let now = Timestamp::now();
    let within = a
        .expiring_within
        .as_deref()
        .map(time::parse_duration)
        .transpose()
        .map_err(CliError::Usage)?;
    let usage = saved_usage(&cfg);
    let keys: Vec<&KeyRecord> = file
        .keys
        .iter()
        .filter(|k| a.all || k.status(now) != Status::Revoked)
        .filter(|k| match within {
            None => true,
            Some(d) => {
                k.status(now) == Status::Active && k.expires_at.is_some_and(|e| e <= now.plus(d))
            }
        })
        .collect();
    let prefix = &cfg.keys.prefix;
    if a.json {
        let data: Vec<_> = keys
            .iter()
            .map(|k| k.view(prefix, now, usage.get(&k.id)))
            .collect();
        print_json(&serde_json::Value::Array(data));
        return Ok(());
    }
    let mut rows = vec![[
        "ID",
        "NAME",
        "KEY",
        "SCOPES",
        "CREATED",
        "LAST USED",
        "EXPIRES",
        "STATUS",
    ]
    .map(String::from)];
    for k in keys {
        let last = usage.get(&k.id).and_then(|u| u.last_used);
        rows.push([
            k.id.clone(),
            k.name.clone(),
            crate::key::mask(prefix, &k.last4),
            k.scopes.join(","),
            ago(now, Some(k.created_at)),
            ago(now, last),
            k.expires_at
                .map_or_else(|| "never".into(), |e| until(now, e)),
            k.status(now).as_str().to_string(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

fn ago(now: Timestamp, t: Option<Timestamp>) -> String {
    match t {
        None => "never".into(),
        Some(t) => format!("{} ago", time::human_secs(t.until(now))),
    }
}

fn until(now: Timestamp, t: Timestamp) -> String {
    if t <= now {
        format!("{} ago", time::human_secs(t.until(now)))
    } else {
        format!("in {}", time::human_secs(now.until(t)))
    }
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

pub fn show(config: Option<PathBuf>, id: &str, json: bool) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let file = KeyStore::new(&cfg.keys.file).load()?;
    let k = file.get(id)?;
    let now = Timestamp::now();
    let usage = saved_usage(&cfg);
    let mut v = k.view(&cfg.keys.prefix, now, usage.get(id));
    if let Some(u) = usage.get(id) {
        v["usage"] = serde_json::to_value(u).unwrap_or_default();
    }
    if json {
        print_json(&v);
        return Ok(());
    }
    let mut rows = Vec::new();
    if let serde_json::Value::Object(map) = &v {
        for (field, value) in map {
            if field == "object" {
                continue;
            }
            let text = match value {
                serde_json::Value::Null => "-".to_string(),
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(a) if a.is_empty() => "-".to_string(),
                serde_json::Value::Object(o) if o.is_empty() => "-".to_string(),
                other => other.to_string(),
            };
            rows.push([format!("{field}:"), text]);
        }
    }
    print_table(&rows);
    Ok(())
}

pub fn rotate(
    config: Option<PathBuf>,
    id: &str,
    grace: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let grace = grace
        .map(time::parse_duration)
        .transpose()
        .map_err(CliError::Usage)?
        .unwrap_or_default();
    let now = Timestamp::now();
    let prefix = cfg.keys.prefix.clone();
    let (rec, token) =
        KeyStore::new(&cfg.keys.file).update(|f| f.rotate(id, grace.as_secs(), &prefix, now))?;
    audit("rotated", &rec);
    if json {
        let mut v = rec.view(&prefix, now, None);
        v["key"] = token.plaintext.into();
        print_json(&v);
    } else {
        announce_secret("Rotated", &rec, &token.plaintext);
        if grace.is_zero() {
            println!("The previous secret stopped working now.");
        } else {
            println!(
                "The previous secret keeps working until {}.",
                now.plus(grace)
            );
        }
    }
    Ok(())
}

pub fn revoke(config: Option<PathBuf>, id: &str, json: bool) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let now = Timestamp::now();
    let rec = KeyStore::new(&cfg.keys.file).update(|f| f.revoke(id, now))?;
    audit("revoked", &rec);
    if json {
        print_json(&rec.view(&cfg.keys.prefix, now, None));
    } else {
        println!(
            "Revoked key {} ({}). Running gateways refuse it as soon as they reload the file.",
            rec.id, rec.name
        );
    }
    Ok(())
}

pub fn check(config: Option<PathBuf>) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let file = KeyStore::new(&cfg.keys.file).load_existing()?;
    let now = Timestamp::now();
    let count = |s: Status| file.keys.iter().filter(|k| k.status(now) == s).count();
    println!(
        "ok: {} ({} keys: {} active, {} expired, {} revoked)",
        cfg.keys.file.display(),
        file.keys.len(),
        count(Status::Active),
        count(Status::Expired),
        count(Status::Revoked)
    );
    for u in &cfg.upstreams {
        println!(
            "upstream {}: {}://{}{} models {:?}",
            u.name, u.scheme, u.authority, u.base_path, u.model_patterns
        );
    }
    Ok(())
}
