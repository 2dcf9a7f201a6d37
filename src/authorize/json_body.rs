//! The one reader of a JSON request body: its `model` and the facts the token estimate and
//! the stream-usage rewrite use, and that rewrite.
//!
//! A `model` that is not a string (`5`, `{}`) is refused by name, whatever the route: no
//! upstream reads it as a model, and an allowlist cannot check it.
//!
//! Upstreams do not all read JSON alike. Go's `encoding/json` (Ollama) matches a field's name
//! ignoring case and Unicode folds (`Model`, `ſtream`), .NET's case-insensitive option and
//! Java's `equalsIgnoreCase` fold `ı` and `İ` too, and parsers keep the first or the last of two fields with one name. A body the
//! gateway and its upstream could read differently is refused: every field the gateway reads
//! must appear once and be spelled exactly, and no other field may fold to its name.
//!
//! The rewrite keeps every other member as the client wrote it (order, numbers past `f64`,
//! nesting), byte for byte; a body it cannot rewrite is refused, not forwarded unrewritten
//! (the usage the gateway charges would then never come).

use crate::authorize::body::BodyError;
use crate::authorize::json_values::{Count, ModelValue, Prompts};
use crate::keys::tokens::MAX_COUNT;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The fields of an OpenAI request body the gateway reads, in `BodyFacts` order. `n`,
/// `best_of` and `prompt` (an array of prompts) are here for the reason the budgets are: a
/// body the gateway read as one sequence and an upstream (folding `N`, or keeping the last of
/// two) as a hundred would dodge the hold.
const READ: [&str; 9] = [
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
    "best_of",
    "prompt",
];

/// The fields of an OpenAI request body the gateway looks at. Everything else is skipped
/// without being copied.
#[derive(Debug, Default)]
pub struct BodyFacts<'a> {
    pub model: Option<Cow<'a, str>>,
    pub stream: Option<bool>,
    /// As written: read by `asks_for_usage`, as the rewrite reads it.
    pub stream_options: Option<&'a RawValue>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    /// The choices to return (`n`) and the sequences to generate for them (`best_of`, in
    /// `/v1/completions`): each is up to the completion budget long.
    pub n: Option<u64>,
    pub best_of: Option<u64>,
    /// The prompts of a completions body, each generated on its own (`Prompts`).
    pub prompts: Option<u64>,
    /// The first reason the body is ambiguous (a field twice, or spelled like a read one).
    problem: Option<BodyError>,
}

/// What the request path keeps of a body's facts, owned.
#[derive(Debug, Clone)]
pub struct Summary {
    pub model: String,
    pub stream: bool,
    /// The client asked for `stream_options.include_usage`.
    pub wants_usage: bool,
    /// The largest of `max_completion_tokens`, `max_tokens` and `max_output_tokens` given
    /// and not 0 (upstreams differ on which wins, and vLLM takes a 0 as "not given").
    pub completion_budget: Option<u64>,
    /// The sequences the upstream generates, each up to the budget: the largest of `n` and
    /// `best_of`, at least 1 (vLLM and OpenAI generate `best_of`, and return `n`), for each
    /// prompt of a completions body's array of prompts.
    pub sequences: u64,
}

impl Summary {
    /// The completion tokens the answer may take: the budget (else `default`) for each
    /// sequence, at most `MAX_COUNT` (both are the client's numbers: a wrapped product would
    /// hold next to nothing).
    pub fn completion_tokens(&self, default: u64) -> u64 {
        self.completion_budget
            .unwrap_or(default)
            .min(MAX_COUNT)
            .saturating_mul(self.sequences)
            .min(MAX_COUNT)
    }
}

impl BodyFacts<'_> {
    pub fn summary(&self) -> Summary {
        Summary {
            model: self.model.as_deref().unwrap_or_default().to_string(),
            stream: self.stream == Some(true),
            wants_usage: self.stream_options.is_some_and(asks_for_usage),
            completion_budget: [
                self.max_completion_tokens,
                self.max_tokens,
                self.max_output_tokens,
            ]
            .into_iter()
            .flatten()
            .filter(|n| *n > 0)
            .max(),
            sequences: [self.n, self.best_of]
                .into_iter()
                .flatten()
                .fold(1, u64::max)
                .saturating_mul(self.prompts.unwrap_or(1).max(1)),
        }
    }
}

/// Reads the facts of a JSON body, which must be an object naming a model.
pub fn body_facts(body: &[u8]) -> Result<BodyFacts<'_>, BodyError> {
    let facts: BodyFacts =
        serde_json::from_slice(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    if let Some(problem) = facts.problem {
        return Err(problem);
    }
    if facts.model.as_deref().is_none_or(str::is_empty) {
        // (A `model` that is not a string is a `problem`, refused above.)
        return Err(BodyError::NoModel);
    }
    Ok(facts)
}

