//! The `keygate keys …` and `keygate check` commands, run as a user runs them: the real
//! binary, a fresh directory with its own `gateway.toml` and key file per test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::cli::CliEnv as Env;
use common::locked_dir::LockedDir;

use keygate::keys::file::KeyFile;
use keygate::keys::record::NewKey;
use keygate::keys::store::KeyStore;
use keygate::keys::token::{hash_token, Token};
use keygate::time::Timestamp;
use serde_json::Value;
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PREFIX: &str = "sk_kg";
const BIN: &str = env!("CARGO_BIN_EXE_keygate");

fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is not a string in {v}"))
}

fn string_set(v: &Value) -> HashSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Every scope `inference` stands for (reference: Scopes and routes).
const INFERENCE: [&str; 10] = [
    "models",
    "chat",
    "completions",
    "embeddings",
    "responses",
    "audio",
    "images",
    "moderations",
    "rerank",
    "tokenize",
];

fn ts(v: &Value) -> Timestamp {
    Timestamp::parse(v.as_str().unwrap_or_else(|| panic!("not a time: {v}"))).unwrap()
}

fn assert_near(got: Timestamp, want: Timestamp, slack: u64, what: &str) {
    assert!(
        got.0.abs_diff(want.0) <= slack,
        "{what}: got {got}, expected about {want}"
    );
}

/// `output` holds neither the plaintext nor any run of more than 4 characters of its secret.
fn assert_no_secret(output: &str, plaintext: &str, what: &str) {
    assert!(
        !output.contains(plaintext),
        "{what} printed the plaintext key"
    );
    let secret = &plaintext[PREFIX.len() + 1..];
    for w in secret.as_bytes().windows(5) {
        let w = std::str::from_utf8(w).unwrap();
        assert!(
            !output.contains(w),
            "{what} printed `{w}`, part of the secret beyond its last 4 characters:\n{output}"
        );
    }
}

fn mask(plaintext: &str) -> String {
    format!("{PREFIX}_…{}", &plaintext[plaintext.len() - 4..])
}

// ------------------------------------------------------------------------------ create

#[test]
fn create_json_prints_a_valid_key_and_stores_only_its_hash() {
    let env = Env::new();
    let v = env.create("x", &[]);
    for field in ["id", "name", "key", "scopes", "expires_at"] {
        assert!(v.get(field).is_some(), "`{field}` missing from {v}");
    }
    assert_eq!(s(&v, "name"), "x");
    assert!(keygate::keys::token::is_valid_id(s(&v, "id")), "{v}");
    assert!(
        v["expires_at"].is_null(),
        "no --expires-in means no expiry: {v}"
    );
    assert_eq!(string_set(&v["scopes"]), set(&INFERENCE), "default scopes");

    let key = s(&v, "key");
    let token =
        Token::parse(key, PREFIX).expect("the printed key parses and its checksum verifies");
    assert_eq!(token.hash(), hash_token(key));
    assert_eq!(key.len(), "sk_kg_".len() + 32 + 6);

    let text = env.key_text();
    let hash = hex::encode(hash_token(key));
    assert!(text.contains(&hash), "the key file holds the SHA-256 hex");
    assert_no_secret(&text, key, "the key file");
    let file = env.key_file();
    assert_eq!(file.keys.len(), 1);
    assert_eq!(file.keys[0].id, s(&v, "id"));
    assert_eq!(file.keys[0].sha256, hash);
    assert_eq!(file.keys[0].last4, key[key.len() - 4..]);

    let mode = fs::metadata(&env.keys).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode is {mode:o}");

    // A second key keeps the first, and the mode.
    let v2 = env.create("y", &[]);
    assert_ne!(s(&v2, "id"), s(&v, "id"));
    assert_ne!(s(&v2, "key"), key);
    assert_eq!(env.key_file().keys.len(), 2);
    let mode = fs::metadata(&env.keys).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode after a rewrite is {mode:o}");
}

