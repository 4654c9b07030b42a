//! Mesa over Redis.
//!
//! - [`portal`]: client events (connection, authentication, message, disconnection) handed by gateways to
//!   worker services that are not gateways, either fire-and-forget in Mesa 1.5's exact format (a real
//!   `@cryb/mesa` 1.5.8 `Portal` receives them) or at-least-once over a Redis Stream with a consumer group.

pub mod portal;
