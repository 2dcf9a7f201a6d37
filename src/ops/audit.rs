//! The audit trail of key changes: every create, update, rotate, revoke, disable and enable,
//! by the CLI or the API, is logged (`keygate::audit`) with what changed (old → new) and, with
//! `[log] audit_file`, appended to that file as one JSON line, fsynced. The file is opened
//! before a change is made, so a change is refused rather than made unaudited.

use crate::keys::ops::Change;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One key change: who did what to which key, and what changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditEvent<'a> {
    pub action: &'a str,
    pub key_id: &'a str,
    pub key_name: &'a str,
    /// `cli:<user>` or `api:<admin key id>`.
    pub by: &'a str,
    /// Each field changed, old → new (empty when the change changed nothing, e.g. a revoke
    /// of a revoked key). Never a hash.
    pub changes: &'a [Change],
}

/// Changes as one log field: `field: old → new; …`, values as JSON.
struct Changes<'a>(&'a [Change]);

impl std::fmt::Display for Changes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{}: {} → {}", c.field, c.old, c.new)?;
        }
        Ok(())
    }
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
    /// the name and the changes escaped (it may reach a terminal; a hand-edited file can hold anything); the
    /// audit file has it exactly.
    pub fn record(&mut self, e: &AuditEvent<'_>) -> Result<(), AuditError> {
        let changes = crate::text::escape(&Changes(e.changes).to_string()).into_owned();
        tracing::info!(target: "keygate::audit", action = %e.action, key_id = %e.key_id, key_name = %crate::text::Escaped(e.key_name), by = %e.by, changes = %changes, "key {}", e.action);
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
