//! The client's task: the one owner of the socket and of the [`Lifecycle`].
//!
//! The task moves between four phases, each one `select!` over the handles' commands, the event queue and
//! whatever the phase waits for:
//!
//! ```text
//!            connect()               open ok            Hello                 op 22 (or no credentials)
//! Disconnected ──────► Connecting ──────────► AwaitingHello ───► Authenticating ───────────────► Ready
//!   Closed ◄───┐          │ fails                  │ drops / times out  │                         │
//!              │          ▼                        ▼                    ▼                         ▼
//!   terminal close,    Backoff ◄───────────────────┴────────────────────┴─────────────────────────┘
//!   disconnect()          │ delay elapsed (full jitter)
//!                         └──────► Connecting
//! ```
//!
//! The send queue (frames [`Client::send`] accepted) is read only in `Ready`, which is what makes queued
//! frames wait for (re-)authentication, and only when the pace (`TokenBucket`) has a token. Timing
//! decisions are delegated to the pure [`Backoff`] and [`Liveness`].
//!
//! Authentication: `credentials` are the current ones (the latest `authenticate()`), `auth_waiters` the
//! calls waiting for them to be sent, and [`Connection::in_flight`] the op 2 a connection is waiting to
//! hear about. Only one op 2 is in flight per connection; a connection the server authenticated with other
//! credentials is replaced ([`SessionEnd::SwitchCredentials`]) rather than sent a second identity.
//!
//! Resumable sessions (when the Hello offers `c_resume` and [`Config::resume_sessions`]): the session
//! ([`ResumeState`]: id, last `s` handed to the application, last `s` acknowledged) belongs to the task and
//! outlives connections. [`Attempt`] says what the op in flight asked for (Mesa 1.5 op 2, fresh op 2,
//! op 6). A close ends it ([`Driver::forget_session`]) only when the server is known to have ended it;
//! when in doubt the client resumes and the server's op 9 sends it back to a fresh op 2. Dispatches with
//! `s` are checked against `last` only on a connection serving the session (`session_live`).
//!
//! When the last handle goes, the task lingers (`linger_until`) while frames are still queued: the same
//! phases run until the queue is empty (its receiver then yields `None`), or the linger deadline passes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mesa_protocol::connection::CLIENT_VERSION_EVENT;
use mesa_protocol::{can_reconnect_code, rules, CloseCode, Frame, Hello, OpCode, TokenBucket};
use serde_json::{json, Value};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

use crate::backoff::Backoff;
use crate::client::{Client, Command, Lifecycle, Shared};
use crate::config::{Config, Credentials};
use crate::error::{AuthenticateError, ConnectError, ConnectErrorKind};
use crate::event::{
    Connected, ConnectionFailed, Disconnected, Event, EventQueue, Events, InvalidationReason,
    SessionInvalidated, SessionResumed, SessionStarted,
};
use crate::liveness::{Liveness, LivenessAction, Probe};
use crate::transport::{self, Socket};

/// How long the closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Commands waiting for the task (connect, authenticate, disconnect); senders wait when it is full.
const COMMAND_CAPACITY: usize = 32;
/// Unsolicited acknowledgements (op 11 with `s`) go out at most this often while dispatches arrive, and
/// once this long after the last one.
const ACK_DEBOUNCE: Duration = Duration::from_millis(100);
/// The op 9 `code` of refused credentials (any other code answering op 6 refuses the session only).
const AUTHENTICATION_FAILED: &str = "authentication_failed";

type AuthReply = oneshot::Sender<Result<Value, AuthenticateError>>;
type ConnectReply = oneshot::Sender<Result<(), ConnectError>>;

/// Starts the task on `runtime` and returns the handle and the event stream.
pub(crate) fn spawn(runtime: &Handle, config: Config, auto_connect: bool) -> (Client, Events) {
    let (commands_tx, commands) = mpsc::channel(COMMAND_CAPACITY);
    let (send_queue_tx, send_queue) = mpsc::channel(config.queue_capacity);
    let initial = if auto_connect {
        Lifecycle::Connecting
    } else {
        Lifecycle::Disconnected
    };
    let (lifecycle, lifecycle_rx) = watch::channel(initial);
    let (events, events_rx) = EventQueue::new(config.event_capacity);
    let client = Client::new(Shared {
        commands: commands_tx,
        send_queue: send_queue_tx,
        lifecycle: lifecycle_rx,
        queue_capacity: config.queue_capacity,
    });
    let driver = Driver {
        backoff: config.backoff.clone(),
        credentials: config.credentials.clone(),
        auth_required: config.credentials.is_some(),
        linger_until: None,
        config: Arc::new(config),
        commands,
        send_queue,
        events,
        lifecycle,
        auth_waiters: Vec::new(),
        connect_waiters: Vec::new(),
        connected_before: false,
        session: None,
        invalidated: None,
    };
    runtime.spawn(driver.run(auto_connect));
    (client, events_rx)
}

/// What the task does next.
enum Next {
    /// Nothing until a command: `Disconnected` or `Closed`.
    Idle(Lifecycle),
    /// `Backoff` for this long, then connect.
    Wait(Duration),
    /// Open a connection.
    Connect { automatic: bool },
    /// Stop the task: every handle is gone (and the queue is delivered, or abandoned).
    Exit,
}

/// Why a connection ended.
enum SessionEnd {
    /// The server sent a close frame.
    ServerClosed { code: u16, reason: String },
    /// The socket failed, or ended without a close frame.
    Dropped { reason: String },
    /// Nothing arrived within the liveness timeout.
    Silent { silent_for: Duration },
    /// No Hello within the Hello timeout.
    HelloTimeout,
    /// The server broke the protocol (first frame not a Hello).
    Protocol(String),
    /// A dispatch of the resumable session skipped sequence numbers: close, then resume from the last one.
    SequenceGap { expected: u64, got: u64 },
    /// No op 22 within the authentication timeout.
    AuthTimeout,
    /// [`Client::disconnect`].
    ClientDisconnect(oneshot::Sender<()>),
    /// The connection is authenticated with credentials other than the current ones: replace it by a new
    /// connection (a second identity on it would be closed with 4005, or ignored by Mesa 1.5).
    SwitchCredentials,
    /// Every handle dropped, and the queue is flushed (or cannot be before the linger deadline).
    HandlesDropped,
}

