//! Scopes: what a key may call.
//!
//! A key's scopes are a bit set so the per-request check is one AND. Names from other
//! platforms are accepted as aliases on input only; what is stored and shown is always the
//! canonical name, so a key file reads the same whoever wrote it.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Scope {
    Models = 0,
    Chat,
    Completions,
    Embeddings,
    Responses,
    Audio,
    Images,
    Moderations,
    Rerank,
    Tokenize,
    Usage,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 12] = [
        Scope::Models,
        Scope::Chat,
        Scope::Completions,
        Scope::Embeddings,
        Scope::Responses,
        Scope::Audio,
        Scope::Images,
        Scope::Moderations,
        Scope::Rerank,
        Scope::Tokenize,
        Scope::Usage,
        Scope::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Models => "models",
            Scope::Chat => "chat",
            Scope::Completions => "completions",
            Scope::Embeddings => "embeddings",
            Scope::Responses => "responses",
            Scope::Audio => "audio",
            Scope::Images => "images",
            Scope::Moderations => "moderations",
            Scope::Rerank => "rerank",
            Scope::Tokenize => "tokenize",
            Scope::Usage => "usage",
            Scope::Admin => "admin",
        }
    }

    /// One line for help texts and the console.
    pub fn description(self) -> &'static str {
        match self {
            Scope::Models => "list and read models",
            Scope::Chat => "chat completions",
            Scope::Completions => "text completions",
            Scope::Embeddings => "embeddings",
            Scope::Responses => "the Responses API",
            Scope::Audio => "speech and transcription",
            Scope::Images => "image generation",
            Scope::Moderations => "moderations",
            Scope::Rerank => "rerank and score",
            Scope::Tokenize => "tokenize and detokenize",
            Scope::Usage => "read usage analytics",
            Scope::Admin => "manage API keys",
        }
    }

    fn bit(self) -> u16 {
        1 << self as u8
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Scopes(u16);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope `{0}`; valid scopes: {valid}", valid = valid_names())]
pub struct UnknownScope(pub String);

fn valid_names() -> String {
    let mut names: Vec<&str> = Scope::ALL.iter().map(|s| s.name()).collect();
    names.push("inference");
    names.extend(ALIASES.iter().map(|(a, _)| *a));
    names.join(", ")
}

const ALIASES: [(&str, &str); 6] = [
    ("inference:read", "models"),
    ("inference:write", "inference"),
    ("chat:read", "chat"),
    ("embeddings:read", "embeddings"),
    ("models:list", "models"),
    ("analytics:read", "usage"),
];

impl Scopes {
    pub const EMPTY: Scopes = Scopes(0);

    /// Every scope except `usage` and `admin`: what a key created without scopes gets.
    pub fn inference() -> Scopes {
        Scope::ALL
            .iter()
            .filter(|s| !matches!(s, Scope::Usage | Scope::Admin))
            .fold(Scopes::EMPTY, |acc, s| acc.with(*s))
    }

    pub fn with(self, s: Scope) -> Scopes {
        Scopes(self.0 | s.bit())
    }

    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    pub fn names(self) -> Vec<String> {
        self.iter().map(|s| s.name().to_string()).collect()
    }

    /// Parses one scope name, `inference`, or an alias.
    pub fn parse_one(name: &str) -> Result<Scopes, UnknownScope> {
        let name = name.trim();
        let canonical = ALIASES
            .iter()
            .find(|(alias, _)| *alias == name)
            .map_or(name, |(_, c)| *c);
        if canonical == "inference" {
            return Ok(Scopes::inference());
        }
        Scope::ALL
            .iter()
            .find(|s| s.name() == canonical)
            .map(|s| Scopes::EMPTY.with(*s))
            .ok_or_else(|| UnknownScope(name.to_string()))
    }

    /// Parses a list of names; an empty list means `inference`.
    pub fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<Scopes, UnknownScope> {
        if names.iter().all(|n| n.as_ref().trim().is_empty()) {
            return Ok(Scopes::inference());
        }
        names
            .iter()
            .filter(|n| !n.as_ref().trim().is_empty())
            .try_fold(Scopes::EMPTY, |acc, n| {
                Ok(Scopes(acc.0 | Scopes::parse_one(n.as_ref())?.0))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_excludes_usage_and_admin() {
        let inf = Scopes::inference();
        assert!(inf.contains(Scope::Chat) && inf.contains(Scope::Tokenize));
        assert!(!inf.contains(Scope::Admin) && !inf.contains(Scope::Usage));
        assert_eq!(Scopes::parse_list::<&str>(&[]).unwrap(), inf);
    }

    #[test]
    fn aliases_map_to_canonical() {
        let s = Scopes::parse_list(&["inference:read", "analytics:read"]).unwrap();
        assert_eq!(s.names(), ["models", "usage"]);
        assert_eq!(
            Scopes::parse_list(&["inference:write"]).unwrap(),
            Scopes::inference()
        );
    }

    #[test]
    fn unknown_scope_lists_valid_ones() {
        let err = Scopes::parse_list(&["chat", "root"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`root`") && err.contains("embeddings") && err.contains("admin"));
    }
}
