//! `keygate keys …`: create, show, rotate and revoke keys in the key file, each change
//! recorded in the audit trail (`list` is in `cli::list`; `update`, `disable` and `enable` in
//! `cli::edit`). A plaintext key is printed once, by `create` or `rotate`, and nowhere else.

use crate::cli::args::CreateArgs;
use crate::cli::config::load_key_config;
use crate::cli::error::CliError;
use crate::cli::output::{
    announce_secret, line, print_json, print_table, secret_can_be_seen, written, Did,
};
use crate::config::{KeyCommandsConfig, KeysConfig, StoreMode};
use crate::keys::backend::Store;
use crate::keys::error::StoreError;
use crate::keys::ops::{Done, Op};
use crate::keys::record::{FieldError, KeyLimits, KeyQuotas, NewKey};
use crate::keys::usage::UsageSnapshot;
use crate::ops::audit::{Audit, AuditError, AuditEvent};
use crate::text::Escaped;
use crate::time::Timestamp;
use std::path::PathBuf;
use std::time::Duration;

/// A field error in the words of the flag that set the field.
pub(crate) fn flag_error(e: FieldError) -> CliError {
    let flag = match e.field {
        "name" => "--name",
        "scopes" => "--scopes",
        "models" => "--models",
        "expires_at" => "--expires-in` or `--expires-at",
        "description" => "--description",
        "metadata" => "--meta",
        "limits.requests_per_minute" => "--rpm",
        "limits.burst" => "--burst",
        "limits.tokens_per_minute" => "--tpm",
        "limits.max_in_flight" => "--max-in-flight",
        "quotas.tokens_per_day" => "--tokens-per-day",
        "quotas.tokens_per_month" => "--tokens-per-month",
        "quotas.requests_per_day" => "--requests-per-day",
        "quotas.requests_per_month" => "--requests-per-month",
        other => other,
    };
    CliError::Usage(format!("`{flag}` {}", e.problem))
}

/// The expiry a flag asks for, which must be in the future: `--expires-in D` (from now) or
/// `--expires-at T`. Named as typed when it is not.
pub(crate) fn expiry(
    now: Timestamp,
    expires_in: Option<Duration>,
    expires_at: Option<Timestamp>,
) -> Result<Option<Timestamp>, CliError> {
    let at = match (expires_in, expires_at) {
        (Some(d), _) => after(now, d, "--expires-in")?,
        (None, Some(t)) => t,
        (None, None) => return Ok(None),
    };
    if at <= now {
        let flag = match expires_in {
            Some(_) => "--expires-in",
            None => "--expires-at",
        };
        return Err(CliError::Usage(format!("`{flag}` must be in the future")));
    }
    Ok(Some(at))
}

/// `now + d` for a flag, or a usage error naming the flag.
pub(crate) fn after(now: Timestamp, d: Duration, flag: &str) -> Result<Timestamp, CliError> {
    now.checked_plus(d)
        .ok_or_else(|| CliError::Usage(format!("`{flag}` must end before the year 10000")))
}

/// What running gateways do about a change made here, when they will not notice it: with
/// `[keys] reload = false` (file mode) a gateway neither watches nor polls the key file and
/// serves the keys it loaded until it restarts, so "refused at once" would be false. `None`
/// when gateways follow the file (or, in the shared store, Redis) by themselves.
pub(crate) fn unwatched(keys: &KeysConfig) -> Option<&'static str> {
    match keys.store {
        StoreMode::File if !keys.reload => Some(
            "Running gateways do not watch the key file (`[keys] reload = false` in this configuration)",
        ),
        _ => None,
    }
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
/// report once it has printed the result (a new key must be shown even then). A value the
/// operation refuses is a usage error naming its flag.
pub(crate) fn audited(
    cfg: &KeyCommandsConfig,
    op: &Op,
    now: Timestamp,
) -> Result<(Done, Result<(), AuditError>), CliError> {
    let logging = crate::ops::logging::init(&cfg.log);
    let mut audit = Audit::open(cfg.log.audit_file.as_deref())?;
    let done = match Store::of(&cfg.keys)?.apply(op, &cfg.keys.prefix, now) {
        Ok((done, _)) => done,
        Err(StoreError::Field(e)) => return Err(flag_error(e)),
        Err(e) => return Err(e.into()),
    };
    let (rec, by) = (&done.record, cli_user());
    let recorded = audit.record(&AuditEvent {
        action: done.action.as_str(),
        key_id: &rec.id,
        key_name: &rec.name,
        by: &by,
        changes: &done.changes,
    });
    // The log line goes through the writer thread: let it out before the process exits.
    if let Some(l) = &logging {
        l.flush();
    }
    Ok((done, recorded))
}

/// A created or rotated key's plaintext (every such operation makes one).
fn plaintext(done: &Done) -> Result<&str, CliError> {
    done.token
        .as_ref()
        .map(|t| t.plaintext.as_str())
        .ok_or_else(|| CliError::Runtime("the key store made no secret".into()))
}

