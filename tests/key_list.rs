//! Key lists at scale, through the real server and the real binary: `GET /v1/api-keys` pages
//! as OpenAI's lists do (`limit`, `after`, `has_more`, `first_id`, `last_id`), filters and
//! sorts on the server from the index, refuses a bad parameter by name; `keygate keys list`
//! filters the same way as it reads the file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use http::Method;
use keygate::keys::record::{KeyRecord, NewKey};
use keygate::time::Timestamp;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// Creation and last-use times of the fleet start here (before now: expiry follows creation).
const T0: u64 = 1_700_000_000;

/// 60 keys with ties in every sort field, some revoked, some disabled, some expired, some
/// labelled and used; the file is written once and loaded. Returns the records and the
/// last-used time set for each used key.
async fn fleet(g: &TestGateway) -> (Vec<KeyRecord>, HashMap<String, u64>) {
    let prefix = g.gw.config().keys.prefix.clone();
    let now = Timestamp::now();
    let made = g
        .store()
        .update(|f| {
            for i in 0..60u64 {
                let team = ["search", "ads", "infra"][(i % 3) as usize];
                let new = NewKey {
                    name: format!(
                        "{}-{}",
                        ["svc", "app", "svc-batch"][(i % 3) as usize],
                        i % 7
                    ),
                    metadata: BTreeMap::from([
                        ("team".into(), team.into()),
                        ("env".into(), if i % 2 == 0 { "prod" } else { "dev" }.into()),
                    ]),
                    description: (i % 5 == 0).then(|| format!("key number {i}")),
                    ..NewKey::default()
                };
                let (rec, _) = f.create(new, &prefix, now)?;
                let k = f.keys.iter_mut().find(|k| k.id == rec.id).unwrap();
                k.created_at = Timestamp(T0 + (i / 4) * 100); // four keys a creation time
                k.expires_at = match i % 4 {
                    0 => None,
                    1 => Some(now.plus(Duration::from_secs(3 * 86_400))),
                    2 => Some(now.plus(Duration::from_secs(30 * 86_400))),
                    _ => Some(Timestamp(now.0 + 86_400 * (1 + i % 2))),
                };
                if i % 4 == 3 && i % 8 == 7 {
                    k.expires_at = Some(Timestamp(now.0 - 10)); // expired
                    k.created_at = Timestamp(now.0 - 100);
                }
                if i % 9 == 4 {
                    k.revoked_at = Some(now);
                }
                if i % 11 == 5 {
                    k.disabled_at = Some(now);
                }
            }
            Ok(f.keys
                .iter()
                .filter(|k| k.name != "test")
                .cloned()
                .collect::<Vec<_>>())
        })
        .unwrap();
    g.gw.reload_keys().unwrap();
    // Last used: ties, and keys never used.
    let live = g.gw.live();
    let index = live.keys.as_ref().unwrap();
    let mut used = HashMap::new();
    for (i, k) in made.iter().enumerate() {
        if i % 3 != 0 {
            let at = T0 + (i as u64 % 5) * 1000;
            index
                .state_for(&k.id)
                .unwrap()
                .usage
                .last_used
                .store(at, std::sync::atomic::Ordering::Relaxed);
            used.insert(k.id.clone(), at);
        }
    }
    (made, used)
}

async fn get(g: &TestGateway, admin: &str, path_and_query: &str) -> Answer {
    let auth = bearer(admin);
    send(
        Method::GET,
        &g.url(path_and_query),
        &[("authorization", &auth)],
        "",
    )
    .await
}

/// Every page of a list, following `after`; the ids in the order given.
async fn walk(g: &TestGateway, admin: &str, query: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = String::new();
    for _ in 0..200 {
        let a = get(
            g,
            admin,
            &format!("/v1/api-keys?limit={limit}{query}{after}"),
        )
        .await;
        assert_eq!(
            a.status,
            200,
            "{query}: {}",
            String::from_utf8_lossy(&a.body)
        );
        let v = a.json();
        assert_eq!(v["object"], "list");
        let page: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect();
        assert!(page.len() <= limit);
        assert_eq!(v["first_id"].as_str(), page.first().map(String::as_str));
        assert_eq!(v["last_id"].as_str(), page.last().map(String::as_str));
        let text = String::from_utf8_lossy(&a.body);
        assert!(!text.contains("sha256"), "no hashes in a list");
        ids.extend(page);
        if v["has_more"] == false {
            return ids;
        }
        after = format!("&after={}", v["last_id"].as_str().unwrap());
    }
    panic!("{query}: the list never ended");
}

