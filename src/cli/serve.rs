//! Process-level wiring for `keygate serve`, `keygate demo` and `keygate mock`: runtime,
//! logging, metrics listener, file watchers, usage flushing and signals.

use crate::cli::{load_config, CliError};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::keys::store::{KeyStore, NewKey};
use crate::time::Timestamp;
use crate::watch::{FailureLatch, Loaded};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start the runtime: {e}")))
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
}

impl Drop for Background {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Loads keys, starts watchers, the metrics listener and the usage flusher.
async fn start(gw: &Arc<Gateway>, watch_config: bool) -> Result<Background, CliError> {
    let cfg = gw.config();
    let mut tasks = Vec::new();
    let restored = Arc::new(AtomicBool::new(false));
    let state_file = cfg.keys.state_file.clone();

    let load = {
        let (gw, restored, state_file) =
            (Arc::clone(gw), Arc::clone(&restored), state_file.clone());
        let failures = FailureLatch::default();
        move || match gw.reload_keys() {
            Ok(n) => {
                if failures.succeeded() {
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
                    tracing::error!(error = %e, "key file not loaded: the last good keys keep serving, so a change (a revoke) is not in force; retried at every poll");
                }
                false
            }
        }
    };
    let load = Arc::new(load);
    // The watch starts from the file as it is before the first load, so a change during
    // that load is not missed.
    let watch = cfg
        .keys
        .reload
        .then(|| crate::watch::Watch::new(cfg.keys.file.clone()));
    let l = Arc::clone(&load);
    let first = tokio::task::spawn_blocking(move || l())
        .await
        .unwrap_or(false);
    if let Some(w) = watch {
        let first = if first { Loaded::Yes } else { Loaded::No };
        tasks.push(w.spawn(cfg.keys.poll_interval, first, move || load()));
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
        tasks.push(tokio::spawn(crate::ops::metrics::serve(
            listener,
            Arc::clone(gw),
            std::future::pending(),
        )));
    }

    let (gw2, restored2) = (Arc::clone(gw), Arc::clone(&restored));
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tick.tick().await;
            flush_usage(&gw2, &restored2).await;
            let _ = crate::ops::maintenance::warn_expiring(&gw2);
            gw2.failed_auth.sweep();
            gw2.metrics.upkeep();
            for u in gw2.live().upstreams.iter() {
                u.pool().sweep();
            }
        }
    }));
    Ok(Background { tasks })
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

/// The usage fingerprint at the last save (see `usage::save_if_changed`).
static SAVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn flush_usage(gw: &Arc<Gateway>, restored: &AtomicBool) {
    if !restored.load(Ordering::Acquire) {
        return; // never overwrite saved usage before it was restored
    }
    let gw = Arc::clone(gw);
    let path = gw.config().keys.state_file.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = crate::ops::usage_state::save_if_changed(&gw, &path, &SAVED) {
            tracing::warn!(path = %path.display(), error = %e, "cannot save usage state");
        }
    })
    .await;
}

/// Serves until a signal, then drains and saves usage.
async fn serve_until_signal(
    gw: Arc<Gateway>,
    listener: TcpListener,
    watch_config: bool,
) -> Result<(), CliError> {
    let bg = start(&gw, watch_config).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    tracing::info!(%addr, "keygate listening");
    println!("keygate listening on http://{addr}");
    crate::server::run(listener, Arc::clone(&gw), shutdown_signal())
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    flush_usage(&gw, &AtomicBool::new(true)).await;
    drop(bg);
    tracing::info!("keygate stopped");
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, CliError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Runtime(format!("cannot listen on {addr}: {e}")))
}

/// Raises the soft open-file limit to the hard one, and logs what it did.
///
/// Every client connection and every upstream connection is a descriptor, and the usual soft
/// limit (1024) is reached long before memory or CPU are: the hard limit is what the operator
/// (systemd's `LimitNOFILE`, `ulimit -Hn`) actually allows.
fn raise_open_file_limit() {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE);
    match (before, rlimit::increase_nofile_limit(u64::MAX)) {
        (Ok((soft, hard)), Ok(now)) if now > soft => {
            tracing::info!(from = soft, to = now, hard, "raised the open-file limit");
        }
        (Ok((soft, hard)), Ok(_)) => {
            tracing::info!(
                limit = soft,
                hard,
                "open-file limit unchanged (at the hard limit)"
            );
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit; keeping it as it is");
        }
    }
}

