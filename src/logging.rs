//! Structured logs on stderr, text or JSON, with a level that a config reload can change; and
//! the audit trail of key changes.

use crate::config::{LogConfig, LogFormat};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The filter for a level or filter string. At `trace`, the `notify` crate is held at `debug`:
/// it traces every inotify event in the directories we watch, so with the log file in one of
/// them each trace line is itself an event, traced again — a loop that fills the disk. Naming
/// `notify` in the filter (e.g. `trace,notify=trace`) overrides this.
fn filter(spec: &str) -> Option<EnvFilter> {
    let f = EnvFilter::try_new(spec).ok()?;
    let traces = f.max_level_hint().is_none_or(|l| l >= LevelFilter::TRACE);
    if traces && !spec.contains("notify") {
        if let Ok(d) = "notify=debug".parse() {
            return Some(f.add_directive(d));
        }
    }
    Some(f)
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `[log] level`.
pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| filter(&v))
        .or_else(|| filter(&cfg.level))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Colours only for a terminal: a log redirected to a file stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = match cfg.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if result.is_ok() {
        let _ = LEVEL.set(handle);
    }
}

/// Applies a new `[log] level` from a config reload.
pub fn set_level(level: &str) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    if let (Some(h), Some(f)) = (LEVEL.get(), filter(level)) {
        let _ = h.reload(f);
    }
}

/// One key change: who did what to which key.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditEvent<'a> {
    pub action: &'a str,
    pub key_id: &'a str,
    pub key_name: &'a str,
    /// `cli:<user>` or `api:<admin key id>`.
    pub by: &'a str,
}

/// Where audit records go: always the log (`keygate::audit` on stderr), and `[log] audit_file`
/// when set. Opened before a change is made, so a change is refused rather than made
/// unaudited when the audit file cannot be written.
pub struct Audit {
    file: Option<(PathBuf, File)>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit file {path}: {source}")]
pub struct AuditError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl Audit {
    /// Opens `audit_file` for appending (created 0600 if missing).
    pub fn open(audit_file: Option<&Path>) -> Result<Audit, AuditError> {
        let file = match audit_file {
            None => None,
            Some(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|source| AuditError {
                        path: path.to_path_buf(),
                        source,
                    })?;
                Some((path.to_path_buf(), f))
            }
        };
        Ok(Audit { file })
    }

    /// Logs `e` and appends it to the audit file as one JSON line, fsynced. The log line has
    /// the name escaped (it may reach a terminal; a hand-edited file can hold anything); the
    /// audit file has it exactly.
    pub fn record(&mut self, e: &AuditEvent<'_>) -> Result<(), AuditError> {
        tracing::info!(target: "keygate::audit", action = %e.action, key_id = %e.key_id, key_name = %crate::text::Escaped(e.key_name), by = %e.by, "key {}", e.action);
        let Some((path, file)) = &mut self.file else {
            return Ok(());
        };
        #[derive(serde::Serialize)]
        struct Line<'a> {
            timestamp: crate::time::Timestamp,
            #[serde(flatten)]
            event: &'a AuditEvent<'a>,
        }
        let err = |source: io::Error| AuditError {
            path: path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(&Line {
            timestamp: crate::time::Timestamp::now(),
            event: e,
        })
        .map_err(|e| err(io::Error::other(e)))?;
        line.push(b'\n');
        // One write of the whole line, so lines from concurrent writers (O_APPEND) never mix.
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(err)
    }
}
