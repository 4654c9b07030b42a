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
    /// Hello received, credentials sent (op 2), waiting for op 22. Sends stay queued.
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
    pub(crate) outbox: mpsc::Sender<Utf8Bytes>,
    pub(crate) lifecycle: watch::Receiver<Lifecycle>,
    pub(crate) queue_capacity: usize,
}

/// A handle to a Mesa client: send, authenticate, connect and disconnect from any task.
///
/// Cheap to clone (an `Arc`); every clone talks to the same background task, which owns the socket and
/// runs until the last handle is dropped (it then closes the connection with 1000).
///
/// # Ordering and delivery
/// Frames passed to [`Client::send`] leave in the order they were queued, across reconnections. Frames
/// queued while disconnected, connecting or authenticating are flushed only once the connection is
/// [`Lifecycle::Ready`], that is after op 22 when the client has credentials. A frame that was written to a
/// socket which then turned out to be dead is **not** sent again: the protocol has no acknowledgements, so
/// the client cannot know whether the server read it (at most once, per connection).
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

    /// Queues `frame` for sending and returns at once. See the [type docs](Client) for ordering.
    ///
    /// Errors: [`SendError::QueueFull`] when `queue_capacity` frames wait already (nothing is queued; the
    /// frame is not silently dropped), [`SendError::Closed`] when the client is [`Lifecycle::Closed`].
    pub fn send(&self, frame: &Frame) -> Result<(), SendError> {
        if self.lifecycle() == Lifecycle::Closed {
            return Err(SendError::Closed);
        }
        match self.shared.outbox.try_send(frame.encode().into()) {
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
    /// Calling it again replaces the credentials; every pending call resolves with the next answer.
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
            .saturating_sub(self.shared.outbox.capacity())
    }
}