/// Which records a query should list.
type Predicate<'a> = Box<dyn Fn(&KeyRecord) -> bool + 'a>;

fn status_of(k: &KeyRecord, now: Timestamp) -> &'static str {
    k.status(now).as_str()
}

#[tokio::test]
async fn paging_walks_every_key_once_in_order_for_each_sort() {
    let g = start_gateway("").await;
    // Walking every page of many lists one key a page takes a few thousand requests.
    let (_, admin) = g.create_key(NewKey {
        name: "test".into(),
        scopes: vec!["admin".into()],
        limits: keygate::keys::record::KeyLimits {
            requests_per_minute: Some(1_000_000),
            ..Default::default()
        },
        ..NewKey::default()
    });
    let (mut keys, used) = fleet(&g).await;
    let admin_rec = g
        .store()
        .load()
        .unwrap()
        .keys
        .into_iter()
        .find(|k| k.name == "test")
        .unwrap();
    keys.push(admin_rec);
    let now = Timestamp::now();
    // The admin key is used by every request: the latest use of all.
    let last = |k: &KeyRecord| match used.get(&k.id) {
        Some(t) => *t,
        None if k.name == "test" => u64::MAX,
        None => 0,
    };
    for (sort, field) in [
        (
            "created_at",
            Box::new(|k: &KeyRecord| (k.created_at.0, String::new()))
                as Box<dyn Fn(&KeyRecord) -> (u64, String)>,
        ),
        ("name", Box::new(|k: &KeyRecord| (0, k.name.clone()))),
        (
            "last_used_at",
            Box::new(move |k: &KeyRecord| (last(k), String::new())),
        ),
        (
            "expires_at",
            Box::new(|k: &KeyRecord| (k.expires_at.map_or(u64::MAX, |t| t.0), String::new())),
        ),
    ] {
        for order in ["asc", "desc"] {
            for (status, listed) in [("", false), ("&status=all", true)] {
                let mut want: Vec<&KeyRecord> = keys
                    .iter()
                    .filter(|k| listed || status_of(k, now) != "revoked")
                    .collect();
                want.sort_by(|a, b| (field(a), &a.id).cmp(&(field(b), &b.id)));
                if order == "desc" {
                    want.reverse();
                }
                let want: Vec<String> = want.iter().map(|k| k.id.clone()).collect();
                for limit in [1, 7, 100] {
                    let got = walk(
                        &g,
                        &admin,
                        &format!("&sort={sort}&order={order}{status}"),
                        limit,
                    )
                    .await;
                    assert_eq!(got, want, "sort={sort} order={order}{status} limit={limit}");
                }
            }
        }
    }
    // The default: newest first, revoked keys left out, 20 a page.
    let a = get(&g, &admin, "/v1/api-keys").await.json();
    assert_eq!(a["data"].as_array().unwrap().len(), 20);
    assert_eq!(a["has_more"], true);
    let mut newest: Vec<&KeyRecord> = keys
        .iter()
        .filter(|k| status_of(k, now) != "revoked")
        .collect();
    newest.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    assert_eq!(a["first_id"], newest[0].id.as_str());
    // A key's view in the list is the view of its record.
    let k = &keys[10];
    let page = get(
        &g,
        &admin,
        &format!("/v1/api-keys?status=all&limit=100&name_prefix={}", k.name),
    )
    .await
    .json();
    let listed = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == k.id.as_str())
        .unwrap()
        .clone();
    let mut want = k.view("sk_kg", now, None);
    want["last_used_at"] = listed["last_used_at"].clone();
    assert_eq!(listed, want);
}

