//! `[notify]`: the webhook that hears about keys (`ops::notify`), validated. Every error names
//! its field. A reload applies a change at once (the notifier reads the configuration in force
//! at every look and every attempt).
//!
//! The URL is kept in parts, and shown in logs only as scheme, host and port: a webhook URL
//! often is the secret (Slack's carry their token in the path). The `Authorization` value read
//! from `header_env` is a sensitive header value: never printed, not even by `Debug`.

use super::raw::RawNotify;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::HeaderValue;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What a notification's body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The event as a JSON object (docs/reference.md, Notifications).
    Json,
    /// `{"text": "…"}`: one readable line, what Slack's incoming webhooks (and Mattermost's,
    /// and many chat bridges) take.
    Slack,
}

/// Where notifications go.
#[derive(Clone)]
pub struct WebhookUrl {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The host to connect to (and to check the certificate against): no brackets.
    pub host: String,
    pub port: u16,
    pub path: PathAndQuery,
}

impl WebhookUrl {
    /// `https://hooks.example.com:443`: what logs may show (the path may hold a token).
    pub fn shown(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.authority.host(), self.port)
    }
}

/// `[notify]`, validated.
#[derive(Clone)]
pub struct NotifyConfig {
    pub url: WebhookUrl,
    pub format: Format,
    /// Days before an expiry at which a key is notified, ascending, no repeats.
    pub expiry_days: Vec<u64>,
    /// For one delivery attempt: connect, TLS, the request and the answer's head.
    pub timeout: Duration,
    /// Sent as `Authorization` (the whole value of `header_env`'s variable).
    pub authorization: Option<HeaderValue>,
    pub ca_file: Option<PathBuf>,
    /// Client TLS (Mozilla roots plus `ca_file`) for an `https` URL.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("url", &self.url.shown())
            .field("format", &self.format)
            .field("expiry_days", &self.expiry_days)
            .field("timeout", &self.timeout)
            .field("authorization", &self.authorization.as_ref().map(|_| "…"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// A `[notify]` field that is wrong, and why.
#[derive(Debug)]
pub struct NotifyError {
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> NotifyError {
    NotifyError {
        field,
        message: message.into(),
    }
}

/// The days used when `expiry_days` is not set (the expiry warnings' days).
pub const DEFAULT_EXPIRY_DAYS: [u64; 3] = [7, 3, 1];

/// `[notify]` as written to its validated form; relative paths start at `base`.
pub(super) fn validate(raw: RawNotify, base: &Path) -> Result<NotifyConfig, NotifyError> {
    let url = raw
        .webhook_url
        .ok_or_else(|| err("notify.webhook_url", "is required in [notify]"))?;
    let url = webhook_url(&url)?;
    let format = match raw.format.as_deref() {
        None | Some("json") => Format::Json,
        Some("slack") => Format::Slack,
        Some(other) => {
            return Err(err(
                "notify.format",
                format!("`{other}` is not `json` or `slack`"),
            ))
        }
    };
    let mut expiry_days = raw
        .expiry_days
        .unwrap_or_else(|| DEFAULT_EXPIRY_DAYS.to_vec());
    if let Some(d) = expiry_days.iter().find(|d| !(1..=365).contains(*d)) {
        return Err(err(
            "notify.expiry_days",
            format!("{d} is not a number of days from 1 to 365"),
        ));
    }
    expiry_days.sort_unstable();
    expiry_days.dedup();
    let timeout = match raw.timeout {
        None => Duration::from_secs(5),
        Some(s) => crate::time::parse_duration(&s).map_err(|e| err("notify.timeout", e))?,
    };
    if timeout.is_zero() {
        return Err(err("notify.timeout", "must be more than 0"));
    }
    let authorization = match raw.header_env {
        None => None,
        Some(var) => {
            let v = std::env::var(&var)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| {
                    err(
                        "notify.header_env",
                        format!("environment variable `{var}` is not set"),
                    )
                })?;
            let mut hv = HeaderValue::try_from(v.trim()).map_err(|_| {
                err(
                    "notify.header_env",
                    format!("`{var}` holds characters not allowed in a header"),
                )
            })?;
            hv.set_sensitive(true);
            Some(hv)
        }
    };
    let ca_file = raw.ca_file.map(|p| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    });
    let tls = if url.scheme == Scheme::HTTPS {
        let mut tls = crate::server::tls::client_config(ca_file.as_deref())
            .map_err(|e| err("notify.ca_file", e.to_string()))?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(Arc::new(tls))
    } else {
        if ca_file.is_some() {
            return Err(err("notify.ca_file", "needs an https:// webhook_url"));
        }
        None
    };
    Ok(NotifyConfig {
        url,
        format,
        expiry_days,
        timeout,
        authorization,
        ca_file,
        tls,
    })
}

fn webhook_url(s: &str) -> Result<WebhookUrl, NotifyError> {
    const FIELD: &str = "notify.webhook_url";
    // The message never repeats the URL: it may hold a token.
    let uri: http::Uri = s.trim().parse().map_err(|_| err(FIELD, "is not a URL"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .filter(|s| *s == Scheme::HTTP || *s == Scheme::HTTPS)
        .ok_or_else(|| err(FIELD, "must start with http:// or https://"))?;
    let authority = uri
        .authority()
        .cloned()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| err(FIELD, "has no host"))?;
    if authority.as_str().contains('@') {
        return Err(err(
            FIELD,
            "must not hold credentials (user:password@); send a token with notify.header_env",
        ));
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string();
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == Scheme::HTTPS { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Ok(WebhookUrl {
        scheme,
        authority,
        host,
        port,
        path,
    })
}
