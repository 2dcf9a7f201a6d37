//! A notification's body: the event as JSON with the gateway that sent it, or, for Slack and
//! the chat bridges that take its form, `{"text": "…"}` with one readable line. Made at each
//! attempt from the event the ledger keeps, so a `format` changed by a reload applies to what
//! is still queued.

use super::event::{Event, Kind};
use crate::config::notify::Format;

/// The body for `event` in `format`; `host` names this gateway's machine when known.
pub fn body(event: &Event, format: Format, host: Option<&str>) -> Vec<u8> {
    let value = match format {
        Format::Json => {
            let mut v = serde_json::to_value(event).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                let mut gateway = serde_json::Map::new();
                if let Some(h) = host {
                    gateway.insert("host".into(), h.into());
                }
                o.insert("gateway".into(), gateway.into());
            }
            v
        }
        Format::Slack => serde_json::json!({ "text": line(event, host) }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// One line a person reads in a chat channel, in Slack's text form (`&`, `<`, `>` escaped).
pub fn line(e: &Event, host: Option<&str>) -> String {
    let k = &e.key;
    let who = match &k.masked_key {
        Some(m) => format!("API key \"{}\" ({}, {m})", k.name, k.id),
        None => format!("API key \"{}\" ({})", k.name, k.id),
    };
    let what = match e.event {
        Kind::Expiring => {
            let days = e.days_left.unwrap_or(0);
            let at = k
                .expires_at
                .map(|t| format!(", at {t}"))
                .unwrap_or_default();
            format!(
                "expires within {days} day{}{at}; extend it with `keygate keys update {} --expires-in DURATION`",
                if days == 1 { "" } else { "s" },
                k.id
            )
        }
        Kind::Revoked => format!("was revoked at {}", e.at),
        Kind::Disabled => format!(
            "was disabled at {}; `keygate keys enable {}` restores it",
            e.at, k.id
        ),
        Kind::QuotaExhausted => match &e.quota {
            Some(q) => format!(
                "has used up its {} quota ({} of {} in {}); requests are refused until {}",
                q.name.replace('_', " "),
                q.used,
                q.limit,
                q.window,
                q.resets_at
            ),
            None => "has used up a quota".into(),
        },
    };
    let from = host.map(|h| format!(" [{h}]")).unwrap_or_default();
    escape(&format!("keygate{from}: {who} {what}."))
}

/// Slack's three control characters in text.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::super::event::{KeyFacts, QuotaFacts};
    use super::*;
    use crate::time::Timestamp;

    fn event(kind: Kind) -> Event {
        Event {
            id: "key.expiring/key_0000000000000001/3/1800172800".into(),
            event: kind,
            at: Timestamp(1_800_000_000),
            key: KeyFacts {
                id: "key_0000000000000001".into(),
                name: "ci <bot> & co".into(),
                masked_key: Some("sk_kg_…abcd".into()),
                description: Some("nightly".into()),
                metadata: [("team".to_string(), "search".to_string())].into(),
                expires_at: Some(Timestamp(1_800_172_800)),
                status: "active".into(),
            },
            days_left: (kind == Kind::Expiring).then_some(3),
            quota: (kind == Kind::QuotaExhausted).then(|| QuotaFacts {
                name: "tokens_per_day".into(),
                limit: 1000,
                used: 1012,
                window: "2027-01-15".into(),
                resets_at: Timestamp(1_800_057_600),
            }),
        }
    }

    #[test]
    fn json_is_the_event_with_the_gateway() {
        let v: serde_json::Value =
            serde_json::from_slice(&body(&event(Kind::Expiring), Format::Json, Some("gw-1")))
                .unwrap();
        assert_eq!(v["event"], "key.expiring");
        assert_eq!(v["at"], "2027-01-15T08:00:00Z");
        assert_eq!(v["days_left"], 3);
        assert!(v.get("quota").is_none());
        assert_eq!(v["key"]["masked_key"], "sk_kg_…abcd");
        assert_eq!(v["key"]["metadata"]["team"], "search");
        assert_eq!(v["key"]["expires_at"], "2027-01-17T08:00:00Z");
        assert_eq!(v["gateway"], serde_json::json!({"host": "gw-1"}));
        let v: serde_json::Value =
            serde_json::from_slice(&body(&event(Kind::QuotaExhausted), Format::Json, None))
                .unwrap();
        assert_eq!(v["quota"]["name"], "tokens_per_day");
        assert_eq!(v["quota"]["resets_at"], "2027-01-16T00:00:00Z");
        assert!(v.get("days_left").is_none());
        assert_eq!(v["gateway"], serde_json::json!({}));
    }

    #[test]
    fn slack_is_one_escaped_line() {
        let v: serde_json::Value =
            serde_json::from_slice(&body(&event(Kind::Expiring), Format::Slack, Some("gw-1")))
                .unwrap();
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        assert_eq!(
            v["text"],
            "keygate [gw-1]: API key \"ci &lt;bot&gt; &amp; co\" (key_0000000000000001, sk_kg_…abcd) expires within 3 days, at 2027-01-17T08:00:00Z; extend it with `keygate keys update key_0000000000000001 --expires-in DURATION`."
        );
        let q = line(&event(Kind::QuotaExhausted), None);
        assert!(
            q.ends_with("has used up its tokens per day quota (1012 of 1000 in 2027-01-15); requests are refused until 2027-01-16T00:00:00Z."),
            "{q}"
        );
        assert!(line(&event(Kind::Revoked), None).contains("was revoked at 2027-01-15T08:00:00Z"));
    }
}
