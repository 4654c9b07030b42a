//! The task that owns one WebSocket: the glue between the socket, the I/O-free [`ConnectionState`] and the
//! session's outbound queue.
//!
//! One task per connection, one `select!` over, in this order: shutdown, the protocol deadlines
//! (heartbeats, the authentication deadline), the socket, and the outbound queue. Deadlines come first so
//! that no traffic can delay them; the socket comes before the queue so that heavy outbound traffic cannot
//! starve a client's input; the queue is drained with a budget per turn, and between the messages of a read
//! batch, so that a burst of replies cannot overflow it.
//!
//! Nothing accepted is dropped on a graceful path: frames queued before a close (application disconnect,
//! slow consumer, shutdown) are written before the close frame, and frames a client sends after op 7 are
//! still handed to the application.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use mesa_engine::{Release, ResumeRefusal, SessionId, Target};
use mesa_protocol::{
    with_sequence, CloseCode, ConnectionState, Frame, Inbound, OpCode, TimerAction,
};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::error::ConnectionError;
use crate::events::{guarded, BoxFuture, Disconnection, Panicked};
use crate::outbox::{CloseRequest, KEPT_SLOTS};
use crate::registry::IdentityError;
use crate::resume::{Offered, SessionStream};
use crate::server::Inner;
use crate::session::Session;
use crate::socket::{client_frame_len, BufferedSocket};

/// Messages handled back to back before the replies they caused are flushed to the socket.
const READ_BATCH: usize = 64;

/// What one turn of the loop takes from the outbound queue before it looks at the socket again.
const WRITE_BUDGET_FRAMES: usize = 256;
const WRITE_BUDGET_BYTES: usize = 64 * 1024;
/// The most turns in a row the loop writes queued frames without polling the socket.
const OUTBOX_TURNS: u8 = 16;

/// A message or frame larger than this grows tungstenite's buffers for good; after one, the buffers are
/// rebuilt at their configured size as soon as that is safe (see `crate::socket`).
const LARGE_MESSAGE: usize = 4096;

/// How long the closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a resumable session waits before it reads its stream again after the engine failed to answer.
const STREAM_RETRY: Duration = Duration::from_millis(500);

/// Closes after which a resumable session can still be resumed: the connection failed or the server asked
/// the client to come back (restart, overload, slow consumer, missed heartbeats, rate limit). Every other
/// server close, and a client's 1000, ends the session.
const RESUMABLE_CLOSES: [u16; 8] = [1001, 1006, 1011, 1012, 1013, 4008, 4009, 4010];

/// Why the serve loop ended.
enum Exit {
    /// The server closes with this code and reason.
    Close(u16, String),
    /// Graceful shutdown: op 7 was sent; close with 1012.
    Shutdown,
    /// The client sent a close frame.
    PeerClosed(u16, String),
    /// The socket failed or reached EOF without a close frame.
    Dropped,
}

impl Exit {
    fn close(code: CloseCode) -> Exit {
        Exit::Close(code.code(), code.reason().to_string())
    }

    fn panicked(_: Panicked) -> Exit {
        Exit::close(CloseCode::InternalError)
    }
}

/// What one inbound message calls for, decided without awaiting.
enum Step {
    Continue,
    Exit(Exit),
    Fail(Box<ConnectionError>),
    Reply(Utf8Bytes),
    /// Op 2's `d`, its `shouldSync` and `resumable`.
    Authenticate(serde_json::Value, bool, bool),
    /// Op 6 (boxed: rare, and every turn's future holds a `Step`).
    Resume(Box<ResumeRequest>),
    Dispatch(BoxFuture<()>),
}

/// Op 6: the credentials, the session id as sent, the last position the client processed.
struct ResumeRequest {
    data: serde_json::Value,
    session: String,
    seq: u64,
}

/// How a client authenticates.
enum Login {
    /// Op 2.
    Fresh { should_sync: bool, resumable: bool },
    /// Op 6.
    Resume { session: String, seq: u64 },
}

struct ConnectionTask<S> {
    ws: WebSocketStream<BufferedSocket<S>>,
    session: Session,
    state: ConnectionState,
    inner: Arc<Inner>,
    /// Frames fed to the socket but not yet flushed, counted in `frames_sent` once flushed. (The fields
    /// are sized with care: this struct is boxed once per connection, and 640 B is an allocator class.)
    unflushed: u32,
    /// After op 7: when to stop waiting for the client to leave by itself. (Before op 7 in a shutdown,
    /// when to send it is computed from the shutdown's start: see [`ConnectionTask::reconnect_at`].)
    draining_until: Option<Instant>,
    /// A write failed or timed out: the socket cannot take more, so closing does not try to write the queue.
    write_failed: bool,
    /// Bytes of the client frames tungstenite returned since the socket was (re)wrapped.
    consumed: u64,
    /// A large message went through the buffers since they were last rebuilt.
    buffers_grown: bool,
    /// Empty between drains; its storage and the outbox's swap on each drain, so that a busy connection
    /// allocates nothing per batch.
    spare_batch: VecDeque<Utf8Bytes>,
    /// The last drain left frames queued (more than one write budget).
    outbox_backlog: bool,
    /// Turns in a row that wrote the outbox without polling the socket.
    outbox_turns: u8,
}

/// Keeps the registry consistent whatever happens to the task: the session is inserted when this is created
/// and removed when it is dropped, even by a panic or by the runtime dropping the task.
struct Registration {
    inner: Arc<Inner>,
    session: Session,
    done: bool,
}

