//! The engine layer under Mesa's router.
//!
//! A Mesa node encodes each send once and hands it, as a [`Publication`], to its [`Engine`], which carries
//! it to every node holding a recipient; each node's [`LocalNode`] then queues it on its own sessions. The
//! engine never sees a connection, and nothing here depends on the server: engines are written against
//! this crate alone.
//!
//! - [`ids`]: [`NodeId`], [`ConnectionId`]; [`target`]: [`Target`], [`Recipients`], [`Delivery`]. Plain data.
//! - [`publication`]: [`Publication`], [`EncodedFrame`], [`Action`], [`DeliveryClass`].
//! - [`Engine`], [`LocalNode`] and their errors and reports.
//! - [`sessions`]: [`SessionId`], [`Retention`], [`SessionPolicy`] and what resumable sessions exchange
//!   with an engine.
//! - [`MemoryEngine`]: the nodes of one process (the default for a single node).
//! - `conformance` (feature `conformance`): the test suite every engine passes.

mod engine;
pub mod ids;
mod memory;
pub mod publication;
pub mod sessions;
mod streams;
pub mod target;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use engine::{
    BoxFuture, Engine, EngineError, Health, LocalNode, NodeStatus, Presence, PublishError,
};
pub use ids::{ConnectionId, NodeId};
pub use memory::MemoryEngine;
pub use publication::{Action, DeliveryClass, EncodedFrame, Publication};
pub use sessions::{
    Claimed, Opened, Release, ResumeRefusal, Retention, SessionId, SessionPolicy, StreamEntry,
    StreamGap, StreamRead,
};
pub use target::{Delivery, Recipients, Target};
