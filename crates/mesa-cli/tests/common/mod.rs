//! Shared helpers: the real `mesa` binary on 127.0.0.1:0 (killed when the handle drops), config files and
//! fixtures, and a small HTTP client. The raw WebSocket client and the process guard come from `mesa-testkit`.
#![allow(dead_code, unused_imports, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesa_testkit::process::{self, ListeningChild};

pub use mesa_testkit::ws::{
    authenticate, authenticate_refused, connect, connect_hello, expect_close, recv, send, Close, Ws,
};

/// How long a frame or an HTTP answer may take before a test fails.
pub const STEP: Duration = Duration::from_secs(5);

/// A running `mesa serve`. Dropping it kills the process (by its handle, never by name) and reaps it.
pub struct MesaProcess {
    process: ListeningChild,
    pub addr: SocketAddr,
}

/// Builds the command line of `mesa serve --host 127.0.0.1 --port 0 <args>` with a clean environment
/// plus `env`, so that variables of the developer's shell cannot change what a test sees.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mesa"));
    command
        .arg("serve")
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

impl MesaProcess {
    /// Starts `mesa serve` and waits for its `listening on` line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> MesaProcess {
        let process = ListeningChild::spawn(&mut command(args, env), Duration::from_secs(30));
        MesaProcess {
            addr: process.addr,
            process,
        }
    }

    /// Everything the process printed on stderr so far.
    pub fn logs(&self) -> String {
        self.process.stderr.text()
    }

    /// Waits until stderr contains `needle` (logs are written asynchronously); returns that line.
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.process.stderr.wait_for(needle, STEP)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends SIGTERM to this process (by pid).
    pub fn sigterm(&self) {
        self.process.guard.signal("TERM");
    }

    /// Waits at most `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.process.guard.wait_exit(limit)
    }
}

/// Runs `mesa serve` expecting it to stop by itself (a configuration error); returns its status and stderr.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    process::run_to_exit(&mut command(args, env), Duration::from_secs(10))
}

/// A path for a file the test writes (under Cargo's per-target temporary directory).
pub fn temp_file(name: &str, contents: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("mesa-cli-{}-{n}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// The directory of committed test fixtures.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(STEP)
        .build()
        .expect("http client")
}

/// GETs `url` and returns the status and the body.
pub async fn get(url: &str) -> (u16, String) {
    let response = http().get(url).send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}
