//! Shared helpers: a server on 127.0.0.1:0 and a raw WebSocket client that checks exact frames.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mesa_server::{AuthError, Identity, Mesa, MesaBuilder};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct TestServer {
    pub mesa: Mesa,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Starts graceful shutdown and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

/// Token `user:<id>` authenticates as `<id>` with user `{"id": id}`; anything else is refused.
pub fn with_token_auth(builder: MesaBuilder) -> MesaBuilder {
    builder.authenticate(|data, _client| async move {
        let token = data
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match token.strip_prefix("user:") {
            Some(id) => Ok(Identity::new(id, json!({ "id": id }))),
            None => Err(AuthError::new("invalid token")),
        }
    })
}

pub async fn start(builder: MesaBuilder) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mesa = builder.build();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = mesa.clone();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
    });
    TestServer {
        mesa,
        addr,
        stop: Some(stop),
        task,
    }
}

pub async fn connect(server: &TestServer) -> Ws {
    let (ws, _) = connect_async(server.url()).await.expect("connect");
    ws
}

/// Connects and reads the Hello.
pub async fn connect_hello(server: &TestServer) -> (Ws, Value) {
    let mut ws = connect(server).await;
    let hello = recv(&mut ws).await;
    assert_eq!(hello["op"], 10, "first frame must be Hello: {hello}");
    (ws, hello)
}

/// Connects, reads Hello, authenticates as `id` and reads op 22.
pub async fn connect_as(server: &TestServer, id: &str) -> Ws {
    let (mut ws, _) = connect_hello(server).await;
    send(
        &mut ws,
        json!({"op": 2, "d": {"token": format!("user:{id}")}}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["op"], 22, "expected op 22, got {ack}");
    ws
}

pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_string().into()))
        .await
        .expect("send");
}

/// The next text frame as raw text, skipping heartbeats (op 1) and answering them.
pub async fn recv_text(ws: &mut Ws) -> String {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("websocket error");
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).expect("server sent invalid JSON");
                if value["op"] == 1 {
                    ws.send(Message::Text(r#"{"op":11}"#.into()))
                        .await
                        .expect("ack");
                    continue;
                }
                return text.to_string();
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

pub async fn recv(ws: &mut Ws) -> Value {
    let text = recv_text(ws).await;
    serde_json::from_str(&text).expect("json")
}

/// Nothing but heartbeats arrives within `wait`.
pub async fn expect_silence(ws: &mut Ws, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Text(text)))) => {
                let value: Value = serde_json::from_str(&text).expect("json");
                assert_eq!(value["op"], 1, "expected silence, got {text}");
                ws.send(Message::Text(r#"{"op":11}"#.into()))
                    .await
                    .expect("ack");
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame; returns its code and reason. Text frames before it are skipped.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timed out waiting for close");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

/// A well-behaved client still works: echo round trip through the `ECHO` handler of `echo_server`.
pub async fn assert_echo_works(ws: &mut Ws) {
    send(ws, json!({"op": 0, "t": "ECHO", "d": {"still": "alive"}})).await;
    let frame = recv(ws).await;
    assert_eq!(
        frame,
        json!({"op": 0, "t": "ECHO", "d": {"still": "alive"}})
    );
}

/// A builder whose message handler echoes every dispatch back to its sender, with token auth.
pub fn echo_server() -> MesaBuilder {
    with_token_auth(Mesa::builder()).on_message(|client, frame| async move {
        let _ = client.send(&frame);
    })
}
