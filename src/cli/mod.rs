//! `keygate keys …` and `keygate check`: what operators type every day.
//!
//! Human output is a table on stdout; `--json` prints what scripts parse; errors go to
//! stderr with a non-zero exit (see `main`). A plaintext key is printed once, by `create` or
//! `rotate`, and nowhere else.

pub mod serve;

use crate::account::UsageSnapshot;
use crate::config::{Config, ConfigError, KeyCommandsConfig};
use crate::keys::scope::Scope;
use crate::keys::store::{FieldError, KeyLimits, KeyRecord, KeyStore, NewKey, Status, StoreError};
use crate::ops::logging::{Audit, AuditError, AuditEvent};
use crate::text::{self, Escaped};
use crate::time::{self, Timestamp};
use clap::builder::{PossibleValue, TypedValueParser};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a command failed. `Usage` (exit status 2) is a mistake in what was typed; everything
/// else (exit status 1) is the world: the config, the key file, the disk.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
}

impl CliError {
    /// The process exit status: 2 for a usage error (as clap's own), 1 for any other failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name people recognise, e.g. the app or person using the key (no control characters).
    #[arg(long)]
    pub name: String,
    /// Comma-separated scopes the key may use (default: inference, i.e. every scope but usage
    /// and admin). Aliases such as inference:read or analytics:read are accepted too.
    #[arg(long, value_delimiter = ',', value_name = "SCOPE,…", value_parser = ScopeParser)]
    pub scopes: Vec<String>,
    /// Comma-separated model globs the key may use, e.g. 'llama-*' (default: every model).
    #[arg(long, value_delimiter = ',', value_name = "GLOB,…")]
    pub models: Vec<String>,
    /// Expire after this long, e.g. 90d, 24h, 30m, 1h30m (default: never).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub expires_in: Option<Duration>,
    /// Requests per minute, at least 1 (default: [limits] requests_per_minute).
    #[arg(long, value_name = "N")]
    pub rpm: Option<u32>,
    /// Burst size in requests, at least 1 (default: the per-minute rate).
    #[arg(long, value_name = "N")]
    pub burst: Option<u32>,
    /// Tokens per minute, at least 1 (default: [limits] tokens_per_minute, unset: no limit).
    #[arg(long, value_name = "N")]
    pub tpm: Option<u64>,
    /// Requests in flight at once, at least 1 (default: [limits] max_in_flight).
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Print the new key as JSON (with its plaintext in `key`) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only active keys that expire within this long, e.g. 7d.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub expiring_within: Option<Duration>,
    /// Include revoked keys.
    #[arg(long)]
    pub all: bool,
}

/// A duration flag: `90d`, `24h`, `30m`, `1h30m`.
pub fn duration_arg(s: &str) -> Result<Duration, String> {
    time::parse_duration(s)
}

/// A key id argument: `key_` and 16 letters or digits.
pub fn key_id_arg(s: &str) -> Result<String, String> {
    if crate::keys::token::is_valid_id(s) {
        Ok(s.to_string())
    } else {
        Err("a key id is `key_` followed by 16 letters or digits (see `keygate keys list`)".into())
    }
}

/// `--scopes`: accepts what `Scopes::parse_one` accepts (names, `inference`, aliases) and
/// tells clap the canonical names with their descriptions, for `--help` and completions.
#[derive(Debug, Clone, Copy)]
pub struct ScopeParser;

impl TypedValueParser for ScopeParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let flag = arg
            .and_then(clap::Arg::get_long)
            .map_or_else(|| "--scopes".to_string(), |l| format!("--{l}"));
        let fail = |message: String| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{message}\n"))
                .with_cmd(cmd)
        };
        let s = value
            .to_str()
            .ok_or_else(|| fail(format!("`{flag}` must be UTF-8")))?;
        crate::keys::scope::Scopes::parse_one(s)
            .map(|_| s.trim().to_string())
            .map_err(|e| fail(format!("`{flag}` {}", Escaped(&format!("has an {e}")))))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        let inference =
            PossibleValue::new("inference").help("every scope but usage and admin (the default)");
        Some(Box::new(
            Scope::ALL
                .iter()
                .map(|s| PossibleValue::new(s.name()).help(s.description()))
                .chain(std::iter::once(inference)),
        ))
    }
}

