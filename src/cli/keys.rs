//! `keygate keys …`: create, show, rotate and revoke keys in the key file (`list` is in
//! `list.rs`), each change recorded in the audit trail. A plaintext key is printed once, by
//! `create` or `rotate`, and nowhere else.

use crate::cli::args::CreateArgs;
use crate::cli::config::load_key_config;
use crate::cli::error::CliError;
use crate::cli::output::{announce_secret, print_json, print_table};
use crate::config::KeyCommandsConfig;
use crate::keys::error::StoreError;
use crate::keys::file::KeyFile;
use crate::keys::record::{FieldError, KeyLimits, KeyRecord, NewKey};
use crate::keys::store::KeyStore;
use crate::keys::usage::UsageSnapshot;
use crate::ops::audit::{Audit, AuditError, AuditEvent};
use crate::text::Escaped;
use crate::time::Timestamp;
use std::path::PathBuf;
use std::time::Duration;

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
    change: impl FnOnce(&mut KeyFile) -> Result<T, StoreError>,
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
        ..NewKey::default()
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
