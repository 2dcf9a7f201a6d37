//! `keygate keys push | pull`: the Redis key store restored from a replica's snapshot, or
//! written to a key file (`--out -`: to stdout).

use crate::cli::config::load_key_config;
use crate::cli::error::CliError;
use crate::cli::output::{self, line, say, Did};
use crate::keys::backend::Store;
use crate::keys::error::StoreError;
use crate::keys::file::KeyFile;
use crate::keys::shared::RedisStore;
use crate::keys::snapshot::Snapshot;
use crate::keys::store::KeyStore;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn redis(config: Option<PathBuf>) -> Result<(Arc<RedisStore>, PathBuf), CliError> {
    let cfg = load_key_config(config)?;
    match Store::of(&cfg.keys)? {
        Store::Redis(r) => Ok((r, cfg.keys.file)),
        // The configuration, not what was typed: exit status 1, as other config failures.
        Store::File(_) => Err(CliError::Runtime(
            "`keys push` and `keys pull` need `[keys] store = \"redis\"` in gateway.toml".into(),
        )),
    }
}

pub fn push(config: Option<PathBuf>, from: Option<PathBuf>) -> Result<(), CliError> {
    let (store, file) = redis(config)?;
    let snapshot = Snapshot::new(&from.unwrap_or(file));
    if !snapshot.exists() {
        return Err(CliError::Runtime(format!(
            "no snapshot at {} to push",
            snapshot.path().display()
        )));
    }
    let seen = snapshot.position()?.map_or(0, |p| p.version);
    // Read only: the replica that owns the snapshot may be folding it right now.
    let records = snapshot.read_records()?;
    let n = records.len();
    let (written, version) = store.push(records, seen)?;
    let said = line(format_args!(
        "Pushed {} of {n} snapshot records from {} (the others the store held as new or newer); store version {version}, writes allowed. Every replica now resyncs.",
        written,
        snapshot.path().display()
    ));
    let did = Did::Change {
        what: format!("{written} snapshot records were pushed"),
        then: format!("the store is at version {version}, writes allowed"),
    };
    output::written(said, did)
}

pub fn pull(config: Option<PathBuf>, out: &Path) -> Result<(), CliError> {
    let (store, _) = redis(config)?;
    let (keys, left_out) = store.read_all()?;
    crate::cli::list::warn_left_out(&left_out);
    let n = keys.len();
    let file = KeyFile {
        keys,
        ..KeyFile::empty()
    };
    if out == Path::new("-") {
        return pull_to_stdout(&file);
    }
    KeyStore::new(out).update(|f| {
        *f = file;
        Ok(())
    })?;
    let said = line(format_args!(
        "Wrote {n} keys from the key store to {}.",
        out.display()
    ));
    let did = Did::Change {
        what: format!("{n} keys were written to {}", out.display()),
        then: "the file is complete".into(),
    };
    output::written(said, did)
}

/// `keys pull --out -`: the key file's text on stdout, as the file would hold it (for `jq`,
/// or a backup tool reading a pipe), checked as a write checks it; escaped as every JSON
/// printed (the same JSON). What was done goes to stderr, so stdout is the file alone. (A
/// file named `-` is `--out ./-`.)
fn pull_to_stdout(file: &KeyFile) -> Result<(), CliError> {
    file.validate().map_err(StoreError::Rejected)?;
    let text = crate::keys::writer::file_text(file);
    let mut stdout = std::io::stdout().lock();
    let printed = stdout
        .write_all(crate::text::escape_json(&text).as_bytes())
        .and_then(|()| stdout.flush());
    let complete = printed.is_ok();
    output::written(printed, Did::Nothing)?;
    if complete {
        say(format_args!(
            "Wrote {} keys from the key store to stdout.",
            file.keys.len()
        ));
    }
    Ok(())
}