/// Credentials sent (op 2 or op 6) on a connection, and the calls waiting for the server's answer to them.
struct PendingAuth {
    credentials: Credentials,
    attempt: Attempt,
    waiters: Vec<AuthReply>,
}

/// What the frame carrying the credentials asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Mesa 1.5 op 2: no session (the server offers none, resumption is off, or the connection already
    /// holds one).
    Plain,
    /// Op 2 with `resumable: true`: a fresh session.
    Fresh,
    /// Op 6: resume the client's [`ResumeState`].
    Resume,
}

/// The client's resumable session, kept across connections.
struct ResumeState {
    id: String,
    /// The last `s` handed to the application.
    last: u64,
    /// The last `s` the server was told the client processed (op 11 `s`, or the `seq` of a resume).
    acked: u64,
    /// The credentials that opened it: only they resume it.
    credentials: Credentials,
}

/// One open WebSocket and its per-connection state.
struct Connection {
    socket: Socket,
    phase: Lifecycle,
    automatic: bool,
    hello_deadline: Instant,
    liveness: Option<Liveness>,
    auth_timeout: Duration,
    auth_deadline: Option<Instant>,
    /// The op 2 sent on this connection and not answered yet (at most one at a time).
    in_flight: Option<PendingAuth>,
    /// The credentials the server accepted (op 22) on this connection: the identity it holds for it.
    authenticated_as: Option<Credentials>,
    /// The Hello offered resumable sessions and the client uses them.
    resume_offered: bool,
    /// This connection serves the client's [`ResumeState`] (op 22 opened or resumed it).
    session_live: bool,
    /// When the next unsolicited acknowledgement is due (dispatches were processed since the last one).
    ack_at: Option<Instant>,
    /// op 7's `retry_after_ms`: the least wait before the next connection.
    retry_after: Option<Duration>,
    write_timeout: Duration,
    /// The client's estimate of the server's inbound rate limit (`None`: no pacing).
    pace: Option<TokenBucket>,
    /// A token taken from `pace` for the next queued frame.
    token: bool,
    /// No token before this instant.
    pace_until: Option<Instant>,
}

impl Connection {
    fn next_deadline(&self) -> Option<Instant> {
        let hello = (self.phase == Lifecycle::AwaitingHello).then_some(self.hello_deadline);
        let liveness = self
            .liveness
            .as_ref()
            .map(|l| Instant::from_std(l.next_deadline()));
        let pace = (self.phase == Lifecycle::Ready)
            .then_some(self.pace_until)
            .flatten();
        [hello, self.auth_deadline, liveness, pace, self.ack_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether a queued frame may be sent now (holding a token from the pace bucket when pacing).
    fn may_send(&mut self, now: Instant) -> bool {
        let Some(bucket) = self.pace.as_mut() else {
            return true;
        };
        if self.token {
            return true;
        }
        if self.pace_until.is_some_and(|at| now < at) {
            return false;
        }
        if bucket.try_take(now.into_std()) {
            self.token = true;
            self.pace_until = None;
        } else {
            self.pace_until = Some(now + bucket.time_to_next());
        }
        self.token
    }

    fn heard(&mut self, now: Instant) {
        if let Some(liveness) = self.liveness.as_mut() {
            liveness.heard(now.into_std());
        }
    }

    async fn write(&mut self, message: Message) -> Result<(), SessionEnd> {
        match timeout(self.write_timeout, self.socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(SessionEnd::Dropped {
                reason: format!("write failed: {error}"),
            }),
            Err(_) => Err(SessionEnd::Dropped {
                reason: format!("write took longer than {:?}", self.write_timeout),
            }),
        }
    }

    /// Writes a frame of the client's own (op 2, op 11, the version): it is not held back, but it counts
    /// against the pace like everything the server receives.
    async fn write_frame(&mut self, frame: &Frame) -> Result<(), SessionEnd> {
        if let Some(bucket) = self.pace.as_mut() {
            let _ = bucket.try_take(Instant::now().into_std());
        }
        self.write(Message::Text(frame.encode().into())).await
    }

    /// Writes a queued frame with the token `may_send` took.
    async fn write_queued(&mut self, text: Utf8Bytes) -> Result<(), SessionEnd> {
        self.token = false;
        self.write(Message::Text(text)).await
    }

    /// Sends a close frame and waits (briefly) for the server's answer.
    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code),
            reason: reason.into(),
        };
        let socket = &mut self.socket;
        let _ = timeout(CLOSE_TIMEOUT, async move {
            if socket.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = socket.next().await {}
            }
        })
        .await;
    }
}

struct Driver {
    config: Arc<Config>,
    backoff: Backoff,
    commands: mpsc::Receiver<Command>,
    send_queue: mpsc::Receiver<Utf8Bytes>,
    events: EventQueue,
    lifecycle: watch::Sender<Lifecycle>,
    /// The current credentials: sent after every Hello. Forgotten when refused.
    credentials: Option<Credentials>,
    /// The client has had credentials: the queue drains only on an authenticated connection, even when
    /// `credentials` were refused and forgotten.
    auth_required: bool,
    /// Calls waiting for the answer to `credentials`, which no connection has sent yet.
    auth_waiters: Vec<AuthReply>,
    connect_waiters: Vec<ConnectReply>,
    connected_before: bool,
    /// Set when the last handle was dropped with frames still queued: the task stops at this instant.
    linger_until: Option<Instant>,
    /// The resumable session, while it can be resumed.
    session: Option<ResumeState>,
    /// The session lost since the last one started: reported with the next [`Event::SessionStarted`].
    invalidated: Option<SessionInvalidated>,
}

