//! `GET /v1/api-keys` (a page of keys, as OpenAI pages its lists) and `GET
//! /v1/api-keys/{id}`, answered from the gateway's index — never by reading the key file —
//! so a list of a million keys costs one pass over the index and a page of JSON.

use crate::error::GatewayError;
use crate::gateway::Live;
use crate::keys::entry::KeyEntry;
use crate::keys::entry::KeyId;
use crate::keys::error::StoreError;
use crate::keys::list::{self, Filter, ListQuery, Order, SortBy, Statuses};
use crate::keys::usage::UsageSnapshot;
use crate::keys::view::KeyView;
use crate::proxy::response_body::Body;
use crate::proxy::whole::json;
use crate::time::Timestamp;
use http::StatusCode;

/// How many keys a page holds when `limit` is not given, and at most.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;

fn invalid(param: &str, message: String) -> GatewayError {
    GatewayError::InvalidParam {
        param: param.to_string(),
        message,
    }
}

/// Reads the list's query string; an unknown, repeated or invalid parameter is named.
pub fn parse_query(query: Option<&str>) -> Result<ListQuery, GatewayError> {
    let mut q = ListQuery {
        filter: Filter::default(),
        sort: SortBy::CreatedAt,
        order: Order::Desc,
        limit: DEFAULT_LIMIT,
        after: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let name = name.as_ref();
        let bad = |what: &str| invalid(name, format!("`{name}` {what}."));
        if name != "meta" {
            if seen.iter().any(|s| s == name) {
                return Err(bad("is given twice"));
            }
            seen.push(name.to_string());
        }
        // A filter matches stored text, so it is held to the stored rule (a name written
        // before invisible characters were refused can still be looked for).
        crate::text::check_stored(name, &value).map_err(|e| bad(&e.problem()))?;
        let time = |v: &str| {
            Timestamp::parse(v)
                .map_err(|_| bad("must be an RFC 3339 time, e.g. 2026-01-31T00:00:00Z"))
        };
        match name {
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(&format!("must be an integer from 1 to {MAX_LIMIT}")))?;
            }
            "after" => {
                let id = Some(value.as_ref())
                    .filter(|v| crate::keys::token::is_valid_id(v))
                    .and_then(KeyId::new)
                    .ok_or_else(|| bad("must be a key id (`key_` and 16 letters or digits)"))?;
                q.after = Some(id);
            }
            "sort" => {
                q.sort = match value.as_ref() {
                    "created_at" => SortBy::CreatedAt,
                    "name" => SortBy::Name,
                    "last_used_at" => SortBy::LastUsedAt,
                    "expires_at" => SortBy::ExpiresAt,
                    _ => return Err(bad("must be created_at, name, last_used_at or expires_at")),
                }
            }
            "order" => {
                q.order = match value.as_ref() {
                    "asc" => Order::Asc,
                    "desc" => Order::Desc,
                    _ => return Err(bad("must be asc or desc")),
                }
            }
            "name_prefix" => q.filter.name_prefix = Some(value.into_owned()),
            "status" => q.filter.statuses = Statuses::parse(&value).map_err(|e| bad(&e))?,
            "meta" => q
                .filter
                .meta
                .push(list::parse_label(&value, ':').map_err(|e| bad(&e))?),
            "expiring_within" => {
                let d = crate::time::parse_duration(&value).map_err(|e| bad(&format!("must be a duration: {e}")))?;
                q.filter.expiring_within = Some(d);
            }
            "last_used_before" => q.filter.last_used_before = Some(time(&value)?),
            "last_used_after" => q.filter.last_used_after = Some(time(&value)?),
            _ => return Err(bad("is not a parameter of this list (limit, after, sort, order, name_prefix, status, meta, expiring_within, last_used_before, last_used_after)")),
        }
    }
    Ok(q)
}

/// `GET /v1/api-keys?…`: `{"object": "list", "data", "first_id", "last_id", "has_more"}`.
pub fn list(
    live: &Live,
    query: Option<&str>,
    now: Timestamp,
    diverged: bool,
) -> Result<http::Response<Body>, GatewayError> {
    let q = parse_query(query)?;
    let empty;
    let index = match live.keys.as_deref() {
        Some(index) => index,
        None => {
            empty = crate::keys::index::KeyIndex::empty(&live.config.limits);
            &empty
        }
    };
    let page =
        list::page(index, &q, now).map_err(|e| invalid("after", format!("`after`: {e}.")))?;
    let prefix = &live.config.keys.prefix;
    let data: Vec<serde_json::Value> = page
        .keys
        .iter()
        .map(|e| KeyView::of_entry(e).json(prefix, now, index.usage(e).as_ref()))
        .collect();
    let id = |e: Option<&&crate::keys::entry::KeyEntry>| e.map(|e| e.id.to_string());
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "object": "list",
            "data": data,
            "first_id": id(page.keys.first()),
            "last_id": id(page.keys.last()),
            "has_more": page.has_more,
            "key_store": key_store(live, diverged),
        }),
    ))
}

/// `{"writable": true}`, or `false` with the reason writes would be refused (409
/// `read_only_key_store`; in the shared store, 503 while it is diverged), so the console can
/// say so before anyone tries. (While Redis does not answer, a write gets 503
/// `key_store_unavailable`: that is not known here.)
fn key_store(live: &Live, diverged: bool) -> serde_json::Value {
    if let crate::config::StoreMode::Redis(_) = live.config.keys.store {
        if diverged {
            return serde_json::json!({
                "writable": false,
                "reason": "the key store lost key changes (diverged); run `keygate keys push` on a replica whose snapshot has them"
            });
        }
        return serde_json::json!({ "writable": true });
    }
    match crate::keys::store::KeyStore::new(&live.config.keys.file).writable() {
        Err(StoreError::ReadOnly { reason, .. }) => {
            serde_json::json!({ "writable": false, "reason": reason })
        }
        // Another failure is not read-only: the write itself reports it.
        _ => serde_json::json!({ "writable": true }),
    }
}

/// The key `id` as this gateway serves it, or 404.
pub fn entry<'a>(live: &'a Live, id: &str) -> Result<&'a KeyEntry, GatewayError> {
    live.keys
        .as_deref()
        .and_then(|i| i.entry(id))
        .ok_or_else(|| StoreError::NotFound(id.to_string()).into())
}

/// `GET /v1/api-keys/{id}`: the key with its `usage` and `quota`.
pub fn show(
    live: &Live,
    entry: &KeyEntry,
    now: Timestamp,
    usage: UsageSnapshot,
    quota: serde_json::Value,
) -> http::Response<Body> {
    let mut v = KeyView::of_entry(entry).json(&live.config.keys.prefix, now, Some(&usage));
    v["usage"] = serde_json::to_value(usage).unwrap_or_default();
    v["quota"] = quota;
    json(StatusCode::OK, &v)
}
