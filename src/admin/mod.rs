//! The management API (reference: Management API), behind the `admin` scope on the main listener,
//! and `GET /v1/usage` (scope `usage`).
//!
//! Writes are `keys::ops` operations run through the same `keys::backend::Store` as the
//! CLI, audited with what changed. File mode: this gateway then reloads its index before it
//! answers (once: its own watcher then finds the file it loaded); other gateways watching the
//! file follow by reload. Redis mode: the answer waits until this replica's follower has
//! applied the write (every replica follows the store's change log). Edits (`PATCH`) are read by `edit`.
//! The plaintext of a new or rotated key is in the one answer that creates it, nowhere else.

pub mod console;
mod edit;
pub mod list;
mod request;

use crate::account::RequestRecord;
use crate::error::GatewayError;
use crate::gateway::{Gateway, Live};
use crate::keys::backend::Store;
use crate::keys::file::KeyFile;
use crate::keys::index::KeyRef;
use crate::keys::ops::{Action, Done, Op};
use crate::keys::record::{KeyQuotas, KeyRecord, NewKey};
use crate::keys::usage::UsageSnapshot;
use crate::limit::quota;
use crate::ops::audit::{Audit, AuditEvent};
use crate::proxy::response_body::Body;
use crate::proxy::whole::json;
use crate::time::Timestamp;
use crate::usage::query::{self, Query};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use request::{no_parameters, read_json, CreateBody, NoBody, RotateBody};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a write to the Redis key store waits for this replica to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(2);

fn usage_of(live: &Live, id: &str) -> Option<UsageSnapshot> {
    let idx = live.keys.as_ref()?;
    idx.by_id(id)?;
    Some(
        idx.state_of(id)
            .map(|s| s.usage.snapshot())
            .unwrap_or_default(),
    )
}

/// Runs one key operation on a blocking thread, records it in the audit trail by `admin`,
/// with what changed, then reloads this gateway's index (so the change is in force before
/// the answer). No change is made when the audit file cannot be opened.
async fn write(
    gw: &Arc<Gateway>,
    admin: &KeyRef,
    op: Op,
    now: Timestamp,
) -> Result<Done, GatewayError> {
    let (store, sync) = match &gw.key_sync {
        Some(sync) => (
            Store::Redis(Arc::clone(&sync.store)),
            Some(Arc::clone(sync)),
        ),
        None => (Store::File(gw.store()), None),
    };
    let audit_file = gw.config().log.audit_file.clone();
    let prefix = gw.config().keys.prefix.clone();
    let by = format!("api:{}", admin.id);
    let gw2 = Arc::clone(gw);
    let done = tokio::task::spawn_blocking(move || {
        let mut audit = Audit::open(audit_file.as_deref()).map_err(|e| {
            tracing::error!(error = %e, "key change refused: its audit record could not be written");
            GatewayError::Internal(
                "The audit file cannot be written, so no change was made; see the gateway log."
                    .into(),
            )
        })?;
        let (done, version) = store.apply(&op, &prefix, now)?;
        let (rec, action) = (&done.record, done.action.as_str());
        let event = AuditEvent {
            action,
            key_id: &rec.id,
            key_name: &rec.name,
            by: &by,
            changes: &done.changes,
        };
        if let Err(e) = audit.record(&event) {
            tracing::error!(error = %e, key_id = %rec.id, "key {action} but its audit record was not written");
        }
        match (&sync, version) {
            // Read your writes: the answer waits for this replica's follower to apply it.
            (Some(sync), Some(v)) => {
                if !sync.wait_applied(v, APPLY_WAIT) {
                    tracing::warn!(key_id = %rec.id, version = v, "key change written to the store but not yet in force on this replica");
                }
            }
            (Some(_), None) => {}
            (None, _) if done.changed => {
                if let Err(e) = gw2.reload_keys() {
                    tracing::error!(error = %e, "reload after a management write failed");
                }
            }
            (None, _) => {}
        }
        Ok::<Done, GatewayError>(done)
    })
    .await
    .map_err(|e| GatewayError::Internal(e.to_string()))??;
    if done.changed {
        // A quota set now starts from what the key used in this window, which the last
        // flush moved out of its pending counts: a flush now hands it to the new quota
        // before the answer, so the very next request is judged by it.
        gw.flush_usage().await;
    }
    Ok(done)
}

