//! Which buckets a usage query covers (a time range, keys, models, key labels) and how it sums
//! them (by key, model, day or hour, in any combination but day with hour): the rows of
//! `GET /v1/usage` and `keygate usage`.

use crate::keys::annotations::is_label_name;
use crate::keys::entry::KeyId;
use crate::keys::record::KeyRecord;
use crate::keys::usage::{Counter, Counts};
use crate::time::Timestamp;
use crate::usage::window::{day_label, day_of, hour_label, hour_of, hour_start, parse_time, HOUR};
use crate::usage::Row;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// A time step rows are summed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Day,
    Hour,
}

/// What rows are summed by: `key`, `model`, and `day` or `hour`; none of them sums everything
/// into one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Group {
    pub key: bool,
    pub model: bool,
    pub step: Option<Step>,
}

impl Group {
    pub const BY_KEY: Group = Group {
        key: true,
        model: false,
        step: None,
    };

    /// `key`, `model,day`, `key,model,hour`, … (empty: everything in one row).
    pub fn parse(s: &str) -> Result<Group, String> {
        let mut g = Group::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "key" => g.key = true,
                "model" => g.model = true,
                "day" | "hour" if g.step.is_some() => {
                    return Err("may hold `day` or `hour`, not both".into())
                }
                "day" => g.step = Some(Step::Day),
                "hour" => g.step = Some(Step::Hour),
                other => {
                    return Err(format!(
                        "holds `{}`; use key, model, day or hour, comma-separated",
                        crate::text::escape(other)
                    ))
                }
            }
        }
        Ok(g)
    }

    /// As the answer's `group_by` lists it.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.key {
            v.push("key");
        }
        if self.model {
            v.push("model");
        }
        match self.step {
            Some(Step::Day) => v.push("day"),
            Some(Step::Hour) => v.push("hour"),
            None => {}
        }
        v
    }
}

/// A usage query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Whole hours: `from` is the first covered, `to` the first not covered.
    pub from: Timestamp,
    pub to: Timestamp,
    /// Only these keys (none: every key).
    pub keys: Vec<KeyId>,
    /// Only these models (none: every model).
    pub models: Vec<String>,
    /// Only keys with every one of these labels.
    pub meta: Vec<(String, String)>,
    pub group: Group,
}

/// A query parameter that is wrong: the parameter, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadParam {
    pub param: String,
    pub message: String,
}

fn bad(param: &str, message: impl Into<String>) -> BadParam {
    BadParam {
        param: param.to_string(),
        message: message.into(),
    }
}

impl Query {
    /// A query of `[from, to)`, widened to whole hours.
    pub fn new(from: Timestamp, to: Timestamp, group: Group) -> Result<Query, BadParam> {
        let from = hour_start(hour_of(from));
        let to = Timestamp(to.0.div_ceil(HOUR) * HOUR);
        if to <= from {
            return Err(bad("to", "`to` must be after `from`."));
        }
        Ok(Query {
            from,
            to,
            keys: Vec::new(),
            models: Vec::new(),
            meta: Vec::new(),
            group,
        })
    }

    /// The query of a URL's query string (`GET /v1/usage`): `from`, `to` (default: the
    /// `retention` before `now`, and the end of `now`'s hour), `key_id` and `model` (repeatable; `key_id`
    /// also comma-separated), `meta=label:value` (repeatable: all must match), `group_by`
    /// (default `key`). Anything else is refused, naming the parameter.
    pub fn from_url(
        query: Option<&str>,
        now: Timestamp,
        retention: Duration,
    ) -> Result<Query, BadParam> {
        let (mut from, mut to, mut group) = (None, None, None);
        let (mut keys, mut models, mut meta) = (Vec::new(), Vec::new(), Vec::new());
        let once = |slot: &Option<String>, param: &'static str| match slot {
            Some(_) => Err(bad(param, format!("`{param}` is given more than once."))),
            None => Ok(()),
        };
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let value = value.into_owned();
            match &*name {
                "from" => {
                    once(&from, "from")?;
                    from = Some(value);
                }
                "to" => {
                    once(&to, "to")?;
                    to = Some(value);
                }
                "group_by" => {
                    once(&group, "group_by")?;
                    group = Some(value);
                }
                "key_id" => {
                    for id in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let k = KeyId::new(id).filter(|_| id.starts_with("key_")).ok_or_else(|| {
                            bad(
                                "key_id",
                                format!(
                                    "`key_id` `{}` is not a key id (`key_` and 16 letters or digits).",
                                    crate::text::escape(id)
                                ),
                            )
                        })?;
                        keys.push(k);
                    }
                }
                "model" => models.push(value),
                "meta" => {
                    let (k, v) = value
                        .split_once(':')
                        .filter(|(k, _)| is_label_name(k))
                        .ok_or_else(|| {
                            bad(
                                "meta",
                                "`meta` must be `label:value` with a label of a-z, 0-9, `_`, `.`, `-` (e.g. `meta=team:search`).",
                            )
                        })?;
                    meta.push((k.to_string(), v.to_string()));
                }
                other => {
                    return Err(bad(
                        other,
                        format!(
                            "Unknown query parameter `{}`; use from, to, key_id, model, meta or group_by.",
                            crate::text::escape(other)
                        ),
                    ))
                }
            }
        }
        let time = |v: Option<String>, param: &'static str, default: Timestamp| match v {
            None => Ok(default),
            Some(s) => parse_time(&s, now).map_err(|e| bad(param, format!("`{param}`: {e}."))),
        };
        let from = time(
            from,
            "from",
            Timestamp(now.0.saturating_sub(retention.as_secs())),
        )?;
        let to_given = to.is_some();
        let to = time(to, "to", Query::end_of_hour(now))?;
        let group = match group {
            None => Group::BY_KEY,
            Some(g) => Group::parse(&g).map_err(|e| bad("group_by", format!("`group_by` {e}.")))?,
        };
        let mut q = Query::new(from, to, group).map_err(|e| match to_given {
            true => e,
            // `to` is the end of this hour, which the caller did not give: `from` is wrong.
            false => bad("from", "`from` must be before the end of the current hour."),
        })?;
        q.keys = keys;
        q.models = models;
        q.meta = meta;
        Ok(q)
    }

    /// The end of the hour of `now`: the default end of a query, so the current hour is
    /// covered even in its first second.
    pub fn end_of_hour(now: Timestamp) -> Timestamp {
        hour_start(hour_of(now).saturating_add(1))
    }

    /// The hours to read: the query's, within what the store can hold at `now`.
    pub fn hours(&self, now: Timestamp, retention: Duration) -> Range<u32> {
        let kept = hour_of(Timestamp(now.0.saturating_sub(retention.as_secs())));
        let start = hour_of(self.from).max(kept);
        let end = hour_of(self.to).min(hour_of(now).saturating_add(1));
        start..end.max(start)
    }
}

