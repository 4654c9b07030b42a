//! The Redis engine of Mesa: the nodes of one gateway, in several processes, connected through Redis.
//!
//! [`RedisEngine`] implements [`mesa_engine::Engine`] over Redis 7 (standalone, through Sentinel, or a
//! Cluster with sharded pub/sub), with redis-rs. Sends are routed by where users are: a node listens on a
//! user's channel only while it holds a session of that user, so a node receives only what its sessions
//! need. Presence (which nodes hold a user, how many sessions each) and node liveness are kept in Redis and
//! cleaned up after a node that died without a goodbye. [`Dispatcher`] sends from services that are not
//! gateways. `docs/clustering.md` documents every key and channel, the delivery semantics and the faults.
//!
//! Layout, from the wire up:
//!
//! - [`config`]: [`RedisConfig`], [`Topology`] (URLs: `redis://`, `rediss://`, `redis+sentinel://`,
//!   `redis+cluster://`).
//! - [`keys`]: [`Keys`], the names of every key and channel; `envelope`: the bytes on a channel (a compact
//!   header, then the frame unchanged); `routing`: which channels a publication goes to.
//! - `backend`: one redis-rs connection for a topology; `link`: the connections, their supervisor
//!   (reconnect with backoff, [`Health`](mesa_engine::Health)); `publisher`: the one ordered queue to Redis.
//! - `sessions`: this node's sessions per user; `presence`: presence and liveness in Redis (scripts);
//!   `streams`: per-user streams and resumable sessions in Redis (Lua scripts), with
//!   [`RedisConfig::sessions`];
//!   `inbound`: received envelopes handed to the node; `gateway`: a node's publish path and background
//!   passes; [`RedisEngine`] on top. [`Dispatcher`] shares `link`, `routing` and `publisher`.
//! - `mesa15`: Mesa 1.5's Redis formats (`ws`, `connected_clients`, `connected_clients_count`,
//!   `undelivered_messages`) for [`RedisConfig::mesa15_compat`]: routing, presence and the gateway use it.
//! - [`metrics`]: [`RedisMetrics`] counters.
//! - [`portal`]: client events (connection, authentication, message, disconnection) handed by gateways to
//!   worker services that are not gateways, either fire-and-forget in Mesa 1.5's exact format (a real
//!   `@cryb/mesa` 1.5.8 `Portal` receives them) or at-least-once over a Redis Stream with a consumer group.
//!   It opens its own connections (`portal::connect`), from the engine's URL forms (standalone and Sentinel;
//!   Cluster is refused).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use mesa_redis::{RedisConfig, RedisEngine};
//! let engine = RedisEngine::connect(RedisConfig::from_url("redis://127.0.0.1:6379")?)?;
//! let mesa = mesa_server::Mesa::builder().engine(engine).build();
//! # let _ = mesa; Ok(()) }
//! ```

mod backend;
pub mod config;
mod dispatcher;
mod engine;
mod envelope;
mod gateway;
mod inbound;
pub mod keys;
mod link;
mod mesa15;
pub mod metrics;
pub mod portal;
mod presence;
mod publisher;
mod routing;
mod sessions;
mod streams;

pub use config::{ConfigError, RedisConfig, Topology, DEFAULT_NAMESPACE};
pub use dispatcher::{Dispatchable, Dispatcher};
pub use engine::RedisEngine;
pub use keys::Keys;
pub use metrics::{RedisMetrics, RedisMetricsSnapshot};
