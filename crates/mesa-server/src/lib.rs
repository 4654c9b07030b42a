//! A Mesa gateway server: a WebSocket layer modelled on Discord's gateway, wire-compatible with Mesa 1.5.
//!
//! Clients connect, receive Hello (op 10), answer heartbeats (op 1 → op 11), authenticate (op 2 → op 22) and
//! exchange dispatches (op 0). The application authenticates, reacts to events, and sends to everyone, to
//! user ids, or to one connection. Every bad input has a defined outcome (a close code or an HTTP status) and
//! every queue is bounded; see `docs/protocol.md`.
//!
//! # Layout
//! Modules depend only on modules listed before them (the type-level arrow from [`session`] to the server
//! goes through a type-erased weak handle, so there is no circle):
//! - [`ids`]: [`NodeId`] and [`ConnectionId`] (node + counter, unique across nodes); [`target`]: who a send
//!   is for ([`Target`]) and what became of it ([`Delivery`]). Plain data, from `mesa-engine`.
//! - `outbox`: a session's bounded outbound queue (frames and bytes); `resume`: a resumable session's place
//!   in its user's stream, the gate every sequenced frame passes into the outbox.
//! - [`session`]: [`Session`], the handle the application holds for one client, and its [`SessionState`].
//! - `registry`: the one owner of sessions, their identities and the user index; local fan-out.
//! - `router`: the one routing layer every send goes through: encode once, hand to the [`Engine`]
//!   ([`MemoryEngine`] by default; `mesa-redis` for several nodes), which carries it to every node holding a
//!   recipient, this one first.
//! - [`config`], [`error`], [`metrics`], [`events`] (handlers and [`Middleware`]).
//! - `socket`: the upgraded stream, counting bytes read; `connection`: the per-connection task, glue between
//!   the socket and [`mesa_protocol::ConnectionState`].
//! - [`server`]: [`Mesa`], the handle (send API, shutdown), and [`MesaBuilder`] (configuration and hooks).
//! - [`service`]: [`MesaService`], the tower service that validates upgrades (mount it in axum).
//! - [`transport`]: the standalone listener ([`Mesa::serve`], [`Mesa::serve_with`]).
//!
//! # Events
//! Handlers are async closures set on the [`MesaBuilder`]: `authenticate`, `on_connection`, `on_message`,
//! `on_authenticated`, `on_disconnection` (with the close code and reason) and `on_error`. They run on the
//! connection's own task, in the order its frames arrive, so a handler that awaits delays that connection's next
//! frame and no other; spawn a task for long work. Inside a handler, [`Session::server`] gives the [`Mesa`] handle
//! for sends to other clients. [`Middleware`] offers the same events (plus `on_message_sent`) as cheap synchronous
//! hooks for logging, metrics and auditing, as Mesa 1.5's `mesa.use(...)` did.
//!
//! # Example
//! ```no_run
//! use mesa_server::{AuthError, Identity, Mesa};
//! use serde_json::json;
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let mesa = Mesa::builder()
//!         .authenticate(|data, _client| async move {
//!             let token = data.get("token").and_then(|t| t.as_str()).unwrap_or_default();
//!             match token.strip_prefix("user:") {
//!                 Some(id) => Ok(Identity::new(id, json!({ "id": id }))),
//!                 None => Err(AuthError::new("invalid token")),
//!             }
//!         })
//!         .on_message(|session, frame| async move {
//!             let _ = session.send(&frame);
//!         })
//!         .build();
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
//!     mesa.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await
//! }
//! ```

pub mod config;
pub use mesa_engine::{ids, target};
mod connection;
pub mod error;
pub mod events;
pub mod metrics;
mod origin;
mod outbox;
mod registry;
mod resume;
mod router;
pub mod server;
pub mod service;
pub mod session;
mod socket;
pub mod transport;

pub use config::Config;
pub use error::{AuthError, ConnectionError, SendError};
pub use events::{BoxFuture, Disconnection, Middleware};
pub use mesa_engine::{
    ConnectionId, Engine, EngineError, Health, MemoryEngine, NodeId, NodeStatus, Presence,
    PublishError,
};
pub use mesa_engine::{Delivery, Recipients, Retention, SessionId, SessionPolicy, Target};
pub use mesa_protocol::{CloseCode, Frame, OpCode};
pub use metrics::{Metrics, MetricsSnapshot};
pub use server::{Mesa, MesaBuilder};
pub use service::{MesaService, RemoteAddr};
pub use session::{Identity, Session, SessionState};

/// The README's code blocks, compiled as doctests so that the quickstart cannot rot.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
