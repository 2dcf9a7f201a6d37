//! The key lifecycle through the management API of a real server (reference: Management API):
//! `PATCH /v1/api-keys/{id}`, `POST …/disable` and `…/enable`, their refusals, their audit
//! records, and docs/openapi.yaml describing every answer they give.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use http::Method;
use keygate::time::Timestamp;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

async fn patch(g: &TestGateway, admin: &str, id: &str, body: Value) -> Answer {
    api(g, admin, Method::PATCH, &format!("/v1/api-keys/{id}"), body).await
}

async fn post(g: &TestGateway, admin: &str, id: &str, action: &str) -> Answer {
    let path = format!("/v1/api-keys/{id}/{action}");
    api(g, admin, Method::POST, &path, Value::Null).await
}

async fn show(g: &TestGateway, admin: &str, id: &str) -> Value {
    let a = api(
        g,
        admin,
        Method::GET,
        &format!("/v1/api-keys/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(a.status, 200);
    a.json()
}

/// A key made through the API: (id, plaintext).
async fn create(g: &TestGateway, admin: &str, body: Value) -> (String, String) {
    let a = api(g, admin, Method::POST, "/v1/api-keys", body).await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let v = a.json();
    (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    )
}

fn ts(v: &Value) -> Timestamp {
    Timestamp::parse(v.as_str().unwrap_or_else(|| panic!("not a time: {v}"))).unwrap()
}

fn ok(a: &Answer) -> Value {
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    a.json()
}

#[tokio::test]
async fn patch_edits_every_field_and_the_gateway_applies_it_at_once() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, key) = create(
        &g,
        &admin,
        json!({
            "name": "svc", "description": "first", "metadata": {"team": "search", "env": "dev"},
            "limits": {"requests_per_minute": 100}, "quotas": {"tokens_per_day": 1000},
            "expires_in_days": 10
        }),
    )
    .await;
    let r = chat(&g, &key, CHAT).await;
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("100"));
    let before = show(&g, &admin, &id).await;

    let now = Timestamp::now();
    let v = ok(&patch(
        &g,
        &admin,
        &id,
        json!({
            "description": "second", "metadata": {"team": "ads"},
            "limits": {"requests_per_minute": 50, "max_in_flight": 3},
            "quotas": {"tokens_per_day": null, "requests_per_month": 500},
            "expires_in_days": 30
        }),
    )
    .await);
    assert_eq!(v["description"], "second");
    assert_eq!(
        v["metadata"],
        json!({"team": "ads"}),
        "metadata is replaced whole"
    );
    assert_eq!(
        v["limits"],
        json!({"requests_per_minute": 50, "max_in_flight": 3})
    );
    assert_eq!(v["quotas"], json!({"requests_per_month": 500}));
    let extended = ts(&v["expires_at"]);
    assert!(extended.0.abs_diff(now.0 + 30 * 86_400) <= 5, "{extended}");
    for fixed in ["id", "name", "masked_key", "created_at", "scopes"] {
        assert_eq!(v[fixed], before[fixed], "{fixed}");
    }
    assert!(ts(&v["updated_at"]) >= now);
    // In force for the next request, with the same secret.
    let r = chat(&g, &key, CHAT).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("50"));

    // Scopes and models: set, and back to the defaults with null.
    ok(&patch(&g, &admin, &id, json!({"scopes": ["embeddings"]})).await);
    assert_eq!(
        chat(&g, &key, CHAT).await.error_code(),
        "insufficient_permissions"
    );
    let v = ok(&patch(&g, &admin, &id, json!({"scopes": null})).await);
    assert_eq!(v["scopes"], before["scopes"]);
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    ok(&patch(&g, &admin, &id, json!({"models": ["qwen*"]})).await);
    assert_eq!(chat(&g, &key, CHAT).await.error_code(), "model_not_allowed");
    let v = ok(&patch(&g, &admin, &id, json!({"models": null})).await);
    assert_eq!(v["models"], json!([]));
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);

    // Expiry: set to a time, then removed.
    let v = ok(&patch(
        &g,
        &admin,
        &id,
        json!({"expires_at": "2099-01-02T03:04:05Z"}),
    )
    .await);
    assert_eq!(v["expires_at"], "2099-01-02T03:04:05Z");
    let v = ok(&patch(&g, &admin, &id, json!({"expires_at": null})).await);
    assert!(v["expires_at"].is_null());

    // null removes a description, every label, every limit, every quota.
    let v = ok(&patch(
        &g,
        &admin,
        &id,
        json!({"description": null, "metadata": null, "limits": null, "quotas": null}),
    )
    .await);
    assert!(v["description"].is_null());
    assert_eq!(v["metadata"], json!({}));
    assert_eq!(v["limits"], json!({}));
    assert_eq!(v["quotas"], json!({}));
    let default_rpm = g.gw.config().limits.requests_per_minute.to_string();
    let r = chat(&g, &key, CHAT).await;
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some(&*default_rpm));

    // What the answers said is what is stored.
    let stored = show(&g, &admin, &id).await;
    for field in [
        "description",
        "metadata",
        "limits",
        "quotas",
        "expires_at",
        "scopes",
    ] {
        assert_eq!(stored[field], v[field], "{field}");
    }
    let rec = g.store().load().unwrap().get(&id).unwrap().clone();
    assert_eq!(rec.rev, 9, "1 at creation, then one revision per edit (8)");
}

