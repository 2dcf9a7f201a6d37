//! `keygate keys list`: the key file read record by record through the one reader, filtered
//! as the management API filters its list (`keys::list::Filter`), and printed as it is read
//! — a table in blocks, or one JSON array an element at a time — so listing a million keys
//! holds one record and one block of rows, not the key set. Keys come in file order
//! (creation order); `--limit` (default 100) stops the output, and says when more match.

use crate::cli::args::ListArgs;
use crate::cli::config::load_key_config;
use crate::cli::error::CliError;
use crate::cli::output::{ago, until, written, Did};
use crate::keys::backend::Store;
use crate::keys::file;
use crate::keys::list::{Filter, Statuses};
use crate::keys::record::KeyRecord;
use crate::keys::store::KeyStore;
use crate::keys::usage::UsageSnapshot;
use crate::text;
use crate::time::Timestamp;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

/// Table rows printed at a time; column widths only grow from one block to the next.
const BLOCK: usize = 100;
/// The widest NAME cell in the table.
const NAME_CHARS: usize = 40;
/// A description is cut to this many characters in the table (`--json` has all of it).
const DESCRIPTION_CHARS: usize = 40;

const HEADER: [&str; 10] = [
    "ID",
    "NAME",
    "KEY",
    "SCOPES",
    "CREATED",
    "LAST USED",
    "EXPIRES",
    "STATUS",
    "METADATA",
    "DESCRIPTION",
];

/// Says on stderr that the shared store lost changes, before a list or a key read from it
/// (found by a probe: an empty list, exit 0, read as "no keys").
pub(crate) fn warn_if_diverged(store: &Store) {
    if let Some(why) = store.diverged() {
        crate::cli::output::say(format_args!(
            "warning: the shared key store is diverged, what it shows may lack keys and revokes the replicas hold: {}",
            crate::text::Escaped(&why)
        ));
    }
}

/// Says on stderr which of the shared store's records were left out, as this version cannot
/// read them (`Store::load_noting`): the rest are shown, and nothing reads as complete.
pub(crate) fn warn_left_out(left_out: &[String]) {
    if !left_out.is_empty() {
        crate::cli::output::say(format_args!(
            "warning: {} record(s) in the shared key store cannot be read by this version of keygate and are left out: {}; rewrite them with the version that wrote them, or remove them (redis-cli HDEL)",
            left_out.len(),
            crate::text::Escaped(&left_out.join(", "))
        ));
    }
}

pub fn list(config: Option<PathBuf>, a: ListArgs) -> Result<(), CliError> {
    let cfg = load_key_config(config)?;
    let filter = Filter {
        name_prefix: a.name_prefix,
        statuses: match (a.status, a.all) {
            (Some(s), _) => s,
            (None, true) => Statuses::ALL,
            (None, false) => Statuses::NOT_REVOKED,
        },
        meta: a.meta,
        expiring_within: a.expiring_within,
        last_used_before: None,
        last_used_after: None,
    };
    let store = KeyStore::new(&cfg.keys.file);
    let backend = Store::of(&cfg.keys)?;
    warn_if_diverged(&backend);
    let text = match backend {
        Store::File(_) => store.read_text()?,
        // The shared store's records, in the key file's form, through the same reader.
        redis => {
            let (file, left_out) = redis.load_noting()?;
            warn_left_out(&left_out);
            Some(crate::keys::writer::file_text(&file))
        }
    };
    let usage: HashMap<String, UsageSnapshot> =
        crate::ops::usage_state::load_state(&cfg.keys.state_file).unwrap_or_default();
    let now = Timestamp::now();
    let mut out = Printer::new(a.json, &cfg.keys.prefix, now, &usage);
    let (mut shown, mut more) = (0usize, false);
    if let Some(text) = &text {
        let read = file::read(store.path(), text, &mut |rec| {
            if more || !filter.matches(&rec, now, || None) {
                return; // the rest is read only to be validated
            }
            if a.limit != 0 && shown == a.limit {
                more = true;
                return;
            }
            shown += 1;
            out.key(&rec);
        });
        if let Err(e) = read {
            out.abandon();
            return Err(e.into());
        }
    }
    out.finish();
    out.failure()?;
    if more {
        crate::cli::output::say(format_args!(
            "More keys match than the {} shown: show every one with --limit 0, or narrow the list with --status, --name-prefix, --meta or --expiring-within.",
            a.limit
        ));
    }
    Ok(())
}