/// A key's answer after a write: the key as it now is, with `key` when the write made a
/// secret (create, rotate: never cached on the way).
fn written(live: &Live, done: Done, status: StatusCode, now: Timestamp) -> http::Response<Body> {
    let prefix = &live.config.keys.prefix;
    let usage = match done.action {
        Action::Created => None,
        _ => usage_of(live, &done.record.id),
    };
    let mut v = done.record.view(prefix, now, usage.as_ref());
    match done.token {
        Some(token) => {
            v["key"] = token.plaintext.into();
            no_store(json(status, &v))
        }
        None => json(status, &v),
    }
}

async fn read_file(gw: &Arc<Gateway>) -> Result<KeyFile, GatewayError> {
    let store = gw.store();
    tokio::task::spawn_blocking(move || store.load())
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))?
        .map_err(GatewayError::from)
}

pub async fn handle(
    gw: &Arc<Gateway>,
    live: &Live,
    admin: &KeyRef,
    req: Request<Incoming>,
    record: &mut RequestRecord,
) -> Result<http::Response<Body>, GatewayError> {
    let now = Timestamp::now();
    let rest = req.uri().path()["/v1/api-keys".len()..]
        .trim_start_matches('/')
        .to_string();
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    record.route = "admin";
    // Only the list takes parameters (it names the ones it knows); elsewhere one would be
    // a mistake, or an option this API does not have (`?dryRun=All` must not revoke).
    let listing = segs.is_empty() && (method == Method::GET || method == Method::HEAD);
    if !listing {
        no_parameters(req.uri().query())?;
    }
    // HEAD reads like GET (the gateway drops the body).
    let matched = if method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    match (&matched, segs.as_slice()) {
        (&Method::POST, []) => {
            let b: CreateBody = read_json(req, true, record).await?;
            let expires_at = match (b.expires_in_days, b.expires_at) {
                (Some(_), Some(_)) => {
                    return Err(GatewayError::InvalidParam {
                        param: "expires_at".into(),
                        message: "Give `expires_in_days` or `expires_at`, not both.".into(),
                    })
                }
                (Some(d), None) => Some(edit::days_from_now(now, d)?),
                (None, at) => at,
            };
            let new = NewKey {
                name: b.name,
                scopes: b.scopes,
                models: b.models,
                expires_at,
                limits: b.limits,
                description: b.description,
                metadata: b.metadata,
                quotas: b.quotas,
            };
            let done = write(gw, admin, Op::Create(new), now).await?;
            Ok(written(live, done, StatusCode::CREATED, now))
        }
        (&Method::GET, []) => {
            // A pass over every key: off the runtime's threads, as a write's file work is.
            let (live, query) = (gw.live(), req.uri().query().map(str::to_string));
            let diverged = gw
                .key_sync
                .as_ref()
                .is_some_and(|s| s.diverged.load(std::sync::atomic::Ordering::Relaxed));
            tokio::task::spawn_blocking(move || list::list(&live, query.as_deref(), now, diverged))
                .await
                .map_err(|e| GatewayError::Internal(e.to_string()))?
        }
        (&Method::GET, [id]) => {
            let entry = list::entry(live, id)?;
            let usage = key_usage(gw, live, id).await;
            let quota = key_quota(gw, live, id, entry.quotas.as_deref());
            Ok(list::show(live, entry, now, usage, quota))
        }
        (&Method::POST, [id, "rotate"]) => {
            let b: RotateBody = read_json(req, false, record).await?;
            if now
                .checked_plus(Duration::from_secs(b.grace_seconds))
                .is_none()
            {
                return Err(GatewayError::InvalidParam {
                    param: "grace_seconds".into(),
                    message: "`grace_seconds` must end the grace before the year 10000.".into(),
                });
            }
            let op = Op::Rotate {
                id: id.to_string(),
                grace: Duration::from_secs(b.grace_seconds),
            };
            let done = write(gw, admin, op, now).await?;
            Ok(written(live, done, StatusCode::OK, now))
        }
        (&Method::DELETE, [id]) => {
            let NoBody {} = read_json(req, false, record).await?;
            let op = Op::Revoke { id: id.to_string() };
            let done = write(gw, admin, op, now).await?;
            Ok(written(live, done, StatusCode::OK, now))
        }
        (&Method::PATCH, [id]) => {
            let b: edit::PatchBody = read_json(req, true, record).await?;
            let op = Op::Update {
                id: id.to_string(),
                patch: b.into_patch(now)?,
            };
            let done = write(gw, admin, op, now).await?;
            Ok(written(live, done, StatusCode::OK, now))
        }
        (&Method::POST, [id, action @ ("disable" | "enable")]) => {
            let id = id.to_string();
            let NoBody {} = read_json(req, false, record).await?;
            let op = match *action {
                "disable" => Op::Disable { id },
                _ => Op::Enable { id },
            };
            let done = write(gw, admin, op, now).await?;
            Ok(written(live, done, StatusCode::OK, now))
        }
        _ => Err(GatewayError::UnknownRoute(
            method,
            req.uri().path().to_string(),
        )),
    }
}

