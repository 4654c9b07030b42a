//! `mesa-conformance`: a Mesa gateway with fixed, documented behaviour that any Mesa client, test suite or load
//! generator can be pointed at.
//!
//! Run it with `PORT=4000 cargo run --release -p mesa-conformance`.
//!
//! # Contract
//! Everything not listed keeps the `mesa-server` defaults, except the inbound rate limit, which is off.
//!
//! - **Environment.** `PORT`: it listens on `127.0.0.1:PORT` (default 4000; `0` picks a free port, logged),
//!   endpoint path `/`. `REDIS_URL`: optional; when set, and the binary was built with the cargo feature
//!   `redis`, it joins every other conformance node on that Redis (namespace `default`) with the Redis
//!   engine's Mesa 1.5 compatibility mode on: `BROADCAST` and `SEND_TO` reach their recipients on every node,
//!   Mesa 1.5 (`@cryb/mesa` 1.5.8) nodes included, and a 1.5 `Dispatcher` (no namespace) reaches the app's
//!   clients; a `SEND_TO` to a user who is connected nowhere is kept and redelivered when that user
//!   authenticates (op 22, then the kept messages numbered `s` = 1, 2, …; none with `shouldSync: false`).
//!   With `REDIS_STREAMS=1` the compatibility mode is off and per-user streams are kept in Redis instead:
//!   resumable sessions (op 6) on any node, as in memory.
//!   A Redis Cluster URL (`redis+cluster://`) or an invalid URL exits with status 2. Without the feature it
//!   is ignored with one log line. `RUST_LOG` filters the log on stderr (default `info`).
//! - **Hello** (op 10): `{"c_heartbeat_interval":1000,"c_reconnect_interval":500,"c_authentication_timeout":2000,
//!   "rules":["sends_user_object"]}`.
//! - **Heartbeats**: op 1 every 1000 ms, `d = {}` while answered. A beat not answered (op 11) since the previous
//!   one counts an attempt and the next op 1 carries `{"tries":n,"max":2}`; once attempts exceed 2 the connection is
//!   closed with 4009. So a silent client gets op 1 at about 1 s, 2 s and 3 s and is closed at about 4 s after
//!   its Hello (measured by `tests/conformance.rs`).
//! - **Authentication** (op 2): `d.token == "user:<id>"` with a non-empty `<id>` authenticates as `<id>` and is
//!   answered `{"op":22,"d":{"id":"<id>","name":"User <id>"}}`. Any other token, or none, closes with 1008.
//!   Authentication is optional: unauthenticated connections may dispatch.
//! - **Dispatches** (op 0), by type `t`:
//!   - `ECHO`: `{"op":0,"d":<d>,"t":"ECHO"}` back to the sending connection only.
//!   - `BROADCAST`: `{"op":0,"d":<d>,"t":"BROADCAST"}` to every connection (of every node with `REDIS_URL`),
//!     authenticated or not, sender included.
//!   - `SEND_TO` with `d = {"to":[ids], "excluding"?:[ids], "payload":<p>}`: `{"op":0,"d":<p>,"t":"DIRECT"}` to
//!     every authenticated connection whose user id is in `to` and not in `excluding` (every connection of such a
//!     user). A malformed `SEND_TO` is ignored (logged at debug).
//! - Other opcodes and dispatch types are ignored; the connection stays open.
//! - **SIGTERM or SIGINT**: every client gets op 7 and a 1012 close, the port is released, and the process exits 0
//!   within a second (the graceful shutdown waits at most 400 ms for clients).

mod app;
#[cfg(feature = "redis")]
mod cluster;

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// The port used when `PORT` is not set (Mesa 1.5's default).
const DEFAULT_PORT: u16 = 4000;

/// The global allocator: jemalloc with its background purge thread, which returns memory freed after a burst
/// of connections to the OS within seconds, where glibc's malloc keeps most of it
/// (`docs/decisions/0002-global-allocator.md`).
/// `--no-default-features` builds with the system allocator.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let port = match port_from_env() {
        Ok(port) => port,
        Err(message) => {
            tracing::error!("{message}");
            return ExitCode::from(2);
        }
    };
    let engine = match engine_from_env().await {
        Ok(engine) => engine,
        Err(message) => {
            tracing::error!("{message}");
            return ExitCode::from(2);
        }
    };
    // Listen for signals before accepting anyone, so that a signal never finds the default handler.
    let shutdown = match signals::shutdown() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            tracing::error!(%error, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, port, "cannot listen on 127.0.0.1");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => tracing::info!("listening on ws://{addr}/"),
        Err(error) => tracing::warn!(%error, "listening, address unknown"),
    }

    let mesa = app::build(engine);
    match mesa.serve(listener, shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// The engine `REDIS_URL` asks for: `None` (one node, in memory) when it is unset or empty.
#[cfg(feature = "redis")]
async fn engine_from_env() -> Result<Option<std::sync::Arc<dyn mesa_server::Engine>>, String> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            let streams = std::env::var("REDIS_STREAMS").is_ok_and(|v| v == "1");
            let engine = cluster::engine(&url, streams).await?;
            tracing::info!(
                streams,
                "REDIS_URL is set: joining the other nodes on Redis"
            );
            Ok(Some(engine))
        }
        _ => Ok(None),
    }
}

/// Without Redis support `REDIS_URL` is ignored, and one line says so.
#[cfg(not(feature = "redis"))]
async fn engine_from_env() -> Result<Option<std::sync::Arc<dyn mesa_server::Engine>>, String> {
    if std::env::var_os("REDIS_URL").is_some_and(|url| !url.is_empty()) {
        tracing::info!(
            "REDIS_URL is set but this build has no Redis support (cargo feature `redis`): ignored, running \
             as a single node"
        );
    }
    Ok(None)
}

/// `PORT` as a port number, or [`DEFAULT_PORT`] when unset.
fn port_from_env() -> Result<u16, String> {
    match std::env::var("PORT") {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_PORT),
        Err(std::env::VarError::NotUnicode(_)) => Err("PORT is not valid UTF-8".into()),
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("PORT must be a port number (0-65535), got {value:?}")),
    }
}

mod signals {
    //! The shutdown future: SIGTERM or SIGINT (Ctrl-C).

    use std::future::Future;
    use std::io;

    /// Installs the handlers now and returns a future that resolves on the first SIGTERM or SIGINT.
    #[cfg(unix)]
    pub(crate) fn shutdown() -> io::Result<impl Future<Output = ()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
            }
        })
    }

    /// Installs the handler and returns a future that resolves on Ctrl-C.
    #[cfg(not(unix))]
    pub(crate) fn shutdown() -> io::Result<impl Future<Output = ()>> {
        Ok(async {
            match tokio::signal::ctrl_c().await {
                Ok(()) => tracing::info!("Ctrl-C received, shutting down"),
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for Ctrl-C");
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}
