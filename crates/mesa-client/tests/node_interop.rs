//! Interop with the Mesa 1.5 Node server: the real `@cryb/mesa` 1.5.8 in `compat/node-server/`.
//!
//! Needs `node` and `npm` on the PATH; runs `npm ci` there first when `node_modules` is missing (guarded by
//! a lock directory against concurrent runs). Fails, with a message saying so, when they are missing.

mod common;
#[path = "../../../compat/node_harness.rs"]
mod node_harness;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use mesa_client::{AuthenticateError, Client, Event, Frame, Lifecycle};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

const HEARTBEAT_MS: u64 = 300;

fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../compat/node-server")
}

/// The Node server process; killed (this child only) when dropped.
struct NodeServer {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl NodeServer {
    /// Starts `node server.js <port>` and waits for its ready line.
    async fn start(port: u16) -> NodeServer {
        let dir = compat_dir();
        let mut child = Command::new("node")
            .arg("server.js")
            .arg(port.to_string())
            .arg(HEARTBEAT_MS.to_string())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let log = lines.clone();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(port) = line.strip_prefix("MESA_NODE_READY ") {
                    if let (Some(tx), Ok(port)) = (ready_tx.take(), port.trim().parse::<u16>()) {
                        let _ = tx.send(port);
                    }
                }
                log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let port = tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("the Node server did not print its ready line within 30 s")
            .expect("the Node server exited before it was ready");
        NodeServer { child, port, lines }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

fn is_lifecycle_change(event: &Event) -> bool {
    matches!(
        event,
        Event::Connected(_) | Event::Disconnected(_) | Event::ConnectionFailed(_)
    )
}

#[tokio::test]
async fn works_against_the_mesa_1_5_node_server() {
    node_harness::require_tool("node");
    node_harness::require_tool("npm");
    let dir = compat_dir();
    tokio::task::spawn_blocking(move || node_harness::ensure_node_modules(&dir))
        .await
        .expect("npm ci");
    let node = NodeServer::start(0).await;
    let port = node.port;

    // Connect and authenticate; the Node server's Hello is understood.
    let (client, mut events) = Client::builder(node.url())
        .credentials(json!({"token": "user:alice"}))
        .heartbeat_slack(Duration::from_millis(500))
        .reconnect_cap(Duration::from_secs(1))
        .build()
        .expect("build");
    let connected = wait_event(&mut events, |e| match e {
        Event::Connected(connected) => Some(connected.clone()),
        _ => None,
    })
    .await;
    assert_eq!(connected.hello.c_heartbeat_interval, Some(HEARTBEAT_MS));
    assert_eq!(connected.hello.c_reconnect_interval, Some(200));
    assert_eq!(connected.hello.c_authentication_timeout, Some(5000));
    assert!(connected.hello.has_rule("sends_user_object"));
    let user = wait_event(&mut events, |e| match e {
        Event::Authenticated(user) => Some(user.clone()),
        _ => None,
    })
    .await;
    assert_eq!(user, json!({"id": "alice", "via": "node"}));

    // A dispatch echoed by the Node server.
    client.dispatch("ECHO", json!({"n": 0})).expect("send");
    let echo = wait_event(&mut events, |e| match e {
        Event::Message(frame) => Some(frame.clone()),
        _ => None,
    })
    .await;
    assert_eq!(echo, Frame::dispatch("ECHO", json!({"n": 0})));

    // Eight heartbeat intervals: the server (maxAttempts 1) drops a client that misses two beats, so
    // staying connected proves the answers; the client's dead-server timer (300 + 500 ms) proves it hears
    // the beats.
    expect_no_event(&mut events, Duration::from_millis(8 * HEARTBEAT_MS), |e| {
        !is_lifecycle_change(e)
    })
    .await;
    assert_eq!(client.lifecycle(), Lifecycle::Ready);
    assert!(
        !node
            .lines()
            .iter()
            .any(|l| l.starts_with("MESA_NODE_DISCONNECT")),
        "{:?}",
        node.lines()
    );

    // Control: a socket that never answers op 1 is closed by the same server within that window.
    let (mut silent, _) = tokio_tungstenite::connect_async(node.url())
        .await
        .expect("raw connect");
    let mut beats = 0;
    let closed = tokio::time::timeout(Duration::from_millis(8 * HEARTBEAT_MS), async {
        while let Some(Ok(message)) = silent.next().await {
            match message {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(&text).expect("json");
                    if frame["op"] == 1 {
                        beats += 1;
                    }
                }
                Message::Close(_) => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the Node server kept a silent client");
    assert!(beats >= 2, "saw {beats} heartbeats before the close");

    // Refusal: close 1008, reported as a typed error, and no reconnection.
    let (refused, mut refused_events) = mesa_client::connect(node.url()).await.expect("connect");
    let outcome = refused.authenticate(json!({"token": "nope"})).await;
    assert!(
        matches!(
            outcome,
            Err(AuthenticateError::Refused {
                close_code: Some(1008),
                ..
            })
        ),
        "{outcome:?}"
    );
    let why = wait_event(&mut refused_events, |e| match e {
        Event::Disconnected(why) => Some(why.clone()),
        _ => None,
    })
    .await;
    assert_eq!((why.code, why.will_reconnect), (1008, false));

    // The Node server dies; sends queue; a new one starts on the same port; the client reconnects,
    // re-authenticates, then flushes the queue in order.
    node.kill().await;
    let why = wait_event(&mut events, |e| match e {
        Event::Disconnected(why) => Some(why.clone()),
        _ => None,
    })
    .await;
    assert!(why.will_reconnect, "{why:?}");
    for n in 1..=3 {
        client.dispatch("ECHO", json!({"n": n})).expect("queued");
    }
    let _node = NodeServer::start(port).await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match next_event(&mut events).await {
            Event::Connected(c) => {
                assert!(c.automatic_reconnection);
                seen.push("connected".to_string());
            }
            Event::Authenticated(user) => {
                assert_eq!(user["id"], "alice");
                seen.push("authenticated".to_string());
            }
            Event::Message(frame) => seen.push(format!("echo {}", frame.d["n"])),
            Event::ConnectionFailed(_) => {} // attempts while the server was starting
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        ["connected", "authenticated", "echo 1", "echo 2", "echo 3"]
    );
}
