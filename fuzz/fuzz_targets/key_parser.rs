//! `Token::parse` on arbitrary text: never panics, and what it accepts is key-shaped.
#![no_main]

use keygate::keys::token::{hash_token, Token, CHECK_LEN, SECRET_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    for prefix in ["sk_kg", "sk", ""] {
        if let Ok(t) = Token::parse(text, prefix) {
            let body = &text[prefix.len() + 1..];
            assert!(text.starts_with(prefix) && text.as_bytes()[prefix.len()] == b'_');
            assert!(body.len() >= SECRET_LEN + CHECK_LEN);
            assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()));
            assert_eq!(t.hash(), hash_token(text));
            assert_eq!(t.last4(), &text[text.len() - 4..]);
        }
    }
});