#[tokio::test]
async fn filters_combine_and_one_key_is_read_from_the_index() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (keys, used) = fleet(&g).await;
    let now = Timestamp::now();
    let ids = |v: Value| -> HashSet<String> {
        assert_eq!(v["has_more"], false);
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect()
    };
    let want = |f: &dyn Fn(&KeyRecord) -> bool| -> HashSet<String> {
        keys.iter().filter(|k| f(k)).map(|k| k.id.clone()).collect()
    };
    let week = now.plus(Duration::from_secs(7 * 86_400));
    let cut = T0 + 2500;
    let at = Timestamp(cut).to_string();
    let soon = |k: &KeyRecord| k.expires_at.is_some_and(|e| e > now && e <= week);
    let label = |k: &KeyRecord, n: &str, v: &str| k.metadata.get(n).map(String::as_str) == Some(v);
    let cases: Vec<(&str, Predicate)> = vec![
        (
            "name_prefix=svc",
            Box::new(|k| k.name.starts_with("svc") && status_of(k, now) != "revoked"),
        ),
        (
            "name_prefix=svc-b&status=all",
            Box::new(|k| k.name.starts_with("svc-b")),
        ),
        (
            "status=disabled",
            Box::new(|k| status_of(k, now) == "disabled"),
        ),
        (
            "status=expired,revoked",
            Box::new(|k| matches!(status_of(k, now), "expired" | "revoked")),
        ),
        (
            "meta=team:search",
            Box::new(move |k| label(k, "team", "search") && status_of(k, now) != "revoked"),
        ),
        (
            "meta=team:search&meta=env:prod&status=active",
            Box::new(move |k| {
                label(k, "team", "search")
                    && label(k, "env", "prod")
                    && status_of(k, now) == "active"
            }),
        ),
        (
            "expiring_within=7d",
            Box::new(move |k| soon(k) && status_of(k, now) != "revoked"),
        ),
        (
            "expiring_within=7d&meta=team:ads&name_prefix=app",
            Box::new(move |k| {
                soon(k)
                    && label(k, "team", "ads")
                    && k.name.starts_with("app")
                    && status_of(k, now) != "revoked"
            }),
        ),
    ];
    let before = format!("last_used_before={at}&status=all");
    let after = format!("last_used_after={at}&status=all&meta=env:dev");
    let cases: Vec<(&str, Predicate)> = cases
        .into_iter()
        .chain([
            (
                before.as_str(),
                Box::new(|k: &KeyRecord| used.get(&k.id).is_none_or(|t| *t < cut)) as Predicate,
            ),
            (
                after.as_str(),
                Box::new(|k: &KeyRecord| {
                    used.get(&k.id).is_some_and(|t| *t >= cut) && label(k, "env", "dev")
                }),
            ),
        ])
        .collect();
    for (query, f) in &cases {
        let got = ids(get(&g, &admin, &format!("/v1/api-keys?limit=100&{query}"))
            .await
            .json());
        let want = want(f.as_ref());
        assert!(!want.is_empty(), "{query}: the fleet has such keys");
        assert_eq!(got, want, "{query}");
    }
    // One key is answered from the index: the file may be gone, the gateway still knows it.
    std::fs::remove_file(g.gw.config().keys.file.clone()).unwrap();
    let k = &keys[5];
    let a = get(&g, &admin, &format!("/v1/api-keys/{}", k.id)).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(
        (v["id"].as_str(), v["name"].as_str()),
        (Some(k.id.as_str()), Some(k.name.as_str()))
    );
    assert_eq!(v["description"], "key number 5");
    assert_eq!(v["metadata"]["team"], "infra");
    assert_eq!(
        v["usage"]["last_used_at"].is_string(),
        used.contains_key(&k.id)
    );
    let list = get(&g, &admin, "/v1/api-keys?limit=100&status=all")
        .await
        .json();
    assert_eq!(list["data"].as_array().unwrap().len(), 61);
    let a = get(&g, &admin, "/v1/api-keys/key_0000000000000000").await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn bad_parameters_are_refused_naming_the_parameter() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=5&limit=6", "limit"),
        ("after=nope", "after"),
        ("after=key_0000000000000000", "after"),
        ("sort=size", "sort"),
        ("order=up", "order"),
        ("status=gone", "status"),
        ("status=active,", "status"),
        ("meta=team", "meta"),
        ("meta=Team:x", "meta"),
        ("expiring_within=soon", "expiring_within"),
        ("last_used_before=yesterday", "last_used_before"),
        ("last_used_after=2026-13-01T00:00:00Z", "last_used_after"),
        ("name_prefix=%07", "name_prefix"),
        ("colour=red", "colour"),
    ] {
        let a = get(&g, &admin, &format!("/v1/api-keys?{query}")).await;
        assert_eq!(a.status, 400, "{query}");
        let code = a.error_code();
        let v = a.json();
        assert_eq!(v["error"]["param"], param, "{query}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{param}`")),
            "{query}: {v}"
        );
        assert_eq!(code, "invalid_request", "{query}");
    }
}