#[test]
fn human_create_shows_the_key_once_and_lists_never_show_it() {
    let env = Env::new();
    let out = env.ok(&["keys", "create", "--name", "laptop"]);
    let line = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sk_kg_"))
        .unwrap_or_else(|| panic!("no key on a line of its own:\n{out}"));
    let key = line.to_string();
    Token::parse(&key, PREFIX).expect("printed key parses");
    assert_eq!(
        out.matches(&key).count(),
        1,
        "the key is printed once:\n{out}"
    );
    let lower = out.to_lowercase();
    assert!(
        lower.contains("only time")
            || lower.contains("shown once")
            || lower.contains("not be shown again"),
        "the output must say the key will not be shown again:\n{out}"
    );
    let id = env.key_file().keys[0].id.clone();
    assert!(
        out.contains(&id),
        "the output names the new key's id:\n{out}"
    );

    let masked = mask(&key);
    for args in [
        vec!["keys", "list"],
        vec!["keys", "list", "--json"],
        vec!["keys", "list", "--all"],
        vec!["keys", "show", &id],
        vec!["keys", "show", &id, "--json"],
        vec!["check"],
    ] {
        let out = env.ok(&args);
        assert_no_secret(&out, &key, &format!("`keygate {}`", args.join(" ")));
        if args[0] == "keys" {
            assert!(
                out.contains(&masked),
                "`keygate {}` shows the masked key {masked}:\n{out}",
                args.join(" ")
            );
        }
    }
    let list = env.json(&["keys", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["masked_key"], masked.as_str());
    let show = env.json(&["keys", "show", &id, "--json"]);
    assert_eq!(show["id"], id.as_str());
    assert_eq!(show["name"], "laptop");
    assert_eq!(show["status"], "active");
    assert!(
        show.get("key").is_none(),
        "show must not have a `key` field: {show}"
    );
}

#[test]
fn scopes_aliases_expiry_and_limits() {
    let env = Env::new();
    let before = Timestamp::now();
    let v = env.create(
        "svc",
        &[
            "--scopes",
            "chat,inference:read",
            "--expires-in",
            "90d",
            "--rpm",
            "60",
            "--tpm",
            "10000",
            "--max-in-flight",
            "3",
        ],
    );
    let after = Timestamp::now();
    assert_eq!(string_set(&v["scopes"]), set(&["chat", "models"]), "{v}");
    let expires = ts(&v["expires_at"]);
    assert!(
        expires.0 >= before.0 + 90 * 86_400 && expires.0 <= after.0 + 90 * 86_400,
        "expires_at {expires} is not 90 days after {before}"
    );
    assert_eq!(v["limits"]["requests_per_minute"], 60, "{v}");
    assert_eq!(v["limits"]["tokens_per_minute"], 10_000, "{v}");
    assert_eq!(v["limits"]["max_in_flight"], 3, "{v}");

    // What is stored is canonical, with the limits under `limits`.
    let file = env.key_file();
    let k = &file.keys[0];
    assert_eq!(
        set(&k.scopes.iter().map(String::as_str).collect::<Vec<_>>()),
        set(&["chat", "models"])
    );
    assert_eq!(k.limits.requests_per_minute, Some(60));
    assert_eq!(k.limits.tokens_per_minute, Some(10_000));
    assert_eq!(k.limits.max_in_flight, Some(3));
    assert_eq!(k.limits.burst, None);
    assert_eq!(k.expires_at, Some(expires));
    let raw: Value = serde_json::from_str(&env.key_text()).unwrap();
    assert_eq!(raw["keys"][0]["limits"]["requests_per_minute"], 60);
    assert_eq!(raw["keys"][0]["limits"]["max_in_flight"], 3);

    // Every alias of reference: Scopes and routes maps to its canonical scope.
    for (alias, want) in [
        ("inference:read", &["models"][..]),
        ("inference:write", &INFERENCE[..]),
        ("chat:read", &["chat"][..]),
        ("embeddings:read", &["embeddings"][..]),
        ("models:list", &["models"][..]),
        ("analytics:read", &["usage"][..]),
        ("inference", &INFERENCE[..]),
        ("admin", &["admin"][..]),
    ] {
        let v = env.create(alias, &["--scopes", alias]);
        assert_eq!(string_set(&v["scopes"]), set(want), "--scopes {alias}");
    }
}

#[test]
fn unknown_scope_is_refused_with_the_valid_ones() {
    let env = Env::new();
    let err = env.fails(&["keys", "create", "--name", "x", "--scopes", "chat,root"]);
    assert!(err.contains("root"), "stderr names the bad scope: {err}");
    for valid in [
        "models",
        "chat",
        "embeddings",
        "usage",
        "admin",
        "inference",
    ] {
        assert!(
            err.contains(valid),
            "stderr lists valid scope `{valid}`: {err}"
        );
    }
    // Nothing was written.
    if env.keys.exists() {
        assert!(env.key_file().keys.is_empty());
    }
}

// ------------------------------------------------------------------------------ rotate, revoke, list

#[test]
fn rotate_without_grace_retires_the_old_secret_now() {
    let env = Env::new();
    let v = env.create(
        "app",
        &[
            "--scopes",
            "chat,embeddings",
            "--rpm",
            "7",
            "--models",
            "llama-*",
        ],
    );
    let old = s(&v, "key").to_string();
    let id = s(&v, "id").to_string();

    let before = Timestamp::now();
    let r = env.json(&["keys", "rotate", &id, "--json"]);
    let after = Timestamp::now();
    let new = s(&r, "key").to_string();
    assert_ne!(new, old);
    Token::parse(&new, PREFIX).expect("rotated key parses");
    assert_eq!(r["id"], v["id"]);
    assert_eq!(r["name"], v["name"]);
    assert_eq!(string_set(&r["scopes"]), string_set(&v["scopes"]));
    assert_eq!(r["limits"], v["limits"]);
    assert_eq!(r["models"], v["models"]);
    assert_eq!(r["expires_at"], v["expires_at"]);

    let file = env.key_file();
    assert_eq!(file.keys.len(), 1);
    let k = &file.keys[0];
    assert_eq!(k.id, id);
    assert_eq!(k.sha256, hex::encode(hash_token(&new)));
    assert_eq!(k.limits.requests_per_minute, Some(7));
    assert_eq!(k.previous.len(), 1, "{k:?}");
    assert_eq!(k.previous[0].sha256, hex::encode(hash_token(&old)));
    let until = k.previous[0].valid_until;
    assert!(
        until >= before && until <= after,
        "valid_until {until} should be now ({before}..{after})"
    );
    let text = env.key_text();
    assert_no_secret(&text, &old, "the key file after rotation (old key)");
    assert_no_secret(&text, &new, "the key file after rotation (new key)");

    // The old secret no longer shows anywhere as current.
    let show = env.ok(&["keys", "show", &id]);
    assert!(show.contains(&mask(&new)), "{show}");
    assert_no_secret(&show, &new, "show after rotate");
}

#[test]
fn rotate_with_grace_keeps_the_old_secret_for_that_long() {
    let env = Env::new();
    let v = env.create("app", &[]);
    let old = s(&v, "key").to_string();
    let id = s(&v, "id").to_string();
    let now = Timestamp::now();
    let r = env.json(&["keys", "rotate", &id, "--grace", "24h", "--json"]);
    assert_ne!(s(&r, "key"), old);
    let k = &env.key_file().keys[0];
    assert_eq!(k.previous.len(), 1);
    assert_eq!(k.previous[0].sha256, hex::encode(hash_token(&old)));
    assert_near(
        k.previous[0].valid_until,
        now.plus(Duration::from_secs(86_400)),
        5,
        "valid_until",
    );

    // Human rotate prints the new key once and says what happens to the old one.
    let out = env.ok(&["keys", "rotate", &id, "--grace", "1h"]);
    let key = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sk_kg_"))
        .unwrap_or_else(|| panic!("no key on a line of its own:\n{out}"))
        .to_string();
    Token::parse(&key, PREFIX).unwrap();
    assert_eq!(out.matches(&key).count(), 1, "{out}");
    assert_eq!(env.key_file().keys[0].previous.len(), 2);
}

#[test]
fn revoke_hides_the_key_from_list_unless_all() {
    let env = Env::new();
    let a = env.create("keep", &[]);
    let b = env.create("drop", &[]);
    let (a_id, b_id) = (s(&a, "id").to_string(), s(&b, "id").to_string());
    let out = env.ok(&["keys", "revoke", &b_id]);
    assert!(out.contains(&b_id), "{out}");
    assert_no_secret(&out, s(&b, "key"), "revoke output");

    let show = env.json(&["keys", "show", &b_id, "--json"]);
    assert_eq!(show["status"], "revoked", "{show}");
    assert!(!show["revoked_at"].is_null(), "{show}");
    assert!(env.key_file().get(&b_id).unwrap().revoked_at.is_some());

    let ids = |v: Value| -> HashSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(env.json(&["keys", "list", "--json"])), set(&[&a_id]));
    assert_eq!(
        ids(env.json(&["keys", "list", "--json", "--all"])),
        set(&[&a_id, &b_id])
    );
    let human = env.ok(&["keys", "list"]);
    assert!(human.contains(&a_id) && !human.contains(&b_id), "{human}");
    let human = env.ok(&["keys", "list", "--all"]);
    assert!(human.contains(&a_id) && human.contains(&b_id), "{human}");
    assert!(human.contains("revoked"), "{human}");

    // A revoked key cannot be rotated back to life.
    env.fails(&["keys", "rotate", &b_id]);
}

#[test]
fn expiring_within_lists_only_keys_expiring_soon() {
    let env = Env::new();
    let soon = env.create("soon", &["--expires-in", "3d"]);
    let later = env.create("later", &["--expires-in", "30d"]);
    let never = env.create("never", &[]);
    let edge = env.create("edge", &["--expires-in", "6d23h"]);
    let revoked = env.create("revoked-soon", &["--expires-in", "1d"]);
    env.ok(&["keys", "revoke", s(&revoked, "id")]);

    let list = env.json(&["keys", "list", "--json", "--expiring-within", "7d"]);
    let ids: HashSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, set(&[s(&soon, "id"), s(&edge, "id")]), "{list}");
    let human = env.ok(&["keys", "list", "--expiring-within", "7d"]);
    assert!(human.contains(s(&soon, "id")), "{human}");
    assert!(!human.contains(s(&later, "id")), "{human}");
    assert!(!human.contains(s(&never, "id")), "{human}");
    let all = env.json(&["keys", "list", "--json"]);
    assert_eq!(all.as_array().unwrap().len(), 4);
}

