//! The thin baseline server: the conformance contract on tokio-tungstenite directly, with no features.
//!
//! It is the floor of what a wrapper around the same WebSocket crate can cost, for the side-by-side
//! benchmarks: Hello, heartbeats (1 s, closed with 4009 after more than 2 unanswered beats), `user:<id>`
//! tokens (op 22, or close 1008), `ECHO`, `BROADCAST` (to every connection) and `SEND_TO` (to users). Minimal
//! but correct: each broadcast is serialised once and the same bytes are queued on every connection; each
//! connection's queue is bounded (a client more than 1024 frames behind is closed with 4010) and allocates
//! nothing while empty; queued frames are written as one batch with one flush; the read buffer is 4 KiB; the
//! handshake future is boxed so that it does not enlarge the long-lived connection future.
//!
//! Not a product: no hooks, no rate limits, no metrics, no graceful shutdown.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{interval_at, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Hello, as the conformance server sends it.
pub const HELLO: &str = r#"{"op":10,"d":{"c_heartbeat_interval":1000,"c_reconnect_interval":500,"c_authentication_timeout":2000,"rules":["sends_user_object"]}}"#;
/// Time between heartbeats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1000);
/// Unanswered heartbeats tolerated in a row.
pub const HEARTBEAT_MAX_ATTEMPTS: u32 = 2;
/// Frames one connection's queue holds before the connection is closed with 4010.
pub const QUEUE_LIMIT: usize = 1024;
/// Read buffer per connection.
pub const READ_BUFFER_SIZE: usize = 4 * 1024;
/// Bytes gathered before a write while a batch is being queued.
pub const WRITE_BUFFER_SIZE: usize = 8 * 1024;
/// Largest message accepted.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Time a client has to complete the upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Inbound frames handled before queued writes are flushed.
const READ_BATCH: usize = 64;

type Ws = WebSocketStream<TcpStream>;

#[derive(Default)]
struct Queue {
    frames: VecDeque<Utf8Bytes>,
    overflow: bool,
}

/// One connection's outbound queue, shared with senders.
#[derive(Default)]
struct Peer {
    queue: Mutex<Queue>,
    wake: Notify,
}

impl Peer {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, frame: &Utf8Bytes) {
        let mut queue = self.lock();
        if queue.overflow {
            return;
        }
        if queue.frames.len() >= QUEUE_LIMIT {
            queue.frames = VecDeque::new();
            queue.overflow = true;
        } else {
            let was_empty = queue.frames.is_empty();
            queue.frames.push_back(frame.clone());
            if !was_empty {
                return;
            }
        }
        drop(queue);
        self.wake.notify_one();
    }
}

#[derive(Default)]
struct Registry {
    peers: HashMap<u64, Arc<Peer>>,
    users: HashMap<String, Vec<u64>>,
}

/// The server's shared state.
#[derive(Default)]
pub struct Baseline {
    registry: Mutex<Registry>,
    next_id: AtomicU64,
}

impl Baseline {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn broadcast(&self, frame: &Utf8Bytes) {
        for peer in self.registry().peers.values() {
            peer.push(frame);
        }
    }

    fn send_to(&self, to: &[String], excluding: &[String], frame: &Utf8Bytes) {
        let registry = self.registry();
        let mut done: Vec<&str> = Vec::new();
        for id in to {
            if excluding.contains(id) || done.contains(&id.as_str()) {
                continue;
            }
            done.push(id);
            for conn in registry.users.get(id).into_iter().flatten() {
                if let Some(peer) = registry.peers.get(conn) {
                    peer.push(frame);
                }
            }
        }
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.registry().peers.len()
    }
}

/// Accepts connections on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<Baseline>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            // Boxed: the handshake's state must not enlarge the long-lived connection future.
            let ws = Box::pin(timeout(HANDSHAKE_TIMEOUT, accept(stream))).await;
            if let Ok(Ok(ws)) = ws {
                Connection::new(ws, state).run().await;
            }
        });
    }
}

// The callback's error type (a whole HTTP response) is tungstenite's.
#[allow(clippy::result_large_err)]
async fn accept(stream: TcpStream) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE));
    let only_root = |request: &Request, response: Response| {
        if request.uri().path() == "/" {
            Ok(response)
        } else {
            let mut refusal = ErrorResponse::new(Some("not found".into()));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            Err(refusal)
        }
    };
    tokio_tungstenite::accept_hdr_async_with_config(stream, only_root, Some(config)).await
}

#[derive(Deserialize)]
struct Inbound {
    op: u64,
    #[serde(default)]
    d: Value,
    #[serde(default)]
    t: Option<String>,
}

#[derive(Serialize)]
struct Outbound<'a> {
    op: u64,
    d: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    t: Option<&'a str>,
}

fn encode(op: u64, d: &Value, t: Option<&str>) -> Utf8Bytes {
    serde_json::to_string(&Outbound { op, d, t })
        .unwrap_or_default()
        .into()
}

#[derive(Deserialize)]
struct SendTo {
    to: Vec<String>,
    #[serde(default)]
    excluding: Vec<String>,
    payload: Value,
}

struct Connection {
    ws: Ws,
    state: Arc<Baseline>,
    peer: Arc<Peer>,
    id: u64,
    user: Option<String>,
    acked: bool,
    sent_any: bool,
    attempts: u32,
    dirty: bool,
}

