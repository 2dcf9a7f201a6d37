//! Reloading the key file and gateway.toml: what the watcher reacts to, when a changed file is
//! applied, and what happens while the key file cannot be read — through the real binary
//! (run as another user where permissions matter) or the real server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::binary::*;
use common::*;
use http::Method;
use std::fs;
use std::io::{Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The unprivileged user the gateway runs as where file permissions matter (tests run as root).
const NOBODY: u32 = 65534;

fn count(lines: &Mutex<Vec<String>>, needle: &str) -> usize {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// Runs the CLI as root; panics on failure.
fn cli(cfg: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keygate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `extra` of [`write_config`] for a metrics listener and JSON logs.
const METRICS_AND_JSON_LOGS: &str =
    "[metrics]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n";

/// The binary serving `cfg` (at its own log level), and its metrics listener.
async fn serve_with_metrics(cfg: &Path) -> (Served, String) {
    let served = serve_with(cfg, |c| {
        c.env_remove("RUST_LOG");
    });
    let metrics = metrics_addr(&served.logs).await;
    (served, metrics)
}

/// `keygate_key_reloads_total` with this `result`.
async fn key_reloads(metrics: &str, result: &str) -> f64 {
    scrape(
        metrics,
        "keygate_key_reloads_total",
        Some(("result", result)),
    )
    .await
}

/// A gateway.toml in `dir`: any port, `keys.json` polled every 100 ms, the `extra` tables, and
/// `mock` as the upstream.
fn write_config(dir: &Path, mock: &Mock, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join("gateway.toml");
    fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\npoll_interval = \"100ms\"\n\
             {extra}[[upstream]]\nurl = \"http://{}\"\n",
            mock.addr
        ),
    )
    .unwrap();
    cfg
}

/// Stops the child on drop, so a failed assertion does not leave a gateway running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------------------------------------ 13.12

#[tokio::test]
async fn trace_logging_into_the_key_directory_does_not_feed_itself() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &mock, "[log]\nlevel = \"trace\"\n");
    let (key, id) = cli_create_key(&cfg, "traced");
    // The gateway's log goes to a file beside the key file, as with `2>> /etc/keygate/log`.
    let log_path = dir.path().join("gateway.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut child = Running(
        Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let addr = listening_addr(&mut child.0);
    let url = format!("http://{addr}/v1/chat/completions");
    assert_eq!(
        send(
            Method::POST,
            &url,
            &[("authorization", &bearer(&key))],
            CHAT
        )
        .await
        .status,
        200
    );

    // Idle for two seconds: the log must not keep growing by itself. (It grew by about
    // 30 MB a second: every trace line of an inotify event was itself an event.)
    let size = || fs::metadata(&log_path).unwrap().len();
    let start = size();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        let grown = size() - start;
        assert!(
            grown < 256 * 1024,
            "the log grew by {grown} bytes in {:?} while idle",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The watcher still reacts to the key file itself. (An answer under way when the revoke
    // lands is cut short, by design: not yet the 401, not a failure.)
    cli(&cfg, &["keys", "revoke", &id]);
    assert!(
        eventually(Duration::from_secs(3), || async {
            try_send(
                Method::POST,
                &url,
                &[("authorization", &bearer(&key))],
                CHAT,
            )
            .await
            .is_ok_and(|a| a.status == 401)
        })
        .await,
        "the revoke was not applied"
    );
}

// ------------------------------------------------------------------------------ 13.13

#[tokio::test]
async fn a_slow_in_place_rewrite_of_gateway_toml_is_applied_whole() {
    // The limit comes last, so the first half of the file is a valid config without it.
    let g = start_gateway("[limits]\nrequests_per_minute = 7\n").await;
    let _w = keygate::cli::serve::watch_config_file(
        g.gw.clone(),
        g.config_path.clone(),
        Duration::from_millis(100),
    );
    let key = g.key();
    assert_eq!(
        chat(&g, &key, CHAT)
            .await
            .header("x-ratelimit-limit-requests"),
        Some("7")
    );

    // Requests all through the rewrite record the limit they were answered under.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let hammer = {
        let (stop, seen, url, auth) = (
            Arc::clone(&stop),
            Arc::clone(&seen),
            g.url("/v1/chat/completions"),
            bearer(&key),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let a = send(Method::POST, &url, &[("authorization", &auth)], CHAT).await;
                let limit = a.header("x-ratelimit-limit-requests").unwrap_or("none");
                seen.lock()
                    .unwrap()
                    .push(format!("{} {limit}", a.status.as_u16()));
            }
        })
    };

    // Rewrite the same text in place, as `cat new > gateway.toml` does: truncate, write
    // half, pause, write the rest.
    let text = fs::read_to_string(&g.config_path).unwrap();
    let cut = text.find("[limits]").unwrap();
    let reloads = || {
        g.gw.reloads
            .config_reloads
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = reloads();
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&g.config_path)
            .unwrap();
        f.write_all(&text.as_bytes()[..cut]).unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        f.write_all(&text.as_bytes()[cut..]).unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || async { reloads() > before }).await,
        "the rewritten file was never applied"
    );
    // Let a few more requests run on the applied file.
    let n = seen.lock().unwrap().len();
    assert!(
        eventually(Duration::from_secs(3), || async {
            seen.lock().unwrap().len() > n + 5
        })
        .await
    );
    stop.store(true, Ordering::Relaxed);
    hammer.await.unwrap();

    let seen = seen.lock().unwrap();
    assert!(seen.len() > 20, "too few requests to tell: {seen:?}");
    let wrong: Vec<_> = seen.iter().filter(|s| !s.ends_with(" 7")).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} requests were answered under a half-written gateway.toml: {:?}",
        wrong.len(),
        seen.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(
        g.gw.reloads
            .config_reload_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a settled file is not a failure"
    );
}

