//! A client for the Mesa gateway protocol: connects over `ws://` or `wss://`, answers heartbeats, detects a
//! dead server, authenticates (and re-authenticates after every reconnection), reconnects with exponential
//! backoff and full jitter, and queues sends while disconnected without ever dropping one silently.
//!
//! It speaks the protocol of `docs/protocol.md` with the wire types of [`mesa_protocol`] (the same
//! [`Frame`], [`OpCode`], [`Hello`] and close-code rules the server uses), and works against both this
//! project's server and the Mesa 1.5 Node server (`@cryb/mesa` 1.5.8).
//!
//! # Layout
//! - [`client`]: [`Client`], the cloneable handle (send, authenticate, connect, disconnect), and
//!   [`Lifecycle`], the named states of the connection.
//! - [`config`]: [`ClientBuilder`], every option with its default.
//! - [`event`]: [`Event`] and the [`Events`] stream.
//! - [`error`]: [`ConnectError`] (`{kind, source}`), [`AuthenticateError`], [`SendError`].
//! - [`backoff`]: [`Backoff`], exponential backoff with full jitter: pure, seedable.
//! - [`liveness`]: [`Liveness`], dead-server detection: pure, fed with the time.
//! - `driver`: the background task that owns the socket and runs the lifecycle; `transport`: TCP, TLS
//!   (rustls) and the WebSocket upgrade.
//!
//! # Example
//! ```no_run
//! use futures_util::StreamExt;
//! use mesa_client::{Client, Event};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut events) = Client::builder("ws://127.0.0.1:4000/")
//!     .header("Authorization", "Bearer abc")       // sent with every upgrade request
//!     .credentials(json!({ "token": "user:alice" })) // op 2 after every Hello, before queued sends
//!     .build()?;
//! client.dispatch("MESSAGE", json!({ "text": "hello" }))?; // queued until authenticated
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Authenticated(user) => println!("signed in as {user}"),
//!         Event::Message(frame) => println!("{:?}: {}", frame.t, frame.d),
//!         Event::Disconnected(why) if !why.will_reconnect => break,
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//! **Lifecycle.** One task per client owns the socket and moves through [`Lifecycle`]:
//! `Disconnected → Connecting → AwaitingHello → Authenticating → Ready`, then `Backoff → Connecting …` after
//! a drop, or `Closed` after [`Client::disconnect`] or a close code that forbids reconnecting.
//! [`Client`] handles talk to it through bounded channels. When the last handle is dropped the task closes
//! the connection with 1000 and ends, but first, within [`ClientBuilder::linger`] (default 10 s), it
//! delivers the sends still queued: `send()` having accepted a frame, dropping the client does not lose it
//! (see [`Client`] for when it gives up).
//!
//! **Authentication.** [`Client::authenticate`] (or [`ClientBuilder::credentials`]) remembers the
//! credentials; they are sent after the Hello of every connection. The call resolves with op 22's user, or
//! [`AuthenticateError::Refused`] (a 1008 close, which also stops reconnection, or op 9), `TimedOut` (the
//! Hello's `c_authentication_timeout`; the client then closes with 4006 and reconnects), `ConnectionLost`,
//! or `Superseded`. Refused credentials are forgotten, and the queue keeps waiting (in
//! [`Lifecycle::Authenticating`]) for a later successful `authenticate`: a client that has credentials
//! never flushes on an unauthenticated connection. Credentials and the `Authorization` header never appear
//! in `Debug` output.
//! Each call resolves with the answer to its own credentials: one op 2 is in flight per connection, later
//! calls wait for its answer (which goes to the earlier call), and a call not sent yet is superseded by a
//! newer one with other credentials. A connection the server authenticated is never sent other
//! credentials (this project's server would close it with the terminal 4005): the client replaces it with a
//! new connection for them. The same credentials again are sent on the same connection: this project's
//! server answers with op 22 each time, but a Mesa 1.5 server answers only the first success of a
//! connection, so there the call times out (and the reconnection that follows sends them again).
//!
//! **Reconnection.** After a drop the client waits `uniform(0, min(cap, base × 2ⁿ))`, with `base` the
//! server's `c_reconnect_interval` (or [`ClientBuilder::reconnect_interval`] until a Hello advertised one),
//! `n` the attempts since the connection last became `Ready`, and `cap` [`ClientBuilder::reconnect_cap`].
//! A server close whose code [`mesa_protocol::can_reconnect_code`] rejects (1008 authentication refused,
//! 1000, 1002, 4002, …) stops it; everything else is retried: drops, silence, timeouts, refused TCP
//! connections and HTTP answers other than 101 (a 503 during a deploy, but also a 404 for a wrong path: the
//! [`Event::ConnectionFailed`] events say why).
//! Unlike Mesa 1.5, a reconnect interval absent from the Hello does not disable reconnection.
//!
//! **Dead servers.** When the Hello advertises `c_heartbeat_interval`, the server's own op 1 cadence is
//! the probe: silence longer than the interval plus [`ClientBuilder::heartbeat_slack`] (default: half the
//! interval, at least 1 s) drops the connection and reconnects. Every op 1 is answered with op 11. The
//! client never sends op 1 itself (a Mesa 1.5 server does not answer it). When no heartbeat is advertised
//! the client sends WebSocket Pings every [`ClientBuilder::ping_interval`] and applies the same rule to the
//! answers; with pings turned off, a silent half-open connection is not detected.
//!
//! **Sends.** [`Client::send`] never waits: the frame joins a bounded queue ([`ClientBuilder::queue_capacity`],
//! default 1024), or the call fails with [`SendError::QueueFull`]. The queue is drained only in `Ready`
//! — after op 22 when the client has (or had) credentials, with the current credentials (Mesa 1.5 flushed
//! before authenticating, and after a refusal). Order is kept across reconnections, and frames queued when
//! the last handle is dropped are still delivered (within [`ClientBuilder::linger`]). Everything the client sends is paced by [`ClientBuilder::send_rate`] (default
//! burst 150, then 80 per second), under the server's default inbound rate limit, so that flushing a long
//! queue does not get the client closed with 4008 and lose the frames already written. Delivery is at most once: a frame written to a socket that then turns out to be
//! dead is not sent again, since the protocol has no acknowledgements to tell whether it arrived.
//!
//! **Resumable sessions.** When the server's Hello offers `c_resume` (and [`ClientBuilder::resume_sessions`]
//! is on, the default), the client authenticates with op 2 `d.resumable: true` and holds a session: its id
//! (from op 22) and the last sequence number `s` it handed to the application as an [`Event::Message`].
//! After a drop or a close that keeps the session (1001, 1011, 1012, 1013, 4008, 4009, 4010, or no close
//! frame; also the client's own closes other than 1000) it reconnects with op 6 `{<credentials>,
//! session_id, seq}` instead of op 2, and reports [`Event::SessionResumed`]: the server replays the missed
//! dispatches, each handed over exactly once and in order. Op 9 refusing the resume (`session_unknown`,
//! `retention_exceeded`, `sequence_ahead`) makes it send a fresh op 2 on the same connection and report
//! [`Event::SessionStarted`] with [`SessionInvalidated`] saying what was lost and why: refetch the
//! application's state then. A close that ends the session (1000, 4013 after op 9, 4006, …) makes the
//! next connection start a fresh one (4012, resumed on another connection, and the other terminal codes do
//! not reconnect); [`Client::disconnect`] and other credentials end it too.
//!
//! In a session a dispatch with `s` at or below the last one is a duplicate and is dropped; one beyond the
//! next expected number is a gap (it should never happen): the client closes with
//! [`SEQUENCE_GAP_CLOSE`] (4000, "sequence gap") and resumes from the last one it handed over.
//! Dispatches without `s` (volatile, broadcast) are handed over untouched. Every op 11 answering op 1
//! carries `"s": <last>`, and after dispatches the client sends an unsolicited op 11 with `s` (at most
//! every 100 ms while they arrive, and once 100 ms after the last), never when nothing new was handed
//! over, so the server can trim what it keeps. Op 7 with `retry_after_ms` makes the next connection wait
//! that long plus the usual jittered delay. "Handed over" means queued on [`Events`]: an application that
//! must not lose a message across a crash of its own process needs its own persistence.
//! Without `c_resume` (Mesa 1.5 servers) the client sends exactly Mesa 1.5 frames, and `s` on dispatches
//! (Mesa 1.5 redelivery) is passed through unchecked.
//!
//! **Events.** [`Events`] is a bounded [`Stream`](futures_util::Stream). If the application stops
//! reading it, the client stops reading the socket and stops reconnecting once `event_capacity` events wait;
//! it never drops an event while the stream is alive, also when the task stops: the stream ends only after
//! every event the task produced (the final [`Event::Disconnected`] included).

