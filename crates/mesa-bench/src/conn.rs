//! One client connection of the load generator: connect from a chosen loopback source address, read Hello,
//! authenticate, answer heartbeats, send and receive text frames, close cleanly.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::scan::{self, Kind};
use crate::target::{SourceAddrs, Target};

/// Read buffer of each client connection: small, so that 20 000 connections fit (tungstenite allocates and
/// zero-fills the whole buffer up front; its default is 128 KiB).
pub const READ_BUFFER_SIZE: usize = 4 * 1024;

/// Bytes of frames gathered before a write; frames are also written on every explicit flush.
pub const WRITE_BUFFER_SIZE: usize = 16 * 1024;

/// How long one step of opening a connection (TCP connect, upgrade, Hello, authentication) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a clean close (close frame, the server's reply, the server's end of the TCP stream) may take.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The frame that answers a heartbeat.
const HEARTBEAT_ACK: &str = r#"{"op":11}"#;

type Ws = WebSocketStream<TcpStream>;

/// The WebSocket settings of every client connection.
pub fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// Why a connection could not be opened.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// Binding the source address or the TCP connect failed.
    Connect(std::io::Error),
    /// The WebSocket upgrade failed.
    Handshake(WsError),
    /// A step took longer than [`STEP_TIMEOUT`].
    Timeout(&'static str),
    /// The server closed the connection during this step (close code if any).
    Closed(&'static str, Option<u16>),
    /// The server sent something unexpected.
    Protocol(String),
}

impl OpenError {
    /// A short label for counting errors by kind.
    pub fn label(&self) -> String {
        match self {
            OpenError::Connect(e) => format!("connect: {}", e.kind()),
            OpenError::Handshake(_) => "upgrade failed".into(),
            OpenError::Timeout(step) => format!("timeout: {step}"),
            OpenError::Closed(step, code) => match code {
                Some(code) => format!("closed {code} during {step}"),
                None => format!("dropped during {step}"),
            },
            OpenError::Protocol(_) => "unexpected frame".into(),
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Connect(e) => write!(f, "connect failed: {e}"),
            OpenError::Handshake(e) => write!(f, "WebSocket upgrade failed: {e}"),
            OpenError::Timeout(step) => write!(f, "timed out during {step}"),
            OpenError::Closed(step, code) => write!(f, "closed ({code:?}) during {step}"),
            OpenError::Protocol(what) => write!(f, "unexpected: {what}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// Opens connections to one target, spreading them over source addresses in round robin.
#[derive(Debug)]
pub struct Connector {
    target: Target,
    sources: SourceAddrs,
    config: WebSocketConfig,
    next: AtomicUsize,
}

impl Connector {
    /// A connector for `target` using `sources`.
    pub fn new(target: Target, sources: SourceAddrs) -> Arc<Connector> {
        Arc::new(Connector {
            target,
            sources,
            config: client_ws_config(),
            next: AtomicUsize::new(0),
        })
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The source addresses in use.
    pub fn sources(&self) -> &SourceAddrs {
        &self.sources
    }

    /// Connects (next source address), upgrades and reads Hello.
    pub async fn open(&self) -> Result<Conn, OpenError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        self.open_from(self.sources.for_connection(index)).await
    }

    /// Connects from `source`, upgrades and reads Hello.
    pub async fn open_from(&self, source: IpAddr) -> Result<Conn, OpenError> {
        let stream = timeout(STEP_TIMEOUT, connect_from(source, self.target.addr))
            .await
            .map_err(|_| OpenError::Timeout("TCP connect"))?
            .map_err(OpenError::Connect)?;
        let request = self.target.url.as_str();
        let (ws, _response) = timeout(
            STEP_TIMEOUT,
            tokio_tungstenite::client_async_with_config(request, stream, Some(self.config)),
        )
        .await
        .map_err(|_| OpenError::Timeout("upgrade"))?
        .map_err(OpenError::Handshake)?;
        let mut conn = Conn {
            ws,
            owed_acks: 0,
            dirty: false,
            heartbeats: 0,
            unreadable: 0,
        };
        conn.expect(Expect::Hello, "Hello").await?;
        Ok(conn)
    }
}

async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What the next frame from the server means, from a connection's point of view.
#[derive(Debug)]
pub enum Incoming {
    /// A text frame other than a heartbeat (heartbeats are answered inside [`Conn::recv`]).
    Text(Utf8Bytes),
    /// The connection ended: the server's close code, or `None` when it dropped without one.
    Closed(Option<u16>),
}

#[derive(Clone, Copy)]
enum Expect {
    Hello,
    AuthenticationAck,
}

/// An open connection. Heartbeats (op 1) are answered with op 11 whenever frames are read.
#[derive(Debug)]
pub struct Conn {
    ws: Ws,
    owed_acks: u32,
    dirty: bool,
    /// Heartbeats received (and answered).
    pub heartbeats: u64,
    /// Frames the scanner could not read.
    pub unreadable: u64,
}

impl Conn {
    /// Sends op 2 `{"token": token}` and waits for op 22.
    pub async fn authenticate(&mut self, token: &str) -> Result<(), OpenError> {
        let frame = serde_json::json!({"op": 2, "d": {"token": token}}).to_string();
        self.send(frame)
            .await
            .map_err(|_| OpenError::Closed("authentication", None))?;
        self.expect(Expect::AuthenticationAck, "authentication")
            .await
    }

    async fn expect(&mut self, expect: Expect, step: &'static str) -> Result<(), OpenError> {
        let wait = async {
            loop {
                match self.recv().await {
                    Incoming::Closed(code) => return Err(OpenError::Closed(step, code)),
                    Incoming::Text(text) => match (expect, scan::classify(&text)) {
                        (Expect::Hello, Kind::Hello) => return Ok(()),
                        (Expect::AuthenticationAck, Kind::AuthenticationAck) => return Ok(()),
                        // A broadcast from another benchmark connection may arrive at any time.
                        (_, Kind::Dispatch(_)) => {}
                        (_, other) => {
                            return Err(OpenError::Protocol(format!(
                                "{other:?} while waiting for {step}"
                            )))
                        }
                    },
                }
            }
        };
        timeout(STEP_TIMEOUT, wait)
            .await
            .map_err(|_| OpenError::Timeout(step))?
    }

    /// The next text frame that is not a heartbeat. Flushes pending writes before waiting. Cancel-safe: a
    /// heartbeat answer interrupted by cancellation is sent on the next call.
    pub async fn recv(&mut self) -> Incoming {
        loop {
            while self.owed_acks > 0 {
                if self.ws.feed(Message::text(HEARTBEAT_ACK)).await.is_err() {
                    return Incoming::Closed(None);
                }
                self.owed_acks -= 1;
                self.dirty = true;
            }
            let next = match self.ws.next().now_or_never() {
                Some(next) => next,
                None => {
                    if self.dirty {
                        if self.ws.flush().await.is_err() {
                            return Incoming::Closed(None);
                        }
                        self.dirty = false;
                    }
                    self.ws.next().await
                }
            };
            match next {
                None => return Incoming::Closed(None),
                Some(Err(_)) => return Incoming::Closed(None),
                Some(Ok(Message::Text(text))) => {
                    if scan::op(&text) == Some(1) {
                        self.heartbeats += 1;
                        self.owed_acks += 1;
                        continue;
                    }
                    return Incoming::Text(text);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Incoming::Closed(frame.map(|f| u16::from(f.code)));
                }
                // Pings are answered by tungstenite; nothing else matters here.
                Some(Ok(_)) => {}
            }
        }
    }

    /// Queues a text frame; it is written at the next [`Conn::flush`], when the write buffer fills, or before
    /// [`Conn::recv`] waits.
    pub async fn send(&mut self, text: String) -> Result<(), WsError> {
        self.ws.feed(Message::text(text)).await?;
        self.dirty = true;
        Ok(())
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), WsError> {
        self.ws.flush().await?;
        self.dirty = false;
        Ok(())
    }

    /// Records that a frame could not be read.
    pub fn unreadable_frame(&mut self) {
        self.unreadable += 1;
    }

    /// Closes cleanly: a close frame, the server's reply, then waits for the server to end the TCP stream so
    /// that the server's side (not the generator's) keeps the `TIME_WAIT` state and source ports are reused at
    /// once. Bounded by [`CLOSE_TIMEOUT`].
    pub async fn close(mut self) {
        let _ = timeout(CLOSE_TIMEOUT, async {
            if self.ws.close(None).await.is_err() {
                return;
            }
            while let Some(Ok(_)) = self.ws.next().await {}
            let mut stream = self.ws.into_inner();
            let mut scratch = [0u8; 256];
            while let Ok(n) = stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}