pub fn create(config: Option<PathBuf>, a: CreateArgs) -> Result<(), CliError> {
    secret_can_be_seen("the new key's secret")?;
    let cfg = load_key_config(config)?;
    let now = Timestamp::now();
    let new = NewKey {
        name: a.name,
        scopes: a.scopes,
        models: crate::cli::args::globs(a.models),
        expires_at: expiry(now, a.expires_in, a.expires_at)?,
        limits: KeyLimits {
            requests_per_minute: a.rpm,
            burst: a.burst,
            tokens_per_minute: a.tpm,
            max_in_flight: a.max_in_flight,
        },
        description: a.description,
        metadata: a.meta.into_iter().collect(),
        quotas: KeyQuotas {
            tokens_per_day: a.tokens_per_day,
            tokens_per_month: a.tokens_per_month,
            requests_per_day: a.requests_per_day,
            requests_per_month: a.requests_per_month,
        },
    };
    new.validate(now).map_err(flag_error)?;
    let (done, recorded) = audited(&cfg, &Op::Create(new), now)?;
    let (rec, key) = (&done.record, plaintext(&done)?);
    let printed = if a.json {
        let mut v = rec.view(&cfg.keys.prefix, now, None);
        v["key"] = key.into();
        print_json(&v)
    } else {
        announce_secret("Created", rec, key).and_then(|()| match unwatched(&cfg.keys) {
            Some(no) => line(format_args!("{no}: restart them to put the key in force.")),
            None => Ok(()),
        })
    };
    let id = &rec.id;
    let did = Did::Change {
        what: format!("key {id} was created"),
        then: format!("its secret was not seen and is not kept; get a new one with `keygate keys rotate {id}`, or revoke the key"),
    };
    finish(printed, did, recorded)
}

/// A change's end: its output's failure first (the change stands, and the reader must learn
/// what it missed), then the audit's.
pub(crate) fn finish(
    printed: std::io::Result<()>,
    did: Did,
    recorded: Result<(), AuditError>,
) -> Result<(), CliError> {
    written(printed, did)?;
    Ok(recorded?)
}

/// Last-used times and usage saved by a gateway that shares this key file.
fn saved_usage(cfg: &KeyCommandsConfig) -> std::collections::HashMap<String, UsageSnapshot> {
    crate::ops::usage_state::load_state(&cfg.keys.state_file).unwrap_or_default()
}

pub fn show(config: Option<PathBuf>, id: &str, json: bool) -> Result<(), CliError> {
    let cfg = load_key_config(config)?;
    let file = match Store::of(&cfg.keys)? {
        Store::File(f) => f.load()?,
        redis => {
            crate::cli::list::warn_if_diverged(&redis);
            let (file, left_out) = redis.load_noting()?;
            crate::cli::list::warn_left_out(&left_out);
            file
        }
    };
    let k = file.get(id)?;
    let now = Timestamp::now();
    let saved = saved_usage(&cfg);
    let (usage, quota) = crate::cli::usage::key_figures(&cfg, k, saved.get(id))?;
    let mut v = k.view(&cfg.keys.prefix, now, usage.as_ref());
    if let Some(u) = &usage {
        v["usage"] = serde_json::to_value(u).unwrap_or_default();
    }
    v["quota"] = quota;
    if json {
        return written(print_json(&v), Did::Nothing);
    }
    let mut rows = Vec::new();
    if let serde_json::Value::Object(map) = &v {
        for (field, value) in map {
            if field == "object" {
                continue;
            }
            if let ("quota", serde_json::Value::Object(q)) = (field.as_str(), value) {
                rows.extend(q.iter().map(|(kind, v)| {
                    let text = format!(
                        "{} of {} used, {} left, resets {}",
                        v["used"],
                        v["limit"],
                        v["remaining"],
                        v["resets_at"].as_str().unwrap_or("-")
                    );
                    [format!("quota.{kind}:"), text]
                }));
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
    written(print_table(&rows), Did::Nothing)
}

pub fn rotate(
    config: Option<PathBuf>,
    id: &str,
    grace: Option<Duration>,
    json: bool,
) -> Result<(), CliError> {
    secret_can_be_seen("the new secret")?;
    let cfg = load_key_config(config)?;
    let grace = grace.unwrap_or_default();
    let now = Timestamp::now();
    after(now, grace, "--grace")?;
    let op = Op::Rotate {
        id: id.to_string(),
        grace,
    };
    let (done, recorded) = audited(&cfg, &op, now)?;
    let (rec, key) = (&done.record, plaintext(&done)?);
    let previous = if grace.is_zero() {
        "The previous secret stopped working now, and so did any earlier one.".to_string()
    } else {
        format!(
            "The previous secret keeps working until {}; an earlier one stops then at the latest.",
            now.plus(grace)
        )
    };
    let printed = if json {
        let mut v = rec.view(&cfg.keys.prefix, now, None);
        v["key"] = key.into();
        print_json(&v)
    } else {
        announce_secret("Rotated", rec, key)
            .and_then(|()| line(format_args!("{previous}")))
            .and_then(|()| match unwatched(&cfg.keys) {
                Some(no) => line(format_args!(
                    "{no}: restart them to put the new secret in force (until then they accept the previous one)."
                )),
                None => Ok(()),
            })
    };
    let id = &rec.id;
    let did = Did::Change {
        what: format!("key {id} was rotated"),
        then: format!("its new secret was not seen and is not kept; rotate it again (`keygate keys rotate {id}`). {previous}"),
    };
    finish(printed, did, recorded)
}

pub fn revoke(config: Option<PathBuf>, id: &str, json: bool) -> Result<(), CliError> {
    let cfg = load_key_config(config)?;
    let now = Timestamp::now();
    let op = Op::Revoke { id: id.to_string() };
    let (Done { record: rec, .. }, recorded) = audited(&cfg, &op, now)?;
    let printed = if json {
        print_json(&rec.view(&cfg.keys.prefix, now, None))
    } else {
        let then = match unwatched(&cfg.keys) {
            Some(no) => format!("{no}: restart them to make them refuse it."),
            None => "Running gateways refuse it as soon as they see the change.".into(),
        };
        line(format_args!(
            "Revoked key {} ({}). {then}",
            rec.id,
            Escaped(&rec.name)
        ))
    };
    let did = Did::Change {
        what: format!("key {} was revoked", rec.id),
        then: "the revoke stands".into(),
    };
    finish(printed, did, recorded)
}