#[tokio::test]
async fn a_new_expiry_brings_an_expired_key_back() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, key) = g.create_key(keygate::keys::record::NewKey {
        name: "short".into(),
        ..Default::default()
    });
    // Expired: its expiry is its creation time (only a hand edit can make that).
    g.store()
        .update(|f| {
            let k = f.keys.iter_mut().find(|k| k.id == id).unwrap();
            k.expires_at = Some(k.created_at);
            Ok(())
        })
        .unwrap();
    g.gw.reload_keys().unwrap();
    assert_eq!(chat(&g, &key, CHAT).await.error_code(), "expired_api_key");
    let v = ok(&patch(&g, &admin, &id, json!({"expires_in_days": 1})).await);
    assert_eq!(v["status"], "active");
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
}

#[tokio::test]
async fn patch_refusals_name_the_field_and_change_nothing() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, _) = create(&g, &admin, json!({"name": "svc", "description": "keep me"})).await;
    let before = std::fs::read(g.gw.config().keys.file.clone()).unwrap();
    for (body, param, needle) in [
        (json!({"name": "other"}), "name", "fixed"),
        (json!({"name": null}), "name", "fixed"),
        (json!({"descripton": "x"}), "descripton", "Unknown field"),
        (json!({"limits": {"rpm": 1}}), "limits.rpm", "Unknown field"),
        (
            json!({"limits": {"burst": "many"}}),
            "limits.burst",
            "invalid type",
        ),
        (
            json!({"limits": {"burst": 0}}),
            "limits.burst",
            "at least 1",
        ),
        (json!({"limits": 5}), "limits", "invalid type"),
        (
            json!({"quotas": {"tokens_per_day": 0}}),
            "quotas.tokens_per_day",
            "at least 1",
        ),
        (
            json!({"quotas": {"tokens_per_week": 5}}),
            "quotas.tokens_per_week",
            "Unknown field",
        ),
        (json!({"metadata": {"Team": "x"}}), "metadata", "`Team`"),
        (json!({"metadata": "team=x"}), "metadata", "invalid type"),
        (json!({"scopes": ["root"]}), "scopes", "`root`"),
        (json!({"scopes": "chat"}), "scopes", "invalid type"),
        (json!({"models": ["[unclosed"]}), "models", "invalid"),
        (
            json!({"expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
            "in the future",
        ),
        (json!({"expires_at": "tomorrow"}), "expires_at", "RFC 3339"),
        (
            json!({"expires_in_days": 0}),
            "expires_in_days",
            "at least 1",
        ),
        (
            json!({"expires_in_days": 1, "expires_at": null}),
            "expires_at",
            "not both",
        ),
        (json!({"description": "a\u{7}b"}), "description", "control"),
        (json!({"description": 5}), "description", "invalid type"),
    ] {
        let a = patch(&g, &admin, &id, body.clone()).await;
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.error_code(), "invalid_request", "{body}");
        let e = &a.json()["error"];
        assert_eq!(e["param"], param, "{body}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{body}: {e}"
        );
    }
    for raw in ["", "[]", "{\"description\": \"x\"} trailing", "{not json"] {
        let a = send(
            Method::PATCH,
            &g.url(&format!("/v1/api-keys/{id}")),
            &[("authorization", &bearer(&admin))],
            raw,
        )
        .await;
        assert_eq!(a.status, 400, "{raw:?}");
        assert_eq!(a.error_code(), "invalid_request");
    }
    assert_eq!(
        std::fs::read(g.gw.config().keys.file.clone()).unwrap(),
        before,
        "no refused edit wrote the file"
    );
    assert_eq!(show(&g, &admin, &id).await["description"], "keep me");
}

