//! What one key-file write costs at 1k, 100k and 1M keys: `KeyStore::apply` (the streaming
//! write the CLI and the management API use: lock, read, validate every record, check
//! uniqueness, write each record's line, fsync, rename) for a create, an edit of the first and
//! of the last key, a disable, and an edit that changes nothing (read and checked, not
//! written); the whole-file `KeyStore::update` (every record parsed into memory first, as
//! every write did before) for comparison; and `keygate keys update` as a user runs it (the
//! process, its configuration, the same write). Medians of 5; also the file's size, the CLI's
//! peak RSS and, on stderr, where the time goes (parse and validate, uniqueness, serialise).
//!
//! Run: `cargo bench --bench key_write` (about 5 minutes on 2 cores, ~700 MB of disk in the
//! temp dir at 1M keys). `KEYGATE_BENCH_SIZES=1000,100000` picks the sizes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate::keys::ops::Op;
use keygate::keys::patch::{Edit, KeyPatch};
use keygate::keys::record::{hash_hex, KeyLimits, KeyRecord};
use keygate::keys::store::KeyStore;
use keygate::keys::token::hash_token;
use keygate::keys::writer::Writer;
use keygate::time::Timestamp;
use std::io::{BufWriter, Write};
use std::process::Command;
use std::time::{Duration, Instant};

const PREFIX: &str = "sk_kg";
const ROUNDS: usize = 5;

/// A file of `n` keys, as big per key as a typical one (~300 bytes: scopes, a model glob,
/// an expiry, a limit), written through the one writer.
fn write_file(path: &std::path::Path, n: usize) -> Vec<String> {
    let now = Timestamp::now();
    let out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut w = Writer::new(out).unwrap();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let rec = KeyRecord {
            id: format!("key_{i:016}"),
            name: format!("service-{i}"),
            sha256: hash_hex(&hash_token(&format!("sk_kg_bench{i}"))),
            last4: "ab12".into(),
            scopes: vec!["chat".into(), "embeddings".into(), "models".into()],
            models: vec!["llama-*".into()],
            created_at: now,
            expires_at: Some(now.plus(Duration::from_secs(90 * 86_400))),
            limits: KeyLimits {
                requests_per_minute: Some(120),
                ..KeyLimits::default()
            },
            rev: 1,
            ..KeyRecord::default()
        };
        w.record(&rec).unwrap();
        ids.push(rec.id);
    }
    w.finish().unwrap().flush().unwrap();
    ids
}

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[d.len() / 2]
}

fn time(mut f: impl FnMut()) -> Duration {
    median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn describe(id: &str, text: &str) -> Op {
    Op::Update {
        id: id.to_string(),
        patch: KeyPatch {
            description: Edit::Set(text.to_string()),
            ..KeyPatch::default()
        },
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let sizes: Vec<usize> = std::env::var("KEYGATE_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').map(|n| n.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| vec![1_000, 100_000, 1_000_000]);
    println!("| keys | file | create | edit first | edit last | disable | no-op edit | whole-file update | `keygate keys update` | its peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let ids = write_file(&path, n);
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, "[keys]\nfile = \"keys.json\"\n").unwrap();
        let store = KeyStore::new(&path);
        let now = Timestamp::now();
        let mut round = 0;
        let mut edit = |id: &str| {
            round += 1;
            store
                .apply(&describe(id, &format!("edit {round}")), PREFIX, now)
                .unwrap();
        };
        let (first, last) = (ids[0].clone(), ids[n - 1].clone());
        let edit_first = time(|| edit(&first));
        let edit_last = time(|| edit(&last));
        let create = time(|| {
            let new = keygate::keys::record::NewKey {
                name: "new".into(),
                ..Default::default()
            };
            store.apply(&Op::Create(new), PREFIX, now).unwrap();
        });
        let mut k = 0;
        let disable = time(|| {
            k += 1;
            let op = Op::Disable { id: ids[k].clone() };
            assert!(store.apply(&op, PREFIX, now).unwrap().changed);
        });
        let noop = time(|| {
            let done = store.apply(&describe(&first, "same"), PREFIX, now).unwrap();
            let _ = done; // the first round writes, the others change nothing
        });
        let whole = time(|| store.update(|_| Ok(())).unwrap());
        let mut c = 0;
        let cli = time(|| {
            c += 1;
            let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
                .args([
                    "keys",
                    "update",
                    &last,
                    "--description",
                    &format!("cli {c}"),
                ])
                .arg("--config")
                .arg(&config)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        });
        breakdown(&path);
        let rss = cli_peak_rss(&config, &last);
        let size = std::fs::metadata(&path).unwrap().len();
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {n} | {:.1} MB | {} | {} | {} | {} | {} | {} | {} | {rss} |",
            size as f64 / 1e6,
            ms(create),
            ms(edit_first),
            ms(edit_last),
            ms(disable),
            ms(noop),
            ms(whole),
            ms(cli)
        );
    }
}

/// The peak resident memory of one `keygate keys update` (GNU time's `%M`), when
/// `/usr/bin/time` is installed.
fn cli_peak_rss(config: &std::path::Path, id: &str) -> String {
    let out = Command::new("/usr/bin/time")
        .args([
            "-f",
            "%M",
            env!("CARGO_BIN_EXE_keygate"),
            "keys",
            "update",
            id,
        ])
        .args(["--description", "rss"])
        .arg("--config")
        .arg(config)
        .current_dir(config.parent().unwrap())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            let kb: f64 = stderr
                .lines()
                .last()
                .unwrap_or("0")
                .trim()
                .parse()
                .unwrap_or(0.0);
            format!("{:.0} MB", kb / 1024.0)
        }
        _ => "-".into(),
    }
}

/// Where a write's time goes (stderr): reading the text, parsing and validating every record,
/// the uniqueness check, serialising every record.
fn breakdown(path: &std::path::Path) {
    use keygate::keys::file::{read, Uniqueness};
    let t = Instant::now();
    let text = std::fs::read_to_string(path).unwrap();
    let read_text = t.elapsed();
    let t = Instant::now();
    let mut n = 0u32;
    read(path, &text, &mut |_| n += 1).unwrap();
    let parse = t.elapsed();
    let t = Instant::now();
    let mut unique = Uniqueness::with_capacity(n as usize);
    let mut ids = Vec::with_capacity(n as usize);
    let mut records = Vec::with_capacity(n as usize);
    read(path, &text, &mut |rec| {
        unique.add(ids.len() as u32, &rec);
        ids.push(rec.id.clone());
        records.push(rec);
    })
    .unwrap();
    let collect = t.elapsed();
    let t = Instant::now();
    unique.check(n, |p| ids[p as usize].as_str()).unwrap();
    let check = t.elapsed();
    let t = Instant::now();
    let mut out = Vec::with_capacity(text.len());
    let mut w = Writer::new(&mut out).unwrap();
    for r in &records {
        w.record(r).unwrap();
    }
    w.finish().unwrap();
    let serialise = t.elapsed();
    eprintln!(
        "{n} keys: read text {read_text:?}, parse+validate {parse:?}, parse+collect {collect:?}, uniqueness check {check:?}, serialise {serialise:?}"
    );
}
