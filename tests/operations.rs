//! Operations: Prometheus metrics, live gateway.toml reload, JSON logs without secrets, and
//! SIGTERM draining through the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::binary::*;
use common::*;
use http::Method;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move() {
    // The request series are recorded only by a gateway configured with a metrics listener
    // (nothing could read them otherwise); the test serves the scrape itself.
    let g = start_gateway("[metrics]\nlisten = \"127.0.0.1:0\"\n").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let maddr = listener.local_addr().unwrap();
    tokio::spawn(keygate::ops::metrics::scrape::serve(
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
    let _w = keygate::cli::serve::watch_config_file(
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
    let mut served = serve(&cfg);
    let (addr, logs) = (served.addr, std::sync::Arc::clone(&served.logs));
    let child = &mut served.child;
    // The query is never logged: it could carry a secret.
    let url = format!("http://{addr}/v1/chat/completions?session=query-secret");
    let ok = send(
        Method::POST,
        &url,
        &[
            ("authorization", &bearer(&key)),
            ("x-request-id", "trace-1"),
            ("user-agent", "OpenAI/Python 1.50.0"),
        ],
        CHAT,
    )
    .await;
    assert_eq!(ok.status, 200);
    let wrong = keygate::keys::token::generate("sk_kg").unwrap().plaintext;
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
    // Probes and the console's files leave no access line by default.
    for path in ["/healthz", "/readyz", "/console", "/console/console.js"] {
        let a = send(Method::GET, &format!("http://{addr}{path}"), &[], "").await;
        assert_eq!(a.status, 200, "{path}");
    }
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
    sigterm(child);
    assert!(child.wait().unwrap().success());
    let lines = logs.lock().unwrap().clone();
    assert!(found, "{lines:?}");
    let reload = lines.iter().find(|l| l.contains("reload failed")).unwrap();
    assert!(reload.contains("line"), "{reload}");
    for l in &lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "every line is JSON: {l}"
        );
    }
    let access: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "keygate::access")
        .collect();
    assert_eq!(access.len(), 2, "no probe lines: {lines:?}");
    let a = &access[0];
    assert_eq!(a["level"], "INFO");
    assert!(a["timestamp"].as_str().unwrap().ends_with('Z'), "{a}");
    assert_eq!(a["request_id"], "trace-1");
    assert_eq!(a["client_addr"], "127.0.0.1");
    assert_eq!(a["method"], "POST");
    assert_eq!(a["path"], "/v1/chat/completions");
    assert_eq!(a["protocol"], "HTTP/1.1");
    assert_eq!(a["user_agent"], "OpenAI/Python 1.50.0");
    assert_eq!(a["key_id"], id.as_str());
    assert_eq!(a["key_name"], "logged");
    assert_eq!(a["route"], "chat");
    // One upstream and no model allowlist: the body streamed through unread, so the model
    // logged is the one the answer names (as usage counts it), not null.
    assert_eq!(a["model"], "llama-3.1-8b-instruct", "{a}");
    assert!(a["upstream"].is_string());
    assert_eq!(a["status"], 200);
    assert!(a["error"].is_null(), "{a}");
    assert_eq!(a["prompt_tokens"], 2);
    assert!(a["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(a["bytes_received"], CHAT.len() as u64);
    assert_eq!(a["bytes_sent"], ok.body.len() as u64);
    // A JSON answer of known length, read to its end, is complete.
    assert_eq!(a["complete"], true);
    for f in ["latency_us", "upstream_us", "added_us"] {
        assert!(a[f].as_u64().is_some(), "{f}: {a}");
    }
    // Absent values are null, not "-".
    let refused = &access[1];
    assert_eq!(refused["error"], "invalid_api_key");
    assert_eq!(refused["status"], 401);
    assert!(refused["user_agent"].is_null(), "{refused}");
    for f in [
        "key_id",
        "key_name",
        "model",
        "upstream",
        "upstream_us",
        "prompt_tokens",
        "completion_tokens",
    ] {
        assert!(refused[f].is_null(), "{f}: {refused}");
    }
    for l in &lines {
        assert!(
            !l.contains(&key[6..]) && !l.contains(&wrong[6..]) && !l.contains("query-secret"),
            "a secret was logged: {l}"
        );
        assert!(!l.contains("\"-\""), "a dash for an absent value: {l}");
    }
}

/// Text logs written to a file (as `kubectl logs` and log shippers see them): no colour
/// codes, the access line's fields as `key=value`, and probe lines when `[log] probes`.
#[tokio::test]
async fn text_log_in_a_file_has_no_colour_and_the_access_fields() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\n[log]\nformat = \"text\"\nprobes = true\n[[upstream]]\nname = \"mock\"\nurl = \"http://{}\"\n", mock.addr),
    )
    .unwrap();
    let (key, _) = cli_create_key(&cfg, "texty");
    let log_path = dir.path().join("stderr.log");
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child);
    let a = send(
        Method::POST,
        &format!("http://{addr}/v1/chat/completions"),
        &[
            ("authorization", &bearer(&key)),
            ("user-agent", "my app/1.0 \"beta\""),
        ],
        CHAT,
    )
    .await;
    assert_eq!(a.status, 200);
    // HTTP/2 (prior knowledge) is logged as such.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let resp = h2
        .request(
            http::Request::get(format!("http://{addr}/v1/models"))
                .header("authorization", bearer(&key))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    {
        use http_body_util::BodyExt;
        resp.into_body().collect().await.unwrap();
    }
    drop(h2);
    assert_eq!(
        send(Method::GET, &format!("http://{addr}/healthz"), &[], "")
            .await
            .status,
        200
    );
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(!text.contains('\u{1b}'), "colour codes in a file:\n{text}");
    let access: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("keygate::access"))
        .collect();
    assert_eq!(access.len(), 3, "{text}");
    let chat = access[0];
    for field in [
        " INFO keygate::access: request ",
        " client_addr=127.0.0.1 ",
        " method=POST ",
        " path=/v1/chat/completions ",
        " protocol=HTTP/1.1 ",
        r#" user_agent="my app/1.0 \"beta\"" "#,
        " key_name=texty ",
        " route=chat ",
        " status=200 ",
        " error=- ",
        &format!(" bytes_received={} ", CHAT.len()),
        &format!(" bytes_sent={}", a.body.len()),
    ] {
        assert!(chat.contains(field), "{field:?} missing in {chat}");
    }
    assert!(access[1].contains(" protocol=HTTP/2 "), "{}", access[1]);
    assert!(access[1].contains(" path=/v1/models "), "{}", access[1]);
    assert!(access[2].contains(" path=/healthz "), "{}", access[2]);
    assert!(access[2].contains(" route=- "), "{}", access[2]);
}

