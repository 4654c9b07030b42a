//! The Mesa gateway protocol as data: no sockets, no tasks, no clock of its own.
//!
//! Mesa is a WebSocket gateway protocol modelled on Discord's: every message is a JSON text frame
//! `{"op": <int>, "d": <payload>, "t": <event type>, "s": <sequence>}`. This crate is shared by the server
//! (`mesa-server`) and clients so that there is one definition of the wire.
//!
//! # Layout
//! - [`frame`]: the [`Frame`] type, its JSON encoding and [`DecodeError`]; [`payload`]: [`Payload`], its `d`,
//!   kept raw until read.
//! - [`opcode`]: [`OpCode`], the `op` numbers (Mesa 1.5 and this project's extensions).
//! - [`close_code`]: [`CloseCode`], every code the server closes with and whether a client may reconnect.
//! - [`hello`]: the [`Hello`] payload (op 10) and its rule names.
//! - [`connection`]: [`ConnectionState`], the per-connection protocol rules (heartbeat and authentication deadlines, the version
//!   rule, which frames a client may send) as a state machine fed with frames and the current time.
//! - [`rate_limit`]: the token bucket behind the inbound rate limit.
//!
//! The full protocol description, including what is Mesa 1.5 and what is an extension, is `docs/protocol.md`.
//!
//! # Example
//! ```
//! use mesa_protocol::{Frame, OpCode};
//! use serde_json::json;
//!
//! let frame = Frame::decode(r#"{"op":0,"d":{"text":"hi"},"t":"MESSAGE"}"#)?;
//! assert_eq!(frame.opcode(), Some(OpCode::Dispatch));
//! assert_eq!(Frame::dispatch("ECHO", json!({"a": 1})).encode(), r#"{"op":0,"d":{"a":1},"t":"ECHO"}"#);
//! # Ok::<(), mesa_protocol::DecodeError>(())
//! ```

pub mod close_code;
pub mod connection;
pub mod frame;
pub mod hello;
pub mod opcode;
pub mod payload;
pub mod rate_limit;

pub use close_code::{can_reconnect_code, CloseCode};
pub use connection::{
    AttemptLimit, ConnectionPhase, ConnectionRules, ConnectionState, HeartbeatRules, Inbound,
    TimerAction,
};
pub use frame::{with_sequence, DecodeError, Frame};
pub use hello::{rules, Hello, ResumeOffer};
pub use opcode::OpCode;
pub use payload::Payload;
pub use rate_limit::{RateLimit, TokenBucket};