impl Registration {
    fn new(inner: &Arc<Inner>, session: &Session) -> Registration {
        inner.registry.insert(session.clone());
        inner.metrics.connection_opened();
        Registration {
            inner: inner.clone(),
            session: session.clone(),
            done: false,
        }
    }

    /// Removes the session (no send reaches it after this), releases its resumable session, and counts
    /// the close.
    fn finish(&mut self, server_code: Option<u16>, release: Release) {
        if !self.done {
            self.done = true;
            if let (Some(stream), Some(identity)) =
                (self.session.stream(), self.session.stored_identity())
            {
                self.inner.router.engine().release_session(
                    &identity.id,
                    stream.id,
                    self.session.connection_id(),
                    release,
                );
            }
            let undelivered = self.inner.registry.remove(&self.session);
            self.inner.metrics.frames_undelivered(undelivered);
            self.inner.metrics.connection_closed(server_code);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A panic or a dropped task: the client did not end the session.
        self.finish(None, Release::Keep);
    }
}

/// Whether a connection that ended so leaves its resumable session resumable.
fn release_for(disconnection: &Disconnection) -> Release {
    let ended = if disconnection.by_server {
        !RESUMABLE_CLOSES.contains(&disconnection.code)
    } else {
        disconnection.code == CloseCode::Normal.code()
    };
    if ended {
        Release::End
    } else {
        Release::Keep
    }
}

/// The connection task's future. Not an `async fn`: its arguments would stay in the future next to the
/// `ConnectionTask` they are moved into, and every idle connection would pay for both.
pub(crate) fn run<S>(
    ws: WebSocketStream<BufferedSocket<S>>,
    session: Session,
    inner: Arc<Inner>,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut task = Box::new(ConnectionTask {
        state: ConnectionState::new(&inner.rules, Instant::now().into_std()),
        ws,
        session,
        inner,
        unflushed: 0,
        draining_until: None,
        write_failed: false,
        consumed: 0,
        buffers_grown: false,
        spare_batch: VecDeque::new(),
        outbox_backlog: false,
        outbox_turns: 0,
    });
    async move { task.run().await }
}

/// What woke the connection task.
enum Turn {
    /// The protocol deadline or the end of the shutdown grace.
    Timer,
    /// Frames were queued.
    Outbox,
    /// The socket had a message (or ended), already classified: a message and a socket error are large,
    /// and no await may hold them.
    Socket(Step),
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

impl<S> ConnectionTask<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self) {
        let inner = self.inner.clone();
        // Registered before Hello is written, so that a client that has read its Hello already receives every
        // send. Frames queued meanwhile wait in the outbox, which is drained only after Hello.
        let mut registration = Registration::new(&inner, &self.session);
        if Box::pin(self.write_hello()).await.is_err() {
            return;
        }
        // Rare paths are boxed so that their state does not enlarge every idle connection's future.
        let exit = match Box::pin(inner.hooks.connection(&self.session)).await {
            Ok(()) => self.serve().await,
            Err(panicked) => {
                inner.metrics.handler_panicked();
                Exit::panicked(panicked)
            }
        };
        let (disconnection, server_code) = Box::pin(self.finish(exit)).await;
        registration.finish(server_code, release_for(&disconnection));
        if Box::pin(inner.hooks.disconnection(&self.session, disconnection))
            .await
            .is_err()
        {
            inner.metrics.handler_panicked();
        }
    }

    async fn serve(&mut self) -> Exit {
        let inner = self.inner.clone();
        loop {
            // `shutdown` wakes every session's outbox after cancelling, so no per-connection future has to
            // wait on the token (one would register under the lock all connections share on every turn, and
            // enlarge every idle connection).
            // Shutting down: op 7's point in the drain window until it is sent, then the end of the grace
            // after it.
            let draining = if self.draining_until.is_none() && inner.shutdown.is_cancelled() {
                let at = self.reconnect_at();
                if Instant::now() >= at {
                    if let Err(exit) = Box::pin(self.start_draining()).await {
                        return exit;
                    }
                    self.draining_until
                } else {
                    Some(at)
                }
            } else {
                self.draining_until
            };
            let deadline = self.state.next_deadline().map(Instant::from_std);
            // One timer for both (the earlier wins): every future of a `select!` is part of the
            // connection's future, and every idle connection pays for its size.
            let wake_at = match (deadline, draining) {
                (Some(d), Some(s)) => Some(d.min(s)),
                (d, s) => d.or(s),
            };
            let socket_first = self.outbox_backlog || self.outbox_turns >= OUTBOX_TURNS;
            let timer = sleep_until(wake_at.unwrap_or_else(far_future));
            // Two orders of the same three futures, in two `select!`s that never live at once (so the
            // future holds one of each). Deadlines always come first, so that no traffic can delay them.
            // The outbox goes before the socket while it has no backlog: a connection woken to write
            // (fan-out) then does not poll an idle socket first, which cost more than the write itself.
            // Never for more than `OUTBOX_TURNS` turns in a row, so input is still read; with a backlog the
            // socket goes first and the turn writes one budget's worth, so heavy output cannot starve input.
            let turn = if socket_first {
                tokio::select! {
                    biased;
                    () = timer, if wake_at.is_some() => Turn::Timer,
                    message = self.ws.next() => Turn::Socket(self.first_step(message)),
                    () = self.session.shared.outbox.ready() => Turn::Outbox,
                }
            } else {
                tokio::select! {
                    biased;
                    () = timer, if wake_at.is_some() => Turn::Timer,
                    () = self.session.shared.outbox.ready() => Turn::Outbox,
                    message = self.ws.next() => Turn::Socket(self.first_step(message)),
                }
            };
            let result = match turn {
                Turn::Timer => {
                    if draining.is_some_and(|until| Instant::now() >= until) {
                        if self.draining_until.is_some() {
                            return Exit::Shutdown;
                        }
                        // Op 7's point: the loop's top sends it.
                        Ok(())
                    } else {
                        Box::pin(self.on_deadline()).await
                    }
                }
                Turn::Outbox => {
                    self.outbox_turns = if socket_first {
                        0
                    } else {
                        self.outbox_turns + 1
                    };
                    // No result may live across the catch-up's await: it would enlarge the future.
                    if let Err(exit) = self
                        .write_queued(WRITE_BUDGET_FRAMES, WRITE_BUDGET_BYTES)
                        .await
                    {
                        return exit;
                    }
                    if self.session.stream().is_some_and(SessionStream::has_gap) {
                        Box::pin(self.catch_up()).await
                    } else {
                        Ok(())
                    }
                }
                Turn::Socket(step) => {
                    self.outbox_turns = 0;
                    self.on_socket(step).await
                }
            };
            if let Err(exit) = result {
                return exit;
            }
        }
    }

