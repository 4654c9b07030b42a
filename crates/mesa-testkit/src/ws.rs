//! A raw WebSocket client for tests: connects, sends JSON frames and checks the exact frames that come back.
//!
//! Heartbeats: [`recv`], [`recv_text`] and [`expect_silence`] answer every op 1 with op 11 (like a real client)
//! and skip it; [`recv_raw`], [`next_message`] and [`expect_close`] never answer and report heartbeats like any
//! other frame, for tests about the heartbeat itself. Ping and pong control frames are always skipped.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

/// A client WebSocket over plain TCP.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits to connect, or for a frame it expects.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`expect_close`] waits for each message on the way to the close frame.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`expect_close`] reads on after the close frame, to finish the closing handshake.
const CLOSING_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Something a test can open a WebSocket to: a URL (`ws://…`) or a running test server.
pub trait WsTarget {
    /// The `ws://` URL of the gateway.
    fn ws_url(&self) -> String;
}

impl WsTarget for str {
    fn ws_url(&self) -> String {
        self.to_string()
    }
}

impl WsTarget for String {
    fn ws_url(&self) -> String {
        self.clone()
    }
}

/// Opens a WebSocket to `target` without reading anything, within [`FRAME_TIMEOUT`].
pub async fn connect(target: &(impl WsTarget + ?Sized)) -> Ws {
    let (ws, _) = tokio::time::timeout(FRAME_TIMEOUT, connect_async(target.ws_url()))
        .await
        .expect("connect timed out")
        .expect("connect");
    ws
}

/// Connects and reads the Hello (op 10), which must be the very first frame; returns it.
pub async fn connect_hello(target: &(impl WsTarget + ?Sized)) -> (Ws, Value) {
    let mut ws = connect(target).await;
    let hello = recv_raw(&mut ws).await;
    assert_eq!(hello["op"], 10, "first frame must be Hello: {hello}");
    (ws, hello)
}

/// Connects, reads Hello, authenticates with token `user:<id>` and checks that op 22 comes back.
///
/// Meant for servers with the token scheme of [`crate::server::with_token_auth`].
pub async fn connect_as(target: &(impl WsTarget + ?Sized), id: &str) -> Ws {
    let (mut ws, _) = connect_hello(target).await;
    authenticate(&mut ws, json!({ "token": format!("user:{id}") })).await;
    ws
}

/// Sends op 2 with `d`, checks that the next frame (heartbeats aside) is op 22 and returns op 22's `d`.
pub async fn authenticate(ws: &mut Ws, d: Value) -> Value {
    send(ws, json!({"op": 2, "d": d})).await;
    let ack = recv(ws).await;
    assert_eq!(ack["op"], 22, "expected op 22, got {ack}");
    ack["d"].clone()
}

/// Sends op 2 with `d` and expects the server to close the connection, with nothing but heartbeats before the
/// close; returns the close code and reason.
pub async fn authenticate_refused(ws: &mut Ws, d: Value) -> (u16, String) {
    send(ws, json!({"op": 2, "d": d})).await;
    expect_close(ws).await.heartbeats_only().code_reason()
}

/// Sends `frame` as a JSON text frame.
pub async fn send(ws: &mut Ws, frame: Value) {
    send_text(ws, &frame.to_string()).await;
}

/// Sends `text` as it is, in one text frame (for input that is not valid JSON, or not a frame).
pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

/// The next message of any kind, within [`FRAME_TIMEOUT`]; panics if the stream ends or fails first.
pub async fn next_message(ws: &mut Ws) -> Message {
    tokio::time::timeout(FRAME_TIMEOUT, ws.next())
        .await
        .expect("timed out waiting for a frame")
        .expect("stream ended")
        .expect("websocket error")
}

