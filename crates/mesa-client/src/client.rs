//! [`Client`], the cheap, cloneable handle to the client's task, and [`Lifecycle`].

use std::fmt;
use std::sync::Arc;

use mesa_protocol::Frame;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::{ClientBuilder, Credentials};
use crate::error::{AuthenticateError, ConnectError, ConnectErrorKind, SendError};

/// Where the client is in its life. One value at a time, owned by the client's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Lifecycle {
    /// Built without auto-connect and not yet asked to connect. Sends are queued.
    Disconnected,
    /// Opening TCP, TLS and the WebSocket upgrade.
    Connecting,
    /// The WebSocket is open; waiting for the Hello (op 10).
    AwaitingHello,
    /// Hello received, credentials sent (op 2, or op 6 to resume a session), waiting for op 22. Sends stay
    /// queued. Also the state of a
    /// connection whose credentials the server refused with op 9 (the connection stays open): sends stay
    /// queued until [`Client::authenticate`] succeeds.
    Authenticating,
    /// Connected (and authenticated, when the client has credentials): sends go out.
    Ready,
    /// Waiting before the next connection attempt. Sends are queued.
    Backoff,
    /// Stopped: [`Client::disconnect`] was called, the server closed with a code that forbids reconnecting,
    /// or reconnection is off. Sends fail with [`SendError::Closed`]; [`Client::connect`] starts again.
    Closed,
}

/// A request from a handle to the task.
pub(crate) enum Command {
    Connect(oneshot::Sender<Result<(), ConnectError>>),
    Authenticate {
        credentials: Credentials,
        reply: oneshot::Sender<Result<Value, AuthenticateError>>,
    },
    Disconnect(oneshot::Sender<()>),
}

/// The channels a handle holds.
pub(crate) struct Shared {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) send_queue: mpsc::Sender<Utf8Bytes>,
    pub(crate) lifecycle: watch::Receiver<Lifecycle>,
    pub(crate) queue_capacity: usize,
}