/// `--config`, else ./gateway.toml if present, else built-in defaults (keys.json here).
pub fn load_config(path: Option<PathBuf>) -> Result<Config, CliError> {
    match path {
        Some(p) => Ok(Config::load(&p)?),
        None if Path::new("gateway.toml").exists() => Ok(Config::load(Path::new("gateway.toml"))?),
        None => Ok(Config::parse("", None)?),
    }
}

/// What `keygate keys …` reads, from the same file as `load_config`: only `[keys]` and
/// `[log]` are validated, and no upstream's `api_key_env` is needed.
pub fn load_key_config(path: Option<PathBuf>) -> Result<KeyCommandsConfig, CliError> {
    match path {
        Some(p) => Ok(KeyCommandsConfig::load(&p)?),
        None if Path::new("gateway.toml").exists() => {
            Ok(KeyCommandsConfig::load(Path::new("gateway.toml"))?)
        }
        None => Ok(KeyCommandsConfig::parse("", None)?),
    }
}

/// JSON for a terminal: what serde_json leaves raw (DEL, C1 and bidi controls) escaped too.
fn print_json(v: &serde_json::Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    println!("{}", text::escape_json(&text));
}

fn announce_secret(action: &str, rec: &KeyRecord, plaintext: &str) {
    println!("{action} key {} ({})", rec.id, Escaped(&rec.name));
    println!();
    println!("    {plaintext}");
    println!();
    println!("This is the only time this key is shown. Store it now: keygate keeps only its hash.");
}

/// A new key's field error in the words of the flag that set it.
fn flag_error(e: FieldError) -> CliError {
    let flag = match e.field {
        "name" => "--name",
        "scopes" => "--scopes",
        "models" => "--models",
        "expires_at" => "--expires-in",
        "limits.requests_per_minute" => "--rpm",
        "limits.burst" => "--burst",
        "limits.tokens_per_minute" => "--tpm",
        "limits.max_in_flight" => "--max-in-flight",
        other => other,
    };
    CliError::Usage(format!("`{flag}` {}", e.problem))
}

/// `now + d` for a flag, or a usage error naming the flag.
fn after(now: Timestamp, d: Duration, flag: &str) -> Result<Timestamp, CliError> {
    now.checked_plus(d)
        .ok_or_else(|| CliError::Usage(format!("`{flag}` must end before the year 10000")))
}

/// Who runs the CLI, for the audit trail: `cli:<login name>`.
fn cli_user() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self")
                .ok()
                .map(|m| format!("uid {}", m.uid()))
        })
        .unwrap_or_else(|| "unknown".into());
    format!("cli:{user}")
}

/// Makes one change to the key file with its audit record: logging is started so the record
/// reaches stderr as an API write's reaches the gateway log, and the audit file is opened
/// first, so that a change is refused rather than made unaudited. An audit record that
/// cannot be written after the change is returned as the second value, for the caller to
/// report once it has printed the result (a new key must be shown even then).
fn audited<T>(
    cfg: &KeyCommandsConfig,
    action: &str,
    change: impl FnOnce(&mut crate::keys::store::KeyFile) -> Result<T, StoreError>,
    changed: impl Fn(&T) -> &KeyRecord,
) -> Result<(T, Result<(), AuditError>), CliError> {
    let logging = crate::ops::logging::init(&cfg.log);
    let mut audit = Audit::open(cfg.log.audit_file.as_deref())?;
    let out = KeyStore::new(&cfg.keys.file).update(change)?;
    let rec = changed(&out);
    let by = cli_user();
    let recorded = audit.record(&AuditEvent {
        action,
        key_id: &rec.id,
        key_name: &rec.name,
        by: &by,
    });
    // The log line goes through the writer thread: let it out before the process exits.
    if let Some(l) = &logging {
        l.flush();
    }
    Ok((out, recorded))
}