/// The next text frame as JSON, whatever it is: heartbeats included, not answered.
///
/// Ping and pong are skipped; any other message (a close, a binary frame) fails the test.
pub async fn recv_raw(ws: &mut Ws) -> Value {
    loop {
        match next_message(ws).await {
            Message::Text(text) => {
                return serde_json::from_str(&text).expect("server sent invalid JSON")
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next text frame that is not a heartbeat, as the exact text the server sent, within [`FRAME_TIMEOUT`];
/// heartbeats (op 1) on the way are answered with op 11.
///
/// Ping and pong are skipped; any other message (a close, a binary frame) fails the test.
pub async fn recv_text(ws: &mut Ws) -> String {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("timed out waiting for a frame other than a heartbeat")
            .expect("stream ended")
            .expect("websocket error");
        match message {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).expect("server sent invalid JSON");
                if frame["op"] == 1 {
                    answer_heartbeat(ws).await;
                    continue;
                }
                return text.to_string();
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// [`recv_text`] parsed: the next frame that is not a heartbeat, heartbeats on the way answered.
pub async fn recv(ws: &mut Ws) -> Value {
    let text = recv_text(ws).await;
    serde_json::from_str(&text).expect("json")
}

/// An op 7 frame with its per-connection `retry_after_ms` checked (a number, at most 60 s) and taken out,
/// so that tests can compare frames exactly; any other frame as it is.
pub fn without_retry_hint(mut frame: Value) -> Value {
    if frame["op"] == 7 {
        let hint = frame["d"]["retry_after_ms"].as_u64();
        assert!(
            hint.is_some_and(|ms| ms <= 60_000),
            "op 7 without a retry hint: {frame}"
        );
        if let Some(d) = frame["d"].as_object_mut() {
            d.remove("retry_after_ms");
        }
    }
    frame
}

/// Answers a heartbeat with op 11, as the Mesa clients do.
async fn answer_heartbeat(ws: &mut Ws) {
    send(ws, json!({"op": 11, "d": {}})).await;
}

/// Asserts that nothing but heartbeats (answered with op 11) arrives within `wait`.
pub async fn expect_silence(ws: &mut Ws, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(&text).expect("json");
                assert_eq!(frame["op"], 1, "expected silence, got {text}");
                answer_heartbeat(ws).await;
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

/// The server's close frame, as [`expect_close`] saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Close {
    /// The close code; 1005 when the close frame carried none.
    pub code: u16,
    /// The close reason (empty when there was none).
    pub reason: String,
    /// The text frames that arrived before the close, in order (heartbeats included: they are not answered).
    pub before: Vec<Value>,
}

impl Close {
    /// The code and the reason, for comparing both at once.
    pub fn code_reason(&self) -> (u16, String) {
        (self.code, self.reason.clone())
    }

    /// Asserts that every frame before the close was a heartbeat (op 1); returns the close.
    pub fn heartbeats_only(self) -> Close {
        for frame in &self.before {
            assert_eq!(frame["op"], 1, "expected a close, got {frame}");
        }
        self
    }
}

/// Reads until the server's close frame, waiting at most [`CLOSE_TIMEOUT`] for each message; returns the code,
/// the reason and the text frames that came before it.
///
/// Then finishes the closing handshake like a real client: tungstenite sends its close reply only when the
/// stream is polled again, so this reads on (for at most 2 s) until the server ends the connection.
pub async fn expect_close(ws: &mut Ws) -> Close {
    let mut before = Vec::new();
    let (code, reason) = loop {
        let message = tokio::time::timeout(CLOSE_TIMEOUT, ws.next())
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
    let _ = tokio::time::timeout(CLOSING_HANDSHAKE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Close {
        code,
        reason,
        before,
    }
}

/// Asserts that the connection still works: an `ECHO` dispatch comes back unchanged (the echo handler of
/// [`crate::server::echo_server`], or any server that echoes `ECHO`).
pub async fn assert_echo_works(ws: &mut Ws) {
    let d = json!({"still": "alive"});
    send(ws, json!({"op": 0, "t": "ECHO", "d": d})).await;
    assert_eq!(recv(ws).await, json!({"op": 0, "d": d, "t": "ECHO"}));
}