#[tokio::test]
async fn sigterm_fails_readiness_first_and_lets_the_stream_finish() {
    let mock = start_mock().await;
    let (_dir, cfg, key, _) = setup(
        "shutdown_delay = \"1s\"\ndrain_timeout = \"10s\"\n",
        mock.addr,
    );
    let mut served = serve(&cfg);
    let addr = served.addr;
    let child = &mut served.child;
    let stream = open_stream(addr, &key, "150").await;
    assert_eq!(
        send(Method::GET, &format!("http://{addr}/readyz"), &[], "")
            .await
            .status,
        200
    );
    sigterm(child);
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

/// Found by an outside probe: a stream the gateway cut when `drain_timeout` ran out was
/// logged `error=- complete=false`, as a client that left. It is logged and counted as
/// `drain_timeout`.
#[tokio::test]
async fn a_stream_cut_by_the_end_of_the_drain_says_so() {
    let mock = start_mock().await;
    let (_dir, cfg, key, _) = setup("drain_timeout = \"1s\"\n", mock.addr);
    let mut served = serve(&cfg);
    let addr = served.addr;
    let stream = open_stream(addr, &key, "1000").await;
    sigterm(&served.child);
    assert!(stream.await.unwrap().is_err(), "the stream was not cut");
    assert!(served.child.wait().unwrap().success(), "exit 0");
    let logs = Arc::clone(&served.logs);
    let cut = eventually(Duration::from_secs(3), || async {
        logs.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("drain_timeout") && l.contains("keygate::access"))
    })
    .await;
    assert!(cut, "{:?}", logs.lock().unwrap());
}

/// A streamed chat through the gateway at `addr`, `interval_ms` between the mock's events:
/// its 200 head checked, its body read to the end (or its cut) by the task returned.
async fn open_stream(
    addr: std::net::SocketAddr,
    key: &str,
    interval_ms: &str,
) -> tokio::task::JoinHandle<Result<bytes::Bytes, hyper::Error>> {
    let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("authorization", bearer(key))
        .header("x-mock-interval-ms", interval_ms)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"a b c d e f"}]}"#,
        )))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    tokio::spawn(async move {
        use http_body_util::BodyExt;
        resp.into_body().collect().await.map(|c| c.to_bytes())
    })
}

