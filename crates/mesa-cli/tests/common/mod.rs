//! Shared helpers: the real `mesa` binary on 127.0.0.1:0 (killed when the handle drops), a WebSocket client
//! that reads exact frames, and a small HTTP client.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a frame or an HTTP answer may take before a test fails.
pub const STEP: Duration = Duration::from_secs(5);

/// A running `mesa serve`. Dropping it kills the process (by its handle, never by name) and reaps it.
pub struct MesaProcess {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
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

/// The address in a `listening on <addr>` log line (text or JSON format).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl MesaProcess {
    /// Starts `mesa serve` and waits for its `listening on` line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> MesaProcess {
        let mut child = command(args, env).spawn().expect("spawn mesa");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let thread_logs = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                thread_logs.lock().unwrap().push(line.clone());
                let _ = lines_tx.send(line);
            }
        });
        let mut process = MesaProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = listening_addr(&line) {
                        process.addr = addr;
                        return process;
                    }
                }
                Err(_) => panic!(
                    "mesa did not print its address; status {:?}; output:\n{}",
                    process.child.try_wait(),
                    process.logs()
                ),
            }
        }
    }

    /// Everything the process printed on stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until stderr contains `needle` (logs are written asynchronously).
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let logs = self.logs();
            if let Some(line) = logs.lines().find(|line| line.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line containing {needle:?}:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends SIGTERM to this process (by pid, with the `kill` utility: the workspace forbids `unsafe`).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits at most `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for MesaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mesa serve` expecting it to stop by itself (a configuration error); returns its status and stderr.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut child = command(args, env).spawn().expect("spawn mesa");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mesa kept running");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    (status, stderr)
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

pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(STEP, connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect");
    ws
}

/// Connects and reads the Hello (op 10).
pub async fn connect_hello(url: &str) -> (Ws, Value) {
    let mut ws = connect(url).await;
    let hello = recv(&mut ws).await;
    assert_eq!(hello["op"], 10, "first frame must be Hello: {hello}");
    (ws, hello)
}

pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("send");
}

/// The next message, whatever it is.
pub async fn next_message(ws: &mut Ws) -> Message {
    tokio::time::timeout(STEP, ws.next())
        .await
        .expect("no message in time")
        .expect("stream ended")
        .expect("websocket error")
}

/// The next frame as JSON, skipping heartbeats (op 1). Panics on a close.
pub async fn recv(ws: &mut Ws) -> Value {
    loop {
        match next_message(ws).await {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).expect("frame is JSON");
                if frame["op"] != 1 {
                    return frame;
                }
            }
            Message::Close(frame) => panic!("closed while a frame was expected: {frame:?}"),
            _ => {}
        }
    }
}

/// Reads until the close frame and returns its code and reason; panics if a frame other than a heartbeat
/// arrives first.
pub async fn recv_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match next_message(ws).await {
            Message::Close(Some(frame)) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Message::Close(None) => return (1005, String::new()),
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).expect("frame is JSON");
                assert_eq!(frame["op"], 1, "expected a close, got {frame}");
            }
            _ => {}
        }
    }
}

/// Sends op 2 with `d` and returns op 22's `d`.
pub async fn authenticate(ws: &mut Ws, d: Value) -> Value {
    send(ws, serde_json::json!({"op": 2, "d": d})).await;
    let ack = recv(ws).await;
    assert_eq!(ack["op"], 22, "expected op 22: {ack}");
    ack["d"].clone()
}

/// Sends op 2 with `d` and returns the close it leads to.
pub async fn authenticate_refused(ws: &mut Ws, d: Value) -> (u16, String) {
    send(ws, serde_json::json!({"op": 2, "d": d})).await;
    recv_close(ws).await
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