/// Answers carrying a plaintext key must never be cached by anything in between.
fn no_store(mut r: http::Response<Body>) -> http::Response<Body> {
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// A key's lifetime usage: in cluster mode summed over every replica (Redis), else (or when
/// Redis does not answer) this gateway's.
async fn key_usage(gw: &Gateway, live: &Live, id: &str) -> UsageSnapshot {
    let local = usage_of(live, id).unwrap_or_default();
    match gw.usage.key_totals(live.keys.as_deref(), id).await {
        None => local,
        Some(Ok((c, last_used))) => UsageSnapshot::of(&c, last_used.max(local.last_used)),
        Some(Err(e)) => {
            tracing::warn!(error = %e, key_id = %id, "key usage read from this gateway only: Redis did not answer");
            local
        }
    }
}

/// A key's quotas with what is used and left of each (`limit::quota::view`), as this gateway
/// enforces them.
fn key_quota(gw: &Gateway, live: &Live, id: &str, quotas: Option<&KeyQuotas>) -> serde_json::Value {
    let state = live.keys.as_ref().and_then(|idx| idx.state_of(id));
    let used = |w| state.as_ref().map(|s| s.quota.used(w)).unwrap_or_default();
    quota::view(quotas, used, gw.usage.clock.now())
}

/// `GET /v1/usage`: usage over time, filtered and summed as the query asks (`usage::query`).
pub async fn usage(
    gw: &Arc<Gateway>,
    live: &Live,
    uri: &http::Uri,
) -> Result<http::Response<Body>, GatewayError> {
    let now = gw.usage.clock.now();
    let retention = live.config.usage.retention;
    let q =
        Query::from_url(uri.query(), now, retention).map_err(|e| GatewayError::InvalidParam {
            param: e.param,
            message: e.message,
        })?;
    // The key file gives names and labels: read only when rows need them.
    let file = match q.group.key || !q.meta.is_empty() {
        true => Some(read_file(gw).await?),
        false => None,
    };
    let keys: HashMap<&str, &KeyRecord> = file
        .iter()
        .flat_map(|f| &f.keys)
        .map(|k| (k.id.as_str(), k))
        .collect();
    let rows = gw
        .usage
        .rows(live.keys.as_deref(), q.hours(now, retention))
        .await
        .map_err(GatewayError::UsageUnavailable)?;
    let lines = query::sum(&q, rows, &keys);
    Ok(json(StatusCode::OK, &query::answer(&q, &lines, &keys)))
}
