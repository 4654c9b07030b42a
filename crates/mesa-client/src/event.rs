//! What the client reports: [`Event`] and the [`Events`] stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use mesa_protocol::{Frame, Hello};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::ConnectError;

/// Something that happened to the client, in the order it happened.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A connection opened and its Hello arrived (before authentication).
    Connected(Connected),
    /// The server accepted the credentials (op 22); carries the user object (`{}` when the server does not
    /// send it; in a resumable session op 22's `d.user`, followed by [`Event::SessionStarted`] or
    /// [`Event::SessionResumed`]). Queued sends are flushed right after this, unless a newer
    /// [`Client::authenticate`](crate::Client::authenticate) call asked for other credentials meanwhile.
    Authenticated(Value),
    /// The server refused the credentials with op 9 and kept the connection open (servers with
    /// `disconnect_on_fail` off). The credentials are forgotten, and queued sends stay queued (the client is
    /// [`Lifecycle::Authenticating`](crate::Lifecycle::Authenticating)) until a later
    /// [`Client::authenticate`](crate::Client::authenticate) succeeds. A 1008 close is reported as
    /// [`Event::Disconnected`] instead.
    AuthenticationRefused {
        /// The server's reason.
        reason: String,
    },
    /// A resumable session started on this connection (op 22 `resumed: false`), right after
    /// [`Event::Authenticated`]: nothing from before is replayed. When it replaces a session the client
    /// had (a refused resume, a session the server or the client ended), `invalidated` says which and why:
    /// messages may have been missed, so the application should refetch its state. Only on servers whose
    /// Hello offers `c_resume` (see [`ClientBuilder::resume_sessions`](crate::ClientBuilder::resume_sessions)).
    SessionStarted(SessionStarted),
    /// The session was resumed on this connection (op 6 accepted), right after [`Event::Authenticated`]:
    /// the messages it missed follow, each exactly once and in order, then live ones. Nothing was lost.
    SessionResumed(SessionResumed),
    /// A dispatch (op 0) from the server. In a resumable session, durable dispatches carry `s`
    /// (consecutive; duplicates of a replay are dropped before they get here); dispatches without `s`
    /// (volatile, broadcast) are handed over as they come.
    Message(Frame),
    /// A connection that had reached [`Event::Connected`] ended.
    Disconnected(Disconnected),
    /// A connection attempt failed before its Hello arrived.
    ConnectionFailed(ConnectionFailed),
}

/// A fresh resumable session. See [`Event::SessionStarted`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStarted {
    /// The server's id of the session (32 lowercase hex digits).
    pub session_id: String,
    /// The stream position the session starts after: its dispatches carry `s` = `seq + 1`, `seq + 2`, …
    /// (first the messages no device of the user had acknowledged, then live ones).
    pub seq: u64,
    /// The session this one replaces, when the client had one and lost it.
    pub invalidated: Option<SessionInvalidated>,
}

/// A resumed session. See [`Event::SessionResumed`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionResumed {
    /// The id of the session (the same as before the drop).
    pub session_id: String,
    /// The last `s` the application was handed before the drop: the replay starts at `resumed_after + 1`.
    pub resumed_after: u64,
}

/// A session the client lost: it cannot be resumed, and what it would have replayed is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInvalidated {
    /// The lost session's id.
    pub session_id: String,
    /// The last `s` the application was handed in it.
    pub last_seq: u64,
    /// Why it was lost.
    pub reason: InvalidationReason,
}

/// Why a session was lost. See [`SessionInvalidated`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidationReason {
    /// The server refused it with op 9: the answer to the resume (`code` `"session_unknown"`: never
    /// opened, ended or expired; `"retention_exceeded"`: what it missed is no longer kept;
    /// `"sequence_ahead"`), or mid-session (then closed with 4013). Also `"not_resumed"` when the server
    /// answered a resume with a fresh session, and `"authentication_failed"` when the credentials of the
    /// resume were refused.
    Refused {
        /// op 9's `code`.
        code: String,
        /// op 9's `reason`.
        reason: String,
    },
    /// The server closed the connection with a code that ends sessions (anything but 1001, 1011, 1012,
    /// 1013, 4008, 4009, 4010 and a drop), for example 4012 (resumed elsewhere), 4013 or 1008.
    ServerClosed {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The client ended it: [`Client::disconnect`](crate::Client::disconnect) (close 1000).
    Disconnected,
    /// The client switched to other credentials (the session belonged to the previous ones).
    CredentialsChanged,
}

/// A connection opened. See [`Event::Connected`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Connected {
    /// The first connection since the client was built (Mesa 1.5 `isInitialConnection`).
    pub initial: bool,
    /// Made by the reconnection logic rather than by auto-connect or [`Client::connect`](crate::Client::connect)
    /// (Mesa 1.5 `isAutomaticReconnection`).
    pub automatic_reconnection: bool,
    /// The server's Hello.
    pub hello: Hello,
}

/// A connection ended. See [`Event::Disconnected`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Disconnected {
    /// The close code: the server's close frame, 1006 when the connection dropped without one (including
    /// when the client declared a silent server dead), or the code the client closed with (1000 for
    /// [`Client::disconnect`](crate::Client::disconnect), 4006 for an authentication timeout,
    /// [`SEQUENCE_GAP_CLOSE`](crate::SEQUENCE_GAP_CLOSE) (4000) for a gap in a resumable session's
    /// sequence numbers).
    pub code: u16,
    /// The close reason, or what went wrong.
    pub reason: String,
    /// Whether the client will reconnect (Mesa 1.5 `willAttemptReconnect`).
    pub will_reconnect: bool,
    /// The delay before the next attempt, when `will_reconnect`.
    pub reconnect_delay: Option<Duration>,
}