#[tokio::test]
async fn disable_refuses_the_key_at_once_and_enable_restores_it() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, key) = create(&g, &admin, json!({"name": "svc"})).await;
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);

    let v = ok(&post(&g, &admin, &id, "disable").await);
    assert_eq!(v["status"], "disabled");
    let disabled_at = v["disabled_at"].clone();
    assert!(disabled_at.is_string());
    // The answer comes after this gateway applied the change: the next request sees it.
    let r = chat(&g, &key, CHAT).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "disabled_api_key")
    );
    // Disabling twice keeps the first time; a disabled key can still be edited.
    let v = ok(&post(&g, &admin, &id, "disable").await);
    assert_eq!(v["disabled_at"], disabled_at);
    ok(&patch(&g, &admin, &id, json!({"description": "paused"})).await);

    let v = ok(&post(&g, &admin, &id, "enable").await);
    assert_eq!(v["status"], "active");
    assert!(v["disabled_at"].is_null());
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    ok(&post(&g, &admin, &id, "enable").await);

    for action in ["disable", "enable"] {
        let a = post(&g, &admin, "key_0000000000000000", action).await;
        assert_eq!(
            (a.status.as_u16(), a.error_code().as_str()),
            (404, "not_found")
        );
    }
}

#[tokio::test]
async fn a_revoked_key_cannot_be_edited_disabled_enabled_or_rotated() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, key) = create(&g, &admin, json!({"name": "svc"})).await;
    let revoked = ok(&api(
        &g,
        &admin,
        Method::DELETE,
        &format!("/v1/api-keys/{id}"),
        Value::Null,
    )
    .await);
    for (a, doing) in [
        (
            patch(&g, &admin, &id, json!({"description": "x"})).await,
            "edited",
        ),
        (post(&g, &admin, &id, "disable").await, "disabled"),
        (post(&g, &admin, &id, "enable").await, "enabled"),
        (post(&g, &admin, &id, "rotate").await, "rotated"),
    ] {
        assert_eq!(
            (a.status.as_u16(), a.error_code().as_str()),
            (400, "invalid_request"),
            "{doing}"
        );
        let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains(&id) && msg.contains(doing) && msg.contains("final"),
            "{msg}"
        );
    }
    assert_eq!(
        show(&g, &admin, &id).await["revoked_at"],
        revoked["revoked_at"]
    );
    assert_eq!(chat(&g, &key, CHAT).await.error_code(), "revoked_api_key");
}

#[tokio::test]
async fn every_api_edit_is_audited_with_what_changed() {
    let g = start_gateway("[log]\naudit_file = \"audit.log\"\n").await;
    let (admin_id, admin) = g.create_key(keygate::keys::record::NewKey {
        name: "admin".into(),
        scopes: vec!["admin".into()],
        ..Default::default()
    });
    let (id, _) = create(
        &g,
        &admin,
        json!({"name": "svc", "description": "old", "limits": {"burst": 5}}),
    )
    .await;
    ok(&patch(
        &g,
        &admin,
        &id,
        json!({"description": "new", "limits": {"burst": null}, "metadata": {"team": "ads"}}),
    )
    .await);
    assert_eq!(
        patch(&g, &admin, &id, json!({"limits": {"burst": 0}}))
            .await
            .status,
        400
    );
    ok(&patch(&g, &admin, &id, json!({"description": "new"})).await);
    ok(&post(&g, &admin, &id, "disable").await);
    ok(&post(&g, &admin, &id, "enable").await);

    let text = std::fs::read_to_string(g.dir.path().join("audit.log")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["created", "updated", "updated", "disabled", "enabled"],
        "the refused edit left no record"
    );
    for l in &lines {
        assert_eq!(l["key_id"], id.as_str());
        assert_eq!(l["by"], format!("api:{admin_id}"));
        assert!(!l.to_string().contains("sha256"), "no hash in {l}");
    }
    let changes = |i: usize| -> BTreeMap<String, (Value, Value)> {
        lines[i]["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["field"].as_str().unwrap().to_string(),
                    (c["old"].clone(), c["new"].clone()),
                )
            })
            .collect()
    };
    assert_eq!(
        changes(1),
        BTreeMap::from([
            ("description".into(), (json!("old"), json!("new"))),
            ("limits.burst".into(), (json!(5), Value::Null)),
            ("metadata.team".into(), (Value::Null, json!("ads"))),
        ])
    );
    assert!(
        changes(2).is_empty(),
        "an edit that changes nothing says so"
    );
    let disabled = changes(3);
    assert_eq!(disabled.len(), 1);
    let (old, new) = &disabled["disabled_at"];
    assert!(old.is_null() && new.is_string());
    assert_eq!(changes(4)["disabled_at"], (new.clone(), Value::Null));
}

