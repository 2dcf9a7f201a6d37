//! Operations: Prometheus metrics, live gateway.toml reload, JSON logs without secrets, and
//! SIGTERM draining through the real binary.

mod common;

use common::*;
use http::Method;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move() {
    let g = start_gateway("").await;
    keygate::metrics::install().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let maddr = listener.local_addr().unwrap();
    tokio::spawn(keygate::metrics::serve(
        listener,
        g.gw.clone(),
        std::future::pending(),
    ));
    let key = g.key();
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    assert_eq!(
        send(Method::POST, &g.url("/v1/chat/completions"), &[], CHAT)
            .await
            .status,
        401
    );

    let scrape = || async {
        let a = send(Method::GET, &format!("http://{maddr}/metrics"), &[], "").await;
        assert_eq!(a.status, 200);
        let text = String::from_utf8(a.body.to_vec()).unwrap();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text")
    };
    let value = |s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>| -> f64 {
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
    };
    let s1 = scrape().await;
    assert!(value(&s1, "keygate_requests_total", Some(("status_class", "2xx"))) >= 1.0);
    assert!(
        value(
            &s1,
            "keygate_requests_total",
            Some(("code", "missing_api_key"))
        ) >= 1.0
    );
    assert_eq!(value(&s1, "keygate_keys", None), 1.0);
    assert_eq!(value(&s1, "keygate_ready", None), 1.0);
    assert!(value(&s1, "keygate_key_reloads_total", Some(("result", "ok"))) >= 1.0);
    assert!(
        s1.samples
            .iter()
            .any(|x| x.metric == "keygate_added_latency_seconds"),
        "histogram present"
    );
    assert!(s1
        .samples
        .iter()
        .any(|x| x.metric == "keygate_upstream_latency_seconds"));
    let before = value(&s1, "keygate_requests_total", Some(("status_class", "2xx")));
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    let s2 = scrape().await;
    assert!(
        value(&s2, "keygate_requests_total", Some(("status_class", "2xx"))) > before,
        "counters move"
    );
    // No secret in metrics.
    let raw = send(Method::GET, &format!("http://{maddr}/metrics"), &[], "").await;
    assert!(!String::from_utf8_lossy(&raw.body).contains(&key[6..]));
}

#[tokio::test]
async fn gateway_toml_edits_apply_live_and_bad_edits_keep_the_old_config() {
    let g = start_gateway("").await;
    let _w = keygate::run::watch_config_file(
        g.gw.clone(),
        g.config_path.clone(),
        Duration::from_millis(100),
    );
    let key = g.key();
    let original = std::fs::read_to_string(&g.config_path).unwrap();
    assert_eq!(
        chat(&g, &key, CHAT)
            .await
            .header("x-ratelimit-limit-requests"),
        Some("600")
    );

    // A good edit: new default limits apply to keys without their own.
    std::fs::write(
        &g.config_path,
        format!("{original}[limits]\nrequests_per_minute = 7\n"),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            chat(&g, &key, CHAT)
                .await
                .header("x-ratelimit-limit-requests")
                == Some("7")
        })
        .await
    );
    // A bad edit: counted, and the last good config keeps serving.
    let failures = || {
        g.gw.reloads
            .config_reload_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    std::fs::write(
        &g.config_path,
        format!("{original}[limits]\nrequests_per_minute = 7\nnot_an_option = true\n"),
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(3), || async { failures() >= 1 }).await);
    let a = chat(&g, &key, CHAT).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-ratelimit-limit-requests"), Some("7"));
    // A restart-only change is reported and the running value kept.
    let restart = g.gw.apply_config(
        keygate::config::Config::parse(
            &original.replace("[keys]", "[server]\nlisten = \"127.0.0.1:1\"\n[keys]"),
            Some(&g.config_path),
        )
        .unwrap(),
    );
    assert!(
        restart.iter().any(|r| r.contains("server.listen")),
        "{restart:?}"
    );
    assert_eq!(
        g.gw.config().server.listen.to_string(),
        keygate::config::DEFAULT_LISTEN
    );
}