pub fn serve(config: Option<PathBuf>) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let logging = crate::ops::logging::init(&cfg.log);
    raise_open_file_limit();
    if let Some(src) = &cfg.source {
        if std::fs::read_to_string(src).is_ok_and(|t| crate::config::is_blank(&t)) {
            tracing::warn!(config = %src.display(), "gateway.toml is empty: every setting is its default, including the upstream 127.0.0.1:8000");
        }
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

fn attach(gw: &Gateway, logging: Option<&crate::ops::logging::Logging>) {
    if let Some(l) = logging {
        let _ = gw.logging.set(l.clone());
    }
}

/// The shipped gateway.toml, used by `demo` when none is in the working directory.
const SHIPPED_CONFIG: &str = include_str!("../../gateway.toml");

pub fn demo(config: Option<PathBuf>, listen: Option<SocketAddr>) -> Result<(), CliError> {
    let mut cfg = match config {
        Some(p) => Config::load(&p)?,
        None if std::path::Path::new("gateway.toml").exists() => {
            Config::load(std::path::Path::new("gateway.toml"))?
        }
        None => Config::parse(SHIPPED_CONFIG, None)?,
    };
    let logging = crate::ops::logging::init(&cfg.log);
    raise_open_file_limit();
    if let Some(l) = listen {
        cfg.server.listen = l;
    }
    let dir = tempfile::tempdir().map_err(|e| CliError::Runtime(e.to_string()))?;
    cfg.keys.file = dir.path().join("keys.json");
    cfg.keys.state_file = dir.path().join("keys.json.state");
    cfg.source = None; // the demo's upstream is the mock: do not follow edits to the file
    let result = runtime()?.block_on(async {
        let mock_listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let mock_addr = mock_listener
            .local_addr()
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        tokio::spawn(crate::mock::serve(
            mock_listener,
            crate::mock::MockOptions {
                sse_interval: Duration::from_millis(60),
                ..Default::default()
            },
            crate::mock::Recorder::default(),
            std::future::pending(),
        ));
        let mock_cfg = Config::parse(
            &format!("[[upstream]]\nname = \"mock\"\nurl = \"http://{mock_addr}\"\n"),
            None,
        )?;
        cfg.upstreams = mock_cfg.upstreams;
        let store = KeyStore::new(&cfg.keys.file);
        let prefix = cfg.keys.prefix.clone();
        let now = Timestamp::now();
        let (_, demo_key) = store.update(|f| {
            f.create(
                NewKey {
                    name: "demo".into(),
                    ..Default::default()
                },
                &prefix,
                now,
            )
        })?;
        let (_, admin_key) = store.update(|f| {
            f.create(
                NewKey {
                    name: "demo-admin".into(),
                    scopes: vec!["admin".into(), "usage".into()],
                    ..Default::default()
                },
                &prefix,
                now,
            )
        })?;
        let listener = bind(cfg.server.listen).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        print_demo(addr, &demo_key.plaintext, &admin_key.plaintext);
        let gw = Gateway::new(cfg);
        attach(&gw, logging.as_ref());
        serve_until_signal(gw, listener, false).await
    });
    drop(dir);
    if let Some(l) = &logging {
        l.flush();
    }
    result
}

/// The demo's instructions. The snippets start at the first column so they run when pasted
/// as they are (a heredoc's end marker and Python code must not be indented).
fn print_demo(addr: SocketAddr, key: &str, admin: &str) {
    println!(
        r#"
keygate demo: gateway on http://{addr}, forwarding to a built-in mock upstream.

Demo key (inference scopes):  {key}
Admin key (admin, usage):     {admin}
(Keys live in a temporary directory and are gone when the demo stops.)

Web console: http://{addr}/console  (sign in with the admin key)

Try it with curl:

curl http://{addr}/v1/chat/completions \
  -H "Authorization: Bearer {key}" \
  -H "Content-Type: application/json" \
  -d '{{"model": "llama-3.1-8b-instruct", "messages": [{{"role": "user", "content": "Hello"}}]}}'

With the OpenAI Python SDK (pip install openai):

python3 - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url="http://{addr}/v1", api_key="{key}")
r = client.chat.completions.create(
    model="llama-3.1-8b-instruct",
    messages=[{{"role": "user", "content": "Hello"}}],
)
print(r.choices[0].message.content)
EOF

List the keys with the admin key:

curl http://{addr}/v1/api-keys -H "Authorization: Bearer {admin}"

Press Ctrl-C to stop.
"#
    );
}

pub fn mock(addr: SocketAddr) -> Result<(), CliError> {
    runtime()?.block_on(async move {
        let listener = bind(addr).await?;
        let local = listener
            .local_addr()
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        println!("keygate mock upstream listening on http://{local}");
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
