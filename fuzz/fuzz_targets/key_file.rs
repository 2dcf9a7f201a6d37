//! The key-file reader (`keys::file::read`) on arbitrary text, through both of its users: the
//! gateway's `KeyIndex::load` and the CLI's and API's `KeyFile::parse`. Never panics; both
//! accept or both refuse; a file they accept is valid, every key is indexed and views without
//! panicking, and it survives a write (as the store writes it) and a re-read unchanged.
#![no_main]

use keygate::config::Config;
use keygate::keys::file::KeyFile;
use keygate::keys::index::KeyIndex;
use keygate::keys::record::parse_hash;
use keygate::time::Timestamp;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::{Arc, OnceLock};

fuzz_target!(|text: &str| {
    let path = Path::new("keys.json");
    static DEFAULTS: OnceLock<Config> = OnceLock::new();
    let cfg = DEFAULTS.get_or_init(|| Config::parse("", None).unwrap());
    let indexed = KeyIndex::load(path, text, &cfg.limits, None);
    let parsed = KeyFile::parse(text, path);
    assert_eq!(
        indexed.is_ok(),
        parsed.is_ok(),
        "the index and the file disagree: {:?} / {:?}",
        indexed.as_ref().err(),
        parsed.as_ref().err()
    );
    let (Ok(index), Ok(file)) = (indexed, parsed) else {
        return;
    };
    let index = Arc::new(index);
    assert!(file.validate().is_ok());
    assert_eq!(index.len(), file.keys.len());
    let now = Timestamp::now();
    let clock = keygate::limit::rate::RateClock::new();
    for k in &file.keys {
        let _ = k.status(now);
        assert!(!k.scopes().is_empty());
        let _ = k.view("sk_kg", now, None);
        let hash = parse_hash(&k.sha256).unwrap();
        let (entry, _) = index
            .lookup(&hash)
            .expect("every current secret is indexed");
        assert_eq!(&*entry.id, k.id.as_str());
        let _ = entry.state().rate.check(&clock, &entry.rate);
        let _ = entry.may_use_model("llama-3-8b");
    }
    let written = keygate::keys::writer::file_text(&file);
    let again = KeyFile::parse(&written, path).expect("a written file parses");
    assert_eq!(again, file);
});