/// One summed row: what it is summed by, and its counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub key: Option<KeyId>,
    /// `Some("")` for requests that named no model.
    pub model: Option<Arc<str>>,
    /// The hour or day number, when summed by time.
    pub time: Option<u32>,
    pub counts: Counts,
}

/// What a line is summed by: time, key, model.
type GroupKey = (Option<u32>, Option<KeyId>, Option<Arc<str>>);

/// Sums `rows` as `q` asks, with `keys` (the key file's records by id) for names and labels;
/// sorted by time, key name, key id and model.
pub fn sum(q: &Query, rows: Vec<Row>, keys: &HashMap<&str, &KeyRecord>) -> Vec<Line> {
    let hours = hour_of(q.from)..hour_of(q.to);
    let mut sums: BTreeMap<GroupKey, Counts> = BTreeMap::new();
    for (h, id, model, c) in rows {
        if !hours.contains(&h)
            || (!q.keys.is_empty() && !q.keys.contains(&id))
            || (!q.models.is_empty() && !q.models.iter().any(|m| **m == *model))
        {
            continue;
        }
        if !q.meta.is_empty() {
            let Some(rec) = keys.get(id.as_str()) else {
                continue;
            };
            if !q
                .meta
                .iter()
                .all(|(k, v)| rec.metadata.get(k).is_some_and(|x| x == v))
            {
                continue;
            }
        }
        let time = match q.group.step {
            Some(Step::Hour) => Some(h),
            Some(Step::Day) => Some(day_of(hour_start(h))),
            None => None,
        };
        let key = q.group.key.then_some(id);
        let model = q.group.model.then_some(model);
        sums.entry((time, key, model)).or_default().add(&c);
    }
    let mut lines: Vec<Line> = sums
        .into_iter()
        .map(|((time, key, model), counts)| Line {
            key,
            model,
            time,
            counts,
        })
        .collect();
    let name = |l: &Line| {
        l.key
            .and_then(|k| keys.get(k.as_str()).map(|r| r.name.clone()))
    };
    lines.sort_by(|a, b| {
        (a.time, name(a), a.key, &a.model).cmp(&(b.time, name(b), b.key, &b.model))
    });
    lines
}

/// The cells of a line, by column name, in the order `columns` lists them.
pub fn cells(
    q: &Query,
    l: &Line,
    keys: &HashMap<&str, &KeyRecord>,
) -> Vec<(&'static str, serde_json::Value)> {
    let mut out = Vec::new();
    if q.group.key {
        let id = l.key.map(|k| k.to_string());
        let name = l
            .key
            .and_then(|k| keys.get(k.as_str()))
            .map(|r| r.name.clone());
        out.push(("key_id", id.into()));
        out.push(("key_name", name.into()));
    }
    if q.group.model {
        let m = l.model.as_deref().filter(|m| !m.is_empty());
        out.push(("model", m.into()));
    }
    match (q.group.step, l.time) {
        (Some(Step::Day), Some(d)) => out.push(("day", day_label(d).into())),
        (Some(Step::Hour), Some(h)) => out.push(("hour", hour_label(h).into())),
        _ => {}
    }
    for c in Counter::ALL {
        out.push((c.name(), l.counts.get(c).into()));
    }
    out
}

/// The answer of `GET /v1/usage` (and `keygate usage --json`).
pub fn answer(q: &Query, lines: &[Line], keys: &HashMap<&str, &KeyRecord>) -> serde_json::Value {
    let data: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| {
            let mut row: serde_json::Map<String, serde_json::Value> = cells(q, l, keys)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            // The names rows had before `group_by` existed, kept so old clients still read.
            if q.group.key {
                row.insert("id".into(), row["key_id"].clone());
                row.insert("name".into(), row["key_name"].clone());
            }
            row.into()
        })
        .collect();
    serde_json::json!({
        "object": "list",
        "from": q.from,
        "to": q.to,
        "group_by": q.group.names(),
        "data": data,
    })
}

#[cfg(test)]
#[path = "query_tests.rs"]
mod tests;
