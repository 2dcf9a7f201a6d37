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
}
