//! Shared test helpers: the real `mesa-conformance` binary on a free port, and a raw WebSocket client that
//! checks exact frames.
//!
//! The server process is owned by a [`Server`] guard that kills it (by its own child handle) when dropped, so a
//! failing test never leaves it behind. Set `MESA_CONFORMANCE_TEST_LOG=1` to see the server's log.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a test waits for a frame it expects.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// The `mesa-conformance` process, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

impl Server {
    /// Starts the binary on a free port and waits until it accepts connections.
    pub fn start() -> Server {
        Server::start_with(&[], None)
    }

    /// Like [`Server::start`], with extra environment variables, and the log written to `log` if given.
    pub fn start_with(env: &[(&str, &str)], log: Option<&Path>) -> Server {
        // Another process may take the port between our probe and the server's bind; then try another.
        for _ in 0..3 {
            let port = free_port();
            let mut command = Command::new(env!("CARGO_BIN_EXE_mesa-conformance"));
            command
                .env("PORT", port.to_string())
                .env_remove("REDIS_URL")
                .env_remove("RUST_LOG")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            if let Some(log) = log {
                let file = std::fs::File::create(log).expect("create log file");
                command.env("NO_COLOR", "1").stderr(file);
            } else if std::env::var_os("MESA_CONFORMANCE_TEST_LOG").is_some() {
                command.env("RUST_LOG", "debug").stderr(Stdio::inherit());
            } else {
                command.stderr(Stdio::null());
            }
            let child = command.spawn().expect("spawn mesa-conformance");
            let mut server = Server { child, port };
            if server.wait_until_up(Duration::from_secs(10)) {
                return server;
            }
        }
        panic!("mesa-conformance did not start listening");
    }

    /// Retries a TCP connect until the server accepts; `false` if it exited or never came up.
    fn wait_until_up(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let addr = self.addr();
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            if self.child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`"TERM"`, `"INT"`) to this server process, by pid.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the process to exit, polling; `None` if it is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Opens a WebSocket to the server without reading anything.
pub async fn connect_raw(server: &Server) -> Ws {
    let (ws, _) = tokio::time::timeout(FRAME_TIMEOUT, connect_async(server.url()))
        .await
        .expect("connect timed out")
        .expect("connect");
    ws
}

/// Connects and reads the Hello, which must be the first frame.
pub async fn connect(server: &Server) -> (Ws, Value) {
    let mut ws = connect_raw(server).await;
    let hello = recv_raw(&mut ws).await;
    assert_eq!(hello["op"], 10, "first frame must be Hello: {hello}");
    (ws, hello)
}

/// Connects, reads Hello, authenticates with token `user:<id>` and checks the exact op 22.
pub async fn connect_as(server: &Server, id: &str) -> Ws {
    let (mut ws, _) = connect(server).await;
    send(
        &mut ws,
        json!({"op": 2, "d": {"token": format!("user:{id}")}}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"op": 22, "d": {"id": id, "name": format!("User {id}")}})
    );
    ws
}

pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
}

/// The next text frame, whatever it is (heartbeats included, not answered).
pub async fn recv_raw(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(FRAME_TIMEOUT, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("websocket error");
        match message {
            Message::Text(text) => {
                return serde_json::from_str(&text).expect("server sent invalid JSON")
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next frame that is not a heartbeat, within [`FRAME_TIMEOUT`]; heartbeats (op 1) on the way are
/// answered with op 11.
pub async fn recv(ws: &mut Ws) -> Value {
    let next = async {
        loop {
            let frame = recv_raw(ws).await;
            if frame["op"] == 1 {
                send(ws, json!({"op": 11, "d": {}})).await;
                continue;
            }
            return frame;
        }
    };
    tokio::time::timeout(FRAME_TIMEOUT, next)
        .await
        .expect("timed out waiting for a frame other than a heartbeat")
}

/// Nothing but heartbeats (answered) arrives within `wait`.
pub async fn expect_silence(ws: &mut Ws, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(&text).expect("json");
                assert_eq!(frame["op"], 1, "expected silence, got {text}");
                send(ws, json!({"op": 11, "d": {}})).await;
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame and returns its code and reason; frames before it are returned too.
///
/// Then finishes the closing handshake like a real client: tungstenite sends its close reply only when the
/// stream is polled again, so this reads on until the server ends the connection.
pub async fn expect_close(ws: &mut Ws) -> (u16, String, Vec<Value>) {
    let mut before = Vec::new();
    let (code, reason) = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timed out waiting for close");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                break (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) => break (1005, String::new()),
            Some(Ok(Message::Text(text))) => {
                before.push(serde_json::from_str(&text).expect("json"));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    (code, reason, before)
}

/// The connection still works: an ECHO round trip.
pub async fn assert_echo_works(ws: &mut Ws) {
    let d = json!({"still": "alive"});
    send(ws, json!({"op": 0, "t": "ECHO", "d": d})).await;
    assert_eq!(recv(ws).await, json!({"op": 0, "d": d, "t": "ECHO"}));
}
