//! `mesa-bench`: a load generator for Mesa-protocol WebSocket gateways, and the thin baseline server the
//! gateway is compared with.
//!
//! The generator drives any server that follows the conformance contract (see the `mesa-conformance` crate):
//! Hello (op 10), heartbeats answered (op 1 → op 11), `{"token":"user:<id>"}` authentication (op 2 → op 22), and
//! the dispatches `ECHO`, `BROADCAST` and `SEND_TO`. It only targets loopback addresses, spreads its
//! connections over several loopback source addresses, keeps every loop bounded in time, and caps its
//! connection counts to the open-files limit. Each run prints progress on stderr once a second, then a
//! summary table and exactly one JSON line on stdout. `docs/benchmarks.md` has the commands and results.
//!
//! # Layout
//! - [`args`]: the command line (clap) and its validation.
//! - [`target`]: the loopback-only target URL and the source addresses.
//! - [`limits`]: `RLIMIT_NOFILE`, raised to the hard limit, and the connection cap.
//! - [`conn`]: one client connection (connect from a source address, Hello, authenticate, heartbeats, close).
//! - [`scan`]: an allocation-free look into server frames, and the probe payloads (sequence number and send
//!   time).
//! - [`dispatch`]: sends handed straight to Redis, in this project's format or Mesa 1.5's (`targeted`).
//! - [`stats`]: HDR latency histograms, percentiles, duplicate detection.
//! - [`procfs`]: the server's RSS, CPU time and open descriptors from `/proc`.
//! - [`sockets`]: the bytes a process's TCP connections to one port (Redis) carried, from `ss -tinp`.
//! - [`scenario`]: `idle`, `fanout`, `echo`, `connect`, `storm`, `targeted`; `idle` and `fanout` also run
//!   against two nodes on one Redis (`--url-b`, [`scenario::cluster`]).
//! - [`report`]: progress, the summary table and the JSON line; [`compare`]: the side-by-side table.
//! - [`baseline`]: the thin baseline server (binary `mesa-baseline`).
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use clap::Parser;
//! use mesa_bench::args::{Cli, Command};
//!
//! let cli = Cli::try_parse_from(["mesa-bench", "echo", "--url", "ws://127.0.0.1:4000/", "-c", "100", "-k", "10"])?;
//! if let Command::Echo(args) = cli.command {
//!     let report = mesa_bench::scenario::echo::run(&args).await?;
//!     report.print();
//! }
//! # Ok(())
//! # }
//! ```

pub mod args;
pub mod baseline;
pub mod compare;
pub mod conn;
pub mod dispatch;
pub mod limits;
pub mod procfs;
pub mod report;
pub mod scan;
pub mod scenario;
pub mod sockets;
pub mod stats;
pub mod target;
