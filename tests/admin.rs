//! The management API (reference: Management API) through the real server, and the usage endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use http::Method;
use serde_json::json;

#[tokio::test]
async fn create_use_show_list_rotate_revoke() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);

    let a = api(
        &g,
        &admin,
        Method::POST,
        "/v1/api-keys",
        json!({
            "name": "svc", "scopes": ["chat", "models"], "models": ["llama-*"],
            "expires_in_days": 30, "limits": {"requests_per_minute": 100, "max_in_flight": 4}
        }),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let v = a.json();
    let (id, key) = (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    );
    assert_eq!(v["scopes"], json!(["models", "chat"]));
    assert_eq!(v["limits"]["requests_per_minute"], 100);
    assert!(v["expires_at"].is_string());
    assert_eq!(v["masked_key"], format!("sk_kg_…{}", &key[key.len() - 4..]));

    // Works for inference at once, with its own limits.
    let r = chat(&g, &key, CHAT).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("100"));

    // List and show never carry the secret.
    let list = api(
        &g,
        &admin,
        Method::GET,
        "/v1/api-keys",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(list.status, 200);
    let text = String::from_utf8_lossy(&list.body).to_string();
    assert!(
        !text.contains(&key[6..]) && !text.contains("\"key\""),
        "{text}"
    );
    assert_eq!(list.json()["data"].as_array().unwrap().len(), 2);
    assert_eq!(list.json()["key_store"], json!({"writable": true}));
    let show = api(
        &g,
        &admin,
        Method::GET,
        &format!("/v1/api-keys/{id}"),
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(show.status, 200);
    let sv = show.json();
    assert_eq!(sv["usage"]["requests"], 1);
    assert!(sv["last_used_at"].is_string());
    assert!(!String::from_utf8_lossy(&show.body).contains(&key[6..]));

    // Rotate with grace: both work; then rotate without grace: the previous stops at once,
    // and so does the first, whose grace would have run for an hour more.
    let r = api(
        &g,
        &admin,
        Method::POST,
        &format!("/v1/api-keys/{id}/rotate"),
        json!({"grace_seconds": 3600}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let key2 = r.json()["key"].as_str().unwrap().to_string();
    assert_eq!(r.json()["id"], id.as_str());
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    assert_eq!(chat(&g, &key2, CHAT).await.status, 200);
    let r = api(
        &g,
        &admin,
        Method::POST,
        &format!("/v1/api-keys/{id}/rotate"),
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(r.status, 200);
    let key3 = r.json()["key"].as_str().unwrap().to_string();
    assert_eq!(chat(&g, &key2, CHAT).await.error_code(), "expired_api_key");
    assert_eq!(
        chat(&g, &key, CHAT).await.error_code(),
        "expired_api_key",
        "a rotation without grace ends the first grace period too"
    );
    assert_eq!(chat(&g, &key3, CHAT).await.status, 200);

    // Revoke: refused at once, every secret.
    let r = api(
        &g,
        &admin,
        Method::DELETE,
        &format!("/v1/api-keys/{id}"),
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "revoked");
    assert_eq!(chat(&g, &key3, CHAT).await.error_code(), "revoked_api_key");
    assert_eq!(chat(&g, &key, CHAT).await.error_code(), "revoked_api_key");
}

#[tokio::test]
async fn refusals() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let inference = g.key();

    let a = send(Method::GET, &g.url("/v1/api-keys"), &[], "").await;
    assert_eq!(
        (a.status.as_u16(), a.error_code().as_str()),
        (401, "missing_api_key")
    );
    let a = api(
        &g,
        &inference,
        Method::GET,
        "/v1/api-keys",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.error_code().as_str()),
        (403, "insufficient_permissions")
    );
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`admin`"));

    for (body, needle) in [
        (json!({"name": "x", "scopez": ["chat"]}), "scopez"),
        (json!({"scopes": ["chat"]}), "name"),
        (json!({"name": "x", "scopes": ["root"]}), "root"),
        (
            json!({"name": "x", "expires_in_days": 0}),
            "expires_in_days",
        ),
        (
            json!({"name": "x", "expires_in_days": 1, "expires_at": "2030-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"name": "x", "limits": {"requests_per_minute": "many"}}),
            "invalid type",
        ),
        (json!({"name": "x", "models": ["[unclosed"]}), "models"),
    ] {
        let a = api(&g, &admin, Method::POST, "/v1/api-keys", body.clone()).await;
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.error_code(), "invalid_request");
        let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let a = send(
        Method::POST,
        &g.url("/v1/api-keys"),
        &[("authorization", &bearer(&admin))],
        "{not json",
    )
    .await;
    assert_eq!(a.status, 400);
    // A compressed body is refused, not read as the plain JSON it claims not to be, and no
    // key is made.
    let count = || {
        std::fs::read_to_string(g.dir.path().join("keys.json"))
            .unwrap()
            .matches("\"id\":")
            .count()
    };
    let before = count();
    for enc in ["gzip", "br, identity"] {
        let a = send(
            Method::POST,
            &g.url("/v1/api-keys"),
            &[
                ("authorization", &bearer(&admin)),
                ("content-type", "application/json"),
                ("content-encoding", enc),
            ],
            r#"{"name":"zipped"}"#,
        )
        .await;
        assert_eq!(
            (a.status.as_u16(), a.error_code().as_str()),
            (400, "invalid_request"),
            "{enc}"
        );
        let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains("Content-Encoding"), "{msg}");
    }
    assert_eq!(count(), before);
    // A field given twice is named.
    let a = send(
        Method::POST,
        &g.url("/v1/api-keys"),
        &[
            ("authorization", &bearer(&admin)),
            ("content-type", "application/json"),
        ],
        r#"{"name":"u","name":"v"}"#,
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "name", "{:?}", a.json());
    assert_eq!(count(), before);

    let a = api(
        &g,
        &admin,
        Method::GET,
        "/v1/api-keys/key_0000000000000000",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.error_code().as_str()),
        (404, "not_found")
    );
    let a = api(
        &g,
        &admin,
        Method::DELETE,
        "/v1/api-keys/key_0000000000000000",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(a.status, 404);
    let a = api(
        &g,
        &admin,
        Method::PATCH,
        "/v1/api-keys/key_0000000000000000",
        json!({}),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.error_code().as_str()),
        (404, "not_found")
    );
    let a = api(
        &g,
        &admin,
        Method::PUT,
        "/v1/api-keys/key_0000000000000000",
        json!({}),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.error_code().as_str()),
        (404, "unknown_route")
    );
}

#[tokio::test]
async fn read_only_key_store_answers_409() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.json");
    let store = keygate::keys::store::KeyStore::new(&real);
    let (_, admin) = store
        .update(|f| {
            f.create(
                keygate::keys::record::NewKey {
                    name: "admin".into(),
                    scopes: vec!["admin".into()],
                    ..Default::default()
                },
                "sk_kg",
                keygate::time::Timestamp::now(),
            )
        })
        .unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("keys.json")).unwrap();
    let toml = format!(
        "[keys]\nfile = \"{}\"\n[[upstream]]\nurl = \"http://{}\"\n",
        dir.path().join("keys.json").display(),
        mock.addr
    );
    let g = start_gateway_raw(mock, &toml).await;
    let a = api(
        &g,
        &admin.plaintext,
        Method::POST,
        "/v1/api-keys",
        json!({"name": "x"}),
    )
    .await;
    assert_eq!(a.status, 409);
    assert_eq!(a.error_code(), "read_only_key_store");
    let a = api(
        &g,
        &admin.plaintext,
        Method::GET,
        "/v1/api-keys",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(a.status, 200, "reads still work");
    // The list says so up front (the console shows it instead of failing each write).
    assert_eq!(
        a.json()["key_store"],
        json!({"writable": false, "reason": "it is a symbolic link, as in a mounted Secret"})
    );
}

