//! Webhook notifications (`[notify]`) through the real gateway and the real binary, to a
//! recording receiver on 127.0.0.1:0 (`common::receiver`): expiry thresholds (the usage clock
//! moved, not waited for), revokes and disables made with the CLI and the API, quotas used up,
//! retries of a failing receiver, the ledger across a restart, one sender among two gateways
//! on one Redis, the Slack form, HTTPS, and no secret anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::binary::{self, Served};
use common::receiver::{Receiver, Reply};
use common::*;
use http::Method;
use keygate::keys::record::{KeyQuotas, NewKey};
use keygate::ops::notify::Notifier;
use keygate::time::Timestamp;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const DAY: u64 = 86_400;
const WAIT: Duration = Duration::from_secs(15);

fn notify_section(r: &Receiver, extra: &str) -> String {
    format!("[notify]\nwebhook_url = \"{}\"\n{extra}", r.url())
}

/// An in-process gateway sending to `r`, with its notifier.
async fn gateway(r: &Receiver, extra: &str) -> (TestGateway, Notifier) {
    let g = start_gateway(&notify_section(r, extra)).await;
    let n = keygate::ops::notify::start(Arc::clone(&g.gw));
    (g, n)
}

fn at(secs_from_now: u64) -> Timestamp {
    Timestamp(Timestamp::now().0 + secs_from_now)
}

fn new_key(name: &str, expires_at: Option<Timestamp>) -> NewKey {
    NewKey {
        name: name.into(),
        expires_at,
        ..Default::default()
    }
}

/// Notifications waiting in a ledger file (0 when it does not exist yet).
fn pending_in(ledger: &Path) -> usize {
    std::fs::read(ledger)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["pending"].as_object().map(|o| o.len()))
        .unwrap_or(0)
}

fn ledger_of(g: &TestGateway) -> PathBuf {
    let mut p = g.gw.config().keys.state_file.clone().into_os_string();
    p.push(".notify");
    PathBuf::from(p)
}

/// Waits until `r` has what `cond` asks for.
async fn until(r: &Receiver, what: &str, cond: impl Fn(&Receiver) -> bool) {
    let ok = eventually(WAIT, || {
        let done = cond(r);
        async move { done }
    })
    .await;
    assert!(ok, "never {what}; received {:?}", r.events());
}

/// Waits until `r` has answered a notification about `key` with `status`. Called before
/// anything else is queued: the receiver's planned answers go to whatever comes first, and
/// the deliverer may pick another notification due at the same instant.
async fn answered(r: &Receiver, key: &str, status: u16) {
    until(r, &format!("a {status} for {key}"), |r| {
        r.received()
            .iter()
            .any(|x| x.key_id() == key && x.answered == status)
    })
    .await;
}

/// Makes the notifier of `g` look at the key set once more (a key expiring within the hour,
/// created), waits for that key's notification and for an empty queue: whatever that look
/// found has been sent by then, so counts taken now are final.
async fn settle(g: &TestGateway, r: &Receiver) {
    // An hour from the usage clock's now, which a test may have moved.
    let soon = Timestamp(g.gw.usage.clock.now().0 + 3_600);
    let (id, _) = g.create_key(new_key("marker", Some(soon)));
    until(r, "the marker", |r| r.count("key.expiring", &id) == 1).await;
    let ledger = ledger_of(g);
    assert!(eventually(WAIT, || async { pending_in(&ledger) == 0 }).await);
}

