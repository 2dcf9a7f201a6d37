//! The gateway with a million keys, as a process — the real binary, `keygate serve` — and what
//! the figures in the key-store and key-lifecycle issues measure:
//!
//! - its resident memory once the keys are loaded (VmRSS, and the peak VmHWM),
//! - what pages of `GET /v1/api-keys` cost it: time per request, and resident memory after
//!   a few hundred of them,
//! - how long a key-file edit that revokes one key takes to be served (write, the watcher,
//!   the reload that applies the one change), against the time the first load took.
//!
//! Not a criterion benchmark: one run, figures printed. Run: `cargo bench --bench key_scale`
//! (about a minute, ~2 GB of memory at the peak while the key file is written). Set
//! `KEYGATE_KEYS=100000` for another size, `KEYGATE_BIN=/path/to/keygate` to measure another
//! build (the load only: an older build answers the list with every key).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate::keys::file::{KeyFile, FILE_VERSION};
use keygate::keys::record::{hash_hex, KeyLimits, KeyRecord};
use keygate::keys::token as key;
use keygate::time::Timestamp;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn records(n: usize, admin_hash: &str) -> Vec<KeyRecord> {
    let now = Timestamp::now();
    let mut out = Vec::with_capacity(n);
    out.push(KeyRecord {
        id: "key_admin00000000000".into(),
        name: "bench-admin".into(),
        sha256: admin_hash.into(),
        last4: "abcd".into(),
        scopes: vec!["admin".into()],
        created_at: now,
        limits: KeyLimits {
            requests_per_minute: Some(1_000_000),
            ..KeyLimits::default()
        },
        ..KeyRecord::default()
    });
    for i in 1..n {
        let t = key::generate("sk_kg").unwrap();
        out.push(KeyRecord {
            id: format!("key_{i:016}"),
            name: format!("{}-{}", ["search", "ads", "batch-reindex"][i % 3], i % 5000),
            sha256: hash_hex(&t.hash),
            last4: t.last4,
            scopes: vec![],
            created_at: Timestamp(now.0 - 365 * 86_400 + (i as u64 * 31) % (365 * 86_400)),
            expires_at: (i % 4 == 0)
                .then(|| now.plus(Duration::from_secs((i as u64 % 90) * 86_400))),
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
    out
}

fn write_file(path: &std::path::Path, keys: Vec<KeyRecord>) -> Vec<KeyRecord> {
    let file = KeyFile {
        version: FILE_VERSION,
        keys,
    };
    let tmp = path.with_extension("tmp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
    serde_json::to_writer(&mut w, &file).unwrap();
    w.flush().unwrap();
    drop(w);
    std::fs::rename(&tmp, path).unwrap();
    file.keys
}

/// `(VmRSS, VmHWM)` of a process, in MB.
fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One HTTP/1.1 GET: status and body.
fn get(addr: SocketAddr, path: &str, key: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let status = std::str::from_utf8(&raw[9..12]).unwrap().parse().unwrap();
    (status, raw.split_off((head_end + 4).min(raw.len())))
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let n: usize = std::env::var("KEYGATE_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let bin = std::env::var("KEYGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_keygate").into());
    let dir = tempfile::tempdir().unwrap();
    let admin = key::generate("sk_kg").unwrap();
    let keys_path = dir.path().join("keys.json");
    let started = Instant::now();
    let keys = write_file(&keys_path, records(n, &hash_hex(&admin.hash)));
    let size = std::fs::metadata(&keys_path).unwrap().len();
    eprintln!(
        "{n} keys written ({:.0} MB) in {:.1}s",
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\npoll_interval = \"200ms\"\n[[upstream]]\nname = \"none\"\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();

    let started = Instant::now();
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(dir.path().join("gateway.toml"))
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    while get(addr, "/readyz", "").0 != 200 {
        std::thread::sleep(Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(300), "not ready");
    }
    let loaded = started.elapsed();
    let (rss_loaded, hwm_loaded) = rss(pid);
    println!(
        "serve: {n} keys ready in {:.2}s; VmRSS {rss_loaded:.0} MB, VmHWM {hwm_loaded:.0} MB",
        loaded.as_secs_f64()
    );

    if std::env::var_os("KEYGATE_BIN").is_some() {
        // Another build may not page its list: a million keys in one answer is not measured.
        let _ = child.kill();
        let _ = child.wait();
        return;
    }
    let mut after = String::new();
    for (name, query) in [
        ("default (20, newest first)", "/v1/api-keys".to_string()),
        ("limit=100", "/v1/api-keys?limit=100".into()),
        ("sort=name", "/v1/api-keys?sort=name&order=asc".into()),
        ("sort=last_used_at", "/v1/api-keys?sort=last_used_at".into()),
        (
            "meta=team:search&name_prefix=search-1",
            "/v1/api-keys?meta=team:search&name_prefix=search-1".into(),
        ),
        (
            "status=all&expiring_within=7d",
            "/v1/api-keys?status=all&expiring_within=7d".into(),
        ),
        (
            "after=<a key in the middle>",
            "/v1/api-keys?limit=100&after=key_0000000000500000".into(),
        ),
    ] {
        let mut times: Vec<f64> = (0..40)
            .map(|_| {
                let t = Instant::now();
                let (status, body) = get(addr, &query, &admin.plaintext);
                assert_eq!(status, 200, "{query}: {}", String::from_utf8_lossy(&body));
                after = format!("{} bytes", body.len());
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "page {name:<40} median {:6.1} ms, max {:6.1} ms ({after})",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    let (rss_paged, hwm_paged) = rss(pid);
    println!(
        "after 280 pages: VmRSS {rss_paged:.0} MB (+{:.1}), VmHWM {hwm_paged:.0} MB",
        rss_paged - rss_loaded
    );

    // One key revoked by an edit of the file.
    let victim = keys[n / 2].id.clone();
    let mut keys = keys;
    keys[n / 2].revoked_at = Some(Timestamp::now());
    let t = Instant::now();
    write_file(&keys_path, keys);
    let written = t.elapsed();
    loop {
        let (_, body) = get(addr, &format!("/v1/api-keys/{victim}"), &admin.plaintext);
        if String::from_utf8_lossy(&body).contains("\"status\":\"revoked\"") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the revoke never took effect"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (rss_after, hwm_after) = rss(pid);
    println!(
        "one key revoked in the file: served {:.2}s after the write began (the write {:.2}s; then the watcher, the parse and digest of every record, one apply); first load {:.2}s; VmRSS {rss_after:.0} MB, VmHWM {hwm_after:.0} MB",
        t.elapsed().as_secs_f64(),
        written.as_secs_f64(),
        loaded.as_secs_f64()
    );
    let _ = child.kill();
    let _ = child.wait();
}
