//! The backend's one connection to Redis: made in the background, made anew when a call
//! fails in a way redis-rs's `ConnectionManager` does not recover from, and probed in the
//! background while the breaker is open.
//!
//! The manager reconnects by itself only after an I/O error. A reconnection whose login
//! fails (Redis's password changed, or a Redis briefly up with another one) leaves it
//! answering every later call with that failure, even once the password works again: such a
//! call hands the manager back to [`connect`], which builds a new one, retrying every second.
//! And the breaker closes only when a call succeeds: without the [`probe`], a replica with no
//! traffic would answer its first requests after Redis returned with the failure policy.

use super::breaker::{Breaker, OPEN};
use crate::config::cluster::{redis_client, ClusterConfig};
use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The connection to Redis, once made, and the breaker in front of it.
pub struct Link {
    config: ClusterConfig,
    conn: ArcSwapOption<ConnectionManager>,
    /// Set while a connection is being made in the background ([`connect`]).
    connecting: AtomicBool,
    /// Why the connection was last made anew (logged at warn once per reason).
    last_reconnect: Mutex<String>,
    pub breaker: Breaker,
}

/// The timeout of background calls (renewals, removals, the connection's own): longer than a
/// check's, as they carry batches and nobody waits on them.
pub fn background_timeout(c: &ClusterConfig) -> Duration {
    (c.lease / 3).min(Duration::from_secs(1)).max(c.timeout)
}

impl Link {
    /// A link to the Redis of `config`, connecting (and probing) in the background when a
    /// Tokio runtime runs.
    pub fn start(config: ClusterConfig) -> Arc<Link> {
        let link = Arc::new(Link {
            breaker: Breaker::new(config.on_backend_error),
            config,
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(true),
            last_reconnect: Mutex::default(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(connect(Arc::downgrade(&link)));
            rt.spawn(probe(Arc::downgrade(&link)));
        }
        link
    }

    /// The connection, once made.
    pub fn load(&self) -> Option<Arc<ConnectionManager>> {
        self.conn.load_full()
    }

    /// Connected, and the breaker closed.
    pub fn is_up(&self) -> bool {
        self.conn.load().is_some() && self.breaker.is_closed()
    }

    /// Drops the connection and makes a new one in the background (once at a time); calls
    /// meanwhile get the failure policy, as before the first connection.
    pub fn reconnect(self: &Arc<Self>, why: &RedisError) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let why = why.to_string();
        let mut last = self
            .last_reconnect
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *last != why {
            tracing::warn!(reason = %why, "the Redis limit connection cannot recover by itself; making a new one");
            *last = why;
        } else {
            tracing::debug!(reason = %why, "making a new Redis limit connection");
        }
        drop(last);
        self.conn.store(None);
        tokio::spawn(connect(Arc::downgrade(self)));
    }
}

/// Connects in the background, retrying every second; each failure reason is logged once.
async fn connect(link: Weak<Link>) {
    let mut last = String::new();
    loop {
        let Some(l) = link.upgrade() else { return };
        if l.config.redis_url.starts_with("rediss://") {
            // redis-rs builds its TLS configuration with the process's default provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(background_timeout(&l.config))
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let attempt = match redis_client(&l.config) {
            Ok(client) => ConnectionManager::new_with_config(client, cfg)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("`{}`: {e}", e.field())),
        };
        match attempt {
            Ok(m) => {
                tracing::info!("connected to the Redis limit backend");
                l.conn.store(Some(Arc::new(m)));
                l.connecting.store(false, Ordering::Release);
                return;
            }
            Err(reason) => {
                l.breaker.errors.fetch_add(1, Ordering::Relaxed);
                if reason != last {
                    tracing::warn!(
                        %reason,
                        policy = ?l.config.on_backend_error,
                        "cannot connect to the Redis limit backend; the failure policy applies, retrying every second"
                    );
                    last = reason;
                } else {
                    tracing::debug!(%reason, "cannot connect to the Redis limit backend");
                }
            }
        }
        drop(l);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether a failed call means the connection must be made anew: its login failed (the
/// manager's reconnection gave up), or it reaches a server that became a read-only replica
/// (a failover behind the same address). I/O errors the manager handles itself; anything
/// else is an answer a new connection would get too (`NOAUTH`: no password configured).
pub fn needs_new_connection(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::AuthenticationFailed | ErrorKind::ReadOnly | ErrorKind::InvalidClientConfig
    )
}

/// While the breaker is open, asks Redis for a `PING` once per open interval, as the probe a
/// request would have been, so the breaker closes as soon as Redis answers, traffic or not.
async fn probe(link: Weak<Link>) {
    loop {
        tokio::time::sleep(OPEN).await;
        let Some(l) = link.upgrade() else { return };
        if !l.breaker.probe_due() {
            continue;
        }
        let Some(conn) = l.load() else {
            l.breaker.failed("not connected to Redis");
            continue;
        };
        let mut conn = (*conn).clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(l.config.timeout, ping).await {
            Ok(Ok(_)) => l.breaker.succeeded(),
            Ok(Err(e)) => {
                l.breaker.failed(&e.to_string());
                if needs_new_connection(&e) {
                    l.reconnect(&e);
                }
            }
            Err(_) => l.breaker.failed(&format!(
                "no answer within {} (`cluster.timeout`)",
                humantime::format_duration(l.config.timeout)
            )),
        }
    }
}
