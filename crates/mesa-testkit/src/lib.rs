//! Test helpers shared by the test suites of `mesa-server`, `mesa-client`, `mesa-conformance` and `mesa-cli`.
//!
//! Internal to the workspace (not published), used as a dev-dependency only. Organised by concern:
//!
//! - [`ws`]: a raw WebSocket client that reads and checks exact Mesa frames (Hello, heartbeats answered with
//!   op 11, silence, close frames).
//! - [`server`]: an in-process `mesa-server` on `127.0.0.1:0` with token authentication (`user:<id>`) and an
//!   echo handler.
//! - [`resume`]: resumable sessions from the raw client (op 2 `resumable`, op 6) and exactly-once-in-order
//!   checks of numbered dispatches.
//! - [`process`]: child processes (a server binary) behind a guard that kills them on drop, free ports and the
//!   `listening on <addr>` log line.
//! - [`redis`]: real `redis-server` processes on free ports that a test can kill and restart, a local
//!   three-master Redis Cluster, and a `redis-sentinel` watching a server.
//!
//! Every helper panics with a message saying what it waited for instead of returning an error: a failed
//! expectation is a failed test.

pub mod process;
pub mod redis;
pub mod resume;
pub mod server;
pub mod ws;