#[tokio::test]
async fn an_extended_expiry_is_warned_about_again_when_it_comes_near() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, _) = create(&g, &admin, json!({"name": "svc", "expires_in_days": 2})).await;
    let mut maintenance = keygate::ops::maintenance::Maintenance::new(
        std::sync::Arc::clone(&g.gw),
        std::sync::Arc::default(),
    );
    assert!(maintenance.warn_expiring().contains(&(id.clone(), 3)));
    assert!(maintenance.warn_expiring().is_empty(), "each warning once");
    // Extended, then (time passing) near its end again: a new expiry, a new warning.
    let later = Timestamp(Timestamp::now().0 + 2 * 86_400 + 600);
    ok(&patch(&g, &admin, &id, json!({"expires_at": later.to_string()})).await);
    assert!(maintenance.warn_expiring().contains(&(id.clone(), 3)));
}

// ------------------------------------------------------------------------------ OpenAPI

/// Every status each operation is seen to answer here, by (method, path in the document).
type Seen = BTreeMap<(&'static str, &'static str), BTreeSet<u16>>;

fn saw(seen: &mut Seen, op: (&'static str, &'static str), a: &Answer) {
    if a.status != 200 {
        a.error_code(); // every refusal has the error shape
    }
    seen.entry(op).or_default().insert(a.status.as_u16());
}

const PATCH: (&str, &str) = ("patch", "/v1/api-keys/{id}");
const DISABLE: (&str, &str) = ("post", "/v1/api-keys/{id}/disable");
const ENABLE: (&str, &str) = ("post", "/v1/api-keys/{id}/enable");

