//! The command line as a user runs it: the real binary in a fresh directory of its own, with
//! a `gateway.toml` naming `keys.json` beside it.

use super::binary::BIN;
use keygate::keys::file::KeyFile;
use keygate::keys::record::KeyRecord;
use serde_json::Value;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// One test's world: a temporary directory with `gateway.toml` and the key file.
pub struct CliEnv {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub keys: PathBuf,
}

impl CliEnv {
    /// `[keys] file = "keys.json"` and nothing else.
    pub fn new() -> CliEnv {
        CliEnv::with_config("[keys]\nfile = \"keys.json\"\n")
    }

    /// `[keys] file = "keys.json"` followed by `extra`.
    pub fn with_extra(extra: &str) -> CliEnv {
        CliEnv::with_config(&format!("[keys]\nfile = \"keys.json\"\n{extra}"))
    }

    /// `toml` as the whole `gateway.toml`.
    pub fn with_config(toml: &str) -> CliEnv {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        fs::write(&config, toml).unwrap();
        let keys = dir.path().join("keys.json");
        CliEnv { dir, config, keys }
    }

    /// `keygate ARGS --config gateway.toml`, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Runs `keygate ARGS --config gateway.toml`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`keygate {}` failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure said on stderr; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            !out.status.success(),
            "`keygate {}` should have failed:\nstdout: {}\nstderr: {stderr}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
        );
        assert!(
            !stderr.trim().is_empty(),
            "`keygate {}` failed without saying why on stderr",
            args.join(" ")
        );
        stderr
    }

    /// Runs and expects exit status `code`; returns stderr.
    pub fn fails_with(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "`keygate {}`:\nstdout: {}\nstderr: {stderr}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    /// Runs and expects JSON on stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "`keygate {}` printed non-JSON ({e}):\n{out}",
                args.join(" ")
            )
        })
    }

    /// `keys create --name NAME --json` with extra arguments.
    pub fn create(&self, name: &str, extra: &[&str]) -> Value {
        let mut args = vec!["keys", "create", "--name", name, "--json"];
        args.extend_from_slice(extra);
        self.json(&args)
    }

    /// `keys update ID --json` with extra arguments.
    pub fn update(&self, id: &str, extra: &[&str]) -> Value {
        let mut args = vec!["keys", "update", id, "--json"];
        args.extend_from_slice(extra);
        self.json(&args)
    }

    /// `keys show ID --json`.
    pub fn show(&self, id: &str) -> Value {
        self.json(&["keys", "show", id, "--json"])
    }

    pub fn key_text(&self) -> String {
        fs::read_to_string(&self.keys).unwrap()
    }

    pub fn key_file(&self) -> KeyFile {
        KeyFile::parse(&self.key_text(), &self.keys).unwrap()
    }

    /// Key `id` as the key file holds it.
    pub fn record(&self, id: &str) -> KeyRecord {
        self.key_file().get(id).unwrap().clone()
    }
}
