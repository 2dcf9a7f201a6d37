//! The shared key store (`[keys] store = "redis"`) as operators run it — a real
//! `redis-server` on a free loopback port and real `keygate serve` processes — and the
//! figures of the shared-store issue's "Measured" list:
//!
//! 1. propagation: an API write (create, PATCH, revoke) through replica A returns → the change
//!    is in force on B and C (each polled with the key itself, every ~1 ms);
//! 2. one change at 1k, 100k (and 1M) keys: written to the store → in force on the one
//!    replica, with `/metrics` showing it applied (`KeyIndex::apply`), not rebuilt;
//! 3. request latency (wrk, closed loop) during 10 changes/s for 10 s vs no changes, at the
//!    largest size run;
//! 4. Redis commands per proxied request (`INFO commandstats` around 10k requests).
//!
//! Not a criterion benchmark: one run, figures printed. Run: `cargo build --release && cargo
//! bench --bench key_store` (~1.5 minutes; ~4 with 1M). `KEYGATE_KEYS=1000,100000` picks the sizes (default
//! 1k and 100k; `KEYGATE_BIG=1` adds 1M), `KEYGATE_BIN=/path/to/keygate` another build.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use keygate::config::Config;
use keygate::keys::backend::Store;
use keygate::keys::file::{KeyFile, FILE_VERSION};
use keygate::keys::ops::Op;
use keygate::keys::record::{hash_hex, KeyLimits, KeyRecord};
use keygate::keys::token as key;
use keygate::time::Timestamp;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHAT: &str =
    r#"{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"hello there"}]}"#;
const MODEL: &str = "/v1/models";
const POLL_LIMIT: Duration = Duration::from_secs(10);
/// Seeded keys whose secrets the bench keeps: disabled, enabled, revoked by direct writes.
const VICTIMS: usize = 110;
/// Baseline and changes phases of item 3, alternated (the machine's noise hits both).
const ROUNDS: usize = 3;

type Http = Client<HttpConnector, Full<Bytes>>;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A child process killed (and reaped) when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server(port: u16) -> (Proc, redis::Client) {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let t = Instant::now();
    while client
        .get_connection()
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), client)
}

/// The records of a store of `n` keys: an admin key, a load key and `VICTIMS` keys whose
/// secrets are returned, the rest as `benches/key_scale.rs` makes them.
fn records(n: usize) -> (Vec<KeyRecord>, String, String, Vec<(String, String)>) {
    let now = Timestamp::now();
    let unlimited = KeyLimits {
        requests_per_minute: Some(1_000_000_000),
        max_in_flight: Some(10_000),
        ..KeyLimits::default()
    };
    let mut out = Vec::with_capacity(n);
    let mut secret = |i: usize, name: String, scopes: Vec<String>, limits: KeyLimits| {
        let t = key::generate("sk_kg").unwrap();
        out.push(KeyRecord {
            id: format!("key_{i:016}"),
            name,
            sha256: hash_hex(&t.hash),
            last4: t.last4,
            scopes,
            created_at: now,
            limits,
            rev: 1,
            ..KeyRecord::default()
        });
        t.plaintext
    };
    let admin = secret(0, "bench-admin".into(), vec!["admin".into()], unlimited);
    let load = secret(1, "bench-load".into(), vec![], unlimited);
    let victims = (2..2 + VICTIMS)
        .map(|i| {
            let s = secret(i, format!("victim-{i}"), vec![], unlimited);
            (format!("key_{i:016}"), s)
        })
        .collect();
    for i in out.len()..n {
        let t = key::generate("sk_kg").unwrap();
        out.push(KeyRecord {
            id: format!("key_{i:016}"),
            name: format!("{}-{}", ["search", "ads", "batch-reindex"][i % 3], i % 5000),
            sha256: hash_hex(&t.hash),
            last4: t.last4,
            created_at: Timestamp(now.0 - 365 * 86_400 + (i as u64 * 31) % (365 * 86_400)),
            expires_at: (i % 4 == 0).then(|| now.plus(Duration::from_secs(90 * 86_400))),
            metadata: if i % 3 == 0 {
                BTreeMap::from([("team".into(), ["search", "ads", "infra"][i % 9 / 3].into())])
            } else {
                BTreeMap::new()
            },
            description: (i % 10 == 0).then(|| format!("service account {i}")),
            rev: 1,
            ..KeyRecord::default()
        });
    }
    (out, admin, load, victims)
}