impl Driver {
    async fn run(mut self, auto_connect: bool) {
        let mut next = if auto_connect {
            Next::Connect { automatic: false }
        } else {
            Next::Idle(Lifecycle::Disconnected)
        };
        loop {
            next = match next {
                Next::Idle(state) => self.idle(state).await,
                Next::Wait(delay) => self.wait(delay).await,
                Next::Connect { automatic } => self.connect(automatic).await,
                Next::Exit => break,
            };
        }
        let abandoned = self.send_queue.len();
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "mesa client stopped with queued frames it could not deliver"
            );
        }
        self.set(Lifecycle::Closed);
        self.fail_auth_waiters(&AuthenticateError::Closed);
        self.fail_connect_waiters(&ConnectError::new(ConnectErrorKind::Closed));
        tracing::debug!("mesa client task stopped");
    }

    fn set(&self, state: Lifecycle) {
        self.lifecycle.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    fn fail_auth_waiters(&mut self, error: &AuthenticateError) {
        for waiter in self.auth_waiters.drain(..) {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    fn fail_connect_waiters(&mut self, error: &ConnectError) {
        for waiter in self.connect_waiters.drain(..) {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    /// Stops for good (until `connect()`): the lifecycle is `Closed` before the caller of `disconnect()` hears back.
    fn stop(&mut self, reply: oneshot::Sender<()>) -> Next {
        // The close with 1000 ends the session on the server (and with no connection, the user wants out).
        self.forget_session(InvalidationReason::Disconnected);
        self.set(Lifecycle::Closed);
        self.fail_auth_waiters(&AuthenticateError::Closed);
        self.fail_connect_waiters(&ConnectError::new(ConnectErrorKind::Closed));
        let _ = reply.send(());
        Next::Idle(Lifecycle::Closed)
    }

    /// The last handle is gone (the command channel ended). Returns `true` when the task should stop now:
    /// nothing is queued, or lingering is off. Otherwise it lingers, until the queue is flushed or the
    /// linger deadline, and stops reading commands.
    fn handles_dropped(&mut self) -> bool {
        if self.linger_until.is_some() {
            return false;
        }
        let queued = self.send_queue.len();
        if queued == 0 || self.config.linger.is_zero() {
            return true;
        }
        tracing::debug!(queued, linger = ?self.config.linger, "last handle dropped: delivering the queue first");
        self.linger_until = Some(Instant::now() + self.config.linger);
        false
    }

    /// Makes `credentials` the current ones for the call `reply`.
    ///
    /// A call with the credentials of `in_flight` (sent on the open connection, not answered yet) joins
    /// it: same credentials, same answer. Calls waiting for other credentials that were never sent are
    /// superseded. Otherwise the call waits for the current credentials to be sent.
    fn accept_credentials(
        &mut self,
        credentials: Credentials,
        reply: AuthReply,
        in_flight: Option<&mut PendingAuth>,
    ) {
        self.auth_required = true;
        if self.credentials.as_ref() != Some(&credentials) {
            for waiter in self.auth_waiters.drain(..) {
                let _ = waiter.send(Err(AuthenticateError::Superseded));
            }
        }
        match in_flight {
            Some(pending) if pending.credentials == credentials => pending.waiters.push(reply),
            _ => self.auth_waiters.push(reply),
        }
        self.credentials = Some(credentials);
    }

    /// Handles a command that needs no connection; returns what to do next when it changes the phase.
    fn on_idle_command(&mut self, command: Option<Command>, idle: bool) -> Option<Next> {
        match command {
            // Idle: nothing would connect again, so nothing queued can be delivered.
            None if idle => Some(Next::Exit),
            None => self.handles_dropped().then_some(Next::Exit),
            Some(Command::Connect(reply)) => {
                self.connect_waiters.push(reply);
                idle.then_some(Next::Connect { automatic: false })
            }
            Some(Command::Authenticate { credentials, reply }) if !idle => {
                self.accept_credentials(credentials, reply, None);
                None
            }
            Some(Command::Authenticate { reply, .. }) => {
                let _ = reply.send(Err(AuthenticateError::NotConnected));
                None
            }
            Some(Command::Disconnect(reply)) => Some(self.stop(reply)),
        }
    }

    /// `Disconnected` or `Closed`: wait for `connect()`.
    async fn idle(&mut self, state: Lifecycle) -> Next {
        self.set(state);
        if self.linger_until.is_some() {
            // The handles are gone: no connect() will come.
            return Next::Exit;
        }
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => {
                    if let Some(next) = self.on_idle_command(command, true) {
                        match next {
                            // disconnect() while idle: stay idle, now Closed.
                            Next::Idle(state) => self.set(state),
                            next => return next,
                        }
                    }
                }
                () = self.events.flush_one(), if self.events.has_pending() => {}
            }
        }
    }

    /// `Backoff`: wait `delay` (while the application keeps up with events), then connect.
    async fn wait(&mut self, delay: Duration) -> Next {
        self.set(Lifecycle::Backoff);
        tracing::debug!(
            ?delay,
            attempt = self.backoff.attempt(),
            "reconnecting after a delay"
        );
        let until = Instant::now() + delay;
        loop {
            let linger_until = self.linger_until;
            tokio::select! {
                biased;
                command = self.commands.recv(), if linger_until.is_none() => {
                    let skip_delay = matches!(command, Some(Command::Connect(_)));
                    if let Some(next) = self.on_idle_command(command, false) {
                        return next;
                    }
                    if skip_delay {
                        return Next::Connect { automatic: false };
                    }
                }
                () = self.events.flush_one(), if self.events.has_pending() => {}
                () = sleep_until(until), if !self.events.is_stalled() => {
                    return Next::Connect { automatic: true };
                }
                () = sleep_until(linger_until.unwrap_or_else(Instant::now)), if linger_until.is_some() => {
                    return Next::Exit;
                }
            }
        }
    }

    /// `Connecting`: open the socket, then run the connection.
    async fn connect(&mut self, automatic: bool) -> Next {
        self.set(Lifecycle::Connecting);
        let config = self.config.clone();
        let attempt = async move { transport::open(&config).await };
        tokio::pin!(attempt);
        let socket = loop {
            let linger_until = self.linger_until;
            tokio::select! {
                biased;
                command = self.commands.recv(), if linger_until.is_none() => {
                    if let Some(next) = self.on_idle_command(command, false) {
                        return next;
                    }
                }
                () = self.events.flush_one(), if self.events.has_pending() => {}
                opened = &mut attempt => match opened {
                    Ok(socket) => break socket,
                    Err(error) => return self.attempt_failed(error),
                },
                () = sleep_until(linger_until.unwrap_or_else(Instant::now)), if linger_until.is_some() => {
                    return Next::Exit;
                }
            }
        };
        self.session(socket, automatic).await
    }

    /// An attempt failed before Hello: report it, and back off or stop.
    fn attempt_failed(&mut self, error: ConnectError) -> Next {
        tracing::debug!(%error, "connection attempt failed");
        self.fail_connect_waiters(&error);
        let delay = self.config.reconnect.then(|| self.backoff.next_delay());
        if delay.is_none() {
            self.fail_auth_waiters(&AuthenticateError::ConnectionLost {
                code: 1006,
                reason: error.to_string(),
            });
        }
        self.events.push(Event::ConnectionFailed(ConnectionFailed {
            error,
            will_reconnect: delay.is_some(),
            reconnect_delay: delay,
        }));
        match delay {
            Some(delay) => Next::Wait(delay),
            None => Next::Idle(Lifecycle::Closed),
        }
    }

    /// `AwaitingHello`, `Authenticating`, `Ready`: one open connection until it ends.
    async fn session(&mut self, socket: Socket, automatic: bool) -> Next {
        self.set(Lifecycle::AwaitingHello);
        let mut conn = Connection {
            socket,
            phase: Lifecycle::AwaitingHello,
            automatic,
            hello_deadline: Instant::now() + self.config.hello_timeout,
            liveness: None,
            auth_timeout: self.config.authentication_timeout,
            auth_deadline: None,
            in_flight: None,
            authenticated_as: None,
            resume_offered: false,
            session_live: false,
            ack_at: None,
            retry_after: None,
            write_timeout: self.config.write_timeout,
            pace: self
                .config
                .send_rate
                .map(|limit| TokenBucket::new(limit, Instant::now().into_std())),
            token: false,
            pace_until: None,
        };
        let end = loop {
            let linger_until = self.linger_until;
            if linger_until.is_some()
                && conn.phase == Lifecycle::Authenticating
                && conn.in_flight.is_none()
            {
                // Credentials refused, and no handle is left to supply others: the queue cannot go out.
                break SessionEnd::HandlesDropped;
            }
            let stalled = self.events.is_stalled();
            // Before the deadline: when no token is left, `may_send` sets the time of the next one.
            let ready = conn.phase == Lifecycle::Ready && conn.may_send(Instant::now());
            let deadline = conn.next_deadline();
            let step = tokio::select! {
                biased;
                command = self.commands.recv(), if linger_until.is_none() => {
                    self.on_command(&mut conn, command).await
                }
                () = self.events.flush_one(), if self.events.has_pending() => {
                    if stalled && !self.events.is_stalled() {
                        // The socket was not read meanwhile: silence was ours, not the server's.
                        conn.heard(Instant::now());
                    }
                    None
                }
                message = conn.socket.next(), if !stalled => self.on_socket(&mut conn, message).await,
                text = self.send_queue.recv(), if ready => match text {
                    Some(text) => conn.write_queued(text).await.err(),
                    // Every handle is gone and the queue is empty: everything accepted went out.
                    None => Some(SessionEnd::HandlesDropped),
                },
                () = sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() && !stalled => self.on_deadline(&mut conn).await,
                () = sleep_until(linger_until.unwrap_or_else(Instant::now)), if linger_until.is_some() => {
                    Some(SessionEnd::HandlesDropped)
                }
            };
            if let Some(end) = step {
                break end;
            }
        };
        self.finish(conn, end).await
    }

    async fn on_command(
        &mut self,
        conn: &mut Connection,
        command: Option<Command>,
    ) -> Option<SessionEnd> {
        match command {
            None => self.handles_dropped().then_some(SessionEnd::HandlesDropped),
            Some(Command::Connect(reply)) => {
                if conn.phase == Lifecycle::AwaitingHello {
                    self.connect_waiters.push(reply);
                } else {
                    let _ = reply.send(Ok(()));
                }
                None
            }
            Some(Command::Authenticate { credentials, reply }) => {
                self.accept_credentials(credentials, reply, conn.in_flight.as_mut());
                if conn.phase == Lifecycle::AwaitingHello {
                    None // sent when the Hello arrives
                } else {
                    self.advance_auth(conn).await
                }
            }
            Some(Command::Disconnect(reply)) => Some(SessionEnd::ClientDisconnect(reply)),
        }
    }

    async fn on_socket(
        &mut self,
        conn: &mut Connection,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<SessionEnd> {
        let message = match message {
            None => {
                return Some(SessionEnd::Dropped {
                    reason: "connection ended without a close frame".into(),
                })
            }
            Some(Err(error)) => {
                return Some(SessionEnd::Dropped {
                    reason: error.to_string(),
                })
            }
            Some(Ok(message)) => message,
        };
        conn.heard(Instant::now());
        match message {
            Message::Text(text) => self.on_text(conn, &text).await,
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                // tungstenite queued the close reply; send it so the server sees a clean close.
                let _ = timeout(CLOSE_TIMEOUT, conn.socket.flush()).await;
                Some(SessionEnd::ServerClosed { code, reason })
            }
            Message::Binary(_) => {
                tracing::debug!("ignored a binary message: the protocol is JSON text");
                None
            }
            // tungstenite answers pings itself; a pong only proves the server is alive.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }

    async fn on_text(&mut self, conn: &mut Connection, text: &str) -> Option<SessionEnd> {
        let frame = match Frame::decode(text) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%error, "ignored a text message that is not a frame");
                return None;
            }
        };
        if conn.phase == Lifecycle::AwaitingHello {
            if frame.opcode() != Some(OpCode::Hello) {
                return Some(SessionEnd::Protocol(format!(
                    "expected Hello (op 10) first, got op {}",
                    frame.op
                )));
            }
            return match serde_json::from_value::<Hello>(frame.d.into_value()) {
                Ok(hello) => self.on_hello(conn, hello).await,
                Err(error) => Some(SessionEnd::Protocol(format!("invalid Hello: {error}"))),
            };
        }
        match frame.opcode() {
            Some(OpCode::Heartbeat) => {
                let mut ack = Frame::new(OpCode::HeartbeatAck, json!({}));
                // In a resumable session every answer acknowledges (Mesa 1.5: never an `s`).
                if let Some(session) = self.session.as_mut().filter(|_| conn.session_live) {
                    ack.s = Some(session.last);
                    session.acked = session.last;
                    conn.ack_at = None;
                }
                conn.write_frame(&ack).await.err()
            }
            Some(OpCode::Dispatch) => self.on_dispatch(conn, frame),
            Some(OpCode::AuthenticationAck) => {
                self.on_authenticated(conn, frame.d.into_value()).await
            }
            Some(OpCode::InvalidSession) => {
                let d = frame.d.into_value();
                let text = |key: &str| d.get(key).and_then(Value::as_str).map(str::to_string);
                let reason = text("reason").unwrap_or_else(|| "authentication refused".into());
                self.on_refused(conn, text("code"), reason).await
            }
            Some(OpCode::Hello) => {
                // A second Hello: adopt its timings.
                if let Ok(hello) = serde_json::from_value::<Hello>(frame.d.into_value()) {
                    self.configure(conn, &hello);
                }
                None
            }
            Some(OpCode::Reconnect) => {
                conn.retry_after = frame
                    .d
                    .get("retry_after_ms")
                    .and_then(Value::as_u64)
                    .map(Duration::from_millis);
                tracing::debug!(retry_after = ?conn.retry_after, "server going away (op 7); waiting for its close");
                None
            }
            _ => {
                tracing::debug!(op = frame.op, "ignored frame");
                None
            }
        }
    }

    /// A dispatch: handed to the application, except in a resumable session a duplicate (dropped) or one
    /// after a gap (the connection is closed, and the session resumed from the last one handed over).
    fn on_dispatch(&mut self, conn: &mut Connection, frame: Frame) -> Option<SessionEnd> {
        if let (Some(s), Some(session)) =
            (frame.s, self.session.as_mut().filter(|_| conn.session_live))
        {
            if s <= session.last {
                tracing::debug!(s, last = session.last, "dropped a duplicate dispatch");
                return None;
            }
            let expected = session.last.saturating_add(1);
            if s > expected {
                tracing::warn!(expected, got = s, "sequence gap: resuming");
                return Some(SessionEnd::SequenceGap { expected, got: s });
            }
            session.last = s;
            // Trailing-edge debounce: the first dispatch after an acknowledgement arms the timer.
            if conn.ack_at.is_none() {
                conn.ack_at = Some(Instant::now() + ACK_DEBOUNCE);
            }
        }
        self.events.push(Event::Message(frame));
        None
    }

    /// The unsolicited acknowledgement is due: op 11 with the last `s` handed over, if it is new.
    async fn acknowledge(&mut self, conn: &mut Connection) -> Option<SessionEnd> {
        conn.ack_at = None;
        let session = self.session.as_mut().filter(|_| conn.session_live)?;
        if session.last <= session.acked {
            return None;
        }
        let mut ack = Frame::new(OpCode::HeartbeatAck, json!({}));
        ack.s = Some(session.last);
        session.acked = session.last;
        conn.write_frame(&ack).await.err()
    }

    /// Forgets the resumable session (it cannot be resumed any more); the next session that starts
    /// reports it as invalidated.
    fn forget_session(&mut self, reason: InvalidationReason) {
        if let Some(lost) = self.session.take() {
            tracing::debug!(session = %lost.id, last = lost.last, ?reason, "session lost");
            self.invalidated = Some(SessionInvalidated {
                session_id: lost.id,
                last_seq: lost.last,
                reason,
            });
        }
    }

    /// Applies a Hello's timings to the connection and the backoff.
    fn configure(&mut self, conn: &mut Connection, hello: &Hello) {
        let now = Instant::now().into_std();
        conn.resume_offered = self.config.resume_sessions && hello.c_resume.is_some();
        let ms = |value: Option<u64>| value.filter(|&v| v > 0).map(Duration::from_millis);
        self.backoff
            .set_base(ms(hello.c_reconnect_interval).unwrap_or(self.config.reconnect_interval));
        conn.auth_timeout =
            ms(hello.c_authentication_timeout).unwrap_or(self.config.authentication_timeout);
        let probe = match ms(hello.c_heartbeat_interval) {
            Some(interval) => Some(Probe::ServerHeartbeat { interval }),
            None => self
                .config
                .ping_interval
                .map(|interval| Probe::ClientPing { interval }),
        };
        conn.liveness = probe.map(|probe| {
            let interval = match probe {
                Probe::ServerHeartbeat { interval } | Probe::ClientPing { interval } => interval,
            };
            Liveness::new(probe, self.config.slack(interval), now)
        });
    }

    async fn on_hello(&mut self, conn: &mut Connection, hello: Hello) -> Option<SessionEnd> {
        self.configure(conn, &hello);
        if hello.has_rule(rules::ENFORCE_EQUAL_VERSIONS) {
            if let Some(version) = &self.config.client_version {
                let announce = Frame::dispatch(CLIENT_VERSION_EVENT, json!({ "v": version }));
                if let Err(end) = conn.write_frame(&announce).await {
                    return Some(end);
                }
            }
        }
        tracing::debug!(?hello, automatic = conn.automatic, "connected");
        self.events.push(Event::Connected(Connected {
            initial: !self.connected_before,
            automatic_reconnection: conn.automatic,
            hello,
        }));
        self.connected_before = true;
        for waiter in self.connect_waiters.drain(..) {
            let _ = waiter.send(Ok(()));
        }
        self.advance_auth(conn).await
    }

    /// Takes the connection (past its Hello) one step towards `Ready` with the current credentials:
    ///
    /// - an op 2 is in flight: wait for its answer (one at a time, so that each is answered in order);
    /// - no credentials: `Ready`, unless the client has had credentials (they were refused): then it waits
    ///   in `Authenticating` for `authenticate()`, the queue held;
    /// - the connection is authenticated with these credentials and nobody asked again: `Ready`;
    /// - it is authenticated with other credentials: replace the connection;
    /// - otherwise: send op 2.
    async fn advance_auth(&mut self, conn: &mut Connection) -> Option<SessionEnd> {
        if conn.in_flight.is_some() {
            return None;
        }
        let Some(credentials) = self.credentials.clone() else {
            if self.auth_required {
                conn.phase = Lifecycle::Authenticating;
                conn.auth_deadline = None;
                self.set(Lifecycle::Authenticating);
            } else {
                self.ready(conn);
            }
            return None;
        };
        match &conn.authenticated_as {
            Some(accepted) if *accepted == credentials && self.auth_waiters.is_empty() => {
                self.ready(conn);
                None
            }
            Some(accepted) if *accepted != credentials => Some(SessionEnd::SwitchCredentials),
            _ => self.send_credentials(conn, credentials).await,
        }
    }

    /// Sends op 2 with `credentials` and waits for op 22 (queued sends stay queued); the calls waiting for
    /// them now wait for this connection's answer.
    async fn send_credentials(
        &mut self,
        conn: &mut Connection,
        credentials: Credentials,
    ) -> Option<SessionEnd> {
        let (attempt, frame) = self.credentials_frame(conn, &credentials);
        // A failed write never reached the server: its callers wait for the next connection.
        if let Err(end) = conn.write_frame(&frame).await {
            return Some(end);
        }
        conn.in_flight = Some(PendingAuth {
            credentials,
            attempt,
            waiters: std::mem::take(&mut self.auth_waiters),
        });
        conn.auth_deadline = Some(Instant::now() + conn.auth_timeout);
        conn.phase = Lifecycle::Authenticating;
        self.set(Lifecycle::Authenticating);
        None
    }

    /// The frame that authenticates with `credentials` on this connection: op 6 for the client's session
    /// when the server offers resumption, op 2 `resumable: true` without one, Mesa 1.5's op 2 otherwise
    /// (also for credentials that are not a JSON object, which cannot carry the extra fields, and on a
    /// connection that already holds a session).
    fn credentials_frame(
        &mut self,
        conn: &Connection,
        credentials: &Credentials,
    ) -> (Attempt, Frame) {
        let plain = || {
            (
                Attempt::Plain,
                Frame::new(OpCode::Authenticate, credentials.0.clone()),
            )
        };
        let mut d = match &credentials.0 {
            Value::Object(map) if conn.resume_offered && !conn.session_live => map.clone(),
            _ => return plain(),
        };
        if self
            .session
            .as_ref()
            .is_some_and(|session| session.credentials != *credentials)
        {
            self.forget_session(InvalidationReason::CredentialsChanged);
        }
        match &self.session {
            Some(session) => {
                d.insert("session_id".into(), json!(session.id));
                d.insert("seq".into(), json!(session.last));
                (
                    Attempt::Resume,
                    Frame::new(OpCode::Resume, Value::Object(d)),
                )
            }
            None => {
                d.insert("resumable".into(), json!(true));
                (
                    Attempt::Fresh,
                    Frame::new(OpCode::Authenticate, Value::Object(d)),
                )
            }
        }
    }

    /// The connection is healthy: flush the queue from now on, and start the backoff over.
    fn ready(&mut self, conn: &mut Connection) {
        conn.phase = Lifecycle::Ready;
        conn.auth_deadline = None;
        self.backoff.reset();
        self.set(Lifecycle::Ready);
    }

    /// Op 22: the answer to the op 2 in flight goes to its callers; then on with the current credentials.
    async fn on_authenticated(&mut self, conn: &mut Connection, user: Value) -> Option<SessionEnd> {
        let Some(answered) = conn.in_flight.take() else {
            tracing::debug!("op 22 without an op 2 in flight: reported, nothing else");
            self.events.push(Event::Authenticated(user));
            return None;
        };
        conn.auth_deadline = None;
        let (user, session_event) = match answered.attempt {
            Attempt::Plain if conn.session_live => (session_user(user), None),
            Attempt::Plain => (user, None),
            Attempt::Fresh | Attempt::Resume => {
                self.on_session_answer(conn, answered.attempt, &answered.credentials, user)
            }
        };
        for waiter in answered.waiters {
            let _ = waiter.send(Ok(user.clone()));
        }
        conn.authenticated_as = Some(answered.credentials);
        self.events.push(Event::Authenticated(user));
        if let Some(event) = session_event {
            self.events.push(event);
        }
        self.advance_auth(conn).await
    }

    /// Op 22 answering op 6 or a resumable op 2 (`d = {user, session_id, resumed, seq}`): adopts the
    /// session and returns the user object and the session event.
    fn on_session_answer(
        &mut self,
        conn: &mut Connection,
        attempt: Attempt,
        credentials: &Credentials,
        d: Value,
    ) -> (Value, Option<Event>) {
        let session_id = d.get("session_id").and_then(Value::as_str);
        let seq = d.get("seq").and_then(Value::as_u64);
        let resumed = d.get("resumed").and_then(Value::as_bool) == Some(true);
        let (Some(session_id), Some(seq)) = (session_id, seq) else {
            // The server opened no session after all: Mesa 1.5 semantics on this connection.
            tracing::warn!("op 22 without a session id: no resumable session on this connection");
            if attempt == Attempt::Resume {
                self.forget_session(not_resumed());
            }
            return (d, None);
        };
        let session_id = session_id.to_string();
        conn.session_live = true;
        conn.ack_at = None;
        let event = match self.session.as_mut() {
            Some(session) if attempt == Attempt::Resume && resumed => {
                if seq != session.last {
                    tracing::warn!(
                        seq,
                        last = session.last,
                        "resumed at another position than asked"
                    );
                }
                session.id.clone_from(&session_id);
                // The resume itself acknowledged `last` (the server's cursor moves to it).
                session.acked = session.last;
                Event::SessionResumed(SessionResumed {
                    session_id,
                    resumed_after: session.last,
                })
            }
            _ => {
                if attempt == Attempt::Resume {
                    self.forget_session(not_resumed());
                }
                self.session = Some(ResumeState {
                    id: session_id.clone(),
                    last: seq,
                    acked: seq,
                    credentials: credentials.clone(),
                });
                Event::SessionStarted(SessionStarted {
                    session_id,
                    seq,
                    invalidated: self.invalidated.take(),
                })
            }
        };
        (session_user(d), Some(event))
    }

    /// Op 9: the op 2 in flight was refused and the connection stays open. Refused credentials are
    /// forgotten; the queue stays held until a later op 22.
    ///
    /// In a resumable session op 9 may refuse the session instead (a `code` other than
    /// `authentication_failed`): in answer to op 6 the client starts a fresh session (op 2) on the same
    /// connection; mid-session (the server closes with 4013 next) the session is forgotten.
    async fn on_refused(
        &mut self,
        conn: &mut Connection,
        code: Option<String>,
        reason: String,
    ) -> Option<SessionEnd> {
        let session_refused = code.as_deref().is_some_and(|c| c != AUTHENTICATION_FAILED);
        let refusal = || InvalidationReason::Refused {
            code: code
                .clone()
                .unwrap_or_else(|| AUTHENTICATION_FAILED.to_string()),
            reason: reason.clone(),
        };
        let Some(refused) = conn.in_flight.take() else {
            if conn.session_live && session_refused {
                conn.session_live = false;
                conn.ack_at = None;
                self.forget_session(refusal());
                return None;
            }
            tracing::debug!("op 9 without an op 2 in flight: reported, nothing else");
            self.events.push(Event::AuthenticationRefused { reason });
            return None;
        };
        conn.auth_deadline = None;
        if refused.attempt == Attempt::Resume {
            // Any op 9 ends the session, whatever it refused.
            self.forget_session(refusal());
            if session_refused {
                // The credentials were not refused: they go again, in a fresh op 2, and their callers
                // wait for that answer (ahead of later calls).
                if self.credentials.as_ref() == Some(&refused.credentials) {
                    self.auth_waiters.splice(0..0, refused.waiters);
                } else {
                    answer(Some(refused), &AuthenticateError::Superseded);
                }
                return self.advance_auth(conn).await;
            }
        }
        if self.credentials.as_ref() == Some(&refused.credentials) {
            self.credentials = None;
        }
        let error = AuthenticateError::Refused {
            reason: reason.clone(),
            close_code: None,
        };
        for waiter in refused.waiters {
            let _ = waiter.send(Err(error.clone()));
        }
        self.events.push(Event::AuthenticationRefused { reason });
        self.advance_auth(conn).await
    }

    async fn on_deadline(&mut self, conn: &mut Connection) -> Option<SessionEnd> {
        let now = Instant::now();
        if conn.phase == Lifecycle::AwaitingHello && now >= conn.hello_deadline {
            return Some(SessionEnd::HelloTimeout);
        }
        if conn.auth_deadline.is_some_and(|at| now >= at) {
            return Some(SessionEnd::AuthTimeout);
        }
        if conn.ack_at.is_some_and(|at| now >= at) {
            return self.acknowledge(conn).await;
        }
        match conn.liveness.as_mut()?.poll(now.into_std())? {
            LivenessAction::Dead { silent_for } => Some(SessionEnd::Silent { silent_for }),
            LivenessAction::Ping => conn.write(Message::Ping(Bytes::new())).await.err(),
        }
    }

    /// Closes a connection the client itself ends for good (1000): the pending authentication fails and,
    /// after a Hello, the application sees a final `Disconnected`.
    async fn close_for_good(
        &mut self,
        conn: &mut Connection,
        in_flight: Option<PendingAuth>,
        hello_received: bool,
        reason: &str,
    ) {
        conn.close(CloseCode::Normal.code(), reason).await;
        answer(in_flight, &AuthenticateError::Closed);
        if hello_received {
            self.events.push(Event::Disconnected(Disconnected {
                code: CloseCode::Normal.code(),
                reason: reason.into(),
                will_reconnect: false,
                reconnect_delay: None,
            }));
        }
    }

    /// Ends a connection: closing handshake where it makes sense, waiters, event, and what comes next.
    async fn finish(&mut self, mut conn: Connection, end: SessionEnd) -> Next {
        let hello_received = conn.phase != Lifecycle::AwaitingHello;
        let mut in_flight = conn.in_flight.take();
        // `failure` classifies an end before Hello; `may_reconnect` is false only for a server close code
        // that forbids it (ends the client detects itself are always worth another attempt).
        let (code, reason, failure, may_reconnect) = match end {
            SessionEnd::HandlesDropped => {
                self.close_for_good(&mut conn, in_flight, hello_received, "client dropped")
                    .await;
                return Next::Exit;
            }
            SessionEnd::ClientDisconnect(reply) => {
                let reason = "disconnected by the client";
                self.close_for_good(&mut conn, in_flight, hello_received, reason)
                    .await;
                return self.stop(reply);
            }
            SessionEnd::SwitchCredentials => {
                // Asked for by authenticate(): reconnect at once, whatever the reconnection settings.
                self.forget_session(InvalidationReason::CredentialsChanged);
                let reason = "switching to new credentials";
                conn.close(CloseCode::Normal.code(), reason).await;
                tracing::debug!("reconnecting to authenticate with new credentials");
                self.events.push(Event::Disconnected(Disconnected {
                    code: CloseCode::Normal.code(),
                    reason: reason.into(),
                    will_reconnect: true,
                    reconnect_delay: Some(Duration::ZERO),
                }));
                return Next::Connect { automatic: true };
            }
            SessionEnd::ServerClosed { code, reason } => {
                if !session_survives(code) {
                    self.forget_session(InvalidationReason::ServerClosed {
                        code,
                        reason: reason.clone(),
                    });
                }
                (code, reason, None, can_reconnect_code(code))
            }
            SessionEnd::SequenceGap { expected, got } => {
                // Not 1000: that would end the session; the next connection resumes from `expected - 1`.
                conn.close(crate::SEQUENCE_GAP_CLOSE, "sequence gap").await;
                let reason = format!("sequence gap: expected s = {expected}, got {got}");
                (crate::SEQUENCE_GAP_CLOSE, reason, None, true)
            }
            SessionEnd::Dropped { reason } => (1006, reason, None, true),
            // The peer is presumed gone: no closing handshake to wait for.
            SessionEnd::Silent { silent_for } => {
                let reason = format!("no frame from the server for {} ms", silent_for.as_millis());
                (1006, reason, None, true)
            }
            SessionEnd::HelloTimeout => {
                let after = self.config.hello_timeout;
                let kind = ConnectErrorKind::HelloTimeout { after };
                (1006, format!("no Hello within {after:?}"), Some(kind), true)
            }
            SessionEnd::Protocol(detail) => {
                conn.close(1002, "protocol error").await;
                let kind = ConnectErrorKind::Protocol {
                    detail: detail.clone(),
                };
                (1002, detail, Some(kind), true)
            }
            SessionEnd::AuthTimeout => {
                let code = CloseCode::AuthenticationTimeout;
                // Answer the callers first: the closing handshake may take a while.
                answer(
                    in_flight.take(),
                    &AuthenticateError::TimedOut {
                        after: conn.auth_timeout,
                    },
                );
                conn.close(code.code(), code.reason()).await;
                // The current credentials are sent again on the next connection.
                (code.code(), code.reason().to_string(), None, true)
            }
        };
        drop(conn.socket);
        let mut reconnect = self.config.reconnect && may_reconnect;
        // The credentials in flight were refused with a close (1008). Forget them if they are the current
        // ones (and stop: the server said not to retry them); if newer ones wait, they get their own try.
        let refused = code == CloseCode::AuthenticationFailed.code() && in_flight.is_some();
        if let Some(pending) = in_flight.as_ref().filter(|_| refused) {
            if self.credentials.as_ref() == Some(&pending.credentials) {
                self.credentials = None;
            } else if self.credentials.is_some() {
                reconnect = self.config.reconnect;
            }
        }
        // Calls whose credentials went out on this connection get an answer now; the others wait for the
        // next connection, unless there will be none.
        let error = if refused {
            AuthenticateError::Refused {
                reason: reason.clone(),
                close_code: Some(code),
            }
        } else {
            AuthenticateError::ConnectionLost {
                code,
                reason: reason.clone(),
            }
        };
        answer(in_flight, &error);
        if !reconnect {
            self.fail_auth_waiters(&AuthenticateError::ConnectionLost {
                code,
                reason: reason.clone(),
            });
        }
        // After op 7, at least its `retry_after_ms`, plus the usual jittered delay.
        let retry_after = conn.retry_after.unwrap_or_default();
        let delay = reconnect.then(|| retry_after + self.backoff.next_delay());
        tracing::debug!(code, %reason, ?delay, "connection ended");
        if hello_received {
            self.events.push(Event::Disconnected(Disconnected {
                code,
                reason,
                will_reconnect: reconnect,
                reconnect_delay: delay,
            }));
        } else {
            let kind = failure.unwrap_or(ConnectErrorKind::ClosedBeforeHello { code, reason });
            let error = ConnectError::new(kind);
            self.fail_connect_waiters(&error);
            self.events.push(Event::ConnectionFailed(ConnectionFailed {
                error,
                will_reconnect: reconnect,
                reconnect_delay: delay,
            }));
        }
        match delay {
            Some(delay) => Next::Wait(delay),
            None => Next::Idle(Lifecycle::Closed),
        }
    }
}

/// Whether the server keeps a resumable session after closing its connection with `code`: the codes the
/// protocol lists, and a connection that dropped (no close frame, or one without a code).
fn session_survives(code: u16) -> bool {
    matches!(
        code,
        1001 | 1005 | 1006 | 1011 | 1012 | 1013 | 4008 | 4009 | 4010
    )
}

/// The user object of op 22 in a resumable session (`d.user`; `{}` when absent).
fn session_user(d: Value) -> Value {
    match d {
        Value::Object(mut map) if map.contains_key("session_id") => {
            map.remove("user").unwrap_or_else(|| json!({}))
        }
        other => other,
    }
}

/// A resume the server answered with a fresh session (or none).
fn not_resumed() -> InvalidationReason {
    InvalidationReason::Refused {
        code: "not_resumed".into(),
        reason: "the server answered the resume with a new session".into(),
    }
}

/// Answers the calls waiting for the op 2 that was in flight (if any) with `error`.
fn answer(in_flight: Option<PendingAuth>, error: &AuthenticateError) {
    for waiter in in_flight.into_iter().flat_map(|pending| pending.waiters) {
        let _ = waiter.send(Err(error.clone()));
    }
}
