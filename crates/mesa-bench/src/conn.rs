//! One client connection of the load generator: connect from a chosen loopback source address, read Hello,
//! authenticate, answer heartbeats, send and receive text frames, close cleanly.
//!
//! With resumable sessions on ([`SessionOptions::resumable`], `--resumable`) a connection authenticates with
//! op 2 `{"token", "resumable": true}` (or resumes with op 6), and then checks every sequenced dispatch it
//! receives: its top-level `s` must be the previous one plus one. A duplicate (`s` ≤ the last) is counted and
//! dropped, as a client must; a gap (`s` > the last + 1) is counted with the positions it skipped, and the
//! frame is kept (a benchmark reports a gap rather than resuming over it). The last `s` is acknowledged in
//! every heartbeat answer (`{"op":11,"s":N}`) and, like `mesa-client`, also unsolicited a short while
//! ([`SessionOptions::ack_interval`]) after the first dispatch not yet acknowledged (docs/protocol.md,
//! "Acknowledgement").

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::Value;
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

/// Whether connections open resumable sessions, and how they acknowledge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionOptions {
    /// Authenticate with op 2 `{"token", "resumable": true}` (the server's Hello must offer `c_resume`).
    pub resumable: bool,
    /// Besides every heartbeat answer, acknowledge this long after the first dispatch not yet acknowledged
    /// (`None`: in heartbeat answers only).
    pub ack_interval: Option<Duration>,
}

/// Opens connections to one target, spreading them over source addresses in round robin.
#[derive(Debug)]
pub struct Connector {
    target: Target,
    sources: SourceAddrs,
    config: WebSocketConfig,
    sessions: SessionOptions,
    next: AtomicUsize,
}

impl Connector {
    /// A connector for `target` using `sources`.
    pub fn new(target: Target, sources: SourceAddrs) -> Arc<Connector> {
        Connector::with_sessions(target, sources, SessionOptions::default())
    }

    /// A connector for `target` using `sources` whose connections log in as `sessions` says.
    pub fn with_sessions(
        target: Target,
        sources: SourceAddrs,
        sessions: SessionOptions,
    ) -> Arc<Connector> {
        Arc::new(Connector {
            target,
            sources,
            config: client_ws_config(),
            sessions,
            next: AtomicUsize::new(0),
        })
    }

    /// A connector for another target (another node) with the same session options.
    pub fn sibling(&self, target: Target, sources: SourceAddrs) -> Arc<Connector> {
        Connector::with_sessions(target, sources, self.sessions)
    }

    /// The session options.
    pub fn sessions(&self) -> SessionOptions {
        self.sessions
    }

    /// Authenticates `conn` as `token`: op 2, resumable when the options say so.
    pub async fn login(&self, conn: &mut Conn, token: &str) -> Result<(), OpenError> {
        if self.sessions.resumable {
            conn.open_session(token).await.map(|_| ())
        } else {
            conn.authenticate(token).await
        }
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
            resume_offered: false,
            session: None,
            resumed: false,
            hold_acks: false,
            ack_interval: self.sessions.ack_interval,
            ack_at: None,
            seq: SeqCounts::default(),
        };
        let hello = conn.expect(Expect::Hello, "Hello").await?;
        conn.resume_offered = scan::has_key(&hello, "c_resume");
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
    /// Op 22 or op 9 (the answers to op 6).
    ResumeAnswer,
}

/// A resumable session's position on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// The session's id (op 22's `session_id`).
    pub session_id: String,
    /// The position the session started after on this connection (op 22's `seq`).
    pub start: u64,
    /// The last `s` processed.
    pub last: u64,
    /// The last `s` acknowledged.
    pub acked: u64,
}

/// The server's answer to op 6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeAnswer {
    /// Op 22 with `resumed: true`: the session goes on after `seq`.
    Resumed {
        /// Op 22's `seq` (the client's).
        seq: u64,
    },
    /// Op 9 with this `code`: the connection is open and unauthenticated.
    Refused(String),
}

/// What one connection counted about the sequence numbers of its resumable session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqCounts {
    /// Sequenced dispatches accepted (`s` above the last).
    pub sequenced: u64,
    /// Sequenced dispatches whose `s` skipped positions (`s` > the last + 1).
    pub gaps: u64,
    /// The positions those skipped.
    pub missing: u64,
    /// Sequenced dispatches with `s` ≤ the last: counted and dropped.
    pub dups: u64,
    /// Acknowledgements sent (op 11 with `s`).
    pub acks: u64,
}

