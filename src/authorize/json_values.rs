//! Readers of the values the gateway takes from a JSON body (its `model`, counts, prompts),
//! each reading what upstreams accept without failing the parse on what they would refuse,
//! so that the refusal, or the upstream, can name the field.

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;

/// A body's `model` as written: a string, `null` (absent), or any other value, which is read
/// (and skipped) here rather than failing the parse, so that the refusal can name `model`.
pub(super) enum ModelValue<'a> {
    Named(Cow<'a, str>),
    Null,
    NotString,
}

impl<'de> Deserialize<'de> for ModelValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ModelValue<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<ModelValue<'de>, E> {
                Ok(ModelValue::Named(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<ModelValue<'de>, E> {
                Ok(ModelValue::Named(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<ModelValue<'de>, E> {
                Ok(ModelValue::Named(Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<ModelValue<'de>, E> {
                Ok(ModelValue::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<ModelValue<'de>, E> {
                Ok(ModelValue::NotString)
            }
            fn visit_i64<E>(self, _: i64) -> Result<ModelValue<'de>, E> {
                Ok(ModelValue::NotString)
            }
            fn visit_u64<E>(self, _: u64) -> Result<ModelValue<'de>, E> {
                Ok(ModelValue::NotString)
            }
            fn visit_f64<E>(self, _: f64) -> Result<ModelValue<'de>, E> {
                Ok(ModelValue::NotString)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<ModelValue<'de>, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ModelValue::NotString)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<ModelValue<'de>, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ModelValue::NotString)
            }
        }
        d.deserialize_any(V)
    }
}

/// A count the gateway only uses for estimates, read generously (a whole number, a number
/// rounded up, digits in a string, as lenient upstreams read it); anything else is left for
/// the upstream to judge.
pub(super) struct Count(pub(super) Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let n = match &v {
            serde_json::Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .map(|f| f.ceil().min(u64::MAX as f64) as u64)
            }),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        Ok(Count(n))
    }
}

/// How many prompts a body's `prompt` holds, each generated on its own (vLLM, OpenAI's
/// completions): the entries of an array of prompts (strings, or arrays of token ids); one
/// for a string, an array of token ids, or anything else (the Responses API's `prompt` is an
/// object naming a template).
pub(super) struct Prompts(pub(super) u64);

impl<'de> Deserialize<'de> for Prompts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Prompts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Prompts, A::Error> {
                let (mut entries, mut token_ids) = (0u64, 0u64);
                while let Some(e) = s.next_element::<Entry>()? {
                    entries += 1;
                    token_ids += u64::from(e.0);
                }
                // All numbers: one prompt as token ids. Else, on the safe side, every entry.
                Ok(Prompts(if token_ids == entries { 1 } else { entries }))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Prompts, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Prompts(1))
            }
            fn visit_str<E>(self, _: &str) -> Result<Prompts, E> {
                Ok(Prompts(1))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Prompts, E> {
                Ok(Prompts(1))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Prompts, E> {
                Ok(Prompts(1))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Prompts, E> {
                Ok(Prompts(1))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Prompts, E> {
                Ok(Prompts(1))
            }
            fn visit_unit<E>(self) -> Result<Prompts, E> {
                Ok(Prompts(1))
            }
        }
        d.deserialize_any(V)
    }
}

/// An entry of an array `prompt`: whether it is a number (a token id).
struct Entry(bool);

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_i64<E>(self, _: i64) -> Result<Entry, E> {
                Ok(Entry(true))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Entry, E> {
                Ok(Entry(true))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Entry, E> {
                Ok(Entry(true))
            }
            fn visit_str<E>(self, _: &str) -> Result<Entry, E> {
                Ok(Entry(false))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Entry, E> {
                Ok(Entry(false))
            }
            fn visit_unit<E>(self) -> Result<Entry, E> {
                Ok(Entry(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Entry, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Entry(false))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entry, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Entry(false))
            }
        }
        d.deserialize_any(V)
    }
}