/// Neither a key's plaintext nor a hash of the key file is in any request `r` got.
fn assert_no_secret(r: &Receiver, keys_json: &Path, plaintexts: &[&str]) {
    let file: Value = serde_json::from_slice(&std::fs::read(keys_json).unwrap()).unwrap();
    let hashes: Vec<String> = file["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["sha256"].as_str().unwrap().to_string())
        .collect();
    assert!(!hashes.is_empty());
    for got in r.received() {
        let text = format!("{:?} {}", got.headers, String::from_utf8_lossy(&got.body));
        for secret in hashes
            .iter()
            .map(String::as_str)
            .chain(plaintexts.iter().copied())
        {
            assert!(!text.contains(secret), "a secret in {text}");
        }
    }
}

fn counter(g: &TestGateway, event: &str, result: &str) -> f64 {
    let text = g.gw.metrics.render(&g.gw);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "keygate_notifications_total"
                && s.labels.get("event") == Some(event)
                && s.labels.get("result") == Some(result)
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no series for {event} {result}"))
}

async fn api(g: &TestGateway, admin: &str, method: Method, path: &str) -> Answer {
    send(
        method,
        &g.url(path),
        &[("authorization", &bearer(admin))],
        "",
    )
    .await
}

// ---- the real binary ----

/// A directory with `gateway.toml` (listening on a free port, keys.json beside it) and the
/// CLI run against it.
struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    fn new(toml: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            format!("[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nfile = \"keys.json\"\npoll_interval = \"100ms\"\n[[upstream]]\nurl = \"http://127.0.0.1:9\"\n{toml}"),
        )
        .unwrap();
        Env { dir, config }
    }

    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys.json")
    }

    fn ledger(&self) -> PathBuf {
        self.dir.path().join("keys.json.state.notify")
    }

    /// `keygate --config … ARGS --json`: its JSON.
    fn cli(&self, args: &[&str]) -> Value {
        let out = Command::new(binary::BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "keygate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A new key (`keys create --name NAME ARGS`): (id, plaintext).
    fn create(&self, name: &str, args: &[&str]) -> (String, String) {
        let mut all = vec!["keys", "create", "--name", name];
        all.extend_from_slice(args);
        let v = self.cli(&all);
        (
            v["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        )
    }

    fn serve(&self) -> Served {
        binary::serve(&self.config)
    }

    /// As `settle`, through the CLI.
    async fn settle(&self, r: &Receiver) {
        let (id, _) = self.create("marker", &["--expires-in", "1h"]);
        until(r, "the marker", |r| r.count("key.expiring", &id) == 1).await;
        let ledger = self.ledger();
        assert!(eventually(WAIT, || async { pending_in(&ledger) == 0 }).await);
    }
}

/// Waits until the binary has logged a line with `needle` (its log writer batches).
async fn logged(s: &Served, needle: &str) {
    let ok = eventually(WAIT, || {
        let n = s.count(needle);
        async move { n > 0 }
    })
    .await;
    assert!(ok, "never logged {needle:?}: {:?}", s.logs.lock().unwrap());
}

fn stop(mut s: Served) {
    sigterm(&s.child);
    s.child.wait().unwrap();
}

#[tokio::test]
async fn keys_near_expiry_are_notified_once_at_the_smallest_threshold_they_are_within() {
    let r = Receiver::start().await;
    let env = Env::new(&notify_section(&r, ""));
    let (six, six_key) = env.create(
        "six-days",
        &[
            "--expires-in",
            "6d",
            "--description",
            "nightly",
            "--meta",
            "team=search",
        ],
    );
    let (two, two_key) = env.create("two-days", &["--expires-in", "2d"]);
    let (half, half_key) = env.create("twelve-hours", &["--expires-in", "12h"]);
    let (month, _) = env.create("a-month", &["--expires-in", "30d"]);
    let (never, _) = env.create("never", &[]);
    let served = env.serve();
    until(&r, "three expiry notifications", |r| {
        r.delivered().len() >= 3
    })
    .await;
    env.settle(&r).await;
    let days = |id: &str| {
        r.delivered()
            .iter()
            .filter(|g| g.key_id() == id)
            .map(|g| g.json()["days_left"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(days(&six), [7]);
    assert_eq!(days(&two), [3]);
    assert_eq!(days(&half), [1]);
    assert!(days(&month).is_empty() && days(&never).is_empty());
    assert_eq!(
        r.delivered().len(),
        4,
        "three and the marker: {:?}",
        r.events()
    );

    let got = r
        .delivered()
        .into_iter()
        .find(|g| g.key_id() == six)
        .unwrap();
    assert_eq!(got.path, "/hook/T0/SECRETPATH");
    assert_eq!(got.headers["content-type"], "application/json");
    assert!(got.headers["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("keygate/"));
    assert!(got.headers.get("authorization").is_none());
    let v = got.json();
    assert_eq!(v["event"], "key.expiring");
    assert!(v["id"]
        .as_str()
        .unwrap()
        .starts_with(&format!("key.expiring/{six}/7/")));
    assert!(Timestamp::parse(v["at"].as_str().unwrap()).is_ok());
    let k = &v["key"];
    assert_eq!(k["name"], "six-days");
    assert_eq!(k["description"], "nightly");
    assert_eq!(k["metadata"], serde_json::json!({"team": "search"}));
    assert_eq!(k["status"], "active");
    assert_eq!(
        k["masked_key"],
        format!("sk_kg_…{}", &six_key[six_key.len() - 4..])
    );
    let expires = Timestamp::parse(k["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires.0.abs_diff(at(6 * DAY).0) < 120, "{expires}");
    assert!(v["gateway"].is_object());
    assert!(v.get("quota").is_none());
    assert_no_secret(&r, &env.keys(), &[&six_key, &two_key, &half_key]);
    stop(served);
}

#[tokio::test]
async fn thresholds_follow_the_clock_and_an_extended_expiry_is_notified_again() {
    let r = Receiver::start().await;
    let (g, n) = gateway(&r, "").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, _) = g.create_key(new_key("ci", Some(at(6 * DAY))));
    let days = || {
        r.delivered()
            .iter()
            .filter(|x| x.key_id() == id)
            .map(|x| x.json()["days_left"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    until(&r, "the 7-day notification", |_| days() == [7]).await;
    // Four days on, two are left: within 3.
    g.gw.usage.clock.advance(Duration::from_secs(4 * DAY));
    n.look_now();
    until(&r, "the 3-day notification", |_| days() == [7, 3]).await;
    // A day and a half more: within 1.
    g.gw.usage.clock.advance(Duration::from_secs(DAY + DAY / 2));
    n.look_now();
    until(&r, "the 1-day notification", |_| days() == [7, 3, 1]).await;
    // Extended by ten days (from the system's now, 5.5 days behind the clock): 4.5 days
    // left, a new expiry within 7.
    let a = send(
        Method::PATCH,
        &g.url(&format!("/v1/api-keys/{id}")),
        &[("authorization", &bearer(&admin))],
        r#"{"expires_in_days": 10}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    until(&r, "the new expiry's notification", |_| {
        days() == [7, 3, 1, 7]
    })
    .await;
    let last = r
        .delivered()
        .into_iter()
        .filter(|x| x.key_id() == id)
        .last()
        .unwrap();
    assert_eq!(
        last.json()["key"]["expires_at"],
        a.json()["expires_at"],
        "about the new expiry"
    );
    n.look_now();
    settle(&g, &r).await;
    assert_eq!(days(), [7, 3, 1, 7], "each once");
    assert_eq!(
        counter(&g, "key.expiring", "sent"),
        5.0,
        "four and the marker"
    );
}

#[tokio::test]
async fn revoke_and_disable_from_the_cli_notify_once_each_and_old_revokes_not_at_all() {
    let r = Receiver::start().await;
    let env = Env::new(&notify_section(&r, ""));
    let (a, a_key) = env.create("to-disable", &[]);
    let (b, b_key) = env.create("to-revoke", &[]);
    let (old, _) = env.create("revoked-long-ago", &[]);
    // Revoked two days ago, by hand: no news any more.
    let keys = std::fs::read_to_string(env.keys()).unwrap();
    let two_days_ago = Timestamp(Timestamp::now().0 - 2 * DAY);
    let mut file: Value = serde_json::from_str(&keys).unwrap();
    for k in file["keys"].as_array_mut().unwrap() {
        if k["id"] == old.as_str() {
            k["revoked_at"] = two_days_ago.to_string().into();
        }
    }
    std::fs::write(env.keys(), serde_json::to_string(&file).unwrap()).unwrap();
    let served = env.serve();
    env.cli(&["keys", "disable", &a]);
    env.cli(&["keys", "revoke", &b]);
    until(&r, "the disable and the revoke", |r| {
        r.count("key.disabled", &a) == 1 && r.count("key.revoked", &b) == 1
    })
    .await;
    env.settle(&r).await;
    assert_eq!(r.count("key.disabled", &a), 1);
    assert_eq!(r.count("key.revoked", &b), 1);
    assert!(
        r.events().iter().all(|(_, k)| *k != old),
        "{:?}",
        r.events()
    );
    assert_eq!(r.delivered().len(), 3, "{:?}", r.events());
    let status = |id: &str| {
        r.delivered()
            .into_iter()
            .find(|x| x.key_id() == id)
            .unwrap()
            .json()["key"]["status"]
            .clone()
    };
    assert_eq!(status(&a), "disabled");
    assert_eq!(status(&b), "revoked");
    assert_no_secret(&r, &env.keys(), &[&a_key, &b_key]);
    stop(served);
}

#[tokio::test]
async fn revoke_and_disable_through_the_api_notify_once_each() {
    let r = Receiver::start().await;
    let (g, _n) = gateway(&r, "").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (a, a_key) = g.create_key(new_key("api-disable", None));
    let (b, b_key) = g.create_key(new_key("api-revoke", None));
    let path = |id: &str, action: &str| format!("/v1/api-keys/{id}{action}");
    assert_eq!(
        api(&g, &admin, Method::POST, &path(&a, "/disable"))
            .await
            .status,
        200
    );
    assert_eq!(
        api(&g, &admin, Method::DELETE, &path(&b, "")).await.status,
        200
    );
    // Disabling twice keeps the first disable: nothing new.
    assert_eq!(
        api(&g, &admin, Method::POST, &path(&a, "/disable"))
            .await
            .status,
        200
    );
    until(&r, "both", |r| {
        r.count("key.disabled", &a) == 1 && r.count("key.revoked", &b) == 1
    })
    .await;
    // The disabled key revoked: a revoke to tell.
    assert_eq!(
        api(&g, &admin, Method::DELETE, &path(&a, "")).await.status,
        200
    );
    until(&r, "the second revoke", |r| r.count("key.revoked", &a) == 1).await;
    settle(&g, &r).await;
    assert_eq!(r.count("key.disabled", &a), 1);
    assert_eq!(r.count("key.revoked", &a), 1);
    assert_eq!(r.count("key.revoked", &b), 1);
    assert_eq!(counter(&g, "key.revoked", "sent"), 2.0);
    assert_eq!(counter(&g, "key.disabled", "sent"), 1.0);
    let admin_key = admin.clone();
    assert_no_secret(&r, &g.gw.config().keys.file, &[&a_key, &b_key, &admin_key]);
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_backoff_and_a_refusal_is_not() {
    let r = Receiver::start().await;
    let (g, _n) = gateway(&r, "").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, _) = g.create_key(new_key("flaky", None));
    r.plan(&[
        Reply::Status(503),
        Reply::RetryAfter(429, 1),
        Reply::Status(200),
    ]);
    let revoke = api(&g, &admin, Method::DELETE, &format!("/v1/api-keys/{id}")).await;
    assert_eq!(revoke.status, 200);
    until(&r, "the third attempt delivered", |r| {
        r.count("key.revoked", &id) == 1
    })
    .await;
    let tries: Vec<_> = r
        .received()
        .into_iter()
        .filter(|x| x.key_id() == id)
        .collect();
    assert_eq!(
        tries.iter().map(|t| t.answered).collect::<Vec<_>>(),
        [503, 429, 200]
    );
    assert!(
        tries
            .iter()
            .all(|t| t.json()["id"] == tries[0].json()["id"]),
        "one notification, sent again"
    );
    // The receiver records the third attempt before its answer reaches the gateway, which
    // counts it only then.
    assert!(
        eventually(WAIT, || {
            let sent = counter(&g, "key.revoked", "sent");
            async move { sent == 1.0 }
        })
        .await,
        "the delivery is never counted as sent"
    );
    assert_eq!(counter(&g, "key.revoked", "retry"), 2.0);

    // A 400 is the receiver's final word.
    let (refused, _) = g.create_key(new_key("refused", None));
    r.plan(&[Reply::Status(400)]);
    let disable = api(
        &g,
        &admin,
        Method::POST,
        &format!("/v1/api-keys/{refused}/disable"),
    )
    .await;
    assert_eq!(disable.status, 200);
    answered(&r, &refused, 400).await;
    settle(&g, &r).await;
    let tries = r
        .received()
        .into_iter()
        .filter(|x| x.key_id() == refused)
        .count();
    assert_eq!(tries, 1, "not retried");
    assert_eq!(counter(&g, "key.disabled", "rejected"), 1.0);
    assert_eq!(counter(&g, "key.disabled", "retry"), 0.0);
}

#[tokio::test]
async fn a_restart_neither_resends_nor_loses_a_notification() {
    let r = Receiver::start().await;
    let env = Env::new(&notify_section(&r, ""));
    let (a, _) = env.create("sent-before", &[]);
    let (b, _) = env.create("pending-at-stop", &[]);
    let served = env.serve();
    env.cli(&["keys", "revoke", &a]);
    until(&r, "the revoke", |r| r.count("key.revoked", &a) == 1).await;
    // The receiver fails from now on: the disable waits, retried.
    r.otherwise(Some(Reply::Status(503)));
    env.cli(&["keys", "disable", &b]);
    until(&r, "two failed attempts", |r| {
        r.received().iter().filter(|x| x.key_id() == b).count() >= 2
    })
    .await;
    assert_eq!(
        pending_in(&env.ledger()),
        1,
        "the disable waits in the ledger"
    );
    logged(&served, "notification not delivered").await;
    assert_eq!(
        served.count("notification not delivered"),
        1,
        "a failure is logged once per reason"
    );
    stop(served);
    // While it is down the key is enabled again: nothing in the key set tells of the disable
    // any more, only the ledger does.
    env.cli(&["keys", "enable", &b]);
    r.otherwise(None);
    let served = env.serve();
    until(&r, "the disable, after the restart", |r| {
        r.count("key.disabled", &b) == 1
    })
    .await;
    env.settle(&r).await;
    assert_eq!(r.count("key.revoked", &a), 1, "not sent again");
    assert_eq!(r.count("key.disabled", &b), 1);
    let resumed = r.delivered().into_iter().find(|x| x.key_id() == b).unwrap();
    assert_eq!(
        resumed.json()["key"]["status"],
        "disabled",
        "as it was found"
    );
    assert_eq!(served.count("notification not delivered"), 0);
    stop(served);
}

#[tokio::test]
async fn two_gateways_on_one_redis_send_each_notification_once() {
    let redis = common::redis::Redis::start().await;
    let r = Receiver::start().await;
    let cluster = format!(
        "[cluster]\nbackend = \"redis\"\nredis_url = \"{}\"\n{}",
        redis.url(),
        notify_section(&r, "")
    );
    let a = start_gateway(&cluster).await;
    let mock_b = start_mock().await;
    let b = start_gateway_raw(
        mock_b,
        &format!(
            "[keys]\nfile = \"{}\"\nstate_file = \"b.state\"\npoll_interval = \"100ms\"\n[[upstream]]\nurl = \"http://127.0.0.1:9\"\n{cluster}",
            a.gw.config().keys.file.display()
        ),
    )
    .await;
    for g in [&a, &b] {
        let backend = Arc::clone(g.gw.redis.as_ref().unwrap());
        assert!(eventually(WAIT, || async { backend.connection().is_some() }).await);
    }
    let na = keygate::ops::notify::start(Arc::clone(&a.gw));
    let nb = keygate::ops::notify::start(Arc::clone(&b.gw));
    let admin = a.key_with_scopes(&["admin"]);
    let (exp, _) = a.create_key(new_key("expiring", Some(at(2 * DAY))));
    let (rev, _) = a.create_key(new_key("revoked", None));
    let (dis, _) = a.create_key(new_key("disabled", None));
    api(&a, &admin, Method::DELETE, &format!("/v1/api-keys/{rev}")).await;
    api(
        &a,
        &admin,
        Method::POST,
        &format!("/v1/api-keys/{dis}/disable"),
    )
    .await;
    b.gw.reload_keys().unwrap();
    let events = [
        ("key.expiring", exp.as_str()),
        ("key.revoked", rev.as_str()),
        ("key.disabled", dis.as_str()),
    ];
    until(&r, "all three", |r| {
        events.iter().all(|(e, k)| r.count(e, k) >= 1)
    })
    .await;
    // Until each gateway has settled each one: sent by one, known as sent by the other.
    let both = |event: &str, result: &str| counter(&a, event, result) + counter(&b, event, result);
    let settled = eventually(WAIT, || {
        na.look_now();
        nb.look_now();
        let done = events
            .iter()
            .all(|(e, _)| both(e, "sent") == 1.0 && both(e, "elsewhere") == 1.0);
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            done
        }
    })
    .await;
    assert!(settled, "each sent by one gateway and left by the other");
    for (e, k) in events {
        assert_eq!(r.count(e, k), 1, "{e} {k}: {:?}", r.events());
    }
    let revoked_id = r
        .delivered()
        .into_iter()
        .find(|x| x.key_id() == rev)
        .unwrap()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let claim = common::redis::command(
        redis.port,
        &["GET", &format!("{{keygate}}:notify:{revoked_id}")],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert!(claim.contains("settled"), "{claim:?}");
}

#[tokio::test]
async fn the_slack_format_posts_one_readable_line() {
    let r = Receiver::start().await;
    let (g, _n) = gateway(&r, "format = \"slack\"\n").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, key) = g.create_key(new_key("chat-bot", None));
    api(&g, &admin, Method::DELETE, &format!("/v1/api-keys/{id}")).await;
    let ok = eventually(WAIT, || async { !r.delivered().is_empty() }).await;
    assert!(ok);
    let v = r.delivered()[0].json();
    let o = v.as_object().unwrap();
    assert_eq!(o.keys().collect::<Vec<_>>(), ["text"], "{v}");
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "API key \"chat-bot\" ({id}, sk_kg_…{})",
            &key[key.len() - 4..]
        )),
        "{text}"
    );
    assert!(text.contains("was revoked at"), "{text}");
    assert!(!text.contains('\n'));
    assert_no_secret(&r, &g.gw.config().keys.file, &[&key, &admin]);
}

#[tokio::test]
async fn a_used_up_quota_is_notified_once_per_window() {
    let r = Receiver::start().await;
    let (g, n) = gateway(&r, "").await;
    let (id, key) = g.create_key(NewKey {
        name: "quota".into(),
        quotas: KeyQuotas {
            requests_per_day: Some(2),
            ..Default::default()
        },
        ..Default::default()
    });
    for _ in 0..2 {
        assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    }
    n.look_now();
    until(&r, "the quota", |r| {
        r.count("key.quota_exhausted", &id) == 1
    })
    .await;
    assert_eq!(chat(&g, &key, CHAT).await.status, 429);
    n.look_now();
    settle(&g, &r).await;
    assert_eq!(r.count("key.quota_exhausted", &id), 1, "once a day");
    let v = r
        .delivered()
        .into_iter()
        .find(|x| x.key_id() == id)
        .unwrap()
        .json();
    let q = &v["quota"];
    assert_eq!(q["name"], "requests_per_day");
    assert_eq!(
        (q["limit"].as_u64(), q["used"].as_u64()),
        (Some(2), Some(2))
    );
    let today =
        keygate::usage::window::Window::Day(keygate::usage::window::day_of(g.gw.usage.clock.now()));
    assert_eq!(q["window"], today.label());
    assert_eq!(q["resets_at"], today.end().to_string());
    assert!(v.get("days_left").is_none());
}

#[tokio::test]
async fn https_receivers_are_reached_with_a_private_ca() {
    let files = common::redis::TlsFiles::new();
    let now = keygate::time::Timestamp::now();
    let tls = keygate::server::tls::server_config(&files.cert, &files.key, now).unwrap();
    let mut tls = (*tls.config).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let r = Receiver::start_tls(Arc::new(tls)).await;
    assert!(r.url().starts_with("https://"));
    let (g, _n) = gateway(&r, &format!("ca_file = \"{}\"\n", files.ca.display())).await;
    let (id, _) = g.create_key(new_key("tls", Some(at(DAY / 2))));
    until(&r, "the notification over TLS", |r| {
        r.count("key.expiring", &id) == 1
    })
    .await;
}

#[tokio::test]
async fn the_token_is_sent_and_no_secret_is_logged() {
    let r = Receiver::start().await;
    let env = Env::new(&notify_section(&r, "header_env = \"KG_TEST_HOOK_TOKEN\"\n"));
    let (a, a_key) = env.create("logged", &[]);
    let served = binary::serve_with(&env.config, |c| {
        c.env("KG_TEST_HOOK_TOKEN", "Bearer hook-t0ken-123");
    });
    r.plan(&[Reply::Status(500)]);
    env.cli(&["keys", "revoke", &a]);
    until(&r, "the revoke", |r| r.count("key.revoked", &a) == 1).await;
    assert!(r
        .received()
        .iter()
        .all(|x| x.headers["authorization"] == "Bearer hook-t0ken-123"));
    let (b, b_key) = env.create("refused", &[]);
    r.plan(&[Reply::Status(401)]);
    env.cli(&["keys", "disable", &b]);
    answered(&r, &b, 401).await;
    env.settle(&r).await;
    logged(&served, "the webhook refused a notification").await;
    assert_eq!(served.count("notification not delivered"), 1);
    assert_eq!(served.count("the webhook refused a notification"), 1);
    for line in served.logs.lock().unwrap().iter() {
        for secret in ["hook-t0ken-123", "SECRETPATH", &a_key, &b_key] {
            assert!(!line.contains(secret), "{line}");
        }
    }
    assert_no_secret(&r, &env.keys(), &[&a_key, &b_key]);
    stop(served);
}

#[tokio::test]
async fn notifications_switch_on_with_a_reload_of_gateway_toml() {
    let r = Receiver::start().await;
    let env = Env::new("");
    let (id, _) = env.create("soon", &["--expires-in", "2d"]);
    let served = env.serve();
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{text}{}", notify_section(&r, ""))).unwrap();
    until(&r, "the notification", |r| {
        r.count("key.expiring", &id) == 1
    })
    .await;
    stop(served);
}

#[tokio::test]
async fn a_notification_still_failing_a_day_after_it_was_queued_is_given_up() {
    let r = Receiver::start().await;
    let g = start_gateway("").await;
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let pending = |name: &str, queued_ms: u64| {
        let id = format!("key.revoked/key_000000000000{name}/100");
        let entry = serde_json::json!({
            "event": {
                "id": id,
                "event": "key.revoked",
                "at": "2026-01-01T00:00:00Z",
                "key": {"id": format!("key_000000000000{name}"), "name": name, "description": null,
                        "metadata": {}, "expires_at": null, "status": "revoked"},
            },
            "until": "2100-01-01T00:00:00Z",
            "queued_ms": queued_ms,
            "attempts": 40,
            "next_ms": 0,
        });
        (id, entry)
    };
    let (old, old_entry) = pending("0old", now_ms - 25 * 3_600_000);
    let (fresh, fresh_entry) = pending("0new", now_ms - 3_600_000);
    let ledger = serde_json::json!({
        "version": 1,
        "replica": "rtest",
        "pending": {old.clone(): old_entry, fresh.clone(): fresh_entry},
    });
    std::fs::write(ledger_of(&g), ledger.to_string()).unwrap();
    // [notify] switched on by a reload: what the ledger holds is taken up. (The test runs on
    // one thread: yielding lets the notifier's tasks start, and find no `[notify]`, first.)
    let _n = keygate::ops::notify::start(Arc::clone(&g.gw));
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    let mut cfg = keygate::config::Config::load(&g.config_path).unwrap();
    assert!(cfg.notify.is_none());
    cfg.notify = keygate::config::Config::parse(&notify_section(&r, ""), None)
        .unwrap()
        .notify;
    g.gw.apply_config(cfg);
    until(&r, "the fresh one", |r| {
        r.count("key.revoked", "key_0000000000000new") == 1
    })
    .await;
    let path = ledger_of(&g);
    assert!(eventually(WAIT, || async { pending_in(&path) == 0 }).await);
    assert!(r
        .received()
        .iter()
        .all(|x| x.key_id() != "key_0000000000000old"));
    assert_eq!(counter(&g, "key.revoked", "gave_up"), 1.0);
    assert_eq!(counter(&g, "key.revoked", "sent"), 1.0);
    let saved: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(saved["done"][&old]["result"], "gave_up");
    assert_eq!(saved["done"][&fresh]["result"], "sent");
    assert_eq!(saved["replica"], "rtest");
}

/// A receiver that closes the connection right after its answer (`Connection: close`, an
/// HTTP/1.0 server): its 2xx is a delivery, each notification arrives once, and nothing waits
/// behind a retry. The connection's end used to race the answer and win, so a delivered
/// notification was taken for a failure and sent again and again.
#[tokio::test]
async fn a_receiver_that_closes_after_answering_gets_each_notification_once() {
    let r = Receiver::start().await;
    r.closing(true);
    let (g, _n) = gateway(&r, "").await;
    let admin = g.key_with_scopes(&["admin"]);
    let mut ids = Vec::new();
    for i in 0..6 {
        let (id, _) = g.create_key(new_key(&format!("closing-{i}"), None));
        let a = api(
            &g,
            &admin,
            Method::POST,
            &format!("/v1/api-keys/{id}/disable"),
        )
        .await;
        assert_eq!(a.status, 200);
        ids.push(id);
    }
    until(&r, "every disable", |r| {
        ids.iter().all(|id| r.count("key.disabled", id) >= 1)
    })
    .await;
    let ledger = ledger_of(&g);
    assert!(eventually(WAIT, || async { pending_in(&ledger) == 0 }).await);
    // The receiver counts a notification before it answers, and the ledger file may be saved
    // before the last answer is settled: wait for every settlement (or a wrong count)
    // before checking that nothing was sent twice.
    eventually(WAIT, || async {
        counter(&g, "key.disabled", "sent") >= 6.0
    })
    .await;
    for id in &ids {
        assert_eq!(r.count("key.disabled", id), 1, "{:?}", r.events());
    }
    assert_eq!(counter(&g, "key.disabled", "sent"), 6.0);
}