#[tokio::test]
async fn openapi_describes_patch_disable_enable_and_every_answer_they_give() {
    let mut seen = Seen::new();
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let user = g.key();
    let (id, _) = create(&g, &admin, json!({"name": "svc"})).await;
    let (gone, _) = create(&g, &admin, json!({"name": "gone"})).await;
    ok(&api(
        &g,
        &admin,
        Method::DELETE,
        &format!("/v1/api-keys/{gone}"),
        Value::Null,
    )
    .await);
    let unknown = "key_0000000000000000";
    let big = json!({"description": "x".repeat(70_000)});
    for (op, action) in [(DISABLE, "disable"), (ENABLE, "enable")] {
        saw(&mut seen, op, &post(&g, &admin, &id, action).await); // 200
        saw(&mut seen, op, &post(&g, &admin, &gone, action).await); // 400
        saw(&mut seen, op, &post(&g, &user, &id, action).await); // 403
        saw(&mut seen, op, &post(&g, "", &id, action).await); // 401
        saw(&mut seen, op, &post(&g, &admin, unknown, action).await); // 404
    }
    for (key, target, body) in [
        (&admin, &id, json!({"description": "x"})),
        (&admin, &gone, json!({"description": "x"})),
        (&admin, &id, json!({"nope": 1})),
        (&user, &id, json!({})),
        (&String::new(), &id, json!({})),
        (&admin, &unknown.to_string(), json!({})),
        (&admin, &id, big),
    ] {
        saw(&mut seen, PATCH, &patch(&g, key, target, body).await);
    }
    // Over the admin key's own rate: 429.
    let (_, limited) = g.create_key(keygate::keys::record::NewKey {
        name: "slow admin".into(),
        scopes: vec!["admin".into()],
        limits: keygate::keys::record::KeyLimits {
            requests_per_minute: Some(1),
            ..Default::default()
        },
        ..Default::default()
    });
    ok(&api(&g, &limited, Method::GET, "/v1/api-keys", Value::Null).await);
    saw(&mut seen, PATCH, &patch(&g, &limited, &id, json!({})).await);
    saw(
        &mut seen,
        DISABLE,
        &post(&g, &limited, &id, "disable").await,
    );
    saw(&mut seen, ENABLE, &post(&g, &limited, &id, "enable").await);
    // The audit file cannot be opened (it is a directory): 500, nothing changed.
    let broken = start_gateway("[log]\naudit_file = \"audit-dir\"\n").await;
    std::fs::create_dir(broken.dir.path().join("audit-dir")).unwrap();
    let admin500 = broken.key_with_scopes(&["admin"]);
    let (id500, _) = broken.create_key(keygate::keys::record::NewKey {
        name: "svc".into(),
        ..Default::default()
    });
    saw(
        &mut seen,
        PATCH,
        &patch(&broken, &admin500, &id500, json!({"description": "y"})).await,
    );
    saw(
        &mut seen,
        DISABLE,
        &post(&broken, &admin500, &id500, "disable").await,
    );
    saw(
        &mut seen,
        ENABLE,
        &post(&broken, &admin500, &id500, "enable").await,
    );
    // A read-only key file (a mounted Secret): 409.
    let (ro, ro_admin, ro_id, _dir) = read_only_gateway().await;
    saw(
        &mut seen,
        PATCH,
        &patch(&ro, &ro_admin, &ro_id, json!({"description": "y"})).await,
    );
    saw(
        &mut seen,
        DISABLE,
        &post(&ro, &ro_admin, &ro_id, "disable").await,
    );
    saw(
        &mut seen,
        ENABLE,
        &post(&ro, &ro_admin, &ro_id, "enable").await,
    );
    let all = [200, 400, 401, 403, 404, 409, 429, 500];
    assert_eq!(
        seen[&PATCH],
        all.into_iter().chain([413]).collect(),
        "PATCH reached every answer"
    );
    assert_eq!(
        seen[&DISABLE],
        all.into_iter().collect(),
        "disable reached every answer"
    );
    assert_eq!(
        seen[&ENABLE],
        all.into_iter().collect(),
        "enable reached every answer"
    );

    let doc = openapi();
    for ((method, path), statuses) in &seen {
        let responses = &doc["paths"][*path][*method]["responses"];
        for status in statuses {
            assert!(
                !responses[status.to_string().as_str()].is_badvalue(),
                "docs/openapi.yaml: {method} {path} lacks {status}"
            );
        }
    }
    // The body schema names exactly the fields PATCH takes: each is accepted with null
    // (`name` is refused by name), and the server refuses any other.
    let schema = &doc["components"]["schemas"]["PatchKey"];
    assert_eq!(schema["additionalProperties"].as_bool(), Some(false));
    let props = schema["properties"].as_hash().unwrap();
    let names: BTreeSet<&str> = props.keys().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "name",
            "description",
            "metadata",
            "scopes",
            "models",
            "expires_at",
            "expires_in_days",
            "limits",
            "quotas"
        ])
    );
    for p in names {
        let body = Value::Object([(p.to_string(), Value::Null)].into_iter().collect());
        let e = patch(&g, &admin, &id, body).await.json();
        if p == "name" {
            assert_eq!(e["error"]["param"], "name");
        } else {
            assert!(e["error"].is_null(), "{p}: {e}");
        }
    }
}

/// A gateway whose key file is a symbolic link (read-only): (gateway, admin key, a key id,
/// the directory the link points into).
async fn read_only_gateway() -> (TestGateway, String, String, tempfile::TempDir) {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.json");
    let store = keygate::keys::store::KeyStore::new(&real);
    let now = Timestamp::now();
    let (admin, id) = store
        .update(|f| {
            let new = |name: &str, scopes: Vec<String>| keygate::keys::record::NewKey {
                name: name.into(),
                scopes,
                ..Default::default()
            };
            let (_, admin) = f.create(new("admin", vec!["admin".into()]), "sk_kg", now)?;
            let (rec, _) = f.create(new("svc", vec![]), "sk_kg", now)?;
            Ok((admin.plaintext, rec.id))
        })
        .unwrap();
    let link = dir.path().join("keys.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let toml = format!(
        "[keys]\nfile = \"{}\"\n[[upstream]]\nurl = \"http://{}\"\n",
        link.display(),
        mock.addr
    );
    let g = start_gateway_raw(mock, &toml).await;
    (g, admin, id, dir)
}