#[tokio::test]
async fn an_emptied_gateway_toml_is_refused_logged_and_counted() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\npoll_interval = \"100ms\"\n\
             [limits]\nrequests_per_minute = 7\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"json\"\n[[upstream]]\nurl = \"http://{}\"\n",
            mock.addr
        ),
    )
    .unwrap();
    let (key, _) = cli_create_key(&cfg, "k");
    let mut served = serve_with(&cfg, |c| {
        c.env_remove("RUST_LOG");
    });
    let (addr, logs) = (served.addr, std::sync::Arc::clone(&served.logs));
    let metrics = metrics_addr(&logs).await;
    let url = format!("http://{addr}/v1/chat/completions");

    // `: > gateway.toml`, then a file of nothing but comments and blank lines.
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&cfg)
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            count(&logs, "reload failed") >= 1
        })
        .await,
        "an empty gateway.toml was not refused: {:?}",
        logs.lock().unwrap()
    );
    let line = logs
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("reload failed"))
        .cloned()
        .unwrap();
    assert!(line.contains("empty"), "{line}");
    fs::write(&cfg, "# nothing here yet\n\n   \n").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            scrape(
                &metrics,
                "keygate_config_reloads_total",
                Some(("result", "error")),
            )
            .await
                >= 2.0
        })
        .await
    );

    // The last good configuration keeps serving: the mock upstream, 7 requests a minute.
    let a = send(
        Method::POST,
        &url,
        &[("authorization", &bearer(&key))],
        CHAT,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-ratelimit-limit-requests"), Some("7"));
    assert_eq!(
        scrape(
            &metrics,
            "keygate_config_reloads_total",
            Some(("result", "ok"))
        )
        .await,
        0.0
    );
    sigterm(&served.child);
    assert!(served.child.wait().unwrap().success());
}

// ------------------------------------------------------------------------------ 13.15

