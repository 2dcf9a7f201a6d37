//! The key file's one reader, whatever the file's layout (pretty-printed files from older
//! versions read the same). It streams: each record is parsed, validated
//! (`record::validate_record`) and handed on as soon as it is read, so nothing holds more than
//! one parsed record. [`read_raw`] shows each record's text first, so a reload can skip the
//! records it has indexed before without parsing them. A syntax error anywhere is reported
//! by the line and column of the file, as if the whole file had been parsed at once.
//!
//! [`read_lines`] is the same reader's fast path for the layout keygate's writer writes (a
//! header line, one record a line, a footer): it finds records by their line ends instead of
//! scanning the JSON, so a record whose text the caller knows costs a line search and a
//! digest. It accepts only what [`read_raw`] accepts: a line it is not sure of ends it, and the
//! caller reads the whole file again with [`read_raw`], which judges it.

use crate::keys::error::StoreError;
use crate::keys::record::{self, KeyRecord};
pub(crate) use crate::keys::syntax::strip_position;
use crate::keys::syntax::{syntax_error, Placed};
use std::io;
use std::path::Path;

pub const FILE_VERSION: u32 = 1;

/// Reads key-file text, handing each record to `each` once it is read and validated. `path`
/// is only used in messages. A JSON error is reported by line and column; anything else by
/// the key's position and id, or as the version this keygate does not read.
pub fn read(path: &Path, text: &str, each: &mut dyn FnMut(KeyRecord)) -> Result<(), StoreError> {
    struct Each<'e>(&'e mut dyn FnMut(KeyRecord));
    impl Visit for Each<'_> {
        fn record(&mut self, rec: KeyRecord, _text: &str) {
            (self.0)(rec)
        }
    }
    read_raw(path, text, &mut Each(each))
}

/// What [`read_raw`]'s caller says of a record's text before it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raw {
    /// Parse, validate and hand it on.
    Parse,
    /// The caller knows this text already (it was validated when first read): skip it.
    Skip,
    /// Read no further: the caller has what it needs (the rest is not checked).
    Stop,
}

/// How [`read_lines`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// Read to the end, or to the visitor's `Stop`.
    Read,
    /// Not the writer's layout, or a record line that does not parse or validate: read the
    /// file with [`read_raw`] and a fresh visitor (this one saw part of the file).
    Other,
}

/// The first line of a file as the writer writes it.
const HEAD: &str = "{\"version\": 1, \"keys\": [";

/// Reads a file in the writer's layout (`keys::writer`) a line at a time, as [`read_raw`]
/// would read it (module doc), holding one line: from the file itself, never its whole text.
/// A record's text is its line without the comma; the visitor's `Skip` is trusted as in
/// [`read_raw`] (text seen and validated before is a whole record), and every other line is
/// parsed and validated as a record, or the answer is [`Lines::Other`] (an I/O error or text
/// that is not UTF-8 too: the whole read that follows reports it).
pub fn read_lines(mut input: impl io::BufRead, visit: &mut dyn Visit) -> Lines {
    debug_assert_eq!(FILE_VERSION, 1, "HEAD names the version");
    let mut next_line = |line: &mut String| {
        line.clear();
        input.read_line(line).ok()
    };
    let mut line = String::new();
    if next_line(&mut line).is_none() || line.strip_suffix('\n') != Some(HEAD) {
        return Lines::Other;
    }
    // The record line before this one: a comma ends it unless this one is the footer.
    let mut pending = String::new();
    let mut count = 0;
    loop {
        let Some(n) = next_line(&mut line) else {
            return Lines::Other;
        };
        if line == "]}\n" || line == "]}" {
            // The footer ends the file.
            if next_line(&mut line) != Some(0) {
                return Lines::Other;
            }
            if pending.is_empty() {
                return Lines::Read;
            }
            return match record_line(&pending, count, visit) {
                Step::Other => Lines::Other,
                Step::Next | Step::Stop => Lines::Read,
            };
        }
        // A record line ends with its newline (the footer follows the last one) and is never
        // empty, so an empty `pending` means there was no record line before.
        let Some(text) = line.strip_suffix('\n').filter(|t| n > 0 && !t.is_empty()) else {
            return Lines::Other;
        };
        if !pending.is_empty() {
            let Some(record) = pending.strip_suffix(',') else {
                return Lines::Other;
            };
            match record_line(record, count, visit) {
                Step::Next => {}
                Step::Stop => return Lines::Read,
                Step::Other => return Lines::Other,
            }
            count += 1;
            share_the_core(count);
        }
        pending.clear();
        pending.push_str(text);
    }
}

