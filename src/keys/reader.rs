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
/// would read it (module doc). A record's text is its line without the comma; the visitor's
/// `Skip` is trusted as in [`read_raw`] (text seen and validated before is a whole record), and
/// every other line is parsed and validated as a record, or the answer is [`Lines::Other`].
pub fn read_lines(text: &str, visit: &mut dyn Visit) -> Lines {
    debug_assert_eq!(FILE_VERSION, 1, "HEAD names the version");
    let Some(body) = text
        .strip_prefix(HEAD)
        .and_then(|t| t.strip_suffix("\n]}\n").or_else(|| t.strip_suffix("\n]}")))
    else {
        return Lines::Other;
    };
    if body.is_empty() {
        return Lines::Read;
    }
    // Each record after a newline; a comma ends every record line but the last.
    let Some(body) = body.strip_prefix('\n') else {
        return Lines::Other;
    };
    let mut lines = body.split('\n').peekable();
    let mut count = 0;
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        let record = if last {
            Some(line)
        } else {
            line.strip_suffix(',')
        };
        let Some(record) = record.filter(|r| r.starts_with('{') && r.ends_with('}')) else {
            return Lines::Other;
        };
        match visit.text(record) {
            Raw::Skip => {}
            Raw::Stop => return Lines::Read,
            Raw::Parse => {
                let Ok(rec) = serde_json::from_str::<KeyRecord>(record) else {
                    return Lines::Other;
                };
                if record::validate_record(count, &rec).is_err() {
                    return Lines::Other;
                }
                visit.record(rec, record);
            }
        }
        count += 1;
        share_the_core(count);
    }
    Lines::Read
}

/// Every [`YIELD_EVERY`] records, offers the core to whatever else is ready to run. A reload
/// runs beside the request path, on the same core when the gateway has one: the scheduler
/// would let it run a whole time slice (milliseconds) while requests wait; yielding this
/// often bounds their wait to the time a few hundred records take (tens of microseconds).
/// With nothing else ready, a yield returns at once.
fn share_the_core(count: usize) {
    if count.is_multiple_of(YIELD_EVERY) {
        std::thread::yield_now();
    }
}

const YIELD_EVERY: usize = 256;

/// Reads with the fastest reader that can judge `text`: [`read_lines`] for the writer's
/// layout, else [`read_raw`] from the start with a visitor made afresh (the first one saw part
/// of the file). Returns the visitor that read the whole file.
pub fn read_with<V: Visit>(
    path: &Path,
    text: &str,
    fresh: impl Fn() -> V,
) -> Result<V, StoreError> {
    let mut visit = fresh();
    if read_lines(text, &mut visit) == Lines::Other {
        visit = fresh();
        read_raw(path, text, &mut visit)?;
    }
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

fn syntax_error(path: &Path, e: &serde_json::Error) -> StoreError {
    StoreError::Syntax {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    }
}

/// A serde_json message without its " at line L column C" (reported in fields of their own).
pub(crate) fn strip_position(msg: &str) -> String {
    msg.rsplit_once(" at line ")
        .map_or(msg, |(head, _)| head)
        .to_string()
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

/// A serde_json error in one record's text, with where that text starts in the file.
struct Placed {
    error: serde_json::Error,
    /// 1-based line, and bytes before the record on that line.
    line: usize,
    column: usize,
}

impl Placed {
    fn new(file: &str, record: &str, error: serde_json::Error) -> Placed {
        // The record is a slice of the file: its offset is where it starts.
        let offset = (record.as_ptr() as usize).saturating_sub(file.as_ptr() as usize);
        let before = file.get(..offset).unwrap_or_default();
        let line = 1 + memchr::memchr_iter(b'\n', before.as_bytes()).count();
        let column = offset - before.rfind('\n').map_or(0, |nl| nl + 1);
        Placed {
            error,
            line,
            column,
        }
    }

    /// The error as if the whole file had been parsed at once: same line, same column.
    fn into_error(self, path: &Path) -> StoreError {
        let (l, c) = (self.error.line(), self.error.column());
        StoreError::Syntax {
            path: path.to_path_buf(),
            line: self.line + l.saturating_sub(1),
            column: if l <= 1 { self.column + c } else { c },
            message: strip_position(&self.error.to_string()),
        }
    }
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
        version.ok_or_else(|| A::Error::missing_field("version"))
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
                            r.problem = Some(Problem::Syntax(Placed::new(r.text, text, e)));
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
