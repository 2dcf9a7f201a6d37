//! The real binary as users run it: `keygate demo` and `keygate serve` with signals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::binary::*;
use common::*;
use http::Method;
use std::process::{Command, Stdio};

#[tokio::test]
async fn demo_serves_a_working_key() {
    let dir = tempfile::tempdir().unwrap(); // no gateway.toml here: the shipped one is used
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = read_until(&mut child, "Press Ctrl-C");
    let addr = addr_of(
        lines
            .iter()
            .find(|l| l.contains("gateway on http://"))
            .unwrap(),
    );
    let key = lines
        .iter()
        .find(|l| l.starts_with("Demo key"))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let admin = lines
        .iter()
        .find(|l| l.starts_with("Admin key"))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let a = send(
        Method::POST,
        &format!("http://{addr}/v1/chat/completions"),
        &[("authorization", &bearer(&key))],
        CHAT,
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(a.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("hello there"));
    let a = send(
        Method::GET,
        &format!("http://{addr}/v1/api-keys"),
        &[("authorization", &bearer(&admin))],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["data"].as_array().unwrap().len(), 2);
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn serve_reports_a_bad_config_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("bogus"), "{err}");
}

#[tokio::test]
async fn serve_keeps_usage_across_a_restart_and_drains_on_sigterm() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\n[[upstream]]\nurl = \"http://{}\"\n", mock.addr),
    )
    .unwrap();
    let (key, id) = cli_create_key(&cfg, "u");

    for round in 1..=2u64 {
        let mut served = serve(&cfg);
        let addr = served.addr;
        let a = send(
            Method::POST,
            &format!("http://{addr}/v1/chat/completions"),
            &[("authorization", &bearer(&key))],
            CHAT,
        )
        .await;
        assert_eq!(a.status, 200);
        sigterm(&served.child);
        assert!(served.child.wait().unwrap().success());
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .args(["keys", "show", &id, "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["usage"]["requests"], round, "{v}");
        assert_eq!(v["usage"]["prompt_tokens"], 2 * round);
        assert!(v["last_used_at"].is_string());
    }
}

/// With one core (here `TOKIO_WORKER_THREADS=1`) the gateway runs tokio's single-threaded
/// runtime, and everything that runs beside the requests still works there: the file
/// watcher's reload (its own thread), the admin API's blocking work, and the drain.
#[tokio::test]
async fn one_core_serves_everything_on_one_runtime_thread() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\npoll_interval = \"100ms\"\n[[upstream]]\nurl = \"http://{}\"\n", mock.addr),
    )
    .unwrap();
    let (key, id) = cli_create_key(&cfg, "u");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args([
            "keys", "create", "--name", "admin", "--scopes", "admin", "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let admin = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut served = serve_with(&cfg, |c| {
        c.env("TOKIO_WORKER_THREADS", "1");
    });
    let said = eventually(std::time::Duration::from_secs(5), || {
        let n = served.count("single-threaded runtime");
        async move { n == 1 }
    })
    .await;
    assert!(said, "{:?}", served.logs.lock().unwrap());
    let chat = chat_with(&served, &key).await;
    assert_eq!(chat.status, 200, "{:?}", chat.body);
    let created = send(
        Method::POST,
        &served.url("/v1/api-keys"),
        &[("authorization", &bearer(&admin))],
        r#"{"name":"made-by-the-api"}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["keys", "revoke", &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let refused = eventually(std::time::Duration::from_secs(10), || async {
        chat_status(&served.url("/v1/chat/completions"), &key).await == 401
    })
    .await;
    assert!(refused, "the revoke in the file was never applied");
    sigterm(&served.child);
    assert!(served.child.wait().unwrap().success());
}

async fn chat_with(served: &Served, key: &str) -> Answer {
    send(
        Method::POST,
        &served.url("/v1/chat/completions"),
        &[("authorization", &bearer(key))],
        CHAT,
    )
    .await
}

/// A `TOKIO_WORKER_THREADS` that is not a number of threads is refused with a message, not a
/// panic (tokio's own reading of it panics).
#[tokio::test]
async fn a_bad_worker_count_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    use std::os::unix::ffi::OsStrExt;
    let not_utf8 = std::ffi::OsStr::from_bytes(b"\xff");
    for bad in [
        std::ffi::OsStr::new("0"),
        std::ffi::OsStr::new("many"),
        not_utf8,
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("TOKIO_WORKER_THREADS", bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {err}");
        assert!(
            err.contains("TOKIO_WORKER_THREADS") && !err.contains("panicked"),
            "{bad:?}: {err}"
        );
    }
}

/// The allocator's options from `.cargo/config.toml` are compiled into the binary: jemalloc's
/// own statistics, printed at exit, list them.
#[cfg(not(target_env = "msvc"))]
#[test]
fn the_allocator_keeps_a_busy_gateways_blocks_cached() {
    let out = Command::new(BIN)
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in [
        "opt.tcache_nslots_small_min: 256",
        "opt.tcache_nslots_small_max: 1024",
        "opt.tcache_nslots_large: 64",
        "opt.tcache_gc_incr_bytes: 16777216",
    ] {
        assert!(stats.contains(option), "{option} not in jemalloc's stats");
    }
}
