//! `keygate demo`: the gateway in front of the built-in mock upstream, with a demo key and an
//! admin key in a temporary directory, and instructions to try it.

use crate::cli::error::CliError;
use crate::cli::output::{line, secret_can_be_seen, written, Did};
use crate::cli::serve::{attach, bind, runtime, serve_until_signal};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::keys::record::NewKey;
use crate::keys::store::KeyStore;
use crate::time::Timestamp;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The shipped gateway.toml, used by `demo` when none is in the working directory.
const SHIPPED_CONFIG: &str = include_str!("../../gateway.toml");

pub fn demo(config: Option<PathBuf>, listen: Option<SocketAddr>) -> Result<(), CliError> {
    secret_can_be_seen("the demo's keys")?;
    let mut cfg = match config {
        Some(p) => Config::load(&p)?,
        None if std::path::Path::new("gateway.toml").exists() => {
            Config::load(std::path::Path::new("gateway.toml"))?
        }
        None => Config::parse(SHIPPED_CONFIG, None)?,
    };
    let logging = crate::ops::logging::init(&cfg.log);
    crate::server::accept::raise_open_file_limit();
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
        // Any failure stops it, a reader that left too: the keys it prints are its point.
        let printed = print_demo(addr, &demo_key.plaintext, &admin_key.plaintext);
        let did = Did::Change {
            what: "the demo started".into(),
            then: "its keys were not shown, so it stops (they are kept nowhere)".into(),
        };
        written(printed, did)?;
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
fn print_demo(addr: SocketAddr, key: &str, admin: &str) -> std::io::Result<()> {
    line(format_args!(
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
    ))
}