/// What one record line of [`read_lines`] leads to.
enum Step {
    Next,
    Stop,
    Other,
}

/// One record line of [`read_lines`], the comma gone: a JSON object, skipped when the visitor
/// knows its text, else parsed and validated as record number `count`.
fn record_line(record: &str, count: usize, visit: &mut dyn Visit) -> Step {
    if !(record.starts_with('{') && record.ends_with('}')) {
        return Step::Other;
    }
    match visit.text(record) {
        Raw::Skip => Step::Next,
        Raw::Stop => Step::Stop,
        Raw::Parse => {
            let Ok(rec) = serde_json::from_str::<KeyRecord>(record) else {
                return Step::Other;
            };
            if record::validate_record(count, &rec).is_err() {
                return Step::Other;
            }
            visit.record(rec, record);
            Step::Next
        }
    }
}

/// Every [`YIELD_EVERY`] records, steps aside so whatever else is ready runs (`step_aside`).
fn share_the_core(count: usize) {
    if count.is_multiple_of(YIELD_EVERY) {
        step_aside();
    }
}

/// Hands the core to whatever else is ready, for a moment. A reload runs beside the request
/// path, on the same core when the gateway has one. A yield does not hand the core over: the
/// scheduler (EEVDF) lets the reload run out its slice, 1 to 3 ms as measured, while the
/// request worker, having had more than its share, waits. A short sleep does: requests wait at
/// most for what a few hundred records take (tens of microseconds). It costs the reload wall
/// time: about 30 ms more for 100k keys.
pub(crate) fn step_aside() {
    std::thread::sleep(STEP_ASIDE);
}

const STEP_ASIDE: std::time::Duration = std::time::Duration::from_micros(20);

const YIELD_EVERY: usize = 256;

/// Reads with the fastest reader that can judge the text: [`read_lines`] over `lines` for the
/// writer's layout, else [`read_raw`] over the `whole` text, from the start, with a visitor made
/// afresh (the first one saw part of it). Returns the visitor that read the whole text.
pub fn read_with<'t, V: Visit>(
    path: &Path,
    lines: impl io::BufRead,
    whole: impl FnOnce() -> Result<std::borrow::Cow<'t, str>, StoreError>,
    fresh: impl Fn() -> V,
) -> Result<V, StoreError> {
    let mut visit = fresh();
    if read_lines(lines, &mut visit) == Lines::Read {
        return Ok(visit);
    }
    let text = whole()?;
    let mut visit = fresh();
    read_raw(path, &text, &mut visit)?;
    Ok(visit)
}

/// What [`read_raw`] hands each record to.
pub trait Visit {
    /// A record's text, exactly as the file has it (the JSON object alone), before it is
    /// parsed.
    fn text(&mut self, _text: &str) -> Raw {
        Raw::Parse
    }
    /// A parsed, validated record, with its text.
    fn record(&mut self, rec: KeyRecord, text: &str);
}