// ------------------------------------------------------------------------------ the CLI

fn cli(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("--config")
        .arg(dir.join("gateway.toml"))
        .args(["keys", "list"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn keys_list_filters_as_the_api_does_and_streams_its_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[keys]\nfile = \"keys.json\"\n",
    )
    .unwrap();
    let store = keygate::keys::store::KeyStore::new(dir.path().join("keys.json"));
    let now = Timestamp::now();
    let keys = store
        .update(|f| {
            for i in 0..250 {
                let new = NewKey {
                    name: format!("{}-{i}", if i % 2 == 0 { "search" } else { "ads" }),
                    metadata: BTreeMap::from([(
                        "team".into(),
                        if i % 2 == 0 { "search" } else { "ads" }.into(),
                    )]),
                    description: (i == 4).then(|| "the nightly reindex job".to_string()),
                    expires_at: (i % 10 == 0).then(|| now.plus(Duration::from_secs(86_400))),
                    ..NewKey::default()
                };
                f.create(new, "sk_kg", now)?;
            }
            let id = f.keys[6].id.clone();
            f.revoke(&id, now)?;
            Ok(f.keys.clone())
        })
        .unwrap();
    let json = |args: &[&str]| -> Vec<String> {
        let out = cli(dir.path(), &[&["--json"], args].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect()
    };
    let want = |f: &dyn Fn(usize, &KeyRecord) -> bool| -> Vec<String> {
        keys.iter()
            .enumerate()
            .filter(|(i, k)| f(*i, k))
            .map(|(_, k)| k.id.clone())
            .collect()
    };
    // In file order, 100 by default, revoked keys left out; more said on stderr.
    let out = cli(dir.path(), &["--json"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--limit 0"));
    assert_eq!(json(&[]), want(&|i, _| i != 6)[..100]);
    assert_eq!(json(&["--limit", "0"]), want(&|i, _| i != 6));
    assert_eq!(json(&["--limit", "0", "--all"]), want(&|_, _| true));
    assert_eq!(json(&["--status", "revoked"]), want(&|i, _| i == 6));
    assert_eq!(
        json(&["--meta", "team=search", "--limit", "0"]),
        want(&|i, _| i % 2 == 0 && i != 6)
    );
    assert_eq!(
        json(&[
            "--meta",
            "team=search",
            "--name-prefix",
            "search-1",
            "--limit",
            "0"
        ]),
        want(&|_, k| k.name.starts_with("search-1"))
    );
    assert_eq!(
        json(&["--expiring-within", "2d", "--meta", "team=search"]),
        want(&|i, _| i % 10 == 0)
    );
    assert_eq!(
        json(&["--limit", "3", "--status", "active"]),
        want(&|i, _| i != 6)[..3]
    );
    // The table shows labels and descriptions.
    let out = cli(dir.path(), &["--name-prefix", "search-4", "--limit", "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().next().unwrap().contains("METADATA"), "{text}");
    assert!(
        text.contains("team=search") && text.contains("the nightly reindex job"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1 + 6, "{text}"); // search-4, -40, -42, … -48
                                                       // Bad filters are usage errors naming the flag.
    for (args, flag) in [
        (vec!["--meta", "team"], "--meta"),
        (vec!["--status", "gone"], "--status"),
        (vec!["--all", "--status", "active"], "--status"),
    ] {
        let out = cli(dir.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(flag),
            "{args:?}"
        );
    }
}