/// Collects a child's stderr lines in the background.
fn capture_stderr(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let err = child.stderr.take().unwrap();
    let l2 = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(line);
        }
    });
    lines
}

fn listening_addr(child: &mut Child) -> String {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("listening on http://"), "{line}");
    line.trim().rsplit("http://").next().unwrap().to_string()
}

fn setup(
    extra: &str,
    mock: std::net::SocketAddr,
) -> (tempfile::TempDir, std::path::PathBuf, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{extra}[keys]\nfile = \"keys.json\"\npoll_interval = \"100ms\"\n[log]\nformat = \"json\"\n[[upstream]]\nurl = \"http://{mock}\"\n"),
    )
    .unwrap();
    let (key, id) = cli_create_key(&cfg, "logged");
    (dir, cfg, key, id)
}

#[tokio::test]
async fn json_access_log_has_the_fields_and_never_a_secret() {
    let mock = start_mock().await;
    let (_dir, cfg, key, id) = setup("", mock.addr);
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = capture_stderr(&mut child);
    let addr = listening_addr(&mut child);
    let url = format!("http://{addr}/v1/chat/completions");
    assert_eq!(
        send(
            Method::POST,
            &url,
            &[
                ("authorization", &bearer(&key)),
                ("x-request-id", "trace-1")
            ],
            CHAT
        )
        .await
        .status,
        200
    );
    let wrong = keygate::key::generate("sk_kg").unwrap().plaintext;
    assert_eq!(
        send(
            Method::POST,
            &url,
            &[("authorization", &bearer(&wrong))],
            CHAT
        )
        .await
        .status,
        401
    );
    // A bad config edit is logged with its line.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\nbroken = [\n")).unwrap();
    let found = eventually(Duration::from_secs(5), || {
        let logs = Arc::clone(&logs);
        async move {
            logs.lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("reload failed"))
        }
    })
    .await;
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let lines = logs.lock().unwrap().clone();
    assert!(found, "{lines:?}");
    let reload = lines.iter().find(|l| l.contains("reload failed")).unwrap();
    assert!(reload.contains("line"), "{reload}");
    let access: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "keygate::access")
        .collect();
    assert_eq!(access.len(), 2, "{lines:?}");
    let ok = &access[0];
    assert_eq!(ok["request_id"], "trace-1");
    assert_eq!(ok["key_id"], id.as_str());
    assert_eq!(ok["key_name"], "logged");
    assert_eq!(ok["route"], "chat");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["prompt_tokens"], 2);
    // A JSON answer of known length, read to its end, is complete.
    assert_eq!(ok["complete"], true);
    assert!(ok["upstream_us"].as_u64().is_some() && ok["added_us"].as_u64().is_some());
    assert_eq!(access[1]["error"], "invalid_api_key");
    for l in &lines {
        assert!(
            !l.contains(&key[6..]) && !l.contains(&wrong[6..]),
            "a key was logged: {l}"
        );
    }
}

#[tokio::test]
async fn sigterm_fails_readiness_first_and_lets_the_stream_finish() {
    let mock = start_mock().await;
    let (_dir, cfg, key, _) = setup(
        "shutdown_delay = \"1s\"\ndrain_timeout = \"10s\"\n",
        mock.addr,
    );
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child);
    let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("authorization", bearer(&key))
        .header("x-mock-interval-ms", "150")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"a b c d e f"}]}"#,
        )))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let stream = tokio::spawn(async move {
        use http_body_util::BodyExt;
        resp.into_body().collect().await.map(|c| c.to_bytes())
    });
    assert_eq!(
        send(Method::GET, &format!("http://{addr}/readyz"), &[], "")
            .await
            .status,
        200
    );
    sigterm(&child);
    assert!(
        eventually(Duration::from_millis(900), || async {
            send(Method::GET, &format!("http://{addr}/readyz"), &[], "")
                .await
                .status
                == 503
        })
        .await,
        "readiness fails at once while new connections are still served"
    );
    let body = stream.await.unwrap().expect("the stream completed");
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
    assert!(child.wait().unwrap().success(), "exit 0");
}
