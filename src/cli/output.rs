//! What commands print: aligned tables and JSON, with everything from the key file escaped
//! for the terminal (a hand-edited file is trusted but not checked for control characters).
//!
//! Nothing here uses `println!`, which panics when stdout cannot take a line (a reader that
//! left, a full disk): after a change was saved, that lost its output (a new secret among
//! it) with a crash. Every write comes back as a result, and `written` says what it means.

use crate::cli::error::CliError;
use crate::keys::record::KeyRecord;
use crate::text::{self, Escaped};
use crate::time::{self, Timestamp};
use std::io::{self, Write};

/// One line to stdout.
pub fn line(args: std::fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// One line to stderr, for a warning or the error a command ends with: a stderr that cannot
/// take it (closed, full) leaves nothing else to tell, and must not turn the end into a crash.
pub fn say(args: std::fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// Refuses to go on when stdout is `/dev/null`, before a command makes a secret it would
/// print there: the runtime reopens a closed stdout (`>&-`) on `/dev/null`, where every
/// write succeeds and the secret is lost.
pub fn secret_can_be_seen(what: &str) -> Result<(), CliError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let out = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata());
    let null = std::fs::metadata("/dev/null");
    match (out, null) {
        (Ok(out), Ok(null)) if out.file_type().is_char_device() && out.rdev() == null.rdev() => {
            Err(CliError::Runtime(format!(
                "stdout is /dev/null (or was closed): {what} would be printed nowhere and lost; nothing was changed. Send the output to a terminal, a file or a pipe"
            )))
        }
        _ => Ok(()),
    }
}

/// What a command had done when its output failed.
pub enum Did {
    /// Nothing: it only reads.
    Nothing,
    /// A change that stands, and what the reader must do now that it did not see the output.
    Change { what: String, then: String },
}

/// What a failed write to stdout means. A reader that left (`| head`) ends a command that
/// only reads, quietly, as it ends `keys list`; any other failure, or any failure after a
/// change, is an error that says what was done (exit status 1).
pub fn written(r: io::Result<()>, did: Did) -> Result<(), CliError> {
    match (r, did) {
        (Ok(()), _) => Ok(()),
        (Err(e), Did::Nothing) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        (Err(e), Did::Nothing) => Err(CliError::Runtime(format!(
            "the output could not be written: {e}"
        ))),
        (Err(e), Did::Change { what, then }) => Err(CliError::Runtime(format!(
            "{what}, but what the command printed could not be written ({e}): {then}"
        ))),
    }
}

/// JSON for a terminal: what serde_json leaves raw (DEL, C1 and bidi controls) escaped too.
pub fn print_json(v: &serde_json::Value) -> io::Result<()> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    line(format_args!("{}", text::escape_json(&text)))
}

pub fn announce_secret(action: &str, rec: &KeyRecord, plaintext: &str) -> io::Result<()> {
    line(format_args!(
        "{action} key {} ({})\n\n    {plaintext}\n",
        rec.id,
        Escaped(&rec.name)
    ))?;
    line(format_args!(
        "This is the only time this key is shown. Store it now: keygate keeps only its hash."
    ))
}

pub fn ago(now: Timestamp, t: Option<Timestamp>) -> String {
    match t {
        None => "never".into(),
        Some(t) => format!("{} ago", time::human_secs(t.until(now))),
    }
}

pub fn until(now: Timestamp, t: Timestamp) -> String {
    if t <= now {
        format!("{} ago", time::human_secs(t.until(now)))
    } else {
        format!("in {}", time::human_secs(now.until(t)))
    }
}

/// Prints rows as aligned columns. Every cell is escaped for the terminal: names and the
/// rest come from a key file, which may have been edited by hand.
pub fn print_table<const N: usize>(rows: &[[String; N]]) -> io::Result<()> {
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
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        line(format_args!("{}", cells.join("  ").trim_end()))?;
    }
    Ok(())
}
