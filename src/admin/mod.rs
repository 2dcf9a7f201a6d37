//! The management API (reference: Management API), behind the `admin` scope on the main listener.
//!
//! Writes go through the same locked, atomic `KeyStore::update` as the CLI, then this
//! gateway reloads its index at once (once: its own watcher then finds the file it loaded);
//! other gateways watching the file follow by reload.
//! The plaintext of a new or rotated key is in the one answer that creates it, nowhere else.

pub mod console;
pub mod list;

use crate::account::RequestRecord;
use crate::error::GatewayError;
use crate::gateway::{Gateway, Live};
use crate::keys::error::StoreError;
use crate::keys::file::KeyFile;
use crate::keys::index::KeyRef;
use crate::keys::record::{KeyLimits, KeyRecord, NewKey};
use crate::keys::usage::UsageSnapshot;
use crate::ops::audit::{Audit, AuditEvent};
use crate::proxy::response_body::{json, Body};
use crate::time::Timestamp;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

const MAX_ADMIN_BODY: usize = 64 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    expires_in_days: Option<u32>,
    expires_at: Option<Timestamp>,
    #[serde(default)]
    limits: KeyLimits,
    description: Option<String>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    quotas: crate::keys::record::KeyQuotas,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    grace_seconds: u64,
}

fn usage_of(live: &Live, id: &str) -> Option<UsageSnapshot> {
    let idx = live.keys.as_ref()?;
    idx.by_id(id)?;
    Some(
        idx.state_of(id)
            .map(|s| s.usage.snapshot())
            .unwrap_or_default(),
    )
}

async fn read_json<T: for<'de> Deserialize<'de> + Default>(
    body: Incoming,
    required: bool,
    record: &mut RequestRecord,
) -> Result<T, GatewayError> {
    let bytes = http_body_util::Limited::new(body, MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|_| GatewayError::TooLarge(MAX_ADMIN_BODY as u64))?
        .to_bytes();
    record.bytes_received = bytes.len() as u64;
    if bytes.iter().all(u8::is_ascii_whitespace) && !required {
        return Ok(T::default());
    }
    // serde would take an array as a struct's fields in order: only an object names fields.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(GatewayError::InvalidRequest(
            "The request body must be a JSON object.".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(GatewayError::json_body)?;
    de.end().map_err(|e| GatewayError::json_trailing(&e))?;
    Ok(value)
}

/// Runs a key-file change on a blocking thread, records it in the audit trail as `action` by
/// `admin`, then reloads this gateway's index. `changed` picks the changed key out of the
/// result. No change is made when the audit file cannot be opened.
async fn write<T: Send + 'static>(
    gw: &Arc<Gateway>,
    admin: &KeyRef,
    action: &'static str,
    change: impl FnOnce(&mut KeyFile) -> Result<T, StoreError> + Send + 'static,
    changed: fn(&T) -> &KeyRecord,
) -> Result<T, GatewayError> {
    let store = gw.store();
    let audit_file = gw.config().log.audit_file.clone();
    let by = format!("api:{}", admin.id);
    let gw2 = Arc::clone(gw);
    tokio::task::spawn_blocking(move || {
        let mut audit = Audit::open(audit_file.as_deref()).map_err(|e| {
            tracing::error!(error = %e, "key change refused: its audit record could not be written");
            GatewayError::Internal(
                "The audit file cannot be written, so no change was made; see the gateway log."
                    .into(),
            )
        })?;
        let out = store.update(change)?;
        let rec = changed(&out);
        let event = AuditEvent {
            action,
            key_id: &rec.id,
            key_name: &rec.name,
            by: &by,
        };
        if let Err(e) = audit.record(&event) {
            tracing::error!(error = %e, key_id = %rec.id, "key {action} but its audit record was not written");
        }
        if let Err(e) = gw2.reload_keys() {
            tracing::error!(error = %e, "reload after a management write failed");
        }
        Ok::<T, GatewayError>(out)
    })
    .await
    .map_err(|e| GatewayError::Internal(e.to_string()))?
}

