//! The real `keygate` binary, as operators run it: the one way tests start it (`serve`), and
//! what they read from it (the address it listens on, its stdout and stderr lines).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// `keygate serve --config CFG` started by a test: listening (its address read from its first
/// stdout line), its stderr lines collected as they come. Killed, and reaped, when dropped.
pub struct Served {
    pub child: Child,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// Starts `keygate serve --config cfg` and waits until it listens.
pub fn serve(cfg: &Path) -> Served {
    serve_with(cfg, |_| {})
}

/// As `serve`, with the command adjusted first (`configure`: environment, working directory).
pub fn serve_with(cfg: &Path, configure: impl FnOnce(&mut Command)) -> Served {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--config")
        .arg(cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    configure(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let logs = capture_stderr(&mut child);
    let addr = listening_addr(&mut child);
    Served { child, addr, logs }
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The stderr lines that contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects a child's stderr lines in the background.
pub fn capture_stderr(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let err = child.stderr.take().unwrap();
    let l2 = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(line);
        }
    });
    lines
}

/// Waits (up to 10 s) until a line captured by [`capture_stderr`] satisfies `pred`: the
/// capture runs on its own thread, so a child that has exited may have lines not read yet,
/// and the gateway's log writer batches.
pub async fn has_line(logs: &Mutex<Vec<String>>, pred: impl Fn(&str) -> bool) -> bool {
    super::eventually(Duration::from_secs(10), || {
        let found = logs.lock().unwrap().iter().any(|l| pred(l));
        std::future::ready(found)
    })
    .await
}

/// The address in a child's first stdout line ("… listening on http://ADDR", or https:// when
/// it terminates TLS).
pub fn listening_addr(child: &mut Child) -> SocketAddr {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(
        line.contains("listening on http://") || line.contains("listening on https://"),
        "{line:?}"
    );
    line.trim().rsplit("://").next().unwrap().parse().unwrap()
}

/// Reads stdout lines until one contains `needle`; returns all lines read so far.
pub fn read_until(child: &mut Child, needle: &str) -> Vec<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => {
                let done = l.contains(needle);
                lines.push(l);
                if done {
                    // keep draining in the background so the child never blocks on stdout
                    std::thread::spawn(move || while rx.recv().is_ok() {});
                    return lines;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    panic!("never printed {needle:?}; got {lines:?}");
}

/// The `ADDR` of the first `http://ADDR` in `line`.
pub fn addr_of(line: &str) -> String {
    line.split("http://")
        .nth(1)
        .unwrap()
        .split(|c: char| c.is_whitespace() || c == ',')
        .next()
        .unwrap()
        .to_string()
}
