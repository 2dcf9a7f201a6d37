use super::*;

#[test]
fn text_values_are_quoted_only_when_needed() {
    let mut out = Vec::new();
    let mut w = Fields::<false> { out: &mut out };
    w.str(key!("a"), Some("plain/1.0"));
    w.str(key!("b"), Some("two words \"q\"\nx"));
    w.str(key!("c"), None);
    w.str(key!("d"), Some(""));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#" a=plain/1.0 b="two words \"q\"\nx" c=- d="""#
    );
}

#[test]
fn json_values_are_what_serde_json_writes() {
    for v in [
        "plain",
        "",
        "héllo wörld",
        "q\"uote",
        "back\\slash",
        "ctl\u{1}x\n",
        "\u{7f}del",
    ] {
        let mut out = Vec::new();
        Fields::<true> { out: &mut out }.str(key!("k"), Some(v));
        let expected = format!(",\"k\":{}", serde_json::to_string(v).unwrap());
        assert_eq!(String::from_utf8(out).unwrap(), expected, "{v:?}");
    }
}

#[test]
fn addresses_are_written_as_displayed() {
    for ip in [
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "10.0.12.7",
        "::1",
        "2001:db8::2",
    ] {
        let ip: IpAddr = ip.parse().unwrap();
        for json in [true, false] {
            let mut out = Vec::new();
            if json {
                Fields::<true> { out: &mut out }.addr(key!("a"), ip);
            } else {
                Fields::<false> { out: &mut out }.addr(key!("a"), ip);
            }
            let want = if json {
                format!(",\"a\":\"{ip}\"")
            } else {
                format!(" a={ip}")
            };
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}

#[test]
fn escapes_are_found_anywhere_in_a_value() {
    let long = "x".repeat(70);
    for bad in ["\"", "\\", "\n", "\u{1f}"] {
        for at in [0, 1, 31, 69] {
            let mut v = long.clone();
            v.insert_str(at, bad);
            assert!(needs_json_escape(&v), "{v:?}");
        }
    }
    assert!(!needs_json_escape(&long));
    assert!(!needs_json_escape("héllo \u{7f} wörld"));
}

/// The word-at-a-time test agrees with a byte loop for every ASCII byte at every place
/// of values up to three words long, among neighbours that need nothing, multi-byte
/// characters or DEL (the neighbours a borrow between bytes would upset).
#[test]
fn the_escape_test_agrees_with_a_byte_loop() {
    let slow = |v: &str| v.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
    for fill in ['a', ' ', '\u{7f}', 'é', '!', '#', '['] {
        for len in 1..=24 {
            for at in 0..len {
                for b in 0u8..0x80 {
                    let mut v: Vec<char> = std::iter::repeat_n(fill, len).collect();
                    v[at] = char::from(b);
                    let v: String = v.into_iter().collect();
                    assert_eq!(needs_json_escape(&v), slow(&v), "{v:?}");
                }
            }
        }
    }
}

#[test]
fn paths_never_carry_a_key() {
    assert_eq!(
        logged_path("/v1/chat/completions", "sk_kg"),
        "/v1/chat/completions"
    );
    assert_eq!(logged_path("/v1/sk_kg_abc/x", "sk_kg"), "/v1/[redacted]/x");
    // Percent-encoded, once or more: the same key to any tool that decodes it.
    for seg in [
        "sk%5Fkg%5Fabc",
        "%73k_kg_abc",
        "%2573k_kg_abc",
        "x%2Fsk_kg_abc",
    ] {
        assert_eq!(
            logged_path(&format!("/v1/models/{seg}"), "sk_kg"),
            "/v1/models/[redacted]",
            "{seg}"
        );
    }
    assert_eq!(logged_path("/v1/a%20b", "sk_kg"), "/v1/a%20b");
    assert_eq!(clip("héllo", 2), "h");
}

#[test]
fn a_user_agent_that_names_a_key_is_replaced() {
    let ua = |v: &'static str| {
        logged_user_agent(&http::HeaderValue::from_static(v), "sk_kg").into_owned()
    };
    assert_eq!(ua("OpenAI/Python 1.54.0"), "OpenAI/Python 1.54.0");
    assert_eq!(ua("bot (token sk_kg_0123456789abcdefXYZ)"), "[redacted]");
    assert_eq!(ua("bot sk%5Fkg%5F0123456789"), "[redacted]");
}
