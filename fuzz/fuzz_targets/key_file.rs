//! `store::parse` on arbitrary text: never panics; a file it accepts is valid, indexes and
//! views without panicking, and survives a write (as the store writes it) and a re-read
//! unchanged.
#![no_main]

use keygate::config::Config;
use keygate::keys::index::KeyIndex;
use keygate::keys::store;
use keygate::time::Timestamp;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;

fuzz_target!(|text: &str| {
    let path = Path::new("keys.json");
    let Ok(file) = store::parse(text, path) else {
        return;
    };
    assert!(file.validate().is_ok());
    let now = Timestamp::now();
    static DEFAULTS: OnceLock<Config> = OnceLock::new();
    let cfg = DEFAULTS.get_or_init(|| Config::parse("", None).unwrap());
    let index = KeyIndex::build(&file, &cfg.limits, None);
    assert_eq!(index.len(), file.keys.len());
    for k in &file.keys {
        let _ = k.status(now);
        assert!(!k.scopes().is_empty());
        let _ = k.view("sk_kg", now, None);
        let hash = store::parse_hash(&k.sha256).unwrap();
        let (entry, _) = index
            .lookup(&hash)
            .expect("every current secret is indexed");
        assert_eq!(&*entry.id, k.id.as_str());
        let _ = entry.rate.check();
        let _ = entry.may_use_model("llama-3-8b");
    }
    let written = serde_json::to_string_pretty(&file).expect("a parsed file serialises");
    let again = store::parse(&written, path).expect("a written file parses");
    assert_eq!(again, file);
});