/// A connection attempt failed. See [`Event::ConnectionFailed`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionFailed {
    /// What went wrong.
    pub error: ConnectError,
    /// Whether the client will try again.
    pub will_reconnect: bool,
    /// The delay before the next attempt, when `will_reconnect`.
    pub reconnect_delay: Option<Duration>,
}

/// The stream of [`Event`]s of one client. It ends when the client's task stops (every
/// [`Client`](crate::Client) handle dropped, and the queued sends delivered or given up: see
/// [`ClientBuilder::linger`](crate::ClientBuilder::linger)), after every event the task produced.
///
/// Read it: when `event_capacity` events wait unread, the client stops reading its socket (the server will
/// eventually drop it for missed heartbeats) and stops reconnecting, until the application catches up.
/// Events the task produced before it stopped are never lost while `Events` is alive, however far behind
/// the reader is. Dropping `Events` is fine: events are then discarded.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
    /// Events still waiting for room in `rx` when the task stopped, handed over by [`EventQueue`]'s
    /// `Drop` (before its sender goes, so they are all there once `rx` reports the end).
    tail: Tail,
}

/// Where the task's side leaves its undelivered events when it stops.
type Tail = Arc<Mutex<VecDeque<Event>>>;

impl Events {
    /// The next event, or `None` once the client's task stopped and every event it produced was read.
    pub async fn recv(&mut self) -> Option<Event> {
        match self.rx.recv().await {
            Some(event) => Some(event),
            None => self.next_from_tail(),
        }
    }

    fn next_from_tail(&self) -> Option<Event> {
        self.tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(None) => Poll::Ready(self.next_from_tail()),
            other => other,
        }
    }
}

/// The task's side: a bounded channel plus the few events that did not fit yet.
pub(crate) struct EventQueue {
    tx: mpsc::Sender<Event>,
    pending: VecDeque<Event>,
    limit: usize,
    closed: bool,
    tail: Tail,
}

impl Drop for EventQueue {
    /// The task stops: the events that did not fit in the channel go to the stream's tail, behind those
    /// in the channel. This runs before `tx` is dropped, so the stream sees the channel end only after.
    fn drop(&mut self) {
        if self.closed || self.pending.is_empty() {
            return;
        }
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.extend(self.pending.drain(..));
    }
}

impl EventQueue {
    pub(crate) fn new(capacity: usize) -> (EventQueue, Events) {
        let (tx, rx) = mpsc::channel(capacity);
        let tail = Tail::default();
        let queue = EventQueue {
            tx,
            pending: VecDeque::new(),
            limit: capacity,
            closed: false,
            tail: tail.clone(),
        };
        (queue, Events { rx, tail })
    }

    /// Queues an event; it never waits and never drops an event while `Events` is alive.
    pub(crate) fn push(&mut self, event: Event) {
        if self.closed {
            return;
        }
        if !self.pending.is_empty() {
            self.pending.push_back(event);
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => self.pending.push_back(event),
            Err(mpsc::error::TrySendError::Closed(_)) => self.closed = true,
        }
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the application is so far behind that the client should stop producing events.
    pub(crate) fn is_stalled(&self) -> bool {
        self.pending.len() >= self.limit
    }

    /// Moves one pending event into the channel once there is room. Cancel-safe.
    pub(crate) async fn flush_one(&mut self) {
        match self.tx.reserve().await {
            Ok(permit) => {
                if let Some(event) = self.pending.pop_front() {
                    permit.send(event);
                }
            }
            Err(_) => {
                self.closed = true;
                self.pending.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_slow_reader_stalls_the_queue_without_losing_events() {
        let (mut queue, mut events) = EventQueue::new(2);
        for n in 0..5 {
            queue.push(Event::Authenticated(json!(n)));
        }
        assert!(queue.has_pending());
        assert!(queue.is_stalled());
        let mut seen = Vec::new();
        while seen.len() < 5 {
            tokio::select! {
                biased;
                Some(Event::Authenticated(n)) = events.recv() => seen.push(n),
                () = queue.flush_one(), if queue.has_pending() => {}
            }
        }
        assert_eq!(seen, (0..5).map(|n| json!(n)).collect::<Vec<_>>());
        assert!(!queue.is_stalled());
    }

    #[tokio::test]
    async fn events_still_pending_when_the_task_stops_reach_the_stream_in_order() {
        let (mut queue, mut events) = EventQueue::new(2);
        for n in 0..5 {
            queue.push(Event::Authenticated(json!(n)));
        }
        drop(queue);
        let mut seen = Vec::new();
        while let Some(Event::Authenticated(n)) = events.recv().await {
            seen.push(n);
        }
        assert_eq!(seen, (0..5).map(|n| json!(n)).collect::<Vec<_>>());
        assert!(events.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_dropped_reader_discards_events() {
        let (mut queue, events) = EventQueue::new(1);
        queue.push(Event::Authenticated(json!(1)));
        queue.push(Event::Authenticated(json!(2)));
        drop(events);
        queue.flush_one().await;
        assert!(!queue.has_pending());
        queue.push(Event::Authenticated(json!(3)));
        assert!(!queue.has_pending());
    }
}