/// The `addr` of the "metrics listening" JSON log line.
async fn metrics_addr(logs: &Mutex<Vec<String>>) -> String {
    let mut addr = None;
    eventually(Duration::from_secs(5), || {
        addr = logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "metrics listening")
            .and_then(|v| v["addr"].as_str().map(String::from));
        let found = addr.is_some();
        async move { found }
    })
    .await;
    addr.expect("the metrics listener's address is logged")
}

/// The sum of a metric's samples (with a label, if given).
async fn scrape(addr: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let a = send(Method::GET, &format!("http://{addr}/metrics"), &[], "").await;
    let text = String::from_utf8(a.body.to_vec()).unwrap();
    let s = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    s.samples
        .iter()
        .filter(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

/// A gateway run as `nobody` on a key file in a directory `nobody` owns, with a key made by
/// root through the CLI.
struct AsNobody {
    _dir: tempfile::TempDir,
    cfg: PathBuf,
    keys: PathBuf,
    key: String,
    id: String,
    _child: Running,
    logs: Arc<Mutex<Vec<String>>>,
    url: String,
    base: String,
}

fn start_as_nobody(mock: std::net::SocketAddr, extra: &str) -> AsNobody {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    chown(dir.path(), NOBODY);
    let cfg = dir.path().join("gateway.toml");
    fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\npoll_interval = \"100ms\"\n{extra}\
             [log]\nformat = \"json\"\n[[upstream]]\nurl = \"http://{mock}\"\n"
        ),
    )
    .unwrap();
    let keys = dir.path().join("keys.json");
    let (key, id) = cli_create_key(&cfg, "service");
    chown(&keys, NOBODY);
    let mut child = Running(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BIN,
                "serve",
                "--config",
            ])
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let logs = capture_stderr(&mut child.0);
    let addr = listening_addr(&mut child.0);
    AsNobody {
        _dir: dir,
        cfg,
        keys,
        key,
        id,
        _child: child,
        logs,
        url: format!("http://{addr}/v1/chat/completions"),
        base: format!("http://{addr}"),
    }
}

async fn status(url: &str, key: &str) -> u16 {
    send(Method::POST, url, &[("authorization", &bearer(key))], CHAT)
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn a_revoke_written_while_the_gateway_could_not_read_the_file_applies_once_it_can() {
    let mock = start_mock().await;
    let g = start_as_nobody(mock.addr, "");
    assert_eq!(status(&g.url, &g.key).await, 200);

    // The file ends up root's, 0600 (as an older CLI run as root left it), with the revoke in it.
    chown(&g.keys, 0);
    fs::set_permissions(&g.keys, fs::Permissions::from_mode(0o600)).unwrap();
    cli(&g.cfg, &["keys", "revoke", &g.id]);
    assert!(
        eventually(Duration::from_secs(3), || async {
            count(&g.logs, "Permission denied") >= 1
        })
        .await,
        "{:?}",
        g.logs.lock().unwrap()
    );
    // The gateway cannot read it: the last good keys keep serving.
    assert_eq!(status(&g.url, &g.key).await, 200);

    // Only the owner changes (no edit, same mtime): the revoke must apply within a poll or so.
    chown(&g.keys, NOBODY);
    assert!(
        eventually(Duration::from_secs(3), || async {
            chat_status(&g.url, &g.key).await == 401
        })
        .await,
        "the revoked key still works after the file became readable"
    );
}

#[tokio::test]
async fn an_unreadable_key_file_makes_the_gateway_loudly_unhealthy() {
    let mock = start_mock().await;
    let g = start_as_nobody(
        mock.addr,
        "unready_on_load_error = true\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let metrics = metrics_addr(&g.logs).await;
    let ready = || async {
        send(Method::GET, &format!("{}/readyz", g.base), &[], "")
            .await
            .status
            .as_u16()
    };
    let healthy = || scrape(&metrics, "keygate_key_file_healthy", None);
    assert_eq!(ready().await, 200);
    assert_eq!(healthy().await, 1.0);

    fs::set_permissions(&g.keys, fs::Permissions::from_mode(0o000)).unwrap();
    chown(&g.keys, 0);
    // Unhealthy at once, and retried at every poll...
    assert!(eventually(Duration::from_secs(3), || async { ready().await == 503 }).await);
    assert_eq!(healthy().await, 0.0);
    let failed = || {
        scrape(
            &metrics,
            "keygate_key_reloads_total",
            Some(("result", "error")),
        )
    };
    let first = failed().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            failed().await >= first + 3.0
        })
        .await,
        "a failed load is retried at every poll"
    );
    // ...but logged once, not at every retry.
    assert_eq!(
        count(&g.logs, "key file not loaded"),
        1,
        "{:?}",
        g.logs.lock().unwrap()
    );
    // Requests are still served with the last good keys.
    assert_eq!(status(&g.url, &g.key).await, 200);

    // Readable again: healthy, ready, and the recovery is logged.
    chown(&g.keys, NOBODY);
    fs::set_permissions(&g.keys, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(eventually(Duration::from_secs(3), || async { ready().await == 200 }).await);
    assert_eq!(healthy().await, 1.0);
    // Readiness turns before the line is written (and the log writer batches).
    assert!(
        eventually(Duration::from_secs(3), || {
            let n = count(&g.logs, "key file loaded again");
            async move { n >= 1 }
        })
        .await
    );
    assert_eq!(count(&g.logs, "key file loaded again"), 1);
}