/// Prints keys as they come: table rows in blocks, or the elements of one JSON array.
struct Printer<'a> {
    json: bool,
    prefix: &'a str,
    now: Timestamp,
    usage: &'a HashMap<String, UsageSnapshot>,
    rows: Vec<[String; HEADER.len()]>,
    widths: [usize; HEADER.len()],
    started: bool,
    /// Set when stdout stops taking output (`keygate keys list | head`): nothing more is
    /// written, the file is still validated.
    closed: bool,
    /// Why, when it was not a reader that left (a full disk): the command fails with it.
    failed: Option<std::io::Error>,
    stdout: std::io::BufWriter<std::io::Stdout>,
}

impl<'a> Printer<'a> {
    fn new(
        json: bool,
        prefix: &'a str,
        now: Timestamp,
        usage: &'a HashMap<String, UsageSnapshot>,
    ) -> Printer<'a> {
        Printer {
            json,
            prefix,
            now,
            usage,
            rows: vec![HEADER.map(String::from)],
            widths: [0; HEADER.len()],
            started: false,
            closed: false,
            failed: None,
            stdout: std::io::BufWriter::new(std::io::stdout()),
        }
    }

    fn write(&mut self, s: &str) {
        if !self.closed {
            let r = self.stdout.write_all(s.as_bytes());
            self.fail(r);
        }
    }

    fn fail(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r {
            self.closed = true;
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                self.failed.get_or_insert(e);
            }
        }
    }

    fn key(&mut self, k: &KeyRecord) {
        let used = self.usage.get(&k.id);
        if self.json {
            let v = k.view(self.prefix, self.now, used);
            let pretty = serde_json::to_string_pretty(&v).unwrap_or_default();
            let indented = text::escape_json(&pretty).replace('\n', "\n  ");
            let sep = if self.started { ",\n  " } else { "[\n  " };
            self.started = true;
            self.write(&format!("{sep}{indented}"));
            return;
        }
        let description = k.description.as_deref().unwrap_or("");
        let mut short: String = description.chars().take(DESCRIPTION_CHARS).collect();
        if short.len() < description.len() {
            short.push('…');
        }
        let labels: Vec<String> = k.metadata.iter().map(|(n, v)| format!("{n}={v}")).collect();
        // A long name would pad every row to its width; `--json` and `keys show` have it whole.
        let mut name: String = k.name.chars().take(NAME_CHARS).collect();
        if name.len() < k.name.len() {
            name.push('…');
        }
        self.rows.push([
            k.id.clone(),
            name,
            crate::keys::token::mask(self.prefix, &k.last4),
            k.scopes().names().join(","),
            ago(self.now, Some(k.created_at)),
            ago(self.now, used.and_then(|u| u.last_used)),
            k.expires_at
                .map_or_else(|| "never".into(), |e| until(self.now, e)),
            k.status(self.now).as_str().to_string(),
            labels.join(","),
            short,
        ]);
        if self.rows.len() >= BLOCK {
            self.flush_rows();
        }
    }

    /// Prints the rows held, aligned: every cell escaped for the terminal (a hand-edited
    /// file may hold anything).
    fn flush_rows(&mut self) {
        let rows: Vec<[String; HEADER.len()]> = std::mem::take(&mut self.rows)
            .into_iter()
            .map(|r| r.map(|c| text::escape(&c).into_owned()))
            .collect();
        for r in &rows {
            for (w, c) in self.widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(self.widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            self.write(&format!("{}\n", line.join("  ").trim_end()));
        }
    }

    /// Ends the output of a file that failed to read: nothing a script could take for a
    /// (short) list — no header, no `[]`. What is still held or buffered is dropped; only a
    /// list long enough to have been written out in part shows, and a JSON array is left
    /// open, so it does not parse.
    fn abandon(self) {
        let (_stdout, _unwritten) = self.stdout.into_parts();
    }

    fn finish(&mut self) {
        if self.json {
            let end = if self.started { "\n]\n" } else { "[]\n" };
            self.write(end);
        } else {
            self.flush_rows();
        }
        let r = self.stdout.flush();
        self.fail(r);
    }

    /// The output's failure, other than a reader that left.
    fn failure(&mut self) -> Result<(), CliError> {
        match self.failed.take() {
            Some(e) => written(Err(e), Did::Nothing),
            None => Ok(()),
        }
    }
}
