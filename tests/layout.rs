//! The layout of `src/` keeps itself honest: no import cycle between its files, long files say
//! why they are long, and the things the architecture puts in one place stay there (the limit
//! headers in `limit/answer.rs`, conversions into `GatewayError` in `error/`).
//!
//! A file's dependencies are the modules its code names: `crate::…` paths (with `use` groups
//! expanded), `super::…` paths, and paths through the child modules it declares. A parent
//! declaring a child is the tree, not a dependency; comments and unit tests are left out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

/// Every library file of `src/` (the binary's `main.rs` and unit-test files aside): its module
/// path and its code.
fn sources() -> BTreeMap<ModPath, (PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".rs") || name == "main.rs" || is_test_file(&name) {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: ModPath = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(parts, (path, text));
        }
    }
    out
}

fn is_test_file(name: &str) -> bool {
    name == "tests.rs" || name.ends_with("_tests.rs")
}

/// The code of a file without comments and without its unit tests.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            // Not inside a string literal: good enough for this code base (`"http://…"` is
            // in strings only, and a path after it is not a module path).
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Child modules a file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn children(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub(crate) mod ")
                .or_else(|| l.strip_prefix("pub mod "))
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.strip_suffix(';')?.trim().to_string())
        })
        .collect()
}

/// Every path that starts with `start` (`crate::`, `super::`, `name::`) and is not itself
/// the tail of a longer path, as its segments; `use` groups (`a::{b, c::d}`) expanded.
fn paths(code: &str, start: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find(start) {
        let at = from + i;
        from = at + start.len();
        let before = at.checked_sub(1).map(|j| bytes[j]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
            continue;
        }
        let mut segs = vec![start.trim_end_matches(':').to_string()];
        let mut rest = &code[from..];
        loop {
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let item: Vec<String> = item
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .split("::")
                        .filter(|s| !s.is_empty() && *s != "self" && *s != "*")
                        .map(str::to_string)
                        .collect();
                    let mut p = segs.clone();
                    p.extend(item);
                    out.push(p);
                }
                break;
            }
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if len == 0 {
                out.push(segs);
                break;
            }
            segs.push(rest[..len].to_string());
            rest = &rest[len..];
            match rest.strip_prefix("::") {
                Some(r) => rest = r,
                None => {
                    out.push(segs);
                    break;
                }
            }
        }
    }
    out
}

/// The longest prefix of `path` that is a file.
fn file_of(path: &[String], files: &BTreeSet<ModPath>) -> Option<ModPath> {
    (1..=path.len())
        .rev()
        .map(|k| path[..k].to_vec())
        .find(|p| files.contains(p))
}

fn edges() -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let sources = sources();
    let files: BTreeSet<ModPath> = sources.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (module, (path, text)) in &sources {
        let code = code(text);
        let is_mod_rs = matches!(
            path.file_name().and_then(|n| n.to_str()),
            Some("mod.rs" | "lib.rs")
        );
        // `super` of a `mod.rs` is its folder's parent; of `a/b.rs`, the folder `a`.
        let parent: ModPath = if is_mod_rs || module.is_empty() {
            module[..module.len().saturating_sub(1)].to_vec()
        } else {
            module[..module.len() - 1].to_vec()
        };
        let mut to = BTreeSet::new();
        let mut add = |target: Vec<String>| {
            if let Some(f) = file_of(&target, &files) {
                if &f != module && !f.is_empty() {
                    to.insert(f);
                }
            }
        };
        for p in paths(&code, "crate::") {
            add(p[1..].to_vec());
        }
        for p in paths(&code, "super::") {
            let mut t = parent.clone();
            t.extend(p[1..].iter().cloned());
            add(t);
        }
        for child in children(&code) {
            for p in paths(&code, &format!("{child}::")) {
                let mut t = module.clone();
                t.extend(p);
                add(t);
            }
        }
        edges.insert(module.clone(), to);
    }
    edges
}

/// A cycle through `start`, if there is one.
fn cycle_from(
    start: &ModPath,
    edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
) -> Option<Vec<ModPath>> {
    let mut stack = vec![(start.clone(), vec![start.clone()])];
    let mut seen = BTreeSet::new();
    while let Some((at, trail)) = stack.pop() {
        for next in edges.get(&at).into_iter().flatten() {
            if next == start {
                return Some(trail);
            }
            if seen.insert(next.clone()) {
                let mut t = trail.clone();
                t.push(next.clone());
                stack.push((next.clone(), t));
            }
        }
    }
    None
}

#[test]
fn no_file_in_src_is_part_of_an_import_cycle() {
    let edges = edges();
    assert!(edges.len() > 40, "the sources were found: {}", edges.len());
    // The parser sees what a file uses: a few known dependencies must be there.
    let dep = |from: &[&str], to: &[&str]| {
        let from: ModPath = from.iter().map(|s| s.to_string()).collect();
        let to: ModPath = to.iter().map(|s| s.to_string()).collect();
        edges[&from].contains(&to)
    };
    assert!(dep(&["pipeline"], &["auth"]), "a crate:: path");
    assert!(
        dep(&["limit", "redis"], &["limit", "redis", "leases"]),
        "a child"
    );
    assert!(dep(&["config", "validate"], &["config"]), "a super:: path");
    assert!(dep(&["pipeline"], &["admin"]), "a use group");
    let cycles: Vec<String> = edges
        .keys()
        .filter_map(|m| cycle_from(m, &edges))
        .map(|c| {
            c.iter()
                .map(|m| m.join("::"))
                .collect::<Vec<_>>()
                .join(" → ")
        })
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn a_long_file_says_why_it_is_long() {
    let long: Vec<String> = sources()
        .values()
        .filter(|(_, text)| text.lines().count() > 400)
        .filter(|(_, text)| {
            let doc: String = text
                .lines()
                .take_while(|l| l.starts_with("//!"))
                .collect::<Vec<_>>()
                .join(" ");
            !doc.contains("one cohesive thing")
        })
        .map(|(path, text)| format!("{} ({} lines)", path.display(), text.lines().count()))
        .collect();
    assert!(
        long.is_empty(),
        "over 400 lines without saying why (\"one cohesive thing\" in the module doc): {long:?}"
    );
}

#[test]
fn limit_headers_and_error_conversions_each_live_in_one_place() {
    for (path, text) in sources().values() {
        let code = code(text);
        let file = path.to_string_lossy();
        if !file.ends_with("src/limit/answer.rs") {
            for needle in ["x-ratelimit-", "retry-after", "RETRY_AFTER"] {
                assert!(
                    !code.contains(needle),
                    "{file} writes a limit header (`{needle}`): that is limit/answer.rs's"
                );
            }
        }
        if !file.contains("src/error/") {
            assert!(
                !code.contains("for GatewayError"),
                "{file} converts into GatewayError: that is error/'s"
            );
        }
    }
}
