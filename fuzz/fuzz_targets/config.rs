//! `Config::parse` on arbitrary text: never panics, and what it accepts is usable.
#![no_main]

use keygate::config::Config;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|text: &str| {
    let Ok(cfg) = Config::parse(text, Some(Path::new("/etc/keygate/gateway.toml"))) else {
        return;
    };
    assert!(!cfg.keys.prefix.is_empty() && !cfg.keys.prefix.ends_with('_'));
    assert!(!cfg.upstreams.is_empty());
    assert!(cfg.limits.requests_per_minute >= 1 && cfg.limits.burst >= 1);
    assert!(cfg.server.max_body_bytes >= 1);
    // A generated key with the configured prefix parses with it.
    let t = keygate::keys::token::generate(&cfg.keys.prefix).unwrap();
    assert!(keygate::keys::token::Token::parse(&t.plaintext, &cfg.keys.prefix).is_ok());
});