/// The watcher reacts to its own reads of the file no more than to anyone else's: a key file
/// that keeps failing is retried once a poll, not in a loop woken by the retry's own open of
/// the file (inotify reports opens and reads in the watched directory).
#[tokio::test]
async fn a_failing_key_file_is_retried_at_the_poll_not_in_a_loop() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &mock, METRICS_AND_JSON_LOGS);
    let key = cli_create_key(&cfg, "service").0;
    let (served, metrics) = serve_with_metrics(&cfg).await;
    let failed = || key_reloads(&metrics, "error");
    // Well-formed JSON that is no key file, put in place by rename as a writer would.
    let tmp = dir.path().join("keys.json.tmp");
    fs::write(&tmp, r#"{"key": "not a key file"}"#).unwrap();
    fs::rename(&tmp, dir.path().join("keys.json")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async { failed().await >= 1.0 }).await,
        "the broken file was never tried"
    );
    // A rate is what is measured here: a window of time is the point, not a wait.
    let first = failed().await;
    let window = Duration::from_millis(1500);
    tokio::time::sleep(window).await;
    let retries = failed().await - first;
    // Polled every 100 ms: about 15 retries; a loop makes thousands.
    assert!(
        (1.0..=40.0).contains(&retries),
        "{retries} retries in {window:?} with a 100 ms poll"
    );
    assert_eq!(status(&served.url("/v1/chat/completions"), &key).await, 200);
}

#[tokio::test]
async fn a_same_size_in_place_edit_with_its_mtime_restored_is_noticed() {
    let g = start_gateway("").await;
    let (_, key) = g.create_key(keygate::keys::record::NewKey {
        name: "edited".into(),
        limits: keygate::keys::record::KeyLimits {
            requests_per_minute: Some(100),
            ..Default::default()
        },
        ..Default::default()
    });
    let limit = || async {
        chat(&g, &key, CHAT)
            .await
            .header("x-ratelimit-limit-requests")
            .map(String::from)
    };
    assert_eq!(limit().await.as_deref(), Some("100"));

    // Same length, written over the old bytes, and the old mtime put back (as `cp -p`, `rsync
    // -t` or an editor preserving times may do): only ctime tells.
    let path = g.gw.config().keys.file.clone();
    let text = fs::read_to_string(&path).unwrap();
    let edited = text.replace("\"requests_per_minute\":100", "\"requests_per_minute\":200");
    assert_eq!(edited.len(), text.len());
    assert_ne!(edited, text);
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.rewind().unwrap();
    f.write_all(edited.as_bytes()).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);

    assert!(
        eventually(Duration::from_secs(3), || async {
            limit().await.as_deref() == Some("200")
        })
        .await,
        "the edit was never applied"
    );
}

