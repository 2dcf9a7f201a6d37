//! The model an upstream's answer names: usage is counted under it when the gateway did not
//! read the request's own (its body streamed upstream untouched). OpenAI answers name their
//! model near the start, and every chunk of a stream repeats it, so one chunk is searched at
//! a time until one names it.

use bytes::Bytes;
use memchr::memmem;
use std::sync::LazyLock;

static MODEL: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"model\""));

/// The value of the first complete `"model": "…"` in `chunk`, if it is a plain UTF-8 string
/// (no escape) of at most `MAX_MODEL_LEN` bytes. Inside a JSON string a quote is escaped, so
/// the bytes `"model"` can only be a field name. A `String`: checked as UTF-8 once here, not
/// at each of the two to five places the settlement reads it.
pub fn find(chunk: &Bytes) -> Option<String> {
    MODEL.find_iter(chunk).find_map(|pos| {
        let rest = trim_ws(&chunk[pos + MODEL.needle().len()..]);
        let rest = trim_ws(rest.strip_prefix(b":")?);
        let rest = rest.strip_prefix(b"\"")?;
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        let value = &rest[..end];
        if rest[end] != b'"' || value.len() > crate::keys::usage::MAX_MODEL_LEN {
            return None;
        }
        String::from_utf8(value.to_vec()).ok()
    })
}

fn trim_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_in(chunk: &'static [u8]) -> Option<String> {
        find(&Bytes::from_static(chunk))
    }

    #[test]
    fn the_answer_names_its_model() {
        let chunk = br#"data: {"id":"c1","choices":[{"delta":{"content":"\"model\": \"fake\""}}],"model" : "llama-3.1-8b-instruct"}"#;
        assert_eq!(model_in(chunk).as_deref(), Some("llama-3.1-8b-instruct"));
        let escaped = br#"{"model":"a\"b","data":[]}"#;
        assert_eq!(model_in(escaped), None, "an escaped name is not taken");
        let cut = br#"{"model":"cut-"#;
        assert_eq!(
            model_in(cut),
            None,
            "a name cut by the chunk's end is not taken"
        );
        assert_eq!(model_in(br#"{"object":"list","data":[]}"#), None);
    }
}