/// [`read`], showing each record's text to the visitor before it is parsed. A reload uses
/// this to skip the records whose text it has indexed before (`KeyIndex::reload`): every
/// record is still checked as JSON, but only a changed one is parsed into fields.
pub fn read_raw(path: &Path, text: &str, visit: &mut dyn Visit) -> Result<(), StoreError> {
    use serde::de::DeserializeSeed;
    let mut reader = Reader {
        text,
        visit,
        problem: None,
        stopped: false,
        count: 0,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = FileSeed(&mut reader)
        .deserialize(&mut de)
        .and_then(|version| de.end().map(|()| version));
    let invalid = |problem: String| StoreError::Invalid {
        path: path.to_path_buf(),
        problem,
    };
    if let Some(problem) = reader.problem.take() {
        return match problem {
            Problem::Invalid(problem) => Err(invalid(problem)),
            Problem::Syntax(e) => Err(e.into_error(path)),
        };
    }
    if reader.stopped {
        return Ok(());
    }
    let version = parsed.map_err(|e| syntax_error(path, &e))?;
    check_version(version).map_err(invalid)
}

pub(crate) fn check_version(version: u32) -> Result<(), String> {
    if version == FILE_VERSION {
        return Ok(());
    }
    Err(format!(
        "unsupported version {version} (this keygate reads version {FILE_VERSION})"
    ))
}

/// The streaming parse's state: where records go, and a record that parsed but is invalid
/// (reported as such, not as a syntax error).
struct Reader<'e> {
    text: &'e str,
    visit: &'e mut dyn Visit,
    problem: Option<Problem>,
    stopped: bool,
    count: usize,
}

enum Problem {
    Invalid(String),
    /// A record whose JSON is well formed but is not a key record (a field of the wrong type,
    /// one missing or unknown), placed in the file.
    Syntax(Placed),
}

struct FileSeed<'s, 'e>(&'s mut Reader<'e>);
struct KeysSeed<'s, 'e>(&'s mut Reader<'e>);

impl<'de> serde::de::DeserializeSeed<'de> for FileSeed<'_, '_> {
    type Value = u32;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FileSeed<'_, '_> {
    type Value = u32;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key file object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<u32, A::Error> {
        use serde::de::Error;
        let mut version = None;
        let mut keys = false;
        while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*field {
                // Two of a field: which one counts is anyone's guess, so neither does.
                "version" if version.is_some() => return Err(A::Error::duplicate_field("version")),
                "keys" if keys => return Err(A::Error::duplicate_field("keys")),
                "version" => {
                    let v = map.next_value::<u32>()?;
                    // Written first, as keygate writes it: no record is read in a format
                    // this keygate does not know.
                    if let Err(problem) = check_version(v) {
                        self.0.problem = Some(Problem::Invalid(problem));
                        return Err(A::Error::custom("unsupported version"));
                    }
                    version = Some(v);
                }
                "keys" => {
                    keys = true;
                    map.next_value_seed(KeysSeed(&mut *self.0))?;
                }
                other => return Err(A::Error::unknown_field(other, &["version", "keys"])),
            }
        }
        let version = version.ok_or_else(|| A::Error::missing_field("version"))?;
        // Required even when empty (`"keys": []`): a file that lost the field by mistake
        // would otherwise load as "no keys", and refuse every client.
        if !keys {
            return Err(A::Error::missing_field("keys"));
        }
        Ok(version)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for KeysSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeysSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of keys")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let r = self.0;
        while let Some(text) = seq.next_element::<&'de serde_json::value::RawValue>()? {
            let text = text.get();
            match r.visit.text(text) {
                Raw::Skip => {}
                Raw::Stop => {
                    r.stopped = true;
                    return Err(A::Error::custom("stopped"));
                }
                Raw::Parse => {
                    let rec = match serde_json::from_str::<KeyRecord>(text) {
                        Ok(rec) => rec,
                        Err(e) => {
                            r.problem =
                                Some(Problem::Syntax(Placed::new(r.text, text, r.count, e)));
                            return Err(A::Error::custom("invalid key record"));
                        }
                    };
                    if let Err(problem) = record::validate_record(r.count, &rec) {
                        r.problem = Some(Problem::Invalid(problem));
                        return Err(A::Error::custom("invalid key record"));
                    }
                    r.visit.record(rec, text);
                }
            }
            r.count += 1;
            share_the_core(r.count);
        }
        Ok(())
    }
}