// ------------------------------------------------------------------------------ errors

#[test]
fn unknown_ids_and_bad_durations_fail_with_a_reason() {
    let env = Env::new();
    let v = env.create("x", &[]);
    let id = s(&v, "id").to_string();
    let before = env.key_text();

    let missing = "key_0000000000000000";
    for args in [
        vec!["keys", "show", missing],
        vec!["keys", "show", missing, "--json"],
        vec!["keys", "rotate", missing],
        vec!["keys", "rotate", missing, "--json"],
        vec!["keys", "revoke", missing],
    ] {
        let err = env.fails(&args);
        assert!(
            err.contains(missing),
            "`keygate {}`: stderr names the id: {err}",
            args.join(" ")
        );
    }
    env.fails(&["keys", "show", "not-an-id"]);

    for args in [
        vec!["keys", "create", "--name", "y", "--expires-in", "soon"],
        vec!["keys", "create", "--name", "y", "--expires-in", ""],
        vec!["keys", "create", "--name", "y", "--expires-in", "90x"],
        vec!["keys", "rotate", &id, "--grace", "tomorrow"],
        vec!["keys", "list", "--expiring-within", "a week"],
    ] {
        let err = env.fails(&args);
        assert!(
            err.to_lowercase().contains("duration") || err.contains("invalid value"),
            "`keygate {}`: stderr says the duration is bad: {err}",
            args.join(" ")
        );
    }
    // Other refusals.
    env.fails(&["keys", "create", "--name", "  "]);
    env.fails(&["keys", "create", "--name", "y", "--rpm", "0"]);
    env.fails(&["keys", "create", "--name", "y", "--rpm", "lots"]);
    env.fails(&["keys", "create"]);
    // None of the failures touched the file.
    assert_eq!(env.key_text(), before);
}

#[test]
fn a_missing_key_file_is_an_empty_list_but_check_fails() {
    let env = Env::new();
    let list = env.json(&["keys", "list", "--json"]);
    assert_eq!(list, Value::Array(vec![]));
    let err = env.fails(&["check"]);
    assert!(err.contains("keys.json"), "{err}");
    let err = env.fails(&["keys", "show", "key_0000000000000000"]);
    assert!(err.contains("key_0000000000000000"), "{err}");
}

// ------------------------------------------------------------------------------ concurrency

