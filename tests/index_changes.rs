//! A one-key change costs one key, through the real server: a key-file edit that changes one
//! key among many is applied to the index without rebuilding it (the metrics tell which),
//! takes effect at once, and changes past the overlay's size are folded into a new base in
//! the background while the keys keep working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use http::Method;
use keygate::keys::index::KeyChange;
use keygate::keys::record::NewKey;
use keygate::keys::token::NewToken;
use keygate::time::Timestamp;
use std::time::Duration;

/// The value of an unlabelled series in the gateway's metrics.
fn metric(g: &TestGateway, name: &str) -> f64 {
    let text = g.gw.metrics.render(&g.gw);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// `n` keys made in one write and loaded; their ids and tokens.
fn many_keys(g: &TestGateway, n: usize) -> Vec<(String, NewToken)> {
    let prefix = g.gw.config().keys.prefix.clone();
    let now = Timestamp::now();
    let made = g
        .store()
        .update(|f| {
            (0..n)
                .map(|i| {
                    let new = NewKey {
                        name: format!("app-{i}"),
                        ..NewKey::default()
                    };
                    f.create(new, &prefix, now).map(|(rec, tok)| (rec.id, tok))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    g.gw.reload_keys().unwrap();
    made
}

#[tokio::test]
async fn a_file_edit_of_one_key_among_many_is_applied_without_a_rebuild() {
    let g = start_gateway("").await;
    let admin = g.key_with_scopes(&["admin"]);
    let keys = many_keys(&g, 1500);
    let rebuilds = metric(&g, "keygate_key_index_rebuilds_total");
    let applied = metric(&g, "keygate_key_index_changes_applied_total");
    assert!(rebuilds >= 1.0, "the first load builds the index");

    // Revoked by an edit of the file (as `keygate keys revoke` makes it): the watcher finds
    // one record changed among 1501 and applies it alone.
    let (victim, token) = &keys[700];
    g.store()
        .update(|f| f.revoke(victim, Timestamp::now()))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            chat_status(&g.url("/v1/chat/completions"), &token.plaintext).await == 401
        })
        .await,
        "the revoked key is refused"
    );
    assert_eq!(chat(&g, &keys[699].1.plaintext, CHAT).await.status, 200);
    assert_eq!(metric(&g, "keygate_key_index_rebuilds_total"), rebuilds);
    assert_eq!(
        metric(&g, "keygate_key_index_changes_applied_total"),
        applied + 1.0
    );
    assert_eq!(metric(&g, "keygate_key_index_overlay_keys"), 1.0);

    // Rotated with a grace period through the API: both secrets work, nothing rebuilt.
    let (id, old) = &keys[3];
    let auth = bearer(&admin);
    let a = send(
        Method::POST,
        &g.url(&format!("/v1/api-keys/{id}/rotate")),
        &[("authorization", &auth)],
        r#"{"grace_seconds": 3600}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let new = a.json()["key"].as_str().unwrap().to_string();
    assert_eq!(chat(&g, &old.plaintext, CHAT).await.status, 200, "in grace");
    assert_eq!(chat(&g, &new, CHAT).await.status, 200);
    // And again without grace: the secret it replaces stops at once, and so does the first,
    // in the index's base, whose grace is capped at this rotation's (none).
    let a = send(
        Method::POST,
        &g.url(&format!("/v1/api-keys/{id}/rotate")),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(chat(&g, &new, CHAT).await.status, 401, "rotated out");
    assert_eq!(
        chat(&g, &old.plaintext, CHAT).await.error_code(),
        "expired_api_key",
        "its grace ended with the rotation without grace"
    );
    assert_eq!(metric(&g, "keygate_key_index_rebuilds_total"), rebuilds);
    assert_eq!(
        metric(&g, "keygate_key_index_changes_applied_total"),
        applied + 3.0
    );
}

#[tokio::test]
async fn changes_past_the_overlay_size_are_folded_into_a_new_base_while_keys_work() {
    let g = start_gateway("").await;
    let keys = many_keys(&g, 20);
    let records = g.store().load().unwrap().keys;
    // 300 renames applied one by one, as a key store hands them over: past 256 versions the
    // overlay is folded into a new base on a thread of its own.
    for n in 0..300 {
        let mut rec = records[n % records.len()].clone();
        rec.name = format!("renamed-{n}");
        g.gw.apply_key_changes(vec![KeyChange::Put(rec)]).unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&g, "keygate_key_index_compactions_total") >= 1.0
        })
        .await,
        "no compaction"
    );
    assert!(metric(&g, "keygate_key_index_overlay_keys") < 256.0);
    for (id, token) in &keys {
        assert_eq!(chat(&g, &token.plaintext, CHAT).await.status, 200, "{id}");
    }
    let live = g.gw.live();
    let index = live.keys.as_ref().unwrap();
    assert_eq!(index.len(), 20);
    // The last rename of each key is what the index holds.
    assert_eq!(
        index.entry(&records[299 % 20].id).unwrap().name.as_str(),
        "renamed-299"
    );
    // A change refused leaves the index as it was.
    let mut twin = records[1].clone();
    twin.sha256 = records[2].sha256.clone();
    assert!(g.gw.apply_key_changes(vec![KeyChange::Put(twin)]).is_err());
    assert_eq!(chat(&g, &keys[2].1.plaintext, CHAT).await.status, 200);
}
