//! The docs keep themselves honest: every test they cite exists, every relative link in them
//! points to a file of the repository, and none leans on a file outside it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every Markdown file under docs/.
fn documents() -> Vec<(PathBuf, String)> {
    let mut out = vec![root().join("README.md")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            out.push(p);
        }
    }
    out.into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// `tests/<file>.rs::<name>` references in `text`.
fn cited_tests(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("tests/") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_/.:".contains(c)))
            .unwrap_or(tail.len());
        let cite = tail[..end].trim_end_matches(['.', ':']);
        if let Some((file, name)) = cite.split_once("::") {
            if file.ends_with(".rs") && !name.is_empty() {
                out.push((file.to_string(), name.to_string()));
            }
        }
        rest = &tail[end.max(1)..];
    }
    out
}

#[test]
fn every_cited_test_exists() {
    let mut missing = Vec::new();
    for (doc, text) in documents() {
        for (file, name) in cited_tests(&text) {
            let code = std::fs::read_to_string(root().join(&file)).unwrap_or_default();
            if !code.contains(&format!("fn {name}(")) {
                missing.push(format!("{}: {file}::{name}", doc.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "cited tests that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn relative_links_point_into_the_repository() {
    let mut broken = Vec::new();
    for (doc, text) in documents() {
        let dir = doc.parent().unwrap_or(Path::new("."));
        for part in text.split("](").skip(1) {
            let Some(end) = part.find(')') else { continue };
            let target = part[..end].split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            if !dir.join(target).exists() {
                broken.push(format!("{}: {target}", doc.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to missing files:\n{}",
        broken.join("\n")
    );
}

#[test]
fn no_document_leans_on_a_file_outside_the_repository() {
    for (doc, text) in documents() {
        for outside in ["../shared", "SPEC.md", "PERFORMANCE.md"] {
            assert!(
                !text.contains(outside),
                "{} mentions {outside}",
                doc.display()
            );
        }
    }
}
