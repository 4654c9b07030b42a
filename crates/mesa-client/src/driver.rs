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
//! The outbox (queued sends) is read only in `Ready`, which is what makes queued frames wait for
//! re-authentication, and only when the pace (`TokenBucket`) has a token. Timing decisions are delegated
//! to the pure [`Backoff`] and [`Liveness`].

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
use crate::event::{Connected, ConnectionFailed, Disconnected, Event, EventQueue, Events};
use crate::liveness::{Liveness, LivenessAction, Probe};
use crate::transport::{self, Socket};

/// How long the closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Commands waiting for the task (connect, authenticate, disconnect); senders wait when it is full.
const COMMAND_CAPACITY: usize = 32;

type AuthReply = oneshot::Sender<Result<Value, AuthenticateError>>;
type ConnectReply = oneshot::Sender<Result<(), ConnectError>>;

/// Starts the task on `runtime` and returns the handle and the event stream.
pub(crate) fn spawn(runtime: &Handle, config: Config, auto_connect: bool) -> (Client, Events) {
    let (commands_tx, commands) = mpsc::channel(COMMAND_CAPACITY);
    let (outbox_tx, outbox) = mpsc::channel(config.queue_capacity);
    let initial = if auto_connect {
        Lifecycle::Connecting
    } else {
        Lifecycle::Disconnected
    };
    let (lifecycle, lifecycle_rx) = watch::channel(initial);
    let (events, events_rx) = EventQueue::new(config.event_capacity);
    let client = Client::new(Shared {
        commands: commands_tx,
        outbox: outbox_tx,
        lifecycle: lifecycle_rx,
        queue_capacity: config.queue_capacity,
    });
    let driver = Driver {
        backoff: config.backoff.clone(),
        credentials: config.credentials.clone(),
        config: Arc::new(config),
        commands,
        outbox,
        events,
        lifecycle,
        auth_waiters: Vec::new(),
        connect_waiters: Vec::new(),
        connected_before: false,
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
    /// Every handle is gone.
    Exit,
}

/// Why a connection ended.
enum End {
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
    /// No op 22 within the authentication timeout.
    AuthTimeout,
    /// [`Client::disconnect`].
    ClientDisconnect(oneshot::Sender<()>),
    /// Every handle dropped.
    HandlesDropped,
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
    /// Credentials were sent on this connection and not answered yet.
    auth_sent: bool,
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
        [hello, self.auth_deadline, liveness, pace]
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

    async fn write(&mut self, message: Message) -> Result<(), End> {
        match timeout(self.write_timeout, self.socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(End::Dropped {
                reason: format!("write failed: {error}"),
            }),
            Err(_) => Err(End::Dropped {
                reason: format!("write took longer than {:?}", self.write_timeout),
            }),
        }
    }

    /// Writes a frame of the client's own (op 2, op 11, the version): it is not held back, but it counts
    /// against the pace like everything the server receives.
    async fn write_frame(&mut self, frame: &Frame) -> Result<(), End> {
        if let Some(bucket) = self.pace.as_mut() {
            let _ = bucket.try_take(Instant::now().into_std());
        }
        self.write(Message::Text(frame.encode().into())).await
    }

    /// Writes a queued frame with the token `may_send` took.
    async fn write_queued(&mut self, text: Utf8Bytes) -> Result<(), End> {
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
    outbox: mpsc::Receiver<Utf8Bytes>,
    events: EventQueue,
    lifecycle: watch::Sender<Lifecycle>,
    credentials: Option<Credentials>,
    auth_waiters: Vec<AuthReply>,
    connect_waiters: Vec<ConnectReply>,
    connected_before: bool,
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
        self.set(Lifecycle::Closed);
        self.fail_auth_waiters(&AuthenticateError::Closed);
        self.fail_connect_waiters(&ConnectError::new(ConnectErrorKind::Closed));
        let _ = reply.send(());
        Next::Idle(Lifecycle::Closed)
    }

    /// Handles a command that needs no connection; returns what to do next when it changes the phase.
    fn on_idle_command(&mut self, command: Option<Command>, idle: bool) -> Option<Next> {
        match command {
            None => Some(Next::Exit),
            Some(Command::Connect(reply)) => {
                self.connect_waiters.push(reply);
                idle.then_some(Next::Connect { automatic: false })
            }
            Some(Command::Authenticate { credentials, reply }) if !idle => {
                self.credentials = Some(credentials);
                self.auth_waiters.push(reply);
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
            tokio::select! {
                biased;
                command = self.commands.recv() => {
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
            tokio::select! {
                biased;
                command = self.commands.recv() => {
                    if let Some(next) = self.on_idle_command(command, false) {
                        return next;
                    }
                }
                () = self.events.flush_one(), if self.events.has_pending() => {}
                opened = &mut attempt => match opened {
                    Ok(socket) => break socket,
                    Err(error) => return self.attempt_failed(error),
                },
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
            auth_sent: false,
            write_timeout: self.config.write_timeout,
            pace: self
                .config
                .send_rate
                .map(|limit| TokenBucket::new(limit, Instant::now().into_std())),
            token: false,
            pace_until: None,
        };
        let end = loop {
            let stalled = self.events.is_stalled();
            // Before the deadline: when no token is left, `may_send` sets the time of the next one.
            let ready = conn.phase == Lifecycle::Ready && conn.may_send(Instant::now());
            let deadline = conn.next_deadline();
            let step = tokio::select! {
                biased;
                command = self.commands.recv() => self.on_command(&mut conn, command).await,
                () = self.events.flush_one(), if self.events.has_pending() => {
                    if stalled && !self.events.is_stalled() {
                        // The socket was not read meanwhile: silence was ours, not the server's.
                        conn.heard(Instant::now());
                    }
                    None
                }
                message = conn.socket.next(), if !stalled => self.on_socket(&mut conn, message).await,
                text = self.outbox.recv(), if ready => match text {
                    Some(text) => conn.write_queued(text).await.err(),
                    None => Some(End::HandlesDropped),
                },
                () = sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() && !stalled => self.on_deadline(&mut conn).await,
            };
            if let Some(end) = step {
                break end;
            }
        };
        self.finish(conn, end).await
    }

    async fn on_command(&mut self, conn: &mut Connection, command: Option<Command>) -> Option<End> {
        match command {
            None => Some(End::HandlesDropped),
            Some(Command::Connect(reply)) => {
                if conn.phase == Lifecycle::AwaitingHello {
                    self.connect_waiters.push(reply);
                } else {
                    let _ = reply.send(Ok(()));
                }
                None
            }
            Some(Command::Authenticate { credentials, reply }) => {
                self.credentials = Some(credentials);
                self.auth_waiters.push(reply);
                if conn.phase == Lifecycle::AwaitingHello {
                    None // sent when the Hello arrives
                } else {
                    self.send_credentials(conn).await
                }
            }
            Some(Command::Disconnect(reply)) => Some(End::ClientDisconnect(reply)),
        }
    }

    async fn on_socket(
        &mut self,
        conn: &mut Connection,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<End> {
        let message = match message {
            None => {
                return Some(End::Dropped {
                    reason: "connection ended without a close frame".into(),
                })
            }
            Some(Err(error)) => {
                return Some(End::Dropped {
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
                Some(End::ServerClosed { code, reason })
            }
            Message::Binary(_) => {
                tracing::debug!("ignored a binary message: the protocol is JSON text");
                None
            }
            // tungstenite answers pings itself; a pong only proves the server is alive.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }

    async fn on_text(&mut self, conn: &mut Connection, text: &str) -> Option<End> {
        let frame = match Frame::decode(text) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%error, "ignored a text message that is not a frame");
                return None;
            }
        };
        if conn.phase == Lifecycle::AwaitingHello {
            if frame.opcode() != Some(OpCode::Hello) {
                return Some(End::Protocol(format!(
                    "expected Hello (op 10) first, got op {}",
                    frame.op
                )));
            }
            return match serde_json::from_value::<Hello>(frame.d) {
                Ok(hello) => self.on_hello(conn, hello).await,
                Err(error) => Some(End::Protocol(format!("invalid Hello: {error}"))),
            };
        }
        match frame.opcode() {
            Some(OpCode::Heartbeat) => {
                let ack = Frame::new(OpCode::HeartbeatAck, json!({}));
                conn.write_frame(&ack).await.err()
            }
            Some(OpCode::Dispatch) => {
                self.events.push(Event::Message(frame));
                None
            }
            Some(OpCode::AuthenticationAck) => {
                self.on_authenticated(conn, frame.d);
                None
            }
            Some(OpCode::InvalidSession) => {
                let reason = frame
                    .d
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("authentication refused")
                    .to_string();
                self.on_refused(conn, reason);
                None
            }
            Some(OpCode::Hello) => {
                // A second Hello: adopt its timings.
                if let Ok(hello) = serde_json::from_value::<Hello>(frame.d) {
                    self.configure(conn, &hello);
                }
                None
            }
            Some(OpCode::Reconnect) => {
                tracing::debug!("server going away (op 7); waiting for its close");
                None
            }
            _ => {
                tracing::debug!(op = frame.op, "ignored frame");
                None
            }
        }
    }

    /// Applies a Hello's timings to the connection and the backoff.
    fn configure(&mut self, conn: &mut Connection, hello: &Hello) {
        let now = Instant::now().into_std();
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

    async fn on_hello(&mut self, conn: &mut Connection, hello: Hello) -> Option<End> {
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
        if self.credentials.is_some() {
            self.send_credentials(conn).await
        } else {
            self.ready(conn);
            None
        }
    }

    /// Sends op 2 with the remembered credentials and waits for op 22 (queued sends stay queued).
    async fn send_credentials(&mut self, conn: &mut Connection) -> Option<End> {
        let frame = match &self.credentials {
            Some(credentials) => Frame::new(OpCode::Authenticate, credentials.0.clone()),
            None => return None,
        };
        if let Err(end) = conn.write_frame(&frame).await {
            return Some(end);
        }
        conn.auth_sent = true;
        conn.auth_deadline = Some(Instant::now() + conn.auth_timeout);
        conn.phase = Lifecycle::Authenticating;
        self.set(Lifecycle::Authenticating);
        None
    }

    /// The connection is healthy: flush the queue from now on, and start the backoff over.
    fn ready(&mut self, conn: &mut Connection) {
        conn.phase = Lifecycle::Ready;
        conn.auth_deadline = None;
        self.backoff.reset();
        self.set(Lifecycle::Ready);
    }

    fn on_authenticated(&mut self, conn: &mut Connection, user: Value) {
        conn.auth_sent = false;
        if conn.phase == Lifecycle::Authenticating {
            self.ready(conn);
        }
        for waiter in self.auth_waiters.drain(..) {
            let _ = waiter.send(Ok(user.clone()));
        }
        self.events.push(Event::Authenticated(user));
    }

    fn on_refused(&mut self, conn: &mut Connection, reason: String) {
        conn.auth_sent = false;
        self.credentials = None;
        self.fail_auth_waiters(&AuthenticateError::Refused {
            reason: reason.clone(),
            close_code: None,
        });
        self.events.push(Event::AuthenticationRefused { reason });
        if conn.phase == Lifecycle::Authenticating {
            self.ready(conn);
        }
    }

    async fn on_deadline(&mut self, conn: &mut Connection) -> Option<End> {
        let now = Instant::now();
        if conn.phase == Lifecycle::AwaitingHello && now >= conn.hello_deadline {
            return Some(End::HelloTimeout);
        }
        if conn.auth_deadline.is_some_and(|at| now >= at) {
            return Some(End::AuthTimeout);
        }
        match conn.liveness.as_mut()?.poll(now.into_std())? {
            LivenessAction::Dead { silent_for } => Some(End::Silent { silent_for }),
            LivenessAction::Ping => conn.write(Message::Ping(Bytes::new())).await.err(),
        }
    }

    /// Ends a connection: closing handshake where it makes sense, waiters, event, and what comes next.
    async fn finish(&mut self, mut conn: Connection, end: End) -> Next {
        let hello_received = conn.phase != Lifecycle::AwaitingHello;
        // `failure` classifies an end before Hello; `may_reconnect` is false only for a server close code
        // that forbids it (ends the client detects itself are always worth another attempt).
        let (code, reason, failure, may_reconnect) = match end {
            End::HandlesDropped => {
                conn.close(CloseCode::Normal.code(), "client dropped").await;
                return Next::Exit;
            }
            End::ClientDisconnect(reply) => {
                let reason = "disconnected by the client";
                conn.close(CloseCode::Normal.code(), reason).await;
                if hello_received {
                    self.events.push(Event::Disconnected(Disconnected {
                        code: CloseCode::Normal.code(),
                        reason: reason.into(),
                        will_reconnect: false,
                        reconnect_delay: None,
                    }));
                }
                return self.stop(reply);
            }
            End::ServerClosed { code, reason } => (code, reason, None, can_reconnect_code(code)),
            End::Dropped { reason } => (1006, reason, None, true),
            // The peer is presumed gone: no closing handshake to wait for.
            End::Silent { silent_for } => {
                let reason = format!("no frame from the server for {} ms", silent_for.as_millis());
                (1006, reason, None, true)
            }
            End::HelloTimeout => {
                let after = self.config.hello_timeout;
                let kind = ConnectErrorKind::HelloTimeout { after };
                (1006, format!("no Hello within {after:?}"), Some(kind), true)
            }
            End::Protocol(detail) => {
                conn.close(1002, "protocol error").await;
                let kind = ConnectErrorKind::Protocol {
                    detail: detail.clone(),
                };
                (1002, detail, Some(kind), true)
            }
            End::AuthTimeout => {
                let code = CloseCode::AuthenticationTimeout;
                // Answer the callers first: the closing handshake may take a while.
                self.fail_auth_waiters(&AuthenticateError::TimedOut {
                    after: conn.auth_timeout,
                });
                conn.close(code.code(), code.reason()).await;
                (code.code(), code.reason().to_string(), None, true)
            }
        };
        drop(conn.socket);
        let reconnect = self.config.reconnect && may_reconnect;
        let refused = code == CloseCode::AuthenticationFailed.code() && conn.auth_sent;
        if refused {
            self.credentials = None;
        }
        // Waiters whose credentials went out on this connection get an answer now; the others wait for the
        // next connection, unless there will be none.
        if conn.auth_sent || !reconnect {
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
            self.fail_auth_waiters(&error);
        }
        let delay = reconnect.then(|| self.backoff.next_delay());
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
