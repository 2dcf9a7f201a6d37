//! Text that people set (key names, model globs, descriptions, label values) and that ends
//! up on terminals and in logs.
//!
//! Two halves of one rule. On input, control characters and invisible formatting are
//! refused with the field named: an ESC or CR in a key name would repaint the terminal of
//! whoever runs `keygate keys list`, and a zero width space or a bidirectional override
//! makes two names that look alike differ (or one read backwards). On output, whatever text
//! still holds them (a hand-edited key file, or one written before the rule widened, is
//! trusted but not checked for this) is escaped before it reaches a terminal.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

/// Characters that new text must not hold and that must not reach a terminal raw: the
/// controls (C0, C1 and DEL: `char::is_control`), every format character (Unicode general
/// category Cf: zero width and bidirectional controls, the soft hyphen, U+FEFF, the tag
/// characters, …) and the line and paragraph separators U+2028 and U+2029 (see [`INVISIBLE`]).
pub fn is_forbidden(c: char) -> bool {
    c.is_control() || invisible(c).is_some()
}

/// The narrower rule that text was held to before the format characters were refused:
/// controls and the bidirectional controls. A key file is loaded with this one
/// ([`check_stored`]), so that a file written by an earlier version (or by hand) still loads.
pub fn is_forbidden_in_stored(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The invisible characters beyond the controls, as sorted ranges with a name for messages:
/// every format character (general category Cf) of Unicode 16.0, and the line (Zl) and
/// paragraph (Zp) separators. Written out rather than taken from a crate: it is short, it
/// changes only when Unicode adds a format character, and a test holds every entry.
const INVISIBLE: [(char, char, &str); 36] = [
    ('\u{ad}', '\u{ad}', "soft hyphen"),
    ('\u{600}', '\u{605}', "Arabic number sign"),
    ('\u{61c}', '\u{61c}', "Arabic letter mark"),
    ('\u{6dd}', '\u{6dd}', "Arabic end of ayah"),
    ('\u{70f}', '\u{70f}', "Syriac abbreviation mark"),
    ('\u{890}', '\u{891}', "Arabic currency mark above"),
    ('\u{8e2}', '\u{8e2}', "Arabic disputed end of ayah"),
    ('\u{180e}', '\u{180e}', "Mongolian vowel separator"),
    ('\u{200b}', '\u{200b}', "zero width space"),
    ('\u{200c}', '\u{200c}', "zero width non-joiner"),
    ('\u{200d}', '\u{200d}', "zero width joiner"),
    ('\u{200e}', '\u{200e}', "left-to-right mark"),
    ('\u{200f}', '\u{200f}', "right-to-left mark"),
    ('\u{2028}', '\u{2028}', "line separator"),
    ('\u{2029}', '\u{2029}', "paragraph separator"),
    ('\u{202a}', '\u{202a}', "left-to-right embedding"),
    ('\u{202b}', '\u{202b}', "right-to-left embedding"),
    ('\u{202c}', '\u{202c}', "pop directional formatting"),
    ('\u{202d}', '\u{202d}', "left-to-right override"),
    ('\u{202e}', '\u{202e}', "right-to-left override"),
    ('\u{2060}', '\u{2060}', "word joiner"),
    ('\u{2061}', '\u{2064}', "invisible mathematical operator"),
    ('\u{2066}', '\u{2066}', "left-to-right isolate"),
    ('\u{2067}', '\u{2067}', "right-to-left isolate"),
    ('\u{2068}', '\u{2068}', "first strong isolate"),
    ('\u{2069}', '\u{2069}', "pop directional isolate"),
    ('\u{206a}', '\u{206f}', "deprecated format character"),
    (
        '\u{feff}',
        '\u{feff}',
        "zero width no-break space (byte order mark)",
    ),
    ('\u{fff9}', '\u{fffb}', "interlinear annotation character"),
    ('\u{110bd}', '\u{110bd}', "Kaithi number sign"),
    ('\u{110cd}', '\u{110cd}', "Kaithi number sign above"),
    (
        '\u{13430}',
        '\u{1343f}',
        "Egyptian hieroglyph format control",
    ),
    ('\u{1bca0}', '\u{1bca3}', "shorthand format control"),
    ('\u{1d173}', '\u{1d17a}', "musical symbol format control"),
    ('\u{e0001}', '\u{e0001}', "language tag"),
    ('\u{e0020}', '\u{e007f}', "tag character"),
];

/// The name of `c` when it is one of [`INVISIBLE`].
fn invisible(c: char) -> Option<&'static str> {
    if c < '\u{ad}' {
        return None;
    }
    let i = INVISIBLE
        .binary_search_by(|&(lo, hi, _)| {
            if hi < c {
                Ordering::Less
            } else if lo > c {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        })
        .ok()?;
    INVISIBLE.get(i).map(|&(_, _, name)| name)
}

/// Text a person set in `field` held a forbidden character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {}", self.problem())]
pub struct ControlCharacter {
    /// The field as the caller names it (`name`, `description`, `metadata.team`, …).
    pub field: String,
    pub found: char,
    /// 1-based, in characters.
    pub position: usize,
}

impl ControlCharacter {
    /// What is wrong, without the field's name (for callers that name the field their way,
    /// such as the CLI's `--name`): the code point, and its name when it is invisible.
    pub fn problem(&self) -> String {
        let (code, at) = (u32::from(self.found), self.position);
        match invisible(self.found) {
            None => format!("must not contain control characters (found U+{code:04X} at character {at})"),
            Some(name) => format!(
                "must not contain control characters or invisible formatting (found U+{code:04X}, {name}, at character {at})"
            ),
        }
    }
}

/// Refuses text with a forbidden character ([`is_forbidden`]); the error names `field`. Use
/// it for every free-text field a person sets through the API or the CLI.
pub fn check(field: &str, value: &str) -> Result<(), ControlCharacter> {
    find(field, value, is_forbidden)
}

/// As [`check`], with the narrower rule stored text is held to ([`is_forbidden_in_stored`]):
/// for text read from a key file, or kept from it by an edit of other fields.
pub fn check_stored(field: &str, value: &str) -> Result<(), ControlCharacter> {
    find(field, value, is_forbidden_in_stored)
}

fn find(field: &str, value: &str, forbidden: fn(char) -> bool) -> Result<(), ControlCharacter> {
    match value.chars().enumerate().find(|(_, c)| forbidden(*c)) {
        None => Ok(()),
        Some((i, found)) => Err(ControlCharacter {
            field: field.to_string(),
            found,
            position: i + 1,
        }),
    }
}

/// `s` with every forbidden character written as `\u{1b}`, for terminal output.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_where(s, is_forbidden, |out, c| out.extend(c.escape_unicode()))
}

