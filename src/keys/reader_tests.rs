//! Unit tests of the key-file reader (a file of their own: the reader is long enough).

use super::reader::*;
use crate::keys::error::StoreError;
use crate::keys::file::KeyFile;
use crate::keys::record::KeyRecord;
use crate::keys::record::NewKey;
use crate::time::Timestamp;
use std::path::Path;

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

/// The message of reading `text`.
fn message(text: &str) -> String {
    match read(Path::new("keys.json"), text, &mut |_| {}) {
        Err(e @ StoreError::Syntax { .. }) => e.to_string(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_record_that_is_no_key_record_is_named_by_its_place_and_field() {
    let text = crate::keys::writer::file_text(&file(3));
    // The second record's time is no time; the third has a nested field of the wrong type.
    let at = text.match_indices("\"created_at\"").nth(1).unwrap().0;
    let (head, tail) = text.split_at(at);
    let end = tail.find("Z\"").unwrap() + 2;
    let bad_time = format!("{head}\"created_at\":\"yesterday\"{}", &tail[end..]);
    let m = message(&bad_time);
    assert!(m.contains("keys[1].created_at: `yesterday`"), "{m}");
    let nested = text.replacen(
        "\"name\":\"k2\"",
        "\"name\":\"k2\",\"limits\":{\"requests_per_minute\":\"x\"}",
        1,
    );
    let m = message(&nested);
    assert!(
        m.contains("keys[2].limits.requests_per_minute: invalid type"),
        "{m}"
    );
    let unknown = text.replacen("\"name\":\"k0\"", "\"name\":\"k0\",\"colour\":1", 1);
    let m = message(&unknown);
    assert!(m.contains("keys[0].colour: unknown field `colour`"), "{m}");
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
        assert_eq!(read_lines(text.as_bytes(), &mut c), Lines::Read, "{text}");
        assert_eq!((c.texts, c.records), (n, n));
        // Each record's text is what the streaming reader shows for it.
        let mut lines = Texts(Vec::new());
        let mut raw = Texts(Vec::new());
        assert_eq!(read_lines(text.as_bytes(), &mut lines), Lines::Read);
        read_raw(path, &text, &mut raw).unwrap();
        assert_eq!(lines.0, raw.0);
    }
    let text = crate::keys::writer::file_text(&file(3));
    let mut c = count(Raw::Stop);
    assert_eq!(read_lines(text.as_bytes(), &mut c), Lines::Read);
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
        format!("{text}\n"),
        text.replacen("},\n", "},\n\n", 1),
        text.replacen("}\n]}", "},\n\n]}", 1),
        text.replacen("},\n", "},\n]}\n", 1),
        text.replacen("k1", "k\u{1}", 1),
    ];
    for other in others {
        assert_eq!(
            read_lines(other.as_bytes(), &mut count(Raw::Parse)),
            Lines::Other,
            "{other}"
        );
    }
    // The footer's newline is optional, as for the streaming reader; bytes that are not UTF-8
    // are for it to report.
    let bare = text.trim_end_matches('\n');
    assert_eq!(
        read_lines(bare.as_bytes(), &mut count(Raw::Parse)),
        Lines::Read
    );
    let mut bytes = text.clone().into_bytes();
    let at = text.find("k1").unwrap();
    bytes[at] = 0xff;
    assert_eq!(read_lines(&bytes[..], &mut count(Raw::Parse)), Lines::Other);
    // A line the visitor knows is not parsed: trusted as the streaming reader trusts it.
    let mut c = count(Raw::Skip);
    assert_eq!(read_lines(text.as_bytes(), &mut c), Lines::Read);
    assert_eq!((c.texts, c.records), (3, 0));
}

/// Collects the texts of the records it is given.
struct Texts(Vec<String>);

impl Visit for Texts {
    fn record(&mut self, _: KeyRecord, text: &str) {
        self.0.push(text.to_string());
    }
}

#[test]
fn the_key_file_is_read_a_line_at_a_time_or_else_whole() {
    use crate::keys::source::Source;
    use crate::keys::store::KeyStore;
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::new(dir.path().join("keys.json"));
    let records = |source: Source<'_>| source.read_with(|| Texts(Vec::new())).map(|t| t.0);
    let f = file(3);
    let written = crate::keys::writer::file_text(&f);
    let compact = serde_json::to_string(&f).unwrap();
    let want = records(Source::Text {
        path: store.path(),
        text: &written,
    })
    .unwrap();
    assert_eq!(want.len(), 3);
    for text in [&written, &compact] {
        std::fs::write(store.path(), text).unwrap();
        assert_eq!(records(Source::File(&store)).unwrap(), want, "{text}");
    }
    // A record the line reader cannot judge is read again whole, and placed in the file.
    let bad = written.replacen("\"rev\":1", "\"rev\":\"x\"", 1);
    std::fs::write(store.path(), &bad).unwrap();
    match records(Source::File(&store)) {
        Err(StoreError::Syntax { line, .. }) => assert_eq!(line, 2),
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(store.path()).unwrap();
    assert!(matches!(
        records(Source::File(&store)),
        Err(StoreError::Read { .. })
    ));
}