pub async fn handle(
    gw: &Arc<Gateway>,
    live: &Live,
    admin: &KeyRef,
    req: Request<Incoming>,
    record: &mut RequestRecord,
) -> Result<http::Response<Body>, GatewayError> {
    let prefix = live.config.keys.prefix.clone();
    let now = Timestamp::now();
    let rest = req.uri().path()["/v1/api-keys".len()..]
        .trim_start_matches('/')
        .to_string();
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    record.route = "admin";
    // HEAD reads like GET (the gateway drops the body).
    let matched = if method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    match (&matched, segs.as_slice()) {
        (&Method::POST, []) => {
            let b: CreateBody = read_json(req.into_body(), true, record).await?;
            let expires_at = match (b.expires_in_days, b.expires_at) {
                (Some(_), Some(_)) => {
                    return Err(GatewayError::InvalidParam {
                        param: "expires_at".into(),
                        message: "Give `expires_in_days` or `expires_at`, not both.".into(),
                    })
                }
                (Some(0), None) => {
                    return Err(GatewayError::InvalidParam {
                        param: "expires_in_days".into(),
                        message: "`expires_in_days` must be at least 1.".into(),
                    })
                }
                (Some(d), None) => Some(
                    now.checked_plus(Duration::from_secs(u64::from(d) * 86_400))
                        .ok_or_else(|| GatewayError::InvalidParam {
                            param: "expires_in_days".into(),
                            message: "`expires_in_days` is too large.".into(),
                        })?,
                ),
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
            let p = prefix.clone();
            let (rec, token) = write(
                gw,
                admin,
                "created",
                move |f| f.create(new, &p, now),
                |(rec, _)| rec,
            )
            .await?;
            let mut v = rec.view(&prefix, now, None);
            v["key"] = token.plaintext.into();
            Ok(no_store(json(StatusCode::CREATED, &v)))
        }
        (&Method::GET, []) => {
            // A pass over every key: off the runtime's threads, as a write's file work is.
            let (live, query) = (gw.live(), req.uri().query().map(str::to_string));
            tokio::task::spawn_blocking(move || list::list(&live, query.as_deref(), now))
                .await
                .map_err(|e| GatewayError::Internal(e.to_string()))?
        }
        (&Method::GET, [id]) => list::show(live, id, now),
        (&Method::POST, [id, "rotate"]) => {
            let b: RotateBody = read_json(req.into_body(), false, record).await?;
            let (id, p) = (id.to_string(), prefix.clone());
            let (rec, token) = write(
                gw,
                admin,
                "rotated",
                move |f| f.rotate(&id, b.grace_seconds, &p, now),
                |(rec, _)| rec,
            )
            .await?;
            let mut v = rec.view(&prefix, now, usage_of(live, &rec.id).as_ref());
            v["key"] = token.plaintext.into();
            Ok(no_store(json(StatusCode::OK, &v)))
        }
        (&Method::DELETE, [id]) => {
            let id = id.to_string();
            let rec = write(gw, admin, "revoked", move |f| f.revoke(&id, now), |rec| rec).await?;
            Ok(json(
                StatusCode::OK,
                &rec.view(&prefix, now, usage_of(live, &rec.id).as_ref()),
            ))
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

/// `GET /v1/usage`: per-key requests, errors and tokens since the counters began.
pub fn usage(live: &Live) -> http::Response<Body> {
    let mut data: Vec<serde_json::Value> = live
        .keys
        .iter()
        .flat_map(|idx| idx.entries().map(move |e| (e, idx.state_of(&e.id))))
        .map(|(e, state)| {
            let snapshot = state.map(|s| s.usage.snapshot()).unwrap_or_default();
            let mut v = serde_json::to_value(snapshot).unwrap_or_default();
            v["id"] = e.id.to_string().into();
            v["name"] = e.name.to_string().into();
            v
        })
        .collect();
    data.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json(
        StatusCode::OK,
        &serde_json::json!({"object": "list", "data": data}),
    )
}