/// Starts `keygate serve` (a config with JSON logs).
fn serve_json(cfg: &std::path::Path) -> Served {
    serve(cfg)
}

/// The value of `field` in the first JSON log line whose message is `message`.
async fn logged(logs: &Arc<Mutex<Vec<String>>>, message: &str, field: &str) -> String {
    let mut found = None;
    eventually(Duration::from_secs(5), || {
        let v = logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == message)
            .and_then(|v| v[field].as_str().map(str::to_string));
        found = v;
        std::future::ready(found.is_some())
    })
    .await;
    found.unwrap_or_else(|| panic!("no {message:?} line: {:?}", logs.lock().unwrap()))
}

fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

/// Scrapes `/metrics`: the parsed scrape and the raw text.
async fn scrape(maddr: &str) -> (prometheus_parse::Scrape, String) {
    let a = send(Method::GET, &format!("http://{maddr}/metrics"), &[], "").await;
    assert_eq!(a.status, 200);
    let text = String::from_utf8(a.body.to_vec()).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    (
        prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text"),
        text,
    )
}

#[tokio::test]
async fn metrics_through_the_binary_are_described_exist_from_the_start_and_span_minutes() {
    let mock = start_mock().await;
    // A second upstream that refuses connections: a port that was free a moment ago.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n\
             [[upstream]]\nname = \"down\"\nurl = \"http://{closed}\"\nmodels = [\"down-*\"]\n\
             [[upstream]]\nname = \"mock\"\nurl = \"http://{}\"\n",
            mock.addr
        ),
    )
    .unwrap();
    let (key, _) = cli_create_key(&cfg, "metered");
    let served = serve_json(&cfg);
    let (addr, logs) = (served.addr, Arc::clone(&served.logs));
    let maddr = logged(&logs, "metrics listening", "addr").await;

    // Before any traffic.
    let (s, text) = scrape(&maddr).await;
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(families.len() > 20, "{families:?}");
    for f in &families {
        assert!(s.docs.contains_key(*f), "no # HELP for {f}");
    }
    for x in &s.samples {
        let family = ["_sum", "_count"]
            .iter()
            .find_map(|sfx| x.metric.strip_suffix(sfx))
            .filter(|f| families.contains(f))
            .unwrap_or(&x.metric);
        assert!(
            families.contains(&family),
            "sample {} has no # TYPE",
            x.metric
        );
    }
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            sample(&s, name, labels),
            Some(0.0),
            "{name}{labels:?} at zero before traffic"
        );
    };
    zero(
        "keygate_requests_total",
        &[("route", "chat"), ("status_class", "2xx"), ("code", "")],
    );
    zero(
        "keygate_requests_total",
        &[
            ("route", "embeddings"),
            ("status_class", "5xx"),
            ("code", ""),
        ],
    );
    zero(
        "keygate_rate_limited_total",
        &[("code", "rate_limit_exceeded")],
    );
    for u in ["down", "mock"] {
        for code in [
            "upstream_unavailable",
            "upstream_timeout",
            "upstream_status_5xx",
        ] {
            zero(
                "keygate_upstream_errors_total",
                &[("upstream", u), ("code", code)],
            );
        }
    }
    zero("keygate_tokens_total", &[("kind", "prompt")]);
    zero("keygate_log_lines_dropped_total", &[]);
    // Duration buckets reach LLM-stream lengths (ten minutes and more).
    let top_bucket = |name: &str| -> f64 {
        s.samples
            .iter()
            .filter(|x| x.metric == name)
            .filter_map(|x| match &x.value {
                prometheus_parse::Value::Histogram(h) => Some(
                    h.iter()
                        .map(|b| b.less_than)
                        .filter(|le| le.is_finite())
                        .fold(0.0, f64::max),
                ),
                _ => None,
            })
            .fold(0.0, f64::max)
    };
    assert!(top_bucket("keygate_request_duration_seconds") >= 600.0);
    assert!(top_bucket("keygate_upstream_latency_seconds") >= 600.0);
    let build = s
        .samples
        .iter()
        .find(|x| x.metric == "keygate_build_info")
        .expect("build info");
    assert_eq!(build.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    assert!(sample(&s, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(sample(&s, "process_open_fds", &[]).unwrap() >= 3.0);
    assert!(sample(&s, "process_cpu_seconds_total", &[]).is_some());

    // Traffic moves them; an unreachable upstream is counted by name and kind.
    let auth = bearer(&key);
    let url = format!("http://{addr}/v1/chat/completions");
    assert_eq!(
        send(Method::POST, &url, &[("authorization", &auth)], CHAT)
            .await
            .status,
        200
    );
    let down = r#"{"model":"down-1","messages":[{"role":"user","content":"x"}]}"#;
    let a = send(Method::POST, &url, &[("authorization", &auth)], down).await;
    assert_eq!(a.status, 502);
    let (s, _) = scrape(&maddr).await;
    assert_eq!(
        sample(
            &s,
            "keygate_requests_total",
            &[("route", "chat"), ("status_class", "2xx"), ("code", "")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &s,
            "keygate_upstream_errors_total",
            &[("upstream", "down"), ("code", "upstream_unavailable")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &s,
            "keygate_upstream_errors_total",
            &[("upstream", "mock"), ("code", "upstream_unavailable")]
        ),
        Some(0.0)
    );
    assert!(sample(&s, "keygate_tokens_total", &[("kind", "prompt")]).unwrap() >= 2.0);
    assert!(
        sample(&s, "keygate_request_duration_seconds", &[("route", "chat")]).unwrap() >= 2.0,
        "two chat requests in the histogram"
    );
    sigterm(&served.child);
    let mut served = served;
    assert!(served.child.wait().unwrap().success());
}

/// An upstream whose `/health` answers 503 until `healthy` is set; counts the checks.
async fn flip_upstream(
    healthy: Arc<std::sync::atomic::AtomicBool>,
    checks: Arc<std::sync::atomic::AtomicUsize>,
) -> std::net::SocketAddr {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (healthy, checks) = (Arc::clone(&healthy), Arc::clone(&checks));
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (healthy, checks) = (Arc::clone(&healthy), Arc::clone(&checks));
                        async move {
                            let status = if req.uri().path() == "/health" {
                                checks.fetch_add(1, Ordering::SeqCst);
                                if healthy.load(Ordering::SeqCst) {
                                    200
                                } else {
                                    503
                                }
                            } else {
                                404
                            };
                            let mut r = http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"{}"),
                            ));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_health_check_gates_readiness_without_a_check_per_probe() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let healthy = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicUsize::new(0));
    let up = flip_upstream(Arc::clone(&healthy), Arc::clone(&checks)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\n[log]\nformat = \"json\"\n[[upstream]]\nname = \"vllm\"\nurl = \"http://{up}\"\nhealth = \"/health\"\nhealth_interval = \"200ms\"\n"),
    )
    .unwrap();
    cli_create_key(&cfg, "k");
    let mut served = serve_json(&cfg);
    let (addr, logs) = (served.addr, Arc::clone(&served.logs));
    let child = &mut served.child;
    let readyz = format!("http://{addr}/readyz");

    // The model is still loading: its health check fails, and so does readiness.
    assert!(
        eventually(Duration::from_secs(5), || async {
            checks.load(Ordering::SeqCst) >= 2
        })
        .await
    );
    let a = send(Method::GET, &readyz, &[], "").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.error_code(), "not_ready");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`vllm`"),
        "{:?}",
        a.body
    );
    // Probes read the cached result: fifty of them cause no fifty checks.
    let before = checks.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    for _ in 0..50 {
        assert_eq!(send(Method::GET, &readyz, &[], "").await.status, 503);
    }
    let intervals = (started.elapsed().as_millis() / 200) as usize;
    let during = checks.load(Ordering::SeqCst) - before;
    assert!(
        during <= intervals + 2,
        "{during} checks in {intervals} intervals for 50 probes"
    );
    // The model has loaded: readiness follows within an interval or so.
    healthy.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            send(Method::GET, &readyz, &[], "").await.status == 200
        })
        .await,
        "ready once the upstream answers its health check"
    );
    sigterm(child);
    assert!(child.wait().unwrap().success());
    for needle in [
        "upstream health check fails",
        "upstream health check passes",
    ] {
        assert!(
            has_line(&logs, |l| l.contains(needle)).await,
            "{needle:?} not in {:?}",
            logs.lock().unwrap()
        );
    }
}