/// Found by an outside probe: a key file whose directory stopped taking new files, beside
/// the lock file earlier writes left, was listed as `writable: true` and a write answered 500
/// (the temp file refused); only without the lock file was it the documented 409. The list
/// says it is read-only, naming the directory, and writes answer 409 `read_only_key_store`.
#[tokio::test]
async fn a_key_file_directory_that_refuses_new_files_answers_409() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, _) = g.create_key(keygate::keys::record::NewKey {
        name: "svc".into(),
        ..Default::default()
    });
    assert!(g.dir.path().join("keys.json.lock").exists());
    let before = std::fs::read_to_string(g.dir.path().join("keys.json")).unwrap();
    let _locked = match common::locked_dir::LockedDir::lock(g.dir.path()) {
        Ok(l) => l,
        Err(why) => {
            eprintln!("skipped: no directory can refuse new files here: {why}");
            return;
        }
    };
    let list = api(
        &g,
        &admin,
        Method::GET,
        "/v1/api-keys",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(list.status, 200, "reads still work");
    let store = &list.json()["key_store"];
    let said = format!("its directory {} is not writable", g.dir.path().display());
    assert_eq!(store["writable"], false, "{store}");
    assert!(
        store["reason"].as_str().unwrap().starts_with(&said),
        "{store}"
    );
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/api-keys".to_string(),
            json!({"name": "x"}),
        ),
        (
            Method::PATCH,
            format!("/v1/api-keys/{id}"),
            json!({"description": "d"}),
        ),
        (
            Method::DELETE,
            format!("/v1/api-keys/{id}"),
            serde_json::Value::Null,
        ),
    ] {
        let a = api(&g, &admin, method.clone(), &path, body).await;
        assert_eq!(
            (a.status.as_u16(), a.error_code().as_str()),
            (409, "read_only_key_store"),
            "{method} {path}: {:?}",
            a.body
        );
    }
    let after = std::fs::read_to_string(g.dir.path().join("keys.json")).unwrap();
    assert_eq!(after, before, "nothing changed");
}

