//! `keygate check`: gateway.toml (with upstream credentials from the environment) and the key
//! file (or the shared key store in Redis), read as `serve` reads them; exits non-zero with
//! the reason.

use crate::cli::config::load_config;
use crate::cli::error::CliError;
use crate::cli::output::{line, written, Did};
use crate::config::is_blank;
use crate::keys::backend::Store;
use crate::keys::record::Status;
use crate::text::{self, Escaped};
use crate::time::Timestamp;
use std::path::PathBuf;

pub fn check(config: Option<PathBuf>) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    if let Some(src) = &cfg.source {
        if std::fs::read_to_string(src).is_ok_and(|t| is_blank(&t)) {
            crate::cli::output::say(format_args!(
                "warning: {} is empty: every setting is its default, including the upstream \
                 http://127.0.0.1:8000; a running gateway refuses to reload an empty file",
                Escaped(&src.display().to_string())
            ));
        }
    }
    // The listener's certificate as `serve` loads it: an init step or CI gate that passes
    // must not be followed by a server that exits on its TLS files.
    let tls = match &cfg.server.tls {
        Some(t) => Some(
            crate::server::tls::ServerTls::load(&t.cert, &t.key)
                .map_err(|e| CliError::Runtime(format!("[server.tls]: {e}")))?,
        ),
        None => None,
    };
    // The keys as `serve` will have them: the key file, or with the shared store what Redis
    // holds (a replica's snapshot may not exist yet: it is written from Redis once it runs,
    // so an init step on a fresh replica checks the store itself).
    let store = Store::of(&cfg.keys)?;
    if let Store::Redis(_) = &store {
        // What a replica needs besides the records: a directory for its snapshot, and a
        // store not marked behind one (which refuses writes until `keys push`). A store that
        // does not answer is said by the read below.
        crate::cli::serve::snapshot_directory(&cfg.keys.file)?;
        if let Some(why) = store.diverged() {
            return Err(CliError::Runtime(format!(
                "the shared key store is diverged (it lacks changes replicas hold; writes are refused): {why}"
            )));
        }
    }
    let (file, left_out) = store.load_noting()?;
    crate::cli::list::warn_left_out(&left_out);
    let source = match &store {
        Store::File(_) => cfg.keys.file.display().to_string(),
        Store::Redis(_) => "the shared key store (Redis)".to_string(),
    };
    let now = Timestamp::now();
    let count = |s: Status| file.keys.iter().filter(|k| k.status(now) == s).count();
    let ok = line(format_args!(
        "ok: {} ({} keys: {} active, {} disabled, {} expired, {} revoked)",
        Escaped(&source),
        file.keys.len(),
        count(Status::Active),
        count(Status::Disabled),
        count(Status::Expired),
        count(Status::Revoked)
    ));
    written(ok, Did::Nothing)?;
    if let Some(t) = &tls {
        let text = format!(
            "tls: {} (key {}), valid until {}",
            t.cert.display(),
            t.key.display(),
            t.expires_at
        );
        written(line(format_args!("{}", text::escape(&text))), Did::Nothing)?;
    }
    for u in &cfg.upstreams {
        let text = format!(
            "upstream {}: {}://{}{} models {:?}",
            u.name, u.scheme, u.authority, u.base_path, u.model_patterns
        );
        written(line(format_args!("{}", text::escape(&text))), Did::Nothing)?;
    }
    Ok(())
}