#[tokio::test]
async fn a_blocked_address_is_one_tracked_address() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\n[limits]\nfailed_auth_per_minute = 3\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n[[upstream]]\nurl = \"http://{}\"\n",
            mock.addr
        ),
    )
    .unwrap();
    cli_create_key(&cfg, "present");
    let mut served = serve_json(&cfg);
    let (addr, logs) = (served.addr, Arc::clone(&served.logs));
    let maddr = logged(&logs, "metrics listening", "addr").await;
    // Bad keys from one address until it is blocked (401s, then 429s).
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let wrong = keygate::keys::token::generate("sk_kg").unwrap().plaintext;
        let a = send(
            Method::POST,
            &format!("http://{addr}/v1/chat/completions"),
            &[("authorization", &bearer(&wrong))],
            CHAT,
        )
        .await;
        statuses.push(a.status.as_u16());
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let (s, _) = scrape(&maddr).await;
    assert_eq!(
        sample(&s, "keygate_failed_auth_tracked_addresses", &[]),
        Some(1.0),
        "one client address, blocked: counted once"
    );
    sigterm(&served.child);
    assert!(served.child.wait().unwrap().success());
}

/// At `level = "warn"` the audit trail still reaches the log (an API write logs its change),
/// and a misspelt level (`warning`, which the filter syntax would read as a target, switching
/// every other line off, errors included) is refused at start and on reload, naming the field.
#[tokio::test]
async fn at_warn_the_audit_trail_is_logged_and_a_misspelt_level_is_refused() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    let toml = |level: &str| {
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\n[log]\nformat = \"json\"\nlevel = \"{level}\"\n[[upstream]]\nurl = \"http://{}\"\n", mock.addr)
    };
    std::fs::write(&cfg, toml("warn")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("--config")
        .arg(&cfg)
        .args([
            "keys", "create", "--name", "admin", "--scopes", "admin", "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let admin: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let admin = admin["key"].as_str().unwrap().to_string();
    std::fs::write(&cfg, toml("warning")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("log.level") && err.contains("`warning` is not a log level"),
        "{err}"
    );

    std::fs::write(&cfg, toml("warn")).unwrap();
    let served = serve_with(&cfg, |c| {
        c.env_remove("RUST_LOG");
    });
    let created = send(
        Method::POST,
        &served.url("/v1/api-keys"),
        &[("authorization", &bearer(&admin))],
        r#"{"name": "made-at-warn"}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let line = logged(&served.logs, "key created", "key_name").await;
    assert_eq!(line, "made-at-warn");

    // A reload to the misspelt level is refused and the audit trail keeps coming.
    std::fs::write(&cfg, toml("warning")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            served.count("`warning` is not a log level") >= 1
        })
        .await,
        "{:?}",
        served.logs.lock().unwrap()
    );
    let created = send(
        Method::POST,
        &served.url("/v1/api-keys"),
        &[("authorization", &bearer(&admin))],
        r#"{"name": "made-after-the-typo"}"#,
    )
    .await;
    assert_eq!(created.status, 201);
    assert!(
        eventually(Duration::from_secs(5), || async {
            served.count("made-after-the-typo") >= 1
        })
        .await
    );
}

/// `per_key_labels` is live both ways: switched on, requests are counted by key and each key's
/// expiry is exported; switched off by a reload, no series labelled by key is exported any
/// more (the registry keeps them; the scrape leaves them out).
#[tokio::test]
async fn per_key_labels_switch_on_and_off_live() {
    let g = start_gateway("[metrics]\nlisten = \"127.0.0.1:0\"\nper_key_labels = true\n").await;
    let _w = keygate::cli::serve::watch_config_file(
        g.gw.clone(),
        g.config_path.clone(),
        Duration::from_millis(100),
    );
    let (_, key) = g.create_key(keygate::keys::record::NewKey {
        name: "expiring".into(),
        expires_at: Some(keygate::time::Timestamp::now().plus(Duration::from_secs(86_400))),
        ..Default::default()
    });
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    let text = g.gw.metrics.render(&g.gw);
    assert!(
        text.lines()
            .any(|l| l.starts_with("keygate_requests_total{") && l.contains("key_id=\"key_")),
        "{text}"
    );
    assert!(
        text.contains("keygate_key_expiry_seconds{key_id=\"key_"),
        "{text}"
    );

    let original = std::fs::read_to_string(&g.config_path).unwrap();
    std::fs::write(
        &g.config_path,
        original.replace("per_key_labels = true", "per_key_labels = false"),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            !g.gw.config().metrics.per_key_labels
        })
        .await
    );
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    let text = g.gw.metrics.render(&g.gw);
    assert!(!text.contains("key_id="), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("keygate_requests_total{") && l.contains("status_class=\"2xx\"")),
        "the requests are still counted, without the key: {text}"
    );
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
}