impl Connection {
    fn new(ws: Ws, state: Arc<Baseline>) -> Connection {
        Connection {
            id: state.next_id.fetch_add(1, Ordering::Relaxed),
            ws,
            state,
            peer: Arc::new(Peer::default()),
            user: None,
            acked: false,
            sent_any: false,
            attempts: 0,
            dirty: false,
        }
    }

    async fn run(mut self) {
        if self.ws.send(Message::text(HELLO)).await.is_err() {
            return;
        }
        self.state
            .registry()
            .peers
            .insert(self.id, self.peer.clone());
        let close = self.serve().await;
        self.unregister();
        if close.is_none() {
            // A client's close frame: tungstenite queued the reply; send it.
            let _ = timeout(Duration::from_secs(1), self.ws.flush()).await;
        }
        if let Some(code) = close {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            };
            let ws = &mut self.ws;
            let _ = timeout(Duration::from_secs(1), async move {
                if ws.close(Some(frame)).await.is_ok() {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            })
            .await;
        }
    }

    fn unregister(&self) {
        let mut registry = self.state.registry();
        registry.peers.remove(&self.id);
        if let Some(user) = &self.user {
            if let Some(list) = registry.users.get_mut(user) {
                list.retain(|c| *c != self.id);
                if list.is_empty() {
                    registry.users.remove(user);
                }
            }
        }
    }

    /// Runs until the connection ends; `Some(code)` when the server closes it.
    async fn serve(&mut self) -> Option<u16> {
        let mut beat = interval_at(Instant::now() + HEARTBEAT_INTERVAL, HEARTBEAT_INTERVAL);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let peer = self.peer.clone();
        loop {
            tokio::select! {
                () = peer.wake.notified() => {
                    let (frames, overflow) = {
                        let mut queue = peer.lock();
                        (std::mem::take(&mut queue.frames), queue.overflow)
                    };
                    if overflow {
                        return Some(4010);
                    }
                    for frame in frames {
                        if self.ws.feed(Message::Text(frame)).await.is_err() {
                            return None;
                        }
                    }
                    self.dirty = true;
                }
                message = self.ws.next() => {
                    if let Some(end) = self.on_message(message) {
                        return end;
                    }
                    // Take what else has arrived before writing the replies in one flush.
                    for _ in 0..READ_BATCH {
                        match self.ws.next().now_or_never() {
                            Some(message) => {
                                if let Some(end) = self.on_message(message) {
                                    return end;
                                }
                            }
                            None => break,
                        }
                    }
                }
                _ = beat.tick() => {
                    if self.sent_any && !self.acked {
                        self.attempts += 1;
                        if self.attempts > HEARTBEAT_MAX_ATTEMPTS {
                            return Some(4009);
                        }
                    } else {
                        self.attempts = 0;
                    }
                    self.sent_any = true;
                    self.acked = false;
                    let beat = if self.attempts == 0 {
                        Utf8Bytes::from_static(r#"{"op":1,"d":{}}"#)
                    } else {
                        format!(r#"{{"op":1,"d":{{"tries":{},"max":{HEARTBEAT_MAX_ATTEMPTS}}}}}"#, self.attempts).into()
                    };
                    if self.ws.feed(Message::Text(beat)).await.is_err() {
                        return None;
                    }
                    self.dirty = true;
                }
            }
            if self.dirty {
                if self.ws.flush().await.is_err() {
                    return None;
                }
                self.dirty = false;
            }
        }
    }

    /// Handles one inbound message; `Some(end)` ends the connection (`Some(Some(code))`: close with `code`).
    fn on_message(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<Option<u16>> {
        let text = match message {
            None | Some(Err(_)) => return Some(None),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => return Some(Some(1003)),
            Some(Ok(Message::Close(_))) => return Some(None),
            Some(Ok(_)) => return None,
        };
        let Ok(frame) = serde_json::from_str::<Inbound>(&text) else {
            return Some(Some(4002));
        };
        match frame.op {
            11 => self.acked = true,
            2 => {
                let id = frame
                    .d
                    .get("token")
                    .and_then(Value::as_str)
                    .and_then(|t| t.strip_prefix("user:"))
                    .filter(|id| !id.is_empty());
                let Some(id) = id else {
                    return Some(Some(1008));
                };
                let user = serde_json::json!({"id": id, "name": format!("User {id}")});
                if self.user.as_deref() != Some(id) {
                    if self.user.is_some() {
                        return Some(Some(4005));
                    }
                    self.user = Some(id.to_string());
                    self.state
                        .registry()
                        .users
                        .entry(id.to_string())
                        .or_default()
                        .push(self.id);
                }
                self.write_now(encode(22, &user, None));
            }
            0 => match frame.t.as_deref() {
                Some("ECHO") => self.write_now(encode(0, &frame.d, Some("ECHO"))),
                Some("BROADCAST") => self
                    .state
                    .broadcast(&encode(0, &frame.d, Some("BROADCAST"))),
                Some("SEND_TO") => {
                    if let Ok(send) = serde_json::from_value::<SendTo>(frame.d) {
                        let direct = encode(0, &send.payload, Some("DIRECT"));
                        self.state.send_to(&send.to, &send.excluding, &direct);
                    }
                }
                _ => {}
            },
            _ => {}
        }
        None
    }

    /// Replies on this connection's own task: straight into the write buffer, flushed with the batch.
    fn write_now(&mut self, frame: Utf8Bytes) {
        // `start_send` only buffers (or writes what it can without waiting); the flush follows the batch.
        if self.ws.start_send_unpin(Message::Text(frame)).is_ok() {
            self.dirty = true;
        }
    }
}