#[tokio::test]
async fn usage_endpoint_needs_the_usage_scope() {
    let g = start_gateway("").await;
    let (id, key) = g.create_key(keygate::keys::record::NewKey {
        name: "user".into(),
        ..Default::default()
    });
    let analytics = g.key_with_scopes(&["analytics:read"]);
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    let a = api(&g, &key, Method::GET, "/v1/usage", serde_json::Value::Null).await;
    assert_eq!(a.status, 403);
    let a = api(
        &g,
        &analytics,
        Method::GET,
        "/v1/usage",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(a.status, 200);
    let v = a.json();
    let row = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["requests"], 2, "the refused call counts too");
    assert_eq!(row["client_errors"], 1);
    assert_eq!(row["prompt_tokens"], 2);
    assert_eq!(row["completion_tokens"], 9);
}

#[tokio::test]
async fn expiry_warnings_at_seven_three_and_one_days() {
    let g = start_gateway("").await;
    let now = keygate::time::Timestamp::now();
    let mut ids = Vec::new();
    for days in [10u64, 6, 2] {
        let (id, _) = g.create_key(keygate::keys::record::NewKey {
            name: format!("in-{days}d"),
            expires_at: Some(keygate::time::Timestamp(now.0 + days * 86_400 - 60)),
            ..Default::default()
        });
        ids.push(id);
    }
    // The maintenance task owns what it has warned about: one instance, called twice.
    let mut maintenance = keygate::ops::maintenance::Maintenance::new(
        std::sync::Arc::clone(&g.gw),
        std::sync::Arc::default(),
    );
    let warned = maintenance.warn_expiring();
    assert!(
        !warned.iter().any(|(id, _)| *id == ids[0]),
        "10 days out: no warning"
    );
    assert!(warned.contains(&(ids[1].clone(), 7)));
    assert!(warned.contains(&(ids[2].clone(), 3)));
    assert!(
        maintenance
            .warn_expiring()
            .iter()
            .all(|(id, _)| !ids.contains(id)),
        "each warning once"
    );
}

