//! Process-level wiring for `keygate serve` (and `demo`) and `keygate mock`: runtime, logging,
//! metrics listener, file watchers, the maintenance task, the notifier and signals.

use crate::cli::config::load_config;
use crate::cli::error::CliError;
use crate::cli::output::line;
use crate::config::{is_blank, Config};
use crate::gateway::Gateway;
use crate::ops::logging::Logging;
use crate::ops::maintenance::{Maintenance, Running};
use crate::watch::{FailureLatch, Loaded};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The runtime: tokio's single-threaded one when the process has one core to run on (a pod
/// with a CPU limit of 1, `taskset`, `TOKIO_WORKER_THREADS=1`), the multi-threaded one
/// otherwise. With one worker the multi-threaded runtime still polls the main future on a
/// thread of its own, hands tasks between the two and pays for work stealing that has no one
/// to steal from; the single-threaded one runs every task where it was woken.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    let workers = match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(v)) => return Err(bad_workers(v)),
    };
    let mut builder = if one_core(
        workers.as_deref(),
        std::thread::available_parallelism().ok(),
    )? {
        tracing::info!("one core: requests run on tokio's single-threaded runtime");
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start the runtime: {e}")))
}

fn bad_workers(v: impl std::fmt::Debug) -> CliError {
    CliError::Runtime(format!(
        "TOKIO_WORKER_THREADS must be a whole number of threads above 0, not {v:?}"
    ))
}

/// Whether one worker is all the process gets: `TOKIO_WORKER_THREADS` when set (tokio's own
/// multi-threaded runtime reads it too, and panics on a value that is not a positive number:
/// refused here first, with a message), else the cores available to it (std counts the CPU
/// affinity mask and a cgroup CPU quota).
fn one_core(
    workers_env: Option<&str>,
    available: Option<std::num::NonZeroUsize>,
) -> Result<bool, CliError> {
    match workers_env {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n == 1),
            _ => Err(bad_workers(v)),
        },
        None => Ok(available.is_some_and(|n| n.get() == 1)),
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Everything `serve` runs beside the listener; aborted when the server returns.
struct Background {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    maintenance: Option<Running>,
    /// Ends with `Background` (its ledger is saved at every change).
    _notifier: crate::ops::notify::Notifier,
}