/// Whether `name` is what a case-insensitive JSON decoder takes for `field`: ASCII case,
/// and the non-ASCII letters that Go (`ſ`, `K`), .NET (`ı`) or Java's `equalsIgnoreCase`
/// (all of those and `İ`) fold onto ASCII ones.
fn folds_to(name: &str, field: &str) -> bool {
    name.chars()
        .map(|c| match c {
            'ſ' => 's',
            '\u{212A}' => 'k',
            'ı' | 'İ' => 'i',
            c => c.to_ascii_lowercase(),
        })
        .eq(field.chars())
}

/// A member's name, borrowed from the body when it has no escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for BodyFacts<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BodyFacts<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BodyFacts<'de>, A::Error> {
                let mut f = BodyFacts::default();
                let mut seen = [false; READ.len()];
                while let Some(Name(name)) = map.next_key()? {
                    let Some(i) = READ.iter().position(|r| *r == name) else {
                        if let Some(field) = READ.iter().find(|r| folds_to(&name, r)) {
                            f.problem.get_or_insert(BodyError::SpelledLike {
                                field,
                                spelled: name.into_owned(),
                            });
                        }
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    };
                    if std::mem::replace(&mut seen[i], true) {
                        f.problem.get_or_insert(BodyError::Twice(READ[i]));
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    match i {
                        0 => match map.next_value()? {
                            ModelValue::Named(m) => f.model = Some(m),
                            ModelValue::Null => {}
                            ModelValue::NotString => {
                                f.problem.get_or_insert(BodyError::ModelNotString);
                            }
                        },
                        1 => f.stream = map.next_value()?,
                        2 => f.stream_options = map.next_value::<Option<&'de RawValue>>()?,
                        3 => f.max_tokens = map.next_value::<Count>()?.0,
                        4 => f.max_completion_tokens = map.next_value::<Count>()?.0,
                        5 => f.max_output_tokens = map.next_value::<Count>()?.0,
                        6 => f.n = map.next_value::<Count>()?.0,
                        7 => f.best_of = map.next_value::<Count>()?.0,
                        _ => f.prompts = Some(map.next_value::<Prompts>()?.0),
                    }
                }
                Ok(f)
            }
        }
        d.deserialize_map(V)
    }
}

/// An object's members in the order written, each value as its exact text.
struct Members<'a>(Vec<(Name<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

fn member(out: &mut Vec<u8>, first: &mut bool, name: &str, value: &[u8]) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    // A string always serializes.
    let _ = serde_json::to_writer(&mut *out, name);
    out.push(b':');
    out.extend_from_slice(value);
}

const INCLUDE_USAGE: &str = "include_usage";

/// Whether `stream_options` asks for usage unmistakably: an object with one `include_usage`,
/// spelled exactly, `true`. Anything else (`[true]`, a `1`, a spelling variant beside it) is
/// not asking, and the rewrite puts a plain `{"include_usage":true}` in its place.
fn asks_for_usage(opts: &RawValue) -> bool {
    let Ok(Members(members)) = serde_json::from_str::<Members>(opts.get()) else {
        return false;
    };
    let mut named = members
        .iter()
        .filter(|(Name(n), _)| folds_to(n, INCLUDE_USAGE));
    matches!(
        (named.next(), named.next()),
        (Some((Name(n), v)), None) if n == INCLUDE_USAGE && v.get() == "true"
    )
}

/// The same JSON body with `stream_options.include_usage = true`: every other member as it
/// was written; a `stream_options` that is not an object is replaced.
pub fn with_stream_usage(body: &[u8]) -> Result<bytes::Bytes, BodyError> {
    let top: Members =
        serde_json::from_slice(body).map_err(|e| BodyError::Unrewritable(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len() + 48);
    out.push(b'{');
    let mut first = true;
    let mut had_options = false;
    for (Name(name), raw) in &top.0 {
        if name != "stream_options" {
            member(&mut out, &mut first, name, raw.get().as_bytes());
            continue;
        }
        had_options = true;
        let mut opts = vec![b'{'];
        let mut first_opt = true;
        if let Ok(Members(inner)) = serde_json::from_str::<Members>(raw.get()) {
            for (Name(n), v) in &inner {
                if !folds_to(n, INCLUDE_USAGE) {
                    member(&mut opts, &mut first_opt, n, v.get().as_bytes());
                }
            }
        }
        member(&mut opts, &mut first_opt, INCLUDE_USAGE, b"true");
        opts.push(b'}');
        member(&mut out, &mut first, name, &opts);
    }
    if !had_options {
        member(
            &mut out,
            &mut first,
            "stream_options",
            br#"{"include_usage":true}"#,
        );
    }
    out.push(b'}');
    Ok(bytes::Bytes::from(out))
}

#[cfg(test)]
#[path = "json_body_tests.rs"]
mod tests;