/// The added-latency histogram's count and sum, from a scrape.
async fn added_latency(maddr: &str) -> (f64, f64) {
    let (_, raw) = scrape(maddr).await;
    let value = |name: &str| {
        raw.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("keygate_added_latency_seconds_count"),
        value("keygate_added_latency_seconds_sum"),
    )
}

/// Found by an outside probe: `keygate_added_latency_seconds` ("the time the gateway itself
/// spent") took a 504's whole wait on the upstream (3 s each), and a body timeout's wait on
/// the client, so an alert on the gateway's own cost fired on a slow upstream or client.
/// A request that ends waiting on the upstream adds the time before it was sent; one that
/// ends waiting on its client's body adds nothing known (no observation).
#[tokio::test]
async fn added_latency_never_counts_a_wait_on_the_upstream_or_the_client() {
    let mock = start_mock().await;
    let toml = format!(
        "[server]\nbody_read_timeout = \"200ms\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"slow\"\nurl = \"http://{}\"\nfirst_byte_timeout = \"800ms\"\n",
        mock.addr
    );
    let g = start_gateway_raw(mock, &toml).await;
    let maddr = serve_metrics(&g).await.to_string();
    let key = g.key();
    let auth = bearer(&key);
    let (count0, sum0) = added_latency(&maddr).await;
    for _ in 0..3 {
        let a = send(
            Method::POST,
            &g.url("/v1/chat/completions"),
            &[("authorization", &auth), ("x-mock-delay-ms", "2000")],
            CHAT,
        )
        .await;
        assert_eq!(a.status, 504);
    }
    let (count1, sum1) = added_latency(&maddr).await;
    assert_eq!(count1 - count0, 3.0);
    assert!(sum1 - sum0 < 0.2, "three 504s added {} s", sum1 - sum0);

    // A body that stops coming: 400 at the body timeout, whether the gateway reads it (a
    // model allowlist) or streams it on; the wait is not the gateway's. The body timeout is
    // shorter than the first-byte one: a streamed body's send is under both, and equal
    // timeouts raced (a 504 now and then under CI load).
    let (_, allowlisted) = g.create_key(keygate::keys::record::NewKey {
        name: "allowlisted".into(),
        models: vec!["llama-*".into()],
        ..Default::default()
    });
    for (i, k) in [&key, &allowlisted].into_iter().enumerate() {
        let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {k}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\""
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let n = s.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        let counted = eventually(Duration::from_secs(2), || async {
            scrape(&maddr).await.1.lines().any(|l| {
                l.starts_with("keygate_requests_total{")
                    && l.contains("code=\"invalid_request\"")
                    && l.ends_with(&format!(" {}", i + 1))
            })
        })
        .await;
        assert!(counted, "{}", scrape(&maddr).await.1);
    }
    let (_, sum2) = added_latency(&maddr).await;
    assert!(sum2 - sum1 < 0.05, "body timeouts added {} s", sum2 - sum1);
}