    /// Graceful shutdown, step one: everything queued so far, then op 7 ("reconnect elsewhere"). The
    /// connection keeps working until the client leaves or `shutdown_grace_ms` passes.
    async fn start_draining(&mut self) -> Result<(), Exit> {
        let (_, grace) = self.drain_timing();
        self.draining_until = Some(Instant::now() + grace);
        self.write_queued(usize::MAX, usize::MAX).await?;
        let jitter = self.inner.config.shutdown_retry_jitter_ms;
        let retry_after = self.spread(0xD6E8_FEB8_6659_FD93) % jitter.saturating_add(1);
        let reconnect: Utf8Bytes =
            Frame::new(OpCode::Reconnect, json!({ "retry_after_ms": retry_after }))
                .encode()
                .into();
        self.write(reconnect).await
    }

    /// The drain window (at most half the shutdown timeout) and the grace after op 7 (at most half of what
    /// is left), so that the close and its handshake still fit in the shutdown.
    fn drain_timing(&self) -> (Duration, Duration) {
        let config = &self.inner.config;
        let window = config
            .shutdown_drain_window_ms
            .min(config.shutdown_timeout_ms / 2);
        let grace = config
            .shutdown_grace_ms
            .min((config.shutdown_timeout_ms - window) / 2);
        (Duration::from_millis(window), Duration::from_millis(grace))
    }

    /// When this connection sends op 7 in the graceful shutdown: its point in the drain window from the
    /// shutdown's start.
    fn reconnect_at(&self) -> Instant {
        let started = self
            .inner
            .shutdown_started
            .get()
            .copied()
            .unwrap_or_else(Instant::now);
        let (window, _) = self.drain_timing();
        if window.is_zero() {
            return started;
        }
        let spread = self.spread(0x9E37_79B9_7F4A_7C15) % (window.as_millis() as u64);
        started + Duration::from_millis(spread)
    }

    /// A number that spreads this node's connections evenly (consecutive ids scattered by a multiplier).
    fn spread(&self, multiplier: u64) -> u64 {
        self.session.connection_id().seq().wrapping_mul(multiplier) >> 16
    }

    /// Handles one message from the socket, then up to [`READ_BATCH`] − 1 more that are already buffered,
    /// so that the replies they cause leave in one write instead of one write each. Once the outbox is half
    /// full, what the handlers queue is moved to the socket's write buffer after each message, so a burst of
    /// replies never overflows the bounded outbox.
    async fn on_socket(&mut self, mut step: Step) -> Result<(), Exit> {
        let mut handled = 0;
        loop {
            self.act(step).await?;
            if self.session.shared.outbox.is_half_full() {
                self.feed_queued(usize::MAX, usize::MAX).await?;
            }
            handled += 1;
            if handled == READ_BATCH {
                break;
            }
            // `now_or_never` polls once: a message already received (or EOF) is handled in this batch,
            // anything else waits for the next turn of the loop, which polls the socket with a real waker.
            match self.ws.next().now_or_never() {
                Some(next) => step = self.first_step(next),
                None => {
                    self.write_queued(usize::MAX, usize::MAX).await?;
                    if self.buffers_grown {
                        // Boxed: the socket it moves would otherwise enlarge every connection's future.
                        Box::pin(self.shrink_buffers()).await;
                    }
                    return Ok(());
                }
            }
        }
        // The replies of the whole batch leave in one write.
        self.write_queued(usize::MAX, usize::MAX).await
    }

    /// What the socket's next item asks for (its end is a drop).
    fn first_step(&mut self, next: Option<Result<Message, WsError>>) -> Step {
        match next {
            Some(message) => self.classify(message),
            None => Step::Exit(Exit::Dropped),
        }
    }

