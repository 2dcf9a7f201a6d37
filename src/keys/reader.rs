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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::file::KeyFile;
    use crate::keys::record::NewKey;
    use crate::time::Timestamp;

    fn file(n: usize) -> KeyFile {
        let mut f = KeyFile::empty();
        for i in 0..n {
            let new = NewKey {
                name: format!("k{i}"),
                ..Default::default()
            };
            f.create(new, "sk_kg", Timestamp::now()).unwrap();
        }
        f
    }

    /// Where `text` fails to read, and where serde_json puts the error reading it whole.
    fn positions(text: &str) -> ((usize, usize), (usize, usize)) {
        let ours = match read(Path::new("keys.json"), text, &mut |_| {}) {
            Err(StoreError::Syntax { line, column, .. }) => (line, column),
            other => panic!("{other:?}"),
        };
        let whole = serde_json::from_str::<KeyFile>(text).unwrap_err();
        (ours, (whole.line(), whole.column()))
    }

    #[test]
    fn a_record_that_is_no_key_record_is_placed_in_the_file() {
        let text = crate::keys::writer::file_text(&file(3));
        // A field of the wrong type in the second record (its own line), in the third, and
        // everything on one line.
        let second = text.replacen("\"rev\":1", "\"rev\":\"one\"", 2).replacen(
            "\"rev\":\"one\"",
            "\"rev\":1",
            1,
        );
        let (ours, whole) = positions(&second);
        assert_eq!(ours, whole);
        assert_eq!(ours.0, 3, "{second}");
        let unknown = text.replacen("\"last4\"", "\"colour\":\"red\",\"last4\"", 3);
        let (ours, whole) = positions(&unknown);
        assert_eq!(ours, whole);
        let one_line =
            serde_json::to_string(&file(2))
                .unwrap()
                .replacen("\"name\":\"k1\"", "\"name\":7", 1);
        let (ours, whole) = positions(&one_line);
        assert_eq!(ours, whole);
        assert_eq!(ours.0, 1);
    }

    /// A visitor that answers `answer` and counts what it sees.
    struct Count {
        answer: Raw,
        texts: usize,
        records: usize,
    }

    impl Visit for Count {
        fn text(&mut self, _: &str) -> Raw {
            self.texts += 1;
            self.answer
        }
        fn record(&mut self, _: KeyRecord, _: &str) {
            self.records += 1;
        }
    }

    #[test]
    fn skipped_text_is_not_parsed_and_a_stop_reads_no_further() {
        let text = crate::keys::writer::file_text(&file(3));
        let path = Path::new("keys.json");
        let mut c = Count {
            answer: Raw::Skip,
            texts: 0,
            records: 0,
        };
        read_raw(path, &text, &mut c).unwrap();
        assert_eq!((c.texts, c.records), (3, 0));
        // Skipped text is still JSON that must be whole.
        let cut = &text[..text.len() - 10];
        assert!(read_raw(path, cut, &mut c).is_err());
        let mut c = Count {
            answer: Raw::Stop,
            texts: 0,
            records: 0,
        };
        read_raw(path, cut, &mut c).unwrap();
        assert_eq!((c.texts, c.records), (1, 0));
    }

    #[test]
    fn the_line_reader_reads_the_writers_layout_and_nothing_else() {
        let path = Path::new("keys.json");
        let count = |answer| Count {
            answer,
            texts: 0,
            records: 0,
        };
        for n in [0, 1, 3] {
            let text = crate::keys::writer::file_text(&file(n));
            let mut c = count(Raw::Parse);
            assert_eq!(read_lines(&text, &mut c), Lines::Read, "{text}");
            assert_eq!((c.texts, c.records), (n, n));
            // Each record's text is what the streaming reader shows for it.
            let mut lines = Texts(Vec::new());
            let mut raw = Texts(Vec::new());
            assert_eq!(read_lines(&text, &mut lines), Lines::Read);
            read_raw(path, &text, &mut raw).unwrap();
            assert_eq!(lines.0, raw.0);
        }
        let text = crate::keys::writer::file_text(&file(3));
        let mut c = count(Raw::Stop);
        assert_eq!(read_lines(&text, &mut c), Lines::Read);
        assert_eq!(c.texts, 1);
        // Anything else is for the streaming reader to judge.
        let others = [
            serde_json::to_string(&file(2)).unwrap(),
            serde_json::to_string_pretty(&file(2)).unwrap(),
            text.replacen("},\n", "}\n", 1),
            text.replacen("}\n]}", "},\n]}", 1),
            text.replacen("},\n{", "},{", 1),
            text.replacen("},\n", "}, \n", 1),
            text.replacen("\"rev\":1", "\"rev\":\"x\"", 1),
            text.replacen("\"name\":\"k1\"", "\"name\":\" \"", 1),
            text.replacen("{\"version\": 1", "{\"version\": 2", 1),
            text.replacen("]}\n", "]} x", 1),
            text[..text.len() - 2].to_string(),
        ];
        for other in others {
            assert_eq!(
                read_lines(&other, &mut count(Raw::Parse)),
                Lines::Other,
                "{other}"
            );
        }
        // A line the visitor knows is not parsed: trusted as the streaming reader trusts it.
        let mut c = count(Raw::Skip);
        assert_eq!(read_lines(&text, &mut c), Lines::Read);
        assert_eq!((c.texts, c.records), (3, 0));
    }

    /// Collects the texts of the records it is given.
    struct Texts(Vec<String>);

    impl Visit for Texts {
        fn record(&mut self, _: KeyRecord, text: &str) {
            self.0.push(text.to_string());
        }
    }
}
