//! The model an upstream's answer names: usage is counted under it when the gateway did not
//! read the request's own (its body streamed upstream untouched). OpenAI answers name their
//! model near the start, and every chunk of a stream repeats it, so one chunk is searched at
//! a time until one names it.

use memchr::memmem;
use std::sync::LazyLock;

static MODEL: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"model\""));

/// The value of the first complete `"model": "…"` in `chunk`, if it is a plain string (no
/// escape) of at most `MAX_MODEL_LEN` bytes. Inside a JSON string a quote is escaped, so the
/// bytes `"model"` can only be a field name.
pub fn find(chunk: &[u8]) -> Option<Box<str>> {
    MODEL.find_iter(chunk).find_map(|pos| {
        let rest = trim_ws(&chunk[pos + MODEL.needle().len()..]);
        let rest = trim_ws(rest.strip_prefix(b":")?);
        let rest = rest.strip_prefix(b"\"")?;
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        let value = &rest[..end];
        if rest[end] != b'"' || value.len() > crate::keys::usage::MAX_MODEL_LEN {
            return None;
        }
        std::str::from_utf8(value).ok().map(Box::from)
    })
}

fn trim_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_names_its_model() {
        let chunk = br#"data: {"id":"c1","choices":[{"delta":{"content":"\"model\": \"fake\""}}],"model" : "llama-3.1-8b-instruct"}"#;
        assert_eq!(find(chunk).as_deref(), Some("llama-3.1-8b-instruct"));
        assert_eq!(
            find(br#"{"model":"a\"b","data":[]}"#),
            None,
            "an escaped name is not taken"
        );
        assert_eq!(
            find(br#"{"model":"cut-"#),
            None,
            "a name cut by the chunk's end is not taken"
        );
        assert_eq!(find(br#"{"object":"list","data":[]}"#), None);
    }
}