/// POST /v1/api-keys with `body` (raw text); returns the answer.
async fn create_raw(g: &TestGateway, admin: &str, body: &str) -> Answer {
    send(
        Method::POST,
        &g.url("/v1/api-keys"),
        &[
            ("authorization", &bearer(admin)),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn body_errors_name_the_field_in_the_message_and_in_param() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    for (body, param) in [
        (r#"{"name": 42}"#, "name"),
        (r#"{"scopes": ["chat"]}"#, "name"),
        (r#"{"name": "x", "scopez": ["chat"]}"#, "scopez"),
        (r#"{"name": "x", "scopes": "chat"}"#, "scopes"),
        (r#"{"name": "x", "scopes": ["root"]}"#, "scopes"),
        (r#"{"name": "x", "models": ["[unclosed"]}"#, "models"),
        (r#"{"name": "  "}"#, "name"),
        (
            r#"{"name": "x", "limits": {"requests_per_minute": "many"}}"#,
            "limits.requests_per_minute",
        ),
        (
            r#"{"name": "x", "limits": {"requests_per_minute": 0}}"#,
            "limits.requests_per_minute",
        ),
        (r#"{"name": "x", "limits": {"burst": 0}}"#, "limits.burst"),
        (r#"{"name": "x", "limits": {"rpm": 5}}"#, "limits.rpm"),
        (r#"{"name": "x", "expires_in_days": -1}"#, "expires_in_days"),
        (r#"{"name": "x", "expires_in_days": 0}"#, "expires_in_days"),
        (
            r#"{"name": "x", "expires_at": "2001-01-01T00:00:00Z"}"#,
            "expires_at",
        ),
        (r#"{"name": "x", "expires_at": "tomorrow"}"#, "expires_at"),
    ] {
        let a = create_raw(&g, &admin, body).await;
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.error_code(), "invalid_request", "{body}");
        let e = &a.json()["error"];
        assert_eq!(e["param"], param, "{body}: {e}");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(&format!("`{param}`")), "{body}: {msg}");
        assert!(!msg.contains("key #"), "{body}: {msg}");
    }
    // The rotate body too.
    let (id, _) = g.create_key(keygate::keys::record::NewKey {
        name: "r".into(),
        ..Default::default()
    });
    let a = send(
        Method::POST,
        &g.url(&format!("/v1/api-keys/{id}/rotate")),
        &[("authorization", &bearer(&admin))],
        r#"{"grace_seconds": "soon"}"#,
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.json()["error"]["param"].clone()),
        (400, json!("grace_seconds"))
    );
    // Not JSON at all, or not an object: no field to name.
    for body in ["{not json", "[1, 2]", r#"{"name": "x"} trailing"#] {
        let a = create_raw(&g, &admin, body).await;
        assert_eq!(a.status, 400, "{body}");
        assert!(a.json()["error"]["param"].is_null(), "{body}");
    }
    // Every other error keeps `param: null`.
    let a = send(Method::GET, &g.url("/v1/api-keys"), &[], "").await;
    assert_eq!(a.status, 401);
    assert!(a.json()["error"]["param"].is_null());
    let a = api(
        &g,
        &admin,
        Method::GET,
        "/v1/api-keys/key_0000000000000000",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(a.status, 404);
    assert!(a.json()["error"]["param"].is_null());
}

#[tokio::test]
async fn control_characters_in_names_are_refused() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    for name in [
        "evil\u{1b}[2J",
        "a\rb",
        "new\nline",
        "c1\u{9b}31m",
        "del\u{7f}",
        "rtl\u{202e}cod.exe",
        "zw\u{200b}sp",
        "bom\u{feff}",
        "alm\u{61c}x",
        "line\u{2028}sep",
        "para\u{2029}sep",
        "soft\u{ad}hyphen",
        "tag\u{e0041}",
    ] {
        let a = api(
            &g,
            &admin,
            Method::POST,
            "/v1/api-keys",
            json!({ "name": name }),
        )
        .await;
        assert_eq!(a.status, 400, "{name:?}");
        let e = &a.json()["error"];
        assert_eq!(e["param"], "name", "{name:?}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains("control character"),
            "{name:?}: {e}"
        );
    }
    let a = api(
        &g,
        &admin,
        Method::POST,
        "/v1/api-keys",
        json!({"name": "x", "models": ["llama-\u{1b}*"]}),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "models");
    // Nothing was created; ordinary Unicode is fine.
    let list = api(
        &g,
        &admin,
        Method::GET,
        "/v1/api-keys",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(list.json()["data"].as_array().unwrap().len(), 1);
    let a = api(
        &g,
        &admin,
        Method::POST,
        "/v1/api-keys",
        json!({"name": "Zoë's app 名前"}),
    )
    .await;
    assert_eq!(a.status, 201);
    // An edit is held to the same rule: globs, labels and the description.
    let path = format!("/v1/api-keys/{}", a.json()["id"].as_str().unwrap());
    for (body, param) in [
        (json!({"models": ["llama\u{200b}-*"]}), "models"),
        (json!({"metadata": {"team": "a\u{2067}b"}}), "metadata"),
        (json!({"description": "x\u{feff}"}), "description"),
    ] {
        let a = api(&g, &admin, Method::PATCH, &path, body.clone()).await;
        assert_eq!(a.status, 400, "{body}");
        let e = &a.json()["error"];
        assert_eq!(e["param"], param, "{e}");
        assert!(e["message"].as_str().unwrap().contains("U+"), "{e}");
    }
}

#[tokio::test]
async fn api_changes_are_appended_to_the_audit_file_and_keep_the_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let g = start_gateway("[log]\naudit_file = \"audit.log\"\n").await;
    let (admin_id, admin) = g.create_key(keygate::keys::record::NewKey {
        name: "admin".into(),
        scopes: vec!["admin".into()],
        ..Default::default()
    });
    // The key file belongs to another user, readable by its group.
    let keys = g.gw.config().keys.file.clone();
    std::os::unix::fs::chown(&keys, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o640)).unwrap();

    let a = api(
        &g,
        &admin,
        Method::POST,
        "/v1/api-keys",
        json!({"name": "svc"}),
    )
    .await;
    assert_eq!(a.status, 201);
    let id = a.json()["id"].as_str().unwrap().to_string();
    let a = api(
        &g,
        &admin,
        Method::POST,
        &format!("/v1/api-keys/{id}/rotate"),
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(a.status, 200);
    let a = api(
        &g,
        &admin,
        Method::DELETE,
        &format!("/v1/api-keys/{id}"),
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(a.status, 200);

    let m = std::fs::metadata(&keys).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (65534, 65534, 0o640));

    let text = std::fs::read_to_string(g.dir.path().join("audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (line, action) in lines.iter().zip(["created", "rotated", "revoked"]) {
        assert_eq!(line["action"], action);
        assert_eq!(line["key_id"], id.as_str());
        assert_eq!(line["key_name"], "svc");
        assert_eq!(line["by"], format!("api:{admin_id}"));
        assert!(line["timestamp"].is_string());
    }
    // Refused changes leave no record.
    let a = api(
        &g,
        &admin,
        Method::POST,
        "/v1/api-keys",
        json!({"name": ""}),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(
        std::fs::read_to_string(g.dir.path().join("audit.log")).unwrap(),
        text
    );
}

/// Found by an outside probe: revoke, disable and enable ignored query parameters and any
/// body, so `DELETE …?dryRun=All` (a Kubernetes habit) or a body `{"dry_run": true}` really
/// revoked, while every other endpoint refused unknown fields. Only the list takes
/// parameters; endpoints without a body take nothing or `{}`.
#[tokio::test]
async fn parameters_and_bodies_an_endpoint_does_not_take_are_refused_by_name() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let (id, key) = g.create_key(keygate::keys::record::NewKey {
        name: "victim".into(),
        ..Default::default()
    });
    let auth = bearer(&admin);
    let h = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let refused = [
        (
            Method::DELETE,
            format!("/v1/api-keys/{id}?dryRun=All"),
            "",
            "dryRun",
        ),
        (
            Method::DELETE,
            format!("/v1/api-keys/{id}"),
            r#"{"dry_run":true}"#,
            "dry_run",
        ),
        (
            Method::POST,
            format!("/v1/api-keys/{id}/disable"),
            r#"{"reason":"x"}"#,
            "reason",
        ),
        (
            Method::POST,
            format!("/v1/api-keys/{id}/disable"),
            "not json",
            "JSON object",
        ),
        (
            Method::POST,
            format!("/v1/api-keys/{id}/enable?dry_run=true"),
            "",
            "dry_run",
        ),
        (
            Method::GET,
            format!("/v1/api-keys/{id}?bogus=1"),
            "",
            "bogus",
        ),
        (
            Method::POST,
            "/v1/api-keys?limit=5".to_string(),
            r#"{"name":"n"}"#,
            "limit",
        ),
        (
            Method::PATCH,
            format!("/v1/api-keys/{id}?x=1"),
            r#"{"description":"d"}"#,
            "x",
        ),
    ];
    for (method, path, body, needle) in refused {
        let a = send(method.clone(), &g.url(&path), &h, body).await;
        assert_eq!(a.status, 400, "{method} {path} {body}");
        let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{method} {path}: {msg}");
    }
    // Nothing happened to the key: it still works, undisabled, unrevoked, unchanged.
    assert_eq!(chat(&g, &key, CHAT).await.status, 200);
    let shown = api(
        &g,
        &admin,
        Method::GET,
        &format!("/v1/api-keys/{id}"),
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(shown.json()["status"], "active");
    assert!(shown.json()["description"].is_null());
    // The list still takes its own; the forms that take no body accept none and `{}`.
    let a = send(Method::GET, &g.url("/v1/api-keys?limit=5"), &h, "").await;
    assert_eq!(a.status, 200);
    let a = send(
        Method::POST,
        &g.url(&format!("/v1/api-keys/{id}/disable")),
        &h,
        "{}",
    )
    .await;
    assert_eq!(a.status, 200);
    let a = send(
        Method::POST,
        &g.url(&format!("/v1/api-keys/{id}/enable")),
        &h,
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    let a = send(
        Method::DELETE,
        &g.url(&format!("/v1/api-keys/{id}")),
        &h,
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(chat(&g, &key, CHAT).await.status, 401);
}

/// A declared body over the management API's 64 KiB is refused at once: no `100 Continue`
/// inviting the client to send 100 MB that will be thrown away.
#[tokio::test]
async fn a_declared_admin_body_over_the_limit_is_refused_before_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let head = format!(
        "POST /v1/api-keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

/// Found by an outside probe: 5,000 copies of one model glob were stored (every request then
/// matched against all of them), and a name of 60,000 characters was taken (it padded every
/// row of `keys list`; the console caps names at 200).
#[tokio::test]
async fn a_glob_given_twice_is_kept_once_and_names_have_a_length() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let models: Vec<&str> = std::iter::repeat_n("llama-*", 5000)
        .chain(["qwen*", "llama-*"])
        .collect();
    let a = api(
        &g,
        &admin,
        Method::POST,
        "/v1/api-keys",
        json!({"name": "dups", "models": models}),
    )
    .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.json()["models"], json!(["llama-*", "qwen*"]));
    let id = a.json()["id"].as_str().unwrap().to_string();
    let a = api(
        &g,
        &admin,
        Method::PATCH,
        &format!("/v1/api-keys/{id}"),
        json!({"models": ["m", "m"]}),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["models"], json!(["m"]));

    let long = "n".repeat(201);
    let a = api(
        &g,
        &admin,
        Method::POST,
        "/v1/api-keys",
        json!({"name": long}),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "name");
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("200"));
    let a = api(
        &g,
        &admin,
        Method::POST,
        "/v1/api-keys",
        json!({"name": "n".repeat(200)}),
    )
    .await;
    assert_eq!(a.status, 201);
}