/// Found by an outside probe: a stream the upstream cut after its 200 head was counted in
/// `keygate_requests_total` with an empty code, while the access line said
/// `upstream_stream_broken`: a dashboard of failed requests by code did not see it.
#[tokio::test]
async fn a_stream_the_upstream_cut_is_counted_with_why() {
    let mock = start_mock().await;
    let toml = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"stalls\"\nurl = \"http://{}\"\nidle_timeout = \"300ms\"\n",
        mock.addr
    );
    let g = start_gateway_raw(mock, &toml).await;
    let maddr = serve_metrics(&g).await.to_string();
    let key = g.key();
    let body = r#"{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let cut = try_send(
        Method::POST,
        &g.url("/v1/chat/completions"),
        &[
            ("authorization", &bearer(&key)),
            ("x-mock-interval-ms", "2000"),
        ],
        body,
    )
    .await;
    assert!(cut.is_err(), "the stream ended cleanly");
    let counted = eventually(Duration::from_secs(2), || async {
        scrape(&maddr).await.1.lines().any(|l| {
            l.starts_with("keygate_requests_total{")
                && l.contains("status_class=\"2xx\"")
                && l.contains("code=\"upstream_idle_timeout\"")
                && l.ends_with(" 1")
        })
    })
    .await;
    assert!(counted, "{}", scrape(&maddr).await.1);
}
