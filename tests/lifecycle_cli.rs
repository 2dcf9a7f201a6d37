//! The key lifecycle from the command line, run as a user runs it (the real binary, a fresh
//! directory per test): `keys create` with descriptions, labels, quotas and an expiry time,
//! `keys update`, `keys disable` / `enable`, their refusals and audit records, concurrent
//! writers, the compact key file, and a running `keygate serve` following each change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::binary;
use common::cli::CliEnv as Env;
use keygate::keys::file::KeyFile;
use keygate::keys::record::{KeyRecord, NewKey};
use keygate::time::Timestamp;
use serde_json::{json, Value};
use std::fs;
use std::time::{Duration, Instant};

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

fn ts(v: &Value) -> Timestamp {
    Timestamp::parse(v.as_str().unwrap_or_else(|| panic!("not a time: {v}"))).unwrap()
}

#[test]
fn create_takes_a_description_labels_quotas_and_an_expiry_time() {
    let env = Env::new();
    let v = env.create(
        "svc",
        &[
            "--description",
            "search backend",
            "--meta",
            "team=search",
            "--meta",
            "env=prod",
            "--tokens-per-day",
            "1000",
            "--tokens-per-month",
            "20000",
            "--requests-per-day",
            "50",
            "--requests-per-month",
            "900",
            "--expires-at",
            "2099-05-06T07:08:09Z",
        ],
    );
    assert_eq!(v["description"], "search backend");
    assert_eq!(v["metadata"], json!({"team": "search", "env": "prod"}));
    assert_eq!(
        v["quotas"],
        json!({"tokens_per_day": 1000, "tokens_per_month": 20000,
               "requests_per_day": 50, "requests_per_month": 900})
    );
    assert_eq!(v["expires_at"], "2099-05-06T07:08:09Z");
    let rec = env.record(&id(&v));
    assert_eq!(rec.quotas.requests_per_month, Some(900));
    assert_eq!(rec.metadata["team"], "search");
    for (args, needle) in [
        (
            vec!["--tokens-per-day", "0"],
            "`--tokens-per-day` must be at least 1",
        ),
        (vec!["--meta", "Team=x"], "`--meta` has a label name `Team`"),
        (vec!["--meta", "novalue"], "novalue"),
        (
            vec!["--expires-at", "2001-01-01T00:00:00Z"],
            "`--expires-at` must be in the future",
        ),
        (
            vec!["--expires-in", "1d", "--expires-at", "2099-01-01T00:00:00Z"],
            "--expires-at",
        ),
        (vec!["--description", "a\u{7}b"], "`--description`"),
    ] {
        let mut all = vec!["keys", "create", "--name", "x"];
        all.extend(&args);
        let err = env.fails_with(2, &all);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn update_changes_each_field_and_keeps_the_name_and_secret() {
    let env = Env::new();
    let v = env.create(
        "svc",
        &[
            "--description",
            "first",
            "--meta",
            "team=search",
            "--rpm",
            "100",
        ],
    );
    let id = id(&v);
    let secret = env.record(&id).sha256;

    let u = env.update(&id, &["--description", "second"]);
    assert_eq!(u["description"], "second");
    let u = env.update(&id, &["--description", ""]);
    assert!(u["description"].is_null(), "'' removes the description");
    let u = env.update(&id, &["--meta", "env=prod", "--meta", "owner=ana"]);
    assert_eq!(
        u["metadata"],
        json!({"team": "search", "env": "prod", "owner": "ana"}),
        "--meta adds to the labels"
    );
    let u = env.update(&id, &["--unset-meta", "team", "--meta", "env=dev"]);
    assert_eq!(u["metadata"], json!({"env": "dev", "owner": "ana"}));
    let u = env.update(&id, &["--scopes", "chat,analytics:read"]);
    assert_eq!(u["scopes"], json!(["chat", "usage"]));
    let u = env.update(&id, &["--models", "llama-*,qwen*"]);
    assert_eq!(u["models"], json!(["llama-*", "qwen*"]));
    let u = env.update(&id, &["--models", ""]);
    assert_eq!(u["models"], json!([]), "'' allows every model");
    let u = env.update(
        &id,
        &[
            "--rpm",
            "50",
            "--burst",
            "5",
            "--tpm",
            "9000",
            "--max-in-flight",
            "2",
        ],
    );
    assert_eq!(
        u["limits"],
        json!({"requests_per_minute": 50, "burst": 5, "tokens_per_minute": 9000, "max_in_flight": 2})
    );
    let u = env.update(&id, &["--rpm", "none", "--burst", "none"]);
    assert_eq!(
        u["limits"],
        json!({"tokens_per_minute": 9000, "max_in_flight": 2})
    );
    let u = env.update(
        &id,
        &[
            "--tokens-per-day",
            "10",
            "--tokens-per-month",
            "20",
            "--requests-per-day",
            "30",
            "--requests-per-month",
            "40",
        ],
    );
    assert_eq!(
        u["quotas"],
        json!({"tokens_per_day": 10, "tokens_per_month": 20, "requests_per_day": 30, "requests_per_month": 40})
    );
    let u = env.update(
        &id,
        &["--tokens-per-day", "none", "--requests-per-month", "none"],
    );
    assert_eq!(
        u["quotas"],
        json!({"tokens_per_month": 20, "requests_per_day": 30})
    );

    // Expiry: set, extend, set a time, remove.
    // Between the clock before the command and after it.
    let expires_in = |arg: &str, secs: u64| {
        let before = Timestamp::now().0;
        let u = env.update(&id, &["--expires-in", arg]);
        let at = ts(&u["expires_at"]).0;
        assert!(
            (before + secs..=Timestamp::now().0 + secs).contains(&at),
            "{arg}: {at}"
        );
    };
    expires_in("2d", 2 * 86_400);
    expires_in("30d", 30 * 86_400);
    let u = env.update(&id, &["--expires-at", "2099-01-02T03:04:05Z"]);
    assert_eq!(u["expires_at"], "2099-01-02T03:04:05Z");
    let u = env.update(&id, &["--no-expiry"]);
    assert!(u["expires_at"].is_null());

    let shown = env.show(&id);
    assert_eq!(shown["name"], "svc");
    assert_eq!(shown["metadata"], json!({"env": "dev", "owner": "ana"}));
    let rec = env.record(&id);
    assert_eq!(rec.sha256, secret, "an edit never touches the secret");
    assert_eq!(rec.rev, 16, "created, then 15 edits");

    // Human output: one line per change, old → new.
    let out = env.ok(&["keys", "update", &id, "--description", "third"]);
    assert!(out.contains("description: null → \"third\""), "{out}");
    let out = env.ok(&["keys", "update", &id, "--description", "third"]);
    assert!(out.contains("nothing changed"), "{out}");
}

#[test]
fn update_refusals_name_what_was_typed_and_change_nothing() {
    let env = Env::new();
    let id = id(&env.create("svc", &[]));
    let before = fs::read(&env.keys).unwrap();
    for (args, needle) in [
        (vec!["--rpm", "0"], "`--rpm` must be at least 1"),
        (vec!["--burst", "many"], "many"),
        (
            vec!["--tokens-per-month", "0"],
            "`--tokens-per-month` must be at least 1",
        ),
        (vec!["--requests-per-day", "-3"], "-3"),
        (vec!["--meta", "Team=x"], "`--meta` has a label name `Team`"),
        (vec!["--meta", "novalue"], "novalue"),
        (vec!["--unset-meta", "Bad!"], "`--unset-meta` names `Bad!`"),
        (
            vec!["--meta", "a=1", "--unset-meta", "a"],
            "`--meta` sets the label `a`",
        ),
        (
            vec!["--expires-at", "2001-01-01T00:00:00Z"],
            "`--expires-at` must be in the future",
        ),
        (vec!["--expires-at", "soon"], "soon"),
        (vec!["--expires-in", "5d", "--no-expiry"], "--no-expiry"),
        (vec!["--expires-in", "nope"], "nope"),
        (vec!["--scopes", "root"], "root"),
        (vec!["--models", "[x"], "`--models`"),
        (vec!["--description", "a\u{7}b"], "`--description`"),
        (vec!["--name", "other"], "--name"),
        (vec![], "nothing to update"),
    ] {
        let mut all = vec!["keys", "update", &id];
        all.extend(&args);
        let err = env.fails_with(2, &all);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let err = env.fails_with(1, &["keys", "update", "key_0000000000000000", "--rpm", "5"]);
    assert!(err.contains("key_0000000000000000"), "{err}");
    let err = env.fails_with(2, &["keys", "update", "nokey", "--rpm", "5"]);
    assert!(err.contains("nokey"), "{err}");
    assert_eq!(fs::read(&env.keys).unwrap(), before, "nothing was written");
}

#[test]
fn disable_enable_and_a_final_revoke_from_the_cli() {
    let env = Env::new();
    let v = env.create("svc", &["--expires-in", "10d"]);
    let id = id(&v);
    let d = env.json(&["keys", "disable", &id, "--json"]);
    assert_eq!(d["status"], "disabled");
    let out = env.ok(&["keys", "disable", &id]);
    assert!(out.contains("already disabled"), "{out}");
    assert_eq!(env.show(&id)["disabled_at"], d["disabled_at"]);
    let e = env.json(&["keys", "enable", &id, "--json"]);
    assert_eq!(e["status"], "active");
    assert!(e["disabled_at"].is_null());

    // Rotation keeps the expiry.
    let r = env.json(&["keys", "rotate", &id, "--json"]);
    assert_eq!(r["expires_at"], v["expires_at"]);

    env.ok(&["keys", "revoke", &id]);
    let before = fs::read(&env.keys).unwrap();
    for (args, doing) in [
        (vec!["keys", "update", &id, "--rpm", "5"], "edited"),
        (vec!["keys", "disable", &id], "disabled"),
        (vec!["keys", "enable", &id], "enabled"),
        (vec!["keys", "rotate", &id], "rotated"),
    ] {
        let err = env.fails_with(1, &args);
        assert!(
            err.contains(&id) && err.contains(&format!("revoked and cannot be {doing}")),
            "{err}"
        );
    }
    assert_eq!(fs::read(&env.keys).unwrap(), before);
}

#[test]
fn cli_changes_are_audited_with_old_and_new() {
    let env = Env::with_extra("[log]\naudit_file = \"audit.log\"\n");
    let id = id(&env.create("svc", &["--rpm", "10"]));
    let out = env.run(&["keys", "update", &id, "--rpm", "20", "--meta", "team=ads"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("key updated") && stderr.contains("limits.requests_per_minute: 10 → 20"),
        "{stderr}"
    );
    env.ok(&["keys", "disable", &id]);
    env.fails_with(2, &["keys", "update", &id, "--rpm", "0"]);
    let text = fs::read_to_string(env.dir.path().join("audit.log")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[1]["action"], "updated");
    assert!(lines[1]["by"].as_str().unwrap().starts_with("cli:"));
    assert_eq!(
        lines[1]["changes"],
        json!([
            {"field": "limits.requests_per_minute", "old": 10, "new": 20},
            {"field": "metadata.team", "old": null, "new": "ads"},
        ])
    );
    assert_eq!(lines[2]["action"], "disabled");
    assert_eq!(lines[2]["changes"][0]["field"], "disabled_at");
}

#[test]
fn concurrent_updates_of_different_keys_from_two_processes_lose_nothing() {
    let env = Env::new();
    let ids = [id(&env.create("a", &[])), id(&env.create("b", &[]))];
    let per_key = 30;
    std::thread::scope(|scope| {
        for id in &ids {
            let env = &env;
            scope.spawn(move || {
                for i in 0..per_key {
                    let label = format!("l{i}=v{i}");
                    env.ok(&[
                        "keys",
                        "update",
                        id,
                        "--meta",
                        &label,
                        "--description",
                        &label,
                    ]);
                }
            });
        }
    });
    for id in &ids {
        let rec = env.record(id);
        assert_eq!(rec.metadata.len(), per_key, "{id}: {:?}", rec.metadata);
        assert_eq!(rec.rev, 1 + per_key as u64, "{id}");
        assert_eq!(rec.description.as_deref(), Some("l29=v29"));
    }
}

#[test]
fn an_old_pretty_printed_file_loads_and_the_first_write_makes_it_compact() {
    let env = Env::new();
    let mut file = KeyFile::empty();
    for name in ["a", "b", "c"] {
        let new = NewKey {
            name: name.into(),
            models: vec!["llama-*".into()],
            ..NewKey::default()
        };
        file.create(new, "sk_kg", Timestamp::now()).unwrap();
    }
    let pretty = serde_json::to_string_pretty(&file).unwrap();
    fs::write(&env.keys, &pretty).unwrap();
    let listed = env.json(&["keys", "list", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert!(env.ok(&["check"]).contains("3 keys"));
    // A change that changes nothing writes nothing.
    env.ok(&["keys", "enable", &file.keys[0].id]);
    assert_eq!(fs::read_to_string(&env.keys).unwrap(), pretty);

    env.ok(&[
        "keys",
        "update",
        &file.keys[1].id,
        "--description",
        "edited",
    ]);
    let text = fs::read_to_string(&env.keys).unwrap();
    assert!(
        text.len() < pretty.len(),
        "{} ≥ {}",
        text.len(),
        pretty.len()
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "one line a record:\n{text}");
    assert_eq!(lines[0], "{\"version\": 1, \"keys\": [");
    assert_eq!(lines[4], "]}");
    let after = KeyFile::parse(&text, &env.keys).unwrap();
    for (i, line) in lines[1..4].iter().enumerate() {
        let rec: KeyRecord = serde_json::from_str(line.trim_end_matches(',')).unwrap();
        assert_eq!(rec, after.keys[i]);
    }
    assert_eq!(after.keys[0], file.keys[0], "other records unchanged");
    assert_eq!(after.keys[2], file.keys[2]);
    assert_eq!(after.keys[1].description.as_deref(), Some("edited"));
    // Still one JSON document, as `jq` reads it.
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["keys"].as_array().unwrap().len(), 3);
}

/// POST a chat completion to `addr` with `key`: (status, error code, rate limit header), or
/// `None` when the gateway cut the connection instead of answering. That is what a request
/// gets when its key is disabled after the upstream's head arrived and before the body went
/// out: a disable ends the key's running requests, and the answer's status was already given.
async fn chat(addr: std::net::SocketAddr, key: &str) -> Option<(u16, String, Option<String>)> {
    let a = common::try_send(
        http::Method::POST,
        &format!("http://{addr}/v1/chat/completions"),
        &[("authorization", &common::bearer(key))],
        common::CHAT,
    )
    .await
    .ok()?;
    let code = if a.status == 200 {
        String::new()
    } else {
        a.error_code()
    };
    let limit = a.header("x-ratelimit-limit-requests").map(str::to_string);
    Some((a.status.as_u16(), code, limit))
}

/// Runs a CLI change, then waits (at most 10 s, a generous bound) until `accepted` holds for
/// a request through the running gateway; returns how long that took. Only a disable may
/// cut a request on its way (see `chat`).
async fn in_force(
    env: &Env,
    args: &[&str],
    addr: std::net::SocketAddr,
    key: &str,
    accepted: impl Fn(&(u16, String, Option<String>)) -> bool,
) -> Duration {
    env.ok(args);
    let started = Instant::now();
    loop {
        let got = chat(addr, key).await;
        match &got {
            Some(got) if accepted(got) => return started.elapsed(),
            Some(_) => {}
            None => assert_eq!(
                args[1],
                "disable",
                "a request was cut by `{}`",
                args.join(" ")
            ),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "`{}` not in force after 10 s: {got:?}",
            args.join(" ")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cli_edits_are_in_force_on_a_running_gateway() {
    let mock = common::start_mock().await;
    let env = Env::with_extra(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nurl = \"http://{}\"\n",
        mock.addr
    ));
    let v = env.create("app", &[]);
    let (id, key) = (id(&v), v["key"].as_str().unwrap().to_string());
    let served = binary::serve(&env.config);
    assert_eq!(chat(served.addr, &key).await.unwrap().0, 200);

    let mut took = Vec::new();
    took.push(
        in_force(&env, &["keys", "disable", &id], served.addr, &key, |r| {
            (r.0, r.1.as_str()) == (401, "disabled_api_key")
        })
        .await,
    );
    took.push(
        in_force(&env, &["keys", "enable", &id], served.addr, &key, |r| {
            r.0 == 200
        })
        .await,
    );
    took.push(
        in_force(
            &env,
            &["keys", "update", &id, "--models", "qwen*"],
            served.addr,
            &key,
            |r| r.1 == "model_not_allowed",
        )
        .await,
    );
    took.push(
        in_force(
            &env,
            &["keys", "update", &id, "--models", "", "--rpm", "7"],
            served.addr,
            &key,
            |r| r.0 == 200 && r.2.as_deref() == Some("7"),
        )
        .await,
    );
    eprintln!("CLI change to a request seeing it: {took:?}");
}

/// Found by an outside probe: with `[keys] reload = false` a running gateway never looks at
/// the key file again, yet `keys revoke` said "Running gateways refuse it as soon as they see
/// the change" and `keys update` "within a second by default". Each change now says that
/// running gateways must be restarted, which the gateway bears out: the revoked key works
/// until the restart and not after.
#[tokio::test]
async fn with_reload_off_changes_say_running_gateways_need_a_restart() {
    let mock = common::start_mock().await;
    let env = Env::with_extra(&format!(
        "reload = false\n[server]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nurl = \"http://{}\"\n",
        mock.addr
    ));
    let restart = "do not watch the key file (`[keys] reload = false` in this configuration)";
    let v = env.create("app", &[]);
    let (app, key) = (id(&v), v["key"].as_str().unwrap().to_string());
    let out = env.ok(&["keys", "create", "--name", "other"]);
    assert!(
        out.contains(restart) && out.contains("restart them"),
        "{out}"
    );
    let other = out
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .unwrap();
    let mut served = binary::serve(&env.config);
    assert_eq!(chat(served.addr, &key).await.unwrap().0, 200);

    let out = env.ok(&["keys", "revoke", &app]);
    assert!(
        out.contains(restart) && out.contains("restart them to make them refuse it"),
        "{out}"
    );
    assert!(!out.contains("as soon as"), "{out}");
    let out = env.ok(&["keys", "update", other, "--description", "d"]);
    assert!(
        out.contains(restart) && out.contains("restart them"),
        "{out}"
    );
    assert!(!out.contains("within a second"), "{out}");
    let out = env.ok(&["keys", "rotate", other]);
    assert!(
        out.contains(restart) && out.contains("restart them"),
        "{out}"
    );
    // What the CLI says is what the gateway does: polls and settling come and go, the key
    // keeps working; after a restart it is refused.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(chat(served.addr, &key).await.unwrap().0, 200);
    drop(served);
    served = binary::serve(&env.config);
    assert_eq!(chat(served.addr, &key).await.unwrap().1, "revoked_api_key");

    // With the default (`reload = true`) the words stay as they were.
    let watched = Env::new();
    let v = watched.create("w", &[]);
    let out = watched.ok(&["keys", "update", &id(&v), "--description", "d"]);
    assert!(
        out.contains("within a second") && !out.contains(restart),
        "{out}"
    );
    let out = watched.ok(&["keys", "revoke", &id(&v)]);
    assert!(
        out.contains("as soon as") && !out.contains(restart),
        "{out}"
    );
}

/// Waits (at most 10 s) until the running gateway accepts `key`: a newly rotated secret is
/// accepted once the gateway has read the rotation, so what comes after it is in force.
async fn until_accepted(addr: std::net::SocketAddr, key: &str) {
    let started = Instant::now();
    loop {
        let got = chat(addr, key).await;
        if got.as_ref().is_some_and(|g| g.0 == 200) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new secret not accepted after 10 s: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `keys rotate --grace 0s` after a rotation with a grace: every earlier secret stops, the
/// one still in its grace too (it kept working, until the fix, for the rest of its day).
#[tokio::test]
async fn a_rotation_without_grace_stops_every_earlier_secret_on_a_running_gateway() {
    let mock = common::start_mock().await;
    let env = Env::with_extra(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nurl = \"http://{}\"\n",
        mock.addr
    ));
    let v = env.create("app", &[]);
    let (id, s1) = (id(&v), v["key"].as_str().unwrap().to_string());
    let served = binary::serve(&env.config);
    assert_eq!(chat(served.addr, &s1).await.unwrap().0, 200);
    let rotate = |grace: &str| {
        env.json(&["keys", "rotate", &id, "--grace", grace, "--json"])["key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let s2 = rotate("24h");
    until_accepted(served.addr, &s2).await;
    assert_eq!(
        chat(served.addr, &s1).await.unwrap().0,
        200,
        "S1 in its grace"
    );
    let s3 = rotate("0s");
    until_accepted(served.addr, &s3).await;
    for (name, secret) in [("S1", &s1), ("S2", &s2)] {
        let got = chat(served.addr, secret).await.unwrap();
        assert_eq!(
            (got.0, got.1.as_str()),
            (401, "expired_api_key"),
            "{name} after `keys rotate --grace 0s`"
        );
    }
    let file = env.key_file();
    let now = Timestamp::now();
    assert!(
        file.keys[0].previous.iter().all(|p| p.valid_until <= now),
        "{:?}",
        file.keys[0].previous
    );
}

#[tokio::test]
async fn api_disable_and_enable_on_the_running_binary_apply_before_the_answer() {
    let mock = common::start_mock().await;
    let env = Env::with_extra(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nurl = \"http://{}\"\n",
        mock.addr
    ));
    let admin = env.create("admin", &["--scopes", "admin"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let v = env.create("app", &[]);
    let (id, key) = (id(&v), v["key"].as_str().unwrap().to_string());
    let served = binary::serve(&env.config);
    assert_eq!(chat(served.addr, &key).await.unwrap().0, 200);
    for (action, expect) in [
        ("disable", (401, "disabled_api_key")),
        ("enable", (200, "")),
    ] {
        let a = common::send(
            http::Method::POST,
            &served.url(&format!("/v1/api-keys/{id}/{action}")),
            &[("authorization", &common::bearer(&admin))],
            "",
        )
        .await;
        assert_eq!(a.status, 200, "{action}");
        // The very next request sees it: the change is in force when the answer comes.
        let got = chat(served.addr, &key).await.unwrap();
        assert_eq!((got.0, got.1.as_str()), expect, "{action}");
    }
}

/// `keys update | disable | enable -h`: every option and argument has a line of help, and
/// `keys -h` lists the three commands.
#[test]
fn help_documents_update_disable_and_enable() {
    let env = Env::new();
    for cmd in ["update", "disable", "enable"] {
        let out = env.ok(&["keys", cmd, "-h"]);
        let mut section = "";
        let mut entries = 0;
        for line in out.lines() {
            if !line.starts_with(' ') {
                section = line;
                continue;
            }
            if !matches!(section, "Options:" | "Arguments:") || line.trim().is_empty() {
                continue;
            }
            let entry = line.trim_start();
            let help = entry.split_once("  ").map(|(_, h)| h.trim()).unwrap_or("");
            assert!(
                !help.is_empty(),
                "`keys {cmd}` has no help for `{entry}`:\n{out}"
            );
            entries += 1;
        }
        assert!(entries >= 3, "{out}");
    }
    let update = env.ok(&["keys", "update", "--help"]);
    for flag in [
        "--description",
        "--meta",
        "--unset-meta",
        "--scopes",
        "--models",
        "--expires-in",
        "--expires-at",
        "--no-expiry",
        "--rpm",
        "--burst",
        "--tpm",
        "--max-in-flight",
        "--tokens-per-day",
        "--tokens-per-month",
        "--requests-per-day",
        "--requests-per-month",
    ] {
        assert!(update.contains(flag), "{flag}:\n{update}");
    }
    let keys = env.ok(&["keys", "-h"]);
    for cmd in ["update", "disable", "enable"] {
        assert!(
            keys.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{keys}"
        );
    }
}
