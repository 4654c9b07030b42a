//! Portal: client events handed by gateways to worker services, spread over the live workers.
//!
//! A gateway node makes a [`PortalEvent`] for each connection, authentication, received message and
//! disconnection of its clients and hands it to a [`PortalSender`]; worker services [`PortalWorker::join`]
//! and take [`PortalDelivery`]s with [`PortalWorker::next`]. Two modes ([`PortalMode`]):
//!
//! - **Fire-and-forget** — Mesa 1.5's format exactly: one live worker per event, round robin over the set
//!   `available_portals_pool`, published on the channel `portal`. A worker that is down when its event is
//!   published loses it. Real `@cryb/mesa` 1.5.8 `Portal`s and nodes interoperate with ours.
//! - **At-least-once** — a Redis Stream per namespace read by a consumer group: a worker acknowledges each
//!   event; what a dead worker held is reclaimed by another after an idle time. Duplicates are possible.
//!
//! Ordering per client and what happens when no worker is live: see `docs/portal.md` and [`PortalMode`].
//!
//! Layout (each concern in one file, no cycles):
//! - [`event`]: the event as plain data and its JSON form (no I/O);
//! - [`config`]: modes, options and the Redis names they use;
//! - `connect`: the one place connections are opened;
//! - `pool` (fire-and-forget) and `stream` (at-least-once): the Redis commands of each mode;
//! - `delivery`: what a worker receives and how it acknowledges;
//! - `sender`, `worker`: the two public fronts over both modes.

pub mod config;
mod connect;
mod delivery;
mod error;
pub mod event;
mod pool;
mod sender;
mod stream;
mod worker;

pub use config::{PortalConfig, PortalMode, StreamOptions};
pub use delivery::PortalDelivery;
pub use error::PortalError;
pub use event::{DecodeError, PortalEvent, PortalEventKind};
pub use sender::PortalSender;
pub use worker::PortalWorker;