/// JSON text (as serde_json writes it) with the forbidden characters JSON allows raw in
/// strings (DEL, C1, format characters, U+2028/9) written as `\uXXXX` (a surrogate pair
/// past U+FFFF). Exact: serde_json escapes C0 controls inside strings, so a raw one is
/// layout (a newline, an indent); every other forbidden character is inside a string, where
/// the escape means the same character.
pub fn escape_json(json: &str) -> Cow<'_, str> {
    let escaped = |c: char| is_forbidden(c) && !matches!(c, '\n' | '\r' | '\t');
    escape_where(json, escaped, |out, c| {
        for unit in c.encode_utf16(&mut [0u16; 2]) {
            out.push_str(&format!("\\u{unit:04x}"));
        }
    })
}

/// `s` with each character `escaped` says written by `write`; borrowed when there is none.
fn escape_where(
    s: &str,
    escaped: impl Fn(char) -> bool,
    write: impl Fn(&mut String, char),
) -> Cow<'_, str> {
    if !s.chars().any(&escaped) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if escaped(c) {
            write(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Displays text escaped for a terminal (see [`escape`]).
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

/// Whether a JSON string needs escapes: a control character, a quote or a backslash (what
/// `serde_json` escapes; other characters are written as they are). For the writers that copy
/// a string that needs none as it is (the access line, a refusal's body).
pub fn needs_json_escape(v: &str) -> bool {
    // Eight bytes at a time, branch-free (the classic "has a zero byte" and "has a byte less
    // than n" word tricks, exact for "any byte"): the values are short, and a byte loop's
    // tail or a vector loop's set-up cost more than the test itself. A partial last word is
    // padded with a byte that needs nothing.
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let hit = |w: u64| {
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        control | has_zero(w ^ (ONES * u64::from(b'"'))) | has_zero(w ^ (ONES * u64::from(b'\\')))
    };
    let mut words = v.as_bytes().chunks_exact(8);
    let mut any = 0;
    for w in &mut words {
        let mut b = [b'a'; 8];
        b.copy_from_slice(w);
        any |= hit(u64::from_ne_bytes(b));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [b'a'; 8];
        b[..rest.len()].copy_from_slice(rest);
        any |= hit(u64::from_ne_bytes(b));
    }
    any != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_controls_and_names_the_field() {
        assert!(check("name", "billing-service ünïcode 名前").is_ok());
        let e = check("name", "ab\u{1b}[31m").unwrap_err();
        assert_eq!((e.found, e.position), ('\u{1b}', 3));
        assert_eq!(
            e.to_string(),
            "`name` must not contain control characters (found U+001B at character 3)"
        );
        for bad in ["a\rb", "a\nb", "\t", "a\u{7f}", "a\u{9b}", "a\u{202e}b"] {
            assert!(check("name", bad).is_err(), "{bad:?}");
        }
    }

    /// Every format character (general category Cf, Unicode 16.0), the line and paragraph
    /// separators, and the controls: refused, with the field and the code point named.
    const REFUSED: [(u32, u32); 22] = [
        (0x00, 0x1f),
        (0x7f, 0x9f),
        (0xad, 0xad),
        (0x600, 0x605),
        (0x61c, 0x61c),
        (0x6dd, 0x6dd),
        (0x70f, 0x70f),
        (0x890, 0x891),
        (0x8e2, 0x8e2),
        (0x180e, 0x180e),
        (0x200b, 0x200f),
        (0x2028, 0x202e),
        (0x2060, 0x2064),
        (0x2066, 0x206f),
        (0xfeff, 0xfeff),
        (0xfff9, 0xfffb),
        (0x110bd, 0x110bd),
        (0x110cd, 0x110cd),
        (0x13430, 0x1343f),
        (0x1bca0, 0x1bca3),
        (0x1d173, 0x1d17a),
        (0xe0001, 0xe0001),
    ];

    #[test]
    fn refuses_every_format_character_and_separator() {
        let tags = (0xe0020..=0xe007f).map(|c| (c, c));
        let all = REFUSED.iter().copied().chain(tags);
        for c in all.flat_map(|(lo, hi)| lo..=hi).filter_map(char::from_u32) {
            let text = format!("ab{c}");
            let e = check("name", &text).unwrap_err();
            assert_eq!((e.found, e.position), (c, 3), "{c:?}");
            let m = e.to_string();
            assert!(
                m.starts_with("`name` ") && m.contains(&format!("U+{:04X}", u32::from(c))),
                "{m}"
            );
            assert!(is_forbidden(c), "{c:?}");
            assert!(!escape(&text).contains(c), "{c:?} escaped for a terminal");
            let json = serde_json::to_string(&text).unwrap();
            let safe = escape_json(&json);
            assert!(!safe.contains(c), "{c:?} escaped in JSON: {safe}");
            assert_eq!(serde_json::from_str::<String>(&safe).unwrap(), text);
        }
        // The named ones the brief lists, and their neighbours that are visible.
        for (c, name) in [
            ('\u{200b}', "zero width space"),
            ('\u{feff}', "zero width no-break space"),
            ('\u{61c}', "Arabic letter mark"),
            ('\u{2028}', "line separator"),
            ('\u{2029}', "paragraph separator"),
            ('\u{ad}', "soft hyphen"),
            ('\u{202e}', "right-to-left override"),
            ('\u{2067}', "right-to-left isolate"),
        ] {
            let m = check("name", &format!("x{c}")).unwrap_err().to_string();
            assert!(m.contains(name), "{m}");
        }
        for ok in [
            '\u{ac}', '\u{ae}', '\u{61b}', '\u{2027}', '\u{2030}', '\u{fefe}', 'é', '名',
        ] {
            assert!(check("name", &format!("a{ok}b")).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn the_table_is_sorted_and_stored_text_keeps_the_narrower_rule() {
        assert!(INVISIBLE.iter().all(|&(lo, hi, _)| lo <= hi));
        assert!(
            INVISIBLE.windows(2).all(|w| w[0].1 < w[1].0),
            "sorted, disjoint"
        );
        // What a key file written before may hold still passes the stored rule; what it was
        // refused before still is.
        assert!(check_stored(
            "description",
            "soft\u{ad}hyphen \u{200b} \u{2028} 👨\u{200d}💻"
        )
        .is_ok());
        for bad in ["a\u{1b}", "a\u{9b}", "a\u{202e}", "a\u{2067}", "a\u{200e}"] {
            assert!(check_stored("description", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check("name", "ab\u{200b}").unwrap_err().to_string(),
            "`name` must not contain control characters or invisible formatting \
             (found U+200B, zero width space, at character 3)"
        );
    }

    #[test]
    fn escapes_for_terminals_and_json() {
        assert!(matches!(escape("plain ü"), Cow::Borrowed(_)));
        assert_eq!(escape("a\u{1b}[2Jb\r"), "a\\u{1b}[2Jb\\u{d}");
        let v = serde_json::json!({"name": "x\u{1b}\u{9b}\u{7f}\u{202e}", "n": [1]});
        let json = serde_json::to_string_pretty(&v).unwrap();
        let safe = escape_json(&json);
        assert!(safe.lines().all(|l| !l.chars().any(is_forbidden)), "{safe}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), v);
        assert!(matches!(escape_json("{\n  \"a\": 1\n}"), Cow::Borrowed(_)));
    }
}