impl Background {
    /// Stops the maintenance task (which saves usage a last time), then the rest.
    async fn stop(mut self) {
        if let Some(m) = self.maintenance.take() {
            m.stop().await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Loads keys, starts watchers, the metrics listener and the maintenance task.
async fn start(gw: &Arc<Gateway>, watch_config: bool) -> Result<Background, CliError> {
    let cfg = gw.config();
    let mut tasks = Vec::new();
    let restored = Arc::new(AtomicBool::new(false));
    let state_file = cfg.keys.state_file.clone();

    let load = {
        let (gw, restored, state_file) =
            (Arc::clone(gw), Arc::clone(&restored), state_file.clone());
        let failures = FailureLatch::default();
        // The watcher's loads skip a file the index was already read from (a management
        // write reloads at once): `changed_only`.
        move |changed_only: bool| match if changed_only {
            gw.reload_keys_if_changed()
        } else {
            gw.reload_keys()
        } {
            Ok(n) => {
                let first = !restored.load(Ordering::Acquire);
                if failures.succeeded() && !first {
                    tracing::info!(
                        keys = n,
                        "key file loaded again; the keys in force are current"
                    );
                } else {
                    tracing::info!(keys = n, "key file loaded");
                }
                if !restored.swap(true, Ordering::AcqRel) {
                    crate::ops::usage_state::restore(&gw, &state_file);
                }
                true
            }
            Err(e) => {
                // Loud once, quiet while the same error repeats at every retry.
                if failures.failed(&e.to_string()) {
                    if restored.load(Ordering::Acquire) {
                        tracing::error!(error = %e, "key file not loaded: the last good keys keep serving, so a change (a revoke) is not in force; retried at every poll");
                    } else {
                        // Nothing loaded yet: no keys serve, every request is refused.
                        tracing::error!(error = %e, "key file not loaded: no keys yet, so every request is refused (503 not_ready) until it loads; retried at every poll");
                    }
                }
                false
            }
        }
    };
    let load = Arc::new(load);
    if let Some(sync) = gw.key_sync.clone() {
        // Redis key store: the snapshot (journal folded in) serves at once, whether Redis
        // answers or not; the follower owns the file from then on (no file watch).
        let (s, l, g) = (Arc::clone(&sync), Arc::clone(&load), Arc::clone(gw));
        let _ = tokio::task::spawn_blocking(move || {
            crate::ops::key_sync::load_snapshot(&g, &s, || {
                l(false);
            })
        })
        .await;
        if !restored.swap(true, Ordering::AcqRel) {
            crate::ops::usage_state::restore(gw, &state_file);
        }
        crate::ops::key_sync::start(gw, sync);
    }
    // The watch starts from the file as it is before the first load, so a change during
    // that load is not missed.
    let watch = cfg
        .keys
        .reload
        .then(|| crate::watch::Watch::new(cfg.keys.file.clone()))
        .filter(|_| gw.key_sync.is_none());
    let l = Arc::clone(&load);
    let first = match gw.key_sync {
        Some(_) => false,
        None => tokio::task::spawn_blocking(move || l(false))
            .await
            .unwrap_or(false),
    };
    if let Some(w) = watch {
        let first = if first { Loaded::Yes } else { Loaded::No };
        tasks.push(w.spawn(cfg.keys.poll_interval, first, move || load(true)));
    }

    if let (true, Some(path)) = (watch_config, cfg.source.clone()) {
        tasks.push(watch_config_file(
            Arc::clone(gw),
            path,
            cfg.keys.poll_interval,
        ));
    }

    tasks.push(tokio::spawn(crate::ops::health::run(Arc::clone(gw))));

    if let Some(addr) = cfg.metrics.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| CliError::Runtime(format!("cannot listen for metrics on {addr}: {e}")))?;
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "metrics listening");
        tasks.push(tokio::spawn(crate::ops::metrics::scrape::serve(
            listener,
            Arc::clone(gw),
            std::future::pending(),
        )));
    }

    let maintenance = Maintenance::new(Arc::clone(gw), restored).spawn();
    Ok(Background {
        tasks,
        maintenance: Some(maintenance),
        _notifier: crate::ops::notify::start(Arc::clone(gw)),
    })
}

/// Applies edits to gateway.toml as they happen; a bad edit keeps the running configuration.
pub fn watch_config_file(
    gw: Arc<Gateway>,
    path: PathBuf,
    poll: Duration,
) -> tokio::task::JoinHandle<()> {
    let p = path.clone();
    let failures = FailureLatch::default();
    crate::watch::spawn(path, poll, move || match Config::reload(&p) {
        Ok(next) => {
            let level = next.log.level.clone();
            for r in gw.apply_config(next) {
                tracing::warn!(change = %r, "this gateway.toml change needs a restart to take effect");
            }
            if let Some(l) = gw.logging.get() {
                l.set_level(&level);
            }
            failures.succeeded();
            tracing::info!("gateway.toml reloaded");
            true
        }
        Err(e) => {
            gw.config_reload_failed();
            if failures.failed(&e.to_string()) {
                tracing::error!(error = %e, "gateway.toml reload failed; the last good configuration keeps serving");
            }
            false
        }
    })
}

/// Serves until a signal, then drains and saves usage.
pub(crate) async fn serve_until_signal(
    gw: Arc<Gateway>,
    listener: TcpListener,
    watch_config: bool,
) -> Result<(), CliError> {
    let bg = start(&gw, watch_config).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    // With `[server.tls]` the listener speaks only TLS: the line an operator (or a script)
    // copies the address from must say so.
    let scheme = if gw.config().server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, scheme, "keygate listening");
    // Also in the log: a stdout nobody reads (closed, full) does not stop the server.
    let _ = line(format_args!("keygate listening on {scheme}://{addr}"));
    crate::server::run(listener, Arc::clone(&gw), shutdown_signal())
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    bg.stop().await;
    if let Some(sync) = gw.key_sync.clone() {
        // The journal folded into the snapshot, so the next start reads one file.
        let folded = tokio::task::spawn_blocking(move || sync.snapshot.fold()).await;
        if let Ok(Err(e)) = folded {
            tracing::error!(error = %e, "key snapshot not rewritten at shutdown (its journal keeps every change)");
        }
    }
    tracing::info!("keygate stopped");
    Ok(())
}

pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, CliError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Runtime(format!("cannot listen on {addr}: {e}")))
}

/// A replica's snapshot (`[keys] file` in redis mode) needs its directory: without it the
/// replica would never be ready, its lock skipped, and its journal's failure read as a Redis
/// one. Refused at start (and by `check`), naming the directory.
pub(crate) fn snapshot_directory(file: &std::path::Path) -> Result<(), CliError> {
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(std::path::Path::new("."));
    if dir.is_dir() {
        return Ok(());
    }
    Err(CliError::Runtime(format!(
        "[keys] file: the key snapshot's directory {} does not exist (or is not a directory): create it; a replica writes its snapshot there (in Kubernetes, mount a volume such as an emptyDir)",
        crate::text::Escaped(&dir.display().to_string())
    )))
}

pub fn serve(config: Option<PathBuf>) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let logging = crate::ops::logging::init(&cfg.log);
    // A replica of the shared key store owns its snapshot until it exits: claimed before the
    // port is bound, so a second replica on the same file never says it listens.
    let _claim = match &cfg.keys.store {
        crate::config::StoreMode::Redis(_) => {
            snapshot_directory(&cfg.keys.file)?;
            crate::keys::snapshot::Claim::take(&cfg.keys.file)?
        }
        crate::config::StoreMode::File => None,
    };
    crate::server::accept::raise_open_file_limit();
    if let Some(src) = &cfg.source {
        if std::fs::read_to_string(src).is_ok_and(|t| is_blank(&t)) {
            tracing::warn!(config = %src.display(), "gateway.toml is empty: every setting is its default, including the upstream 127.0.0.1:8000");
        }
    }
    // The listener's certificate before the port: a server that cannot serve TLS must not
    // say it listens (a supervisor waiting for that line would take it as up).
    if let Some(t) = &cfg.server.tls {
        crate::server::tls::ServerTls::load(&t.cert, &t.key)
            .map_err(|e| CliError::Runtime(format!("[server.tls]: {e}")))?;
    }
    let result = runtime()?.block_on(async {
        let listener = bind(cfg.server.listen).await?;
        let gw = Gateway::new(cfg);
        attach(&gw, logging.as_ref());
        serve_until_signal(gw, listener, true).await
    });
    if let Some(l) = &logging {
        l.flush();
    }
    result
}

pub(crate) fn attach(gw: &Gateway, logging: Option<&Logging>) {
    if let Some(l) = logging {
        let _ = gw.logging.set(l.clone());
    }
}

pub fn mock(addr: SocketAddr) -> Result<(), CliError> {
    runtime()?.block_on(async move {
        let listener = bind(addr).await?;
        let local = listener
            .local_addr()
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        let _ = line(format_args!(
            "keygate mock upstream listening on http://{local}"
        ));
        crate::mock::serve(
            listener,
            Default::default(),
            crate::mock::Recorder::default(),
            shutdown_signal(),
        )
        .await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::one_core;
    use std::num::NonZeroUsize;

    #[test]
    fn one_worker_is_asked_for_or_all_there_is() {
        let cores = |n| NonZeroUsize::new(n);
        let one = |env, n| one_core(env, cores(n)).unwrap();
        assert!(one(Some("1"), 8), "the variable wins");
        assert!(!one(Some("4"), 1), "the variable wins");
        assert!(one(None, 1));
        assert!(!one(None, 2));
        assert!(
            !one_core(None, None).unwrap(),
            "unknown: as many as tokio finds"
        );
        for bad in ["many", "0", "", " 2", "-1"] {
            let e = one_core(Some(bad), cores(2)).unwrap_err().to_string();
            assert!(e.contains("TOKIO_WORKER_THREADS") && e.contains(bad), "{e}");
        }
    }
}