pub mod backoff;
pub mod client;
pub mod config;
mod driver;
pub mod error;
pub mod event;
pub mod liveness;
mod transport;

pub use backoff::{Backoff, Jitter};
pub use client::{Client, Lifecycle};
pub use config::{ClientBuilder, DEFAULT_LINGER, DEFAULT_SEND_RATE};
pub use error::{AuthenticateError, ConnectError, ConnectErrorKind, SendError};
pub use event::{
    Connected, ConnectionFailed, Disconnected, Event, Events, InvalidationReason,
    SessionInvalidated, SessionResumed, SessionStarted,
};
pub use liveness::{Liveness, LivenessAction, Probe};
pub use mesa_protocol::{Frame, Hello, OpCode, RateLimit};
/// The close code the client sends when the dispatches of a resumable session skip a sequence number
/// (reason `"sequence gap"`); it then resumes from the last one it handed over. Not 1000, which would end
/// the session.
pub const SEQUENCE_GAP_CLOSE: u16 = 4000;

/// The rustls version [`ClientBuilder::tls_config`] takes.
pub use rustls;

/// Builds a client for `url` with the default options and waits for its first connection (Hello).
///
/// Shorthand for `Client::builder(url).connect().await`; use [`Client::builder`] for headers, credentials
/// and the other options.
pub async fn connect(url: impl Into<String>) -> Result<(Client, Events), ConnectError> {
    Client::builder(url).connect().await
}
