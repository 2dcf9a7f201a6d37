//! `keygate demo` as a newcomer meets it: the snippets it prints are copied and run as they
//! are (curl with `sh`, the Python one with the official `openai` SDK from the repo's
//! `.venv`), and the built-in mock answers what the SDKs ask for (base64 embeddings).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use common::binary::*;
use common::*;
use http::Method;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The block of `lines` that starts with a line for which `first` holds and ends at the first
/// line for which `last` holds (inclusive).
fn block(lines: &[String], first: impl Fn(&str) -> bool, last: impl Fn(&str) -> bool) -> String {
    let start = lines
        .iter()
        .position(|l| first(l))
        .unwrap_or_else(|| panic!("no such block in {lines:#?}"));
    let len = lines[start..]
        .iter()
        .position(|l| last(l))
        .expect("block end");
    lines[start..=start + len].join("\n") + "\n"
}

/// The repo's `.venv` with the `openai` SDK, created as scripts/test.sh does if missing.
fn venv_with_openai() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    let has_openai = || {
        Command::new(&python)
            .args(["-c", "import openai"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_openai() {
        if !python.exists() {
            let ok = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .unwrap();
            assert!(ok.success(), "python3 -m venv .venv failed");
        }
        let ok = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "openai>=1.40",
                "pytest",
            ])
            .status()
            .unwrap();
        assert!(ok.success(), "pip install openai failed");
        assert!(has_openai());
    }
    venv.join("bin")
}

/// Runs `snippet` with `sh`, `bin` first on PATH; returns stdout, asserting success.
fn run_sh(snippet: &str, bin: Option<&PathBuf>) -> String {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(snippet);
    if let Some(bin) = bin {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", bin.display()));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "snippet failed ({}):\n{snippet}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn the_demo_snippets_run_as_printed() {
    let bin = venv_with_openai();
    let dir = tempfile::tempdir().unwrap(); // no gateway.toml here: the shipped one is used
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = read_until(&mut child, "Press Ctrl-C");

    // curl, pasted into a shell.
    let curl = block(
        &lines,
        |l| l.starts_with("curl ") && l.contains("/v1/chat/completions"),
        |l| !l.ends_with('\\'),
    );
    let out = run_sh(&curl, None);
    let v: serde_json::Value = serde_json::from_str(&out).expect("a JSON answer");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Hello"),
        "{v}"
    );

    // The Python snippet, pasted into a shell, with the venv's python3 first on PATH.
    let python = block(
        &lines,
        |l| l.starts_with("python3 - <<'EOF'"),
        |l| l == "EOF",
    );
    let out = run_sh(&python, Some(&bin));
    assert!(
        out.contains("Hello from the keygate mock. You said: Hello"),
        "{out}"
    );

    // The admin snippet lists the two demo keys.
    let admin = block(
        &lines,
        |l| l.starts_with("curl ") && l.contains("/v1/api-keys"),
        |l| !l.ends_with('\\'),
    );
    let v: serde_json::Value = serde_json::from_str(&run_sh(&admin, None)).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2, "{v}");

    // The console's address is printed, with which key signs in.
    let console = lines
        .iter()
        .find(|l| l.starts_with("Web console: http://"))
        .unwrap_or_else(|| panic!("no console line: {lines:#?}"));
    assert!(console.contains("admin key"), "{console}");
    let url = console
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let page = send(Method::GET, url, &[], "").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));

    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

/// The floats of a base64 embedding (little-endian f32, as OpenAI sends them).
fn decode_f32(b64: &str) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(bytes.len() % 4, 0);
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[tokio::test]
async fn mock_embeddings_in_base64_decode_to_the_float_form() {
    let g = start_gateway("").await;
    let key = g.key();
    let auth = bearer(&key);
    let embed = |format: Option<&str>| {
        let mut body =
            serde_json::json!({"model": "bge-small-en", "input": ["one text", "another"]});
        if let Some(f) = format {
            body["encoding_format"] = f.into();
        }
        let url = g.url("/v1/embeddings");
        let auth = auth.clone();
        async move {
            send(
                Method::POST,
                &url,
                &[("authorization", &auth)],
                body.to_string(),
            )
            .await
        }
    };
    let floats = embed(None).await;
    assert_eq!(floats.status, 200);
    let explicit = embed(Some("float")).await;
    assert_eq!(explicit.json(), floats.json());
    let b64 = embed(Some("base64")).await;
    assert_eq!(b64.status, 200);
    let (f, b) = (floats.json(), b64.json());
    assert_eq!(b["data"].as_array().unwrap().len(), 2);
    for i in 0..2 {
        let want: Vec<f32> = f["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let got = decode_f32(b["data"][i]["embedding"].as_str().expect("a base64 string"));
        assert_eq!(got.len(), 8);
        assert_eq!(got, want, "input {i}");
    }
    assert_eq!(b["usage"], f["usage"]);
    // An unknown format is refused, as OpenAI does, naming the field.
    let bad = embed(Some("hex")).await;
    assert_eq!(bad.status, 400);
    assert!(String::from_utf8_lossy(&bad.body).contains("encoding_format"));
}
