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

/// The `gateway.toml` blocks of a Kubernetes manifest (a ConfigMap's `gateway.toml: |`).
fn embedded_configs(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(at) = line.find("gateway.toml: |") else {
            continue;
        };
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            let indent = next.len() - next.trim_start().len();
            if !next.trim().is_empty() && indent <= at {
                break;
            }
            block.push_str(next.get(at + 2..).unwrap_or(""));
            block.push('\n');
            lines.next();
        }
        out.push(block);
    }
    out
}

/// Found by an outside probe: the shared-store example left the grace period at Kubernetes'
/// 30 s, the default drain timeout, so SIGKILL came as the drain ended (before the usage
/// flush and the snapshot save), with no shutdown delay or preStop; and it linked a file
/// that does not exist. Every example's configuration is one the gateway accepts, and its
/// pods wait for preStop, shutdown_delay and drain_timeout, with time to spare.
#[test]
fn kubernetes_examples_are_valid_and_give_the_drain_its_time() {
    let dir = root().join("deploy/kubernetes");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let yaml = std::fs::read_to_string(&path).unwrap();
        let name = path.display().to_string();
        assert!(
            !yaml.contains("docs/notes/"),
            "{name} links a file that does not exist"
        );
        let configs = embedded_configs(&yaml);
        assert_eq!(configs.len(), 1, "{name}: one gateway.toml");
        let cfg = keygate::config::Config::parse(&configs[0], None)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", configs[0]));
        let grace: u64 = yaml
            .lines()
            .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
            .unwrap_or_else(|| panic!("{name}: no terminationGracePeriodSeconds (30 s)"))
            .trim()
            .parse()
            .unwrap();
        let pre_stop: u64 = yaml
            .split("\"sleep ")
            .nth(1)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no preStop sleep"));
        let needed =
            pre_stop + cfg.server.shutdown_delay.as_secs() + cfg.server.drain_timeout.as_secs();
        assert!(
            cfg.server.shutdown_delay.as_secs() > 0,
            "{name}: no shutdown_delay: new connections are refused while endpoints update"
        );
        assert!(
            grace >= needed + 5,
            "{name}: terminationGracePeriodSeconds {grace} leaves no time after preStop, \
             shutdown_delay and drain_timeout ({needed} s)"
        );
        // Found by a probe: a StatefulSet governed by an ordinary Service, so its pods had no
        // stable DNS names.
        for svc in yaml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("serviceName:"))
        {
            let svc = svc.trim();
            let headless = yaml.split("\n---").any(|doc| {
                doc.contains("kind: Service")
                    && doc.contains(&format!("name: {svc}\n"))
                    && doc.contains("clusterIP: None")
            });
            assert!(
                headless,
                "{name}: serviceName {svc} is not a headless Service here"
            );
        }
        seen += 1;
    }
    assert!(seen >= 2);
}