#[tokio::test]
async fn a_management_write_reloads_the_index_once() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &mock, METRICS_AND_JSON_LOGS);
    let admin = cli(
        &cfg,
        &[
            "keys", "create", "--name", "admin", "--scopes", "admin", "--json",
        ],
    );
    let admin: serde_json::Value = serde_json::from_str(&admin).unwrap();
    let admin = admin["key"].as_str().unwrap().to_string();
    let (served, metrics) = serve_with_metrics(&cfg).await;
    let reloads = || key_reloads(&metrics, "ok");
    let loaded = || count(&served.logs, "\"key file loaded\"");
    let (before, loads_before) = (reloads().await, loaded());

    let a = send(
        Method::POST,
        &served.url("/v1/api-keys"),
        &[("authorization", &bearer(&admin))],
        r#"{"name":"made-by-api"}"#,
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    // The watcher looks at the file the write replaced (and logs its look).
    assert!(
        eventually(Duration::from_secs(5), || async { loaded() > loads_before }).await,
        "the watcher never looked at the written file"
    );
    assert_eq!(
        reloads().await,
        before + 1.0,
        "the write's own reload, and no second one by the watcher"
    );
    // A change made elsewhere is still picked up by the watcher.
    cli(&cfg, &["keys", "create", "--name", "made-by-cli"]);
    assert!(
        eventually(Duration::from_secs(5), || async {
            reloads().await >= before + 2.0
        })
        .await,
        "a change by the CLI was not reloaded"
    );
}

/// Found by a probe: a gateway started on a broken key file said "the last good keys keep
/// serving" when it had none (every request was refused), and "loaded again" once it loaded.
#[tokio::test]
async fn a_key_file_broken_from_the_start_is_said_to_leave_no_keys() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &mock, "");
    let key = cli_create_key(&cfg, "service").0;
    let file = dir.path().join("keys.json");
    let good = fs::read(&file).unwrap();
    fs::write(&file, r#"{"key": "not a key file"}"#).unwrap();
    let served = serve(&cfg);
    assert!(
        has_line(&served.logs, |l| l
            .contains("no keys yet, so every request is refused"))
        .await,
        "{:?}",
        served.logs.lock().unwrap()
    );
    assert_eq!(count(&served.logs, "the last good keys keep serving"), 0);
    assert_eq!(status(&served.url("/v1/chat/completions"), &key).await, 503);
    let tmp = dir.path().join("keys.json.tmp");
    fs::write(&tmp, good).unwrap();
    fs::rename(&tmp, &file).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&served.url("/v1/chat/completions"), &key).await == 200
        })
        .await
    );
    assert!(has_line(&served.logs, |l| l.contains("key file loaded")).await);
    assert_eq!(count(&served.logs, "key file loaded again"), 0);
}

/// Found by a probe: a state file cut short was logged as a warning and replaced by the
/// first save, its usage history and quota counts gone for good. It is kept aside now.
#[tokio::test]
async fn a_usage_state_file_that_does_not_parse_is_kept_aside() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &mock, "");
    let key = cli_create_key(&cfg, "service").0;
    let state = dir.path().join("keys.json.state");
    let cut = br#"{"version":2,"keys":{"key_0123"#;
    fs::write(&state, cut).unwrap();
    let served = serve(&cfg);
    assert!(
        has_line(&served.logs, |l| l
            .contains("usage state file unreadable, kept aside"))
        .await,
        "{:?}",
        served.logs.lock().unwrap()
    );
    assert_eq!(
        fs::read(dir.path().join("keys.json.state.corrupt")).unwrap(),
        cut
    );
    assert_eq!(status(&served.url("/v1/chat/completions"), &key).await, 200);
}