fn openapi() -> yaml_rust2::Yaml {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap()
        .remove(0)
}

/// A quota put on a key mid-window starts from what the key used in it, from the very next
/// request, though that use was already written out of the key's pending counts (the
/// flusher runs every second): the edit's answer comes once the new quota knows it.
#[tokio::test]
async fn a_quota_added_mid_window_counts_what_was_used_from_the_next_request() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, key) = create(&g, &admin, json!({"name": "busy"})).await;
    for _ in 0..3 {
        assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    }
    // What a second's wait does: the three requests move from pending to the store.
    g.gw.flush_usage().await;
    ok(&patch(&g, &admin, &id, json!({"quotas": {"requests_per_day": 2}})).await);
    let v = show(&g, &admin, &id).await;
    assert_eq!(v["quota"]["requests_per_day"]["used"], 3, "{v}");
    let a = chat(&g, &key, CHAT).await;
    assert_eq!(a.status, 429, "{:?}", a.body);
    assert_eq!(a.error_code(), "insufficient_quota");
}

/// RFC 3339 allows any UTC offset: a time written with one is that instant, kept in UTC, in an
/// edit and in a usage query alike (they were refused as "not an RFC 3339 time").
#[tokio::test]
async fn times_with_a_utc_offset_are_that_instant() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin", "usage"]);
    let (id, _) = create(&g, &admin, json!({"name": "offset"})).await;
    let v = ok(&patch(
        &g,
        &admin,
        &id,
        json!({"expires_at": "2030-01-01T02:00:00+02:00"}),
    )
    .await);
    assert_eq!(v["expires_at"], "2030-01-01T00:00:00Z", "{v}");
    let v = ok(&patch(
        &g,
        &admin,
        &id,
        json!({"expires_at": "2029-12-31T19:30:00-04:30"}),
    )
    .await);
    assert_eq!(v["expires_at"], "2030-01-01T00:00:00Z", "{v}");
    let a = api(
        &g,
        &admin,
        Method::GET,
        "/v1/usage?from=2026-12-02T23:30:00%2B02:00&to=2026-12-03T03:00:00%2B02:00",
        Value::Null,
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    // Still refused: what is no time at all.
    let a = patch(
        &g,
        &admin,
        &id,
        json!({"expires_at": "2030-01-01T02:00:00+25:00"}),
    )
    .await;
    assert_eq!(a.status, 400);
}

/// The small refusals name what was sent, and a key's view lists no secret that would be
/// refused: a revoked key shows no previous key as valid, a grace past the year 9999 is
/// `grace_seconds`'s fault, a `from` after now (no `to` given) is `from`'s.
#[tokio::test]
async fn refusals_name_what_was_sent_and_a_revoked_key_lists_no_valid_secret() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin", "usage"]);
    let (id, _) = create(&g, &admin, json!({"name": "rotated"})).await;
    let rotate_path = format!("/v1/api-keys/{id}/rotate");
    let rotate = |body: Value| api(&g, &admin, Method::POST, &rotate_path, body);
    let v = ok(&rotate(json!({"grace_seconds": 300})).await);
    assert_eq!(
        v["previous_keys_valid"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
    let a = rotate(json!({"grace_seconds": 1_000_000_000_000u64})).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "grace_seconds", "{:?}", a.body);
    let a = api(
        &g,
        &admin,
        Method::DELETE,
        &format!("/v1/api-keys/{id}"),
        Value::Null,
    )
    .await;
    let v = ok(&a);
    assert!(v.get("previous_keys_valid").is_none(), "{v}");
    assert!(show(&g, &admin, &id)
        .await
        .get("previous_keys_valid")
        .is_none());
    let tomorrow = Timestamp(Timestamp::now().0 + 2 * 86_400).to_string();
    let a = api(
        &g,
        &admin,
        Method::GET,
        &format!("/v1/usage?from={tomorrow}"),
        Value::Null,
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "from", "{:?}", a.body);
}
