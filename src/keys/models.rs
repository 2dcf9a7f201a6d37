//! Model patterns: the globs of a key's model allowlist (`models` in the key file), in the
//! syntax upstreams' `models` use too (`*`, `?`, `[a-z]`, `{a,b}`; `*` also matches `/`).

/// Compiles one model glob (`*`, `?`, `[a-z]`, `{a,b}`); `*` also matches `/`.
pub fn compile_glob(pattern: &str) -> Result<globset::Glob, String> {
    if pattern.trim().is_empty() {
        return Err("a model pattern is empty".into());
    }
    globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .map_err(|e| format!("`{pattern}` is not a valid glob: {e}"))
}

/// Builds a key's model allowlist; an empty list allows every model.
pub fn compile_allowlist(patterns: &[String]) -> Result<Option<globset::GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        b.add(compile_glob(p)?);
    }
    b.build().map(Some).map_err(|e| e.to_string())
}

/// Splits a comma-separated list of globs (the CLI's `--models`) at the commas that separate
/// globs: not one inside braces (`{llama,mistral}-*` is one glob), inside a class (`[,]`), or
/// escaped with a backslash. Each part is kept as typed; an empty list is one empty part.
/// A brace that is not closed, or closed without being opened, is refused.
pub fn split_list(list: &str) -> Result<Vec<String>, String> {
    let (mut parts, mut start, mut depth) = (Vec::new(), 0, 0usize);
    let mut chars = list.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            // A class runs to its `]`; a `]` first in it (after a `!` or `^`) is a member.
            '[' => {
                chars.next_if(|&(_, d)| d == '!' || d == '^');
                chars.next_if(|&(_, d)| d == ']');
                for (_, d) in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                }
            }
            '{' => depth += 1,
            '}' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("has a closing brace `}` with no `{` before it")?;
            }
            ',' if depth == 0 => {
                parts.push(list[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err("has an opening brace `{` that is not closed".into());
    }
    parts.push(list[start..].to_string());
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlists() {
        let set = compile_allowlist(&["llama-*".into()]).unwrap().unwrap();
        assert!(set.is_match("llama-3/8b") && !set.is_match("gpt-4"));
        assert!(
            compile_allowlist(&[]).unwrap().is_none(),
            "empty: every model"
        );
        assert!(compile_glob(" ").is_err());
    }

    #[test]
    fn lists_split_at_the_commas_between_globs() {
        let split = |s: &str| split_list(s).unwrap();
        assert_eq!(split("llama-*,qwen*"), ["llama-*", "qwen*"]);
        assert_eq!(split("{llama,mistral}-*"), ["{llama,mistral}-*"]);
        assert_eq!(
            split("{llama,mistral}-*,gpt-{4,4o},x"),
            ["{llama,mistral}-*", "gpt-{4,4o}", "x"]
        );
        assert_eq!(split("a[,]b,c"), ["a[,]b", "c"]);
        assert_eq!(
            split("a[],{]b,c"),
            ["a[],{]b", "c"],
            "`]` first is a member"
        );
        assert_eq!(split("a[!]}]b,c"), ["a[!]}]b", "c"]);
        assert_eq!(split(r"a\,b,c"), [r"a\,b", "c"]);
        assert_eq!(split(r"a-\{,b"), [r"a-\{", "b"]);
        assert_eq!(split(""), [""]);
        assert_eq!(split("a,,b"), ["a", "", "b"]);
        assert_eq!(split("{a,{b,c}}"), ["{a,{b,c}}"]);
        for bad in ["{llama,mistral-*", "llama}-*,x", "{a}}", "{"] {
            let e = split_list(bad).unwrap_err();
            assert!(e.contains("brace"), "{bad}: {e}");
        }
        // Every part of a brace glob's list compiles and matches as the key file's would.
        let set = compile_allowlist(&split("{llama,mistral}-*,qwen*"))
            .unwrap()
            .unwrap();
        assert!(set.is_match("llama-3") && set.is_match("mistral-7b") && !set.is_match("gpt-4"));
    }
}