/// gateway.toml of one replica in redis mode (no `[cluster]`), in `dir`.
fn config(dir: &Path, redis_port: u16, mock: SocketAddr, metrics: u16) -> PathBuf {
    let p = dir.join("gateway.toml");
    std::fs::write(
        &p,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}/\"\n\
             [limits]\nrequests_per_minute = 1000000000\nfailed_auth_per_minute = 1000000000\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[[upstream]]\nname = \"mock\"\nurl = \"http://{mock}\"\n"
        ),
    )
    .unwrap();
    p
}

/// The address printed on a child's first stdout line ("… listening on http://ADDR").
fn listening(child: &mut Child) -> SocketAddr {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on http://"), "{line:?}");
    line.trim()
        .rsplit("http://")
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

struct Replica {
    _proc: Proc,
    pid: u32,
    /// Its snapshot's journal: the changes not yet folded into the snapshot file.
    journal: PathBuf,
    addr: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

/// `keygate serve` with a fresh directory (no snapshot: it resyncs from the store).
fn replica(bin: &str, redis_port: u16, mock: SocketAddr) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let mport = free_port();
    let cfg = config(dir.path(), redis_port, mock, mport);
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let addr = listening(&mut child);
    Replica {
        pid: child.id(),
        journal: dir.path().join("keys.json.journal"),
        _proc: Proc(child),
        addr,
        metrics: SocketAddr::from(([127, 0, 0, 1], mport)),
        _dir: dir,
    }
}

async fn call(c: &Http, m: Method, url: String, auth: &str, body: &str) -> (u16, Bytes) {
    let req = Request::builder()
        .method(m)
        .uri(url)
        .header("authorization", format!("Bearer {auth}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// What a key answers: `GET /v1/models` (200, 401) or, for the model check, a chat (403).
async fn answer(c: &Http, addr: SocketAddr, secret: &str, chat: bool) -> u16 {
    if chat {
        call(
            c,
            Method::POST,
            format!("http://{addr}/v1/chat/completions"),
            secret,
            CHAT,
        )
        .await
        .0
    } else {
        call(c, Method::GET, format!("http://{addr}{MODEL}"), secret, "")
            .await
            .0
    }
}

/// Polls `addr` until `secret` answers `want`, pausing 250 µs between polls (a tokio sleep
/// would round up to the next millisecond tick): the time since `since`, in ms.
async fn in_force(
    c: &Http,
    addr: SocketAddr,
    secret: &str,
    chat: bool,
    want: u16,
    since: Instant,
) -> f64 {
    loop {
        if answer(c, addr, secret, chat).await == want {
            return since.elapsed().as_secs_f64() * 1000.0;
        }
        assert!(
            since.elapsed() < POLL_LIMIT,
            "{addr}: never answered {want}"
        );
        tokio::task::block_in_place(|| std::thread::sleep(Duration::from_micros(250)));
    }
}

/// `in_force` on B and C at once, each on a task of its own.
async fn in_force_on(
    c: &Http,
    addrs: [SocketAddr; 2],
    secret: &str,
    chat: bool,
    want: u16,
    since: Instant,
) -> [f64; 2] {
    let polls = addrs.map(|addr| {
        let (c, secret) = (c.clone(), secret.to_string());
        tokio::spawn(async move { in_force(&c, addr, &secret, chat, want, since).await })
    });
    let [b, cc] = polls;
    [b.await.unwrap(), cc.await.unwrap()]
}

/// CPU time (user + system) of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the `(comm)` field: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Waits until the replica is quiet (under 4% of a core over half a second): what a start
/// or a burst of changes left running (the snapshot rewrite, an index compaction) is done
/// before a phase is measured.
async fn quiet(r: &Replica) {
    let t = Instant::now();
    let mut last = cpu_ticks(r.pid);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = cpu_ticks(r.pid);
        if now - last <= 2 {
            return;
        }
        last = now;
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "replica never quiet"
        );
    }
}

/// Waits until the replica folded the changes journaled so far into its snapshot (the
/// journal is back to its position line; `snapshot_interval`, 10 s) and is quiet: the
/// rewrite a phase of changes causes is not left to fall into the next baseline.
async fn settled(r: &Replica) {
    let t = Instant::now();
    while std::fs::read_to_string(&r.journal)
        .map(|j| j.lines().count() > 1)
        .unwrap_or(false)
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "journal never folded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    quiet(r).await;
}

/// One Prometheus series' value (the first line named `name`, labels or not).
async fn metric(c: &Http, r: &Replica, name: &str) -> f64 {
    let (_, body) = call(
        c,
        Method::GET,
        format!("http://{}/metrics", r.metrics),
        "",
        "",
    )
    .await;
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn store_version(redis: &redis::Client) -> f64 {
    let mut c = redis.get_connection().unwrap();
    let v: Option<u64> = redis::cmd("GET")
        .arg("{keygate:keys}:ver")
        .query(&mut c)
        .unwrap();
    v.unwrap_or(0) as f64
}

/// Waits until `r` serves and has applied the store's version.
async fn caught_up(c: &Http, r: &Replica, redis: &redis::Client) {
    let t = Instant::now();
    loop {
        let ready = call(c, Method::GET, format!("http://{}/readyz", r.addr), "", "")
            .await
            .0;
        if ready == 200
            && metric(c, r, "keygate_key_store_applied_version").await >= store_version(redis)
        {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "replica never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn summary(v: &mut [f64]) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        pct(v, 0.5),
        pct(v, 0.99),
        pct(v, 1.0),
        v.len()
    )
}

/// Writes the key file of `n` keys, empties Redis and pushes the file into it.
fn seed(
    bin: &str,
    dir: &Path,
    cfg: &Path,
    redis: &redis::Client,
    n: usize,
) -> (String, String, Vec<(String, String)>) {
    let (keys, admin, load, victims) = records(n);
    let file = dir.join(format!("seed-{n}.json"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    serde_json::to_writer(
        &mut w,
        &KeyFile {
            version: FILE_VERSION,
            keys,
        },
    )
    .unwrap();
    w.flush().unwrap();
    drop(w);
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut redis.get_connection().unwrap())
        .unwrap();
    let t = Instant::now();
    let out = Command::new(bin)
        .arg("--config")
        .arg(cfg)
        .args(["keys", "push", "--from"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "store seeded: {n} keys pushed with `keygate keys push --from FILE` in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    std::fs::remove_file(&file).unwrap();
    (admin, load, victims)
}

/// The direct writer: the store as the CLI opens it (no replica's API involved).
fn writer(cfg: &Path) -> (Arc<Store>, String) {
    let c = Config::load(cfg).unwrap();
    (Arc::new(Store::of(&c.keys).unwrap()), c.keys.prefix.clone())
}

async fn write(store: &Arc<Store>, prefix: &str, op: Op) {
    let (s, p) = (Arc::clone(store), prefix.to_string());
    tokio::task::spawn_blocking(move || s.apply(&op, &p, Timestamp::now()).unwrap())
        .await
        .unwrap();
}

fn sizes() -> Vec<usize> {
    let mut v: Vec<usize> = std::env::var("KEYGATE_KEYS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 100_000]);
    if std::env::var_os("KEYGATE_BIG").is_some_and(|v| v == "1") && !v.contains(&1_000_000) {
        v.push(1_000_000);
    }
    v.retain(|&n| n >= VICTIMS + 2);
    v
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let bin = std::env::var("KEYGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_keygate").into());
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let rport = free_port();
    let (_redis_proc, redis) = redis_server(rport);
    let mut mock_child = Command::new(&bin)
        .args(["mock", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mock = listening(&mut mock_child);
    let _mock = Proc(mock_child);
    let cfg = config(dir.path(), rport, mock, free_port());
    let c: Http = Client::builder(TokioExecutor::new()).build_http();

    propagation(&bin, &cfg, dir.path(), &redis, rport, mock, &c).await;

    let sizes = sizes();
    let mut last = None;
    for (i, &n) in sizes.iter().enumerate() {
        drop(last.take());
        let (admin, load, victims) = seed(&bin, dir.path(), &cfg, &redis, n);
        let t = Instant::now();
        let r = replica(&bin, rport, mock);
        caught_up(&c, &r, &redis).await;
        let ready = t.elapsed();
        quiet(&r).await;
        println!(
            "[2] {n} keys: one replica started from no snapshot, resynced and ready in {:.2}s (quiet after {:.1}s: the snapshot written, the index compacted)",
            ready.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        apply_time(&c, &r, &cfg, &redis, n, &admin, &victims[..40]).await;
        if i + 1 == sizes.len() {
            burst(&c, &r, &cfg, n, &load, &victims[40..]).await;
            redis_calls(&c, &r, &redis, &load).await;
        }
        last = Some(r);
    }
    println!("total {:.0}s", started.elapsed().as_secs_f64());
}

/// 1. Three replicas on a store of 1k keys; writes through A, polled on B and C.
async fn propagation(
    bin: &str,
    cfg: &Path,
    dir: &Path,
    redis: &redis::Client,
    rport: u16,
    mock: SocketAddr,
    c: &Http,
) {
    let (admin, _, _) = seed(bin, dir, cfg, redis, 1_000);
    let rs: Vec<Replica> = (0..3).map(|_| replica(bin, rport, mock)).collect();
    for r in &rs {
        caught_up(c, r, redis).await;
        quiet(r).await;
    }
    let (a, b, cc) = (&rs[0], &rs[1], &rs[2]);
    let (mut bs, mut cs, mut both, mut api, mut begun) = (vec![], vec![], vec![], vec![], vec![]);
    let mut not_on_a = 0;
    let api_url = |p: &str| format!("http://{}/v1/api-keys{p}", a.addr);
    for i in 0..70 {
        let limits = r#""limits":{"requests_per_minute":1000000000}"#;
        let body = format!(r#"{{"name":"prop-{i}",{limits}}}"#);
        // What each write does to the key's answer: 200 on GET /v1/models once created, 403
        // on a chat once its models exclude the chat's, 401 once revoked.
        let steps: [(Method, String, bool, u16); 3] = [
            (Method::POST, body, false, 200),
            (
                Method::PATCH,
                r#"{"models":["bench-other-model"]}"#.into(),
                true,
                403,
            ),
            (Method::DELETE, String::new(), false, 401),
        ];
        let mut id = String::new();
        let mut secret = String::new();
        for (m, body, chat, want) in steps {
            let path = if id.is_empty() {
                String::new()
            } else {
                format!("/{id}")
            };
            let t = Instant::now();
            let (status, answer_body) = call(c, m.clone(), api_url(&path), &admin, &body).await;
            assert!(
                status == 200 || status == 201,
                "{m} {status}: {}",
                String::from_utf8_lossy(&answer_body)
            );
            let returned = Instant::now();
            api.push((returned - t).as_secs_f64() * 1000.0);
            if id.is_empty() {
                let v: serde_json::Value = serde_json::from_slice(&answer_body).unwrap();
                id = v["id"].as_str().unwrap().into();
                secret = v["key"].as_str().unwrap().into();
            }
            let [tb, tc] = in_force_on(c, [b.addr, cc.addr], &secret, chat, want, returned).await;
            begun.push(tb.max(tc) + api[api.len() - 1]);
            if answer(c, a.addr, &secret, chat).await != want {
                not_on_a += 1;
            }
            bs.push(tb);
            cs.push(tc);
            both.push(tb.max(tc));
        }
    }
    println!("[1] propagation, 3 replicas, 1k keys, {} writes through A's API (create, PATCH models, DELETE revoke):", api.len());
    println!(
        "    API write on A (returns once in force on A): {}",
        summary(&mut api)
    );
    println!("    A returned -> in force on B: {}", summary(&mut bs));
    println!("    A returned -> in force on C: {}", summary(&mut cs));
    println!(
        "    A returned -> in force on B and C: {}",
        summary(&mut both)
    );
    println!(
        "    A's write begun -> in force on B and C: {}",
        summary(&mut begun)
    );
    println!("    not yet in force on A when its write returned: {not_on_a}");
}

/// 2. One replica at `n` keys: direct store writes -> in force there; API writes through it.
async fn apply_time(
    c: &Http,
    r: &Replica,
    cfg: &Path,
    redis: &redis::Client,
    n: usize,
    admin: &str,
    victims: &[(String, String)],
) {
    let names = [
        "keygate_key_index_rebuilds_total",
        "keygate_key_index_changes_applied_total",
        "keygate_key_store_changes_applied_total",
        "keygate_key_store_applied_version",
        "keygate_key_store_resyncs_total",
    ];
    let mut before = vec![];
    for m in names {
        before.push(metric(c, r, m).await);
    }
    let (store, prefix) = writer(cfg);
    let (mut direct, mut write_call, mut api) = (vec![], vec![], vec![]);
    for (id, secret) in &victims[..30] {
        for (op, want) in [
            (Op::Disable { id: id.clone() }, 401),
            (Op::Enable { id: id.clone() }, 200),
            (Op::Revoke { id: id.clone() }, 401),
        ] {
            let t = Instant::now();
            write(&store, &prefix, op).await;
            write_call.push(t.elapsed().as_secs_f64() * 1000.0);
            direct.push(in_force(c, r.addr, secret, false, want, t).await);
        }
    }
    for (i, (id, secret)) in victims[30..40].iter().enumerate() {
        let t = Instant::now();
        let url = format!("http://{}/v1/api-keys/{id}", r.addr);
        let (s, _) = call(c, Method::DELETE, url, admin, "").await;
        assert_eq!(s, 200, "revoke {i}");
        api.push(in_force(c, r.addr, secret, false, 401, t).await);
    }
    let mut after = vec![];
    for m in names {
        after.push(metric(c, r, m).await);
    }
    let writes = direct.len() + api.len();
    println!("[2] {n} keys, one replica, {writes} changes ({} direct store writes: disable, enable, revoke; {} DELETE through its API):", direct.len(), api.len());
    println!(
        "    store write call (HGET + write script): {}",
        summary(&mut write_call)
    );
    println!(
        "    store write begun -> in force on the replica (polled every ~250 µs): {}",
        summary(&mut direct)
    );
    println!(
        "    API revoke begun -> in force (answer waits for the replica's apply): {}",
        summary(&mut api)
    );
    let d: Vec<String> = names
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(m, (b, a))| format!("{m} {b} -> {a} (+{})", a - b))
        .collect();
    println!("    /metrics: {}", d.join("; "));
    println!("    store version now {}", store_version(redis));
}

/// Runs wrk against `r` for `secs` (POST chat, 4 connections): (p50 ms, p99 ms, req/s).
async fn wrk(r: &Replica, load: &str, script: &Path, secs: u32) -> (f64, f64, f64) {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c4", &format!("-d{secs}s"), "--latency", "-s"])
        .arg(script)
        .arg(format!("http://{}/v1/chat/completions", r.addr))
        .env("KEYGATE_LOAD_KEY", load);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("wrk is installed (/usr/bin/wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let ms = |label: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("{text}"));
        let v = line.split_whitespace().nth(1).unwrap();
        let (num, unit) = v.split_at(v.find(|ch: char| ch.is_ascii_alphabetic()).unwrap());
        let x: f64 = num.parse().unwrap();
        x * match unit {
            "us" => 0.001,
            "ms" => 1.0,
            "s" => 1000.0,
            _ => panic!("{v}"),
        }
    };
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    (ms("50%"), ms("99%"), rps)
}

/// 3. Request latency with no changes, then during 10 changes/s for 10 s.
async fn burst(
    c: &Http,
    r: &Replica,
    cfg: &Path,
    n: usize,
    load: &str,
    victims: &[(String, String)],
) {
    let script = cfg.with_file_name("chat.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{CHAT}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer \" .. os.getenv(\"KEYGATE_LOAD_KEY\")\n"
        ),
    )
    .unwrap();
    assert_eq!(answer(c, r.addr, load, true).await, 200);
    wrk(r, load, &script, 3).await; // warm-up, not reported
    let (store, prefix) = writer(cfg);
    let ids: Vec<String> = victims.iter().map(|v| v.0.clone()).collect();
    println!("[3] {n} keys, wrk -t1 -c4 -d10s --latency POST chat with one key, one replica; baseline and 10 changes/s (disable/enable by direct store writes) alternated:");
    let (mut base99, mut burst99, mut base50, mut burst50) = (0.0, 0.0, 0.0, 0.0);
    for round in 0..ROUNDS {
        settled(r).await;
        let (b50, b99, brps) = wrk(r, load, &script, 10).await;
        let before = metric(c, r, "keygate_key_store_changes_applied_total").await;
        let rebuilds = metric(c, r, "keygate_key_index_rebuilds_total").await;
        let (store, prefix, ids) = (Arc::clone(&store), prefix.clone(), ids.clone());
        let changer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for i in round * 100..round * 100 + 100 {
                tick.tick().await;
                let id = ids[i % ids.len()].clone();
                // Each id is disabled on one pass over the ids and enabled on the next.
                let op = if (i / ids.len()) % 2 == 0 {
                    Op::Disable { id }
                } else {
                    Op::Enable { id }
                };
                write(&store, &prefix, op).await;
            }
        });
        let (d50, d99, drps) = wrk(r, load, &script, 10).await;
        changer.await.unwrap();
        let applied = metric(c, r, "keygate_key_store_changes_applied_total").await - before;
        let rebuilt = metric(c, r, "keygate_key_index_rebuilds_total").await - rebuilds;
        println!("    round {}: baseline p50 {b50:.3} ms, p99 {b99:.3} ms, {brps:.0} req/s | changes p50 {d50:.3} ms, p99 {d99:.3} ms, {drps:.0} req/s ({applied} changes applied, {rebuilt} rebuilds) | p99 ratio {:.2}x", round + 1, d99 / b99);
        (base99, burst99, base50, burst50) =
            (base99 + b99, burst99 + d99, base50 + b50, burst50 + d50);
    }
    let k = ROUNDS as f64;
    println!(
        "    mean over {ROUNDS} rounds: baseline p50 {:.3} ms, p99 {:.3} ms; changes p50 {:.3} ms, p99 {:.3} ms; p99 during / baseline {:.2}x (target <= 1.2x), p50 {:.2}x",
        base50 / k,
        base99 / k,
        burst50 / k,
        burst99 / k,
        burst99 / base99,
        burst50 / base50
    );
}

fn commandstats(redis: &redis::Client) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.get_connection().unwrap())
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

fn delta(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0)))
        .filter(|(k, v)| *v > 0 && k != "info")
        .collect()
}

/// 4. Redis commands over 10k proxied requests, against an idle window as long.
async fn redis_calls(c: &Http, r: &Replica, redis: &redis::Client, load: &str) {
    const N: usize = 10_000;
    let s0 = commandstats(redis);
    let t = Instant::now();
    for _ in 0..N {
        assert_eq!(answer(c, r.addr, load, true).await, 200);
    }
    let took = t.elapsed();
    let s1 = commandstats(redis);
    tokio::time::sleep(took).await; // the idle window: the follower's own background commands
    let s2 = commandstats(redis);
    let (run, idle) = (delta(&s0, &s1), delta(&s1, &s2));
    let (rt, it) = (run.values().sum::<u64>(), idle.values().sum::<u64>());
    println!(
        "[4] {N} sequential POST chat through one replica (no [cluster]) in {:.1}s:",
        took.as_secs_f64()
    );
    println!("    Redis commands during the requests: {rt} {run:?}");
    println!("    Redis commands in an idle window as long: {it} {idle:?}");
    println!(
        "    per request: {:.4} (all), {:.4} (minus the idle window)",
        rt as f64 / N as f64,
        (rt as f64 - it as f64).max(0.0) / N as f64
    );
}
