//! Structured logs on stderr, text or JSON, with a level that a config reload can change.

use crate::config::{LogConfig, LogFormat};
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `[log] level`.
pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&cfg.level));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match cfg.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    if result.is_ok() {
        let _ = LEVEL.set(handle);
    }
}

/// Applies a new `[log] level` from a config reload.
pub fn set_level(level: &str) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    if let (Some(h), Ok(f)) = (LEVEL.get(), EnvFilter::try_new(level)) {
        let _ = h.reload(f);
    }
}