impl SeqCounts {
    /// Counts a sequenced dispatch at `s` against `session` and moves its last `s`; `false` when `s` is at or
    /// below the last (a duplicate, to be dropped). A gap is counted and accepted.
    pub fn check(&mut self, session: &mut SessionState, s: u64) -> bool {
        if s <= session.last {
            self.dups += 1;
            return false;
        }
        let expected = session.last + 1;
        if s > expected {
            self.gaps += 1;
            self.missing += s - expected;
        }
        self.sequenced += 1;
        session.last = s;
        true
    }
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
    resume_offered: bool,
    session: Option<SessionState>,
    resumed: bool,
    hold_acks: bool,
    ack_interval: Option<Duration>,
    ack_at: Option<tokio::time::Instant>,
    /// Sequence checks of the resumable session.
    pub seq: SeqCounts,
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
            .map(|_| ())
    }

    /// Whether the server's Hello offered resumable sessions (`c_resume`).
    pub fn resume_offered(&self) -> bool {
        self.resume_offered
    }

    /// The resumable session, once op 22 opened or resumed one.
    pub fn session(&self) -> Option<&SessionState> {
        self.session.as_ref()
    }

    /// Whether the session was resumed (op 6) rather than opened (op 2).
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// While `hold` is on, acknowledgements stay where they are (heartbeat answers carry the last
    /// acknowledged `s`, and nothing is acknowledged unsolicited): what arrives meanwhile stays
    /// unacknowledged.
    pub fn hold_acks(&mut self, hold: bool) {
        self.hold_acks = hold;
    }

    /// Opens a resumable session: op 2 `{"token": token, "resumable": true}`, then op 22
    /// `{user, session_id, resumed: false, seq}`. Refused unless Hello offered `c_resume`.
    pub async fn open_session(&mut self, token: &str) -> Result<&SessionState, OpenError> {
        if !self.resume_offered {
            return Err(OpenError::Protocol(
                "the server's Hello offers no resumable sessions (no c_resume)".into(),
            ));
        }
        let frame =
            serde_json::json!({"op": 2, "d": {"token": token, "resumable": true}}).to_string();
        self.send(frame)
            .await
            .map_err(|_| OpenError::Closed("authentication", None))?;
        let ack = self
            .expect(Expect::AuthenticationAck, "authentication")
            .await?;
        let (session_id, seq, _) = session_ack(&ack)?;
        self.start_session(session_id, seq, false);
        self.session
            .as_ref()
            .ok_or_else(|| OpenError::Protocol("no session".into()))
    }

    /// Resumes a session: op 6 `{"token", "session_id", "seq"}`, answered by op 22 (`resumed: true`: the
    /// missed dispatches follow) or op 9 (refused, with its `code`).
    pub async fn resume(
        &mut self,
        token: &str,
        session_id: &str,
        seq: u64,
    ) -> Result<ResumeAnswer, OpenError> {
        self.send_resume(token, session_id, seq)
            .await
            .map_err(|_| OpenError::Closed("resume", None))?;
        self.resume_answer(session_id, seq).await
    }

    /// Writes op 6 (and flushes it); [`Conn::resume_answer`] reads the answer.
    pub async fn send_resume(
        &mut self,
        token: &str,
        session_id: &str,
        seq: u64,
    ) -> Result<(), WsError> {
        let frame = serde_json::json!({
            "op": 6,
            "d": {"token": token, "session_id": session_id, "seq": seq},
        })
        .to_string();
        self.send(frame).await?;
        self.flush().await
    }

    /// Waits for the answer to an op 6 sent for `session_id` after `seq`.
    pub async fn resume_answer(
        &mut self,
        session_id: &str,
        seq: u64,
    ) -> Result<ResumeAnswer, OpenError> {
        let answer = self.expect(Expect::ResumeAnswer, "resume").await?;
        if scan::op(&answer) == Some(9) {
            let code = serde_json::from_str::<Value>(&answer)
                .ok()
                .and_then(|v| v["d"]["code"].as_str().map(str::to_string))
                .unwrap_or_else(|| "?".into());
            return Ok(ResumeAnswer::Refused(code));
        }
        let (id, answered, resumed) = session_ack(&answer)?;
        if id != session_id || !resumed || answered != seq {
            return Err(OpenError::Protocol(format!(
                "op 22 answered a resume of {session_id} after {seq} with session {id}, resumed {resumed}, seq {answered}"
            )));
        }
        self.start_session(id, seq, true);
        Ok(ResumeAnswer::Resumed { seq })
    }

    fn start_session(&mut self, session_id: String, seq: u64, resumed: bool) {
        self.resumed = resumed;
        self.session = Some(SessionState {
            session_id,
            start: seq,
            last: seq,
            acked: seq,
        });
    }

    /// Checks a dispatch's `s` against the session; `false` when it is a duplicate (to be dropped).
    fn check_sequence(&mut self, text: &str) -> bool {
        let Some(session) = self.session.as_mut() else {
            return true;
        };
        // No `s`: volatile, a broadcast or a reply, never replayed.
        let Some(s) = scan::stream_seq(text) else {
            return true;
        };
        if !self.seq.check(session, s) {
            return false;
        }
        if self.ack_at.is_none() && !self.hold_acks {
            if let Some(interval) = self.ack_interval {
                self.ack_at = Some(tokio::time::Instant::now() + interval);
            }
        }
        true
    }

    /// The acknowledgement to send now: op 11 with `s` (only when something was processed on the session;
    /// `solicited`: in answer to a heartbeat, which is answered even when nothing is new).
    fn acknowledgement(&mut self, solicited: bool) -> Option<String> {
        let session = self.session.as_mut()?;
        let value = if self.hold_acks {
            session.acked
        } else {
            session.last
        };
        if value == 0 || (!solicited && value <= session.acked) {
            return None;
        }
        session.acked = value;
        self.seq.acks += 1;
        self.ack_at = None;
        Some(format!(r#"{{"op":11,"s":{value}}}"#))
    }

    async fn expect(&mut self, expect: Expect, step: &'static str) -> Result<Utf8Bytes, OpenError> {
        let wait = async {
            loop {
                match self.recv().await {
                    Incoming::Closed(code) => return Err(OpenError::Closed(step, code)),
                    Incoming::Text(text) => match (expect, scan::classify(&text)) {
                        (Expect::Hello, Kind::Hello) => return Ok(text),
                        (
                            Expect::AuthenticationAck | Expect::ResumeAnswer,
                            Kind::AuthenticationAck,
                        ) => return Ok(text),
                        (Expect::ResumeAnswer, Kind::Other(9)) => return Ok(text),
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
                let answer = match self.acknowledgement(true) {
                    Some(ack) => Message::text(ack),
                    None => Message::text(HEARTBEAT_ACK),
                };
                if self.ws.feed(answer).await.is_err() {
                    return Incoming::Closed(None);
                }
                self.owed_acks -= 1;
                self.dirty = true;
            }
            if self
                .ack_at
                .is_some_and(|at| at <= tokio::time::Instant::now())
            {
                self.ack_at = None;
                if let Some(ack) = self.acknowledgement(false) {
                    if self.ws.feed(Message::text(ack)).await.is_err() {
                        return Incoming::Closed(None);
                    }
                    self.dirty = true;
                }
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
                    match self.ack_at {
                        None => self.ws.next().await,
                        Some(at) => tokio::select! {
                            next = self.ws.next() => next,
                            () = tokio::time::sleep_until(at) => continue,
                        },
                    }
                }
            };
            match next {
                None => return Incoming::Closed(None),
                Some(Err(_)) => return Incoming::Closed(None),
                Some(Ok(Message::Text(text))) => {
                    match scan::op(&text) {
                        Some(1) => {
                            self.heartbeats += 1;
                            self.owed_acks += 1;
                            continue;
                        }
                        Some(0) if self.session.is_some() && !self.check_sequence(&text) => {
                            continue;
                        }
                        _ => {}
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

    /// Ends the connection without a close frame (the socket is closed: the server sees the stream end),
    /// as when a client crashes or its network path fails. A resumable session stays resumable.
    pub fn drop_socket(self) {
        drop(self);
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

/// The `session_id`, `seq` and `resumed` of a resumable op 22.
fn session_ack(text: &str) -> Result<(String, u64, bool), OpenError> {
    let unreadable = || OpenError::Protocol(format!("op 22 without a resumable session: {text}"));
    let value: Value = serde_json::from_str(text).map_err(|_| unreadable())?;
    let d = &value["d"];
    let id = d["session_id"].as_str().ok_or_else(unreadable)?;
    let seq = d["seq"].as_u64().ok_or_else(unreadable)?;
    let resumed = d["resumed"].as_bool().ok_or_else(unreadable)?;
    Ok((id.to_string(), seq, resumed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_checks_count_gaps_and_duplicates() {
        let mut session = SessionState {
            session_id: "x".into(),
            start: 4,
            last: 4,
            acked: 4,
        };
        let mut counts = SeqCounts::default();
        assert!(counts.check(&mut session, 5));
        assert!(counts.check(&mut session, 6));
        assert!(!counts.check(&mut session, 6), "a duplicate is dropped");
        assert!(!counts.check(&mut session, 3), "so is anything older");
        assert!(
            counts.check(&mut session, 9),
            "a gap is counted and accepted"
        );
        assert!(counts.check(&mut session, 10));
        assert_eq!(
            counts,
            SeqCounts {
                sequenced: 4,
                gaps: 1,
                missing: 2,
                dups: 2,
                acks: 0,
            }
        );
        assert_eq!(session.last, 10);
    }

    #[test]
    fn resumable_op_22_is_read() {
        let ack = r#"{"op":22,"d":{"user":{"id":"a"},"session_id":"5f0c9e1a7b3d4c2e8a6f1b0d9c8e7a6b","resumed":false,"seq":4}}"#;
        assert_eq!(
            session_ack(ack).unwrap(),
            ("5f0c9e1a7b3d4c2e8a6f1b0d9c8e7a6b".to_string(), 4, false)
        );
        for bad in [
            r#"{"op":22,"d":{"id":"a"}}"#,
            r#"{"op":22,"d":{"session_id":"x","seq":-1,"resumed":true}}"#,
            r#"{"op":22"#,
        ] {
            assert!(session_ack(bad).is_err(), "{bad}");
        }
    }
}