/// A handle to a Mesa client: send, authenticate, connect and disconnect from any task.
///
/// Cheap to clone (an `Arc`); every clone talks to the same background task, which owns the socket.
///
/// # Dropping the last handle
/// Frames [`Client::send`] accepted are still delivered: when the last handle is dropped with frames
/// queued, the task keeps running (connecting, authenticating and reconnecting as usual) until the queue
/// is flushed, then closes the connection with 1000 and stops; with an empty queue it does so at once.
/// This lingering is bounded by [`ClientBuilder::linger`] (default 10 s, counted from the drop) and also
/// ends when nothing could deliver the queue any more: the client is [`Lifecycle::Disconnected`] or
/// [`Lifecycle::Closed`] (terminal close, [`Client::disconnect`]), or the server refused the credentials.
/// Frames left then are discarded, with a `tracing` warning. The task runs on the Tokio runtime the client
/// was built on: shutting the runtime down ends it whatever is queued. Until the task stops, [`Events`]
/// goes on reporting (including the final [`Event::Disconnected`](crate::Event::Disconnected) with code
/// 1000), and it ends after the last event.
///
/// # Ordering and delivery
/// Frames passed to [`Client::send`] leave in the order they were queued, across reconnections. Frames
/// queued while disconnected, connecting or authenticating are flushed only once the connection is
/// [`Lifecycle::Ready`], that is after op 22 when the client has (or has had) credentials: after a refusal
/// they wait for a later successful [`Client::authenticate`]. A frame that was written to a socket which
/// then turned out to be dead is **not** sent again: the protocol has no acknowledgements, so the client
/// cannot know whether the server read it (at most once, per connection).
///
/// [`Events`]: crate::Events
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("lifecycle", &self.lifecycle())
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of the server at `url` (`ws://…` or `wss://…`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    pub(crate) fn new(shared: Shared) -> Client {
        Client {
            shared: Arc::new(shared),
        }
    }

    /// Queues `frame` for sending and returns at once. See the [type docs](Client) for ordering, and for
    /// what happens to accepted frames when the last handle is dropped (they are still delivered, within
    /// [`ClientBuilder::linger`]).
    ///
    /// Errors: [`SendError::QueueFull`] when `queue_capacity` frames wait already (nothing is queued; the
    /// frame is not silently dropped), [`SendError::Closed`] when the client is [`Lifecycle::Closed`].
    pub fn send(&self, frame: &Frame) -> Result<(), SendError> {
        if self.lifecycle() == Lifecycle::Closed {
            return Err(SendError::Closed);
        }
        match self.shared.send_queue.try_send(frame.encode().into()) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(SendError::QueueFull {
                capacity: self.shared.queue_capacity,
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    /// Queues a dispatch (op 0) of event type `t` with payload `d`: shorthand for
    /// `send(&Frame::dispatch(t, d))`.
    pub fn dispatch(&self, t: impl Into<String>, d: Value) -> Result<(), SendError> {
        self.send(&Frame::dispatch(t, d))
    }

    /// Authenticates with `data` (op 2's `d`, for example `{"token": "…"}`) and returns the user object of
    /// op 22 (`{}` when the server does not send it).
    ///
    /// The credentials are remembered and sent again, automatically, after every reconnection, before queued
    /// sends are flushed. When called while connecting or waiting to reconnect, they are sent as soon as the
    /// next Hello arrives. The wait for op 22 is bounded by the Hello's `c_authentication_timeout`.
    ///
    /// # Several calls
    /// The latest call's credentials are the current ones, and every call resolves with the answer to its
    /// own credentials:
    /// - One op 2 is in flight per connection at a time. A call made while another call's credentials are
    ///   being checked waits for that answer, which goes to the earlier call (in order).
    /// - A call with the same credentials as the pending one shares its answer.
    /// - A call whose credentials were not sent yet, replaced by a newer call with other credentials,
    ///   resolves with [`AuthenticateError::Superseded`].
    /// - A connection is never sent a second identity: once the server accepted credentials on it, a call
    ///   with *other* credentials closes it (1000, [`Event::Disconnected`](crate::Event::Disconnected) with
    ///   `will_reconnect` and a zero delay, then [`Event::Connected`](crate::Event::Connected) with
    ///   `automatic_reconnection`) and authenticates on a new connection right away, even with
    ///   reconnection off. (This project's server closes with the terminal 4005 when a connection switches
    ///   users; a Mesa 1.5 server ignores a second op 2.) The same credentials again are sent on the same
    ///   connection: this project's server answers with op 22 again.
    ///
    /// Queued sends wait meanwhile: they go out only on a connection authenticated with the current
    /// credentials.
    pub async fn authenticate(&self, data: Value) -> Result<Value, AuthenticateError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Authenticate {
            credentials: Credentials(data),
            reply,
        };
        if self.shared.commands.send(command).await.is_err() {
            return Err(AuthenticateError::Closed);
        }
        answer.await.unwrap_or(Err(AuthenticateError::Closed))
    }

    /// Connects if the client is idle ([`Lifecycle::Disconnected`] or [`Lifecycle::Closed`]) and waits for
    /// the Hello; in [`Lifecycle::Backoff`] it skips the rest of the delay. Returns at once when already
    /// connected.
    ///
    /// Returns the error of the attempt it waited for when that attempt fails; the client then goes on
    /// retrying in the background (when reconnection is on) until [`Client::disconnect`].
    pub async fn connect(&self) -> Result<(), ConnectError> {
        let (reply, answer) = oneshot::channel();
        let closed = || ConnectError::new(ConnectErrorKind::Closed);
        if self
            .shared
            .commands
            .send(Command::Connect(reply))
            .await
            .is_err()
        {
            return Err(closed());
        }
        answer.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Closes the connection cleanly (close 1000) and stops reconnecting; returns once the client is
    /// [`Lifecycle::Closed`]. Frames still queued stay queued for a later [`Client::connect`].
    pub async fn disconnect(&self) {
        let (reply, done) = oneshot::channel();
        if self
            .shared
            .commands
            .send(Command::Disconnect(reply))
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }

    /// The current lifecycle state.
    pub fn lifecycle(&self) -> Lifecycle {
        *self.shared.lifecycle.borrow()
    }

    /// Waits until the lifecycle is `state`; returns `false` if the client's task stopped first.
    pub async fn wait_for(&self, state: Lifecycle) -> bool {
        let mut lifecycle = self.shared.lifecycle.clone();
        let reached = lifecycle
            .wait_for(|current| *current == state)
            .await
            .is_ok();
        reached
    }

    /// Frames queued and not yet written to a socket.
    pub fn queued(&self) -> usize {
        self.shared
            .queue_capacity
            .saturating_sub(self.shared.send_queue.capacity())
    }
}