#[test]
fn concurrent_creates_from_two_processes_all_land() {
    let env = Env::new();
    let env = &env;
    let per_thread = 100;
    let created: Vec<Vec<(String, String)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                scope.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let v = env.create(&format!("t{t}-{i}"), &[]);
                            (s(&v, "id").to_string(), s(&v, "key").to_string())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let file = env.key_file();
    assert_eq!(file.keys.len(), 2 * per_thread, "every create landed");
    let names: HashSet<&str> = file.keys.iter().map(|k| k.name.as_str()).collect();
    for t in 0..2 {
        for i in 0..per_thread {
            assert!(
                names.contains(format!("t{t}-{i}").as_str()),
                "t{t}-{i} lost"
            );
        }
    }
    for (id, key) in created.iter().flatten() {
        let k = file.get(id).unwrap();
        assert_eq!(k.sha256, hex::encode(hash_token(key)), "{id}");
    }
    let mode = fs::metadata(&env.keys).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

// ------------------------------------------------------------------------------ crash safety

/// A small deterministic generator, so a failing run can be repeated from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn spawn_create(env: &Env, name: &str) -> Child {
    // Into a pipe (its few hundred bytes fit its buffer): on /dev/null the secret would be
    // lost, and `create` refuses to make it.
    env.command(&["keys", "create", "--name", name, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect()
}

#[test]
fn a_writer_killed_at_any_point_leaves_the_old_or_the_new_file() {
    let env = Env::new();
    // A large file, so that a kill often lands in the middle of a write.
    let now = Timestamp::now();
    KeyStore::new(&env.keys)
        .update(|f| {
            for i in 0..2000 {
                f.create(
                    NewKey {
                        name: format!("bulk-{i}"),
                        scopes: vec!["chat".into(), "embeddings".into()],
                        models: vec!["llama-*".into()],
                        ..NewKey::default()
                    },
                    PREFIX,
                    now,
                )?;
            }
            Ok(())
        })
        .unwrap();
    let size = fs::metadata(&env.keys).unwrap().len();

    // How long an uninterrupted write takes here (median of 3): kills are spread over that.
    let mut took: Vec<u64> = (0..3)
        .map(|i| {
            let started = Instant::now();
            let status = spawn_create(&env, &format!("timing-{i}")).wait().unwrap();
            assert!(status.success());
            started.elapsed().as_micros() as u64
        })
        .collect();
    took.sort_unstable();
    let span_us = (took[1] * 6 / 5).max(15_000);

    let seed = std::env::var("KEYGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!(
        "crash test: file {size} bytes, one write {span_us} µs, seed {seed} (KEYGATE_CRASH_SEED)"
    );
    let mut rng = Rng(seed);

    let mut current = env.key_file();
    let (mut killed, mut completed, mut mid_write, mut landed_anyway) = (0, 0, 0, 0);
    for round in 0..200 {
        let mut child = spawn_create(&env, &format!("crash-{round}"));
        std::thread::sleep(Duration::from_micros(rng.below(span_us)));
        let _ = child.kill(); // SIGKILL; fails only if already reaped, which it is not
        let status = child.wait().unwrap();
        if status.success() {
            completed += 1;
        } else {
            killed += 1;
        }

        if !temp_files(env.dir.path()).is_empty() {
            mid_write += 1; // killed between creating the temp file and renaming it
        }
        let text = env.key_text();
        let after = KeyFile::parse(&text, &env.keys).unwrap_or_else(|e| {
            panic!("round {round} (seed {seed}): the key file is torn after a kill: {e}")
        });
        let n = current.keys.len();
        assert_eq!(
            after.keys[..n.min(after.keys.len())],
            current.keys[..n.min(after.keys.len())],
            "round {round}: existing keys changed"
        );
        match after.keys.len().checked_sub(n) {
            Some(0) => assert_eq!(after, current, "round {round}"),
            Some(1) => assert_eq!(
                after.keys[n].name,
                format!("crash-{round}"),
                "round {round}"
            ),
            _ => panic!("round {round}: {n} keys became {}", after.keys.len()),
        }
        if status.success() {
            assert_eq!(
                after.keys.len(),
                n + 1,
                "round {round}: a finished create landed"
            );
        } else if after.keys.len() == n + 1 {
            landed_anyway += 1; // killed after the rename
        }
        current = after;
    }
    eprintln!(
        "crash test: {killed} writers killed ({mid_write} with a temp file written, \
         {landed_anyway} after the rename), {completed} finished first"
    );
    assert!(
        killed >= 20,
        "only {killed} of 200 writers were killed before finishing: the test did not exercise crashes"
    );

    // Every key is still usable by a later writer, which also clears temp files left behind.
    let before = current.keys.len();
    let v = env.create("after-crashes", &[]);
    let file = env.key_file();
    assert_eq!(file.keys.len(), before + 1);
    assert!(file.get(s(&v, "id")).is_ok());
    assert_eq!(
        temp_files(env.dir.path()),
        Vec::<String>::new(),
        "stale temp files left"
    );
    let mode = fs::metadata(&env.keys).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

// ------------------------------------------------------------------------------ check

#[test]
fn check_accepts_a_good_file() {
    let env = Env::new();
    env.create("a", &[]);
    let b = env.create("b", &[]);
    env.ok(&["keys", "revoke", s(&b, "id")]);
    let c = env.create("c", &[]);
    env.ok(&["keys", "disable", s(&c, "id")]);
    let out = env.ok(&["check"]);
    assert!(out.to_lowercase().contains("ok"), "{out}");
    assert!(
        out.contains("3 keys: 1 active, 1 disabled, 0 expired, 1 revoked"),
        "{out}"
    );
}

#[test]
fn check_names_the_line_of_a_json_syntax_error() {
    let env = Env::new();
    env.create("a", &[]);
    env.create("b", &[]);
    let text = env.key_text();
    let truncated = &text[..text.len() * 2 / 3];
    fs::write(&env.keys, truncated).unwrap();
    let want = serde_json::from_str::<Value>(truncated).unwrap_err();
    let err = env.fails(&["check"]);
    assert!(
        err.contains(&format!("line {}", want.line()))
            && err.contains(&format!("column {}", want.column())),
        "stderr names line {} column {}: {err}",
        want.line(),
        want.column()
    );
    assert!(err.contains("keys.json"), "{err}");

    // A stray character in the middle of an otherwise whole file.
    let broken = text.replacen("\"name\"", "\"name\" x", 1);
    fs::write(&env.keys, &broken).unwrap();
    let want = serde_json::from_str::<Value>(&broken).unwrap_err();
    let err = env.fails(&["check"]);
    assert!(err.contains(&format!("line {}", want.line())), "{err}");

    // Well-formed JSON that is no key record: the record and its field are named.
    let at = text.rfind("\"created_at\":\"").unwrap() + "\"created_at\":\"".len();
    let bad_time = format!("{}yesterday{}", &text[..at], &text[at + 20..]);
    fs::write(&env.keys, &bad_time).unwrap();
    let err = env.fails(&["check"]);
    assert!(err.contains("keys[1].created_at: `yesterday`"), "{err}");

    fs::write(&env.keys, "").unwrap();
    env.fails(&["check"]);
    // Every other command refuses the broken file too, without rewriting it.
    fs::write(&env.keys, truncated).unwrap();
    env.fails(&["keys", "list"]);
    // Nothing on stdout a script could read as a (short) list: no header, no `[]`.
    for args in [&["keys", "list"][..], &["keys", "list", "--json"][..]] {
        let out = env.run(args);
        assert!(!out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{args:?}");
    }
    env.fails(&["keys", "create", "--name", "c"]);
    assert_eq!(env.key_text(), truncated);
}

#[test]
fn a_key_file_without_its_keys_field_is_refused_not_read_as_empty() {
    let env = Env::new();
    env.create("a", &[]);
    // One dropped field would otherwise be a file of no keys, refusing every client.
    fs::write(&env.keys, "{\"version\": 1}\n").unwrap();
    let err = env.fails(&["check"]);
    assert!(err.contains("missing field `keys`"), "{err}");
    env.fails(&["keys", "list"]);
    // An empty list, said so, is a file of no keys.
    fs::write(&env.keys, "{\"version\": 1, \"keys\": []}\n").unwrap();
    let out = env.ok(&["check"]);
    assert!(out.contains("0 keys"), "{out}");
}

#[test]
fn check_names_the_key_with_a_bad_field() {
    let env = Env::new();
    let a = env.create("a", &[]);
    let b = env.create("b", &["--scopes", "chat"]);
    let (a_id, b_id) = (s(&a, "id").to_string(), s(&b, "id").to_string());
    let good = env.key_text();
    let file = env.key_file();
    let b_sha = file.get(&b_id).unwrap().sha256.clone();

    let cases: Vec<(&str, String, &str, Vec<&str>)> = vec![
        (
            "short sha256",
            good.replace(&b_sha, &b_sha[..40]),
            &b_id,
            vec!["sha256"],
        ),
        (
            "non-hex sha256",
            good.replace(&b_sha, &format!("zz{}", &b_sha[2..])),
            &b_id,
            vec!["sha256"],
        ),
        (
            "unknown scope",
            good.replace("[\"chat\"]", "[\"root\"]"),
            &b_id,
            vec!["root"],
        ),
        (
            "duplicate id",
            good.replace(&a_id, &b_id),
            &b_id,
            vec!["duplicate"],
        ),
        (
            "bad last4",
            good.replacen("\"last4\":\"", "\"last4\":\"!", 1),
            &a_id,
            vec!["last4"],
        ),
        (
            "bad id",
            good.replace(&a_id, "key_short"),
            "key_short",
            vec!["id"],
        ),
        (
            "unknown field",
            good.replacen("\"name\":", "\"nmae\": \"x\", \"name\":", 1),
            "",
            vec!["nmae", "line"],
        ),
        (
            "a limit of 0",
            good.replacen("\"name\":", "\"limits\":{\"burst\":0},\"name\":", 1),
            &a_id,
            vec!["limits.burst"],
        ),
    ];
    for (what, text, names_id, words) in cases {
        assert_ne!(text, good, "{what}: the corruption changed nothing");
        fs::write(&env.keys, &text).unwrap();
        let err = env.fails(&["check"]);
        assert!(
            err.contains(names_id),
            "{what}: stderr names key {names_id}: {err}"
        );
        for w in words {
            assert!(err.contains(w), "{what}: stderr mentions `{w}`: {err}");
        }
    }
    fs::write(&env.keys, &good).unwrap();
    env.ok(&["check"]);
}

#[test]
fn check_names_the_line_of_an_unknown_config_key() {
    let env = Env::with_config("[keys]\nfile = \"keys.json\"\nfiel = \"other.json\"\n");
    let err = env.fails(&["check"]);
    assert!(err.contains("line 3") && err.contains("fiel"), "{err}");
    // The same refusal for every command that reads the config.
    let err = env.fails(&["keys", "list"]);
    assert!(err.contains("line 3"), "{err}");

    let env =
        Env::with_config("[keys]\nfile = \"keys.json\"\n\n[limits]\nrequests_per_minute = 0\n");
    let err = env.fails(&["check"]);
    assert!(err.contains("limits.requests_per_minute"), "{err}");

    let env = Env::with_config("[keys\nfile = \"keys.json\"\n");
    let err = env.fails(&["check"]);
    assert!(err.contains("line 1"), "{err}");

    let env = Env::new();
    let missing = env.dir.path().join("nope.toml");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}

#[test]
fn a_custom_prefix_from_the_config_is_used() {
    let env = Env::with_config("[keys]\nfile = \"keys.json\"\nprefix = \"acme_live\"\n");
    let v = env.create("x", &[]);
    let key = s(&v, "key");
    assert!(key.starts_with("acme_live_"), "{key}");
    Token::parse(key, "acme_live").unwrap();
    assert!(Token::parse(key, PREFIX).is_err());
    let list = env.ok(&["keys", "list"]);
    assert!(
        list.contains(&format!("acme_live_…{}", &key[key.len() - 4..])),
        "{list}"
    );
}

// ------------------------------------------------------------------------------ read-only store

#[test]
fn a_symlinked_key_file_is_read_only() {
    let env = Env::new();
    let v = env.create("mounted", &[]);
    let id = s(&v, "id").to_string();
    // Lay the file out as Kubernetes mounts a Secret: keys.json -> ..data/keys.json.
    let data = env.dir.path().join("..data");
    fs::create_dir(&data).unwrap();
    fs::rename(&env.keys, data.join("keys.json")).unwrap();
    std::os::unix::fs::symlink("..data/keys.json", &env.keys).unwrap();
    let before = fs::read_to_string(data.join("keys.json")).unwrap();

    for args in [
        vec!["keys", "create", "--name", "new"],
        vec!["keys", "rotate", &id],
        vec!["keys", "revoke", &id],
    ] {
        let err = env.fails(&args);
        assert!(
            err.to_lowercase().contains("read-only"),
            "`keygate {}`: stderr says the store is read-only: {err}",
            args.join(" ")
        );
    }
    assert!(
        fs::symlink_metadata(&env.keys)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link was replaced"
    );
    assert_eq!(fs::read_to_string(data.join("keys.json")).unwrap(), before);

    // Reading through the link works.
    let list = env.json(&["keys", "list", "--json"]);
    assert_eq!(list[0]["id"], id.as_str());
    env.ok(&["check"]);
}

/// Found by an outside probe: a key file whose directory no longer takes new files, beside
/// the lock file earlier writes left, failed with "cannot write key file" (through the API a
/// 500): the lock file still opened, and only the temp file was refused. It is read-only
/// (exit 1), the message names the directory, and nothing changes; without the lock file too.
#[test]
fn a_key_file_whose_directory_refuses_new_files_is_read_only() {
    let env = Env::new();
    let id = s(&env.create("kept", &[]), "id").to_string();
    let lock = env.dir.path().join("keys.json.lock");
    assert!(lock.exists(), "the create left its lock file");
    let before = env.key_text();
    let said = format!("its directory {} is not writable", env.dir.path().display());
    for with_lock in [true, false] {
        if !with_lock {
            fs::remove_file(&lock).unwrap();
        }
        let _locked = match LockedDir::lock(env.dir.path()) {
            Ok(l) => l,
            Err(why) => {
                eprintln!("skipped: no directory can refuse new files here: {why}");
                return;
            }
        };
        for args in [
            vec!["keys", "create", "--name", "new"],
            vec!["keys", "revoke", &id],
            vec!["keys", "update", &id, "--description", "d"],
        ] {
            let err = env.fails_with(1, &args);
            assert!(
                err.contains("read-only") && err.contains(&said),
                "`keygate {}` (lock file there: {with_lock}): {err}",
                args.join(" ")
            );
        }
        assert_eq!(env.key_text(), before, "nothing changed");
        env.ok(&["keys", "list"]);
    }
}

/// Found by an outside probe: a negative value (`--expires-in -1d`, `--limit -1`) was taken
/// for an unknown flag by the parser ("unexpected argument '-1' found"), without a word of
/// the flag it was given to. Each is refused naming its flag, as a usage error (exit 2).
#[test]
fn negative_values_are_refused_naming_their_flag() {
    let env = Env::new();
    let id = s(&env.create("x", &[]), "id").to_string();
    let before = env.key_text();
    for (args, flag) in [
        (
            vec!["keys", "create", "--name", "y", "--expires-in", "-1d"],
            "--expires-in",
        ),
        (
            vec!["keys", "create", "--name", "y", "--rpm", "-1"],
            "--rpm",
        ),
        (
            vec!["keys", "create", "--name", "y", "--tokens-per-day", "-5"],
            "--tokens-per-day",
        ),
        (vec!["keys", "rotate", &id, "--grace", "-1s"], "--grace"),
        (
            vec!["keys", "update", &id, "--expires-in", "-30d"],
            "--expires-in",
        ),
        (vec!["keys", "update", &id, "--burst", "-2"], "--burst"),
        (vec!["keys", "list", "--limit", "-1"], "--limit"),
        (
            vec!["keys", "list", "--expiring-within", "-7d"],
            "--expiring-within",
        ),
        (vec!["usage", "--since", "-7d"], "--since"),
    ] {
        let err = env.fails_with(2, &args);
        assert!(
            err.contains(flag) && err.contains("is negative") && !err.contains("unexpected"),
            "`keygate {}`: {err}",
            args.join(" ")
        );
    }
    // A flag followed by another flag instead of its value is still a usage error.
    let err = env.fails_with(
        2,
        &["keys", "create", "--name", "y", "--expires-in", "--json"],
    );
    assert!(err.contains("--expires-in"), "{err}");
    assert_eq!(env.key_text(), before, "nothing changed");
}

#[test]
fn an_expiry_or_grace_beyond_year_9999_is_refused_without_a_panic() {
    // Times are written as RFC 3339, which stops at 9999-12-31: a later time cannot be stored,
    // so it must be refused with a reason, not crash the command.
    let env = Env::new();
    let v = env.create("x", &[]);
    let id = s(&v, "id").to_string();
    let before = env.key_text();
    for args in [
        vec!["keys", "create", "--name", "y", "--expires-in", "100000y"],
        vec![
            "keys",
            "create",
            "--name",
            "y",
            "--expires-in",
            "500000000000y",
        ],
        vec!["keys", "rotate", &id, "--grace", "20000y"],
        vec!["keys", "rotate", &id, "--grace", "20000y", "--json"],
        // Found by an outside probe: an offset carried the time past 9999-12-31T23:59:59Z,
        // and it was stored clamped to that instant without a word.
        vec![
            "keys",
            "create",
            "--name",
            "y",
            "--expires-at",
            "9999-12-31T20:00:00-05:00",
        ],
        vec![
            "keys",
            "update",
            &id,
            "--expires-at",
            "9999-12-31T23:59:59-00:01",
        ],
    ] {
        let out = env.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && out.status.code() != Some(101),
            "`keygate {}` panicked instead of refusing: {stderr}",
            args.join(" ")
        );
        assert!(
            !out.status.success(),
            "`keygate {}` succeeded",
            args.join(" ")
        );
        assert!(stderr.contains("year"), "stderr says why: {stderr}");
    }
    assert_eq!(env.key_text(), before, "the key file changed");
    env.ok(&["check"]);
    // A time without a zone is refused, not read as UTC (hours off for whoever typed it).
    let err = env.fails_with(
        2,
        &[
            "keys",
            "create",
            "--name",
            "y",
            "--expires-at",
            "2099-01-01T00:00:00",
        ],
    );
    assert!(err.contains("no time zone"), "{err}");
    assert_eq!(env.key_text(), before, "the key file changed");
    let v = env.create("z", &["--expires-at", "2099-01-01T02:00:00+02:00"]);
    assert_eq!(s(&v, "expires_at"), "2099-01-01T00:00:00Z");
}

// ------------------------------------------------------------------------------ terminal safety

/// Whether `s` holds anything that drives a terminal: C0/C1 controls (but newline), DEL,
/// or bidirectional overrides.
fn has_terminal_control(s: &str) -> bool {
    s.chars().any(|c| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

#[test]
fn control_characters_are_refused_in_names_and_escaped_on_output() {
    let env = Env::new();
    let v = env.create("x", &[]);
    let id = s(&v, "id").to_string();
    let before = env.key_text();

    // Refused at the CLI, naming the flag, without echoing the control character.
    for name in [
        "evil\u{1b}[2J",
        "a\rb",
        "tab\there",
        "c1\u{9b}31m",
        "rtl\u{202e}gnp.exe",
    ] {
        let out = env.run(&["keys", "create", "--name", name]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name:?}: {stderr}");
        assert!(
            stderr.contains("`--name`") && stderr.contains("control character"),
            "{name:?}: {stderr}"
        );
        assert!(
            !has_terminal_control(&stderr),
            "{name:?}: raw in {stderr:?}"
        );
    }
    assert_eq!(env.key_text(), before, "nothing was written");

    // A hand-edited file is trusted, but what it holds reaches the terminal escaped.
    // Invisible characters too: the CLI and the API refuse them in new text, but a file
    // written before (a name, a glob, a description) still loads, and prints escaped.
    let evil = "evil\u{1b}]0;owned\u{7}\u{1b}[2J\r\u{9b}31m\u{202e}\u{200b}\u{2028}\u{ad}";
    let invisible = ['\u{200b}', '\u{2028}', '\u{ad}'];
    let mut file = env.key_file();
    file.keys[0].name = evil.to_string();
    file.keys[0].models = vec!["llama-\u{1b}\u{9b}5m*\u{feff}".into()];
    file.keys[0].description = Some("soft\u{ad}hyphen".into());
    fs::write(&env.keys, serde_json::to_string_pretty(&file).unwrap()).unwrap();

    for args in [
        vec!["keys", "list"],
        vec!["keys", "list", "--all"],
        vec!["keys", "show", &id],
        vec!["keys", "list", "--json"],
        vec!["keys", "show", &id, "--json"],
        vec!["keys", "rotate", &id],
        vec!["keys", "rotate", &id, "--json"],
        vec!["keys", "revoke", &id],
    ] {
        let out = env.ok(&args);
        assert!(
            !has_terminal_control(&out),
            "`keygate {}` printed a control character raw: {out:?}",
            args.join(" ")
        );
        assert!(
            !out.contains(invisible),
            "`keygate {}` printed an invisible character raw: {out:?}",
            args.join(" ")
        );
        if !args.contains(&"--json") {
            assert!(out.contains("evil\\u{1b}"), "{}: {out}", args.join(" "));
        }
    }
    // JSON stays exact: the escapes decode to the name as stored.
    let list = env.json(&["keys", "list", "--all", "--json"]);
    assert_eq!(list[0]["name"], evil);
    // So do errors that quote the file.
    let mut file = env.key_file();
    file.keys[0].id = "key_\u{1b}[2Jxxxxxxxxxxxx".into();
    fs::write(&env.keys, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let err = env.fails(&["check"]);
    assert!(!has_terminal_control(&err), "{err:?}");
}

// ------------------------------------------------------------------------------ what key commands need

#[test]
fn key_commands_do_not_need_the_upstream_credential() {
    let env = Env::with_config(
        "[keys]\nfile = \"keys.json\"\n[[upstream]]\nurl = \"http://127.0.0.1:9\"\n\
         api_key_env = \"KEYGATE_TEST_NEVER_SET\"\nca_file = \"missing-ca.pem\"\n",
    );
    let run = |args: &[&str]| {
        let mut c = env.command(args);
        c.env_remove("KEYGATE_TEST_NEVER_SET");
        c.output().unwrap()
    };
    let out = run(&["keys", "create", "--name", "x", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = s(&v, "id").to_string();
    for args in [
        vec!["keys", "list"],
        vec!["keys", "show", &id],
        vec!["keys", "rotate", &id],
        vec!["keys", "revoke", &id],
    ] {
        let out = run(&args);
        assert!(
            out.status.success(),
            "`keygate {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // `check` is where a missing credential must be reported.
    let text = fs::read_to_string(&env.config).unwrap();
    fs::write(
        &env.config,
        text.replace("ca_file = \"missing-ca.pem\"\n", ""),
    )
    .unwrap();
    let out = run(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("KEYGATE_TEST_NEVER_SET"), "{stderr}");
}

// ------------------------------------------------------------------------------ audit

#[test]
fn every_cli_change_is_audited_on_stderr_and_in_the_audit_file() {
    let env = Env::with_config(
        "[keys]\nfile = \"keys.json\"\n[log]\nformat = \"json\"\naudit_file = \"audit.log\"\n",
    );
    let audit_path = env.dir.path().join("audit.log");
    let mut ids = Vec::new();
    let mut stderr_records = Vec::new();
    let created = env.run(&["keys", "create", "--name", "audited", "--json"]);
    assert!(created.status.success());
    let id = s(&serde_json::from_slice(&created.stdout).unwrap(), "id").to_string();
    stderr_records.push(created.stderr);
    for args in [vec!["keys", "rotate", &id], vec!["keys", "revoke", &id]] {
        let out = env.run(&args);
        assert!(out.status.success());
        stderr_records.push(out.stderr);
    }
    for (stderr, action) in stderr_records.iter().zip(["created", "rotated", "revoked"]) {
        let stderr = String::from_utf8_lossy(stderr);
        let rec = stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["target"] == "keygate::audit")
            .unwrap_or_else(|| panic!("no audit record on stderr for {action}: {stderr}"));
        assert_eq!(rec["action"], action);
        assert_eq!(rec["key_id"], id.as_str());
        assert_eq!(rec["key_name"], "audited");
        assert!(s(&rec, "by").starts_with("cli:"), "{rec}");
        ids.push(rec["key_id"].clone());
    }
    let lines: Vec<Value> = fs::read_to_string(&audit_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, action) in lines.iter().zip(["created", "rotated", "revoked"]) {
        assert_eq!(line["action"], action);
        assert_eq!(line["key_id"], id.as_str());
        assert_eq!(line["key_name"], "audited");
        assert!(s(line, "by").starts_with("cli:"), "{line}");
        ts(&line["timestamp"]);
    }
    // Reading is not a change.
    env.ok(&["keys", "list"]);
    env.ok(&["keys", "show", &id]);
    assert_eq!(fs::read_to_string(&audit_path).unwrap().lines().count(), 3);

    // No audit trail, no change.
    let env = Env::with_config(
        "[keys]\nfile = \"keys.json\"\n[log]\naudit_file = \"no/such/dir/audit.log\"\n",
    );
    let err = env.fails(&["keys", "create", "--name", "unaudited"]);
    assert!(err.contains("audit"), "{err}");
    assert!(!env.keys.exists() || env.key_file().keys.is_empty());
}

// ------------------------------------------------------------------------------ owner and mode

#[test]
fn a_cli_rewrite_keeps_the_owner_and_mode_of_the_key_file() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let v = env.create("svc", &[]);
    let id = s(&v, "id").to_string();
    // The file belongs to the gateway's user (65534); the CLI runs as root.
    std::os::unix::fs::chown(&env.keys, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&env.keys, fs::Permissions::from_mode(0o640)).unwrap();
    for args in [
        vec!["keys", "create", "--name", "other"],
        vec!["keys", "rotate", &id],
        vec!["keys", "revoke", &id],
    ] {
        env.ok(&args);
        let m = fs::metadata(&env.keys).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (65534, 65534, 0o640),
            "after `keygate {}`",
            args.join(" ")
        );
    }
    assert_eq!(env.key_file().keys.len(), 2);
}

// ------------------------------------------------------------------------------ empty config

#[test]
fn check_warns_on_an_empty_config() {
    let env = Env::new();
    env.create("a", &[]);
    fs::write(&env.config, "# all defaults?\n\n").unwrap();
    let out = env.run(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("empty"),
        "{stderr}"
    );
    // A config that sets something is not warned about.
    fs::write(&env.config, "[keys]\nfile = \"keys.json\"\n").unwrap();
    let out = env.run(&["check"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

// ------------------------------------------------------------------------------ help, completions, exit codes

/// `keygate ARGS -h` for every command: every option, argument and subcommand has a line of
/// help.
#[test]
fn help_documents_every_command_and_flag() {
    let env = Env::new();
    let commands: [&[&str]; 12] = [
        &[],
        &["serve"],
        &["demo"],
        &["check"],
        &["mock"],
        &["completions"],
        &["keys"],
        &["keys", "create"],
        &["keys", "list"],
        &["keys", "show"],
        &["keys", "rotate"],
        &["keys", "revoke"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("-h");
        let out = env.ok(&args);
        let mut section = "";
        for line in out.lines() {
            if !line.starts_with(' ') {
                section = line; // a heading, or text that ends the section
                continue;
            }
            if !matches!(section, "Options:" | "Arguments:" | "Commands:") || line.trim().is_empty()
            {
                continue;
            }
            // "  --json   Print …": the entry, then at least two spaces, then its help.
            let entry = line.trim_start();
            let help = entry.split_once("  ").map(|(_, h)| h.trim()).unwrap_or("");
            assert!(
                !help.is_empty(),
                "`keygate {}` has no help for `{entry}`:\n{out}",
                args.join(" ")
            );
        }
    }
    // --scopes lists every scope with what it allows.
    let long = env.ok(&["keys", "create", "--help"]);
    for scope in keygate::keys::scope::Scope::ALL {
        let line = format!("{}: ", scope.name());
        assert!(
            long.lines()
                .any(|l| l.contains(&line) && l.contains(scope.description())),
            "--help lacks `{}` with its description:\n{long}",
            scope.name()
        );
    }
    assert!(long.contains("inference"), "{long}");
    // The exit codes are stated.
    let top = env.ok(&["--help"]);
    assert!(
        top.contains("Exit status") && top.contains("2 usage"),
        "{top}"
    );
}

#[test]
fn shell_completions_are_generated() {
    let env = Env::new();
    let bash = env.ok(&["completions", "bash"]);
    for word in [
        "keygate",
        "create",
        "rotate",
        "--scopes",
        "--expires-in",
        "embeddings",
    ] {
        assert!(bash.contains(word), "bash completion lacks `{word}`");
    }
    // The script loads in bash and registers a completion for keygate.
    let script = env.dir.path().join("keygate.bash");
    fs::write(&script, &bash).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p keygate",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("keygate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let zsh = env.ok(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef keygate"), "{zsh}");
    let fish = env.ok(&["completions", "fish"]);
    assert!(fish.contains("complete -c keygate"), "{fish}");
    let out = env.run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn usage_errors_exit_2_and_name_what_was_typed() {
    let env = Env::new();
    let v = env.create("x", &[]);
    let id = s(&v, "id").to_string();
    let before = env.key_text();
    let usage = |args: &[&str], needle: &str| {
        let out = env.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(2),
            "`keygate {}` is a usage error: {stderr}",
            args.join(" ")
        );
        assert!(
            stderr.contains(needle),
            "`keygate {}`: stderr names `{needle}`: {stderr}",
            args.join(" ")
        );
        assert!(!stderr.contains("key #"), "{stderr}");
    };
    usage(
        &["keys", "create", "--name", "y", "--rpm", "0"],
        "`--rpm` must be at least 1",
    );
    usage(
        &["keys", "create", "--name", "y", "--burst", "0"],
        "`--burst` must be at least 1",
    );
    usage(
        &["keys", "create", "--name", "y", "--tpm", "0"],
        "`--tpm` must be at least 1",
    );
    usage(
        &["keys", "create", "--name", "y", "--max-in-flight", "0"],
        "`--max-in-flight` must be at least 1",
    );
    usage(&["keys", "create", "--name", "  "], "`--name`");
    usage(
        &["keys", "create", "--name", "y", "--scopes", "root"],
        "--scopes",
    );
    usage(
        &["keys", "create", "--name", "y", "--models", "[x"],
        "`--models`",
    );
    usage(&["keys", "create", "--name", "y", "--rpm", "lots"], "--rpm");
    usage(
        &["keys", "create", "--name", "y", "--expires-in", "soon"],
        "--expires-in",
    );
    usage(
        &["keys", "create", "--name", "y", "--expires-in", "100000y"],
        "`--expires-in`",
    );
    usage(&["keys", "rotate", &id, "--grace", "20000y"], "`--grace`");
    usage(
        &["keys", "list", "--expiring-within", "a week"],
        "--expiring-within",
    );
    usage(&["keys", "show", "not-an-id"], "not-an-id");
    usage(&["keys", "create", "--nmae", "y"], "--nmae");
    usage(&["keys", "create"], "--name");
    assert_eq!(env.key_text(), before, "no usage error touched the file");

    // Everything else that fails is status 1.
    let runtime = |args: &[&str]| {
        let out = env.run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "`keygate {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    runtime(&["keys", "show", "key_0000000000000000"]);
    runtime(&["keys", "revoke", "key_0000000000000000"]);
    env.ok(&["keys", "revoke", &id]);
    runtime(&["keys", "rotate", &id]);
    fs::write(&env.keys, "{").unwrap();
    runtime(&["keys", "list"]);
    runtime(&["check"]);
}

/// Runs `keygate ARGS` with its stdout on `/dev/full`, where every write fails (ENOSPC).
fn to_full_disk(env: &Env, args: &[&str]) -> (Option<i32>, String) {
    let full = fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = env.command(args).stdout(full).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    (out.status.code(), err)
}

/// Found by an outside probe: `println!` panicked (exit 101) when stdout could not take the
/// output, after the change was saved: `keys rotate ID | a-tool-that-is-not-installed` lost
/// the new secret with a crash while the old one had already stopped, and `keys list >
/// backup.json` on a full disk exited 0 with an empty file. A failed write is now exit 1
/// with a message that says what was done and what to do.
#[test]
fn output_that_cannot_be_written_fails_and_says_what_was_done() {
    let env = Env::new();
    let kept = env.create("kept", &[]);
    let id = s(&kept, "id").to_string();

    let (code, err) = to_full_disk(&env, &["keys", "create", "--name", "lost", "--json"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("was created") && err.contains("keygate keys rotate key_"),
        "{err}"
    );
    assert!(
        env.key_file().keys.iter().any(|k| k.name == "lost"),
        "the change stands"
    );

    let (code, err) = to_full_disk(&env, &["keys", "rotate", &id]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("key {id} was rotated")), "{err}");
    assert!(
        err.contains("rotate it again") && err.contains("stopped working now"),
        "{err}"
    );

    for args in [
        &["keys", "update", &id, "--description", "x"][..],
        &["keys", "disable", &id][..],
        &["keys", "revoke", &id, "--json"][..],
    ] {
        let (code, err) = to_full_disk(&env, args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(&format!("key {id} was ")), "{args:?}: {err}");
    }
    assert!(env.record(&id).revoked_at.is_some());

    // Commands that only read fail too: a backup written to a full disk is not a success.
    for args in [
        &["keys", "list"][..],
        &["keys", "list", "--json", "--all"][..],
        &["keys", "show", &id][..],
        &["check"][..],
        &["completions", "bash"][..],
        &["usage", "--json"][..],
        &["--help"][..],
        &["keys", "--help"][..],
        &["--version"][..],
    ] {
        let (code, err) = to_full_disk(&env, args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains("could not be written"), "{args:?}: {err}");
    }
}

/// Found by an outside probe: with stdout closed (`>&-`) the runtime reopens it on
/// /dev/null, every write succeeds, and `create`/`rotate` exited 0 with the secret lost.
/// With stdout on /dev/null they refuse before making anything.
#[test]
fn a_secret_is_not_made_when_stdout_is_dev_null() {
    let env = Env::new();
    let kept = env.create("kept", &[]);
    let id = s(&kept, "id").to_string();
    let before = env.key_text();
    for args in [
        &["keys", "create", "--name", "lost"][..],
        &["keys", "rotate", &id, "--json"][..],
    ] {
        let out = env.command(args).stdout(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("stdout is /dev/null") && err.contains("nothing was changed"),
            "{err}"
        );
    }
    assert_eq!(env.key_text(), before, "a key was made or rotated");
    // Closed, as `>&-` closes it: the same.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" keys create --name closed --config \"$1\" >&-")
        .arg(common::binary::BIN)
        .arg(&env.config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.key_text(), before, "a key was made with stdout closed");
}

/// `serve` with a stdout nobody can write to (closed, full) serves: its address line is also
/// in the log. (`println!` panicked there before the listener ran.)
#[test]
fn serve_runs_with_a_stdout_that_cannot_be_written() {
    let env = Env::with_extra("[server]\nlisten = \"127.0.0.1:0\"\n");
    let full = fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut child = env
        .command(&["serve"])
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let mut addr = None;
    for line in std::io::BufRead::lines(stderr) {
        let line = line.unwrap();
        if line.contains("keygate listening") {
            addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .map(str::to_string);
            break;
        }
        seen.push(line);
    }
    let addr = addr.unwrap_or_else(|| panic!("no listening line: {seen:?}"));
    let health = std::net::TcpStream::connect(&addr).and_then(|mut s| {
        use std::io::{Read, Write};
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = health.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// Found by an outside probe: `--rpm 4294967296` was "not a whole number"; `keys push`
/// without the shared store, a configuration failure, exited 2 (a typing mistake's status);
/// the table padded every row to the longest name.
#[test]
fn small_cli_answers_say_what_is_wrong() {
    let env = Env::new();
    let v = env.create(&"n".repeat(200), &[]);
    let id = s(&v, "id").to_string();
    let err = env.fails_with(2, &["keys", "update", &id, "--rpm", "4294967296"]);
    assert!(err.contains("is too large"), "{err}");
    let err = env.fails_with(1, &["keys", "push"]);
    assert!(err.contains("store = \"redis\""), "{err}");
    let table = env.ok(&["keys", "list"]);
    assert!(table.contains(&format!("{}…", "n".repeat(40))), "{table}");
    assert!(!table.contains(&"n".repeat(41)), "{table}");
    // The JSON has the whole name.
    let all = env.json(&["keys", "list", "--json"]);
    assert_eq!(all[0]["name"].as_str().unwrap().len(), 200);
}

/// `--models` takes brace globs as the key file and the API do: a comma inside `{…}` is the
/// glob's, not the list's (`{llama` was refused as an invalid glob). The running gateway
/// admits the models the glob names and no other.
#[tokio::test]
async fn models_take_brace_globs_whose_commas_are_not_the_lists() {
    let mock = common::start_mock().await;
    let env = Env::with_extra(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nurl = \"http://{}\"\n",
        mock.addr
    ));
    let v = env.create("app", &["--models", "{llama,mistral}-*,qwen[,]x"]);
    let (id, key) = (s(&v, "id").to_string(), s(&v, "key").to_string());
    let globs = serde_json::json!(["{llama,mistral}-*", "qwen[,]x"]);
    assert_eq!(v["models"], globs);
    assert_eq!(env.show(&id)["models"], globs);
    let served = common::binary::serve(&env.config);
    for (model, status) in [("llama-3", 200), ("mistral-7b", 200), ("gpt-4", 403)] {
        let a = common::send(
            http::Method::POST,
            &served.url("/v1/chat/completions"),
            &[("authorization", &common::bearer(&key))],
            format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#),
        )
        .await;
        assert_eq!(a.status, status, "{model}");
    }

    let v = env.update(&id, &["--models", r"{a,b}-\{,c"]);
    assert_eq!(v["models"], serde_json::json!([r"{a,b}-\{", "c"]));
    // An unbalanced brace is a usage error that names the flag; nothing is written.
    let before = env.key_text();
    for bad in ["{llama,mistral-*", "llama}-*,x"] {
        for args in [
            vec!["keys", "create", "--name", "y", "--models", bad],
            vec!["keys", "update", &id, "--models", bad],
        ] {
            let err = env.fails_with(2, &args);
            assert!(err.contains("`--models`") && err.contains("brace"), "{err}");
        }
    }
    assert_eq!(env.key_text(), before);
}
