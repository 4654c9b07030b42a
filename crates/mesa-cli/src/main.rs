//! `mesa`: a Mesa 1.5 compatible WebSocket gateway as a command.
//!
//! `mesa serve` runs a gateway with no setup: `0.0.0.0:4000`, path `/`, Mesa 1.5's defaults, in memory on a
//! single node, no authentication (`auth.mode = "none"`, development only). The same port serves
//! `GET /healthz`, `GET /metrics`, `POST /api/send`, `GET /api/presence/<id>` and `GET /api/nodes` (see
//! `api.rs`). With `[cluster]` it joins the other nodes on one Redis (cargo feature `redis`).
//!
//! With `[portal]` it hands client events to Portal workers through Redis instead of an HTTP backend.
//!
//! `mesa dispatch` hands one send or disconnect to every node of a cluster through Redis (see `dispatch.rs`
//! for its flags and exit status).
//!
//! # Configuration
//! Sources, each overriding the ones before it key by key (see `config.rs`):
//! 1. defaults;
//! 2. a TOML file named by `--config PATH` or `MESA_CONFIG=PATH`, with sections `[server]`
//!    (`[server.heartbeat]`, `[server.reconnect]`, `[server.authentication]`, `[server.client]`,
//!    `[server.limits]`), `[auth]`, `[api]`, `[log]`, `[proxy]`, `[tls]`, `[cluster]`, `[portal]` and the top-level
//!    `redis_url` (Mesa 1.5's name of `cluster.redis_url`) and `trusted_proxies`;
//! 3. `RUST_LOG` (as `log.filter`);
//! 4. environment variables `MESA_<SECTION>__<KEY>`, e.g. `MESA_SERVER__PORT=5000`, `MESA_AUTH__MODE=jwt`,
//!    `MESA_AUTH__SECRET_ENV=JWT_SECRET`, `MESA_API__KEY_ENV=MESA_KEY`, `MESA_LOG__FORMAT=json`,
//!    `MESA_CLUSTER__REDIS_URL=…` (or `MESA_REDIS_URL`);
//! 5. flags: `--host`, `--port`, `--path`, `--log-format text|json`, `--log-filter`, `--redis-url`.
//!
//! Unknown keys are errors; `MESA_*` variables without `__` are not configuration (see `config.rs`).
//! Exit status: 0 after a graceful shutdown, 1 when serving fails, 2 for a
//! configuration error (also `[cluster]` in a build without Redis support), 130 on a second signal during
//! shutdown.
//!
//! # Layout
//! `config.rs` (sources, validation), `logging.rs`, `auth/` (none, jwt, webhook, token expiry), `api.rs`
//! (router and HTTP API), `proxy.rs` (the HTTP event proxy), `metrics.rs` (mesa serve's own metrics),
//! `forwarded.rs` (client addresses behind trusted proxies), `tls.rs` (`wss://` with certificate reload),
//! `serve.rs` (wiring), `signal.rs` (SIGTERM/SIGINT), `dispatch.rs` (`mesa dispatch`), and the two modules
//! that know Redis (compiled with the `redis` feature): `cluster.rs` (the engine, `mesa dispatch`) and
//! `portal.rs` (`[portal]`).

mod api;
mod auth;
#[cfg(feature = "redis")]
mod cluster;
mod config;
mod demo;
mod dispatch;
mod forwarded;
mod logging;
mod metrics;
#[cfg(feature = "redis")]
mod portal;
mod proxy;
mod serve;
mod signal;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{LogFormat, Overrides, ServeConfig};

/// The global allocator: jemalloc with its background purge thread, which returns memory freed after a burst
/// of connections to the OS within seconds, where glibc's malloc keeps most of it
/// (`docs/decisions/0002-global-allocator.md`).
/// `--no-default-features` builds with the system allocator.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A Mesa 1.5 compatible WebSocket gateway.
#[derive(Debug, Parser)]
#[command(name = "mesa", version, propagate_version = true)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands (`mesa bench` is planned next to them).
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a gateway (and its HTTP API) until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Send to (or disconnect) clients of every node of a cluster, through Redis.
    ///
    /// Exit status: 0 sent; 1 Redis unreachable or refused it; 2 invalid arguments; 3 built without Redis
    /// support.
    Dispatch(dispatch::DispatchArgs),
}

/// Flags of `mesa serve`; each overrides the file and the environment.
#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "MESA_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to bind [default: 0.0.0.0] (server.host).
    #[arg(long)]
    host: Option<String>,
    /// Port to bind; 0 picks a free one [default: 4000] (server.port).
    #[arg(long)]
    port: Option<u16>,
    /// Path of the WebSocket endpoint [default: /] (server.path).
    #[arg(long)]
    path: Option<String>,
    /// Log format [default: text] (log.format).
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Log filter, RUST_LOG syntax [default: info] (log.filter).
    #[arg(long, value_name = "FILTER")]
    log_filter: Option<String>,
    /// Redis URL of the cluster to join (cluster.redis_url).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Serve a demo chat page at /demo, relayed by the gateway, without authentication (demo).
    #[arg(long)]
    demo: bool,
}

/// Parses the command line and runs the subcommand.
fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Dispatch(args) => dispatch::run(args, deliver),
    }
}

/// `mesa dispatch`'s delivery: through Redis, on a runtime of its own (the command does nothing else).
#[cfg(feature = "redis")]
fn deliver(
    dispatch: &dispatch::Dispatch,
) -> Result<mesa_server::Delivery, dispatch::DispatchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|problem| {
            dispatch::DispatchError::NotSent(format!("cannot start the runtime: {problem}"))
        })?;
    runtime.block_on(cluster::dispatch(dispatch))
}

/// Without Redis support there is nowhere to send a dispatch.
#[cfg(not(feature = "redis"))]
fn deliver(
    _dispatch: &dispatch::Dispatch,
) -> Result<mesa_server::Delivery, dispatch::DispatchError> {
    Err(dispatch::DispatchError::NoRedis)
}

/// `mesa serve`: configuration, then logging, then the server on a multi-threaded runtime.
fn serve(args: ServeArgs) -> ExitCode {
    let overrides = Overrides {
        host: args.host,
        port: args.port,
        path: args.path,
        log_format: args.log_format,
        log_filter: args.log_filter,
        redis_url: args.redis_url,
    };
    let mut config = match ServeConfig::load(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("mesa: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    config.demo |= args.demo;
    if let Err(error) = logging::init(&config.log) {
        eprintln!("mesa: configuration error: {error}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(serve::ServeError::Config(error)) => {
            // The same line as a configuration error found before logging started.
            eprintln!("mesa: configuration error: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}