pub fn create(config: Option<PathBuf>, a: CreateArgs) -> Result<(), CliError> {
    let cfg = load_key_config(config)?;
    let now = Timestamp::now();
    let expires_at = a
        .expires_in
        .map(|d| after(now, d, "--expires-in"))
        .transpose()?;
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
    new.validate(now).map_err(flag_error)?;
    let prefix = cfg.keys.prefix.clone();
    let ((rec, token), recorded) =
        audited(&cfg, "created", |f| f.create(new, &prefix, now), |(r, _)| r)?;
    if a.json {
        let mut v = rec.view(&prefix, now, None);
        v["key"] = token.plaintext.into();
        print_json(&v);
    } else {
        announce_secret("Created", &rec, &token.plaintext);
    }
    Ok(recorded?)
}

/// Last-used times and usage saved by a gateway that shares this key file.
fn saved_usage(cfg: &KeyCommandsConfig) -> std::collections::HashMap<String, UsageSnapshot> {
    crate::ops::usage_state::load_state(&cfg.keys.state_file).unwrap_or_default()
}

pub fn list(config: Option<PathBuf>, a: ListArgs) -> Result<(), CliError> {
    let cfg = load_key_config(config)?;
    let file = KeyStore::new(&cfg.keys.file).load()?;
    let now = Timestamp::now();
    let within = a.expiring_within;
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
            crate::keys::token::mask(prefix, &k.last4),
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

/// Prints rows as aligned columns. Every cell is escaped for the terminal: names and the
/// rest come from a key file, which may have been edited by hand.
fn print_table<const N: usize>(rows: &[[String; N]]) {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|r| r.clone().map(|c| text::escape(&c).into_owned()))
        .collect();
    let mut widths = [0usize; N];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

pub fn show(config: Option<PathBuf>, id: &str, json: bool) -> Result<(), CliError> {
    let cfg = load_key_config(config)?;
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
    grace: Option<Duration>,
    json: bool,
) -> Result<(), CliError> {
    let cfg = load_key_config(config)?;
    let grace = grace.unwrap_or_default();
    let now = Timestamp::now();
    after(now, grace, "--grace")?;
    let prefix = cfg.keys.prefix.clone();
    let ((rec, token), recorded) = audited(
        &cfg,
        "rotated",
        |f| f.rotate(id, grace.as_secs(), &prefix, now),
        |(r, _)| r,
    )?;
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
    Ok(recorded?)
}

pub fn revoke(config: Option<PathBuf>, id: &str, json: bool) -> Result<(), CliError> {
    let cfg = load_key_config(config)?;
    let now = Timestamp::now();
    let (rec, recorded) = audited(&cfg, "revoked", |f| f.revoke(id, now), |r| r)?;
    if json {
        print_json(&rec.view(&cfg.keys.prefix, now, None));
    } else {
        println!(
            "Revoked key {} ({}). Running gateways refuse it as soon as they reload the file.",
            rec.id,
            Escaped(&rec.name)
        );
    }
    Ok(recorded?)
}

pub fn check(config: Option<PathBuf>) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    if let Some(src) = &cfg.source {
        if std::fs::read_to_string(src).is_ok_and(|t| crate::config::is_blank(&t)) {
            eprintln!(
                "warning: {} is empty: every setting is its default, including the upstream \
                 http://127.0.0.1:8000; a running gateway refuses to reload an empty file",
                Escaped(&src.display().to_string())
            );
        }
    }
    let file = KeyStore::new(&cfg.keys.file).load_existing()?;
    let now = Timestamp::now();
    let count = |s: Status| file.keys.iter().filter(|k| k.status(now) == s).count();
    println!(
        "ok: {} ({} keys: {} active, {} expired, {} revoked)",
        Escaped(&cfg.keys.file.display().to_string()),
        file.keys.len(),
        count(Status::Active),
        count(Status::Expired),
        count(Status::Revoked)
    );
    for u in &cfg.upstreams {
        let line = format!(
            "upstream {}: {}://{}{} models {:?}",
            u.name, u.scheme, u.authority, u.base_path, u.model_patterns
        );
        println!("{}", text::escape(&line));
    }
    Ok(())
}