    /// After a large message, builds a new WebSocket over the same socket so that tungstenite's buffers go
    /// back to their configured size. Only when nothing is buffered either way: every byte read from the
    /// socket belongs to a frame already returned (a fragmented message makes the counts differ, and then
    /// the buffers are simply kept), and the write buffer was just flushed.
    async fn shrink_buffers(&mut self) {
        if !self.buffers_grown || self.consumed != self.ws.get_ref().bytes_read() {
            return;
        }
        let config = *self.ws.get_config();
        let Some(socket) = self.ws.get_mut().hand_over() else {
            return;
        };
        self.ws = WebSocketStream::from_raw_socket(socket, Role::Server, Some(config)).await;
        self.consumed = 0;
        self.buffers_grown = false;
    }

    /// Writes up to a budget of queued frames and flushes them. A close request that is next in the queue
    /// becomes the loop's exit, after the frames queued before it.
    async fn write_queued(&mut self, max_frames: usize, max_bytes: usize) -> Result<(), Exit> {
        let close = self.move_queued(max_frames, max_bytes, true).await?;
        self.inner
            .metrics
            .frames_sent(std::mem::take(&mut self.unflushed) as usize);
        match close {
            Some(close) => Err(Exit::Close(close.code, close.reason)),
            None => Ok(()),
        }
    }

    /// Moves up to a budget of queued frames into the socket's write buffer (which writes to the socket as
    /// it fills). Returns the close request when the session is closing and nothing is left before it.
    async fn feed_queued(
        &mut self,
        max_frames: usize,
        max_bytes: usize,
    ) -> Result<Option<CloseRequest>, Exit> {
        self.move_queued(max_frames, max_bytes, false).await
    }

    /// Drains up to a budget from the outbox into the socket and, if asked, flushes, all under one write
    /// timeout.
    async fn move_queued(
        &mut self,
        max_frames: usize,
        max_bytes: usize,
        flush: bool,
    ) -> Result<Option<CloseRequest>, Exit> {
        let mut batch = std::mem::take(&mut self.spare_batch);
        let drained = self
            .session
            .shared
            .outbox
            .drain(&mut batch, max_frames, max_bytes);
        self.outbox_backlog = drained.more;
        if !batch.is_empty() || flush {
            let count = batch.len();
            self.buffers_grown |= batch.iter().any(|text| text.len() > LARGE_MESSAGE);
            let limit = self.write_timeout();
            let ws = &mut self.ws;
            let written = timeout(limit, async {
                while let Some(text) = batch.pop_front() {
                    ws.feed(Message::Text(text)).await?;
                }
                if flush {
                    ws.flush().await?;
                }
                Ok::<(), WsError>(())
            })
            .await;
            self.unflushed = self
                .unflushed
                .saturating_add(u32::try_from(count).unwrap_or(u32::MAX));
            self.check_written(written).await?;
        }
        if batch.capacity() <= KEPT_SLOTS {
            self.spare_batch = batch;
        }
        Ok(drained.close)
    }

