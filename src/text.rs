//! Text that people set (key names; later descriptions and metadata) and that ends up on
//! terminals and in logs.
//!
//! Two halves of one rule. On input, control characters are refused with the field named:
//! an ESC or CR in a key name would repaint the terminal of whoever runs `keygate keys list`.
//! On output, whatever text still holds them (a hand-edited key file is trusted but not
//! checked for this) is escaped before it reaches a terminal.

use std::borrow::Cow;
use std::fmt;

/// Characters that must not reach a terminal raw: C0 and C1 controls and DEL (`char::is_control`),
/// plus the bidirectional-text controls, which reorder what a terminal shows without being
/// visible themselves.
pub fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
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
    /// such as the CLI's `--name`).
    pub fn problem(&self) -> String {
        format!(
            "must not contain control characters (found U+{:04X} at character {})",
            u32::from(self.found),
            self.position
        )
    }
}

/// Refuses text with a forbidden character; the error names `field`. Use it for every
/// free-text field a person sets through the API or the CLI.
pub fn check(field: &str, value: &str) -> Result<(), ControlCharacter> {
    match value.chars().enumerate().find(|(_, c)| is_forbidden(*c)) {
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
    if !s.chars().any(is_forbidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_forbidden(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// JSON text (as serde_json writes it) with the forbidden characters JSON allows raw in
/// strings (DEL, C1, bidi controls) written as `\uXXXX`. Exact: serde_json escapes C0
/// controls inside strings, so a raw one is layout (a newline, an indent); every other
/// forbidden character is inside a string, where the escape means the same character.
pub fn escape_json(json: &str) -> Cow<'_, str> {
    let escaped = |c: char| is_forbidden(c) && !matches!(c, '\n' | '\r' | '\t');
    if !json.chars().any(escaped) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if escaped(c) {
            // Every forbidden character is in the Basic Multilingual Plane: one \u escape.
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
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