    /// `limits.write_timeout_ms`, read from the configuration rather than kept in every connection.
    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.limits.write_timeout_ms.max(1))
    }

    /// Writes the Hello frame, encoded once for all connections, straight to the socket: nothing went
    /// through tungstenite yet, so its write buffer stays empty (and small) instead of keeping the Hello's
    /// size for the connection's life.
    async fn write_hello(&mut self) -> Result<(), Exit> {
        use tokio::io::AsyncWriteExt;
        let frame = self.inner.hello_frame.clone();
        let limit = self.write_timeout();
        let socket = self.ws.get_mut();
        let written = timeout(limit, async {
            socket.write_all(&frame).await?;
            socket.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {
                self.inner.metrics.frames_sent(1);
                Ok(())
            }
            _ => {
                self.write_failed = true;
                Err(Exit::Dropped)
            }
        }
    }

    /// Feeds one frame and flushes.
    async fn write(&mut self, text: Utf8Bytes) -> Result<(), Exit> {
        let fed = timeout(self.write_timeout(), self.ws.feed(Message::Text(text))).await;
        self.unflushed = self.unflushed.saturating_add(1);
        self.check_written(fed).await?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), Exit> {
        let flushed = timeout(self.write_timeout(), self.ws.flush()).await;
        self.check_written(flushed).await?;
        self.inner
            .metrics
            .frames_sent(std::mem::take(&mut self.unflushed) as usize);
        Ok(())
    }

    async fn check_written(
        &mut self,
        written: Result<Result<(), WsError>, tokio::time::error::Elapsed>,
    ) -> Result<(), Exit> {
        if !matches!(written, Ok(Ok(()))) {
            self.write_failed = true;
        }
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                tracing::debug!(connection = %self.session.connection_id(), %error, "write failed");
                Err(Exit::Dropped)
            }
            Err(_) => Err(Box::pin(self.fail(ConnectionError::WriteTimeout)).await),
        }
    }

    async fn on_deadline(&mut self) -> Result<(), Exit> {
        // A heartbeat interval is a good moment to give back the slots a past batch left behind: a busy
        // connection regains them on its next batch, an idle one keeps nothing.
        if self.spare_batch.capacity() > 0 {
            self.spare_batch = VecDeque::new();
        }
        self.session.shared.outbox.release_idle_slots();
        loop {
            // Encoded before the write, so that the frame is not held across the await.
            let beat: Utf8Bytes = match self.state.on_timeout(Instant::now().into_std()) {
                Some(TimerAction::SendHeartbeat(frame)) => frame.encode().into(),
                Some(TimerAction::Close(code)) => return Err(Exit::close(code)),
                _ => return Ok(()),
            };
            self.write(beat).await?;
        }
    }

    /// Acts on one message from the socket, classified synchronously before (by [`Self::classify`]), so
    /// that the (large) message and error values are never part of the connection's future.
    async fn act(&mut self, step: Step) -> Result<(), Exit> {
        match step {
            Step::Continue => Ok(()),
            Step::Exit(exit) => Err(exit),
            Step::Fail(error) => Err(Box::pin(self.fail(*error)).await),
            Step::Reply(text) => {
                let fed = timeout(self.write_timeout(), self.ws.feed(Message::Text(text))).await;
                self.unflushed = self.unflushed.saturating_add(1);
                self.check_written(fed).await
            }
            Step::Authenticate(data, should_sync, resumable) => {
                let login = Login::Fresh {
                    should_sync,
                    resumable,
                };
                Box::pin(self.authenticate(data, login)).await
            }
            Step::Resume(request) => {
                let ResumeRequest { data, session, seq } = *request;
                Box::pin(self.authenticate(data, Login::Resume { session, seq })).await
            }
            Step::Dispatch(handled) => guarded(handled).await.map_err(|panicked| {
                self.inner.metrics.handler_panicked();
                Exit::panicked(panicked)
            }),
        }
    }

    fn classify(&mut self, message: Result<Message, WsError>) -> Step {
        match &message {
            Ok(Message::Text(text)) => {
                self.consumed += client_frame_len(text.len());
                self.buffers_grown |= text.len() > LARGE_MESSAGE;
            }
            Ok(Message::Ping(data) | Message::Pong(data)) => {
                self.consumed += client_frame_len(data.len());
            }
            _ => {}
        }
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Binary(_)) => return Step::Exit(Exit::close(CloseCode::UnsupportedData)),
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Step::Exit(Exit::PeerClosed(code, reason));
            }
            // tungstenite answers pings itself; pongs and raw frames carry nothing for us.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => return Step::Continue,
            Err(error) => {
                let error = ConnectionError::WebSocket(error);
                if error.close_code().is_none() {
                    // The peer vanished (EOF, reset): a drop, not an error worth reporting.
                    return Step::Exit(Exit::Dropped);
                }
                return Step::Fail(Box::new(error));
            }
        };
        self.inner.metrics.frame_received();
        let frame = match Frame::decode(&text) {
            Ok(frame) => frame,
            Err(error) => return Step::Fail(Box::new(ConnectionError::Decode(error))),
        };
        match self.state.on_frame(frame, Instant::now().into_std()) {
            Inbound::VersionAccepted => Step::Continue,
            Inbound::HeartbeatAck { ack } => {
                self.acknowledge(ack);
                Step::Continue
            }
            Inbound::HeartbeatRequest { ack } => {
                self.acknowledge(ack);
                Step::Reply(Frame::new(OpCode::HeartbeatAck, json!({})).encode().into())
            }
            Inbound::Authenticate {
                data,
                should_sync,
                resumable,
            } => Step::Authenticate(data, should_sync, resumable),
            Inbound::Resume { data, session, seq } => {
                Step::Resume(Box::new(ResumeRequest { data, session, seq }))
            }
            Inbound::Dispatch(frame) => self.dispatch(frame),
            Inbound::Ignored { op } => {
                tracing::debug!(connection = %self.session.connection_id(), op, "ignored frame");
                self.inner.metrics.unknown_opcode();
                Step::Continue
            }
            Inbound::Close(code) => Step::Exit(Exit::close(code)),
            _ => Step::Continue,
        }
    }

    /// A client's acknowledgement (`s` of op 11 or op 1) of its resumable session, passed to the engine
    /// when it moves forward.
    fn acknowledge(&self, ack: Option<u64>) {
        let (Some(seq), Some(stream)) = (ack, self.session.stream()) else {
            return;
        };
        if let Some(seq) = stream.acknowledge(seq) {
            if let Some(identity) = self.session.stored_identity() {
                self.inner
                    .router
                    .engine()
                    .acknowledge(&identity.id, stream.id, seq);
            }
        }
    }

    fn dispatch(&self, frame: Frame) -> Step {
        match self.inner.hooks.message(&self.session, frame) {
            Ok(Some(handled)) => Step::Dispatch(handled),
            Ok(None) => Step::Continue,
            Err(panicked) => {
                self.inner.metrics.handler_panicked();
                Step::Exit(Exit::panicked(panicked))
            }
        }
    }

    async fn fail(&mut self, error: ConnectionError) -> Exit {
        let code = error.close_code();
        let exit = match code {
            Some(code) => Exit::Close(code.code(), close_reason(code, &error)),
            None => Exit::Dropped,
        };
        if self.inner.hooks.error(&self.session, error).await.is_err() {
            self.inner.metrics.handler_panicked();
            return Exit::close(CloseCode::InternalError);
        }
        exit
    }

    async fn authenticate(&mut self, data: serde_json::Value, login: Login) -> Result<(), Exit> {
        let inner = self.inner.clone();
        let config = &inner.config.authentication;
        let refusal = match &inner.hooks.authenticate {
            None => "authentication is not configured".to_string(),
            Some(check) => {
                let limit = Duration::from_millis(config.check_timeout_ms.max(1));
                match timeout(limit, guarded(check(data, self.session.clone()))).await {
                    Ok(Ok(Ok(identity))) => return self.authenticated(identity, login).await,
                    // The check could not decide: retryable, like a timeout.
                    Ok(Ok(Err(refusal))) if refusal.is_retryable() && config.disconnect_on_fail => {
                        let reason = refusal.reason().to_string();
                        return Err(Exit::Close(CloseCode::TryAgainLater.code(), reason));
                    }
                    Ok(Ok(Err(refusal))) => refusal.reason().to_string(),
                    Ok(Err(panicked)) => {
                        inner.metrics.handler_panicked();
                        return Err(Exit::panicked(panicked));
                    }
                    // A slow check is the server's problem, not a refusal: the client may retry later.
                    Err(_) if config.disconnect_on_fail => {
                        let reason = "authentication check timed out".to_string();
                        return Err(Exit::Close(CloseCode::TryAgainLater.code(), reason));
                    }
                    Err(_) => "authentication check timed out".to_string(),
                }
            }
        };
        if config.disconnect_on_fail {
            return Err(Exit::Close(CloseCode::AuthenticationFailed.code(), refusal));
        }
        // Refused, connection kept: it is no longer who it was (sends to the old user id stop before op 9).
        inner.registry.deauthenticate(&self.session);
        self.state.authentication_refused(Instant::now().into_std());
        let refused = Frame::new(
            OpCode::InvalidSession,
            json!({ "code": "authentication_failed", "reason": refusal }),
        );
        // What the application queued before this op 2 goes first.
        self.feed_queued(usize::MAX, usize::MAX).await?;
        self.write(refused.encode().into()).await
    }

    async fn authenticated(&mut self, identity: crate::Identity, login: Login) -> Result<(), Exit> {
        let inner = self.inner.clone();
        let user = if inner.config.authentication.send_user_object {
            identity.user.clone()
        } else {
            json!({})
        };
        // A resumable session is opened or claimed before the session can be found by its user id, so that
        // no durable send falls between the stream and the live path (frames that reach the session before
        // its start is known are read from the stream after op 22).
        let opened = match &login {
            Login::Resume { session, seq } => {
                match Box::pin(self.claim(&identity.id, session, *seq)).await? {
                    Some(id) => Some((id, *seq, true)),
                    None => return Ok(()),
                }
            }
            Login::Fresh {
                resumable: true, ..
            } if inner.router.resumable() && self.session.stream().is_none() => {
                let id = SessionId::random();
                let engine = inner.router.engine();
                match engine
                    .open_session(&identity.id, id, self.session.connection_id())
                    .await
                {
                    Ok(opened) => Some((id, opened.start, false)),
                    Err(error) => {
                        tracing::warn!(connection = %self.session.connection_id(), %error, "resumable session not opened");
                        let code = CloseCode::TryAgainLater;
                        return Err(Exit::Close(code.code(), "session store unavailable".into()));
                    }
                }
            }
            Login::Fresh { .. } => None,
        };
        if let Some((id, _, _)) = opened {
            // Set once: a session that is resumable already keeps its stream (it re-authenticated).
            let _ = self
                .session
                .shared
                .stream
                .set(Box::new(SessionStream::pending(id)));
        }
        let user_id = identity.id.clone();
        match inner.registry.authenticate(&self.session, identity) {
            Ok(()) => {}
            Err(error) => {
                if let (Some((id, _, resumed)), Some(_)) = (opened, self.session.stream()) {
                    let release = if resumed { Release::Keep } else { Release::End };
                    let connection = self.session.connection_id();
                    inner
                        .router
                        .engine()
                        .release_session(&user_id, id, connection, release);
                }
                return Err(match error {
                    IdentityError::OtherUser => Exit::close(CloseCode::AlreadyAuthenticated),
                    IdentityError::Gone => Exit::Dropped,
                });
            }
        }
        self.state.authenticated();
        let d = match (opened, self.session.stream()) {
            (Some((id, after, resumed)), _) => json!({
                "user": user,
                "session_id": id.to_string(),
                "resumed": resumed,
                "seq": after,
            }),
            // Re-authentication of a resumable session (a refreshed token): it goes on where it is.
            (None, Some(stream)) => json!({
                "user": user,
                "session_id": stream.id.to_string(),
                "resumed": true,
                "seq": stream.queued(),
            }),
            (None, None) => user,
        };
        let ack: Utf8Bytes = Frame::new(OpCode::AuthenticationAck, d).encode().into();
        // What the application queued before this op 2 goes first.
        self.feed_queued(usize::MAX, usize::MAX).await?;
        self.write(ack).await?;
        match (opened, self.session.stream(), login) {
            (Some((_, after, _)), Some(stream), _) => {
                stream.start(after);
                // The engine's subscriptions for this user are in place before the stream is read: what is
                // appended after the read then arrives live.
                if let Err(error) = inner.router.engine().flush().await {
                    tracing::warn!(connection = %self.session.connection_id(), %error, "engine flush failed before the replay");
                }
                Box::pin(self.catch_up()).await?;
            }
            (None, None, Login::Fresh { should_sync, .. }) => self.redeliver(should_sync).await?,
            _ => {}
        }
        inner
            .hooks
            .authenticated(&self.session)
            .await
            .map_err(|panicked| {
                inner.metrics.handler_panicked();
                Exit::panicked(panicked)
            })
    }

    /// Op 6, after the authentication check accepted the client as `user_id`: claims the session in the
    /// engine. `Some(id)` when it is this connection's now; `None` when the resume was refused (op 9 was
    /// written and the connection waits for op 2).
    async fn claim(
        &mut self,
        user_id: &str,
        session: &str,
        seq: u64,
    ) -> Result<Option<SessionId>, Exit> {
        let inner = self.inner.clone();
        if self.session.stream().is_some() || self.state.is_authenticated() {
            return Err(Exit::close(CloseCode::AlreadyAuthenticated));
        }
        let id = match session.parse::<SessionId>() {
            Ok(id) if inner.router.resumable() => id,
            _ => return self.refuse_resume(ResumeRefusal::UnknownSession).await,
        };
        let engine = inner.router.engine();
        let connection = self.session.connection_id();
        match engine.claim_session(user_id, id, connection, seq).await {
            Ok(Ok(claimed)) => {
                if let Some(previous) = claimed.previous {
                    // Only one connection serves a session: the one it was resumed from is closed.
                    let code = CloseCode::SessionTakenOver;
                    if let Err(error) = inner
                        .router
                        .disconnect(&Target::connection(previous), code.code(), code.reason())
                        .await
                    {
                        tracing::debug!(%previous, %error, "the connection a session was resumed from was not reached");
                    }
                }
                Ok(Some(id))
            }
            Ok(Err(refusal)) => self.refuse_resume(refusal).await,
            Err(error) => {
                tracing::warn!(connection = %connection, %error, "resume not checked: session store unavailable");
                let code = CloseCode::TryAgainLater;
                Err(Exit::Close(code.code(), "session store unavailable".into()))
            }
        }
    }

    /// A refused resume: op 9 with the reason; the connection stays open for a fresh op 2.
    async fn refuse_resume(&mut self, refusal: ResumeRefusal) -> Result<Option<SessionId>, Exit> {
        self.state.authentication_refused(Instant::now().into_std());
        let refused = Frame::new(
            OpCode::InvalidSession,
            json!({ "code": refusal.code(), "reason": refusal.to_string() }),
        );
        self.feed_queued(usize::MAX, usize::MAX).await?;
        self.write(refused.encode().into()).await?;
        Ok(None)
    }

    /// Fills a resumable session's gap from its user's stream, a page at a time, each page written before
    /// the next is read (the outbox stays within its bound). Ends when nothing is missing; when what is
    /// missing is no longer kept, the session is invalidated (op 9, then 4013).
    async fn catch_up(&mut self) -> Result<(), Exit> {
        let Some(identity) = self.session.stored_identity() else {
            return Ok(());
        };
        let engine = self.inner.router.engine().clone();
        let page = (self.inner.config.limits.outbound_queue / 2).clamp(1, 512);
        loop {
            let Some(stream) = self.session.stream() else {
                return Ok(());
            };
            let Some(after) = stream.take_gap() else {
                return Ok(());
            };
            let read = match engine
                .read_session_stream(&identity.id, stream.id, after, page)
                .await
            {
                Ok(Ok(read)) => read,
                Ok(Err(gap)) => {
                    tracing::info!(connection = %self.session.connection_id(), %gap, "session invalidated");
                    let refusal = ResumeRefusal::RetentionExceeded;
                    let invalid = Frame::new(
                        OpCode::InvalidSession,
                        json!({ "code": refusal.code(), "reason": refusal.to_string() }),
                    );
                    self.feed_queued(usize::MAX, usize::MAX).await?;
                    self.write(invalid.encode().into()).await?;
                    return Err(Exit::close(CloseCode::SessionInvalidated));
                }
                Err(error) => {
                    tracing::warn!(connection = %self.session.connection_id(), %error, "stream not read; retrying");
                    let session = self.session.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(STREAM_RETRY).await;
                        if let Some(stream) = session.stream() {
                            stream.mark_gap();
                            session.shared.outbox.wake();
                        }
                    });
                    return Ok(());
                }
            };
            let outbox = &self.session.shared.outbox;
            let mut refused = false;
            let mut cut_short = false;
            let empty = read.entries.is_empty();
            // A page fills at most half the outbox's byte bound before it is written, so that a replay of
            // large frames does not overflow it (the rest is read again from where this page stopped).
            let budget = (self.inner.config.limits.outbound_queue_bytes / 2).max(1);
            let mut bytes = 0usize;
            for entry in read.entries {
                if bytes > 0 && bytes + entry.frame.len() > budget {
                    cut_short = true;
                    break;
                }
                bytes += entry.frame.len();
                let Ok(text) = Utf8Bytes::try_from(entry.frame.as_bytes().clone()) else {
                    continue;
                };
                let offered = stream.offer(entry.seq, outbox, || {
                    with_sequence(text.as_str(), entry.seq).into()
                });
                if let Offered::Refused(_) = offered {
                    // Full (closing with 4010, resumable) or closed: nothing more goes in.
                    refused = true;
                    break;
                }
            }
            // More was appended than this page held. (An empty page cannot make progress: the stream
            // reported its head but no entry after the position, which only a foreign writer can cause.)
            if !refused && !empty && (cut_short || read.head > stream.queued()) {
                stream.mark_gap();
            }
            self.write_queued(usize::MAX, usize::MAX).await?;
            if refused {
                return Ok(());
            }
        }
    }

    /// Mesa 1.5 sync, after op 22: the messages the engine kept for this user while offline, numbered
    /// `s` = 1, 2, 3 … in the order stored (or dropped, with `shouldSync: false`).
    ///
    /// Written straight to the socket while the outbox is not drained: live sends that arrive during the
    /// fetch (the session is already findable by its user id) wait in the outbox and follow the stored ones,
    /// so nothing is reordered. The socket is not read meanwhile: one engine round trip, bounded by the
    /// engine's timeout. A failed fetch leaves the messages stored for a later authentication.
    async fn redeliver(&mut self, should_sync: bool) -> Result<(), Exit> {
        let Some(user) = self.session.id() else {
            return Ok(());
        };
        let engine = self.inner.router.engine().clone();
        let stored = match engine.take_stored(&user, should_sync).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(connection = %self.session.connection_id(), %error, "stored messages not fetched; kept for a later authentication");
                return Ok(());
            }
        };
        let mut sequence = 0;
        for text in stored {
            let Ok(mut frame) = Frame::decode(text.as_str()) else {
                tracing::debug!(connection = %self.session.connection_id(), "skipped a stored message that is not a frame");
                continue;
            };
            sequence += 1;
            frame.s = Some(sequence);
            frame.o = None;
            let fed = timeout(
                self.write_timeout(),
                self.ws.feed(Message::Text(frame.encode().into())),
            )
            .await;
            self.unflushed = self.unflushed.saturating_add(1);
            self.check_written(fed).await?;
        }
        if sequence > 0 {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends what the exit calls for, runs the closing handshake, and says how the connection ended.
    async fn finish(&mut self, exit: Exit) -> (Disconnection, Option<u16>) {
        let (code, reason) = match exit {
            Exit::Close(code, reason) => (code, reason),
            Exit::Shutdown => {
                let code = CloseCode::ServiceRestart;
                (code.code(), code.reason().to_string())
            }
            Exit::PeerClosed(code, reason) => {
                // tungstenite queued the close reply; send it.
                let _ = timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
                let disconnection = Disconnection {
                    code,
                    reason,
                    by_server: false,
                };
                return (disconnection, None);
            }
            Exit::Dropped => {
                let disconnection = Disconnection {
                    code: 1006,
                    reason: String::new(),
                    by_server: false,
                };
                return (disconnection, None);
            }
        };
        // No send is accepted from here on; what was accepted before is written ahead of the close frame.
        self.session.shared.outbox.close(code, reason.clone());
        if !self.write_failed && self.feed_queued(usize::MAX, usize::MAX).await.is_ok() {
            let _ = self.flush().await;
        }
        self.close(code, &reason).await;
        let disconnection = Disconnection {
            code,
            reason,
            by_server: true,
        };
        (disconnection, Some(code))
    }

    /// Sends the close frame and waits (bounded) for the client's reply. Dispatches the client sent before it
    /// saw the close frame are still handed to the application; its replies to them cannot be written.
    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code),
            reason: truncate_reason(reason).into(),
        };
        let until = Instant::now() + CLOSE_TIMEOUT;
        if timeout(CLOSE_TIMEOUT, self.ws.close(Some(frame)))
            .await
            .map_or(true, |closed| closed.is_err())
        {
            return;
        }
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until, self.ws.next()).await {
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(frame) = Frame::decode(&text) else {
                continue;
            };
            self.inner.metrics.frame_received();
            // The same rules as before the close (rate limit, required authentication): a connection closed
            // for breaking one (its state is then closing) hands nothing more to the application.
            let Inbound::Dispatch(frame) = self.state.on_frame(frame, Instant::now().into_std())
            else {
                continue;
            };
            if let Step::Dispatch(handled) = self.dispatch(frame) {
                if guarded(handled).await.is_err() {
                    self.inner.metrics.handler_panicked();
                }
            }
        }
    }
}

fn close_reason(code: CloseCode, error: &ConnectionError) -> String {
    match error {
        ConnectionError::Decode(_) => {
            truncate_reason(&format!("{}: {error}", code.reason())).to_string()
        }
        _ => code.reason().to_string(),
    }
}

/// A close frame's reason is at most 123 bytes.
fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= 123 {
        return reason;
    }
    let mut end = 123;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open connection holds one task future and one boxed `ConnectionTask`: their sizes are a direct
    /// part of the memory per idle connection, so a change that inflates them should be a conscious one.
    #[tokio::test]
    async fn idle_connection_state_stays_small() {
        let mesa = crate::Mesa::builder().build();
        let (socket, _peer) = tokio::io::duplex(64);
        let ws = WebSocketStream::from_raw_socket(
            BufferedSocket::new(socket),
            Role::Server,
            Some(mesa.inner.ws_config),
        )
        .await;
        let session = Session::new(
            crate::ConnectionId::new(crate::NodeId(1), 1),
            None,
            Default::default(),
            crate::outbox::Outbox::new(16, 1024),
            std::sync::Weak::<()>::new(),
        );
        let task = run(ws, session, mesa.inner.clone());
        let (task_size, connection_size) = (
            std::mem::size_of_val(&task),
            std::mem::size_of::<ConnectionTask<tokio::io::DuplexStream>>(),
        );
        println!("task future {task_size} B, boxed connection {connection_size} B");
        // Measured 704 B and 608 B here (a test build over a duplex stream); in the release server the
        // task's cell is 1 280 B and the box 640 B, both exactly an allocator size class: a few bytes more
        // cost 256 B and 128 B per connection. (Resumable sessions once grew them to 736 B and 616 B, and
        // idle memory without resume by about 290 B per connection: a result held across an await in the
        // serve loop, and one more bool.)
        assert!(
            task_size <= 704,
            "the connection task future grew to {task_size} bytes"
        );
        assert!(
            connection_size <= 608,
            "ConnectionTask grew to {connection_size} bytes"
        );
    }
}
